"""neetoChat → Teams: where a stored webhook event becomes channels and posts.

Every handler is idempotent and resumable, because a job can be cut off at any point
(crash, ``kill -9``, lost lease) and run again from the start:

- the portal row is created before the channel, and the channel id recorded as soon as
  Graph returns it, so a rerun never makes a second channel;
- every post goes through ``post_once`` with a stable key (the neetoChat message id, or
  ``intro:``/``notice:``/``event:``/``transcript:`` keys), which records an intent before
  posting and the Teams activity id after; a key with an activity id is never posted again.

Events can arrive twice, late or out of order; the outcome is the same because any event
for a conversation first *ensures* its portal (create channel, intro card, notice, then
backfill every earlier message from ``GET /conversations/{id}/messages`` in order).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from botbuilder.schema import Activity, ActivityTypes

from cards import notices
from cards.conversation import card_attachment, new_conversation_card
from cards.transcript import transcript_card
from services.channel_names import channel_name
from services.context import BridgeContext, Destination
from services.errors import RemoteError
from services.fencing import check_lease
from services.graph import BotPost, GraphChannels
from services.neeto_teams import remember_teams
from services.rate_limits import Throttled
from services.routing import channel_team, route_team
from services.store.base import MessageLink, Portal, Workspace
from services.teams_text import html_to_text

log = logging.getLogger(__name__)

MAX_NAME_ATTEMPTS = 20


def html_activity(text: str) -> Activity:
    return Activity(type=ActivityTypes.message, text=text, text_format="xml")


def card_activity(card: dict[str, Any]) -> Activity:
    return Activity(type=ActivityTypes.message, attachments=[card_attachment(card)])


async def post_once(
    ctx: BridgeContext,
    dest: Destination,
    conversation_id: str,
    key: str,
    channel_id: str,
    activity: Activity,
    *,
    thread_id: str | None = None,
    intent_at: float = 0.0,
) -> tuple[str, dict[str, Any]]:
    """Post ``activity`` in ``channel_id`` (a root post, or a reply in thread ``thread_id``)
    unless ``key`` was posted before.

    The intent is recorded before posting (at ``intent_at``, default now). Finding an intent
    without an activity id means an earlier attempt died between posting and recording:
    Graph's list of the channel's posts tells whether that post exists, and it is adopted
    instead of posted again. Returns the activity id and the reference of the thread the
    post is in.
    """
    ws_id = dest.workspace.id
    root = thread_id

    def reference(activity_id: str) -> dict[str, Any]:
        return ctx.poster.thread_reference(dest.service_url, dest.tenant_id, channel_id, root or activity_id)

    link = await ctx.store.get_link_by_neeto_id(ws_id, key)
    if link and link.teams_activity_id:
        return link.teams_activity_id, reference(link.teams_activity_id)
    activity_id = None
    if link is None:
        await ctx.store.add_message_link(
            MessageLink(ws_id, conversation_id, key, None, "to_teams", created_at=intent_at, channel_id=channel_id)
        )
    else:
        activity_id = await _earlier_post(ctx, dest, channel_id, thread_id, link, activity)
    if activity_id is None:
        await check_lease(ctx.store)
        try:
            if thread_id is None:
                activity_id = await ctx.poster.post_to_channel(
                    service_url=dest.service_url, tenant_id=dest.tenant_id, channel_id=channel_id, activity=activity
                )
            else:
                activity_id = await ctx.poster.reply(reference(thread_id), activity)
        except RemoteError as exc:
            if _not_posted(exc):  # the rerun need not ask Graph whether it went out
                await ctx.store.drop_intent(ws_id, key)
            raise
    await ctx.store.complete_message_link(ws_id, neeto_message_id=key, teams_activity_id=activity_id)
    return activity_id, reference(activity_id)


def _not_posted(exc: RemoteError) -> bool:
    """Whether a failed post certainly made nothing: our shaping held it back, or Teams
    refused it (4xx, 429 included). A timeout, a dropped connection or a 5xx may still have
    posted it."""
    return isinstance(exc, Throttled) or (exc.status is not None and 400 <= exc.status < 500)


def _graph(ctx: BridgeContext, dest: Destination) -> GraphChannels:
    return ctx.graph.for_tenant(dest.tenant_id)


# Teams' clock and ours may differ; look back a little further than the intent.
CLOCK_SKEW = 120.0


async def _earlier_post(
    ctx: BridgeContext,
    dest: Destination,
    channel_id: str,
    thread_id: str | None,
    link: MessageLink,
    activity: Activity,
) -> str | None:
    """The id of a bot post identical to ``activity`` made since the intent and not yet
    linked to anything, or None."""
    group_id = dest.installation.aad_group_id or dest.workspace.aad_group_id
    posts = await _graph(ctx, dest).bot_posts_since(
        group_id, channel_id, ctx.settings.app_id or None, link.created_at - CLOCK_SKEW, thread_id
    )
    for post in posts:
        if _same_content(post, activity) and not await ctx.store.get_link_by_activity_id(dest.workspace.id, post.id):
            log.info("adopting post %s made before a crash", post.id)
            return post.id
    return None


def _same_content(post: BotPost, activity: Activity) -> bool:
    if activity.attachments:
        sent = [json.loads(json.dumps(a["content"])) for a in activity.attachments]
        return post.cards == sent
    return _plain(post.html) == _plain(activity.text or "")


def _plain(markup: str) -> str:
    """Visible text only, so Teams' rewriting of our HTML tags does not matter."""
    return " ".join(html_to_text(re.sub(r"<attachment[^>]*></attachment>", "", markup)).split())


