"""Tenants and their quotas.

Tenant records live under one etcd prefix, mirrored in memory (reads never go to
etcd); a tier change is a compare-and-set on the record, and the config view is
told at once so merged configs and limits follow.

Usage lives in etcd too, one key per tenant and resource (per hourly window for
rates). Every allocation or release is a compare-and-set on that key's
mod_revision, retried from the value the failed transaction read back, so
concurrent allocators on any number of replicas never push usage past the
limit nor a release below zero. Within one replica, changes to one key take
turns (a lock per key), so contention is only ever between replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from hub_server.domain import quotas
from hub_server.domain.config_merge import MergedConfig
from hub_server.domain.errors import (
    AlreadyExists,
    HubError,
    NotFound,
    QuotaExceeded,
    StoreUnavailable,
    VersionConflict,
)
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore, KeyValue, Txn
from hub_server.store.mirror import Change, PrefixMirror

if TYPE_CHECKING:
    from hub_server.domain.config import Configs

log = logging.getLogger(__name__)

MAX_CAS_ATTEMPTS = 100


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
        f"tenant {tenant_id!r} does not exist", reason="TENANT_NOT_FOUND", tenant_id=tenant_id
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
                reason="TENANT_ALREADY_EXISTS",
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
        current = self.get(tenant_id)  # first try from memory; the txn checks it
        fresh = False
        for _ in range(MAX_CAS_ATTEMPTS):
            if current is None:
                if not fresh:
                    current, fresh = await self._read(key), True
                    continue
                raise _tenant_not_found(tenant_id)
            if expected_revision and current.revision != expected_revision:
                if not fresh:
                    current, fresh = await self._read(key), True
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
            txn.failure.append(Txn.get(key))
            result = await self._store.txn(txn)
            if result.succeeded:
                await self.mirror.log.wait_for_revision(result.revision, self._write_wait)
                return replace(updated, revision=result.revision), current.tier
            kvs = result.ranges[0] if result.ranges else []
            current, fresh = (decode_tenant(kvs[0]) if kvs else None), True
        raise StoreUnavailable(f"tenant {tenant_id!r}: too much contention")

    async def _read(self, key: bytes) -> TenantRecord | None:
        kv, _ = await self._store.get(key)
        return decode_tenant(kv) if kv is not None else None


# -- quotas -----------------------------------------------------------------------


def _encode_used(used: int) -> bytes:
    return json.dumps({"used": used}).encode()


def _decode_used(kv: KeyValue | None) -> tuple[int, int]:
    """(used, mod revision) of a usage key-value; (0, 0) when absent."""
    if kv is None:
        return 0, 0
    return max(0, int(json.loads(kv.value).get("used", 0))), kv.mod_revision


class Quotas:
    """Allocations and releases against the limits of each tenant's merged config."""

    def __init__(
        self,
        store: EtcdStore,
        configs: Configs,
        *,
        clock: Callable[[], float] = time.time,
        known_capacity: int = 50_000,
    ) -> None:
        self._store = store
        self._configs = configs
        self._clock = clock
        self._locks: dict[bytes, tuple[asyncio.Lock, list[int]]] = {}
        # key -> (used, mod revision) as this replica last read or wrote it: a
        # hint that saves a read; the compare-and-set catches it being stale.
        self._known: dict[bytes, tuple[int, int]] = {}
        self._known_capacity = known_capacity
        self._leases: dict[int, int] = {}  # window start -> lease id
        self._lease_lock = asyncio.Lock()

    def config(self, tenant_id: str, header_tier: str) -> MergedConfig:
        return self._configs.merged(tenant_id, header_tier)

    def _key(self, tenant_id: str, resource: quotas.Resource, now: float) -> bytes:
        if resource.kind is quotas.Kind.RATE:
            return keys.usage_key(tenant_id, resource.name, quotas.window(now)[0])
        return keys.usage_key(tenant_id, resource.name)

    def _usage(self, resource: quotas.Resource, used: int, limit: int, now: float) -> quotas.Usage:
        if resource.kind is quotas.Kind.RATE:
            start, end = quotas.window(now)
            return quotas.Usage(resource, used, limit, start, end)
        return quotas.Usage(resource, used, limit)

    async def check(
        self, tenant_id: str, header_tier: str, resource: quotas.Resource, amount: int
    ) -> tuple[bool, quotas.Usage, int]:
        """(whether ``amount`` fits now, current usage, revision of the read)."""
        limit = quotas.limit_of(resource, self.config(tenant_id, header_tier).values)
        now = self._clock()
        kv, revision = await self._store.get(self._key(tenant_id, resource, now))
        used, _ = _decode_used(kv)
        return quotas.fits(used, amount, limit), self._usage(resource, used, limit, now), revision

    async def allocate(
        self, tenant_id: str, header_tier: str, resource: quotas.Resource, amount: int
    ) -> tuple[quotas.Usage, int]:
        """Takes ``amount``; raises QuotaExceeded if it does not fit under the limit."""
        merged = self.config(tenant_id, header_tier)
        limit = quotas.limit_of(resource, merged.values)
        now = self._clock()

        def step(used: int) -> int:
            after = quotas.allocate(used, amount, limit)
            if after is None:
                raise self._exceeded(tenant_id, merged.tier, resource, limit, used, amount, now)
            return after

        used, revision, _ = await self._update(
            self._key(tenant_id, resource, now), step, resource, now
        )
        return self._usage(resource, used, limit, now), revision

    async def release(
        self, tenant_id: str, header_tier: str, resource: quotas.Resource, amount: int
    ) -> tuple[quotas.Usage, int, int]:
        """Gives back up to ``amount``; returns (usage after, amount released, revision)."""
        limit = quotas.limit_of(resource, self.config(tenant_id, header_tier).values)
        now = self._clock()
        used, revision, before = await self._update(
            self._key(tenant_id, resource, now),
            lambda used: quotas.release(used, amount)[0],
            resource,
            now,
        )
        return self._usage(resource, used, limit, now), before - used, revision

    async def usage(
        self, tenant_id: str, header_tier: str
    ) -> tuple[MergedConfig, list[quotas.Usage], int]:
        """Every resource's usage (rates: in the current window), one read."""
        merged = self.config(tenant_id, header_tier)
        now = self._clock()
        kvs, revision = await self._store.get_prefix(keys.usage_prefix(tenant_id))
        by_key = {kv.key: kv for kv in kvs}
        out = []
        for resource in quotas.RESOURCES:
            used, _ = _decode_used(by_key.get(self._key(tenant_id, resource, now)))
            out.append(self._usage(resource, used, quotas.limit_of(resource, merged.values), now))
        return merged, out, revision

    def _exceeded(
        self,
        tenant_id: str,
        tier: str,
        resource: quotas.Resource,
        limit: int,
        used: int,
        amount: int,
        now: float,
    ) -> QuotaExceeded:
        v = quotas.violation(tenant_id, tier, resource, limit=limit, current=used, requested=amount)
        error = QuotaExceeded(f"tenant {tenant_id!r} is over a quota: {v.description}", [v])
        error.metadata.update(tenant_id=tenant_id, resource=resource.name, tier=tier)
        if resource.kind is quotas.Kind.RATE:
            error.metadata["window_end"] = str(quotas.window(now)[1])
        return error

    # -- compare-and-set ------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _turn(self, key: bytes) -> AsyncIterator[None]:
        """One change at a time per key in this replica; the entry goes with its
        last user, so idle keys cost nothing."""
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = (asyncio.Lock(), [0])
        entry[1][0] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1][0] -= 1
            if entry[1][0] == 0:
                self._locks.pop(key, None)

    async def _update(
        self, key: bytes, step: Callable[[int], int], resource: quotas.Resource, now: float
    ) -> tuple[int, int, int]:
        """Read, step, compare-and-set, retried from what the failed txn read.

        ``step`` returns the new usage or raises (QuotaExceeded). A decision made
        on the cached hint is confirmed on a fresh read before it is final.
        Returns (usage after, revision, usage before).
        """
        async with self._turn(key):
            hint = self._known.get(key)
            fresh = hint is None
            revision = 0
            lease_renewed = False
            if hint is None:
                kv, revision = await self._store.get(key)
                hint = _decode_used(kv)
            for attempt in range(MAX_CAS_ATTEMPTS):
                used, mod_revision = hint
                try:
                    after = step(used)
                except HubError:
                    if fresh:
                        raise
                    after = None
                if after is None or (after == used and not fresh):
                    kv, revision = await self._store.get(key)
                    hint, fresh = _decode_used(kv), True
                    continue
                if after == used:  # nothing to change (a release with nothing in use)
                    return used, revision, used
                lease = await self._window_lease(now) if resource.kind is quotas.Kind.RATE else 0
                txn = Txn().mod_revision_is(key, mod_revision)
                txn.success.append(Txn.put(key, _encode_used(after), lease))
                txn.failure.append(Txn.get(key))
                try:
                    result = await self._store.txn(txn)
                except HubError:
                    raise
                except Exception:
                    if not lease or lease_renewed:
                        raise
                    # Most likely the lease is gone (etcd restored from a backup,
                    # say): forget it and try once more with a new one.
                    log.info("usage write with lease %x failed; granting a new lease", lease)
                    self._leases.pop(quotas.window(now)[0], None)
                    lease_renewed = True
                    continue
                revision = result.revision
                if result.succeeded:
                    self._remember(key, (after, revision))
                    return after, revision, used
                kvs = result.ranges[0] if result.ranges else []
                hint, fresh = _decode_used(kvs[0] if kvs else None), True
                if attempt >= 2:  # another replica keeps winning: step aside a little
                    await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
            raise StoreUnavailable("quota usage: too much contention, try again")

    def _remember(self, key: bytes, value: tuple[int, int]) -> None:
        if len(self._known) >= self._known_capacity:
            self._known.clear()
        self._known[key] = value

    async def _window_lease(self, now: float) -> int:
        """This replica's lease for the window holding ``now`` (granted once)."""
        start, _ = quotas.window(now)
        lease = self._leases.get(start)
        if lease:
            return lease
        async with self._lease_lock:
            lease = self._leases.get(start)
            if not lease:
                lease = await self._store.grant_lease(quotas.window_lease_ttl(now))
                # Older windows' leases expire by themselves; only forget them.
                self._leases = {s: lease_id for s, lease_id in self._leases.items() if s >= start}
                self._leases[start] = lease
            return lease
