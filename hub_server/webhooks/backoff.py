"""When to retry a delivery: exponential backoff with full jitter, capped, for
a bounded time after the first attempt."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base: float = 1.0  # the first retry's upper bound, seconds
    factor: float = 2.0
    cap: float = 300.0  # no wait longer than this
    retry_for: float = 3600.0  # give up this long after the first attempt

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """The wait after the ``failures``-th failed attempt (1, 2, ...): uniform in
        [bound / 2, bound], bound = min(cap, base * factor ** (failures - 1)), so
        that receivers that failed together are not retried together."""
        bound = min(self.cap, self.base * self.factor ** max(0, failures - 1))
        return bound / 2 + (rng or random).uniform(0, bound / 2)

    def next_attempt(
        self, first_at: float, now: float, failures: int, rng: random.Random | None = None
    ) -> float | None:
        """When to try again, or None when retries ran out."""
        at = now + self.delay(failures, rng)
        return at if at - first_at <= self.retry_for else None
