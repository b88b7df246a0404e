"""A support team runs neetoChat conversations from Teams: the whole path, both ways."""

from __future__ import annotations

import json
import re

from app import RUNTIME
from services.graph import GraphChannels, build_graph_client
from services.metrics import Metrics
from services.rate_limits import RateLimiter
from tests.harness import WS, stored_jobs, wait_for


def _cards(posts):
    out = []
    for post in posts:
        for att in post["attachments"] or []:
            content = att["content"]
            out.append(json.loads(content) if isinstance(content, str) else content)
    return out


def _card_text(card) -> str:
    """What a person reads on the card: texts, fact titles and values, button titles and
    URLs, with the Markdown escaping undone the way Teams renders it."""
    parts: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            for key in ("text", "title", "value", "url"):
                if isinstance(node.get(key), str):
                    parts.append(node[key])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(card)
    return re.sub(r"\\(.)", r"\1", "\n".join(parts))


async def test_linking_posts_a_confirmation_in_general(connected):
    texts = [p["text"] for p in connected.general_posts()]
    assert any("Acme Support" in t and "connected" in t for t in texts)
    status, body = await connected.admin("GET", f"/api/admin/workspaces/{WS}")
    assert status == 200
    assert body["teams"]["linked"] and body["teams"]["bot_installed"]
    assert body["teams"]["notification_channel_id"] == connected.team_id  # General by default


async def test_new_conversation_gets_a_card_and_its_own_channel(connected):
    h = connected
    conv = h.neeto.start_conversation(
        WS,
        visitor_name="Vera Jones",
        visitor_email="vera@example.com",
        message="My order #42 is late",
        prechat=[{"question": "Department", "answer": "Billing"}],
    )
    channel = await h.wait_channel(conv["number"])
    assert channel["displayName"] == f"{conv['number']} Vera Jones"

    notice = await wait_for(lambda: _cards(h.general_posts()), what="the notice card")
    text = _card_text(notice[0])
    assert "A conversation started by" in text and "vera@example.com" in text
    assert conv["visitor"]["contact_url"] in text
    assert "My order" in text and "Unassigned" in text and "Open" in text
    assert "Department" in text and "Billing" in text
    assert "DATE(" in text or "No replies yet" in text
    view = [a for a in notice[0]["actions"] if a["title"] == "View conversation in Teams"][0]
    assert view["url"] == channel["webUrl"] and view["url"].startswith("https://teams.microsoft.com/l/channel/")

    intro = await wait_for(lambda: _cards(h.ms.posts(channel["id"])), what="the channel's first post")
    assert "A conversation started by" in _card_text(intro[0]) and "My order" in _card_text(intro[0])


async def test_messages_written_before_the_channel_existed_are_backfilled_in_order(connected):
    h = connected
    h.neeto.hold_webhooks(WS)
    conv = h.neeto.start_conversation(WS, visitor_name="Bo", visitor_email="bo@example.com", message="first")
    h.neeto.visitor_writes(WS, conv["id"], "second")
    h.neeto.agent_writes(WS, conv["id"], h.ada_agent["id"], "third, from the app")
    h.neeto.agent_writes(WS, conv["id"], h.ada_agent["id"], "secret note", internal=True)
    h.neeto.visitor_writes(WS, conv["id"], "fourth")
    h.neeto.release_webhooks(WS)
    channel = await h.wait_channel(conv["number"])
    await wait_for(lambda: len(h.ms.posts(channel["id"])) >= 5, what="backfill")
    await h.neeto.drain_webhooks()
    posts = h.ms.posts(channel["id"])
    texts = [p["text"] or "" for p in posts]
    assert "first" in _card_text(_cards(posts)[0])  # the first message is in the card...
    assert not any("first" in t for t in texts[1:])  # ...and not posted again
    bodies = [t.split("<br>")[1] for t in texts[1:]]
    assert bodies == ["second", "third, from the app", "secret note", "fourth"]
    assert "Ada Agent" in texts[2] and "Bo" in texts[1]
    assert "Internal note" in texts[3] and not any("Internal note" in t for t in texts[:3] + texts[4:])


async def test_out_of_order_and_duplicate_webhooks_give_the_same_channel(connected):
    h = connected
    h.neeto.hold_webhooks(WS)
    conv = h.neeto.start_conversation(WS, visitor_name="Cy", visitor_email="cy@example.com", message="one")
    for word in ("two", "three", "four"):
        h.neeto.visitor_writes(WS, conv["id"], word)
    h.neeto.release_webhooks(WS, order="reversed", duplicate=True)
    channel = await h.wait_channel(conv["number"])
    await h.neeto.drain_webhooks()
    await wait_for(lambda: len(h.ms.posts(channel["id"])) >= 4, what="all messages")
    posts = h.ms.posts(channel["id"])
    assert [p["text"].split("<br>")[1] for p in posts[1:]] == ["two", "three", "four"]
    assert len([c for c in h.ms.channels(h.team_id) if c["displayName"].startswith(f"{conv['number']} ")]) == 1
    assert len(_cards(h.general_posts())) == 1  # one notice, despite duplicates


