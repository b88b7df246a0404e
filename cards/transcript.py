"""A conversation's transcript: posted in the notification channel right before its channel
is deleted on close (so the history stays in Teams), and as the first post after the card
in the new channel of a reopened conversation.

A compact card: a heading and a few facts (visitor, how many messages, who closed it and
when), with every message, oldest first, in a section hidden until "Show transcript"
(``Action.ToggleVisibility``) is pressed. Built from neetoChat's messages, both sides:
visitor and agents (whatever they wrote in, Teams included), and internal notes marked
"🔒 Internal note" (the notification channel is for colleagues only).

Escaping is the conversation card's (``cards/conversation.py``): what people wrote, and the
names of senders and files, are plain ``TextRun``s, shown exactly as typed with
``{{DATE(``/``{{TIME(`` made inert; Fact values get ``plain_text``. Message times are
Adaptive Cards' ``{{DATE()}}``/``{{TIME()}}`` (each viewer's local time).

Size: Teams refuses a card over 28 KB. A message is cut at ``MAX_MESSAGE_CHARS``; when the
messages do not all fit under ``CARD_BUDGET_BYTES``, the newest that fit are kept and the
section starts with "N earlier messages: open in neetoChat".
"""

from __future__ import annotations

from typing import Any

from microsoft_teams.cards import (
    AdaptiveCard,
    CardElement,
    Container,
    Fact,
    FactSet,
    OpenUrlAction,
    RichTextBlock,
    TeamsCardProperties,
    TextBlock,
    TextRun,
    ToggleVisibilityAction,
)

from cards.conversation import (
    CARD_BUDGET_BYTES,
    adaptive_time,
    card_size,
    no_template,
    one_line,
    plain_text,
    web_link,
)
from cards.notices import SENDER_ROLES, human_size

SECTION_ID = "transcript"
SHOW = "Show transcript"
OPEN_IN_NEETOCHAT = "Open in neetoChat"
INTERNAL = "🔒 Internal note · "
# Per message: what a long one is cut to (1,000 characters are at most 12 KB of card JSON,
# emoji being 12 bytes each as ASCII-only JSON), and a sender's or file's name.
MAX_MESSAGE_CHARS = 1000
MAX_NAME_CHARS = 200


def _sender(message: dict[str, Any]) -> tuple[str, str]:
    """The sender's name and role as the channel posts show them."""
    sender = message.get("sender") or {}
    role = SENDER_ROLES.get(sender.get("type", ""), "")
    return sender.get("name") or sender.get("email") or role or "Someone", role


def _person(person: dict[str, Any] | None, default: str) -> str:
    return (person or {}).get("name") or (person or {}).get("email") or default


def _message_block(message: dict[str, Any]) -> Container:
    """One message: sender, role and time; the text as typed; file links."""
    name, role = _sender(message)
    header: list[TextRun] = []
    if message.get("internal"):
        header.append(TextRun(text=INTERNAL, weight="Bolder", color="Warning"))
    header.append(TextRun(text=no_template(one_line(name, MAX_NAME_CHARS)), weight="Bolder"))
    details = [role] if role else []
    if message.get("created_at"):
        details.append(adaptive_time(message["created_at"]))
    if details:
        header.append(TextRun(text=f" ({', '.join(details)})", is_subtle=True))
    items: list[CardElement] = [RichTextBlock(inlines=header)]
    body = (message.get("body") or "").replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    if body.strip():
        if len(body) > MAX_MESSAGE_CHARS:
            body = body[:MAX_MESSAGE_CHARS].rstrip() + "…"
        items.append(RichTextBlock(inlines=[TextRun(text=no_template(body))], spacing="None"))
    for att in message.get("attachments") or []:
        filename = no_template(one_line(att.get("filename") or "attachment", MAX_NAME_CHARS))
        url = web_link(att.get("url"))
        runs = [TextRun(text="📎 "), TextRun(text=filename, select_action=OpenUrlAction(url=url) if url else None)]
        about = ", ".join(x for x in (att.get("content_type"), human_size(att.get("size"))) if x)
        if about:
            runs.append(TextRun(text=no_template(f" ({one_line(about, MAX_NAME_CHARS)})"), is_subtle=True))
        items.append(RichTextBlock(inlines=runs, spacing="None"))
    return Container(items=items, separator=True, spacing="Small")


