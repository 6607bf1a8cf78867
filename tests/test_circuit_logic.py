"""The circuit breaker state machine, table by table: every transition, both
window types, batches from several replicas in any order, and persistence."""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import replace
from typing import Any

import pytest
from aitrading.hub.v1 import circuit_pb2

from hub_server.circuits.breaker import (
    MAX_COUNT_WINDOW,
    MAX_TIME_WINDOW,
    Call,
    Circuit,
    CircuitSettings,
    CircuitState,
    Counts,
    Outcome,
    Transition,
    TransitionReason,
    WindowType,
)
from hub_server.kernel.errors import FieldViolation, InvalidArgument

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
FORCED_OPEN, FORCED_CLOSED = CircuitState.FORCED_OPEN, CircuitState.FORCED_CLOSED
R = TransitionReason

# One character per call: S fast success, F fast failure, s slow success,
# f slow failure (slow = over the default 2 s slow_call_duration).
CALL_OF = {
    "S": Call(Outcome.SUCCESS, 10.0),
    "F": Call(Outcome.FAILURE, 10.0),
    "s": Call(Outcome.SUCCESS, 5000.0),
    "f": Call(Outcome.FAILURE, 5000.0),
}

# Small numbers so the tables stay readable: judge after 4 calls of the last 10,
# open at 50% failures or 100% slow, 10 s in OPEN, 4 trial calls.
BASE = CircuitSettings(
    window_size=10,
    minimum_calls=4,
    wait_in_open=10.0,
    permitted_calls_in_half_open=4,
)


def calls(spec: str) -> list[Call]:
    return [CALL_OF[c] for c in spec]


def settings(**overrides: Any) -> CircuitSettings:
    return replace(BASE, **overrides)


def run(circuit: Circuit, spec: str, now: float = 0.0) -> list[tuple[int, Transition]]:
    """Record calls one by one; the (1-based call number, transition) pairs."""
    out: list[tuple[int, Transition]] = []
    for n, call in enumerate(calls(spec), 1):
        out.extend((n, t) for t in circuit.record(call, now))
    return out


def opened(circuit: Circuit | None = None, now: float = 0.0) -> Circuit:
    """A circuit that went OPEN at ``now``."""
    circuit = circuit or Circuit(BASE, now=now)
    run(circuit, "F" * circuit.settings.effective_minimum_calls, now)
    assert circuit.state is OPEN
    return circuit


def half_open(now: float = 10.0, **overrides: Any) -> Circuit:
    """A circuit that entered HALF_OPEN at ``now`` (opened at now - wait)."""
    s = settings(**overrides)
    circuit = opened(Circuit(s, now=now - s.wait_in_open), now - s.wait_in_open)
    assert circuit.tick(now)
    assert circuit.state is HALF_OPEN
    return circuit


def round_trip(circuit: Circuit) -> Circuit:
    return Circuit.from_dict(json.loads(json.dumps(circuit.to_dict())))


# -- settings -----------------------------------------------------------------


def test_defaults() -> None:
    s = CircuitSettings()
    assert (s.window_type, s.window_size, s.minimum_calls) == (WindowType.COUNT, 100, 20)
    assert (s.failure_rate_threshold, s.slow_call_rate_threshold) == (50.0, 100.0)
    assert (s.slow_call_duration, s.wait_in_open) == (2.0, 30.0)
    assert (s.permitted_calls_in_half_open, s.max_wait_in_half_open) == (5, 0.0)
    assert s.validate() == []


def test_enum_values_are_the_proto_numbers() -> None:
    for enum, prefix, pb in [
        (CircuitState, "CIRCUIT_STATE_", circuit_pb2.CircuitState),
        (WindowType, "WINDOW_TYPE_", circuit_pb2.WindowType),
        (Outcome, "OUTCOME_", circuit_pb2.Outcome),
    ]:
        for member in enum:  # type: ignore[attr-defined]
            assert pb.Value(prefix + member.name) == member.value


