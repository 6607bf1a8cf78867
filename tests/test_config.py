"""ConfigService against a real etcd: seeded tier defaults, layers and merging,
compare-and-set, history and rollback, bad input, and WatchConfig pushes to many
subscribers on several replicas."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from aitrading.hub.v1 import config_pb2 as cfg
from aitrading.hub.v1 import config_pb2_grpc, registry_pb2, tenant_pb2, tenant_pb2_grpc, types_pb2
from google.protobuf import json_format

from hub_client import HubClient, InvalidArgument, QuotaExceeded, TenantConfig, VersionConflict
from hub_client._private.errors import from_rpc_error
from hub_server.app import Hub
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore
from tests.support.hubs import HubFactory
from tests.support.waiting import eventually

FREE, PRO, ENTERPRISE = (
    types_pb2.SUBSCRIPTION_TIER_FREE,
    types_pb2.SUBSCRIPTION_TIER_PRO,
    types_pb2.SUBSCRIPTION_TIER_ENTERPRISE,
)
SNAPSHOT = registry_pb2.WATCH_RESPONSE_KIND_SNAPSHOT
EVENTS = registry_pb2.WATCH_RESPONSE_KIND_EVENTS
PROGRESS = registry_pb2.WATCH_RESPONSE_KIND_PROGRESS

GLOBAL = cfg.ConfigLayerRef(kind=cfg.CONFIG_LAYER_KIND_GLOBAL)


def tier_ref(tier: int) -> cfg.ConfigLayerRef:
    return cfg.ConfigLayerRef(kind=cfg.CONFIG_LAYER_KIND_TIER_DEFAULTS, tier=tier)  # type: ignore[arg-type]


def tenant_ref(tenant_id: str) -> cfg.ConfigLayerRef:
    return cfg.ConfigLayerRef(kind=cfg.CONFIG_LAYER_KIND_TENANT, tenant_id=tenant_id)


def values(data: dict[str, Any]) -> cfg.ConfigValues:
    return json_format.ParseDict(data, cfg.ConfigValues())


def tier_values(ws: int, calls: int = 10000, *, ai: bool = True, custom: bool = False) -> dict:  # type: ignore[type-arg]
    return {
        "rate_limits": {"api_calls_per_hour": calls, "websocket_connections": ws},
        "features": {"basic_analytics": True, "advanced_ai": ai, "custom_models": custom},
        "resource_limits": {"max_concurrent_requests": 100, "max_data_storage_mb": 1000},
    }


class Stubs:
    def __init__(self, hub: Hub) -> None:
        self.channel = grpc.aio.insecure_channel(hub.address)
        self.config = config_pb2_grpc.ConfigServiceStub(self.channel)
        self.tenants = tenant_pb2_grpc.TenantServiceStub(self.channel)

    async def set(
        self, layer: cfg.ConfigLayerRef, data: dict[str, Any], **kw: Any
    ) -> cfg.ConfigLayer:
        resp = await self.config.SetConfigLayer(
            cfg.SetConfigLayerRequest(layer=layer, values=values(data), **kw)
        )
        return resp.layer

    async def merged(self, tenant_id: str, tier: str = "") -> cfg.TenantConfig:
        metadata = (("x-subscription-tier", tier),) if tier else ()
        resp = await self.config.GetTenantConfig(
            cfg.GetTenantConfigRequest(tenant_id=tenant_id), metadata=metadata
        )
        return resp.config

    async def layer(self, layer: cfg.ConfigLayerRef) -> cfg.ConfigLayer:
        return (await self.config.GetConfigLayer(cfg.GetConfigLayerRequest(layer=layer))).layer

    async def versions(self, layer: cfg.ConfigLayerRef) -> list[int]:
        resp = await self.config.ListConfigVersions(cfg.ListConfigVersionsRequest(layer=layer))
        return [v.version for v in resp.versions]

    async def create_tenant(self, tenant_id: str, tier: int) -> None:
        await self.tenants.CreateTenant(
            tenant_pb2.CreateTenantRequest(tenant_id=tenant_id, tier=tier)  # type: ignore[arg-type]
        )

    async def close(self) -> None:
        await self.channel.close()


class Subscriber:
    """One WatchConfig stream, read in the background."""

    def __init__(self, stubs: Stubs, tenant_id: str, *, tier: str = "", start: int = 0) -> None:
        metadata = (("x-subscription-tier", tier),) if tier else ()
        self.call = stubs.config.WatchConfig(
            cfg.WatchConfigRequest(tenant_id=tenant_id, start_revision=start), metadata=metadata
        )
        self.messages: list[cfg.WatchConfigResponse] = []
        self.configs: list[cfg.TenantConfig] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for m in self.call:
            self.messages.append(m)
            if m.kind != PROGRESS:
                self.configs.append(m.config)

    @property
    def last(self) -> cfg.TenantConfig | None:
        return self.configs[-1] if self.configs else None

    def close(self) -> None:
        self.call.cancel()
        self.task.cancel()


async def all_have(
    subs: list[Subscriber], stubs: Stubs, tenant_id: str, tier: str = ""
) -> cfg.TenantConfig:
    """Waits until every subscriber has what GetTenantConfig answers (asked again
    on each try: the answering replica may itself be a moment behind a write made
    on another); returns that config."""
    final: list[cfg.TenantConfig] = []

    async def check() -> bool:
        expected = await stubs.merged(tenant_id, tier)
        final[:] = [expected]
        return all(s.last == expected for s in subs)

    await eventually(check, timeout=20)
    return final[0]


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def config_keys(store: EtcdStore) -> list[tuple[bytes, bytes]]:
    """Every config and history key-value, without the mirrors' fence keys."""
    out = []
    for prefix in (keys.CONFIG, keys.CONFIG_HISTORY):
        kvs, _ = await store.get_prefix(prefix)
        out += [(kv.key, kv.value) for kv in kvs if b"/_fence/" not in kv.key]
    return out


