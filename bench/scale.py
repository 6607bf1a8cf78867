"""Scale curves (issue 18): how the hub's costs grow with what it holds, each
point beside a baseline measured in the same run, and for every curve the growth
exponent between its largest two points (cost ~ size^k: 0 flat, 1 linear),
flagged when worse than linear.

Instances (10,000 / 100,000 in `make bench`; up to 1,000,000 in `make
bench-scale`): the 10,000 setup instances are registered through the API, the
rest written straight into etcd by ``bulk_load`` with the hub's own keys and
values (``keys.instance_key`` and the Instance that ``validate_registration``
builds, as Register stores it), 20 per service, sharing one long lease per
10,000 instances (a Register grants a lease per instance; a million through the
API would take ~25 minutes at today's rate). At each point:

- the first hub's resident size (it followed the load through its watch) and
  how long after the load began it answered for the last service loaded;
- a second hub's cold start and resident size, beside the bench reading the
  same keys from etcd (paged, as the hub reads them): the floor of a cold start;
- GetService p50/p99 of one service (``svc-250``) from one sequential Python
  caller, beside a direct etcd Range of its 20 keys from the same caller;
- a full ListServices (every page of 1,000 services), beside the same paged read;
- etcd's database size;
- Register (new instances of one service) and KeepAlive (of 1,000 of the
  setup's instances) at 16 and 64 callers, beside a direct etcd lease grant and put,
  and lease keep-alive: per-change work that grew with other services'
  instances would show here.

Watch streams (1,000 / 5,000 / 20,000): the curve is built from bench.fanout's
cells (time to open, change -> last stream p50/p99, hub RSS per stream, the
hub's and the watcher processes' CPU per change).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from aitrading.hub.v1 import registry_pb2, registry_pb2_grpc, types_pb2

from bench.load import Stats, closed_loop, method, percentile, raw_unary, serialized
from bench.procs import HubProcess
from hub_server.registry.service import validate_registration
from hub_server.store import keys
from hub_server.store.etcd import MAX_TXN_OPS, EtcdStore, Txn
from hub_server.store.mirror import LOAD_PAGE

if TYPE_CHECKING:
    from bench.run import Bench

PER_SERVICE = 20
LEASE_SHARE = 10_000  # bulk-loaded instances per shared lease
BULK_TTL = 6 * 3600  # longer than any run: nothing expires meanwhile
BULK_WRITERS = 4  # transactions in flight while bulk loading
PROBE_SERVICE = "svc-250"  # the service GetService asks for at every point
# Enough for a p99 that is not the third-slowest call (300 made it swing 2x between runs).
SEQUENTIAL_CALLS = 2000
WRITE_CALLERS = (16, 64)
WRITE_SECONDS = 2.0
REGISTER_METHOD = method(registry_pb2, "RegistryService", "Register")
KEEPALIVE_METHOD = method(registry_pb2, "RegistryService", "KeepAlive")
KEEPALIVE_INSTANCES = 1000
# etcd's default backend quota is 2 GiB; a million instances with their history
# need more (`make bench-scale` starts its etcd with this).
SCALE_QUOTA_BYTES = 16 * 1024**3
WORSE_THAN_LINEAR = 1.1  # a cost exponent above this is flagged
_BIG_ANSWERS = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]

Request = Callable[[int], registry_pb2.RegisterRequest]


def exponent(points: list[list[Any]]) -> float | None:
    """k in value ~ size^k between the largest two sizes (None: not measurable)."""
    pts = sorted((p for p in points if p[1] is not None), key=lambda p: p[0])
    if len(pts) < 2:
        return None
    (x1, y1), (x2, y2) = pts[-2], pts[-1]
    if x1 <= 0 or y1 <= 0 or y2 <= 0 or x2 == x1:
        return None
    return round(math.log(y2 / y1) / math.log(x2 / x1), 2)


def curve(
    name: str,
    x: str,
    unit: str,
    points: list[list[Any]],
    *,
    baseline: tuple[str, list[list[Any]]] | None = None,
    higher_is_better: bool = False,
) -> dict[str, Any]:
    """One curve: its points, its baseline's, and how its cost grows. For a
    throughput the cost is its inverse: cost exponent = -(throughput exponent)."""
    k = exponent(points)
    cost_k = None if k is None else (-k if higher_is_better else k)
    out: dict[str, Any] = {
        "name": name,
        "x": x,
        "unit": unit,
        "points": points,
        "higher_is_better": higher_is_better,
        "exponent": k,
        "cost_exponent": cost_k,
        "worse_than_linear": cost_k is not None and cost_k > WORSE_THAN_LINEAR,
    }
    if baseline:
        out["baseline"] = {"name": baseline[0], "points": baseline[1],
                           "exponent": exponent(baseline[1])}  # fmt: skip
    return out


def _stored(template: types_pb2.Instance, req: registry_pb2.RegisterRequest) -> bytes:
    """What Register would store for ``req``: the template (built by the hub's own
    validate_registration) with this request's names, address and labels."""
    inst = types_pb2.Instance()
    inst.CopyFrom(template)
    inst.service, inst.instance_id = req.service, req.instance_id
    inst.host, inst.port = req.host, req.port
    inst.metadata.clear()
    inst.metadata.update(req.metadata)
    return inst.SerializeToString()


