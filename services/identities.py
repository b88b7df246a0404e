"""Who a Teams user is in neetoChat.

A Teams user whose email is an active neetoChat agent's (in any case) acts as that agent;
anyone else as the user who authorized the integration. An **identity override**, set per
person on the settings page or through the operator API, wins over the email match, for
people whose Teams and neetoChat emails differ: a chosen agent, or "always as the
authorizing user" (then they count as not being an agent: ``/assign me`` and the card
buttons refuse them, as for anyone without an agent of their own).

Everything that acts as a Teams user asks ``acting_agent``: messages, notes, ``/close``,
``/assign``, ``/unassign`` (``services/to_neetochat.py`` ``agent_of``) and the card buttons
(``services/card_actions.py``). Its cost per message is one indexed store read; the email
(a roster lookup) is asked only without an override, and the agents are listed at most
once per ``AGENT_TTL`` (``services/neetochat.py``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.context import BridgeContext
from services.errors import RemoteError
from services.graph import TeamMember
from services.store.base import IdentityOverride, Workspace

log = logging.getLogger(__name__)

AUTHORIZING = "authorizing_user"  # the page's value for "always as the authorizing user"


class IdentityError(Exception):
    """Not saved; ``status`` is what the operator API answers, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def acting_agent(
    ctx: BridgeContext, ws: Workspace, aad_object_id: str | None, email: Callable[[], Awaitable[str | None]]
) -> dict[str, Any] | None:
    """The neetoChat agent this Teams user acts as, or None (then the authorizing user
    writes for them, and what needs an agent of their own is refused). ``email`` is asked
    only when the person has no override. An override naming an agent who is not active
    any more falls back to the authorizing user, with a warning: the message still goes."""
    client = ctx.neetochat(ws)
    override = await ctx.store.identity_override(ws.id, aad_object_id.lower()) if aad_object_id else None
    if override is None:
        address = await email()
        return await client.find_agent_by_email(address) if address else None
    if override.agent_id is None:
        return None
    agent = await client.active_agent(override.agent_id)
    if agent is None:
        log.warning(
            "identity override of Teams user %s names neetoChat agent %s, who is not an active agent: "
            "acting as the authorizing user",
            aad_object_id,
            override.agent_id,
        )
    return agent


def person_id(value: Any) -> str:
    """A Teams user's AAD object id (a GUID), in the form Teams and Graph send it."""
    try:
        return str(uuid.UUID(value))
    except (TypeError, ValueError, AttributeError):
        raise IdentityError(400, "aad_object_id must be the Teams user's Entra object id (a GUID)") from None


async def active_agents(ctx: BridgeContext, ws: Workspace) -> list[dict[str, Any]]:
    """The workspace's active agents by name, as neetoChat has them now."""
    try:
        agents = await ctx.neetochat(ws).list_agents()
    except RemoteError as exc:
        raise IdentityError(502, f"neetoChat did not list its agents: {exc}") from exc
    return sorted((a for a in agents if a.get("active", True)), key=lambda a: (a.get("name") or "").lower())


def _check_agent(agent_id: str, agents: list[dict[str, Any]]) -> None:
    if agent_id not in {a["id"] for a in agents}:
        raise IdentityError(422, f"{agent_id} is not an active agent of this neetoChat workspace")


def choice_of(override: IdentityOverride | None) -> str:
    """An override as the page's select has it: "" (match by email), ``AUTHORIZING`` or an agent id."""
    if override is None:
        return ""
    return override.agent_id or AUTHORIZING


def override_json(override: IdentityOverride) -> dict[str, Any]:
    return {
        "aad_object_id": override.aad_object_id,
        "agent_id": override.agent_id,
        "writes_as": "agent" if override.agent_id else AUTHORIZING,
        "teams_name": override.teams_name,
        "teams_email": override.teams_email,
        "updated_at": override.updated_at,
    }