# -- tier defaults -------------------------------------------------------------------


async def test_tier_defaults_are_seeded_once_and_never_overwritten(
    hub_factory: HubFactory,
) -> None:
    a = await hub_factory()
    s = Stubs(a)
    try:
        free = await s.layer(tier_ref(FREE))
        assert free.version == 1 and free.updated_by == "hub"
        assert json_format.MessageToDict(free.values, preserving_proto_field_name=True) == {
            "rate_limits": {"api_calls_per_hour": "1000", "websocket_connections": 5},
            "features": {"basic_analytics": True, "advanced_ai": False, "custom_models": False},
            "resource_limits": {"max_concurrent_requests": 10, "max_data_storage_mb": "100"},
        }
        ent = await s.layer(tier_ref(ENTERPRISE))
        assert ent.values.rate_limits.api_calls_per_hour == 100000
        assert ent.values.features.custom_models is True
        edited = await s.set(tier_ref(PRO), tier_values(60), expected_version=1)
        assert edited.version == 2

        b = await hub_factory()  # a later start seeds nothing
        sb = Stubs(b)
        try:
            pro = await sb.layer(tier_ref(PRO))
            assert (pro.version, pro.values.rate_limits.websocket_connections) == (2, 60)
            assert await sb.versions(tier_ref(PRO)) == [2, 1]
            assert await sb.versions(tier_ref(FREE)) == [1]
        finally:
            await sb.close()
    finally:
        await s.close()


async def test_replicas_starting_together_seed_once(hub_factory: HubFactory) -> None:
    hubs = await asyncio.gather(*(hub_factory() for _ in range(3)))
    s = Stubs(hubs[0])
    try:
        for tier in (FREE, PRO, ENTERPRISE):
            assert await s.versions(tier_ref(tier)) == [1]
    finally:
        await s.close()


# -- merged view ---------------------------------------------------------------------


