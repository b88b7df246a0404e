"""The Microsoft 365 sandbox, driven by the same client libraries the bridge uses.

Graph is exercised with msgraph-sdk (kiota/httpx), the connector with botbuilder's
``ConnectorClient`` (msrest), so these tests also pin down how those clients surface
errors, status codes, headers and their own retries against the sandbox.
"""

from __future__ import annotations

import asyncio
import re
import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from aiohttp import web
from botbuilder.schema import Activity, Attachment, ConversationParameters
from botframework.connector.aio import ConnectorClient
from botframework.connector.auth import MicrosoftAppCredentials
from botframework.connector.models import ErrorResponseException
from botframework.connector.teams import TeamsConnectorClient
from kiota_abstractions.authentication import AnonymousAuthenticationProvider
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_http.middleware.options import RetryHandlerOption
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.models.channel import Channel
from msgraph.generated.models.channel_membership_type import ChannelMembershipType
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.teams.item.channels.channels_request_builder import ChannelsRequestBuilder
from msgraph_core import GraphClientFactory
from msrest.exceptions import ClientRequestError

from sandbox import teams_fixtures as fx
from sandbox.microsoft import (
    ADAPTIVE_CARD,
    CHANNEL_CREATE_RATE_LIMITS,
    TENANT_RATE_LIMITS,
    THREAD_ALL_RATE_LIMITS,
    THREAD_RATE_LIMITS,
    MicrosoftSandbox,
)

ACTIVITY_ID = re.compile(r"^\d{13}$")
THREAD_ID = re.compile(r"^19:[0-9a-f]{32}@thread\.tacv2$")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1732812345.678

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def bot(aiohttp_server):
    """A stand-in bot endpoint that records what Teams sends it."""
    received: list[dict[str, Any]] = []

    async def messages(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=201 if received[-1]["type"] == "message" else 200)

    app = web.Application()
    app.router.add_post("/api/messages", messages)
    server = await aiohttp_server(app)
    return SimpleNamespace(received=received, url=str(server.make_url("/api/messages")))


@pytest.fixture
async def world(aiohttp_server, bot):
    """A tenant with one team (Alice, Bob), the bot installed; Carol is in no team."""
    clock = FakeClock()
    ms = MicrosoftSandbox(clock=clock)
    server = await aiohttp_server(ms.app())
    ms.set_base_url(str(server.make_url("")))
    ms.bot_endpoint = bot.url
    alice = ms.add_user(name="Alice Adams", email="alice@contoso.test")
    bob = ms.add_user(name="Bob Brown", email="bob@contoso.test")
    carol = ms.add_user(name="Carol Clark", email="carol@contoso.test")
    team = ms.add_team(name="Support", members=[alice, bob])
    await ms.install_bot(team["id"], by_user=alice)
    bot.received.clear()
    async with httpx.AsyncClient(base_url=ms.base_url) as http:
        yield SimpleNamespace(ms=ms, clock=clock, bot=bot, team=team, alice=alice, bob=bob, carol=carol, http=http)


@pytest.fixture
async def graph(world):
    """msgraph-sdk with kiota's default middleware but no retries (what the bridge builds)."""
    client, http = _graph_client(world.ms.graph_url, retries=False)
    yield client
    await http.aclose()


@pytest.fixture
async def connector(world):
    async with ConnectorClient(MicrosoftAppCredentials(None, None), base_url=world.ms.service_url) as client:
        yield client


def _graph_client(base_url: str, *, retries: bool) -> tuple[GraphServiceClient, httpx.AsyncClient]:
    options = None if retries else {RetryHandlerOption.get_key(): RetryHandlerOption(max_retries=0, should_retry=False)}
    http = GraphClientFactory.create_with_default_middleware(client=httpx.AsyncClient(), options=options)
    adapter = GraphRequestAdapter(AnonymousAuthenticationProvider(), client=http)
    adapter.base_url = base_url
    return GraphServiceClient(request_adapter=adapter), http


def _channel(name: str) -> Channel:
    return Channel(display_name=name, description=f"about {name}", membership_type=ChannelMembershipType.Standard)


def _channels(graph: GraphServiceClient, world):
    return graph.teams.by_team_id(world.team["aadGroupId"]).channels


def _card(size: int = 10) -> Attachment:
    return Attachment(
        content_type=ADAPTIVE_CARD,
        content={"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": "x" * size}]},
    )


def _message(text: str | None = None, attachments: list[Attachment] | None = None) -> Activity:
    return Activity(type="message", text=text, attachments=attachments)


async def _new_root(connector: ConnectorClient, channel_id: str, activity: Activity):
    params = ConversationParameters(
        is_group=True, channel_data={"channel": {"id": channel_id}}, activity=activity, tenant_id=None
    )
    return await connector.conversations.create_conversation(params)


# ----------------------------------------------------------------- Graph


async def test_graph_creates_lists_and_gets_channels(world, graph):
    created = await _channels(graph, world).post(_channel("1042 Vera Jones"))

    assert THREAD_ID.match(created.id)
    assert created.display_name == "1042 Vera Jones"
    assert created.membership_type == ChannelMembershipType.Standard
    assert created.web_url == (
        f"https://teams.microsoft.com/l/channel/{created.id.replace(':', '%3A').replace('@', '%40')}/"
        f"1042%20Vera%20Jones?groupId={world.team['aadGroupId']}&tenantId={world.ms.tenant_id}"
    )
    listed = await _channels(graph, world).get()
    assert [c.display_name for c in listed.value] == ["General", "1042 Vera Jones"]
    assert listed.value[0].id == world.team["id"]
    fetched = await _channels(graph, world).by_channel_id(created.id).get()
    assert fetched.description == "about 1042 Vera Jones"
    config = RequestConfiguration(
        query_parameters=ChannelsRequestBuilder.ChannelsRequestBuilderGetQueryParameters(
            filter="displayName eq '1042 vera jones'"
        )
    )
    found = await _channels(graph, world).get(request_configuration=config)
    assert [c.id for c in found.value] == [created.id]
    assert world.ms.channel_by_name(world.team["id"], "1042 VERA JONES")["id"] == created.id


