"""Configuration: a tenant's merged config, the layers it is merged from and
their versions, and the config watch, which resumes by revision after any
disconnect or hub restart and yields a merged config only when it differs from
the last one yielded (so a resume that repeats the current config is silent)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aitrading.hub.v1 import config_pb2, registry_pb2
from google.protobuf import json_format

from hub_client._private import to_pb
from hub_client._private.errors import invalid_argument
from hub_client._private.models import ConfigLayer, TenantConfig
from hub_client._private.resume import each_within, resume_watch
from hub_client._private.transport import Transport

log = logging.getLogger(__name__)

_CONFIG_KINDS = (registry_pb2.WATCH_RESPONSE_KIND_SNAPSHOT, registry_pb2.WATCH_RESPONSE_KIND_EVENTS)


def _layer_ref(layer: str) -> config_pb2.ConfigLayerRef:
    """``global``, ``tier/<tier>`` or ``tenant/<tenant id>``."""
    kind, _, name = layer.partition("/")
    if layer == "global":
        return config_pb2.ConfigLayerRef(kind=config_pb2.CONFIG_LAYER_KIND_GLOBAL)
    if kind == "tier" and name:
        return config_pb2.ConfigLayerRef(
            kind=config_pb2.CONFIG_LAYER_KIND_TIER_DEFAULTS, tier=to_pb.tier(name, "layer")
        )
    if kind == "tenant" and name:
        return config_pb2.ConfigLayerRef(kind=config_pb2.CONFIG_LAYER_KIND_TENANT, tenant_id=name)
    raise invalid_argument(
        "layer", f"unknown config layer {layer!r}: 'global', 'tier/<tier>' or 'tenant/<id>'"
    )


class ConfigClient:
    """The ConfigService calls; ``tenant`` None means this client's tenant."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def config(self, tenant: str | None, *, timeout: float | None = None) -> TenantConfig:
        t = self._transport
        resp = await t.call(
            t.config_stub.GetTenantConfig,
            config_pb2.GetTenantConfigRequest(tenant_id=t.tenant(tenant)),
            timeout=timeout,
        )
        return TenantConfig.from_pb(resp.config)

    def watch_config(
        self, tenant: str | None, *, start_revision: int, timeout: float | None = None
    ) -> AsyncIterator[TenantConfig]:
        tenant_id = self._transport.tenant(tenant)
        configs = watch_config(self._transport, tenant_id, start_revision)
        return each_within(configs, timeout, f"watch_config {tenant_id!r}")

    async def config_layer(self, layer: str, *, timeout: float | None = None) -> ConfigLayer:
        t = self._transport
        resp = await t.call(
            t.config_stub.GetConfigLayer,
            config_pb2.GetConfigLayerRequest(layer=_layer_ref(layer)),
            timeout=timeout,
        )
        return ConfigLayer.from_pb(resp.layer)

    async def set_config_layer(
        self,
        layer: str,
        values: Mapping[str, Any],
        *,
        expected_version: int | None,
        comment: str,
        timeout: float | None = None,
    ) -> ConfigLayer:
        try:
            pb_values = json_format.ParseDict(dict(values), config_pb2.ConfigValues())
        except json_format.ParseError as e:
            raise invalid_argument("values", f"bad config values: {e}") from None
        request = config_pb2.SetConfigLayerRequest(
            layer=_layer_ref(layer), values=pb_values, comment=comment
        )
        if expected_version is not None:
            request.expected_version = expected_version
        resp = await self._transport.call(
            self._transport.config_stub.SetConfigLayer, request, timeout=timeout
        )
        return ConfigLayer.from_pb(resp.layer)

    async def config_versions(
        self, layer: str, *, timeout: float | None = None
    ) -> list[ConfigLayer]:
        t = self._transport
        budget = t.budget(timeout)  # for all pages together
        out: list[ConfigLayer] = []
        token = ""
        while True:
            resp = await t.call(
                t.config_stub.ListConfigVersions,
                config_pb2.ListConfigVersionsRequest(
                    layer=_layer_ref(layer), page_size=1000, page_token=token
                ),
                timeout=budget.left(),
            )
            out.extend(ConfigLayer.from_pb(m) for m in resp.versions)
            token = resp.next_page_token
            if not token:
                return out

    async def rollback_config(
        self,
        layer: str,
        version: int,
        *,
        expected_version: int | None,
        comment: str,
        timeout: float | None = None,
    ) -> ConfigLayer:
        request = config_pb2.RollbackConfigRequest(
            layer=_layer_ref(layer), version=version, comment=comment
        )
        if expected_version is not None:
            request.expected_version = expected_version
        resp = await self._transport.call(
            self._transport.config_stub.RollbackConfig, request, timeout=timeout
        )
        return ConfigLayer.from_pb(resp.layer)


async def watch_config(
    transport: Transport, tenant_id: str, start_revision: int
) -> AsyncIterator[TenantConfig]:
    last: TenantConfig | None = None

    def open_stream(start: int) -> Any:  # 0: start with the current config
        return transport.open_stream(
            transport.config_stub.WatchConfig,
            config_pb2.WatchConfigRequest(tenant_id=tenant_id, start_revision=start),
        )

    stream = resume_watch(open_stream, start_revision=start_revision)
    async with contextlib.aclosing(stream):
        async for resp in stream:
            if resp.kind in _CONFIG_KINDS:
                config = TenantConfig.from_pb(resp.config)
                if config != last:
                    last = config
                    yield config
