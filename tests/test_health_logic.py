"""The probe-result state machine, table by table."""

from __future__ import annotations

import pytest
from aitrading.hub.v1 import types_pb2
from google.protobuf import duration_pb2

from hub_server.domain.health import (
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
    UNKNOWN,
    Policy,
    ProbeResult,
    State,
    next_state,
    worth_writing,
)

P = Policy()  # thresholds: 3 failures, 2 successes, degraded above 1000 ms
OK = ProbeResult(True, 10.0)
SLOW = ProbeResult(True, 1500.0)
SAYS_DEGRADED = ProbeResult(True, 10.0, degraded=True)
FAIL = ProbeResult(False, 2000.0, message="timed out")


def run(results: list[ProbeResult], start: State | None = None) -> list[int]:
    state, out = start or State(), []
    for r in results:
        state = next_state(state, r, P)
        out.append(state.status)
    return out


@pytest.mark.parametrize(
    ("results", "statuses"),
    [
        ([OK], [HEALTHY]),  # the first probe decides outright
        ([FAIL], [UNHEALTHY]),
        ([SLOW], [DEGRADED]),
        ([SAYS_DEGRADED], [DEGRADED]),
        ([OK, FAIL, FAIL, FAIL], [HEALTHY, HEALTHY, HEALTHY, UNHEALTHY]),
        ([OK, FAIL, FAIL, OK, FAIL, FAIL], [HEALTHY] * 6),  # a blip resets the count
        ([FAIL, OK, OK], [UNHEALTHY, UNHEALTHY, HEALTHY]),
        ([FAIL, OK, FAIL, OK, OK], [UNHEALTHY] * 4 + [HEALTHY]),
        ([FAIL, OK, SLOW], [UNHEALTHY, UNHEALTHY, DEGRADED]),
        ([OK, SLOW, OK], [HEALTHY, DEGRADED, HEALTHY]),  # latency has no delay
        ([SLOW, FAIL, FAIL, FAIL], [DEGRADED, DEGRADED, DEGRADED, UNHEALTHY]),
    ],
)
def test_transitions(results: list[ProbeResult], statuses: list[int]) -> None:
    assert run(results) == statuses


def test_thresholds_come_from_the_check() -> None:
    check = types_pb2.HealthCheck(
        unhealthy_threshold=1,
        healthy_threshold=4,
        degraded_latency=duration_pb2.Duration(nanos=50_000_000),
        interval=duration_pb2.Duration(seconds=3),
    )
    policy = Policy.of(check)
    assert (policy.unhealthy_threshold, policy.healthy_threshold) == (1, 4)
    assert policy.degraded_latency_ms == pytest.approx(50)
    assert policy.interval == 3 and policy.timeout == 2.0
    assert next_state(State(HEALTHY), FAIL, policy).status == UNHEALTHY
    assert next_state(State(HEALTHY), ProbeResult(True, 60), policy).status == DEGRADED
    state = State(UNHEALTHY)
    for _ in range(3):
        state = next_state(state, OK, policy)
        assert state.status == UNHEALTHY
    assert next_state(state, OK, policy).status == HEALTHY


def test_counters() -> None:
    s = next_state(State(UNKNOWN), FAIL, P)
    assert (s.failures, s.successes) == (1, 0)
    s = next_state(s, OK, P)
    assert (s.failures, s.successes) == (0, 1)


def _record(status: int, latency: float, at: float) -> types_pb2.InstanceHealth:
    r = types_pb2.InstanceHealth(status=status, latency_ms=latency)
    r.last_check.FromMicroseconds(int(at * 1e6))
    return r


@pytest.mark.parametrize(
    ("old", "new", "now", "write"),
    [
        (None, _record(HEALTHY, 10, 100), 100, True),
        (_record(HEALTHY, 10, 100), _record(UNHEALTHY, 10, 101), 101, True),
        (_record(HEALTHY, 10, 100), _record(HEALTHY, 12, 101), 101, False),
        (_record(HEALTHY, 10, 100), _record(HEALTHY, 40, 101), 101, True),
        (_record(HEALTHY, 100, 100), _record(HEALTHY, 130, 101), 101, False),
        (_record(HEALTHY, 10, 100), _record(HEALTHY, 10, 131), 131, True),
    ],
)
def test_worth_writing(old, new, now: float, write: bool) -> None:  # type: ignore[no-untyped-def]
    assert worth_writing(old, new, now) is write
