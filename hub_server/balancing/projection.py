"""The usable endpoints of each service, as one tier sees them: the one place that
says which instances a caller may be sent to.

PickEndpoint chooses among them (the Picker reads :meth:`EndpointProjection.candidates`
and hub_client's :func:`~hub_client.eligible`, which takes the best-ranked members of
:func:`~hub_client.usable`), the xDS control plane serves them as EDS endpoints
(hub_server/xds/resources.py) and WatchEndpoints streams them. The rules are
hub_client's (hub_client/_private/strategies.py), so a client choosing locally
applies them too; the tier filter is the registry's (:func:`registry.service.visible`,
what GetService and ListServices use).

Everything is answered from the replica's in-memory views; candidates are cached
per service and dropped when anything they are built from changes for that
service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hub_client
from hub_client import Candidate, HealthStatus
from hub_server.circuits.breaker import CircuitState
from hub_server.circuits.service import Circuits
from hub_server.health.service import HealthView
from hub_server.kernel.changes import UPDATED
from hub_server.registry.service import RegistryView, StoredInstance, on_service_change, tier_names
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore, KeyValue
from hub_server.store.mirror import Change, PrefixMirror


def _decode_load(kv: KeyValue) -> float:
    return float(kv.value)


@dataclass(frozen=True, slots=True)
class UsableEndpoint:
    """One instance a caller may be sent to.

    Attributes:
        priority: 0 HEALTHY, 1 DEGRADED, 2 STARTING / not yet probed
            (:func:`hub_client.priority`); a pick uses the lowest present.
        half_open: The instance's circuit is HALF_OPEN: offered again for trial calls.
    """

    instance_id: str
    host: str
    port: int
    weight: int
    load: float
    health: HealthStatus
    priority: int
    half_open: bool
    version: str
    # Of the last probe; None when not probed (for a client's latency-aware pick).
    latency_ms: float | None = None


@dataclass(frozen=True, slots=True)
class ServiceEndpoints:
    """A service's usable endpoints for one tier.

    Attributes:
        revision: The projection's revision when it was built.
        visible: False when the service is not registered or the tier may use
            none of its instances (GetService would answer NOT_FOUND or
            PERMISSION_DENIED): clients are then offered nothing.
        circuit_open: The service's own circuit is OPEN: nothing is offered.
        endpoints: Exactly the usable set, in PickEndpoint's order (priority,
            then instance id).
    """

    service: str
    revision: int
    visible: bool
    circuit_open: bool
    endpoints: tuple[UsableEndpoint, ...]


class EndpointProjection:
    """Usable endpoints per service and tier, from the replica's views.

    Args:
        store: For the load reports' mirror (which this projection owns).
        registry: Instances.
        health: Health records.
        circuits: Service and instance circuits.
        drains: Drain marks of roll-outs.
    """

    def __init__(
        self,
        store: EtcdStore,
        registry: RegistryView,
        health: HealthView,
        circuits: Circuits,
        *,
        drains: PrefixMirror[str] | None = None,
    ) -> None:
        self._registry = registry
        self._health = health
        self._circuits = circuits
        self._drains = drains
        self.loads: PrefixMirror[float] = PrefixMirror(store, keys.LOAD, _decode_load)
        self._cache: dict[str, list[Candidate]] = {}
        self._subscribers: list[Callable[[str | None], None]] = []
        self._services_loaded = 0  # services in the registry's view while it loads
        self._inputs: list[PrefixMirror[Any]] = [
            registry.mirror, health.mirror, self.loads, circuits.mirror
        ]  # fmt: skip
        if drains is not None:
            self._inputs.append(drains)
        for mirror in self._inputs:
            on_service_change(mirror, self._service_changed)
        registry.add_listener(self._registry_changed)

    def watch(self, mirror: PrefixMirror[Any]) -> None:
        """Also tells subscribers about changes to ``mirror`` (keyed per service like
        the registry), e.g. routing policies that resources are built from."""
        self._inputs.append(mirror)
        on_service_change(mirror, self._notify)

    # -- change tracking -------------------------------------------------------

    def _service_changed(self, service: str) -> None:
        self._cache.pop(service, None)
        self._notify(service)

    def _notify(self, service: str | None) -> None:
        for callback in list(self._subscribers):
            callback(service)

    def _registry_changed(self, change: Change[StoredInstance]) -> None:
        # Runs after the per-service listener. Which services a tier sees changes
        # only when a service gains or loses an instance with requirements none of
        # its other instances has (a busy service's registrations are not
        # catalogue changes).
        inst = change.value
        if inst is None:
            self._notify(None)
            return
        if self._registry.mirror.loading:
            # A starting hub's snapshot (a million keys), before anything was
            # built from it: once per service it adds (the view indexed the key
            # before its listeners run), without reading the key or working out
            # any instance's requirements.
            services = len(self._registry.services)
            if services != self._services_loaded:
                self._services_loaded = services
                self._notify(None)
            return
        service, instance_id = keys.parse_instance_key(change.key)
        others = self._registry.services.get(service)
        if change.type == UPDATED:
            if change.previous is not None and change.previous.tiers == inst.tiers:
                return
            self._notify(None)
            return
        needs = inst.tiers
        if others is not None and any(
            i != instance_id and o.tiers == needs for i, o in others.stored.items()
        ):
            return
        self._notify(None)

    def subscribe(self, callback: Callable[[str | None], None]) -> Callable[[], None]:
        """Calls ``callback(service)`` when anything a projection of that service is
        built from changes, and ``callback(None)`` when the catalogue (which
        services a tier sees) may have changed. Callbacks run on the event loop
        inside the views' updates: keep them cheap (set a flag, wake an event).

        Returns:
            A function that unsubscribes.
        """
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    # -- reads -----------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The newest revision among the views it is built from."""
        return max(m.revision for m in self._inputs)

    @property
    def live(self) -> bool:
        return all(m.live for m in self._inputs)

    async def ready(self) -> None:
        """Returns once every view it is built from is live (loaded from etcd and
        following it), so an answer built afterwards never shows the empty
        catalogue of a hub still starting (a client told "no services" would drop
        them). Immediate on a serving hub."""
        # The mirrors have no "live" event; this polls only while the hub starts
        # or has lost etcd.
        while not self.live:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    def candidates(self, service: str) -> list[Candidate]:
        """Every registered instance of the service as hub_client's balancer sees
        it (PickEndpoint chooses among these); empty when none is registered."""
        cached = self._cache.get(service)
        if cached is not None:
            return cached
        found = []
        for instance_id, inst in sorted(self._registry.services.get(service, {}).items()):
            record = self._health.of(inst)
            probed = record.check != "lease" and record.status != 0
            found.append(
                Candidate(
                    instance_id=instance_id,
                    host=inst.host,
                    port=inst.port,
                    weight=inst.weight,
                    load=self.loads.items.get(keys.load_key(service, instance_id), 0.0),
                    latency_ms=record.latency_ms if probed else None,
                    health=HealthStatus(record.status),
                    draining=inst.draining
                    or (
                        self._drains is not None
                        and keys.drain_key(service, instance_id) in self._drains.items
                    ),
                    circuit_open=self._circuits.refuses(service, instance_id),
                    subscription_requirements=tier_names(inst),
                    version=inst.version,
                )
            )
        self._cache[service] = found
        return found

    def services(self, tier: str | None) -> list[str]:
        """The services with at least one instance ``tier`` may see (None: all), by
        name: the rule of ListServices."""
        return [
            name
            for name, instances in sorted(self._registry.services.items())
            if instances.any_visible(tier)
        ]

    def project(self, service: str, tier: str | None) -> ServiceEndpoints:
        """The service's usable endpoints for a caller whose reads are filtered by
        ``tier`` (:func:`hub_server.kernel.tiers.view_tier`; None: unfiltered)."""
        revision = self.revision
        instances = self._registry.services.get(service)
        if instances is None or not instances.any_visible(tier):
            return ServiceEndpoints(service, revision, False, False, ())
        if self._circuits.refuses(service):
            return ServiceEndpoints(service, revision, True, True, ())
        try:
            pool = hub_client.usable(
                self.candidates(service), tier=tier, legacy=tier is None, service=service
            )
        except hub_client.NoEligibleInstance:
            pool = []
        endpoints = []
        for c in pool:
            rank = hub_client.priority(c.health)
            assert rank is not None  # usable() keeps ranked health classes only
            stored = self._circuits.mirror.items.get(keys.circuit_key(service, c.instance_id))
            endpoints.append(
                UsableEndpoint(
                    instance_id=c.instance_id,
                    host=c.host,
                    port=c.port,
                    weight=c.weight,
                    load=c.load,
                    health=c.health,
                    priority=rank,
                    half_open=stored is not None and stored.circuit.state is CircuitState.HALF_OPEN,
                    version=c.version,
                    latency_ms=c.latency_ms,
                )
            )
        endpoints.sort(key=lambda e: (e.priority, e.instance_id))
        return ServiceEndpoints(service, revision, True, False, tuple(endpoints))
