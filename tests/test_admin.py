"""The operator API: who may use it, what it checks, and that secrets never come back out."""

from __future__ import annotations

import pytest

from app import RUNTIME
from tests.harness import API_KEY, WEBHOOK_SECRET, WS, wait_for


def _connect_body(h, api_key: str = API_KEY) -> dict:
    return {"base_url": f"{h.neeto_url}/{WS}", "api_key": api_key, "webhook_secret": WEBHOOK_SECRET}


@pytest.mark.parametrize("token", [None, "wrong-token", "test-admin-token-012345678"])
async def test_requests_without_the_right_token_get_401_and_change_nothing(bridge, token):
    status, _ = await bridge.admin("PUT", f"/api/admin/workspaces/{WS}", _connect_body(bridge), token=token)
    assert status == 401
    status, _ = await bridge.admin("GET", f"/api/admin/workspaces/{WS}")
    assert status == 404


async def test_a_wrong_api_key_is_refused_with_the_reason(bridge):
    status, body = await bridge.admin("PUT", f"/api/admin/workspaces/{WS}", _connect_body(bridge, "wrong-key"))
    assert status == 422 and "API key" in body["error"]
    assert (await bridge.admin("GET", f"/api/admin/workspaces/{WS}"))[0] == 404


async def test_an_unreachable_neetochat_is_refused_with_the_reason(bridge):
    body = {**_connect_body(bridge), "base_url": "http://127.0.0.1:9/acme"}
    status, answer = await bridge.admin("PUT", f"/api/admin/workspaces/{WS}", body)
    assert status == 422 and "could not verify" in answer["error"]


async def test_a_key_of_another_workspace_is_refused(bridge):
    bridge.neeto.add_workspace("globex", api_key="globex-key", webhook_secret="s")
    body = {**_connect_body(bridge), "base_url": f"{bridge.neeto_url}/globex", "api_key": "globex-key"}
    status, answer = await bridge.admin("PUT", f"/api/admin/workspaces/{WS}", body)
    assert status == 422 and "globex" in answer["error"]


@pytest.mark.parametrize(
    "body",
    [{}, {"base_url": "ftp://x", "api_key": "k", "webhook_secret": "s"}, {"base_url": "http://x", "api_key": ""}],
)
async def test_incomplete_bodies_get_400(bridge, body):
    status, answer = await bridge.admin("PUT", f"/api/admin/workspaces/{WS}", body)
    assert status == 400 and answer["error"]


async def test_secrets_are_never_returned_and_are_encrypted_at_rest(bridge, tmp_path):
    status, body = await bridge.admin("PUT", f"/api/admin/workspaces/{WS}", _connect_body(bridge))
    assert status == 201
    status, again = await bridge.admin("GET", f"/api/admin/workspaces/{WS}")
    for answer in (body, again):
        text = str(answer)
        assert API_KEY not in text and WEBHOOK_SECRET not in text
    assert again["name"] == "Acme Support" and again["teams"]["linked"] is False
    record = await bridge.app[RUNTIME].ctx.store.get_workspace(WS)
    assert API_KEY not in str(record) and WEBHOOK_SECRET not in str(record)
    for path in (tmp_path / "data").glob("bridge.sqlite3*"):  # the embedded store's files
        assert API_KEY.encode() not in path.read_bytes()


async def test_linking_needs_an_authorizing_user_who_is_an_agent(bridge):
    await bridge.admin("PUT", f"/api/admin/workspaces/{WS}", _connect_body(bridge))
    link = {"team_id": bridge.team_id, "authorizing_user": {"email": "olly@partner.test"}}
    status, body = await bridge.admin("PUT", f"/api/admin/workspaces/{WS}/teams", link)
    assert status == 422 and "not an active agent" in body["error"]
    status, body = await bridge.admin("PUT", f"/api/admin/workspaces/{WS}/teams", {**link, "update_type": "sometimes"})
    assert status == 400


async def test_the_team_can_be_given_by_its_group_id(bridge):
    await bridge.admin("PUT", f"/api/admin/workspaces/{WS}", _connect_body(bridge))
    await bridge.ms.install_bot(bridge.team_id, by_user=bridge.adam)
    link = {"team_id": bridge.team["aadGroupId"], "authorizing_user": {"email": "adam@acme.test"}}
    status, body = await bridge.admin("PUT", f"/api/admin/workspaces/{WS}/teams", link)
    assert status == 200
    assert body["teams"]["team_id"] == bridge.team_id and body["teams"]["bot_installed"]


async def test_disconnecting_stops_syncing(connected):
    status, _ = await connected.admin("DELETE", f"/api/admin/workspaces/{WS}")
    assert status == 204
    body, headers = connected.signed_webhook({"id": "e", "event": "message.created"})
    async with connected.http.post(connected.webhook_url, data=body, headers=headers) as resp:
        assert resp.status == 404
    assert (await connected.admin("DELETE", f"/api/admin/workspaces/{WS}"))[0] == 404


async def test_dead_letters_are_listed_with_the_reason_and_can_be_replayed(bridge):
    h = bridge
    await h.admin("PUT", f"/api/admin/workspaces/{WS}", _connect_body(h))
    h.neeto.set_webhook_url(WS, h.webhook_url)  # events arrive before any team is linked
    conv = h.neeto.start_conversation(WS, visitor_name="Uma", visitor_email="uma@example.com", message="hello?")

    async def dead_letters():
        status, body = await h.admin("GET", f"/api/admin/workspaces/{WS}/dead-letters")
        assert status == 200
        return body["dead_letters"]

    [letter] = await wait_for(dead_letters, what="the undeliverable event")
    assert letter["conversation_id"] == conv["id"] and "not linked" in letter["reason"]
    assert "hello?" not in str(letter)  # reasons, never message bodies
    assert (await h.admin("POST", f"/api/admin/workspaces/{WS}/dead-letters/replay", {"ids": "all"}))[0] == 400
    assert (await h.admin("POST", f"/api/admin/workspaces/{WS}/dead-letters/replay", token=None))[0] == 401

    await h.ms.install_bot(h.team_id, by_user=h.adam)  # the operator fixes the cause
    link = {"team_id": h.team_id, "authorizing_user": {"email": "adam@acme.test"}}
    assert (await h.admin("PUT", f"/api/admin/workspaces/{WS}/teams", link))[0] == 200
    status, body = await h.admin("POST", f"/api/admin/workspaces/{WS}/dead-letters/replay")
    assert status == 200 and body == {"replayed": 1}
    channel = await h.wait_channel(conv["number"])
    await wait_for(lambda: h.ms.posts(channel["id"]), what="the replayed conversation's card")
    assert await dead_letters() == []
