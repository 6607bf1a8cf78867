"""The audit trail: every mutating call leaves a record; filters and paging."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from aitrading.hub.v1 import circuit_pb2 as cb
from aitrading.hub.v1 import observability_pb2 as obs
from aitrading.hub.v1 import observability_pb2_grpc, registry_pb2

from hub_client import HubClient, InvalidArgument
from hub_server.app import Hub
from hub_server.kernel import errors
from tests.support.waiting import eventually


async def _list(hub: Hub, **kw) -> obs.ListAuditEventsResponse:  # type: ignore[no-untyped-def]
    async with grpc.aio.insecure_channel(hub.address) as ch:
        return await observability_pb2_grpc.ObservabilityServiceStub(ch).ListAuditEvents(
            obs.ListAuditEventsRequest(**kw)
        )


async def test_mutations_are_audited_with_who_what_and_outcome(hub: Hub) -> None:
    async with HubClient(
        hub.address, tenant_id="company_abc", user_id="u1", correlation_id="req-9"
    ) as client:
        reg = await client.register("data-bridge", host="db", port=8001, version="2.0.0")
        await client.register("data-bridge", host="db", port=8001, keep_alive=False)
        await client.call(
            client.circuit_stub.OverrideCircuit,
            cb.OverrideCircuitRequest(service="data-bridge", action=cb.CIRCUIT_OVERRIDE_FORCE_OPEN),
        )
        with pytest.raises(InvalidArgument):
            await client.call(client.registry_stub.Register, registry_pb2.RegisterRequest())
        await reg.deregister()
        await client.list_services()  # reads leave no record

    events = (await _list(hub, tenant_id="company_abc")).events
    methods = [e.method.rsplit("/", 1)[1] for e in events]
    # The client deregisters both handles: the second finds nothing left.
    assert methods == [
        "Register", "Register", "OverrideCircuit", "Register", "Deregister", "Deregister",
    ]  # fmt: skip
    assert [e.outcome for e in events[-2:]] == ["OK", "NOT_FOUND"]
    first = events[0]
    assert (first.tenant_id, first.user_id, first.correlation_id) == ("company_abc", "u1", "req-9")
    assert first.target == "registry/data-bridge/db-8001" and first.outcome == "OK"
    assert first.version_after and first.details["version"] == "2.0.0"
    assert first.caller.startswith("ipv4:127.0.0.1") and first.hub_id == hub.hub_id
    assert events[2].version_before == "CLOSED" and events[2].version_after == "FORCED_OPEN"
    assert events[3].outcome == "INVALID_ARGUMENT"
    assert [e.id for e in events] == sorted(e.id for e in events)


async def test_filters_and_paging(hub: Hub, client: HubClient) -> None:
    before = time.time()
    for i in range(7):
        await client.with_context(tenant_id=f"t{i % 2}").register(
            "svc", host="h", port=100 + i, keep_alive=False
        )
    after = time.time()
    t0 = (await _list(hub, tenant_id="t0")).events
    assert len(t0) == 4 and all(e.tenant_id == "t0" for e in t0)
    assert len((await _list(hub, method="Register")).events) == 7
    assert (await _list(hub, method="Deregister")).events == []

    pages, token = [], ""
    while True:
        resp = await _list(hub, page_size=3, page_token=token)
        pages.append(len(resp.events))
        token = resp.next_page_token
        if not token:
            break
    assert sum(pages) == 7 and pages[0] == 3

    window = obs.ListAuditEventsRequest()
    window.start_time.FromNanoseconds(int(after * 1e9))
    assert (await _list(hub, start_time=window.start_time)).events == []
    window.end_time.FromNanoseconds(int(before * 1e9))
    assert (await _list(hub, end_time=window.end_time)).events == []

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _list(hub, page_token="bm9wZQ==")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_retention_prunes_old_records(hub: Hub, client: HubClient) -> None:
    await client.register("old", host="h", port=1, keep_alive=False)
    hub.services.audit.retention = 0.0  # everything is old now
    task = asyncio.create_task(hub.services.audit.prune_forever(interval=0.05))
    try:
        await eventually(lambda: _empty(hub))
    finally:
        task.cancel()


async def _empty(hub: Hub) -> bool:
    return not (await _list(hub)).events


async def test_latest_is_newest_first_with_the_same_filters(hub: Hub) -> None:
    for i in range(6):
        await hub.services.audit.append(
            obs.AuditEvent(method=f"/x.S/M{i % 2}", tenant_id=f"t{i % 3}", target=f"n{i}")
        )
    events, revision = await hub.services.audit.latest(limit=4)
    assert [e.target for e in events] == ["n5", "n4", "n3", "n2"] and revision > 0
    assert [e.target for e in (await hub.services.audit.latest(method="M1"))[0]] == [
        "n5",
        "n3",
        "n1",
    ]
    assert [e.target for e in (await hub.services.audit.latest(tenant_id="t0"))[0]] == ["n3", "n0"]
    assert (await hub.services.audit.latest(start=time.time() + 60))[0] == []
    with pytest.raises(errors.InvalidArgument, match="limit"):
        await hub.services.audit.latest(limit=0)
