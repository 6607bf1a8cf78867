"""Who sees which instances: a tier-filtered Watch always equals GetService for
the same caller (entering the view is ADDED, leaving it is REMOVED), legacy_mode
is never honoured for a tenant-bound credential, and the tier a caller's reads
are filtered by is the tier GetTenantConfig reports for it."""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest
from aitrading.hub.v1 import (
    balancer_pb2,
    balancer_pb2_grpc,
    config_pb2,
    config_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    tenant_pb2,
    tenant_pb2_grpc,
    types_pb2,
)

from hub_client import EventType, HubClient
from hub_server.app import Hub
from hub_server.auth.roles import Role
from tests.support.auth import credentials_text, md
from tests.support.hubs import HubFactory

ADDED = registry_pb2.WATCH_EVENT_TYPE_ADDED
UPDATED = registry_pb2.WATCH_EVENT_TYPE_UPDATED
REMOVED = registry_pb2.WATCH_EVENT_TYPE_REMOVED
SNAPSHOT = registry_pb2.WATCH_RESPONSE_KIND_SNAPSHOT
EVENTS = registry_pb2.WATCH_RESPONSE_KIND_EVENTS
FREE = types_pb2.SUBSCRIPTION_TIER_FREE
PRO = types_pb2.SUBSCRIPTION_TIER_PRO
ENTERPRISE = types_pb2.SUBSCRIPTION_TIER_ENTERPRISE

Headers = list[tuple[str, str]]


def tenant(tier: str) -> Headers:
    return [("x-tenant-id", f"t-{tier}"), ("x-subscription-tier", tier)]


async def register(
    stub: registry_pb2_grpc.RegistryServiceStub,
    service: str,
    n: int,
    requirements: list[int],
    metadata: Headers | None = None,
) -> int:
    resp = await stub.Register(
        registry_pb2.RegisterRequest(
            service=service,
            instance_id=f"i{n}",
            host="h",
            port=1000 + n,
            subscription_requirements=requirements,
        ),
        metadata=metadata,
    )
    return int(resp.header.revision)


async def next_events(call, until: int = 0) -> list[registry_pb2.WatchEvent]:  # type: ignore[no-untyped-def]
    """The next EVENTS message's events; with ``until``, every event up to that
    revision (changes may arrive in several messages)."""
    got: list[registry_pb2.WatchEvent] = []
    while True:
        msg = await call.read()
        if msg.kind == EVENTS:
            got.extend(msg.events)
            if msg.header.revision >= until:
                return got


