"""The one usable-endpoint projection (hub_server/balancing/projection.py): which
instances a caller may be sent to, ranked as PickEndpoint ranks them; and against
a real hub, that its endpoints are exactly what PickEndpoint returns."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence

import grpc
import pytest
from aitrading.hub.v1 import balancer_pb2 as lb
from aitrading.hub.v1 import balancer_pb2_grpc, circuit_pb2_grpc, types_pb2
from aitrading.hub.v1 import circuit_pb2 as cb

import hub_client
from hub_client import Candidate, HealthStatus, HubClient
from hub_server.app import Hub
from hub_server.balancing.projection import EndpointProjection
from hub_server.circuits.breaker import Circuit
from hub_server.circuits.service import Circuits, circuit_key
from hub_server.health.service import HealthView
from hub_server.registry.service import RegistryView
from hub_server.store import keys
from hub_server.store.etcd import Event, KeyValue
from hub_server.store.mirror import PrefixMirror
from tests.support.waiting import eventually
from tests.test_read_caches import NO_STORE, Feed

HEALTHY, DEGRADED, UNHEALTHY = (
    types_pb2.HEALTH_STATUS_HEALTHY,
    types_pb2.HEALTH_STATUS_DEGRADED,
    types_pb2.HEALTH_STATUS_UNHEALTHY,
)


def _instance(*tiers: int, weight: int = 100, check: bool = False) -> bytes:
    inst = types_pb2.Instance(host="10.0.0.1", port=8000, weight=weight, version="1.2")
    inst.subscription_requirements.extend(tiers)
    if check:
        inst.health_check.tcp.SetInParent()
    return inst.SerializeToString()


def _circuit(state: str) -> bytes:
    data = Circuit(now=1.0).to_dict()
    data["state"] = state
    return json.dumps(data).encode()


class Views:
    """The views a projection is built from, fed by hand."""

    def __init__(self) -> None:
        self.registry, self.health = RegistryView(NO_STORE), HealthView(NO_STORE)
        self.circuits = Circuits(NO_STORE)
        self.drains: PrefixMirror[str] = PrefixMirror(
            NO_STORE, keys.DRAIN, lambda kv: kv.value.decode()
        )
        self.projection = EndpointProjection(
            NO_STORE, self.registry, self.health, self.circuits, drains=self.drains
        )
        self.feed = Feed(
            self.registry.mirror, self.health.mirror, self.circuits.mirror, self.drains,
            self.projection.loads,
        )  # fmt: skip

    async def add(self, service: str, instance_id: str, value: bytes | None = None) -> None:
        key = keys.instance_key(service, instance_id)
        await self.feed.put(self.registry.mirror, key, value or _instance())

    async def update(self, service: str, instance_id: str, before: bytes, after: bytes) -> None:
        """An update whose previous value etcd reports (as the registry's watch asks)."""
        self.feed.revision += 1
        rev, key = self.feed.revision, keys.instance_key(service, instance_id)
        prev = KeyValue(key, before, 2, rev - 1, 1, 7)
        await self.registry.mirror._apply(
            [Event("put", KeyValue(key, after, 2, rev, 2, 7), prev)], rev
        )


async def test_usable_set_is_ranked_like_a_pick() -> None:
    v = Views()
    for iid in ("h2", "h1", "d", "s", "u", "drained", "tripped"):
        await v.add("quotes", iid, _instance(check=iid == "s"))
    await v.feed.health(v.health, "quotes", "d", DEGRADED)
    await v.feed.health(v.health, "quotes", "u", UNHEALTHY)
    await v.feed.put(v.drains, keys.drain_key("quotes", "drained"), b"dep-1")
    await v.feed.put(v.circuits.mirror, circuit_key("quotes", "tripped"), _circuit("FORCED_OPEN"))
    await v.feed.put(v.projection.loads, keys.load_key("quotes", "h1"), b"0.25")

    got = v.projection.project("quotes", None)
    assert got.visible and not got.circuit_open
    assert [(e.instance_id, e.priority, e.health) for e in got.endpoints] == [
        ("h1", 0, HealthStatus.HEALTHY),
        ("h2", 0, HealthStatus.HEALTHY),
        ("d", 1, HealthStatus.DEGRADED),
        ("s", 2, HealthStatus.STARTING),
    ]
    h1 = got.endpoints[0]
    assert (h1.host, h1.port, h1.weight, h1.load, h1.version) == (
        "10.0.0.1",
        8000,
        100,
        0.25,
        "1.2",
    )
    assert got.revision == v.feed.revision == v.projection.revision

    # A pick takes the best-ranked part of the same set.
    picked = hub_client.eligible(v.projection.candidates("quotes"))
    assert [c.instance_id for c in picked] == ["h1", "h2"]

    # Healthy ones gone: the degraded one is what is left at the top.
    for iid in ("h1", "h2"):
        await v.feed.health(v.health, "quotes", iid, UNHEALTHY)
    assert [e.instance_id for e in v.projection.project("quotes", None).endpoints] == ["d", "s"]


async def test_tiers_follow_the_registry_rule() -> None:
    v = Views()
    enterprise = types_pb2.SUBSCRIPTION_TIER_ENTERPRISE
    await v.add("alpha", "public")
    await v.add("alpha", "vip", _instance(enterprise))
    await v.add("secret", "only", _instance(enterprise))

    assert [e.instance_id for e in v.projection.project("alpha", "free").endpoints] == ["public"]
    assert [e.instance_id for e in v.projection.project("alpha", "enterprise").endpoints] == [
        "public", "vip"
    ]  # fmt: skip
    assert len(v.projection.project("alpha", None).endpoints) == 2  # unfiltered
    hidden = v.projection.project("secret", "free")
    assert (hidden.visible, hidden.endpoints) == (False, ())
    assert v.projection.services("free") == ["alpha"]
    assert v.projection.services("enterprise") == v.projection.services(None) == ["alpha", "secret"]
    gone = v.projection.project("nothing", None)
    assert (gone.visible, gone.endpoints) == (False, ())


async def test_circuits_open_service_and_half_open_instance() -> None:
    v = Views()
    await v.add("ml", "a")
    await v.add("ml", "b")
    await v.feed.put(v.circuits.mirror, circuit_key("ml", "b"), _circuit("HALF_OPEN"))
    got = v.projection.project("ml", None)
    assert [(e.instance_id, e.half_open) for e in got.endpoints] == [("a", False), ("b", True)]

    await v.feed.put(v.circuits.mirror, circuit_key("ml", ""), _circuit("FORCED_OPEN"))
    shut = v.projection.project("ml", None)
    assert (shut.visible, shut.circuit_open, shut.endpoints) == (True, True, ())


async def test_subscribers_hear_per_service_and_catalogue_changes() -> None:
    v = Views()
    await v.add("quotes", "i1")
    heard: list[str | None] = []
    unsubscribe = v.projection.subscribe(heard.append)
    policies: PrefixMirror[bytes] = PrefixMirror(NO_STORE, b"/policies/", lambda kv: kv.value)
    policies.live = True
    v.projection.watch(policies)

    await v.add("feeds", "f1")  # a new service: its own change, then the catalogue's
    assert heard == ["feeds", None]
    heard.clear()
    await v.add("feeds", "f2")  # a twin of f1: no tier sees another catalogue
    await v.add("feeds", "vip", _instance(types_pb2.SUBSCRIPTION_TIER_ENTERPRISE))
    assert heard == ["feeds", "feeds", None]
    heard.clear()
    await v.feed.delete(v.registry.mirror, keys.instance_key("feeds", "f2"))  # f1 remains
    await v.feed.delete(v.registry.mirror, keys.instance_key("feeds", "vip"))
    assert heard == ["feeds", "feeds", None]
    heard.clear()
    await v.feed.health(v.health, "quotes", "i1", DEGRADED)
    await v.feed.put(v.projection.loads, keys.load_key("quotes", "i1"), b"0.5")
    await v.feed.put(v.drains, keys.drain_key("quotes", "i1"), b"dep")
    await v.feed.put(policies, b"/policies/quotes", b"{}")
    assert heard == ["quotes"] * 4
    heard.clear()
    await v.update("quotes", "i1", _instance(), _instance(weight=5))  # same tiers
    assert heard == ["quotes"]
    heard.clear()
    await v.update("quotes", "i1", _instance(), _instance(types_pb2.SUBSCRIPTION_TIER_PRO))
    assert heard == ["quotes", None]
    heard.clear()
    await v.add("quotes", "i1", _instance(weight=7))  # previous value unknown: maybe
    assert heard == ["quotes", None]
    unsubscribe()
    heard.clear()
    await v.add("quotes", "i2")
    assert heard == []
    # The candidates were rebuilt on the way: i1 is drained, i2 is new.
    assert [e.instance_id for e in v.projection.project("quotes", None).endpoints] == ["i2"]


def _random_candidates(rng: random.Random) -> list[Candidate]:
    return [
        Candidate(
            instance_id=f"i{n}",
            host="h",
            port=n,
            health=rng.choice(list(HealthStatus)),
            draining=rng.random() < 0.2,
            circuit_open=rng.random() < 0.2,
            subscription_requirements=rng.choice([(), ("pro",), ("enterprise",)]),
        )
        for n in range(rng.randint(0, 6))
    ]


def _outcome(
    fn: Callable[..., list[Candidate]], candidates: Sequence[Candidate], tier: str
) -> list[Candidate] | tuple[str, dict[str, str]]:
    try:
        return fn(candidates, tier=tier)
    except hub_client.NoEligibleInstance as e:
        return (e.message, e.metadata)


def test_eligible_is_the_best_ranked_part_of_usable() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        candidates = _random_candidates(rng)
        tier = rng.choice(["free", "pro", "enterprise"])
        picked = _outcome(hub_client.eligible, candidates, tier)
        pool = _outcome(hub_client.usable, candidates, tier)
        if isinstance(pool, tuple):  # nothing usable: the same error either way
            assert picked == pool
            continue
        best = min(hub_client.priority(c.health) for c in pool)  # type: ignore[type-var]
        assert picked == [c for c in pool if hub_client.priority(c.health) == best]
        assert all(hub_client.priority(c.health) is not None for c in pool)
    assert hub_client.priority(HealthStatus.UNHEALTHY) is None
    assert hub_client.priority(HealthStatus.UNKNOWN) is None


# -- against a real hub -----------------------------------------------------------------


async def _picks(
    hub: Hub, service: str, n: int, metadata: tuple[tuple[str, str], ...] = ()
) -> set[str]:
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = balancer_pb2_grpc.LoadBalancerServiceStub(ch)
        return {
            (
                await stub.PickEndpoint(
                    lb.PickEndpointRequest(
                        service=service, strategy=lb.BALANCING_STRATEGY_ROUND_ROBIN
                    ),
                    metadata=metadata,
                )
            ).instance_id
            for _ in range(n)
        }


async def test_projection_equals_what_pick_endpoint_returns(hub: Hub, client: HubClient) -> None:
    projection = hub.services.projection
    await projection.ready()
    handles = {
        iid: await client.register("orders", instance_id=iid, host="127.0.0.1", port=9000)
        for iid in ("a", "b", "c", "d")
    }
    await client.register("orders", instance_id="vip", host="127.0.0.1", port=9001,
                          subscription_requirements=["enterprise"])  # fmt: skip
    async with grpc.aio.insecure_channel(hub.address) as ch:
        await circuit_pb2_grpc.CircuitBreakerServiceStub(ch).OverrideCircuit(
            cb.OverrideCircuitRequest(
                service="orders", instance_id="c", action=cb.CIRCUIT_OVERRIDE_FORCE_OPEN
            )
        )
    await handles["d"].deregister()

    def usable(tier: str | None) -> set[str]:
        return {e.instance_id for e in projection.project("orders", tier).endpoints}

    await eventually(lambda: usable(None) == {"a", "b", "vip"})
    assert await _picks(hub, "orders", 12) == usable(None)
    free = (("x-tenant-id", "t1"), ("x-subscription-tier", "free"))
    assert usable("free") == {"a", "b"}
    assert await _picks(hub, "orders", 12, free) == usable("free")
    assert projection.services("free") == ["orders"]
    with pytest.raises(grpc.aio.AioRpcError):
        await _picks(hub, "missing", 1)
    assert not projection.project("missing", None).visible