async def handle_event(ctx: BridgeContext, ws: Workspace, event: dict[str, Any]) -> None:
    """Apply one neetoChat event to Teams."""
    name = event["event"]
    data = event["data"]
    conversation = data["conversation"]
    await remember_teams(ctx.store, ws.id, event)  # for /assign team <name>
    dest = await ctx.destination(ws, await channel_team(ctx, ws, conversation))
    if name == "conversation.closed":
        await close_portal(ctx, dest, conversation, data.get("actor"), closed_at=event.get("created_at"))
        return
    try:
        portal = await ensure_portal(ctx, dest, conversation["id"])
        if portal is None or portal.state != "open":
            return
        if name == "conversation.reopened":  # ensure_portal gave it a channel again
            refresh_cards(ctx, dest, portal, conversation)
            text = notices.reopened_html(portal.number, portal.channel_name, portal.channel_url, data.get("actor"))
            await post_once(
                ctx,
                dest,
                portal.conversation_id,
                f"reopened:{event['id']}",
                dest.notification_channel_id,
                html_activity(text),
            )
        if name == "message.created":
            await deliver_message(ctx, dest, portal, data["message"], conversation)
            if not data["message"].get("internal"):
                # The last reply time moved: the notification card shows it to people outside
                # the channel; the channel's own card is not worth a second Teams call per message.
                refresh_cards(ctx, dest, portal, conversation, channel_card=False)
        elif name == "message.updated":
            await edit_message(ctx, dest, portal, data["message"], conversation)
        elif name == "message.deleted":
            await delete_message(ctx, dest, portal, data["message"]["id"])
        elif name in ("conversation.assigned", "conversation.unassigned"):
            await post_assignment(ctx, dest, portal, event)
            refresh_cards(ctx, dest, portal, conversation)
        # conversation.created is fully handled by ensure_portal.
    except RemoteError as exc:
        if not (exc.service == "Teams" and exc.status == 404):
            raise
        portal = await ctx.store.get_portal(ws.id, conversation["id"])
        if portal is None or not await _channel_missing(ctx, dest, portal):
            raise
        # Deleted without the bot hearing of it (channelDeleted missed): same as hearing it.
        await channel_gone(ctx, ws, {"conversation_id": portal.conversation_id, "channel_id": portal.channel_id})
        raise RemoteError("Teams", "the conversation channel had been deleted; retrying in its new one") from exc


async def _channel_missing(ctx: BridgeContext, dest: Destination, portal: Portal) -> bool:
    if portal.state != "open" or not portal.channel_id or portal.thread_id:
        return False
    group_id = dest.installation.aad_group_id or dest.workspace.aad_group_id
    return not await _graph(ctx, dest).exists(group_id, portal.channel_id)


