"""Shared machinery of the HTTP load benchmarks (``bench/ingest.py``, ``bench/teams_ingest.py``).

- **Processes.** Everything under load runs as its own process, pinned with ``taskset``: the
  server (the bridge as ``python app.py``, or a reference) on core ``SERVER_CORE``, the load
  generator, the sandboxes (this process) and stubs on ``LOAD_CORE``. ``Server`` starts and
  stops one. The references are served by this module: ``python -m bench._load KIND --port N``
  with KIND ``bare`` (an aiohttp handler that reads the body and answers 200), ``minimal`` and
  ``minimal-single`` (a minimal neetoChat webhook receiver: signature, dedupe, SQLite with group
  commit or one commit per request, ack after the commit; ``--db FILE``), ``echo``
  (Microsoft's echo bot sample), ``connector`` (a Bot Connector stand-in answering 201 with an
  id) and ``bridge-mongomock`` (the bridge's own app on a mongomock store, a smoke check only).
  Servers are set up exactly like ``python app.py`` (``web.run_app``, the bridge's logging
  configuration, so the same access log settings).
- **Requests.** Every request is rendered beforehand (``Req``), signatures and unique ids
  included, and written to a file the load generator replays, so the generator does no
  per-request work beyond sending.
- **Throughput:** wrk (Debian's ``wrk`` 4.1) with ``bench/lua/replay.lua``, closed loop,
  ``run_wrk``.
- **Latency at a fixed offered load:** autocannon (npm, pinned ``AUTOCANNON_VERSION``,
  installed with ``npm install --prefix <tmp>`` at run time) driven by
  ``bench/lua/autocannon_paced.js``, ``run_paced``. autocannon's own ``-R`` sends each
  connection's quota for the second back to back at the top of every second (bursts, not a
  rate); the driver instead runs one single-connection autocannon instance per request slot
  of a second, each at 1 request/s, started ``1/rate`` s apart, so the requests are evenly
  spaced, and it takes every response time from autocannon's ``response`` events (its own
  histogram keeps whole milliseconds).
- **Profiles:** py-spy attached to the server under load, ``profile`` and ``top_functions``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import _report

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "lua"
SERVER_CORE = 0
LOAD_CORE = 1
AUTOCANNON_VERSION = "8.0.0"
WRK_THREADS = 1  # the load generator has one core
WRK_CONNECTIONS = 32
HOST = "127.0.0.1"

log = logging.getLogger("bench.load")


# ------------------------------------------------------------------------------ cores


def can_pin() -> bool:
    """Two cores to put the server and the load generator on, and ``taskset``."""
    try:
        cores = os.sched_getaffinity(0) | set(range(os.cpu_count() or 1))
    except AttributeError:  # not Linux
        return False
    return {SERVER_CORE, LOAD_CORE} <= cores and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


def pinned(core: int | None, argv: Sequence[str]) -> list[str]:
    """``argv`` run on ``core`` (``taskset -c``, which execs it: the pid stays the command's)."""
    if core is None or not can_pin():
        return list(argv)
    return ["taskset", "-c", str(core), *argv]


@contextlib.contextmanager
def on_load_core() -> Iterator[None]:
    """This process (the sandboxes, the stubs it starts unpinned) on the load generator's
    core for the duration, so that it never competes with the server under test."""
    if not can_pin():
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {LOAD_CORE})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} / {five:.2f}"


# ------------------------------------------------------------------------------ requests


