"""The shaper itself, on a clock the test moves: windows, waiting, handing back long waits."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.config import ConfigError, Settings
from services.rate_limits import RateLimiter, Throttled, parse_windows


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _calls(limiter: RateLimiter, clock: FakeClock, windows, n: int, *, call_seconds: float = 0.0) -> list[float]:
    """Start ``n`` calls one after another; the start time of each (clock time)."""
    starts = []
    for _ in range(n):
        async with limiter.slot("Teams", [("thread:a", windows)]):
            starts.append(clock.now)
            clock.now += call_seconds
    return starts


def _max_in_any_window(times: list[float], seconds: float) -> int:
    return max(sum(1 for u in times if t - seconds < u <= t) for t in times)


async def test_calls_within_the_limit_go_at_once():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    starts = await _calls(limiter, clock, ((7, 1.0),), 7)
    assert starts == [1000.0] * 7
    assert limiter.waits == 0


async def test_the_next_call_is_handed_back_with_how_long_to_wait():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, max_wait=0.0)
    await _calls(limiter, clock, ((7, 1.0),), 7)
    clock.now += 0.25
    with pytest.raises(Throttled) as caught:
        await _calls(limiter, clock, ((7, 1.0),), 1)
    assert caught.value.retry_after == pytest.approx(0.75)
    assert caught.value.status == 429 and caught.value.retryable


async def test_every_window_holds_for_calls_that_take_time():
    """Real time: 7/0.2 s and 8/0.4 s over 30 calls of ~10 ms each; no window of the
    end-to-end times ever holds more than its count (what a strict service checks)."""
    limiter = RateLimiter()
    windows = ((7, 0.2), (8, 0.4))
    loop = asyncio.get_running_loop()
    seen: list[float] = []

    async def call():
        async with limiter.slot("Teams", [("thread:a", windows)]):
            await asyncio.sleep(0.005)
            seen.append(loop.time())  # "arrival" somewhere inside the call
            await asyncio.sleep(0.005)

    await asyncio.gather(*(call() for _ in range(30)))
    assert len(seen) == 30
    assert _max_in_any_window(seen, 0.2) <= 7
    assert _max_in_any_window(seen, 0.4) <= 8
    assert limiter.waits > 0


async def test_keys_are_independent_and_a_call_needs_room_in_all_of_its_keys():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, max_wait=0.0)
    tenant = ("tenant:t", ((3, 1.0),))
    for channel in ("a", "b", "c"):
        async with limiter.slot("Teams", [(f"thread:{channel}", ((7, 1.0),)), tenant]):
            pass
    with pytest.raises(Throttled) as caught:
        async with limiter.slot("Teams", [("thread:d", ((7, 1.0),)), tenant]):
            pass
    assert "tenant:t" in str(caught.value)


async def test_instances_share_the_limits():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, max_wait=0.0)
    limiter.share = 2
    await _calls(limiter, clock, ((7, 1.0),), 3)
    with pytest.raises(Throttled):
        await _calls(limiter, clock, ((7, 1.0),), 1)


LOCAL = {"GRAPH_BASE_URL": "http://127.0.0.1:1/v1.0", "TEAMS_SERVICE_URL": "http://127.0.0.1:1/connector/"}


def test_limits_are_read_from_the_environment_and_bad_ones_refused():
    assert parse_windows("7/1, 8/2,60/30") == ((7, 1.0), (8, 2.0), (60, 30.0))
    assert parse_windows("") == ()
    settings = Settings.from_env({**LOCAL, "TEAMS_THREAD_LIMITS": "7/0.1,8/0.2"})
    assert settings.teams_thread_limits == ((7, 0.1), (8, 0.2))
    assert Settings.from_env(LOCAL).teams_thread_limits == ((7, 1.0), (8, 2.0), (60, 30.0), (1800, 3600.0))
    with pytest.raises(ConfigError, match="TEAMS_TENANT_LIMITS"):
        Settings.from_env({**LOCAL, "TEAMS_TENANT_LIMITS": "fifty per second"})
    with pytest.raises(ConfigError, match="JOB_LEASE_SECONDS"):
        Settings.from_env({**LOCAL, "JOB_LEASE_SECONDS": "0"})


async def test_a_job_taken_over_after_its_lease_expired_posts_nothing_more(tmp_path):
    """Fencing: the stalled first owner finds out before its next post."""
    from services.fencing import LeaseLost, check_lease, current_lease
    from services.store.base import Job
    from services.store.sqlite import SqliteStore

    store = SqliteStore(str(tmp_path / "bridge.sqlite3"))
    await store.open()
    try:
        await store.enqueue(Job(0, "neetochat_event", "ws", "ws:c1", "evt:1", {}))
        now = time.time()
        [job] = await store.claim_jobs("a/1", now=now, lease_seconds=60, limit=1)
        current_lease.set((job.seq, "a/1"))
        await check_lease(store)  # held: a may post
        # a stalls past its lease; b claims the job a minute later
        [taken] = await store.claim_jobs("b/1", now=now + 61, lease_seconds=60, limit=1)
        assert taken.seq == job.seq
        with pytest.raises(LeaseLost):
            await check_lease(store)
        assert await store.renew_leases("a/1", [job.seq], 200.0) == []  # a's heartbeat learns it too
        assert not await store.finish_job(job.seq, "a/1", "done")
    finally:
        await store.close()


async def test_background_work_leaves_room_for_messages():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    await _calls(limiter, clock, ((7, 1.0),), 4)
    async with limiter.slot("Teams", [("thread:a", ((7, 1.0),))], max_wait=0.0, reserve=2):
        pass  # 5th call: two still fit after it
    with pytest.raises(Throttled):
        async with limiter.slot("Teams", [("thread:a", ((7, 1.0),))], max_wait=0.0, reserve=2):
            pass
    assert await _calls(limiter, clock, ((7, 1.0),), 2) == [clock.now] * 2  # the reserve is the messages'
