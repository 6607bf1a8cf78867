"""The probe-result state machine, table by table."""

from __future__ import annotations

import pytest
from aitrading.hub.v1 import types_pb2
from google.protobuf import duration_pb2

from hub_server.health.service import (
    DEGRADED,
    HEALTHY,
    STARTING,
    UNHEALTHY,
    UNKNOWN,
    Policy,
    ProbeResult,
    State,
    next_state,
    usable,
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
        # A new instance is STARTING: one success proves it (no healthy_threshold:
        # there is nothing to recover from), unhealthy_threshold failures fail it.
        ([OK], [HEALTHY]),
        ([FAIL], [STARTING]),
        ([FAIL, FAIL], [STARTING, STARTING]),
        ([FAIL, FAIL, FAIL], [STARTING, STARTING, UNHEALTHY]),
        ([FAIL, FAIL, OK], [STARTING, STARTING, HEALTHY]),
        ([FAIL, FAIL, SLOW], [STARTING, STARTING, DEGRADED]),
        ([FAIL, OK, FAIL, FAIL, FAIL], [STARTING, HEALTHY, HEALTHY, HEALTHY, UNHEALTHY]),
        ([SLOW], [DEGRADED]),
        ([SAYS_DEGRADED], [DEGRADED]),
        ([OK, FAIL, FAIL, FAIL], [HEALTHY, HEALTHY, HEALTHY, UNHEALTHY]),
        ([OK, FAIL, FAIL, OK, FAIL, FAIL], [HEALTHY] * 6),  # a blip resets the count
        # Recovering from UNHEALTHY takes healthy_threshold successes in a row.
        ([FAIL] * 3 + [OK, OK], [STARTING] * 2 + [UNHEALTHY] * 2 + [HEALTHY]),
        ([FAIL] * 3 + [OK, FAIL, OK, OK], [STARTING] * 2 + [UNHEALTHY] * 4 + [HEALTHY]),
        ([FAIL] * 3 + [OK, SLOW], [STARTING] * 2 + [UNHEALTHY] * 2 + [DEGRADED]),
        ([FAIL] * 4, [STARTING] * 2 + [UNHEALTHY] * 2),
        ([OK, SLOW, OK], [HEALTHY, DEGRADED, HEALTHY]),  # latency has no delay
        ([SLOW, FAIL, FAIL, FAIL], [DEGRADED, DEGRADED, DEGRADED, UNHEALTHY]),
    ],
)
def test_transitions(results: list[ProbeResult], statuses: list[int]) -> None:
    assert run(results) == statuses


# Every (status before, probe result) pair with the default policy and no counts
# yet: (status after, failures, successes).
@pytest.mark.parametrize(
    ("before", "result", "after"),
    [
        (STARTING, OK, (HEALTHY, 0, 1)),
        (STARTING, SLOW, (DEGRADED, 0, 1)),
        (STARTING, SAYS_DEGRADED, (DEGRADED, 0, 1)),
        (STARTING, FAIL, (STARTING, 1, 0)),
        (UNKNOWN, OK, (HEALTHY, 0, 1)),  # no status yet counts as STARTING
        (UNKNOWN, SLOW, (DEGRADED, 0, 1)),
        (UNKNOWN, FAIL, (STARTING, 1, 0)),
        (HEALTHY, OK, (HEALTHY, 0, 1)),
        (HEALTHY, SLOW, (DEGRADED, 0, 1)),
        (HEALTHY, FAIL, (HEALTHY, 1, 0)),
        (DEGRADED, OK, (HEALTHY, 0, 1)),
        (DEGRADED, SAYS_DEGRADED, (DEGRADED, 0, 1)),
        (DEGRADED, FAIL, (DEGRADED, 1, 0)),
        (UNHEALTHY, OK, (UNHEALTHY, 0, 1)),
        (UNHEALTHY, SLOW, (UNHEALTHY, 0, 1)),
        (UNHEALTHY, FAIL, (UNHEALTHY, 1, 0)),
    ],
)
def test_every_status_and_result(before: int, result: ProbeResult, after: tuple) -> None:  # type: ignore[type-arg]
    s = next_state(State(before), result, P)
    assert (s.status, s.failures, s.successes) == after


