"""Webhook ingest: signed neetoChat ``message.created`` events per second through
``POST /api/neetochat/{ws}/webhooks`` (size, workspace, signature, shape, dedupe, durable
store, ack), as a ratio to a bare aiohttp handler that answers 200 and to a minimal webhook
receiver (signature, dedupe, SQLite with group commit, ack after the commit; and the same with
one commit per request), on the embedded store (SQLite) and on MongoDB; and the ack latency at
a fixed offered load. Goals, on SQLite: ≥ 40 % of bare aiohttp (issue 8), ≥ 0.9 × the minimal
receiver measured in the same run (issue 12).

    python -m bench.ingest [--quick] [--rounds N] [--duration S] [--backends sqlite,mongomock,mongodb]
                           [--teams-side linked|unlinked] [--no-latency] [--no-profile] [--no-write]

Every server runs as its own process pinned to core 0 (the bridge as ``python app.py``;
the references as ``python -m bench._load bare|minimal|minimal-single``, set up the same
way), the load generator
and the sandboxes on core 1 (``bench/_load.py``). Each round of each target is a fresh
world: new sandboxes, a new server with an empty store, the workspace connected (and, by
default, linked to a team with conversations open, so that the bridge delivers the events
to Teams in the background as it would in production). Throughput: wrk, closed loop,
replaying pre-signed events (``bench/lua/replay.lua``), each with its own delivery id;
latency: autocannon at an evenly paced 300/s (``bench/lua/autocannon_paced.js``). After
each round of the bridge or a minimal receiver its store is read back: every acknowledged
event must be stored, once.
Each figure is the median of the rounds; ratios compare medians measured in the same run.
MongoDB figures need ``MONGODB_URI``; without it the bridge runs on mongomock-motor (an
in-memory fake, a smoke check of the code path only, labelled so). ``--quick``: one short
round. Results are printed and written to docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import _load, _report

NAME = "ingest"
GOAL = 0.40  # the bridge on SQLite: at least 40 % of bare aiohttp's events/s (issue 8)
GOAL_MINIMAL = 0.90  # ... and at least 0.9 × the minimal webhook receiver's, same run (issue 12)
LATENCY_GOAL_MS = 25.0  # ... and p99 acknowledgement latency below this at 300 events/s (issue 12)
WS = "acme"  # sandbox/world.py's workspace
PATH = f"/api/neetochat/{WS}/webhooks"
FIGURES = _report.ROOT / "docs" / "performance"
INITIAL_ESTIMATE = 3000.0  # events/s the bridge might take, to size the first round's event file
BARE_RECORDS = 30_000  # the reference does not dedupe: its events may repeat

log = logging.getLogger("bench.ingest")


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    short: str  # on the plots
    tag: str  # in the rounds' names, so in event ids and file names: unique per target

    @property
    def bridge(self) -> bool:
        return self.key not in REFERENCES

    @property
    def stores(self) -> bool:
        """Dedupes and stores the events: needs distinct ones, and its store is checked."""
        return self.key != "bare"


REFERENCES = ("bare", "minimal", "minimal-single")  # served by ``python -m bench._load KIND``
TARGETS = {
    "bare": Target("bare", "bare aiohttp (reference)", "bare aiohttp", "ba"),
    "minimal": Target(
        "minimal", "minimal webhook receiver, group commit (reference)", "minimal receiver\n(group commit)", "mg"
    ),
    "minimal-single": Target(
        "minimal-single",
        "minimal webhook receiver, one commit per request (reference)",
        "minimal receiver\n(commit per request)",
        "m1",
    ),
    "sqlite": Target("sqlite", "bridge, SQLite", "bridge, SQLite", "sq"),
    "mongodb": Target("mongodb", "bridge, MongoDB", "bridge, MongoDB", "md"),
    "mongomock": Target("mongomock", "bridge, mongomock (smoke check only)", "bridge, mongomock\n(smoke check)", "mm"),
}


# ------------------------------------------------------------------------------ results


@dataclass
class StoreCheck:
    """The store read back after a bridge round, for the events of the measured run."""

    stored: int = 0
    duplicates: int = 0  # dedupe keys stored more than once
    unknown: int = 0  # stored events that were never sent
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    acked: int = 0
    issued: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.duplicates == 0
            and self.unknown == 0
            and self.acked <= self.stored <= self.issued
        )

    def text(self) -> str:
        if self.error:
            return f"not checked: {self.error}"
        verdict = "ok" if self.ok else "FAILED"
        by_status = ", ".join(f"{k} {n:,}" for k, n in sorted(self.statuses.items()))
        return (
            f"{verdict}: {self.acked:,} acked, {self.stored:,} stored ({by_status}), {self.issued:,} sent; "
            f"{self.duplicates} duplicates, {self.unknown} unknown"
        )


@dataclass
class ThroughputRound:
    target: Target
    result: _load.WrkResult
    check: StoreCheck | None
    records: int
    killed: bool = False


@dataclass
class LatencyRound:
    target: Target
    result: _load.PacedResult
    check: StoreCheck | None
    killed: bool = False


@dataclass
class Results:
    targets: list[Target]
    throughput: dict[str, list[ThroughputRound]] = field(default_factory=lambda: collections.defaultdict(list))
    latency: dict[str, list[LatencyRound]] = field(default_factory=lambda: collections.defaultdict(list))
    failures: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)  # rounds whose server had to be killed (no exit on SIGTERM)
    profile: _load.Profile | None = None
    profile_note: str | None = None
    load_before: str = ""
    load_after: str = ""

    def rates(self, key: str) -> list[float]:
        return [r.result.rate for r in self.throughput.get(key, [])]

    def ratio(self, key: str, base: str = "bare") -> float | None:
        """``key``'s median events/s over ``base``'s (same run)."""
        theirs, ours = self.rates(base), self.rates(key)
        if not theirs or not ours:
            return None
        return _load.median(ours) / _load.median(theirs)

    def checks_ok(self, key: str) -> bool:
        rounds = [*self.throughput.get(key, []), *self.latency.get(key, [])]
        return all(r.check is None or r.check.ok for r in rounds)


# ------------------------------------------------------------------------------ events


def message_events(
    conversations: list[dict[str, Any]], templates: dict[str, dict[str, Any]], tag: str, n: int, secret: str
) -> Iterator[_load.Req]:
    """``n`` signed ``message.created`` webhooks as the neetoChat sandbox sends them (same
    fields, headers and signature), round-robin over ``conversations``, each with its own
    event (= delivery) id and message id, timestamped now (they must arrive within 300 s)."""
    from sandbox.signing import sign

    ts = int(time.time())
    created = datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    for i in range(n):
        conversation = conversations[i % len(conversations)]
        template = templates[conversation["id"]]
        event = {
            "id": f"evt_{tag}_{i:07d}",
            "event": "message.created",
            "workspace": WS,
            "created_at": created,
            "data": {
                "conversation": conversation,
                "message": {**template, "id": f"msg_{tag}_{i:07d}", "body": f"load {tag} {i}", "created_at": created},
            },
        }
        body = json.dumps(event).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Neeto-Event": event["event"],
            "X-Neeto-Delivery": event["id"],
            "X-Neeto-Timestamp": str(ts),
            "X-Neeto-Signature": sign(secret, ts, body),
        }
        yield _load.Req("POST", PATH, headers, body)


def dedupe_prefix(tag: str) -> str:
    """services/inbox.py's dedupe key of the events of ``tag``."""
    return f"evt:{WS}:evt_{tag}_"


