"""Cards people act on: the buttons, and the notification card kept up to date in place."""

from __future__ import annotations

import json

from app import RUNTIME
from tests.harness import WS, wait_for


def _card(post) -> dict:
    content = post["attachments"][0]["content"]
    return json.loads(content) if isinstance(content, str) else content


def _text(card) -> str:
    return json.dumps(card, ensure_ascii=False).replace("\\\\", "")


async def _started(h, name: str):
    conv = h.neeto.start_conversation(WS, visitor_name=name, visitor_email=f"{name.lower()}@example.com", message="hi")
    channel = await h.wait_channel(conv["number"])
    notice = await wait_for(lambda: [p for p in h.general_posts() if p["attachments"]], what="the notice card")
    await wait_for(lambda: h.ms.posts(channel["id"]), what="the intro card")

    async def set_up():  # the bridge has recorded both cards (a press before that is a race)
        portal = await h.app[RUNTIME].ctx.store.get_portal(WS, conv["id"])
        return portal and portal.backfilled

    await wait_for(set_up, what="the conversation to be fully set up")
    return conv, channel, notice[0]


async def _press(h, notice, title: str, user) -> dict:
    """``user`` presses the button called ``title`` on the notice card in General."""
    button = next(a for a in _card(notice)["actions"] if a["title"] == title)
    return await h.ms.press_button(h.team_id, h.team_id, notice["id"], user, verb=button["verb"], data=button["data"])


async def test_assign_to_me_assigns_and_updates_the_card_for_everyone(connected):
    h = connected
    conv, channel, notice = await _started(h, "Quinn")
    result = await _press(h, notice, "Assign to me", h.ada)
    assert result["status"] == 200
    assert result["body"]["type"] == "application/vnd.microsoft.card.adaptive"
    assert "Ada Agent (Agent)" in _text(result["body"]["value"])
    assert h.neeto.conversation(WS, conv["id"])["assignee"]["id"] == h.ada_agent["id"]
    # for everyone else: updated in place (in the background, coalesced), not reposted
    intro = await wait_for(
        lambda: "Ada Agent (Agent)" in _text(_card(h.ms.posts(channel["id"])[0])) and h.ms.posts(channel["id"])[0],
        what="the channel's card updated",
    )
    assert intro["updated"]
    general = [p for p in h.general_posts() if p["attachments"]]
    assert len(general) == 1 and general[0]["updated"]
    assert "Ada Agent (Agent)" in _text(_card(general[0]))


async def test_someone_who_is_not_an_agent_is_told_and_nothing_changes(connected):
    h = connected
    conv, _, notice = await _started(h, "Rita")
    result = await _press(h, notice, "Assign to me", h.olly)
    assert result["body"]["type"] == "application/vnd.microsoft.activity.message"
    assert "Only neetoChat agents" in result["body"]["value"]
    assert h.neeto.conversation(WS, conv["id"])["assignee"] is None


async def test_close_button_closes_deletes_the_channel_and_leaves_a_closed_card(connected):
    h = connected
    conv, _, notice = await _started(h, "Sam")
    result = await _press(h, notice, "Close", h.ada)
    assert result["status"] == 200
    assert h.neeto.conversation(WS, conv["id"])["status"] == "closed"
    assert h.conversation_channel(conv["number"]) is None
    closed = _card(next(p for p in h.general_posts() if p["attachments"]))
    assert "Closed" in _text(closed)
    assert not [a for a in closed.get("actions", []) if a["type"] == "Action.Execute"]
    assert not [a for a in closed.get("actions", []) if a["title"] == "View conversation in Teams"]


async def test_the_notification_card_follows_the_conversation_without_new_posts(connected):
    h = connected
    conv, _, notice = await _started(h, "Tom")
    h.neeto.visitor_writes(WS, conv["id"], "anyone?")
    h.neeto.assign(WS, conv["id"], agent_id=h.ada_agent["id"], actor_agent_id=h.admin_agent["id"])

    def updated():
        post = next(p for p in h.general_posts() if p["attachments"])
        return "Ada Agent (Agent)" in _text(_card(post)) and post

    post = await wait_for(updated, what="the card to show the new assignee")
    card_text = _text(_card(post))
    last_reply = h.neeto.conversation(WS, conv["id"])["last_reply_at"][:19]
    assert last_reply in card_text  # the last reply time moved with the visitor's message
    assert len([p for p in h.general_posts() if p["attachments"]]) == 1
