"""What the dashboard shows, section by section, built from the replica's views,
services and servicers (hub_server/wiring.py) and turned into proto3 JSON by the
API layer's own message builders (``MessageToDict`` of the messages the gRPC API
answers with): one source of truth, and no hand-written copy of the protos'
shapes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from aitrading.hub.v1 import cluster_pb2, observability_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from hub_server.api.circuits import circuit_to_pb
from hub_server.api.config import merged_to_pb
from hub_server.api.deployments import deployment_to_pb, progress_to_pb
from hub_server.api.registry import instance_view
from hub_server.api.tenants import tenant_to_pb, usage_to_pb
from hub_server.kernel.errors import InvalidArgument
from hub_server.kernel.validation import repair_wellformed
from hub_server.store import keys
from hub_server.wiring import Services

Json = dict[str, Any]

# Enough for a page; the API has the paging.
MAX_TENANTS = 200
MAX_DEPLOYMENTS = 50
ALERT_HISTORY = 50


def to_json(message: Message) -> Json:
    """proto3 JSON, with default values spelled out so the page need not guess."""
    try:
        return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    except (ValueError, json_format.Error):
        # A value stored before requests were checked (a Duration out of range, a
        # NaN in a Struct): show the rest of the message rather than fail the page.
        copy = type(message)()
        copy.CopyFrom(message)
        repair_wellformed(copy)
        return json_format.MessageToDict(copy, always_print_fields_with_no_presence=True)


def request_from(query: Mapping[str, str], message: Message) -> Message:
    """Fills a request message from query parameters (its JSON field names); a
    bad value is INVALID_ARGUMENT naming the field."""
    try:
        return json_format.ParseDict(
            {k: v for k, v in query.items() if v != ""}, message, ignore_unknown_fields=True
        )
    except json_format.ParseError as e:
        raise InvalidArgument.single("query", str(e)) from None


class Sections:
    """One method per section of the page; each answers a JSON object."""

    def __init__(self, services: Services) -> None:
        self._services = services
        # The replica's own servicers: the overview is what GetSystemMetrics
        # and GetClusterStatus answer.
        self._system = services.system_metrics
        self._observability = services.observability
        self._cluster = services.cluster

    # Which section answers which path, and the gRPC method whose permission it
    # needs (the data it shows is what that method answers).
    def routes(self) -> dict[str, tuple[str, Callable[[Mapping[str, str]], Any]]]:
        return {
            "overview": ("ObservabilityService/GetSystemMetrics", self.overview),
            "services": ("RegistryService/ListServices", self.services),
            "circuits": ("CircuitBreakerService/GetCircuitState", self.circuits),
            "alerts": ("ObservabilityService/ListAlerts", self.alerts),
            "deployments": ("DeploymentService/ListDeployments", self.deployments),
            "tenants": ("TenantService/ListTenants", self.tenants),
            "audit": ("ObservabilityService/ListAuditEvents", self.audit),
            "errors": ("ObservabilityService/ListErrorPatterns", self.errors),
            "xds": ("ClusterService/ListXdsClients", self.xds),
        }

    async def overview(self, query: Mapping[str, str]) -> Json:
        metrics = await self._observability.GetSystemMetrics(
            observability_pb2.GetSystemMetricsRequest(), None
        )
        cluster = await self._cluster.GetClusterStatus(cluster_pb2.GetClusterStatusRequest(), None)
        return {"metrics": to_json(metrics), "cluster": to_json(cluster)}

    async def services(self, query: Mapping[str, str]) -> Json:
        s = self._services
        view, health, loads = s.view, s.health_view, s.picker.loads.items
        view.ensure_live()
        now = time.time()
        counts = {m.service: m for m in (await self._system.collect()).services}
        out = []
        for name in sorted(view.services):
            instances = []
            for instance_id, inst in sorted(view.services[name].items()):
                shown = instance_view(
                    inst, health.of(inst), s.deployments.is_draining(name, instance_id)
                )
                shown.load_factor = loads.get(keys.load_key(name, instance_id), 0.0)
                instances.append(to_json(shown))
            out.append(
                {
                    "name": name,
                    "metrics": to_json(counts[name]) if name in counts else {},
                    "circuit": to_json(circuit_to_pb(s.circuits.get(name), now)),
                    "instances": instances,
                }
            )
        return {"revision": str(view.revision), "services": out}

    async def circuits(self, query: Mapping[str, str]) -> Json:
        """Every stored circuit, and the (CLOSED) circuit of each registered
        service that has none yet, so an operator can act on it."""
        circuits = self._services.circuits
        circuits.mirror.ensure_live()
        now = time.time()
        stored = {(s.service, s.instance_id): s for s in circuits.mirror.items.values()}
        for name in self._services.view.services:
            if (name, "") not in stored:
                stored[(name, "")] = circuits.get(name)
        return {
            "revision": str(circuits.mirror.revision),
            "circuits": [to_json(circuit_to_pb(stored[k], now)) for k in sorted(stored)],
        }

    async def alerts(self, query: Mapping[str, str]) -> Json:
        request = request_from(
            {"historyLimit": str(ALERT_HISTORY), **query}, observability_pb2.ListAlertsRequest()
        )
        return to_json(await self._observability.ListAlerts(request, None))

    async def deployments(self, query: Mapping[str, str]) -> Json:
        deployments = self._services.deployments
        found = deployments.find(query.get("service", ""))[:MAX_DEPLOYMENTS]
        return {
            "revision": str(deployments.mirror.revision),
            "deployments": [
                {
                    "deployment": to_json(deployment_to_pb(s)),
                    "progress": to_json(progress_to_pb(s.deployment)),
                }
                for s in found
            ],
        }

    async def tenants(self, query: Mapping[str, str]) -> Json:
        """Each tenant with its tier, its usage against its limits and its merged
        config, as GetTenant, GetUsage and GetTenantConfig answer them."""
        s = self._services
        s.tenants.ensure_live()
        s.configs.ensure_live()
        records, more = s.tenants.page("", MAX_TENANTS, None)
        usages = await asyncio.gather(*(s.quotas.usage(r.tenant_id, "") for r in records))
        out = []
        for record, (merged, usage, _) in zip(records, usages, strict=True):
            out.append(
                {
                    "tenant": to_json(tenant_to_pb(record)),
                    "usage": [to_json(usage_to_pb(u)) for u in usage],
                    "config": to_json(merged_to_pb(merged)),
                }
            )
        return {"revision": str(s.tenants.revision), "tenants": out, "more": more}

    async def audit(self, query: Mapping[str, str]) -> Json:
        """The newest events first, filtered by tenant, method and age."""
        try:
            limit = int(query.get("limit") or 100)
            since = float(query.get("since") or 0)  # seconds back; 0: all
        except ValueError:
            raise InvalidArgument.single("limit", "limit and since must be numbers") from None
        events, revision = await self._services.audit.latest(
            tenant_id=query.get("tenant", ""),
            method=query.get("method", ""),
            start=time.time() - since if since > 0 else 0.0,
            limit=limit,
        )
        return {"revision": str(revision), "events": [to_json(e) for e in events]}

    async def errors(self, query: Mapping[str, str]) -> Json:
        request = request_from(query, observability_pb2.ListErrorPatternsRequest())
        return to_json(await self._observability.ListErrorPatterns(request, None))

    async def xds(self, query: Mapping[str, str]) -> Json:
        """The xDS clients connected to this replica (each replica's dashboard
        shows its own; `hubctl xds clients` asks them all)."""
        answer = await self._cluster.ListXdsClients(cluster_pb2.ListXdsClientsRequest(), None)
        return to_json(answer)
