"""Routing policies (Set/Get/DeleteRoutingPolicy, PickEndpoint's default strategy),
the WatchEndpoints stream and ListXdsClients, through hub_client against real hubs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

import grpc
import pytest
from aitrading.hub.v1 import balancer_pb2 as lb
from aitrading.hub.v1 import balancer_pb2_grpc, circuit_pb2_grpc
from aitrading.hub.v1 import circuit_pb2 as cb

from hub_client import (
    EndpointsSnapshot,
    HealthStatus,
    HubClient,
    InvalidArgument,
    NotFound,
    OutlierDetection,
    Registration,
    RetryPolicy,
    RoutingPolicy,
    Strategy,
    health_check,
)
from hub_server.app import Hub
from hub_server.balancing.policy import DEFAULT_POLICY, from_json
from hub_server.embedded_etcd import EtcdProcess
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore
from hub_server.xds.clients import XdsClientStatus, XdsNack
from tests.support.bridge import Bridge
from tests.support.hubs import HubFactory
from tests.support.servers import GrpcServer
from tests.support.waiting import eventually


async def _three(client: HubClient, service: str) -> list[Registration]:
    return [
        await client.register(
            service, instance_id=f"i{i}", host="10.0.0.1", port=9000 + i, weight=weight
        )
        for i, weight in enumerate((100, 300, 600))
    ]


# -- policies ---------------------------------------------------------------------


async def test_policy_set_get_delete(hub: Hub, client: HubClient, etcd_store: EtcdStore) -> None:
    info = await client.routing_policy("quotes")
    assert info.is_default and info.policy == DEFAULT_POLICY == RoutingPolicy()
    assert info.policy.strategy is Strategy.LEAST_LOAD

    wanted = RoutingPolicy(
        strategy=Strategy.CONSISTENT_HASH,
        retry=RetryPolicy(retry_on=("unavailable", "deadline-exceeded"), num_retries=2),
        timeout_ms=1500,
        outlier=OutlierDetection(base_ejection_time_ms=10_000, failure_percentage_threshold=30),
    )
    stored = await client.set_routing_policy("quotes", wanted)
    assert stored == wanted
    info = await client.routing_policy("quotes")
    assert not info.is_default and info.policy == wanted and info.revision > 0
    # One JSON record under its own prefix, read back by any replica.
    kv, _ = await etcd_store.get(keys.routing_policy_key("quotes"))
    assert kv is not None and from_json(kv.value) == wanted

    await client.delete_routing_policy("quotes")
    assert (await client.routing_policy("quotes")).is_default
    with pytest.raises(NotFound):
        await client.delete_routing_policy("quotes")


async def test_zero_fields_take_defaults(hub: Hub) -> None:
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = balancer_pb2_grpc.LoadBalancerServiceStub(ch)
        resp = await stub.SetRoutingPolicy(
            lb.SetRoutingPolicyRequest(
                service="ml",
                policy=lb.RoutingPolicy(retry=lb.RetryPolicy(num_retries=1, base_interval_ms=400)),
            )
        )
    got = RoutingPolicy.from_pb(resp.policy)
    # base above the default ceiling: the ceiling left zero is raised to it.
    assert got.retry == RetryPolicy(("unavailable",), 1, 400, 400)
    assert got.outlier == OutlierDetection() and got.strategy is Strategy.LEAST_LOAD


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (lb.RoutingPolicy(strategy=42), "policy.strategy"),
        (lb.RoutingPolicy(retry=lb.RetryPolicy(num_retries=5)), "policy.retry.num_retries"),
        (lb.RoutingPolicy(retry=lb.RetryPolicy(retry_on=["502"])), "policy.retry.retry_on[0]"),
        (
            lb.RoutingPolicy(retry=lb.RetryPolicy(base_interval_ms=100, max_interval_ms=50)),
            "policy.retry.max_interval_ms",
        ),
        (lb.RoutingPolicy(timeout_ms=-1), "policy.timeout_ms"),
        (
            lb.RoutingPolicy(outlier=lb.OutlierDetection(max_ejection_percent=101)),
            "policy.outlier.max_ejection_percent",
        ),
        (
            lb.RoutingPolicy(outlier=lb.OutlierDetection(interval_ms=-5)),
            "policy.outlier.interval_ms",
        ),
    ],
)
async def test_bad_policies_name_the_field(hub: Hub, policy: lb.RoutingPolicy, field: str) -> None:
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = balancer_pb2_grpc.LoadBalancerServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SetRoutingPolicy(lb.SetRoutingPolicyRequest(service="ml", policy=policy))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (err.value.details() or "")
        # Nothing was stored.
        got = await stub.GetRoutingPolicy(lb.GetRoutingPolicyRequest(service="ml"))
        assert got.is_default


async def test_bad_service_names_are_refused(client: HubClient) -> None:
    with pytest.raises(InvalidArgument):
        await client.set_routing_policy("Not A Label", RoutingPolicy())
    with pytest.raises(InvalidArgument):
        await client.routing_policy("../x")


async def test_pick_uses_the_policy_strategy_when_the_request_names_none(
    hub: Hub, client: HubClient
) -> None:
    await _three(client, "orders")
    await client.report_load("orders", "i0", 0.9)
    await client.report_load("orders", "i1", 0.1)
    await client.report_load("orders", "i2", 0.5)
    # No policy: least load, as before.
    await eventually(lambda: _picked_is(client, "orders", "i1"))
    await client.set_routing_policy("orders", RoutingPolicy(strategy=Strategy.ROUND_ROBIN))
    picks = [(await client.pick("orders")).instance_id for _ in range(6)]
    assert sorted(picks[:3]) == ["i0", "i1", "i2"] and picks[3:] == picks[:3]
    # A strategy named in the request wins over the policy.
    assert {(await client.pick("orders", strategy="least_load")).instance_id
            for _ in range(3)} == {"i1"}  # fmt: skip
    await client.delete_routing_policy("orders")
    assert {(await client.pick("orders")).instance_id for _ in range(3)} == {"i1"}


async def _picked_is(client: HubClient, service: str, instance_id: str) -> bool:
    return (await client.pick(service)).instance_id == instance_id


async def test_a_second_replica_sees_the_policy(
    hub: Hub, client: HubClient, hub_factory: HubFactory
) -> None:
    await client.set_routing_policy("feed", RoutingPolicy(strategy=Strategy.WEIGHTED))
    other = await hub_factory()
    async with HubClient(other.address, timeout=5) as c2:
        info = await c2.routing_policy("feed")
    assert not info.is_default and info.policy.strategy is Strategy.WEIGHTED


# -- WatchEndpoints ---------------------------------------------------------------


class Follower:
    """Reads a WatchEndpoints stream in the background."""

    def __init__(self, stream: AsyncIterator[EndpointsSnapshot]) -> None:
        self.got: list[EndpointsSnapshot] = []
        self._stream = stream
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async with aclosing(self._stream) as stream:  # type: ignore[type-var]
            async for snapshot in stream:
                self.got.append(snapshot)

    @property
    def last(self) -> EndpointsSnapshot:
        return self.got[-1]

    async def until(self, check: Callable[[EndpointsSnapshot], bool]) -> EndpointsSnapshot:
        await eventually(lambda: bool(self.got) and check(self.last), timeout=15)
        return self.last

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def _ids(s: EndpointsSnapshot) -> list[str]:
    return [e.instance_id for e in s.endpoints]


async def test_watch_endpoints_follows_the_service(hub: Hub, client: HubClient) -> None:
    f = Follower(client.watch_endpoints("prices"))
    try:
        first = await f.until(lambda s: True)
        assert (first.visible, first.endpoints, first.hub_id) == (False, (), hub.hub_id)
        regs = await _three(client, "prices")
        s = await f.until(lambda s: _ids(s) == ["i0", "i1", "i2"])
        assert s.visible and not s.circuit_open
        e0 = s.endpoints[0]
        assert (e0.host, e0.port, e0.weight, e0.priority, e0.health) == (
            "10.0.0.1", 9000, 100, 0, HealthStatus.HEALTHY
        )  # fmt: skip
        assert s.policy == DEFAULT_POLICY

        # A policy change is a new snapshot carrying it.
        await client.set_routing_policy("prices", RoutingPolicy(strategy=Strategy.CONSISTENT_HASH))
        await f.until(lambda s: s.policy.strategy is Strategy.CONSISTENT_HASH)

        # A load report shows; an instance whose circuit is forced open goes.
        await client.report_load("prices", "i2", 0.75)
        await f.until(lambda s: s.endpoints[2].load == pytest.approx(0.75))
        async with grpc.aio.insecure_channel(hub.address) as ch:
            stub = circuit_pb2_grpc.CircuitBreakerServiceStub(ch)
            force_open = cb.CIRCUIT_OVERRIDE_FORCE_OPEN
            await stub.OverrideCircuit(
                cb.OverrideCircuitRequest(service="prices", instance_id="i1", action=force_open)
            )
            await f.until(lambda s: _ids(s) == ["i0", "i2"])
            # The whole service's circuit open: nothing, and it says why.
            await stub.OverrideCircuit(
                cb.OverrideCircuitRequest(service="prices", action=force_open)
            )
            s = await f.until(lambda s: s.circuit_open)
            assert s.visible and s.endpoints == ()

        # Every instance gone: the service really is empty (visible False).
        for reg in regs:
            await reg.deregister()
        s = await f.until(lambda s: not s.visible)
        assert s.endpoints == ()
        revisions = [x.revision for x in f.got]
        assert revisions == sorted(revisions)
    finally:
        await f.close()


async def test_watch_endpoints_carry_probe_latency(client: HubClient) -> None:
    server = GrpcServer()
    await server.start()
    try:
        await client.register(
            "probed", instance_id="p1", host="127.0.0.1", port=server.port, protocol="grpc",
            health=health_check(grpc_service="", interval=0.2, timeout=0.5),
        )  # fmt: skip
        f = Follower(client.watch_endpoints("probed"))
        try:
            s = await f.until(lambda s: bool(s.endpoints) and s.endpoints[0].latency_ms is not None)
            assert s.endpoints[0].latency_ms > 0  # type: ignore[operator]
            assert s.endpoints[0].health is HealthStatus.HEALTHY
        finally:
            await f.close()
    finally:
        await server.stop()


async def test_watch_endpoints_resumes_by_revision(hub: Hub, client: HubClient) -> None:
    regs = await _three(client, "bars")
    f = Follower(client.watch_endpoints("bars"))
    try:
        held = await f.until(lambda s: len(s.endpoints) == 3)
    finally:
        await f.close()
    # Reopened with the revision it holds: nothing is sent until something changes.
    g = Follower(client.watch_endpoints("bars", after_revision=held.revision))
    try:
        await asyncio.sleep(1.0)
        assert g.got == []
        await regs[0].deregister()
        s = await g.until(lambda s: _ids(s) == ["i1", "i2"])
        assert s.revision > held.revision
    finally:
        await g.close()


async def test_watch_endpoints_honours_the_tier_and_its_changes(
    hub: Hub, client: HubClient
) -> None:
    await client.register("alpha", instance_id="open", host="h", port=1)
    await client.register("alpha", instance_id="premium", host="h", port=2,
                          subscription_requirements=["enterprise"])  # fmt: skip
    await client.create_tenant("acme", tier="enterprise")
    async with HubClient(hub.address, tenant_id="acme", timeout=5) as acme:
        f = Follower(acme.watch_endpoints("alpha"))
        try:
            await f.until(lambda s: _ids(s) == ["open", "premium"])
            # The tenant drops to free while connected: the premium instance goes.
            await client.set_tier("acme", "free")
            await f.until(lambda s: _ids(s) == ["open"])
        finally:
            await f.close()
    async with HubClient(hub.address, subscription_tier="free", timeout=5) as free:
        f = Follower(free.watch_endpoints("alpha"))
        try:
            assert _ids(await f.until(lambda s: True)) == ["open"]
        finally:
            await f.close()


async def test_watch_endpoints_ends_when_the_view_stops_following_etcd(
    hub_factory: HubFactory, etcd: EtcdProcess
) -> None:
    bridge = Bridge(etcd.client_port)
    await bridge.start()
    try:
        hub = await hub_factory(endpoints=[bridge.endpoint])
        admin = HubClient(hub.address)  # (closing it would deregister)
        await admin.register("pricing", host="127.0.0.1", port=7001, ttl=60, keep_alive=False)
        async with grpc.aio.insecure_channel(hub.address) as channel:
            stub = balancer_pb2_grpc.LoadBalancerServiceStub(channel)
            call = stub.WatchEndpoints(lb.WatchEndpointsRequest(service="pricing"))
            first = await asyncio.wait_for(call.read(), 15)
            assert [e.port for e in first.endpoints] == [7001]
            await bridge.cut()
            # Not a stale snapshot, and not an empty one: the stream ends.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(call.read(), 15)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            await bridge.restore()
            again = stub.WatchEndpoints(lb.WatchEndpointsRequest(service="pricing"))
            assert [e.port for e in (await asyncio.wait_for(again.read(), 15)).endpoints] == [7001]
            again.cancel()
        await admin.close()
    finally:
        await bridge.close()


async def test_watch_endpoints_bad_input(client: HubClient) -> None:
    with pytest.raises(InvalidArgument):
        async for _ in client.watch_endpoints("Bad Name"):
            break
    with pytest.raises(InvalidArgument):
        async for _ in client.watch_endpoints("ok", after_revision=-1):
            break


# -- ListXdsClients ---------------------------------------------------------------


async def test_list_xds_clients_reports_each_stream(hub: Hub, client: HubClient) -> None:
    assert await client.xds_clients() == []
    cds = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    now = time.time()
    status = XdsClientStatus(
        stream_id=1,
        node_id="orders-7",
        tenant_id="acme",
        tier="pro",
        peer="ipv4:127.0.0.1:5555",
        connected_at=now - 5,
        subscribed={cds: ["*"]},
        acked_version={cds: "3"},
        last_nack=XdsNack(cds, "3", "4", "n9", "bad cluster", now),
    )
    # An open stream as hub_server/xds registers one (the ADS stream tests open
    # real ones): what operators get is its status, as it is when asked.
    _, unregister = hub.services.xds_clients.register(lambda: status)
    try:
        (got,) = await client.xds_clients()
    finally:
        unregister()
    assert (got.hub_id, got.node_id, got.tenant_id, got.tier, got.peer) == (
        hub.hub_id, "orders-7", "acme", "pro", "ipv4:127.0.0.1:5555"
    )  # fmt: skip
    assert got.connected_at == pytest.approx(now - 5, abs=1e-3)
    (sub,) = got.subscriptions
    assert (sub.type_url, sub.resource_names, sub.acked_version) == (cds, ("*",), "3")
    assert got.last_nack is not None
    assert (got.last_nack.version, got.last_nack.nonce, got.last_nack.error) == (
        "4", "n9", "bad cluster"
    )  # fmt: skip
    assert await client.xds_clients() == []
