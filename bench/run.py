"""`python -m bench.run [--quick] [--out FILE]`: the hub under load.

Starts an etcd (in a temp dir) and a hub as a separate `central-hub serve`
process (serving /metrics), registers 10,000 instances over 500 services, then
measures, with every figure beside a baseline taken in the same run:

- driven by h2load (bench.h2load: nghttp2's C load generator, raw gRPC frames,
  errors counted by the servers), GetService and PickEndpoint at 1, 16 and 64
  concurrent streams (closed loop, fixed duration) and at a fixed offered rate
  of 1,000 calls/s (open loop), beside (a) grpc.health.v1 Health/Check on the
  same hub, registered without the hub's call wrapper: the gRPC stack's own
  floor, and (b) etcd's own KV/Range of the same service's 20 keys
  (serializable). One service per cell (h2load sends one prepared body);
- GetService from this process's grpc.aio client at the same concurrencies and
  rate: what a Python caller sees, its own client's cost included;
- GetService on one hub process and on `--workers 2` (h2load, 8 connections);
- watch fan-out (bench.fanout): a registry change to the last of 1,000 and of
  5,000 Watch streams, a health change to the last of 1,000 and of 5,000
  WatchHealth streams (detection + fan-out, and fan-out alone), a global config
  write to the last of 1,000 WatchConfig streams, each beside one direct etcd
  watch of the same keys;
  the hub's resident size with 1,000 (and 5,000) watchers open;
- xDS push (bench.xds): Register until the last of 100 and of 1,000 ADS streams
  has the new endpoint (and ACKs it), beside as many Watch streams of the same
  service; the hub's resident size per ADS stream beside per Watch stream; and
  an instance's health turning UNHEALTHY, a drain mark, a circuit forced open and
  a weight change until the last ADS stream has the new assignment, each against
  the 1 s target (health beside WatchHealth, weight beside Watch streams);
- quota Allocate with 50 concurrent allocators on one tenant beside a raw etcd
  compare-and-set increment, 50 concurrent (bench.quota);
- the scale curves (bench.scale): the registry at 10,000 and 100,000 instances
  (past the setup's, bulk-loaded straight into etcd) and the Watch streams at
  1,000 / 5,000 / 20,000, each with its growth exponent;
- Register beside a raw etcd lease grant + put, KeepAlive beside a raw etcd lease
  keep-alive, at concurrency 16 and 64 (with the curve's 100,000 instances);
- hub resident size empty and with 10,000 instances; cold start of a second hub
  with 10,000 instances in etcd beside the first hub's start on an empty etcd;
- probe throughput (bench.probing): 10,000 TCP checks at the default 10 s interval
  against a listener of the bench, beside the theoretical 1,000 probes/s.

Everything but the h2load rows is driven by this process: grpc.aio, one channel
to the hub shared by all workers (one HTTP/2 connection, calls multiplexed), one
EtcdStore channel to etcd, requests built before the clock starts. Load
generators share the machine's cores with the hub and etcd, as a real client on
the same host would. Watch streams are held by child processes
(bench.watchers), 100 streams per connection.

--quick (under a minute) writes the setup's instances straight into etcd rather
than registering them, and runs discovery and --workers only: it skips the
second hub's cold start, fan-out, quota, the instance curve, writes, probes and
the cluster. --scale (`make bench-scale`) runs the setup and then only the
instance curve, to 1,000,000 instances, on an etcd with a larger backend quota.

Prints one report, headed by the ratios the hub is judged on, and writes it as
JSON (default bench/results/<UTC time>.json) with the machine it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from aetcd import rpc
from aitrading.hub.v1 import balancer_pb2, registry_pb2, registry_pb2_grpc
from grpc_health.v1 import health_pb2

from bench import cluster, fanout, h2load, local_view, probing, quota, report, scale, xds
from bench.load import Stats, closed_loop, method, open_loop, raw_unary, serialized, spread
from bench.procs import HubProcess, cpu_seconds
from bench.report import ETCD_READ, GET, GET_1PROC, GET_2PROC, GET_PY, NOOP, PICK
from bench.watchers import STREAMS_PER_CHANNEL, WAVE
from hub_server.embedded_etcd import EtcdProcess, etcd_binary
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore, prefix_end

SERVICES = 500
PER_SERVICE = 20
CONCURRENCIES = (1, 16, 64)
OFFERED_RATE = 1000
SETUP_CONCURRENCY = 64
WRITE_CONCURRENCIES = (16, 64)
RESULTS = Path(__file__).parent / "results"
# `make bench-scale` (--scale) writes its results here, apart from `make bench`'s.
SCALE_RESULTS = RESULTS / "scale"
# The instance curve's sizes (bench.scale): `make bench` and `make bench-scale`.
INSTANCE_SIZES = (10_000, 100_000)
SCALE_INSTANCE_SIZES = (10_000, 100_000, 1_000_000)
# h2load sends one prepared body per run, so each h2load cell asks for one
# service (the same for the hub and etcd: the same 20 keys); the Python rows
# spread over all 500.
H2_SERVICE = "svc-250"
# Connections for h2load's closed-loop cells: several, as several callers would
# open (c=1 is one connection); --workers cells use 8, since SO_REUSEPORT
# spreads connections, not calls.
H2_CONNECTIONS = 4
WORKER_CONNECTIONS = 8
# Sections --quick leaves out to finish in under a minute.
SLOW_SECTIONS = (
    "second hub's cold start",
    "watch fan-out",
    "xDS push",
    "quota",
    "writes",
    "instance curve",
    "probes",
    "3-member cluster",
)

# Operation names, as they appear in the report (the discovery ones live in report).
REGISTER = "Register"
ETCD_REGISTER = "etcd LeaseGrant+Put (direct)"
KEEPALIVE = "KeepAlive"
ETCD_KEEPALIVE = "etcd LeaseKeepAlive (direct)"


def registration(k: int) -> registry_pb2.RegisterRequest:
    """The k-th instance: 20 per service (the first 10,000 are the setup's, the
    rest the instance curve's), a long TTL so that no keep-alive is needed
    during the run."""
    s, i = divmod(k, PER_SERVICE)
    return registry_pb2.RegisterRequest(
        service=f"svc-{s:03d}",
        instance_id=f"i{i:02d}",
        host=f"10.0.{s % 250}.{i + 1}",
        port=8000 + i,
        version="1.4.0",
        metadata={"zone": f"z{i % 3}", "build": "bench"},
        ttl_seconds=3600,
    )


class Bench:
    def __init__(self, duration: float, warmup: float) -> None:
        self.duration = duration
        self.warmup = warmup
        self.pids: dict[str, int] = {}  # processes whose CPU time each row reports
        self.rows: list[dict[str, Any]] = []
        self.facts: list[dict[str, Any]] = []
        self.propagation: list[dict[str, Any]] = []
        self.probes: dict[str, Any] = {}
        self.curves: list[dict[str, Any]] = []
        self.started = time.perf_counter()

    def section(self, title: str) -> None:
        """Prints a section's title with the seconds the run has taken so far."""
        print(f"[{time.perf_counter() - self.started:4.0f} s] {title}", flush=True)

    def record(
        self,
        op: str,
        concurrency: int | str,
        stats: Stats | dict[str, Any],
        *,
        vs: tuple[str, ...] = (),
        driver: str = "python",
    ) -> dict[str, Any]:
        summary = stats.summary() if isinstance(stats, Stats) else stats
        row = {"op": op, "concurrency": concurrency, "driver": driver, **summary, "vs": list(vs)}
        self.rows.append(row)
        print(f"  {op:<38} {driver:<6} c={concurrency!s:<7} {row['calls_per_s']:>9.0f}/s "
              f"p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms"
              + (f"  {row['errors']} errors" if row["errors"] else ""), flush=True)  # fmt: skip
        return row

    def _cpu(self, client: Callable[[], float] = time.process_time) -> dict[str, float]:
        """CPU seconds used so far by the client (this process, or h2load), the
        hub and etcd."""
        return {"client": client()} | {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def _add_cpu(
        self, row: dict[str, Any], before: dict[str, float], client: Callable[[], float]
    ) -> None:
        used = {k: v - before[k] for k, v in self._cpu(client).items()}
        row["cpu_pct"] = {k: round(100 * v / row["seconds"]) for k, v in used.items()}
        row["cpu_us_per_call"] = {k: round(1e6 * v / max(row["calls"], 1)) for k, v in used.items()}

    async def timed(
        self, op: str, concurrency: int | str, load: Awaitable[Stats], vs: tuple[str, ...] = ()
    ) -> None:
        """Runs one load and records it with the CPU each process spent meanwhile."""
        before = self._cpu()
        stats = await load
        self._add_cpu(self.record(op, concurrency, stats, vs=vs), before, time.process_time)

    async def h2(
        self,
        op: str,
        target: h2load.Target,
        *,
        c: int = 0,
        connections: int = 1,
        rate: float = 0.0,
        vs: tuple[str, ...] = (),
    ) -> None:
        """One h2load cell: closed loop at ``c`` streams over ``connections``, or
        open loop at ``rate`` calls/s (bench.h2load). The warm-up is a run of its
        own, so that the cell's byte and error counts are the cell's alone."""
        if self.warmup and not rate:
            await h2load.run(
                target, concurrency=c, connections=connections, duration=self.warmup, log=False
            )
        before = self._cpu(h2load.children_cpu)
        summary, log, errors = await h2load.run(
            target, concurrency=c, connections=connections, duration=self.duration, rate=rate
        )
        stats = h2load.summarize(summary, log, errors, rate=rate)
        row = self.record(op, f"{rate:g}/s" if rate else c, stats, vs=vs, driver="h2load")
        row["connections"] = math.ceil(rate / h2load.MAX_RPS_PER_CLIENT) if rate else connections
        row["errors_counted_by"] = target.error_source
        self._add_cpu(row, before, h2load.children_cpu)

    async def closed(
        self, op: str, call: Callable[[], Awaitable[Any]], c: int, vs: tuple[str, ...] = ()
    ) -> None:
        if self.warmup:
            await closed_loop(call, c, duration=self.warmup)
        await self.timed(op, c, closed_loop(call, c, duration=self.duration), vs)

    async def offered(
        self, op: str, call: Callable[[], Awaitable[Any]], vs: tuple[str, ...] = ()
    ) -> None:
        load = open_loop(call, OFFERED_RATE, self.duration)
        await self.timed(op, f"{OFFERED_RATE}/s", load, vs)

    def spread(
        self,
        op: str,
        cell: str,
        receivers: int,
        delays: list[float],
        *,
        median: list[float] | None = None,
        missed: int = 0,
        hub_cpu_s: float | None = None,
        watchers_cpu_s: float | None = None,
        vs: str = "",
    ) -> None:
        """A propagation row: per change, the delay until the last receiver had it
        (``median``: until the median receiver had it)."""
        row = {"op": op, "cell": cell, "receivers": receivers, **spread(delays), "missed": missed}
        if median:
            row["median_receiver_p50_ms"] = round(statistics.median(median) * 1e3, 3)
        if hub_cpu_s is not None:
            row["hub_cpu_ms_per_change"] = round(hub_cpu_s * 1e3, 1)
        if watchers_cpu_s is not None:
            row["watchers_cpu_ms_per_change"] = round(watchers_cpu_s * 1e3, 1)
        row["vs"] = vs
        self.propagation.append(row)
        print(f"  {op:<44} {receivers:>5} p50 {row['p50_ms']:8.1f} ms  "
              f"p99 {row['p99_ms']:8.1f} ms  max {row['max_ms']:8.1f} ms", flush=True)  # fmt: skip

    def fact(self, name: str, value: float, unit: str, baseline: str = "") -> None:
        self.facts.append({"name": name, "value": round(value, 3), "unit": unit, "vs": baseline})
        print(f"  {name}: {value:.3f} {unit}", flush=True)


async def register_all(bench: Bench, registry: registry_pb2_grpc.RegistryServiceStub) -> list:
    requests = iter([registration(k) for k in range(SERVICES * PER_SERVICE)])
    instances = []

    async def register() -> None:
        resp = await registry.Register(next(requests))
        instances.append(resp.instance)

    load = closed_loop(register, SETUP_CONCURRENCY, count=SERVICES * PER_SERVICE)
    await bench.timed("Register (setup, 10,000)", SETUP_CONCURRENCY, load)
    if bench.rows[-1]["errors"]:
        raise RuntimeError(f"{bench.rows[-1]['errors']} of the setup registrations failed")
    return instances


async def measure(
    bench: Bench, args: argparse.Namespace, workdir: Path, etcd: EtcdProcess, hub: HubProcess
) -> None:
    bench.fact("hub cold start, empty etcd", await hub.start(), "s")
    assert etcd.proc is not None
    bench.pids = {"hub": hub.pid, "etcd": etcd.proc.pid}
    await asyncio.sleep(1.0)  # let the start-up garbage settle before reading RSS
    bench.fact("hub RSS, empty", hub.rss_mb(), "MiB")

    store = EtcdStore([etcd.endpoint])
    channel = grpc.aio.insecure_channel(hub.address)
    try:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)

        if args.quick:
            # Under a minute: written straight into etcd (bench.scale), not
            # registered; the rows --quick keeps only read them.
            bench.section("setup: 10,000 instances over 500 services, written into etcd")
            await scale.bulk_load(store, registration, 0, SERVICES * PER_SERVICE)
            await scale.until_served(registry, registration(SERVICES * PER_SERVICE - 1).service)
            instances = []
        else:
            bench.section("setup: registering 10,000 instances over 500 services")
            instances = await register_all(bench, registry)
        await asyncio.sleep(1.0)
        bench.fact("hub RSS, 10,000 instances", hub.rss_mb(), "MiB", "hub RSS, empty")
        if args.scale:
            await instance_curve(bench, args, workdir, hub, store)
            bench.section("done")
            return

        if not args.quick:
            await cold_start(bench, etcd.endpoint, workdir)

        rnd = random.Random(8)
        names = [f"svc-{s:03d}" for s in range(SERVICES)]
        get_requests = [registry_pb2.GetServiceRequest(service=n) for n in names]
        got = await registry.GetService(get_requests[0])
        kvs, _ = await store.get_prefix(keys.service_prefix(names[0]))
        assert len(got.service.instances) == len(kvs) == PER_SERVICE, "setup incomplete"

        def get_service() -> Awaitable[Any]:
            return registry.GetService(rnd.choice(get_requests))

        targets = await discovery_targets(channel, hub, etcd.endpoint)
        bench.section("discovery: h2load, closed loop (one service per cell: " + H2_SERVICE + ")")
        for c in CONCURRENCIES:
            conns = min(c, H2_CONNECTIONS)
            await bench.h2(NOOP, targets[NOOP], c=c, connections=conns)
            await bench.h2(ETCD_READ, targets[ETCD_READ], c=c, connections=conns)
            for op in (GET, PICK):
                await bench.h2(op, targets[op], c=c, connections=conns, vs=(NOOP, ETCD_READ))
        bench.section(f"discovery: h2load, open loop at {OFFERED_RATE} calls/s")
        for op in (NOOP, ETCD_READ, GET, PICK):
            vs = (NOOP, ETCD_READ) if op in (GET, PICK) else ()
            await bench.h2(op, targets[op], rate=OFFERED_RATE, vs=vs)
        # What a Python program calling the hub gets: its own client's cost
        # included (the client, not the hub, is the limit here).
        bench.section("discovery: a Python caller (grpc.aio, one channel, 500 services)")
        for c in CONCURRENCIES:
            await bench.closed(GET_PY, get_service, c)
        await bench.offered(GET_PY, get_service)
        bench.section("local resolution: hub_client's local views beside the same lookups as RPCs")
        await local_view.measure(
            bench, hub.address, store, names, CONCURRENCIES, changes=args.changes
        )

        bench.section("scale: GetService on one process and on --workers 2 (h2load)")
        await workers(bench, hub, etcd.endpoint, workdir, targets[GET])

        if args.quick:
            bench.section(f"--quick: skipping {', '.join(SLOW_SECTIONS)}")
        else:
            await slow_sections(bench, args, workdir, hub, channel, store, instances)
        bench.section("done")
        if hub.proc is not None and hub.proc.poll() is not None:
            raise RuntimeError("the hub died during the run")
    finally:
        await channel.close()
        await store.close()


async def slow_sections(
    bench: Bench,
    args: argparse.Namespace,
    workdir: Path,
    hub: HubProcess,
    channel: grpc.aio.Channel,
    store: EtcdStore,
    instances: list,
) -> None:
    """Fan-out, quota, writes, probes and the 3-member cluster (not in --quick)."""
    registry = registry_pb2_grpc.RegistryServiceStub(channel)
    # Before the writes, which add instances: the memory figures with watchers
    # open are for the 10,000 setup instances.
    await fanout.measure(
        bench,
        hub,
        channel,
        store,
        changes=args.changes,
        health_rounds=args.health_rounds,
        config_writes=args.config_writes,
        sizes=args.streams,
    )
    bench.curves += scale.stream_curves(bench)
    bench.section(f"xDS push: {' / '.join(f'{n:,}' for n in xds.SIZES)} ADS streams, "
                  "beside as many Watch streams")  # fmt: skip
    await xds.measure(bench, hub, registry, changes=args.changes)
    bench.section(f"quota: Allocate, {quota.ALLOCATORS} concurrent allocators on one tenant")
    await quota.measure(bench, channel, store)
    # The writes and probes that follow run with the curve's largest registry.
    await instance_curve(bench, args, workdir, hub, store)
    bench.section("writes (with the instance curve's largest registry)")
    await writes(bench, channel, store, instances)
    if args.probe_instances:  # 0: no probing section
        bench.section(f"probes: {args.probe_instances:,} TCP checks every {probing.INTERVAL:g} s, "
                      f"watched for {args.probe_wait:g} s")  # fmt: skip
        await probing.measure(bench, registry, store, args.probe_wait, args.probe_instances)
    bench.pids = {}  # the cluster's processes are its own
    await cluster.run(bench, workdir, REGISTER)


async def instance_curve(
    bench: Bench,
    args: argparse.Namespace,
    workdir: Path,
    hub: HubProcess,
    store: EtcdStore,
) -> None:
    """The instance curve (bench.scale): grows the registry to each size, measuring
    each point; the sizes past the setup's 10,000 are bulk-loaded into etcd."""
    sizes = args.instances
    bench.section(f"instance curve: {' / '.join(f'{n:,}' for n in sizes)} instances "
                  "(past the setup's 10,000: written straight into etcd)")  # fmt: skip
    facts = {f["name"]: f["value"] for f in bench.facts}
    setup = (SERVICES * PER_SERVICE, facts["hub RSS, empty"], facts["hub RSS, 10,000 instances"])
    points = scale.InstanceCurve(bench, hub, store.endpoints[0], workdir, registration, setup)
    for n in sizes:
        await points.grow_to(n, store)
    bench.curves += points.curves()


async def cold_start(bench: Bench, etcd_endpoint: str, workdir: Path) -> None:
    """A second hub's start with 10,000 instances in etcd, and its memory."""
    second = HubProcess("hub-2", etcd_endpoint, workdir)
    try:
        cold = await second.start()
        bench.fact("hub cold start, 10,000 instances", cold, "s", "hub cold start, empty etcd")
        await asyncio.sleep(1.0)
        bench.fact("second hub RSS after cold start", second.rss_mb(), "MiB", "hub RSS, empty")
    finally:
        second.stop()


async def discovery_targets(
    channel: grpc.aio.Channel, hub: HubProcess, etcd_endpoint: str
) -> dict[str, h2load.Target]:
    """The four discovery methods as h2load targets, each with the counter its
    gRPC errors are read from."""
    assert hub.metrics_address, "the bench's hub serves /metrics"
    hub_metrics = f"http://{hub.metrics_address}/metrics"
    hub_counted = "hub RPC outcome metric"

    def on_hub(method: str, request: Any) -> h2load.Target:
        counter = h2load.metrics_reader(hub_metrics, h2load.hub_outcomes, method)
        body = h2load.grpc_body(request)
        return h2load.Target(hub.address, method, body, counter, error_source=hub_counted)

    prefix = keys.service_prefix(H2_SERVICE)
    etcd_range = "/etcdserverpb.KV/Range"
    # The hub's own reads are linearizable; a serializable read is etcd's cheapest
    # (what a local replica serves), the fairest floor for a read from memory.
    range_request = rpc.RangeRequest(key=prefix, range_end=prefix_end(prefix), serializable=True)
    check = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
    targets = {
        GET: on_hub(
            method(registry_pb2, "RegistryService", "GetService"),
            registry_pb2.GetServiceRequest(service=H2_SERVICE),
        ),
        PICK: on_hub(
            method(balancer_pb2, "LoadBalancerService", "PickEndpoint"),
            balancer_pb2.PickEndpointRequest(service=H2_SERVICE),
        ),
        # grpc.health.v1 is registered without the hub's call wrapper (hub_server
        # app.py): no hub counter, and no authentication, limits or metric on
        # the way, so it is the gRPC stack's own floor. Its answers all have one
        # size: errors are the answers without a body.
        NOOP: h2load.Target(
            hub.address,
            method(health_pb2, "Health", "Check"),
            h2load.grpc_body(health_pb2.HealthCheckRequest()),
            response_size=5 + check.ByteSize(),
            error_source="responses without a body (health.v1 has no hub counter)",
        ),
        ETCD_READ: h2load.Target(
            etcd_endpoint,
            etcd_range,
            h2load.grpc_body(range_request),
            h2load.metrics_reader(
                f"http://{etcd_endpoint}/metrics", h2load.etcd_outcomes, etcd_range
            ),
            error_source="etcd grpc_server_handled_total",
        ),
    }
    # Both servers answer the prepared bodies before anything is timed.
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    got = await stub.GetService(registry_pb2.GetServiceRequest(service=H2_SERVICE))
    assert len(got.service.instances) == PER_SERVICE
    return targets


async def workers(
    bench: Bench,
    hub: HubProcess,
    etcd_endpoint: str,
    workdir: Path,
    get: h2load.Target,
) -> None:
    """GetService on 1 hub process and on `--workers 2`, driven by h2load over 8
    connections, since SO_REUSEPORT spreads connections, not calls. --workers
    serves no /metrics: errors on both are the answers without a body (every
    GetService answer for one service has the same size)."""
    async with grpc.aio.insecure_channel(hub.address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        answer = await stub.GetService(registry_pb2.GetServiceRequest(service=H2_SERVICE))
    size = 5 + answer.ByteSize()
    counted = "responses without a body (--workers has no /metrics)"
    two = HubProcess("workers-2", etcd_endpoint, workdir, extra=("--workers", "2"))
    await two.start()
    try:
        await asyncio.sleep(1.0)  # the workers' views load
        for name, address in ((GET_1PROC, hub.address), (GET_2PROC, two.address)):
            target = h2load.Target(
                address, get.method, get.body, response_size=size, error_source=counted
            )
            # The one-process hub's CPU is not the workers': leave it out of their rows.
            pids = dict(bench.pids)
            if name == GET_2PROC:
                bench.pids.pop("hub", None)
            try:
                for c in (16, 64):
                    vs = (GET_1PROC,) if name == GET_2PROC else ()
                    await bench.h2(name, target, c=c, connections=WORKER_CONNECTIONS, vs=vs)
            finally:
                bench.pids = pids
    finally:
        two.stop()


async def writes(
    bench: Bench, channel: grpc.aio.Channel, store: EtcdStore, instances: list
) -> None:
    """Register and KeepAlive on the hub beside what they cost etcd directly.
    Registers (new instances, one lease each) are serialized before the clock
    starts and sent through a bare call (bench.load.raw_unary): the Python
    caller's CPU shares the two cores with the hub and etcd, so it is kept to
    grpc.aio's own."""
    counter = iter(range(10**9))
    value = instances[0].SerializeToString()  # a stored instance's size

    def write_request(k: int) -> registry_pb2.RegisterRequest:
        req = registration(k % (SERVICES * PER_SERVICE))
        req.service, req.instance_id = f"write-{k % 100:02d}", f"w{k}"
        return req

    # One stream of new instances for every Register row; enough for both rows
    # at ~2,500/s, any further ones built when asked.
    ready = int(2500 * (bench.warmup + bench.duration) * len(WRITE_CONCURRENCIES))
    register = raw_unary(
        channel,
        method(registry_pb2, "RegistryService", "Register"),
        serialized(write_request, ready),
    )

    async def raw_register() -> None:
        lease = await store.grant_lease(3600)
        await store.put(b"/bench/raw/" + str(next(counter)).encode(), value, lease=lease)

    pick = random.Random(8).choice
    keep_alives = [
        registry_pb2.KeepAliveRequest(
            service=i.service, instance_id=i.instance_id, lease_id=i.lease_id
        )
        for i in instances
    ]

    registry = registry_pb2_grpc.RegistryServiceStub(channel)

    def keep_alive() -> Awaitable[Any]:
        return registry.KeepAlive(pick(keep_alives))

    def raw_keep_alive() -> Awaitable[Any]:
        return store.keep_alive(pick(instances).lease_id)

    for c in WRITE_CONCURRENCIES:
        await bench.closed(ETCD_REGISTER, raw_register, c)
        await bench.closed(REGISTER, register, c, vs=(ETCD_REGISTER,))
        await bench.closed(ETCD_KEEPALIVE, raw_keep_alive, c)
        await bench.closed(KEEPALIVE, keep_alive, c, vs=(ETCD_KEEPALIVE,))


def meminfo_kib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def environment(args: argparse.Namespace) -> dict[str, Any]:
    def out(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""

    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": out("git", "rev-parse", "--short", "HEAD")
        + ("-dirty" if out("git", "status", "--porcelain", "--untracked-files=no") else ""),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "etcd": (out(etcd_binary(), "--version").splitlines() or [""])[0],
        # Other work on the machine skews everything: the 1-minute load average
        # when the run started and when it ended.
        "loadavg_start_end": [args.loadavg, round(os.getloadavg()[0], 2)],
        "machine": {
            "cores": len(os.sched_getaffinity(0)),
            "cpu_model": cpu,
            "memory_mib": round(meminfo_kib("MemTotal") / 1024),
            # 1-, 5- and 15-minute load averages before and after the run.
            "loadavg_before": args.loadavg_all,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "h2load": (out("h2load", "--version").splitlines() or [""])[0],
        "quick": args.quick,
        "scale": args.scale,
        "skipped": list(SLOW_SECTIONS) if args.quick else [],
        "instance_curve": {
            "sizes": list(args.instances),
            "bulk_loaded": "past the setup's 10,000: written straight into etcd with the hub's "
            f"keys and values, {scale.LEASE_SHARE:,} instances per shared {scale.BULK_TTL} s lease",
            "etcd_quota_backend_bytes": scale.SCALE_QUOTA_BYTES if args.scale else "etcd default",
        },
        "probe_instances": args.probe_instances,
        "seconds_per_cell": args.duration,
        "instances": SERVICES * PER_SERVICE,
        "services": SERVICES,
        "watchers": {
            "processes": fanout.PROCESSES,
            "streams_per_connection": STREAMS_PER_CHANNEL,
            "opened_in_waves_of": WAVE,
            "registry_and_health_watches": "one service each (not all services)",
        },
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(args.duration, warmup=0.2 if args.quick else 0.5)
    # SIGTERM stops the run like Ctrl-C does: cancelled, so that everything below
    # is cleaned up.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    workdir = Path(tempfile.mkdtemp(prefix="hub-bench-"))
    if args.scale:  # etcd reads its flags from ETCD_* variables too
        os.environ["ETCD_QUOTA_BACKEND_BYTES"] = str(scale.SCALE_QUOTA_BYTES)
    etcd = EtcdProcess(workdir / "etcd", name="bench")
    hub: HubProcess | None = None
    try:
        await etcd.start_async()
        hub = HubProcess("hub-1", etcd.endpoint, workdir, metrics=True)
        await measure(bench, args, workdir, etcd, hub)
    finally:
        if hub is not None:
            hub.stop()
        etcd.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report.add_ratios(bench.rows, bench.facts, bench.propagation)
    return {
        "environment": environment(args),
        "headline": report.headline(bench.rows),
        "results": bench.rows,
        "propagation": bench.propagation,
        "probes": bench.probes,
        "curves": bench.curves,
        "facts": bench.facts,
        "targets": report.targets(
            bench.rows, bench.facts, OFFERED_RATE, bench.propagation, bench.probes, bench.curves
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="under a minute: 1 s per measurement, not 3 s; setup, discovery and "
        "--workers only (skips " + ", ".join(SLOW_SECTIONS) + ")",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="`make bench-scale`: the setup, then only the instance curve to "
        + " / ".join(f"{n:,}" for n in SCALE_INSTANCE_SIZES)
        + " instances (results in bench/results/scale/)",
    )
    parser.add_argument("--instances", help="the instance curve's sizes, comma-separated")
    parser.add_argument("--streams", help="the Watch stream curve's sizes, comma-separated")
    parser.add_argument("--probe-instances", type=int, default=probing.INSTANCES,
                        help="instances the prober checks (0: none)")  # fmt: skip
    parser.add_argument("--duration", type=float, help="seconds per measurement")
    parser.add_argument("--out", type=Path, help="JSON file (default bench/results/<time>.json)")
    args = parser.parse_args(argv)
    args.duration = args.duration or (1.0 if args.quick else 3.0)
    # Changes per fan-out cell, health rounds, config writes per shape, and how
    # long the probe cell watches (at least one interval past the first round).
    args.changes = 5 if args.quick else 20
    args.health_rounds = 3 if args.quick else 10
    args.config_writes = 3 if args.quick else 10
    args.probe_wait = 11.0 if args.quick else 22.0

    def sizes(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(int(x) for x in text.split(",")) if text else default

    args.instances = sizes(args.instances, SCALE_INSTANCE_SIZES if args.scale else INSTANCE_SIZES)
    args.streams = sizes(args.streams, fanout.SIZES)
    started = time.perf_counter()
    args.loadavg_all = [round(x, 2) for x in os.getloadavg()]
    args.loadavg = args.loadavg_all[0]
    if not args.scale and not h2load.available():
        print("h2load not found: apt-get install nghttp2-client (make bench does)", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: everything the run started is stopped", file=sys.stderr)
        return 130
    result["environment"]["wall_seconds"] = round(time.perf_counter() - started, 1)
    # Written before it is rendered, so that a report bug does not lose a run.
    out = args.out or (SCALE_RESULTS if args.scale else RESULTS) / (
        f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(report.render(result))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
