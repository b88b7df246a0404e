"""``POST /api/neetochat/{workspace}/webhooks``: verify, store, acknowledge. Nothing else.

Checks, in the order that does the least work for bad requests: size (413, the body is
not read past 1 MiB), workspace (404), signature over ``timestamp + "." + raw body`` with
the workspace's webhook secret, in constant time, within 300 s (401), JSON and event shape
(400). A good event is stored as a job before the 2xx; processing happens after the ack.
A redelivered event (same ``X-Neeto-Delivery``) is acknowledged and stored once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from services.crypto import SecretBox
from services.inbox import store_event
from services.metrics import Metrics
from services.store.base import Store

MAX_BODY = 1024 * 1024
TOLERANCE_SECONDS = 300
EVENTS = frozenset(
    {
        "conversation.created",
        "message.created",
        "message.updated",
        "message.deleted",
        "conversation.assigned",
        "conversation.unassigned",
        "conversation.closed",
        "conversation.reopened",
    }
)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def signature_valid(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode())


def event_problem(event: Any, delivery_id: str, workspace_id: str) -> str | None:
    """What is wrong with the event's shape, or None."""
    if not isinstance(event, dict):
        return "the body is not a JSON object"
    for key in ("id", "event", "workspace", "created_at", "data"):
        if key not in event:
            return f"the event has no {key!r}"
    if event["event"] not in EVENTS:
        return f"unknown event {event['event']!r}"
    if not isinstance(event["id"], str) or event["id"] != delivery_id:
        return "X-Neeto-Delivery does not match the event id"
    if event["workspace"] != workspace_id:
        return "the event belongs to another workspace"
    data = event["data"]
    conversation = data.get("conversation") if isinstance(data, dict) else None
    if not isinstance(conversation, dict) or not isinstance(conversation.get("id"), str):
        return "data.conversation.id is missing"
    if event["event"].startswith("message.") and not isinstance(data.get("message"), dict):
        return "data.message is missing"
    return None


class WebhookReceiver:
    def __init__(
        self,
        store: Store,
        box: SecretBox,
        on_stored: Callable[[], None],
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.box = box
        self.on_stored = on_stored
        self.metrics = metrics
        self.clock = clock
        self._secrets: dict[str, str] = {}  # ciphertext → secret: decrypt once, not per request

    def _secret(self, ciphertext: str) -> str:
        secret = self._secrets.get(ciphertext)
        if secret is None:
            secret = self._secrets[ciphertext] = self.box.decrypt(ciphertext)
        return secret

    async def handle(self, request: web.Request) -> web.Response:
        checked = await self._check(request)
        if isinstance(checked, web.Response):
            self.metrics.webhooks.labels(outcome=f"rejected_{checked.status}").inc()
            return checked
        workspace_id, event = checked
        stored = await store_event(self.store, workspace_id, event)
        if stored:
            self.on_stored()
        self.metrics.webhooks.labels(outcome="stored" if stored else "duplicate").inc()
        return web.json_response({"stored": stored}, status=200)

    async def _check(self, request: web.Request) -> web.Response | tuple[str, dict[str, Any]]:
        """The refusal to send, or the verified (workspace, event) to store."""
        if (request.content_length or 0) > MAX_BODY:
            return _error(413, "the body is larger than 1 MiB")
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return _error(413, "the body is larger than 1 MiB")
        workspace_id = request.match_info["workspace"]
        ws = await self.store.get_workspace(workspace_id)
        if ws is None:
            return _error(404, "unknown workspace")
        timestamp = request.headers.get("X-Neeto-Timestamp", "")
        signature = request.headers.get("X-Neeto-Signature", "")
        try:
            age = abs(self.clock() - int(timestamp))
        except ValueError:
            return _error(401, "missing or malformed X-Neeto-Timestamp")
        if age > TOLERANCE_SECONDS:
            return _error(401, "stale timestamp")
        if not signature_valid(self._secret(ws.webhook_secret_enc), timestamp, body, signature):
            return _error(401, "bad signature")
        try:
            event = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the body is not JSON")
        problem = event_problem(event, request.headers.get("X-Neeto-Delivery", ""), workspace_id)
        if problem:
            return _error(400, problem)
        return workspace_id, event
