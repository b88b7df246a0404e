"""The identity sandbox, driven by the real clients the bridge uses, all over TLS.

azure-identity (Graph app-only tokens), MSAL as botbuilder builds it (the bot's outgoing
token), botbuilder's own validation of incoming activity tokens (every kind of bad token),
MSAL's authorization code + PKCE flow, and the Microsoft sandbox's opt-in token checks
with msgraph-sdk and botbuilder's connector client.

The identity sandbox runs on its own loop in a thread (``IdentityServer``): botbuilder and
MSAL make blocking ``requests`` calls from the test's loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import ssl
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp
import httpx
import jwt
import msal
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import ClientSecretCredential
from botbuilder.integration.aiohttp import ConfigurationBotFrameworkAuthentication
from botbuilder.schema import Activity
from botframework.connector.aio import ConnectorClient
from botframework.connector.auth import JwtTokenExtractor, MicrosoftAppCredentials
from botframework.connector.models import ErrorResponseException
from cryptography.hazmat.primitives.asymmetric import rsa
from kiota_abstractions.authentication import AnonymousAuthenticationProvider
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from kiota_http.middleware.options import RetryHandlerOption
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.models.channel import Channel
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph_core import GraphClientFactory

from sandbox.identity import (
    BOT_FRAMEWORK_RESOURCE,
    BOT_FRAMEWORK_SCOPE,
    BOT_FRAMEWORK_TENANT_ID,
    CHANNEL_ISSUER,
    GRAPH_DEFAULT_SCOPE,
    GRAPH_RESOURCE,
    IdentitySandbox,
    IdentityServer,
    pkce_challenge,
)
from sandbox.microsoft import MicrosoftSandbox
from sandbox.tls import make_test_tls

TENANT = "8d3e5c1a-4f27-4b9e-a6d0-2c71f0e9b5a4"  # MicrosoftSandbox's default tenant
BOT_APP_ID = "3f9a6c2e-81d4-4e57-b0a3-6d2c8e1f7b90"  # MicrosoftSandbox's default bot app id
BOT_SECRET = "bot-secret-value~0123456789"
OTHER_APP_ID = "0a1b2c3d-0000-4000-8000-00000000abcd"
SERVICE_URL = "https://smba.trafficmanager.net/emea/"
REDIRECT_URI = "https://bridge.test/admin/auth/callback"
ADA_OID = "6e0f7c5a-1b2d-4c3e-9f80-a1b2c3d4e5f6"


class Clock:
    """Real time plus an offset, so tokens stay valid for clients that use real time."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def tls(tmp_path):
    return make_test_tls(tmp_path / "tls")


@pytest.fixture
def idp(tls, monkeypatch):
    """The identity sandbox served over TLS in a thread; requests/MSAL trust the test CA."""
    for name, value in tls.env().items():
        monkeypatch.setenv(name, value)
    # botbuilder caches metadata per URL for the whole process; a new server may reuse a port.
    JwtTokenExtractor.metadataCache.clear()
    clock = Clock()
    identity = IdentitySandbox(clock=clock)
    identity.register_app(BOT_APP_ID, BOT_SECRET, TENANT, roles=["Channel.Create", "ChannelMessage.Read.All"])
    identity.add_user(ADA_OID, "Ada Lovelace", "ada@contoso.test", TENANT)
    identity.add_user(str(uuid.uuid4()), "Olly Other", "olly@fabrikam.test", str(uuid.uuid4()))
    with IdentityServer(identity, tls) as server:
        yield SimpleNamespace(identity=identity, server=server, url=server.url, tls=tls, clock=clock)
    JwtTokenExtractor.metadataCache.clear()


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def _paths(identity: IdentitySandbox) -> list[str]:
    return [f"{r['method']} {r['path']}" for r in identity.requests]


