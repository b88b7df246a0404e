"""A linked workspace's settings: the notification channel, the update type and whether a
closed conversation's transcript is posted (who is who in neetoChat: ``services/identities.py``).

Changed from two places with the same checks: the settings page (``services/web/pages.py``,
for the admin who linked the workspace) and the ``/settings`` card in Teams
(``dialogs/settings.py``, for the team's owners).
"""

from __future__ import annotations

import time

from services.admin import UPDATE_TYPES
from services.context import BridgeContext
from services.errors import RemoteError
from services.graph import ChannelInfo, GraphChannels, TeamMember
from services.store.base import Installation, Workspace


class SettingsError(Exception):
    """Not saved; ``status`` is what the page answers, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _team_graph(ctx: BridgeContext, ws: Workspace, inst: Installation) -> tuple[GraphChannels, str]:
    group_id = ws.aad_group_id or inst.aad_group_id
    if not group_id:
        raise RemoteError("Graph", "the team's Microsoft 365 group id is not known yet", status=409)
    return ctx.graph.for_tenant(ws.tenant_id or inst.tenant_id), group_id


async def team_channels(ctx: BridgeContext, ws: Workspace, inst: Installation) -> list[ChannelInfo]:
    """The linked team's channels, General first, then by name."""
    graph, group_id = _team_graph(ctx, ws, inst)
    channels = await graph.list(group_id)
    return sorted(channels, key=lambda c: (c.id != inst.general_channel_id, c.name.lower()))


async def team_members(ctx: BridgeContext, ws: Workspace, inst: Installation) -> list[TeamMember]:
    """The linked team's roster (for the settings page's "People")."""
    graph, group_id = _team_graph(ctx, ws, inst)
    return await graph.members(group_id)


async def is_team_owner(ctx: BridgeContext, ws: Workspace, inst: Installation, aad_object_id: str | None) -> bool:
    """Whether this person owns the linked team, by the team's roster (asked each time: an
    owner demoted a minute ago must not keep the right)."""
    if not aad_object_id:
        return False
    graph, group_id = _team_graph(ctx, ws, inst)
    return aad_object_id in await graph.owners(group_id)


async def change_settings(
    ctx: BridgeContext,
    ws: Workspace,
    inst: Installation,
    channel_id: object,
    update_type: object,
    transcript_on_close: bool | None = None,
) -> list[ChannelInfo]:
    """Check and save (``transcript_on_close`` None: unchanged); returns the team's channels
    (what the caller shows next)."""
    if update_type not in UPDATE_TYPES:
        raise SettingsError(400, "Choose an update type.")
    try:
        channels = await team_channels(ctx, ws, inst)
    except RemoteError as exc:
        raise SettingsError(502, f"Not saved: the team's channels could not be listed: {exc}") from exc
    if channel_id not in {c.id for c in channels}:
        raise SettingsError(400, "Not saved: that channel is not one of this team's channels.")
    ws.notification_channel_id = str(channel_id)
    ws.update_type = str(update_type)
    if transcript_on_close is not None:
        ws.transcript_on_close = transcript_on_close
    ws.updated_at = time.time()
    await ctx.store.put_workspace(ws)
    return channels