# ------------------------------------------------------------------------------ one world


class World:
    """Fresh sandboxes and a fresh server for ``target``; ``async with`` starts and prepares
    them, ``check`` reads the bridge's store back after ``stop``."""

    def __init__(self, target: Target, args: argparse.Namespace, tmp: Path, name: str) -> None:
        self.target = target
        self.args = args
        self.tmp = tmp
        self.name = name
        self.conversations: list[dict[str, Any]] = []
        self.templates: dict[str, dict[str, Any]] = {}
        self.server: _load.Server | None = None
        self.data_dir = tmp / f"{name}-data"
        self.dump = tmp / f"{name}-jobs.json"
        self.events_db = tmp / f"{name}-events.sqlite3"  # the minimal receivers'
        self.mongo_db = f"bench_ingest_{uuid.uuid4().hex[:8]}"
        self._sandboxes: Any = None
        self.h: Any = None
        self.stopped = False

    async def __aenter__(self) -> World:
        from tests.harness import WEBHOOK_SECRET, bridge_env

        self.secret = WEBHOOK_SECRET
        self._sandboxes = _load.sandboxes()
        self.h = h = await self._sandboxes.__aenter__()
        try:
            port = _load.free_port()
            log_path = self.tmp / f"{self.name}.log"
            env = bridge_env(h.ms, self.data_dir, port)
            if self.target.key == "bare":
                self.server = _load.reference_server("bare", port, log_path)
            elif self.target.key in ("minimal", "minimal-single"):
                extra = ["--db", str(self.events_db)]
                self.server = _load.reference_server(self.target.key, port, log_path, extra=extra)
            elif self.target.key == "mongomock":
                extra = ["--dump", str(self.dump)]
                self.server = _load.reference_server("bridge-mongomock", port, log_path, env=env, extra=extra)
            else:
                if self.target.key == "mongodb":
                    env.update(MONGODB_URI=os.environ["MONGODB_URI"], MONGODB_DB=self.mongo_db)
                self.server = _load.bridge_server(env, port, log_path)
            await self.server.start()
            h.set_bridge(self.server.url)
            await self._prepare()
        except BaseException:
            await self.__aexit__(*sys.exc_info())
            raise
        return self

    async def _prepare(self) -> None:
        h, count = self.h, self.args.conversations
        if self.target.bridge and self.args.teams_side == "linked":
            await h.connect()
            started = await _load.open_conversations(h, count)
        else:
            if self.target.bridge:
                await _load.connect_workspace(h)
            # the events' conversations exist in neetoChat, but no webhook reaches the server
            started = [
                h.neeto.start_conversation(WS, visitor_name=f"V{c}", visitor_email=f"v{c}@example.com", message="hi")
                for c in range(count)
            ]
        self.conversations = [h.neeto.conversation(WS, c["id"]) for c in started]
        self.templates = {c["id"]: h.neeto.messages(WS, c["id"])[0] for c in started}

    def events(self, tag: str, n: int) -> Iterator[_load.Req]:
        return message_events(self.conversations, self.templates, tag, n, self.secret)

    async def stop(self) -> None:
        if self.server is not None and not self.stopped:
            self.stopped = True
            code = await self.server.stop()
            if code not in (0, None, -15):
                log.warning("%s exited with %s: %s", self.server.name, code, self.server.log_tail(800))

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.stop()
        finally:
            await self._sandboxes.__aexit__(*exc)
            if self.target.key == "mongodb":
                await asyncio.to_thread(self._drop_mongo)

    # the store, read back ------------------------------------------------------------
    async def stored_jobs(self) -> list[tuple[str, str]]:
        """(dedupe key, status) of every job, read from the store after the server stopped."""
        if self.target.key == "sqlite":
            db = sqlite3.connect(f"file:{self.data_dir / 'bridge.sqlite3'}?mode=ro", uri=True)
            try:
                return [(k, s) for k, s in db.execute("SELECT dedupe_key, status FROM jobs")]
            finally:
                db.close()
        if self.target.key == "mongomock":
            return [(j["dedupe_key"], j["status"]) for j in json.loads(self.dump.read_text())]
        if self.target.key == "mongodb":
            return await asyncio.to_thread(self._mongo_jobs)
        if self.target.key in ("minimal", "minimal-single"):  # their rows, keyed as the bridge keys its jobs
            db = sqlite3.connect(f"file:{self.events_db}?mode=ro", uri=True)
            try:
                rows = db.execute("SELECT workspace, delivery_id FROM events")
                return [(f"evt:{ws}:{d}", "stored") for ws, d in rows]
            finally:
                db.close()
        return []

    def _mongo_jobs(self) -> list[tuple[str, str]]:
        import pymongo

        with pymongo.MongoClient(os.environ["MONGODB_URI"]) as client:
            jobs = client[self.mongo_db].jobs.find({}, {"dedupe_key": 1, "status": 1})
            return [(j["dedupe_key"], j["status"]) for j in jobs]

    def _drop_mongo(self) -> None:
        import pymongo

        with pymongo.MongoClient(os.environ["MONGODB_URI"]) as client:
            client.drop_database(self.mongo_db)

    async def check(self, tag: str, sent: int, acked: int, issued: int) -> StoreCheck:
        """The events of ``tag`` in the store: each at most once, only ones sent, and at
        least as many as were acknowledged (the ones wrk gave up on at the end, in flight,
        may or may not have been stored)."""
        result = StoreCheck(acked=acked, issued=issued)
        try:
            jobs = await self.stored_jobs()
        except Exception as exc:  # noqa: BLE001 - reported in the table
            result.error = f"{type(exc).__name__}: {exc}"
            return result
        prefix = dedupe_prefix(tag)
        keys = collections.Counter(k for k, _ in jobs if k.startswith(prefix))
        result.stored = len(keys)
        result.duplicates = sum(1 for n in keys.values() if n > 1)
        sent_keys = {f"{prefix}{i:07d}" for i in range(min(sent, issued))}
        result.unknown = sum(1 for k in keys if k not in sent_keys)
        result.statuses = collections.Counter(s for k, s in jobs if k.startswith(prefix))
        return result


