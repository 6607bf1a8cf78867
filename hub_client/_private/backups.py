"""Typed views of BackupService answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from aitrading.hub.v1 import backup_pb2


@dataclass(frozen=True)
class BackupInfo:
    """A backup: what it holds, and its file name when stored on the hub."""

    name: str
    size_bytes: int
    revision: int
    created_at: datetime
    hub_id: str
    key_count: int
    lease_bound_count: int
    sha256: str
    scheduled: bool

    @classmethod
    def from_pb(cls, m: backup_pb2.BackupInfo) -> BackupInfo:
        h = m.header
        return cls(
            name=m.name,
            size_bytes=m.size_bytes,
            revision=h.revision,
            created_at=datetime.fromtimestamp(h.created_at.ToNanoseconds() / 1e9, UTC),
            hub_id=h.hub_id,
            key_count=h.key_count,
            lease_bound_count=h.lease_bound_count,
            sha256=h.body_sha256.hex(),
            scheduled=m.scheduled,
        )


@dataclass(frozen=True)
class KindChanges:
    """What a restore changes (or would) for one kind of key."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped_lease_bound: int = 0
    kept_live: int = 0
    # Kept although absent from the backup: the kind is an append-only record.
    kept_records: int = 0
    # An append-only record (audit, alert history, config history): a restore
    # only adds what is missing, never removes or overwrites.
    append_only: bool = False

    @property
    def changed(self) -> int:
        return self.added + self.updated + self.removed

    @classmethod
    def from_pb(cls, m: backup_pb2.KindChanges) -> KindChanges:
        return cls(
            m.added,
            m.updated,
            m.removed,
            m.unchanged,
            m.skipped_lease_bound,
            m.kept_live,
            m.kept_records,
            m.append_only,
        )


@dataclass(frozen=True)
class RestoreReport:
    """A restore's outcome: per kind ("config", "tenants", "registry", ...) what
    was (or, for a dry run, would be) added, updated and removed."""

    dry_run: bool
    revision: int
    backup: BackupInfo
    kinds: dict[str, KindChanges] = field(default_factory=dict)
    total: KindChanges = field(default_factory=KindChanges)
    notes: list[str] = field(default_factory=list)
    transactions: int = 0

    @classmethod
    def from_pb(cls, m: backup_pb2.RestoreBackupResponse) -> RestoreReport:
        return cls(
            dry_run=m.dry_run,
            revision=m.header.revision,
            backup=BackupInfo.from_pb(m.backup),
            kinds={k.kind: KindChanges.from_pb(k) for k in m.kinds},
            total=KindChanges.from_pb(m.total),
            notes=list(m.notes),
            transactions=m.transactions,
        )
