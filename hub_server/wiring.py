"""Builds a hub replica's parts once, in dependency order, from its settings and
its store: the views (mirrors of etcd), the domain services, the call wrapper
and the servicers, registered on a handler table that the gRPC server and the
dashboard's actions share. Nothing here starts: ``app.Hub`` loads the views,
starts the background work and serves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aitrading.hub.v1 import (
    backup_pb2_grpc,
    balancer_pb2_grpc,
    circuit_pb2_grpc,
    cluster_pb2,
    cluster_pb2_grpc,
    config_pb2_grpc,
    deployment_pb2_grpc,
    observability_pb2,
    observability_pb2_grpc,
    registry_pb2_grpc,
    tenant_pb2_grpc,
    webhook_pb2_grpc,
)
from aitrading.hub.v1 import health_pb2_grpc as hub_health_pb2_grpc

from hub_server.api.backups import BackupServicer
from hub_server.api.balancer import LoadBalancerServicer
from hub_server.api.circuits import CircuitBreakerServicer
from hub_server.api.cluster import ClusterServicer
from hub_server.api.config import ConfigServicer
from hub_server.api.deployments import DeploymentServicer
from hub_server.api.health import HealthServicer
from hub_server.api.observability import ObservabilityServicer
from hub_server.api.registry import RegistryServicer
from hub_server.api.tenants import TenantServicer
from hub_server.api.webhooks import WebhookServicer
from hub_server.api.xds import AggregatedDiscoveryServicer
from hub_server.api.xds import add_to_server as add_xds_to_server
from hub_server.auth.authorizer import Authorizer
from hub_server.auth.limits import CallerLimits
from hub_server.backups.service import Backups
from hub_server.balancing.policy import RoutingPolicies
from hub_server.balancing.projection import EndpointProjection
from hub_server.balancing.service import Picker
from hub_server.circuits.service import Circuits
from hub_server.config.service import Configs
from hub_server.deployments.service import Deployments
from hub_server.health import probes
from hub_server.health.service import HealthMonitor, HealthView
from hub_server.observability.alerts import Alerts
from hub_server.observability.audit import AuditLog
from hub_server.observability.error_patterns import ErrorPatterns
from hub_server.observability.hub_metrics import (
    SystemMetrics,
    add_hub_gauges,
    add_xds_metrics,
    tenant_metrics,
)
from hub_server.observability.telemetry import Telemetry
from hub_server.observability.tenant_alerts import TenantLimits
from hub_server.quotas.service import Quotas
from hub_server.registry.service import Registry, RegistryView
from hub_server.rpc import streaming
from hub_server.rpc.context import CallWrapper
from hub_server.rpc.decoding import tolerant
from hub_server.rpc.inprocess import HandlerTable, InProcess
from hub_server.rpc.wrapping import WrappingServer, serializing
from hub_server.settings import HubConfig
from hub_server.store import keys
from hub_server.store.election import Election
from hub_server.store.etcd import EtcdStore, KeyValue
from hub_server.store.mirror import PrefixMirror
from hub_server.tenancy.service import Tenants
from hub_server.webhooks import events as webhook_events
from hub_server.webhooks.backoff import Backoff
from hub_server.webhooks.service import Webhooks
from hub_server.webhooks.targets import TargetPolicy
from hub_server.xds.cache import ResourceCache
from hub_server.xds.clients import XdsClients


def _decode_replica(kv: KeyValue) -> cluster_pb2.Replica:
    return cluster_pb2.Replica.FromString(kv.value)


@dataclass(frozen=True)
class Services:
    """One replica's parts, each built once."""

    hub_id: str
    authorizer: Authorizer
    # Views
    view: RegistryView
    health_view: HealthView
    replicas: PrefixMirror[cluster_pb2.Replica]
    # Domain services
    registry: Registry
    circuits: Circuits
    tenants: Tenants
    configs: Configs
    quotas: Quotas
    deployments: Deployments
    projection: EndpointProjection
    policies: RoutingPolicies
    # The open ADS streams of this replica (ListXdsClients, the dashboard, metrics).
    xds_clients: XdsClients
    picker: Picker
    tenant_limits: TenantLimits
    alerts: Alerts
    audit: AuditLog
    backups: Backups
    webhooks: Webhooks
    telemetry: Telemetry
    election: Election
    health_monitor: HealthMonitor
    # The call path and what the dashboard reads from the API
    calls: CallWrapper
    handlers: HandlerTable
    in_process: InProcess
    system_metrics: SystemMetrics
    observability: ObservabilityServicer
    cluster: ClusterServicer

    @property
    def mirrors(self) -> list[PrefixMirror[Any]]:
        """Every view of etcd the replica keeps: loaded at start, and live while
        it serves."""
        return [
            self.alerts.active,
            self.tenant_limits.usage,
            self.picker.loads,
            self.policies.mirror,
            self.view.mirror,
            self.health_view.mirror,
            self.replicas,
            self.circuits.mirror,
            self.circuits.settings,
            self.tenants.mirror,
            self.configs.mirror,
            *self.deployments.mirrors,
            self.webhooks.subscriptions,
        ]


