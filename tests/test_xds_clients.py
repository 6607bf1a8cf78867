"""Real proxyless gRPC clients balanced by the hub over xDS: grpcio (each scenario
in its own process, with a bootstrap from ``central-hub xds-bootstrap``) and
Node's @grpc/grpc-js with @grpc/grpc-js-xds (tests/xds/node, under node's test
runner), against real backend gRPC servers the hub probes.

"The hub marks it" is read from the hub's own projection (what PickEndpoint and
EDS serve); the clients then converge within a few batches of calls, after which
every further call must agree with the hub.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hub_client import TLS, HubClient, RoutingPolicy, Strategy, health_check
from hub_server.app import Hub
from hub_server.auth.credentials import token_entry
from hub_server.auth.roles import Role
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore
from tests.support.certs import CertificateAuthority
from tests.support.hubs import HubFactory
from tests.support.waiting import eventually
from tests.support.xds import ROOT, Backend, GrpcioClient, write_bootstrap

CONVERGE = 20.0  # seconds a client may take to follow the hub (generous: a loaded CI box)


@pytest.fixture
async def backends() -> AsyncIterator[list[Backend]]:
    started = [Backend(f"b{i}") for i in range(3)]
    for b in started:
        await b.start()
    yield started
    for b in started:
        await b.stop()


async def _register(
    client: HubClient, service: str, backend: Backend, *, weight: int = 100,
    requirements: tuple[str, ...] = (),
) -> None:  # fmt: skip
    await client.register(
        service, instance_id=backend.name, host="127.0.0.1", port=backend.port,
        protocol="grpc", weight=weight, subscription_requirements=list(requirements),
        health=health_check(grpc_service="", interval=0.2, timeout=0.5),
    )  # fmt: skip


def _usable(hub: Hub, service: str, tier: str | None = None) -> set[str]:
    return {e.instance_id for e in hub.services.projection.project(service, tier).endpoints}


async def _until(
    client: GrpcioClient, ok: Callable[[Counter[str], Counter[str]], bool], n: int = 30,
    *, user: str | None = None, timeout: float = 5.0,
) -> None:  # fmt: skip
    """Calls in batches until one batch satisfies ``ok`` (the client followed the hub)."""

    async def batch() -> bool:
        return ok(*await client.calls(n, user=user, timeout=timeout))

    await eventually(batch, timeout=CONVERGE)


async def test_grpcio_spreads_and_follows_health_and_drains(
    hub: Hub, client: HubClient, backends: list[Backend], etcd_store: EtcdStore, tmp_path: Path
) -> None:
    for b in backends:
        await _register(client, "quotes", b)
    await eventually(lambda: _usable(hub, "quotes") == {"b0", "b1", "b2"})
    bootstrap = await write_bootstrap(tmp_path / "bootstrap.json", "--server-uri", hub.address)

    async with GrpcioClient(bootstrap, "quotes") as c:
        # Spread over the three.
        await _until(c, lambda got, err: set(got) == {"b0", "b1", "b2"}, n=60)
        got, err = await c.calls(90)
        assert set(got) == {"b0", "b1", "b2"} and not err, (got, err)
        assert min(got.values()) >= 10, got  # about 30 each (localities picked at random)

        # b1's health endpoint stops: once the hub marks it, it gets nothing.
        await backends[1].set_serving(False)
        await eventually(lambda: "b1" not in _usable(hub, "quotes"))
        await _until(c, lambda got, err: "b1" not in got)
        got, err = await c.calls(90)
        assert set(got) == {"b0", "b2"} and not err, (got, err)

        # It recovers: calls again.
        await backends[1].set_serving(True)
        await eventually(lambda: "b1" in _usable(hub, "quotes"))
        await _until(c, lambda got, err: "b1" in got)

        # A roll-out drains b2 (its drain mark): it receives none.
        await etcd_store.put(keys.drain_key("quotes", "b2"), b"test-rollout")
        await eventually(lambda: _usable(hub, "quotes") == {"b0", "b1"})
        await _until(c, lambda got, err: "b2" not in got)
        got, err = await c.calls(90)
        assert set(got) == {"b0", "b1"} and not err, (got, err)


async def test_grpcio_weights_split_calls(
    hub: Hub, client: HubClient, backends: list[Backend], tmp_path: Path
) -> None:
    await _register(client, "ticks", backends[0], weight=100)
    await _register(client, "ticks", backends[1], weight=300)
    await eventually(lambda: _usable(hub, "ticks") == {"b0", "b1"})
    bootstrap = await write_bootstrap(tmp_path / "bootstrap.json", "--server-uri", hub.address)
    async with GrpcioClient(bootstrap, "ticks") as c:
        await _until(c, lambda got, err: set(got) == {"b0", "b1"})
        got, err = await c.calls(800)
        assert not err, err
        # Weights 1:3: grpcio picks a locality at random in proportion to its
        # weight, so b1's share is 0.75 give or take 0.015 (one standard
        # deviation at 800 calls); equal weights would give 0.5, squared ones 0.9.
        share = got["b1"] / (got["b0"] + got["b1"])
        assert abs(share - 0.75) < 0.06, got


async def test_grpcio_ring_hash_keeps_each_user_on_one_backend(
    hub: Hub, client: HubClient, backends: list[Backend], tmp_path: Path
) -> None:
    await client.set_routing_policy("books", RoutingPolicy(strategy=Strategy.CONSISTENT_HASH))
    for b in backends:
        await _register(client, "books", b)
    await eventually(lambda: _usable(hub, "books") == {"b0", "b1", "b2"})
    bootstrap = await write_bootstrap(tmp_path / "bootstrap.json", "--server-uri", hub.address)
    async with GrpcioClient(bootstrap, "books") as c:
        await _until(c, lambda got, err: not err and len(got) == 1, n=5, user="u0")
        owners: dict[str, str] = {}
        for n in range(24):
            got, err = await c.calls(12, user=f"user-{n}")
            assert not err and len(got) == 1, (n, got, err)  # one backend per user
            owners[f"user-{n}"] = next(iter(got))
        assert len(set(owners.values())) >= 2, owners  # and users spread over backends
        for user, owner in list(owners.items())[:6]:  # still the same later
            got, _ = await c.calls(6, user=user)
            assert set(got) == {owner}, (user, got)


async def test_grpcio_tiers_free_client_and_a_tier_that_drops(
    hub: Hub, client: HubClient, backends: list[Backend], tmp_path: Path
) -> None:
    # alpha: a public instance and an enterprise-only one; vault: enterprise-only.
    await _register(client, "alpha", backends[0])
    await _register(client, "alpha", backends[1], requirements=("enterprise",))
    await _register(client, "vault", backends[2], requirements=("enterprise",))
    await eventually(
        lambda: _usable(hub, "alpha") == {"b0", "b1"} and _usable(hub, "vault") == {"b2"}
    )

    free = await write_bootstrap(
        tmp_path / "free.json", "--server-uri", hub.address, "--tenant", "t-free", "--tier", "free"
    )
    async with GrpcioClient(free, "alpha") as c:
        await _until(c, lambda got, err: "b0" in got and not err)
        got, err = await c.calls(60)
        assert set(got) == {"b0"} and not err, (got, err)  # never the enterprise instance

    # A tenant on enterprise reaches vault until its tier drops to free: its
    # connected client then gets an empty assignment.
    await client.create_tenant("acme", tier="enterprise")
    acme = await write_bootstrap(tmp_path / "acme.json", "--server-uri", hub.address,
                                 "--tenant", "acme")  # fmt: skip
    async with GrpcioClient(acme, "vault") as c:
        await _until(c, lambda got, err: "b2" in got)
        await client.set_tier("acme", "free")
        await _until(c, lambda got, err: not got and bool(err), n=5, timeout=1.0)
        got, err = await c.calls(10, timeout=1.0)
        assert not got and set(err) == {"UNAVAILABLE"}, (got, err)
        assert backends[2].calls > 0


async def test_grpcio_over_mtls_takes_its_tier_from_the_certificate(
    hub_factory: HubFactory, backends: list[Backend], tmp_path: Path
) -> None:
    # A hub with credentials: the client authenticates with the certificate its
    # bootstrap names (``tls`` channel credentials); its tenant's tier is free, so
    # the enterprise-only instance is never offered, whatever the node claims.
    ca = CertificateAuthority(tmp_path)
    server, acme = ca.issue("hub.internal", server=True), ca.issue("xds.acme")
    credentials = tmp_path / "credentials.toml"
    credentials.write_text(
        '[[certificates]]\nsubject = "xds.acme"\nrole = "reader"\ntenant = "acme"\n'
        + token_entry("ops", Role.ADMIN, "admin-secret")
    )
    hub = await hub_factory(
        credentials_file=credentials, tls_cert=server.cert, tls_key=server.key,
        tls_client_ca=ca.cert,
    )  # fmt: skip
    tls = TLS(ca=ca.cert, cert=acme.cert, key=acme.key)
    async with HubClient(hub.address, token="admin-secret", tls=tls) as admin:
        await admin.create_tenant("acme", tier="free")
        await _register(admin, "alpha", backends[0])
        await _register(admin, "alpha", backends[1], requirements=("enterprise",))
        await eventually(lambda: _usable(hub, "alpha") == {"b0", "b1"})
        bootstrap = await write_bootstrap(
            tmp_path / "mtls.json", "--server-uri", hub.address, "--tier", "enterprise",
            "--ca", str(ca.cert), "--cert", str(acme.cert), "--key", str(acme.key),
        )  # fmt: skip
        async with GrpcioClient(bootstrap, "alpha") as c:
            await _until(c, lambda got, err: "b0" in got and not err)
            got, err = await c.calls(60)
            assert set(got) == {"b0"} and not err, (got, err)
            [status] = hub.services.xds_clients.snapshot()
            assert (status.tenant_id, status.tier) == ("acme", "free")
            # The tenant is upgraded: the same connected client reaches b1 too.
            await admin.set_tier("acme", "enterprise")
            await _until(c, lambda got, err: "b1" in got)


async def test_grpcio_calls_on_through_a_replica_failover_and_a_hub_restart(
    hub_factory: HubFactory, backends: list[Backend], etcd_store: EtcdStore, tmp_path: Path
) -> None:
    # Two replicas; the bootstrap names both (tried in order), and so does the
    # client that registers the instances and keeps their leases alive.
    a, b = await hub_factory(), await hub_factory()
    target = f"ipv4:{a.address},{b.address}"
    async with HubClient(target) as keeper:
        for backend in backends:
            await _register(keeper, "orders", backend)
        await eventually(lambda: _usable(a, "orders") == {"b0", "b1", "b2"})
        bootstrap = await write_bootstrap(tmp_path / "bootstrap.json", "--server-uri", target)
        async with GrpcioClient(bootstrap, "orders") as c:
            await _until(c, lambda got, err: set(got) == {"b0", "b1", "b2"}, n=60)
            assert len(a.services.xds_clients.snapshot()) == 1  # on replica a

            # Replica a goes away: calls go on from what the client knows...
            await a.stop()
            got, err = await c.calls(60)
            assert set(got) == {"b0", "b1", "b2"} and not err, (got, err)
            # ...and it reconnects to b by itself: a drain is followed.
            await eventually(lambda: len(b.services.xds_clients.snapshot()) == 1, CONVERGE)
            await etcd_store.put(keys.drain_key("orders", "b0"), b"test-rollout")
            await _until(c, lambda got, err: set(got) == {"b1", "b2"})

            # Replica a restarts on its address and b goes: calls go on, the client
            # is back on the restarted a, and follows it.
            restarted = await hub_factory(listen=a.address)
            await b.stop()
            got, err = await c.calls(60)
            assert set(got) == {"b1", "b2"} and not err, (got, err)
            await eventually(lambda: len(restarted.services.xds_clients.snapshot()) == 1, CONVERGE)
            await etcd_store.delete(keys.drain_key("orders", "b0"))
            await _until(c, lambda got, err: set(got) == {"b0", "b1", "b2"})


# -- Node: @grpc/grpc-js + @grpc/grpc-js-xds ---------------------------------------


async def test_node_grpc_js_xds_client(
    hub_factory: HubFactory, hub: Hub, client: HubClient, backends: list[Backend], tmp_path: Path
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH (the Node xDS test needs it)")
    assert (ROOT / "node_modules/@grpc/grpc-js-xds").is_dir(), "run `make install` (npm ci)"

    async def restart_hub() -> None:  # asked for by the Node test, through b0
        await hub.stop()
        await hub_factory(listen=hub.address)

    backends[0].actions["restart-hub"] = restart_hub
    for b in backends:
        await _register(client, "nodesvc", b)
    await eventually(lambda: _usable(hub, "nodesvc") == {"b0", "b1", "b2"})
    bootstrap = await write_bootstrap(tmp_path / "bootstrap.json", "--server-uri", hub.address)
    proc = await asyncio.create_subprocess_exec(
        node, "--test", "--test-reporter=tap", "tests/xds/node/",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "GRPC_XDS_BOOTSTRAP": str(bootstrap), "XDS_SERVICE": "nodesvc",
             "XDS_BACKENDS": ",".join(f"{b.name}={b.address}" for b in backends)},
    )  # fmt: skip
    try:
        out_bytes, _ = await asyncio.wait_for(proc.communicate(), 180)
    except TimeoutError:
        proc.kill()
        out_bytes, _ = await proc.communicate()
    out = out_bytes.decode(errors="replace")
    assert proc.returncode == 0, f"node --test failed ({proc.returncode}):\n{out}"
    counts = dict(re.findall(r"^# (pass|fail|skipped|todo|cancelled) (\d+)$", out, re.M))
    assert int(counts.get("pass", 0)) >= 1, out
    assert counts.get("skipped") == counts.get("fail") == counts.get("cancelled") == "0", out
