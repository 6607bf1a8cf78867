"""The one resuming loop behind every hub watch stream the client follows
(registry, config, deployments, directives, circuits; hubctl's too, through
``hub_client.resume_watch``).

A stream is reopened from the last revision it delivered + 1 after a
retryable error *and* after the hub ends it normally (a replica stopping, a
leader change); a RESYNC_REQUIRED starts over from 0 (a fresh snapshot). Every
reopen waits a jittered, exponentially growing delay that drops back to the
first step only once the stream made progress (delivered a newer revision), so a
hub that keeps ending the stream is never hammered in a tight loop. Any status
outside ``RETRYABLE`` ends the loop with its typed ``HubError``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

import grpc
from aitrading.hub.v1 import registry_pb2

from hub_client._private.errors import channel_closed, deadline_exceeded, from_rpc_error

log = logging.getLogger(__name__)

# Statuses after which reopening the stream makes sense; anything else (a bad
# request, a missing permission, an unknown id) is reported to the caller.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)

FIRST_DELAY = 0.1
MAX_DELAY = 5.0


class Backoff:
    """Exponential delays from ``first`` to ``cap``, each drawn from
    [delay/2, delay] so that many clients do not reopen in step."""

    def __init__(self, first: float = FIRST_DELAY, cap: float = MAX_DELAY) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def reset(self) -> None:
        self._next = self.first

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(delay * 2, self.cap)
        return random.uniform(delay / 2, delay)

    async def wait(self) -> None:
        await asyncio.sleep(self.next_delay())


class _WatchResponse(Protocol):
    kind: int

    @property
    def header(self) -> Any: ...


M = TypeVar("M", bound=_WatchResponse)
T = TypeVar("T")


async def each_within(
    items: AsyncIterator[T], timeout: float | None, what: str
) -> AsyncGenerator[T, None]:
    """``items``, failing with DeadlineExceeded when the next one takes longer
    than ``timeout`` seconds (None: wait as long as it takes). A watch's
    ``timeout=``: the stream itself has no end, each wait for news does."""
    try:
        while True:
            try:
                item = await asyncio.wait_for(anext(items), timeout)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise deadline_exceeded(what, timeout or 0.0) from None
            yield item
    finally:
        close = getattr(items, "aclose", None)
        if close is not None:
            await close()


async def resume_watch(
    open_stream: Callable[[int], AsyncIterator[M]],
    *,
    start_revision: int = 0,
    on_interrupt: Callable[[str], None] | None = None,
    backoff: Backoff | None = None,
) -> AsyncGenerator[M, None]:
    """Every message of a hub watch stream, across reopenings.

    ``open_stream(start_revision)`` opens the stream (a grpc.aio call or any
    async iterator of messages with ``kind`` and ``header.revision``). A
    RESYNC_REQUIRED message is yielded too (so the caller can drop what it
    knows) before the stream is reopened from 0. ``on_interrupt`` is told why
    each reopen happens. Raises the typed ``HubError`` of a non-retryable status.
    """
    backoff = backoff or Backoff()
    start = start_revision
    seen = -1  # the newest revision delivered: progress resets the backoff
    while True:
        call: AsyncIterator[M] | None = open_stream(start)
        assert call is not None
        why = "the hub ended the stream"
        try:
            async for msg in call:
                revision = msg.header.revision
                if revision > seen:
                    seen = revision
                    backoff.reset()
                yield msg
                if msg.kind == registry_pb2.WATCH_RESPONSE_KIND_RESYNC_REQUIRED:
                    start = 0
                    why = "history compacted; resyncing"
                    break
                if not getattr(msg, "more", False):  # mid-snapshot: resume from its start
                    start = revision + 1
        except grpc.aio.AioRpcError as e:
            if e.code() not in RETRYABLE:
                raise from_rpc_error(e) from None
            why = e.code().name
        except asyncio.CancelledError:
            if channel_closed() is None:
                raise
            why = "the channel was closed"
        finally:
            cancel = getattr(call, "cancel", None)
            if cancel is not None:
                cancel()
            # No reference to the call (and through it the channel) while waiting.
            call = cancel = None
        log.debug("watch interrupted (%s); resuming from %d", why, start)
        if on_interrupt is not None:
            on_interrupt(why)
        await backoff.wait()
