"""Typed results. Each keeps the message it came from in ``raw`` for anything the
wrapper does not surface."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from aitrading.hub.v1 import registry_pb2, types_pb2


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