def _credential(idp, secret: str = BOT_SECRET, tenant: str = TENANT) -> ClientSecretCredential:
    # aiohttp builds its default SSL context when it is imported, so SSL_CERT_FILE set by a
    # test is too late for it: hand azure-core the bundle instead.
    return ClientSecretCredential(tenant, BOT_APP_ID, secret, authority=idp.url, disable_instance_discovery=True,
                                  connection_verify=str(idp.tls.bundle_path))


# ----------------------------------------------------------------- TLS


async def test_tls_bundle_trusts_the_test_ca_and_the_system_cas(idp):
    bundle = idp.tls.bundle_path.read_text()
    assert bundle.startswith(idp.tls.ca_path.read_text())
    assert bundle.count("BEGIN CERTIFICATE") > 100  # certifi's CAs follow
    async with aiohttp.ClientSession() as http:
        async with http.get(idp.identity.channel_metadata_url, ssl=idp.tls.client_ssl_context()) as resp:
            assert resp.status == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            certifi_only = ssl.create_default_context(cafile=requests.certs.where())
            await http.get(idp.identity.channel_metadata_url, ssl=certifi_only)
    localhost = idp.url.replace("127.0.0.1", "localhost")
    assert requests.get(localhost + "/botframework/v1/keys", timeout=10).status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(idp.identity.channel_metadata_url, verify=str(Path(requests.certs.where())), timeout=10)


# ----------------------------------------------------------------- Graph tokens (azure-identity)


async def test_client_secret_credential_gets_a_graph_token(idp):
    async with _credential(idp) as credential:
        token = await credential.get_token(GRAPH_DEFAULT_SCOPE)
        again = await credential.get_token(GRAPH_DEFAULT_SCOPE)

    assert again.token == token.token  # azure-identity caches it
    claims = _claims(token.token)
    assert claims["aud"] == GRAPH_RESOURCE
    assert claims["tid"] == TENANT
    assert claims["appid"] == BOT_APP_ID
    assert claims["roles"] == ["Channel.Create", "ChannelMessage.Read.All"]
    assert claims["iss"] == f"{idp.url}/{TENANT}/"
    assert token.expires_on > time.time() + 3000
    assert idp.identity.verify_access_token(token.token, audiences=(GRAPH_RESOURCE,), tenant=TENANT)
    # The async credential posts straight to the token endpoint: no metadata, no instance discovery.
    assert _paths(idp.identity) == [f"POST /{TENANT}/oauth2/v2.0/token"]
    form = idp.identity.requests[0]["form"]
    assert form == {"client_id": BOT_APP_ID, "client_secret": "<redacted>", "grant_type": "client_credentials",
                    "scope": GRAPH_DEFAULT_SCOPE}
    assert [i["kind"] for i in idp.identity.issued] == ["access_token"]


async def test_client_secret_credential_wrong_secret_raises_the_aadsts_message(idp):
    async with _credential(idp, secret="not-the-secret") as credential:
        with pytest.raises(ClientAuthenticationError) as raised:
            await credential.get_token(GRAPH_DEFAULT_SCOPE)

    assert "AADSTS7000215: Invalid client secret provided" in str(raised.value)
    assert idp.identity.requests[-1]["status"] == 401
    assert idp.identity.issued == []


@pytest.mark.parametrize(
    ("tenant", "scope", "status", "error", "code"),
    [
        (TENANT, "https://graph.microsoft.com/Channel.Create", 400, "invalid_scope", 1002012),
        (TENANT, "https://vault.azure.net/.default", 400, "invalid_resource", 500011),
        (str(uuid.UUID(int=7)), GRAPH_DEFAULT_SCOPE, 400, "unauthorized_client", 700016),
        ("nowhere.test", GRAPH_DEFAULT_SCOPE, 400, "invalid_request", 90002),
        ("common", GRAPH_DEFAULT_SCOPE, 400, "invalid_request", 90023),
    ],
)
async def test_token_endpoint_errors_in_aad_shape(idp, tenant, scope, status, error, code):
    form = {"grant_type": "client_credentials", "client_id": BOT_APP_ID, "client_secret": BOT_SECRET, "scope": scope}
    response = requests.post(f"{idp.url}/{tenant}/oauth2/v2.0/token", data=form, timeout=10)
    assert response.status_code == status
    body = response.json()
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert {"timestamp", "trace_id", "correlation_id"} <= set(body)


