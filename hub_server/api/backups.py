"""BackupService: export the keyspace as a file, restore one (dry run first),
list and delete the files of this replica's backup directory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Protocol

import grpc
from aitrading.hub.v1 import backup_pb2, backup_pb2_grpc
from google.protobuf.message import DecodeError

from hub_server.backups.service import (
    KindCounts,
    RestoreResult,
    StoredBackup,
    check_name,
    is_append_only,
)
from hub_server.kernel.errors import HubError, InvalidArgument
from hub_server.rpc.context import audit_note, audited, current
from hub_server.rpc.errors import status_code_for, to_status
from hub_server.rpc.header import response_header

CHUNK = 1024 * 1024  # bytes per streamed message, well under any message limit
MAX_RESTORE_BYTES = 1024 * 1024 * 1024
# A refused upload is read to its end (up to this much more) before the answer:
# grpc-python clients still sending when a client stream is answered sometimes
# see INTERNAL ("Internal error from Core") instead of the status sent.
MAX_DRAIN_BYTES = 64 * 1024 * 1024


def info_to_pb(b: StoredBackup) -> backup_pb2.BackupInfo:
    return backup_pb2.BackupInfo(
        name=b.name, size_bytes=b.size, header=b.header, scheduled=b.scheduled
    )


def _counts_pb(kind: str, c: KindCounts) -> backup_pb2.KindChanges:
    return backup_pb2.KindChanges(
        kind=kind,
        added=c.added,
        updated=c.updated,
        removed=c.removed,
        unchanged=c.unchanged,
        skipped_lease_bound=c.skipped_lease_bound,
        kept_live=c.kept_live,
        kept_records=c.kept_records,
        append_only=is_append_only(kind),
    )


async def _decoded(request_iterator):
    """The stream's messages; one that does not parse is INVALID_ARGUMENT (a
    client stream's messages are parsed as they are read, inside the handler)."""
    iterator = aiter(request_iterator)
    while True:
        try:
            req = await anext(iterator)
        except StopAsyncIteration:
            return
        except DecodeError as e:
            raise InvalidArgument.single("chunk", "is not a RestoreBackupRequest message") from e
        yield req


async def _drain(request_iterator) -> None:
    """Reads what the client still sends (bounded), so the answer reaches it as sent."""
    size = 0
    with contextlib.suppress(Exception):
        async for req in request_iterator:
            size += req.ByteSize()
            if size > MAX_DRAIN_BYTES:
                return


class BackupFiles(Protocol):
    """What the servicer uses of the backups (hub_server.backups.service.Backups)."""

    @property
    def directory(self) -> Path | None: ...
    async def create(self, *, store: bool) -> tuple[StoredBackup, bytes]: ...
    async def restore(self, data: bytes, *, dry_run: bool, by: str = "") -> RestoreResult: ...
    async def stored(self) -> list[StoredBackup]: ...
    async def read_stored(self, name: str) -> bytes: ...
    async def delete(self, name: str) -> None: ...


class AuditRecorder(Protocol):
    """Where it writes the audit records of its streaming calls
    (hub_server.observability.audit.AuditLog)."""

    async def record(
        self,
        *,
        method: str,
        outcome: str,
        caller: str,
        tenant_id: str = "",
        user_id: str = "",
        correlation_id: str = "",
        target: str = "",
        details: Mapping[str, str] | None = None,
    ) -> None: ...


