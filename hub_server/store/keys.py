"""The hub's keyspace in etcd. Every key the hub writes is built here.

Names are validated before they get here (DNS labels, safe ids), so a key can
never escape its prefix.
"""

from __future__ import annotations

ROOT = b"/hub/v1/"

REGISTRY = ROOT + b"registry/"


def instance_key(service: str, instance_id: str) -> bytes:
    return REGISTRY + f"{service}/{instance_id}".encode()


def service_prefix(service: str) -> bytes:
    return REGISTRY + f"{service}/".encode()


def is_instance_key(key: bytes) -> bool:
    """False for the watch's fence keys (names starting with '_' are never valid)."""
    return key.startswith(REGISTRY) and not key.startswith(REGISTRY + b"_")


def parse_instance_key(key: bytes) -> tuple[str, str]:
    """(service, instance id) of a registry key."""
    service, _, instance_id = key[len(REGISTRY) :].decode().partition("/")
    return service, instance_id
