"""Backups: exporting the hub's keyspace, restoring it, the stored backups, and
typed views of BackupService answers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
from aitrading.hub.v1 import backup_pb2

from hub_client._private.errors import from_rpc_error
from hub_client._private.transport import Transport


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


# Restores are sent in chunks of this size.
_CHUNK = 1024 * 1024


class BackupsClient:
    """The BackupService calls."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def export_backup(
        self, *, store: bool, download: bool, timeout: float
    ) -> tuple[BackupInfo, bytes]:
        t = self._transport
        request = backup_pb2.CreateBackupRequest(store=store, omit_data=not download)
        call = t.open_stream(t.backup_stub.CreateBackup, request, timeout=timeout)
        info: BackupInfo | None = None
        chunks: list[bytes] = []
        try:
            async for message in call:
                if message.WhichOneof("content") == "info":
                    info = BackupInfo.from_pb(message.info)
                else:
                    chunks.append(message.chunk)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        if info is None:  # a hub that broke the protocol, not a caller's mistake
            raise RuntimeError("the hub sent no backup info")
        return info, b"".join(chunks)

    async def backup(
        self, path: str | os.PathLike[str] | None, *, store: bool, timeout: float
    ) -> bytes | Path:
        _, data = await self.export_backup(store=store, download=True, timeout=timeout)
        if path is None:
            return data
        out = Path(path)
        tmp = out.with_name(f".{out.name}.partial")
        await asyncio.to_thread(tmp.write_bytes, data)
        await asyncio.to_thread(os.replace, tmp, out)
        return out

    async def store_backup(self, *, timeout: float) -> BackupInfo:
        info, _ = await self.export_backup(store=True, download=False, timeout=timeout)
        return info

    async def restore(
        self,
        data_or_path: bytes | str | os.PathLike[str] | None,
        *,
        dry_run: bool,
        stored: str,
        timeout: float,
    ) -> RestoreReport:
        if isinstance(data_or_path, bytes):
            data = data_or_path
        elif data_or_path is not None:
            data = await asyncio.to_thread(Path(data_or_path).read_bytes)
        else:
            data = b""

        async def requests() -> AsyncIterator[backup_pb2.RestoreBackupRequest]:
            options = backup_pb2.RestoreOptions(dry_run=dry_run, stored_name=stored)
            yield backup_pb2.RestoreBackupRequest(options=options)
            for offset in range(0, len(data), _CHUNK):
                yield backup_pb2.RestoreBackupRequest(chunk=data[offset : offset + _CHUNK])

        t = self._transport
        try:
            resp = await t.open_stream(t.backup_stub.RestoreBackup, requests(), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        return RestoreReport.from_pb(resp)

    async def list_backups(self, *, timeout: float | None = None) -> list[BackupInfo]:
        t = self._transport
        resp = await t.call(
            t.backup_stub.ListBackups, backup_pb2.ListBackupsRequest(), timeout=timeout
        )
        return [BackupInfo.from_pb(b) for b in resp.backups]

    async def delete_backup(self, name: str, *, timeout: float | None = None) -> None:
        t = self._transport
        await t.call(
            t.backup_stub.DeleteBackup, backup_pb2.DeleteBackupRequest(name=name), timeout=timeout
        )
