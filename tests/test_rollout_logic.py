"""The roll-out planner and step function, without I/O."""

from __future__ import annotations

import pytest

from hub_server.deployments import rollout as r
from hub_server.deployments.rollout import InstanceFact as F


def _ids(n: int) -> list[str]:
    return [f"i{k:02d}" for k in range(n)]


@pytest.mark.parametrize(
    ("n", "size", "max_unavailable", "expected"),
    [
        (0, 3, 0, []),
        (1, 3, 0, [1]),
        (5, 2, 0, [2, 2, 1]),
        (6, 3, 0, [3, 3]),
        (6, 3, 2, [2, 2, 2]),
        (20, 5, 0, [5, 5, 5, 5]),
        (3, 10, 0, [3]),
    ],
)
def test_rolling_batches(n: int, size: int, max_unavailable: int, expected: list[int]) -> None:
    batches = r.plan_batches(_ids(n), r.ROLLING, r.Settings(size, max_unavailable))
    assert [len(b.instances) for b in batches] == expected
    assert [i for b in batches for i in b.instances] == _ids(n)  # each once, in order
    assert [b.index for b in batches] == list(range(len(expected)))
    assert not any(b.canary for b in batches)


@pytest.mark.parametrize(
    ("n", "share", "size", "expected"),
    [
        (10, 0.1, 3, [1, 3, 3, 3]),
        (10, 0.25, 5, [3, 5, 2]),
        (1, 0.1, 1, [1]),
        (4, 1.0, 2, [4]),
        (20, 0.05, 5, [1, 5, 5, 5, 4]),
        (3, 0.5, 1, [2, 1]),
    ],
)
def test_canary_batches(n: int, share: float, size: int, expected: list[int]) -> None:
    batches = r.plan_batches(_ids(n), r.CANARY, r.Settings(size, canary_share=share))
    assert [len(b.instances) for b in batches] == expected
    assert batches[0].canary and not any(b.canary for b in batches[1:])
    assert sorted(i for b in batches for i in b.instances) == _ids(n)


def test_settings_validation() -> None:
    assert r.Settings().validate() == []
    bad = r.Settings(batch_size=0, max_unavailable=-1, health_gate_timeout=0, canary_share=1.5)
    assert {f for f, _ in bad.validate()} == {
        "settings.batch_size",
        "settings.max_unavailable",
        "settings.health_gate_timeout",
        "settings.canary_share",
    }


def _fleet(old: int, new: int = 0, *, healthy: bool = True) -> dict[str, F]:
    out = {i: F("1", True) for i in _ids(old)}
    out.update({f"n{k:02d}": F("2", healthy) for k in range(new)})
    return out


def _plan(n: int = 4, strategy: int = r.ROLLING, **settings: object) -> r.Deployment:
    s = r.Settings(**{"batch_size": 2, "health_gate_timeout": 10.0, **settings})  # type: ignore[arg-type]
    return r.plan("d1", "svc", "2", strategy, s, _fleet(n), now=0.0)


def test_plan_skips_instances_already_at_target_and_refuses_nothing_to_do() -> None:
    facts = {**_fleet(2), "x": F("2", True)}
    d = r.plan("d", "svc", "2", r.ROLLING, r.Settings(batch_size=5), facts, 0.0)
    assert d.batches[0].instances == ["i00", "i01"]
    assert d.previous_version == "1" and d.original_count == 2 and d.state == r.PENDING
    with pytest.raises(r.Refused):
        r.plan("d", "svc", "2", r.ROLLING, r.Settings(), {"x": F("2", True)}, 0.0)


def test_record_round_trips() -> None:
    d = _plan()
    assert r.Deployment.from_dict(d.to_dict()) == d


def _run(d: r.Deployment, facts: dict[str, F], now: float) -> tuple[r.Deployment, r.Actions]:
    n, actions = r.step(d, facts, now)
    assert n is not None
    return n, actions


