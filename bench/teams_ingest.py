"""Teams → neetoChat ingest: channel message activities per second through
``POST /api/messages`` (local mode, no JWT) until stored as jobs and acknowledged, as a
ratio to Microsoft's echo bot sample and to a bare aiohttp handler. Goal: ≥ 70 % of the
echo bot.

    python -m bench.teams_ingest [--quick] [--rounds N] [--duration S] [--no-profile] [--no-write]

Every server runs as its own process pinned to core 0 (``bench/_load.py``): the bridge as
``python app.py`` on the embedded store, linked to a team with conversations open; the
echo bot as ``python -m bench._load echo`` (``CloudAdapter(ConfigurationBotFrameworkAuthentication
(config))``, an ``ActivityHandler`` sending one reply per message), its replies going to a
Bot Connector stand-in (``python -m bench._load connector``, 201 with an id) on core 1; the
bare reference as ``python -m bench._load bare``. wrk (``bench/lua/replay.lua``) replays the
same pre-rendered activities to each: Teams' shape (the Microsoft sandbox's ``user_posts``
without delivering), new root posts in the conversations' channels, round-robin, each with
its own id. After each
bridge round the benchmark waits for the bridge to deliver everything to the neetoChat
sandbox and checks that each acknowledged activity is stored once and reached neetoChat
exactly once; after each echo round, that the connector got one reply per acknowledged
activity. Each figure is the median of the rounds. Results are printed and written to
docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import _load, _report
from bench.ingest import killed_lines

NAME = "teams_ingest"
GOAL = 0.70  # the bridge: at least 70 % of the echo bot's activities/s
WS = "acme"
PATH = "/api/messages"
FIGURES = _report.ROOT / "docs" / "performance"
INITIAL_ESTIMATE = 1500.0  # activities/s the bridge might take, to size the first round's file
REFERENCE_RECORDS = 30_000  # the references do not dedupe: their activities may repeat

log = logging.getLogger("bench.teams_ingest")


@dataclass(frozen=True)
class Target:
    key: str
    label: str


TARGETS = [
    Target("bare", "bare aiohttp (reference)"),
    Target("echo", "echo bot sample (reference)"),
    Target("bridge", "bridge, SQLite"),
]


# ------------------------------------------------------------------------------ results


@dataclass
class Check:
    """After a round: the bridge's store and the neetoChat sandbox, or the echo bot's connector."""

    acked: int = 0
    issued: int = 0
    stored: int = 0  # bridge: jobs of the run's activities
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    delivered: int = 0  # bridge: activities found in neetoChat (once each)
    doubled: int = 0  # activities found in neetoChat (echo: replied to) more than once
    undelivered: int = 0  # bridge: stored activities not in neetoChat after the wait
    as_author: int = 0  # bridge: of those delivered, written in neetoChat as Ada (the agent who wrote in Teams)
    unknown: int = 0  # stored or delivered activities that were never sent
    drain: float | None = None  # bridge: seconds after the run until nothing was pending
    replies: int | None = None  # echo: activities the connector stand-in got exactly one reply to
    error: str | None = None

    @property
    def ok(self) -> bool:
        if self.error:
            return False
        if self.replies is not None:
            return self.acked <= self.replies <= self.issued and self.doubled == 0 and self.unknown == 0
        return (
            self.acked <= self.stored <= self.issued
            and self.doubled == 0
            and self.unknown == 0
            and self.undelivered == 0
            and self.delivered == self.stored
            and self.as_author == self.delivered
        )

    def text(self) -> str:
        if self.error:
            return f"FAILED: {self.error}"
        verdict = "ok" if self.ok else "FAILED"
        if self.replies is not None:
            return (
                f"{verdict}: {self.acked:,} acked, {self.replies:,} answered with one reply at the connector "
                f"({self.doubled} with more), {self.issued:,} sent"
            )
        by_status = ", ".join(f"{k} {n:,}" for k, n in sorted(self.statuses.items()))
        drain = f", all delivered {self.drain:.0f} s after the run" if self.drain is not None else ""
        return (
            f"{verdict}: {self.acked:,} acked, {self.stored:,} stored ({by_status}), {self.issued:,} sent; "
            f"in neetoChat: {self.delivered:,} once ({self.as_author:,} as their Teams author's agent), "
            f"{self.doubled} more than once, {self.undelivered} missing, {self.unknown} unknown{drain}"
        )


@dataclass
class Round:
    target: Target
    result: _load.WrkResult
    check: Check | None
    killed: bool = False


@dataclass
class Results:
    rounds: dict[str, list[Round]] = field(default_factory=lambda: collections.defaultdict(list))
    failures: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)  # rounds whose server had to be killed (no exit on SIGTERM)
    profile: _load.Profile | None = None
    profile_note: str | None = None
    load_before: str = ""
    load_after: str = ""

    def rates(self, key: str) -> list[float]:
        return [r.result.rate for r in self.rounds.get(key, [])]

    def ratio(self, key: str, reference: str) -> float | None:
        ours, ref = self.rates(key), self.rates(reference)
        if not ours or not ref:
            return None
        return _load.median(ours) / _load.median(ref)

    def checks_ok(self) -> bool:
        return all(r.check is None or r.check.ok for rounds in self.rounds.values() for r in rounds)


# ------------------------------------------------------------------------------ activities


async def activities(h: Any, channels: list[str], service_url: str, tag: str, n: int) -> list[tuple[str, _load.Req]]:
    """``n`` channel posts by Ada (a Teams user who is a neetoChat agent), round-robin over
    ``channels``, as Teams delivers them to a bot: new root posts, each with its own id. The
    Microsoft sandbox records each post (``user_posts`` without delivering it), so the
    bridge's later connector calls about it (the sender's roster entry) find it, as in Teams;
    ``serviceUrl`` is set to where the target's replies should go."""
    out = []
    for i in range(n):
        posted = await h.ms.user_posts(h.team_id, channels[i % len(channels)], h.ada, f"load {tag} {i}", deliver=False)
        activity = posted["activity"]
        activity["serviceUrl"] = service_url
        body = json.dumps(activity).encode()
        out.append((activity["id"], _load.Req("POST", PATH, {"Content-Type": "application/json; charset=utf-8"}, body)))
    return out


