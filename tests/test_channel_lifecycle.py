"""What Teams does to a conversation's channel behind the bridge's back: a person deletes
it, the team is at its channel cap, the bot is removed and added back."""

from __future__ import annotations

from tests.harness import WS, post_bodies, wait_for


async def test_a_deleted_channel_is_replaced_with_the_whole_history(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Ned", visitor_email="ned@example.com", message="hello")
    old = await h.wait_channel(conv["number"])
    h.neeto.visitor_writes(WS, conv["id"], "my order is late")
    await wait_for(lambda: len(h.ms.posts(old["id"])) == 2, what="the visitor's message")
    await h.ms.user_posts(h.team_id, old["id"], h.ada, "Looking into it")
    await wait_for(lambda: h.from_teams(conv["id"]), what="Ada's reply in neetoChat")

    status = await h.ms.person_deletes_channel(h.team_id, old["id"], by_user=h.olly)
    assert 200 <= status < 300
    new = await wait_for(
        lambda: h.ms.channel_by_name(h.team_id, f"{conv['number']} Ned 2"), what="a new channel (old name taken)"
    )
    await wait_for(lambda: len(h.ms.posts(new["id"])) == 3, what="card and history in the new channel")
    posts = h.ms.posts(new["id"])
    assert posts[0]["attachments"], "the conversation card opens the new channel"
    assert post_bodies(posts[1:]) == ["my order is late", "Looking into it"]
    notice = await wait_for(
        lambda: next((p for p in h.general_posts() if "was deleted" in (p["text"] or "")), None),
        what="the notice in the notification channel",
    )
    assert new["displayName"] in notice["text"]
    await wait_for(
        lambda: new["webUrl"] in str(next(p for p in h.general_posts() if p["attachments"])["attachments"][0]),
        what="the notification card to link the new channel (a low-priority card refresh)",
    )

    h.neeto.visitor_writes(WS, conv["id"], "still there?")
    # (60 s: the conversation's jobs may still be retrying the one that met the deleted channel)
    await wait_for(lambda: "still there?" in post_bodies(h.ms.posts(new["id"])), 60, "a live message there")
    assert post_bodies(h.ms.posts(new["id"])) == ["my order is late", "Looking into it", "still there?"]
    await h.ms.user_posts(h.team_id, new["id"], h.ada, "Yes!")
    await wait_for(lambda: len(h.from_teams(conv["id"])) == 2, what="a reply from the new channel")
    assert [m["body"] for m in h.from_teams(conv["id"])] == ["Looking into it", "Yes!"]
    await h.neeto.drain_webhooks()
    await wait_for(_queue_empty(h), what="the bridge to be idle")
    yes = [p for p in h.ms.posts(new["id"]) if "Yes!" in (p["text"] or "")]
    assert [p["from"]["kind"] for p in yes] == ["user"], "the reply written in the new channel is not echoed"


async def test_a_channel_deleted_without_notice_is_found_at_the_next_post(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Oz", visitor_email="oz@example.com", message="hi")
    old = await h.wait_channel(conv["number"])
    await wait_for(lambda: h.ms.posts(old["id"]), what="the card")
    h.ms.delete_channel(h.team_id, old["id"])  # the bot never hears of it
    h.neeto.visitor_writes(WS, conv["id"], "anyone?")
    new = await wait_for(lambda: h.ms.channel_by_name(h.team_id, f"{conv['number']} Oz 2"), what="a new channel")
    await wait_for(lambda: post_bodies(h.ms.posts(new["id"])) == ["anyone?"], what="the message in the new channel")


async def test_closing_deletes_the_channel_without_opening_a_new_one(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Pam", visitor_email="pam@example.com", message="bye")
    channel = await h.wait_channel(conv["number"])
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "/close")
    await wait_for(lambda: h.conversation_channel(conv["number"]) is None, what="the channel deleted")
    await h.ms.drain_notifications()  # Teams tells the bot about the deletion it made
    await wait_for(_queue_empty(h), what="the bridge to be idle")
    assert [c for c in h.ms.channels(h.team_id) if c["id"] != h.team_id] == []
    assert not any("was deleted" in (p["text"] or "") for p in h.general_posts())


def _queue_empty(h):
    async def check():
        _, body = await h.admin("GET", f"/api/admin/workspaces/{WS}")
        return body["deliveries"]["queued"] == 0

    return check


async def test_at_the_channel_cap_the_conversation_lives_in_a_thread(connected):
    h = connected
    h.ms.set_channel_cap(h.team_id, 1)  # only General fits
    conv = h.neeto.start_conversation(WS, visitor_name="Pia", visitor_email="pia@example.com", message="hello?")

    def thread():
        return next((p for p in h.general_posts() if p["attachments"] and len(p["replies"]) >= 1), None)

    root = await wait_for(thread, what="the card in General with the explanation under it")
    assert "limit of channels" in root["replies"][0]["text"]
    assert "hello?" in str(root["attachments"][0]["content"]), "the card shows the first message"

    h.neeto.visitor_writes(WS, conv["id"], "my order is late")
    await wait_for(lambda: len(thread()["replies"]) == 2, what="the visitor's message in the thread")
    assert post_bodies(thread()["replies"][1:]) == ["my order is late"]

    await h.ms.user_posts(h.team_id, h.team_id, h.ada, "Looking into it", reply_to=root["id"])
    await wait_for(lambda: h.from_teams(conv["id"]), what="the thread reply in neetoChat")
    assert h.from_teams(conv["id"])[0]["body"] == "Looking into it"

    await h.ms.user_posts(h.team_id, h.team_id, h.ada, "/close", reply_to=root["id"])
    await wait_for(lambda: h.neeto.conversation(WS, conv["id"])["status"] == "closed", what="closed in neetoChat")
    await wait_for(
        lambda: any("was closed" in (r["text"] or "") for r in thread()["replies"]), what="'closed' in the thread"
    )
    assert any(c["id"] == h.team_id for c in h.ms.channels(h.team_id)), "General is never deleted"


async def test_a_removed_bot_pauses_delivery_and_catches_up_when_added_back(connected):
    h = connected
    await h.ms.uninstall_bot(h.team_id, by_user=h.adam)
    conv = h.neeto.start_conversation(WS, visitor_name="Mo", visitor_email="mo@example.com", message="hi")
    h.neeto.visitor_writes(WS, conv["id"], "are you there?")
    await h.neeto.drain_webhooks()

    async def paused():
        _, body = await h.admin("GET", f"/api/admin/workspaces/{WS}")
        return body["deliveries"]["failed"] == 2 and body

    body = await wait_for(paused, what="both events held as failed deliveries")
    assert body["teams"]["bot_installed"] is False
    assert "removed" in body["teams"]["problem"]
    assert h.conversation_channel(conv["number"]) is None

    await h.ms.install_bot(h.team_id, by_user=h.adam)
    channel = await h.wait_channel(conv["number"])
    await wait_for(lambda: post_bodies(h.ms.posts(channel["id"])) == ["are you there?"], what="the message caught up")
    _, body = await h.admin("GET", f"/api/admin/workspaces/{WS}")
    assert body["deliveries"]["failed"] == 0
    assert body["teams"]["problem"] is None


async def test_teams_refusing_the_bot_marks_it_removed(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Nia", visitor_email="nia@example.com", message="hi")
    channel = await h.wait_channel(conv["number"])
    await wait_for(_queue_empty(h), what="the conversation set up")
    h.ms.team(h.team_id).bot_installed = False  # removed, and the bot was never told
    h.neeto.visitor_writes(WS, conv["id"], "hello?")

    async def marked():
        _, body = await h.admin("GET", f"/api/admin/workspaces/{WS}")
        return body["teams"]["bot_installed"] is False and body["deliveries"]["failed"] == 1

    await wait_for(marked, what="the link marked and the message held")
    await h.ms.install_bot(h.team_id, by_user=h.adam)
    await wait_for(lambda: post_bodies(h.ms.posts(channel["id"])) == ["hello?"], what="the message after re-adding")
