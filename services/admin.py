"""The operator API (``/api/admin/...``): connect workspaces, link them to a team, read status.

Bearer ``BRIDGE_ADMIN_TOKEN`` compared in constant time; without the variable the API is
off (404). Secrets go in encrypted and never come out: responses and logs carry only
non-secret fields.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import urlparse

from aiohttp import web

from services.context import BOT_REMOVED, KEY_REFUSED, NO_GRAPH_TOKEN, BridgeContext
from services.errors import RemoteError
from services.health import as_json, check_health
from services.identities import IdentityError, override_json, person_id, set_identity
from services.inbox import store_link_confirmation
from services.neetochat import NeetoChatClient
from services.reconcile import Reconciler
from services.routing import RoutingError, checked_routes
from services.store.base import Installation, Workspace

log = logging.getLogger(__name__)

UPDATE_TYPES = ("new_conversations", "all_activity")


class LinkError(Exception):
    """Linking refused; ``status`` is what the operator API answers, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def link_team(
    ctx: BridgeContext,
    ws: Workspace,
    *,
    team_id: Any,
    user: Any,
    tenant_id: Any = None,
    notification_channel_id: Any = None,
    update_type: Any = "new_conversations",
    transcript_on_close: Any = None,
    on_enqueued=None,
) -> Workspace:
    """Link ``ws`` to a team: what ``PUT /api/admin/workspaces/{ws}/teams`` and the sign-in
    flow (``services/web``) both do. The authorizing user must be an active neetoChat agent
    (non-agents write as them). ``transcript_on_close`` None keeps the workspace's setting.
    Saves the workspace and queues the confirmation post in General; ``LinkError`` (nothing
    saved) when refused."""
    if not isinstance(team_id, str) or not team_id:
        raise LinkError(400, "team_id is required")
    if update_type not in UPDATE_TYPES:
        raise LinkError(400, f"update_type must be one of {', '.join(UPDATE_TYPES)}")
    if transcript_on_close is not None and not isinstance(transcript_on_close, bool):
        raise LinkError(400, "transcript_on_close must be true or false")
    if not isinstance(user, dict) or not isinstance(user.get("email"), str):
        raise LinkError(400, "authorizing_user with an email is required")
    if notification_channel_id is not None and not isinstance(notification_channel_id, str):
        raise LinkError(400, "notification_channel_id must be a string")
    try:
        agent = await ctx.neetochat(ws).find_agent_by_email(user["email"])
    except RemoteError as exc:
        raise LinkError(422, f"could not look up the authorizing user in neetoChat: {exc}") from exc
    if agent is None:
        raise LinkError(422, f"{user['email']} is not an active agent of this neetoChat workspace")
    installation = await ctx.store.get_installation(team_id)
    ws.tenant_id = tenant_id or (installation.tenant_id if installation else None)
    ws.team_id = installation.team_id if installation else team_id
    ws.aad_group_id = installation.aad_group_id if installation else (None if team_id.startswith("19:") else team_id)
    ws.notification_channel_id = notification_channel_id or None
    ws.update_type = update_type
    if transcript_on_close is not None:
        ws.transcript_on_close = transcript_on_close
    ws.authorizing_user = {
        "aad_object_id": user.get("aad_object_id"),
        "email": user["email"],
        "name": user.get("name") or agent.get("name"),
        "agent_id": agent["id"],
    }
    ws.updated_at = time.time()
    await ctx.store.put_workspace(ws)
    if await store_link_confirmation(ctx.store, ws.id, uuid.uuid4().hex) and on_enqueued is not None:
        on_enqueued()
    return ws


async def unlink_team(ctx: BridgeContext, ws: Workspace) -> Workspace:
    """Undo the Teams link (no more syncing) but keep the workspace connected: its secrets
    stay, and linking again later needs no operator."""
    ws.tenant_id = ws.team_id = ws.aad_group_id = ws.notification_channel_id = None
    ws.authorizing_user = None
    ws.update_type = "new_conversations"
    ws.updated_at = time.time()
    await ctx.store.put_workspace(ws)
    return ws