# ------------------------------------------------------------------------------ rounds


async def throughput_round(
    target: Target, args: argparse.Namespace, tmp: Path, name: str, estimate: float
) -> ThroughputRound:
    """Warm up, then wrk for ``args.duration`` s. A target that stores the events (the bridge,
    the minimal receivers) gets enough distinct ones for ``estimate`` × 2 events/s; if wrk
    still runs out, the round is run again with more."""
    for attempt in range(3):
        async with World(target, args, tmp, f"{name}-{attempt}") as world:
            host = f"{_load.HOST}:{world.server.port}"
            url = world.server.url + PATH
            warm_n = int(estimate * 2 * args.warmup) + 500 if target.stores else BARE_RECORDS
            if args.warmup > 0:
                _load.write_wrk_records(tmp / "warm.bin", world.events(f"{name}w", warm_n), host)
                await _load.run_wrk(url, tmp / "warm.bin", args.warmup, connections=args.connections)
            n = int(estimate * 2 * args.duration) + 2000 if target.stores else BARE_RECORDS
            tag = f"{name}m"
            _load.write_wrk_records(tmp / "run.bin", world.events(tag, n), host)
            result = await _load.run_wrk(url, tmp / "run.bin", args.duration, connections=args.connections)
            await world.stop()
            if result.wrapped and target.stores:
                estimate = max(estimate * 2, result.rate * 1.5)
                log.warning("%s: %d events were not enough, again with more", name, n)
                continue
            check = await world.check(tag, n, result.acked, result.issued) if target.stores else None
            return ThroughputRound(target, result, check, n, killed=world.server.killed)
    raise RuntimeError(f"{name}: wrk kept running out of events")


