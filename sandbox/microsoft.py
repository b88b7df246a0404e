"""A strict stand-in for the parts of Microsoft 365 the bridge uses.

One aiohttp application serves:

* Microsoft Graph under ``/v1.0`` (team channels and their messages), answering in Graph's
  JSON and error shapes, so the real msgraph-sdk can be pointed at it (``GRAPH_BASE_URL``);
* the Bot Connector REST API v3 under ``/connector`` (``TEAMS_SERVICE_URL`` /
  ``serviceUrl``), so botbuilder's real connector client can post, update and delete;

and a "Teams client" side that sends activities to the bot the way Teams does (installs,
member updates, channel posts). State is in memory; ids look like Teams' own. The limits
that bite in production are enforced (channel name rules, the channel cap counting deleted
channels, names of deleted channels staying taken, message and card sizes, bot not in the
team), and so are Teams' published rate limits (sliding windows per thread, per tenant and
per team for channel creation: see ``set_rate_limits``). Faults (throttling, 5xx, slow
answers, dropped connections) can be injected one by one (``fail_next`` ...) or at random
(``chaos``). Like Teams, the bot is told when a channel of its team is created or deleted,
whether a person did it (``person_deletes_channel``) or an app through Graph.

By default (local mode) ``Authorization`` headers are recorded in ``requests`` but not
checked; ``require_tokens(identity)`` opts in to checking them against an
``IdentitySandbox`` (``sandbox/identity.py``) and to signing activities sent to the bot.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import mimetypes
import random
import re
import time
import uuid
from bisect import bisect_right
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlparse

import aiohttp
from aiohttp import web

from sandbox import teams_fixtures as fx
from sandbox.graph_delegated import delegated_graph_routes
from sandbox.identity import BOT_FRAMEWORK_RESOURCE, GRAPH_APP_ID, GRAPH_RESOURCE, IdentitySandbox, TokenError

GRAPH_PREFIX = "/v1.0"
CONNECTOR_PREFIX = "/connector"
CONTROL_PREFIX = "/_sandbox"  # the Teams client over HTTP, for the sandbox page and scripts
DEFAULT_TENANT_ID = "8d3e5c1a-4f27-4b9e-a6d0-2c71f0e9b5a4"
DEFAULT_BOT_APP_ID = "3f9a6c2e-81d4-4e57-b0a3-6d2c8e1f7b90"
DEFAULT_CHANNEL_CAP = 1000
# The resource-specific permissions the app's manifest asks for (manifest/build.py), granted
# to it in a team when it is installed there.
APP_RSC_PERMISSIONS = (
    "ChannelMessage.Read.Group",
    "Channel.Create.Group",
    "Channel.Delete.Group",
    "ChannelSettings.Read.Group",
    "TeamMember.Read.Group",
)
DELETED_CHANNEL_RETENTION = 30 * 24 * 3600  # deleted channels count (and keep names) this long
MAX_CHANNEL_NAME = 50
MAX_ACTIVITY_BYTES = 100 * 1024
MAX_CARD_BYTES = 28 * 1024
ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"

# Teams' published limits, as (count, seconds) sliding windows: a request is refused (429)
# when ``count`` accepted requests with the same key already fall in the last ``seconds``.
THREAD_RATE_LIMITS = ((7, 1), (8, 2), (60, 30), (1800, 3600))  # per bot per thread (channel)
THREAD_ALL_RATE_LIMITS = ((14, 1),)  # per thread, all bots together
TENANT_RATE_LIMITS = ((50, 1),)  # per app per tenant, every Bot Connector request
CHANNEL_CREATE_RATE_LIMITS = ((4, 1),)  # Graph channel creation per team
DEFAULT_RATE_LIMITS: dict[str, tuple[tuple[int, float], ...]] = {
    "thread": THREAD_RATE_LIMITS, "thread_all": THREAD_ALL_RATE_LIMITS,
    "tenant": TENANT_RATE_LIMITS, "channel_create": CHANNEL_CREATE_RATE_LIMITS,
}
CHAOS_STATUSES = (500, 502, 503, 504)

_FORBIDDEN_NAME_CHARS = set("~#%&*{}+/\\:<>?|'\",")
_RESERVED_NAMES = {"forms", "con", "conin$", "conout$", "prn", "aux", "nul", "desktop.ini"} | {
    f"{device}{n}" for device in ("com", "lpt") for n in range(1, 10)
}
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_FILTER_EQ = re.compile(r"^\s*displayName\s+eq\s+'((?:[^']|'')*)'\s*$")

_GRAPH_CODES = {
    400: "BadRequest", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
    412: "PreconditionFailed", 413: "RequestEntityTooLarge", 415: "UnsupportedMediaType",
    429: "TooManyRequests", 500: "InternalServerError", 502: "BadGateway",
    503: "ServiceUnavailable", 504: "GatewayTimeout",
}
_CONNECTOR_CODES = {
    400: "BadArgument", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
    412: "PreconditionFailed", 413: "MessageSizeTooBig", 415: "UnsupportedMediaType",
    429: "Throttled", 500: "ServiceError", 502: "ServiceError", 503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


class SandboxError(Exception):
    """An error answer; rendered in Graph's or the connector's shape depending on the path."""

    def __init__(self, status: int, code: str | None = None, message: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


@dataclass
class Channel:
    id: str
    name: str
    description: str | None
    created: float
    deleted: float | None = None
    posts: list[str] = field(default_factory=list)  # root post ids, oldest first


@dataclass
class Team:
    id: str  # the team's thread id (= its General channel id), as activities carry it
    aad_group_id: str  # what Graph calls the team id
    name: str
    members: list[str]  # aad object ids
    owners: list[str] = field(default_factory=list)  # aad object ids; owners are members too
    rsc_grants: set[str] = field(default_factory=set)  # granted to the app when installed
    channel_cap: int = DEFAULT_CHANNEL_CAP
    bot_installed: bool = False
    channels: dict[str, Channel] = field(default_factory=dict)


@dataclass
class Post:
    id: str
    channel_id: str
    sender: dict[str, Any]  # {"kind": "user"|"bot", "id", "name", "aadObjectId"?}
    text: str
    attachments: list[dict[str, Any]]
    created: float
    reply_to: str | None = None  # the thread's root post id, for replies
    mention_bot: bool = False
    updated: float | None = None
    deleted: float | None = None
    replies: list[str] = field(default_factory=list)
    shown_to: dict[str, Any] = field(default_factory=dict)  # aadObjectId → card from an invoke answer


@dataclass
class _Blob:
    """Bytes Microsoft 365 holds for a message: an inline image (AMS object), a file in a
    team's SharePoint, or public media (Giphy, stickers)."""

    name: str
    content_type: str
    content: bytes
    reachable: bool = True  # False: every way of downloading it answers 404
    forbidden: bool = False  # files: Graph answers 403 accessDenied (no permission)


@dataclass
class _Fault:
    kind: str  # "status", "delay" or "reset"
    remaining: int
    path_contains: str | None
    method: str | None
    status: int = 0
    retry_after: int | None = None
    seconds: float = 0.0

    def matches(self, request: web.Request) -> bool:
        if self.remaining <= 0:
            return False
        if self.method and request.method.upper() != self.method.upper():
            return False
        return not self.path_contains or self.path_contains in request.path or (
            self.path_contains in request.raw_path
        )


class _SlidingWindows:
    """Rate limits as sliding window logs: the times of the requests each key let through.

    Kinds (``thread`` ...) each have their (count, seconds) limits; a request names the keys
    it counts against and is let through only if every one of them has room, in which case
    it is logged under all of them (a refused request is logged nowhere, so it does not
    push the window further out)."""

    def __init__(self) -> None:
        self.limits: dict[str, tuple[tuple[int, float], ...]] = dict(DEFAULT_RATE_LIMITS)
        self._logs: dict[tuple[str, str], list[float]] = {}

    def set(self, kind: str, limits: Iterable[Iterable[float]]) -> None:
        checked = []
        for pair in limits:
            count, seconds = _limit_pair(pair)
            checked.append((count, seconds))
        self.limits[kind] = tuple(checked)

    def admit(self, keys: list[tuple[str, str]], now: float) -> tuple[str, str, int, float, float] | None:
        """None if the request may go (and it is logged), else the limit that refuses it
        longest: (kind, key, count, seconds, how long until its window has room)."""
        worst: tuple[str, str, int, float, float] | None = None
        for kind, key in keys:
            log = self._window(kind, key, now)
            for count, seconds in self.limits.get(kind, ()):
                inside = log[bisect_right(log, now - seconds):]  # (now - seconds, now]
                if len(inside) >= count:
                    # Room comes back when all but count - 1 of them have left the window.
                    wait = inside[len(inside) - count] + seconds - now
                    if worst is None or wait > worst[4]:
                        worst = (kind, key, count, seconds, wait)
        if worst is None:
            for kind, key in keys:
                if self.limits.get(kind):
                    self._logs.setdefault((kind, key), []).append(now)
        return worst

    def _window(self, kind: str, key: str, now: float) -> list[float]:
        """The key's log, pruned to its kind's longest window (a disabled kind keeps none)."""
        log = self._logs.get((kind, key), [])
        longest = max((seconds for _, seconds in self.limits.get(kind, ())), default=None)
        if longest is None:
            self._logs.pop((kind, key), None)
            return []
        del log[:bisect_right(log, now - longest)]
        return log


def _limit_pair(pair: Any) -> tuple[int, float]:
    try:
        count, seconds = pair
    except (TypeError, ValueError):
        raise ValueError(f"a limit is a (count, seconds) pair, not {pair!r}") from None
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"a limit's count must be a positive integer, not {count!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ValueError(f"a limit's window must be a positive number of seconds, not {seconds!r}")
    return count, seconds


