"""Fault tests on a real 3-member etcd cluster and hub replicas, all on loopback:
an etcd member killed (the raft leader, the one a hub uses), the elected hub
replica killed mid-work, the whole etcd cluster restarted, a client's keep-alive
across a hub failover. Every test ends by checking that nothing registered,
configured or allocated was lost (``Ledger.verify``).

Calls made while a fault is injected may fail with ``Unavailable``; each is
retried within a bound (``RETRY_FOR``). A failed write may still have happened
(the reply was lost, not the request); the ledger counts those as ambiguous
rather than pretend to know.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from hub_client import (
    ConfigLayer,
    Deployer,
    Deployment,
    Directive,
    EventType,
    HubClient,
    HubError,
    QuotaExceeded,
    Unavailable,
    VersionConflict,
    WatchEvent,
    health_check,
)
from hub_client._private.registration import Registration
from hub_server.app import Hub
from hub_server.store import keys
from hub_server.store.election import Election
from hub_server.store.etcd import EtcdStore, Event
from hub_server.store.watch import PrefixWatch
from tests.support.cluster import EtcdCluster, etcd_cluster
from tests.support.fleet import fleet
from tests.support.hubs import HubFactory, crash
from tests.support.keyspace import usage_in_etcd
from tests.support.servers import HttpServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.faults

T = TypeVar("T")

# How long one call may keep failing with Unavailable while a fault is injected.
RETRY_FOR = 20.0
FAST = dict(interval=0.2, timeout=0.5)
HEALTHY, UNHEALTHY = "healthy", "unhealthy"


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[EtcdCluster]:
    async with etcd_cluster(tmp_path / "cluster") as c:
        yield c


StartHub = Callable[..., Awaitable[Hub]]


@pytest.fixture
async def start_hub(cluster: EtcdCluster, hub_factory: HubFactory) -> StartHub:
    """Starts a hub replica on the cluster (set up after it, so stopped before it).
    ``first``: the member its store connects to (the first endpoint)."""

    async def start(first: str = "m0", **options: object) -> Hub:
        options.setdefault("election_ttl", 3)
        endpoints = cluster.endpoints_first(cluster.member(first))
        return await hub_factory(endpoints=endpoints, **options)

    return start


@pytest.fixture
async def store(cluster: EtcdCluster) -> AsyncIterator[EtcdStore]:
    """A direct connection to the cluster, to check what the hubs stored."""
    s = EtcdStore(cluster.endpoints)
    yield s
    await s.close()


async def leader_and_follower(start_hub: StartHub) -> tuple[Hub, Hub]:
    """Two replicas; the first started leads (the elected one), on member m0;
    the other uses m1."""
    a = await start_hub("m0")
    await eventually(lambda: a.services.election.is_leader)
    b = await start_hub("m1")
    await eventually(lambda: b.services.election.leader_id == a.hub_id)
    return a, b


# -- bounded retries and the ledger ---------------------------------------------------


def lost_reply(e: HubError) -> bool:
    """The call failed on the way (the hub or its etcd went away): it may or may
    not have happened. A replica stopped mid-call answers CANCELLED, which
    hub_client raises as a plain HubError."""
    return isinstance(e, Unavailable) or e.code == grpc.StatusCode.CANCELLED


async def retry(op: Callable[[], Awaitable[T]], *, within: float = RETRY_FOR) -> T:
    """``op()``, retried while its reply is lost, for at most ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return await op()
        except HubError as e:
            if not lost_reply(e) or loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _layer_after(client: HubClient, layer: str, version: int) -> ConfigLayer:
    """The layer once the hub shows a version after ``version``. Reads come from
    the hub's view, which may not have caught up with a write yet."""
    found: list[ConfigLayer] = []

    async def moved_on() -> bool:
        found[:] = [await retry(lambda: client.config_layer(layer))]
        return found[0].version > version

    await eventually(moved_on, timeout=RETRY_FOR)
    return found[0]


