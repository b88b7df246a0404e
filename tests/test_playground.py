"""The bridge as Teams drives it: Microsoft 365 Agents Playground (Microsoft's own Teams
emulator, npm, pinned) as the Teams client of a real ``python app.py``, with the sandboxes for
neetoChat and for Graph (sandbox/playground.py explains how they share ids). What is checked
is what the playground recorded: every activity it sent the bridge got a 2xx, the bridge's
answers arrived, and the playground refused none of the bridge's connector calls.

Skipped only when node_modules lacks the pinned package (CI runs ``npm ci`` first).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sandbox.demo import Bridge, bridge_env, free_port, serve
from sandbox.neetochat import NeetoChatSandbox
from sandbox.playground import (
    Playground,
    PlaygroundMicrosoft,
    PlaygroundWorld,
    playground_missing,
    playground_world,
)
from sandbox.world import WORKSPACE
from tests.harness import ADMIN_TOKEN, wait_for

pytestmark = pytest.mark.skipif(playground_missing() is not None, reason=str(playground_missing()))

TIMEOUT = 15.0
FIXTURES = Path(__file__).parent / "fixtures" / "playground"  # recorded from the pinned version


def shape(value: Any) -> Any:
    """An activity's keys and value types, not its values (ids, times, ports): what a new
    playground version could change under the bridge."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@dataclass
class Live:
    """Everything running, the workspace connected (not yet linked to the team)."""

    http: aiohttp.ClientSession
    playground: Playground
    bridge: Bridge
    world: PlaygroundWorld

    @property
    def neeto(self) -> NeetoChatSandbox:
        return self.world.neeto

    def diagnosis(self) -> str:
        """What to look at when a wait times out: refusals, the playground's warnings, the
        bridge's last log lines."""
        refused = [
            f"{i['from']} → {i['to']}: "
            f"{i.get('activityName')} {i['response']['statusCode']} {i['response'].get('body')}"
            for i in self.playground.refused()
        ]
        bridge_log = self.bridge.log_path.read_text(errors="replace").splitlines()[-15:]
        return "\n".join(
            ["refused:", *refused, "playground warnings:", *self.playground.warnings(), "bridge log:", *bridge_log]
        )

    async def until(self, what: str, check: Callable[[], Any]) -> Any:
        try:
            return await wait_for(check, TIMEOUT, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnosis()}") from None

    def from_teams(self, conversation_id: str, body: str) -> Callable[[], dict[str, Any] | None]:
        """A check for the neetoChat message the bridge wrote with this body."""

        def check() -> dict[str, Any] | None:
            messages = self.neeto.messages(WORKSPACE, conversation_id)
            return next((m for m in messages if m["source"] == "teams" and m["body"] == body), None)

        return check

    async def install_and_link(self) -> None:
        """A person installs the app in the team; then the admin's link (operator API)."""
        await self.playground.install(self.http, self.world.team_id)
        await self.until("the bot to accept both installation activities", self.world.installed)
        await self.world.link_team(self.http, self.bridge.url, ADMIN_TOKEN)


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    """The playground (own process group, temporary working folder, free port), the two
    sandboxes and ``python app.py``. Whatever happens, the exit stack stops the bridge
    (it drains, still talking to the others), the sandboxes, then the playground's group."""
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())
        port = free_port()
        playground = Playground(bot_endpoint=f"http://127.0.0.1:{port}/api/messages", workdir=tmp_path / "playground")
        stack.push_async_callback(playground.stop)
        await playground.start(http)
        neeto, ms = NeetoChatSandbox(retry_base_delay=0.05), PlaygroundMicrosoft(playground.config)
        neeto_url = await serve(stack, neeto.app(), 0)
        ms.set_base_url(await serve(stack, ms.app(), 0))
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        bridge = Bridge(bridge_env(ms, port, data_dir, ADMIN_TOKEN), tmp_path / "bridge.log")
        stack.push_async_callback(bridge.stop)
        await bridge.start(http)
        world = playground_world(neeto, ms, playground, neeto_url=neeto_url)
        await world.connect_workspace(http, bridge.url, ADMIN_TOKEN)
        yield Live(http=http, playground=playground, bridge=bridge, world=world)
    assert playground.proc is not None and playground.proc.returncode is not None
    with pytest.raises(ProcessLookupError):  # nothing of the playground's process group is left
        os.killpg(playground.proc.pid, 0)


