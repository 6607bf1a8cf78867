"""ConfigService: check the request, call the config domain, fill the header.
WatchConfig pushes whole merged configs (state, not events), so it follows its
subscription's state rather than a mirror's log; see hub_server/config/service.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from aitrading.hub.v1 import config_pb2, config_pb2_grpc, types_pb2
from google.protobuf import json_format

from hub_server.config.merge import (
    GLOBAL_LAYER,
    TIER_FROM_DEFAULT,
    TIER_FROM_HEADER,
    TIER_FROM_RECORD,
    TYPED_FIELDS,
    ConfigValues,
    MergedConfig,
    StoredLayer,
    parse_layer,
    tenant_layer,
    tier_layer,
)
from hub_server.config.service import ConfigState, ConfigSubscription
from hub_server.kernel import validation
from hub_server.kernel.errors import InvalidArgument, Violations
from hub_server.kernel.validation import MAX_PAGE
from hub_server.rpc.context import audit_note, audited, current
from hub_server.rpc.header import response_header
from hub_server.rpc.paging import decode_page_token, encode_page_token
from hub_server.rpc.streaming import EVENTS, PROGRESS, SNAPSHOT, counted

log = logging.getLogger(__name__)

DEFAULT_PAGE = 100
MAX_COMMENT = 512

TIERS: dict[int, str] = {
    types_pb2.SUBSCRIPTION_TIER_FREE: "free",
    types_pb2.SUBSCRIPTION_TIER_PRO: "pro",
    types_pb2.SUBSCRIPTION_TIER_ENTERPRISE: "enterprise",
}
TIER_VALUES: dict[str, int] = {name: value for value, name in TIERS.items()}
_TIER_SOURCES = {
    TIER_FROM_RECORD: config_pb2.TIER_SOURCE_TENANT_RECORD,
    TIER_FROM_HEADER: config_pb2.TIER_SOURCE_REQUEST_HEADER,
    TIER_FROM_DEFAULT: config_pb2.TIER_SOURCE_DEFAULT,
}


# -- conversions -------------------------------------------------------------------


def layer_from_pb(v: Violations, path: str, ref: config_pb2.ConfigLayerRef) -> str:
    """The layer name of a reference; violations go to ``v`` (the name is then "")."""
    kind = ref.kind
    if kind == config_pb2.CONFIG_LAYER_KIND_TIER_DEFAULTS:
        if ref.tier not in TIERS:
            v.add(f"{path}.tier", "must be FREE, PRO or ENTERPRISE for a TIER_DEFAULTS layer")
        if ref.tenant_id:
            v.add(f"{path}.tenant_id", "must be empty for a TIER_DEFAULTS layer")
        return tier_layer(TIERS[ref.tier]) if ref.tier in TIERS and not ref.tenant_id else ""
    if kind == config_pb2.CONFIG_LAYER_KIND_GLOBAL:
        if ref.tier:
            v.add(f"{path}.tier", "must be unspecified for the GLOBAL layer")
        if ref.tenant_id:
            v.add(f"{path}.tenant_id", "must be empty for the GLOBAL layer")
        return GLOBAL_LAYER
    if kind == config_pb2.CONFIG_LAYER_KIND_TENANT:
        before = len(v.items)
        validation.check_safe_id(v, f"{path}.tenant_id", ref.tenant_id)
        if ref.tier:
            v.add(f"{path}.tier", "must be unspecified for a TENANT layer")
        return tenant_layer(ref.tenant_id) if len(v.items) == before else ""
    v.add(f"{path}.kind", "must be TIER_DEFAULTS, GLOBAL or TENANT")
    return ""


def layer_to_pb(layer: str) -> config_pb2.ConfigLayerRef:
    kind, name = parse_layer(layer)
    if kind == "tier":
        return config_pb2.ConfigLayerRef(
            kind=config_pb2.CONFIG_LAYER_KIND_TIER_DEFAULTS, tier=TIER_VALUES[name]
        )
    if kind == "tenant":
        return config_pb2.ConfigLayerRef(kind=config_pb2.CONFIG_LAYER_KIND_TENANT, tenant_id=name)
    return config_pb2.ConfigLayerRef(kind=config_pb2.CONFIG_LAYER_KIND_GLOBAL)


def values_dict_from_pb(m: config_pb2.ConfigValues) -> dict[str, Any]:
    """The dict form of a layer's values (only what the message sets)."""
    out: dict[str, Any] = {}
    for f in TYPED_FIELDS:
        section = getattr(m, f.section)
        if m.HasField(f.section) and section.HasField(f.name):
            out.setdefault(f.section, {})[f.name] = getattr(section, f.name)
    if m.features.flags:
        out.setdefault("features", {})["flags"] = dict(m.features.flags)
    if m.HasField("settings"):
        out["settings"] = json_format.MessageToDict(m.settings)
    return out