@dataclass
class Ledger:
    """What a test registered, configured and allocated, checked at the end."""

    registrations: dict[tuple[str, str], Registration] = field(default_factory=dict)
    # layer -> comments of the versions written, in order (each exactly once)
    config_writes: dict[str, list[str]] = field(default_factory=dict)
    granted: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Failed allocations that may have happened all the same (the reply was lost).
    ambiguous: Counter[tuple[str, str]] = field(default_factory=Counter)

    async def register(
        self, client: HubClient, service: str, instance_id: str, **options: Any
    ) -> Registration:
        options.setdefault("host", "127.0.0.1")
        options.setdefault("port", 1)
        options.setdefault("ttl", 10)
        # Idempotent: the same instance id again updates the instance in place.
        reg = await retry(lambda: client.register(service, instance_id=instance_id, **options))
        self.registrations[(service, instance_id)] = reg
        return reg

    async def write_config(self, client: HubClient, layer: str, values: dict[str, Any]) -> int:
        """Writes a new version exactly once, by compare-and-set on the version;
        returns it. A lost reply to a write that happened shows as a conflict
        with our own comment on the version after."""
        comment = f"ledger-{uuid.uuid4().hex[:12]}"
        current = (await retry(lambda: client.config_layer(layer))).version
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_FOR
        while True:
            try:
                written = await client.set_config_layer(
                    layer, values, expected_version=current, comment=comment
                )
                version = written.version
                break
            except VersionConflict:
                after = await _layer_after(client, layer, current)
                if after.version == current + 1 and after.comment == comment:
                    version = after.version
                    break
                raise
            except HubError as e:
                if not lost_reply(e) or loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)
        self.config_writes.setdefault(layer, []).append(comment)
        return version

    async def allocate(
        self, client: HubClient, tenant: str, resource: str = "websocket_connections"
    ) -> None:
        """One unit, retried until granted; every failed try is counted ambiguous."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_FOR
        while True:
            try:
                await client.allocate(resource, tenant=tenant)
                self.granted[(tenant, resource)] += 1
                return
            except HubError as e:
                if not lost_reply(e):
                    raise
                self.ambiguous[(tenant, resource)] += 1
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def seed(self, client: HubClient) -> None:
        """Some of everything, before the fault."""
        await retry(lambda: client.create_tenant("acme", tier="pro"))
        await self.write_config(
            client, "tenant/acme", {"rate_limits": {"websocket_connections": 1000}}
        )
        await self.write_config(client, "global", {"settings": {"phase": "before"}})
        for k in range(3):
            await self.register(client, "ledger", f"ledger-{k}", version="1.0.0")
        for _ in range(3):
            await self.allocate(client, "acme")

    async def verify(self, client: HubClient, store: EtcdStore) -> None:
        """Everything recorded is there, in etcd and as the hub answers."""
        # Registered: present, and never dropped (no keep-alive had to register again).
        by_service: dict[str, set[str]] = {}
        for service, instance_id in self.registrations:
            by_service.setdefault(service, set()).add(instance_id)
        for service, wanted in by_service.items():

            async def listed(service: str = service, wanted: set[str] = wanted) -> bool:
                svc = await retry(lambda: client.discover(service, include_unhealthy=True))
                return wanted <= {i.instance_id for i in svc.instances}

            await eventually(listed, timeout=RETRY_FOR)
        for (service, instance_id), reg in self.registrations.items():
            kv, _ = await store.get(keys.instance_key(service, instance_id))
            assert kv is not None, f"{service}/{instance_id} lost"
            assert reg.reregistrations == 0, f"{service}/{instance_id} was dropped"

        # Configured: every version written exactly once, the last one current.
        for layer, comments in self.config_writes.items():
            history = await retry(lambda layer=layer: client.config_versions(layer))  # type: ignore[misc]
            written = Counter(v.comment for v in history)
            assert all(written[c] == 1 for c in comments), (layer, comments, written)
            current = await retry(lambda layer=layer: client.config_layer(layer))  # type: ignore[misc]
            assert current.comment == comments[-1], (layer, current.comment, comments[-1])
            kv, _ = await store.get(keys.config_layer_key(layer))
            assert kv is not None

        # Allocated: nothing granted lost; nothing counted twice beyond the calls
        # whose reply was lost.
        for tenant, resource in set(self.granted) | set(self.ambiguous):
            used = await usage_in_etcd(store, tenant, resource)
            granted = self.granted[(tenant, resource)]
            ambiguous = self.ambiguous[(tenant, resource)]
            assert granted <= used <= granted + ambiguous, (tenant, resource, used, granted)
            usage = await retry(lambda tenant=tenant: client.usage(tenant))  # type: ignore[misc]
            assert usage[resource].used == used


# -- 1. one etcd member killed --------------------------------------------------------


@dataclass
class Workload:
    """Register, discover, write config and allocate, over and over, each call
    retried within RETRY_FOR; a call that never succeeds ends it with an error."""

    client: HubClient
    ledger: Ledger
    cycles: int = 0
    task: asyncio.Task[None] | None = None
    stopping: bool = False

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self.stopping:  # never cancelled mid-cycle: the ledger stays exact
            n = self.cycles + 1
            await self.ledger.register(self.client, "orders", f"o-{n}")
            svc = await retry(lambda: self.client.discover("orders"))
            assert f"o-{n}" in {i.instance_id for i in svc.instances}  # reads its write
            await self.ledger.write_config(self.client, "global", {"settings": {"cycle": n}})
            await self.ledger.allocate(self.client, "acme")
            self.cycles = n

    def reached(self, n: int) -> bool:
        if self.task is not None and self.task.done():
            self.task.result()  # raises what stopped it
            raise AssertionError("the workload stopped")
        return self.cycles >= n

    async def stop(self) -> None:
        assert self.task is not None
        self.stopping = True
        await asyncio.wait_for(self.task, 4 * RETRY_FOR)


@pytest.mark.parametrize("victim", ["raft-leader", "hub-member", "raft-leader-and-hub-member"])
async def test_one_etcd_member_killed_the_hub_keeps_serving_and_it_rejoins(
    cluster: EtcdCluster, start_hub: StartHub, store: EtcdStore, victim: str
) -> None:
    leader = await cluster.leader()
    followers = [m for m in cluster.members if m is not leader]
    # The member the hub connects to: the raft leader only when that is the victim.
    hub_member = leader if victim == "raft-leader-and-hub-member" else followers[0]
    hub = await start_hub(hub_member.name)
    await eventually(lambda: cluster.connected_members() == {hub_member.name})
    target = {"raft-leader": leader, "hub-member": hub_member}.get(victim, leader)
    assert (target is leader) == ("leader" in victim)
    assert (target is hub_member) == ("hub-member" in victim)

    async with HubClient(hub.address, timeout=3) as client:
        ledger = Ledger()
        await ledger.seed(client)
        work = Workload(client, ledger)
        work.start()
        try:
            await eventually(lambda: work.reached(2), timeout=RETRY_FOR)
            assert await cluster.leader() is leader  # still, right before the kill
            await cluster.kill(target)
            killed_at = work.cycles
            # Serves reads and writes with one member gone (the raft leader: a new
            # one is elected; the hub's own member: it fails over to another).
            await eventually(lambda: work.reached(killed_at + 3), timeout=60)
            assert (await cluster.wait_leader()) is not target
            if target is hub_member:
                assert hub_member.name not in cluster.connected_members()

            await cluster.restart(target)
            await eventually(lambda: cluster.rejoined(target), timeout=30)
            back_at = work.cycles
            await eventually(lambda: work.reached(back_at + 2), timeout=60)
        finally:
            await work.stop()
        # The restarted member holds what was written while it was down, and since.
        await eventually(lambda: cluster.rejoined(target), timeout=30)
        for n in (killed_at + 1, work.cycles):
            key = keys.instance_key("orders", f"o-{n}")
            assert await cluster.read_local(target, key) is not None, n
        await ledger.verify(client, store)


# -- 2. the elected hub replica killed mid-work --------------------------------------


async def _health_is(client: HubClient, service: str, instance_id: str, status: str) -> bool:
    found = {h.instance_id: h.status for h in await client.get_health(service)}
    return found.get(instance_id) == status


async def test_leader_replica_killed_while_probing_the_other_probes_on(
    start_hub: StartHub, store: EtcdStore
) -> None:
    leader, follower = await leader_and_follower(start_hub)
    http = HttpServer()
    await http.start()
    try:
        async with HubClient(follower.address, timeout=3) as client:
            ledger = Ledger()
            await ledger.seed(client)
            iid = f"feed-{http.port}"
            await ledger.register(
                client, "feed", iid, port=http.port, health=health_check(http="/", **FAST)
            )
            await eventually(lambda: leader.services.health_monitor.probes_done >= 3)
            await eventually(lambda: _health_is(client, "feed", iid, HEALTHY))

            assert leader.services.election.is_leader
            await crash(leader)
            await eventually(lambda: follower.services.election.is_leader, timeout=30)
            probed = follower.services.health_monitor.probes_done
            await eventually(lambda: follower.services.health_monitor.probes_done > probed + 3)
            # Still judged: a server that stops goes unhealthy, and back.
            await http.stop()
            await eventually(lambda: _health_is(client, "feed", iid, UNHEALTHY))
            await http.start()
            await eventually(lambda: _health_is(client, "feed", iid, HEALTHY))
            assert (await client.cluster_status()).leader_id == follower.hub_id
            await ledger.verify(client, store)
    finally:
        await http.stop()


async def test_leader_replica_killed_mid_deployment_the_other_finishes_it(
    start_hub: StartHub, store: EtcdStore
) -> None:
    leader, follower = await leader_and_follower(start_hub)
    async with (
        HubClient(follower.address, timeout=3) as client,
        fleet(client, "ledger-svc", 3) as f,
    ):
        ledger = Ledger()
        await ledger.seed(client)
        crashed = asyncio.Event()
        killed_leading: list[bool] = []

        async def crash_during_second_batch(d: Directive) -> None:
            if d.batch == 1 and not crashed.is_set():
                crashed.set()
                killed_leading.append(leader.services.election.is_leader)
                await crash(leader)
                await eventually(lambda: follower.services.election.is_leader, timeout=30)

        f.before_replace = crash_during_second_batch
        history: list[Deployment] = []
        result = await asyncio.wait_for(
            Deployer(client, on_progress=history.append).run(
                "ledger-svc", "2.0.0", batch_size=1, health_gate_timeout=60
            ),
            90,
        )
        assert killed_leading == [True] and follower.services.election.is_leader
        assert result.state == "SUCCEEDED", result.reason
        old = [f"ledger-svc-old-{k:02d}" for k in range(3)]
        assert [b.instance_ids for b in result.batches] == [[i] for i in old]
        # No step repeated or skipped: each old instance upgraded and retired once.
        assert f.count("UPGRADE") == Counter(old)
        await eventually(lambda: f.count("RETIRE") == Counter(old), timeout=30)
        replacements = [r for b in result.batches for r in b.replacement_ids]
        assert len(replacements) == len(set(replacements)) == 3
        assert [d.current_batch for d in history] == sorted(d.current_batch for d in history)
        assert follower.services.deployments.steps_taken >= 1
        await eventually(lambda: _versions_are(client, "ledger-svc", {"2.0.0"}), timeout=RETRY_FOR)
        await ledger.verify(client, store)


async def _versions_are(client: HubClient, service: str, expected: set[str]) -> bool:
    svc = await client.discover(service, include_unhealthy=True)
    return {i.version for i in svc.instances} == expected


async def test_leader_replica_killed_during_quota_allocations_limit_holds(
    start_hub: StartHub, store: EtcdStore
) -> None:
    leader, follower = await leader_and_follower(start_hub)
    limit = 40
    async with (
        HubClient(leader.address, timeout=3) as ca,
        HubClient(follower.address, timeout=3) as cb,
    ):
        ledger = Ledger()
        await ledger.seed(cb)
        await retry(lambda: cb.create_tenant("busy", tier="free"))
        await ledger.write_config(
            cb, "tenant/busy", {"rate_limits": {"websocket_connections": limit}}
        )
        await leader.services.configs.mirror.barrier()
        key = ("busy", "websocket_connections")
        refused: list[QuotaExceeded] = []

        async def allocator(i: int) -> None:
            """Allocates until refused; on the killed replica it moves to the other."""
            client = (ca, cb)[i % 2]
            while True:
                try:
                    await client.allocate("websocket_connections", tenant="busy")
                    ledger.granted[key] += 1
                except QuotaExceeded as e:
                    refused.append(e)
                    return
                except HubError as e:
                    if not lost_reply(e):
                        raise
                    assert client is ca, "only the killed replica may fail"
                    ledger.ambiguous[key] += 1  # the reply was lost, maybe not the write
                    client = cb

        workers = [asyncio.create_task(allocator(i)) for i in range(8)]
        try:
            await eventually(lambda: ledger.granted[key] >= limit // 3)
            assert leader.services.election.is_leader
            await crash(leader)  # allocations to it in flight
            await asyncio.wait_for(asyncio.gather(*workers), 60)
        finally:
            for w in workers:
                w.cancel()
        await eventually(lambda: follower.services.election.is_leader, timeout=30)

        used = await usage_in_etcd(store, "busy", "websocket_connections")
        assert used == limit  # filled, never past the limit
        assert ledger.granted[key] <= used <= ledger.granted[key] + ledger.ambiguous[key]
        assert len(refused) == 8
        assert all((e.limit, e.current, e.requested) == (limit, limit, 1) for e in refused)
        assert (await cb.usage("busy"))["websocket_connections"].used == limit
        await ledger.verify(cb, store)


async def test_replica_killed_while_stepping_down_stays_down(store: EtcdStore) -> None:
    """A leader that lost its lease and is killed while its work winds down
    never leads again, so another can. (The kill used to be swallowed there: the
    dead replica's campaign ran on, took the lease back and kept it.)"""
    a = Election(store, "replica-a", ttl=1, poll_interval=0.1)
    b = Election(store, "replica-b", ttl=1, poll_interval=0.1)
    winding_down = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            winding_down.set()
            await asyncio.sleep(0.3)  # stopping probes and the like takes a moment

    a.add_work(work)
    a.start()
    try:
        await eventually(lambda: a.is_leader)
        await store.revoke_lease(a._lease)  # its lease lapses (a stalled loop, a slow etcd)
        await asyncio.wait_for(winding_down.wait(), 10)
        assert a._task is not None
        a._task.cancel()  # killed while stepping down
        await eventually(lambda: a._task is not None and a._task.done(), timeout=5)
        b.start()
        await eventually(lambda: b.is_leader, timeout=10)
        assert not a.is_leader
    finally:
        await b.stop()
        await a.stop()


# -- 3. the whole etcd cluster restarted ---------------------------------------------


async def _etcd_history(store: EtcdStore, prefix: bytes, start_revision: int) -> list[Event]:
    """Every change under ``prefix`` from ``start_revision`` to now, read from etcd."""
    events: list[Event] = []

    async def collect(batch: list[Event], revision: int) -> None:
        events.extend(batch)

    async def compacted(revision: int) -> int:
        raise AssertionError(f"history compacted at {revision}")

    watch = PrefixWatch(store, prefix, on_batch=collect, on_compacted=compacted)
    watch.start(start_revision)
    try:
        await watch.barrier()  # everything before the fence is delivered
    finally:
        await watch.stop()
    return events


async def _unavailable(op: Callable[[], Awaitable[object]]) -> bool:
    try:
        await op()
        return False
    except Unavailable:
        return True


def _expected(ev: Event) -> tuple[EventType, str, str, int]:
    service, instance_id = keys.parse_instance_key(ev.kv.key)
    if ev.kind == "delete":
        kind = EventType.REMOVED
    else:
        kind = EventType.ADDED if ev.kv.version == 1 else EventType.UPDATED
    return kind, service, instance_id, ev.revision


def _seen(e: WatchEvent) -> tuple[EventType, str, str, int]:
    return e.type, e.instance.service, e.instance.instance_id, e.revision


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_whole_etcd_cluster_restarted_watches_resume_without_loss_or_repeat(
    cluster: EtcdCluster, start_hub: StartHub, store: EtcdStore, how: str
) -> None:
    hub = await start_hub()
    async with (
        HubClient(hub.address, timeout=3) as client,
        HubClient(hub.address, timeout=3) as watching,
    ):
        ledger = Ledger()
        await ledger.seed(client)
        seen: list[WatchEvent] = []

        async def follow() -> None:
            async for e in watching.watch():
                seen.append(e)

        watcher = asyncio.create_task(follow())
        registered: list[str] = []  # instance ids, in the order their Register succeeded
        try:
            # Compare from the first event after the snapshot on.
            marker = await ledger.register(client, "marks", "m-0")
            await eventually(lambda: any(e.instance.instance_id == "m-0" for e in seen))
            start = next(e.revision for e in seen if e.instance.instance_id == "m-0")

            async def register_on() -> None:
                n = 0
                while True:
                    n += 1
                    await ledger.register(client, "during", f"d-{n}", ttl=15)
                    registered.append(f"d-{n}")
                    await asyncio.sleep(0.05)

            registrar = asyncio.create_task(register_on())
            await eventually(lambda: len(registered) >= 3)
            if how == "kill":
                await cluster.stop_all(kill=True)
            else:
                await cluster.stop_all()
            down_at = len(registered)
            # Meanwhile the hub says so, and registrations fail (and are retried).
            await eventually(lambda: _unavailable(lambda: client.discover("marks")))
            await asyncio.sleep(0.5)
            assert len(registered) <= down_at + 1
            await cluster.start_all()
            await eventually(lambda: len(registered) >= down_at + 5, timeout=RETRY_FOR)
            registrar.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await registrar  # raises what ended it, if not the cancel

            # After: an update and a removal too.
            await ledger.register(client, "marks", "m-0", version="2.0.0")
            await marker.deregister()
            del ledger.registrations[("marks", "m-0")]
            await ledger.register(client, "after", "a-1")

            truth = [_expected(ev) for ev in await _etcd_history(store, keys.REGISTRY, start)]
            assert truth[-1][2] == "a-1"
            await eventually(lambda: bool(seen) and seen[-1].revision >= truth[-1][3])
            got = [_seen(e) for e in seen if e.revision >= start]
            assert got == truth  # nothing lost, nothing repeated, in revision order
            revisions = [e.revision for e in seen if not e.initial]
            assert revisions == sorted(revisions)
            assert {(EventType.ADDED, i) for i in registered} <= {(t, i) for t, _, i, _ in got}
            assert (EventType.UPDATED, "marks", "m-0") in {t[:3] for t in got}
            assert (EventType.REMOVED, "marks", "m-0") in {t[:3] for t in got}
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await ledger.verify(client, store)


# -- 4. a client's keep-alive across a hub failover ----------------------------------


async def test_keep_alive_survives_hub_failover_instance_never_dropped(
    start_hub: StartHub, store: EtcdStore
) -> None:
    a, b = await leader_and_follower(start_hub)
    # Both replicas, tried in order (hub_client/_private/targets.py).
    async with (
        HubClient([a.address, b.address], timeout=3) as client,
        HubClient(b.address, timeout=3) as observer,
    ):
        ledger = Ledger()
        await ledger.seed(client)
        reg = await ledger.register(client, "session", "s-1", ttl=3)  # renewed every 1 s
        lease, revision = reg.instance.lease_id, reg.instance.revision  # type: ignore[union-attr]
        seen: list[WatchEvent] = []

        async def follow() -> None:
            async for e in observer.watch("session"):
                seen.append(e)

        watcher = asyncio.create_task(follow())
        try:
            await eventually(lambda: len(seen) == 1)
            assert (await client.cluster_status()).hub_id == a.hub_id
            await eventually(lambda: reg.renewals >= 2)

            assert a.services.election.is_leader
            await crash(a)
            renewed = reg.renewals
            # Renewed for longer than the TTL since, all through the other replica.
            await eventually(lambda: reg.renewals >= renewed + 4, timeout=30)
            assert (await client.cluster_status()).hub_id == b.hub_id
            await eventually(lambda: b.services.election.is_leader, timeout=30)

            assert reg.reregistrations == 0
            assert [(e.type, e.initial) for e in seen] == [(EventType.ADDED, True)]
            svc = await observer.discover("session")
            assert [(i.instance_id, i.lease_id, i.revision) for i in svc.instances] == [
                ("s-1", lease, revision)
            ]  # the same lease, never written again
            assert await store.lease_ttl(lease) > 0
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await ledger.verify(client, store)
