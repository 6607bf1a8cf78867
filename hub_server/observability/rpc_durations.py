"""Per-RPC durations counted in the call path and handed to OpenTelemetry when a
reader collects.

Recording through the SDK's histogram cost 7-11 µs a call (it cleans and
hashes the attributes and builds a Measurement for every reader): half of
GetService's handler path in process. Here a call adds to the bucket counts of
its series (method, outcome, error type), about 1 µs, and every collection gets the
data points the SDK would have made: the same metric (``hub.operation.duration``,
ms, its scope), attributes, buckets, count, sum, min and max.

A call's duration is only appended to a list by ``add``; the list is folded
into the series (and the tracker's local percentiles) 256 calls at a time, and
before anything reads them (a collection, the summary): one list append in the
call path instead of two locked updates.

This covers cumulative readers without exemplars, the hub's usual case. A
reader wanting delta temporality or another aggregation, or exemplars (a span
processor is set), goes through the SDK instead (``fits``); points from both
are merged by attribute set.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any, cast

from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.metrics.view import DefaultAggregation
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from hub_client import PerformanceTracker

DURATION_BUCKETS_MS = PerformanceTracker.DURATION_BUCKETS_MS
METER_NAME = PerformanceTracker.METER_NAME
METRIC_DESCRIPTION = PerformanceTracker.METRIC_DESCRIPTION
NAME = PerformanceTracker.METRIC_NAME


class _Series:
    __slots__ = ("attributes", "buckets", "count", "max", "min", "start_ns", "sum")

    def __init__(self, attributes: dict[str, str], start_ns: int) -> None:
        self.attributes = attributes
        self.buckets = [0] * (len(DURATION_BUCKETS_MS) + 1)
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")
        self.start_ns = start_ns


def fits(reader: MetricReader) -> bool:
    """Whether this reader takes the histogram as collected here (cumulative,
    explicit buckets). Private SDK fields: anything unrecognised does not fit."""
    temporality = getattr(reader, "_instrument_class_temporality", {})
    aggregation = getattr(reader, "_instrument_class_aggregation", {})
    kind = next((k for k in temporality if k.__name__ == "_Histogram"), None)
    return (
        kind is not None
        and issubclass(kind, HistogramInstrument)
        and temporality[kind] == AggregationTemporality.CUMULATIVE
        and isinstance(aggregation.get(kind), DefaultAggregation)
    )


class RpcDurations:
    # Calls waiting before they are folded in.
    FOLD_AT = 256

    def __init__(self, tracker: PerformanceTracker) -> None:
        self._tracker = tracker  # its local summary gets every duration too
        self._service = tracker.service_name
        # (method, outcome) -> its series, in the order first seen.
        self._series: dict[tuple[str, str], _Series] = {}
        # (method, outcome, ms) of calls not yet counted, in call order: appended
        # on the event loop without a lock; a fold takes only the items it saw
        # (list slicing and deletion are atomic), so one appended meanwhile
        # waits for the next fold.
        self._waiting: list[tuple[str, str, float]] = []
        self._folded_ns = time.time_ns()  # no waiting call finished before this
        self._lock = threading.Lock()  # scrapes run on the exporter's thread

    def add(self, operation: str, outcome: str, ms: float) -> None:
        """One call's duration; ``outcome`` "OK" or its status code's name."""
        waiting = self._waiting
        waiting.append((operation, outcome, ms))
        if len(waiting) >= self.FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Counts every waiting call in its series and in the tracker's summary."""
        with self._lock:
            n = len(self._waiting)
            if not n:
                return
            calls = self._waiting[:n]
            del self._waiting[:n]
            # A series first seen here started after the previous fold.
            start_ns, self._folded_ns = self._folded_ns, time.time_ns()
            series = self._series
            by_operation: dict[str, list[float]] = {}
            errors: dict[str, int] = {}
            for operation, outcome, ms in calls:
                s = series.get((operation, outcome))
                if s is None:
                    s = series[operation, outcome] = self._new_series(operation, outcome, start_ns)
                s.buckets[bisect_left(DURATION_BUCKETS_MS, ms)] += 1
                s.count += 1
                s.sum += ms
                if ms < s.min:
                    s.min = ms
                if ms > s.max:
                    s.max = ms
                durations = by_operation.get(operation)
                if durations is None:
                    durations = by_operation[operation] = []
                durations.append(ms)
                if outcome != "OK":
                    errors[operation] = errors.get(operation, 0) + 1
            for operation, durations in by_operation.items():
                self._tracker.summarise_all(operation, durations, errors=errors.get(operation, 0))

    def _new_series(self, operation: str, outcome: str, start_ns: int) -> _Series:
        ok = outcome == "OK"
        attrs = {
            "service": self._service,
            "operation": operation,
            "outcome": "ok" if ok else "error",
        }
        if not ok and outcome:
            attrs["error.type"] = outcome
        return _Series(attrs, start_ns)

    def attach(self, reader: MetricReader, resource: Resource) -> None:
        """Adds these series to everything ``reader`` collects (``reader`` on a
        MeterProvider with ``resource``), even when the SDK has nothing."""
        collect: Any = reader._collect  # typed Iterable[Metric]; it returns MetricsData

        def collect_with_durations(*args: Any, **kwargs: Any) -> MetricsData | None:
            self.fold()
            data = collect(*args, **kwargs) if collect is not None else None
            if data is None and self._series:
                data = MetricsData([ResourceMetrics(resource, [], resource.schema_url)])
            return None if data is None else self.merged(data)

        reader._collect = cast(Any, collect_with_durations)

    def points(self, now_ns: int) -> list[HistogramDataPoint]:
        with self._lock:
            return [
                HistogramDataPoint(
                    attributes=dict(s.attributes),
                    start_time_unix_nano=s.start_ns,
                    time_unix_nano=now_ns,
                    count=s.count,
                    sum=s.sum,
                    bucket_counts=list(s.buckets),
                    explicit_bounds=DURATION_BUCKETS_MS,
                    min=s.min,
                    max=s.max,
                )
                for s in self._series.values()
            ]

    def merged(self, data: MetricsData) -> MetricsData:
        """``data`` with these series in the tracker's scope (beside or added to
        points the SDK recorded for the same metric)."""
        if not self._series or not data.resource_metrics:
            return data
        now = time.time_ns()
        ours = self.points(now)
        first, *rest = data.resource_metrics
        scopes = list(first.scope_metrics)
        at = next((i for i, sm in enumerate(scopes) if sm.scope.name == METER_NAME), None)
        if at is None:
            scope = InstrumentationScope(METER_NAME, "", "")  # as metrics.get_meter makes it
            scopes.append(ScopeMetrics(scope, [_metric(ours)], ""))
        else:
            metrics = list(scopes[at].metrics)
            found = next((i for i, m in enumerate(metrics) if m.name == NAME), None)
            if found is None:
                metrics.append(_metric(ours))
            else:
                theirs = [
                    p for p in metrics[found].data.data_points if isinstance(p, HistogramDataPoint)
                ]
                metrics[found] = _metric(_merge(theirs, ours))
            scopes[at] = dataclasses.replace(scopes[at], metrics=metrics)
        return MetricsData([dataclasses.replace(first, scope_metrics=scopes), *rest])


def _metric(points: Sequence[HistogramDataPoint]) -> Metric:
    return Metric(
        name=NAME,
        description=METRIC_DESCRIPTION,
        unit="ms",
        data=Histogram(points, AggregationTemporality.CUMULATIVE),
    )


def _merge(
    theirs: list[HistogramDataPoint], ours: list[HistogramDataPoint]
) -> list[HistogramDataPoint]:
    """One point per attribute set; ours first (counted before the SDK's path
    took over), so series keep the order they were first seen in."""
    by_attrs = {frozenset((p.attributes or {}).items()): p for p in theirs}
    merged = []
    for p in ours:
        q = by_attrs.pop(frozenset((p.attributes or {}).items()), None)
        if q is not None:
            p = dataclasses.replace(
                q,
                start_time_unix_nano=min(q.start_time_unix_nano, p.start_time_unix_nano),
                count=q.count + p.count,
                sum=q.sum + p.sum,
                bucket_counts=[
                    a + b for a, b in zip(q.bucket_counts, p.bucket_counts, strict=True)
                ],
                min=min(q.min, p.min),
                max=max(q.max, p.max),
            )
        merged.append(p)
    return merged + list(by_attrs.values())
