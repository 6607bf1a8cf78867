"""The hub's keyspace in etcd. Every key the hub writes is built here.

Servicers validate names first (DNS labels, safe ids) and report the request's
own field; the builders check every name again (validation.require_key_name) as
the last line of defence, so a key can never escape its prefix: a bad name is a
domain InvalidArgument, never a key. Builders are cached (a hit costs less than
building the key), which also makes the check free on hot read paths.
"""

from __future__ import annotations

import functools

from hub_server.kernel.errors import InvalidArgument
from hub_server.kernel.validation import require_key_name as _name

ROOT = b"/hub/v1/"

REGISTRY = ROOT + b"registry/"

_cached = functools.lru_cache(maxsize=32_768)


@_cached
def _pair(prefix: bytes, service: str, instance_id: str) -> bytes:
    """``<prefix><service>/<instance id>``: the layout of every per-instance key."""
    return prefix + f"{_name('service', service)}/{_name('instance_id', instance_id)}".encode()


def instance_key(service: str, instance_id: str) -> bytes:
    return _pair(REGISTRY, service, instance_id)


@_cached
def service_prefix(service: str) -> bytes:
    return REGISTRY + f"{_name('service', service)}/".encode()


def parse_instance_key(key: bytes) -> tuple[str, str]:
    """(service, instance id) of a registry key."""
    return parse_pair(REGISTRY, key)


ELECTION = ROOT + b"election/"
REPLICAS = ROOT + b"replicas/"
HEALTH = ROOT + b"health/"
LOAD = ROOT + b"load/"
CIRCUITS = ROOT + b"circuits/"
CIRCUIT_SETTINGS = ROOT + b"circuit-settings/"
ROUTING_POLICY = ROOT + b"routing-policy/"
AUDIT = ROOT + b"audit/"
ERROR_PATTERNS = ROOT + b"error-patterns/"
ALERTS_ACTIVE = ROOT + b"alerts/active/"
ALERTS_HISTORY = ROOT + b"alerts/history/"


def replica_key(hub_id: str) -> bytes:
    return REPLICAS + _name("hub_id", hub_id).encode()


def election_key(name: str) -> bytes:
    return ELECTION + _name("election", name).encode()


def health_key(service: str, instance_id: str) -> bytes:
    return _pair(HEALTH, service, instance_id)


def load_key(service: str, instance_id: str) -> bytes:
    return _pair(LOAD, service, instance_id)


# A service's own circuit has this in place of an instance id (never a valid id).
SERVICE_LEVEL = "_"


def circuit_key(service: str, instance_id: str = "") -> bytes:
    """An instance's circuit, or the service's with no instance id."""
    if not instance_id:
        return _service_circuit_key(service)
    return _pair(CIRCUITS, service, instance_id)


@_cached
def _service_circuit_key(service: str) -> bytes:
    return CIRCUITS + f"{_name('service', service)}/{SERVICE_LEVEL}".encode()


def circuit_settings_key(service: str) -> bytes:
    return CIRCUIT_SETTINGS + _name("service", service).encode()


def routing_policy_key(service: str) -> bytes:
    return ROUTING_POLICY + _name("service", service).encode()


def error_pattern_prefix(service: str) -> bytes:
    return ERROR_PATTERNS + f"{_name('service', service)}/".encode()


def error_pattern_key(service: str, tenant_id: str, fingerprint: str) -> bytes:
    """One pattern's total; "_" stands for no tenant (never a valid tenant id)."""
    tenant = _name("tenant_id", tenant_id) if tenant_id else "_"
    return error_pattern_prefix(service) + f"{tenant}/{_name('fingerprint', fingerprint)}".encode()


def alert_key(alert_id: str) -> bytes:
    return ALERTS_ACTIVE + _name("alert_id", alert_id).encode()


def alert_history_key(at_ns: int, alert_id: str) -> bytes:
    return ALERTS_HISTORY + f"{at_ns:020d}-{_name('alert_id', alert_id)}".encode()


def parse_pair(prefix: bytes, key: bytes) -> tuple[str, str]:
    """(service, instance id) of a key under ``prefix`` laid out like the registry's."""
    service, _, instance_id = key[len(prefix) :].decode().partition("/")
    return service, instance_id


# Tenancy: config layers (mirrored), their history (read on demand), tenant
# records (mirrored), quota usage (read and written by compare-and-set) and the
# records of allocations and releases made with a request id (under a lease).
# "config/" never prefixes "config-history/", so the config mirror sees layers only.
CONFIG = ROOT + b"config/"
CONFIG_HISTORY = ROOT + b"config-history/"
TENANTS = ROOT + b"tenants/"
USAGE = ROOT + b"usage/"
QUOTA_REQUESTS = ROOT + b"quota-requests/"


