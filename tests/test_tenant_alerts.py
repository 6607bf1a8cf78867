"""Tenant limit alerts and the audit of large quota allocations."""

from __future__ import annotations

import grpc
import pytest
from aitrading.hub.v1 import observability_pb2 as obs
from aitrading.hub.v1 import observability_pb2_grpc

from hub_client import HubClient
from hub_server.app import Hub
from hub_server.observability.tenant_alerts import limit_conditions
from tests.support.hubs import HubFactory
from tests.support.waiting import eventually


@pytest.mark.parametrize(
    ("used", "limit", "rule"),
    [
        (0, 5, None),
        (3, 5, None),
        (4, 5, "TENANT_NEAR_LIMIT"),  # 80%
        (5, 5, "TENANT_NEAR_LIMIT"),  # at the limit: near, not over
        (6, 5, "TENANT_OVER_LIMIT"),
        (7, 0, None),  # no limit configured
    ],
)
def test_limit_rule(used: int, limit: int, rule: str | None) -> None:
    got = limit_conditions("t1", "websocket_connections", used, limit, 0.8)
    assert [c.rule for c in got] == ([rule] if rule else [])
    if got:
        assert got[0].tenant_id == "t1" and got[0].instance_id == "websocket_connections"


async def _active(hub: Hub) -> set[str]:
    async with grpc.aio.insecure_channel(hub.address) as ch:
        resp = await observability_pb2_grpc.ObservabilityServiceStub(ch).ListAlerts(
            obs.ListAlertsRequest(tenant_id="acme")
        )
    return {a.rule for a in resp.active}


async def test_near_and_over_limit_alerts_follow_usage(hub_factory: HubFactory) -> None:
    hub = await hub_factory(alert_interval=0.1)
    async with HubClient(hub.address) as client:
        await client.create_tenant("acme", tier="free")  # 5 websocket connections
        await client.allocate("websocket_connections", 3, tenant="acme")
        await eventually(lambda: hub.services.election.is_leader)
        assert await _active(hub) == set()
        await client.allocate("websocket_connections", 1, tenant="acme")
        await eventually(lambda: _rules_are(hub, {"TENANT_NEAR_LIMIT"}))
        # The limit drops under existing usage: over it.
        await client.set_config_layer("tenant/acme", {"rate_limits": {"websocket_connections": 3}})
        await eventually(lambda: _rules_are(hub, {"TENANT_OVER_LIMIT"}))
        await client.release("websocket_connections", 4, tenant="acme")
        await eventually(lambda: _rules_are(hub, set()))


async def _rules_are(hub: Hub, rules: set[str]) -> bool:
    return await _active(hub) == rules


async def test_only_large_allocations_are_audited(hub: Hub, client: HubClient) -> None:
    await client.create_tenant("bulk", tier="enterprise")
    await client.allocate("data_storage_mb", 1, tenant="bulk")
    await client.allocate("data_storage_mb", 250, tenant="bulk")
    await client.release("data_storage_mb", 250, tenant="bulk")
    async with grpc.aio.insecure_channel(hub.address) as ch:
        events = (
            await observability_pb2_grpc.ObservabilityServiceStub(ch).ListAuditEvents(
                obs.ListAuditEventsRequest()
            )
        ).events
    quota = [(e.method.rsplit("/", 1)[1], e.details["amount"]) for e in events
             if e.target.startswith("usage/")]  # fmt: skip
    assert quota == [("Allocate", "250"), ("Release", "250")]
