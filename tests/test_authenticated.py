"""Authenticated mode: the bridge as it runs against real Microsoft 365, with tokens both ways.

The sandbox's identity platform (over TLS with a test CA) signs the activities Teams sends
and issues the bridge's connector and Graph tokens; the Microsoft sandbox refuses calls
without valid ones. The bridge runs as ``python app.py`` with the Bot Framework
environment names an Azure deployment would set.
"""

from __future__ import annotations

import secrets
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox.identity import CHANNEL_KEYS_PATH, IdentitySandbox, IdentityServer
from sandbox.tls import make_test_tls
from tests.harness import WS, BridgeProcess, bridge_env, free_port, wait_for

APP_SECRET = "bot-client-secret-" + secrets.token_hex(8)


@pytest.fixture(params=["MultiTenant", "SingleTenant"])
async def authenticated(request, sandbox, tmp_path):
    """Multi-tenant: connector tokens from botframework.com, Graph tokens from the team's
    tenant. Single-tenant: both from the app's own tenant (``MicrosoftAppTenantId``)."""
    h = sandbox
    tls = make_test_tls(tmp_path / "tls")
    identity = IdentitySandbox()
    identity.register_app(h.ms.bot_app_id, APP_SECRET, h.ms.tenant_id)
    with IdentityServer(identity, tls) as server:
        h.ms.require_tokens(identity)
        port = free_port()
        env = bridge_env(h.ms, tmp_path / "data", port)
        env.update(tls.env())
        env.update({
            "MicrosoftAppId": h.ms.bot_app_id,
            "MicrosoftAppPassword": APP_SECRET,
            "MicrosoftAppType": request.param,
            "MicrosoftAppTenantId": h.ms.tenant_id if request.param == "SingleTenant" else "",
            "SECRET_KEY": secrets.token_urlsafe(32),
            "LOGIN_AUTHORITY": server.url,
            "TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL": identity.channel_metadata_url,
            "TO_CHANNEL_FROM_BOT_LOGIN_URL": identity.bot_framework_login_url,
            "VALIDATE_AUTHORITY": "false",
        })
        proc = BridgeProcess(env, tmp_path / "bridge.log")
        h.set_bridge(proc.url)
        await proc.start(h.http)
        h.identity = identity
        h.app_type = request.param
        h.log_path = tmp_path / "bridge.log"
        yield h
        assert await proc.terminate() == 0
        log = h.log_path.read_text()
        secrets_seen = [APP_SECRET, "nc-api-key-acme-secret", "whsec-acme-secret", env["SECRET_KEY"]]
        secrets_seen += [entry["token"] for entry in identity.issued]
        assert not [s for s in secrets_seen if s in log], "a secret or token was written to the log"


async def test_the_whole_path_works_with_tokens_both_ways(authenticated):
    h = authenticated
    await h.connect()  # installation activities are signed; the confirmation post needs a token
    conv = h.neeto.start_conversation(WS, visitor_name="Tia", visitor_email="tia@example.com", message="hello")
    channel = await h.wait_channel(conv["number"])  # Graph, app-only token for the team's tenant
    await wait_for(lambda: h.ms.posts(channel["id"]), what="the intro card")
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "Hi Tia!")
    message = (await wait_for(lambda: h.from_teams(conv["id"]), what="the reply in neetoChat"))[0]
    assert message["sender"]["id"] == h.ada_agent["id"]
    issued = {entry["kind"] for entry in h.identity.issued}
    assert "channel" in issued and len(h.identity.issued) >= 3
    # tokens are reused until they expire, not fetched per call
    token_requests = [r["path"] for r in h.identity.requests if r["path"].endswith("/oauth2/v2.0/token")]
    assert len(token_requests) <= 4
    # the keys that sign Teams' tokens: fetched once, at startup, not per activity
    assert [r["path"] for r in h.identity.requests].count(CHANNEL_KEYS_PATH) == 1
    if h.app_type == "SingleTenant":  # every token from the app's own tenant
        assert all(path.startswith(f"/{h.ms.tenant_id}/") for path in token_requests), token_requests
    else:
        assert any(path.startswith("/botframework.com/") for path in token_requests), token_requests


