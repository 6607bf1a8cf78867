"""Holds Python's cyclic garbage collector off while one change fans out to
thousands of waiting streams.

Waking N streams allocates, per stream, objects that live until its message is
sent (the loop's handle, grpc's send operation and its future, the next wait's
future): all of them alive at once, so every young collection during the fan-out
walks thousands of live objects scattered over a large heap and promotes them,
for nothing (they are not garbage, and almost all are freed by reference count
moments later). py-spy at 20,000 streams: 14% of the hub's samples in
gc_collect_main, under the wake-up's call_soon.

A hold ends when every woken waiter is waiting again (``tick``, once per new
wait), or after ``LIMIT`` seconds (a stream stuck behind a slow client, or one
that ended), whichever comes first. Holds nest; the collector is enabled again
when the last one ends, and only if it was enabled when the first one began;
a backstop thread ends holds whose loop closed before their timer ran.
Allocation counts keep running meanwhile, so the first allocation after a hold
runs a young collection as usual (of what is still alive by then).
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time

# Wake-ups smaller than this run with the collector as it is.
BURST = 1000
# Seconds a hold lasts at most.
LIMIT = 2.0

_lock = threading.Lock()
_holds = 0
_disabled_by_us = False
# Bumped when the backstop ends every hold: holds begun before it end as no-ops.
_epoch = 0
# When the newest hold runs out (monotonic): the backstop's reference.
_expires = 0.0
_backstop: threading.Thread | None = None


def _begin() -> int:
    global _holds, _disabled_by_us, _expires, _backstop
    with _lock:
        if _holds == 0 and gc.isenabled():
            gc.disable()
            _disabled_by_us = True
        _holds += 1
        _expires = time.monotonic() + LIMIT
        if _backstop is None:
            _backstop = threading.Thread(target=_watch, name="collector-pause", daemon=True)
            _backstop.start()
        return _epoch


def _end(epoch: int) -> None:
    global _holds, _disabled_by_us
    with _lock:
        if epoch != _epoch:
            return
        _holds -= 1
        if _holds == 0 and _disabled_by_us:
            _disabled_by_us = False
            gc.enable()


def _watch() -> None:
    """The backstop: a hold's timer runs on its event loop, which may close with
    the timer pending (a test's loop, a hub stopped mid fan-out). The collector
    must not stay off for the rest of the process."""
    global _holds, _disabled_by_us, _epoch
    while True:
        time.sleep(LIMIT)
        with _lock:
            if _holds and time.monotonic() > _expires + LIMIT:
                _holds, _epoch = 0, _epoch + 1
                if _disabled_by_us:
                    _disabled_by_us = False
                    gc.enable()


def held() -> bool:
    """Whether a hold is in force (for tests)."""
    return _holds > 0


class Hold:
    """One fan-out's hold: ``tick`` once per woken waiter that waits again."""

    __slots__ = ("_epoch", "_left", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, woken: int) -> None:
        self._left = woken
        self._epoch = _begin()
        self._timer: asyncio.TimerHandle | None = loop.call_later(LIMIT, self.release)

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
        _end(self._epoch)

    @property
    def active(self) -> bool:
        return self._timer is not None
