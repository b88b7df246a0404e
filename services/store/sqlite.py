"""The embedded store: one SQLite file (WAL) under ``DATA_DIR``, through aiosqlite.

Several bridge processes may share the file: every read-then-write runs inside
``BEGIN IMMEDIATE`` (the write lock is taken up front, so two processes never both read
the same free job), and ``busy_timeout`` makes a process wait for the lock instead of
failing. Within one process a single connection is shared, so an ``asyncio.Lock``
keeps one coroutine's transaction from swallowing another coroutine's statements.

Deduplication is done by unique indexes (``INSERT ... ON CONFLICT DO NOTHING`` or a
caught ``IntegrityError``), never by reading first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from dataclasses import fields as dc_fields
from typing import Any

import aiosqlite
import orjson

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

# Numbered migrations: (number, statements). Applied in order, each inside the one
# transaction taken at open(); the numbers applied are recorded in ``schema_version``.
# Never edit a released migration: append a new one.
# The bodies of the triggers that keep queue_heads (migration 10). A job joining the queue
# (stored, or a dead one replayed) may be its partition's new head; a job leaving it
# (finished, or deleted) hands the head to the next pending job of its partition, found by
# walking jobs_pending in seq order from it, no further than the partition's last seq; the
# row goes when nothing of the partition is pending. A partition belongs to one workspace
# (services/inbox.py).
_JOIN_QUEUE = """
    INSERT INTO queue_heads (workspace_id, partition, head_seq, tail_seq, pending)
    VALUES (NEW.workspace_id, NEW.partition, NEW.seq, NEW.seq, 1)
    ON CONFLICT (workspace_id, partition) DO UPDATE SET
        head_seq = MIN(head_seq, excluded.head_seq), tail_seq = MAX(tail_seq, excluded.tail_seq), pending = pending + 1;
"""
_LEAVE_QUEUE = """
    UPDATE queue_heads SET
        pending = pending - 1,
        head_seq = CASE WHEN head_seq != OLD.seq THEN head_seq ELSE COALESCE(
            (SELECT seq FROM jobs INDEXED BY jobs_pending
             WHERE status = 'pending' AND seq > OLD.seq AND seq <= queue_heads.tail_seq AND partition = OLD.partition
             ORDER BY seq LIMIT 1), head_seq) END
    WHERE workspace_id = OLD.workspace_id AND partition = OLD.partition;
    DELETE FROM queue_heads WHERE workspace_id = OLD.workspace_id AND partition = OLD.partition AND pending <= 0;
