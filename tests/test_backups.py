"""BackupService against a real etcd: backup → wipe → restore, dry runs, refused
files, the schedule and its retention."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aitrading.hub.v1 import circuit_pb2, observability_pb2_grpc
from aitrading.hub.v1 import observability_pb2 as obs

from hub_client import FailedPrecondition, HubClient, InvalidArgument, NotFound, RestoreReport
from hub_server.backups import service as backups
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore
from tests.support.hubs import HubFactory
from tests.support.keyspace import plain_keys
from tests.support.waiting import eventually


async def _wipe(store: EtcdStore) -> None:
    for key in await plain_keys(store):
        await store.delete(key)


async def _populate(client: HubClient, etcd_store: EtcdStore) -> None:
    await client.set_config_layer("global", {"features": {"flags": {"x": True}}})
    await client.set_config_layer("global", {"settings": {"limit": 6}})
    await client.create_tenant("acme", tier="pro", display_name="Acme")
    await client.create_tenant("beta", tier="free")
    await client.set_config_layer("tenant/acme", {"settings": {"limit": 9}})
    await client.with_context(tenant_id="acme").allocate("websocket_connections", 3)
    await client.circuit_stub.SetCircuitSettings(
        circuit_pb2.SetCircuitSettingsRequest(
            service="pricing", settings=circuit_pb2.CircuitSettings(minimum_calls=7)
        )
    )
    # An alert in the history, as the alert engine would leave it.
    # (A current time stamp: the alert engine prunes old history.)
    await etcd_store.put(keys.ALERTS_HISTORY + b"%020d-test" % time.time_ns(), b"alert")


@pytest.fixture
async def backup_hub(hub_factory: HubFactory, tmp_path: Path):  # type: ignore[no-untyped-def]
    return await hub_factory(backup_dir=tmp_path / "backups")


@pytest.fixture
async def bclient(backup_hub):  # type: ignore[no-untyped-def]
    async with HubClient(backup_hub.address) as c:
        yield c


async def test_backup_wipe_restore_round_trip(bclient: HubClient, etcd_store: EtcdStore) -> None:
    await _populate(bclient, etcd_store)
    reg = await bclient.register("pricing", host="127.0.0.1", port=9001, ttl=30)
    original = await plain_keys(etcd_store)
    kinds = {keys.kind_of(k) for k in original}
    assert {"config", "config-history", "tenants", "usage", "circuit-settings"} <= kinds
    assert {"alerts", "audit"} <= kinds

    data = await bclient.backup()
    assert isinstance(data, bytes) and data[:4] == b"CHUB"
    await reg.deregister()  # the instance goes away (its lease with it)
    await _wipe(etcd_store)
    await bclient.create_tenant("intruder")  # not in the backup

    before = await plain_keys(etcd_store)
    dry = await bclient.restore(data, dry_run=True)
    assert dry.dry_run and dry.transactions == 0
    assert await plain_keys(etcd_store) == before  # a dry run writes nothing
    assert dry.kinds["tenants"].added == 2 and dry.kinds["tenants"].removed == 1
    assert dry.kinds["config-history"].added >= 2
    assert dry.kinds["registry"].skipped_lease_bound == 1
    assert any("lease-bound" in n for n in dry.notes)

    report = await bclient.restore(data, dry_run=False)
    assert not report.dry_run and report.transactions >= 1
    assert report.total.added == dry.total.added
    assert report.kinds["registry"].skipped_lease_bound == 1
    assert any("not atomic" in n for n in report.notes)

    restored = await plain_keys(etcd_store)
    for key, value in original.items():
        if key.startswith(backups.NOT_EXPORTED):
            continue  # never in a backup (webhook secrets, the webhook leader's cursor)
        assert restored.get(key) == value, key
    extra = {backups.kind_of(k) for k in set(restored) - set(original)}
    # The restore's audit record, alerts, the webhook leader's cursor written again.
    assert extra <= {"audit", "alerts", "alerts/history", "webhook-cursor"}
    assert not any(k.startswith(keys.REGISTRY + b"pricing/") for k in restored)

    # The hub serves the restored state (its mirrors follow the writes).
    async def tenants_back() -> bool:
        return {t.tenant_id for t in await bclient.list_tenants()} == {"acme", "beta"}

    await eventually(tenants_back)
    assert (await bclient.config_layer("global")).values == {"settings": {"limit": 6}}
    assert [v.version for v in await bclient.config_versions("global")] == [2, 1]
    assert (await bclient.with_context(tenant_id="acme").usage())["websocket_connections"].used == 3

    # The apply is audited with its counts.
    records, _ = await etcd_store.get_prefix(keys.AUDIT)
    events = [obs.AuditEvent.FromString(kv.value) for kv in records]
    restore = [e for e in events if e.method.endswith("/RestoreBackup")]
    assert len(restore) == 1 and restore[0].outcome == "OK"
    assert restore[0].details["added"] == str(report.total.added)

    # Restoring again changes nothing but the audit trail.
    again = await bclient.restore(data, dry_run=True)
    changed = {k: c.changed for k, c in again.kinds.items() if c.changed}
    assert set(changed) <= {"alerts"}  # active alerts may come and go
    assert again.kinds["audit"].append_only and again.kinds["audit"].kept_records >= 1


async def test_live_instances_are_never_touched(bclient: HubClient, etcd_store: EtcdStore) -> None:
    data = await bclient.backup()  # no instance yet
    reg = await bclient.register("pricing", host="127.0.0.1", port=9001, ttl=30)
    report = await bclient.restore(data, dry_run=False)
    assert report.kinds["registry"].kept_live == 1
    assert report.kinds["registry"].removed == 0
    svc = await bclient.discover("pricing")
    assert [i.instance_id for i in svc.instances] == [reg.instance_id]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: d[: len(d) // 2], "BACKUP_TRUNCATED"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "BACKUP_CORRUPT"),
        (lambda d: b"PK\x03\x04" + d[4:], "BACKUP_NOT_RECOGNIZED"),
        (lambda d: b"just some text that is not a backup", "BACKUP_NOT_RECOGNIZED"),
    ],
)
async def test_bad_files_are_refused_and_state_is_intact(
    bclient: HubClient,
    etcd_store: EtcdStore,
    damage,
    reason: str,  # type: ignore[no-untyped-def]
) -> None:
    await _populate(bclient, etcd_store)
    data = await bclient.backup()
    await bclient.create_tenant("later", tier="free")
    before = await plain_keys(etcd_store)
    with pytest.raises(InvalidArgument) as e:
        await bclient.restore(damage(data), dry_run=False)
    assert e.value.reason == reason
    after = await plain_keys(etcd_store)
    # Only the refusal's audit record was added.
    assert {k: v for k, v in after.items() if not k.startswith(keys.AUDIT)} == {
        k: v for k, v in before.items() if not k.startswith(keys.AUDIT)
    }


async def test_unknown_format_version_is_failed_precondition(bclient: HubClient) -> None:
    data = bytearray(await bclient.backup())
    data[4:6] = (2).to_bytes(2, "big")
    with pytest.raises(FailedPrecondition) as e:
        await bclient.restore(bytes(data))
    assert e.value.reason == "BACKUP_VERSION_UNSUPPORTED"


async def test_stored_backups_list_restore_delete(
    bclient: HubClient, etcd_store: EtcdStore, tmp_path: Path
) -> None:
    await _populate(bclient, etcd_store)
    info = await bclient.store_backup()
    assert info.name.startswith("manual-") and info.size_bytes > 0
    path = await bclient.backup(tmp_path / "copy.chub", store=True)
    assert isinstance(path, Path) and path.read_bytes()[:4] == b"CHUB"
    listed = await bclient.list_backups()
    assert len(listed) == 2 and listed[0].created_at >= listed[1].created_at
    assert {b.name for b in listed} >= {info.name}
    assert all(b.key_count > 0 and len(b.sha256) == 64 for b in listed)
    assert (tmp_path / "backups" / info.name).stat().st_size == info.size_bytes

    await _wipe(etcd_store)
    report = await bclient.restore(stored=info.name, dry_run=False)
    assert isinstance(report, RestoreReport) and report.kinds["tenants"].added == 2
    assert report.backup.revision == info.revision

    await bclient.delete_backup(info.name)
    assert info.name not in {b.name for b in await bclient.list_backups()}
    with pytest.raises(NotFound):
        await bclient.delete_backup(info.name)
    with pytest.raises(InvalidArgument):
        await bclient.delete_backup("../../etc/passwd")


async def test_no_backup_directory(hub_factory: HubFactory) -> None:
    hub = await hub_factory()  # external etcd, no --backup-dir
    async with HubClient(hub.address) as c:
        assert await c.list_backups() == []
        with pytest.raises(FailedPrecondition) as e:
            await c.store_backup()
        assert e.value.reason == "BACKUP_DIRECTORY_UNSET"
        assert (await c.backup())[:4] == b"CHUB"  # streaming needs no directory
    with pytest.raises(ValueError):
        await hub_factory(backup_interval=1.0)


async def test_schedule_writes_and_keeps_newest(hub_factory: HubFactory, tmp_path: Path) -> None:
    directory = tmp_path / "sched"
    hub = await hub_factory(backup_dir=directory, backup_interval=0.2, backup_keep=2)
    async with HubClient(hub.address) as c:
        manual = await c.store_backup()
        seen: set[str] = set()

        async def several() -> bool:
            seen.update(b.name for b in await c.list_backups() if b.scheduled)
            return len(seen) >= 5

        await eventually(several, timeout=15)
        listed = await c.list_backups()
        scheduled = [b for b in listed if b.scheduled]
        assert 1 <= len(scheduled) <= 2
        assert manual.name in {b.name for b in listed}  # retention spares manual files
        names = sorted(p.name for p in directory.iterdir() if p.name.startswith("scheduled-"))
        assert len(names) <= 2 and not any(p.name.endswith(".tmp") for p in directory.iterdir())


async def test_large_keyspace_timing(
    bclient: HubClient, etcd_store: EtcdStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """10,000 keys: 5,000 tenants (mirrored by the hub) and 5,000 config versions."""
    import json

    from hub_server.store.etcd import Txn

    n = 5_000
    tenant = json.dumps({"display_name": "T" * 40, "tier": "pro", "created_at": 1.0}).encode()
    ops = [(keys.tenant_key(f"t{i:05d}"), tenant) for i in range(n)]
    ops += [(keys.config_history_key("global", i + 1), b"v" * 200) for i in range(n)]
    for start in range(0, len(ops), 128):
        txn = Txn()
        txn.success.extend(Txn.put(k, v) for k, v in ops[start : start + 128])
        await etcd_store.txn(txn)
    t0 = time.perf_counter()
    data = await bclient.backup()
    t1 = time.perf_counter()
    await etcd_store.delete(keys.TENANTS, prefix=True)
    await etcd_store.delete(keys.CONFIG_HISTORY, prefix=True)
    t2 = time.perf_counter()
    report = await bclient.restore(data, dry_run=False)
    t3 = time.perf_counter()
    assert report.kinds["tenants"].added == n and report.kinds["config-history"].added >= n

    async def all_listed() -> bool:
        return len(await bclient.list_tenants()) == n

    await eventually(all_listed)
    t4 = time.perf_counter()
    with capsys.disabled():
        print(
            f"\n{2 * n} keys, {len(data)} bytes: backup {t1 - t0:.3f}s, "
            f"restore {t3 - t2:.3f}s in {report.transactions} txns, "
            f"hub view current after {t4 - t2:.3f}s"
        )


async def test_restore_into_a_fresh_etcd(
    bclient: HubClient, etcd_store: EtcdStore, hub_factory: HubFactory, tmp_path: Path
) -> None:
    """Disaster recovery: a new etcd, a new hub, the old hub's backup."""
    import asyncio

    from hub_server.embedded_etcd import EtcdProcess

    await _populate(bclient, etcd_store)
    await bclient.register("pricing", host="127.0.0.1", port=9001, ttl=30)
    data = await bclient.backup()
    original = await plain_keys(etcd_store)

    fresh = EtcdProcess(tmp_path / "fresh-etcd")
    await asyncio.to_thread(fresh.start)
    try:
        hub = await hub_factory(endpoints=[fresh.endpoint])
        new_store = EtcdStore([fresh.endpoint])
        try:
            async with HubClient(hub.address) as c:
                report = await c.restore(data, dry_run=False)
                assert report.kinds["registry"].skipped_lease_bound == 1
                restored = await plain_keys(new_store)
                for key, value in original.items():
                    if key.startswith((keys.CONFIG + b"tier/", keys.CONFIG_HISTORY + b"tier/")):
                        continue  # seeded by the new hub at start: the same values, kept
                    if key.startswith(backups.NOT_EXPORTED):
                        continue  # never in a backup
                    assert restored.get(key) == value, key
                assert report.kinds["config"].updated == 0
                assert (await c.get_tenant("acme")).tier == "pro"
                assert not (await new_store.get_prefix(keys.REGISTRY))[0]
        finally:
            await new_store.close()
            await hub.stop()
    finally:
        await asyncio.to_thread(fresh.stop)


