"""The hub's own metrics read from the views it keeps: the gauges it exports
(Prometheus, OTLP) and GetSystemMetrics' answer (SystemMetrics)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from aitrading.hub.v1 import observability_pb2 as obs

from hub_server.health.service import DEGRADED, HEALTHY, STARTING, UNHEALTHY, UNKNOWN, HealthView
from hub_server.observability.telemetry import Telemetry
from hub_server.observability.tenant_alerts import TenantLimits
from hub_server.registry.service import RegistryView, ServiceInstances, StoredInstance
from hub_server.tenancy.service import Tenants
from hub_server.xds.clients import XdsClients


def add_hub_gauges(
    telemetry: Telemetry,
    view: RegistryView,
    health: HealthView,
    tenant_limits: TenantLimits,
    *,
    is_leader: Callable[[], bool],
    open_streams: Callable[[], int],
) -> None:
    t = telemetry
    t.gauge(
        "hub.instances",
        "Registered instances per service",
        lambda: [(len(i), {"service": s}) for s, i in view.services.items()],
    )
    t.gauge("hub.watch_streams", "Watch streams served", lambda: [(open_streams(), {})])
    t.gauge("hub.leader", "1 on the elected replica", lambda: [(int(is_leader()), {})])
    t.gauge(
        "hub.instance.probe_latency",
        "Latency of each instance's last probe",
        lambda: [
            (h.latency_ms, {"service": h.service, "instance": h.instance_id})
            for h in health.mirror.items.values()
        ],
        unit="ms",
    )
    t.gauge(
        "hub.quota.usage",
        "Tenant usage per resource (this hour's for rates)",
        lambda: [
            (used, {"tenant": tenant, "resource": resource, "limit": limit})
            for tenant, resource, used, limit in tenant_limits.current()
        ],
    )


def add_xds_metrics(telemetry: Telemetry, clients: XdsClients) -> None:
    """The xDS control plane's metrics: open ADS streams, pushes and their
    latency (from the change seen to the response sent), NACKs."""
    t = telemetry
    t.gauge("hub.xds.streams", "Open xDS (ADS) streams", lambda: [(clients.open_streams, {})])
    t.counter("hub.xds.pushes", "xDS responses sent", lambda: [(clients.pushes, {})])
    t.counter("hub.xds.nacks", "xDS responses rejected by clients", lambda: [(clients.nacks, {})])
    latency = t.histogram(
        "hub.xds.push_latency", "From a change seen to the xDS response that carries it sent"
    )
    clients.on_push_latency(
        lambda ms, type_url: latency.record(ms, {"type": type_url.rsplit(".", 1)[-1]})
    )


def tenant_metrics(tenants: Tenants, tenant_limits: TenantLimits) -> list[obs.TenantMetrics]:
    """Every tenant with its tier, current usage and limits (from memory)."""
    usage: dict[str, dict[str, tuple[int, int]]] = {}
    for tenant_id, resource, used, limit in tenant_limits.current():
        usage.setdefault(tenant_id, {})[resource] = (used, limit)
    out = []
    for record in sorted(tenants.mirror.items.values(), key=lambda r: r.tenant_id):
        found = usage.get(record.tenant_id, {})
        out.append(
            obs.TenantMetrics(
                tenant_id=record.tenant_id,
                tier=record.tier,
                usage={r: u for r, (u, _) in found.items()},
                limits={r: lim for r, (_, lim) in found.items()},
            )
        )
    return out


class Fleet(Protocol):
    """What GetSystemMetrics counts of the registry
    (hub_server.registry.service.RegistryView)."""

    @property
    def revision(self) -> int: ...
    @property
    def services(self) -> Mapping[str, ServiceInstances]: ...


class HealthOf(Protocol):
    """The health records it counts by status (hub_server.health.service.HealthView)."""

    def status(self, service: str, instance_id: str, stored: StoredInstance) -> int: ...


class SystemMetrics:
    """Builds GetSystemMetrics from the views this replica keeps and its own RPC
    statistics."""

    def __init__(
        self,
        hub_id: str,
        registry: Fleet,
        health: HealthOf,
        telemetry: Telemetry,
        is_leader: Callable[[], bool],
        open_streams: Callable[[], int],
        tenants: Callable[[], Awaitable[list[obs.TenantMetrics]]] | None = None,
    ) -> None:
        self._hub_id = hub_id
        self._registry = registry
        self._health = health
        self._telemetry = telemetry
        self._is_leader = is_leader
        self._open_streams = open_streams
        self._tenants = tenants

    def revision(self) -> int:
        return self._registry.revision

    async def collect(self) -> obs.GetSystemMetricsResponse:
        uptime = max(time.time() - self._telemetry.started, 1e-9)
        services = []
        for name in sorted(self._registry.services):
            counts = Counter(
                self._health.status(name, iid, stored)
                for iid, stored in self._registry.services[name].stored.items()
            )
            services.append(
                obs.ServiceMetrics(
                    service=name,
                    instances=sum(counts.values()),
                    healthy=counts[HEALTHY],
                    degraded=counts[DEGRADED],
                    unhealthy=counts[UNHEALTHY],
                    unknown=counts[UNKNOWN] + counts[STARTING],  # not proven yet
                )
            )
        rpcs = [
            obs.RpcMetrics(
                method=method, calls=s.count, errors=s.errors, error_rate=s.error_rate,
                calls_per_second=s.count / uptime, p50_ms=s.p50_ms, p95_ms=s.p95_ms,
                p99_ms=s.p99_ms,
            )
            for method, s in self._telemetry.rpc_summary().items()
        ]  # fmt: skip
        return obs.GetSystemMetricsResponse(
            hub_id=self._hub_id,
            leader=self._is_leader(),
            uptime_seconds=uptime,
            watch_streams=self._open_streams(),
            services=services,
            tenants=await self._tenants() if self._tenants is not None else [],
            rpcs=rpcs,
        )
