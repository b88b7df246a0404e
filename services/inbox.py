"""Where incoming work is stored before it is acknowledged.

Both entry points (neetoChat webhooks and Teams activities) end here: the event becomes a
job whose ``partition`` is the conversation, so everything about one conversation, from
either side, is applied in arrival order. The job's ``dedupe_key`` (the webhook delivery
id, the Teams activity id) is unique in the store, which makes redeliveries harmless.
"""

from __future__ import annotations

import time
from typing import Any

from services.store.base import Job, Store


def partition_for(workspace_id: str, conversation_id: str) -> str:
    return f"{workspace_id}:{conversation_id}"


async def store_event(store: Store, workspace_id: str, event: dict[str, Any]) -> bool:
    """Store a verified neetoChat event; False if this delivery id was stored before."""
    conversation_id = event["data"]["conversation"]["id"]
    return await store.enqueue(
        Job(
            seq=0,
            kind="neetochat_event",
            workspace_id=workspace_id,
            partition=partition_for(workspace_id, conversation_id),
            dedupe_key=f"evt:{workspace_id}:{event['id']}",
            payload=event,
            created_at=time.time(),
        )
    )


def teams_work(
    kind: str,
    workspace_id: str,
    conversation_id: str,
    activity_id: str,
    payload: dict[str, Any],
    change: str = "",
) -> Job:
    """The job for what a Teams activity asks of a conversation (``teams_message``,
    ``teams_close``, ``channel_deleted``, ...). Its dedupe key is the activity id, so Teams'
    redeliveries and reconcile's finds are stored once. Edits and deletes carry the changed
    message's id as their activity id, so ``change`` (e.g. ``edit:<timestamp>``) tells them
    from the post and each other."""
    return Job(
        seq=0,
        kind=kind,
        workspace_id=workspace_id,
        partition=partition_for(workspace_id, conversation_id),
        dedupe_key=f"act:{workspace_id}:{activity_id}" + (f":{change}" if change else ""),
        payload={"conversation_id": conversation_id, "activity_id": activity_id, **payload},
        created_at=time.time(),
    )


async def store_teams_activity(store: Store, workspace_id: str, conversation_id: str, activity: dict[str, Any]) -> bool:
    """Store a new Teams message as received, for the job loop to take as the bot's turn
    (``bots/channel_inbox.py``); False if this activity was stored before. Its key is the
    one the turn's work has (``teams_work``): the job becomes that work when it runs, so a
    message reconcile found meanwhile is still stored, and delivered, once."""
    job = teams_work("teams_activity", workspace_id, conversation_id, activity["id"], {"activity": activity})
    return await store.enqueue(job)


async def store_link_confirmation(store: Store, workspace_id: str, link_id: str) -> bool:
    return await store.enqueue(
        Job(
            seq=0,
            kind="link_confirmation",
            workspace_id=workspace_id,
            partition=partition_for(workspace_id, "_workspace"),
            dedupe_key=f"link:{workspace_id}:{link_id}",
            payload={"link_id": link_id},
            created_at=time.time(),
        )
    )