async def test_graph_name_already_exists_is_an_odata_error(world, graph):
    await _channels(graph, world).post(_channel("1042 Vera Jones"))

    with pytest.raises(ODataError) as raised:
        await _channels(graph, world).post(_channel("1042 VERA JONES"))

    assert raised.value.response_status_code == 400
    assert raised.value.error.code == "NameAlreadyExists"
    assert raised.value.error.inner_error.request_id


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "x" * 51,
        "#1042 Vera",
        "a/b",
        "Q&A",
        "what?",
        "it's",
        "a,b",
        "a..b",
        "_hidden",
        ".dot",
        "end.",
        "CON",
        "forms",
        "tab\there",
    ],
)
async def test_graph_rejects_invalid_channel_names(world, name):
    response = await world.http.post(
        f"/v1.0/teams/{world.team['aadGroupId']}/channels", json={"displayName": name, "membershipType": "standard"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadRequest"
    assert set(response.json()["error"]["innerError"]) == {"date", "request-id", "client-request-id"}


async def test_graph_accepts_names_at_the_limits(world, graph):
    for name in ("x" * 50, "v1.2 release", "Zoë – 1042 (urgent)!"):
        assert (await _channels(graph, world).post(_channel(name))).display_name == name


async def test_graph_invalid_name_through_the_sdk(world, graph):
    with pytest.raises(ODataError) as raised:
        await _channels(graph, world).post(_channel("#1042"))
    assert (raised.value.response_status_code, raised.value.error.code) == (400, "BadRequest")


async def test_graph_channel_cap_counts_recently_deleted_channels(world, graph):
    world.ms.set_channel_cap(world.team["id"], 3)  # General + 2
    first = await _channels(graph, world).post(_channel("one"))
    await _channels(graph, world).post(_channel("two"))
    await _channels(graph, world).by_channel_id(first.id).delete()

    with pytest.raises(ODataError) as raised:
        await _channels(graph, world).post(_channel("three"))
    assert raised.value.response_status_code == 403
    assert raised.value.error.code == "Forbidden"
    assert raised.value.error.message == "This team has exceeded the Max allowed channels"

    world.clock.advance(31 * 24 * 3600)  # the deleted channel no longer counts, its name is free
    assert (await _channels(graph, world).post(_channel("one"))).display_name == "one"


async def test_graph_deleted_channel_keeps_its_name_taken(world, graph):
    created = await _channels(graph, world).post(_channel("1042 Vera Jones"))
    await _channels(graph, world).by_channel_id(created.id).delete()

    listed = await _channels(graph, world).get()
    assert [c.display_name for c in listed.value] == ["General"]
    with pytest.raises(ODataError) as gone:
        await _channels(graph, world).by_channel_id(created.id).get()
    assert gone.value.response_status_code == 404
    with pytest.raises(ODataError) as taken:
        await _channels(graph, world).post(_channel("1042 vera jones"))
    assert taken.value.error.code == "NameAlreadyExists"
    assert world.ms.channels(world.team["id"], include_deleted=True)[-1]["deleted"] is True


async def test_graph_general_cannot_be_deleted_and_unknown_team_is_404(world, graph):
    with pytest.raises(ODataError) as general:
        await _channels(graph, world).by_channel_id(world.team["id"]).delete()
    assert general.value.response_status_code == 400
    with pytest.raises(ODataError) as unknown:
        await graph.teams.by_team_id("00000000-0000-0000-0000-000000000000").channels.post(_channel("x"))
    assert (unknown.value.response_status_code, unknown.value.error.code) == (404, "NotFound")


async def test_graph_channel_ids_arrive_url_encoded(world):
    created = (
        await world.http.post(f"/v1.0/teams/{world.team['aadGroupId']}/channels", json={"displayName": "raw"})
    ).json()
    encoded = created["id"].replace(":", "%3A").replace("@", "%40")
    response = await world.http.delete(f"/v1.0/teams/{world.team['aadGroupId']}/channels/{encoded}")
    assert response.status_code == 204
    assert world.ms.requests[-1]["path"].endswith(created["id"])


async def test_graph_lists_user_and_bot_posts_with_cards(world, graph, connector):
    general = world.team["id"]
    user_post = await world.ms.user_posts(general, general, world.alice, "Hello <b>team</b>")
    await connector.conversations.send_to_conversation(
        f"{general};messageid={user_post['activity']['id']}", _message("on it")
    )
    created = await _new_root(connector, general, _message(attachments=[_card()]))

    messages = (await _channels(graph, world).by_channel_id(general).messages.get()).value
    assert [m.id for m in messages] == [created.activity_id, user_post["activity"]["id"]]  # newest first
    assert messages[1].from_.user.display_name == "Alice Adams"
    assert messages[1].body.content == "Hello <b>team</b>"
    card_post = messages[0]
    assert card_post.from_.application.id == world.ms.bot_app_id
    assert card_post.attachments[0].content_type == ADAPTIVE_CARD
    assert '"AdaptiveCard"' in card_post.attachments[0].content  # a JSON string, as Graph gives it
    assert f'<attachment id="{card_post.attachments[0].id}">' in card_post.body.content
    replies = (
        await _channels(graph, world)
        .by_channel_id(general)
        .messages.by_chat_message_id(user_post["activity"]["id"])
        .replies.get()
    ).value
    assert [(r.body.content, r.reply_to_id) for r in replies] == [("on it", user_post["activity"]["id"])]


async def test_graph_429_without_retries_carries_retry_after(world, graph):
    world.ms.fail_next(429, retry_after=7, path_contains="/channels", method="POST")
    with pytest.raises(ODataError) as raised:
        await _channels(graph, world).post(_channel("x"))
    assert raised.value.response_status_code == 429
    assert raised.value.error.code == "TooManyRequests"
    assert raised.value.response_headers["retry-after"] == "7"
    world.ms.fail_next(429, retry_after=None)
    with pytest.raises(ODataError) as bare:
        await _channels(graph, world).get()
    assert "retry-after" not in bare.value.response_headers
    assert world.ms.throttled_count == 2
    assert world.ms.channel_by_name(world.team["id"], "x") is None


async def test_graph_kiota_default_middleware_retries_429_even_for_post(world):
    """Kiota's RetryHandler (on by default) resends POSTs after 429/503/504, honouring
    Retry-After: a caller that keeps it could create a channel twice after a 503."""
    graph, http = _graph_client(world.ms.graph_url, retries=True)
    world.ms.fail_next(429, retry_after=1, method="POST")
    started = time.monotonic()
    try:
        created = await _channels(graph, world).post(_channel("retried"))
    finally:
        await http.aclose()
    assert created.display_name == "retried"
    assert time.monotonic() - started >= 1
    posts = [r for r in world.ms.requests if r["method"] == "POST"]
    assert [r["status"] for r in posts] == [429, 201]


async def test_graph_502_performs_nothing(world, graph):
    world.ms.fail_next(502, count=1, path_contains="/channels")
    with pytest.raises(ODataError) as raised:
        await _channels(graph, world).post(_channel("maybe"))
    assert (raised.value.response_status_code, raised.value.error.code) == (502, "BadGateway")
    assert world.ms.channel_by_name(world.team["id"], "maybe") is None
    assert (await _channels(graph, world).post(_channel("maybe"))).display_name == "maybe"


# ----------------------------------------------------------------- Bot Connector


async def test_connector_create_conversation_posts_a_root_message(world, connector):
    general = world.team["id"]
    created = await _new_root(connector, general, _message("New conversation #1042"))

    assert ACTIVITY_ID.match(created.activity_id)
    assert created.id == f"{general};messageid={created.activity_id}"
    [post] = world.ms.posts(general)
    assert post["id"] == created.activity_id
    assert post["from"] == {"kind": "bot", "id": world.ms.bot_id, "name": world.ms.bot_name}
    assert post["text"] == "New conversation #1042" and post["replies"] == []
    assert world.ms.requests[-1]["authorization"] is None  # local mode: no token sent


async def test_connector_reply_update_and_delete(world, connector):
    general = world.team["id"]
    root = await _new_root(connector, general, _message("root"))
    in_thread = await connector.conversations.send_to_conversation(root.id, _message("reply 1"))
    reply_to = await connector.conversations.reply_to_activity(general, in_thread.id, _message("reply 2"))
    new_root = await connector.conversations.send_to_conversation(general, _message("another root"))
    updated = await connector.conversations.update_activity(
        root.id, root.activity_id, _message("root, edited", attachments=[_card()])
    )
    await connector.conversations.delete_activity(root.id, in_thread.id)

    assert updated.id == root.activity_id
    assert len({root.activity_id, in_thread.id, reply_to.id, new_root.id}) == 4
    first, second = world.ms.posts(general)
    assert (first["text"], first["updated"] is not None, len(first["attachments"])) == ("root, edited", True, 1)
    assert [(r["text"], r["deleted"]) for r in first["replies"]] == [("reply 1", True), ("reply 2", False)]
    assert second["id"] == new_root.id and second["reply_to"] is None


async def test_connector_delete_of_a_missing_activity_is_404(world, connector):
    root = await _new_root(connector, world.team["id"], _message("root"))
    with pytest.raises(ErrorResponseException) as raised:
        await connector.conversations.delete_activity(root.id, "1111111111111")
    assert raised.value.response.status_code == 404


async def test_connector_members(world, connector):
    general = world.team["id"]
    by_teams_id = await connector.conversations.get_conversation_member(general, world.alice["id"])
    by_aad_id = await connector.conversations.get_conversation_member(general, world.bob["aadObjectId"])
    assert (by_teams_id.name, by_teams_id.aad_object_id) == ("Alice Adams", world.alice["aadObjectId"])
    assert by_aad_id.id == world.bob["id"]
    with pytest.raises(ErrorResponseException) as raised:
        await connector.conversations.get_conversation_member(general, world.carol["id"])
    assert raised.value.response.status_code == 404
    assert raised.value.error.error.code == "MemberNotFoundInConversation"
    everyone = await connector.conversations.get_conversation_members(general)
    assert {m.name for m in everyone} == {"Alice Adams", "Bob Brown"}
    page = await connector.conversations.get_conversation_paged_members(general, page_size=1)
    assert len(page.members) == 1 and page.continuation_token == "1"
    raw = (await world.http.get(f"/connector/v3/conversations/{general}/members/{world.alice['id']}")).json()
    assert raw["email"] == raw["userPrincipalName"] == "alice@contoso.test"
    assert raw["tenantId"] == world.ms.tenant_id and raw["userRole"] == "user"


async def test_connector_team_details_and_channels(world):
    """TeamsConnectorClient is synchronous (requests): run it off the event loop."""
    teams = TeamsConnectorClient(MicrosoftAppCredentials(None, None), base_url=world.ms.service_url).teams
    await world.http.post(f"/v1.0/teams/{world.team['aadGroupId']}/channels", json={"displayName": "1042 Vera"})

    details = await asyncio.to_thread(teams.get_team_details, world.team["id"])
    channels = await asyncio.to_thread(teams.get_teams_channels, world.team["id"])

    assert (details.id, details.name, details.aad_group_id) == (world.team["id"], "Support", world.team["aadGroupId"])
    assert [(c.id == world.team["id"], c.name) for c in channels.conversations] == [(True, None), (False, "1042 Vera")]


async def test_connector_deleted_channel_and_removed_bot(world, connector):
    channel = (
        await world.http.post(f"/v1.0/teams/{world.team['aadGroupId']}/channels", json={"displayName": "soon gone"})
    ).json()
    world.ms.delete_channel(world.team["id"], channel["id"])
    with pytest.raises(ErrorResponseException) as deleted:
        await _new_root(connector, channel["id"], _message("hello?"))
    assert (deleted.value.response.status_code, deleted.value.error.error.code) == (404, "ConversationNotFound")

    statuses = await world.ms.uninstall_bot(world.team["id"], by_user=world.alice)
    assert statuses == [200, 200]
    with pytest.raises(ErrorResponseException) as removed:
        await connector.conversations.send_to_conversation(world.team["id"], _message("hello?"))
    assert removed.value.response.status_code == 403
    assert removed.value.error.error.code == "BotNotInConversationRoster"


@pytest.mark.parametrize(
    ("activity", "status", "code"),
    [
        ({"text": "no type"}, 400, "BadArgument"),
        ({"type": "message"}, 400, "BadArgument"),
        ({"type": "message", "text": "x" * (101 * 1024)}, 413, "MessageSizeTooBig"),
        (
            {
                "type": "message",
                "attachments": [
                    {"contentType": ADAPTIVE_CARD, "content": {"type": "AdaptiveCard", "body": ["y" * (29 * 1024)]}}
                ],
            },
            413,
            "MessageSizeTooBig",
        ),
    ],
)
async def test_connector_validates_activities(world, activity, status, code):
    response = await world.http.post(f"/connector/v3/conversations/{world.team['id']}/activities", json=activity)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert world.ms.posts(world.team["id"]) == []


async def test_connector_requires_json(world):
    response = await world.http.post(
        f"/connector/v3/conversations/{world.team['id']}/activities",
        content=b'{"type": "message", "text": "hi"}',
        headers={"Content-Type": "text/plain"},
    )
    assert response.status_code == 415


async def test_connector_429_surfaces_status_and_retry_after(world, connector):
    world.ms.fail_next(429, retry_after=3, path_contains="/activities")
    with pytest.raises(ErrorResponseException) as raised:
        await connector.conversations.send_to_conversation(world.team["id"], _message("hi"))
    assert raised.value.response.status_code == 429
    assert raised.value.response.headers["Retry-After"] == "3"
    assert raised.value.error.error.code == "Throttled"
    assert [r["status"] for r in world.ms.requests] == [429]  # msrest does not retry 429
    assert world.ms.posts(world.team["id"]) == []


async def test_connector_msrest_retries_5xx_except_on_post(world, connector):
    """msrest retries 408/5xx for idempotent methods only (urllib3 2 ignores its POST
    whitelist), so a 502 on a new post reaches the caller while an update is retried."""
    root = await _new_root(connector, world.team["id"], _message("root"))
    world.ms.requests.clear()
    world.ms.fail_next(502, method="POST")
    with pytest.raises(ErrorResponseException) as raised:
        await connector.conversations.send_to_conversation(world.team["id"], _message("hi"))
    assert raised.value.response.status_code == 502
    world.ms.fail_next(503, method="PUT", retry_after=None)
    await connector.conversations.update_activity(root.id, root.activity_id, _message("edited"))
    assert [(r["method"], r["status"]) for r in world.ms.requests] == [("POST", 502), ("PUT", 503), ("PUT", 200)]


async def test_connector_dropped_connection(world, connector):
    world.ms.reset_connection_next(path_contains="/activities", method="POST")
    with pytest.raises(ClientRequestError):
        await connector.conversations.send_to_conversation(world.team["id"], _message("hi"))
    assert [r["fault"] for r in world.ms.requests] == ["reset"]
    assert world.ms.posts(world.team["id"]) == []


async def test_delay_next_slows_the_answer(world):
    world.ms.delay_next(0.3, path_contains="/members")
    started = time.monotonic()
    response = await world.http.get(f"/connector/v3/conversations/{world.team['id']}/members")
    assert response.status_code == 200 and time.monotonic() - started >= 0.3


async def test_faults_in_graph_shape_and_unknown_routes(world):
    world.ms.fail_next(503, retry_after=None, path_contains="/v1.0/")
    response = await world.http.get(f"/v1.0/teams/{world.team['aadGroupId']}/channels")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "ServiceUnavailable"
    assert (await world.http.get("/connector/v3/nothing")).json()["error"]["code"] == "NotFound"


# ----------------------------------------------------------------- the Teams client side


async def test_install_sends_installation_and_member_updates(aiohttp_server, bot):
    ms = MicrosoftSandbox()
    server = await aiohttp_server(ms.app())
    ms.set_base_url(str(server.make_url("")))
    ms.bot_endpoint = bot.url
    alice = ms.add_user(name="Alice Adams", email="alice@contoso.test")
    team = ms.add_team(name="Support", members=[alice])

    assert await ms.install_bot(team["id"], by_user=alice) == [200, 200]

    install, update = bot.received
    assert (install["type"], install["action"]) == ("installationUpdate", "add")
    assert update["type"] == "conversationUpdate"
    assert update["membersAdded"] == [{"id": ms.bot_id}]
    assert update["channelData"]["eventType"] == "teamMemberAdded"
    for activity in (install, update):
        assert activity["channelData"]["team"] == {
            "id": team["id"],
            "name": "Support",
            "aadGroupId": team["aadGroupId"],
        }
        assert activity["channelData"]["tenant"] == {"id": ms.tenant_id}
        assert activity["conversation"]["id"] == team["id"]
        assert activity["recipient"] == {"id": ms.bot_id, "name": ms.bot_name}
        assert activity["from"]["aadObjectId"] == alice["aadObjectId"]
        assert activity["serviceUrl"] == ms.service_url and activity["channelId"] == "msteams"


async def test_user_posts_reach_the_bot_like_teams_sends_them(world):
    general = world.team["id"]
    root = await world.ms.user_posts(general, general, world.alice, "Can someone help?", mention_bot=True)
    reply = await world.ms.user_posts(general, general, world.bob, "Sure", reply_to=root["activity"]["id"])

    assert (root["status"], reply["status"]) == (201, 201)
    sent_root, sent_reply = world.bot.received
    root_id = sent_root["id"]
    assert ACTIVITY_ID.match(root_id)
    assert sent_root["conversation"] == {
        "isGroup": True,
        "conversationType": "channel",
        "tenantId": world.ms.tenant_id,
        "id": f"{general};messageid={root_id}",
    }
    assert sent_root["text"] == f"<at>{world.ms.bot_name}</at> Can someone help?"
    mention = next(e for e in sent_root["entities"] if e["type"] == "mention")
    assert mention == {
        "type": "mention",
        "mentioned": {"id": world.ms.bot_id, "name": world.ms.bot_name},
        "text": f"<at>{world.ms.bot_name}</at>",
    }
    assert any(e["type"] == "clientInfo" for e in sent_root["entities"])
    assert sent_root["channelData"] == {
        "teamsTeamId": general,
        "teamsChannelId": general,
        "team": {"id": general},
        "channel": {"id": general},
        "tenant": {"id": world.ms.tenant_id},
    }
    assert sent_root["from"] == {
        "id": world.alice["id"],
        "name": "Alice Adams",
        "aadObjectId": world.alice["aadObjectId"],
    }
    assert sent_root["textFormat"] == "plain" and sent_root["serviceUrl"] == world.ms.service_url
    assert sent_reply["conversation"]["id"] == f"{general};messageid={root_id}"
    assert sent_reply["replyToId"] == root_id and sent_reply["id"] != root_id
    [post] = world.ms.posts(general)
    assert [r["text"] for r in post["replies"]] == ["Sure"]


async def test_undelivered_posts_are_still_visible_in_graph(world, graph):
    general = world.team["id"]
    world.ms.deliver_unmentioned = False
    unheard = await world.ms.user_posts(general, general, world.alice, "nobody mentioned the bot")
    lost = await world.ms.user_posts(general, general, world.alice, "lost", mention_bot=True, deliver=False)
    heard = await world.ms.user_posts(general, general, world.alice, "hey", mention_bot=True)

    assert (unheard["status"], lost["status"], heard["status"]) == (None, None, 201)
    assert [a["id"] for a in world.bot.received] == [heard["activity"]["id"]]
    messages = (await _channels(graph, world).by_channel_id(general).messages.get()).value
    assert len(messages) == 3


async def test_user_must_be_a_member(world):
    with pytest.raises(ValueError):
        await world.ms.user_posts(world.team["id"], world.team["id"], world.carol, "let me in")


# ----------------------------------------------------------------- rate limits
# The world's clock stands still unless a test advances it: every request of a test happens
# in the same instant until then, which is exactly the burst the limits are about.


async def _send(world, conversation: str, text: str = "hi") -> httpx.Response:
    return await world.http.post(
        f"/connector/v3/conversations/{conversation}/activities", json={"type": "message", "text": text}
    )


async def _graph_channel(world, name: str) -> dict[str, Any]:
    response = await world.http.post(f"/v1.0/teams/{world.team['aadGroupId']}/channels", json={"displayName": name})
    assert response.status_code == 201, response.text
    return response.json()


async def test_default_limits_are_teams_published_ones(world):
    assert world.ms.rate_limits == {
        "thread": [(7, 1), (8, 2), (60, 30), (1800, 3600)],
        "thread_all": [(14, 1)],
        "tenant": [(50, 1)],
        "channel_create": [(4, 1)],
    }
    assert (THREAD_RATE_LIMITS, THREAD_ALL_RATE_LIMITS) == (((7, 1), (8, 2), (60, 30), (1800, 3600)), ((14, 1),))
    assert (TENANT_RATE_LIMITS, CHANNEL_CREATE_RATE_LIMITS) == (((50, 1),), ((4, 1),))


async def test_thread_limits_seven_per_second_then_eight_per_two(world):
    general = world.team["id"]
    other = await _graph_channel(world, "other")
    sent = [await _send(world, general, f"m{i}") for i in range(7)]
    refused = await _send(world, general, "one too many")

    assert [r.status_code for r in sent] == [201] * 7
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "Throttled"
    assert [p["text"] for p in world.ms.posts(general)] == [f"m{i}" for i in range(7)]  # nothing performed
    assert world.ms.rate_limited == [{"kind": "thread", "key": general, "time": world.clock.now, "method": "POST",
                                      "path": f"/connector/v3/conversations/{general}/activities", "retry_after": 1}]
    assert world.ms.requests[-1]["rate_limited"] == "thread" and world.ms.throttled_count == 1
    assert (await _send(world, other["id"])).status_code == 201  # another thread has its own windows

    world.clock.advance(1)  # the 7-per-second window is empty again, but 8 per 2 s allows one more
    assert (await _send(world, general, "m7")).status_code == 201
    second = await _send(world, general, "m8")
    assert (second.status_code, second.headers["Retry-After"]) == (429, "1")
    world.clock.advance(1)
    assert (await _send(world, general, "m8")).status_code == 201
    assert [r["kind"] for r in world.ms.rate_limited] == ["thread", "thread"]


async def test_a_thread_is_the_channel_whatever_the_call(world, connector):
    """Replies (``;messageid=``), new conversations (``channelData.channel``), updates,
    deletes and member look-ups all count against the channel's windows."""
    general = world.team["id"]
    root = await _new_root(connector, general, _message("root"))
    await connector.conversations.send_to_conversation(root.id, _message("in the thread"))
    await connector.conversations.reply_to_activity(general, root.activity_id, _message("reply"))
    await connector.conversations.update_activity(root.id, root.activity_id, _message("edited"))
    await connector.conversations.get_conversation_members(root.id)
    await connector.conversations.get_conversation_member(general, world.alice["id"])
    await _new_root(connector, general, _message("seventh"))

    with pytest.raises(ErrorResponseException) as raised:
        await _new_root(connector, general, _message("eighth"))
    assert (raised.value.response.status_code, raised.value.error.error.code) == (429, "Throttled")
    assert raised.value.response.headers["Retry-After"] == "1"
    # Raw: msrest would retry a refused DELETE itself (see the next test), waiting for real.
    delete = await world.http.delete(f"/connector/v3/conversations/{root.id}/activities/{root.activity_id}")
    assert delete.status_code == 429
    assert [(r["kind"], r["key"]) for r in world.ms.rate_limited] == [("thread", general)] * 2
    assert len(world.ms.posts(general)) == 2 and not world.ms.posts(general)[0]["deleted"]


async def test_connector_msrest_retries_429_on_idempotent_calls(world, connector):
    """Unlike a POST, a refused PUT, DELETE or GET is retried by msrest (3 times), after
    sleeping Retry-After: a caller sees the 429 only once those are used up."""
    root = await _new_root(connector, world.team["id"], _message("root"))
    world.ms.fail_next(429, retry_after=1, method="DELETE")
    started = time.monotonic()
    await connector.conversations.delete_activity(root.id, root.activity_id)
    assert time.monotonic() - started >= 1
    assert [(r["method"], r["status"]) for r in world.ms.requests] == [("POST", 201), ("DELETE", 429), ("DELETE", 200)]


async def test_retry_after_is_the_time_until_the_window_has_room(world):
    """Sliding window log: a request at t goes if fewer than C accepted ones are in (t - T, t];
    refused requests are not logged, so hammering does not push the window out."""
    world.ms.set_rate_limits(thread=[(2, 10)])
    general = world.team["id"]
    assert [(await _send(world, general)).status_code for _ in range(2)] == [201, 201]
    world.clock.advance(3.5)
    refused = await _send(world, general)
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "7")  # ceil(6.5)
    world.clock.advance(6.25)
    for _ in range(5):
        assert (await _send(world, general)).headers["Retry-After"] == "1"  # 0.25 s left: at least 1
    world.clock.advance(0.25)  # the first two are now exactly 10 s old: out of (t - 10, t]
    assert [(await _send(world, general)).status_code for _ in range(3)] == [201, 201, 429]
    assert len(world.ms.rate_limited) == 7 and world.ms.throttled_count == 7


async def test_all_bots_limit_applies_when_the_per_bot_one_is_off(world):
    world.ms.set_rate_limits(thread=[])
    general = world.team["id"]
    assert [(await _send(world, general)).status_code for _ in range(14)] == [201] * 14
    refused = await _send(world, general)
    assert refused.status_code == 429
    assert [(r["kind"], r["key"]) for r in world.ms.rate_limited] == [("thread_all", general)]


async def test_tenant_limit_counts_every_connector_call_but_attachment_downloads(world):
    team = world.team["id"]
    image = world.ms.upload_inline_image(b"\x89PNG...")
    for _ in range(50):
        assert (await world.http.get(f"/connector/v3/teams/{team}")).status_code == 200
    refused = await world.http.get(f"/connector/v3/teams/{team}/conversations")
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "1")
    assert (await _send(world, team)).status_code == 429  # a conversation call counts against the tenant too
    assert (await world.http.get(image["attachment"]["contentUrl"].removeprefix(world.ms.base_url))).status_code == 200
    assert (await world.http.get(f"/v1.0/teams/{world.team['aadGroupId']}/channels")).status_code == 200
    assert (await world.http.get("/_sandbox/teams")).status_code == 200
    assert [(r["kind"], r["key"]) for r in world.ms.rate_limited] == [("tenant", world.ms.tenant_id)] * 2
    assert world.ms.posts(team) == []


