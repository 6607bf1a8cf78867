"""Receivers of changes: many hub watch streams held by child processes, and one
direct etcd watch in this process (the baseline).

A thousand streams parsed by one Python process would make the benchmark's own
CPU the bottleneck, so ``WatcherPool`` spreads them over a few child processes
(multiprocessing, spawn). Each child holds its streams on grpc.aio channels of
at most 100 streams each (one HTTP/2 connection apiece: a connection allows
about 100 concurrent streams by default) and notes, per stream, the time.time()
at which each *marker* first arrived: ``<instance id>/<event type>`` on a
registry Watch, ``<instance id>/<status>`` on WatchHealth, ``global/<version>``
on WatchConfig, ``<instance id>/eds`` on an ADS stream (envoy's aggregated
discovery, which ACKs each answer as a proxyless gRPC client does; also
``<instance id>/w<weight>`` for an endpoint's weight and ``<instance id>/gone``
when an answer drops an endpoint the stream's previous answer had). The parent
asks for a marker's arrival times over a pipe; time.time() is comparable across
processes on one machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import signal
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import grpc
from aetcd import rpc
from aitrading.hub.v1 import (
    config_pb2,
    config_pb2_grpc,
    health_pb2,
    health_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from hub_server.store.etcd import EtcdStore, Event, decode_event, prefix_end
from hub_server.xds.protocol import ENDPOINT

STREAMS_PER_CHANNEL = 100
# Streams opened at once (over all processes): every cell's in one burst. The hub
# queues up to 10,000 calls it has not picked up yet (grpc.server.max_pending_requests;
# grpc's default of 1,000 cancelled part of any larger burst).
WAVE = 5000
# A channel of its own subchannel pool opens its own connection: without this,
# channels to one address share one HTTP/2 connection.
_CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]

REGISTRY, HEALTH, CONFIG, XDS = "registry", "health", "config", "xds"
_PROGRESS = registry_pb2.WATCH_RESPONSE_KIND_PROGRESS


async def _ads(channel: grpc.aio.Channel, service: str) -> Any:
    """An ADS stream subscribed to the service's ClusterLoadAssignment that ACKs
    every answer at once, as a proxyless gRPC client does; yields the answers."""
    acks: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()

    async def requests() -> Any:
        while True:
            yield await acks.get()

    first = discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=[service])
    first.node.CopyFrom(base_pb2.Node(id="bench"))
    acks.put_nowait(first)
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
        requests()
    )
    async for answer in call:
        acks.put_nowait(
            discovery_pb2.DiscoveryRequest(
                type_url=ENDPOINT,
                resource_names=[service],
                response_nonce=answer.nonce,
                version_info=answer.version_info,
            )
        )
        yield answer


def _open(kind: str, channel: grpc.aio.Channel, arg: str) -> Any:
    """One stream of ``kind``: ``arg`` is the service (registry, health, xds) or
    the tenant (config)."""
    if kind == XDS:
        return _ads(channel, arg)
    if kind == REGISTRY:
        return registry_pb2_grpc.RegistryServiceStub(channel).Watch(
            registry_pb2.WatchRequest(service=arg)
        )
    if kind == HEALTH:
        return health_pb2_grpc.HealthServiceStub(channel).WatchHealth(
            health_pb2.WatchHealthRequest(service=arg)
        )
    return config_pb2_grpc.ConfigServiceStub(channel).WatchConfig(
        config_pb2.WatchConfigRequest(tenant_id=arg)
    )


def _xds_markers(m: Any, present: set[str]) -> list[str]:
    """An EDS answer's markers. Each endpoint is its own locality, named by the
    instance and weighted by it; ``present`` holds the instances of the stream's
    previous answer (updated here), whose absence now is ``<instance>/gone``."""
    localities = [
        locality
        for resource in m.resources
        for locality in endpoint_pb2.ClusterLoadAssignment.FromString(resource.value).endpoints
    ]
    now = {locality.locality.sub_zone for locality in localities}
    gone = sorted(present - now)
    present.clear()
    present.update(now)
    return (
        [f"{loc.locality.sub_zone}/eds" for loc in localities]
        + [f"{loc.locality.sub_zone}/w{loc.load_balancing_weight.value}" for loc in localities]
        + [f"{instance}/gone" for instance in gone]
    )


def _markers(kind: str, m: Any, present: set[str]) -> list[str]:
    if kind == XDS:
        return _xds_markers(m, present)
    if m.kind == _PROGRESS:
        return []
    if kind == REGISTRY:
        return [f"{e.instance.instance_id}/{e.type}" for e in m.events]
    if kind == HEALTH:
        return [f"{h.instance_id}/{h.status}" for h in m.instances]
    return [f"global/{m.config.global_version}"]


class _Group:
    """Streams of one kind opened together in one child process."""

    def __init__(self, address: str, kind: str, args: list[str]) -> None:
        self.kind = kind
        self.channels = [
            grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
            for _ in range(0, len(args), STREAMS_PER_CHANNEL)
        ]
        self.arrivals: list[dict[str, float]] = [{} for _ in args]
        self.counts: Counter[str] = Counter()  # marker -> streams that have it
        self.waiting: dict[str, asyncio.Future[None]] = {}
        self.started = 0  # streams that received their first message
        self.all_started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not args:
            self.all_started.set_result(None)
        self.ended = 0
        self.failed = 0  # streams that ended before their first message
        self.errors: Counter[str] = Counter()  # how streams ended with an error
        self.tasks = [asyncio.create_task(self._follow(i, a)) for i, a in enumerate(args)]

    async def _follow(self, i: int, arg: str) -> None:
        arrival = self.arrivals[i]
        first = True
        present: set[str] = set()  # xds: the instances of the last answer
        try:
            async for m in _open(self.kind, self.channels[i // STREAMS_PER_CHANNEL], arg):
                now = time.time()
                if first:
                    first = False
                    self.started += 1
                    self._check_started()
                for marker in _markers(self.kind, m, present):
                    if marker not in arrival:
                        arrival[marker] = now
                        self.counts[marker] += 1
                        fut = self.waiting.get(marker)
                        if fut and not fut.done() and self.counts[marker] == len(self.arrivals):
                            fut.set_result(None)
        except grpc.aio.AioRpcError as e:
            self.errors[f"{e.code().name}: {e.details()}"] += 1
        finally:
            self.ended += 1
            if first:
                self.failed += 1
                self._check_started()

    def _check_started(self) -> None:
        """Resolves ``all_started`` once every stream started or failed."""
        if self.started + self.failed == len(self.arrivals) and not self.all_started.done():
            self.all_started.set_result(None)

    async def expect(self, marker: str, timeout: float) -> list[float | None]:
        if self.counts[marker] < len(self.arrivals):
            fut = self.waiting.setdefault(marker, asyncio.get_running_loop().create_future())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(fut), timeout)
            self.waiting.pop(marker, None)
        return [a.get(marker) for a in self.arrivals]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for channel in self.channels:
            await channel.close()


def _child(address: str, conn: Connection) -> None:
    # Ctrl-C reaches the whole process group: the parent stops its children.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_serve(address, conn))


async def _serve(address: str, conn: Connection) -> None:
    """Answers the parent's commands until "stop" (or the parent's end)."""
    loop = asyncio.get_running_loop()
    groups: dict[str, _Group] = {}
    try:
        while True:
            try:
                op, name, *args = await loop.run_in_executor(None, conn.recv)
            except EOFError:
                return
            if op == "stop":
                return
            try:
                conn.send(await _command(address, groups, op, name, *args))
            except Exception as e:
                conn.send(("error", repr(e)))
    finally:
        for group in groups.values():
            await group.close()


async def _command(address: str, groups: dict[str, _Group], op: str, name: str, *args: Any) -> Any:
    if op == "open":
        kind, stream_args, timeout = args
        group = groups[name] = _Group(address, kind, stream_args)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(group.all_started), timeout)
        return ("ok", (group.started, dict(group.errors)))
    if op == "expect":  # name: the groups' names, joined by spaces
        marker, timeout = args
        parts = [groups[part] for part in name.split()]
        times = await asyncio.gather(*(g.expect(marker, timeout) for g in parts))
        return ("ok", [t for ts in times for t in ts])
    if op == "close":
        for part in name.split():
            await groups.pop(part).close()
        return ("ok", None)
    raise ValueError(f"unknown command {op!r}")


class WatcherPool:
    """``processes`` child processes holding watch streams on the hub at ``address``."""

    def __init__(self, address: str, processes: int) -> None:
        self.address = address
        self.processes = processes
        self._pipes: list[Connection] = []
        self._procs: list[Any] = []
        self.pids: list[int] = []
        self._groups: dict[str, list[str]] = {}  # name -> its waves' names in the children
        self._broken = False

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        for _ in range(self.processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_child, args=(self.address, child), daemon=True)
            proc.start()
            child.close()
            self._pipes.append(parent)
            self._procs.append(proc)
            assert proc.pid is not None
            self.pids.append(proc.pid)

    async def _ask(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Sends each child its command and returns their answers. If that is
        interrupted, the pipes are out of step: the pool only stops after that."""
        if self._broken:
            raise RuntimeError("the watcher pool was interrupted")
        loop = asyncio.get_running_loop()
        try:
            for pipe, cmd in zip(self._pipes, commands, strict=True):
                pipe.send(cmd)
            answers = await asyncio.gather(
                *(loop.run_in_executor(None, p.recv) for p in self._pipes)
            )
        except BaseException:
            self._broken = True
            raise
        for status, value in answers:
            if status != "ok":
                raise RuntimeError(f"watcher process failed: {value}")
        return [value for _, value in answers]

    async def open(self, name: str, kind: str, args: list[str], timeout: float = 120.0) -> float:
        """Opens one stream per entry of ``args``, spread over the processes, and
        waits until every stream has its first message; returns the seconds taken.

        Streams are opened in waves of ``WAVE``, each all at once; the opening
        fails if any stream of a wave did not start."""
        t0 = time.perf_counter()
        n = self.processes
        self._groups[name] = []
        for w in range(0, len(args), WAVE):
            wave, part = args[w : w + WAVE], f"{name}#{w}"
            self._groups[name].append(part)
            answers = await self._ask([("open", part, kind, wave[c::n], timeout) for c in range(n)])
            started = sum(a[0] for a in answers)
            if started < len(wave):
                errors: Counter[str] = Counter()
                for _, e in answers:
                    errors.update(e)
                raise RuntimeError(
                    f"only {started} of {len(wave)} {kind} streams started; errors: {dict(errors)}"
                )
        return time.perf_counter() - t0

    async def expect(self, names: list[str], marker: str, timeout: float) -> list[float | None]:
        """When each stream of the named groups first had ``marker`` (None: not
        within ``timeout`` seconds)."""
        parts = " ".join(part for name in names for part in self._groups[name])
        answers = await self._ask([("expect", parts, marker, timeout)] * self.processes)
        return [t for answer in answers for t in answer]

    async def close(self, name: str) -> None:
        parts = " ".join(self._groups.pop(name, []))
        if parts and not self._broken:
            await self._ask([("close", parts)] * self.processes)

    def stop(self) -> None:
        """Stops the children: asks them (they close their streams), or kills
        them if the pool was interrupted mid-command."""
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop", ""))
        for proc in self._procs:
            proc.join(0 if self._broken else 10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for pipe in self._pipes:
            pipe.close()


class EtcdWatch:
    """One direct etcd watch on a prefix with the bench's own store client: the
    baseline receiver. Keeps (time.time(), event) of everything it receives."""

    def __init__(self, store: EtcdStore, prefix: bytes) -> None:
        self._store = store
        self._prefix = prefix
        self.events: list[tuple[float, Event]] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        call = self._store.open_watch()
        create = rpc.WatchCreateRequest(key=self._prefix, range_end=prefix_end(self._prefix))
        await call.write(rpc.WatchRequest(create_request=create))
        first = await call.read()
        if first is grpc.aio.EOF or not first.created:
            call.cancel()
            raise RuntimeError(f"etcd watch on {self._prefix!r} not created")
        self._task = asyncio.create_task(self._read(call))

    async def _read(self, call: Any) -> None:
        try:
            while (resp := await call.read()) is not grpc.aio.EOF:
                now = time.time()
                self.events += [(now, decode_event(e)) for e in resp.events]
                self._changed.set()
        finally:
            call.cancel()

    async def first(
        self, match: Callable[[Event], bool], timeout: float = 30.0
    ) -> tuple[float, Event]:
        """The first received event that ``match``es, and when it arrived."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for t, event in self.events[seen:]:
                if match(event):
                    return t, event
            seen = len(self.events)
            self._changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching event on {self._prefix!r}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