def wire(
    cfg: HubConfig,
    store: EtcdStore,
    hub_id: str,
    authorizer: Authorizer,
    *,
    backup_dir: Path | None,
) -> Services:
    """Builds the replica's parts; the election is given its leader work."""
    view = RegistryView(store)
    health_view = HealthView(store)
    replicas: PrefixMirror[cluster_pb2.Replica] = PrefixMirror(
        store, keys.REPLICAS, _decode_replica
    )
    circuits = Circuits(store)
    tenants = Tenants(store)
    configs = Configs(store, tenants)
    quotas = Quotas(store, configs)
    deployments = Deployments(store, view, health_view)
    # The one usable-endpoint projection: PickEndpoint, xDS and WatchEndpoints read it.
    projection = EndpointProjection(store, view, health_view, circuits, drains=deployments.drains)
    picker = Picker(store, view, circuits, projection)
    # Routing policies: PickEndpoint's default strategy and what xDS clients get;
    # a change is a change of the service's projection for its subscribers.
    policies = RoutingPolicies(store)
    projection.watch(policies.mirror)
    xds_clients = XdsClients()
    tenant_limits = TenantLimits(store, configs, share=cfg.tenant_alert_share)
    webhooks = Webhooks(
        store,
        policy=TargetPolicy(cfg.webhook_allow_private, list(cfg.webhook_allowed_hosts)),
        backoff=Backoff(base=cfg.webhook_retry_base, retry_for=cfg.webhook_retry_for),
    )
    alerts = Alerts(
        store,
        view,
        health_view,
        circuits,
        extra_conditions=lambda: tenant_limits.conditions() + webhooks.conditions(),
    )
    # What webhooks deliver: the changes of these views' logs.
    webhooks.add_source(
        "config", configs.mirror.log, webhook_events.config_events, webhook_events.CONFIG_TYPES
    )
    webhooks.add_source(
        "alerts", alerts.log, webhook_events.alert_events, webhook_events.ALERT_TYPES
    )
    webhooks.add_source(
        "deployments",
        deployments.mirror.log,
        webhook_events.deployment_events,
        webhook_events.DEPLOYMENT_TYPES,
    )
    webhooks.add_source(
        "registry", view.mirror.log, webhook_events.instance_events, webhook_events.INSTANCE_TYPES
    )
    registry = Registry(store, view)
    election = Election(store, hub_id, ttl=cfg.election_ttl)
    health_monitor = HealthMonitor(
        store,
        view,
        health_view,
        probes.probe,
        concurrency=cfg.probe_concurrency,
        refresh=cfg.health_refresh,
    )
    audit = AuditLog(store, hub_id, retention=cfg.audit_retention)
    telemetry = Telemetry(
        hub_id, metrics_listen=cfg.metrics_listen, otlp_endpoint=cfg.otlp_endpoint
    )
    add_hub_gauges(
        telemetry,
        view,
        health_view,
        tenant_limits,
        is_leader=lambda: election.is_leader,
        open_streams=lambda: streaming.open_streams,
    )
    backups = Backups(
        store, hub_id, directory=backup_dir, interval=cfg.backup_interval, keep=cfg.backup_keep
    )
    if cfg.backup_interval > 0 and backups.directory is None:
        raise ValueError("scheduled backups need a backup directory (--backup-dir)")

    add_xds_metrics(telemetry, xds_clients)

    def stored_tier(tenant_id: str) -> str:
        record = tenants.get(tenant_id)
        return record.tier if record is not None else ""

    calls = CallWrapper(
        audit,
        telemetry,
        authorizer=authorizer,
        limits=CallerLimits(cfg.caller_rate_limit, cfg.caller_max_streams),
        tier_of=stored_tier,
    )

    async def tenants_now() -> list[observability_pb2.TenantMetrics]:
        return tenant_metrics(tenants, tenant_limits)

    system_metrics = SystemMetrics(
        hub_id,
        view,
        health_view,
        telemetry,
        lambda: election.is_leader,
        lambda: streaming.open_streams,
        tenants_now,
    )
    progress = cfg.watch_progress_interval
    observability = ObservabilityServicer(
        audit, alerts, ErrorPatterns(store), system_metrics, hub_id, progress_interval=progress
    )
    cluster = ClusterServicer(replicas, election, hub_id, xds_clients)

    handlers = HandlerTable()
    # Every hub method: the call context outside (it also maps the refusal of a
    # request that does not parse), the tolerant deserializer inside.
    server = WrappingServer(handlers, lambda method, h: calls.wrap(method, tolerant(h)))
    sends_bytes = streaming.sends_bytes(server)  # for Watch streams of pre-serialized events
    registry_servicer = RegistryServicer(
        registry,
        health_view,
        hub_id,
        progress_interval=progress,
        is_draining=deployments.is_draining,
        draining_any=deployments.any_draining,
    )
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(
        registry_servicer, serializing(sends_bytes, registry_servicer.response_serializers)
    )
    hub_health_pb2_grpc.add_HealthServiceServicer_to_server(
        HealthServicer(view, health_view, hub_id, progress_interval=progress), sends_bytes
    )
    balancer_pb2_grpc.add_LoadBalancerServiceServicer_to_server(
        LoadBalancerServicer(picker, policies, projection, hub_id, tier_of=stored_tier), server
    )
    circuit_pb2_grpc.add_CircuitBreakerServiceServicer_to_server(
        CircuitBreakerServicer(circuits, hub_id, progress_interval=progress), server
    )
    observability_pb2_grpc.add_ObservabilityServiceServicer_to_server(observability, server)
    config_pb2_grpc.add_ConfigServiceServicer_to_server(
        ConfigServicer(configs, hub_id, progress_interval=progress), sends_bytes
    )
    tenant_pb2_grpc.add_TenantServiceServicer_to_server(
        TenantServicer(
            tenants, configs, quotas, hub_id, audit_allocations_from=cfg.audit_allocations_from
        ),
        server,
    )
    deployment_pb2_grpc.add_DeploymentServiceServicer_to_server(
        DeploymentServicer(deployments, hub_id, progress_interval=progress), server
    )
    backup_pb2_grpc.add_BackupServiceServicer_to_server(
        BackupServicer(backups, audit, hub_id), server
    )
    cluster_pb2_grpc.add_ClusterServiceServicer_to_server(cluster, server)
    webhook_pb2_grpc.add_WebhookServiceServicer_to_server(WebhookServicer(webhooks), server)
    # envoy's ADS on the same listener and call path: proxyless gRPC clients.
    add_xds_to_server(
        AggregatedDiscoveryServicer(
            ResourceCache(projection, policies.get),
            xds_clients,
            credentials=authorizer.enabled,
            tier_of=stored_tier,
            on_tenant_change=tenants.add_listener,
        ),
        server,
    )

    services = Services(
        hub_id=hub_id,
        authorizer=authorizer,
        view=view,
        health_view=health_view,
        replicas=replicas,
        registry=registry,
        circuits=circuits,
        tenants=tenants,
        configs=configs,
        quotas=quotas,
        deployments=deployments,
        projection=projection,
        policies=policies,
        xds_clients=xds_clients,
        picker=picker,
        tenant_limits=tenant_limits,
        alerts=alerts,
        audit=audit,
        backups=backups,
        webhooks=webhooks,
        telemetry=telemetry,
        election=election,
        health_monitor=health_monitor,
        calls=calls,
        handlers=handlers,
        in_process=InProcess(handlers),
        system_metrics=system_metrics,
        observability=observability,
        cluster=cluster,
    )
    # What runs on the elected replica only.
    election.add_work(health_monitor.run)
    election.add_work(circuits.tick_forever)
    election.add_work(deployments.run)
    election.add_work(audit.prune_forever)
    if cfg.backup_interval > 0:
        election.add_work(backups.schedule_forever)
    election.add_work(lambda: alerts.run(cfg.alert_interval))
    election.add_work(webhooks.run)
    return services