async def test_graph_channel_creation_is_limited_per_team(world, graph):
    for i in range(4):
        await _channels(graph, world).post(_channel(f"c{i}"))
    with pytest.raises(ODataError) as raised:
        await _channels(graph, world).post(_channel("c4"))
    assert (raised.value.response_status_code, raised.value.error.code) == (429, "TooManyRequests")
    assert raised.value.response_headers["retry-after"] == "1"
    assert world.ms.channel_by_name(world.team["id"], "c4") is None
    other = world.ms.add_team(name="Sales", members=[world.alice])
    assert (await graph.teams.by_team_id(other["aadGroupId"]).channels.post(_channel("c4"))).display_name == "c4"
    assert (await _channels(graph, world).get()).value  # reading channels is not limited
    world.clock.advance(1)
    assert (await _channels(graph, world).post(_channel("c4"))).display_name == "c4"
    assert world.ms.rate_limited[0]["kind"] == "channel_create"
    assert world.ms.rate_limited[0]["key"] == world.team["aadGroupId"]


async def test_injected_faults_come_first_and_do_not_count(world):
    world.ms.set_rate_limits(thread=[(1, 1)])
    general = world.team["id"]
    world.ms.fail_next(503, retry_after=None, path_contains="/activities")
    world.ms.fail_next(429, retry_after=9, path_contains="/activities")
    assert [(await _send(world, general)).status_code for _ in range(4)] == [503, 429, 201, 429]
    assert [r["fault"] for r in world.ms.requests] == ["status", "status", None, None]
    assert [r["rate_limited"] for r in world.ms.requests] == [None, None, None, "thread"]
    assert world.ms.throttled_count == 2 and len(world.ms.rate_limited) == 1


