"""Roll-out planning and stepping: pure functions, no I/O.

A deployment is a plain record (``Deployment``). ``step`` takes it with the facts
the hub sees now (the service's instances: version, health, draining) and returns
the next record and the side effects that go with it (drain marks and directives
to write). The caller writes both in one compare-and-set transaction, so a step
happens exactly once whichever replica takes it, and a replica that takes over
continues from the last record written: no batch is repeated or skipped.

Invariants:
- batches are replaced in order; ``current`` only grows by one, when batch
  ``current`` is DONE;
- an instance counted as a replacement by one batch is never counted again;
- an old instance is told to RETIRE only after its batch's replacements are
  HEALTHY (and, for the canary batch, stayed HEALTHY for the observation);
- a roll-back moves in batches too: at most one batch of new-version instances
  is drained at a time, and a batch is retired only when enough old-version
  instances are HEALTHY to stand in for it;
- no final state leaves a drain mark on an instance that was not told to
  RETIRE: whatever the roll-out or roll-back had drained goes back into use.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

# Deployment states (values of the DeploymentState proto enum).
PENDING, RUNNING, PAUSED, SUCCEEDED, FAILED, ABORTED, ROLLING_BACK, ROLLED_BACK = range(1, 9)
FINAL = frozenset({SUCCEEDED, FAILED, ABORTED, ROLLED_BACK})

# Batch states (BatchState).
B_PENDING, B_DRAINING, B_OBSERVING, B_DONE, B_CANCELLED = range(1, 6)

# Strategies (DeploymentStrategy).
ROLLING, CANARY = 1, 2

# Directive actions (DirectiveAction).
DRAIN, UPGRADE, RETIRE, RESUME = 1, 2, 3, 4

DEFAULT_GATE = 300.0
DEFAULT_CANARY_SHARE = 0.1
DEFAULT_OBSERVATION = 60.0


class Refused(Exception):
    """An operation that the deployment's state does not allow."""


@dataclass(frozen=True)
class Settings:
    batch_size: int = 1
    max_unavailable: int = 0
    health_gate_timeout: float = DEFAULT_GATE
    canary_share: float = DEFAULT_CANARY_SHARE
    canary_observation: float = DEFAULT_OBSERVATION
    rollback_on_failure: bool = False

    def validate(self) -> list[tuple[str, str]]:
        out = []
        if not 1 <= self.batch_size <= 10_000:
            out.append(("settings.batch_size", "must be between 1 and 10000"))
        if self.max_unavailable < 0:
            out.append(("settings.max_unavailable", "must not be negative"))
        if not 0 < self.health_gate_timeout <= 86_400:
            out.append(("settings.health_gate_timeout", "must be between 0 and one day"))
        if not 0 < self.canary_share <= 1:
            out.append(("settings.canary_share", "must be in (0, 1]"))
        if not 0 <= self.canary_observation <= 86_400:
            out.append(("settings.canary_observation", "must be between 0 and one day"))
        return out

    @property
    def effective_batch_size(self) -> int:
        """max_unavailable caps how many instances are out of rotation at once."""
        if self.max_unavailable:
            return max(1, min(self.batch_size, self.max_unavailable))
        return self.batch_size


@dataclass
class Batch:
    index: int
    instances: list[str]
    state: int = B_PENDING
    replacements: list[str] = field(default_factory=list)
    started_at: float = 0.0  # drained
    gate_since: float = 0.0  # when the health gate (re)started
    healthy_at: float = 0.0
    finished_at: float = 0.0
    canary: bool = False


@dataclass
class Deployment:
    id: str
    service: str
    target_version: str
    strategy: int
    settings: Settings
    batches: list[Batch]
    state: int = PENDING
    current: int = 0
    reason: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float = 0.0
    previous_version: str = ""
    original_count: int = 0
    # Roll-back: when it started (0: never; also how a PAUSED one knows to go
    # back to ROLLING_BACK), the target-version instances it replaces, and those
    # in batches, ``rollback_current`` the one drained now.
    rollback_since: float = 0.0
    rollback_instances: list[str] = field(default_factory=list)
    phase: str = ""
    rollback_batches: list[Batch] = field(default_factory=list)
    rollback_current: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> Deployment:
        d = dict(d)
        d["settings"] = Settings(**d["settings"])
        d["batches"] = [Batch(**b) for b in d["batches"]]
        if "rollback_batches" not in d and d.get("rollback_instances") and not _is_final(d):
            # A record from before batched roll-backs drained them all at once.
            since = d.get("rollback_since", 0.0)
            d["rollback_batches"] = [
                dict(index=0, instances=d["rollback_instances"], state=B_DRAINING,
                     started_at=since, gate_since=since)
            ]  # fmt: skip
        d["rollback_batches"] = [Batch(**b) for b in d.get("rollback_batches", [])]
        return cls(**d)

    def copy(self) -> Deployment:
        return Deployment.from_dict(self.to_dict())

    @property
    def final(self) -> bool:
        return self.state in FINAL


