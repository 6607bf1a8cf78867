"""Which URLs a subscription may target.

Only http and https. Unless the operator allows private targets
(--webhook-allow-private), a host that is or resolves to a loopback,
link-local (which holds the 169.254.169.254 metadata service), unspecified,
multicast or known cloud-metadata address is refused, at creation and again
before each delivery (a name may resolve elsewhere later). With allowed hosts
(--webhook-allowed-hosts), the host must be one of them (``*.example.com``
matches its subdomains).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from hub_server.kernel.errors import InvalidArgument

METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
MAX_URL = 2048


def refused_address(address: str) -> str:
    """Why an IP address is refused as a target ("" if it is not)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA:
        return f"{ip} is a cloud metadata address"
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if ip.is_unspecified or ip.is_multicast:
        return f"{ip} is not a unicast address"
    return ""


@dataclass(frozen=True)
class TargetPolicy:
    allow_private: bool = False
    allowed_hosts: list[str] = field(default_factory=list)

    def check_url(self, url: str, field_path: str = "url") -> str:
        """The host of an acceptable URL; InvalidArgument naming the field if not."""
        if not url:
            raise InvalidArgument.single(field_path, "is required")
        if len(url) > MAX_URL:
            raise InvalidArgument.single(field_path, f"is longer than {MAX_URL} characters")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  (raises on a bad port)
        except ValueError as e:
            raise InvalidArgument.single(field_path, f"is not a URL: {e}") from None
        if parts.scheme not in ("http", "https"):
            raise InvalidArgument.single(field_path, "must be an http or https URL")
        host = (parts.hostname or "").lower()
        if not host:
            raise InvalidArgument.single(field_path, "has no host")
        if parts.username or parts.password:
            raise InvalidArgument.single(field_path, "must not carry credentials")
        if self.allowed_hosts and not any(_host_matches(host, p) for p in self.allowed_hosts):
            raise InvalidArgument.single(field_path, f"host {host} is not in the allowed hosts")
        if not self.allow_private and host in ("localhost", "localhost.localdomain"):
            raise InvalidArgument.single(field_path, f"{host} is a loopback address")
        if not self.allow_private and _is_ip(host):
            why = refused_address(host)
            if why:
                raise InvalidArgument.single(field_path, why)
        return host

    async def check(self, url: str, field_path: str = "url") -> None:
        """The whole check of a target: its URL, then where its host resolves."""
        host = self.check_url(url, field_path)
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        await self.check_resolved(host, port, field_path)

    async def check_resolved(self, host: str, port: int, field_path: str = "url") -> None:
        """Refuses a host that resolves to a refused address (unless allowed).
        A name that does not resolve is accepted: it may resolve later, and each
        delivery checks again."""
        if self.allow_private or _is_ip(host):
            return
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), 5)
        except (OSError, TimeoutError):
            return
        for info in infos:
            why = refused_address(str(info[4][0]))
            if why:
                raise InvalidArgument.single(field_path, f"{host} resolves to {why}")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _host_matches(host: str, pattern: str) -> bool:
    pattern = pattern.lower().strip()
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern
