"""Connector clients are built once and reused: botbuilder would build two clients (about
6 ms of CPU) for every activity and every proactive call (docs/performance.md). A token
botbuilder verified is not verified again for the same channel and service URL until it
expires; a refused one is checked every time."""

from __future__ import annotations

import aiohttp
import botbuilder.schema
import botbuilder.schema.teams
import pytest
from aiohttp import web
from botbuilder.integration.aiohttp import ConfigurationBotFrameworkAuthentication
from botbuilder.schema import Activity, ConversationAccount
from botframework.connector.auth import AuthenticateRequestResult, AuthenticationConstants, ClaimsIdentity
from msrest.exceptions import ClientRequestError
from msrest.serialization import Model

from services.connectors import VERIFIED_TTL, ReusingBotFrameworkAuthentication


class _Config:
    APP_ID = ""
    APP_PASSWORD = ""


def _claims(app_id: str) -> ClaimsIdentity:
    return ClaimsIdentity({AuthenticationConstants.AUDIENCE_CLAIM: app_id}, True)


async def test_connector_clients_are_reused_per_service_url_and_app():
    session = aiohttp.ClientSession()
    auth = ReusingBotFrameworkAuthentication(ConfigurationBotFrameworkAuthentication(_Config()), session)
    try:
        first = await auth.create_connector_factory(_claims("bot")).create("https://smba.example/amer/")
        again = await auth.create_connector_factory(_claims("bot")).create("https://smba.example/amer/")
        other_url = await auth.create_connector_factory(_claims("bot")).create("https://smba.example/emea/")
        other_bot = await auth.create_connector_factory(_claims("other")).create("https://smba.example/amer/")
        assert first is again
        assert first.config.base_url == "https://smba.example/amer/"
        assert other_url is not first and other_url.config.base_url == "https://smba.example/emea/"
        assert other_bot is not first

        tokens = await auth.create_user_token_client(_claims("bot"))
        assert await auth.create_user_token_client(_claims("bot")) is tokens
    finally:
        await auth.close()
        await session.close()


async def test_kept_clients_skip_msrests_validation_which_botbuilders_models_give_nothing_to_check():
    """The kept clients do not validate bodies before sending (services/connector_http.py):
    that is only safe while botbuilder's schema declares no validation rules, so this fails
    on a botbuilder that starts declaring some."""
    with_rules = [
        name
        for module in (botbuilder.schema, botbuilder.schema.teams)
        for name, model in vars(module).items()
        if isinstance(model, type) and issubclass(model, Model) and model._validation
    ]
    assert with_rules == []
    session = aiohttp.ClientSession()
    auth = ReusingBotFrameworkAuthentication(ConfigurationBotFrameworkAuthentication(_Config()), session)
    try:
        client = await auth.create_connector_factory(_claims("bot")).create("https://smba.example/amer/")
        assert client.conversations._serialize.client_side_validation is False
    finally:
        await auth.close()
        await session.close()


async def test_an_incoming_activity_gets_the_kept_client():
    session = aiohttp.ClientSession()
    auth = ReusingBotFrameworkAuthentication(ConfigurationBotFrameworkAuthentication(_Config()), session)
    try:
        activity = Activity(type="message", service_url="https://smba.example/amer/", channel_id="msteams")
        turn1 = await auth.authenticate_request(activity, "")
        turn2 = await auth.authenticate_request(activity, "")
        client1 = await turn1.connector_factory.create(activity.service_url, turn1.audience)
        client2 = await turn2.connector_factory.create(activity.service_url, turn2.audience)
        assert client1 is client2
    finally:
        await auth.close()
        await session.close()


class _CountingAuth:
    """Stands in for botbuilder's authentication: counts the verifications it is asked for."""

    def __init__(self, expires: float) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.expires = expires

    async def authenticate_request(self, activity, auth_header: str) -> AuthenticateRequestResult:
        self.calls.append((auth_header, activity.service_url))
        if auth_header == "Bearer forged":
            raise PermissionError("signature verification failed")
        result = AuthenticateRequestResult()
        result.claims_identity = ClaimsIdentity({"aud": "bot", "exp": self.expires}, True)
        result.connector_factory = None
        return result