# A portal's fields about its channel, reset so that ensure_portal opens a new channel.
NO_CHANNEL: dict[str, Any] = {
    "channel_id": None,
    "channel_name": None,
    "channel_url": None,
    "intro_activity_id": None,
    "conversation_reference": None,
    "backfilled": False,
}


async def channel_gone(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any]) -> None:
    """Someone deleted an open conversation's channel in Teams: give the conversation a new
    channel with its whole history (the old posts went with the old channel) and say so in
    the notification channel. Our own deletion on close lands here too, and is ignored
    because the portal is closed by then (jobs of a conversation run in order)."""
    conv_id, gone = payload["conversation_id"], payload["channel_id"]
    portal = await ctx.store.get_portal(ws.id, conv_id)
    if portal is None or portal.state == "closed" or portal.thread_id:
        return
    dest = await ctx.destination(ws, portal.team_id)
    if portal.channel_id == gone:
        await ctx.store.forget_channel_links(ws.id, conv_id, gone)
        await ctx.store.update_portal(ws.id, conv_id, **NO_CHANNEL)
        log.warning("conversation channel %s was deleted in Teams: opening a new one", gone)
    conversation = await ctx.neetochat(ws).get_conversation(conv_id)
    if conversation.get("status") == "closed":
        await close_portal(ctx, dest, conversation, None)
        return
    portal = await ensure_portal(ctx, dest, conv_id)
    if portal is None:
        return
    refresh_cards(ctx, dest, portal, conversation)
    if portal.thread_id:
        return  # the channel cap was reached meanwhile: the thread's first reply says so
    text = notices.channel_recreated_html(portal.number, portal.channel_name, portal.channel_url)
    await post_once(ctx, dest, conv_id, f"moved:{conv_id}:{gone}", dest.notification_channel_id, html_activity(text))


async def _reopen(ctx: BridgeContext, dest: Destination, portal: Portal) -> Portal | None:
    """A closed portal whose conversation is open again in neetoChat (``conversation.reopened``,
    or any event of it while it is open again, should that event have been lost): open it
    without a channel, so that ``ensure_portal`` gives it a new one (the old name stays taken
    for 30 days: ``<n> <name> 2``) with the whole history. None for a late event of the
    conversation's earlier life (it is still closed)."""
    ws_id, conversation_id = portal.workspace_id, portal.conversation_id
    conversation = await ctx.neetochat(dest.workspace).get_conversation(conversation_id)
    if conversation.get("status") == "closed":
        return None
    if portal.channel_id:
        # The old posts went with the deleted channel (or stay in the notification channel's
        # thread): forget them, so that the history is posted again in the new channel.
        await ctx.store.forget_channel_links(ws_id, conversation_id, portal.channel_id)
    # number: a tombstone (closed before we saw it) has none
    fields = {"number": conversation["number"], "state": "open", "thread_id": None, "reopened": True, **NO_CHANNEL}
    await ctx.store.update_portal(ws_id, conversation_id, **fields)
    log.info("conversation reopened: opening a channel for it again")
    return replace(portal, **fields)


