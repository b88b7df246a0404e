"""The sign-in flow and the settings page (server-rendered, no JavaScript needed).

``GET /teams/login`` (signed link from neetoChat) → Microsoft sign-in (MSAL, code + PKCE) →
``GET /teams/callback`` → ``GET/POST /teams/pick`` (the user's joined teams, delegated
Graph) → link (``services.admin.link_team``, the operator API's own logic) → the bot
confirms in General → ``GET/POST /teams/settings`` (notification channel, update type,
transcript on close), ``POST /teams/people`` (who writes as whom in neetoChat),
``POST /teams/routes`` (routing rules: add, remove, move; ``services/web/routing_rules.py``),
``POST /teams/check-setup`` (the health checks, shown on the page) and
``POST /teams/disconnect``. ``POST /teams/check`` retries a link
that waited for the app's installation; ``GET /teams/app-package`` downloads the app package.

The session (encrypted cookie) holds, per browser: ``csrf`` (every form carries it),
``login`` (the workspace and MSAL's flow dict; popped by the callback, so a replayed or
foreign ``state`` finds nothing and is refused), ``signin`` (who signed in for which
workspace, and a handle to their delegated Graph token, which stays in this process's
memory: tokens are too big for a cookie), ``pending`` (the team chosen, membership
checked, waiting for the installation) and ``auth`` (workspaces this browser may manage,
as their authorizing user). Every refusal changes nothing.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web
from aiohttp_session import Session, get_session

from cards.settings import UPDATE_TYPE_LABELS
from manifest.build import BuildError, build_manifest, package_bytes
from services.admin import LinkError, link_team, unlink_team
from services.config import Settings
from services.context import BridgeContext
from services.errors import RemoteError
from services.graph import ChannelInfo
from services.health import Check, check_health
from services.identities import IdentityError, people, save_people
from services.routing import RoutingError
from services.store.base import Installation, Workspace
from services.team_settings import SettingsError, change_settings, team_channels, team_members
from services.web.identity import SignedInUser, SignInFailed, finish_sign_in, joined_teams, start_sign_in
from services.web.links import LinkRefused, verify_login_link
from services.web.routing_rules import ADD_FIELDS, edited_routes, rule_rows, save_routes

log = logging.getLogger("bridge.web")

COOKIE_NAME = "neetochat_teams_session"
LOGIN_MAX_AGE = 15 * 60  # from the signed link to the callback
AUTH_MAX_AGE = 8 * 3600  # how long a sign-in may manage the settings
PERSON = "person:"  # the People form's fields: person:<AAD object id> = "" | authorizing_user | agent id


@dataclass
class _Token:
    value: str
    expires_at: float


class Pages:
    def __init__(self, settings: Settings, runtime: Callable[[Mapping[Any, Any]], Any]) -> None:
        self.settings = settings
        self._runtime = runtime
        self._tokens: dict[str, _Token] = {}  # handle → the signed-in user's delegated Graph token

    # ------------------------------------------------------------------ helpers

    def ctx(self, request: web.Request) -> BridgeContext:
        return self._runtime(request.config_dict).ctx

    def _wake(self, request: web.Request) -> Callable[[], None]:
        return self._runtime(request.config_dict).runner.wake

    def _keep_token(self, user: SignedInUser) -> str:
        now = time.time()
        for handle in [h for h, t in self._tokens.items() if t.expires_at < now]:
            del self._tokens[handle]
        handle = secrets.token_urlsafe(24)
        self._tokens[handle] = _Token(user.access_token, user.expires_at - 60)
        return handle

    def _token(self, handle: str | None) -> str | None:
        token = self._tokens.get(handle or "")
        return token.value if token and token.expires_at > time.time() else None

    @staticmethod
    def _csrf(session: Session) -> str:
        if not session.get("csrf"):
            session["csrf"] = secrets.token_urlsafe(32)
        return session["csrf"]

    async def _check_csrf(self, request: web.Request) -> dict[str, str]:
        """The posted form, or a 403 page when its CSRF token is missing or wrong."""
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        session = await get_session(request)
        expected = session.get("csrf") or ""
        sent = form.get("csrf_token") or ""
        if not expected or not sent or not hmac.compare_digest(expected.encode(), sent.encode()):
            raise await self._refuse(
                request,
                403,
                "This form has expired or did not come from this page. Go back, reload the page and try again.",
            )
        return form

    async def render(self, request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
        session = await get_session(request)
        context.setdefault("csrf_token", self._csrf(session))
        context.setdefault("title", "neetoChat for Microsoft Teams")
        response = aiohttp_jinja2.render_template(template, request, context, status=status)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"  # the signed link stays out of Referer headers
        return response

    async def _refuse(
        self,
        request: web.Request,
        status: int,
        reason: str,
        *,
        ws: Workspace | None = None,
        sign_in_again: bool = False,
    ) -> web.HTTPException:
        """A plain page that says why; raised as an HTTP exception by callers that want to."""
        response = await self.render(
            request,
            "message.html",
            status,
            heading="That did not work",
            message=reason,
            neeto_url=_neeto_url(ws) if sign_in_again else "",
            sign_in_again=sign_in_again,
        )
        return _AsException(response)

    def _workspace_id(self, request: web.Request, form: dict[str, str] | None = None) -> str:
        return (form or {}).get("workspace") or request.query.get("workspace", "")

    # ------------------------------------------------------------------ sign-in

    async def login(self, request: web.Request) -> web.Response:
        """``GET /teams/login?workspace=&expires=&signature=``: check the link, start sign-in."""
        q = request.query
        ws_id = q.get("workspace", "")
        ws = await self.ctx(request).store.get_workspace(ws_id) if ws_id else None
        try:
            if ws is None:
                raise LinkRefused("The link is not valid: this workspace is not connected to the Teams bridge.")
            secret = self.ctx(request).box.decrypt(ws.webhook_secret_enc)
            verify_login_link(ws_id, q.get("expires", ""), q.get("signature", ""), secret)
        except LinkRefused as exc:
            raise await self._refuse(request, 403, str(exc)) from None
        if self.settings.local_mode:
            raise await self._refuse(
                request,
                503,
                "Microsoft sign-in needs the bridge's Entra app (MicrosoftAppId); this bridge runs in local mode.",
            )
        try:
            flow = await start_sign_in(self.settings)
        except SignInFailed as exc:
            raise await self._refuse(request, 502, str(exc)) from None
        session = await get_session(request)
        auth_uri = flow.pop("auth_uri")  # the rest (state, nonce, verifier …) is what the callback needs
        session["login"] = {"ws": ws_id, "flow": flow, "at": time.time()}
        raise web.HTTPFound(auth_uri)

    async def callback(self, request: web.Request) -> web.Response:
        """``GET /teams/callback?code=&state=``: redeem the code for this browser's flow only."""
        session = await get_session(request)
        login = session.pop("login", None)  # single use: a replayed callback finds nothing
        if not login or time.time() - float(login.get("at", 0)) > LOGIN_MAX_AGE:
            raise await self._refuse(
                request,
                403,
                "This sign-in was not started in this browser, was already "
                "used, or took too long. Open Teams from neetoChat again.",
            )
        try:
            user = await finish_sign_in(self.settings, login["flow"], dict(request.query))
        except SignInFailed as exc:
            raise await self._refuse(request, 403, str(exc)) from None
        ws_id = login["ws"]
        session["signin"] = {
            "ws": ws_id,
            "oid": user.oid,
            "tid": user.tid,
            "email": user.email,
            "name": user.name,
            "token": self._keep_token(user),
            "at": time.time(),
        }
        session.pop("pending", None)
        ws = await self.ctx(request).store.get_workspace(ws_id)
        if ws and ws.team_id and (ws.authorizing_user or {}).get("aad_object_id") == user.oid:
            self._authorize(session, ws_id, user.oid)  # already linked by this user: straight to settings
            raise web.HTTPSeeOther(f"/teams/settings?workspace={quote(ws_id)}")
        raise web.HTTPSeeOther(f"/teams/pick?workspace={quote(ws_id)}")

    async def _signed_in(self, request: web.Request, ws_id: str) -> tuple[dict[str, Any], str | None]:
        session = await get_session(request)
        signin = session.get("signin")
        if not signin or signin.get("ws") != ws_id or time.time() - float(signin.get("at", 0)) > AUTH_MAX_AGE:
            ws = await self.ctx(request).store.get_workspace(ws_id) if ws_id else None
            raise await self._refuse(
                request,
                403,
                "You are not signed in for this workspace (or the sign-in "
                "expired). Open Teams from neetoChat to sign in again.",
                ws=ws,
                sign_in_again=True,
            )
        return signin, self._token(signin.get("token"))

    async def _user_teams(self, request: web.Request, signin: dict[str, Any], token: str | None):
        if token is None:
            raise await self._refuse(
                request,
                403,
                "Your Microsoft sign-in has expired. Open Teams from neetoChat to sign in again.",
                sign_in_again=True,
            )
        try:
            return await joined_teams(self.settings, token)
        except RemoteError as exc:
            raise await self._refuse(request, 502, f"Microsoft Graph did not list your teams: {exc}") from None

    async def pick(self, request: web.Request) -> web.Response:
        """``GET /teams/pick?workspace=``: the signed-in user's teams."""
        ws_id = self._workspace_id(request)
        signin, token = await self._signed_in(request, ws_id)
        teams = await self._user_teams(request, signin, token)
        store = self.ctx(request).store
        rows = []
        for team in teams:
            inst = await store.get_installation(team.id)
            rows.append({"id": team.id, "name": team.name, "installed": bool(inst and inst.installed)})
        return await self.render(request, "pick.html", workspace=ws_id, user=signin, teams=rows)

    async def pick_team(self, request: web.Request) -> web.Response:
        """``POST /teams/pick``: the chosen team must be one of the user's own."""
        form = await self._check_csrf(request)
        ws_id = self._workspace_id(request, form)
        signin, token = await self._signed_in(request, ws_id)
        teams = await self._user_teams(request, signin, token)
        chosen = next((t for t in teams if t.id == form.get("team", "")), None)
        if chosen is None:
            raise await self._refuse(request, 403, "You are not a member of that team: pick one of your own teams.")
        session = await get_session(request)
        session["pending"] = {"ws": ws_id, "team": chosen.id, "name": chosen.name, "oid": signin["oid"]}
        return await self._complete(request, ws_id, signin)

    async def check_again(self, request: web.Request) -> web.Response:
        """``POST /teams/check``: the "Check again" button after installing the app."""
        form = await self._check_csrf(request)
        ws_id = self._workspace_id(request, form)
        signin, _ = await self._signed_in(request, ws_id)
        return await self._complete(request, ws_id, signin)

    async def _complete(self, request: web.Request, ws_id: str, signin: dict[str, Any]) -> web.Response:
        session = await get_session(request)
        pending = session.get("pending")
        if not pending or pending.get("ws") != ws_id or pending.get("oid") != signin["oid"]:
            raise await self._refuse(request, 403, "Pick a team first.")
        ctx = self.ctx(request)
        ws = await ctx.store.get_workspace(ws_id)
        if ws is None:
            raise await self._refuse(request, 404, "This workspace is no longer connected to the Teams bridge.")
        inst = await ctx.store.get_installation(pending["team"])
        if inst is None or not inst.installed:
            return await self.render(
                request,
                "not_installed.html",
                workspace=ws_id,
                team_name=pending["name"],
                package_url="/teams/app-package" if self._package_error() is None else "",
                deep_link=f"https://teams.microsoft.com/l/app/{quote(self.settings.app_id)}"
                if self.settings.app_id
                else "",
            )
        if inst.tenant_id and inst.tenant_id != signin["tid"]:
            raise await self._refuse(request, 403, "That team belongs to another Microsoft 365 organization.")
        try:
            await link_team(
                ctx,
                ws,
                team_id=inst.team_id,
                tenant_id=inst.tenant_id or signin["tid"],
                update_type=ws.update_type,
                notification_channel_id=None,
                user={"aad_object_id": signin["oid"], "email": signin["email"], "name": signin["name"]},
                on_enqueued=self._wake(request),
            )
        except LinkError as exc:
            raise await self._refuse(request, 403 if exc.status == 422 else exc.status, str(exc)) from None
        log.info("workspace %s linked to team %s by the sign-in flow", ws_id, inst.team_id)
        session.pop("pending", None)
        self._tokens.pop(signin.get("token") or "", None)
        session.pop("signin", None)
        self._authorize(session, ws_id, signin["oid"])
        raise web.HTTPSeeOther(f"/teams/settings?workspace={quote(ws_id)}&linked=1")

    @staticmethod
    def _authorize(session: Session, ws_id: str, oid: str) -> None:
        auth = dict(session.get("auth") or {})
        auth[ws_id] = {"oid": oid, "at": time.time()}
        session["auth"] = auth

    # ------------------------------------------------------------------ settings

    async def _managed(self, request: web.Request, ws_id: str) -> tuple[Workspace, Installation | None]:
        """The workspace, if this browser signed in as its authorizing user; else a 403 page."""
        ctx = self.ctx(request)
        ws = await ctx.store.get_workspace(ws_id) if ws_id else None
        session = await get_session(request)
        grant = (session.get("auth") or {}).get(ws_id)
        authorizing = (ws.authorizing_user or {}).get("aad_object_id") if ws else None
        if (
            ws is None
            or not grant
            or not authorizing
            or grant.get("oid") != authorizing
            or time.time() - float(grant.get("at", 0)) > AUTH_MAX_AGE
        ):
            raise await self._refuse(
                request,
                403,
                "Only the person who linked this workspace to Teams, signed in "
                "through neetoChat, can see these settings. Open Teams from neetoChat to sign "
                "in again.",
                ws=ws,
                sign_in_again=True,
            )
        inst = await ctx.store.get_installation(ws.team_id) if ws.team_id else None
        return ws, inst

    async def _settings(
        self,
        request: web.Request,
        ws: Workspace,
        inst: Installation | None,
        *,
        status: int = 200,
        error: str = "",
        notice: str = "",
        channels: list[ChannelInfo] | None = None,
        checks: list[Check] | None = None,
        route_form: dict[str, str] | None = None,
        routes_error: str = "",
    ) -> web.Response:
        ctx = self.ctx(request)
        graph_error = people_error = ""
        if inst is not None and channels is None:
            try:
                channels = await team_channels(ctx, ws, inst)
            except RemoteError as exc:
                graph_error = f"The team's channels could not be listed: {exc}"
        rows, agents = [], []
        if inst is not None:
            try:
                rows, agents = await people(ctx, ws, await team_members(ctx, ws, inst))
            except RemoteError as exc:
                people_error = f"The team's members could not be listed: {exc}"
            except IdentityError as exc:
                people_error = str(exc)
        general = inst.general_channel_id if inst else None
        selected = ws.notification_channel_id or general
        route_teams = await ctx.store.installations(ws.tenant_id) if ws.tenant_id else []
        neeto_teams = await ctx.store.neeto_teams(ws.id)
        known = {ws.team_id: channels} if ws.team_id and channels else {}
        rules = await rule_rows(ctx, ws, route_teams, neeto_teams, known)
        return await self.render(
            request,
            "settings.html",
            status,
            ws=ws,
            installation=inst,
            channels=channels or [],
            selected=selected,
            general=general,
            update_types=UPDATE_TYPE_LABELS,
            error=error or graph_error,
            notice=notice,
            user=ws.authorizing_user or {},
            people=rows,
            agents=agents,
            people_error=people_error,
            checks=checks,
            rules=rules,
            route_teams=route_teams,
            neeto_team_names=sorted(set(neeto_teams.values()), key=str.casefold),
            route_form=route_form or {"kind": "neeto_team"},
            routes_error=routes_error,
        )

    async def settings_page(self, request: web.Request) -> web.Response:
        ws, inst = await self._managed(request, self._workspace_id(request))
        notice = ""
        if request.query.get("linked"):
            notice = "Linked. The bot is posting a confirmation in the team's General channel."
        elif request.query.get("saved"):
            notice = "Saved. New conversations follow these settings from now on."
        elif request.query.get("people"):
            notice = "People saved. Their next messages in Teams reach neetoChat as chosen."
        elif request.query.get("routes"):
            notice = "Routing saved. New conversations follow these rules from now on."
        return await self._settings(request, ws, inst, notice=notice)

    async def _linked(self, request: web.Request, form: dict[str, str]) -> tuple[Workspace, Installation]:
        """``_managed``, and linked to a team the bot is in (a 409 settings page otherwise)."""
        ws, inst = await self._managed(request, self._workspace_id(request, form))
        if not ws.team_id or inst is None:
            error = "This workspace is not linked to a team."
            raise _AsException(await self._settings(request, ws, inst, status=409, error=error))
        return ws, inst

    async def save_settings(self, request: web.Request) -> web.Response:
        form = await self._check_csrf(request)
        ws, inst = await self._linked(request, form)
        try:
            await change_settings(
                self.ctx(request),
                ws,
                inst,
                form.get("notification_channel_id", ""),
                form.get("update_type", ""),
                transcript_on_close=form.get("transcript_on_close") == "on",  # an unticked box is not sent
            )
        except SettingsError as exc:
            return await self._settings(request, ws, inst, status=exc.status, error=str(exc))
        raise web.HTTPSeeOther(f"/teams/settings?workspace={quote(ws.id)}&saved=1")

    async def save_identities(self, request: web.Request) -> web.Response:
        """``POST /teams/people``: who each Teams user writes as in neetoChat. Checked as a
        whole (people of the team, active agents) before anything is saved."""
        form = await self._check_csrf(request)
        ws, inst = await self._linked(request, form)
        choices = {key.removeprefix(PERSON): value for key, value in form.items() if key.startswith(PERSON)}
        ctx = self.ctx(request)
        try:
            await save_people(ctx, ws, await team_members(ctx, ws, inst), choices)
        except RemoteError as exc:
            error = f"Not saved: the team's members could not be listed: {exc}"
            return await self._settings(request, ws, inst, status=502, error=error)
        except IdentityError as exc:
            return await self._settings(request, ws, inst, status=exc.status, error=str(exc))
        raise web.HTTPSeeOther(f"/teams/settings?workspace={quote(ws.id)}&people=1")

    async def edit_routes(self, request: web.Request) -> web.Response:
        """``POST /teams/routes``: add a rule (checked as the operator API checks it), remove
        one or move it up or down. A refused change saves nothing; the page says why."""
        form = await self._check_csrf(request)
        ws, inst = await self._linked(request, form)
        ctx = self.ctx(request)
        try:
            routes = await edited_routes(ctx, ws, form)
        except RoutingError as exc:
            kept = {k: form.get(k, "") for k in ADD_FIELDS} if form.get("action") == "add" else None
            return await self._settings(request, ws, inst, status=exc.status, routes_error=str(exc), route_form=kept)
        await save_routes(ctx, ws, routes)
        log.info("workspace %s routing rules changed through the settings page (%d rules)", ws.id, len(routes))
        raise web.HTTPSeeOther(f"/teams/settings?workspace={quote(ws.id)}&routes=1#routing")

    async def check_setup(self, request: web.Request) -> web.Response:
        """``POST /teams/check-setup``: the health checks (as ``/health`` in Teams), on the page."""
        form = await self._check_csrf(request)
        ws, inst = await self._managed(request, self._workspace_id(request, form))
        return await self._settings(request, ws, inst, checks=await check_health(self.ctx(request), ws))

    async def disconnect(self, request: web.Request) -> web.Response:
        """``POST /teams/disconnect``: unlink the team; the workspace stays connected."""
        form = await self._check_csrf(request)
        ws, _ = await self._managed(request, self._workspace_id(request, form))
        await unlink_team(self.ctx(request), ws)
        session = await get_session(request)
        auth = dict(session.get("auth") or {})
        auth.pop(ws.id, None)
        session["auth"] = auth
        log.info("workspace %s unlinked from Teams through the settings page", ws.id)
        return await self.render(
            request,
            "message.html",
            heading="Disconnected from Teams",
            message="Nothing more is synced to Teams. Conversations and their history stay in neetoChat. "
            "To link a team again, use Login to Teams in neetoChat.",
            neeto_url=_neeto_url(ws),
            sign_in_again=False,
        )

    # ------------------------------------------------------------------ app package

    def _package_error(self) -> str | None:
        try:
            build_manifest(self.settings.app_id, self.settings.public_url)
        except BuildError as exc:
            return str(exc)
        return None

    async def app_package(self, request: web.Request) -> web.Response:
        try:
            data = package_bytes(build_manifest(self.settings.app_id, self.settings.public_url))
        except BuildError as exc:
            raise await self._refuse(request, 404, f"The app package cannot be built here: {exc}") from None
        return web.Response(
            body=data,
            content_type="application/zip",
            headers={"Content-Disposition": 'attachment; filename="neetoChat-teams-app.zip"'},
        )


def _neeto_url(ws: Workspace | None) -> str:
    """The workspace's neetoChat app URL as a link target, only if it is an http(s) URL."""
    url = ws.app_url if ws else ""
    return url if url.lower().startswith(("https://", "http://")) else ""


class _AsException(web.HTTPError):
    """A rendered page raised like an HTTP exception (aiohttp sends it as is)."""

    def __init__(self, response: web.Response) -> None:
        self.status_code = response.status
        super().__init__(
            text=response.text,
            content_type="text/html",
            headers={k: v for k, v in response.headers.items() if k.lower() not in ("content-type", "content-length")},
        )


WEB = web.AppKey("web", Pages)

__all__ = ["COOKIE_NAME", "WEB", "Pages"]
