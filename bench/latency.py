"""Added latency (issue 3): from a signed neetoChat webhook sent to the bridge to the bot's
post recorded by Teams, below the rate limits. Goal: p50 < 10 ms, p99 < 50 ms.

    python -m bench.latency [--quick] [--mode inprocess|process|both] [--conversations N]
                            [--events N] [--interval S] [--profile] [--no-write] [--verbose]

A fresh world per mode: the neetoChat and Microsoft 365 sandboxes in this process on
127.0.0.1 ports, the bridge on the embedded store in a temporary ``DATA_DIR``, either
in-process (``create_app``, sharing this event loop: the breakdown below comes from
timestamps taken inside it) or as ``python app.py`` (a process of its own, as deployed).

Conversations are started and their channels created with webhook delivery on; then
delivery is turned off (``set_webhook_url(ws, None)``), visitor messages are written in
the neetoChat sandbox, and their ``message.created`` events are sent by this benchmark,
signed as neetoChat signs them, one every ``--interval`` seconds per conversation, the
conversations evenly staggered: below every Teams limit, so no shaping wait is included
(checked: the bridge's limiter is observed and the sandbox's 429s counted). Added latency
= the post's creation time in the Microsoft sandbox − the moment the request was sent.
For reference, bare POSTs to the sandbox's connector (one Teams call, no bridge) are
interleaved at the same pace from the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import cProfile
import io
import json
import logging
import math
import os
import pstats
import re
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench import _plot, _report
from sandbox import teams_fixtures
from sandbox.microsoft import Channel, MicrosoftSandbox
from sandbox.neetochat import NeetoChatSandbox
from tests.harness import WS, BridgeProcess, Harness, bridge_env, free_port

NAME = "latency"
GOAL_P50_MS = 10.0
GOAL_P99_MS = 50.0
PLOT = _report.ROOT / "docs" / "performance" / "latency.png"

log = logging.getLogger("bench.latency")


# ------------------------------------------------------------------------------ statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


# ------------------------------------------------------------------------------ the world


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """``app`` on a free 127.0.0.1 port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@dataclass
class World:
    h: Harness
    http: aiohttp.ClientSession
    data_dir: Path
    app: web.Application | None = None  # the in-process bridge
    process: BridgeProcess | None = None  # the ``python app.py`` bridge
    connector_in: dict[str, float] = field(default_factory=dict)  # post id → when the sandbox handler began
    neeto_api_calls: Counter[str] = field(default_factory=Counter)  # the bridge's calls to neetoChat's API
    runners: list[web.AppRunner] = field(default_factory=list)
    bridge_runner: web.AppRunner | None = None


