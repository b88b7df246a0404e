"""New messages in conversation channels: stored as Teams sent them, acknowledged, and
only then given to the bot.

Turning an activity into botbuilder's msrest models (and a conversation reference back
into JSON) was most of what a turn cost: about 45 % of the event loop's time under load on
``/api/messages`` (docs/performance.md), while Teams waits for the answer. A new message
in a channel the bridge made for a conversation is by far the most frequent activity, and
it needs no answer but 201: what it asks for, and every reply, goes through the delivery
engine. So once botbuilder has authenticated the request, such a message is stored raw, as
a ``teams_activity`` job in its conversation's partition (dedupe by activity id, so a
redelivery is stored once), and the job loop hands it to the bot (``TeamsBot.replay``):
the same handler, the same checks against the store, the same stored work, after the ack.

Everything else is a turn inside the request as before: invokes (card buttons need their
answer), installs, edits and deletes, and messages anywhere else (General, chats).

The conversation of a channel is kept for ``PORTAL_TTL`` seconds (only found ones: a
channel made a moment ago must not be missed). A conversation closed meanwhile costs one
stored job that the bot then ignores, as it ignores any message in a closed conversation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cachetools import TTLCache

from services.inbox import store_teams_activity
from services.store.base import Portal, Store
from services.teams import split_thread

PORTAL_TTL = 5.0


def channel_message_place(activity: dict[str, Any]) -> tuple[str, str | None] | None:
    """(channel id, thread root id or None) of a new message someone wrote in a team
    channel; None for any other activity, or one without the ids the job needs."""
    if activity.get("type") != "message" or activity.get("deliveryMode") == "expectReplies":
        return None
    data, sender, recipient = activity.get("channelData"), activity.get("from"), activity.get("recipient")
    conversation = activity.get("conversation")
    if not (isinstance(data, dict) and isinstance(sender, dict) and isinstance(recipient, dict)):
        return None
    if not isinstance(conversation, dict) or sender.get("id") == recipient.get("id"):
        return None  # the bot's own post: the turn ignores it
    channel = data.get("channel")
    channel_id = channel.get("id") if isinstance(channel, dict) else None
    conversation_id, activity_id = conversation.get("id"), activity.get("id")
    if not (isinstance(channel_id, str) and channel_id and isinstance(conversation_id, str)):
        return None
    if not (isinstance(activity_id, str) and activity_id):
        return None
    return channel_id, split_thread(conversation_id)[1]


class ChannelInbox:
    def __init__(self, store: Store, on_stored: Callable[[], None]) -> None:
        self.store = store
        self.on_stored = on_stored
        self._portals: TTLCache[tuple[str, str | None], Portal] = TTLCache(
            maxsize=10_000, ttl=PORTAL_TTL, timer=time.monotonic
        )

    async def take(self, activity: dict[str, Any]) -> bool:
        """Store an authenticated activity for later if it is a new message in a
        conversation's channel (True: answer 201 now); False: the caller runs the turn."""
        place = channel_message_place(activity)
        if place is None:
            return False
        portal = self._portals.get(place) or self._portals.get((place[0], None))
        if portal is None:
            portal = await self.store.get_portal_by_channel(*place)
            if portal is None or portal.state != "open":
                return False
            # Kept under what it matched: a conversation's own channel matches any thread
            # (Teams puts each new post's id in the conversation id), a thread only itself.
            self._portals[(place[0], portal.thread_id)] = portal
        if await store_teams_activity(self.store, portal.workspace_id, portal.conversation_id, activity):
            self.on_stored()
        return True
