"""Roll-outs end to end: a real etcd, real hubs, and real gRPC instances that the
test starts when the hub tells an old one to UPGRADE and stops when it says RETIRE."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from aitrading.hub.v1 import deployment_pb2

from hub_client import Deployer, Deployment, Directive, FailedPrecondition, HubClient
from hub_server.app import Hub
from tests.support.fleet import all_healthy, deployment_is, fleet
from tests.support.hubs import HubFactory, crash
from tests.support.waiting import eventually


async def test_rolling_to_completion_and_draining_never_picked(hub: Hub, client: HubClient) -> None:
    async with fleet(client, "quotes", 4) as f:
        old = set(f.regs)
        # Replacements come late, so that each batch stays drained for a while.
        picks: list[tuple[set[str], str]] = []

        async def slow(d: Directive) -> None:
            # While a batch is drained, ask the balancer many times.
            await eventually(lambda: hub.services.deployments.is_draining("quotes", d.instance_id))
            for _ in range(30):
                drained = {i for i in old if hub.services.deployments.is_draining("quotes", i)}
                # The hub's own pick (fresh): drained is read from the hub just
                # before, and a local view follows a drain only a moment later.
                ep = await client.pick("quotes", strategy="round_robin", fresh=True)
                picks.append((drained, ep.instance_id))

        f.before_replace = slow
        progress: list[Deployment] = []
        result = await Deployer(client, on_progress=progress.append).run(
            "quotes", "2.0.0", batch_size=2, health_gate_timeout=20
        )
        assert result.state == "SUCCEEDED", result.reason
        assert [b.state for b in result.batches] == ["DONE", "DONE"]
        assert sorted(i for b in result.batches for i in b.instance_ids) == sorted(old)
        assert all(len(b.replacement_ids) == 2 for b in result.batches)
        # Each old instance told to upgrade and retire exactly once.
        assert f.count("UPGRADE") == Counter(old)
        await eventually(lambda: f.count("RETIRE") == Counter(old), timeout=60)
        assert len(picks) >= 60
        assert all(picked not in drained for drained, picked in picks)
        assert any(drained for drained, _ in picks)
        # Progress went through the batches in order.
        seen = [d.current_batch for d in progress]
        assert seen == sorted(seen) and seen[-1] == 2
        await eventually(lambda: set(f.regs) and not (set(f.regs) & old), timeout=60)
        await eventually(lambda: _versions(client, "quotes", {"2.0.0"}))  # view catches up
        assert (await client.deployments("quotes"))[0].id == result.id


async def _versions(client: HubClient, service: str, expected: set[str]) -> bool:
    return {i.version for i in (await client.discover(service)).instances} == expected


async def test_get_service_shows_draining(hub: Hub, client: HubClient) -> None:
    async with fleet(client, "feeds", 2) as f:
        f.replace = False
        d = await client.deploy("feeds", "2.0.0", batch_size=1, health_gate_timeout=30)
        await eventually(lambda: hub.services.deployments.is_draining("feeds", "feeds-old-00"))
        svc = await client.discover("feeds", include_unhealthy=True)
        draining = {i.instance_id: i.raw.draining for i in svc.instances}
        assert draining == {"feeds-old-00": True, "feeds-old-01": False}
        await client.abort_deployment(d.id, "test over")
        await eventually(lambda: not hub.services.deployments.is_draining("feeds", "feeds-old-00"))
        assert f.count("RESUME") == Counter(["feeds-old-00"])


async def test_canary_to_completion(hub: Hub, client: HubClient) -> None:
    async with fleet(client, "pricing", 5) as f:
        d = await client.deploy(
            "pricing", "2.0.0", strategy="canary", canary_share=0.2, canary_observation=1.0,
            batch_size=2, health_gate_timeout=20,
        )  # fmt: skip
        assert [len(b.instance_ids) for b in d.batches] == [1, 2, 2]
        assert d.batches[0].canary
        seen: list[str] = []

        async def follow() -> Deployment:
            async for x in client.watch_deployment(d.id):
                seen.append(f"{x.current_batch}:{x.batches[0].state}")
                if x.finished:
                    return x
            raise AssertionError

        result = await asyncio.wait_for(follow(), 30)
        assert result.state == "SUCCEEDED", result.reason
        assert "0:OBSERVING" in seen
        old = Counter(f"pricing-old-{k:02d}" for k in range(5))
        await eventually(lambda: f.count("RETIRE") == old, timeout=60)


async def test_gate_failure_pauses_then_resume_finishes(hub: Hub, client: HubClient) -> None:
    async with fleet(client, "risk", 2) as f:
        f.replacement_serving = False  # the new version never becomes healthy
        d = await client.deploy("risk", "2.0.0", batch_size=2, health_gate_timeout=1.5)
        await eventually(lambda: deployment_is(client, d.id, "PAUSED"), timeout=15)
        paused = await client.deployment(d.id)
        assert "0 of 2 replacements HEALTHY" in paused.reason
        assert paused.batches[0].state == "DRAINING"
        # Fix the replacements, resume: it finishes.
        for iid, v in list(f.versions.items()):
            if v == "2.0.0":
                await f.servers[iid].set_serving(True)
        resumed = await client.resume_deployment(d.id)
        assert resumed.state == "RUNNING"
        await eventually(lambda: deployment_is(client, d.id, "SUCCEEDED"), timeout=15)


async def test_gate_failure_rolls_back_with_the_flag(hub: Hub, client: HubClient) -> None:
    async with fleet(client, "orders", 4) as f:
        broken = {"n": 0}

        async def second_batch_is_broken(d: Directive) -> None:
            if d.target_version == "2.0.0" and d.batch == 1:
                broken["n"] += 1
                f.replacement_serving = False
            else:
                f.replacement_serving = True

        f.before_replace = second_batch_is_broken
        d = await client.deploy(
            "orders", "2.0.0", batch_size=2, health_gate_timeout=2, rollback_on_failure=True
        )
        await eventually(lambda: deployment_is(client, d.id, "ROLLED_BACK"), timeout=25)
        done = await client.deployment(d.id)
        assert [b.state for b in done.batches] == ["DONE", "CANCELLED"]
        assert "batch 2" in done.reason
        # The first batch's new instances were told to go back to 1.0.0, then retired.
        first = set(done.batches[0].replacement_ids)
        ups = {x.instance_id for x in f.directives if x.action == "UPGRADE"
               and x.target_version == "1.0.0"}  # fmt: skip
        assert ups == first
        assert first <= set(f.count("RETIRE"))
        await eventually(lambda: not (set(f.regs) & first), timeout=60)
        # Batch 2's replacements never turned healthy: once probes have said so
        # (slower on a loaded machine), discovery offers 1.0.0 only.
        await eventually(lambda: _versions(client, "orders", {"1.0.0"}), timeout=30)
        assert broken["n"] >= 1


async def test_pause_resume_abort_and_one_active_per_service(hub: Hub, client: HubClient) -> None:
    async with fleet(client, "alerts", 3) as f:
        f.replace = False
        d = await client.deploy("alerts", "2.0.0", batch_size=1, health_gate_timeout=60)
        with pytest.raises(FailedPrecondition):
            await client.deploy("alerts", "3.0.0")
        await eventually(lambda: f.count("UPGRADE"))
        p = await client.pause_deployment(d.id, "market open")
        assert p.state == "PAUSED" and p.reason == "market open"
        with pytest.raises(FailedPrecondition):
            await client.pause_deployment(d.id)
        f.replace = True
        for _ in list(f.count("UPGRADE")):
            await f.add("2.0.0")
        await asyncio.sleep(1.0)
        assert (await client.deployment(d.id)).current_batch == 0  # paused: it waits
        assert (await client.resume_deployment(d.id)).state == "RUNNING"
        await eventually(lambda: _current(client, d.id, 1))
        a = await client.abort_deployment(d.id, "enough")
        assert a.state == "ABORTED" and a.batches[0].state == "DONE"
        with pytest.raises(FailedPrecondition):
            await client.abort_deployment(d.id)
        # Aborted: the service is free for another deployment.
        d2 = await client.deploy("alerts", "3.0.0", batch_size=5)
        with pytest.raises(FailedPrecondition):  # d2 holds the service
            await client.rollback_deployment(d.id)
        await client.abort_deployment(d2.id)


async def _current(client: HubClient, deployment_id: str, n: int) -> bool:
    return (await client.deployment(deployment_id)).current_batch >= n


async def test_leader_killed_mid_batch_the_other_continues(hub_factory: HubFactory) -> None:
    a = await hub_factory(election_ttl=2)
    b = await hub_factory(election_ttl=2)
    await eventually(lambda: a.services.election.is_leader or b.services.election.is_leader)
    leader, follower = (a, b) if a.services.election.is_leader else (b, a)
    async with HubClient(follower.address) as client, fleet(client, "ledger", 3) as f:
        crashed = asyncio.Event()
        takeover: list[float] = []

        async def crash_during_second_batch(d: Directive) -> None:
            if d.batch == 1 and not crashed.is_set():
                crashed.set()
                t = time.monotonic()
                await crash(leader)
                await eventually(lambda: follower.services.election.is_leader, timeout=60)
                takeover.append(time.monotonic() - t)

        f.before_replace = crash_during_second_batch
        history: list[Deployment] = []
        try:
            result = await asyncio.wait_for(
                Deployer(client, on_progress=history.append).run(
                    "ledger", "2.0.0", batch_size=1, health_gate_timeout=60
                ),
                90,
            )
        finally:
            print(f"\nleader crashed mid-batch; the other took over after {takeover}s")
        assert crashed.is_set() and follower.services.election.is_leader
        assert result.state == "SUCCEEDED", result.reason
        old = [f"ledger-old-{k:02d}" for k in range(3)]
        assert [b.instance_ids for b in result.batches] == [[i] for i in old]
        # No batch repeated or skipped: each instance upgraded and retired once.
        assert f.count("UPGRADE") == Counter(old)
        await eventually(lambda: f.count("RETIRE") == Counter(old), timeout=60)
        replacements = [r for b in result.batches for r in b.replacement_ids]
        assert len(replacements) == len(set(replacements)) == 3
        batches = [d.current_batch for d in history]
        assert batches == sorted(batches)
        assert follower.services.deployments.steps_taken >= 1


async def test_invalid_requests(hub: Hub, client: HubClient) -> None:
    from hub_client import InvalidArgument, NotFound

    with pytest.raises(NotFound):
        await client.deploy("nothing-here", "1.0.0")
    with pytest.raises(NotFound):
        await client.deployment("dep-nope")
    async with fleet(client, "bad", 1):
        with pytest.raises(InvalidArgument):
            await client.deploy("bad", "", batch_size=1)
        with pytest.raises(InvalidArgument):
            await client.deploy("bad", "2", strategy="canary", canary_share=2.0)
        with pytest.raises(FailedPrecondition):
            await client.deploy("bad", "1.0.0")  # already there


async def test_base_service_follows_its_directives(hub: Hub, client: HubClient) -> None:
    from hub_client import BaseService, ServiceConfig

    def config(version: str, instance_id: str) -> ServiceConfig:
        return ServiceConfig(
            "books", version=version, hub_target=hub.address, instance_id=instance_id,
            probe_interval=0.2, drain_seconds=0, shutdown_grace=0.2,
        )  # fmt: skip

    seen: list[str] = []
    replacements: list[asyncio.Task[None]] = []

    async def on_directive(d: Directive) -> None:
        seen.append(d.action)
        if d.action == "UPGRADE":  # this instance's orchestrator starts the new version
            svc = BaseService(config(d.target_version, "books-new"))
            replacements.append(asyncio.create_task(svc.run(handle_signals=False)))

    old = BaseService(config("1.0.0", "books-old"), on_directive=on_directive)
    runner = asyncio.create_task(old.run(handle_signals=False))
    try:
        await asyncio.wait_for(old.registered.wait(), 10)
        await eventually(lambda: all_healthy(client, "books", 1))
        d = await client.deploy("books", "2.0.0", health_gate_timeout=20)
        await eventually(lambda: deployment_is(client, d.id, "SUCCEEDED"), timeout=20)
        await asyncio.wait_for(runner, 10)  # RETIRE stopped it
        assert seen == ["UPGRADE", "RETIRE"]
        svc = await client.discover("books")
        assert [(i.instance_id, i.version) for i in svc.instances] == [("books-new", "2.0.0")]
    finally:
        for task in (runner, *replacements):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def test_twenty_instance_rolling_duration_breakdown(hub: Hub, client: HubClient) -> None:
    """Measured, printed, not asserted: where the time of a 20-instance roll-out goes."""
    async with fleet(client, "bench", 20) as f:
        t0 = time.time()
        d = await client.deploy("bench", "2.0.0", batch_size=5, health_gate_timeout=30)
        result = await asyncio.wait_for(Deployer(client).follow(d.id), 60)
        total = time.time() - t0
        assert result.state == "SUCCEEDED", result.reason
        await eventually(lambda: all(i in f.removed_at for b in result.batches
                                     for i in b.instance_ids))  # fmt: skip
        seen = {(a, i): t for t, a, i in f.events}
        print(f"\n20-instance rolling deployment, batches of 5: total {total:.2f}s")
        print("batch  drain->directive seen  wait for healthy replacements  retire->deregistered")
        for b in result.raw.batches:
            started, healthy = (
                b.started_at.ToNanoseconds() / 1e9,
                b.healthy_at.ToNanoseconds() / 1e9,
            )
            finished = b.finished_at.ToNanoseconds() / 1e9
            seen_at = max(seen[("UPGRADE", i)] for i in b.instance_ids)
            gone = max(f.removed_at[i] for i in b.instance_ids)
            print(f"{b.index + 1:>5}  {seen_at - started:>20.3f}s  {healthy - started:>28.3f}s"
                  f"  {gone - finished:>19.3f}s")  # fmt: skip


async def _drained(client: HubClient, service: str) -> set[str]:
    """The service's registered instances that discovery says are draining."""
    svc = await client.discover(service, include_unhealthy=True)
    return {i.instance_id for i in svc.instances if i.raw.draining}


