"""Burst drain (issue 7): how long the bridge takes to deliver a burst of visitor messages
into Teams, as a ratio to the floor Teams' published rate limits allow. Goal: ≤ 1.1.

    python -m bench.drain [--quick] [--scale N] [--scenario single|fanout|all] [--runs N] [--no-write] [--verbose]

Two scenarios, each on a fresh world (new sandboxes, new bridge, temporary DATA_DIR), all
in this one asyncio process on 127.0.0.1 ports:

- ``single``: one conversation started with its first message (shown in its card), then
  199 more visitor messages, written as fast as the neetoChat sandbox takes them; drained
  when the channel holds the card and the 199 posts;
- ``fanout``: 20 conversations started, each with a first message, then 9 more messages
  each, interleaved; drained when every channel holds its card and its 9 posts. It is
  short and varies from run to run: it runs 5 times and the median counts.

The limits are Teams' published ones in the Microsoft sandbox and in the bridge alike;
``--scale N`` divides every window's duration by N in both, for quick runs (the figures
then are not Teams'). Results are printed and written to docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import logging
import re
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from app import RUNTIME, create_app
from bench import _report
from sandbox.microsoft import DEFAULT_RATE_LIMITS, MicrosoftSandbox
from sandbox.neetochat import NeetoChatSandbox
from services.rate_limits import (
    GRAPH_CHANNEL_CREATE_LIMITS,
    TEAMS_TENANT_LIMITS,
    TEAMS_THREAD_LIMITS,
    RateLimiter,
    Throttled,
    Window,
)
from tests.harness import WS, Harness, bridge_env, free_port

NAME = "drain"
GOAL = 1.1  # the product's target: drain ≤ 1.1 × the floor
QUIET = 2.0  # after the drain, the bridge counts as settled once Teams heard nothing for this long
SETTLE_CAP = 120.0

log = logging.getLogger("bench.drain")


# ------------------------------------------------------------------------------ the floor


@dataclass(frozen=True)
class Op:
    """One Teams operation a burst needs: the limited keys it counts against
    (``"<kind>:<id>"``, kinds ``thread``, ``tenant``, ``create``) and the operations that
    must have happened before it."""

    name: str
    keys: tuple[str, ...]
    after: tuple[str, ...] = ()


# Hand check of floor_schedule on a tiny case. Limits: thread 2 / 1 s, tenant 3 / 1 s,
# channel creation 1 / 1 s. Two conversations A and B, two posts each (after their intro
# card); ties go in list order (A's operations first).
#   t=0: create A; intro A (thread A 1, tenant 1); notice A (General 1, tenant 2);
#        post A1 (thread A 2, tenant 3). Post A2 is blocked by thread A (2 in (-1, 0]) and
#        the tenant (3 in (-1, 0]); create B by the creation window (1 in (-1, 0]).
#   t=1: those windows are (0, 1], empty again: post A2 (tenant 1); create B; intro B
#        (thread B 1, tenant 2); notice B (General: A's notice at 0 is out; tenant 3).
#        Post B1 is blocked by the tenant (3 in (0, 1]).
#   t=2: post B1 (tenant 1), then post B2 (thread B: intro B at 1 is out, so 1; tenant 2).
# Floor = 2.0 s; TINY_TIMES below, replayed by self_check.
TINY_LIMITS: dict[str, tuple[Window, ...]] = {"thread": ((2, 1.0),), "tenant": ((3, 1.0),), "create": ((1, 1.0),)}
TINY_TIMES = {
    "create c0": 0.0, "intro c0": 0.0, "notice c0": 0.0, "post c0 #1": 0.0, "post c0 #2": 1.0,
    "create c1": 1.0, "intro c1": 1.0, "notice c1": 1.0, "post c1 #1": 2.0, "post c1 #2": 2.0,
}  # fmt: skip


def floor_schedule(ops: Sequence[Op], limits: Mapping[str, Sequence[Window]]) -> dict[str, float]:
    """The earliest time each operation can happen under the rate limits, greedily.

    ``limits`` gives the (count, seconds) windows of each key kind. Operations take no
    time. Repeatedly, of the operations whose predecessors are placed, the one that can go
    earliest is placed (ties: list order) at the first instant ``t`` not before its
    predecessors where, for every window (count, seconds) of every key it counts
    against, fewer than ``count`` placed operations of that key fall in (t − seconds, t].
    Placement times never decrease, so that check sees every operation that could matter.
    The floor of a burst is the largest of the returned times.
    """
    placed: dict[str, float] = {}
    times: dict[str, list[float]] = defaultdict(list)  # per key, ascending
    pending = list(ops)
    last = 0.0
    while pending:
        best: tuple[float, Op] | None = None
        for op in pending:
            if all(before in placed for before in op.after):
                start = max([last, *(placed[before] for before in op.after)])
                t = _earliest(op, start, times, limits)
                if best is None or t < best[0]:
                    best = (t, op)
        if best is None:
            raise ValueError(f"operations wait on unknown or circular predecessors: {[op.name for op in pending]}")
        last, op = best
        placed[op.name] = last
        for key in op.keys:
            times[key].append(last)
        pending.remove(op)
    return placed


def _earliest(op: Op, t: float, times: Mapping[str, list[float]], limits: Mapping[str, Sequence[Window]]) -> float:
    """First instant ≥ t at which ``op`` fits every window of its keys."""
    while True:
        later = t
        for key in op.keys:
            placed = times.get(key, [])
            for count, seconds in limits[key.partition(":")[0]]:
                # (t - seconds, t]; the epsilon keeps an operation exactly one window ago out.
                inside = placed[bisect.bisect_right(placed, t - seconds + 1e-9) :]
                if len(inside) >= count:
                    later = max(later, inside[len(inside) - count] + seconds)
        if later == t:
            return t
        t = later


def required_ops(conversations: int, messages: int) -> list[Op]:
    """What the bridge must do in Teams for a burst of ``conversations`` new conversations
    with ``messages`` visitor messages each (the first shown in the card): per
    conversation a channel creation, its intro card in the channel, the notification card
    in the General channel (after the creation: it links to the channel), and the other
    messages posted in order after the intro card. Card updates are not included."""
    ops: list[Op] = []
    for c in range(conversations):
        create = Op(f"create c{c}", ("create:team",))
        intro = Op(f"intro c{c}", (f"thread:c{c}", "tenant"), (create.name,))
        notice = Op(f"notice c{c}", ("thread:general", "tenant"), (create.name,))
        ops += [create, intro, notice]
        previous = intro.name
        for n in range(1, messages):
            post = Op(f"post c{c} #{n}", (f"thread:c{c}", "tenant"), (previous,))
            ops.append(post)
            previous = post.name
    return ops


def self_check() -> None:
    """The tiny hand-checked case above, replayed."""
    placed = floor_schedule(required_ops(2, 3), TINY_LIMITS)
    assert placed == TINY_TIMES, f"floor_schedule disagrees with the hand check: {placed}"


# ------------------------------------------------------------------------------ limits


def scaled(windows: Sequence[Window], scale: float) -> tuple[Window, ...]:
    return tuple((count, seconds / scale) for count, seconds in windows)


def env_windows(windows: Sequence[Window]) -> str:
    """The bridge's setting format: ``"7/1,8/2,60/30,1800/3600"``."""
    return ",".join(f"{count}/{seconds:g}" for count, seconds in windows)


