"""Local resolution (issue 17 item 1): hub_client's discover() and pick() from its
local views, beside the same lookups as RPCs (through hub_client in remote mode,
and the raw grpc.aio GetService row of bench.run) and a raw etcd read of the
same keys from this process; and the time from a registry change until the local
view reflects it.

The lookup rows are the numerators of the headline "client-side lookup /
GetService RPC (Python caller)" (bench.report.LOOKUP over GET_PY).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable
from typing import Any

from bench.report import GET_PY, LOOKUP
from hub_client import HubClient
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore

LOOKUP_PICK = "client-side pick (hub_client local view)"
REMOTE_GET = "discover() RPC (hub_client remote mode)"
REMOTE_PICK = "pick() RPC (hub_client remote mode)"
ETCD_PY = "etcd KV/Range (Python EtcdStore caller)"
CHANGE_TO_VIEW = "registry change -> hub_client local view"
CHANGE_SERVICE = "local-view-bench"


async def measure(
    bench: Any,
    address: str,
    store: EtcdStore,
    names: list[str],
    concurrencies: tuple[int, ...],
    *,
    changes: int,
) -> None:
    rnd = random.Random(17)
    local = HubClient(address, timeout=30)
    remote = HubClient(address, timeout=30, resolution="remote")
    try:
        # Open every view first (one WatchEndpoints stream and one GetService each).
        t0 = time.perf_counter()
        for name in names:
            await local.discover(name)
        bench.fact(f"local views opened ({len(names)} services)", time.perf_counter() - t0, "s")

        def discover() -> Awaitable[Any]:
            return local.discover(rnd.choice(names))

        def pick() -> Awaitable[Any]:
            return local.pick(rnd.choice(names))

        def remote_discover() -> Awaitable[Any]:
            return remote.discover(rnd.choice(names))

        def remote_pick() -> Awaitable[Any]:
            return remote.pick(rnd.choice(names))

        def etcd_read() -> Awaitable[Any]:
            return store.get_prefix(keys.service_prefix(rnd.choice(names)))

        for c in concurrencies:
            await bench.closed(LOOKUP, discover, c, vs=(GET_PY, REMOTE_GET, ETCD_PY))
            await bench.closed(LOOKUP_PICK, pick, c, vs=(REMOTE_PICK,))
            await bench.closed(REMOTE_GET, remote_discover, c)
            await bench.closed(REMOTE_PICK, remote_pick, c)
            await bench.closed(ETCD_PY, etcd_read, c)
        await change_to_view(bench, local, remote, changes)
    finally:
        await local.close()
        await remote.close()


async def change_to_view(bench: Any, local: HubClient, remote: HubClient, changes: int) -> None:
    """Per change (a Register, then a Deregister, by another client), the time
    from the start of the write until this client's local view has it (polled
    every 0.5 ms: the figures are that coarse)."""
    await remote.register(CHANGE_SERVICE, instance_id="base", host="10.9.0.1", port=1, ttl=600)
    await local.discover(CHANGE_SERVICE)
    delays: list[float] = []
    missed = 0

    async def until(instance_id: str, present: bool, t0: float) -> None:
        nonlocal missed
        while True:
            ids = {i.instance_id for i in (await local.discover(CHANGE_SERVICE)).instances}
            if (instance_id in ids) is present:
                delays.append(time.perf_counter() - t0)
                return
            if time.perf_counter() - t0 > 10:
                missed += 1
                return
            await asyncio.sleep(0.0005)

    for n in range(changes):
        t0 = time.perf_counter()
        reg = await remote.register(
            CHANGE_SERVICE, instance_id=f"c{n}", host="10.9.0.2", port=n + 2, ttl=600,
            keep_alive=False,
        )  # fmt: skip
        await until(f"c{n}", True, t0)
        t0 = time.perf_counter()
        await reg.deregister()
        await until(f"c{n}", False, t0)
    bench.spread(CHANGE_TO_VIEW, "1 view", 1, delays, missed=missed)
