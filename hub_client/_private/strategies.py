"""Choosing an instance of a service for a caller (pure: no clock, no I/O).

The hub's PickEndpoint chooses with these rules, and so can a client that keeps
its own view of the instances (:func:`choose`): the same strategies and the same
eligibility give the same answers. The tier rule comes along (:func:`can_access`,
whose table lives in hub_client for both sides), since a client that holds the
unfiltered view may choose on behalf of callers of any tier.

The hub answers picks from memory at thousands per second, so everything here
is cheap per pick: eligibility is a few list passes, and the consistent-hash
ring is built once per membership change (:class:`Balancer` caches it) and
looked up with a binary search.

Eligibility, in order (the first rule that leaves nothing names the cause):

1. the caller's tier must reach the instance's requirements (:func:`can_access`);
2. never a draining instance;
3. never an instance whose circuit is open;
4. HEALTHY only; DEGRADED only when no HEALTHY instance is left; STARTING
   (not proven yet) only when no DEGRADED one is left either; never UNHEALTHY
   or UNKNOWN.

Rules 1-3 and the health classes of rule 4 make the *usable* set (:func:`usable`),
each member ranked by :func:`priority` (0 HEALTHY, 1 DEGRADED, 2 STARTING); a pick
takes the best-ranked members of it (:func:`eligible`). The hub's xDS endpoints
are the usable set with these ranks as EDS priorities, so a proxyless client
fails over the way a pick does.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import random
from bisect import bisect_right
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

import grpc
from aitrading.hub.v1.errors_pb2 import (
    ERROR_REASON_INVALID_ARGUMENT,
    ERROR_REASON_NO_ELIGIBLE_INSTANCE,
)

from hub_client._private.errors import (
    FieldViolation,
    Ineligibility,
    InvalidArgument,
    NoEligibleInstance,
    reason_text,
)
from hub_client._private.tiers import can_access

# Points per instance on the hash ring: ~160 keeps each instance's share of keys
# within roughly +-10% of fair while a 100-instance ring is still built in ms.
DEFAULT_VNODES = 160


class HealthStatus(IntEnum):
    """Health of one instance, as the balancer ranks it.

    The values equal the ``aitrading.hub.v1.HealthStatus`` proto numbers, so a
    message's status converts with ``HealthStatus(number)``.
    """

    UNKNOWN = 0  # no status at all (HEALTH_STATUS_UNSPECIFIED)
    HEALTHY = 1
    DEGRADED = 2
    UNHEALTHY = 3
    STARTING = 4  # has a check, not yet proven either way


class Strategy(IntEnum):
    """How to choose among eligible instances (values are the proto's numbers)."""

    LEAST_LOAD = 1
    ROUND_ROBIN = 2
    WEIGHTED = 3
    CONSISTENT_HASH = 4
    LATENCY_AWARE = 5


@dataclass(frozen=True, slots=True)
class Candidate:
    """An instance as the balancer sees it.

    Attributes:
        instance_id: Unique within the service.
        host: Where to connect.
        port: Where to connect.
        weight: Relative weight for WEIGHTED (the registry's default is 100);
            zero or negative is never picked while a positive weight exists.
        load: Last reported load, 0 idle .. 1 at capacity (more: overloaded).
        latency_ms: Last probe latency; None when unknown.
        health: Last health status.
        draining: Being drained: never picked.
        circuit_open: Its circuit refuses calls: never picked.
        subscription_requirements: Tier names of which the caller needs one;
            empty means public.
        version: The instance's version (informational).
    """

    instance_id: str
    host: str
    port: int
    weight: int = 100
    load: float = 0.0
    latency_ms: float | None = None
    health: HealthStatus = HealthStatus.UNKNOWN
    draining: bool = False
    circuit_open: bool = False
    subscription_requirements: tuple[str, ...] = ()
    version: str = ""


def _no_eligible(cause: Ineligibility, message: str, **counts: int) -> NoEligibleInstance:
    """The error the hub would answer: reason NO_ELIGIBLE_INSTANCE, with the cause
    and the per-rule counts as its metadata."""
    return NoEligibleInstance(
        message,
        code=grpc.StatusCode.UNAVAILABLE,
        reason=reason_text(ERROR_REASON_NO_ELIGIBLE_INSTANCE),
        metadata={"cause": cause.value, **{k: str(v) for k, v in counts.items()}},
    )


_EXCLUDED = {
    "excluded_tier": "above the caller's tier",
    "excluded_draining": "draining",
    "excluded_circuit_open": "with an open circuit",
    "excluded_unhealthy": "unhealthy or without a status",
}


# EDS-style priority of each usable health class: lower is preferred.
_PRIORITY = {HealthStatus.HEALTHY: 0, HealthStatus.DEGRADED: 1, HealthStatus.STARTING: 2}


def priority(health: HealthStatus) -> int | None:
    """Rank of a health class among usable instances: 0 HEALTHY, 1 DEGRADED,
    2 STARTING (not proven yet); None for UNHEALTHY and UNKNOWN (never usable)."""
    return _PRIORITY.get(health)


def usable(
    candidates: Sequence[Candidate],
    *,
    tier: str | None = None,
    legacy: bool = False,
    service: str = "",
) -> list[Candidate]:
    """Every instance a caller may ever be given (rules 1-3, and a usable health
    class), before the DEGRADED / STARTING fallback of :func:`eligible`.

    Args:
        candidates: Every registered instance of the service.
        tier: The caller's tier; None or unknown counts as free.
        legacy: Ignore the caller's tier.
        service: Only for the error message.

    Returns:
        The usable instances, in the order of ``candidates``; rank them with
        :func:`priority`.

    Raises:
        NoEligibleInstance: Nothing is usable; ``cause`` says which rule emptied it.
    """
    what = f"service {service!r}" if service else "the service"
    if not candidates:
        raise _no_eligible(Ineligibility.NO_INSTANCES, f"{what} has no instances")
    counts = {"instances": len(candidates)}

    def fail(cause: Ineligibility, why: str = "") -> NoEligibleInstance:
        parts = [f"{v} {_EXCLUDED[k]}" for k, v in counts.items() if k in _EXCLUDED and v]
        text = f"no eligible instance of {what} ({len(candidates)} instances: {', '.join(parts)})"
        return _no_eligible(cause, text + why, **counts)

    pool = [c for c in candidates if can_access(c.subscription_requirements, tier, legacy=legacy)]
    counts["excluded_tier"] = len(candidates) - len(pool)
    if not pool:
        raise fail(Ineligibility.TIER)
    remaining = len(pool)
    pool = [c for c in pool if not c.draining]
    counts["excluded_draining"] = remaining - len(pool)
    if not pool:
        raise fail(Ineligibility.DRAINING)
    remaining = len(pool)
    pool = [c for c in pool if not c.circuit_open]
    counts["excluded_circuit_open"] = remaining - len(pool)
    if not pool:
        raise fail(Ineligibility.CIRCUIT_OPEN)
    found = [c for c in pool if c.health in _PRIORITY]
    if found:
        return found
    counts["excluded_unhealthy"] = len(pool)
    states: dict[str, int] = {}
    for c in pool:
        states[c.health.name] = states.get(c.health.name, 0) + 1
    by_state = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    raise fail(Ineligibility.UNHEALTHY, f": none is HEALTHY, DEGRADED or STARTING ({by_state})")


def eligible(
    candidates: Sequence[Candidate],
    *,
    tier: str | None = None,
    legacy: bool = False,
    service: str = "",
) -> list[Candidate]:
    """The instances a caller may be given, with the DEGRADED fallback applied.

    Args:
        candidates: Every registered instance of the service.
        tier: The caller's tier; None or unknown counts as free.
        legacy: Ignore the caller's tier.
        service: Only for the error message.

    Returns:
        The HEALTHY eligible instances, or if there are none the DEGRADED ones,
        or if there are none either the STARTING ones (the best-ranked members
        of :func:`usable`). Order is that of ``candidates``.

    Raises:
        NoEligibleInstance: Nothing is left; ``cause`` says which rule emptied it.
    """
    pool = usable(candidates, tier=tier, legacy=legacy, service=service)
    best = min(_PRIORITY[c.health] for c in pool)
    return [c for c in pool if _PRIORITY[c.health] == best]


class RoundRobinCounter:
    """Position of one service's round robin (hold one per service)."""

    __slots__ = ("_next",)

    def __init__(self, start: int = 0) -> None:
        self._next = start

    def next_index(self, n: int) -> int:
        """The next index in ``range(n)`` (n > 0), advancing the counter."""
        index = self._next % n
        self._next += 1
        return index


def stable_hash(value: str) -> int:
    """A 64-bit hash that is the same in every process and replica (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")


class HashRing:
    """A consistent-hash ring with virtual nodes.

    Each member gets ``vnodes`` points; a key belongs to the first point at or
    after its hash (wrapping). Adding or removing one of n members moves only
    the keys of its points, about 1/n of them. Build it once per membership and
    reuse it; a lookup is one hash plus a binary search.

    Args:
        members: Member ids (duplicates ignored).
        vnodes: Points per member (>= 1).
    """

    __slots__ = ("_hashes", "_owners", "members", "vnodes")

    def __init__(self, members: Iterable[str], vnodes: int = DEFAULT_VNODES) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        self.members: frozenset[str] = frozenset(members)
        self.vnodes = vnodes
        # Ties of equal hashes are ordered by member id so every replica builds
        # the same ring.
        points = sorted(
            (stable_hash(f"{member}\x00{i}"), member)
            for member in self.members
            for i in range(vnodes)
        )
        self._hashes = [h for h, _ in points]
        self._owners = [m for _, m in points]

    def __len__(self) -> int:
        return len(self.members)

    def lookup(self, key: str, accept: Collection[str] | None = None) -> str | None:
        """The member owning ``key``, or None for an empty ring.

        Args:
            key: The affinity key.
            accept: If given, skip members not in it, walking on clockwise. This
                gives the same answer as a ring built of the accepted members
                only, so an instance that turns unhealthy hands its keys to its
                neighbours and gets them back when it recovers, with no rebuild.
        """
        if not self._hashes or (accept is not None and self.members.isdisjoint(accept)):
            return None
        start = bisect_right(self._hashes, stable_hash(key))
        n = len(self._owners)
        for step in range(n):
            owner = self._owners[(start + step) % n]
            if accept is None or owner in accept:
                return owner
        return None  # pragma: no cover - unreachable: some accepted member has points


_default_rng = random.Random()


@functools.lru_cache(maxsize=256)
def _shared_ring(members: frozenset[str]) -> HashRing:
    """Rings for callers of :func:`choose` that hold none: building one costs
    ``len(members) * DEFAULT_VNODES`` hashes, far more than a lookup."""
    return HashRing(members)


def _least_load(pool: Sequence[Candidate], rng: random.Random | None) -> Candidate:
    # One pass (the hub runs this on every PickEndpoint); an unknown (NaN) load
    # counts as the highest.
    lowest, ties = math.inf, []
    for c in pool:
        load = c.load
        if load < lowest:
            lowest, ties = load, [c]
        elif load == lowest or (load != load and lowest == math.inf):
            ties.append(c)
    if len(ties) == 1:
        return ties[0]
    # Ties are common (fresh instances all report 0): a random tie-break keeps
    # every replica from sending its picks to the same one until loads update.
    if rng is not None:
        return rng.choice(ties)
    return min(ties, key=lambda c: c.instance_id)


def _round_robin(pool: Sequence[Candidate], counter: RoundRobinCounter) -> Candidate:
    # Sorted so the cycle does not depend on the order the view lists instances.
    ordered = sorted(pool, key=lambda c: c.instance_id)
    return ordered[counter.next_index(len(ordered))]


def _weighted(pool: Sequence[Candidate], rng: random.Random) -> Candidate:
    weights = [max(0, c.weight) for c in pool]
    total = sum(weights)
    if total <= 0:
        return rng.choice(pool)
    cumulative = list(itertools.accumulate(weights))
    # bisect_right on [0, total) skips zero-weight entries (their cumulative
    # value equals the previous one, so no r lands on them).
    return pool[bisect_right(cumulative, rng.random() * total)]


def _latency_aware(pool: Sequence[Candidate], rng: random.Random) -> Candidate:
    if len(pool) == 1:
        return pool[0]
    a, b = rng.sample(pool, 2)
    la, lb = a.latency_ms, b.latency_ms
    if la is not None and lb is not None and not math.isnan(la) and not math.isnan(lb):
        if la != lb:
            return a if la < lb else b
    return b if b.load < a.load else a


def choose(
    candidates: Sequence[Candidate],
    strategy: Strategy = Strategy.LEAST_LOAD,
    *,
    affinity_key: str | None = None,
    tier: str | None = None,
    legacy: bool = False,
    rng: random.Random | None = None,
    counter: RoundRobinCounter | None = None,
    ring: HashRing | None = None,
    service: str = "",
    pool: Sequence[Candidate] | None = None,
) -> Candidate:
    """Choose one instance.

    Args:
        candidates: Every registered instance of the service.
        strategy: LEAST_LOAD: lowest load (ties at random with ``rng``, else by
            instance id). ROUND_ROBIN: each eligible instance in turn by id
            (needs ``counter``). WEIGHTED: random in proportion to weight.
            CONSISTENT_HASH: the ring owner of ``affinity_key`` among the
            eligible. LATENCY_AWARE: the lower latency of two random eligible
            instances (by load when either latency is unknown).
        affinity_key: Required for CONSISTENT_HASH (e.g. the user id).
        tier: The caller's tier; None or unknown counts as free.
        legacy: Ignore the caller's tier.
        rng: Source of randomness (seed it in tests).
        counter: The service's round-robin position.
        ring: A ring of the ids in ``candidates``; if None or stale, one from a
            small process-wide cache keyed by the ids is used.
        service: Only for error messages.
        pool: ``eligible(candidates, tier=tier, legacy=legacy)`` when the
            caller has it already (the hub's picker keeps one per candidate list).

    Returns:
        The chosen candidate.

    Raises:
        NoEligibleInstance: Nothing may be picked; ``cause`` says why.
        InvalidArgument: CONSISTENT_HASH without an affinity key.
        ValueError: ROUND_ROBIN without a counter.
    """
    if strategy is Strategy.CONSISTENT_HASH and not affinity_key:
        violation = FieldViolation("affinity_key", "is required by CONSISTENT_HASH")
        raise InvalidArgument(
            f"invalid request: {violation.field}: {violation.description}",
            code=grpc.StatusCode.INVALID_ARGUMENT,
            reason=reason_text(ERROR_REASON_INVALID_ARGUMENT),
            field_violations=[violation],
        )
    if strategy is Strategy.ROUND_ROBIN and counter is None:
        raise ValueError("ROUND_ROBIN needs a RoundRobinCounter")
    if pool is None:
        pool = eligible(candidates, tier=tier, legacy=legacy, service=service)
    match strategy:
        case Strategy.LEAST_LOAD:
            return _least_load(pool, rng)
        case Strategy.ROUND_ROBIN:
            assert counter is not None
            return _round_robin(pool, counter)
        case Strategy.WEIGHTED:
            return _weighted(pool, rng or _default_rng)
        case Strategy.LATENCY_AWARE:
            return _latency_aware(pool, rng or _default_rng)
        case Strategy.CONSISTENT_HASH:
            assert affinity_key
            # The ring spans every candidate, not just the eligible ones, so it
            # survives health flaps; skipping the ineligible gives the answer a
            # ring of the eligible alone would.
            ids = frozenset(c.instance_id for c in candidates)
            if ring is None or ring.members != ids:
                ring = _shared_ring(ids)
            by_id = {c.instance_id: c for c in pool}
            owner = ring.lookup(affinity_key, by_id)
            assert owner is not None  # pool is non-empty and every pool id is on the ring
            return by_id[owner]
    raise ValueError(f"unknown strategy {strategy!r}")


class Balancer:
    """Per-service balancing state: round-robin positions and cached hash rings.

    Hold one per process; not thread-safe (the hub picks on its event loop).

    Args:
        rng: Source of randomness; a fresh ``random.Random()`` if None.
        vnodes: Points per instance on hash rings.
    """

    def __init__(self, *, rng: random.Random | None = None, vnodes: int = DEFAULT_VNODES) -> None:
        self._rng = rng or random.Random()
        self._vnodes = vnodes
        self._counters: dict[str, RoundRobinCounter] = {}
        self._rings: dict[str, HashRing] = {}

    def choose(
        self,
        service: str,
        candidates: Sequence[Candidate],
        strategy: Strategy = Strategy.LEAST_LOAD,
        *,
        affinity_key: str | None = None,
        tier: str | None = None,
        legacy: bool = False,
        pool: Sequence[Candidate] | None = None,
    ) -> Candidate:
        """Choose one instance of ``service``; see :func:`choose` for the rules
        (and for ``pool``).

        Raises:
            NoEligibleInstance: Nothing may be picked; ``cause`` says why.
            InvalidArgument: CONSISTENT_HASH without an affinity key.
        """
        return choose(
            candidates,
            strategy,
            affinity_key=affinity_key,
            tier=tier,
            legacy=legacy,
            rng=self._rng,
            counter=self.counter(service) if strategy is Strategy.ROUND_ROBIN else None,
            ring=(self.ring(service, candidates) if strategy is Strategy.CONSISTENT_HASH else None),
            service=service,
            pool=pool,
        )

    def counter(self, service: str) -> RoundRobinCounter:
        """The service's round-robin position (created on first use)."""
        counter = self._counters.get(service)
        if counter is None:
            counter = self._counters[service] = RoundRobinCounter()
        return counter

    def ring(self, service: str, candidates: Iterable[Candidate]) -> HashRing:
        """The service's hash ring over these candidates' ids, rebuilt only when
        the set of ids differs from the cached ring's."""
        ids = frozenset(c.instance_id for c in candidates)
        ring = self._rings.get(service)
        if ring is None or ring.members != ids:
            ring = self._rings[service] = HashRing(ids, self._vnodes)
        return ring

    def forget(self, service: str) -> None:
        """Drop a service's state (when its last instance is gone)."""
        self._counters.pop(service, None)
        self._rings.pop(service, None)