async def ensure_portal(ctx: BridgeContext, dest: Destination, conversation_id: str) -> Portal | None:
    """The conversation's portal, created and backfilled if it does not exist yet, or again
    if the conversation was closed and is open again.

    None when the conversation is closed and never had a channel: a late
    ``conversation.created`` must not resurrect a closed conversation.
    """
    ws_id = dest.workspace.id
    conv_id = conversation_id
    portal = await ctx.store.get_portal(ws_id, conv_id)
    if portal and portal.state == "open" and portal.backfilled:
        return portal
    if portal and portal.state == "closed":
        reopened = await _reopen(ctx, dest, portal)
        if reopened is None:
            return portal
        portal = reopened
    client = ctx.neetochat(dest.workspace)
    conversation = await client.get_conversation(conv_id)  # the event's copy may be stale
    if portal is None:
        if conversation.get("status") == "closed":
            await ctx.store.create_portal(Portal(ws_id, conv_id, conversation["number"], state="closed"))
            return None
        portal = Portal(ws_id, conv_id, conversation["number"], team_id=dest.installation.team_id)
        await ctx.store.create_portal(portal)
    history = [m async for m in client.iter_messages(conv_id)]
    first = next((m for m in history if _is_bridgeable(m) and m["sender"].get("type") == "visitor"), None)
    portal.first_message = first["body"] if first else None
    if portal.channel_id is None:
        try:
            portal = await _create_channel(ctx, dest, portal, conversation)
        except ChannelCapReached as exc:
            log.warning("no channel for conversation %s: %s", conv_id, exc)
    if portal.channel_id is None or portal.thread_id:
        portal = await _open_thread(ctx, dest, portal, conversation)
        intro_id = portal.intro_activity_id
    else:
        card = conversation_card(dest, portal, conversation)
        intro_id, reference = await post_once(
            ctx, dest, conv_id, f"intro:{conv_id}", portal.channel_id, card_activity(card)
        )
        notice_id, _ = await post_once(
            ctx, dest, conv_id, f"notice:{conv_id}", dest.notification_channel_id, card_activity(card)
        )
        fields: dict[str, Any] = {
            "intro_activity_id": intro_id,
            "notice_activity_id": notice_id,
            "conversation_reference": reference,
            "first_message": portal.first_message,
        }
        await ctx.store.update_portal(ws_id, conv_id, **fields)
        portal = replace(portal, **fields)
        if portal.reopened:  # after the card, before the history
            await _post_transcript(
                ctx,
                dest,
                conversation,
                f"opening-transcript:{conv_id}:{portal.channel_id}",
                portal.channel_id,
                messages=history,
                reopened=True,
            )
    if first:
        # The card shows the first message: link it to the card (the suffix keeps the
        # activity id unique in the map) so the backfill below does not post it again.
        await ctx.store.add_message_link(
            MessageLink(ws_id, conv_id, first["id"], f"{intro_id}#first", "to_teams", channel_id=portal.channel_id)
        )
    for message in history:
        await deliver_message(ctx, dest, portal, message, conversation, backfill=True)
    await ctx.store.update_portal(ws_id, conv_id, backfilled=True, reopened=False)
    portal.backfilled, portal.reopened = True, False
    return portal


async def _open_thread(ctx: BridgeContext, dest: Destination, portal: Portal, conversation: dict[str, Any]) -> Portal:
    """The conversation as a thread in the notification channel (the team is at its channel
    cap): the notification card is the thread's root, its first reply says why."""
    ws_id, conv_id = portal.workspace_id, portal.conversation_id
    card = conversation_card(dest, portal, conversation)
    notice_id, reference = await post_once(
        ctx, dest, conv_id, f"notice:{conv_id}", dest.notification_channel_id, card_activity(card)
    )
    fields: dict[str, Any] = {
        "channel_id": dest.notification_channel_id,
        "thread_id": notice_id,
        "state": "open",
        "intro_activity_id": notice_id,
        "notice_activity_id": notice_id,
        "conversation_reference": reference,
        "first_message": portal.first_message,
    }
    await ctx.store.update_portal(ws_id, conv_id, **fields)
    portal = replace(portal, **fields)
    await post_once(
        ctx,
        dest,
        conv_id,
        f"threaded:{conv_id}",
        portal.channel_id,
        html_activity(notices.threaded_html(portal.number)),
        thread_id=notice_id,
    )
    return portal


class ChannelCapReached(Exception):
    """Graph refuses a new channel: the team holds its maximum (deleted ones count)."""


def _is_channel_cap(exc: RemoteError) -> bool:
    # 403 "This team has exceeded the Max allowed channels"; older tenants said
    # ResourceLimitExceeded (../docs: "Decisions", channel cap).
    return exc.code == "ResourceLimitExceeded" or (exc.status == 403 and "max allowed channels" in str(exc).lower())


