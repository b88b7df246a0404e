"""The store contract, run against every backend: SQLite (a fresh file), MongoDB through
mongomock-motor, and a real MongoDB when ``MONGODB_URI`` is set.

Time is a fake ``now`` passed to the job methods: nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import pytest_asyncio
from mongomock_motor import AsyncMongoMockClient

from services.store import open_store
from services.store.base import Installation, Job, MessageLink, Portal, Store, Workspace
from services.store.mongo import MongoStore
from services.store.sqlite import SqliteStore

pytestmark = pytest.mark.asyncio

NOW = 1_000_000.0
LEASE = 30.0
REPO = Path(__file__).resolve().parent.parent


@pytest_asyncio.fixture(params=["sqlite", "mongomock", "mongodb"])
async def store(request, tmp_path):
    if request.param == "sqlite":
        s: Store = SqliteStore(str(tmp_path / "bridge.sqlite3"))
        await s.open()
        yield s
        await s.close()
    elif request.param == "mongomock":
        s = MongoStore(AsyncMongoMockClient(), "bridge_test")
        await s.open()
        yield s
        await s.close()
    else:
        uri = os.environ.get("MONGODB_URI")
        if not uri:
            pytest.skip("MONGODB_URI is not set: no real MongoDB to test against")
        from motor.motor_asyncio import AsyncIOMotorClient

        client = AsyncIOMotorClient(uri, serverSelectionTimeoutMS=5000)
        db_name = f"bridge_test_{uuid.uuid4().hex[:12]}"
        s = MongoStore(client, db_name)
        await s.open()
        try:
            yield s
        finally:
            await client.drop_database(db_name)
            client.close()


def job(key: str, partition: str = "ws1:c1", workspace: str = "ws1", **kw) -> Job:
    return Job(
        seq=0,
        kind="neetochat_event",
        workspace_id=workspace,
        partition=partition,
        dedupe_key=key,
        payload={"key": key, "nested": {"n": 1}},
        **kw,
    )


def workspace(ws_id: str = "ws1", **kw) -> Workspace:
    return Workspace(
        id=ws_id, base_url=f"https://{ws_id}.neetochat.com", api_key_enc="k-enc", webhook_secret_enc="s-enc", **kw
    )


def seqs_of(jobs: list[Job]) -> list[int]:
    return [j.seq for j in jobs]


# jobs --------------------------------------------------------------------------------


async def test_enqueue_assigns_increasing_seq_and_dedupes(store: Store):
    first, second = job("e1"), job("e2")
    assert await store.enqueue(first) is True
    assert await store.enqueue(second) is True
    assert 0 < first.seq < second.seq
    assert await store.enqueue(job("e1")) is False
    counts = await store.job_counts()
    assert counts.pending == 2
    claimed = await store.claim_jobs("A", NOW, LEASE, 10)
    assert [(j.dedupe_key, j.payload) for j in claimed] == [("e1", {"key": "e1", "nested": {"n": 1}})]


async def test_dedupe_holds_after_the_job_finished(store: Store):
    assert await store.enqueue(job("once"))
    [j] = await store.claim_jobs("A", NOW, LEASE, 10)
    assert await store.finish_job(j.seq, "A", "done")
    assert await store.enqueue(job("once")) is False
    assert (await store.job_counts()).pending == 0


async def test_partition_order_and_retry_blocks_only_its_partition(store: Store):
    a = [job(f"a{i}", partition="A") for i in range(1, 4)]
    for j in a:
        assert await store.enqueue(j)
    b1 = job("b1", partition="B")
    assert await store.enqueue(b1)

    claimed = await store.claim_jobs("w", NOW, LEASE, 10)
    assert seqs_of(claimed) == [a[0].seq, b1.seq]  # heads only, one per partition
    assert claimed[0].lease_owner == "w" and claimed[0].lease_until == NOW + LEASE

    assert await store.finish_job(a[0].seq, "w", "done")
    assert await store.finish_job(b1.seq, "w", "done")
    [head] = await store.claim_jobs("w", NOW, LEASE, 10)
    assert head.seq == a[1].seq

    # retry a2 in the future: a2 and a3 wait, partition B does not
    assert await store.retry_job(head.seq, "w", NOW + 60, "boom")
    b2 = job("b2", partition="B")
    assert await store.enqueue(b2)
    claimed = await store.claim_jobs("w", NOW + 1, LEASE, 10)
    assert seqs_of(claimed) == [b2.seq]
    assert await store.finish_job(b2.seq, "w", "done")
    assert await store.claim_jobs("w", NOW + 59, LEASE, 10) == []

    [again] = await store.claim_jobs("w", NOW + 60, LEASE, 10)
    assert again.seq == a[1].seq
    assert again.attempts == 1 and again.last_error == "boom" and again.status == "pending"
    assert await store.finish_job(again.seq, "w", "done")
    [last] = await store.claim_jobs("w", NOW + 60, LEASE, 10)
    assert last.seq == a[2].seq and last.attempts == 0


async def test_job_not_yet_due_is_not_claimed(store: Store):
    assert await store.enqueue(job("later", next_attempt_at=NOW + 5))
    assert await store.claim_jobs("A", NOW, LEASE, 10) == []
    assert len(await store.claim_jobs("A", NOW + 5, LEASE, 10)) == 1


async def test_claim_respects_limit_and_seq_order_across_partitions(store: Store):
    for i in range(6):
        assert await store.enqueue(job(f"k{i}", partition=f"P{i % 3}"))
    first = await store.claim_jobs("A", NOW, LEASE, 2)
    assert [j.dedupe_key for j in first] == ["k0", "k1"]
    rest = await store.claim_jobs("A", NOW, LEASE, 10)
    assert [j.dedupe_key for j in rest] == ["k2"]  # P0, P1 are leased; their k3, k4 wait
    assert await store.claim_jobs("A", NOW, LEASE, 0) == []


async def test_same_owner_gets_nothing_new_while_holding_the_head(store: Store):
    assert await store.enqueue(job("x1"))
    assert await store.enqueue(job("x2"))
    assert len(await store.claim_jobs("A", NOW, LEASE, 10)) == 1
    assert await store.claim_jobs("A", NOW + 1, LEASE, 10) == []
    assert await store.claim_jobs("B", NOW + 1, LEASE, 10) == []


async def test_lease_fencing(store: Store):
    assert await store.enqueue(job("f1"))
    [mine] = await store.claim_jobs("A", NOW, LEASE, 10)
    # B holds no lease: it can neither finish nor retry A's job
    assert await store.finish_job(mine.seq, "B", "done") is False
    assert await store.retry_job(mine.seq, "B", NOW + 5, "nope") is False
    assert await store.claim_jobs("B", NOW + LEASE - 1, LEASE, 10) == []

    # A's lease expires (lease_until <= now): B takes the job over, and A is fenced off
    [taken] = await store.claim_jobs("B", NOW + LEASE, LEASE, 10)
    assert taken.seq == mine.seq and taken.lease_owner == "B"
    assert await store.finish_job(mine.seq, "A", "done") is False
    assert await store.retry_job(mine.seq, "A", NOW, "late") is False
    assert await store.finish_job(mine.seq, "B", "done") is True
    assert await store.finish_job(mine.seq, "B", "done") is False  # already finished
    counts = await store.job_counts()
    assert (counts.pending, counts.dead) == (0, 0)


async def test_finish_rejects_unknown_status(store: Store):
    assert await store.enqueue(job("s1"))
    [j] = await store.claim_jobs("A", NOW, LEASE, 1)
    with pytest.raises(ValueError):
        await store.finish_job(j.seq, "A", "pending")


async def test_no_double_claim_by_different_owners_at_the_same_instant(store: Store):
    for i in range(20):
        assert await store.enqueue(job(f"d{i}", partition=f"P{i % 5}"))
    first = await store.claim_jobs("A", NOW, LEASE, 3)
    second = await store.claim_jobs("B", NOW, LEASE, 10)
    assert len(first) == 3 and len(second) == 2
    assert not {j.partition for j in first} & {j.partition for j in second}

    # and concurrently, from one event loop
    for j in first:
        assert await store.finish_job(j.seq, "A", "done")
    for j in second:
        assert await store.finish_job(j.seq, "B", "done")
    results = await asyncio.gather(*(store.claim_jobs(f"o{i}", NOW, LEASE, 2) for i in range(6)))
    claimed = [j for batch in results for j in batch]
    assert len(claimed) == 5
    assert len({j.partition for j in claimed}) == 5
    assert len({j.seq for j in claimed}) == 5


async def test_dead_jobs_are_listed_newest_first_and_do_not_block(store: Store):
    keys = ["d1", "d2", "d3"]
    for k in keys:
        assert await store.enqueue(job(k))
    assert await store.enqueue(job("other-ws", workspace="ws2", partition="ws2:c1"))
    for k in keys[:2]:
        claimed = await store.claim_jobs("A", NOW, LEASE, 10)
        mine = [j for j in claimed if j.dedupe_key == k]
        assert len(mine) == 1
        assert await store.finish_job(mine[0].seq, "A", "dead", f"{k} failed")
    [next_job] = [j for j in await store.claim_jobs("A", NOW, LEASE, 10) if j.workspace_id == "ws1"]
    assert next_job.dedupe_key == "d3"  # the dead ones did not block the partition

    dead = await store.list_dead_jobs("ws1")
    assert [j.dedupe_key for j in dead] == ["d2", "d1"]
    assert dead[0].status == "dead" and dead[0].last_error == "d2 failed"
    assert dead[0].finished_at is not None and dead[0].lease_owner is None
    assert [j.dedupe_key for j in await store.list_dead_jobs("ws1", limit=1)] == ["d2"]
    assert await store.list_dead_jobs("ws2") == []


async def test_requeued_dead_jobs_run_again_oldest_first(store: Store):
    for k in ("r1", "r2", "r3"):
        assert await store.enqueue(job(k))
    for _ in range(3):
        [claimed] = await store.claim_jobs("A", NOW, LEASE, 10)
        assert await store.finish_job(claimed.seq, "A", "dead", "neetoChat refused")
    dead = await store.list_dead_jobs("ws1")
    assert await store.requeue_dead_jobs("ws1", [dead[0].seq]) == 1  # only r3
    assert await store.requeue_dead_jobs("ws2") == 0
    [again] = await store.claim_jobs("B", NOW, LEASE, 10)
    assert again.dedupe_key == "r3" and again.attempts == 0 and again.status == "pending"
    assert await store.finish_job(again.seq, "B", "done")
    assert await store.requeue_dead_jobs("ws1") == 2  # the rest
    [first] = await store.claim_jobs("B", NOW, LEASE, 10)
    assert first.dedupe_key == "r1"  # still in order within the conversation
    counts = await store.job_counts("ws1")
    assert (counts.pending, counts.dead) == (2, 0)


async def test_interleaved_conversations_drain_in_order_one_job_each_at_a_time(store: Store):
    """A backlog over several conversations, stored interleaved: every claim hands out each
    conversation's earliest job, and draining it runs every job once, in its conversation's
    order, with the counts following."""
    keys = {p: [f"{p}-{i}" for i in range(5)] for p in ("ws1:a", "ws1:b", "ws1:c")}
    for i in range(5):
        for partition, own in keys.items():
            assert await store.enqueue(job(own[i], partition=partition, created_at=100.0 + i))
    ran: dict[str, list[str]] = {p: [] for p in keys}
    while claimed := await store.claim_jobs("A", NOW, LEASE, 10):
        assert len({j.partition for j in claimed}) == len(claimed)
        for j in claimed:
            ran[j.partition].append(j.dedupe_key)
            assert await store.finish_job(j.seq, "A", "done")
        left = sum(len(own) - len(ran[p]) for p, own in keys.items())
        counts = await store.job_counts("ws1")
        assert counts.pending == left
        assert counts.oldest_pending_at == (None if left == 0 else 100.0 + min(len(r) for r in ran.values()))
    assert ran == keys


async def test_a_replayed_dead_job_goes_before_its_conversations_later_jobs(store: Store):
    assert await store.enqueue(job("first"))
    [first] = await store.claim_jobs("A", NOW, LEASE, 10)
    assert await store.finish_job(first.seq, "A", "dead", "neetoChat refused")
    assert await store.enqueue(job("second"))
    assert await store.enqueue(job("third"))
    assert await store.requeue_dead_jobs("ws1") == 1
    order = []
    while claimed := await store.claim_jobs("A", NOW, LEASE, 10):
        [j] = claimed
        order.append(j.dedupe_key)
        assert await store.finish_job(j.seq, "A", "done")
    assert order == ["first", "second", "third"]


async def test_job_counts(store: Store):
    empty = await store.job_counts()
    assert (empty.pending, empty.dead, empty.oldest_pending_at) == (0, 0, None)
    assert await store.enqueue(job("c1", created_at=100.0))
    assert await store.enqueue(job("c2", created_at=200.0, partition="ws1:c2"))
    assert await store.enqueue(job("c3", created_at=300.0, partition="ws1:c3"))
    assert await store.enqueue(job("c4", created_at=50.0, workspace="ws2", partition="ws2:c1"))
    claimed = {j.dedupe_key: j for j in await store.claim_jobs("A", NOW, LEASE, 10)}
    assert await store.finish_job(claimed["c1"].seq, "A", "done")
    assert await store.finish_job(claimed["c2"].seq, "A", "dead", "x")

    ws1 = await store.job_counts("ws1")
    assert (ws1.pending, ws1.dead, ws1.oldest_pending_at) == (1, 1, 300.0)
    total = await store.job_counts()
    assert (total.pending, total.dead, total.oldest_pending_at) == (2, 1, 50.0)
    nobody = await store.job_counts("nobody")
    assert (nobody.pending, nobody.dead, nobody.oldest_pending_at) == (0, 0, None)


async def test_job_counts_follow_jobs_as_they_finish(store: Store):
    """Only pending and dead jobs are counted: a done job drops out of the counts for good,
    a dead one stays until it is replayed; a leased or retried job is still pending."""
    for key, created, ws in [("p1", 100.0, "ws1"), ("p2", 200.0, "ws1"), ("p3", 300.0, "ws1"), ("q1", 150.0, "ws2")]:
        assert await store.enqueue(job(key, created_at=created, workspace=ws, partition=f"{ws}:{key}"))
    claimed = {j.dedupe_key: j for j in await store.claim_jobs("A", NOW, LEASE, 10)}
    assert (await store.job_counts()).pending == 4  # leased: still pending
    assert await store.retry_job(claimed["p1"].seq, "A", NOW + 10, "503")
    assert await store.finish_job(claimed["p2"].seq, "A", "done")
    assert await store.finish_job(claimed["q1"].seq, "A", "done")

    ws1, ws2, total = await store.job_counts("ws1"), await store.job_counts("ws2"), await store.job_counts()
    assert (ws1.pending, ws1.dead, ws1.oldest_pending_at) == (2, 0, 100.0)  # p1 (retried) and p3
    assert (ws2.pending, ws2.dead, ws2.oldest_pending_at) == (0, 0, None)  # q1 done: nothing to show
    assert (total.pending, total.dead, total.oldest_pending_at) == (2, 0, 100.0)

    [p1] = await store.claim_jobs("A", NOW + 10, LEASE, 10)  # p3 is still leased
    assert await store.finish_job(p1.seq, "A", "dead", "Teams: 400")  # the oldest pending moves on
    ws1, total = await store.job_counts("ws1"), await store.job_counts()
    assert (ws1.pending, ws1.dead, ws1.oldest_pending_at) == (1, 1, 300.0)
    assert (total.pending, total.dead, total.oldest_pending_at) == (1, 1, 300.0)

    assert await store.finish_job(claimed["p3"].seq, "A", "done")
    total = await store.job_counts()
    assert (total.pending, total.dead, total.oldest_pending_at) == (0, 1, None)
    assert await store.requeue_dead_jobs("ws1") == 1  # replayed: pending again, from its creation
    ws1, ws2 = await store.job_counts("ws1"), await store.job_counts("ws2")
    assert (ws1.pending, ws1.dead, ws1.oldest_pending_at) == (1, 0, 100.0)
    assert (ws2.pending, ws2.dead, ws2.oldest_pending_at) == (0, 0, None)


# message links -----------------------------------------------------------------------


async def test_message_link_uniqueness_on_both_ids(store: Store):
    assert await store.add_message_link(MessageLink("ws1", "c1", "n1", "t1", "to_teams"))
    assert await store.add_message_link(MessageLink("ws1", "c1", "n1", "t2", "to_teams")) is False
    assert await store.add_message_link(MessageLink("ws1", "c1", "n2", "t1", "to_neetochat")) is False
    # None never collides
    assert await store.add_message_link(MessageLink("ws1", "c1", "n3", None, "to_teams"))
    assert await store.add_message_link(MessageLink("ws1", "c1", "n4", None, "to_teams"))
    assert await store.add_message_link(MessageLink("ws1", "c1", None, "t5", "to_neetochat"))
    assert await store.add_message_link(MessageLink("ws1", "c1", None, "t6", "to_neetochat"))
    # another workspace may reuse the ids
    assert await store.add_message_link(MessageLink("ws2", "c1", "n1", "t1", "to_teams"))

    link = await store.get_link_by_neeto_id("ws1", "n1")
    assert link is not None and (link.teams_activity_id, link.direction) == ("t1", "to_teams")
    assert link.created_at > 0
    by_activity = await store.get_link_by_activity_id("ws1", "t1")
    assert by_activity is not None and by_activity.neeto_message_id == "n1"
    assert await store.get_link_by_neeto_id("ws1", "missing") is None
    assert await store.get_link_by_activity_id("ws3", "t1") is None


async def test_complete_message_link(store: Store):
    # to_teams: the intent is written by neeto id, the activity id filled in after posting
    assert await store.add_message_link(MessageLink("ws1", "c1", "n1", None, "to_teams"))
    assert await store.get_link_by_activity_id("ws1", "t1") is None
    await store.complete_message_link("ws1", neeto_message_id="n1", teams_activity_id="t1")
    link = await store.get_link_by_activity_id("ws1", "t1")
    assert link is not None and link.neeto_message_id == "n1"
    # filling is one-shot: a second completion does not overwrite
    await store.complete_message_link("ws1", neeto_message_id="n1", teams_activity_id="t-other")
    assert (await store.get_link_by_neeto_id("ws1", "n1")).teams_activity_id == "t1"

    # to_neetochat: found by activity id, gets the neeto id
    assert await store.add_message_link(MessageLink("ws1", "c1", None, "t2", "to_neetochat"))
    await store.complete_message_link("ws1", neeto_message_id="n2", teams_activity_id="t2")
    link = await store.get_link_by_neeto_id("ws1", "n2")
    assert link is not None and link.teams_activity_id == "t2" and link.direction == "to_neetochat"

    # an id already linked elsewhere: the first link wins, no error
    assert await store.add_message_link(MessageLink("ws1", "c1", "n3", None, "to_teams"))
    await store.complete_message_link("ws1", neeto_message_id="n3", teams_activity_id="t1")
    assert (await store.get_link_by_neeto_id("ws1", "n3")).teams_activity_id is None
    assert (await store.get_link_by_activity_id("ws1", "t1")).neeto_message_id == "n1"

    # a link in the other direction is not "completed" from the wrong side
    assert await store.add_message_link(MessageLink("ws1", "c1", "n4", None, "to_neetochat"))
    await store.complete_message_link("ws1", neeto_message_id="n4", teams_activity_id="t4")
    assert (await store.get_link_by_neeto_id("ws1", "n4")).teams_activity_id is None


# portals -----------------------------------------------------------------------------


async def test_portal_create_if_new_get_and_update(store: Store):
    assert await store.create_portal(Portal("ws1", "c1", 7, team_id="T1"))
    assert await store.create_portal(Portal("ws1", "c1", 99, state="closed")) is False
    p = await store.get_portal("ws1", "c1")
    assert p is not None and (p.number, p.state, p.team_id, p.backfilled) == (7, "pending", "T1", False)
    assert p.created_at > 0 and p.updated_at > 0
    assert await store.get_portal("ws1", "c2") is None
    assert await store.get_portal("ws2", "c1") is None

    reference = {"conversation": {"id": "19:chan@thread.tacv2"}, "serviceUrl": "https://smba", "n": [1, 2]}
    await store.update_portal(
        "ws1", "c1", state="open", channel_id="19:chan@thread.tacv2", conversation_reference=reference, backfilled=True
    )
    p = await store.get_portal("ws1", "c1")
    assert p is not None
    assert (p.state, p.channel_id, p.conversation_reference, p.backfilled) == (
        "open",
        "19:chan@thread.tacv2",
        reference,
        True,
    )
    assert (p.number, p.team_id, p.channel_name) == (7, "T1", None)  # untouched fields stay
    await store.update_portal("ws1", "c1", channel_name=None, updated_at=123.0)
    assert (await store.get_portal("ws1", "c1")).updated_at == 123.0

    with pytest.raises(ValueError):
        await store.update_portal("ws1", "c1", no_such_field=1)
    await store.update_portal("ws1", "missing", state="open")  # no portal: nothing happens
    assert await store.get_portal("ws1", "missing") is None


async def test_get_portal_by_channel_skips_closed_and_prefers_newest(store: Store):
    assert await store.get_portal_by_channel("19:x") is None
    assert await store.create_portal(Portal("ws1", "old", 1, state="closed", channel_id="19:x", created_at=10.0))
    assert await store.get_portal_by_channel("19:x") is None
    assert await store.create_portal(Portal("ws1", "a", 2, state="open", channel_id="19:x", created_at=20.0))
    assert await store.create_portal(Portal("ws2", "b", 3, state="open", channel_id="19:x", created_at=30.0))
    assert await store.create_portal(Portal("ws1", "other", 4, state="open", channel_id="19:y", created_at=40.0))
    p = await store.get_portal_by_channel("19:x")
    assert p is not None and (p.workspace_id, p.conversation_id) == ("ws2", "b")
    await store.update_portal("ws2", "b", state="closed")
    p = await store.get_portal_by_channel("19:x")
    assert p is not None and p.conversation_id == "a"


async def test_count_portals(store: Store):
    for i, state in enumerate(["open", "open", "closed", "pending"]):
        assert await store.create_portal(Portal("ws1", f"c{i}", i, state=state))
    assert await store.create_portal(Portal("ws2", "c0", 0, state="open"))
    assert await store.count_portals("ws1") == 4
    assert await store.count_portals("ws1", "open") == 2
    assert await store.count_portals("ws1", "closed") == 1
    assert await store.count_portals("ws3") == 0


async def test_open_channels_by_team_counts_only_open_conversation_channels(store: Store):
    assert await store.open_channels_by_team() == {}
    for portal in [
        Portal("ws1", "a", 1, state="open", team_id="T1", channel_id="19:a"),
        Portal("ws1", "b", 2, state="open", team_id="T1", channel_id="19:b"),
        Portal("ws2", "c", 3, state="open", team_id="T1", channel_id="19:c"),  # another workspace, same team
        Portal("ws1", "d", 4, state="open", team_id="T2", channel_id="19:d"),
        Portal("ws1", "closed", 5, state="closed", team_id="T1", channel_id="19:e"),
        Portal("ws1", "no-channel", 6, state="open", team_id="T1"),
        Portal("ws1", "pending", 7, state="pending", team_id="T1", channel_id="19:g"),
        Portal("ws1", "thread", 8, state="open", team_id="T1", channel_id="19:general", thread_id="root8"),
        Portal("ws1", "no-team", 9, state="open", channel_id="19:h"),
    ]:
        assert await store.create_portal(portal)
    assert await store.open_channels_by_team() == {"T1": 3, "T2": 1}

    await store.update_portal("ws1", "a", state="closed")
    await store.update_portal("ws1", "d", state="closed")
    await store.update_portal("ws1", "no-channel", channel_id="19:f")
    await store.update_portal("ws1", "pending", state="open")
    assert await store.open_channels_by_team() == {"T1": 4}


# workspaces & installations ----------------------------------------------------------


async def test_workspace_put_get_replace(store: Store):
    assert await store.get_workspace("ws1") is None
    user = {"aad_object_id": "u1", "email": "a@b.c", "name": "A"}
    await store.put_workspace(workspace(name="Acme", team_id="19:t@thread.tacv2", authorizing_user=user))
    got = await store.get_workspace("ws1")
    assert got is not None
    assert (got.name, got.team_id, got.authorizing_user, got.update_type) == (
        "Acme",
        "19:t@thread.tacv2",
        user,
        "new_conversations",
    )
    assert got.created_at > 0 and got.updated_at >= got.created_at
    created = got.created_at

    # replace the whole record: unset fields go back to their defaults, created_at stays
    await store.put_workspace(workspace(name="Acme 2", update_type="all_activity"))
    got = await store.get_workspace("ws1")
    assert got is not None
    assert (got.name, got.team_id, got.authorizing_user, got.update_type) == ("Acme 2", None, None, "all_activity")
    assert got.created_at == created

    await store.put_workspace(workspace(created_at=5.0, updated_at=6.0))
    got = await store.get_workspace("ws1")
    assert (got.created_at, got.updated_at) == (5.0, 6.0)


async def test_transcript_setting_and_reopened_flag_round_trip(store: Store):
    await store.put_workspace(workspace())
    assert (await store.get_workspace("ws1")).transcript_on_close is True  # on unless turned off
    await store.put_workspace(workspace(transcript_on_close=False))
    got = await store.get_workspace("ws1")
    assert got.transcript_on_close is False
    got.transcript_on_close = True
    await store.put_workspace(got)
    assert (await store.get_workspace("ws1")).transcript_on_close is True

    assert await store.create_portal(Portal("ws1", "c1", 1, state="closed"))
    assert (await store.get_portal("ws1", "c1")).reopened is False
    await store.update_portal("ws1", "c1", state="open", reopened=True)
    assert (await store.get_portal("ws1", "c1")).reopened is True
    await store.update_portal("ws1", "c1", reopened=False)
    assert (await store.get_portal("ws1", "c1")).reopened is False


def _reopenable(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, applied: Callable[[int], bool]
) -> Callable[[], Store]:
    """A factory of the same store, opened again and again (one SQLite file, one mongomock
    database), that applies only the migrations whose number ``applied`` accepts, until
    ``monkeypatch.undo()``: the store as an older version left it."""
    module = sys.modules[SqliteStore.__module__ if backend == "sqlite" else MongoStore.__module__]
    monkeypatch.setattr(module, "MIGRATIONS", [m for m in module.MIGRATIONS if applied(m[0])])
    client = AsyncMongoMockClient()

    def make() -> Store:
        if backend == "sqlite":
            return SqliteStore(str(tmp_path / "bridge.sqlite3"))
        return MongoStore(client, "bridge_test")

    return make


@pytest.mark.parametrize("backend", ["sqlite", "mongomock"])
async def test_schema_6_reads_older_workspaces_and_portals_with_the_defaults(backend, tmp_path, monkeypatch):
    """A store written before schema 6: its workspaces post transcripts, its portals are
    not reopened."""
    make = _reopenable(backend, tmp_path, monkeypatch, lambda number: number <= 5)
    old = make()
    await old.open()
    if isinstance(old, SqliteStore):  # rows as the schema-5 code wrote them: no such columns yet
        await old.db.execute(
            "INSERT INTO workspaces (id, base_url, api_key_enc, webhook_secret_enc) "
            "VALUES ('ws1', 'https://ws1.test', 'k', 's')"
        )
        await old.db.execute("INSERT INTO portals (workspace_id, conversation_id, number) VALUES ('ws1', 'c1', 1)")
    else:
        await old.db.workspaces.insert_one(
            {"_id": "ws1", "base_url": "https://ws1.test", "api_key_enc": "k", "webhook_secret_enc": "s"}
        )
        await old.db.portals.insert_one({"workspace_id": "ws1", "conversation_id": "c1", "number": 1})
    await old.close()

    monkeypatch.undo()
    new = make()
    await new.open()
    try:
        assert (await new.get_workspace("ws1")).transcript_on_close is True
        assert (await new.get_portal("ws1", "c1")).reopened is False
    finally:
        await new.close()


async def test_delete_workspace_cascades(store: Store):
    await store.put_workspace(workspace("ws1"))
    await store.put_workspace(workspace("ws2"))
    for ws in ("ws1", "ws2"):
        assert await store.create_portal(Portal(ws, "c1", 1, state="open", channel_id=f"19:{ws}"))
        assert await store.add_message_link(MessageLink(ws, "c1", "n1", "t1", "to_teams"))
        await store.remember_neeto_team(ws, "team1", "Billing")
        await store.set_identity_override(ws, "aad-1", "agt-1")
        assert await store.enqueue(job(f"{ws}-done", workspace=ws, partition=f"{ws}:c1"))
        assert await store.enqueue(job(f"{ws}-pending", workspace=ws, partition=f"{ws}:c1"))
    for j in await store.claim_jobs("A", NOW, LEASE, 10):
        assert await store.finish_job(j.seq, "A", "done")

    assert await store.delete_workspace("ws1") is True
    assert await store.get_workspace("ws1") is None
    assert await store.get_portal("ws1", "c1") is None
    assert await store.get_portal_by_channel("19:ws1") is None
    assert await store.get_link_by_neeto_id("ws1", "n1") is None
    assert await store.get_link_by_activity_id("ws1", "t1") is None
    assert await store.neeto_teams("ws1") == {}
    assert await store.identity_override("ws1", "aad-1") is None and await store.identity_overrides("ws1") == []
    counts = await store.job_counts("ws1")
    assert (counts.pending, counts.dead) == (0, 0)
    assert await store.enqueue(job("ws1-done", workspace="ws1")) is False  # finished history stays: it dedupes
    assert [j.dedupe_key for j in await store.claim_jobs("A", NOW, LEASE, 10)] == ["ws2-pending"]

    # the other workspace is untouched
    assert await store.get_workspace("ws2") is not None
    assert await store.get_portal("ws2", "c1") is not None
    assert await store.get_link_by_neeto_id("ws2", "n1") is not None
    assert (await store.job_counts("ws2")).pending == 1
    assert await store.neeto_teams("ws2") == {"team1": "Billing"}
    assert (await store.identity_override("ws2", "aad-1")).agent_id == "agt-1"

    assert await store.delete_workspace("ws1") is False
    assert await store.delete_workspace("never") is False


async def test_installation_lookup_by_either_id(store: Store):
    assert await store.get_installation("19:t@thread.tacv2") is None
    inst = Installation("19:t@thread.tacv2", "group-1", "tenant-1", "https://smba/", "19:general", name="Sales")
    await store.put_installation(inst)
    by_team = await store.get_installation("19:t@thread.tacv2")
    by_group = await store.get_installation("group-1")
    assert by_team is not None and by_group is not None
    assert by_team == by_group
    assert (by_team.name, by_team.installed, by_team.service_url) == ("Sales", True, "https://smba/")
    assert by_team.updated_at > 0

    inst.installed = False
    inst.updated_at = 0.0
    await store.put_installation(inst)
    got = await store.get_installation("group-1")
    assert got is not None and got.installed is False
    assert await store.get_installation("group-2") is None

    await store.put_installation(Installation("19:u@thread.tacv2", None, None, "https://smba/", "19:g2"))
    got = await store.get_installation("19:u@thread.tacv2")
    assert got is not None and got.aad_group_id is None


async def test_installations_of_a_tenant_by_name_without_those_removed(store: Store):
    assert await store.installations("tenant-1") == []
    for team, name, tenant in (
        ("19:b@thread.tacv2", "billing", "tenant-1"),
        ("19:a@thread.tacv2", "Support", "tenant-1"),
        ("19:c@thread.tacv2", "Archive", "tenant-1"),
        ("19:o@thread.tacv2", "Other", "tenant-2"),
        ("19:n@thread.tacv2", "No tenant", None),
    ):
        await store.put_installation(Installation(team, f"group-{team[3]}", tenant, "https://smba/", "19:g", name=name))
    removed = await store.get_installation("19:c@thread.tacv2")
    removed.installed = False
    await store.put_installation(removed)
    found = await store.installations("tenant-1")
    assert [(i.team_id, i.name) for i in found] == [("19:b@thread.tacv2", "billing"), ("19:a@thread.tacv2", "Support")]
    assert found[0] == await store.get_installation("19:b@thread.tacv2")
    assert [i.name for i in await store.installations("tenant-2")] == ["Other"]


# lifecycle ---------------------------------------------------------------------------


async def test_ping_and_reopen_is_harmless(store: Store):
    await store.ping()
    await store.put_workspace(workspace())
    await store.open()  # re-running migrations changes nothing
    if isinstance(store, MongoStore):
        again: Store = MongoStore(store._client, store.db.name)
        await again.open()
        assert await again.get_workspace("ws1") is not None
        assert await store.schema_version() >= 1
    assert await store.get_workspace("ws1") is not None


async def test_sqlite_reopen_keeps_everything(tmp_path):
    path = str(tmp_path / "bridge.sqlite3")
    s = SqliteStore(path)
    await s.open()
    await s.put_workspace(workspace(authorizing_user={"name": "A"}))
    await s.put_installation(Installation("T", "G", None, "https://smba/", "19:g"))
    assert await s.create_portal(Portal("ws1", "c1", 1, conversation_reference={"a": 1}))
    assert await s.add_message_link(MessageLink("ws1", "c1", "n1", None, "to_teams"))
    first, second = job("j1"), job("j2")
    assert await s.enqueue(first) and await s.enqueue(second)
    [leased] = await s.claim_jobs("A", NOW, LEASE, 10)
    version = await s.schema_version()
    await s.close()

    for _ in range(2):  # reopening twice: migrations are not applied again
        s = SqliteStore(path)
        await s.open()
        assert await s.schema_version() == version >= 1
        assert (await s.get_workspace("ws1")).authorizing_user == {"name": "A"}
        assert (await s.get_installation("G")).team_id == "T"
        assert (await s.get_portal("ws1", "c1")).conversation_reference == {"a": 1}
        assert (await s.get_link_by_neeto_id("ws1", "n1")).direction == "to_teams"
        assert await s.claim_jobs("B", NOW, LEASE, 10) == []  # A's lease survived
        assert await s.enqueue(job("j1")) is False
        await s.close()

    s = SqliteStore(path)
    await s.open()
    assert await s.finish_job(leased.seq, "A", "done")
    third = job("j3")
    assert await s.enqueue(third) and third.seq > second.seq  # seq never goes back
    await s.close()


@pytest.mark.parametrize("backend", ["sqlite", "mongomock"])
async def test_migration_4_upgrades_a_store_of_schema_3(backend, tmp_path, monkeypatch):
    """The counting indexes are added to a store that already holds jobs and portals."""
    # Every migration but 4: the store as it was before 4, with the columns that today's
    # create_portal writes (added by later migrations).
    make = _reopenable(backend, tmp_path, monkeypatch, lambda number: number != 4)
    old = make()
    await old.open()
    for key, created in (("m1", 100.0), ("m2", 200.0), ("m3", 300.0)):
        assert await old.enqueue(job(key, partition=f"ws1:{key}", created_at=created))
    m1, m2, _ = await old.claim_jobs("A", NOW, LEASE, 10)
    assert await old.finish_job(m1.seq, "A", "done")
    assert await old.finish_job(m2.seq, "A", "dead", "x")
    assert await old.create_portal(Portal("ws1", "c1", 1, state="open", team_id="T", channel_id="19:a"))
    assert await old.create_portal(Portal("ws1", "c2", 2, state="closed", team_id="T", channel_id="19:b"))
    await old.close()

    monkeypatch.undo()
    new = make()
    await new.open()
    try:
        assert await new.schema_version() >= 4
        if isinstance(new, SqliteStore):
            indexes = {
                r[0] for r in await new.db.execute_fetchall("SELECT name FROM sqlite_master WHERE type = 'index'")
            }
            assert {"jobs_pending", "jobs_dead", "portals_open_channels"} <= indexes
        else:
            assert "pending_age" in await new.db.jobs.index_information()
            assert "open_channels" in await new.db.portals.index_information()
        counts = await new.job_counts("ws1")
        assert (counts.pending, counts.dead, counts.oldest_pending_at) == (1, 1, 300.0)
        assert await new.open_channels_by_team() == {"T": 1}
    finally:
        await new.close()


async def test_schemas_9_and_10_move_the_jobs_indexes_and_keep_the_queue(tmp_path, monkeypatch):
    """A SQLite store written before schema 9 (five jobs indexes, each written per insert;
    heads found in an index in partition order): after the migrations the jobs table has
    the new indexes only, queue_heads holds each conversation's head, and the queue goes on
    where it was: a partition leased by another instance stays its until that lease ends,
    finished and dead jobs stay out, the counts are the same."""
    make = _reopenable("sqlite", tmp_path, monkeypatch, lambda number: number <= 8)
    old = make()
    await old.open()
    for key, partition in (("a1", "ws1:a"), ("b1", "ws1:b"), ("a2", "ws1:a"), ("b2", "ws1:b"), ("c1", "ws1:c")):
        assert await old.enqueue(job(key, partition=partition, created_at=100.0))
    assert isinstance(old, SqliteStore)  # as the older claims and finishes left them:
    await old.db.execute("UPDATE jobs SET status = 'done', finished_at = ? WHERE dedupe_key = 'a1'", (NOW,))
    await old.db.execute("UPDATE jobs SET status = 'dead', finished_at = ? WHERE dedupe_key = 'c1'", (NOW,))
    await old.db.execute("UPDATE jobs SET lease_owner = 'B/1', lease_until = ? WHERE dedupe_key = 'b1'", (NOW + LEASE,))
    await old.close()

    monkeypatch.undo()
    new = make()
    await new.open()
    try:
        assert isinstance(new, SqliteStore)
        indexes = {
            r[0]
            for r in await new.db.execute_fetchall(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs' AND sql IS NOT NULL"
            )
        }
        assert indexes == {"jobs_dedupe", "jobs_pending", "jobs_leased", "jobs_dead"}
        heads = await new.db.execute_fetchall("SELECT partition, pending FROM queue_heads ORDER BY partition")
        assert [tuple(r) for r in heads] == [("ws1:a", 1), ("ws1:b", 2)]
        counts = await new.job_counts("ws1")
        assert (counts.pending, counts.dead, counts.oldest_pending_at) == (3, 1, 100.0)
        assert [j.dedupe_key for j in await new.list_dead_jobs("ws1")] == ["c1"]
        assert [j.dedupe_key for j in await new.claim_jobs("A", NOW, LEASE, 10)] == ["a2"]
        [b1] = await new.db.execute_fetchall("SELECT seq FROM jobs WHERE dedupe_key = 'b1'")
        assert await new.finish_job(b1[0], "B/1", "done")
        assert [j.dedupe_key for j in await new.claim_jobs("A", NOW, LEASE, 10)] == ["b2"]
        assert (await new.job_counts("ws1")).pending == 2  # a2 and b2, both leased by A
    finally:
        await new.close()


async def test_sqlite_metrics_queries_never_walk_the_jobs_or_portals(tmp_path):
    """What /metrics and the operator status run never walks the jobs or portals tables
    (nor an index of all their rows): the done jobs and closed portals pile up. The pending
    jobs are counted from queue_heads (a row per partition with pending work) and their
    heads looked up by seq; the dead ones and the open channels from partial indexes."""
    s = SqliteStore(str(tmp_path / "bridge.sqlite3"))
    await s.open()
    allowed = (
        "queue_heads",
        "USING INTEGER PRIMARY KEY (rowid=?)",
        "COVERING INDEX jobs_dead",
        "portals_open_channels",
    )
    try:
        statements: list[str] = []
        for call in (lambda: s.job_counts("ws1"), lambda: s.job_counts(), lambda: s.open_channels_by_team()):
            statements.clear()
            await s.db.set_trace_callback(statements.append)
            try:
                await call()
            finally:
                await s.db.set_trace_callback(None)
            assert statements
            lines = [r[3] for sql in statements for r in await s.db.execute_fetchall(f"EXPLAIN QUERY PLAN {sql}")]
            reads = [line for line in lines if line.startswith(("SCAN", "SEARCH")) and "CONSTANT ROW" not in line]
            assert reads and all(any(a in line for a in allowed) for line in reads), lines
            assert not any("TEMP B-TREE" in line for line in lines), lines
    finally:
        await s.close()


async def test_open_store_factory(tmp_path):
    data_dir = tmp_path / "data"
    s = open_store(None, "unused", str(data_dir))
    assert isinstance(s, SqliteStore)
    await s.open()
    await s.ping()
    await s.close()
    assert (data_dir / "bridge.sqlite3").exists()
    m = open_store("mongodb://127.0.0.1:1", "bridge_db", str(data_dir))  # not connected yet
    assert isinstance(m, MongoStore) and m.db.name == "bridge_db"
    await m.close()


# several processes on one SQLite file ------------------------------------------------

_WORKER = r"""
import asyncio, json, sys, time
from services.store.sqlite import SqliteStore

