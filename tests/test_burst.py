"""A busy hour: many conversations at once while Teams and neetoChat throttle and fail."""

from __future__ import annotations

from tests.harness import WS, wait_for

CONVERSATIONS = 20
MESSAGES = 10  # per conversation, the first one shown in the opening card


def _bodies(h, channel_id: str) -> list[str]:
    return [p["text"].split("<br>")[1] for p in h.ms.posts(channel_id) if p["text"]]


async def test_200_messages_arrive_once_and_in_order_through_429s_and_503s(connected):
    h = connected
    h.ms.fail_next(status=429, count=12, retry_after=1, path_contains="/v3/conversations", method="POST")
    h.ms.fail_next(status=503, count=12, retry_after=None, path_contains="/v3/conversations", method="POST")
    h.ms.fail_next(status=503, count=3, retry_after=None, path_contains="/channels", method="POST")
    h.neeto.fail_next(WS, status=429, count=5, retry_after=1)
    conversations = []
    for i in range(CONVERSATIONS):
        conv = h.neeto.start_conversation(
            WS, visitor_name=f"Visitor {i}", visitor_email=f"v{i}@example.com", message=f"c{i} m0"
        )
        conversations.append(conv)
    for n in range(1, MESSAGES):
        for i, conv in enumerate(conversations):
            h.neeto.visitor_writes(WS, conv["id"], f"c{i} m{n}")

    async def all_delivered():
        for conv in conversations:
            channel = h.conversation_channel(conv["number"])
            if channel is None or len(h.ms.posts(channel["id"])) < MESSAGES:
                return False
        return True

    await wait_for(all_delivered, timeout=90, what="every message in its channel")
    await h.neeto.drain_webhooks()
    for i, conv in enumerate(conversations):
        channel = h.conversation_channel(conv["number"])
        assert _bodies(h, channel["id"]) == [f"c{i} m{n}" for n in range(1, MESSAGES)]
    assert h.ms.throttled_count >= 12  # the faults really happened
    channels = [c for c in h.ms.channels(h.team_id) if c["id"] != h.team_id]
    assert len(channels) == CONVERSATIONS
    notices = [p for p in h.general_posts() if p["attachments"]]
    assert len(notices) == CONVERSATIONS
