"""Balancing: the hub picks an instance, instances report their load."""

from __future__ import annotations

from aitrading.hub.v1 import balancer_pb2

from hub_client._private.models import Endpoint, lookup
from hub_client._private.strategies import Strategy
from hub_client._private.transport import Transport

# pick()'s strategy names; Strategy's values are the proto's numbers.
STRATEGY_NAMES = {s.name.lower(): s for s in Strategy}


def strategy_of(strategy: str | Strategy | None) -> Strategy | None:
    """The strategy a pick names (None: the service's routing policy's), or
    InvalidArgument for an unknown name, before any RPC."""
    if strategy is None or isinstance(strategy, Strategy):
        return strategy
    return lookup(STRATEGY_NAMES, strategy, "strategy")


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
        # None sends UNSPECIFIED: the hub uses the service's routing policy.
        chosen = strategy_of(strategy)
        value = balancer_pb2.BALANCING_STRATEGY_UNSPECIFIED if chosen is None else int(chosen)
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