@pytest.mark.parametrize(
    ("overrides", "bad_fields"),
    [
        ({}, []),
        ({"window_size": 0}, ["window_size"]),
        ({"window_size": MAX_COUNT_WINDOW}, []),
        ({"window_size": MAX_COUNT_WINDOW + 1}, ["window_size"]),
        ({"window_type": WindowType.TIME, "window_size": MAX_TIME_WINDOW}, []),
        ({"window_type": WindowType.TIME, "window_size": MAX_TIME_WINDOW + 1}, ["window_size"]),
        ({"window_size": 2.5}, ["window_size"]),
        ({"window_size": True}, ["window_size"]),
        ({"window_type": 7}, ["window_type"]),
        ({"minimum_calls": 0}, ["minimum_calls"]),
        ({"minimum_calls": 1}, []),
        ({"failure_rate_threshold": 0}, ["failure_rate_threshold"]),
        ({"failure_rate_threshold": 100}, []),
        ({"failure_rate_threshold": 100.5}, ["failure_rate_threshold"]),
        ({"failure_rate_threshold": math.nan}, ["failure_rate_threshold"]),
        ({"slow_call_rate_threshold": -1}, ["slow_call_rate_threshold"]),
        ({"slow_call_rate_threshold": 101}, ["slow_call_rate_threshold"]),
        ({"slow_call_duration": 0}, ["slow_call_duration"]),
        ({"slow_call_duration": math.inf}, ["slow_call_duration"]),
        ({"wait_in_open": 0}, ["wait_in_open"]),
        ({"wait_in_open": "30"}, ["wait_in_open"]),
        ({"permitted_calls_in_half_open": 0}, ["permitted_calls_in_half_open"]),
        ({"max_wait_in_half_open": 0}, []),
        ({"max_wait_in_half_open": -1}, ["max_wait_in_half_open"]),
        (
            {"window_size": -1, "minimum_calls": -1, "wait_in_open": -1},
            ["window_size", "minimum_calls", "wait_in_open"],
        ),
    ],
)
def test_validate(overrides: dict[str, Any], bad_fields: list[str]) -> None:
    s = replace(CircuitSettings(), **overrides)
    violations = s.validate()
    assert [v.field for v in violations] == bad_fields
    assert all(isinstance(v, FieldViolation) and v.description for v in violations)
    if bad_fields:
        with pytest.raises(InvalidArgument) as err:
            s.ensure_valid()
        assert [v.field for v in err.value.violations] == bad_fields
        with pytest.raises(InvalidArgument):
            Circuit(s)
    else:
        assert s.ensure_valid() is s


def test_with_defaults_treats_zero_and_none_as_unset() -> None:
    assert CircuitSettings.with_defaults() == CircuitSettings()
    assert (
        CircuitSettings.with_defaults(
            window_type=0, window_size=0, minimum_calls=None, failure_rate_threshold=0.0
        )
        == CircuitSettings()
    )
    s = CircuitSettings.with_defaults(window_type=2, window_size=60, wait_in_open=5.0)
    assert (s.window_type, s.window_size, s.wait_in_open) == (WindowType.TIME, 60, 5.0)
    assert CircuitSettings.with_defaults(window_type="time").window_type is WindowType.TIME
    # Out-of-range values are kept for validate() to report.
    assert [v.field for v in CircuitSettings.with_defaults(window_type=9).validate()] == [
        "window_type"
    ]
    assert [v.field for v in CircuitSettings.with_defaults(minimum_calls=-3).validate()] == [
        "minimum_calls"
    ]
    with pytest.raises(TypeError):
        CircuitSettings.with_defaults(no_such_field=1)


@pytest.mark.parametrize(
    ("window_type", "window_size", "minimum_calls", "effective"),
    [
        (WindowType.COUNT, 100, 20, 20),
        (WindowType.COUNT, 10, 20, 10),  # a COUNT window never holds more than its size
        (WindowType.TIME, 10, 20, 20),  # a TIME window can
    ],
)
def test_effective_minimum_calls(
    window_type: WindowType, window_size: int, minimum_calls: int, effective: int
) -> None:
    s = CircuitSettings(
        window_type=window_type, window_size=window_size, minimum_calls=minimum_calls
    )
    assert s.effective_minimum_calls == effective


def test_settings_dict_round_trip() -> None:
    s = settings(window_type=WindowType.TIME, window_size=60, max_wait_in_half_open=7.5)
    data = json.loads(json.dumps(s.to_dict()))
    assert data["window_type"] == "TIME"
    assert CircuitSettings.from_dict(data) == s
    assert CircuitSettings.from_dict({}) == CircuitSettings()
    with pytest.raises(ValueError, match="unknown"):
        CircuitSettings.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="invalid"):
        CircuitSettings.from_dict({"window_size": 0})


