"""The hub's own metrics read from the views it keeps: the gauges it exports
(Prometheus, OTLP) and the per-tenant figures of GetSystemMetrics."""

from __future__ import annotations

from collections.abc import Callable

from aitrading.hub.v1 import observability_pb2 as obs

from hub_server.health.service import HealthView
from hub_server.observability.telemetry import Telemetry
from hub_server.observability.tenant_alerts import TenantLimits
from hub_server.registry.service import RegistryView
from hub_server.tenancy.service import Tenants


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
