"""Routing rules on the settings page (``POST /teams/routes``): added through the operator
API's own checks (``services.routing.checked_routes``), listed in order with team and channel
names, moved and removed; a refused rule is sent back with the reason and nothing changes.

The bridge, the Microsoft sandbox and the sign-in are ``tests/test_signin.py``'s fixture.
"""

from __future__ import annotations

import re

from services.store.base import Installation
from tests import test_signin
from tests.harness import WS, wait_for
from tests.test_routing import _channel_in, _second_team
from tests.test_signin import SignIn, add_channel

signin = test_signin.signin  # the fixture (settings page tests), shared with tests/test_signin.py


async def _linked_with_billing(s: SignIn, browser) -> tuple[str, dict, str]:
    """Support linked, the app in a second team "Billing" with a "Billing desk" channel: the
    settings page, Billing, and the desk's channel id."""
    await s.connect_workspace()
    await s.install()
    billing = await _second_team(s.h)
    desk = add_channel(s.h, billing["id"], "Billing desk")
    return await s.link_team(browser), billing, desk


async def _add(s: SignIn, browser, page: str, **fields: str) -> tuple[int, str]:
    return await s.post(browser, "/teams/routes", page, action="add", **fields)


def _rule_form(page: str, position: int) -> dict[str, str]:
    """The fields of a listed rule's buttons (its position and digest)."""
    match = re.search(rf'name="position" value="{position}">\s*<input type="hidden" name="rule" value="(\w+)"', page)
    assert match, page
    return {"position": str(position), "rule": match.group(1)}


def _listed(page: str) -> list[str]:
    """The rules table's rows as text, in order."""
    table = re.search(r'<table class="rules">(.*?)</table>', page, re.S)
    rows = re.findall(r"<tr>\s*<td>(.*?)</form>", table.group(1), re.S) if table else []
    return [" ".join(re.sub(r"<[^>]+>", " ", row).split()) for row in rows]


async def _routes(s: SignIn) -> list[dict]:
    return (await s.workspace()).routes or []


async def test_rules_are_added_listed_moved_and_removed(signin):
    s, h = signin, signin.h
    async with s.browser() as browser:
        page, billing, desk = await _linked_with_billing(s, browser)
        assert "No rules: every conversation goes to the linked team." in page
        offered = re.search(r'<select id="route_team_id" name="team_id">(.*?)</select>', page, re.S).group(1)
        assert re.findall(r'<option value="([^"]*)"', offered) == ["", billing["id"], h.team_id]  # by name

        status, page = await _add(
            s,
            browser,
            page,
            kind="prechat",
            question="Department",
            answer=" Billing ",
            team_id=billing["id"],
            channel="billing DESK",
        )
        assert status == 200 and "Routing saved." in page, page
        status, page = await _add(s, browser, page, kind="neeto_team", neeto_team="Sales", team_id=h.team_id)
        assert status == 200 and "Routing saved." in page, page
        assert await _routes(s) == [
            {
                "when": {"prechat": {"question": "Department", "answer": "Billing"}},
                "team_id": billing["id"],
                "notification_channel_id": desk,
            },
            {"when": {"neeto_team": "Sales"}, "team_id": h.team_id, "notification_channel_id": None},
        ]
        assert _listed(page) == [
            "1 pre-chat answer Department = Billing Billing , notices in Billing desk ↓ Remove",
            "2 assigned to neetoChat team Sales Support , notices in General ↑ Remove",
        ]
        # the operator API sees what the page saved
        _, status_body = await h.admin("GET", f"/api/admin/workspaces/{WS}")
        assert status_body["teams"]["routes"] == await _routes(s)

        # and the rules route: a Billing pre-chat answer gets its channel in Billing
        conv = h.neeto.start_conversation(
            WS,
            visitor_name="Rita",
            visitor_email="rita@example.com",
            message="my invoice",
            prechat=[{"question": "Department", "answer": "billing"}],
        )
        await wait_for(lambda: _channel_in(h, billing["id"], conv["number"]), what="the channel in Billing")

        status, page = await s.post(browser, "/teams/routes", page, action="up", **_rule_form(page, 2))
        assert status == 200 and [r["team_id"] for r in await _routes(s)] == [h.team_id, billing["id"]]
        assert _listed(page)[0].startswith("1 assigned to neetoChat team Sales")
        stale = _rule_form(page, 2)
        status, page = await s.post(browser, "/teams/routes", page, action="remove", **_rule_form(page, 1))
        assert status == 200 and [r["team_id"] for r in await _routes(s)] == [billing["id"]]
        assert _listed(page) == ["1 pre-chat answer Department = Billing Billing , notices in Billing desk Remove"]

        # a form from before the rules changed acts on nothing
        for fields in (stale, {"position": "1", "rule": "0" * 16}, {"position": "7", "rule": stale["rule"]}):
            status, text = await s.post(browser, "/teams/routes", page, action="remove", **fields)
            assert status == 409 and "the rules changed since this page was loaded" in text, text
        assert len(await _routes(s)) == 1

        status, page = await s.post(browser, "/teams/routes", page, action="remove", **_rule_form(page, 1))
        assert status == 200 and await _routes(s) == [] and "No rules" in page