async def test_set_rate_limits_checks_everything_before_changing_anything(world):
    with pytest.raises(ValueError):
        world.ms.set_rate_limits(tenant=[(10, 1)], thread=[(0, 1)])
    with pytest.raises(ValueError):
        world.ms.set_rate_limits(channel_create=[(1, -1)])
    with pytest.raises(ValueError):
        world.ms.set_rate_limits(thread=[7])
    assert world.ms.rate_limits["tenant"] == [(50, 1)] and world.ms.rate_limits["thread"][0] == (7, 1)
    world.ms.set_rate_limits(tenant=[], channel_create=[(1, 0.5)])
    assert world.ms.rate_limits["tenant"] == [] and world.ms.rate_limits["thread"][0] == (7, 1)


async def test_rate_limits_over_http(world):
    current = (await world.http.get("/_sandbox/rate-limits")).json()
    assert current == {"thread": [[7, 1], [8, 2], [60, 30], [1800, 3600]], "thread_all": [[14, 1]],
                       "tenant": [[50, 1]], "channel_create": [[4, 1]], "rate_limited": 0}
    changed = await world.http.put("/_sandbox/rate-limits", json={"thread": [[1, 5]], "thread_all": [],
                                                                  "tenant": None})
    assert changed.status_code == 200
    assert changed.json()["thread"] == [[1, 5]] and changed.json()["thread_all"] == []
    assert changed.json()["tenant"] == [[50, 1]]
    general = world.team["id"]
    assert [(await _send(world, general)).status_code for _ in range(2)] == [201, 429]
    assert (await world.http.get("/_sandbox/rate-limits")).json()["rate_limited"] == 1
    for bad in ({"threads": [[1, 1]]}, {"thread": [[1]]}, {"thread": "7/1"}, {"tenant": [[1.5, 1]]}):
        response = await world.http.put("/_sandbox/rate-limits", json=bad)
        assert response.status_code == 400, bad
    assert world.ms.rate_limits["thread"] == [(1, 5)]