async def _audit_ids(client: HubClient) -> dict[str, str]:
    """Every audit record's id and method, through ObservabilityService."""
    out: dict[str, str] = {}
    token = ""
    stub = observability_pb2_grpc.ObservabilityServiceStub(client.channel)
    while True:
        resp = await stub.ListAuditEvents(
            obs.ListAuditEventsRequest(page_size=500, page_token=token)
        )
        out.update({e.id: e.method for e in resp.events})
        token = resp.next_page_token
        if not token:
            return out


async def test_a_restore_keeps_the_audit_trail_written_after_the_backup(
    bclient: HubClient, etcd_store: EtcdStore
) -> None:
    """Issue 14 item 2: the records of the calls being reverted (and of refused
    restores) were deleted by the restore."""
    await _populate(bclient, etcd_store)
    data = await bclient.backup()
    await bclient.create_tenant("later", tier="free")
    await bclient.set_config_layer("global", {"settings": {"limit": 99}})
    with pytest.raises(InvalidArgument):
        await bclient.restore(data[: len(data) // 2], dry_run=False)  # refused, audited
    alert = keys.ALERTS_HISTORY + b"%020d-later" % time.time_ns()
    await etcd_store.put(alert, b"alert after the backup")
    before = await _audit_ids(bclient)
    methods = set(before.values())
    assert {m.rsplit("/", 1)[1] for m in methods} >= {
        "CreateTenant",
        "SetConfigLayer",
        "RestoreBackup",
    }

    dry = await bclient.restore(data, dry_run=True)
    assert dry.kinds["audit"].append_only and dry.kinds["audit"].removed == 0
    assert dry.kinds["audit"].kept_records >= 3
    assert dry.kinds["alerts/history"].append_only
    assert dry.kinds["alerts/history"].kept_records == 1
    assert dry.kinds["config-history"].append_only and dry.kinds["config-history"].removed == 0
    assert dry.kinds["config-history"].kept_records >= 1  # the version written since
    assert not dry.kinds["tenants"].append_only and dry.kinds["tenants"].removed == 1
    assert dry.total.kept_records == sum(c.kept_records for c in dry.kinds.values())
    assert any("append-only" in n for n in dry.notes)

    report = await bclient.restore(data, dry_run=False)
    assert report.kinds["audit"].kept_records == dry.kinds["audit"].kept_records
    after = await _audit_ids(bclient)
    assert set(before) <= set(after)  # not one record lost
    new = [m for i, m in after.items() if i not in before]
    assert new == ["/aitrading.hub.v1.BackupService/RestoreBackup"]  # the restore itself
    assert (await etcd_store.get(alert))[0] is not None


async def test_config_versions_are_never_reused_after_a_restore(
    bclient: HubClient, etcd_store: EtcdStore
) -> None:
    """Issue 14 item 2: the first write after a restore reused a version number."""
    await bclient.set_config_layer("global", {"settings": {"limit": 1}})
    await bclient.set_config_layer("global", {"settings": {"limit": 2}})
    data = await bclient.backup()  # global at version 2
    await bclient.set_config_layer("global", {"settings": {"limit": 3}})
    await bclient.set_config_layer("tenant/acme", {"settings": {"limit": 30}})  # not in it

    dry = await bclient.restore(data, dry_run=True)
    assert dry.kinds["config"].updated == 2 and dry.kinds["config"].removed == 0
    assert dry.kinds["config-history"].added == 2  # the two new versions
    report = await bclient.restore(data, dry_run=False)
    assert report.kinds["config"].updated == 2

    async def restored() -> bool:
        return (await bclient.config_layer("global")).version == 4

    await eventually(restored)
    layer = await bclient.config_layer("global")
    assert layer.values == {"settings": {"limit": 2}} and layer.restored_version == 2
    assert "version 2" in layer.comment
    tenant = await bclient.config_layer("tenant/acme")
    assert (tenant.version, tenant.values, tenant.restored_version) == (2, {}, 0)

    after = await bclient.set_config_layer("global", {"settings": {"limit": 5}})
    assert after.version == 5
    history = await bclient.config_versions("global")
    assert [v.version for v in history] == [5, 4, 3, 2, 1]
    contents = {v.version: v.values["settings"]["limit"] for v in history}
    assert contents == {1: 1, 2: 2, 3: 3, 4: 2, 5: 5}  # one content per number
    assert [v.restored_version for v in history] == [0, 2, 0, 0, 0]
    assert [v.version for v in await bclient.config_versions("tenant/acme")] == [2, 1]