@contextlib.asynccontextmanager
async def sandboxes(prefix: str) -> AsyncIterator[World]:
    """The two sandboxes served on local ports (the Microsoft one with Teams' published
    rate limits), a Harness on them and a temporary DATA_DIR; no bridge yet."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        runners: list[web.AppRunner] = []
        try:
            neeto = NeetoChatSandbox()
            neeto_app = neeto.app()
            calls: Counter[str] = Counter()

            @web.middleware
            async def count_api(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
                if "/api/" in request.path:  # the bridge's calls; control routes are ours
                    calls[f"{request.method} {re.sub(r'/[a-z]+_[A-Za-z0-9]+', '/{id}', request.path)}"] += 1
                return await handler(request)

            neeto_app.middlewares.append(count_api)
            neeto_runner, neeto_url = await serve(neeto_app)
            runners.append(neeto_runner)
            ms_ = MicrosoftSandbox()
            connector_in: dict[str, float] = {}
            original = ms_._create_conversation

            async def create_conversation(request: web.Request) -> web.Response:
                began = time.time()
                response = await original(request)
                with contextlib.suppress(Exception):
                    connector_in[json.loads(response.body)["activityId"]] = began
                return response

            ms_._create_conversation = create_conversation  # type: ignore[method-assign]
            ms_runner, ms_url = await serve(ms_.app())
            runners.append(ms_runner)
            ms_.set_base_url(ms_url)
            async with aiohttp.ClientSession() as http:
                h = Harness(neeto, neeto_url, ms_, http)
                world = World(h, http, Path(tmp) / "data", connector_in=connector_in, neeto_api_calls=calls)
                world.runners = runners
                try:
                    yield world
                finally:
                    await stop_bridge(world)
        finally:
            for runner in reversed(runners):
                await runner.cleanup()


async def start_bridge_inprocess(world: World, env_extra: dict[str, str] | None = None) -> web.Application:
    from app import create_app  # noqa: PLC0415 - the product's app factory, imported when used

    env = bridge_env(world.h.ms, world.data_dir)
    env.update(env_extra or {})
    app = create_app(env=env)
    runner, url = await serve(app)
    world.bridge_runner, world.app = runner, app
    world.h.set_bridge(url)
    return app


async def start_bridge_process(
    world: World, env_extra: dict[str, str] | None = None, log_name: str = "bridge.log"
) -> BridgeProcess:
    port = free_port()
    env = bridge_env(world.h.ms, world.data_dir, port)
    env.update(env_extra or {})
    world.data_dir.mkdir(parents=True, exist_ok=True)
    process = BridgeProcess(env, world.data_dir.parent / log_name)
    await process.start(world.http)
    world.process = process
    world.h.set_bridge(process.url)
    return process


async def stop_bridge(world: World) -> None:
    if world.bridge_runner is not None:
        runner, world.bridge_runner, world.app = world.bridge_runner, None, None
        await runner.cleanup()
    if world.process is not None:
        process, world.process = world.process, None
        await process.terminate()


async def poll_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(every)


async def quiet(h: Harness, seconds: float = 1.0, cap: float = 60.0) -> None:
    """Until Teams heard nothing from the bridge for ``seconds``."""
    seen, since, deadline = len(h.ms.requests), time.monotonic(), time.monotonic() + cap
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if len(h.ms.requests) != seen:
            seen, since = len(h.ms.requests), time.monotonic()
        elif time.monotonic() - since >= seconds:
            return


async def open_conversations(h: Harness, count: int, tag: str) -> list[dict[str, Any]]:
    """``count`` conversations started with a first message while webhooks are delivered,
    until each has its channel with its card and the bridge has gone quiet; then webhook
    delivery is turned off, so the benchmark sends the events itself."""
    conversations = [
        h.neeto.start_conversation(
            WS, visitor_name=f"Visitor {tag}{c:03d}", visitor_email=f"v{tag}{c:03d}@example.com", message=f"hello {c}"
        )
        for c in range(count)
    ]

    def ready() -> bool:
        for conversation in conversations:
            channel = h.conversation_channel(conversation["number"])
            if channel is None or not h.ms.posts(channel["id"]):
                return False
        return True

    await poll_until(ready, 60 + count, f"{count} conversation channels")
    await h.neeto.drain_webhooks()
    await quiet(h)
    h.neeto.set_webhook_url(WS, None)
    for conversation in conversations:
        conversation["channel_id"] = h.conversation_channel(conversation["number"])["id"]
    return conversations


def reference_channel(h: Harness) -> str:
    """A channel of the team for the bare connector POSTs, made directly in the sandbox
    (no Graph call, so the bridge hears nothing of it)."""
    team = h.ms.team(h.team_id)
    channel = Channel(
        id=teams_fixtures.new_thread_id(), name="latency reference", description=None, created=time.time()
    )
    team.channels[channel.id] = channel
    return channel.id


def write_messages(h: Harness, conversations: list[dict[str, Any]], per_conversation: int, tag: str) -> list[Send]:
    """Visitor messages written in the neetoChat sandbox (delivery is off); their events,
    one ``Send`` each, in conversation-interleaved order."""
    sends: list[Send] = []
    wanted: dict[str, Send] = {}
    for n in range(per_conversation):
        for c, conversation in enumerate(conversations):
            body = f"{tag} c{c:03d} m{n:04d}"
            message = h.neeto.visitor_writes(WS, conversation["id"], body)
            send = Send(c, body, conversation["channel_id"])
            wanted[message["id"]] = send
            sends.append(send)
    for event in h.neeto.events(WS):
        message = event["data"].get("message") or {}
        if event["event"] == "message.created" and message.get("id") in wanted:
            wanted[message["id"]].event = event
    missing = [s.body for s in sends if s.event is None]
    assert not missing, f"no event for {missing[:3]}"
    return sends


@dataclass
class Send:
    conversation: int  # index; -1 for a reference POST
    body: str
    channel_id: str
    event: dict[str, Any] | None = None
    sent: float = math.nan  # time.time() right before the request
    acked: float = math.nan
    status: int | None = None
    posted: float = math.nan  # the post's creation time in the Microsoft sandbox
    post_id: str | None = None

    @property
    def latency(self) -> float:
        return self.posted - self.sent

    @property
    def ack(self) -> float:
        return self.acked - self.sent


async def send_event(world: World, send: Send) -> None:
    assert send.event is not None
    body, headers = world.h.signed_webhook(send.event)
    url = world.h.webhook_url
    send.sent = time.time()
    async with world.http.post(url, data=body, headers=headers) as resp:
        await resp.read()
        send.acked = time.time()
        send.status = resp.status


async def send_reference(world: World, send: Send) -> None:
    """One bare connector call: a new root post in the reference channel, as the bridge
    makes it (same route, same shape), with no bridge in between."""
    payload = {
        "isGroup": True,
        "channelData": {"channel": {"id": send.channel_id}, "tenant": {"id": world.h.ms.tenant_id}},
        "activity": {"type": "message", "text": send.body, "textFormat": "xml"},
    }
    send.sent = time.time()
    async with world.http.post(f"{world.h.ms.service_url}v3/conversations", json=payload) as resp:
        answer = await resp.json()
        send.acked = time.time()
        send.status = resp.status
        send.post_id = answer.get("activityId")


def schedule(sends: list[Send], conversations: int, interval: float) -> list[tuple[float, Send]]:
    """When to send each: one every ``interval`` per conversation, conversations staggered
    evenly (``sends`` is conversation-interleaved; references are one more "conversation")."""
    out = []
    lanes = conversations + 1
    per_lane: Counter[int] = Counter()
    for send in sends:
        lane = conversations if send.conversation < 0 else send.conversation
        offset = per_lane[lane] * interval + lane * interval / lanes
        per_lane[lane] += 1
        out.append((offset, send))
    return sorted(out, key=lambda item: item[0])


async def play(world: World, timed: list[tuple[float, Send]]) -> float:
    """Send everything on schedule (each request in its own task, so a slow answer never
    delays the next send); returns the start time."""
    tasks = []
    start = time.monotonic() + 0.05
    for offset, send in timed:
        delay = start + offset - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sender = send_reference if send.conversation < 0 else send_event
        tasks.append(asyncio.create_task(sender(world, send)))
    await asyncio.gather(*tasks)
    return start


def collect_posts(world: World, sends: list[Send]) -> bool:
    """Fill in each send's post (found by its unique body); True when all are posted."""
    by_channel: dict[str, list[Send]] = defaultdict(list)
    for send in sends:
        if math.isnan(send.posted):
            by_channel[send.channel_id].append(send)
    for channel_id, waiting in by_channel.items():
        posts = {}
        for post in world.h.ms.posts(channel_id):
            for part in post["text"].split("<br>"):
                posts[part] = post
        for send in waiting:
            post = posts.get(send.body)
            if post is not None:
                send.posted, send.post_id = post["created"], post["id"]
    return all(not math.isnan(s.posted) for s in sends)