async def latency_round(
    target: Target, args: argparse.Namespace, tmp: Path, name: str, autocannon: _load.Autocannon
) -> LatencyRound:
    async with World(target, args, tmp, name) as world:
        tag = f"{name}m"
        n = args.rate * (args.latency_duration + 8)
        _load.write_paced_records(tmp / "paced.jsonl", world.events(tag, n))
        result = await autocannon.run_paced(world.server.url, tmp / "paced.jsonl", args.rate, args.latency_duration)
        await world.stop()
        check = None
        if target.stores:
            check = await world.check(tag, n, result.all_acked, result.issued)
        return LatencyRound(target, result, check, killed=world.server.killed)


async def profile_run(args: argparse.Namespace, tmp: Path) -> tuple[_load.Profile | None, str | None]:
    """The bridge (SQLite) under wrk, sampled by py-spy for ``args.profile_duration`` s."""
    if _load.py_spy() is None:
        return None, "py-spy is not installed (`pip install py-spy`): no profile"
    target = TARGETS["sqlite"]
    async with World(target, args, tmp, "profile") as world:
        host = f"{_load.HOST}:{world.server.port}"
        seconds = args.profile_duration + 2
        _load.write_wrk_records(tmp / "profile.bin", world.events("profile", int(INITIAL_ESTIMATE * 2 * seconds)), host)
        load = asyncio.create_task(
            _load.run_wrk(world.server.url + PATH, tmp / "profile.bin", seconds, connections=args.connections)
        )
        await asyncio.sleep(1)
        out = tmp / "profile.txt"
        problem = await _load.profile(world.server.pid, args.profile_duration, out)
        await load
        if args.profile_out and out.exists():
            shutil.copyfile(out, args.profile_out)
        await world.stop()
    if problem:
        return None, problem
    return _load.read_profile(out), None


async def run(args: argparse.Namespace) -> Results:
    targets = [*(TARGETS[k] for k in REFERENCES), *(TARGETS[k] for k in args.backends)]
    results = Results(targets, load_before=_load.load_average())
    autocannon = _load.Autocannon()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            estimates = {t.key: INITIAL_ESTIMATE for t in targets}
            for r in range(args.rounds):
                for target in targets:  # interleaved: a slow moment of the machine hits every target
                    name = f"t{r}{target.tag}"
                    print(f"throughput, round {r + 1}/{args.rounds}: {target.label} …", flush=True)
                    try:
                        rnd = await throughput_round(target, args, tmp, name, estimates[target.key])
                    except Exception as exc:
                        log.exception("%s failed", name)
                        results.failures.append(f"throughput {target.label}, round {r + 1}: {exc}")
                        continue
                    estimates[target.key] = max(estimates[target.key], rnd.result.rate)
                    results.throughput[target.key].append(rnd)
                    if rnd.killed:
                        results.killed.append(f"throughput, {target.label}, round {r + 1}")
                    print(
                        f"  {rnd.result.rate:,.0f}/s, p50 {rnd.result.latency_ms['p50']:.2f} ms"
                        + (f"; store {rnd.check.text()}" if rnd.check else ""),
                        flush=True,
                    )
            if not args.no_latency:
                if not await autocannon.install():
                    results.failures.append(f"latency not measured: {autocannon.problem}")
                else:
                    for r in range(args.rounds):
                        # mongomock takes a few hundred events/s: the paced rate would only measure its queue
                        for target in (t for t in targets if t.key != "mongomock"):
                            name = f"l{r}{target.tag}"
                            print(
                                f"latency at {args.rate}/s, round {r + 1}/{args.rounds}: {target.label} …", flush=True
                            )
                            try:
                                rnd = await latency_round(target, args, tmp, name, autocannon)
                            except Exception as exc:
                                log.exception("%s failed", name)
                                results.failures.append(f"latency {target.label}, round {r + 1}: {exc}")
                                continue
                            results.latency[target.key].append(rnd)
                            if rnd.killed:
                                results.killed.append(f"latency, {target.label}, round {r + 1}")
                            p = rnd.result.percentiles_ms
                            print(
                                f"  p50 {p['p50']:.2f} ms, p99 {p['p99']:.2f} ms, {rnd.result.achieved:,.0f}/s"
                                + (f"; store {rnd.check.text()}" if rnd.check else ""),
                                flush=True,
                            )
            if not args.no_profile and "sqlite" in args.backends:
                print("profile: bridge, SQLite, under wrk …", flush=True)
                try:
                    results.profile, results.profile_note = await profile_run(args, tmp)
                except Exception as exc:
                    log.exception("profile failed")
                    results.profile_note = f"profile failed: {exc}"
        finally:
            autocannon.cleanup()
    results.load_after = _load.load_average()
    return results


