"""PickEndpoint and ReportLoad: hub_client's balancer (the strategies a client may
also run locally) fed from the views every replica keeps in memory, so a pick never
touches etcd."""

from __future__ import annotations

from aitrading.hub.v1.errors_pb2 import (
    ERROR_REASON_INSTANCE_NOT_FOUND,
    ERROR_REASON_SERVICE_NOT_FOUND,
)

import hub_client
from hub_client import Balancer, Candidate, Ineligibility, Strategy, eligible
from hub_server.balancing.projection import EndpointProjection
from hub_server.circuits.service import Circuits
from hub_server.kernel import validation
from hub_server.kernel.errors import (
    FieldViolation,
    InvalidArgument,
    NoEligibleInstance,
    NotFound,
    Violations,
)
from hub_server.registry.service import RegistryView, StoredInstance
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore
from hub_server.store.mirror import PrefixMirror

MAX_LOAD = 1000.0


class Picker:
    """Chooses among the candidates of the one usable-endpoint projection
    (hub_server/balancing/projection.py), so a pick and an xDS client's endpoints
    come from the same rules."""

    def __init__(
        self,
        store: EtcdStore,
        registry: RegistryView,
        circuits: Circuits,
        projection: EndpointProjection,
        *,
        balancer: Balancer | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._circuits = circuits
        self._projection = projection
        self._balancer = balancer or Balancer()
        # The eligible candidates by (service, tier, legacy), with the candidate
        # list they were drawn from: the projection builds a new list whenever
        # anything a candidate carries changes (instances, health, loads, drains,
        # circuits), so a pool kept for that very list object (held here, so its
        # id is not reused) is filtered once per change, not once per pick.
        self._pools: dict[tuple[str, str | None, bool], tuple[list[Candidate], list[Candidate]]]
        self._pools = {}

    @property
    def loads(self) -> PrefixMirror[float]:
        """The load reports' mirror (the projection's)."""
        return self._projection.loads

    @property
    def revision(self) -> int:
        return self._registry.revision

    def knows(self, service: str) -> bool:
        """Whether the service has registered instances (so a valid name)."""
        return service in self._registry.services

    def pick(
        self,
        service: str,
        strategy: Strategy,
        *,
        affinity_key: str,
        tier: str | None,
    ) -> tuple[str, StoredInstance, float]:
        """The chosen instance's id, the instance as stored, and its load.
        ``tier`` None: no tier filtering."""
        self._registry.ensure_live()
        instances = self._registry.services.get(service)
        if not instances:
            self._balancer.forget(service)
            for key in [k for k in self._pools if k[0] == service]:
                del self._pools[key]
            raise NotFound(
                f"service {service!r} is not registered", reason=ERROR_REASON_SERVICE_NOT_FOUND,
                service=service,
            )  # fmt: skip
        if self._circuits.refuses(service):
            raise NoEligibleInstance(
                f"the circuit of service {service!r} is open",
                cause=Ineligibility.CIRCUIT_OPEN.value,
            )
        # The choice raises hub_client's errors (a client may choose with it too);
        # the hub answers with its own, same message and metadata, which
        # rpc/errors.py maps to a status.
        candidates = self._projection.candidates(service)
        try:
            chosen = self._balancer.choose(
                service,
                candidates,
                strategy,
                affinity_key=affinity_key or None,
                tier=tier,
                legacy=tier is None,
                pool=self._pool(service, candidates, tier),
            )
        except hub_client.NoEligibleInstance as e:
            raise NoEligibleInstance(e.message, **e.metadata) from e
        except hub_client.InvalidArgument as e:
            raise InvalidArgument(
                FieldViolation(v.field, v.description) for v in e.field_violations
            ) from e
        return chosen.instance_id, instances.stored[chosen.instance_id], chosen.load

    def _pool(self, service: str, candidates: list[Candidate], tier: str | None) -> list[Candidate]:
        """``eligible(candidates)`` for this tier; raises what it raises."""
        key = (service, tier, tier is None)
        kept = self._pools.get(key)
        if kept is not None and kept[0] is candidates:
            return kept[1]
        pool = eligible(candidates, tier=tier, legacy=tier is None, service=service)
        self._pools[key] = (candidates, pool)
        return pool

    async def report_load(self, service: str, instance_id: str, load: float) -> int:
        v = Violations()
        validation.check_dns_label(v, "service", service)
        validation.check_safe_id(v, "instance_id", instance_id)
        if not 0.0 <= load <= MAX_LOAD:
            v.add("load_factor", f"must be between 0 and {MAX_LOAD:g}")
        v.raise_if_any()
        inst = self._registry.get_stored(service, instance_id)
        if inst is None:
            raise NotFound(
                f"instance {service}/{instance_id} is not registered",
                reason=ERROR_REASON_INSTANCE_NOT_FOUND, service=service, instance_id=instance_id,
            )  # fmt: skip
        # Under the instance's lease: the load goes when the instance goes.
        return await self._store.put(
            keys.load_key(service, instance_id), repr(float(load)).encode(), lease=inst.lease_id
        )
