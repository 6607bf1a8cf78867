"""hub_client's runtime helpers: pick, health, the circuit-aware call guard; and
the completeness of its public surface."""

from __future__ import annotations

import inspect

import pytest
from aitrading.hub.v1 import circuit_pb2 as cb
from google.protobuf import duration_pb2

import hub_client
from hub_client import CircuitOpen, HubClient, NoEligibleInstance
from hub_server.app import Hub
from tests.conftest import eventually


async def test_pick_and_health(client: HubClient) -> None:
    await client.register("prices", instance_id="a", host="10.0.0.1", port=81)
    await client.register("prices", instance_id="b", host="10.0.0.2", port=82)
    await client.report_load("prices", "a", 0.9)
    await eventually(lambda: _picks(client, "prices", "b"))
    ep = await client.pick("prices")
    assert (ep.instance_id, ep.address, ep.instance.service) == ("b", "10.0.0.2:82", "prices")
    sticky = set()
    for _ in range(5):
        ep = await client.pick("prices", strategy="consistent_hash", affinity_key="u7")
        sticky.add(ep.instance_id)
    assert len(sticky) == 1
    health = {h.instance_id: h for h in await client.get_health("prices")}
    assert health["a"].status == "healthy" and health["a"].check == "lease"
    with pytest.raises(ValueError):
        await client.pick("prices", strategy="fastest")


async def _picks(client: HubClient, service: str, instance_id: str) -> bool:
    return (await client.pick(service)).instance_id == instance_id


async def test_circuit_guard_trips_and_fails_fast(hub: Hub, client: HubClient) -> None:
    await client._unary(
        client.circuit_stub.SetCircuitSettings,
        cb.SetCircuitSettingsRequest(
            service="flaky",
            settings=cb.CircuitSettings(
                window_size=4, minimum_calls=4, wait_in_open=duration_pb2.Duration(seconds=60)
            ),
        ),
    )

    @client.circuit("flaky")
    async def call(fail: bool) -> str:
        if fail:
            raise ConnectionError("refused")
        return "ok"

    assert await call(False) == "ok"
    for _ in range(3):
        with pytest.raises(ConnectionError):
            await call(True)
    await client.flush_outcomes()
    assert (await client.circuit_state("flaky")).state == "open"
    # The guard learns it from its own watch and refuses without calling.
    await eventually(lambda: client._circuit_cache().refuses("flaky") is not None)
    with pytest.raises(CircuitOpen) as err:
        async with client.circuit("flaky"):
            pytest.fail("a refused call must not run")
    assert isinstance(err.value, hub_client.Unavailable)
    with pytest.raises(NoEligibleInstance):  # the balancer agrees
        await client.register("flaky", host="h", port=1)
        await client.pick("flaky")


def test_public_surface_is_complete() -> None:
    exported = set(hub_client.__all__)
    public = {
        name
        for name, obj in vars(hub_client).items()
        if not name.startswith("_") and not inspect.ismodule(obj) and callable(obj)
    }
    assert public == exported
    for name in exported:
        assert getattr(hub_client, name).__doc__, name
