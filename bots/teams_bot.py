"""The Teams activity handler: thin on purpose.

It records installations, and turns a message in a conversation channel into a stored job
(``services/inbox.py``); a new message there reaches it from the job loop
(``bots/channel_inbox.py``: stored as received and acknowledged first). Delivery to
neetoChat happens after the activity is acknowledged (``services/to_neetochat.py``), so a
slow or failing neetoChat never makes Teams retry or time out, and nothing written in Teams
is lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from botbuilder.core import BotAdapter, TurnContext
from botbuilder.core.teams import TeamsActivityHandler
from botbuilder.schema import Activity, AdaptiveCardInvokeResponse, AdaptiveCardInvokeValue, ChannelAccount
from botbuilder.schema.teams import ChannelInfo, TeamInfo
from msrest.exceptions import DeserializationError

from cards.settings import VERBS as SETTINGS_VERBS
from dialogs.commands import channel_work, parse_command
from dialogs.settings import handle_settings_action
from services.card_actions import handle_card_action
from services.context import BOT_REMOVED, BridgeContext
from services.inbox import teams_work
from services.log_context import bind
from services.store.base import Installation, Job, Portal
from services.teams import split_thread
from services.teams_content import mentioned_people, read_activity
from services.to_neetochat import Refused

log = logging.getLogger(__name__)

REPLAYED_WORK = "bridge.replayed_work"  # turn_state: where a replayed turn's work goes


def _channel_data(activity) -> dict[str, Any]:
    data = activity.channel_data or {}
    return data if isinstance(data, dict) else data.serialize()


class TeamsBot(TeamsActivityHandler):
    def __init__(
        self,
        ctx: BridgeContext,
        adapter: BotAdapter,
        on_enqueued: Callable[[], None],
        on_reconnected: Callable[[str], None],
    ) -> None:
        self.ctx = ctx
        self.adapter = adapter
        self.store = ctx.store
        self.on_enqueued = on_enqueued
        self.on_reconnected = on_reconnected  # a workspace's team has the bot back: look for gaps

    async def on_turn(self, turn_context: TurnContext) -> None:
        bind(activity=turn_context.activity.id)  # on every log line of this turn
        await super().on_turn(turn_context)

    async def replay(self, activity: dict[str, Any]) -> list[Job]:
        """A message stored as Teams sent it (``bots/channel_inbox.py``), taken as a turn
        now: botbuilder parses it and this handler decides what it asks for, exactly as on
        arrival, but hands that work back to the job loop (which runs it in place of the
        stored message) instead of storing it. Nothing is sent within such a turn: replies
        go through the delivery engine."""
        try:
            parsed = Activity().deserialize(activity)
        except DeserializationError as exc:
            raise Refused(f"botbuilder cannot read this activity: {exc}") from None
        turn_context = TurnContext(self.adapter, parsed)
        work: list[Job] = []
        turn_context.turn_state[REPLAYED_WORK] = work
        await self.on_turn(turn_context)
        return work

    # card buttons ----------------------------------------------------------------------
    async def on_adaptive_card_invoke(
        self, turn_context: TurnContext, invoke_value: AdaptiveCardInvokeValue
    ) -> AdaptiveCardInvokeResponse:
        action = invoke_value.action or {}
        verb, data = action.get("verb"), action.get("data") or {}
        if verb in SETTINGS_VERBS:
            return await handle_settings_action(self.ctx, turn_context, verb, data)
        return await handle_card_action(self.ctx, turn_context, verb, data)

    # installation ----------------------------------------------------------------------
    async def on_installation_update_add(self, turn_context: TurnContext) -> None:
        await self._installed(turn_context, True)

    async def on_installation_update_remove(self, turn_context: TurnContext) -> None:
        await self._installed(turn_context, False)

    async def on_teams_members_added(  # conversationUpdate: the bot itself added to a team
        self, teams_members_added: list[ChannelAccount], team_info: TeamInfo, turn_context: TurnContext
    ) -> None:
        if any(m.id == turn_context.activity.recipient.id for m in teams_members_added):
            await self._installed(turn_context, True)

    async def on_teams_members_removed(
        self, teams_members_removed: list[ChannelAccount], team_info: TeamInfo, turn_context: TurnContext
    ) -> None:
        if any(m.id == turn_context.activity.recipient.id for m in teams_members_removed):
            await self._installed(turn_context, False)

    async def on_teams_channel_deleted(
        self, channel_info: ChannelInfo, team_info: TeamInfo, turn_context: TurnContext
    ) -> None:
        """A conversation's channel was deleted: a job (in the conversation's order, after
        a close that may have caused it) gives it a new one if it is still open."""
        portal = await self.store.get_portal_by_channel(channel_info.id)
        if portal is None or portal.thread_id:
            return
        payload = {"channel_id": channel_info.id}
        activity_id = turn_context.activity.id
        job = teams_work("channel_deleted", portal.workspace_id, portal.conversation_id, activity_id, payload)
        await self._store(turn_context, job)

    async def _installed(self, turn_context: TurnContext, installed: bool) -> None:
        activity = turn_context.activity
        data = _channel_data(activity)
        team = data.get("team") or {}
        if not team.get("id"):
            return  # personal or group-chat install: the bridge works in teams only
        tenant_id = (data.get("tenant") or {}).get("id") or activity.conversation.tenant_id
        previous = await self.store.get_installation(team["id"])
        await self.store.put_installation(
            Installation(
                team_id=team["id"],
                aad_group_id=team.get("aadGroupId") or (previous.aad_group_id if previous else None),
                tenant_id=tenant_id,
                service_url=activity.service_url,
                general_channel_id=team["id"],  # General's channel id is the team id
                name=team.get("name") or (previous.name if previous else ""),
                installed=installed,
                updated_at=time.time(),
            )
        )
        log.info("bot %s team %s", "installed in" if installed else "removed from", team["id"])
        if installed and previous is not None and not previous.installed:
            await self._resume(team["id"], team.get("aadGroupId"))

    async def _resume(self, team_id: str, group_id: str | None) -> None:
        """Added back: what stopped because the bot was gone is delivered now, in order."""
        linked = await self.store.workspaces_linked_to([team_id, group_id or ""])
        routing = [
            w for w in await self.store.linked_workspaces() if any(r["team_id"] == team_id for r in w.routes or [])
        ]
        for ws in {w.id: w for w in linked + routing}.values():  # linked to the team, or routing to it
            replayed = await self.store.requeue_dead_jobs(ws.id, error_prefix=BOT_REMOVED)
            if replayed:
                log.info("bot back in team %s: replaying %d deliveries", team_id, replayed, extra={"workspace": ws.id})
                self.on_enqueued()
            self.on_reconnected(ws.id)  # what people wrote while the bot was gone never reached it

    # messages --------------------------------------------------------------------------
    async def on_message_activity(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        found = await self._conversation_of(activity)
        if found is None:
            await self._settings_command(turn_context)
            return
        portal, data, channel_id = found
        # The text/html attachment when Teams sent one (mentions, emoji, quotes, images);
        # the files, images, GIFs and stickers travel in the job to be fetched after the ack.
        text, attachments = read_activity(activity, TurnContext.remove_recipient_mention(activity) or "")
        kind, extra = channel_work(text)
        payload = {"text": text, "attachments": attachments, **_origin(activity, data, channel_id, portal.team_id)}
        payload.update(extra)
        if kind == "teams_command":
            payload["mentions"] = mentioned_people(activity)
        job = teams_work(kind, portal.workspace_id, portal.conversation_id, activity.id, payload)
        await self._store(turn_context, job)

    async def _settings_command(self, turn_context: TurnContext) -> None:
        """``/settings`` or ``/health`` posted in a linked workspace's notification channel
        (anything else there is people talking to each other, not to the bridge)."""
        activity = turn_context.activity
        if not (activity.text or "").lstrip().startswith(("/", "<")) or _from_bot(activity):
            return  # cheap exit for the common case: ordinary chat
        text, _ = read_activity(activity, TurnContext.remove_recipient_mention(activity) or "")
        command = parse_command(text)
        data = _channel_data(activity)
        channel_id, team_id = (data.get("channel") or {}).get("id"), (data.get("team") or {}).get("id")
        kind = NOTIFICATION_CHANNEL_COMMANDS.get(command.name) if command else None
        if kind is None or not channel_id or not team_id:
            return
        for ws in await self.store.workspaces_linked_to([team_id]):
            if channel_id == (ws.notification_channel_id or team_id):  # unset: General, whose id is the team's
                payload = _origin(activity, data, channel_id, team_id)
                await self._store(turn_context, teams_work(kind, ws.id, "_workspace", activity.id, payload))

    async def on_teams_message_edit(self, turn_context: TurnContext) -> None:
        await self._store_change(turn_context, "teams_edit")

    async def on_teams_message_soft_delete(self, turn_context: TurnContext) -> None:
        await self._store_change(turn_context, "teams_delete")

    async def _store_change(self, turn_context: TurnContext, kind: str) -> None:
        """A person edited or deleted a channel message: the job changes the neetoChat
        message it became (found through the message map, so it works after a restart)."""
        activity = turn_context.activity
        found = await self._conversation_of(activity)
        if found is None:
            return
        portal, data, channel_id = found
        payload = _origin(activity, data, channel_id, portal.team_id)
        change = "delete"
        if kind == "teams_edit":  # each edit is its own job: the id is the message's
            payload["text"], _ = read_activity(activity, TurnContext.remove_recipient_mention(activity) or "")
            change = f"edit:{activity.timestamp.isoformat() if activity.timestamp else payload['text']}"
        job = teams_work(kind, portal.workspace_id, portal.conversation_id, activity.id, payload, change)
        await self._store(turn_context, job)

    async def _store(self, turn_context: TurnContext, job: Job) -> None:
        """Store the work the activity asks for; a replayed turn hands it back instead."""
        handed_back = turn_context.turn_state.get(REPLAYED_WORK)
        if handed_back is not None:
            handed_back.append(job)
        elif await self.store.enqueue(job):
            self.on_enqueued()

    async def _conversation_of(self, activity) -> tuple[Portal, dict[str, Any], str] | None:
        """The open conversation whose channel (or notification-channel thread) the activity
        is in, with its channel data and channel id; None for anything else (General, chats,
        the bot's own posts)."""
        if _from_bot(activity):
            return None  # never echo the bot's own posts
        data = _channel_data(activity)
        channel_id = (data.get("channel") or {}).get("id")
        if not channel_id:
            return None  # 1:1 and group chats are not conversation channels
        # A reply in a thread has ``;messageid=<root>`` in its conversation id: a conversation
        # living as a thread of the notification channel is found by that root.
        _, thread_id = split_thread(activity.conversation.id or "")
        portal = await self.store.get_portal_by_channel(channel_id, thread_id)
        if portal is None or portal.state != "open":
            return None
        return portal, data, channel_id


# Commands of the notification channel → their job kind.
NOTIFICATION_CHANNEL_COMMANDS = {"settings": "teams_settings", "health": "teams_health"}


def _from_bot(activity) -> bool:
    return bool(activity.from_property and activity.from_property.id == activity.recipient.id)


def _origin(activity, data: dict[str, Any], channel_id: str, team_id: str | None) -> dict[str, Any]:
    """Who wrote it and where: what every job from a channel message needs to act as its
    author and to answer in its thread."""
    sender = activity.from_property
    return {
        "channel_id": channel_id,
        "user": {
            "id": sender.id,
            "aad_object_id": sender.aad_object_id,
            "name": sender.name,
            "team_id": (data.get("team") or {}).get("id") or team_id,
        },
        "reference": TurnContext.get_conversation_reference(activity).serialize(),
    }
