"""What an operator sees: metrics for every stage, logs that carry ids and never secrets or
message bodies, and a readiness check that notices a dead store or a stuck delivery loop."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re

import pytest

from app import RUNTIME
from services.log_context import configure
from tests.harness import API_KEY, WEBHOOK_SECRET, WS, wait_for


def _value(metrics: str, name: str, **labels: str) -> float:
    """The sample ``name{labels…}`` (labels in any order, others allowed), 0 if absent."""
    total = 0.0
    for line in metrics.splitlines():
        match = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


async def _metrics(h) -> str:
    async with h.http.get(f"{h.bridge_url}/metrics") as response:
        assert response.status == 200
        return await response.text()


async def _idle(h) -> None:
    async def idle():
        _, body = await h.admin("GET", f"/api/admin/workspaces/{WS}")
        return body["deliveries"]["queued"] == 0

    await wait_for(idle, what="the bridge to be idle")


async def test_metrics_show_each_stage_and_every_remote_service(connected):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Ava", visitor_email="ava@example.com", message="hi")
    channel = await h.wait_channel(conv["number"])
    h.ms.fail_next(status=429, count=1, retry_after=0, path_contains="/v3/conversations", method="POST")
    h.neeto.visitor_writes(WS, conv["id"], "second")
    await wait_for(lambda: len(h.ms.posts(channel["id"])) == 2, what="the message after a 429")
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "hello from Teams")
    await wait_for(lambda: h.from_teams(conv["id"]), what="the reply in neetoChat")
    body, headers = h.signed_webhook({"id": "evt_bad", "event": "message.created"}, secret="wrong")
    async with h.http.post(h.webhook_url, data=body, headers=headers) as response:
        assert response.status == 401
    await _idle(h)

    text = await _metrics(h)
    assert _value(text, "bridge_webhooks_total", outcome="stored") >= 2
    assert _value(text, "bridge_webhooks_total", outcome="rejected", reason="bad_signature") == 1
    assert _value(text, "bridge_jobs_total", kind="neetochat_event", outcome="ok") >= 2
    assert _value(text, "bridge_jobs_total", kind="teams_message", outcome="ok") == 1
    assert _value(text, "bridge_jobs_total", outcome="throttled") == 1
    calls = "bridge_remote_call_seconds_count"
    assert _value(text, calls, service="Teams", operation="create_conversation", outcome="ok") >= 3
    assert _value(text, calls, service="Teams", operation="create_conversation", outcome="429") == 1
    assert _value(text, calls, service="Graph", operation="create_channel", outcome="ok") == 1
    assert _value(text, calls, service="neetoChat", operation="POST conversations/messages", outcome="ok") == 1
    assert _value(text, "bridge_open_channels", team=h.team_id) == 1
    assert _value(text, "bridge_jobs_pending") == 0
    assert "bridge_jobs_oldest_pending_age_seconds" in text


@pytest.fixture
def json_log():
    """The process's logging as ``python app.py`` sets it up, into a buffer; restored after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buffer = io.StringIO()
    configure(buffer, json_lines=True)
    yield buffer
    root.handlers[:], level = saved
    root.setLevel(level)


async def test_log_lines_are_json_with_ids_and_without_secrets_or_bodies(connected, json_log):
    h = connected
    conv = h.neeto.start_conversation(WS, visitor_name="Bo", visitor_email="bo@example.com", message="secret plan")
    channel = await h.wait_channel(conv["number"])
    h.ms.fail_next(status=503, count=1, retry_after=None, path_contains="/v3/conversations", method="POST")
    h.neeto.visitor_writes(WS, conv["id"], "my card number is 4242")
    await wait_for(lambda: len(h.ms.posts(channel["id"])) == 2, what="the message after a 503")
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "private reply text")
    await wait_for(lambda: h.from_teams(conv["id"]), what="the reply in neetoChat")
    await _idle(h)

    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert lines, "something was logged"
    assert all({"asctime", "level", "name", "message"} <= set(line) for line in lines)
    retry = next(line for line in lines if "retry in" in line["message"])
    assert retry["workspace"] == WS and retry["conversation"] == conv["id"] and retry["job"]
    assert retry["delivery"].startswith("evt_")
    text = json_log.getvalue()
    for secret in ("secret plan", "4242", "private reply text", API_KEY, WEBHOOK_SECRET):
        assert secret not in text


def test_a_terminal_gets_readable_lines():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = Tty()
    try:
        configure(stream)
        logging.getLogger("bridge").info("hello")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert stream.getvalue().rstrip().endswith("INFO bridge hello")


async def test_readyz_fails_while_the_store_is_down_or_delivery_is_stuck(connected, monkeypatch):
    h = connected
    rt = h.app[RUNTIME]

    async def ready() -> tuple[int, dict]:
        async with h.http.get(f"{h.bridge_url}/readyz") as response:
            return response.status, await response.json()

    assert (await ready())[0] == 200

    async def down():
        raise ConnectionError("store unreachable")

    monkeypatch.setattr(rt.ctx.store, "ping", down)
    status, body = await ready()
    assert status == 503 and "store" in body["reason"]
    monkeypatch.undo()

    released = asyncio.Event()
    claim = rt.ctx.store.claim_jobs

    async def hanging_claim(*args, **kwargs):
        await released.wait()  # the store answers pings but claiming never returns
        return await claim(*args, **kwargs)

    monkeypatch.setattr(rt.ctx.store, "claim_jobs", hanging_claim)
    rt.runner.stuck_after = 0.3
    rt.runner.wake()

    async def stuck():
        status, body = await ready()
        return status == 503 and body

    body = await wait_for(stuck, what="readyz to notice the stuck loop")
    assert "delivery loop" in body["reason"]
    released.set()
    monkeypatch.undo()

    async def recovered():
        return (await ready())[0] == 200

    await wait_for(recovered, what="readyz to recover")
