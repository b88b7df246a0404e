"""Prometheus metrics (``GET /metrics``): what an operator watches.

Counters and histograms are bumped where things happen; the queue gauges and the channel
counts are read from the store when Prometheus scrapes, so several bridge instances report
the same truth.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from services.errors import RemoteError
from services.store.base import Store

# Remote calls here take from a millisecond (a local stand-in) to tens of seconds (a slow
# Graph page, a large upload).
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _WebhookCounts(Collector):
    """``bridge_webhooks_total`` from the counts ``Metrics.webhook`` keeps."""

    def __init__(self, counts: collections.Counter[tuple[str, str]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "bridge_webhooks",
            "neetoChat webhooks received, by outcome (stored, duplicate, rejected) and rejection reason",
            labels=["outcome", "reason"],
        )
        for (outcome, reason), count in list(self._counts.items()):
            family.add_metric([outcome, reason], count)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # (outcome, reason) → webhooks: plain ints, published when Prometheus scrapes
        # (``_WebhookCounts``). A webhook is the bridge's cheapest request, and a
        # prometheus_client counter's lock and checks were a measurable part of it.
        self.webhooks: collections.Counter[tuple[str, str]] = collections.Counter()
        self.registry.register(_WebhookCounts(self.webhooks))
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
        self.webhooks[(outcome, reason)] += 1

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
