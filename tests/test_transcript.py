"""Transcript on close: before a conversation's channel is deleted, its whole history goes to
the notification channel as a compact card, once; a workspace can turn it off; a reopened
conversation's new channel starts with it."""

from __future__ import annotations

from cards.conversation import TEAMS_CARD_LIMIT_BYTES, WORD_JOINER, card_size
from cards.transcript import INTERNAL, SECTION_ID
from tests.harness import WS, post_bodies, wait_for
from tests.test_flow import _cards

TRICKY = "Is this *markdown*? <b>html</b> {{DATE(2020-01-01T00:00:00Z)}}\n  second line, as typed"
CLOSED_HEADING = "Transcript of conversation #"
REOPENED_HEADING = "was reopened: its transcript so far"


def transcripts(posts: list[dict]) -> list[dict]:
    """The transcript cards among ``posts``, each with its post's time (``_created``)."""
    found = []
    for post in posts:
        for card in _cards([post]):
            heading = card["body"][0].get("text", "")
            if heading.startswith(CLOSED_HEADING) or heading.endswith(REOPENED_HEADING):
                found.append({**card, "_created": post["created"]})
    return found


def facts(card: dict) -> dict[str, str]:
    return {f["title"]: f["value"] for f in card["body"][1]["facts"]}


def messages(card: dict) -> list[dict]:
    """Each message of the hidden section: its text runs joined per line, and file links."""
    section = next(block for block in card["body"] if block.get("id") == SECTION_ID)
    assert section["isVisible"] is False
    out = []
    for item in section["items"]:
        if item["type"] != "Container":
            out.append({"earlier": item["inlines"]})
            continue
        lines = ["".join(run["text"] for run in block["inlines"]).replace(WORD_JOINER, "") for block in item["items"]]
        links = {
            run["text"]: run["selectAction"]["url"]
            for block in item["items"]
            for run in block["inlines"]
            if "selectAction" in run
        }
        out.append({"header": lines[0], "lines": lines[1:], "links": links})
    return out


def deleted_at(h, channel_id: str) -> float:
    deleted = h.ms.team(h.team_id).channels[channel_id].deleted
    assert deleted is not None
    return deleted


async def _conversation_with_both_sides(h):
    """Vera writes (tricky text, a file), Ada answers from neetoChat and from Teams and
    leaves an internal note."""
    conv = h.neeto.start_conversation(WS, visitor_name="Vera Jones", visitor_email="vera@example.com", message=TRICKY)
    channel = await h.wait_channel(conv["number"])
    h.neeto.agent_writes(WS, conv["id"], h.ada_agent["id"], "Could you send the invoice?")
    pdf = {"filename": "invoice 7.pdf", "content_type": "application/pdf", "content": b"%PDF" * 700}
    h.neeto.visitor_writes(WS, conv["id"], "here it is", attachments=[pdf])
    h.neeto.agent_writes(WS, conv["id"], h.ada_agent["id"], "VIP, refund at once", internal=True)
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "Refunded!")
    await wait_for(lambda: h.from_teams(conv["id"]), what="the reply from Teams in neetoChat")
    return conv, channel


def _check_transcript(h, card: dict, conv: dict) -> None:
    assert card["body"][0]["text"] == f"Transcript of conversation #{conv['number']}"
    assert facts(card)["Visitor"] == "Vera Jones (vera@example.com)"
    assert facts(card)["Messages"] == "5 (1 internal note)"
    assert facts(card)["Closed by"] == "Ada Agent" and "DATE(" in facts(card)["Closed"]
    seen = messages(card)
    assert [m["header"].split(" (")[0] for m in seen] == [
        "Vera Jones",
        "Ada Agent",
        "Vera Jones",
        f"{INTERNAL}Ada Agent",
        "Ada Agent",
    ]
    assert seen[0]["header"].startswith("Vera Jones (Visitor, {{DATE(")
    assert seen[0]["lines"] == [TRICKY]  # as typed: one plain run, line breaks and all
    assert [m["lines"] for m in seen[1:]] == [
        ["Could you send the invoice?"],
        ["here it is", "📎 invoice 7.pdf (application/pdf, 2.7 KB)"],
        ["VIP, refund at once"],
        ["Refunded!"],
    ]
    url = h.neeto.messages(WS, conv["id"])[2]["attachments"][0]["url"]
    assert seen[2]["links"] == {"invoice 7.pdf": url}
    assert [a["title"] for a in card["actions"]] == ["Show transcript", "Open in neetoChat"]


