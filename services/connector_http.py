"""The Bot Connector's HTTP on the event loop (aiohttp) instead of in threads (requests).

botbuilder's ``ConnectorClient`` is an msrest client, and msrest's async pipeline sends each
request with ``requests`` in the default thread pool: every Teams call was a thread hop, and
requests' pure-Python HTTP (``http.client``, ``email.parser``) ran in up to six threads that
competed with the event loop for the GIL. Measured in a webhook flood with about twenty
Teams calls a second: those threads took 6 % of the core, a third of what background
delivery cost the acknowledgements (docs/performance.md).

msrest's pipeline takes any ``AsyncHTTPSender``; this one sends through the bridge's aiohttp
session. botbuilder still builds every request, signs it (its credentials' own
``signed_session`` decides whether, and with which token) and reads every answer; transport
failures become msrest's ``ClientRequestError``, as with requests. There are no transport
retries: a failed call fails the job's attempt, and the delivery engine retries it with its
backoff and honours ``Retry-After`` (services/jobs.py), which is where retries are counted.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from botframework.connector.aio import ConnectorClient
from msrest.exceptions import ClientRequestError
from msrest.pipeline import Request, Response, SansIOHTTPPolicy
from msrest.pipeline.async_abc import AsyncHTTPSender, AsyncPipeline
from msrest.pipeline.universal import RawDeserializer
from msrest.universal_http.aiohttp import AioHttpClientResponse


class _Headers:
    """What ``AppCredentials.signed_session`` touches of the ``requests.Session`` it signs."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}


def bot_authorization(credentials: Any) -> str | None:
    """The Authorization header botbuilder's credentials sign a Bot Connector call with
    (``Bearer <bot token>``), or None in local mode: their own ``signed_session`` decides."""
    return credentials.signed_session(_Headers()).headers.get("Authorization")


class BotCredentialsPolicy(SansIOHTTPPolicy):
    """Adds ``bot_authorization`` to every call. Called on the event loop, as msrest's own
    credentials policy did: the token comes from MSAL's cache (``services/bot_auth.py``
    keeps one credentials object per app)."""

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials

    def on_request(self, request: Request, **kwargs: Any) -> None:
        authorization = bot_authorization(self._credentials)
        if authorization:
            request.http_request.headers["Authorization"] = authorization


class _Answer(AioHttpClientResponse):
    def body(self) -> bytes:
        # msrest's aiohttp response refuses an empty body (``not b""``); a DELETE has one.
        if self._body is None:
            raise ValueError("the body is not loaded")
        return self._body


class AioHttpSender(AsyncHTTPSender):
    """Sends msrest requests through an aiohttp session it does not own."""

    def __init__(self, session: aiohttp.ClientSession, timeout: float) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def __aenter__(self) -> AioHttpSender:
        return self

    async def __aexit__(self, *exc_details: Any) -> None:
        return None  # the session is the bridge's, closed with it

    def build_context(self) -> None:
        return None

    async def send(self, request: Request, **config: Any) -> Response:
        http = request.http_request
        if http.files:
            raise ClientRequestError("multipart uploads are not sent through the bridge's connector")
        try:
            answer = await self._session.request(
                http.method, http.url, headers=http.headers, data=http.data, timeout=self._timeout
            )
            response = _Answer(http, answer)
            await response.load_body()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ClientRequestError(f"Error occurred in request: {type(exc).__name__}: {exc}") from exc
        return Response(request, response)


def on_aiohttp(client: ConnectorClient, session: aiohttp.ClientSession) -> ConnectorClient:
    """``client`` with msrest's default pipeline (the same policies) sending through ``session``."""
    config = client.config
    policies: list[Any] = [config.user_agent_policy, RawDeserializer(), config.http_logger_policy]
    if config.credentials is not None:
        policies.insert(1, BotCredentialsPolicy(config.credentials))
    config.pipeline = AsyncPipeline(policies, AioHttpSender(session, config.connection.timeout))
    return client


def without_client_validation(client: ConnectorClient) -> ConnectorClient:
    """``client`` without msrest's client-side validation of what it sends, as Azure's
    generated clients are built (``self._serialize.client_side_validation = False``).

    msrest validates a body against its models' ``_validation`` rules before serializing it;
    botbuilder's schema models declare none (a test keeps that true), so the walk over every
    post's parameters, activity and attachments checked nothing and cost a third of the
    post's serialization (231 → 155 µs for a channel post, measured). The Bot Connector
    still refuses a bad request, and that refusal is what the delivery engine acts on."""
    client._serialize.client_side_validation = False  # the generated clients set it the same way
    return client
