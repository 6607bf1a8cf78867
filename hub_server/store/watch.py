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
import uuid
from collections.abc import Awaitable, Callable

import grpc
from aetcd import rpc

from hub_server.store.etcd import EtcdStore, Event, decode_event, prefix_end

log = logging.getLogger(__name__)

# Receives the events of one etcd watch response (possibly none: only fences)
# and the revision the watch is now complete up to.
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


FENCE = b"_fence/"


class PrefixWatch:
    """Follows every change under a prefix from ``start_revision`` on, forever.

    ``barrier()`` answers "has the watch delivered everything written so far?":
    it writes a fence key under the prefix and waits for the watch to deliver it.
    (etcd 3.5's requested progress notifications can overtake events, so they
    cannot answer that; a fence can, because one watch delivers in revision order.)
    Fence keys start with ``_``, which no name the hub stores may start with, and
    never reach ``on_batch``.
    """

    def __init__(
        self,
        store: EtcdStore,
        prefix: bytes,
        *,
        on_batch: BatchHandler,
        on_compacted: CompactedHandler,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self._store = store
        self._prefix = prefix
        self._on_batch = on_batch
        self._on_compacted = on_compacted
        self._on_state = on_state or (lambda live: None)
        self._task: asyncio.Task[None] | None = None
        self._fences: dict[bytes, asyncio.Future[int]] = {}
        self.next_revision = 0

    def start(self, start_revision: int) -> None:
        self.next_revision = start_revision
        self._task = asyncio.create_task(self._run(), name=f"watch {self._prefix!r}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def barrier(self, timeout: float = 10.0) -> int:
        """Returns once every change made before the call has been delivered;
        returns the revision of the fence."""
        key = self._prefix + FENCE + uuid.uuid4().hex.encode()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._fences[key] = fut
        try:
            await self._store.put(key, b"")
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._fences.pop(key, None)
            with contextlib.suppress(Exception):
                await self._store.delete(key)

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            call = self._store.open_watch()
            try:
                await call.write(_create_request(self._prefix, self.next_revision))
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        raise ConnectionError("watch stream ended")
                    if resp.compact_revision:
                        self.next_revision = await self._on_compacted(resp.compact_revision)
                        break  # re-watch from the revision the owner chose
                    if resp.canceled:
                        # With etcd authentication, a token it stopped accepting
                        # reads "permission denied" here: a new one for the retry.
                        await self._store.renew_token()
                        raise ConnectionError(f"watch cancelled: {resp.cancel_reason}")
                    if resp.created:
                        self._on_state(True)
                        backoff = 0.05
                        continue
                    if resp.events:
                        await self._deliver([decode_event(e) for e in resp.events])
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._on_state(False)
                log.info(
                    "etcd watch on %r failed (%r); resuming from %d",
                    self._prefix,
                    e,
                    self.next_revision,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                call.cancel()

    async def _deliver(self, events: list[Event]) -> None:
        revision = events[-1].revision
        fence_start = self._prefix + FENCE
        fences = [e for e in events if e.kv.key.startswith(fence_start)]
        if fences:
            events = [e for e in events if not e.kv.key.startswith(fence_start)]
        await self._on_batch(events, revision)
        self.next_revision = revision + 1
        for e in fences:
            fut = self._fences.get(e.kv.key)
            if fut is not None and not fut.done() and e.kind == "put":
                fut.set_result(e.revision)