async def test_closing_in_neetochat_posts_the_transcript_before_deleting_the_channel(connected):
    h = connected
    conv, channel = await _conversation_with_both_sides(h)
    h.neeto.close(WS, conv["id"], actor_agent_id=h.ada_agent["id"])
    await wait_for(lambda: h.conversation_channel(conv["number"]) is None, what="the channel deleted")
    [card] = transcripts(h.general_posts())
    assert card["_created"] < deleted_at(h, channel["id"])
    _check_transcript(h, card, conv)
    close_event = [e for e in h.neeto.events(WS) if e["event"] == "conversation.closed"][-1]
    assert close_event["created_at"][:19] in facts(card)["Closed"]  # when neetoChat closed it


async def test_close_in_teams_posts_the_transcript_before_deleting_the_channel(connected):
    h = connected
    conv, channel = await _conversation_with_both_sides(h)
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "/close")
    await wait_for(lambda: h.conversation_channel(conv["number"]) is None, what="the channel deleted")
    [card] = transcripts(h.general_posts())
    assert card["_created"] < deleted_at(h, channel["id"])
    _check_transcript(h, card, conv)
    await h.neeto.drain_webhooks()  # neetoChat's conversation.closed changes nothing more
    await wait_for(lambda: _idle(h), what="the bridge to be idle")
    assert len(transcripts(h.general_posts())) == 1


async def _idle(h) -> bool:
    _, body = await h.admin("GET", f"/api/admin/workspaces/{WS}")
    return body["deliveries"]["queued"] == 0


async def test_the_operator_api_turns_the_transcript_off(connected):
    h = connected
    link = {"team_id": h.team_id, "authorizing_user": {"email": "adam@acme.test"}}
    status, body = await h.admin("GET", f"/api/admin/workspaces/{WS}")
    assert body["teams"]["transcript_on_close"] is True  # on by default
    for wrong in ("no", 0, [], {}):
        status, body = await h.admin("PUT", f"/api/admin/workspaces/{WS}/teams", {**link, "transcript_on_close": wrong})
        assert status == 400 and "transcript_on_close" in body["error"]
    status, body = await h.admin("PUT", f"/api/admin/workspaces/{WS}/teams", {**link, "transcript_on_close": False})
    assert status == 200 and body["teams"]["transcript_on_close"] is False
    status, body = await h.admin("PUT", f"/api/admin/workspaces/{WS}/teams", link)  # not given: kept
    assert status == 200 and body["teams"]["transcript_on_close"] is False

    conv = h.neeto.start_conversation(WS, visitor_name="Nat", visitor_email="nat@example.com", message="hi")
    await h.wait_channel(conv["number"])
    h.neeto.close(WS, conv["id"], actor_agent_id=h.ada_agent["id"])
    await wait_for(lambda: h.conversation_channel(conv["number"]) is None, what="the channel deleted")
    await wait_for(lambda: _idle(h), what="the bridge to be idle")
    assert transcripts(h.general_posts()) == []


