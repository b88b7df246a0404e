"""Internal notes: written in Teams with ``/note``, or in neetoChat; colleagues see them on
both sides, the visitor never does."""

from __future__ import annotations

from tests.harness import WS, wait_for


async def test_a_note_from_teams_is_internal_in_neetochat_and_never_reaches_the_visitor(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Ivy", visitor_email="ivy@example.com", message="hello")
    channel = await h.wait_channel(conv["number"])
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "/note VIP customer, refund without questions")

    (note,) = await wait_for(lambda: h.from_teams(conv["id"]), what="the note in neetoChat")
    assert note["internal"] is True
    assert note["body"] == "VIP customer, refund without questions"
    assert note["sender"]["id"] == h.ada_agent["id"]
    assert [m["body"] for m in h.neeto.visitor_sees(WS, conv["id"])] == ["hello"]
    assert h.neeto.conversation(WS, conv["id"])["assignee"] is None, "a note does not take the conversation"

    await h.neeto.drain_webhooks()  # the note's own message.created comes back: an echo
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "On it!")
    await wait_for(lambda: len(h.from_teams(conv["id"])) == 2, what="the next message")
    notes_in_channel = [p for p in h.ms.posts(channel["id"]) if "VIP customer" in (p["text"] or "")]
    assert [p["from"]["kind"] for p in notes_in_channel] == ["user"], "the echo is not posted back"


async def test_a_note_without_text_gets_a_reply_and_saves_nothing(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Jem", visitor_email="jem@example.com", message="hi")
    channel = await h.wait_channel(conv["number"])
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "/note")

    def reply():
        post = next(p for p in h.ms.posts(channel["id"]) if p["id"] == sent["activity"]["id"])
        return next((r for r in post["replies"] if "/note &lt;text&gt;" in (r["text"] or "")), None)

    assert "Could not save this note" in (await wait_for(reply, what="the reply in the thread"))["text"]
    assert not h.from_teams(conv["id"])


async def test_a_note_written_in_neetochat_shows_in_the_channel_marked_internal(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Kai", visitor_email="kai@example.com", message="hey")
    channel = await h.wait_channel(conv["number"])
    h.neeto.agent_writes(WS, conv["id"], h.ada_agent["id"], "Checked the order: it shipped today", internal=True)

    post = await wait_for(
        lambda: next((p for p in h.ms.posts(channel["id"]) if "shipped today" in (p["text"] or "")), None),
        what="the note in the channel",
    )
    assert "Internal note" in post["text"]
    h.neeto.visitor_writes(WS, conv["id"], "thanks")
    await wait_for(lambda: any("thanks" in (p["text"] or "") for p in h.ms.posts(channel["id"])), what="next message")
    assert "Internal note" not in next(p for p in h.ms.posts(channel["id"]) if "thanks" in (p["text"] or ""))["text"]
