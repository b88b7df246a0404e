"""Channel commands typed in a conversation channel.

Only a message that *is* a known command counts: ``/close`` (any case, surrounding spaces
and the bot's @mention allowed). "please /close this" is a message to the visitor.
``/note <text>`` is an internal note: saved in neetoChat, never shown to the visitor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_COMMAND = re.compile(r"^/(?P<name>[a-z]+)(?:\s+(?P<args>.*))?$", re.IGNORECASE | re.DOTALL)

# name → description; the manifest's commandLists are built from this (manifest/build.py).
KNOWN = {
    "close": "Close this conversation in neetoChat and delete its channel",
    "note": "Save an internal note in neetoChat: your colleagues see it, the visitor never does",
}


@dataclass(frozen=True)
class Command:
    name: str
    args: str


def parse_command(text: str) -> Command | None:
    """The command in ``text`` (mention already removed), or None for a normal message."""
    match = _COMMAND.match(text.strip())
    if not match or match.group("name").lower() not in KNOWN:
        return None
    name = match.group("name").lower()
    args = (match.group("args") or "").strip()
    if name == "close" and args:
        return None  # "/close now please" reads as prose; the command takes no arguments
    return Command(name, args)
