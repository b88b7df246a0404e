"""What the person who wrote a message in Teams sees when it does not reach the visitor at
once: one reply in its thread, posted at the first failure and edited as the delivery goes
on. A message that goes through at once gets no reply."""

from __future__ import annotations

import html

from tests.harness import WS, wait_for


def _replies(h, channel_id: str, post_id: str) -> list[dict]:
    post = next(p for p in h.ms.posts(channel_id) if p["id"] == post_id)
    return post["replies"]


def _texts(replies: list[dict]) -> list[str]:
    return [html.unescape(r["text"] or "") for r in replies]


async def test_a_message_that_fails_at_first_says_so_and_then_that_it_arrived(connected):
    h = connected
    conv, channel = await h.open_conversation("Lea")
    h.neeto.fail_next(WS, status=503, method="POST", path_contains="/messages")
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "Your parcel left today")
    post_id = sent["activity"]["id"]
    await wait_for(lambda: h.from_teams(conv["id"]), what="the message delivered on a retry")
    (notice,) = await wait_for(
        lambda: [r for r in _replies(h, channel["id"], post_id) if "after all" in (r["text"] or "")] or None,
        what="the notice edited to say it arrived",
    )
    assert notice["updated"], "the first notice was edited, not a second one posted"
    assert _texts(_replies(h, channel["id"], post_id)) == ["✅ Delivered to the visitor after all."]
    assert [m["body"] for m in h.from_teams(conv["id"])] == ["Your parcel left today"]


async def test_a_message_that_fails_for_good_ends_with_the_reason_in_the_same_reply(connected):
    h = connected
    conv, channel = await h.open_conversation("Max")
    h.neeto.fail_next(WS, status=503, method="POST", path_contains="/messages")
    h.neeto.fail_next(WS, status=422, method="POST", path_contains="/messages")
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "this one will not make it")
    post_id = sent["activity"]["id"]
    await wait_for(
        lambda: any("Could not deliver" in t for t in _texts(_replies(h, channel["id"], post_id))),
        what="the failure in the thread",
    )
    (text,) = _texts(_replies(h, channel["id"], post_id))
    assert text.startswith("⚠️ Could not deliver this message to the visitor") and "422" in text
    assert not h.from_teams(conv["id"])
    _, status = await h.admin("GET", f"/api/admin/workspaces/{WS}")
    assert status["deliveries"]["failed"] == 1


async def test_a_message_that_goes_through_at_once_gets_no_reply(connected):
    h = connected
    conv, channel = await h.open_conversation("Ned")
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "quick one")
    await wait_for(lambda: h.from_teams(conv["id"]), what="delivered")
    h.neeto.visitor_writes(WS, conv["id"], "thanks")  # a later event of the conversation: the job has finished
    await wait_for(lambda: any("thanks" in (p["text"] or "") for p in h.ms.posts(channel["id"])), what="the next")
    assert _replies(h, channel["id"], sent["activity"]["id"]) == []
