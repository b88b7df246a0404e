"""Reconcile: a message one side has and the other never heard of (a lost activity, a lost
webhook, the bridge down) is delivered late, in order, exactly once (services/reconcile.py)."""

from __future__ import annotations

import pytest

from tests.harness import WS, post_bodies, wait_for


async def _reconcile(h) -> int:
    status, body = await h.admin("POST", f"/api/admin/workspaces/{WS}/reconcile")
    assert status == 202
    return body["queued"]


async def _settled(h, conv, channel) -> None:
    """Jobs of a conversation run in order: once a marker written after the reconcile has
    gone both ways, the reconcile and what it queued have run."""
    before = len(h.from_teams(conv["id"]))
    h.neeto.visitor_writes(WS, conv["id"], "marker from the visitor")
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "marker from Teams")
    await wait_for(lambda: len(h.from_teams(conv["id"])) > before, what="the Teams marker in neetoChat")
    await wait_for(lambda: "marker from the visitor" in post_bodies(h.ms.posts(channel["id"]))[-1], what="marker")


async def test_a_message_teams_never_delivered_reaches_the_visitor_once(connected):
    h = connected
    conv, channel = await h.open_conversation("Gil")
    lost = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "Your refund is on its way", deliver=False)
    assert lost["status"] is None  # Teams never told the bot
    await _settled(h, conv, channel)
    assert [m["body"] for m in h.from_teams(conv["id"])] == ["marker from Teams"]

    assert await _reconcile(h) == 1
    (healed,) = await wait_for(
        lambda: [m for m in h.from_teams(conv["id"]) if m["body"] == "Your refund is on its way"], what="healed"
    )
    assert healed["sender"]["id"] == h.ada_agent["id"], "written as its author's agent"
    assert healed["external_id"] == lost["activity"]["id"]

    late = await h.ms._send_to_bot(lost["activity"])  # Teams delivers it after all, late
    assert 200 <= late["status"] < 300
    await _reconcile(h)
    await _settled(h, conv, channel)
    bodies = [m["body"] for m in h.from_teams(conv["id"])]
    assert bodies.count("Your refund is on its way") == 1 and bodies.count("marker from Teams") == 2
    _, status = await h.admin("GET", f"/api/admin/workspaces/{WS}")
    assert status["deliveries"]["healed"]["to_neetochat"] == 1


async def test_messages_whose_webhooks_were_lost_are_posted_in_order_once(connected):
    h = connected
    conv, channel = await h.open_conversation("Hal")
    h.neeto.lose_webhooks(WS, 2)
    h.neeto.visitor_writes(WS, conv["id"], "is anyone there?")
    h.neeto.agent_writes(WS, conv["id"], h.ada_agent["id"], "VIP: call back", internal=True)
    assert len(h.neeto.lost_webhooks(WS)) == 2

    await _reconcile(h)
    await _settled(h, conv, channel)
    await _reconcile(h)  # a second run finds nothing new
    await _settled(h, conv, channel)
    bodies = post_bodies(h.ms.posts(channel["id"]))
    assert [b for b in bodies if "anyone there" in b or "VIP" in b] == ["is anyone there?", "VIP: call back"]
    note = next(p for p in h.ms.posts(channel["id"]) if "VIP" in (p["text"] or ""))
    assert "Internal note" in note["text"]
    assert all("anyone there" not in m["body"] for m in h.from_teams(conv["id"])), "no echo back to neetoChat"


async def test_a_close_whose_webhook_was_lost_deletes_the_channel(connected):
    h = connected
    conv, channel = await h.open_conversation("Ivo")
    h.neeto.lose_webhooks(WS, 1)
    h.neeto.close(WS, conv["id"], actor_agent_id=h.ada_agent["id"])
    assert h.conversation_channel(conv["number"]) is not None
    await _reconcile(h)
    await wait_for(lambda: h.conversation_channel(conv["number"]) is None, what="the channel deleted")


@pytest.mark.bridge_env(RECONCILE_INTERVAL_SECONDS="0.5")
async def test_gaps_are_healed_without_anyone_asking(connected):
    h = connected
    conv, channel = await h.open_conversation("Jo")
    h.neeto.lose_webhooks(WS, 1)
    h.neeto.visitor_writes(WS, conv["id"], "hello? still there?")
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "yes, one moment", deliver=False)
    await wait_for(lambda: "hello? still there?" in post_bodies(h.ms.posts(channel["id"])), what="to Teams")
    await wait_for(lambda: [m for m in h.from_teams(conv["id"]) if m["body"] == "yes, one moment"], what="to neetoChat")


async def test_what_happened_while_the_bridge_was_down_arrives_after_the_restart(sandbox, process):
    h = sandbox
    await process.start(h.http)
    await h.connect()
    conv, channel = await h.open_conversation("Kai")
    assert await process.terminate() == 0
    h.neeto.lose_webhooks(WS, 1)  # neetoChat gave up on the bridge while it was down
    h.neeto.visitor_writes(WS, conv["id"], "written while you were down")
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "answered while the bot was down", deliver=False)
    await process.start(h.http)  # the startup run finds both
    await wait_for(lambda: "written while you were down" in post_bodies(h.ms.posts(channel["id"])), what="to Teams")
    await wait_for(
        lambda: [m for m in h.from_teams(conv["id"]) if m["body"] == "answered while the bot was down"],
        what="to neetoChat",
    )
