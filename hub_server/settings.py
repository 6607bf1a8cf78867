"""What a hub replica is told: its addresses, etcd, timings, limits and side
listeners (``central-hub serve`` fills it from hub_server/serve_settings.py:
its flags, environment and configuration file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class HubConfig:
    listen: str = "127.0.0.1:7000"
    data_dir: Path = Path(".hub-data")
    # None or empty: start an embedded etcd under data_dir.
    etcd_endpoints: list[str] = field(default_factory=list)
    # The embedded etcd's loopback ports (0: kept from last time, else free ones).
    etcd_client_port: int = 0
    etcd_peer_port: int = 0
    # An external etcd's TLS (a CA for its certificates, a client certificate)
    # and user; the password is read from its file by the command line.
    etcd_cacert: Path | None = None
    etcd_cert: Path | None = None
    etcd_key: Path | None = None
    etcd_user: str = ""
    etcd_password: str = field(default="", repr=False)
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
    # host:port of the HTTP/JSON API ("" = none; hub_server/gateway) and the
    # origins whose browser pages may call it (CORS; none: off).
    http_listen: str = ""
    http_cors_origins: list[str] = field(default_factory=list)
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
    # Webhooks (hub_server/webhooks): targets on loopback, link-local or metadata
    # addresses allowed; if any, the only hosts targets may name; how long a
    # delivery is retried, and its first retry's upper bound (backoff doubles).
    webhook_allow_private: bool = False
    webhook_allowed_hosts: list[str] = field(default_factory=list)
    webhook_retry_for: float = 3600.0
    webhook_retry_base: float = 1.0
