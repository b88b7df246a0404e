"""The MongoDB store, through motor.

Deduplication is done by unique indexes (insert, catch ``DuplicateKeyError``); job
``seq`` comes from an atomic counter; a claim is a ``find_one_and_update`` guarded on the
job still being pending, due and unleased, so of two processes racing for one job
exactly one wins. Numbered migrations (index creation, mostly) are recorded in the
``migrations`` collection and applied at ``open()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from dataclasses import fields as dc_fields
from typing import Any

from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from services.store.base import (
    IdentityOverride,
    Installation,
    Job,
    JobCounts,
    MessageLink,
    Portal,
    Store,
    Workspace,
)

_STRING = {"$type": "string"}


async def _migration_1(db: Any) -> None:
    await db.workspaces.create_index([("team_id", ASCENDING)], name="team")
    await db.installations.create_index([("aad_group_id", ASCENDING)], name="aad_group")
    await db.portals.create_index(
        [("workspace_id", ASCENDING), ("conversation_id", ASCENDING)], name="conversation", unique=True
    )
    await db.portals.create_index(
        [("channel_id", ASCENDING)], name="channel", partialFilterExpression={"channel_id": _STRING}
    )
    await db.portals.create_index([("workspace_id", ASCENDING), ("state", ASCENDING)], name="state")
    await db.message_links.create_index(
        [("workspace_id", ASCENDING), ("neeto_message_id", ASCENDING)],
        name="neeto",
        unique=True,
        partialFilterExpression={"neeto_message_id": _STRING},
    )
    await db.message_links.create_index(
        [("workspace_id", ASCENDING), ("teams_activity_id", ASCENDING)],
        name="activity",
        unique=True,
        partialFilterExpression={"teams_activity_id": _STRING},
    )
    await db.message_links.create_index(
        [("workspace_id", ASCENDING), ("conversation_id", ASCENDING)], name="conversation"
    )
    await db.jobs.create_index([("dedupe_key", ASCENDING)], name="dedupe", unique=True)
    # claim: heads per partition (DISTINCT_SCAN), live leases per partition, due scan
    await db.jobs.create_index(
        [("status", ASCENDING), ("partition", ASCENDING), ("_id", ASCENDING)], name="partition_seq"
    )
    await db.jobs.create_index(
        [("partition", ASCENDING), ("lease_until", ASCENDING)],
        name="pending_lease",
        partialFilterExpression={"status": "pending"},
    )
    await db.jobs.create_index([("status", ASCENDING), ("next_attempt_at", ASCENDING)], name="due")
    await db.jobs.create_index(
        [("workspace_id", ASCENDING), ("status", ASCENDING), ("finished_at", ASCENDING)], name="workspace"
    )


async def _migration_2(db: Any) -> None:
    """Portals gained ``first_message``; documents without it read as None."""
    await db.portals.update_many({"first_message": {"$exists": False}}, {"$set": {"first_message": None}})


async def _migration_3(db: Any) -> None:
    """Portals gained ``thread_id``, message links ``channel_id``; instances beat."""
    await db.portals.update_many({"thread_id": {"$exists": False}}, {"$set": {"thread_id": None}})
    await db.message_links.update_many({"channel_id": {"$exists": False}}, {"$set": {"channel_id": None}})
    await db.instances.create_index([("seen_at", ASCENDING)], name="seen")


async def _migration_4(db: Any) -> None:
    """Indexes for /metrics and the operator status, partial so that they hold only what is
    counted there, not the done jobs and closed portals that pile up. (Pending and dead jobs
    are counted on a range of the existing ``workspace`` index, or for all workspaces of one
    that starts with the status, ``due``. The filters are equalities and ``$type``, which
    MongoDB takes before 7.0, unlike ``$in``.)"""
    # the oldest pending job: the first key
    await db.jobs.create_index(
        [("created_at", ASCENDING)], name="pending_age", partialFilterExpression={"status": "pending"}
    )
    # open channels per team: a walk of the open portals that have a channel, in team order
    await db.portals.create_index(
        [("team_id", ASCENDING)],
        name="open_channels",
        partialFilterExpression={"state": "open", "channel_id": _STRING, "team_id": _STRING},
    )


async def _migration_5(db: Any) -> None:
    """The neetoChat teams learned from events, found by workspace."""
    await db.neeto_teams.create_index([("workspace_id", ASCENDING), ("team_id", ASCENDING)], name="team", unique=True)


async def _migration_7(db: Any) -> None:
    """Identity overrides: one per (workspace, Teams user), read for every Teams message."""
    await db.identity_overrides.create_index(
        [("workspace_id", ASCENDING), ("aad_object_id", ASCENDING)], name="person", unique=True
    )


# Numbered migrations, applied in order; never edit a released one, append. A new field that
# nothing queries needs none: a document without it reads as the dataclass default (schema 6
# of the SQLite store, workspaces' ``transcript_on_close`` = True and portals' ``reopened`` =
# False, is such a change).
MIGRATIONS: list[tuple[int, Callable[[Any], Awaitable[None]]]] = [
    (1, _migration_1),
    (2, _migration_2),
    (3, _migration_3),
    (4, _migration_4),
    (5, _migration_5),
    (7, _migration_7),
]

_PORTAL_FIELDS = {f.name for f in dc_fields(Portal)}


def _load(cls: type, doc: dict[str, Any] | None, id_field: str | None = None) -> Any:
    if doc is None:
        return None
    names = {f.name for f in dc_fields(cls)}
    kwargs = {k: v for k, v in doc.items() if k in names}
    if id_field is not None:
        kwargs[id_field] = doc["_id"]
    return cls(**kwargs)


async def _upsert(collection: Any, key: dict[str, Any], values: dict[str, Any]) -> None:
    """Insert or update the one document ``key`` names (a unique index over its fields)."""
    try:
        await collection.update_one(key, {"$set": values}, upsert=True)
    except DuplicateKeyError:  # a racing upsert inserted it first: now it is there to update
        await collection.update_one(key, {"$set": values})


class MongoStore(Store):
    def __init__(self, client_or_uri: Any, db_name: str) -> None:
        if isinstance(client_or_uri, str):
            self._client: Any = AsyncIOMotorClient(client_or_uri)
            self._owns_client = True
        else:
            self._client = client_or_uri
            self._owns_client = False
        self.db = self._client[db_name]

    # lifecycle -----------------------------------------------------------------------
    async def open(self) -> None:
        applied = {doc["_id"] async for doc in self.db.migrations.find({}, {"_id": 1})}
        for number, migrate in sorted(MIGRATIONS, key=lambda m: m[0]):
            if number in applied:
                continue
            await migrate(self.db)  # idempotent (create_index), so a racing process is harmless
            with contextlib.suppress(DuplicateKeyError):
                await self.db.migrations.insert_one({"_id": number, "applied_at": time.time()})

    async def schema_version(self) -> int:
        doc = await self.db.migrations.find_one({}, sort=[("_id", DESCENDING)])
        return int(doc["_id"]) if doc else 0

    async def close(self) -> None:
        if self._owns_client:
            self._client.close()

    async def ping(self) -> None:
        await self.db.command("ping")

    # workspaces ----------------------------------------------------------------------
    async def put_workspace(self, ws: Workspace) -> None:
        now = time.time()
        doc = asdict(ws)
        ws_id = doc.pop("id")
        doc["updated_at"] = ws.updated_at or now
        created = doc.pop("created_at") or None
        update: dict[str, Any] = {"$set": doc}
        if created is None:
            update["$setOnInsert"] = {"created_at": now}
        else:
            doc["created_at"] = created
        await self.db.workspaces.update_one({"_id": ws_id}, update, upsert=True)

    async def get_workspace(self, workspace_id: str) -> Workspace | None:
        return _load(Workspace, await self.db.workspaces.find_one({"_id": workspace_id}), "id")

    async def workspaces_linked_to(self, team_ids: list[str]) -> list[Workspace]:
        ids = [t for t in team_ids if t]
        return [_load(Workspace, doc, "id") async for doc in self.db.workspaces.find({"team_id": {"$in": ids}})]

    async def linked_workspaces(self) -> list[Workspace]:
        return [_load(Workspace, doc, "id") async for doc in self.db.workspaces.find({"team_id": _STRING})]

    async def delete_workspace(self, workspace_id: str) -> bool:
        result = await self.db.workspaces.delete_one({"_id": workspace_id})
        await self.db.portals.delete_many({"workspace_id": workspace_id})
        await self.db.message_links.delete_many({"workspace_id": workspace_id})
        await self.db.neeto_teams.delete_many({"workspace_id": workspace_id})
        await self.db.identity_overrides.delete_many({"workspace_id": workspace_id})
        await self.db.jobs.delete_many({"workspace_id": workspace_id, "status": "pending"})
        return result.deleted_count > 0

    # installations -------------------------------------------------------------------
    async def put_installation(self, inst: Installation) -> None:
        doc = asdict(inst)
        team_id = doc.pop("team_id")
        doc["updated_at"] = inst.updated_at or time.time()
        await self.db.installations.replace_one({"_id": team_id}, doc, upsert=True)

    async def get_installation(self, team_id_or_group_id: str) -> Installation | None:
        key = team_id_or_group_id
        doc = await self.db.installations.find_one({"_id": key})
        if doc is None:
            doc = await self.db.installations.find_one({"aad_group_id": key}, sort=[("updated_at", DESCENDING)])
        return _load(Installation, doc, "team_id")

    async def installations(self, tenant_id: str) -> list[Installation]:
        found = [
            _load(Installation, doc, "team_id")
            async for doc in self.db.installations.find({"installed": True, "tenant_id": tenant_id})
        ]
        return sorted(found, key=lambda i: (i.name.casefold(), i.team_id))

    # portals -------------------------------------------------------------------------
    async def create_portal(self, portal: Portal) -> bool:
        now = time.time()
        doc = asdict(portal)
        doc["created_at"] = portal.created_at or now
        doc["updated_at"] = portal.updated_at or now
        try:
            await self.db.portals.insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    async def get_portal(self, workspace_id: str, conversation_id: str) -> Portal | None:
        doc = await self.db.portals.find_one({"workspace_id": workspace_id, "conversation_id": conversation_id})
        return _load(Portal, doc)

    async def open_portals(self, workspace_id: str, after: str | None, limit: int) -> list[Portal]:
        query = {"workspace_id": workspace_id, "state": "open", "conversation_id": {"$gt": after or ""}}
        cursor = self.db.portals.find(query).sort("conversation_id", ASCENDING).limit(limit)
        return [_load(Portal, doc) async for doc in cursor]

    async def get_portal_by_channel(self, channel_id: str, thread_id: str | None = None) -> Portal | None:
        query = {"channel_id": {"$eq": channel_id, **_STRING}, "state": {"$ne": "closed"}}
        doc = None
        if thread_id is not None:
            doc = await self.db.portals.find_one({**query, "thread_id": thread_id}, sort=[("created_at", DESCENDING)])
        if doc is None:
            doc = await self.db.portals.find_one({**query, "thread_id": None}, sort=[("created_at", DESCENDING)])
        return _load(Portal, doc)

    async def update_portal(self, workspace_id: str, conversation_id: str, **fields: Any) -> None:
        unknown = set(fields) - _PORTAL_FIELDS
        if unknown:
            raise ValueError(f"unknown portal fields: {sorted(unknown)}")
        values = dict(fields)
        values.setdefault("updated_at", time.time())
        await self.db.portals.update_one(
            {"workspace_id": workspace_id, "conversation_id": conversation_id}, {"$set": values}
        )

    async def count_portals(self, workspace_id: str, state: str | None = None) -> int:
        query: dict[str, Any] = {"workspace_id": workspace_id}
        if state is not None:
            query["state"] = state
        return int(await self.db.portals.count_documents(query))

    async def open_channels_by_team(self) -> dict[str, int]:
        # implies open_channels' filter (same terms), so the planner may use that index
        match = {"state": "open", "channel_id": _STRING, "thread_id": None, "team_id": _STRING}
        pipeline = [{"$match": match}, {"$group": {"_id": "$team_id", "n": {"$sum": 1}}}]
        return {doc["_id"]: int(doc["n"]) async for doc in self.db.portals.aggregate(pipeline)}

    # message links -------------------------------------------------------------------
    async def add_message_link(self, link: MessageLink) -> bool:
        doc = asdict(link)
        doc["created_at"] = link.created_at or time.time()
        try:
            await self.db.message_links.insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    # Lookups repeat the partial index's filter ($type string) so the planner can use it.
    async def get_link_by_neeto_id(self, workspace_id: str, neeto_message_id: str) -> MessageLink | None:
        doc = await self.db.message_links.find_one(
            {"workspace_id": workspace_id, "neeto_message_id": {"$eq": neeto_message_id, **_STRING}}
        )
        return _load(MessageLink, doc)

    async def get_link_by_activity_id(self, workspace_id: str, teams_activity_id: str) -> MessageLink | None:
        doc = await self.db.message_links.find_one(
            {"workspace_id": workspace_id, "teams_activity_id": {"$eq": teams_activity_id, **_STRING}}
        )
        return _load(MessageLink, doc)

    async def complete_message_link(
        self,
        workspace_id: str,
        *,
        neeto_message_id: str | None = None,
        teams_activity_id: str | None = None,
    ) -> None:
        if neeto_message_id is None or teams_activity_id is None:
            return  # nothing to fill in
        try:
            await self.db.message_links.update_one(
                {
                    "workspace_id": workspace_id,
                    "neeto_message_id": {"$eq": neeto_message_id, **_STRING},
                    "direction": "to_teams",
                    "teams_activity_id": None,
                },
                {"$set": {"teams_activity_id": teams_activity_id}},
            )
            await self.db.message_links.update_one(
                {
                    "workspace_id": workspace_id,
                    "teams_activity_id": {"$eq": teams_activity_id, **_STRING},
                    "direction": "to_neetochat",
                    "neeto_message_id": None,
                },
                {"$set": {"neeto_message_id": neeto_message_id}},
            )
        except DuplicateKeyError:
            # the other id is already linked to a different message: the unique index
            # keeps the first link, and this one stays incomplete.
            pass

    async def drop_intent(self, workspace_id: str, neeto_message_id: str) -> bool:
        result = await self.db.message_links.delete_one(
            {
                "workspace_id": workspace_id,
                "neeto_message_id": {"$eq": neeto_message_id, **_STRING},
                "teams_activity_id": None,
                "direction": "to_teams",
            }
        )
        return result.deleted_count > 0

    async def forget_channel_links(self, workspace_id: str, conversation_id: str, channel_id: str) -> int:
        result = await self.db.message_links.delete_many(
            {"workspace_id": workspace_id, "conversation_id": conversation_id, "channel_id": channel_id}
        )
        return result.deleted_count

    # neetoChat teams -------------------------------------------------------------------
    async def remember_neeto_team(self, workspace_id: str, team_id: str, name: str) -> None:
        await _upsert(self.db.neeto_teams, {"workspace_id": workspace_id, "team_id": team_id}, {"name": name})

    async def neeto_teams(self, workspace_id: str) -> dict[str, str]:
        return {doc["team_id"]: doc["name"] async for doc in self.db.neeto_teams.find({"workspace_id": workspace_id})}

    # identity overrides -----------------------------------------------------------------
    async def set_identity_override(
        self, workspace_id: str, aad_object_id: str, agent_id: str | None, teams_name: str = "", teams_email: str = ""
    ) -> None:
        await _upsert(
            self.db.identity_overrides,
            {"workspace_id": workspace_id, "aad_object_id": aad_object_id},
            {"agent_id": agent_id, "teams_name": teams_name, "teams_email": teams_email, "updated_at": time.time()},
        )

    async def delete_identity_override(self, workspace_id: str, aad_object_id: str) -> bool:
        result = await self.db.identity_overrides.delete_one(
            {"workspace_id": workspace_id, "aad_object_id": aad_object_id}
        )
        return result.deleted_count > 0

    async def identity_override(self, workspace_id: str, aad_object_id: str) -> IdentityOverride | None:
        doc = await self.db.identity_overrides.find_one({"workspace_id": workspace_id, "aad_object_id": aad_object_id})
        return _load(IdentityOverride, doc)

    async def identity_overrides(self, workspace_id: str) -> list[IdentityOverride]:
        cursor = self.db.identity_overrides.find({"workspace_id": workspace_id}).sort(
            [("teams_name", ASCENDING), ("aad_object_id", ASCENDING)]
        )
        return [_load(IdentityOverride, doc) async for doc in cursor]

    # jobs ----------------------------------------------------------------------------
    async def _next_seq(self) -> int:
        doc = await self.db.counters.find_one_and_update(
            {"_id": "jobs"}, {"$inc": {"value": 1}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        return int(doc["value"])

    @staticmethod
    def _job(doc: dict[str, Any] | None) -> Job | None:
        return _load(Job, doc, "seq")

    async def enqueue(self, job: Job) -> bool:
        doc = asdict(job)
        del doc["seq"]
        doc.update(status="pending", lease_owner=None, lease_until=0.0, finished_at=None)
        doc["created_at"] = job.created_at or time.time()
        doc["_id"] = await self._next_seq()  # a duplicate leaves a gap in seq; harmless
        try:
            await self.db.jobs.insert_one(doc)
        except DuplicateKeyError:
            return False
        job.seq = doc["_id"]
        return True

    async def claim_jobs(self, owner: str, now: float, lease_seconds: float, limit: int) -> list[Job]:
        """Heads of partitions, then a guarded ``find_one_and_update`` per head.

        1. The head (smallest pending seq) of every partition with pending work: a
           ``$sort`` + ``$group``/``$first`` over the (status, partition, _id) index,
           which MongoDB runs as a DISTINCT_SCAN (one index probe per partition).
        2. Of those, the due ones in seq order (``_id $in``).
        3. Drop partitions with any pending job under a live lease (anyone's).
        4. Lease each survivor with a ``find_one_and_update`` whose filter repeats the
           conditions (pending, due, lease free or expired): a racing process that
           got there first makes the filter miss, so only one of them wins.
        """
        if limit <= 0:
            return []
        heads = [
            doc["seq"]
            async for doc in self.db.jobs.aggregate(
                [
                    {"$match": {"status": "pending"}},
                    {"$sort": {"status": 1, "partition": 1, "_id": 1}},
                    {"$group": {"_id": "$partition", "seq": {"$first": "$_id"}}},
                ]
            )
        ]
        if not heads:
            return []
        due = [
            doc
            async for doc in self.db.jobs.find(
                {
                    "_id": {"$in": heads},
                    "status": "pending",
                    "next_attempt_at": {"$lte": now},
                    "lease_until": {"$lte": now},
                },
                {"_id": 1, "partition": 1},
            ).sort("_id", ASCENDING)
        ]
        if not due:
            return []
        # heads only: a leased non-head exists only if enqueue raced with a claim (seq
        # taken from the counter before the insert landed); never work such a partition
        # twice at once.
        leased = {
            doc["partition"]
            async for doc in self.db.jobs.find(
                {"status": "pending", "partition": {"$in": [d["partition"] for d in due]}, "lease_until": {"$gt": now}},
                {"partition": 1},
            )
        }
        claimed: list[Job] = []
        for doc in due:
            if len(claimed) >= limit:
                break
            if doc["partition"] in leased:
                continue
            got = await self.db.jobs.find_one_and_update(
                {
                    "_id": doc["_id"],
                    "status": "pending",
                    "next_attempt_at": {"$lte": now},
                    "$or": [{"lease_owner": None}, {"lease_until": {"$lte": now}}],
                },
                {"$set": {"lease_owner": owner, "lease_until": now + lease_seconds}},
                return_document=ReturnDocument.AFTER,
            )
            if got is not None:
                claimed.append(self._job(got))
        return claimed

    async def finish_job(self, seq: int, owner: str, status: str, error: str | None = None) -> bool:
        if status not in ("done", "dead"):
            raise ValueError(f"a job finishes as done or dead, not {status!r}")
        result = await self.db.jobs.update_one(
            {"_id": seq, "status": "pending", "lease_owner": owner},
            {
                "$set": {
                    "status": status,
                    "finished_at": time.time(),
                    "last_error": error,
                    "lease_owner": None,
                    "lease_until": 0.0,
                }
            },
        )
        return result.modified_count > 0

    async def retry_job(
        self, seq: int, owner: str, next_attempt_at: float, error: str, *, count_attempt: bool = True
    ) -> bool:
        result = await self.db.jobs.update_one(
            {"_id": seq, "status": "pending", "lease_owner": owner},
            {
                "$inc": {"attempts": 1 if count_attempt else 0},
                "$set": {
                    "next_attempt_at": next_attempt_at,
                    "last_error": error,
                    "lease_owner": None,
                    "lease_until": 0.0,
                },
            },
        )
        return result.modified_count > 0

    async def renew_leases(self, owner: str, seqs: list[int], lease_until: float) -> list[int]:
        if not seqs:
            return []
        held = {"_id": {"$in": seqs}, "status": "pending", "lease_owner": owner}
        await self.db.jobs.update_many(held, {"$set": {"lease_until": lease_until}})
        return [doc["_id"] async for doc in self.db.jobs.find(held, {"_id": 1})]

    async def lease_held(self, seq: int, owner: str, now: float) -> bool:
        doc = await self.db.jobs.find_one(
            {"_id": seq, "status": "pending", "lease_owner": owner, "lease_until": {"$gt": now}}, {"_id": 1}
        )
        return doc is not None

    async def beat_instance(self, owner: str, now: float) -> None:
        await self.db.instances.update_one({"_id": owner}, {"$set": {"seen_at": now}}, upsert=True)

    async def live_instances(self, since: float) -> int:
        return int(await self.db.instances.count_documents({"seen_at": {"$gte": since}}))

    async def release_leases(self, owner_prefix: str) -> int:
        result = await self.db.jobs.update_many(
            {"status": "pending", "lease_owner": {"$regex": "^" + re.escape(owner_prefix)}},
            {"$set": {"lease_owner": None, "lease_until": 0.0}},
        )
        return result.modified_count

    async def job_counts(self, workspace_id: str | None = None) -> JobCounts:
        # Each status counted on its own index range ((workspace_id, status) of ``workspace``;
        # for all workspaces, (status) of ``due`` or ``partition_seq``), the oldest pending job
        # read off ``pending_age``: done jobs are never read.
        match: dict[str, Any] = {} if workspace_id is None else {"workspace_id": workspace_id}
        pending, dead, oldest = await asyncio.gather(
            self.db.jobs.count_documents({**match, "status": "pending"}),
            self.db.jobs.count_documents({**match, "status": "dead"}),
            self.db.jobs.find_one({**match, "status": "pending"}, {"created_at": 1}, sort=[("created_at", ASCENDING)]),
        )
        return JobCounts(
            pending=int(pending),
            dead=int(dead),
            oldest_pending_at=None if oldest is None else float(oldest["created_at"]),
        )

    async def requeue_dead_jobs(
        self, workspace_id: str, seqs: list[int] | None = None, error_prefix: str | None = None
    ) -> int:
        query: dict[str, Any] = {"workspace_id": workspace_id, "status": "dead"}
        if seqs is not None:
            query["_id"] = {"$in": seqs}
        if error_prefix is not None:
            query["last_error"] = {"$regex": "^" + re.escape(error_prefix)}
        result = await self.db.jobs.update_many(
            query,
            {
                "$set": {
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": 0.0,
                    "finished_at": None,
                    "lease_owner": None,
                    "lease_until": 0.0,
                }
            },
        )
        return result.modified_count

    async def list_dead_jobs(self, workspace_id: str, limit: int = 100) -> list[Job]:
        cursor = (
            self.db.jobs.find({"workspace_id": workspace_id, "status": "dead"})
            .sort([("finished_at", DESCENDING), ("_id", DESCENDING)])
            .limit(limit)
        )
        return [self._job(doc) async for doc in cursor]
