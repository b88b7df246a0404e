"""Scale (issue 5): the bridge's resident memory and per-event cost with 1 k, 10 k and
100 k conversation links in its store. Goals: < 200 MB RSS at 10 k; the per-event cost at
100 k within 1.2 × the cost at 1 k (indexes, no scans).

    python -m bench.scale [--quick] [--sizes 1000,10000,100000] [--events N] [--passes N]
                          [--mongomock N] [--no-write] [--verbose]

For each size, on a fresh world (sandboxes in this process, the bridge as ``python app.py``
on a temporary ``DATA_DIR``, embedded SQLite store):

1. the workspace is connected and ``--live`` conversations get their channels through the
   bridge, as in production; the bridge is stopped;
2. the store is filled directly, on the schema the store's own ``open()`` made, with bulk
   inserts through its connection: per conversation one portal (1 % open, at most 200: a
   team holds at most 1,000 channels), 10 message links and 12 finished jobs with
   realistic payloads (0.1 % dead), all in the measured workspace (the worst case for
   per-workspace queries);
3. the store operations of the hot path are timed in isolation, and the query plans of
   their SQL are read (``EXPLAIN QUERY PLAN``) to spot table scans;
4. the bridge is started again, with the rate limits off on both sides (so throughput
   shows the bridge's own cost, not Teams' limits); after a warm-up its RSS is read from
   /proc; then ``--passes`` bursts of ``--events`` webhook events for the live
   conversations are sent (``--senders`` requests in flight) and timed from the first
   send to the last post recorded in the Teams sandbox, with the bridge process's CPU
   time; then a paced pass gives the added latency; RSS again.

A MongoDB run (same steps) is added when ``MONGODB_URI`` is set; ``--mongomock N`` adds a
smoke check of the store operations on mongomock-motor (in memory, every query a scan: not
meaningful as figures, and slow, so off by default).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import _plot, _report
from bench import latency as lat
from services.store.base import Job, MessageLink, Portal, Store
from tests.harness import WS

NAME = "scale"
SIZES = (1_000, 10_000, 100_000)
RSS_GOAL_MB = 200.0
RSS_GOAL_AT = 10_000
RATIO_GOAL = 1.2
LINKS_PER_CONVERSATION = 10
JOBS_PER_CONVERSATION = 12
OPEN_SHARE, OPEN_CAP = 0.01, 200
DEAD_SHARE = 0.001
PLOT = _report.ROOT / "docs" / "performance" / "scale.png"
LIMITS_OFF = {"TEAMS_THREAD_LIMITS": "", "TEAMS_TENANT_LIMITS": "", "GRAPH_CHANNEL_CREATE_LIMITS": ""}

log = logging.getLogger("bench.scale")


# ------------------------------------------------------------------------------ filler rows


def _hex(kind: str, i: int, n: int = 16) -> str:
    return hashlib.blake2b(f"{kind}{i}".encode(), digest_size=16).hexdigest()[:n]


class Filler:
    """Deterministic, realistic rows for ``size`` conversations of workspace ``ws``; any
    key can be regenerated from its index, so lookups of random existing rows need no
    list of millions of ids."""

    def __init__(self, size: int, ws: str, team_id: str, template: dict[str, Any]) -> None:
        self.size, self.ws, self.team_id = size, ws, team_id
        self.open = min(OPEN_CAP, max(1, int(size * OPEN_SHARE)))
        self.now = time.time()
        self.start = self.now - 365 * 86400
        self.activity_base = int(self.start * 1000)
        self.template = template

    def conversation(self, i: int) -> str:
        return f"cnv_{_hex('c', i)}"

    def channel(self, i: int) -> str:
        return f"19:{_hex('ch', i, 32)}@thread.tacv2"

    def message(self, i: int, j: int) -> str:
        return f"msg_{_hex('m', i * 100 + j)}"

    def activity(self, i: int, j: int) -> str:
        return str(self.activity_base + i * 100 + j)  # 13-digit millisecond ids, unique

    def created(self, i: int) -> float:
        return self.start + (self.now - 86400 - self.start) * i / max(1, self.size)

    def portal(self, i: int) -> dict[str, Any]:
        conv, channel, t = self.conversation(i), self.channel(i), self.created(i)
        open_ = i >= self.size - self.open  # the newest ones are still open
        reference = {
            "activityId": self.activity(i, 0),
            "bot": {"id": "28:bench-bot", "name": None},
            "conversation": {"id": f"{channel};messageid={self.activity(i, 0)}", "isGroup": True,
                             "conversationType": "channel", "tenantId": "bench-tenant"},
            "channelId": "msteams",
            "serviceUrl": "https://smba.trafficmanager.net/teams/",
        }  # fmt: skip
        return {
            "workspace_id": self.ws,
            "conversation_id": conv,
            "number": 100_000 + i,
            "state": "open" if open_ else "closed",
            "team_id": self.team_id,
            "channel_id": channel,
            "channel_name": f"{100_000 + i} Visitor {i}",
            "channel_url": f"https://teams.microsoft.com/l/channel/{channel}/x",
            "conversation_reference": reference,
            "notice_activity_id": self.activity(i, 1),
            "intro_activity_id": self.activity(i, 0),
            "first_message": f"Hello, I have a question about order {i} and its delivery date.",
            "thread_id": None,
            "backfilled": True,
            "created_at": t,
            "updated_at": t + 3600,
        }

    def links(self, i: int) -> list[dict[str, Any]]:
        conv, channel, t = self.conversation(i), self.channel(i), self.created(i)
        rows = [
            (f"intro:{conv}", self.activity(i, 0), "to_teams"),
            (f"notice:{conv}", self.activity(i, 1), "to_teams"),
            (self.message(i, 0), f"{self.activity(i, 0)}#first", "to_teams"),
        ]
        for j in range(3, LINKS_PER_CONVERSATION):
            rows.append((self.message(i, j), self.activity(i, j), "to_neetochat" if j % 3 == 0 else "to_teams"))
        return [
            {"workspace_id": self.ws, "conversation_id": conv, "neeto_message_id": neeto,
             "teams_activity_id": activity, "direction": direction, "created_at": t + k * 60,
             "channel_id": channel}
            for k, (neeto, activity, direction) in enumerate(rows)
        ]  # fmt: skip

    def payload(self, i: int, j: int) -> dict[str, Any]:
        conv = self.conversation(i)
        if j % 6 == 5:  # a message written in Teams
            return {
                "conversation_id": conv,
                "activity_id": self.activity(i, j),
                "text": f"Thanks, we are looking into order {i} right now.",
                "attachments": [],
                "channel_id": self.channel(i),
                "user": {"id": f"29:{_hex('u', i % 50, 32)}", "aad_object_id": str(uuid.UUID(int=i % 50)),
                         "name": "Ada Agent", "team_id": self.team_id},
                "reference": {"activityId": self.activity(i, j), "channelId": "msteams",
                              "conversation": {"id": f"{self.channel(i)};messageid={self.activity(i, 0)}"},
                              "serviceUrl": "https://smba.trafficmanager.net/teams/"},
            }  # fmt: skip
        event = json.loads(json.dumps(self.template))
        event["id"] = f"evt_{_hex('e', i * 100 + j)}"
        event["event"] = "message.created" if j else "conversation.created"
        event["data"]["conversation"]["id"] = conv
        event["data"]["conversation"]["number"] = 100_000 + i
        message = event["data"].get("message") or {}
        message.update(id=self.message(i, j), conversation_id=conv)
        return event

    def jobs(self, i: int) -> list[dict[str, Any]]:
        conv, t = self.conversation(i), self.created(i)
        rows = []
        for j in range(JOBS_PER_CONVERSATION):
            teams = j % 6 == 5
            dead = (i * JOBS_PER_CONVERSATION + j) % int(1 / DEAD_SHARE) == 7
            key = f"act:{self.ws}:{self.activity(i, j)}" if teams else f"evt:{self.ws}:evt_{_hex('e', i * 100 + j)}"
            rows.append({
                "kind": "teams_message" if teams else "neetochat_event",
                "workspace_id": self.ws,
                "partition": f"{self.ws}:{conv}",
                "dedupe_key": key,
                "payload": self.payload(i, j),
                "status": "dead" if dead else "done",
                "attempts": 1 if dead else 0,
                "next_attempt_at": 0.0,
                "lease_owner": None,
                "lease_until": 0.0,
                "last_error": "Teams: 403 Forbidden" if dead else None,
                "created_at": t + j * 60,
                "finished_at": t + j * 60 + 0.2,
            })  # fmt: skip
        return rows


# ------------------------------------------------------------------------------ bulk inserts


CHUNK = 2_000  # conversations per transaction


async def populate(store: Store, filler: Filler, progress: Callable[[str], None]) -> Counter[str]:
    """Insert the filler rows with the backend's bulk insert; returns rows per table."""
    if type(store).__name__ == "SqliteStore":
        return await _populate_sqlite(store, filler, progress)
    return await _populate_mongo(store, filler, progress)


