"""`central-hub xds-bootstrap`: the bootstrap file a proxyless gRPC client needs to
take its endpoints from the hub (``GRPC_XDS_BOOTSTRAP=<file>``, then
``xds:///<service>``).

What real clients require of it (grpcio 1.85, @grpc/grpc-js-xds 1.14):
- ``xds_servers[0]``: the hub's main listener, with ``channel_creds`` the hub
  accepts: ``insecure`` for a hub without TLS; ``tls`` (CA, and a client
  certificate for a hub with credentials, which is how a proxyless client
  authenticates: it cannot send a bearer token) otherwise. grpc-js-xds supports
  only ``insecure`` and ``google_default``, so Node clients need a hub without TLS.
- ``server_features: ["ignore_resource_deletion"]``: a client keeps what it has
  when a resource disappears from an answer; the hub empties a service's
  endpoints to revoke access instead of relying on deletion (grpc-js did not
  recover from a restarted, empty control plane without it). ``xds_v3`` is
  listed for older clients that still look for it.
- ``node``: an ``id`` and a ``locality`` (grpc-js needs it, even empty);
  ``metadata`` with ``tenant_id`` and ``tier`` when given, which the hub honours
  only when it has no credentials (otherwise they come from the certificate).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

from hub_client import Tier, parse_tier

DEFAULT_SERVER_URI = "127.0.0.1:7000"  # `central-hub serve`'s default listener
SERVER_FEATURES = ["xds_v3", "ignore_resource_deletion"]
# The certificate provider instance naming the same files, for resources that
# ask for one (gRPC's file_watcher plugin re-reads them every refresh interval).
CERTIFICATE_PROVIDER = "default"


class BootstrapError(ValueError):
    """A flag combination or file that cannot make a usable bootstrap."""


# gRPC target schemes both grpcio and grpc-js resolve; "ipv4:10.0.0.1:7000,10.0.0.2:7000"
# names several replicas, tried in turn when the one in use goes away.
TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:")


def _server_uri(value: str) -> str:
    if value.startswith(TARGET_SCHEMES) and value.partition(":")[2].strip("/"):
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BootstrapError(
            f"--server-uri {value!r}: expected HOST:PORT or a gRPC target "
            "(dns:///HOST:PORT, ipv4:ADDR:PORT,ADDR:PORT)"
        )
    return value


def _pem(flag: str, path: Path | None) -> str | None:
    if path is None:
        return None
    if not path.is_file():
        raise BootstrapError(f"{flag} {path}: no such file")
    # Absolute: clients resolve relative paths against their own working directory.
    return str(path.resolve())


def bootstrap(
    server_uri: str = DEFAULT_SERVER_URI,
    *,
    node_id: str = "",
    tenant: str = "",
    tier: str = "",
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
) -> dict[str, Any]:
    """The bootstrap document.

    Args:
        server_uri: The hub's main listener, HOST:PORT, or a gRPC target naming
            several replicas (``ipv4:10.0.0.1:7000,10.0.0.2:7000``, ``dns:///hubs:7000``).
        node_id: The client's node id, shown to operators; a unique one if empty.
        tenant: ``node.metadata.tenant_id`` (honoured by a hub without credentials).
        tier: ``node.metadata.tier``, a tier name (same condition).
        ca: PEM of the CA that signed the hub's certificate: TLS to the hub.
        cert: PEM client certificate (with ``key``): mTLS, the client's identity.
        key: PEM key of ``cert``.

    Raises:
        BootstrapError: A bad URI, tier or file, or a certificate without its key.
    """
    if tier and parse_tier(tier) is None:
        raise BootstrapError(f"--tier {tier!r}: expected one of {', '.join(t.value for t in Tier)}")
    if (cert is None) != (key is None):
        raise BootstrapError("--cert and --key go together")
    if cert is not None and ca is None:
        raise BootstrapError("--cert needs --ca (the CA that signed the hub's certificate)")
    files = {
        "ca_certificate_file": _pem("--ca", ca),
        "certificate_file": _pem("--cert", cert),
        "private_key_file": _pem("--key", key),
    }
    files = {k: v for k, v in files.items() if v is not None}
    creds: dict[str, Any] = {"type": "tls", "config": files} if files else {"type": "insecure"}
    node: dict[str, Any] = {
        "id": node_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}",
        "locality": {},
    }
    metadata = {"tenant_id": tenant, "tier": parse_tier(tier) or ""}
    metadata = {k: v for k, v in metadata.items() if v}
    if metadata:
        node["metadata"] = metadata
    doc: dict[str, Any] = {
        "xds_servers": [
            {
                "server_uri": _server_uri(server_uri),
                "channel_creds": [creds],
                "server_features": list(SERVER_FEATURES),
            }
        ],
        "node": node,
    }
    if files:
        doc["certificate_providers"] = {
            CERTIFICATE_PROVIDER: {
                "plugin_name": "file_watcher",
                "config": {**files, "refresh_interval": "600s"},
            }
        }
    return doc


def add_command(sub: Any) -> None:
    """Adds ``xds-bootstrap`` to ``central-hub``'s subcommands."""
    cmd = sub.add_parser(
        "xds-bootstrap",
        help="print a bootstrap file for proxyless gRPC clients (GRPC_XDS_BOOTSTRAP)",
        description="Prints the JSON bootstrap a proxyless gRPC client (grpcio, grpc-js with "
        "@grpc/grpc-js-xds, grpc-go, grpc-java) reads from $GRPC_XDS_BOOTSTRAP to call "
        "xds:///SERVICE with endpoints from the hub.",
    )
    cmd.add_argument(
        "--server-uri", default=DEFAULT_SERVER_URI, metavar="HOST:PORT",
        help=f"the hub's main listener (default {DEFAULT_SERVER_URI}), or a gRPC target "
        "naming several replicas: ipv4:ADDR:PORT,ADDR:PORT or dns:///NAME:PORT",
    )  # fmt: skip
    cmd.add_argument("--node-id", default="", help="the client's node id (default: unique)")
    cmd.add_argument(
        "--tenant", default="", help="node metadata tenant_id (hubs without credentials)"
    )
    cmd.add_argument(
        "--tier", default="", choices=["", *(t.value for t in Tier)],
        help="node metadata tier (hubs without credentials)",
    )  # fmt: skip
    cmd.add_argument(
        "--ca", type=Path, default=None, metavar="PEM",
        help="CA of the hub's certificate: TLS to the hub",
    )  # fmt: skip
    cmd.add_argument(
        "--cert", type=Path, default=None, metavar="PEM",
        help="client certificate (its identity on a hub with credentials)",
    )  # fmt: skip
    cmd.add_argument("--key", type=Path, default=None, metavar="PEM", help="its key")
    cmd.add_argument("--output", "-o", type=Path, default=None, help="write to a file, not stdout")


def run(args: argparse.Namespace) -> int:
    """``central-hub xds-bootstrap``: 0, or 2 with the reason on stderr."""
    try:
        doc = bootstrap(
            args.server_uri, node_id=args.node_id, tenant=args.tenant, tier=args.tier,
            ca=args.ca, cert=args.cert, key=args.key,
        )  # fmt: skip
    except BootstrapError as e:
        print(f"central-hub xds-bootstrap: {e}", file=sys.stderr)
        return 2
    text = json.dumps(doc, indent=2) + "\n"
    if args.output is not None:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0
