"""`central-hub health`: a probe for containers, Kubernetes and systemd that exits
0 only when the hub's ``grpc.health.v1`` says SERVING.

Probes run every few seconds for the life of a replica, so this module imports
the client side only: the command line dispatches here before it imports the
server (about a third of the CPU per probe)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hub_client import TLS, HubClient

# Exit codes: 0 SERVING, 1 answered but not SERVING, 2 usage (argparse),
# 3 no answer (unreachable, timed out, refused), as hubctl's 3.
UNREACHABLE = 3
HELP = "probe a hub: exit 0 only when grpc.health.v1 says SERVING (1 not serving, 3 unreachable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", default="127.0.0.1:7000", help="HOST:PORT (default 127.0.0.1:7000)"
    )
    parser.add_argument("--service", default="", help='health service name (default "": the hub)')
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument("--token", default=None, help="bearer token (default $HUB_TOKEN)")
    parser.add_argument(
        "--tls-ca", default="", metavar="PEM", help="connect with TLS, checking this CA"
    )
    parser.add_argument("--tls-cert", default="", metavar="PEM", help="client certificate")
    parser.add_argument("--tls-key", default="", metavar="PEM", help="client certificate's key")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="central-hub health", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


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
                return UNREACHABLE, f"{code.name}: {e.details()}"
            return 1, f"{code.name}: {e.details()}"  # e.g. NOT_FOUND for an unknown service
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return (0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1), status


def run(args: argparse.Namespace) -> int:
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