# -- CLOSED -> OPEN -------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "spec", "opens_at", "reason"),
    [
        # not before minimum_calls (4)
        ({}, "FFF", None, None),
        ({}, "FFFF", 4, R.FAILURE_RATE),
        ({"minimum_calls": 6}, "FFFFF", None, None),
        ({"minimum_calls": 6}, "FFFFFF", 6, R.FAILURE_RATE),
        ({"minimum_calls": 1}, "F", 1, R.FAILURE_RATE),
        # the failure-rate threshold is inclusive: 50% of 4 opens, 25% does not
        ({}, "SSSF", None, None),
        ({}, "SSFF", 4, R.FAILURE_RATE),
        ({}, "SSSFF", None, None),  # 25% at the 4th call, 40% at the 5th
        ({}, "SSSFFF", 6, R.FAILURE_RATE),  # 50% at the 6th
        ({}, "SSSSSSF", None, None),
        ({"failure_rate_threshold": 40}, "SSSSSSFFFF", 10, R.FAILURE_RATE),
        ({"failure_rate_threshold": 100}, "FFFFFFFFFS", 4, R.FAILURE_RATE),
        ({"failure_rate_threshold": 100}, "SFFFFFFFFF", None, None),
        # slow calls: at the default 100% only an all-slow window opens
        ({}, "ssss", 4, R.SLOW_CALL_RATE),
        ({}, "sssS", None, None),
        ({"slow_call_rate_threshold": 50}, "SSss", 4, R.SLOW_CALL_RATE),
        ({"slow_call_rate_threshold": 75}, "SSss", None, None),
        # a slow failure counts in both rates
        (
            {"failure_rate_threshold": 75, "slow_call_rate_threshold": 50},
            "ffSS",
            4,
            R.SLOW_CALL_RATE,
        ),
        ({"failure_rate_threshold": 50, "slow_call_rate_threshold": 50}, "ffSS", 4, R.FAILURE_RATE),
        # a slow success is not a failure
        ({"slow_call_rate_threshold": 100, "failure_rate_threshold": 25}, "sssS", None, None),
        # slow_call_duration decides what is slow
        ({"slow_call_duration": 10.0}, "ssss", None, None),
        # sliding COUNT window of 4: the old failures slide out, newer ones trip it
        ({"window_size": 4, "failure_rate_threshold": 75}, "FFSSSSFFF", 9, R.FAILURE_RATE),
        ({"window_size": 4, "failure_rate_threshold": 75}, "FFSSSSFF", None, None),
        # minimum_calls above the COUNT window size is capped at the size
        ({"window_size": 4, "minimum_calls": 20}, "FFFF", 4, R.FAILURE_RATE),
    ],
)
def test_closed_to_open(
    overrides: dict[str, Any], spec: str, opens_at: int | None, reason: TransitionReason | None
) -> None:
    circuit = Circuit(settings(**overrides), now=0.0)
    transitions = run(circuit, spec, now=5.0)
    if opens_at is None:
        assert transitions == []
        assert circuit.state is CLOSED
        return
    assert [(n, t.from_state, t.to_state, t.reason) for n, t in transitions] == [
        (opens_at, CLOSED, OPEN, reason)
    ]
    t = transitions[0][1]
    assert t.at == 5.0 and t.detail
    assert (circuit.state, circuit.state_since, circuit.reason) == (OPEN, 5.0, reason)
    assert circuit.detail == t.detail


def test_slow_means_strictly_slower_than_the_duration() -> None:
    circuit = Circuit(settings(slow_call_duration=1.0))
    circuit.record_batch([Call(Outcome.SUCCESS, 1000.0)] * 4, 0.0)
    assert circuit.state is CLOSED
    circuit.record_batch([Call(Outcome.SUCCESS, 1000.001)] * 4, 0.0)
    assert circuit.state is CLOSED  # 4 of 8 slow: 50% < 100%
    circuit = Circuit(settings(slow_call_duration=1.0))
    circuit.record_batch([Call(Outcome.SUCCESS, 1000.001)] * 4, 0.0)
    assert circuit.state is OPEN


def test_rates_are_compared_exactly() -> None:
    """1 of 3 is 33.33...%; a threshold of 100/3 must open at exactly that rate."""
    circuit = Circuit(settings(minimum_calls=3, failure_rate_threshold=100 / 3))
    run(circuit, "SSF")
    assert circuit.state is OPEN


# -- OPEN -----------------------------------------------------------------------


def test_open_refuses_and_ignores_outcomes() -> None:
    circuit = opened(now=100.0)
    assert not circuit.allows_call(100.0)
    assert not circuit.allows_call(109.999)
    assert circuit.acquire_permission(105.0).permitted is False
    result = circuit.record_batch(calls("SSSSSSSS"), 105.0)
    assert (result.transitions, result.recorded, result.ignored) == ((), 0, 8)
    assert circuit.state is OPEN
    assert circuit.tick(109.999) == []


@pytest.mark.parametrize(
    ("wait", "tick_at", "moves"),
    [(10.0, 9.999, False), (10.0, 10.0, True), (10.0, 500.0, True), (0.5, 0.5, True)],
)
def test_open_to_half_open_after_the_wait(wait: float, tick_at: float, moves: bool) -> None:
    circuit = opened(Circuit(settings(wait_in_open=wait)))
    assert circuit.allows_call(tick_at) is moves
    transitions = circuit.tick(tick_at)
    if not moves:
        assert transitions == [] and circuit.state is OPEN
        return
    assert transitions == [
        Transition(OPEN, HALF_OPEN, R.WAIT_ELAPSED, tick_at, transitions[0].detail)
    ]
    assert (circuit.state, circuit.state_since) == (HALF_OPEN, tick_at)
    assert circuit.tick(tick_at + 1000) == []  # no max wait in HALF_OPEN by default


def test_acquire_permission_takes_the_time_step_itself() -> None:
    circuit = opened()
    permission = circuit.acquire_permission(10.0)
    assert permission.permitted
    assert [(t.from_state, t.to_state) for t in permission.transitions] == [(OPEN, HALF_OPEN)]


