"""PickEndpoint and ReportLoad: hub_client's balancer (the strategies a client may
also run locally) fed from the views every replica keeps in memory, so a pick never
touches etcd."""

from __future__ import annotations

from aitrading.hub.v1 import types_pb2
from aitrading.hub.v1.errors_pb2 import (
    ERROR_REASON_INSTANCE_NOT_FOUND,
    ERROR_REASON_SERVICE_NOT_FOUND,
)

import hub_client
from hub_client import Balancer, Ineligibility, Strategy
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
from hub_server.registry.service import RegistryView
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

    @property
    def loads(self) -> PrefixMirror[float]:
        """The load reports' mirror (the projection's)."""
        return self._projection.loads

    @property
    def revision(self) -> int:
        return self._registry.revision

    def pick(
        self,
        service: str,
        strategy: Strategy,
        *,
        affinity_key: str,
        tier: str | None,
    ) -> tuple[types_pb2.Instance, float]:
        """The chosen instance and its load. ``tier`` None: no tier filtering."""
        self._registry.ensure_live()
        instances = self._registry.services.get(service)
        if not instances:
            self._balancer.forget(service)
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
        try:
            chosen = self._balancer.choose(
                service,
                self._projection.candidates(service),
                strategy,
                affinity_key=affinity_key or None,
                tier=tier,
                legacy=tier is None,
            )
        except hub_client.NoEligibleInstance as e:
            raise NoEligibleInstance(e.message, **e.metadata) from e
        except hub_client.InvalidArgument as e:
            raise InvalidArgument(
                FieldViolation(v.field, v.description) for v in e.field_violations
            ) from e
        return instances[chosen.instance_id], chosen.load

    async def report_load(self, service: str, instance_id: str, load: float) -> int:
        v = Violations()
        validation.check_dns_label(v, "service", service)
        validation.check_safe_id(v, "instance_id", instance_id)
        if not 0.0 <= load <= MAX_LOAD:
            v.add("load_factor", f"must be between 0 and {MAX_LOAD:g}")
        v.raise_if_any()
        inst = self._registry.services.get(service, {}).get(instance_id)
        if inst is None:
            raise NotFound(
                f"instance {service}/{instance_id} is not registered",
                reason=ERROR_REASON_INSTANCE_NOT_FOUND, service=service, instance_id=instance_id,
            )  # fmt: skip
        # Under the instance's lease: the load goes when the instance goes.
        return await self._store.put(
            keys.load_key(service, instance_id), repr(float(load)).encode(), lease=inst.lease_id
        )