async def test_tier_of_the_merged_view(hub: Hub) -> None:
    s = Stubs(hub)
    try:
        ghost = await s.merged("ghost", tier="pro")
        assert (ghost.tier, ghost.tier_source) == (PRO, cfg.TIER_SOURCE_REQUEST_HEADER)
        assert ghost.values.rate_limits.websocket_connections == 50
        assert ghost.values.resource_limits.max_concurrent_requests == 100
        assert (ghost.tier_defaults_version, ghost.global_version, ghost.tenant_version) == (
            1,
            0,
            0,
        )
        for tier in ("", "gold"):
            anon = await s.merged("ghost", tier=tier)
            assert (anon.tier, anon.tier_source) == (FREE, cfg.TIER_SOURCE_DEFAULT)
            assert anon.values.rate_limits.api_calls_per_hour == 1000
            assert anon.values.features.advanced_ai is False
        await s.create_tenant("acme", ENTERPRISE)
        acme = await s.merged("acme", tier="free")  # the stored record wins over the header
        assert (acme.tier, acme.tier_source) == (ENTERPRISE, cfg.TIER_SOURCE_TENANT_RECORD)
        assert acme.values.features.custom_models is True
        no_tenant = await s.merged("", tier="enterprise")
        assert (no_tenant.tenant_id, no_tenant.tier) == ("", ENTERPRISE)
    finally:
        await s.close()


async def test_layers_merge_tier_then_global_then_tenant(hub: Hub) -> None:
    s = Stubs(hub)
    try:
        await s.create_tenant("acme", PRO)
        await s.set(
            GLOBAL,
            {
                "rate_limits": {"websocket_connections": 7},
                "features": {"flags": {"beta": True, "legacy": True}},
                "settings": {"ui": {"theme": "dark", "lang": "en"}, "retries": 3},
            },
        )
        await s.set(
            tenant_ref("acme"),
            {
                "rate_limits": {"websocket_connections": 9},
                "features": {"advanced_ai": False, "flags": {"legacy": False}},
                "settings": {"ui": {"lang": None}, "region": "eu"},
            },
        )
        acme = await s.merged("acme")
        assert acme.values.rate_limits.websocket_connections == 9  # tenant
        assert acme.values.rate_limits.api_calls_per_hour == 10000  # tier
        assert acme.values.features.advanced_ai is False  # tenant over tier
        assert acme.values.features.basic_analytics is True  # tier
        assert dict(acme.values.features.flags) == {"beta": True, "legacy": False}
        assert json_format.MessageToDict(acme.values.settings) == {
            "ui": {"theme": "dark"},
            "retries": 3,
            "region": "eu",
        }
        assert (acme.tier_defaults_version, acme.global_version, acme.tenant_version) == (1, 1, 1)
        other = await s.merged("other", tier="pro")
        assert other.values.rate_limits.websocket_connections == 7  # global
        assert other.values.features.advanced_ai is True
        assert other.tenant_version == 0
    finally:
        await s.close()


# -- versions ----------------------------------------------------------------------


async def test_expected_version_conflicts_abort_and_store_nothing(
    hub_factory: HubFactory, etcd_store: EtcdStore
) -> None:
    a, b = await hub_factory(), await hub_factory()
    sa, sb = Stubs(a), Stubs(b)
    try:
        first = await sa.set(GLOBAL, {"settings": {"n": 1}}, expected_version=0)
        assert first.version == 1
        before = await config_keys(etcd_store)
        err = await rpc_error(sa.set(GLOBAL, {"settings": {"n": 2}}, expected_version=0))
        assert err.code() == grpc.StatusCode.ABORTED
        typed = from_rpc_error(err)
        assert isinstance(typed, VersionConflict) and typed.reason == "VERSION_CONFLICT"
        assert typed.metadata["current_version"] == "1"
        assert await config_keys(etcd_store) == before

        # Ten writers on two replicas all expecting version 1: exactly one wins.
        async def attempt(stubs: Stubs, i: int) -> bool:
            try:
                await stubs.set(GLOBAL, {"settings": {"n": 10 + i}}, expected_version=1)
                return True
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.ABORTED
                return False

        wins = await asyncio.gather(*(attempt((sa, sb)[i % 2], i) for i in range(10)))
        assert sum(wins) == 1
        assert await sa.versions(GLOBAL) == [2, 1]
    finally:
        await sa.close()
        await sb.close()