def test_rolling_happy_path_step_by_step() -> None:
    d = _plan(4)
    d, a = _run(d, _fleet(4), 1.0)  # PENDING -> RUNNING, batch 0 drained
    assert d.state == r.RUNNING and d.batches[0].state == r.B_DRAINING
    assert a.drain == ["i00", "i01"]
    assert [(x.instance_id, x.action, x.target_version) for x in a.directives] == [
        ("i00", r.UPGRADE, "2"),
        ("i01", r.UPGRADE, "2"),
    ]
    # One replacement is not enough; nothing moves.
    assert r.step(d, _fleet(4, 1), 2.0) == (None, r.Actions())
    # Unhealthy replacements do not count.
    assert r.step(d, _fleet(4, 2, healthy=False), 2.0)[0] is None
    d, a = _run(d, _fleet(4, 2), 3.0)  # replaced: retire, next batch drained in the same step
    assert d.batches[0].state == r.B_DONE and d.batches[0].replacements == ["n00", "n01"]
    assert [(x.instance_id, x.action) for x in a.directives] == [
        ("i00", r.RETIRE), ("i01", r.RETIRE), ("i02", r.UPGRADE), ("i03", r.UPGRADE),
    ]  # fmt: skip
    assert d.current == 1 and d.batches[1].state == r.B_DRAINING
    # The first batch's replacements are not counted again for the second.
    facts = {k: v for k, v in _fleet(4, 2).items() if k not in ("i00", "i01")}
    assert r.step(d, facts, 4.0)[0] is None
    facts.update({"n02": F("2", True), "n03": F("2", True)})
    d, a = _run(d, facts, 5.0)
    assert d.state == r.SUCCEEDED and d.current == 2 and d.finished_at == 5.0
    assert d.batches[1].replacements == ["n02", "n03"]
    assert r.progress(d) == (
        2,
        2,
        {"pending": 0, "draining": 0, "replaced": 4, "cancelled": 0},
        "done",
    )


def test_draining_instances_never_count_as_replacements() -> None:
    d, _ = _run(_plan(2), _fleet(2), 0.0)
    facts = {**_fleet(2), "n00": F("2", True, draining=True), "n01": F("2", True)}
    assert r.step(d, facts, 1.0)[0] is None


def test_gate_timeout_pauses_then_resume_restarts_the_gate() -> None:
    d, _ = _run(_plan(2), _fleet(2), 0.0)
    assert r.step(d, _fleet(2, 1), 9.9)[0] is None
    d, a = _run(d, _fleet(2, 1), 10.0)
    assert d.state == r.PAUSED and "1 of 2" in d.reason and not a
    assert r.step(d, _fleet(2, 2), 11.0)[0] is None  # paused: nothing moves
    d = r.resume(d, 20.0)
    assert d.state == r.RUNNING and d.batches[0].gate_since == 20.0
    assert r.step(d, _fleet(2, 1), 25.0)[0] is None  # the gate starts anew
    d, _ = _run(d, _fleet(2, 2), 26.0)
    assert d.state == r.SUCCEEDED


def test_gate_timeout_rolls_back_with_the_flag() -> None:
    d, _ = _run(_plan(4, rollback_on_failure=True), _fleet(4), 0.0)
    d, _ = _run(d, _fleet(4, 2), 1.0)  # batch 0 replaced by n00, n01
    facts = {**{k: v for k, v in _fleet(4, 2).items() if k not in ("i00", "i01")}}
    d, a = _run(d, facts, 12.0)  # batch 1 gate times out
    assert d.state == r.ROLLING_BACK and d.rollback_instances == ["n00", "n01"]
    assert a.undrain == ["i02", "i03"] and a.drain == ["n00", "n01"]
    acts = {(x.instance_id, x.action, x.target_version) for x in a.directives}
    assert acts == {("i02", r.RESUME, ""), ("i03", r.RESUME, ""),
                    ("n00", r.UPGRADE, "1"), ("n01", r.UPGRADE, "1")}  # fmt: skip
    assert [b.state for b in d.batches] == [r.B_DONE, r.B_CANCELLED]
    # Waits for as many old-version instances as before (4), drained ones excluded.
    facts = {
        "i02": F("1", True), "i03": F("1", True),
        "n00": F("2", True, draining=True), "n01": F("2", True, draining=True),
        "o1": F("1", True),
    }  # fmt: skip
    assert r.step(d, facts, 13.0)[0] is None
    facts["o2"] = F("1", True)
    d, a = _run(d, facts, 14.0)
    assert d.state == r.ROLLED_BACK
    assert {(x.instance_id, x.action) for x in a.directives} == {
        ("n00", r.RETIRE), ("n01", r.RETIRE),
    }  # fmt: skip


