"""What the channel commands do (``/close`` and ``/note`` are in services/to_neetochat.py,
being a close and a message). Run by the job loop, so answers go out through the same
delivery engine as everything else: retried, rate-shaped, never lost silently."""

from __future__ import annotations

from typing import Any

from dialogs.commands import help_html
from services.context import BridgeContext
from services.health import check_health, problems
from services.neeto_teams import find_team
from services.store.base import Workspace
from services.to_neetochat import Refused, agent_of, refusable, reply_in_thread, resolve_agent, tell_thread
from services.to_teams import card_activity, conversation_card


async def run_command(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any]) -> None:
    """Run it and answer in its thread. A command that cannot be done (not an agent, an
    unknown team, neetoChat refusing) is answered with the reason and is then finished: it
    is a request, not something the person wrote for the visitor, so there is nothing to
    keep as undelivered."""
    try:
        await _run(ctx, ws, payload)
    except Refused as exc:
        await tell_thread(ctx, payload, f"⚠️ Could not do /{payload['command']}: {exc}")


async def _run(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any]) -> None:
    command, conversation_id = payload["command"], payload["conversation_id"]
    client = ctx.neetochat(ws)
    if command == "help":
        await reply_in_thread(ctx, payload, help_html(payload.get("problem")))
    elif command == "assign":
        await _assign(ctx, ws, payload)
    elif command == "status":  # the card as it is now, as a reply (a snapshot: not kept current)
        portal = await ctx.store.get_portal(ws.id, conversation_id)
        dest = await ctx.destination(ws, portal.team_id if portal else None)
        conversation = await client.get_conversation(conversation_id)
        activity = card_activity(conversation_card(dest, portal, conversation))
        wrong = problems(await check_health(ctx, ws))
        activity.text = (
            f"Integration health: {len(wrong)} problem(s) ({', '.join(c.name for c in wrong)}): "
            "/health in the notification channel says what to do"
            if wrong
            else "Integration health: all checks pass"
        )
        await ctx.poster.reply(payload["reference"], activity)
    elif command == "unassign":
        actor = await resolve_agent(ctx, ws, payload["reference"], payload["user"])
        await refusable(client.unassign(conversation_id, actor["id"]))
    elif command in ("settings", "health"):
        raise Refused(f"this belongs in the notification channel: write /{command} there")
    else:
        raise Refused(f"/{command} is not a command")


async def _assign(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any]) -> None:
    """``/assign me``, ``/assign @person`` or ``/assign team <name>``, made in neetoChat by
    the writer's agent (or the authorizing user's: anyone in the team may assign)."""
    client, conversation_id = ctx.neetochat(ws), payload["conversation_id"]
    args, reference, user = payload.get("args") or "me", payload["reference"], payload["user"]
    if args.lower() == "me":
        agent = await agent_of(ctx, ws, reference, user)
        if agent is None:
            raise Refused(
                "you are not a neetoChat agent (matched by your email, or as set on the settings page), "
                "so you cannot be assigned"
            )
        await refusable(client.assign_to_agent(conversation_id, agent["id"], agent["id"]))
        return
    actor = await resolve_agent(ctx, ws, reference, user)
    if args.split()[0].lower() == "team":
        team, known = await find_team(ctx.store, ws.id, args.split(None, 1)[1])
        if team is None:
            listed = ", ".join(known) if known else "none yet"
            raise Refused(
                f"no neetoChat team called “{args.split(None, 1)[1]}” is known to the bridge (known: {listed}). "
                "It learns a team when a conversation is first assigned to it in neetoChat"
            )
        await refusable(client.assign_to_team(conversation_id, team["id"], actor["id"]))
        return
    people = payload.get("mentions") or []
    if len(people) != 1:
        raise Refused("mention exactly one person: /assign @name (or /assign me, /assign team <name>)")
    person = people[0]
    agent = await agent_of(ctx, ws, reference, {"id": person["id"], "team_id": user["team_id"]})
    if agent is None:
        raise Refused(
            f"{person['name']} is not a neetoChat agent (no active agent has their email, "
            "or the settings page says they write as the authorizing user)"
        )
    await refusable(client.assign_to_agent(conversation_id, agent["id"], actor["id"]))
