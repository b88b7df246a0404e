"""neetoChat's teams, as far as the bridge has seen them.

The contract has no call that lists a workspace's teams, yet ``/assign team <name>`` needs
a team's id. Events carry both: a conversation assigned to a team names it in
``assignee`` (and an unassignment in ``previous_assignee``). So the bridge remembers every
team it sees there, and ``/assign team`` offers exactly those. A team nobody has assigned
a conversation to yet is unknown until someone does once in neetoChat; the reply says so.
"""

from __future__ import annotations

from typing import Any

from services.store.base import Store

ASSIGNMENT_EVENTS = ("conversation.created", "conversation.assigned", "conversation.unassigned")


async def remember_teams(store: Store, workspace_id: str, event: dict[str, Any]) -> None:
    """Store the teams an assignment event names (other events carry nothing new)."""
    if event["event"] not in ASSIGNMENT_EVENTS:
        return
    data = event["data"]
    for assignee in (data["conversation"].get("assignee"), data.get("assignee"), data.get("previous_assignee")):
        if isinstance(assignee, dict) and assignee.get("type") == "team" and assignee.get("id"):
            await store.remember_neeto_team(workspace_id, assignee["id"], assignee.get("name") or "")


async def find_team(store: Store, workspace_id: str, name: str) -> tuple[dict[str, str] | None, list[str]]:
    """The team called ``name`` (any case and spacing) as ``{"id", "name"}``, and the names
    of all known teams (for the reply when there is none)."""
    teams = await store.neeto_teams(workspace_id)
    wanted = " ".join(name.split()).casefold()
    match = next((tid for tid, tname in teams.items() if " ".join(tname.split()).casefold() == wanted), None)
    return ({"id": match, "name": teams[match]} if match else None), sorted(teams.values(), key=str.casefold)
