"""The hub's own telemetry: OpenTelemetry metrics and traces for every RPC, gauges
of its state, a Prometheus scrape endpoint and, when configured, OTLP export.

Per-RPC latency goes into hub_client's PerformanceTracker: its bounded local
percentiles, which GetSystemMetrics reports, and its OpenTelemetry histogram
(counted cheaply by ``rpc_durations`` and handed over when collected), so both
views come from one measurement.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.metrics import CallbackOptions, Histogram, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from hub_client import OperationSummary, PerformanceTracker
from hub_server.observability.rpc_durations import RpcDurations, fits

log = logging.getLogger(__name__)

# Gauges read the hub's state when scraped: name -> (description, callback
# returning (value, attributes) pairs).
GaugeSource = Callable[[], Iterable[tuple[float, dict[str, Any]]]]


def _observer(name: str, source: GaugeSource) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        try:
            return [Observation(value, attrs) for value, attrs in source()]
        except Exception as e:  # a failing source must not break the scrape
            log.debug("metric %s failed: %r", name, e)
            return []

    return observe


# What a call is wrapped in when no span is built (stateless: one serves all).
NO_SPAN = contextlib.nullcontext()


class Telemetry:
    def __init__(
        self,
        hub_id: str,
        *,
        metrics_listen: str = "",
        otlp_endpoint: str = "",
        readers: list[MetricReader] | None = None,
    ) -> None:
        self.started = time.time()
        resource = Resource.create({"service.name": "central-hub", "service.instance.id": hub_id})
        readers = list(readers or [])
        self._http: Any = None
        self.metrics_port = 0
        if metrics_listen:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import CollectorRegistry, start_http_server

            registry = CollectorRegistry()  # per hub: several may share a process
            readers.append(PrometheusMetricReader(registry=registry))
            host, _, port = metrics_listen.rpartition(":")
            self._http, _ = start_http_server(
                int(port), addr=host or "127.0.0.1", registry=registry
            )
            self.metrics_port = self._http.server_port
            log.info("Prometheus metrics on http://%s:%d/metrics", host, self.metrics_port)
        self.tracer_provider = TracerProvider(resource=resource)
        # No span is built until something would receive it (the call wrapper
        # reads this on every call).
        self.tracing = False
        otlp_spans: SpanProcessor | None = None
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            readers.append(
                PeriodicExportingMetricReader(
                    OTLPMetricExporter(endpoint=otlp_endpoint, insecure=True)
                )
            )
            otlp_spans = BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True))
        self.meter_provider = MeterProvider(metric_readers=readers, resource=resource)
        self.tracer = self.tracer_provider.get_tracer("central-hub")
        self.rpcs = PerformanceTracker("central-hub", meter_provider=self.meter_provider)
        self._durations = RpcDurations(self.rpcs)
        # Counted here unless a reader wants what only the SDK's path gives.
        self._counted = all(fits(reader) for reader in readers)
        if self._counted:
            for reader in readers:
                self._durations.attach(reader, resource)
        self._choose_rpc_path()
        self._meter = self.meter_provider.get_meter("central-hub")
        if otlp_spans is not None:  # once the durations' path exists: it switches it
            self.add_span_processor(otlp_spans)

    def gauge(self, name: str, description: str, source: GaugeSource, unit: str = "1") -> None:
        self._meter.create_observable_gauge(
            name, [_observer(name, source)], unit=unit, description=description
        )

    def counter(self, name: str, description: str, source: GaugeSource, unit: str = "1") -> None:
        """A cumulative count read when scraped (like ``gauge``)."""
        self._meter.create_observable_counter(
            name, [_observer(name, source)], unit=unit, description=description
        )

    def histogram(self, name: str, description: str, unit: str = "ms") -> Histogram:
        """A distribution recorded as it happens (``record(value, attributes)``)."""
        return self._meter.create_histogram(name, unit=unit, description=description)

    def add_span_processor(self, processor: SpanProcessor) -> None:
        """Where the RPC spans go (OTLP when configured; tests add their own)."""
        self.tracer_provider.add_span_processor(processor)
        self._durations.fold()  # what was counted stays ahead of the SDK's points
        self.tracing = True  # and exemplars (trace ids) go with the durations
        self._choose_rpc_path()

    def span(self, method: str, metadata: Iterable[tuple[str, Any]] | None) -> Any:
        """A server span for one call, child of the caller's trace if it sent one.
        Without a span processor a span would be built only to be dropped: about
        a tenth of a discovery call's CPU (make bench), so none is built."""
        if not self.tracing:
            return NO_SPAN
        carrier = {k: v for k, v in (metadata or ()) if isinstance(v, str)}
        return self.tracer.start_as_current_span(
            method, context=propagate.extract(carrier), kind=trace.SpanKind.SERVER
        )

    # rpc_finished(method, outcome, duration_ms): one call's duration and
    # outcome ("OK" or its status code's name). Counted by RpcDurations (the
    # method is its ``add``, no layer between), or with tracing recorded
    # through the SDK, which attaches exemplars.
    rpc_finished: Callable[[str, str, float], None]

    def _choose_rpc_path(self) -> None:
        counted = self._counted and not self.tracing
        self.rpc_finished = self._durations.add if counted else self._rpc_finished_via_sdk

    def _rpc_finished_via_sdk(self, method: str, outcome: str, duration_ms: float) -> None:
        ok = outcome == "OK"
        self.rpcs.record(
            method, duration_ms, outcome="ok" if ok else "error", error_type=None if ok else outcome
        )

    def rpc_summary(self) -> dict[str, OperationSummary]:
        self._durations.fold()
        return self.rpcs.summary()

    def shutdown(self) -> None:
        if self._http is not None:
            self._http.shutdown()
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()
