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
ERROR_PATTERNS = ROOT + b"error-patterns/"
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


# Tenancy: config layers (mirrored), their history (read on demand), tenant
# records (mirrored) and quota usage (read and written by compare-and-set).
# "config/" never prefixes "config-history/", so the config mirror sees layers only.
CONFIG = ROOT + b"config/"
CONFIG_HISTORY = ROOT + b"config-history/"
TENANTS = ROOT + b"tenants/"
USAGE = ROOT + b"usage/"


def config_layer_key(layer: str) -> bytes:
    """A layer's current version; ``layer`` is ``tier/<tier>``, ``global`` or
    ``tenant/<tenant id>``."""
    return CONFIG + layer.encode()


def parse_config_layer_key(key: bytes) -> str:
    return key[len(CONFIG) :].decode()


def config_history_prefix(layer: str) -> bytes:
    return CONFIG_HISTORY + f"{layer}/".encode()


def config_history_key(layer: str, version: int) -> bytes:
    # Zero-padded so that keys sort by version.
    return config_history_prefix(layer) + f"{version:012d}".encode()


def tenant_key(tenant_id: str) -> bytes:
    return TENANTS + tenant_id.encode()


def parse_tenant_key(key: bytes) -> str:
    return key[len(TENANTS) :].decode()


def usage_prefix(tenant_id: str) -> bytes:
    return USAGE + f"{tenant_id}/".encode()


def usage_key(tenant_id: str, resource: str, window_start: int | None = None) -> bytes:
    """A counting resource's usage, or a rate resource's usage in the window that
    starts at ``window_start`` (seconds since the epoch)."""
    suffix = "" if window_start is None else f"/{window_start}"
    return usage_prefix(tenant_id) + f"{resource}{suffix}".encode()


# Deployments: one record per deployment (changed by compare-and-set), the
# active deployment of each service, and per-instance drain marks and
# directives (both under the instance's lease, so they go with it).
DEPLOYMENTS = ROOT + b"deployments/"
DEPLOYMENT_ACTIVE = ROOT + b"deployment-active/"
DRAIN = ROOT + b"drain/"
DIRECTIVES = ROOT + b"directives/"


def deployment_key(deployment_id: str) -> bytes:
    return DEPLOYMENTS + deployment_id.encode()


def deployment_active_key(service: str) -> bytes:
    return DEPLOYMENT_ACTIVE + service.encode()


def drain_key(service: str, instance_id: str) -> bytes:
    return DRAIN + f"{service}/{instance_id}".encode()


def directive_key(service: str, instance_id: str) -> bytes:
    return DIRECTIVES + f"{service}/{instance_id}".encode()


# Backups export everything under ROOT; a key's kind (for restore reports) is
# its first path segment: "registry", "config", "config-history", "alerts", ...
def kind_of(key: bytes) -> str:
    rest = key[len(ROOT) :] if key.startswith(ROOT) else key
    return rest.split(b"/", 1)[0].decode(errors="replace") or "(root)"