@dataclass(frozen=True)
class Req:
    """One HTTP request, rendered beforehand."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def raw(self, host: str) -> bytes:
        head = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(self.body)}"]
        head += [f"{name}: {value}" for name, value in self.headers.items()]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + self.body


def write_wrk_records(path: Path, requests: Iterable[Req], host: str) -> int:
    """The file ``bench/lua/replay.lua`` replays: ``<length>\\n<raw request>`` each."""
    n = 0
    with open(path, "wb") as f:
        for req in requests:
            raw = req.raw(host)
            f.write(b"%d\n" % len(raw))
            f.write(raw)
            n += 1
    return n


def write_paced_records(path: Path, requests: Iterable[Req]) -> int:
    """The file ``bench/lua/autocannon_paced.js`` replays: one JSON object per line."""
    n = 0
    with open(path, "w") as f:
        for req in requests:
            f.write(
                json.dumps({"method": req.method, "path": req.path, "headers": req.headers, "body": req.body.decode()})
            )
            f.write("\n")
            n += 1
    return n


# ------------------------------------------------------------------------------ servers


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without the bridge's store and Bot Framework settings
    (as tests/harness.py's BridgeProcess), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("Microsoft", "MONGODB"))}
    env.update(extra)
    return env


class Server:
    """A server process (``argv`` from the repository root) on ``core``, ready when
    ``ready_path`` answers 200 (or, without one, when its port accepts connections)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        core: int | None = SERVER_CORE,
        ready_path: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.log_path = log_path
        self.env = child_env(env or {})
        self.core = core
        self.ready_path = ready_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed = False  # did not stop on SIGTERM in time

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 60.0) -> None:
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self.proc = subprocess.Popen(
                pinned(self.core, self.argv), cwd=ROOT, env=self.env, stdout=log_file, stderr=log_file
            )
        finally:
            log_file.close()
        deadline = time.monotonic() + timeout
        while not await self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready within {timeout:.0f} s: {self.log_tail()}")
            await asyncio.sleep(0.1)

    async def _ready(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection(HOST, self.port)
        except OSError:
            return False
        try:
            if self.ready_path is None:
                return True
            writer.write(f"GET {self.ready_path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 10)
            return status.split(b" ")[1:2] == [b"200"]
        except (OSError, TimeoutError, IndexError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (the bridge drains in-flight jobs and closes its store), then wait."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.killed = True
                log.warning("%s did not stop within %.0f s of SIGTERM: killed", self.name, timeout)
        return self.proc.returncode

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def bridge_server(env: dict[str, str], port: int, log_path: Path) -> Server:
    """``python app.py``, as operators run it."""
    return Server(
        "bridge", [sys.executable, "app.py"], port, log_path, env={**env, "PORT": str(port)}, ready_path="/readyz"
    )


def reference_server(
    kind: str,
    port: int,
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    core: int | None = SERVER_CORE,
    extra: Sequence[str] = (),
) -> Server:
    """One of this module's servers (``bare``, ``minimal``, ``minimal-single``, ``echo``,
    ``connector``, ``bridge-mongomock``)."""
    argv = [sys.executable, "-m", "bench._load", kind, "--port", str(port), *extra]
    ready = "/readyz" if kind == "bridge-mongomock" else None
    return Server(kind, argv, port, log_path, env={**(env or {}), "PORT": str(port)}, core=core, ready_path=ready)


# ------------------------------------------------------------------------------ sandboxes


@contextlib.asynccontextmanager
async def sandboxes() -> AsyncIterator[Any]:
    """The neetoChat and Microsoft 365 sandboxes in this process on free ports (as
    ``bench/drain.py`` serves them), with the demo world built: a ``tests.harness.Harness``
    whose bridge URL is still to be set."""
    import aiohttp
    from aiohttp import web

    from sandbox.microsoft import MicrosoftSandbox
    from sandbox.neetochat import NeetoChatSandbox
    from tests.harness import Harness

    runners: list[web.AppRunner] = []

    async def serve(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, HOST, port).start()
        return f"http://{HOST}:{port}"

    try:
        neeto = NeetoChatSandbox()
        neeto_url = await serve(neeto.app())
        ms = MicrosoftSandbox()
        ms.set_base_url(await serve(ms.app()))
        async with aiohttp.ClientSession() as http:
            yield Harness(neeto, neeto_url, ms, http)
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def connect_workspace(h: Any) -> None:
    """Only the operator's first step: the workspace connected (its webhook secret known,
    so webhooks are verified), no team linked."""
    from tests.harness import API_KEY, WEBHOOK_SECRET, WS

    body = {"base_url": f"{h.neeto_url}/{WS}", "api_key": API_KEY, "webhook_secret": WEBHOOK_SECRET}
    status, answer = await h.admin("PUT", f"/api/admin/workspaces/{WS}", body)
    if status not in (200, 201):
        raise RuntimeError(f"connecting the workspace answered {status}: {answer}")


async def open_conversations(h: Any, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """``count`` visitors start conversations in neetoChat; returns them once the bridge
    made each one's channel (its portal is open). The workspace must be linked."""
    from tests.harness import WS

    conversations = [
        h.neeto.start_conversation(
            WS, visitor_name=f"Load Visitor {c:02d}", visitor_email=f"load{c:02d}@example.com", message=f"hello {c}"
        )
        for c in range(count)
    ]
    for conversation in conversations:
        conversation["channel"] = await h.wait_channel(conversation["number"], timeout)
    return conversations


# ------------------------------------------------------------------------------ wrk


@dataclass
class WrkResult:
    requests: int  # completed (answered) requests
    duration: float  # seconds
    non_2xx: int
    socket_errors: int
    issued: int  # requests the script handed to wrk (answered or still in flight at the end)
    wrapped: bool  # the records ran out and were sent again
    latency_ms: dict[str, float]

    @property
    def rate(self) -> float:
        return self.requests / self.duration if self.duration else 0.0

    @property
    def acked(self) -> int:
        return self.requests - self.non_2xx


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


async def run_wrk(
    url: str, records: Path, duration: float, *, connections: int = WRK_CONNECTIONS, threads: int = WRK_THREADS
) -> WrkResult:
    argv = pinned(LOAD_CORE, [
        "wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration:g}s", "--timeout", "10s",
        "-s", str(LUA / "replay.lua"), url, "--", str(records), str(threads),
    ])  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    text = out.decode(errors="replace")
    found = re.search(r"^BENCH_JSON (\{.*\})$", text, re.M)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {text[-1500:]} {err.decode(errors='replace')[-1500:]}")
    data = json.loads(found.group(1))
    return WrkResult(
        requests=data["requests"],
        duration=data["duration_us"] / 1e6,
        non_2xx=data["non_2xx_3xx"],
        socket_errors=data["connect_errors"] + data["read_errors"] + data["write_errors"] + data["timeouts"],
        issued=data["issued"],
        wrapped=bool(data["wrapped"]),
        latency_ms={k: v / 1000 for k, v in data["latency_us"].items()},
    )


# ------------------------------------------------------------------------------ autocannon


@dataclass
class PacedResult:
    rate: float  # offered, requests/s
    duration: float
    responses: int
    non_2xx: int
    errors: int
    issued: int  # requests handed to autocannon, ramp-up included
    all_acked: int  # 2xx answers, ramp-up included
    wrapped: bool
    percentiles_ms: dict[str, float]  # "p50", "p90", "p99", "p99.9", "max", "mean"

    @property
    def achieved(self) -> float:
        return self.responses / self.duration if self.duration else 0.0

    @property
    def acked(self) -> int:
        return self.responses - self.non_2xx


class Autocannon:
    """autocannon ``AUTOCANNON_VERSION`` installed into a temporary npm prefix, once per run."""

    def __init__(self) -> None:
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.module: Path | None = None
        self.problem: str | None = None

    async def install(self) -> bool:
        if self.module is not None:
            return True
        if shutil.which("node") is None or shutil.which("npm") is None:
            self.problem = "node/npm not found"
            return False
        self._dir = tempfile.TemporaryDirectory(prefix="bench-autocannon-")
        proc = await asyncio.create_subprocess_exec(
            "npm", "install", "--no-audit", "--no-fund", "--prefix", self._dir.name, f"autocannon@{AUTOCANNON_VERSION}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        module = Path(self._dir.name) / "node_modules" / "autocannon"
        if proc.returncode != 0 or not module.exists():
            self.problem = f"npm install autocannon@{AUTOCANNON_VERSION} failed: {out.decode(errors='replace')[-500:]}"
            return False
        self.module = module
        return True

    def cleanup(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
            self.module = None

    async def run_paced(self, origin: str, records: Path, rate: int, duration: float) -> PacedResult:
        assert self.module is not None
        script = str(LUA / "autocannon_paced.js")
        argv = pinned(LOAD_CORE, ["node", script, str(self.module), str(records), origin, str(rate), f"{duration:g}"])
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        text = out.decode(errors="replace")
        found = re.search(r"^BENCH_JSON (\{.*\})$", text, re.M)
        if proc.returncode != 0 or not found:
            raise RuntimeError(
                f"autocannon failed ({proc.returncode}): {text[-1000:]} {err.decode(errors='replace')[-1500:]}"
            )
        data = json.loads(found.group(1))
        return PacedResult(
            rate=rate,
            duration=data["duration_s"],
            responses=data["responses"],
            non_2xx=data["non_2xx"],
            errors=data["errors"],
            issued=data["issued"],
            all_acked=data["all_2xx"],
            wrapped=bool(data["wrapped"]),
            percentiles_ms=data["latency_ms"],
        )


# ------------------------------------------------------------------------------ profiles


def py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else None


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) each thread of ``pid`` has used so far (/proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


async def profile(pid: int, duration: float, out: Path, rate: int = 200) -> str | None:
    """Sample ``pid`` with py-spy (on the load core) for ``duration`` s into collapsed stacks
    (``out``), and measure each thread's CPU time meanwhile (``out`` + ``.cpu.json``: thread
    id → CPU seconds per second); None when done, else what went wrong."""
    exe = py_spy()
    if exe is None:
        return "py-spy is not installed (pip install py-spy)"
    argv = pinned(LOAD_CORE, [
        exe, "record", "--pid", str(pid), "--duration", f"{max(1, round(duration))}", "--rate", str(rate),
        "--format", "raw", "--threads", "--output", str(out),
    ])  # fmt: skip
    before, start = thread_cpu(pid), time.monotonic()
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    text, _ = await proc.communicate()
    after, elapsed = thread_cpu(pid), time.monotonic() - start
    if proc.returncode != 0 or not out.exists():
        return f"py-spy failed ({proc.returncode}): {text.decode(errors='replace')[-500:]}"
    used = {tid: (cpu - before.get(tid, 0.0)) / elapsed for tid, cpu in after.items()}
    Path(f"{out}.cpu.json").write_text(json.dumps(used))
    return None


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def short_file(path: str) -> str:
    """A frame's file as a reader finds it: repository-relative, ``pkg/mod.py`` for libraries."""
    if path.startswith(str(ROOT) + "/") and "/site-packages/" not in path:
        return path[len(str(ROOT)) + 1 :]
    for marker in ("/site-packages/", "/lib/python3.11/", "/lib/python3.12/", "/lib/python3.13/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


REQUEST_HANDLER = "aiohttp/web_protocol.py:RequestHandler._handle_request"

# Where the event loop's time goes, by the first of these frames found on a sample's stack.
ACTIVITIES = (
    ("handling requests (the route's handler, from aiohttp's _handle_request)", REQUEST_HANDLER),
    ("aiohttp connection work (HTTP parsing, writing answers, keep-alive)", "aiohttp/web_protocol.py:"),
    ("the job loop (delivery in the background)", "services/jobs.py:"),
    ("card refreshes", "services/card_refresh.py:"),
)


@dataclass
class Profile:
    """py-spy samples of a server process (on CPU only): the event loop thread's stacks
    and the other threads' (aiosqlite's worker, executors), as ``file:function`` names,
    root first."""

    stacks: list[tuple[list[str], int]]  # the event loop thread
    other: list[tuple[list[str], int]]  # every other thread
    cpu: list[tuple[str, float]] = field(default_factory=list)  # (thread, CPU seconds per second), busiest first

    @property
    def samples(self) -> int:
        return max(1, sum(n for _, n in self.stacks))

    def activities(self) -> list[tuple[str, float]]:
        """Share (%) of the event loop's samples per activity (``ACTIVITIES``, then "other")."""
        shares: collections.Counter[str] = collections.Counter()
        for names, n in self.stacks:
            label = next(
                (label for label, marker in ACTIVITIES if any(marker in name for name in names)),
                "other (the event loop itself, timers, sockets, clients)",
            )
            shares[label] += n
        order = [label for label, _ in ACTIVITIES] + ["other (the event loop itself, timers, sockets, clients)"]
        return [(label, 100 * shares[label] / self.samples) for label in order if shares[label]]

    def top(self, n: int, *, within: str | None = None, skip_above: float = 0.97) -> list[tuple[str, float, float]]:
        """(function, cumulative %, self %) as shares of all the event loop's samples, by
        cumulative share, over the samples with a frame containing ``within`` on their stack
        (all without it); frames on nearly every one of those samples (their scaffolding)
        left out."""
        stacks = [(names, k) for names, k in self.stacks if within is None or any(within in name for name in names)]
        total = sum(k for _, k in stacks)
        cumulative: collections.Counter[str] = collections.Counter()
        own: collections.Counter[str] = collections.Counter()
        for names, k in stacks:
            for name in set(names):
                cumulative[name] += k
            if names:
                own[names[-1]] += k
        rows = []
        for name, count in cumulative.most_common():
            if total and count / total >= skip_above:
                continue
            rows.append((name, 100 * count / self.samples, 100 * own[name] / self.samples))
            if len(rows) == n:
                break
        return rows

    def share(self, within: str) -> float:
        return 100 * sum(k for names, k in self.stacks if any(within in name for name in names)) / self.samples


def read_profile(path: Path) -> Profile:
    """Collapsed stacks from ``py-spy record --format raw --threads``: per line
    ``thread;frame;frame… count``, root first. The event loop runs on the process's main
    thread (the one with ``run_app``/``run_forever`` on its stacks)."""
    per_thread: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread, names = frames[0], []
        for frame in frames[1:]:
            m = _FRAME.match(frame)
            names.append(f"{short_file(m['file'])}:{m['func']}" if m else frame)
        per_thread[thread].append((names, int(count)))

    def is_loop(thread: str) -> bool:
        return any("run_app" in n or "run_forever" in n for names, _ in per_thread[thread] for n in names)

    main = next((t for t in per_thread if is_loop(t)), None)
    if main is None:
        main = max(per_thread, key=lambda t: sum(c for _, c in per_thread[t]), default="")
    other = [s for t, stacks in per_thread.items() if t != main for s in stacks]
    cpu: list[tuple[str, float]] = []
    sidecar = Path(f"{path}.cpu.json")
    if sidecar.exists():
        names = {}
        for label in per_thread:  # "thread (17453): asyncio_0"
            found = re.match(r"thread \((\d+)\): (.*)", label)
            if found:
                names[int(found[1])] = found[2]
        for tid, used in json.loads(sidecar.read_text()).items():
            name = names.get(int(tid), f"thread {tid} (not sampled)")
            if label_of(tid, per_thread) == main:
                name += " (the event loop)"
            cpu.append((name, used))
        cpu.sort(key=lambda item: -item[1])
    return Profile(per_thread.get(main, []), other, cpu)


def label_of(tid: str, per_thread: dict[str, Any]) -> str | None:
    return next((label for label in per_thread if label.startswith(f"thread ({tid}):")), None)


def profile_lines(profile: Profile | None, note: str | None, title: str, *, rows: int = 20) -> list[str]:
    """The profile as markdown: where the event loop's time went, the request path's top
    functions, the job loop's, and the other threads'."""
    if profile is None:
        return [f"_{note or 'not profiled'}_"]
    p = profile
    activities = [[label, f"{share:.0f} %"] for label, share in p.activities()]
    request = [[f"`{name}`", f"{cum:.1f} %", f"{own:.1f} %"] for name, cum, own in p.top(rows, within=REQUEST_HANDLER)]
    jobs = [[f"`{name}`", f"{cum:.1f} %", f"{own:.1f} %"] for name, cum, own in p.top(8, within="services/jobs.py:")]
    lines = [
        f"{title} sampled by py-spy {PY_SPY_NOTE}: {p.samples:,} samples of the event loop thread on CPU. "
        "Shares are of those samples.",
        "",
        _report.markdown_table(["the event loop's time", "share"], activities),
        "",
        "The request path (samples under aiohttp's `RequestHandler._handle_request`), top functions by cumulative "
        "share (function on the stack) with their self share (function at the top):",
        "",
        _report.markdown_table(["function (file:function)", "cumulative", "self"], request),
    ]
    if jobs:
        lines += [
            "",
            "The job loop (background delivery), top functions:",
            "",
            _report.markdown_table(["function (file:function)", "cumulative", "self"], jobs),
        ]
    if p.cpu:
        threads = ", ".join(f"{name} {used:.2f}" for name, used in p.cpu if used >= 0.005)
        lines += [
            "",
            f"CPU time per thread of the server while it was sampled (/proc, seconds per second; all its threads "
            f"share core 0): {threads}. `Thread-N (_connection_worker_thread)` is aiosqlite's, `asyncio_N` "
            "the default executor's (the Bot Connector calls no longer go there: services/connector_http.py).",
        ]
    return lines


PY_SPY_NOTE = "(`py-spy record --format raw --threads`, 200 Hz, attached to the running server)"


def print_profile(profile: Profile | None, note: str | None) -> None:
    if profile is None:
        print(f"\n{note or 'not profiled'}")
        return
    print("\nprofile, event loop thread:")
    for label, share in profile.activities():
        print(f"  {share:5.1f} %  {label}")
    print("request path (cumulative / self, % of the event loop's samples):")
    for name, cum, own in profile.top(20, within=REQUEST_HANDLER):
        print(f"  {cum:5.1f} % {own:5.1f} %  {name}")
    print("job loop:")
    for name, cum, own in profile.top(8, within="services/jobs.py:"):
        print(f"  {cum:5.1f} % {own:5.1f} %  {name}")
    print("CPU per thread (s/s):", ", ".join(f"{name} {used:.2f}" for name, used in profile.cpu if used >= 0.005))


# ------------------------------------------------------------------------------ figures


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    """``median (min–max)``, or the one value."""
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def plot_bars(
    path: Path,
    title: str,
    labels: list[str],
    rounds: list[list[float]],
    unit: str,
    *,
    goal: tuple[float, str] | Sequence[tuple[float, str]] | None = None,
    note: str | None = None,
    references: int = 1,
    log: bool = False,
    fmt: str = "{:,.0f}",
) -> Path | None:
    """Median bars with the rounds' range as error bars, the first ``references`` grey, and
    a dashed line per ``goal`` (value, label); None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    medians = [median(r) for r in rounds]
    low = [m - min(r) if r else 0 for m, r in zip(medians, rounds, strict=True)]
    high = [max(r) - m if r else 0 for m, r in zip(medians, rounds, strict=True)]
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    bars = ax.bar(
        labels,
        medians,
        yerr=[low, high],
        capsize=4,
        color=["#9aa5b1"] * references + ["#3b7dd8"] * (len(labels) - references),
    )
    for bar, value, above in zip(bars, medians, high, strict=True):
        ax.annotate(
            fmt.format(value),
            (bar.get_x() + bar.get_width() / 2, value + above),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 3),
            textcoords="offset points",
        )
    goals = sorted([goal] if isinstance(goal, tuple) else (goal or []), reverse=True)
    for i, (value, label) in enumerate(goals):  # the highest label above its line, the others below
        ax.axhline(value, linestyle="--" if i == 0 else ":", color="#d8573b", linewidth=1)
        ax.annotate(
            label,
            (-0.45, value),
            ha="left",
            va="bottom" if i == 0 else "top",
            fontsize=8,
            color="#d8573b",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
        )
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit + (" (log scale)" if log else ""))
    if log:
        ax.set_yscale("log")
    if note:
        ax.set_xlabel(note, fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_percentiles(
    path: Path, title: str, series: dict[str, dict[str, float]], unit: str = "ms", *, note: str | None = None
) -> Path | None:
    """Grouped bars: per target, its latency percentiles (log scale)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = ["p50", "p90", "p99", "p99.9", "max"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [values.get(n, 0) for n in names], width, label=label)
    ax.set_xticks(range(len(names)), names)
    ax.set_yscale("log")
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    if note:
        ax.set_xlabel(note, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def matplotlib_version() -> str | None:
    try:
        import matplotlib
    except ImportError:
        return None
    return matplotlib.__version__


# ------------------------------------------------------------------------------ the servers themselves


def _logging_like_the_bridge() -> None:
    """The bridge's own logging setup (``app.configure_logging`` when app.py has one),
    so a reference logs (or does not log) each request exactly as the bridge does."""
    import app

    configure = getattr(app, "configure_logging", None)
    if configure is not None:
        configure()
    else:  # older app.py: what its main() did
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        for noisy in ("azure", "httpx", "msal"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def serve_bare(port: int) -> None:
    """The floor: an aiohttp handler that reads the body and answers 200."""
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/{tail:.*}", ok)
    _logging_like_the_bridge()
    web.run_app(app, host=HOST, port=port, print=None, shutdown_timeout=30)


def serve_minimal(port: int, db_path: Path, *, group_commit: bool) -> None:
    """The minimal webhook receiver, what this stack can do: ``POST /api/neetochat/{workspace}/webhooks``
    reads the body (≤ 1 MiB), checks the timestamp (±300 s) and the signature (HMAC-SHA256 over
    ``timestamp.body`` with ``tests.harness.WEBHOOK_SECRET``, the bench's, in constant time: 401),
    parses the JSON (400 unless an object whose ``id`` is ``X-Neeto-Delivery``), inserts
    ``(delivery_id UNIQUE, workspace, body)`` into SQLite at ``db_path`` (aiosqlite as the
    bridge: WAL, ``synchronous=NORMAL``, autocommit) and answers 200 ``{"stored": bool}``
    after the commit. ``group_commit``: requests that arrive while a write is in flight wait,
    and the next writer inserts all of them in one statement (one commit); else one commit
    per request."""
    import hashlib
    import hmac

    import aiosqlite
    from aiohttp import web

    from tests.harness import WEBHOOK_SECRET

    secret, max_body, db_key = WEBHOOK_SECRET.encode(), 1024 * 1024, web.AppKey("db", aiosqlite.Connection)
    waiting: list[tuple[tuple[str, str, bytes], asyncio.Future[bool]]] = []
    lock = asyncio.Lock()
    insert = "INSERT INTO events VALUES {} ON CONFLICT(delivery_id) DO NOTHING"

    async def insert_one(db: aiosqlite.Connection, row: tuple[str, str, bytes]) -> bool:
        async with db.execute(insert.format("(?, ?, ?)"), row) as cursor:  # autocommit: its own commit
            return cursor.rowcount == 1

    async def insert_grouped(db: aiosqlite.Connection, row: tuple[str, str, bytes]) -> bool:
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        waiting.append((row, done))
        async with lock:
            while not done.done():  # nobody wrote it meanwhile: write it and everything waiting
                batch = waiting[:1000]
                del waiting[:1000]
                sql = insert.format(", ".join(["(?, ?, ?)"] * len(batch))) + " RETURNING delivery_id"
                try:
                    new = {r[0] for r in await db.execute_fetchall(sql, [v for r, _ in batch for v in r])}
                except BaseException as exc:
                    for _, other in batch:
                        other.set_exception(exc if isinstance(exc, Exception) else RuntimeError("interrupted"))
                    raise
                for (delivery, _, _), other in batch:
                    other.set_result(delivery in new)
                    new.discard(delivery)  # the same id twice in a batch: stored once
        return done.result()

    async def webhook(request: web.Request) -> web.Response:
        body = await request.content.read(max_body + 1)
        if len(body) > max_body:
            return web.json_response({"error": "the body is larger than 1 MiB"}, status=413)
        timestamp = request.headers.get("X-Neeto-Timestamp", "")
        signature = request.headers.get("X-Neeto-Signature", "")
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) <= 300
        expected = "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not fresh or not hmac.compare_digest(expected.encode(), signature.encode()):
            return web.json_response({"error": "bad signature"}, status=401)
        delivery = request.headers.get("X-Neeto-Delivery", "")
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        if not delivery or not isinstance(event, dict) or event.get("id") != delivery:
            return web.json_response({"error": "not an event"}, status=400)
        row = (delivery, request.match_info["workspace"], body)
        stored = await (insert_grouped if group_commit else insert_one)(request.app[db_key], row)
        return web.json_response({"stored": stored})

    async def database(app: web.Application) -> AsyncIterator[None]:
        db = await aiosqlite.connect(db_path, isolation_level=None)
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute(
            "CREATE TABLE IF NOT EXISTS events (delivery_id TEXT NOT NULL UNIQUE, workspace TEXT NOT NULL, body BLOB)"
        )
        app[db_key] = db
        yield
        await db.close()

    app = web.Application()
    app.router.add_post("/api/neetochat/{workspace}/webhooks", webhook)
    app.cleanup_ctx.append(database)
    _logging_like_the_bridge()
    web.run_app(app, host=HOST, port=port, print=None, shutdown_timeout=30)


def serve_echo(port: int) -> None:
    """Microsoft's echo bot sample (botbuilder-python ``samples/python/02.echo-bot``): a
    ``CloudAdapter(ConfigurationBotFrameworkAuthentication(config))`` and an
    ``ActivityHandler`` whose ``on_message_activity`` sends one reply, through the
    connector at the activity's ``serviceUrl``."""
    from aiohttp import web
    from botbuilder.core import ActivityHandler, MessageFactory, TurnContext
    from botbuilder.core.integration import aiohttp_error_middleware
    from botbuilder.integration.aiohttp import CloudAdapter, ConfigurationBotFrameworkAuthentication

    class DefaultConfig:
        PORT = port
        APP_ID = os.environ.get("MicrosoftAppId", "")  # noqa: SIM112 - Microsoft's names
        APP_PASSWORD = os.environ.get("MicrosoftAppPassword", "")  # noqa: SIM112 - Microsoft's names
        APP_TYPE = os.environ.get("MicrosoftAppType", "MultiTenant")  # noqa: SIM112 - Microsoft's names
        APP_TENANTID = os.environ.get("MicrosoftAppTenantId", "")  # noqa: SIM112 - Microsoft's names

    class EchoBot(ActivityHandler):
        async def on_members_added_activity(self, members_added, turn_context: TurnContext):
            for member in members_added:
                if member.id != turn_context.activity.recipient.id:
                    await turn_context.send_activity("Hello and welcome!")

        async def on_message_activity(self, turn_context: TurnContext):
            return await turn_context.send_activity(MessageFactory.text(f"Echo: {turn_context.activity.text}"))

    config = DefaultConfig()
    adapter = CloudAdapter(ConfigurationBotFrameworkAuthentication(config))

    async def on_error(context: TurnContext, error: Exception) -> None:
        print(f"\n [on_turn_error] unhandled error: {error}", file=sys.stderr)
        await context.send_activity("The bot encountered an error or bug.")

    adapter.on_turn_error = on_error
    bot = EchoBot()

    async def messages(req: web.Request) -> web.Response:
        return await adapter.process(req, bot)

    app = web.Application(middlewares=[aiohttp_error_middleware])
    app.router.add_post("/api/messages", messages)
    _logging_like_the_bridge()
    web.run_app(app, host=HOST, port=config.PORT, print=None, shutdown_timeout=30)


def serve_connector(port: int) -> None:
    """A Bot Connector stand-in for the echo bot's replies: every POST answers 201 with a
    new activity id; ``GET /_replies`` lists the activity ids replied to (the last path
    segment of ``/v3/conversations/{conversation}/activities/{activity}``), in order of
    arrival. No access log."""
    import itertools

    from aiohttp import web

    ids = itertools.count(1)
    replied_to: list[str] = []

    async def reply(request: web.Request) -> web.Response:
        await request.read()
        head, _, last = request.path.rpartition("/activities/")
        replied_to.append(last if head else "")
        return web.json_response({"id": f"1:{next(ids)}"}, status=201)

    async def replies(request: web.Request) -> web.Response:
        return web.json_response(replied_to)

    app = web.Application()
    app.router.add_get("/_replies", replies)
    app.router.add_post("/{tail:.*}", reply)
    web.run_app(app, host=HOST, port=port, print=None, access_log=None, shutdown_timeout=5)


def serve_bridge_mongomock(port: int, dump: Path) -> None:
    """The bridge's app (``app.create_app``) on a MongoStore over mongomock-motor, set up as
    ``python app.py`` sets it up; at exit the jobs' dedupe keys and statuses go to ``dump``
    (the in-memory database dies with the process)."""
    from aiohttp import web
    from mongomock_motor import AsyncMongoMockClient

    import app as bridge
    from services.config import Settings
    from services.store.mongo import MongoStore

    _logging_like_the_bridge()
    client = AsyncMongoMockClient()
    store = MongoStore(client, "bench")
    application = bridge.create_app(Settings.from_env(), store=store)

    async def dump_jobs(_app: web.Application) -> None:
        jobs = [
            {"dedupe_key": doc.get("dedupe_key"), "status": doc.get("status"), "kind": doc.get("kind")}
            async for doc in client["bench"].jobs.find({}, {"dedupe_key": 1, "status": 1, "kind": 1})
        ]
        dump.write_text(json.dumps(jobs))

    application.on_cleanup.append(dump_jobs)  # after the bridge's own cleanup (jobs stopped)
    web.run_app(application, host=HOST, port=port, print=None, shutdown_timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._load", description="the benchmarks' reference servers")
    parser.add_argument("kind", choices=["bare", "minimal", "minimal-single", "echo", "connector", "bridge-mongomock"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dump", type=Path, help="bridge-mongomock: where to write the jobs at exit")
    parser.add_argument("--db", type=Path, help="minimal, minimal-single: the SQLite file")
    args = parser.parse_args(argv)
    if args.kind == "bare":
        serve_bare(args.port)
    elif args.kind in ("minimal", "minimal-single"):
        if args.db is None:
            parser.error(f"{args.kind} needs --db")
        serve_minimal(args.port, args.db, group_commit=args.kind == "minimal")
    elif args.kind == "echo":
        serve_echo(args.port)
    elif args.kind == "connector":
        serve_connector(args.port)
    else:
        if args.dump is None:
            parser.error("bridge-mongomock needs --dump")
        serve_bridge_mongomock(args.port, args.dump)
    return 0


if __name__ == "__main__":
    sys.exit(main())
