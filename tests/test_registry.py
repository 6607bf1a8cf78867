"""RegistryService through hub_client and the raw stubs, against a real etcd."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aitrading.hub.v1 import registry_pb2, registry_pb2_grpc, types_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from hub_client import (
    EventType,
    HubClient,
    InstanceNotFound,
    InvalidArgument,
    ServiceNotFound,
    TierTooLow,
    health_check,
)
from hub_server.kernel import validation
from hub_server.kernel.errors import Violations
from hub_server.registry.service import default_instance_id
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore
from tests.support.hubs import HubFactory
from tests.support.waiting import eventually


async def test_register_discover_and_fields(client: HubClient) -> None:
    reg = await client.register(
        "data-bridge",
        host="10.0.0.5",
        port=8001,
        version="2.5.0",
        metadata={"zone": "a"},
        health=health_check(http="/health", interval=5, timeout=1),
        subscription_requirements=["pro"],
        resource_tier="premium",
        ttl=30,
        weight=50,
    )
    assert reg.instance_id == "10.0.0.5-8001"
    # Nothing listens at 10.0.0.5: once probed it is unhealthy, so ask for everything.
    svc = await client.discover("data-bridge", include_unhealthy=True)
    assert [i.instance_id for i in svc.instances] == ["10.0.0.5-8001"]
    inst = svc.instances[0]
    assert (inst.host, inst.port, inst.version, inst.weight) == ("10.0.0.5", 8001, "2.5.0", 50)
    assert inst.metadata == {"zone": "a"}
    assert inst.subscription_requirements == ("pro",)
    assert inst.resource_tier == "premium"
    assert inst.tenant_capable is True
    assert inst.raw.health_check.http.path == "/health"
    assert inst.lease_id == reg.instance.lease_id > 0
    assert svc.revision >= inst.revision > 0


async def test_reregistering_updates_in_place(client: HubClient) -> None:
    first = await client.register("api-gateway", host="gw", port=8000, version="1.0.0")
    second = await client.register(
        "api-gateway", host="gw", port=8000, version="1.1.0", keep_alive=False
    )
    assert second.instance_id == first.instance_id
    svc = await client.discover("api-gateway")
    assert len(svc.instances) == 1
    assert svc.instances[0].version == "1.1.0"
    assert svc.instances[0].raw.registered_at == first.instance.raw.registered_at
    assert svc.instances[0].lease_id == second.instance.lease_id


async def test_deregister(client: HubClient) -> None:
    reg = await client.register("ml-processing", host="ml", port=9000)
    await reg.deregister()
    with pytest.raises(ServiceNotFound):
        await client.discover("ml-processing")
    with pytest.raises(InstanceNotFound):
        await _deregister(client, "ml-processing", "ml-9000")


async def _deregister(client: HubClient, service: str, instance_id: str) -> None:
    await client.call(
        client.registry_stub.Deregister,
        registry_pb2.DeregisterRequest(service=service, instance_id=instance_id),
    )


async def test_lease_expiry_removes_instance_and_tells_watchers(client: HubClient) -> None:
    events = client.watch("short-lived")
    first = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.2)
    await client.register("short-lived", host="s", port=1, ttl=2, keep_alive=False)
    added = await asyncio.wait_for(first, 5)
    assert added.type is EventType.ADDED
    removed = await asyncio.wait_for(anext(events), 10)
    assert removed.type is EventType.REMOVED
    assert removed.instance.instance_id == "s-1"
    assert removed.revision > added.revision
    with pytest.raises(ServiceNotFound):
        await client.discover("short-lived")
    await events.aclose()


async def test_keep_alive_holds_the_lease(client: HubClient) -> None:
    reg = await client.register("kept", host="k", port=1, ttl=2)
    await asyncio.sleep(4.5)
    assert reg.renewals >= 3
    assert len((await client.discover("kept")).instances) == 1


async def test_keep_alive_of_expired_lease_is_not_found_and_handle_reregisters(
    client: HubClient,
) -> None:
    reg = await client.register("phoenix", host="p", port=1, ttl=2, keep_alive=False)
    await eventually(lambda: _absent(client, "phoenix"), timeout=10)
    with pytest.raises(InstanceNotFound):
        await reg.keep_alive()
    # A handle whose loop runs re-registers by itself.
    reg2 = await client.register("phoenix", host="p", port=1, ttl=2)
    await _deregister(client, "phoenix", "p-1")
    await eventually(lambda: reg2.reregistrations >= 1, timeout=10)
    assert len((await client.discover("phoenix")).instances) == 1


async def _absent(client: HubClient, service: str) -> bool:
    try:
        await client.discover(service)
        return False
    except ServiceNotFound:
        return True


# -- tiers -----------------------------------------------------------------


@pytest.fixture
async def tiered(client: HubClient) -> HubClient:
    await client.register("public-feed", host="a", port=1)
    await client.register("analytics", host="b", port=1, subscription_requirements=["pro"])
    await client.register(
        "custom-models", host="c", port=1, subscription_requirements=["enterprise"]
    )
    await client.register(
        "either", host="d", port=1, subscription_requirements=["pro", "enterprise"]
    )
    return client


@pytest.mark.parametrize(
    ("headers", "legacy", "expected"),
    [
        ({}, False, {"public-feed", "analytics", "custom-models", "either"}),
        ({"tenant_id": "abc"}, False, {"public-feed"}),  # a tenant without a tier is free
        ({"tenant_id": "abc", "subscription_tier": "free"}, False, {"public-feed"}),
        (
            {"tenant_id": "abc", "subscription_tier": "pro"},
            False,
            {"public-feed", "analytics", "either"},
        ),
        (
            {"tenant_id": "abc", "subscription_tier": "enterprise"},
            False,
            {"public-feed", "analytics", "custom-models", "either"},
        ),
        ({"subscription_tier": "PRO"}, False, {"public-feed", "analytics", "either"}),
        (
            {"tenant_id": "abc", "subscription_tier": "free"},
            True,
            {"public-feed", "analytics", "custom-models", "either"},
        ),
    ],
)
async def test_list_services_by_tier(
    tiered: HubClient, headers: dict[str, str], legacy: bool, expected: set[str]
) -> None:
    scoped = tiered.with_context(**headers)
    names = {s.name for s in await scoped.list_services(legacy_mode=legacy)}
    assert names == expected


async def test_an_unknown_tier_header_counts_as_free(tiered: HubClient) -> None:
    # hub_client refuses an unknown tier, so send the header raw.
    resp = await tiered.registry_stub.ListServices(
        registry_pb2.ListServicesRequest(),
        metadata=(("x-tenant-id", "abc"), ("x-subscription-tier", "bogus")),
    )
    assert {s.name for s in resp.services} == {"public-feed"}


async def test_discover_above_tier_is_permission_denied(tiered: HubClient) -> None:
    free = tiered.with_context(tenant_id="abc", subscription_tier="free")
    with pytest.raises(TierTooLow) as err:
        await free.discover("analytics")
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert (await free.discover("analytics", legacy_mode=True)).instances


async def test_list_services_pages(client: HubClient) -> None:
    for i in range(5):
        await client.register(f"svc-{i}", host="h", port=1000 + i, keep_alive=False)
    page = await client.registry_stub.ListServices(registry_pb2.ListServicesRequest(page_size=2))
    names = [s.name for s in page.services]
    while page.next_page_token:
        page = await client.registry_stub.ListServices(
            registry_pb2.ListServicesRequest(page_size=2, page_token=page.next_page_token)
        )
        names += [s.name for s in page.services]
    assert names == [f"svc-{i}" for i in range(5)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.registry_stub.ListServices(
            registry_pb2.ListServicesRequest(page_token="garbage!")
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- bad input ---------------------------------------------------------------

GOOD = dict(service="good-svc", host="10.1.2.3", port=8080, version="1.0.0", ttl_seconds=30)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"service": ""}, "service"),
        ({"service": "Upper"}, "service"),
        ({"service": "a/b"}, "service"),
        ({"service": "../etc"}, "service"),
        ({"service": "-lead"}, "service"),
        ({"service": "x" * 64}, "service"),
        ({"service": "caf\u00e9"}, "service"),
        ({"service": "nul\x00"}, "service"),
        ({"instance_id": "a/b"}, "instance_id"),
        ({"instance_id": "a..b"}, "instance_id"),
        ({"instance_id": "x" * 129}, "instance_id"),
        ({"instance_id": "\u0430pi"}, "instance_id"),  # Cyrillic look-alike
        ({"host": ""}, "host"),
        ({"host": "bad host"}, "host"),
        ({"host": "a" * 254}, "host"),
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"port": -1}, "port"),
        ({"version": "v 1"}, "version"),
        ({"ttl_seconds": 1}, "ttl_seconds"),
        ({"ttl_seconds": 86_401}, "ttl_seconds"),
        ({"weight": 1001}, "weight"),
        ({"weight": -5}, "weight"),
        ({"protocol": 99}, "protocol"),
        ({"resource_tier": 42}, "resource_tier"),
        ({"subscription_requirements": [0]}, "subscription_requirements[0]"),
        ({"metadata": {f"k{i}": "v" for i in range(65)}}, "metadata"),
        ({"metadata": {"bad key": "v"}}, "metadata['bad key']"),
        ({"metadata": {"k": "v" * 513}}, "metadata['k']"),
        (
            {"health_check": types_pb2.HealthCheck(http=types_pb2.HttpCheck(path="health"))},
            "health_check.http.path",
        ),
        (
            {
                "health_check": types_pb2.HealthCheck(
                    tcp=types_pb2.TcpCheck(), interval={"seconds": 7200}
                )
            },
            "health_check.interval",
        ),
    ],
)
async def test_bad_registration_is_invalid_argument_and_stores_nothing(
    client: HubClient,
    etcd_store,
    changes: dict,
    field: str,  # type: ignore[no-untyped-def]
) -> None:
    request = registry_pb2.RegisterRequest(**{**GOOD, **changes})
    with pytest.raises(InvalidArgument) as err:
        await client.call(client.registry_stub.Register, request)
    assert field in [v.field for v in err.value.field_violations]
    assert err.value.reason == "INVALID_ARGUMENT"
    kvs, _ = await etcd_store.get_prefix(keys.ROOT)
    assert [kv for kv in kvs if kv.key.startswith(keys.REGISTRY)] == []


async def test_every_bad_field_reported_at_once(client: HubClient) -> None:
    request = registry_pb2.RegisterRequest(service="BAD", host="", port=0, ttl_seconds=1)
    with pytest.raises(InvalidArgument) as err:
        await client.call(client.registry_stub.Register, request)
    fields = {v.field for v in err.value.field_violations}
    assert {"service", "host", "port", "ttl_seconds"} <= fields


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("GetService", registry_pb2.GetServiceRequest(service="")),
        ("GetService", registry_pb2.GetServiceRequest(service="a/b")),
        ("KeepAlive", registry_pb2.KeepAliveRequest(service="a", instance_id="b", lease_id=0)),
        ("KeepAlive", registry_pb2.KeepAliveRequest(service="a", instance_id="../x", lease_id=1)),
        ("Deregister", registry_pb2.DeregisterRequest(service="a", instance_id="")),
        ("ListServices", registry_pb2.ListServicesRequest(page_size=-1)),
    ],
)
async def test_bad_requests_of_other_methods(client: HubClient, method: str, request_) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument):
        await client.call(getattr(client.registry_stub, method), request_)


async def test_unknown_service_is_not_found_with_reason(client: HubClient) -> None:
    with pytest.raises(ServiceNotFound) as err:
        await client.discover("nobody")
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert err.value.metadata == {"service": "nobody"}


# -- metadata and reflection -------------------------------------------------


async def test_tenant_headers_are_echoed(hub) -> None:  # type: ignore[no-untyped-def]
    async with grpc.aio.insecure_channel(hub.address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        call = stub.ListServices(
            registry_pb2.ListServicesRequest(),
            metadata=(("x-company-id", "company_abc"), ("x-correlation-id", "req_456")),
        )
        await call
        echoed = dict(await call.initial_metadata())
    assert echoed["x-company-id"] == "company_abc"
    assert echoed["x-correlation-id"] == "req_456"


async def test_a_bad_duration_stored_before_the_check_does_not_break_readers(
    hub_factory: HubFactory, etcd_store: EtcdStore
) -> None:
    """An instance written (before requests were checked) with health check
    durations json_format refuses: GetService still answers something grpcurl can
    print, with the durations normalised or dropped, and the dashboard's
    /api/services answers 200 (it answered 500)."""
    import aiohttp
    from google.protobuf import json_format

    bad = types_pb2.Instance(service="svc", instance_id="i1", host="127.0.0.1", port=9)
    bad.health_check.tcp.SetInParent()
    bad.health_check.interval.nanos = 2_000_000_000  # only unnormalised: becomes 2 s
    bad.health_check.timeout.seconds = 10**13  # out of any range: dropped
    await etcd_store.put(keys.instance_key("svc", "i1"), bad.SerializeToString())
    hub = await hub_factory(ui_listen="127.0.0.1:0")
    async with grpc.aio.insecure_channel(hub.address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        reply = await stub.GetService(
            registry_pb2.GetServiceRequest(service="svc", include_unhealthy=True)
        )
    (inst,) = reply.service.instances
    assert json_format.MessageToDict(inst)["healthCheck"]["interval"] == "2s"
    assert not inst.health_check.HasField("timeout")
    assert hub.dashboard is not None
    async with aiohttp.ClientSession() as http:
        async with http.get(hub.dashboard.url + "api/services") as response:
            assert response.status == 200, await response.text()
            body = await response.json()
    (service,) = body["services"]
    assert service["instances"][0]["healthCheck"]["interval"] == "2s"


async def test_metadata_at_every_documented_limit_at_once_is_accepted(hub) -> None:  # type: ignore[no-untyped-def]
    """64 entries, 63-byte keys, 512-byte values (36,800 bytes): an undocumented
    16 KiB total refused it. One byte or entry more is refused, saying the limits."""
    biggest = {f"{i:02d}".ljust(63, "k"): "v" * 512 for i in range(64)}
    assert sum(len(k) + len(v) for k, v in biggest.items()) == 36_800
    async with grpc.aio.insecure_channel(hub.address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        request = registry_pb2.RegisterRequest(service="svc", host="h", port=1, metadata=biggest)
        await stub.Register(request)
        reply = await stub.GetService(
            registry_pb2.GetServiceRequest(service="svc", include_unhealthy=True)
        )
        assert dict(reply.service.instances[0].metadata) == biggest
        for metadata in (
            {**biggest, "extra": "v"},
            {**dict(list(biggest.items())[:63]), "k" * 64: "v"},
            {**dict(list(biggest.items())[:63]), "last": "v" * 513},
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Register(
                    registry_pb2.RegisterRequest(service="svc", host="h", port=2, metadata=metadata)
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "63" in (err.value.details() or "")


# -- default instance ids (issue 14 item 9) ------------------------------------------

_host_names = st.from_regex(
    r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,8}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,8}[A-Za-z0-9_])?){0,3}\.?",
    fullmatch=True,
)
_ipv6_texts = st.one_of(
    st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=6).map(lambda a: a.exploded),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.tuples(st.ip_addresses(v=6), st.from_regex(r"[A-Za-z0-9_.]{1,6}", fullmatch=True)).map(
        lambda t: f"{t[0]}%{t[1]}"
    ),
)


def _valid_host(host: str) -> bool:
    v = Violations()
    validation.check_host(v, "host", host)
    return not v.items


COLLIDING = ["::1", "1", "::ffff:1.2.3.4", "ffff_1.2.3.4", "_1", "fe80::1%eth0", "fe80__1"]
_hosts = st.one_of(
    st.ip_addresses(v=4).map(str), _ipv6_texts, _host_names, st.sampled_from(COLLIDING)
).filter(_valid_host)


@given(st.lists(st.tuples(_hosts, st.integers(1, 65535)), min_size=2, max_size=30, unique=True))
@settings(max_examples=500, deadline=None)
def test_default_instance_ids_differ_for_different_hosts_and_ports(
    addresses: list[tuple[str, int]],
) -> None:
    ids = [default_instance_id(host, port) for host, port in addresses]
    assert len(set(ids)) == len(ids), list(zip(addresses, ids, strict=True))
    for (host, _), instance_id in zip(addresses, ids, strict=True):
        if len(host) <= 90:
            assert validation.is_key_name(instance_id), (host, instance_id)


def test_default_instance_ids_stay_the_same_for_ipv4_and_host_names() -> None:
    assert default_instance_id("10.0.0.5", 8001) == "10.0.0.5-8001"
    assert default_instance_id("data-bridge.svc.local", 80) == "data-bridge.svc.local-80"
    assert default_instance_id("::1", 9000) == "ip6:::1-9000"
    assert len({default_instance_id(h, 9000) for h in COLLIDING}) == len(COLLIDING)


async def test_hosts_that_shared_a_default_id_register_as_two_instances(client: HubClient) -> None:
    """``::1`` and ``1`` on port 9000 both became ``1-9000``: the second
    registration silently replaced the first."""
    for pair in (("::1", "1"), ("::ffff:1.2.3.4", "ffff_1.2.3.4")):
        ids = [(await client.register("twins", host=h, port=9000)).instance_id for h in pair]
        assert ids[0] != ids[1]
    svc = await client.discover("twins", include_unhealthy=True)
    assert sorted(i.host for i in svc.instances) == sorted(
        ["::1", "1", "::ffff:1.2.3.4", "ffff_1.2.3.4"]
    )
