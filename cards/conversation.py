"""The conversation card: what agents see first, in the notification channel and as the
opening post of the conversation's own channel (seed: "New conversation message"), and
the same card re-rendered in place as the conversation changes (assignee, status, last
reply) until its closed state.

Pure functions from neetoChat data to an Adaptive Card (schema 1.5, what Teams renders),
built with Microsoft's typed models from ``microsoft-teams-cards`` (``microsoft_teams.cards``,
the pydantic models of Microsoft's Teams SDK for Python, generated from the card schema
Teams uses) rather than hand-typed dict trees: a misspelt property or a wrong enum value
fails when the card is built, not in the Teams client. The models are dumped to a plain
JSON-able dict (``exclude_none``) at the end, which is what the Bot Connector, the store and
the tests see.

Escaping: visitor text must show exactly as typed, never as formatting, a template
expression or a mention.

- The visitor's message is a ``TextRun`` of a ``RichTextBlock``. A TextRun is plain text in
  every Adaptive Card host (no Markdown, no HTML, no ``<at>`` mentions), so a message needs
  no escaping, keeps its line breaks, and no host shows a stray backslash (Teams' mobile
  clients have shown backslash escapes literally). Only ``{{DATE(``/``{{TIME(``, which
  hosts expand in TextRuns too, is broken with an invisible U+2060 WORD JOINER between the
  braces (``no_template``). The "Read the rest" link is the TextRun's ``selectAction``.
- The heading (the visitor's email or name, as a Markdown link to the contact page) and the
  ``Fact`` titles and values (pre-chat questions and answers, the assignee's name) are
  Markdown in Teams, and Facts have no plain-text form, so ``plain_text`` backslash-escapes
  what could format there: emphasis, links, HTML and entities, ``{``, and list, heading or
  quote markers at the start (a short one-line field rarely has any). Text the card writes
  itself, and the last reply's ``{{DATE()}}``/``{{TIME()}}``, are left as they are.

Size: Teams refuses a card over 28 KB. The message is cut at ``MAX_MESSAGE_CHARS`` (then
shorter while the card is over ``CARD_BUDGET_BYTES``) with a "Read the rest in neetoChat"
link, and the other visitor-written fields are capped.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from microsoft_teams.cards import (
    AdaptiveCard,
    CardElement,
    ExecuteAction,
    Fact,
    FactSet,
    OpenUrlAction,
    RichTextBlock,
    TeamsCardProperties,
    TextBlock,
    TextRun,
)

CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"

# Teams' limit for a message with a card is 28 KB; the card is measured as ASCII-only JSON
# (never smaller than its UTF-8 form) and kept well under, leaving room for the activity.
TEAMS_CARD_LIMIT_BYTES = 28 * 1024
CARD_BUDGET_BYTES = 24 * 1024
MAX_MESSAGE_CHARS = 2000
MAX_FIELD_CHARS = 500  # a visitor's name or email, a pre-chat question or answer
MAX_PRECHAT_FACTS = 20
# Tried in turn until the card fits the budget: (message, other visitor fields) in characters.
_LIMITS = [(MAX_MESSAGE_CHARS, MAX_FIELD_CHARS), (1000, 250), (500, 120), (250, 60), (100, 30)]
READ_MORE = "Read the rest in neetoChat"

ASSIGN_VERB = "assign_to_me"
CLOSE_VERB = "close"

WORD_JOINER = "\u2060"
_TEMPLATE = re.compile(r"\{(?=\{\s*(?:DATE|TIME)\s*\()", re.IGNORECASE)
# Markdown that can format one line of text anywhere in it...
_INLINE_SPECIALS = re.compile(r"([\\`*_\[\]<>&~{}|])")
# ...and what only counts at its start: headings, quotes, lists, rules, tables.
_LINE_START = re.compile(r"^(\s*)(?:([#>+=-])|(\d+)([.)]))")


def no_template(text: str) -> str:
    """``text`` with every ``{{DATE(``/``{{TIME(`` made inert for plain-text TextRuns."""
    return _TEMPLATE.sub("{" + WORD_JOINER, text)


def plain_text(text: str) -> str:
    """One line of ``text`` for a Markdown field (a heading, a Fact title or value), escaped so that
    Teams shows it as typed: no Markdown, HTML, entity or template expression."""
    escaped = _INLINE_SPECIALS.sub(r"\\\1", " ".join(text.split()))
    return _LINE_START.sub(
        lambda m: m.group(1) + (f"\\{m.group(2)}" if m.group(2) else f"{m.group(3)}\\{m.group(4)}"), escaped
    )


def one_line(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def web_link(url: str | None) -> str | None:
    """An http(s) URL safe inside a Markdown link destination and as an action URL, or None."""
    if not url or urlsplit(url).scheme not in ("http", "https"):
        return None
    return quote(url, safe=":/?#@!$&'*+,;=%~-._")  # spaces, (), <>, quotes, non-ASCII encoded


def adaptive_time(iso: str | None) -> str:
    """Each viewer's local date and time, through Adaptive Cards' DATE/TIME functions
    (they take RFC 3339 without fractional seconds)."""
    if not iso:
        return "No replies yet"
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return plain_text(one_line(iso, 40))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    stamp = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{{{{DATE({stamp}, SHORT)}}}} {{{{TIME({stamp})}}}}"


def assignee_label(assignee: dict[str, Any] | None) -> str:
    if not assignee:
        return "Unassigned"
    kind = "Team" if assignee.get("type") == "team" else "Agent"
    return f"{assignee.get('name') or assignee.get('id')} ({kind})"


def visitor_label(visitor: dict[str, Any]) -> str:
    return visitor.get("email") or visitor.get("name") or "A visitor"


def status_label(status: str | None) -> str:
    return str(status or "open").replace("_", " ").capitalize()


def is_closed(conversation: dict[str, Any]) -> bool:
    return conversation.get("status") == "closed"


def _message_blocks(message: str, limit: int, conversation_url: str | None) -> list[CardElement]:
    """The visitor's message as typed (line breaks kept), shortened with a link to the rest."""
    message = message.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    if not message.strip():
        return []
    shortened = len(message) > limit
    text = message[:limit].rstrip() + "…" if shortened else message
    blocks: list[CardElement] = [RichTextBlock(inlines=[TextRun(text=no_template(text))])]
    if shortened:
        url = web_link(conversation_url)
        more = TextRun(text=READ_MORE, select_action=OpenUrlAction(url=url)) if url else TextRun(text="(shortened)")
        blocks.append(RichTextBlock(inlines=[more], spacing="Small"))
    return blocks


def _build(
    conversation: dict[str, Any],
    first_message: str | None,
    channel_url: str | None,
    workspace_id: str | None,
    message_limit: int,
    field_limit: int,
) -> AdaptiveCard:
    closed = is_closed(conversation)
    visitor = conversation.get("visitor") or {}
    who = plain_text(one_line(visitor_label(visitor), field_limit))
    contact = web_link(visitor.get("contact_url"))
    heading = f"A conversation started by [{who}]({contact})" if contact else f"A conversation started by {who}"
    body: list[CardElement] = [
        TextBlock(text=heading, wrap=True, weight="Bolder", size="Large"),
        TextBlock(text=f"Conversation #{conversation.get('number')}", is_subtle=True, spacing="None"),
    ]
    body += _message_blocks(first_message or "", message_limit, conversation.get("url"))
    body.append(
        FactSet(
            facts=[
                Fact(title="Assignee", value=plain_text(one_line(assignee_label(conversation.get("assignee"))))),
                Fact(title="Status", value=plain_text(status_label(conversation.get("status")))),
                Fact(title="Last reply", value=adaptive_time(conversation.get("last_reply_at"))),
            ],
            spacing="Medium",
        )
    )
    prechat = [p for p in conversation.get("prechat_responses") or [] if isinstance(p, dict)][:MAX_PRECHAT_FACTS]
    if prechat:
        body.append(TextBlock(text="Pre-chat responses", weight="Bolder", spacing="Medium"))
        body.append(
            FactSet(
                facts=[
                    Fact(
                        title=plain_text(one_line(p.get("question") or "", field_limit)),
                        value=plain_text(one_line(p.get("answer") or "", field_limit)) or "–",
                    )
                    for p in prechat
                ]
            )
        )
    actions: list[Any] = []
    channel = web_link(channel_url)
    if channel and not closed:
        actions.append(OpenUrlAction(title="View conversation in Teams", url=channel))
    neeto = web_link(conversation.get("url"))
    if neeto:
        actions.append(OpenUrlAction(title="Open in neetoChat", url=neeto))
    if workspace_id and not closed:
        data = {"conversation_id": conversation["id"], "workspace": workspace_id}
        actions.append(ExecuteAction(title="Assign to me", verb=ASSIGN_VERB, data=dict(data)))
        actions.append(ExecuteAction(title="Close", verb=CLOSE_VERB, data=dict(data)))
    return AdaptiveCard(
        version="1.5",
        body=body,
        actions=actions or None,
        msteams=TeamsCardProperties(width="full"),
    )


def card_size(card: dict[str, Any]) -> int:
    """The card's size in bytes as ASCII-only JSON (never smaller than its UTF-8 size)."""
    return len(json.dumps(card, separators=(",", ":")))


def conversation_card(
    conversation: dict[str, Any],
    first_message: str | None,
    channel_url: str | None = None,
    *,
    workspace_id: str | None = None,
) -> dict[str, Any]:
    """The conversation's card as it should look now, as a plain JSON-able dict.

    The same function renders every state from the conversation's current data: new,
    assigned (to an agent or a team), a later last reply. While the conversation is open
    it links to ``channel_url`` and, when ``workspace_id`` is given, carries the
    ``Action.Execute`` buttons "Assign to me" (verb ``assign_to_me``) and "Close" (verb
    ``close``) with ``data: {"conversation_id", "workspace"}``. Once ``status`` is
    ``closed`` it keeps only "Open in neetoChat": no channel link (the channel is deleted)
    and no buttons.
    """
    for message_limit, field_limit in _LIMITS:
        card = _build(conversation, first_message, channel_url, workspace_id, message_limit, field_limit)
        dumped = card.model_dump(exclude_none=True)
        if card_size(dumped) <= CARD_BUDGET_BYTES:
            break
    return dumped


def new_conversation_card(
    conversation: dict[str, Any],
    first_message: str | None,
    channel_url: str | None,
    *,
    workspace_id: str | None = None,
) -> dict[str, Any]:
    """The card for a newly started conversation (see ``conversation_card``)."""
    return conversation_card(conversation, first_message, channel_url, workspace_id=workspace_id)


def card_attachment(card: dict[str, Any]) -> dict[str, Any]:
    return {"contentType": CARD_CONTENT_TYPE, "content": card}