@dataclass
class _Chaos:
    """Random faults: each matching request fails with ``probability`` (one of ``statuses``,
    or a dropped connection if ``resets``) and, drawn separately, is delayed ``delay`` s."""

    probability: float
    statuses: tuple[int, ...]
    resets: bool
    delay: float
    seed: int
    path_contains: str | None
    method: str | None
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def matches(self, request: web.Request) -> bool:
        if request.path.startswith(CONTROL_PREFIX):  # else chaos could refuse being turned off
            return False
        if self.method and request.method.upper() != self.method.upper():
            return False
        return not self.path_contains or self.path_contains in request.path or (
            self.path_contains in request.raw_path
        )

    def draw(self, request: web.Request) -> tuple[int | str | None, float]:
        """(a status, ``"reset"`` or None; seconds of delay). Two draws per matching request
        whatever comes out, so a seed gives the same faults for the same requests."""
        if not self.matches(request):
            return None, 0.0
        fails, delayed = self.rng.random() < self.probability, self.rng.random() < self.probability
        outcome: int | str | None = None
        if fails:
            outcome = self.rng.choice([*self.statuses, *(["reset"] if self.resets else [])])
        return outcome, self.delay if delayed and self.delay > 0 else 0.0

    def settings(self) -> dict[str, Any]:
        return {"probability": self.probability, "statuses": list(self.statuses), "resets": self.resets,
                "delay": self.delay, "seed": self.seed, "path_contains": self.path_contains, "method": self.method}


