"""Fixtures: the sandbox services and the bridge, wired together by URL only."""

from __future__ import annotations

import aiohttp
import pytest

from app import create_app
from sandbox.microsoft import MicrosoftSandbox
from sandbox.neetochat import NeetoChatSandbox
from tests.harness import Harness, bridge_env


@pytest.fixture
async def sandbox(aiohttp_server, tmp_path):
    """neetoChat and Microsoft 365 stand-ins, running, with no bridge yet."""
    neeto = NeetoChatSandbox(retry_base_delay=0.05)
    neeto_server = await aiohttp_server(neeto.app())
    ms = MicrosoftSandbox()
    ms_server = await aiohttp_server(ms.app())
    ms.set_base_url(str(ms_server.make_url("")))
    async with aiohttp.ClientSession() as http:
        yield Harness(neeto, str(neeto_server.make_url("")), ms, http)


@pytest.fixture
async def bridge(sandbox, aiohttp_server, tmp_path):
    """The bridge in-process against the sandbox; returns the harness, not yet connected."""
    env = bridge_env(sandbox.ms, tmp_path / "data")
    server = await aiohttp_server(create_app(env=env))
    sandbox.set_bridge(str(server.make_url("")))
    sandbox.app = server.app
    return sandbox


@pytest.fixture
async def connected(bridge):
    """A workspace connected, the app installed and the team linked."""
    await bridge.connect()
    return bridge
