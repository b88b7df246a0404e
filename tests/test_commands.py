"""Channel commands: what each does in neetoChat and what the writer sees in the thread.
Answers come from the job loop (the same delivery engine as messages)."""

from __future__ import annotations

from sandbox.teams_fixtures import mention_entity
from tests.harness import WS, wait_for


async def test_help_lists_the_commands_and_sends_nothing_to_the_visitor(connected):
    h = connected
    conv, channel = await h.open_conversation("Lou")
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "/help")
    reply = await h.reply_to(channel["id"], sent, "/assign")
    for command in ("/close", "/note", "/assign", "/unassign", "/status", "/help"):
        assert command in reply["text"]
    await h.neeto.drain_webhooks()
    assert not h.from_teams(conv["id"])


async def test_an_unknown_command_gets_the_help_instead_of_reaching_the_visitor(connected):
    h = connected
    conv, channel = await h.open_conversation("Max")
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "/closed")
    reply = await h.reply_to(channel["id"], sent, "/closed is not a command")
    assert "/close" in reply["text"] and "/help" in reply["text"]
    assert not h.from_teams(conv["id"])
    assert h.conversation_channel(conv["number"]) is not None, "nothing was closed"


async def test_assign_me_assigns_the_agent_who_wrote_it_and_unassign_undoes_it(connected):
    h = connected
    conv, channel = await h.open_conversation("Ned")
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "/assign me")
    await wait_for(
        lambda: (h.neeto.conversation(WS, conv["id"])["assignee"] or {}).get("id") == h.ada_agent["id"],
        what="the conversation assigned to Ada",
    )
    await wait_for(lambda: any("assigned" in (p["text"] or "") for p in h.ms.posts(channel["id"])), what="the notice")
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "/unassign")
    await wait_for(lambda: h.neeto.conversation(WS, conv["id"])["assignee"] is None, what="unassigned")
    assert not h.from_teams(conv["id"])


async def test_assign_me_by_someone_who_is_not_an_agent_is_refused_with_the_reason(connected):
    h = connected
    conv, channel = await h.open_conversation("Oz")
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.olly, "/assign me")
    await h.reply_to(channel["id"], sent, "not a neetoChat agent")
    assert h.neeto.conversation(WS, conv["id"])["assignee"] is None


async def test_status_answers_with_the_conversation_card(connected):
    h = connected
    conv, channel = await h.open_conversation("Pia")
    h.neeto.assign(WS, conv["id"], agent_id=h.ada_agent["id"])
    await wait_for(lambda: any("assigned" in (p["text"] or "") for p in h.ms.posts(channel["id"])), what="assigned")
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.olly, "/status")

    def card():
        post = next(p for p in h.ms.posts(channel["id"]) if p["id"] == sent["activity"]["id"])
        return next((r for r in post["replies"] if r["attachments"]), None)

    content = str((await wait_for(card, what="the card in the thread"))["attachments"][0]["content"])
    assert "pia@example.com" in content and "Ada" in content
    assert not h.from_teams(conv["id"])


async def _post_mentioning(h, channel_id: str, author: dict, text: str, person: dict) -> dict:
    """``text`` followed by an @mention of ``person``, as Teams sends it (entity + ``<at>``)."""
    return await h.ms.user_posts(
        h.team_id,
        channel_id,
        author,
        f'{text} <at id="1">{person["name"]}</at>',
        entities=[mention_entity(person["id"], person["name"])],
    )


async def test_assign_a_mentioned_agent_is_done_by_the_writer(connected):
    h = connected
    conv, channel = await h.open_conversation("Quin")
    await _post_mentioning(h, channel["id"], h.adam, "/assign", h.ada)
    await wait_for(
        lambda: (h.neeto.conversation(WS, conv["id"])["assignee"] or {}).get("id") == h.ada_agent["id"],
        what="the conversation assigned to Ada",
    )
    (event,) = [e for e in h.neeto.events(WS) if e["event"] == "conversation.assigned"]
    assert event["data"]["actor"]["id"] == h.admin_agent["id"], "Adam assigned it, as his own agent"
    assert not h.from_teams(conv["id"])


async def test_assign_a_mentioned_person_who_is_not_an_agent_says_so(connected):
    h = connected
    conv, channel = await h.open_conversation("Rae")
    sent = await _post_mentioning(h, channel["id"], h.ada, "/assign", h.olly)
    await h.reply_to(channel["id"], sent, "Olly Outsider is not a neetoChat agent")
    assert h.neeto.conversation(WS, conv["id"])["assignee"] is None
    _, status = await h.admin("GET", f"/api/admin/workspaces/{WS}")
    assert status["deliveries"]["failed"] == 0, "a command refused is answered, not kept as undelivered"


async def test_assign_team_by_name_once_the_bridge_has_seen_the_team(connected):
    h = connected
    billing = h.neeto.add_team(WS, name="Billing")
    conv, channel = await h.open_conversation("Sam")
    sent = await h.ms.user_posts(h.team_id, channel["id"], h.ada, "/assign team billing")
    await h.reply_to(channel["id"], sent, "no neetoChat team called “billing” is known")

    other, _ = await h.open_conversation("Tia")
    h.neeto.assign(WS, other["id"], team_id=billing["id"])  # the bridge learns the team from this event
    channel_of_other = h.conversation_channel(other["number"])
    await wait_for(lambda: any("Billing" in (p["text"] or "") for p in h.ms.posts(channel_of_other["id"])), what="seen")

    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "/assign team  BILLING ")
    await wait_for(lambda: h.neeto.conversation(WS, conv["id"])["assignee"] == {**billing, "type": "team"}, what="team")


async def test_a_command_inside_a_sentence_is_a_message_to_the_visitor(connected):
    h = connected
    conv, channel = await h.open_conversation("Uli")
    await h.ms.user_posts(h.team_id, channel["id"], h.ada, "I will /close this once you confirm")
    (sent,) = await wait_for(lambda: h.from_teams(conv["id"]), what="the message in neetoChat")
    assert sent["body"] == "I will /close this once you confirm"
    assert h.neeto.conversation(WS, conv["id"])["status"] == "open"
    assert h.conversation_channel(conv["number"]) is not None
