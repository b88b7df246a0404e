"""Teams channel names for conversations.

Teams refuses names with certain characters, over 50 characters, starting with ``_`` or
``.``, or ending with ``.``; names of channels deleted in the last 30 days stay taken. The
name always starts with the conversation number as a whole word ("1042 Vera Jones") so
agents find a conversation by the number they see in neetoChat.
"""

from __future__ import annotations

import re
import unicodedata

MAX_LENGTH = 50
FORBIDDEN = set("~#%&*{}+/\\:<>?|'\",;[]")
_SPACES = re.compile(r"\s+")


def _clean(text: str) -> str:
    chars = []
    for ch in text:
        if ch in FORBIDDEN or unicodedata.category(ch).startswith("C"):
            chars.append(" ")
        else:
            chars.append(ch)
    cleaned = _SPACES.sub(" ", "".join(chars)).strip()
    return cleaned.replace("..", ".")


def channel_name(number: int, visitor_name: str | None, visitor_email: str | None, attempt: int = 0) -> str:
    """The name for conversation ``number``; ``attempt`` > 0 gives the alternatives tried
    after ``NameAlreadyExists`` ("1042 Vera Jones 2", "… 3", …)."""
    who = _clean(visitor_name or "") or _clean((visitor_email or "").split("@")[0]) or "Visitor"
    suffix = f" {attempt + 1}" if attempt else ""
    head = f"{number} "
    room = MAX_LENGTH - len(head) - len(suffix)
    who = who[:room].rstrip(" .")
    name = f"{head}{who}{suffix}".strip()
    return name.rstrip(".").lstrip("_.")