async def test_unknown_client_and_grant_and_path(idp):
    url = f"{idp.url}/{TENANT}/oauth2/v2.0/token"
    unknown = requests.post(url, data={"grant_type": "client_credentials", "client_id": OTHER_APP_ID,
                                       "client_secret": "x", "scope": GRAPH_DEFAULT_SCOPE}, timeout=10)
    assert (unknown.status_code, unknown.json()["error"]) == (400, "unauthorized_client")
    assert unknown.json()["error_codes"] == [700016]
    password = requests.post(url, data={"grant_type": "password", "client_id": BOT_APP_ID}, timeout=10)
    assert (password.status_code, password.json()["error_codes"]) == (400, [70003])
    discovery = requests.get(f"{idp.url}/common/discovery/instance", timeout=10)
    assert discovery.status_code == 404


# ----------------------------------------------------------------- the bot's token (MSAL via botbuilder)


def _bot_credentials(idp, secret: str = BOT_SECRET) -> MicrosoftAppCredentials:
    """What the bridge's credentials factory builds: botbuilder's credentials with an MSAL
    app that does not validate (or discover) the authority."""
    credentials = MicrosoftAppCredentials(BOT_APP_ID, secret)
    credentials.oauth_endpoint = idp.identity.bot_framework_login_url
    credentials.app = msal.ConfidentialClientApplication(
        BOT_APP_ID, client_credential=secret, authority=idp.identity.bot_framework_login_url,
        validate_authority=False)
    return credentials


async def test_msal_gets_a_bot_framework_token_for_botbuilder(idp):
    credentials = _bot_credentials(idp)
    token = await asyncio.to_thread(credentials.get_access_token)
    assert await asyncio.to_thread(credentials.get_access_token) == token  # MSAL's cache

    claims = _claims(token)
    assert claims["aud"] == BOT_FRAMEWORK_RESOURCE
    assert claims["appid"] == BOT_APP_ID
    assert claims["tid"] == BOT_FRAMEWORK_TENANT_ID
    assert "roles" not in claims
    assert _paths(idp.identity) == [
        "GET /botframework.com/v2.0/.well-known/openid-configuration",
        "POST /botframework.com/oauth2/v2.0/token",
    ]
    form = idp.identity.requests[1]["form"]
    assert form["scope"] == BOT_FRAMEWORK_SCOPE
    assert form["grant_type"] == "client_credentials"
    assert form["client_secret"] == "<redacted>"


async def test_msal_wrong_secret_is_a_permission_error_in_botbuilder(idp):
    credentials = _bot_credentials(idp, secret="wrong")
    with pytest.raises(PermissionError, match="invalid_client.*AADSTS7000215"):
        await asyncio.to_thread(credentials.get_access_token)


async def test_msal_with_authority_validation_asks_microsoft_first(idp):
    """What botbuilder's own MicrosoftAppCredentials does (validate_authority left on):
    MSAL calls instance discovery on login.microsoftonline.com already in the constructor,
    which fails offline (and Microsoft refuses a non-Microsoft authority)."""

    def build_and_acquire() -> dict:
        app = msal.ConfidentialClientApplication(BOT_APP_ID, client_credential=BOT_SECRET,
                                                 authority=idp.identity.bot_framework_login_url)
        return app.acquire_token_for_client([BOT_FRAMEWORK_SCOPE])

    try:
        result = await asyncio.to_thread(build_and_acquire)
    except (ValueError, requests.exceptions.RequestException) as exc:  # offline, or refused by Microsoft
        result = {"error": type(exc).__name__}
    assert "access_token" not in result
    assert idp.identity.requests == [] and idp.identity.issued == []


