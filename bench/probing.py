"""Probe throughput: 10,000 instances (`make bench`; --probe-instances) with a
TCP health check at the default interval (10 s), all on one TCP listener of the
bench; does the hub's prober keep up? (issue 8)

The listener is bound to 0.0.0.0 and each instance is registered on its own
loopback address (127.0.1.1, 127.0.1.2, ...: all of 127/8 reaches the loopback
interface on Linux), so the address a connection was accepted on tells which
instance the hub probed. Connections are closed as soon as they are accepted,
and any not addressed to 127/8 is only counted as foreign.

Reported: probes per second (each instance's probe rate, summed; and the
connections accepted in the last interval of the wait, which holds one probe of
each instance if the prober keeps up, however bunched its rounds), beside the
theoretical rate (instances / 10 s); the longest time any instance went unprobed; and
whether every instance was probed at least every interval (with 10% slack for
scheduling): keeps up, yes or no.
The instances are written straight into etcd (bench.scale.bulk_load: the hub's
own keys and values) and deleted afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from typing import TYPE_CHECKING

from aitrading.hub.v1 import registry_pb2, registry_pb2_grpc, types_pb2

from bench.scale import bulk_load
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore


async def _until_listed(registry: registry_pb2_grpc.RegistryServiceStub) -> None:
    """Returns once the hub has every probe target written so far (so it probes
    them): a Register answers once the hub's view has its write, and the view
    applies etcd's changes in order. (Asking for the 10,000 targets themselves
    would cost the hub ~50 ms an answer, and pass grpc's 4 MB default.)"""
    await registry.Register(MARKER)


if TYPE_CHECKING:
    from bench.run import Bench

SERVICE = "bench-probed"
MARKER = registry_pb2.RegisterRequest(
    service=f"{SERVICE}-marker", instance_id="m", host="127.0.0.1", port=9, ttl_seconds=60
)
INSTANCES = 10_000
INTERVAL = 10.0  # the default check interval
SLACK = 1.1  # an instance keeps up if never unprobed longer than this x INTERVAL


def _host(k: int) -> str:
    return f"127.0.{1 + k // 250}.{1 + k % 250}"


async def measure(
    bench: Bench,
    registry: registry_pb2_grpc.RegistryServiceStub,
    store: EtcdStore,
    wait: float,
    instances: int = INSTANCES,
) -> None:
    hosts = [_host(k) for k in range(instances)]
    accepted: dict[str, list[float]] = defaultdict(list)
    foreign = 0

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal foreign
        host = writer.get_extra_info("sockname")[0]
        if host.startswith("127."):
            accepted[host].append(time.monotonic())
        else:
            foreign += 1
        writer.close()

    server = await asyncio.start_server(accept, "0.0.0.0", 0)
    port = server.sockets[0].getsockname()[1]
    check = types_pb2.HealthCheck(tcp=types_pb2.TcpCheck())  # interval: the default

    def request(k: int) -> registry_pb2.RegisterRequest:
        return registry_pb2.RegisterRequest(
            service=SERVICE, instance_id=f"p{k:05d}", host=hosts[k], port=port,
            health_check=check, ttl_seconds=3600,
        )  # fmt: skip

    # Written straight into etcd as Register would store them (bench.scale), all
    # at once as after a mass re-registration: registering and deregistering
    # 10,000 through the API took most of this section's minutes.
    leases: list[int] = []
    try:
        leases = await bulk_load(store, request, 0, instances)
        await _until_listed(registry)
        await asyncio.sleep(wait)
        t_end = time.monotonic()
    finally:
        server.close()
        await server.wait_closed()
        await store.delete(keys.service_prefix(SERVICE), prefix=True)
        await store.delete(keys.service_prefix(MARKER.service), prefix=True)
        for lease in leases:
            await store.revoke_lease(lease)

    # Each instance's probes from when the wait began (the registrations took a
    # moment; an instance's first probe may precede it).
    rate = 0.0
    longest = 0.0
    unprobed = late = 0
    for h in hosts:
        probes = accepted.get(h, [])
        if len(probes) < 2:
            unprobed += 1
            continue
        rate += (len(probes) - 1) / (probes[-1] - probes[0])
        gaps = [b - a for a, b in itertools.pairwise(probes)]
        worst = max(*gaps, t_end - probes[-1])
        longest = max(longest, worst)
        late += worst > SLACK * INTERVAL
    total = sum(len(v) for v in accepted.values())
    # Any window one interval long holds one probe of each instance if the
    # prober keeps up, however bunched the rounds are: take the wait's last.
    last_interval = sum(1 for v in accepted.values() for t in v if t > t_end - INTERVAL)
    keeps_up = unprobed == 0 and late == 0
    theoretical = f"probe rate, theoretical ({instances:,} / {INTERVAL:g} s)"
    bench.fact(theoretical, instances / INTERVAL, "probes/s")
    bench.fact("probe rate, per instance, summed", rate, "probes/s", theoretical)
    bench.fact(f"probe rate, accepted in the last {INTERVAL:g} s", last_interval / INTERVAL,
               "probes/s", theoretical)  # fmt: skip
    bench.fact("probes: longest any instance went unprobed", longest, "s")
    bench.fact("probes: instances probed fewer than 2 times", unprobed, "")
    bench.fact(f"probes: instances once unprobed > {SLACK * INTERVAL:g} s", late, "")
    bench.probes = {
        "instances": instances,
        "interval_s": INTERVAL,
        "wait_s": wait,
        "accepted": total,
        "foreign_connections": foreign,
        "keeps_up": keeps_up,
        "longest_unprobed_s": round(longest, 3),
        "instances_late": late,
    }
    print(f"  keeps up: {'yes' if keeps_up else 'NO'}", flush=True)
