"""Fixtures: a real etcd (started once per session), hubs on free loopback ports,
and clients. Nothing here imitates etcd."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub_client import HubClient
from hub_server.app import Hub, HubConfig
from hub_server.embedded_etcd import EtcdProcess
from hub_server.store.etcd import EtcdStore
from tests.support.hubs import HubFactory


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> EtcdProcess:
    """One etcd for the session; each test starts from an empty hub keyspace."""
    proc = EtcdProcess(tmp_path_factory.mktemp("etcd-session"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
async def etcd_store(etcd: EtcdProcess) -> AsyncIterator[EtcdStore]:
    """A direct etcd connection, for checking what the hub stored."""
    store = EtcdStore([etcd.endpoint])
    await store.delete(b"/hub/", prefix=True)
    yield store
    await store.close()


@pytest.fixture
async def hub_factory(
    etcd: EtcdProcess, etcd_store: EtcdStore, tmp_path: Path
) -> AsyncIterator[HubFactory]:
    """Starts hubs on the session etcd (or on given endpoints); stops them all after."""
    hubs: list[Hub] = []

    async def start(
        *, endpoints: list[str] | None = None, listen: str = "127.0.0.1:0", **options: object
    ) -> Hub:
        config = HubConfig(
            listen=listen,
            data_dir=tmp_path / "hub-data",
            etcd_endpoints=endpoints or [etcd.endpoint],
            watch_progress_interval=0.5,
            store_check_interval=0.2,
            shutdown_grace=0.5,
        )
        for key, value in options.items():
            setattr(config, key, value)
        hub = Hub(config)
        await hub.start()
        hubs.append(hub)
        return hub

    yield start
    for hub in hubs:
        with contextlib.suppress(Exception):
            await hub.stop()


@pytest.fixture
async def hub(hub_factory: HubFactory) -> Hub:
    return await hub_factory()


@pytest.fixture
async def client(hub: Hub) -> AsyncIterator[HubClient]:
    async with HubClient(hub.address) as c:
        yield c
