"""The "Login to Teams" flow end to end: signed link → Microsoft sign-in (the identity
sandbox over TLS, authorization code + PKCE through MSAL) → pick a team (delegated Graph)
→ link (the operator API's logic) → confirmation in General → settings page.

The bridge runs in-process (``create_app``) in authenticated mode against the Microsoft
sandbox with token enforcement on; a "browser" is an aiohttp session with its own cookie
jar that trusts the test CA. Every refusal is checked to have changed nothing.
"""

from __future__ import annotations

import html
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import aiohttp.connector
import pytest
from yarl import URL

from app import RUNTIME, create_app
from sandbox import teams_fixtures as fx
from sandbox.identity import IdentitySandbox, IdentityServer
from sandbox.microsoft import Channel
from sandbox.tls import make_test_tls
from services.web.links import sign_login_link
from tests.harness import API_KEY, WEBHOOK_SECRET, WS, bridge_env, free_port, wait_for
from tests.test_transcript import transcripts

APP_SECRET = "bot-client-secret-" + secrets.token_hex(8)


@dataclass
class SignIn:
    """The world (``tests.harness.Harness``) plus the identity sandbox and a bridge in authenticated mode."""

    h: Any
    identity: IdentitySandbox
    tls: Any
    sales: dict[str, Any]  # a second team: Ada only (Adam is not a member)

    @property
    def store(self):
        return self.h.app[RUNTIME].ctx.store

    async def workspace(self):
        return await self.store.get_workspace(WS)

    def link(self, *, workspace: str = WS, secret: str = WEBHOOK_SECRET, expires: int | None = None) -> str:
        return sign_login_link(self.h.bridge_url, workspace, secret, expires or int(time.time()) + 600)

    def browser(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # cookies for 127.0.0.1
            connector=aiohttp.TCPConnector(ssl=self.tls.client_ssl_context()),
        )

    async def connect_workspace(self) -> None:
        status, body = await self.h.admin(
            "PUT", f"/api/admin/workspaces/{WS}",
            {"base_url": f"{self.h.neeto_url}/{WS}", "api_key": API_KEY, "webhook_secret": WEBHOOK_SECRET},
        )
        assert status in (200, 201), body
        self.h.neeto.set_webhook_url(WS, self.h.webhook_url)

    async def install(self, team_id: str | None = None) -> None:
        statuses = await self.h.ms.install_bot(team_id or self.h.team_id, by_user=self.h.adam)
        assert all(200 <= s < 300 for s in statuses), statuses

    async def sign_in(self, browser: aiohttp.ClientSession, as_name: str = "Adam Admin", *,
                      link: str | None = None) -> str:
        """Open the link, follow "Sign in as …" up to the bridge's callback; the callback URL."""
        async with browser.get(link or self.link()) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.url.host == "127.0.0.1" and resp.url.scheme == "https"  # the identity sandbox
            page = await resp.text()
            authorize_url = resp.url
        match = re.search(r'href="([^"]+)">Sign in as ' + re.escape(as_name), page)
        assert match, page
        async with browser.get(authorize_url.join(URL(html.unescape(match.group(1)))),
                               allow_redirects=False) as resp:
            assert resp.status == 302, await resp.text()
            callback = resp.headers["Location"]
        assert callback.startswith(f"{self.h.bridge_url}/teams/callback?")
        return callback

    async def signed_in_page(self, browser: aiohttp.ClientSession, as_name: str = "Adam Admin") -> tuple[int, str]:
        """Sign in and land on the page after the callback (the team picker or settings)."""
        callback = await self.sign_in(browser, as_name)
        async with browser.get(callback) as resp:
            return resp.status, await resp.text()

    async def post(self, browser: aiohttp.ClientSession, path: str, page: str | None, **fields: str):
        """Submit a form as the page would (its CSRF token unless ``csrf_token`` is given)."""
        data = {"workspace": WS, **fields}
        if "csrf_token" not in fields and page is not None:
            data["csrf_token"] = csrf(page)
        data = {k: v for k, v in data.items() if v is not None}
        async with browser.post(f"{self.h.bridge_url}{path}", data=data) as resp:
            return resp.status, await resp.text()

    async def link_team(self, browser: aiohttp.ClientSession, as_name: str = "Adam Admin") -> str:
        """The whole happy path up to the settings page; its HTML."""
        status, page = await self.signed_in_page(browser, as_name)
        assert status == 200 and "Choose a team" in page, page
        status, page = await self.post(browser, "/teams/pick", page, team=self.group_id)
        assert status == 200 and "Notification channel" in page, page
        return page

    @property
    def group_id(self) -> str:
        return self.h.team["aadGroupId"]


def csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def selected_channel(page: str) -> str | None:
    match = re.search(r'<option value="([^"]+)" selected>', page)
    return html.unescape(match.group(1)) if match else None


def add_channel(h, team_id: str, name: str) -> str:
    """Someone adds a channel to the team in Teams."""
    channel = Channel(id=fx.new_thread_id(), name=name, description=None, created=time.time())
    h.ms.team(team_id).channels[channel.id] = channel
    return channel.id


@pytest.fixture
async def signin(sandbox, aiohttp_server, tmp_path, monkeypatch):
    h = sandbox
    tls = make_test_tls(tmp_path / "tls")
    # msal and botbuilder (requests) read REQUESTS_CA_BUNDLE per request. aiohttp (used by
    # azure-identity's async credential) built its default SSL context when it was
    # imported, before this test's CA existed: what SSL_CERT_FILE does for a bridge started
    # as a process is done here by adding the CA to that context.
    for name, value in tls.env().items():
        monkeypatch.setenv(name, value)
    aiohttp.connector._SSL_CONTEXT_VERIFIED.load_verify_locations(cafile=str(tls.ca_path))
    identity = IdentitySandbox()
    identity.register_app(h.ms.bot_app_id, APP_SECRET, h.ms.tenant_id)
    for user in (h.adam, h.ada, h.olly):
        identity.add_user(user["aadObjectId"], user["name"], user["email"], h.ms.tenant_id)
    sales = h.ms.add_team(name="Sales", members=[h.ada])
    with IdentityServer(identity, tls) as server:
        h.ms.require_tokens(identity)
        port = free_port()
        env = bridge_env(h.ms, tmp_path / "data", port)
        env.update({
            "MicrosoftAppId": h.ms.bot_app_id,
            "MicrosoftAppPassword": APP_SECRET,
            "SECRET_KEY": secrets.token_urlsafe(32),
            "LOGIN_AUTHORITY": server.url,
            "TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL": identity.channel_metadata_url,
            "TO_CHANNEL_FROM_BOT_LOGIN_URL": identity.bot_framework_login_url,
            "VALIDATE_AUTHORITY": "false",
            "BRIDGE_INSTANCE": "signin-test",
        })
        bridge = await aiohttp_server(create_app(env=env), port=port)
        h.set_bridge(str(bridge.make_url("")))
        h.app = bridge.app
        yield SignIn(h, identity, tls, sales)


async def assert_unlinked(s: SignIn) -> None:
    ws = await s.workspace()
    assert ws is not None and ws.team_id is None and ws.authorizing_user is None
    assert not s.h.ms.posts(s.h.team_id), "nothing may be posted in General"


# ---------------------------------------------------------------- the happy path


async def test_sign_in_pick_team_link_and_change_settings(signin):
    s, h = signin, signin.h
    await s.connect_workspace()
    await s.install()
    async with s.browser() as browser:
        page = await s.link_team(browser)
        # the bot confirms in General; the settings page shows General selected
        await wait_for(lambda: h.ms.posts(h.team_id), what="the link confirmation in General")
        assert selected_channel(page) == h.team_id
        assert 'value="new_conversations" checked' in page
        ws = await s.workspace()
        assert ws.team_id == h.team_id and ws.aad_group_id == s.group_id and ws.tenant_id == h.ms.tenant_id
        assert ws.authorizing_user["aad_object_id"] == h.adam["aadObjectId"]
        assert ws.authorizing_user["email"] == "adam@acme.test"
        # the sign-in asked only for delegated scopes, with PKCE
        authorize = next(r for r in s.identity.requests if r["path"].endswith("/oauth2/v2.0/authorize"))
        assert authorize["path"].startswith("/organizations/")
        assert set(authorize["query"]["scope"].split()) >= {"User.Read", "Team.ReadBasic.All",
                                                            "Channel.ReadBasic.All"}
        assert authorize["query"]["code_challenge_method"] == "S256"
        assert not any(".default" in scope for scope in authorize["query"]["scope"].split())

        escalations = add_channel(h, h.team_id, "Escalations")
        async with browser.get(f"{h.bridge_url}/teams/settings?workspace={WS}") as resp:
            page = await resp.text()
        assert "Escalations" in page
        status, page = await s.post(browser, "/teams/settings", page, notification_channel_id=escalations,
                                    update_type="all_activity")
        assert status == 200 and "Saved" in page, page
        assert selected_channel(page) == escalations and 'value="all_activity" checked' in page
    ws = await s.workspace()
    assert ws.notification_channel_id == escalations and ws.update_type == "all_activity"
    # takes effect at once: the next conversation's notice goes to Escalations
    conv = h.neeto.start_conversation(WS, visitor_name="Vera", visitor_email="vera@example.com", message="hi")
    await h.wait_channel(conv["number"])
    await wait_for(lambda: h.ms.posts(escalations), what="the notice in Escalations")
    assert len(h.ms.posts(h.team_id)) == 1  # General has only the confirmation


