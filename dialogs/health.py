"""``/health`` in the notification channel, and the periodic check that posts problems
there (services/health.py does the checking). Both are jobs: their posts go through the
delivery engine like everything else."""

from __future__ import annotations

import logging
from typing import Any

from services.context import BridgeContext
from services.health import as_html, check_health, problems, problems_key
from services.store.base import Workspace
from services.to_neetochat import reply_in_thread
from services.to_teams import html_activity, post_once

log = logging.getLogger(__name__)


async def show_health(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any]) -> None:
    """Answer ``/health`` in its thread with every check."""
    await reply_in_thread(ctx, payload, as_html(await check_health(ctx, ws)))


async def post_problems(ctx: BridgeContext, ws: Workspace, payload: dict[str, Any]) -> None:
    """The periodic check: problems go to the notification channel once, and again only
    when the set of problems changes (the post's key names them)."""
    checks = await check_health(ctx, ws)
    if not problems(checks):
        return
    dest = await ctx.destination(ws)
    key = problems_key(checks)
    log.warning("health: %s", ", ".join(c.name for c in problems(checks)))
    await post_once(ctx, dest, "_workspace", key, dest.notification_channel_id, html_activity(as_html(checks)))
