"""Active health monitoring against real HTTP, gRPC and TCP servers, and the
elected replica doing it alone."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import pytest
from aitrading.hub.v1 import (
    cluster_pb2,
    cluster_pb2_grpc,
    health_pb2,
    health_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    types_pb2,
)

from hub_client import HubClient, health_check
from hub_server.app import Hub
from hub_server.rpc.streaming import MergedLog
from hub_server.store.event_log import EventLog
from hub_server.store.mirror import ADDED, Change
from tests.support.hubs import HubFactory, crash
from tests.support.servers import GrpcServer, HttpServer, TcpServer
from tests.support.waiting import eventually

FAST = dict(interval=0.2, timeout=0.5)


async def _health(address: str, service: str) -> dict[str, types_pb2.InstanceHealth]:
    async with grpc.aio.insecure_channel(address) as ch:
        resp = await health_pb2_grpc.HealthServiceStub(ch).GetHealth(
            health_pb2.GetHealthRequest(service=service)
        )
    return {r.instance_id: r for r in resp.instances}


async def _status_is(address: str, service: str, instance_id: str, status: int) -> bool:
    record = (await _health(address, service)).get(instance_id)
    return record is not None and record.status == status


async def test_probe_kinds_and_lease_only(hub: Hub, client: HubClient) -> None:
    http, grpc_srv, tcp = HttpServer(), GrpcServer(), TcpServer()
    for s in (http, grpc_srv, tcp):
        await s.start()
    try:
        await client.register(
            "mixed", instance_id="h", host="127.0.0.1", port=http.port,
            health=health_check(http="/health", **FAST),
        )  # fmt: skip
        await client.register(
            "mixed", instance_id="g", host="127.0.0.1", port=grpc_srv.port, protocol="grpc",
            health=health_check(grpc_service="", **FAST),
        )  # fmt: skip
        await client.register(
            "mixed", instance_id="t", host="127.0.0.1", port=tcp.port, protocol="tcp",
            health=health_check(tcp=True, **FAST),
        )  # fmt: skip
        await client.register("mixed", instance_id="l", host="127.0.0.1", port=1)
        for iid in ("h", "g", "t"):
            await eventually(lambda iid=iid: _status_is(hub.address, "mixed", iid, 1))
        records = await _health(hub.address, "mixed")
        assert {k: r.check for k, r in records.items()} == {
            "h": "http", "g": "grpc", "t": "tcp", "l": "lease",
        }  # fmt: skip
        assert records["l"].status == types_pb2.HEALTH_STATUS_HEALTHY
        assert records["h"].latency_ms > 0 and records["h"].last_check.seconds > 0
        assert http.requests > 0
    finally:
        for s in (http, grpc_srv, tcp):
            await s.stop()


async def test_degraded_unhealthy_recovery_seen_on_watch(hub: Hub, client: HubClient) -> None:
    http = HttpServer()
    await http.start()
    statuses: list[int] = []
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = health_pb2_grpc.HealthServiceStub(ch)
        call = stub.WatchHealth(health_pb2.WatchHealthRequest(service="pricing"))

        async def follow() -> None:
            async for msg in call:
                for r in msg.instances:
                    if not statuses or statuses[-1] != r.status:
                        statuses.append(r.status)

        follower = asyncio.create_task(follow())
        try:
            await client.register(
                "pricing", host="127.0.0.1", port=http.port,
                health=health_check(http="/h", interval=0.2, timeout=1.0),
                metadata={"note": "x"},
            )  # fmt: skip
            H, D, U = (
                types_pb2.HEALTH_STATUS_HEALTHY,
                types_pb2.HEALTH_STATUS_DEGRADED,
                types_pb2.HEALTH_STATUS_UNHEALTHY,
            )
            await eventually(lambda: statuses[-1:] == [H])
            http.body = b'{"status": "degraded"}'  # the instance says so itself
            await eventually(lambda: statuses[-1:] == [D])
            http.body = b"{}"
            await eventually(lambda: statuses[-1:] == [H])
            await http.stop()  # dies: unhealthy after 3 failed probes
            await eventually(lambda: statuses[-1:] == [U])
            await http.start()
            await eventually(lambda: statuses[-1:] == [H])
            assert statuses[-4:] == [D, H, U, H]
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            await http.stop()


async def test_slow_instance_is_degraded(hub: Hub, client: HubClient) -> None:
    http = HttpServer()
    http.delay = 0.15
    await http.start()
    try:
        check = health_check(http="/h", interval=0.2, timeout=1.0)
        check.degraded_latency.FromMilliseconds(50)
        await client.register("slowpoke", host="127.0.0.1", port=http.port, health=check)
        await eventually(
            lambda: _status_is(hub.address, "slowpoke", f"127.0.0.1-{http.port}",
                               types_pb2.HEALTH_STATUS_DEGRADED)
        )  # fmt: skip
    finally:
        await http.stop()


async def test_discovery_answers_usable_instances_by_default(hub: Hub, client: HubClient) -> None:
    good, bad = GrpcServer(), GrpcServer()
    await good.start()
    await bad.start()
    await bad.set_serving(False)
    try:
        for srv, iid in ((good, "good"), (bad, "bad")):
            await client.register(
                "quotes", instance_id=iid, host="127.0.0.1", port=srv.port, protocol="grpc",
                health=health_check(grpc_service="", **FAST),
            )  # fmt: skip
        await eventually(lambda: _status_is(hub.address, "quotes", "bad", 3))
        await eventually(lambda: _status_is(hub.address, "quotes", "good", 1))
        svc = await client.discover("quotes")
        assert [i.instance_id for i in svc.instances] == ["good"]
        assert svc.instances[0].raw.health.status == types_pb2.HEALTH_STATUS_HEALTHY
        everything = await client.call(
            client.registry_stub.GetService,
            registry_pb2.GetServiceRequest(service="quotes", include_unhealthy=True),
        )
        assert [i.instance_id for i in everything.service.instances] == ["bad", "good"]
        # When every instance is unhealthy, discovery answers none rather than a failing one.
        await good.set_serving(False)
        await eventually(lambda: _status_is(hub.address, "quotes", "good", 3))
        # (The hub's answer: a local view keeps its last instances then, see
        # test_local_view's push-empty protection.)
        assert (await client.discover("quotes", fresh=True)).instances == []
    finally:
        await good.stop()
        await bad.stop()


async def _watch_statuses(address: str, service: str, statuses: list[int]) -> asyncio.Task[None]:
    """Follows WatchHealth of ``service``, appending each new status to ``statuses``."""

    async def follow() -> None:
        async with grpc.aio.insecure_channel(address) as ch:
            call = health_pb2_grpc.HealthServiceStub(ch).WatchHealth(
                health_pb2.WatchHealthRequest(service=service)
            )
            async for msg in call:
                for r in msg.instances:
                    if not statuses or statuses[-1] != r.status:
                        statuses.append(r.status)

    return asyncio.create_task(follow())


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_new_instance_is_starting_until_threshold_failures(
    hub: Hub, client: HubClient
) -> None:
    S, U = types_pb2.HEALTH_STATUS_STARTING, types_pb2.HEALTH_STATUS_UNHEALTHY
    http = HttpServer()  # has a port, never listens: the health endpoint does not answer
    statuses: list[int] = []
    follower = await _watch_statuses(hub.address, "warming", statuses)
    try:
        await client.register(
            "warming", instance_id="w", host="127.0.0.1", port=http.port,
            health=health_check(http="/health", interval=0.6, timeout=0.5),
        )  # fmt: skip
        # Not yet proven either way: STARTING, and discovery still answers it
        # (nothing HEALTHY or DEGRADED exists).
        await eventually(lambda: _status_is(hub.address, "warming", "w", S))
        svc = await client.discover("warming")
        assert [i.instance_id for i in svc.instances] == ["w"]
        assert svc.instances[0].raw.health.status == S
        # UNHEALTHY after the default 3 failures in a row, not after the first.
        await eventually(lambda: _status_is(hub.address, "warming", "w", U))
        record = (await _health(hub.address, "warming"))["w"]
        assert record.consecutive_failures >= 3
        await eventually(lambda: statuses[-1:] == [U])
        assert statuses == [S, U]
        assert (await client.discover("warming", fresh=True)).instances == []
    finally:
        await _stop(follower)


async def test_starting_instance_is_healthy_on_its_first_success(
    hub: Hub, client: HubClient
) -> None:
    S, H = types_pb2.HEALTH_STATUS_STARTING, types_pb2.HEALTH_STATUS_HEALTHY
    http = HttpServer()
    statuses: list[int] = []
    follower = await _watch_statuses(hub.address, "boot", statuses)
    try:
        await client.register(
            "boot", instance_id="b", host="127.0.0.1", port=http.port,
            health=health_check(http="/health", interval=0.5, timeout=0.5),
        )  # fmt: skip
        await eventually(lambda: statuses[-1:] == [S])
        await http.start()  # comes up after one or two failed probes
        await eventually(lambda: statuses[-1:] == [H])
        # Proven by one success: healthy_threshold (2) is for recovering from UNHEALTHY.
        assert statuses == [S, H]
    finally:
        await _stop(follower)
        await http.stop()


async def _cluster(address: str) -> cluster_pb2.GetClusterStatusResponse:
    async with grpc.aio.insecure_channel(address) as ch:
        return await cluster_pb2_grpc.ClusterServiceStub(ch).GetClusterStatus(
            cluster_pb2.GetClusterStatusRequest()
        )


async def test_only_the_leader_probes_and_another_takes_over(hub_factory: HubFactory) -> None:
    a = await hub_factory(election_ttl=2)
    b = await hub_factory(election_ttl=2)
    await eventually(lambda: a.services.election.is_leader or b.services.election.is_leader)
    leader, follower = (a, b) if a.services.election.is_leader else (b, a)
    await eventually(lambda: follower.services.election.leader_id == leader.hub_id)
    status = await _cluster(follower.address)
    assert status.leader_id == leader.hub_id
    assert {r.hub_id for r in status.replicas} == {a.hub_id, b.hub_id}

    http = HttpServer()
    await http.start()
    try:
        async with HubClient(follower.address) as client:
            await client.register(
                "feed", host="127.0.0.1", port=http.port, health=health_check(http="/", **FAST)
            )
            await eventually(lambda: leader.services.health_monitor.probes_done >= 5)
            assert follower.services.health_monitor.probes_done == 0

            # The leader dies without handing over: the other waits out its lease.
            await crash(leader)
            await eventually(lambda: follower.services.election.is_leader, timeout=10)
            before = follower.services.health_monitor.probes_done
            await eventually(lambda: follower.services.health_monitor.probes_done > before + 3)
            await http.stop()
            await eventually(lambda: _status_is(follower.address, "feed",
                                                f"127.0.0.1-{http.port}", 3))  # fmt: skip
    finally:
        await http.stop()


async def test_graceful_stop_hands_over_at_once(hub_factory: HubFactory) -> None:
    a = await hub_factory(election_ttl=30)  # a long lease: only a hand-over is quick
    await eventually(lambda: a.services.election.is_leader)
    b = await hub_factory(election_ttl=30)
    await a.stop()
    await eventually(lambda: b.services.election.is_leader, timeout=5)
    assert (await _cluster(b.address)).leader_id == b.hub_id


async def _max_age(address: str, service: str, instance_id: str, seconds: float) -> float:
    """The oldest last_check GetHealth reports for the instance over ``seconds``."""
    oldest = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        record = (await _health(address, service))[instance_id]
        oldest = max(oldest, time.time() - record.last_check.ToMicroseconds() / 1e6)
        await asyncio.sleep(0.1)
    return oldest


async def test_last_check_is_never_older_than_the_bound_across_a_leader_change(
    hub_factory: HubFactory,
) -> None:
    # An interval just under the refresh period: a record written only once the
    # refresh period has passed would be almost two intervals old.
    interval, refresh = 2.0, 2.1
    a = await hub_factory(election_ttl=30, health_refresh=refresh)
    await eventually(lambda: a.services.election.is_leader)
    b = await hub_factory(election_ttl=30, health_refresh=refresh)
    http = HttpServer()
    await http.start()
    try:
        async with HubClient(b.address) as client:
            await client.register(
                "fresh", instance_id="f", host="127.0.0.1", port=http.port,
                health=health_check(http="/", interval=interval, timeout=1.0),
            )  # fmt: skip
            await eventually(
                lambda: _status_is(b.address, "fresh", "f", types_pb2.HEALTH_STATUS_HEALTHY)
            )
            # max(interval, refresh), with slack for the hand-over, a probe and a write.
            bound = max(interval, refresh) + 1.0
            steady = await _max_age(b.address, "fresh", "f", 2.5 * interval)
            await a.stop()  # hands over: b leads and probes at once
            await eventually(lambda: b.services.election.is_leader, timeout=5)
            after = await _max_age(b.address, "fresh", "f", 2.5 * interval)
            assert b.services.health_monitor.probes_done >= 2
            assert steady <= bound and after <= bound, (steady, after)
    finally:
        await http.stop()


# -- who sees which instances' health ------------------------------------------------

ENTERPRISE = types_pb2.SUBSCRIPTION_TIER_ENTERPRISE


def _tenant(tier: str) -> list[tuple[str, str]]:
    return [("x-tenant-id", f"t-{tier}"), ("x-subscription-tier", tier)]


async def _register(
    ch: grpc.aio.Channel, service: str, iid: str, http: HttpServer, requirements: list[int]
) -> int:
    check = health_check(http="/", **FAST)
    resp = await registry_pb2_grpc.RegistryServiceStub(ch).Register(
        registry_pb2.RegisterRequest(
            service=service, instance_id=iid, host="127.0.0.1", port=http.port,
            health_check=check, subscription_requirements=requirements,
        )
    )  # fmt: skip
    return int(resp.header.revision)


async def test_get_health_shows_a_caller_only_what_get_service_shows_it(hub: Hub) -> None:
    pub, ent = HttpServer(), HttpServer()
    for srv in (pub, ent):
        await srv.start()
    try:
        async with grpc.aio.insecure_channel(hub.address) as ch:
            await _register(ch, "vis", "pub", pub, [])
            await _register(ch, "vis", "ent", ent, [ENTERPRISE])
            await _register(ch, "secret", "only", ent, [ENTERPRISE])
            stub = health_pb2_grpc.HealthServiceStub(ch)

            async def ids(tier: str | None, service: str = "") -> list[str]:
                resp = await stub.GetHealth(
                    health_pb2.GetHealthRequest(service=service),
                    metadata=_tenant(tier) if tier else None,
                )
                return [f"{r.service}/{r.instance_id}" for r in resp.instances]

            everything = ["secret/only", "vis/ent", "vis/pub"]
            assert sorted(await ids(None)) == everything  # no tenant context
            assert sorted(await ids("enterprise")) == everything
            assert await ids("free") == ["vis/pub"]
            assert await ids("pro", "vis") == ["vis/pub"]
            # As GetService answers the same caller: nothing of it is visible.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ids("free", "secret")
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await registry_pb2_grpc.RegistryServiceStub(ch).GetService(
                    registry_pb2.GetServiceRequest(service="secret"), metadata=_tenant("free")
                )
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        for srv in (pub, ent):
            await srv.stop()


async def test_watch_health_shows_a_caller_only_what_get_service_shows_it(hub: Hub) -> None:
    U = types_pb2.HEALTH_STATUS_UNHEALTHY
    pub, ent, up = HttpServer(), HttpServer(), HttpServer()
    for srv in (pub, ent, up):
        await srv.start()
    seen: dict[str, list[tuple[str, int, int]]] = {"free": [], "enterprise": []}
    snapshots: dict[str, list[str]] = {}

    async def follow(ch: grpc.aio.Channel, tier: str) -> None:
        call = health_pb2_grpc.HealthServiceStub(ch).WatchHealth(
            health_pb2.WatchHealthRequest(service="vis"), metadata=_tenant(tier)
        )
        async for msg in call:
            if msg.kind == registry_pb2.WATCH_RESPONSE_KIND_SNAPSHOT:
                snapshots[tier] = sorted(r.instance_id for r in msg.instances)
            seen[tier].extend((r.instance_id, r.status, r.revision) for r in msg.instances)

    try:
        async with grpc.aio.insecure_channel(hub.address) as ch:
            await _register(ch, "vis", "pub", pub, [])
            await _register(ch, "vis", "ent", ent, [ENTERPRISE])
            await _register(ch, "vis", "up", up, [])
            for iid in ("pub", "ent", "up"):
                await eventually(lambda iid=iid: _status_is(hub.address, "vis", iid, 1))
            tasks = [asyncio.create_task(follow(ch, tier)) for tier in seen]
            try:
                await eventually(lambda: len(snapshots) == 2)
                assert snapshots == {"free": ["pub", "up"], "enterprise": ["ent", "pub", "up"]}
                # "up" now needs enterprise: it leaves the free caller's view.
                rose = await _register(ch, "vis", "up", up, [ENTERPRISE])
                up.status = 500
                await eventually(lambda: ("up", U) in [r[:2] for r in seen["enterprise"]])
                pub.status = 500  # a later change the free caller does see
                await eventually(lambda: ("pub", U) in [r[:2] for r in seen["free"]])
                assert {iid for iid, _, rev in seen["free"] if rev > rose} == {"pub"}
                assert "ent" not in {iid for iid, _, _ in seen["free"]}
            finally:
                for task in tasks:
                    await _stop(task)
            records = await health_pb2_grpc.HealthServiceStub(ch).GetHealth(
                health_pb2.GetHealthRequest(service="vis"), metadata=_tenant("free")
            )
            assert [r.instance_id for r in records.instances] == ["pub"]
    finally:
        for srv in (pub, ent, up):
            await srv.stop()


async def test_watch_health_sends_instances_that_leave_and_enter_the_view(hub: Hub) -> None:
    U = types_pb2.HEALTH_STATUS_UNHEALTHY
    a, b = HttpServer(), HttpServer()
    for srv in (a, b):
        await srv.start()
    # Per watcher: (header revision, instance ids sent, instance ids removed) per EVENTS.
    Log = list[tuple[int, list[tuple[str, int]], list[str]]]
    seen: dict[str, Log] = {}

    async def follow(ch: grpc.aio.Channel, name: str, tier: str | None, start: int = 0) -> None:
        seen[name] = []
        call = health_pb2_grpc.HealthServiceStub(ch).WatchHealth(
            health_pb2.WatchHealthRequest(service="gone", start_revision=start),
            metadata=_tenant(tier) if tier else None,
        )
        async for msg in call:
            if msg.kind == registry_pb2.WATCH_RESPONSE_KIND_EVENTS:
                assert all(r.service == "gone" for r in msg.removed)
                seen[name].append(
                    (
                        msg.header.revision,
                        [(r.instance_id, r.status) for r in msg.instances],
                        [r.instance_id for r in msg.removed],
                    )
                )

    def removed(name: str, iid: str) -> int:
        """The revision of the first message that removed ``iid`` (0: none)."""
        return next((rev for rev, _, gone in seen.get(name, []) if iid in gone), 0)

    def sent_after(name: str, iid: str, revision: int) -> bool:
        return any(rev > revision and iid in dict(sent) for rev, sent, _ in seen.get(name, []))

    try:
        async with grpc.aio.insecure_channel(hub.address) as ch:
            registry = registry_pb2_grpc.RegistryServiceStub(ch)
            await _register(ch, "gone", "a", a, [])
            await _register(ch, "gone", "b", b, [])
            await registry.Register(
                registry_pb2.RegisterRequest(
                    service="gone", instance_id="lease", host="127.0.0.1", port=1
                )
            )  # no check: no health record, only the registry knows it
            for iid in ("a", "b"):
                await eventually(lambda iid=iid: _status_is(hub.address, "gone", iid, 1))
            tasks = [
                asyncio.create_task(follow(ch, "free", "free")),
                asyncio.create_task(follow(ch, "all", None)),
            ]
            try:
                await asyncio.sleep(0.3)  # both snapshots sent
                # "a" now needs enterprise: it leaves the free caller's view ...
                await _register(ch, "gone", "a", a, [ENTERPRISE])
                await eventually(lambda: removed("free", "a") > 0)
                left = removed("free", "a")
                # ... and comes back into it with its health when that is dropped.
                await _register(ch, "gone", "a", a, [])
                await eventually(lambda: sent_after("free", "a", left))
                # Deregistered: gone for every watcher, with or without a record.
                for iid in ("b", "lease"):
                    await registry.Deregister(
                        registry_pb2.DeregisterRequest(service="gone", instance_id=iid)
                    )
                    await eventually(lambda iid=iid: removed("all", iid) > 0)
                    await eventually(lambda iid=iid: removed("free", iid) > 0)
                assert removed("all", "a") == 0  # it never left the unfiltered view
                deregistered = removed("all", "lease")
                # Resumed after the events, a watch sends none of them again.
                resumed = [
                    asyncio.create_task(follow(ch, "free again", "free", left + 1)),
                    asyncio.create_task(follow(ch, "all again", None, deregistered + 1)),
                ]
                tasks += resumed
                await eventually(lambda: sent_after("free again", "a", left))
                a.status = 500  # a later change both see
                for name in ("all again", "free again"):
                    await eventually(lambda n=name: ("a", U) in [s for m in seen[n] for s in m[1]])
                assert [i for _, _, gone in seen["all again"] for i in gone] == []
                assert [i for _, _, gone in seen["free again"] for i in gone] == ["b", "lease"]
            finally:
                for task in tasks:
                    await _stop(task)
    finally:
        for srv in (a, b):
            await srv.stop()


async def test_merged_log_is_in_revision_order_up_to_where_every_log_is_complete() -> None:
    registry, health = EventLog[Change[None]](), EventLog[Change[None]]()
    advanced: list[str] = []

    async def nothing() -> None:
        advanced.append("health")

    async def barrier() -> None:  # what a mirror's barrier does to its log
        advanced.append("registry")
        registry.append([], 10)

    merged = MergedLog([registry, health], [barrier, nothing])
    health.append([(r, Change(ADDED, b"h", None, r)) for r in (3, 7)], 7)
    registry.append([(5, Change(ADDED, b"r", None, 5))], 5)
    # The registry may still have changes in 6..7 on their way: 7 is not sent yet.
    assert merged.head == 5
    assert [c.revision for c in merged.since(0) or []] == [3, 5]
    await merged.wait(5, 5.0)  # the registry is asked to catch up, not waited for
    assert advanced == ["registry"]
    assert merged.head == 7
    assert [c.revision for c in merged.since(5) or []] == [7]
