"""PerformanceTracker: time operations into an OpenTelemetry histogram and keep a
small local summary (count, errors, percentiles) per operation.

The local summary uses a log-bucketed histogram (16 buckets per doubling, about
2% relative error) so memory is bounded by the range of durations, not by how
many were recorded, and two summaries could be merged by adding buckets.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast, overload

from opentelemetry import metrics

__all__ = ["Measurement", "OperationSummary", "PerformanceTracker"]

P = ParamSpec("P")
R = TypeVar("R")

AttributeValue = (
    str | bool | int | float | Sequence[str] | Sequence[bool] | Sequence[int] | Sequence[float]
)

METRIC_NAME = "hub.operation.duration"
METER_NAME = "hub_client.performance"
METRIC_DESCRIPTION = "Duration of an operation measured by a service"
# Explicit buckets (ms) for the exported histogram: the SDK defaults start at
# 0/5/10 ms, too coarse for in-process operations.
DURATION_BUCKETS_MS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 75, 100, 250, 500, 750,
    1000, 2500, 5000, 10000, 30000, 60000,
)  # fmt: skip

_BUCKETS_PER_DOUBLING = 16
_MIN_MS = 1e-3  # durations below 1 µs share the lowest bucket


def _bucket(ms: float) -> int:
    return math.floor(math.log2(max(ms, _MIN_MS)) * _BUCKETS_PER_DOUBLING)


def _bucket_value(index: int) -> float:
    """Geometric middle of a bucket."""
    return float(2 ** ((index + 0.5) / _BUCKETS_PER_DOUBLING))


class _LogHistogram:
    """Counts per logarithmic bucket plus exact count, sum, min and max."""

    __slots__ = ("buckets", "count", "max", "min", "total")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    def add(self, ms: float) -> None:
        index = _bucket(ms)
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        self.total += ms
        self.min = min(self.min, ms)
        self.max = max(self.max, ms)

    def add_all(self, values: Iterable[float]) -> None:
        """``add`` for each value, inlined: what a batch of durations costs."""
        buckets, total, lo, hi = self.buckets, self.total, self.min, self.max
        n = 0
        for ms in values:
            index = math.floor(math.log2(ms if ms > _MIN_MS else _MIN_MS) * _BUCKETS_PER_DOUBLING)
            buckets[index] = buckets.get(index, 0) + 1
            total += ms
            if ms < lo:
                lo = ms
            if ms > hi:
                hi = ms
            n += 1
        self.count += n
        self.total, self.min, self.max = total, lo, hi

    def quantile(self, q: float) -> float:
        """Nearest-rank quantile, exact at the extremes, ~2% off in between."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        if rank == 1:
            return self.min
        if rank >= self.count:
            return self.max
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(max(_bucket_value(index), self.min), self.max)
        return self.max


@dataclass(frozen=True)
class OperationSummary:
    """One operation's local statistics since the tracker started (or reset).

    Durations are milliseconds; percentiles are nearest-rank estimates within
    about 2% (exact for the minimum and maximum).
    """

    operation: str
    count: int
    errors: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    min_ms: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.count if self.count else 0.0


class _OperationStats:
    __slots__ = ("errors", "histogram")

    def __init__(self) -> None:
        self.errors = 0
        self.histogram = _LogHistogram()


def _attribute(value: Any) -> AttributeValue:
    if isinstance(value, str | bool | int | float):
        return value
    return str(value)


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


