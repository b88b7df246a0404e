"""``/settings`` in the notification channel: everyone sees the settings; only the team's
owners (Adam, by the team's roster in Graph) can change them, from the card."""

from __future__ import annotations

import json

from tests.harness import WS, wait_for
from tests.test_signin import add_channel


def _text(card: dict) -> str:
    return json.dumps(card, ensure_ascii=False)


async def _settings_card(h) -> dict:
    """Someone writes /settings in General (the default notification channel)."""
    sent = await h.ms.user_posts(h.team_id, h.team_id, h.ada, "/settings")
    reply = await h.reply_to(h.team_id, sent, "")
    return await wait_for(lambda: reply if reply["attachments"] else None, what="the settings card")


def _press(h, post: dict, user: dict, title: str, card: dict | None = None, **inputs):
    """``user`` presses ``title`` on ``card`` (what they see: by default the post's own
    card); Teams sends the inputs merged into the action's data."""
    card = card or post["attachments"][0]["content"]
    button = next(a for a in card["actions"] if a["title"] == title)
    return h.ms.press_button(
        h.team_id, h.team_id, post["id"], user, verb=button["verb"], data={**button["data"], **inputs}
    )


async def _workspace(h) -> dict:
    _, status = await h.admin("GET", f"/api/admin/workspaces/{WS}")
    return status["teams"]


async def test_everyone_sees_the_settings_and_an_owner_changes_them(connected):
    h = connected
    escalations = add_channel(h, h.team_id, "Escalations")
    post = await _settings_card(h)
    card = post["attachments"][0]["content"]
    assert "General" in _text(card) and "New conversations only" in _text(card)

    form = (await _press(h, post, h.adam, "Change"))["body"]["value"]
    channel_input = next(e for e in form["body"] if e.get("id") == "notification_channel_id")
    assert [c["title"] for c in channel_input["choices"]] == ["General", "Escalations"]

    saved = await _press(h, post, h.adam, "Save", form, notification_channel_id=escalations, update_type="all_activity")
    assert "Saved by Adam Admin" in _text(saved["body"]["value"])
    linked = await _workspace(h)
    assert (linked["notification_channel_id"], linked["update_type"]) == (escalations, "all_activity")
    everyone = next(r for p in h.ms.posts(h.team_id) for r in p["replies"] if r["id"] == post["id"])
    assert "Escalations" in _text(everyone["attachments"][0]["content"]), "the post updated for everyone"

    conv = h.neeto.start_conversation(WS, visitor_name="Nia", visitor_email="nia@example.com", message="hello")
    await wait_for(lambda: h.ms.posts(escalations), what="the next conversation announced in Escalations")
    assert await h.wait_channel(conv["number"])


async def test_a_member_who_is_not_an_owner_sees_them_read_only_and_cannot_save(connected):
    h = connected
    escalations = add_channel(h, h.team_id, "Escalations")
    post = await _settings_card(h)
    before = await _workspace(h)

    change = (await _press(h, post, h.ada, "Change"))["body"]["value"]
    assert "Only owners of this team can change these settings" in _text(change)
    assert not any(e.get("type", "").startswith("Input.") for e in change["body"])

    crafted = {"actions": [{"title": "Save", "verb": "settings_save", "data": {"workspace": WS}}]}
    refused = await _press(
        h, post, h.ada, "Save", crafted, notification_channel_id=escalations, update_type="all_activity"
    )
    assert "Only owners" in _text(refused["body"]["value"])
    assert await _workspace(h) == before


async def test_an_owner_cannot_pick_a_channel_of_another_team(connected):
    h = connected
    post = await _settings_card(h)
    form = (await _press(h, post, h.adam, "Change"))["body"]["value"]
    answer = await _press(
        h, post, h.adam, "Save", form, notification_channel_id="19:elsewhere@thread.tacv2", update_type="all_activity"
    )
    assert "not one of this team's channels" in _text(answer["body"]["value"])
    assert (await _workspace(h))["update_type"] == "new_conversations", "nothing saved"


async def test_settings_in_a_conversation_channel_points_to_the_notification_channel(connected):
    h = connected
    conv, channel = await h.open_conversation("Oli")
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "/settings")
    await h.reply_to(channel["id"], sent, "write /settings there")
    assert not h.from_teams(conv["id"])
