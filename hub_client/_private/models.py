"""Typed results. Each keeps the message it came from in ``raw`` for anything the
wrapper does not surface."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from aitrading.hub.v1 import balancer_pb2, circuit_pb2, registry_pb2, types_pb2


def _enum_name(enum_type: object, value: int, prefix: str) -> str:
    return enum_type.Name(value).removeprefix(prefix).lower()  # type: ignore[attr-defined]


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
    status: str  # "healthy", "degraded", "unhealthy" or "unspecified" (not probed yet)
    latency_ms: float
    last_check: float  # seconds since the epoch; 0 if never probed
    check: str  # "http", "grpc", "tcp" or "lease"
    message: str
    raw: types_pb2.InstanceHealth = field(repr=False, compare=False)

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