def _activity(h, service_url: str) -> dict:
    return {
        "type": "message",
        "id": uuid.uuid4().hex,
        "channelId": "msteams",
        "serviceUrl": service_url,
        "from": {"id": h.ada["id"], "name": "Ada"},
        "recipient": {"id": h.ms.bot_id, "name": "neetoChat"},
        "conversation": {"id": f"{h.team_id};messageid=1", "conversationType": "channel", "isGroup": True},
        "channelData": {"team": {"id": h.team_id}, "channel": {"id": h.team_id}, "tenant": {"id": h.ms.tenant_id}},
        "text": "hi",
    }


BAD_TOKENS = {
    "no token": lambda idp, app, url: None,
    "wrong audience": lambda idp, app, url: idp.channel_token(app, url, audience=str(uuid.uuid4())),
    "expired": lambda idp, app, url: idp.channel_token(app, url, expires_in=-600),
    "not yet valid": lambda idp, app, url: idp.channel_token(app, url, not_before=idp._clock() + 3600),
    "bad signature": lambda idp, app, url: idp.channel_token(
        app, url, sign_with=rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ),
    "unknown key": lambda idp, app, url: idp.channel_token(app, url, kid="no-such-key"),
    "unknown issuer": lambda idp, app, url: idp.channel_token(app, url, issuer="https://evil.example"),
    "other service url": lambda idp, app, url: idp.channel_token(app, "https://elsewhere.example/"),
    "alg none": lambda idp, app, url: idp.channel_token(app, url, alg="none"),
}


async def test_every_bad_token_gets_401_and_nothing_is_processed(authenticated):
    h = authenticated
    service_url = h.ms.service_url
    for name, make in BAD_TOKENS.items():
        token = make(h.identity, h.ms.bot_app_id, service_url)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        install = _activity(h, service_url)
        install.update({"type": "installationUpdate", "action": "add"})
        async with h.http.post(f"{h.bridge_url}/api/messages", json=install, headers=headers) as resp:
            assert resp.status == 401, name
    # none of those installations was recorded: linking still waits for a real install
    status, _ = await h.admin(
        "PUT",
        f"/api/admin/workspaces/{WS}",
        {"base_url": f"{h.neeto_url}/{WS}", "api_key": "nc-api-key-acme-secret", "webhook_secret": "whsec-acme-secret"},
    )
    link = {"team_id": h.team_id, "authorizing_user": {"email": "adam@acme.test"}}
    status, body = await h.admin("PUT", f"/api/admin/workspaces/{WS}/teams", link)
    assert status == 200 and body["teams"]["bot_installed"] is False
    good = h.identity.channel_token(h.ms.bot_app_id, service_url)
    install = _activity(h, service_url)
    install.update({"type": "installationUpdate", "action": "add"})
    async with h.http.post(
        f"{h.bridge_url}/api/messages", json=install, headers={"Authorization": f"Bearer {good}"}
    ) as resp:
        assert resp.status in (200, 201)
    _, body = await h.admin("GET", f"/api/admin/workspaces/{WS}")
    assert body["teams"]["bot_installed"] is True


async def test_no_graph_token_holds_channels_until_graph_answers_again(authenticated):
    """The app removed from the team's tenant: Graph tokens stop (the Bot Framework's, from
    botframework.com, still come). Conversations wait, the operator status says why, and the
    next reconcile run after the fix delivers them."""
    h = authenticated
    if h.app_type == "SingleTenant":
        pytest.skip("single-tenant: the bot's own token comes from that tenant too, so everything stops")
    await h.connect()
    h.identity.remove_app_from_tenant(h.ms.bot_app_id, h.ms.tenant_id)
    conv = h.neeto.start_conversation(WS, visitor_name="Uli", visitor_email="uli@example.com", message="hello")

    async def problem():
        _, status = await h.admin("GET", f"/api/admin/workspaces/{WS}")
        return status["problem"] if status["deliveries"]["failed"] else None

    said = await wait_for(problem, timeout=30, what="the problem in the operator status")
    assert "gives the bridge no token" in said and "MicrosoftAppPassword" in said
    assert h.conversation_channel(conv["number"]) is None

    h.identity.restore_app_in_tenant(h.ms.bot_app_id, h.ms.tenant_id)
    await h.admin("POST", f"/api/admin/workspaces/{WS}/reconcile")  # what a periodic run does
    channel = await h.wait_channel(conv["number"], timeout=30)
    await wait_for(lambda: h.ms.posts(channel["id"]), timeout=30, what="the card in the channel")
    assert (await problem()) is None
