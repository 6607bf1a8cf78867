"""Quota Allocate under contention: 50 concurrent allocators on one tenant's
``websocket_connections`` (a count; the tenant's own config layer lifts its
limit to 10^9 so that nothing is refused), beside a raw etcd compare-and-set
increment of one key with the hub's store client (EtcdStore.txn: compare the
key's mod revision, put the value + 1, else read it back and retry), also 50
concurrent, and the same increment one at a time (what the hub's per-key
serialisation within a replica can reach at best). Afterwards both counters
are checked against the successful calls: contention must not lose an update.
(issue 8)
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
from aitrading.hub.v1 import config_pb2, config_pb2_grpc, tenant_pb2, tenant_pb2_grpc

from hub_server.store.etcd import EtcdStore, Txn

if TYPE_CHECKING:
    from bench.run import Bench

TENANT = "bench-quota"
ALLOCATORS = 50
LIMIT = 1_000_000_000
RESOURCE = tenant_pb2.QUOTA_RESOURCE_WEBSOCKET_CONNECTIONS
CAS_KEY = b"/bench/cas/counter"

ALLOCATE = "Allocate (1 tenant)"
ETCD_CAS = "etcd Txn CAS increment (direct)"
ETCD_CAS_SERIAL = "etcd Txn CAS increment (direct, 1 at a time)"


async def measure(bench: Bench, channel: grpc.aio.Channel, store: EtcdStore) -> None:
    tenants = tenant_pb2_grpc.TenantServiceStub(channel)
    configs = config_pb2_grpc.ConfigServiceStub(channel)
    layer = config_pb2.ConfigLayerRef(kind=config_pb2.CONFIG_LAYER_KIND_TENANT, tenant_id=TENANT)
    values = config_pb2.ConfigValues(rate_limits=config_pb2.RateLimits(websocket_connections=LIMIT))
    await configs.SetConfigLayer(config_pb2.SetConfigLayerRequest(layer=layer, values=values))
    get = config_pb2.GetTenantConfigRequest(tenant_id=TENANT)
    for _ in range(100):  # the hub applies the layer from its watch
        got = await configs.GetTenantConfig(get)
        if got.config.values.rate_limits.websocket_connections == LIMIT:
            break
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError("the tenant layer with the raised limit never took effect")

    allocated = 0
    request = tenant_pb2.AllocateRequest(tenant_id=TENANT, resource=RESOURCE, amount=1)

    async def allocate() -> None:
        nonlocal allocated
        await tenants.Allocate(request)
        allocated += 1

    # The raw baseline keeps the last value it read or wrote as a hint, like the
    # hub does, and retries from what a failed transaction read back.
    hint = (0, 0)  # (value, mod revision)
    increments = conflicts = 0

    async def cas_increment() -> None:
        nonlocal hint, increments, conflicts
        value, mod = hint
        while True:
            txn = Txn().mod_revision_is(CAS_KEY, mod)
            txn.success.append(Txn.put(CAS_KEY, str(value + 1).encode()))
            txn.failure.append(Txn.get(CAS_KEY))
            result = await store.txn(txn)
            if result.succeeded:
                hint = (value + 1, result.revision)
                increments += 1
                return
            conflicts += 1
            kvs = result.ranges[0] if result.ranges else []
            value, mod = (int(kvs[0].value), kvs[0].mod_revision) if kvs else (0, 0)

    # One at a time (no conflicts): what a single-key CAS costs when it is
    # serialised, as the hub serialises one key's allocations within a replica.
    await bench.closed(ETCD_CAS_SERIAL, cas_increment, 1)
    total_increments, conflicts, increments = increments, 0, 0
    await bench.closed(ETCD_CAS, cas_increment, ALLOCATORS)
    bench.fact("etcd CAS: conflicts per increment (50)", conflicts / max(increments, 1), "")
    await bench.closed(ALLOCATE, allocate, ALLOCATORS, vs=(ETCD_CAS,))

    kv, _ = await store.get(CAS_KEY)
    usage = await tenants.GetUsage(tenant_pb2.GetUsageRequest(tenant_id=TENANT))
    used = next(u.used for u in usage.usage if u.resource == RESOURCE)
    lost = (allocated - used) + (total_increments + increments - (int(kv.value) if kv else 0))
    bench.fact("quota: updates lost (hub + etcd CAS)", lost, "")
    if lost:
        print(f"  LOST UPDATES: allocated {allocated}, usage {used}; increments {increments}")