# ------------------------------------------------------------------------------ reporting


def ratio_cell(results: Results, target: Target, base: str, fmt: str, goal: float | None) -> str:
    """``target``'s ratio to ``base`` (median, per-round range), marked against ``goal``
    on the SQLite row."""
    ratio = results.ratio(target.key, base)
    if target.key == base:
        return "1 (reference)"
    if ratio is None:
        return "-"
    pairs = zip(results.throughput.get(target.key, []), results.throughput.get(base, []), strict=False)
    per_round = [o.result.rate / b.result.rate for o, b in pairs]
    text = fmt.format(ratio)
    if len(per_round) > 1:
        text += f" ({fmt.format(min(per_round))}–{fmt.format(max(per_round))})"
    if target.key == "sqlite" and goal is not None:
        text += " ✓" if ratio >= goal else " ✗"
    return text


def throughput_rows(results: Results) -> list[list[str]]:
    rows = []
    for target in results.targets:
        rounds = results.throughput.get(target.key, [])
        if not rounds:
            rows.append([target.label, "0", "FAILED", "-", "-", "-", "-", "-"])
            continue
        rates = [r.result.rate for r in rounds]
        p50 = _load.median([r.result.latency_ms["p50"] for r in rounds])
        p99 = _load.median([r.result.latency_ms["p99"] for r in rounds])
        checks = [r.check for r in rounds if r.check]
        check = "-" if not checks else ("ok" if all(c.ok for c in checks) else "FAILED")
        errors = sum(r.result.non_2xx + r.result.socket_errors for r in rounds)
        rows.append(
            [
                target.label,
                str(len(rounds)),
                _load.spread(rates),
                ratio_cell(results, target, "bare", "{:.0%}", GOAL),
                ratio_cell(results, target, "minimal", "{:.2f}×", GOAL_MINIMAL),
                f"{p50:.2f} / {p99:.2f}",
                str(errors),
                check,
            ]
        )
    return rows


THROUGHPUT_HEADER = [
    "target",
    "rounds",
    "events/s: median (min–max)",
    "ratio to bare aiohttp (per-round range)",
    "ratio to the minimal receiver",
    "latency under that load, p50 / p99 (ms)",
    "errors",
    "store check",
]


def latency_rows(results: Results) -> list[list[str]]:
    rows = []
    bare = results.latency.get("bare", [])
    bare_p50 = _load.median([r.result.percentiles_ms["p50"] for r in bare]) if bare else None
    bare_p99 = _load.median([r.result.percentiles_ms["p99"] for r in bare]) if bare else None
    for target in results.targets:
        rounds = results.latency.get(target.key, [])
        if not rounds:
            continue
        med = {
            k: _load.median([r.result.percentiles_ms[k] for r in rounds]) for k in ("p50", "p90", "p99", "p99.9", "max")
        }
        achieved = _load.median([r.result.achieved for r in rounds])
        if target.key == "bare" or not bare_p50:
            vs = "1 (reference)" if target.key == "bare" else "-"
        else:
            vs = f"{med['p50'] / bare_p50:.1f}× / {med['p99'] / bare_p99:.1f}×"
        checks = [r.check for r in rounds if r.check]
        check = "-" if not checks else ("ok" if all(c.ok for c in checks) else "FAILED")
        errors = sum(r.result.non_2xx + r.result.errors for r in rounds)
        rows.append([
            target.label, str(len(rounds)), f"{achieved:,.0f}",
            _load.spread([r.result.percentiles_ms["p50"] for r in rounds], "{:.2f}"),
            f"{med['p90']:.2f}",
            _load.spread([r.result.percentiles_ms["p99"] for r in rounds], "{:.2f}"),
            f"{med['p99.9']:.2f}", f"{med['max']:.1f}", vs, str(errors), check,
        ])  # fmt: skip
    return rows


