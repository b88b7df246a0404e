"""An in-memory stand-in for neetoChat: the external API and webhooks of
``/work/shared/contracts/neetochat-external-api.yaml``, for many workspaces at once.

It is strict on purpose, so that a bridge that works against it works against the real
service: same paths, auth, error bodies, limits, idempotency, pagination and signed,
retried, at-least-once webhooks.

Every workspace lives under its own path prefix: its base_url is
``http://host:port/{subdomain}`` and its API is ``/{subdomain}/api/external/v1/...``.
Tests in the same process drive it through the Python control API (as if people used
the neetoChat widget and agent app); a bridge or demo running elsewhere drives it over
the HTTP control routes ``/_sandbox/...`` and ``/{subdomain}/_sandbox/...`` (JSON in and
out, no auth: this is a sandbox).

Decisions where the contract is silent:

- 400 for a body that is not JSON or not an object, a missing required field, or a field
  of the wrong JSON type; 422 for values that are well formed but not allowed (lengths,
  limits, enums, unknown ids, closed conversation). ``null`` for an optional field means
  "absent"; unknown fields are ignored.
- Unknown or inactive agent_id / team_id / actor_agent_id: 422 (the yaml's own example).
- Idempotency-Key applies to the POSTs that create something (messages, attachments).
  Scope: workspace + request path. Only 2xx answers are remembered: a refused request
  created nothing, so repeating it simply tries again. The first answer is replayed even
  if the new body differs, with the header ``Idempotent-Replayed: true``. A key longer
  than 200 characters: 422.
- Assigning to the current assignee or unassigning an unassigned conversation: 200, no
  change, no event (as for close and reopen).
- A visitor writing into a closed conversation reopens it (conversation.reopened with
  actor null, then message.created); an agent can't post into a closed one (422).
- Internal notes are listed by GET messages and emitted as message.created, but do not
  move last_reply_at.
- "Created through the API" means source ``teams`` or ``api`` (``api`` when the request
  named no source); only those messages can be edited or deleted, others get 403.
- Injected faults (``fail_next``) answer before authentication, like a rate limiter in
  front of the app; ``path_contains`` is matched against the path below /api/external/v1.

Webhooks: each workspace has one delivery task that sends its queued events one at a
time in order of creation (tests reorder them with hold/release). An attempt without a
2xx within ``delivery_timeout`` is retried after ``retry_base_delay * 2**(n - 1)``
seconds; the event is given up after ``max_attempts`` attempts. Real neetoChat keeps
retrying for 24 h (about 17 attempts when doubling from 1 s); the default of 8 attempts
bounds a failing receiver to ~2 minutes. A failing event holds back the later events of
its workspace; the contract promises no order, so nothing may rely on this. Events are
queued only for a workspace that has a webhook_url when they happen, and removing the
url drops whatever was still queued.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import hmac
import itertools
import json
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
from aiohttp import hdrs, web

from sandbox.signing import sign

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ApiHandler = Callable[[web.Request, "_Workspace"], Awaitable[web.StreamResponse]]

API_PREFIX = "/api/external/v1"
AUTH_ERROR = "Could not authenticate, invalid API Key"
FIRST_CONVERSATION_NUMBER = 1042
MAX_BODY_CHARS = 10_000
MAX_ATTACHMENTS = 10
MAX_EXTERNAL_ID_CHARS = 200
MAX_IDEMPOTENCY_KEY_CHARS = 200
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
SUBDOMAIN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
ALLOWED_CONTENT_TYPE_PREFIXES = ("image/", "video/", "audio/")
ALLOWED_CONTENT_TYPES = frozenset({
    "application/pdf",
    "application/zip",
    "text/plain",
    "text/csv",
    "application/rtf",
    "application/msword",
    "application/vnd.ms-excel",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
})
TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer", list: "an array", dict: "an object"}


class SandboxError(Exception):
    """A refused request: HTTP status plus the text of ``{"error": ...}``.

    The Python control API raises it too, so both ways of driving the sandbox fail alike.
    """

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class _Fault:
    """An injected answer for the next ``remaining`` matching API requests."""

    status: int
    remaining: int
    retry_after: int | None
    method: str | None
    path_contains: str | None

    def matches(self, method: str, api_path: str) -> bool:
        return (self.method is None or self.method.upper() == method) and (
            self.path_contains is None or self.path_contains in api_path
        )


@dataclass
class _Conversation:
    public: Json
    # (sequence number, message), oldest first; the sequence makes cursors survive deletes.
    messages: list[tuple[int, Json]] = field(default_factory=list)


@dataclass
class _Attachment:
    public: Json
    content: bytes


@dataclass
class _Workspace:
    public: Json
    api_key: str
    webhook_secret: str
    webhook_url: str | None
    agents: dict[str, Json] = field(default_factory=dict)
    teams: dict[str, Json] = field(default_factory=dict)
    conversations: dict[str, _Conversation] = field(default_factory=dict)
    attachments: dict[str, _Attachment] = field(default_factory=dict)
    # (request path, key) -> (expires at, status, body)
    idempotency: dict[tuple[str, str], tuple[float, int, Json]] = field(default_factory=dict)
    faults: list[_Fault] = field(default_factory=list)
    events: list[Json] = field(default_factory=list)
    outbox: deque[Json] = field(default_factory=deque)
    held: bool = False
    lose: int = 0  # the next events of this many are never delivered (``lose_webhooks``)
    lost: list[Json] = field(default_factory=list)
    worker: asyncio.Task[None] | None = None
    next_number: int = FIRST_CONVERSATION_NUMBER

    @property
    def subdomain(self) -> str:
        return self.public["subdomain"]

    @property
    def app_url(self) -> str:
        return self.public["app_url"]


class NeetoChatSandbox:
    """In-memory neetoChat with many workspaces.

    ``public_url`` is where the sandbox is reachable (for the download links of files
    attached through the Python control API); without it the origin of the latest HTTP
    request is used. Uploads through the API always use their own request's host.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        retry_base_delay: float = 1.0,
        max_attempts: int = 8,
        delivery_timeout: float = 10.0,
        public_url: str | None = None,
    ) -> None:
        self._clock = clock
        self._retry_base_delay = retry_base_delay
        self._max_attempts = max_attempts
        self._delivery_timeout = delivery_timeout
        self._public_url = public_url.rstrip("/") if public_url else None
        self._last_origin: str | None = None
        self._workspaces: dict[str, _Workspace] = {}
        self._sequence = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self.deliveries: list[Json] = []

    def app(self) -> web.Application:
        """The HTTP face: external API, control routes and file downloads."""
        app = web.Application(middlewares=[self._remember_origin, _json_errors])
        app.add_routes(self._api_routes() + self._control_routes())
        app.on_cleanup.append(self._stop_delivery)
        return app

    # ------------------------------------------------------------------ control API

    def add_workspace(
        self,
        subdomain: str,
        *,
        api_key: str,
        webhook_secret: str,
        name: str | None = None,
        webhook_url: str | None = None,
    ) -> Json:
        if not SUBDOMAIN.fullmatch(subdomain):
            raise SandboxError(422, "subdomain must be lowercase letters, digits and dashes")
        if subdomain in self._workspaces:
            raise SandboxError(422, f"Workspace {subdomain} already exists")
        public = {
            "id": _new_id("wsp"),
            "name": name or subdomain.capitalize(),
            "subdomain": subdomain,
            "app_url": f"https://{subdomain}.neetochat.com/app",
        }
        self._workspaces[subdomain] = _Workspace(public, api_key, webhook_secret, webhook_url)
        return copy.deepcopy(public)

    def set_webhook_url(self, subdomain: str, url: str | None) -> None:
        """Connect (or with None disconnect) the workspace's webhook receiver."""
        ws = self._workspace(subdomain)
        ws.webhook_url = url
        if url is None:
            ws.outbox.clear()
        self._kick(ws)

    def add_agent(self, subdomain: str, *, name: str, email: str, role: str = "agent", active: bool = True) -> Json:
        ws = self._workspace(subdomain)
        if role not in ("admin", "agent"):
            raise SandboxError(422, "role must be admin or agent")
        agent = {"id": _new_id("agt"), "name": name, "email": email, "role": role, "active": active}
        ws.agents[agent["id"]] = agent
        return copy.deepcopy(agent)

    def set_agent_active(self, subdomain: str, agent_id: str, active: bool) -> None:
        """An admin deactivates (or reactivates) an agent in neetoChat."""
        self._workspace(subdomain).agents[agent_id]["active"] = active

    def add_team(self, subdomain: str, *, name: str) -> Json:
        ws = self._workspace(subdomain)
        team = {"id": _new_id("team"), "name": name}
        ws.teams[team["id"]] = team
        return copy.deepcopy(team)

    def set_api_key(self, subdomain: str, api_key: str) -> None:
        """An admin regenerates the workspace's API key in neetoChat: the old one is refused
        (401) from now on."""
        self._workspace(subdomain).api_key = api_key

    def start_conversation(
        self,
        subdomain: str,
        *,
        visitor_name: str | None,
        visitor_email: str | None,
        message: str | None,
        prechat: list[dict[str, str]] | None = None,
    ) -> Json:
        """A visitor opens the widget; conversation.created carries the first message."""
        ws = self._workspace(subdomain)
        if message is not None:
            _check_body(message, has_attachments=False)
        visitor_id = _new_id("vis")
        number = ws.next_number
        ws.next_number += 1
        conversation = _Conversation({
            "id": _new_id("cnv"),
            "number": number,
            "status": "open",
            "visitor": {
                "id": visitor_id,
                "name": visitor_name,
                "email": visitor_email,
                "contact_url": f"{ws.app_url}/contacts/{visitor_id}",
            },
            "assignee": None,
            "prechat_responses": _prechat(prechat or []),
            "created_at": self._now(),
            "last_reply_at": None,
            "url": f"{ws.app_url}/conversations/{number}",
        })
        ws.conversations[conversation.public["id"]] = conversation
        extra: Json = {}
        if message is not None:
            extra["message"] = self._add_message(
                conversation, _visitor_sender(conversation), message, [], internal=False, source="widget"
            )
        self._emit(ws, "conversation.created", conversation, extra)
        return copy.deepcopy(conversation.public)

    def visitor_writes(
        self, subdomain: str, conversation_id: str, body: str, *, attachments: list[dict[str, Any]] | None = None
    ) -> Json:
        """A visitor message from the widget; attachments are ``{filename, content_type, content: bytes}``."""
        ws, conversation = self._find(subdomain, conversation_id)
        stored = self._store_control_attachments(ws, attachments)
        _check_body(body, has_attachments=bool(stored))
        if conversation.public["status"] == "closed":
            self._set_status(ws, conversation, "open", actor=None)
        message = self._add_message(
            conversation, _visitor_sender(conversation), body, stored, internal=False, source="widget"
        )
        self._emit(ws, "message.created", conversation, {"message": message})
        return copy.deepcopy(message)

    def agent_writes(
        self,
        subdomain: str,
        conversation_id: str,
        agent_id: str,
        body: str,
        *,
        internal: bool = False,
        attachments: list[dict[str, Any]] | None = None,
    ) -> Json:
        """An agent replies (or adds an internal note) in the neetoChat app."""
        ws, conversation = self._find(subdomain, conversation_id)
        agent = self._active_agent(ws, agent_id, "agent_id")
        stored = self._store_control_attachments(ws, attachments)
        return self._post_as_agent(
            ws, conversation, agent, body, stored, internal=internal, source="app", external_id=None
        )

    def assign(
        self,
        subdomain: str,
        conversation_id: str,
        *,
        agent_id: str | None = None,
        team_id: str | None = None,
        actor_agent_id: str | None = None,
    ) -> Json:
        """Assign in the app; no actor means neetoChat's own rules did it."""
        ws, conversation = self._find(subdomain, conversation_id)
        self._assign(ws, conversation, agent_id, team_id, self._optional_actor(ws, actor_agent_id))
        return copy.deepcopy(conversation.public)

    def unassign(self, subdomain: str, conversation_id: str, *, actor_agent_id: str | None = None) -> Json:
        ws, conversation = self._find(subdomain, conversation_id)
        self._unassign(ws, conversation, self._optional_actor(ws, actor_agent_id))
        return copy.deepcopy(conversation.public)

    def close(self, subdomain: str, conversation_id: str, *, actor_agent_id: str | None = None) -> Json:
        ws, conversation = self._find(subdomain, conversation_id)
        self._set_status(ws, conversation, "closed", self._optional_actor(ws, actor_agent_id))
        return copy.deepcopy(conversation.public)

    def reopen(self, subdomain: str, conversation_id: str, *, actor_agent_id: str | None = None) -> Json:
        ws, conversation = self._find(subdomain, conversation_id)
        self._set_status(ws, conversation, "open", self._optional_actor(ws, actor_agent_id))
        return copy.deepcopy(conversation.public)

    def edit_message(self, subdomain: str, conversation_id: str, message_id: str, body: str) -> Json:
        """Someone edits a message in the neetoChat app (or the widget)."""
        ws, conversation = self._find(subdomain, conversation_id)
        message = next((m for _, m in conversation.messages if m["id"] == message_id), None)
        if message is None:
            raise SandboxError(404, "Message not found")
        _check_body(body, has_attachments=bool(message["attachments"]))
        message["body"] = body
        self._emit(ws, "message.updated", conversation, {"message": message})
        return copy.deepcopy(message)

    def delete_message(self, subdomain: str, conversation_id: str, message_id: str) -> None:
        """Someone deletes a message in the neetoChat app (or the widget)."""
        ws, conversation = self._find(subdomain, conversation_id)
        if not any(m["id"] == message_id for _, m in conversation.messages):
            raise SandboxError(404, "Message not found")
        conversation.messages = [entry for entry in conversation.messages if entry[1]["id"] != message_id]
        reference = {"id": message_id, "conversation_id": conversation_id}
        self._emit(ws, "message.deleted", conversation, {"message": reference})

    def visitor_sees(self, subdomain: str, conversation_id: str) -> list[Json]:
        """What the visitor's widget shows: every message but internal notes."""
        return [m for m in self.messages(subdomain, conversation_id) if not m["internal"]]

    def messages(self, subdomain: str, conversation_id: str) -> list[Json]:
        """Every message in order, internal notes included."""
        _, conversation = self._find(subdomain, conversation_id)
        return [copy.deepcopy(message) for _, message in conversation.messages]

    def conversation(self, subdomain: str, conversation_id: str) -> Json:
        _, conversation = self._find(subdomain, conversation_id)
        return copy.deepcopy(conversation.public)

    def events(self, subdomain: str) -> list[Json]:
        """Every event of the workspace in order of creation, delivered or not."""
        return copy.deepcopy(self._workspace(subdomain).events)

    # ------------------------------------------------------------------ faults

    def fail_next(
        self,
        subdomain: str,
        *,
        status: int,
        count: int = 1,
        retry_after: int | None = None,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Answer ``status`` to the next ``count`` matching API requests (429 always has Retry-After)."""
        if not 400 <= status <= 599 or count < 1:
            raise SandboxError(422, "status must be 4xx/5xx and count at least 1")
        if status == 429 and retry_after is None:
            retry_after = 1
        self._workspace(subdomain).faults.append(_Fault(status, count, retry_after, method, path_contains))

    def clear_faults(self, subdomain: str) -> None:
        """neetoChat recovers: drop every injected fault still pending."""
        self._workspace(subdomain).faults.clear()

    def lose_webhooks(self, subdomain: str, count: int = 1) -> None:
        """The next ``count`` events happen but their webhooks never arrive (a delivery
        given up, a bug, an outage on the way): only reading the API shows them."""
        if count < 1:
            raise SandboxError(422, "count must be at least 1")
        self._workspace(subdomain).lose += count

    def lost_webhooks(self, subdomain: str) -> list[Json]:
        return copy.deepcopy(self._workspace(subdomain).lost)

    def hold_webhooks(self, subdomain: str) -> None:
        """Queue the workspace's events without sending them until ``release_webhooks``."""
        self._workspace(subdomain).held = True

    def release_webhooks(
        self, subdomain: str, *, order: Literal["created", "reversed"] = "created", duplicate: bool = False
    ) -> None:
        """Send what was held, optionally newest first and/or every event twice (all once, then all again)."""
        if order not in ("created", "reversed"):
            raise SandboxError(422, "order must be created or reversed")
        ws = self._workspace(subdomain)
        events = list(ws.outbox)
        if order == "reversed":
            events.reverse()
        ws.outbox = deque(events + events if duplicate else events)
        ws.held = False
        self._kick(ws)

    # ------------------------------------------------------------------ domain rules

    def _workspace(self, subdomain: str) -> _Workspace:
        try:
            return self._workspaces[subdomain]
        except KeyError:
            raise SandboxError(404, "Workspace not found") from None

    def _find(self, subdomain: str, conversation_id: str) -> tuple[_Workspace, _Conversation]:
        ws = self._workspace(subdomain)
        return ws, _conversation_of(ws, conversation_id)

    def _now(self) -> str:
        return _timestamp(self._clock())

    def _active_agent(self, ws: _Workspace, agent_id: str, field_name: str) -> Json:
        agent = ws.agents.get(agent_id)
        if agent is None:
            raise SandboxError(422, f"{field_name} is not an agent of this workspace")
        if not agent["active"]:
            raise SandboxError(422, f"{field_name} is not an active agent")
        return agent

    def _optional_actor(self, ws: _Workspace, actor_agent_id: str | None) -> Json | None:
        return None if actor_agent_id is None else self._active_agent(ws, actor_agent_id, "actor_agent_id")

    def _add_message(
        self,
        conversation: _Conversation,
        sender: Json,
        body: str,
        attachments: list[Json],
        *,
        internal: bool,
        source: str,
        external_id: str | None = None,
    ) -> Json:
        """Store a message (callers emit the event, as conversation.created embeds the first one)."""
        now = self._now()
        message = {
            "id": _new_id("msg"),
            "conversation_id": conversation.public["id"],
            "sender": sender,
            "body": body,
            "attachments": attachments,
            "internal": internal,
            "source": source,
            "external_id": external_id,
            "created_at": now,
        }
        conversation.messages.append((next(self._sequence), message))
        if not internal:
            conversation.public["last_reply_at"] = now
        return message

    def _post_as_agent(
        self,
        ws: _Workspace,
        conversation: _Conversation,
        agent: Json,
        body: str,
        attachments: list[Json],
        *,
        internal: bool,
        source: str,
        external_id: str | None,
    ) -> Json:
        if conversation.public["status"] == "closed":
            raise SandboxError(422, "Conversation is closed")
        _check_body(body, has_attachments=bool(attachments))
        sender = {"type": "agent", "id": agent["id"], "name": agent["name"], "email": agent["email"]}
        message = self._add_message(
            conversation, sender, body, attachments, internal=internal, source=source, external_id=external_id
        )
        self._emit(ws, "message.created", conversation, {"message": message})
        return copy.deepcopy(message)

    def _assign(
        self, ws: _Workspace, conversation: _Conversation, agent_id: str | None, team_id: str | None, actor: Json | None
    ) -> None:
        if (agent_id is None) == (team_id is None):
            raise SandboxError(422, "Give exactly one of agent_id and team_id")
        if agent_id is not None:
            agent = self._active_agent(ws, agent_id, "agent_id")
            assignee = {"type": "agent", "id": agent["id"], "name": agent["name"], "email": agent["email"]}
        else:
            team = ws.teams.get(team_id or "")
            if team is None:
                raise SandboxError(422, "team_id is not a team of this workspace")
            assignee = {"type": "team", "id": team["id"], "name": team["name"]}
        if conversation.public["assignee"] == assignee:
            return
        conversation.public["assignee"] = assignee
        self._emit(ws, "conversation.assigned", conversation, {"assignee": assignee, "actor": actor})

    def _unassign(self, ws: _Workspace, conversation: _Conversation, actor: Json | None) -> None:
        previous = conversation.public["assignee"]
        if previous is None:
            return
        conversation.public["assignee"] = None
        self._emit(ws, "conversation.unassigned", conversation, {"previous_assignee": previous, "actor": actor})

    def _set_status(self, ws: _Workspace, conversation: _Conversation, status: str, actor: Json | None) -> None:
        """Close or reopen; doing it twice changes nothing and emits nothing."""
        if conversation.public["status"] == status:
            return
        conversation.public["status"] = status
        name = "conversation.closed" if status == "closed" else "conversation.reopened"
        self._emit(ws, name, conversation, {"actor": actor})

    def _store_attachment(self, ws: _Workspace, filename: str, content_type: str, content: bytes, origin: str) -> Json:
        _check_content_type(content_type)
        if len(content) > MAX_UPLOAD_BYTES:
            raise SandboxError(413, "File is larger than 25 MB")
        attachment_id = _new_id("att")
        public = {
            "id": attachment_id,
            "filename": filename,
            "content_type": content_type,
            "size": len(content),
            "url": f"{origin}/{ws.subdomain}/_sandbox/files/{attachment_id}/{quote(filename)}",
        }
        ws.attachments[attachment_id] = _Attachment(public, content)
        return copy.deepcopy(public)

    def _store_control_attachments(self, ws: _Workspace, attachments: list[dict[str, Any]] | None) -> list[Json]:
        if not attachments:
            return []
        if len(attachments) > MAX_ATTACHMENTS:
            raise SandboxError(422, f"At most {MAX_ATTACHMENTS} attachments")
        origin = self._public_url or self._last_origin
        if origin is None:
            raise SandboxError(422, "No URL known for file links: pass public_url= or make an HTTP request first")
        return [
            self._store_attachment(ws, item["filename"], item["content_type"], item["content"], origin)
            for item in attachments
        ]

    # ------------------------------------------------------------------ webhooks

    def _emit(self, ws: _Workspace, name: str, conversation: _Conversation, extra: Json) -> None:
        event = {
            "id": _new_id("evt"),
            "event": name,
            "workspace": ws.subdomain,
            "created_at": self._now(),
            "data": copy.deepcopy({"conversation": conversation.public, **extra}),
        }
        ws.events.append(event)
        if ws.lose:
            ws.lose -= 1
            ws.lost.append(event)
        elif ws.webhook_url:
            ws.outbox.append(event)
            self._kick(ws)

    def _kick(self, ws: _Workspace) -> None:
        """Start the workspace's delivery task if there is work and none is running."""
        if ws.held or not ws.outbox or not ws.webhook_url or (ws.worker and not ws.worker.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # called outside a loop: drain_webhooks starts it later
        ws.worker = loop.create_task(self._deliver_queued(ws))

    async def _deliver_queued(self, ws: _Workspace) -> None:
        while ws.outbox and not ws.held and ws.webhook_url:
            await self._deliver(ws, ws.outbox.popleft())

    async def _deliver(self, ws: _Workspace, event: Json) -> None:
        """Try until a 2xx or ``max_attempts``, backing off exponentially."""
        body = json.dumps(event).encode()
        for attempt in range(1, self._max_attempts + 1):
            url = ws.webhook_url
            if url is None:
                return
            if await self._attempt(ws, url, event, body, attempt):
                return
            if attempt < self._max_attempts:
                await asyncio.sleep(self._retry_base_delay * 2 ** (attempt - 1))

    async def _attempt(self, ws: _Workspace, url: str, event: Json, body: bytes, attempt: int) -> bool:
        timestamp = int(self._clock())
        headers = {
            hdrs.CONTENT_TYPE: "application/json",
            "X-Neeto-Event": event["event"],
            "X-Neeto-Delivery": event["id"],
            "X-Neeto-Timestamp": str(timestamp),
            "X-Neeto-Signature": sign(ws.webhook_secret, timestamp, body),
        }
        record: Json = {
            "workspace": ws.subdomain,
            "event_id": event["id"],
            "event": event["event"],
            "attempt": attempt,
            "status": None,
            "error": None,
            "sent_at": _timestamp(timestamp),
        }
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            timeout = aiohttp.ClientTimeout(total=self._delivery_timeout)
            async with self._session.post(url, data=body, headers=headers, timeout=timeout) as response:
                record["status"] = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
        self.deliveries.append(record)
        return record["status"] is not None and 200 <= record["status"] < 300

    async def drain_webhooks(self, timeout: float = 10) -> None:  # noqa: ASYNC109 - the agreed test helper API
        """Wait until every queued (not held) event got a 2xx or was given up (TimeoutError otherwise)."""
        async with asyncio.timeout(timeout):
            while True:
                for ws in self._workspaces.values():
                    self._kick(ws)
                busy = [ws.worker for ws in self._workspaces.values() if ws.worker and not ws.worker.done()]
                if not busy:
                    return
                await asyncio.wait(busy)

    async def _stop_delivery(self, _app: web.Application) -> None:
        workers = [ws.worker for ws in self._workspaces.values() if ws.worker and not ws.worker.done()]
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ HTTP: external API

    def _api_routes(self) -> list[web.RouteDef]:
        base = "/{subdomain}" + API_PREFIX
        conversation = base + "/conversations/{conversation_id}"
        return [
            web.get(base + "/workspace", self._api(self._get_workspace)),
            web.get(base + "/agents", self._api(self._list_agents)),
            web.post(base + "/attachments", self._api(self._upload_attachment)),
            web.get(conversation, self._api(self._get_conversation)),
            web.get(conversation + "/messages", self._api(self._list_messages)),
            web.post(conversation + "/messages", self._api(self._create_message)),
            web.patch(conversation + "/messages/{message_id}", self._api(self._update_message)),
            web.delete(conversation + "/messages/{message_id}", self._api(self._delete_message)),
            web.put(conversation + "/assignee", self._api(self._put_assignee)),
            web.delete(conversation + "/assignee", self._api(self._delete_assignee)),
            web.post(conversation + "/close", self._api(self._post_status("closed"))),
            web.post(conversation + "/reopen", self._api(self._post_status("open"))),
        ]

    def _api(self, handler: ApiHandler) -> Handler:
        """Find the workspace, play injected faults, then check the API key."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            ws = self._workspace(request.match_info["subdomain"])
            _play_fault(ws, request)
            given = request.headers.get("X-Api-Key", "").encode()
            if not hmac.compare_digest(given, ws.api_key.encode()):
                raise SandboxError(401, AUTH_ERROR)
            return await handler(request, ws)

        return guarded

    async def _get_workspace(self, _request: web.Request, ws: _Workspace) -> web.Response:
        return web.json_response(ws.public)

    async def _list_agents(self, request: web.Request, ws: _Workspace) -> web.Response:
        email = request.query.get("email")
        agents = [a for a in ws.agents.values() if email is None or a["email"].lower() == email.lower()]
        return web.json_response({"agents": agents})

    async def _get_conversation(self, request: web.Request, ws: _Workspace) -> web.Response:
        return web.json_response(_conversation_of(ws, request.match_info["conversation_id"]).public)

    async def _list_messages(self, request: web.Request, ws: _Workspace) -> web.Response:
        conversation = _conversation_of(ws, request.match_info["conversation_id"])
        limit = _page_size(request.query.get("limit"))
        after = request.query.get("after")
        after_sequence = _decode_cursor(after, conversation.public["id"]) if after else 0
        remaining = [entry for entry in conversation.messages if entry[0] > after_sequence]
        page = remaining[:limit]
        more = len(remaining) > limit
        return web.json_response({
            "messages": [message for _, message in page],
            "next_cursor": _encode_cursor(conversation.public["id"], page[-1][0]) if more else None,
        })

    async def _create_message(self, request: web.Request, ws: _Workspace) -> web.Response:
        conversation = _conversation_of(ws, request.match_info["conversation_id"])
        data = await _json_object(request)
        key = _idempotency_key(request)

        def create() -> Json:
            agent = self._active_agent(ws, _field(data, "agent_id", str, required=True), "agent_id")
            source = _field(data, "source", str)
            if source not in (None, "teams"):
                raise SandboxError(422, "source must be teams")
            external_id = _field(data, "external_id", str)
            if external_id is not None and len(external_id) > MAX_EXTERNAL_ID_CHARS:
                raise SandboxError(422, f"external_id is longer than {MAX_EXTERNAL_ID_CHARS} characters")
            attachments = _attachments_by_id(ws, _field(data, "attachment_ids", list) or [])
            return self._post_as_agent(
                ws,
                conversation,
                agent,
                _field(data, "body", str) or "",
                attachments,
                internal=_field(data, "internal", bool) or False,
                source=source or "api",
                external_id=external_id,
            )

        return self._idempotent(ws, request.path, key, create)

    async def _update_message(self, request: web.Request, ws: _Workspace) -> web.Response:
        conversation, message = _message_of(ws, request)
        data = await _json_object(request)
        body = _field(data, "body", str, required=True)
        _check_body(body, has_attachments=bool(message["attachments"]))
        message["body"] = body
        self._emit(ws, "message.updated", conversation, {"message": message})
        return web.json_response(message)

    async def _delete_message(self, request: web.Request, ws: _Workspace) -> web.Response:
        conversation, message = _message_of(ws, request)
        conversation.messages = [entry for entry in conversation.messages if entry[1]["id"] != message["id"]]
        reference = {"id": message["id"], "conversation_id": message["conversation_id"]}
        self._emit(ws, "message.deleted", conversation, {"message": reference})
        return web.Response(status=204)

    async def _upload_attachment(self, request: web.Request, ws: _Workspace) -> web.Response:
        """Stream the ``file`` part, refusing its type before reading and its size while reading."""
        key = _idempotency_key(request)
        if request.content_type != "multipart/form-data":
            raise SandboxError(400, "Expected multipart/form-data with a file field")
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, aiohttp.BodyPartReader) and part.name == "file":
                break
        else:
            raise SandboxError(400, "file is required")
        if not part.filename:
            raise SandboxError(400, "file must be a file upload with a filename")
        content_type = part.headers.get(hdrs.CONTENT_TYPE, "application/octet-stream").split(";")[0].strip().lower()
        _check_content_type(content_type)
        content = await _read_limited(part)
        filename, origin = part.filename, _origin_of(request)
        return self._idempotent(
            ws, request.path, key, lambda: self._store_attachment(ws, filename, content_type, content, origin)
        )

    async def _put_assignee(self, request: web.Request, ws: _Workspace) -> web.Response:
        conversation = _conversation_of(ws, request.match_info["conversation_id"])
        data = await _json_object(request)
        actor = self._active_agent(ws, _field(data, "actor_agent_id", str, required=True), "actor_agent_id")
        self._assign(ws, conversation, _field(data, "agent_id", str), _field(data, "team_id", str), actor)
        return web.json_response(conversation.public)

    async def _delete_assignee(self, request: web.Request, ws: _Workspace) -> web.Response:
        conversation = _conversation_of(ws, request.match_info["conversation_id"])
        actor_agent_id = request.query.get("actor_agent_id")
        if not actor_agent_id:
            raise SandboxError(400, "actor_agent_id is required")
        self._unassign(ws, conversation, self._active_agent(ws, actor_agent_id, "actor_agent_id"))
        return web.json_response(conversation.public)

    def _post_status(self, status: str) -> ApiHandler:
        async def handler(request: web.Request, ws: _Workspace) -> web.Response:
            conversation = _conversation_of(ws, request.match_info["conversation_id"])
            data = await _json_object(request)
            actor = self._active_agent(ws, _field(data, "actor_agent_id", str, required=True), "actor_agent_id")
            self._set_status(ws, conversation, status, actor)
            return web.json_response(conversation.public)

        return handler

    def _idempotent(self, ws: _Workspace, path: str, key: str | None, create: Callable[[], Json]) -> web.Response:
        """Run ``create`` once per (path, key) within 24 h; replay its 201 afterwards."""
        if key is None:
            return web.json_response(create(), status=201)
        remembered = ws.idempotency.get((path, key))
        if remembered is not None and remembered[0] > self._clock():
            _, status, body = remembered
            return web.json_response(body, status=status, headers={"Idempotent-Replayed": "true"})
        body = create()
        ws.idempotency[(path, key)] = (self._clock() + IDEMPOTENCY_TTL_SECONDS, 201, body)
        return web.json_response(body, status=201)

    # ------------------------------------------------------------------ HTTP: control routes

    def _control_routes(self) -> list[web.RouteDef]:
        base = "/{subdomain}/_sandbox"
        conversation = base + "/conversations/{conversation_id}"
        return [
            web.post("/_sandbox/workspaces", self._http_add_workspace),
            web.post("/_sandbox/drain", self._http_drain),
            web.put(base + "/webhook_url", self._http_set_webhook_url),
            web.post(base + "/agents", self._http_add_agent),
            web.post(base + "/teams", self._http_add_team),
            web.post(base + "/conversations", self._http_start_conversation),
            web.get(conversation, self._http_get_conversation),
            web.post(conversation + "/visitor_messages", self._http_visitor_writes),
            web.post(conversation + "/agent_messages", self._http_agent_writes),
            web.post(conversation + "/assign", self._http_assign),
            web.post(conversation + "/unassign", self._http_unassign),
            web.post(conversation + "/close", self._http_close),
            web.post(conversation + "/reopen", self._http_reopen),
            web.get(base + "/events", self._http_events),
            web.get(base + "/deliveries", self._http_deliveries),
            web.post(base + "/faults", self._http_fail_next),
            web.post(base + "/webhooks/hold", self._http_hold),
            web.post(base + "/webhooks/release", self._http_release),
            web.get(base + "/files/{attachment_id}/{filename}", self._http_download),
        ]

    async def _http_add_workspace(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        workspace = self.add_workspace(
            _field(data, "subdomain", str, required=True),
            api_key=_field(data, "api_key", str, required=True),
            webhook_secret=_field(data, "webhook_secret", str, required=True),
            name=_field(data, "name", str),
            webhook_url=_field(data, "webhook_url", str),
        )
        return web.json_response(workspace, status=201)

    async def _http_drain(self, request: web.Request) -> web.Response:
        data = await _json_object(request) if request.can_read_body else {}
        timeout = _field(data, "timeout", int) or 10
        await self.drain_webhooks(timeout)
        return web.json_response({"drained": True})

    async def _http_set_webhook_url(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        url = _field(data, "url", str)
        self.set_webhook_url(request.match_info["subdomain"], url)
        return web.json_response({"webhook_url": url})

    async def _http_add_agent(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        agent = self.add_agent(
            request.match_info["subdomain"],
            name=_field(data, "name", str, required=True),
            email=_field(data, "email", str, required=True),
            role=_field(data, "role", str) or "agent",
            active=_field(data, "active", bool) is not False,
        )
        return web.json_response(agent, status=201)

    async def _http_add_team(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        team = self.add_team(request.match_info["subdomain"], name=_field(data, "name", str, required=True))
        return web.json_response(team, status=201)

    async def _http_start_conversation(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        conversation = self.start_conversation(
            request.match_info["subdomain"],
            visitor_name=_field(data, "visitor_name", str),
            visitor_email=_field(data, "visitor_email", str),
            message=_field(data, "message", str),
            prechat=_field(data, "prechat", list),
        )
        return web.json_response(conversation, status=201)

    async def _http_get_conversation(self, request: web.Request) -> web.Response:
        subdomain, conversation_id = request.match_info["subdomain"], request.match_info["conversation_id"]
        return web.json_response({
            "conversation": self.conversation(subdomain, conversation_id),
            "messages": self.messages(subdomain, conversation_id),
        })

    async def _http_visitor_writes(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        message = self.visitor_writes(
            request.match_info["subdomain"],
            request.match_info["conversation_id"],
            _field(data, "body", str) or "",
            attachments=_decode_control_attachments(_field(data, "attachments", list) or []),
        )
        return web.json_response(message, status=201)

    async def _http_agent_writes(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        message = self.agent_writes(
            request.match_info["subdomain"],
            request.match_info["conversation_id"],
            _field(data, "agent_id", str, required=True),
            _field(data, "body", str) or "",
            internal=_field(data, "internal", bool) or False,
            attachments=_decode_control_attachments(_field(data, "attachments", list) or []),
        )
        return web.json_response(message, status=201)

    async def _http_assign(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        conversation = self.assign(
            request.match_info["subdomain"],
            request.match_info["conversation_id"],
            agent_id=_field(data, "agent_id", str),
            team_id=_field(data, "team_id", str),
            actor_agent_id=_field(data, "actor_agent_id", str),
        )
        return web.json_response(conversation)

    async def _http_unassign(self, request: web.Request) -> web.Response:
        return await self._http_change(request, self.unassign)

    async def _http_close(self, request: web.Request) -> web.Response:
        return await self._http_change(request, self.close)

    async def _http_reopen(self, request: web.Request) -> web.Response:
        return await self._http_change(request, self.reopen)

    async def _http_change(self, request: web.Request, change: Callable[..., Json]) -> web.Response:
        """unassign/close/reopen: an optional ``actor_agent_id`` (none = neetoChat did it)."""
        data = await _json_object(request) if request.can_read_body else {}
        conversation = change(
            request.match_info["subdomain"],
            request.match_info["conversation_id"],
            actor_agent_id=_field(data, "actor_agent_id", str),
        )
        return web.json_response(conversation)

    async def _http_events(self, request: web.Request) -> web.Response:
        return web.json_response({"events": self.events(request.match_info["subdomain"])})

    async def _http_deliveries(self, request: web.Request) -> web.Response:
        subdomain = request.match_info["subdomain"]
        self._workspace(subdomain)
        return web.json_response({"deliveries": [d for d in self.deliveries if d["workspace"] == subdomain]})

    async def _http_fail_next(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        self.fail_next(
            request.match_info["subdomain"],
            status=_field(data, "status", int, required=True),
            count=_field(data, "count", int) or 1,
            retry_after=_field(data, "retry_after", int),
            method=_field(data, "method", str),
            path_contains=_field(data, "path_contains", str),
        )
        return web.json_response({}, status=201)

    async def _http_hold(self, request: web.Request) -> web.Response:
        self.hold_webhooks(request.match_info["subdomain"])
        return web.json_response({"held": True})

    async def _http_release(self, request: web.Request) -> web.Response:
        data = await _json_object(request) if request.can_read_body else {}
        self.release_webhooks(
            request.match_info["subdomain"],
            order=_field(data, "order", str) or "created",
            duplicate=_field(data, "duplicate", bool) or False,
        )
        return web.json_response({"held": False})

    async def _http_download(self, request: web.Request) -> web.Response:
        """Attachment links work without an API key, like neetoChat's public file links."""
        ws = self._workspace(request.match_info["subdomain"])
        attachment = ws.attachments.get(request.match_info["attachment_id"])
        if attachment is None or attachment.public["filename"] != request.match_info["filename"]:
            raise SandboxError(404, "File not found")
        return web.Response(body=attachment.content, headers={hdrs.CONTENT_TYPE: attachment.public["content_type"]})

    @web.middleware
    async def _remember_origin(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Learn where the sandbox is reachable, for links to files attached via the control API."""
        self._last_origin = _origin_of(request)
        return await handler(request)


# ---------------------------------------------------------------------- helpers


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal, ours or aiohttp's (404 route, 405, 413), as ``{"error": ...}``."""
    try:
        return await handler(request)
    except SandboxError as exc:
        return web.json_response({"error": exc.message}, status=exc.status, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.reason}, status=exc.status)


def _timestamp(seconds: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. 2026-11-28T15:31:46.123Z."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def _origin_of(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _visitor_sender(conversation: _Conversation) -> Json:
    visitor = conversation.public["visitor"]
    return {"type": "visitor", "id": visitor["id"], "name": visitor["name"], "email": visitor["email"]}


def _prechat(responses: list[Any]) -> list[Json]:
    if not all(isinstance(r, dict) and isinstance(r.get("question"), str) and isinstance(r.get("answer"), str)
               for r in responses):
        raise SandboxError(422, "prechat must be a list of {question, answer} strings")
    return [{"question": r["question"], "answer": r["answer"]} for r in responses]


def _check_body(body: str, *, has_attachments: bool) -> None:
    if len(body) > MAX_BODY_CHARS:
        raise SandboxError(422, f"body is longer than {MAX_BODY_CHARS} characters")
    if not body.strip() and not has_attachments:
        raise SandboxError(422, "A message needs a body or attachments")


def _check_content_type(content_type: str) -> None:
    if not (content_type.startswith(ALLOWED_CONTENT_TYPE_PREFIXES) or content_type in ALLOWED_CONTENT_TYPES):
        raise SandboxError(415, f"Files of type {content_type} are not allowed")


def _conversation_of(ws: _Workspace, conversation_id: str) -> _Conversation:
    conversation = ws.conversations.get(conversation_id)
    if conversation is None:
        raise SandboxError(404, "Conversation not found")
    return conversation


def _message_of(ws: _Workspace, request: web.Request) -> tuple[_Conversation, Json]:
    """The addressed message, if it exists and was created through the API."""
    conversation = _conversation_of(ws, request.match_info["conversation_id"])
    message_id = request.match_info["message_id"]
    message = next((m for _, m in conversation.messages if m["id"] == message_id), None)
    if message is None:
        raise SandboxError(404, "Message not found")
    if message["source"] not in ("teams", "api"):
        raise SandboxError(403, "Only messages created through the API can be changed")
    return conversation, message


def _attachments_by_id(ws: _Workspace, attachment_ids: list[Any]) -> list[Json]:
    if not all(isinstance(a, str) for a in attachment_ids):
        raise SandboxError(400, "attachment_ids must be an array of strings")
    if len(attachment_ids) > MAX_ATTACHMENTS:
        raise SandboxError(422, f"At most {MAX_ATTACHMENTS} attachment_ids")
    unknown = [a for a in attachment_ids if a not in ws.attachments]
    if unknown:
        raise SandboxError(422, f"Unknown attachment_ids: {', '.join(unknown)}")
    return [copy.deepcopy(ws.attachments[a].public) for a in attachment_ids]


def _decode_control_attachments(items: list[Any]) -> list[dict[str, Any]]:
    """HTTP control attachments ``{filename, content_type, content_base64}`` to the Python shape."""
    decoded = []
    for item in items:
        if not isinstance(item, dict):
            raise SandboxError(400, "attachments must be objects")
        try:
            content = base64.b64decode(_field(item, "content_base64", str, required=True), validate=True)
        except binascii.Error:
            raise SandboxError(400, "content_base64 is not base64") from None
        decoded.append({
            "filename": _field(item, "filename", str, required=True),
            "content_type": _field(item, "content_type", str, required=True),
            "content": content,
        })
    return decoded


def _play_fault(ws: _Workspace, request: web.Request) -> None:
    api_path = request.path.split(API_PREFIX, 1)[1]
    fault = next((f for f in ws.faults if f.matches(request.method, api_path)), None)
    if fault is None:
        return
    fault.remaining -= 1
    if fault.remaining == 0:
        ws.faults.remove(fault)
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
    message = "Rate limit exceeded" if fault.status == 429 else HTTPStatus(fault.status).phrase
    raise SandboxError(fault.status, message, headers=headers)


async def _json_object(request: web.Request) -> Json:
    try:
        data = json.loads(await request.text())
    except ValueError:
        raise SandboxError(400, "Malformed JSON body") from None
    if not isinstance(data, dict):
        raise SandboxError(400, "The JSON body must be an object")
    return data


def _field(data: Json, name: str, kind: type, *, required: bool = False) -> Any:
    """A typed field; None when absent or null (400 if it is required)."""
    value = data.get(name)
    if value is None:
        if required:
            raise SandboxError(400, f"{name} is required")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SandboxError(400, f"{name} must be {TYPE_NAMES[kind]}")
    return value


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise SandboxError(422, f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters")
    return key or None


def _page_size(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_SIZE
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise SandboxError(422, f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")
    return limit


def _encode_cursor(conversation_id: str, sequence: int) -> str:
    raw = json.dumps({"c": conversation_id, "s": sequence}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, conversation_id: str) -> int:
    """The sequence number after which the page starts; 422 for anything not ours."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        data = None
    if not isinstance(data, dict) or data.get("c") != conversation_id or type(data.get("s")) is not int:
        raise SandboxError(422, "Invalid cursor")
    return data["s"]


async def _read_limited(part: aiohttp.BodyPartReader) -> bytes:
    """The part's bytes, or 413 as soon as they pass 25 MB."""
    chunks, size = [], 0
    while chunk := await part.read_chunk(256 * 1024):
        size += len(chunk)
        if size > MAX_UPLOAD_BYTES:
            raise SandboxError(413, "File is larger than 25 MB")
        chunks.append(chunk)
    return b"".join(chunks)
