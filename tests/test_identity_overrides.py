"""Identity overrides: who a Teams user is in neetoChat when the email match is wrong or
missing (services/identities.py), set through the operator API and the settings page, and
used by everything that acts as a Teams user: messages, /assign, the card buttons, reconcile.

In the sandbox world Ada is an agent by email, Olly is not (his email is a partner's),
and Adam is the authorizing user.
"""

from __future__ import annotations

import html
import logging
import re
import uuid

from app import RUNTIME
from tests import test_signin
from tests.harness import WS, wait_for
from tests.test_card_actions import _press, _started
from tests.test_commands import _post_mentioning
from tests.test_reconcile import _reconcile

signin = test_signin.signin  # the fixture (settings page tests), shared with tests/test_signin.py

IDENTITIES = f"/api/admin/workspaces/{WS}/identities"


async def _override(h, person: dict, agent_id: str | None) -> dict:
    status, body = await h.admin("PUT", IDENTITIES, {"aad_object_id": person["aadObjectId"], "agent_id": agent_id})
    assert status == 200, body
    return body


def _assignee(h, conv) -> str | None:
    return (h.neeto.conversation(WS, conv["id"])["assignee"] or {}).get("id")


async def test_a_non_agent_overridden_to_an_agent_writes_and_is_assigned_as_that_agent(connected):
    h = connected
    saved = await _override(h, h.olly, h.ada_agent["id"])
    assert saved["writes_as"] == "agent" and saved["agent_id"] == h.ada_agent["id"]
    conv, channel = await h.open_conversation("Vic")
    await h.ms.user_posts(h.team_id, channel["id"], h.olly, "Your parcel left today")
    (msg,) = await wait_for(lambda: h.from_teams(conv["id"]), what="Olly's message in neetoChat")
    # posted with Ada's agent id: neetoChat (and so the visitor) shows Ada's own name
    assert msg["sender"] == {"type": "agent", "id": h.ada_agent["id"], "name": "Ada Agent", "email": "ada@acme.test"}
    assert msg["body"] == "Your parcel left today"
    assert _assignee(h, conv) == h.ada_agent["id"]


async def test_the_card_button_uses_the_override(connected):
    h = connected
    await _override(h, h.olly, h.ada_agent["id"])
    conv, _, notice = await _started(h, "Yan")
    result = await _press(h, notice, "Assign to me", h.olly)
    assert result["body"]["type"] == "application/vnd.microsoft.card.adaptive", result
    assert _assignee(h, conv) == h.ada_agent["id"]


async def test_assign_commands_use_the_override(connected):
    h = connected
    await _override(h, h.olly, h.ada_agent["id"])
    # /assign me by Olly: Ada
    conv, channel = await h.open_conversation("Wes")
    await h.ms.user_posts(h.team_id, channel["id"], h.olly, "/assign me")
    await wait_for(lambda: _assignee(h, conv) == h.ada_agent["id"], what="/assign me as Ada")
    # /assign @Olly by Adam: Ada, assigned by Adam's agent
    conv, channel = await h.open_conversation("Xia")
    await _post_mentioning(h, channel["id"], h.adam, "/assign", h.olly)
    await wait_for(lambda: _assignee(h, conv) == h.ada_agent["id"], what="/assign @Olly as Ada")
    event = [e for e in h.neeto.events(WS) if e["event"] == "conversation.assigned"][-1]
    assert event["data"]["actor"]["id"] == h.admin_agent["id"]


