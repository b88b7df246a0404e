"""How a failed call to another service is classified, whichever service it was.

The delivery loop only needs to know: try again (and not before when), or give up with a
reason a person can read. Each client turns its library's exceptions into these.
"""

from __future__ import annotations

# Statuses worth retrying: throttling, precondition races and server-side trouble.
RETRYABLE_STATUSES = frozenset({408, 412, 429, 500, 502, 503, 504})


class RemoteError(Exception):
    """A call to neetoChat, the Bot Connector or Graph failed."""

    def __init__(
        self,
        service: str,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{service}: {message}" + (f" (HTTP {status})" if status else ""))
        self.service = service
        self.status = status
        self.code = code
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Connection errors (no status) and the statuses above can succeed later."""
        return self.status is None or self.status in RETRYABLE_STATUSES


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (the delta-seconds form; dates are rare here)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