@dataclass(frozen=True)
class Limits:
    """The limits of one run: the bridge's published defaults divided by ``scale``."""

    scale: float

    @property
    def thread(self) -> tuple[Window, ...]:
        return scaled(TEAMS_THREAD_LIMITS, self.scale)

    @property
    def tenant(self) -> tuple[Window, ...]:
        return scaled(TEAMS_TENANT_LIMITS, self.scale)

    @property
    def create(self) -> tuple[Window, ...]:
        return scaled(GRAPH_CHANNEL_CREATE_LIMITS, self.scale)

    def for_floor(self) -> dict[str, tuple[Window, ...]]:
        return {"thread": self.thread, "tenant": self.tenant, "create": self.create}

    def bridge_env(self) -> dict[str, str]:
        return {
            "TEAMS_THREAD_LIMITS": env_windows(self.thread),
            "TEAMS_TENANT_LIMITS": env_windows(self.tenant),
            "GRAPH_CHANNEL_CREATE_LIMITS": env_windows(self.create),
        }

    def apply_to_sandbox(self, ms: MicrosoftSandbox) -> None:
        ms.set_rate_limits(**{kind: scaled(windows, self.scale) for kind, windows in DEFAULT_RATE_LIMITS.items()})

    @staticmethod
    def mismatches() -> list[str]:
        """Where the bridge's published defaults and the sandbox's differ (should be none)."""
        pairs = [
            ("thread", TEAMS_THREAD_LIMITS),
            ("tenant", TEAMS_TENANT_LIMITS),
            ("channel_create", GRAPH_CHANNEL_CREATE_LIMITS),
        ]
        return [
            f"{kind}: bridge {list(ours)} vs sandbox {list(DEFAULT_RATE_LIMITS.get(kind, ()))}"
            for kind, ours in pairs
            if [(c, float(s)) for c, s in ours] != [(c, float(s)) for c, s in DEFAULT_RATE_LIMITS.get(kind, ())]
        ]