async def _create_channel(
    ctx: BridgeContext, dest: Destination, portal: Portal, conversation: dict[str, Any]
) -> Portal:
    """Create the conversation's channel, choosing another name while Teams says the name
    is taken (names of deleted channels stay taken for 30 days)."""
    group_id = dest.installation.aad_group_id or dest.workspace.aad_group_id
    visitor = conversation.get("visitor") or {}
    who = visitor.get("email") or visitor.get("name") or "a visitor"
    description = f"neetoChat conversation #{conversation['number']} with {who}"
    channel = await _graph(ctx, dest).find_by_name(group_id, portal.channel_name) if portal.channel_name else None
    attempt = 0
    while channel is None:
        if attempt == MAX_NAME_ATTEMPTS:
            raise RemoteError("Graph", f"no free channel name after {MAX_NAME_ATTEMPTS} tries", status=409)
        name = channel_name(conversation["number"], visitor.get("name"), visitor.get("email"), attempt)
        # Recorded first: if we crash after Graph made the channel, the rerun finds it.
        await ctx.store.update_portal(portal.workspace_id, portal.conversation_id, channel_name=name)
        await check_lease(ctx.store)
        try:
            channel = await _graph(ctx, dest).create(group_id, name, description[:1024])
        except RemoteError as exc:
            if _is_channel_cap(exc):
                raise ChannelCapReached(str(exc)) from exc
            if exc.code != "NameAlreadyExists":
                raise
            attempt += 1
    opened = {"channel_id": channel.id, "channel_name": channel.name, "channel_url": channel.web_url, "state": "open"}
    await ctx.store.update_portal(portal.workspace_id, portal.conversation_id, **opened)
    return replace(portal, **opened)


def _is_bridgeable(message: dict[str, Any]) -> bool:
    """Messages that belong in the channel: what did not come from Teams (internal notes
    too, marked as such)."""
    return message.get("source") != "teams"


async def deliver_message(
    ctx: BridgeContext,
    dest: Destination,
    portal: Portal,
    message: dict[str, Any],
    conversation: dict[str, Any],
    *,
    backfill: bool = False,
) -> None:
    """Post one neetoChat message into the conversation's channel (or thread).

    A message written in Teams is an echo and not posted, unless this is the backfill of
    a channel that replaced a deleted one: its Teams post went with the old channel (its
    link was forgotten), so the history shows it again. Internal notes are posted marked
    as internal: the channel is the team's, the visitor never sees it."""
    ws_id = dest.workspace.id
    external = message.get("external_id")
    if external and await ctx.store.get_link_by_activity_id(ws_id, external):
        return  # an echo of a Teams message still in Teams
    if message.get("source") == "teams" and not backfill:
        return
    text = notices.message_html(message, conversation.get("url"))
    await post_once(
        ctx,
        dest,
        portal.conversation_id,
        message["id"],
        portal.channel_id,
        html_activity(text),
        thread_id=portal.thread_id,
    )


async def _bridged_post(
    ctx: BridgeContext, dest: Destination, portal: Portal, message_id: str
) -> tuple[dict[str, Any], str] | None:
    """The (thread reference, activity id) of the post showing neetoChat message
    ``message_id`` in the portal's current channel, or None (never posted, written in Teams,
    or in a channel since replaced)."""
    link = await ctx.store.get_link_by_neeto_id(dest.workspace.id, message_id)
    if link is None or not link.teams_activity_id or link.direction != "to_teams":
        log.info("edit or delete of message %s, which has no post of the bridge: ignored", message_id)
        return None
    if link.channel_id and link.channel_id != portal.channel_id:
        return None
    root = portal.thread_id or link.teams_activity_id
    reference = ctx.poster.thread_reference(dest.service_url, dest.tenant_id, portal.channel_id, root)
    return reference, link.teams_activity_id


async def edit_message(
    ctx: BridgeContext, dest: Destination, portal: Portal, message: dict[str, Any], conversation: dict[str, Any]
) -> None:
    """``message.updated``: the post shows the new text (Teams marks it edited)."""
    found = await _bridged_post(ctx, dest, portal, message["id"])
    if found:
        await check_lease(ctx.store)
        await ctx.poster.update(*found, html_activity(notices.message_html(message, conversation.get("url"))))


async def delete_message(ctx: BridgeContext, dest: Destination, portal: Portal, message_id: str) -> None:
    """``message.deleted``: the post is deleted too (gone already is fine)."""
    found = await _bridged_post(ctx, dest, portal, message_id)
    if found:
        await check_lease(ctx.store)
        try:
            await ctx.poster.delete(*found)
        except RemoteError as exc:
            if exc.status != 404:
                raise


