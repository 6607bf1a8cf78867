"""Watch fan-out, health fan-out and config push: the time from a change until
the last of many watch streams has it, beside one direct etcd watch of the same
keys receiving the same change (issue 8).

- Registry: 1,000, 5,000 and then 20,000 concurrent RegistryService/Watch streams, all on
  one service (``bench-fanout``; the hub holds the 10,000 setup instances in
  other services besides). Each change is a Register of a new instance in that
  service, timed from just before the call until each stream has the ADDED
  event. The hub's resident size is read at each size (bench.scale draws the
  curve: time to open, p50/p99, RSS per stream, CPU per change).
- Health: 1,000 and then 5,000 HealthService/WatchHealth streams on one
  service. Each round
  registers an instance with a TCP check every 0.2 s against a listener of the
  bench, waits until every stream has it HEALTHY, then closes the listener. From
  the close until a stream reports UNHEALTHY is detection (3 failed probes in a
  row: about 3 probe intervals; the interval observed on the listener is
  reported too) plus fan-out; from the health record's write (its
  ``last_check``, stamped by the hub just before the etcd put) is fan-out alone.
- Config: 1,000 ConfigService/WatchConfig streams, first all on one tenant (one
  merged config per change), then each on its own tenant (1,000 merges per
  change); each change is a SetConfigLayer of the global layer, timed from just
  before the call until a stream has the new global version.

Streams live in child processes (bench.watchers); the etcd watch is this
process's, with the hub's own store client. Receive times are time.time(). Each
cell also reports the CPU the hub and the watcher processes spent per change.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from typing import TYPE_CHECKING

import grpc
from aitrading.hub.v1 import (
    config_pb2,
    config_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    types_pb2,
)
from google.protobuf import duration_pb2, struct_pb2

from bench.procs import HubProcess, cpu_seconds
from bench.watchers import CONFIG, HEALTH, REGISTRY, EtcdWatch, WatcherPool
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore, Event

if TYPE_CHECKING:
    from bench.run import Bench

FANOUT = "bench-fanout"
HEALTH_SERVICE = "bench-health"
SIZES = (1000, 5000, 20000)  # registry Watch streams (the streams curve, bench.scale)
HEALTH_SIZES = (1000, 5000)
CHECK_INTERVAL = 0.2  # seconds between probes of the health cell's instance
CONFIG_STREAMS = 1000
PROCESSES = 4  # watcher processes
TIMEOUT = 30.0  # seconds a change may take to reach every stream before it counts as missed
PAUSE = 0.1  # seconds between changes

ADDED = registry_pb2.WATCH_EVENT_TYPE_ADDED
HEALTHY = types_pb2.HEALTH_STATUS_HEALTHY
UNHEALTHY = types_pb2.HEALTH_STATUS_UNHEALTHY
GLOBAL = config_pb2.ConfigLayerRef(kind=config_pb2.CONFIG_LAYER_KIND_GLOBAL)

# Operation names (the baselines are named once per kind of change).
ETCD_REGISTER = "Register -> direct etcd watch"
ETCD_HEALTH_CLOSE = "listener closed -> direct etcd watch"
ETCD_HEALTH_WRITE = "health record written -> direct etcd watch"
ETCD_CONFIG = "SetConfigLayer -> direct etcd watch"


def _delays(times: list[float | None], t0: float) -> tuple[float, float, int]:
    """(last receiver's delay, median receiver's delay, receivers that missed it)."""
    got = [t - t0 for t in times if t is not None]
    if not got:
        raise RuntimeError("no watch stream received the change")
    return max(got), statistics.median(got), len(times) - len(got)


class _Cell:
    """The delays of one cell's changes: the hub's streams and the etcd baseline."""

    def __init__(self, hub: HubProcess, pool: WatcherPool) -> None:
        self.hub = hub
        self.pool = pool
        self.base: list[float] = []
        self.last: list[float] = []
        self.median: list[float] = []
        self.missed = 0
        self._cpu = self._cpu_now()

    def _cpu_now(self) -> tuple[float, float]:
        """CPU seconds of the hub and of the watcher processes together."""
        return cpu_seconds(self.hub.pid), sum(cpu_seconds(p) for p in self.pool.pids)

    def add(self, times: list[float | None], t0: float, t_etcd: float, zero: float = 0) -> None:
        last, median, missed = _delays(times, zero or t0)
        self.base.append(t_etcd - (zero or t0))
        self.last.append(last)
        self.median.append(median)
        self.missed += missed

    def record(
        self, bench: Bench, op: str, base_op: str, cell: str, receivers: int, cpu: bool = True
    ) -> None:
        """``cpu``: report the hub's and the watchers' CPU per change (not where
        the cell also waits for probes, which take CPU as well)."""
        now, n = self._cpu_now(), max(len(self.last), 1)
        hub_cpu, watchers_cpu = ((now[i] - self._cpu[i]) / n for i in (0, 1))
        bench.spread(base_op, cell, 1, self.base)
        bench.spread(
            op,
            cell,
            receivers,
            self.last,
            median=self.median,
            missed=self.missed,
            hub_cpu_s=hub_cpu if cpu else None,
            watchers_cpu_s=watchers_cpu if cpu else None,
            vs=base_op,
        )


async def measure(
    bench: Bench,
    hub: HubProcess,
    channel: grpc.aio.Channel,
    store: EtcdStore,
    *,
    changes: int,
    health_rounds: int,
    config_writes: int,
    sizes: tuple[int, ...] = SIZES,
) -> None:
    pool = WatcherPool(hub.address, PROCESSES)
    pool.start()
    try:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        told = " then ".join(f"{n:,}" for n in sizes)
        bench.section(f"watch fan-out: registry, {told} Watch streams on one service ({FANOUT})")
        await registry_fanout(bench, pool, hub, registry, store, changes, sizes)
        told = " then ".join(f"{n:,}" for n in HEALTH_SIZES)
        bench.section(
            f"watch fan-out: health, {told} WatchHealth streams on one service ({HEALTH_SERVICE})"
        )
        await health_fanout(bench, pool, hub, registry, store, health_rounds)
        bench.section(f"config push: {CONFIG_STREAMS:,} WatchConfig streams")
        await config_push(bench, pool, hub, channel, store, config_writes)
    finally:
        pool.stop()


async def registry_fanout(
    bench: Bench,
    pool: WatcherPool,
    hub: HubProcess,
    registry: registry_pb2_grpc.RegistryServiceStub,
    store: EtcdStore,
    changes: int,
    sizes: tuple[int, ...],
) -> None:
    watch = EtcdWatch(store, keys.service_prefix(FANOUT))
    await watch.start()
    groups: list[str] = []
    opened = 0
    try:
        for size in sizes:
            name = f"registry-{size}"
            seconds = await pool.open(name, REGISTRY, [FANOUT] * (size - opened))
            groups.append(name)
            bench.fact(f"open {size - opened:,} Watch streams (to {size:,})", seconds, "s")
            opened = size
            await asyncio.sleep(1.0)
            bench.fact(
                f"hub RSS, 10,000 inst. + {size:,} watchers",
                hub.rss_mb(),
                "MiB",
                "hub RSS, 10,000 instances",
            )
            cell = _Cell(hub, pool)
            for k in range(changes):
                iid = f"s{size}-c{k}"
                key = keys.instance_key(FANOUT, iid)
                req = registry_pb2.RegisterRequest(
                    service=FANOUT,
                    instance_id=iid,
                    host="10.9.0.1",
                    port=9000 + k,
                    ttl_seconds=3600,
                )
                t0 = time.time()
                await registry.Register(req)
                times = await pool.expect(groups, f"{iid}/{ADDED}", TIMEOUT)
                t_etcd, _ = await watch.first(lambda e, key=key: e.kv.key == key)  # type: ignore[misc]
                cell.add(times, t0, t_etcd)
                await asyncio.sleep(PAUSE)
            cell.record(
                bench,
                f"Register -> last of {size:,} Watch streams",
                ETCD_REGISTER,
                f"registry {size}",
                size,
            )
    finally:
        for name in groups:
            await pool.close(name)
        await watch.stop()


async def _tcp_listener(accepted: list[float]) -> tuple[asyncio.Server, int]:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(time.monotonic())
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def health_fanout(
    bench: Bench,
    pool: WatcherPool,
    hub: HubProcess,
    registry: registry_pb2_grpc.RegistryServiceStub,
    store: EtcdStore,
    rounds: int,
) -> None:
    watch = EtcdWatch(store, keys.HEALTH + f"{HEALTH_SERVICE}/".encode())
    await watch.start()
    check = types_pb2.HealthCheck(
        tcp=types_pb2.TcpCheck(), interval=duration_pb2.Duration(nanos=int(CHECK_INTERVAL * 1e9))
    )
    gaps: list[float] = []  # between probes of one instance while it was up
    groups: list[str] = []
    opened = 0
    try:
        for size in HEALTH_SIZES:
            name = f"health-{size}"
            await pool.open(name, HEALTH, [HEALTH_SERVICE] * (size - opened))
            groups.append(name)
            opened = size
            detection, fanout = _Cell(hub, pool), _Cell(hub, pool)
            for k in range(rounds):
                gaps += await _health_round(
                    f"h{size}-{k}", groups, pool, registry, watch, check, detection, fanout
                )
            n = f"{size:,}"
            detection.record(
                bench,
                f"closed -> last of {n} WatchHealth",
                ETCD_HEALTH_CLOSE,
                f"health close {size}",
                size,
                cpu=False,
            )
            fanout.record(
                bench,
                f"written -> last of {n} WatchHealth",
                ETCD_HEALTH_WRITE,
                f"health write {size}",
                size,
                cpu=False,
            )
        bench.fact(
            f"health probe interval observed ({CHECK_INTERVAL:g} s set)",
            statistics.median(gaps),
            "s",
        )
    finally:
        for name in groups:
            await pool.close(name)
        await watch.stop()


async def _health_round(
    iid: str,
    groups: list[str],
    pool: WatcherPool,
    registry: registry_pb2_grpc.RegistryServiceStub,
    watch: EtcdWatch,
    check: types_pb2.HealthCheck,
    detection: _Cell,
    fanout: _Cell,
) -> list[float]:
    """One instance up (HEALTHY everywhere), then its listener closed: adds the
    times to UNHEALTHY to both cells; returns the gaps seen between its probes."""
    key = keys.health_key(HEALTH_SERVICE, iid)
    accepted: list[float] = []
    server, port = await _tcp_listener(accepted)
    try:
        await registry.Register(
            registry_pb2.RegisterRequest(
                service=HEALTH_SERVICE,
                instance_id=iid,
                host="127.0.0.1",
                port=port,
                health_check=check,
                ttl_seconds=300,
            )
        )
        healthy = await pool.expect(groups, f"{iid}/{HEALTHY}", TIMEOUT)
        if None in healthy:
            raise RuntimeError(f"{iid} never reported HEALTHY on every stream")
        for _ in range(40):  # see one probe interval
            if len(accepted) >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        t0 = time.time()
        server.close()
        await server.wait_closed()

    def unhealthy(e: Event) -> bool:
        return (
            e.kind == "put"
            and e.kv.key == key
            and types_pb2.InstanceHealth.FromString(e.kv.value).status == UNHEALTHY
        )

    times = await pool.expect(groups, f"{iid}/{UNHEALTHY}", TIMEOUT)
    t_etcd, event = await watch.first(unhealthy)
    written = types_pb2.InstanceHealth.FromString(event.kv.value).last_check
    detection.add(times, t0, t_etcd)
    fanout.add(times, t0, t_etcd, zero=written.ToMicroseconds() / 1e6)
    # Gone, so that the hub stops probing a closed port.
    gone = registry_pb2.DeregisterRequest(service=HEALTH_SERVICE, instance_id=iid)
    await registry.Deregister(gone)
    return [b - a for a, b in itertools.pairwise(accepted)]


async def config_push(
    bench: Bench,
    pool: WatcherPool,
    hub: HubProcess,
    channel: grpc.aio.Channel,
    store: EtcdStore,
    writes: int,
) -> None:
    stub = config_pb2_grpc.ConfigServiceStub(channel)
    watch = EtcdWatch(store, keys.config_layer_key("global"))
    await watch.start()
    n = CONFIG_STREAMS
    shapes = {  # group name (no spaces) -> (what the report calls it, the streams' tenants)
        "config-one": ("1 tenant", ["bench-acme"] * n),
        "config-many": (f"{n:,} tenants", [f"bench-t{i:04d}" for i in range(n)]),
    }
    try:
        for group, (shape, tenants) in shapes.items():
            await pool.open(group, CONFIG, tenants)
            try:
                cell = _Cell(hub, pool)
                for w in range(writes):
                    settings = struct_pb2.Struct()
                    settings.update({"bench_write": w})
                    request = config_pb2.SetConfigLayerRequest(
                        layer=GLOBAL, values=config_pb2.ConfigValues(settings=settings)
                    )
                    t0 = time.time()
                    resp = await stub.SetConfigLayer(request)
                    revision = resp.header.revision
                    times = await pool.expect([group], f"global/{resp.layer.version}", TIMEOUT)
                    t_etcd, _ = await watch.first(
                        lambda e, r=revision: e.kv.mod_revision >= r  # type: ignore[misc]
                    )
                    cell.add(times, t0, t_etcd)
                    await asyncio.sleep(PAUSE)
                cell.record(
                    bench,
                    f"SetConfigLayer -> last of {n:,} WatchConfig ({shape})",
                    ETCD_CONFIG,
                    f"config {shape}",
                    n,
                )
            finally:
                await pool.close(group)
    finally:
        await watch.stop()