# ------------------------------------------------------------------------------ the world


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """``app`` on a free 127.0.0.1 port, as ``aiohttp_server`` does in the tests."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def fresh_world(limits: Limits) -> AsyncIterator[tuple[Harness, web.Application]]:
    """New sandboxes and a new bridge (embedded store in a temporary DATA_DIR), connected."""
    runners: list[web.AppRunner] = []
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as data_dir:
        try:
            neeto = NeetoChatSandbox()
            neeto_runner, neeto_url = await serve(neeto.app())
            runners.append(neeto_runner)
            ms = MicrosoftSandbox()
            limits.apply_to_sandbox(ms)
            ms_runner, ms_url = await serve(ms.app())
            runners.append(ms_runner)
            ms.set_base_url(ms_url)
            async with aiohttp.ClientSession() as http:
                h = Harness(neeto, neeto_url, ms, http)
                env = bridge_env(ms, Path(data_dir) / "data")
                env.update(limits.bridge_env())
                app = create_app(env=env)
                bridge_runner, bridge_url = await serve(app)
                runners.append(bridge_runner)
                h.set_bridge(bridge_url)
                await h.connect()
                yield h, app
                # The bridge stops first (its jobs may still be talking to the sandboxes).
                await runners.pop().cleanup()
        finally:
            for runner in reversed(runners):
                await runner.cleanup()


# ------------------------------------------------------------------------------ observing the bridge


def role(key: str, general_id: str) -> str:
    """A limited key, bridge's (``thread:<channel id>`` …) or the floor's, by what it is."""
    kind, _, ident = key.partition(":")
    if kind == "thread":
        return "General thread" if ident in (general_id, "general") else "conversation threads"
    if kind == "tenant":
        return "tenant"
    if kind in ("channel-create", "create"):
        return "channel creation"
    return key


class SlotObserver:
    """Wraps ``slot`` of the bridge's RateLimiter instance (in memory only) to record
    where the bridge's own shaping held calls back: waits inside ``max_wait``, by the key
    that was furthest from room at the time, and hand-backs to the job loop (``Throttled``),
    by the key it names; card refreshes (``max_wait=0``) separately."""

    THROTTLED_KEY = re.compile(r"shaped: (\S+) is at its limit")

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter
        self.original = limiter.slot
        self.waits: Counter[str] = Counter()
        self.waited: defaultdict[str, float] = defaultdict(float)
        self.handed_back: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()  # calls let through, per key
        limiter.slot = self.slot  # type: ignore[method-assign]

    def _fullest(self, keys: list[tuple[str, Any]]) -> str:
        """The key that would make this call wait longest right now (private API: best effort)."""
        try:
            now = self.limiter._clock()
            waits = [
                (self.limiter._wait_for(self.limiter._buckets[key], now), key)
                for key, windows in keys
                if windows and key in self.limiter._buckets
            ]
            return max(waits)[1] if waits else "?"
        except Exception:
            return "?"

    @contextlib.asynccontextmanager
    async def slot(self, service: str, keys: Any, *args: Any, **kwargs: Any) -> AsyncIterator[None]:
        keys = list(keys)
        max_wait = kwargs.get("max_wait", args[0] if args else None)
        what = "card refresh" if max_wait == 0 else "call"
        fullest = self._fullest(keys)
        start = time.monotonic()
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self.original(service, keys, *args, **kwargs))
            except Throttled as exc:
                found = self.THROTTLED_KEY.search(str(exc))
                self.handed_back[f"{what}|{found.group(1) if found else fullest}"] += 1
                raise
            waited = time.monotonic() - start
            if waited > 0.001:
                self.waits[f"{what}|{fullest}"] += 1
                self.waited[f"{what}|{fullest}"] += waited
            for key, windows in keys:
                if windows:
                    self.calls[key] += 1
            yield

    def by_role(self, general_id: str) -> dict[str, dict[str, float]]:
        """{role: {"waits", "waited", "handed back", "card refresh handed back"}}."""
        out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for label, n in self.waits.items():
            what, key = label.split("|", 1)
            prefix = "card refresh " if what == "card refresh" else ""
            out[role(key, general_id)][prefix + "waits"] += n
            out[role(key, general_id)][prefix + "waited"] += self.waited[label]
        for label, n in self.handed_back.items():
            what, key = label.split("|", 1)
            prefix = "card refresh " if what == "card refresh" else ""
            out[role(key, general_id)][prefix + "handed back"] += n
        return out

    def calls_by_role(self, general_id: str) -> dict[str, int]:
        """Calls let through so far per role; for conversation threads also the busiest one."""
        out: Counter[str] = Counter()
        for key, n in self.calls.items():
            out[role(key, general_id)] += n
        threads = [n for key, n in self.calls.items() if role(key, general_id) == "conversation threads"]
        out["busiest conversation thread"] = max(threads, default=0)
        return dict(out)


def is_create(r: dict[str, Any]) -> bool:
    """A channel creation Graph carried out."""
    ok = 200 <= (r["status"] or 0) < 300
    return ok and r["method"] == "POST" and r["path"].startswith("/v1.0/teams/") and r["path"].endswith("/channels")


def teams_calls(requests: list[dict[str, Any]]) -> Counter[str]:
    """The Microsoft sandbox's request log, by what was done (answered 2xx) or refused."""
    out: Counter[str] = Counter()
    for r in requests:
        path, method, status = r["path"], r["method"], r["status"] or 0
        if status == 429:
            out["429"] += 1
            continue
        if not 200 <= status < 300:
            out[f"answered {status}"] += 1
        elif is_create(r):
            out["channel creations"] += 1
        elif method == "POST" and path == "/connector/v3/conversations":
            out["posts"] += 1
        elif method == "PUT" and "/activities/" in path:
            out["card updates"] += 1
        elif method == "GET" and path.startswith("/v1.0/"):
            out["Graph reads"] += 1
        else:
            out["other"] += 1
    return out