async def set_identity(ctx: BridgeContext, ws: Workspace, body: dict[str, Any]) -> IdentityOverride:
    """The operator API's ``PUT`` (``{"aad_object_id", "agent_id" | null, "teams_name"?,
    "teams_email"?}``): checked (the agent must be active in neetoChat), then saved."""
    aad = person_id(body.get("aad_object_id"))
    agent_id = body.get("agent_id", "")
    if agent_id is not None and (not isinstance(agent_id, str) or not agent_id):
        raise IdentityError(400, "agent_id is required: an agent id, or null for 'always as the authorizing user'")
    name, email = body.get("teams_name") or "", body.get("teams_email") or ""
    if not isinstance(name, str) or not isinstance(email, str):
        raise IdentityError(400, "teams_name and teams_email must be strings")
    if agent_id is not None:
        _check_agent(agent_id, await active_agents(ctx, ws))
    await ctx.store.set_identity_override(ws.id, aad, agent_id, name, email)
    saved = await ctx.store.identity_override(ws.id, aad)
    assert saved is not None
    return saved


# ---------------------------------------------------------------- the settings page


@dataclass(frozen=True)
class Person:
    """One row of the settings page's "People"."""

    aad_object_id: str
    name: str
    email: str
    matched: dict[str, Any] | None  # the active agent their email matches
    choice: str  # see choice_of
    in_team: bool  # False: they left the team, their override is still kept
    stale: bool  # the override names an agent who is not active any more


async def people(
    ctx: BridgeContext, ws: Workspace, members: list[TeamMember]
) -> tuple[list[Person], list[dict[str, Any]]]:
    """The team's members (and anyone else with an override), each with the agent their
    email matches and their override; and the active agents to choose from."""
    agents = await active_agents(ctx, ws)
    ids = {a["id"] for a in agents}
    by_email = {a["email"].lower(): a for a in agents if a.get("email")}
    overrides = {o.aad_object_id: o for o in await ctx.store.identity_overrides(ws.id)}
    rows: list[Person] = []
    for aad, name, email, in_team in [
        *((m.aad_object_id.lower(), m.name, m.email, True) for m in sorted(members, key=lambda m: m.name.lower())),
        *((o.aad_object_id, o.teams_name, o.teams_email, False) for o in overrides.values()),
    ]:
        if not in_team and any(r.aad_object_id == aad for r in rows):
            continue
        choice = choice_of(overrides.get(aad))
        stale = choice not in ("", AUTHORIZING) and choice not in ids
        rows.append(Person(aad, name, email, by_email.get(email.lower()), choice, in_team, stale))
    return rows, agents


async def save_people(ctx: BridgeContext, ws: Workspace, members: list[TeamMember], choices: dict[str, str]) -> int:
    """Apply the page's choices (Teams user → ``choice_of`` value). Everything is checked
    before anything is saved (``IdentityError`` otherwise): people must be in the team or
    have an override, a chosen agent must be active in neetoChat. Returns how many changed."""
    roster = {m.aad_object_id.lower(): m for m in members}
    overrides = {o.aad_object_id: o for o in await ctx.store.identity_overrides(ws.id)}
    agents: list[dict[str, Any]] | None = None
    changes: list[tuple[str, str, str, str]] = []
    for key, choice in choices.items():
        aad = person_id(key)
        if choice == choice_of(overrides.get(aad)):
            continue  # unchanged (a kept override to a deactivated agent is not checked again)
        member, kept = roster.get(aad), overrides.get(aad)
        if member is None and kept is None:
            raise IdentityError(400, "Not saved: one of the people is not a member of the team.")
        name, email = (member.name, member.email) if member else (kept.teams_name, kept.teams_email)
        if choice not in ("", AUTHORIZING):
            agents = agents if agents is not None else await active_agents(ctx, ws)
            try:
                _check_agent(choice, agents)
            except IdentityError:
                raise IdentityError(
                    400,
                    f"Not saved: the agent chosen for {name or aad} is not an active agent of this neetoChat "
                    "workspace. Reload the page and choose again.",
                ) from None
        changes.append((aad, choice, name, email))
    for aad, choice, name, email in changes:
        if choice == "":
            await ctx.store.delete_identity_override(ws.id, aad)
        else:
            await ctx.store.set_identity_override(ws.id, aad, None if choice == AUTHORIZING else choice, name, email)
    return len(changes)
