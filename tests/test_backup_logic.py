"""The backup file format and restore planning, without etcd."""

from __future__ import annotations

import hashlib
import struct
import zlib

import pytest
from aitrading.hub.v1 import backup_pb2

from hub_server.backups import service as backups
from hub_server.backups.service import Record, batches, decode, encode, parse_header, plan_restore
from hub_server.config.merge import StoredLayer, empty_layer, parse_values
from hub_server.kernel.errors import FailedPrecondition, InvalidArgument
from hub_server.store.etcd import KeyValue

R = b"/hub/v1/"
RECORDS = [
    Record(R + b"config/global", b'{"a": 1}'),
    Record(R + b"config-history/global/000000000001", b"v1"),
    Record(R + b"registry/svc/i1", b"instance", lease_bound=True),
    Record(R + b"tenants/acme", b"\x00\xffbinary"),
]


def _file(records: list[Record] = RECORDS) -> bytes:
    return encode(records, revision=42, hub_id="hub-a", created_at=1_700_000_000.5)


def _reason(exc: pytest.ExceptionInfo[BaseException]) -> str:
    return exc.value.reason  # type: ignore[attr-defined, no-any-return]


def test_round_trip() -> None:
    data = _file()
    assert data[:4] == b"CHUB"
    parsed = decode(data)
    assert parsed.records == RECORDS
    h = parsed.header
    assert (h.revision, h.hub_id, h.key_count, h.lease_bound_count) == (42, "hub-a", 4, 1)
    assert h.format_version == backups.FORMAT_VERSION
    assert h.keyspace_root == R
    assert h.created_at.ToNanoseconds() == 1_700_000_000_500_000_000
    assert parsed.size == len(data)


def test_empty_keyspace_round_trip() -> None:
    parsed = decode(_file([]))
    assert parsed.records == [] and parsed.header.key_count == 0


def test_body_is_readable_with_plain_protobuf() -> None:
    """Another language needs only the documented layout and backup.proto."""
    data = _file()
    magic, version, n = struct.unpack(">4sHI", data[:10])
    assert (magic, version) == (b"CHUB", 1)
    header = backup_pb2.BackupHeader.FromString(data[10 : 10 + n])
    assert struct.unpack(">I", data[10 + n : 14 + n])[0] == zlib.crc32(data[10 : 10 + n])
    body = data[14 + n :]
    assert hashlib.sha256(body).digest() == header.body_sha256
    # First record: a one-byte varint length (records here are short), then the message.
    first = backup_pb2.BackupRecord.FromString(body[1 : 1 + body[0]])
    assert first.key == RECORDS[0].key


def test_header_alone_is_enough_for_listing() -> None:
    data = _file()
    header, start = parse_header(data[: 10 + 200])
    assert header.revision == 42 and start < len(data)


@pytest.mark.parametrize("cut", [0, 3, 9, 20, -1, -10])
def test_truncation_is_detected(cut: int) -> None:
    data = _file()
    with pytest.raises(InvalidArgument) as e:
        decode(data[:cut])
    assert _reason(e) in ("BACKUP_TRUNCATED", "BACKUP_NOT_RECOGNIZED")
    if cut < 0 or cut >= 9:
        assert _reason(e) == "BACKUP_TRUNCATED"


def test_a_flipped_body_byte_is_detected() -> None:
    data = bytearray(_file())
    data[-5] ^= 0x01
    with pytest.raises(InvalidArgument) as e:
        decode(bytes(data))
    assert _reason(e) == "BACKUP_CORRUPT"
    assert "SHA-256" in str(e.value)


def test_a_flipped_header_byte_is_detected() -> None:
    data = bytearray(_file())
    data[14] ^= 0x01  # inside the header
    with pytest.raises(InvalidArgument) as e:
        decode(bytes(data))
    assert _reason(e) == "BACKUP_CORRUPT"


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(InvalidArgument) as e:
        decode(_file() + b"x")
    assert _reason(e) == "BACKUP_CORRUPT"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"PK\x03\x04 a zip file, not a backup at all",
        b"\x53\x51\x4c\x69\x74\x65 format 3\x00",
        b"hello world, this is plainly text of some length",
    ],
)
def test_foreign_files_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidArgument) as e:
        decode(data)
    assert _reason(e) in ("BACKUP_NOT_RECOGNIZED", "BACKUP_TRUNCATED")


def test_unknown_version_is_a_failed_precondition() -> None:
    data = bytearray(_file())
    data[4:6] = struct.pack(">H", 99)
    with pytest.raises(FailedPrecondition) as e:
        decode(bytes(data))
    assert _reason(e) == "BACKUP_VERSION_UNSUPPORTED"


def test_another_keyspace_is_foreign() -> None:
    records = [Record(b"/other/app/x", b"1")]
    data = encode(records, revision=1, hub_id="h")
    with pytest.raises(InvalidArgument) as e:
        decode(data)
    assert _reason(e) == "BACKUP_FOREIGN"


def _kv(key: bytes, value: bytes, lease: int = 0) -> KeyValue:
    return KeyValue(key, value, 1, 1, 1, lease)


