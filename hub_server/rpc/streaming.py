"""The one implementation of every Watch stream: a snapshot (or a resume point),
then changes read from a mirror's log at the stream's own pace, PROGRESS when
idle, RESYNC_REQUIRED when the stream fell behind what the log keeps."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from bisect import bisect_right
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from typing import Any, TypeVar

import grpc
from aitrading.hub.v1 import registry_pb2

from hub_server.kernel.errors import InvalidArgument
from hub_server.rpc.wrapping import WrappingServer, replaced
from hub_server.store.event_log import EventLog
from hub_server.store.mirror import Change
from hub_server.store.waiters import Waiters

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

_MISSING = object()


class MergedLog:
    """Several mirrors' logs read by one watch as one log, in revision order.

    All mirrors follow one etcd, so revisions are comparable, but each has its
    own etcd watch: a log is known complete only up to its own head. The merged
    log therefore reaches only the lowest head, and when a log is ahead with
    events the others may precede, it asks the others to catch up (``advance``,
    a mirror's barrier) rather than wait for a change they may never have.
    Offers what ``watch_stream`` reads of an :class:`EventLog`; ``notify`` must
    be called on every change of any of the logs (a mirror listener).
    """

    RETRY_AFTER = 1.0  # after a failed catch-up (etcd unreachable)
    # A catch-up is a fence (two etcd writes) that also wakes every stream of the
    # lagging log: at most one per log every 50 ms, however busy the other log.
    # Costs a waiting watcher at most that much extra delay.
    SPACING = 0.05

    def __init__(
        self,
        logs: list[EventLog[Change[Any]]],
        advance: list[Callable[[], Awaitable[Any]]],
    ) -> None:
        self._logs = logs
        self._advance = advance
        self._catching_up: list[asyncio.Task[None] | None] = [None] * len(logs)
        self._retry_at = 0.0
        self._waiters = Waiters()
        self._built_at: tuple[tuple[int, int, int], ...] = ()
        self._built: dict[Any, Any] = {}

    @property
    def head(self) -> int:
        return min(log_.head for log_ in self._logs)

    @property
    def complete_after(self) -> int:
        return max(log_.complete_after for log_ in self._logs)

    @property
    def at_head(self) -> dict[Any, Any]:
        state = tuple((log_.head, len(log_), log_.complete_after) for log_ in self._logs)
        if state != self._built_at:
            self._built_at, self._built = state, {}
        return self._built

    def since(self, after: int) -> list[Change[Any]] | None:
        head = self.head
        parts = []
        for log_ in self._logs:
            changes = log_.since(after)
            if changes is None:
                return None
            parts.append(changes[: bisect_right(changes, head, key=_revision)])
        return list(heapq.merge(*parts, key=_revision))

    def notify(self, *_: Any) -> None:
        self._waiters.wake_all()

    async def wait(self, after: int, timeout: float) -> None:
        head = self.head
        if head > after:
            return
        if any(log_.head > head and log_.since(head) for log_ in self._logs):
            self._catch_up(max(log_.head for log_ in self._logs))
        await self._waiters.wait(timeout)

    async def settle(self, rounds: int = 3) -> None:
        """Catches the logs up where one is ahead with events, so that a snapshot
        taken next (at ``head``) is not followed by many changes it already shows."""
        for _ in range(rounds):
            head = self.head
            if not any(log_.head > head and log_.since(head) for log_ in self._logs):
                return
            self._catch_up(max(log_.head for log_ in self._logs))
            tasks = [t for t in self._catching_up if t is not None]
            if not tasks:
                return
            await asyncio.wait(tasks)  # never cancels them: other streams share them

    def _catch_up(self, target: int) -> None:
        if time.monotonic() < self._retry_at:
            return
        for i, log_ in enumerate(self._logs):
            if log_.head < target and self._catching_up[i] is None:
                self._catching_up[i] = asyncio.create_task(self._advance_one(i))

    async def _advance_one(self, i: int) -> None:
        started = time.monotonic()
        try:
            await self._advance[i]()
        except Exception as e:
            log.debug("catching up a merged log failed: %r", e)
            self._retry_at = time.monotonic() + self.RETRY_AFTER
        self.notify()
        try:
            await asyncio.sleep(self.SPACING - (time.monotonic() - started))
        finally:
            self._catching_up[i] = None
            self.notify()  # a watcher still behind asks for the next catch-up


def _revision(change: Change[Any]) -> int:
    return change.revision


@contextlib.contextmanager
def counted() -> Iterator[None]:
    """Counts one watch stream in ``open_streams`` while it is served: every
    Watch* method, ``watch_stream`` or not (WatchConfig), goes through here."""
    global open_streams
    open_streams += 1
    try:
        yield
    finally:
        open_streams -= 1


def _events(
    log_: EventLog[Change[Any]] | MergedLog,
    after: int,
    head: int,
    select: Callable[[Change[Any]], M | None],
    respond: Respond[M],
) -> Any:
    """The EVENTS response for everything after ``after`` (None: nothing to send)."""
    changes = log_.since(after) or []
    selected = [m for m in map(select, changes) if m is not None]
    return respond(EVENTS, selected, head, False, 0) if selected else None


async def watch_stream(
    log_: EventLog[Change[Any]] | MergedLog,
    *,
    start_revision: int,
    snapshot: Callable[[], tuple[list[M], int]],
    select: Callable[[Change[Any]], M | None],
    respond: Respond[M],
    progress_interval: float,
    share: Hashable | None = None,
) -> AsyncIterator[Any]:
    """Yields the responses of one watch.

    ``snapshot`` returns the current items and the revision they reflect (it must
    not await, so they are consistent); ``select`` turns a change into the item to
    send, or None to skip it.

    ``share``: a key that names everything ``select`` and ``respond`` depend on
    besides the log (the kind of stream and its filter). Streams with the same key
    at the same cursor send the same EVENTS response for the same head: it is
    selected, built and serialized once (kept in the log's ``at_head``) and every
    such stream yields those bytes, so its method needs a response serializer
    that passes bytes through (``sends_bytes``). None: each stream builds its own.
    """
    if start_revision < 0:
        raise InvalidArgument.single("start_revision", "must not be negative")
    with counted():
        try:
            if start_revision == 0:
                items, cursor = snapshot()
                for i in range(0, max(len(items), 1), SNAPSHOT_CHUNK):
                    more = i + SNAPSHOT_CHUNK < len(items)
                    message = respond(SNAPSHOT, items[i : i + SNAPSHOT_CHUNK], cursor, more, 0)
                    # As bytes where bytes pass: grpc and the wrappers around this
                    # generator hold the last message sent until the next one.
                    yield message if share is None else message.SerializeToString()
                    del message
                # The frame lives as long as the stream: what it holds between
                # messages is held once per stream (a snapshot's copies, ~1 KiB per
                # instance).
                del items
            else:
                cursor = start_revision - 1
            last_sent = time.monotonic()
            while True:
                await log_.wait(cursor, progress_interval)
                head = log_.head
                if cursor < log_.complete_after:  # what it has not sent is gone
                    yield respond(RESYNC_REQUIRED, [], head, False, log_.complete_after + 1)
                    return
                # One message for everything new, so that a revision is never split
                # across messages and header.revision is always a safe resume point.
                if share is None:
                    events = _events(log_, cursor, head, select, respond)
                else:
                    built = log_.at_head
                    key = (share, cursor)
                    events = built.get(key, _MISSING)
                    if events is _MISSING:
                        events = _events(log_, cursor, head, select, respond)
                        if events is not None:
                            events = events.SerializeToString()
                        built[key] = events
                cursor = max(cursor, head)
                if events is not None:
                    yield events
                    events = None
                    last_sent = time.monotonic()
                elif time.monotonic() - last_sent >= progress_interval:
                    # A resume point the store has reached: after a start_revision
                    # ahead of it, the cursor is not one.
                    yield respond(PROGRESS, [], min(cursor, head), False, 0)
                    last_sent = time.monotonic()
        except asyncio.CancelledError:
            log.debug("watch stream cancelled by the client")
            raise


def _pass_bytes(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes]:
    def serialize_unless_bytes(message: Any) -> bytes:
        if message.__class__ is bytes:
            return message
        return serialize(message) if serialize is not None else message

    return serialize_unless_bytes


def _sending_bytes(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if not handler.response_streaming:
        return handler
    return replaced(handler, response_serializer=_pass_bytes(handler.response_serializer))


def sends_bytes(server: Any) -> WrappingServer:
    """Stands for the server when a generated ``add_*Servicer_to_server`` registers
    a service whose streams yield pre-serialized responses (``watch_stream`` with
    ``share``): its server-streaming methods get a response serializer that sends
    bytes as they are (and serializes anything else as before)."""
    return WrappingServer(server, lambda method, handler: _sending_bytes(handler))