class BackupServicer(backup_pb2_grpc.BackupServiceServicer):
    def __init__(self, backups: BackupFiles, audit: AuditRecorder | None, hub_id: str) -> None:
        self._backups = backups
        self._audit = audit
        self._hub_id = hub_id

    async def CreateBackup(
        self, request, context
    ) -> AsyncIterator[backup_pb2.CreateBackupResponse]:
        if request.omit_data and not request.store:
            raise InvalidArgument.single("omit_data", "only with store (else nothing is kept)")
        stored, data = await self._backups.create(store=request.store)
        if request.store:
            await self._record(
                context,
                "OK",
                target=f"backup/{stored.name}",
                details={"revision": str(stored.header.revision), "size": str(stored.size)},
            )
        header = response_header(self._hub_id, stored.header.revision)
        yield backup_pb2.CreateBackupResponse(header=header, info=info_to_pb(stored))
        if request.omit_data:
            return
        for offset in range(0, len(data), CHUNK):
            yield backup_pb2.CreateBackupResponse(
                header=header, chunk=data[offset : offset + CHUNK]
            )

    async def RestoreBackup(self, request_iterator, context):
        # The CallWrapper admits client-streaming calls but neither maps their
        # errors nor audits them: this handler drains a refused upload first,
        # then answers, and writes its own audit record.
        dry_run = True
        details: dict[str, str] = {}
        target = "backup/(uploaded)"
        try:
            options, data = await self._receive(request_iterator)
            dry_run = options.dry_run
            if options.stored_name:
                target = f"backup/{options.stored_name}"
                check_name(options.stored_name, "options.stored_name")
                data = await self._backups.read_stored(options.stored_name)
            result = await self._backups.restore(data, dry_run=dry_run, by=current().user_id)
            response = self._report(result)
            t = result.plan.total
            details = {
                "backup_revision": str(result.backup.header.revision),
                "added": str(t.added),
                "updated": str(t.updated),
                "removed": str(t.removed),
                "unchanged": str(t.unchanged),
                "skipped_lease_bound": str(t.skipped_lease_bound),
                "kept_live": str(t.kept_live),
                "kept_records": str(t.kept_records),
                "transactions": str(result.transactions),
            }
        except HubError as e:
            await _drain(request_iterator)
            if not dry_run:
                await self._record(context, status_code_for(e).name, target=target)
            await context.abort_with_status(to_status(e))
            raise  # abort_with_status raises; this keeps type checkers content
        if not dry_run:
            await self._record(context, "OK", target=target, details=details)
        return response

    async def _receive(self, request_iterator) -> tuple[backup_pb2.RestoreOptions, bytes]:
        options: backup_pb2.RestoreOptions | None = None
        chunks: list[bytes] = []
        size = 0
        async for req in _decoded(request_iterator):
            kind = req.WhichOneof("content")
            if options is None:
                if kind != "options":
                    raise InvalidArgument.single("options", "the first message carries the options")
                options = req.options
                continue
            if kind != "chunk":
                raise InvalidArgument.single("options", "options come once, in the first message")
            size += len(req.chunk)
            if size > MAX_RESTORE_BYTES:
                raise InvalidArgument.single(
                    "chunk", f"a backup is at most {MAX_RESTORE_BYTES} bytes"
                )
            chunks.append(req.chunk)
        if options is None:
            raise InvalidArgument.single("options", "required (the first message)")
        if options.stored_name and chunks:
            raise InvalidArgument.single("options.stored_name", "either a stored name or chunks")
        if not options.stored_name and not chunks:
            raise InvalidArgument.single("chunk", "no backup sent (chunks or options.stored_name)")
        return options, b"".join(chunks)

    def _report(self, result: RestoreResult) -> backup_pb2.RestoreBackupResponse:
        parsed = result.backup
        return backup_pb2.RestoreBackupResponse(
            header=response_header(self._hub_id, result.revision),
            dry_run=result.dry_run,
            backup=backup_pb2.BackupInfo(size_bytes=parsed.size, header=parsed.header),
            kinds=[_counts_pb(k, c) for k, c in sorted(result.plan.kinds.items())],
            total=_counts_pb("", result.plan.total),
            notes=result.notes,
            transactions=result.transactions,
        )

    async def _record(
        self,
        context: grpc.aio.ServicerContext,
        outcome: str,
        *,
        target: str,
        details: dict[str, str] | None = None,
    ) -> None:
        """The audit record of a streaming call, which the CallWrapper does not
        write: the call's context, the caller by its address."""
        if self._audit is None:
            return
        ctx = current()
        await self._audit.record(
            method=ctx.method,
            outcome=outcome,
            caller=context.peer() or "",
            tenant_id=ctx.tenant_id,
            user_id=ctx.user_id,
            correlation_id=ctx.correlation_id,
            target=target,
            details=details,
        )

    async def ListBackups(self, request, context):
        found = await self._backups.stored()
        directory = self._backups.directory
        return backup_pb2.ListBackupsResponse(
            header=response_header(self._hub_id, 0),
            backups=[info_to_pb(b) for b in found],
            directory=str(directory) if directory is not None else "",
        )

    @audited
    async def DeleteBackup(self, request, context):
        audit_note(target=f"backup/{request.name}")
        await self._backups.delete(request.name)
        return backup_pb2.DeleteBackupResponse(header=response_header(self._hub_id, 0))
