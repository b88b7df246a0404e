"""The delivery engine under pressure: Teams' rate limits, sustained throttling, random
faults, a slow Teams while webhooks keep coming, and deliveries that fail for good."""

from __future__ import annotations

import asyncio
import contextlib
import re

import pytest

from app import RUNTIME
from services.jobs import FLOOD_CONCURRENCY, FLOOD_INTAKE
from tests.harness import WS, post_bodies, wait_for

# Teams' published limits with every window 10× shorter, in the bridge and in the sandbox
# alike: the same shape, a tenth of the waiting.
FAST_THREAD = [(7, 0.1), (8, 0.2), (60, 3.0), (1800, 360.0)]
FAST_ENV = {
    "TEAMS_THREAD_LIMITS": "7/0.1,8/0.2,60/3,1800/360",
    "TEAMS_TENANT_LIMITS": "50/0.1",
    "GRAPH_CHANNEL_CREATE_LIMITS": "4/0.1",
}


def _bodies(posts: list[dict]) -> list[str]:
    return [p["text"].split("<br>", 1)[1] for p in posts if p["text"] and "<br>" in p["text"]]


def _status(h):
    async def read():
        _, body = await h.admin("GET", f"/api/admin/workspaces/{WS}")
        return body

    return read


async def _idle(h) -> None:
    async def idle():
        return (await _status(h)())["deliveries"]["queued"] == 0

    await wait_for(idle, timeout=60, what="the bridge to be idle")


@pytest.mark.bridge_env(**FAST_ENV)
async def test_a_200_message_burst_in_one_thread_never_hits_the_limits(connected):
    h = connected
    h.ms.set_rate_limits(thread=FAST_THREAD, thread_all=[(14, 0.1)], tenant=[(50, 0.1)], channel_create=[(4, 0.1)])
    conv = h.neeto.start_conversation(WS, visitor_name="Rob", visitor_email="rob@example.com", message="m0")
    for n in range(1, 201):
        h.neeto.visitor_writes(WS, conv["id"], f"m{n}")
    channel = await h.wait_channel(conv["number"])
    await wait_for(lambda: len(h.ms.posts(channel["id"])) == 201, timeout=60, what="all 200 messages")
    assert _bodies(h.ms.posts(channel["id"])[1:]) == [f"m{n}" for n in range(1, 201)]
    assert h.ms.rate_limited == [], "the shaping kept every thread, the tenant and Graph under their limits"
    assert h.ms.throttled_count == 0
    assert h.app[RUNTIME].ctx.limiter.waits > 0, "the burst really was above the limits"


