"""Short notices posted as the bot: assignment changes, the link confirmation, and the
bridged messages themselves.

Bridged messages are HTML text (``textFormat: xml``): every piece of neetoChat text is
``html.escape``d, so a visitor's Markdown or HTML shows as typed and cannot format or
inject into Teams; line breaks become ``<br>`` and URLs become links.
"""

from __future__ import annotations

import html
import re
from typing import Any

from cards.conversation import assignee_label

# Teams refuses bot messages over 40 KB (UTF-16); keep the text well under that.
MAX_TEXT_CHARS = 12_000
_URL = re.compile(r"https?://[^\s<>\"']+")

SENDER_ROLES = {"visitor": "Visitor", "agent": "Agent", "bot": "Bot", "system": "neetoChat"}


def _linkify_escaped(text: str) -> str:
    out, last = [], 0
    for match in _URL.finditer(text):
        url = match.group(0).rstrip(".,;:!?)")
        out.append(html.escape(text[last : match.start()]))
        out.append(f'<a href="{html.escape(url)}">{html.escape(url)}</a>')
        last = match.start() + len(url)
    out.append(html.escape(text[last:]))
    return "".join(out).replace("\n", "<br>")


def human_size(size: int | None) -> str:
    if not size:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def message_html(message: dict[str, Any], conversation_url: str | None = None) -> str:
    """A neetoChat message as the bot posts it into the conversation channel."""
    sender = message.get("sender") or {}
    role = SENDER_ROLES.get(sender.get("type", ""), "")
    name = sender.get("name") or sender.get("email") or role or "Someone"
    stamp = (message.get("created_at") or "")[:16].replace("T", " ")
    header = f"<b>{html.escape(name)}</b> <i>({role}{', ' + stamp + ' UTC' if stamp else ''})</i>"
    if message.get("internal"):
        header = f"🔒 <b>Internal note</b> · {header}"
    body = message.get("body") or ""
    truncated = len(body) > MAX_TEXT_CHARS
    if truncated:
        body = body[:MAX_TEXT_CHARS]
    parts = [header]
    if body:
        parts.append(_linkify_escaped(body))
    if truncated:
        more = f' <a href="{html.escape(conversation_url)}">Read the rest in neetoChat</a>' if conversation_url else ""
        parts.append(f"<i>(message shortened)</i>{more}")
    for att in message.get("attachments") or []:
        details = ", ".join(x for x in (att.get("content_type"), human_size(att.get("size"))) if x)
        parts.append(
            f'📎 <a href="{html.escape(att.get("url", ""))}">{html.escape(att.get("filename") or "attachment")}</a>'
            + (f" ({html.escape(details)})" if details else "")
        )
        if _thumbnail_ok(att):
            parts.append(
                f'<img src="{html.escape(att["url"])}" alt="{html.escape(att.get("filename") or "image")}"'
                f' style="max-width:{THUMBNAIL_WIDTH}px">'
            )
    return "<br>".join(parts)


# Image types every Teams client renders in an <img>; the URL must be a web URL that
# Teams can fetch without credentials (neetoChat's attachment URLs are: "anyone with the
# link can download it"), and the file small enough to show as a preview.
THUMBNAIL_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp"})
THUMBNAIL_MAX_BYTES = 10 * 1024 * 1024
THUMBNAIL_WIDTH = 320


def _thumbnail_ok(att: dict[str, Any]) -> bool:
    url = att.get("url") or ""
    return (
        (att.get("content_type") or "").lower() in THUMBNAIL_TYPES
        and url.lower().startswith(("https://", "http://"))
        and (att.get("size") or 0) <= THUMBNAIL_MAX_BYTES
    )


def _actor(actor: dict[str, Any] | None) -> str:
    return html.escape(actor.get("name") or actor.get("email") or "An agent") if actor else "neetoChat"


def assigned_html(conversation: dict[str, Any], assignee: dict[str, Any] | None, actor: dict[str, Any] | None) -> str:
    return (
        f"👤 Conversation #{conversation.get('number')} was assigned to "
        f"<b>{html.escape(assignee_label(assignee))}</b> by {_actor(actor)}."
    )


def unassigned_html(conversation: dict[str, Any], previous: dict[str, Any] | None, actor: dict[str, Any] | None) -> str:
    was = f" (was <b>{html.escape(assignee_label(previous))}</b>)" if previous else ""
    return f"👤 Conversation #{conversation.get('number')} was unassigned{was} by {_actor(actor)}."


def linked_html(workspace_name: str, user_name: str | None) -> str:
    by = f" by {html.escape(user_name)}" if user_name else ""
    return (
        f"✅ neetoChat workspace <b>{html.escape(workspace_name)}</b> is now connected to this team{by}. "
        "New conversations will be posted here and each gets its own channel."
    )


def notice_html(text: str) -> str:
    """A plain bot notice (errors, refusals) with the text escaped."""
    return html.escape(text)


def channel_recreated_html(number: Any, channel_name: str | None, channel_url: str | None) -> str:
    """Told in the notification channel when someone deleted a conversation's channel."""
    name = html.escape(channel_name or "a new channel")
    where = f'<a href="{html.escape(channel_url)}">{name}</a>' if channel_url else f"<b>{name}</b>"
    return (
        f"🔁 The channel of conversation #{number} was deleted in Teams while the conversation is still open. "
        f"It continues in {where}, with its history."
    )


def reopened_html(number: Any, channel_name: str | None, channel_url: str | None, actor: dict | None) -> str:
    """Told in the notification channel when a closed conversation is reopened."""
    name = html.escape(channel_name or "a new channel")
    where = f'<a href="{html.escape(channel_url)}">{name}</a>' if channel_url else f"<b>{name}</b>"
    by = f" by {html.escape(actor.get('name') or 'an agent')}" if actor else ""
    return f"🔓 Conversation #{number} was reopened{by}. It continues in {where}, with its history."


def threaded_html(number: Any) -> str:
    """The first reply of a conversation that lives as a thread (the team's channel cap)."""
    return (
        f"ℹ️ This team has reached Teams' limit of channels (1,000, counting channels deleted in the last "
        f"30 days), so conversation #{number} continues in this thread instead of its own channel. "
        "Replies here reach the visitor; <b>/close</b> closes it."
    )


def thread_closed_html(number: Any, actor: dict[str, Any] | None) -> str:
    return f"✅ Conversation #{number} was closed by {_actor(actor)}."


def undelivered_html(number: Any, what: str, reason: str) -> str:
    """A neetoChat event that could not be shown in Teams, said where people will see it."""
    return (
        f"⚠️ Conversation #{html.escape(str(number))}: {html.escape(what)} could not be shown in Teams "
        f"({html.escape(reason)}). It is kept as a dead letter; an operator can replay it."
    )
