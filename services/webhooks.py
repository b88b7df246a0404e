"""``POST /api/neetochat/{workspace}/webhooks``: verify, store, acknowledge. Nothing else.

Checks, in the order that does the least work for bad requests: size (413, the body is
not read past 1 MiB), workspace (404), signature over ``timestamp + "." + raw body`` with
the workspace's webhook secret, in constant time, within 300 s (401), JSON and event shape
(400). A good event is stored as a job before the 2xx; processing happens after the ack.
A redelivered event (same ``X-Neeto-Delivery``) is acknowledged and stored once.

The workspace (its webhook secret) is kept in memory for ``WORKSPACE_TTL`` seconds instead
of read from the store per request: a signature that fails against the kept secret is
checked again against the stored one, so a rotated secret works at once. For up to that
long the previous secret may also still pass, and a deleted workspace still takes events
(they become dead letters, visible to the operator, rather than lost).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from services.crypto import SecretBox
from services.inbox import store_event
from services.log_context import bind
from services.metrics import Metrics
from services.store.base import Store, Workspace

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
TOLERANCE_SECONDS = 300
WORKSPACE_TTL = 5.0
# The two answers to a good event, encoded once: every webhook gets one of them.
STORED, DUPLICATE = orjson.dumps({"stored": True}), orjson.dumps({"stored": False})
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


class Rejected(Exception):
    """A webhook refused: the status and message answered, the reason counted in metrics."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


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
        seen_at: dict[str, float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.seen_at = seen_at
        self.store = store
        self.box = box
        self.on_stored = on_stored
        self.metrics = metrics
        self.clock = clock
        self._secrets: dict[str, str] = {}  # ciphertext → secret: decrypt once, not per request
        # workspace id → (it, when read): a plain dict, as cachetools' TTLCache cost more per
        # request than the rest of this lookup; bounded by the workspaces that exist.
        self._workspaces: dict[str, tuple[Workspace, float]] = {}

    async def _workspace(self, workspace_id: str, fresh: bool = False) -> Workspace | None:
        kept = None if fresh else self._workspaces.get(workspace_id)
        if kept is not None and time.monotonic() - kept[1] < WORKSPACE_TTL:
            return kept[0]
        ws = await self.store.get_workspace(workspace_id)
        if ws is not None:
            self._workspaces[workspace_id] = (ws, time.monotonic())
        else:
            self._workspaces.pop(workspace_id, None)
        return ws

    def _secret(self, ciphertext: str) -> str:
        secret = self._secrets.get(ciphertext)
        if secret is None:
            secret = self._secrets[ciphertext] = self.box.decrypt(ciphertext)
        return secret

    async def handle(self, request: web.Request) -> web.Response:
        try:
            workspace_id, event = await self._check(request)
        except Rejected as exc:
            self._bind(request)
            self.metrics.webhook("rejected", exc.reason)
            log.info("webhook rejected: %s", exc.reason)
            return web.json_response({"error": str(exc)}, status=exc.status)
        self.seen_at[workspace_id] = self.clock()  # the health check reports webhooks arriving
        try:
            stored = await store_event(self.store, workspace_id, event)
        except Exception:
            self._bind(request)  # for aiohttp's line about the failure (a 500: neetoChat retries)
            raise
        if stored:
            self.on_stored()
        self.metrics.webhook("stored" if stored else "duplicate")
        return web.Response(body=STORED if stored else DUPLICATE, content_type="application/json")

    @staticmethod
    def _bind(request: web.Request) -> None:
        """The request's ids on the log lines about it. Only when there is a line to write: a
        webhook that is stored writes none, and it is the bridge's most frequent request."""
        bind(workspace=request.match_info["workspace"], delivery=request.headers.get("X-Neeto-Delivery"))

    async def _check(self, request: web.Request) -> tuple[str, dict[str, Any]]:
        """The verified (workspace, event) to store; ``Rejected`` says why not."""
        if (request.content_length or 0) > MAX_BODY:
            raise Rejected(413, "too_large", "the body is larger than 1 MiB")
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise Rejected(413, "too_large", "the body is larger than 1 MiB")
        workspace_id = request.match_info["workspace"]
        ws = await self._workspace(workspace_id)
        if ws is None:
            raise Rejected(404, "unknown_workspace", "unknown workspace")
        timestamp = request.headers.get("X-Neeto-Timestamp", "")
        signature = request.headers.get("X-Neeto-Signature", "")
        try:
            age = abs(self.clock() - int(timestamp))
        except ValueError:
            raise Rejected(401, "bad_timestamp", "missing or malformed X-Neeto-Timestamp") from None
        if age > TOLERANCE_SECONDS:
            raise Rejected(401, "stale_timestamp", "stale timestamp")
        if not signature_valid(self._secret(ws.webhook_secret_enc), timestamp, body, signature):
            ws = await self._workspace(workspace_id, fresh=True)  # the secret may have been rotated
            if ws is None or not signature_valid(self._secret(ws.webhook_secret_enc), timestamp, body, signature):
                raise Rejected(401, "bad_signature", "bad signature")
        try:
            event = orjson.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise Rejected(400, "not_json", "the body is not JSON") from None
        problem = event_problem(event, request.headers.get("X-Neeto-Delivery", ""), workspace_id)
        if problem:
            raise Rejected(400, "not_an_event", problem)
        return workspace_id, event