async def test_a_verified_token_is_reused_until_it_expires_and_a_refused_one_is_never():
    now = [1_000_000.0]
    inner = _CountingAuth(expires=now[0] + 120)
    auth = ReusingBotFrameworkAuthentication(inner, None, clock=lambda: now[0])  # type: ignore[arg-type] # no client made
    amer = Activity(type="message", channel_id="msteams", service_url="https://smba.example/amer/")
    emea = Activity(type="message", channel_id="msteams", service_url="https://smba.example/emea/")

    first = await auth.authenticate_request(amer, "Bearer good")
    again = await auth.authenticate_request(amer, "Bearer good")
    assert len(inner.calls) == 1, "the same token for the same service URL is verified once"
    assert again is not first and again.claims_identity.claims == first.claims_identity.claims

    await auth.authenticate_request(emea, "Bearer good")  # the serviceUrl claim is checked for each URL
    assert len(inner.calls) == 2

    for _ in range(2):
        with pytest.raises(PermissionError):
            await auth.authenticate_request(amer, "Bearer forged")
    assert inner.calls.count(("Bearer forged", amer.service_url)) == 2, "a refusal is never kept"

    now[0] += 121  # past the token's exp: botbuilder decides again (and would refuse it)
    await auth.authenticate_request(amer, "Bearer good")
    assert inner.calls.count(("Bearer good", amer.service_url)) == 2

    inner.expires = now[0] + 3600  # a long-lived token is re-verified after VERIFIED_TTL at most
    await auth.authenticate_request(amer, "Bearer long")
    now[0] += VERIFIED_TTL + 1
    await auth.authenticate_request(amer, "Bearer long")
    assert inner.calls.count(("Bearer long", amer.service_url)) == 2

    await auth.authenticate_request(amer, "")
    await auth.authenticate_request(amer, "")
    assert inner.calls.count(("", amer.service_url)) == 2, "no header: nothing to keep"


async def test_connector_calls_go_through_the_bridges_aiohttp_session(aiohttp_server):
    """botbuilder's requests to the Bot Connector go out on the event loop through the
    bridge's session (services/connector_http.py), not through requests in threads: the
    body and headers botbuilder built arrive, an empty answer is read, and a connector that
    cannot be reached fails as msrest's ClientRequestError, which the delivery engine retries."""
    seen: list[tuple[str, str, dict]] = []

    async def activities(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, await request.json() if request.can_read_body else {}))
        if request.method == "DELETE":
            return web.Response(status=200)  # no body at all
        return web.json_response({"id": "reply-1"}, status=201)

    app = web.Application()
    app.router.add_route("*", "/v3/conversations/{conversation}/activities/{activity}", activities)
    server = await aiohttp_server(app)
    url = str(server.make_url("/"))
    async with aiohttp.ClientSession() as session:
        auth = ReusingBotFrameworkAuthentication(ConfigurationBotFrameworkAuthentication(_Config()), session)
        try:
            client = await auth.create_connector_factory(_claims("")).create(url)
            reply = Activity(type="message", text="hello", conversation=ConversationAccount(id="19:c"))
            answer = await client.conversations.reply_to_activity("19:c", "a1", reply)
            await client.conversations.delete_activity("19:c", "a2")
            assert answer.id == "reply-1"
            assert [(method, path) for method, path, _ in seen] == [
                ("POST", "/v3/conversations/19:c/activities/a1"),
                ("DELETE", "/v3/conversations/19:c/activities/a2"),
            ]
            assert seen[0][2]["text"] == "hello"

            await server.close()
            with pytest.raises(ClientRequestError):
                await client.conversations.delete_activity("19:c", "a3")
        finally:
            await auth.close()
