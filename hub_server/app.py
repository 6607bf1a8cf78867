"""One hub replica's lifecycle: starts etcd (or connects to it), has the
replica's parts built (hub_server/wiring.py), loads its views, serves them on
one grpc.aio server (and the dashboard), runs the leader's work, and stops it
all in order."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import uuid
from pathlib import Path

import grpc
from aitrading.hub.v1 import (
    backup_pb2,
    balancer_pb2,
    circuit_pb2,
    cluster_pb2,
    config_pb2,
    deployment_pb2,
    observability_pb2,
    tenant_pb2,
    webhook_pb2,
)
from envoy.service.discovery.v3 import ads_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hub_client import version_info
from hub_server.addresses import is_loopback
from hub_server.auth.authorizer import Authorizer
from hub_server.embedded_etcd import EtcdProcess, embedded
from hub_server.gateway.server import (
    MAX_REQUEST_BYTES,
    HttpGateway,
    HttpSettings,
    check_http_exposure,
)
from hub_server.kernel.errors import StoreUnavailable
from hub_server.kernel.validation import require_key_name
from hub_server.settings import HubConfig
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore
from hub_server.store.etcd_access import EtcdAccess
from hub_server.store.presence import Presence
from hub_server.ui import Dashboard
from hub_server.ui.server import check_exposure, parse_listen
from hub_server.wiring import Services, wire

__all__ = ["Hub", "HubConfig", "authorizer_for", "tune_garbage_collector"]

log = logging.getLogger(__name__)

SERVER_OPTIONS = [
    # Several processes may serve one port (--workers): the kernel spreads
    # connections over them.
    ("grpc.so_reuseport", 1),
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
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
        webhook_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name,
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
        check_exposure(host, credentials=credentials, insecure=cfg.insecure)
    if cfg.http_listen:
        check_http_exposure(cfg.http_listen, credentials=credentials, insecure=cfg.insecure)
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
        self._services: Services | None = None
        self.presence: Presence | None = None
        self.dashboard: Dashboard | None = None
        self.http: HttpGateway | None = None

    @property
    def services(self) -> Services:
        """The replica's parts, built by ``start()``."""
        if self._services is None:
            raise RuntimeError(f"hub {self.hub_id} has not started")
        return self._services

    @property
    def address(self) -> str:
        host = self.config.listen.rpartition(":")[0].strip("[]") or "127.0.0.1"
        return f"{host}:{self.port}"

    async def start(self) -> None:
        authorizer = authorizer_for(self.config)
        endpoints = self.config.etcd_endpoints
        if not endpoints:
            self.etcd = embedded(
                self.config.data_dir,
                client_port=self.config.etcd_client_port,
                peer_port=self.config.etcd_peer_port,
            )
            await self.etcd.start_async()
            endpoints = [self.etcd.endpoint]
            log.info("embedded etcd serving on %s (data in %s)", endpoints[0], self.etcd.data_dir)
        self.store = EtcdStore(endpoints, access=self._etcd_access())
        await self.store.wait_ready()
        await self.store.check_access()

        cfg = self.config
        self._services = services = wire(
            cfg, self.store, self.hub_id, authorizer, backup_dir=self._backup_dir()
        )
        await services.configs.seed_tier_defaults()
        # Independent views: load them together (each start waits on an etcd
        # round trip or two, so one after another they add up).
        await asyncio.gather(*(mirror.start() for mirror in services.mirrors))

        server = grpc.aio.server(options=SERVER_OPTIONS)
        services.handlers.install(server)
        # Open to every caller, and not the hub's own: registered unwrapped.
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

        replica = cluster_pb2.Replica(
            hub_id=self.hub_id, address=self.address, version=version_info().build
        )
        replica.started_at.GetCurrentTime()
        self.presence = Presence(
            self.store, keys.replica_key(self.hub_id), replica.SerializeToString()
        )
        await self.presence.start()
        services.election.start()
        await self._set_serving(True)
        self._tasks.append(asyncio.create_task(self._watch_store_health()))
        if cfg.ui_listen:
            self.dashboard = Dashboard(services, cfg.ui_listen, insecure=cfg.insecure)
            await self.dashboard.start()
        if cfg.http_listen:
            self.http = HttpGateway(
                services,
                HttpSettings(
                    cfg.http_listen,
                    cors_origins=tuple(cfg.http_cors_origins),
                    tls_cert=cfg.tls_cert,
                    tls_key=cfg.tls_key,
                    tls_client_ca=cfg.tls_client_ca,
                    insecure=cfg.insecure,
                ),
            )
            await self.http.start()
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

    def reload_credentials(self) -> bool:
        """SIGHUP: re-reads the credentials file (a bad one is logged and ignored)
        and ends the open streams of callers it no longer allows."""
        if not self.services.authorizer.reload():
            return False
        self.services.calls.reauthorize_streams()
        return True

    def _etcd_access(self) -> EtcdAccess | None:
        """TLS and a user for an external etcd; the embedded one is plain loopback."""
        cfg = self.config
        if not cfg.etcd_endpoints:
            return None
        return EtcdAccess.from_files(
            cfg.etcd_endpoints,
            cacert=cfg.etcd_cacert,
            cert=cfg.etcd_cert,
            key=cfg.etcd_key,
            user=cfg.etcd_user,
            password=cfg.etcd_password,
        )

    def _backup_dir(self) -> Path | None:
        if self.config.backup_dir is not None:
            return self.config.backup_dir
        if self.etcd is not None:  # embedded etcd: keep backups beside its data
            return self.config.data_dir / "backups"
        return None

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
                ok = all(m.live for m in self.services.mirrors)
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
        if self.http is not None:
            await self.http.stop()
            self.http = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.health.enter_graceful_shutdown()
        services = self._services
        if services is not None:
            await services.election.stop()  # hands leadership over at once
        if self.presence is not None:
            await self.presence.stop()
        if self.server is not None:
            await self.server.stop(self.config.shutdown_grace)
        if services is not None:
            for mirror in services.mirrors:
                await mirror.stop()
        if self.store is not None:
            await self.store.close()
        if services is not None:
            services.telemetry.shutdown()
        if self.etcd is not None:
            await asyncio.to_thread(self.etcd.stop)