class LogCollector(logging.Handler):
    """Counts the bridge's warnings and errors by message template."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname} {record.name}: {str(record.msg)[:90]}"] += 1


# ------------------------------------------------------------------------------ the scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    conversations: int
    messages: int  # per conversation, the first one shown in the card
    runs: int  # by default; each on a fresh world. b is short and varies: the median of 5


SCENARIOS = {
    "single": Scenario("single", "a. single thread: 1 conversation × 200 messages", 1, 200, runs=1),
    "fanout": Scenario("fanout", "b. 20 conversations × 10 messages, interleaved", 20, 10, runs=5),
}


@dataclass
class Result:
    scenario: Scenario
    floor: float
    floor_ops: Counter[str]  # role → operations the floor needs
    floor_at: dict[str, float]  # milestone → when the floor reaches it
    drain: float | None = None
    error: str | None = None
    rate_limited: int = 0  # 429s the sandbox's rate limits sent
    throttled: int = 0  # every 429 the sandbox answered (rate limits and injected)
    calls: Counter[str] = field(default_factory=Counter)  # Teams requests until drained
    trailing: Counter[str] = field(default_factory=Counter)  # after, until the bridge went quiet
    settle: float = 0.0
    made: dict[str, int] = field(default_factory=dict)  # role → calls the bridge made until drained
    shaping: dict[str, dict[str, float]] = field(default_factory=dict)
    warnings: Counter[str] = field(default_factory=Counter)
    bridge_at: dict[str, float] = field(default_factory=dict)  # milestone → when the bridge reached it

    @property
    def ratio(self) -> float | None:
        return None if self.drain is None else self.drain / self.floor

    @property
    def injected(self) -> int:
        return self.throttled - self.rate_limited


@dataclass
class Summary:
    """All runs of one scenario: the table shows the median drain and the range."""

    scenario: Scenario
    runs: list[Result]

    @property
    def floor(self) -> float:
        return self.runs[0].floor

    @property
    def drains(self) -> list[float]:
        return sorted(r.drain for r in self.runs if r.drain is not None)

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.runs if r.drain is None]

    @property
    def typical(self) -> Result:
        """A failed run if any, else the run with the (lower) median drain."""
        if self.failed:
            return self.failed[0]
        median = statistics.median_low(self.drains)
        return next(r for r in self.runs if r.drain == median)

    @property
    def rate_limited(self) -> int:
        return sum(r.rate_limited for r in self.runs)

    @property
    def injected(self) -> int:
        return sum(r.injected for r in self.runs)


def body(conversation: int, n: int) -> str:
    """Fixed width, so no message's text is part of another's."""
    return f"c{conversation:02d} m{n:03d}"


def write_burst(h: Harness, scenario: Scenario) -> list[dict[str, Any]]:
    """Every conversation started (with its first message), then the other messages,
    interleaved across conversations; synchronous, so as fast as the sandbox takes them."""
    conversations = [
        h.neeto.start_conversation(
            WS, visitor_name=f"Visitor {c:02d}", visitor_email=f"v{c:02d}@example.com", message=body(c, 0)
        )
        for c in range(scenario.conversations)
    ]
    for n in range(1, scenario.messages):
        for c, conversation in enumerate(conversations):
            h.neeto.visitor_writes(WS, conversation["id"], body(c, n))
    return conversations


def drained(h: Harness, conversations: list[dict[str, Any]], messages: int) -> bool:
    for conversation in conversations:
        channel = h.conversation_channel(conversation["number"])
        if channel is None or len(h.ms.posts(channel["id"])) < messages:
            return False
    return True


MILESTONES = {"create": "channels created", "intro": "intro cards", "notice": "notification cards", "post": "posts"}


def check_delivery(h: Harness, conversations: list[dict[str, Any]], messages: int) -> dict[str, float]:
    """Every message exactly once and in order in its own channel, after the card that
    shows the first; one notification card each in General. Returns when (sandbox clock)
    the last intro card, notification card and message post were made."""
    last: dict[str, float] = defaultdict(float)
    channels = [c for c in h.ms.channels(h.team_id) if c["id"] != h.team_id]
    assert len(channels) == len(conversations), f"{len(channels)} channels for {len(conversations)} conversations"
    for c, conversation in enumerate(conversations):
        channel = h.conversation_channel(conversation["number"])
        posts = h.ms.posts(channel["id"])
        card, *rest = posts
        assert card["attachments"] and body(c, 0) in json.dumps(card["attachments"]), f"#{c}: no card first"
        got = [p["text"].split("<br>")[1] for p in rest if p["text"]]
        want = [body(c, n) for n in range(1, messages)]
        if got != want:
            missing = sorted(set(want) - set(got))
            doubled = sorted(b for b, k in Counter(got).items() if k > 1)
            raise AssertionError(
                f"conversation {c}: {len(got)} posts, missing {missing[:5]}, doubled {doubled[:5]}, "
                f"in order: {got == sorted(got)}"
            )
        assert all(not p["attachments"] and not p["replies"] for p in rest), f"#{c}: unexpected cards or replies"
        last["intro cards"] = max(last["intro cards"], card["created"])
        last["posts"] = max([last["posts"], *(p["created"] for p in rest)])
    notices = [p for p in h.general_posts() if p["attachments"]]
    for c in range(len(conversations)):
        shown = [p for p in notices if body(c, 0) in json.dumps(p["attachments"])]
        assert len(shown) == 1, f"conversation {c}: {len(shown)} notification cards"
        last["notification cards"] = max(last["notification cards"], shown[0]["created"])
    return last


def floor_milestones(placed: Mapping[str, float]) -> dict[str, float]:
    """When the floor's last channel creation, intro card, notification card and post happen."""
    out: dict[str, float] = defaultdict(float)
    for name, t in placed.items():
        milestone = MILESTONES[name.split(" ")[0]]
        out[milestone] = max(out[milestone], t)
    return out


