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
from google.protobuf.internal import decoder, encoder

from hub_server.domain.errors import (
    Compacted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore, KeyValue, Txn, prefix_end

log = logging.getLogger(__name__)

MAGIC = b"CHUB"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct(">4sHI")  # magic, format version, header length
_CRC = struct.Struct(">I")
MAX_HEADER = 64 * 1024
MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
MAX_TXN_BYTES = 1024 * 1024  # etcd refuses requests over 1.5 MiB by default
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


def _rejected(reason: str, description: str) -> InvalidArgument:
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
            raise _rejected("BACKUP_TRUNCATED", "the file ends inside its preamble")
        raise _rejected("BACKUP_NOT_RECOGNIZED", "not a Central Hub backup (no CHUB magic)")
    magic, version, length = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise _rejected("BACKUP_NOT_RECOGNIZED", "not a Central Hub backup (no CHUB magic)")
    if version != FORMAT_VERSION:
        raise FailedPrecondition(
            f"backup format version {version} is not supported (this hub reads "
            f"version {FORMAT_VERSION})",
            reason="BACKUP_VERSION_UNSUPPORTED",
            version=str(version),
        )
    if length > MAX_HEADER:
        raise _rejected("BACKUP_CORRUPT", f"header length {length} is implausible")
    start = _PREAMBLE.size
    end = start + length + _CRC.size
    if len(data) < end:
        raise _rejected("BACKUP_TRUNCATED", "the file ends inside its header")
    raw = data[start : start + length]
    (crc,) = _CRC.unpack_from(data, start + length)
    if zlib.crc32(raw) != crc:
        raise _rejected("BACKUP_CORRUPT", "the header's CRC-32 does not match")
    header = backup_pb2.BackupHeader.FromString(raw)
    if header.keyspace_root != keys.ROOT:
        raise _rejected(
            "BACKUP_FOREIGN",
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
            "BACKUP_TRUNCATED",
            f"the body has {len(body)} of its {header.body_length} bytes",
        )
    if len(body) > header.body_length:
        raise _rejected("BACKUP_CORRUPT", "there are bytes after the body")
    if hashlib.sha256(body).digest() != header.body_sha256:
        raise _rejected("BACKUP_CORRUPT", "the body's SHA-256 does not match the header")
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
                raise _rejected("BACKUP_FOREIGN", f"key {m.key[:80]!r} is outside {keys.ROOT!r}")
            records.append(Record(m.key, m.value, m.lease_bound))
    except InvalidArgument:
        raise
    except Exception as e:  # a body that hashes right but does not parse
        raise _rejected("BACKUP_CORRUPT", f"record {len(records)} does not parse: {e}") from e
    if len(records) != header.key_count:
        raise _rejected(
            "BACKUP_CORRUPT", f"{len(records)} records, the header says {header.key_count}"
        )
    return ParsedBackup(header, records, len(data))


# -- restore planning (pure) -------------------------------------------------


@dataclass
class KindCounts:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped_lease_bound: int = 0
    kept_live: int = 0

    def add(self, other: KindCounts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class RestorePlan:
    kinds: dict[str, KindCounts] = field(default_factory=dict)
    puts: list[tuple[bytes, bytes]] = field(default_factory=list)
    deletes: list[bytes] = field(default_factory=list)

    def kind(self, key: bytes) -> KindCounts:
        return self.kinds.setdefault(keys.kind_of(key), KindCounts())

    @property
    def total(self) -> KindCounts:
        out = KindCounts()
        for counts in self.kinds.values():
            out.add(counts)
        return out


def plan_restore(backup: Iterable[Record], current: Iterable[KeyValue]) -> RestorePlan:
    """What makes the non-lease keyspace equal to the backup's: puts for keys
    added or changed, deletes for keys the backup lacks. Lease-bound keys of the
    backup are skipped; keys bound to a live lease now are never touched."""
    plan = RestorePlan()
    now = {kv.key: kv for kv in current}
    wanted: set[bytes] = set()
    for r in backup:
        counts = plan.kind(r.key)
        if r.lease_bound:
            counts.skipped_lease_bound += 1
            continue
        wanted.add(r.key)
        kv = now.get(r.key)
        if kv is None:
            counts.added += 1
            plan.puts.append((r.key, r.value))
        elif kv.lease:
            counts.kept_live += 1
        elif kv.value == r.value:
            counts.unchanged += 1
        else:
            counts.updated += 1
            plan.puts.append((r.key, r.value))
    for key, kv in now.items():
        if key in wanted:
            continue
        if kv.lease:
            plan.kind(key).kept_live += 1
        else:
            plan.kind(key).removed += 1
            plan.deletes.append(key)
    return plan


def batches(
    plan: RestorePlan, *, max_ops: int = MAX_TXN_OPS, max_bytes: int = MAX_TXN_BYTES
) -> Iterator[list[tuple[bytes, bytes | None]]]:
    """The plan's writes (value None: delete) in groups that fit one etcd txn."""
    batch: list[tuple[bytes, bytes | None]] = []
    size = 0
    ops: list[tuple[bytes, bytes | None]] = [(k, None) for k in plan.deletes]
    ops += [(k, v) for k, v in plan.puts]
    for key, value in ops:
        op_size = len(key) + len(value or b"") + 16
        if batch and (len(batch) >= max_ops or size + op_size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append((key, value))
        size += op_size
    if batch:
        yield batch


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
        for attempt in range(3):
            try:
                return await self._read_at_one_revision()
            except Compacted:  # compacted between pages: start again, newer
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _read_at_one_revision(self) -> tuple[list[KeyValue], int]:
        end = prefix_end(keys.ROOT)
        kvs, revision, more = await self._store.get_page(keys.ROOT, end, limit=PAGE)
        out = list(kvs)
        while more and kvs:
            start = kvs[-1].key + b"\0"
            kvs, _, more = await self._store.get_page(start, end, revision=revision, limit=PAGE)
            out += kvs
        return out, revision

    async def export(self) -> tuple[bytes, int]:
        """A backup file of the whole keyspace, and the revision it reflects."""
        kvs, revision = await self.read_keyspace()
        records = (Record(kv.key, kv.value, bool(kv.lease)) for kv in kvs)
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
                reason="BACKUP_DIRECTORY_UNSET",
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
            raise NotFound(f"no backup named {name}", reason="BACKUP_NOT_FOUND") from None

    async def delete(self, name: str) -> None:
        check_name(name)
        path = self._require_directory() / name
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            raise NotFound(f"no backup named {name}", reason="BACKUP_NOT_FOUND") from None

    # -- restore -------------------------------------------------------------

    async def restore(self, data: bytes, *, dry_run: bool) -> RestoreResult:
        """Verifies the whole file first (nothing is written if it is refused),
        then plans against the current keyspace and, unless ``dry_run``, applies."""
        parsed = decode(data)
        async with self._restore_lock:
            current, revision = await self.read_keyspace()
            plan = plan_restore(parsed.records, current)
            notes = []
            total = plan.total
            if total.skipped_lease_bound:
                notes.append(NOTE_LEASES.format(n=total.skipped_lease_bound))
            if total.kept_live:
                notes.append(NOTE_LIVE.format(n=total.kept_live))
            transactions = 0
            if not dry_run:
                for batch in batches(plan):
                    txn = Txn()
                    txn.success.extend(
                        Txn.delete(k) if v is None else Txn.put(k, v) for k, v in batch
                    )
                    revision = (await self._store.txn(txn)).revision
                    transactions += 1
                notes.append(NOTE_ATOMIC.format(t=transactions))
                log.warning(
                    "restored backup of revision %d: %d put(s), %d delete(s) in %d txn(s)",
                    parsed.header.revision,
                    len(plan.puts),
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