# ------------------------------------------------------------------------------ one world


class World:
    """Fresh sandboxes, the workspace linked with conversations open (their channels are
    where the activities are posted), and a fresh server for ``target``."""

    def __init__(self, target: Target, args: argparse.Namespace, tmp: Path, name: str) -> None:
        self.target = target
        self.args = args
        self.tmp = tmp
        self.name = name
        self.data_dir = tmp / f"{name}-data"
        self.server: _load.Server | None = None
        self.connector: _load.Server | None = None
        self.bridge: _load.Server | None = None
        self.channels: list[str] = []
        self.conversation_ids: list[str] = []
        self._sandboxes: Any = None
        self.h: Any = None

    async def __aenter__(self) -> World:
        from tests.harness import bridge_env

        self._sandboxes = _load.sandboxes()
        self.h = h = await self._sandboxes.__aenter__()
        try:
            # The conversations' channels come from the bridge itself: it makes them when
            # the visitors start the conversations. For a reference target this bridge is
            # stopped again before the reference starts.
            port = _load.free_port()
            self.bridge = _load.bridge_server(
                bridge_env(h.ms, self.data_dir, port), port, self.tmp / f"{self.name}-bridge.log"
            )
            await self.bridge.start()
            h.set_bridge(self.bridge.url)
            await h.connect()
            conversations = await _load.open_conversations(h, self.args.conversations)
            self.channels = [c["channel"]["id"] for c in conversations]
            self.conversation_ids = [c["id"] for c in conversations]
            if self.target.key == "bridge":
                self.server = self.bridge
            else:
                await self.bridge.stop()
                self.bridge = None
                h.neeto.set_webhook_url(WS, None)
                port = _load.free_port()
                if self.target.key == "echo":
                    connector_port = _load.free_port()
                    self.connector = _load.reference_server(
                        "connector", connector_port, self.tmp / f"{self.name}-connector.log", core=_load.LOAD_CORE
                    )
                    await self.connector.start()
                self.server = _load.reference_server(self.target.key, port, self.tmp / f"{self.name}.log")
                await self.server.start()
        except BaseException:
            await self.__aexit__(*sys.exc_info())
            raise
        return self

    @property
    def service_url(self) -> str:
        """Where replies go: the connector stand-in for the echo bot, the Microsoft sandbox's else."""
        return f"{self.connector.url}/" if self.connector else self.h.ms.service_url

    async def activities(self, tag: str, n: int) -> list[tuple[str, _load.Req]]:
        return await activities(self.h, self.channels, self.service_url, tag, n)

    async def __aexit__(self, *exc: Any) -> None:
        try:
            for server in (self.server, self.bridge, self.connector):
                if server is not None and server.proc is not None and server.proc.poll() is None:
                    await server.stop()
        finally:
            await self._sandboxes.__aexit__(*exc)

    # after a round ---------------------------------------------------------------------
    async def wait_delivered(self, timeout: float) -> float | None:
        """Seconds until the bridge had nothing pending (operator status), or None."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            status, body = await self.h.admin("GET", f"/api/admin/workspaces/{WS}")
            if status == 200 and not body["deliveries"]["queued"]:
                return time.monotonic() - start
            await asyncio.sleep(0.5)
        return None

    def stored(self) -> list[tuple[str, str, str]]:
        """(dedupe key, kind, status) of every job in the stopped bridge's SQLite file."""
        db = sqlite3.connect(f"file:{self.data_dir / 'bridge.sqlite3'}?mode=ro", uri=True)
        try:
            return list(db.execute("SELECT dedupe_key, kind, status FROM jobs"))
        finally:
            db.close()

    def in_neetochat(self) -> tuple[collections.Counter[str], set[str]]:
        """external_id (the Teams activity id) → messages with it, over the conversations;
        and the external ids of those written as Ada's agent."""
        found: collections.Counter[str] = collections.Counter()
        as_ada: set[str] = set()
        for conversation_id in self.conversation_ids:
            for message in self.h.neeto.messages(WS, conversation_id):
                if message.get("external_id"):
                    found[message["external_id"]] += 1
                    if (message.get("sender") or {}).get("id") == self.h.ada_agent["id"]:
                        as_ada.add(message["external_id"])
        return found, as_ada

    async def connector_replies(self) -> collections.Counter[str]:
        """Activity id → replies the connector stand-in got for it."""
        async with self.h.http.get(f"{self.connector.url}/_replies") as resp:
            return collections.Counter(await resp.json())