async def run_scenario(scenario: Scenario, limits: Limits) -> Result:
    ops = required_ops(scenario.conversations, scenario.messages)
    placed = floor_schedule(ops, limits.for_floor())
    result = Result(scenario, max(placed.values()), Counter(), floor_milestones(placed))
    collector = LogCollector()
    logging.getLogger().addHandler(collector)
    try:
        async with fresh_world(limits) as (h, app):
            for op in ops:
                for key in op.keys:
                    result.floor_ops[role(key, h.team_id)] += 1
            limiter = app[RUNTIME].ctx.limiter
            observer = SlotObserver(limiter)
            first_request = len(h.ms.requests)
            rate_limited, throttled = len(h.ms.rate_limited), h.ms.throttled_count
            start = time.time()  # the sandboxes' clock
            conversations = write_burst(h, scenario)
            timeout = 60 + 30 * result.floor
            try:
                await poll_until(lambda: drained(h, conversations, scenario.messages), timeout, scenario.name)
                last = check_delivery(h, conversations, scenario.messages)
            except AssertionError as exc:
                result.error = str(exc)
            result.made = observer.calls_by_role(h.team_id)
            drained_at = len(h.ms.requests)
            creates = [r["time"] for r in h.ms.requests[first_request:drained_at] if is_create(r)]
            if not result.error:
                last["channels created"] = max(creates)
                result.bridge_at = {milestone: t - start for milestone, t in last.items()}
                result.drain = max(result.bridge_at.values())
            result.calls = teams_calls(h.ms.requests[first_request:drained_at])
            settle_start = time.monotonic()
            await settle(h)
            result.settle = time.monotonic() - settle_start
            result.trailing = teams_calls(h.ms.requests[drained_at:])
            result.rate_limited = len(h.ms.rate_limited) - rate_limited
            result.throttled = h.ms.throttled_count - throttled
            result.shaping = observer.by_role(h.team_id)
    except Exception as exc:  # the world itself failed: report it, do not lose the other scenario
        log.exception("scenario %s failed", scenario.name)
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        logging.getLogger().removeHandler(collector)
        result.warnings = collector.counts
    return result


