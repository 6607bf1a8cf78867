"""Envoy's generated protos arrive through the install step (scripts/envoy_protos.py)
without breaking OTLP export: xds-protos' own opentelemetry and google copies must
never replace the installed ones."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import subprocess
import sys
import zipfile
from base64 import urlsafe_b64decode
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope

from hub_client import HubClient
from tests.support.hubs import HubFactory
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("envoy_protos", ROOT / "scripts/envoy_protos.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["envoy_protos"] = module
    spec.loader.exec_module(module)
    return module


envoy_protos = _load_script()


def test_envoy_and_otlp_protos_load_side_by_side() -> None:
    assert ads_pb2_grpc.AggregatedDiscoveryServiceStub
    assert discovery_pb2.DiscoveryRequest(type_url="x").type_url == "x"
    assert InstrumentationScope(name="hub").name == "hub"
    dist = importlib.metadata.distribution(envoy_protos.NAME)
    tops = {str(f).split("/", 1)[0] for f in dist.files or []}
    assert tops - {f"{envoy_protos.DIST}-{dist.version}.dist-info"} == set(envoy_protos.PACKAGES)


@pytest.mark.parametrize("name", ["opentelemetry-proto", "googleapis-common-protos"])
def test_installed_proto_files_are_their_own_distributions(name: str) -> None:
    # Every file a proto distribution installed still has the hash its RECORD
    # names: nothing (xds-protos' older copies) was written over it.
    dist = importlib.metadata.distribution(name)
    checked = 0
    for f in dist.files or []:
        if f.hash is None or not str(f).endswith(".py"):
            continue
        data = Path(str(f.locate())).read_bytes()
        expected = urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4))
        assert hashlib.new(f.hash.mode, data).digest() == expected, f
        checked += 1
    assert checked > 10


def test_the_local_wheel_holds_only_envoy_packages(tmp_path: Path) -> None:
    source = sorted(envoy_protos.DEFAULT_WHEELHOUSE.glob("xds_protos-*.whl"))
    assert source, "the install step keeps xds-protos in build/wheelhouse: run `make install`"
    wheel = envoy_protos.build_wheel(source[-1], tmp_path / "wheels")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        record = z.read(f"{envoy_protos.DIST}-{envoy_protos.XDS_PROTOS_VERSION}.dist-info/RECORD")
    tops = {n.split("/", 1)[0] for n in names}
    assert tops - set(envoy_protos.PACKAGES) == {
        f"{envoy_protos.DIST}-{envoy_protos.XDS_PROTOS_VERSION}.dist-info"
    }
    assert len(record.decode().splitlines()) == len(names)
    # The same input builds the same wheel.
    again = envoy_protos.build_wheel(source[-1], tmp_path / "again")
    assert again.read_bytes() == wheel.read_bytes()

    # Installed on its own (no index) beside this environment's packages, envoy
    # and OTLP import together in a fresh interpreter.
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
         "--target", str(site), str(wheel)],
        check=True,
    )  # fmt: skip
    code = (
        "import envoy, sys; assert envoy.__file__.startswith(sys.argv[1]), envoy.__file__\n"
        "from envoy.config.cluster.v3 import cluster_pb2\n"
        "from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope\n"
        "from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter\n"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code, str(site)], check=True, env=env, cwd=tmp_path)


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC collector that keeps what it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str]] = []  # (scope name, span name)
        self.metric_batches = 0

    async def Export(
        self, request: trace_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append((scope_spans.scope.name, span.name))
        return trace_pb2.ExportTraceServiceResponse()


class MetricsCollector(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    async def Export(
        self, request: metrics_pb2.ExportMetricsServiceRequest, context: Any
    ) -> metrics_pb2.ExportMetricsServiceResponse:
        self._collector.metric_batches += 1
        return metrics_pb2.ExportMetricsServiceResponse()


async def test_otlp_export_reaches_a_collector(
    hub_factory: HubFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # ms between span batches
    collector = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
        MetricsCollector(collector), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        hub = await hub_factory(otlp_endpoint=f"127.0.0.1:{port}")
        async with HubClient(hub.address) as client:
            await client.register("quotes", host="h", port=1, keep_alive=False)
            await client.discover("quotes")
        await eventually(lambda: any("GetService" in name for _, name in collector.spans))
        assert all(scope == "central-hub" for scope, _ in collector.spans)
    finally:
        await server.stop(None)
