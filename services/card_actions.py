"""The buttons on conversation cards (``Action.Execute``, Universal Actions).

"Assign to me" and "Close" act in neetoChat as the agent who pressed them (their identity
override, else matched by the Teams member's email: ``services/identities.py``), then
refresh the card in place for everyone and answer the person with the new card. The
person is waiting for the answer, so this runs in the invoke itself; a Teams user who is
not a neetoChat agent gets a plain explanation instead.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from botbuilder.core import TurnContext
from botbuilder.core.teams import TeamsInfo
from botbuilder.schema import AdaptiveCardInvokeResponse

from services.context import BridgeContext, NotLinked
from services.errors import RemoteError
from services.identities import acting_agent
from services.to_teams import close_portal, conversation_card, refresh_cards

log = logging.getLogger(__name__)

CARD = "application/vnd.microsoft.card.adaptive"
MESSAGE = "application/vnd.microsoft.activity.message"
VERBS = ("assign_to_me", "close")


class InvokeAnswer(AdaptiveCardInvokeResponse):
    """botbuilder types ``value`` as a dict, but a message answer's value is a string."""

    _attribute_map = {**AdaptiveCardInvokeResponse._attribute_map, "value": {"key": "value", "type": "object"}}


def invoke_message(text: str) -> AdaptiveCardInvokeResponse:
    return InvokeAnswer(status_code=200, type=MESSAGE, value=text)


async def _invoker_agent(ctx: BridgeContext, turn_context: TurnContext, ws) -> dict[str, Any] | None:
    """Who pressed, in neetoChat: the same resolution as for their messages."""
    sender = turn_context.activity.from_property

    async def email() -> str | None:
        account = await TeamsInfo.get_member(turn_context, sender.id)
        return account.email or account.user_principal_name

    return await acting_agent(ctx, ws, sender.aad_object_id, email)


async def handle_card_action(
    ctx: BridgeContext, turn_context: TurnContext, verb: str | None, data: dict[str, Any]
) -> AdaptiveCardInvokeResponse:
    if verb not in VERBS:
        return invoke_message("This button is not supported any more.")
    ws = await ctx.store.get_workspace(str(data.get("workspace", "")))
    portal = await ctx.store.get_portal(ws.id, str(data.get("conversation_id", ""))) if ws else None
    if ws is None or portal is None:
        return invoke_message("This conversation is no longer connected to Teams.")
    try:
        dest = await ctx.destination(ws, portal.team_id)
        agent = await _invoker_agent(ctx, turn_context, ws)
        if agent is None:
            return invoke_message(
                "Only neetoChat agents can assign or close conversations. Ask an admin to invite "
                "you to neetoChat with the email you use in Teams, or to set who you are in neetoChat "
                "on the integration's settings page."
            )
        client = ctx.neetochat(ws)
        if verb == "assign_to_me":
            conversation = await client.assign_to_agent(portal.conversation_id, agent["id"], agent["id"])
            refresh_cards(ctx, dest, portal, conversation)
        else:
            conversation = await client.close_conversation(portal.conversation_id, agent["id"])
            await close_portal(ctx, dest, conversation, agent)
            portal = replace(portal, state="closed")
    except (RemoteError, NotLinked) as exc:
        log.warning("card action %s failed: %s", verb, exc)
        return invoke_message(f"That did not work: {exc}. Please try again.")
    return InvokeAnswer(status_code=200, type=CARD, value=conversation_card(dest, portal, conversation))
