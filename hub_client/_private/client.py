"""HubClient: the async Python entry point to a Central Hub.

A facade: the calls live in one module per capability (registry.py, health.py,
balancer.py, circuits.py, config.py, tenants.py, deployments.py, backups.py,
cluster.py), all over one Transport (transport.py); HubClient composes them and
documents the public methods."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from aitrading.hub.v1 import (
    backup_pb2_grpc,
    balancer_pb2_grpc,
    circuit_pb2_grpc,
    cluster_pb2_grpc,
    config_pb2_grpc,
    deployment_pb2_grpc,
    health_pb2_grpc,
    registry_pb2_grpc,
    tenant_pb2_grpc,
    types_pb2,
)

from hub_client._private.backups import BackupInfo, BackupsClient, RestoreReport
from hub_client._private.balancer import BalancerClient
from hub_client._private.channel import TLS
from hub_client._private.circuits import CircuitGuard, CircuitsClient
from hub_client._private.cluster import ClusterClient
from hub_client._private.config import ConfigClient
from hub_client._private.deployments import Deployment, DeploymentsClient, Directive
from hub_client._private.errors import invalid_argument
from hub_client._private.health import HealthClient
from hub_client._private.local_view import LocalViews, ViewState
from hub_client._private.models import (
    CircuitInfo,
    ClusterStatus,
    ConfigLayer,
    Endpoint,
    Health,
    ResourceUsage,
    Service,
    Tenant,
    TenantConfig,
    WatchEvent,
)
from hub_client._private.registration import Registration
from hub_client._private.registry import RegistryClient
from hub_client._private.routing import (
    EndpointsSnapshot,
    PolicyInfo,
    RoutingClient,
    RoutingPolicy,
    XdsClient,
)
from hub_client._private.strategies import Strategy
from hub_client._private.tenants import Allocation, TenantsClient
from hub_client._private.transport import TenantContext, Transport


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

    ``discover()`` and ``pick()`` answer from local views of the services, kept
    current by the hub (``resolution="remote"`` or ``fresh=True``: ask the hub
    every time); ``max_view_age`` bounds how stale a view may serve while the hub
    is unreachable (None: no bound), ``view_idle_timeout`` closes unused views.

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
        resolution: str = "local",
        max_view_age: float | None = 300.0,
        view_idle_timeout: float = 600.0,
    ) -> None:
        if resolution not in ("local", "remote"):
            raise invalid_argument(
                "resolution", f"unknown resolution {resolution!r}; one of ['local', 'remote']"
            )
        # discover()/pick() answer from local views (one WatchEndpoints stream per
        # service and tenant context) unless "remote": see local_view.py.
        self.resolution = resolution
        self._views = LocalViews(max_age=max_view_age, idle_after=view_idle_timeout)
        context = TenantContext(tenant_id, user_id, subscription_tier, correlation_id)
        if channel is None:
            transport = Transport.connect(
                target, timeout=timeout, context=context, token=token, tls=tls
            )
        else:
            transport = Transport(
                channel, target=target, timeout=timeout, context=context, owns_channel=False
            )
        self._compose(transport)

    def _compose(self, transport: Transport) -> None:
        self._transport = transport
        self.target = transport.target
        self._registry = RegistryClient(transport)
        self._health = HealthClient(transport)
        self._balancer = BalancerClient(transport)
        self._circuits = CircuitsClient(transport)
        self._cluster = ClusterClient(transport)
        self._routing = RoutingClient(transport)
        self._config = ConfigClient(transport)
        self._tenants = TenantsClient(transport)
        self._deployments = DeploymentsClient(transport)
        self._backups = BackupsClient(transport)

    # The channel and the generated stubs: opened on first use, in the event loop
    # that uses them (so a client made outside a loop works in ``asyncio.run``).

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._transport.channel

    @property
    def registry_stub(self) -> registry_pb2_grpc.RegistryServiceStub:
        return self._transport.registry_stub

    @property
    def health_stub(self) -> health_pb2_grpc.HealthServiceStub:
        return self._transport.health_stub

    @property
    def balancer_stub(self) -> balancer_pb2_grpc.LoadBalancerServiceStub:
        return self._transport.balancer_stub

    @property
    def circuit_stub(self) -> circuit_pb2_grpc.CircuitBreakerServiceStub:
        return self._transport.circuit_stub

    @property
    def cluster_stub(self) -> cluster_pb2_grpc.ClusterServiceStub:
        return self._transport.cluster_stub

    @property
    def config_stub(self) -> config_pb2_grpc.ConfigServiceStub:
        return self._transport.config_stub

    @property
    def tenant_stub(self) -> tenant_pb2_grpc.TenantServiceStub:
        return self._transport.tenant_stub

    @property
    def deployment_stub(self) -> deployment_pb2_grpc.DeploymentServiceStub:
        return self._transport.deployment_stub

    @property
    def backup_stub(self) -> backup_pb2_grpc.BackupServiceStub:
        return self._transport.backup_stub

    # The tenant headers and the default deadline are read on every call.

    @property
    def context(self) -> TenantContext:
        return self._transport.context

    @context.setter
    def context(self, context: TenantContext) -> None:
        self._transport.context = context

    @property
    def timeout(self) -> float:
        return self._transport.timeout

    @timeout.setter
    def timeout(self, timeout: float) -> None:
        self._transport.timeout = timeout

    def with_context(self, **changes: str) -> HubClient:
        """The same connection with other tenant headers (tenant_id, user_id, ...)."""
        clone = HubClient.__new__(HubClient)
        clone.resolution, clone._views = self.resolution, self._views  # views are shared
        clone._compose(self._transport.with_context(**changes))
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
        await self._views.close()
        await self._registry.close()
        await self._circuits.close()
        await self._transport.close()

    async def call(self, method: Any, request: Any, *, timeout: float | None = None) -> Any:
        """Calls any unary method of the generated stubs (``hub.registry_stub.GetService``,
        ``hub.backup_stub.ListBackups``, ...) as this wrapper's own methods do: with
        this client's tenant headers, waiting for a reconnecting channel, and gRPC
        errors raised as the typed ``HubError`` subclasses. Returns the response
        message as the stub does. For what the wrapper does not cover.

        ``timeout``: this call's deadline in seconds (default: the client's).
        """
        return await self._transport.call(method, request, timeout=timeout)

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
        timeout: float | None = None,
    ) -> Registration:
        """Registers an instance and returns a handle that keeps its lease alive
        in the background (re-registering if the lease was lost) until
        ``await handle.deregister()`` or the end of ``async with handle``.

        ``timeout`` (here and on every method that calls the hub): this call's
        deadline in seconds, else the client's; past it, DeadlineExceeded."""
        reg = await self._registry.register(
            service,
            host=host,
            port=port,
            instance_id=instance_id,
            protocol=protocol,
            version=version,
            metadata=metadata,
            health=health,
            tenant_capable=tenant_capable,
            subscription_requirements=subscription_requirements,
            resource_tier=resource_tier,
            ttl=ttl,
            weight=weight,
            keep_alive=keep_alive,
            timeout=timeout,
        )
        self._views.registered(service, reg.instance_id)  # read-your-writes
        reg.on_deregistered = self._views.deregistered
        return reg

    async def discover(
        self,
        service: str,
        *,
        legacy_mode: bool = False,
        include_unhealthy: bool = False,
        fresh: bool = False,
        timeout: float | None = None,
    ) -> Service:
        """The service's usable instances that this caller's tier may use: the
        HEALTHY ones, else the DEGRADED ones, else the STARTING ones (not proven yet).
        ``include_unhealthy`` returns every instance (for operators).

        Answered from the local view of the service (no round trip; draining and
        open-circuit instances left out, as a pick leaves them) unless ``fresh``,
        ``include_unhealthy`` or ``resolution="remote"``: then the hub's GetService
        answers. ViewTooOld when the view is older than ``max_view_age``."""
        if not (fresh or include_unhealthy or self.resolution == "remote"):
            budget = self._transport.budget(timeout)  # one deadline, local wait included
            found = await self._views.discover(self._transport, service, legacy_mode, budget.left())
            if found is not None:
                return found
            timeout = budget.left()
        return await self._registry.discover(
            service,
            legacy_mode=legacy_mode,
            include_unhealthy=include_unhealthy,
            timeout=timeout,
        )

    async def list_services(
        self, *, legacy_mode: bool = False, timeout: float | None = None
    ) -> list[Service]:
        """Every service this caller's tier may use (all pages, within one ``timeout``)."""
        return await self._registry.list_services(legacy_mode=legacy_mode, timeout=timeout)

    def watch(
        self,
        service: str = "",
        *,
        legacy_mode: bool = False,
        start_revision: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """Every change to a service (or all services), as WatchEvents.

        Starts with the current instances as ``initial`` ADDED events, then live
        changes. Survives disconnects and hub restarts by resuming from the last
        revision it saw; if that history is gone it resyncs and reports only the
        difference, so nothing is lost or repeated.

        ``timeout`` (on every watch): the longest wait for the next item; past
        it, DeadlineExceeded ends the watch. None (the default): no limit.
        """
        return self._registry.watch(
            service, legacy_mode=legacy_mode, start_revision=start_revision, timeout=timeout
        )

    # -- health, balancing, circuits, cluster -------------------------------

    async def get_health(self, service: str = "", *, timeout: float | None = None) -> list[Health]:
        """What the hub's probes found, per instance (one service, or all)."""
        return await self._health.get_health(service, timeout=timeout)

    async def pick(
        self,
        service: str,
        *,
        strategy: str | Strategy | None = None,
        affinity_key: str = "",
        legacy_mode: bool = False,
        fresh: bool = False,
        timeout: float | None = None,
    ) -> Endpoint:
        """One usable instance, chosen by the hub (``least_load``, ``round_robin``,
        ``weighted``, ``consistent_hash`` on ``affinity_key`` or the user id, or
        ``latency_aware``; None: the service's routing policy's strategy, least
        load unless an operator set one). Raises NoEligibleInstance when none
        may be picked.

        Chosen locally from the service's local view, with the hub's strategy
        code, unless ``fresh`` or ``resolution="remote"``; a view that offers
        nothing asks the hub (its error says why)."""
        if not (fresh or self.resolution == "remote"):
            budget = self._transport.budget(timeout)  # one deadline, local wait included
            found = await self._views.pick(
                self._transport, service, strategy, affinity_key, legacy_mode, budget.left()
            )
            if found is not None:
                return found
            timeout = budget.left()
        return await self._balancer.pick(
            service,
            strategy=strategy,
            affinity_key=affinity_key,
            legacy_mode=legacy_mode,
            timeout=timeout,
        )

    async def view_age(
        self, service: str, *, legacy_mode: bool = False, timeout: float | None = None
    ) -> float | None:
        """Seconds since the hub last confirmed this caller's local view of the
        service (0 while its stream is current); None when no view is open.
        Calls nothing (``timeout`` is taken as by every method, and unused)."""
        view = self._views.find(self._transport, service, legacy_mode)
        return None if view is None or view.closed else view.age

    async def view_state(
        self, service: str, *, legacy_mode: bool = False, timeout: float | None = None
    ) -> ViewState | None:
        """This caller's local view of the service: age, revision, whether
        push-empty protection holds it, endpoints; None when no view is open.
        Calls nothing (``timeout`` is taken as by every method, and unused)."""
        view = self._views.find(self._transport, service, legacy_mode)
        return None if view is None or view.closed else view.state()

    async def report_load(
        self, service: str, instance_id: str, load: float, *, timeout: float | None = None
    ) -> None:
        """Tells the hub an instance's load (0 idle .. 1 at capacity)."""
        await self._balancer.report_load(service, instance_id, load, timeout=timeout)

    # -- routing policies and the usable-endpoint stream -----------------------

    async def set_routing_policy(
        self, service: str, policy: RoutingPolicy, *, timeout: float | None = None
    ) -> RoutingPolicy:
        """Stores a service's routing policy (admins); returns it as stored,
        defaults filled in. InvalidArgument names a field out of range."""
        return await self._routing.set_policy(service, policy, timeout=timeout)

    async def routing_policy(self, service: str, *, timeout: float | None = None) -> PolicyInfo:
        """The service's routing policy in force (``is_default`` when none is stored)."""
        return await self._routing.get_policy(service, timeout=timeout)

    async def delete_routing_policy(self, service: str, *, timeout: float | None = None) -> int:
        """Drops a service's stored policy (the defaults apply again); NotFound
        when none is stored. Returns the deletion's revision."""
        return await self._routing.delete_policy(service, timeout=timeout)

    def watch_endpoints(
        self,
        service: str,
        *,
        after_revision: int = 0,
        legacy_mode: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[EndpointsSnapshot]:
        """Full snapshots of the service's usable endpoints for this client's
        tier, as PickEndpoint and the hub's xDS clients see them: one now, then
        one whenever they or the routing policy change. Reconnects by itself."""
        return self._routing.watch_endpoints(
            service, after_revision=after_revision, legacy_mode=legacy_mode, timeout=timeout
        )

    async def xds_clients(self, *, timeout: float | None = None) -> list[XdsClient]:
        """The xDS clients connected to the replica this client talks to (admins)."""
        return await self._routing.xds_clients(timeout=timeout)

    async def circuit_state(
        self, service: str, instance_id: str = "", *, timeout: float | None = None
    ) -> CircuitInfo:
        """The fleet-wide circuit of a service (or one of its instances)."""
        return await self._circuits.state(service, instance_id, timeout=timeout)

    def circuit(self, service: str, instance_id: str = "") -> CircuitGuard:
        """A guard for calls to ``service``: ``async with hub.circuit("ml"):`` or
        ``@hub.circuit("ml")``. Fails fast with CircuitOpen from a locally cached
        fleet-wide state; reports each call's outcome in the background."""
        return self._circuits.guard(service, instance_id)

    async def flush_outcomes(self, *, timeout: float | None = None) -> None:
        """Sends the outcomes collected so far now (they go by themselves too)."""
        await self._circuits.flush(timeout)

    async def cluster_status(self, *, timeout: float | None = None) -> ClusterStatus:
        """The hub replicas (``replicas``, by hub id) and which one leads (``leader_id``)."""
        return await self._cluster.status(timeout=timeout)

    # -- configuration -------------------------------------------------------

    async def config(
        self, tenant: str | None = None, *, timeout: float | None = None
    ) -> TenantConfig:
        """A tenant's merged configuration (tier defaults, global, tenant overrides).

        Args:
            tenant: the tenant; None means this client's tenant_id, "" the view
                without tenant overrides. For a tenant the hub does not know, the
                tier is this client's subscription_tier (free without one).
        """
        return await self._config.config(tenant, timeout=timeout)

    def watch_config(
        self,
        tenant: str | None = None,
        *,
        start_revision: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[TenantConfig]:
        """The tenant's merged configuration now, then each new one as the hub
        pushes it (``async for config in hub.watch_config("company_abc")``).

        Resumes by itself after a disconnect or a hub restart; yields a config
        only when it differs from the previous one.
        """
        return self._config.watch_config(tenant, start_revision=start_revision, timeout=timeout)

    async def config_layer(self, layer: str, *, timeout: float | None = None) -> ConfigLayer:
        """One layer as stored: ``global``, ``tier/<tier>`` or ``tenant/<id>``."""
        return await self._config.config_layer(layer, timeout=timeout)

    async def set_config_layer(
        self,
        layer: str,
        values: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        comment: str = "",
        timeout: float | None = None,
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
        return await self._config.set_config_layer(
            layer, values, expected_version=expected_version, comment=comment, timeout=timeout
        )

    async def config_versions(
        self, layer: str, *, timeout: float | None = None
    ) -> list[ConfigLayer]:
        """A layer's kept history, newest first (all pages)."""
        return await self._config.config_versions(layer, timeout=timeout)

    async def rollback_config(
        self,
        layer: str,
        version: int,
        *,
        expected_version: int | None = None,
        comment: str = "",
        timeout: float | None = None,
    ) -> ConfigLayer:
        """Writes an earlier version's values as a new version of the layer."""
        return await self._config.rollback_config(
            layer, version, expected_version=expected_version, comment=comment, timeout=timeout
        )

    # -- tenants and quotas --------------------------------------------------

    async def create_tenant(
        self,
        tenant_id: str,
        *,
        tier: str = "free",
        display_name: str = "",
        timeout: float | None = None,
    ) -> Tenant:
        """Stores a new tenant (AlreadyExists if it exists). An unknown ``tier``
        raises InvalidArgument before any RPC (as on every tenant call)."""
        return await self._tenants.create_tenant(
            tenant_id, tier=tier, display_name=display_name, timeout=timeout
        )

    async def get_tenant(self, tenant_id: str, *, timeout: float | None = None) -> Tenant:
        """One tenant (NotFound if the hub does not know it)."""
        return await self._tenants.get_tenant(tenant_id, timeout=timeout)

    async def list_tenants(
        self, *, tier: str | None = None, timeout: float | None = None
    ) -> list[Tenant]:
        """Every tenant (of one tier, if given), by id (all pages)."""
        return await self._tenants.list_tenants(tier=tier, timeout=timeout)

    async def set_tier(
        self,
        tenant_id: str,
        tier: str,
        *,
        expected_revision: int = 0,
        timeout: float | None = None,
    ) -> Tenant:
        """Changes a tenant's tier; its merged config and limits follow at once."""
        return await self._tenants.set_tier(
            tenant_id, tier, expected_revision=expected_revision, timeout=timeout
        )

    async def usage(
        self, tenant: str | None = None, *, timeout: float | None = None
    ) -> dict[str, ResourceUsage]:
        """A tenant's usage of every quota resource, with its limits, by resource."""
        return await self._tenants.usage(tenant, timeout=timeout)

    async def check_quota(
        self,
        resource: str,
        amount: int = 1,
        *,
        tenant: str | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Whether ``amount`` of ``resource`` would fit now (nothing is allocated)."""
        return await self._tenants.check_quota(resource, amount, tenant=tenant, timeout=timeout)

    async def allocate(
        self,
        resource: str,
        amount: int = 1,
        *,
        tenant: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
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
        return await self._tenants.allocate(
            resource, amount, tenant=tenant, request_id=request_id, timeout=timeout
        )

    async def release(
        self,
        resource: str,
        amount: int = 1,
        *,
        tenant: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> ResourceUsage:
        """Gives back ``amount`` (usage never goes below zero). Carries a request
        id and is retried like ``allocate``, so it takes effect once."""
        return await self._tenants.release(
            resource, amount, tenant=tenant, request_id=request_id, timeout=timeout
        )

    def allocation(
        self,
        resource: str,
        amount: int = 1,
        *,
        tenant: str | None = None,
        timeout: float | None = None,
    ) -> Allocation:
        """``async with hub.allocation("websocket_connections"):`` holds an
        allocation for the block and releases it on exit (``timeout``: of each)."""
        return self._tenants.allocation(resource, amount, tenant=tenant, timeout=timeout)

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
        timeout: float | None = None,
    ) -> Deployment:
        """Starts rolling ``target_version`` out (``strategy`` "rolling" or
        "canary"); the hub's elected replica steps it from there.

        Raises:
            FailedPrecondition: the service already has an active deployment.
        """
        return await self._deployments.deploy(
            service,
            target_version,
            strategy=strategy,
            batch_size=batch_size,
            max_unavailable=max_unavailable,
            health_gate_timeout=health_gate_timeout,
            canary_share=canary_share,
            canary_observation=canary_observation,
            rollback_on_failure=rollback_on_failure,
            timeout=timeout,
        )

    async def deployment(self, deployment_id: str, *, timeout: float | None = None) -> Deployment:
        """One deployment as the hub has it now."""
        return await self._deployments.deployment(deployment_id, timeout=timeout)

    async def deployments(
        self, service: str = "", *, active_only: bool = False, timeout: float | None = None
    ) -> list[Deployment]:
        """Deployments (of one service, or all), newest first."""
        return await self._deployments.deployments(
            service, active_only=active_only, timeout=timeout
        )

    async def pause_deployment(
        self, deployment_id: str, reason: str = "", *, timeout: float | None = None
    ) -> Deployment:
        """Holds a deployment after its current batch."""
        return await self._deployments.pause(deployment_id, reason, timeout=timeout)

    async def resume_deployment(
        self, deployment_id: str, *, timeout: float | None = None
    ) -> Deployment:
        """Lets a paused deployment go on."""
        return await self._deployments.resume(deployment_id, timeout=timeout)

    async def abort_deployment(
        self, deployment_id: str, reason: str = "", *, timeout: float | None = None
    ) -> Deployment:
        """Stops a deployment where it is."""
        return await self._deployments.abort(deployment_id, reason, timeout=timeout)

    async def rollback_deployment(
        self, deployment_id: str, reason: str = "", *, timeout: float | None = None
    ) -> Deployment:
        """Rolls the updated instances back to the version they had."""
        return await self._deployments.rollback(deployment_id, reason, timeout=timeout)

    def watch_deployment(
        self, deployment_id: str, *, timeout: float | None = None
    ) -> AsyncIterator[Deployment]:
        """The deployment's current state, then every change (resumes by itself)."""
        return self._deployments.watch_deployment(deployment_id, timeout=timeout)

    def watch_directives(
        self, service: str, instance_id: str = "", *, timeout: float | None = None
    ) -> AsyncIterator[Directive]:
        """Directives for one instance (or every instance of ``service``): the
        current ones, then every new one (resumes by itself)."""
        return self._deployments.watch_directives(service, instance_id, timeout=timeout)

    # -- backups -------------------------------------------------------------

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
        return await self._backups.export_backup(store=store, download=download, timeout=timeout)

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
        return await self._backups.backup(path, store=store, timeout=timeout)

    async def store_backup(self, *, timeout: float = 300.0) -> BackupInfo:
        """Has the hub write a backup to its backup directory (nothing is sent back
        but its description)."""
        return await self._backups.store_backup(timeout=timeout)

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
        return await self._backups.restore(
            data_or_path, dry_run=dry_run, stored=stored, timeout=timeout
        )

    async def list_backups(self, *, timeout: float | None = None) -> list[BackupInfo]:
        """The backups in the answering hub replica's backup directory, newest first."""
        return await self._backups.list_backups(timeout=timeout)

    async def delete_backup(self, name: str, *, timeout: float | None = None) -> None:
        """Deletes a stored backup by name (as in ``list_backups``)."""
        await self._backups.delete_backup(name, timeout=timeout)
