"""Backups: a consistent export of the hub's keyspace at one etcd revision, as a
versioned, checksummed file, and its restore (dry run first).

The file layout is documented in protos/aitrading/hub/v1/backup.proto: a fixed
preamble ("CHUB", format version, header length), a BackupHeader with its CRC-32,
then one length-delimited BackupRecord per key; the header holds the body's
SHA-256, so a corrupt, truncated or foreign file is refused before anything is
written.

Keys bound to a lease (instances, their health and load, replicas, the
election, drain marks and directives) are exported flagged and never restored:
a restored instance that is not running would lie to the balancer. They come
back when their owners register again; keys bound to a live lease now are never
touched by a restore.

A restore is applied in etcd transactions of at most 128 operations (etcd's
default --max-txn-ops) and about 1 MiB (under its default request size limit),
so as a whole it is **not atomic**: a failure part-way leaves a mix of old and
restored keys. Restoring the same file again converges (the plan is computed
from the current state each time).

Records of what happened (audit trail, alert history, config history) are
append-only: a restore adds the backup's entries they lack and never removes or
overwrites one. A config layer is restored as a new version above every version
that ever existed (its history entry notes the version restored, as a
rollback's does), so a version number never names two contents.

Everything above ``Backups`` is pure (no I/O) and tested directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aitrading.hub.v1 import backup_pb2
from aitrading.hub.v1.errors_pb2 import (
    ERROR_REASON_BACKUP_CORRUPT,
    ERROR_REASON_BACKUP_DIRECTORY_UNSET,
    ERROR_REASON_BACKUP_FOREIGN,
    ERROR_REASON_BACKUP_NOT_FOUND,
    ERROR_REASON_BACKUP_NOT_RECOGNIZED,
    ERROR_REASON_BACKUP_TRUNCATED,
    ERROR_REASON_BACKUP_VERSION_UNSUPPORTED,
    ERROR_REASON_RESTORE_CONFLICT,
    ErrorReason,
)
from google.protobuf.internal import decoder, encoder

from hub_server.config.merge import StoredLayer, empty_layer, parse_layer
from hub_server.kernel.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    VersionConflict,
)
from hub_server.store import keys
from hub_server.store.etcd import MAX_TXN_BYTES, MAX_TXN_OPS, EtcdStore, KeyValue, Txn

log = logging.getLogger(__name__)

MAGIC = b"CHUB"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct(">4sHI")  # magic, format version, header length
_CRC = struct.Struct(">I")
MAX_HEADER = 64 * 1024
PAGE = 2000  # keys per range read of the export
SUFFIX = ".chub"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.chub")  # fullmatch

NOTE_LEASES = (
    "{n} lease-bound key(s) in the backup (registered instances, their health and "
    "load, hub replicas, the election, drain marks, directives) are not restored: "
    "they come back when their owners register again"
)
NOTE_ATOMIC = (
    "applied in {t} etcd transaction(s) of at most 128 operations: not atomic as a "
    "whole; if it fails part-way, restore the same file again"
)
NOTE_LIVE = "{n} key(s) bound to a live lease now were left untouched"
NOTE_RECORDS = (
    "{n} record(s) (audit, alert history, config history) not in the backup were kept: "
    "records are append-only and a restore never removes or overwrites one"
)
NOTE_VERSIONS = (
    "config layers are restored as new versions above every existing one "
    "(their history notes the version restored)"
)


def _rejected(reason: ErrorReason.ValueType, description: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation("backup", description)], reason=reason)


# -- the file format (pure) --------------------------------------------------


@dataclass(frozen=True)
class Record:
    key: bytes
    value: bytes
    lease_bound: bool = False


@dataclass(frozen=True)
class ParsedBackup:
    header: backup_pb2.BackupHeader
    records: list[Record]
    size: int


def encode(
    records: Iterable[Record], *, revision: int, hub_id: str, created_at: float | None = None
) -> bytes:
    """A backup file of ``records`` (in key order) read at ``revision``."""
    body = bytearray()
    count = leased = 0
    for r in records:
        msg = backup_pb2.BackupRecord(
            key=r.key, value=r.value, lease_bound=r.lease_bound
        ).SerializeToString()
        body += encoder._VarintBytes(len(msg))  # type: ignore[attr-defined]
        body += msg
        count += 1
        leased += r.lease_bound
    header = backup_pb2.BackupHeader(
        format_version=FORMAT_VERSION,
        hub_id=hub_id,
        revision=revision,
        keyspace_root=keys.ROOT,
        key_count=count,
        lease_bound_count=leased,
        body_length=len(body),
        body_sha256=hashlib.sha256(body).digest(),
    )
    header.created_at.FromNanoseconds(int((created_at or time.time()) * 1e9))
    h = header.SerializeToString()
    return b"".join(
        [_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(h)), h, _CRC.pack(zlib.crc32(h)), bytes(body)]
    )


def parse_header(data: bytes) -> tuple[backup_pb2.BackupHeader, int]:
    """The header of a backup file (its first bytes suffice) and where the body
    starts. Refuses foreign files, unknown versions and a damaged header."""
    if len(data) < _PREAMBLE.size:
        if MAGIC.startswith(data[:4]):
            raise _rejected(ERROR_REASON_BACKUP_TRUNCATED, "the file ends inside its preamble")
        raise _rejected(
            ERROR_REASON_BACKUP_NOT_RECOGNIZED, "not a Central Hub backup (no CHUB magic)"
        )
    magic, version, length = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise _rejected(
            ERROR_REASON_BACKUP_NOT_RECOGNIZED, "not a Central Hub backup (no CHUB magic)"
        )
    if version != FORMAT_VERSION:
        raise FailedPrecondition(
            f"backup format version {version} is not supported (this hub reads "
            f"version {FORMAT_VERSION})",
            reason=ERROR_REASON_BACKUP_VERSION_UNSUPPORTED,
            version=str(version),
        )
    if length > MAX_HEADER:
        raise _rejected(ERROR_REASON_BACKUP_CORRUPT, f"header length {length} is implausible")
    start = _PREAMBLE.size
    end = start + length + _CRC.size
    if len(data) < end:
        raise _rejected(ERROR_REASON_BACKUP_TRUNCATED, "the file ends inside its header")
    raw = data[start : start + length]
    (crc,) = _CRC.unpack_from(data, start + length)
    if zlib.crc32(raw) != crc:
        raise _rejected(ERROR_REASON_BACKUP_CORRUPT, "the header's CRC-32 does not match")
    header = backup_pb2.BackupHeader.FromString(raw)
    if header.keyspace_root != keys.ROOT:
        raise _rejected(
            ERROR_REASON_BACKUP_FOREIGN,
            f"the backup is of keyspace {header.keyspace_root!r}, this hub uses {keys.ROOT!r}",
        )
    return header, end


def decode(data: bytes) -> ParsedBackup:
    """Parses and verifies a whole backup file (magic, version, header CRC, body
    length and SHA-256, every record under the hub's keyspace)."""
    header, start = parse_header(data)
    body = memoryview(data)[start:]
    if len(body) < header.body_length:
        raise _rejected(
            ERROR_REASON_BACKUP_TRUNCATED,
            f"the body has {len(body)} of its {header.body_length} bytes",
        )
    if len(body) > header.body_length:
        raise _rejected(ERROR_REASON_BACKUP_CORRUPT, "there are bytes after the body")
    if hashlib.sha256(body).digest() != header.body_sha256:
        raise _rejected(ERROR_REASON_BACKUP_CORRUPT, "the body's SHA-256 does not match the header")
    records = []
    pos = 0
    try:
        while pos < len(body):
            length, pos = decoder._DecodeVarint(body, pos)  # type: ignore[attr-defined]
            if pos + length > len(body):
                raise ValueError("record runs past the body")
            m = backup_pb2.BackupRecord.FromString(bytes(body[pos : pos + length]))
            pos += length
            if not m.key.startswith(keys.ROOT):
                raise _rejected(
                    ERROR_REASON_BACKUP_FOREIGN, f"key {m.key[:80]!r} is outside {keys.ROOT!r}"
                )
            records.append(Record(m.key, m.value, m.lease_bound))
    except InvalidArgument:
        raise
    except Exception as e:  # a body that hashes right but does not parse
        raise _rejected(
            ERROR_REASON_BACKUP_CORRUPT, f"record {len(records)} does not parse: {e}"
        ) from e
    if len(records) != header.key_count:
        raise _rejected(
            ERROR_REASON_BACKUP_CORRUPT,
            f"{len(records)} records, the header says {header.key_count}",
        )
    return ParsedBackup(header, records, len(data))


# -- restore planning (pure) -------------------------------------------------

# Records of what happened are append-only evidence: a restore adds the entries
# the backup has and they lack, and never removes or overwrites one (the calls
# being reverted, the refused restores, the config versions written since).
APPEND_ONLY = {
    "audit": keys.AUDIT,
    "alerts/history": keys.ALERTS_HISTORY,
    "config-history": keys.CONFIG_HISTORY,
}


# Keys never written to a backup, and left as they are by a restore: webhook
# secrets (a backup file must not hold them in clear: a subscription restored
# where its secret is not has none, and its deliveries fail until it is
# rotated) and the webhook leader's cursor (etcd revisions of the cluster it
# was written in, meaningless in another).
NOT_EXPORTED = (keys.WEBHOOK_SECRETS, keys.WEBHOOK_CURSOR)


def kind_of(key: bytes) -> str:
    """The kind of a key in restore reports: its first path segment, except that
    alert history ("alerts/history", append-only) is apart from active alerts."""
    if key.startswith(keys.ALERTS_HISTORY):
        return "alerts/history"
    return keys.kind_of(key)


def is_append_only(kind: str) -> bool:
    return kind in APPEND_ONLY


@dataclass
class KindCounts:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped_lease_bound: int = 0
    kept_live: int = 0
    kept_records: int = 0

    def add(self, other: KindCounts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(frozen=True)
class Step:
    """Writes (value None: delete) applied in one transaction, and only if every
    ``expect``ed key is still at the mod revision the plan read (0: absent)."""

    ops: tuple[tuple[bytes, bytes | None], ...]
    expect: tuple[tuple[bytes, int], ...] = ()


@dataclass
class RestorePlan:
    kinds: dict[str, KindCounts] = field(default_factory=dict)
    puts: list[tuple[bytes, bytes]] = field(default_factory=list)
    deletes: list[bytes] = field(default_factory=list)
    # Entries added to append-only records (each only if still absent).
    appends: list[tuple[bytes, bytes]] = field(default_factory=list)
    # New config layer versions: the layer and its history entry together.
    steps: list[Step] = field(default_factory=list)

    def kind(self, key: bytes) -> KindCounts:
        return self.kinds.setdefault(kind_of(key), KindCounts())

    @property
    def total(self) -> KindCounts:
        out = KindCounts()
        for counts in self.kinds.values():
            out.add(counts)
        return out


def _history_version(key: bytes) -> tuple[str, int] | None:
    """(layer, version) of a config history key; None if it is not one."""
    layer, _, version = key[len(keys.CONFIG_HISTORY) :].decode(errors="replace").rpartition("/")
    return (layer, int(version)) if layer and version.isdigit() else None


def _layer_doc(layer: str, raw: bytes) -> StoredLayer | None:
    try:
        return StoredLayer.from_json(layer, raw, 0)
    except (ValueError, TypeError, AttributeError):  # not a layer document
        return None


def _highest_versions(backup: list[Record], now: dict[bytes, KeyValue]) -> dict[str, int]:
    """Per layer, the highest version that exists now or in the backup (layers
    and their history): a restored layer is written above all of them."""
    highest: dict[str, int] = {}
    docs = [(r.key, r.value) for r in backup if not r.lease_bound]
    docs += [(kv.key, kv.value) for kv in now.values()]
    for key, value in docs:
        if key.startswith(keys.CONFIG_HISTORY):
            found = _history_version(key)
            if found is not None:
                highest[found[0]] = max(highest.get(found[0], 0), found[1])
        elif key.startswith(keys.CONFIG):
            layer = keys.parse_config_layer_key(key)
            doc = _layer_doc(layer, value)
            if doc is not None:
                highest[layer] = max(highest.get(layer, 0), doc.version)
    return highest


def _plan_layer(
    plan: RestorePlan,
    key: bytes,
    wanted: bytes | None,
    kv: KeyValue | None,
    *,
    highest: dict[str, int],
    versions_now: set[str],
    now: float,
    by: str,
    backup_revision: int,
) -> bool:
    """Plans a config layer as a new version (False: not a layer document, to be
    handled as a plain key). A version number never names two contents: the
    backup's values become version highest + 1 (restored_version: the backup's
    version), as RollbackConfig writes an earlier version's values; a layer the
    backup lacks gets its defaults (what an absent layer means) the same way.
    Only into a keyspace with no version of the layer at all is the backup's
    document put as it is."""
    layer = keys.parse_config_layer_key(key)
    try:
        parse_layer(layer)
        backup_doc = _layer_doc(layer, wanted) if wanted is not None else empty_layer(layer)
    except (ValueError, KeyError):  # a malformed layer name or an unknown tier
        return False
    current = _layer_doc(layer, kv.value) if kv is not None else None
    if backup_doc is None or (kv is not None and current is None):
        return False
    counts = plan.kind(key)
    if current is not None and current.values == backup_doc.values:
        counts.unchanged += 1
        return True
    if current is None:
        counts.added += 1
    else:
        counts.updated += 1
    if current is None and wanted is not None and layer not in versions_now:
        plan.puts.append((key, wanted))
        return True
    version = highest.get(layer, 0) + 1
    highest[layer] = version
    comment = f"restore of the backup of revision {backup_revision}: " + (
        f"version {backup_doc.version}" if wanted is not None else "the layer was not in it"
    )
    doc = StoredLayer(
        layer,
        version,
        backup_doc.values,
        now,
        by,
        restored_version=backup_doc.version if wanted is not None else 0,
        comment=comment,
    ).to_json()
    history = keys.config_history_key(layer, version)
    plan.kind(history).added += 1
    plan.steps.append(
        Step(
            ((key, doc), (history, doc)),
            expect=((key, kv.mod_revision if kv is not None else 0), (history, 0)),
        )
    )
    return True


def plan_restore(
    backup: Iterable[Record],
    current: Iterable[KeyValue],
    *,
    now: float = 0.0,
    by: str = "",
    backup_revision: int = 0,
) -> RestorePlan:
    """What makes the non-lease keyspace equal to the backup's: puts for keys
    added or changed, deletes for keys the backup lacks. Lease-bound keys of the
    backup are skipped; keys bound to a live lease now are never touched.
    Append-only records (APPEND_ONLY) only gain the backup's entries they lack;
    config layers are written as new versions (see _plan_layer), stamped ``now``
    and ``by``."""
    plan = RestorePlan()
    records = list(backup)
    now_kvs = {kv.key: kv for kv in current}
    highest = _highest_versions(records, now_kvs)
    versions_now = set(_highest_versions([], now_kvs))

    def layer(key: bytes, value: bytes | None, kv: KeyValue | None) -> bool:
        return _plan_layer(
            plan,
            key,
            value,
            kv,
            highest=highest,
            versions_now=versions_now,
            now=now,
            by=by,
            backup_revision=backup_revision,
        )

    wanted: set[bytes] = set()
    for r in records:
        if r.key.startswith(NOT_EXPORTED):
            continue
        counts = plan.kind(r.key)
        if r.lease_bound:
            counts.skipped_lease_bound += 1
            continue
        wanted.add(r.key)
        kv = now_kvs.get(r.key)
        if kv is not None and kv.lease:
            counts.kept_live += 1
        elif is_append_only(kind_of(r.key)):
            if kv is None:
                counts.added += 1
                plan.appends.append((r.key, r.value))
            elif kv.value == r.value:
                counts.unchanged += 1
            else:  # an entry is never overwritten
                counts.kept_records += 1
        elif r.key.startswith(keys.CONFIG) and layer(r.key, r.value, kv):
            continue
        elif kv is None:
            counts.added += 1
            plan.puts.append((r.key, r.value))
        elif kv.value == r.value:
            counts.unchanged += 1
        else:
            counts.updated += 1
            plan.puts.append((r.key, r.value))
    for key, kv in now_kvs.items():
        if key in wanted or key.startswith(NOT_EXPORTED):
            continue
        if kv.lease:
            plan.kind(key).kept_live += 1
        elif is_append_only(kind_of(key)):
            plan.kind(key).kept_records += 1
        elif key.startswith(keys.CONFIG) and layer(key, None, kv):
            continue
        else:
            plan.kind(key).removed += 1
            plan.deletes.append(key)
    return plan


def batches(
    plan: RestorePlan, *, max_ops: int = MAX_TXN_OPS, max_bytes: int = MAX_TXN_BYTES
) -> Iterator[Step]:
    """The plan's writes in groups that fit one etcd txn: deletes, puts, appends
    (each only if still absent), then the config layer versions. A step is
    never split."""
    units = [Step(((k, None),)) for k in plan.deletes]
    units += [Step(((k, v),)) for k, v in plan.puts]
    units += [Step(((k, v),), expect=((k, 0),)) for k, v in plan.appends]
    units += plan.steps
    ops: list[tuple[bytes, bytes | None]] = []
    expect: list[tuple[bytes, int]] = []
    size = 0
    for unit in units:
        unit_size = sum(len(k) + len(v or b"") + 16 for k, v in unit.ops)
        unit_size += sum(len(k) + 16 for k, _ in unit.expect)
        full = (
            len(ops) + len(unit.ops) > max_ops
            or len(expect) + len(unit.expect) > max_ops
            or size + unit_size > max_bytes
        )
        if ops and full:
            yield Step(tuple(ops), tuple(expect))
            ops, expect, size = [], [], 0
        ops += unit.ops
        expect += unit.expect
        size += unit_size
    if ops:
        yield Step(tuple(ops), tuple(expect))


def backup_name(created_at: float, revision: int, *, scheduled: bool) -> str:
    stamp = datetime.fromtimestamp(created_at, UTC)
    ms = stamp.microsecond // 1000
    kind = "scheduled" if scheduled else "manual"
    return f"{kind}-{stamp:%Y%m%dT%H%M%S}{ms:03d}Z-r{revision}{SUFFIX}"


def check_name(name: str, field: str = "name") -> None:
    if not _NAME.fullmatch(name):
        raise InvalidArgument.single(field, f"not a backup file name (like manual-...{SUFFIX})")


# -- the service -------------------------------------------------------------


@dataclass
class RestoreResult:
    backup: ParsedBackup
    plan: RestorePlan
    dry_run: bool
    revision: int
    transactions: int
    notes: list[str]


@dataclass(frozen=True)
class StoredBackup:
    name: str
    size: int
    header: backup_pb2.BackupHeader

    @property
    def scheduled(self) -> bool:
        return self.name.startswith("scheduled-")


class Backups:
    """Exports, restores and (on the elected replica) scheduled backups.

    ``directory`` is this replica's backup directory (None: none configured, so
    nothing can be stored). Retention applies to scheduled files only; manual
    files stay until deleted.
    """

    def __init__(
        self,
        store: EtcdStore,
        hub_id: str,
        *,
        directory: Path | None = None,
        interval: float = 0.0,
        keep: int = 7,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._hub_id = hub_id
        self.directory = directory
        self.interval = interval
        self.keep = keep
        self._clock = clock
        self._restore_lock = asyncio.Lock()

    # -- export ------------------------------------------------------------

    async def read_keyspace(self) -> tuple[list[KeyValue], int]:
        """Every key under the hub's root at one revision, read in pages."""
        return await self._store.get_prefix_paged(keys.ROOT, page=PAGE)

    async def export(self) -> tuple[bytes, int]:
        """A backup file of the whole keyspace, and the revision it reflects."""
        kvs, revision = await self.read_keyspace()
        records = (
            Record(kv.key, kv.value, bool(kv.lease))
            for kv in kvs
            if not kv.key.startswith(NOT_EXPORTED)
        )
        data = encode(records, revision=revision, hub_id=self._hub_id, created_at=self._clock())
        return data, revision

    async def create(self, *, store: bool, scheduled: bool = False) -> tuple[StoredBackup, bytes]:
        """Exports the keyspace; with ``store`` also writes it to the directory."""
        directory = self._require_directory() if store else None
        data, revision = await self.export()
        header, _ = parse_header(data)
        name = ""
        if directory is not None:
            created = header.created_at.ToNanoseconds() / 1e9
            name = backup_name(created, revision, scheduled=scheduled)
            await asyncio.to_thread(_write_atomically, directory / name, data)
        return StoredBackup(name, len(data), header), data

    # -- stored files --------------------------------------------------------

    def _require_directory(self) -> Path:
        if self.directory is None:
            raise FailedPrecondition(
                "this hub has no backup directory (start it with --backup-dir)",
                reason=ERROR_REASON_BACKUP_DIRECTORY_UNSET,
            )
        return self.directory

    async def stored(self) -> list[StoredBackup]:
        """Stored backups, newest first (unreadable files are skipped)."""
        if self.directory is None:
            return []
        found = await asyncio.to_thread(_list_directory, self.directory)
        return sorted(found, key=lambda b: (b.header.created_at.ToNanoseconds(), b.name))[::-1]

    async def read_stored(self, name: str) -> bytes:
        check_name(name)
        path = self._require_directory() / name
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise NotFound(
                f"no backup named {name}", reason=ERROR_REASON_BACKUP_NOT_FOUND
            ) from None

    async def delete(self, name: str) -> None:
        check_name(name)
        path = self._require_directory() / name
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            raise NotFound(
                f"no backup named {name}", reason=ERROR_REASON_BACKUP_NOT_FOUND
            ) from None

    # -- restore -------------------------------------------------------------

    async def restore(self, data: bytes, *, dry_run: bool, by: str = "") -> RestoreResult:
        """Verifies the whole file first (nothing is written if it is refused),
        then plans against the current keyspace and, unless ``dry_run``, applies.
        ``by`` is who restores (the new config versions' updated_by)."""
        parsed = decode(data)
        async with self._restore_lock:
            current, revision = await self.read_keyspace()
            plan = plan_restore(
                parsed.records,
                current,
                now=self._clock(),
                by=by or "restore",
                backup_revision=parsed.header.revision,
            )
            notes = []
            total = plan.total
            if total.skipped_lease_bound:
                notes.append(NOTE_LEASES.format(n=total.skipped_lease_bound))
            if total.kept_live:
                notes.append(NOTE_LIVE.format(n=total.kept_live))
            if total.kept_records:
                notes.append(NOTE_RECORDS.format(n=total.kept_records))
            if plan.steps:
                notes.append(NOTE_VERSIONS)
            transactions = 0
            if not dry_run:
                for batch in batches(plan):
                    txn = Txn()
                    for k, rev in batch.expect:
                        txn.mod_revision_is(k, rev)
                    txn.success.extend(
                        Txn.delete(k) if v is None else Txn.put(k, v) for k, v in batch.ops
                    )
                    result = await self._store.txn(txn)
                    if not result.succeeded:
                        raise VersionConflict(
                            f"a config layer or a record was written during the restore; "
                            f"{transactions} of its transaction(s) were applied: restore "
                            "the same file again",
                            reason=ERROR_REASON_RESTORE_CONFLICT,
                        )
                    revision = result.revision
                    transactions += 1
                notes.append(NOTE_ATOMIC.format(t=transactions))
                log.warning(
                    "restored backup of revision %d: %d put(s), %d delete(s) in %d txn(s)",
                    parsed.header.revision,
                    len(plan.puts) + len(plan.appends) + len(plan.steps),
                    len(plan.deletes),
                    transactions,
                )
        return RestoreResult(parsed, plan, dry_run, revision, transactions, notes)

    # -- schedule (elected replica) -----------------------------------------

    async def schedule_forever(self) -> None:
        """Writes a backup every ``interval`` seconds and keeps the newest ``keep``
        scheduled files. Run by the elected replica; after a failover the next
        backup is due ``interval`` after the newest file in the directory."""
        directory = self._require_directory()
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        newest = [b for b in await self.stored() if b.scheduled]
        last = newest[0].header.created_at.ToNanoseconds() / 1e9 if newest else 0.0
        while True:
            delay = last + self.interval - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                stored, _ = await self.create(store=True, scheduled=True)
                log.info("scheduled backup %s (%d bytes)", stored.name, stored.size)
                await self.prune()
            except Exception as e:  # etcd away, disk full: try again next interval
                log.error("scheduled backup failed: %r", e)
            last = self._clock()

    async def prune(self) -> list[str]:
        """Deletes scheduled files beyond the newest ``keep``; returns their names."""
        scheduled = [b for b in await self.stored() if b.scheduled]
        gone = []
        for old in scheduled[max(self.keep, 0) :]:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread((self._require_directory() / old.name).unlink)
                gone.append(old.name)
        return gone


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _list_directory(directory: Path) -> list[StoredBackup]:
    out: list[StoredBackup] = []
    if not directory.is_dir():
        return out
    for path in directory.iterdir():
        if not _NAME.fullmatch(path.name):
            continue
        try:
            with open(path, "rb") as f:
                head = f.read(_PREAMBLE.size + MAX_HEADER + _CRC.size)
            header, _ = parse_header(head)
            out.append(StoredBackup(path.name, path.stat().st_size, header))
        except (OSError, InvalidArgument, FailedPrecondition) as e:
            log.warning("skipping unreadable backup %s: %s", path, e)
    return out