async def main(path, owner):
    store = SqliteStore(path)
    await store.open()
    print("ready", flush=True)
    sys.stdin.readline()  # the start signal: both workers begin together
    finished = []
    while True:
        jobs = await store.claim_jobs(owner, 1000.0, 1e9, 3)
        if not jobs:
            if (await store.job_counts()).pending == 0:
                break
            continue
        for job in jobs:
            stamp = time.monotonic_ns()  # taken while the lease is still held
            await asyncio.sleep(0.002)  # the work: real jobs take a moment, so both workers get some
            ok = await store.finish_job(job.seq, owner, "done")
            finished.append([job.seq, job.partition, stamp, ok])
    await store.close()
    print(json.dumps(finished), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_sqlite_claims_across_processes(tmp_path):
    path = str(tmp_path / "bridge.sqlite3")
    s = SqliteStore(path)
    await s.open()
    enqueued: dict[int, str] = {}
    for i in range(200):
        j = job(f"mp{i}", partition=f"P{i % 20}")
        assert await s.enqueue(j)
        enqueued[j.seq] = j.partition
    await s.close()

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER,
            path,
            owner,
            cwd=str(REPO),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for owner in ("proc-1", "proc-2")
    ]
    try:
        for p in procs:
            line = await asyncio.wait_for(p.stdout.readline(), 60)
            assert line.strip() == b"ready", (line, await p.stderr.read())
        for p in procs:
            p.stdin.write(b"go\n")
            await p.stdin.drain()
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 60)
    finally:
        for p in procs:  # a crashed worker leaves its leases held: don't let the other spin on
            if p.returncode is None:
                p.kill()
                await p.wait()
    results = []
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()
        results.append(json.loads(out.decode().strip().splitlines()[-1]))

    done = [row for rows in results for row in rows]
    assert all(ok for _, _, _, ok in done)
    assert sorted(seq for seq, _, _, _ in done) == sorted(enqueued)  # every job exactly once
    assert all(rows for rows in results), "both processes should have finished some jobs"
    by_partition: dict[str, list[tuple[int, int]]] = {}
    for seq, partition, stamp, _ in done:
        assert enqueued[seq] == partition
        by_partition.setdefault(partition, []).append((stamp, seq))
    for partition, rows in by_partition.items():
        in_time_order = [seq for _, seq in sorted(rows)]
        assert in_time_order == sorted(in_time_order), partition

    s = SqliteStore(path)
    await s.open()
    counts = await s.job_counts()
    assert (counts.pending, counts.dead) == (0, 0)  # all 200 done (checked above, one by one)
    await s.close()


