"""Shaping outgoing calls to Teams' published limits, so Teams never has to say 429.

Microsoft documents, for a bot: per thread 7 operations / 1 s, 8 / 2 s, 60 / 30 s and
1,800 / hour; per app per tenant 50 requests / s; and Graph answers channel creation
faster than about 4 / s per team with 429 or 502. Each limit is a *window*: at most
``count`` calls in any ``seconds``-long interval.

Each key (a thread, a tenant, a team) is a token bucket whose spent tokens come back
exactly one window after the call that spent them *finished*: a sliding-window log. A
classic refilling bucket would allow a burst of ``count`` and then ``count`` more while it
refills, up to twice the limit inside one window, which a strict service answers with
429. Counting a call from the moment it starts until a window after it ends keeps every
window the service can observe within the limit, however long the call takes on the way.

The buckets are in memory and shared by all the delivery workers of this process. With
several bridge instances, each takes an equal share of every limit (``share``): the live
instance count comes from the store's instance heartbeats (``services/jobs.py``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from services.errors import RemoteError

Window = tuple[int, float]  # (count, seconds)

TEAMS_THREAD_LIMITS: tuple[Window, ...] = ((7, 1.0), (8, 2.0), (60, 30.0), (1800, 3600.0))
TEAMS_TENANT_LIMITS: tuple[Window, ...] = ((50, 1.0),)
GRAPH_CHANNEL_CREATE_LIMITS: tuple[Window, ...] = ((4, 1.0),)


class Throttled(RemoteError):
    """Our own shaping says the call may not go out for a while: the job is put back for
    that long instead of holding a worker (no attempt is counted, nothing was sent)."""

    def __init__(self, service: str, key: str, wait: float) -> None:
        super().__init__(service, f"shaped: {key} is at its limit for {wait:.1f}s more", status=429, retry_after=wait)
        self.shaped = True


@dataclass
class _Bucket:
    windows: tuple[Window, ...]
    ended: list[float] = field(default_factory=list)  # end times of finished calls, ascending
    in_flight: int = 0

    def prune(self, now: float) -> None:
        """Forget calls that left even the longest window."""
        horizon = now - max(seconds for _, seconds in self.windows)
        drop = bisect.bisect_right(self.ended, horizon)
        if drop:
            del self.ended[:drop]


def parse_windows(text: str) -> tuple[Window, ...]:
    """``"7/1,8/2,60/30"`` → ((7, 1.0), (8, 2.0), (60, 30.0)); how operators override a
    limit (e.g. when Microsoft changes one); an empty string disables the limit."""
    windows = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        count, _, seconds = part.partition("/")
        try:
            window = (int(count), float(seconds))
        except ValueError:
            raise ValueError(f"rate limit {part!r} is not <count>/<seconds>") from None
        if window[0] < 1 or window[1] <= 0:
            raise ValueError(f"rate limit {part!r} must have a positive count and duration")
        windows.append(window)
    return tuple(windows)


class RateLimiter:
    """Windows per key; ``slot(keys)`` waits until every key has room, then holds one
    token of each for the duration of the call."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_wait: float = 5.0) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._changed = asyncio.Condition()
        self.max_wait = max_wait  # longer waits are handed back to the job loop (Throttled)
        self.share = 1  # live bridge instances sharing the limits
        self.waits = 0  # times a call had to wait: the shaping doing its job (metrics)
        self._closing = False

    async def close(self) -> None:
        """Shutting down: nobody waits for room any more (their jobs are put back)."""
        self._closing = True
        async with self._changed:
            self._changed.notify_all()

    def _bucket(self, key: str, windows: tuple[Window, ...]) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(windows)
        bucket.windows = windows  # a changed setting applies from the next call
        return bucket

    def _wait_for(self, bucket: _Bucket, now: float, reserve: int = 0) -> float:
        """Seconds until one more call fits every window of ``bucket`` with ``reserve``
        tokens to spare: 0 means now, inf means not before a call in flight ends."""
        bucket.prune(now)
        wait = 0.0
        for count, seconds in bucket.windows:
            allowed = max(1, max(1, count // self.share) - reserve)
            first = bisect.bisect_right(bucket.ended, now - seconds)
            over = len(bucket.ended) - first + bucket.in_flight - allowed
            if over < 0:
                continue
            if bucket.in_flight >= allowed:
                return math.inf
            # Room comes when the (over + 1) oldest calls in this window have left it.
            wait = max(wait, bucket.ended[first + over] + seconds - now)
        return wait

    @contextlib.asynccontextmanager
    async def slot(
        self,
        service: str,
        keys: Iterable[tuple[str, tuple[Window, ...]]],
        max_wait: float | None = None,
        reserve: int = 0,
    ) -> AsyncIterator[None]:
        """Hold one token of every key for the call made inside the block.

        Waits up to ``max_wait`` (default: the limiter's) for room; raises ``Throttled``
        when the wait would be longer, so a job does not sit on a worker for minutes (the
        hourly window). Work that should only use spare room passes ``max_wait=0`` and a
        ``reserve``: it goes only while that many more calls would still fit."""
        wanted = [(key, windows) for key, windows in keys if windows]
        buckets = [self._bucket(key, windows) for key, windows in wanted]
        deadline = self._clock() + (self.max_wait if max_wait is None else max_wait)
        async with self._changed:
            while True:
                now = self._clock()
                wait, key = max(
                    (
                        (self._wait_for(bucket, now, reserve), key)
                        for bucket, (key, _) in zip(buckets, wanted, strict=True)
                    ),
                    default=(0.0, ""),
                )
                if wait <= 0:
                    break
                if self._closing or now >= deadline or (wait != math.inf and now + wait > deadline):
                    raise Throttled(service, key, 1.0 if wait == math.inf else wait)
                self.waits += 1
                # Woken early when a call ends (its token may be the one we wait for).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(wait, deadline - now))
            for bucket in buckets:
                bucket.in_flight += 1
        try:
            yield
        finally:
            end = self._clock()
            async with self._changed:
                for bucket in buckets:
                    bucket.in_flight -= 1
                    bucket.ended.append(end)
                self._changed.notify_all()
