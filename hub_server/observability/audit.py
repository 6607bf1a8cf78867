"""The audit trail: one record per mutating call, kept in etcd in time order.

Calls wait until their record is stored (the trail must not lose what it said
happened), but records are written with group commit (EtcdStore.put_grouped):
every call that finishes while a write is in flight joins the next transaction,
so under load the cost is one etcd round trip shared by many calls rather than
one each.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping

from aitrading.hub.v1 import observability_pb2 as obs

from hub_server.kernel.errors import InvalidArgument
from hub_server.kernel.validation import MAX_PAGE
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore

log = logging.getLogger(__name__)

DEFAULT_RETENTION = 30 * 24 * 3600.0


def _key(record_id: str) -> bytes:
    return keys.AUDIT + record_id.encode()


def _time_key(seconds: float) -> bytes:
    return _key(f"{int(seconds * 1e9):020d}")


def _matches(event: obs.AuditEvent, tenant_id: str, method: str) -> bool:
    """The filters of a listing: the tenant, and the method by its full or short name."""
    if tenant_id and event.tenant_id != tenant_id:
        return False
    return not method or event.method == method or event.method.endswith("/" + method)


class AuditLog:
    def __init__(
        self,
        store: EtcdStore,
        hub_id: str,
        *,
        retention: float = DEFAULT_RETENTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._hub_id = hub_id
        self.retention = retention
        self._clock = clock
        self._seq = itertools.count()

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
        version_before: str = "",
        version_after: str = "",
        details: Mapping[str, str] | None = None,
    ) -> None:
        """The audit sink of every mutating call (the call wrapper's records,
        backups' own): writes its record and waits until it is stored. Never
        raises: the call's outcome stands, and a record that cannot be written
        is logged as lost."""
        event = obs.AuditEvent(
            caller=caller,
            tenant_id=tenant_id,
            user_id=user_id,
            method=method,
            outcome=outcome,
            correlation_id=correlation_id,
            target=target,
            version_before=version_before,
            version_after=version_after,
            details=details or {},
        )
        try:
            await self.append(event)
        except Exception as e:
            log.error("audit record of %s %s lost: %r", method, target, e)

    async def append(self, event: obs.AuditEvent) -> None:
        now = self._clock()
        event.id = f"{int(now * 1e9):020d}-{self._hub_id}-{next(self._seq):06d}"
        event.time.FromNanoseconds(int(now * 1e9))
        event.hub_id = self._hub_id
        await self._store.put_grouped(_key(event.id), event.SerializeToString())

    async def latest(
        self,
        *,
        tenant_id: str = "",
        method: str = "",
        start: float = 0.0,
        end: float = 0.0,
        limit: int = 100,
    ) -> tuple[list[obs.AuditEvent], int]:
        """The newest ``limit`` events (newest first) matching the filters of
        ``list``, and the revision of the read: what a dashboard shows."""
        if not 0 < limit <= MAX_PAGE:
            raise InvalidArgument.single("limit", f"must be between 1 and {MAX_PAGE}")
        lo = _time_key(start) if start else keys.AUDIT
        hi = _time_key(end) if end else keys.AUDIT + b"\xff"
        out: list[obs.AuditEvent] = []
        revision = 0
        while len(out) < limit and lo < hi:
            kvs, revision = await self._store.get_range(lo, hi, limit=500, descending=True)
            for kv in kvs:
                event = obs.AuditEvent.FromString(kv.value)
                if _matches(event, tenant_id, method):
                    out.append(event)
                    if len(out) == limit:
                        break
            if len(kvs) < 500:
                break
            hi = kvs[-1].key
        return out, revision

    async def list(
        self,
        *,
        tenant_id: str = "",
        method: str = "",
        start: float = 0.0,
        end: float = 0.0,
        page_size: int = 100,
        page_token: str = "",
    ) -> tuple[list[obs.AuditEvent], str, int]:
        """Events oldest first, filtered; returns (events, next page token, revision)."""
        if not 0 <= page_size <= MAX_PAGE:
            raise InvalidArgument.single("page_size", f"must be between 0 and {MAX_PAGE}")
        size = page_size or 100
        lo = _time_key(start) if start else keys.AUDIT
        if page_token:
            try:
                after = base64.urlsafe_b64decode(page_token.encode())
            except Exception as e:
                raise InvalidArgument.single("page_token", "is not a token this hub issued") from e
            if not after.startswith(keys.AUDIT):
                raise InvalidArgument.single("page_token", "is not a token this hub issued")
            lo = max(lo, after + b"\0")
        hi = _time_key(end) if end else keys.AUDIT + b"\xff"
        out: list[obs.AuditEvent] = []
        revision = 0
        while len(out) < size and lo < hi:
            kvs, revision = await self._store.get_range(lo, hi, limit=500)
            if not kvs:
                break
            for kv in kvs:
                event = obs.AuditEvent.FromString(kv.value)
                lo = kv.key + b"\0"
                if not _matches(event, tenant_id, method):
                    continue
                out.append(event)
                if len(out) == size:
                    break
            if len(kvs) < 500:
                break
        token = ""
        if len(out) == size:
            token = base64.urlsafe_b64encode(_key(out[-1].id)).decode()
        return out, token, revision

    async def prune_forever(self, interval: float = 60.0) -> None:
        """Leader work: delete records older than the retention."""
        while True:
            with contextlib.suppress(Exception):
                cutoff = _time_key(self._clock() - self.retention)
                await self._store.delete_range(keys.AUDIT, cutoff)
            await asyncio.sleep(interval)