# the delivery engine's store operations ----------------------------------------------


async def test_a_held_back_intent_is_dropped_but_a_completed_link_never(store: Store):
    assert await store.add_message_link(MessageLink("ws1", "c1", "n1", None, "to_teams", channel_id="ch1"))
    assert await store.add_message_link(MessageLink("ws1", "c1", "n2", "t2", "to_teams", channel_id="ch1"))
    assert await store.drop_intent("ws1", "n1")
    assert await store.get_link_by_neeto_id("ws1", "n1") is None
    assert not await store.drop_intent("ws1", "n2")
    assert (await store.get_link_by_neeto_id("ws1", "n2")).teams_activity_id == "t2"


async def test_links_of_a_deleted_channel_are_forgotten_and_only_those(store: Store):
    await store.add_message_link(MessageLink("ws1", "c1", "n1", "t1", "to_teams", channel_id="old"))
    await store.add_message_link(MessageLink("ws1", "c1", None, "t2", "to_neetochat", channel_id="old"))
    await store.add_message_link(MessageLink("ws1", "c1", "notice:c1", "t3", "to_teams", channel_id="general"))
    await store.add_message_link(MessageLink("ws1", "c2", "n4", "t4", "to_teams", channel_id="old"))
    assert await store.forget_channel_links("ws1", "c1", "old") == 2
    assert await store.get_link_by_neeto_id("ws1", "n1") is None
    assert await store.get_link_by_activity_id("ws1", "t2") is None
    assert await store.get_link_by_neeto_id("ws1", "notice:c1") is not None
    assert await store.get_link_by_neeto_id("ws1", "n4") is not None


