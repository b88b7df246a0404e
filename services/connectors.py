"""Bot Connector clients built once and reused, instead of once per turn.

botbuilder's ``CloudAdapter`` asks its ``BotFrameworkAuthentication`` for a new
``ConnectorClient`` and a new ``UserTokenClient`` on every incoming activity and every
proactive call. Each builds an msrest ``Configuration`` whose retry policy costs about 3 ms
of CPU to construct (a quadratic list comprehension), plus a fresh ``requests.Session`` with
no open connection: measured, that was 60 % of the event loop's time on ``/api/messages``
and half of the CPU per delivered event (docs/performance.md). This wrapper keeps botbuilder
doing the protocol (authentication, the clients themselves) and only memoizes what it
builds: one connector client per (bot app id, service URL, audience) and one user-token
client per app id. Both are stateless apart from credentials (already cached by
``CachedCredentialFactory``) and connection pools, so sharing them between turns is safe.

It also keeps what authenticating a request concluded. Teams' Bot Connector sends the
same JWT with every activity until it expires (about an hour), and botbuilder decodes it
five times per request (skill? emulator? issuer? header, then the verified decode), each
time through PyJWT's per-character base64url check: measured, 56 % of the event loop on
``/api/messages`` in authenticated mode. A token that passed is valid for the same channel
and service URL (the claim botbuilder compares) until it expires, so that answer is reused
for ``VERIFIED_TTL`` seconds at most and never past the token's ``exp``; a key withdrawn
from Microsoft's published set stops working within that time. Failures are never kept:
every bad token is checked, and refused, every time.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import aiohttp
from botbuilder.integration.aiohttp import ConfigurationBotFrameworkAuthentication
from botframework.connector.aio import ConnectorClient
from botframework.connector.auth import (
    AuthenticateRequestResult,
    AuthenticationConstants,
    BotFrameworkAuthentication,
    ClaimsIdentity,
    ConnectorFactory,
    UserTokenClient,
)
from botframework.connector.skills import BotFrameworkClient

from services.connector_http import on_aiohttp, without_client_validation

# Service URLs come from verified tokens (authenticated mode) and are a handful per cloud
# region; the cap only keeps a local-mode bridge fed arbitrary URLs from growing forever.
MAX_CLIENTS = 256

ClientKey = tuple[str | None, str, str | None]
VERIFIED_TTL = 300.0  # seconds a verified token's result is reused at most
MAX_VERIFIED = 1024  # tokens kept: one per connector region and app in practice


class _ReusingConnectorFactory(ConnectorFactory):
    """botbuilder's factory for one app id, with the clients it makes kept in ``clients``."""

    def __init__(
        self,
        inner: ConnectorFactory,
        app_id: str | None,
        clients: dict[ClientKey, ConnectorClient],
        session: aiohttp.ClientSession,
    ):
        self._inner = inner
        self._app_id = app_id
        self._clients = clients
        self._session = session

    async def create(self, service_url: str, audience: str | None = None) -> ConnectorClient:
        key = (self._app_id, service_url, audience)
        client = self._clients.get(key)
        if client is None:
            client = await self._inner.create(service_url, audience)
            client = without_client_validation(on_aiohttp(client, self._session))
            if len(self._clients) >= MAX_CLIENTS:
                self._clients.pop(next(iter(self._clients)))
            client = self._clients.setdefault(key, client)
        return client


def _app_id(claims_identity: ClaimsIdentity) -> str | None:
    """The bot's app id in the claims, read the way botbuilder reads it (audience first)."""
    return claims_identity.get_claim_value(AuthenticationConstants.AUDIENCE_CLAIM) or claims_identity.get_claim_value(
        AuthenticationConstants.APP_ID_CLAIM
    )


class ReusingBotFrameworkAuthentication(BotFrameworkAuthentication):
    """``ConfigurationBotFrameworkAuthentication`` whose connector and user-token clients are
    reused across turns (see the module docstring)."""

    def __init__(
        self,
        inner: ConfigurationBotFrameworkAuthentication,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._inner = inner
        self._session = session  # the connector clients send through it (services/connector_http.py)
        self._clock = clock
        self._clients: dict[ClientKey, ConnectorClient] = {}
        self._token_clients: dict[str | None, UserTokenClient] = {}
        # (sha256 of the Authorization header, channel, service URL) → (result, reusable until)
        self._verified: dict[tuple[bytes, str | None, str | None], tuple[AuthenticateRequestResult, float]] = {}

    async def authenticate_request(self, activity, auth_header: str) -> AuthenticateRequestResult:
        key = None
        if auth_header:  # no header: the anonymous local mode, nothing to verify
            key = (hashlib.sha256(auth_header.encode()).digest(), activity.channel_id, activity.service_url)
            kept = self._verified.get(key)
            if kept is not None:
                if self._clock() < kept[1]:
                    return _copy(kept[0])
                del self._verified[key]
        result = await self._inner.authenticate_request(activity, auth_header)
        result.connector_factory = self._reusing(result.connector_factory, result.claims_identity)
        if key is not None:
            self._keep(key, result)
        return result

    def _keep(self, key: tuple[bytes, str | None, str | None], result: AuthenticateRequestResult) -> None:
        expires = (result.claims_identity.claims or {}).get("exp")
        if not isinstance(expires, int | float):
            return  # botbuilder accepted a token without an expiry: check it every time
        until = min(self._clock() + VERIFIED_TTL, float(expires))
        if until <= self._clock():
            return
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.pop(next(iter(self._verified)))
        self._verified[key] = (result, until)

    async def authenticate_streaming_request(
        self, auth_header: str, channel_id_header: str
    ) -> AuthenticateRequestResult:
        result = await self._inner.authenticate_streaming_request(auth_header, channel_id_header)
        result.connector_factory = self._reusing(result.connector_factory, result.claims_identity)
        return result

    def create_connector_factory(self, claims_identity: ClaimsIdentity) -> ConnectorFactory:
        return self._reusing(self._inner.create_connector_factory(claims_identity), claims_identity)

    async def create_user_token_client(self, claims_identity: ClaimsIdentity) -> UserTokenClient:
        key = _app_id(claims_identity)
        client = self._token_clients.get(key)
        if client is None:
            client = await self._inner.create_user_token_client(claims_identity)
            client = self._token_clients.setdefault(key, client)
        return client

    def create_bot_framework_client(self) -> BotFrameworkClient:
        return self._inner.create_bot_framework_client()

    def get_originating_audience(self) -> str:
        return self._inner.get_originating_audience()

    async def authenticate_channel_request(self, auth_header: str) -> ClaimsIdentity:
        return await self._inner.authenticate_channel_request(auth_header)

    async def close(self) -> None:
        """Close the kept connector clients' HTTP sessions (on shutdown)."""
        clients = list(self._clients.values())
        self._clients.clear()
        self._token_clients.clear()
        for client in clients:
            await client.__aexit__(None, None, None)  # msrest clients close only as context managers

    def _reusing(self, factory: ConnectorFactory | None, claims_identity: ClaimsIdentity) -> ConnectorFactory | None:
        if factory is None:
            return None
        return _ReusingConnectorFactory(factory, _app_id(claims_identity), self._clients, self._session)


def _copy(result: AuthenticateRequestResult) -> AuthenticateRequestResult:
    """A new result with the kept one's parts (the claims are only read downstream)."""
    copy = AuthenticateRequestResult()
    copy.claims_identity = result.claims_identity
    copy.audience = result.audience
    copy.caller_id = result.caller_id
    copy.connector_factory = result.connector_factory
    return copy
