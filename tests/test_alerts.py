"""Alert rules (pure) and alerts raised and resolved by a live hub, once."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from aitrading.hub.v1 import circuit_pb2 as cb
from aitrading.hub.v1 import circuit_pb2_grpc, observability_pb2_grpc
from aitrading.hub.v1 import observability_pb2 as obs

from hub_client import HubClient, health_check
from hub_server.app import Hub
from hub_server.circuits.breaker import CircuitState
from hub_server.health.service import DEGRADED, HEALTHY, UNHEALTHY, UNKNOWN
from hub_server.observability.alerts import circuit_conditions, service_conditions
from tests.support.hubs import HubFactory
from tests.support.servers import GrpcServer
from tests.support.waiting import eventually


@pytest.mark.parametrize(
    ("statuses", "rules"),
    [
        ({}, []),
        ({"a": HEALTHY, "b": HEALTHY}, []),
        ({"a": HEALTHY, "b": UNHEALTHY}, ["INSTANCE_DOWN:b"]),
        ({"a": UNHEALTHY, "b": UNHEALTHY}, ["INSTANCE_DOWN:a", "INSTANCE_DOWN:b", "SERVICE_DOWN:"]),
        ({"a": UNHEALTHY, "b": UNKNOWN}, ["INSTANCE_DOWN:a", "SERVICE_DOWN:"]),
        ({"a": UNKNOWN}, []),  # not probed yet: no verdict
        ({"a": DEGRADED, "b": HEALTHY}, ["SERVICE_DEGRADED:"]),
        ({"a": DEGRADED, "b": HEALTHY, "c": HEALTHY}, []),
        ({"a": DEGRADED, "b": UNHEALTHY}, ["INSTANCE_DOWN:b", "SERVICE_DEGRADED:"]),
    ],
)
def test_service_rules(statuses: dict[str, int], rules: list[str]) -> None:
    got = [f"{c.rule}:{c.instance_id}" for c in service_conditions("svc", statuses)]
    assert got == rules


def test_circuit_rule() -> None:
    got = circuit_conditions(
        [("a", "", CircuitState.OPEN), ("b", "i1", CircuitState.HALF_OPEN),
         ("c", "", CircuitState.CLOSED), ("d", "", CircuitState.FORCED_OPEN),
         ("e", "", CircuitState.FORCED_CLOSED)]
    )  # fmt: skip
    assert [c.id for c in got] == [
        "CIRCUIT_OPENED:a::",
        "CIRCUIT_OPENED:b:i1:",
        "CIRCUIT_OPENED:d::",
    ]


async def _alerts(hub: Hub, history: int = 0) -> obs.ListAlertsResponse:
    async with grpc.aio.insecure_channel(hub.address) as ch:
        return await observability_pb2_grpc.ObservabilityServiceStub(ch).ListAlerts(
            obs.ListAlertsRequest(history_limit=history)
        )


async def _active_rules(hub: Hub) -> set[str]:
    return {a.rule for a in (await _alerts(hub)).active}


async def test_instance_down_raised_once_and_resolved(hub_factory: HubFactory) -> None:
    a = await hub_factory(alert_interval=0.1)
    b = await hub_factory(alert_interval=0.1)  # a second replica must not raise twice
    server = GrpcServer()
    await server.start()
    seen: list[tuple[str, bool]] = []
    async with grpc.aio.insecure_channel(b.address) as ch:
        watch = observability_pb2_grpc.ObservabilityServiceStub(ch).WatchAlerts(
            obs.WatchAlertsRequest()
        )

        async def follow() -> None:
            async for msg in watch:
                if msg.kind == 2:  # EVENTS
                    seen.extend((x.rule, x.active) for x in msg.alerts)

        follower = asyncio.create_task(follow())
        try:
            async with HubClient(a.address) as client:
                await client.register(
                    "pricing", instance_id="p1", host="127.0.0.1", port=server.port,
                    protocol="grpc",
                    health=health_check(grpc_service="", interval=0.1, timeout=0.5),
                )  # fmt: skip
                await eventually(lambda: _healthy(client))
                await server.set_serving(False)
                await eventually(lambda: ("SERVICE_DOWN", True) in seen)
                assert await _active_rules(a) == {"INSTANCE_DOWN", "SERVICE_DOWN"}
                await server.set_serving(True)
                await eventually(lambda: ("SERVICE_DOWN", False) in seen)
                await eventually(lambda: ("INSTANCE_DOWN", False) in seen)
                assert await _active_rules(b) == set()
            history = (await _alerts(b, history=50)).history
            raised = sorted(h.rule for h in history if h.active)
            assert raised == ["INSTANCE_DOWN", "SERVICE_DOWN"]  # once each
            assert sorted(h.rule for h in history if not h.active) == raised
            assert all(h.resolved_at.seconds for h in history if not h.active)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            await server.stop()


async def _healthy(client: HubClient) -> bool:
    return [h.status for h in await client.get_health("pricing")] == ["healthy"]


async def test_circuit_opened_alert(hub_factory: HubFactory) -> None:
    hub = await hub_factory(alert_interval=0.1)
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = circuit_pb2_grpc.CircuitBreakerServiceStub(ch)
        await stub.OverrideCircuit(
            cb.OverrideCircuitRequest(service="ml", action=cb.CIRCUIT_OVERRIDE_FORCE_OPEN)
        )
        await eventually(lambda: _has(hub, "CIRCUIT_OPENED"))
        alert = (await _alerts(hub)).active[0]
        assert alert.service == "ml" and alert.severity == obs.ALERT_SEVERITY_WARNING
        assert "FORCED_OPEN" in alert.summary
        await stub.OverrideCircuit(
            cb.OverrideCircuitRequest(service="ml", action=cb.CIRCUIT_OVERRIDE_RESET)
        )
        await eventually(lambda: _none(hub))


async def _has(hub: Hub, rule: str) -> bool:
    return rule in await _active_rules(hub)


async def _none(hub: Hub) -> bool:
    return not await _active_rules(hub)
