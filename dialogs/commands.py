"""Channel commands typed in a conversation channel.

A message that starts with ``/word`` is a command (any case, surrounding spaces and the
bot's @mention allowed); anything else, "please /close this" included, is a message to the
visitor. A ``/word`` the bridge does not know gets the help text instead of reaching the
visitor, and so does a known command used the wrong way (``/close now``): a typo must not
send half a command to a customer.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

_COMMAND = re.compile(r"^/(?P<name>[a-z]+)(?:\s+(?P<args>.*))?$", re.IGNORECASE | re.DOTALL)

# name → description; the manifest's commandLists are built from this
# (manifest/build.py) and /help lists it.
KNOWN = {
    "close": "Close this conversation in neetoChat and delete its channel",
    "note": "/note <text>: an internal note in neetoChat; colleagues see it, the visitor never does",
    "assign": "/assign me, /assign @person or /assign team <name>: assign this conversation in neetoChat "
    "(people must be neetoChat agents)",
    "unassign": "Unassign this conversation",
    "status": "Show this conversation's card: visitor, assignee, status, last reply",
    "settings": "In the notification channel: the integration's settings (team owners can change them)",
    "health": "In the notification channel: check the integration's setup, each problem with its fix",
    "help": "List these commands",
}


@dataclass(frozen=True)
class Command:
    name: str
    args: str
    problem: str | None = None  # set on "help": why the help is shown instead


def parse_command(text: str) -> Command | None:
    """The command in ``text`` (mention already removed), or None for a normal message."""
    match = _COMMAND.match(text.strip())
    if not match:
        return None
    name = match.group("name").lower()
    args = (match.group("args") or "").strip()
    if name not in KNOWN:
        return Command("help", "", f"/{name} is not a command")
    if name in ("close", "unassign", "status", "settings", "health", "help") and args:
        return Command("help", "", f"/{name} takes nothing after it")
    if name == "assign" and (not args or args.lower() == "team"):
        return Command("help", "", "use /assign me, /assign @person or /assign team <name>")
    return Command(name, args)


def channel_work(text: str) -> tuple[str, dict[str, Any]]:
    """The job a message in a conversation channel becomes: its kind and the payload fields
    the command adds (the live activity and a message recovered by reconcile both go
    through here, so both are understood the same way)."""
    command = parse_command(text)
    if command is None:
        return "teams_message", {}
    if command.name == "note":
        return "teams_message", {"text": command.args, "internal": True}
    if command.name == "close":
        return "teams_close", {}
    return "teams_command", {"command": command.name, "args": command.args, "problem": command.problem}


def help_html(problem: str | None = None) -> str:
    """The commands, as the bot answers /help (and unknown commands)."""
    lines = [f"<b>{problem}.</b>"] if problem else []
    lines.append("Commands in a conversation channel (anything else is sent to the visitor):")
    lines += [f"<b>/{name}</b> — {html.escape(description)}" for name, description in KNOWN.items()]
    return "<br>".join(lines)
