"""Fencing: a job's effects on Teams happen only while its lease is still held.

Leases expire; an instance that stalls (a long GC pause, a frozen VM, a partitioned
network) can come back after another instance took its job over. Teams has no fencing
tokens, so the check is made on our side, right before each post: the job loop puts the
running job's lease in a context variable, and ``check_lease`` asks the store whether it
is still ours and unexpired.
"""

from __future__ import annotations

import contextvars
import time

from services.store.base import Store

# (job seq, lease owner) of the job running in this task; None outside the job loop
current_lease: contextvars.ContextVar[tuple[int, str] | None] = contextvars.ContextVar("current_lease", default=None)


class LeaseLost(Exception):
    """Another instance owns this job now: stop without touching Teams."""


async def check_lease(store: Store) -> None:
    lease = current_lease.get()
    if lease is not None and not await store.lease_held(lease[0], lease[1], time.time()):
        raise LeaseLost(f"lease on job {lease[0]} lost")
