"""`central-hub serve`: the hub's command line; also `token create`, `health`
(a probe for containers and systemd) and `--version`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hub_client import TLS, HubClient, configure_logging, version_info
from hub_server.app import Hub, HubConfig, authorizer_for, tune_garbage_collector
from hub_server.auth.credentials import (
    CredentialsError,
    new_token,
    parse_credentials,
    token_entry,
)
from hub_server.auth.roles import Role
from hub_server.kernel.errors import InvalidArgument
from hub_server.workers import supervise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="central-hub", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=version_info().describe("central-hub")
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a hub replica")
    serve.add_argument(
        "--listen", default="127.0.0.1:7000", help="gRPC address (default 127.0.0.1:7000)"
    )
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".hub-data"),
        help="where the embedded etcd keeps its data (default ./.hub-data)",
    )
    serve.add_argument(
        "--etcd-endpoints",
        default="",
        help="comma-separated host:port of an existing etcd cluster; no embedded etcd",
    )
    serve.add_argument("--hub-id", default="", help="this replica's name (default host-pid-rand)")
    serve.add_argument(
        "--watch-progress-interval",
        type=float,
        default=10.0,
        help="seconds between PROGRESS messages on idle watch streams (default 10)",
    )
    serve.add_argument(
        "--ui-listen",
        default="",
        help="HOST:PORT (or PORT, on loopback) for the operators' web dashboard (default: none)",
    )
    serve.add_argument(
        "--metrics-listen",
        default="",
        help="HOST:PORT for a Prometheus /metrics endpoint (default: none)",
    )
    serve.add_argument(
        "--otlp-endpoint",
        default="",
        help="HOST:PORT of an OpenTelemetry collector: OTLP/gRPC export of metrics and traces",
    )
    serve.add_argument(
        "--audit-retention-days",
        type=float,
        default=30.0,
        help="how long audit records are kept (default 30 days)",
    )
    serve.add_argument(
        "--backup-dir",
        type=Path,
        default=None,
        help="where backups are stored (default <data-dir>/backups with the embedded etcd; "
        "required for --backup-interval with --etcd-endpoints)",
    )
    serve.add_argument(
        "--backup-interval",
        type=float,
        default=0.0,
        help="seconds between scheduled backups, taken by the elected replica (default 0: none)",
    )
    serve.add_argument(
        "--backup-keep",
        type=int,
        default=7,
        help="scheduled backups kept (newest first; default 7)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="serving processes on the same port (SO_REUSEPORT); default 1",
    )
    security = serve.add_argument_group("security")
    security.add_argument(
        "--credentials-file",
        type=Path,
        default=None,
        help="TOML file of tokens (as sha256) and client certificates with their roles; "
        "re-read on SIGHUP (see `central-hub token create`)",
    )
    security.add_argument("--tls-cert", type=Path, default=None, help="server certificate (PEM)")
    security.add_argument("--tls-key", type=Path, default=None, help="server private key (PEM)")
    security.add_argument(
        "--tls-client-ca",
        type=Path,
        default=None,
        help="CA (PEM) that signs client certificates; makes them required",
    )
    security.add_argument(
        "--insecure",
        action="store_true",
        help="serve a non-loopback address with no credentials (everyone is admin)",
    )
    security.add_argument(
        "--caller-rate-limit",
        type=float,
        default=10_000.0,
        help="calls per second per caller before RESOURCE_EXHAUSTED (0: none; default 10000)",
    )
    security.add_argument(
        "--caller-max-streams",
        type=int,
        default=10_000,
        help="open streams per caller (0: unbounded; default 10000)",
    )
    serve.add_argument("--log-level", default="INFO")
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="json: one JSON object per line with tenant and correlation ids",
    )

    token = sub.add_parser("token", help="credentials for --credentials-file")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser(
        "create", help="print a new random token and its entry for the credentials file"
    )
    create.add_argument("name", help="shows in the audit trail as token:NAME")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--tenant", default="", help="bind to one tenant (service, reader)")
    create.add_argument("--service", default="", help="bind to one service (service role)")

    health = sub.add_parser(
        "health",
        help="probe a hub: exit 0 only when grpc.health.v1 says SERVING "
        "(1 not serving, 3 unreachable)",
    )
    health.add_argument(
        "--target", default="127.0.0.1:7000", help="HOST:PORT (default 127.0.0.1:7000)"
    )
    health.add_argument("--service", default="", help='health service name (default "": the hub)')
    health.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    health.add_argument("--token", default=None, help="bearer token (default $HUB_TOKEN)")
    health.add_argument(
        "--tls-ca", default="", metavar="PEM", help="connect with TLS, checking this CA"
    )
    health.add_argument("--tls-cert", default="", metavar="PEM", help="client certificate")
    health.add_argument("--tls-key", default="", metavar="PEM", help="client certificate's key")
    return parser


# `central-hub health` exit codes: 0 SERVING, 1 answered but not SERVING, 2 usage
# (argparse), 3 no answer (unreachable, timed out, refused), as hubctl's 3.
_HEALTH_UNREACHABLE = 3


async def _probe(args: argparse.Namespace) -> tuple[int, str]:
    tls = None
    if args.tls_ca or args.tls_cert:
        tls = TLS(ca=args.tls_ca or None, cert=args.tls_cert or None, key=args.tls_key or None)
    async with HubClient(args.target, timeout=args.timeout, token=args.token, tls=tls) as hub:
        try:
            resp = await health_pb2_grpc.HealthStub(hub.channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.aio.AioRpcError as e:
            code = e.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return _HEALTH_UNREACHABLE, f"{code.name}: {e.details()}"
            return 1, f"{code.name}: {e.details()}"  # e.g. NOT_FOUND for an unknown service
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return (0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1), status


def _health(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        print("central-hub health: --timeout must be positive", file=sys.stderr)
        return 2
    try:
        code, line = asyncio.run(_probe(args))
    except (ValueError, OSError) as e:  # an address that does not parse, an unreadable PEM
        print(f"central-hub health: {e}", file=sys.stderr)
        return 2
    print(f"{args.target}: {line}", file=sys.stdout if code == 0 else sys.stderr)
    return code


def _create_token(args: argparse.Namespace) -> int:
    entry = token_entry(
        args.name, Role(args.role), token := new_token(), tenant=args.tenant, service=args.service
    )
    try:
        parse_credentials(entry)  # the same checks the hub makes
    except CredentialsError as e:
        print(f"central-hub token create: {e}", file=sys.stderr)
        return 2
    print(f"# token (shown once; give it to the caller, keep only the hash):\n# {token}")
    print(entry, end="")
    return 0


async def serve(config: HubConfig) -> None:
    hub = Hub(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await hub.start()
    except BaseException:
        await hub.stop()  # what did start (etcd, the store) stops in this loop, not after it
        raise
    tune_garbage_collector()
    loop.add_signal_handler(signal.SIGHUP, hub.reload_credentials)
    print(f"central hub serving on {hub.address}", flush=True)
    if hub.dashboard is not None:
        print(f"dashboard on {hub.dashboard.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await hub.stop()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "token":
        return _create_token(args)
    if args.command == "health":
        return _health(args)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.workers > 1 and args.metrics_listen:
        parser.error("--metrics-listen serves one process; use --otlp-endpoint with --workers")
    if args.workers > 1 and args.ui_listen:
        parser.error("--ui-listen serves one process; not with --workers")
    if args.backup_interval < 0 or args.backup_keep < 1:
        parser.error("--backup-interval must be >= 0 and --backup-keep >= 1")
    if args.backup_interval > 0 and args.etcd_endpoints.strip() and args.backup_dir is None:
        parser.error("--backup-interval with --etcd-endpoints needs --backup-dir")
    if args.log_format == "json":
        configure_logging("central-hub", args.log_level.upper())
    else:
        logging.basicConfig(
            level=args.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    config = HubConfig(
        listen=args.listen,
        data_dir=args.data_dir,
        etcd_endpoints=[e for e in args.etcd_endpoints.split(",") if e.strip()],
        hub_id=args.hub_id,
        watch_progress_interval=args.watch_progress_interval,
        metrics_listen=args.metrics_listen,
        ui_listen=args.ui_listen,
        otlp_endpoint=args.otlp_endpoint,
        audit_retention=args.audit_retention_days * 86400,
        backup_dir=args.backup_dir,
        backup_interval=args.backup_interval,
        backup_keep=args.backup_keep,
        credentials_file=args.credentials_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        insecure=args.insecure,
        caller_rate_limit=args.caller_rate_limit,
        caller_max_streams=args.caller_max_streams,
    )
    try:
        if args.workers > 1:
            authorizer_for(config)  # refuse a bad setting once, not in every worker
            asyncio.run(supervise(config, args.workers, _passed_on(args)))
        else:
            asyncio.run(serve(config))
    except KeyboardInterrupt:
        pass
    except (ValueError, CredentialsError, InvalidArgument) as e:  # a setting it refuses
        print(f"central-hub: {e}", file=sys.stderr)
        return 2
    return 0


def _passed_on(args: argparse.Namespace) -> list[str]:
    """The flags every worker of --workers gets besides its address and store."""
    extra = [
        "--watch-progress-interval", str(args.watch_progress_interval),
        "--log-level", args.log_level,
        "--log-format", args.log_format,
        "--audit-retention-days", str(args.audit_retention_days),
    ]  # fmt: skip
    if args.otlp_endpoint:
        extra += ["--otlp-endpoint", args.otlp_endpoint]
    for flag in ("credentials_file", "tls_cert", "tls_key", "tls_client_ca"):
        if getattr(args, flag) is not None:
            extra += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.insecure:
        extra.append("--insecure")
    extra += ["--caller-rate-limit", str(args.caller_rate_limit)]
    extra += ["--caller-max-streams", str(args.caller_max_streams)]
    # Workers talk to the supervisor's etcd as an external one: name the
    # directory the embedded default would have used.
    backup_dir = args.backup_dir
    if backup_dir is None and not args.etcd_endpoints.strip():
        backup_dir = args.data_dir / "backups"
    if backup_dir is not None:
        extra += ["--backup-dir", str(backup_dir)]
    if args.backup_interval > 0:
        extra += ["--backup-interval", str(args.backup_interval)]
        extra += ["--backup-keep", str(args.backup_keep)]
    return extra


if __name__ == "__main__":
    sys.exit(main())