async def post_assignment(ctx: BridgeContext, dest: Destination, portal: Portal, event: dict[str, Any]) -> None:
    """Seed: assignment notices in the conversation channel, and in the notification
    channel too when the update type is "all conversation activity"."""
    data = event["data"]
    if event["event"] == "conversation.assigned":
        text = notices.assigned_html(data["conversation"], data.get("assignee"), data.get("actor"))
    else:
        text = notices.unassigned_html(data["conversation"], data.get("previous_assignee"), data.get("actor"))
    await post_once(
        ctx,
        dest,
        portal.conversation_id,
        f"event:{event['id']}:channel",
        portal.channel_id,
        html_activity(text),
        thread_id=portal.thread_id,
    )
    if dest.workspace.update_type == "all_activity" and not portal.thread_id:
        # the channel stays where it was created; the notice goes where the rules say now
        notify = await ctx.destination(dest.workspace, route_team(dest.workspace, data["conversation"]))
        await post_once(
            ctx,
            notify,
            portal.conversation_id,
            f"event:{event['id']}:notify",
            notify.notification_channel_id,
            html_activity(text),
        )


async def close_portal(
    ctx: BridgeContext,
    dest: Destination,
    conversation: dict[str, Any],
    actor: dict[str, Any] | None,
    *,
    closed_at: str | None = None,
) -> None:
    """Delete the conversation's channel (seed: closing in either place deletes it), after
    posting its transcript in the notification channel, and turn the notification card into
    its closed state. ``closed_at``: when it was closed (ISO 8601), if known."""
    ws_id = dest.workspace.id
    conversation_id = conversation["id"]
    portal = await ctx.store.get_portal(ws_id, conversation_id)
    if portal is None:
        # Closed before we ever saw it: a tombstone stops a late conversation.created.
        await ctx.store.create_portal(Portal(ws_id, conversation_id, 0, state="closed"))
        return
    if portal.state == "closed":
        return
    if portal.thread_id:
        # A thread in the notification channel: nothing to delete, say it in the thread.
        text = notices.thread_closed_html(portal.number, actor)
        await post_once(
            ctx,
            dest,
            conversation_id,
            f"closed:{conversation_id}",
            portal.channel_id,
            html_activity(text),
            thread_id=portal.thread_id,
        )
    elif portal.channel_id:
        await post_closing_transcript(ctx, dest, portal, conversation, actor, closed_at)
        group_id = dest.installation.aad_group_id or dest.workspace.aad_group_id
        await check_lease(ctx.store)
        await _graph(ctx, dest).delete(group_id, portal.channel_id)
    # The card turns closed (no buttons) directly, not through the coalescing refresher:
    # before the state is saved, so a rerun after a failure does it again.
    closed = replace(portal, state="closed")
    card = card_activity(conversation_card(dest, closed, {**conversation, "status": "closed"}))
    try:
        await ctx.cards.update_now(f"{ws_id}:{conversation_id}", _card_targets(ctx, dest, closed), card)
    except RemoteError as exc:
        if exc.retryable:
            raise
        log.warning("closed card not shown: %s", exc)  # deleted by a person
    await ctx.store.update_portal(ws_id, conversation_id, state="closed")
    log.info("conversation channel deleted")


async def post_closing_transcript(
    ctx: BridgeContext,
    dest: Destination,
    portal: Portal,
    conversation: dict[str, Any],
    actor: dict[str, Any] | None,
    closed_at: str | None,
) -> None:
    """The transcript of a conversation whose channel is about to be deleted, in the
    notification channel (when the workspace wants it). Keyed by the channel: a conversation
    closed, reopened and closed again gets one per close, and a rerun of the close none."""
    ws = dest.workspace
    if not ws.transcript_on_close:
        return
    key = f"transcript:{portal.conversation_id}:{portal.channel_id}"
    link = await ctx.store.get_link_by_neeto_id(ws.id, key)
    if link and link.teams_activity_id:
        return  # posted by an earlier attempt: no need to read the conversation again
    # A close without a known time (/close, the card's button) is dated by the transcript's
    # intent, so that a rerun builds the same card (``post_once`` finds a crashed attempt's
    # post by its content).
    intent_at = link.created_at if link else time.time()
    closed_at = closed_at or datetime.fromtimestamp(intent_at, UTC).isoformat()
    await _post_transcript(
        ctx,
        dest,
        conversation,
        key,
        dest.notification_channel_id,
        intent_at=intent_at,
        closed_by=actor,
        closed_at=closed_at,
    )


