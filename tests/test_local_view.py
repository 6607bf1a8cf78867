"""Local resolution (issue 17 item 1): discover() and pick() answered from a
local view fed by WatchEndpoints, against real hubs and etcds. RPCs are counted
with a client interceptor on the channel the client uses."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hub_client import (
    HubClient,
    NoEligibleInstance,
    RoutingPolicy,
    ServiceNotFound,
    Strategy,
    ViewTooOld,
    health_check,
    sync,
)
from hub_server.app import Hub
from hub_server.embedded_etcd import EtcdProcess
from hub_server.store.etcd import EtcdStore
from tests.support.bridge import Bridge
from tests.support.hubs import HubFactory
from tests.support.servers import GrpcServer
from tests.support.waiting import eventually


class Calls(grpc.aio.UnaryUnaryClientInterceptor):
    """Counts the RPCs made through a channel, by method name (a channel takes
    one interceptor per kind: ``streams`` counts the server-streaming ones)."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.streams = _Streams(self.count)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.count[_method(details.method)] += 1
        return await continuation(details, request)


class _Streams(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, count: Counter[str]) -> None:
        self.count = count

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self.count[_method(details.method)] += 1
        return await continuation(details, request)


def _method(name: bytes | str) -> str:
    text = name.decode() if isinstance(name, bytes) else name
    return text.rsplit("/", 1)[-1]


