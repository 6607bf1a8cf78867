"""HubClient: the async Python entry point to a Central Hub."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

import grpc
from aitrading.hub.v1 import (
    balancer_pb2,
    balancer_pb2_grpc,
    circuit_pb2,
    circuit_pb2_grpc,
    cluster_pb2,
    cluster_pb2_grpc,
    health_pb2,
    health_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    types_pb2,
)
from google.protobuf import duration_pb2

from hub_client._private.circuits import CircuitCache, CircuitGuard, OutcomeReporter
from hub_client._private.errors import from_rpc_error
from hub_client._private.models import CircuitInfo, Endpoint, Health, Service
from hub_client._private.registration import Registration
from hub_client._private.watch import watch_registry

log = logging.getLogger(__name__)

_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]

_TIERS = {
    "free": types_pb2.SUBSCRIPTION_TIER_FREE,
    "pro": types_pb2.SUBSCRIPTION_TIER_PRO,
    "enterprise": types_pb2.SUBSCRIPTION_TIER_ENTERPRISE,
}
_PROTOCOLS = {
    "http": types_pb2.PROTOCOL_HTTP,
    "https": types_pb2.PROTOCOL_HTTPS,
    "grpc": types_pb2.PROTOCOL_GRPC,
    "tcp": types_pb2.PROTOCOL_TCP,
    "websocket": types_pb2.PROTOCOL_WEBSOCKET,
}
_STRATEGIES = {
    "least_load": balancer_pb2.BALANCING_STRATEGY_LEAST_LOAD,
    "round_robin": balancer_pb2.BALANCING_STRATEGY_ROUND_ROBIN,
    "weighted": balancer_pb2.BALANCING_STRATEGY_WEIGHTED,
    "consistent_hash": balancer_pb2.BALANCING_STRATEGY_CONSISTENT_HASH,
    "latency_aware": balancer_pb2.BALANCING_STRATEGY_LATENCY_AWARE,
}
_RESOURCE_TIERS = {
    "basic": types_pb2.RESOURCE_TIER_BASIC,
    "premium": types_pb2.RESOURCE_TIER_PREMIUM,
    "enterprise": types_pb2.RESOURCE_TIER_ENTERPRISE,
}


@dataclass(frozen=True)
class TenantContext:
    """Sent as metadata on every call (x-tenant-id, x-user-id, ...)."""

    tenant_id: str = ""
    user_id: str = ""
    subscription_tier: str = ""
    correlation_id: str = ""

    def metadata(self) -> tuple[tuple[str, str], ...]:
        pairs = (
            ("x-tenant-id", self.tenant_id),
            ("x-user-id", self.user_id),
            ("x-subscription-tier", self.subscription_tier),
            ("x-correlation-id", self.correlation_id),
        )
        return tuple((k, v) for k, v in pairs if v)


def _duration(seconds: float | None) -> duration_pb2.Duration | None:
    if seconds is None:
        return None
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def health_check(
    *,
    http: str | None = None,
    grpc_service: str | None = None,
    tcp: bool = False,
    interval: float | None = None,
    timeout: float | None = None,
) -> types_pb2.HealthCheck:
    """A health-check spec: ``health_check(http="/health")``, ``health_check(tcp=True)``,
    ``health_check(grpc_service="")`` for the standard gRPC health service."""
    hc = types_pb2.HealthCheck(interval=_duration(interval), timeout=_duration(timeout))
    if http is not None:
        hc.http.path = http
    elif grpc_service is not None:
        hc.grpc.service = grpc_service
    elif tcp:
        hc.tcp.SetInParent()
    return hc


class HubClient:
    """An async client of Central Hub.

    Use it as an async context manager::

        async with HubClient("127.0.0.1:7000", tenant_id="company_abc",
                             subscription_tier="pro") as hub:
            reg = await hub.register("data-bridge", host="10.0.0.5", port=8001)
            svc = await hub.discover("data-bridge")

    The generated stubs stay reachable as ``hub.registry_stub`` for anything the
    wrapper does not cover.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:7000",
        *,
        tenant_id: str = "",
        user_id: str = "",
        subscription_tier: str = "",
        correlation_id: str = "",
        timeout: float = 10.0,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.context = TenantContext(tenant_id, user_id, subscription_tier, correlation_id)
        self._own_channel = channel is None
        self.channel = channel or grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self.registry_stub = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthServiceStub(self.channel)
        self.balancer_stub = balancer_pb2_grpc.LoadBalancerServiceStub(self.channel)
        self.circuit_stub = circuit_pb2_grpc.CircuitBreakerServiceStub(self.channel)
        self.cluster_stub = cluster_pb2_grpc.ClusterServiceStub(self.channel)
        self._registrations: set[Registration] = set()
        self._circuits: CircuitCache | None = None
        self._reporter: OutcomeReporter | None = None

    def with_context(self, **changes: str) -> HubClient:
        """The same connection with other tenant headers (tenant_id, user_id, ...)."""
        clone = HubClient(self.target, timeout=self.timeout, channel=self.channel)
        clone.context = replace(self.context, **changes)
        clone._own_channel = False
        return clone

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Deregisters what this client registered, then closes the channel."""
        await asyncio.gather(
            *(r.deregister() for r in list(self._registrations)), return_exceptions=True
        )
        if self._reporter is not None:
            await self._reporter.close()
        if self._circuits is not None:
            await self._circuits.close()
        if self._own_channel:
            await self.channel.close()

    async def _unary(self, method: Any, request: Any) -> Any:
        # wait_for_ready: ride over a hub restart (within the timeout) instead of
        # failing at once while the channel reconnects.
        try:
            return await method(
                request,
                timeout=self.timeout,
                metadata=self.context.metadata(),
                wait_for_ready=True,
            )
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None

    # -- registry ----------------------------------------------------------

    async def register(
        self,
        service: str,
        *,
        host: str,
        port: int,
        instance_id: str = "",
        protocol: str = "http",
        version: str = "",
        metadata: Mapping[str, str] | None = None,
        health: types_pb2.HealthCheck | None = None,
        tenant_capable: bool = True,
        subscription_requirements: Sequence[str] = (),
        resource_tier: str = "basic",
        ttl: int = 30,
        weight: int = 100,
        keep_alive: bool = True,
    ) -> Registration:
        """Registers an instance and returns a handle that keeps its lease alive
        in the background (re-registering if the lease was lost) until
        ``await handle.deregister()`` or the end of ``async with handle``."""
        try:
            tiers = [_TIERS[t] for t in subscription_requirements]
            request = registry_pb2.RegisterRequest(
                service=service,
                instance_id=instance_id,
                host=host,
                port=port,
                protocol=_PROTOCOLS[protocol],
                version=version,
                metadata=dict(metadata or {}),
                health_check=health,
                tenant_capable=tenant_capable,
                subscription_requirements=tiers,
                resource_tier=_RESOURCE_TIERS[resource_tier],
                ttl_seconds=ttl,
                weight=weight,
            )
        except KeyError as e:
            raise ValueError(f"unknown value {e.args[0]!r}") from None
        reg = Registration(self, request)
        await reg.start(keep_alive=keep_alive)
        self._registrations.add(reg)
        reg.on_close = self._registrations.discard
        return reg

    async def discover(
        self, service: str, *, legacy_mode: bool = False, include_unhealthy: bool = False
    ) -> Service:
        """The service's usable instances that this caller's tier may use: the
        HEALTHY ones, else the DEGRADED ones, else those not probed yet.
        ``include_unhealthy`` returns every instance (for operators)."""
        resp = await self._unary(
            self.registry_stub.GetService,
            registry_pb2.GetServiceRequest(
                service=service, legacy_mode=legacy_mode, include_unhealthy=include_unhealthy
            ),
        )
        return Service.from_pb(resp.service, resp.header.revision)

    async def list_services(self, *, legacy_mode: bool = False) -> list[Service]:
        """Every service this caller's tier may use (all pages)."""
        out: list[Service] = []
        token = ""
        while True:
            resp = await self._unary(
                self.registry_stub.ListServices,
                registry_pb2.ListServicesRequest(legacy_mode=legacy_mode, page_token=token),
            )
            out.extend(Service.from_pb(s, resp.header.revision) for s in resp.services)
            token = resp.next_page_token
            if not token:
                return out

    def watch(
        self, service: str = "", *, legacy_mode: bool = False, start_revision: int = 0
    ) -> AsyncIterator:  # type: ignore[type-arg]
        """Every change to a service (or all services), as WatchEvents.

        Starts with the current instances as ``initial`` ADDED events, then live
        changes. Survives disconnects and hub restarts by resuming from the last
        revision it saw; if that history is gone it resyncs and reports only the
        difference, so nothing is lost or repeated.
        """
        return watch_registry(self, service, legacy_mode, start_revision)

    # -- health, balancing, circuits ----------------------------------------

    async def get_health(self, service: str = "") -> list[Health]:
        """What the hub's probes found, per instance (one service, or all)."""
        resp = await self._unary(
            self.health_stub.GetHealth, health_pb2.GetHealthRequest(service=service)
        )
        return [Health.from_pb(r) for r in resp.instances]

    async def pick(
        self,
        service: str,
        *,
        strategy: str = "least_load",
        affinity_key: str = "",
        legacy_mode: bool = False,
    ) -> Endpoint:
        """One usable instance, chosen by the hub (``least_load``, ``round_robin``,
        ``weighted``, ``consistent_hash`` on ``affinity_key`` or the user id, or
        ``latency_aware``). Raises NoEligibleInstance when none may be picked."""
        if strategy not in _STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; one of {sorted(_STRATEGIES)}")
        resp = await self._unary(
            self.balancer_stub.PickEndpoint,
            balancer_pb2.PickEndpointRequest(
                service=service,
                strategy=_STRATEGIES[strategy],
                affinity_key=affinity_key,
                legacy_mode=legacy_mode,
            ),
        )
        return Endpoint.from_pb(resp)

    async def report_load(self, service: str, instance_id: str, load: float) -> None:
        """Tells the hub an instance's load (0 idle .. 1 at capacity)."""
        await self._unary(
            self.balancer_stub.ReportLoad,
            balancer_pb2.ReportLoadRequest(
                service=service, instance_id=instance_id, load_factor=load
            ),
        )

    async def circuit_state(self, service: str, instance_id: str = "") -> CircuitInfo:
        resp = await self._unary(
            self.circuit_stub.GetCircuitState,
            circuit_pb2.GetCircuitStateRequest(service=service, instance_id=instance_id),
        )
        return CircuitInfo.from_pb(resp.circuit)

    def circuit(self, service: str, instance_id: str = "") -> CircuitGuard:
        """A guard for calls to ``service``: ``async with hub.circuit("ml"):`` or
        ``@hub.circuit("ml")``. Fails fast with CircuitOpen from a locally cached
        fleet-wide state; reports each call's outcome in the background."""
        return CircuitGuard(self, service, instance_id)

    def _circuit_cache(self) -> CircuitCache:
        if self._circuits is None:
            self._circuits = CircuitCache(self.circuit_stub, self.context.metadata())
        return self._circuits

    def _outcome_reporter(self) -> OutcomeReporter:
        if self._reporter is None:
            self._reporter = OutcomeReporter(self._send_outcomes)
        return self._reporter

    async def _send_outcomes(self, outcomes: list[circuit_pb2.CallOutcome]) -> None:
        await self._unary(
            self.circuit_stub.ReportOutcomes, circuit_pb2.ReportOutcomesRequest(outcomes=outcomes)
        )

    async def flush_outcomes(self) -> None:
        """Sends the outcomes collected so far now (they go by themselves too)."""
        if self._reporter is not None:
            await self._reporter.flush()

    async def cluster_status(self) -> cluster_pb2.GetClusterStatusResponse:
        """The hub replicas and which one leads."""
        return await self._unary(  # type: ignore[no-any-return]
            self.cluster_stub.GetClusterStatus, cluster_pb2.GetClusterStatusRequest()
        )
