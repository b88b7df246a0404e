"""Edits and deletes made in neetoChat reach the posts that show those messages in Teams."""

from __future__ import annotations

from tests.harness import WS, post_bodies, wait_for


def _post_of(h, channel_id: str, text: str) -> dict | None:
    return next((p for p in h.ms.posts(channel_id) if text in (p["text"] or "")), None)


async def test_an_edit_in_neetochat_updates_the_post_and_a_delete_deletes_it(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Uma", visitor_email="uma@example.com", message="hi")
    channel = await h.wait_channel(conv["number"])
    reply = h.neeto.agent_writes(WS, conv["id"], h.ada_agent["id"], "Teh order shipped")
    question = h.neeto.visitor_writes(WS, conv["id"], "which carrier?")
    await wait_for(lambda: _post_of(h, channel["id"], "which carrier?"), what="both messages")

    h.neeto.edit_message(WS, conv["id"], reply["id"], "The order shipped")
    post = await wait_for(lambda: _post_of(h, channel["id"], "The order shipped"), what="the edited post")
    assert post["updated"] and "Ada Agent" in post["text"]
    assert _post_of(h, channel["id"], "Teh order") is None

    h.neeto.delete_message(WS, conv["id"], question["id"])
    await wait_for(lambda: _post_of(h, channel["id"], "which carrier?")["deleted"], what="the deleted post")
    live = [p for p in h.ms.posts(channel["id"]) if not p["deleted"]]
    assert post_bodies(live) == ["The order shipped"]


async def test_an_edit_of_a_message_written_in_teams_leaves_the_persons_post_alone(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Vic", visitor_email="vic@example.com", message="hi")
    channel = await h.wait_channel(conv["number"])
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "Hello from Teams")
    (sent,) = await wait_for(lambda: h.from_teams(conv["id"]), what="the message in neetoChat")
    h.neeto.edit_message(WS, conv["id"], sent["id"], "Hello, edited in neetoChat")
    h.neeto.visitor_writes(WS, conv["id"], "next")
    await wait_for(lambda: _post_of(h, channel["id"], "next"), what="the next message")
    assert _post_of(h, channel["id"], "Hello from Teams")["updated"] is None
    assert _post_of(h, channel["id"], "edited in neetoChat") is None


# ---------------------------------------------------------------- edits and deletes made in Teams


async def _delivered(h, conv_id: str, count: int = 1) -> list[dict]:
    return await wait_for(lambda: len(h.from_teams(conv_id)) >= count and h.from_teams(conv_id), what="delivered")


async def _next_message_delivered(h, conv, channel) -> None:
    """Jobs of one conversation run in order: once a later message arrived, the change
    before it has been handled."""
    before = len(h.from_teams(conv["id"]))
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "marker")
    await wait_for(lambda: len(h.from_teams(conv["id"])) > before, what="the marker message")


async def test_an_edit_in_teams_changes_what_the_visitor_sees(connected):
    h = connected
    conv, channel = await h.open_conversation("Wen")
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "Teh parcel left")
    (message,) = await _delivered(h, conv["id"])

    edit = await h.ms.user_edits(sent["activity"]["id"], h.ada, "The parcel left <b>today</b>")
    assert 200 <= edit["status"] < 300
    await wait_for(lambda: h.from_teams(conv["id"])[0]["body"] == "The parcel left today", what="the edit")
    assert [m["body"] for m in h.neeto.visitor_sees(WS, conv["id"])][-1] == "The parcel left today"
    assert h.from_teams(conv["id"])[0]["id"] == message["id"], "edited in place, not sent again"

    again = await h.ms.user_edits(sent["activity"]["id"], h.ada, "/close")  # an edit never runs a command
    await h.reply_to(channel["id"], again, "cannot be run by editing")
    assert h.neeto.conversation(WS, conv["id"])["status"] == "open"
    assert h.from_teams(conv["id"])[0]["body"] == "The parcel left today"


async def test_an_edited_note_stays_internal(connected):
    h = connected
    conv, channel = await h.open_conversation("Xia")
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "/note VIP customr")
    await _delivered(h, conv["id"])
    await h.ms.user_edits(sent["activity"]["id"], h.ada, "/note VIP customer")
    await wait_for(lambda: h.from_teams(conv["id"])[0]["body"] == "VIP customer", what="the edited note")
    assert h.from_teams(conv["id"])[0]["internal"]
    assert all("VIP" not in m["body"] for m in h.neeto.visitor_sees(WS, conv["id"]))


async def test_a_delete_in_teams_deletes_the_message_and_its_attachment(connected):
    h = connected
    conv, channel = await h.open_conversation("Yul")
    image = h.ms.upload_inline_image(b"\x89PNG\r\n\x1a\n" + bytes(300), "image/png")
    sent = await h.ms.user_posts(
        h.team_id, channel["id"], h.ada, "<p>the label</p>" + image["html"], attachments=[image["attachment"]]
    )
    (message,) = await _delivered(h, conv["id"])
    assert [a["filename"] for a in message["attachments"]] == ["image.png"]

    deleted = await h.ms.user_deletes(sent["activity"]["id"], h.ada)
    assert 200 <= deleted["status"] < 300
    await wait_for(lambda: not h.from_teams(conv["id"]), what="the message deleted in neetoChat")
    assert all(m["id"] != message["id"] for m in h.neeto.visitor_sees(WS, conv["id"]))


async def test_changes_to_messages_that_never_reached_neetochat_are_ignored(connected):
    h = connected
    conv, channel = await h.open_conversation("Zed")
    command = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "/help")
    await h.reply_to(channel["id"], command, "/assign")
    await h.ms.user_edits(command["activity"]["id"], h.ada, "now a message to the visitor")
    await h.ms.user_deletes(command["activity"]["id"], h.ada)
    await _next_message_delivered(h, conv, channel)
    assert [m["body"] for m in h.from_teams(conv["id"])] == ["marker"]
    assert not any("Could not" in (r["text"] or "") for p in h.ms.posts(channel["id"]) for r in p["replies"])


async def test_a_delete_neetochat_refuses_is_reported_in_the_thread(connected):
    h = connected
    conv, channel = await h.open_conversation("Ari")
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "keep me")
    await _delivered(h, conv["id"])
    h.neeto.fail_next(WS, status=409, method="DELETE", path_contains="/messages/")
    await h.ms.user_deletes(sent["activity"]["id"], h.ada)
    await h.reply_to(channel["id"], sent, "Could not delete this message in neetoChat")
    assert [m["body"] for m in h.from_teams(conv["id"])] == ["keep me"]


async def test_an_edit_after_a_restart_finds_its_message(sandbox, process):
    h = sandbox
    await process.start(h.http)
    await h.connect()
    conv, channel = await h.open_conversation("Bo")
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "before the restart")
    await _delivered(h, conv["id"])
    assert await process.terminate() == 0
    await process.start(h.http)
    await h.ms.user_edits(sent["activity"]["id"], h.ada, "edited after the restart")
    await wait_for(lambda: h.from_teams(conv["id"])[0]["body"] == "edited after the restart", what="the edit")
