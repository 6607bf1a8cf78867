"""LoadBalancerService: picks from memory, load reports to etcd."""

from __future__ import annotations

from typing import Protocol

from aitrading.hub.v1 import balancer_pb2, balancer_pb2_grpc, types_pb2

from hub_client import Strategy
from hub_server.kernel import validation
from hub_server.kernel.errors import Violations
from hub_server.rpc.context import current
from hub_server.rpc.header import response_header


class Picks(Protocol):
    """What the servicer uses of the balancer (hub_server.balancing.service.Picker)."""

    @property
    def revision(self) -> int: ...
    def pick(
        self, service: str, strategy: Strategy, *, affinity_key: str, tier: str | None
    ) -> tuple[types_pb2.Instance, float]: ...
    async def report_load(self, service: str, instance_id: str, load: float) -> int: ...


class LoadBalancerServicer(balancer_pb2_grpc.LoadBalancerServiceServicer):
    def __init__(self, picker: Picks, hub_id: str) -> None:
        self._picker = picker
        self._hub_id = hub_id

    async def PickEndpoint(self, request, context):
        v = Violations()
        validation.check_dns_label(v, "service", request.service)
        if request.strategy not in balancer_pb2.BalancingStrategy.values():
            v.add("strategy", "is not a known strategy")
        v.raise_if_any()
        call = current()
        instance, load = self._picker.pick(
            request.service,
            Strategy(request.strategy or Strategy.LEAST_LOAD),
            # A user sticks to one instance unless the caller says otherwise.
            affinity_key=request.affinity_key or call.user_id,
            tier=call.tier_filter(request.legacy_mode),
        )
        return balancer_pb2.PickEndpointResponse(
            header=response_header(self._hub_id, self._picker.revision),
            host=instance.host,
            port=instance.port,
            instance_id=instance.instance_id,
            load_factor=load,
            instance=instance,
        )

    async def ReportLoad(self, request, context):
        revision = await self._picker.report_load(
            request.service, request.instance_id, request.load_factor
        )
        return balancer_pb2.ReportLoadResponse(header=response_header(self._hub_id, revision))
