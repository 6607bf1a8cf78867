"""Allocate and Release with a request id, against a real etcd: a retry of a call
that took effect changes nothing and gets the first answer again (on any
replica, concurrently, after the quota filled up, across an hour boundary);
records expire with their lease; and hub_client retries a lost reply with the
same id, so a caller's allocation counts once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from aitrading.hub.v1 import (
    observability_pb2,
    observability_pb2_grpc,
    tenant_pb2,
    tenant_pb2_grpc,
)

from hub_client import HubClient, QuotaExceeded, Unavailable
from hub_client._private.errors import from_rpc_error
from hub_server.app import Hub
from hub_server.quotas import arithmetic as quotas
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore
from tests.support.hubs import HubFactory

HOUR = 3600
WS = tenant_pb2.QUOTA_RESOURCE_WEBSOCKET_CONNECTIONS
RATE = tenant_pb2.QUOTA_RESOURCE_API_CALLS_PER_HOUR


def allocate(
    tenant: str, amount: int, request_id: str = "", resource: int = WS
) -> tenant_pb2.AllocateRequest:
    return tenant_pb2.AllocateRequest(
        tenant_id=tenant, resource=resource, amount=amount, request_id=request_id
    )


def release(
    tenant: str, amount: int, request_id: str = "", resource: int = WS
) -> tenant_pb2.ReleaseRequest:
    return tenant_pb2.ReleaseRequest(
        tenant_id=tenant, resource=resource, amount=amount, request_id=request_id
    )


async def used_in_etcd(
    store: EtcdStore, tenant: str, resource: str = "websocket_connections"
) -> int:
    kv, _ = await store.get(keys.usage_key(tenant, resource))
    return int(json.loads(kv.value)["used"]) if kv is not None else 0


def stub(hub: Hub, channel: grpc.aio.Channel) -> tenant_pb2_grpc.TenantServiceStub:
    return tenant_pb2_grpc.TenantServiceStub(channel)


# A free tenant unknown to the hub: websocket_connections limit 5.
FREE = (("x-subscription-tier", "free"),)


async def test_same_request_id_counts_once_and_answers_the_same_on_any_replica(
    hub_factory: HubFactory, etcd_store: EtcdStore
) -> None:
    a, b = await hub_factory(), await hub_factory()
    async with (
        grpc.aio.insecure_channel(a.address) as ch_a,
        grpc.aio.insecure_channel(b.address) as ch_b,
    ):
        sa, sb = stub(a, ch_a), stub(b, ch_b)
        first = await sa.Allocate(allocate("t1", 2, "req-1"), metadata=FREE)
        assert (first.usage.used, first.usage.limit) == (2, 5)
        # The same id again, on the same replica and on the other: nothing changes,
        # the answer is the first one (revision included).
        again = await sa.Allocate(allocate("t1", 2, "req-1"), metadata=FREE)
        other = await sb.Allocate(allocate("t1", 2, "req-1"), metadata=FREE)
        for resp in (again, other):
            assert resp.usage == first.usage
            assert resp.header.revision == first.header.revision
        assert await used_in_etcd(etcd_store, "t1") == 2
        # Without this replica's cached usage it reads the record as well.
        a.services.quotas._known.clear()
        assert (await sa.Allocate(allocate("t1", 2, "req-1"), metadata=FREE)).usage.used == 2
        assert await used_in_etcd(etcd_store, "t1") == 2

        # A different id is a different allocation.
        second = await sb.Allocate(allocate("t1", 2, "req-2"), metadata=FREE)
        assert second.usage.used == 4 and second.header.revision > first.header.revision
        # Ids are per tenant: req-1 of another tenant is its own call.
        assert (await sa.Allocate(allocate("t2", 1, "req-1"), metadata=FREE)).usage.used == 1
        # Without an id every call counts.
        await sa.Allocate(allocate("t1", 1), metadata=FREE)
        assert await used_in_etcd(etcd_store, "t1") == 5

        # The quota is full now, yet a retry of a call that took effect is still
        # answered with its success, not RESOURCE_EXHAUSTED (cached or not).
        for s in (sa, sb):
            assert (await s.Allocate(allocate("t1", 2, "req-2"), metadata=FREE)).usage == (
                second.usage
            )
        b.services.quotas._known.clear()
        assert (await sb.Allocate(allocate("t1", 2, "req-2"), metadata=FREE)).usage.used == 4
        # While a new id is refused, and a refusal records nothing: once room is
        # made, the same id is tried afresh and granted.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await sa.Allocate(allocate("t1", 2, "req-3"), metadata=FREE)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await sa.Release(release("t1", 3), metadata=FREE)
        assert (await sb.Allocate(allocate("t1", 2, "req-3"), metadata=FREE)).usage.used == 4
        assert await used_in_etcd(etcd_store, "t1") == 4


async def test_concurrent_calls_with_one_request_id_count_once(
    hub_factory: HubFactory, etcd_store: EtcdStore
) -> None:
    a, b = await hub_factory(), await hub_factory()
    async with HubClient(a.address) as ca, HubClient(b.address) as cb:
        pro = [c.with_context(subscription_tier="pro") for c in (ca, cb)]
        results = await asyncio.gather(
            *(
                pro[i % 2].allocate("concurrent_requests", 3, tenant="dup", request_id="same")
                for i in range(20)
            ),
            *(
                pro[i % 2].allocate("concurrent_requests", 1, tenant="dup", request_id=f"own-{i}")
                for i in range(10)
            ),
        )
        assert {r.used for r in results[:20]} == {results[0].used}  # one answer for all
        assert await used_in_etcd(etcd_store, "dup", "concurrent_requests") == 3 + 10


async def test_release_with_a_request_id_happens_once(
    hub: Hub, client: HubClient, etcd_store: EtcdStore
) -> None:
    c = client.with_context(tenant_id="rel", subscription_tier="free")
    await c.allocate("websocket_connections", 5)
    first = await c.tenant_stub.Release(release("rel", 2, "r-1"))
    assert (first.released, first.usage.used) == (2, 3)
    for _ in range(2):
        again = await c.tenant_stub.Release(release("rel", 2, "r-1"))
        assert (again.released, again.usage, again.header.revision) == (
            2,
            first.usage,
            first.header.revision,
        )
    hub.services.quotas._known.clear()
    assert (await c.tenant_stub.Release(release("rel", 2, "r-1"))).released == 2
    assert await used_in_etcd(etcd_store, "rel") == 3

    # A release of more than is in use releases what is, once.
    all_of_it = await c.tenant_stub.Release(release("rel", 10, "r-2"))
    assert (all_of_it.released, all_of_it.usage.used) == (3, 0)
    # Even a release of nothing is recorded: allocated meanwhile, its retry
    # still releases nothing.
    nothing = await c.tenant_stub.Release(release("rel", 1, "r-3"))
    assert (nothing.released, nothing.usage.used) == (0, 0)
    await c.allocate("websocket_connections", 1)
    retried = await c.tenant_stub.Release(release("rel", 1, "r-3"))
    assert (retried.released, retried.usage.used, retried.header.revision) == (
        0,
        0,
        nothing.header.revision,
    )
    assert await used_in_etcd(etcd_store, "rel") == 1


async def test_bad_and_reused_request_ids_are_invalid_argument(
    hub: Hub, etcd_store: EtcdStore
) -> None:
    async with grpc.aio.insecure_channel(hub.address) as ch:
        s = stub(hub, ch)
        bad = ["a/b", "..x", "x" * 129, "-x", ".x", "a b", "é", "a\n", "a..b", "\x00"]
        for request_id in bad:
            for call, request in (
                (s.Allocate, allocate("t", 1, request_id)),
                (s.Release, release("t", 1, request_id)),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call(request, metadata=FREE)  # type: ignore[operator]
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request_id
                assert [v.field for v in from_rpc_error(err.value).field_violations] == [
                    "request_id"
                ]
        longest = "x" * 128
        assert (await s.Allocate(allocate("t", 1, longest), metadata=FREE)).usage.used == 1

        # An id already used for another call of the tenant: refused, nothing changes.
        for request in (
            allocate("t", 2, longest),
            allocate("t", 1, longest, resource=tenant_pb2.QUOTA_RESOURCE_DATA_STORAGE_MB),
            release("t", 1, longest),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                call = s.Release if isinstance(request, tenant_pb2.ReleaseRequest) else s.Allocate
                await call(request, metadata=FREE)  # type: ignore[operator]
            error = from_rpc_error(err.value)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error.reason == "REQUEST_ID_REUSED"
            assert [v.field for v in error.field_violations] == ["request_id"]
        assert await used_in_etcd(etcd_store, "t") == 1
        assert await used_in_etcd(etcd_store, "t", "data_storage_mb") == 0
        # Refused requests wrote no record.
        records, _ = await etcd_store.get_prefix(keys.QUOTA_REQUESTS)
        assert [kv.key for kv in records] == [keys.quota_request_key("t", longest)]


async def test_records_live_under_a_lease_of_about_ten_minutes(
    hub_factory: HubFactory, etcd_store: EtcdStore
) -> None:
    hub = await hub_factory()
    now = [1_800_000_000.0 - 1_800_000_000 % HOUR + HOUR - 5]  # five seconds before an hour ends
    hub.services.quotas._clock = lambda: now[0]
    async with HubClient(hub.address, tenant_id="exp", subscription_tier="free") as c:
        first = await c.allocate("websocket_connections", 1, request_id="e-1")
        rate = await c.allocate("api_calls_per_hour", 3, request_id="e-2")
        key = keys.quota_request_key("exp", "e-1")
        kv, _ = await etcd_store.get(key)
        assert kv is not None and kv.lease
        record = quotas.RequestRecord.from_json(kv.value)
        assert (record.op, record.resource, record.amount, record.used) == (
            "allocate",
            "websocket_connections",
            1,
            1,
        )
        kept = quotas.REQUEST_RECORD_SECONDS
        assert kept < await etcd_store.lease_ttl(kv.lease) <= kept + quotas.REQUEST_BUCKET_SECONDS
        # Records share a lease (not one grant per call), apart from the window's.
        kv2, _ = await etcd_store.get(keys.quota_request_key("exp", "e-2"))
        window = await etcd_store.get(
            keys.usage_key("exp", "api_calls_per_hour", int(rate.window_start))
        )
        assert kv2 is not None and kv2.lease == kv.lease
        assert window[0] is not None and window[0].lease not in (0, kv.lease)

        # A rate retried in the next hour gets the first window's answer.
        now[0] += 10
        again = await c.allocate("api_calls_per_hour", 3, request_id="e-2")
        assert (again.used, again.window_start) == (3, rate.window_start)
        assert (await c.usage())["api_calls_per_hour"].used == 0  # the new hour: nothing

        # When the lease expires (revoking = expiring now) the records go, and the
        # id may be used again: it is a new call.
        await etcd_store.revoke_lease(kv.lease)
        assert (await etcd_store.get(key))[0] is None
        assert (await c.allocate("websocket_connections", 1, request_id="e-1")).used == 2
        assert first.used == 1
        # A record lease gone under the hub (etcd restored from a backup, say):
        # the write is made again with a new one.
        kv3, _ = await etcd_store.get(key)
        assert kv3 is not None and kv3.lease not in (0, kv.lease)
        await etcd_store.revoke_lease(kv3.lease)
        assert (await c.allocate("websocket_connections", 1, request_id="e-3")).used == 3
        kv4, _ = await etcd_store.get(keys.quota_request_key("exp", "e-3"))
        assert kv4 is not None and kv4.lease not in (0, kv3.lease)


# -- hub_client retries ------------------------------------------------------------------


class LoseReplies(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Lets the first ``lose`` calls of ``method`` reach the hub, then throws their
    reply away as if the connection broke (``code``)."""

    def __init__(self, method: str, lose: int, code: grpc.StatusCode) -> None:
        self.method, self.lose, self.code = method, lose, code
        self.request_ids: list[str] = []

    async def intercept_unary_unary(
        self,
        continuation: Callable[[Any, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        call = await continuation(client_call_details, request)
        method = client_call_details.method
        if (method.decode() if isinstance(method, bytes) else method).endswith(self.method):
            self.request_ids.append(request.request_id)
            if self.lose > 0:
                self.lose -= 1
                await call  # the hub did the work...
                raise grpc.aio.AioRpcError(  # ...and the reply is lost
                    self.code, grpc.aio.Metadata(), grpc.aio.Metadata(), "reply lost"
                )
        return call


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED])
async def test_client_retries_a_lost_reply_with_the_same_id(
    hub: Hub, etcd_store: EtcdStore, code: grpc.StatusCode
) -> None:
    lose_allocate = LoseReplies("/Allocate", 2, code)
    lose_release = LoseReplies("/Release", 1, code)
    channel = grpc.aio.insecure_channel(hub.address, interceptors=[lose_allocate, lose_release])
    async with HubClient(
        hub.address, channel=channel, tenant_id="lossy", subscription_tier="free"
    ) as c:
        usage = await c.allocate("websocket_connections", 2)
        assert usage.used == 2  # the first attempt's answer, counted once
        assert len(lose_allocate.request_ids) == 3 and len(set(lose_allocate.request_ids)) == 1
        assert len(lose_allocate.request_ids[0]) == 32  # uuid4 hex
        assert await used_in_etcd(etcd_store, "lossy") == 2

        async with c.allocation("websocket_connections", 3) as held:
            assert held.used == 5
        # The block's release lost its first reply and was retried: released once.
        assert len(lose_release.request_ids) == 2 and len(set(lose_release.request_ids)) == 1
        assert await used_in_etcd(etcd_store, "lossy") == 2

        # A new call, a new id; and what is not Unavailable is not retried.
        before = len(lose_allocate.request_ids)
        with pytest.raises(QuotaExceeded):
            await c.allocate("websocket_connections", 4)
        assert len(lose_allocate.request_ids) == before + 1
        assert lose_allocate.request_ids[-1] not in lose_allocate.request_ids[:-1]
    await channel.close()


async def test_client_gives_up_within_its_timeout(hub: Hub, etcd_store: EtcdStore) -> None:
    lose = LoseReplies("/Allocate", 1000, grpc.StatusCode.UNAVAILABLE)
    channel = grpc.aio.insecure_channel(hub.address, interceptors=[lose])
    async with HubClient(hub.address, channel=channel, timeout=1.0, tenant_id="gone") as c:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(Unavailable):
            await c.allocate("websocket_connections", request_id="mine")
        assert loop.time() - started < 1.5
        assert 2 <= len(lose.request_ids) <= 8 and set(lose.request_ids) == {"mine"}
    await channel.close()
    assert await used_in_etcd(etcd_store, "gone") == 1  # however many attempts arrived


async def test_a_replayed_call_is_audited_as_a_replay(hub: Hub, client: HubClient) -> None:
    c = client.with_context(tenant_id="aud", subscription_tier="enterprise")
    for _ in range(2):  # with the tenant headers, so that the records are the tenant's
        await c.call(c.tenant_stub.Allocate, allocate("aud", 10, "a-1", resource=RATE))
    for _ in range(2):
        await c.call(c.tenant_stub.Release, release("aud", 10, "a-2", resource=RATE))
    async with grpc.aio.insecure_channel(hub.address) as ch:
        events = (
            await observability_pb2_grpc.ObservabilityServiceStub(ch).ListAuditEvents(
                observability_pb2.ListAuditEventsRequest(tenant_id="aud")
            )
        ).events
    seen = [
        (e.method.rsplit("/", 1)[1], e.details["request_id"], e.details.get("replay", ""))
        for e in events
    ]
    assert seen == [
        ("Allocate", "a-1", ""),
        ("Allocate", "a-1", "true"),
        ("Release", "a-2", ""),
        ("Release", "a-2", "true"),
    ]
