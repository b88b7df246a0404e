"""Conversation channels through Microsoft Graph, with msgraph-sdk.

Channels are created and deleted app-only (the team's resource-specific consent, see the
manifest). In authenticated mode the token comes from azure-identity's
``ClientSecretCredential``; in local mode no token is sent and ``GRAPH_BASE_URL`` points at
a stand-in. Kiota's own retry middleware is switched off: a retried channel create could
make a second channel, and the durable job loop already retries with backoff after
checking whether the first attempt went through.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import httpx
from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import ClientSecretCredential
from kiota_abstractions.api_error import APIError
from kiota_abstractions.authentication import AnonymousAuthenticationProvider, AuthenticationProvider
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from kiota_http.middleware.options import RetryHandlerOption
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.models.channel import Channel
from msgraph.generated.models.channel_membership_type import ChannelMembershipType
from msgraph.generated.models.chat_message_type import ChatMessageType
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.teams.item.channels.channels_request_builder import ChannelsRequestBuilder
from msgraph.generated.teams.item.channels.item.messages.item.replies.replies_request_builder import (
    RepliesRequestBuilder,
)
from msgraph.generated.teams.item.channels.item.messages.messages_request_builder import MessagesRequestBuilder
from msgraph_core import GraphClientFactory

from services.config import Settings, is_microsoft_host
from services.errors import RemoteError, parse_retry_after
from services.metrics import Metrics
from services.rate_limits import RateLimiter, Window

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
CARD_TYPE = "application/vnd.microsoft.card.adaptive"


@dataclass(frozen=True)
class BotPost:
    """A root post the bot made in a channel, as Graph lists it."""

    id: str
    html: str
    cards: list[dict]


@dataclass(frozen=True)
class PersonPost:
    """A message a person wrote in a channel, as Graph lists it (what reconcile compares
    with what the bot received)."""

    id: str
    root_id: str  # the thread's root: itself for a root post
    created: float
    author_aad_id: str
    author_name: str
    html: str
    attachments: list[dict[str, Any]]  # Graph's chatMessageAttachment: contentType, contentUrl, name, content
    mentioned_apps: list[str]  # display names of the apps (the bot) it @mentions
    mentioned_people: list[dict[str, str]]  # {"id": AAD object id, "name"}


@dataclass(frozen=True)
class TeamMember:
    """A person in a team's roster, as Graph lists it."""

    aad_object_id: str
    name: str
    email: str
    owner: bool


@dataclass(frozen=True)
class ChannelInfo:
    id: str
    name: str
    web_url: str | None


def _person_posts(messages: list[Any], root_id: str) -> list[PersonPost]:
    """The live messages among ``messages`` that a person wrote (not the bot, another app or
    a system event)."""
    posts = []
    for m in messages:
        user = m.from_.user if m and m.from_ else None
        if user is None or m.deleted_date_time is not None or m.message_type != ChatMessageType.Message:
            continue
        mentions = [x.mentioned for x in m.mentions or [] if x.mentioned]
        posts.append(
            PersonPost(
                id=m.id,
                root_id=root_id,
                created=m.created_date_time.timestamp() if m.created_date_time else 0.0,
                author_aad_id=user.id,
                author_name=user.display_name or "",
                html=(m.body.content if m.body else "") or "",
                attachments=[
                    {"contentType": a.content_type, "contentUrl": a.content_url, "name": a.name, "content": a.content}
                    for a in m.attachments or []
                ],
                mentioned_apps=[x.application.display_name or "" for x in mentions if x.application],
                mentioned_people=[{"id": x.user.id, "name": x.user.display_name or ""} for x in mentions if x.user],
            )
        )
    return posts


def build_graph_client(base_url: str, auth_provider: AuthenticationProvider | None = None) -> GraphServiceClient:
    """A Graph client rooted at ``base_url``; anonymous (local mode) unless a provider is given."""
    http = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(timeout=httpx.Timeout(30.0)),
        options={RetryHandlerOption.get_key(): RetryHandlerOption(max_retries=0, should_retry=False)},
    )
    adapter = GraphRequestAdapter(auth_provider or AnonymousAuthenticationProvider(), client=http)
    adapter.base_url = base_url
    return GraphServiceClient(request_adapter=adapter)


def _remote_error(exc: APIError) -> RemoteError:
    code = None
    message = str(exc)
    if isinstance(exc, ODataError) and exc.error is not None:
        code = exc.error.code
        message = exc.error.message or code or message
    headers = {k.lower(): v for k, v in (exc.response_headers or {}).items()}
    return RemoteError(
        "Graph",
        message,
        status=exc.response_status_code,
        code=code,
        retry_after=parse_retry_after(headers.get("retry-after")),
    )


NO_TOKEN = "NoGraphToken"  # RemoteError.code: the identity platform gave no token for Graph


