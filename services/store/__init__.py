"""Persistence: the ``Store`` contract (``base``) and its SQLite and MongoDB backends."""

from __future__ import annotations

import os

from services.store.base import Installation, Job, JobCounts, MessageLink, Portal, Store, Workspace

__all__ = ["Installation", "Job", "JobCounts", "MessageLink", "Portal", "Store", "Workspace", "open_store"]


def open_store(mongodb_uri: str | None, mongodb_db: str, data_dir: str) -> Store:
    """The configured store, not yet opened (call ``await store.open()``).

    MongoDB when a URI is given, else SQLite at ``{data_dir}/bridge.sqlite3`` (the
    directory is created if missing).
    """
    if mongodb_uri:
        from services.store.mongo import MongoStore

        return MongoStore(mongodb_uri, mongodb_db)
    from services.store.sqlite import SqliteStore

    os.makedirs(data_dir, exist_ok=True)
    return SqliteStore(os.path.join(data_dir, "bridge.sqlite3"))
