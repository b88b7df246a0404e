"""Keeping conversation cards current without spending Teams' rate limits on it.

Every visitor or agent message moves a conversation's "last reply" time, which its card in
the notification channel shows. Updating that card per message would cost one operation in
the notification channel's thread per message, across all conversations, and that thread
allows 60 operations per 30 s: with twenty busy conversations the cards, not the messages,
would set the pace. So card updates are:

- coalesced: only the newest wanted state of a card is kept; ten messages in a row give one
  update;
- low priority: an update goes out only when its threads have room right now, with room for
  two more calls left over, so it never makes a message wait for its turn;
- best effort: a card is not something a person wrote. A refresh still pending when the
  process stops is lost (the next message or assignment refreshes the card again), which
  is why closing a conversation updates its card directly (``update_now``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from botbuilder.schema import Activity

from services.errors import RemoteError
from services.rate_limits import Throttled

log = logging.getLogger(__name__)

# After Throttled, come back a little after room frees up, so that messages waiting for
# the same thread get it first.
YIELD_TO_MESSAGES = 0.25
MAX_RETRIES = 5
STOP_GRACE = 10.0

# TeamsPoster.update(reference, activity id, card, background=...)
Update = Callable[..., Awaitable[None]]


@dataclass
class _Refresh:
    targets: list[tuple[dict, str]]  # (thread reference, activity id of the card)
    build: Callable[[], Activity]
    retries: int = 0
    _card: Activity | None = None

    @property
    def card(self) -> Activity:
        """Built when it is first sent: most refreshes are replaced by a newer one before
        that (a busy conversation), and building a card is most of what a refresh costs."""
        if self._card is None:
            self._card = self.build()
        return self._card


class CardRefresher:
    def __init__(self, update: Update) -> None:
        self._update = update
        self._pending: dict[str, _Refresh] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="card-refresher")

    async def stop(self) -> None:
        """Let the update in flight finish (for up to ``STOP_GRACE`` seconds), drop the rest.

        Cancelling at once would cut botbuilder's HTTP call off mid-request: an update half
        made at shutdown."""
        self._stopping.set()
        self._wake.set()
        if self._task:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_GRACE)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._pending:
            log.info(
                "%d card refreshes dropped at shutdown (cards refresh again on the next message)", len(self._pending)
            )

    def request(self, key: str, targets: list[tuple[dict, str]], build: Callable[[], Activity]) -> None:
        """Want the card ``build()`` makes shown at ``targets``; replaces any pending state
        of ``key``. ``build`` must make the card of the state at the time of the request."""
        self._pending.pop(key, None)  # re-queued at the back: the others go first
        self._pending[key] = _Refresh(targets, build)
        self._wake.set()

    async def update_now(self, key: str, targets: list[tuple[dict, str]], card: Activity) -> None:
        """Update at once, replacing anything pending (a closed conversation's card must
        not be overwritten by an older open state)."""
        async with self._lock(key):
            self._pending.pop(key, None)
            for reference, activity_id in targets:
                await self._update(reference, activity_id, card)  # waits for room like a message

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def _run(self) -> None:
        while not self._stopping.is_set():
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            key = next(iter(self._pending))
            refresh = self._pending.pop(key)
            async with self._lock(key):
                delay = await self._apply(key, refresh)
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)

    async def _apply(self, key: str, refresh: _Refresh) -> float:
        """Update every target; on throttling put the refresh back (unless a newer one
        came) and return how long to pause."""
        for i, (reference, activity_id) in enumerate(refresh.targets):
            try:
                await self._update(reference, activity_id, refresh.card, background=True)  # spare room only
            except Throttled as exc:
                refresh.targets = refresh.targets[i:]
                self._pending.setdefault(key, refresh)
                return (exc.retry_after or 0.0) + YIELD_TO_MESSAGES
            except RemoteError as exc:
                if exc.retryable and refresh.retries < MAX_RETRIES:
                    refresh.retries += 1
                    refresh.targets = refresh.targets[i:]
                    self._pending.setdefault(key, refresh)
                    return exc.retry_after or float(2**refresh.retries)
                log.warning("card %s not updated: %s", activity_id, exc)  # deleted by a person, say
            except Exception:
                log.exception("card %s not updated", activity_id)
        return 0.0
