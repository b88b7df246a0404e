"""What the channel commands do (``/close`` and ``/note`` are in services/to_neetochat.py,
being a close and a message). Run by the job loop, so answers go out through the same
delivery engine as everything else: retried, rate-shaped, never lost silently."""

from __future__ import annotations

from typing import Any

from dialogs.commands import help_html
from services.context import BridgeContext
from services.store.base import Workspace
from services.to_neetochat import Refused, agent_of, reply_in_thread, resolve_agent
from services.to_teams import card_activity, conversation_card


async def run_command(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any]) -> None:
    command, conversation_id = payload["command"], payload["conversation_id"]
    client = ctx.neetochat(ws)
    if command == "help":
        await reply_in_thread(ctx, payload, help_html(payload.get("problem")))
    elif command == "assign":  # "/assign me": the writer must be an agent themselves
        agent = await agent_of(ctx, ws, payload["reference"], payload["user"])
        if agent is None:
            raise Refused("you are not a neetoChat agent (matched by your email), so you cannot be assigned")
        await client.assign_to_agent(conversation_id, agent["id"], agent["id"])
    elif command == "status":  # the card as it is now, as a reply (a snapshot: not kept current)
        dest = await ctx.destination(ws)
        portal = await ctx.store.get_portal(ws.id, conversation_id)
        conversation = await client.get_conversation(conversation_id)
        await ctx.poster.reply(payload["reference"], card_activity(conversation_card(dest, portal, conversation)))
    elif command == "unassign":
        actor = await resolve_agent(ctx, ws, payload["reference"], payload["user"])
        await client.unassign(conversation_id, actor["id"])
    else:
        raise Refused(f"/{command} is not a command")