def _layer(layer: str) -> str:
    """``layer`` if it is ``global``, ``tier/<tier>`` or ``tenant/<tenant id>``."""
    kind, slash, name = layer.partition("/")
    if (kind, slash, name) == ("global", "", ""):
        return layer
    if kind not in ("tier", "tenant") or not slash:
        raise InvalidArgument.single("layer", "must be global, tier/<tier> or tenant/<tenant id>")
    _name("tenant_id" if kind == "tenant" else "tier", name)
    return layer


def config_layer_key(layer: str) -> bytes:
    """A layer's current version; ``layer`` is ``tier/<tier>``, ``global`` or
    ``tenant/<tenant id>``."""
    return CONFIG + _layer(layer).encode()


def parse_config_layer_key(key: bytes) -> str:
    return key[len(CONFIG) :].decode()


def config_history_prefix(layer: str) -> bytes:
    return CONFIG_HISTORY + f"{_layer(layer)}/".encode()


def config_history_key(layer: str, version: int) -> bytes:
    # Zero-padded so that keys sort by version.
    if version < 0:
        raise InvalidArgument.single("version", "must not be negative")
    return config_history_prefix(layer) + f"{version:012d}".encode()


def tenant_key(tenant_id: str) -> bytes:
    return TENANTS + _name("tenant_id", tenant_id).encode()


def parse_tenant_key(key: bytes) -> str:
    return key[len(TENANTS) :].decode()


def usage_prefix(tenant_id: str) -> bytes:
    return USAGE + f"{_name('tenant_id', tenant_id)}/".encode()


def usage_key(tenant_id: str, resource: str, window_start: int | None = None) -> bytes:
    """A counting resource's usage, or a rate resource's usage in the window that
    starts at ``window_start`` (seconds since the epoch)."""
    suffix = "" if window_start is None else f"/{int(window_start)}"
    return usage_prefix(tenant_id) + f"{_name('resource', resource)}{suffix}".encode()


def quota_request_key(tenant_id: str, request_id: str) -> bytes:
    """The record of a tenant's allocation or release made with ``request_id``."""
    return QUOTA_REQUESTS + (
        f"{_name('tenant_id', tenant_id)}/{_name('request_id', request_id)}".encode()
    )


# Deployments: one record per deployment (changed by compare-and-set), the
# active deployment of each service, and per-instance drain marks and
# directives (both under the instance's lease, so they go with it).
DEPLOYMENTS = ROOT + b"deployments/"
DEPLOYMENT_ACTIVE = ROOT + b"deployment-active/"
DRAIN = ROOT + b"drain/"
DIRECTIVES = ROOT + b"directives/"


@_cached
def deployment_key(deployment_id: str) -> bytes:
    return DEPLOYMENTS + _name("deployment_id", deployment_id).encode()


def deployment_active_key(service: str) -> bytes:
    return DEPLOYMENT_ACTIVE + _name("service", service).encode()


def drain_key(service: str, instance_id: str) -> bytes:
    return _pair(DRAIN, service, instance_id)


def directive_key(service: str, instance_id: str) -> bytes:
    return _pair(DIRECTIVES, service, instance_id)


# Webhooks: subscriptions (mirrored), their secrets (apart: never exported in
# backups), the pending deliveries of each subscription in order (its queue),
# the finished ones (kept for a bounded time) and the leader's enqueue cursor.
WEBHOOKS = ROOT + b"webhooks/"
WEBHOOK_SECRETS = ROOT + b"webhook-secrets/"
WEBHOOK_QUEUE = ROOT + b"webhook-queue/"
WEBHOOK_LOG = ROOT + b"webhook-log/"
WEBHOOK_CURSOR = ROOT + b"webhook-cursor"


def webhook_key(subscription_id: str) -> bytes:
    return WEBHOOKS + _name("id", subscription_id).encode()


def webhook_secret_key(subscription_id: str) -> bytes:
    return WEBHOOK_SECRETS + _name("id", subscription_id).encode()


def webhook_queue_prefix(subscription_id: str) -> bytes:
    return WEBHOOK_QUEUE + f"{_name('id', subscription_id)}/".encode()


def webhook_log_prefix(subscription_id: str) -> bytes:
    return WEBHOOK_LOG + f"{_name('id', subscription_id)}/".encode()


# Backups export everything under ROOT; a key's kind (for restore reports) is
# its first path segment: "registry", "config", "config-history", "alerts", ...
def kind_of(key: bytes) -> str:
    rest = key[len(ROOT) :] if key.startswith(ROOT) else key
    return rest.split(b"/", 1)[0].decode(errors="replace") or "(root)"
