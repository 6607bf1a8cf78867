"""The hub's per-RPC durations, counted in the call path and handed over when
collected, export exactly what recording through the OpenTelemetry SDK did."""

from __future__ import annotations

from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
)
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from hub_client import PerformanceTracker
from hub_server.observability.rpc_durations import fits
from hub_server.observability.telemetry import Telemetry

GET = "/aitrading.hub.v1.RegistryService/GetService"
PICK = "/aitrading.hub.v1.BalancingService/PickEndpoint"
# On, below and above bucket bounds, zero and past the last bound.
CALLS = [
    (GET, "OK", 0.1), (GET, "OK", 0.031), (GET, "OK", 0.26), (GET, "NOT_FOUND", 2.5),
    (GET, "NOT_FOUND", 0.0), (PICK, "OK", 60000.0), (PICK, "OK", 75000.5),
    (PICK, "INTERNAL", 12.0), (GET, "OK", 999.9),
]  # fmt: skip


class _Reference:
    """What the hub exported before: every call recorded through the SDK."""

    def __init__(self, hub_id: str) -> None:
        self.registry = CollectorRegistry()
        self.memory = InMemoryMetricReader()
        resource = Resource.create({"service.name": "central-hub", "service.instance.id": hub_id})
        provider = MeterProvider(
            metric_readers=[self.memory, PrometheusMetricReader(registry=self.registry)],
            resource=resource,
        )
        self.tracker = PerformanceTracker("central-hub", meter_provider=provider)

    def rpc_finished(self, method: str, outcome: str, ms: float) -> None:
        ok = outcome == "OK"
        self.tracker.record(
            method, ms, outcome="ok" if ok else "error", error_type=None if ok else outcome
        )


def _hub(hub_id: str) -> tuple[Telemetry, InMemoryMetricReader, CollectorRegistry]:
    registry, memory = CollectorRegistry(), InMemoryMetricReader()
    telemetry = Telemetry(hub_id, readers=[memory, PrometheusMetricReader(registry=registry)])
    return telemetry, memory, registry


def _durations(text: bytes) -> list[str]:
    return [ln for ln in text.decode().splitlines() if "operation_duration" in ln]


def _points(reader: InMemoryMetricReader) -> dict[Any, tuple[Any, ...]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[Any, tuple[Any, ...]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name != PerformanceTracker.METRIC_NAME:
                    continue
                for p in m.data.data_points:
                    assert isinstance(p, HistogramDataPoint)
                    key = (sm.scope, sm.schema_url, m.unit, m.description)
                    found[(key, tuple(sorted((p.attributes or {}).items())))] = (
                        p.count, p.sum, tuple(p.bucket_counts), tuple(p.explicit_bounds),
                        p.min, p.max, list(p.attributes or {}),
                    )  # fmt: skip
    return found


def test_exports_match_the_sdk_path() -> None:
    reference = _Reference("h1")
    telemetry, memory, registry = _hub("h1")
    for method, outcome, ms in CALLS:
        reference.rpc_finished(method, outcome, ms)
        telemetry.rpc_finished(method, outcome, ms)
    ours = _durations(generate_latest(registry))
    assert len(ours) > 40 and ours == _durations(generate_latest(reference.registry))
    assert _points(memory) == _points(reference.memory) and len(_points(memory)) == 4
    assert telemetry.rpc_summary() == reference.tracker.summary()
    # Collected again: cumulative, still the same.
    telemetry.rpc_finished(GET, "OK", 3.0)
    reference.rpc_finished(GET, "OK", 3.0)
    assert _points(memory) == _points(reference.memory)
    telemetry.shutdown()


def test_with_tracing_the_sdk_path_adds_to_the_counted_series() -> None:
    """A span processor brings exemplars, which only the SDK's path records:
    the points it makes merge with those counted before."""
    reference = _Reference("h2")
    telemetry, memory, registry = _hub("h2")
    for method, outcome, ms in CALLS[:4]:
        reference.rpc_finished(method, outcome, ms)
        telemetry.rpc_finished(method, outcome, ms)
    telemetry.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    for method, outcome, ms in CALLS[4:]:
        reference.rpc_finished(method, outcome, ms)
        telemetry.rpc_finished(method, outcome, ms)
    assert _points(memory) == _points(reference.memory)
    assert _durations(generate_latest(registry)) == _durations(generate_latest(reference.registry))
    telemetry.shutdown()


def test_nothing_recorded_exports_nothing() -> None:
    telemetry, memory, registry = _hub("h3")
    assert _durations(generate_latest(registry)) == []
    assert memory.get_metrics_data() is None
    telemetry.rpc_finished(GET, "OK", 1.0)  # and once there is, it is there
    assert len(_points(memory)) == 1
    telemetry.shutdown()


def test_which_readers_are_counted_for() -> None:
    """Cumulative explicit-bucket readers take the counted series (the tests
    above would pass on the SDK's path alone); others keep the SDK's path."""
    delta = InMemoryMetricReader(preferred_temporality={Histogram: AggregationTemporality.DELTA})
    exponential = InMemoryMetricReader(
        preferred_aggregation={Histogram: ExponentialBucketHistogramAggregation()}
    )
    assert fits(InMemoryMetricReader()) and fits(PrometheusMetricReader())
    assert not fits(delta) and not fits(exponential)
    telemetry = Telemetry("h4", readers=[InMemoryMetricReader(), delta])
    telemetry.rpc_finished(GET, "OK", 1.0)
    assert _points(delta) and telemetry.rpc_summary()[GET].count == 1
    telemetry.shutdown()


def test_batched_durations_match_the_sdk_path_while_scraped() -> None:
    """Durations wait in batches (RpcDurations.FOLD_AT) before they are
    counted: whatever reads them, at any point of a batch and from another
    thread meanwhile, sees every call so far."""
    import random
    import threading

    reference = _Reference("h5")
    telemetry, memory, registry = _hub("h5")
    rng = random.Random(18)
    stop = threading.Event()

    def scrape() -> None:  # the exporter's thread, folding while calls are added
        while not stop.is_set():
            generate_latest(registry)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for i in range(2_000):
            method, outcome, _ = CALLS[rng.randrange(len(CALLS))]
            ms = rng.choice((0.0, 0.25, 5.0, 70000.0)) if i % 97 == 0 else rng.expovariate(3.0)
            reference.rpc_finished(method, outcome, ms)
            telemetry.rpc_finished(method, outcome, ms)
            if i in (5, 255, 256, 700, 1999):
                assert telemetry.rpc_summary() == reference.tracker.summary()
    finally:
        stop.set()
        scraper.join()
    assert _points(memory) == _points(reference.memory)
    assert _durations(generate_latest(registry)) == _durations(generate_latest(reference.registry))
    telemetry.shutdown()
