"""LoadBalancerService: picks from memory, load reports to etcd, routing
policies, and the usable-endpoint stream a client's local view is fed from."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from aitrading.hub.v1 import balancer_pb2, balancer_pb2_grpc, types_pb2

from hub_client import RoutingPolicy, Strategy
from hub_server.balancing.policy import STRATEGIES, from_request
from hub_server.balancing.projection import ServiceEndpoints
from hub_server.kernel import validation
from hub_server.kernel.errors import StoreUnavailable, Violations
from hub_server.rpc.context import CallContext, current
from hub_server.rpc.header import response_header
from hub_server.rpc.streaming import counted

log = logging.getLogger(__name__)

# A strategy by its number (a dict lookup: calling the enum costs more).
_STRATEGY = {s.value: s for s in Strategy}


class Stored(Protocol):
    """An instance as the registry keeps it (hub_server.registry.service.StoredInstance)."""

    def fill(
        self, inst: types_pb2.Instance, service: str, instance_id: str
    ) -> types_pb2.Instance: ...


class Picks(Protocol):
    """What the servicer uses of the balancer (hub_server.balancing.service.Picker)."""

    @property
    def revision(self) -> int: ...
    def knows(self, service: str) -> bool: ...
    def pick(
        self, service: str, strategy: Strategy, *, affinity_key: str, tier: str | None
    ) -> tuple[str, Stored, float]: ...
    async def report_load(self, service: str, instance_id: str, load: float) -> int: ...


class Policies(Protocol):
    """The routing policies (hub_server.balancing.policy.RoutingPolicies)."""

    @property
    def revision(self) -> int: ...
    def ensure_live(self) -> None: ...
    def stored(self, service: str) -> RoutingPolicy | None: ...
    def get(self, service: str) -> RoutingPolicy: ...
    async def set(self, service: str, policy: RoutingPolicy) -> int: ...
    async def delete(self, service: str) -> int: ...


class Endpoints(Protocol):
    """The usable-endpoint projection (hub_server.balancing.projection)."""

    @property
    def revision(self) -> int: ...
    @property
    def live(self) -> bool: ...
    async def ready(self) -> None: ...
    def project(self, service: str, tier: str | None) -> ServiceEndpoints: ...
    def subscribe(self, callback: Callable[[str | None], None]) -> Callable[[], None]: ...


def endpoints_message(
    projected: ServiceEndpoints, policy: RoutingPolicy, hub_id: str
) -> balancer_pb2.WatchEndpointsResponse:
    return balancer_pb2.WatchEndpointsResponse(
        header=response_header(hub_id, projected.revision),
        service=projected.service,
        visible=projected.visible,
        circuit_open=projected.circuit_open,
        endpoints=[
            balancer_pb2.UsableEndpoint(
                instance_id=e.instance_id,
                host=e.host,
                port=e.port,
                weight=e.weight,
                load_factor=e.load,
                health=int(e.health),
                priority=e.priority,
                half_open=e.half_open,
                version=e.version,
                latency_ms=e.latency_ms or 0.0,
            )
            for e in projected.endpoints
        ],
        policy=policy.to_pb(),
    )


class LoadBalancerServicer(balancer_pb2_grpc.LoadBalancerServiceServicer):
    def __init__(
        self,
        picker: Picks,
        policies: Policies,
        endpoints: Endpoints,
        hub_id: str,
        *,
        tier_of: Callable[[str], str] = lambda tenant_id: "",
        recheck_interval: float = 1.0,
    ) -> None:
        self._picker = picker
        self._policies = policies
        self._endpoints = endpoints
        self._hub_id = hub_id
        # A tenant's stored tier (what the call path gives a tenant's caller):
        # read again while a WatchEndpoints stream is open, so a downgrade
        # empties what the stream offers without waiting for a reconnect.
        self._tier_of = tier_of
        self.recheck_interval = recheck_interval

    async def PickEndpoint(self, request, context):
        service = request.service
        if request.strategy not in STRATEGIES or not self._picker.knows(service):
            # A registered service's name was checked when it was registered.
            v = Violations()
            validation.check_dns_label(v, "service", service)
            if request.strategy not in STRATEGIES:
                v.add("strategy", "is not a known strategy")
            v.raise_if_any()
        call = current()
        # No strategy named: the service's routing policy's (least load by default).
        strategy = _STRATEGY.get(request.strategy) or self._policies.get(service).strategy
        instance_id, stored, load = self._picker.pick(
            service,
            strategy,
            # A user sticks to one instance unless the caller says otherwise.
            affinity_key=request.affinity_key or call.user_id,
            tier=call.tier_filter(request.legacy_mode),
        )
        response = balancer_pb2.PickEndpointResponse(
            header=response_header(self._hub_id, self._picker.revision),
            instance_id=instance_id,
            load_factor=load,
        )
        instance = stored.fill(response.instance, service, instance_id)  # decoded in place
        response.host, response.port = instance.host, instance.port
        return response

    async def ReportLoad(self, request, context):
        revision = await self._picker.report_load(
            request.service, request.instance_id, request.load_factor
        )
        return balancer_pb2.ReportLoadResponse(header=response_header(self._hub_id, revision))

    # -- routing policies ------------------------------------------------------

    async def SetRoutingPolicy(self, request, context):
        policy = from_request(request.policy)
        revision = await self._policies.set(request.service, policy)
        return balancer_pb2.SetRoutingPolicyResponse(
            header=response_header(self._hub_id, revision), policy=policy.to_pb()
        )

    async def GetRoutingPolicy(self, request, context):
        v = Violations()
        validation.check_dns_label(v, "service", request.service)
        v.raise_if_any()
        self._policies.ensure_live()
        stored = self._policies.stored(request.service)
        return balancer_pb2.GetRoutingPolicyResponse(
            header=response_header(self._hub_id, self._policies.revision),
            policy=self._policies.get(request.service).to_pb(),
            is_default=stored is None,
        )

    async def DeleteRoutingPolicy(self, request, context):
        revision = await self._policies.delete(request.service)
        return balancer_pb2.DeleteRoutingPolicyResponse(
            header=response_header(self._hub_id, revision)
        )

    # -- the usable-endpoint stream -------------------------------------------

    def _tier(self, call: CallContext, legacy_mode: bool) -> str | None:
        """The caller's tier filter, with its tenant's tier as stored now."""
        tenant = call.caller.tenant or call.tenant_id
        return call.tier_filter(legacy_mode, self._tier_of(tenant) if tenant else "")

    async def WatchEndpoints(
        self, request, context
    ) -> AsyncIterator[balancer_pb2.WatchEndpointsResponse]:
        v = Violations()
        validation.check_dns_label(v, "service", request.service)
        if request.after_revision < 0:
            v.add("after_revision", "must not be negative")
        v.raise_if_any()
        service, call = request.service, current()
        changed = asyncio.Event()

        def wake(which: str | None) -> None:
            # None: the catalogue changed (a tier may see the service appear or go).
            if which is None or which == service:
                changed.set()

        unsubscribe = self._endpoints.subscribe(wake)
        with counted():  # a watch stream like the others (gauge, GetSystemMetrics)
            try:
                # Never answer from a view still loading: an empty snapshot would
                # tell the client the service is gone.
                await self._endpoints.ready()
                last: balancer_pb2.WatchEndpointsResponse | None = None
                while True:
                    changed.clear()
                    if not self._endpoints.live:
                        # Ended rather than kept open on a view that no longer
                        # follows etcd: the client knows its snapshot may be
                        # stale, and its reconnect waits for a current view.
                        raise StoreUnavailable("the hub's view is not current: etcd is unreachable")
                    projected = self._endpoints.project(
                        service, self._tier(call, request.legacy_mode)
                    )
                    message = endpoints_message(
                        projected, self._policies.get(service), self._hub_id
                    )
                    # Compared without the header: the revision moves with
                    # changes to any service.
                    message.ClearField("header")
                    # A resume point past the revision the hub has reached did not
                    # come from it (e.g. it restarted on an emptied etcd): answered
                    # with the snapshot, which the caller then judges.
                    if message != last and (
                        last is not None or projected.revision != request.after_revision
                    ):
                        last = balancer_pb2.WatchEndpointsResponse()
                        last.CopyFrom(message)
                        message.header.CopyFrom(response_header(self._hub_id, projected.revision))
                        yield message
                    elif last is None:
                        last = message  # the caller's snapshot is current
                    # Woken by a change, or after a while to read the tier again.
                    try:
                        await asyncio.wait_for(changed.wait(), self.recheck_interval)
                    except TimeoutError:
                        pass
            except asyncio.CancelledError:
                log.debug("endpoint watch cancelled by the client")
                raise
            finally:
                unsubscribe()