def values_from_pb(m: config_pb2.ConfigValues, path: str = "values") -> ConfigValues:
    """Parsed and validated; InvalidArgument names every bad field under ``path``."""
    return ConfigValues.from_dict(values_dict_from_pb(m), path=path)


def values_to_pb(values: ConfigValues) -> config_pb2.ConfigValues:
    out = config_pb2.ConfigValues()
    for f in TYPED_FIELDS:
        value = values.fields.get(f.path)
        if value is not None:
            setattr(getattr(out, f.section), f.name, value)
    for name, flag in values.flags.items():
        out.features.flags[name] = flag
    if values.settings:
        out.settings.update(dict(values.settings))
    return out


def stored_layer_to_pb(stored: StoredLayer) -> config_pb2.ConfigLayer:
    out = config_pb2.ConfigLayer(
        layer=layer_to_pb(stored.layer),
        version=stored.version,
        values=values_to_pb(stored.values),
        updated_by=stored.updated_by,
        restored_version=stored.restored_version,
        comment=stored.comment,
        revision=stored.revision,
    )
    if stored.updated_at:
        out.updated_at.FromNanoseconds(int(stored.updated_at * 1e9))
    return out


class ValuesCache:
    """Messages of merged values, built once per ConfigValues object: the domain
    shares one object among every tenant merged from the same layers."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        # id -> (the object, kept so its id is not reused; its message)
        self._items: dict[int, tuple[ConfigValues, config_pb2.ConfigValues]] = {}

    def get(self, values: ConfigValues) -> config_pb2.ConfigValues:
        hit = self._items.get(id(values))
        if hit is not None and hit[0] is values:
            return hit[1]
        if len(self._items) >= self._capacity:
            self._items.clear()
        message = values_to_pb(values)
        self._items[id(values)] = (values, message)
        return message


def merged_to_pb(merged: MergedConfig, cache: ValuesCache | None = None) -> config_pb2.TenantConfig:
    return config_pb2.TenantConfig(
        tenant_id=merged.tenant_id,
        tier=TIER_VALUES[merged.tier],
        tier_source=_TIER_SOURCES[merged.tier_source],
        values=cache.get(merged.values) if cache is not None else values_to_pb(merged.values),
        tier_defaults_version=merged.tier_defaults_version,
        global_version=merged.global_version,
        tenant_version=merged.tenant_version,
        revision=merged.revision,
    )


def _version_token(token: str) -> int:
    """The version a page starts below (0: the first page)."""
    position = decode_page_token("before", token)
    if position and (not position.isdigit() or int(position) <= 0):
        raise InvalidArgument.single("page_token", "is not a token this hub issued")
    return int(position or 0)


def _check_comment(v: Violations, comment: str) -> None:
    if len(comment.encode()) > MAX_COMMENT:
        v.add("comment", f"must be at most {MAX_COMMENT} bytes")


def _check_expected(v: Violations, request: Any) -> int | None:
    if not request.HasField("expected_version"):
        return None
    if request.expected_version < 0:
        v.add("expected_version", "must not be negative")
    return int(request.expected_version)


# -- the servicer -----------------------------------------------------------------


class ConfigLayers(Protocol):
    """What the servicer uses of the config layers (hub_server.config.service.Configs)."""

    @property
    def revision(self) -> int: ...
    @property
    def layers_revision(self) -> int: ...
    def ensure_live(self) -> None: ...
    def layer(self, layer: str) -> StoredLayer: ...
    def merged(self, tenant_id: str, header_tier: str) -> MergedConfig: ...
    def subscribe(self, tenant_id: str, header_tier: str) -> ConfigSubscription: ...
    async def history(self, layer: str) -> tuple[list[StoredLayer], int]: ...
    async def set_layer(
        self,
        layer: str,
        values: ConfigValues,
        *,
        expected_version: int | None = None,
        user: str = "",
        comment: str = "",
    ) -> StoredLayer: ...
    async def rollback(
        self,
        layer: str,
        version: int,
        *,
        expected_version: int | None = None,
        user: str = "",
        comment: str = "",
    ) -> StoredLayer: ...


class ConfigServicer(config_pb2_grpc.ConfigServiceServicer):
    def __init__(self, configs: ConfigLayers, hub_id: str, *, progress_interval: float = 10.0):
        self._configs = configs
        self._hub_id = hub_id
        self.progress_interval = progress_interval
        self._values_pb = ValuesCache()

    async def GetTenantConfig(self, request, context):
        v = Violations()
        validation.check_safe_id(v, "tenant_id", request.tenant_id, required=False)
        v.raise_if_any()
        self._configs.ensure_live()
        merged = self._configs.merged(request.tenant_id, current().subscription_tier)
        return config_pb2.GetTenantConfigResponse(
            header=response_header(self._hub_id, self._configs.revision),
            config=merged_to_pb(merged, self._values_pb),
        )

    async def GetConfigLayer(self, request, context):
        v = Violations()
        layer = layer_from_pb(v, "layer", request.layer)
        v.raise_if_any()
        self._configs.ensure_live()
        return config_pb2.GetConfigLayerResponse(
            header=response_header(self._hub_id, self._configs.layers_revision),
            layer=stored_layer_to_pb(self._configs.layer(layer)),
        )

    @audited
    async def SetConfigLayer(self, request, context):
        v = Violations()
        layer = layer_from_pb(v, "layer", request.layer)
        audit_note(target=f"config/{layer}")
        expected = _check_expected(v, request)
        _check_comment(v, request.comment)
        v.raise_if_any()
        values = values_from_pb(request.values)
        stored = await self._configs.set_layer(
            layer,
            values,
            expected_version=expected,
            user=current().user_id,
            comment=request.comment,
        )
        audit_note(version_before=stored.version - 1, version_after=stored.version)
        return config_pb2.SetConfigLayerResponse(
            header=response_header(self._hub_id, stored.revision), layer=stored_layer_to_pb(stored)
        )

    async def ListConfigVersions(self, request, context):
        v = Violations()
        layer = layer_from_pb(v, "layer", request.layer)
        if not 0 <= request.page_size <= MAX_PAGE:
            v.add("page_size", f"must be between 0 and {MAX_PAGE}")
        v.raise_if_any()
        before = _version_token(request.page_token)
        size = request.page_size or DEFAULT_PAGE
        versions, revision = await self._configs.history(layer)
        if before:
            versions = [s for s in versions if s.version < before]
        page, rest = versions[:size], versions[size:]
        return config_pb2.ListConfigVersionsResponse(
            header=response_header(self._hub_id, revision),
            versions=[stored_layer_to_pb(s) for s in page],
            next_page_token=encode_page_token("before", str(page[-1].version)) if rest else "",
        )

    @audited
    async def RollbackConfig(self, request, context):
        v = Violations()
        layer = layer_from_pb(v, "layer", request.layer)
        audit_note(target=f"config/{layer}", restored_version=request.version)
        if request.version < 1:
            v.add("version", "must be at least 1")
        expected = _check_expected(v, request)
        _check_comment(v, request.comment)
        v.raise_if_any()
        stored = await self._configs.rollback(
            layer,
            request.version,
            expected_version=expected,
            user=current().user_id,
            comment=request.comment,
        )
        audit_note(version_before=stored.version - 1, version_after=stored.version)
        return config_pb2.RollbackConfigResponse(
            header=response_header(self._hub_id, stored.revision), layer=stored_layer_to_pb(stored)
        )

    def _message(self, state: ConfigState, kind: int) -> bytes:
        """Built and serialized once per state and kind, however many streams send
        it (WatchConfig's response serializer passes bytes through)."""
        if state.cache is None:
            state.cache = {}
        message = state.cache.get(kind)
        if message is None:
            message = state.cache[kind] = config_pb2.WatchConfigResponse(
                header=response_header(self._hub_id, state.revision),
                kind=kind,
                config=merged_to_pb(state.config, self._values_pb),
            ).SerializeToString()
        return message

    async def WatchConfig(self, request, context) -> AsyncIterator[config_pb2.WatchConfigResponse]:
        v = Violations()
        validation.check_safe_id(v, "tenant_id", request.tenant_id, required=False)
        if request.start_revision < 0:
            v.add("start_revision", "must not be negative")
        v.raise_if_any()
        # Not rpc.streaming.watch_stream, on purpose: WatchConfig pushes a whole
        # recomputed config, and a write must wake only the streams whose view it
        # changes (subscriptions grouped by view). On the shared log every config
        # write woke every stream: 10-25x the hub CPU for writes nobody watches
        # (200 writes, 1,000 watchers on 1,000 tenants: 0.4 s -> 7-10 s), and a
        # merge with the tenants log added a fence per write.
        subscription = self._configs.subscribe(request.tenant_id, current().subscription_tier)
        with counted():  # a watch stream like the others (gauge, GetSystemMetrics)
            try:
                state = subscription.state()
                last = state.config
                if request.start_revision == 0:
                    yield self._message(state, SNAPSHOT)
                elif state.config.revision >= request.start_revision:
                    # Changed since the watcher's resume point.
                    yield self._message(state, EVENTS)
                last_sent = time.monotonic()
                while True:
                    await subscription.wait(state.generation, self.progress_interval)
                    state = subscription.state()
                    if state.config != last:
                        yield self._message(state, EVENTS)
                        last = state.config
                        last_sent = time.monotonic()
                    elif time.monotonic() - last_sent >= self.progress_interval:
                        yield config_pb2.WatchConfigResponse(
                            header=response_header(self._hub_id, self._configs.revision),
                            kind=PROGRESS,
                        )
                        last_sent = time.monotonic()
            except asyncio.CancelledError:
                log.debug("config watch cancelled by the client")
                raise
            finally:
                subscription.close()