"""

MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE workspaces (
                id TEXT PRIMARY KEY,
                base_url TEXT NOT NULL,
                api_key_enc TEXT NOT NULL,
                webhook_secret_enc TEXT NOT NULL,
                name TEXT NOT NULL DEFAULT '',
                app_url TEXT NOT NULL DEFAULT '',
                tenant_id TEXT,
                team_id TEXT,
                aad_group_id TEXT,
                notification_channel_id TEXT,
                update_type TEXT NOT NULL DEFAULT 'new_conversations',
                authorizing_user TEXT,
                created_at REAL NOT NULL DEFAULT 0,
                updated_at REAL NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX workspaces_team ON workspaces(team_id) WHERE team_id IS NOT NULL",
            """CREATE TABLE installations (
                team_id TEXT PRIMARY KEY,
                aad_group_id TEXT,
                tenant_id TEXT,
                service_url TEXT NOT NULL,
                general_channel_id TEXT NOT NULL,
                name TEXT NOT NULL DEFAULT '',
                installed INTEGER NOT NULL DEFAULT 1,
                updated_at REAL NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX installations_group ON installations(aad_group_id) WHERE aad_group_id IS NOT NULL",
            """CREATE TABLE portals (
                workspace_id TEXT NOT NULL,
                conversation_id TEXT NOT NULL,
                number INTEGER NOT NULL,
                state TEXT NOT NULL DEFAULT 'pending',
                team_id TEXT,
                channel_id TEXT,
                channel_name TEXT,
                channel_url TEXT,
                conversation_reference TEXT,
                notice_activity_id TEXT,
                intro_activity_id TEXT,
                backfilled INTEGER NOT NULL DEFAULT 0,
                created_at REAL NOT NULL DEFAULT 0,
                updated_at REAL NOT NULL DEFAULT 0,
                PRIMARY KEY (workspace_id, conversation_id)
            )""",
            "CREATE INDEX portals_channel ON portals(channel_id) WHERE channel_id IS NOT NULL",
            "CREATE INDEX portals_state ON portals(workspace_id, state)",
            """CREATE TABLE message_links (
                id INTEGER PRIMARY KEY,
                workspace_id TEXT NOT NULL,
                conversation_id TEXT NOT NULL,
                neeto_message_id TEXT,
                teams_activity_id TEXT,
                direction TEXT NOT NULL,
                created_at REAL NOT NULL DEFAULT 0
            )""",
            """CREATE UNIQUE INDEX message_links_neeto ON message_links(workspace_id, neeto_message_id)
                WHERE neeto_message_id IS NOT NULL""",
            """CREATE UNIQUE INDEX message_links_activity ON message_links(workspace_id, teams_activity_id)
                WHERE teams_activity_id IS NOT NULL""",
            "CREATE INDEX message_links_conversation ON message_links(workspace_id, conversation_id)",
            """CREATE TABLE jobs (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                kind TEXT NOT NULL,
                workspace_id TEXT NOT NULL,
                partition TEXT NOT NULL,
                dedupe_key TEXT NOT NULL,
                payload TEXT NOT NULL,
                status TEXT NOT NULL DEFAULT 'pending',
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt_at REAL NOT NULL DEFAULT 0,
                lease_owner TEXT,
                lease_until REAL NOT NULL DEFAULT 0,
                last_error TEXT,
                created_at REAL NOT NULL DEFAULT 0,
                finished_at REAL
            )""",
            "CREATE UNIQUE INDEX jobs_dedupe ON jobs(dedupe_key)",
            # The claim query's indexes. Partial on status='pending', so they hold only the
            # (few) unfinished jobs however many done ones accumulate.
            # scan in seq order, due-ness read from the index:
            "CREATE INDEX jobs_pending_seq ON jobs(seq, next_attempt_at) WHERE status = 'pending'",
            # "is there an earlier pending job in my partition?":
            "CREATE INDEX jobs_pending_partition ON jobs(partition, seq) WHERE status = 'pending'",
            # "is a job of my partition under a live lease?":
            "CREATE INDEX jobs_pending_lease ON jobs(partition, lease_until) WHERE status = 'pending'",
            # counts, dead-job listing, workspace deletion:
            "CREATE INDEX jobs_workspace ON jobs(workspace_id, status, finished_at)",
        ],
    ),
    (2, ["ALTER TABLE portals ADD COLUMN first_message TEXT"]),
    (
        3,
        [
            "ALTER TABLE portals ADD COLUMN thread_id TEXT",
            "ALTER TABLE message_links ADD COLUMN channel_id TEXT",
            "CREATE TABLE instances (owner TEXT PRIMARY KEY, seen_at REAL NOT NULL)",
        ],
    ),
    (
        4,
        [
            # What /metrics and the operator status count, and nothing else: partial, so a
            # scrape costs what is pending, dead or open, never the done jobs and closed
            # portals that pile up. A query uses them only if its WHERE implies theirs, so
            # job_counts and open_channels_by_team repeat these terms. ``status`` is a
            # column too so that the counts are read from the index alone.
            """CREATE INDEX jobs_not_done ON jobs(status, workspace_id, created_at)
                WHERE status = 'pending' OR status = 'dead'""",
            """CREATE INDEX portals_open_channels ON portals(team_id)
                WHERE state = 'open' AND channel_id IS NOT NULL AND thread_id IS NULL AND team_id IS NOT NULL""",
            # Claims find partition heads through jobs_pending_partition now (_CLAIMABLE).
            "DROP INDEX IF EXISTS jobs_pending_seq",
        ],
    ),
    (
        5,
        [
            """CREATE TABLE neeto_teams (
                workspace_id TEXT NOT NULL,
                team_id TEXT NOT NULL,
                name TEXT NOT NULL,
                PRIMARY KEY (workspace_id, team_id)
            )""",
        ],
    ),
    (
        6,
        [
            "ALTER TABLE workspaces ADD COLUMN transcript_on_close INTEGER NOT NULL DEFAULT 1",
            "ALTER TABLE portals ADD COLUMN reopened INTEGER NOT NULL DEFAULT 0",
        ],
    ),
    (
        7,
        [
            # who a Teams user writes as in neetoChat (agent_id NULL: the authorizing user)
            """CREATE TABLE identity_overrides (
                workspace_id TEXT NOT NULL,
                aad_object_id TEXT NOT NULL,
                agent_id TEXT,
                teams_name TEXT NOT NULL DEFAULT '',
                teams_email TEXT NOT NULL DEFAULT '',
                updated_at REAL NOT NULL DEFAULT 0,
                PRIMARY KEY (workspace_id, aad_object_id)
            )""",
        ],
    ),
    (8, ["ALTER TABLE workspaces ADD COLUMN routes TEXT"]),  # routing rules (services/routing.py), JSON
    (
        9,
        [
            # A stored event or activity writes the job row and two index entries (its
            # dedupe key, its place in the partition) and nothing else: every other jobs
            # index holds only rows that some later step puts there. Four secondary
            # indexes written per insert cost the webhook flood 8 µs a row of SQLite's
            # thread (bench/ingest.py), more than the rest of the insert.
            "DROP INDEX IF EXISTS jobs_pending_partition",
            "DROP INDEX IF EXISTS jobs_pending_lease",
            "DROP INDEX IF EXISTS jobs_workspace",
            "DROP INDEX IF EXISTS jobs_not_done",
            # claims (a partition's head), and the pending counts read from it alone:
            # (status is a column too, so that SQLite reads the counts from the index alone)
            """CREATE INDEX jobs_pending_partition ON jobs(partition, seq, workspace_id, created_at, status)
                WHERE status = 'pending'""",
            # "is a job of my partition under a live lease?": only claimed jobs are in it
            """CREATE INDEX jobs_leased ON jobs(partition, lease_until)
                WHERE status = 'pending' AND lease_owner IS NOT NULL""",
            # dead letters: counts, listing (newest first), replay
            "CREATE INDEX jobs_dead ON jobs(workspace_id, finished_at, status) WHERE status = 'dead'",
        ],
    ),
    (
        10,
        [
            # Each partition with pending jobs has a row in queue_heads, kept by triggers on
            # jobs: its head (the earliest pending job), an upper bound of its pending seqs,
            # and how many are pending. A claim reads the heads from this small table, and a
            # stored job's index entries are appended at the end of two indexes (dedupe key
            # and jobs_pending, in seq order). The index in partition order it replaces got
            # an entry in the middle of each partition's range: one more page written per
            # conversation in each group commit, 3 µs a row of SQLite's thread in a flood
            # over 10 conversations and 6 µs over 100 (docs/performance.md).
            """CREATE TABLE queue_heads (
                workspace_id TEXT NOT NULL,
                partition TEXT NOT NULL,
                head_seq INTEGER NOT NULL,
                tail_seq INTEGER NOT NULL,
                pending INTEGER NOT NULL,
                PRIMARY KEY (workspace_id, partition)
            ) WITHOUT ROWID""",
            """INSERT INTO queue_heads (workspace_id, partition, head_seq, tail_seq, pending)
               SELECT workspace_id, partition, MIN(seq), MAX(seq), COUNT(*) FROM jobs
               WHERE status = 'pending' GROUP BY workspace_id, partition""",
            "CREATE INDEX jobs_pending ON jobs(seq, partition) WHERE status = 'pending'",
            "DROP INDEX jobs_pending_partition",
            f"""CREATE TRIGGER jobs_queue_insert AFTER INSERT ON jobs
                WHEN NEW.status = 'pending' BEGIN {_JOIN_QUEUE} END""",
            f"""CREATE TRIGGER jobs_queue_return AFTER UPDATE OF status ON jobs
                WHEN OLD.status != 'pending' AND NEW.status = 'pending' BEGIN {_JOIN_QUEUE} END""",
            f"""CREATE TRIGGER jobs_queue_finish AFTER UPDATE OF status ON jobs
                WHEN OLD.status = 'pending' AND NEW.status != 'pending' BEGIN {_LEAVE_QUEUE} END""",
            f"""CREATE TRIGGER jobs_queue_delete AFTER DELETE ON jobs
                WHEN OLD.status = 'pending' BEGIN {_LEAVE_QUEUE} END""",
        ],
    ),
]