def _earlier(count: int, url: str | None) -> RichTextBlock:
    """What stands for the oldest messages when they do not fit."""
    what = f"{count} earlier message{'s' if count != 1 else ''}"
    if url:
        runs = [TextRun(text=f"{what}: "), TextRun(text="open in neetoChat", select_action=OpenUrlAction(url=url))]
    else:
        runs = [TextRun(text=f"{what} are not shown.")]
    return RichTextBlock(inlines=runs)


def _facts(
    conversation: dict[str, Any],
    messages: list[dict[str, Any]],
    closed_by: dict[str, Any] | None,
    closed_at: str | None,
    reopened: bool,
) -> FactSet:
    visitor = conversation.get("visitor") or {}
    name, email = visitor.get("name"), visitor.get("email")
    who = f"{name} ({email})" if name and email else name or email or "A visitor"
    notes = sum(1 for m in messages if m.get("internal"))
    count = f"{len(messages)}" + (f" ({notes} internal note{'s' if notes != 1 else ''})" if notes else "")
    facts = [Fact(title="Visitor", value=plain_text(one_line(who))), Fact(title="Messages", value=count)]
    if conversation.get("created_at"):
        facts.append(Fact(title="Started", value=adaptive_time(conversation["created_at"])))
    if not reopened:
        facts.append(Fact(title="Closed by", value=plain_text(one_line(_person(closed_by, "neetoChat")))))
        if closed_at:
            facts.append(Fact(title="Closed", value=adaptive_time(closed_at)))
    return FactSet(facts=facts, spacing="Small")


def _build(head: list[CardElement], section: list[CardElement], url: str | None) -> dict[str, Any]:
    body = list(head)
    actions: list[Any] = []
    if section:
        body.append(Container(id=SECTION_ID, is_visible=False, items=section, spacing="Medium"))
        actions.append(ToggleVisibilityAction(title=SHOW, target_elements=[SECTION_ID]))
    if url:
        actions.append(OpenUrlAction(title=OPEN_IN_NEETOCHAT, url=url))
    card = AdaptiveCard(version="1.5", body=body, actions=actions or None, msteams=TeamsCardProperties(width="full"))
    return card.model_dump(exclude_none=True)


def transcript_card(
    conversation: dict[str, Any],
    messages: list[dict[str, Any]],
    *,
    closed_by: dict[str, Any] | None = None,
    closed_at: str | None = None,
    reopened: bool = False,
) -> dict[str, Any]:
    """The transcript of ``conversation`` (``messages`` oldest first, as neetoChat lists
    them), as a plain JSON-able dict under ``CARD_BUDGET_BYTES``.

    Closed: says who closed it (``closed_by``, an agent; None is neetoChat itself) and when
    (``closed_at``, ISO 8601). ``reopened``: the card opening a reopened conversation's new
    channel, with the transcript so far and nothing about the close.
    """
    number = conversation.get("number")
    heading = f"Transcript of conversation #{number}"
    if reopened:
        heading = f"Conversation #{number} was reopened: its transcript so far"
    head: list[CardElement] = [
        TextBlock(text=heading, wrap=True, weight="Bolder", size="Medium"),
        _facts(conversation, messages, closed_by, closed_at, reopened),
    ]
    url = web_link(conversation.get("url"))
    blocks = [_message_block(m) for m in messages]
    if not blocks:
        return _build(head + [TextBlock(text="No messages.", is_subtle=True, spacing="Small")], [], url)
    # The newest messages that fit next to the heading and the "earlier messages" line.
    room = CARD_BUDGET_BYTES - card_size(_build(head, [_earlier(len(blocks), url)], url))
    kept = 0
    for block in reversed(blocks):
        room -= card_size(block.model_dump(exclude_none=True)) + 1  # and a comma
        if room < 0:
            break
        kept += 1
    while True:
        omitted = len(blocks) - kept
        section = ([_earlier(omitted, url)] if omitted else []) + blocks[omitted:]
        card = _build(head, section, url)
        if card_size(card) <= CARD_BUDGET_BYTES or kept == 0:
            return card
        kept -= 1
