"""Listen addresses."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from urllib.parse import urlsplit


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP, without brackets) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` (port 0 to 65535); ValueError otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or int(port) > 65535:
        raise ValueError("expected HOST:PORT")
    return host.strip("[]"), int(port)


class HostCheck:
    """Which ``Host`` headers an HTTP listener answers: IP addresses and this
    machine's own names. A browser page from another site that resolves its own
    name to this address (DNS rebinding) sends that name, and is refused."""

    def __init__(self, listen_host: str) -> None:
        self._names = {"localhost", listen_host.lower()}
        with contextlib.suppress(OSError):
            self._names |= {socket.gethostname().lower(), socket.getfqdn().lower()}

    def allows(self, host_header: str) -> bool:
        host = urlsplit(f"//{host_header}").hostname or ""
        if host in self._names:
            return True
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            return False
