"""The bot's own credentials for the Bot Connector, built once and kept.

botbuilder's default factory builds new ``MicrosoftAppCredentials`` (and so an empty MSAL
token cache) on every turn and never passes ``VALIDATE_AUTHORITY`` to MSAL, so MSAL calls
Microsoft's instance discovery even for a sovereign-cloud or test authority. This factory
keeps one credentials object per (scope, authority), whose MSAL app caches the token until
it expires, and honours ``VALIDATE_AUTHORITY=false``.
"""

from __future__ import annotations

from botframework.connector.auth import MicrosoftAppCredentials, ServiceClientCredentialsFactory
from msal import ConfidentialClientApplication
from msrest.authentication import Authentication

from services.config import Settings


class CachedCredentialFactory(ServiceClientCredentialsFactory):
    def __init__(self, settings: Settings, validate_authority: bool) -> None:
        self._settings = settings
        self._validate_authority = validate_authority
        self._cache: dict[tuple[str, str], MicrosoftAppCredentials] = {}

    async def is_valid_app_id(self, app_id: str) -> bool:
        return app_id == self._settings.app_id

    async def is_authentication_disabled(self) -> bool:
        return not self._settings.app_id

    async def create_credentials(
        self, app_id: str, oauth_scope: str, login_endpoint: str, validate_authority: bool
    ) -> Authentication:
        if await self.is_authentication_disabled():
            return MicrosoftAppCredentials.empty()
        if not await self.is_valid_app_id(app_id):
            raise PermissionError("the activity is for another bot (app id mismatch)")
        authority = self._authority(login_endpoint)
        key = (oauth_scope, authority)
        credentials = self._cache.get(key)
        if credentials is None:
            credentials = MicrosoftAppCredentials(app_id, self._settings.app_password, self._tenant(), oauth_scope)
            credentials.oauth_endpoint = authority
            # Pre-built, so MicrosoftAppCredentials uses it instead of building its own
            # (which would ignore validate_authority).
            credentials.app = ConfidentialClientApplication(
                client_id=app_id,
                client_credential=self._settings.app_password,
                authority=authority,
                validate_authority=self._validate_authority,
            )
            self._cache[key] = credentials
        return credentials

    def _tenant(self) -> str | None:
        single = self._settings.app_type.lower() == "singletenant"
        return self._settings.app_tenant_id if single and self._settings.app_tenant_id else None

    def _authority(self, login_endpoint: str) -> str:
        """Single-tenant apps get tokens from their own tenant, others from botframework.com."""
        tenant = self._tenant()
        if tenant:
            return login_endpoint.rstrip("/").rsplit("/", 1)[0] + "/" + tenant
        return login_endpoint
