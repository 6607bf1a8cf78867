"""The config watch behind ``HubClient.watch_config``: resumes by revision after
any disconnect or hub restart, and yields a merged config only when it differs
from the last one yielded (so a resume that repeats the current config is silent)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aitrading.hub.v1 import config_pb2, registry_pb2

from hub_client._private.models import TenantConfig
from hub_client._private.resume import resume_watch

if TYPE_CHECKING:
    from hub_client._private.client import HubClient

log = logging.getLogger(__name__)

_CONFIG_KINDS = (registry_pb2.WATCH_RESPONSE_KIND_SNAPSHOT, registry_pb2.WATCH_RESPONSE_KIND_EVENTS)


async def watch_config(
    client: HubClient, tenant_id: str, start_revision: int
) -> AsyncIterator[TenantConfig]:
    last: TenantConfig | None = None

    def open_stream(start: int) -> Any:  # 0: start with the current config
        return client.config_stub.WatchConfig(
            config_pb2.WatchConfigRequest(tenant_id=tenant_id, start_revision=start),
            metadata=client.context.metadata(),
            wait_for_ready=True,
        )

    stream = resume_watch(open_stream, start_revision=start_revision)
    async with contextlib.aclosing(stream):
        async for resp in stream:
            if resp.kind in _CONFIG_KINDS:
                config = TenantConfig.from_pb(resp.config)
                if config != last:
                    last = config
                    yield config
