"""PerformanceTracker: the exported histogram (read back with the SDK's
InMemoryMetricReader) and the local summary."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from hub_client._private.performance import (
    DURATION_BUCKETS_MS,
    OperationSummary,
    PerformanceTracker,
)
from tests.support.clock import FakeClock


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    yield InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0)


@pytest.fixture
def tracker(provider: MeterProvider, clock: FakeClock) -> PerformanceTracker:
    return PerformanceTracker("api-gateway", meter_provider=provider, clock=clock)


def points(reader: InMemoryMetricReader) -> list[HistogramDataPoint]:
    data = reader.get_metrics_data()
    out: list[HistogramDataPoint] = []
    if data is None:
        return out
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == "hub.operation.duration":
                    assert metric.unit == "ms"
                    out.extend(metric.data.data_points)  # type: ignore[arg-type]
    return out


def by_outcome(reader: InMemoryMetricReader, operation: str) -> dict[str, HistogramDataPoint]:
    found: dict[str, HistogramDataPoint] = {}
    for p in points(reader):
        assert p.attributes is not None
        if p.attributes["operation"] == operation:
            found[str(p.attributes["outcome"])] = p
    return found


def test_sync_measure(
    tracker: PerformanceTracker, reader: InMemoryMetricReader, clock: FakeClock
) -> None:
    with tracker.measure("websocket_processing", symbol="BTCUSDT") as m:
        clock.advance_ms(12.5)
    assert m.duration_ms == pytest.approx(12.5)

    (point,) = points(reader)
    assert dict(point.attributes or {}) == {
        "service": "api-gateway",
        "operation": "websocket_processing",
        "outcome": "ok",
        "symbol": "BTCUSDT",
    }
    assert point.count == 1
    assert point.sum == pytest.approx(12.5)
    assert point.max == pytest.approx(12.5)
    assert tuple(point.explicit_bounds) == DURATION_BUCKETS_MS


async def test_async_measure(
    tracker: PerformanceTracker, reader: InMemoryMetricReader, clock: FakeClock
) -> None:
    async with tracker.measure("fetch_quotes") as m:
        await asyncio.sleep(0)
        clock.advance_ms(40)
    assert m.duration_ms == pytest.approx(40)
    assert by_outcome(reader, "fetch_quotes")["ok"].sum == pytest.approx(40)
    assert tracker.summary()["fetch_quotes"].count == 1


def test_error_outcome_is_recorded_and_reraised(
    tracker: PerformanceTracker, reader: InMemoryMetricReader, clock: FakeClock
) -> None:
    with pytest.raises(ConnectionRefusedError):
        with tracker.measure("submit_order"):
            clock.advance_ms(3)
            raise ConnectionRefusedError(111, "Connection refused")
    with tracker.measure("submit_order"):
        clock.advance_ms(1)

    outcomes = by_outcome(reader, "submit_order")
    assert outcomes["error"].count == 1
    assert outcomes["error"].attributes is not None
    assert outcomes["error"].attributes["error.type"] == "ConnectionRefusedError"
    assert outcomes["ok"].count == 1
    summary = tracker.summary()["submit_order"]
    assert (summary.count, summary.errors) == (2, 1)
    assert summary.error_rate == 0.5


async def test_async_error_and_cancellation(
    tracker: PerformanceTracker, reader: InMemoryMetricReader, clock: FakeClock
) -> None:
    with pytest.raises(ValueError):
        async with tracker.measure("parse"):
            raise ValueError("bad tick")

    started = asyncio.Event()

    async def slow() -> None:
        async with tracker.measure("stream"):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(slow())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert set(by_outcome(reader, "parse")) == {"error"}
    assert set(by_outcome(reader, "stream")) == {"cancelled"}
    assert tracker.summary()["stream"].errors == 0


def test_mark_error_without_exception(
    tracker: PerformanceTracker, reader: InMemoryMetricReader
) -> None:
    with tracker.measure("call_exchange") as m:
        m.set_attribute("http.status", 503)
        m.mark_error("http_503")
    point = by_outcome(reader, "call_exchange")["error"]
    assert point.attributes is not None
    assert point.attributes["error.type"] == "http_503"
    assert point.attributes["http.status"] == 503


def test_decorator_sync(
    tracker: PerformanceTracker, reader: InMemoryMetricReader, clock: FakeClock
) -> None:
    @tracker.track("risk_check", venue="binance")
    def risk_check(qty: int) -> int:
        """Docstring kept."""
        clock.advance_ms(2)
        if qty < 0:
            raise ValueError("negative")
        return qty * 2

    assert risk_check(4) == 8
    with pytest.raises(ValueError):
        risk_check(-1)
    assert risk_check.__name__ == "risk_check"
    assert risk_check.__doc__ == "Docstring kept."

    outcomes = by_outcome(reader, "risk_check")
    assert outcomes["ok"].count == 1 and outcomes["error"].count == 1
    assert outcomes["ok"].attributes is not None and outcomes["ok"].attributes["venue"] == "binance"


async def test_decorator_async(
    tracker: PerformanceTracker, reader: InMemoryMetricReader, clock: FakeClock
) -> None:
    @tracker.track("load_config")
    async def load(name: str) -> str:
        await asyncio.sleep(0)
        clock.advance_ms(7)
        return name.upper()

    @tracker.track
    async def bare() -> None:
        raise TimeoutError

    assert asyncio.iscoroutinefunction(load)
    assert await load("x") == "X"
    with pytest.raises(TimeoutError):
        await bare()

    assert by_outcome(reader, "load_config")["ok"].sum == pytest.approx(7)
    bare_name = "test_decorator_async.<locals>.bare"
    assert by_outcome(reader, bare_name)["error"].count == 1


def test_decorator_rejects_generators(tracker: PerformanceTracker) -> None:
    def gen() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError):
        tracker.track("gen")(gen)


def test_percentiles(tracker: PerformanceTracker, clock: FakeClock) -> None:
    for ms in range(1, 1001):  # 1..1000 ms, recorded out of order
        tracker.record("query", float((ms * 7919) % 1000 + 1))
    s = tracker.summary()["query"]
    assert isinstance(s, OperationSummary)
    assert s.count == 1000
    assert s.min_ms == 1 and s.max_ms == 1000
    assert s.mean_ms == pytest.approx(500.5)
    assert s.p50_ms == pytest.approx(500, rel=0.03)
    assert s.p95_ms == pytest.approx(950, rel=0.03)
    assert s.p99_ms == pytest.approx(990, rel=0.03)


def test_percentiles_small_samples_are_exact_at_extremes(tracker: PerformanceTracker) -> None:
    tracker.record("one", 3.25)
    s = tracker.summary()["one"]
    assert s.p50_ms == s.p95_ms == s.p99_ms == s.max_ms == s.min_ms == 3.25
    for value in (0.0, 0.0004, 250_000.0):
        tracker.record("extremes", value)
    e = tracker.summary()["extremes"]
    assert e.min_ms == 0.0 and e.max_ms == 250_000.0
    assert e.p99_ms == 250_000.0


def test_memory_is_bounded(tracker: PerformanceTracker) -> None:
    for i in range(100_000):
        tracker.record("hot", 0.5 + (i % 5000) * 0.37)
    stats = tracker._stats["hot"].histogram  # bounded by the range, not the count
    assert stats.count == 100_000
    assert len(stats.buckets) < 300


def test_max_operations_bounds_local_summary(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    tracker = PerformanceTracker("svc", meter_provider=provider, max_operations=2)
    for op in ("a", "b", "c"):
        tracker.record(op, 1.0)
    assert set(tracker.summary()) == {"a", "b"}
    assert {p.attributes["operation"] for p in points(reader) if p.attributes} == {"a", "b", "c"}


def test_summary_line_and_reset(tracker: PerformanceTracker) -> None:
    assert tracker.summary_line() == "api-gateway no operations recorded"
    tracker.record("b_op", 2.0)
    tracker.record("a_op", 1500.0, outcome="error")
    line = tracker.summary_line()
    assert line.startswith("api-gateway a_op n=1 err=1 p50=1500ms")
    assert "; b_op n=1 err=0 p50=2.00ms" in line
    assert "\n" not in line
    tracker.reset()
    assert tracker.summary() == {}


def test_thread_safety(tracker: PerformanceTracker, reader: InMemoryMetricReader) -> None:
    def work() -> None:
        for _ in range(500):
            tracker.record("parallel", 1.0)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tracker.summary()["parallel"].count == 4000
    assert by_outcome(reader, "parallel")["ok"].count == 4000


def test_global_provider_by_default() -> None:
    # No provider given: the API's global (a no-op proxy unless one is set);
    # recording must work either way.
    tracker = PerformanceTracker("svc")
    with tracker.measure("noop"):
        pass
    assert tracker.summary()["noop"].count == 1