# ----------------------------------------------------------------- incoming activity tokens (botbuilder)


def _auth(idp) -> ConfigurationBotFrameworkAuthentication:
    config = SimpleNamespace(
        APP_ID=BOT_APP_ID, APP_PASSWORD=BOT_SECRET, APP_TYPE="MultiTenant", APP_TENANTID="",
        CHANNEL_SERVICE=None, VALIDATE_AUTHORITY=False,
        TO_CHANNEL_FROM_BOT_LOGIN_URL=idp.identity.bot_framework_login_url,
        TO_CHANNEL_FROM_BOT_OAUTH_SCOPE=BOT_FRAMEWORK_RESOURCE,
        TO_BOT_FROM_CHANNEL_TOKEN_ISSUER=CHANNEL_ISSUER,
        OAUTH_URL="https://api.botframework.com",
        TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL=idp.identity.channel_metadata_url,
        TO_BOT_FROM_EMULATOR_OPENID_METADATA_URL=idp.identity.channel_metadata_url,
        CALLER_ID=None,
    )
    return ConfigurationBotFrameworkAuthentication(config)


def _activity(service_url: str = SERVICE_URL, channel_id: str = "msteams") -> Activity:
    return Activity(type="message", id="1732812345678", channel_id=channel_id, service_url=service_url,
                    text="hello")


async def test_botbuilder_accepts_a_valid_channel_token(idp):
    token = idp.identity.channel_token(BOT_APP_ID, SERVICE_URL)
    # botbuilder's blocking metadata fetch runs on this loop; the sandbox has its own.
    result = await _auth(idp).authenticate_request(_activity(), f"Bearer {token}")

    assert result.claims_identity.is_authenticated
    assert result.claims_identity.claims["aud"] == BOT_APP_ID
    assert result.claims_identity.claims["serviceurl"] == SERVICE_URL
    assert result.audience == BOT_FRAMEWORK_RESOURCE
    assert _paths(idp.identity) == ["GET /botframework/v1/.well-known/openidconfiguration", "GET /botframework/v1/keys"]
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256" and header["kid"]
    jwks = requests.get(f"{idp.url}/botframework/v1/keys", timeout=10).json()
    assert jwks["keys"][0]["endorsements"] == ["msteams"]
    assert jwks["keys"][0]["kid"] == header["kid"]
    assert set(_claims(token)) == {"iss", "aud", "serviceurl", "nbf", "exp", "iat"}


_OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)

# kind → (channel_token kwargs, activity kwargs, auth header override, expected exception, message pattern).
# The table botbuilder 4.17.1 produces: only some failures are PermissionError.
BAD_TOKENS = {
    "wrong audience": ({"audience": OTHER_APP_ID}, {}, None, PermissionError, "Invalid AppId"),
    "expired": ({"expires_in": -301}, {}, None, jwt.ExpiredSignatureError, "expired"),
    "not yet valid": ({"not_before": time.time() + 3600}, {}, None, jwt.ImmatureSignatureError, "not yet valid"),
    "bad signature": ({"sign_with": _OTHER_KEY}, {}, None, jwt.InvalidSignatureError, "Signature verification"),
    "unknown kid": ({"kid": "not-a-published-kid"}, {}, None, IndexError, "list index out of range"),
    "unknown issuer": ({"issuer": "https://evil.example"}, {}, None, PermissionError, "Identity missing"),
    "serviceurl mismatch": ({}, {"service_url": "https://attacker.example/"}, None, PermissionError,
                            "serviceurl"),
    "alg none": ({"alg": "none"}, {}, None, Exception, "Token signing algorithm not in allowed list"),
    "wrong endorsement": ({}, {"channel_id": "slack"}, None, Exception, "Could not validate endorsement key"),
    # authenticate_request itself refuses a missing header cleanly; CloudAdapter.process fails
    # with "'NoneType' object has no attribute 'claims'" before it gets here (see the notes).
    "no header": ({}, {}, "", PermissionError, "Unauthorized Access. Request is not authorized"),
    "not bearer": ({}, {}, "Basic {token}", PermissionError, "Identity missing"),
}


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_botbuilder_refuses_each_kind_of_bad_channel_token(idp, kind):
    token_kwargs, activity_kwargs, header, expected, pattern = BAD_TOKENS[kind]
    token = idp.identity.channel_token(BOT_APP_ID, SERVICE_URL, **token_kwargs)
    auth_header = f"Bearer {token}" if header is None else (header.format(token=token) or None)

    with pytest.raises(Exception) as raised:  # noqa: B017 - the type is the measurement
        await _auth(idp).authenticate_request(_activity(**activity_kwargs), auth_header)

    assert type(raised.value) is expected, f"{kind}: {type(raised.value).__name__}: {raised.value}"
    assert re.search(pattern, str(raised.value), re.IGNORECASE), str(raised.value)


