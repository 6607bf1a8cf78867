"""A bounded, revision-ordered log of recent events that watchers read at their own pace.

Writers append and never wait. Each watcher keeps only a cursor (the revision it
has sent up to) and reads what came after it; a watcher that falls so far behind
that its events were trimmed is told so (it must resync), like etcd's compacted
watchers. No per-watcher queue exists, so a slow reader costs nothing to others.

What readers build from the log at its current head (the response a stream
sends for "everything after revision N", which every stream with the same filter
at the same cursor sends alike) is kept in ``at_head`` until the head moves, so
that it is built once, not once per stream.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from typing import Any, Generic, TypeVar

from hub_server.store.waiters import Waiters

T = TypeVar("T")


class EventLog(Generic[T]):
    def __init__(self, capacity: int = 20_000) -> None:
        self.capacity = capacity
        self._revs: list[int] = []
        self._items: list[T] = []
        # Every event with a revision above this one is in the log.
        self.complete_after = 0
        # The newest revision the log reflects (events or progress).
        self.head = 0
        self._waiters = Waiters()
        # Built from the log as it is now, keyed by whoever builds it; emptied
        # (a new dict) whenever the log changes.
        self.at_head: dict[Any, Any] = {}

    def reset(self, revision: int) -> None:
        """Forget everything: the log is complete only after ``revision`` now."""
        self._revs.clear()
        self._items.clear()
        self.complete_after = revision
        self.head = max(self.head, revision)
        self._notify()

    def append(self, events: list[tuple[int, T]], revision: int) -> None:
        """Adds events (in revision order) and moves the head to ``revision``."""
        for rev, item in events:
            self._revs.append(rev)
            self._items.append(item)
        self.head = max(self.head, revision)
        self._trim()
        self._notify()

    def since(self, after: int) -> list[T] | None:
        """Events with revision > ``after``; None when some of them are no longer kept."""
        if after < self.complete_after:
            return None
        return self._items[bisect_right(self._revs, after) :]

    async def wait(self, after: int, timeout: float) -> None:
        """Returns once the head passes ``after``, or when ``timeout`` runs out."""
        if self.head > after:
            return
        await self._waiters.wait(timeout)

    async def wait_for_revision(self, revision: int, timeout: float) -> bool:
        """Waits until the log has reached ``revision``; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.head < revision:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await self.wait(self.head, remaining)
        return True

    def _notify(self) -> None:
        """One wake-up for every waiter, however many events came in."""
        self.at_head = {}
        self._waiters.wake_all()

    def _trim(self) -> None:
        # Trim in chunks (a quarter of capacity) so appends stay amortised O(1).
        if len(self._revs) <= self.capacity * 5 // 4:
            return
        cut = len(self._revs) - self.capacity
        # Never split one revision: drop all its events or none.
        last = self._revs[cut - 1]
        cut = bisect_right(self._revs, last)
        del self._revs[:cut]
        del self._items[:cut]
        self.complete_after = max(self.complete_after, last)

    def __len__(self) -> int:
        return len(self._revs)