async def test_a_long_conversation_keeps_the_newest_messages_under_28_kb(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Lou", visitor_email="lou@example.com", message="message 0")
    await h.wait_channel(conv["number"])
    h.neeto.set_webhook_url(WS, None)  # 299 more messages that the channel need not show
    for n in range(1, 300):
        if n % 2:
            h.neeto.agent_writes(WS, conv["id"], h.ada_agent["id"], f"message {n}")
        else:
            h.neeto.visitor_writes(WS, conv["id"], f"message {n}")
    h.neeto.set_webhook_url(WS, h.webhook_url)
    h.neeto.close(WS, conv["id"], actor_agent_id=h.ada_agent["id"])
    await wait_for(lambda: h.conversation_channel(conv["number"]) is None, what="the channel deleted")
    [card] = transcripts(h.general_posts())
    del card["_created"]
    assert card_size(card) < TEAMS_CARD_LIMIT_BYTES
    assert facts(card)["Messages"] == "300"
    earlier, *shown = messages(card)
    assert 20 < len(shown) < 300
    assert earlier["earlier"][0]["text"] == f"{300 - len(shown)} earlier messages: "
    assert earlier["earlier"][1]["selectAction"]["url"] == conv["url"]
    assert [m["lines"] for m in shown] == [[f"message {n}"] for n in range(300 - len(shown), 300)]


async def test_a_retried_close_posts_one_transcript(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Rex", visitor_email="rex@example.com", message="hi")
    channel = await h.wait_channel(conv["number"])
    h.ms.fail_next(503, count=1, retry_after=None, path_contains="/channels/", method="DELETE")
    h.neeto.close(WS, conv["id"], actor_agent_id=h.ada_agent["id"])
    await wait_for(lambda: h.conversation_channel(conv["number"]) is None, 20, "the channel deleted on the retry")
    [card] = transcripts(h.general_posts())
    assert card["_created"] < deleted_at(h, channel["id"])
    assert [r["status"] for r in h.ms.requests if r["method"] == "DELETE" and "/channels/" in r["path"]] == [503, 204]


async def test_a_transcript_teams_refuses_does_not_stop_the_close(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Ula", visitor_email="ula@example.com", message="hi")
    await h.wait_channel(conv["number"])
    await wait_for(lambda: _idle(h), what="the conversation set up")
    h.ms.fail_next(413, count=1, retry_after=None, path_contains="/v3/conversations", method="POST")
    h.neeto.close(WS, conv["id"], actor_agent_id=h.ada_agent["id"])
    await wait_for(lambda: h.conversation_channel(conv["number"]) is None, what="the channel deleted anyway")
    await wait_for(lambda: _idle(h), what="the bridge to be idle")
    assert transcripts(h.general_posts()) == []
    _, body = await h.admin("GET", f"/api/admin/workspaces/{WS}")
    assert body["deliveries"]["failed"] == 0


async def test_a_reopened_conversation_starts_its_new_channel_with_the_transcript(connected):
    h = connected
    conv, old = await _conversation_with_both_sides(h)
    h.neeto.close(WS, conv["id"], actor_agent_id=h.ada_agent["id"])
    await wait_for(lambda: h.conversation_channel(conv["number"]) is None, what="the channel deleted")

    h.neeto.visitor_writes(WS, conv["id"], "it broke again")  # neetoChat reopens it
    new = await wait_for(lambda: h.ms.channel_by_name(h.team_id, f"{conv['number']} Vera Jones 2"), what="a channel")
    await wait_for(lambda: "it broke again" in post_bodies(h.ms.posts(new["id"])), what="the history")
    posts = h.ms.posts(new["id"])
    assert _cards(posts[:1]) and not transcripts(posts[:1]), "the conversation card comes first"
    [opening] = transcripts(posts[1:2])
    assert opening["body"][0]["text"] == f"Conversation #{conv['number']} was reopened: its transcript so far"
    assert list(facts(opening)) == ["Visitor", "Messages", "Started"]  # nothing about a close
    lines = [m["lines"] for m in messages(opening)]  # the whole history, up to the message that reopened it
    assert len(lines) == 6 and lines[0] == [TRICKY] and lines[4:] == [["Refunded!"], ["it broke again"]]
    assert post_bodies(posts[2:])[-1] == "it broke again"  # then the history, as before

    h.neeto.close(WS, conv["id"], actor_agent_id=h.ada_agent["id"])  # closed again: a second transcript
    await wait_for(lambda: h.conversation_channel(conv["number"]) is None, what="the new channel deleted")
    first, second = transcripts(h.general_posts())
    assert facts(first)["Messages"] == "5 (1 internal note)" and facts(second)["Messages"] == "6 (1 internal note)"
    assert first["_created"] < deleted_at(h, old["id"]) < second["_created"] < deleted_at(h, new["id"])
    await wait_for(lambda: _idle(h), what="the bridge to be idle")
    assert len(transcripts(h.ms.posts(new["id"]))) == 1