async def test_an_agent_overridden_to_the_authorizing_user_writes_as_adam(connected):
    h = connected
    saved = await _override(h, h.ada, None)
    assert saved["writes_as"] == "authorizing_user" and saved["agent_id"] is None
    conv, channel = await h.open_conversation("Zed")
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "Hello from the team")
    (msg,) = await wait_for(lambda: h.from_teams(conv["id"]), what="Ada's message in neetoChat")
    assert msg["sender"]["id"] == h.admin_agent["id"] and msg["sender"]["name"] == "Adam Admin"
    assert _assignee(h, conv) == h.admin_agent["id"]
    # she counts as having no agent of her own: /assign me and the buttons refuse her
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "/assign me")
    await h.reply_to(channel["id"], sent, "not a neetoChat agent")
    h.neeto.unassign(WS, conv["id"])
    notice = next(p for p in h.general_posts() if p["attachments"])  # the card of this (only) conversation
    result = await _press(h, notice, "Assign to me", h.ada)
    assert "Only neetoChat agents" in result["body"]["value"]
    assert _assignee(h, conv) is None

    # removed: back to the email match
    status, _ = await h.admin("DELETE", f"{IDENTITIES}/{h.ada['aadObjectId']}")
    assert status == 204
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "Me again")
    await wait_for(lambda: len(h.from_teams(conv["id"])) == 2, what="the second message")
    assert h.from_teams(conv["id"])[-1]["sender"]["id"] == h.ada_agent["id"]


async def test_an_override_to_a_deactivated_agent_falls_back_to_the_authorizing_user(connected, caplog):
    h = connected
    await _override(h, h.olly, h.ada_agent["id"])
    h.neeto.set_agent_active(WS, h.ada_agent["id"], False)  # Ada leaves; nobody updates the override
    conv, channel = await h.open_conversation("Bea")
    with caplog.at_level(logging.WARNING, logger="services.identities"):
        await h.ms.user_posts(h.team_id, channel["id"], h.olly, "Still here for you")
        (msg,) = await wait_for(lambda: h.from_teams(conv["id"]), what="Olly's message in neetoChat")
    assert msg["sender"]["id"] == h.admin_agent["id"], "the message is not lost: Adam writes it"
    assert _assignee(h, conv) == h.admin_agent["id"]
    warning = next(r for r in caplog.records if r.name == "services.identities")
    assert h.ada_agent["id"] in warning.getMessage() and "authorizing user" in warning.getMessage()
    _, status = await h.admin("GET", f"/api/admin/workspaces/{WS}")
    assert status["deliveries"]["failed"] == 0
    # and a new override to her is refused now
    status, body = await h.admin(
        "PUT", IDENTITIES, {"aad_object_id": h.ada["aadObjectId"], "agent_id": h.ada_agent["id"]}
    )
    assert status == 422 and "not an active agent" in body["error"]


async def test_a_message_recovered_by_reconcile_is_written_as_the_override(connected):
    h = connected
    await _override(h, h.olly, h.ada_agent["id"])
    conv, channel = await h.open_conversation("Cal")
    lost = await h.ms.user_posts(h.team_id, channel["id"], h.olly, "Sent while Teams was not delivering", deliver=False)
    assert lost["status"] is None
    assert await _reconcile(h) == 1
    (msg,) = await wait_for(lambda: h.from_teams(conv["id"]), what="the healed message")
    assert msg["external_id"] == lost["activity"]["id"]
    assert msg["sender"]["id"] == h.ada_agent["id"]


