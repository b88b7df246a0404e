"""The bridge's HTTP service: ``python app.py`` (surface contract: bridge-surface.md).

``create_app`` is the app factory; resources (store, HTTP session, Graph client, Bot
Framework adapter, job runner) are opened and closed in one ``cleanup_ctx`` so that
SIGTERM drains in-flight jobs before the store closes.

Data path: ``/api/neetochat/{ws}/webhooks`` → ``services/webhooks.py`` → stored job →
``services/jobs.py`` → ``services/to_teams.py``; and ``/api/messages`` →
``bots/teams_bot.py`` (a new message in a conversation channel: stored first by
``bots/channel_inbox.py``, then the bot's turn in the job loop) → stored job →
``services/to_neetochat.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import requests
from aiohttp import web
from botbuilder.integration.aiohttp import CloudAdapter, ConfigurationBotFrameworkAuthentication
from botbuilder.schema import Activity, ChannelAccount, ConversationReference
from botframework.connector.auth import AuthenticationConstants
from msrest.exceptions import DeserializationError

from bots.channel_inbox import ChannelInbox
from bots.teams_bot import TeamsBot
from services import openid_keys
from services.admin import AdminApi
from services.bot_auth import CachedCredentialFactory
from services.card_refresh import CardRefresher
from services.config import ConfigError, Settings
from services.connectors import ReusingBotFrameworkAuthentication
from services.context import BridgeContext
from services.crypto import SecretBox, load_or_create_key
from services.graph import GraphPool
from services.jobs import JobRunner
from services.log_context import configure as configure_logging
from services.metrics import Metrics
from services.rate_limits import RateLimiter
from services.reconcile import Reconciler
from services.store import Store, open_store
from services.teams import TeamsPoster
from services.web import setup_web
from services.webhooks import WebhookReceiver

log = logging.getLogger("bridge")

BOT_AUTH_NAMES = (
    "TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL",
    "TO_BOT_FROM_CHANNEL_TOKEN_ISSUER",
    "TO_CHANNEL_FROM_BOT_LOGIN_URL",
    "TO_CHANNEL_FROM_BOT_OAUTH_SCOPE",
    "VALIDATE_AUTHORITY",
)


class BotConfig:
    """The object botbuilder's ``ConfigurationBotFrameworkAuthentication`` reads, with
    Microsoft's names (APP_ID …, and the TO_* endpoints only when set)."""

    def __init__(self, settings: Settings, env: dict[str, str]) -> None:
        self.APP_ID = settings.app_id
        self.APP_PASSWORD = settings.app_password
        self.APP_TYPE = settings.app_type
        self.APP_TENANTID = settings.app_tenant_id
        # botbuilder switches to a "parameterized" cloud as soon as one endpoint is set and
        # then needs all of them: the unset ones keep the public cloud's values.
        overridden = any(env.get(name) for name in BOT_AUTH_NAMES if name != "VALIDATE_AUTHORITY")
        for name in BOT_AUTH_NAMES:
            if env.get(name):
                setattr(self, name, env[name])
            elif overridden and hasattr(AuthenticationConstants, name):
                setattr(self, name, getattr(AuthenticationConstants, name))
        if overridden and not env.get("TO_BOT_FROM_EMULATOR_OPENID_METADATA_URL"):
            emulator = AuthenticationConstants.TO_BOT_FROM_EMULATOR_OPENID_METADATA_URL
            self.TO_BOT_FROM_EMULATOR_OPENID_METADATA_URL = emulator
        # botbuilder would take the string "false" as true
        self.VALIDATE_AUTHORITY = env.get("VALIDATE_AUTHORITY", "true").strip().lower() not in ("false", "0", "no")


@dataclass
class Runtime:
    ctx: BridgeContext
    runner: JobRunner
    adapter: CloudAdapter
    bot: TeamsBot
    inbox: ChannelInbox
    receiver: WebhookReceiver
    admin: AdminApi
    metrics: Metrics


RUNTIME = web.AppKey("runtime", Runtime)
SETTINGS = web.AppKey("settings", Settings)
ENV = web.AppKey("env", dict)
STORE = web.AppKey("store", Store)


