"""Teams → neetoChat: where a message written in a conversation channel reaches the visitor.

The activity was stored as a job when it arrived (``bots/teams_bot.py``); here it is
delivered. Who writes: the Teams member's identity override (settings page), else their
email (from the connector's roster) matched to a neetoChat agent; anyone else writes as the
user who authorized the integration (``services/identities.py``). Either
way the conversation is assigned to that agent when no agent has it (seed: "assigned to
the user similar to the way in neetoChat app").

Exactly once: the link (activity id → pending) is recorded before the POST, the activity
id is the ``Idempotency-Key``, and the created message id completes the link, so a rerun
after a crash either skips or repeats a request that neetoChat deduplicates.

Images, GIFs, stickers and files are downloaded and uploaded here, after the activity was
acknowledged (``services/teams_content.py``): each upload has its own idempotency key, an
item that cannot be uploaded becomes a link in the text and a notice in the thread, and
the text is delivered either way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

from botbuilder.schema import Activity, ActivityTypes

from cards import notices
from dialogs.commands import parse_command
from services import teams_content
from services.context import BridgeContext
from services.errors import RemoteError
from services.identities import acting_agent
from services.store.base import MessageLink, Workspace
from services.teams import split_thread
from services.to_teams import close_portal, post_once

log = logging.getLogger(__name__)


class Refused(Exception):
    """neetoChat will not take this message; the reason is shown to the Teams user."""


async def resolve_agent(
    ctx: BridgeContext, ws: Workspace, reference: dict[str, Any], user: dict[str, Any]
) -> dict[str, Any]:
    """The neetoChat agent a Teams user writes as: their own (``agent_of``), else the user
    who authorized the integration."""
    agent = await agent_of(ctx, ws, reference, user)
    if agent:
        return agent
    fallback = (ws.authorizing_user or {}).get("agent_id")
    if not fallback:
        raise Refused("the integration has no authorizing user to write as; reconnect it from neetoChat")
    return {"id": fallback, "name": (ws.authorizing_user or {}).get("name")}


async def agent_of(
    ctx: BridgeContext, ws: Workspace, reference: dict[str, Any], user: dict[str, Any]
) -> dict[str, Any] | None:
    """The Teams user's own neetoChat agent (their identity override, else matched by email:
    ``services/identities.py``), or None. ``user`` is a payload's writer (with their AAD
    object id) or a mentioned person (only their Teams id: the roster tells the rest)."""
    found: dict[str, Any] | None = None

    async def member() -> dict[str, Any]:  # the team's roster entry, asked at most once (and cached)
        nonlocal found
        if found is None:
            found = {}
            try:
                found = await ctx.poster.member(reference, user["team_id"], user["id"]) if user.get("id") else {}
            except RemoteError as exc:
                if exc.retryable:
                    raise
                log.warning("member lookup refused: %s", exc)  # fall back to the authorizing user
        return found

    async def email() -> str | None:
        if user.get("email"):
            return user["email"]
        entry = await member()
        return entry.get("email") or entry.get("userPrincipalName")

    aad_object_id = user.get("aad_object_id") or (await member()).get("aadObjectId")
    return await acting_agent(ctx, ws, aad_object_id, email)


async def send_message(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any]) -> None:
    """Deliver one Teams channel message to the conversation in neetoChat."""
    conversation_id = payload["conversation_id"]
    activity_id = payload["activity_id"]
    link = await ctx.store.get_link_by_activity_id(ws.id, activity_id)
    if link and link.neeto_message_id:
        return
    if link is None:
        channel_id = payload.get("channel_id")
        link = MessageLink(ws.id, conversation_id, None, activity_id, "to_neetochat", channel_id=channel_id)
        await ctx.store.add_message_link(link)
    text = payload.get("text") or ""
    internal = bool(payload.get("internal"))
    if not text and not payload.get("attachments"):
        raise Refused("a note needs text: /note <text>" if internal else "the message has nothing to send")
    client = ctx.neetochat(ws)
    agent = await resolve_agent(ctx, ws, payload["reference"], payload["user"])
    conversation = await client.get_conversation(conversation_id)
    if conversation.get("status") == "closed":
        raise Refused("this conversation is closed in neetoChat")
    delivery = await teams_content.deliver(ctx, ws, payload)
    body = "\n".join(part for part in [text, *delivery.links] if part)
    if not body and not delivery.attachment_ids:
        raise Refused("nothing in it could be sent. " + " ".join(delivery.notices))
    # Replying takes the conversation (seed); a note for colleagues does not.
    if not internal and (not conversation.get("assignee") or conversation["assignee"].get("type") != "agent"):
        await client.assign_to_agent(conversation_id, agent["id"], agent["id"])
    try:
        created = await client.create_message(
            conversation_id,
            agent_id=agent["id"],
            body=body,
            external_id=activity_id,
            attachment_ids=delivery.attachment_ids,
            internal=internal,
        )
    except RemoteError as exc:
        if exc.status == 422:
            raise Refused(str(exc)) from exc
        raise
    await ctx.store.complete_message_link(ws.id, teams_activity_id=activity_id, neeto_message_id=created["id"])
    for notice in delivery.notices:  # after the message: a failed notice must not resend it
        try:
            await tell_thread(ctx, payload, f"ℹ️ {notice}")
        except Exception:
            log.exception("could not post a notice about an attachment of %s", activity_id)


async def edit_message(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any]) -> None:
    """A Teams edit: the neetoChat message it became gets the new text. neetoChat's PATCH
    takes only the text, so files stay as first sent. An edit never runs a command: a
    message edited into ``/close`` must not close anything."""
    message_id = await _mapped_message(ctx, ws, payload, "edit")
    if message_id is None:
        return
    text = payload.get("text") or ""
    command = parse_command(text)
    if command and command.name == "note":
        text = command.args
    elif command:
        raise Refused("a command cannot be run by editing a message; write it as a new message")
    await refusable(ctx.neetochat(ws).update_message(payload["conversation_id"], message_id, text))


async def delete_message(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any]) -> None:
    """A Teams delete: the neetoChat message it became is deleted, attachments and all."""
    message_id = await _mapped_message(ctx, ws, payload, "delete")
    if message_id is None:
        return
    try:
        await refusable(ctx.neetochat(ws).delete_message(payload["conversation_id"], message_id))
    except RemoteError as exc:
        if exc.status != 404:  # already gone: what was asked is done
            raise


async def _mapped_message(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any], change: str) -> str | None:
    """The neetoChat message a Teams message became (message map), or None: a message the
    bridge never delivered (a command, one written before the channel was bridged, one that
    failed) has nothing to change in neetoChat."""
    link = await ctx.store.get_link_by_activity_id(ws.id, payload["activity_id"])
    if link is None or link.direction != "to_neetochat" or not link.neeto_message_id:
        log.info("%s of Teams message %s ignored: it is not a neetoChat message", change, payload["activity_id"])
        return None
    return link.neeto_message_id


async def refusable(call: Awaitable[Any]) -> Any:
    """neetoChat's 4xx answers to a change or command are the person's to see (in the thread), not
    something to retry; 404 is left to the caller, 429 to the delivery loop."""
    try:
        return await call
    except RemoteError as exc:
        if exc.status in (400, 403, 409, 422):
            raise Refused(f"neetoChat refused it ({exc.status}): {exc}") from exc
        raise


async def close_from_teams(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any]) -> None:
    """``/close``: close in neetoChat as the writer, then delete the channel."""
    agent = await resolve_agent(ctx, ws, payload["reference"], payload["user"])
    conversation = await ctx.neetochat(ws).close_conversation(payload["conversation_id"], agent["id"])
    dest = await ctx.destination(ws, payload["user"].get("team_id"))
    await close_portal(ctx, dest, conversation, agent)


async def report_delivery(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any], text: str) -> None:
    """Say in the message's thread how its delivery stands: one reply per message, posted
    at the first failure and edited as news comes (still retrying, failed for good,
    delivered after all), so a thread never fills up with notices. Success on the first
    try says nothing."""
    reference = payload["reference"]
    channel_id, root = split_thread(reference["conversation"]["id"])
    key = f"delivery:{payload['activity_id']}"
    activity = Activity(type=ActivityTypes.message, text=notices.notice_html(text), text_format="xml")
    link = await ctx.store.get_link_by_neeto_id(ws.id, key)
    if link and link.teams_activity_id:
        await ctx.poster.update(reference, link.teams_activity_id, activity)
        return
    dest = await ctx.destination(ws, payload["user"].get("team_id"))
    await post_once(ctx, dest, payload["conversation_id"], key, channel_id, activity, thread_id=root)


async def report_success(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any]) -> None:
    """A message that failed before and went through now: its notice says so. Called by
    the job loop only for jobs that failed before (a first try has no notice to edit), so
    a message delivered at once pays nothing for it."""
    link = await ctx.store.get_link_by_neeto_id(ws.id, f"delivery:{payload['activity_id']}")
    if link is None or not link.teams_activity_id:
        return
    done = "✅ Saved in neetoChat after all." if payload.get("internal") else "✅ Delivered to the visitor after all."
    try:
        await report_delivery(ctx, ws, payload, done)
    except Exception:  # delivered is what matters; the old notice stays wrong, and is logged
        log.exception("could not update the delivery notice of %s", payload["activity_id"])


async def tell_thread(ctx: BridgeContext, payload: dict[str, Any], text: str) -> None:
    """Reply in the Teams thread the message came from (failures must be visible there)."""
    await reply_in_thread(ctx, payload, notices.notice_html(text))


async def reply_in_thread(ctx: BridgeContext, payload: dict[str, Any], markup: str) -> None:
    """Post ``markup`` (HTML) as a reply to the Teams message the job came from."""
    activity = Activity(type=ActivityTypes.message, text=markup, text_format="xml")
    await ctx.poster.reply(payload["reference"], activity)
