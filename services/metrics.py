"""Prometheus metrics (``GET /metrics``): what an operator watches.

Counters and histograms are bumped where things happen; the queue gauges and the channel
counts are read from the store when Prometheus scrapes, so several bridge instances report
the same truth.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from services.errors import RemoteError
from services.store.base import Store

# Remote calls here take from a millisecond (a local stand-in) to tens of seconds (a slow
# Graph page, a large upload).
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._webhook_counters: dict[tuple[str, str], Any] = {}
        self.webhooks = Counter(
            "bridge_webhooks_total",
            "neetoChat webhooks received, by outcome (stored, duplicate, rejected) and rejection reason",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.jobs = Counter(
            "bridge_jobs_total",
            "Deliveries (jobs) run, by kind and outcome (ok, retried, throttled, dead)",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.remote_calls = Histogram(
            "bridge_remote_call_seconds",
            "Calls to Teams (Bot Connector), Graph and neetoChat, by operation and outcome (ok or HTTP status)",
            ["service", "operation", "outcome"],
            buckets=CALL_BUCKETS,
            registry=self.registry,
        )
        self.healed = Counter(
            "bridge_reconcile_healed_total",
            "Messages reconcile found missing on one side and delivered, by direction (to_teams, to_neetochat)",
            ["direction"],
            registry=self.registry,
        )
        self.sharing = Gauge(
            "bridge_rate_limit_share",
            "Bridge instances sharing each rate limit (this instance uses 1/n of every limit)",
            registry=self.registry,
        )
        self.pending = Gauge("bridge_jobs_pending", "Jobs waiting to run", registry=self.registry)
        self.dead = Gauge("bridge_jobs_dead", "Dead letters (failed for good)", registry=self.registry)
        self.oldest_age = Gauge(
            "bridge_jobs_oldest_pending_age_seconds", "Age of the oldest waiting job", registry=self.registry
        )
        self.channels = Gauge(
            "bridge_open_channels",
            "Open conversation channels per team (Teams allows 1,000, deleted ones counting for 30 days)",
            ["team"],
            registry=self.registry,
        )

    def webhook(self, outcome: str, reason: str = "") -> None:
        counter = self._webhook_counters.get((outcome, reason))
        if counter is None:  # prometheus_client's labels() lookup costs more than the count
            counter = self._webhook_counters[(outcome, reason)] = self.webhooks.labels(outcome=outcome, reason=reason)
        counter.inc()

    @contextlib.asynccontextmanager
    async def call(self, service: str, operation: str) -> AsyncIterator[None]:
        """Time one remote call; its outcome is "ok", the HTTP status, or "error"."""
        start = time.perf_counter()
        outcome = "ok"
        try:
            yield
        except RemoteError as exc:
            outcome = str(exc.status or "error")
            raise
        except BaseException:
            outcome = "error"
            raise
        finally:
            self.remote_calls.labels(service, operation, outcome).observe(time.perf_counter() - start)

    async def handler(self, request: web.Request, store: Store) -> web.Response:
        counts = await store.job_counts()
        self.pending.set(counts.pending)
        self.dead.set(counts.dead)
        self.oldest_age.set(time.time() - counts.oldest_pending_at if counts.oldest_pending_at else 0)
        self.channels.clear()
        for team, count in (await store.open_channels_by_team()).items():
            self.channels.labels(team=team).set(count)
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