async def test_sustained_429s_with_retry_after_delay_but_never_drop_a_message(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Sue", visitor_email="sue@example.com", message="m0")
    channel = await h.wait_channel(conv["number"])
    await _idle(h)
    # More throttles in a row than a job has attempts: throttling is not failure.
    h.ms.fail_next(status=429, count=15, retry_after=0, path_contains="/v3/conversations", method="POST")
    for n in range(1, 4):
        h.neeto.visitor_writes(WS, conv["id"], f"m{n}")
    await wait_for(lambda: len(h.ms.posts(channel["id"])) == 4, timeout=60, what="the three messages")
    assert _bodies(h.ms.posts(channel["id"])[1:]) == ["m1", "m2", "m3"]
    assert h.ms.throttled_count >= 15
    assert (await _status(h)())["deliveries"]["failed"] == 0


async def test_random_5xx_resets_and_slow_answers_lose_and_double_nothing(connected):
    h = connected
    h.ms.chaos(0.1, resets=True, delay=0.02, seed=7)  # Graph and the connector alike
    conversations = [
        h.neeto.start_conversation(WS, visitor_name=f"V{i}", visitor_email=f"v{i}@example.com", message=f"c{i} m0")
        for i in range(3)
    ]
    for n in range(1, 8):
        for i, conv in enumerate(conversations):
            h.neeto.visitor_writes(WS, conv["id"], f"c{i} m{n}")

    def complete():
        for conv in conversations:
            channel = h.conversation_channel(conv["number"])
            if channel is None or len(h.ms.posts(channel["id"])) < 8:
                return False
        return True

    await wait_for(complete, timeout=90, what="every message despite the faults")
    await _idle(h)
    faults = [r for r in h.ms.requests if r["fault"]]
    assert len(faults) >= 5, "the faults really happened"
    for i, conv in enumerate(conversations):
        channel = h.conversation_channel(conv["number"])
        assert _bodies(h.ms.posts(channel["id"])[1:]) == [f"c{i} m{n}" for n in range(1, 8)]
    notices = [p for p in h.general_posts() if p["attachments"]]
    assert len(notices) == 3


@pytest.mark.bridge_env(TEAMS_THREAD_LIMITS="1/60")
async def test_webhooks_are_acknowledged_while_teams_delivery_is_held_back(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Tia", visitor_email="tia@example.com", message="m0")
    for n in range(1, 51):
        h.neeto.visitor_writes(WS, conv["id"], f"m{n}")
    await h.neeto.drain_webhooks()
    events = [d for d in h.neeto.deliveries if d["event"] == "message.created"]
    assert len(events) >= 50 and all(d["status"] == 200 for d in events), "every event acknowledged"
    status = await _status(h)()
    assert status["deliveries"]["queued"] >= 50
    assert status["deliveries"]["oldest_pending_age_seconds"] is not None
    async with h.http.get(f"{h.bridge_url}/metrics") as response:
        metrics = await response.text()
    pending = float(re.search(r"^bridge_jobs_pending (\S+)", metrics, re.M).group(1))
    assert pending >= 50
    assert re.search(r"^bridge_jobs_oldest_pending_age_seconds \S+", metrics, re.M)


async def test_a_message_teams_refuses_for_good_is_reported_in_the_notification_channel(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Uma", visitor_email="uma@example.com", message="m0")
    await h.wait_channel(conv["number"])
    await _idle(h)
    h.ms.fail_next(status=400, count=1, retry_after=None, path_contains="/v3/conversations", method="POST")
    h.neeto.visitor_writes(WS, conv["id"], "this one is refused")

    notice = await wait_for(
        lambda: next((p for p in h.general_posts() if "could not be shown" in (p["text"] or "")), None),
        what="the failure notice in General",
    )
    assert f"#{conv['number']}" in notice["text"]

    async def dead_letters():
        _, body = await h.admin("GET", f"/api/admin/workspaces/{WS}/dead-letters")
        return body["dead_letters"]

    [dead] = await wait_for(dead_letters, what="the dead letter")  # recorded right after the notice
    assert "400" in dead["reason"]


async def test_a_flood_of_incoming_work_runs_delivery_one_job_at_a_time_until_it_passes(connected):
    """While many webhooks and activities are being taken in at once, the job loop runs at
    most FLOOD_CONCURRENCY jobs, so the acknowledgements get the CPU; then full speed."""
    h = connected
    runner = h.app[RUNTIME].runner
    conversations = [(await h.open_conversation(name))[0] for name in ("Ana", "Bo", "Cy", "Di")]
    await _idle(h)

    async def most_running_until(text: str) -> int:
        """The most jobs running at once until ``text`` is posted in every channel."""
        delivered = lambda: all(  # noqa: E731
            text in post_bodies(h.ms.posts(h.conversation_channel(c["number"])["id"])) for c in conversations
        )
        most = 0
        while not delivered():
            most = max(most, runner.running)
            await asyncio.sleep(0.01)  # a sampling period (each post takes 0.5 s), not a wait for the bridge
        return most

    h.ms.delay_next(0.5, count=4, method="POST", path_contains="/v3/conversations")  # posts overlap
    with contextlib.ExitStack() as flood:
        for _ in range(FLOOD_INTAKE):  # as many requests being taken in at once
            flood.enter_context(runner.taking_in())
        for conv in conversations:
            h.neeto.visitor_writes(WS, conv["id"], "during the flood")
        assert await most_running_until("during the flood") == FLOOD_CONCURRENCY

    h.ms.delay_next(0.5, count=4, method="POST", path_contains="/v3/conversations")
    for conv in conversations:
        h.neeto.visitor_writes(WS, conv["id"], "after the flood")
    assert await most_running_until("after the flood") == len(conversations)