def test_rollback_that_does_not_recover_fails() -> None:
    d, _ = _run(_plan(2), _fleet(2), 0.0)
    d, _ = r.rollback(d, 1.0, "operator")
    assert d.state == r.ROLLING_BACK
    d, _ = _run(d, {}, 11.0)
    assert d.state == r.FAILED and "roll-back" in d.reason


def test_canary_observes_then_continues_and_a_sick_canary_fails_the_gate() -> None:
    d = _plan(10, r.CANARY, canary_share=0.2, canary_observation=5.0, batch_size=4)
    assert [len(b.instances) for b in d.batches] == [2, 4, 4]
    d, _ = _run(d, _fleet(10), 0.0)
    d, _ = _run(d, _fleet(10, 2), 1.0)
    assert d.batches[0].state == r.B_OBSERVING and d.current == 0
    assert r.step(d, _fleet(10, 2), 5.9)[0] is None
    good = d
    d, a = _run(good, _fleet(10, 2), 6.0)
    assert d.batches[0].state == r.B_DONE and d.current == 1
    assert {x.action for x in a.directives} == {r.RETIRE, r.UPGRADE}
    # A canary replacement that turns unhealthy during observation fails the gate.
    sick = {**_fleet(10, 2), "n01": F("2", False)}
    d, _ = _run(good, sick, 3.0)
    assert d.state == r.PAUSED and "n01" in d.reason


def test_operator_actions_and_their_refusals() -> None:
    d, _ = _run(_plan(2), _fleet(2), 0.0)
    with pytest.raises(r.Refused):
        r.resume(d, 1.0)
    p = r.pause(d, 1.0, "lunch")
    assert p.state == r.PAUSED and p.reason == "lunch"
    with pytest.raises(r.Refused):
        r.pause(p, 2.0)
    a, acts = r.abort(p, 2.0)
    assert a.state == r.ABORTED and a.batches[0].state == r.B_CANCELLED
    assert acts.undrain == ["i00", "i01"]
    assert {x.action for x in acts.directives} == {r.RESUME}
    for op in (lambda: r.abort(a, 3.0), lambda: r.rollback(a, 3.0), lambda: r.pause(a, 3.0)):
        with pytest.raises(r.Refused):
            op()
    # A succeeded deployment rolls back only while it is the service's latest.
    done, _ = _run(d, _fleet(2, 2), 1.0)
    assert done.state == r.SUCCEEDED
    with pytest.raises(r.Refused):
        r.rollback(done, 2.0, latest=False)
    back, _ = r.rollback(done, 2.0)
    assert back.state == r.ROLLING_BACK and back.rollback_instances == ["n00", "n01"]


def test_final_states_never_step() -> None:
    d, _ = _run(_plan(2), _fleet(2), 0.0)
    for state in r.FINAL | {r.PAUSED}:
        d.state = state
        assert r.step(d, _fleet(2, 2), 100.0) == (None, r.Actions())


def test_each_batch_replaced_exactly_once_over_a_simulated_run() -> None:
    """A simulation: replacements appear one tick after an UPGRADE, retirees leave."""
    d = _plan(7, batch_size=3)
    facts = _fleet(7)
    upgraded: list[str] = []
    retired: list[str] = []
    now = 0.0
    while not d.final:
        now += 1
        n, a = r.step(d, facts, now)
        for x in a.directives:
            if x.action == r.UPGRADE:
                upgraded.append(x.instance_id)
                facts[f"new-{x.instance_id}"] = F("2", True)
            elif x.action == r.RETIRE:
                retired.append(x.instance_id)
                facts.pop(x.instance_id)
        if n is not None:
            d = n
        assert now < 50
    assert d.state == r.SUCCEEDED
    assert sorted(upgraded) == sorted(retired) == _ids(7)
    assert sorted(i for b in d.batches for i in b.replacements) == sorted(
        f"new-{i}" for i in _ids(7)
    )


# -- roll-backs in batches, and what every final state leaves drained ---------------