async def test_concurrent_writes_on_two_replicas_get_distinct_versions(
    hub_factory: HubFactory,
) -> None:
    a, b = await hub_factory(), await hub_factory()
    sa, sb = Stubs(a), Stubs(b)
    try:
        written = await asyncio.gather(
            *((sa, sb)[i % 2].set(tenant_ref("t"), {"settings": {"writer": i}}) for i in range(20))
        )
        assert sorted(w.version for w in written) == list(range(1, 21))
        assert await sb.versions(tenant_ref("t")) == list(range(20, 0, -1))
        # Each history entry holds what its writer wrote.
        resp = await sa.config.ListConfigVersions(
            cfg.ListConfigVersionsRequest(layer=tenant_ref("t"))
        )
        by_version = {v.version: v.values.settings["writer"] for v in resp.versions}
        assert by_version == {w.version: w.values.settings["writer"] for w in written}
    finally:
        await sa.close()
        await sb.close()


async def test_history_paging_and_rollback(hub: Hub) -> None:
    s = Stubs(hub)
    try:
        for n in (1, 2, 3):
            layer = await s.config.SetConfigLayer(
                cfg.SetConfigLayerRequest(
                    layer=GLOBAL,
                    values=values({"rate_limits": {"websocket_connections": n}}),
                    comment=f"v{n}",
                ),
                metadata=(("x-user-id", "ops-7"),),
            )
        assert layer.layer.version == 3 and layer.layer.updated_by == "ops-7"
        page = await s.config.ListConfigVersions(
            cfg.ListConfigVersionsRequest(layer=GLOBAL, page_size=2)
        )
        assert [v.version for v in page.versions] == [3, 2] and page.next_page_token
        assert [v.comment for v in page.versions] == ["v3", "v2"]
        rest = await s.config.ListConfigVersions(
            cfg.ListConfigVersionsRequest(
                layer=GLOBAL, page_size=2, page_token=page.next_page_token
            )
        )
        assert [v.version for v in rest.versions] == [1] and not rest.next_page_token

        back = await s.config.RollbackConfig(
            cfg.RollbackConfigRequest(layer=GLOBAL, version=1, expected_version=3)
        )
        assert (back.layer.version, back.layer.restored_version) == (4, 1)
        assert back.layer.values.rate_limits.websocket_connections == 1
        assert back.layer.comment == "rollback to version 1"
        assert (await s.merged("x")).values.rate_limits.websocket_connections == 1
        assert await s.versions(GLOBAL) == [4, 3, 2, 1]

        err = await rpc_error(
            s.config.RollbackConfig(cfg.RollbackConfigRequest(layer=GLOBAL, version=9))
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert from_rpc_error(err).reason == "CONFIG_VERSION_NOT_FOUND"
        err = await rpc_error(
            s.config.RollbackConfig(
                cfg.RollbackConfigRequest(layer=GLOBAL, version=2, expected_version=3)
            )
        )
        assert err.code() == grpc.StatusCode.ABORTED
        assert await s.versions(GLOBAL) == [4, 3, 2, 1]
    finally:
        await s.close()


# -- bad input -------------------------------------------------------------------------

BAD_WRITES: list[tuple[cfg.ConfigLayerRef, dict[str, Any], dict[str, Any], list[str]]] = [
    # (layer, values, other request fields, the fields named)
    (GLOBAL, {"rate_limits": {"api_calls_per_hour": -1}}, {},
     ["values.rate_limits.api_calls_per_hour"]),
    (GLOBAL, {"rate_limits": {"websocket_connections": -5},
              "resource_limits": {"max_data_storage_mb": -1}}, {},
     ["values.rate_limits.websocket_connections", "values.resource_limits.max_data_storage_mb"]),
    (GLOBAL, {"features": {"flags": {"advanced_ai": True}}}, {},
     ["values.features.flags['advanced_ai']"]),
    (GLOBAL, {"features": {"flags": {"no spaces": True}}}, {},
     ["values.features.flags['no spaces']"]),
    (GLOBAL, {"settings": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {"k": {
        "l": {"m": {"n": {"o": {"p": {"q": 1}}}}}}}}}}}}}}}}}}, {}, ["values.settings"]),
    (tier_ref(FREE), {"rate_limits": {"api_calls_per_hour": 5, "websocket_connections": 1}}, {},
     ["values.features.basic_analytics", "values.features.advanced_ai",
      "values.features.custom_models", "values.resource_limits.max_concurrent_requests",
      "values.resource_limits.max_data_storage_mb"]),
    (cfg.ConfigLayerRef(), {}, {}, ["layer.kind"]),
    (tier_ref(types_pb2.SUBSCRIPTION_TIER_UNSPECIFIED), {}, {}, ["layer.tier"]),
    (cfg.ConfigLayerRef(kind=cfg.CONFIG_LAYER_KIND_TENANT), {}, {}, ["layer.tenant_id"]),
    (tenant_ref("../etc"), {}, {}, ["layer.tenant_id"]),
    (cfg.ConfigLayerRef(kind=cfg.CONFIG_LAYER_KIND_GLOBAL, tenant_id="x"), {}, {},
     ["layer.tenant_id"]),
    (GLOBAL, {}, {"expected_version": -1}, ["expected_version"]),
    (GLOBAL, {}, {"comment": "x" * 513}, ["comment"]),
]  # fmt: skip