async def test_a_person_in_the_playground_reaches_neetochat_and_back(live: Live) -> None:
    playground, world, neeto = live.playground, live.world, live.neeto

    # Installed and linked: the post-install message, in General (its id is the team's).
    await live.install_and_link()
    await live.until("the link confirmation in General", lambda: playground.bot_posted("now connected", world.team_id))

    # A visitor writes; the conversation's channel is the playground's channel.
    conversation = world.start_conversation()
    channel = world.conversation_channel
    assert channel["name"] == f"{conversation['number']} Vera Jones"
    card = await live.until("the card", lambda: playground.bot_posted("A conversation started by", channel["id"]))

    # Ada (a neetoChat agent, the page's current user) @mentions the bot in the channel.
    post = await playground.write(live.http, channel["id"], "Sorry about that, checking now", mention_bot=True)
    ada_says = await live.until("Ada's message", live.from_teams(conversation["id"], "Sorry about that, checking now"))
    assert ada_says["sender"]["email"] == world.world.ada_agent["email"]

    # Olly (not an agent) replies in that thread without @mentioning the bot: the playground
    # delivers only @mentions, so this is a custom activity in its channel-message shape.
    thread = post["postConversationId"]
    assert thread == f"{channel['id']};messageid={post['messageId']}"
    olly = world.user("olly@partner.test")
    await playground.send_activity(live.http, playground.channel_message(thread, olly, "Courier says tomorrow"))
    olly_says = await live.until("Olly's reply", live.from_teams(conversation["id"], "Courier says tomorrow"))
    assert olly_says["sender"]["email"] == world.world.admin_agent["email"]  # non-agents write as the admin

    # Olly presses the card's "Assign to me": only agents may, and the bridge says so.
    answer = await playground.press(live.http, card, "assign_to_me", user_id=olly["id"])
    assert answer["type"] == "application/vnd.microsoft.activity.message"
    assert "Only neetoChat agents" in answer["value"]

    # /help in the thread: the answer arrives in the same thread.
    await playground.write(live.http, thread, "/help", mention_bot=True)
    await live.until("the /help answer in the thread", lambda: playground.bot_posted("/close", thread))
    assert not any(m["body"] == "/help" for m in neeto.messages(WORKSPACE, conversation["id"]))

    # What the playground recorded, once the bridge has stopped (it drains in-flight work:
    # card refreshes included): the six activities it sent, each answered 2xx, in the shapes
    # recorded in tests/fixtures/playground/; nothing refused either way; no warnings.
    await live.bridge.stop()
    await playground.flush_log(live.http)
    sent = playground.to_bot()
    kinds = sorted(i["request"]["body"]["type"] for i in sent)  # the two installation ones go concurrently
    assert kinds == ["conversationUpdate", "installationUpdate", "invoke", "message", "message", "message"]
    assert all(200 <= i["response"]["statusCode"] < 300 for i in sent), live.diagnosis()
    assert playground.refused() == [], live.diagnosis()
    assert playground.warnings() == [], live.diagnosis()
    recorded = {
        "installation_update.json": playground.sent("installationUpdate"),
        "conversation_update_bot_added.json": playground.sent("conversationUpdate"),
        "channel_post_mention.json": playground.sent("message", "Sorry about that"),
        "thread_reply_mention.json": playground.sent("message", "/help"),
        "card_action_invoke.json": playground.sent("invoke"),
    }
    for name, item in recorded.items():
        assert item is not None and shape(item["request"]["body"]) == shape(fixture(name)), name
    mentioned = recorded["channel_post_mention.json"]
    assert mentioned["request"]["body"]["conversation"]["id"] == thread
    data = mentioned["request"]["body"]["channelData"]
    assert data["teamsTeamId"] == world.team_id and data["teamsChannelId"] == channel["id"]
    assert "name" not in data["team"] and "name" not in data["channel"]


async def test_a_delete_the_playground_refuses_is_recorded_and_shown(live: Live) -> None:
    """The playground's connector does not implement deleting an activity (501): the bridge
    keeps the event as a dead letter with the reason, says so in the notification channel,
    and goes on."""
    playground, world, neeto = live.playground, live.world, live.neeto
    await live.install_and_link()
    conversation = world.start_conversation()
    channel_id = world.conversation_channel["id"]
    message = neeto.agent_writes(WORKSPACE, conversation["id"], world.world.ada_agent["id"], "Wrong window, sorry")
    await live.until("the agent's message in Teams", lambda: playground.bot_posted("Wrong window, sorry", channel_id))

    neeto.delete_message(WORKSPACE, conversation["id"], message["id"])
    await live.until("the playground's 501", lambda: playground.refused())
    assert [i["response"] for i in playground.refused()] == [fixture("delete_activity_refused.json")["response"]]
    notice = await live.until("the notice in General", lambda: playground.bot_posted("message.deleted", world.team_id))
    assert "not implemented" in json.dumps(notice["request"]["body"]).lower()

    async def dead_letters() -> list[str]:  # the notice is posted before the job is marked dead
        path = f"/api/admin/workspaces/{WORKSPACE}/dead-letters"
        async with live.http.get(live.bridge.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
            return [d["reason"] for d in (await resp.json())["dead_letters"]]

    assert await live.until("the dead letter", dead_letters) == [
        "Teams: (DeleteActivityAPINotImplemented) The API to delete activity is not implemented yet (HTTP 501)"
    ]
    async with live.http.get(live.bridge.url + "/readyz") as resp:
        assert resp.status == 200
