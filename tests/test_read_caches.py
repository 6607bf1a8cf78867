"""The read-path caches (GetService answers, pick candidates, alert conditions,
health-probe scheduling) and what drops them, without etcd: the views' mirrors
are fed events as their watches would feed them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aitrading.hub.v1 import registry_pb2, types_pb2

from hub_client import Strategy
from hub_server.api.registry import RegistryServicer
from hub_server.balancing.projection import EndpointProjection
from hub_server.balancing.service import Picker
from hub_server.circuits.breaker import Circuit
from hub_server.circuits.service import Circuits, circuit_key
from hub_server.health.service import (
    HEALTHY,
    STARTING,
    UNHEALTHY,
    HealthMonitor,
    HealthView,
    ProbeResult,
)
from hub_server.observability.alerts import Alerts
from hub_server.registry.service import Registry, RegistryView, StoredInstance, on_service_change
from hub_server.store import keys
from hub_server.store.etcd import Event, KeyValue
from hub_server.store.mirror import PrefixMirror

NO_STORE: Any = None  # nothing here reaches etcd


class Feed:
    """Writes and deletes keys in mirrors, one revision each."""

    def __init__(self, *mirrors: PrefixMirror[Any]) -> None:
        self.revision = 1
        for m in mirrors:
            m.live = True

    async def put(self, mirror: PrefixMirror[Any], key: bytes, value: bytes) -> None:
        self.revision += 1
        version = 2 if key in mirror.items else 1
        kv = KeyValue(key, value, self.revision, self.revision, version, 7)
        await mirror._apply([Event("put", kv, None)], self.revision)

    async def health(self, view: HealthView, service: str, instance_id: str, status: int) -> None:
        record = types_pb2.InstanceHealth(
            service=service, instance_id=instance_id, status=status, check="tcp"
        )
        await self.put(
            view.mirror, keys.health_key(service, instance_id), record.SerializeToString()
        )

    async def delete(self, mirror: PrefixMirror[Any], key: bytes) -> None:
        self.revision += 1
        kv = KeyValue(key, b"", 0, self.revision, 0, 0)
        await mirror._apply([Event("delete", kv, None)], self.revision)


def instance(check: str = "") -> bytes:
    inst = types_pb2.Instance(host="10.0.0.1", port=8000, weight=100)
    if check == "tcp":
        inst.health_check.tcp.SetInParent()
    return inst.SerializeToString()


async def registry_with(*names: tuple[str, str]) -> tuple[RegistryView, HealthView, Feed]:
    view, health_view = RegistryView(NO_STORE), HealthView(NO_STORE)
    feed = Feed(view.mirror, health_view.mirror)
    for service, instance_id in names:
        await feed.put(view.mirror, keys.instance_key(service, instance_id), instance())
    return view, health_view, feed


async def test_on_service_change_names_the_service_of_each_key() -> None:
    view, health_view, feed = await registry_with()
    seen: list[str] = []
    on_service_change(view.mirror, seen.append)
    on_service_change(health_view.mirror, seen.append)
    await feed.put(view.mirror, keys.instance_key("quotes", "i1"), instance())
    await feed.health(health_view, "feeds", "i2", 1)
    await feed.delete(view.mirror, keys.instance_key("quotes", "i1"))
    assert seen == ["quotes", "feeds", "quotes"]


async def test_health_view_indexes_records_and_defaults_the_rest() -> None:
    view, health_view, feed = await registry_with(("quotes", "lease-only"))
    await feed.put(view.mirror, keys.instance_key("quotes", "probed"), instance("tcp"))
    lease_only = view.get_instance("quotes", "lease-only")
    probed = view.get_instance("quotes", "probed")
    assert lease_only is not None and probed is not None
    assert (health_view.of(lease_only).status, health_view.of(lease_only).check) == (
        HEALTHY,
        "lease",
    )
    # Declared a check, not yet proven: STARTING until its first probe decides.
    assert health_view.of(probed).status == STARTING
    await feed.health(health_view, "quotes", "probed", UNHEALTHY)
    assert health_view.of(probed).status == UNHEALTHY
    assert health_view.get("quotes", "probed") is not None
    await feed.delete(health_view.mirror, keys.health_key("quotes", "probed"))
    assert health_view.get("quotes", "probed") is None
    assert health_view.of(probed).status == STARTING


async def test_get_service_answers_are_cached_per_service_and_dropped_by_its_changes() -> None:
    names = [("quotes", "i1"), ("quotes", "i2"), ("feeds", "f1")]
    view, health_view, feed = await registry_with(*names)
    drained: set[tuple[str, str]] = set()
    servicer = RegistryServicer(
        Registry(NO_STORE, view),
        health_view,
        "hub-test",
        is_draining=lambda s, i: (s, i) in drained,
    )

    async def get(service: str, **kw: Any) -> registry_pb2.GetServiceResponse:
        request = registry_pb2.GetServiceRequest(service=service, **kw)
        return await servicer.GetService(request, None)  # type: ignore[no-any-return]

    first = await get("quotes")
    assert [i.instance_id for i in first.service.instances] == ["i1", "i2"]
    assert first.header.revision == view.revision
    assert await get("quotes") is first  # served again as built

    # Another service's change leaves it cached, and the header follows the view.
    await feed.put(view.mirror, keys.instance_key("feeds", "f2"), instance())
    again = await get("quotes")
    assert again is first and again.header.revision == view.revision
    assert await get("quotes", include_unhealthy=True) is not first  # its own entry

    # Its own health change drops it: i1 unhealthy is no longer offered.
    await feed.health(health_view, "quotes", "i1", UNHEALTHY)
    after = await get("quotes")
    assert [i.instance_id for i in after.service.instances] == ["i2"]
    everything = await get("quotes", include_unhealthy=True)
    assert [(i.instance_id, i.health.status) for i in everything.service.instances] == [
        ("i1", UNHEALTHY),
        ("i2", HEALTHY),
    ]

    # Its own registry change too.
    await feed.put(view.mirror, keys.instance_key("quotes", "i3"), instance())
    assert [i.instance_id for i in (await get("quotes")).service.instances] == ["i2", "i3"]

    # A drain mark (no change feed of its own) is noticed on the next call.
    drained.add(("quotes", "i3"))
    flags = [(i.instance_id, i.draining) for i in (await get("quotes")).service.instances]
    assert flags == [("i2", False), ("i3", True)]


async def test_get_service_checks_drain_marks_only_while_something_drains() -> None:
    view, health_view, _ = await registry_with(("quotes", "i1"), ("quotes", "i2"))
    drained: set[tuple[str, str]] = set()
    asked: list[str] = []

    def is_draining(service: str, instance_id: str) -> bool:
        asked.append(instance_id)
        return (service, instance_id) in drained

    servicer = RegistryServicer(
        Registry(NO_STORE, view),
        health_view,
        "hub-test",
        is_draining=is_draining,
        draining_any=lambda: bool(drained),
    )
    request = registry_pb2.GetServiceRequest(service="quotes")
    first = await servicer.GetService(request, None)
    asked.clear()
    assert await servicer.GetService(request, None) is first
    assert asked == []  # nothing drains anywhere: no instance asked about

    drained.add(("quotes", "i2"))
    marked = await servicer.GetService(request, None)
    assert [(i.instance_id, i.draining) for i in marked.service.instances] == [
        ("i1", False),
        ("i2", True),
    ]
    # The mark is lifted: the answer that carries it is rebuilt without it.
    drained.clear()
    lifted = await servicer.GetService(request, None)
    assert [i.draining for i in lifted.service.instances] == [False, False]


async def test_get_service_answers_are_sent_serialized_once_per_header_revision() -> None:
    view, health_view, feed = await registry_with(("quotes", "i1"), ("quotes", "i2"))
    servicer = RegistryServicer(Registry(NO_STORE, view), health_view, "hub-test")
    serialize = servicer.serialize_answer
    request = registry_pb2.GetServiceRequest(service="quotes")

    first = await servicer.GetService(request, None)
    sent = serialize(first)
    assert sent == first.SerializeToString()
    assert serialize(first) is sent  # the same revision: not serialized again

    # Another service's change moves the header's revision: the bytes follow it.
    await feed.put(view.mirror, keys.instance_key("feeds", "f1"), instance())
    again = await servicer.GetService(request, None)
    assert again is first
    resent = serialize(again)
    assert registry_pb2.GetServiceResponse.FromString(resent).header.revision == view.revision
    assert resent == again.SerializeToString() != sent

    # Its own change drops the answer: the old message is no longer served from
    # the cache, and the new one is sent as it is now.
    await feed.put(view.mirror, keys.instance_key("quotes", "i3"), instance())
    assert serialize(first) == first.SerializeToString()
    rebuilt = await servicer.GetService(request, None)
    assert rebuilt is not first
    parsed = registry_pb2.GetServiceResponse.FromString(serialize(rebuilt))
    assert [i.instance_id for i in parsed.service.instances] == ["i1", "i2", "i3"]
    # Any other message of the type is serialized as usual.
    other = registry_pb2.GetServiceResponse(service=types_pb2.Service(name="x"))
    assert serialize(other) == other.SerializeToString()


async def test_picker_rebuilds_candidates_of_the_changed_service_only() -> None:
    view, health_view, feed = await registry_with(("quotes", "i1"), ("feeds", "f1"))
    circuits = Circuits(NO_STORE)
    drains: PrefixMirror[str] = PrefixMirror(NO_STORE, keys.DRAIN, lambda kv: kv.value.decode())
    projection = EndpointProjection(NO_STORE, view, health_view, circuits, drains=drains)
    picker = Picker(NO_STORE, view, circuits, projection)
    Feed(picker.loads, circuits.mirror, drains)

    def candidates(service: str) -> list[Any]:
        return projection.candidates(service)

    quotes, feeds = candidates("quotes"), candidates("feeds")
    await feed.put(picker.loads, keys.load_key("feeds", "f1"), b"0.5")
    assert candidates("quotes") is quotes
    assert candidates("feeds") is not feeds and candidates("feeds")[0].load == 0.5

    await feed.put(view.mirror, keys.instance_key("quotes", "i2"), instance())
    assert [c.instance_id for c in candidates("quotes")] == ["i1", "i2"]

    await feed.put(drains, keys.drain_key("quotes", "i1"), b"dep-1")
    assert [c.draining for c in candidates("quotes")] == [True, False]
    chosen, stored, _ = picker.pick("quotes", Strategy.LEAST_LOAD, affinity_key="", tier=None)
    assert chosen == "i2"  # the only one not draining
    assert stored.instance("quotes", "i2") == view.get_instance("quotes", "i2")

    circuit = Circuit(now=1.0)
    circuit.force_open(1.0)
    value = json.dumps(circuit.to_dict()).encode()
    await feed.put(circuits.mirror, circuit_key("quotes", "i2"), value)
    assert [c.circuit_open for c in candidates("quotes")] == [False, True]


async def test_alerts_recompute_only_services_that_changed() -> None:
    view, health_view, feed = await registry_with(("quotes", "i1"), ("feeds", "f1"))
    alerts = Alerts(NO_STORE, view, health_view, Circuits(NO_STORE))
    asked: list[str] = []
    status = health_view.status

    def counting_status(service: str, instance_id: str, stored: StoredInstance) -> int:
        asked.append(service)
        return status(service, instance_id, stored)

    health_view.status = counting_status  # type: ignore[method-assign]

    assert alerts.conditions() == []
    assert sorted(asked) == ["feeds", "quotes"]  # the first round looks at everything
    asked.clear()
    assert alerts.conditions() == [] and asked == []

    await feed.health(health_view, "quotes", "i1", UNHEALTHY)
    assert [c.id for c in alerts.conditions()] == [
        "INSTANCE_DOWN:quotes:i1:",
        "SERVICE_DOWN:quotes::",
    ]
    assert asked == ["quotes"]
    asked.clear()
    assert len(alerts.conditions()) == 2 and asked == []

    await feed.delete(view.mirror, keys.instance_key("quotes", "i1"))
    assert alerts.conditions() == []


async def test_health_monitor_schedules_from_registry_changes() -> None:
    view, health_view, feed = await registry_with(("quotes", "lease-only"))
    await feed.put(view.mirror, keys.instance_key("quotes", "old"), instance("tcp"))
    probed: list[str] = []

    async def probe(inst: types_pb2.Instance, timeout: float) -> ProbeResult:
        probed.append(inst.instance_id)
        return ProbeResult(True, 1.0)

    monitor = HealthMonitor(NO_STORE, view, health_view, probe)
    task = asyncio.create_task(monitor.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0.01)
            if probed:
                break
        assert probed == ["old"]  # loaded before the monitor listened; never the lease-only
        await feed.put(view.mirror, keys.instance_key("quotes", "new"), instance("tcp"))
        await feed.delete(view.mirror, keys.instance_key("quotes", "old"))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if "new" in probed:
                break
        assert probed == ["old", "new"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
