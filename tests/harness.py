"""End-to-end harness: the real bridge against the sandbox's neetoChat and Microsoft 365.

The bridge runs either in-process (``create_app`` served by aiohttp's test server) or as a
real ``python app.py`` subprocess for restart and ``kill -9`` tests; either way it only
knows the sandbox by URL, exactly as it would know neetoChat and Microsoft.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sandbox.microsoft import MicrosoftSandbox
from sandbox.neetochat import NeetoChatSandbox
from sandbox.signing import sign
from sandbox.world import WORKSPACE, admin_request, build_world
from services.store.base import Store
from services.store.mongo import MongoStore
from services.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token-0123456789"
WS = WORKSPACE
API_KEY = "nc-api-key-acme-secret"
WEBHOOK_SECRET = "whsec-acme-secret"


async def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (the bridge works in the
    background after acknowledging, so tests observe outcomes, not call returns)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bridge_env(ms: MicrosoftSandbox, data_dir: Path, port: int | None = None) -> dict[str, str]:
    env = {
        "DATA_DIR": str(data_dir),
        "GRAPH_BASE_URL": ms.graph_url,
        "TEAMS_SERVICE_URL": ms.service_url,
        "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN,
        "MicrosoftAppId": "",
        # reconcile takes a message as soon as it exists (the tests lose them on purpose)
        "RECONCILE_GRACE_SECONDS": "0",
    }
    if port:
        env["PORT"] = str(port)
        env["PUBLIC_URL"] = f"http://127.0.0.1:{port}"
    return env


class Harness:
    """The shared demo world (sandbox/world.py): one neetoChat workspace ("acme"), one team
    with a General channel, two Teams users: Ada (also a neetoChat agent) and Olly (not an
    agent), and the authorizing admin Adam."""

    def __init__(self, neeto: NeetoChatSandbox, neeto_url: str, ms: MicrosoftSandbox, http: aiohttp.ClientSession):
        self.world = build_world(neeto, ms, neeto_url=neeto_url, api_key=API_KEY, webhook_secret=WEBHOOK_SECRET)
        self.neeto = neeto
        self.neeto_url = self.world.neeto_url
        self.ms = ms
        self.http = http
        self.bridge_url = ""
        self.admin_agent = self.world.admin_agent
        self.ada_agent = self.world.ada_agent
        self.adam = self.world.adam
        self.ada = self.world.ada
        self.olly = self.world.olly
        self.team = self.world.team

    @property
    def team_id(self) -> str:
        return self.team["id"]

    def set_bridge(self, url: str) -> None:
        self.bridge_url = url.rstrip("/")
        self.ms.bot_endpoint = f"{self.bridge_url}/api/messages"

    @property
    def webhook_url(self) -> str:
        return self.world.webhook_url(self.bridge_url)

    async def admin(self, method: str, path: str, body: Any = None, token: str | None = ADMIN_TOKEN):
        return await admin_request(self.http, self.bridge_url, token, method, path, body)

    async def connect(self, *, update_type: str = "new_conversations", notification_channel_id: str | None = None):
        """What an admin does: connect the workspace, install the app, link the team."""
        await self.world.connect(
            self.http,
            self.bridge_url,
            ADMIN_TOKEN,
            update_type=update_type,
            notification_channel_id=notification_channel_id,
        )
        await wait_for(lambda: self.general_posts(), what="the link confirmation in General")

    # Teams side --------------------------------------------------------------------------
    def general_posts(self) -> list[dict[str, Any]]:
        return self.ms.posts(self.team_id)

    def conversation_channel(self, number: int) -> dict[str, Any] | None:
        return next((c for c in self.ms.channels(self.team_id) if c["displayName"].split(" ")[0] == str(number)), None)

    async def wait_channel(self, number: int, timeout: float = 15.0) -> dict[str, Any]:
        return await wait_for(lambda: self.conversation_channel(number), timeout, f"channel for #{number}")

    async def open_conversation(self, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """A visitor called ``name`` starts a conversation ("hi"); (it, its Teams channel)."""
        conv = self.neeto.start_conversation(
            WS, visitor_name=name, visitor_email=f"{name.lower()}@example.com", message="hi"
        )
        return conv, await self.wait_channel(conv["number"])

    async def reply_to(self, channel_id: str, sent: dict[str, Any], containing: str) -> dict[str, Any]:
        """The bot's reply containing ``containing`` in the thread of the post ``sent``."""

        def find():
            post = next(p for p in self.ms.posts(channel_id) if p["id"] == sent["activity"]["id"])
            return next((r for r in post["replies"] if containing in (r["text"] or "")), None)

        return await wait_for(find, what=f"a reply containing {containing!r}")

    # neetoChat side ------------------------------------------------------------------------
    def from_teams(self, conversation_id: str) -> list[dict[str, Any]]:
        return [m for m in self.neeto.messages(WS, conversation_id) if m.get("source") == "teams"]

    def signed_webhook(self, event: dict[str, Any], *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None):
        body = json.dumps(event).encode()
        ts = int(time.time()) if timestamp is None else timestamp
        headers = {
            "Content-Type": "application/json",
            "X-Neeto-Event": event.get("event", ""),
            "X-Neeto-Delivery": event.get("id", ""),
            "X-Neeto-Timestamp": str(ts),
            "X-Neeto-Signature": sign(secret, ts, body),
        }
        return body, headers


class BridgeProcess:
    """``python app.py`` as operators run it, for restart and crash tests."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}"

    async def start(self, http: aiohttp.ClientSession) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("Microsoft", "MONGODB"))}
        env.update(self.env)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=log)

        async def healthy() -> bool:
            if self.proc and self.proc.poll() is not None:
                raise AssertionError(f"bridge exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                async with http.get(f"{self.url}/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(healthy, 30, "the bridge to start")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    async def terminate(self) -> int:
        """SIGTERM and wait for the drain, keeping the event loop (and so the sandbox the
        bridge may still be talking to) running meanwhile."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("the bridge did not stop within 30 s of SIGTERM") from None
        return self.proc.returncode


async def stored_jobs(store: Store, workspace_id: str) -> int:
    """Every job stored for the workspace, done ones included: the store's ``job_counts``
    counts only pending and dead jobs (what an operator watches), so this reads the backend."""
    if isinstance(store, SqliteStore):
        rows = await store.db.execute_fetchall("SELECT COUNT(*) FROM jobs WHERE workspace_id = ?", (workspace_id,))
        return int(list(rows)[0][0])
    assert isinstance(store, MongoStore)
    return int(await store.db.jobs.count_documents({"workspace_id": workspace_id}))


# Debian's Chromium, driven by playwright without any browser download (which fails here).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    """Fail (never skip) with what to install when the browser is missing."""
    if not CHROMIUM.exists():
        found = shutil.which("chromium")
        pytest.fail(
            f"{CHROMIUM} is missing{f' (found {found})' if found else ''}: "
            "install Debian's Chromium with `apt-get update && apt-get install -y chromium`"
        )


def post_bodies(posts: list[dict[str, Any]]) -> list[str]:
    """The message text of bridged posts (after the bold sender line)."""
    return [p["text"].split("<br>", 1)[1] for p in posts if p["text"] and "<br>" in p["text"]]