async def test_bad_writes_name_the_field_and_store_nothing(hub: Hub, etcd_store: EtcdStore) -> None:
    s = Stubs(hub)
    try:
        before = await config_keys(etcd_store)
        for layer, data, extra, fields in BAD_WRITES:
            err = await rpc_error(
                s.config.SetConfigLayer(
                    cfg.SetConfigLayerRequest(layer=layer, values=values(data), **extra)
                )
            )
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
            assert [v.field for v in from_rpc_error(err).field_violations] == fields
        for request, field in [
            (cfg.RollbackConfigRequest(layer=GLOBAL, version=0), "version"),
            (cfg.RollbackConfigRequest(layer=cfg.ConfigLayerRef(), version=1), "layer.kind"),
        ]:
            err = await rpc_error(s.config.RollbackConfig(request))
            assert [v.field for v in from_rpc_error(err).field_violations] == [field]
        err = await rpc_error(s.config.GetTenantConfig(cfg.GetTenantConfigRequest(tenant_id="a/b")))
        assert [v.field for v in from_rpc_error(err).field_violations] == ["tenant_id"]
        err = await rpc_error(
            s.config.ListConfigVersions(cfg.ListConfigVersionsRequest(layer=GLOBAL, page_size=-1))
        )
        assert [v.field for v in from_rpc_error(err).field_violations] == ["page_size"]
        watch = s.config.WatchConfig(cfg.WatchConfigRequest(tenant_id="a b"))
        err = await rpc_error(watch.read())
        assert [v.field for v in from_rpc_error(err).field_violations] == ["tenant_id"]
        assert await config_keys(etcd_store) == before
    finally:
        await s.close()


# -- WatchConfig ------------------------------------------------------------------------


async def test_every_kind_of_change_reaches_50_subscribers_on_two_replicas(
    hub_factory: HubFactory,
) -> None:
    a, b = await hub_factory(), await hub_factory()
    sa, sb = Stubs(a), Stubs(b)
    subs: list[Subscriber] = []
    try:
        await sa.create_tenant("acme", PRO)
        await sa.create_tenant("other", FREE)
        await eventually(lambda: b.services.tenants.get("other") is not None)  # created after acme
        acme = [Subscriber((sa, sb)[i % 2], "acme") for i in range(50)]
        other = [Subscriber((sa, sb)[i % 2], "other") for i in range(4)]
        anon_pro = [Subscriber((sa, sb)[i % 2], "", tier="pro") for i in range(4)]
        subs = acme + other + anon_pro

        async def converge(writer: Stubs) -> None:
            # Asks the replica that wrote: it answers only once it has its write.
            await all_have(acme, writer, "acme")
            await all_have(other, writer, "other")
            await all_have(anon_pro, writer, "", "pro")

        await converge(sa)
        assert all(s.messages[0].kind == SNAPSHOT for s in subs)

        # Each kind of change, then: who got a new config.
        await sa.set(tier_ref(PRO), tier_values(51))  # tier defaults of acme's tier
        await converge(sa)
        assert acme[0].last.values.rate_limits.websocket_connections == 51  # type: ignore[union-attr]
        await sb.set(GLOBAL, {"settings": {"maintenance": False}})  # everyone's
        await converge(sb)
        await sa.set(tenant_ref("acme"), {"rate_limits": {"api_calls_per_hour": 12345}})
        await converge(sa)
        assert acme[1].last.values.rate_limits.api_calls_per_hour == 12345  # type: ignore[union-attr]
        await sb.tenants.UpdateTenantTier(  # acme's tier
            tenant_pb2.UpdateTenantTierRequest(tenant_id="acme", tier=ENTERPRISE)
        )
        await converge(sb)
        assert acme[2].last.tier == ENTERPRISE  # type: ignore[union-attr]
        assert acme[2].last.values.features.custom_models is True  # type: ignore[union-attr]
        assert acme[2].last.values.rate_limits.api_calls_per_hour == 12345  # type: ignore[union-attr]
        await sa.set(tier_ref(ENTERPRISE), tier_values(501, custom=True))  # acme's new tier
        await converge(sa)
        assert acme[3].last.values.rate_limits.websocket_connections == 501  # type: ignore[union-attr]

        # A change another subscriber depends on comes after all of the above on
        # each stream, so counting now shows what each stream was sent.
        await sb.set(tenant_ref("other"), {"settings": {"fence": True}})
        await converge(sb)
        # acme: snapshot + five changes, each exactly once.
        assert {len(s.configs) for s in acme} == {6}
        # other (free): snapshot, global, its own layer; never pro/enterprise/acme changes.
        assert {len(s.configs) for s in other} == {3}
        # the pro view without a tenant: snapshot, pro defaults, global.
        assert {len(s.configs) for s in anon_pro} == {3}
    finally:
        for sub in subs:
            sub.close()
        await sa.close()
        await sb.close()


