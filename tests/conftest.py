"""Fixtures: the sandbox services and the bridge, wired together by URL only."""

from __future__ import annotations

import os
import uuid

import aiohttp
import pytest
from mongomock_motor import AsyncMongoMockClient
from motor.motor_asyncio import AsyncIOMotorClient

from app import create_app
from sandbox.microsoft import MicrosoftSandbox
from sandbox.neetochat import NeetoChatSandbox
from services.store.mongo import MongoStore
from tests.harness import BridgeProcess, Harness, bridge_env, free_port


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


@pytest.fixture(params=["sqlite", "mongo"])
async def bridge(request, sandbox, aiohttp_server, tmp_path):
    """The bridge in-process against the sandbox, on the embedded store and on MongoDB
    (mongomock-motor; a real server when MONGODB_URI is set); not yet connected."""
    env = bridge_env(sandbox.ms, tmp_path / "data")
    marker = request.node.get_closest_marker("bridge_env")  # @pytest.mark.bridge_env(NAME="value")
    if marker:
        env.update(marker.kwargs)
    store = None
    if request.param == "mongo":
        uri = os.environ.get("MONGODB_URI")
        client = AsyncIOMotorClient(uri) if uri else AsyncMongoMockClient()
        db_name = f"bridge_test_{uuid.uuid4().hex[:8]}"
        store = MongoStore(client, db_name)
    server = await aiohttp_server(create_app(env=env, store=store))
    sandbox.set_bridge(str(server.make_url("")))
    sandbox.app = server.app
    yield sandbox
    if request.param == "mongo" and os.environ.get("MONGODB_URI"):
        await client.drop_database(db_name)


@pytest.fixture
async def connected(bridge):
    """A workspace connected, the app installed and the team linked."""
    await bridge.connect()
    return bridge


@pytest.fixture
async def process(sandbox, tmp_path):
    """The bridge as operators run it (``python app.py``, embedded store), not yet started:
    tests start, kill and restart it."""
    proc = BridgeProcess(bridge_env(sandbox.ms, tmp_path / "data", free_port()), tmp_path / "bridge.log")
    sandbox.set_bridge(proc.url)
    yield proc
    if proc.proc is not None:
        assert await proc.terminate() == 0  # every run ends with a clean drain