async def test_botbuilder_checks_endorsements_of_the_key(idp):
    """A key endorsed for another channel does not sign Teams activities (added before
    botbuilder first fetches the JWKS, which it caches for a day)."""
    kid = idp.identity.add_channel_key(endorsements=["webchat"])
    token = idp.identity.channel_token(BOT_APP_ID, SERVICE_URL, kid=kid)
    assert jwt.get_unverified_header(token)["kid"] == kid
    with pytest.raises(Exception, match="Could not validate endorsement key"):
        await _auth(idp).authenticate_request(_activity(), f"Bearer {token}")
    result = await _auth(idp).authenticate_request(_activity(channel_id="webchat"), f"Bearer {token}")
    assert result.claims_identity.claims["aud"] == BOT_APP_ID


# ----------------------------------------------------------------- delegated sign-in (auth code + PKCE)


def _sign_in(flow: dict, name: str) -> dict:
    """Follow the sign-in page's link for ``name`` without JavaScript; the redirect's query."""
    page = requests.get(flow["auth_uri"], timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    links = dict((label, href) for href, label in re.findall(r'<a href="([^"]+)">Sign in as ([^<(]+?) \(', page.text))
    href = links[name].replace("&amp;", "&")
    redirect = requests.get(urljoin(flow["auth_uri"], href), allow_redirects=False, timeout=10)
    assert redirect.status_code == 302
    location = redirect.headers["Location"]
    assert location.startswith(REDIRECT_URI + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def _web_app(idp, tenant: str = "organizations") -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(BOT_APP_ID, client_credential=BOT_SECRET,
                                              authority=idp.identity.authority(tenant), validate_authority=False)


async def test_auth_code_flow_with_pkce_signs_an_admin_in(idp):
    app = _web_app(idp)
    flow = await asyncio.to_thread(app.initiate_auth_code_flow, ["User.Read"], redirect_uri=REDIRECT_URI)
    query = parse_qs(urlsplit(flow["auth_uri"]).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["code_challenge"] == [pkce_challenge(flow["code_verifier"])]

    auth_response = await asyncio.to_thread(_sign_in, flow, "Ada Lovelace")
    assert auth_response["state"] == flow["state"]
    result = await asyncio.to_thread(app.acquire_token_by_auth_code_flow, flow, auth_response)

    assert "access_token" in result, result
    id_claims = result["id_token_claims"]
    # MSAL sends sha256(nonce) as the nonce and checks the id token carries it back.
    assert id_claims["nonce"] == hashlib.sha256(flow["nonce"].encode()).hexdigest()
    assert query["nonce"] == [id_claims["nonce"]]
    assert id_claims["aud"] == BOT_APP_ID
    assert (id_claims["oid"], id_claims["tid"]) == (ADA_OID, TENANT)
    assert (id_claims["preferred_username"], id_claims["name"]) == ("ada@contoso.test", "Ada Lovelace")
    access = _claims(result["access_token"])
    assert (access["aud"], access["scp"], access["oid"]) == (GRAPH_RESOURCE, "User.Read", ADA_OID)
    assert result.get("refresh_token")
    token_form = idp.identity.requests[-1]["form"]
    assert token_form["grant_type"] == "authorization_code"
    assert token_form["code_verifier"] == flow["code_verifier"]
    assert token_form["redirect_uri"] == REDIRECT_URI
    assert _paths(idp.identity) == [
        "GET /organizations/v2.0/.well-known/openid-configuration",
        "GET /organizations/oauth2/v2.0/authorize",
        "GET /organizations/oauth2/v2.0/authorize/select",
        "POST /organizations/oauth2/v2.0/token",
    ]
    accounts = app.get_accounts()
    assert [a["username"] for a in accounts] == ["ada@contoso.test"]


async def test_auth_code_flow_state_is_checked_by_msal(idp):
    app = _web_app(idp)
    flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT_URI)
    auth_response = _sign_in(flow, "Ada Lovelace")
    with pytest.raises(ValueError, match="state"):
        app.acquire_token_by_auth_code_flow(flow, dict(auth_response, state="forged"))


async def test_auth_code_flow_nonce_is_checked_by_msal(idp):
    app = _web_app(idp)
    flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT_URI)
    auth_response = _sign_in(flow, "Ada Lovelace")
    with pytest.raises(RuntimeError, match="nonce"):
        app.acquire_token_by_auth_code_flow(dict(flow, nonce="another-nonce"), auth_response)


def _redeem(idp, code: str, verifier: str, redirect_uri: str = REDIRECT_URI) -> requests.Response:
    return requests.post(f"{idp.url}/organizations/oauth2/v2.0/token", timeout=10, data={
        "grant_type": "authorization_code", "client_id": BOT_APP_ID, "client_secret": BOT_SECRET, "code": code,
        "code_verifier": verifier, "redirect_uri": redirect_uri, "scope": "User.Read openid profile offline_access"})


async def test_auth_code_is_single_use_pkce_checked_and_expiring(idp):
    app = _web_app(idp)

    flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT_URI)
    code = _sign_in(flow, "Ada Lovelace")["code"]
    bad_verifier = _redeem(idp, code, "x" * 43)
    assert (bad_verifier.status_code, bad_verifier.json()["error"]) == (400, "invalid_grant")
    assert "code_challenge" in bad_verifier.json()["error_description"]
    reused = _redeem(idp, code, flow["code_verifier"])  # a failed redemption still spends the code
    assert reused.json()["error_codes"] == [54005]

    flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT_URI)
    code = _sign_in(flow, "Ada Lovelace")["code"]
    assert _redeem(idp, code, flow["code_verifier"], "https://elsewhere.test/cb").json()["error_codes"] == [500112]

    flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT_URI)
    code = _sign_in(flow, "Ada Lovelace")["code"]
    assert _redeem(idp, code, flow["code_verifier"]).status_code == 200
    assert _redeem(idp, code, flow["code_verifier"]).json()["error_codes"] == [54005]

    flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT_URI)
    code = _sign_in(flow, "Ada Lovelace")["code"]
    idp.clock.offset = 601
    assert _redeem(idp, code, flow["code_verifier"]).json()["error_codes"] == [70008]


