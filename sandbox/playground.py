"""Microsoft 365 Agents Playground as the bridge's Teams client (``scripts/playground`` and
tests/test_playground.py; docs/playground.md says what is relied on and why).

The playground (npm ``@microsoft/m365agentsplayground``, pinned in package.json) is
Microsoft's local Teams emulator: a web page where a person writes in a team's channels, and
a mock Bot Connector that the bot answers through. It sends the bot the activities Teams'
own code generates, where the sandbox's Teams client (sandbox/microsoft.py) only imitates
them. It has no Graph, so channels are still created and deleted through the sandbox's
Graph, and the two meet on ids (``.m365agentsplayground.yml`` is the source of truth):

- the sandbox holds the playground's team under the playground's ids (team thread id, AAD
  group id, tenant), so the bridge creates conversation channels in "the" team;
- a channel the bridge creates under the name of a channel the playground declares
  ("1042 Vera Jones") gets that channel's id, so the bridge's posts land in the playground's
  channel. Another name gets a fresh id that the playground does not know (it refuses posts
  there): the playground's config allows one channel besides General, so one conversation.

``python -m sandbox.playground`` is the README's command for a person (via
scripts/playground); :class:`Playground`, :class:`PlaygroundMicrosoft` and
:func:`playground_world` are what the test drives.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from sandbox.demo import Bridge, DemoError, _stop_on_signals, bridge_env, describe_event, free_port, serve
from sandbox.microsoft import Channel, MicrosoftSandbox, Team
from sandbox.neetochat import NeetoChatSandbox
from sandbox.world import WORKSPACE, Json, World, admin_request, build_world

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "@microsoft/m365agentsplayground"
VERSION = "0.2.28"  # the internal endpoints used below are this version's (docs/playground.md)
PACKAGE_DIR = ROOT / "node_modules" / "@microsoft" / "m365agentsplayground"
CONFIG_FILE = ROOT / ".m365agentsplayground.yml"
HOST = "127.0.0.1"
DEFAULT_PORT = 56150  # the playground's own default (it takes a free one when that is taken)
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
# ``from``/``to`` of the log stream's "bot" items, as this version labels them.
PLAYGROUND = "Microsoft 365 Agents Playground"
BOT = "User Application"


def playground_missing() -> str | None:
    """Why the playground cannot run here (None when it can): npm has not installed the
    pinned version, or there is no ``node``."""
    manifest = PACKAGE_DIR / "package.json"
    if not manifest.is_file():
        return f"{PACKAGE} is not in node_modules: run `npm ci` in {ROOT}"
    version = json.loads(manifest.read_text()).get("version")
    if version != VERSION:
        return f"{PACKAGE} {version} is installed but {VERSION} is pinned: run `npm ci` in {ROOT}"
    if shutil.which("node") is None:
        return "node is not on PATH: install Node.js 20 or later"
    return None


class PlaygroundError(Exception):
    """The playground did not start or refused a call; the message says which and why."""


def _ok(item: Json | None) -> bool:
    return bool(item) and 200 <= item["response"]["statusCode"] < 300  # type: ignore[index]


class Playground:
    """The playground's CLI as a subprocess in its own process group (``stop`` ends the
    group: node and anything it started), never opening a browser, telemetry off, with the
    bot at ``bot_endpoint`` on the ``msteams`` channel.

    What it records comes from its log stream (the page's log panel, ``/_ws/log/stream``),
    kept in ``log`` from start to stop: each activity it sent the bot with the bot's HTTP
    status, and each connector call the bot made with the playground's answer."""

    def __init__(self, *, bot_endpoint: str, workdir: Path, port: int = 0, config_file: Path = CONFIG_FILE) -> None:
        self.bot_endpoint = bot_endpoint
        self.workdir = workdir
        self.port = port  # 0: any free port
        self.config_file = config_file
        self.url = ""
        self.config: Json = {}  # as the playground loaded it: ``name`` keys, General listed (testConfig)
        self.log: list[Json] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    @property
    def log_path(self) -> Path:
        """Its console output (with stdout not a TTY it prints nothing else)."""
        return self.workdir / "playground.log"

    async def start(self, http: aiohttp.ClientSession) -> None:
        """Start it in ``workdir`` (its working folder: it writes ``devTools/`` there) and
        wait until it listens, has loaded the config and streams its log to us."""
        if problem := playground_missing():
            raise PlaygroundError(problem)
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "TEAMSAPPTESTER_BROWSER": "none",
            "TEAMSAPPTESTER_LOGFILE": str(self.log_path),
            "M365_AGENTS_PLAYGROUND_CONFIG_PATH": str(self.config_file),
            "APPLICATION_INSIGHTS_NO_STATSBEAT": "true",  # --disable-telemetry leaves the SDK's own beat on
        }
        command = [
            "node",
            str(PACKAGE_DIR / "cli.js"),
            "--app-endpoint",
            self.bot_endpoint,
            "--channel-id",
            "msteams",
            "--port",
            str(self.port),
            "--disable-telemetry",
        ]
        self.proc = await asyncio.create_subprocess_exec(
            *command,
            cwd=self.workdir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        try:  # "Listening on <port>" is its first line on a stdout that is not a TTY
            line = await asyncio.wait_for(self.proc.stdout.readline(), STARTUP_TIMEOUT)
        except TimeoutError:
            raise PlaygroundError(f"the playground did not listen within {STARTUP_TIMEOUT:.0f} s") from None
        found = re.search(rb"Listening on (\d+)", line)
        if not found:
            raise PlaygroundError(f"the playground did not start: {line.decode(errors='replace')} {self._log_tail()}")
        self._tasks.append(asyncio.get_running_loop().create_task(self._drain(self.proc.stdout)))
        self.url = f"http://{HOST}:{int(found.group(1))}"
        self.config = await self._loaded_config(http)
        self._ws = await http.ws_connect(f"{self.url.replace('http', 'ws', 1)}/_ws/log/stream")
        self._tasks.append(asyncio.get_running_loop().create_task(self._read_log(self._ws)))

    @staticmethod
    async def _drain(stream: asyncio.StreamReader) -> None:
        """Keep reading stdout so that a full pipe can never block the playground."""
        while await stream.read(65536):
            pass

    async def _loaded_config(self, http: aiohttp.ClientSession) -> Json:
        """The config it loaded; it answers once its backend is mounted (a config it cannot
        parse makes it exit, with the reason in its log)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise PlaygroundError(f"the playground exited with code {self.proc.returncode}: {self._log_tail()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{self.url}/_internal/v1/testConfig") as resp:
                    if resp.status == 200:
                        return (await resp.json())["config"]
            if time.monotonic() > deadline:
                raise PlaygroundError(f"the playground's API did not answer within {STARTUP_TIMEOUT:.0f} s")
            await asyncio.sleep(0.05)

    def _log_tail(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text.strip()[-2000:] or "(no output)"

    async def _read_log(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                item = json.loads(message.data)
                if item.get("logAction") == "appendLog":
                    self.log.append(item["log"])

    async def stop(self) -> None:
        """End its process group: SIGTERM, then SIGKILL if it lingers. Safe to call twice."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)  # start_new_session: the group's id is the pid
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
                return

    # ---------------------------------------------------------------- what a person does in the page

    async def _post(self, http: aiohttp.ClientSession, path: str, body: Json) -> Any:
        async with http.post(f"{self.url}{path}", json=body) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise PlaygroundError(f"POST {path} answered {resp.status}: {text}")
            return json.loads(text) if text else None

    async def install(self, http: aiohttp.ClientSession, conversation_id: str) -> None:
        """Install the app in a team (``conversation_id``: its General channel, whose id is
        the team's) or a chat: the playground sends the bot ``installationUpdate`` add and
        ``conversationUpdate`` (the bot added) as the current user, concurrently."""
        await self._post(http, f"/_debug/conversation/{quote(conversation_id, safe='')}/installation", {})

    async def write(self, http: aiohttp.ClientSession, conversation_id: str, text: str, *, mention_bot: bool) -> Json:
        """The current user types ``text`` in a channel (a new post: its thread is
        ``postConversationId``) or in a post's thread (a reply). In a channel only a message
        that @mentions the bot reaches it. Returns ``{"messageId", "postConversationId"?, …}``."""
        user = self.config["currentUser"]
        mention = f"<at>{self.config['bot']['name']}</at>"
        body: Json = {
            "from": {"id": user["id"]},
            "text": f"{mention} {text}" if mention_bot else text,
            "textFormat": "plain",
        }
        if mention_bot:
            body["mentions"] = [{"mentioned": {"id": self.config["bot"]["id"]}, "text": mention}]
        path = f"/_conversation/v1/conversations/{quote(conversation_id, safe='')}/messages"
        return await self._post(http, path, body)

    async def press(self, http: aiohttp.ClientSession, post: Json, verb: str, *, user_id: str) -> Json:
        """``user_id`` presses the ``Action.Execute`` button ``verb`` of the card in a bot
        post (``post``: the log item of the post): the page's ``adaptiveCard/action`` invoke.
        Returns the bot's invoke answer ``{"type", "value"}`` (a card answer replaces the card)."""
        created = post["response"]["body"]  # {"id": "<channel>;messageid=<id>", "activityId": "<id>"}
        activity = post["request"]["body"].get("activity") or post["request"]["body"]
        action = next(a for a in activity["attachments"][0]["content"]["actions"] if a.get("verb") == verb)
        body = {
            "name": "adaptiveCard/action",
            "value": {"action": action, "trigger": "manual"},
            "from": {"id": user_id},
            "conversation": {"id": created["id"]},
            "replyToId": created["activityId"],
        }
        return await self._post(http, "/_conversation/v1/invoke", body)

    async def send_activity(self, http: aiohttp.ClientSession, activity: Json) -> None:
        """A custom activity ("Mock an Activity" in the page), sent to the bot as it is."""
        await self._post(http, "/_internal/v1/customActivities", activity)

    def channel_message(self, conversation_id: str, user: Json, text: str) -> Json:
        """A channel message from ``user``, without the bot @mentioned, shaped as the
        playground shapes channel messages: what Teams delivers to a bot with the RSC
        permission ``ChannelMessage.Read.Group``, which the playground itself never sends."""
        team_id = self.config["teams"][0]["id"]
        channel_id = conversation_id.partition(";messageid=")[0]
        tenant = self.config["tenantId"]
        return {
            "type": "message",
            "id": secrets.token_hex(16),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "channelId": "msteams",
            "serviceUrl": f"http://localhost:{self.url.rsplit(':', 1)[1]}/_connector",
            "from": {"id": user["id"], "name": user["name"], "aadObjectId": user["aadObjectId"]},
            "recipient": {"id": self.config["bot"]["id"], "name": self.config["bot"]["name"]},
            "conversation": {"id": conversation_id, "isGroup": True, "conversationType": "channel", "tenantId": tenant},
            "text": text,
            "textFormat": "plain",
            "locale": "en-US",
            "channelData": {
                "teamsChannelId": channel_id,
                "teamsTeamId": team_id,
                "tenant": {"id": tenant},
                "team": {"id": team_id},
                "channel": {"id": channel_id},
            },
            "entities": [{"type": "clientInfo", "locale": "en-US", "country": "US", "timezone": "UTC"}],
        }

    # ---------------------------------------------------------------- what it recorded

    async def flush_log(self, http: aiohttp.ClientSession) -> None:
        """Wait until everything the playground logged so far has reached ``log``: setting
        its debug options (to what they are) logs a line, and the stream keeps order."""
        mark = len(self.log)
        await self._post(http, "/_internal/v1/configDebugOptions", {"eventsRecordingEnabled": False})
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not any(i.get("displayText") == "Events recording disabled." for i in self.log[mark:]):
            if time.monotonic() > deadline:
                raise PlaygroundError("the playground's log stream went quiet")
            await asyncio.sleep(0.02)

    def to_bot(self) -> list[Json]:
        """The activities it sent the bot that the bot answered, with the bot's status."""
        return [i for i in self.log if i.get("type") == "bot" and i.get("from") == PLAYGROUND]

    def from_bot(self) -> list[Json]:
        """The connector calls the bot made, with the playground's status."""
        return [i for i in self.log if i.get("type") == "bot" and i.get("from") == BOT]

    def warnings(self) -> list[str]:
        """The log's warnings and errors ("Cannot connect to your app", "not implemented" …)."""
        return [i.get("displayText", "") for i in self.log if i.get("level") in ("warning", "error")]

    def sent(self, activity_type: str, text: str = "", conversation_prefix: str = "") -> Json | None:
        """The log item of an activity of that type it sent (its text containing ``text``, its
        conversation id starting with ``conversation_prefix``) that the bot answered."""
        for item in self.to_bot():
            body = item["request"]["body"]
            if (
                body.get("type") == activity_type
                and text in (body.get("text") or "")
                and body["conversation"]["id"].startswith(conversation_prefix)
            ):
                return item
        return None

    def bot_posted(self, needle: str, conversation_prefix: str = "") -> Json | None:
        """The first bot post, reply or update the playground accepted whose text or card
        contains ``needle``, in a conversation whose id starts with ``conversation_prefix``
        (a channel id covers its threads)."""
        for item in self.from_bot():
            body = item["request"].get("body") or {}
            activity = body.get("activity") or body  # a new post (createConversation) wraps its activity
            channel = (body.get("channelData") or {}).get("channel") or {}
            conversation = item.get("conversationId") or channel.get("id")
            shown = (activity.get("text") or "") + json.dumps(activity.get("attachments") or [], ensure_ascii=False)
            if _ok(item) and needle in shown and (conversation or "").startswith(conversation_prefix):
                return item
        return None

    def refused(self) -> list[Json]:
        """Every exchange that was not a 2xx: the bot's answers to the playground's
        activities, and the playground's answers to the bot's connector calls."""
        return [i for i in self.to_bot() + self.from_bot() if not _ok(i)]


class PlaygroundMicrosoft(MicrosoftSandbox):
    """The Microsoft 365 sandbox holding the playground's team under the playground's ids
    (``adopt``); its Graph gives a channel created under a name the playground declares
    that channel's id."""

    def __init__(self, config: Json) -> None:
        super().__init__(tenant_id=config["tenantId"])
        self.bot_name = config["bot"]["name"]
        self._declared: dict[tuple[str, str], str] = {}  # (team id, lower-case name) → channel id

    def adopt(self, config: Json) -> Json:
        """The playground's team with General only (its other channel is the bridge's to
        create) and its people. The bot is not installed as far as this sandbox knows, so
        the sandbox never sends the bot activities for this team: the playground does."""
        team_config = config["teams"][0]
        people = [config["currentUser"], *config["users"]]
        for user in people:
            self.users[user["aadObjectId"]] = {
                "id": user["id"],
                "name": user["name"],
                "aadObjectId": user["aadObjectId"],
                "email": user["email"],
                "userPrincipalName": user["userPrincipleName"],
                "givenName": user["givenName"],
                "surname": user["surname"],
                "tenantId": self.tenant_id,
                "userRole": "user",
            }
        team = Team(
            id=team_config["id"],
            aad_group_id=team_config["aadGroupId"],
            name=team_config["name"],
            members=[u["aadObjectId"] for u in people],
        )
        team.channels[team.id] = Channel(id=team.id, name="General", description=None, created=time.time())
        self.teams[team.id] = team
        for channel in team_config["channels"]:
            if channel["id"] != team.id:
                self._declared[(team.id, channel["name"].lower())] = channel["id"]
        return self._team_ref(team)

    async def _graph_create_channel(self, request: web.Request) -> web.Response:
        response = await super()._graph_create_channel(request)
        if response.status != 201 or not isinstance(response.body, bytes):
            return response
        team = self._graph_team(request)
        created = json.loads(response.body)
        wanted = self._declared.get((team.id, created["displayName"].lower()))
        if not wanted or wanted in team.channels:  # not declared, or used already (deleted ones too)
            return response
        channel = team.channels.pop(created["id"])
        channel.id = wanted
        team.channels[wanted] = channel
        return web.json_response({**created, **self._channel_json(team, channel)}, status=201)


@dataclass
class PlaygroundWorld:
    """neetoChat's side of the demo world (workspace "acme", agents Adam Admin and Ada
    Agent: sandbox/world.py) and the playground's team and people."""

    world: World
    playground: Playground
    team: Json  # id, name, aadGroupId, tenantId

    @property
    def neeto(self) -> NeetoChatSandbox:
        return self.world.neeto

    @property
    def team_id(self) -> str:
        return self.team["id"]

    def user(self, email: str) -> Json:
        """A person of the playground's config by email (any case)."""
        config = self.playground.config
        return next(u for u in [config["currentUser"], *config["users"]] if u["email"].lower() == email.lower())

    @property
    def conversation_channel(self) -> Json:
        """The playground's one channel besides General: ``{"id", "name"}``."""
        return next(c for c in self.playground.config["teams"][0]["channels"] if c["id"] != self.team_id)

    async def connect_workspace(self, http: aiohttp.ClientSession, bridge_url: str, admin_token: str) -> None:
        """What an operator does first: connect the neetoChat workspace to the bridge."""
        connection = {
            "base_url": f"{self.world.neeto_url}/{WORKSPACE}",
            "api_key": self.world.api_key,
            "webhook_secret": self.world.webhook_secret,
        }
        path = f"/api/admin/workspaces/{WORKSPACE}"
        status, body = await admin_request(http, bridge_url, admin_token, "PUT", path, connection)
        if status not in (200, 201):
            raise PlaygroundError(f"connecting the workspace answered {status}: {body}")

    def installed(self) -> bool:
        """Whether the bot answered both installation activities for the team with a 2xx."""
        return all(
            _ok(self.playground.sent(kind, conversation_prefix=self.team_id))
            for kind in ("installationUpdate", "conversationUpdate")
        )

    async def link_team(self, http: aiohttp.ClientSession, bridge_url: str, admin_token: str) -> None:
        """What the admin's sign-in does, through the operator API: link the workspace to the
        playground's team (General is the notification channel), Adam Admin authorizing; then
        neetoChat's webhooks go to the bridge."""
        adam = self.user(self.world.admin_agent["email"])
        link = {
            "tenant_id": self.playground.config["tenantId"],
            "team_id": self.team_id,
            "update_type": "new_conversations",
            "authorizing_user": {"aad_object_id": adam["aadObjectId"], "email": adam["email"], "name": adam["name"]},
        }
        path = f"/api/admin/workspaces/{WORKSPACE}/teams"
        status, body = await admin_request(http, bridge_url, admin_token, "PUT", path, link)
        if status != 200:
            raise PlaygroundError(f"linking the team answered {status}: {body}")
        self.neeto.set_webhook_url(WORKSPACE, self.world.webhook_url(bridge_url))

    def start_conversation(self) -> Json:
        """Vera Jones writes in the widget: conversation #1042 (the sandbox's first number),
        whose channel name "1042 Vera Jones" the playground config declares."""
        return self.neeto.start_conversation(
            WORKSPACE,
            visitor_name="Vera Jones",
            visitor_email="vera@example.com",
            message="Hi, my order #42 hasn't arrived",
            prechat=[{"question": "Order number", "answer": "42"}],
        )


def playground_world(
    neeto: NeetoChatSandbox, ms: PlaygroundMicrosoft, playground: Playground, *, neeto_url: str
) -> PlaygroundWorld:
    """The demo world's neetoChat side with the playground's team in place of the sandbox's
    own Teams team and people (which ``build_world`` also makes; dropped here, so that the
    Microsoft 365 sandbox holds exactly what the playground shows)."""
    world = build_world(neeto, ms, neeto_url=neeto_url)
    del ms.teams[world.team_id]
    for person in (world.adam, world.ada, world.olly):
        del ms.users[person["aadObjectId"]]
    return PlaygroundWorld(world=world, playground=playground, team=ms.adopt(playground.config))


# ---------------------------------------------------------------------- for a person: scripts/playground


async def _until(check: Callable[[], Any]) -> Any:
    """Wait for as long as a person takes (Ctrl-C stops it)."""
    while True:
        if value := check():
            return value
        await asyncio.sleep(0.1)


async def run(port: int, playground_port: int, data_dir: Path) -> None:
    """Playground, sandboxes and bridge; then wait for the person to install the app, link
    the team, start conversation #1042 and narrate neetoChat until Ctrl-C or SIGTERM (which
    cancel this task once: the exit stack then stops the bridge and ends the playground)."""
    _stop_on_signals()
    admin_token = secrets.token_urlsafe(24)
    async with contextlib.AsyncExitStack() as stack:  # unwinds in reverse: bridge, servers, playground
        http = await stack.enter_async_context(aiohttp.ClientSession())
        port = port or free_port()
        playground = Playground(
            bot_endpoint=f"http://{HOST}:{port}/api/messages", workdir=data_dir / "playground", port=playground_port
        )
        stack.push_async_callback(playground.stop)
        await playground.start(http)
        neeto, ms = NeetoChatSandbox(), PlaygroundMicrosoft(playground.config)
        neeto_url = await serve(stack, neeto.app(), 0)
        ms.set_base_url(await serve(stack, ms.app(), 0))
        bridge = Bridge(bridge_env(ms, port, data_dir, admin_token), data_dir / "bridge.log")
        stack.push_async_callback(bridge.stop)
        await bridge.start(http)
        pw = playground_world(neeto, ms, playground, neeto_url=neeto_url)
        await pw.connect_workspace(http, bridge.url, admin_token)
        print(f"bridge                 {bridge.url}  (log {bridge.log_path})")
        print(f"neetoChat sandbox      {neeto_url}/{WORKSPACE}  (workspace acme; agents Adam Admin, Ada Agent)")
        print(f"Microsoft 365 sandbox  {ms.graph_url}  (Graph: the team's channels)")
        print(f"playground             {playground.url}  (log {playground.log_path})")
        page = playground.url.replace(HOST, "localhost")
        print(f"\n1. Open {page} and keep it open (it shows what arrives while it is open).")
        print(f'   You are Ada Agent, a neetoChat agent. Open General of the team "{pw.team["name"]}": that installs')
        print("   the app there (so does Mock an Activity → Install application).")
        await _until(pw.installed)
        await pw.link_team(http, bridge.url, admin_token)
        await _until(lambda: playground.bot_posted("now connected", pw.team_id))
        print("   ✓ The bot says in General that the workspace is connected to the team.")
        conversation = pw.start_conversation()
        bot = playground.config["bot"]["name"]
        number, channel = conversation["number"], pw.conversation_channel["name"]
        print(f"2. Vera Jones wrote in the neetoChat widget: conversation #{number}, a card in General")
        print(f'   and the channel "{channel}". Write there with @{bot} (type @ and pick it):')
        print("   it reaches neetoChat as Ada Agent (printed below). Reply in a thread the same way; the")
        print(f"   playground delivers only messages that @mention the bot. @{bot} /help lists the commands.")
        print("Ctrl-C stops everything.\n")
        seen = 0
        while True:
            events = neeto.events(WORKSPACE)
            for event in events[seen:]:
                print("[neetoChat]", describe_event(event))
            seen = len(events)
            await asyncio.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    """Run until Ctrl-C; 1 with a one-line reason when something cannot start."""
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.playground",
        description="The bridge against the sandboxes, with Microsoft 365 Agents Playground as the Teams client.",
    )
    parser.add_argument("--port", type=int, default=3978, help="the bridge's port (0: any free port; default 3978)")
    parser.add_argument(
        "--playground-port",
        type=int,
        default=DEFAULT_PORT,
        help=f"the playground's port (default {DEFAULT_PORT}, or a free one when taken)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the bridge's DATA_DIR (default: a new ./data/playground/<time>: everything else starts empty too)",
    )
    args = parser.parse_args(argv)
    data_dir = (args.data_dir or Path("data/playground") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    try:
        asyncio.run(run(args.port, args.playground_port, data_dir))
    except (PlaygroundError, DemoError) as exc:
        print(f"playground failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\nstopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
