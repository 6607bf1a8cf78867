"""Many tasks waiting for one thing to change, each with a timeout, woken together.

``asyncio.wait_for(event.wait(), timeout)`` costs each waiter a task, a
coroutine, a timer and two extra loop turns per wake-up; with thousands of watch
streams waiting on one log, that (and the garbage it leaves) is most of the
fan-out's CPU. Here each waiter is one bare future in a heap ordered by
deadline; one timer (for the earliest deadline) serves them all, and
``wake_all`` resolves every future in one pass. Waking ``collector_pause.BURST``
or more holds the garbage collector off until they wait again (see there).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math

from hub_server.store import collector_pause


class Waiters:
    """``await waiters.wait(timeout)`` returns at the next ``wake_all()``, or after
    ``timeout`` seconds, whichever comes first."""

    __slots__ = ("_heap", "_hold", "_loop", "_seq", "_timer", "_timer_at")

    def __init__(self) -> None:
        # (deadline, tie-breaker, future): the earliest deadline first.
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        # The collector hold of the last large wake-up, until its waiters are back.
        self._hold: collector_pause.Hold | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        # get_running_loop() costs a getpid() system call: ask once per loop.
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
            self._heap.clear()  # futures of a closed loop never resolve
            if self._hold is not None:
                self._hold.release()
                self._hold = None
            self._timer, self._timer_at = None, math.inf
        return loop

    def wait(self, timeout: float) -> asyncio.Future[None]:
        """A future that is done at the next ``wake_all`` or after ``timeout``
        seconds. Cancelling it (by cancelling the task awaiting it) affects no
        other waiter."""
        loop = self._running_loop()
        hold = self._hold
        if hold is not None:
            hold.tick()
            if not hold.active:
                self._hold = None
        fut = loop.create_future()
        if timeout <= 0:
            fut.set_result(None)
            return fut
        deadline = loop.time() + timeout
        heapq.heappush(self._heap, (deadline, next(self._seq), fut))
        if deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(deadline, self._expire, deadline)
            self._timer_at = deadline
        return fut

    def wake_all(self) -> None:
        """Resolves every pending waiter (each one's task resumes once)."""
        if not self._heap and self._hold is None:
            return  # nobody waits: a starting hub's listeners call this per key
        heap, self._heap = self._heap, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        if self._hold is not None:  # a new change before the last one's waiters were back
            self._hold.release()
            self._hold = None
        loop = self._loop
        if len(heap) >= collector_pause.BURST and loop is not None and not loop.is_closed():
            self._hold = collector_pause.hold(loop, len(heap))
        for _, _, fut in heap:
            if not fut.done():
                fut.set_result(None)

    def _expire(self, scheduled: float) -> None:
        """The timer: resolves the waiters whose deadline passed (asyncio may run
        a timer up to its clock resolution early: ``scheduled`` counts as passed)."""
        loop = self._loop
        assert loop is not None
        self._timer, self._timer_at = None, math.inf
        now = max(loop.time(), scheduled)
        heap = self._heap
        while heap and heap[0][0] <= now:
            fut = heapq.heappop(heap)[2]
            if not fut.done():
                fut.set_result(None)
        if heap:
            self._timer_at = heap[0][0]
            self._timer = loop.call_at(self._timer_at, self._expire, self._timer_at)
