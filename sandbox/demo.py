"""``python -m sandbox``: the real bridge against the sandboxes, playing one conversation.

The two sandboxes run in this process as aiohttp servers; the bridge runs as operators run
it (``python app.py`` in a subprocess, embedded store) and knows them only by URL. The
world is connected the way an operator and a Teams admin would do it, then a scripted
conversation is played. A :class:`Transcript` narrates both sides by watching the
sandboxes' state, so what is printed is what actually happened, not what the script hoped.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import os
import re
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiohttp import web

from sandbox.microsoft import MicrosoftSandbox
from sandbox.neetochat import NeetoChatSandbox
from sandbox.page import PATH as PAGE_PATH
from sandbox.page import page_app, renderer_missing
from sandbox.world import WORKSPACE, ConnectError, Json, World, build_world

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
STEP_TIMEOUT = 30.0  # generous: one step is a few HTTP calls, but CI machines can be slow
STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 30.0  # the bridge drains in-flight jobs on SIGTERM (app.py: shutdown_timeout)
POLL_INTERVAL = 0.05
DEFAULT_PAGE_PORT = 4000
NEETO = "[neetoChat]"
TEAMS = "[Teams]    "


@dataclass(frozen=True)
class Options:
    port: int
    neeto_port: int
    ms_port: int
    data_dir: Path
    once: bool
    page_port: int | None = None  # None: DEFAULT_PAGE_PORT, or any free port when that one is taken


class DemoError(Exception):
    """The demo cannot go on; the message is the one-line reason printed on exit."""


# ---------------------------------------------------------------------- processes and servers


def free_port() -> int:
    """A port nobody listens on now, for a subprocess that must be told its port up front."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


async def serve(stack: contextlib.AsyncExitStack, app: web.Application, port: int) -> str:
    """Serve ``app`` on HOST:port (0 = any free port) until ``stack`` closes; its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    await web.TCPSite(runner, HOST, port).start()
    return f"http://{HOST}:{runner.addresses[0][1]}"


async def serve_page(stack: contextlib.AsyncExitStack, neeto_url: str, ms_url: str, port: int | None) -> str:
    """The sandbox page (sandbox/page.py); its URL. Without an explicit port it takes
    DEFAULT_PAGE_PORT, or any free port when another program has that one."""
    app = page_app(neeto_url, ms_url, workspace=WORKSPACE)
    if port is None:
        try:
            return await serve(stack, app, DEFAULT_PAGE_PORT) + PAGE_PATH
        except OSError:
            app = page_app(neeto_url, ms_url, workspace=WORKSPACE)  # a runner that failed cannot be reused
            port = 0
    return await serve(stack, app, port) + PAGE_PATH


class Bridge:
    """``python app.py`` in its own session, so a Ctrl-C in the terminal reaches only the
    demo, which then stops the bridge with SIGTERM and waits for it to drain."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.url = f"http://{HOST}:{env['PORT']}"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _open_log(self) -> TextIO:
        return self.log_path.open("a")

    async def start(self, http: aiohttp.ClientSession) -> None:
        """Start the process and wait until ``/readyz`` says its store is reachable."""
        with self._open_log() as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "app.py", cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not await self._ready(http):
            if self.proc.returncode is not None:
                raise DemoError(
                    f"the bridge exited with code {self.proc.returncode} on startup ({self._last_log_line()}); "
                    f"see {self.log_path}"
                )
            if time.monotonic() > deadline:
                raise DemoError(f"the bridge was not ready after {STARTUP_TIMEOUT:.0f} s; see {self.log_path}")
            await asyncio.sleep(POLL_INTERVAL)

    def _last_log_line(self) -> str:
        lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else "no output"

    async def _ready(self, http: aiohttp.ClientSession) -> bool:
        try:
            async with http.get(f"{self.url}/readyz") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    async def stop(self) -> None:
        """SIGTERM and wait (SIGKILL only if it does not drain in time)."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), SHUTDOWN_TIMEOUT)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise DemoError(f"the bridge did not stop within {SHUTDOWN_TIMEOUT:.0f} s and was killed") from None
        print(f"bridge stopped (exit code {code})")
        if code != 0:
            raise DemoError(f"the bridge exited with code {code} on SIGTERM; see {self.log_path}")


def bridge_env(ms: MicrosoftSandbox, port: int, data_dir: Path, admin_token: str) -> dict[str, str]:
    """The bridge's environment: local mode against the sandbox, always the embedded store
    (empty values win over a ``.env`` file, which the bridge reads without overriding)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("Microsoft", "MONGODB"))}
    return {
        **inherited,
        "PORT": str(port),
        "PUBLIC_URL": f"http://{HOST}:{port}",
        "DATA_DIR": str(data_dir),
        "MONGODB_URI": "",
        "GRAPH_BASE_URL": ms.graph_url,
        "TEAMS_SERVICE_URL": ms.service_url,
        "BRIDGE_ADMIN_TOKEN": admin_token,
        "MicrosoftAppId": "",
    }


