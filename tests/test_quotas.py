"""TenantService against a real etcd: tenants, and quotas that hold under
concurrency on two replicas, hourly windows that expire by themselves, and the
QuotaExceeded details hub_client raises."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
import pytest
from aitrading.hub.v1 import tenant_pb2, tenant_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hub_client import (
    AlreadyExists,
    HubClient,
    InvalidArgument,
    NotFound,
    QuotaExceeded,
    VersionConflict,
)
from hub_server.app import Hub
from hub_server.quotas import arithmetic as quotas
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore
from tests.support.hubs import HubFactory
from tests.support.keyspace import usage_in_etcd

HOUR = 3600


# -- tenants ------------------------------------------------------------------------


async def test_tenants_create_get_list_and_tier(client: HubClient) -> None:
    created = await client.create_tenant("acme", tier="pro", display_name="Acme Ltd")
    assert (created.tenant_id, created.tier, created.display_name) == ("acme", "pro", "Acme Ltd")
    assert created.revision > 0 and created.created_at > 0
    with pytest.raises(AlreadyExists):
        await client.create_tenant("acme")
    with pytest.raises(NotFound) as err:
        await client.get_tenant("nobody")
    assert err.value.reason == "TENANT_NOT_FOUND"
    for i in range(5):
        await client.create_tenant(f"t{i}", tier=("free", "enterprise")[i % 2])
    assert [t.tenant_id for t in await client.list_tenants()] == [
        "acme", "t0", "t1", "t2", "t3", "t4",
    ]  # fmt: skip
    assert [t.tenant_id for t in await client.list_tenants(tier="enterprise")] == ["t1", "t3"]
    page = await client.tenant_stub.ListTenants(tenant_pb2.ListTenantsRequest(page_size=4))
    assert len(page.tenants) == 4 and page.next_page_token
    rest = await client.tenant_stub.ListTenants(
        tenant_pb2.ListTenantsRequest(page_size=4, page_token=page.next_page_token)
    )
    assert [t.tenant_id for t in rest.tenants] == ["t3", "t4"] and not rest.next_page_token

    with pytest.raises(VersionConflict):
        await client.set_tier("acme", "enterprise", expected_revision=created.revision + 100)
    moved = await client.set_tier("acme", "enterprise", expected_revision=created.revision)
    assert moved.tier == "enterprise" and moved.revision > created.revision
    assert (await client.get_tenant("acme")).tier == "enterprise"
    with pytest.raises(NotFound):
        await client.set_tier("nobody", "pro")
    with pytest.raises(InvalidArgument) as bad:
        await client.create_tenant("no/slash")
    assert [v.field for v in bad.value.field_violations] == ["tenant_id"]


# -- quotas ---------------------------------------------------------------------------


@pytest.mark.parametrize("turns", [True, False], ids=["turns", "cas-only"])
async def test_50_allocators_on_two_replicas_never_pass_the_limit(
    hub_factory: HubFactory, etcd_store: EtcdStore, turns: bool
) -> None:
    a, b = await hub_factory(), await hub_factory()
    if not turns:
        # Without the per-replica turn-taking all 50 race in etcd: the
        # compare-and-set alone must hold the line.
        for h in (a, b):
            h.services.quotas._turn = lambda key: contextlib.nullcontext()  # type: ignore[method-assign,assignment,return-value]
            h.services.quotas._known.clear()
    async with HubClient(a.address) as ca, HubClient(b.address) as cb:
        await ca.create_tenant("busy", tier="free")
        await ca.set_config_layer("tenant/busy", {"rate_limits": {"websocket_connections": 20}})
        await b.services.configs.mirror.barrier()

        async def allocate(i: int) -> bool:
            try:
                await (ca, cb)[i % 2].allocate("websocket_connections", tenant="busy")
                return True
            except QuotaExceeded as e:
                assert (e.limit, e.requested) == (20, 1)
                assert e.current == 20  # refused only when really full
                return False

        granted = await asyncio.gather(*(allocate(i) for i in range(50)))
        assert sum(granted) == 20
        assert await usage_in_etcd(etcd_store, "busy", "websocket_connections") == 20
        for c in (ca, cb):
            assert (await c.usage("busy"))["websocket_connections"].used == 20

        # 50 concurrent releases of 1 against 20 in use: never below zero.
        released = await asyncio.gather(
            *(
                (ca, cb)[i % 2].tenant_stub.Release(
                    tenant_pb2.ReleaseRequest(
                        tenant_id="busy",
                        resource=tenant_pb2.QUOTA_RESOURCE_WEBSOCKET_CONNECTIONS,
                        amount=1,
                    )
                )
                for i in range(50)
            )
        )
        assert sum(r.released for r in released) == 20
        assert all(r.usage.used >= 0 for r in released)
        assert await usage_in_etcd(etcd_store, "busy", "websocket_connections") == 0


async def test_mixed_amounts_end_at_the_sum_of_what_was_granted(
    hub_factory: HubFactory, etcd_store: EtcdStore
) -> None:
    a, b = await hub_factory(), await hub_factory()
    async with HubClient(a.address) as ca, HubClient(b.address) as cb:
        # An unknown tenant on the pro tier (from the header): 100 concurrent requests.
        pa = ca.with_context(subscription_tier="pro")
        pb = cb.with_context(subscription_tier="pro")

        async def allocate(i: int) -> int:
            amount = 1 + i % 7
            try:
                await (pa, pb)[i % 2].allocate("concurrent_requests", amount, tenant="ghost")
                return amount
            except QuotaExceeded:
                return 0

        granted = await asyncio.gather(*(allocate(i) for i in range(60)))
        used = await usage_in_etcd(etcd_store, "ghost", "concurrent_requests")
        assert used == sum(granted) <= 100
        assert used > 100 - 7  # refusals only once nearly full


async def test_quota_exceeded_details(hub: Hub, client: HubClient) -> None:
    free = client.with_context(tenant_id="solo", subscription_tier="free")
    await free.allocate("websocket_connections", 4)
    with pytest.raises(QuotaExceeded) as err:
        await free.allocate("websocket_connections", 2)
    e = err.value
    assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.reason == "QUOTA_EXCEEDED"
    assert (e.resource, e.limit, e.current, e.requested) == ("websocket_connections", 5, 4, 2)
    assert e.violation.subject == "tenant:solo"
    assert "limit 5" in e.violation.description and "current 4" in e.violation.description
    assert e.metadata["tier"] == "free" and e.metadata["tenant_id"] == "solo"
    # The raw status carries a standard QuotaFailure.
    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await client.tenant_stub.Allocate(
            tenant_pb2.AllocateRequest(
                tenant_id="solo",
                resource=tenant_pb2.QUOTA_RESOURCE_WEBSOCKET_CONNECTIONS,
                amount=9,
            )
        )
    status = rpc_status.from_call(raw.value)  # type: ignore[arg-type]
    assert status is not None
    failures = [d for d in status.details if d.Is(error_details_pb2.QuotaFailure.DESCRIPTOR)]
    qf = error_details_pb2.QuotaFailure()
    failures[0].Unpack(qf)
    assert (qf.violations[0].quota_metric, qf.violations[0].quota_value) == (
        "websocket_connections",
        5,
    )
    # Nothing was taken by the refusals.
    assert (await free.usage())["websocket_connections"].used == 4


async def test_check_release_and_allocation_block(client: HubClient) -> None:
    c = client.with_context(tenant_id="blk", subscription_tier="free")
    assert await c.check_quota("websocket_connections", 5)
    assert not await c.check_quota("websocket_connections", 6)
    assert (await c.usage())["websocket_connections"].used == 0  # checks take nothing

    async with c.allocation("websocket_connections", 3) as usage:
        assert usage.used == 3 and usage.remaining == 2
        with pytest.raises(QuotaExceeded):
            async with c.allocation("websocket_connections", 3):
                pytest.fail("must not enter")
    assert (await c.usage())["websocket_connections"].used == 0

    with pytest.raises(RuntimeError):
        async with c.allocation("data_storage_mb", 60):
            raise RuntimeError("the block failed")
    assert (await c.usage())["data_storage_mb"].used == 0  # released all the same

    # Releasing more than is in use releases what is in use.
    await c.allocate("concurrent_requests", 2)
    resp = await c.tenant_stub.Release(
        tenant_pb2.ReleaseRequest(
            tenant_id="blk", resource=tenant_pb2.QUOTA_RESOURCE_CONCURRENT_REQUESTS, amount=10
        )
    )
    assert (resp.released, resp.usage.used) == (2, 0)
    assert (await c.release("concurrent_requests")).used == 0

    # A rate is not given back at the end of the block: the calls were made.
    async with c.allocation("api_calls_per_hour", 10):
        pass
    assert (await c.usage())["api_calls_per_hour"].used == 10


async def test_bad_quota_requests(hub: Hub) -> None:
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = tenant_pb2_grpc.TenantServiceStub(ch)
        ws = tenant_pb2.QUOTA_RESOURCE_WEBSOCKET_CONNECTIONS
        cases = [
            (tenant_pb2.AllocateRequest(tenant_id="t", resource=ws, amount=0), ["amount"]),
            (tenant_pb2.AllocateRequest(tenant_id="t", amount=1), ["resource"]),
            (tenant_pb2.AllocateRequest(resource=ws, amount=1), ["tenant_id"]),
            (tenant_pb2.AllocateRequest(tenant_id="a b", resource=99, amount=-1),
             ["tenant_id", "resource", "amount"]),
        ]  # fmt: skip
        from hub_client._private.errors import from_rpc_error

        for request, fields in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Allocate(request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert [v.field for v in from_rpc_error(err.value).field_violations] == fields
        # x-tenant-id stands in for an empty tenant_id.
        resp = await stub.Allocate(
            tenant_pb2.AllocateRequest(resource=ws, amount=1), metadata=(("x-tenant-id", "hdr"),)
        )
        assert resp.usage.used == 1


async def test_hourly_windows_start_from_zero_and_expire(
    hub: Hub, client: HubClient, etcd_store: EtcdStore
) -> None:
    now = [1_800_000_000.0 - 1_800_000_000 % HOUR + 10]  # ten seconds into an hour
    hub.services.quotas._clock = lambda: now[0]
    c = client.with_context(tenant_id="rate")
    await c.set_config_layer("tenant/rate", {"rate_limits": {"api_calls_per_hour": 5}})
    first = await c.allocate("api_calls_per_hour", 5)
    assert (first.used, first.limit) == (5, 5)
    assert (first.window_start, first.window_end) == (now[0] - 10, now[0] - 10 + HOUR)
    with pytest.raises(QuotaExceeded) as err:
        await c.allocate("api_calls_per_hour")
    assert err.value.metadata["window_end"] == str(int(first.window_end))

    start = int(first.window_start)
    kv, _ = await etcd_store.get(keys.usage_key("rate", "api_calls_per_hour", start))
    assert kv is not None and kv.lease  # the window's key lives under a lease...
    ttl = await etcd_store.lease_ttl(kv.lease)
    assert HOUR < ttl <= 2 * HOUR  # ...that ends an hour after the window does

    now[0] += HOUR  # the next hour starts from zero
    assert (await c.usage())["api_calls_per_hour"].used == 0
    second = await c.allocate("api_calls_per_hour", 2)
    assert (second.used, second.window_start) == (2, start + HOUR)
    kv2, _ = await etcd_store.get(keys.usage_key("rate", "api_calls_per_hour", start + HOUR))
    assert kv2 is not None and kv2.lease and kv2.lease != kv.lease  # one lease per window

    # When a window's lease expires its usage goes with it (revoking = expiring now).
    await etcd_store.revoke_lease(kv.lease)
    gone, _ = await etcd_store.get(keys.usage_key("rate", "api_calls_per_hour", start))
    assert gone is None
    counting = quotas.BY_NAME["websocket_connections"]
    assert counting.kind is quotas.Kind.COUNT  # counts have no window and no lease
    await c.allocate("websocket_connections")
    kv3, _ = await etcd_store.get(keys.usage_key("rate", "websocket_connections"))
    assert kv3 is not None and kv3.lease == 0


# -- messages and records (issue 14 item 18) ---------------------------------------------

RATE = tenant_pb2.QUOTA_RESOURCE_API_CALLS_PER_HOUR
WS = tenant_pb2.QUOTA_RESOURCE_WEBSOCKET_CONNECTIONS


async def test_release_never_gives_back_hourly_calls(hub: Hub) -> None:
    """The calls were made: a Release of api_calls_per_hour releases 0 (it refunded them)."""
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = tenant_pb2_grpc.TenantServiceStub(ch)
        took = await stub.Allocate(
            tenant_pb2.AllocateRequest(tenant_id="r", resource=RATE, amount=7)
        )
        assert took.usage.used == 7
        back = await stub.Release(tenant_pb2.ReleaseRequest(tenant_id="r", resource=RATE, amount=7))
        assert (back.released, back.usage.used) == (0, 7)
        again = await stub.Release(
            tenant_pb2.ReleaseRequest(tenant_id="r", resource=RATE, amount=3, request_id="q1")
        )
        assert (again.released, again.usage.used) == (0, 7)


async def test_a_reused_request_id_says_how_long_ids_are_remembered(hub: Hub) -> None:
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = tenant_pb2_grpc.TenantServiceStub(ch)
        await stub.Allocate(
            tenant_pb2.AllocateRequest(tenant_id="t", resource=WS, amount=1, request_id="once")
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Allocate(
                tenant_pb2.AllocateRequest(tenant_id="t", resource=WS, amount=2, request_id="once")
            )
    details = err.value.details() or ""
    assert "within the last 10 minutes" in details and "hour" not in details
    assert quotas.REQUEST_RECORD_SECONDS == 600  # what the message states


async def test_allocation_audit_records_carry_usage_before_and_after(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(audit_allocations_from=1)
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = tenant_pb2_grpc.TenantServiceStub(ch)
        await stub.Allocate(tenant_pb2.AllocateRequest(tenant_id="au", resource=WS, amount=2))
        await stub.Allocate(tenant_pb2.AllocateRequest(tenant_id="au", resource=WS, amount=3))
        await stub.Release(tenant_pb2.ReleaseRequest(tenant_id="au", resource=WS, amount=4))
    events, _ = await hub.services.audit.latest(tenant_id="", method="", start=0.0, limit=100)
    moved = sorted(
        (e.method.rsplit("/", 1)[1], e.version_before, e.version_after)
        for e in events
        if e.target == "usage/au/websocket_connections"
    )
    assert moved == [("Allocate", "0", "2"), ("Allocate", "2", "5"), ("Release", "5", "1")]


async def test_an_ignored_tenant_header_is_named_in_the_error(
    hub_factory: HubFactory, tmp_path: Path
) -> None:
    """A reader not bound to a tenant sends x-tenant-id: the header is ignored (only
    admin and gateway callers name tenants by header), and the error says so
    instead of suggesting to send the header it did send."""
    from tests.support.auth import credentials_text, md

    path = tmp_path / "credentials.toml"
    path.write_text(credentials_text())
    hub = await hub_factory(credentials_file=path)
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = tenant_pb2_grpc.TenantServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetUsage(
                tenant_pb2.GetUsageRequest(), metadata=md("reader", x_tenant_id="acme")
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = err.value.details() or ""
        assert "x-tenant-id header was ignored" in details and "not trusted" in details
        # Without the header the old hint stands; a gateway's header is used.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetUsage(tenant_pb2.GetUsageRequest(), metadata=md("reader"))
        assert "(or send x-tenant-id)" in (err.value.details() or "")
        reply = await stub.GetUsage(
            tenant_pb2.GetUsageRequest(), metadata=md("gateway", x_tenant_id="acme")
        )
        assert reply.tenant_id == "acme"
