"""hub_client.sync.HubClient against a live hub: plain threads (the hub runs in the
test's event loop, so every blocking call is made from another thread), many
threads at once, keep-alive on a thread that close() stops, a forked worker with
a channel of its own, and the async client made outside any loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from hub_client import (
    ClusterStatus,
    DeadlineExceeded,
    EventType,
    HubClient,
    InvalidArgument,
    Service,
    Tier,
    sync,
)
from hub_client._private.sync_runtime import THREAD_NAME
from hub_server.app import Hub
from tests.support.waiting import eventually

T = TypeVar("T")


async def in_thread(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


def names(services: list[Service]) -> set[str]:
    return {s.name for s in services}


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


async def test_register_discover_watch_and_config_from_a_plain_thread(hub: Hub) -> None:
    def work() -> None:
        with sync.HubClient(hub.address, tenant_id="acme", subscription_tier=Tier.PRO) as h:
            reg = h.register("quotes", host="10.0.0.1", port=80, instance_id="q1", ttl=5)
            assert reg.instance_id == "q1" and reg.instance is not None
            assert [i.instance_id for i in h.discover("quotes").instances] == ["q1"]
            with h.watch("quotes", timeout=10) as events:
                first = next(events)
                assert (first.type, first.instance.instance_id, first.initial) == (
                    EventType.ADDED,
                    "q1",
                    True,
                )
                h.register("quotes", host="10.0.0.2", port=80, instance_id="q2")
                later = next(events)
                assert (later.type, later.instance.instance_id) == (EventType.ADDED, "q2")
            h.set_config_layer("tenant/acme", {"features": {"flags": {"beta": True}}})
            assert h.config().enabled("beta")
            with h.watch_config(timeout=10) as configs:
                assert next(configs).tenant_id == "acme"
            status = h.cluster_status()
            assert isinstance(status, ClusterStatus) and status.leader_id == hub.hub_id
            with h.allocation("websocket_connections") as usage:
                assert usage.used == 1
            assert h.usage()["websocket_connections"].used == 0
            guard = h.circuit("quotes")

            @guard
            def call_quotes() -> str:
                return "ok"

            with guard:
                pass
            assert call_quotes() == "ok"
            h.flush_outcomes()
            assert h.circuit_state("quotes").calls == 2
            other = h.with_context(tenant_id="other")
            assert other.context.tenant_id == "other" and h.context.tenant_id == "acme"
            assert other.config().tenant_id == "other"
            reg.deregister()
            assert "quotes" in names(h.list_services())  # q2 is still there

    await in_thread(work)


async def test_sixteen_threads_at_once_share_one_client(hub: Hub) -> None:
    def work() -> set[str]:
        with sync.HubClient(hub.address) as h:

            def one(n: int) -> int:
                h.register("fanout", host="10.0.1.1", port=1000 + n, instance_id=f"f{n}")
                return len(h.discover("fanout").instances)

            with ThreadPoolExecutor(16) as pool:
                seen = list(pool.map(one, range(16)))
            assert all(1 <= n <= 16 for n in seen)
            assert len(loop_threads()) == 1  # one loop thread serves all sixteen
            return {i.instance_id for i in h.discover("fanout").instances}

    assert await in_thread(work) == {f"f{n}" for n in range(16)}
    async with HubClient(hub.address) as a:  # close() deregistered all sixteen
        assert "fanout" not in names(await a.list_services())


async def test_keep_alive_runs_on_a_thread_that_close_stops(hub: Hub) -> None:
    h = sync.HubClient(hub.address)
    assert loop_threads() == []  # nothing starts before the first call
    reg = await in_thread(lambda: h.register("kept", host="10.0.0.9", port=9, ttl=2))
    [thread] = loop_threads()
    # The TTL is 2 s: without renewals the lease would lapse.
    await eventually(lambda: reg.renewals >= 3, timeout=15)
    async with HubClient(hub.address) as a:
        assert [i.instance_id for i in (await a.discover("kept")).instances] == [reg.instance_id]
        await in_thread(h.close)
        assert not thread.is_alive() and loop_threads() == []
        assert "kept" not in names(await a.list_services())
    with pytest.raises(RuntimeError, match="closed"):
        await in_thread(lambda: h.discover("kept"))


async def test_close_ends_a_watch_another_thread_is_reading(hub: Hub) -> None:
    h = sync.HubClient(hub.address)
    events = h.watch("quiet")  # no instance: nothing ever comes
    reader = asyncio.create_task(in_thread(lambda: next(events)))
    await asyncio.sleep(0.5)
    await in_thread(h.close)
    with pytest.raises(RuntimeError, match="closed"):
        await asyncio.wait_for(reader, 10)


FORKED = textwrap.dedent(
    """
    import os, sys, time, traceback
    from hub_client import EventType
    from hub_client.sync import HubClient

    hub = HubClient(sys.argv[1])
    parent = hub.register("workers", host="10.0.0.1", port=1, instance_id="parent", ttl=2)
    events = hub.watch("workers", timeout=20)  # open across the forks
    assert next(events).instance.instance_id == "parent"
    pids = []
    for n in range(2):  # a prefork server: workers forked from a parent that uses the client
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                mine = hub.register("workers", host="10.0.0.1", port=10 + n,
                                    instance_id=f"child{n}", ttl=2)
                seen = {i.instance_id for i in hub.discover("workers").instances}
                assert {"parent", f"child{n}"} <= seen, seen
                try:
                    parent.deregister()  # the parent's handle is the parent's
                except RuntimeError as e:
                    assert "forked process" in str(e), e
                else:
                    raise AssertionError("a child deregistered the parent's instance")
                time.sleep(2.5)  # longer than the TTL: the child's own keep-alive works
                assert mine.renewals >= 1, mine.renewals
                hub.close()  # deregisters the child's instance only
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                os._exit(code)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    assert codes == [0, 0], codes
    before = parent.renewals
    time.sleep(2.5)
    assert parent.renewals > before, "the parent's keep-alive stopped after the fork"
    removed = set()  # the parent's watch resumed after each fork and missed nothing
    while removed != {"child0", "child1"}:
        event = next(events)
        if event.type is EventType.REMOVED:
            removed.add(event.instance.instance_id)
    events.close()
    for _ in range(100):  # the children's deregistrations reach this client's view
        seen = {i.instance_id for i in hub.discover("workers").instances}
        if seen == {"parent"}:
            break
        time.sleep(0.1)
    assert seen == {"parent"}, seen
    hub.close()
    with HubClient(sys.argv[1]) as check:
        if "workers" not in {s.name for s in check.list_services()}:
            print("ok")
    """
)


async def run_script(script: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *args,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    return text


async def test_forked_workers_get_their_own_channel(hub: Hub) -> None:
    assert (await run_script(FORKED, hub.address)).strip().endswith("ok")


OUTSIDE_A_LOOP = textwrap.dedent(
    """
    import asyncio, sys
    from hub_client import HubClient

    hub = HubClient(sys.argv[1])  # made at import time, outside any event loop

    async def main(port):
        await hub.register("outside", host="10.0.0.1", port=port, keep_alive=False)
        return len((await hub.discover("outside")).instances)

    assert asyncio.run(main(1)) == 1
    assert asyncio.run(main(2)) == 2  # a second loop: the channel follows it
    print("ok")
    """
)


async def test_an_async_client_made_outside_a_loop_works_in_asyncio_run(hub: Hub) -> None:
    assert (await run_script(OUTSIDE_A_LOOP, hub.address)).strip().endswith("ok")


async def test_per_call_timeouts_and_refusals_before_any_rpc() -> None:
    # Nothing listens here: a call waits for the channel until its deadline.
    from hub_server.embedded_etcd import free_port

    address = f"127.0.0.1:{free_port()}"

    def work() -> None:
        with sync.HubClient(address, timeout=60) as h:
            with pytest.raises(DeadlineExceeded):
                h.discover("x", timeout=0.3)  # not the client's 60 s
            with pytest.raises(InvalidArgument) as err:
                h.create_tenant("t", tier="gold")
            assert [v.field for v in err.value.field_violations] == ["tier"]

    await asyncio.wait_for(in_thread(work), 30)
