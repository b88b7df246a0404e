"""The neetoChat sandbox behaves like the contract says, as a client would notice."""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sandbox.neetochat import NeetoChatSandbox
from sandbox.signing import sign

SUB = "acme"
KEY = "key-acme"
SECRET = "whsec-acme"
HEADERS = {"X-Api-Key": KEY}
START = 1795879906.123  # 2026-11-28T15:31:46.123Z
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def api(path: str, subdomain: str = SUB) -> str:
    return f"/{subdomain}/api/external/v1{path}"


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class Receiver:
    """A webhook endpoint that records every request and answers scripted statuses, then 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]


async def start_receiver(aiohttp_server: Any) -> tuple[Receiver, str]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = await aiohttp_server(app)
    return receiver, str(server.make_url("/hook"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sandbox(clock: Clock) -> NeetoChatSandbox:
    return NeetoChatSandbox(clock=clock, retry_base_delay=0.01, max_attempts=4)


@pytest.fixture
async def client(aiohttp_client: Any, sandbox: NeetoChatSandbox) -> Any:
    sandbox.add_workspace(SUB, api_key=KEY, webhook_secret=SECRET, name="Acme")
    return await aiohttp_client(sandbox.app())


@pytest.fixture
def agent(sandbox: NeetoChatSandbox, client: Any) -> dict[str, Any]:
    return sandbox.add_agent(SUB, name="Ada Agent", email="Ada@Acme.test")


@pytest.fixture
def conversation(sandbox: NeetoChatSandbox, client: Any) -> dict[str, Any]:
    return sandbox.start_conversation(SUB, visitor_name="Vic", visitor_email="vic@example.com", message="Hello?")


@pytest.fixture
async def receiver(aiohttp_server: Any, sandbox: NeetoChatSandbox, client: Any) -> Receiver:
    receiver, url = await start_receiver(aiohttp_server)
    sandbox.set_webhook_url(SUB, url)
    return receiver


async def post_message(client: Any, conversation_id: str, payload: dict[str, Any], **headers: str) -> Any:
    return await client.post(
        api(f"/conversations/{conversation_id}/messages"), json=payload, headers={**HEADERS, **headers}
    )


# ---------------------------------------------------------------------- API basics


async def test_api_key_is_required(client: Any) -> None:
    for headers in ({}, {"X-Api-Key": "wrong"}):
        resp = await client.get(api("/workspace"), headers=headers)
        assert resp.status == 401
        assert await resp.json() == {"error": "Could not authenticate, invalid API Key"}
    resp = await client.get(api("/workspace"), headers=HEADERS)
    assert resp.status == 200
    workspace = await resp.json()
    assert workspace["subdomain"] == SUB
    assert workspace["name"] == "Acme"
    assert workspace["app_url"] == "https://acme.neetochat.com/app"
    assert (await client.get(api("/workspace", "nobody"), headers=HEADERS)).status == 404


async def test_agents_filter_by_email_case_insensitively(client: Any, agent: dict[str, Any]) -> None:
    resp = await client.get(api("/agents"), params={"email": "ada@acme.TEST"}, headers=HEADERS)
    assert (await resp.json())["agents"] == [agent]
    resp = await client.get(api("/agents"), params={"email": "ada@acme"}, headers=HEADERS)
    assert (await resp.json())["agents"] == []


async def test_conversation_shape(client: Any, sandbox: NeetoChatSandbox) -> None:
    first = sandbox.start_conversation(
        SUB,
        visitor_name="Vic",
        visitor_email="vic@example.com",
        message="Hi",
        prechat=[{"question": "Topic?", "answer": "Billing"}],
    )
    second = sandbox.start_conversation(SUB, visitor_name=None, visitor_email=None, message=None)
    assert (first["number"], second["number"]) == (1042, 1043)
    assert first["id"].startswith("cnv_")
    assert first["url"] == "https://acme.neetochat.com/app/conversations/1042"
    assert first["visitor"]["contact_url"] == f"https://acme.neetochat.com/app/contacts/{first['visitor']['id']}"
    assert first["prechat_responses"] == [{"question": "Topic?", "answer": "Billing"}]
    assert first["created_at"] == "2026-11-28T15:31:46.123Z"
    assert first["last_reply_at"] == "2026-11-28T15:31:46.123Z"
    assert second["last_reply_at"] is None and second["assignee"] is None
    resp = await client.get(api(f"/conversations/{first['id']}"), headers=HEADERS)
    assert await resp.json() == first
    resp = await client.get(api("/conversations/cnv_nope"), headers=HEADERS)
    assert resp.status == 404
    assert "error" in await resp.json()


async def test_messages_paginate_oldest_first(client: Any, sandbox: NeetoChatSandbox) -> None:
    conv = sandbox.start_conversation(SUB, visitor_name="Vic", visitor_email=None, message="m0")
    for i in range(1, 120):
        sandbox.visitor_writes(SUB, conv["id"], f"m{i}")
    bodies, sizes, cursor = [], [], None
    while True:
        params = {"limit": "50", **({"after": cursor} if cursor else {})}
        resp = await client.get(api(f"/conversations/{conv['id']}/messages"), params=params, headers=HEADERS)
        assert resp.status == 200
        page = await resp.json()
        sizes.append(len(page["messages"]))
        bodies += [m["body"] for m in page["messages"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sizes == [50, 50, 20]
    assert bodies == [f"m{i}" for i in range(120)]


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "101"}, {"limit": "ten"}, {"after": "garbage"}])
async def test_list_messages_refuses_bad_limit_and_cursor(
    client: Any, conversation: dict[str, Any], params: dict[str, str]
) -> None:
    resp = await client.get(api(f"/conversations/{conversation['id']}/messages"), params=params, headers=HEADERS)
    assert resp.status == 422
    assert "error" in await resp.json()


async def test_cursor_of_another_conversation_is_refused(client: Any, sandbox: NeetoChatSandbox) -> None:
    convs = [sandbox.start_conversation(SUB, visitor_name="V", visitor_email=None, message="a") for _ in range(2)]
    sandbox.visitor_writes(SUB, convs[0]["id"], "b")
    page = await (
        await client.get(api(f"/conversations/{convs[0]['id']}/messages"), params={"limit": "1"}, headers=HEADERS)
    ).json()
    resp = await client.get(
        api(f"/conversations/{convs[1]['id']}/messages"), params={"after": page["next_cursor"]}, headers=HEADERS
    )
    assert resp.status == 422


# ---------------------------------------------------------------------- creating messages


async def test_create_message_is_idempotent(
    client: Any, sandbox: NeetoChatSandbox, clock: Clock, agent: dict[str, Any], conversation: dict[str, Any]
) -> None:
    payload = {"agent_id": agent["id"], "body": "On it", "source": "teams", "external_id": "act-1"}
    first = await post_message(client, conversation["id"], payload, **{"Idempotency-Key": "k1"})
    again = await post_message(client, conversation["id"], {**payload, "body": "changed"}, **{"Idempotency-Key": "k1"})
    assert (first.status, again.status) == (201, 201)
    assert await first.json() == await again.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert [m["body"] for m in sandbox.messages(SUB, conversation["id"])] == ["Hello?", "On it"]
    assert [e["event"] for e in sandbox.events(SUB)] == ["conversation.created", "message.created"]

    clock.now += 24 * 3600 + 1
    later = await post_message(client, conversation["id"], payload, **{"Idempotency-Key": "k1"})
    assert later.status == 201
    assert (await later.json())["id"] != (await first.json())["id"]


async def test_idempotency_keys_are_scoped_per_path(
    client: Any, sandbox: NeetoChatSandbox, agent: dict[str, Any]
) -> None:
    convs = [sandbox.start_conversation(SUB, visitor_name="V", visitor_email=None, message="a") for _ in range(2)]
    ids = set()
    for conv in convs:
        payload = {"agent_id": agent["id"], "body": "x"}
        resp = await post_message(client, conv["id"], payload, **{"Idempotency-Key": "k"})
        ids.add((await resp.json())["id"])
    assert len(ids) == 2


async def test_create_message_echoes_source_and_external_id(
    client: Any, sandbox: NeetoChatSandbox, agent: dict[str, Any], conversation: dict[str, Any], receiver: Receiver
) -> None:
    resp = await post_message(
        client,
        conversation["id"],
        {"agent_id": agent["id"], "body": "From Teams", "source": "teams", "external_id": "act-9", "unknown_field": 1},
    )
    message = await resp.json()
    assert resp.status == 201
    assert (message["source"], message["external_id"], message["internal"]) == ("teams", "act-9", False)
    assert message["sender"] == {"type": "agent", "id": agent["id"], "name": "Ada Agent", "email": "Ada@Acme.test"}
    assert TIMESTAMP.fullmatch(message["created_at"])
    await sandbox.drain_webhooks()
    echoed = [e for e in receiver.events() if e["event"] == "message.created"]
    assert echoed[0]["data"]["message"] == message
    assert echoed[0]["data"]["conversation"]["last_reply_at"] == message["created_at"]


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"agent_id": None}, 400),
        ({"agent_id": 5}, 400),
        ({"internal": "yes"}, 400),
        ({"agent_id": "agt_unknown"}, 422),
        ({"body": ""}, 422),
        ({"body": "   "}, 422),
        ({"body": "x" * 10_001}, 422),
        ({"source": "email"}, 422),
        ({"external_id": "e" * 201}, 422),
        ({"attachment_ids": ["att_nope"]}, 422),
        ({"attachment_ids": [f"att_{i}" for i in range(11)]}, 422),
    ],
)
async def test_create_message_refusals(
    client: Any, agent: dict[str, Any], conversation: dict[str, Any], overrides: dict[str, Any], status: int
) -> None:
    resp = await post_message(client, conversation["id"], {"agent_id": agent["id"], "body": "x", **overrides})
    assert resp.status == status
    assert set(await resp.json()) == {"error"}


async def test_malformed_json_is_400(client: Any, conversation: dict[str, Any]) -> None:
    for raw in (b"{not json", b"[1, 2]", b""):
        resp = await client.post(
            api(f"/conversations/{conversation['id']}/messages"),
            data=raw,
            headers={**HEADERS, "Content-Type": "application/json"},
        )
        assert resp.status == 400
        assert "error" in await resp.json()


async def test_closed_conversation_refuses_new_messages(
    client: Any, sandbox: NeetoChatSandbox, agent: dict[str, Any], conversation: dict[str, Any]
) -> None:
    sandbox.close(SUB, conversation["id"])
    resp = await post_message(client, conversation["id"], {"agent_id": agent["id"], "body": "late"})
    assert resp.status == 422
    assert await resp.json() == {"error": "Conversation is closed"}


async def test_only_api_messages_can_be_edited_or_deleted(
    client: Any, sandbox: NeetoChatSandbox, agent: dict[str, Any], conversation: dict[str, Any]
) -> None:
    visitor_message = sandbox.messages(SUB, conversation["id"])[0]
    path = api(f"/conversations/{conversation['id']}/messages")
    assert (await client.patch(f"{path}/{visitor_message['id']}", json={"body": "x"}, headers=HEADERS)).status == 403
    assert (await client.delete(f"{path}/{visitor_message['id']}", headers=HEADERS)).status == 403
    assert (await client.delete(f"{path}/msg_nope", headers=HEADERS)).status == 404

    own = await (await post_message(client, conversation["id"], {"agent_id": agent["id"], "body": "typo"})).json()
    assert own["source"] == "api"
    resp = await client.patch(f"{path}/{own['id']}", json={"body": "fixed"}, headers=HEADERS)
    assert resp.status == 200
    assert (await resp.json())["body"] == "fixed"
    resp = await client.delete(f"{path}/{own['id']}", headers=HEADERS)
    assert resp.status == 204
    assert [m["id"] for m in sandbox.messages(SUB, conversation["id"])] == [visitor_message["id"]]
    updated, deleted = sandbox.events(SUB)[-2:]
    assert (updated["event"], updated["data"]["message"]["body"]) == ("message.updated", "fixed")
    assert deleted["event"] == "message.deleted"
    assert deleted["data"]["message"] == {"id": own["id"], "conversation_id": conversation["id"]}


# ---------------------------------------------------------------------- assign, close, reopen


async def test_assign_needs_exactly_one_known_target(
    client: Any, sandbox: NeetoChatSandbox, agent: dict[str, Any], conversation: dict[str, Any]
) -> None:
    team = sandbox.add_team(SUB, name="Billing")
    path = api(f"/conversations/{conversation['id']}/assignee")
    actor = {"actor_agent_id": agent["id"]}
    for body in ({}, {"agent_id": agent["id"], "team_id": team["id"]}, {"agent_id": "agt_x"}, {"team_id": "team_x"}):
        assert (await client.put(path, json={**actor, **body}, headers=HEADERS)).status == 422
    assert (await client.put(path, json={"agent_id": agent["id"]}, headers=HEADERS)).status == 400

    resp = await client.put(path, json={**actor, "team_id": team["id"]}, headers=HEADERS)
    assert (await resp.json())["assignee"] == {"type": "team", "id": team["id"], "name": "Billing"}
    await client.put(path, json={**actor, "team_id": team["id"]}, headers=HEADERS)  # no change, no event
    resp = await client.delete(path, params=actor, headers=HEADERS)
    assert (await resp.json())["assignee"] is None
    assert (await client.delete(path, headers=HEADERS)).status == 400

    events = sandbox.events(SUB)[1:]
    assert [e["event"] for e in events] == ["conversation.assigned", "conversation.unassigned"]
    assert events[0]["data"]["assignee"]["id"] == team["id"]
    assert events[0]["data"]["actor"] == agent
    assert events[1]["data"]["previous_assignee"]["id"] == team["id"]


async def test_close_and_reopen_twice_change_nothing_the_second_time(
    client: Any, sandbox: NeetoChatSandbox, agent: dict[str, Any], conversation: dict[str, Any]
) -> None:
    base = api(f"/conversations/{conversation['id']}")
    for action, status in (("close", "closed"), ("close", "closed"), ("reopen", "open"), ("reopen", "open")):
        resp = await client.post(f"{base}/{action}", json={"actor_agent_id": agent["id"]}, headers=HEADERS)
        assert resp.status == 200
        assert (await resp.json())["status"] == status
    events = sandbox.events(SUB)[1:]
    assert [e["event"] for e in events] == ["conversation.closed", "conversation.reopened"]
    assert all(e["data"]["actor"] == agent for e in events)


async def test_app_actions_emit_events_with_null_actor_and_visitor_reopens(
    sandbox: NeetoChatSandbox, agent: dict[str, Any], conversation: dict[str, Any]
) -> None:
    sandbox.assign(SUB, conversation["id"], agent_id=agent["id"])
    sandbox.close(SUB, conversation["id"])
    sandbox.visitor_writes(SUB, conversation["id"], "One more thing")
    sandbox.agent_writes(SUB, conversation["id"], agent["id"], "note to self", internal=True)
    events = sandbox.events(SUB)
    assert [e["event"] for e in events] == [
        "conversation.created",
        "conversation.assigned",
        "conversation.closed",
        "conversation.reopened",
        "message.created",
        "message.created",
    ]
    assert events[0]["data"]["message"]["body"] == "Hello?"
    assert [e["data"]["actor"] for e in events[1:4]] == [None, None, None]
    assert events[4]["data"]["conversation"]["status"] == "open"
    assert events[5]["data"]["message"]["internal"] is True
    assert [m["source"] for m in sandbox.messages(SUB, conversation["id"])] == ["widget", "widget", "app"]


# ---------------------------------------------------------------------- webhooks


async def test_webhook_is_signed_per_contract(
    sandbox: NeetoChatSandbox, conversation: dict[str, Any], receiver: Receiver
) -> None:
    sandbox.visitor_writes(SUB, conversation["id"], "Anyone?")  # queued after the url was set
    await sandbox.drain_webhooks()
    assert len(receiver.requests) == 1
    headers, raw = receiver.requests[0]
    event = json.loads(raw)
    assert headers["X-Neeto-Event"] == event["event"] == "message.created"
    assert headers["X-Neeto-Delivery"] == event["id"]
    assert headers["X-Neeto-Signature"] == sign(SECRET, int(headers["X-Neeto-Timestamp"]), raw)
    assert int(headers["X-Neeto-Timestamp"]) == int(START)
    assert event["workspace"] == SUB
    assert event["created_at"] == "2026-11-28T15:31:46.123Z"
    assert event["data"]["conversation"]["id"] == conversation["id"]
    assert event["data"]["message"]["body"] == "Anyone?"


async def test_webhook_retried_after_errors_until_2xx(
    sandbox: NeetoChatSandbox, clock: Clock, receiver: Receiver
) -> None:
    receiver.statuses = [500, 503]
    sandbox.start_conversation(SUB, visitor_name="V", visitor_email=None, message="hi")
    clock.now += 5
    sandbox.start_conversation(SUB, visitor_name="W", visitor_email=None, message="yo")
    await sandbox.drain_webhooks()
    assert [(d["attempt"], d["status"]) for d in sandbox.deliveries] == [(1, 500), (2, 503), (3, 200), (1, 200)]
    first_three = receiver.requests[:3]
    assert len({headers["X-Neeto-Delivery"] for headers, _ in first_three}) == 1
    for headers, raw in receiver.requests:
        assert headers["X-Neeto-Signature"] == sign(SECRET, int(headers["X-Neeto-Timestamp"]), raw)
    assert [e["data"]["message"]["body"] for e in receiver.events()] == ["hi", "hi", "hi", "yo"]


async def test_webhook_given_up_after_max_attempts(
    sandbox: NeetoChatSandbox, conversation: dict[str, Any], receiver: Receiver
) -> None:
    receiver.statuses = [500] * 4
    sandbox.visitor_writes(SUB, conversation["id"], "lost")
    sandbox.visitor_writes(SUB, conversation["id"], "delivered")
    await sandbox.drain_webhooks()
    assert [d["status"] for d in sandbox.deliveries] == [500, 500, 500, 500, 200]
    assert receiver.events()[-1]["data"]["message"]["body"] == "delivered"


async def test_unreachable_receiver_is_logged(
    sandbox: NeetoChatSandbox, client: Any, conversation: dict[str, Any]
) -> None:
    sandbox.set_webhook_url(SUB, "http://127.0.0.1:1/hook")
    sandbox.visitor_writes(SUB, conversation["id"], "anyone?")
    await sandbox.drain_webhooks()
    assert [d["attempt"] for d in sandbox.deliveries] == [1, 2, 3, 4]
    assert all(d["status"] is None and d["error"] for d in sandbox.deliveries)


async def test_held_webhooks_arrive_reversed_and_twice(
    sandbox: NeetoChatSandbox, conversation: dict[str, Any], receiver: Receiver
) -> None:
    sandbox.hold_webhooks(SUB)
    for body in ("one", "two", "three"):
        sandbox.visitor_writes(SUB, conversation["id"], body)
    await sandbox.drain_webhooks()
    assert receiver.requests == []
    sandbox.release_webhooks(SUB, order="reversed", duplicate=True)
    await sandbox.drain_webhooks()
    bodies = [e["data"]["message"]["body"] for e in receiver.events()]
    assert bodies == ["three", "two", "one", "three", "two", "one"]
    assert len({e["id"] for e in receiver.events()}) == 3


# ---------------------------------------------------------------------- faults


async def test_fail_next_429_carries_retry_after_and_matches_requests(
    client: Any, sandbox: NeetoChatSandbox, agent: dict[str, Any], conversation: dict[str, Any]
) -> None:
    sandbox.fail_next(SUB, status=429, retry_after=7, method="POST", path_contains="/messages")
    assert (await client.get(api("/workspace"), headers=HEADERS)).status == 200
    resp = await post_message(client, conversation["id"], {"agent_id": agent["id"], "body": "x"})
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "7"
    assert "error" in await resp.json()
    assert (await post_message(client, conversation["id"], {"agent_id": agent["id"], "body": "x"})).status == 201

    sandbox.fail_next(SUB, status=503, count=2)
    statuses = [(await client.get(api("/workspace"), headers=HEADERS)).status for _ in range(3)]
    assert statuses == [503, 503, 200]


# ---------------------------------------------------------------------- attachments


async def upload(client: Any, content: bytes, content_type: str, filename: str = "shot.png") -> Any:
    form = aiohttp.FormData(quote_fields=False)  # else aiohttp sends "my%20shot.png" as the name
    form.add_field("file", io.BytesIO(content), filename=filename, content_type=content_type)
    return await client.post(api("/attachments"), data=form, headers=HEADERS)


async def test_attachment_upload_download_and_use(
    client: Any, sandbox: NeetoChatSandbox, agent: dict[str, Any], conversation: dict[str, Any]
) -> None:
    resp = await upload(client, b"\x89PNG fake", "image/png", "my shot.png")
    assert resp.status == 201
    attachment = await resp.json()
    assert attachment["filename"] == "my shot.png"
    assert (attachment["content_type"], attachment["size"]) == ("image/png", 9)
    assert attachment["url"].startswith(f"http://{client.host}:{client.port}/{SUB}/_sandbox/files/")
    download = await client.session.get(attachment["url"])  # absolute, no API key
    assert download.status == 200
    assert download.headers["Content-Type"] == "image/png"
    assert await download.read() == b"\x89PNG fake"

    payload = {"agent_id": agent["id"], "attachment_ids": [attachment["id"]]}
    resp = await post_message(client, conversation["id"], payload)
    assert resp.status == 201
    assert (await resp.json())["attachments"] == [attachment]


async def test_attachment_refusals(client: Any) -> None:
    assert (await upload(client, b"MZ", "application/x-msdownload", "setup.exe")).status == 415
    too_big = await upload(client, b"\0" * (25 * 1024 * 1024 + 1), "application/pdf", "big.pdf")
    assert too_big.status == 413
    assert "error" in await too_big.json()
    resp = await client.post(api("/attachments"), json={"file": "x"}, headers=HEADERS)
    assert resp.status == 400
    assert (await upload(client, b"%PDF", "application/pdf", "ok.pdf")).status == 201


async def test_visitor_attachments_via_control_api(
    client: Any, sandbox: NeetoChatSandbox, conversation: dict[str, Any]
) -> None:
    await client.get(api("/workspace"))  # lets the sandbox learn its own address
    message = sandbox.visitor_writes(
        SUB, conversation["id"], "", attachments=[{"filename": "a.txt", "content_type": "text/plain", "content": b"hi"}]
    )
    resp = await client.session.get(message["attachments"][0]["url"])
    assert await resp.read() == b"hi"


# ---------------------------------------------------------------------- HTTP control routes


async def test_http_control_routes_drive_a_workspace(aiohttp_client: Any, aiohttp_server: Any) -> None:
    sandbox = NeetoChatSandbox(retry_base_delay=0.01)
    client = await aiohttp_client(sandbox.app())
    receiver, url = await start_receiver(aiohttp_server)
    resp = await client.post(
        "/_sandbox/workspaces", json={"subdomain": "globex", "api_key": "k", "webhook_secret": "s", "webhook_url": url}
    )
    assert resp.status == 201
    agent = await (await client.post("/globex/_sandbox/agents", json={"name": "Al", "email": "al@globex.test"})).json()
    conv = await (
        await client.post(
            "/globex/_sandbox/conversations", json={"visitor_name": "Vi", "visitor_email": None, "message": "Hi"}
        )
    ).json()
    base = f"/globex/_sandbox/conversations/{conv['id']}"
    file = {"filename": "n.txt", "content_type": "text/plain", "content_base64": base64.b64encode(b"note").decode()}
    assert (await client.post(f"{base}/visitor_messages", json={"body": "", "attachments": [file]})).status == 201
    assert (await client.post(f"{base}/agent_messages", json={"agent_id": agent["id"], "body": "Yo"})).status == 201
    assert (await client.post(f"{base}/assign", json={"agent_id": agent["id"]})).status == 200
    assert (await client.post(f"{base}/close", json={"actor_agent_id": agent["id"]})).status == 200
    assert (await client.post(f"{base}/close")).status == 200

    state = await (await client.get(base)).json()
    assert state["conversation"]["status"] == "closed"
    assert state["conversation"]["assignee"]["id"] == agent["id"]
    assert [m["body"] for m in state["messages"]] == ["Hi", "", "Yo"]
    assert await (await client.session.get(state["messages"][1]["attachments"][0]["url"])).read() == b"note"

    assert (await client.post("/_sandbox/drain", json={"timeout": 5})).status == 200
    deliveries = (await (await client.get("/globex/_sandbox/deliveries")).json())["deliveries"]
    events = (await (await client.get("/globex/_sandbox/events")).json())["events"]
    assert [d["event_id"] for d in deliveries] == [e["id"] for e in events] == [e["id"] for e in receiver.events()]
    assert [e["event"] for e in events] == [
        "conversation.created",
        "message.created",
        "message.created",
        "conversation.assigned",
        "conversation.closed",
    ]
    assert (await client.get("/nobody/_sandbox/events")).status == 404
    assert (await client.post("/globex/_sandbox/agents", data=b"{")).status == 400