# ---------------------------------------------------------------------- the transcript


def strip_html(markup: str) -> str:
    """A post's visible text on one line; line breaks become ": " (header: body)."""
    text = re.sub(r"<br\s*/?>|</p>", "\n", markup, flags=re.IGNORECASE)
    text = html.unescape(re.sub(r"<[^>]+>", "", text))
    return ": ".join(line.strip() for line in text.splitlines() if line.strip())


def thread_posts(roots: list[Json]) -> list[Json]:
    """A channel's posts as ``MicrosoftSandbox.posts`` nests them, flattened: each root
    post followed by its replies."""
    return [post for root in roots for post in (root, *root["replies"])]


def card_heading(attachment: Json) -> str:
    """A card's first text block as Teams renders it (Markdown escapes and links undone)."""
    content = attachment.get("content")
    if isinstance(content, str):
        content = json.loads(content)
    blocks = [b for b in (content or {}).get("body", []) if isinstance(b.get("text"), str)]
    text = blocks[0]["text"] if blocks else ""
    return re.sub(r"\\(.)", r"\1", re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text))


def _who(party: Json | None, unknown: str = "neetoChat") -> str:
    """A person's name (or email); an event without an actor was neetoChat's own doing."""
    return (party or {}).get("name") or (party or {}).get("email") or unknown


def _assignee(assignee: Json | None) -> str:
    return f"{_who(assignee)} ({assignee.get('type', 'agent')})" if assignee else "nobody"


def describe_message(number: int, message: Json) -> str:
    """``#1042 Ada Agent (agent, via Teams): "…"``: who wrote, and where."""
    sender = message["sender"]
    where = {"teams": "via Teams", "app": "in the app", "api": "via the API"}.get(message["source"])
    role = sender["type"] + (f", {where}" if where and sender["type"] == "agent" else "")
    note = " internal note" if message.get("internal") else ""
    return f'#{number} {_who(sender, "Someone")} ({role}){note}: "{message["body"]}"'


def describe_event(event: Json) -> str:
    """One neetoChat event in words."""
    data = event["data"]
    number = data["conversation"]["number"]
    match event["event"]:
        case "conversation.created":
            visitor = data["conversation"]["visitor"]
            first = f': "{data["message"]["body"]}"' if data.get("message") else ""
            conversation_id = data["conversation"]["id"]
            return f"{_who(visitor, 'A visitor')} (visitor) starts conversation #{number} (id {conversation_id}){first}"
        case "message.created":
            return describe_message(number, data["message"])
        case "conversation.assigned":
            return f"#{number} assigned to {_assignee(data['assignee'])} by {_who(data['actor'])}"
        case "conversation.unassigned":
            return f"#{number} unassigned from {_assignee(data['previous_assignee'])} by {_who(data['actor'])}"
        case "conversation.closed" | "conversation.reopened":
            return f"#{number} {event['event'].split('.')[1]} by {_who(data['actor'])}"
        case name:
            return f"#{number} {name}"


