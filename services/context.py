"""Everything a job handler needs, built once by the app factory.

Handlers take a ``BridgeContext`` instead of importing globals, so tests can build one
against the sandbox and two bridge processes never share in-memory state by accident.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp

from services.card_refresh import CardRefresher
from services.config import Settings
from services.crypto import SecretBox
from services.graph import GraphPool
from services.metrics import Metrics
from services.neetochat import NeetoChatClient
from services.rate_limits import RateLimiter
from services.store.base import Installation, Store, Workspace
from services.teams import TeamsPoster

# How a job that stopped because the bot is not in the team any more is recognised: it is
# dead-lettered with this reason, and replayed when the bot is added back.
# The start of every reason a delivery waits for the bot to be added back to a team.
BOT_REMOVED = "the bot was removed from"
KEY_REFUSED = "neetoChat refused the integration's API key"
NO_GRAPH_TOKEN = "Microsoft Graph gives the bridge no token"


class NotLinked(Exception):
    """The workspace has no usable Teams link; the job cannot be done now."""


@dataclass
class Destination:
    """Where a workspace's Teams side lives: its link plus the team's installation."""

    workspace: Workspace
    installation: Installation
    # A routed team's notification channel (services/routing.py); None: the workspace's own
    notification_override: str | None = None

    @property
    def service_url(self) -> str:
        return self.installation.service_url

    @property
    def tenant_id(self) -> str | None:
        return self.workspace.tenant_id or self.installation.tenant_id

    @property
    def notification_channel_id(self) -> str:
        if self.notification_override:
            return self.notification_override
        if self.installation.team_id != self.workspace.team_id:  # a routed team: its General
            return self.installation.general_channel_id
        return self.workspace.notification_channel_id or self.installation.general_channel_id


@dataclass
class Observations:
    """What this instance saw that the health check and the operator status report. In
    memory: since this instance started (each instance reports its own)."""

    webhook_at: dict[str, float] = field(default_factory=dict)  # workspace → last verified webhook
    healed: dict[str, dict[str, int]] = field(default_factory=dict)  # workspace → direction → messages
    # workspace → (when, how many): the last reconcile that found channel messages the bot
    # never received (the sign that Teams does not deliver unmentioned messages)
    missed_activities: dict[str, tuple[float, int]] = field(default_factory=dict)

    def record_healed(self, workspace_id: str, direction: str, count: int) -> None:
        by_direction = self.healed.setdefault(workspace_id, {"to_teams": 0, "to_neetochat": 0})
        by_direction[direction] += count


@dataclass
class BridgeContext:
    settings: Settings
    store: Store
    box: SecretBox
    http: aiohttp.ClientSession
    poster: TeamsPoster
    graph: GraphPool
    limiter: RateLimiter
    cards: CardRefresher
    metrics: Metrics
    observed: Observations = field(default_factory=lambda: Observations())
    _clients: dict[str, tuple[str, NeetoChatClient]] = field(default_factory=dict)

    def neetochat(self, ws: Workspace) -> NeetoChatClient:
        """The workspace's API client, rebuilt when its key or URL changes."""
        fingerprint = ws.base_url + ws.api_key_enc
        cached = self._clients.get(ws.id)
        if cached and cached[0] == fingerprint:
            return cached[1]
        client = NeetoChatClient(self.http, ws.base_url, self.box.decrypt(ws.api_key_enc), self.metrics)
        self._clients[ws.id] = (fingerprint, client)
        return client

    async def destination(self, ws: Workspace, team_id: str | None = None) -> Destination:
        """The team a workspace posts to (``team_id``: a team a routing rule chose), or
        ``NotLinked`` saying what is missing."""
        if not ws.team_id:
            raise NotLinked("the workspace is not linked to a Teams team")
        if team_id and team_id != ws.team_id:
            return await self._routed(ws, team_id)
        inst = await self.store.get_installation(ws.team_id)
        if inst is None:
            raise NotLinked("the bot has not been installed in the linked team yet")
        if not inst.installed:
            raise NotLinked(f"{BOT_REMOVED} the linked team")
        return Destination(ws, inst)

    async def _routed(self, ws: Workspace, team_id: str) -> Destination:
        inst = await self.store.get_installation(team_id)
        if inst is None:
            raise NotLinked(f"the bot is not installed in team {team_id}, where a routing rule sends this")
        if not inst.installed:
            raise NotLinked(f"{BOT_REMOVED} team {inst.name or team_id}, where a routing rule sends this")
        channel = next((r.get("notification_channel_id") for r in ws.routes or [] if r.get("team_id") == team_id), None)
        return Destination(ws, inst, channel)
