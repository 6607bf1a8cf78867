"""What hub_client.sync runs on: the async HubClient in an event loop of its own,
on a background thread, with blocking calls into it from any thread.

Why a loop thread rather than grpc's synchronous channel: every rule of the
client (keep-alive and re-registration, watch resumption by revision, retried
allocations, the circuit cache and outcome batches, typed errors) lives once, in
the async modules, and the sync surface is generated from the async one
(scripts/gen_sync_client.py), so the two cannot drift apart. Background work
(keep-alive, watches, outcome reports) needs a thread anyway, and one loop
serves any number of calling threads: each call is handed to the loop with
``run_coroutine_threadsafe`` and its caller waits on the future, so the client
is safe to share in a threaded server and calls from many threads overlap on
one channel.

Forks (Gunicorn, Celery prefork): grpc cannot be used in a child forked while
the parent's grpc is active (the child hangs or crashes), so nothing starts
before the first call, and ``os.register_at_fork`` hooks make a fork safe:
before it, each running client closes its channel (in-flight calls see
Unavailable; keep-alive retries and watches resume on their own) and parks its
loop thread; after it, the parent's loop thread starts again and reopens the
channel on its next call, while the child leaves the parent's objects untouched
and builds its own loop thread and channel on first use (a pid check). A child
owns nothing the parent registered: its ``close()`` deregisters only what it
registered itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gc
import logging
import os
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import replace
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

from hub_client._private.circuits import CircuitGuard as AsyncCircuitGuard
from hub_client._private.client import HubClient as AsyncHubClient
from hub_client._private.models import Instance, ResourceUsage
from hub_client._private.registration import Registration as AsyncRegistration
from hub_client._private.tenants import Allocation as AsyncAllocation
from hub_client._private.transport import TenantContext

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")
H = TypeVar("H")  # an async handle
W = TypeVar("W")  # its blocking wrapper

THREAD_NAME = "hub-client-loop"
# How long a fork waits for calls cancelled by the closed channel to unwind.
_SETTLE = 0.05


class Runtime:
    """One process's event loop thread and the async HubClient running in it."""

    def __init__(self, client: AsyncHubClient) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = self._start_thread()
        # Built anywhere: its channel opens on first use, in this loop.
        self.client = client
        _RUNNING.add(self)

    def _start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.loop.run_forever, name=THREAD_NAME, daemon=True)
        thread.start()
        return thread

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs ``coro`` in the loop and waits for its result (its exception is
        raised here; interrupting the wait cancels it)."""
        if self.pid != os.getpid():
            coro.close()
            raise RuntimeError(
                f"this belongs to process {self.pid}'s HubClient; a forked process "
                "makes its own calls through the client, not through the parent's handles"
            )
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError(
                "a hub_client.sync call from its own event loop thread would wait for "
                "itself; use the async HubClient there"
            )
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop is closed
            coro.close()
            raise
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            # What was still running when the client closed (a watch being read).
            raise RuntimeError("this HubClient was closed during the call") from None
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        """Ends the loop thread (after the client was closed): what still runs in
        it (a watch another thread is reading) is cancelled, so no caller waits
        for ever."""
        _RUNNING.discard(self)
        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                self.run(_cancel_the_rest())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
        self.loop.close()

    # -- fork --------------------------------------------------------------------

    def park(self) -> None:
        """Before a fork: close the channel and stop the loop thread, so that no
        grpc is in use while the process forks."""
        with contextlib.suppress(Exception):
            self.run(_release(self.client))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()

    def unpark(self) -> None:
        """After the fork, in the parent: the loop runs again (the channel reopens
        on the next call)."""
        self.thread = self._start_thread()


async def _cancel_the_rest() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _release(client: AsyncHubClient) -> None:
    await client._transport.release_channel()
    await asyncio.sleep(_SETTLE)  # cancelled calls unwind and let go of the channel


# Runtimes with a loop thread in this process; a forked child keeps its parent's
# in _ABANDONED, never touched nor finalized (that would call into the parent's grpc).
_RUNNING: weakref.WeakSet[Runtime] = weakref.WeakSet()
_ABANDONED: list[Runtime] = []
_FORK_LOCK = threading.Lock()


def _before_fork() -> None:
    _FORK_LOCK.acquire()
    me = threading.current_thread()
    parked = [
        r
        for r in list(_RUNNING)
        if r.pid == os.getpid() and r.thread.is_alive() and r.thread is not me
    ]
    for runtime in parked:
        runtime.park()
    if parked:
        gc.collect()  # the closed channels' last references: grpc's poller stops with them
        if any("_poll_wrapper" in t.name for t in threading.enumerate()):
            log.warning(
                "gRPC is still in use in process %d (another channel or server): "
                "a forked child cannot use gRPC",
                os.getpid(),
            )
    _PARKED[:] = parked


def _after_fork_in_parent() -> None:
    for runtime in _PARKED:
        runtime.unpark()
    _PARKED.clear()
    _FORK_LOCK.release()


def _after_fork_in_child() -> None:
    global _FORK_LOCK
    _ABANDONED.extend(_RUNNING)
    _RUNNING.clear()
    _PARKED.clear()
    _FORK_LOCK = threading.Lock()
    for shared in list(_SHARED):
        shared.lock = threading.Lock()


_PARKED: list[Runtime] = []
os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


class Shared:
    """What a sync HubClient and its ``with_context`` clones share: how to build
    the async client, and this process's runtime."""

    def __init__(self, make: Callable[[], AsyncHubClient], first: AsyncHubClient) -> None:
        self.make = make
        self.lock = threading.Lock()
        self.runtime: Runtime | None = None
        self.closed = False
        # The client built by the constructor, for this process's first runtime.
        self._first: tuple[int, AsyncHubClient] | None = (os.getpid(), first)
        _SHARED.add(self)

    def current(self) -> Runtime:
        """This process's runtime, started on first use (and anew in a forked child)."""
        runtime = self.runtime
        if runtime is not None and runtime.pid == os.getpid():
            return runtime
        with self.lock:
            if self.closed:
                raise RuntimeError("this HubClient is closed")
            runtime = self.runtime
            if runtime is None or runtime.pid != os.getpid():
                first, self._first = self._first, None
                client = first[1] if first and first[0] == os.getpid() else self.make()
                runtime = self.runtime = Runtime(client)
                # Dropped without close(): the thread ends (its leases lapse by TTL).
                weakref.finalize(self, _stop_loop, runtime.loop, runtime.pid)
            return runtime

    def close(self) -> None:
        """Closes the async client (deregistering what it registered) and ends the
        loop thread; a runtime inherited from a parent process is left alone."""
        with self.lock:
            self.closed = True
            runtime, self.runtime = self.runtime, None
        if runtime is None or runtime.pid != os.getpid():
            return
        try:
            runtime.run(runtime.client.close())
        finally:
            runtime.stop()


