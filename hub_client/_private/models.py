"""Typed results. Each keeps the message it came from in ``raw`` for anything the
wrapper does not surface."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aitrading.hub.v1 import (
    balancer_pb2,
    circuit_pb2,
    cluster_pb2,
    config_pb2,
    registry_pb2,
    tenant_pb2,
    types_pb2,
)
from google.protobuf import json_format

from hub_client._private.errors import invalid_argument

V = TypeVar("V")


class Protocol(enum.StrEnum):
    """What an instance speaks (``register(protocol=...)``)."""

    HTTP = "http"
    HTTPS = "https"
    GRPC = "grpc"
    TCP = "tcp"
    WEBSOCKET = "websocket"


class ResourceTier(enum.StrEnum):
    """The resource class an instance runs on (``register(resource_tier=...)``)."""

    BASIC = "basic"
    PREMIUM = "premium"
    ENTERPRISE = "enterprise"


class QuotaResource(enum.StrEnum):
    """A tenant quota resource (``check_quota``, ``allocate``, ``release``...)."""

    API_CALLS_PER_HOUR = "api_calls_per_hour"
    WEBSOCKET_CONNECTIONS = "websocket_connections"
    CONCURRENT_REQUESTS = "concurrent_requests"
    DATA_STORAGE_MB = "data_storage_mb"


def lookup(table: dict[str, V], value: str, field: str) -> V:
    """``table[value]``, or InvalidArgument naming ``field``: a typo is refused at the
    call, before any RPC. A StrEnum member and its equal string look up alike."""
    try:
        return table[value]
    except (KeyError, TypeError):
        pass
    raise invalid_argument(field, f"unknown {field} {value!r}; one of {sorted(table)}")


def _enum_name(enum_type: Any, value: int, prefix: str, *, lower: bool = True) -> str:
    """An enum value's name without its prefix ("http" for PROTOCOL_HTTP). A value
    this client does not know (a newer hub's) reads ``unknown_<n>`` instead of
    failing: a client keeps working with every hub of its major version."""
    try:
        name = str(enum_type.Name(value)).removeprefix(prefix)
    except ValueError:
        name = f"UNKNOWN_{value}"
    return name.lower() if lower else name


@dataclass(frozen=True)
class Instance:
    service: str
    instance_id: str
    host: str
    port: int
    protocol: str
    version: str
    metadata: dict[str, str]
    tenant_capable: bool
    subscription_requirements: tuple[str, ...]
    resource_tier: str
    ttl_seconds: int
    lease_id: int
    weight: int
    revision: int
    raw: types_pb2.Instance = field(repr=False, compare=False)
    # What the hub's probes last found; None when the hub sent no health.
    health: Health | None = field(default=None, compare=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_pb(cls, m: types_pb2.Instance) -> Instance:
        return cls(
            service=m.service,
            instance_id=m.instance_id,
            host=m.host,
            port=m.port,
            protocol=_enum_name(types_pb2.Protocol, m.protocol, "PROTOCOL_"),
            version=m.version,
            metadata=dict(m.metadata),
            tenant_capable=m.tenant_capable,
            subscription_requirements=tuple(
                _enum_name(types_pb2.SubscriptionTier, t, "SUBSCRIPTION_TIER_")
                for t in m.subscription_requirements
            ),
            resource_tier=_enum_name(types_pb2.ResourceTier, m.resource_tier, "RESOURCE_TIER_"),
            ttl_seconds=m.ttl_seconds,
            lease_id=m.lease_id,
            weight=m.weight,
            revision=m.mod_revision,
            raw=m,
            health=Health.from_pb(m.health) if m.HasField("health") else None,
        )


@dataclass(frozen=True)
class Service:
    name: str
    instances: list[Instance]
    # The hub revision the answer reflects.
    revision: int

    @classmethod
    def from_pb(cls, m: types_pb2.Service, revision: int) -> Service:
        return cls(m.name, [Instance.from_pb(i) for i in m.instances], revision)


class EventType(enum.Enum):
    """What a registry watch event says happened to an instance."""

    ADDED = registry_pb2.WATCH_EVENT_TYPE_ADDED
    UPDATED = registry_pb2.WATCH_EVENT_TYPE_UPDATED
    REMOVED = registry_pb2.WATCH_EVENT_TYPE_REMOVED


@dataclass(frozen=True)
class WatchEvent:
    """A change seen by ``HubClient.watch``.

    Attributes:
        initial: True for the ADDED events that replay the snapshot a watch (or a
            resync after compaction) starts with.
    """

    type: EventType
    instance: Instance
    revision: int
    initial: bool = False


@dataclass(frozen=True)
class Endpoint:
    """What ``HubClient.pick`` chose."""

    host: str
    port: int
    instance_id: str
    load: float
    instance: Instance

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_pb(cls, m: balancer_pb2.PickEndpointResponse) -> Endpoint:
        return cls(m.host, m.port, m.instance_id, m.load_factor, Instance.from_pb(m.instance))


@dataclass(frozen=True)
class Health:
    """An instance's health as the hub's probes see it."""

    service: str
    instance_id: str
    status: str  # "healthy", "degraded", "unhealthy", "starting" (not proven yet) or "unspecified"
    latency_ms: float
    last_check: float  # seconds since the epoch; 0 if never probed
    check: str  # "http", "grpc", "tcp" or "lease"
    message: str
    raw: types_pb2.InstanceHealth = field(repr=False, compare=False)
    consecutive_failures: int = 0
    consecutive_successes: int = 0

    @classmethod
    def from_pb(cls, m: types_pb2.InstanceHealth) -> Health:
        return cls(
            service=m.service,
            instance_id=m.instance_id,
            status=_enum_name(types_pb2.HealthStatus, m.status, "HEALTH_STATUS_"),
            latency_ms=m.latency_ms,
            last_check=m.last_check.ToNanoseconds() / 1e9,
            check=m.check,
            message=m.message,
            raw=m,
            consecutive_failures=m.consecutive_failures,
            consecutive_successes=m.consecutive_successes,
        )


@dataclass(frozen=True)
class CircuitInfo:
    """A fleet-wide circuit."""

    service: str
    instance_id: str
    state: str  # "closed", "open", "half_open", "forced_open", "forced_closed"
    failure_rate: float
    slow_call_rate: float
    calls: int
    reason: str
    raw: circuit_pb2.Circuit = field(repr=False, compare=False)

    @classmethod
    def from_pb(cls, m: circuit_pb2.Circuit) -> CircuitInfo:
        return cls(
            service=m.service,
            instance_id=m.instance_id,
            state=_enum_name(circuit_pb2.CircuitState, m.state, "CIRCUIT_STATE_"),
            failure_rate=m.failure_rate,
            slow_call_rate=m.slow_call_rate,
            calls=m.calls,
            reason=m.reason,
            raw=m,
        )


def _tier_name(value: int) -> str:
    return _enum_name(types_pb2.SubscriptionTier, value, "SUBSCRIPTION_TIER_")


def _seconds(ts: Any) -> float:
    return float(ts.ToNanoseconds()) / 1e9


def layer_name(ref: config_pb2.ConfigLayerRef) -> str:
    """``global``, ``tier/<tier>`` or ``tenant/<id>``."""
    if ref.kind == config_pb2.CONFIG_LAYER_KIND_TIER_DEFAULTS:
        return f"tier/{_tier_name(ref.tier)}"
    if ref.kind == config_pb2.CONFIG_LAYER_KIND_TENANT:
        return f"tenant/{ref.tenant_id}"
    return "global"


_SECTIONS = ("rate_limits", "features", "resource_limits")


def _values_dict(m: config_pb2.ConfigValues) -> dict[str, Any]:
    """A layer's values as the nested dict ``set_config_layer`` takes (only what
    the layer sets; numbers stay numbers)."""
    out: dict[str, Any] = {}
    for name in _SECTIONS:
        if not m.HasField(name):
            continue
        section = getattr(m, name)
        found = {f.name: value for f, value in section.ListFields() if f.name != "flags"}
        if name == "features" and section.flags:
            found["flags"] = dict(section.flags)
        if found:
            out[name] = found
    if m.HasField("settings"):
        out["settings"] = json_format.MessageToDict(m.settings)
    return out


@dataclass(frozen=True)
class TenantConfig:
    """A tenant's merged configuration, as ``HubClient.config`` returns it.

    Attributes:
        tenant_id: the tenant ("" for the view without tenant overrides).
        tier: the tier whose defaults apply ("free", "pro", "enterprise").
        tier_source: "tenant_record", "request_header" or "default".
        rate_limits: ``api_calls_per_hour`` and ``websocket_connections``.
        features: the typed features and every other flag, name -> on.
        resource_limits: ``max_concurrent_requests`` and ``max_data_storage_mb``.
        settings: the free-form settings.
        tier_defaults_version, global_version, tenant_version: the version of
            each layer used (0: none written; for tier defaults, the built-in ones).
        revision: the newest hub revision among what the config was built from.
    """

    tenant_id: str
    tier: str
    tier_source: str
    rate_limits: dict[str, int]
    features: dict[str, bool]
    resource_limits: dict[str, int]
    settings: dict[str, Any]
    tier_defaults_version: int
    global_version: int
    tenant_version: int
    revision: int = field(compare=False)
    raw: config_pb2.TenantConfig = field(repr=False, compare=False)

    def enabled(self, feature: str) -> bool:
        """Whether a feature (typed or flag) is on; unknown ones are off."""
        return self.features.get(feature, False)

    @classmethod
    def from_pb(cls, m: config_pb2.TenantConfig) -> TenantConfig:
        v = m.values
        features = dict(v.features.flags)
        features.update(
            basic_analytics=v.features.basic_analytics,
            advanced_ai=v.features.advanced_ai,
            custom_models=v.features.custom_models,
        )
        return cls(
            tenant_id=m.tenant_id,
            tier=_tier_name(m.tier),
            tier_source=_enum_name(config_pb2.TierSource, m.tier_source, "TIER_SOURCE_"),
            rate_limits={
                "api_calls_per_hour": v.rate_limits.api_calls_per_hour,
                "websocket_connections": v.rate_limits.websocket_connections,
            },
            features=features,
            resource_limits={
                "max_concurrent_requests": v.resource_limits.max_concurrent_requests,
                "max_data_storage_mb": v.resource_limits.max_data_storage_mb,
            },
            settings=json_format.MessageToDict(v.settings),
            tier_defaults_version=m.tier_defaults_version,
            global_version=m.global_version,
            tenant_version=m.tenant_version,
            revision=m.revision,
            raw=m,
        )


@dataclass(frozen=True)
class ConfigLayer:
    """One version of a config layer.

    Attributes:
        layer: ``global``, ``tier/<tier>`` or ``tenant/<id>``.
        version: 1 for the first write; 0 for a layer never written.
        values: what the layer sets, as the nested dict ``set_config_layer`` takes.
        restored_version: for a rollback, the version whose values it restored.
    """

    layer: str
    version: int
    values: dict[str, Any]
    updated_at: float
    updated_by: str
    restored_version: int
    comment: str
    revision: int
    raw: config_pb2.ConfigLayer = field(repr=False, compare=False)

    @classmethod
    def from_pb(cls, m: config_pb2.ConfigLayer) -> ConfigLayer:
        return cls(
            layer=layer_name(m.layer),
            version=m.version,
            values=_values_dict(m.values),
            updated_at=_seconds(m.updated_at),
            updated_by=m.updated_by,
            restored_version=m.restored_version,
            comment=m.comment,
            revision=m.revision,
            raw=m,
        )


@dataclass(frozen=True)
class Tenant:
    """A tenant and its tier."""

    tenant_id: str
    display_name: str
    tier: str
    created_at: float
    updated_at: float
    revision: int
    raw: tenant_pb2.Tenant = field(repr=False, compare=False)

    @classmethod
    def from_pb(cls, m: tenant_pb2.Tenant) -> Tenant:
        return cls(
            tenant_id=m.tenant_id,
            display_name=m.display_name,
            tier=_tier_name(m.tier),
            created_at=_seconds(m.created_at),
            updated_at=_seconds(m.updated_at),
            revision=m.revision,
            raw=m,
        )


@dataclass(frozen=True)
class ResourceUsage:
    """A tenant's use of one quota resource.

    Attributes:
        resource: "api_calls_per_hour", "websocket_connections",
            "concurrent_requests" or "data_storage_mb".
        used: in use now (for api_calls_per_hour: in the current hour).
        limit: from the tenant's merged config.
        window_start, window_end: the current hour for api_calls_per_hour, else 0.
    """

    resource: str
    used: int
    limit: int
    window_start: float
    window_end: float
    raw: tenant_pb2.ResourceUsage = field(repr=False, compare=False)

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    @classmethod
    def from_pb(cls, m: tenant_pb2.ResourceUsage) -> ResourceUsage:
        return cls(
            resource=_enum_name(tenant_pb2.QuotaResource, m.resource, "QUOTA_RESOURCE_"),
            used=m.used,
            limit=m.limit,
            window_start=_seconds(m.window_start),
            window_end=_seconds(m.window_end),
            raw=m,
        )


@dataclass(frozen=True)
class Replica:
    """One running hub process.

    Attributes:
        started_at: seconds since the epoch.
        version: its build ("0.1.0 (commit abc1234)"); "" from a replica older
            than the field.
    """

    hub_id: str
    address: str
    started_at: float
    leader: bool
    version: str
    raw: cluster_pb2.Replica = field(repr=False, compare=False)

    @classmethod
    def from_pb(cls, m: cluster_pb2.Replica) -> Replica:
        return cls(m.hub_id, m.address, _seconds(m.started_at), m.leader, m.version, m)


@dataclass(frozen=True)
class ClusterStatus:
    """The hub replicas, as ``HubClient.cluster_status`` returns them.

    Attributes:
        hub_id: the replica that answered.
        leader_id: the elected leader; "" while there is none.
        replicas: every live replica, by hub id.
        version: the answering replica's build.
        revision: the hub revision the answer reflects.
    """

    hub_id: str
    leader_id: str
    replicas: list[Replica]
    version: str
    revision: int
    raw: cluster_pb2.GetClusterStatusResponse = field(repr=False, compare=False)

    @classmethod
    def from_pb(cls, m: cluster_pb2.GetClusterStatusResponse) -> ClusterStatus:
        replicas = sorted((Replica.from_pb(r) for r in m.replicas), key=lambda r: r.hub_id)
        return cls(m.hub_id, m.leader_id, replicas, m.version, m.header.revision, m)
