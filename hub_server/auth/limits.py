"""Per-caller self-protection: a token bucket of calls per second and a bound on
open streams. A caller is its authenticated identity, or its connection when the
hub runs without credentials."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from aitrading.hub.v1.errors_pb2 import ERROR_REASON_CALLER_STREAM_LIMIT

from hub_server.kernel.errors import TooManyCalls


class CallerLimits:
    """Not thread-safe: used from the server's event loop only."""

    # Buckets kept at once; the least recently used caller's is forgotten (it
    # then starts again with a full bucket, which only errs towards allowing).
    MAX_CALLERS = 10_000

    def __init__(
        self,
        calls_per_second: float,
        max_streams: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = calls_per_second  # 0: no rate limit
        self.burst = max(calls_per_second, 1.0)  # one second's worth
        self.max_streams = max_streams  # 0: no bound
        self._clock = clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._streams: dict[str, int] = {}

    def take_call(self, caller: str) -> None:
        """Counts one call; raises TooManyCalls when the caller's bucket is empty."""
        if not self.rate:
            return
        now = self._clock()
        buckets = self._buckets
        bucket = buckets.get(caller)
        if bucket is None:
            tokens = self.burst
            bucket = buckets[caller] = [tokens, now]
            if len(buckets) > self.MAX_CALLERS:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(caller)
            tokens = bucket[0] + (now - bucket[1]) * self.rate
            if tokens > self.burst:  # min(), without the call: this runs on every call
                tokens = self.burst
            bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            raise TooManyCalls(
                f"{caller} is over {self.rate:g} calls/s; retry later",
                limit=f"{self.rate:g}/s",
            )
        bucket[0] = tokens - 1.0

    def open_stream(self, caller: str) -> None:
        open_now = self._streams.get(caller, 0)
        if self.max_streams and open_now >= self.max_streams:
            raise TooManyCalls(
                f"{caller} already has {open_now} open streams (limit {self.max_streams})",
                reason=ERROR_REASON_CALLER_STREAM_LIMIT,
                limit=str(self.max_streams),
            )
        self._streams[caller] = open_now + 1

    def close_stream(self, caller: str) -> None:
        left = self._streams.get(caller, 1) - 1
        if left > 0:
            self._streams[caller] = left
        else:
            self._streams.pop(caller, None)