# ------------------------------------------------------------------------------ rounds


async def one_round(target: Target, args: argparse.Namespace, tmp: Path, name: str, estimate: float) -> Round:
    for attempt in range(3):
        async with World(target, args, tmp, f"{name}-{attempt}") as world:
            host = f"{_load.HOST}:{world.server.port}"
            url = world.server.url + PATH
            bridge = target.key == "bridge"
            warm_n = int(estimate * 2 * args.warmup) + 500 if bridge else REFERENCE_RECORDS
            if args.warmup > 0:
                warm = (req for _, req in await world.activities(f"{name}w", warm_n))
                _load.write_wrk_records(tmp / "warm.bin", warm, host)
                await _load.run_wrk(url, tmp / "warm.bin", args.warmup, connections=args.connections)
            n = int(estimate * 2 * args.duration) + 2000 if bridge else REFERENCE_RECORDS
            run = await world.activities(f"{name}m", n)
            ids = [activity_id for activity_id, _ in run]
            _load.write_wrk_records(tmp / "run.bin", (req for _, req in run), host)
            result = await _load.run_wrk(url, tmp / "run.bin", args.duration, connections=args.connections)
            if result.wrapped and bridge:
                estimate = max(estimate * 2, result.rate * 1.5)
                log.warning("%s: %d activities were not enough, again with more", name, n)
                continue
            check = None
            if bridge:
                check = await bridge_check(world, ids, result, args.drain_timeout)
            elif target.key == "echo":
                check = Check(acked=result.acked, issued=result.issued)
                await world.server.stop()  # replies still on their way are sent before it exits
                replies = await world.connector_replies()
                measured_ids, sent = set(ids), set(ids[: result.issued])
                check.replies = sum(1 for a in measured_ids if replies.get(a) == 1)
                check.doubled = sum(1 for a in measured_ids if replies.get(a, 0) > 1)
                check.unknown = sum(1 for a in measured_ids if a in replies and a not in sent)
            return Round(target, result, check, killed=world.server.killed)
    raise RuntimeError(f"{name}: wrk kept running out of activities")


