"""The health check: each problem named with its fix, in Teams (``/health``, the ``/status``
card, a post in the notification channel once per set of problems) and for operators."""

from __future__ import annotations

import html

from tests.harness import WS, wait_for


async def _health(h) -> dict:
    status, body = await h.admin("GET", f"/api/admin/workspaces/{WS}/health")
    assert status == 200
    return {c["name"]: c for c in body["checks"]} | {"_ok": body["ok"]}


def _health_posts(h) -> list[str]:
    return [html.unescape(p["text"] or "") for p in h.general_posts() if "integration health" in (p["text"] or "")]


async def test_a_healthy_setup_passes_every_check(connected):
    h = connected
    checks = await _health(h)
    assert checks.pop("_ok") is True
    assert set(checks) == {
        "Teams link",
        "Permissions in the team",
        "Messages reach the bot",
        "Channels",
        "neetoChat API key",
        "Webhooks from neetoChat",
        "Deliveries",
    }
    assert all(c["ok"] and c["fix"] is None for c in checks.values())


async def test_a_missing_rsc_consent_is_found_both_ways_and_posted_once(connected):
    h = connected
    conv, channel = await h.open_conversation("Pam")
    h.ms.revoke_rsc(h.team_id, "ChannelMessage.Read.Group")
    checks = await _health(h)
    assert not checks["_ok"]
    assert "only messages that @mention it" in checks["Permissions in the team"]["detail"]
    assert "removes the neetoChat app" in checks["Permissions in the team"]["fix"]

    unheard = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "nobody hears this")
    assert unheard["status"] is None, "Teams did not deliver it: it does not @mention the bot"
    await h.admin("POST", f"/api/admin/workspaces/{WS}/reconcile")
    await wait_for(lambda: h.from_teams(conv["id"]), what="the message healed by reconcile")
    checks = await _health(h)
    assert "never delivered to the bot" in checks["Messages reach the bot"]["detail"]

    (first,) = await wait_for(lambda: _health_posts(h), what="the problems in the notification channel")
    assert "ChannelMessage.Read.Group" in first and "→" in first
    # the next run checks again: what is wrong changed (missed messages showed), so it is posted
    await h.admin("POST", f"/api/admin/workspaces/{WS}/reconcile")
    posts = await wait_for(lambda: len(_health_posts(h)) == 2 and _health_posts(h), what="the changed problems")
    assert "never delivered to the bot" in posts[-1]
    await h.admin("POST", f"/api/admin/workspaces/{WS}/reconcile")  # the same problems again
    h.neeto.visitor_writes(WS, conv["id"], "later")  # a marker: the run above has finished
    await wait_for(lambda: any("later" in (p["text"] or "") for p in h.ms.posts(channel["id"])), what="marker")
    assert _health_posts(h) == posts, "the same problems are not posted again"


async def test_health_in_the_notification_channel_and_on_the_status_card(connected):
    h = connected
    sent = await h.ms.user_posts(h.team_id, h.team_id, h.olly, "/health")
    reply = await h.reply_to(h.team_id, sent, "integration health")
    assert "✅" in reply["text"] and "Permissions in the team" in reply["text"]

    conv, channel = await h.open_conversation("Quy")
    status = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "/status")
    answer = await h.reply_to(channel["id"], status, "Integration health")
    assert "all checks pass" in answer["text"] and answer["attachments"]


async def test_a_refused_api_key_is_a_problem_with_its_fix(connected):
    h = connected
    h.neeto.set_api_key(WS, "regenerated")
    checks = await _health(h)
    assert checks["neetoChat API key"]["ok"] is False
    assert "regenerate the API key" in checks["neetoChat API key"]["fix"]
