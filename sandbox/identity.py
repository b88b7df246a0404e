"""A strict local stand-in for the Microsoft identity platform, for tests.

One aiohttp application, to be served over TLS (MSAL refuses ``http://`` authorities; see
``sandbox/tls.py``), behaves like ``login.microsoftonline.com`` plus the Bot Framework
token service for the paths the bridge's clients use:

* Entra ID v2 endpoints for any tenant path (a tenant id, a registered domain such as
  ``botframework.com``, or ``common``/``organizations`` for sign-in):
  ``GET /{tenant}/v2.0/.well-known/openid-configuration``, ``GET /{tenant}/discovery/v2.0/keys``,
  ``POST /{tenant}/oauth2/v2.0/token`` (``client_credentials``, ``authorization_code`` with
  PKCE, ``refresh_token``) and ``GET /{tenant}/oauth2/v2.0/authorize`` (a tiny HTML page with
  one "Sign in as …" link per user; following a link redirects to ``redirect_uri`` with
  ``code`` and ``state``, no JavaScript needed). Errors use AAD's JSON shape
  (``error``, ``error_description`` starting with ``AADSTSnnnn:``, ``error_codes``, ...).
  Graph and Bot Framework access tokens are v1-shaped like the real ones
  (``aud`` = resource, ``appid``, ``tid``, ``ver`` "1.0", ``iss`` = ``{base}/{tid}/``);
  id tokens are v2 (``iss`` = ``{base}/{tid}/v2.0``).
* What Teams uses to sign activities sent to the bot: an OpenID metadata document at
  ``/botframework/v1/.well-known/openidconfiguration`` (the bridge's
  ``TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL``) pointing at ``/botframework/v1/keys``, whose
  keys carry ``endorsements``; ``channel_token()`` signs tokens as the Bot Framework does, and
  its parameters make each kind of bad token.

Everything is recorded: ``requests`` (every request, client secrets redacted) and ``issued``
(every token with its claims). Tokens are checked in-process by ``verify_access_token``
(what ``MicrosoftSandbox.require_tokens`` uses).

botbuilder fetches the channel metadata with *blocking* ``requests`` calls, so a sandbox
served on the event loop of the code under test deadlocks; ``IdentityServer`` serves it on
its own loop in a background thread. botbuilder also caches signing keys per metadata URL
for the whole process (a day; an unknown ``kid`` refetches at most hourly), so the default
signing keys are shared by every ``IdentitySandbox`` of a process: a later test that gets
the same port still finds the keys it expects.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from sandbox.tls import TestTLS

GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
BOT_FRAMEWORK_RESOURCE = "https://api.botframework.com"
GRAPH_DEFAULT_SCOPE = GRAPH_RESOURCE + "/.default"
BOT_FRAMEWORK_SCOPE = BOT_FRAMEWORK_RESOURCE + "/.default"
BOT_FRAMEWORK_TENANT = "botframework.com"
BOT_FRAMEWORK_TENANT_ID = "d6d49420-f39b-4df7-a1dc-d59a935871db"  # Microsoft's, as in real tokens
CHANNEL_ISSUER = "https://api.botframework.com"
CHANNEL_METADATA_PATH = "/botframework/v1/.well-known/openidconfiguration"
CHANNEL_KEYS_PATH = "/botframework/v1/keys"
MULTI_TENANT = ("common", "organizations")
OIDC_SCOPES = {"openid", "profile", "offline_access", "email"}
CODE_LIFETIME = 600  # seconds, as Entra's authorization codes
TOKEN_LIFETIME = 3599

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_KEYS: dict[str, rsa.RSAPrivateKey] = {}
_KEYS_LOCK = threading.Lock()


def shared_key(name: str) -> rsa.RSAPrivateKey:
    """An RSA key generated once per process and name (see the module docstring)."""
    with _KEYS_LOCK:
        if name not in _KEYS:
            _KEYS[name] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return _KEYS[name]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_id(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> str:
    """A thumbprint of the public key, used as ``kid`` (and ``x5t``)."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    numbers = public.public_numbers()
    return _b64url(hashlib.sha256(f"{numbers.n}:{numbers.e}".encode()).digest()[:20])


