"""The registry's view keeps instances as etcd stores them and decodes them on
read (issue 18): what a read decodes must be what decoding the whole message
gives, and the facts kept per instance (tiers, check kind) what the message says."""

from __future__ import annotations

import logging

import pytest
from aitrading.hub.v1 import types_pb2
from google.protobuf import duration_pb2

from hub_server.registry.service import (
    ServiceInstances,
    StoredInstance,
    check_kind,
    store_instance,
    tier_names,
    visible,
)
from hub_server.store import keys
from hub_server.store.etcd import KeyValue

PRO = types_pb2.SUBSCRIPTION_TIER_PRO
ENTERPRISE = types_pb2.SUBSCRIPTION_TIER_ENTERPRISE

CASES = [
    types_pb2.Instance(host="10.0.0.1", port=80, metadata={"zone": "z1", "build": "b"}),
    types_pb2.Instance(host="h", port=1, subscription_requirements=[PRO, ENTERPRISE]),
    types_pb2.Instance(
        host="h", port=1, health_check=types_pb2.HealthCheck(tcp=types_pb2.TcpCheck())
    ),
    types_pb2.Instance(
        host="h",
        port=1,
        subscription_requirements=[ENTERPRISE],
        health_check=types_pb2.HealthCheck(http=types_pb2.HttpCheck(path="/healthz")),
    ),
    # A check with no kind: checked by its lease, as check_kind says.
    types_pb2.Instance(host="h", port=1, health_check=types_pb2.HealthCheck()),
]


def _kv(inst: types_pb2.Instance, *, create: int = 7, mod: int = 9, lease: int = 0x42) -> KeyValue:
    key = keys.instance_key("quotes", "i1")
    return KeyValue(key, inst.SerializeToString(), create, mod, 1, lease)


@pytest.mark.parametrize("inst", CASES)
def test_a_read_decodes_what_was_stored_with_what_etcd_knows(inst: types_pb2.Instance) -> None:
    stored = store_instance(_kv(inst))
    got = stored.instance("quotes", "i1")
    want = types_pb2.Instance()
    want.CopyFrom(inst)
    want.service, want.instance_id = "quotes", "i1"
    want.create_revision, want.mod_revision, want.lease_id = 7, 9, 0x42
    assert got == want
    got.host = "changed"  # each read is the caller's own message
    assert stored.instance("quotes", "i1").host == inst.host


@pytest.mark.parametrize("inst", CASES)
def test_kept_facts_are_the_messages(inst: types_pb2.Instance) -> None:
    stored = store_instance(_kv(inst))
    assert stored.tiers == tier_names(inst)
    assert stored.check == check_kind(inst)
    for tier in (None, "free", "pro", "enterprise"):
        assert visible(stored, tier) == visible(inst, tier)


def test_facts_are_shared_between_instances() -> None:
    a = store_instance(_kv(CASES[1]))
    b = store_instance(_kv(CASES[1], mod=11))
    assert a.tiers is b.tiers


def test_a_bad_stored_value_is_repaired_and_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Written before requests were checked: a Duration with nanos past a second.
    bad = types_pb2.Instance(
        host="h",
        port=1,
        health_check=types_pb2.HealthCheck(
            tcp=types_pb2.TcpCheck(), interval=duration_pb2.Duration(seconds=1, nanos=1_500_000_000)
        ),
    )
    stored = store_instance(_kv(bad))
    with caplog.at_level(logging.WARNING, logger="hub_server.registry.service"):
        first = stored.instance("quotes", "i1")
        second = stored.instance("quotes", "i1")
    assert first.health_check.interval == duration_pb2.Duration(seconds=2, nanos=500_000_000)
    assert first == second
    assert sum("repaired" in r.getMessage() for r in caplog.records) == 1


def test_service_instances_reads_as_a_mapping_of_decoded_instances() -> None:
    instances = ServiceInstances("quotes")
    for instance_id, inst in (("b", CASES[1]), ("a", CASES[0])):
        instances.stored[instance_id] = StoredInstance(inst.SerializeToString(), 3, 3, 0)
    assert len(instances) == 2 and "a" in instances and "z" not in instances
    assert sorted(instances) == ["a", "b"]
    assert instances["a"].host == "10.0.0.1" and instances["a"].instance_id == "a"
    assert instances.get("z") is None
    assert [i.instance_id for i in instances.visible(None)] == ["a", "b"]
    assert [i.instance_id for i in instances.visible("free")] == ["a"]
    assert instances.any_visible("enterprise")
