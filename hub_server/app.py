"""The composition root: builds the store, the domain objects and the servicers,
and runs them in one grpc.aio server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

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
    observability_pb2,
    observability_pb2_grpc,
    registry_pb2_grpc,
    tenant_pb2,
    tenant_pb2_grpc,
)
from aitrading.hub.v1 import (
    health_pb2_grpc as hub_health_pb2_grpc,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hub_server.addresses import is_loopback
from hub_server.api.backups import BackupServicer
from hub_server.api.balancer import LoadBalancerServicer
from hub_server.api.circuits import CircuitBreakerServicer
from hub_server.api.cluster import ClusterServicer
from hub_server.api.config import ConfigServicer
from hub_server.api.deployments import DeploymentServicer
from hub_server.api.health import HealthServicer
from hub_server.api.observability import ObservabilityServicer, SystemMetrics
from hub_server.api.registry import RegistryServicer
from hub_server.api.tenants import TenantServicer
from hub_server.auth.authorizer import Authorizer
from hub_server.auth.limits import CallerLimits
from hub_server.backups.service import Backups
from hub_server.balancing.service import Picker
from hub_server.circuits.service import Circuits
from hub_server.config.service import Configs
from hub_server.deployments.service import Deployments
from hub_server.embedded_etcd import EtcdProcess, embedded
from hub_server.health import probes
from hub_server.health.service import HealthMonitor, HealthView
from hub_server.kernel.errors import StoreUnavailable
from hub_server.kernel.validation import require_key_name
from hub_server.observability.alerts import Alerts
from hub_server.observability.audit import AuditLog
from hub_server.observability.error_patterns import ErrorPatterns
from hub_server.observability.telemetry import Telemetry
from hub_server.observability.tenant_alerts import TenantLimits
from hub_server.quotas.service import Quotas
from hub_server.registry.service import Registry, RegistryView
from hub_server.rpc import streaming
from hub_server.rpc.context import CallWrapper
from hub_server.rpc.decoding import tolerant
from hub_server.rpc.wrapping import WrappingServer
from hub_server.store import keys
from hub_server.store.election import Election
from hub_server.store.etcd import EtcdStore, KeyValue
from hub_server.store.mirror import PrefixMirror
from hub_server.store.presence import Presence
from hub_server.tenancy.service import Tenants
from hub_server.ui import Dashboard
from hub_server.ui.server import parse_listen

log = logging.getLogger(__name__)

SERVER_OPTIONS = [
    # Several processes may serve one port (--workers): the kernel spreads
    # connections over them.
    ("grpc.so_reuseport", 1),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # New calls the server has not picked up yet: past 1,000 (the default) core
    # starts refusing them, so a burst of a few thousand watch streams opened at
    # once (clients reconnecting after a restart) was partly CANCELLED.
    ("grpc.server.max_pending_requests", 10_000),
    ("grpc.server.max_pending_requests_hard_limit", 20_000),
    # Bounded headers: tenant headers are cut at 256 characters each anyway.
    ("grpc.max_metadata_size", 16 * 1024),
]


def tune_garbage_collector() -> None:
    """For a serving process, once its hub has started (process-wide, so not
    in Hub.start: tests run many hubs in one process).

    Thousands of open watch streams keep a few hundred thousand objects alive,
    and fanning one change out to them allocates tens of thousands more that
    outlive a young collection: with the default thresholds (700, 10, 10) the
    collector walked that heap over and over, 26-40% of the hub's CPU during a
    fan-out to 5,000 streams. A young generation of 50,000 fixed that but made
    each young collection a 25-45 ms pause (grpc.aio leaves a small reference
    cycle per call, so there is always garbage to find), the p99 of discovery
    at 1,000 calls/s. 5,000 keeps pauses at 2-7 ms and fan-out no slower.
    Freezing what start-up built (modules, classes, the loaded views) keeps
    ~60,000 objects that live as long as the process out of every full
    collection: with 10,000 instances registered, a full collection took
    ~60 ms and now takes 4-9 ms.
    """
    gc.set_threshold(5_000, 20, 100)
    gc.freeze()


@dataclass
class HubConfig:
    listen: str = "127.0.0.1:7000"
    data_dir: Path = Path(".hub-data")
    # None or empty: start an embedded etcd under data_dir.
    etcd_endpoints: list[str] = field(default_factory=list)
    hub_id: str = ""
    # How often an idle Watch stream gets a PROGRESS message.
    watch_progress_interval: float = 10.0
    # How often the hub checks that etcd answers (drives grpc.health.v1).
    store_check_interval: float = 1.0
    shutdown_grace: float = 5.0
    # Leader lease: a dead leader is replaced within about this many seconds.
    election_ttl: int = 5
    # Probes running at once on the leader.
    probe_concurrency: int = 200
    # Seconds an unchanged health record may go unwritten: its last_check is at
    # most max(interval, this) old while probing runs (the proto says 30 s).
    health_refresh: float = 30.0
    # How long audit records are kept.
    audit_retention: float = 30 * 24 * 3600.0
    # How often the leader evaluates alert rules.
    alert_interval: float = 1.0
    # A tenant using at least this share of a limit raises TENANT_NEAR_LIMIT.
    tenant_alert_share: float = 0.8
    # Quota allocations / releases of at least this amount are audited.
    audit_allocations_from: int = 10
    # host:port for a Prometheus scrape endpoint ("" = none).
    metrics_listen: str = ""
    # host:port of an OpenTelemetry collector for OTLP/gRPC export ("" = none).
    otlp_endpoint: str = ""
    # Backups: the directory (None: <data_dir>/backups with an embedded etcd,
    # none with an external one), the schedule's interval in seconds (0: no
    # schedule) and how many scheduled files to keep.
    backup_dir: Path | None = None
    backup_interval: float = 0.0
    backup_keep: int = 7
    # host:port of the operators' web dashboard ("" = none; hub_server/ui).
    ui_listen: str = ""
    # Who may call (hub_server/auth/credentials.py); None: nobody is asked,
    # so the hub refuses any address but loopback unless `insecure`.
    credentials_file: Path | None = None
    # Server TLS; with tls_client_ca, clients must present a certificate it signed.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure: bool = False
    # Per caller: calls per second (0: unlimited) and open streams (0: unbounded).
    caller_rate_limit: float = 10_000.0
    caller_max_streams: int = 10_000


def _decode_replica(kv: KeyValue) -> cluster_pb2.Replica:
    return cluster_pb2.Replica.FromString(kv.value)


def _service_names() -> list[str]:
    """Every service this server exposes, for reflection."""
    from aitrading.hub.v1 import health_pb2 as hub_health_pb2
    from aitrading.hub.v1 import registry_pb2

    return [
        registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
        hub_health_pb2.DESCRIPTOR.services_by_name["HealthService"].full_name,
        cluster_pb2.DESCRIPTOR.services_by_name["ClusterService"].full_name,
        circuit_pb2.DESCRIPTOR.services_by_name["CircuitBreakerService"].full_name,
        balancer_pb2.DESCRIPTOR.services_by_name["LoadBalancerService"].full_name,
        config_pb2.DESCRIPTOR.services_by_name["ConfigService"].full_name,
        tenant_pb2.DESCRIPTOR.services_by_name["TenantService"].full_name,
        observability_pb2.DESCRIPTOR.services_by_name["ObservabilityService"].full_name,
        deployment_pb2.DESCRIPTOR.services_by_name["DeploymentService"].full_name,
        backup_pb2.DESCRIPTOR.services_by_name["BackupService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    ]


def authorizer_for(cfg: HubConfig) -> Authorizer:
    """The config's authorizer; refuses to serve beyond loopback with nobody
    asked who they are."""
    authorizer = Authorizer(cfg.credentials_file, client_certs=cfg.tls_client_ca is not None)
    _check_side_listeners(cfg, authorizer.enabled)
    if authorizer.enabled:
        return authorizer
    host = cfg.listen.rpartition(":")[0].strip("[]")
    if is_loopback(host):
        log.warning("no credentials configured: every caller is admin, serving on loopback only")
    elif cfg.insecure:
        log.warning("no credentials configured and --insecure: anyone reaching %s is admin", host)
    else:
        raise ValueError(
            f"refusing to serve {cfg.listen} without credentials: give --credentials-file "
            "(and/or --tls-client-ca), listen on loopback, or pass --insecure"
        )
    return authorizer


def _check_side_listeners(cfg: HubConfig, credentials: bool) -> None:
    """The dashboard's and the metrics' addresses, checked before anything starts
    (etcd, the data dir), as --listen is: a bad one or an exposed dashboard
    without credentials is refused here, not after the hub is half up."""
    if cfg.ui_listen:
        host, _ = parse_listen(cfg.ui_listen)  # ValueError names the flag
        if not (is_loopback(host) or credentials or cfg.insecure):
            raise ValueError(
                f"refusing to serve the dashboard on {host} without credentials: give "
                "--credentials-file, listen on loopback, or pass --insecure"
            )
    if cfg.metrics_listen:
        # Prometheus scrapes without credentials: any host, but a real port.
        _, sep, port = cfg.metrics_listen.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"--metrics-listen {cfg.metrics_listen!r}: expected HOST:PORT")


def _default_hub_id() -> str:
    host = socket.gethostname().split(".")[0][:64]
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Hub:
    """One hub replica. ``await start()``, serve, ``await stop()``."""

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        # Part of etcd keys (presence, election): refused before anything starts.
        self.hub_id = require_key_name("hub_id", config.hub_id or _default_hub_id())
        self.etcd: EtcdProcess | None = None
        self.store: EtcdStore | None = None
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        self.dashboard: Dashboard | None = None

    @property
    def address(self) -> str:
        host = self.config.listen.rpartition(":")[0].strip("[]") or "127.0.0.1"
        return f"{host}:{self.port}"

    async def start(self) -> None:
        self.authorizer = authorizer_for(self.config)
        endpoints = self.config.etcd_endpoints
        if not endpoints:
            self.etcd = embedded(self.config.data_dir)
            await self.etcd.start_async()
            endpoints = [self.etcd.endpoint]
            log.info("embedded etcd serving on %s (data in %s)", endpoints[0], self.etcd.data_dir)
        self.store = EtcdStore(endpoints)
        await self._wait_for_store()

        store, cfg = self.store, self.config
        self.view = RegistryView(store)
        self.health_view = HealthView(store)
        self.replicas: PrefixMirror[cluster_pb2.Replica] = PrefixMirror(
            store, keys.REPLICAS, _decode_replica
        )
        self.circuits = Circuits(store)
        self.tenants = Tenants(store)
        self.configs = Configs(store, self.tenants)
        self.quotas = Quotas(store, self.configs)
        self.picker = Picker(store, self.view, self.health_view, self.circuits)
        self.deployments = Deployments(store, self.view, self.health_view)
        self.picker.drains = self.deployments.drains
        self.tenant_limits = TenantLimits(store, self.configs, share=cfg.tenant_alert_share)
        self.alerts = Alerts(
            store,
            self.view,
            self.health_view,
            self.circuits,
            extra_conditions=self.tenant_limits.conditions,
        )
        self._mirrors = [
            self.alerts.active,
            self.tenant_limits.usage,
            self.picker.loads,
            self.view.mirror,
            self.health_view.mirror,
            self.replicas,
            self.circuits.mirror,
            self.circuits.settings,
            self.tenants.mirror,
            self.configs.mirror,
            *self.deployments.mirrors,
        ]
        await self.configs.seed_tier_defaults()
        # Independent views: load them together (each start waits on an etcd
        # round trip or two, so one after another they add up).
        await asyncio.gather(*(mirror.start() for mirror in self._mirrors))
        self.registry = Registry(store, self.view)

        self.election = Election(store, self.hub_id, ttl=cfg.election_ttl)
        self.health_monitor = HealthMonitor(
            store,
            self.view,
            self.health_view,
            probes.probe,
            concurrency=cfg.probe_concurrency,
            refresh=cfg.health_refresh,
        )
        self.election.add_work(self.health_monitor.run)
        self.election.add_work(self.circuits.tick_forever)
        self.election.add_work(self.deployments.run)
        self.audit = AuditLog(store, self.hub_id, retention=cfg.audit_retention)
        self.telemetry = Telemetry(
            self.hub_id, metrics_listen=cfg.metrics_listen, otlp_endpoint=cfg.otlp_endpoint
        )
        self._add_gauges()
        self.election.add_work(self.audit.prune_forever)
        self.backups = Backups(
            store,
            self.hub_id,
            directory=self._backup_dir(),
            interval=cfg.backup_interval,
            keep=cfg.backup_keep,
        )
        if cfg.backup_interval > 0:
            if self.backups.directory is None:
                raise ValueError("scheduled backups need a backup directory (--backup-dir)")
            self.election.add_work(self.backups.schedule_forever)
        self.election.add_work(lambda: self.alerts.run(cfg.alert_interval))

        self.calls = calls = CallWrapper(
            self.audit,
            self.telemetry,
            authorizer=self.authorizer,
            limits=CallerLimits(cfg.caller_rate_limit, cfg.caller_max_streams),
            tier_of=self._stored_tier,
        )
        core = grpc.aio.server(options=SERVER_OPTIONS)
        # Every hub method: the call context outside (it also maps the refusal of
        # a request that does not parse), the tolerant deserializer inside.
        server = WrappingServer(core, lambda method, handler: calls.wrap(method, tolerant(handler)))
        progress = cfg.watch_progress_interval
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(
            RegistryServicer(
                self.registry,
                self.health_view,
                self.hub_id,
                progress_interval=progress,
                is_draining=self.deployments.is_draining,
            ),
            streaming.sends_bytes(server),  # Watch yields pre-serialized events
        )
        hub_health_pb2_grpc.add_HealthServiceServicer_to_server(
            HealthServicer(self.view, self.health_view, self.hub_id, progress_interval=progress),
            streaming.sends_bytes(server),
        )
        balancer_pb2_grpc.add_LoadBalancerServiceServicer_to_server(
            LoadBalancerServicer(self.picker, self.hub_id), server
        )
        circuit_pb2_grpc.add_CircuitBreakerServiceServicer_to_server(
            CircuitBreakerServicer(self.circuits, self.hub_id, progress_interval=progress), server
        )
        # The dashboard shows what these answer (not a second wiring of them).
        self.system_metrics = SystemMetrics(
            self.hub_id,
            self.view,
            self.health_view,
            self.telemetry,
            lambda: self.election.is_leader,
            self._tenant_metrics,
        )
        self.observability = ObservabilityServicer(
            self.audit,
            self.alerts,
            ErrorPatterns(store),
            self.system_metrics,
            self.hub_id,
            progress_interval=progress,
        )
        observability_pb2_grpc.add_ObservabilityServiceServicer_to_server(
            self.observability, server
        )
        config_pb2_grpc.add_ConfigServiceServicer_to_server(
            ConfigServicer(self.configs, self.hub_id, progress_interval=progress),
            streaming.sends_bytes(server),
        )
        tenant_pb2_grpc.add_TenantServiceServicer_to_server(
            TenantServicer(
                self.tenants,
                self.configs,
                self.quotas,
                self.hub_id,
                audit_allocations_from=cfg.audit_allocations_from,
            ),
            server,
        )
        deployment_pb2_grpc.add_DeploymentServiceServicer_to_server(
            DeploymentServicer(self.deployments, self.hub_id, progress_interval=progress), server
        )
        backup_pb2_grpc.add_BackupServiceServicer_to_server(
            BackupServicer(self.backups, self.audit, self.hub_id), server
        )
        cluster_pb2_grpc.add_ClusterServiceServicer_to_server(
            ClusterServicer(self.replicas, self.election, self.hub_id), server
        )
        # Open to every caller, and not the hub's own: registered unwrapped.
        server = core
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(_service_names(), server)
        credentials = self._server_credentials()
        if credentials is None:
            self.port = server.add_insecure_port(cfg.listen)
        else:
            self.port = server.add_secure_port(cfg.listen, credentials)
        if not self.port:
            raise RuntimeError(f"cannot listen on {cfg.listen}")
        await server.start()
        self.server = server

        replica = cluster_pb2.Replica(hub_id=self.hub_id, address=self.address)
        replica.started_at.GetCurrentTime()
        self.presence = Presence(store, keys.replica_key(self.hub_id), replica.SerializeToString())
        await self.presence.start()
        self.election.start()
        await self._set_serving(True)
        self._tasks.append(asyncio.create_task(self._watch_store_health()))
        if cfg.ui_listen:
            self.dashboard = Dashboard(self, cfg.ui_listen)
            await self.dashboard.start()
        log.info("central hub %s serving on %s", self.hub_id, self.address)

    def _server_credentials(self) -> grpc.ServerCredentials | None:
        cfg = self.config
        if cfg.tls_cert is None and cfg.tls_key is None:
            if cfg.tls_client_ca is not None:
                raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
            return None
        if cfg.tls_cert is None or cfg.tls_key is None:
            raise ValueError("--tls-cert and --tls-key go together")
        client_ca = cfg.tls_client_ca.read_bytes() if cfg.tls_client_ca else None
        return grpc.ssl_server_credentials(
            [(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    def _stored_tier(self, tenant_id: str) -> str:
        record = self.tenants.get(tenant_id)
        return record.tier if record is not None else ""

    def reload_credentials(self) -> bool:
        """SIGHUP: re-reads the credentials file (a bad one is logged and ignored)
        and ends the open streams of callers it no longer allows."""
        if not self.authorizer.reload():
            return False
        self.calls.reauthorize_streams()
        return True

    def _backup_dir(self) -> Path | None:
        if self.config.backup_dir is not None:
            return self.config.backup_dir
        if self.etcd is not None:  # embedded etcd: keep backups beside its data
            return self.config.data_dir / "backups"
        return None

    async def _wait_for_store(self, timeout: float = 30.0) -> None:
        assert self.store is not None
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                await self.store.status(timeout=2.0)
                return
            except StoreUnavailable:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", "aitrading.hub.v1.RegistryService"):
            await self.health.set(name, status)

    async def _watch_store_health(self) -> None:
        """NOT_SERVING while etcd does not answer or the registry watch is down."""
        assert self.store is not None
        serving = True
        while True:
            await asyncio.sleep(self.config.store_check_interval)
            try:
                await self.store.status(timeout=max(self.config.store_check_interval, 0.5))
                ok = all(m.live for m in self._mirrors)
            except StoreUnavailable:
                ok = False
            if ok != serving:
                serving = ok
                log.warning(
                    "etcd %s", "reachable again: SERVING" if ok else "unreachable: NOT_SERVING"
                )
                await self._set_serving(ok)

    async def stop(self) -> None:
        """Graceful: health says NOT_SERVING, calls in flight get a grace period.
        Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self.dashboard is not None:
            await self.dashboard.stop()
            self.dashboard = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.health.enter_graceful_shutdown()
        if getattr(self, "election", None) is not None:
            await self.election.stop()  # hands leadership over at once
            await self.presence.stop()
        if self.server is not None:
            await self.server.stop(self.config.shutdown_grace)
        for mirror in getattr(self, "_mirrors", []):
            await mirror.stop()
        if self.store is not None:
            await self.store.close()
        if getattr(self, "telemetry", None) is not None:
            self.telemetry.shutdown()
        if self.etcd is not None:
            await asyncio.to_thread(self.etcd.stop)

    async def _tenant_metrics(self) -> list[observability_pb2.TenantMetrics]:
        """Every tenant with its tier, current usage and limits (from memory)."""
        usage: dict[str, dict[str, tuple[int, int]]] = {}
        for tenant_id, resource, used, limit in self.tenant_limits.current():
            usage.setdefault(tenant_id, {})[resource] = (used, limit)
        out = []
        for record in sorted(self.tenants.mirror.items.values(), key=lambda r: r.tenant_id):
            found = usage.get(record.tenant_id, {})
            out.append(
                observability_pb2.TenantMetrics(
                    tenant_id=record.tenant_id,
                    tier=record.tier,
                    usage={r: u for r, (u, _) in found.items()},
                    limits={r: lim for r, (_, lim) in found.items()},
                )
            )
        return out

    def _add_gauges(self) -> None:
        t = self.telemetry
        t.gauge(
            "hub.instances",
            "Registered instances per service",
            lambda: [(len(i), {"service": s}) for s, i in self.view.services.items()],
        )
        t.gauge("hub.watch_streams", "Watch streams served", lambda: [(streaming.open_streams, {})])
        t.gauge(
            "hub.leader", "1 on the elected replica", lambda: [(int(self.election.is_leader), {})]
        )
        t.gauge(
            "hub.instance.probe_latency",
            "Latency of each instance's last probe",
            lambda: [
                (h.latency_ms, {"service": h.service, "instance": h.instance_id})
                for h in self.health_view.mirror.items.values()
            ],
            unit="ms",
        )
        t.gauge(
            "hub.quota.usage",
            "Tenant usage per resource (this hour's for rates)",
            lambda: [
                (used, {"tenant": tenant, "resource": resource, "limit": limit})
                for tenant, resource, used, limit in self.tenant_limits.current()
            ],
        )
