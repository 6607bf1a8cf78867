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
    return parse_pair(REGISTRY, key)


ELECTION = ROOT + b"election/"
REPLICAS = ROOT + b"replicas/"
HEALTH = ROOT + b"health/"
LOAD = ROOT + b"load/"
CIRCUITS = ROOT + b"circuits/"
CIRCUIT_SETTINGS = ROOT + b"circuit-settings/"
AUDIT = ROOT + b"audit/"
ALERTS_ACTIVE = ROOT + b"alerts/active/"
ALERTS_HISTORY = ROOT + b"alerts/history/"


def replica_key(hub_id: str) -> bytes:
    return REPLICAS + hub_id.encode()


def health_key(service: str, instance_id: str) -> bytes:
    return HEALTH + f"{service}/{instance_id}".encode()


def load_key(service: str, instance_id: str) -> bytes:
    return LOAD + f"{service}/{instance_id}".encode()


def parse_pair(prefix: bytes, key: bytes) -> tuple[str, str]:
    """(service, instance id) of a key under ``prefix`` laid out like the registry's."""
    service, _, instance_id = key[len(prefix) :].decode().partition("/")
    return service, instance_id
