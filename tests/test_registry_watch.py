"""Registry Watch: snapshot, events, progress, resume by revision, resync after
compaction, hub restarts, slow readers; and the hub's own etcd watch surviving a
partition with compaction in between."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from aitrading.hub.v1 import registry_pb2, registry_pb2_grpc

from hub_client import EventType, HubClient
from hub_server.embedded_etcd import free_port
from hub_server.store.etcd import EtcdStore
from tests.support.bridge import Bridge
from tests.support.hubs import HubFactory
from tests.support.waiting import eventually

SNAPSHOT = registry_pb2.WATCH_RESPONSE_KIND_SNAPSHOT
EVENTS = registry_pb2.WATCH_RESPONSE_KIND_EVENTS
PROGRESS = registry_pb2.WATCH_RESPONSE_KIND_PROGRESS
RESYNC = registry_pb2.WATCH_RESPONSE_KIND_RESYNC_REQUIRED


def _stub(address: str) -> tuple[grpc.aio.Channel, registry_pb2_grpc.RegistryServiceStub]:
    channel = grpc.aio.insecure_channel(address)
    return channel, registry_pb2_grpc.RegistryServiceStub(channel)


async def _register(stub, service: str, port: int, **kw) -> registry_pb2.RegisterResponse:  # type: ignore[no-untyped-def]
    return await stub.Register(
        registry_pb2.RegisterRequest(service=service, host="h", port=port, **kw)
    )


async def test_snapshot_then_events_then_progress(hub) -> None:  # type: ignore[no-untyped-def]
    channel, stub = _stub(hub.address)
    async with channel:
        first = await _register(stub, "orders", 1)
        call = stub.Watch(registry_pb2.WatchRequest(service="orders"))
        snap = await call.read()
        assert snap.kind == SNAPSHOT and not snap.more
        assert [i.instance_id for i in snap.instances] == ["h-1"]
        assert snap.header.revision >= first.header.revision

        added = await _register(stub, "orders", 2)
        await _register(stub, "other", 3)  # filtered out
        await stub.Deregister(registry_pb2.DeregisterRequest(service="orders", instance_id="h-1"))
        got = []
        while len(got) < 2:
            msg = await call.read()
            if msg.kind == EVENTS:
                got.extend(msg.events)
        assert [(e.type, e.instance.instance_id) for e in got] == [
            (registry_pb2.WATCH_EVENT_TYPE_ADDED, "h-2"),
            (registry_pb2.WATCH_EVENT_TYPE_REMOVED, "h-1"),
        ]
        assert got[0].revision == added.header.revision
        assert got[1].instance.host == "h"  # REMOVED carries the instance as it was
        # Idle: progress messages keep coming with a resume point.
        msg = await asyncio.wait_for(call.read(), 3)
        assert msg.kind == PROGRESS and msg.header.revision >= got[1].revision
        call.cancel()


async def test_resume_from_revision_misses_nothing(hub) -> None:  # type: ignore[no-untyped-def]
    channel, stub = _stub(hub.address)
    async with channel:
        r1 = await _register(stub, "md", 1)
        r2 = await _register(stub, "md", 2)
        r3 = await _register(stub, "md", 3)
        call = stub.Watch(
            registry_pb2.WatchRequest(service="md", start_revision=r2.header.revision)
        )
        msg = await call.read()
        assert msg.kind == EVENTS
        assert [e.revision for e in msg.events] == [r2.header.revision, r3.header.revision]
        assert r1.header.revision not in [e.revision for e in msg.events]
        call.cancel()


async def test_resume_after_hub_restart(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    channel, stub = _stub(hub.address)
    async with channel:
        r1 = await _register(stub, "md", 1)
        r2 = await _register(stub, "md", 2)
    await hub.stop()
    # A new replica has never seen these events, but loads recent history.
    hub2 = await hub_factory()
    channel, stub = _stub(hub2.address)
    async with channel:
        call = stub.Watch(
            registry_pb2.WatchRequest(service="md", start_revision=r1.header.revision)
        )
        msg = await call.read()
        assert [e.revision for e in msg.events] == [r1.header.revision, r2.header.revision]
        call.cancel()


async def test_compacted_revision_gets_resync_required(
    hub_factory: HubFactory, etcd_store: EtcdStore
) -> None:
    hub = await hub_factory()
    channel, stub = _stub(hub.address)
    async with channel:
        r1 = await _register(stub, "md", 1)
        r2 = await _register(stub, "md", 2)
    await hub.stop()
    await etcd_store.compact(r2.header.revision)
    hub2 = await hub_factory()
    channel, stub = _stub(hub2.address)
    async with channel:
        call = stub.Watch(
            registry_pb2.WatchRequest(service="md", start_revision=r1.header.revision)
        )
        msg = await call.read()
        assert msg.kind == RESYNC
        assert msg.compact_revision > r1.header.revision
        assert await call.read() is grpc.aio.EOF  # the stream ends


async def test_client_watch_survives_hub_restart_without_loss_or_repeat(
    hub_factory: HubFactory,
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    hub = await hub_factory(listen=listen)
    seen: list[tuple[EventType, str, int]] = []
    async with HubClient(listen) as client:
        await client.register("feed", host="a", port=1, keep_alive=False)

        async def follow() -> None:
            async for e in client.watch("feed"):
                seen.append((e.type, e.instance.instance_id, e.revision))

        task = asyncio.create_task(follow())
        await eventually(lambda: len(seen) == 1)
        await hub.stop()
        # Changes while no hub serves: written straight through another replica later.
        hub2 = await hub_factory()
        channel, stub = _stub(hub2.address)
        async with channel:
            await stub.Register(registry_pb2.RegisterRequest(service="feed", host="b", port=2))
            await stub.Deregister(registry_pb2.DeregisterRequest(service="feed", instance_id="a-1"))
        await hub2.stop()
        await hub_factory(listen=listen)
        await client.register("feed", host="c", port=3, keep_alive=False)
        await eventually(lambda: len(seen) == 4)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [(t, i) for t, i, _ in seen] == [
        (EventType.ADDED, "a-1"),
        (EventType.ADDED, "b-2"),
        (EventType.REMOVED, "a-1"),
        (EventType.ADDED, "c-3"),
    ]
    revisions = [r for _, _, r in seen]
    assert revisions == sorted(set(revisions))


async def test_client_watch_resyncs_after_compaction_with_only_the_difference(
    hub_factory: HubFactory, etcd_store: EtcdStore
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    hub = await hub_factory(listen=listen)
    seen: list[tuple[EventType, str, bool]] = []
    async with HubClient(listen) as client:
        await client.register("feed", host="a", port=1, keep_alive=False)
        await client.register("feed", host="b", port=2, keep_alive=False)

        async def follow() -> None:
            async for e in client.watch("feed"):
                seen.append((e.type, e.instance.instance_id, e.initial))

        task = asyncio.create_task(follow())
        await eventually(lambda: len(seen) == 2)
        await hub.stop()
        hub2 = await hub_factory()
        channel, stub = _stub(hub2.address)
        async with channel:
            await stub.Deregister(registry_pb2.DeregisterRequest(service="feed", instance_id="a-1"))
            reg = await stub.Register(
                registry_pb2.RegisterRequest(service="feed", host="c", port=3)
            )
        await hub2.stop()
        await etcd_store.compact(reg.header.revision)
        await hub_factory(listen=listen)
        await eventually(lambda: len(seen) == 4)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert set(seen[:2]) == {(EventType.ADDED, "a-1", True), (EventType.ADDED, "b-2", True)}
    assert set(seen[2:]) == {(EventType.ADDED, "c-3", False), (EventType.REMOVED, "a-1", False)}


async def test_slow_reader_stalls_nobody_and_is_told_to_resync(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory()
    hub.services.view.log.capacity = 200  # a small history, so the slow reader falls off it
    channel, stub = _stub(hub.address)
    # No BDP probing: the slow client's window stays small, so the hub's sends to
    # it block as soon as it stops reading.
    slow_channel = grpc.aio.insecure_channel(hub.address, options=[("grpc.http2.bdp_probe", 0)])
    slow_stub = registry_pb2_grpc.RegistryServiceStub(slow_channel)
    async with channel, slow_channel:
        slow = slow_stub.Watch(registry_pb2.WatchRequest())
        assert (await slow.read()).kind == SNAPSHOT
        fast = stub.Watch(registry_pb2.WatchRequest())
        assert (await fast.read()).kind == SNAPSHOT
        big = {f"blob{i}": "x" * 500 for i in range(8)}
        fast_seen = 0
        for i in range(400):
            await _register(stub, "bulk", 1000 + i, metadata=big, ttl_seconds=60)
        while fast_seen < 400:
            msg = await asyncio.wait_for(fast.read(), 5)
            fast_seen += len(msg.events)

        # The slow reader now reads: what was still queued for it, then RESYNC.
        async def drain() -> list[int]:
            kinds = []
            while not kinds or kinds[-1] != RESYNC:
                msg = await slow.read()
                assert msg is not grpc.aio.EOF
                kinds.append(msg.kind)
            return kinds

        kinds = await asyncio.wait_for(drain(), 15)
        assert kinds[-1] == RESYNC
        assert await slow.read() is grpc.aio.EOF
        fast.cancel()


async def test_hub_watch_resyncs_after_partition_with_compaction(
    hub_factory: HubFactory,
    etcd,
    etcd_store: EtcdStore,  # type: ignore[no-untyped-def]
) -> None:
    bridge = Bridge(etcd.client_port)
    await bridge.start()
    try:
        hub = await hub_factory(endpoints=[bridge.endpoint])
        channel, stub = _stub(hub.address)
        async with channel:
            await _register(stub, "feed", 1, ttl_seconds=60)
            await _register(stub, "feed", 2, ttl_seconds=60)
            call = stub.Watch(registry_pb2.WatchRequest(service="feed"))
            assert len((await call.read()).instances) == 2
            await bridge.cut()
            # While the hub cannot see etcd: one removal, one addition, a compaction.
            from hub_server.store import keys

            await etcd_store.delete(keys.instance_key("feed", "h-1"))
            other = registry_pb2.RegisterRequest(service="feed", host="h", port=3)
            from hub_server.registry.service import validate_registration

            inst = validate_registration(other)
            rev = await etcd_store.put(keys.instance_key("feed", "h-3"), inst.SerializeToString())
            await etcd_store.compact(rev)
            await bridge.restore()
            events = []
            while len(events) < 2:
                msg = await asyncio.wait_for(call.read(), 15)
                events.extend(msg.events)
            assert sorted((e.type, e.instance.instance_id) for e in events) == [
                (registry_pb2.WATCH_EVENT_TYPE_ADDED, "h-3"),
                (registry_pb2.WATCH_EVENT_TYPE_REMOVED, "h-1"),
            ]
            svc = await stub.GetService(registry_pb2.GetServiceRequest(service="feed"))
            assert [i.instance_id for i in svc.service.instances] == ["h-2", "h-3"]
            call.cancel()
    finally:
        await bridge.close()


async def test_progress_after_a_future_start_revision_is_never_ahead_of_the_store(hub) -> None:  # type: ignore[no-untyped-def]
    channel, stub = _stub(hub.address)
    async with channel:
        now = (await _register(stub, "ahead-other", 1)).header.revision
        call = stub.Watch(registry_pb2.WatchRequest(service="ahead", start_revision=now + 50))
        progress = await asyncio.wait_for(call.read(), 10)
        call.cancel()
        assert progress.kind == PROGRESS
        listed = await stub.ListServices(registry_pb2.ListServicesRequest())
        assert progress.header.revision <= listed.header.revision
        # Resuming from it misses nothing that came after.
        resumed = stub.Watch(
            registry_pb2.WatchRequest(service="ahead", start_revision=progress.header.revision + 1)
        )
        added = await _register(stub, "ahead", 2)
        msg = await asyncio.wait_for(resumed.read(), 10)
        while msg.kind == PROGRESS:
            msg = await asyncio.wait_for(resumed.read(), 10)
        resumed.cancel()
        assert msg.kind == EVENTS
        assert [e.revision for e in msg.events] == [added.header.revision]


async def test_every_watch_reports_progress_the_store_has_reached(hub) -> None:  # type: ignore[no-untyped-def]
    from aitrading.hub.v1 import circuit_pb2, circuit_pb2_grpc, health_pb2, health_pb2_grpc

    channel, stub = _stub(hub.address)
    async with channel:
        now = (await _register(stub, "ahead-any", 1)).header.revision
        ahead = now + 50
        for call in (
            health_pb2_grpc.HealthServiceStub(channel).WatchHealth(
                health_pb2.WatchHealthRequest(start_revision=ahead)
            ),
            circuit_pb2_grpc.CircuitBreakerServiceStub(channel).WatchCircuits(
                circuit_pb2.WatchCircuitsRequest(start_revision=ahead)
            ),
        ):
            progress = await asyncio.wait_for(call.read(), 10)
            call.cancel()
            assert progress.kind == PROGRESS
            listed = await stub.ListServices(registry_pb2.ListServicesRequest())
            assert progress.header.revision <= listed.header.revision