class Sim:
    """Applies a deployment's actions like the hub and an orchestrator would: drain
    marks only on registered instances; an UPGRADE starts a healthy replacement at
    the directive's version when ``up(directive)``; a RETIRE'd instance leaves when
    ``leave`` (and its lease-bound drain mark with it)."""

    def __init__(self, d: r.Deployment, n: int, *, leave: bool = True) -> None:
        self.d = d
        self.facts = _fleet(n)
        self.drained: set[str] = set()
        self.retired: set[str] = set()
        self.up = lambda x: True
        self.leave = leave
        self.now = 0.0
        self.most_drained = 0  # not counting retirees: the service's lost capacity

    def _apply(self, new: r.Deployment | None, a: r.Actions) -> None:
        if new is not None:
            self.d = new
        self.drained |= set(a.drain) & set(self.facts)
        self.drained -= set(a.undrain)
        for x in a.directives:
            if x.action == r.UPGRADE and self.up(x):
                self.facts[f"{x.instance_id}>{x.target_version}"] = F(x.target_version, True)
            elif x.action == r.RETIRE:
                self.retired.add(x.instance_id)
                if self.leave:
                    self.facts.pop(x.instance_id, None)
                    self.drained.discard(x.instance_id)
        self.most_drained = max(self.most_drained, len(self.drained - self.retired))

    def view(self) -> dict[str, F]:
        return {i: F(f.version, f.healthy, i in self.drained) for i, f in self.facts.items()}

    def tick(self) -> None:
        self.now += 1
        self._apply(*r.step(self.d, self.view(), self.now))

    def run(self) -> r.Deployment:
        while not self.d.final:
            self.tick()
            assert self.now < 200
        return self.d

    def op(self, fn: object) -> None:
        self.now += 1
        out = fn(self.d, self.now)  # type: ignore[operator]
        self._apply(*(out if isinstance(out, tuple) else (out, r.Actions())))


def _succeeded(sim: Sim) -> Sim:
    assert sim.run().state == r.SUCCEEDED
    return sim


@pytest.mark.parametrize(
    ("n", "size", "max_unavailable", "expected"),
    [
        (4, 2, 0, [2, 2]),
        (5, 2, 0, [2, 2, 1]),
        (6, 3, 2, [2, 2, 2]),
        (3, 10, 0, [3]),
        (2, 1, 0, [1, 1]),
    ],
)
def test_rollback_of_a_succeeded_rollout_moves_in_batches(
    n: int, size: int, max_unavailable: int, expected: list[int]
) -> None:
    sim = _succeeded(Sim(_plan(n, batch_size=size, max_unavailable=max_unavailable), n))
    new = sorted(i for b in sim.d.batches for i in b.replacements)
    sim.most_drained = 0
    sim.op(r.rollback)
    d = sim.d
    assert d.state == r.ROLLING_BACK
    assert [len(b.instances) for b in d.rollback_batches] == expected
    assert [i for b in d.rollback_batches for i in b.instances] == new
    assert sim.drained == set(d.rollback_batches[0].instances)  # only the first batch
    assert sim.run().state == r.ROLLED_BACK
    assert sim.most_drained == max(expected)  # never more than a batch out of use
    assert sim.retired >= set(new) and not sim.drained
    assert {f.version for f in sim.facts.values()} == {"1"}
    assert sum(f.version == "1" for f in sim.facts.values()) == n


def test_a_rollback_whose_replacements_never_come_fails_and_releases_its_batch() -> None:
    sim = _succeeded(Sim(_plan(4, batch_size=2), 4))
    sim.up = lambda x: x.target_version == "2"
    sim.op(r.rollback)
    first = set(sim.d.rollback_batches[0].instances)
    assert sim.drained == first
    d = sim.run()
    assert d.state == r.FAILED and "0 of 2 instances of 1 HEALTHY" in d.reason
    assert not sim.drained  # every 2 instance serves again
    assert [b.state for b in d.rollback_batches] == [r.B_CANCELLED, r.B_CANCELLED]
    # Nothing of the second batch was touched; the first was told to stay.
    assert not sim.retired - {i for b in d.batches for i in b.instances}