async def test_bad_rules_are_refused_with_the_reason_and_change_nothing(signin):
    s, h = signin, signin.h
    elsewhere = h.ms.add_team(name="Elsewhere", members=[h.adam])  # the app is not in it
    async with s.browser() as browser, s.browser() as stranger:
        page, billing, desk = await _linked_with_billing(s, browser)
        await s.store.put_installation(
            Installation(
                "19:other@thread.tacv2",
                "other-group",
                "other-tenant",
                "https://smba/",
                "19:other@thread.tacv2",
                name="Other org",
            )
        )
        assert "Other org" not in page and "Elsewhere" not in page  # not offered
        status, page = await _add(
            s, browser, page, kind="prechat", question="Department", answer="Billing", team_id=billing["id"]
        )
        assert status == 200
        before = await _routes(s)
        team = {"kind": "neeto_team", "neeto_team": "Sales"}
        cases = [
            (
                {"kind": "neeto_team", "neeto_team": " ", "team_id": h.team_id},
                400,
                "enter the name of the neetoChat team",
            ),
            (
                {"kind": "prechat", "question": "Department", "team_id": h.team_id},
                400,
                "pre-chat question and the answer",
            ),
            ({"neeto_team": "Sales", "team_id": h.team_id}, 400, "choose what the rule matches"),
            ({**team, "team_id": ""}, 400, "choose the team"),
            ({**team, "team_id": elsewhere["id"]}, 422, "rule 2: the bot is not installed in team"),
            (
                {**team, "team_id": "19:other@thread.tacv2"},
                422,
                "rule 2: team 19:other@thread.tacv2 belongs to another Microsoft 365 organization",
            ),
            (
                {**team, "team_id": h.team_id, "channel": "Nowhere"},
                422,
                "rule 2: Nowhere is not a channel of that team",
            ),
            ({**team, "team_id": h.team_id, "channel": "Billing desk"}, 422, "is not a channel of that team"),
            ({**team, "team_id": h.team_id, "channel": desk}, 422, "is not a channel of that team"),
        ]
        for fields, status, reason in cases:
            got, text = await _add(s, browser, page, **fields)
            assert (got, reason in text) == (status, True), (fields, text)
            assert await _routes(s) == before
        # the refused form keeps what was typed
        assert f'name="channel" value="{desk}"' in text and 'name="neeto_team" value="Sales"' in text
        assert re.search(rf'<option value="{re.escape(h.team_id)}" selected>Support</option>', text)
        got, text = await s.post(browser, "/teams/routes", page, action="dance", **_rule_form(page, 1))
        assert got == 400

        # without the page's CSRF token, or without the authorizing sign-in: a 403, nothing changes
        for token in (None, "forged"):
            got, text = await _add(s, browser, None, csrf_token=token, **team, team_id=h.team_id)
            assert got == 403 and "form has expired" in text
        got, _ = await _add(s, stranger, None, csrf_token="x", **team, team_id=h.team_id)
        assert got == 403
        assert await _routes(s) == before


async def test_a_rule_whose_team_lost_the_bot_is_shown_and_can_still_be_removed(signin):
    s, h = signin, signin.h
    async with s.browser() as browser:
        page, billing, _ = await _linked_with_billing(s, browser)
        status, page = await _add(s, browser, page, kind="neeto_team", neeto_team="Billing", team_id=billing["id"])
        assert status == 200
        await h.ms.uninstall_bot(billing["id"], by_user=h.adam)
        await wait_for(lambda: _gone(s, billing["id"]), what="the bridge to learn the app was removed")
        async with browser.get(f"{h.bridge_url}/teams/settings?workspace={WS}") as resp:
            page = await resp.text()
        assert "the bot is not in this team" in _listed(page)[0]
        assert f'<option value="{billing["id"]}"' not in page  # not offered any more
        # a new rule is checked with the others: refused, saying which one is stale
        status, text = await _add(s, browser, page, kind="neeto_team", neeto_team="Sales", team_id=h.team_id)
        assert status == 422 and "rule 1: the bot is not installed in team" in text
        assert len(await _routes(s)) == 1
        status, page = await s.post(browser, "/teams/routes", page, action="remove", **_rule_form(page, 1))
        assert status == 200 and await _routes(s) == []


async def _gone(s: SignIn, team_id: str) -> bool:
    inst = await s.store.get_installation(team_id)
    return inst is not None and not inst.installed