def _drained_is(
    client: HubClient, service: str, expected: set[str]
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await _drained(client, service) == expected

    return check


async def _picked(client: HubClient, service: str, n: int) -> set[str]:
    return {(await client.pick(service, strategy="round_robin")).instance_id for _ in range(n)}


async def test_a_failed_rollback_moves_in_batches_and_leaves_the_service_usable(
    hub: Hub, client: HubClient
) -> None:
    async with fleet(client, "quotes", 4) as f:
        done = await Deployer(client).run("quotes", "2.0.0", batch_size=2, health_gate_timeout=5)
        assert done.state == "SUCCEEDED", done.reason
        new = sorted(i for b in done.batches for i in b.replacement_ids)
        await eventually(lambda: all_healthy(client, "quotes", 4), timeout=30)
        f.replacement_serving = False  # 1.0.0 never comes back
        stub = client.deployment_stub
        await stub.RollbackDeployment(deployment_pb2.RollbackDeploymentRequest(id=done.id))
        most: set[str] = set()
        while (await client.deployment(done.id)).state == "ROLLING_BACK":
            drained = await _drained(client, "quotes")
            most = max(most, drained, key=len)
            assert len(drained) <= 2, drained  # a batch at a time, like the roll-out
            await asyncio.sleep(0.05)
        failed = await client.deployment(done.id)
        assert failed.state == "FAILED" and "0 of 2 instances of 1.0.0" in failed.reason
        assert most == set(new[:2])
        # The 2.0.0 instances still serve: every one is picked again.
        await eventually(_drained_is(client, "quotes", set()))
        assert await _picked(client, "quotes", 12) == set(new)
        assert f.count("RESUME") == Counter(new[:2])
        # Nothing left for ReleaseDeploymentDrains to do.
        resp = await stub.ReleaseDeploymentDrains(
            deployment_pb2.ReleaseDeploymentDrainsRequest(id=done.id)
        )
        assert list(resp.released_instance_ids) == []


async def test_pause_and_abort_while_rolling_back(hub: Hub, client: HubClient) -> None:
    async with fleet(client, "books", 2) as f:
        done = await Deployer(client).run("books", "2.0.0", batch_size=1, health_gate_timeout=30)
        assert done.state == "SUCCEEDED", done.reason
        new = sorted(i for b in done.batches for i in b.replacement_ids)
        f.replace = False
        back = await client.rollback_deployment(done.id)
        assert back.state == "ROLLING_BACK"
        paused = await client.pause_deployment(done.id, "look first")
        assert paused.state == "PAUSED"
        with pytest.raises(FailedPrecondition):
            await client.rollback_deployment(done.id)
        assert (await client.resume_deployment(done.id)).state == "ROLLING_BACK"
        await eventually(_drained_is(client, "books", {new[0]}))
        aborted = await client.abort_deployment(done.id, "enough")
        assert aborted.state == "ABORTED"
        await eventually(_drained_is(client, "books", set()))
        assert await _picked(client, "books", 6) == set(new)


async def test_release_deployment_drains(hub: Hub, client: HubClient) -> None:
    from hub_client import InvalidArgument, NotFound

    stub = client.deployment_stub
    async with fleet(client, "feeds", 2) as f:
        f.replace = False
        d = await client.deploy("feeds", "2.0.0", batch_size=1, health_gate_timeout=60)
        await eventually(_drained_is(client, "feeds", {"feeds-old-00"}))
        resp = await stub.ReleaseDeploymentDrains(
            deployment_pb2.ReleaseDeploymentDrainsRequest(id=d.id, reason="needed it back")
        )
        assert list(resp.released_instance_ids) == ["feeds-old-00"]
        assert resp.deployment.id == d.id and resp.header.revision > 0
        assert not await _drained(client, "feeds")  # at once, on the replica that answered
        assert await _picked(client, "feeds", 6) == {"feeds-old-00", "feeds-old-01"}
        await eventually(lambda: f.count("RESUME") == Counter(["feeds-old-00"]))
        again = await stub.ReleaseDeploymentDrains(
            deployment_pb2.ReleaseDeploymentDrainsRequest(id=d.id)
        )
        assert list(again.released_instance_ids) == []
        events, _ = await hub.services.audit.latest(method="ReleaseDeploymentDrains")
        assert [(e.target, e.outcome) for e in events][-1] == (f"deployment/{d.id}", "OK")
        first = events[-1]
        assert first.details["reason"] == "needed it back"
        assert first.details["released"] == "feeds-old-00"
        await client.abort_deployment(d.id)
    with pytest.raises(NotFound):
        await client.call(
            stub.ReleaseDeploymentDrains,
            deployment_pb2.ReleaseDeploymentDrainsRequest(id="dep-nope"),
        )
    with pytest.raises(InvalidArgument):
        await client.call(
            stub.ReleaseDeploymentDrains, deployment_pb2.ReleaseDeploymentDrainsRequest(id="a/b")
        )