def test_record_batch_ticks_first_so_late_outcomes_are_trials() -> None:
    circuit = opened()
    result = circuit.record_batch(calls("SSSS"), 10.0)
    assert [(t.from_state, t.to_state, t.reason) for t in result.transitions] == [
        (OPEN, HALF_OPEN, R.WAIT_ELAPSED),
        (HALF_OPEN, CLOSED, R.TRIALS_PASSED),
    ]
    assert (result.recorded, result.ignored) == (4, 0)


# -- HALF_OPEN ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "spec", "decided_at", "to", "reason"),
    [
        ({}, "SSSS", 4, CLOSED, R.TRIALS_PASSED),
        ({}, "SSSF", 4, CLOSED, R.TRIALS_PASSED),  # 25% < 50%
        ({}, "SSFF", 4, OPEN, R.TRIALS_FAILED),  # 50% >= 50%
        ({}, "FFFF", 4, OPEN, R.TRIALS_FAILED),
        ({}, "FF", None, HALF_OPEN, None),  # waits for every permitted trial
        ({}, "SSS", None, HALF_OPEN, None),
        ({}, "ssss", 4, OPEN, R.TRIALS_FAILED),  # all slow at 100%
        ({}, "sssS", 4, CLOSED, R.TRIALS_PASSED),
        ({"permitted_calls_in_half_open": 1}, "S", 1, CLOSED, R.TRIALS_PASSED),
        ({"permitted_calls_in_half_open": 1}, "F", 1, OPEN, R.TRIALS_FAILED),
        (
            {"permitted_calls_in_half_open": 2, "failure_rate_threshold": 60},
            "SF",
            2,
            CLOSED,
            R.TRIALS_PASSED,
        ),
        # the trial count decides even when minimum_calls is larger
        ({"minimum_calls": 50}, "SSSS", 4, CLOSED, R.TRIALS_PASSED),
    ],
)
def test_half_open_trials_decide(
    overrides: dict[str, Any],
    spec: str,
    decided_at: int | None,
    to: CircuitState,
    reason: TransitionReason | None,
) -> None:
    circuit = half_open(now=10.0, **overrides)
    transitions = run(circuit, spec, now=11.0)
    assert circuit.state is to
    if decided_at is None:
        assert transitions == []
        m = circuit.metrics(11.0)
        assert (m.calls, m.failed_calls) == (len(spec), spec.count("F"))
        return
    assert [(n, t.from_state, t.to_state, t.reason) for n, t in transitions] == [
        (decided_at, HALF_OPEN, to, reason)
    ]
    assert circuit.state_since == 11.0


def test_trial_calls_beyond_the_permitted_are_refused() -> None:
    circuit = half_open(now=10.0)  # 4 trial permits
    answers = [circuit.acquire_permission(10.0 + i).permitted for i in range(6)]
    assert answers == [True, True, True, True, False, False]
    assert not circuit.allows_call(20.0)
    assert circuit.metrics(20.0).trial_permits_left == 0
    # The outcomes decide; then calls flow again.
    run(circuit, "SSSS", now=21.0)
    assert circuit.state is CLOSED
    assert circuit.acquire_permission(21.0).permitted
    assert circuit.allows_call(21.0)


def test_permits_left_counts_down() -> None:
    circuit = half_open(now=10.0)
    lefts = []
    for _ in range(5):
        lefts.append(circuit.metrics(10.0).trial_permits_left)
        circuit.acquire_permission(10.0)
    assert lefts == [4, 3, 2, 1, 0]


def test_half_open_allows_without_taking_a_permit() -> None:
    circuit = half_open(now=10.0)
    for _ in range(10):
        assert circuit.allows_call(10.0)
    assert circuit.metrics(10.0).trial_permits_left == 4


@pytest.mark.parametrize(
    ("max_wait", "tick_after", "times_out"),
    [(5.0, 4.999, False), (5.0, 5.0, True), (5.0, 60.0, True), (0.0, 1e9, False)],
)
def test_half_open_timeout(max_wait: float, tick_after: float, times_out: bool) -> None:
    circuit = half_open(now=10.0, max_wait_in_half_open=max_wait)
    circuit.acquire_permission(10.0)
    run(circuit, "S", now=11.0)  # one of four trials reported, the rest never come
    assert circuit.allows_call(10.0 + tick_after) is not times_out
    transitions = circuit.tick(10.0 + tick_after)
    if not times_out:
        assert transitions == [] and circuit.state is HALF_OPEN
        return
    assert [(t.from_state, t.to_state, t.reason) for t in transitions] == [
        (HALF_OPEN, OPEN, R.HALF_OPEN_TIMEOUT)
    ]
    assert circuit.state_since == 10.0 + tick_after
    assert circuit.metrics(10.0 + tick_after).calls == 1  # the trials it had
    # ... and the cycle goes on: OPEN for wait_in_open, then trials again.
    assert circuit.tick(10.0 + tick_after + 10.0)[0].to_state is HALF_OPEN


