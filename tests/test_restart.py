"""The bridge as operators run it (``python app.py``): stopped, crashed, restarted.

Nothing a user wrote may be lost or doubled, whenever the process dies.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.harness import ROOT, WS, free_port, wait_for


def _count_posts(h, conversations) -> int:
    total = 0
    for conv in conversations:
        channel = h.conversation_channel(conv["number"])
        if channel:
            total += len(h.ms.posts(channel["id"]))
    return total


async def test_sigterm_drains_and_exits_zero(sandbox, process):
    await process.start(sandbox.http)
    await sandbox.connect()
    assert await process.terminate() == 0


async def test_kill_9_at_any_point_loses_and_doubles_nothing(sandbox, process):
    h = sandbox
    await process.start(h.http)
    await h.connect()
    conversations = [
        h.neeto.start_conversation(WS, visitor_name=f"V{i}", visitor_email=f"v{i}@example.com", message=f"c{i} m0")
        for i in range(8)
    ]
    for n in range(1, 8):
        for i, conv in enumerate(conversations):
            h.neeto.visitor_writes(WS, conv["id"], f"c{i} m{n}")
    expected_posts = 8 * 8  # per conversation: the intro card (with m0) and m1..m7
    # Teams answers slowly, so the process dies with posts in flight.
    h.ms.delay_next(0.05, count=40, path_contains="/v3/conversations", method="POST")
    for kill_after in (5, 20, 40):
        await wait_for(lambda n=kill_after: _count_posts(h, conversations) >= n, 60, f"{kill_after} posts")
        process.kill9()
        await process.start(h.http)
    await wait_for(lambda: _count_posts(h, conversations) >= expected_posts, 90, "every post after restarts")
    await h.neeto.drain_webhooks()
    for i, conv in enumerate(conversations):
        channel = h.conversation_channel(conv["number"])
        bodies = [p["text"].split("<br>")[1] for p in h.ms.posts(channel["id"]) if p["text"]]
        assert bodies == [f"c{i} m{n}" for n in range(1, 8)], f"conversation {i}"
    assert len([c for c in h.ms.channels(h.team_id) if c["id"] != h.team_id]) == 8
    assert len([p for p in h.general_posts() if p["attachments"]]) == 8


async def test_teams_messages_survive_a_crash_before_delivery(sandbox, process):
    h = sandbox
    await process.start(h.http)
    await h.connect()
    conv = h.neeto.start_conversation(WS, visitor_name="Rae", visitor_email="rae@example.com", message="hi")
    channel = await h.wait_channel(conv["number"])
    await wait_for(lambda: h.ms.posts(channel["id"]), what="the intro")
    h.neeto.fail_next(WS, status=503, count=1000)  # neetoChat is down: nothing can be delivered
    sent = []
    for n in range(5):
        result = await h.ms.user_posts(h.team_id, channel["id"], h.ada, f"reply {n}")
        assert result["status"] in (200, 201)  # acknowledged once stored
        sent.append(result)
    process.kill9()
    h.neeto.clear_faults(WS)
    await process.start(h.http)
    await wait_for(lambda: len(h.from_teams(conv["id"])) == 5, 60, "the five replies in neetoChat")
    assert [m["body"] for m in h.from_teams(conv["id"])] == [f"reply {n}" for n in range(5)]


def test_local_mode_refuses_to_start_against_microsoft_with_a_one_line_reason(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("Microsoft", "GRAPH_", "TEAMS_"))}
    env.update({"DATA_DIR": str(tmp_path), "PORT": str(free_port())})
    result = subprocess.run(
        [sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "GRAPH_BASE_URL" in lines[0] and "local mode" in lines[0]
