"""Balancing: the hub picks an instance, instances report their load."""

from __future__ import annotations

from aitrading.hub.v1 import balancer_pb2

from hub_client._private.models import Endpoint, lookup
from hub_client._private.strategies import Strategy
from hub_client._private.transport import Transport

_STRATEGIES = {
    "least_load": balancer_pb2.BALANCING_STRATEGY_LEAST_LOAD,
    "round_robin": balancer_pb2.BALANCING_STRATEGY_ROUND_ROBIN,
    "weighted": balancer_pb2.BALANCING_STRATEGY_WEIGHTED,
    "consistent_hash": balancer_pb2.BALANCING_STRATEGY_CONSISTENT_HASH,
    "latency_aware": balancer_pb2.BALANCING_STRATEGY_LATENCY_AWARE,
}


class BalancerClient:
    """The LoadBalancerService calls."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def pick(
        self,
        service: str,
        *,
        strategy: str | Strategy | None,
        affinity_key: str,
        legacy_mode: bool,
        timeout: float | None = None,
    ) -> Endpoint:
        # Strategy is an IntEnum shared with local picking: a member means its name.
        # None sends UNSPECIFIED: the hub uses the service's routing policy.
        name = strategy.name.lower() if isinstance(strategy, Strategy) else strategy
        value = (
            balancer_pb2.BALANCING_STRATEGY_UNSPECIFIED
            if name is None
            else lookup(_STRATEGIES, name, "strategy")
        )
        t = self._transport
        resp = await t.call(
            t.balancer_stub.PickEndpoint,
            balancer_pb2.PickEndpointRequest(
                service=service,
                strategy=value,
                affinity_key=affinity_key,
                legacy_mode=legacy_mode,
            ),
            timeout=timeout,
        )
        return Endpoint.from_pb(resp)

    async def report_load(
        self, service: str, instance_id: str, load: float, *, timeout: float | None = None
    ) -> None:
        t = self._transport
        await t.call(
            t.balancer_stub.ReportLoad,
            balancer_pb2.ReportLoadRequest(
                service=service, instance_id=instance_id, load_factor=load
            ),
            timeout=timeout,
        )
