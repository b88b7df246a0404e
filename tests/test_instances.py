"""Two bridge processes (``python app.py``) on one store: they share the work, never post
the same message twice, and one takes over what the other was doing when it died.

The embedded SQLite store is shared through its file (mongomock cannot be shared between
processes); with ``MONGODB_URI`` set the same tests run against that real MongoDB too.
"""

from __future__ import annotations

import os
import re
import sqlite3
import uuid

import pytest

from tests.harness import WS, BridgeProcess, bridge_env, free_port, wait_for

CONVERSATIONS = 8
MESSAGES = 6  # per conversation, the first one shown in the card


@pytest.fixture(params=["sqlite", "mongo"])
async def pair(request, sandbox, tmp_path):
    # A dead instance's work is taken over after 3 s; each works on 3 of the 8 conversations
    # at most, so neither can take all of them.
    extra = {"JOB_LEASE_SECONDS": "3", "DELIVERY_CONCURRENCY": "3"}
    if request.param == "mongo":
        if not os.environ.get("MONGODB_URI"):
            pytest.skip("set MONGODB_URI to run the two-process tests against a real MongoDB")
        extra |= {"MONGODB_URI": os.environ["MONGODB_URI"], "MONGODB_DB": f"bridge_pair_{uuid.uuid4().hex[:8]}"}
    processes = []
    for name in ("a", "b"):
        env = bridge_env(sandbox.ms, tmp_path / "data", free_port()) | extra | {"BRIDGE_INSTANCE": name}
        processes.append(BridgeProcess(env, tmp_path / f"bridge-{name}.log"))
    sandbox.set_bridge(processes[0].url)  # webhooks and Teams reach "a"; "b" works from the store
    yield processes
    for proc in processes:
        if proc.proc is not None and proc.proc.poll() is None:
            assert await proc.terminate() == 0


async def _jobs_done(h, proc: BridgeProcess) -> float:
    async with h.http.get(f"{proc.url}/metrics") as response:
        text = await response.text()
    return sum(float(v) for v in re.findall(r'^bridge_jobs_total\{[^}]*outcome="ok"[^}]*\} (\S+)', text, re.M))


async def _share(h, proc: BridgeProcess) -> bool:
    async with h.http.get(f"{proc.url}/metrics") as response:
        return re.search(r"^bridge_rate_limit_share 2\.0$", await response.text(), re.M) is not None


def _burst(h) -> list[dict]:
    conversations = [
        h.neeto.start_conversation(WS, visitor_name=f"V{i}", visitor_email=f"v{i}@example.com", message=f"c{i} m0")
        for i in range(CONVERSATIONS)
    ]
    for n in range(1, MESSAGES):
        for i, conv in enumerate(conversations):
            h.neeto.visitor_writes(WS, conv["id"], f"c{i} m{n}")
    return conversations


def _posts(h, conversations) -> int:
    channels = [h.conversation_channel(c["number"]) for c in conversations]
    return sum(len(h.ms.posts(c["id"])) for c in channels if c)


async def _assert_each_once_in_order(h, conversations) -> None:
    await wait_for(lambda: _posts(h, conversations) >= CONVERSATIONS * MESSAGES, 90, "every post")
    await h.neeto.drain_webhooks()
    for i, conv in enumerate(conversations):
        channel = h.conversation_channel(conv["number"])
        bodies = [p["text"].split("<br>")[1] for p in h.ms.posts(channel["id"]) if p["text"]]
        assert bodies == [f"c{i} m{n}" for n in range(1, MESSAGES)], f"conversation {i}"
    assert len([c for c in h.ms.channels(h.team_id) if c["id"] != h.team_id]) == CONVERSATIONS
    assert len([p for p in h.general_posts() if p["attachments"]]) == CONVERSATIONS


async def test_two_instances_share_the_work_and_post_everything_once(sandbox, pair):
    h = sandbox
    a, b = pair
    for proc in pair:
        await proc.start(h.http)
    for proc in pair:  # each has seen the other and takes half of every limit
        await wait_for(lambda p=proc: _share(h, p), 10, "the limits shared")
    await h.connect()
    h.ms.delay_next(0.05, count=60, path_contains="/v3/conversations", method="POST")  # work takes time
    conversations = _burst(h)
    await _assert_each_once_in_order(h, conversations)
    assert await _jobs_done(h, a) > 0 and await _jobs_done(h, b) > 0, "both instances delivered"
    assert h.ms.rate_limited == []


async def test_a_dead_instances_work_is_taken_over(sandbox, pair):
    h = sandbox
    a, b = pair
    for proc in pair:
        await proc.start(h.http)
    await h.connect()
    h.ms.delay_next(0.2, count=200, path_contains="/v3/conversations", method="POST")
    conversations = _burst(h)
    if "MONGODB_URI" in b.env:
        await wait_for(lambda: _posts(h, conversations) >= 10, 60, "the burst under way")
    else:
        await wait_for(lambda: _leases_held_by(b), 60, "b working on a conversation")
    b.kill9()  # with posts in flight and leases held
    await _assert_each_once_in_order(h, conversations)


def _leases_held_by(proc: BridgeProcess) -> int:
    """Jobs the instance holds right now, read from the shared SQLite file."""
    with sqlite3.connect(f"file:{proc.env['DATA_DIR']}/bridge.sqlite3?mode=ro", uri=True) as db:
        db.execute("PRAGMA busy_timeout = 5000")
        row = db.execute(
            "SELECT COUNT(*) FROM jobs WHERE status = 'pending' AND lease_owner LIKE ?",
            (proc.env["BRIDGE_INSTANCE"] + "/%",),
        ).fetchone()
    return row[0]