async def bridge_check(world: World, ids: list[str], result: _load.WrkResult, timeout: float) -> Check:
    """Wait until the bridge delivered everything (nothing pending), stop it, then: every
    acknowledged activity stored once, and each stored one in neetoChat exactly once."""
    check = Check(acked=result.acked, issued=result.issued)
    check.drain = await world.wait_delivered(timeout)
    await world.server.stop()
    sent = set(ids[: result.issued])
    all_ids = set(ids)
    prefix = f"act:{WS}:"
    jobs = [(k[len(prefix) :], kind, status) for k, kind, status in world.stored() if k.startswith(prefix)]
    # stored as received (``teams_activity``, bots/channel_inbox.py), or as the bot's work
    ours = [(a, status) for a, kind, status in jobs if kind in ("teams_activity", "teams_message") and a in all_ids]
    check.stored = len(ours)
    check.statuses = collections.Counter(status for _, status in ours)
    check.unknown = sum(1 for a, _ in ours if a not in sent)
    found, as_ada = world.in_neetochat()
    stored_ids = {a for a, _ in ours}
    check.as_author = sum(1 for a in stored_ids if found.get(a) == 1 and a in as_ada)
    check.delivered = sum(1 for a in stored_ids if found.get(a) == 1)
    check.doubled = sum(1 for a in stored_ids if found.get(a, 0) > 1)
    check.undelivered = sum(1 for a in stored_ids if a not in found)
    check.unknown += sum(1 for a in found if a in all_ids and a not in stored_ids)
    if check.drain is None:
        check.error = f"still delivering {timeout:.0f} s after the run ({check.delivered:,} of {check.stored:,} done)"
    return check


async def profile_run(args: argparse.Namespace, tmp: Path) -> tuple[_load.Profile | None, str | None]:
    if _load.py_spy() is None:
        return None, "py-spy is not installed (`pip install py-spy`): no profile"
    target = next(t for t in TARGETS if t.key == "bridge")
    async with World(target, args, tmp, "profile") as world:
        host = f"{_load.HOST}:{world.server.port}"
        seconds = args.profile_duration + 2
        n = int(INITIAL_ESTIMATE * 2 * seconds)
        _load.write_wrk_records(tmp / "profile.bin", (r for _, r in await world.activities("profile", n)), host)
        load = asyncio.create_task(
            _load.run_wrk(world.server.url + PATH, tmp / "profile.bin", seconds, connections=args.connections)
        )
        await asyncio.sleep(1)
        out = tmp / "profile.txt"
        problem = await _load.profile(world.server.pid, args.profile_duration, out)
        await load
        if args.profile_out and out.exists():
            shutil.copyfile(out, args.profile_out)
        await world.server.stop()
    if problem:
        return None, problem
    return _load.read_profile(out), None