# ----------------------------------------------------------------- channel events


def test_channel_event_activity_shape():
    team = {"id": "19:team@thread.tacv2", "name": "Support", "aadGroupId": "group-1"}
    user = {"id": "29:1abc", "name": "Bob Brown", "aadObjectId": "aad-bob"}
    bot = fx.bot_account("28:app", "neetoChat")
    activity = fx.channel_event_activity(
        event_type="channelDeleted", activity_id="a1", when=0, service_url="https://smba.test/", tenant_id="t1",
        team=team, channel={"id": "19:chan@thread.tacv2", "name": "1042 Vera"}, user=user, bot=bot,
    )
    assert activity["type"] == "conversationUpdate"
    assert activity["conversation"] == {"isGroup": True, "conversationType": "channel", "tenantId": "t1",
                                        "id": "19:team@thread.tacv2"}
    assert activity["channelData"] == {
        "channel": {"id": "19:chan@thread.tacv2", "name": "1042 Vera"}, "eventType": "channelDeleted",
        "team": team, "tenant": {"id": "t1"},
    }
    assert activity["from"] == user and activity["recipient"] == bot
    by_app = fx.channel_event_activity(
        event_type="channelCreated", activity_id="a2", when=0, service_url="https://smba.test/", tenant_id="t1",
        team=team, channel={"id": "19:chan@thread.tacv2", "name": "1042 Vera"}, user=bot, bot=bot,
    )
    assert by_app["from"] == {"id": "28:app", "name": "neetoChat"}
    with pytest.raises(ValueError):
        fx.channel_event_activity(event_type="channelExploded", activity_id="a3", when=0, service_url="s",
                                  tenant_id="t1", team=team, channel={"id": "c", "name": "n"}, user=user, bot=bot)


