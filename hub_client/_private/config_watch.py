"""The config watch behind ``HubClient.watch_config``: resumes by revision after
any disconnect or hub restart, and yields a merged config only when it differs
from the last one yielded (so a resume that repeats the current config is silent)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from aitrading.hub.v1 import config_pb2, registry_pb2

from hub_client._private.errors import from_rpc_error
from hub_client._private.models import TenantConfig
from hub_client._private.watch import _RETRYABLE

if TYPE_CHECKING:
    from hub_client._private.client import HubClient

log = logging.getLogger(__name__)

_CONFIG_KINDS = (registry_pb2.WATCH_RESPONSE_KIND_SNAPSHOT, registry_pb2.WATCH_RESPONSE_KIND_EVENTS)


async def watch_config(
    client: HubClient, tenant_id: str, start_revision: int
) -> AsyncIterator[TenantConfig]:
    last: TenantConfig | None = None
    next_revision = start_revision  # 0: start with the current config
    backoff = 0.1
    while True:
        request = config_pb2.WatchConfigRequest(tenant_id=tenant_id, start_revision=next_revision)
        call = client.config_stub.WatchConfig(
            request, metadata=client.context.metadata(), wait_for_ready=True
        )
        try:
            async for resp in call:
                backoff = 0.1
                if resp.kind in _CONFIG_KINDS:
                    config = TenantConfig.from_pb(resp.config)
                    if config != last:
                        last = config
                        yield config
                elif resp.kind == registry_pb2.WATCH_RESPONSE_KIND_RESYNC_REQUIRED:
                    next_revision = 0
                    break
                next_revision = resp.header.revision + 1
            else:
                await asyncio.sleep(backoff)  # the hub ended the stream: reconnect
        except grpc.aio.AioRpcError as e:
            if e.code() not in _RETRYABLE:
                raise from_rpc_error(e) from None
            log.debug(
                "config watch interrupted (%s); resuming from %d", e.code().name, next_revision
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
        finally:
            call.cancel()
