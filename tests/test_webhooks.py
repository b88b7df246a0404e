"""The webhook receiver refuses what it must and stores what it acknowledges."""

from __future__ import annotations

import json
import time

import pytest

from app import RUNTIME
from tests.harness import WS, stored_jobs, wait_for


def _event(event_id: str = "evt_1", name: str = "message.created", conversation_id: str = "cnv_x") -> dict:
    return {
        "id": event_id,
        "event": name,
        "workspace": WS,
        "created_at": "2026-11-28T15:31:46.123Z",
        "data": {
            "conversation": {"id": conversation_id, "number": 1, "status": "open"},
            "message": {"id": "msg_1", "conversation_id": conversation_id, "body": "hi", "internal": False},
        },
    }


async def _post(h, body: bytes, headers: dict, workspace: str = WS):
    async with h.http.post(f"{h.bridge_url}/api/neetochat/{workspace}/webhooks", data=body, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def _jobs(h) -> int:
    return await stored_jobs(h.app[RUNTIME].ctx.store, WS)


@pytest.fixture
async def registered(bridge):
    """The workspace is connected but no team is linked: nothing can be posted."""
    status, _ = await bridge.admin(
        "PUT",
        f"/api/admin/workspaces/{WS}",
        {
            "base_url": f"{bridge.neeto_url}/{WS}",
            "api_key": "nc-api-key-acme-secret",
            "webhook_secret": "whsec-acme-secret",
        },
    )
    assert status == 201
    return bridge


async def test_a_signed_event_is_stored_once_even_when_redelivered(registered):
    h = registered
    body, headers = h.signed_webhook(_event())
    assert (await _post(h, body, headers))[0] == 200
    body, headers = h.signed_webhook(_event())  # a retry: new timestamp, same delivery id
    status, answer = await _post(h, body, headers)
    assert status == 200 and answer == {"stored": False}
    assert await _jobs(h) == 1


@pytest.mark.parametrize(
    ("mutate", "status", "reason"),
    [
        (lambda body, headers: (body, {**headers, "X-Neeto-Signature": "sha256=" + "0" * 64}), 401, "bad signature"),
        (lambda body, headers: (body + b" ", headers), 401, "bad signature"),
        (
            lambda body, headers: (body, {k: v for k, v in headers.items() if k != "X-Neeto-Signature"}),
            401,
            "signature",
        ),
        (
            lambda body, headers: (body, {k: v for k, v in headers.items() if k != "X-Neeto-Timestamp"}),
            401,
            "Timestamp",
        ),
    ],
    ids=["wrong-signature", "tampered-body", "no-signature", "no-timestamp"],
)
async def test_bad_signatures_are_refused_and_nothing_is_stored(registered, mutate, status, reason):
    body, headers = mutate(*registered.signed_webhook(_event()))
    got, answer = await _post(registered, body, headers)
    assert got == status and reason in answer["error"]
    assert await _jobs(registered) == 0


async def test_a_stale_or_future_timestamp_is_refused(registered):
    for skew in (-301, 301):
        body, headers = registered.signed_webhook(_event(), timestamp=int(time.time()) + skew)
        status, answer = await _post(registered, body, headers)
        assert status == 401 and "stale" in answer["error"]
    assert await _jobs(registered) == 0


async def test_a_signature_made_with_another_secret_is_refused(registered):
    body, headers = registered.signed_webhook(_event(), secret="someone-elses-secret")
    assert (await _post(registered, body, headers))[0] == 401
    assert await _jobs(registered) == 0


async def test_a_rotated_secret_applies_at_once(registered):
    """The receiver keeps workspaces in memory for a few seconds; a new secret must not
    wait for that to expire, and the old one stops working."""
    h = registered
    body, headers = h.signed_webhook(_event("evt_before"), secret="whsec-acme-secret")
    assert (await _post(h, body, headers))[0] == 200
    status, _ = await h.admin(
        "PUT",
        f"/api/admin/workspaces/{WS}",
        {"base_url": f"{h.neeto_url}/{WS}", "api_key": "nc-api-key-acme-secret", "webhook_secret": "whsec-rotated"},
    )
    assert status in (200, 201)
    body, headers = h.signed_webhook(_event("evt_after"), secret="whsec-rotated")
    assert (await _post(h, body, headers))[0] == 200
    body, headers = h.signed_webhook(_event("evt_old_secret"), secret="whsec-acme-secret")
    assert (await _post(h, body, headers))[0] == 401
    assert await _jobs(h) == 2


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({**_event(), "event": "conversation.exploded"}).encode(), "unknown event"),
        (json.dumps({k: v for k, v in _event().items() if k != "data"}).encode(), "'data'"),
        (json.dumps({**_event(), "data": {"conversation": {}}}).encode(), "conversation.id"),
        (json.dumps({**_event(), "workspace": "other"}).encode(), "another workspace"),
    ],
    ids=["malformed", "array", "unknown-event", "no-data", "no-conversation", "wrong-workspace"],
)
async def test_malformed_events_get_400_and_nothing_is_stored(registered, raw, reason):
    body, headers = registered.signed_webhook(_event())
    from sandbox.signing import sign

    headers["X-Neeto-Signature"] = sign("whsec-acme-secret", int(headers["X-Neeto-Timestamp"]), raw)
    status, answer = await _post(registered, raw, headers)
    assert status == 400 and reason in answer["error"]
    assert await _jobs(registered) == 0


async def test_the_delivery_header_must_match_the_event(registered):
    body, headers = registered.signed_webhook(_event())
    headers["X-Neeto-Delivery"] = "evt_other"
    assert (await _post(registered, body, headers))[0] == 400
    assert await _jobs(registered) == 0


async def test_oversized_bodies_get_413_without_being_stored(registered):
    event = _event()
    event["data"]["message"]["body"] = "x" * (1024 * 1024)
    body, headers = registered.signed_webhook(event)
    status, answer = await _post(registered, body, headers)
    assert status == 413 and "1 MiB" in answer["error"]
    assert await _jobs(registered) == 0


async def test_unknown_workspaces_get_404(registered):
    body, headers = registered.signed_webhook(_event())
    assert (await _post(registered, body, headers, workspace="nobody"))[0] == 404


async def test_events_for_an_unlinked_workspace_are_kept_as_failed_with_the_reason(registered):
    body, headers = registered.signed_webhook(_event())
    assert (await _post(registered, body, headers))[0] == 200

    async def failed():
        _, status = await registered.admin("GET", f"/api/admin/workspaces/{WS}")
        return status["deliveries"]["failed"] == 1

    await wait_for(failed, what="the event to be dead-lettered")
    dead = await registered.app[RUNTIME].ctx.store.list_dead_jobs(WS)
    assert "not linked" in dead[0].last_error


async def test_metrics_count_webhooks_by_outcome_and_show_the_queue(registered):
    h = registered
    body, headers = h.signed_webhook(_event("evt_m"))
    await _post(h, body, headers)
    await _post(h, body, headers)
    await _post(h, body, {**headers, "X-Neeto-Signature": "sha256=00"})
    async with h.http.get(f"{h.bridge_url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    assert 'bridge_webhooks_total{outcome="stored",reason=""} 1.0' in text
    assert 'bridge_webhooks_total{outcome="duplicate",reason=""} 1.0' in text
    assert 'bridge_webhooks_total{outcome="rejected",reason="bad_signature"} 1.0' in text
    assert "bridge_jobs_pending" in text and "whsec" not in text
