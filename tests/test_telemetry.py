"""The hub's own telemetry: Prometheus scrape, GetSystemMetrics, trace context."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
import pytest
from aitrading.hub.v1 import observability_pb2 as obs
from aitrading.hub.v1 import observability_pb2_grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hub_client import HubClient, InvalidArgument, ServiceNotFound
from tests.support.hubs import HubFactory
from tests.support.waiting import eventually


async def test_prometheus_endpoint_and_system_metrics(hub_factory: HubFactory) -> None:
    hub = await hub_factory(metrics_listen="127.0.0.1:0")
    await eventually(lambda: hub.services.election.is_leader)
    async with HubClient(hub.address) as client:
        await client.register("quotes", host="h", port=1, keep_alive=False)
        await client.register("quotes", host="h", port=2, keep_alive=False)
        for _ in range(5):
            await client.discover("quotes", fresh=True)  # each one a GetService
        with pytest.raises(ServiceNotFound):
            await client.discover("missing")
        watch = client.watch("quotes")
        await anext(watch)  # one open watch stream

        text = await asyncio.to_thread(_scrape, hub.services.telemetry.metrics_port)
        lines = text.splitlines()

        def metric(name: str, *labels: str) -> list[str]:
            return [ln for ln in lines if ln.startswith(name) and all(x in ln for x in labels)]

        assert metric("hub_instances{", 'service="quotes"')[0].endswith(" 2.0")
        assert metric("hub_watch_streams") and metric("hub_leader{")[0].endswith(" 1.0")
        assert metric(
            "hub_operation_duration", 'operation="/aitrading.hub.v1.RegistryService/GetService"'
        )

        async with grpc.aio.insecure_channel(hub.address) as ch:
            m = await observability_pb2_grpc.ObservabilityServiceStub(ch).GetSystemMetrics(
                obs.GetSystemMetricsRequest()
            )
        await watch.aclose()
    assert m.hub_id == hub.hub_id and m.leader and m.uptime_seconds > 0
    assert m.watch_streams >= 1
    assert [(s.service, s.instances, s.healthy) for s in m.services] == [("quotes", 2, 2)]
    rpcs = {r.method.rsplit("/", 1)[1]: r for r in m.rpcs}
    assert rpcs["GetService"].calls == 6 and rpcs["GetService"].errors == 1
    assert rpcs["GetService"].p99_ms >= rpcs["GetService"].p50_ms > 0
    assert rpcs["Register"].errors == 0


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


async def test_trace_context_is_continued(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    spans = InMemorySpanExporter()
    hub.services.telemetry.add_span_processor(SimpleSpanProcessor(spans))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = observability_pb2_grpc.ObservabilityServiceStub(ch)
        await stub.GetSystemMetrics(
            obs.GetSystemMetricsRequest(),
            metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),),
        )
    span = next(s for s in spans.get_finished_spans() if s.name.endswith("GetSystemMetrics"))
    assert f"{span.context.trace_id:032x}" == trace_id
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"


async def test_system_metrics_list_tenants_and_access_log_carries_context(
    hub_factory: HubFactory,
) -> None:
    import io
    import json
    import logging

    from hub_client import JsonFormatter

    hub = await hub_factory()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("central-hub"))
    access = logging.getLogger("hub_server.access")
    access.addHandler(handler)
    access.setLevel(logging.DEBUG)
    try:
        async with HubClient(hub.address, tenant_id="acme", correlation_id="req-1") as client:
            await client.create_tenant("acme", tier="pro")
            await client.allocate("websocket_connections", 7, tenant="acme")
            async with grpc.aio.insecure_channel(hub.address) as ch:
                stub = observability_pb2_grpc.ObservabilityServiceStub(ch)

                async def counted() -> bool:
                    nonlocal m
                    m = await stub.GetSystemMetrics(obs.GetSystemMetricsRequest())
                    return bool(m.tenants and m.tenants[0].usage)

                m = obs.GetSystemMetricsResponse()
                await eventually(counted)
    finally:
        access.removeHandler(handler)
        access.setLevel(logging.NOTSET)
    [tenant] = m.tenants
    assert (tenant.tenant_id, tenant.tier) == ("acme", "pro")
    assert tenant.usage["websocket_connections"] == 7
    assert tenant.limits["websocket_connections"] == 50
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    allocate = next(x for x in lines if "TenantService/Allocate" in x["message"])
    assert allocate["tenant_id"] == "acme" and allocate["correlation_id"] == "req-1"


async def test_a_config_watch_counts_as_a_watch_stream(hub_factory: HubFactory) -> None:
    from aitrading.hub.v1 import config_pb2, config_pb2_grpc

    hub = await hub_factory()
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = observability_pb2_grpc.ObservabilityServiceStub(ch)
        before = (await stub.GetSystemMetrics(obs.GetSystemMetricsRequest())).watch_streams
        watch = config_pb2_grpc.ConfigServiceStub(ch).WatchConfig(config_pb2.WatchConfigRequest())
        await watch.read()  # open: its snapshot came
        during = (await stub.GetSystemMetrics(obs.GetSystemMetricsRequest())).watch_streams
        watch.cancel()

        async def closed() -> bool:
            m = await stub.GetSystemMetrics(obs.GetSystemMetricsRequest())
            return m.watch_streams == before

        await eventually(closed)
    assert during == before + 1


async def test_a_client_stream_is_measured_and_logged_like_every_call(
    hub_factory: HubFactory, tmp_path: Path
) -> None:
    import io
    import logging

    hub = await hub_factory(backup_dir=tmp_path / "backups")
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    access = logging.getLogger("hub_server.access")
    access.addHandler(handler)
    access.setLevel(logging.DEBUG)
    try:
        async with HubClient(hub.address) as client:
            await client.restore(await client.backup(), dry_run=True)
            with pytest.raises(InvalidArgument):
                await client.restore(b"not a backup", dry_run=True)
    finally:
        access.removeHandler(handler)
        access.setLevel(logging.NOTSET)
    async with grpc.aio.insecure_channel(hub.address) as ch:
        m = await observability_pb2_grpc.ObservabilityServiceStub(ch).GetSystemMetrics(
            obs.GetSystemMetricsRequest()
        )
    rpcs = {r.method.rsplit("/", 1)[1]: r for r in m.rpcs}
    assert rpcs["RestoreBackup"].calls == 2 and rpcs["RestoreBackup"].errors == 1
    logged = lines.getvalue()
    assert "/aitrading.hub.v1.BackupService/RestoreBackup OK" in logged
    assert "/aitrading.hub.v1.BackupService/RestoreBackup INVALID_ARGUMENT" in logged
