"""xDS push (issue 16): the time from a Register until the last of 100 and then
of 1,000 ADS streams has the new instance in its ClusterLoadAssignment (and
ACKs it at once, as a proxyless gRPC client does), beside the same change's
delivery on as many registry Watch streams of the same service, open at the same
time; and the hub's resident size per ADS stream beside its size per Watch
stream.

The streams are raw state-of-the-world ADS streams (bench.watchers, kind
``xds``): a load generator can hold a thousand of them where a thousand grpcio
processes, each with its own xDS client, could not run on one machine. Each
change is a Register of a new instance with an IP address (xDS clients take no
host names), timed from just before the call; receive times are time.time() in
the watcher processes.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import TYPE_CHECKING

from aitrading.hub.v1 import registry_pb2, registry_pb2_grpc

from bench.procs import HubProcess
from bench.watchers import REGISTRY, XDS, WatcherPool

if TYPE_CHECKING:
    from bench.run import Bench

SERVICE = "bench-xds"
SIZES = (100, 1000)  # ADS streams, and as many Watch streams beside them
PROCESSES = 4
TIMEOUT = 30.0  # seconds a change may take to reach every stream before it counts as missed
PAUSE = 0.1  # seconds between changes
ADDED = registry_pb2.WATCH_EVENT_TYPE_ADDED

WATCH_OP = "Register -> last of {n:,} Watch streams (beside ADS)"
XDS_OP = "Register -> EDS ACK from last of {n:,} ADS streams"


def _delays(times: list[float | None], t0: float) -> tuple[float, float, int]:
    got = [t - t0 for t in times if t is not None]
    if not got:
        raise RuntimeError("no stream received the change")
    return max(got), statistics.median(got), len(times) - len(got)


class _Row:
    def __init__(self) -> None:
        self.last: list[float] = []
        self.median: list[float] = []
        self.missed = 0

    def add(self, times: list[float | None], t0: float) -> None:
        last, median, missed = _delays(times, t0)
        self.last.append(last)
        self.median.append(median)
        self.missed += missed


async def measure(
    bench: Bench,
    hub: HubProcess,
    registry: registry_pb2_grpc.RegistryServiceStub,
    *,
    changes: int,
    sizes: tuple[int, ...] = SIZES,
) -> None:
    pool = WatcherPool(hub.address, PROCESSES)
    pool.start()
    watches: list[str] = []
    ads: list[str] = []
    opened = 0
    try:
        for size in sizes:
            more = [SERVICE] * (size - opened)
            before = hub.rss_mb()
            watches.append(f"watch-{size}")
            await pool.open(watches[-1], REGISTRY, more)
            await asyncio.sleep(1.0)
            middle = hub.rss_mb()
            ads.append(f"ads-{size}")
            seconds = await pool.open(ads[-1], XDS, more)
            bench.fact(f"open {len(more):,} ADS streams (to {size:,})", seconds, "s")
            await asyncio.sleep(1.0)
            after = hub.rss_mb()
            per_watch = f"hub RSS per Watch stream ({size:,} open)"
            bench.fact(per_watch, (middle - before) * 1024 / len(more), "KiB")
            bench.fact(
                f"hub RSS per ADS stream ({size:,} open)",
                (after - middle) * 1024 / len(more),
                "KiB",
                per_watch,
            )
            opened = size
            watch_row, ads_row = _Row(), _Row()
            for k in range(changes):
                iid = f"x{size}-c{k}"
                request = registry_pb2.RegisterRequest(
                    service=SERVICE,
                    instance_id=iid,
                    host="10.9.1.1",
                    port=9000 + k,
                    ttl_seconds=3600,
                )
                t0 = time.time()
                await registry.Register(request)
                # One after the other (the pool's pipes take one question at a
                # time): the children note arrival times as they happen.
                pushed = await pool.expect(ads, f"{iid}/eds", TIMEOUT)
                watched = await pool.expect(watches, f"{iid}/{ADDED}", TIMEOUT)
                ads_row.add(pushed, t0)
                watch_row.add(watched, t0)
                await asyncio.sleep(PAUSE)
            watch_op, xds_op = WATCH_OP.format(n=size), XDS_OP.format(n=size)
            for op, row, vs in ((watch_op, watch_row, ""), (xds_op, ads_row, watch_op)):
                bench.spread(
                    op,
                    f"xds {size}",
                    size,
                    row.last,
                    median=row.median,
                    missed=row.missed,
                    vs=vs,
                )
    finally:
        for name in ads + watches:
            await pool.close(name)
        pool.stop()