def test_every_transition_starts_afresh() -> None:
    circuit = Circuit(BASE)
    run(circuit, "SSSSSSFFFF")  # 40%, 6 successes in the window
    run(circuit, "F")  # 5 of 10 (window 10): 50% -> OPEN
    assert circuit.state is OPEN
    circuit.tick(10.0)
    run(circuit, "SSSS", now=10.0)
    assert circuit.state is CLOSED
    m = circuit.metrics(10.0)
    assert (m.calls, m.failure_rate) == (0, 0.0)
    # A fresh window: 3 failures are below the minimum, 4 open again.
    run(circuit, "FFF", now=10.0)
    assert circuit.state is CLOSED
    run(circuit, "F", now=10.0)
    assert circuit.state is OPEN


# -- batches ----------------------------------------------------------------------


def test_batch_that_opens_midway_ignores_the_rest() -> None:
    circuit = Circuit(BASE)
    result = circuit.record_batch(calls("SFFFSSSS"), 0.0)  # 3/4 at the 4th call
    assert [(t.from_state, t.to_state) for t in result.transitions] == [(CLOSED, OPEN)]
    assert (result.recorded, result.ignored) == (4, 4)


def test_batch_that_closes_midway_counts_the_rest_in_the_new_window() -> None:
    circuit = half_open(now=10.0)
    result = circuit.record_batch(calls("SSSSFFF"), 10.0)
    assert [(t.from_state, t.to_state) for t in result.transitions] == [(HALF_OPEN, CLOSED)]
    assert (result.recorded, result.ignored) == (7, 0)
    m = circuit.metrics(10.0)
    assert (m.calls, m.failed_calls) == (3, 3)


def test_a_full_cycle_in_one_batch() -> None:
    circuit = opened()
    result = circuit.record_batch(calls("SSFF" + "SSSS"), 10.0)
    assert [(t.from_state, t.to_state, t.reason) for t in result.transitions] == [
        (OPEN, HALF_OPEN, R.WAIT_ELAPSED),
        (HALF_OPEN, OPEN, R.TRIALS_FAILED),
    ]
    assert (result.recorded, result.ignored) == (4, 4)


def test_splitting_a_batch_changes_nothing() -> None:
    """Recording B1 then B2 equals recording B1 + B2 (the property replicas rely on)."""
    rng = random.Random(7)
    for _ in range(200):
        spec = "".join(rng.choice("SSSFFsf") for _ in range(rng.randint(0, 40)))
        s = settings(
            window_type=rng.choice([WindowType.COUNT, WindowType.TIME]),
            window_size=rng.randint(1, 12),
            minimum_calls=rng.randint(1, 6),
            failure_rate_threshold=rng.choice([25, 50, 75, 100]),
            slow_call_rate_threshold=rng.choice([50, 100]),
            permitted_calls_in_half_open=rng.randint(1, 4),
        )
        whole, split = Circuit(s), Circuit(s)
        expected = list(whole.record_batch(calls(spec), 3.0).transitions)
        cuts = sorted(rng.sample(range(len(spec) + 1), k=min(3, len(spec) + 1)))
        got: list[Transition] = []
        for a, b in itertools.pairwise([0, *cuts, len(spec)]):
            got.extend(split.record_batch(calls(spec[a:b]), 3.0).transitions)
        assert got == expected, spec
        assert split.to_dict() == whole.to_dict(), spec


# -- several replicas -------------------------------------------------------------


class Store:
    """One etcd key holding the serialized circuit; each write replaces it whole
    (the compare-and-set loop makes writes sequential, so this is what it sees)."""

    def __init__(self, circuit: Circuit) -> None:
        self.value = json.dumps(circuit.to_dict())
        self.transitions: list[Transition] = []

    def apply(self, batch: list[Call], now: float) -> None:
        circuit = Circuit.from_dict(json.loads(self.value))  # a replica's fresh read
        self.transitions.extend(circuit.record_batch(batch, now).transitions)
        self.value = json.dumps(circuit.to_dict())

    @property
    def circuit(self) -> Circuit:
        return Circuit.from_dict(json.loads(self.value))


def chunks(spec: str, size: int) -> list[list[Call]]:
    return [calls(spec[i : i + size]) for i in range(0, len(spec), size)]


@pytest.mark.parametrize("window_type", [WindowType.COUNT, WindowType.TIME])
def test_replica_batches_in_any_order_open_exactly_once(window_type: WindowType) -> None:
    s = settings(window_type=window_type, window_size=60, minimum_calls=10)
    replica_a = chunks("FFFFFF", 3)  # 6 failures, in 2 batches
    replica_b = chunks("FFFFFF", 3)
    batches = replica_a + replica_b
    finals = set()
    for order in itertools.permutations(range(len(batches))):
        store = Store(Circuit(s, now=0.0))
        for i in order:
            store.apply(batches[i], now=5.0)
        assert [(t.from_state, t.to_state) for t in store.transitions] == [(CLOSED, OPEN)]
        finals.add(store.value)
    assert len(finals) == 1  # byte-identical final state whatever the order
    assert Circuit.from_dict(json.loads(finals.pop())).state is OPEN


