"""Measures how long a config write takes to reach every WatchConfig subscriber.

Starts an etcd and one hub (`central-hub serve`, its own process), opens N
WatchConfig streams from several client processes (so the clients do not share
the hub's event loop, nor one another's), then writes the global layer a few
times and reports, per write, the time from just before SetConfigLayer until
the last subscriber had the new merged config (and the median subscriber).

    .venv/bin/python scripts/config_push_latency.py --subscribers 1000

Two shapes of subscriber: ``same-tenant`` (all watch one tenant: one merged
config computed per change) and ``many-tenants`` (each watches its own tenant:
one merged config per subscriber per change).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import grpc
from aitrading.hub.v1 import config_pb2, config_pb2_grpc, registry_pb2
from google.protobuf import struct_pb2

from hub_server.embedded_etcd import EtcdProcess, free_port

STREAMS_PER_CHANNEL = 100
GLOBAL = config_pb2.ConfigLayerRef(kind=config_pb2.CONFIG_LAYER_KIND_GLOBAL)


def _worker(address: str, tenants: list[str], conn: Connection) -> None:
    asyncio.run(_watch(address, tenants, conn))


async def _watch(address: str, tenants: list[str], conn: Connection) -> None:
    """Holds one stream per tenant entry; reports when each first saw a version."""
    channels = [
        grpc.aio.insecure_channel(address) for _ in range(0, len(tenants), STREAMS_PER_CHANNEL)
    ]
    # arrival[i][global_version] = monotonic time the i-th stream first had it
    arrival: list[dict[int, float]] = [{} for _ in tenants]
    changed = asyncio.Event()

    async def follow(i: int, tenant: str) -> None:
        stub = config_pb2_grpc.ConfigServiceStub(channels[i // STREAMS_PER_CHANNEL])
        async for m in stub.WatchConfig(config_pb2.WatchConfigRequest(tenant_id=tenant)):
            if m.kind != registry_pb2.WATCH_RESPONSE_KIND_PROGRESS:
                arrival[i].setdefault(m.config.global_version, time.monotonic())
                changed.set()

    tasks = [asyncio.create_task(follow(i, t)) for i, t in enumerate(tenants)]

    async def until(check: Callable[[], bool]) -> None:
        while not check():
            changed.clear()
            await changed.wait()

    await until(lambda: all(arrival))  # every stream has its first config
    conn.send("ready")
    loop = asyncio.get_running_loop()
    while True:
        version = await loop.run_in_executor(None, conn.recv)
        if version is None:
            break
        await until(lambda v=version: all(v in a for a in arrival))  # type: ignore[misc]
        conn.send([a[version] for a in arrival])
    for task in tasks:
        task.cancel()
    for ch in channels:
        await ch.close()


def _start_hub(endpoint: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hub_server.cli",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--etcd-endpoints",
            endpoint,
            "--log-level",
            "WARNING",
        ],
        cwd=workdir,
    )
    return proc, f"127.0.0.1:{port}"


async def _wait_ready(stub: config_pb2_grpc.ConfigServiceStub) -> None:
    await stub.GetTenantConfig(config_pb2.GetTenantConfigRequest(), wait_for_ready=True, timeout=30)


async def _run(address: str, mode: str, subscribers: int, workers: int, writes: int) -> None:
    if mode == "same-tenant":
        tenants = ["acme"] * subscribers
    else:
        tenants = [f"tenant-{i:05d}" for i in range(subscribers)]
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for w in range(workers):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(address, tenants[w::workers], child), daemon=True)
        p.start()
        pipes.append(parent)
        procs.append(p)
    loop = asyncio.get_running_loop()
    for pipe in pipes:
        assert await loop.run_in_executor(None, pipe.recv) == "ready"

    async with grpc.aio.insecure_channel(address) as ch:
        stub = config_pb2_grpc.ConfigServiceStub(ch)
        current = await stub.GetConfigLayer(config_pb2.GetConfigLayerRequest(layer=GLOBAL))
        version = current.layer.version
        print(f"{mode}: {subscribers} subscribers in {workers} client processes")
        lasts = []
        for n in range(writes):
            settings = struct_pb2.Struct()
            settings.update({"write": n})
            version += 1
            start = time.monotonic()
            await stub.SetConfigLayer(
                config_pb2.SetConfigLayerRequest(
                    layer=GLOBAL, values=config_pb2.ConfigValues(settings=settings)
                )
            )
            acked = time.monotonic()
            for pipe in pipes:
                pipe.send(version)
            times: list[float] = []
            for pipe in pipes:
                times += await loop.run_in_executor(None, pipe.recv)
            delays = sorted(t - start for t in times)
            lasts.append(delays[-1])
            print(
                f"  write {n + 1}: acked {1000 * (acked - start):6.1f} ms, "
                f"median subscriber {1000 * statistics.median(delays):6.1f} ms, "
                f"last of {len(delays)} {1000 * delays[-1]:6.1f} ms"
            )
            await asyncio.sleep(0.2)
        print(f"  last subscriber, median over writes: {1000 * statistics.median(lasts):.1f} ms")
    for pipe in pipes:
        pipe.send(None)
    for p in procs:
        p.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4, help="client processes")
    parser.add_argument("--writes", type=int, default=5)
    parser.add_argument("--mode", choices=["same-tenant", "many-tenants", "both"], default="both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        etcd = EtcdProcess(Path(tmp) / "etcd")
        etcd.start()
        hub, address = _start_hub(etcd.endpoint, Path(tmp))
        try:

            async def go() -> None:
                async with grpc.aio.insecure_channel(address) as ch:
                    await _wait_ready(config_pb2_grpc.ConfigServiceStub(ch))
                modes = ["same-tenant", "many-tenants"] if args.mode == "both" else [args.mode]
                for mode in modes:
                    await _run(address, mode, args.subscribers, args.workers, args.writes)

            asyncio.run(go())
        finally:
            hub.terminate()
            hub.wait(10)
            etcd.stop()


if __name__ == "__main__":
    main()
