"""CircuitBreakerService across hub replicas, against a real etcd."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from aitrading.hub.v1 import circuit_pb2 as cb
from aitrading.hub.v1 import circuit_pb2_grpc
from google.protobuf import duration_pb2

from hub_server.app import Hub
from tests.support.hubs import HubFactory
from tests.support.waiting import eventually

CLOSED, OPEN, HALF_OPEN = cb.CIRCUIT_STATE_CLOSED, cb.CIRCUIT_STATE_OPEN, cb.CIRCUIT_STATE_HALF_OPEN

SMALL = cb.CircuitSettings(
    window_type=cb.WINDOW_TYPE_COUNT,
    window_size=10,
    minimum_calls=10,
    failure_rate_threshold=50,
    wait_in_open=duration_pb2.Duration(nanos=500_000_000),
    permitted_calls_in_half_open=2,
)


def _stub(hub: Hub) -> tuple[grpc.aio.Channel, circuit_pb2_grpc.CircuitBreakerServiceStub]:
    ch = grpc.aio.insecure_channel(hub.address)
    return ch, circuit_pb2_grpc.CircuitBreakerServiceStub(ch)


def _outcomes(
    service: str, ok: int, failed: int, instance_id: str = ""
) -> cb.ReportOutcomesRequest:
    return cb.ReportOutcomesRequest(
        outcomes=[cb.CallOutcome(service=service, instance_id=instance_id,
                                 outcome=cb.OUTCOME_SUCCESS, latency_ms=5)] * ok
        + [cb.CallOutcome(service=service, instance_id=instance_id,
                          outcome=cb.OUTCOME_FAILURE, latency_ms=5)] * failed
    )  # fmt: skip


async def _state(stub: circuit_pb2_grpc.CircuitBreakerServiceStub, service: str) -> cb.Circuit:
    resp = await stub.GetCircuitState(cb.GetCircuitStateRequest(service=service))
    return resp.circuit


async def test_unused_circuit_is_closed_with_defaults(hub: Hub) -> None:
    ch, stub = _stub(hub)
    async with ch:
        c = await _state(stub, "never-called")
    assert c.state == CLOSED
    assert (c.settings.window_size, c.settings.minimum_calls) == (100, 20)
    assert c.settings.failure_rate_threshold == 50


async def test_outcomes_split_across_replicas_trip_once(hub_factory: HubFactory) -> None:
    a, b = await hub_factory(), await hub_factory()
    ch_a, stub_a = _stub(a)
    ch_b, stub_b = _stub(b)
    async with ch_a, ch_b:
        await stub_a.SetCircuitSettings(cb.SetCircuitSettingsRequest(service="ml", settings=SMALL))
        watch = stub_b.WatchCircuits(cb.WatchCircuitsRequest(service="ml"))
        states: list[int] = []

        async def follow() -> None:
            async for msg in watch:
                states.extend(c.state for c in msg.circuits)

        follower = asyncio.create_task(follow())
        # Ten calls in all, half failing, reported in small batches to both replicas.
        await asyncio.gather(
            *[stub_a.ReportOutcomes(_outcomes("ml", 1, 1)) for _ in range(3)],
            *[stub_b.ReportOutcomes(_outcomes("ml", 1, 1)) for _ in range(2)],
        )
        await eventually(lambda: OPEN in states)
        c_a, c_b = await _state(stub_a, "ml"), await _state(stub_b, "ml")
        assert c_a.state == c_b.state == OPEN
        assert c_a.calls == 10 and c_a.failure_rate == 50  # every call counted once
        assert "FAILURE_RATE" in c_a.reason
        # Reports while OPEN are ignored: no second transition.
        await stub_b.ReportOutcomes(_outcomes("ml", 0, 5))
        await asyncio.sleep(0.1)
        openings = [
            i for i, st in enumerate(states) if st == OPEN and (i == 0 or states[i - 1] != OPEN)
        ]
        assert len(openings) == 1
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower


async def test_open_half_open_closed_by_the_leaders_timer(hub: Hub) -> None:
    ch, stub = _stub(hub)
    async with ch:
        await stub.SetCircuitSettings(cb.SetCircuitSettingsRequest(service="pay", settings=SMALL))
        await stub.ReportOutcomes(_outcomes("pay", 0, 10))
        assert (await _state(stub, "pay")).state == OPEN
        await eventually(lambda: _is(stub, "pay", HALF_OPEN), timeout=5)
        await stub.ReportOutcomes(_outcomes("pay", 2, 0))  # the permitted trial calls succeed
        assert (await _state(stub, "pay")).state == CLOSED

        await stub.ReportOutcomes(_outcomes("pay", 0, 10))
        await eventually(lambda: _is(stub, "pay", HALF_OPEN), timeout=5)
        await stub.ReportOutcomes(_outcomes("pay", 0, 2))  # trials fail: back to OPEN
        assert (await _state(stub, "pay")).state == OPEN


async def _is(stub: circuit_pb2_grpc.CircuitBreakerServiceStub, service: str, state: int) -> bool:
    return (await _state(stub, service)).state == state


async def test_overrides_are_seen_by_every_replica(hub_factory: HubFactory) -> None:
    a, b = await hub_factory(), await hub_factory()
    ch_a, stub_a = _stub(a)
    ch_b, stub_b = _stub(b)
    async with ch_a, ch_b:
        resp = await stub_a.OverrideCircuit(
            cb.OverrideCircuitRequest(service="risk", action=cb.CIRCUIT_OVERRIDE_FORCE_OPEN)
        )
        assert resp.circuit.state == cb.CIRCUIT_STATE_FORCED_OPEN
        await eventually(lambda: _is(stub_b, "risk", cb.CIRCUIT_STATE_FORCED_OPEN))
        await stub_b.ReportOutcomes(_outcomes("risk", 50, 0))  # ignored while forced
        assert (await _state(stub_a, "risk")).state == cb.CIRCUIT_STATE_FORCED_OPEN
        await stub_b.OverrideCircuit(
            cb.OverrideCircuitRequest(service="risk", action=cb.CIRCUIT_OVERRIDE_RESET)
        )
        await eventually(lambda: _is(stub_a, "risk", CLOSED))


async def test_per_instance_circuit(hub: Hub) -> None:
    ch, stub = _stub(hub)
    async with ch:
        await stub.SetCircuitSettings(cb.SetCircuitSettingsRequest(service="feed", settings=SMALL))
        await stub.ReportOutcomes(_outcomes("feed", 0, 10, instance_id="feed-1"))
        inst = await stub.GetCircuitState(
            cb.GetCircuitStateRequest(service="feed", instance_id="feed-1")
        )
        assert inst.circuit.state == OPEN
        assert (await _state(stub, "feed")).state == CLOSED
        assert hub.services.circuits.refuses("feed", "feed-1")
        assert not hub.services.circuits.refuses("feed")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (cb.ReportOutcomesRequest(outcomes=[cb.CallOutcome(service="Bad", outcome=1)]),
         "outcomes[0].service"),
        (cb.ReportOutcomesRequest(outcomes=[cb.CallOutcome(service="ok", outcome=0)]),
         "outcomes[0].outcome"),
        (cb.ReportOutcomesRequest(outcomes=[cb.CallOutcome(service="ok", outcome=1,
                                                           latency_ms=-1)]),
         "outcomes[0].latency_ms"),
        (cb.ReportOutcomesRequest(outcomes=[cb.CallOutcome(service="ok", outcome=1,
                                                           instance_id="../x")]),
         "outcomes[0].instance_id"),
        (cb.SetCircuitSettingsRequest(service="ok", settings=cb.CircuitSettings(
            failure_rate_threshold=150)), "settings.failure_rate_threshold"),
        (cb.SetCircuitSettingsRequest(service="ok", settings=cb.CircuitSettings(
            window_size=-3)), "settings.window_size"),
        (cb.OverrideCircuitRequest(service="ok"), "action"),
        (cb.GetCircuitStateRequest(service=""), "service"),
    ],
)  # fmt: skip
async def test_bad_requests(hub: Hub, request_, field: str) -> None:  # type: ignore[no-untyped-def]
    from hub_client._private.errors import InvalidArgument, from_rpc_error

    ch, stub = _stub(hub)
    method = {
        cb.ReportOutcomesRequest: stub.ReportOutcomes,
        cb.SetCircuitSettingsRequest: stub.SetCircuitSettings,
        cb.OverrideCircuitRequest: stub.OverrideCircuit,
        cb.GetCircuitStateRequest: stub.GetCircuitState,
    }[type(request_)]
    async with ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(request_)
    error = from_rpc_error(err.value)
    assert isinstance(error, InvalidArgument)
    assert field in [v.field for v in error.field_violations]
    assert not any(s.service == "ok" for s in hub.services.circuits.mirror.items.values())
