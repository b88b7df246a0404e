"""``/settings`` in the notification channel, and the buttons on the card it posts.

The command is a job like every other answer (``show_settings``): the card goes out
through the delivery engine. The buttons are invokes (``handle_settings_action``): the
person waits for the answer, so they run in the invoke. Who may change the settings is
decided by the team's roster in Graph (owners), asked at every press, never by the card.
"""

from __future__ import annotations

import logging
from typing import Any

from botbuilder.core import TurnContext
from botbuilder.schema import Activity, ActivityTypes, AdaptiveCardInvokeResponse

from cards.conversation import card_attachment
from cards.settings import EDIT_VERB, SAVE_VERB, settings_card, settings_form
from services.card_actions import CARD, InvokeAnswer, invoke_message
from services.context import BridgeContext, Destination, NotLinked
from services.errors import RemoteError
from services.graph import ChannelInfo
from services.store.base import Workspace
from services.team_settings import SettingsError, change_settings, is_team_owner, team_channels

log = logging.getLogger(__name__)

NOT_OWNER = "Only owners of this team can change these settings."


async def show_settings(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any]) -> None:
    """Answer ``/settings`` with the read-only card (RemoteError: the job retries)."""
    dest = await ctx.destination(ws)
    channels = await team_channels(ctx, ws, dest.installation)
    activity = Activity(type=ActivityTypes.message, attachments=[card_attachment(_view(dest, channels))])
    await ctx.poster.reply(payload["reference"], activity)


async def handle_settings_action(
    ctx: BridgeContext, turn_context: TurnContext, verb: str, data: dict[str, Any]
) -> AdaptiveCardInvokeResponse:
    """View, edit (owners) or save (owners, checked again) from the settings card."""
    ws = await ctx.store.get_workspace(str(data.get("workspace", "")))
    try:
        if ws is None:
            raise NotLinked("the workspace was disconnected")
        dest = await ctx.destination(ws)
        inst = dest.installation
        channels = await team_channels(ctx, ws, inst)
        if verb not in (EDIT_VERB, SAVE_VERB):
            return _card(_view(dest, channels))
        person = turn_context.activity.from_property
        if not await is_team_owner(ctx, ws, inst, person.aad_object_id):
            return _card(_view(dest, channels, problem=NOT_OWNER))
        if verb == EDIT_VERB:
            return _card(_form(dest, channels))
        try:
            channels = await change_settings(
                ctx, ws, inst, data.get("notification_channel_id"), data.get("update_type")
            )
        except SettingsError as exc:
            return _card(_form(dest, channels, problem=str(exc)))
    except NotLinked as exc:
        return invoke_message(f"This workspace is not connected to Teams any more: {exc}.")
    except RemoteError as exc:
        log.warning("settings action %s failed: %s", verb, exc)
        return invoke_message(f"That did not work: {exc}. Please try again.")
    log.info("settings of workspace %s changed from Teams by %s", ws.id, person.aad_object_id)
    saved = _view(dest, channels, notice=f"Saved by {person.name or 'a team owner'}.")
    await _show_everyone(turn_context, saved)
    return _card(saved)


async def _show_everyone(turn_context: TurnContext, card: dict[str, Any]) -> None:
    """The invoke answer replaces the card for the person who pressed only; the others
    would keep seeing the old settings, so the post itself is updated too."""
    post_id = turn_context.activity.reply_to_id
    if not post_id:
        return
    update = Activity(type=ActivityTypes.message, id=post_id, attachments=[card_attachment(card)])
    try:
        await turn_context.update_activity(update)
    except Exception:  # the settings are saved; a stale card for others is not worth failing the answer
        log.exception("could not update the settings card %s for everyone", post_id)


def _card(card: dict[str, Any]) -> AdaptiveCardInvokeResponse:
    return InvokeAnswer(status_code=200, type=CARD, value=card)


def _view(
    dest: Destination, channels: list[ChannelInfo], *, notice: str | None = None, problem: str | None = None
) -> dict[str, Any]:
    ws, selected = dest.workspace, dest.notification_channel_id
    name = next((c.name for c in channels if c.id == selected), "a channel that no longer exists")
    return settings_card(ws.id, ws.name or ws.id, name, ws.update_type, notice=notice, problem=problem)


def _form(dest: Destination, channels: list[ChannelInfo], *, problem: str | None = None) -> dict[str, Any]:
    ws, options = dest.workspace, [(c.id, c.name) for c in channels]
    return settings_form(
        ws.id, ws.name or ws.id, options, dest.notification_channel_id, ws.update_type, problem=problem
    )
