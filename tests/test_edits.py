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
