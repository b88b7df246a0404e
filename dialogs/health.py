"""``/health`` in the notification channel, and the periodic check that posts problems
there (services/health.py does the checking). Both are jobs: their posts go through the
delivery engine like everything else."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from services.context import NO_GRAPH_TOKEN, BridgeContext
from services.health import PERMISSIONS, as_html, check_health, problems, problems_key
from services.store.base import Workspace
from services.to_neetochat import reply_in_thread
from services.to_teams import html_activity, post_once

log = logging.getLogger(__name__)


async def show_health(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any]) -> None:
    """Answer ``/health`` in its thread with every check."""
    await reply_in_thread(ctx, payload, as_html(await check_health(ctx, ws)))


async def post_problems(
    ctx: BridgeContext, ws: Workspace, payload: dict[str, Any], on_enqueued: Callable[[], None]
) -> None:
    """The periodic check: problems go to the notification channel once, and again only
    when the set of problems changes (the post's key names them). When Graph answers again,
    what was held for want of a Graph token is replayed, in order."""
    checks = await check_health(ctx, ws)
    graph_answers = any(c.name == PERMISSIONS and c.ok for c in checks)
    if graph_answers and await ctx.store.requeue_dead_jobs(ws.id, error_prefix=NO_GRAPH_TOKEN):
        log.info("Graph answers again: replaying what was held for workspace %s", ws.id)
        on_enqueued()
    if not problems(checks):
        return
    dest = await ctx.destination(ws)
    key = problems_key(checks)
    log.warning("health: %s", ", ".join(c.name for c in problems(checks)))
    await post_once(ctx, dest, "_workspace", key, dest.notification_channel_id, html_activity(as_html(checks)))