@pytest.mark.parametrize("window_type", [WindowType.COUNT, WindowType.TIME])
def test_mixed_replica_batches_open_exactly_once_in_either_order(
    window_type: WindowType,
) -> None:
    s = settings(window_type=window_type, window_size=60, minimum_calls=10)
    a, b = calls("FFFFFF"), calls("SSSSSS")
    ends = []
    for order in ([a, b], [b, a]):
        store = Store(Circuit(s, now=0.0))
        for batch in order:
            store.apply(batch, now=5.0)
        assert [(t.from_state, t.to_state, t.reason) for t in store.transitions] == [
            (CLOSED, OPEN, R.FAILURE_RATE)
        ]
        c = store.circuit
        ends.append((c.state, c.state_since, c.reason))
    assert ends[0] == ends[1] == (OPEN, 5.0, R.FAILURE_RATE)


def test_the_aggregate_decides_not_each_replica() -> None:
    """Neither replica alone reaches minimum_calls; together they open the circuit."""
    s = settings(minimum_calls=10)
    a, b = calls("FFFFF"), calls("FFFFF")
    for batch in (a, b):
        alone = Circuit(s)
        alone.record_batch(batch, 0.0)
        assert alone.state is CLOSED
    store = Store(Circuit(s))
    store.apply(a, 0.0)
    store.apply(b, 0.0)
    assert store.circuit.state is OPEN
    assert len(store.transitions) == 1


def test_half_open_decides_once_with_trials_from_two_replicas() -> None:
    for order in ([calls("SS"), calls("SSSS")], [calls("SSSS"), calls("SS")]):
        store = Store(half_open(now=10.0))
        for batch in order:
            store.apply(batch, now=11.0)
        assert [(t.from_state, t.to_state) for t in store.transitions] == [(HALF_OPEN, CLOSED)]
        assert store.circuit.metrics(11.0).calls == 2  # the two after closing


def test_replicas_ticking_race_moves_once() -> None:
    store = Store(opened())
    transitions = []
    for now in (10.0, 10.2, 10.1):  # three replicas' tickers, clocks slightly apart
        circuit = store.circuit
        transitions += circuit.tick(now)
        store.value = json.dumps(circuit.to_dict())
    assert [(t.from_state, t.to_state, t.at) for t in transitions] == [(OPEN, HALF_OPEN, 10.0)]


# -- TIME windows -------------------------------------------------------------------


TIME = settings(window_type=WindowType.TIME, window_size=10, minimum_calls=4)


@pytest.mark.parametrize(
    ("timeline", "opens"),
    [
        # (now, calls) steps. The window at now is the seconds (floor(now) - 10, floor(now)].
        ([(0.0, "FFF"), (9.9, "F")], True),
        ([(0.0, "FFF"), (10.0, "F")], False),  # second 0 has left the window
        ([(0.5, "FFF"), (10.4, "F")], False),
        ([(0.0, "F"), (3.0, "F"), (6.0, "F"), (9.0, "F")], True),
        ([(0.0, "F"), (3.0, "F"), (6.0, "F"), (10.0, "F")], False),
        ([(0.0, "FFFF")], True),
        ([(0.0, "SSSS"), (5.0, "FF"), (10.0, "FF")], True),  # 4 of 6 at t=10: 67%
        ([(0.0, "SSSS"), (5.0, "FF"), (9.0, "FF")], True),  # 4 of 8: 50%
        ([(0.0, "SSSSS"), (5.0, "FF"), (9.0, "FF")], False),  # 4 of 9: 44%
        ([(0.0, "SSSS"), (5.0, "F"), (20.0, "FFF")], False),  # 3 in the window < 4
        # a replica whose clock runs behind still counts inside the window
        ([(5.0, "FF"), (4.0, "FF")], True),
    ],
)
def test_time_window(timeline: list[tuple[float, str]], opens: bool) -> None:
    circuit = Circuit(TIME)
    for now, spec in timeline:
        circuit.record_batch(calls(spec), now)
    assert (circuit.state is OPEN) is opens


def test_time_window_metrics_expire_without_writes() -> None:
    circuit = Circuit(TIME)
    circuit.record_batch(calls("SF"), 0.0)
    circuit.record_batch(calls("S"), 5.0)
    expected = {5.0: 3, 9.99: 3, 10.0: 1, 14.9: 1, 15.0: 0}
    assert {t: circuit.metrics(t).calls for t in expected} == expected
    assert circuit.metrics(5.0).failure_rate == pytest.approx(100 / 3)


def test_time_window_old_buckets_are_dropped_when_written() -> None:
    circuit = Circuit(TIME)
    for t in range(30):
        circuit.record_batch(calls("S"), float(t))
    buckets = circuit.to_dict()["window"]["buckets"]
    assert [b[0] for b in buckets] == list(range(20, 30))


def test_count_window_keeps_the_last_n_calls() -> None:
    circuit = Circuit(settings(window_size=5, failure_rate_threshold=100))
    run(circuit, "FSSSSSFSf")
    assert circuit.to_dict()["window"] == {"calls": "SSFSf"}
    m = circuit.metrics(0.0)
    assert (m.calls, m.failed_calls, m.slow_calls, m.slow_failed_calls) == (5, 2, 1, 1)