async def poll_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Like tests.harness.wait_for, but looking only every 50 ms: the bridge shares this
    event loop, and the drain time comes from the posts' own creation times anyway."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not drained within {timeout:.0f} s")
        await asyncio.sleep(0.05)


async def settle(h: Harness) -> None:
    """Let trailing work (card refreshes) finish: until Teams heard nothing for QUIET s."""
    seen, quiet_since, deadline = len(h.ms.requests), time.monotonic(), time.monotonic() + SETTLE_CAP
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        if len(h.ms.requests) != seen:
            seen, quiet_since = len(h.ms.requests), time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET:
            return


# ------------------------------------------------------------------------------ reporting

HEADER = [
    "scenario",
    "runs",
    "drain (s): median (min–max)",
    "floor (s)",
    "ratio: median (min–max)",
    "429s sent by the limits",
    "injected 429s",
]


def spread(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median_low(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def row(s: Summary) -> list[str]:
    counts = [str(s.rate_limited), str(s.injected)]
    if s.failed:
        failed = f"FAILED ({len(s.failed)} of {len(s.runs)})"
        return [s.scenario.title, str(len(s.runs)), failed, f"{s.floor:.2f}", "-", *counts]
    ratios = [d / s.floor for d in s.drains]
    mark = "" if statistics.median_low(ratios) <= GOAL else " ✗"
    return [
        s.scenario.title,
        str(len(s.runs)),
        spread(s.drains),
        f"{s.floor:.2f}",
        spread(ratios) + mark,
        *counts,
    ]


def calls_text(c: Counter[str]) -> str:
    order = ["channel creations", "posts", "card updates", "Graph reads", "other", "429"]
    parts = [f"{k if k != '429' else 'answered 429'} {c[k]}" for k in order if c.get(k)]
    parts += [f"{k} {n}" for k, n in c.items() if k not in order]
    return ", ".join(parts) or "none"


def milestones_text(r: Result) -> str:
    names = ["channels created", "notification cards", "intro cards", "posts"]
    return "; ".join(
        f"{name} {r.bridge_at[name]:.2f} / {r.floor_at.get(name, 0.0):.2f}" for name in names if name in r.bridge_at
    )


def where_the_time_went(summary: Summary) -> str:
    """Per limited key, in the typical run: what the floor needs, what the bridge did until
    drained, and where its own shaping held calls back."""
    r = summary.typical
    which = f" (the median run of {len(summary.runs)})" if len(summary.runs) > 1 and not r.error else ""
    roles = ["conversation threads", "General thread", "tenant", "channel creation"]
    rows = []
    for name in roles:
        s = r.shaping.get(name, {})
        made = r.made.get(name, 0)
        if name == "conversation threads" and r.scenario.conversations > 1:
            made_text = f"{made} (busiest {r.made.get('busiest conversation thread', 0)})"
        else:
            made_text = str(made)
        rows.append(
            [
                name,
                str(r.floor_ops.get(name, 0)),
                made_text,
                f"{int(s.get('waits', 0))} / {s.get('waited', 0.0):.1f} s",
                str(int(s.get("handed back", 0))),
                f"{int(s.get('card refresh handed back', 0))}",
            ]
        )
    header = [
        "limited key",
        "operations the floor needs",
        "calls the bridge made until drained",
        "calls that waited / total wait",
        "calls handed back to the job loop (Throttled)",
        "card refreshes put off (Throttled)",
    ]
    lines = [
        f"**{r.scenario.title}**{which}. Calls Teams carried out until drained: {calls_text(r.calls)}; "
        f"in the {max(0.0, r.settle - QUIET):.1f} s after (until quiet): {calls_text(r.trailing)}.",
        "",
        f"Last of each kind, in seconds from the first write (bridge / floor): {milestones_text(r)}.",
        "",
        _report.markdown_table(header, rows),
    ]
    if r.warnings:
        lines += ["", "Bridge warnings and errors: " + "; ".join(f"{n} × `{m}`" for m, n in r.warnings.most_common(5))]
    if r.error:
        lines += ["", f"**Failed**: {r.error}"]
    return "\n".join(lines)


PLOT = _report.ROOT / "docs" / "performance" / "drain.png"


def plot(results: list[Summary]) -> Path | None:
    """Drain / floor per scenario (median, with the runs' range), against the goal."""
    from bench._load import plot_bars

    done = [s for s in results if s.drains]
    return plot_bars(
        PLOT,
        "Burst drain: time to deliver a burst, as a ratio to the floor Teams' limits allow",
        [s.scenario.title.split(":")[0].replace(" × ", "×\n") for s in done],
        [[d / s.floor for d in s.drains] for s in done],
        "drain / floor",
        goal=(GOAL, f"goal ≤ {GOAL} × floor"),
        references=0,
        fmt="{:.2f}",
    )


def section(results: list[Summary], limits: Limits) -> str:
    scale = (
        "1 (Teams' published limits, real time)"
        if limits.scale == 1
        else f"{limits.scale:g} (every window's duration divided by {limits.scale:g}: not Teams' figures)"
    )
    thread, tenant, create = (env_windows(w) for w in (limits.thread, limits.tenant, limits.create))
    parts = [
        "## Burst drain (issue 7)",
        "",
        f"Goal: a burst drains in at most {GOAL} × the floor Teams' rate limits allow. "
        "Run with `python -m bench.drain` (about 3 minutes on 2 cores; `--scale 10` for a quick look).",
        "",
        f"- Measured: {_report.today()}",
        f"- Machine: {_report.machine()}",
        f"- Scale: {scale}",
        f"- Limits (count/seconds), in the Microsoft sandbox and in the bridge: thread {thread}; "
        f"tenant {tenant}; channel creation per team {create}",
        "",
        _report.markdown_table(HEADER, [row(r) for r in results]),
        "",
        *([f"![burst drain]({PLOT.relative_to(_report.ROOT / 'docs').as_posix()})", ""] if plot(results) else []),
        "**Method.** Each scenario runs on a fresh world: the neetoChat and Microsoft 365 sandboxes and the "
        "bridge (`create_app`, embedded store in a temporary `DATA_DIR`) in one asyncio process on 127.0.0.1 "
        "ports, with the workspace connected as an admin would. The visitor messages are written into the "
        "neetoChat sandbox as fast as it takes them (a: one conversation started with its first message, then "
        "199 more; b: 20 conversations started, then 9 more messages each, interleaved), and the drain time runs "
        "from the first write until the last post the burst needs is made in Teams, after checking that every "
        "message is in its own channel exactly once and in order, after the card showing the first one, with "
        "one notification card per conversation in General. The sandbox enforces the limits as sliding windows "
        "and counts the 429s it had to send; the bridge shapes its calls to the same limits. The floor is "
        "computed by simulation (`floor_schedule` in `bench/drain.py`): each operation the burst needs (channel "
        "creation, intro card, notification card, message posts) is placed greedily at the earliest instant "
        "every window of every key it counts against allows, after its predecessors, and takes no time; card "
        "*updates* (the notification card's last reply time) are not needed for delivery and are left out of "
        "the floor, so whatever they cost counts against the bridge. Ratio = drain / floor; b is short and "
        "varies from run to run, so it is run several times, each on a fresh world, and the table gives the "
        "median and the range.",
        "",
        "### Where the time went",
        "",
        "Per limited key: operations the floor schedules; calls the bridge made until the burst was drained "
        "(as its rate limiter let them through; card updates included); calls its own shaping made wait in line "
        "(attributed to the key furthest from room at the time; waits of concurrent calls add up); calls it "
        "handed back to the job loop to retry later because the wait was longer than the limiter's `max_wait`; "
        "and low-priority card refreshes put off because there was no spare room.",
    ]
    for summary in results:
        parts += ["", where_the_time_went(summary)]
    return "\n".join(parts)


def print_results(results: list[Summary]) -> None:
    print()
    print(_report.text_table(HEADER, [row(s) for s in results]))
    for s in results:
        r = s.typical
        print(
            f"\n{r.scenario.title}"
            + (f" (median run; drains {[round(d, 2) for d in s.drains]})" if len(s.runs) > 1 else "")
        )
        print(f"  Teams until drained: {calls_text(r.calls)}")
        print(f"  after the drain ({r.settle:.1f} s): {calls_text(r.trailing)}")
        print(f"  last of each kind, s (bridge / floor): {milestones_text(r)}")
        print(f"  calls per key until drained (bridge): {r.made}")
        print(f"  operations the floor needs per key: {dict(r.floor_ops)}")
        for name, s in r.shaping.items():
            print(f"  shaping on {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in s.items()))
        for message, n in r.warnings.most_common(5):
            print(f"  {n} × {message}")
        if r.error:
            print(f"  FAILED: {r.error}")


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, help="divide every limit's window by N (default 1; --quick 10)")
    parser.add_argument("--quick", action="store_true", help="windows 10x shorter, one run per scenario")
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--runs", type=int, help="runs per scenario (default: a 1, b 5), each on a fresh world")
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/performance.md")
    parser.add_argument("--verbose", action="store_true", help="the bridge's log (INFO) on stderr")
    args, _unknown = parser.parse_known_args(argv)  # python -m bench passes every benchmark's options
    args.scale = args.scale or (10.0 if args.quick else 1.0)
    if args.quick and args.runs is None:
        args.runs = 1
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


async def run(args: argparse.Namespace) -> list[Summary]:
    limits = Limits(args.scale)
    for mismatch in Limits.mismatches():
        print(f"warning: published limits differ: {mismatch}", file=sys.stderr)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    summaries = []
    for name in names:
        scenario = SCENARIOS[name]
        summary = Summary(scenario, [])
        for i in range(args.runs or scenario.runs):
            print(f"{scenario.title} (scale {args.scale:g}), run {i + 1} …", flush=True)
            result = await run_scenario(scenario, limits)
            drain = "FAILED" if result.drain is None else f"{result.drain:.2f} s"
            print(f"  drain {drain}, floor {result.floor:.2f} s", flush=True)
            summary.runs.append(result)
        summaries.append(summary)
    return summaries


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    self_check()
    root = logging.getLogger()
    root.setLevel(logging.INFO if args.verbose else logging.WARNING)
    if args.verbose:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root.addHandler(handler)
    else:
        root.addHandler(logging.NullHandler())  # the collector counts; nothing on stderr
    for noisy in ("aiohttp.access", "azure", "httpx", "msal"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    results = asyncio.run(run(args))
    print_results(results)
    if not args.no_write:
        path = _report.write_section(NAME, section(results, Limits(args.scale)))
        print(f"\nwrote {path.relative_to(_report.ROOT)}")
    return 1 if any(s.failed for s in results) else 0


if __name__ == "__main__":
    sys.exit(main())
