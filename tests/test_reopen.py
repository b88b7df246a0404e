"""A closed conversation that opens again gets a channel again, with its whole history."""

from __future__ import annotations

from tests.harness import WS, post_bodies, wait_for


async def test_a_reopened_conversation_gets_a_new_channel_with_its_history(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Rae", visitor_email="rae@example.com", message="hello")
    old = await h.wait_channel(conv["number"])
    h.neeto.agent_writes(WS, conv["id"], h.ada_agent["id"], "Fixed, closing")
    await wait_for(lambda: len(h.ms.posts(old["id"])) == 2, what="the agent's reply")
    h.neeto.close(WS, conv["id"], actor_agent_id=h.ada_agent["id"])
    await wait_for(lambda: h.conversation_channel(conv["number"]) is None, what="the channel deleted")

    h.neeto.reopen(WS, conv["id"], actor_agent_id=h.ada_agent["id"])
    new = await wait_for(
        lambda: h.ms.channel_by_name(h.team_id, f"{conv['number']} Rae 2"), what="a new channel (old name taken)"
    )
    await wait_for(lambda: len(h.ms.posts(new["id"])) == 3, what="card, transcript and history")
    posts = h.ms.posts(new["id"])
    assert posts[0]["attachments"], "the conversation card opens the new channel"
    assert "was reopened: its transcript so far" in str(posts[1]["attachments"])  # tests/test_transcript.py
    assert post_bodies(posts[2:]) == ["Fixed, closing"]  # "hello" is in the card
    notice = await wait_for(
        lambda: next((p for p in h.general_posts() if "was reopened" in (p["text"] or "")), None),
        what="the notice in the notification channel",
    )
    assert new["displayName"] in notice["text"] and "Ada" in notice["text"]
    await wait_for(
        lambda: new["webUrl"] in str(next(p for p in h.general_posts() if p["attachments"])["attachments"][0]),
        what="the notification card to link the new channel",
    )

    h.neeto.visitor_writes(WS, conv["id"], "one more question")
    await wait_for(lambda: "one more question" in post_bodies(h.ms.posts(new["id"])), what="a live message")
    await h.ms.user_posts(h.team_id, new["id"], h.ada, "Sure")
    await wait_for(lambda: [m["body"] for m in h.from_teams(conv["id"])] == ["Sure"], what="the reply in neetoChat")


async def test_a_visitor_writing_to_a_closed_conversation_reopens_it_in_teams(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Sid", visitor_email="sid@example.com", message="hi")
    channel = await h.wait_channel(conv["number"])
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "/close")
    await wait_for(lambda: h.conversation_channel(conv["number"]) is None, what="closed from Teams")

    h.neeto.visitor_writes(WS, conv["id"], "wait, it broke again")  # neetoChat reopens it
    new = await wait_for(lambda: h.ms.channel_by_name(h.team_id, f"{conv['number']} Sid 2"), what="a new channel")
    await wait_for(lambda: "wait, it broke again" in post_bodies(h.ms.posts(new["id"])), what="the message")
    await wait_for(
        lambda: [p for p in h.general_posts() if "was reopened" in (p["text"] or "")], what="the reopen notice"
    )
    await h.neeto.drain_webhooks()
    assert len([p for p in h.general_posts() if "was reopened" in (p["text"] or "")]) == 1


async def test_a_lost_reopen_event_is_made_up_for_by_the_next_event(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Tam", visitor_email="tam@example.com", message="hi")
    await h.wait_channel(conv["number"])
    h.neeto.close(WS, conv["id"], actor_agent_id=h.ada_agent["id"])
    await wait_for(lambda: h.conversation_channel(conv["number"]) is None, what="closed")
    h.neeto.set_webhook_url(WS, None)  # conversation.reopened never reaches the bridge
    h.neeto.reopen(WS, conv["id"], actor_agent_id=h.ada_agent["id"])
    h.neeto.set_webhook_url(WS, h.webhook_url)
    h.neeto.visitor_writes(WS, conv["id"], "hello again")
    new = await wait_for(lambda: h.ms.channel_by_name(h.team_id, f"{conv['number']} Tam 2"), what="a new channel")
    await wait_for(lambda: "hello again" in post_bodies(h.ms.posts(new["id"])), what="the message in it")