LATENCY_HEADER = [
    "target",
    "rounds",
    "answered/s",
    "p50 (ms)",
    "p90",
    "p99",
    "p99.9",
    "max",
    "p50 / p99 vs bare",
    "errors",
    "store check",
]


def check_lines(results: Results) -> list[str]:
    lines = []
    for target in results.targets:
        if not target.stores:
            continue
        for kind, rounds in (
            ("throughput", results.throughput.get(target.key, [])),
            ("latency", results.latency.get(target.key, [])),
        ):
            for i, r in enumerate(rounds):
                if r.check:
                    lines.append(f"- {target.label}, {kind} round {i + 1}: {r.check.text()}")
    return lines


def figures(results: Results) -> list[str]:
    out = []
    present = [t for t in results.targets if results.throughput.get(t.key)]
    labels = [t.short for t in present]
    rounds = [results.rates(t.key) for t in present]
    bare, minimal = results.rates("bare"), results.rates("minimal")
    goals = []
    if bare:
        goals.append((GOAL * _load.median(bare), f"goal: {GOAL:.0%} of bare aiohttp"))
    if minimal:
        goals.append((GOAL_MINIMAL * _load.median(minimal), f"goal: {GOAL_MINIMAL:g} × minimal receiver"))
    path = _load.plot_bars(
        FIGURES / "ingest_throughput.png",
        "Webhook ingest: events/s (median, range of rounds)",
        labels,
        rounds,
        "events/s",
        goal=goals,
        note="server on one core (taskset -c 0), wrk on the other",
        references=sum(1 for t in present if not t.bridge),
    )
    if path:
        out.append(f"![webhook ingest throughput](performance/{path.name})")
    series = {
        t.short.replace("\n", " "): {
            k: _load.median([r.result.percentiles_ms[k] for r in results.latency[t.key]])
            for k in ("p50", "p90", "p99", "p99.9", "max")
        }
        for t in results.targets
        if results.latency.get(t.key)
    }
    if series:
        rate = next(r.result.rate for rounds in results.latency.values() for r in rounds)
        path = _load.plot_percentiles(
            FIGURES / "ingest_latency.png",
            f"Webhook ack latency at an evenly paced {rate:,.0f} events/s (median of rounds)",
            series,
            note=f"autocannon, one request every {1000 / rate:.1f} ms",
        )
        if path:
            out.append(f"![webhook ack latency](performance/{path.name})")
    return out


def verdict(results: Results, bold: str = "**") -> str:
    """The headline: the bridge on SQLite against both goals."""
    checks = []
    to_bare, to_minimal = results.ratio("sqlite"), results.ratio("sqlite", "minimal")
    if to_bare is not None:
        met = "met" if to_bare >= GOAL else "NOT met"
        checks.append(f"{bold}{to_bare:.0%}{bold} of bare aiohttp (≥ {GOAL:.0%} of bare, issue 8: {met})")
    if to_minimal is not None:
        met = "met" if to_minimal >= GOAL_MINIMAL else "NOT met"
        checks.append(
            f"{bold}{to_minimal:.2f}×{bold} the minimal receiver (≥ {GOAL_MINIMAL:g} × minimal receiver, "
            f"issue 12: {met})"
        )
    rounds = results.latency.get("sqlite", [])
    if rounds:
        p99 = _load.median([r.result.percentiles_ms["p99"] for r in rounds])
        rate = rounds[0].result.rate
        met = "met" if p99 < LATENCY_GOAL_MS and rate >= 300 else "NOT met"
        goal = f"< {LATENCY_GOAL_MS:g} ms at 300/s, issue 12"
        checks.append(f"p99 {bold}{p99:.1f} ms{bold} at {rate:,.0f}/s ({goal}: {met})")
    return "the bridge on SQLite takes " + ", ".join(checks) if checks else "not measured"