async def test_a_thread_portal_is_found_by_its_thread_and_a_channel_portal_by_its_channel(store: Store):
    await store.create_portal(Portal("ws1", "c1", 1, state="open", channel_id="general", thread_id="root1"))
    await store.create_portal(Portal("ws1", "c2", 2, state="open", channel_id="ch2"))
    assert (await store.get_portal_by_channel("general", "root1")).conversation_id == "c1"
    assert await store.get_portal_by_channel("general") is None  # a root post in General
    assert await store.get_portal_by_channel("general", "other-root") is None
    assert (await store.get_portal_by_channel("ch2", "any-root")).conversation_id == "c2"
    assert (await store.get_portal_by_channel("ch2")).conversation_id == "c2"


async def test_leases_renewed_held_and_lost(store: Store):
    await store.enqueue(Job(0, "neetochat_event", "ws1", "ws1:c1", "k1", {}))
    await store.enqueue(Job(0, "neetochat_event", "ws1", "ws1:c2", "k2", {}))
    first, second = await store.claim_jobs("a/1", 100.0, 10, 2)
    assert await store.lease_held(first.seq, "a/1", 105.0)
    assert not await store.lease_held(first.seq, "a/1", 111.0)  # expired
    assert not await store.lease_held(first.seq, "b/1", 105.0)
    [taken] = await store.claim_jobs("b/1", 111.0, 10, 1)  # a stalled; b takes the first
    assert taken.seq == first.seq
    assert await store.renew_leases("a/1", [first.seq, second.seq], 200.0) == [second.seq]
    assert await store.lease_held(second.seq, "a/1", 150.0)