async def test_authorize_page_checks_the_request(idp):
    verifier = base64.urlsafe_b64encode(hashlib.sha256(b"v").digest()).decode().rstrip("=")
    base = {"client_id": BOT_APP_ID, "redirect_uri": REDIRECT_URI, "response_type": "code", "scope": "openid",
            "state": "s1", "code_challenge": pkce_challenge(verifier), "code_challenge_method": "S256"}
    url = f"{idp.url}/{TENANT}/oauth2/v2.0/authorize"

    page = requests.get(url, params=base, timeout=10)
    assert "Sign in as Ada Lovelace" in page.text
    assert "Olly Other" not in page.text  # another tenant's user cannot sign in on this tenant
    assert requests.get(url, params=dict(base, client_id=OTHER_APP_ID), timeout=10).status_code == 400
    assert requests.get(url, params=dict(base, redirect_uri="http://evil.test/cb"), timeout=10).status_code == 400
    no_pkce = requests.get(url, params={k: v for k, v in base.items() if not k.startswith("code_")},
                           allow_redirects=False, timeout=10)
    assert no_pkce.status_code == 302
    error = parse_qs(urlsplit(no_pkce.headers["Location"]).query)
    assert error["error"] == ["invalid_request"] and error["state"] == ["s1"]


# ----------------------------------------------------------------- Microsoft sandbox enforcement


