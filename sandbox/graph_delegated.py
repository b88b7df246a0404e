"""Delegated Microsoft Graph for the Microsoft sandbox: ``GET /v1.0/me`` and ``GET /v1.0/me/joinedTeams``.

What the bridge's sign-in pages call with the *signed-in user's* token. The answer depends
on who the token says the user is (its ``oid``), so the token must be one the identity
sandbox (``sandbox/identity.py``) issued and signed: there is no unverified fallback.
Without an identity sandbox (``MicrosoftSandbox.require_tokens``) these routes answer 401.
Like Graph: an app-only token gets 400 ("/me request is only valid with delegated
authentication flow"), a token without the needed scope 403, an unknown user 404.

Hooked into ``MicrosoftSandbox.app()`` by ``delegated_graph_routes(self)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from sandbox.identity import GRAPH_APP_ID, GRAPH_RESOURCE, TokenError

if TYPE_CHECKING:
    from sandbox.microsoft import MicrosoftSandbox

ME = "/v1.0/me"
# Any one of these delegated scopes allows the call, as Graph's permission tables say.
ME_SCOPES = {"User.Read", "User.ReadWrite", "User.ReadBasic.All", "User.Read.All", "Directory.Read.All"}
JOINED_TEAMS_SCOPES = {"Team.ReadBasic.All", "TeamSettings.Read.All", "TeamSettings.ReadWrite.All",
                       "User.Read.All", "Directory.Read.All"}


def _error(status: int, code: str, message: str) -> Exception:
    from sandbox.microsoft import SandboxError  # imported here: microsoft.py imports this module

    return SandboxError(status, code, message)


def _user_claims(ms: MicrosoftSandbox, request: web.Request, scopes: set[str]) -> dict[str, Any]:
    identity = ms._identity
    scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
    if identity is None:
        raise _error(401, "InvalidAuthenticationToken",
                     "Delegated routes need the identity sandbox (MicrosoftSandbox.require_tokens).")
    if scheme.lower() != "bearer" or not token.strip():
        raise _error(401, "InvalidAuthenticationToken", "Access token is empty.")
    try:
        claims = identity.verify_access_token(
            token.strip(), audiences=(GRAPH_RESOURCE, GRAPH_RESOURCE + "/", GRAPH_APP_ID), tenant=ms.tenant_id)
    except TokenError as exc:
        raise _error(401, "InvalidAuthenticationToken", str(exc)) from None
    if claims.get("idtyp") != "user" or "scp" not in claims:
        raise _error(400, "BadRequest", "/me request is only valid with delegated authentication flow.")
    if not scopes & set(str(claims.get("scp") or "").split()):
        raise _error(403, "Forbidden", "Insufficient privileges to complete the operation.")
    return claims


def _user(ms: MicrosoftSandbox, claims: dict[str, Any]) -> dict[str, Any]:
    user = ms.users.get(claims.get("oid") or "")
    if user is None:
        raise _error(404, "Request_ResourceNotFound",
                     f"Resource '{claims.get('oid')}' does not exist or one of its queried reference-property "
                     "objects are not present.")
    return user


def delegated_graph_routes(ms: MicrosoftSandbox) -> list[web.RouteDef]:
    async def me(request: web.Request) -> web.Response:
        user = _user(ms, _user_claims(ms, request, ME_SCOPES))
        return web.json_response({
            "@odata.context": f"{ms.graph_url}/$metadata#users/$entity",
            "businessPhones": [], "displayName": user["name"], "givenName": user["givenName"],
            "jobTitle": None, "mail": user["email"], "mobilePhone": None, "officeLocation": None,
            "preferredLanguage": None, "surname": user["surname"], "userPrincipalName": user["userPrincipalName"],
            "id": user["aadObjectId"],
        })

    async def joined_teams(request: web.Request) -> web.Response:
        user = _user(ms, _user_claims(ms, request, JOINED_TEAMS_SCOPES))
        teams = [t for t in ms.teams.values() if user["aadObjectId"] in t.members]
        return web.json_response({
            "@odata.context": f"{ms.graph_url}/$metadata#teams",
            "@odata.count": len(teams),
            "value": [{"id": t.aad_group_id, "displayName": t.name, "description": None, "isArchived": False,
                       "tenantId": ms.tenant_id} for t in teams],
        })

    return [web.get(ME, me), web.get(ME + "/joinedTeams", joined_teams)]