async def test_a_throttled_retry_spends_no_attempt(store: Store):
    await store.enqueue(Job(0, "neetochat_event", "ws1", "ws1:c1", "k1", {}))
    [job] = await store.claim_jobs("a/1", 100.0, 10, 1)
    assert await store.retry_job(job.seq, "a/1", 101.0, "429", count_attempt=False)
    [job] = await store.claim_jobs("a/1", 101.0, 10, 1)
    assert job.attempts == 0 and job.last_error == "429"
    assert await store.retry_job(job.seq, "a/1", 102.0, "503")
    [job] = await store.claim_jobs("a/1", 102.0, 10, 1)
    assert job.attempts == 1


async def test_live_instances_are_those_that_beat_recently(store: Store):
    await store.beat_instance("a/1", 100.0)
    await store.beat_instance("b/1", 150.0)
    await store.beat_instance("a/1", 160.0)
    assert await store.live_instances(since=140.0) == 2
    assert await store.live_instances(since=155.0) == 1
    assert await store.live_instances(since=200.0) == 0


async def test_dead_jobs_replayed_by_their_reason(store: Store):
    for key in ("k1", "k2"):
        await store.enqueue(Job(0, "neetochat_event", "ws1", f"ws1:{key}", key, {}))
    one, two = await store.claim_jobs("a/1", 100.0, 10, 2)
    await store.finish_job(one.seq, "a/1", "dead", "the bot was removed from the linked team: 403")
    await store.finish_job(two.seq, "a/1", "dead", "Teams: 400 bad argument")
    assert await store.requeue_dead_jobs("ws1", error_prefix="the bot was removed") == 1
    assert [j.seq for j in await store.list_dead_jobs("ws1")] == [two.seq]