def _link_problem(ws: Workspace, installation: Installation | None) -> str | None:
    """What keeps the link from working, in words an operator can act on; None when fine."""
    if not ws.team_id:
        return None
    if installation is None:
        return "the bot has not been installed in the linked team yet: install the app in the team"
    if not installation.installed:
        return (
            f"{BOT_REMOVED} the linked team: deliveries are held (as failed) and are "
            "replayed automatically when the app is added back to the team"
        )
    return None


def _held_problem(ws: Workspace, reason: str) -> str | None:
    """What the newest dead letter says is broken for the whole workspace, and what to do."""
    if reason.startswith(KEY_REFUSED):
        return (
            f"{KEY_REFUSED}: reconnect the workspace with a new key (PUT /api/admin/workspaces/{ws.id}); "
            "the held deliveries are then replayed in order"
        )
    if reason.startswith(NO_GRAPH_TOKEN):
        return (
            f"{NO_GRAPH_TOKEN} for the team's tenant: check that the app is still installed and consented "
            "there and that MicrosoftAppPassword is valid; the held deliveries are replayed in order as soon "
            "as Graph answers again (checked with every reconcile run)"
        )
    return None


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class AdminApi:
    def __init__(self, ctx: BridgeContext, on_enqueued, reconciler: Reconciler) -> None:
        self.ctx = ctx
        self.on_enqueued = on_enqueued
        self.reconciler = reconciler

    def _authorized(self, request: web.Request) -> bool:
        token = self.ctx.settings.admin_token
        header = request.headers.get("Authorization", "")
        if not token or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].encode(), token.encode())

    async def _guard(self, request: web.Request) -> web.Response | None:
        if not self.ctx.settings.admin_token:
            return _error(404, "the operator API is off (BRIDGE_ADMIN_TOKEN is not set)")
        if not self._authorized(request):
            return _error(401, "missing or wrong bearer token")
        return None

    async def _json(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json(loads=json.loads)
        except ValueError:
            return _error(400, "the body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        return body

    async def put_workspace(self, request: web.Request) -> web.Response:
        if (denied := await self._guard(request)) is not None:
            return denied
        body = await self._json(request)
        if isinstance(body, web.Response):
            return body
        ws_id = request.match_info["workspace"]
        for key in ("base_url", "api_key", "webhook_secret"):
            if not isinstance(body.get(key), str) or not body[key].strip():
                return _error(400, f"{key} is required (a non-empty string)")
        base_url = body["base_url"].rstrip("/")
        if urlparse(base_url).scheme not in ("http", "https") or not urlparse(base_url).netloc:
            return _error(400, "base_url must be an http(s) URL")
        try:
            info = await NeetoChatClient(self.ctx.http, base_url, body["api_key"], self.ctx.metrics).get_workspace()
        except RemoteError as exc:
            reason = "neetoChat refused the API key" if exc.status == 401 else f"could not verify the API key: {exc}"
            return _error(422, reason)
        if info.get("subdomain") and info["subdomain"] != ws_id:
            return _error(422, f"the API key belongs to workspace {info['subdomain']!r}, not {ws_id!r}")
        existing = await self.ctx.store.get_workspace(ws_id)
        ws = existing or Workspace(id=ws_id, base_url="", api_key_enc="", webhook_secret_enc="", created_at=time.time())
        ws.base_url = base_url
        ws.api_key_enc = self.ctx.box.encrypt(body["api_key"])
        ws.webhook_secret_enc = self.ctx.box.encrypt(body["webhook_secret"])
        ws.name = info.get("name") or ws_id
        ws.app_url = info.get("app_url") or ""
        ws.updated_at = time.time()
        await self.ctx.store.put_workspace(ws)
        if existing:  # reconnected (a new key, say): what the old key could not deliver goes now, in order
            replayed = await self.ctx.store.requeue_dead_jobs(ws_id, error_prefix=KEY_REFUSED)
            if replayed:
                log.info("workspace %s reconnected: replaying %d deliveries", ws_id, replayed)
                self.on_enqueued()
            self.reconciler.poke(ws_id)
        return web.json_response(await self.status(ws), status=200 if existing else 201)

    async def _guarded_workspace(self, request: web.Request) -> Workspace | web.Response:
        """The workspace the path names, or the answer refusing the call (401/404)."""
        if (denied := await self._guard(request)) is not None:
            return denied
        ws = await self.ctx.store.get_workspace(request.match_info["workspace"])
        return ws if ws is not None else _error(404, "unknown workspace")

    async def _guarded_body(self, request: web.Request) -> tuple[Workspace, dict[str, Any]] | web.Response:
        """``_guarded_workspace`` and the JSON object the call sends, or the answer refusing it."""
        ws = await self._guarded_workspace(request)
        body = ws if isinstance(ws, web.Response) else await self._json(request)
        return body if isinstance(body, web.Response) else (ws, body)

    async def get_workspace(self, request: web.Request) -> web.Response:
        ws = await self._guarded_workspace(request)
        if isinstance(ws, web.Response):
            return ws
        return web.json_response(await self.status(ws))

    async def put_routes(self, request: web.Request) -> web.Response:
        """``PUT .../routes`` ``{"routes": [...]}``: replace the routing rules (an empty list
        removes them). Each rule is checked against Teams first; a bad one is refused with
        the reason (400 malformed, 422 unusable) and nothing changes."""
        guarded = await self._guarded_body(request)
        if isinstance(guarded, web.Response):
            return guarded
        ws, body = guarded
        if not ws.team_id:
            return _error(409, "link the workspace to a team first")
        try:
            ws.routes = await checked_routes(self.ctx, ws, body.get("routes"))
        except RoutingError as exc:
            return _error(exc.status, str(exc))
        ws.updated_at = time.time()
        await self.ctx.store.put_workspace(ws)
        return web.json_response(await self.status(ws))

    async def health(self, request: web.Request) -> web.Response:
        """``GET .../health``: every check of the setup, each problem with its fix."""
        ws = await self._guarded_workspace(request)
        if isinstance(ws, web.Response):
            return ws
        return web.json_response(as_json(await check_health(self.ctx, ws)))

    async def list_identities(self, request: web.Request) -> web.Response:
        """``GET .../identities``: the identity overrides (who a Teams user writes as)."""
        ws = await self._guarded_workspace(request)
        if isinstance(ws, web.Response):
            return ws
        overrides = await self.ctx.store.identity_overrides(ws.id)
        return web.json_response({"identities": [override_json(o) for o in overrides]})

    async def put_identity(self, request: web.Request) -> web.Response:
        """``PUT .../identities`` ``{"aad_object_id", "agent_id" | null}``: set one Teams
        user's override (null: always as the authorizing user); the agent must be active in
        neetoChat (422 otherwise)."""
        found = await self._guarded_body(request)
        if isinstance(found, web.Response):
            return found
        ws, body = found
        try:
            saved = await set_identity(self.ctx, ws, body)
        except IdentityError as exc:
            return _error(exc.status, str(exc))
        return web.json_response(override_json(saved))

    async def delete_identity(self, request: web.Request) -> web.Response:
        """``DELETE .../identities/{aad_object_id}``: back to the email match (204)."""
        ws = await self._guarded_workspace(request)
        if isinstance(ws, web.Response):
            return ws
        try:
            aad = person_id(request.match_info["aad_object_id"])
        except IdentityError as exc:
            return _error(exc.status, str(exc))
        if not await self.ctx.store.delete_identity_override(ws.id, aad):
            return _error(404, "no identity override for that Teams user")
        return web.Response(status=204)

    async def reconcile(self, request: web.Request) -> web.Response:
        """``POST .../reconcile``: compare the workspace's open conversations with both sides
        now (the next ``RECONCILE_BATCH`` of them); 202 with how many were queued."""
        ws = await self._guarded_workspace(request)
        if isinstance(ws, web.Response):
            return ws
        return web.json_response({"queued": await self.reconciler.run(ws.id)}, status=202)

    async def delete_workspace(self, request: web.Request) -> web.Response:
        if (denied := await self._guard(request)) is not None:
            return denied
        if not await self.ctx.store.delete_workspace(request.match_info["workspace"]):
            return _error(404, "unknown workspace")
        return web.Response(status=204)

    async def put_teams(self, request: web.Request) -> web.Response:
        if (denied := await self._guard(request)) is not None:
            return denied
        body = await self._json(request)
        if isinstance(body, web.Response):
            return body
        ws = await self.ctx.store.get_workspace(request.match_info["workspace"])
        if ws is None:
            return _error(404, "unknown workspace")
        try:
            ws = await link_team(
                self.ctx,
                ws,
                team_id=body.get("team_id"),
                tenant_id=body.get("tenant_id"),
                notification_channel_id=body.get("notification_channel_id"),
                update_type=body.get("update_type", "new_conversations"),
                transcript_on_close=body.get("transcript_on_close"),
                user=body.get("authorizing_user"),
                on_enqueued=self.on_enqueued,
            )
        except LinkError as exc:
            return _error(exc.status, str(exc))
        return web.json_response(await self.status(ws))

    async def list_dead_letters(self, request: web.Request) -> web.Response:
        """What could not be delivered, newest first, with the reason (never message bodies)."""
        ws = await self._guarded_workspace(request)
        if isinstance(ws, web.Response):
            return ws
        jobs = await self.ctx.store.list_dead_jobs(ws.id, limit=500)
        return web.json_response(
            {
                "dead_letters": [
                    {
                        "id": job.seq,
                        "kind": job.kind,
                        "conversation_id": job.partition.split(":", 1)[1],
                        "reason": job.last_error,
                        "attempts": job.attempts,
                        "created_at": job.created_at,
                        "failed_at": job.finished_at,
                    }
                    for job in jobs
                ]
            }
        )

    async def replay_dead_letters(self, request: web.Request) -> web.Response:
        """Deliver dead letters again once the cause is fixed: ``{"ids": [...]}`` or all."""
        if (denied := await self._guard(request)) is not None:
            return denied
        body = await self._json(request) if request.can_read_body else {}
        if isinstance(body, web.Response):
            return body
        ws = await self.ctx.store.get_workspace(request.match_info["workspace"])
        if ws is None:
            return _error(404, "unknown workspace")
        ids = body.get("ids")
        if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, int) for i in ids)):
            return _error(400, "ids must be a list of dead-letter ids")
        replayed = await self.ctx.store.requeue_dead_jobs(ws.id, ids)
        if replayed:
            self.on_enqueued()
        return web.json_response({"replayed": replayed})

    async def status(self, ws: Workspace) -> dict[str, Any]:
        """The workspace as an operator sees it; never a secret."""
        installation = await self.ctx.store.get_installation(ws.team_id) if ws.team_id else None
        counts = await self.ctx.store.job_counts(ws.id)
        user = ws.authorizing_user or {}
        newest_dead = await self.ctx.store.list_dead_jobs(ws.id, limit=1)
        held = (newest_dead[0].last_error or "") if newest_dead else ""
        return {
            "workspace": ws.id,
            "name": ws.name,
            "base_url": ws.base_url,
            "connected": True,
            "problem": _held_problem(ws, held),
            "teams": {
                "linked": bool(ws.team_id),
                "team_id": ws.team_id,
                "aad_group_id": ws.aad_group_id or (installation.aad_group_id if installation else None),
                "tenant_id": ws.tenant_id,
                "bot_installed": bool(installation and installation.installed),
                "notification_channel_id": ws.notification_channel_id
                or (installation.general_channel_id if installation else None),
                "update_type": ws.update_type,
                "transcript_on_close": ws.transcript_on_close,
                "routes": ws.routes or [],
                "authorizing_user": {"name": user.get("name"), "email": user.get("email")} if user else None,
                "problem": _link_problem(ws, installation),
            },
            "open_links": await self.ctx.store.count_portals(ws.id, "open"),
            "deliveries": {
                "queued": counts.pending,
                "failed": counts.dead,
                # found missing on one side by reconcile and delivered late, since this instance started
                "healed": dict(self.ctx.observed.healed.get(ws.id, {"to_teams": 0, "to_neetochat": 0})),
                "oldest_pending_age_seconds": round(time.time() - counts.oldest_pending_at, 1)
                if counts.oldest_pending_at
                else None,
            },
        }