async def _post_transcript(
    ctx: BridgeContext,
    dest: Destination,
    conversation: dict[str, Any],
    key: str,
    channel_id: str,
    *,
    messages: list[dict[str, Any]] | None = None,
    intent_at: float = 0.0,
    **details: Any,
) -> None:
    """Post the conversation's transcript card once (``key``), from ``messages`` or all of
    them read from neetoChat. What can succeed later is raised (the job retries; the post is
    made once); a refusal (Teams' 413, say) is logged and the work goes on without it."""
    try:
        if messages is None:
            messages = [m async for m in ctx.neetochat(dest.workspace).iter_messages(conversation["id"])]
        card = transcript_card(conversation, messages, **details)
        await post_once(ctx, dest, conversation["id"], key, channel_id, card_activity(card), intent_at=intent_at)
    except RemoteError as exc:
        if exc.retryable or exc.code == "BotNotInConversationRoster":  # the job loop marks the bot removed
            raise
        log.warning("transcript not posted: %s", exc)


def conversation_card(dest: Destination, portal: Portal, conversation: dict[str, Any]) -> dict[str, Any]:
    """The conversation's card as it should look now (buttons only while it is open)."""
    is_open = portal.state != "closed" and conversation.get("status") != "closed"
    return new_conversation_card(
        conversation,
        portal.first_message,
        portal.channel_url if is_open else None,
        workspace_id=dest.workspace.id if is_open else None,
    )


def _card_targets(
    ctx: BridgeContext, dest: Destination, portal: Portal, *, channel_card: bool = True
) -> list[tuple[dict, str]]:
    """The conversation's cards: in the notification channel, and opening its channel."""
    targets = []
    cards = [(dest.notification_channel_id, portal.notice_activity_id)]
    if channel_card and portal.state != "closed" and not portal.thread_id:
        cards.append((portal.channel_id, portal.intro_activity_id))
    for channel_id, activity_id in cards:
        if channel_id and activity_id:
            reference = ctx.poster.thread_reference(dest.service_url, dest.tenant_id, channel_id, activity_id)
            targets.append((reference, activity_id))
    return targets


def refresh_cards(
    ctx: BridgeContext,
    dest: Destination,
    portal: Portal,
    conversation: dict[str, Any],
    *,
    channel_card: bool = True,
) -> None:
    """Ask for the conversation's cards to show its current state, in place, for everyone
    (instead of posting new noise): coalesced and low priority (services/card_refresh.py)."""
    key = f"{dest.workspace.id}:{portal.conversation_id}"
    targets = _card_targets(ctx, dest, portal, channel_card=channel_card)
    ctx.cards.request(key, targets, lambda: card_activity(conversation_card(dest, portal, conversation)))


async def confirm_link(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any]) -> None:
    """Seed: after authorization the bot posts a confirmation, by default in General."""
    dest = await ctx.destination(ws)
    user = ws.authorizing_user or {}
    text = notices.linked_html(ws.name or ws.id, user.get("name"))
    await post_once(
        ctx,
        dest,
        f"_workspace:{ws.id}",
        f"linked:{payload['link_id']}",
        dest.installation.general_channel_id,
        html_activity(text),
    )


async def tell_undelivered(ctx: BridgeContext, workspace_id: str, event: dict[str, Any], reason: str) -> None:
    """A neetoChat event that died: say so in the notification channel, where the team
    looks, so a visitor's message is never silently missing from Teams."""
    ws = await ctx.store.get_workspace(workspace_id)
    if ws is None:
        return
    conversation = (event.get("data") or {}).get("conversation") or {}
    dest = await ctx.destination(ws, await channel_team(ctx, ws, conversation) if conversation.get("id") else None)
    what = "a message" if event.get("event") == "message.created" else f"an update ({event.get('event')})"
    await post_once(
        ctx,
        dest,
        conversation.get("id") or f"_workspace:{ws.id}",
        f"undelivered:{event.get('id')}",
        dest.notification_channel_id,
        html_activity(notices.undelivered_html(conversation.get("number", "?"), what, reason)),
    )
