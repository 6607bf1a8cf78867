"""The one implementation of every Watch stream: a snapshot (or a resume point),
then changes read from a mirror's log at the stream's own pace, PROGRESS when
idle, RESYNC_REQUIRED when the stream fell behind what the log keeps."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from aitrading.hub.v1 import registry_pb2

from hub_server.domain.errors import InvalidArgument
from hub_server.domain.event_log import EventLog
from hub_server.store.mirror import Change

log = logging.getLogger(__name__)

SNAPSHOT = registry_pb2.WATCH_RESPONSE_KIND_SNAPSHOT
EVENTS = registry_pb2.WATCH_RESPONSE_KIND_EVENTS
PROGRESS = registry_pb2.WATCH_RESPONSE_KIND_PROGRESS
RESYNC_REQUIRED = registry_pb2.WATCH_RESPONSE_KIND_RESYNC_REQUIRED

SNAPSHOT_CHUNK = 500

# Watch streams this process serves now (a gauge).
open_streams = 0

M = TypeVar("M")  # what a stream sends per item (an Instance, an InstanceHealth, ...)
# Builds one response: (kind, items, revision, more, compact_revision) -> message.
Respond = Callable[[int, list[M], int, bool, int], Any]


async def watch_stream(
    log_: EventLog[Change[Any]],
    *,
    start_revision: int,
    snapshot: Callable[[], tuple[list[M], int]],
    select: Callable[[Change[Any]], M | None],
    respond: Respond[M],
    progress_interval: float,
) -> AsyncIterator[Any]:
    """Yields the responses of one watch.

    ``snapshot`` returns the current items and the revision they reflect (it must
    not await, so they are consistent); ``select`` turns a change into the item to
    send, or None to skip it.
    """
    global open_streams
    if start_revision < 0:
        raise InvalidArgument.single("start_revision", "must not be negative")
    open_streams += 1
    try:
        if start_revision == 0:
            items, cursor = snapshot()
            for i in range(0, max(len(items), 1), SNAPSHOT_CHUNK):
                more = i + SNAPSHOT_CHUNK < len(items)
                yield respond(SNAPSHOT, items[i : i + SNAPSHOT_CHUNK], cursor, more, 0)
        else:
            cursor = start_revision - 1
        last_sent = time.monotonic()
        while True:
            await log_.wait(cursor, progress_interval)
            changes = log_.since(cursor)
            head = log_.head
            if changes is None:
                yield respond(RESYNC_REQUIRED, [], head, False, log_.complete_after + 1)
                return
            # One message for everything new, so that a revision is never split
            # across messages and header.revision is always a safe resume point.
            selected = [m for m in map(select, changes) if m is not None]
            cursor = max(cursor, head)
            if selected:
                yield respond(EVENTS, selected, head, False, 0)
                last_sent = time.monotonic()
            elif time.monotonic() - last_sent >= progress_interval:
                yield respond(PROGRESS, [], cursor, False, 0)
                last_sent = time.monotonic()
    except asyncio.CancelledError:
        log.debug("watch stream cancelled by the client")
        raise
    finally:
        open_streams -= 1