async def test_person_deletes_channel_and_the_bot_hears_it(world):
    channel = await _graph_channel(world, "1042 Vera Jones")
    await world.ms.drain_notifications()
    world.bot.received.clear()

    status = await world.ms.person_deletes_channel(world.team["id"], channel["id"], by_user=world.bob)

    assert status == 200
    [event] = world.bot.received
    assert event["type"] == "conversationUpdate"
    assert event["conversation"] == {"isGroup": True, "conversationType": "channel",
                                     "tenantId": world.ms.tenant_id, "id": world.team["id"]}
    assert event["channelData"] == {
        "channel": {"id": channel["id"], "name": "1042 Vera Jones"}, "eventType": "channelDeleted",
        "team": {"id": world.team["id"], "name": "Support", "aadGroupId": world.team["aadGroupId"]},
        "tenant": {"id": world.ms.tenant_id},
    }
    assert event["from"] == {"id": world.bob["id"], "name": "Bob Brown", "aadObjectId": world.bob["aadObjectId"]}
    assert event["recipient"] == {"id": world.ms.bot_id, "name": world.ms.bot_name}
    assert world.ms.channel_by_name(world.team["id"], "1042 Vera Jones") is None
    assert world.ms.channels(world.team["id"], include_deleted=True)[-1]["deleted"] is True
    for team_id, channel_id, user in ((world.team["id"], channel["id"], world.bob),  # already deleted
                                      (world.team["id"], world.team["id"], world.bob),  # General
                                      (world.team["id"], channel["id"], world.carol)):  # not a member
        with pytest.raises(ValueError):
            await world.ms.person_deletes_channel(team_id, channel_id, by_user=user)
    assert len(world.bot.received) == 1