class Transcript:
    """Prints what happens on both sides, each thing once, by watching the sandboxes' state.

    One ``poll`` prints in causal order: people's posts in Teams, then everything that
    happened in neetoChat (its event log, whoever caused it), then what the bot did in
    Teams (channels, posts, deletions). Scripted steps print nothing themselves.
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self._posts: set[str] = set()
        self._channels: set[str] = set()
        self._deleted: set[str] = set()
        self._events = 0

    def poll(self) -> None:
        ms = self.world.ms
        channels = ms.channels(self.world.team_id, include_deleted=True)
        posts = [(c, post) for c in channels for post in thread_posts(ms.posts(c["id"]))]
        self._print_posts(posts, "user")
        events = self.world.neeto.events(WORKSPACE)
        for event in events[self._events :]:
            print(NEETO, describe_event(event))
        self._events = len(events)
        for channel in channels:
            if channel["id"] not in self._channels:
                self._channels.add(channel["id"])
                if channel["id"] != self.world.team_id:  # General was always there
                    print(TEAMS, f'channel "{channel["displayName"]}" created')
        self._print_posts(posts, "bot")
        for channel in channels:
            if channel["deleted"] and channel["id"] not in self._deleted:
                self._deleted.add(channel["id"])
                print(TEAMS, f'channel "{channel["displayName"]}" deleted')

    def _print_posts(self, posts: list[tuple[Json, Json]], kind: str) -> None:
        for channel, post in posts:
            if post["from"]["kind"] != kind or post["id"] in self._posts:
                continue
            self._posts.add(post["id"])
            name = channel["displayName"]
            if kind == "user":
                verb = f"replies in a thread of {name}" if post["reply_to"] else f"writes in {name}"
                print(TEAMS, f'{post["from"]["name"]} {verb}: "{strip_html(post["text"])}"')
            else:
                where = f"{name} (in a thread)" if post["reply_to"] else name
                cards = [f'card "{card_heading(a)}" …' for a in post["attachments"] or []]
                print(TEAMS, f"{where}: {' '.join([strip_html(post['text']), *cards]).strip()}")

    async def until(self, what: str, check: Callable[[], Any]) -> Any:
        """Keep narrating until ``check()`` is truthy, for at most STEP_TIMEOUT (the bridge
        works after it answers, so outcomes are observed, never assumed after a fixed
        sleep); the value of ``check()``."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            self.poll()
            if value := check():
                return value
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {STEP_TIMEOUT:.0f} s waiting for {what}")
            await asyncio.sleep(POLL_INTERVAL)

    async def follow(self) -> None:
        """Narrate forever (until the demo is stopped), for a person driving it by hand."""
        while True:
            self.poll()
            await asyncio.sleep(POLL_INTERVAL)


# ---------------------------------------------------------------------- the scripted conversation


def conversation_channel(world: World, number: int) -> Json | None:
    return next((c for c in world.ms.channels(world.team_id) if c["displayName"].startswith(f"{number} ")), None)


def bot_wrote(world: World, channel_id: str, needle: str) -> bool:
    """Whether the bot posted ``needle`` (as text or in a card) in the channel, in any thread."""
    for post in thread_posts(world.ms.posts(channel_id)):
        shown = strip_html(post["text"]) + "".join(card_heading(a) for a in post["attachments"] or [])
        if post["from"]["kind"] == "bot" and needle in shown:
            return True
    return False


def from_teams(world: World, conversation_id: str, body: str) -> Json | None:
    """The message the bridge wrote into neetoChat with this body, if any."""
    messages = world.neeto.messages(WORKSPACE, conversation_id)
    return next((m for m in messages if m["source"] == "teams" and m["body"] == body), None)


async def teams_post(world: World, channel_id: str, user: Json, text: str, **kwargs: Any) -> Json:
    """A person posts in a Teams channel; the bridge must accept the activity."""
    sent = await world.ms.user_posts(world.team_id, channel_id, user, text, **kwargs)
    if not (sent["status"] and 200 <= sent["status"] < 300):
        raise DemoError(f"the bridge answered {user['name']}'s Teams message with {sent['status']}: {sent['body']}")
    return sent