def _is_final(d: Mapping) -> bool:
    return d.get("state") in FINAL


@dataclass(frozen=True)
class InstanceFact:
    version: str
    healthy: bool
    draining: bool = False


@dataclass(frozen=True)
class Directive:
    instance_id: str
    action: int
    target_version: str = ""
    batch: int = 0


@dataclass
class Actions:
    """Side effects of a step, written in the same transaction as the record."""

    drain: list[str] = field(default_factory=list)
    undrain: list[str] = field(default_factory=list)
    directives: list[Directive] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.drain or self.undrain or self.directives)


# -- planning ----------------------------------------------------------------


def plan_batches(instance_ids: Iterable[str], strategy: int, settings: Settings) -> list[Batch]:
    """Batches in instance-id order; for CANARY the first holds
    ceil(canary_share x instances) (at least one)."""
    ids = sorted(instance_ids)
    size = settings.effective_batch_size
    groups: list[tuple[list[str], bool]] = []
    rest = ids
    if strategy == CANARY and ids:
        n = min(len(ids), max(1, math.ceil(settings.canary_share * len(ids) - 1e-9)))
        groups.append((ids[:n], True))
        rest = ids[n:]
    groups += [(rest[i : i + size], False) for i in range(0, len(rest), size)]
    return [Batch(i, g, canary=c) for i, (g, c) in enumerate(groups)]


def plan(
    deployment_id: str,
    service: str,
    target_version: str,
    strategy: int,
    settings: Settings,
    instances: Mapping[str, InstanceFact],
    now: float,
) -> Deployment:
    """A PENDING deployment replacing every instance not already at the target."""
    old = {i: f for i, f in instances.items() if f.version != target_version}
    if not old:
        raise Refused(f"every instance already runs {target_version!r}")
    versions = Counter(f.version for f in old.values())
    return Deployment(
        id=deployment_id,
        service=service,
        target_version=target_version,
        strategy=strategy,
        settings=settings,
        batches=plan_batches(old, strategy, settings),
        created_at=now,
        updated_at=now,
        previous_version=versions.most_common(1)[0][0],
        original_count=len(old),
        phase="planned",
    )


# -- stepping ----------------------------------------------------------------


def _old_ids(d: Deployment) -> set[str]:
    return {i for b in d.batches for i in b.instances}


def _claimed(d: Deployment) -> set[str]:
    return {i for b in d.batches for i in b.replacements}


def _start_batch(d: Deployment, now: float, actions: Actions) -> None:
    b = d.batches[d.current]
    b.state, b.started_at, b.gate_since = B_DRAINING, now, now
    actions.drain += b.instances
    actions.directives += [Directive(i, UPGRADE, d.target_version, b.index) for i in b.instances]
    d.phase = f"batch {b.index + 1}/{len(d.batches)}: waiting for replacements"


def _finish(d: Deployment, state: int, now: float, reason: str = "") -> None:
    d.state, d.finished_at = state, now
    d.reason = reason or d.reason
    d.phase = {SUCCEEDED: "done", FAILED: "failed", ABORTED: "aborted"}.get(state, "rolled back")


def _gate_failed(d: Deployment, b: Batch, now: float, why: str, actions: Actions) -> None:
    reason = f"batch {b.index + 1}: {why}"
    if d.settings.rollback_on_failure:
        _begin_rollback(d, now, reason, actions)
    else:
        d.state, d.reason, d.phase = PAUSED, reason, "paused"


def step(
    d: Deployment, instances: Mapping[str, InstanceFact], now: float
) -> tuple[Deployment | None, Actions]:
    """The next record (None if nothing changes) and its side effects.

    ``instances`` are the service's registered instances now."""
    actions = Actions()
    if d.state == PENDING:
        n = d.copy()
        n.state, n.updated_at = RUNNING, now
        if not n.batches:
            _finish(n, SUCCEEDED, now)
        else:
            _start_batch(n, now, actions)
        return n, actions
    if d.state == RUNNING:
        return _step_running(d, instances, now)
    if d.state == ROLLING_BACK:
        return _step_rollback(d, instances, now)
    return None, actions  # PAUSED or final: operators move it


