"""hub_client's runtime helpers: pick, health, the circuit-aware call guard; and
the completeness of its public surface."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator

import grpc
import pytest
from aitrading.hub.v1 import circuit_pb2 as cb
from aitrading.hub.v1 import deployment_pb2, deployment_pb2_grpc, registry_pb2
from google.protobuf import duration_pb2

import hub_client
from hub_client import CircuitOpen, HubClient, NoEligibleInstance
from hub_server.app import Hub
from tests.support.waiting import eventually


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
    with pytest.raises(hub_client.InvalidArgument) as err:
        await client.pick("prices", strategy="fastest")
    assert [v.field for v in err.value.field_violations] == ["strategy"]


async def _picks(client: HubClient, service: str, instance_id: str) -> bool:
    return (await client.pick(service)).instance_id == instance_id


async def test_circuit_guard_trips_and_fails_fast(hub: Hub, client: HubClient) -> None:
    await client.call(
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
    await eventually(lambda: client._circuits.cache().refuses("flaky") is not None)
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


def test_escape_hatches_are_public() -> None:
    # What the wrapper does not cover (hubctl uses these) goes through documented names.
    for name in ("call", "export_backup"):
        assert getattr(HubClient, name).__doc__, name


# -- resuming watch streams (one loop for all of them) --------------------------------


class _EndingDeployments(deployment_pb2_grpc.DeploymentServiceServicer):
    """A hub stand-in whose WatchDeployment sends the same state and ends the
    stream normally every time, or fails with ``status``."""

    def __init__(self, status: grpc.StatusCode | None = None) -> None:
        self.status = status
        self.opens = 0

    async def WatchDeployment(
        self, request: deployment_pb2.WatchDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[deployment_pb2.WatchDeploymentResponse]:
        self.opens += 1
        if self.status is not None:
            await context.abort(self.status, "no")
        resp = deployment_pb2.WatchDeploymentResponse(
            kind=registry_pb2.WATCH_RESPONSE_KIND_SNAPSHOT,
            deployment=deployment_pb2.Deployment(
                id="d1", state=deployment_pb2.DEPLOYMENT_STATE_RUNNING, revision=5
            ),
        )
        resp.header.revision = 5
        yield resp


@contextlib.asynccontextmanager
async def _stand_in(servicer: _EndingDeployments) -> AsyncIterator[HubClient]:
    server = grpc.aio.server()
    deployment_pb2_grpc.add_DeploymentServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with HubClient(f"127.0.0.1:{port}") as hub:
            yield hub
    finally:
        await server.stop(None)


async def test_stream_the_hub_ends_is_reopened_with_backoff() -> None:
    servicer = _EndingDeployments()
    async with _stand_in(servicer) as hub:
        seen = 0

        async def follow() -> None:
            nonlocal seen
            async for _ in hub.watch_deployment("d1"):
                seen += 1

        task = asyncio.create_task(follow())
        await asyncio.sleep(1.5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # Delays 0.1, 0.2, 0.4, 0.8 s (each jittered down to half at most) fit at most
    # 6 opens in 1.5 s; without a wait it was thousands. No progress (the same
    # revision each time) keeps the delay growing.
    assert 2 <= servicer.opens <= 6, servicer.opens
    assert seen == servicer.opens


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, hub_client.PermissionDenied),
        (grpc.StatusCode.INVALID_ARGUMENT, hub_client.InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, hub_client.NotFound),
    ],
)
async def test_stream_ends_with_typed_error_when_not_retryable(
    status: grpc.StatusCode, error: type[Exception]
) -> None:
    servicer = _EndingDeployments(status)
    async with _stand_in(servicer) as hub:
        with pytest.raises(error):
            async for _ in hub.watch_deployment("d1"):
                pass
    assert servicer.opens == 1


def test_backoff_grows_to_its_cap_with_jitter_and_resets() -> None:
    b = hub_client.Backoff(first=0.1, cap=0.8)
    delays = [b.next_delay() for _ in range(6)]
    for delay, step in zip(delays, [0.1, 0.2, 0.4, 0.8, 0.8, 0.8], strict=True):
        assert step / 2 <= delay <= step
    b.reset()
    assert b.next_delay() <= 0.1
