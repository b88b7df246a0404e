"""Logs an operator can follow: every line about a workspace, conversation, job, webhook
delivery or Teams activity carries its ids, without each log call passing them.

The entry points set the ids in context variables (the job loop for a job, the webhook
receiver for a delivery, the activity handler for an activity); a logging filter copies
them onto every record made while they are set, so that even a library's warning in the
middle of a job says which conversation it was about. Lines are JSON (python-json-logger)
when stderr is not a terminal, as log collectors expect; plain text for people otherwise.

What never goes into a log line at info level or above: secrets and message bodies. Log
calls pass ids and reasons only; ``/api/messages`` and webhook bodies are not logged.
"""

from __future__ import annotations

import contextvars
import logging
import sys

from pythonjsonlogger.json import JsonFormatter

FIELDS = ("workspace", "conversation", "job", "delivery", "activity")
_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"log_{name}", default=None) for name in FIELDS
}


def bind(**ids: object) -> None:
    """Set ids for the rest of the current task: each job and each request runs in a task
    of its own, so they never leak into another's lines."""
    for name, value in ids.items():
        _context[name].set(None if value is None else str(value))


class ContextFilter(logging.Filter):
    """Copies the context's ids onto each record (an explicit ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _context.items():
            value = var.get()
            if value is not None and not hasattr(record, name):
                setattr(record, name, value)
        return True


class TextFormatter(logging.Formatter):
    """``time level logger message key=value…`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(f"{name}={getattr(record, name)}" for name in FIELDS if getattr(record, name, None))
        return f"{line} [{ids}]" if ids else line


def configure(stream=None, *, json_lines: bool | None = None) -> None:
    """The process's logging: JSON lines unless ``stream`` is a terminal."""
    stream = stream or sys.stderr
    if json_lines is None:
        json_lines = not stream.isatty()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    if json_lines:
        handler.setFormatter(
            JsonFormatter("{asctime}{levelname}{name}{message}", style="{", rename_fields={"levelname": "level"})
        )
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # Per-request lines of these libraries carry URLs with tokens or headers: not for info.
    for noisy in ("azure", "httpx", "msal", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