def pkce_challenge(verifier: str) -> str:
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


class TokenError(Exception):
    """An access token the identity sandbox did not issue, or not for this audience/tenant."""


class AADError(Exception):
    """An error answer in AAD's shape."""

    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(f"AADSTS{code}: {description}")
        self.status = status
        self.error = error
        self.code = code
        self.description = description


@dataclass
class RegisteredApp:
    app_id: str
    secret: str
    tenant: str  # the home tenant id
    name: str
    roles: list[str]  # application permissions granted (the ``roles`` claim)
    redirect_uris: list[str] | None  # None: any https/http(localhost) redirect is accepted
    service_principal_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class _SigningKey:
    key: rsa.RSAPrivateKey
    kid: str
    endorsements: list[str] | None = None

    def jwk(self) -> dict[str, Any]:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"use": "sig", "kid": self.kid, "x5t": self.kid})
        if self.endorsements is not None:
            jwk["endorsements"] = list(self.endorsements)
        return jwk


class IdentitySandbox:
    """Entra ID + the Bot Framework token service + Teams' activity signing."""

    def __init__(self, *, clock: Callable[[], float] = time.time,
                 channel_endorsements: tuple[str, ...] = ("msteams",)) -> None:
        self._clock = clock
        self.base_url = "https://127.0.0.1"
        self.apps: dict[str, RegisteredApp] = {}
        self.removed_from: set[tuple[str, str]] = set()  # (app id, tenant id): no tokens there
        self.users: dict[str, dict[str, Any]] = {}  # by object id
        self.tenant_aliases: dict[str, str] = {BOT_FRAMEWORK_TENANT: BOT_FRAMEWORK_TENANT_ID}
        self.requests: list[dict[str, Any]] = []
        self.issued: list[dict[str, Any]] = []
        self._entra_key = _SigningKey(shared_key("entra"), key_id(shared_key("entra")))
        channel = shared_key("channel")
        self._channel_keys = [_SigningKey(channel, key_id(channel), list(channel_endorsements))]
        self._tickets: dict[str, dict[str, Any]] = {}  # pending sign-ins (authorize → select)
        self._codes: dict[str, dict[str, Any]] = {}
        self._refresh_tokens: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()  # tests call in from another thread than the server's

    # ----------------------------------------------------------------- setup

    def set_base_url(self, url: str) -> None:
        self.base_url = url.rstrip("/")

    @property
    def channel_metadata_url(self) -> str:
        """The bridge's ``TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL``."""
        return self.base_url + CHANNEL_METADATA_PATH

    @property
    def bot_framework_login_url(self) -> str:
        """The bridge's ``TO_CHANNEL_FROM_BOT_LOGIN_URL`` (an authority ending in a tenant)."""
        return f"{self.base_url}/{BOT_FRAMEWORK_TENANT}"

    def authority(self, tenant: str) -> str:
        """An MSAL authority for ``tenant`` (``{base}/{tenant}``)."""
        return f"{self.base_url}/{tenant}"

    def register_app(self, app_id: str, secret: str, tenant: str, *, name: str = "neetoChat",
                     roles: list[str] | None = None, redirect_uris: list[str] | None = None) -> RegisteredApp:
        app = RegisteredApp(app_id, secret, self._resolve_tenant(tenant) or tenant, name,
                            list(roles or []), redirect_uris)
        self.apps[app_id] = app
        return app

    def remove_app_from_tenant(self, app_id: str, tenant_id: str) -> None:
        """A tenant admin deletes the app's enterprise application (its service principal):
        the app gets no more tokens for that tenant (Graph), while tokens from other tenants
        (the Bot Framework's) still come. ``restore_app_in_tenant`` undoes it."""
        self.removed_from.add((app_id, tenant_id))

    def restore_app_in_tenant(self, app_id: str, tenant_id: str) -> None:
        self.removed_from.discard((app_id, tenant_id))

    def add_tenant_alias(self, domain: str, tenant_id: str) -> None:
        self.tenant_aliases[domain.lower()] = tenant_id

    def add_user(self, oid: str, name: str, email: str, tenant: str) -> dict[str, Any]:
        user = {"oid": oid, "name": name, "email": email, "tenant": self._resolve_tenant(tenant) or tenant}
        self.users[oid] = user
        return user

    def add_channel_key(self, endorsements: list[str] | None = None) -> str:
        """Another key in the channel JWKS (e.g. endorsed for another channel); its kid.
        Add keys before the bot first fetches the JWKS: botbuilder caches it for a day."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._channel_keys.append(_SigningKey(key, key_id(key), endorsements))
        return self._channel_keys[-1].kid

    # ----------------------------------------------------------------- tokens

    def _record(self, kind: str, token: str, claims: dict[str, Any], **extra: Any) -> str:
        self.issued.append({"kind": kind, "token": token, "claims": claims, **extra})
        return token

    def _sign(self, claims: dict[str, Any], key: _SigningKey) -> str:
        return jwt.encode(claims, key.key, algorithm="RS256", headers={"kid": key.kid, "x5t": key.kid, "typ": "JWT"})

    def channel_token(self, app_id: str, service_url: str, *, issuer: str = CHANNEL_ISSUER,
                      audience: str | None = None, expires_in: float = 3600, not_before: float | None = None,
                      kid: str | None = None, sign_with: rsa.RSAPrivateKey | None = None, alg: str = "RS256",
                      claims: dict[str, Any] | None = None) -> str:
        """A token as the Bot Framework signs activities sent to a bot.

        Bad kinds: ``audience=`` another app, ``expires_in`` negative (beyond the 300 s
        leeway), ``not_before`` in the future, ``sign_with=`` another key (the header keeps the
        published kid), ``kid=`` one not published (a published kid signs with that key, e.g.
        one from ``add_channel_key`` endorsed for another channel), ``issuer=`` another, ``service_url``
        unlike the activity's, ``alg="none"`` (unsigned). ``claims`` adds or overrides claims.
        """
        now = int(self._clock())
        body: dict[str, Any] = {
            "serviceurl": service_url, "nbf": int(now if not_before is None else not_before),
            "exp": int(now + expires_in), "iss": issuer, "aud": audience or app_id, "iat": now,
        }
        body.update(claims or {})
        signer = next((k for k in self._channel_keys if k.kid == kid), self._channel_keys[0])
        header_kid = kid or signer.kid
        headers = {"kid": header_kid, "x5t": header_kid, "typ": "JWT"}
        if alg.lower() == "none":
            token = jwt.encode(body, None, algorithm="none", headers=headers)
        else:
            token = jwt.encode(body, sign_with or signer.key, algorithm=alg, headers=headers)
        return self._record("channel", token, body, app_id=app_id)

    def _access_token(self, *, app: RegisteredApp, tenant_id: str, resource: str, user: dict[str, Any] | None = None,
                      scp: str | None = None) -> tuple[str, dict[str, Any]]:
        now = int(self._clock())
        claims: dict[str, Any] = {
            "aud": resource, "iss": f"{self.base_url}/{tenant_id}/", "iat": now, "nbf": now,
            "exp": now + TOKEN_LIFETIME, "appid": app.app_id, "app_displayname": app.name, "appidacr": "1",
            "idp": f"{self.base_url}/{tenant_id}/", "tid": tenant_id, "uti": _b64url(secrets.token_bytes(16)),
            "ver": "1.0",
        }
        if user is None:
            claims.update({"oid": app.service_principal_id, "sub": app.service_principal_id, "idtyp": "app"})
            if app.roles and resource == GRAPH_RESOURCE:
                claims["roles"] = list(app.roles)
        else:
            claims.update({"oid": user["oid"], "sub": _b64url(hashlib.sha256(
                f"{user['oid']}:{app.app_id}:access".encode()).digest()), "idtyp": "user", "name": user["name"],
                "upn": user["email"], "unique_name": user["email"], "scp": scp or ""})
        token = self._sign(claims, self._entra_key)
        self._record("access_token", token, claims, app_id=app.app_id)
        return token, claims

    def verify_access_token(self, token: str, *, audiences: tuple[str, ...], tenant: str | None = None,
                            app_id: str | None = None) -> dict[str, Any]:
        """Claims of an access token this sandbox issued, else ``TokenError``: signature,
        expiry (by the sandbox's clock), audience, and optionally tenant and app."""
        try:
            claims = jwt.decode(token, self._entra_key.key.public_key(), algorithms=["RS256"],
                                options={"verify_aud": False, "verify_exp": False, "verify_nbf": False,
                                         "verify_iat": False})
        except jwt.PyJWTError as exc:
            raise TokenError(f"Invalid token: {exc}") from None
        now = self._clock()
        if not claims.get("exp") or claims["exp"] < now:
            raise TokenError("Lifetime validation failed, the token is expired.")
        if claims.get("nbf", 0) > now + 300:
            raise TokenError("Lifetime validation failed, the token is not yet valid.")
        if claims.get("aud") not in audiences:
            raise TokenError(f"Invalid audience {claims.get('aud')!r}.")
        if tenant is not None and claims.get("tid") != tenant:
            raise TokenError(f"Token for tenant {claims.get('tid')!r}, not {tenant!r}.")
        if app_id is not None and claims.get("appid") != app_id:
            raise TokenError(f"Token for app {claims.get('appid')!r}, not {app_id!r}.")
        return claims

    # ----------------------------------------------------------------- the app

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_routes([
            web.get(CHANNEL_METADATA_PATH, self._channel_metadata),
            web.get(CHANNEL_KEYS_PATH, self._channel_jwks),
            web.get("/{tenant}/v2.0/.well-known/openid-configuration", self._openid_configuration),
            web.get("/{tenant}/discovery/v2.0/keys", self._entra_jwks),
            web.post("/{tenant}/oauth2/v2.0/token", self._token),
            web.get("/{tenant}/oauth2/v2.0/authorize", self._authorize),
            web.get("/{tenant}/oauth2/v2.0/authorize/select", self._select_user),
        ])
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        form: dict[str, str] | None = None
        if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
            form = {k: ("<redacted>" if k in ("client_secret", "client_assertion") else v)
                    for k, v in (await request.post()).items() if isinstance(v, str)}
        entry: dict[str, Any] = {"method": request.method, "path": request.path, "query": dict(request.query),
                                 "form": form, "status": None, "time": self._clock(), "error": None}
        self.requests.append(entry)
        try:
            response = await handler(request)
        except AADError as exc:
            entry["error"] = exc.error
            response = self._aad_error(exc)
        except web.HTTPException as exc:
            if exc.status in (301, 302, 303, 307, 308):
                entry["status"] = exc.status
                raise
            response = self._aad_error(AADError(exc.status, "invalid_request", 900561,
                                                f"The endpoint {request.path} is not served by the sandbox."))
        entry["status"] = response.status
        return response

    def _aad_error(self, exc: AADError) -> web.Response:
        trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(self._clock()))
        return web.json_response({
            "error": exc.error,
            "error_description": f"AADSTS{exc.code}: {exc.description} Trace ID: {trace} "
                                 f"Correlation ID: {correlation} Timestamp: {stamp}",
            "error_codes": [exc.code], "timestamp": stamp, "trace_id": trace, "correlation_id": correlation,
            "error_uri": f"{self.base_url}/error?code={exc.code}",
        }, status=exc.status)

    def _resolve_tenant(self, tenant: str) -> str | None:
        """A tenant path segment → tenant id; None for ``common``/``organizations``."""
        lowered = tenant.lower()
        if lowered in MULTI_TENANT:
            return None
        if lowered in self.tenant_aliases:
            return self.tenant_aliases[lowered]
        try:
            return str(uuid.UUID(tenant))
        except ValueError:
            raise AADError(400, "invalid_request", 90002, f"Tenant '{tenant}' not found. Check to make sure you "
                           "have the correct tenant ID and are signing into the correct cloud.") from None

    # -------------------------------------------------------- Entra metadata

    async def _openid_configuration(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        tenant_id = self._resolve_tenant(tenant)
        base = f"{self.base_url}/{tenant}"
        return web.json_response({
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{self.base_url}/{tenant_id or '{tenantid}'}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True, "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "acr", "nonce",
                                 "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
            "kerberos_endpoint": f"{base}/kerberos",
            "tenant_region_scope": "EU", "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net", "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        })

    async def _entra_jwks(self, request: web.Request) -> web.Response:
        self._resolve_tenant(request.match_info["tenant"])
        return web.json_response({"keys": [self._entra_key.jwk()]})

    async def _channel_metadata(self, request: web.Request) -> web.Response:
        return web.json_response({
            "issuer": CHANNEL_ISSUER,
            "authorization_endpoint": "https://invalid.botframework.com",
            "jwks_uri": self.base_url + CHANNEL_KEYS_PATH,
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        })

    async def _channel_jwks(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [key.jwk() for key in self._channel_keys]})

    # -------------------------------------------------------- token endpoint

    def _client(self, request: web.Request, form: dict[str, str], *, secret_required: bool = True) -> RegisteredApp:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):  # client_secret_basic
            try:
                client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                raise AADError(401, "invalid_client", 7000216, "'client_assertion', 'client_secret' or "
                               "'request' is required for the 'client_credentials' grant type.") from None
        if not client_id:
            raise AADError(400, "invalid_request", 900144,
                           "The request body must contain the following parameter: 'client_id'.")
        app = self.apps.get(client_id)
        if app is None:
            tenant = request.match_info["tenant"]
            raise AADError(400, "unauthorized_client", 700016, f"Application with identifier '{client_id}' was not "
                           f"found in the directory '{tenant}'. This can happen if the application has not been "
                           "installed by the administrator of the tenant or consented to by any user in the tenant.")
        if secret is None and secret_required:
            raise AADError(401, "invalid_client", 7000218, "The request body must contain the following parameter: "
                           "'client_assertion' or 'client_secret'.")
        if secret is not None and not secrets.compare_digest(secret.encode(), app.secret.encode()):
            raise AADError(401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret being "
                           f"sent in the request is the client secret value, not the client secret ID, for a secret "
                           f"added to app '{client_id}'.")
        return app

    async def _token(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            raise AADError(400, "invalid_request", 900144,
                           "The request body must contain the following parameter: 'grant_type'.")
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        grant = form.get("grant_type")
        tenant_id = self._resolve_tenant(request.match_info["tenant"])
        with self._lock:
            if grant == "client_credentials":
                return self._client_credentials(request, form, tenant_id)
            if grant == "authorization_code":
                return self._authorization_code(request, form, tenant_id)
            if grant == "refresh_token":
                return self._refresh(request, form)
        if not grant:
            raise AADError(400, "invalid_request", 900144,
                           "The request body must contain the following parameter: 'grant_type'.")
        raise AADError(400, "unsupported_grant_type", 70003, f"The app requested an unsupported grant type "
                       f"'{grant}'.")

    def _client_credentials(self, request: web.Request, form: dict[str, str], tenant_id: str | None) -> web.Response:
        if tenant_id is None:
            raise AADError(400, "invalid_request", 90023, "The 'client_credentials' grant is not supported "
                           f"on the /{request.match_info['tenant']} endpoint; use a tenant.")
        app = self._client(request, form)
        if (app.app_id, tenant_id) in self.removed_from:
            raise AADError(400, "unauthorized_client", 700016, f"Application with identifier '{app.app_id}' was "
                           f"not found in the directory '{tenant_id}'. This can happen if the application has "
                           "not been installed by the administrator of the tenant.")
        if tenant_id not in (app.tenant, BOT_FRAMEWORK_TENANT_ID):
            raise AADError(400, "unauthorized_client", 700016, f"Application with identifier '{app.app_id}' was "
                           f"not found in the directory '{tenant_id}'.")
        scopes = (form.get("scope") or "").split()
        if not scopes:
            raise AADError(400, "invalid_request", 900144,
                           "The request body must contain the following parameter: 'scope'.")
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise AADError(400, "invalid_scope", 1002012, f"The provided value for scope {' '.join(scopes)} is not "
                           "valid. Client credential flows must have a scope value with /.default suffixed to the "
                           "resource identifier (application ID URI).")
        resource = scopes[0][: -len("/.default")]
        if resource not in (GRAPH_RESOURCE, BOT_FRAMEWORK_RESOURCE):
            raise AADError(400, "invalid_resource", 500011, f"The resource principal named {resource} was not "
                           f"found in the tenant named {tenant_id}.")
        token, _ = self._access_token(app=app, tenant_id=tenant_id, resource=resource)
        return web.json_response({"token_type": "Bearer", "expires_in": TOKEN_LIFETIME,
                                  "ext_expires_in": TOKEN_LIFETIME, "access_token": token})

    # -------------------------------------------------------- delegated sign-in

    def _page(self, title: str, body: str, status: int = 200) -> web.Response:
        return web.Response(status=status, content_type="text/html", text=(
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"))

    def _redirect(self, redirect_uri: str, params: dict[str, str]) -> web.HTTPFound:
        parts = urlsplit(redirect_uri)
        query = "&".join(filter(None, [parts.query, urlencode(params)]))
        return web.HTTPFound(urlunsplit((parts.scheme, parts.netloc, parts.path, query, "")))

    async def _authorize(self, request: web.Request) -> web.Response:
        """The sign-in page: checks the request, then one link per user who may sign in."""
        tenant = request.match_info["tenant"]
        q = request.query
        try:
            tenant_id = self._resolve_tenant(tenant)
        except AADError as exc:
            return self._page("Sign in", f"<p>{html.escape(str(exc))}</p>", 400)
        app = self.apps.get(q.get("client_id", ""))
        if app is None:
            return self._page("Sign in", f"<p>AADSTS700016: Application with identifier "
                                         f"'{html.escape(q.get('client_id', ''))}' was not found.</p>", 400)
        redirect_uri = q.get("redirect_uri", "")
        if not self._redirect_allowed(app, redirect_uri):
            return self._page("Sign in", "<p>AADSTS50011: The redirect URI specified in the request does not match "
                                         "the redirect URIs configured for the application.</p>", 400)

        def fail(code: int, description: str) -> web.HTTPFound:
            params = {"error": "invalid_request", "error_description": f"AADSTS{code}: {description}"}
            if "state" in q:
                params["state"] = q["state"]
            return self._redirect(redirect_uri, params)

        if q.get("response_type") != "code":
            raise fail(900144, "The sandbox only supports response_type=code.")
        if q.get("response_mode", "query") != "query":
            raise fail(900144, "The sandbox only supports response_mode=query.")
        if not q.get("code_challenge") or q.get("code_challenge_method") != "S256":
            raise fail(9002325, "Proof Key for Code Exchange is required (code_challenge_method=S256).")
        scopes = (q.get("scope") or "").split()
        if "openid" not in scopes:
            raise fail(900144, "The request must include the 'openid' scope.")
        ticket = secrets.token_urlsafe(16)
        self._tickets[ticket] = {
            "client_id": app.app_id, "redirect_uri": redirect_uri, "scopes": scopes, "state": q.get("state"),
            "nonce": q.get("nonce"), "code_challenge": q["code_challenge"], "tenant_id": tenant_id,
            "expires": self._clock() + CODE_LIFETIME,
        }
        users = [u for u in self.users.values() if tenant_id is None or u["tenant"] == tenant_id]
        links = "".join(
            f"<li><a href=\"/{html.escape(tenant)}/oauth2/v2.0/authorize/select?"
            f"{html.escape(urlencode({'ticket': ticket, 'user': u['oid']}))}\">Sign in as {html.escape(u['name'])}"
            f" ({html.escape(u['email'])})</a></li>" for u in users)
        return self._page(f"Sign in to {app.name}", f"<ul>{links}</ul>" if links else "<p>No accounts.</p>")

    @staticmethod
    def _redirect_allowed(app: RegisteredApp, redirect_uri: str) -> bool:
        if app.redirect_uris is not None:
            return redirect_uri in app.redirect_uris
        parts = urlsplit(redirect_uri)
        return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in ("localhost", "127.0.0.1"))

    async def _select_user(self, request: web.Request) -> web.Response:
        """A "Sign in as …" link: redirects back with a single-use code and the state."""
        with self._lock:
            ticket = self._tickets.pop(request.query.get("ticket", ""), None)
        user = self.users.get(request.query.get("user", ""))
        if ticket is None or ticket["expires"] < self._clock():
            return self._page("Sign in", "<p>AADSTS50058: The sign-in session expired. Start again.</p>", 400)
        if user is None or (ticket["tenant_id"] is not None and user["tenant"] != ticket["tenant_id"]):
            return self._page("Sign in", "<p>AADSTS50020: This account cannot sign in here.</p>", 400)
        code = _b64url(secrets.token_bytes(32))
        with self._lock:
            self._codes[code] = {**ticket, "oid": user["oid"], "expires": self._clock() + CODE_LIFETIME, "used": False}
        params = {"code": code, "session_state": str(uuid.uuid4())}
        if ticket["state"] is not None:
            params["state"] = ticket["state"]
        raise self._redirect(ticket["redirect_uri"], params)

    def _authorization_code(self, request: web.Request, form: dict[str, str], tenant_id: str | None) -> web.Response:
        app = self._client(request, form)
        grant = self._codes.get(form.get("code", ""))
        if grant is None:
            raise AADError(400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
        if grant["used"]:
            raise AADError(400, "invalid_grant", 54005, "OAuth2 Authorization code was already redeemed, please "
                           "retry with a new valid code or use an existing refresh token.")
        grant["used"] = True  # single use, even when this redemption fails below
        if grant["expires"] < self._clock():
            raise AADError(400, "invalid_grant", 70008, "The provided authorization code or refresh token has "
                           "expired due to inactivity.")
        if grant["client_id"] != app.app_id:
            raise AADError(400, "invalid_grant", 70000, "The request was denied because one or more grants are "
                           "invalid (the code was issued to another client).")
        if tenant_id is not None and grant["tenant_id"] not in (None, tenant_id):
            raise AADError(400, "invalid_grant", 70000, "The code was issued for another tenant.")
        if form.get("redirect_uri") != grant["redirect_uri"]:
            raise AADError(400, "invalid_grant", 500112, "The reply address does not match the reply address "
                           "provided when requesting the authorization code.")
        verifier = form.get("code_verifier")
        if not verifier:
            raise AADError(400, "invalid_grant", 501481, "The Code_Verifier does not match the code_challenge "
                           "supplied in the authorization request (no code_verifier).")
        if not 43 <= len(verifier) <= 128 or pkce_challenge(verifier) != grant["code_challenge"]:
            raise AADError(400, "invalid_grant", 501481, "The Code_Verifier does not match the code_challenge "
                           "supplied in the authorization request.")
        return self._user_tokens(app, self.users[grant["oid"]], grant["scopes"], grant["nonce"],
                                 client_info=form.get("client_info") == "1")

    def _refresh(self, request: web.Request, form: dict[str, str]) -> web.Response:
        app = self._client(request, form)
        grant = self._refresh_tokens.get(form.get("refresh_token", ""))
        if grant is None or grant["client_id"] != app.app_id:
            raise AADError(400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
        scopes = (form.get("scope") or "").split() or grant["scopes"]
        return self._user_tokens(app, self.users[grant["oid"]], scopes, None,
                                 client_info=form.get("client_info") == "1")

    def _user_tokens(self, app: RegisteredApp, user: dict[str, Any], scopes: list[str], nonce: str | None, *,
                     client_info: bool) -> web.Response:
        tenant_id = user["tenant"]
        resource_scopes = [s for s in scopes if s not in OIDC_SCOPES]
        resource = GRAPH_RESOURCE
        names: list[str] = []
        for scope in resource_scopes:
            prefix, _, name = scope.rpartition("/")
            if prefix and prefix not in (GRAPH_RESOURCE, BOT_FRAMEWORK_RESOURCE):
                raise AADError(400, "invalid_resource", 500011, f"The resource principal named {prefix} was not "
                               f"found in the tenant named {tenant_id}.")
            resource = prefix or GRAPH_RESOURCE
            names.append(name)
        scp = " ".join(names or ["openid", "profile", "email", "User.Read"])
        access, _ = self._access_token(app=app, tenant_id=tenant_id, resource=resource, user=user, scp=scp)
        now = int(self._clock())
        id_claims: dict[str, Any] = {
            "aud": app.app_id, "iss": f"{self.base_url}/{tenant_id}/v2.0", "iat": now, "nbf": now,
            "exp": now + 3600, "name": user["name"], "oid": user["oid"], "preferred_username": user["email"],
            "sub": _b64url(hashlib.sha256(f"{user['oid']}:{app.app_id}".encode()).digest()), "tid": tenant_id,
            "ver": "2.0",
        }
        if nonce is not None:
            id_claims["nonce"] = nonce
        if "email" in scopes:
            id_claims["email"] = user["email"]
        id_token = self._record("id_token", self._sign(id_claims, self._entra_key), id_claims, app_id=app.app_id)
        body: dict[str, Any] = {"token_type": "Bearer", "scope": scp, "expires_in": TOKEN_LIFETIME,
                                "ext_expires_in": TOKEN_LIFETIME, "access_token": access, "id_token": id_token}
        if "offline_access" in scopes:
            refresh = _b64url(secrets.token_bytes(48))
            self._refresh_tokens[refresh] = {"client_id": app.app_id, "oid": user["oid"], "scopes": scopes}
            body["refresh_token"] = refresh
        if client_info:
            body["client_info"] = _b64url(json.dumps({"uid": user["oid"], "utid": tenant_id}).encode())
        return web.json_response(body)


class IdentityServer:
    """Serves an ``IdentitySandbox`` over TLS on its own event loop in a daemon thread, so
    blocking clients (botbuilder's ``requests`` metadata fetch, MSAL) can call it from the
    test's event loop without deadlocking. Sets the sandbox's ``base_url``."""

    def __init__(self, identity: IdentitySandbox, tls: TestTLS, host: str = "127.0.0.1", port: int = 0) -> None:
        self.identity = identity
        self.tls = tls
        self.host = host
        self.port = port
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                # A stand-in stops at once: a graceful wait for a client's idle or half-open
                # TLS connection held every test that used it for the 30 s stop() allows.
                self._runner = web.AppRunner(self.identity.app(), access_log=None, shutdown_timeout=0.5)
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.tls.server_ssl_context())
                loop.run_until_complete(site.start())
                self.port = self._runner.addresses[0][1]
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="identity-sandbox", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        self.url = f"https://{self.host}:{self.port}"
        self.identity.set_base_url(self.url)
        return self.url

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        self._loop = self._thread = None

    def __enter__(self) -> IdentityServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
