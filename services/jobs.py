"""The durable job loop: claims stored work, runs it, retries it, or dead-letters it.

Webhooks and Teams activities are acknowledged as soon as they are stored as jobs; this
loop does the slow part afterwards. The store hands out at most one job per conversation
at a time (its oldest), under a lease, so one conversation's work runs in order while
different conversations run concurrently, and a second bridge process, or this one after
``kill -9``, picks up whatever a dead owner left once its lease expires.

A failed job is retried with exponential backoff and jitter, never sooner than the
remote service's ``Retry-After``; failures that cannot succeed (4xx other than
throttling), and jobs out of attempts, become dead letters with the reason, visible in the
operator status and in Teams: in the thread of a message written there, in the
notification channel for one that came from neetoChat.

Throttling is not failure: a job our own shaping holds back (``rate_limits.Throttled``) or
that Teams answered 429 with a ``Retry-After`` is put back for exactly that long without
spending an attempt, so a sustained throttle delays messages but never dead-letters them.

Several instances share one store: each beats in the store's instance table, which both
tells each instance its share of Teams' rate limits and shows operators who is running.
The heartbeat also renews the leases of running jobs; a job whose lease was lost (this
instance stalled past it and another took the job over) is cancelled at once, and
``fencing.check_lease`` stops it before any further post in the meantime.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import heapq
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from cards import notices
from dialogs.health import post_problems, show_health
from dialogs.run import run_command
from dialogs.settings import show_settings
from services import to_neetochat, to_teams
from services.context import BOT_REMOVED, KEY_REFUSED, NO_GRAPH_TOKEN, BridgeContext, NotLinked
from services.errors import RemoteError
from services.fencing import LeaseLost, current_lease
from services.graph import NO_TOKEN
from services.log_context import bind
from services.metrics import Metrics
from services.rate_limits import Throttled
from services.reconcile import reconcile_conversation
from services.routing import route_team
from services.store.base import Installation, Job, Workspace

log = logging.getLogger(__name__)

SHARE_REFRESH = 1.0  # seconds between looks at how many instances share the rate limits
# A flood: this many webhooks and activities being taken in at once. Until it passes, the
# loop keeps at most FLOOD_CONCURRENCY jobs running, so acknowledgements (which neetoChat
# and Teams time out on) get the CPU first; what they stored is delivered right after.
# One job at a time still drains about as fast as Teams accepts posts (50 a second per
# tenant; a post takes milliseconds), and the acknowledgements gained about 4 % over two.
FLOOD_INTAKE = 8
FLOOD_CONCURRENCY = 1

# Jobs from a message written in Teams → what failed, as told in that message's thread.
TEAMS_WORK = {
    "teams_message": "deliver this message to the visitor",
    "teams_close": "close the conversation",
    "teams_command": "run the command",
    "teams_edit": "change this message in neetoChat",
    "teams_delete": "delete this message in neetoChat",
    "teams_settings": "show the settings",
    "teams_health": "check the setup",
}


class _Intake:
    """``JobRunner.taking_in``: a plain context manager, one per runner, around every webhook
    and activity (0.17 µs against contextlib's generator-based 0.8 µs on this machine)."""

    def __init__(self, runner: JobRunner) -> None:
        self._runner = runner

    def __enter__(self) -> None:
        self._runner.intake += 1

    def __exit__(self, *exc: object) -> None:
        runner = self._runner
        runner.intake -= 1
        if runner.intake == FLOOD_INTAKE - 1:
            runner._wake.set()  # the flood may be over: start the jobs it held back


class JobRunner:
    def __init__(
        self,
        ctx: BridgeContext,
        metrics: Metrics,
        *,
        instance: str = "bridge",
        concurrency: int = 16,
        lease_seconds: float = 60.0,
        max_attempts: int = 12,
        base_delay: float = 1.0,
        max_delay: float = 600.0,
        poll_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ctx = ctx
        self.metrics = metrics
        # "<instance>/<boot>": leases of an earlier boot of this instance are freed at start.
        self.instance = instance
        self.owner = f"{instance}/{uuid.uuid4().hex[:12]}"
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.poll_interval = poll_interval
        self.clock = clock
        # Told the workspace of a job that succeeded after failing: an outage ended, and
        # what it made either side drop is looked for (services/reconcile.py).
        self.on_recovered: Callable[[str], None] = lambda workspace_id: None
        # A stored Teams message → the work its turn asks for (TeamsBot.replay), set by the app.
        self.replay: Callable[[dict[str, Any]], Awaitable[list[Job]]] | None = None
        self.intake = 0  # webhook and activity requests being handled now (``taking_in``)
        self._intake = _Intake(self)
        self._wake = asyncio.Event()
        self._stopping = False
        self._in_flight: dict[asyncio.Task[None], int] = {}
        self._lost: set[int] = set()  # jobs cancelled because another instance took them
        self._dues: list[float] = []  # heap: when retries this instance scheduled fall due
        self._looked_at = time.monotonic()  # the loop's last turn: /readyz tells a stuck loop by it
        self.stuck_after = max(30.0, 10 * poll_interval)
        self._task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """New work was stored: look now instead of at the next poll (if a job could start
        now: else the next one to finish looks; in a flood that saves a turn per request)."""
        if len(self._in_flight) < self._limit():
            self._wake.set()

    def _limit(self) -> int:
        return FLOOD_CONCURRENCY if self.intake >= FLOOD_INTAKE else self.concurrency

    @property
    def running(self) -> int:
        """Jobs this instance is running now."""
        return len(self._in_flight)

    def taking_in(self) -> _Intake:
        """Around a request that brings work in (``with``): the loop yields to a flood of them."""
        return self._intake

    async def start(self) -> None:
        freed = await self.ctx.store.release_leases(f"{self.instance}/")
        if freed:
            log.info("resuming %d jobs left by an earlier run of instance %s", freed, self.instance)
        await self._beat()
        self._task = asyncio.create_task(self._loop(), name="job-runner")
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="job-heartbeat")

    async def stop(self) -> None:
        """Stop claiming, let in-flight jobs finish (their leases protect the rest)."""
        self._stopping = True
        self._wake.set()
        await self.ctx.limiter.close()  # jobs waiting for Teams' limits are put back, not waited for
        if self._task:
            await self._task
        if self._heartbeat_task:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task

    def problem(self) -> str | None:
        """Why delivery is not working, or None: the loop ended, or has not turned for a
        while (it turns at least every ``poll_interval`` when healthy)."""
        if self._task is None or self._stopping:
            return None
        if self._task.done():
            return "the delivery loop has stopped"
        idle = time.monotonic() - self._looked_at
        if idle > self.stuck_after:
            return f"the delivery loop has not turned for {idle:.0f} s"
        return None

    async def _heartbeat(self) -> None:
        """Beat every third of a lease; in between, look every second how many instances
        share the limits, so a new instance halves the others' pace within a second, not
        only at their next beat (until then both would spend the whole limit)."""
        last_beat = time.monotonic()
        while True:
            await asyncio.sleep(SHARE_REFRESH)
            try:
                if time.monotonic() - last_beat >= self.lease_seconds / 3:
                    last_beat = time.monotonic()
                    await self._beat()
                else:
                    await self._take_share()
            except Exception:
                log.exception("heartbeat failed")

    async def _take_share(self) -> None:
        live = await self.ctx.store.live_instances(self.clock() - self.lease_seconds)
        self.ctx.limiter.share = max(1, live)
        self.metrics.sharing.set(self.ctx.limiter.share)

    async def _beat(self) -> None:
        """Say this instance is alive, take its share of the rate limits, and keep the
        leases of running jobs, cancelling those that were lost."""
        store = self.ctx.store
        now = self.clock()
        await store.beat_instance(self.owner, now)
        await self._take_share()
        running = dict(self._in_flight)
        held = set(await store.renew_leases(self.owner, list(running.values()), now + self.lease_seconds))
        for task, seq in running.items():
            if seq not in held and not task.done():
                log.warning("lease on job %s lost to another instance: stopping it", seq)
                self._lost.add(seq)
                task.cancel()

    async def _loop(self) -> None:
        while not self._stopping:
            # Cleared before the claim, so work stored while it runs wakes the next turn.
            self._wake.clear()
            free = self._limit() - len(self._in_flight)
            jobs = []
            looked_at = self.clock()
            self._looked_at = time.monotonic()
            if free > 0:
                try:
                    jobs = await self.ctx.store.claim_jobs(self.owner, looked_at, self.lease_seconds, free)
                except Exception:  # the store is down: /readyz says so; keep trying
                    log.exception("claiming jobs failed")
            for job in jobs:
                task = asyncio.create_task(self._run(job))
                self._in_flight[task] = job.seq
                task.add_done_callback(self._done)
            if not jobs:
                # Poll, or look again when a job this instance put back falls due, if sooner.
                while self._dues and self._dues[0] <= looked_at:  # those were claimable just now
                    heapq.heappop(self._dues)
                timeout = self.poll_interval
                if self._dues:
                    timeout = min(timeout, max(0.0, self._dues[0] - self.clock()))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):  # no task per wait, unlike wait_for
                        await self._wake.wait()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._wake.set()  # the partition may have a next job now

    async def _run(self, job: Job) -> None:
        extra = {"kind": job.kind}
        current_lease.set((job.seq, self.owner))
        payload = job.payload
        bind(
            workspace=job.workspace_id,
            conversation=job.partition.partition(":")[2],
            job=job.seq,
            delivery=payload.get("id") if job.kind == "neetochat_event" else None,
            activity=payload.get("activity_id"),
        )
        ws = None
        try:
            ws = await self.ctx.store.get_workspace(job.workspace_id)
            if ws is not None:  # else disconnected since: nothing to deliver to
                if job.kind == "teams_activity":
                    job = await self._work_of(job)
                await self._dispatch(job, ws)
        except LeaseLost:
            log.warning("job %s given up: another instance holds it now", job.seq, extra=extra)
        except asyncio.CancelledError:
            if job.seq not in self._lost:
                raise
            self._lost.discard(job.seq)
        except (NotLinked, to_neetochat.Refused) as exc:
            await self._dead(job, str(exc))
        except RemoteError as exc:
            if await self._bot_removed(job, exc):
                await self._dead(job, f"{BOT_REMOVED} the team: {exc}")
            elif exc.service == "neetoChat" and exc.status == 401:
                await self._key_refused(job, ws)
            elif exc.service == "Graph" and exc.code == NO_TOKEN:  # held; replayed once Graph answers again
                await self._dead(job, f"{NO_GRAPH_TOKEN}: kept, and delivered once it gets one ({exc})")
            elif exc.status == 429 and exc.retry_after is not None:
                await self._throttled(job, exc)
            elif exc.retryable and job.attempts + 1 < self.max_attempts:
                await self._retry(job, str(exc), exc.retry_after)
            else:
                await self._dead(job, str(exc))
        except Exception as exc:  # a bug or an unexpected answer: retry, then dead-letter
            log.exception("job failed", extra=extra)
            if job.attempts + 1 < self.max_attempts:
                await self._retry(job, f"{type(exc).__name__}: {exc}", None)
            else:
                await self._dead(job, f"{type(exc).__name__}: {exc}")
        else:
            # failed before (retried, or replayed as a dead letter): its notice says it arrived
            if job.last_error and job.kind == "teams_message" and ws is not None:
                await to_neetochat.report_success(self.ctx, ws, job.payload)
            await self.ctx.store.finish_job(job.seq, self.owner, "done")
            self.metrics.jobs.labels(kind=job.kind, outcome="ok").inc()
            if job.attempts:
                self.on_recovered(job.workspace_id)

    async def _work_of(self, job: Job) -> Job:
        """A stored Teams message (``bots/channel_inbox.py``) as the work the bot's turn
        asks for: this job, with that work's kind and payload (in memory: a retry takes the
        turn again). Work for anywhere else is stored as the turn would have stored it."""
        if self.replay is None:
            raise to_neetochat.Refused("no bot to take this Teams message")
        mine = job
        for work in await self.replay(job.payload["activity"]):
            if work.dedupe_key == job.dedupe_key and work.partition == job.partition:
                mine = dataclasses.replace(job, kind=work.kind, payload=work.payload)
            elif await self.ctx.store.enqueue(work):
                self.wake()
        return mine

    async def _dispatch(self, job: Job, ws: Workspace) -> None:
        if job.kind == "neetochat_event":
            await to_teams.handle_event(self.ctx, ws, job.payload)
        elif job.kind == "teams_activity":
            pass  # the message asked for nothing (its conversation closed since, say)
        elif job.kind == "teams_message":
            await to_neetochat.send_message(self.ctx, ws, job.payload)
        elif job.kind == "teams_close":
            await to_neetochat.close_from_teams(self.ctx, ws, job.payload)
        elif job.kind == "teams_command":
            await run_command(self.ctx, ws, job.payload)
        elif job.kind == "reconcile":
            await reconcile_conversation(self.ctx, ws, job.payload, self.wake)
        elif job.kind == "teams_health":
            await show_health(self.ctx, ws, job.payload)
        elif job.kind == "health_check":
            await post_problems(self.ctx, ws, job.payload, self.wake)
        elif job.kind == "teams_settings":
            await show_settings(self.ctx, ws, job.payload)
        elif job.kind == "teams_edit":
            await to_neetochat.edit_message(self.ctx, ws, job.payload)
        elif job.kind == "teams_delete":
            await to_neetochat.delete_message(self.ctx, ws, job.payload)
        elif job.kind == "channel_deleted":
            await to_teams.channel_gone(self.ctx, ws, job.payload)
        elif job.kind == "link_confirmation":
            await to_teams.confirm_link(self.ctx, ws, job.payload)
        else:
            raise to_neetochat.Refused(f"unknown job kind {job.kind!r}")

    def backoff(self, attempts: int, retry_after: float | None) -> float:
        """Exponential with full jitter in its upper half; never before Retry-After."""
        delay = min(self.max_delay, self.base_delay * (2**attempts))
        delay = delay * (0.5 + random.random() / 2)
        return max(delay, retry_after or 0.0)

    async def _retry(self, job: Job, error: str, retry_after: float | None) -> None:
        if job.kind == "teams_message" and job.attempts == 0:
            await self._tell_pending(job, error)
        delay = self.backoff(job.attempts, retry_after)
        log.warning("job %s retry in %.1fs: %s", job.seq, delay, error)
        due = self.clock() + delay
        await self.ctx.store.retry_job(job.seq, self.owner, due, error)
        self.metrics.jobs.labels(kind=job.kind, outcome="retried").inc()
        self._due_at(due)

    def _due_at(self, due: float) -> None:
        heapq.heappush(self._dues, due)
        self._wake.set()

    async def _throttled(self, job: Job, exc: RemoteError) -> None:
        """Wait as long as asked (plus a little jitter, so waiters do not return in a
        herd), without spending an attempt: throttling is not failure."""
        delay = (exc.retry_after or 0.0) + (0.0 if isinstance(exc, Throttled) else random.random() * self.base_delay)
        due = self.clock() + delay
        await self.ctx.store.retry_job(job.seq, self.owner, due, str(exc), count_attempt=False)
        self.metrics.jobs.labels(kind=job.kind, outcome="throttled").inc()
        self._due_at(due)

    async def _bot_removed(self, job: Job, exc: RemoteError) -> bool:
        """Teams refuses the bot in the team (403): removed without us hearing of it.
        Mark the installation, so every job of the team stops at once with the reason and
        the operator status shows it; adding the bot back replays them."""
        if exc.service != "Teams" or exc.status != 403 or exc.code != "BotNotInConversationRoster":
            return False
        inst = await self._team_of(job)
        if inst is not None and inst.installed:
            inst.installed = False
            inst.updated_at = time.time()
            await self.ctx.store.put_installation(inst)
            log.error("Teams says the bot is no longer in team %s: delivery to it stopped", inst.team_id)
        return True

    async def _key_refused(self, job: Job, used: Workspace | None) -> None:
        """neetoChat no longer takes the API key (regenerated, revoked): the job is kept as
        a dead letter with a reason that says it waits, the notification channel hears it
        once per key, and reconnecting the workspace with a working key replays them all
        in order (``AdminApi.put_workspace``)."""
        ws = await self.ctx.store.get_workspace(job.workspace_id)
        if ws is not None and used is not None and ws.api_key_enc != used.api_key_enc:
            # Reconnected while this ran: try again at once with the new key (no attempt spent).
            await self.ctx.store.retry_job(job.seq, self.owner, self.clock(), KEY_REFUSED, count_attempt=False)
            self._due_at(self.clock())
            return
        try:  # while the lease is held: the notice is fenced like any post
            if ws is None:
                raise NotLinked("the workspace was disconnected")
            dest = await self.ctx.destination(ws)
            text = (
                "⚠️ neetoChat no longer accepts this integration's API key, so nothing is exchanged with "
                "neetoChat for now. Nothing is lost: messages are kept and delivered in order once an "
                "admin reconnects the workspace with a new key."
            )
            key = f"key-refused:{hashlib.sha256(ws.api_key_enc.encode()).hexdigest()[:16]}"  # once per key
            activity = to_teams.html_activity(notices.notice_html(text))
            await to_teams.post_once(self.ctx, dest, "_workspace", key, dest.notification_channel_id, activity)
        except Exception:  # not linked, Teams down: the operator status says it too
            log.exception("could not post the API key notice for workspace %s", job.workspace_id)
        await self._dead(job, f"{KEY_REFUSED}: kept, and delivered once the workspace is reconnected with a new key")
        # A reconnect that came while this was being dead-lettered replayed the others, not
        # this one: replay it too.
        now = await self.ctx.store.get_workspace(job.workspace_id)
        replaced = now is not None and used is not None and now.api_key_enc != used.api_key_enc
        if replaced and await self.ctx.store.requeue_dead_jobs(job.workspace_id, [job.seq]):
            self.wake()

    async def _dead(self, job: Job, reason: str) -> None:
        log.error("job %s dead: %s", job.seq, reason)
        gone = await self._team_of(job) if reason.startswith(BOT_REMOVED) else None
        await self._tell_failure(job, reason)  # while the lease is held: the notice is fenced too
        await self.ctx.store.finish_job(job.seq, self.owner, "dead", reason)
        self.metrics.jobs.labels(kind=job.kind, outcome="dead").inc()
        if gone is not None and not gone.installed:
            await self._replay_if_back(job, gone)

    async def _replay_if_back(self, job: Job, gone: Installation) -> None:
        """The bot added back while this job was being dead-lettered: that replay took the
        dead letters there were, not this one, so replay it now."""
        now = await self.ctx.store.get_installation(gone.team_id)
        if now is not None and now.installed and await self.ctx.store.requeue_dead_jobs(job.workspace_id, [job.seq]):
            self.wake()

    async def _team_of(self, job: Job) -> Installation | None:
        """The team the job's conversation lives in (a routing rule may have chosen one other
        than the linked team), else the linked team."""
        ws = await self.ctx.store.get_workspace(job.workspace_id)
        if ws is None:
            return None
        portal = await self.ctx.store.get_portal(ws.id, job.partition.partition(":")[2])
        team_id = portal.team_id if portal else None
        if team_id is None and job.kind == "neetochat_event":  # no channel yet: where the rules send it
            team_id = route_team(ws, job.payload["data"]["conversation"])
        team_id = team_id or ws.team_id
        return await self.ctx.store.get_installation(team_id) if team_id else None

    async def _tell_pending(self, job: Job, error: str) -> None:
        """The person who wrote it learns at the first failure that it has not reached the
        visitor yet (the same reply says "delivered after all" or "failed" later)."""
        what = "saved in neetoChat" if job.payload.get("internal") else "delivered to the visitor"
        try:
            ws = await self.ctx.store.get_workspace(job.workspace_id)
            if ws is not None:
                await to_neetochat.report_delivery(
                    self.ctx, ws, job.payload, f"⏳ Not {what} yet: {error}. The bridge keeps trying."
                )
        except Exception:  # the retry matters more than the notice
            log.exception("could not post the pending notice for job %s", job.seq)

    async def _tell_failure(self, job: Job, reason: str) -> None:
        """Say it where people look; a notice that fails is logged, the dead letter stays."""
        if reason.startswith(BOT_REMOVED):
            return  # nowhere in Teams to say it: the operator status does
        if reason.startswith(KEY_REFUSED) and job.kind not in TEAMS_WORK:
            return  # said once for the workspace (_key_refused), not once per event
        if reason.startswith(NO_GRAPH_TOKEN) and job.kind not in TEAMS_WORK:
            return  # the operator's to fix: the operator status says it (and /health)
        try:
            if job.kind in TEAMS_WORK:
                what = TEAMS_WORK[job.kind]
                if job.payload.get("internal"):
                    what = "save this note in neetoChat"
                elif job.kind == "teams_command":
                    what = f"do /{job.payload['command']}"
                text = f"⚠️ Could not {what}: {reason}"
                ws = await self.ctx.store.get_workspace(job.workspace_id)
                if job.kind == "teams_message" and ws is not None:
                    await to_neetochat.report_delivery(self.ctx, ws, job.payload, text)  # edits the ⏳ notice
                else:
                    await to_neetochat.tell_thread(self.ctx, job.payload, text)
            elif job.kind == "neetochat_event":
                await to_teams.tell_undelivered(self.ctx, job.workspace_id, job.payload, reason)
        except NotLinked as exc:  # no team to tell: the dead letter and the status say it
            log.warning("no failure notice for job %s: %s", job.seq, exc)
        except Exception:
            log.exception("could not post the failure notice for job %s", job.seq)