async def test_operator_api_lists_sets_and_refuses(connected):
    h = connected
    status, body = await h.admin("GET", IDENTITIES)
    assert status == 200 and body == {"identities": []}
    await _override(h, h.olly, h.ada_agent["id"])
    status, body = await h.admin(
        "PUT",
        IDENTITIES,
        {
            "aad_object_id": h.ada["aadObjectId"].upper(),
            "agent_id": None,
            "teams_name": "Ada Agent",
            "teams_email": "ADA@acme.test",
        },
    )
    assert status == 200 and body["aad_object_id"] == h.ada["aadObjectId"]  # the GUID as Teams sends it
    status, body = await h.admin("GET", IDENTITIES)
    assert [(i["aad_object_id"], i["agent_id"], i["writes_as"], i["teams_name"]) for i in body["identities"]] == [
        (h.olly["aadObjectId"], h.ada_agent["id"], "agent", ""),  # by Teams name: none given for Olly
        (h.ada["aadObjectId"], None, "authorizing_user", "Ada Agent"),
    ]
    before = body

    olly = h.olly["aadObjectId"]
    refusals = [
        ("PUT", IDENTITIES, {"aad_object_id": olly, "agent_id": "agt-nobody"}, 422, "not an active agent"),
        ("PUT", IDENTITIES, {"aad_object_id": olly}, 400, "agent_id is required"),
        ("PUT", IDENTITIES, {"aad_object_id": olly, "agent_id": 7}, 400, "agent_id"),
        ("PUT", IDENTITIES, {"aad_object_id": "olly@partner.test", "agent_id": None}, 400, "GUID"),
        ("PUT", IDENTITIES, {"agent_id": None}, 400, "GUID"),
        ("PUT", IDENTITIES, [olly], 400, "JSON object"),
        ("DELETE", f"{IDENTITIES}/not-a-guid", None, 400, "GUID"),
        ("DELETE", f"{IDENTITIES}/{uuid.uuid4()}", None, 404, "no identity override"),
        ("GET", "/api/admin/workspaces/nope/identities", None, 404, "unknown workspace"),
        ("PUT", "/api/admin/workspaces/nope/identities", {"aad_object_id": olly, "agent_id": None}, 404, "unknown"),
        ("DELETE", f"/api/admin/workspaces/nope/identities/{olly}", None, 404, "unknown workspace"),
    ]
    for method, path, payload, expected, reason in refusals:
        status, body = await h.admin(method, path, payload)
        assert status == expected and reason in body["error"], (method, path, payload, status, body)
    for method in ("GET", "PUT", "DELETE"):
        path = IDENTITIES if method != "DELETE" else f"{IDENTITIES}/{olly}"
        status, _ = await h.admin(method, path, {"aad_object_id": olly, "agent_id": None}, token=None)
        assert status == 401
        status, _ = await h.admin(method, path, {"aad_object_id": olly, "agent_id": None}, token="wrong")
        assert status == 401
    status, body = await h.admin("GET", IDENTITIES)
    assert body == before, "nothing refused changed anything"

    # a disconnected workspace takes its overrides with it
    assert (await h.admin("DELETE", f"/api/admin/workspaces/{WS}"))[0] == 204
    assert await h.app[RUNTIME].ctx.store.identity_overrides(WS) == []


# ---------------------------------------------------------------- the settings page


def _person_select(page: str, person: dict) -> str:
    match = re.search(rf'<select name="person:{person["aadObjectId"]}"[^>]*>(.*?)</select>', page, re.S)
    assert match, page
    return match.group(1)


def _chosen(page: str, person: dict) -> str:
    """The value selected in the person's "Writes in neetoChat as" select."""
    match = re.search(r'<option value="([^"]*)" selected>', _person_select(page, person))
    assert match, page
    return html.unescape(match.group(1))


def _row(page: str, person: dict) -> str:
    rows = [r for r in re.findall(r"<tr>(.*?)</tr>", page, re.S) if f'name="person:{person["aadObjectId"]}"' in r]
    assert len(rows) == 1, page
    return rows[0]