async def test_the_settings_page_turns_the_transcript_on_close_off_and_on(signin):
    s, h = signin, signin.h
    await s.connect_workspace()
    await s.install()
    box = re.compile(r'<input type="checkbox" name="transcript_on_close" value="on" (checked)?>')

    async def close_one(name: str) -> None:
        conv = h.neeto.start_conversation(WS, visitor_name=name, visitor_email=f"{name}@example.com", message="hi")
        await h.wait_channel(conv["number"])
        h.neeto.close(WS, conv["id"], actor_agent_id=h.ada_agent["id"])
        await wait_for(lambda: h.conversation_channel(conv["number"]) is None, what="the channel deleted")
        await wait_for(lambda: _no_pending(s), what="the bridge to be idle")

    async with s.browser() as browser:
        page = await s.link_team(browser)
        assert box.search(page).group(1) == "checked"  # on by default
        # an unticked box is not in the form at all
        status, page = await s.post(browser, "/teams/settings", page, notification_channel_id=h.team_id,
                                    update_type="new_conversations")
        assert status == 200 and "Saved" in page and box.search(page).group(1) is None, page
        assert (await s.workspace()).transcript_on_close is False
        await close_one("nat")
        assert transcripts(h.general_posts()) == []

        status, page = await s.post(browser, "/teams/settings", page, notification_channel_id=h.team_id,
                                    update_type="new_conversations", transcript_on_close="on")
        assert status == 200 and box.search(page).group(1) == "checked"
        await close_one("oda")
        [card] = transcripts(h.general_posts())
        assert card["body"][1]["facts"][0]["value"] == "oda (oda@example.com)"


async def _no_pending(s: SignIn) -> bool:
    return (await s.store.job_counts(WS)).pending == 0


async def test_disconnect_stops_syncing_and_keeps_the_workspace(signin):
    s, h = signin, signin.h
    await s.connect_workspace()
    await s.install()
    async with s.browser() as browser:
        page = await s.link_team(browser)
        await wait_for(lambda: h.ms.posts(h.team_id), what="the link confirmation")
        status, _ = await s.post(browser, "/teams/disconnect", page, csrf_token="wrong")
        assert status == 403 and (await s.workspace()).team_id == h.team_id
        status, text = await s.post(browser, "/teams/disconnect", page)
        assert status == 200 and "Disconnected" in text
        # the settings page is gone for this browser too
        async with browser.get(f"{h.bridge_url}/teams/settings?workspace={WS}") as resp:
            assert resp.status == 403
    ws = await s.workspace()
    assert ws.team_id is None and ws.notification_channel_id is None and ws.base_url  # still connected
    status, body = await h.admin("GET", f"/api/admin/workspaces/{WS}")
    assert status == 200 and body["teams"]["linked"] is False
    channels_before = len(h.ms.channels(h.team_id))
    h.neeto.start_conversation(WS, visitor_name="Tom", visitor_email="tom@example.com", message="hello?")
    dead = await wait_for(lambda: s.store.list_dead_jobs(WS), what="the event kept as a dead letter")
    assert "not linked" in (dead[0].last_error or "")
    assert len(h.ms.channels(h.team_id)) == channels_before


