"""The Bot Framework signing keys: fetched once, refreshed in the background, never on
the event loop (services/openid_keys.py). The fetch itself is faked here; the real one
runs against the identity sandbox in tests/test_authenticated.py."""

from __future__ import annotations

import asyncio
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from services import openid_keys
from services.openid_keys import REFRESH_AFTER, UNKNOWN_KID_REFETCH, OpenIdKeys


def _jwk(kid: str, endorsements: list[str] | None = None) -> dict:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
    return {**jwk, "kid": kid, "endorsements": endorsements or ["msteams"]}


class FakeMetadata:
    """What the metadata URL serves; records each fetch and the thread it ran on."""

    def __init__(self, *kids: str) -> None:
        self.jwks = [_jwk(k) for k in kids]
        self.fetches: list[str] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, url: str) -> list[dict]:
        self.fetches.append(threading.current_thread().name)
        self.release.wait(5)
        return self.jwks


@pytest.fixture
def metadata(monkeypatch):
    fake = FakeMetadata("k1")
    monkeypatch.setattr(openid_keys, "_fetch_jwks", fake)
    return fake


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_keys_are_fetched_once_off_the_loop_and_then_served_from_memory(metadata):
    keys = OpenIdKeys("https://login.example/metadata")
    await keys.prefetch()
    found = [await keys.get("k1") for _ in range(100)]
    assert len(metadata.fetches) == 1 and metadata.fetches[0] != threading.main_thread().name
    assert all(k is found[0] for k in found), "each key parsed once"
    assert found[0].endorsements == ["msteams"] and found[0].public_key is not None


async def test_concurrent_first_requests_share_one_fetch(metadata):
    keys = OpenIdKeys("https://login.example/metadata")
    metadata.release.clear()
    waiting = [asyncio.ensure_future(keys.get("k1")) for _ in range(5)]
    await asyncio.sleep(0)
    metadata.release.set()
    assert all(k is not None for k in await asyncio.gather(*waiting))
    assert len(metadata.fetches) == 1


async def test_old_keys_are_refreshed_in_the_background_while_requests_go_on(metadata):
    clock = Clock()
    keys = OpenIdKeys("https://login.example/metadata", clock=clock)
    await keys.prefetch()
    clock.now += REFRESH_AFTER + 1
    metadata.release.clear()  # the refresh hangs: requests must not wait for it
    assert await asyncio.wait_for(keys.get("k1"), 1) is not None
    metadata.release.set()
    await keys._refreshing
    assert len(metadata.fetches) == 2


async def test_an_unknown_kid_refetches_at_most_once_an_hour(metadata):
    clock = Clock()
    keys = OpenIdKeys("https://login.example/metadata", clock=clock)
    await keys.prefetch()
    assert await keys.get("new") is None
    assert len(metadata.fetches) == 1, "fetched a moment ago: no refetch"
    metadata.jwks.append(_jwk("new"))  # Microsoft rolls a new key in
    clock.now += UNKNOWN_KID_REFETCH + 1
    assert await keys.get("new") is not None
    assert len(metadata.fetches) == 2
    assert await keys.get(None) is None


async def test_a_failed_startup_fetch_is_retried_by_the_first_request(metadata, monkeypatch):
    def down(url):
        raise ConnectionError("identity provider unreachable")

    keys = OpenIdKeys("https://login.example/metadata")
    monkeypatch.setattr(openid_keys, "_fetch_jwks", down)
    await keys.prefetch()  # logged, not raised
    monkeypatch.setattr(openid_keys, "_fetch_jwks", metadata)
    assert await keys.get("k1") is not None