@pytest.fixture
async def strict_ms(idp, aiohttp_server):
    """The Microsoft sandbox requiring tokens from the identity sandbox, with a bot endpoint
    that validates what Teams sends it with botbuilder."""
    received: list[tuple[int, str]] = []

    async def messages(request: aiohttp.web.Request) -> aiohttp.web.Response:
        body = await request.json()
        try:
            await _auth(idp).authenticate_request(Activity().deserialize(body), request.headers.get("Authorization"))
        except Exception as exc:  # every authentication failure is a 401
            received.append((401, type(exc).__name__))
            return aiohttp.web.Response(status=401)
        received.append((200, body["type"]))
        return aiohttp.web.Response(status=200)

    bot_app = aiohttp.web.Application()
    bot_app.router.add_post("/api/messages", messages)
    bot = await aiohttp_server(bot_app)
    ms = MicrosoftSandbox()
    server = await aiohttp_server(ms.app())
    ms.set_base_url(str(server.make_url("")))
    ms.bot_endpoint = str(bot.make_url("/api/messages"))
    ms.require_tokens(idp.identity)
    alice = ms.add_user(name="Alice Adams", email="alice@contoso.test")
    team = ms.add_team(name="Support", members=[alice])
    return SimpleNamespace(ms=ms, team=team, alice=alice, received=received)


def _graph(base_url: str, provider) -> tuple[GraphServiceClient, httpx.AsyncClient]:
    options = {RetryHandlerOption.get_key(): RetryHandlerOption(max_retries=0, should_retry=False)}
    http = GraphClientFactory.create_with_default_middleware(client=httpx.AsyncClient(), options=options)
    adapter = GraphRequestAdapter(provider, client=http)
    adapter.base_url = base_url
    return GraphServiceClient(request_adapter=adapter), http


async def test_require_tokens_graph_without_a_token_is_401(strict_ms):
    graph, http = _graph(strict_ms.ms.graph_url, AnonymousAuthenticationProvider())
    try:
        with pytest.raises(ODataError) as raised:
            await graph.teams.by_team_id(strict_ms.team["aadGroupId"]).channels.post(Channel(display_name="1 Vera"))
    finally:
        await http.aclose()
    assert raised.value.response_status_code == 401
    assert raised.value.error.code == "InvalidAuthenticationToken"
    assert strict_ms.ms.channels(strict_ms.team["id"]) and len(strict_ms.ms.channels(strict_ms.team["id"])) == 1


async def test_require_tokens_graph_with_a_client_secret_credential_token_is_201(idp, strict_ms):
    async with _credential(idp) as credential:
        provider = AzureIdentityAuthenticationProvider(credential, scopes=[GRAPH_DEFAULT_SCOPE],
                                                       allowed_hosts=["127.0.0.1"])
        graph, http = _graph(strict_ms.ms.graph_url, provider)
        try:
            created = await graph.teams.by_team_id(strict_ms.team["aadGroupId"]).channels.post(
                Channel(display_name="1042 Vera Jones"))
        finally:
            await http.aclose()
    assert created.display_name == "1042 Vera Jones"
    entry = next(r for r in strict_ms.ms.requests if r["method"] == "POST")
    assert entry["status"] == 201 and entry["authorization"].startswith("Bearer ey")


