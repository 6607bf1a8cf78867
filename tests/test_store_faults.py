"""The hub against an etcd that goes away and comes back: health, errors, its own
watch and lease keep-alives resuming, and state kept across hub restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from aitrading.hub.v1 import registry_pb2, registry_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hub_client import EventType, HubClient, Unavailable
from hub_server.embedded_etcd import EtcdProcess
from hub_server.kernel.errors import Compacted
from hub_server.store.etcd import EtcdStore
from tests.support.hubs import HubFactory
from tests.support.waiting import eventually


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    """An etcd of this test's own, which it may stop and restart."""
    proc = EtcdProcess(tmp_path / "etcd")
    proc.start()
    yield proc
    proc.stop()


async def _health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        resp = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=2
        )
        return int(resp.status)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_etcd_down_is_not_serving_and_unavailable_then_recovers(
    hub_factory: HubFactory, private_etcd: EtcdProcess
) -> None:
    hub = await hub_factory(endpoints=[private_etcd.endpoint])
    assert await _health(hub.address) == SERVING
    async with HubClient(hub.address, timeout=3) as client:
        reg = await client.register("quotes", host="q", port=1, ttl=5)
        seen: list[tuple[EventType, str, int]] = []

        async def follow() -> None:
            async for e in client.watch("quotes"):
                seen.append((e.type, e.instance.instance_id, e.revision))

        watcher = asyncio.create_task(follow())
        await eventually(lambda: len(seen) == 1)

        await asyncio.to_thread(private_etcd.stop)
        await eventually(lambda: _is(hub.address, NOT_SERVING), timeout=10)
        with pytest.raises(Unavailable):
            await client.discover("quotes")
        with pytest.raises(Unavailable):
            await client.register("quotes", host="q", port=2, keep_alive=False)

        await asyncio.sleep(1.0)  # the keep-alive loop fails meanwhile
        await private_etcd.start_async()
        await eventually(lambda: _is(hub.address, SERVING), timeout=15)

        # State survived; the lease is kept alive again; the watch resumed.
        assert [i.instance_id for i in (await client.discover("quotes")).instances] == ["q-1"]
        renewals = reg.renewals
        await eventually(lambda: reg.renewals > renewals, timeout=10)
        await client.register("quotes", host="q", port=3, keep_alive=False)
        await eventually(lambda: len(seen) == 2, timeout=10)
        assert seen[1][:2] == (EventType.ADDED, "q-3")
        watcher.cancel()
        revisions = [r for _, _, r in seen]
        assert revisions == sorted(set(revisions))


async def _is(address: str, status: int) -> bool:
    try:
        return await _health(address) == status
    except grpc.aio.AioRpcError:
        return False


async def test_lease_survives_etcd_restart_with_keep_alive(
    hub_factory: HubFactory, private_etcd: EtcdProcess
) -> None:
    hub = await hub_factory(endpoints=[private_etcd.endpoint])
    async with HubClient(hub.address, timeout=3) as client:
        reg = await client.register("ticks", host="t", port=1, ttl=4)
        await asyncio.to_thread(private_etcd.stop)
        await asyncio.sleep(1.5)
        await private_etcd.start_async()
        await asyncio.sleep(6)  # longer than the TTL: only renewals keep it
        svc = await client.discover("ticks")
        assert [i.instance_id for i in svc.instances] == ["t-1"]
        assert reg.renewals >= 2


async def test_hub_restart_keeps_registered_state(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    async with HubClient(hub.address) as client:
        await client.call(
            client.registry_stub.Register,
            registry_pb2.RegisterRequest(
                service="risk", host="r", port=7, version="3.1.0", metadata={"k": "v"}
            ),
        )
    await hub.stop()
    hub2 = await hub_factory()
    async with HubClient(hub2.address) as client:
        after = (await client.discover("risk")).instances
    assert [(i.instance_id, i.version, i.metadata) for i in after] == [("r-7", "3.1.0", {"k": "v"})]


async def test_keep_alive_during_an_outage_says_what_other_rpcs_say(
    hub_factory: HubFactory, private_etcd: EtcdProcess
) -> None:
    hub = await hub_factory(endpoints=[private_etcd.endpoint])
    etcd_port = private_etcd.endpoint.rpartition(":")[2]
    async with HubClient(hub.address, timeout=3) as client:
        reg = await client.register("quotes", host="q", port=1, ttl=30, keep_alive=False)
        assert reg.instance is not None
        await asyncio.to_thread(private_etcd.stop)
        await eventually(lambda: _is(hub.address, NOT_SERVING), timeout=10)
        async with grpc.aio.insecure_channel(hub.address) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as kept:
                await stub.KeepAlive(
                    registry_pb2.KeepAliveRequest(
                        service="quotes",
                        instance_id=reg.instance.instance_id,
                        lease_id=reg.instance.lease_id,
                    ),
                    timeout=10,
                )
            with pytest.raises(grpc.aio.AioRpcError) as got:
                await stub.GetService(registry_pb2.GetServiceRequest(service="quotes"), timeout=10)
        assert kept.value.code() == got.value.code() == grpc.StatusCode.UNAVAILABLE
        assert kept.value.details() == got.value.details(), kept.value.details()
        assert "not current" in kept.value.details()
        assert etcd_port not in kept.value.details()
        await private_etcd.start_async()


async def test_compacted_revision_reports_etcd_compact_revision(
    hub_factory: HubFactory, private_etcd: EtcdProcess
) -> None:
    store = EtcdStore([private_etcd.endpoint])
    try:
        first = await store.put(b"/t/k", b"0")
        for i in range(5):
            await store.put(b"/t/k", str(i).encode())
        compact = await store.put(b"/t/k", b"x")
        await store.compact(compact)
        with pytest.raises(Compacted) as old:
            await store.get_page(b"/t/", b"/t0", revision=first)
        assert old.value.compact_revision == compact
        # A revision in the future is etcd's other OUT_OF_RANGE: not a compaction.
        with pytest.raises(grpc.aio.AioRpcError) as future:
            await store.get_page(b"/t/", b"/t0", revision=compact + 100)
        assert future.value.code() == grpc.StatusCode.OUT_OF_RANGE

        # A hub started after the compaction: a Watch from before it is told to
        # resync from the real compact revision.
        hub = await hub_factory(endpoints=[private_etcd.endpoint])
        async with grpc.aio.insecure_channel(hub.address) as channel:
            call = registry_pb2_grpc.RegistryServiceStub(channel).Watch(
                registry_pb2.WatchRequest(start_revision=first)
            )
            resp = await asyncio.wait_for(call.read(), 10)
            call.cancel()
        assert resp.kind == registry_pb2.WATCH_RESPONSE_KIND_RESYNC_REQUIRED
        assert resp.compact_revision == compact
    finally:
        await store.close()
