"""The registry watch behind ``HubClient.watch``: resumes by revision after any
disconnect, and turns a resync (history compacted) into just the difference."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aitrading.hub.v1 import registry_pb2

from hub_client._private.models import EventType, Instance, WatchEvent
from hub_client._private.resume import resume_watch

if TYPE_CHECKING:
    from hub_client._private.client import HubClient

log = logging.getLogger(__name__)

Key = tuple[str, str]


async def watch_registry(
    client: HubClient, service: str, legacy_mode: bool, start_revision: int
) -> AsyncIterator[WatchEvent]:
    known: dict[Key, Instance] = {}
    snapshot: dict[Key, Instance] | None = None

    def open_stream(start: int) -> Any:
        nonlocal snapshot
        snapshot = {} if start == 0 else None  # 0: the hub starts with a snapshot
        return client.registry_stub.Watch(
            registry_pb2.WatchRequest(
                service=service, start_revision=start, legacy_mode=legacy_mode
            ),
            metadata=client.context.metadata(),
            wait_for_ready=True,
        )

    stream = resume_watch(open_stream, start_revision=start_revision)
    async with contextlib.aclosing(stream):
        async for resp in stream:
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
