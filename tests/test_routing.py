"""Routing rules: a conversation's channel and notices go to another team when a rule
matches (a pre-chat answer, the neetoChat team it is assigned to); first match wins, else
the linked team. What exists stays where it was created."""

from __future__ import annotations

from tests.harness import WS, wait_for
from tests.test_signin import add_channel


async def _second_team(h) -> dict:
    """A "Billing" team with the app installed (as an admin would add it)."""
    team = h.ms.add_team(name="Billing", members=[h.adam, h.ada, h.olly])
    assert all(200 <= s < 300 for s in await h.ms.install_bot(team["id"], by_user=h.adam))
    return team


def _channel_in(h, team_id: str, number: int) -> dict | None:
    return next((c for c in h.ms.channels(team_id) if c["displayName"].split(" ")[0] == str(number)), None)


async def _routes(h, routes) -> tuple[int, dict]:
    return await h.admin("PUT", f"/api/admin/workspaces/{WS}/routes", {"routes": routes})


async def test_a_prechat_answer_routes_the_channel_and_notices_to_another_team(connected):
    h = connected
    billing = await _second_team(h)
    desk = add_channel(h, billing["id"], "Billing desk")
    status, body = await _routes(
        h,
        [
            {"when": {"prechat": {"question": "Department", "answer": "Billing"}}, "team_id": billing["id"]},
            {"when": {"neeto_team": "Sales"}, "team_id": h.team_id},
        ],
    )
    assert status == 200 and body["teams"]["routes"][0]["team_id"] == billing["id"]
    status, body = await _routes(
        h,
        [
            {
                "when": {"prechat": {"question": "Department", "answer": "Billing"}},
                "team_id": billing["aadGroupId"],  # either id of the team works
                "notification_channel_id": desk,
            }
        ],
    )
    assert status == 200

    routed = h.neeto.start_conversation(
        WS,
        visitor_name="Rita",
        visitor_email="rita@example.com",
        message="my invoice is wrong",
        prechat=[{"question": "department", "answer": " billing "}],
    )
    plain = h.neeto.start_conversation(WS, visitor_name="Sam", visitor_email="sam@example.com", message="hello")
    channel = await wait_for(lambda: _channel_in(h, billing["id"], routed["number"]), what="the channel in Billing")
    await wait_for(lambda: _channel_in(h, h.team_id, plain["number"]), what="the other in the linked team")
    assert _channel_in(h, h.team_id, routed["number"]) is None
    await wait_for(lambda: [p for p in h.ms.posts(desk) if p["attachments"]], what="the card in Billing desk")
    cards = await wait_for(lambda: [p for p in h.general_posts() if p["attachments"]], what="Sam's card in General")
    assert len(cards) == 1 and "sam@example.com" in str(cards[0]["attachments"]), "only Sam's card in the linked team"

    # both directions work in the routed channel
    h.neeto.visitor_writes(WS, routed["id"], "it says 120 instead of 100")
    await wait_for(lambda: any("120" in (p["text"] or "") for p in h.ms.posts(channel["id"])), what="to Teams")
    await h.ms.user_posts(billing["id"], channel["id"], h.ada, "Fixed, sorry!")
    (sent,) = await wait_for(lambda: h.from_teams(routed["id"]), what="to neetoChat")
    assert sent["sender"]["id"] == h.ada_agent["id"]


async def test_reassigning_moves_nothing_but_later_notices_follow_the_rule(bridge):
    h = bridge
    await h.connect(update_type="all_activity")
    billing = await _second_team(h)
    sales = h.neeto.add_team(WS, name="Billing")
    status, _ = await _routes(h, [{"when": {"neeto_team": "billing"}, "team_id": billing["id"]}])
    assert status == 200
    conv = h.neeto.start_conversation(WS, visitor_name="Tom", visitor_email="tom@example.com", message="hi")
    await wait_for(lambda: _channel_in(h, h.team_id, conv["number"]), what="the channel in the linked team")

    h.neeto.assign(WS, conv["id"], team_id=sales["id"])
    await wait_for(
        lambda: any("Billing" in (p["text"] or "") for p in h.ms.posts(billing["id"])),
        what="the assignment notice in Billing's General",
    )
    assert _channel_in(h, billing["id"], conv["number"]) is None, "the channel was not moved"
    assert _channel_in(h, h.team_id, conv["number"]) is not None


async def test_invalid_rules_are_refused_with_the_reason_and_change_nothing(connected):
    h = connected
    not_installed = h.ms.add_team(name="Elsewhere", members=[h.adam])
    cases = [
        ("nope", 400, "routes must be a list"),
        ([{"team_id": h.team_id}], 400, "needs a 'when'"),
        ([{"when": {"colour": "red"}, "team_id": h.team_id}], 400, "'when' must be"),
        ([{"when": {"neeto_team": "X"}}], 400, "team_id is required"),
        ([{"when": {"neeto_team": "X"}, "team_id": not_installed["id"]}], 422, "not installed"),
        (
            [{"when": {"neeto_team": "X"}, "team_id": h.team_id, "notification_channel_id": "19:x@thread.tacv2"}],
            422,
            "not a channel of that team",
        ),
    ]
    for routes, status, reason in cases:
        got, body = await _routes(h, routes)
        assert (got, reason in body["error"]) == (status, True), (routes, body)
    _, status = await h.admin("GET", f"/api/admin/workspaces/{WS}")
    assert status["teams"]["routes"] == []


async def test_a_routed_team_without_the_bot_holds_its_conversations_until_the_bot_is_back(connected):
    h = connected
    billing = await _second_team(h)
    rule = {"when": {"prechat": {"question": "Department", "answer": "Billing"}}, "team_id": billing["id"]}
    assert (await _routes(h, [rule]))[0] == 200
    await h.ms.uninstall_bot(billing["id"], by_user=h.adam)
    conv = h.neeto.start_conversation(
        WS, visitor_name="Uma", visitor_email="uma@example.com", message="refund?",
        prechat=[{"question": "Department", "answer": "Billing"}],
    )

    async def held():
        _, status = await h.admin("GET", f"/api/admin/workspaces/{WS}")
        return status["deliveries"]["failed"] == 1

    await wait_for(held, what="the conversation held as failed")
    _, letters = await h.admin("GET", f"/api/admin/workspaces/{WS}/dead-letters")
    assert "removed from team Billing" in letters["dead_letters"][0]["reason"]
    assert _channel_in(h, h.team_id, conv["number"]) is None, "not sent to the linked team instead"

    await h.ms.install_bot(billing["id"], by_user=h.adam)  # added back: what waited goes now
    await wait_for(lambda: _channel_in(h, billing["id"], conv["number"]), what="the channel in Billing")