# -- operator overrides -----------------------------------------------------------


@pytest.fixture(params=["CLOSED", "OPEN", "HALF_OPEN", "FORCED_OPEN", "FORCED_CLOSED"])
def any_state(request: pytest.FixtureRequest) -> Circuit:
    circuit = {"CLOSED": lambda: Circuit(BASE), "OPEN": opened, "HALF_OPEN": half_open}.get(
        request.param, lambda: Circuit(BASE)
    )()
    if request.param == "CLOSED":
        run(circuit, "SSF", now=10.0)
    elif request.param == "FORCED_OPEN":
        circuit.force_open(10.0)
    elif request.param == "FORCED_CLOSED":
        circuit.force_closed(10.0)
    assert circuit.state.name == request.param
    return circuit


def test_force_open(any_state: Circuit) -> None:
    before = any_state.state
    transitions = any_state.force_open(20.0)
    if before is FORCED_OPEN:
        assert transitions == []
    else:
        assert [(t.from_state, t.to_state, t.reason) for t in transitions] == [
            (before, FORCED_OPEN, R.FORCED_OPEN)
        ]
    # Refuses every call, ignores outcomes and time.
    for now in (20.0, 1e6):
        assert not any_state.allows_call(now)
        assert not any_state.acquire_permission(now).permitted
        assert any_state.tick(now) == []
        result = any_state.record_batch(calls("SSSSSSSS"), now)
        assert (result.transitions, result.recorded, result.ignored) == ((), 0, 8)
    assert any_state.state is FORCED_OPEN


def test_force_closed(any_state: Circuit) -> None:
    before = any_state.state
    transitions = any_state.force_closed(20.0)
    if before is FORCED_CLOSED:
        assert transitions == []
    else:
        assert [(t.from_state, t.to_state, t.reason) for t in transitions] == [
            (before, FORCED_CLOSED, R.FORCED_CLOSED)
        ]
    for now in (20.0, 1e6):
        assert any_state.allows_call(now)
        assert any_state.acquire_permission(now).permitted
        assert any_state.tick(now) == []
        result = any_state.record_batch(calls("FFFFFFFFFF"), now)
        assert (result.transitions, result.recorded, result.ignored) == ((), 0, 10)
    assert any_state.state is FORCED_CLOSED
    assert any_state.metrics(1e6).calls == 0


def test_reset(any_state: Circuit) -> None:
    before = any_state.state
    assert [(t.from_state, t.to_state, t.reason, t.at) for t in any_state.reset(30.0)] == [
        (before, CLOSED, R.RESET, 30.0)
    ]
    assert (any_state.state, any_state.state_since, any_state.reason) == (CLOSED, 30.0, R.RESET)
    assert any_state.metrics(30.0).calls == 0
    assert any_state.allows_call(30.0)
    # An empty window again: it takes minimum_calls fresh calls to open.
    run(any_state, "FFF", now=30.0)
    assert any_state.state is CLOSED
    run(any_state, "F", now=30.0)
    assert any_state.state is OPEN


# -- metrics ------------------------------------------------------------------------


def test_metrics_per_state() -> None:
    circuit = Circuit(settings(failure_rate_threshold=60), now=1.0)
    run(circuit, "SSfF", now=2.0)
    m = circuit.metrics(2.0)
    assert (m.state, m.state_since, m.reason, m.trial_permits_left) == (CLOSED, 1.0, None, 0)
    assert (m.calls, m.failed_calls, m.slow_calls, m.slow_failed_calls) == (4, 2, 1, 1)
    assert (m.failure_rate, m.slow_call_rate) == (50.0, 25.0)

    run(circuit, "F", now=3.0)  # 3 of 5: 60%
    m = circuit.metrics(3.0)
    assert (m.state, m.state_since, m.reason) == (OPEN, 3.0, R.FAILURE_RATE)
    # OPEN shows the window that opened it.
    assert (m.calls, m.failed_calls, m.failure_rate) == (5, 3, 60.0)
    assert "60.0%" in m.detail

    circuit.tick(13.0)
    circuit.acquire_permission(13.0)
    run(circuit, "F", now=13.0)
    m = circuit.metrics(13.0)
    assert (m.state, m.calls, m.failed_calls, m.trial_permits_left) == (HALF_OPEN, 1, 1, 3)

    run(circuit, "FSS", now=13.0)  # 2 of 4 trials failed: 50% < 60% -> CLOSED
    assert circuit.state is CLOSED
    circuit.force_open(14.0)
    m = circuit.metrics(14.0)
    assert (m.state, m.calls, m.failure_rate, m.reason) == (FORCED_OPEN, 0, 0.0, R.FORCED_OPEN)


def test_counts_rates() -> None:
    assert Counts().failure_rate == 0.0 and Counts().slow_call_rate == 0.0
    c = Counts(calls=8, failures=2, slow=6, slow_failures=1)
    assert (c.failure_rate, c.slow_call_rate) == (25.0, 75.0)


