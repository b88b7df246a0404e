"""Is the integration set up and working? Each check says what it found and, when something
is wrong, what to do about it in plain words.

Asked by ``/health`` in the notification channel, the ``/status`` card's health line, the
operator API (``GET /api/admin/workspaces/{ws}/health``), and periodically, posting
problems to the notification channel once, and again only when they change. The failures
other bridges' users report are the checks: the bot not installed, the RSC consent missing
or silently not working (then Teams delivers only messages that @mention the bot), no
permission to create or delete channels, a dead API key, webhooks that stopped, the channel
cap, a backlog.
"""

from __future__ import annotations

import hashlib
import html
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from manifest.build import RSC_PERMISSIONS
from services.context import BridgeContext, Destination, NotLinked
from services.errors import RemoteError
from services.graph import NO_TOKEN
from services.store.base import Workspace

log = logging.getLogger(__name__)

CHANNEL_CAP = 1000  # Teams: channels per team, deleted ones counting for 30 days
CHANNEL_WARNING = 900
BACKLOG_WARNING = 300.0  # seconds the oldest queued delivery may wait before it is a problem
MISSED_RECENTLY = 24 * 3600.0  # a reconcile that found missed activities this recently is a problem
PERMISSIONS = "Permissions in the team"
REINSTALL = (
    "a team owner removes the neetoChat app from the team and adds it again, accepting the "
    "permissions it asks for (Teams → the team → Manage team → Apps)"
)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None


async def check_health(ctx: BridgeContext, ws: Workspace) -> list[Check]:
    """Every check, in the order a person would fix them."""
    checks: list[Check] = []
    try:
        dest = await ctx.destination(ws)
    except NotLinked as exc:
        fix = "add the neetoChat app to the team again" if ws.team_id else "use Login to Teams in neetoChat"
        checks.append(Check("Teams link", False, str(exc), fix))
        dest = None
    if dest is not None:
        checks.append(Check("Teams link", True, f"linked to {dest.installation.name or 'the team'}, bot installed"))
        checks += await _permissions(ctx, dest)
        checks.append(_unmentioned(ctx, ws))
        checks.append(await _channels(ctx, dest))
    checks.append(await _api_key(ctx, ws))
    checks.append(_webhooks(ctx, ws))
    checks.append(await _backlog(ctx, ws))
    return checks


async def _permissions(ctx: BridgeContext, dest: Destination) -> list[Check]:
    """The resource-specific permissions granted to the app in the team (Graph lists them)."""
    group_id = dest.installation.aad_group_id or dest.workspace.aad_group_id
    if not group_id:
        return [Check(PERMISSIONS, False, "the team's Microsoft 365 group id is not known yet", REINSTALL)]
    try:
        granted = await ctx.graph.for_tenant(dest.tenant_id).permission_grants(group_id, ctx.settings.app_id or None)
    except RemoteError as exc:
        if exc.code == NO_TOKEN:
            fix = (
                "an admin of the team's Microsoft 365 tenant checks that the neetoChat app is still there "
                "(Enterprise applications) and consented; the operator checks MicrosoftAppPassword"
            )
            return [Check(PERMISSIONS, False, f"the bridge gets no Graph token: {exc}", fix)]
        return [Check(PERMISSIONS, False, f"Graph did not list them: {exc}", REINSTALL)]
    missing = [p for p in RSC_PERMISSIONS if p not in granted]
    if not missing:
        return [Check(PERMISSIONS, True, "all granted: " + ", ".join(RSC_PERMISSIONS))]
    what = {
        "ChannelMessage.Read.Group": "Teams sends the bot only messages that @mention it",
        "Channel.Create.Group": "new conversations get no channel",
        "Channel.Delete.Group": "closed conversations keep their channel",
        "ChannelSettings.Read.Group": "the settings cannot list the team's channels",
        "TeamMember.Read.Group": "owners cannot be recognised for the settings, nor people listed on the settings page",
    }
    detail = "; ".join(f"{p} is not granted: {what.get(p, 'a feature stops working')}" for p in missing)
    return [Check(PERMISSIONS, False, detail, REINSTALL)]