async def test_live_messages_from_visitor_and_agent_appear_with_the_sender(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Di", visitor_email="di@example.com", message="hi")
    channel = await h.wait_channel(conv["number"])
    h.neeto.visitor_writes(WS, conv["id"], "are you there? <b>not bold</b>")
    h.neeto.agent_writes(WS, conv["id"], h.ada_agent["id"], "Yes! See https://acme.test/help")
    await wait_for(lambda: len(h.ms.posts(channel["id"])) == 3, what="two live messages")
    texts = [p["text"] for p in h.ms.posts(channel["id"])[1:]]
    assert texts[0].startswith("<b>Di</b>") and "&lt;b&gt;not bold&lt;/b&gt;" in texts[0]
    assert texts[1].startswith("<b>Ada Agent</b>") and '<a href="https://acme.test/help">' in texts[1]


async def test_a_reply_in_teams_reaches_the_visitor_as_the_matching_agent(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Ed", visitor_email="ed@example.com", message="help")
    channel = await h.wait_channel(conv["number"])
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "<p>On it, <b>Ed</b>!</p>", mention_bot=True)
    assert sent["status"] in (200, 201)
    msg = (await wait_for(lambda: h.from_teams(conv["id"]), what="the message in neetoChat"))[0]
    assert msg["body"] == "On it, Ed!"  # mention stripped, HTML turned into text
    assert msg["sender"]["id"] == h.ada_agent["id"]
    assert msg["external_id"] == sent["activity"]["id"]
    assert h.neeto.conversation(WS, conv["id"])["assignee"]["id"] == h.ada_agent["id"]
    await h.neeto.drain_webhooks()
    # the echo (message.created with source teams) is not posted back into the channel
    assert all("On it" not in (p["text"] or "") or p["from"].get("kind") == "user" for p in h.ms.posts(channel["id"]))
    assert len([p for p in h.ms.posts(channel["id"]) if "On it" in (p["text"] or "")]) == 1


async def test_someone_who_is_not_an_agent_writes_as_the_authorizing_user(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Fay", visitor_email="fay@example.com", message="hello")
    channel = await h.wait_channel(conv["number"])
    root = (await wait_for(lambda: h.ms.posts(channel["id"]), what="the intro post"))[0]["id"]
    await h.ms.user_posts(h.team_id, channel["id"], h.olly, "Thread reply from a partner", reply_to=root)
    msg = (await wait_for(lambda: h.from_teams(conv["id"]), what="the reply in neetoChat"))[0]
    assert msg["sender"]["id"] == h.admin_agent["id"]
    assert msg["body"] == "Thread reply from a partner"
    assert h.neeto.conversation(WS, conv["id"])["assignee"]["id"] == h.admin_agent["id"]


async def test_an_agent_assignee_is_kept_when_someone_else_replies(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Gus", visitor_email="gus@example.com", message="hey")
    h.neeto.assign(WS, conv["id"], agent_id=h.ada_agent["id"], actor_agent_id=h.admin_agent["id"])
    channel = await h.wait_channel(conv["number"])
    await h.ms.user_posts(h.team_id, channel["id"], h.olly, "chiming in")
    await wait_for(lambda: h.from_teams(conv["id"]), what="the message")
    assert h.neeto.conversation(WS, conv["id"])["assignee"]["id"] == h.ada_agent["id"]


async def test_messages_outside_conversation_channels_are_ignored(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Hal", visitor_email="hal@example.com", message="x")
    await h.wait_channel(conv["number"])
    store = h.app[RUNTIME].ctx.store

    async def total_jobs():
        return await stored_jobs(store, WS)

    before = await total_jobs()
    sent = await h.ms.user_posts(h.team_id, h.team_id, h.ada, "lunch anyone?")
    assert sent["status"] in (200, 201)
    assert await total_jobs() == before  # nothing was stored for delivery
    assert all("lunch" not in m["body"] for m in h.neeto.messages(WS, conv["id"]))


async def test_close_from_teams_closes_the_conversation_and_deletes_the_channel(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Ida", visitor_email="ida@example.com", message="bye")
    channel = await h.wait_channel(conv["number"])
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, " /CLOSE ", mention_bot=True)
    await wait_for(lambda: h.conversation_channel(conv["number"]) is None, what="the channel to be deleted")
    assert h.neeto.conversation(WS, conv["id"])["status"] == "closed"
    assert not any("close" in m["body"].lower() for m in h.from_teams(conv["id"]))


async def test_close_in_neetochat_deletes_the_channel(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Jo", visitor_email="jo@example.com", message="thanks")
    await h.wait_channel(conv["number"])
    h.neeto.close(WS, conv["id"], actor_agent_id=h.ada_agent["id"])
    await wait_for(lambda: h.conversation_channel(conv["number"]) is None, what="the channel to be deleted")


async def test_a_message_to_a_closed_conversation_gets_a_clear_reply(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Kim", visitor_email="kim@example.com", message="q")
    channel = await h.wait_channel(conv["number"])
    h.neeto.set_webhook_url(WS, None)  # the close does not reach the bridge in time
    h.neeto.close(WS, conv["id"], actor_agent_id=h.ada_agent["id"])
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "one more thing")

    def notice():
        for post in h.ms.posts(channel["id"]):
            for reply in post["replies"]:
                if "closed" in (reply["text"] or ""):
                    return reply
        return None

    reply = await wait_for(notice, what="the 'closed' notice in the thread")
    assert reply["reply_to"] == sent["activity"]["id"]
    assert not h.from_teams(conv["id"])


async def test_assignment_notices_follow_the_update_type(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Lu", visitor_email="lu@example.com", message="a")
    channel = await h.wait_channel(conv["number"])
    team = h.neeto.add_team(WS, name="Billing")
    h.neeto.assign(WS, conv["id"], agent_id=h.ada_agent["id"], actor_agent_id=h.admin_agent["id"])
    h.neeto.assign(WS, conv["id"], team_id=team["id"], actor_agent_id=h.admin_agent["id"])
    h.neeto.unassign(WS, conv["id"], actor_agent_id=h.ada_agent["id"])
    await wait_for(lambda: len(h.ms.posts(channel["id"])) == 4, what="three notices in the channel")
    texts = [p["text"] for p in h.ms.posts(channel["id"])[1:]]
    assert "assigned to <b>Ada Agent (Agent)</b> by Adam Admin" in texts[0]
    assert "assigned to <b>Billing (Team)</b>" in texts[1]
    assert "unassigned" in texts[2] and "Ada Agent" in texts[2]
    # "New conversations" update type: the notification channel only has the card
    assert not any("assigned" in (p["text"] or "") for p in h.general_posts())

    status, _ = await h.admin(
        "PUT",
        f"/api/admin/workspaces/{WS}/teams",
        {
            "team_id": h.team_id,
            "update_type": "all_activity",
            "authorizing_user": {"email": "adam@acme.test", "name": "Adam Admin"},
        },
    )
    assert status == 200
    h.neeto.assign(WS, conv["id"], agent_id=h.ada_agent["id"], actor_agent_id=h.admin_agent["id"])
    await wait_for(lambda: any("assigned" in (p["text"] or "") for p in h.general_posts()), what="notice in General")


async def test_removing_the_bot_stops_syncing_and_says_why(connected):
    h = connected
    await h.ms.uninstall_bot(h.team_id, by_user=h.adam)
    conv = h.neeto.start_conversation(WS, visitor_name="Mo", visitor_email="mo@example.com", message="hi")
    await h.neeto.drain_webhooks()

    async def failed():
        _, body = await h.admin("GET", f"/api/admin/workspaces/{WS}")
        return body["deliveries"]["failed"] >= 1 and body

    body = await wait_for(failed, what="a failed delivery in the status")
    assert body["teams"]["bot_installed"] is False
    assert h.conversation_channel(conv["number"]) is None


async def test_a_taken_channel_name_gets_the_next_free_one(connected):
    h = connected
    number = 1042  # a new workspace's first conversation
    graph = GraphChannels(build_graph_client(h.ms.graph_url), RateLimiter(), (), Metrics())
    group = h.team["aadGroupId"]
    await graph.create(group, f"{number} Ned", "a channel someone made by hand")
    deleted = await graph.create(group, f"{number} Ned 2", "deleted, so its name stays taken for 30 days")
    await graph.delete(group, deleted.id)
    conv = h.neeto.start_conversation(WS, visitor_name="Ned", visitor_email="ned@example.com", message="hi")
    assert conv["number"] == number
    channel = await wait_for(lambda: h.ms.channel_by_name(h.team_id, f"{number} Ned 3"), what="the third name")
    await wait_for(lambda: h.ms.posts(channel["id"]), what="the intro in the new channel")
    assert h.ms.posts(h.ms.channel_by_name(h.team_id, f"{number} Ned")["id"]) == []


async def test_neetochat_attachments_show_as_links_with_name_type_and_size(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Ola", visitor_email="ola@example.com", message="hi")
    channel = await h.wait_channel(conv["number"])
    h.neeto.visitor_writes(
        WS,
        conv["id"],
        "here is the invoice",
        attachments=[{"filename": "invoice 7.pdf", "content_type": "application/pdf", "content": b"%PDF" * 700}],
    )
    post = await wait_for(lambda: h.ms.posts(channel["id"])[1:], what="the message with the file")
    text = post[0]["text"]
    url = h.neeto.messages(WS, conv["id"])[-1]["attachments"][0]["url"]
    assert f'<a href="{url}">invoice 7.pdf</a> (application/pdf, 2.7 KB)' in text
    assert "here is the invoice" in text
