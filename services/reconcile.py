"""Reconcile: what one side has and the other never heard of is delivered late, once.

Webhooks and activities get lost: neetoChat gives up on a bridge that was down too long,
Teams silently stops delivering unmentioned channel messages when the RSC consent breaks,
a network drops a request both sides think was answered. So every open conversation is
compared, now and then, with both sides:

- **neetoChat → Teams**: its messages (``GET /conversations/{id}/messages``) against the
  message map; one written outside Teams with no post is posted (``deliver_message``, the
  same idempotent path as a live event, internal notes marked as such). A close that never
  arrived closes the channel; the cards are refreshed (a lost assignment shows there).
- **Teams → neetoChat**: the messages people wrote in the channel (Graph, app-only with the
  RSC permission; the bot's own posts are not people's) against the jobs: each is stored as
  the job its activity would have become, under the same dedupe key (the activity id), so a
  message the bot did receive, or receives later, is never delivered twice.

A run is a ``reconcile`` job in the conversation's own partition, so it is ordered with the
live work of that conversation, and what it finds is delivered in order after it. The
``Reconciler`` queues runs: at startup, every ``RECONCILE_INTERVAL_SECONDS`` (600), soon after
a workspace's deliveries recover from failures, when the bot is added back or a team is
linked, and on demand (``POST /api/admin/workspaces/{ws}/reconcile``). The cost of one run is
bounded: at most ``RECONCILE_BATCH`` conversations per workspace, the next ones in the next run.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from dialogs.commands import channel_work
from services.context import BridgeContext, Destination
from services.graph import PersonPost
from services.inbox import partition_for, teams_work
from services.store.base import Job, Portal, Store, Workspace
from services.teams_content import read_activity
from services.to_teams import close_portal, deliver_message, refresh_cards

log = logging.getLogger(__name__)

POKE_DELAY = 5.0  # after an outage ends or a reconnect: let the backlog start first
_HOSTED_IMAGE = re.compile(r"""<img[^>]+src=["']([^"']+/hostedContents/[^"']+)["']""", re.IGNORECASE)
_BOT = "bot"  # stands for the bot in the activity rebuilt from a Graph message


async def reconcile_conversation(
    ctx: BridgeContext, ws: Workspace, payload: dict[str, Any], on_enqueued: Callable[[], None]
) -> None:
    """One conversation, both directions (the ``reconcile`` job)."""
    conversation_id = payload["conversation_id"]
    portal = await ctx.store.get_portal(ws.id, conversation_id)
    if portal is None or portal.state != "open" or not portal.backfilled or not portal.channel_id:
        return  # closed, or still being set up (the setup posts the whole history itself)
    dest = await ctx.destination(ws, portal.team_id)
    conversation = await ctx.neetochat(ws).get_conversation(conversation_id)
    if conversation.get("status") == "closed":
        log.warning("reconcile: conversation %s was closed without the bridge hearing of it", conversation_id)
        await close_portal(ctx, dest, conversation, None)
        return
    settled_before = time.time() - ctx.settings.reconcile_grace  # younger ones may be on their way
    to_teams = await _missing_in_teams(ctx, dest, portal, conversation, settled_before)
    to_neetochat = await _missing_in_neetochat(ctx, dest, portal, settled_before)
    refresh_cards(ctx, dest, portal, conversation)
    if to_neetochat:
        ctx.observed.missed_activities[ws.id] = (time.time(), to_neetochat)
    if to_teams or to_neetochat:
        for direction, count in (("to_teams", to_teams), ("to_neetochat", to_neetochat)):
            ctx.metrics.healed.labels(direction=direction).inc(count)
            ctx.observed.record_healed(ws.id, direction, count)
        log.warning(
            "reconcile healed conversation %s: %d message(s) to Teams, %d to neetoChat",
            conversation_id,
            to_teams,
            to_neetochat,
        )
    if to_neetochat:
        on_enqueued()


async def _missing_in_teams(
    ctx: BridgeContext, dest: Destination, portal: Portal, conversation: dict, settled_before: float
) -> int:
    """Post what neetoChat has and the channel does not (messages written in Teams are the
    other direction's: their activity ids are in the map or in the jobs)."""
    healed = 0
    async for message in ctx.neetochat(dest.workspace).iter_messages(portal.conversation_id):
        if message.get("source") == "teams" or _timestamp(message.get("created_at")) > settled_before:
            continue
        if await ctx.store.get_link_by_neeto_id(dest.workspace.id, message["id"]):
            continue
        await deliver_message(ctx, dest, portal, message, conversation)
        healed += 1
    return healed