_JSON_FIELDS = {"authorizing_user", "conversation_reference", "payload", "routes"}
_BOOL_FIELDS = {"installed", "backfilled", "transcript_on_close", "reopened"}
_PORTAL_FIELDS = {f.name for f in dc_fields(Portal)}


def _encode(name: str, value: Any) -> Any:
    if name in _JSON_FIELDS:
        return None if value is None else orjson.dumps(value).decode()
    if name in _BOOL_FIELDS:
        return int(bool(value))
    return value


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dc_fields(cls))


def _row_values(obj: Any) -> dict[str, Any]:
    return {name: _encode(name, getattr(obj, name)) for name in _field_names(type(obj))}


def _from_row(cls: type, row: sqlite3.Row | None) -> Any:
    if row is None:
        return None
    kwargs: dict[str, Any] = {}
    for f in dc_fields(cls):
        value = row[f.name]
        if f.name in _JSON_FIELDS:
            value = None if value is None else orjson.loads(value)
        elif f.name in _BOOL_FIELDS:
            value = bool(value)
        kwargs[f.name] = value
    return cls(**kwargs)


@functools.lru_cache(maxsize=64)
def _enqueue_sql(rows: int) -> str:
    """``SqliteStore._insert_jobs``' statement for a batch of ``rows`` jobs (batches have a
    few sizes: building the text per request was a measurable part of a webhook)."""
    columns = "kind, workspace_id, partition, dedupe_key, payload, attempts, next_attempt_at, last_error, created_at"
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    return f"INSERT INTO jobs ({columns}) VALUES {values} ON CONFLICT(dedupe_key) DO NOTHING RETURNING seq, dedupe_key"


