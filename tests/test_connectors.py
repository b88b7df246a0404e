"""Connector clients are built once and reused: botbuilder would build two clients (about
6 ms of CPU) for every activity and every proactive call (docs/performance.md)."""

from __future__ import annotations

from botbuilder.integration.aiohttp import ConfigurationBotFrameworkAuthentication
from botbuilder.schema import Activity
from botframework.connector.auth import AuthenticationConstants, ClaimsIdentity

from services.connectors import ReusingBotFrameworkAuthentication


class _Config:
    APP_ID = ""
    APP_PASSWORD = ""


def _claims(app_id: str) -> ClaimsIdentity:
    return ClaimsIdentity({AuthenticationConstants.AUDIENCE_CLAIM: app_id}, True)


async def test_connector_clients_are_reused_per_service_url_and_app():
    auth = ReusingBotFrameworkAuthentication(ConfigurationBotFrameworkAuthentication(_Config()))
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


async def test_an_incoming_activity_gets_the_kept_client():
    auth = ReusingBotFrameworkAuthentication(ConfigurationBotFrameworkAuthentication(_Config()))
    try:
        activity = Activity(type="message", service_url="https://smba.example/amer/", channel_id="msteams")
        turn1 = await auth.authenticate_request(activity, "")
        turn2 = await auth.authenticate_request(activity, "")
        client1 = await turn1.connector_factory.create(activity.service_url, turn1.audience)
        client2 = await turn2.connector_factory.create(activity.service_url, turn2.audience)
        assert client1 is client2
    finally:
        await auth.close()
