"""`central-hub serve`: the hub's command line; also `token create`, `health`
(a probe for containers and systemd), `xds-bootstrap` (a proxyless gRPC client's
bootstrap file) and `--version`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from hub_client import configure_logging, version_info
from hub_server import probe
from hub_server.app import Hub, HubConfig, authorizer_for, tune_garbage_collector
from hub_server.auth.credentials import (
    CredentialsError,
    new_token,
    parse_credentials,
    token_entry,
)
from hub_server.auth.roles import Role
from hub_server.kernel.errors import InvalidArgument
from hub_server.serve_settings import (
    ServeSettings,
    SettingsError,
    add_settings_flags,
    worker_environment,
    worker_flags,
)
from hub_server.serve_settings import load as load_settings
from hub_server.workers import supervise
from hub_server.xds import bootstrap as xds_bootstrap


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="central-hub", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=version_info().describe("central-hub")
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run a hub replica",
        description="Every setting is also read from CENTRAL_HUB_<NAME> in the environment "
        "and from a TOML file (--config); a flag beats the environment, which beats the file.",
    )
    add_settings_flags(serve)
    config = sub.add_parser("config", help="the configuration `serve` would run with")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser(
        "show",
        help="print the effective configuration (TOML) with each value's source; secrets masked",
    )
    add_settings_flags(show)

    token = sub.add_parser("token", help="credentials for --credentials-file")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser(
        "create", help="print a new random token and its entry for the credentials file"
    )
    create.add_argument("name", help="shows in the audit trail as token:NAME")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--tenant", default="", help="bind to one tenant (service, reader)")
    create.add_argument("--service", default="", help="bind to one service (service role)")

    probe.add_arguments(sub.add_parser("health", help=probe.HELP, description=probe.HELP))
    xds_bootstrap.add_command(sub)
    return parser


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
        return probe.run(args)
    if args.command == "xds-bootstrap":
        return xds_bootstrap.run(args)
    try:
        effective = load_settings(args)
    except SettingsError as e:  # before anything starts: no etcd, no port
        print(f"central-hub: {e}".replace("\n", "\ncentral-hub: "), file=sys.stderr)
        return 2
    if args.command == "config":
        print(effective.show(), end="")
        return 0
    settings = effective.settings
    if settings.log_format == "json":
        configure_logging("central-hub", settings.log_level)
    else:
        logging.basicConfig(
            level=settings.log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    config = settings.hub_config()
    try:
        if settings.workers > 1:
            authorizer_for(config)  # refuse a bad setting once, not in every worker
            asyncio.run(
                supervise(
                    config,
                    settings.workers,
                    _passed_on(settings),
                    worker_environment(settings),
                )
            )
        else:
            asyncio.run(serve(config))
    except KeyboardInterrupt:
        pass
    except (ValueError, CredentialsError, InvalidArgument) as e:  # a setting it refuses
        print(f"central-hub: {e}", file=sys.stderr)
        return 2
    return 0


def _passed_on(settings: ServeSettings) -> list[str]:
    """The flags every worker of --workers gets besides its address, store and
    name: all the others, so that nothing in its environment or a file changes
    them."""
    # Workers talk to the supervisor's etcd as an external one: name the
    # directory the embedded default would have used.
    backup_dir = settings.backup_dir
    if backup_dir is None and not settings.etcd_endpoints:
        backup_dir = settings.data_dir / "backups"
    return worker_flags(
        settings,
        exclude={"listen", "etcd_endpoints", "hub_id"},  # each worker's own
        backup_dir=backup_dir,
        workers=1,
        etcd_client_port=0,
        etcd_peer_port=0,
    )


if __name__ == "__main__":
    sys.exit(main())
