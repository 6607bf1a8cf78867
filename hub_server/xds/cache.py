"""The envoy resources of every service as each tier sees them, serialized once
and shared by every ADS stream of that tier; dropped per service when the
projection says the service changed, per tier catalogue when the set of
services may have changed.

Streams ask for what their subscription covers (``for_subscription``): the
resources of the services the tier may see, by resource name; for an endpoint
name the tier may not see (a service deleted, a tier dropped, requirements
raised), an empty ClusterLoadAssignment. Clients ignore resource deletion (the
bootstrap asks them to), so an empty assignment is how access is revoked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf.message import Message

from hub_server.balancing.policy import RoutingPolicy
from hub_server.balancing.projection import ServiceEndpoints
from hub_server.xds.protocol import CLUSTER, ENDPOINT, LISTENER, ROUTE, Subscription
from hub_server.xds.resources import ServiceResources, service_resources

Tier = str | None
# type_url -> (resource name, serialized resource)
Built = dict[str, tuple[str, bytes]]


class Projection(Protocol):
    """What the cache reads of hub_server.balancing.projection.EndpointProjection."""

    @property
    def revision(self) -> int: ...
    async def ready(self) -> None: ...
    def services(self, tier: str | None) -> list[str]: ...
    def project(self, service: str, tier: str | None) -> ServiceEndpoints: ...
    def subscribe(self, callback: Callable[[str | None], None]) -> Callable[[], None]: ...


def _serialized(message: Message) -> bytes:
    # Deterministic: equal content must give equal bytes (that is what "changed" means).
    return message.SerializeToString(deterministic=True)


def _name(message: Message) -> str:
    if isinstance(message, endpoint_pb2.ClusterLoadAssignment):
        return message.cluster_name
    return str(message.name)  # type: ignore[attr-defined]


def _by_type(resources: ServiceResources) -> Built:
    return {
        type_url: (_name(message), _serialized(message))
        for type_url, message in (
            (LISTENER, resources.listener),
            (ROUTE, resources.route_configuration),
            (CLUSTER, resources.cluster),
            (ENDPOINT, resources.cluster_load_assignment),
        )
    }


class ResourceCache:
    """Built resources per (service, tier), shared by the streams of a replica."""

    def __init__(self, projection: Projection, policy_of: Callable[[str], RoutingPolicy]) -> None:
        self.projection = projection
        self._policy_of = policy_of
        self._built: dict[str, dict[Tier, Built]] = {}
        self._catalogue: dict[Tier, frozenset[str]] = {}
        self._empty: dict[str, bytes] = {}  # endpoint name -> an empty assignment
        projection.subscribe(self._changed)

    def subscribe(self, callback: Callable[[str | None], None]) -> Callable[[], None]:
        """``callback(service)`` after a service's resources were dropped, and
        ``callback(None)`` after the catalogue was; returns the unsubscriber.
        The projection's own subscription: the projection calls its subscribers
        in order, and the cache subscribed first (when it was built)."""
        return self.projection.subscribe(callback)

    def _changed(self, service: str | None) -> None:
        if service is None:
            self._catalogue.clear()
        else:
            self._built.pop(service, None)

    @property
    def revision(self) -> int:
        return self.projection.revision

    async def ready(self) -> None:
        await self.projection.ready()

    # -- reads (synchronous: one consistent view per answer) -------------------

    def catalogue(self, tier: Tier) -> frozenset[str]:
        found = self._catalogue.get(tier)
        if found is None:
            found = self._catalogue[tier] = frozenset(self.projection.services(tier))
        return found

    def built(self, service: str, tier: Tier) -> Built:
        per_tier = self._built.setdefault(service, {})
        found = per_tier.get(tier)
        if found is None:
            resources = service_resources(
                self.projection.project(service, tier), self._policy_of(service)
            )
            found = per_tier[tier] = _by_type(resources)
        return found

    def service_of(self, name: str, tier: Tier) -> str | None:
        """The visible service a resource name stands for: resources.py names
        all four resources of a service as the service."""
        return name if name in self.catalogue(tier) else None

    def for_subscription(
        self, type_url: str, subscription: Subscription, tier: Tier
    ) -> tuple[Mapping[str, bytes], set[str]]:
        """The resources a subscription covers (name -> serialized resource), and
        the services they come from."""
        found: dict[str, bytes] = {}
        services: set[str] = set()
        if subscription.wildcard:
            for service in self.catalogue(tier):
                name, value = self.built(service, tier)[type_url]
                found[name] = value
                services.add(service)
        for name in subscription.names:
            if name in found:
                continue
            owner = self.service_of(name, tier)
            if owner is not None:
                built_name, value = self.built(owner, tier)[type_url]
                if built_name == name:
                    found[name] = value
                    services.add(owner)
                    continue
            if type_url == ENDPOINT:
                found[name] = self._empty_assignment(name)
        return found, services

    def _empty_assignment(self, name: str) -> bytes:
        value = self._empty.get(name)
        if value is None:
            if len(self._empty) > 10_000:  # names come from clients: keep it bounded
                self._empty.clear()
            value = self._empty[name] = _serialized(
                endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
            )
        return value
