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

Then, on the same streams, the hub state changes a proxyless client must follow
within a second (issue 16's target), each on a fresh instance first seen by every
stream, until the last ADS stream has the ClusterLoadAssignment without it (or
with its new weight): its health turning UNHEALTHY (its TCP health endpoint
closes; timed from the probe result, the record's ``last_check``), a roll-out's
drain mark (written into etcd, as roll-outs and the tests write it), its circuit
forced open (OverrideCircuit) and a weight change (Register again). Health
beside as many WatchHealth streams, weight beside the Watch streams; a drain mark
or a circuit is on no registry or health stream.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import TYPE_CHECKING

import grpc
from aitrading.hub.v1 import (
    circuit_pb2,
    circuit_pb2_grpc,
    health_pb2,
    health_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    types_pb2,
)
from google.protobuf import duration_pb2

from bench.procs import HubProcess
from bench.watchers import HEALTH, REGISTRY, XDS, WatcherPool
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore

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

REPS = 5  # repetitions of each state change per size
TARGET_MS = 1000.0  # a proxyless client follows the hub's state within a second
# Probed every 0.2 s, one result decides: the instance is HEALTHY at once and
# UNHEALTHY at the first refused connection once its listener closes.
QUICK_CHECK = types_pb2.HealthCheck(
    tcp=types_pb2.TcpCheck(),
    interval=duration_pb2.Duration(nanos=200_000_000),
    timeout=duration_pb2.Duration(nanos=500_000_000),
    unhealthy_threshold=1,
    healthy_threshold=1,
)
UNHEALTHY, HEALTHY = types_pb2.HEALTH_STATUS_UNHEALTHY, types_pb2.HEALTH_STATUS_HEALTHY
UPDATED = registry_pb2.WATCH_EVENT_TYPE_UPDATED
STATE_OP = "{change} -> EDS ACK from last of {n:,} ADS streams"
HEALTH_WATCH_OP = "probe UNHEALTHY -> last of {n:,} WatchHealth (beside ADS)"
WEIGHT_WATCH_OP = "weight change -> last of {n:,} Watch streams (beside ADS)"
CHANGES = ("probe UNHEALTHY", "drain mark", "circuit forced open", "weight change")


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
    store = EtcdStore([hub.etcd_endpoint])
    watches: list[str] = []
    ads: list[str] = []
    healths: list[str] = []
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
            healths.append(f"health-{size}")
            await pool.open(healths[-1], HEALTH, more)
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
                if op == xds_op:
                    bench.propagation[-1]["target_ms"] = TARGET_MS
            await _state_changes(bench, pool, hub.address, store, size, ads, watches, healths)
    finally:
        for name in ads + watches + healths:
            await pool.close(name)
        pool.stop()
        await store.close()


class _Changes:
    """The four state changes, each on a fresh instance, with what tells that
    streams have it."""

    def __init__(self, address: str, store: EtcdStore) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.registry = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthServiceStub(self.channel)
        self.circuits = circuit_pb2_grpc.CircuitBreakerServiceStub(self.channel)
        self.store = store

    async def register(
        self, iid: str, port: int, *, weight: int = 100, checked: bool = False
    ) -> None:
        request = registry_pb2.RegisterRequest(
            service=SERVICE, instance_id=iid, host="127.0.0.1", port=port, ttl_seconds=3600,
            weight=weight, health_check=QUICK_CHECK if checked else None,
        )  # fmt: skip
        await self.registry.Register(request)

    async def health_of(self, iid: str) -> types_pb2.InstanceHealth | None:
        answer = await self.health.GetHealth(health_pb2.GetHealthRequest(service=SERVICE))
        return next((h for h in answer.instances if h.instance_id == iid), None)

    async def until_healthy(self, iid: str) -> None:
        for _ in range(100):
            record = await self.health_of(iid)
            if record is not None and record.status == HEALTHY:
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{iid} did not turn HEALTHY")

    async def override(self, iid: str, action: circuit_pb2.CircuitOverride.ValueType) -> None:
        await self.circuits.OverrideCircuit(
            circuit_pb2.OverrideCircuitRequest(service=SERVICE, instance_id=iid, action=action)
        )

    async def remove(self, iid: str, change: str) -> None:
        """Undoes the change and deregisters the instance."""
        if change == CHANGES[1]:
            await self.store.delete(keys.drain_key(SERVICE, iid))
        elif change == CHANGES[2]:
            await self.override(iid, circuit_pb2.CIRCUIT_OVERRIDE_RESET)
        await self.registry.Deregister(
            registry_pb2.DeregisterRequest(service=SERVICE, instance_id=iid)
        )


async def _listener() -> tuple[asyncio.Server, int]:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _state_changes(
    bench: Bench,
    pool: WatcherPool,
    address: str,
    store: EtcdStore,
    size: int,
    ads: list[str],
    watches: list[str],
    healths: list[str],
    reps: int = REPS,
) -> None:
    """Each change ``reps`` times on the ADS streams open (``size`` of them), and
    health and weight beside the WatchHealth and Watch streams open with them."""
    bench.section(f"xDS push: state changes, {size:,} ADS streams, {reps} of each")
    changes = _Changes(address, store)
    rows = {change: _Row() for change in CHANGES}
    health_row, weight_row = _Row(), _Row()
    try:
        for k in range(reps):
            for n, change in enumerate(CHANGES):
                iid = f"s{size}-{n}-{k}"
                server, port = await _listener()
                try:
                    await changes.register(iid, port, checked=change == CHANGES[0])
                    await pool.expect(ads, f"{iid}/eds", TIMEOUT)
                    if change == CHANGES[0]:
                        await changes.until_healthy(iid)
                        await pool.expect(healths, f"{iid}/{HEALTHY}", TIMEOUT)
                    await asyncio.sleep(PAUSE)  # let the last answers' ACKs settle
                    marker = f"{iid}/gone"
                    t0 = time.time()
                    if change == CHANGES[0]:
                        server.close()  # connections refused from now: the probe fails
                    elif change == CHANGES[1]:
                        await store.put(keys.drain_key(SERVICE, iid), b"bench-xds")
                    elif change == CHANGES[2]:
                        await changes.override(iid, circuit_pb2.CIRCUIT_OVERRIDE_FORCE_OPEN)
                    else:
                        await changes.register(iid, port, weight=250)
                        marker = f"{iid}/w250"
                    pushed = await pool.expect(ads, marker, TIMEOUT)
                    if change == CHANGES[0]:
                        # From the probe result: when the hub decided, not when
                        # the listener closed (up to a probe interval before).
                        record = await changes.health_of(iid)
                        if record is None or record.status != UNHEALTHY:
                            raise RuntimeError(f"{iid} is not UNHEALTHY after its probe failed")
                        t0 = record.last_check.ToMicroseconds() / 1e6
                        watched = await pool.expect(healths, f"{iid}/{UNHEALTHY}", TIMEOUT)
                        health_row.add(watched, t0)
                    elif change == CHANGES[3]:
                        watched = await pool.expect(watches, f"{iid}/{UPDATED}", TIMEOUT)
                        weight_row.add(watched, t0)
                    rows[change].add(pushed, t0)
                finally:
                    server.close()
                    await changes.remove(iid, change)
        for change in CHANGES:
            op = STATE_OP.format(change=change, n=size)
            beside = ""
            if change == CHANGES[0]:
                beside = HEALTH_WATCH_OP.format(n=size)
                _spread(bench, beside, size, health_row)
            elif change == CHANGES[3]:
                beside = WEIGHT_WATCH_OP.format(n=size)
                _spread(bench, beside, size, weight_row)
            _spread(bench, op, size, rows[change], vs=beside)
            row = bench.propagation[-1]
            row["target_ms"] = TARGET_MS
            met = row["p99_ms"] < TARGET_MS and not row["missed"]
            print(f"    {'met' if met else 'MISSED'}: p99 < {TARGET_MS:g} ms", flush=True)
    finally:
        await changes.channel.close()


def _spread(bench: Bench, op: str, size: int, row: _Row, vs: str = "") -> None:
    bench.spread(op, f"xds {size}", size, row.last, median=row.median, missed=row.missed, vs=vs)