async def play(world: World, transcript: Transcript) -> None:
    """The scripted conversation: each step acts as a person would, then waits (with a
    deadline) for the outcome the README promises."""
    neeto, until = world.neeto, transcript.until
    await until("the link confirmation in General", lambda: bot_wrote(world, world.team_id, "connected"))

    conv = neeto.start_conversation(
        WORKSPACE,
        visitor_name="Vera Jones",
        visitor_email="vera@example.com",
        message="Hi, my order #42 hasn't arrived",
        prechat=[{"question": "Order number", "answer": "42"}],
    )
    conv_id, number = conv["id"], conv["number"]
    channel = await until("the conversation's channel", lambda: conversation_channel(world, number))
    channel_id = channel["id"]
    await until("the card in the new channel", lambda: bot_wrote(world, channel_id, "A conversation started by"))

    neeto.visitor_writes(WORKSPACE, conv_id, "It was due Monday")
    await until("the visitor's message in Teams", lambda: bot_wrote(world, channel_id, "It was due Monday"))

    ada_post = await teams_post(world, channel_id, world.ada, "Sorry about that, checking now")
    await until(
        "Ada's reply in neetoChat, assigned to her",
        lambda: (
            from_teams(world, conv_id, "Sorry about that, checking now")
            and (neeto.conversation(WORKSPACE, conv_id)["assignee"] or {}).get("id") == world.ada_agent["id"]
        ),
    )
    await until("the assignment notice in Teams", lambda: bot_wrote(world, channel_id, "assigned to Ada Agent"))

    await teams_post(world, channel_id, world.olly, "Courier says tomorrow", reply_to=ada_post["activity"]["id"])
    await until("Olly's reply in neetoChat", lambda: from_teams(world, conv_id, "Courier says tomorrow"))

    neeto.agent_writes(WORKSPACE, conv_id, world.ada_agent["id"], "Anything else I can help with?")
    await until("Ada's app message in Teams", lambda: bot_wrote(world, channel_id, "Anything else I can help with?"))

    billing = neeto.add_team(WORKSPACE, name="Billing")
    neeto.assign(WORKSPACE, conv_id, team_id=billing["id"], actor_agent_id=world.admin_agent["id"])
    await until("the Billing notice in Teams", lambda: bot_wrote(world, channel_id, "assigned to Billing"))

    await teams_post(world, channel_id, world.ada, "/close", mention_bot=True)
    await until(
        "/close to close the conversation and delete its channel",
        lambda: (
            neeto.conversation(WORKSPACE, conv_id)["status"] == "closed" and conversation_channel(world, number) is None
        ),
    )


# ---------------------------------------------------------------------- putting it together


def print_help(world: World, page_url: str, neeto_url: str, ms_url: str, bridge: Bridge, admin_token: str) -> None:
    """Where everything is, for a person who wants to keep driving the demo by hand."""
    conversations = f"{neeto_url}/{WORKSPACE}/_sandbox/conversations"
    channels = f"{ms_url}/v1.0/teams/{world.team['aadGroupId']}/channels"
    neeto_routes = [
        ("POST", conversations, '{"visitor_name", "visitor_email", "message"}'),
        ("POST", conversations + "/{id}/visitor_messages", '{"body"}'),
        ("POST", conversations + "/{id}/agent_messages", f'{{"agent_id": "{world.ada_agent["id"]}", "body"}}'),
        ("POST", conversations + "/{id}/assign", '{"agent_id" or "team_id", "actor_agent_id"}'),
        ("POST", conversations + "/{id}/close", '{"actor_agent_id"}'),
        ("GET", conversations + "/{id}", "the conversation and its messages"),
    ]
    team = f"{ms_url}/_sandbox/teams/{world.team_id}"
    ms_routes = [
        ("GET", channels, "the team's channels (Graph)"),
        ("GET", channels + "/{channel id}/messages", "a channel's posts (Graph)"),
    ]
    teams_routes = [
        ("GET", f"{ms_url}/_sandbox/teams", "teams and their members"),
        ("GET", team + "/channels", "the team's channels"),
        ("GET", team + "/channels/{channel id}/posts", "a channel's posts with their replies"),
        ("POST", team + "/channels/{channel id}/posts", '{"user": email, "text": HTML, "mention_bot"?}'),
        ("POST", team + "/channels/{channel id}/posts/{post id}/replies", '{"user", "text", "mention_bot"?}'),
        ("POST", team + "/channels/{channel id}/posts/{post id}/press", '{"user", "verb", "data"}: a card button'),
    ]
    admin_url = f"{bridge.url}/api/admin/workspaces/{WORKSPACE}"
    print("\nThe demo keeps running: drive it yourself (Ctrl-C stops everything).")
    print(f"  sandbox page   {page_url}  (both sides, live; type as the visitor or a Teams user)")
    print(f"  bridge         {bridge.url}  (log {bridge.log_path})")
    print(f"  admin token    {admin_token}")
    print(f'                 curl -H "Authorization: Bearer {admin_token}" {admin_url}')
    print(f"  neetoChat      {neeto_url}/{WORKSPACE}; HTTP control routes (JSON in and out, no auth):")
    _print_routes(neeto_routes)
    print(f"  Microsoft 365  Graph {ms_url}/v1.0, Bot Connector {ms_url}/connector/")
    _print_routes(ms_routes)
    print("  Teams client   act as a team member (ids with : and @ percent-encoded or as they are):")
    _print_routes(teams_routes)