async def bulk_load(store: EtcdStore, request: Request, start: int, stop: int) -> list[int]:
    """Writes instances ``start`` .. ``stop - 1`` straight into etcd, as Register
    would store them, in transactions of MAX_TXN_OPS puts; returns the leases
    they share."""
    template = validate_registration(request(start))
    now = time.time_ns()
    template.registered_at.FromNanoseconds(now)
    template.updated_at.FromNanoseconds(now)
    leases = [
        await store.grant_lease(BULK_TTL) for _ in range(math.ceil((stop - start) / LEASE_SHARE))
    ]
    chunks = iter(range(start, stop, MAX_TXN_OPS))

    async def writer() -> None:
        for lo in chunks:
            txn = Txn()
            for k in range(lo, min(lo + MAX_TXN_OPS, stop)):
                req = request(k)
                key = keys.instance_key(req.service, req.instance_id)
                lease = leases[(k - start) // LEASE_SHARE]
                txn.success.append(Txn.put(key, _stored(template, req), lease=lease))
            await store.txn(txn)

    await asyncio.gather(*(writer() for _ in range(BULK_WRITERS)))
    return leases


async def until_served(registry: registry_pb2_grpc.RegistryServiceStub, service: str) -> None:
    """Waits until the hub answers GetService for ``service`` with all its instances."""
    req = registry_pb2.GetServiceRequest(service=service)
    while True:
        try:
            got = await registry.GetService(req)
            if len(got.service.instances) >= PER_SERVICE:
                return
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
        await asyncio.sleep(0.05)


async def _sequential(call: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        out.append(time.perf_counter() - t0)
    return sorted(out)


async def _list_all(registry: registry_pb2_grpc.RegistryServiceStub) -> int:
    """Every page of ListServices; returns the instances listed."""
    token, listed = "", 0
    while True:
        resp = await registry.ListServices(
            registry_pb2.ListServicesRequest(page_size=1000, page_token=token)
        )
        listed += sum(len(s.instances) for s in resp.services)
        token = resp.next_page_token
        if not token:
            return listed


def etcd_db_mib(etcd_endpoint: str) -> float:
    """etcd's backend database size, from its metrics endpoint."""
    url = f"http://{etcd_endpoint}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("etcd_mvcc_db_total_size_in_bytes "):
                return float(line.split()[1]) / 2**20
    return 0.0


class InstanceCurve:
    """The instance-count curve's points, measured as the bench grows the registry."""

    def __init__(
        self,
        bench: Bench,
        hub: HubProcess,
        etcd_endpoint: str,
        workdir: Path,
        request: Request,
        setup: tuple[int, float, float],
    ) -> None:
        """``setup``: (instances registered by the setup, hub RSS empty, hub RSS
        right after the setup)."""
        self.bench = bench
        self.hub = hub
        self.etcd_endpoint = etcd_endpoint
        self.workdir = workdir
        self.request = request
        self.loaded, rss_empty, rss_setup = setup  # instances in etcd from the setup and bulk loads
        # Memory per instance is marginal: from the previous point (the first
        # point's from the setup, empty to loaded, before anything else ran), so
        # what other sections left in the hub does not count as instances'.
        self._first = (self.loaded, (rss_setup - rss_empty) * 1024 / max(self.loaded, 1))
        self._last: tuple[int, float] | None = None
        self.points: dict[str, list[list[Any]]] = {}

    def _add(self, name: str, n: int, value: float) -> None:
        self.points.setdefault(name, []).append([n, round(value, 3)])

    async def grow_to(self, n: int, store: EtcdStore) -> None:
        """Bulk-loads up to ``n`` instances, then measures the point."""
        async with grpc.aio.insecure_channel(self.hub.address, options=_BIG_ANSWERS) as channel:
            registry = registry_pb2_grpc.RegistryServiceStub(channel)
            if n > self.loaded:
                t0 = time.perf_counter()
                await bulk_load(store, self.request, self.loaded, n)
                loaded = time.perf_counter() - t0
                await until_served(registry, self.request(n - 1).service)
                served = time.perf_counter() - t0
                self.bench.fact(f"bulk load to {n:,} instances (into etcd)", loaded, "s")
                self.bench.fact(f"hub serving all {n:,} instances, from the load's start",
                                served, "s")  # fmt: skip
                self.loaded = n
            await self._measure(n, channel, store)

    async def _measure(self, n: int, channel: grpc.aio.Channel, store: EtcdStore) -> None:
        bench = self.bench
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        await asyncio.sleep(2.0)  # the load's garbage collected before reading RSS
        rss = self.hub.rss_mb()
        self._add("hub RSS", n, rss)
        if self._last is None or n <= self._last[0]:
            per_instance = self._first[1]
        else:
            per_instance = (rss - self._last[1]) * 1024 / (n - self._last[0])
        self._last = (n, rss)
        self._add("hub RSS per instance, marginal (KiB)", n, per_instance)

        t0 = time.perf_counter()
        kvs, _ = await store.get_prefix_paged(keys.REGISTRY, page=LOAD_PAGE)  # as the hub reads
        read = time.perf_counter() - t0
        del kvs
        self._add("etcd paged read of every instance (bench)", n, read)

        second = HubProcess(f"hub-cold-{n}", self.etcd_endpoint, self.workdir)
        try:
            self._add("second hub cold start", n, await second.start(timeout=900))
            await asyncio.sleep(1.0)
            self._add("second hub RSS", n, second.rss_mb())
        finally:
            second.stop()

        get = registry_pb2.GetServiceRequest(service=PROBE_SERVICE)
        lat = await _sequential(lambda: registry.GetService(get), SEQUENTIAL_CALLS)
        prefix = keys.service_prefix(PROBE_SERVICE)
        base = await _sequential(lambda: store.get_prefix(prefix), SEQUENTIAL_CALLS)
        for q in (50, 99):
            self._add(f"GetService p{q} (ms)", n, percentile(lat, q) * 1e3)
            self._add(f"etcd Range p{q} (ms)", n, percentile(base, q) * 1e3)

        t0 = time.perf_counter()
        listed = await _list_all(registry)
        self._add("ListServices, every page", n, time.perf_counter() - t0)
        if listed < n:
            raise RuntimeError(f"ListServices listed {listed} of {n} instances")
        self._add("etcd db size", n, etcd_db_mib(self.etcd_endpoint))

        await self._writes(n, channel, store)
        bench.section(
            f"  {n:,} instances: RSS {rss:.0f} MiB, cold start "
            f"{self.points['second hub cold start'][-1][1]:.2f} s, GetService p50/p99 "
            f"{self.points['GetService p50 (ms)'][-1][1]:.2f}/"
            f"{self.points['GetService p99 (ms)'][-1][1]:.2f} ms"
        )

    async def _writes(self, n: int, channel: grpc.aio.Channel, store: EtcdStore) -> None:
        """Register and KeepAlive at 16 and 64 callers, each beside what it costs
        etcd directly (a lease grant and a put; a lease keep-alive) from the
        same Python process: per-change work that grew with other services'
        instances would show here."""

        def write_request(k: int) -> registry_pb2.RegisterRequest:
            req = self.request(k)
            req.service, req.instance_id = f"scale-writes-{n}", f"w{k}"
            return req

        # Serialized before the clock starts, sent through a bare call (as
        # bench.run's Register rows): enough for ~2,500/s in every cell.
        cells = len(WRITE_CALLERS)
        register = raw_unary(
            channel, REGISTER_METHOD, serialized(write_request, int(2500 * WRITE_SECONDS * cells))
        )
        value = self.request(0).SerializeToString()  # about a stored instance's size
        counter = iter(range(10**9))

        async def raw_register() -> None:
            lease = await store.grant_lease(3600)
            await store.put(f"/bench/scale-raw/{n}/{next(counter)}".encode(), value, lease=lease)

        # The setup's first 1,000 instances (registered through the API, a lease each).
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        services = sorted({self.request(k).service for k in range(KEEPALIVE_INSTANCES)})
        keep_alives = [
            registry_pb2.KeepAliveRequest(
                service=i.service, instance_id=i.instance_id, lease_id=i.lease_id
            )
            for name in services
            for i in (
                await registry.GetService(registry_pb2.GetServiceRequest(service=name))
            ).service.instances
        ]
        random.Random(8).shuffle(keep_alives)
        keep_alive = raw_unary(
            channel, KEEPALIVE_METHOD, itertools.cycle(r.SerializeToString() for r in keep_alives)
        )
        leases = itertools.cycle([r.lease_id for r in keep_alives])

        def raw_keep_alive() -> Any:
            return store.keep_alive(next(leases))

        for c in WRITE_CALLERS:
            for name, call in (
                (f"etcd LeaseGrant+Put, {c} callers", raw_register),
                (f"Register, {c} callers", register),
                (f"etcd LeaseKeepAlive, {c} callers", raw_keep_alive),
                (f"KeepAlive, {c} callers", keep_alive),
            ):
                stats: Stats = await closed_loop(call, c, duration=WRITE_SECONDS)
                if stats.errors:
                    raise RuntimeError(f"{name}: {stats.errors} calls failed at {n:,} instances")
                self._add(name, n, stats.summary()["calls_per_s"])

    def curves(self) -> list[dict[str, Any]]:
        p = self.points
        floor = "etcd paged read of every instance (bench)"
        read = (floor, p[floor])
        return [
            curve("hub RSS", "instances", "MiB", p["hub RSS"]),
            curve("hub RSS per instance (since the last point)", "instances", "KiB",
                  p["hub RSS per instance, marginal (KiB)"]),
            curve("second hub cold start", "instances", "s", p["second hub cold start"],
                  baseline=read),
            curve("second hub RSS", "instances", "MiB", p["second hub RSS"]),
            curve("GetService p50, one service", "instances", "ms", p["GetService p50 (ms)"],
                  baseline=("etcd Range p50, same 20 keys", p["etcd Range p50 (ms)"])),
            curve("GetService p99, one service", "instances", "ms", p["GetService p99 (ms)"],
                  baseline=("etcd Range p99, same 20 keys", p["etcd Range p99 (ms)"])),
            curve("ListServices, every page", "instances", "s", p["ListServices, every page"],
                  baseline=read),
            curve("etcd db size", "instances", "MiB", p["etcd db size"]),
        ] + [
            curve(f"{op}, {c} callers", "instances", "calls/s", p[f"{op}, {c} callers"],
                  baseline=(f"etcd {raw}, {c} callers", p[f"etcd {raw}, {c} callers"]),
                  higher_is_better=True)
            for op, raw in (("Register", "LeaseGrant+Put"), ("KeepAlive", "LeaseKeepAlive"))
            for c in WRITE_CALLERS
        ]  # fmt: skip


def stream_curves(bench: Bench) -> list[dict[str, Any]]:
    """The watch-stream curve, from bench.fanout's registry cells and facts."""
    cells = [r for r in bench.propagation if r["op"].startswith("Register -> last of ")]
    if len(cells) < 2:
        return []
    facts = {f["name"]: f["value"] for f in bench.facts}
    sizes = [r["receivers"] for r in cells]
    base_op = cells[0].get("vs") or cells[0].get("baseline")
    base = {r["cell"]: r for r in bench.propagation if r["op"] == base_op}

    def base_of(key: str) -> list[list[Any]]:
        return [[r["receivers"], base[r["cell"]][key]] for r in cells if r["cell"] in base]

    out = [
        curve("change -> last stream p50", "streams", "ms",
              [[r["receivers"], r["p50_ms"]] for r in cells],
              baseline=("one direct etcd watch p50", base_of("p50_ms"))),
        curve("change -> last stream p99", "streams", "ms",
              [[r["receivers"], r["p99_ms"]] for r in cells],
              baseline=("one direct etcd watch p99", base_of("p99_ms"))),
        curve("hub CPU per change", "streams", "ms",
              [[r["receivers"], r.get("hub_cpu_ms_per_change")] for r in cells],
              baseline=("watcher processes' CPU per change",
                        [[r["receivers"], r.get("watchers_cpu_ms_per_change")] for r in cells])),
    ]  # fmt: skip
    opened, total, prev = [], 0.0, 0
    for n in sizes:
        step = facts.get(f"open {n - prev:,} Watch streams (to {n:,})")
        if step is None:
            break
        total, prev = total + step, n
        opened.append([n, round(total, 3)])
    if opened:
        out.append(curve("time to open the streams (cumulative)", "streams", "s", opened))
    rss = [
        [n, facts[k]] for n in sizes if (k := f"hub RSS, 10,000 inst. + {n:,} watchers") in facts
    ]
    base_rss = facts.get("hub RSS, 10,000 instances")
    if rss and base_rss:
        out.append(curve("hub RSS with the streams open", "streams", "MiB", rss))
        # Marginal, from the previous size (the first from no streams open).
        per_stream: list[list[Any]] = []
        last = (0, base_rss)
        for n, v in rss:
            per_stream.append([n, round((v - last[1]) * 1024 / (n - last[0]), 1)])
            last = (n, v)
        out.append(curve("hub RSS per stream (since the last point)", "streams", "KiB",
                         per_stream))  # fmt: skip
    return out


def render(curves: list[dict[str, Any]]) -> list[str]:
    """The curves as text: one line each, points, baseline, exponent, flag."""
    if not curves:
        return []
    lines = ["", "Scale curves (k: cost ~ size^k between the largest two points; "
                 f"flagged when k > {WORSE_THAN_LINEAR:g}, worse than linear):"]  # fmt: skip
    for c in curves:
        pts = " / ".join(f"{_fmt(y)}" for _, y in c["points"])
        sizes = " / ".join(f"{x:,.0f}" for x, _ in c["points"])
        k = c["cost_exponent"]
        flag = "  WORSE THAN LINEAR" if c["worse_than_linear"] else ""
        verdict = "" if k is None else f"  k={k:+.2f}{flag}"
        base = ""
        if c.get("baseline") and c["baseline"]["points"]:
            b = c["baseline"]
            base = f"  [{b['name']}: {' / '.join(_fmt(y) for _, y in b['points'])}]"
        lines.append(f"  {c['name']} at {sizes} {c['x']}: {pts} {c['unit']}{verdict}{base}")
    return lines


def _fmt(y: float | None) -> str:
    if y is None:
        return "-"
    return f"{y:,.0f}" if abs(y) >= 100 else f"{y:.3g}"