async def _bridge(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = app.get(STORE) or open_store(settings.mongodb_uri, settings.mongodb_db, settings.data_dir)
    await store.open()
    box = SecretBox(load_or_create_key(settings.secret_key, settings.data_dir))
    http = aiohttp.ClientSession()
    bot_config = BotConfig(settings, app[ENV])
    bot_auth = ReusingBotFrameworkAuthentication(
        ConfigurationBotFrameworkAuthentication(
            bot_config, credentials_factory=CachedCredentialFactory(settings, bot_config.VALIDATE_AUTHORITY)
        ),
        http,
    )
    adapter = CloudAdapter(bot_auth)
    limiter = RateLimiter()
    metrics = Metrics()
    poster = TeamsPoster(
        adapter,
        settings.app_id,
        limiter,
        metrics,
        thread_limits=settings.teams_thread_limits,
        tenant_limits=settings.teams_tenant_limits,
    )
    ctx = BridgeContext(
        settings=settings,
        store=store,
        box=box,
        http=http,
        poster=poster,
        graph=GraphPool(settings, limiter, metrics),
        limiter=limiter,
        cards=CardRefresher(poster.update),
        metrics=metrics,
    )
    runner = JobRunner(
        ctx,
        metrics,
        instance=settings.instance,
        lease_seconds=settings.job_lease_seconds,
        concurrency=settings.delivery_concurrency,
    )
    reconciler = Reconciler(store, runner.wake, interval=settings.reconcile_interval, batch=settings.reconcile_batch)
    runner.on_recovered = reconciler.poke  # deliveries work again after failures: look for gaps
    bot = TeamsBot(ctx, adapter, runner.wake, reconciler.poke)
    runner.replay = bot.replay
    app[RUNTIME] = Runtime(
        ctx=ctx,
        runner=runner,
        adapter=adapter,
        bot=bot,
        inbox=ChannelInbox(store, runner.wake),
        receiver=WebhookReceiver(store, box, runner.wake, metrics, ctx.observed.webhook_at),
        admin=AdminApi(ctx, runner.wake, reconciler),
        metrics=metrics,
    )
    # Authenticated mode: the keys that sign Teams' tokens, fetched now, off the loop.
    prefetch = None
    if not settings.local_mode:
        url = getattr(bot_config, "TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL", None)
        keys = openid_keys.install(url or AuthenticationConstants.TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL)
        prefetch = asyncio.get_running_loop().create_task(keys.prefetch())
    ctx.cards.start()
    await runner.start()
    await reconciler.start()  # a first run now: whatever was missed while the bridge was down
    log.info("bridge ready on port %s (%s mode)", settings.port, "local" if settings.local_mode else "authenticated")
    try:
        yield
    finally:
        if prefetch is not None:
            prefetch.cancel()
        await reconciler.stop()
        await runner.stop()
        await ctx.cards.stop()
        await ctx.graph.close()
        await bot_auth.close()
        await http.close()
        await store.close()


async def messages(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    with rt.runner.taking_in():
        return await _take_activity(request, rt)


async def _take_activity(request: web.Request, rt: Runtime) -> web.StreamResponse:
    """Bot Framework activities. botbuilder validates the JWT (issuer, audience, signing
    keys, serviceUrl claim); every way that can fail is a 401 here, though botbuilder
    raises different exceptions for them, and nothing is processed. A new message in a
    conversation channel is then stored and acknowledged before botbuilder parses the
    whole activity (``bots/channel_inbox.py``); anything else is a turn here."""
    if "application/json" not in request.headers.get("Content-Type", ""):
        return web.json_response({"error": "expected application/json"}, status=415)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.json_response({"error": "the body is not JSON"}, status=400)
    if not isinstance(body, dict) or not body.get("type") or not isinstance(body["type"], str):
        return web.json_response({"error": "not an activity"}, status=400)
    try:
        auth = await rt.adapter.bot_framework_authentication.authenticate_request(
            _envelope(body), request.headers.get("Authorization", "")
        )
    except requests.RequestException as exc:  # the signing keys could not be fetched: retry later
        log.error("could not fetch Bot Framework signing keys: %s", exc)
        return web.json_response({"error": "authentication unavailable"}, status=503)
    except DeserializationError:
        return web.json_response({"error": "not an activity"}, status=400)
    except Exception as exc:
        log.warning("activity refused: %s: %s", type(exc).__name__, str(exc)[:200])
        return web.json_response({"error": "unauthorized"}, status=401)
    if await rt.inbox.take(body):
        return web.Response(status=201)
    try:
        activity = Activity().deserialize(body)
    except DeserializationError:
        return web.json_response({"error": "not an activity"}, status=400)
    invoke = await rt.adapter.process_activity(auth, activity, rt.bot.on_turn)
    if invoke:
        return web.json_response(invoke.body, status=invoke.status)
    return web.Response(status=201)


def _envelope(body: dict[str, Any]) -> Activity:
    """What botbuilder's authentication reads of an activity (channel, service URL, and for
    the Emulator's skill calls the recipient's role and relatesTo), without parsing the rest:
    msrest takes longer over those few fields than over building them."""
    recipient = body.get("recipient")
    return Activity(
        type=body["type"],
        channel_id=body.get("channelId"),
        service_url=body.get("serviceUrl"),
        recipient=ChannelAccount(id=recipient.get("id"), role=recipient.get("role"))
        if isinstance(recipient, dict)
        else None,
        relates_to=ConversationReference().deserialize(body["relatesTo"]) if body.get("relatesTo") else None,
    )


async def webhooks(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    with rt.runner.taking_in():
        return await rt.receiver.handle(request)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: the store answers (within 5 s) and the delivery loop is turning."""
    rt = request.app[RUNTIME]
    try:
        await asyncio.wait_for(rt.ctx.store.ping(), 5)
    except Exception as exc:
        return web.json_response({"status": "unavailable", "reason": f"store: {type(exc).__name__}"}, status=503)
    problem = rt.runner.problem()
    if problem:
        return web.json_response({"status": "unavailable", "reason": problem}, status=503)
    return web.json_response({"status": "ready"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    return await rt.metrics.handler(request, rt.ctx.store)


def _admin(name: str):
    async def handler(request: web.Request) -> web.Response:
        return await getattr(request.app[RUNTIME].admin, name)(request)

    return handler


def create_app(
    settings: Settings | None = None, env: dict[str, str] | None = None, store: Store | None = None
) -> web.Application:
    """The bridge as an aiohttp app. ``store`` overrides the one the settings name (an
    embedding application, or a test running the same flows on another backend)."""
    env = dict(os.environ) if env is None else env
    settings = settings or Settings.from_env(env)
    app = web.Application()
    app[SETTINGS] = settings
    app[ENV] = env
    if store is not None:
        app[STORE] = store
    app.cleanup_ctx.append(_bridge)
    admin = "/api/admin/workspaces/{workspace}"
    app.add_routes(
        [
            web.post("/api/messages", messages),
            web.post("/api/neetochat/{workspace}/webhooks", webhooks),
            web.put(admin, _admin("put_workspace")),
            web.get(admin, _admin("get_workspace")),
            web.delete(admin, _admin("delete_workspace")),
            web.put(admin + "/teams", _admin("put_teams")),
            web.get(admin + "/dead-letters", _admin("list_dead_letters")),
            web.post(admin + "/dead-letters/replay", _admin("replay_dead_letters")),
            web.post(admin + "/reconcile", _admin("reconcile")),
            web.get(admin + "/health", _admin("health")),
            web.put(admin + "/routes", _admin("put_routes")),
            web.get(admin + "/identities", _admin("list_identities")),
            web.put(admin + "/identities", _admin("put_identity")),
            web.delete(admin + "/identities/{aad_object_id}", _admin("delete_identity")),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics_endpoint),
        ]
    )
    setup_web(app, settings, lambda a: a[RUNTIME])  # /teams/login, sign-in, settings pages
    return app


def main() -> None:
    configure_logging()
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    web.run_app(create_app(settings), port=settings.port, print=None, shutdown_timeout=30)


if __name__ == "__main__":
    main()
