"""Microsoft sign-in (authorization code + PKCE through MSAL) and the user's delegated Graph calls.

MSAL's ``initiate_auth_code_flow`` / ``acquire_token_by_auth_code_flow`` make and check
``state``, ``nonce`` and the PKCE verifier; they block (``requests``), so they run in a
thread. The client is the bot's own Entra app; the authority is
``LOGIN_AUTHORITY/organizations`` (work or school accounts of any tenant: Teams has no
personal-account teams), or the app's tenant for a ``SingleTenant`` app.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import httpx
import msal
from kiota_abstractions.authentication import (
    AccessTokenProvider,
    AllowedHostsValidator,
    BaseBearerTokenAuthenticationProvider,
)
from kiota_http.middleware.options import RetryHandlerOption
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.graph_request_adapter import options as GRAPH_SDK_OPTIONS
from msgraph_core import GraphClientFactory

from services.config import Settings, is_microsoft_host
from services.errors import RemoteError
from services.graph import _graph_call

SCOPES = ["User.Read", "Team.ReadBasic.All", "Channel.ReadBasic.All"]  # delegated only


class SignInFailed(Exception):
    """The identity platform or the answer refused the sign-in; the message says why."""


@dataclass(frozen=True)
class SignedInUser:
    oid: str
    tid: str
    email: str
    name: str
    access_token: str
    expires_at: float


def authority(settings: Settings) -> str:
    tenant = settings.app_tenant_id if settings.app_type.lower() == "singletenant" and settings.app_tenant_id else None
    return f"{settings.login_authority}/{tenant or 'organizations'}"


def _msal_app(settings: Settings) -> msal.ConfidentialClientApplication:
    # One per sign-in: its token cache then holds nobody else's tokens (and is dropped).
    return msal.ConfidentialClientApplication(
        settings.app_id,
        client_credential=settings.app_password,
        authority=authority(settings),
        validate_authority=is_microsoft_host(settings.login_authority),
        instance_discovery=is_microsoft_host(settings.login_authority),
    )


def redirect_uri(settings: Settings) -> str:
    return f"{settings.public_url}/teams/callback"


async def start_sign_in(settings: Settings) -> dict[str, Any]:
    """MSAL's flow dict (state, nonce, PKCE verifier, ``auth_uri``) for a new sign-in."""

    def initiate() -> dict[str, Any]:
        return _msal_app(settings).initiate_auth_code_flow(SCOPES, redirect_uri=redirect_uri(settings))

    try:
        return await asyncio.to_thread(initiate)
    except Exception as exc:  # discovery failed: the identity platform is unreachable or refuses
        raise SignInFailed(f"Microsoft sign-in is unavailable: {type(exc).__name__}") from exc


async def finish_sign_in(settings: Settings, flow: dict[str, Any], answer: dict[str, str]) -> SignedInUser:
    """Redeem the code of the redirect ``answer`` for the flow that started it."""

    def redeem() -> dict[str, Any]:
        return _msal_app(settings).acquire_token_by_auth_code_flow(flow, answer)

    try:
        result = await asyncio.to_thread(redeem)
    except ValueError as exc:  # MSAL: state mismatch, or the flow does not match the answer
        raise SignInFailed("The sign-in answer does not belong to this browser's sign-in.") from exc
    except Exception as exc:
        raise SignInFailed(f"Microsoft sign-in is unavailable: {type(exc).__name__}") from exc
    if "error" in result:
        description = str(result.get("error_description") or result["error"]).split(" Trace ID:")[0]
        raise SignInFailed(f"Microsoft refused the sign-in: {description}")
    claims = result.get("id_token_claims") or {}
    # MSAL checks state and nonce but (since 1.38) nothing else of the id token; the token
    # came straight from the token endpoint over TLS, so audience, expiry and the claims we
    # use are what is left to check.
    if claims.get("aud") != settings.app_id or float(claims.get("exp") or 0) < time.time():
        raise SignInFailed("The sign-in answer is not for this app, or has expired.")
    email = claims.get("email") or claims.get("preferred_username")
    if not claims.get("oid") or not claims.get("tid") or not email or not result.get("access_token"):
        raise SignInFailed("The sign-in answer lacks the user's id, tenant or email.")
    return SignedInUser(
        oid=claims["oid"],
        tid=claims["tid"],
        email=email,
        name=claims.get("name") or email,
        access_token=result["access_token"],
        expires_at=time.time() + float(result.get("expires_in") or 600),
    )


class _BearerToken(AccessTokenProvider):
    def __init__(self, token: str, host: str) -> None:
        self._token = token
        self._hosts = AllowedHostsValidator([host])

    async def get_authorization_token(self, uri: str, additional_authentication_context: Any = None) -> str:
        parts = urlparse(uri)
        if not self._hosts.is_url_host_valid(uri):
            return ""
        if parts.scheme != "https" and parts.hostname not in ("localhost", "127.0.0.1"):
            return ""  # never send a user's token in clear text to anything but a local stand-in
        return self._token

    def get_allowed_hosts_validator(self) -> AllowedHostsValidator:
        return self._hosts


@dataclass(frozen=True)
class JoinedTeam:
    id: str  # the Microsoft 365 group id (Graph's team id)
    name: str
    tenant_id: str | None


async def joined_teams(settings: Settings, access_token: str) -> list[JoinedTeam]:
    """``GET /me/joinedTeams`` with the user's own (delegated) token."""
    host = urlparse(settings.graph_base_url).hostname or ""
    http = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(timeout=httpx.Timeout(30.0)),
        options={
            # msgraph-sdk builds /me as /users/me-token-to-replace; only this middleware
            # option (set by GraphRequestAdapter's own default client) turns it back into /me
            **GRAPH_SDK_OPTIONS,
            RetryHandlerOption.get_key(): RetryHandlerOption(max_retries=0, should_retry=False),
        },
    )
    adapter = GraphRequestAdapter(BaseBearerTokenAuthenticationProvider(_BearerToken(access_token, host)), client=http)
    adapter.base_url = settings.graph_base_url
    client = GraphServiceClient(request_adapter=adapter)
    found: list[JoinedTeam] = []
    try:
        with _graph_call():
            page = await client.me.joined_teams.get()
            while page is not None:
                found += [JoinedTeam(t.id, t.display_name or t.id, t.tenant_id) for t in page.value or [] if t.id]
                if not page.odata_next_link:
                    break
                page = await client.me.joined_teams.with_url(page.odata_next_link).get()
    finally:
        await http.aclose()
    return found


__all__ = ["RemoteError", "SCOPES", "JoinedTeam", "SignInFailed", "SignedInUser", "joined_teams"]