_SHARED: weakref.WeakSet[Shared] = weakref.WeakSet()


def _stop_loop(loop: asyncio.AbstractEventLoop, pid: int) -> None:
    if pid == os.getpid() and not loop.is_closed():
        loop.call_soon_threadsafe(loop.stop)


class SyncClientBase:
    """The hand-written part of hub_client.sync.HubClient: the runtime, context
    and timeout, clones, close. Its constructor and the methods that mirror the
    async HubClient's are generated (sync_client.py)."""

    _shared: Shared
    _context: TenantContext
    _timeout: float
    _root: bool
    _bound: tuple[Runtime, AsyncHubClient] | None
    _bind_lock: threading.Lock
    target: Any

    def _start(self, make: Callable[[], AsyncHubClient]) -> None:
        """Builds the async client now (a bad address or tier fails here); the
        loop thread starts on the first call."""
        first = make()
        self._adopt(Shared(make, first), first.context, first.timeout, root=True)
        self.target = first.target

    def _adopt(self, shared: Shared, context: TenantContext, timeout: float, *, root: bool) -> None:
        self._shared = shared
        self._context = context
        self._timeout = timeout
        self._root = root
        self._bound = None
        self._bind_lock = threading.Lock()

    def with_context(self, **changes: str) -> Self:
        """The same connection and loop thread with other tenant headers
        (tenant_id, user_id, subscription_tier, correlation_id)."""
        clone = object.__new__(type(self))
        clone._adopt(self._shared, replace(self._context, **changes), self._timeout, root=False)
        clone.target = self.target
        return clone

    def close(self) -> None:
        """Deregisters what this client registered; the client it was made from
        (not a ``with_context`` clone) also closes the channel and stops its loop
        thread. Calls after that raise RuntimeError."""
        if not self._root:
            bound = self._bound
            if bound is not None and bound[0].pid == os.getpid():
                bound[0].run(bound[1].close())
            return
        self._shared.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _hub(self) -> tuple[Runtime, AsyncHubClient]:
        """The runtime and this client's async counterpart in it."""
        runtime = self._shared.current()
        bound = self._bound
        if bound is not None and bound[0] is runtime:
            return bound
        with self._bind_lock:
            bound = self._bound
            if bound is None or bound[0] is not runtime:
                hub = runtime.client if self._root else runtime.client.with_context()
                hub.context = self._context
                hub.timeout = self._timeout
                bound = self._bound = (runtime, hub)
        return bound

    def _run(self, call: Callable[[AsyncHubClient], Coroutine[Any, Any, T]]) -> T:
        runtime, hub = self._hub()
        return runtime.run(call(hub))

    def _iterate(self, watch: Callable[[AsyncHubClient], AsyncIterator[T]]) -> WatchIterator[T]:
        runtime, hub = self._hub()
        return WatchIterator(runtime, watch(hub))

    def _handle(
        self,
        wrap: Callable[[Runtime, H], W],
        call: Callable[[AsyncHubClient], Coroutine[Any, Any, H]],
    ) -> W:
        """A handle (Registration) the async call returns, wrapped for blocking use."""
        runtime, hub = self._hub()
        return wrap(runtime, runtime.run(call(hub)))

    def _local(self, wrap: Callable[[Runtime, H], W], make: Callable[[AsyncHubClient], H]) -> W:
        """A handle (Allocation, CircuitGuard) the async client makes without a call."""
        runtime, hub = self._hub()
        return wrap(runtime, make(hub))

    @property
    def context(self) -> TenantContext:
        return self._context

    @context.setter
    def context(self, context: TenantContext) -> None:
        self._context = context
        if self._bound is not None:
            self._bound[1].context = context

    @property
    def timeout(self) -> float:
        return self._timeout

    @timeout.setter
    def timeout(self, timeout: float) -> None:
        self._timeout = timeout
        if self._bound is not None:
            self._bound[1].timeout = timeout