async def test_bot_not_installed_then_check_again(signin):
    s, h = signin, signin.h
    await s.connect_workspace()
    async with s.browser() as browser:
        status, page = await s.signed_in_page(browser)
        assert status == 200 and "app not installed yet" in page
        status, page = await s.post(browser, "/teams/pick", page, team=s.group_id)
        assert status == 200 and "not installed" in page and "Check again" in page
        assert "https://teams.microsoft.com/l/app/" in page
        assert 'href="/teams/app-package"' not in page  # PUBLIC_URL is http here: no package can be built
        status, page = await s.post(browser, "/teams/check", page)
        assert status == 200 and "not installed" in page
        await assert_unlinked(s)
        await s.install()
        status, page = await s.post(browser, "/teams/check", page)
        assert status == 200 and "Notification channel" in page, page
    await wait_for(lambda: h.ms.posts(h.team_id), what="the link confirmation in General")
    assert (await s.workspace()).team_id == h.team_id


# ---------------------------------------------------------------- refusals


async def test_bad_links_are_refused_with_a_page_and_change_nothing(signin):
    s, h = signin, signin.h
    await s.connect_workspace()
    h.neeto.add_workspace("globex", api_key="nc-globex", webhook_secret="whsec-globex")
    status, _ = await h.admin("PUT", "/api/admin/workspaces/globex", {
        "base_url": f"{h.neeto_url}/globex", "api_key": "nc-globex", "webhook_secret": "whsec-globex"})
    assert status == 201
    expires = int(time.time()) + 600
    good = s.link(expires=expires)
    tampered = good.replace(f"expires={expires}", f"expires={expires + 3600}")
    for_globex = s.link(workspace="globex", secret="whsec-globex", expires=expires)
    other_workspace = for_globex.replace("workspace=globex", f"workspace={WS}")
    cases = {
        "tampered": (tampered, "signature is not valid"),
        "expired": (s.link(expires=int(time.time()) - 1), "expired"),
        "other workspace": (other_workspace, "signature is not valid"),
        "wrong secret": (s.link(secret="whsec-guess"), "signature is not valid"),
        "unknown workspace": (s.link(workspace="nope"), "not connected"),
        "no signature": (good.split("&signature=")[0], "incomplete"),
    }
    async with s.browser() as browser:
        for name, (url, reason) in cases.items():
            async with browser.get(url, allow_redirects=False) as resp:
                text = await resp.text()
                assert resp.status == 403, name
                assert resp.content_type == "text/html" and reason in text, (name, text)
        assert not [r for r in s.identity.requests if "authorize" in r["path"]]
    await assert_unlinked(s)


async def test_replayed_or_foreign_state_is_refused(signin):
    s = signin
    await s.connect_workspace()
    await s.install()
    async with s.browser() as browser, s.browser() as other:
        callback = await s.sign_in(browser)
        # another browser that never started this sign-in
        async with other.get(callback) as resp:
            assert resp.status == 403 and "not started in this browser" in await resp.text()
        # another browser with its own sign-in in progress: the state is not its own
        await s.sign_in(other)
        async with other.get(callback) as resp:
            assert resp.status == 403 and "does not belong" in await resp.text()
        async with browser.get(callback) as resp:
            assert resp.status == 200 and "Choose a team" in await resp.text()
        async with browser.get(callback) as resp:  # the same answer again
            assert resp.status == 403 and "already used" in await resp.text()
    await assert_unlinked(s)


async def test_a_team_the_user_is_not_in_is_refused(signin):
    s = signin
    await s.connect_workspace()
    await s.install()
    await s.install(s.sales["id"])
    async with s.browser() as browser:
        status, page = await s.signed_in_page(browser)
        assert "Support" in page and "Sales" not in page  # only Adam's own teams are offered
        status, text = await s.post(browser, "/teams/pick", page, team=s.sales["aadGroupId"])
        assert status == 403 and "not a member" in text
        status, text = await s.post(browser, "/teams/pick", page, team=str(uuid.uuid4()))
        assert status == 403
    await assert_unlinked(s)


async def test_a_user_who_is_not_an_agent_cannot_link(signin):
    s = signin
    await s.connect_workspace()
    await s.install()
    async with s.browser() as browser:
        status, page = await s.signed_in_page(browser, "Olly Outsider")
        assert status == 200
        status, text = await s.post(browser, "/teams/pick", page, team=s.group_id)
        assert status == 403 and "not an active agent" in text
    await assert_unlinked(s)


