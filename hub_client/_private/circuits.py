"""Circuits: their state on the hub, and the circuit-aware call helper, which
decides locally from a cached fleet-wide state and reports outcomes to the hub
in batches.

One WatchCircuits stream per client keeps the cache current, so guarding a call
costs a dict lookup, not a round trip; outcomes are sent every ``flush_interval``
or every ``max_batch`` calls, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import grpc
from aitrading.hub.v1 import circuit_pb2, registry_pb2
from aitrading.hub.v1.errors_pb2 import ERROR_REASON_CIRCUIT_OPEN

from hub_client._private.errors import CircuitOpen, HubError, reason_text
from hub_client._private.models import CircuitInfo
from hub_client._private.resume import resume_watch
from hub_client._private.transport import Transport

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_REFUSING = (circuit_pb2.CIRCUIT_STATE_OPEN, circuit_pb2.CIRCUIT_STATE_FORCED_OPEN)


def refuses(circuit: circuit_pb2.Circuit, now: float) -> bool:
    """Whether a circuit turns a call away at ``now`` (OPEN until its wait passes)."""
    if circuit.state == circuit_pb2.CIRCUIT_STATE_FORCED_OPEN:
        return True
    if circuit.state == circuit_pb2.CIRCUIT_STATE_OPEN:
        wait = circuit.settings.wait_in_open
        reopen = circuit.state_since.ToNanoseconds() / 1e9 + wait.seconds + wait.nanos / 1e9
        return now < reopen
    return False


class CircuitCache:
    """Every circuit of the fleet, kept current by one WatchCircuits stream."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self.circuits: dict[tuple[str, str], circuit_pb2.Circuit] = {}
        self.synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        fresh: dict[tuple[str, str], circuit_pb2.Circuit] = {}

        def open_stream(start: int) -> Any:
            nonlocal fresh
            fresh = {}  # a snapshot (start 0) may come in several messages
            return self._transport.open_stream(
                self._transport.circuit_stub.WatchCircuits,
                circuit_pb2.WatchCircuitsRequest(start_revision=start),
            )

        stream = resume_watch(open_stream)
        try:
            async with contextlib.aclosing(stream):
                async for msg in stream:
                    if msg.kind == registry_pb2.WATCH_RESPONSE_KIND_SNAPSHOT:
                        for c in msg.circuits:
                            fresh[(c.service, c.instance_id)] = c
                        self.circuits = fresh
                        self.synced.set()
                    elif msg.kind == registry_pb2.WATCH_RESPONSE_KIND_EVENTS:
                        for c in msg.circuits:
                            self.circuits[(c.service, c.instance_id)] = c
        except HubError as e:  # not retryable (a permission, ...): calls go unguarded
            log.warning("circuit watch ended: %s", e)

    def refuses(self, service: str, instance_id: str = "") -> circuit_pb2.Circuit | None:
        """The circuit that refuses this call, if any (the instance's or the service's)."""
        now = time.time()
        for key in ((service, instance_id), (service, "")) if instance_id else ((service, ""),):
            circuit = self.circuits.get(key)
            if circuit is not None and refuses(circuit, now):
                return circuit
        return None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class OutcomeReporter:
    """Collects call outcomes and sends them in batches in the background."""

    def __init__(
        self,
        send: Callable[[list[circuit_pb2.CallOutcome], float | None], Awaitable[object]],
        *,
        flush_interval: float = 0.5,
        max_batch: int = 500,
    ) -> None:
        self._send = send
        self._pending: list[circuit_pb2.CallOutcome] = []
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def add(self, outcome: circuit_pb2.CallOutcome) -> None:
        self._pending.append(outcome)
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        if len(self._pending) >= self._max_batch:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_interval)
            self._wake.clear()
            await self.flush()

    async def flush(self, timeout: float | None = None) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            await self._send(batch, timeout)
        except Exception as e:  # the hub is away: keep the newest, up to a bound
            log.debug("reporting %d outcomes failed: %r", len(batch), e)
            self._pending = (batch + self._pending)[-10 * self._max_batch :]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()


class CircuitGuard:
    """Guards calls to one service (or instance) with its fleet-wide circuit.

    Use as ``async with guard:`` around a call, or ``@guard`` on an async
    function. Raises CircuitOpen at once when the cached circuit refuses; else
    runs the call and reports it (an exception is a failure and is re-raised).
    """

    def __init__(self, circuits: CircuitsClient, service: str, instance_id: str = "") -> None:
        self._circuits = circuits
        self.service = service
        self.instance_id = instance_id
        self._started = 0.0

    async def __aenter__(self) -> CircuitGuard:
        self._circuits.cache().start()
        circuit = self._circuits.cache().refuses(self.service, self.instance_id)
        if circuit is not None:
            raise CircuitOpen(
                f"circuit of {self.service}{'/' + self.instance_id if self.instance_id else ''}"
                f" is {circuit_pb2.CircuitState.Name(circuit.state)}",
                code=grpc.StatusCode.UNAVAILABLE,
                reason=reason_text(ERROR_REASON_CIRCUIT_OPEN),
                metadata={"service": self.service, "instance_id": self.instance_id},
            )
        self._started = time.perf_counter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            return  # the caller gave up; says nothing about the service
        outcome = circuit_pb2.OUTCOME_FAILURE if exc_type else circuit_pb2.OUTCOME_SUCCESS
        self._circuits.reporter().add(
            circuit_pb2.CallOutcome(
                service=self.service,
                instance_id=self.instance_id,
                outcome=outcome,
                latency_ms=(time.perf_counter() - self._started) * 1000,
            )
        )

    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            async with CircuitGuard(self._circuits, self.service, self.instance_id):
                return await fn(*args, **kwargs)

        return guarded


class CircuitsClient:
    """The CircuitBreakerService calls, and the one circuit cache and outcome
    reporter the guards of a client share (each started on first use)."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._cache: CircuitCache | None = None
        self._reporter: OutcomeReporter | None = None

    async def state(
        self, service: str, instance_id: str, *, timeout: float | None = None
    ) -> CircuitInfo:
        t = self._transport
        resp = await t.call(
            t.circuit_stub.GetCircuitState,
            circuit_pb2.GetCircuitStateRequest(service=service, instance_id=instance_id),
            timeout=timeout,
        )
        return CircuitInfo.from_pb(resp.circuit)

    def guard(self, service: str, instance_id: str) -> CircuitGuard:
        return CircuitGuard(self, service, instance_id)

    def cache(self) -> CircuitCache:
        if self._cache is None:
            self._cache = CircuitCache(self._transport)
        return self._cache

    def reporter(self) -> OutcomeReporter:
        if self._reporter is None:
            self._reporter = OutcomeReporter(self._send_outcomes)
        return self._reporter

    async def _send_outcomes(
        self, outcomes: list[circuit_pb2.CallOutcome], timeout: float | None
    ) -> None:
        t = self._transport
        await t.call(
            t.circuit_stub.ReportOutcomes,
            circuit_pb2.ReportOutcomesRequest(outcomes=outcomes),
            timeout=timeout,
        )

    async def flush(self, timeout: float | None = None) -> None:
        if self._reporter is not None:
            await self._reporter.flush(timeout)

    async def close(self) -> None:
        """Sends what is left to report, then stops following the circuits."""
        if self._reporter is not None:
            await self._reporter.close()
        if self._cache is not None:
            await self._cache.close()
