"""Prometheus metrics (``GET /metrics``): what an operator watches.

Counters are bumped where things happen; the queue gauges are read from the store when
Prometheus scrapes, so several bridge instances report the same truth.
"""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from services.store.base import Store


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.webhooks = Counter(
            "bridge_webhooks_total", "neetoChat webhooks by outcome", ["outcome"], registry=self.registry
        )
        self.jobs = Counter(
            "bridge_jobs_total",
            "Jobs run by kind and outcome (done, retried, dead)",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.pending = Gauge("bridge_jobs_pending", "Jobs waiting to run", registry=self.registry)
        self.dead = Gauge("bridge_jobs_dead", "Dead letters (failed for good)", registry=self.registry)
        self.oldest_age = Gauge(
            "bridge_jobs_oldest_pending_age_seconds", "Age of the oldest waiting job", registry=self.registry
        )

    async def handler(self, request: web.Request, store: Store) -> web.Response:
        counts = await store.job_counts()
        self.pending.set(counts.pending)
        self.dead.set(counts.dead)
        self.oldest_age.set(time.time() - counts.oldest_pending_at if counts.oldest_pending_at else 0)
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