async def test_settings_page_people_round_trip(signin):
    s, h = signin, signin.h
    await s.connect_workspace()
    await s.install()
    store = s.store
    async with s.browser() as browser:
        page = await s.link_team(browser)
        assert "People" in page
        # each member with the agent their email matches, and "match by email" chosen
        assert "<td>Ada Agent</td>" in _row(page, h.ada) and "<td>—</td>" in _row(page, h.olly)
        assert "Olly Outsider" in _row(page, h.olly) and "olly@partner.test" in _row(page, h.olly)
        for person in (h.adam, h.ada, h.olly):
            assert _chosen(page, person) == ""
        assert f'value="{h.ada_agent["id"]}"' in _person_select(page, h.olly)

        fields = {
            f"person:{h.olly['aadObjectId']}": h.ada_agent["id"],
            f"person:{h.ada['aadObjectId']}": "authorizing_user",
            f"person:{h.adam['aadObjectId']}": "",
        }
        status, page = await s.post(browser, "/teams/people", page, **fields)
        assert status == 200 and "People saved" in page, page
        assert _chosen(page, h.olly) == h.ada_agent["id"] and _chosen(page, h.ada) == "authorizing_user"
        olly = await store.identity_override(WS, h.olly["aadObjectId"])
        assert (olly.agent_id, olly.teams_name, olly.teams_email) == (
            h.ada_agent["id"],
            "Olly Outsider",
            "olly@partner.test",
        )
        assert (await store.identity_override(WS, h.ada["aadObjectId"])).agent_id is None
        assert await store.identity_override(WS, h.adam["aadObjectId"]) is None
        saved = await store.identity_overrides(WS)

        # refusals change nothing: an unknown or inactive agent, someone not in the team, no CSRF token
        inactive = h.neeto.add_agent(WS, name="Ivy Inactive", email="ivy@acme.test", active=False)
        stranger = str(uuid.uuid4())
        for bad, reason in (
            ({f"person:{h.olly['aadObjectId']}": "agt-nobody"}, "not an active agent"),
            ({f"person:{h.adam['aadObjectId']}": inactive["id"]}, "not an active agent"),
            (
                {f"person:{h.adam['aadObjectId']}": h.ada_agent["id"], f"person:{stranger}": h.ada_agent["id"]},
                "not a member of the team",
            ),
            ({f"person:{h.adam['aadObjectId']}": h.ada_agent["id"], "person:not-a-guid": ""}, "GUID"),
        ):
            status, text = await s.post(browser, "/teams/people", page, **bad)
            assert status == 400 and reason in text, (bad, text)
        status, text = await s.post(
            browser,
            "/teams/people",
            None,
            csrf_token="forged",
            **{f"person:{h.adam['aadObjectId']}": h.ada_agent["id"]},
        )
        assert status == 403
        assert await store.identity_overrides(WS) == saved

        # what was saved is what Teams messages use
        conv = h.neeto.start_conversation(WS, visitor_name="Dot", visitor_email="dot@example.com", message="hi")
        channel = await h.wait_channel(conv["number"])
        await h.ms.user_posts(h.team_id, channel["id"], h.olly, "Hello from Olly")
        (msg,) = await wait_for(lambda: h.from_teams(conv["id"]), what="Olly's message")
        assert msg["sender"]["name"] == "Ada Agent"

        # back to the email match; Ada's override stays
        status, page = await s.post(browser, "/teams/people", page, **{f"person:{h.olly['aadObjectId']}": ""})
        assert status == 200 and _chosen(page, h.olly) == ""
        assert await store.identity_override(WS, h.olly["aadObjectId"]) is None
        assert _chosen(page, h.ada) == "authorizing_user"

        # someone who left the team keeps their row (and override) until it is removed
        h.ms.team(h.team_id).members.remove(h.ada["aadObjectId"])
        async with browser.get(f"{h.bridge_url}/teams/settings?workspace={WS}") as resp:
            page = await resp.text()
        assert "not in the team any more" in _row(page, h.ada) and _chosen(page, h.ada) == "authorizing_user"
        status, page = await s.post(browser, "/teams/people", page, **{f"person:{h.ada['aadObjectId']}": ""})
        assert status == 200 and f"person:{h.ada['aadObjectId']}" not in page
        assert await store.identity_overrides(WS) == []


async def test_settings_page_shows_an_override_to_a_deactivated_agent(signin):
    s, h = signin, signin.h
    await s.connect_workspace()
    await s.install()
    async with s.browser() as browser:
        page = await s.link_team(browser)
        await s.store.set_identity_override(WS, h.olly["aadObjectId"], h.ada_agent["id"], "Olly Outsider")
        h.neeto.set_agent_active(WS, h.ada_agent["id"], False)
        async with browser.get(f"{h.bridge_url}/teams/settings?workspace={WS}") as resp:
            page = await resp.text()
        assert _chosen(page, h.olly) == h.ada_agent["id"]
        assert "no longer active: writes as Adam Admin" in _person_select(page, h.olly)
        assert "<td>—</td>" in _row(page, h.ada)  # her email matches no active agent now
        # saving the form unchanged keeps it (only changes are checked)
        status, page = await s.post(
            browser, "/teams/people", page, **{f"person:{h.olly['aadObjectId']}": h.ada_agent["id"]}
        )
        assert status == 200 and "People saved" in page
        assert (await s.store.identity_override(WS, h.olly["aadObjectId"])).agent_id == h.ada_agent["id"]
