"""Choosing an instance: eligibility and fallback, tiers, and each strategy's rules."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from aitrading.hub.v1 import balancer_pb2, types_pb2

from hub_client import (
    Balancer,
    Candidate,
    HashRing,
    HealthStatus,
    HubError,
    Ineligibility,
    InvalidArgument,
    NoEligibleInstance,
    RoundRobinCounter,
    Strategy,
    choose,
    eligible,
    stable_hash,
)

H, D, U, K, S = (
    HealthStatus.HEALTHY,
    HealthStatus.DEGRADED,
    HealthStatus.UNHEALTHY,
    HealthStatus.UNKNOWN,
    HealthStatus.STARTING,
)


def cand(instance_id: str, health: HealthStatus = H, **kw: Any) -> Candidate:
    return Candidate(instance_id, host=f"{instance_id}.svc", port=8000, health=health, **kw)


def ids(candidates: list[Candidate]) -> list[str]:
    return [c.instance_id for c in candidates]


def test_enum_values_are_the_proto_numbers() -> None:
    for member in HealthStatus:
        name = "UNSPECIFIED" if member is K else member.name
        assert types_pb2.HealthStatus.Value(f"HEALTH_STATUS_{name}") == member.value
    for strategy in Strategy:
        assert balancer_pb2.BalancingStrategy.Value(f"BALANCING_STRATEGY_{strategy.name}") == (
            strategy.value
        )


# -- eligibility --------------------------------------------------------------------

PRO = ("pro",)

ELIGIBILITY: list[tuple[str, list[Candidate], dict[str, Any], list[str] | Ineligibility]] = [
    ("no instances", [], {}, Ineligibility.NO_INSTANCES),
    ("all healthy", [cand("a"), cand("b")], {}, ["a", "b"]),
    ("healthy beats degraded", [cand("a", D), cand("b"), cand("c", D)], {}, ["b"]),
    ("degraded as fallback", [cand("a", D), cand("b", U), cand("c", K)], {}, ["a"]),
    ("unhealthy and unknown never", [cand("a", U), cand("b", K)], {}, Ineligibility.UNHEALTHY),
    ("unknown only", [cand("a", K)], {}, Ineligibility.UNHEALTHY),
    # STARTING (not proven yet) is the last resort, after DEGRADED
    ("healthy beats starting", [cand("a", S), cand("b")], {}, ["b"]),
    ("degraded beats starting", [cand("a", S), cand("b", D)], {}, ["b"]),
    ("starting as last resort", [cand("a", S), cand("b", U), cand("c", K), cand("d", S)], {},
     ["a", "d"]),
    ("starting but draining", [cand("a", S, draining=True), cand("b", U)], {},
     Ineligibility.UNHEALTHY),
    ("draining never", [cand("a", draining=True), cand("b", D)], {}, ["b"]),
    ("all draining", [cand("a", draining=True), cand("b", draining=True)], {},
     Ineligibility.DRAINING),
    ("circuit open never", [cand("a", circuit_open=True), cand("b", D)], {}, ["b"]),
    ("all circuits open", [cand("a", circuit_open=True)], {}, Ineligibility.CIRCUIT_OPEN),
    # the cause is the rule that removed the last instances
    ("draining then circuit", [cand("a", draining=True), cand("b", circuit_open=True)], {},
     Ineligibility.CIRCUIT_OPEN),
    ("draining then health", [cand("a", draining=True), cand("b", U)], {},
     Ineligibility.UNHEALTHY),
    ("draining and open", [cand("a", draining=True, circuit_open=True)], {},
     Ineligibility.DRAINING),
    # a healthy instance that is draining does not block the degraded fallback
    ("degraded behind drained healthy", [cand("a", draining=True), cand("b", D)], {}, ["b"]),
    # tiers
    ("tier too low", [cand("a", subscription_requirements=PRO)], {"tier": "free"},
     Ineligibility.TIER),
    ("no tier is free", [cand("a", subscription_requirements=PRO)], {}, Ineligibility.TIER),
    ("tier enough", [cand("a", subscription_requirements=PRO)], {"tier": "pro"}, ["a"]),
    ("tier above", [cand("a", subscription_requirements=PRO)], {"tier": "enterprise"}, ["a"]),
    ("legacy ignores tier", [cand("a", subscription_requirements=("enterprise",))],
     {"tier": None, "legacy": True}, ["a"]),
    ("tier filters, public remain",
     [cand("a", subscription_requirements=PRO), cand("b", D)], {"tier": "free"}, ["b"]),
    ("tier keeps healthy pro", [cand("a", subscription_requirements=PRO), cand("b", D)],
     {"tier": "pro"}, ["a"]),
    ("tier then unhealthy", [cand("a", subscription_requirements=PRO), cand("b", U)],
     {"tier": "free"}, Ineligibility.UNHEALTHY),
]  # fmt: skip


@pytest.mark.parametrize(
    ("candidates", "kwargs", "expected"),
    [case[1:] for case in ELIGIBILITY],
    ids=[case[0] for case in ELIGIBILITY],
)
def test_eligibility(
    candidates: list[Candidate], kwargs: dict[str, Any], expected: list[str] | Ineligibility
) -> None:
    if isinstance(expected, Ineligibility):
        with pytest.raises(NoEligibleInstance) as err:
            eligible(candidates, **kwargs)
        assert err.value.cause is expected
        assert err.value.metadata["cause"] == expected.value
        # Every strategy fails the same way.
        for strategy in Strategy:
            with pytest.raises(NoEligibleInstance) as err:
                choose(
                    candidates, strategy, affinity_key="k", counter=RoundRobinCounter(), **kwargs
                )
            assert err.value.cause is expected
    else:
        assert ids(eligible(candidates, **kwargs)) == expected
        for strategy in Strategy:
            chosen = choose(
                candidates, strategy, affinity_key="k", counter=RoundRobinCounter(), **kwargs
            )
            assert chosen.instance_id in expected


def test_no_eligible_instance_is_the_domain_error_with_details() -> None:
    candidates = [
        cand("a", subscription_requirements=("enterprise",)),
        cand("b", draining=True),
        cand("c", circuit_open=True),
        cand("d", circuit_open=True),
        cand("e", U),
    ]
    with pytest.raises(NoEligibleInstance) as err:
        eligible(candidates, tier="pro", service="quotes")
    e = err.value
    assert isinstance(e, HubError)
    assert e.reason == "NO_ELIGIBLE_INSTANCE"  # the proto's ErrorInfo reason
    assert e.metadata == {
        "cause": "UNHEALTHY",
        "instances": "5",
        "excluded_tier": "1",
        "excluded_draining": "1",
        "excluded_circuit_open": "2",
        "excluded_unhealthy": "1",
    }
    assert "'quotes'" in e.message
    for words in ("5 instances", "1 above the caller's tier", "1 draining", "2 with an open"):
        assert words in e.message


# -- LEAST_LOAD --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loads", "expected"),
    [
        ({"a": 0.5, "b": 0.2, "c": 0.9}, "b"),
        ({"a": 0.0}, "a"),
        ({"a": 1.5, "b": 1.2}, "b"),  # overloaded still picked when all are
        ({"c": 0.3, "a": 0.3, "b": 0.7}, "a"),  # ties by instance id without an rng
        ({"a": float("nan"), "b": 0.99}, "b"),  # a NaN load never wins
    ],
)
def test_least_load(loads: dict[str, float], expected: str) -> None:
    candidates = [cand(i, load=load) for i, load in loads.items()]
    assert choose(candidates, Strategy.LEAST_LOAD).instance_id == expected
    assert choose(list(reversed(candidates)), Strategy.LEAST_LOAD).instance_id == expected


def test_least_load_ignores_ineligible_even_if_idle() -> None:
    candidates = [cand("a", load=0.0, draining=True), cand("b", load=0.0, health=D),
                  cand("c", load=0.8)]  # fmt: skip
    assert choose(candidates, Strategy.LEAST_LOAD).instance_id == "c"


def test_least_load_breaks_ties_at_random_with_an_rng() -> None:
    candidates = [cand("a", load=0.1), cand("b", load=0.1), cand("c", load=0.4)]
    rng = random.Random(1)
    got = Counter(choose(candidates, Strategy.LEAST_LOAD, rng=rng).instance_id for _ in range(400))
    assert set(got) == {"a", "b"}
    assert 120 < got["a"] < 280


# -- ROUND_ROBIN ---------------------------------------------------------------------


def test_round_robin_cycles_evenly_in_id_order() -> None:
    candidates = [cand("c"), cand("a"), cand("b")]
    counter = RoundRobinCounter()
    order = [
        choose(candidates, Strategy.ROUND_ROBIN, counter=counter).instance_id for _ in range(9)
    ]
    assert order == ["a", "b", "c"] * 3
    # The order the view lists them in does not matter.
    shuffled = [cand("b"), cand("c"), cand("a")]
    assert choose(shuffled, Strategy.ROUND_ROBIN, counter=counter).instance_id == "a"


def test_round_robin_skips_ineligible() -> None:
    candidates = [cand("a"), cand("b", draining=True), cand("c"), cand("d", U)]
    counter = RoundRobinCounter()
    got = Counter(
        choose(candidates, Strategy.ROUND_ROBIN, counter=counter).instance_id for _ in range(100)
    )
    assert got == {"a": 50, "c": 50}


def test_round_robin_needs_a_counter() -> None:
    with pytest.raises(ValueError):
        choose([cand("a")], Strategy.ROUND_ROBIN)


def test_balancer_keeps_one_round_robin_per_service() -> None:
    balancer = Balancer(rng=random.Random(0))
    x = [cand("x1"), cand("x2")]
    y = [cand("y1"), cand("y2"), cand("y3")]
    got = [
        balancer.choose(service, members, Strategy.ROUND_ROBIN).instance_id
        for service, members in [("x", x), ("y", y), ("x", x), ("y", y), ("x", x), ("y", y)]
    ]
    assert got == ["x1", "y1", "x2", "y2", "x1", "y3"]
    balancer.forget("x")
    assert balancer.choose("x", x, Strategy.ROUND_ROBIN).instance_id == "x1"


def test_counter() -> None:
    counter = RoundRobinCounter(start=5)
    assert [counter.next_index(3) for _ in range(4)] == [2, 0, 1, 2]


# -- WEIGHTED -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights",
    [
        {"a": 100, "b": 200, "c": 700},
        {"a": 1, "b": 1},
        {"a": 1000, "b": 1},
        {"a": 100, "b": 0, "c": 100},  # zero weight: never picked
        {"a": 50, "b": -10},  # negative counts as zero
    ],
)
def test_weighted_is_proportional(weights: dict[str, int]) -> None:
    candidates = [cand(i, weight=w) for i, w in weights.items()]
    rng = random.Random(42)
    n = 20_000
    got = Counter(choose(candidates, Strategy.WEIGHTED, rng=rng).instance_id for _ in range(n))
    total = sum(max(0, w) for w in weights.values())
    for instance_id, w in weights.items():
        share = max(0, w) / total
        if share == 0:
            assert got[instance_id] == 0
        else:
            assert got[instance_id] / n == pytest.approx(share, abs=0.02)


def test_weighted_all_zero_is_uniform() -> None:
    candidates = [cand(i, weight=0) for i in "abcd"]
    rng = random.Random(3)
    got = Counter(choose(candidates, Strategy.WEIGHTED, rng=rng).instance_id for _ in range(8000))
    assert set(got) == set("abcd")
    assert all(1700 < v < 2300 for v in got.values())


def test_weighted_only_among_eligible() -> None:
    candidates = [cand("a", weight=1000, circuit_open=True), cand("b", weight=1), cand("c", D)]
    rng = random.Random(5)
    assert {choose(candidates, Strategy.WEIGHTED, rng=rng).instance_id for _ in range(200)} == {"b"}


def test_seeded_rng_makes_random_strategies_repeatable() -> None:
    candidates = [cand(i, weight=w, latency_ms=lat) for i, w, lat in
                  [("a", 10, 5.0), ("b", 30, 9.0), ("c", 60, 1.0), ("d", 5, 3.0)]]  # fmt: skip
    for strategy in (Strategy.WEIGHTED, Strategy.LATENCY_AWARE):
        runs = [
            [choose(candidates, strategy, rng=rng).instance_id for _ in range(50)]
            for rng in (random.Random(9), random.Random(9))
        ]
        assert runs[0] == runs[1]


# -- CONSISTENT_HASH ---------------------------------------------------------------------


def test_stable_hash_is_not_pythons_hash() -> None:
    # Fixed values: the same in every process, whatever PYTHONHASHSEED is.
    assert stable_hash("") == 0xE4A6A0577479B2B4  # blake2b, 8-byte digest, of b""
    assert stable_hash("user-42") == stable_hash("user-42")
    assert 0 <= stable_hash("user-42") < 2**64


def test_consistent_hash_sticks() -> None:
    candidates = [cand(f"i{n}") for n in range(5)]
    first = {k: choose(candidates, Strategy.CONSISTENT_HASH, affinity_key=k) for k in "abcdefgh"}
    for _ in range(3):
        for key, chosen in first.items():
            assert choose(candidates, Strategy.CONSISTENT_HASH, affinity_key=key) == chosen
            # Another replica (fresh balancer, other listing order) agrees.
            other = Balancer(rng=random.Random())
            again = other.choose("s", list(reversed(candidates)), Strategy.CONSISTENT_HASH,
                               affinity_key=key)  # fmt: skip
            assert again == chosen
    assert len({c.instance_id for c in first.values()}) > 1


def owners(ring: HashRing, keys: list[str]) -> dict[str, str | None]:
    return {k: ring.lookup(k) for k in keys}


KEYS = [f"user-{n}" for n in range(10_000)]


def test_adding_an_instance_moves_few_keys() -> None:
    members = [f"inst-{n}" for n in range(10)]
    before = owners(HashRing(members), KEYS)
    after = owners(HashRing([*members, "inst-new"]), KEYS)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert len(moved) / len(KEYS) < 0.2  # ideal: 1/11, about 0.09
    assert {after[k] for k in moved} == {"inst-new"}  # only to the newcomer


def test_removing_an_instance_moves_only_its_keys() -> None:
    members = [f"inst-{n}" for n in range(10)]
    before = owners(HashRing(members), KEYS)
    after = owners(HashRing(members[1:]), KEYS)
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "inst-0"}
    assert len(moved) / len(KEYS) < 0.2


def test_keys_spread_evenly() -> None:
    shares = Counter(owners(HashRing([f"inst-{n}" for n in range(10)]), KEYS).values())
    assert len(shares) == 10
    assert all(0.05 < v / len(KEYS) < 0.15 for v in shares.values())


def test_an_ineligible_owner_hands_its_keys_on_and_gets_them_back() -> None:
    candidates = [cand(f"i{n}") for n in range(6)]
    keys = KEYS[:2000]
    home = {
        k: choose(candidates, Strategy.CONSISTENT_HASH, affinity_key=k).instance_id for k in keys
    }
    sick = [c if c.instance_id != "i2" else cand("i2", U) for c in candidates]
    away = {k: choose(sick, Strategy.CONSISTENT_HASH, affinity_key=k).instance_id for k in keys}
    assert "i2" not in away.values()
    assert {k for k in keys if home[k] != away[k]} == {k for k in keys if home[k] == "i2"}
    # Skipping equals a ring built without it.
    ring_without = HashRing([c.instance_id for c in candidates if c.instance_id != "i2"])
    assert all(ring_without.lookup(k) == away[k] for k in keys)
    back = {
        k: choose(candidates, Strategy.CONSISTENT_HASH, affinity_key=k).instance_id for k in keys
    }
    assert back == home


def test_consistent_hash_respects_tier() -> None:
    candidates = [cand(f"p{n}", subscription_requirements=("pro",)) for n in range(3)]
    candidates.append(cand("public"))
    for key in KEYS[:200]:
        assert (
            choose(candidates, Strategy.CONSISTENT_HASH, affinity_key=key, tier="free")
            == (candidates[-1])
        )


@pytest.mark.parametrize("key", [None, ""])
def test_consistent_hash_needs_a_key(key: str | None) -> None:
    with pytest.raises(InvalidArgument) as err:
        choose([cand("a")], Strategy.CONSISTENT_HASH, affinity_key=key)
    assert err.value.field_violations[0].field == "affinity_key"


def test_ring_is_cached_per_membership() -> None:
    balancer = Balancer()
    candidates = [cand("a"), cand("b"), cand("c")]
    ring = balancer.ring("s", candidates)
    # Health, load, order: not a membership change.
    changed = [cand("c", U, load=0.9), cand("b", draining=True), cand("a")]
    assert balancer.ring("s", changed) is ring
    assert balancer.ring("s", [*candidates, cand("d")]) is not ring
    assert balancer.ring("s", [*candidates, cand("d")]).members == {"a", "b", "c", "d"}
    assert balancer.ring("other", candidates) is not balancer.ring("s", candidates)


def test_a_stale_ring_passed_in_is_replaced() -> None:
    stale = HashRing(["gone-1", "gone-2"])
    assert choose(
        [cand("a")], Strategy.CONSISTENT_HASH, affinity_key="k", ring=stale
    ).instance_id == ("a")


def test_hash_ring_edges() -> None:
    assert HashRing([]).lookup("k") is None
    assert len(HashRing(["a", "a", "b"])) == 2
    ring = HashRing(["a", "b"], vnodes=1)
    assert ring.lookup("k") in {"a", "b"}
    assert ring.lookup("k", accept={"z"}) is None
    assert ring.lookup("k", accept={"b"}) == "b"
    with pytest.raises(ValueError):
        HashRing(["a"], vnodes=0)


# -- LATENCY_AWARE ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ({"latency_ms": 5.0}, {"latency_ms": 50.0}, "a"),
        ({"latency_ms": 80.0, "load": 0.0}, {"latency_ms": 20.0, "load": 0.9}, "b"),
        # unknown latency on either side: the lower load decides
        ({"latency_ms": None, "load": 0.2}, {"latency_ms": 1.0, "load": 0.6}, "a"),
        ({"latency_ms": None, "load": 0.7}, {"latency_ms": None, "load": 0.1}, "b"),
        ({"latency_ms": float("nan"), "load": 0.9}, {"latency_ms": 100.0, "load": 0.3}, "b"),
        # equal latency: the lower load decides
        ({"latency_ms": 10.0, "load": 0.5}, {"latency_ms": 10.0, "load": 0.4}, "b"),
    ],
)
def test_latency_aware_between_two(a: dict[str, Any], b: dict[str, Any], expected: str) -> None:
    candidates = [cand("a", **a), cand("b", **b)]
    rng = random.Random(11)
    # With two eligible instances both are always the sample, in either order.
    assert {choose(candidates, Strategy.LATENCY_AWARE, rng=rng).instance_id for _ in range(50)} == {
        expected
    }


def test_latency_aware_power_of_two() -> None:
    latencies = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    candidates = [cand(i, latency_ms=lat) for i, lat in latencies.items()]
    rng = random.Random(2)
    got = Counter(
        choose(candidates, Strategy.LATENCY_AWARE, rng=rng).instance_id for _ in range(6000)
    )
    # P(pick) = P(sampled) * P(the other one is slower): a 1/2, b 1/3, c 1/6, d 0.
    assert "d" not in got
    assert got["a"] / 6000 == pytest.approx(1 / 2, abs=0.03)
    assert got["b"] / 6000 == pytest.approx(1 / 3, abs=0.03)
    assert got["c"] / 6000 == pytest.approx(1 / 6, abs=0.03)


def test_latency_aware_single_and_eligible_only() -> None:
    assert choose([cand("a")], Strategy.LATENCY_AWARE).instance_id == "a"
    candidates = [cand("fast", latency_ms=1.0, circuit_open=True), cand("slow", latency_ms=900.0),
                  cand("deg", D, latency_ms=0.5)]  # fmt: skip
    assert choose(candidates, Strategy.LATENCY_AWARE).instance_id == "slow"


# -- Balancer -----------------------------------------------------------------------------


def test_balancer_picks_with_every_strategy() -> None:
    balancer = Balancer(rng=random.Random(0))
    candidates = [cand("a", load=0.1, latency_ms=3.0), cand("b", load=0.5, latency_ms=1.0)]
    assert balancer.choose("s", candidates).instance_id == "a"  # LEAST_LOAD by default
    for strategy in Strategy:
        chosen = balancer.choose("s", candidates, strategy, affinity_key="user-1")
        assert chosen in candidates
    with pytest.raises(NoEligibleInstance) as err:
        balancer.choose("s", [cand("a", U)], Strategy.WEIGHTED)
    assert err.value.cause is Ineligibility.UNHEALTHY and "'s'" in err.value.message


def test_balancer_passes_tier_and_legacy() -> None:
    balancer = Balancer()
    candidates = [cand("ent", subscription_requirements=("enterprise",))]
    with pytest.raises(NoEligibleInstance):
        balancer.choose("s", candidates, tier="pro")
    assert balancer.choose("s", candidates, tier="enterprise").instance_id == "ent"
    assert balancer.choose("s", candidates, tier=None, legacy=True).instance_id == "ent"