def test_plan_counts_per_kind_and_keeps_live_leases() -> None:
    backup = [
        Record(R + b"config/global", b"old"),  # updated
        Record(R + b"config/tier/free", b"same"),  # unchanged
        Record(R + b"tenants/acme", b"t"),  # added
        Record(R + b"registry/svc/dead", b"i", lease_bound=True),  # skipped
        Record(R + b"health/svc/live", b"h"),  # live-leased now: kept
    ]
    current = [
        _kv(R + b"config/global", b"new"),
        _kv(R + b"config/tier/free", b"same"),
        _kv(R + b"tenants/zeta", b"z"),  # removed
        _kv(R + b"registry/svc/live", b"i", lease=7),  # live: kept
        _kv(R + b"health/svc/live", b"h2", lease=7),
    ]
    plan = plan_restore(backup, current)
    k = plan.kinds
    assert (k["config"].updated, k["config"].unchanged) == (1, 1)
    assert (k["tenants"].added, k["tenants"].removed) == (1, 1)
    assert (k["registry"].skipped_lease_bound, k["registry"].kept_live) == (1, 1)
    assert k["health"].kept_live == 1 and k["health"].updated == 0
    assert sorted(plan.puts) == [(R + b"config/global", b"old"), (R + b"tenants/acme", b"t")]
    assert plan.deletes == [R + b"tenants/zeta"]
    t = plan.total
    assert (t.added, t.updated, t.removed, t.unchanged) == (1, 1, 1, 1)


def test_plan_of_identical_state_is_empty() -> None:
    current = [_kv(r.key, r.value, 5 if r.lease_bound else 0) for r in RECORDS]
    plan = plan_restore(RECORDS, current)
    assert not plan.puts and not plan.deletes
    assert plan.total.unchanged == 3


def test_batches_respect_op_and_byte_limits() -> None:
    plan = plan_restore([Record(R + b"c/%05d" % i, b"v") for i in range(300)], [])
    sizes = [len(b.ops) for b in batches(plan)]
    assert sizes == [128, 128, 44]
    big = plan_restore([Record(R + b"c/%d" % i, b"x" * 400_000) for i in range(5)], [])
    assert [len(b.ops) for b in batches(big)] == [2, 2, 1]
    # Deletes go first, each op exactly once.
    mixed = plan_restore([Record(R + b"a", b"1")], [_kv(R + b"b", b"2")])
    assert [op for b in batches(mixed) for op in b.ops] == [(R + b"b", None), (R + b"a", b"1")]
    # Appends carry one compare each (still absent), and compares count as ops too.
    audit = plan_restore([Record(R + b"audit/%05d" % i, b"e") for i in range(200)], [])
    assert [(len(b.ops), len(b.expect)) for b in batches(audit)] == [(128, 128), (72, 72)]
    assert all(rev == 0 for b in batches(audit) for _, rev in b.expect)


def test_names() -> None:
    name = backups.backup_name(1_700_000_000.25, 9, scheduled=True)
    assert name == "scheduled-20231114T221320250Z-r9.chub"
    backups.check_name(name)
    for bad in ("../etc/passwd", "x.txt", "/abs.chub", "a/b.chub", ".hidden.chub"):
        with pytest.raises(InvalidArgument):
            backups.check_name(bad)


# -- append-only records and config versions ---------------------------------------

AUDIT = R + b"audit/"


def _layer(version: int, limit: int, *, restored: int = 0) -> bytes:
    values, _ = parse_values({"settings": {"limit": limit}})
    return StoredLayer("global", version, values, restored_version=restored).to_json()


def _hist(layer: str, version: int) -> bytes:
    return R + b"config-history/" + layer.encode() + b"/%012d" % version


@pytest.mark.parametrize(
    ("kind", "key"),
    [
        ("audit", AUDIT + b"00000000000000000001-h-1"),
        ("alerts/history", R + b"alerts/history/00000000000000000001-a1"),
        ("config-history", _hist("global", 1)),
    ],
)
def test_append_only_records_are_added_to_never_removed_or_overwritten(
    kind: str, key: bytes
) -> None:
    later = key[:-1] + b"9"
    plan = plan_restore(
        [Record(key, b"old"), Record(later, b"in backup only")],
        [_kv(key, b"newer"), _kv(key + b"-after", b"written after the backup")],
    )
    c = plan.kinds[kind]
    assert backups.is_append_only(kind)
    assert (c.added, c.updated, c.removed, c.unchanged, c.kept_records) == (1, 0, 0, 0, 2)
    assert plan.appends == [(later, b"in backup only")]
    assert not plan.puts and not plan.deletes and not plan.steps
    assert plan.total.kept_records == 2


@pytest.mark.parametrize(
    ("kind", "append_only"),
    [
        ("audit", True),
        ("alerts/history", True),
        ("config-history", True),
        ("alerts", False),
        ("config", False),
        ("tenants", False),
        ("usage", False),
        ("deployments", False),
        ("error-patterns", False),
    ],
)
def test_append_only_kinds(kind: str, append_only: bool) -> None:
    assert backups.is_append_only(kind) is append_only


