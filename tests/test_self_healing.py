"""When one side stops accepting the bridge, nothing is lost: the bridge holds what it
cannot deliver, says so once where people look, and delivers it all, in order, once the
link is fixed."""

from __future__ import annotations

import html

from tests.harness import WEBHOOK_SECRET, WS, post_bodies, wait_for

NEW_KEY = "nc-api-key-acme-regenerated"


def _general_notices(h) -> list[str]:
    return [html.unescape(p["text"] or "") for p in h.general_posts() if "API key" in (p["text"] or "")]


async def test_a_refused_api_key_holds_everything_until_the_workspace_is_reconnected(connected):
    h = connected
    conv, channel = await h.open_conversation("Ola")
    h.neeto.set_api_key(WS, NEW_KEY)  # an admin regenerated the key in neetoChat

    first = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "first while the key is refused")
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "second while the key is refused")
    h.neeto.visitor_writes(WS, conv["id"], "visitor while the key is refused")
    await wait_for(lambda: _general_notices(h), what="the notice in the notification channel")
    await wait_for(
        lambda: any("kept" in (r["text"] or "") for p in h.ms.posts(channel["id"]) for r in p["replies"]),
        what="the writer told it is kept",
    )
    _, status = await h.admin("GET", f"/api/admin/workspaces/{WS}")
    assert status["problem"] and "API key" in status["problem"]
    assert len(_general_notices(h)) == 1, "said once, not once per message"
    assert not h.from_teams(conv["id"])

    status, _ = await h.admin(
        "PUT",
        f"/api/admin/workspaces/{WS}",
        {"base_url": f"{h.neeto_url}/{WS}", "api_key": NEW_KEY, "webhook_secret": WEBHOOK_SECRET},
    )
    assert status == 200

    await wait_for(lambda: len(h.from_teams(conv["id"])) == 2, what="both messages delivered")
    assert [m["body"] for m in h.from_teams(conv["id"])] == [
        "first while the key is refused",
        "second while the key is refused",
    ]
    await wait_for(lambda: "visitor while the key is refused" in post_bodies(h.ms.posts(channel["id"])), what="post")
    (notice,) = [r for p in h.ms.posts(channel["id"]) if p["id"] == first["activity"]["id"] for r in p["replies"]]
    assert "after all" in notice["text"], "the writer's notice now says it arrived"
    _, status = await h.admin("GET", f"/api/admin/workspaces/{WS}")
    assert status["problem"] is None and status["deliveries"]["failed"] == 0