async def test_a_burst_of_writes_never_leaves_a_subscriber_stale(hub_factory: HubFactory) -> None:
    a, b = await hub_factory(), await hub_factory()
    sa, sb = Stubs(a), Stubs(b)
    subs = [Subscriber((sa, sb)[i % 2], "t") for i in range(20)]
    try:
        await eventually(lambda: all(s.configs for s in subs))
        await asyncio.gather(
            *((sa, sb)[i % 2].set(tenant_ref("t"), {"settings": {"n": i}}) for i in range(30)),
            *(sa.set(GLOBAL, {"settings": {"g": i}}) for i in range(10)),
        )

        async def caught_up() -> bool:  # a has b's writes too
            m = await sa.merged("t")
            return (m.tenant_version, m.global_version) == (30, 10)

        await eventually(caught_up)
        final = await all_have(subs, sa, "t")
        assert (final.tenant_version, final.global_version) == (30, 10)
        for sub in subs:  # versions only ever go forward on a stream
            seen = [(c.global_version, c.tenant_version) for c in sub.configs]
            assert all(x[0] <= y[0] and x[1] <= y[1] for x, y in itertools.pairwise(seen))
    finally:
        for sub in subs:
            sub.close()
        await sa.close()
        await sb.close()


async def test_watch_resumes_by_revision(hub: Hub) -> None:
    s = Stubs(hub)
    subs: list[Subscriber] = []
    try:
        first = Subscriber(s, "r")
        subs.append(first)
        await eventually(lambda: bool(first.messages))
        resume_at = first.messages[0].header.revision + 1
        # Nothing changed since: the resumed stream sends no config, only progress.
        quiet = Subscriber(s, "r", start=resume_at)
        # Resuming from before the last change: the current config comes at once.
        behind = Subscriber(s, "r", start=1)
        subs += [quiet, behind]
        await eventually(lambda: bool(quiet.messages) and bool(behind.messages))
        assert quiet.messages[0].kind == PROGRESS and not quiet.configs
        assert behind.messages[0].kind == EVENTS and behind.last == first.last
        await s.set(tenant_ref("r"), {"settings": {"x": 1}})
        final = await all_have(subs, s, "r")
        assert quiet.configs == [final]
    finally:
        for sub in subs:
            sub.close()
        await s.close()