def test_alert_history_is_a_kind_apart_from_active_alerts() -> None:
    assert backups.kind_of(R + b"alerts/history/0001-a") == "alerts/history"
    assert backups.kind_of(R + b"alerts/active/a") == "alerts"
    plan = plan_restore([], [_kv(R + b"alerts/active/a", b"x")])
    assert plan.kinds["alerts"].removed == 1 and plan.deletes == [R + b"alerts/active/a"]


def _step_docs(plan: backups.RestorePlan) -> list[tuple[bytes, StoredLayer]]:
    return [(k, StoredLayer.from_json("global", v or b"", 0)) for s in plan.steps for k, v in s.ops]


@pytest.mark.parametrize(
    ("backup", "current", "counts", "new_version", "restored"),
    [
        # Changed since the backup (v2 -> v3): the backup's v2 values become v4.
        (
            [(R + b"config/global", _layer(2, 6)), (_hist("global", 2), _layer(2, 6))],
            [
                (R + b"config/global", _layer(3, 7)),
                (_hist("global", 2), _layer(2, 6)),
                (_hist("global", 3), _layer(3, 7)),
            ],
            (0, 1, 0),
            4,
            2,
        ),
        # History above the current layer counts too (never reuse a number).
        (
            [(R + b"config/global", _layer(2, 6))],
            [(R + b"config/global", _layer(3, 7)), (_hist("global", 9), _layer(9, 1))],
            (0, 1, 0),
            10,
            2,
        ),
        # The backup's own history (added back) counts as well.
        (
            [(R + b"config/global", _layer(5, 6)), (_hist("global", 5), _layer(5, 6))],
            [(R + b"config/global", _layer(1, 7)), (_hist("global", 1), _layer(1, 7))],
            (0, 1, 0),
            6,
            5,
        ),
        # Absent from the backup: its defaults (empty) as a new version.
        (
            [],
            [(R + b"config/global", _layer(3, 7)), (_hist("global", 3), _layer(3, 7))],
            (0, 1, 0),
            4,
            0,
        ),
        # Absent now while history exists: added as a new version, not the old number.
        (
            [(R + b"config/global", _layer(2, 6))],
            [(_hist("global", 4), _layer(4, 7))],
            (1, 0, 0),
            5,
            2,
        ),
    ],
)
def test_a_restored_layer_is_a_new_version_above_every_existing_one(
    backup: list[tuple[bytes, bytes]],
    current: list[tuple[bytes, bytes]],
    counts: tuple[int, int, int],
    new_version: int,
    restored: int,
) -> None:
    plan = plan_restore(
        [Record(k, v) for k, v in backup],
        [_kv(k, v) for k, v in current],
        now=1234.5,
        by="ops",
        backup_revision=77,
    )
    c = plan.kinds["config"]
    assert (c.added, c.updated, c.removed) == counts
    assert not any(k.startswith(R + b"config/") for k in plan.deletes)
    assert not any(k.startswith(R + b"config/") for k, _ in plan.puts)
    (step,) = plan.steps
    (layer_key, doc), (history_key, same) = _step_docs(plan)
    assert (layer_key, history_key) == (R + b"config/global", _hist("global", new_version))
    assert doc == same and doc.version == new_version and doc.restored_version == restored
    assert (doc.updated_at, doc.updated_by) == (1234.5, "ops")
    assert "revision 77" in doc.comment
    # Applied only if the layer is still as read and the version still unused.
    now_rev = {k: 1 for k, _ in current}
    assert step.expect == (
        (R + b"config/global", now_rev.get(R + b"config/global", 0)),
        (_hist("global", new_version), 0),
    )
    assert plan.kinds["config-history"].added >= 1


def test_equal_layer_values_are_unchanged_whatever_the_version() -> None:
    plan = plan_restore(
        [Record(R + b"config/global", _layer(2, 6))], [_kv(R + b"config/global", _layer(5, 6))]
    )
    assert plan.kinds["config"].unchanged == 1 and not plan.steps and not plan.puts


def test_into_a_keyspace_without_the_layer_the_backup_document_is_put_as_is() -> None:
    """Disaster recovery into an empty etcd: no version exists, nothing to collide."""
    backup = [Record(R + b"config/global", _layer(2, 6)), Record(_hist("global", 2), _layer(2, 6))]
    plan = plan_restore(backup, [])
    assert plan.puts == [(R + b"config/global", _layer(2, 6))]
    assert plan.appends == [(_hist("global", 2), _layer(2, 6))]
    assert not plan.steps and plan.kinds["config"].added == 1


def test_a_tier_layer_absent_from_the_backup_goes_back_to_the_built_in_defaults() -> None:
    key = R + b"config/tier/pro"
    values, _ = parse_values({"settings": {"limit": 1}})
    now = StoredLayer("tier/pro", 3, values).to_json()
    plan = plan_restore([], [_kv(key, now)])
    (step,) = plan.steps
    doc = StoredLayer.from_json("tier/pro", step.ops[0][1] or b"", 0)
    assert doc.values == empty_layer("tier/pro").values and doc.version == 4
