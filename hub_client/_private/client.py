"""HubClient: the async Python entry point to a Central Hub."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from aitrading.hub.v1 import (
    backup_pb2,
    backup_pb2_grpc,
    balancer_pb2,
    balancer_pb2_grpc,
    circuit_pb2,
    circuit_pb2_grpc,
    cluster_pb2,
    cluster_pb2_grpc,
    config_pb2,
    config_pb2_grpc,
    deployment_pb2,
    deployment_pb2_grpc,
    health_pb2,
    health_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    tenant_pb2,
    tenant_pb2_grpc,
    types_pb2,
)
from google.protobuf import duration_pb2, json_format

from hub_client._private.backups import BackupInfo, RestoreReport
from hub_client._private.channel import TLS, open_channel
from hub_client._private.circuits import CircuitCache, CircuitGuard, OutcomeReporter
from hub_client._private.config_watch import watch_config
from hub_client._private.deployments import (
    Deployment,
    Directive,
    watch_deployment,
    watch_directives,
)
from hub_client._private.errors import Unavailable, from_rpc_error
from hub_client._private.models import (
    CircuitInfo,
    ConfigLayer,
    Endpoint,
    Health,
    ResourceUsage,
    Service,
    Tenant,
    TenantConfig,
)
from hub_client._private.quotas import Allocation
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

# Calls that carry a request id are retried on Unavailable (UNAVAILABLE,
# CANCELLED from a replica stopping, ...) while the client's timeout lasts.
_RETRY_ATTEMPTS = 8
_RETRY_FIRST_DELAY = 0.05
_RETRY_MAX_DELAY = 1.0

_QUOTA_RESOURCES = {
    "api_calls_per_hour": tenant_pb2.QUOTA_RESOURCE_API_CALLS_PER_HOUR,
    "websocket_connections": tenant_pb2.QUOTA_RESOURCE_WEBSOCKET_CONNECTIONS,
    "concurrent_requests": tenant_pb2.QUOTA_RESOURCE_CONCURRENT_REQUESTS,
    "data_storage_mb": tenant_pb2.QUOTA_RESOURCE_DATA_STORAGE_MB,
}


def _tier(tier: str) -> types_pb2.SubscriptionTier.ValueType:
    try:
        return _TIERS[tier]
    except KeyError:
        raise ValueError(f"unknown tier {tier!r}; one of {sorted(_TIERS)}") from None


def _quota_resource(resource: str) -> tenant_pb2.QuotaResource.ValueType:
    try:
        return _QUOTA_RESOURCES[resource]
    except KeyError:
        raise ValueError(
            f"unknown quota resource {resource!r}; one of {sorted(_QUOTA_RESOURCES)}"
        ) from None


def _layer_ref(layer: str) -> config_pb2.ConfigLayerRef:
    """``global``, ``tier/<tier>`` or ``tenant/<tenant id>``."""
    kind, _, name = layer.partition("/")
    if layer == "global":
        return config_pb2.ConfigLayerRef(kind=config_pb2.CONFIG_LAYER_KIND_GLOBAL)
    if kind == "tier" and name:
        return config_pb2.ConfigLayerRef(
            kind=config_pb2.CONFIG_LAYER_KIND_TIER_DEFAULTS, tier=_tier(name)
        )
    if kind == "tenant" and name:
        return config_pb2.ConfigLayerRef(kind=config_pb2.CONFIG_LAYER_KIND_TENANT, tenant_id=name)
    raise ValueError(f"unknown config layer {layer!r}: 'global', 'tier/<tier>' or 'tenant/<id>'")


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

    Several hub replicas (``["h1:7000", "h2:7000"]`` or ``"h1:7000,h2:7000"``)
    make one channel that moves to another replica when the one it uses fails;
    their names are resolved once, here.

    A hub with credentials wants a token (``token=``, else $HUB_TOKEN) and,
    over TLS, ``tls=TLS(ca="ca.pem")`` (plus ``cert``/``key`` for mTLS).

    The generated stubs stay reachable as ``hub.registry_stub`` for anything the
    wrapper does not cover; ``hub.call(hub.registry_stub.GetService, request)``
    calls one with the wrapper's headers and typed errors.
    """

    def __init__(
        self,
        target: str | Sequence[str] = "127.0.0.1:7000",
        *,
        tenant_id: str = "",
        user_id: str = "",
        subscription_tier: str = "",
        correlation_id: str = "",
        timeout: float = 10.0,
        token: str | None = None,
        tls: TLS | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.context = TenantContext(tenant_id, user_id, subscription_tier, correlation_id)
        self._own_channel = channel is None
        self.channel = channel or open_channel(
            target, token=token, tls=tls, options=_CHANNEL_OPTIONS
        )
        self.registry_stub = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthServiceStub(self.channel)
        self.balancer_stub = balancer_pb2_grpc.LoadBalancerServiceStub(self.channel)
        self.circuit_stub = circuit_pb2_grpc.CircuitBreakerServiceStub(self.channel)
        self.cluster_stub = cluster_pb2_grpc.ClusterServiceStub(self.channel)
        self.config_stub = config_pb2_grpc.ConfigServiceStub(self.channel)
        self.tenant_stub = tenant_pb2_grpc.TenantServiceStub(self.channel)
        self.deployment_stub = deployment_pb2_grpc.DeploymentServiceStub(self.channel)
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

    async def call(self, method: Any, request: Any, *, timeout: float | None = None) -> Any:
        """Calls any unary method of the generated stubs (``hub.registry_stub.GetService``,
        ``hub.backup_stub.ListBackups``, ...) as this wrapper's own methods do: with
        this client's tenant headers, waiting for a reconnecting channel, and gRPC
        errors raised as the typed ``HubError`` subclasses. Returns the response
        message as the stub does. For what the wrapper does not cover.

        ``timeout``: this call's deadline in seconds (default: the client's).
        """
        # wait_for_ready: ride over a hub restart (within the timeout) instead of
        # failing at once while the channel reconnects.
        try:
            return await method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self.context.metadata(),
                wait_for_ready=True,
            )
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None

    async def _unary_retried(self, method: Any, request: Any) -> Any:
        """For a request the hub answers once however often it is sent (one with a
        request id): sent again on Unavailable, with backoff, until it is answered
        or the client's timeout (for all attempts together) runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        delay = _RETRY_FIRST_DELAY
        for attempt in range(1, _RETRY_ATTEMPTS + 1):
            try:
                return await method(
                    request,
                    timeout=max(0.001, deadline - loop.time()),
                    metadata=self.context.metadata(),
                    wait_for_ready=True,
                )
            except grpc.aio.AioRpcError as e:
                error = from_rpc_error(e)
                pause = random.uniform(delay / 2, delay)
                if (
                    not isinstance(error, Unavailable)
                    or attempt == _RETRY_ATTEMPTS
                    or loop.time() + pause >= deadline
                ):
                    raise error from None
                log.debug("%s: %s; retrying (attempt %d)", method, error, attempt + 1)
            await asyncio.sleep(pause)
            delay = min(delay * 2, _RETRY_MAX_DELAY)
        raise AssertionError("unreachable")

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
        HEALTHY ones, else the DEGRADED ones, else the STARTING ones (not proven yet).
        ``include_unhealthy`` returns every instance (for operators)."""
        resp = await self.call(
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
            resp = await self.call(
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
        resp = await self.call(
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
        resp = await self.call(
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
        await self.call(
            self.balancer_stub.ReportLoad,
            balancer_pb2.ReportLoadRequest(
                service=service, instance_id=instance_id, load_factor=load
            ),
        )

    async def circuit_state(self, service: str, instance_id: str = "") -> CircuitInfo:
        resp = await self.call(
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
        await self.call(
            self.circuit_stub.ReportOutcomes, circuit_pb2.ReportOutcomesRequest(outcomes=outcomes)
        )

    async def flush_outcomes(self) -> None:
        """Sends the outcomes collected so far now (they go by themselves too)."""
        if self._reporter is not None:
            await self._reporter.flush()

    async def cluster_status(self) -> cluster_pb2.GetClusterStatusResponse:
        """The hub replicas and which one leads."""
        return await self.call(  # type: ignore[no-any-return]
            self.cluster_stub.GetClusterStatus, cluster_pb2.GetClusterStatusRequest()
        )

    # -- configuration -------------------------------------------------------

    def _tenant(self, tenant: str | None) -> str:
        return self.context.tenant_id if tenant is None else tenant

    async def config(self, tenant: str | None = None) -> TenantConfig:
        """A tenant's merged configuration (tier defaults, global, tenant overrides).

        Args:
            tenant: the tenant; None means this client's tenant_id, "" the view
                without tenant overrides. For a tenant the hub does not know, the
                tier is this client's subscription_tier (free without one).
        """
        resp = await self.call(
            self.config_stub.GetTenantConfig,
            config_pb2.GetTenantConfigRequest(tenant_id=self._tenant(tenant)),
        )
        return TenantConfig.from_pb(resp.config)

    def watch_config(
        self, tenant: str | None = None, *, start_revision: int = 0
    ) -> AsyncIterator[TenantConfig]:
        """The tenant's merged configuration now, then each new one as the hub
        pushes it (``async for config in hub.watch_config("company_abc")``).

        Resumes by itself after a disconnect or a hub restart; yields a config
        only when it differs from the previous one.
        """
        return watch_config(self, self._tenant(tenant), start_revision)

    async def config_layer(self, layer: str) -> ConfigLayer:
        """One layer as stored: ``global``, ``tier/<tier>`` or ``tenant/<id>``."""
        resp = await self.call(
            self.config_stub.GetConfigLayer,
            config_pb2.GetConfigLayerRequest(layer=_layer_ref(layer)),
        )
        return ConfigLayer.from_pb(resp.layer)

    async def set_config_layer(
        self,
        layer: str,
        values: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        comment: str = "",
    ) -> ConfigLayer:
        """Replaces a layer's values, making a new version.

        Args:
            layer: ``global``, ``tier/<tier>`` or ``tenant/<id>``.
            values: ``{"rate_limits": {...}, "features": {..., "flags": {...}},
                "resource_limits": {...}, "settings": {...}}``; what is left out
                is taken from the layers below.
            expected_version: write only if the layer is at this version
                (0: never written); else VersionConflict.
            comment: kept with the version.
        """
        try:
            pb_values = json_format.ParseDict(dict(values), config_pb2.ConfigValues())
        except json_format.ParseError as e:
            raise ValueError(f"bad config values: {e}") from None
        request = config_pb2.SetConfigLayerRequest(
            layer=_layer_ref(layer), values=pb_values, comment=comment
        )
        if expected_version is not None:
            request.expected_version = expected_version
        resp = await self.call(self.config_stub.SetConfigLayer, request)
        return ConfigLayer.from_pb(resp.layer)

    async def config_versions(self, layer: str) -> list[ConfigLayer]:
        """A layer's kept history, newest first (all pages)."""
        out: list[ConfigLayer] = []
        token = ""
        while True:
            resp = await self.call(
                self.config_stub.ListConfigVersions,
                config_pb2.ListConfigVersionsRequest(
                    layer=_layer_ref(layer), page_size=1000, page_token=token
                ),
            )
            out.extend(ConfigLayer.from_pb(m) for m in resp.versions)
            token = resp.next_page_token
            if not token:
                return out

    async def rollback_config(
        self,
        layer: str,
        version: int,
        *,
        expected_version: int | None = None,
        comment: str = "",
    ) -> ConfigLayer:
        """Writes an earlier version's values as a new version of the layer."""
        request = config_pb2.RollbackConfigRequest(
            layer=_layer_ref(layer), version=version, comment=comment
        )
        if expected_version is not None:
            request.expected_version = expected_version
        resp = await self.call(self.config_stub.RollbackConfig, request)
        return ConfigLayer.from_pb(resp.layer)

    # -- tenants and quotas --------------------------------------------------

    async def create_tenant(
        self, tenant_id: str, *, tier: str = "free", display_name: str = ""
    ) -> Tenant:
        """Stores a new tenant (AlreadyExists if it exists)."""
        resp = await self.call(
            self.tenant_stub.CreateTenant,
            tenant_pb2.CreateTenantRequest(
                tenant_id=tenant_id, tier=_tier(tier), display_name=display_name
            ),
        )
        return Tenant.from_pb(resp.tenant)

    async def get_tenant(self, tenant_id: str) -> Tenant:
        """One tenant (NotFound if the hub does not know it)."""
        resp = await self.call(
            self.tenant_stub.GetTenant, tenant_pb2.GetTenantRequest(tenant_id=tenant_id)
        )
        return Tenant.from_pb(resp.tenant)

    async def list_tenants(self, *, tier: str | None = None) -> list[Tenant]:
        """Every tenant (of one tier, if given), by id (all pages)."""
        out: list[Tenant] = []
        token = ""
        while True:
            resp = await self.call(
                self.tenant_stub.ListTenants,
                tenant_pb2.ListTenantsRequest(page_token=token, tier=_tier(tier) if tier else 0),
            )
            out.extend(Tenant.from_pb(m) for m in resp.tenants)
            token = resp.next_page_token
            if not token:
                return out

    async def set_tier(self, tenant_id: str, tier: str, *, expected_revision: int = 0) -> Tenant:
        """Changes a tenant's tier; its merged config and limits follow at once."""
        resp = await self.call(
            self.tenant_stub.UpdateTenantTier,
            tenant_pb2.UpdateTenantTierRequest(
                tenant_id=tenant_id, tier=_tier(tier), expected_revision=expected_revision
            ),
        )
        return Tenant.from_pb(resp.tenant)

    async def usage(self, tenant: str | None = None) -> dict[str, ResourceUsage]:
        """A tenant's usage of every quota resource, with its limits, by resource."""
        resp = await self.call(
            self.tenant_stub.GetUsage, tenant_pb2.GetUsageRequest(tenant_id=self._tenant(tenant))
        )
        return {u.resource: u for u in map(ResourceUsage.from_pb, resp.usage)}

    async def check_quota(
        self, resource: str, amount: int = 1, *, tenant: str | None = None
    ) -> bool:
        """Whether ``amount`` of ``resource`` would fit now (nothing is allocated)."""
        resp = await self.call(
            self.tenant_stub.CheckQuota,
            tenant_pb2.CheckQuotaRequest(
                tenant_id=self._tenant(tenant), resource=_quota_resource(resource), amount=amount
            ),
        )
        return bool(resp.allowed)

    async def allocate(
        self,
        resource: str,
        amount: int = 1,
        *,
        tenant: str | None = None,
        request_id: str | None = None,
    ) -> ResourceUsage:
        """Takes ``amount`` of a quota resource ("websocket_connections",
        "concurrent_requests", "data_storage_mb", "api_calls_per_hour").

        The call carries a request id (``request_id``, or a new random one) and
        is retried with it on Unavailable within the client's timeout: the hub
        counts it once however many attempts reach it. Pass your own
        ``request_id`` to retry a call yourself later (within the hour).

        Raises:
            QuotaExceeded: it does not fit; ``limit``, ``current`` and
                ``requested`` say by how much.
            Unavailable: no attempt was answered in time; whether the
                allocation was made is unknown (retry with the same request_id).
        """
        resp = await self._unary_retried(
            self.tenant_stub.Allocate,
            tenant_pb2.AllocateRequest(
                tenant_id=self._tenant(tenant),
                resource=_quota_resource(resource),
                amount=amount,
                request_id=request_id or uuid.uuid4().hex,
            ),
        )
        return ResourceUsage.from_pb(resp.usage)

    async def release(
        self,
        resource: str,
        amount: int = 1,
        *,
        tenant: str | None = None,
        request_id: str | None = None,
    ) -> ResourceUsage:
        """Gives back ``amount`` (usage never goes below zero). Carries a request
        id and is retried like ``allocate``, so it takes effect once."""
        resp = await self._unary_retried(
            self.tenant_stub.Release,
            tenant_pb2.ReleaseRequest(
                tenant_id=self._tenant(tenant),
                resource=_quota_resource(resource),
                amount=amount,
                request_id=request_id or uuid.uuid4().hex,
            ),
        )
        return ResourceUsage.from_pb(resp.usage)

    def allocation(
        self, resource: str, amount: int = 1, *, tenant: str | None = None
    ) -> Allocation:
        """``async with hub.allocation("websocket_connections"):`` holds an
        allocation for the block and releases it on exit."""
        _quota_resource(resource)
        return Allocation(self, resource, amount, tenant)

    # -- deployments ---------------------------------------------------------

    async def deploy(
        self,
        service: str,
        target_version: str,
        *,
        strategy: str = "rolling",
        batch_size: int = 1,
        max_unavailable: int = 0,
        health_gate_timeout: float | None = None,
        canary_share: float = 0.0,
        canary_observation: float | None = None,
        rollback_on_failure: bool = False,
    ) -> Deployment:
        """Starts rolling ``target_version`` out (``strategy`` "rolling" or
        "canary"); the hub's elected replica steps it from there.

        Raises:
            FailedPrecondition: the service already has an active deployment.
        """
        strategies = {
            "rolling": deployment_pb2.DEPLOYMENT_STRATEGY_ROLLING,
            "canary": deployment_pb2.DEPLOYMENT_STRATEGY_CANARY,
        }
        if strategy not in strategies:
            raise ValueError(f"unknown strategy {strategy!r}: rolling or canary")
        settings = deployment_pb2.DeploymentSettings(
            batch_size=batch_size,
            max_unavailable=max_unavailable,
            health_gate_timeout=_duration(health_gate_timeout),
            canary_share=canary_share,
            canary_observation=_duration(canary_observation),
            rollback_on_failure=rollback_on_failure,
        )
        resp = await self.call(
            self.deployment_stub.StartDeployment,
            deployment_pb2.StartDeploymentRequest(
                service=service,
                target_version=target_version,
                strategy=strategies[strategy],
                settings=settings,
            ),
        )
        return Deployment.from_pb(resp.deployment)

    async def deployment(self, deployment_id: str) -> Deployment:
        """One deployment as the hub has it now."""
        resp = await self.call(
            self.deployment_stub.GetDeployment,
            deployment_pb2.GetDeploymentRequest(id=deployment_id),
        )
        return Deployment.from_pb(resp.deployment)

    async def deployments(
        self, service: str = "", *, active_only: bool = False
    ) -> list[Deployment]:
        """Deployments (of one service, or all), newest first."""
        resp = await self.call(
            self.deployment_stub.ListDeployments,
            deployment_pb2.ListDeploymentsRequest(service=service, active_only=active_only),
        )
        return [Deployment.from_pb(d) for d in resp.deployments]

    async def pause_deployment(self, deployment_id: str, reason: str = "") -> Deployment:
        resp = await self.call(
            self.deployment_stub.PauseDeployment,
            deployment_pb2.PauseDeploymentRequest(id=deployment_id, reason=reason),
        )
        return Deployment.from_pb(resp.deployment)

    async def resume_deployment(self, deployment_id: str) -> Deployment:
        resp = await self.call(
            self.deployment_stub.ResumeDeployment,
            deployment_pb2.ResumeDeploymentRequest(id=deployment_id),
        )
        return Deployment.from_pb(resp.deployment)

    async def abort_deployment(self, deployment_id: str, reason: str = "") -> Deployment:
        resp = await self.call(
            self.deployment_stub.AbortDeployment,
            deployment_pb2.AbortDeploymentRequest(id=deployment_id, reason=reason),
        )
        return Deployment.from_pb(resp.deployment)

    async def rollback_deployment(self, deployment_id: str, reason: str = "") -> Deployment:
        resp = await self.call(
            self.deployment_stub.RollbackDeployment,
            deployment_pb2.RollbackDeploymentRequest(id=deployment_id, reason=reason),
        )
        return Deployment.from_pb(resp.deployment)

    def watch_deployment(self, deployment_id: str) -> AsyncIterator[Deployment]:
        """The deployment's current state, then every change (resumes by itself)."""
        return watch_deployment(self, deployment_id)

    def watch_directives(self, service: str, instance_id: str = "") -> AsyncIterator[Directive]:
        """Directives for one instance (or every instance of ``service``): the
        current ones, then every new one (resumes by itself)."""
        return watch_directives(self, service, instance_id)

    # -- backups -------------------------------------------------------------

    @property
    def backup_stub(self) -> backup_pb2_grpc.BackupServiceStub:
        return backup_pb2_grpc.BackupServiceStub(self.channel)

    async def export_backup(
        self, *, store: bool = False, download: bool = True, timeout: float = 300.0
    ) -> tuple[BackupInfo, bytes]:
        """A backup of the hub's whole keyspace at one revision: its description and
        the file's bytes. ``store`` also keeps it in the hub's backup directory
        (its name is then ``info.name``); ``download=False`` (only with ``store``)
        has nothing but the description sent back, and the bytes are empty.

        Raises:
            InvalidArgument: ``download=False`` without ``store``.
        """
        request = backup_pb2.CreateBackupRequest(store=store, omit_data=not download)
        call = self.backup_stub.CreateBackup(
            request, timeout=timeout, metadata=self.context.metadata(), wait_for_ready=True
        )
        info: BackupInfo | None = None
        chunks: list[bytes] = []
        try:
            async for message in call:
                if message.WhichOneof("content") == "info":
                    info = BackupInfo.from_pb(message.info)
                else:
                    chunks.append(message.chunk)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        if info is None:
            raise RuntimeError("the hub sent no backup info")
        return info, b"".join(chunks)

    async def backup(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        store: bool = False,
        timeout: float = 300.0,
    ) -> bytes | Path:
        """A backup of the hub's whole keyspace at one revision: the file's bytes,
        or, with ``path``, the file written there (its Path). ``store`` also keeps
        it in the hub's backup directory."""
        _, data = await self.export_backup(store=store, timeout=timeout)
        if path is None:
            return data
        out = Path(path)
        tmp = out.with_name(f".{out.name}.partial")
        await asyncio.to_thread(tmp.write_bytes, data)
        await asyncio.to_thread(os.replace, tmp, out)
        return out

    async def store_backup(self, *, timeout: float = 300.0) -> BackupInfo:
        """Has the hub write a backup to its backup directory (nothing is sent back
        but its description)."""
        info, _ = await self.export_backup(store=True, download=False, timeout=timeout)
        return info

    async def restore(
        self,
        data_or_path: bytes | str | os.PathLike[str] | None = None,
        *,
        dry_run: bool = True,
        stored: str = "",
        timeout: float = 300.0,
    ) -> RestoreReport:
        """Restores a backup (bytes, a file path, or ``stored``: the name of a file
        in the hub's backup directory). A dry run (the default) changes nothing
        and reports what would change, per kind of key.

        Raises:
            InvalidArgument: the file is corrupt, truncated or not a hub backup
                (reason BACKUP_CORRUPT, BACKUP_TRUNCATED, BACKUP_NOT_RECOGNIZED,
                BACKUP_FOREIGN); the hub's state is untouched.
            FailedPrecondition: a backup format this hub cannot read.
        """
        if isinstance(data_or_path, bytes):
            data = data_or_path
        elif data_or_path is not None:
            data = await asyncio.to_thread(Path(data_or_path).read_bytes)
        else:
            data = b""
        chunk = 1024 * 1024

        async def requests() -> AsyncIterator[backup_pb2.RestoreBackupRequest]:
            options = backup_pb2.RestoreOptions(dry_run=dry_run, stored_name=stored)
            yield backup_pb2.RestoreBackupRequest(options=options)
            for offset in range(0, len(data), chunk):
                yield backup_pb2.RestoreBackupRequest(chunk=data[offset : offset + chunk])

        try:
            resp = await self.backup_stub.RestoreBackup(
                requests(), timeout=timeout, metadata=self.context.metadata(), wait_for_ready=True
            )
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        return RestoreReport.from_pb(resp)

    async def list_backups(self) -> list[BackupInfo]:
        """The backups in the answering hub replica's backup directory, newest first."""
        resp = await self.call(self.backup_stub.ListBackups, backup_pb2.ListBackupsRequest())
        return [BackupInfo.from_pb(b) for b in resp.backups]

    async def delete_backup(self, name: str) -> None:
        """Deletes a stored backup by name (as in ``list_backups``)."""
        await self.call(self.backup_stub.DeleteBackup, backup_pb2.DeleteBackupRequest(name=name))