class _LateStreams(grpc.aio.UnaryStreamClientInterceptor):
    """Hands on every streamed message ``delay`` seconds late: a view that always
    lags the hub's answers."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(details, request)

        async def late() -> AsyncIterator[Any]:
            async for message in call:
                await asyncio.sleep(self.delay)
                yield message

        return late()


async def counted_client(address: str, **options: Any) -> tuple[HubClient, Calls]:
    calls = Calls()
    channel = grpc.aio.insecure_channel(address, interceptors=[calls, calls.streams])
    return HubClient(address, channel=channel, timeout=5, **options), calls


@pytest.fixture
async def admin(hub: Hub) -> AsyncIterator[HubClient]:
    async with HubClient(hub.address, timeout=5, resolution="remote") as c:
        yield c


async def _fleet(admin: HubClient, service: str, n: int) -> None:
    for i in range(n):
        await admin.register(service, instance_id=f"i{i}", host="10.0.0.1", port=9000 + i)


def _ids(found: Any) -> list[str]:
    return sorted(i.instance_id for i in found.instances)


async def test_lookups_are_served_without_rpcs(hub: Hub, admin: HubClient) -> None:
    await _fleet(admin, "quotes", 3)
    local, calls = await counted_client(hub.address)
    try:
        first = await local.discover("quotes")
        assert _ids(first) == ["i0", "i1", "i2"]
        # Same model as GetService's: every field the remote answer has.
        remote = await local.discover("quotes", fresh=True)
        assert [i.instance_id for i in first.instances] == [i.instance_id for i in remote.instances]
        for a, b in zip(first.instances, remote.instances, strict=True):
            assert (a.protocol, a.metadata, a.resource_tier, a.lease_id, a.revision) == (
                b.protocol, b.metadata, b.resource_tier, b.lease_id, b.revision,
            )  # fmt: skip
            assert a.health is not None and a.health.status == "healthy"
        before = calls.count.copy()
        assert before["WatchEndpoints"] == 1
        for _ in range(200):
            await local.discover("quotes")
            await local.pick("quotes")
            await local.pick("quotes", strategy="round_robin")
        assert calls.count == before  # not one more RPC
        age = await local.view_age("quotes")
        assert age == 0.0
    finally:
        await local.close()
        await local.channel.close()


async def test_a_change_reaches_the_view_and_own_registrations_are_read(
    hub: Hub, admin: HubClient
) -> None:
    await _fleet(admin, "bars", 1)
    async with HubClient(hub.address, timeout=5) as local:
        assert _ids(await local.discover("bars")) == ["i0"]
        # Someone else's change arrives by the stream.
        await admin.register("bars", instance_id="late", host="10.0.0.2", port=1)
        await eventually(lambda: _has(local, "bars", "late"))
        reg = await admin.register("bars", instance_id="gone", host="10.0.0.2", port=2)
        await eventually(lambda: _has(local, "bars", "gone"))
        await reg.deregister()
        await eventually(lambda: _lacks(local, "bars", "gone"))
        # Read-your-writes: the lookup right after this client's register() sees it.
        for n in range(5):
            await local.register("bars", instance_id=f"mine{n}", host="10.0.0.3", port=n + 1)
            assert f"mine{n}" in _ids(await local.discover("bars"))
            picked = {(await local.pick("bars", strategy="round_robin")).instance_id
                      for _ in range(20)}  # fmt: skip
            assert f"mine{n}" in picked


async def _has(c: HubClient, service: str, instance_id: str) -> bool:
    return instance_id in _ids(await c.discover(service))


async def _lacks(c: HubClient, service: str, instance_id: str) -> bool:
    return instance_id not in _ids(await c.discover(service))


async def test_hub_stopped_last_view_serves_and_ages_until_max_age(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory()
    admin = HubClient(hub.address, timeout=5)  # (not closed: it would deregister)
    await _fleet(admin, "risk", 2)
    async with HubClient(hub.address, timeout=2, max_view_age=3.0) as local:
        assert _ids(await local.discover("risk")) == ["i0", "i1"]
        assert await local.view_age("risk") == 0.0
        await hub.stop()
        await eventually(lambda: _aged(local, "risk", 0.5))
        # Still served, from the last snapshot, without the hub.
        assert _ids(await local.discover("risk")) == ["i0", "i1"]
        assert (await local.pick("risk")).instance_id in ("i0", "i1")
        await eventually(lambda: _aged(local, "risk", 3.2))
        with pytest.raises(ViewTooOld) as err:
            await local.discover("risk")
        assert err.value.age > 3.0
        with pytest.raises(ViewTooOld):
            await local.pick("risk")


async def _aged(c: HubClient, service: str, seconds: float) -> bool:
    age = await c.view_age(service)
    return age is not None and age > seconds


async def test_push_empty_protection_hub_restarted_on_an_empty_etcd(
    hub_factory: HubFactory, etcd_store: EtcdStore, tmp_path: Path
) -> None:
    first = await hub_factory()
    admin = HubClient(first.address, timeout=5)
    await _fleet(admin, "fx", 2)
    # The session etcd's history runs well past what a fresh etcd starts with.
    for n in range(300):
        await etcd_store.put(b"/hub-test/filler", str(n).encode())
    async with HubClient(first.address, timeout=2) as local:
        assert _ids(await local.discover("fx")) == ["i0", "i1"]
        held = (await local.discover("fx")).revision
        address = first.address
        await first.stop()
        fresh = EtcdProcess(tmp_path / "fresh-etcd")
        fresh.start()
        try:
            # A hub on an empty etcd, where the first one listened: it says the
            # service is not there, at a revision older than the view's.
            await hub_factory(endpoints=[fresh.endpoint], listen=address)
            await eventually(lambda: _protected(local, "fx"))
            found = await local.discover("fx")
            assert _ids(found) == ["i0", "i1"] and found.revision == held
            assert (await local.pick("fx")).instance_id in ("i0", "i1")
            await eventually(lambda: _aged(local, "fx", 0.5))  # not confirmed by a current hub
        finally:
            fresh.stop()


async def test_push_empty_protection_etcd_cut_then_really_emptied(
    hub_factory: HubFactory, etcd: EtcdProcess
) -> None:
    bridge = Bridge(etcd.client_port)
    await bridge.start()
    try:
        hub = await hub_factory(endpoints=[bridge.endpoint])
        admin = HubClient(hub.address, timeout=5, resolution="remote")
        regs = [
            await admin.register("ticks", instance_id=f"i{i}", host="h", port=i + 1, ttl=60)
            for i in range(2)
        ]
        async with HubClient(hub.address, timeout=2) as local:
            assert _ids(await local.discover("ticks")) == ["i0", "i1"]
            await bridge.cut()
            # The hub ends the stream (its view no longer follows etcd): the
            # client keeps its endpoints and says how old they are.
            await eventually(lambda: _aged(local, "ticks", 0.3), timeout=20)
            assert _ids(await local.discover("ticks")) == ["i0", "i1"]
            await bridge.restore()
            await eventually(lambda: _fresh(local, "ticks"), timeout=20)
            # Really emptied: the hub says the service is gone (visible false,
            # at a newer revision): the view empties, and a lookup gets the
            # hub's answer.
            for reg in regs:
                await reg.deregister()
            await eventually(lambda: _gone(local, "ticks"))
            with pytest.raises(ServiceNotFound):
                await local.discover("ticks")
            with pytest.raises(ServiceNotFound):
                await local.pick("ticks")
        await admin.close()
    finally:
        await bridge.close()


async def test_push_empty_protection_every_instance_unhealthy(hub: Hub, admin: HubClient) -> None:
    server = GrpcServer()
    await server.start()
    try:
        await admin.register("probed", instance_id="only", host="127.0.0.1", port=server.port,
                             protocol="grpc", health=health_check(grpc_service="", interval=0.2,
                                                                  timeout=0.5))  # fmt: skip
        async with HubClient(hub.address, timeout=5) as local:
            await eventually(lambda: _has(local, "probed", "only"))
            await server.set_serving(False)
            # The hub's probes fail (as they would if the hub lost the network):
            # its snapshot is empty with the service visible and its circuit
            # closed; the view keeps its instance, the hub itself answers none.
            await eventually(lambda: _protected(local, "probed"))
            assert _ids(await local.discover("probed")) == ["only"]
            assert (await local.pick("probed")).instance_id == "only"
            assert await local.view_age("probed") == 0.0
            assert _ids(await local.discover("probed", fresh=True)) == []
            with pytest.raises(NoEligibleInstance):
                await local.pick("probed", fresh=True)
            await server.set_serving(True)
            await eventually(lambda: _protected(local, "probed", False))
            assert _ids(await local.discover("probed")) == ["only"]
    finally:
        await server.stop()


async def _protected(c: HubClient, service: str, protected: bool = True) -> bool:
    state = await c.view_state(service)
    return state is not None and state.protected is protected


async def _gone(c: HubClient, service: str) -> bool:
    state = await c.view_state(service)
    assert state is not None
    return not state.visible and not state.endpoints and not state.protected


async def _fresh(c: HubClient, service: str) -> bool:
    return await c.view_age(service) == 0.0


async def test_remote_mode_and_fresh_call_the_hub_every_time(hub: Hub, admin: HubClient) -> None:
    await _fleet(admin, "orders", 2)
    remote, calls = await counted_client(hub.address, resolution="remote")
    try:
        for _ in range(5):
            assert _ids(await remote.discover("orders")) == ["i0", "i1"]
            await remote.pick("orders")
        assert calls.count["GetService"] == 5 and calls.count["PickEndpoint"] == 5
        assert calls.count["WatchEndpoints"] == 0
        assert await remote.view_age("orders") is None
    finally:
        await remote.close()
        await remote.channel.close()
    local, calls = await counted_client(hub.address)
    try:
        await local.discover("orders")
        before = calls.count["GetService"]
        await local.discover("orders", fresh=True)
        await local.pick("orders", fresh=True)
        # include_unhealthy lists what a usable-endpoint view does not hold.
        await local.discover("orders", include_unhealthy=True)
        assert calls.count["GetService"] == before + 2 and calls.count["PickEndpoint"] == 1
    finally:
        await local.close()
        await local.channel.close()
    with pytest.raises(Exception, match="resolution"):
        HubClient(hub.address, resolution="sometimes")


async def test_tier_contexts_get_their_own_views(hub: Hub, admin: HubClient) -> None:
    await admin.register("alpha", instance_id="open", host="h", port=1)
    await admin.register("alpha", instance_id="premium", host="h", port=2,
                         subscription_requirements=["enterprise"])  # fmt: skip
    await admin.create_tenant("acme", tier="enterprise")
    await admin.create_tenant("corner", tier="free")
    async with HubClient(hub.address, tenant_id="acme", timeout=5) as acme:
        corner = acme.with_context(tenant_id="corner")
        assert _ids(await acme.discover("alpha")) == ["open", "premium"]
        assert _ids(await corner.discover("alpha")) == ["open"]
        assert {(await corner.pick("alpha", strategy="round_robin")).instance_id
                for _ in range(10)} == {"open"}  # fmt: skip
        assert len(acme._views._views) == 2  # one view per context, shared by clones
        await admin.set_tier("acme", "free")
        await eventually(lambda: _lacks(acme, "alpha", "premium"))


async def test_local_picks_agree_with_pick_endpoint(hub: Hub, admin: HubClient) -> None:
    await _fleet(admin, "books", 6)
    await admin.report_load("books", "i3", 0.05)
    for i in (0, 1, 2, 4, 5):
        await admin.report_load("books", f"i{i}", 0.5)
    async with HubClient(hub.address, timeout=5, user_id="trader-7") as local:
        await eventually(lambda: _loaded(local, "books"))
        for n in range(40):
            key = f"user-{n}"
            mine = await local.pick("books", strategy=Strategy.CONSISTENT_HASH, affinity_key=key)
            theirs = await local.pick("books", strategy="consistent_hash", affinity_key=key,
                                      fresh=True)  # fmt: skip
            assert mine.instance_id == theirs.instance_id
            assert mine.instance == theirs.instance
        # Least load with one instance clearly lowest: both choose it.
        assert (await local.pick("books", strategy="least_load")).instance_id == "i3"
        assert (await local.pick("books", strategy="least_load", fresh=True)).instance_id == "i3"
        # No strategy named: the service's routing policy's, on the user id.
        await admin.set_routing_policy("books", RoutingPolicy(strategy=Strategy.CONSISTENT_HASH))
        await eventually(lambda: _policy(local, "books", Strategy.CONSISTENT_HASH))
        assert (await local.pick("books")).instance_id == (
            await local.pick("books", fresh=True)
        ).instance_id
        with pytest.raises(Exception, match="strategy"):
            await local.pick("books", strategy="fastest")


async def _loaded(c: HubClient, service: str) -> bool:
    await c.discover(service)
    view = c._views.find(c._transport, service, False)
    snap = view.snapshot if view else None
    return snap is not None and any(e.load > 0 for e in snap.endpoints)


async def _policy(c: HubClient, service: str, strategy: Strategy) -> bool:
    await c.discover(service)
    view = c._views.find(c._transport, service, False)
    return (
        view is not None
        and view.snapshot is not None
        and (view.snapshot.policy.strategy is strategy)
    )


async def test_errors_come_from_the_hub(hub: Hub, admin: HubClient) -> None:
    async with HubClient(hub.address, timeout=5) as local:
        # A bad name: the stream's INVALID_ARGUMENT.
        with pytest.raises(Exception, match="service"):
            await local.discover("Bad Name")
        # An unknown service: the hub's NotFound.
        with pytest.raises(ServiceNotFound):
            await local.discover("nothing")
        with pytest.raises(ServiceNotFound):
            await local.pick("nothing")


async def test_idle_views_close(hub: Hub, admin: HubClient) -> None:
    await _fleet(admin, "idle", 1)
    async with HubClient(hub.address, timeout=5, view_idle_timeout=0.5) as local:
        await local.discover("idle")
        assert await local.view_age("idle") == 0.0
        await eventually(lambda: _closed(local, "idle"))
        assert _ids(await local.discover("idle")) == ["i0"]  # opened again


async def _closed(c: HubClient, service: str) -> bool:
    await asyncio.sleep(0)
    return await c.view_age(service) is None


async def test_the_sync_client_resolves_locally(hub: Hub, admin: HubClient) -> None:
    await _fleet(admin, "blocking", 2)

    def work() -> None:
        with sync.HubClient(hub.address, timeout=5) as c:
            assert c.view_age("blocking") is None
            assert _ids(c.discover("blocking")) == ["i0", "i1"]
            assert c.view_age("blocking") == 0.0
            c.register("blocking", instance_id="mine", host="10.0.0.9", port=9)
            assert "mine" in _ids(c.discover("blocking"))  # read-your-writes
            state = c.view_state("blocking")
            assert state is not None and state.endpoints == 3 and not state.protected

    await asyncio.to_thread(work)


async def test_a_lookup_waiting_for_its_own_registration_keeps_to_its_timeout(
    hub: Hub, admin: HubClient
) -> None:
    await admin.register("gamma", instance_id="open", host="h", port=1)
    await admin.create_tenant("corner", tier="free")
    async with HubClient(hub.address, tenant_id="corner", timeout=5) as corner:
        assert _ids(await corner.discover("gamma")) == ["open"]  # the view is open
        # Its own registration that it may not use never reaches its view: the
        # lookup waits for it, then asks the hub, both within the one timeout.
        await corner.register("gamma", instance_id="premium", host="h", port=2,
                              subscription_requirements=["enterprise"])  # fmt: skip
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert _ids(await corner.discover("gamma", timeout=1.0)) == ["open"]
        assert loop.time() - started < 1.0  # the wait took half, the hub the rest


async def test_own_writes_are_read_through_a_lagging_view(hub: Hub, admin: HubClient) -> None:
    await _fleet(admin, "late", 1)
    channel = grpc.aio.insecure_channel(hub.address, interceptors=[_LateStreams(0.3)])
    async with HubClient(hub.address, channel=channel, timeout=5) as local:
        assert _ids(await local.discover("late")) == ["i0"]
        for n in range(3):
            mine = await local.register("late", instance_id=f"mine{n}", host="10.0.0.5", port=n + 1)
            assert f"mine{n}" in _ids(await local.discover("late"))
            await mine.deregister()
            assert f"mine{n}" not in _ids(await local.discover("late"))
            assert (await local.pick("late")).instance_id == "i0"