def _insert_sql(table: str, columns: list[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"


# Jobs written by one statement at most: 14 columns each stays far below SQLite's limit of
# 32,766 bound parameters.
ENQUEUE_BATCH = 500


class SqliteStore(Store):
    def __init__(self, path: str, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._enqueues: list[tuple[Job, asyncio.Future[bool]]] = []

    # lifecycle -----------------------------------------------------------------------
    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("SqliteStore is not open")
        return self._db

    async def open(self) -> None:
        if self._db is not None:
            return
        # isolation_level=None: autocommit; transactions are explicit (BEGIN IMMEDIATE).
        db = await aiosqlite.connect(self.path, isolation_level=None)
        db.row_factory = sqlite3.Row
        await db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
        self._db = db
        try:
            await self._migrate()
        except BaseException:
            self._db = None
            await db.close()
            raise

    async def _migrate(self) -> None:
        async with self._transaction() as db:
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            rows = await db.execute_fetchall("SELECT version FROM schema_version")
            applied = {r[0] for r in rows}
            for number, statements in sorted(MIGRATIONS):
                if number in applied:
                    continue
                for statement in statements:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (number, time.time())
                )

    async def schema_version(self) -> int:
        rows = await self.db.execute_fetchall("SELECT MAX(version) FROM schema_version")
        return int(list(rows)[0][0] or 0)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    async def ping(self) -> None:
        await self.db.execute_fetchall("SELECT 1")

    # helpers -------------------------------------------------------------------------
    class _Tx:
        def __init__(self, store: SqliteStore) -> None:
            self.store = store

        async def __aenter__(self) -> aiosqlite.Connection:
            await self.store._lock.acquire()
            try:
                await self.store.db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.store._lock.release()
                raise
            return self.store.db

        async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            db = self.store.db
            try:
                if exc_type is None:
                    try:
                        await db.execute("COMMIT")
                    except BaseException:
                        await db.execute("ROLLBACK")
                        raise
                else:
                    await db.execute("ROLLBACK")
            finally:
                self.store._lock.release()

    def _transaction(self) -> SqliteStore._Tx:
        return SqliteStore._Tx(self)

    # Every aiosqlite call is a trip to SQLite's thread and back (a queue, a future, a wakeup
    # of the event loop): about 20 µs of CPU, more than most of these statements take. A
    # delivery makes a dozen, on the core the webhooks are acknowledged on, so the helpers
    # make one trip per statement: no separate fetch, no separate close.

    async def _write(self, sql: str, params: Any = ()) -> int:
        """One autocommit statement; returns the number of rows changed. The statement has
        run to its end when ``execute`` returns, so its cursor holds nothing to close."""
        async with self._lock:
            return (await self.db.execute(sql, params)).rowcount

    async def _one(self, sql: str, params: Any = ()) -> sqlite3.Row | None:
        """The first row of a lookup by key (all its rows are read: keep them few)."""
        rows = await self.db.execute_fetchall(sql, params)
        return next(iter(rows), None)

    async def _all(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        return list(await self.db.execute_fetchall(sql, params))

    # workspaces ----------------------------------------------------------------------
    async def put_workspace(self, ws: Workspace) -> None:
        now = time.time()
        values = _row_values(ws)
        values["created_at"] = ws.created_at or now
        values["updated_at"] = ws.updated_at or now
        columns = list(values)
        updates = [f"{c} = excluded.{c}" for c in columns if c not in ("id", "created_at")]
        # an explicit created_at replaces the stored one; 0 keeps the original
        keep_created = "workspaces.created_at" if not ws.created_at else "excluded.created_at"
        updates.append(f"created_at = {keep_created}")
        sql = _insert_sql("workspaces", columns) + f" ON CONFLICT(id) DO UPDATE SET {', '.join(updates)}"
        await self._write(sql, values)

    async def get_workspace(self, workspace_id: str) -> Workspace | None:
        return _from_row(Workspace, await self._one("SELECT * FROM workspaces WHERE id = ?", (workspace_id,)))

    async def workspaces_linked_to(self, team_ids: list[str]) -> list[Workspace]:
        ids = [t for t in team_ids if t]
        if not ids:
            return []
        rows = await self._all(f"SELECT * FROM workspaces WHERE team_id IN ({','.join('?' * len(ids))})", ids)
        return [_from_row(Workspace, r) for r in rows]

    async def linked_workspaces(self) -> list[Workspace]:
        rows = await self._all("SELECT * FROM workspaces WHERE team_id IS NOT NULL")
        return [_from_row(Workspace, r) for r in rows]

    async def delete_workspace(self, workspace_id: str) -> bool:
        async with self._transaction() as db:
            cursor = await db.execute("DELETE FROM workspaces WHERE id = ?", (workspace_id,))
            existed = cursor.rowcount > 0
            await cursor.close()
            await db.execute("DELETE FROM portals WHERE workspace_id = ?", (workspace_id,))
            await db.execute("DELETE FROM message_links WHERE workspace_id = ?", (workspace_id,))
            await db.execute("DELETE FROM neeto_teams WHERE workspace_id = ?", (workspace_id,))
            await db.execute("DELETE FROM identity_overrides WHERE workspace_id = ?", (workspace_id,))
            # its queue first, so that the triggers have no heads to move on
            await db.execute("DELETE FROM queue_heads WHERE workspace_id = ?", (workspace_id,))
            await db.execute(
                "DELETE FROM jobs INDEXED BY jobs_pending WHERE status = 'pending' AND workspace_id = ?",
                (workspace_id,),
            )
        return existed

    # installations -------------------------------------------------------------------
    async def put_installation(self, inst: Installation) -> None:
        values = _row_values(inst)
        values["updated_at"] = inst.updated_at or time.time()
        columns = list(values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != "team_id")
        sql = _insert_sql("installations", columns) + f" ON CONFLICT(team_id) DO UPDATE SET {updates}"
        await self._write(sql, values)

    async def get_installation(self, team_id_or_group_id: str) -> Installation | None:
        key = team_id_or_group_id
        row = await self._one("SELECT * FROM installations WHERE team_id = ?", (key,))
        if row is None:
            row = await self._one(
                "SELECT * FROM installations WHERE aad_group_id = ? ORDER BY updated_at DESC LIMIT 1", (key,)
            )
        return _from_row(Installation, row)

    async def installations(self, tenant_id: str) -> list[Installation]:
        rows = await self._all("SELECT * FROM installations WHERE installed = 1 AND tenant_id = ?", (tenant_id,))
        return sorted((_from_row(Installation, r) for r in rows), key=lambda i: (i.name.casefold(), i.team_id))

    # portals -------------------------------------------------------------------------
    async def create_portal(self, portal: Portal) -> bool:
        now = time.time()
        values = _row_values(portal)
        values["created_at"] = portal.created_at or now
        values["updated_at"] = portal.updated_at or now
        sql = _insert_sql("portals", list(values)) + " ON CONFLICT(workspace_id, conversation_id) DO NOTHING"
        return await self._write(sql, values) > 0

    async def get_portal(self, workspace_id: str, conversation_id: str) -> Portal | None:
        row = await self._one(
            "SELECT * FROM portals WHERE workspace_id = ? AND conversation_id = ?", (workspace_id, conversation_id)
        )
        return _from_row(Portal, row)

    async def open_portals(self, workspace_id: str, after: str | None, limit: int) -> list[Portal]:
        rows = await self._all(
            "SELECT * FROM portals WHERE workspace_id = ? AND state = 'open' AND conversation_id > ?"
            " ORDER BY conversation_id LIMIT ?",
            (workspace_id, after or "", limit),
        )
        return [_from_row(Portal, r) for r in rows]

    async def get_portal_by_channel(self, channel_id: str, thread_id: str | None = None) -> Portal | None:
        row = await self._one(
            """SELECT * FROM portals WHERE channel_id = ? AND state != 'closed'
                 AND (thread_id IS NULL OR thread_id = ?)
               ORDER BY thread_id IS NULL, created_at DESC LIMIT 1""",
            (channel_id, thread_id),
        )
        return _from_row(Portal, row)

    async def update_portal(self, workspace_id: str, conversation_id: str, **fields: Any) -> None:
        unknown = set(fields) - _PORTAL_FIELDS
        if unknown:
            raise ValueError(f"unknown portal fields: {sorted(unknown)}")
        values = {name: _encode(name, value) for name, value in fields.items()}
        values.setdefault("updated_at", time.time())
        assignments = ", ".join(f"{name} = :{name}" for name in values)
        values["_ws"], values["_conv"] = workspace_id, conversation_id
        await self._write(
            f"UPDATE portals SET {assignments} WHERE workspace_id = :_ws AND conversation_id = :_conv", values
        )

    async def count_portals(self, workspace_id: str, state: str | None = None) -> int:
        if state is None:
            row = await self._one("SELECT COUNT(*) FROM portals WHERE workspace_id = ?", (workspace_id,))
        else:
            row = await self._one(
                "SELECT COUNT(*) FROM portals WHERE workspace_id = ? AND state = ?", (workspace_id, state)
            )
        assert row is not None
        return int(row[0])

    async def open_channels_by_team(self) -> dict[str, int]:
        # Exactly portals_open_channels' WHERE: a walk of that index, in team order.
        rows = await self._all(
            """SELECT team_id, COUNT(*) FROM portals
               WHERE state = 'open' AND channel_id IS NOT NULL AND thread_id IS NULL AND team_id IS NOT NULL
               GROUP BY team_id"""
        )
        return {row[0]: int(row[1]) for row in rows}

    # message links -------------------------------------------------------------------
    async def add_message_link(self, link: MessageLink) -> bool:
        values = _row_values(link)
        values["created_at"] = link.created_at or time.time()
        try:
            await self._write(_insert_sql("message_links", list(values)), values)
        except sqlite3.IntegrityError:
            return False
        return True

    async def get_link_by_neeto_id(self, workspace_id: str, neeto_message_id: str) -> MessageLink | None:
        row = await self._one(
            "SELECT * FROM message_links WHERE workspace_id = ? AND neeto_message_id = ?",
            (workspace_id, neeto_message_id),
        )
        return _from_row(MessageLink, row)

    async def get_link_by_activity_id(self, workspace_id: str, teams_activity_id: str) -> MessageLink | None:
        row = await self._one(
            "SELECT * FROM message_links WHERE workspace_id = ? AND teams_activity_id = ?",
            (workspace_id, teams_activity_id),
        )
        return _from_row(MessageLink, row)

    async def complete_message_link(
        self,
        workspace_id: str,
        *,
        neeto_message_id: str | None = None,
        teams_activity_id: str | None = None,
    ) -> None:
        if neeto_message_id is None or teams_activity_id is None:
            return  # nothing to fill in
        # Both halves in one statement (all or nothing, one trip to SQLite's thread): the
        # link of the post into Teams gets its activity id, and a link of a message written
        # in Teams with that activity id gets its neetoChat message id. An id already linked
        # to a different message fails the unique index: the first link stays, this one
        # stays incomplete.
        with contextlib.suppress(sqlite3.IntegrityError):
            await self._write(
                """UPDATE message_links
                   SET teams_activity_id = CASE direction WHEN 'to_teams' THEN :tid ELSE teams_activity_id END,
                       neeto_message_id = CASE direction WHEN 'to_neetochat' THEN :nid ELSE neeto_message_id END
                   WHERE workspace_id = :ws
                     AND ((direction = 'to_teams' AND neeto_message_id = :nid AND teams_activity_id IS NULL)
                       OR (direction = 'to_neetochat' AND teams_activity_id = :tid AND neeto_message_id IS NULL))""",
                {"ws": workspace_id, "nid": neeto_message_id, "tid": teams_activity_id},
            )

    async def drop_intent(self, workspace_id: str, neeto_message_id: str) -> bool:
        deleted = await self._write(
            """DELETE FROM message_links WHERE workspace_id = ? AND neeto_message_id = ?
               AND teams_activity_id IS NULL AND direction = 'to_teams'""",
            (workspace_id, neeto_message_id),
        )
        return deleted > 0

    async def forget_channel_links(self, workspace_id: str, conversation_id: str, channel_id: str) -> int:
        return await self._write(
            "DELETE FROM message_links WHERE workspace_id = ? AND conversation_id = ? AND channel_id = ?",
            (workspace_id, conversation_id, channel_id),
        )

    # neetoChat teams -------------------------------------------------------------------
    async def remember_neeto_team(self, workspace_id: str, team_id: str, name: str) -> None:
        await self._write(
            "INSERT INTO neeto_teams (workspace_id, team_id, name) VALUES (?, ?, ?)"
            " ON CONFLICT(workspace_id, team_id) DO UPDATE SET name = excluded.name",
            (workspace_id, team_id, name),
        )

    async def neeto_teams(self, workspace_id: str) -> dict[str, str]:
        rows = await self._all("SELECT team_id, name FROM neeto_teams WHERE workspace_id = ?", (workspace_id,))
        return {row["team_id"]: row["name"] for row in rows}

    # identity overrides -----------------------------------------------------------------
    async def set_identity_override(
        self, workspace_id: str, aad_object_id: str, agent_id: str | None, teams_name: str = "", teams_email: str = ""
    ) -> None:
        await self._write(
            """INSERT INTO identity_overrides
                 (workspace_id, aad_object_id, agent_id, teams_name, teams_email, updated_at)
               VALUES (?, ?, ?, ?, ?, ?)
               ON CONFLICT(workspace_id, aad_object_id) DO UPDATE SET agent_id = excluded.agent_id,
                 teams_name = excluded.teams_name, teams_email = excluded.teams_email,
                 updated_at = excluded.updated_at""",
            (workspace_id, aad_object_id, agent_id, teams_name, teams_email, time.time()),
        )

    async def delete_identity_override(self, workspace_id: str, aad_object_id: str) -> bool:
        deleted = await self._write(
            "DELETE FROM identity_overrides WHERE workspace_id = ? AND aad_object_id = ?", (workspace_id, aad_object_id)
        )
        return deleted > 0

    async def identity_override(self, workspace_id: str, aad_object_id: str) -> IdentityOverride | None:
        row = await self._one(
            "SELECT * FROM identity_overrides WHERE workspace_id = ? AND aad_object_id = ?",
            (workspace_id, aad_object_id),
        )
        return _from_row(IdentityOverride, row)

    async def identity_overrides(self, workspace_id: str) -> list[IdentityOverride]:
        rows = await self._all(
            "SELECT * FROM identity_overrides WHERE workspace_id = ? ORDER BY teams_name, aad_object_id",
            (workspace_id,),
        )
        return [_from_row(IdentityOverride, r) for r in rows]

    # jobs ----------------------------------------------------------------------------
    async def enqueue(self, job: Job) -> bool:
        """Insert the job unless its dedupe key is stored (False then).

        Group commit: enqueues that arrive while another is being written wait for the
        lock, and whoever gets it next writes every waiting job in one statement, so a
        burst of webhooks costs one trip to SQLite's thread (and one commit) per batch
        instead of per request. Each caller still learns about its own job."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._enqueues.append((job, done))
        async with self._lock:
            while not done.done():
                batch, self._enqueues = self._enqueues[:ENQUEUE_BATCH], self._enqueues[ENQUEUE_BATCH:]
                try:
                    await self._insert_jobs(batch)
                except BaseException as exc:
                    # The others' requests fail too (not acknowledged, so redelivered); a
                    # cancelled writer must not cancel them.
                    error = exc if isinstance(exc, Exception) else RuntimeError("the batch's write was interrupted")
                    for _, waiting in batch:
                        if not waiting.done():
                            waiting.set_exception(error)
                    raise
        return done.result()

    async def _insert_jobs(self, batch: list[tuple[Job, asyncio.Future[bool]]]) -> None:
        """One multi-row INSERT; the rows it returns are the jobs that were new (a dedupe key
        stored before, or twice in the batch, inserts nothing the second time). A new job is
        pending and unleased whatever the object says: those columns keep their defaults."""
        params: list[Any] = []
        for job, _ in batch:
            params += (
                job.kind,
                job.workspace_id,
                job.partition,
                job.dedupe_key,
                orjson.dumps(job.payload).decode(),
                job.attempts,
                job.next_attempt_at,
                job.last_error,
                job.created_at or time.time(),
            )
        inserted = {key: int(seq) for seq, key in await self.db.execute_fetchall(_enqueue_sql(len(batch)), params)}
        for job, waiting in batch:
            seq = inserted.pop(job.dedupe_key, None)
            if seq is not None:
                job.seq = seq
            if not waiting.done():
                waiting.set_result(seq is not None)

    # A job is claimable iff it is pending and due, no earlier pending job exists in its
    # partition (so it is the partition's head and at most one per partition comes
    # back), and no pending job of its partition is under a live lease (whoever holds
    # it: a partition is worked on by one owner at a time).
    #
    # The heads are read from queue_heads, one row per partition with pending work: a
    # claim costs one probe per such partition, however long the backlog behind the
    # heads (walking the pending jobs instead cost 4 ms at 10,000 pending and 22 ms at
    # 50,000, for every claim, under the store's lock).
    _CLAIMABLE = """
        SELECT j.seq FROM queue_heads AS h JOIN jobs AS j ON j.seq = h.head_seq
        WHERE j.next_attempt_at <= :now
          AND NOT EXISTS (
            SELECT 1 FROM jobs AS l INDEXED BY jobs_leased
            WHERE l.status = 'pending' AND l.lease_owner IS NOT NULL AND l.partition = h.partition
              AND l.lease_until > :now)
        ORDER BY j.seq
        LIMIT :limit
    """

    async def claim_jobs(self, owner: str, now: float, lease_seconds: float, limit: int) -> list[Job]:
        """Lease the claimable jobs in one statement (its own transaction, also against other
        processes on the file): one trip to SQLite's thread per claim, which matters because
        the job loop claims after every stored event."""
        if limit <= 0:
            return []
        async with self._lock:
            rows = await self.db.execute_fetchall(
                f"UPDATE jobs SET lease_owner = :owner, lease_until = :until WHERE seq IN ({self._CLAIMABLE}) "
                "RETURNING *",
                {"owner": owner, "until": now + lease_seconds, "now": now, "limit": limit},
            )
        return sorted((_from_row(Job, r) for r in rows), key=lambda job: job.seq)

    async def finish_job(self, seq: int, owner: str, status: str, error: str | None = None) -> bool:
        if status not in ("done", "dead"):
            raise ValueError(f"a job finishes as done or dead, not {status!r}")
        changed = await self._write(
            """UPDATE jobs SET status = ?, finished_at = ?, last_error = ?, lease_owner = NULL, lease_until = 0
               WHERE seq = ? AND status = 'pending' AND lease_owner = ?""",
            (status, time.time(), error, seq, owner),
        )
        return changed > 0

    async def retry_job(
        self, seq: int, owner: str, next_attempt_at: float, error: str, *, count_attempt: bool = True
    ) -> bool:
        changed = await self._write(
            """UPDATE jobs SET attempts = attempts + ?, next_attempt_at = ?, last_error = ?,
                              lease_owner = NULL, lease_until = 0
               WHERE seq = ? AND status = 'pending' AND lease_owner = ?""",
            (1 if count_attempt else 0, next_attempt_at, error, seq, owner),
        )
        return changed > 0

    async def renew_leases(self, owner: str, seqs: list[int], lease_until: float) -> list[int]:
        if not seqs:
            return []
        marks = ",".join("?" * len(seqs))
        async with self._transaction() as db:
            await db.execute(
                f"UPDATE jobs SET lease_until = ? WHERE status = 'pending' AND lease_owner = ? AND seq IN ({marks})",
                (lease_until, owner, *seqs),
            )
            rows = await db.execute_fetchall(
                f"SELECT seq FROM jobs WHERE status = 'pending' AND lease_owner = ? AND seq IN ({marks})",
                (owner, *seqs),
            )
        return [int(r[0]) for r in rows]

    async def lease_held(self, seq: int, owner: str, now: float) -> bool:
        row = await self._one(
            "SELECT 1 FROM jobs WHERE seq = ? AND status = 'pending' AND lease_owner = ? AND lease_until > ?",
            (seq, owner, now),
        )
        return row is not None

    async def beat_instance(self, owner: str, now: float) -> None:
        await self._write(
            "INSERT INTO instances (owner, seen_at) VALUES (?, ?) ON CONFLICT(owner) DO UPDATE SET seen_at = ?",
            (owner, now, now),
        )

    async def live_instances(self, since: float) -> int:
        row = await self._one("SELECT COUNT(*) FROM instances WHERE seen_at >= ?", (since,))
        return int(row[0]) if row else 0

    async def release_leases(self, owner_prefix: str) -> int:
        # read from jobs_leased: the claimed jobs only, not every pending one
        return await self._write(
            """UPDATE jobs INDEXED BY jobs_leased SET lease_owner = NULL, lease_until = 0
               WHERE status = 'pending' AND lease_owner IS NOT NULL AND substr(lease_owner, 1, ?) = ?""",
            (len(owner_prefix), owner_prefix),
        )

    async def job_counts(self, workspace_id: str | None = None) -> JobCounts:
        # The pending ones from queue_heads: a row per partition with pending work, whose
        # head is its oldest pending job (a partition's jobs are created in seq order). The
        # dead ones from jobs_dead. The done jobs are never read.
        heads, dead_where, params = "queue_heads", "", {}
        if workspace_id is not None:
            heads, dead_where = "queue_heads WHERE workspace_id = :ws", "AND workspace_id = :ws"
            params = {"ws": workspace_id}
        rows = await self._all(
            f"""SELECT (SELECT TOTAL(pending) FROM {heads}),
                       (SELECT MIN(j.created_at) FROM (SELECT head_seq FROM {heads}) AS h
                        JOIN jobs AS j ON j.seq = h.head_seq),
                       (SELECT COUNT(*) FROM jobs INDEXED BY jobs_dead WHERE status = 'dead' {dead_where})""",
            params,
        )
        pending, oldest, dead = rows[0]
        return JobCounts(
            pending=int(pending), dead=int(dead), oldest_pending_at=None if oldest is None else float(oldest)
        )

    async def requeue_dead_jobs(
        self, workspace_id: str, seqs: list[int] | None = None, error_prefix: str | None = None
    ) -> int:
        sql = """UPDATE jobs SET status = 'pending', attempts = 0, next_attempt_at = 0, finished_at = NULL,
                                lease_owner = NULL, lease_until = 0
                 WHERE workspace_id = ? AND status = 'dead'"""
        params: list[Any] = [workspace_id]
        if seqs is not None:
            if not seqs:
                return 0
            sql += f" AND seq IN ({','.join('?' * len(seqs))})"
            params += seqs
        if error_prefix is not None:
            sql += " AND substr(last_error, 1, ?) = ?"
            params += [len(error_prefix), error_prefix]
        return await self._write(sql, params)

    async def list_dead_jobs(self, workspace_id: str, limit: int = 100) -> list[Job]:
        rows = await self._all(
            """SELECT * FROM jobs WHERE workspace_id = ? AND status = 'dead'
               ORDER BY finished_at DESC, seq DESC LIMIT ?""",
            (workspace_id, limit),
        )
        return [_from_row(Job, r) for r in rows]