def _step_running(
    d: Deployment, instances: Mapping[str, InstanceFact], now: float
) -> tuple[Deployment | None, Actions]:
    actions = Actions()
    n = d.copy()
    n.updated_at = now
    b = n.batches[n.current]
    if b.state == B_PENDING:
        _start_batch(n, now, actions)
        return n, actions
    if b.state == B_DRAINING:
        old, claimed = _old_ids(n), _claimed(n)
        fresh = sorted(
            i
            for i, f in instances.items()
            if f.version == n.target_version
            and f.healthy
            and not f.draining
            and i not in old
            and i not in claimed
        )
        need = len(b.instances)
        if len(fresh) >= need:
            b.replacements, b.healthy_at = fresh[:need], now
            if b.canary and n.settings.canary_observation > 0:
                b.state = B_OBSERVING
                n.phase = f"batch {b.index + 1}/{len(n.batches)}: observing the canary"
                return n, actions
            _retire_batch(n, b, now, actions)
            return n, actions
        if now - b.gate_since >= n.settings.health_gate_timeout:
            _gate_failed(
                n, b, now,
                f"{len(fresh)} of {need} replacements HEALTHY after "
                f"{n.settings.health_gate_timeout:g}s",
                actions,
            )  # fmt: skip
            return n, actions
        return None, actions
    if b.state == B_OBSERVING:
        sick = [i for i in b.replacements if not (i in instances and instances[i].healthy)]
        if sick:
            _gate_failed(n, b, now, f"canary replacement(s) {', '.join(sick)} not HEALTHY", actions)
            return n, actions
        if now - b.healthy_at >= n.settings.canary_observation:
            _retire_batch(n, b, now, actions)
            return n, actions
        return None, actions
    return None, actions


def _retire_batch(n: Deployment, b: Batch, now: float, actions: Actions) -> None:
    b.state, b.finished_at = B_DONE, now
    actions.directives += [Directive(i, RETIRE, "", b.index) for i in b.instances]
    n.current += 1
    if n.current >= len(n.batches):
        _finish(n, SUCCEEDED, now)
    else:
        _start_batch(n, now, actions)  # no idle tick between batches


def _unfinished_old(n: Deployment) -> list[str]:
    """Old instances drained but not told to retire."""
    return [i for b in n.batches if b.state in (B_DRAINING, B_OBSERVING) for i in b.instances]


def _begin_rollback(n: Deployment, now: float, reason: str, actions: Actions) -> None:
    survivors = _unfinished_old(n)
    actions.undrain += survivors
    actions.directives += [Directive(i, RESUME, "", n.current) for i in survivors]
    new = sorted(_claimed(n))
    for b in n.batches:
        if b.state in (B_PENDING, B_DRAINING, B_OBSERVING):
            b.state = B_CANCELLED
    size = n.settings.effective_batch_size
    n.rollback_batches = [
        Batch(k, new[i : i + size]) for k, i in enumerate(range(0, len(new), size))
    ]
    n.rollback_current = 0
    n.state, n.reason, n.rollback_since = ROLLING_BACK, reason, now
    n.rollback_instances = new
    if n.rollback_batches:
        _start_rollback_batch(n, now, actions)
    else:
        n.phase = f"rolling back: waiting for {n.original_count} instances of {n.previous_version}"


def _start_rollback_batch(n: Deployment, now: float, actions: Actions) -> None:
    b = n.rollback_batches[n.rollback_current]
    b.state, b.started_at, b.gate_since = B_DRAINING, now, now
    actions.drain += b.instances
    actions.directives += [Directive(i, UPGRADE, n.previous_version, b.index) for i in b.instances]
    n.phase = (
        f"rolling back: batch {b.index + 1}/{len(n.rollback_batches)}: "
        f"waiting for instances of {n.previous_version}"
    )


def _release_rollback(n: Deployment, now: float, actions: Actions) -> None:
    """The drained roll-back batch goes back into use; the rest never starts."""
    for b in n.rollback_batches:
        if b.state == B_DRAINING:
            actions.undrain += b.instances
            actions.directives += [Directive(i, RESUME, "", b.index) for i in b.instances]
        if b.state in (B_PENDING, B_DRAINING):
            b.state, b.finished_at = B_CANCELLED, now


def _step_rollback(
    d: Deployment, instances: Mapping[str, InstanceFact], now: float
) -> tuple[Deployment | None, Actions]:
    """Batch by batch: a drained batch of new-version instances is retired once
    as many old-version instances are HEALTHY as the roll-out started with,
    less the new-version instances still to come back in later batches."""
    actions = Actions()
    n = d.copy()
    n.updated_at = now
    b = n.rollback_batches[n.rollback_current] if n.rollback_batches else None
    later = sum(len(x.instances) for x in n.rollback_batches[n.rollback_current + 1 :])
    need = n.original_count - later
    replaced = set(n.rollback_instances)
    back = sum(
        1
        for i, f in instances.items()
        if f.version != n.target_version and f.healthy and not f.draining and i not in replaced
    )
    if back >= need:
        if b is None:
            _finish(n, ROLLED_BACK, now)
            return n, actions
        b.state, b.healthy_at, b.finished_at = B_DONE, now, now
        actions.directives += [Directive(i, RETIRE, "", b.index) for i in b.instances]
        n.rollback_current += 1
        if n.rollback_current >= len(n.rollback_batches):
            _finish(n, ROLLED_BACK, now)
        else:
            _start_rollback_batch(n, now, actions)
        return n, actions
    gate_since = b.gate_since if b is not None else n.rollback_since
    if now - gate_since >= n.settings.health_gate_timeout:
        # The new-version instances it had drained still serve: back into use.
        _release_rollback(n, now, actions)
        _finish(
            n, FAILED, now,
            f"roll-back: {back} of {need} instances of {n.previous_version} HEALTHY "
            f"after {n.settings.health_gate_timeout:g}s",
        )  # fmt: skip
        return n, actions
    return None, actions


