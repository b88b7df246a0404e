"""Client for neetoChat's external API (contract: neetochat-external-api.yaml).

One instance per workspace, sharing the app's aiohttp session. It makes exactly one
attempt per call: retries belong to the durable delivery loop, which survives restarts
and honours ``Retry-After`` without holding a request open.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from cachetools import TTLCache

from services.errors import RemoteError, parse_retry_after
from services.metrics import Metrics

API_PREFIX = "/api/external/v1"
TIMEOUT = aiohttp.ClientTimeout(total=30)
UPLOAD_TIMEOUT = aiohttp.ClientTimeout(total=300)
MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # the contract's limit for POST /attachments
AGENT_TTL = 60.0


class NeetoChatClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, api_key: str, metrics: Metrics) -> None:
        self._session = session
        self._metrics = metrics
        self._root = base_url.rstrip("/") + API_PREFIX
        self._headers = {"X-Api-Key": api_key, "Accept": "application/json"}
        self._agents: TTLCache[str, dict[str, Any] | None] = TTLCache(
            maxsize=10_000, ttl=AGENT_TTL, timer=time.monotonic
        )
        self._roster: tuple[float, dict[str, dict[str, Any]]] | None = None  # (when, agent id → agent)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Any = None,
        params: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        client_timeout: aiohttp.ClientTimeout = TIMEOUT,
    ) -> Any:
        headers = dict(self._headers)
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        async with self._metrics.call("neetoChat", _operation(method, path)):
            return await self._request(method, path, headers, json, data, params, client_timeout)

    async def _request(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        json: Any,
        data: Any,
        params: dict[str, Any] | None,
        client_timeout: aiohttp.ClientTimeout,
    ) -> Any:
        try:
            async with self._session.request(
                method,
                self._root + path,
                json=json,
                data=data,
                params=params,
                headers=headers,
                timeout=client_timeout,
            ) as resp:
                if resp.status == 204:
                    return None
                body = await _json_or_none(resp)
                if resp.status >= 400:
                    message = (body or {}).get("error") if isinstance(body, dict) else None
                    raise RemoteError(
                        "neetoChat",
                        message or resp.reason or "request failed",
                        status=resp.status,
                        retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                    )
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RemoteError("neetoChat", f"{type(exc).__name__}: {exc}") from exc

    async def get_workspace(self) -> dict[str, Any]:
        return await self._call("GET", "/workspace")

    async def find_agent_by_email(self, email: str) -> dict[str, Any] | None:
        """The active agent with this email (neetoChat matches case-insensitively).

        Every Teams message asks this; the answer is kept for ``AGENT_TTL`` seconds, so an
        agent added or deactivated in neetoChat is seen within that time."""
        key = email.lower()
        if key in self._agents:
            return self._agents[key]
        body = await self._call("GET", "/agents", params={"email": email})
        agents = [a for a in body.get("agents", []) if a.get("active", True)]
        self._agents[key] = agent = agents[0] if agents else None
        return agent

    async def list_agents(self) -> list[dict[str, Any]]:
        """Every agent of the workspace, active or not, as neetoChat has them now (what the
        settings page offers, and what an identity override is checked against)."""
        body = await self._call("GET", "/agents")
        return list(body.get("agents", []))

    async def active_agent(self, agent_id: str) -> dict[str, Any] | None:
        """The active agent with this id, or None (unknown or deactivated). Every Teams
        message of someone with an identity override asks this; the listing it reads is kept
        for ``AGENT_TTL`` seconds, like the email match."""
        if self._roster is None or time.monotonic() - self._roster[0] > AGENT_TTL:
            self._roster = (time.monotonic(), {a["id"]: a for a in await self.list_agents()})
        agent = self._roster[1].get(agent_id)
        return agent if agent and agent.get("active", True) else None

    async def get_conversation(self, conversation_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/conversations/{conversation_id}")

    async def iter_messages(self, conversation_id: str, page_size: int = 100) -> AsyncIterator[dict[str, Any]]:
        """Every message oldest first, following ``next_cursor``."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if cursor:
                params["after"] = cursor
            page = await self._call("GET", f"/conversations/{conversation_id}/messages", params=params)
            for message in page.get("messages", []):
                yield message
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def create_message(
        self,
        conversation_id: str,
        *,
        agent_id: str,
        body: str,
        external_id: str,
        attachment_ids: list[str] | None = None,
        internal: bool = False,
    ) -> dict[str, Any]:
        """Post as ``agent_id`` (an internal note when ``internal``: the visitor never sees
        it); the Teams activity id is both ``external_id`` (so the webhook echo is
        recognised) and the ``Idempotency-Key`` (so a retry after a lost answer creates
        nothing new)."""
        payload: dict[str, Any] = {
            "agent_id": agent_id,
            "body": body,
            "source": "teams",
            "external_id": external_id,
            "internal": internal,
        }
        if attachment_ids:
            payload["attachment_ids"] = attachment_ids
        return await self._call(
            "POST",
            f"/conversations/{conversation_id}/messages",
            json=payload,
            idempotency_key=f"teams-msg-{external_id}",
        )

    async def update_message(self, conversation_id: str, message_id: str, body: str) -> dict[str, Any]:
        """Edit a message the bridge created (403 for any other)."""
        return await self._call("PATCH", f"/conversations/{conversation_id}/messages/{message_id}", json={"body": body})

    async def delete_message(self, conversation_id: str, message_id: str) -> None:
        """Delete a message the bridge created (403 for any other)."""
        await self._call("DELETE", f"/conversations/{conversation_id}/messages/{message_id}")

    async def upload_attachment(
        self, *, filename: str, content_type: str, content: bytes, idempotency_key: str
    ) -> dict[str, Any]:
        """``POST /attachments`` (multipart ``file``); the key makes a retried upload return
        the first answer instead of storing the file twice. 413 too large, 415 type refused."""
        form = aiohttp.FormData(quote_fields=False)  # the file name as is, not percent-encoded
        form.add_field("file", content, filename=filename, content_type=content_type)
        return await self._call(
            "POST", "/attachments", data=form, idempotency_key=idempotency_key, client_timeout=UPLOAD_TIMEOUT
        )

    async def assign_to_agent(self, conversation_id: str, agent_id: str, actor_agent_id: str) -> dict[str, Any]:
        return await self._call(
            "PUT",
            f"/conversations/{conversation_id}/assignee",
            json={"agent_id": agent_id, "actor_agent_id": actor_agent_id},
        )

    async def assign_to_team(self, conversation_id: str, team_id: str, actor_agent_id: str) -> dict[str, Any]:
        return await self._call(
            "PUT",
            f"/conversations/{conversation_id}/assignee",
            json={"team_id": team_id, "actor_agent_id": actor_agent_id},
        )

    async def unassign(self, conversation_id: str, actor_agent_id: str) -> dict[str, Any]:
        return await self._call(
            "DELETE", f"/conversations/{conversation_id}/assignee", params={"actor_agent_id": actor_agent_id}
        )

    async def close_conversation(self, conversation_id: str, actor_agent_id: str) -> dict[str, Any]:
        return await self._call(
            "POST", f"/conversations/{conversation_id}/close", json={"actor_agent_id": actor_agent_id}
        )


async def _json_or_none(resp: aiohttp.ClientResponse) -> Any:
    try:
        return await resp.json(content_type=None)
    except ValueError:
        return None


def _operation(method: str, path: str) -> str:
    """``GET /conversations/{id}/messages`` → ``GET conversations/messages``: a metric label
    without ids (ids would make one time series per conversation)."""
    segments = path.strip("/").split("/")
    return f"{method} {'/'.join(segments[::2])}"