def _print_routes(routes: list[tuple[str, str, str]]) -> None:
    width = max(len(path) for _, path, _ in routes)
    for method, path, what in routes:
        print(f"                 {method:<4} {path:<{width}}  {what}")


def _stop_on_signals() -> None:
    """SIGINT/SIGTERM cancel the demo once; the cleanup then stops the bridge and servers
    (a second Ctrl-C must not interrupt that, or the bridge would be left running)."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None

    def stop() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: None)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)


async def run(options: Options) -> None:
    """Servers, bridge, world, conversation; then (without ``--once``) keep narrating until
    a signal. Whatever happens, the exit stack stops the bridge before the servers it uses."""
    _stop_on_signals()
    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    admin_token = secrets.token_urlsafe(24)
    neeto, ms = NeetoChatSandbox(), MicrosoftSandbox()
    async with contextlib.AsyncExitStack() as stack:  # unwinds in reverse: bridge first, then servers
        neeto_url = await serve(stack, neeto.app(), options.neeto_port)
        ms_url = await serve(stack, ms.app(), options.ms_port)
        ms.set_base_url(ms_url)
        page_url = await serve_page(stack, neeto_url, ms_url, options.page_port)
        print(f"sandbox page           {page_url}  (open it in a browser: both sides, live)")
        if problem := renderer_missing():
            print(f"                       cards will not render there: {problem}")
        print(f"neetoChat sandbox      {neeto_url}")
        print(f"Microsoft 365 sandbox  {ms_url}")
        http = await stack.enter_async_context(aiohttp.ClientSession())
        port = options.port or free_port()
        bridge = Bridge(bridge_env(ms, port, data_dir, admin_token), data_dir / "bridge.log")
        ms.bot_endpoint = f"{bridge.url}/api/messages"
        stack.push_async_callback(bridge.stop)
        await bridge.start(http)
        print(f"bridge                 {bridge.url} (PID {bridge.pid}, log {bridge.log_path})")

        world = build_world(neeto, ms, neeto_url=neeto_url)
        try:
            await world.connect(http, bridge.url, admin_token)
        except ConnectError as exc:
            raise DemoError(str(exc)) from None
        print("connected: workspace acme ↔ team Support (authorized by Adam Admin)\n")
        transcript = Transcript(world)
        await play(world, transcript)
        transcript.poll()
        if options.once:
            print("\ndemo finished")
            return
        print_help(world, page_url, neeto_url, ms_url, bridge, admin_token)
        with contextlib.suppress(asyncio.CancelledError):
            await transcript.follow()
        print("\nstopping")


def main(options: Options) -> int:
    """Run the demo; 0 when it finished (or was stopped by a signal), 1 with a reason."""
    sys.stdout.reconfigure(line_buffering=True)  # a pipe (tests, tee) sees each line as it happens
    try:
        asyncio.run(run(options))
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        print("\nstopped")
    return 0
