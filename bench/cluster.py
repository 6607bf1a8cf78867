"""The hub on a 3-member etcd cluster with two hub replicas (for the README's
scale section): what replication costs writes, what a second replica adds to
reads, and what losing one etcd member does to both.

Every row stands beside the single-member figure the main run measured
(Register and GetService at the same concurrency).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path
from typing import Any

import grpc
from aitrading.hub.v1 import registry_pb2, registry_pb2_grpc

from bench.procs import HubProcess
from bench.report import GET_PY
from hub_server.embedded_etcd import EtcdProcess, free_port

MEMBERS = 3
SERVICES = 100
PER_SERVICE = 20
CONCURRENCY = 16

REGISTER_3 = "Register, 3-member etcd"
GET_3 = "GetService, 3-member etcd, 1 hub"
GET_3_TWO_HUBS = "GetService, 3-member etcd, 2 hubs"
REGISTER_DEGRADED = "Register, 1 of 3 members down"
GET_DEGRADED = "GetService, 1 of 3 members down"


def start_cluster(workdir: Path) -> list[EtcdProcess]:
    peers = {f"m{i}": free_port() for i in range(MEMBERS)}
    members = [
        EtcdProcess(workdir / name, name=name, peer_port=port, initial_cluster=peers)
        for name, port in peers.items()
    ]
    for m in members:
        m.start_process()
    for m in members:
        m.wait_ready()
    return members


def _request(k: int) -> registry_pb2.RegisterRequest:
    s, i = divmod(k, PER_SERVICE)
    return registry_pb2.RegisterRequest(
        service=f"c-{s:03d}",
        instance_id=f"i{i:02d}-{k}",
        host=f"10.1.{s % 250}.{i + 1}",
        port=8000 + i,
        ttl_seconds=3600,
    )


async def run(bench: Any, workdir: Path, register_vs: str) -> None:
    """``bench`` is bench.run.Bench; ``register_vs`` the main run's Register row."""
    members = start_cluster(workdir / "cluster")
    endpoints = ",".join(m.endpoint for m in members)
    hubs = [HubProcess(f"cluster-hub-{i}", endpoints, workdir) for i in range(2)]
    channels: list[grpc.aio.Channel] = []
    try:
        for hub in hubs:
            await hub.start()
        channels = [grpc.aio.insecure_channel(h.address) for h in hubs]
        stubs = [registry_pb2_grpc.RegistryServiceStub(ch) for ch in channels]
        counter = itertools.count()

        def register() -> Any:
            return stubs[0].Register(_request(next(counter)))

        bench.section(f"cluster: {MEMBERS}-member etcd, two hub replicas")
        await bench.closed(REGISTER_3, register, CONCURRENCY, vs=(register_vs,))
        while next(counter) < SERVICES * PER_SERVICE:  # fill every service
            await register()
        names = [f"c-{s:03d}" for s in range(SERVICES)]
        pick = random.Random(3).choice
        requests = [registry_pb2.GetServiceRequest(service=n) for n in names]
        turn = itertools.cycle(stubs)

        def get_one() -> Any:
            return stubs[0].GetService(pick(requests))

        def get_either() -> Any:
            return next(turn).GetService(pick(requests))

        await bench.closed(GET_3, get_one, CONCURRENCY, vs=(GET_PY,))
        await bench.closed(GET_3_TWO_HUBS, get_either, CONCURRENCY, vs=(GET_3,))
        # The member the hubs' store reached first is as likely as any to go.
        members[0].kill()
        await asyncio.sleep(1.0)
        await bench.closed(REGISTER_DEGRADED, register, CONCURRENCY, vs=(REGISTER_3,))
        await bench.closed(GET_DEGRADED, get_either, CONCURRENCY, vs=(GET_3_TWO_HUBS,))
    finally:
        for ch in channels:
            await ch.close()
        for hub in hubs:
            hub.stop()
        for m in members:
            m.stop()