class MicrosoftSandbox:
    """Graph + Bot Connector + a Teams client, sharing one in-memory tenant."""

    def __init__(self, *, tenant_id: str = DEFAULT_TENANT_ID, clock: Callable[[], float] = time.time) -> None:
        self.tenant_id = tenant_id
        self._clock = clock
        self.base_url = "http://127.0.0.1"
        self.bot_endpoint = "http://127.0.0.1:3978/api/messages"
        self.bot_app_id = DEFAULT_BOT_APP_ID
        self.bot_name = "neetoChat"
        # False simulates a bot without the ChannelMessage.Read.Group consent: it then only
        # hears channel posts that @mention it.
        self.deliver_unmentioned = True
        self.users: dict[str, dict[str, Any]] = {}  # by aad object id
        self.teams: dict[str, Team] = {}  # by team thread id
        self._posts: dict[str, Post] = {}
        self._last_activity_ms = 0
        self._faults: list[_Fault] = []
        self.requests: list[dict[str, Any]] = []
        self.throttled_count = 0  # every 429 answered: injected, chaos or rate limits
        self.rate_limited: list[dict[str, Any]] = []  # the 429s the rate limits sent, one dict each
        self._limits = _SlidingWindows()
        self._chaos: _Chaos | None = None
        self.sent_to_bot: list[dict[str, Any]] = []
        self._notifications: set[asyncio.Task[None]] = set()  # channel events on their way to the bot
        self._last_notification: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._identity: IdentitySandbox | None = None  # set by require_tokens
        self._ams: dict[str, _Blob] = {}  # inline images by AMS object id
        self._files: dict[str, _Blob] = {}  # channel files by SharePoint URL
        self._media: dict[str, _Blob] = {}  # public media (Giphy, stickers) by id
        self._download_tokens: dict[str, str] = {}  # pre-authenticated download token → SharePoint URL

    # ----------------------------------------------------------------- setup

    @property
    def bot_id(self) -> str:
        return f"28:{self.bot_app_id}"

    @property
    def graph_url(self) -> str:
        """What the bridge's ``GRAPH_BASE_URL`` should be."""
        return self.base_url + GRAPH_PREFIX

    @property
    def service_url(self) -> str:
        """The Bot Connector service URL carried by activities (``TEAMS_SERVICE_URL``)."""
        return self.base_url + CONNECTOR_PREFIX + "/"

    def set_base_url(self, url: str) -> None:
        self.base_url = url.rstrip("/")

    def add_user(self, *, name: str, email: str) -> dict[str, Any]:
        given, _, surname = name.partition(" ")
        user = {
            "id": fx.new_user_id(), "name": name, "aadObjectId": str(uuid.uuid4()),
            "email": email, "userPrincipalName": email, "givenName": given,
            "surname": surname or None, "tenantId": self.tenant_id, "userRole": "user",
        }
        self.users[user["aadObjectId"]] = user
        return user

    def add_team(
        self, *, name: str, members: list[dict[str, Any]], channel_cap: int = DEFAULT_CHANNEL_CAP,
        owners: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A team with its General channel (whose id is the team's thread id). Its owners
        are ``owners``, by default the first member (whoever creates a team owns it)."""
        team_id = fx.new_thread_id()
        owner_ids = [m["aadObjectId"] for m in (members[:1] if owners is None else owners)]
        team = Team(id=team_id, aad_group_id=str(uuid.uuid4()), name=name,
                    members=[m["aadObjectId"] for m in members], owners=owner_ids, channel_cap=channel_cap)
        team.channels[team_id] = Channel(id=team_id, name="General", description=None, created=self._clock())
        self.teams[team_id] = team
        return self._team_ref(team)

    def set_channel_cap(self, team_id: str, cap: int) -> None:
        self.team(team_id).channel_cap = cap

    def team(self, team_id: str) -> Team:
        """A team by its thread id or its AAD group id."""
        for team in self.teams.values():
            if team_id in (team.id, team.aad_group_id):
                return team
        raise KeyError(team_id)

    def delete_channel(self, team_id: str, channel_id: str) -> None:
        """A channel is deleted and nobody tells the bot (``person_deletes_channel`` does
        what Teams does: it tells the bot)."""
        channel = self.team(team_id).channels[channel_id]
        channel.deleted = self._clock()

    def channels(self, team_id: str, include_deleted: bool = False) -> list[dict[str, Any]]:
        team = self.team(team_id)
        return [dict(self._channel_json(team, c), deleted=c.deleted is not None)
                for c in team.channels.values() if include_deleted or c.deleted is None]

    def channel_by_name(self, team_id: str, name: str) -> dict[str, Any] | None:
        """The live channel called ``name`` (case-insensitive), as ``channels`` lists it."""
        return next((c for c in self.channels(team_id) if c["displayName"].lower() == name.lower()), None)

    def posts(self, channel_id: str) -> list[dict[str, Any]]:
        """Root posts of a channel, oldest first, each with its replies (deleted ones too)."""
        channel = self._find_channel(channel_id)
        return [dict(self._post_snapshot(root), replies=[self._post_snapshot(self._posts[r]) for r in root.replies])
                for root in (self._posts[p] for p in channel.posts)]

    # ------------------------------------------------------------ message content

    def upload_inline_image(self, content: bytes, content_type: str = "image/png", *,
                            attachment_content_type: str = "image/*") -> dict[str, Any]:
        """A person pastes an image into the compose box: Teams stores it as an AMS object.

        Returns ``id``, the ``attachment`` Teams sends the bot (connector ``contentUrl``, bot
        token required), and the ``html`` the ``text/html`` attachment carries (its ``src`` is
        the AMS URL, which bots must not use: the sandbox does not serve it)."""
        object_id = fx.new_ams_object_id()
        self._ams[object_id] = _Blob(name=f"image.{_extension(content_type)}", content_type=content_type,
                                     content=content)
        return {
            "id": object_id,
            "attachment": fx.inline_image_attachment(
                fx.connector_attachment_url(self.service_url, object_id), attachment_content_type),
            "html": fx.ams_image_html(self._ams_url(object_id)),
        }

    def make_unreachable(self, object_id: str) -> None:
        """The image's bytes are gone: the connector and Graph's hostedContents answer 404."""
        self._ams[object_id].reachable = False

    def add_channel_file(self, team_id: str, channel_id: str, name: str, content: bytes,
                         content_type: str | None = None, *, forbidden: bool = False) -> dict[str, Any]:
        """A file uploaded into a channel's folder in the team's SharePoint. Returns its ``url``
        and the ``reference`` ``attachment`` Teams sends the bot. ``forbidden``: the bot's app
        may not read it (Graph answers 403)."""
        team = self.team(team_id)
        channel = team.channels[channel_id]
        site = quote(team.name.replace(" ", ""))
        url = (f"https://contoso.sharepoint.com/sites/{site}/Shared%20Documents/"
               f"{quote(channel.name)}/{quote(name)}")
        self._files[url] = _Blob(name=name, content_type=content_type or mimetypes.guess_type(name)[0]
                                 or "application/octet-stream", content=content, forbidden=forbidden)
        return {"url": url, "attachment": fx.file_reference_attachment(url, name)}

    def forbid_file(self, url: str, forbidden: bool = True) -> None:
        self._files[url].forbidden = forbidden

    def add_public_media(self, name: str, content: bytes, content_type: str) -> str:
        """Media anyone can load (Giphy's CDN, Teams' sticker CDN); returns its URL."""
        media_id = uuid.uuid4().hex
        self._media[media_id] = _Blob(name=name, content_type=content_type, content=content)
        return f"{self.base_url}/_media/{media_id}/{quote(name)}"

    def _ams_url(self, object_id: str) -> str:
        return f"{self.base_url}/ams/v1/objects/{object_id}/views/imgo"

    # ------------------------------------------------------------ faults

    def fail_next(self, status: int = 429, count: int = 1, retry_after: int | None = 1,
                  path_contains: str | None = None, method: str | None = None) -> None:
        """The next ``count`` matching requests answer ``status`` (nothing is performed)."""
        self._faults.append(_Fault("status", count, path_contains, method, status=status, retry_after=retry_after))

    def delay_next(self, seconds: float, count: int = 1, path_contains: str | None = None,
                   method: str | None = None) -> None:
        """The next ``count`` matching requests wait ``seconds`` before being handled."""
        self._faults.append(_Fault("delay", count, path_contains, method, seconds=seconds))

    def reset_connection_next(self, count: int = 1, path_contains: str | None = None,
                              method: str | None = None) -> None:
        """The next ``count`` matching requests get their connection closed, no answer."""
        self._faults.append(_Fault("reset", count, path_contains, method))

    def chaos(self, probability: float, *, statuses: Iterable[int] = CHAOS_STATUSES, resets: bool = False,
              delay: float = 0.0, seed: int = 0, path_contains: str | None = None,
              method: str | None = None) -> None:
        """Random faults from here on: each matching request, with ``probability``, answers
        one of ``statuses`` (nothing performed, no Retry-After) or, if ``resets``, has its
        connection dropped; independently, with the same probability, it first waits
        ``delay`` seconds. Seeded, so a run can be replayed. ``chaos(0)`` turns it off.
        Control routes (``/_sandbox``) are never affected; ``fail_next`` and friends win
        over chaos for the requests they take."""
        if isinstance(probability, bool) or not isinstance(probability, int | float) or not 0 <= probability <= 1:
            raise ValueError(f"probability must be between 0 and 1, not {probability!r}")
        statuses = tuple(statuses)
        if any(isinstance(s, bool) or not isinstance(s, int) or not 400 <= s <= 599 for s in statuses):
            raise ValueError(f"statuses must be HTTP error statuses, not {statuses!r}")
        if not statuses and not resets:
            raise ValueError("chaos needs statuses or resets")
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            raise ValueError(f"delay must be a number of seconds, not {delay!r}")
        self._chaos = None if probability == 0 else _Chaos(
            probability, statuses, resets, delay, seed, path_contains, method)

    # ------------------------------------------------------------ rate limits

    def set_rate_limits(
        self, *, thread: Iterable[tuple[int, float]] | None = None,
        thread_all: Iterable[tuple[int, float]] | None = None, tenant: Iterable[tuple[int, float]] | None = None,
        channel_create: Iterable[tuple[int, float]] | None = None,
    ) -> None:
        """Replace some of Teams' limits, each a list of (count, seconds) windows: None
        leaves one as it is, an empty list turns it off. ``thread``: the bot's connector
        calls on one channel (create conversation, send, reply, update, delete, members);
        ``thread_all``: the same calls of all bots together (there is only this one);
        ``tenant``: every connector call of the app (but attachment downloads); and
        ``channel_create``: Graph channel creations in one team. Defaults: the ``*_RATE_LIMITS``
        constants, Microsoft's published numbers. Windows already logged are kept."""
        wanted = {"thread": thread, "thread_all": thread_all, "tenant": tenant, "channel_create": channel_create}
        checked = _SlidingWindows()
        for kind, limits in wanted.items():
            if limits is not None:
                checked.set(kind, limits)  # all checked before any is changed
        for kind, limits in wanted.items():
            if limits is not None:
                self._limits.limits[kind] = checked.limits[kind]

    @property
    def rate_limits(self) -> dict[str, list[tuple[int, float]]]:
        """The limits in force, by kind."""
        return {kind: list(limits) for kind, limits in self._limits.limits.items()}

    async def _rate_limit_keys(self, request: web.Request) -> list[tuple[str, str]]:
        """What a request counts against: connector calls (attachment downloads aside, which
        Teams serves from elsewhere) against the tenant and, if they name a conversation,
        its channel (``;messageid=`` stripped; for a new conversation, ``channelData``'s);
        Graph channel creations against their team."""
        resource = getattr(request.match_info.route, "resource", None)
        route = resource.canonical if resource is not None else None
        connector = CONNECTOR_PREFIX + "/v3/"
        if request.path.startswith(connector) and not request.path.startswith(connector + "attachments/"):
            keys = [("tenant", self.tenant_id)]
            thread = None
            if "conversation" in request.match_info:
                thread = request.match_info["conversation"].partition(";messageid=")[0]
            elif route == CONNECTOR_PREFIX + "/v3/conversations" and request.method == "POST":
                thread = _new_conversation_channel(await request.read())
            if thread:
                keys += [("thread", thread), ("thread_all", thread)]
            return keys
        if route == GRAPH_PREFIX + "/teams/{group}/channels" and request.method == "POST":
            return [("channel_create", request.match_info["group"])]
        return []

    async def _apply_rate_limits(self, request: web.Request, entry: dict[str, Any]) -> None:
        """Let the request through or refuse it with Teams' 429 and ``Retry-After``."""
        keys = await self._rate_limit_keys(request)
        if not keys:
            return
        now = self._clock()
        refused = self._limits.admit(keys, now)
        if refused is None:
            return
        kind, key, count, seconds, wait = refused
        retry_after = max(1, math.ceil(wait))
        entry["rate_limited"] = kind
        self.rate_limited.append({"kind": kind, "key": key, "time": now, "method": request.method,
                                  "path": request.path, "retry_after": retry_after})
        raise SandboxError(429, message=f"Too many requests: at most {count} per {seconds} s ({kind}).",
                           headers={"Retry-After": str(retry_after)})

    def _take_fault(self, request: web.Request, kinds: tuple[str, ...]) -> _Fault | None:
        for fault in self._faults:
            if fault.kind in kinds and fault.matches(request):
                fault.remaining -= 1
                return fault
        return None

    # ------------------------------------------------------------ the app

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=4 * 1024 * 1024)
        app.cleanup_ctx.append(self._client_session)
        g = GRAPH_PREFIX + "/teams/{group}/channels"
        c = CONNECTOR_PREFIX + "/v3"
        app.router.add_routes([
            web.post(g, self._graph_create_channel),
            web.get(GRAPH_PREFIX + "/teams/{group}/members", self._graph_list_members),
            web.get(GRAPH_PREFIX + "/teams/{group}/permissionGrants", self._graph_permission_grants),
            web.get(g, self._graph_list_channels),
            web.get(g + "/{channel}", self._graph_get_channel),
            web.delete(g + "/{channel}", self._graph_delete_channel),
            web.get(g + "/{channel}/messages", self._graph_list_messages),
            web.get(g + "/{channel}/messages/{message}", self._graph_get_message),
            web.get(g + "/{channel}/messages/{message}/replies", self._graph_list_replies),
            web.get(g + "/{channel}/messages/{message}/replies/{reply}", self._graph_get_reply),
            web.get(g + "/{channel}/messages/{message}/hostedContents/{hosted}/$value", self._graph_hosted_content),
            web.get(g + "/{channel}/messages/{message}/replies/{reply}/hostedContents/{hosted}/$value",
                    self._graph_hosted_content),
            web.get(GRAPH_PREFIX + "/shares/{share}/driveItem", self._graph_shared_item),
            web.get(GRAPH_PREFIX + "/shares/{share}/driveItem/content", self._graph_shared_item_content),
            web.get("/_download/{token}", self._preauthenticated_download),
            web.get("/_media/{media}/{name}", self._public_media),
            web.get(c + "/attachments/{attachment}", self._connector_attachment_info),
            web.get(c + "/attachments/{attachment}/views/{view}", self._connector_attachment_view),
            web.post(c + "/conversations", self._create_conversation),
            web.post(c + "/conversations/{conversation}/activities", self._send_to_conversation),
            web.post(c + "/conversations/{conversation}/activities/{activity}", self._reply_to_activity),
            web.put(c + "/conversations/{conversation}/activities/{activity}", self._update_activity),
            web.delete(c + "/conversations/{conversation}/activities/{activity}", self._delete_activity),
            web.get(c + "/conversations/{conversation}/members", self._get_members),
            web.get(c + "/conversations/{conversation}/pagedmembers", self._get_paged_members),
            web.get(c + "/conversations/{conversation}/members/{member}", self._get_member),
            web.get(c + "/teams/{team}", self._get_team_details),
            web.get(c + "/teams/{team}/conversations", self._get_team_channels),
            *delegated_graph_routes(self),  # /v1.0/me, /v1.0/me/joinedTeams (sandbox/graph_delegated.py)
        ])
        app.router.add_routes(self._control_routes())  # the Teams client over HTTP (end of file)
        return app

    async def _client_session(self, _app: web.Application) -> AsyncIterator[None]:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        yield
        pending = list(self._notifications)  # the bot may be gone already: do not wait for it
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self._session.close()
        self._session = None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Log every request, apply injected faults, render errors in the service's shape."""
        entry: dict[str, Any] = {
            "method": request.method, "path": request.path, "query": dict(request.query),
            "status": None, "time": self._clock(), "authorization": request.headers.get("Authorization"),
            "fault": None, "rate_limited": None,
        }
        self.requests.append(entry)
        chaos, chaos_delay = self._chaos.draw(request) if self._chaos else (None, 0.0)
        delay = self._take_fault(request, ("delay",))
        if delay or chaos_delay:
            entry["fault"] = "delay"  # unless it also fails, below
            await asyncio.sleep((delay.seconds if delay else 0.0) + chaos_delay)
        fault = self._take_fault(request, ("status", "reset"))
        try:
            if self._identity is not None:
                self._check_token(request)
            if (fault and fault.kind == "reset") or (not fault and chaos == "reset"):
                entry["fault"] = "reset"
                if request.transport is not None:
                    request.transport.close()
                raise asyncio.CancelledError  # aiohttp drops the request without answering
            if fault:
                entry["fault"] = "status"
                raise SandboxError(fault.status, headers=(
                    {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}))
            if isinstance(chaos, int):
                entry["fault"] = "status"
                raise SandboxError(chaos)
            await self._apply_rate_limits(request, entry)  # after faults: they do not count
            response = await handler(request)
        except SandboxError as exc:
            response = self._error_response(request, exc)
        except web.HTTPException as exc:  # no such route or method
            response = self._error_response(request, SandboxError(exc.status, message=exc.reason))
        entry["status"] = response.status
        if response.status == 429:
            self.throttled_count += 1
        return response

    def _error_response(self, request: web.Request, exc: SandboxError) -> web.Response:
        if request.path.startswith(GRAPH_PREFIX):
            request_id = str(uuid.uuid4())
            body = {"error": {
                "code": exc.code or _GRAPH_CODES.get(exc.status, "UnknownError"),
                "message": exc.message or f"Request failed with status {exc.status}.",
                "innerError": {
                    "date": fx.iso_time(self._clock())[:19],
                    "request-id": request_id,
                    "client-request-id": request.headers.get("client-request-id", request_id),
                },
            }}
            headers = {"request-id": request_id, **exc.headers}
        else:
            body = {"error": {
                "code": exc.code or _CONNECTOR_CODES.get(exc.status, "ServiceError"),
                "message": exc.message or f"Request failed with status {exc.status}.",
            }}
            headers = dict(exc.headers)
        return web.json_response(body, status=exc.status, headers=headers)

    # ------------------------------------------------------------ opt-in token enforcement

    def require_tokens(self, identity: IdentitySandbox) -> None:
        """Check ``Authorization: Bearer`` tokens like Graph and the connector do, against
        tokens issued by ``identity``, and sign activities sent to the bot with its
        ``channel_token``. Graph: aud Graph, tid the sandbox's tenant, else 401
        ``InvalidAuthenticationToken``. Connector: aud ``https://api.botframework.com`` and
        appid the bot's, else 401 ``Unauthorized``. Checked before injected faults."""
        self._identity = identity

    def _check_token(self, request: web.Request) -> None:
        assert self._identity is not None
        graph = request.path.startswith(GRAPH_PREFIX)
        if not graph and not request.path.startswith(CONNECTOR_PREFIX):
            return
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        try:
            if scheme.lower() != "bearer" or not token.strip():
                raise TokenError("Access token is empty.")
            if graph:
                self._identity.verify_access_token(
                    token.strip(), audiences=(GRAPH_RESOURCE, GRAPH_RESOURCE + "/", GRAPH_APP_ID),
                    tenant=self.tenant_id)
            else:
                self._identity.verify_access_token(
                    token.strip(), audiences=(BOT_FRAMEWORK_RESOURCE,), app_id=self.bot_app_id)
        except TokenError as exc:
            if graph:
                raise SandboxError(401, "InvalidAuthenticationToken", str(exc), headers={
                    "WWW-Authenticate": 'Bearer realm="", authorization_uri='
                    '"https://login.microsoftonline.com/common/oauth2/authorize", '
                    f'client_id="{GRAPH_APP_ID}"'}) from None
            raise SandboxError(401, "Unauthorized", "Authorization has been denied for this request.") from None

    # ------------------------------------------------------------ shared helpers

    def _now_activity_id(self) -> str:
        """13-digit millisecond ids like Teams', strictly increasing."""
        self._last_activity_ms = max(int(self._clock() * 1000), self._last_activity_ms + 1)
        return str(self._last_activity_ms)

    async def _json_body(self, request: web.Request, *, limit: int | None = None) -> dict[str, Any]:
        if not request.content_type == "application/json":
            raise SandboxError(415, message="Content-Type must be application/json.")
        raw = await request.read()
        if limit is not None and len(raw) > limit:
            raise SandboxError(413, message="Message size too large.")
        try:
            body = json.loads(raw)
        except ValueError:
            raise SandboxError(400, message="The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise SandboxError(400, message="The request body must be a JSON object.")
        return body

    def _team_ref(self, team: Team) -> dict[str, Any]:
        return {"id": team.id, "name": team.name, "aadGroupId": team.aad_group_id, "tenantId": self.tenant_id}

    def _find_channel(self, channel_id: str) -> Channel:
        for team in self.teams.values():
            if channel_id in team.channels:
                return team.channels[channel_id]
        raise KeyError(channel_id)

    def _team_of_channel(self, channel_id: str) -> Team:
        return next(t for t in self.teams.values() if channel_id in t.channels)

    def _counts_against_cap(self, channel: Channel) -> bool:
        """Live channels, and deleted ones for 30 days (names stay taken meanwhile too)."""
        return channel.deleted is None or self._clock() - channel.deleted < DELETED_CHANNEL_RETENTION

    def _record_post(self, channel: Channel, sender: dict[str, Any], text: str,
                     attachments: list[dict[str, Any]], reply_to: str | None, mention_bot: bool = False) -> Post:
        post = Post(id=self._now_activity_id(), channel_id=channel.id, sender=sender, text=text,
                    attachments=attachments, created=self._clock(), reply_to=reply_to, mention_bot=mention_bot)
        self._posts[post.id] = post
        if reply_to:
            self._posts[reply_to].replies.append(post.id)
        else:
            channel.posts.append(post.id)
        return post

    def _post_snapshot(self, post: Post) -> dict[str, Any]:
        return {
            "id": post.id, "from": dict(post.sender), "text": post.text,
            "attachments": post.attachments, "created": post.created, "updated": post.updated,
            "deleted": post.deleted is not None, "reply_to": post.reply_to, "shown_to": dict(post.shown_to),
        }

    # ------------------------------------------------------------ Graph

    def _graph_team(self, request: web.Request) -> Team:
        group = request.match_info["group"]
        team = next((t for t in self.teams.values() if t.aad_group_id == group), None)
        if team is None:
            raise SandboxError(404, "NotFound", f"No team found with Group Id {group}")
        return team

    def _graph_channel(self, request: web.Request) -> tuple[Team, Channel]:
        team = self._graph_team(request)
        channel = team.channels.get(request.match_info["channel"])
        if channel is None or channel.deleted is not None:
            raise SandboxError(404, "NotFound", "Channel not found.")
        return team, channel

    def _channel_json(self, team: Team, channel: Channel) -> dict[str, Any]:
        return {
            "id": channel.id,
            "createdDateTime": fx.iso_time(channel.created),
            "displayName": channel.name,
            "description": channel.description,
            "isFavoriteByDefault": None,
            "email": "",
            "tenantId": self.tenant_id,
            "webUrl": (f"https://teams.microsoft.com/l/channel/{quote(channel.id, safe='')}/"
                       f"{quote(channel.name, safe='')}?groupId={team.aad_group_id}&tenantId={self.tenant_id}"),
            "membershipType": "standard",
            "isArchived": False,
        }

    @staticmethod
    def _check_channel_name(name: Any) -> None:
        """Teams' documented channel name rules."""
        problem = None
        if not isinstance(name, str) or not name.strip():
            problem = "displayName is required."
        elif len(name) > MAX_CHANNEL_NAME:
            problem = f"displayName must be at most {MAX_CHANNEL_NAME} characters."
        elif any(ch in _FORBIDDEN_NAME_CHARS or ord(ch) < 0x20 or 0x80 <= ord(ch) <= 0x9F for ch in name):
            problem = "displayName contains a character that is not allowed."
        elif ".." in name or name.startswith(("_", ".")) or name.endswith("."):
            problem = "displayName cannot contain '..', start with '_' or '.', or end with '.'."
        elif name.strip().lower() in _RESERVED_NAMES or "_vti_" in name.lower():
            problem = "displayName is a reserved word."
        if problem:
            raise SandboxError(400, "BadRequest", f"Invalid channel name: {problem}")

    async def _graph_create_channel(self, request: web.Request) -> web.Response:
        team = self._graph_team(request)
        body = await self._json_body(request)
        name = body.get("displayName")
        self._check_channel_name(name)
        if body.get("membershipType", "standard") != "standard":
            raise SandboxError(400, "BadRequest", "The sandbox only creates standard channels.")
        counted = [c for c in team.channels.values() if self._counts_against_cap(c)]
        if any(c.name.lower() == name.lower() for c in counted):
            raise SandboxError(400, "NameAlreadyExists", f"Channel name already existed, please use other name: {name}")
        if len(counted) >= team.channel_cap:
            raise SandboxError(403, "Forbidden", "This team has exceeded the Max allowed channels")
        channel = Channel(id=fx.new_thread_id(), name=name, description=body.get("description"), created=self._clock())
        team.channels[channel.id] = channel
        self._notify_in_background(team, channel, "channelCreated")
        payload = {"@odata.context": f"{self.graph_url}/$metadata#teams('{team.aad_group_id}')/channels/$entity",
                   **self._channel_json(team, channel)}
        return web.json_response(payload, status=201)

    async def _graph_permission_grants(self, request: web.Request) -> web.Response:
        """``GET /teams/{id}/permissionGrants``: the resource-specific permissions granted to
        apps in the team (``resourceSpecificPermissionGrant``)."""
        team = self._graph_team(request)
        grants = [{
            "id": base64.b64encode(f"{team.aad_group_id}/{name}".encode()).decode(), "deletedDateTime": None,
            "clientId": str(uuid.uuid5(uuid.NAMESPACE_URL, self.bot_app_id)), "clientAppId": self.bot_app_id,
            "resourceAppId": "00000003-0000-0000-c000-000000000000", "permissionType": "Application",
            "permission": name,
        } for name in sorted(team.rsc_grants)]
        return web.json_response({
            "@odata.context": f"{self.graph_url}/$metadata#teams('{team.aad_group_id}')/permissionGrants",
            "value": grants,
        })

    async def _graph_list_members(self, request: web.Request) -> web.Response:
        """``GET /teams/{id}/members``: the roster with roles (``["owner"]`` for owners,
        ``[]`` for members), as ``aadUserConversationMember`` objects."""
        team = self._graph_team(request)
        members = []
        for aad_id in team.members:
            user = self.users[aad_id]
            members.append({
                "@odata.type": "#microsoft.graph.aadUserConversationMember",
                "id": base64.b64encode(f"{team.aad_group_id}##{aad_id}".encode()).decode(),
                "roles": ["owner"] if aad_id in team.owners else [],
                "displayName": user["name"], "userId": aad_id, "email": user["email"],
                "tenantId": self.tenant_id, "visibleHistoryStartDateTime": "0001-01-01T00:00:00Z",
            })
        return web.json_response({
            "@odata.context": f"{self.graph_url}/$metadata#teams('{team.aad_group_id}')/members",
            "@odata.count": len(members), "value": members,
        })

    async def _graph_list_channels(self, request: web.Request) -> web.Response:
        team = self._graph_team(request)
        live = [c for c in team.channels.values() if c.deleted is None]
        filter_ = request.query.get("$filter")
        if filter_ is not None:
            match = _FILTER_EQ.match(filter_)
            if not match:
                raise SandboxError(400, "BadRequest", f"Only $filter=displayName eq '...' is supported: {filter_}")
            wanted = match.group(1).replace("''", "'").lower()
            live = [c for c in live if c.name.lower() == wanted]
        return web.json_response({
            "@odata.context": f"{self.graph_url}/$metadata#teams('{team.aad_group_id}')/channels",
            "@odata.count": len(live),
            "value": [self._channel_json(team, c) for c in live],
        })

    async def _graph_get_channel(self, request: web.Request) -> web.Response:
        return web.json_response(self._channel_json(*self._graph_channel(request)))

    async def _graph_delete_channel(self, request: web.Request) -> web.Response:
        team, channel = self._graph_channel(request)
        if channel.id == team.id:
            raise SandboxError(400, "BadRequest", "The General channel cannot be deleted.")
        channel.deleted = self._clock()
        self._notify_in_background(team, channel, "channelDeleted")
        return web.Response(status=204)

    def _chat_message(self, team: Team, post: Post) -> dict[str, Any]:
        """A post as Graph's ``chatMessage`` (cards become ``<attachment>`` references)."""
        if post.sender["kind"] == "bot":
            sender = {"application": {"id": self.bot_app_id, "displayName": post.sender["name"],
                                      "applicationIdentityType": "bot"}, "device": None, "user": None}
        else:
            sender = {"application": None, "device": None, "user": {
                "id": post.sender["aadObjectId"], "displayName": post.sender["name"],
                "userIdentityType": "aadUser", "tenantId": self.tenant_id}}
        attachments = []
        content = post.text
        if post.mention_bot:
            content = f'<at id="0">{self.bot_name}</at> {content}'
        for attachment in post.attachments:
            object_id = self._inline_object_id(attachment)
            if object_id is not None:  # Graph shows inline images as hostedContents in the body
                content = content.replace(self._ams_url(object_id), self._hosted_url(team, post, object_id))
                continue
            att_id = attachment.get("id") or uuid.uuid4().hex
            raw = attachment.get("content")
            attachments.append({
                "id": att_id, "contentType": attachment.get("contentType"),
                "contentUrl": attachment.get("contentUrl"), "name": attachment.get("name"),
                "content": raw if raw is None or isinstance(raw, str) else json.dumps(raw),
                "thumbnailUrl": None, "teamsAppId": None,
            })
            content += f'<attachment id="{att_id}"></attachment>'
        return {
            "id": post.id, "replyToId": post.reply_to, "etag": str(int((post.updated or post.created) * 1000)),
            "messageType": "message", "createdDateTime": fx.iso_time(post.created),
            "lastModifiedDateTime": fx.iso_time(post.deleted or post.updated or post.created),
            "lastEditedDateTime": fx.iso_time(post.updated) if post.updated else None,
            "deletedDateTime": fx.iso_time(post.deleted) if post.deleted else None,
            "subject": None, "summary": None, "chatId": None, "importance": "normal", "locale": "en-us",
            "webUrl": None, "channelIdentity": {"teamId": team.aad_group_id, "channelId": post.channel_id},
            "from": sender,
            "body": {"contentType": "html", "content": "" if post.deleted else content},
            "attachments": [] if post.deleted else attachments,
            "mentions": ([{"id": 0, "mentionText": self.bot_name, "mentioned": {"application": {
                "id": self.bot_app_id, "displayName": self.bot_name}}}] if post.mention_bot else []),
            "reactions": [],
        }

    def _graph_post(self, request: web.Request) -> tuple[Team, Channel, Post]:
        team, channel = self._graph_channel(request)
        post = self._posts.get(request.match_info["message"])
        if post is None or post.channel_id != channel.id or post.reply_to:
            raise SandboxError(404, "NotFound", "Message not found.")
        return team, channel, post

    async def _graph_list_messages(self, request: web.Request) -> web.Response:
        """Root posts newest first, ``$top`` per page (default 20, at most 50, as Graph
        documents) and ``@odata.nextLink`` to the next page."""
        team, channel = self._graph_channel(request)
        try:
            top = int(request.query.get("$top", "20"))
            skip = int(request.query.get("$skiptoken", "0"))
        except ValueError:
            raise SandboxError(400, "BadRequest", "$top and $skiptoken must be numbers") from None
        if not 1 <= top <= 50:
            raise SandboxError(400, "BadRequest", "$top must be between 1 and 50")
        newest_first = list(reversed(channel.posts))
        page = newest_first[skip:skip + top]
        body: dict[str, Any] = {"value": [self._chat_message(team, self._posts[p]) for p in page]}
        if skip + top < len(newest_first):
            body["@odata.nextLink"] = str(request.url.update_query({"$top": str(top), "$skiptoken": str(skip + top)}))
        return web.json_response(body)

    async def _graph_get_message(self, request: web.Request) -> web.Response:
        team, _, post = self._graph_post(request)
        return web.json_response(self._chat_message(team, post))

    async def _graph_list_replies(self, request: web.Request) -> web.Response:
        team, _, post = self._graph_post(request)
        return web.json_response({"value": [self._chat_message(team, self._posts[r]) for r in post.replies]})

    def _graph_reply(self, request: web.Request) -> tuple[Team, Post]:
        team, _, root = self._graph_post(request)
        reply_id = request.match_info["reply"]
        if reply_id not in root.replies:
            raise SandboxError(404, "NotFound", "Message not found.")
        return team, self._posts[reply_id]

    async def _graph_get_reply(self, request: web.Request) -> web.Response:
        return web.json_response(self._chat_message(*self._graph_reply(request)))

    # inline images, files, media ------------------------------------------------------

    def _inline_object_id(self, attachment: dict[str, Any]) -> str | None:
        """The AMS object of an inline-image attachment the sandbox's Teams client sent."""
        url = attachment.get("contentUrl") or ""
        prefix = self.service_url + "v3/attachments/"
        if not (attachment.get("contentType") or "").startswith("image/") or not url.startswith(prefix):
            return None
        object_id = url[len(prefix):].split("/")[0]
        return object_id if object_id in self._ams else None

    def _hosted_url(self, team: Team, post: Post, object_id: str) -> str:
        hosted = base64.urlsafe_b64encode(f"id={object_id},type=1,url={self._ams_url(object_id)}".encode()).decode()
        path = f"messages/{post.reply_to}/replies/{post.id}" if post.reply_to else f"messages/{post.id}"
        channel = f"{self.graph_url}/teams/{team.aad_group_id}/channels/{post.channel_id}"
        return f"{channel}/{path}/hostedContents/{hosted}/$value"

    async def _graph_hosted_content(self, request: web.Request) -> web.Response:
        if "reply" in request.match_info:
            _, post = self._graph_reply(request)
        else:
            _, _, post = self._graph_post(request)
        try:
            decoded = base64.urlsafe_b64decode(request.match_info["hosted"]).decode()
            object_id = dict(part.split("=", 1) for part in decoded.split(",") if "=" in part)["id"]
        except (binascii.Error, UnicodeDecodeError, KeyError, ValueError):
            raise SandboxError(404, "NotFound", "Hosted content not found.") from None
        if not any(self._inline_object_id(a) == object_id for a in post.attachments):
            raise SandboxError(404, "NotFound", "Hosted content not found.")
        blob = self._ams[object_id]
        if not blob.reachable:
            raise SandboxError(404, "NotFound", "Hosted content not found.")
        return web.Response(body=blob.content, content_type=blob.content_type)

    def _shared_file(self, request: web.Request) -> tuple[str, _Blob]:
        """The file a sharing id (``u!`` + unpadded base64url of its URL) names, as Graph's
        ``/shares/{shareIdOrEncodedSharingUrl}`` resolves it."""
        share = request.match_info["share"]
        if not share.startswith("u!"):
            raise SandboxError(400, "invalidRequest", "Only encoded sharing URLs (u!...) are supported.")
        raw = share[2:]
        try:
            url = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise SandboxError(400, "invalidRequest", "Malformed sharing URL.") from None
        blob = self._files.get(url)
        if blob is None or not blob.reachable:
            raise SandboxError(404, "itemNotFound", "The resource could not be found.")
        if blob.forbidden:
            raise SandboxError(403, "accessDenied", "Access denied")
        return url, blob

    def _drive_item(self, url: str, blob: _Blob) -> dict[str, Any]:
        item_id = uuid.uuid5(uuid.NAMESPACE_URL, url).hex.upper()[:26]
        return {
            "@odata.context": f"{self.graph_url}/$metadata#driveItem",
            "id": item_id, "name": blob.name, "size": len(blob.content), "webUrl": url,
            "file": {"mimeType": blob.content_type},
            "parentReference": {"driveType": "documentLibrary", "siteId": urlparse(url).hostname},
        }

    async def _graph_shared_item(self, request: web.Request) -> web.Response:
        return web.json_response(self._drive_item(*self._shared_file(request)))

    async def _graph_shared_item_content(self, request: web.Request) -> web.Response:
        """302 to a short-lived pre-authenticated URL, as Graph answers for file content."""
        url, _ = self._shared_file(request)
        token = uuid.uuid4().hex
        self._download_tokens[token] = url
        return web.Response(status=302, headers={"Location": f"{self.base_url}/_download/{token}"})

    async def _preauthenticated_download(self, request: web.Request) -> web.Response:
        url = self._download_tokens.pop(request.match_info["token"], None)
        blob = self._files.get(url) if url else None
        if blob is None:
            raise SandboxError(404, "itemNotFound", "The download link expired.")
        return web.Response(body=blob.content, content_type=blob.content_type, headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(blob.name)}"})

    async def _public_media(self, request: web.Request) -> web.Response:
        blob = self._media.get(request.match_info["media"])
        if blob is None or not blob.reachable:
            raise SandboxError(404, message="Not found.")
        return web.Response(body=blob.content, content_type=blob.content_type)

    def _connector_blob(self, request: web.Request) -> _Blob:
        blob = self._ams.get(request.match_info["attachment"])
        if blob is None or not blob.reachable:
            raise SandboxError(404, "NotFound", "Attachment not found.")
        return blob

    async def _connector_attachment_info(self, request: web.Request) -> web.Response:
        blob = self._connector_blob(request)
        return web.json_response({"name": blob.name, "type": blob.content_type,
                                  "views": [{"viewId": "original", "size": len(blob.content)}]})

    async def _connector_attachment_view(self, request: web.Request) -> web.Response:
        blob = self._connector_blob(request)
        if request.match_info["view"] not in ("original", "thumbnail"):
            raise SandboxError(404, "NotFound", "No such view.")
        return web.Response(body=blob.content, content_type=blob.content_type)

    # ------------------------------------------------------------ Bot Connector

    def _conversation(self, conversation_id: str) -> tuple[Team, Channel, str | None]:
        """(team, channel, thread root id) of a channel conversation id, as Teams checks it."""
        channel_id, _, root = conversation_id.partition(";messageid=")
        try:
            channel = self._find_channel(channel_id)
        except KeyError:
            raise SandboxError(404, "ConversationNotFound", "Conversation not found.") from None
        team = self._team_of_channel(channel_id)
        if not team.bot_installed:
            raise SandboxError(403, "BotNotInConversationRoster", "The bot is not part of the conversation roster.")
        if channel.deleted is not None:
            raise SandboxError(404, "ConversationNotFound", "Conversation not found.")
        if root and (root not in self._posts or self._posts[root].channel_id != channel.id):
            raise SandboxError(404, "ConversationNotFound", "Conversation not found.")
        return team, channel, root or None

    def _check_activity(self, activity: Any) -> dict[str, Any]:
        if not isinstance(activity, dict) or not activity.get("type"):
            raise SandboxError(400, "BadArgument", "Activity must have a type.")
        if activity["type"] not in ("message", "typing"):
            raise SandboxError(400, "BadArgument", f"Unsupported activity type {activity['type']!r}.")
        attachments = activity.get("attachments") or []
        if activity["type"] == "message" and not activity.get("text") and not attachments:
            raise SandboxError(400, "BadArgument", "A message needs text or attachments.")
        for attachment in attachments:
            if not isinstance(attachment, dict) or not attachment.get("contentType"):
                raise SandboxError(400, "BadArgument", "Every attachment needs a contentType.")
            if attachment["contentType"] == ADAPTIVE_CARD and len(
                    json.dumps(attachment.get("content"), separators=(",", ":")).encode()) > MAX_CARD_BYTES:
                raise SandboxError(413, "MessageSizeTooBig", "Adaptive Card exceeds 28 KB.")
        return activity

    def _bot_sender(self) -> dict[str, Any]:
        return {"kind": "bot", "id": self.bot_id, "name": self.bot_name}

    def _post_activity(self, channel: Channel, activity: dict[str, Any], thread_root: str | None) -> str:
        """Record a bot message (typing indicators only get an id)."""
        if activity["type"] == "typing":
            return self._now_activity_id()
        post = self._record_post(channel, self._bot_sender(), activity.get("text") or "",
                                 list(activity.get("attachments") or []), thread_root)
        return post.id

    async def _create_conversation(self, request: web.Request) -> web.Response:
        """A new root post in a channel (Teams' only kind of "new conversation" here)."""
        params = await self._json_body(request, limit=MAX_ACTIVITY_BYTES)
        channel_id = ((params.get("channelData") or {}).get("channel") or {}).get("id")
        if not channel_id:
            raise SandboxError(400, "BadArgument", "channelData.channel.id is required (channel conversations only).")
        bot_id = (params.get("bot") or {}).get("id")
        if bot_id and bot_id != self.bot_id:
            raise SandboxError(400, "BadArgument", f"Bot id {bot_id} is not this bot.")
        _, channel, _ = self._conversation(channel_id)
        activity = self._check_activity(params.get("activity"))
        activity_id = self._post_activity(channel, activity, None)
        return web.json_response({"id": f"{channel_id};messageid={activity_id}", "activityId": activity_id,
                                  "serviceUrl": self.service_url}, status=201)

    async def _send_to_conversation(self, request: web.Request) -> web.Response:
        """New root post (bare channel id) or reply in the thread the id names."""
        _, channel, root = self._conversation(request.match_info["conversation"])
        activity = self._check_activity(await self._json_body(request, limit=MAX_ACTIVITY_BYTES))
        return web.json_response({"id": self._post_activity(channel, activity, root)}, status=201)

    async def _reply_to_activity(self, request: web.Request) -> web.Response:
        """Reply in the thread of ``activityId`` (a reply to a reply joins the same thread)."""
        _, channel, root = self._conversation(request.match_info["conversation"])
        activity = self._check_activity(await self._json_body(request, limit=MAX_ACTIVITY_BYTES))
        target = self._posts.get(request.match_info["activity"])
        if target is not None and target.channel_id == channel.id:
            root = target.reply_to or target.id
        return web.json_response({"id": self._post_activity(channel, activity, root)}, status=201)

    def _bot_post(self, request: web.Request) -> Post:
        _, channel, _ = self._conversation(request.match_info["conversation"])
        post = self._posts.get(request.match_info["activity"])
        if post is None or post.channel_id != channel.id or post.deleted is not None:
            raise SandboxError(404, "NotFound", "Activity not found.")
        if post.sender["kind"] != "bot":
            raise SandboxError(403, "Forbidden", "A bot can only change its own messages.")
        return post

    async def _update_activity(self, request: web.Request) -> web.Response:
        post = self._bot_post(request)
        activity = self._check_activity(await self._json_body(request, limit=MAX_ACTIVITY_BYTES))
        post.text = activity.get("text") or ""
        post.attachments = list(activity.get("attachments") or [])
        post.updated = self._clock()
        return web.json_response({"id": post.id})

    async def _delete_activity(self, request: web.Request) -> web.Response:
        # 200, not 204: botbuilder's connector client accepts only 200 and 202 here.
        self._bot_post(request).deleted = self._clock()
        return web.Response(status=200)

    def _member(self, aad_object_id: str) -> dict[str, Any]:
        user = self.users[aad_object_id]
        return {k: user[k] for k in ("id", "name", "aadObjectId", "email", "userPrincipalName",
                                     "givenName", "surname", "tenantId", "userRole")}

    async def _get_members(self, request: web.Request) -> web.Response:
        team, _, _ = self._conversation(request.match_info["conversation"])
        return web.json_response([self._member(m) for m in team.members])

    async def _get_paged_members(self, request: web.Request) -> web.Response:
        team, _, _ = self._conversation(request.match_info["conversation"])
        try:
            size = max(1, int(request.query.get("pageSize", "200")))
            start = int(request.query.get("continuationToken") or 0)
        except ValueError:
            raise SandboxError(400, "BadArgument", "Bad pageSize or continuationToken.") from None
        page = team.members[start:start + size]
        more = start + size < len(team.members)
        return web.json_response({"continuationToken": str(start + size) if more else None,
                                  "members": [self._member(m) for m in page]})

    async def _get_member(self, request: web.Request) -> web.Response:
        """By Teams user id (``29:…``) or AAD object id, as Teams accepts both."""
        team, _, _ = self._conversation(request.match_info["conversation"])
        wanted = request.match_info["member"]
        for aad_id in team.members:
            if wanted in (aad_id, self.users[aad_id]["id"]):
                return web.json_response(self._member(aad_id))
        raise SandboxError(404, "MemberNotFoundInConversation", "The member is not part of the conversation.")

    def _connector_team(self, request: web.Request) -> Team:
        team = self.teams.get(request.match_info["team"])
        if team is None:
            raise SandboxError(404, "NotFound", "Team not found.")
        if not team.bot_installed:
            raise SandboxError(403, "BotNotInConversationRoster", "The bot is not part of the conversation roster.")
        return team

    async def _get_team_details(self, request: web.Request) -> web.Response:
        team = self._connector_team(request)
        live = [c for c in team.channels.values() if c.deleted is None]
        return web.json_response({**self._team_ref(team), "type": "standard",
                                  "channelCount": len(live), "memberCount": len(team.members)})

    async def _get_team_channels(self, request: web.Request) -> web.Response:
        team = self._connector_team(request)
        return web.json_response({"conversations": [
            {"id": c.id, "name": None if c.id == team.id else c.name}
            for c in team.channels.values() if c.deleted is None]})

    # ------------------------------------------------------------ Teams client (to the bot)

    async def _send_to_bot(self, activity: dict[str, Any]) -> dict[str, Any]:
        """POST an activity to ``bot_endpoint``; the bot's status and (JSON or text) body."""
        if self._session is None:
            raise RuntimeError("the sandbox app is not running (its client session starts with the app)")
        headers = {}
        if self._identity is not None:
            token = self._identity.channel_token(self.bot_app_id, activity.get("serviceUrl") or self.service_url)
            headers["Authorization"] = f"Bearer {token}"
        async with self._session.post(self.bot_endpoint, json=activity, headers=headers) as response:
            text = await response.text()
            try:
                body: Any = json.loads(text) if text else None
            except ValueError:
                body = text
            result = {"activity": activity, "status": response.status, "body": body}
        self.sent_to_bot.append(result)
        return result

    def _hears_unmentioned(self, team: Team) -> bool:
        """Teams delivers every channel post to a bot only with ``ChannelMessage.Read.Group``."""
        return self.deliver_unmentioned and "ChannelMessage.Read.Group" in team.rsc_grants

    def revoke_rsc(self, team_id: str, permission: str) -> None:
        """An admin withdraws one of the app's resource-specific permissions in the team
        (or the consent silently failed): Graph stops listing it, and for
        ``ChannelMessage.Read.Group`` the bot stops hearing unmentioned posts."""
        self.team(team_id).rsc_grants.discard(permission)

    def _event_args(self, team: Team, user: dict[str, Any]) -> dict[str, Any]:
        return {"when": self._clock(), "service_url": self.service_url, "tenant_id": self.tenant_id,
                "team": self._team_ref(team), "user": user, "bot": fx.bot_account(self.bot_id, self.bot_name)}

    async def install_bot(self, team_id: str, *, by_user: dict[str, Any]) -> list[int]:
        """Install the app in a team: ``installationUpdate`` add, then the bot's
        ``conversationUpdate`` (``teamMemberAdded``). Returns the bot's two HTTP statuses."""
        team = self.team(team_id)
        team.bot_installed = True
        team.rsc_grants = set(APP_RSC_PERMISSIONS)  # consent given with the install
        bot = {"id": self.bot_id}
        sent = [
            await self._send_to_bot(fx.installation_update_activity(
                action="add", activity_id=uuid.uuid4().hex, **self._event_args(team, by_user))),
            await self._send_to_bot(fx.members_update_activity(
                added=True, members=[bot], activity_id=uuid.uuid4().hex, **self._event_args(team, by_user))),
        ]
        return [s["status"] for s in sent]

    async def uninstall_bot(self, team_id: str, *, by_user: dict[str, Any]) -> list[int]:
        """Remove the app: the connector refuses the team (403) from here on, and the bot is
        told with ``installationUpdate`` remove and ``conversationUpdate`` (``teamMemberRemoved``)."""
        team = self.team(team_id)
        team.bot_installed = False
        bot = {"id": self.bot_id}
        sent = [
            await self._send_to_bot(fx.installation_update_activity(
                action="remove", activity_id=uuid.uuid4().hex, **self._event_args(team, by_user))),
            await self._send_to_bot(fx.members_update_activity(
                added=False, members=[bot], activity_id=uuid.uuid4().hex, **self._event_args(team, by_user))),
        ]
        return [s["status"] for s in sent]

    async def person_deletes_channel(self, team_id: str, channel_id: str, *, by_user: dict[str, Any]) -> int | None:
        """A member deletes a channel in the Teams UI: it is deleted as ``delete_channel``
        does and, if the bot is installed, Teams tells it (``conversationUpdate``,
        ``channelDeleted``). Returns the bot's HTTP status (None: the bot is not installed)."""
        team = self.team(team_id)
        channel = team.channels[channel_id]
        if by_user["aadObjectId"] not in team.members:
            raise ValueError(f"{by_user['name']} is not a member of {team.name}")
        if channel.id == team.id:
            raise ValueError("the General channel cannot be deleted")
        if channel.deleted is not None:
            raise ValueError(f"channel {channel_id} is already deleted")
        channel.deleted = self._clock()
        if not team.bot_installed:
            return None
        return (await self._send_to_bot(self._channel_event(team, channel, "channelDeleted", by_user)))["status"]

    def _channel_event(self, team: Team, channel: Channel, event_type: str,
                       actor: dict[str, Any] | None = None) -> dict[str, Any]:
        """The channel event Teams sends; ``actor`` None: the app itself, through Graph."""
        actor = actor or fx.bot_account(self.bot_id, self.bot_name)
        return fx.channel_event_activity(event_type=event_type, activity_id=uuid.uuid4().hex,
                                         channel={"id": channel.id, "name": channel.name},
                                         **self._event_args(team, actor))

    def _notify_in_background(self, team: Team, channel: Channel, event_type: str) -> None:
        """Tell the bot about a change an app made through Graph, without holding up Graph's
        answer (Teams does not wait for the bot either). Events reach the bot one at a time,
        in the order they happened; ``drain_notifications`` waits for them."""
        if not team.bot_installed:
            return
        activity = self._channel_event(team, channel, event_type)
        task = asyncio.get_running_loop().create_task(self._deliver(activity, self._last_notification))
        self._notifications.add(task)
        task.add_done_callback(self._notifications.discard)
        self._last_notification = task

    async def _deliver(self, activity: dict[str, Any], after: asyncio.Task[None] | None) -> None:
        if after is not None and not after.done():
            await asyncio.wait([after])
        try:
            await self._send_to_bot(activity)
        except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:  # the bot is down: Teams gives up too
            self.sent_to_bot.append({"activity": activity, "status": None, "body": None, "error": repr(exc)})

    async def drain_notifications(self) -> None:
        """Wait until every channel event sent in the background has been answered by the bot."""
        while self._notifications:
            await asyncio.gather(*self._notifications)

    async def press_button(
        self, team_id: str, channel_id: str, post_id: str, user: dict[str, Any], *, verb: str,
        data: dict[str, Any],
    ) -> dict[str, Any]:
        """A person presses an ``Action.Execute`` button on a bot post. Like Teams, a card in
        the bot's answer replaces the card for that person (``post["shown_to"]``)."""
        team = self.team(team_id)
        if user["aadObjectId"] not in team.members:
            raise ValueError(f"{user['name']} is not a member of {team.name}")
        post = self._posts[post_id]
        activity = fx.card_action_activity(
            channel_id=channel_id, card_post_id=post_id, verb=verb, data=data, **self._event_args(team, user)
        )
        result = await self._send_to_bot(activity)
        body = result["body"] if isinstance(result["body"], dict) else {}
        if body.get("type") == "application/vnd.microsoft.card.adaptive":
            post.shown_to[user["aadObjectId"]] = body.get("value")
        return result

    async def user_posts(
        self, team_id: str, channel_id: str, user: dict[str, Any], text_html: str, *,
        reply_to: str | None = None, mention_bot: bool = False,
        attachments: list[dict[str, Any]] | None = None, deliver: bool = True,
        entities: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A person posts in a channel (a reply when ``reply_to`` names a post of it).

        The post is always visible through Graph; it reaches the bot only when the bot is
        installed, hears it (``deliver_unmentioned`` or a mention) and ``deliver`` is true
        (false simulates a lost delivery). Returns ``{"activity", "status", "body"}``, with
        status and body None when nothing was delivered.
        """
        team = self.team(team_id)
        channel = team.channels[channel_id]
        if channel.deleted is not None:
            raise ValueError(f"channel {channel_id} is deleted")
        if user["aadObjectId"] not in team.members:
            raise ValueError(f"{user['name']} is not a member of {team.name}")
        root = None
        if reply_to is not None:
            target = self._posts[reply_to]
            root = target.reply_to or target.id
        sender = {"kind": "user", "id": user["id"], "name": user["name"], "aadObjectId": user["aadObjectId"]}
        post = self._record_post(channel, sender, text_html, list(attachments or []), root, mention_bot)
        activity = fx.channel_message_activity(
            activity_id=post.id, channel_id=channel_id, root_id=root or post.id, text_html=text_html,
            mention_bot=mention_bot, attachments=attachments, entities=entities, **self._event_args(team, user))
        if deliver and team.bot_installed and (mention_bot or self._hears_unmentioned(team)):
            return await self._send_to_bot(activity)
        return {"activity": activity, "status": None, "body": None}

    async def user_edits(self, post_id: str, user: dict[str, Any], text_html: str, *,
                         deliver: bool = True) -> dict[str, Any]:
        """The author edits their post: Graph shows the new text, and the bot hears a
        ``messageUpdate`` when it heard the post. Same return as :meth:`user_posts`."""
        return await self._user_changes(post_id, user, "edit", text_html, deliver)

    async def user_deletes(self, post_id: str, user: dict[str, Any], *, deliver: bool = True) -> dict[str, Any]:
        """The author deletes their post (Teams' soft delete): ``messageDelete`` to the bot."""
        return await self._user_changes(post_id, user, "delete", None, deliver)

    async def _user_changes(self, post_id: str, user: dict[str, Any], kind: str, text_html: str | None,
                            deliver: bool) -> dict[str, Any]:
        post = self._posts[post_id]
        if post.sender.get("id") != user["id"]:
            raise ValueError(f"{user['name']} did not write post {post_id}: only its author can change it")
        if post.deleted is not None:
            raise ValueError(f"post {post_id} is deleted")
        team = self._team_of_channel(post.channel_id)
        if kind == "edit":
            post.text, post.updated = text_html or "", self._clock()
        else:
            post.deleted = self._clock()
        activity = fx.message_change_activity(
            kind=kind, message_id=post.id, channel_id=post.channel_id, root_id=post.reply_to or post.id,
            text_html=text_html, **self._event_args(team, user))
        if deliver and team.bot_installed and (post.mention_bot or self._hears_unmentioned(team)):
            return await self._send_to_bot(activity)
        return {"activity": activity, "status": None, "body": None}

    # ------------------------------------------------------------ Teams client over HTTP (control routes)
    #
    # JSON in and out, no auth, under /_sandbox: what the sandbox page (sandbox/page.py) and
    # scripts use to look at the tenant and act as its people. ``user`` in a body is a
    # member's AAD object id, Teams user id or email (any case). Team ids are the team's
    # thread id or AAD group id; ids with ``:`` and ``@`` are percent-encoded in paths.

    def _control_routes(self) -> list[web.RouteDef]:
        team = CONTROL_PREFIX + "/teams/{team}"
        post = team + "/channels/{channel}/posts/{post}"
        return [
            web.get(CONTROL_PREFIX + "/teams", self._http_teams),
            web.get(team + "/channels", self._http_channels),
            web.get(team + "/channels/{channel}/posts", self._http_posts),
            web.post(team + "/channels/{channel}/posts", self._http_user_posts),
            web.post(post + "/replies", self._http_user_replies),
            web.post(post + "/press", self._http_press_button),
            web.post(team + "/channels/{channel}/delete", self._http_person_deletes_channel),
            web.get(CONTROL_PREFIX + "/rate-limits", self._http_rate_limits),
            web.put(CONTROL_PREFIX + "/rate-limits", self._http_set_rate_limits),
            web.get(CONTROL_PREFIX + "/chaos", self._http_chaos),
            web.put(CONTROL_PREFIX + "/chaos", self._http_set_chaos),
        ]

    def _http_user(self, body: dict[str, Any]) -> dict[str, Any]:
        wanted = body.get("user")
        if not isinstance(wanted, str) or not wanted:
            raise SandboxError(400, "BadArgument", "user (AAD object id, Teams user id or email) is required.")
        for user in self.users.values():
            if wanted in (user["aadObjectId"], user["id"]) or wanted.lower() == user["email"].lower():
                return user
        raise SandboxError(404, "NotFound", f"No user {wanted}.")

    def _http_team(self, request: web.Request) -> Team:
        try:
            return self.team(request.match_info["team"])
        except KeyError:
            raise SandboxError(404, "NotFound", "Team not found.") from None

    def _http_channel(self, request: web.Request) -> tuple[Team, Channel]:
        team = self._http_team(request)
        channel = team.channels.get(request.match_info["channel"])
        if channel is None:
            raise SandboxError(404, "NotFound", "Channel not found.")
        return team, channel

    def _http_post(self, request: web.Request) -> tuple[Team, Channel, Post]:
        team, channel = self._http_channel(request)
        post = self._posts.get(request.match_info["post"])
        if post is None or post.channel_id != channel.id:
            raise SandboxError(404, "NotFound", "Post not found.")
        return team, channel, post

    async def _http_teams(self, request: web.Request) -> web.Response:
        """Every team with its members and whether the bot is installed."""
        return web.json_response({"teams": [
            {**self._team_ref(t), "botInstalled": t.bot_installed, "members": [self._member(m) for m in t.members]}
            for t in self.teams.values()]})

    async def _http_channels(self, request: web.Request) -> web.Response:
        """Live channels, General first (``?include_deleted=1`` adds deleted ones)."""
        team = self._http_team(request)
        include_deleted = request.query.get("include_deleted", "") not in ("", "0", "false")
        return web.json_response({"channels": [
            dict(c, general=c["id"] == team.id) for c in self.channels(team.id, include_deleted=include_deleted)]})

    async def _http_posts(self, request: web.Request) -> web.Response:
        """Root posts oldest first, each with its replies, as ``posts`` returns them."""
        _, channel = self._http_channel(request)
        return web.json_response({"posts": self.posts(channel.id)})

    async def _http_user_posts(self, request: web.Request) -> web.Response:
        """``{"user", "text", "mention_bot"?}``: a member posts (``text`` is HTML, as Teams sends)."""
        team, channel = self._http_channel(request)
        return await self._http_send(request, team, channel, None)

    async def _http_user_replies(self, request: web.Request) -> web.Response:
        """The same, as a reply in the post's thread."""
        team, channel, post = self._http_post(request)
        return await self._http_send(request, team, channel, post.id)

    async def _http_send(self, request: web.Request, team: Team, channel: Channel,
                         reply_to: str | None) -> web.Response:
        body = await self._json_body(request)
        user = self._http_user(body)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise SandboxError(400, "BadArgument", "text is required.")
        try:
            sent = await self.user_posts(team.id, channel.id, user, text, reply_to=reply_to,
                                         mention_bot=body.get("mention_bot") is True)
        except ValueError as exc:  # deleted channel, not a member
            raise SandboxError(403, "Forbidden", str(exc)) from None
        return web.json_response({"id": sent["activity"]["id"], "bot_status": sent["status"],
                                  "bot_body": sent["body"]}, status=201)

    async def _http_press_button(self, request: web.Request) -> web.Response:
        """``{"user", "verb", "data"}``: a member presses an ``Action.Execute`` button on a
        bot post; the bot's answer (a card or a message) comes back as ``bot_body``."""
        team, channel, post = self._http_post(request)
        body = await self._json_body(request)
        user = self._http_user(body)
        verb, data = body.get("verb"), body.get("data") or {}
        if not isinstance(verb, str) or not verb or not isinstance(data, dict):
            raise SandboxError(400, "BadArgument", "verb (a string) is required; data must be an object.")
        if post.sender["kind"] != "bot" or post.deleted is not None:
            raise SandboxError(400, "BadArgument", "Only the buttons of a bot's live post can be pressed.")
        try:
            result = await self.press_button(team.id, channel.id, post.id, user, verb=verb, data=data)
        except ValueError as exc:  # not a member
            raise SandboxError(403, "Forbidden", str(exc)) from None
        return web.json_response({"bot_status": result["status"], "bot_body": result["body"]})

    async def _http_person_deletes_channel(self, request: web.Request) -> web.Response:
        """``{"user"}``: a member deletes the channel; the bot hears ``channelDeleted``
        (``bot_status`` null: it is not installed)."""
        team, channel = self._http_channel(request)
        user = self._http_user(await self._json_body(request))
        try:
            status = await self.person_deletes_channel(team.id, channel.id, by_user=user)
        except ValueError as exc:  # not a member, General, already deleted
            raise SandboxError(403, "Forbidden", str(exc)) from None
        return web.json_response({"bot_status": status})

    async def _http_rate_limits(self, request: web.Request) -> web.Response:
        """The limits in force (``[[count, seconds], ...]`` by kind) and how many requests
        they refused so far (``rate_limited``)."""
        return web.json_response({**{kind: [list(pair) for pair in limits] for kind, limits in
                                     self.rate_limits.items()}, "rate_limited": len(self.rate_limited)})

    async def _http_set_rate_limits(self, request: web.Request) -> web.Response:
        """``{"thread": [[7, 1], ...], ...}``: as ``set_rate_limits`` (absent or null: unchanged,
        ``[]``: off); answers as GET does."""
        body = await self._json_body(request)
        unknown = set(body) - set(DEFAULT_RATE_LIMITS)
        if unknown:
            raise SandboxError(400, "BadArgument", f"Unknown limits: {', '.join(sorted(unknown))}.")
        if any(v is not None and not isinstance(v, list) for v in body.values()):
            raise SandboxError(400, "BadArgument", "Each limit is a list of [count, seconds] pairs.")
        try:
            self.set_rate_limits(**body)
        except ValueError as exc:
            raise SandboxError(400, "BadArgument", str(exc)) from None
        return await self._http_rate_limits(request)

    async def _http_chaos(self, request: web.Request) -> web.Response:
        """The random faults in force (``{"probability": 0}`` when off)."""
        return web.json_response(self._chaos.settings() if self._chaos else {"probability": 0})

    async def _http_set_chaos(self, request: web.Request) -> web.Response:
        """``{"probability", "statuses"?, "resets"?, "delay"?, "seed"?, "path_contains"?,
        "method"?}``: as ``chaos``; ``{"probability": 0}`` turns it off."""
        body = await self._json_body(request)
        allowed = {"probability", "statuses", "resets", "delay", "seed", "path_contains", "method"}
        if set(body) - allowed or "probability" not in body:
            raise SandboxError(400, "BadArgument", f"probability is required; the others are {sorted(allowed)}.")
        kwargs = dict(body)
        try:
            if not isinstance(kwargs.get("statuses", []), list) or not isinstance(kwargs.get("seed", 0), int) or any(
                    kwargs.get(k) is not None and not isinstance(kwargs[k], str) for k in ("path_contains", "method")):
                raise ValueError("statuses is a list; seed an integer; path_contains and method strings.")
            if not isinstance(kwargs.get("resets", False), bool):
                raise ValueError("resets is true or false.")
            self.chaos(kwargs.pop("probability"), **kwargs)
        except ValueError as exc:
            raise SandboxError(400, "BadArgument", str(exc)) from None
        return await self._http_chaos(request)


def _new_conversation_channel(raw: bytes) -> str | None:
    """``channelData.channel.id`` of a create-conversation body, if it has one."""
    try:
        params = json.loads(raw)
    except ValueError:
        return None
    channel_data = params.get("channelData") if isinstance(params, dict) else None
    channel = channel_data.get("channel") if isinstance(channel_data, dict) else None
    channel_id = channel.get("id") if isinstance(channel, dict) else None
    return channel_id if isinstance(channel_id, str) and channel_id else None


def _extension(content_type: str) -> str:
    return {"image/jpeg": "jpg", "image/svg+xml": "svg"}.get(content_type, content_type.split("/")[-1])