async def test_graph_channel_changes_reach_the_bot_in_order(world):
    created = await _graph_channel(world, "1042 Vera Jones")
    deleted = await world.http.delete(f"/v1.0/teams/{world.team['aadGroupId']}/channels/{created['id']}")
    assert deleted.status_code == 204
    await world.ms.drain_notifications()

    assert [(a["type"], a["channelData"]["eventType"]) for a in world.bot.received] == [
        ("conversationUpdate", "channelCreated"), ("conversationUpdate", "channelDeleted")]
    for event in world.bot.received:
        assert event["channelData"]["channel"] == {"id": created["id"], "name": "1042 Vera Jones"}
        assert event["from"] == {"id": world.ms.bot_id, "name": world.ms.bot_name}  # the app did it
        assert event["conversation"]["id"] == world.team["id"]
    assert [s["status"] for s in world.ms.sent_to_bot[-2:]] == [200, 200]


@pytest.fixture
async def slow_bot(aiohttp_server):
    """A bot endpoint that answers only once ``gate`` is set (at the latest when the test ends)."""
    received: list[dict[str, Any]] = []
    arrived = asyncio.Event()
    gate = asyncio.Event()

    async def messages(request: web.Request) -> web.Response:
        received.append(await request.json())
        arrived.set()
        await gate.wait()
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/api/messages", messages)
    server = await aiohttp_server(app)
    yield SimpleNamespace(received=received, arrived=arrived, gate=gate, url=str(server.make_url("/api/messages")))
    gate.set()


async def test_graph_does_not_wait_for_the_bot(world, slow_bot):
    slow = slow_bot
    world.ms.bot_endpoint = slow.url

    created = await _graph_channel(world, "slow bot")  # answered while the bot still holds the event
    await slow.arrived.wait()
    assert [a["channelData"]["eventType"] for a in slow.received] == ["channelCreated"]
    assert "channelCreated" not in [s["activity"]["channelData"].get("eventType") for s in world.ms.sent_to_bot]

    deleted = await world.http.delete(f"/v1.0/teams/{world.team['aadGroupId']}/channels/{created['id']}")
    assert deleted.status_code == 204
    assert len(slow.received) == 1  # the delete waits behind the create: the bot hears them in order
    slow.gate.set()
    await world.ms.drain_notifications()
    assert [a["channelData"]["eventType"] for a in slow.received] == ["channelCreated", "channelDeleted"]


async def test_app_cleanup_cancels_pending_notifications(aiohttp_server, slow_bot):
    ms = MicrosoftSandbox()
    server = await aiohttp_server(ms.app())
    ms.set_base_url(str(server.make_url("")))
    slow = slow_bot
    ms.bot_endpoint = slow.url
    alice = ms.add_user(name="Alice Adams", email="alice@contoso.test")
    team = ms.add_team(name="Support", members=[alice])
    ms.team(team["id"]).bot_installed = True  # silently: the gated bot would hold install_bot up
    async with httpx.AsyncClient(base_url=ms.base_url) as http:
        assert (await http.post(f"/v1.0/teams/{team['aadGroupId']}/channels",
                                json={"displayName": "x"})).status_code == 201
    await slow.arrived.wait()

    await server.close()  # runs the app's cleanup while the bot still holds the event

    await ms.drain_notifications()  # nothing left to wait for
    assert ms.sent_to_bot == []  # cancelled before the bot answered