class WatchIterator(Iterator[T]):
    """A watch of the async client, read with blocking ``next()`` calls.

    ``close()`` (or leaving ``with``) ends the stream; so does dropping it.
    """

    def __init__(self, runtime: Runtime, items: Any) -> None:
        self._runtime = runtime
        self._items = items
        self._done = False

    def __iter__(self) -> WatchIterator[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        try:
            item: T = self._runtime.run(_next(self._items))
        except StopAsyncIteration:
            self._done = True
            raise StopIteration from None
        except BaseException:
            self._done = True
            raise
        return item

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        if self._runtime.pid == os.getpid() and self._runtime.thread.is_alive():
            with contextlib.suppress(Exception):
                self._runtime.run(self._items.aclose())

    def __enter__(self) -> WatchIterator[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Not waited for: a finalizer may run on any thread, even the loop's.
        if (
            not self._done
            and self._runtime.pid == os.getpid()
            and not self._runtime.loop.is_closed()
        ):
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(self._items.aclose(), self._runtime.loop)


async def _next(items: Any) -> Any:
    return await anext(items)


class Registration:
    """The handle ``hub_client.sync.HubClient.register`` returns: its lease is kept
    alive by the client's loop thread until ``deregister()`` or the end of
    ``with``."""

    def __init__(self, runtime: Runtime, registration: AsyncRegistration) -> None:
        self._runtime = runtime
        self._registration = registration

    @property
    def instance(self) -> Instance | None:
        return self._registration.instance

    @property
    def instance_id(self) -> str:
        return self._registration.instance_id

    @property
    def renewals(self) -> int:
        return self._registration.renewals

    @property
    def reregistrations(self) -> int:
        return self._registration.reregistrations

    def keep_alive(self, *, timeout: float | None = None) -> int:
        """Renews the lease once; returns the TTL. Raises InstanceNotFound if gone."""
        return self._runtime.run(self._registration.keep_alive(timeout=timeout))

    def deregister(self, *, timeout: float | None = None) -> None:
        """Stops the keep-alive and removes the instance (already gone is fine)."""
        self._runtime.run(self._registration.deregister(timeout=timeout))

    def __enter__(self) -> Registration:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.deregister()


class Allocation:
    """``with hub.allocation("websocket_connections") as usage:`` allocates on
    entry and releases on exit, as the async Allocation does."""

    def __init__(self, runtime: Runtime, allocation: AsyncAllocation) -> None:
        self._runtime = runtime
        self._allocation = allocation

    @property
    def usage(self) -> ResourceUsage | None:
        return self._allocation.usage

    def __enter__(self) -> ResourceUsage:
        return self._runtime.run(self._allocation.__aenter__())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._runtime.run(self._allocation.__aexit__(exc_type, exc, tb))


class CircuitGuard:
    """Guards calls to one service (or instance) with its fleet-wide circuit:
    ``with hub.circuit("ml"):`` around a call, or ``@hub.circuit("ml")`` on a
    function. Raises CircuitOpen at once when the cached circuit refuses; else
    runs the call and reports its outcome in the background."""

    def __init__(self, runtime: Runtime, guard: AsyncCircuitGuard) -> None:
        self._runtime = runtime
        self._guard = guard
        self._local = threading.local()  # one guard may be entered by many threads

    def __enter__(self) -> CircuitGuard:
        entered = self._runtime.run(_enter_copy(self._guard))
        self._local.__dict__.setdefault("stack", []).append(entered)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entered = self._local.stack.pop()
        self._runtime.run(entered.__aexit__(exc_type, exc, tb))

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            with self:
                return fn(*args, **kwargs)

        return guarded


async def _enter_copy(guard: AsyncCircuitGuard) -> AsyncCircuitGuard:
    """A fresh async guard for one entry (the async guard keeps its start time)."""
    entered = AsyncCircuitGuard(guard._circuits, guard.service, guard.instance_id)
    await entered.__aenter__()
    return entered