async def test_workspaces_linked_to_a_team_by_either_id(store: Store):
    await store.put_workspace(Workspace("w1", "https://w1.test", "k", "s", team_id="19:team@thread.tacv2"))
    await store.put_workspace(Workspace("w2", "https://w2.test", "k", "s", team_id="group-guid"))
    await store.put_workspace(Workspace("w3", "https://w3.test", "k", "s", team_id="19:other@thread.tacv2"))
    found = await store.workspaces_linked_to(["19:team@thread.tacv2", "group-guid"])
    assert sorted(ws.id for ws in found) == ["w1", "w2"]
    assert await store.workspaces_linked_to([""]) == []


async def test_neeto_teams_are_remembered_per_workspace_and_renamed_in_place(store: Store):
    assert await store.neeto_teams("ws1") == {}
    await store.remember_neeto_team("ws1", "t1", "Billing")
    await store.remember_neeto_team("ws1", "t2", "Sales")
    await store.remember_neeto_team("ws2", "t1", "Other workspace")
    await store.remember_neeto_team("ws1", "t1", "Billing & Invoices")
    assert await store.neeto_teams("ws1") == {"t1": "Billing & Invoices", "t2": "Sales"}
    assert await store.neeto_teams("ws2") == {"t1": "Other workspace"}