async def test_watch_sends_added_and_removed_when_an_instance_enters_or_leaves_the_view(
    hub: Hub,
) -> None:
    async with grpc.aio.insecure_channel(hub.address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        await register(stub, "svc", 1, [])
        free = stub.Watch(registry_pb2.WatchRequest(service="svc"), metadata=tenant("free"))
        ent = stub.Watch(registry_pb2.WatchRequest(service="svc"), metadata=tenant("enterprise"))
        for call in (free, ent):
            snap = await call.read()
            assert snap.kind == SNAPSHOT and [i.instance_id for i in snap.instances] == ["i1"]

        up = await register(stub, "svc", 1, [ENTERPRISE])
        [left] = await next_events(free)
        assert (left.type, left.instance.instance_id, left.revision) == (REMOVED, "i1", up)
        # As the free caller last saw it, not the enterprise-only version.
        assert list(left.instance.subscription_requirements) == []
        assert [e.type for e in await next_events(ent)] == [UPDATED]

        down = await register(stub, "svc", 1, [FREE])
        [entered] = await next_events(free)
        assert (entered.type, entered.instance.instance_id, entered.revision) == (ADDED, "i1", down)
        assert [e.type for e in await next_events(ent)] == [UPDATED]

        # Hidden from free throughout: nothing at all for it.
        await register(stub, "svc", 2, [PRO])
        await register(stub, "svc", 2, [ENTERPRISE])
        await stub.Deregister(registry_pb2.DeregisterRequest(service="svc", instance_id="i2"))
        gone = await register(stub, "svc", 1, [PRO])
        assert [(e.type, e.revision) for e in await next_events(free)] == [(REMOVED, gone)]
        got = [e.type for e in await next_events(ent, gone)]
        assert got == [ADDED, UPDATED, REMOVED, UPDATED]

        # A watch resumed from before the change (no snapshot: from the log) agrees.
        resumed = stub.Watch(
            registry_pb2.WatchRequest(service="svc", start_revision=up), metadata=tenant("free")
        )
        got = [(e.type, e.revision) for e in await next_events(resumed, gone)]
        assert got == [(REMOVED, up), (ADDED, down), (REMOVED, gone)]
        for call in (free, ent, resumed):
            call.cancel()


async def test_hub_client_watch_passes_entering_and_leaving_through(hub: Hub) -> None:
    async with (
        grpc.aio.insecure_channel(hub.address) as channel,
        HubClient(hub.address, tenant_id="t-free", subscription_tier="free") as client,
    ):
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        await register(stub, "svc", 1, [])
        events = client.watch("svc")
        first = await anext(events)
        assert (first.type, first.instance.instance_id) == (EventType.ADDED, "i1")
        await register(stub, "svc", 1, [ENTERPRISE])
        assert (await anext(events)).type == EventType.REMOVED
        await register(stub, "svc", 1, [])
        assert (await anext(events)).type == EventType.ADDED
        await events.aclose()


# -- the watch equals GetService, for random sequences of changes ---------------

TIERS = ["free", "pro", "enterprise", ""]  # "": no tenant context, sees everything
REQUIREMENTS = [[], [FREE], [PRO], [ENTERPRISE], [PRO, ENTERPRISE], [FREE, ENTERPRISE]]


async def get_service(
    stub: registry_pb2_grpc.RegistryServiceStub, metadata: Headers
) -> tuple[dict[str, int], int]:
    """The instances (id -> mod_revision) GetService answers, and its revision."""
    try:
        resp = await stub.GetService(
            registry_pb2.GetServiceRequest(service="svc", include_unhealthy=True),
            metadata=metadata,
        )
    except grpc.aio.AioRpcError as e:
        assert e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)
        return {}, 0
    return {i.instance_id: i.mod_revision for i in resp.service.instances}, resp.header.revision


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_filtered_watch_always_equals_get_service(hub: Hub, seed: int) -> None:
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(hub.address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        # A public instance of another service, bumped after every step: each
        # watch then has an event at a known revision to catch up to.
        await register(stub, "sentinel", 0, [])
        headers = {t: tenant(t) if t else [] for t in TIERS}
        calls = {t: stub.Watch(registry_pb2.WatchRequest(), metadata=headers[t]) for t in TIERS}
        views: dict[str, dict[str, int]] = {}
        for t, call in calls.items():
            snap = await call.read()
            assert snap.kind == SNAPSHOT and not snap.more
            views[t] = {i.instance_id: i.mod_revision for i in snap.instances if i.service == "svc"}
        present: set[int] = set()
        for step in range(30):
            n = rng.randrange(4)
            if n in present and rng.random() < 0.3:
                await stub.Deregister(
                    registry_pb2.DeregisterRequest(service="svc", instance_id=f"i{n}")
                )
                present.discard(n)
            else:
                await register(stub, "svc", n, rng.choice(REQUIREMENTS))
                present.add(n)
            mark = await register(stub, "sentinel", 0, [])
            for t, call in calls.items():
                view = views[t]
                for e in await next_events(call, mark):
                    if e.instance.service != "svc":
                        continue
                    if e.type == REMOVED:
                        assert e.instance.instance_id in view, (t, step, e)
                        del view[e.instance.instance_id]
                    else:
                        assert (e.type == ADDED) == (e.instance.instance_id not in view)
                        view[e.instance.instance_id] = e.instance.mod_revision
                expected, revision = await get_service(stub, headers[t])
                assert revision in (0, mark)  # nothing changed since
                assert view == expected, (seed, step, t)
        for call in calls.values():
            call.cancel()


# -- legacy_mode and the caller's tier ------------------------------------------

TOKENS = {
    "admin": ("ops", Role.ADMIN, "", ""),
    "gateway": ("edge", Role.GATEWAY, "", ""),
    "service": ("orders@acme", Role.SERVICE, "acme", "orders"),
    "acme-reader": ("acme-dash", Role.READER, "acme", ""),
}


@pytest.fixture
async def secured(hub_factory: HubFactory, tmp_path: Path) -> Hub:
    return await start_secured(hub_factory, tmp_path)


async def start_secured(hub_factory: HubFactory, tmp_path: Path) -> Hub:
    """A hub with credentials, tenant acme (free) and premium-ai (enterprise only)."""
    path = tmp_path / "credentials.toml"
    path.write_text(credentials_text(TOKENS))
    hub = await hub_factory(credentials_file=path)
    async with grpc.aio.insecure_channel(hub.address) as channel:
        admin = md("admin")
        await tenant_pb2_grpc.TenantServiceStub(channel).CreateTenant(
            tenant_pb2.CreateTenantRequest(tenant_id="acme", tier=FREE), metadata=admin
        )
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        await register(stub, "premium-ai", 1, [ENTERPRISE], admin)
    return hub


async def sees_premium(channel: grpc.aio.Channel, metadata: Headers) -> dict[str, bool]:
    """Whether each RPC that takes legacy_mode shows the caller the
    enterprise-only instance when it asks for legacy mode."""
    registry = registry_pb2_grpc.RegistryServiceStub(channel)
    out: dict[str, bool] = {}
    try:
        resp = await registry.GetService(
            registry_pb2.GetServiceRequest(service="premium-ai", legacy_mode=True),
            metadata=metadata,
        )
        out["GetService"] = bool(resp.service.instances)
    except grpc.aio.AioRpcError as e:
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e
        out["GetService"] = False
    listed = await registry.ListServices(
        registry_pb2.ListServicesRequest(legacy_mode=True), metadata=metadata
    )
    out["ListServices"] = "premium-ai" in [s.name for s in listed.services]
    call = registry.Watch(
        registry_pb2.WatchRequest(service="premium-ai", legacy_mode=True), metadata=metadata
    )
    snap = await call.read()
    call.cancel()
    out["Watch"] = bool(snap.instances)
    try:
        await balancer_pb2_grpc.LoadBalancerServiceStub(channel).PickEndpoint(
            balancer_pb2.PickEndpointRequest(service="premium-ai", legacy_mode=True),
            metadata=metadata,
        )
        out["PickEndpoint"] = True
    except grpc.aio.AioRpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE, e  # no eligible instance: tier
        out["PickEndpoint"] = False
    return out


EVERYWHERE = {"GetService": True, "ListServices": True, "Watch": True, "PickEndpoint": True}
NOWHERE = dict.fromkeys(EVERYWHERE, False)


@pytest.mark.parametrize("who", ["service", "acme-reader"])
async def test_legacy_mode_is_not_honoured_for_a_tenant_bound_credential(
    secured: Hub, who: str
) -> None:
    async with grpc.aio.insecure_channel(secured.address) as channel:
        # Its headers cannot claim a tier either: a bound caller's tier is its record's.
        assert await sees_premium(channel, md(who, x_subscription_tier="enterprise")) == NOWHERE


async def test_legacy_mode_is_honoured_for_callers_not_bound_to_a_tenant(secured: Hub) -> None:
    async with grpc.aio.insecure_channel(secured.address) as channel:
        assert await sees_premium(channel, md("gateway", x_tenant_id="acme")) == EVERYWHERE


async def test_legacy_mode_is_honoured_on_a_hub_without_credentials(hub: Hub) -> None:
    async with grpc.aio.insecure_channel(hub.address) as channel:
        await register(
            registry_pb2_grpc.RegistryServiceStub(channel), "premium-ai", 1, [ENTERPRISE]
        )
        assert await sees_premium(channel, tenant("free")) == EVERYWHERE


@pytest.mark.parametrize("secure", [True, False])
async def test_the_visibility_tier_is_the_tier_get_tenant_config_reports(
    hub_factory: HubFactory, tmp_path: Path, secure: bool
) -> None:
    """A stored record (free) wins over a trusted x-subscription-tier header
    (enterprise), for GetTenantConfig and for discovery alike."""
    target = await (start_secured(hub_factory, tmp_path) if secure else hub_factory())
    caller = md("gateway" if secure else None)
    async with grpc.aio.insecure_channel(target.address) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        configs = config_pb2_grpc.ConfigServiceStub(channel)
        if not secure:
            await tenant_pb2_grpc.TenantServiceStub(channel).CreateTenant(
                tenant_pb2.CreateTenantRequest(tenant_id="acme", tier=FREE)
            )
            await register(registry, "premium-ai", 1, [ENTERPRISE])
        for tenant_id, tier in (("acme", FREE), ("newco", ENTERPRISE)):
            # newco has no record: the trusted header's tier applies.
            headers = [*caller, ("x-tenant-id", tenant_id), ("x-subscription-tier", "enterprise")]
            config = await configs.GetTenantConfig(
                config_pb2.GetTenantConfigRequest(tenant_id=tenant_id), metadata=headers
            )
            assert config.config.tier == tier
            try:
                resp = await registry.GetService(
                    registry_pb2.GetServiceRequest(service="premium-ai"), metadata=headers
                )
                seen = [i.instance_id for i in resp.service.instances]
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.PERMISSION_DENIED
                seen = []
            assert seen == ([] if tier == FREE else ["i1"]), tenant_id
