"""Holds Python's cyclic garbage collector off while one change fans out to
thousands of waiting streams (``hold``), and while mirrors load (``while_loading``).

Waking N streams allocates, per stream, objects that live until its message is
sent (the loop's handle, grpc's send operation and its future, the next wait's
future): all of them alive at once, so every young collection during the fan-out
walks thousands of live objects scattered over a large heap and promotes them,
for nothing (they are not garbage, and almost all are freed by reference count
moments later). py-spy at 20,000 streams: 14% of the hub's samples in
gc_collect_main, under the wake-up's call_soon.

A hold ends when every woken waiter (but one in a thousand) is waiting again
(``tick``, once per new wait), when the same waiters are woken again, or after
``LIMIT`` seconds (a stream stuck behind a slow client, or one that ended),
whichever comes first. Past ``LIMIT`` a hold goes on while its waiters are
still coming back (some came back in the last ``STALL`` seconds), up to
``PER_WAITER`` seconds per waiter woken: on 2 busy cores, 20,000 streams took
1.4-2.6 s to be back, and a flat 2 s ended a third of their holds mid-fan-out,
each end costing a young collection of the in-flight send state (110-300 ms)
and then a generation-1 one (~300 ms): up to 106 ms of hub CPU per change, 13%.
A hold whose waiters stopped coming back still ends within ``STALL`` of
``LIMIT``.
One hold at a time, and none within ``COOLDOWN`` seconds of the last one's end:
under a steady stream of changes the collector still runs between holds (and
finds the garbage cycles of everything else, such as grpc.aio's per call). The
collector is enabled again only if it was enabled when the hold began. A
backstop thread ends a hold whose event loop closed before its timer ran.
Allocation counts keep running meanwhile, so the first allocation after a hold
runs a young collection as usual (of what is still alive by then).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import Iterator

# Wake-ups smaller than this run with the collector as it is.
BURST = 1000
# Seconds a hold lasts at most, unless its waiters are still coming back: then
# up to PER_WAITER per waiter woken (5 s for 20,000; a fan-out on 2 busy cores
# took up to ~130 us per stream), as long as some came back in the last STALL.
LIMIT = 2.0
PER_WAITER = 250e-6
STALL = 0.25
# Seconds after a hold ends before another may begin.
COOLDOWN = 0.1

_lock = threading.Lock()
_current: Hold | None = None
_disabled_by_us = False
_ended_at = -1e9  # monotonic
_backstop: threading.Thread | None = None


def held() -> bool:
    """Whether a hold is in force (for tests)."""
    return _current is not None


def hold(loop: asyncio.AbstractEventLoop, woken: int) -> Hold | None:
    """A hold for the wake-up of ``woken`` waiters, or None when the wake-up is
    small, another hold is in force, or the last one ended less than
    ``COOLDOWN`` ago."""
    global _current, _disabled_by_us, _backstop
    if woken < BURST:
        return None
    with _lock:
        now = time.monotonic()
        if _current is not None or now - _ended_at < COOLDOWN:
            return None
        _current = Hold(loop, woken, max(LIMIT, woken * PER_WAITER))
        if gc.isenabled():
            gc.disable()
            _disabled_by_us = True
        if _backstop is None:
            _backstop = threading.Thread(target=_watch, name="collector-pause", daemon=True)
            _backstop.start()
        return _current


def _end(ending: Hold) -> None:
    global _current, _disabled_by_us, _ended_at
    with _lock:
        if _current is not ending:
            return
        _current = None
        _ended_at = time.monotonic()
        if _disabled_by_us:
            _disabled_by_us = False
            gc.enable()


def _watch() -> None:
    """The backstop: a hold's timer runs on its event loop, which may close with
    the timer pending (a test's loop, a hub stopped mid fan-out). The collector
    must not stay off for the rest of the process."""
    while True:
        time.sleep(LIMIT / 2)
        current = _current
        if current is not None and time.monotonic() > current.expires + LIMIT / 2:
            _end(current)


class Hold:
    """One fan-out's hold: ``tick`` once per woken waiter that waits again."""

    __slots__ = ("_left", "_loop", "_mark", "_timer", "expires")

    def __init__(self, loop: asyncio.AbstractEventLoop, woken: int, limit: float) -> None:
        # Not waiting for the last one in a thousand: a woken caller that waits no
        # more (a write waiting for its own revision) kept the hold until the next
        # change, which then fanned out with the collector on (~200 ms of young
        # and full collections at 20,000 streams).
        self._left = woken - woken // 1000
        self._loop = loop
        self.expires = time.monotonic() + limit
        # Waiters still out at the last check (None: none yet). The first check,
        # a STALL before LIMIT, only marks.
        self._mark: int | None = None
        self._timer: asyncio.TimerHandle | None = loop.call_later(
            max(LIMIT - STALL, 0.0), self._check
        )

    def _check(self) -> None:
        """Every STALL from LIMIT on: ends the hold unless some of its waiters came
        back since the last check and it has time left."""
        if self._timer is None:
            return
        if self._mark is not None and (
            self._left == self._mark or time.monotonic() >= self.expires
        ):
            self.release()
            return
        self._mark = self._left
        self._timer = self._loop.call_later(STALL, self._check)

    def tick(self) -> None:
        self._left -= 1
        if self._left <= 0:
            self.release()

    def release(self) -> None:
        """Ends the hold (once; later calls do nothing)."""
        if self._timer is None:
            return
        self._timer.cancel()
        self._timer = None
        _end(self)

    @property
    def active(self) -> bool:
        return self._timer is not None


_loads = 0  # mirror loads in progress


@contextlib.contextmanager
def while_loading() -> Iterator[None]:
    """Python's cyclic garbage collector off while mirrors load: a million new
    objects that all stay alive would set it off again and again, each time
    scanning those it has already seen (2/3 of the CPU of building a million
    instances' view). Nothing a load makes is cyclic garbage. Mirrors load
    concurrently: it is on again when the last load ends."""
    global _loads
    if _loads == 0 and not gc.isenabled():
        yield  # turned off by someone else: theirs to turn on
        return
    _loads += 1
    gc.disable()
    try:
        yield
    finally:
        _loads -= 1
        if _loads == 0:
            gc.enable()