# ------------------------------------------------------------------------------ inside the bridge


class Probe:
    """Timestamps inside the in-process bridge, per webhook delivery id, taken by thin
    wrappers on instance attributes (the product code is not changed):

    handler_in / handler_out  WebhookReceiver.handle
    enqueued                  Store.enqueue returned
    claimed                   Store.claim_jobs returned the job
    job_start                 JobRunner._run began (its task got the loop)
    post_call / post_return   TeamsPoster.post_to_channel called / returned
    finished                  Store.finish_job returned

    plus the time and count of every store call, by where it was made (webhook or job),
    and the bridge's rate limiter: calls that had to wait for room, and hand-backs."""

    def __init__(self, app: web.Application) -> None:
        from app import RUNTIME  # noqa: PLC0415
        from services.fencing import current_lease  # noqa: PLC0415

        self.current_lease = current_lease
        self.webhook: contextvars.ContextVar[str | None] = contextvars.ContextVar("bench_webhook", default=None)
        rt = app[RUNTIME]
        self.times: dict[str, dict[str, float]] = defaultdict(dict)  # delivery id → point → time
        self.seq_to_delivery: dict[int, str] = {}
        self.store_calls: dict[str, Counter[str]] = defaultdict(Counter)  # delivery → op → count
        self.store_time: dict[str, float] = defaultdict(float)  # delivery → seconds in store calls (job)
        self.webhook_store_time: dict[str, float] = defaultdict(float)
        self.op_times: dict[str, list[float]] = defaultdict(list)
        self.limiter = rt.ctx.limiter
        self._waits_before = getattr(self.limiter, "waits", 0)
        self.handed_back = 0
        self.background_put_off = 0
        self._wrap_receiver(rt.receiver)
        self._wrap_store(rt.ctx.store)
        self._wrap_runner(rt.runner)
        self._wrap_poster(rt.ctx.poster)
        self._wrap_limiter(rt.ctx.limiter)
        self.retry_policy: dict[str, list[tuple[float, float]]] = defaultdict(list)  # delivery → (began, ended)
        self._unpatch = self._patch_retry_policy()

    def close(self) -> None:
        self._unpatch()

    def reset_counts(self) -> None:
        self._waits_before = getattr(self.limiter, "waits", 0)
        self.handed_back = self.background_put_off = 0

    @property
    def shaping_waits(self) -> int:
        """Times the bridge's limiter made a call wait for room (its own counter)."""
        return getattr(self.limiter, "waits", 0) - self._waits_before

    def _patch_retry_policy(self) -> Callable[[], None]:
        """Time msrest's ``ClientRetryPolicy()`` (built with every connector client botbuilder
        makes, i.e. per Teams call): a process-wide patch, undone by ``close``."""
        try:
            from msrest.universal_http.requests import ClientRetryPolicy  # noqa: PLC0415
        except ImportError:
            return lambda: None
        original = ClientRetryPolicy.__init__

        def init(policy: Any, *args: Any, **kwargs: Any) -> None:
            began = time.time()
            original(policy, *args, **kwargs)
            delivery = self._delivery()
            if delivery:
                self.retry_policy[delivery].append((began, time.time()))

        ClientRetryPolicy.__init__ = init

        def undo() -> None:
            ClientRetryPolicy.__init__ = original

        return undo

    def _delivery(self) -> str | None:
        lease = self.current_lease.get()
        return None if lease is None else self.seq_to_delivery.get(lease[0])

    def _wrap_receiver(self, receiver: Any) -> None:
        original = receiver.handle

        async def handle(request: web.Request) -> web.Response:
            delivery = request.headers.get("X-Neeto-Delivery", "")
            self.times[delivery]["handler_in"] = time.time()
            self.webhook.set(delivery)
            try:
                return await original(request)
            finally:
                self.times[delivery]["handler_out"] = time.time()

        receiver.handle = handle

    def _wrap_store(self, store: Any) -> None:
        names = [
            name
            for name in dir(type(store))
            if not name.startswith("_")
            and name not in ("open", "close", "db", "path", "schema_version")
            and asyncio.iscoroutinefunction(getattr(type(store), name, None))
        ]
        for name in names:
            setattr(store, name, self._timed_store_call(name, getattr(store, name)))

    def _timed_store_call(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            began = time.time()
            result = await original(*args, **kwargs)
            ended = time.time()
            self.op_times[name].append(ended - began)
            webhook = self.webhook.get()
            if webhook is not None:  # in the webhook handler, before the ack
                if name == "enqueue":
                    self.times[webhook]["enqueued"] = ended
                self.webhook_store_time[webhook] += ended - began
                self.store_calls[webhook][f"webhook: {name}"] += 1
                return result
            delivery = self._delivery()
            if name == "claim_jobs":
                for job in result:
                    if job.kind == "neetochat_event":
                        d = job.payload.get("id")
                        self.seq_to_delivery[job.seq] = d
                        self.times[d]["claimed"] = ended
                        self.times[d]["claim_began"] = began
                return result
            if name == "finish_job" and args:
                delivery = self.seq_to_delivery.get(args[0], delivery)
                if delivery:
                    self.times[delivery]["finished"] = ended
            if delivery:
                self.store_calls[delivery][name] += 1
                self.store_time[delivery] += ended - began
            return result

        return call

    def _wrap_runner(self, runner: Any) -> None:
        original = runner._run

        async def run(job: Any) -> None:
            if job.kind == "neetochat_event":
                self.times[job.payload.get("id")]["job_start"] = time.time()
            await original(job)

        runner._run = run

    def _wrap_poster(self, poster: Any) -> None:
        original = poster.post_to_channel

        async def post_to_channel(**kwargs: Any) -> str:
            delivery = self._delivery()
            if delivery:
                self.times[delivery]["post_call"] = time.time()
            activity_id = await original(**kwargs)
            if delivery:
                self.times[delivery]["post_return"] = time.time()
                self.times[delivery]["post_id"] = activity_id  # type: ignore[assignment]
            return activity_id

        poster.post_to_channel = post_to_channel

    def _wrap_limiter(self, limiter: Any) -> None:
        from services.rate_limits import Throttled  # noqa: PLC0415

        original = limiter.slot

        @contextlib.asynccontextmanager
        async def slot(service: str, keys: Any, *args: Any, **kwargs: Any) -> AsyncIterator[None]:
            max_wait = kwargs.get("max_wait", args[0] if args else None)
            background = max_wait == 0
            async with contextlib.AsyncExitStack() as stack:
                try:
                    await stack.enter_async_context(original(service, keys, *args, **kwargs))
                except Throttled:
                    if background:
                        self.background_put_off += 1
                    else:
                        self.handed_back += 1
                    raise
                yield

        limiter.slot = slot


STAGES = [
    ("send → webhook handler", "sent", "handler_in", "this process's HTTP client, loopback, aiohttp's server"),
    ("handler → job stored", "handler_in", "enqueued", "size, workspace, HMAC, JSON checks; `enqueue`"),
    ("stored → claimed", "enqueued", "claimed", "job loop wakes on enqueue; `claim_jobs` transaction"),
    ("claimed → job running", "claimed", "job_start", "the job's task gets the event loop"),
    ("job → Teams call", "job_start", "post_call", "workspace, installation, portal, message link intent, lease check"),
    ("Teams call → connector", "post_call", "connector_in", "rate limiter slot, botbuilder/msrest, HTTP"),
    ("connector → post recorded", "connector_in", "posted", "the sandbox reads and records the post"),
]
AFTER = [
    ("post recorded → call returns", "posted", "post_return", "the answer back through msrest/botbuilder"),
    ("call returns → job done", "post_return", "finished", "complete the link, card refresh request, `finish_job`"),
]


def breakdown(probe: Probe, world: World, sends: list[Send]) -> list[tuple[str, str, list[float]]]:
    """Per stage: (name, what it covers, durations in seconds over the events)."""
    points: list[dict[str, float]] = []
    for send in sends:
        if send.conversation < 0 or send.event is None:
            continue
        p = dict(probe.times.get(send.event["id"], {}))
        p["sent"], p["posted"] = send.sent, send.posted
        if send.post_id and send.post_id in world.connector_in:
            p["connector_in"] = world.connector_in[send.post_id]
        points.append(p)
    out = []
    for name, a, b, what in STAGES + AFTER:
        values = [p[b] - p[a] for p in points if a in p and b in p]
        out.append((name, what, values))
    before, after = [], []
    for send in sends:
        if send.conversation < 0 or send.event is None:
            continue
        spans = probe.retry_policy.get(send.event["id"], [])
        cut = world.connector_in.get(send.post_id or "", math.inf)
        before.append(sum(e - b for b, e in spans if b < cut))
        after.append(sum(e - b for b, e in spans if b >= cut))
    out.insert(
        STAGES.index(next(s for s in STAGES if s[1] == "post_call")) + 1,
        ("… of which msrest `ClientRetryPolicy()`", "built with each connector client botbuilder makes", before),
    )
    out.insert(
        len(out) - 1,
        ("… of which msrest `ClientRetryPolicy()` (after)", "the user-token client made after the call", after),
    )
    return out


# ------------------------------------------------------------------------------ a run


@dataclass
class ModeResult:
    mode: str
    title: str
    events: list[Send] = field(default_factory=list)
    references: list[Send] = field(default_factory=list)
    stages: list[tuple[str, str, list[float]]] = field(default_factory=list)
    store_calls: Counter[str] = field(default_factory=Counter)  # per event, median
    store_time: list[float] = field(default_factory=list)
    webhook_store_time: list[float] = field(default_factory=list)
    claim_query: list[float] = field(default_factory=list)
    teams_calls: Counter[str] = field(default_factory=Counter)
    neeto_calls: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    shaping_waits: int | None = None
    handed_back: int | None = None
    background_put_off: int | None = None
    warnings: Counter[str] = field(default_factory=Counter)
    rss_mb: float | None = None
    error: str | None = None
    duration: float = 0.0
    others_cores: float | None = None  # other processes' CPU during the measurement

    def lat(self) -> list[float]:
        return [s.latency for s in self.events if not math.isnan(s.latency)]

    def acks(self) -> list[float]:
        return [s.ack for s in self.events if not math.isnan(s.ack)]

    def ref(self) -> list[float]:
        return [s.ack for s in self.references if not math.isnan(s.ack)]


MODES = {
    "inprocess": "bridge in-process (shares the sandboxes' event loop)",
    "process": "bridge as `python app.py` (its own process)",
}


def classify(requests: list[dict[str, Any]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for r in requests:
        method, path, status = r["method"], r["path"], r["status"] or 0
        if status == 429:
            out["429"] += 1
        elif method == "POST" and path == "/connector/v3/conversations":
            out["posts"] += 1
        elif method == "PUT" and "/activities/" in path:
            out["card updates"] += 1
        elif path.startswith("/v1.0/"):
            out[f"Graph {method}"] += 1
        else:
            out[f"{method} {path}"] += 1
    return out


class LogCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname} {record.name}: {str(record.msg)[:90]}"] += 1


class MachineLoad:
    """How busy the rest of the machine was while something was measured: CPU time all
    processes spent (``/proc/stat``) minus what ``pids`` spent, per second of wall time, in
    cores. The machine is shared: figures measured while others ran are rougher."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.began = self._sample()

    @staticmethod
    def _busy() -> float:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    def _ours(self) -> float:
        total = 0.0
        for pid in self.pids:
            try:
                text = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def _sample(self) -> tuple[float, float, float]:
        return time.monotonic(), self._busy(), self._ours()

    def others(self) -> float:
        """Cores the other processes used on average since this object was made."""
        t0, busy0, ours0 = self.began
        t1, busy1, ours1 = self._sample()
        return max(0.0, (busy1 - busy0) - (ours1 - ours0)) / max(1e-9, t1 - t0)


def vm_rss_mb(pid: int, field_name: str = "VmRSS") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def run_mode(mode: str, args: argparse.Namespace, profile: cProfile.Profile | None = None) -> ModeResult:
    result = ModeResult(mode, MODES[mode])
    collector = LogCollector()
    logging.getLogger().addHandler(collector)
    try:
        async with sandboxes(f"bench-latency-{mode}-") as world:
            h = world.h
            if mode == "inprocess":
                await start_bridge_inprocess(world)
            else:
                await start_bridge_process(world)
            await h.connect()
            conversations = await open_conversations(h, args.conversations, "L")
            probe = Probe(world.app) if world.app is not None else None
            # warm-up: a few events per conversation (connections, caches), not counted
            warm = write_messages(h, conversations, args.warmup, "warm")
            await play(world, schedule(warm, len(conversations), args.interval))
            await poll_until(lambda: collect_posts(world, warm), 60, "the warm-up posts")
            await quiet(h, 0.5)
            per_conversation = max(1, args.events // len(conversations))
            sends = write_messages(h, conversations, per_conversation, "lat")
            ref_channel = reference_channel(h)
            references = [Send(-1, f"ref m{n:04d}", ref_channel) for n in range(per_conversation)]
            first_request = len(h.ms.requests)
            rate_limited = len(h.ms.rate_limited)
            neeto_before = Counter(world.neeto_api_calls)
            if probe:
                probe.reset_counts()
            timed = schedule(sends + references, len(conversations), args.interval)
            print(
                f"  {mode}: {len(sends)} events over {len(conversations)} conversations, one every "
                f"{args.interval:g} s per conversation, + {len(references)} bare connector POSTs …",
                flush=True,
            )
            began = time.monotonic()
            pids = [os.getpid()] + ([world.process.proc.pid] if world.process and world.process.proc else [])
            load = MachineLoad(pids)
            if profile:
                profile.enable()
            try:
                await play(world, timed)
                await poll_until(lambda: collect_posts(world, sends), 60, "every event's post")
            finally:
                if profile:
                    profile.disable()
            result.duration = time.monotonic() - began
            result.others_cores = load.others()
            for ref in references:
                ref.posted = world.connector_in.get(ref.post_id or "", math.nan)
            await quiet(h, 0.5)
            if world.process is not None and world.process.proc is not None:
                result.rss_mb = vm_rss_mb(world.process.proc.pid)
            result.events, result.references = sends, references
            result.teams_calls = classify(h.ms.requests[first_request:])
            result.teams_calls["posts"] -= len(references)  # the bridge's only: not the reference POSTs
            result.rate_limited = len(h.ms.rate_limited) - rate_limited
            result.neeto_calls = Counter(world.neeto_api_calls) - neeto_before
            bad = [s.status for s in sends + references if s.status not in (200, 201)]
            if bad:
                result.error = f"{len(bad)} requests answered {Counter(bad)}"
            if probe:
                result.stages = breakdown(probe, world, sends)
                deliveries = [s.event["id"] for s in sends if s.event]
                calls = [probe.store_calls.get(d, Counter()) for d in deliveries]
                for op in {op for c in calls for op in c}:
                    result.store_calls[op] = int(statistics.median(c.get(op, 0) for c in calls))
                result.store_time = [probe.store_time[d] for d in deliveries if d in probe.store_time]
                result.webhook_store_time = [probe.webhook_store_time[d] for d in deliveries]
                result.claim_query = probe.op_times.get("claim_jobs", [])
                result.shaping_waits, result.handed_back = probe.shaping_waits, probe.handed_back
                result.background_put_off = probe.background_put_off
                probe.close()
            if world.process is not None:
                text = world.process.log_path.read_text(errors="replace")
                for line in text.splitlines():
                    m = re.search(r'"levelname": "(WARNING|ERROR)".*?"message": "([^"]{0,90})', line) or re.search(
                        r" (WARNING|ERROR) (\S+ .{0,90})", line
                    )
                    if m:
                        result.warnings[f"{m.group(1)} {m.group(2)}"] += 1
    except Exception as exc:
        log.exception("mode %s failed", mode)
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        logging.getLogger().removeHandler(collector)
        result.warnings.update(collector.counts)
    return result


# ------------------------------------------------------------------------------ reporting

HEADER = [
    "bridge",
    "events",
    "added latency p50 (ms)",
    "p99 (ms)",
    "max (ms)",
    "p50 / goal",
    "p99 / goal",
    "webhook ack p50 / p99 (ms)",
    "bare connector POST p50 / p99 (ms)",
    "p50 / bare POST p50",
    "other processes' CPU (cores)",
]


def row(r: ModeResult) -> list[str]:
    lat, acks, ref = r.lat(), r.acks(), r.ref()
    if r.error and not lat:
        return [r.title, str(len(r.events)), f"FAILED: {r.error}", *["-"] * (len(HEADER) - 3)]
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    mark50 = "" if p50 * 1000 < GOAL_P50_MS else " ✗"
    mark99 = "" if p99 * 1000 < GOAL_P99_MS else " ✗"
    return [
        r.title,
        str(len(lat)),
        ms(p50),
        ms(p99),
        ms(max(lat)),
        f"{p50 * 1000 / GOAL_P50_MS:.2f}{mark50}",
        f"{p99 * 1000 / GOAL_P99_MS:.2f}{mark99}",
        f"{ms(percentile(acks, 50))} / {ms(percentile(acks, 99))}",
        f"{ms(percentile(ref, 50))} / {ms(percentile(ref, 99))}",
        f"{p50 / percentile(ref, 50):.1f} ×" if ref else "-",
        "-" if r.others_cores is None else f"{r.others_cores:.2f} of {os.cpu_count()}",
    ]


def stage_rows(r: ModeResult) -> list[list[str]]:
    total = percentile(r.lat(), 50)
    rows = []
    for name, what, values in r.stages:
        p50 = percentile(values, 50)
        after = any(name == a[0] for a in AFTER) or name.endswith("(after)")
        share = "" if after or math.isnan(p50) else f"{p50 / total * 100:.0f} %"
        label = name + (" (after)" if after and not name.endswith("(after)") else "")
        rows.append([label, what, ms(p50), ms(percentile(values, 99)), share])
    return rows


def calls_text(c: Counter[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(c.items())) or "none"


def section(results: list[ModeResult], args: argparse.Namespace) -> str:
    parts = [
        "## Added latency (issue 3)",
        "",
        f"Goal: webhook in → Teams post out, below the rate limits: p50 < {GOAL_P50_MS:g} ms, "
        f"p99 < {GOAL_P99_MS:g} ms. Run with `python -m bench.latency` (about 2 minutes on 2 cores; "
        "`--quick` for a short look).",
        "",
        f"- Measured: {_report.today()}{' (quick run)' if args.quick else ''}",
        f"- Machine: {_report.machine()}",
        f"- Load: {args.conversations} conversations, one `message.created` every {args.interval:g} s per "
        f"conversation ({args.conversations / args.interval:.1f} events/s), staggered; bare connector POSTs "
        f"interleaved at the same pace; {args.warmup} warm-up events per conversation not counted",
        "",
        _report.markdown_table(HEADER, [row(r) for r in results]),
        "",
        f"![added latency]({PLOT.relative_to(_report.ROOT / 'docs').as_posix()})",
        "",
        "**Method.** Each bridge mode runs on a fresh world: the neetoChat and Microsoft 365 sandboxes in this "
        "benchmark's process on 127.0.0.1 ports, the bridge on the embedded store (SQLite) in a temporary "
        "`DATA_DIR`. The conversations are started, and their channels created, with webhook delivery on; then "
        "delivery is turned off and visitor messages are written in the neetoChat sandbox, whose "
        "`message.created` events this benchmark sends itself to `POST /api/neetochat/acme/webhooks`, signed "
        "as neetoChat signs them. Added latency = the post's creation time as the Microsoft sandbox recorded "
        "it − the moment the webhook request was sent (the same clock). The pace keeps every Teams limit "
        "(per thread 7/1 s, 8/2 s, 60/30 s; tenant 50/s) out of reach, so no shaping wait is in the figures: "
        "the in-process bridge's rate limiter is observed (calls that waited for room, hand-backs) and the "
        "sandbox counts any 429 it sends. The path of one such event makes exactly one Teams call (the post); "
        "each message also asks for a low-priority refresh of the conversation's card in the notification "
        "channel (a `PUT`, off the measured path, coalesced) and no Graph or neetoChat call. For reference, "
        "*bare connector POST* is the round trip of the same `POST /v3/conversations` sent directly by this "
        "process with aiohttp (no bridge): what one Teams call costs here, so the added latency reads as "
        "bridge overhead + one connector call. The machine may be shared: *other processes' CPU* is the CPU "
        "time the rest of the machine used during the measurement (`/proc/stat` minus this benchmark's and "
        "the bridge's processes), in cores; figures taken while it is high are rougher, the tail most.",
    ]
    for r in results:
        lines = [
            "",
            f"**{r.title}**: {len(r.lat())} events in {r.duration:.0f} s; the bridge's Teams calls in the measured "
            f"window: "
            f"{calls_text(r.teams_calls)}; 429s from the sandbox's limits: {r.rate_limited}; "
            f"calls to neetoChat's API: {calls_text(r.neeto_calls)}.",
        ]
        if r.shaping_waits is not None:
            lines[-1] += (
                f" The bridge's limiter: {r.shaping_waits} calls waited for room, {r.handed_back} handed back, "
                f"{r.background_put_off} card refreshes put off."
            )
        if r.rss_mb:
            lines[-1] += f" Bridge RSS after the run: {r.rss_mb:.0f} MB."
        if r.warnings:
            lines.append("Warnings and errors: " + "; ".join(f"{n} × `{m}`" for m, n in r.warnings.most_common(5)))
        if r.error:
            lines.append(f"**Failed**: {r.error}")
        parts += lines
    inproc = next((r for r in results if r.stages), None)
    if inproc:
        ops = ", ".join(f"{op} {n}" for op, n in sorted(inproc.store_calls.items()) if n)
        parts += [
            "",
            "### Where the time goes (bridge in-process)",
            "",
            "Timestamps taken inside the in-process bridge by thin wrappers (the product code is unchanged), "
            "median and p99 over the events. Share = the stage's median / the added latency's median (medians "
            "do not add up exactly).",
            "",
            _report.markdown_table(["stage", "covers", "p50 (ms)", "p99 (ms)", "share of p50"], stage_rows(inproc)),
            "",
            f"Store calls per event (median): {ops}; time in store calls per event: in the webhook handler "
            f"p50 {ms(percentile(inproc.webhook_store_time, 50))} ms, in the job p50 "
            f"{ms(percentile(inproc.store_time, 50))} ms / p99 {ms(percentile(inproc.store_time, 99))} ms; "
            f"`claim_jobs` calls: {len(inproc.claim_query)}, p50 {ms(percentile(inproc.claim_query, 50))} ms, "
            f"p99 {ms(percentile(inproc.claim_query, 99))} ms.",
        ]
    return "\n".join(parts)


def plot(results: list[ModeResult]) -> Path | None:
    if not _plot.available():
        print("matplotlib is missing: no plot (pip install matplotlib)", file=sys.stderr)
        return None
    series: dict[str, list[float]] = {}
    xs: dict[str, list[float]] = {}
    for r in results:
        for label, values in ((f"added latency, {r.mode}", r.lat()), (f"bare connector POST, {r.mode}", r.ref())):
            if values:
                ordered = sorted(v * 1000 for v in values)
                xs[label] = ordered
                series[label] = [(i + 1) / len(ordered) * 100 for i in range(len(ordered))]
    if not series:
        return None
    return _plot.line_chart(
        PLOT,
        "Webhook in → Teams post out (cumulative)",
        [],
        series,
        "milliseconds (log scale)",
        "% of events at or below",
        logx=True,
        markers=False,
        xs=xs,
        vgoals={f"p50 goal {GOAL_P50_MS:g} ms": GOAL_P50_MS, f"p99 goal {GOAL_P99_MS:g} ms": GOAL_P99_MS},
        goals={"p50": 50.0, "p99": 99.0},
        legend={"loc": "center right", "bbox_to_anchor": (1.0, 0.72)},
    )


def print_results(results: list[ModeResult]) -> None:
    print()
    print(_report.text_table(HEADER, [row(r) for r in results]))
    for r in results:
        print(
            f"\n{r.title}: Teams calls {calls_text(r.teams_calls)}; 429s {r.rate_limited}; "
            f"neetoChat API calls {calls_text(r.neeto_calls)}"
        )
        if r.shaping_waits is not None:
            print(
                f"  limiter: {r.shaping_waits} waits, {r.handed_back} handed back, "
                f"{r.background_put_off} card refreshes put off"
            )
        if r.rss_mb:
            print(f"  bridge RSS {r.rss_mb:.0f} MB")
        for m, n in r.warnings.most_common(5):
            print(f"  {n} × {m}")
        if r.error:
            print(f"  FAILED: {r.error}")
        if r.stages:
            print()
            print(_report.text_table(["stage", "covers", "p50 ms", "p99 ms", "share"], stage_rows(r)))
            print(f"  store calls per event (median): {dict(r.store_calls)}")
            print(
                f"  store time per event in the job: p50 {ms(percentile(r.store_time, 50))} ms, "
                f"p99 {ms(percentile(r.store_time, 99))} ms; claim_jobs p50 {ms(percentile(r.claim_query, 50))} "
                f"ms p99 {ms(percentile(r.claim_query, 99))} ms over {len(r.claim_query)} calls"
            )
            slow = sorted(r.events, key=lambda s: -s.latency)[:5]
            print("  slowest events (ms): " + ", ".join(ms(s.latency) for s in slow))


def print_profile(profile: cProfile.Profile, limit: int = 35) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("cumulative")
    stats.print_stats(r"services/|bots/|app\.py|botbuilder|botframework|msrest|aiosqlite|aiohttp/client", limit)
    out.write("\n--- by own time ---\n")
    stats.sort_stats("tottime")
    stats.print_stats(limit)
    print(out.getvalue())


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--quick", action="store_true", help="fewer events (a quick look; figures are rougher)")
    parser.add_argument("--mode", choices=[*MODES, "both"], default="both")
    parser.add_argument("--conversations", type=int, default=10)
    parser.add_argument("--events", type=int, help="measured events in all (default 600, quick 100)")
    parser.add_argument("--interval", type=float, default=0.6, help="seconds between events of one conversation")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up events per conversation")
    parser.add_argument("--profile", action="store_true", help="also an in-process run under cProfile (printed)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/performance.md")
    parser.add_argument("--verbose", action="store_true", help="the bridge's log (INFO) on stderr")
    args, _unknown = parser.parse_known_args(argv)  # python -m bench passes every benchmark's options
    if args.events is None:
        args.events = 100 if args.quick else 600
    if args.interval < 0.5:
        parser.error("--interval below 0.5 s would reach Teams' 60 / 30 s per-thread limit")
    if args.conversations < 1 or args.events < args.conversations:
        parser.error("need at least one conversation and one event per conversation")
    return args


async def run(args: argparse.Namespace) -> tuple[list[ModeResult], cProfile.Profile | None]:
    modes = list(MODES) if args.mode == "both" else [args.mode]
    results = []
    for mode in modes:
        print(f"{MODES[mode]} …", flush=True)
        results.append(await run_mode(mode, args))
    profile = None
    if args.profile:
        print("in-process again, under cProfile …", flush=True)
        profile = cProfile.Profile()
        await run_mode("inprocess", args, profile)
    return results, profile


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    root = logging.getLogger()
    root.setLevel(logging.INFO if args.verbose else logging.WARNING)
    if args.verbose:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root.addHandler(handler)
    else:
        root.addHandler(logging.NullHandler())
    for noisy in ("aiohttp.access", "azure", "httpx", "msal"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    results, profile = asyncio.run(run(args))
    print_results(results)
    if profile is not None:
        print_profile(profile)
    if not args.no_write:
        image = plot(results)
        path = _report.write_section(NAME, section(results, args))
        print(
            f"\nwrote {path.relative_to(_report.ROOT)}" + (f" and {image.relative_to(_report.ROOT)}" if image else "")
        )
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
