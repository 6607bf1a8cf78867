"""Tenants: their records and subscription tiers.

Tenant records live under one etcd prefix, mirrored in memory (reads never go to
etcd); a tier change is a compare-and-set on the record, and the config view is
told at once so merged configs and limits follow.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from aitrading.hub.v1.errors_pb2 import (
    ERROR_REASON_TENANT_ALREADY_EXISTS,
    ERROR_REASON_TENANT_NOT_FOUND,
)

from hub_server.kernel.errors import (
    AlreadyExists,
    NotFound,
    VersionConflict,
)
from hub_server.store import keys
from hub_server.store.cas import CompareAndSet, contended
from hub_server.store.etcd import EtcdStore, KeyValue, Txn
from hub_server.store.mirror import Change, PrefixMirror

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TenantRecord:
    tenant_id: str
    display_name: str
    tier: str
    created_at: float
    updated_at: float
    revision: int = 0  # etcd mod revision

    def to_json(self) -> bytes:
        doc = {
            "display_name": self.display_name,
            "tier": self.tier,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        return json.dumps(doc, separators=(",", ":")).encode()


def decode_tenant(kv: KeyValue) -> TenantRecord:
    doc = json.loads(kv.value)
    return TenantRecord(
        tenant_id=keys.parse_tenant_key(kv.key),
        display_name=str(doc.get("display_name", "")),
        tier=str(doc.get("tier", "free")),
        created_at=float(doc.get("created_at", 0.0)),
        updated_at=float(doc.get("updated_at", 0.0)),
        revision=kv.mod_revision,
    )


def _tenant_not_found(tenant_id: str) -> NotFound:
    return NotFound(
        f"tenant {tenant_id!r} does not exist",
        reason=ERROR_REASON_TENANT_NOT_FOUND,
        tenant_id=tenant_id,
    )


class Tenants:
    """Tenant records: in memory, fed by one etcd watch; written by compare-and-set."""

    def __init__(
        self, store: EtcdStore, *, write_wait: float = 5.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._write_wait = write_wait
        self._clock = clock
        self._listeners: list[Callable[[str], None]] = []
        self.mirror: PrefixMirror[TenantRecord] = PrefixMirror(
            store, keys.TENANTS, decode_tenant, on_change=self._changed
        )

    @property
    def revision(self) -> int:
        return self.mirror.revision

    def ensure_live(self) -> None:
        self.mirror.ensure_live()

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """``listener(tenant_id)`` is called (synchronously) whenever a record changes."""
        self._listeners.append(listener)

    def _changed(self, change: Change[TenantRecord]) -> None:
        tenant_id = keys.parse_tenant_key(change.key)
        for listener in self._listeners:
            listener(tenant_id)

    # -- reads -------------------------------------------------------------

    def get(self, tenant_id: str) -> TenantRecord | None:
        return self.mirror.items.get(keys.tenant_key(tenant_id))

    def require(self, tenant_id: str) -> TenantRecord:
        self.ensure_live()
        record = self.get(tenant_id)
        if record is None:
            raise _tenant_not_found(tenant_id)
        return record

    def page(self, after: str, size: int, tier: str | None) -> tuple[list[TenantRecord], bool]:
        """Up to ``size`` tenants with ids after ``after``, by id; and whether more follow."""
        self.ensure_live()
        records = sorted(
            (r for r in self.mirror.items.values() if tier is None or r.tier == tier),
            key=lambda r: r.tenant_id,
        )
        found = [r for r in records if r.tenant_id > after]
        return found[:size], len(found) > size

    # -- writes ------------------------------------------------------------

    async def create(self, tenant_id: str, display_name: str, tier: str) -> TenantRecord:
        self.ensure_live()
        now = self._clock()
        record = TenantRecord(tenant_id, display_name, tier, now, now)
        key = keys.tenant_key(tenant_id)
        txn = Txn().absent(key)
        txn.success.append(Txn.put(key, record.to_json()))
        result = await self._store.txn(txn)
        if not result.succeeded:
            raise AlreadyExists(
                f"tenant {tenant_id!r} exists already",
                reason=ERROR_REASON_TENANT_ALREADY_EXISTS,
                tenant_id=tenant_id,
            )
        await self.mirror.log.wait_for_revision(result.revision, self._write_wait)
        return replace(record, revision=result.revision)

    async def set_tier(
        self, tenant_id: str, tier: str, *, expected_revision: int = 0
    ) -> tuple[TenantRecord, str]:
        """Changes the tier; returns the record after and the tier before."""
        self.ensure_live()
        key = keys.tenant_key(tenant_id)
        # First try from memory; the txn checks it.
        cas = CompareAndSet(self._store, key, decode_tenant, known=self.get(tenant_id))
        for current in cas.attempts():
            if current is None:
                if not cas.fresh:
                    await cas.read()
                    continue
                raise _tenant_not_found(tenant_id)
            if expected_revision and current.revision != expected_revision:
                if not cas.fresh:
                    await cas.read()
                    continue
                raise VersionConflict(
                    f"tenant {tenant_id!r} is at revision {current.revision}, "
                    f"not {expected_revision}",
                    tenant_id=tenant_id,
                    current_revision=str(current.revision),
                )
            if current.tier == tier:
                return current, tier
            updated = replace(current, tier=tier, updated_at=self._clock())
            txn = Txn().mod_revision_is(key, current.revision)
            txn.success.append(Txn.put(key, updated.to_json()))
            result = await cas.write(txn)
            if result is not None:
                await self.mirror.log.wait_for_revision(result.revision, self._write_wait)
                return replace(updated, revision=result.revision), current.tier
        raise contended(f"tenant {tenant_id!r}")


# -- quotas -----------------------------------------------------------------------