@pytest.mark.parametrize("which", ["bot framework token", "other tenant", "expired", "foreign signature"])
async def test_require_tokens_graph_refuses_wrong_tokens(idp, strict_ms, which):
    other_tenant = str(uuid.uuid4())
    idp.identity.register_app(OTHER_APP_ID, "other-secret", other_tenant)
    if which == "bot framework token":
        token = await asyncio.to_thread(_bot_credentials(idp).get_access_token)
    elif which == "other tenant":
        async with ClientSecretCredential(other_tenant, OTHER_APP_ID, "other-secret", authority=idp.url,
                                          disable_instance_discovery=True,
                                          connection_verify=str(idp.tls.bundle_path)) as credential:
            token = (await credential.get_token(GRAPH_DEFAULT_SCOPE)).token
    elif which == "expired":
        idp.clock.offset = -7200
        async with _credential(idp) as credential:
            token = (await credential.get_token(GRAPH_DEFAULT_SCOPE)).token
        idp.clock.offset = 0
    else:
        token = jwt.encode({"aud": GRAPH_RESOURCE, "tid": TENANT, "exp": time.time() + 600}, _OTHER_KEY, "RS256")
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{strict_ms.ms.graph_url}/teams/{strict_ms.team['aadGroupId']}/channels",
                                  headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


async def test_require_tokens_connector_needs_the_bots_bot_framework_token(idp, strict_ms):
    ms = strict_ms.ms
    await ms.install_bot(strict_ms.team["id"], by_user=strict_ms.alice)
    activity = Activity(type="message", text="hello")

    async with ConnectorClient(MicrosoftAppCredentials(None, None), base_url=ms.service_url) as anonymous:
        with pytest.raises(ErrorResponseException) as raised:
            await anonymous.conversations.send_to_conversation(strict_ms.team["id"], activity)
    assert raised.value.response.status_code == 401

    async with _credential(idp) as credential:  # a Graph token is not a connector token
        graph_token = (await credential.get_token(GRAPH_DEFAULT_SCOPE)).token
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{ms.service_url}v3/conversations/{strict_ms.team['id']}/activities",
                                   json={"type": "message", "text": "hi"},
                                   headers={"Authorization": f"Bearer {graph_token}"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "Unauthorized"

    credentials = _bot_credentials(idp)
    await asyncio.to_thread(credentials.get_access_token)  # MSAL is blocking; warm its cache off the loop
    async with ConnectorClient(credentials, base_url=ms.service_url) as connector:
        sent = await connector.conversations.send_to_conversation(strict_ms.team["id"], activity)
    assert sent.id
    assert [p["text"] for p in ms.posts(strict_ms.team["id"])] == ["hello"]


async def test_require_tokens_signs_activities_sent_to_the_bot(idp, strict_ms):
    ms = strict_ms.ms
    statuses = await ms.install_bot(strict_ms.team["id"], by_user=strict_ms.alice)
    result = await ms.user_posts(strict_ms.team["id"], strict_ms.team["id"], strict_ms.alice, "hi")

    assert statuses == [200, 200]
    assert result["status"] == 200
    assert strict_ms.received == [(200, "installationUpdate"), (200, "conversationUpdate"), (200, "message")]
    channel_tokens = [i for i in idp.identity.issued if i["kind"] == "channel"]
    assert len(channel_tokens) == 3
    assert {i["claims"]["serviceurl"] for i in channel_tokens} == {ms.service_url}
    assert {i["claims"]["aud"] for i in channel_tokens} == {ms.bot_app_id}