async def run(args: argparse.Namespace) -> Results:
    results = Results(load_before=_load.load_average())
    with tempfile.TemporaryDirectory(prefix="bench-teams-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        estimate = INITIAL_ESTIMATE
        for r in range(args.rounds):
            for target in TARGETS:  # interleaved: a slow moment of the machine hits every target
                name = f"r{r}{target.key[:2]}"
                print(f"round {r + 1}/{args.rounds}: {target.label} …", flush=True)
                try:
                    rnd = await one_round(target, args, tmp, name, estimate)
                except Exception as exc:
                    log.exception("%s failed", name)
                    results.failures.append(f"{target.label}, round {r + 1}: {exc}")
                    continue
                if target.key == "bridge":
                    estimate = max(estimate, rnd.result.rate)
                results.rounds[target.key].append(rnd)
                if rnd.killed:
                    results.killed.append(f"{target.label}, round {r + 1}")
                print(
                    f"  {rnd.result.rate:,.0f}/s, p50 {rnd.result.latency_ms['p50']:.2f} ms"
                    + (f"; {rnd.check.text()}" if rnd.check else ""),
                    flush=True,
                )
        if not args.no_profile:
            print("profile: bridge under wrk …", flush=True)
            try:
                results.profile, results.profile_note = await profile_run(args, tmp)
            except Exception as exc:
                log.exception("profile failed")
                results.profile_note = f"profile failed: {exc}"
    results.load_after = _load.load_average()
    return results


# ------------------------------------------------------------------------------ reporting

HEADER = [
    "target",
    "rounds",
    "activities/s: median (min–max)",
    "ratio to the echo bot",
    "ratio to bare aiohttp",
    "latency under that load, p50 / p99 (ms)",
    "errors",
    "check",
]


def rows(results: Results) -> list[list[str]]:
    out = []
    for target in TARGETS:
        rounds = results.rounds.get(target.key, [])
        if not rounds:
            out.append([target.label, "0", "FAILED", "-", "-", "-", "-", "-"])
            continue
        ratios = []
        for reference in ("echo", "bare"):
            ratio = results.ratio(target.key, reference)
            if target.key == reference:
                ratios.append("1 (reference)")
            elif ratio is None:
                ratios.append("-")
            else:
                mark = (" ✓" if ratio >= GOAL else " ✗") if target.key == "bridge" and reference == "echo" else ""
                ratios.append((f"{ratio:.0f}×" if ratio >= 2 else f"{ratio:.0%}") + mark)
        p50 = _load.median([r.result.latency_ms["p50"] for r in rounds])
        p99 = _load.median([r.result.latency_ms["p99"] for r in rounds])
        checks = [r.check for r in rounds if r.check]
        check = "-" if not checks else ("ok" if all(c.ok for c in checks) else "FAILED")
        out.append(
            [
                target.label,
                str(len(rounds)),
                _load.spread(results.rates(target.key)),
                *ratios,
                f"{p50:.2f} / {p99:.2f}",
                str(sum(r.result.non_2xx + r.result.socket_errors for r in rounds)),
                check,
            ]
        )
    return out


def check_lines(results: Results) -> list[str]:
    lines = []
    for target in TARGETS:
        for i, r in enumerate(results.rounds.get(target.key, [])):
            if r.check:
                lines.append(f"- {target.label}, round {i + 1}: {r.check.text()}")
    return lines


def figure(results: Results) -> list[str]:
    present = [t for t in TARGETS if results.rounds.get(t.key)]
    if not present:
        return []
    echo = results.rates("echo")
    goal = (GOAL * _load.median(echo), f"goal: {GOAL:.0%} of the echo bot") if echo else None
    path = _load.plot_bars(
        FIGURES / "teams_ingest_throughput.png",
        "Teams → neetoChat: activities/s through /api/messages (median, range of rounds)",
        [t.label.replace(" (reference)", "") for t in present],
        [results.rates(t.key) for t in present],
        "activities/s",
        goal=goal,
        note="server on one core (taskset -c 0), wrk on the other",
        references=sum(1 for t in present if t.key != "bridge"),
        log=True,
    )
    return [f"![Teams ingest throughput](performance/{path.name})"] if path else []


def section(results: Results, args: argparse.Namespace) -> str:
    echo_ratio, bare_ratio = results.ratio("bridge", "echo"), results.ratio("bridge", "bare")
    verdict = (
        "not measured"
        if echo_ratio is None
        else f"**{echo_ratio:.0%}** of the echo bot (goal {'met' if echo_ratio >= GOAL else 'NOT met'})"
        + (f", {bare_ratio:.0%} of bare aiohttp" if bare_ratio is not None else "")
    )
    cores = (
        "server on core 0 (`taskset -c 0`); wrk, the sandboxes and the connector stand-in on core 1"
        if _load.can_pin()
        else "not pinned (fewer than 2 cores or no taskset)"
    )
    parts = [
        "## Teams → neetoChat ingest",
        "",
        f"Goal: the bridge takes Teams channel messages through `/api/messages` at ≥ {GOAL:.0%} of the rate "
        f"Microsoft's echo bot sample answers them. Result: {verdict}. Run with `python -m bench.teams_ingest` "
        f"(about {estimated_minutes(args):.0f} minutes; `--quick` for a short look).",
        "",
        f"- Measured: {_report.today()}{' (**--quick**: short, single-round figures)' if args.quick else ''}",
        f"- Machine: {_report.machine()}; load average (1 / 5 min) {results.load_before} before, "
        f"{results.load_after} after",
        f"- Cores: {cores}",
        f"- Rounds: {args.rounds}, each on a fresh world; {args.duration:g} s runs after {args.warmup:g} s of "
        f"warm-up, {args.connections} connections; {args.conversations} conversations",
        "",
        _report.markdown_table(HEADER, rows(results)),
        "",
        *figure(results),
        "",
        "**Method.** Each round of each target runs on a fresh world: the neetoChat and Microsoft 365 sandboxes "
        "in the benchmark's process, a bridge (`python app.py`, embedded store, local mode: no JWT) connected and "
        f"linked to the team, and {args.conversations} visitors' conversations open, each with its channel, made "
        "by the bridge. For the bridge target that bridge is the server under test; for a reference it is "
        "stopped and the reference started, on core 0 like the bridge, served the same way (`web.run_app`, the "
        "bridge's logging setup): `python -m bench._load echo`, Microsoft's echo bot sample "
        "(botbuilder-python `02.echo-bot`: `CloudAdapter(ConfigurationBotFrameworkAuthentication(config))`, an "
        "`ActivityHandler` whose `on_message_activity` sends one reply, `aiohttp_error_middleware`), replying "
        "through a Bot Connector stand-in on core 1 (`python -m bench._load connector`: 201 with an id, no "
        "access log), or `python -m bench._load bare` (reads the body, answers 200). The activities are "
        "rendered before each run in Teams' shape, by the Microsoft sandbox's Teams client "
        "(`user_posts(..., deliver=False)`: `sandbox/teams_fixtures.channel_message_activity`, and the post "
        "recorded in the channel, so the bridge's later connector calls about it find it, as in Teams): new root "
        "posts by a Teams user who is a neetoChat agent, round-robin over the conversations' channels, each "
        "with its own id; every target gets the same ones (for the echo bot with the stand-in's `serviceUrl`). "
        f"wrk 4.1 (`bench/lua/replay.lua`), one thread, {args.connections} connections, closed loop; "
        "activities/s = answered requests / duration. The bridge acknowledges an activity once its job is "
        "stored; delivering it to neetoChat (the agent's message, through the neetoChat sandbox's API, whose "
        "webhook then comes back to the bridge and is recognised as its own echo) runs in the background, in "
        "the same process, during and after the run. **Checks:** after a bridge round the benchmark waits until "
        "nothing is pending (operator status), stops the bridge, reads its SQLite file and the neetoChat "
        "sandbox: every acknowledged activity is stored once, and every stored one reached neetoChat exactly "
        "once (by `external_id`, the activity id), written as the agent who wrote it in Teams; activities wrk "
        "had in flight when it stopped may or may not "
        "be stored (acked ≤ stored ≤ sent). After an echo round: one reply at the connector per acknowledged "
        "activity. Each figure is the median of the rounds, targets interleaved round by round; ratios are of "
        "medians measured in the same run.",
        "",
        "Checks:",
        "",
        *check_lines(results),
        *killed_lines(results.killed),
        "",
        "### Profile: the /api/messages path",
        "",
        *_load.profile_lines(
            results.profile,
            results.profile_note,
            f"The bridge (SQLite) under wrk on `/api/messages` for {args.profile_duration:g} s,",
        ),
    ]
    if results.failures:
        parts += ["", "**Failures:**", "", *(f"- {f}" for f in results.failures)]
    return "\n".join(parts)


def estimated_minutes(args: argparse.Namespace) -> float:
    per_round = 3 * (args.duration + args.warmup + 12) + 6 * args.duration  # + the bridge's delivery wait
    return (args.rounds * per_round + (0 if args.no_profile else args.profile_duration + 15)) / 60


def print_results(results: Results) -> None:
    print()
    print(_report.text_table(HEADER, rows(results)))
    _load.print_profile(results.profile, results.profile_note)
    for failure in results.failures:
        print(f"FAILED: {failure}")


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.teams_ingest", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--quick", action="store_true", help="one short round (figures only indicative)")
    parser.add_argument("--rounds", type=int, help="rounds per target (default 3; --quick 1)")
    parser.add_argument("--duration", type=float, help="seconds of each run (default 10; --quick 3)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up before it (default 2; --quick 1)")
    parser.add_argument("--connections", type=int, default=_load.WRK_CONNECTIONS, help="wrk connections (default 32)")
    parser.add_argument("--conversations", type=int, default=10, help="conversations posted to (default 10)")
    parser.add_argument(
        "--drain-timeout", type=float, default=300, help="seconds to wait for the bridge to deliver (default 300)"
    )
    parser.add_argument("--profile-duration", type=float, help="seconds of py-spy sampling (default 10; --quick 4)")
    parser.add_argument("--profile-out", type=Path, help="also keep py-spy's collapsed stacks there")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/performance.md")
    parser.add_argument("--verbose", action="store_true")
    args, _unknown = parser.parse_known_args(argv)  # python -m bench hands every benchmark the same options
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (3 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.profile_duration = args.profile_duration or (4 if args.quick else 10)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s %(message)s"
    )
    if not _load.wrk_available():
        print("wrk is missing: install Debian's with `apt-get install -y wrk`", file=sys.stderr)
        return 1
    with _load.on_load_core():
        results = asyncio.run(run(args))
    print_results(results)
    if not args.no_write:
        path = _report.write_section(NAME, section(results, args))
        print(f"\nwrote {path.relative_to(_report.ROOT)}")
    return 0 if not results.failures and results.checks_ok() else 1


if __name__ == "__main__":
    sys.exit(main())