# -- persistence ---------------------------------------------------------------------


def circuits_in_every_state() -> list[Circuit]:
    closed_count = Circuit(BASE, now=1.0)
    run(closed_count, "SFsfS", now=2.0)
    closed_time = Circuit(TIME, now=1.0)
    closed_time.record_batch(calls("SF"), 2.0)
    closed_time.record_batch(calls("sf"), 7.5)
    trial = half_open(now=10.0)
    trial.acquire_permission(10.0)
    trial.acquire_permission(10.0)
    run(trial, "F", now=11.0)
    forced_open, forced_closed = Circuit(BASE), Circuit(BASE)
    forced_open.force_open(3.0)
    forced_closed.force_closed(3.0)
    return [
        Circuit(),
        closed_count,
        closed_time,
        opened(now=4.0),
        trial,
        forced_open,
        forced_closed,
    ]


@pytest.mark.parametrize("index", range(7))
def test_dict_round_trip(index: int) -> None:
    original = circuits_in_every_state()[index]
    data = original.to_dict()
    restored = round_trip(original)
    assert restored.to_dict() == data
    assert restored == original
    assert restored.metrics(8.0) == original.metrics(8.0)
    # ... and they go on to behave the same.
    for now, spec in [(9.0, "FFSF"), (20.0, "SSSS"), (21.0, "FFFFFF"), (40.0, "SF")]:
        assert original.record_batch(calls(spec), now) == restored.record_batch(calls(spec), now)
        assert original.acquire_permission(now) == restored.acquire_permission(now)
        assert original.to_dict() == restored.to_dict()


def test_dict_is_plain_json() -> None:
    data = circuits_in_every_state()[4].to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["state"] == "HALF_OPEN" and data["permits"] == 2 and data["trials"] == [1, 1, 0, 0]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(v=99),
        lambda d: d.pop("v"),
        lambda d: d.update(state="AJAR"),
        lambda d: d.pop("since"),
        lambda d: d.update(since="yesterday"),
        lambda d: d.update(reason="BORED"),
        lambda d: d.update(window={"calls": "SXS"}),
        lambda d: d.update(window={"calls": "S" * 11}),  # longer than the window
        lambda d: d.update(window={"buckets": []}),  # a TIME window in a COUNT circuit
        lambda d: d.update(trials=[1, 2, 0, 0]),  # more failures than calls
        lambda d: d.update(trials=[1, 1]),
        lambda d: d.update(permits=-1),
        lambda d: d["settings"].update(window_size=0),
        lambda d: d["settings"].update(colour="red"),
    ],
)
def test_from_dict_rejects_garbage(mutate: Any) -> None:
    data = circuits_in_every_state()[1].to_dict()
    mutate(data)
    with pytest.raises(ValueError):
        Circuit.from_dict(data)


@pytest.mark.parametrize(
    "buckets",
    [[["x", 1, 0, 0, 0]], [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0]], [[1, 1, 0, 0]], ["junk"]],
)
def test_from_dict_rejects_bad_time_buckets(buckets: list[Any]) -> None:
    data = circuits_in_every_state()[2].to_dict()
    data["window"] = {"buckets": buckets}
    with pytest.raises(ValueError):
        Circuit.from_dict(data)


def test_copy_is_independent() -> None:
    circuit = Circuit(BASE)
    clone = circuit.copy()
    run(clone, "FFFF")
    assert (circuit.state, clone.state) == (CLOSED, OPEN)
    assert circuit != clone


# -- settings changes and bad input ---------------------------------------------------


def test_configure_keeps_counts_when_the_window_shape_is_unchanged() -> None:
    circuit = Circuit(BASE)
    run(circuit, "SSSF")  # 25%
    circuit.configure(settings(failure_rate_threshold=20))
    assert circuit.state is CLOSED  # nothing judged until the next outcome
    run(circuit, "S")  # 1 of 5 = 20% >= 20%
    assert circuit.state is OPEN


@pytest.mark.parametrize(
    "change",
    [{"window_size": 20}, {"window_type": WindowType.TIME}],
)
def test_configure_restarts_a_reshaped_window(change: dict[str, Any]) -> None:
    circuit = Circuit(BASE)
    run(circuit, "SSF")
    circuit.configure(settings(**change))
    assert circuit.metrics(0.0).calls == 0
    assert circuit.settings == settings(**change)


def test_configure_rejects_invalid_settings() -> None:
    circuit = Circuit(BASE)
    with pytest.raises(InvalidArgument):
        circuit.configure(settings(minimum_calls=0))
    assert circuit.settings == BASE


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf])
def test_time_must_be_finite(now: float) -> None:
    circuit = Circuit(BASE)
    for step in (
        lambda: circuit.tick(now),
        lambda: circuit.record_batch([], now),
        lambda: circuit.acquire_permission(now),
        lambda: circuit.force_open(now),
        lambda: circuit.reset(now),
        lambda: Circuit(BASE, now=now),
    ):
        with pytest.raises(ValueError):
            step()