async def _missing_in_neetochat(ctx: BridgeContext, dest: Destination, portal: Portal, settled_before: float) -> int:
    """Store, as the jobs their activities would have become, the messages people wrote in
    the channel that the bot never received. Returns how many were new."""
    group_id = dest.installation.aad_group_id or dest.workspace.aad_group_id
    if not group_id:
        return 0
    graph = ctx.graph.for_tenant(dest.tenant_id)
    posts = await graph.person_posts(group_id, portal.channel_id, portal.thread_id)
    healed = 0
    for post in posts:
        if post.created > settled_before:
            continue
        kind, payload = _job_for(ctx, dest, portal, post)
        if await ctx.store.enqueue(teams_work(kind, portal.workspace_id, portal.conversation_id, post.id, payload)):
            healed += 1
    return healed


def _timestamp(iso: str | None) -> float:
    """neetoChat's ISO-8601 time as epoch seconds (0 when missing: old enough)."""
    if not iso:
        return 0.0
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _job_for(ctx: BridgeContext, dest: Destination, portal: Portal, post: PersonPost) -> tuple[str, dict[str, Any]]:
    """(kind, payload) of the job the post's activity would have become (bots/teams_bot.py),
    rebuilt from what Graph shows of it."""
    activity = {
        "recipient": {"id": _BOT, "name": ""},
        "entities": [
            {"type": "mention", "mentioned": {"id": _BOT, "name": name}, "text": f"<at>{name}</at>"}
            for name in post.mentioned_apps
        ],
        "attachments": [{"contentType": "text/html", "content": post.html}]
        + [a for a in post.attachments if a.get("contentType") == "reference"]
        + [{"contentType": "image/*", "contentUrl": src} for src in _HOSTED_IMAGE.findall(post.html)],
    }
    text, items = read_activity(activity, "")
    kind, extra = channel_work(text)
    payload = {
        "text": text,
        "attachments": items,
        "channel_id": portal.channel_id,
        "user": {
            "id": post.author_aad_id,  # the connector's roster takes the AAD object id too
            "aad_object_id": post.author_aad_id,
            "name": post.author_name,
            "team_id": portal.team_id or dest.workspace.team_id,
        },
        "reference": ctx.poster.thread_reference(dest.service_url, dest.tenant_id, portal.channel_id, post.root_id),
        "recovered": True,
        **extra,
    }
    if kind == "teams_command":
        payload["mentions"] = post.mentioned_people
    return kind, payload


class Reconciler:
    """Queues reconcile runs (see the module's docstring for when)."""

    def __init__(
        self,
        store: Store,
        on_enqueued: Callable[[], None],
        *,
        interval: float,
        batch: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._on_enqueued = on_enqueued
        self._interval = interval
        self._batch = batch
        self._clock = clock
        self._after: dict[str, str | None] = {}  # per workspace: where the walk goes on
        self._poked: dict[str, asyncio.TimerHandle] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        for handle in self._poked.values():
            handle.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self.run()
            except Exception:  # the store is down: the next run tries again
                log.exception("reconcile run failed")
            if not self._interval:
                return
            await asyncio.sleep(self._interval)

    def poke(self, workspace_id: str) -> None:
        """Reconcile this workspace soon (an outage ended, the bot came back): once, however
        many times it is poked meanwhile."""
        if workspace_id in self._poked:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            del self._poked[workspace_id]
            loop.create_task(self._run_logged(workspace_id))

        self._poked[workspace_id] = loop.call_later(POKE_DELAY, fire)

    async def _run_logged(self, workspace_id: str) -> None:
        try:
            await self.run(workspace_id)
        except Exception:
            log.exception("reconcile of workspace %s failed", workspace_id)

    async def run(self, workspace_id: str | None = None) -> int:
        """Queue one run for the next ``batch`` open conversations of each linked workspace
        (or of one), and a health check of each; returns how many conversations were queued."""
        if workspace_id is None:
            workspaces = [w.id for w in await self._store.linked_workspaces()]
        else:
            workspaces = [workspace_id]
        run_id = uuid.uuid4().hex
        queued = 0
        for ws_id in workspaces:
            # with each run, the setup is checked too (problems are posted once: dialogs/health.py)
            await self._store.enqueue(self._job("health_check", ws_id, "_workspace", run_id))
            portals = await self._store.open_portals(ws_id, self._after.get(ws_id), self._batch)
            self._after[ws_id] = portals[-1].conversation_id if len(portals) == self._batch else None
            for portal in portals:
                queued += await self._store.enqueue(self._job("reconcile", ws_id, portal.conversation_id, run_id))
        if workspaces:
            self._on_enqueued()
        return queued

    def _job(self, kind: str, workspace_id: str, conversation_id: str, run_id: str) -> Job:
        return Job(
            seq=0,
            kind=kind,
            workspace_id=workspace_id,
            partition=partition_for(workspace_id, conversation_id),
            dedupe_key=f"{kind}:{workspace_id}:{conversation_id}:{run_id}",
            payload={"conversation_id": conversation_id},
            created_at=self._clock(),
        )
