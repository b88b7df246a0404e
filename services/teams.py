"""Posting into Teams channels as the bot, with botbuilder (its Bot Connector client, and its
CloudAdapter's proactive turns).

A new root post in a channel is the connector client's ``create_conversation`` with the
channel in ``channelData`` (what ``TeamsInfo.send_message_to_teams_channel`` does); updates,
replies and deletes continue the stored ``ConversationReference``. Each call makes one attempt and
raises ``RemoteError``: the durable job loop decides about retries.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import orjson
from botbuilder.core import BotAdapter, TurnContext
from botbuilder.core.teams import TeamsInfo
from botbuilder.integration.aiohttp import CloudAdapter
from botbuilder.schema import (
    Activity,
    ChannelAccount,
    ConversationAccount,
    ConversationParameters,
    ConversationReference,
)
from botbuilder.schema.teams import ChannelInfo, TeamsChannelData, TenantInfo
from botframework.connector import Channels
from botframework.connector.aio import ConnectorClient
from botframework.connector.auth import AuthenticationConstants
from cachetools import TTLCache
from msrest.exceptions import ClientRequestError, HttpOperationError

from services.connector_http import bot_authorization
from services.errors import RemoteError, parse_retry_after
from services.metrics import Metrics
from services.rate_limits import RateLimiter, Window


def split_thread(conversation_id: str) -> tuple[str, str | None]:
    """(channel id, thread root id or None) of a Teams channel conversation id: a post in a
    thread, and every channel message Teams sends a bot, is addressed as
    ``<channel>;messageid=<root>``."""
    channel_id, _, root = conversation_id.partition(";messageid=")
    return channel_id, root or None


def _remote_error(exc: Exception) -> RemoteError:
    if isinstance(exc, HttpOperationError):
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None) or getattr(response, "status", None)
        headers = getattr(response, "headers", None) or {}
        code = None
        error = getattr(exc, "error", None)
        inner = getattr(error, "error", None)
        if inner is not None:
            code = getattr(inner, "code", None)
        return RemoteError(
            "Teams",
            str(exc),
            status=status,
            code=code,
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )
    return RemoteError("Teams", f"{type(exc).__name__}: {exc}")


_CALL_ERRORS = (HttpOperationError, ClientRequestError, OSError, TimeoutError)
MEMBER_TTL = 600.0


@functools.lru_cache(maxsize=4096)
def _channel_reference_json(app_id: str, service_url: str, tenant_id: str | None, channel_id: str) -> bytes:
    """botbuilder's serialization of a reference into the channel, the thread left out: what
    ``TeamsPoster.thread_reference`` fills in. msrest's ``serialize`` of a reference was 15 %
    of a delivery's CPU, and every post (each a new thread) and card refresh asks for one."""
    return orjson.dumps(
        ConversationReference(
            bot=ChannelAccount(id=f"28:{app_id}" if app_id else None),
            conversation=ConversationAccount(is_group=True, conversation_type="channel", tenant_id=tenant_id),
            channel_id=Channels.ms_teams,
            service_url=service_url,
        ).serialize()
    )