async def test_open_portals_are_walked_in_bounded_steps(store: Store):
    for n in range(5):
        assert await store.create_portal(Portal("ws1", f"c{n}", n, state="open", channel_id=f"19:{n}"))
    assert await store.create_portal(Portal("ws1", "c9", 9, state="closed"))
    assert await store.create_portal(Portal("ws2", "c1", 1, state="open"))
    first = await store.open_portals("ws1", None, 2)
    assert [p.conversation_id for p in first] == ["c0", "c1"]
    rest = await store.open_portals("ws1", first[-1].conversation_id, 10)
    assert [p.conversation_id for p in rest] == ["c2", "c3", "c4"]
    assert await store.open_portals("ws1", "c4", 10) == []


async def test_linked_workspaces(store: Store):
    await store.put_workspace(workspace("ws1"))
    linked = workspace("ws2")
    linked.team_id = "19:team@thread.tacv2"
    await store.put_workspace(linked)
    assert [w.id for w in await store.linked_workspaces()] == ["ws2"]


async def test_identity_overrides_per_workspace_and_person_replaced_in_place(store: Store):
    assert await store.identity_override("ws1", "aad-1") is None
    assert await store.identity_overrides("ws1") == []
    await store.set_identity_override("ws1", "aad-1", "agt-ada", "Olly Outsider", "olly@partner.test")
    await store.set_identity_override("ws1", "aad-2", None, "Ada Agent", "ada@acme.test")  # the authorizing user
    await store.set_identity_override("ws2", "aad-1", "agt-other")
    olly = await store.identity_override("ws1", "aad-1")
    assert (olly.workspace_id, olly.agent_id, olly.teams_name, olly.teams_email) == (
        "ws1",
        "agt-ada",
        "Olly Outsider",
        "olly@partner.test",
    )
    assert olly.updated_at > 0
    assert (await store.identity_override("ws1", "aad-2")).agent_id is None

    # one per person: setting again replaces (both at once too: never a second row)
    await asyncio.gather(*(store.set_identity_override("ws1", "aad-1", None, "Olly O.") for _ in range(5)))
    listed = await store.identity_overrides("ws1")
    assert [(o.aad_object_id, o.agent_id, o.teams_name) for o in listed] == [
        ("aad-2", None, "Ada Agent"),
        ("aad-1", None, "Olly O."),
    ]  # by Teams name
    assert [o.agent_id for o in await store.identity_overrides("ws2")] == ["agt-other"]

    assert await store.delete_identity_override("ws1", "aad-1") is True
    assert await store.delete_identity_override("ws1", "aad-1") is False
    assert await store.identity_override("ws1", "aad-1") is None
    assert (await store.identity_override("ws2", "aad-1")).agent_id == "agt-other"