@contextmanager
def _graph_call() -> Iterator[None]:
    """Turn msgraph-sdk/httpx failures into ``RemoteError`` for the job loop."""
    try:
        yield
    except APIError as exc:
        raise _remote_error(exc) from exc
    except httpx.HTTPError as exc:
        raise RemoteError("Graph", f"{type(exc).__name__}: {exc}") from exc
    except ClientAuthenticationError as exc:  # the identity platform refused: not a Graph answer
        reason = (exc.message or str(exc)).strip().splitlines()[0][:300]
        raise RemoteError("Graph", f"no token: {reason}", status=401, code=NO_TOKEN) from exc


class GraphChannels:
    """A team's standard channels (create, find, list, delete) and its owners, by the
    team's AAD group id."""

    def __init__(
        self, client: GraphServiceClient, limiter: RateLimiter, create_limits: tuple[Window, ...], metrics: Metrics
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._limiter = limiter
        self._create_limits = create_limits

    @contextlib.asynccontextmanager
    async def _call(self, operation: str) -> AsyncIterator[None]:
        """One Graph call (or a paged listing), timed, its failure a ``RemoteError``."""
        async with self._metrics.call("Graph", operation):
            with _graph_call():
                yield

    @property
    def client(self) -> GraphServiceClient:
        """The tenant's Graph client, for reads outside channels (message content, files)."""
        return self._client

    async def create(self, group_id: str, name: str, description: str) -> ChannelInfo:
        body = Channel(
            display_name=name,
            description=description,
            membership_type=ChannelMembershipType.Standard,
        )
        # Graph answers bursts of creates in one team with 429 or 502: shaped per team.
        async with (
            self._limiter.slot("Graph", [(f"channel-create:{group_id}", self._create_limits)]),
            self._call("create_channel"),
        ):
            created = await self._client.teams.by_team_id(group_id).channels.post(body)
        return ChannelInfo(id=created.id, name=created.display_name, web_url=created.web_url)

    async def find_by_name(self, group_id: str, name: str) -> ChannelInfo | None:
        """The live channel called ``name``: how a retried create learns that the first
        attempt succeeded after all (Graph has answered 502 to creates that went through)."""
        escaped = name.replace("'", "''")
        config = RequestConfiguration(
            query_parameters=ChannelsRequestBuilder.ChannelsRequestBuilderGetQueryParameters(
                filter=f"displayName eq '{escaped}'"
            )
        )
        async with self._call("find_channel"):
            page = await self._client.teams.by_team_id(group_id).channels.get(request_configuration=config)
        for channel in (page.value if page else None) or []:
            if (channel.display_name or "").lower() == name.lower():
                return ChannelInfo(id=channel.id, name=channel.display_name, web_url=channel.web_url)
        return None

    async def list(self, group_id: str) -> list[ChannelInfo]:
        """The team's live channels (what the settings page offers as notification channel)."""
        channels = self._client.teams.by_team_id(group_id).channels
        found: list[ChannelInfo] = []
        async with self._call("list_channels"):
            page = await channels.get()
            while page is not None:
                found += [ChannelInfo(id=c.id, name=c.display_name or "", web_url=c.web_url) for c in page.value or []]
                if not page.odata_next_link:
                    break
                page = await channels.with_url(page.odata_next_link).get()
        return found

    async def permission_grants(self, group_id: str, app_id: str | None) -> set[str]:
        """The resource-specific permissions granted in the team to the app ``app_id`` (to
        any app when None: local mode has no app id)."""
        async with self._call("list_permission_grants"):
            page = await self._client.teams.by_team_id(group_id).permission_grants.get()
        grants = (page.value if page else None) or []
        return {g.permission for g in grants if g.permission and (app_id is None or g.client_app_id == app_id)}

    async def members(self, group_id: str) -> list[TeamMember]:
        """The team's roster (RSC ``TeamMember.Read.Group``): people, not guests without an
        Entra account."""
        members = self._client.teams.by_team_id(group_id).members
        found: list[TeamMember] = []
        async with self._call("list_members"):
            page = await members.get()
            while page is not None:
                for m in page.value or []:
                    if getattr(m, "user_id", None):
                        email = getattr(m, "email", None) or ""
                        found.append(TeamMember(m.user_id, m.display_name or "", email, "owner" in (m.roles or [])))
                if not page.odata_next_link:
                    break
                page = await members.with_url(page.odata_next_link).get()
        return found

    async def owners(self, group_id: str) -> set[str]:
        """AAD object ids of the team's owners, from its roster."""
        return {m.aad_object_id for m in await self.members(group_id) if m.owner}

    async def bot_posts_since(
        self, group_id: str, channel_id: str, app_id: str | None, since: float, thread_id: str | None = None
    ) -> list[BotPost]:
        """The bot's root posts in a channel (or its replies in thread ``thread_id``)
        created at or after ``since`` (unix seconds).

        How a rerun learns whether an earlier attempt's post went through before the process
        died (the connector has no idempotency keys). Pages newest first and stops at the
        first page that reaches back past ``since``.
        """
        messages = self._client.teams.by_team_id(group_id).channels.by_channel_id(channel_id).messages
        query = MessagesRequestBuilder.MessagesRequestBuilderGetQueryParameters(top=50)
        if thread_id is not None:
            messages = messages.by_chat_message_id(thread_id).replies
            query = RepliesRequestBuilder.RepliesRequestBuilderGetQueryParameters(top=50)
        config = RequestConfiguration(query_parameters=query)
        found: list[BotPost] = []
        async with self._call("list_messages"):
            page = await messages.get(request_configuration=config)
            while page is not None:
                reached_back = False
                for message in page.value or []:
                    created = message.created_date_time.timestamp() if message.created_date_time else 0.0
                    if created < since:
                        reached_back = True
                        continue
                    application = message.from_.application if message.from_ else None
                    if application is None or (app_id and application.id != app_id):
                        continue
                    cards = [json.loads(a.content) for a in message.attachments or [] if a.content_type == CARD_TYPE]
                    found.append(BotPost(id=message.id, html=message.body.content if message.body else "", cards=cards))
                if reached_back or not page.odata_next_link:
                    break
                page = await messages.with_url(page.odata_next_link).get()
        return found

    async def person_posts(self, group_id: str, channel_id: str, thread_id: str | None = None) -> list[PersonPost]:
        """Every live message people wrote in a channel (roots and their replies), or in
        one thread of it, oldest first. One call per page of roots plus one per root: a
        conversation's channel holds one conversation, so this stays small."""
        messages = self._client.teams.by_team_id(group_id).channels.by_channel_id(channel_id).messages
        found: list[PersonPost] = []
        async with self._call("list_person_posts"):
            roots = [thread_id] if thread_id else [m.id async for m in self._roots(messages)]
            for root_id in roots:
                if not thread_id:
                    found += _person_posts([await messages.by_chat_message_id(root_id).get()], root_id)
                page = await messages.by_chat_message_id(root_id).replies.get()
                while page is not None:
                    found += _person_posts(page.value or [], root_id)
                    if not page.odata_next_link:
                        break
                    page = await messages.by_chat_message_id(root_id).replies.with_url(page.odata_next_link).get()
        return sorted(found, key=lambda p: p.created)

    @staticmethod
    async def _roots(messages: Any) -> AsyncIterator[Any]:
        config = RequestConfiguration(
            query_parameters=MessagesRequestBuilder.MessagesRequestBuilderGetQueryParameters(top=50)
        )
        page = await messages.get(request_configuration=config)
        while page is not None:
            for message in page.value or []:
                yield message
            if not page.odata_next_link:
                return
            page = await messages.with_url(page.odata_next_link).get()

    async def exists(self, group_id: str, channel_id: str) -> bool:
        """Whether the channel is still there (a 404 from the connector may mean a deleted
        channel or a deleted thread; Graph tells which)."""
        try:
            async with self._call("get_channel"):
                await self._client.teams.by_team_id(group_id).channels.by_channel_id(channel_id).get()
        except RemoteError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def delete(self, group_id: str, channel_id: str) -> None:
        """Delete; a channel that is already gone counts as deleted."""
        try:
            async with self._call("delete_channel"):
                await self._client.teams.by_team_id(group_id).channels.by_channel_id(channel_id).delete()
        except RemoteError as exc:
            if exc.status != 404:
                raise


class GraphPool:
    """A Graph client per tenant: app-only tokens are issued by the team's own tenant.

    Local mode has one anonymous client. Authenticated mode uses azure-identity's
    ``ClientSecretCredential`` against ``LOGIN_AUTHORITY`` (which caches and refreshes the
    token), with instance discovery off for authorities that are not Microsoft's.
    """

    def __init__(self, settings: Settings, limiter: RateLimiter, metrics: Metrics) -> None:
        self._settings = settings
        self._limiter = limiter
        self._metrics = metrics
        self._pool: dict[str, GraphChannels] = {}
        self._credentials: list[ClientSecretCredential] = []

    def for_tenant(self, tenant_id: str | None) -> GraphChannels:
        settings = self._settings
        if settings.local_mode:
            key = ""
        elif settings.app_type.lower() == "singletenant" and settings.app_tenant_id:
            key = settings.app_tenant_id
        elif tenant_id:
            key = tenant_id
        else:
            raise RemoteError("Graph", "the team's tenant is not known yet", status=409)
        if key not in self._pool:
            provider = None
            if not settings.local_mode:
                credential = ClientSecretCredential(
                    key,
                    settings.app_id,
                    settings.app_password,
                    authority=settings.login_authority,
                    disable_instance_discovery=not is_microsoft_host(settings.login_authority),
                )
                self._credentials.append(credential)
                provider = AzureIdentityAuthenticationProvider(
                    credential, scopes=[GRAPH_SCOPE], allowed_hosts=[urlparse(settings.graph_base_url).hostname]
                )
            self._pool[key] = GraphChannels(
                build_graph_client(settings.graph_base_url, provider),
                self._limiter,
                settings.graph_channel_create_limits,
                self._metrics,
            )
        return self._pool[key]

    async def close(self) -> None:
        for credential in self._credentials:
            await credential.close()