# Each a way to a final state: (settings, up, steps) where a step is "run" (to the
# next final state), "tick", or an operator action.
SCENARIOS = {
    "succeeded": ({}, None, ["run"]),
    "aborted while pending": ({}, None, [r.abort]),
    "aborted while running": ({}, None, ["tick", r.abort]),
    "aborted while paused": ({}, None, ["tick", r.pause, r.abort]),
    "rolled back on a gate failure": (
        {"rollback_on_failure": True}, lambda x: not (x.target_version == "2" and x.batch == 1),
        ["run"],
    ),
    "rolled back after success": ({}, None, ["run", r.rollback, "run"]),
    "roll-back failed": ({}, lambda x: x.target_version == "2", ["run", r.rollback, "run"]),
    "roll-back failed mid-way": (
        {}, lambda x: x.target_version == "2" or x.batch == 0, ["run", r.rollback, "run"],
    ),
    "aborted rolling back": ({}, lambda x: x.target_version == "2", ["run", r.rollback, r.abort]),
    "aborted paused rolling back": (
        {}, lambda x: x.target_version == "2", ["run", r.rollback, "tick", r.pause, r.abort],
    ),
    "rolled back mid roll-out": ({}, lambda x: x.batch == 0, ["tick", "tick", r.rollback, "run"]),
}  # fmt: skip


@pytest.mark.parametrize("leave", [True, False], ids=["retirees-leave", "retirees-stay"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_final_state_leaves_no_drain_mark_on_a_serving_instance(
    name: str, leave: bool
) -> None:
    settings, up, steps = SCENARIOS[name]
    sim = Sim(_plan(4, **settings), 4, leave=leave)
    if up is not None:
        sim.up = up
    for s in steps:
        if s == "run":
            sim.run()
        elif s == "tick":
            sim.tick()
        else:
            sim.op(s)
    assert sim.d.final, name
    # Drained and still registered: only instances told to RETIRE (they are leaving).
    assert sim.drained <= sim.retired, name
    if leave:
        assert not sim.drained & set(sim.facts)
    assert sim.most_drained <= 2, name  # a batch at a time, roll-out or roll-back


@pytest.mark.parametrize("rolling_back", [False, True])
def test_every_active_state_pauses_resumes_and_aborts(rolling_back: bool) -> None:
    sim = Sim(_plan(4), 4)
    pending = sim.d
    assert r.pause(pending, 1.0).state == r.PAUSED
    assert r.resume(r.pause(pending, 1.0), 2.0).state == r.RUNNING
    assert r.abort(pending, 1.0)[0].state == r.ABORTED
    sim.tick()
    if rolling_back:
        sim.up = lambda x: x.target_version == "2"
        sim.run()
        sim.op(r.rollback)
    active = sim.d
    assert active.state == (r.ROLLING_BACK if rolling_back else r.RUNNING)
    paused = r.pause(active, 50.0, "lunch")
    assert paused.state == r.PAUSED and paused.reason == "lunch"
    assert r.step(paused, sim.view(), 1000.0) == (None, r.Actions())  # paused: no gate runs
    with pytest.raises(r.Refused):
        r.pause(paused, 51.0)
    if rolling_back:
        with pytest.raises(r.Refused, match="already rolling back"):
            r.rollback(paused, 51.0)
    back = r.resume(paused, 60.0)
    assert back.state == active.state
    gate = back.rollback_batches[0] if rolling_back else back.batches[0]
    assert gate.gate_since == 60.0  # the gate starts anew
    aborted, a = r.abort(paused, 61.0)
    assert aborted.state == r.ABORTED
    assert set(a.undrain) == sim.drained  # all it held goes back into use
    assert {x.action for x in a.directives} == {r.RESUME}


def test_a_record_from_before_batched_rollbacks_steps_as_one_batch() -> None:
    sim = _succeeded(Sim(_plan(2), 2))
    sim.op(r.rollback)
    old = sim.d.to_dict()
    del old["rollback_batches"], old["rollback_current"]
    d = r.Deployment.from_dict(old)
    assert [b.instances for b in d.rollback_batches] == [d.rollback_instances]
    assert d.rollback_batches[0].state == r.B_DRAINING
    assert r.Deployment.from_dict(d.to_dict()) == d
