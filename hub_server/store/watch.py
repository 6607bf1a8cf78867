"""Prefix watches that survive etcd restarts and compaction.

aetcd drops a watch when its stream fails. Here the watch remembers the revision
it has delivered up to and re-watches from the next one after any failure, so no
event is lost or repeated. When etcd answers that the revision was compacted,
the owner resyncs (lists the prefix, diffs) and says where to continue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import grpc
from aetcd import rpc

from hub_server.store.etcd import EtcdStore, Event, decode_event, prefix_end

log = logging.getLogger(__name__)

# Receives the events of one etcd watch response (possibly none: a progress
# notification) and the revision the watch is now complete up to.
BatchHandler = Callable[[list[Event], int], Awaitable[None]]
# Told the compact revision; resyncs and returns the revision to watch from next.
CompactedHandler = Callable[[int], Awaitable[int]]


def _create_request(prefix: bytes, start_revision: int) -> rpc.WatchRequest:
    return rpc.WatchRequest(
        create_request=rpc.WatchCreateRequest(
            key=prefix,
            range_end=prefix_end(prefix),
            start_revision=start_revision,
            prev_kv=True,
        )
    )


_PROGRESS_REQUEST = rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())


class PrefixWatch:
    """Follows every change under a prefix from ``start_revision`` on, forever."""

    def __init__(
        self,
        store: EtcdStore,
        prefix: bytes,
        *,
        on_batch: BatchHandler,
        on_compacted: CompactedHandler,
        on_state: Callable[[bool], None] | None = None,
        progress_interval: float = 2.0,
    ) -> None:
        self._store = store
        self._prefix = prefix
        self._on_batch = on_batch
        self._on_compacted = on_compacted
        self._on_state = on_state or (lambda live: None)
        self._progress_interval = progress_interval
        self._task: asyncio.Task[None] | None = None
        self.next_revision = 0

    def start(self, start_revision: int) -> None:
        self.next_revision = start_revision
        self._task = asyncio.create_task(self._run(), name=f"watch {self._prefix!r}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            call = self._store.open_watch()
            progress: asyncio.Task[None] | None = None
            try:
                await call.write(_create_request(self._prefix, self.next_revision))
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        raise ConnectionError("watch stream ended")
                    if resp.compact_revision:
                        self.next_revision = await self._on_compacted(resp.compact_revision)
                        break  # re-watch from the resynced revision
                    if resp.canceled:
                        raise ConnectionError(f"watch cancelled: {resp.cancel_reason}")
                    if resp.created:
                        self._on_state(True)
                        backoff = 0.05
                        progress = asyncio.create_task(self._request_progress(call))
                        continue
                    await self._deliver(resp)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._on_state(False)
                log.info("etcd watch on %r failed (%r); resuming from %d", self._prefix, e,
                         self.next_revision)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                if progress is not None:
                    progress.cancel()
                call.cancel()

    async def _deliver(self, resp: rpc.WatchResponse) -> None:
        if resp.events:
            events = [decode_event(e) for e in resp.events]
            revision = events[-1].revision
        else:
            # A progress notification: nothing under the prefix up to this revision.
            revision = resp.header.revision
            if revision < self.next_revision:
                return
            events = []
        await self._on_batch(events, revision)
        self.next_revision = revision + 1

    async def _request_progress(self, call: grpc.aio.StreamStreamCall) -> None:
        """Asks etcd now and then how far the watch has got, so that idle watches
        still advance their resume point."""
        with contextlib.suppress(Exception):
            while True:
                await asyncio.sleep(self._progress_interval)
                await call.write(_PROGRESS_REQUEST)


async def read_history(
    store: EtcdStore, prefix: bytes, start: int, end: int, *, timeout: float = 10.0
) -> tuple[list[Event], int]:
    """Events under ``prefix`` with revisions in [start, end].

    Returns the events and the first revision they are complete from: ``start``,
    or later when etcd has compacted part of that range away.
    """
    events: list[Event] = []
    first = start
    if start > end:
        return events, first

    async def collect() -> None:
        nonlocal first
        while True:
            call = store.open_watch()
            try:
                await call.write(_create_request(prefix, first))
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        raise ConnectionError("watch stream ended")
                    if resp.compact_revision:
                        first = resp.compact_revision
                        events.clear()
                        break
                    if resp.created:
                        await call.write(_PROGRESS_REQUEST)
                        continue
                    if not resp.events:
                        # etcd answers progress requests only once the watch has
                        # caught up with the store, so we are done.
                        if resp.header.revision >= end:
                            return
                        await asyncio.sleep(0.01)
                        await call.write(_PROGRESS_REQUEST)
                        continue
                    for e in resp.events:
                        ev = decode_event(e)
                        if ev.revision > end:
                            return
                        events.append(ev)
                    await call.write(_PROGRESS_REQUEST)
            finally:
                call.cancel()

    await asyncio.wait_for(collect(), timeout)
    return events, first