@pytest.mark.parametrize("backend", ["sqlite", "mongomock"])
async def test_migration_7_adds_identity_overrides_to_an_older_store(backend, tmp_path, monkeypatch):
    """Every migration but 7 (so today's put_workspace finds its columns), then 7."""
    make = _reopenable(backend, tmp_path, monkeypatch, lambda number: number != 7)
    old = make()
    await old.open()
    await old.put_workspace(workspace("ws1"))
    await old.close()

    monkeypatch.undo()
    new = make()
    await new.open()
    try:
        if isinstance(new, SqliteStore):
            assert 7 in {r[0] for r in await new.db.execute_fetchall("SELECT version FROM schema_version")}
        else:
            assert await new.db.migrations.find_one({"_id": 7})
        await new.set_identity_override("ws1", "aad-1", "agt-1")
        assert (await new.identity_override("ws1", "aad-1")).agent_id == "agt-1"
        if isinstance(new, MongoStore):
            index = (await new.db.identity_overrides.index_information())["person"]
            assert index["unique"] and index["key"] == [("workspace_id", 1), ("aad_object_id", 1)]
        else:  # the per-message lookup is one search of the primary key
            rows = await new.db.execute_fetchall(
                "EXPLAIN QUERY PLAN SELECT * FROM identity_overrides WHERE workspace_id = ? AND aad_object_id = ?",
                ("ws1", "aad-1"),
            )
            assert [r[3] for r in rows] and all(r[3].startswith("SEARCH") for r in rows), [r[3] for r in rows]
    finally:
        await new.close()
