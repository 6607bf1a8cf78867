"""BaseService against a live hub: start (registered, discoverable, serving its
own gRPC health, probed healthy by the hub, reporting load), a hub restart that
forgot it, a hub that is down at first, configuration pushes, and the SIGTERM
path of the example service run as a user runs it."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hub_client import (
    BaseService,
    HubClient,
    InvalidArgument,
    ServiceConfig,
    ServiceNotFound,
)
from hub_server.app import Hub
from hub_server.embedded_etcd import free_port
from tests.support.hubs import HubFactory
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "quote_service.py"


class Echo(BaseService):
    """A service with a switchable health and a fixed load."""

    service_names = ("test.Echo",)

    def __init__(self, config: ServiceConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.healthy = True
        self.load = 0.25
        self.setup_called = False

    async def setup(self, server: grpc.aio.Server) -> None:
        self.setup_called = True

    async def check_health(self) -> bool:
        return self.healthy

    def current_load(self) -> float:
        return self.load


def fast_config(target: str, name: str = "echo", **changes: Any) -> ServiceConfig:
    """Short intervals so a test sees every step within a second or two."""
    options: dict[str, Any] = dict(
        service_name=name,
        version="1.2.3",
        port=0,
        hub_target=target,
        metadata={"team": "tests"},
        ttl=5,
        probe_interval=0.2,
        health_interval=0.1,
        load_interval=0.1,
        drain_seconds=0.0,
        shutdown_grace=0.5,
        hub_timeout=1.0,
        register_backoff=0.05,
        register_backoff_max=0.3,
    )
    options.update(changes)
    return ServiceConfig(**options)


@pytest.fixture
async def services() -> AsyncIterator[list[BaseService]]:
    """Services a test started; stopped after it."""
    started: list[BaseService] = []
    yield started
    for svc in started:
        await svc.stop()


async def start(svc: BaseService, started: list[BaseService], wait: bool = True) -> BaseService:
    started.append(svc)
    await svc.start()
    if wait:
        await asyncio.wait_for(svc.registered.wait(), 15)
    return svc


async def own_health(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
        return int(resp.status)


async def instance_ports(client: HubClient, service: str) -> list[int]:
    try:
        svc = await client.discover(service)
    except ServiceNotFound:
        return []
    return [i.port for i in svc.instances]


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_start_registers_serves_health_and_reports_load(
    hub: Hub, client: HubClient, services: list[BaseService]
) -> None:
    svc = await start(Echo(fast_config(hub.address)), services)
    assert svc.setup_called and svc.port > 0 and svc.address == f"127.0.0.1:{svc.port}"

    inst = (await client.discover("echo")).instances[0]
    assert (inst.address, inst.version, inst.protocol) == (svc.address, "1.2.3", "grpc")
    assert inst.metadata == {"team": "tests"} and inst.ttl_seconds == 5
    assert inst.raw.health_check.WhichOneof("check") == "grpc"
    assert await own_health(svc.address) == SERVING
    assert await own_health(svc.address, "test.Echo") == SERVING

    # The hub's own probe of the service's gRPC health agrees.
    async def probed(status: str) -> bool:
        [h] = await client.get_health("echo")
        return h.check == "grpc" and h.status == status

    await eventually(lambda: probed("healthy"))

    async def load_is(value: float) -> bool:
        return (await client.pick("echo")).load == value

    await eventually(lambda: load_is(0.25))
    svc.load = 0.75
    await eventually(lambda: load_is(0.75))

    # check_health drives grpc.health.v1, and so the hub's view.
    svc.healthy = False
    await eventually(lambda: _own_health_is(svc.address, NOT_SERVING))
    await eventually(lambda: probed("unhealthy"))
    svc.healthy = True
    await eventually(lambda: _own_health_is(svc.address, SERVING))

    # Neither config_changed nor a callback: configuration is not followed.
    assert not any(t.get_name().endswith("-config") for t in svc._tasks)

    await svc.stop()
    assert await instance_ports(client, "echo") == []
    await svc.stop()  # twice is fine


async def _own_health_is(address: str, status: int) -> bool:
    return await own_health(address) == status


async def test_registers_again_after_the_hub_restarts_and_forgot_it(
    hub_factory: HubFactory, services: list[BaseService]
) -> None:
    address = f"127.0.0.1:{free_port()}"
    hub = await hub_factory(listen=address)
    svc = await start(Echo(fast_config(address, ttl=2)), services)
    reg = svc.registration
    assert reg is not None and reg.reregistrations == 0

    await hub.stop()
    await asyncio.sleep(3)  # the lease (TTL 2 s) lapses while no hub renews it
    assert await own_health(svc.address) == SERVING  # the service itself is fine

    await hub_factory(listen=address)  # a new hub on the same address
    async with HubClient(address) as client:
        await eventually(lambda: _registered(client, svc), timeout=15)
    assert reg.reregistrations >= 1
    assert svc.registration is reg  # the same handle, the same instance id


async def _registered(client: HubClient, svc: BaseService) -> bool:
    return svc.port in await instance_ports(client, svc.config.service_name)


async def test_retries_registration_until_the_hub_comes_up(
    hub_factory: HubFactory, services: list[BaseService]
) -> None:
    address = f"127.0.0.1:{free_port()}"
    svc = await start(Echo(fast_config(address)), services, wait=False)
    await asyncio.sleep(1.0)
    assert not svc.registered.is_set()
    assert await own_health(svc.address) == SERVING  # serves while it waits

    await hub_factory(listen=address)
    await asyncio.wait_for(svc.registered.wait(), 15)
    async with HubClient(address) as client:
        assert await instance_ports(client, "echo") == [svc.port]


async def test_follows_configuration_when_the_client_can_watch_it(
    hub: Hub, services: list[BaseService]
) -> None:
    seen: list[Any] = []
    tenants: list[str] = []

    class ConfigClient(HubClient):
        async def watch_config(self, tenant_id: str = "") -> AsyncIterator[dict[str, int]]:
            tenants.append(tenant_id)
            for version in (1, 2):
                yield {"version": version}
            await asyncio.Event().wait()

    class Configured(Echo):
        def make_client(self) -> HubClient:
            return ConfigClient(self.config.hub_target, timeout=self.config.hub_timeout)

        async def config_changed(self, config: Any) -> None:
            seen.append(("method", config))

    svc = Configured(
        fast_config(hub.address, config_tenant="acme"),
        on_config_change=lambda c: seen.append(("callback", c)),
    )
    await start(svc, services)
    await eventually(lambda: len(seen) == 4)
    assert seen == [
        ("method", {"version": 1}),
        ("callback", {"version": 1}),
        ("method", {"version": 2}),
        ("callback", {"version": 2}),
    ]
    assert tenants == ["acme"]


async def test_follows_the_hubs_configuration_pushes(
    hub: Hub, client: HubClient, services: list[BaseService]
) -> None:
    if not hasattr(HubClient, "watch_config") or not hasattr(HubClient, "set_config_layer"):
        pytest.skip("this HubClient has no configuration API")
    seen: list[Any] = []
    svc = Echo(fast_config(hub.address), on_config_change=seen.append)
    await start(svc, services)
    await eventually(lambda: len(seen) >= 1)  # the current configuration first
    await client.set_config_layer("global", {"settings": {"greeting": "hello"}})
    await eventually(lambda: seen[-1].settings.get("greeting") == "hello")


async def test_a_registration_the_hub_rejects_stops_the_service(hub: Hub) -> None:
    svc = Echo(fast_config(hub.address, name="Not_A_DNS_Label"))
    with pytest.raises(InvalidArgument) as err:
        await asyncio.wait_for(svc.run(handle_signals=False), 15)
    assert any(v.field == "service" for v in err.value.field_violations)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        ServiceConfig("x", health_check="http")
    with pytest.raises(ValueError):
        ServiceConfig("x", port=70000)


async def test_example_service_sigterm_drains_deregisters_and_exits_0(
    hub: Hub, client: HubClient
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), "--hub", hub.address, "--port", "0",
        "--drain", "1.5", "--ttl", "10",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    log: list[str] = []
    try:
        port = 0
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "the example exited early:\n" + "".join(log)
            log.append(line)
            if m := re.search(r"serving on 127\.0\.0\.1:(\d+)", line):
                port = int(m.group(1))
            if "registered with" in line:
                break
        address = f"127.0.0.1:{port}"
        assert await instance_ports(client, "quotes") == [port]
        assert await own_health(address, "examples.quotes.v1.QuoteService") == SERVING
        tick = await _get_quote(address, "eurusd")
        assert tick.symbol == "EURUSD" and Decimal(tick.ask.value) > Decimal(tick.bid.value) > 0

        proc.send_signal(signal.SIGTERM)
        # Deregistered, and NOT_SERVING, while still draining (the process lives on).
        await eventually(lambda: _gone_while_draining(client, address, proc), timeout=5)
        assert proc.returncode is None
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        log.append((await proc.stdout.read()).decode())
        output = "".join(log)
        assert "quotes deregistered" in output and "quotes stopped" in output
        assert "Traceback" not in output
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _gone_while_draining(
    client: HubClient, address: str, proc: asyncio.subprocess.Process
) -> bool:
    return (
        proc.returncode is None
        and await instance_ports(client, "quotes") == []
        and await own_health(address) == NOT_SERVING
    )


async def _get_quote(address: str, symbol: str) -> Any:
    from aitrading.common.v1 import tick_data_pb2
    from google.protobuf import wrappers_pb2

    # GetQuoteRequest has one string field numbered 1, like StringValue.
    async with grpc.aio.insecure_channel(address) as ch:
        call = ch.unary_unary(
            "/examples.quotes.v1.QuoteService/GetQuote",
            request_serializer=wrappers_pb2.StringValue.SerializeToString,
            response_deserializer=tick_data_pb2.TickData.FromString,
        )
        return await call(wrappers_pb2.StringValue(value=symbol), timeout=5)


async def test_stop_does_not_wait_forever_for_a_task_that_ignores_cancellation(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    svc = Echo(fast_config(hub.address, shutdown_grace=0.3))
    await svc.start()
    await asyncio.wait_for(svc.registered.wait(), 15)
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:  # the bug this guards against
            await release.wait()

    svc._spawn(stubborn(), "stubborn")
    await asyncio.sleep(0)  # let it start, so that its cancel lands in the sleep
    await asyncio.wait_for(svc.stop(), 30)
    assert any("echo-stubborn" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    async with HubClient(hub.address) as client:  # it still deregistered
        assert await instance_ports(client, "echo") == []
    release.set()