def section(results: Results, args: argparse.Namespace) -> str:
    mongo = (
        "MongoDB: a real server (`MONGODB_URI`)"
        if "mongodb" in args.backends
        else "MongoDB: not measured against a real server (`MONGODB_URI` unset); the mongomock row is an in-memory "
        "fake, a smoke check that the code path holds up, not a MongoDB figure (throughput only: it takes a few "
        f"hundred events/s, so {args.rate}/s would only measure its queue)"
    )
    teams_side = (
        f"linked to a team, with {args.conversations} conversations open, so the bridge delivers the events to "
        "Teams (the Microsoft sandbox, Teams' published rate limits) in the background while it takes them in, "
        "as in production; most events are still pending at the end of a run (the backlog). Not linked, every "
        "event would become a dead letter at once, and what the bridge does per dead letter (an error line, and a "
        "warning that there is no team to tell) would be measured instead"
        if args.teams_side == "linked"
        else "connected but not linked to a team: each event becomes a dead letter as soon as the job loop reaches it"
    )
    cores = (
        "server on core 0 (`taskset -c 0`), wrk / autocannon / sandboxes on core 1"
        if _load.can_pin()
        else "not pinned (fewer than 2 cores or no taskset)"
    )
    parts = [
        "## Webhook ingest",
        "",
        f"Goal: the bridge takes signed `message.created` webhooks, on SQLite, at ≥ {GOAL:.0%} of the rate a bare "
        f"aiohttp handler answers them (issue 8), and at ≥ {GOAL_MINIMAL:g} × the rate of a minimal webhook "
        "receiver (signature, dedupe, SQLite with group commit, ack after the commit) measured in the same run, "
        f"with p99 acknowledgement latency < {LATENCY_GOAL_MS:g} ms at 300 events/s (issue 12). "
        f"Result: {verdict(results)}. Run with `python -m bench.ingest` (about "
        f"{estimated_minutes(args):.0f} minutes; `--quick` for a short look).",
        "",
        f"- Measured: {_report.today()}{' (**--quick**: short, single-round figures)' if args.quick else ''}",
        f"- Machine: {_report.machine()}; load average (1 / 5 min) {results.load_before} before, "
        f"{results.load_after} after",
        f"- Cores: {cores}",
        f"- Rounds: {args.rounds}, each on a fresh world; throughput runs {args.duration:g} s after {args.warmup:g} s "
        f"of warm-up, {args.connections} connections; latency runs {args.latency_duration:g} s at {args.rate}/s",
        f"- {mongo}",
        "",
        "### Throughput",
        "",
        _report.markdown_table(THROUGHPUT_HEADER, throughput_rows(results)),
        "",
    ]
    lat = latency_rows(results)
    if lat:
        parts += [
            f"### Ack latency at {args.rate} events/s",
            "",
            _report.markdown_table(LATENCY_HEADER, lat),
            "",
        ]
    parts += figures(results)
    parts += [
        "",
        "**Method.** Each round of each target runs on a fresh world: the neetoChat and Microsoft 365 sandboxes "
        "in the benchmark's process, and the server under test as its own process, pinned to core 0: the bridge "
        "as `python app.py` (embedded store in a temporary `DATA_DIR`, or `MONGODB_URI`; mongomock through "
        "`python -m bench._load bridge-mongomock`, the same app on a mongomock store), the references as "
        "`python -m bench._load KIND`: `bare` (an aiohttp handler that reads the body and answers 200), and the "
        "minimal webhook receivers `minimal` and `minimal-single` (aiohttp and aiosqlite, as the bridge, in about "
        "70 lines: the body read up to 1 MiB, the timestamp within 300 s, the HMAC-SHA256 signature compared in "
        "constant time (one secret, no workspace lookup), `json.loads`, then `(delivery_id UNIQUE, workspace, "
        'body)` inserted into a SQLite file (WAL, `synchronous=NORMAL`) and 200 `{"stored": …}` answered '
        "after the commit; `minimal` commits in groups: the requests that arrive while a write is in flight wait "
        "and the next writer inserts them all in one statement, as the bridge's store does with its enqueues; "
        "`minimal-single` commits each request on its own), all served the same way (`web.run_app`, the "
        "bridge's logging setup, so the same access log settings). The "
        f"workspace is {teams_side}. The events are rendered before each run as the neetoChat sandbox sends them "
        "(same JSON, headers, HMAC signature over `timestamp.body`, a timestamp from the last few seconds), "
        "each with its own delivery id and message id, round-robin over the open conversations; the load "
        "generators replay them and send none twice. **Throughput:** Debian's wrk 4.1 (`bench/lua/replay.lua`), "
        f"one thread, {args.connections} connections, closed loop: events/s = answered requests / duration; the "
        "references take the same requests. **Latency:** autocannon "
        f"{_load.AUTOCANNON_VERSION} (npm, installed into a temporary prefix at run time; Debian has no wrk2 "
        "and wrk cannot hold a rate), through `bench/lua/autocannon_paced.js`: autocannon's own `-R` sends "
        "each connection's quota for the second back to back at the top of every second (bursts of up to "
        f"{args.rate}), so the driver runs {args.rate} single-connection autocannon instances at 1 request/s "
        f"each, started {1000 / args.rate:g} ms apart: one request every {1000 / args.rate:g} ms, none waiting "
        "for another; latencies are autocannon's per-response times (sub-millisecond), counted after a ramp-up. "
        "**Store check:** after each round of the bridge and of the minimal receivers the server is stopped "
        "(SIGTERM) and its store read back (the SQLite file, the MongoDB database, mongomock's jobs dumped at "
        "exit, the minimal receivers' events table): every acknowledged event must be "
        "stored, exactly once (the dedupe key is the delivery id), and nothing else; events wrk had in flight "
        "when it stopped may or may not be stored (acked ≤ stored ≤ sent). Each figure is the median of the "
        "rounds, targets interleaved round by round; ratios are of medians measured in the same run.",
        "",
        "Store checks:",
        "",
        *check_lines(results),
        *killed_lines(results.killed),
        "",
        "### Profile: the webhook path",
        "",
        *_load.profile_lines(
            results.profile, results.profile_note, f"The bridge (SQLite) under wrk for {args.profile_duration:g} s,"
        ),
    ]
    if results.failures:
        parts += ["", "**Failures:**", "", *(f"- {f}" for f in results.failures)]
    return "\n".join(parts)


