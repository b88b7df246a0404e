"""Routing: which team a conversation's channel and notices go to.

A workspace can have rules, first match wins, else its linked team:

- ``{"when": {"neeto_team": "Billing"}, ...}``: the conversation is assigned to that
  neetoChat team (by name, any case, or by id);
- ``{"when": {"prechat": {"question": "Department", "answer": "Billing"}}, ...}``: a pre-chat
  answer (question and answer compared in any case, spaces trimmed);

each with ``"team_id"`` (a team of the workspace's organization the bot is installed in, by
its Teams id or Microsoft 365 group id) and optionally ``"notification_channel_id"`` (a
channel of that team; default its General). A conversation's channel stays where it was
created: a reassignment moves nothing already created, but later notices (assignment
notices in the notification channel) follow the rule as it matches then. Edited through the
operator API (``services/admin.py``) and on the settings page
(``services/web/routing_rules.py``), both checked by ``checked_routes``.
"""

from __future__ import annotations

from typing import Any

from services.context import BridgeContext
from services.errors import RemoteError
from services.store.base import Workspace

MAX_ROUTES = 50


class RoutingError(Exception):
    """Rules refused; ``status`` is what the operator API answers, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _same(a: Any, b: Any) -> bool:
    """Equal in any case and spacing (people type pre-chat answers and team names freely)."""
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def _matches(when: dict[str, Any], conversation: dict[str, Any]) -> bool:
    if "neeto_team" in when:
        assignee = conversation.get("assignee") or {}
        wanted = when["neeto_team"]
        return assignee.get("type") == "team" and (assignee.get("id") == wanted or _same(assignee.get("name"), wanted))
    prechat = when.get("prechat") or {}
    return any(
        _same(p.get("question"), prechat.get("question")) and _same(p.get("answer"), prechat.get("answer"))
        for p in conversation.get("prechat_responses") or []
        if isinstance(p, dict)
    )


def route_team(ws: Workspace, conversation: dict[str, Any]) -> str | None:
    """The team the first matching rule names, or None (the linked team)."""
    for rule in ws.routes or []:
        if _matches(rule["when"], conversation):
            return rule["team_id"]
    return None


async def channel_team(ctx: BridgeContext, ws: Workspace, conversation: dict[str, Any]) -> str | None:
    """The team a conversation's channel is (or will be) in: where it was created, else
    where the rules send it now. Costs nothing for a workspace without rules."""
    if not ws.routes:
        return None
    portal = await ctx.store.get_portal(ws.id, conversation["id"])
    if portal is not None and portal.state != "closed" and portal.team_id:
        return portal.team_id
    return route_team(ws, conversation)


async def checked_routes(ctx: BridgeContext, ws: Workspace, routes: Any) -> list[dict[str, Any]]:
    """The rules as they are stored, each checked against Teams: ``RoutingError`` says
    what is wrong with the first bad one, and nothing is saved."""
    if not isinstance(routes, list) or len(routes) > MAX_ROUTES:
        raise RoutingError(400, f"routes must be a list of at most {MAX_ROUTES} rules")
    checked = []
    for position, rule in enumerate(routes, 1):
        where = f"rule {position}"
        if not isinstance(rule, dict) or not isinstance(rule.get("when"), dict):
            raise RoutingError(400, f"{where}: each rule needs a 'when' object and a 'team_id'")
        when = _checked_when(rule["when"], where)
        team_id = rule.get("team_id")
        if not isinstance(team_id, str) or not team_id:
            raise RoutingError(400, f"{where}: team_id is required")
        inst = await ctx.store.get_installation(team_id)
        if inst is None or not inst.installed:
            raise RoutingError(422, f"{where}: the bot is not installed in team {team_id}: add the app to it first")
        if ws.tenant_id and inst.tenant_id and inst.tenant_id != ws.tenant_id:
            raise RoutingError(422, f"{where}: team {team_id} belongs to another Microsoft 365 organization")
        if not inst.aad_group_id:
            raise RoutingError(422, f"{where}: the team's Microsoft 365 group id is not known yet (reinstall the app)")
        channel = rule.get("notification_channel_id")
        if channel is not None:
            await _check_channel(ctx, ws, inst.aad_group_id, inst.tenant_id, channel, where)
        checked.append({"when": when, "team_id": inst.team_id, "notification_channel_id": channel})
    return checked


def _checked_when(when: dict[str, Any], where: str) -> dict[str, Any]:
    if set(when) == {"neeto_team"} and isinstance(when["neeto_team"], str) and when["neeto_team"].strip():
        return {"neeto_team": when["neeto_team"].strip()}
    prechat = when.get("prechat")
    if set(when) == {"prechat"} and isinstance(prechat, dict):
        question, answer = prechat.get("question"), prechat.get("answer")
        if isinstance(question, str) and question.strip() and isinstance(answer, str) and answer.strip():
            return {"prechat": {"question": question.strip(), "answer": answer.strip()}}
    raise RoutingError(
        400, f'{where}: \'when\' must be {{"neeto_team": name}} or {{"prechat": {{"question", "answer"}}}}'
    )


async def _check_channel(
    ctx: BridgeContext, ws: Workspace, group_id: str, tenant_id: str | None, channel: Any, where: str
) -> None:
    if not isinstance(channel, str):
        raise RoutingError(400, f"{where}: notification_channel_id must be a string")
    try:
        channels = await ctx.graph.for_tenant(ws.tenant_id or tenant_id).list(group_id)
    except RemoteError as exc:
        raise RoutingError(502, f"{where}: the team's channels could not be listed: {exc}") from exc
    if channel not in {c.id for c in channels}:
        raise RoutingError(422, f"{where}: {channel} is not a channel of that team")
