"""Several hubs as one gRPC target.

A client given several hub replicas (``"h1:7000,h2:7000"``, or a list) should
fail over between them like an etcd client over its ``--endpoints``. gRPC has
no target naming several host names, but its ``ipv4:``/``ipv6:`` targets name
several addresses, and a channel on one moves to the next address when the one
it uses fails. So the replicas' names are resolved here, once, when the client
is created; a target with a scheme of its own (``dns:``, ``ipv4:``, ...) is
passed on untouched.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence

# The schemes grpc's resolvers understand; a target naming one is gRPC's already.
_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")

Resolve = Callable[[str, int], list[str]]


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ValueError(f"hub address {host!r} does not resolve: {e.strerror}") from None
    return [str(info[4][0]) for info in infos]


def _split(entry: str) -> tuple[str, int]:
    host, sep, port = entry.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"hub address {entry!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def channel_target(target: str | Sequence[str], resolve: Resolve = _resolve) -> str:
    """The gRPC target for one hub or several (``host:port`` each, a list or
    separated by commas)."""
    if isinstance(target, str):
        if "," not in target or target.startswith(_SCHEMES):
            return target
        target = target.split(",")
    entries = [e.strip() for e in target if e.strip()]
    if not entries:
        raise ValueError("no hub address given")
    if len(entries) == 1:
        return entries[0]
    v4: list[str] = []
    v6: list[str] = []
    every_v4 = every_v6 = True
    for entry in entries:
        host, port = _split(entry)
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            addresses = resolve(host, port)
        ours4 = [f"{a}:{port}" for a in addresses if ipaddress.ip_address(a).version == 4]
        ours6 = [f"[{a}]:{port}" for a in addresses if ipaddress.ip_address(a).version == 6]
        every_v4 = every_v4 and bool(ours4)
        every_v6 = every_v6 and bool(ours6)
        v4 += [a for a in ours4 if a not in v4]
        v6 += [a for a in ours6 if a not in v6]
    # One target holds one address family: IPv4 when every hub has such an address.
    if every_v4:
        return "ipv4:" + ",".join(v4)
    if every_v6:
        return "ipv6:" + ",".join(v6)
    raise ValueError(f"hub addresses {entries} mix IPv4-only and IPv6-only hubs")