def killed_lines(killed: list[str]) -> list[str]:
    """Servers that did not exit within 60 s of SIGTERM (then killed; their store was read after)."""
    if not killed:
        return []
    return [
        "",
        f"The server did not exit within 60 s of SIGTERM and was killed (its store read back after) in: "
        f"{'; '.join(killed)}.",
    ]


def estimated_minutes(args: argparse.Namespace) -> float:
    n = len(REFERENCES) + len(args.backends)
    per_round = n * (args.duration + args.warmup + 6)
    if not args.no_latency:
        per_round += n * (args.latency_duration + 12)
    return (args.rounds * per_round + (0 if args.no_profile else args.profile_duration + 10)) / 60


def print_results(results: Results) -> None:
    print()
    print(_report.text_table(THROUGHPUT_HEADER, throughput_rows(results)))
    print(f"\nresult: {verdict(results, bold='')}")
    lat = latency_rows(results)
    if lat:
        print()
        print(_report.text_table(LATENCY_HEADER, lat))
    _load.print_profile(results.profile, results.profile_note)
    for failure in results.failures:
        print(f"FAILED: {failure}")


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--quick", action="store_true", help="one short round (figures only indicative)")
    parser.add_argument("--rounds", type=int, help="rounds per target (default 3; --quick 1)")
    parser.add_argument("--duration", type=float, help="seconds of each throughput run (default 10; --quick 3)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up before it (default 2; --quick 1)")
    parser.add_argument("--latency-duration", type=float, help="seconds of each latency run (default 10; --quick 3)")
    parser.add_argument("--rate", type=int, default=300, help="offered load of the latency runs (default 300/s)")
    parser.add_argument("--connections", type=int, default=_load.WRK_CONNECTIONS, help="wrk connections (default 32)")
    parser.add_argument(
        "--backends",
        help="bridge stores, comma-separated: sqlite, mongomock, mongodb "
        "(default: sqlite,mongodb with MONGODB_URI, else sqlite,mongomock)",
    )
    parser.add_argument(
        "--teams-side",
        choices=["linked", "unlinked"],
        default="linked",
        help="the workspace linked to a team with conversations open (default), or only connected",
    )
    parser.add_argument("--conversations", type=int, default=10, help="conversations the events go to (default 10)")
    parser.add_argument("--profile-duration", type=float, help="seconds of py-spy sampling (default 10; --quick 4)")
    parser.add_argument("--profile-out", type=Path, help="also keep py-spy's collapsed stacks there")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/performance.md")
    parser.add_argument("--verbose", action="store_true")
    args, _unknown = parser.parse_known_args(argv)  # python -m bench hands every benchmark the same options
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 3)
    args.duration = args.duration or (3 if quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    args.latency_duration = args.latency_duration or (3 if quick else 10)
    args.profile_duration = args.profile_duration or (4 if quick else 10)
    if args.backends:
        args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        unknown = [b for b in args.backends if b not in TARGETS or not TARGETS[b].bridge]
        if unknown:
            parser.error(f"unknown backends: {unknown}")
        if "mongodb" in args.backends and not os.environ.get("MONGODB_URI"):
            parser.error("the mongodb backend needs MONGODB_URI")
    else:
        args.backends = ["sqlite", "mongodb" if os.environ.get("MONGODB_URI") else "mongomock"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s %(message)s"
    )
    missing = [tool for tool, ok in (("wrk", _load.wrk_available()),) if not ok]
    if missing:
        print("wrk is missing: install Debian's with `apt-get install -y wrk`", file=sys.stderr)
        return 1
    with _load.on_load_core():
        results = asyncio.run(run(args))
    print_results(results)
    if not args.no_write:
        path = _report.write_section(NAME, section(results, args))
        print(f"\nwrote {path.relative_to(_report.ROOT)}")
    ok = not results.failures and all(results.checks_ok(t.key) for t in results.targets)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
