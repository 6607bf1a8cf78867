"""CircuitBreakerService: outcomes in, fleet-wide circuit states out."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from typing import Protocol

from aitrading.hub.v1 import circuit_pb2, circuit_pb2_grpc
from google.protobuf import duration_pb2

from hub_server.circuits.breaker import Call, CircuitSettings, Outcome
from hub_server.circuits.service import StoredCircuit
from hub_server.kernel import validation
from hub_server.kernel.errors import InvalidArgument, Violations
from hub_server.rpc.context import audit_note, audited
from hub_server.rpc.header import response_header
from hub_server.rpc.streaming import watch_stream
from hub_server.store.event_log import EventLog
from hub_server.store.mirror import REMOVED, Change

MAX_OUTCOMES = 10_000

_ACTIONS = {
    circuit_pb2.CIRCUIT_OVERRIDE_FORCE_OPEN: "force_open",
    circuit_pb2.CIRCUIT_OVERRIDE_FORCE_CLOSED: "force_closed",
    circuit_pb2.CIRCUIT_OVERRIDE_RESET: "reset",
}


def _seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def settings_from_pb(m: circuit_pb2.CircuitSettings) -> CircuitSettings:
    settings = CircuitSettings.with_defaults(
        # Raw: an unknown number is reported by validate(), not raised here.
        window_type=m.window_type or None,
        window_size=m.window_size,
        minimum_calls=m.minimum_calls,
        failure_rate_threshold=m.failure_rate_threshold,
        slow_call_duration=_seconds(m.slow_call_duration),
        slow_call_rate_threshold=m.slow_call_rate_threshold,
        wait_in_open=_seconds(m.wait_in_open),
        permitted_calls_in_half_open=m.permitted_calls_in_half_open,
        max_wait_in_half_open=_seconds(m.max_wait_in_half_open),
    )
    violations = settings.validate()
    if violations:
        raise InvalidArgument([type(v)(f"settings.{v.field}", v.description) for v in violations])
    return settings


def settings_to_pb(s: CircuitSettings) -> circuit_pb2.CircuitSettings:
    return circuit_pb2.CircuitSettings(
        window_type=int(s.window_type),
        window_size=s.window_size,
        minimum_calls=s.minimum_calls,
        failure_rate_threshold=s.failure_rate_threshold,
        slow_call_duration=_duration(s.slow_call_duration),
        slow_call_rate_threshold=s.slow_call_rate_threshold,
        wait_in_open=_duration(s.wait_in_open),
        permitted_calls_in_half_open=s.permitted_calls_in_half_open,
        max_wait_in_half_open=_duration(s.max_wait_in_half_open),
    )


def circuit_to_pb(stored: StoredCircuit, now: float) -> circuit_pb2.Circuit:
    m = stored.circuit.metrics(now)
    out = circuit_pb2.Circuit(
        service=stored.service,
        instance_id=stored.instance_id,
        state=int(m.state),
        failure_rate=m.failure_rate,
        slow_call_rate=m.slow_call_rate,
        calls=m.calls,
        settings=settings_to_pb(stored.circuit.settings),
        reason=f"{m.reason}: {m.detail}" if m.reason else "",
        revision=stored.revision,
    )
    out.state_since.FromNanoseconds(int(m.state_since * 1e9))
    return out


def cb_action_name(action: int) -> str:
    return circuit_pb2.CircuitOverride.Name(action) if action in _ACTIONS else str(action)


def _names(v: Violations, prefix: str, service: str, instance_id: str) -> None:
    validation.check_dns_label(v, f"{prefix}service", service)
    validation.check_safe_id(v, f"{prefix}instance_id", instance_id, required=False)


class CircuitStates(Protocol):
    """What the servicer uses of the circuits (hub_server.circuits.service.Circuits)."""

    @property
    def revision(self) -> int: ...
    @property
    def log(self) -> EventLog[Change[StoredCircuit]]: ...
    def ensure_live(self) -> None: ...
    def get(self, service: str, instance_id: str = "") -> StoredCircuit: ...
    def find(self, service: str = "") -> list[StoredCircuit]: ...
    async def report(self, outcomes: Iterable[tuple[str, str, Call]]) -> list[StoredCircuit]: ...
    async def set_settings(self, service: str, settings: CircuitSettings) -> StoredCircuit: ...
    async def override(self, service: str, instance_id: str, action: str) -> StoredCircuit: ...


class CircuitBreakerServicer(circuit_pb2_grpc.CircuitBreakerServiceServicer):
    def __init__(self, circuits: CircuitStates, hub_id: str, *, progress_interval: float = 10.0):
        self._circuits = circuits
        self._hub_id = hub_id
        self.progress_interval = progress_interval

    async def ReportOutcomes(self, request, context):
        v = Violations()
        if len(request.outcomes) > MAX_OUTCOMES:
            v.add("outcomes", f"at most {MAX_OUTCOMES} per batch")
        batch = []
        for i, o in enumerate(request.outcomes[:MAX_OUTCOMES]):
            _names(v, f"outcomes[{i}].", o.service, o.instance_id)
            if o.outcome not in (circuit_pb2.OUTCOME_SUCCESS, circuit_pb2.OUTCOME_FAILURE):
                v.add(f"outcomes[{i}].outcome", "must be SUCCESS or FAILURE")
                continue
            if not 0 <= o.latency_ms < 86_400_000:
                v.add(f"outcomes[{i}].latency_ms", "must be between 0 and one day")
            batch.append((o.service, o.instance_id, Call(Outcome(o.outcome), o.latency_ms)))
        v.raise_if_any()
        self._circuits.ensure_live()
        stored = await self._circuits.report(batch)
        now = time.time()
        return circuit_pb2.ReportOutcomesResponse(
            header=response_header(self._hub_id, max((s.revision for s in stored), default=0)),
            circuits=[circuit_to_pb(s, now) for s in stored],
        )

    async def GetCircuitState(self, request, context):
        v = Violations()
        _names(v, "", request.service, request.instance_id)
        v.raise_if_any()
        self._circuits.ensure_live()
        stored = self._circuits.get(request.service, request.instance_id)
        return circuit_pb2.GetCircuitStateResponse(
            header=response_header(self._hub_id, self._circuits.revision),
            circuit=circuit_to_pb(stored, time.time()),
        )

    @audited
    async def SetCircuitSettings(self, request, context):
        audit_note(target=f"circuit-settings/{request.service}")
        v = Violations()
        validation.check_dns_label(v, "service", request.service)
        v.raise_if_any()
        settings = settings_from_pb(request.settings)
        stored = await self._circuits.set_settings(request.service, settings)
        return circuit_pb2.SetCircuitSettingsResponse(
            header=response_header(self._hub_id, stored.revision),
            circuit=circuit_to_pb(stored, time.time()),
        )

    @audited
    async def OverrideCircuit(self, request, context):
        audit_note(
            target=f"circuit/{request.service}/{request.instance_id or '*'}",
            action=cb_action_name(request.action),
        )
        v = Violations()
        _names(v, "", request.service, request.instance_id)
        if request.action not in _ACTIONS:
            v.add("action", "must be FORCE_OPEN, FORCE_CLOSED or RESET")
        v.raise_if_any()
        before = self._circuits.get(request.service, request.instance_id)
        stored = await self._circuits.override(
            request.service, request.instance_id, _ACTIONS[request.action]
        )
        audit_note(
            version_before=before.circuit.state.name, version_after=stored.circuit.state.name
        )
        return circuit_pb2.OverrideCircuitResponse(
            header=response_header(self._hub_id, stored.revision),
            circuit=circuit_to_pb(stored, time.time()),
        )

    async def WatchCircuits(
        self, request, context
    ) -> AsyncIterator[circuit_pb2.WatchCircuitsResponse]:
        service = request.service
        v = Violations()
        validation.check_dns_label(v, "service", service, required=False)
        v.raise_if_any()
        circuits = self._circuits

        def snapshot() -> tuple[list[circuit_pb2.Circuit], int]:
            found = circuits.find(service)
            now = time.time()
            return [circuit_to_pb(s, now) for s in found], circuits.revision

        def select(change: Change[StoredCircuit]) -> circuit_pb2.Circuit | None:
            stored = change.value
            if change.type == REMOVED or stored is None:
                return None
            if service and stored.service != service:
                return None
            if change.cache is None:
                change.cache = circuit_to_pb(stored, time.time())
            return change.cache

        def respond(kind, items, revision, more, compact):
            return circuit_pb2.WatchCircuitsResponse(
                header=response_header(self._hub_id, revision),
                kind=kind,
                circuits=items,
                compact_revision=compact,
            )

        async for response in watch_stream(
            circuits.log,
            start_revision=request.start_revision,
            snapshot=snapshot,
            select=select,
            respond=respond,
            progress_interval=self.progress_interval,
        ):
            yield response