class Measurement:
    """Times one run of an operation; use with ``with`` or ``async with``.

    The outcome is ``ok``, ``error`` (an exception escaped, or ``mark_error``
    was called) or ``cancelled`` (``asyncio.CancelledError``: the caller gave
    up, which is not this operation's failure). Exceptions always propagate.
    """

    __slots__ = (
        "_attributes",
        "_error_type",
        "_forced_error",
        "_start",
        "_tracker",
        "duration_ms",
        "operation",
    )

    def __init__(
        self, tracker: PerformanceTracker, operation: str, attributes: dict[str, AttributeValue]
    ) -> None:
        self._tracker = tracker
        self.operation = operation
        self._attributes = attributes
        self._start: float | None = None
        self._forced_error = False
        self._error_type: str | None = None
        self.duration_ms: float | None = None

    def set_attribute(self, key: str, value: Any) -> None:
        """Adds an attribute to the recorded data point (keep cardinality low)."""
        self._attributes[key] = _attribute(value)

    def mark_error(self, error_type: str | None = None) -> None:
        """Records this run as an error although no exception escaped (for
        example a response carrying an error status)."""
        self._forced_error = True
        self._error_type = error_type

    def __enter__(self) -> Measurement:
        self._start = self._tracker._clock()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._start is None:
            raise RuntimeError("measurement exited without being entered")
        self.duration_ms = (self._tracker._clock() - self._start) * 1000.0
        self._start = None
        if isinstance(exc, asyncio.CancelledError):
            outcome, error_type = "cancelled", None
        elif exc is not None:
            outcome, error_type = "error", _type_name(exc)
        elif self._forced_error:
            outcome, error_type = "error", self._error_type
        else:
            outcome, error_type = "ok", None
        self._tracker.record(
            self.operation,
            self.duration_ms,
            outcome=outcome,
            error_type=error_type,
            **self._attributes,
        )

    async def __aenter__(self) -> Measurement:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class PerformanceTracker:
    """Times a service's operations.

    Each run is recorded into the ``hub.operation.duration`` histogram (unit
    ``ms``; attributes ``service``, ``operation``, ``outcome`` and, for errors,
    ``error.type``, plus any given) and into a bounded local summary.

    Args:
        service_name: the ``service`` attribute of every data point.
        meter_provider: where to record; the global provider when ``None``
            (the API's proxy forwards to a provider installed later).
        clock: monotonic seconds (injectable for tests).
        max_operations: operations kept in the local summary; runs of further
            operations are still exported but not summarised locally.
    """

    # The exported histogram, for a caller that counts durations itself and
    # hands them to OpenTelemetry when collected (the hub's per-RPC durations).
    METRIC_NAME = METRIC_NAME
    METER_NAME = METER_NAME
    METRIC_DESCRIPTION = METRIC_DESCRIPTION
    DURATION_BUCKETS_MS = DURATION_BUCKETS_MS

    def __init__(
        self,
        service_name: str,
        *,
        meter_provider: metrics.MeterProvider | None = None,
        clock: Callable[[], float] = time.perf_counter,
        max_operations: int = 1000,
    ) -> None:
        self.service_name = service_name
        self._clock = clock
        self._max_operations = max_operations
        meter = metrics.get_meter(METER_NAME, meter_provider=meter_provider)
        self._histogram = meter.create_histogram(
            METRIC_NAME,
            unit="ms",
            description=METRIC_DESCRIPTION,
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_MS,
        )
        self._lock = threading.Lock()
        self._stats: dict[str, _OperationStats] = {}

    def measure(self, operation: str, **attributes: Any) -> Measurement:
        """A fresh timer for one run: ``with tracker.measure("op"):`` or
        ``async with tracker.measure("op", symbol="BTCUSDT"):``."""
        return Measurement(self, operation, {k: _attribute(v) for k, v in attributes.items()})

    @overload
    def track(self, operation: Callable[P, R], /) -> Callable[P, R]: ...

    @overload
    def track(
        self, operation: str | None = None, /, **attributes: Any
    ) -> Callable[[Callable[P, R]], Callable[P, R]]: ...

    def track(
        self, operation: str | Callable[P, R] | None = None, /, **attributes: Any
    ) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorator timing every call of a sync or async function:
        ``@tracker.track("op")``, or bare ``@tracker.track`` to use the
        function's qualified name."""

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            name = operation if isinstance(operation, str) else func.__qualname__
            if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
                raise TypeError("track() times calls; wrap the consumer of a generator instead")
            if inspect.iscoroutinefunction(func):

                @functools.wraps(func)
                async def timed_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                    async with self.measure(name, **attributes):
                        return await cast(Callable[P, Any], func)(*args, **kwargs)

                return cast(Callable[P, R], timed_async)

            @functools.wraps(func)
            def timed(*args: P.args, **kwargs: P.kwargs) -> R:
                with self.measure(name, **attributes):
                    return func(*args, **kwargs)

            return timed

        if callable(operation):
            return decorate(operation)
        return decorate

    def record(
        self,
        operation: str,
        duration_ms: float,
        *,
        outcome: str = "ok",
        error_type: str | None = None,
        **attributes: Any,
    ) -> None:
        """Records a duration measured elsewhere (``outcome`` ``ok``/``error``/``cancelled``)."""
        point: dict[str, AttributeValue] = {k: _attribute(v) for k, v in attributes.items()}
        point.update(service=self.service_name, operation=operation, outcome=outcome)
        if error_type:
            point["error.type"] = error_type
        self._histogram.record(duration_ms, attributes=point)
        self.summarise(operation, duration_ms, outcome=outcome)

    def summarise(self, operation: str, duration_ms: float, *, outcome: str = "ok") -> None:
        """Adds a duration to the local summary only (its caller exports it)."""
        with self._lock:
            stats = self._stats_of(operation)
            if stats is None:
                return
            stats.histogram.add(duration_ms)
            if outcome == "error":
                stats.errors += 1

    def summarise_all(
        self, operation: str, durations_ms: Iterable[float], *, errors: int = 0
    ) -> None:
        """``summarise`` for each of several durations of one operation, under
        one lock (for a caller that batches them, like the hub); ``errors`` of
        them had the outcome "error"."""
        with self._lock:
            stats = self._stats_of(operation)
            if stats is None:
                return
            stats.histogram.add_all(durations_ms)
            stats.errors += errors

    def _stats_of(self, operation: str) -> _OperationStats | None:
        """The operation's statistics, new if need be (under the lock); None
        once ``max_operations`` are tracked."""
        stats = self._stats.get(operation)
        if stats is None and len(self._stats) < self._max_operations:
            stats = self._stats[operation] = _OperationStats()
        return stats

    def summary(self) -> dict[str, OperationSummary]:
        """Local statistics per operation."""
        with self._lock:
            return {op: self._summarise(op, s) for op, s in sorted(self._stats.items())}

    def summary_line(self) -> str:
        """One log-friendly line, operations sorted by name, e.g.::

        api-gateway ws_process n=120 err=2 p50=1.21ms p95=8.90ms p99=15.0ms max=20.1ms
        mean=2.31ms; auth n=...
        """
        parts = [
            f"{s.operation} n={s.count} err={s.errors} p50={_ms(s.p50_ms)} p95={_ms(s.p95_ms)} "
            f"p99={_ms(s.p99_ms)} max={_ms(s.max_ms)} mean={_ms(s.mean_ms)}"
            for s in self.summary().values()
        ]
        return f"{self.service_name} " + ("; ".join(parts) if parts else "no operations recorded")

    def reset(self) -> None:
        """Forgets the local statistics (exported metrics are unaffected)."""
        with self._lock:
            self._stats.clear()

    @staticmethod
    def _summarise(operation: str, stats: _OperationStats) -> OperationSummary:
        h = stats.histogram
        return OperationSummary(
            operation=operation,
            count=h.count,
            errors=stats.errors,
            mean_ms=h.total / h.count if h.count else 0.0,
            p50_ms=h.quantile(0.50),
            p95_ms=h.quantile(0.95),
            p99_ms=h.quantile(0.99),
            max_ms=h.max,
            min_ms=h.min if h.count else 0.0,
        )


def _ms(value: float) -> str:
    if value < 10:
        return f"{value:.2f}ms"
    if value < 1000:
        return f"{value:.1f}ms"
    return f"{value:.0f}ms"