def _unmentioned(ctx: BridgeContext, ws: Workspace) -> Check:
    """Granted is not the same as working: reconcile compares what Graph has with what the
    bot received."""
    seen = ctx.observed.missed_activities.get(ws.id)
    if seen and time.time() - seen[0] < MISSED_RECENTLY:
        ago = _ago(seen[0])
        return Check(
            "Messages reach the bot",
            False,
            f"{seen[1]} channel message(s) found {ago} were never delivered to the bot: Teams is not "
            "delivering messages that do not @mention it. They were delivered late by reconcile.",
            REINSTALL,
        )
    return Check("Messages reach the bot", True, "reconcile found no channel message the bot missed")


async def _channels(ctx: BridgeContext, dest: Destination) -> Check:
    used = (await ctx.store.open_channels_by_team()).get(dest.installation.team_id, 0)
    detail = f"{used} open conversation channels of the {CHANNEL_CAP:,} Teams allows (deleted ones count 30 days)"
    if used >= CHANNEL_WARNING:
        fix = "close finished conversations; past the cap, new ones become threads in the notification channel"
        return Check("Channels", False, detail, fix)
    return Check("Channels", True, detail)


async def _api_key(ctx: BridgeContext, ws: Workspace) -> Check:
    try:
        await ctx.neetochat(ws).get_workspace()
    except RemoteError as exc:
        if exc.status == 401:
            fix = "regenerate the API key in neetoChat and reconnect the workspace with it"
            return Check("neetoChat API key", False, "neetoChat refuses the API key", fix)
        return Check("neetoChat API key", False, f"neetoChat did not answer: {exc}", "check neetoChat is reachable")
    return Check("neetoChat API key", True, "valid")


def _webhooks(ctx: BridgeContext, ws: Workspace) -> Check:
    """Information, not a verdict: quiet hours are normal; reconcile fills gaps anyway."""
    at = ctx.observed.webhook_at.get(ws.id)
    detail = f"the last one arrived {_ago(at)}" if at else "none since this instance started"
    return Check("Webhooks from neetoChat", True, detail)


async def _backlog(ctx: BridgeContext, ws: Workspace) -> Check:
    counts = await ctx.store.job_counts(ws.id)
    age = time.time() - counts.oldest_pending_at if counts.oldest_pending_at else 0.0
    detail = f"{counts.pending} queued (oldest {age:.0f} s), {counts.dead} failed"
    if counts.dead:
        fix = "see the failed deliveries (operator API: dead-letters) and replay them once the cause is fixed"
        return Check("Deliveries", False, detail, fix)
    if age > BACKLOG_WARNING:
        return Check("Deliveries", False, detail, "Teams or neetoChat is slow or failing: see /metrics")
    return Check("Deliveries", True, detail)


def _ago(at: float) -> str:
    minutes = max(0, int((time.time() - at) // 60))
    return "just now" if minutes == 0 else f"{minutes} min ago"


def problems(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.ok]


def problems_key(checks: list[Check]) -> str:
    """Names what is wrong (not the details that change by the minute): the same problems
    give the same key, so they are posted once, and again only when they change."""
    names = ",".join(sorted(c.name for c in problems(checks)))
    return "health:" + hashlib.sha256(names.encode()).hexdigest()[:16]


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": not problems(checks), "checks": [asdict(c) for c in checks]}


def as_html(checks: list[Check]) -> str:
    """The checks as the bot posts them (escaped: details carry names and errors)."""
    lines = ["<b>neetoChat integration health</b>"]
    for c in checks:
        line = f"{'✅' if c.ok else '⚠️'} <b>{html.escape(c.name)}</b>: {html.escape(c.detail)}"
        if c.fix:
            line += f"<br>&nbsp;&nbsp;&nbsp;→ {html.escape(c.fix)}"
        lines.append(line)
    return "<br>".join(lines)
