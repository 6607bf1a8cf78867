"""LoadBalancerService through the public API: strategies, eligibility, tiers,
circuits, load reports."""

from __future__ import annotations

from collections import Counter

import grpc
import pytest
from aitrading.hub.v1 import balancer_pb2 as lb
from aitrading.hub.v1 import balancer_pb2_grpc, circuit_pb2_grpc
from aitrading.hub.v1 import circuit_pb2 as cb

from hub_client import HubClient, health_check
from hub_client._private.errors import (
    InvalidArgument,
    NoEligibleInstance,
    NotFound,
    from_rpc_error,
)
from hub_server.app import Hub
from tests.support.servers import GrpcServer
from tests.support.waiting import eventually


async def _pick(
    hub: Hub, service: str, strategy: int = 0, metadata=(), **kw
) -> lb.PickEndpointResponse:  # type: ignore[no-untyped-def]
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = balancer_pb2_grpc.LoadBalancerServiceStub(ch)
        try:
            return await stub.PickEndpoint(
                lb.PickEndpointRequest(service=service, strategy=strategy, **kw),
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None


async def _report_load(hub: Hub, service: str, instance_id: str, load: float) -> None:
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = balancer_pb2_grpc.LoadBalancerServiceStub(ch)
        try:
            await stub.ReportLoad(
                lb.ReportLoadRequest(service=service, instance_id=instance_id, load_factor=load)
            )
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None


async def _three(client: HubClient, service: str, **kw) -> None:  # type: ignore[no-untyped-def]
    for i, weight in enumerate((100, 300, 600)):
        await client.register(service, instance_id=f"i{i}", host="10.0.0.1", port=9000 + i,
                              weight=weight, **kw)  # fmt: skip


async def test_least_load_follows_reported_load(hub: Hub, client: HubClient) -> None:
    await _three(client, "orders")
    await _report_load(hub, "orders", "i0", 0.9)
    await _report_load(hub, "orders", "i1", 0.2)
    await _report_load(hub, "orders", "i2", 0.5)
    await eventually(lambda: _picked(hub, "orders", "i1"))
    resp = await _pick(hub, "orders", lb.BALANCING_STRATEGY_LEAST_LOAD)
    assert (resp.instance_id, resp.port, resp.load_factor) == ("i1", 9001, pytest.approx(0.2))
    await _report_load(hub, "orders", "i1", 0.95)
    await eventually(lambda: _picked(hub, "orders", "i2"))


async def _picked(hub: Hub, service: str, instance_id: str) -> bool:
    try:
        return (await _pick(hub, service)).instance_id == instance_id
    except NoEligibleInstance:  # not probed yet
        return False


async def test_round_robin_weighted_hash_and_latency(hub: Hub, client: HubClient) -> None:
    await _three(client, "quotes")
    rr = [(await _pick(hub, "quotes", lb.BALANCING_STRATEGY_ROUND_ROBIN)).instance_id
          for _ in range(6)]  # fmt: skip
    assert sorted(rr[:3]) == ["i0", "i1", "i2"] and rr[3:] == rr[:3]

    weighted = Counter(
        [(await _pick(hub, "quotes", lb.BALANCING_STRATEGY_WEIGHTED)).instance_id
         for _ in range(400)]
    )  # fmt: skip
    assert weighted["i2"] > weighted["i1"] > weighted["i0"]

    # Consistent hash: the caller's user id by default, so a user sticks.
    for user in ("u1", "u2", "u3", "u4"):
        meta = (("x-user-id", user),)
        first = await _pick(hub, "quotes", lb.BALANCING_STRATEGY_CONSISTENT_HASH, metadata=meta)
        again = await _pick(hub, "quotes", lb.BALANCING_STRATEGY_CONSISTENT_HASH, metadata=meta)
        assert first.instance_id == again.instance_id
    by_key = await _pick(hub, "quotes", lb.BALANCING_STRATEGY_CONSISTENT_HASH, affinity_key="k")
    assert by_key.instance_id in {"i0", "i1", "i2"}
    with pytest.raises(InvalidArgument):
        await _pick(hub, "quotes", lb.BALANCING_STRATEGY_CONSISTENT_HASH)  # no key at all

    assert (await _pick(hub, "quotes", lb.BALANCING_STRATEGY_LATENCY_AWARE)).instance_id


async def test_only_healthy_then_degraded_never_unhealthy(hub: Hub, client: HubClient) -> None:
    up, down = GrpcServer(), GrpcServer()
    await up.start()
    await down.start()
    await down.set_serving(False)
    try:
        for srv, iid in ((up, "up"), (down, "down")):
            await client.register(
                "risk", instance_id=iid, host="127.0.0.1", port=srv.port, protocol="grpc",
                health=health_check(grpc_service="", interval=0.2, timeout=0.5),
            )  # fmt: skip
        await eventually(lambda: _picked(hub, "risk", "up"))
        picks = {(await _pick(hub, "risk", lb.BALANCING_STRATEGY_ROUND_ROBIN)).instance_id
                 for _ in range(6)}  # fmt: skip
        assert picks == {"up"}
        await up.set_serving(False)

        async def none_eligible() -> bool:
            try:
                await _pick(hub, "risk")
                return False
            except NoEligibleInstance as e:
                return e.metadata.get("cause") == "UNHEALTHY"

        await eventually(none_eligible)
    finally:
        await up.stop()
        await down.stop()


async def test_open_circuits_are_never_picked(hub: Hub, client: HubClient) -> None:
    await _three(client, "ml")
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = circuit_pb2_grpc.CircuitBreakerServiceStub(ch)
        for iid in ("i0", "i1"):
            await stub.OverrideCircuit(cb.OverrideCircuitRequest(
                service="ml", instance_id=iid, action=cb.CIRCUIT_OVERRIDE_FORCE_OPEN))  # fmt: skip
        picks = {(await _pick(hub, "ml", lb.BALANCING_STRATEGY_ROUND_ROBIN)).instance_id
                 for _ in range(6)}  # fmt: skip
        assert picks == {"i2"}
        await stub.OverrideCircuit(
            cb.OverrideCircuitRequest(service="ml", action=cb.CIRCUIT_OVERRIDE_FORCE_OPEN)
        )
        with pytest.raises(NoEligibleInstance) as err:
            await _pick(hub, "ml")
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert err.value.metadata["cause"] == "CIRCUIT_OPEN"


async def test_tiers_are_honoured(hub: Hub, client: HubClient) -> None:
    await client.register("alpha", instance_id="pro-only", host="h", port=1,
                          subscription_requirements=["pro"])  # fmt: skip
    free = (("x-tenant-id", "t1"), ("x-subscription-tier", "free"))
    pro = (("x-tenant-id", "t1"), ("x-subscription-tier", "pro"))
    with pytest.raises(NoEligibleInstance) as err:
        await _pick(hub, "alpha", metadata=free)
    assert err.value.metadata["cause"] == "TIER"
    assert (await _pick(hub, "alpha", metadata=pro)).instance_id == "pro-only"
    assert (await _pick(hub, "alpha")).instance_id == "pro-only"  # no tenant context
    assert (await _pick(hub, "alpha", metadata=free, legacy_mode=True)).instance_id


async def test_unknown_service_and_bad_input(hub: Hub, client: HubClient) -> None:
    with pytest.raises(NotFound):
        await _pick(hub, "nobody")
    with pytest.raises(InvalidArgument):
        await _pick(hub, "Bad/Name")
    with pytest.raises(InvalidArgument):
        await _pick(hub, "x", strategy=42)
    await client.register("loady", instance_id="a", host="h", port=1)
    with pytest.raises(InvalidArgument) as err:
        await _report_load(hub, "loady", "a", -0.5)
    assert [v.field for v in err.value.field_violations] == ["load_factor"]
    with pytest.raises(NotFound):
        await _report_load(hub, "loady", "zzz", 0.5)


async def test_repeated_picks_follow_every_change(hub: Hub, client: HubClient) -> None:
    """The picker keeps each eligible pool while the projection's candidates
    last: after many picks from one pool, a load report, a circuit, a joining
    and a leaving instance each change the answer."""

    async def picks(n: int = 12) -> set[str]:
        return {(await _pick(hub, "memo")).instance_id for _ in range(n)}

    await _three(client, "memo")
    for iid, load in (("i0", 0.9), ("i1", 0.2), ("i2", 0.5)):
        await _report_load(hub, "memo", iid, load)
    await eventually(lambda: _picked(hub, "memo", "i1"))
    assert await picks() == {"i1"}
    await _report_load(hub, "memo", "i1", 0.95)  # a load report
    await eventually(lambda: _picked(hub, "memo", "i2"))
    assert await picks() == {"i2"}
    async with grpc.aio.insecure_channel(hub.address) as ch:  # a circuit
        await circuit_pb2_grpc.CircuitBreakerServiceStub(ch).OverrideCircuit(
            cb.OverrideCircuitRequest(
                service="memo", instance_id="i2", action=cb.CIRCUIT_OVERRIDE_FORCE_OPEN
            )
        )
    assert await picks() == {"i0"}
    joined = await client.register("memo", instance_id="i3", host="10.0.0.2", port=9100)  # load 0
    await eventually(lambda: _picked(hub, "memo", "i3"))
    assert await picks() == {"i3"}
    await joined.deregister()  # leaves
    await eventually(lambda: _picked(hub, "memo", "i0"))
    assert await picks() == {"i0"}