# -- operator actions ----------------------------------------------------------


def pause(d: Deployment, now: float, reason: str = "") -> Deployment:
    if d.state not in (PENDING, RUNNING, ROLLING_BACK):
        raise Refused(f"deployment {d.id} is {state_name(d.state)}: only an active one pauses")
    n = d.copy()
    n.state, n.reason, n.updated_at, n.phase = PAUSED, reason or "paused by operator", now, "paused"
    return n


def resume(d: Deployment, now: float) -> Deployment:
    """Back to RUNNING, or to ROLLING_BACK if it was paused rolling back; the
    current batch's health gate starts anew."""
    if d.state != PAUSED:
        raise Refused(f"deployment {d.id} is {state_name(d.state)}, not PAUSED")
    n = d.copy()
    n.reason, n.updated_at = "", now
    if n.rollback_since:
        n.state = ROLLING_BACK
        if n.rollback_current < len(n.rollback_batches):
            n.rollback_batches[n.rollback_current].gate_since = now
        else:
            n.rollback_since = now
        n.phase = "resumed rolling back"
        return n
    n.state = RUNNING
    if n.current < len(n.batches):
        b = n.batches[n.current]
        b.gate_since = now  # the gate starts anew
        if b.state == B_OBSERVING:
            b.healthy_at = now
    n.phase = "resumed"
    return n


def abort(d: Deployment, now: float, reason: str = "") -> tuple[Deployment, Actions]:
    """From any non-final state; every instance it holds drained and has not
    told to RETIRE goes back into use."""
    if d.final:
        raise Refused(f"deployment {d.id} is already {state_name(d.state)}")
    n = d.copy()
    actions = Actions()
    survivors = _unfinished_old(n)
    actions.undrain += survivors
    actions.directives += [Directive(i, RESUME, "", n.current) for i in survivors]
    for b in n.batches:
        if b.state in (B_PENDING, B_DRAINING, B_OBSERVING):
            b.state = B_CANCELLED
    _release_rollback(n, now, actions)
    n.updated_at = now
    _finish(n, ABORTED, now, reason or "aborted by operator")
    return n, actions


def rollback(
    d: Deployment, now: float, reason: str = "", *, latest: bool = True
) -> tuple[Deployment, Actions]:
    """From PENDING, RUNNING, PAUSED (not while already rolling back), or
    SUCCEEDED while it is the service's latest deployment (``latest``)."""
    if d.state == PAUSED and d.rollback_since:
        raise Refused(f"deployment {d.id} is already rolling back (paused): resume it")
    if d.state not in (PENDING, RUNNING, PAUSED) and not (d.state == SUCCEEDED and latest):
        raise Refused(f"deployment {d.id} is {state_name(d.state)}: it cannot be rolled back")
    n = d.copy()
    n.updated_at, n.finished_at = now, 0.0
    actions = Actions()
    _begin_rollback(n, now, reason or "rolled back by operator", actions)
    return n, actions


def progress(d: Deployment) -> tuple[int, int, dict[str, int], str]:
    """(batch from 1, batches, old instances per state, phase)."""
    counts = {"pending": 0, "draining": 0, "replaced": 0, "cancelled": 0}
    names = {
        B_PENDING: "pending",
        B_DRAINING: "draining",
        B_OBSERVING: "draining",
        B_DONE: "replaced",
        B_CANCELLED: "cancelled",
    }
    for b in d.batches:
        counts[names[b.state]] += len(b.instances)
    batch = min(d.current + 1, len(d.batches)) if d.state != PENDING else 0
    return batch, len(d.batches), counts, d.phase


def state_name(state: int) -> str:
    names = ["UNSPECIFIED", "PENDING", "RUNNING", "PAUSED", "SUCCEEDED", "FAILED", "ABORTED"]
    names += ["ROLLING_BACK", "ROLLED_BACK"]
    return names[state] if 0 <= state < len(names) else str(state)
