"""The Bot Framework's token-signing keys, fetched before they are needed and off the loop.

botbuilder checks every incoming activity's JWT against keys it gets from the OpenID
metadata URL (``TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL``, then its ``jwks_uri``). Its own
cache (``_OpenIdMetadata``) fetches them with blocking ``requests`` calls *inside* the
first request, and again inside a request once a day: the whole event loop, every webhook
and every other activity included, stops for those two round trips. It also parses the
JWK into an RSA key again for every activity.

``OpenIdKeys`` answers the same question (``await get(kid)`` → an object with
``public_key`` and ``endorsements``) from memory: the keys are fetched at startup and
refreshed in the background before they are a day old, in a worker thread with the same
``requests`` calls (so ``REQUESTS_CA_BUNDLE`` and proxies apply exactly as before), and
each key is parsed once. A ``kid`` it does not know triggers one refetch, at most every
``UNKNOWN_KID_REFETCH`` seconds, as botbuilder does (Microsoft rolls keys in advance, but
a token signed with a brand-new key must still pass). It is put in place through
botbuilder's own per-URL cache (``JwtTokenExtractor.metadataCache``), the one hook the
validator offers: the validation itself stays botbuilder's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import requests
from botframework.connector.auth import JwtTokenExtractor
from jwt.algorithms import RSAAlgorithm

log = logging.getLogger(__name__)

REFRESH_AFTER = 12 * 3600.0  # botbuilder refetches after a day; refresh well before that
UNKNOWN_KID_REFETCH = 3600.0  # botbuilder's rule for a kid it has not seen
FETCH_TIMEOUT = 30.0


@dataclass(frozen=True)
class SigningKey:
    """What botbuilder's validator reads from its metadata lookup."""

    public_key: Any
    endorsements: list[str]


class OpenIdKeys:
    def __init__(self, url: str, clock=time.monotonic) -> None:
        self.url = url
        self._clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None
        self._refreshing: asyncio.Task[None] | None = None

    async def get(self, key_id: str | None) -> SigningKey | None:
        """The key with this id, or None (botbuilder then refuses the token: 401)."""
        if self._fetched_at is None:
            await self._refresh_once()  # nothing yet (startup fetch failed): this request waits, the loop does not
        elif self._clock() - self._fetched_at > REFRESH_AFTER:
            self._refresh_in_background()
        key = self._keys.get(key_id or "")
        if key is None and key_id and self._clock() - (self._fetched_at or 0.0) > UNKNOWN_KID_REFETCH:
            await self._refresh_once()
            key = self._keys.get(key_id)
        return key

    async def prefetch(self) -> None:
        """At startup: a failure is logged, not fatal (the first activity tries again)."""
        with contextlib.suppress(Exception):
            await self._refresh_once()

    def _refresh_in_background(self) -> None:
        self._start_refresh()

    async def _refresh_once(self) -> None:
        await asyncio.shield(self._start_refresh())

    def _start_refresh(self) -> asyncio.Task[None]:
        """One fetch at a time: callers that come while it runs share it."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
            self._refreshing.add_done_callback(_log_failure)
        return self._refreshing

    async def _refresh(self) -> None:
        jwks = await asyncio.to_thread(_fetch_jwks, self.url)
        keys = {}
        for jwk in jwks:
            if jwk.get("kid") and jwk.get("kty") == "RSA":
                keys[jwk["kid"]] = SigningKey(RSAAlgorithm.from_jwk(json.dumps(jwk)), list(jwk.get("endorsements", [])))
        self._keys, self._fetched_at = keys, self._clock()
        log.info("Bot Framework signing keys fetched: %d keys from %s", len(keys), self.url)


def _log_failure(task: asyncio.Task[None]) -> None:
    """The keys in use stay; the next request that needs a fetch tries again."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not fetch the Bot Framework signing keys: %s", task.exception())


def _fetch_jwks(metadata_url: str) -> list[dict[str, Any]]:
    """The same two calls botbuilder makes (blocking: run in a worker thread)."""
    response = requests.get(metadata_url, timeout=FETCH_TIMEOUT)
    response.raise_for_status()
    keys = requests.get(response.json()["jwks_uri"], timeout=FETCH_TIMEOUT)
    keys.raise_for_status()
    return keys.json()["keys"]


def install(url: str) -> OpenIdKeys:
    """Make botbuilder's validator use a new ``OpenIdKeys`` for ``url`` (its cache is per
    URL and per process; a new one per app start keeps each bound to its own event loop)."""
    keys = OpenIdKeys(url)
    JwtTokenExtractor.metadataCache[url] = keys
    return keys
