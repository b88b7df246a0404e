"""The web pages' parts that need no Microsoft sign-in: the signed link format, the session
cookie's protection, refusals before sign-in, the app package download. The signed-in
pages (team picker, settings, CSRF, disconnect) are driven end to end in test_signin.py."""

from __future__ import annotations

import io
import json
import secrets
import time
import zipfile

import pytest
from cryptography.fernet import Fernet

from app import create_app
from services.web import session_key
from services.web.links import LinkRefused, link_signature, sign_login_link, verify_login_link
from tests.harness import API_KEY, WEBHOOK_SECRET, WS, bridge_env

APP_ID = "3f9a6c2e-81d4-4e57-b0a3-6d2c8e1f7b90"


def test_link_signature_is_hmac_sha256_of_workspace_dot_expires():
    import hashlib
    import hmac

    expected = hmac.new(b"whsec", b"acme.1700000000", hashlib.sha256).hexdigest()
    assert link_signature("whsec", "acme", 1700000000) == expected
    url = sign_login_link("https://bridge.example.com/", "acme", "whsec", 1700000000)
    assert url == f"https://bridge.example.com/teams/login?workspace=acme&expires=1700000000&signature={expected}"


def test_verify_login_link_refusals():
    now = 1_700_000_000
    good = link_signature("whsec", "acme", now + 60)
    verify_login_link("acme", str(now + 60), good, "whsec", now=now)
    verify_login_link("acme", str(now + 60), good.upper(), "whsec", now=now)  # hex in either case
    refused = {
        "expired": ("acme", str(now + 60), good, "whsec", now + 61),
        "tampered expiry": ("acme", str(now + 3600), good, "whsec", now),
        "other workspace": ("globex", str(now + 60), good, "whsec", now),
        "other secret": ("acme", str(now + 60), good, "whsec-2", now),
        "not a number": ("acme", "soon", good, "whsec", now),
        "signed digits differ": ("acme", f"0{now + 60}", good, "whsec", now),
        "missing signature": ("acme", str(now + 60), "", "whsec", now),
    }
    for name, (ws, expires, signature, secret, at) in refused.items():
        with pytest.raises(LinkRefused):
            verify_login_link(ws, expires, signature, secret, now=at)
        assert name


def test_session_key_is_a_fernet_key_distinct_from_the_secrets_key():
    key = session_key("some long secret")
    Fernet(key)  # 32 url-safe base64 bytes
    assert key == session_key("some long secret") and key != session_key("another secret")


@pytest.fixture
async def web_bridge(sandbox, aiohttp_client, tmp_path):
    """The bridge with an Entra app id and an https PUBLIC_URL (no sign-in happens here)."""
    env = bridge_env(sandbox.ms, tmp_path / "data")
    secret_key = secrets.token_urlsafe(32)
    env.update({"MicrosoftAppId": APP_ID, "MicrosoftAppPassword": "x", "SECRET_KEY": secret_key,
                "PUBLIC_URL": "https://bridge.example.com", "LOGIN_AUTHORITY": "https://127.0.0.1:9"})
    client = await aiohttp_client(create_app(env=env))
    sandbox.set_bridge(str(client.make_url("")))
    status, _ = await sandbox.admin("PUT", f"/api/admin/workspaces/{WS}", {
        "base_url": f"{sandbox.neeto_url}/{WS}", "api_key": API_KEY, "webhook_secret": WEBHOOK_SECRET})
    assert status == 201
    client.secret_key = secret_key
    return client


async def test_no_application_has_a_middleware_so_webhooks_and_activities_pay_for_none(web_bridge):
    """The session middleware wraps the pages' handlers (services/web/__init__.py): one on
    any application, even the pages' own, would make aiohttp run a middleware chain on every
    request. The pages still get their session cookie (the tests below)."""
    app = web_bridge.server.app
    subapps = [resource.get_info()["app"] for resource in app.router.resources() if "app" in resource.get_info()]
    assert subapps
    assert [a for a in (app, *subapps) if a.middlewares] == []


async def test_a_bad_link_gets_a_403_page_and_an_encrypted_locked_down_cookie(web_bridge):
    link = sign_login_link("", WS, WEBHOOK_SECRET, int(time.time()) - 5)
    resp = await web_bridge.get(link, allow_redirects=False)
    assert resp.status == 403 and resp.content_type == "text/html"
    assert "expired" in await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie and "Path=/teams" in cookie
    value = resp.cookies["neetochat_teams_session"].value
    assert "csrf" not in value
    data = json.loads(Fernet(session_key(web_bridge.secret_key)).decrypt(value.encode()))
    assert set(data["session"]) == {"csrf"}


async def test_a_valid_link_starts_sign_in_only_when_the_identity_platform_answers(web_bridge):
    link = sign_login_link("", WS, WEBHOOK_SECRET, int(time.time()) + 60)
    resp = await web_bridge.get(link, allow_redirects=False)
    # LOGIN_AUTHORITY points at a closed port: a page that says so, nothing stored
    assert resp.status == 502 and "sign-in is unavailable" in await resp.text()


async def test_local_mode_has_no_sign_in(sandbox, aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(env=bridge_env(sandbox.ms, tmp_path / "data")))
    sandbox.set_bridge(str(client.make_url("")))
    await sandbox.admin("PUT", f"/api/admin/workspaces/{WS}", {
        "base_url": f"{sandbox.neeto_url}/{WS}", "api_key": API_KEY, "webhook_secret": WEBHOOK_SECRET})
    resp = await client.get(sign_login_link("", WS, WEBHOOK_SECRET, int(time.time()) + 60), allow_redirects=False)
    assert resp.status == 503 and "local mode" in await resp.text()


async def test_pages_need_a_sign_in(web_bridge):
    for method, path in (("GET", f"/teams/settings?workspace={WS}"), ("GET", f"/teams/pick?workspace={WS}"),
                         ("GET", "/teams/callback?code=x&state=y")):
        resp = await web_bridge.request(method, path, allow_redirects=False)
        assert resp.status == 403, path
    # forms without a session's CSRF token are refused before anything else
    for path in ("/teams/settings", "/teams/pick", "/teams/check", "/teams/disconnect", "/teams/people",
                 "/teams/check-setup"):
        resp = await web_bridge.post(path, data={"workspace": WS, "csrf_token": "guess"})
        assert resp.status == 403 and "form has expired" in await resp.text(), path


async def test_app_package_and_stylesheet(web_bridge):
    resp = await web_bridge.get("/teams/app-package")
    assert resp.status == 200 and resp.content_type == "application/zip"
    with zipfile.ZipFile(io.BytesIO(await resp.read())) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    assert manifest["id"] == APP_ID and manifest["validDomains"] == ["bridge.example.com"]
    resp = await web_bridge.get("/teams/static/style.css")
    assert resp.status == 200 and "--accent" in await resp.text()