async def test_forms_need_the_csrf_token(signin):
    s, h = signin, signin.h
    await s.connect_workspace()
    await s.install()
    async with s.browser() as browser:
        status, page = await s.signed_in_page(browser)
        for token in (None, "", "forged-" + secrets.token_urlsafe(8)):
            fields = {"team": s.group_id, "csrf_token": token}
            status, text = await s.post(browser, "/teams/pick", None, **fields)
            assert status == 403 and "form has expired" in text
        await assert_unlinked(s)
        await s.link_team(browser)
        other = add_channel(h, h.team_id, "Other")
        for token in (None, "forged"):
            status, _ = await s.post(browser, "/teams/settings", None, csrf_token=token,
                                     notification_channel_id=other, update_type="all_activity")
            assert status == 403
    ws = await s.workspace()
    assert ws.notification_channel_id is None and ws.update_type == "new_conversations"


async def test_settings_refuse_a_channel_of_another_team_and_strangers(signin):
    s, h = signin, signin.h
    await s.connect_workspace()
    await s.install()
    async with s.browser() as browser, s.browser() as stranger:
        page = await s.link_team(browser)
        for channel, update_type in ((s.sales["id"], "all_activity"), ("19:nope@thread.tacv2", "all_activity"),
                                     (h.team_id, "everything")):
            status, text = await s.post(browser, "/teams/settings", page, notification_channel_id=channel,
                                        update_type=update_type)
            assert status == 400 and ("Not saved" in text or "Choose an update type" in text), text
        # someone without the authorizing sign-in: neither the page nor a save
        async with stranger.get(f"{h.bridge_url}/teams/settings?workspace={WS}") as resp:
            text = await resp.text()
            assert resp.status == 403 and "sign in again" in text
        status, _ = await s.post(stranger, "/teams/settings", None, csrf_token="x",
                                 notification_channel_id=h.team_id, update_type="all_activity")
        assert status == 403
        # Ada (an agent) signs in too, but Adam linked the workspace: no settings for her
        status, _ = await s.signed_in_page(stranger, "Ada Agent")
        async with stranger.get(f"{h.bridge_url}/teams/settings?workspace={WS}") as resp:
            assert resp.status == 403
    ws = await s.workspace()
    assert ws.notification_channel_id is None and ws.update_type == "new_conversations"


async def test_signing_in_again_as_the_authorizing_user_opens_the_settings(signin):
    s = signin
    await s.connect_workspace()
    await s.install()
    async with s.browser() as browser:
        await s.link_team(browser)
    async with s.browser() as browser:
        status, page = await s.signed_in_page(browser)
        assert status == 200 and "Notification channel" in page



async def test_check_setup_shows_each_check_with_its_fix_on_the_settings_page(signin):
    s, h = signin, signin.h
    await s.connect_workspace()
    await s.install()
    names = ("Teams link", "Permissions in the team", "Messages reach the bot", "Channels", "neetoChat API key",
             "Webhooks from neetoChat", "Deliveries")
    async with s.browser() as browser, s.browser() as stranger:
        page = await s.link_team(browser)
        assert "Check setup" in page and "✅" not in page  # run on demand only
        status, page = await s.post(browser, "/teams/check-setup", page)
        assert status == 200 and "Notification channel" in page  # the settings page, with the checks
        for name in names:
            assert f"✅ <strong>{name}</strong>" in page, name
        assert "⚠️" not in page and "→" not in page

        h.ms.revoke_rsc(h.team_id, "ChannelMessage.Read.Group")
        status, page = await s.post(browser, "/teams/check-setup", page)
        assert status == 200
        problem = re.search(r'<li class="problem">(.*?)</li>', page, re.S).group(1)
        assert "⚠️ <strong>Permissions in the team</strong>" in problem
        assert "only messages that @mention it" in problem
        assert "→ a team owner removes the neetoChat app from the team and adds it again" in problem
        assert page.count('<li class="problem">') == 1

        status, text = await s.post(browser, "/teams/check-setup", None, csrf_token="forged")
        assert status == 403 and "form has expired" in text and "<strong>Teams link</strong>" not in text
        status, text = await s.post(stranger, "/teams/check-setup", None, csrf_token="x")
        assert status == 403 and "<strong>Teams link</strong>" not in text
