"""The registry watch behind ``HubClient.watch``: resumes by revision after any
disconnect, and turns a resync (history compacted) into just the difference."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from aitrading.hub.v1 import registry_pb2

from hub_client._private.errors import from_rpc_error
from hub_client._private.models import EventType, Instance, WatchEvent

if TYPE_CHECKING:
    from hub_client._private.client import HubClient

log = logging.getLogger(__name__)

# Statuses after which reconnecting makes sense; anything else is the caller's bug.
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}

Key = tuple[str, str]


async def watch_registry(
    client: HubClient, service: str, legacy_mode: bool, start_revision: int
) -> AsyncIterator[WatchEvent]:
    known: dict[Key, Instance] = {}
    next_revision = start_revision  # 0: ask for a snapshot
    backoff = 0.1
    while True:
        request = registry_pb2.WatchRequest(
            service=service, start_revision=next_revision, legacy_mode=legacy_mode
        )
        call = client.registry_stub.Watch(
            request, metadata=client.context.metadata(), wait_for_ready=True
        )
        snapshot: dict[Key, Instance] | None = {} if next_revision == 0 else None
        try:
            async for resp in call:
                backoff = 0.1
                kind = resp.kind
                if kind == registry_pb2.WATCH_RESPONSE_KIND_SNAPSHOT:
                    assert snapshot is not None
                    for m in resp.instances:
                        inst = Instance.from_pb(m)
                        snapshot[(inst.service, inst.instance_id)] = inst
                    if resp.more:
                        continue
                    for event in _diff(known, snapshot, resp.header.revision):
                        yield event
                    known, snapshot = snapshot, None
                elif kind == registry_pb2.WATCH_RESPONSE_KIND_EVENTS:
                    for m in resp.events:
                        inst = Instance.from_pb(m.instance)
                        key = (inst.service, inst.instance_id)
                        if m.type == registry_pb2.WATCH_EVENT_TYPE_REMOVED:
                            known.pop(key, None)
                        else:
                            known[key] = inst
                        yield WatchEvent(EventType(m.type), inst, m.revision)
                elif kind == registry_pb2.WATCH_RESPONSE_KIND_RESYNC_REQUIRED:
                    log.info("watch history compacted at %d; resyncing", resp.compact_revision)
                    next_revision = 0
                    break
                next_revision = resp.header.revision + 1
            else:
                await asyncio.sleep(backoff)  # the hub ended the stream: reconnect
        except grpc.aio.AioRpcError as e:
            if e.code() not in _RETRYABLE:
                raise from_rpc_error(e) from None
            log.debug("watch interrupted (%s); resuming from %d", e.code().name, next_revision)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
        finally:
            call.cancel()


def _diff(old: dict[Key, Instance], new: dict[Key, Instance], revision: int) -> list[WatchEvent]:
    """Events that turn ``old`` into ``new``; all ``initial`` on a first snapshot."""
    first = not old
    events = [
        WatchEvent(EventType.REMOVED, inst, revision) for key, inst in old.items() if key not in new
    ]
    for key, inst in new.items():
        before = old.get(key)
        if before is None:
            events.append(WatchEvent(EventType.ADDED, inst, inst.revision or revision, first))
        elif before.revision != inst.revision:
            events.append(WatchEvent(EventType.UPDATED, inst, inst.revision))
    return events