def _sql(table: str, columns: list[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


async def _populate_sqlite(store: Any, filler: Filler, progress: Callable[[str], None]) -> Counter[str]:
    db = store.db
    counts: Counter[str] = Counter()
    portal_cols = list(filler.portal(0))
    link_cols = list(filler.links(0)[0])
    job_cols = list(filler.jobs(0)[0])
    json_cols = {"conversation_reference", "payload"}

    def encode(row: dict[str, Any], cols: list[str]) -> tuple[Any, ...]:
        return tuple(
            json.dumps(row[c], separators=(",", ":")) if c in json_cols and row[c] is not None
            else int(row[c]) if isinstance(row[c], bool) else row[c]
            for c in cols
        )  # fmt: skip

    for lo in range(0, filler.size, CHUNK):
        hi = min(filler.size, lo + CHUNK)
        portals = [encode(filler.portal(i), portal_cols) for i in range(lo, hi)]
        links = [encode(r, link_cols) for i in range(lo, hi) for r in filler.links(i)]
        jobs = [encode(r, job_cols) for i in range(lo, hi) for r in filler.jobs(i)]
        async with store._lock:
            await db.execute("BEGIN IMMEDIATE")
            try:
                await db.executemany(_sql("portals", portal_cols), portals)
                await db.executemany(_sql("message_links", link_cols), links)
                await db.executemany(_sql("jobs", job_cols), jobs)
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")
        counts.update(portals=len(portals), message_links=len(links), jobs=len(jobs))
        progress(f"{hi:,} / {filler.size:,} conversations")
    await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return counts


async def _populate_mongo(store: Any, filler: Filler, progress: Callable[[str], None]) -> Counter[str]:
    db = store.db
    counts: Counter[str] = Counter()
    counter = await db.counters.find_one({"_id": "jobs"})
    seq = int(counter["value"]) if counter else 0
    for lo in range(0, filler.size, CHUNK):
        hi = min(filler.size, lo + CHUNK)
        portals = [asdict(Portal(**filler.portal(i))) for i in range(lo, hi)]
        links = [asdict(MessageLink(**r)) for i in range(lo, hi) for r in filler.links(i)]
        jobs = []
        for i in range(lo, hi):
            for row in filler.jobs(i):
                seq += 1
                doc = asdict(Job(seq=0, **row))
                del doc["seq"]
                doc["_id"] = seq
                jobs.append(doc)
        await db.portals.insert_many(portals, ordered=False)
        await db.message_links.insert_many(links, ordered=False)
        await db.jobs.insert_many(jobs, ordered=False)
        counts.update(portals=len(portals), message_links=len(links), jobs=len(jobs))
        progress(f"{hi:,} / {filler.size:,} conversations")
    await db.counters.update_one({"_id": "jobs"}, {"$set": {"value": seq}}, upsert=True)
    return counts


# ------------------------------------------------------------------------------ store operations in isolation

HOT_OPS = [
    "get_workspace",
    "get_installation",
    "get_portal",
    "get_link_by_neeto_id",
    "add_message_link",
    "lease_held",
    "complete_message_link",
    "enqueue",
    "claim_jobs",
    "finish_job",
]
# Lookups of random rows of the whole history (old conversations): the worst case for caches.
INBOUND_OPS = [
    "get_portal (old row)",
    "get_link_by_neeto_id (old row)",
    "get_portal_by_channel (old row)",
    "get_link_by_activity_id (old row)",
]
STATUS_OPS = [
    "job_counts(workspace)",
    "job_counts()",
    "count_portals(workspace, open)",
    "open_channels_by_team()",
    "get_portal during a /metrics scrape",
]
GROWS = 2.0  # an operation "grows with the store" when it costs this much more at the largest size
SLOW_EVERY = 10  # the status operations run every 10th repetition
PACED_CONVERSATIONS = 10  # as bench/latency.py: 16.7 events/s
WARMUP_REPS = 3  # repetitions not counted after the stores are opened
BLOCK = 50  # repetitions between reopening the stores in a rotated order


class OpTimer:
    """Times the store operations on one store, one repetition at a time: random existing
    rows for reads, new rows for writes, the job operations in their real order (enqueue,
    claim, lease check, finish); the status operations every ``SLOW_EVERY``-th time."""

    def __init__(self, store: Store, filler: Filler, team_id: str) -> None:
        self.store, self.filler, self.team_id = store, filler, team_id
        self.rng = random.Random(filler.size)
        self.times: dict[str, list[float]] = {op: [] for op in HOT_OPS + INBOUND_OPS + STATUS_OPS}
        self.sql: dict[str, list[float]] = {op: [] for op in self.times}  # SQLite's own work (its thread)
        self.tag = uuid.uuid4().hex[:8]
        self.rep = 0
        self._in_thread = 0.0
        self._patched = self._time_sqlite_thread()

    def reset(self) -> None:
        self.times = {op: [] for op in self.times}
        self.sql = {op: [] for op in self.times}

    def _time_sqlite_thread(self) -> bool:
        """Time each call the SQLite store hands to aiosqlite's worker thread, in that
        thread: what SQLite itself spends, without the hop between threads (on a VM that
        hop costs 80–350 µs depending on whether the threads were asleep, whatever the
        store's size)."""
        conn = getattr(self.store, "_db", None)
        original = getattr(conn, "_execute", None)
        if original is None:
            return False

        async def execute(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            def run() -> Any:
                began = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self._in_thread += time.perf_counter() - began

            return await original(run)

        conn._execute = execute
        return True

    async def _timed(self, op: str, call: Awaitable[Any]) -> Any:
        self._in_thread = 0.0
        began = time.perf_counter()
        result = await call
        self.times[op].append(time.perf_counter() - began)
        if self._patched:
            self.sql[op].append(self._in_thread)
        return result

    async def once(self) -> None:
        """One ``message.created`` event's store calls, in the bridge's order (webhook:
        workspace, enqueue; job loop: claim; job: workspace, installation, the portal of a
        live conversation, the new message's link (absent), its intent, the lease check,
        the link completed, the job finished), then lookups of random old rows."""
        store, filler, timed, ws = self.store, self.filler, self._timed, self.filler.ws
        live = self.rng.randrange(filler.size - filler.open, filler.size)  # the newest, still open
        old, j = self.rng.randrange(filler.size), self.rng.randrange(3, LINKS_PER_CONVERSATION)
        owner, conv = "bench-scale/iso", f"iso-{self.tag}-{self.rep}"
        message = f"msg_{conv}"
        await timed("get_workspace", store.get_workspace(ws))
        job = Job(
            0,
            "neetochat_event",
            ws,
            f"{ws}:{conv}",
            f"evt:{ws}:{conv}",
            filler.payload(live, 1),
            created_at=time.time(),
        )
        assert await timed("enqueue", store.enqueue(job))
        claimed = await timed("claim_jobs", store.claim_jobs(owner, time.time(), 60.0, 16))
        assert [c.seq for c in claimed] == [job.seq], f"claimed {[c.seq for c in claimed]}, wanted {job.seq}"
        await timed("get_workspace", store.get_workspace(ws))
        await timed("get_installation", store.get_installation(self.team_id))
        found = await timed("get_portal", store.get_portal(ws, filler.conversation(live)))
        assert found is not None, "a filler portal is missing"
        assert await timed("get_link_by_neeto_id", store.get_link_by_neeto_id(ws, message)) is None
        link = MessageLink(ws, conv, message, None, "to_teams", channel_id=filler.channel(live))
        assert await timed("add_message_link", store.add_message_link(link))
        assert await timed("lease_held", store.lease_held(job.seq, owner, time.time()))
        completing = store.complete_message_link(ws, neeto_message_id=message, teams_activity_id=f"a-{conv}")
        await timed("complete_message_link", completing)
        assert await timed("finish_job", store.finish_job(job.seq, owner, "done"))
        # random rows of the whole history
        assert await timed("get_portal (old row)", store.get_portal(ws, filler.conversation(old)))
        assert await timed("get_link_by_neeto_id (old row)", store.get_link_by_neeto_id(ws, filler.message(old, j)))
        await timed("get_portal_by_channel (old row)", store.get_portal_by_channel(filler.channel(old)))
        activity = filler.activity(old, j)
        assert await timed("get_link_by_activity_id (old row)", store.get_link_by_activity_id(ws, activity))
        i = old
        if self.rep % SLOW_EVERY == 0:
            await timed("job_counts(workspace)", store.job_counts(ws))
            await timed("job_counts()", store.job_counts())
            await timed("count_portals(workspace, open)", store.count_portals(ws, "open"))
            by_team = getattr(store, "open_channels_by_team", None)
            if by_team is not None:
                await timed("open_channels_by_team()", by_team())
            # a /metrics scrape (what services/metrics.py reads) and a job's lookup at the
            # same moment: the SQLite store has one connection, so the lookup waits
            scrape = asyncio.create_task(metrics_reads(store))
            await asyncio.sleep(0)
            await timed("get_portal during a /metrics scrape", store.get_portal(ws, filler.conversation(i)))
            await scrape
        self.rep += 1


async def time_ops(store: Store, filler: Filler, team_id: str, reps: int) -> dict[str, list[float]]:
    """``reps`` repetitions of the store operations on one store (see ``OpTimer``)."""
    timer = OpTimer(store, filler, team_id)
    for _ in range(reps):
        await timer.once()
    return timer.times


async def metrics_reads(store: Store) -> None:
    """The store reads of one ``GET /metrics`` (services/metrics.py: Metrics.handler)."""
    await store.job_counts()
    by_team = getattr(store, "open_channels_by_team", None)
    if by_team is not None:
        await by_team()


async def query_plans(store: Any, filler: Filler, team_id: str) -> dict[str, list[str]]:
    """``EXPLAIN QUERY PLAN`` of every SQL statement each operation runs (captured with
    SQLite's trace callback, so the product's own SQL), by operation."""
    db = store.db
    statements: list[str] = []
    plans: dict[str, list[str]] = {}
    ws, conv = filler.ws, f"plan-{uuid.uuid4().hex[:8]}"
    i = filler.size // 2
    job = Job(0, "neetochat_event", ws, f"{ws}:{conv}", f"evt:{ws}:{conv}", {"id": conv}, created_at=time.time())
    owner = "bench-scale/plan"
    calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("get_workspace", lambda: store.get_workspace(ws)),
        ("get_installation", lambda: store.get_installation(team_id)),
        ("get_portal", lambda: store.get_portal(ws, filler.conversation(i))),
        ("get_portal_by_channel", lambda: store.get_portal_by_channel(filler.channel(i))),
        ("get_link_by_neeto_id", lambda: store.get_link_by_neeto_id(ws, filler.message(i, 4))),
        ("get_link_by_activity_id", lambda: store.get_link_by_activity_id(ws, filler.activity(i, 4))),
        ("enqueue", lambda: store.enqueue(job)),
        ("claim_jobs", lambda: store.claim_jobs(owner, time.time(), 60.0, 16)),
        ("lease_held", lambda: store.lease_held(job.seq, owner, time.time())),
        ("add_message_link", lambda: store.add_message_link(MessageLink(ws, conv, f"m-{conv}", None, "to_teams"))),
        ("complete_message_link",
         lambda: store.complete_message_link(ws, neeto_message_id=f"m-{conv}", teams_activity_id=f"a-{conv}")),
        ("finish_job", lambda: store.finish_job(job.seq, owner, "done")),
        ("job_counts(workspace)", lambda: store.job_counts(ws)),
        ("job_counts()", lambda: store.job_counts()),
        ("count_portals(workspace, open)", lambda: store.count_portals(ws, "open")),
        ("release_leases (startup)", lambda: store.release_leases("bench-scale-none/")),
    ]  # fmt: skip
    if hasattr(store, "open_channels_by_team"):
        calls.insert(-1, ("open_channels_by_team()", lambda: store.open_channels_by_team()))
    for op, call in calls:
        statements.clear()
        await db.set_trace_callback(statements.append)
        try:
            await call()
        finally:
            await db.set_trace_callback(None)
        lines = []
        for sql in statements:
            head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
            if head not in ("SELECT", "UPDATE", "DELETE", "INSERT", "WITH"):
                continue
            try:
                rows = await db.execute_fetchall(f"EXPLAIN QUERY PLAN {sql}")
            except Exception as exc:  # a statement the trace shows but EXPLAIN refuses
                lines.append(f"({type(exc).__name__}: {exc})")
                continue
            lines += [str(r[3]) for r in rows]
        plans[op] = lines
    partial = {
        row[0]: row[1].split(" WHERE ", 1)[1].strip()
        for row in await db.execute_fetchall(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        )
        if " WHERE " in row[1]
    }
    for op, lines in plans.items():
        plans[op] = [_annotate(line, partial) for line in lines]
    return plans


def _annotate(line: str, partial: dict[str, str]) -> str:
    found = re.search(r"USING (?:COVERING )?INDEX (\w+)", line)
    if line.startswith("SCAN") and found and found.group(1) in partial:
        return f"{line} [partial index: only rows WHERE {partial[found.group(1)]}]"
    return line


def scans(plan: list[str]) -> list[str]:
    """Plan steps that read a whole table or index rather than searching it (a scan of a
    partial index on unfinished jobs only is bounded by the queue, not the store; the
    constant row a SELECT of scalar subqueries starts from is no table at all)."""
    return [
        line for line in plan if line.startswith("SCAN") and "partial index" not in line and line != "SCAN CONSTANT ROW"
    ]


# ------------------------------------------------------------------------------ a size


@dataclass
class SizeResult:
    size: int
    backend: str
    rows: Counter[str] = field(default_factory=Counter)
    db_mb: float | None = None
    populate_s: float = 0.0
    startup_s: float | None = None
    rss_start: float | None = None
    rss_warm: float | None = None
    rss_after: float | None = None
    rss_peak: float | None = None
    walls: list[float] = field(default_factory=list)  # seconds per event, per pass
    cpus: list[float] = field(default_factory=list)  # bridge CPU seconds per event, per pass
    paced: list[float] = field(default_factory=list)  # added latency of paced events
    ops: dict[str, list[float]] = field(default_factory=dict)  # seconds per call, through the store's API
    sql_ops: dict[str, list[float]] = field(default_factory=dict)  # of which in SQLite's thread
    plans: dict[str, list[str]] = field(default_factory=dict)
    rate_limited: int = 0
    metrics_scrape: list[float] = field(default_factory=list)  # GET /metrics on the running bridge
    admin_status: list[float] = field(default_factory=list)  # GET /api/admin/workspaces/{ws}
    connector_calls: float = math.nan  # Teams connector calls per event in the bursts
    others_cores: float | None = None  # other processes' CPU during the bursts and the paced pass
    error: str | None = None
    filler: Filler | None = field(default=None, repr=False)
    team_id: str = ""
    db_copy: Path | None = None

    @property
    def wall(self) -> float:
        return statistics.median(self.walls) if self.walls else math.nan

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus) if self.cpus else math.nan


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (clock ticks)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def posts_made(world: lat.World, since: int) -> int:
    return sum(
        1
        for r in world.h.ms.requests[since:]
        if r["method"] == "POST" and r["path"] == "/connector/v3/conversations" and r["status"] == 201
    )


async def burst(world: lat.World, sends: list[lat.Send], senders: int) -> None:
    """Send every event, ``senders`` requests in flight, then wait for every post."""
    first = len(world.h.ms.requests)
    pending = iter(sends)

    async def sender() -> None:
        for send in pending:
            await lat.send_event(world, send)

    await asyncio.gather(*(sender() for _ in range(senders)))
    await lat.poll_until(lambda: posts_made(world, first) >= len(sends), 120, f"{len(sends)} posts", every=0.1)
    await lat.poll_until(lambda: lat.collect_posts(world, sends), 30, "every event's post")


async def run_size(size: int, args: argparse.Namespace, backend: str, keep: Path) -> SizeResult:
    """Steps 1–4 for one size; the SQLite store is copied to ``keep`` for the isolated
    store operations, which run later, interleaved across sizes (``time_ops_interleaved``)."""
    result = SizeResult(size, backend)
    mongo_db = f"bench_scale_{os.getpid()}_{size}" if backend == "mongo" else None
    env_store = {"MONGODB_URI": os.environ["MONGODB_URI"], "MONGODB_DB": mongo_db} if mongo_db else {}
    try:
        async with lat.sandboxes(f"bench-scale-{size}-") as world:
            h = world.h
            # 1. connected as in production, live conversations with their channels
            await start_bridge(world, env_store)
            await h.connect()
            live = await lat.open_conversations(h, args.live, "S")
            template = next(e for e in reversed(h.neeto.events(WS)) if e["event"] == "conversation.created")
            await lat.stop_bridge(world)
            # 2. the filler, on the store's own schema
            store = open_bridge_store(world, mongo_db)
            await store.open()
            try:
                filler = Filler(size, WS, h.team_id, template)
                began = time.monotonic()
                result.rows = await populate(store, filler, lambda p: print(f"\r    filling: {p}", end="", flush=True))
                result.populate_s = time.monotonic() - began
                print(f"\r    filled in {result.populate_s:.0f} s: {dict(result.rows)}", flush=True)
                result.filler, result.team_id = filler, h.team_id
                # 3. the store operations in isolation (SQLite: later, see above), query plans
                if backend == "sqlite":
                    result.plans = await query_plans(store, filler, h.team_id)
                else:
                    result.ops = await time_ops(store, filler, h.team_id, args.reps)
            finally:
                await store.close()
            if backend == "sqlite":
                path = world.data_dir / "bridge.sqlite3"
                result.db_mb = sum(p.stat().st_size for p in path.parent.glob("bridge.sqlite3*")) / 1e6
                result.db_copy = keep / f"{size}.sqlite3"
                await asyncio.to_thread(shutil.copyfile, path, result.db_copy)
            # 4. the bridge again, limits off on both sides
            h.ms.set_rate_limits(thread=[], thread_all=[], tenant=[], channel_create=[])
            began = time.monotonic()
            process = await start_bridge(world, {**env_store, **LIMITS_OFF})
            result.startup_s = time.monotonic() - began
            pid = process.proc.pid
            result.rss_start = lat.vm_rss_mb(pid)
            # warm-up: one new conversation (neetoChat API, Graph channel creation, cards:
            # every client the bridge loads lazily), then a burst for the live ones
            await new_conversation(world)
            warm = lat.write_messages(h, live, args.warmup, "warm")
            await burst(world, warm, args.senders)
            await lat.quiet(h, 0.5)
            result.rss_warm = lat.vm_rss_mb(pid)
            per_conversation = max(1, args.events // len(live))
            first_request = len(h.ms.requests)
            load = lat.MachineLoad([os.getpid(), pid])
            for n in range(args.passes):
                sends = lat.write_messages(h, live, per_conversation, f"p{n}")
                cpu0 = cpu_seconds(pid)
                await burst(world, sends, args.senders)
                await lat.quiet(h, 0.3)
                cpu = cpu_seconds(pid) - cpu0
                wall = max(s.posted for s in sends) - min(s.sent for s in sends)
                result.walls.append(wall / len(sends))
                result.cpus.append(cpu / len(sends))
                print(f"    pass {n + 1}: {len(sends)} events, {wall / len(sends) * 1000:.2f} ms/event wall, "
                      f"{cpu / len(sends) * 1000:.2f} ms/event bridge CPU", flush=True)  # fmt: skip
            connector = [r for r in h.ms.requests[first_request:] if r["path"].startswith("/connector/v3/")]
            result.connector_calls = len(connector) / (per_conversation * len(live) * args.passes)
            for _ in range(5):
                result.metrics_scrape.append(await timed_get(world, f"{h.bridge_url}/metrics"))
                result.admin_status.append(await timed_get(world, f"{h.bridge_url}/api/admin/workspaces/{WS}", True))
            # the latency benchmark's load: PACED_CONVERSATIONS at one event every 0.6 s each
            paced_live = live[:PACED_CONVERSATIONS]
            paced = lat.write_messages(h, paced_live, args.paced, "paced")
            await lat.play(world, lat.schedule(paced, len(paced_live), 0.6))
            await lat.poll_until(lambda: lat.collect_posts(world, paced), 60, "the paced posts")
            result.paced = [s.latency for s in paced]
            result.others_cores = load.others()
            await lat.quiet(h, 0.3)
            result.rss_after = lat.vm_rss_mb(pid)
            result.rss_peak = lat.vm_rss_mb(pid, "VmHWM")
            result.rate_limited = len(h.ms.rate_limited)
            await lat.stop_bridge(world)
    except Exception as exc:
        log.exception("size %s failed", size)
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if mongo_db:
            await drop_mongo(mongo_db)
    return result


async def new_conversation(world: lat.World) -> None:
    """A conversation the bridge has not seen: its ``conversation.created`` sent like the
    other events, until its channel exists with its card."""
    h = world.h
    conversation = h.neeto.start_conversation(
        WS, visitor_name="Warm Up", visitor_email="warm@example.com", message="warming up"
    )
    event = next(e for e in reversed(h.neeto.events(WS)) if e["data"]["conversation"]["id"] == conversation["id"])
    send = lat.Send(0, "warming up", "", event)
    await lat.send_event(world, send)
    assert send.status == 200, f"conversation.created answered {send.status}"

    def opened() -> bool:
        channel = h.conversation_channel(conversation["number"])
        return channel is not None and bool(h.ms.posts(channel["id"]))

    await lat.poll_until(opened, 60, "the warm-up conversation's channel")


async def timed_get(world: lat.World, url: str, admin: bool = False) -> float:
    from tests.harness import ADMIN_TOKEN  # noqa: PLC0415

    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if admin else {}
    began = time.perf_counter()
    async with world.http.get(url, headers=headers) as resp:
        await resp.read()
        assert resp.status == 200, f"GET {url}: {resp.status}"
    return time.perf_counter() - began


def retry_policy_seconds() -> float:
    """What one msrest ``ClientRetryPolicy()`` costs here (botbuilder builds two per Teams
    call: the connector client's and the user-token client's configuration)."""
    try:
        from msrest.universal_http.requests import ClientRetryPolicy  # noqa: PLC0415
    except ImportError:
        return math.nan
    runs = [0.0] * 5
    for k in range(len(runs)):
        began = time.perf_counter()
        for _ in range(20):
            ClientRetryPolicy()
        runs[k] = (time.perf_counter() - began) / 20
    return statistics.median(runs)


async def start_bridge(world: lat.World, env: dict[str, str]) -> Any:
    return await lat.start_bridge_process(world, env, log_name=f"bridge-{time.monotonic_ns()}.log")


def open_bridge_store(world: lat.World, mongo_db: str | None) -> Store:
    from services.store import open_store  # noqa: PLC0415

    return open_store(os.environ.get("MONGODB_URI") if mongo_db else None, mongo_db or "", str(world.data_dir))


async def drop_mongo(name: str) -> None:
    from motor.motor_asyncio import AsyncIOMotorClient  # noqa: PLC0415

    client = AsyncIOMotorClient(os.environ["MONGODB_URI"])
    try:
        await client.drop_database(name)
    finally:
        client.close()


async def run_mongomock(size: int, args: argparse.Namespace) -> SizeResult:
    """The store operations only, on mongomock-motor (in memory, no indexes that speed
    anything up): a smoke check that the Mongo store's code path holds at this size."""
    result = SizeResult(size, "mongomock")
    try:
        from mongomock_motor import AsyncMongoMockClient  # noqa: PLC0415

        from services.store.base import Installation, Workspace  # noqa: PLC0415
        from services.store.mongo import MongoStore  # noqa: PLC0415

        store = MongoStore(AsyncMongoMockClient(), "bench_scale")
        await store.open()
        team_id = "19:bench-team@thread.tacv2"
        await store.put_workspace(Workspace(WS, "http://x", "k", "s", team_id=team_id))
        await store.put_installation(Installation(team_id, "group", "tenant", "http://x/", team_id))
        data = {"conversation": {"id": "c", "number": 1}, "message": {"id": "m", "body": "hello"}}
        template = {"id": "evt_x", "event": "message.created", "workspace": WS, "created_at": "", "data": data}
        filler = Filler(size, WS, team_id, template)
        began = time.monotonic()
        result.rows = await populate(store, filler, lambda p: None)
        result.populate_s = time.monotonic() - began
        result.ops = await time_ops(store, filler, team_id, max(10, args.reps // 10))
    except Exception as exc:
        log.exception("mongomock at %s failed", size)
        result.error = f"{type(exc).__name__}: {exc}"
    return result


# ------------------------------------------------------------------------------ reporting


def us(values: list[float]) -> str:
    return "-" if not values else f"{statistics.median(values) * 1e6:,.0f}"


def median_ms(values: list[float]) -> str:
    return "-" if not values else f"{statistics.median(values) * 1000:,.1f}"


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def size_label(size: int) -> str:
    return f"{size // 1000:,} k" if size >= 1000 and size % 1000 == 0 else f"{size:,}"


E2E_HEADER = [
    "conversation links",
    "rows: portals / message links / jobs",
    "store on disk (MB)",
    "bridge start (s)",
    "RSS: started / warm / after (MB)",
    "peak RSS (MB)",
    "per event, wall (ms)",
    "per event, bridge CPU (ms)",
    "wall / 1 k",
    "CPU / 1 k",
    "paced added latency p50 / p99 (ms)",
    "GET /metrics; admin status (ms)",
    "other processes' CPU (cores)",
]


def e2e_rows(results: list[SizeResult]) -> list[list[str]]:
    base = results[0] if results else None
    rows = []
    for r in results:
        if r.error and not r.walls:
            rows.append([size_label(r.size), f"FAILED: {r.error}", *["-"] * (len(E2E_HEADER) - 2)])
            continue
        rss_mark = " ✗" if r.size == RSS_GOAL_AT and (r.rss_after or 0) >= RSS_GOAL_MB else ""
        wr, cr = ratio(r.wall, base.wall), ratio(r.cpu, base.cpu)
        rows.append([
            size_label(r.size),
            f"{r.rows['portals']:,} / {r.rows['message_links']:,} / {r.rows['jobs']:,}",
            fmt(r.db_mb),
            fmt(r.startup_s, 1),
            f"{fmt(r.rss_start)} / {fmt(r.rss_warm)} / {fmt(r.rss_after)}{rss_mark}",
            fmt(r.rss_peak),
            f"{r.wall * 1000:.2f} ({min(r.walls) * 1000:.2f}–{max(r.walls) * 1000:.2f})",
            f"{r.cpu * 1000:.2f} ({min(r.cpus) * 1000:.2f}–{max(r.cpus) * 1000:.2f})",
            f"{wr:.2f}" + (" ✗" if wr > RATIO_GOAL else ""),
            f"{cr:.2f}" + (" ✗" if cr > RATIO_GOAL else ""),
            f"{lat.ms(lat.percentile(r.paced, 50))} / {lat.ms(lat.percentile(r.paced, 99))}",
            f"{median_ms(r.metrics_scrape)}; {median_ms(r.admin_status)}",
            "-" if r.others_cores is None else f"{r.others_cores:.2f} of {os.cpu_count()}",
        ])  # fmt: skip
    return rows


def _median(values: list[float] | None) -> float:
    return statistics.median(values) if values else math.nan


def _cell(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1e6:,.0f}"


def _ratio_cell(q: float, limit: float) -> str:
    return "-" if math.isnan(q) else f"{q:.2f}" + (" ✗" if q >= limit else "")


def ops_rows(results: list[SizeResult]) -> tuple[list[str], list[list[str]]]:
    """One row per operation: per size the median through the store's API and, for
    SQLite, the part spent in SQLite itself (its thread); the ratios largest / smallest."""
    sql = all(r.sql_ops for r in results)
    unit = "µs: API / in SQLite" if sql else "µs"
    header = ["store operation", *(f"{size_label(r.size)} ({unit})" for r in results)]
    many = len(results) > 1
    if many:
        span = f"{size_label(results[-1].size)} / {size_label(results[0].size)}"
        header += [f"{span}: API", f"{span}: in SQLite"] if sql else [span]
    rows = []

    def add(label: str, values: list[tuple[float, float]], limit: float) -> None:
        cells = [f"{_cell(a)} / {_cell(b)}" if sql else _cell(a) for a, b in values]
        row = [label, *cells]
        if many:  # ✗ on the in-SQLite ratio when there is one: the API figure includes the thread hop
            row.append(_ratio_cell(ratio(values[-1][0], values[0][0]), math.inf if sql else limit))
            if sql:
                row.append(_ratio_cell(ratio(values[-1][1], values[0][1]), limit))
        rows.append(row)

    for op in HOT_OPS + INBOUND_OPS + STATUS_OPS:
        values = [(_median(r.ops.get(op)), _median(r.sql_ops.get(op))) for r in results]
        add(f"`{op}`" + (" (hot path)" if op in HOT_OPS else ""), values, GROWS)
    sums = [(hot_path_per_event(r.ops), hot_path_per_event(r.sql_ops)) for r in results]
    add("**hot path, per event** (the above: `get_workspace` × 2, the others × 1)", sums, RATIO_GOAL)
    return header, rows


# Store calls one message.created event makes on the hot path (bench/latency.py counts them):
# the webhook reads the workspace and enqueues; the job reads the workspace again.
HOT_PATH_CALLS = {op: 1 for op in HOT_OPS} | {"get_workspace": 2}  # OpTimer.once makes exactly these


def hot_path_per_event(ops: dict[str, list[float]]) -> float:
    """Seconds of store calls per event: the medians of the hot-path operations, summed."""
    if not all(ops.get(op) for op in HOT_PATH_CALLS):
        return math.nan
    return sum(n * statistics.median(ops[op]) for op, n in HOT_PATH_CALLS.items())


def plan_lines(results: list[SizeResult]) -> list[str]:
    r = next((r for r in reversed(results) if r.plans), None)
    if r is None:
        return []
    lines = [f"Query plans at {size_label(r.size)} (`EXPLAIN QUERY PLAN` of the SQL each operation ran, traced):", ""]
    for op, plan in r.plans.items():
        full = scans(plan)
        text = "; ".join(dict.fromkeys(plan)) or "(no plan: a plain insert)"
        lines.append(f"- `{op}`: {'**' + ', '.join(full) + '** — ' if full else ''}{text}")
    return lines


def findings(results: list[SizeResult]) -> list[str]:
    """Operations whose cost grows with the store (GROWS × or more from the smallest size)."""
    if len(results) < 2:
        return []
    first, last = results[0], results[-1]
    out = []
    for op in HOT_OPS + INBOUND_OPS + STATUS_OPS:
        a, b = _median(first.ops.get(op)), _median(last.ops.get(op))
        sa, sb = _median(first.sql_ops.get(op)), _median(last.sql_ops.get(op))
        grew = ratio(sb, sa) if not math.isnan(ratio(sb, sa)) else ratio(b, a)
        if grew >= GROWS:
            inside = (
                "" if math.isnan(sb) else f"; in SQLite {sa * 1e6:,.0f} → {sb * 1e6:,.0f} µs ({ratio(sb, sa):.1f} ×)"
            )
            out.append(
                f"`{op}`: {a * 1e6:,.0f} µs at {size_label(first.size)} → {b * 1e6:,.0f} µs at "
                f"{size_label(last.size)} ({ratio(b, a):.1f} ×{inside})"
            )
    return out


def cpu_lines(results: list[SizeResult], args: argparse.Namespace) -> list[str]:
    """Where the bridge's CPU per event goes, as far as one known cost explains it."""
    r = next((r for r in results if r.cpus and not math.isnan(r.connector_calls)), None)
    t = getattr(args, "retry_policy", math.nan)
    if r is None or math.isnan(t):
        return []
    estimate = 2 * r.connector_calls * t
    return [
        f"**Where the CPU per event goes.** Each event made {r.connector_calls:.2f} Bot Connector calls in the "
        f"bursts (the post, and the coalesced card refresh). botbuilder's `CloudAdapter` builds a new connector "
        "client and a new user-token client for every call (`create_conversation`, `continue_conversation`), "
        "and each builds an msrest `Configuration` whose `ClientRetryPolicy()` computes its retry status list "
        f"with a quadratic list comprehension: {t * 1000:.2f} ms each here (timed in this run), so about "
        f"2 × {r.connector_calls:.2f} × {t * 1000:.2f} = {estimate * 1000:.1f} ms of the {r.cpu * 1000:.1f} ms "
        f"of bridge CPU per event at {size_label(r.size)} ({estimate / r.cpu:.0%}), whatever the store's size.",
        "",
    ]


def section(results: list[SizeResult], others: list[SizeResult], args: argparse.Namespace) -> str:
    sqlite = [r for r in results if r.backend == "sqlite"]
    parts = [
        "## Scale (issue 5)",
        "",
        f"Goals: RSS < {RSS_GOAL_MB:g} MB with {size_label(RSS_GOAL_AT)} conversation links; the per-event "
        f"cost with {size_label(SIZES[-1])} within {RATIO_GOAL} × the cost with {size_label(SIZES[0])} (indexes, "
        "no scans). Run with `python -m bench.scale` (about 10 minutes on 2 cores, most of it filling the 100 k "
        "store; `--quick` for fewer events and repetitions).",
        "",
        f"- Measured: {_report.today()}{' (quick run)' if args.quick else ''}",
        f"- Machine: {_report.machine()}",
        f"- Per size: {args.live} live conversations; {args.passes} bursts of "
        f"{args.events // args.live * args.live} events ({args.senders} webhook requests in flight; median "
        f"and range over the bursts); then {args.paced * min(args.live, PACED_CONVERSATIONS)} events paced at "
        f"one every 0.6 s per conversation over {min(args.live, PACED_CONVERSATIONS)} of them (the latency "
        f"benchmark's load) for the added latency; store operations {args.reps} times each (status operations "
        f"every {SLOW_EVERY}th time)",
        "",
        "### End to end (SQLite store, bridge as `python app.py`)",
        "",
        _report.markdown_table(E2E_HEADER, e2e_rows(sqlite)),
        "",
        f"![scale]({PLOT.relative_to(_report.ROOT / 'docs').as_posix()})",
        "",
        "Per event = time from the first webhook sent to the last post recorded by the Teams sandbox, divided by "
        "the events of the burst (ack + job + post, with the card refresh each message asks for); bridge CPU = "
        "the `python app.py` process's user + system time over the burst (from `/proc/<pid>/stat`), divided "
        "by the events: the steadier of the two figures on a shared machine. The rate limits are off in both "
        "the bridge (`TEAMS_*_LIMITS` empty) and the sandbox for the bursts, so they measure the bridge's "
        "work, not Teams' pace; the paced events stay below Teams' limits anyway. RSS is `VmRSS` of the "
        "bridge process after start, after a warm-up (one new conversation, so Graph, neetoChat's API and the "
        "cards are loaded too, then a burst) and after all the events; peak is `VmHWM`. "
        "`GET /metrics` and the operator status (`GET /api/admin/workspaces/acme`) were timed 5 times each on "
        "the running bridge after the bursts (median). *Other processes' CPU*: what the rest of the (shared) "
        "machine used meanwhile (`/proc/stat` minus this benchmark's and the bridge's processes), in cores; "
        "wall-clock figures taken while it is high are rougher, the paced latency's tail most.",
        "",
        *cpu_lines(sqlite, args),
        "**How the store was filled.** The workspace was connected and the live conversations got their "
        "channels through the bridge; then, with the bridge stopped, the store was filled directly, on the "
        "schema its own `open()` made, in transactions of 2,000 conversations: per conversation one portal "
        f"({OPEN_SHARE:.0%} still open, at most {OPEN_CAP}), {LINKS_PER_CONVERSATION} message links (intro "
        f"card, notification card, first message, 7 messages both ways) and {JOBS_PER_CONVERSATION} finished "
        f"jobs ({DEAD_SHARE:.1%} dead) with payloads shaped like real webhook events and Teams messages, all "
        "in the measured workspace (the worst case for per-workspace queries).",
        "",
        "### Store operations in isolation (SQLite)",
        "",
        "Median µs per call, two figures each: through the store's API as the bridge calls it (`SqliteStore` "
        "on one aiosqlite connection), and of that the time SQLite itself spent, measured inside aiosqlite's "
        "worker thread. The difference is the hop between the event loop and that thread, which does not "
        "depend on the store (the in-SQLite figure is the one that shows index behaviour). Measured in this "
        "benchmark's "
        "process on a copy of each size's store file taken after the bridge stopped and read once, all open at "
        "once, each repetition visiting every size in a random order (a busy moment of the shared machine lands "
        f"on every size alike), reopened every {BLOCK} repetitions in a rotated order, with the process pinned "
        "to one CPU (unpinned, where aiosqlite's threads land decides whether the hop costs 80 or 350 µs here, "
        "up to 3 × between two stores of a few MB). "
        "One repetition makes the store calls of one `message.created` event in the "
        "bridge's order (the hot path: the portal of a live conversation, the new message's link looked up "
        "and not found, its intent written and completed, the job enqueued, claimed, checked and finished), "
        "then looks up random rows of the whole history (*old row*: conversations long closed, the worst case "
        f"for caches){damon_note()}. `get_portal during a /metrics scrape` is a hot-path "
        "lookup issued while the reads of one `GET /metrics` (`job_counts()`, `open_channels_by_team()`) are "
        "running (its in-SQLite figure includes the scrape's work it waited for). The last columns are the "
        f"ratios between the largest and the smallest store; ✗ marks an in-SQLite ratio of {GROWS:g} × or more "
        f"(for the hot path per event: over the {RATIO_GOAL} × goal). `count_portals(workspace, open)` counts "
        f"the open portals, which grow with the store here ({OPEN_SHARE:.0%}, at most {OPEN_CAP}).",
        "",
    ]
    header, rows = ops_rows(sqlite)
    parts.append(_report.markdown_table(header, rows))
    found = findings(sqlite)
    if found:
        parts += ["", f"**Grows with the store** ({GROWS:g} × or more, ✗): " + "; ".join(found) + "."]
    parts += ["", *plan_lines(sqlite)]
    mongo = [r for r in results if r.backend == "mongo"]
    if mongo:
        parts += ["", "### MongoDB (`MONGODB_URI`)", "", _report.markdown_table(E2E_HEADER, e2e_rows(mongo)), ""]
        header, rows = ops_rows(mongo)
        parts.append(_report.markdown_table(header, rows))
    if others:
        header, rows = ops_rows(others)
        parts += [
            "",
            "### mongomock smoke check (not meaningful as figures)",
            "",
            "mongomock is an in-memory stand-in that scans its collections on every query: these numbers only "
            "show that the Mongo store's code path runs at this size, nothing about MongoDB.",
            "",
            _report.markdown_table(header, rows),
        ]
    for r in results + others:
        if r.error:
            parts += ["", f"**{r.backend} at {size_label(r.size)} failed**: {r.error}"]
    return "\n".join(parts)


def plot(results: list[SizeResult]) -> Path | None:
    sqlite = [r for r in results if r.backend == "sqlite" and r.ops]
    if len(sqlite) < 2 or not _plot.available():
        if not _plot.available():
            print("matplotlib is missing: no plot (pip install matplotlib)", file=sys.stderr)
        return None
    base = sqlite[0]
    x = [r.size for r in sqlite]
    series: dict[str, list[float]] = {}
    if all(r.walls for r in sqlite):
        series["per event, wall (end to end)"] = [ratio(r.wall, base.wall) for r in sqlite]
        series["per event, bridge CPU"] = [ratio(r.cpu, base.cpu) for r in sqlite]
    if all(r.rss_after for r in sqlite):
        series["bridge RSS after the events"] = [ratio(r.rss_after, base.rss_after) for r in sqlite]
    if all(r.sql_ops for r in sqlite):  # SQLite's own work: the thread hop is noise here
        sums = [hot_path_per_event(r.sql_ops) for r in sqlite]
        series["store, hot path per event (in SQLite)"] = [ratio(v, sums[0]) for v in sums]
    for op in ["job_counts(workspace)", "job_counts()", "open_channels_by_team()"]:
        if all(r.ops.get(op) for r in sqlite):
            table = [r.sql_ops if r.sql_ops.get(op) else r.ops for r in sqlite]
            b = statistics.median(table[0][op])
            series[f"store: {op}"] = [statistics.median(t[op]) / b for t in table]
    return _plot.line_chart(
        PLOT,
        f"Cost relative to {size_label(base.size)} conversation links (SQLite store)",
        x,
        series,
        "conversation links in the store",
        f"× the cost at {size_label(base.size)} (log)",
        logx=True,
        logy=True,
        goals={f"goal {RATIO_GOAL} ×": RATIO_GOAL},
    )


def print_results(results: list[SizeResult], others: list[SizeResult]) -> None:
    for backend in dict.fromkeys(r.backend for r in results):
        group = [r for r in results if r.backend == backend]
        print(f"\n{backend}: end to end")
        print(_report.text_table(E2E_HEADER, e2e_rows(group)))
        header, rows = ops_rows(group)
        print(f"\n{backend}: store operations in isolation")
        print(_report.text_table(header, rows))
        for line in findings(group):
            print(f"  grows: {line}")
        for line in plan_lines(group):
            print(line)
    if others:
        header, rows = ops_rows(others)
        print("\nmongomock smoke check (not meaningful)")
        print(_report.text_table(header, rows))
    for r in results + others:
        if r.error:
            print(f"{r.backend} {r.size}: FAILED {r.error}")


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--quick", action="store_true", help="fewer events, passes and repetitions")
    parser.add_argument("--sizes", help="comma-separated conversation counts (default 1000,10000,100000)")
    parser.add_argument("--live", type=int, default=20, help="live conversations the events go to")
    parser.add_argument("--events", type=int, help="events per burst (default 1000, quick 300)")
    parser.add_argument("--passes", type=int, help="bursts per size (default 3, quick 2)")
    parser.add_argument("--senders", type=int, default=16, help="webhook requests in flight")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up events per live conversation")
    parser.add_argument(
        "--paced", type=int, help=f"paced events per conversation, over {PACED_CONVERSATIONS} (default 20, quick 10)"
    )
    parser.add_argument("--reps", type=int, help="repetitions of each store operation (default 300, quick 100)")
    parser.add_argument(
        "--mongomock",
        type=int,
        metavar="N",
        help="also a mongomock smoke check of the store operations with N conversations (slow: mongomock scans "
        "its collections on every query; 200 is a few seconds, 1000 about ten minutes)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/performance.md")
    parser.add_argument("--verbose", action="store_true", help="this benchmark's log (INFO) on stderr")
    args, _unknown = parser.parse_known_args(argv)  # python -m bench passes every benchmark's options
    args.sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(SIZES)
    args.events = args.events or (300 if args.quick else 1000)
    args.passes = args.passes or (2 if args.quick else 3)
    args.paced = args.paced or (10 if args.quick else 20)
    args.reps = args.reps or (100 if args.quick else 300)
    if args.live < 1 or args.events < args.live:
        parser.error("need at least one live conversation and one event per live conversation")
    return args


def damon_note() -> str:
    """A note when the kernel reclaims cold page-cache pages proactively (DAMON), as some VMs do."""
    try:
        running = any(p.read_text().startswith("kdamond") for p in Path("/proc").glob("[0-9]*/comm"))
    except OSError:
        running = False
    if not running:
        return ""
    return (
        "; this VM's kernel reclaims cold file pages proactively (DAMON: `kdamond` runs), so a store file larger "
        "than what is touched often does not stay in the page cache, and a lookup of an old row at 100 k often "
        "reads from disk: that, not the index, is what the old-row figures show growing"
    )


def read_through(path: Path, chunk: int = 8 << 20) -> None:
    """Read a file once, so its pages are in the OS page cache (a copy is not, always)."""
    with open(path, "rb") as f:
        while f.read(chunk):
            pass


async def time_ops_interleaved(results: list[SizeResult], args: argparse.Namespace) -> None:
    """The store operations on each size's SQLite file (a copy of the bridge's store after
    it was filled, read once so it starts in the page cache), all stores open at once and
    each repetition visiting every size in a random order, so a busy moment of a shared
    machine lands on every size alike; reopened every ``BLOCK`` repetitions in a rotated
    order; this process pinned to one CPU meanwhile."""

    ready = [r for r in results if r.db_copy is not None and r.filler is not None]
    if not ready:
        return
    for r in ready:
        await asyncio.to_thread(read_through, r.db_copy)
    # One CPU for this thread and the aiosqlite threads started below: the hop between them
    # is then a switch on one CPU for every store alike (unpinned, where each thread lands
    # decides whether waking it costs 80 or 350 µs on this VM, whatever the store).
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if affinity:
        os.sched_setaffinity(0, {max(affinity)})
    try:
        await _time_ops_blocks(ready, args)
    finally:
        if affinity:
            os.sched_setaffinity(0, affinity)


async def _time_ops_blocks(ready: list[SizeResult], args: argparse.Namespace) -> None:
    from services.store.sqlite import SqliteStore  # noqa: PLC0415

    blocks = max(len(ready), math.ceil(args.reps / BLOCK))
    per_block = math.ceil(args.reps / blocks)
    rng = random.Random(0)
    print(f"  store operations: {blocks} × {per_block} repetitions on {len(ready)} stores, interleaved …", flush=True)
    for block in range(blocks):
        shift = block % len(ready)
        timers: list[tuple[SizeResult, OpTimer]] = []
        try:
            for r in ready[shift:] + ready[:shift]:
                store = SqliteStore(str(r.db_copy))
                await store.open()
                timers.append((r, OpTimer(store, r.filler, r.team_id)))
            for rep in range(per_block + WARMUP_REPS):
                if rep == WARMUP_REPS:  # the first repetitions after opening warm the caches: not counted
                    for _, timer in timers:
                        timer.reset()
                for _, timer in rng.sample(timers, len(timers)):
                    await timer.once()
        except Exception as exc:
            log.exception("store operations failed")
            for r in ready:
                r.error = r.error or f"store operations: {type(exc).__name__}: {exc}"
            return
        finally:
            for r, timer in timers:
                for op, values in timer.times.items():
                    r.ops.setdefault(op, []).extend(values)
                for op, values in timer.sql.items():
                    r.sql_ops.setdefault(op, []).extend(values)
                await timer.store.close()


async def run(args: argparse.Namespace) -> tuple[list[SizeResult], list[SizeResult]]:
    results: list[SizeResult] = []
    backends = ["sqlite"] + (["mongo"] if os.environ.get("MONGODB_URI") else [])
    with tempfile.TemporaryDirectory(prefix="bench-scale-stores-") as keep:
        for backend in backends:
            for size in args.sizes:
                print(f"{backend}: {size:,} conversation links …", flush=True)
                results.append(await run_size(size, args, backend, Path(keep)))
        await time_ops_interleaved(results, args)
    others: list[SizeResult] = []
    if args.mongomock:
        print(f"mongomock smoke check: {args.mongomock:,} conversation links …", flush=True)
        others.append(await run_mongomock(args.mongomock, args))
    return results, others


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    root = logging.getLogger()
    root.setLevel(logging.INFO if args.verbose else logging.WARNING)
    if args.verbose:
        root.addHandler(logging.StreamHandler())
    for noisy in ("aiohttp.access", "azure", "httpx", "msal"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args.retry_policy = retry_policy_seconds()
    results, others = asyncio.run(run(args))
    print_results(results, others)
    if not args.no_write:
        image = plot(results)
        path = _report.write_section(NAME, section(results, others, args))
        print(
            f"\nwrote {path.relative_to(_report.ROOT)}" + (f" and {image.relative_to(_report.ROOT)}" if image else "")
        )
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
