"""The circuit breaker state machine (pure: no clock, no I/O).

It follows the usual definition (resilience4j's):

* CLOSED: calls flow and their outcomes fill a sliding window, either the last
  ``window_size`` calls (COUNT) or the calls of the last ``window_size`` seconds
  (TIME, per-second buckets). Once the window holds at least ``minimum_calls``
  calls, a failure rate >= ``failure_rate_threshold`` or a slow-call rate >=
  ``slow_call_rate_threshold`` (both in percent) opens the circuit.
* OPEN: calls are refused; outcomes that still arrive are ignored. After
  ``wait_in_open`` seconds the circuit goes HALF_OPEN.
* HALF_OPEN: ``permitted_calls_in_half_open`` trial calls are allowed
  (:meth:`Circuit.acquire_permission` hands out that many permits). When that
  many trial outcomes are in, the same two thresholds over the trial calls decide
  CLOSED or OPEN. If ``max_wait_in_half_open`` (> 0) passes first, back to OPEN.
  An outcome counts as a trial whether or not its caller took a permit: the
  hub cannot tell, and the first outcomes in are the ones that decide.
* FORCED_OPEN / FORCED_CLOSED: operator overrides that refuse / allow every call
  and ignore outcomes and time until :meth:`Circuit.reset` (CLOSED, empty window).

Every transition starts the new state afresh (empty window, no trials).

Fleet-wide use: a circuit is a plain JSON-able dict (:meth:`Circuit.to_dict`)
kept in one etcd key. A replica applies a batch of outcomes to the stored state
with ``from_dict`` -> :meth:`Circuit.record_batch` -> ``to_dict`` and writes it
back with compare-and-set, retrying from a fresh read on conflict. Because the
machine processes the concatenation of all batches as one call sequence
(applying B1 then B2 equals applying B1 + B2), the CAS order is the one history
every replica agrees on, so each transition happens exactly once, in whichever
order the batches land. Time is always passed in as ``now`` (seconds, wall
clock: replicas should be NTP-synchronised), and the transition's own time is
``now``, so the outcome never depends on which replica ran the step.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from enum import IntEnum, StrEnum
from typing import Any

from hub_server.kernel.errors import FieldViolation, InvalidArgument

SCHEMA_VERSION = 1
# Bounds that keep a serialized circuit small (it is rewritten on every batch):
# a COUNT window is one character per call, a TIME window one entry per second.
MAX_COUNT_WINDOW = 10_000
MAX_TIME_WINDOW = 3_600
MAX_PERMITTED_CALLS_IN_HALF_OPEN = 10_000
# Longest duration a setting may hold (seconds): a day; a Duration near its own
# limit would overflow when sent back.
MAX_DURATION = 86_400.0


class WindowType(IntEnum):
    """How the sliding window is measured (values are the proto's numbers)."""

    COUNT = 1  # the last window_size calls
    TIME = 2  # the calls of the last window_size seconds


class CircuitState(IntEnum):
    """State of a circuit (values are the proto's ``CircuitState`` numbers)."""

    CLOSED = 1
    OPEN = 2
    HALF_OPEN = 3
    FORCED_OPEN = 4
    FORCED_CLOSED = 5


class Outcome(IntEnum):
    """Result of one call (values are the proto's ``Outcome`` numbers)."""

    SUCCESS = 1
    FAILURE = 2


class TransitionReason(StrEnum):
    """Why a circuit changed state; stable UPPER_SNAKE codes for clients and alerts."""

    FAILURE_RATE = "FAILURE_RATE"  # CLOSED -> OPEN
    SLOW_CALL_RATE = "SLOW_CALL_RATE"  # CLOSED -> OPEN
    WAIT_ELAPSED = "WAIT_ELAPSED"  # OPEN -> HALF_OPEN
    TRIALS_PASSED = "TRIALS_PASSED"  # HALF_OPEN -> CLOSED
    TRIALS_FAILED = "TRIALS_FAILED"  # HALF_OPEN -> OPEN
    HALF_OPEN_TIMEOUT = "HALF_OPEN_TIMEOUT"  # HALF_OPEN -> OPEN
    FORCED_OPEN = "FORCED_OPEN"  # operator
    FORCED_CLOSED = "FORCED_CLOSED"  # operator
    RESET = "RESET"  # operator: any -> CLOSED with an empty window


@dataclass(frozen=True, slots=True)
class CircuitSettings:
    """Thresholds of one circuit. Durations are in seconds, rates in percent.

    Attributes:
        window_type: COUNT (last ``window_size`` calls) or TIME (last
            ``window_size`` seconds).
        window_size: Calls (COUNT, at most 10,000) or seconds (TIME, at most 3,600).
        minimum_calls: Calls the window must hold before rates are judged. For a
            COUNT window it is capped at ``window_size``.
        failure_rate_threshold: Failure rate (percent, 0 < x <= 100) that opens.
        slow_call_duration: A call taking longer than this (seconds, at most a
            day) is slow, whether it succeeded or failed.
        slow_call_rate_threshold: Slow-call rate (percent, 0 < x <= 100) that
            opens. At 100 only a window of nothing but slow calls opens.
        wait_in_open: Seconds in OPEN before trial calls are allowed (> 0, at
            most a day).
        permitted_calls_in_half_open: Trial calls in HALF_OPEN; their outcomes
            decide CLOSED or OPEN.
        max_wait_in_half_open: Seconds in HALF_OPEN before giving up and going
            back to OPEN (at most a day); 0 waits for the trial outcomes forever.
    """

    window_type: WindowType = WindowType.COUNT
    window_size: int = 100
    minimum_calls: int = 20
    failure_rate_threshold: float = 50.0
    slow_call_duration: float = 2.0
    slow_call_rate_threshold: float = 100.0
    wait_in_open: float = 30.0
    permitted_calls_in_half_open: int = 5
    max_wait_in_half_open: float = 0.0

    @classmethod
    def with_defaults(cls, **values: Any) -> CircuitSettings:
        """Settings from partial values where a missing, None or zero value takes
        its default (the proto's rule for ``CircuitSettings``). Not validated.

        Raises:
            TypeError: A name is not a settings field.
        """
        given = {k: v for k, v in values.items() if v is not None and v != 0}
        if isinstance(given.get("window_type"), int | str):
            given["window_type"] = _window_type_or_raw(given["window_type"])
        return replace(cls(), **given)

    @property
    def effective_minimum_calls(self) -> int:
        """The minimum the window is judged at: a COUNT window never holds more
        than ``window_size`` calls, so a larger minimum would never be reached."""
        if self.window_type is WindowType.COUNT:
            return min(self.minimum_calls, self.window_size)
        return self.minimum_calls

    def validate(self) -> list[FieldViolation]:
        """Every problem with these settings, as (field, description) pairs; empty if valid."""
        out: list[FieldViolation] = []

        def bad(name: str, text: str) -> None:
            out.append(FieldViolation(name, text))

        def check_int(name: str, value: object, low: int, high: int) -> None:
            if not isinstance(value, int) or isinstance(value, bool):
                bad(name, "must be an integer")
            elif not low <= value <= high:
                bad(name, f"must be between {low} and {high}")

        def check_float(name: str, value: object, *, positive: bool, high: float | None) -> None:
            if not isinstance(value, int | float) or isinstance(value, bool):
                bad(name, "must be a number")
            elif not math.isfinite(value):
                bad(name, "must be finite")
            elif positive and value <= 0:
                bad(name, "must be greater than 0")
            elif not positive and value < 0:
                bad(name, "must not be negative")
            elif high is not None and value > high:
                bad(name, f"must be at most {high:g}")

        if not isinstance(self.window_type, WindowType):
            bad("window_type", "must be COUNT or TIME")
            check_int("window_size", self.window_size, 1, MAX_COUNT_WINDOW)
        elif self.window_type is WindowType.COUNT:
            check_int("window_size", self.window_size, 1, MAX_COUNT_WINDOW)
        else:
            check_int("window_size", self.window_size, 1, MAX_TIME_WINDOW)
        check_int("minimum_calls", self.minimum_calls, 1, 2**31 - 1)
        check_float("failure_rate_threshold", self.failure_rate_threshold, positive=True, high=100)
        check_float("slow_call_duration", self.slow_call_duration, positive=True, high=MAX_DURATION)
        check_float(
            "slow_call_rate_threshold", self.slow_call_rate_threshold, positive=True, high=100
        )
        check_float("wait_in_open", self.wait_in_open, positive=True, high=MAX_DURATION)
        check_int(
            "permitted_calls_in_half_open",
            self.permitted_calls_in_half_open,
            1,
            MAX_PERMITTED_CALLS_IN_HALF_OPEN,
        )
        check_float(
            "max_wait_in_half_open", self.max_wait_in_half_open, positive=False, high=MAX_DURATION
        )
        return out

    def ensure_valid(self) -> CircuitSettings:
        """Return self if valid.

        Raises:
            InvalidArgument: With one violation per bad field.
        """
        violations = self.validate()
        if violations:
            raise InvalidArgument(violations)
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (enum by name)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["window_type"] = self.window_type.name
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CircuitSettings:
        """Settings from :meth:`to_dict` output; missing keys take defaults.

        Raises:
            ValueError: Unknown keys, or values that are not valid settings.
        """
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown circuit settings: {sorted(unknown)}")
        values = dict(data)
        if "window_type" in values:
            values["window_type"] = _window_type_or_raw(values["window_type"])
        settings = replace(cls(), **values)
        violations = settings.validate()
        if violations:
            raise ValueError(f"invalid circuit settings: {violations}")
        return settings


def _window_type_or_raw(value: object) -> object:
    """WindowType from a name or number; anything else unchanged, for validate() to flag."""
    try:
        if isinstance(value, str):
            return WindowType[value.upper()]
        if isinstance(value, int) and not isinstance(value, bool):
            return WindowType(value)
    except (KeyError, ValueError):
        pass
    return value


@dataclass(frozen=True, slots=True)
class Call:
    """One reported call.

    Attributes:
        outcome: SUCCESS or FAILURE.
        latency_ms: How long it took; above ``slow_call_duration`` it is slow
            (a failure can be slow too, and then counts in both rates).
    """

    outcome: Outcome
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Counts:
    """Calls in a window and how many failed / were slow."""

    calls: int = 0
    failures: int = 0
    slow: int = 0  # slow calls, failed ones included
    slow_failures: int = 0

    @property
    def failure_rate(self) -> float:
        """Percent of calls that failed (0 for no calls)."""
        return 100.0 * self.failures / self.calls if self.calls else 0.0

    @property
    def slow_call_rate(self) -> float:
        """Percent of calls that were slow (0 for no calls)."""
        return 100.0 * self.slow / self.calls if self.calls else 0.0


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of state.

    Attributes:
        from_state: The state left.
        to_state: The state entered (equal to ``from_state`` only for a RESET of a
            CLOSED circuit, which still empties the window).
        reason: Why, as a stable code.
        at: When (the ``now`` of the step that made it).
        detail: Human-readable numbers behind the reason.
    """

    from_state: CircuitState
    to_state: CircuitState
    reason: TransitionReason
    at: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What :meth:`Circuit.record_batch` did.

    Attributes:
        transitions: In order; time-based ones (from the implicit tick) first.
        recorded: Outcomes that went into the window or the trials.
        ignored: Outcomes that arrived while OPEN or forced (not counted).
    """

    transitions: tuple[Transition, ...]
    recorded: int
    ignored: int


@dataclass(frozen=True, slots=True)
class Permission:
    """Answer of :meth:`Circuit.acquire_permission`."""

    permitted: bool
    transitions: tuple[Transition, ...] = ()


@dataclass(frozen=True, slots=True)
class CircuitMetrics:
    """A snapshot of a circuit for reports and dashboards.

    What the counts cover depends on the state: CLOSED, the sliding window as of
    ``now``; HALF_OPEN, the trial calls so far; OPEN, the window (or trials) that
    opened it; forced states, nothing.

    Attributes:
        state: The current state.
        state_since: When it was entered.
        reason: The last transition's reason (None for a new circuit).
        detail: The last transition's detail.
        calls: Calls counted.
        failed_calls: Of which failed.
        slow_calls: Of which slow (failed ones included).
        slow_failed_calls: Of which slow and failed.
        failure_rate: Percent failed (0 with no calls).
        slow_call_rate: Percent slow (0 with no calls).
        trial_permits_left: HALF_OPEN permits not yet handed out (0 otherwise).
    """

    state: CircuitState
    state_since: float
    reason: TransitionReason | None
    detail: str
    calls: int
    failed_calls: int
    slow_calls: int
    slow_failed_calls: int
    failure_rate: float
    slow_call_rate: float
    trial_permits_left: int


# A call is coded in two bits: bit 0 failed, bit 1 slow. A COUNT window stores
# one character per call, oldest first.
_FAILED, _SLOW = 1, 2
_CODE_CHARS = "SFsf"  # fast success, fast failure, slow success, slow failure
_CHAR_CODES = {c: i for i, c in enumerate(_CODE_CHARS)}


class _Tally:
    """Mutable counters behind a window (Counts is the frozen view)."""

    __slots__ = ("calls", "failures", "slow", "slow_failures")

    def __init__(self, calls: int = 0, failures: int = 0, slow: int = 0, sf: int = 0) -> None:
        self.calls, self.failures, self.slow, self.slow_failures = calls, failures, slow, sf

    def add(self, code: int, sign: int = 1) -> None:
        self.calls += sign
        if code & _FAILED:
            self.failures += sign
        if code & _SLOW:
            self.slow += sign
            if code & _FAILED:
                self.slow_failures += sign

    def add_tally(self, other: _Tally, sign: int = 1) -> None:
        self.calls += sign * other.calls
        self.failures += sign * other.failures
        self.slow += sign * other.slow
        self.slow_failures += sign * other.slow_failures

    def counts(self) -> Counts:
        return Counts(self.calls, self.failures, self.slow, self.slow_failures)

    def to_list(self) -> list[int]:
        return [self.calls, self.failures, self.slow, self.slow_failures]

    @classmethod
    def from_list(cls, value: object) -> _Tally:
        if (
            not isinstance(value, list)
            or len(value) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
        ):
            raise ValueError(f"bad call counts: {value!r}")
        calls, failures, slow, sf = value
        if failures > calls or slow > calls or sf > min(failures, slow):
            raise ValueError(f"inconsistent call counts: {value!r}")
        return cls(calls, failures, slow, sf)


class _CountWindow:
    """The last ``size`` calls, as a ring of call codes plus running totals."""

    __slots__ = ("ring", "size", "total")

    def __init__(self, size: int) -> None:
        self.size = size
        self.ring: deque[int] = deque()
        self.total = _Tally()

    def add(self, code: int, now: float) -> None:
        if len(self.ring) == self.size:
            self.total.add(self.ring.popleft(), -1)
        self.ring.append(code)
        self.total.add(code)

    def current(self) -> Counts:
        """Counts right after an add (what the CLOSED check judges)."""
        return self.total.counts()

    def at(self, now: float) -> Counts:
        return self.total.counts()

    def to_dict(self) -> dict[str, Any]:
        return {"calls": "".join(_CODE_CHARS[c] for c in self.ring)}

    @classmethod
    def from_dict(cls, size: int, data: Mapping[str, Any]) -> _CountWindow:
        calls = data.get("calls", "")
        if set(data) - {"calls"} or not isinstance(calls, str) or len(calls) > size:
            raise ValueError("bad COUNT window")
        window = cls(size)
        try:
            for ch in calls:
                window.add(_CHAR_CODES[ch], 0.0)
        except KeyError:
            raise ValueError("bad COUNT window call code") from None
        return window


class _TimeWindow:
    """The calls of the last ``size`` seconds, in per-second buckets.

    Bucket ``s`` holds the calls recorded at ``now`` in [s, s + 1); at ``now`` the
    window is the buckets with ``s > floor(now) - size``. Buckets from a replica
    whose clock runs ahead count until they age out like any other.
    """

    __slots__ = ("buckets", "seen", "size", "total")

    def __init__(self, size: int) -> None:
        self.size = size
        self.buckets: dict[int, _Tally] = {}
        self.total = _Tally()  # of every stored bucket
        self.seen: int | None = None  # second of the last eviction (memory only)

    def _evict(self, now: float) -> None:
        second = math.floor(now)
        if second == self.seen:
            return
        cutoff = second - self.size
        for key in [k for k in self.buckets if k <= cutoff]:
            self.total.add_tally(self.buckets.pop(key), -1)
        self.seen = second

    def add(self, code: int, now: float) -> None:
        # After _evict(now) every stored bucket is inside the window at now, so
        # the running total is the window's count without a scan per call.
        self._evict(now)
        bucket = self.buckets.get(second := math.floor(now))
        if bucket is None:
            bucket = self.buckets[second] = _Tally()
        bucket.add(code)
        self.total.add(code)

    def current(self) -> Counts:
        return self.total.counts()

    def at(self, now: float) -> Counts:
        """Counts as of ``now``, without changing anything."""
        cutoff = math.floor(now) - self.size
        out = _Tally()
        for key, bucket in self.buckets.items():
            if key > cutoff:
                out.add_tally(bucket)
        return out.counts()

    def to_dict(self) -> dict[str, Any]:
        return {"buckets": [[k, *self.buckets[k].to_list()] for k in sorted(self.buckets)]}

    @classmethod
    def from_dict(cls, size: int, data: Mapping[str, Any]) -> _TimeWindow:
        buckets = data.get("buckets", [])
        if set(data) - {"buckets"} or not isinstance(buckets, list):
            raise ValueError("bad TIME window")
        window = cls(size)
        for item in buckets:
            if not isinstance(item, list) or not item or not isinstance(item[0], int):
                raise ValueError(f"bad TIME window bucket: {item!r}")
            if item[0] in window.buckets:
                raise ValueError(f"duplicate TIME window bucket: {item[0]}")
            tally = _Tally.from_list(item[1:])
            window.buckets[item[0]] = tally
            window.total.add_tally(tally)
        return window


_Window = _CountWindow | _TimeWindow


def _new_window(settings: CircuitSettings) -> _Window:
    if settings.window_type is WindowType.TIME:
        return _TimeWindow(settings.window_size)
    return _CountWindow(settings.window_size)


def _check_now(now: float) -> None:
    if not math.isfinite(now):
        raise ValueError(f"now must be a finite number of seconds, not {now!r}")


class Circuit:
    """One circuit: its settings, state and window.

    Methods mutate the circuit in place and return the transitions they caused.
    For a compare-and-set loop, build a fresh circuit with :meth:`from_dict` on
    every attempt.

    Args:
        settings: Thresholds; defaults if None.
        now: Creation time (the CLOSED state's ``since``).

    Raises:
        InvalidArgument: The settings are invalid.
    """

    __slots__ = (
        "_detail",
        "_opened_with",
        "_permits",
        "_reason",
        "_settings",
        "_since",
        "_state",
        "_trials",
        "_window",
    )

    def __init__(self, settings: CircuitSettings | None = None, *, now: float = 0.0) -> None:
        _check_now(now)
        self._settings = (settings or CircuitSettings()).ensure_valid()
        self._state = CircuitState.CLOSED
        self._since = float(now)
        self._reason: TransitionReason | None = None
        self._detail = ""
        self._window: _Window = _new_window(self._settings)
        self._trials = _Tally()  # HALF_OPEN: outcomes of trial calls
        self._permits = 0  # HALF_OPEN: trial permits handed out
        self._opened_with = _Tally()  # OPEN: the counts that opened it

    # -- read ---------------------------------------------------------------

    @property
    def settings(self) -> CircuitSettings:
        """The settings in force."""
        return self._settings

    @property
    def state(self) -> CircuitState:
        """The current state (as of the last step; call :meth:`tick` to advance time)."""
        return self._state

    @property
    def state_since(self) -> float:
        """When the current state was entered."""
        return self._since

    @property
    def reason(self) -> TransitionReason | None:
        """The last transition's reason, None for a circuit that never moved."""
        return self._reason

    @property
    def detail(self) -> str:
        """The last transition's detail."""
        return self._detail

    def allows_call(self, now: float) -> bool:
        """Whether a call would be permitted at ``now``, without taking a permit.

        OPEN whose wait has passed counts as the HALF_OPEN it is about to become;
        HALF_OPEN permits only while trial permits are left and its maximum wait
        (if any) has not passed.
        """
        s = self._settings
        match self._state:
            case CircuitState.CLOSED | CircuitState.FORCED_CLOSED:
                return True
            case CircuitState.FORCED_OPEN:
                return False
            case CircuitState.OPEN:
                return now >= self._since + s.wait_in_open
            case CircuitState.HALF_OPEN:
                if s.max_wait_in_half_open > 0 and now >= self._since + s.max_wait_in_half_open:
                    return False
                return self._permits < s.permitted_calls_in_half_open
        raise AssertionError(self._state)  # pragma: no cover

    def metrics(self, now: float) -> CircuitMetrics:
        """A snapshot as of ``now`` (see :class:`CircuitMetrics` for what it counts)."""
        match self._state:
            case CircuitState.CLOSED:
                counts = self._window.at(now)
            case CircuitState.HALF_OPEN:
                counts = self._trials.counts()
            case CircuitState.OPEN:
                counts = self._opened_with.counts()
            case _:
                counts = Counts()
        left = 0
        if self._state is CircuitState.HALF_OPEN:
            left = max(0, self._settings.permitted_calls_in_half_open - self._permits)
        return CircuitMetrics(
            state=self._state,
            state_since=self._since,
            reason=self._reason,
            detail=self._detail,
            calls=counts.calls,
            failed_calls=counts.failures,
            slow_calls=counts.slow,
            slow_failed_calls=counts.slow_failures,
            failure_rate=counts.failure_rate,
            slow_call_rate=counts.slow_call_rate,
            trial_permits_left=left,
        )

    # -- steps ----------------------------------------------------------------

    def tick(self, now: float) -> list[Transition]:
        """Apply time-based transitions due at ``now``: OPEN -> HALF_OPEN after
        ``wait_in_open``; HALF_OPEN -> OPEN after ``max_wait_in_half_open`` (if set).

        At most one transition per call: the new state starts at ``now``, and
        the next time-based step is at least ``wait_in_open`` > 0 away.
        """
        _check_now(now)
        s = self._settings
        if self._state is CircuitState.OPEN and now >= self._since + s.wait_in_open:
            return [
                self._move(
                    CircuitState.HALF_OPEN,
                    TransitionReason.WAIT_ELAPSED,
                    now,
                    f"waited {s.wait_in_open:g}s in OPEN",
                )
            ]
        if (
            self._state is CircuitState.HALF_OPEN
            and s.max_wait_in_half_open > 0
            and now >= self._since + s.max_wait_in_half_open
        ):
            trials = self._trials
            done = f"{trials.calls} of {s.permitted_calls_in_half_open} trial outcomes"
            return [
                self._move(
                    CircuitState.OPEN,
                    TransitionReason.HALF_OPEN_TIMEOUT,
                    now,
                    f"only {done} within {s.max_wait_in_half_open:g}s in HALF_OPEN",
                    opened_with=trials,
                )
            ]
        return []

    def acquire_permission(self, now: float) -> Permission:
        """Take a permit for one call at ``now`` (ticking first).

        CLOSED and FORCED_CLOSED always permit; OPEN and FORCED_OPEN never do;
        HALF_OPEN hands out ``permitted_calls_in_half_open`` permits, then refuses
        until the trial outcomes have decided.
        """
        transitions = tuple(self.tick(now))
        match self._state:
            case CircuitState.CLOSED | CircuitState.FORCED_CLOSED:
                permitted = True
            case CircuitState.HALF_OPEN:
                permitted = self._permits < self._settings.permitted_calls_in_half_open
                if permitted:
                    self._permits += 1
            case _:
                permitted = False
        return Permission(permitted, transitions)

    def record(self, call: Call, now: float) -> list[Transition]:
        """Record one outcome; see :meth:`record_batch`."""
        return list(self.record_batch((call,), now).transitions)

    def record_batch(self, calls: Iterable[Call], now: float) -> BatchResult:
        """Record outcomes reported at ``now``, in order, as if one breaker saw them.

        Ticks first, so outcomes arriving after the OPEN wait are trial calls.
        The state is judged after every single outcome, so recording a batch
        equals recording its outcomes one by one, and recording B1 then B2 equals
        recording B1 + B2: replicas may split and interleave batches freely.
        Outcomes arriving while OPEN or forced are ignored (calls the breaker
        allowed before it opened, or that bypassed it).

        Args:
            calls: The outcomes.
            now: When the batch is applied (TIME windows bucket by it).

        Returns:
            The transitions made and how many outcomes were recorded / ignored.
        """
        transitions = self.tick(now)
        s = self._settings
        slow_ms = s.slow_call_duration * 1000.0
        recorded = ignored = 0
        for call in calls:
            state = self._state
            if state is not CircuitState.CLOSED and state is not CircuitState.HALF_OPEN:
                ignored += 1
                continue
            code = (_FAILED if call.outcome is Outcome.FAILURE else 0) | (
                _SLOW if call.latency_ms > slow_ms else 0
            )
            recorded += 1
            if state is CircuitState.CLOSED:
                self._window.add(code, now)
                counts = self._window.current()
                if counts.calls >= s.effective_minimum_calls:
                    verdict = self._judge(counts)
                    if verdict is not None:
                        reason, detail = verdict
                        opened_with = _Tally(*_counts_tuple(counts))
                        transitions.append(
                            self._move(CircuitState.OPEN, reason, now, detail, opened_with)
                        )
            else:
                self._trials.add(code)
                if self._trials.calls >= s.permitted_calls_in_half_open:
                    trials = self._trials.counts()
                    verdict = self._judge(trials)
                    if verdict is None:
                        detail = (
                            f"{trials.calls} trial calls: failure rate "
                            f"{trials.failure_rate:.1f}%, slow-call rate "
                            f"{trials.slow_call_rate:.1f}%"
                        )
                        transitions.append(
                            self._move(
                                CircuitState.CLOSED, TransitionReason.TRIALS_PASSED, now, detail
                            )
                        )
                    else:
                        transitions.append(
                            self._move(
                                CircuitState.OPEN,
                                TransitionReason.TRIALS_FAILED,
                                now,
                                verdict[1],
                                self._trials,
                            )
                        )
        return BatchResult(tuple(transitions), recorded, ignored)

    # -- operator overrides -------------------------------------------------

    def force_open(self, now: float) -> list[Transition]:
        """Hold the circuit open (every call refused) until :meth:`reset`."""
        _check_now(now)
        if self._state is CircuitState.FORCED_OPEN:
            return []
        return [self._move(CircuitState.FORCED_OPEN, TransitionReason.FORCED_OPEN, now, "")]

    def force_closed(self, now: float) -> list[Transition]:
        """Hold the circuit closed (every call allowed, outcomes ignored) until :meth:`reset`."""
        _check_now(now)
        if self._state is CircuitState.FORCED_CLOSED:
            return []
        return [self._move(CircuitState.FORCED_CLOSED, TransitionReason.FORCED_CLOSED, now, "")]

    def reset(self, now: float) -> list[Transition]:
        """Back to CLOSED with an empty window, from any state (even CLOSED)."""
        _check_now(now)
        return [self._move(CircuitState.CLOSED, TransitionReason.RESET, now, "")]

    def configure(self, settings: CircuitSettings) -> None:
        """Put new settings in force, keeping state and counts.

        A different window type or size cannot reuse the counts, so the window
        starts empty then. Nothing is judged until the next outcome or tick.

        Raises:
            InvalidArgument: The settings are invalid.
        """
        settings.ensure_valid()
        old, self._settings = self._settings, settings
        if (old.window_type, old.window_size) != (settings.window_type, settings.window_size):
            self._window = _new_window(settings)

    # -- persistence ----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict holding everything; :meth:`from_dict` restores it exactly."""
        return {
            "v": SCHEMA_VERSION,
            "settings": self._settings.to_dict(),
            "state": self._state.name,
            "since": self._since,
            "reason": self._reason.value if self._reason else None,
            "detail": self._detail,
            "window": self._window.to_dict(),
            "trials": self._trials.to_list(),
            "permits": self._permits,
            "opened_with": self._opened_with.to_list(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Circuit:
        """Restore a circuit from :meth:`to_dict` output.

        Raises:
            ValueError: The dict is not a circuit of a known schema version.
        """
        if data.get("v") != SCHEMA_VERSION:
            raise ValueError(f"unknown circuit schema version {data.get('v')!r}")
        try:
            settings = CircuitSettings.from_dict(data.get("settings", {}))
            circuit = cls(settings, now=float(data["since"]))
            circuit._state = CircuitState[data["state"]]
            reason = data.get("reason")
            circuit._reason = TransitionReason(reason) if reason is not None else None
            circuit._detail = str(data.get("detail", ""))
            window = data.get("window", {})
            if settings.window_type is WindowType.TIME:
                circuit._window = _TimeWindow.from_dict(settings.window_size, window)
            else:
                circuit._window = _CountWindow.from_dict(settings.window_size, window)
            circuit._trials = _Tally.from_list(data.get("trials", [0, 0, 0, 0]))
            circuit._opened_with = _Tally.from_list(data.get("opened_with", [0, 0, 0, 0]))
            permits = data.get("permits", 0)
            if not isinstance(permits, int) or isinstance(permits, bool) or permits < 0:
                raise ValueError(f"bad permits: {permits!r}")
            circuit._permits = permits
        except (KeyError, TypeError, AttributeError, InvalidArgument) as exc:
            raise ValueError(f"malformed circuit: {exc}") from exc
        return circuit

    def copy(self) -> Circuit:
        """An independent copy."""
        return Circuit.from_dict(self.to_dict())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Circuit) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Circuit(state={self._state.name}, since={self._since}, reason={self._reason})"

    # -- internals ------------------------------------------------------------

    def _judge(self, counts: Counts) -> tuple[TransitionReason, str] | None:
        """The reason to open for these counts, or None. Integer-side comparison
        (failures * 100 >= threshold * calls) so 50% of 10 calls is exactly 50."""
        s = self._settings
        over = f"over {counts.calls} calls"
        if counts.failures * 100 >= s.failure_rate_threshold * counts.calls:
            return TransitionReason.FAILURE_RATE, (
                f"failure rate {counts.failure_rate:.1f}% >= {s.failure_rate_threshold:g}% {over}"
            )
        if counts.slow * 100 >= s.slow_call_rate_threshold * counts.calls:
            return TransitionReason.SLOW_CALL_RATE, (
                f"slow-call rate {counts.slow_call_rate:.1f}% >= "
                f"{s.slow_call_rate_threshold:g}% {over} (slower than {s.slow_call_duration:g}s)"
            )
        return None

    def _move(
        self,
        to: CircuitState,
        reason: TransitionReason,
        now: float,
        detail: str,
        opened_with: _Tally | None = None,
    ) -> Transition:
        """Enter ``to`` afresh: empty window, no trials, no permits."""
        transition = Transition(self._state, to, reason, float(now), detail)
        self._state, self._since = to, float(now)
        self._reason, self._detail = reason, detail
        self._window = _new_window(self._settings)
        self._trials = _Tally()
        self._permits = 0
        self._opened_with = _Tally()
        if opened_with is not None and to is CircuitState.OPEN:
            self._opened_with.add_tally(opened_with)
        return transition


def _counts_tuple(counts: Counts) -> tuple[int, int, int, int]:
    return counts.calls, counts.failures, counts.slow, counts.slow_failures
