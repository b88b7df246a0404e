"""The new-conversation card: what agents see first, in the notification channel and as
the opening post of the conversation's own channel (seed: "New conversation message").

Pure functions from neetoChat data to an Adaptive Card (schema 1.5, what Teams renders).
Visitor-written text goes only into ``TextBlock``s through ``plain_text`` so that Markdown
or template syntax in it shows as typed.
"""

from __future__ import annotations

import re
from typing import Any

CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
MAX_MESSAGE_CHARS = 2000

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!<>|~])")


def plain_text(text: str) -> str:
    """Escape Markdown so a TextBlock shows ``text`` literally."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def _adaptive_time(iso: str | None) -> str:
    """Render in each viewer's local time with Adaptive Cards' DATE/TIME functions."""
    if not iso:
        return "No replies yet"
    stamp = iso.replace(".000Z", "Z")
    if "." in stamp:  # DATE()/TIME() accept RFC 3339 without fractional seconds
        stamp = stamp.split(".")[0] + "Z"
    return f"{{{{DATE({stamp}, SHORT)}}}} {{{{TIME({stamp})}}}}"


def assignee_label(assignee: dict[str, Any] | None) -> str:
    if not assignee:
        return "Unassigned"
    kind = "Team" if assignee.get("type") == "team" else "Agent"
    return f"{assignee.get('name') or assignee.get('id')} ({kind})"


def visitor_label(visitor: dict[str, Any]) -> str:
    return visitor.get("email") or visitor.get("name") or "A visitor"


def new_conversation_card(
    conversation: dict[str, Any],
    first_message: str | None,
    channel_url: str | None,
    *,
    workspace_id: str | None = None,
) -> dict[str, Any]:
    """The card for a newly started conversation (buttons to act on it when
    ``workspace_id`` is given)."""
    visitor = conversation.get("visitor") or {}
    who = plain_text(visitor_label(visitor))
    contact = visitor.get("contact_url")
    heading = f"A conversation started by [{who}]({contact})" if contact else f"A conversation started by {who}"
    message = first_message or ""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "…"
    facts = [
        {"title": "Assignee", "value": plain_text(assignee_label(conversation.get("assignee")))},
        {"title": "Status", "value": plain_text(str(conversation.get("status", "open")).capitalize())},
        {"title": "Last reply", "value": _adaptive_time(conversation.get("last_reply_at"))},
    ]
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": heading, "wrap": True, "weight": "Bolder", "size": "Medium"},
        {
            "type": "TextBlock",
            "text": f"Conversation #{conversation.get('number')}",
            "isSubtle": True,
            "spacing": "None",
        },
    ]
    if message:
        body.append({"type": "TextBlock", "text": plain_text(message), "wrap": True})
    body.append({"type": "FactSet", "facts": facts})
    prechat = conversation.get("prechat_responses") or []
    if prechat:
        body.append({"type": "TextBlock", "text": "Pre-chat responses", "weight": "Bolder", "spacing": "Medium"})
        body.append(
            {
                "type": "FactSet",
                "facts": [
                    {"title": plain_text(p.get("question", "")), "value": plain_text(p.get("answer", ""))}
                    for p in prechat
                ],
            }
        )
    actions: list[dict[str, Any]] = []
    if channel_url:
        actions.append({"type": "Action.OpenUrl", "title": "View conversation in Teams", "url": channel_url})
    if conversation.get("url"):
        actions.append({"type": "Action.OpenUrl", "title": "Open in neetoChat", "url": conversation["url"]})
    if workspace_id:
        data = {"conversation_id": conversation["id"], "workspace": workspace_id}
        actions.append({"type": "Action.Execute", "title": "Assign to me", "verb": "assign_to_me", "data": data})
        actions.append({"type": "Action.Execute", "title": "Close", "verb": "close", "data": data})
    card: dict[str, Any] = {
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.5",
        "body": body,
        "msteams": {"width": "Full"},
    }
    if actions:
        card["actions"] = actions
    return card


def card_attachment(card: dict[str, Any]) -> dict[str, Any]:
    return {"contentType": CARD_CONTENT_TYPE, "content": card}