async def test_hub_client_config_and_watch(hub: Hub, client: HubClient) -> None:
    pro = client.with_context(subscription_tier="pro")
    ghost = await pro.config("ghost")
    assert isinstance(ghost, TenantConfig)
    assert (ghost.tier, ghost.tier_source) == ("pro", "request_header")
    assert ghost.rate_limits == {"api_calls_per_hour": 10000, "websocket_connections": 50}
    assert ghost.resource_limits == {"max_concurrent_requests": 100, "max_data_storage_mb": 1000}
    assert ghost.enabled("advanced_ai") and not ghost.enabled("custom_models")
    assert not ghost.enabled("no-such-flag")

    await client.create_tenant("acme", tier="free", display_name="Acme")
    seen: list[TenantConfig] = []

    async def follow() -> None:
        async for config in client.watch_config("acme"):
            seen.append(config)

    follower = asyncio.create_task(follow())
    try:
        await eventually(lambda: len(seen) == 1)
        assert seen[0].tier == "free" and seen[0].tenant_id == "acme"
        layer = await client.set_config_layer(
            "tenant/acme",
            {"features": {"flags": {"beta": True}}, "settings": {"ui": {"theme": "dark"}}},
            expected_version=0,
            comment="beta for acme",
        )
        assert (layer.layer, layer.version, layer.comment) == ("tenant/acme", 1, "beta for acme")
        assert layer.values == {
            "features": {"flags": {"beta": True}},
            "settings": {"ui": {"theme": "dark"}},
        }
        await eventually(lambda: len(seen) == 2)
        assert seen[1].enabled("beta") and seen[1].settings == {"ui": {"theme": "dark"}}
        assert seen[1].tenant_version == 1
        await client.set_tier("acme", "enterprise")
        await eventually(lambda: len(seen) == 3)
        assert seen[2].tier == "enterprise" and seen[2].enabled("custom_models")

        with pytest.raises(VersionConflict):
            await client.set_config_layer("tenant/acme", {}, expected_version=0)
        back = await client.rollback_config("tenant/acme", 1)
        assert back.version == 2 and back.restored_version == 1
        assert [v.version for v in await client.config_versions("tenant/acme")] == [2, 1]
        assert (await client.config_layer("tier/pro")).values["rate_limits"] == {
            "api_calls_per_hour": 10000,
            "websocket_connections": 50,
        }
        with pytest.raises(InvalidArgument):
            await client.config_layer("tier/gold")
    finally:
        follower.cancel()


async def test_tier_change_moves_config_and_limits_at_once(client: HubClient) -> None:
    await client.create_tenant("grow", tier="free")
    assert (await client.config("grow")).rate_limits["websocket_connections"] == 5
    for _ in range(5):
        await client.allocate("websocket_connections", tenant="grow")
    with pytest.raises(QuotaExceeded):
        await client.allocate("websocket_connections", tenant="grow")
    await client.set_tier("grow", "pro")
    # No waiting: the same replica answers from what the tier change wrote.
    assert (await client.config("grow")).rate_limits["websocket_connections"] == 50
    usage = await client.allocate("websocket_connections", tenant="grow")
    assert (usage.used, usage.limit) == (6, 50)


def _nested(levels: int) -> dict[str, Any]:
    """settings holding objects ``levels`` deep in all (settings itself is one),
    the innermost holding a number."""
    inner: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        inner = {"a": inner}
    return inner


async def test_settings_nesting_limit_is_the_one_the_message_states(hub: Hub) -> None:
    s = Stubs(hub)
    try:
        await s.set(GLOBAL, {"settings": _nested(16)})  # refused before: "more than 16"
        err = await rpc_error(s.set(GLOBAL, {"settings": _nested(17)}))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        (violation,) = from_rpc_error(err).field_violations
        assert violation.field == "values.settings"
        assert "more than 16 deep" in violation.description
    finally:
        await s.close()


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
async def test_non_finite_settings_are_invalid_argument_naming_the_field(
    hub: Hub, etcd_store: EtcdStore, number: float
) -> None:
    """They answered UNKNOWN with a server traceback."""
    s = Stubs(hub)
    try:
        before = await config_keys(etcd_store)
        request = cfg.SetConfigLayerRequest(layer=GLOBAL)
        request.values.settings.update({"ok": 1, "risk": {"max": number}})
        err = await rpc_error(s.config.SetConfigLayer(request))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in from_rpc_error(err).field_violations] == [
            "values.settings.risk.max"
        ]
        assert "finite" in err.details()
        assert await config_keys(etcd_store) == before
    finally:
        await s.close()