class TeamsPoster:
    """Root posts, updates and deletes in Teams channels on behalf of the bot."""

    def __init__(
        self,
        adapter: CloudAdapter,
        app_id: str,
        limiter: RateLimiter,
        metrics: Metrics,
        *,
        thread_limits: tuple[Window, ...],
        tenant_limits: tuple[Window, ...],
    ) -> None:
        self._adapter = adapter
        self._metrics = metrics
        self._app_id = app_id
        self._limiter = limiter
        self._thread_limits = thread_limits
        self._tenant_limits = tenant_limits
        self._members: TTLCache[tuple[str, str], dict[str, Any]] = TTLCache(
            maxsize=10_000, ttl=MEMBER_TTL, timer=time.monotonic
        )

    def _slot(self, conversation_id: str, tenant_id: str | None, background: bool = False):
        """A token of the thread's and the tenant's limits for one connector call.

        The thread is keyed by the channel, also for posts in a reply chain: Teams does not
        say whether a reply chain is its own thread, and the stricter reading never 429s."""
        channel_id, _ = split_thread(conversation_id)
        return self._limiter.slot(
            "Teams",
            [
                (f"thread:{channel_id}", self._thread_limits),
                (f"tenant:{tenant_id or '-'}", self._tenant_limits),
            ],
            # background work (card refreshes) takes only room that stays spare: no waiting,
            # and room for two more calls left over for the messages that may come
            max_wait=0.0 if background else None,
            reserve=2 if background else 0,
        )

    async def post_to_channel(
        self, *, service_url: str, tenant_id: str | None, channel_id: str, activity: Activity
    ) -> str:
        """Post ``activity`` as a new root post in the channel; returns its activity id.

        botbuilder's Bot Connector client makes the call (``create_conversation`` with the
        channel in ``channelData``, as ``TeamsInfo.send_message_to_teams_channel`` does),
        without the proactive turn the adapter wraps around it: that turn's activity, context
        and middleware pipeline were a tenth of a post's CPU, and all the bridge takes from
        it is the new post's id."""
        params = ConversationParameters(
            is_group=True,
            bot=ChannelAccount(id=f"28:{self._app_id}" if self._app_id else None),
            channel_data=TeamsChannelData(channel=ChannelInfo(id=channel_id), tenant=TenantInfo(id=tenant_id)),
            tenant_id=tenant_id,
            activity=activity,
        )
        async with self._slot(channel_id, tenant_id), self._metrics.call("Teams", "create_conversation"):
            try:
                connector = await self._connector(service_url)
                created = await connector.conversations.create_conversation(params)
            except _CALL_ERRORS as exc:
                raise _remote_error(exc) from exc
        # Teams answers the post's id, and the thread it starts as "<channel>;messageid=<id>"
        activity_id = created.activity_id or split_thread(created.id or "")[1]
        if not activity_id:
            # posted, but which post is it? The rerun asks Graph (services/to_teams.py).
            raise RemoteError("Teams", f"create_conversation answered no activity id: {created.id!r}")
        return activity_id

    async def _connector(self, service_url: str) -> ConnectorClient:
        """The bot's connector client for ``service_url``, as the adapter gets it for a
        proactive call (kept per service URL: services/connectors.py)."""
        claims = self._adapter.create_claims_identity(self._app_id)
        claims.claims[AuthenticationConstants.SERVICE_URL_CLAIM] = service_url
        factory = self._adapter.bot_framework_authentication.create_connector_factory(claims)
        return await factory.create(service_url, None)

    def thread_reference(
        self, service_url: str, tenant_id: str | None, channel_id: str, activity_id: str
    ) -> dict[str, Any]:
        """The reference of the thread a root post starts (what replies and updates use):
        a new dict each time, from botbuilder's serialization kept per channel (its names:
        ``ConversationReference.activity_id`` is ``activityId``)."""
        reference = orjson.loads(_channel_reference_json(self._app_id, service_url, tenant_id, channel_id))
        reference["activityId"] = activity_id
        reference["conversation"]["id"] = f"{channel_id};messageid={activity_id}"
        return reference

    async def update(
        self, reference: dict[str, Any], activity_id: str, activity: Activity, *, background: bool = False
    ) -> None:
        async def run(turn_context: TurnContext) -> None:
            activity.id = activity_id
            await turn_context.update_activity(activity)

        await self._call(reference, run, "update_activity", background)

    async def delete(self, reference: dict[str, Any], activity_id: str) -> None:
        async def run(turn_context: TurnContext) -> None:
            await turn_context.delete_activity(activity_id)

        await self._call(reference, run, "delete_activity")

    async def reply(self, reference: dict[str, Any], activity: Activity) -> str:
        """Send into the conversation of ``reference`` (a thread when it names one)."""
        sent: dict[str, str] = {}

        async def run(turn_context: TurnContext) -> None:
            response = await turn_context.send_activity(activity)
            sent["id"] = response.id if response else ""

        await self._call(reference, run, "send_to_conversation")
        return sent["id"]

    async def member(self, reference: dict[str, Any], team_id: str, user_id: str) -> dict[str, Any]:
        """The team member (name, email, aadObjectId) as the team's roster has it, kept for
        ``MEMBER_TTL`` seconds: every message written in Teams asks it, and a member's email
        hardly ever changes."""
        key = (team_id, user_id)
        if key in self._members:
            return self._members[key]
        found: dict[str, Any] = {}

        async def run(turn_context: TurnContext) -> None:
            # A continuation activity carries no channelData; TeamsInfo reads the team from it.
            turn_context.activity.channel_data = {"team": {"id": team_id}}
            account = await TeamsInfo.get_member(turn_context, user_id)
            found.update(account.serialize())

        await self._call(reference, run, "get_member")
        self._members[key] = found
        return found

    async def connector_authorization(self, reference: dict[str, Any]) -> str | None:
        """The ``Authorization`` header the bot's connector client sends to the reference's
        service URL (``Bearer <bot token>``), or None in local mode: what downloading an inline
        image from ``{serviceUrl}v3/attachments/{id}/views/original`` needs."""
        found: dict[str, str | None] = {}

        async def run(turn_context: TurnContext) -> None:
            client = turn_context.turn_state.get(BotAdapter.BOT_CONNECTOR_CLIENT_KEY)
            credentials = getattr(getattr(client, "config", None), "credentials", None)
            if credentials is not None:
                found["authorization"] = await asyncio.to_thread(bot_authorization, credentials)

        await self._continue(reference, run)
        return found.get("authorization")

    async def _call(self, reference: dict[str, Any], logic, operation: str, background: bool = False) -> None:
        """``logic`` makes one connector call in the reference's conversation: shaped and timed."""
        conversation = reference.get("conversation") or {}
        async with (
            self._slot(conversation.get("id", ""), conversation.get("tenantId"), background),
            self._metrics.call("Teams", operation),
        ):
            await self._continue(reference, logic)

    async def _continue(self, reference: dict[str, Any], logic) -> None:
        ref = ConversationReference().deserialize(reference)
        try:
            await self._adapter.continue_conversation(ref, logic, self._app_id or None)
        except _CALL_ERRORS as exc:
            raise _remote_error(exc) from exc