async def test_no_channel_events_without_the_bot(world):
    await world.ms.uninstall_bot(world.team["id"], by_user=world.alice)
    world.bot.received.clear()
    channel = await _graph_channel(world, "quiet")
    await world.ms.drain_notifications()
    assert await world.ms.person_deletes_channel(world.team["id"], channel["id"], by_user=world.alice) is None
    assert world.bot.received == []
    world.ms.delete_channel(world.team["id"], world.team["id"])  # the silent one checks nothing


async def test_person_deletes_channel_over_http(world):
    channel = await _graph_channel(world, "over http")
    await world.ms.drain_notifications()
    path = f"/_sandbox/teams/{world.team['aadGroupId']}/channels/{channel['id']}/delete"

    assert (await world.http.post(path, json={"user": world.carol["email"]})).status_code == 403  # not a member
    answer = await world.http.post(path, json={"user": "BOB@contoso.test"})
    assert (answer.status_code, answer.json()) == (200, {"bot_status": 200})
    assert world.bot.received[-1]["channelData"]["eventType"] == "channelDeleted"
    assert world.bot.received[-1]["from"]["aadObjectId"] == world.bob["aadObjectId"]
    assert (await world.http.post(path, json={"user": "bob@contoso.test"})).status_code == 403  # already deleted
    assert (await world.http.post(path, json={})).status_code == 400
    general = f"/_sandbox/teams/{world.team['id']}/channels/{world.team['id']}/delete"
    assert (await world.http.post(general, json={"user": "bob@contoso.test"})).status_code == 403


# ----------------------------------------------------------------- chaos


async def _member_statuses(world, count: int) -> list[int]:
    statuses = []
    for _ in range(count):
        world.clock.advance(1)  # within every thread limit
        statuses.append((await world.http.get(f"/connector/v3/conversations/{world.team['id']}/members")).status_code)
    return statuses


async def test_chaos_is_random_but_seeded(world):
    world.ms.chaos(0.5, seed=7, path_contains="/members")
    first = await _member_statuses(world, 30)
    world.ms.chaos(0.5, seed=7, path_contains="/members")
    again = await _member_statuses(world, 30)

    assert first == again
    assert 200 in first and set(first) - {200} and set(first) <= {200, 500, 502, 503, 504}
    failed = [r for r in world.ms.requests if r["status"] != 200]
    assert failed and all(r["fault"] == "status" for r in failed)
    assert world.ms.rate_limited == []
    assert (await world.http.get(f"/connector/v3/teams/{world.team['id']}")).status_code == 200  # not matching
    world.ms.chaos(0)
    assert await _member_statuses(world, 10) == [200] * 10


async def test_chaos_failures_perform_nothing_and_carry_no_retry_after(world):
    world.ms.set_rate_limits(thread=[(1, 1)])
    world.ms.chaos(1, statuses=(503,), method="POST")
    general = world.team["id"]
    failed = [await _send(world, general) for _ in range(3)]
    assert [(r.status_code, r.json()["error"]["code"]) for r in failed] == [(503, "ServiceUnavailable")] * 3
    assert all("Retry-After" not in r.headers for r in failed)
    assert world.ms.posts(general) == []
    assert (await world.http.get(f"/connector/v3/conversations/{general}/members")).status_code == 200  # a GET
    world.ms.chaos(0)
    assert (await _send(world, general)).status_code == 429  # chaos did not count; the GET did
    world.clock.advance(1)
    assert (await _send(world, general)).status_code == 201


async def test_chaos_resets_and_delays(world):
    world.ms.chaos(1, statuses=(), resets=True, path_contains="/activities")
    with pytest.raises(httpx.TransportError):
        await _send(world, world.team["id"])
    assert world.ms.requests[-1]["fault"] == "reset" and world.ms.posts(world.team["id"]) == []

    world.ms.chaos(1, statuses=(502,), delay=0.2, path_contains="/members")
    started = time.monotonic()
    response = await world.http.get(f"/connector/v3/conversations/{world.team['id']}/members")
    assert response.status_code == 502 and time.monotonic() - started >= 0.2
    assert world.ms.requests[-1]["fault"] == "status"

    world.ms.chaos(0)
    world.ms.delay_next(0.01, path_contains="/members")
    assert (await world.http.get(f"/connector/v3/conversations/{world.team['id']}/members")).status_code == 200
    assert world.ms.requests[-1]["fault"] == "delay"
    for bad in ({"probability": 1.5}, {"probability": 0.5, "statuses": ()}, {"probability": 0.5, "delay": -1},
                {"probability": 0.5, "statuses": (200,)}):
        with pytest.raises(ValueError):
            world.ms.chaos(**bad)


async def test_chaos_over_http(world):
    on = await world.http.put("/_sandbox/chaos", json={"probability": 1, "statuses": [502], "path_contains": "/v1.0/"})
    assert on.status_code == 200
    assert on.json() == {"probability": 1, "statuses": [502], "resets": False, "delay": 0.0, "seed": 0,
                         "path_contains": "/v1.0/", "method": None}
    graph = await world.http.get(f"/v1.0/teams/{world.team['aadGroupId']}/channels")
    assert (graph.status_code, graph.json()["error"]["code"]) == (502, "BadGateway")
    assert (await world.http.get("/_sandbox/chaos")).json()["statuses"] == [502]  # control routes never fail
    for bad in ({"statuses": [502]}, {"probability": 2}, {"probability": 0.5, "statuses": "502"},
                {"probability": 0.5, "colour": "red"}):
        assert (await world.http.put("/_sandbox/chaos", json=bad)).status_code == 400, bad
    off = await world.http.put("/_sandbox/chaos", json={"probability": 0})
    assert off.json() == {"probability": 0}
    assert (await world.http.get(f"/v1.0/teams/{world.team['aadGroupId']}/channels")).status_code == 200