@pytest.mark.parametrize(
    ("before", "result", "after"),
    [
        # the last failure allowed: one more and it is UNHEALTHY, from any up state
        (State(STARTING, failures=2), FAIL, UNHEALTHY),
        (State(HEALTHY, failures=2), FAIL, UNHEALTHY),
        (State(DEGRADED, failures=2), FAIL, UNHEALTHY),
        (State(UNKNOWN, failures=2), FAIL, UNHEALTHY),
        # one success short of healthy_threshold: this one recovers it
        (State(UNHEALTHY, successes=1), OK, HEALTHY),
        (State(UNHEALTHY, successes=1), SLOW, DEGRADED),
        # a failure resets the successes, a success the failures
        (State(UNHEALTHY, successes=1), FAIL, UNHEALTHY),
        (State(STARTING, failures=2), OK, HEALTHY),
    ],
)
def test_thresholds_reached(before: State, result: ProbeResult, after: int) -> None:
    assert next_state(before, result, P).status == after


def test_a_new_state_is_starting() -> None:
    assert State().status == STARTING


@pytest.mark.parametrize(("unhealthy", "fails"), [(1, 1), (2, 2), (5, 5)])
def test_starting_fails_after_unhealthy_threshold(unhealthy: int, fails: int) -> None:
    policy = Policy(unhealthy_threshold=unhealthy, healthy_threshold=7)
    state = State()
    for n in range(1, fails + 1):
        state = next_state(state, FAIL, policy)
        assert state.status == (UNHEALTHY if n == fails else STARTING)
    # healthy_threshold does not hold back a STARTING instance's first success
    assert next_state(State(STARTING, failures=fails - 1), OK, policy).status == HEALTHY


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


@pytest.mark.parametrize(
    ("age", "interval", "refresh", "write"),
    [
        (19.0, 10.0, 30.0, False),  # the next probe, 10 s on, is still within 30 s
        (20.0, 10.0, 30.0, True),  # the next one would find it 30 s old
        (29.4, 0.5, 30.0, False),
        (29.5, 0.5, 30.0, True),
        (0.1, 60.0, 30.0, True),  # an interval above refresh: every probe is written
        (0.5, 2.0, 2.1, True),
        (0.0, 0.0, 30.0, False),
    ],
)
def test_worth_writing_keeps_last_check_within_refresh(
    age: float, interval: float, refresh: float, write: bool
) -> None:
    old, new = _record(HEALTHY, 10, 100), _record(HEALTHY, 10, 100 + age)
    assert worth_writing(old, new, 100 + age, interval=interval, refresh=refresh) is write


@pytest.mark.parametrize(
    ("interval", "refresh"), [(0.5, 30.0), (10.0, 30.0), (7.0, 30.0), (29.0, 30.0), (45.0, 30.0)]
)
def test_stored_last_check_is_at_most_max_of_interval_and_refresh_old(
    interval: float, refresh: float
) -> None:
    # Probes of an unchanged instance every interval for an hour: the stored
    # last_check, looked at just before each probe, is never older than the bound.
    stored = _record(HEALTHY, 10, 0.0)
    oldest, now = 0.0, 0.0
    while now < 3600:
        now += interval
        oldest = max(oldest, now - stored.last_check.ToMicroseconds() / 1e6)
        new = _record(HEALTHY, 10, now)
        if worth_writing(stored, new, now, interval=interval, refresh=refresh):
            stored = new
    assert oldest <= max(interval, refresh) + 1e-6


def _pairs(*statuses: int) -> list[tuple[types_pb2.Instance, types_pb2.InstanceHealth]]:
    return [
        (types_pb2.Instance(instance_id=str(n)), types_pb2.InstanceHealth(status=status))
        for n, status in enumerate(statuses)
    ]


@pytest.mark.parametrize(
    ("statuses", "chosen"),
    [
        ((HEALTHY, DEGRADED, STARTING, UNHEALTHY), ["0"]),
        ((STARTING, DEGRADED, UNHEALTHY), ["1"]),
        ((STARTING, UNHEALTHY, STARTING), ["0", "2"]),
        ((UNKNOWN, STARTING), ["0", "1"]),  # no status ranks as STARTING
        ((UNHEALTHY, UNHEALTHY), []),
        ((), []),
    ],
)
def test_usable_order(statuses: tuple[int, ...], chosen: list[str]) -> None:
    assert [i.instance_id for i, _ in usable(_pairs(*statuses))] == chosen
