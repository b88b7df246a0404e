"""The settings page's "Routing" section: the rules as the page shows them, and a rule
added, removed or moved by its forms (``POST /teams/routes``).

An added rule is saved only through ``services.routing.checked_routes``, the operator API's
own checks, run on the whole new list. Removing or moving a rule adds nothing to check, so
it is saved as is: a rule gone stale (the bot was removed from its team) can always be
removed, even while another one is stale too. Each row's forms carry the rule's position
and a digest of the rule, so a form from a page loaded before the rules changed elsewhere
(the operator API, another tab) changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from services.context import BridgeContext
from services.errors import RemoteError
from services.graph import ChannelInfo
from services.routing import RoutingError, checked_routes
from services.store.base import Installation, Workspace

ADD_FIELDS = ("kind", "neeto_team", "question", "answer", "team_id", "channel")  # what a refused form keeps


@dataclass
class RuleRow:
    """One rule as the page lists it."""

    position: int  # 1-based, as in the refusals' "rule N"
    key: str  # digest of the stored rule: a row's forms act only on the rule they were shown with
    neeto_team: str | None  # assigned to this neetoChat team (its name when known)
    question: str | None  # or this pre-chat answer
    answer: str | None
    team_name: str
    team_missing: bool  # the bot is no longer installed in the team
    channel_name: str  # "General" when the rule names none


def rule_key(rule: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(rule, sort_keys=True).encode()).hexdigest()[:16]


async def rule_rows(
    ctx: BridgeContext,
    ws: Workspace,
    teams: list[Installation],
    neeto_teams: dict[str, str],
    known_channels: dict[str, list[ChannelInfo]],
) -> list[RuleRow]:
    """The workspace's rules in order, with team and channel names (Graph lists the channels
    of a team only when one of its rules names a channel it does not already know)."""
    installed = {t.team_id: t for t in teams}
    channels = dict(known_channels)
    rows = []
    for position, rule in enumerate(ws.routes or [], 1):
        team_id = rule.get("team_id") or ""
        inst = installed.get(team_id) or await ctx.store.get_installation(team_id)
        channel_id = rule.get("notification_channel_id")
        channel_name = "General"
        if channel_id:
            if team_id not in channels:
                channels[team_id] = await _channels(ctx, ws, inst)
            channel_name = next((c.name for c in channels[team_id] if c.id == channel_id), channel_id)
        when = rule.get("when") or {}
        prechat = when.get("prechat") or {}
        neeto_team = when.get("neeto_team")
        rows.append(
            RuleRow(
                position=position,
                key=rule_key(rule),
                neeto_team=neeto_teams.get(neeto_team, neeto_team) if neeto_team else None,
                question=prechat.get("question"),
                answer=prechat.get("answer"),
                team_name=(inst.name if inst else "") or team_id,
                team_missing=team_id not in installed,
                channel_name=channel_name,
            )
        )
    return rows


async def _channels(ctx: BridgeContext, ws: Workspace, inst: Installation | None) -> list[ChannelInfo]:
    if inst is None or not inst.aad_group_id:
        return []
    try:
        return await ctx.graph.for_tenant(ws.tenant_id or inst.tenant_id).list(inst.aad_group_id)
    except RemoteError:
        return []  # the page shows the channel's id instead of its name


async def edited_routes(ctx: BridgeContext, ws: Workspace, form: dict[str, str]) -> list[dict[str, Any]]:
    """The rules after the form's change, checked; ``RoutingError`` says why not (nothing saved)."""
    routes = list(ws.routes or [])
    action = form.get("action", "")
    if action == "add":
        rule = await _new_rule(ctx, ws, form)
        try:
            return await checked_routes(ctx, ws, [*routes, rule])
        except RoutingError as exc:
            raise RoutingError(exc.status, f"Not saved: {exc}") from exc
    if action not in ("remove", "up", "down"):
        raise RoutingError(400, "Not saved: unknown action.")
    try:
        index = int(form.get("position", "")) - 1
    except ValueError:
        index = -1
    if not 0 <= index < len(routes) or rule_key(routes[index]) != form.get("rule"):
        raise RoutingError(
            409, "Nothing was changed: the rules changed since this page was loaded. Here they are as they are now."
        )
    rule = routes.pop(index)
    if action != "remove":
        routes.insert(max(0, index - 1) if action == "up" else min(len(routes), index + 1), rule)
    return routes


async def _new_rule(ctx: BridgeContext, ws: Workspace, form: dict[str, str]) -> dict[str, Any]:
    kind = form.get("kind")
    if kind == "neeto_team":
        if not form.get("neeto_team", "").strip():
            raise RoutingError(400, "Not saved: enter the name of the neetoChat team.")
        when: dict[str, Any] = {"neeto_team": form["neeto_team"]}
    elif kind == "prechat":
        if not form.get("question", "").strip() or not form.get("answer", "").strip():
            raise RoutingError(400, "Not saved: enter the pre-chat question and the answer.")
        when = {"prechat": {"question": form["question"], "answer": form["answer"]}}
    else:
        raise RoutingError(400, "Not saved: choose what the rule matches.")
    team_id = form.get("team_id", "")
    if not team_id:
        raise RoutingError(400, "Not saved: choose the team the rule sends conversations to.")
    rule: dict[str, Any] = {"when": when, "team_id": team_id}
    channel = form.get("channel", "").strip()
    if channel:
        rule["notification_channel_id"] = await _channel_id(ctx, ws, team_id, channel)
    return rule


async def _channel_id(ctx: BridgeContext, ws: Workspace, team_id: str, channel: str) -> str:
    """A channel typed by name (any case) or id: its id, else the text as typed, which
    ``checked_routes`` then refuses ("… is not a channel of that team")."""
    inst = await ctx.store.get_installation(team_id)
    if inst is None or not inst.installed or (ws.tenant_id and inst.tenant_id and inst.tenant_id != ws.tenant_id):
        return channel  # checked_routes says what is wrong with the team
    wanted = " ".join(channel.split()).casefold()
    for c in await _channels(ctx, ws, inst):
        if channel == c.id or " ".join(c.name.split()).casefold() == wanted:
            return c.id
    return channel


async def save_routes(ctx: BridgeContext, ws: Workspace, routes: list[dict[str, Any]]) -> None:
    ws.routes = routes
    ws.updated_at = time.time()
    await ctx.store.put_workspace(ws)


__all__ = ["ADD_FIELDS", "RuleRow", "edited_routes", "rule_key", "rule_rows", "save_routes"]
