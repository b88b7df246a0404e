"""New messages in conversation channels are stored as Teams sent them and acknowledged
before botbuilder parses them; the bot takes them as a turn from the job loop
(bots/channel_inbox.py). What people notice must not change: each message once, in order,
as its author; redeliveries harmless; nothing lost, even what botbuilder cannot read."""

from __future__ import annotations

import copy
import uuid

from tests.harness import WS, wait_for


async def _idle(h) -> None:
    async def check():
        _, body = await h.admin("GET", f"/api/admin/workspaces/{WS}")
        return body["deliveries"]["queued"] == 0

    await wait_for(check, what="nothing left to deliver")


async def _dead_letters(h) -> list[dict]:
    status, body = await h.admin("GET", f"/api/admin/workspaces/{WS}/dead-letters")
    assert status == 200
    return body["dead_letters"]


def _again(activity: dict, text: str, **changes) -> dict:
    """Another message by the same person in the same place (a new activity id)."""
    new = copy.deepcopy(activity)
    new.update(id=f"1{uuid.uuid4().int % 10**12:012d}", text=text, attachments=[], **changes)
    new["conversation"]["id"] = new["conversation"]["id"].partition(";messageid=")[0] + f";messageid={new['id']}"
    return new


async def test_messages_arrive_once_in_order_even_when_teams_sends_them_twice(connected):
    h = connected
    conv, channel = await h.open_conversation("Ines")
    first = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "one")
    assert first["status"] == 201
    second = _again(first["activity"], "two")
    third = _again(first["activity"], "three")
    for activity in (second, second, third, first["activity"], third):  # redeliveries, one late
        assert (await h.ms._send_to_bot(activity))["status"] == 201
    await _idle(h)
    messages = h.from_teams(conv["id"])
    assert [m["body"] for m in messages] == ["one", "two", "three"]
    assert {m["sender"]["id"] for m in messages} == {h.ada_agent["id"]}, "written as its author's agent"
    assert await _dead_letters(h) == []


async def test_a_message_botbuilder_cannot_read_is_a_visible_dead_letter(connected):
    h = connected
    conv, channel = await h.open_conversation("Jon")
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "fine")
    unreadable = _again(sent["activity"], "garbled", timestamp="yesterday at noon")
    assert (await h.ms._send_to_bot(unreadable))["status"] == 201  # acknowledged: stored as sent

    [letter] = await wait_for(lambda: _dead_letters(h), what="the dead letter")
    assert "botbuilder cannot read this activity" in letter["reason"]
    assert letter["conversation_id"] == conv["id"]
    assert [m["body"] for m in h.from_teams(conv["id"])] == ["fine"]

    # Anywhere else the activity is parsed in the request: the same one is refused there.
    elsewhere = _again(sent["activity"], "garbled", timestamp="yesterday at noon")
    elsewhere["channelData"]["channel"]["id"] = h.team_id  # General
    answer = await h.ms._send_to_bot(elsewhere)
    assert answer["status"] == 400 and answer["body"] == {"error": "not an activity"}


async def test_a_message_in_a_conversation_closed_a_moment_ago_is_ignored(connected):
    h = connected
    conv, channel = await h.open_conversation("Kai")
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "before the close")
    await wait_for(lambda: h.from_teams(conv["id"]), what="the first message in neetoChat")
    h.neeto.close(WS, conv["id"])
    await wait_for(lambda: h.conversation_channel(conv["number"]) is None, what="the channel deleted")

    # Teams delivers a message written just before the channel went (the bridge still
    # has the channel's conversation in memory): nothing is sent, nothing dead-lettered.
    late = _again(sent["activity"], "after the close")
    assert (await h.ms._send_to_bot(late))["status"] == 201
    await _idle(h)
    assert [m["body"] for m in h.from_teams(conv["id"])] == ["before the close"]
    assert await _dead_letters(h) == []
