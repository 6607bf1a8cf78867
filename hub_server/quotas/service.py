"""Quotas: allocations and releases against each tenant's limits.

Usage lives in etcd, one key per tenant and resource (per hourly window for
rates). Every allocation or release is a compare-and-set on that key's
mod_revision, retried from the value the failed transaction read back, so
concurrent allocators on any number of replicas never push usage past the
limit nor a release below zero. Within one replica, changes to one key take
turns (a lock per key), so contention is only ever between replicas.

A call given a request id also writes its record (arithmetic.RequestRecord) in
the same transaction, on the condition that no record of that id exists yet;
when one does, the call changes nothing and answers what the record says.
Records live 10 minutes (in one-minute lease buckets), long enough for any
client's retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aitrading.hub.v1.errors_pb2 import ERROR_REASON_REQUEST_ID_REUSED

from hub_server.config.merge import MergedConfig
from hub_server.config.service import Configs
from hub_server.kernel.errors import (
    FieldViolation,
    HubError,
    InvalidArgument,
    QuotaExceeded,
)
from hub_server.quotas import arithmetic as quotas
from hub_server.store import keys
from hub_server.store.cas import ATTEMPTS, contended
from hub_server.store.etcd import EtcdStore, KeyValue, Txn

log = logging.getLogger(__name__)


def _encode_used(used: int) -> bytes:
    return json.dumps({"used": used}).encode()


def _decode_used(kv: KeyValue | None) -> tuple[int, int]:
    """(used, mod revision) of a usage key-value; (0, 0) when absent."""
    if kv is None:
        return 0, 0
    return max(0, int(json.loads(kv.value).get("used", 0))), kv.mod_revision


@dataclass(frozen=True)
class _Request:
    """A call made with a request id: where its record goes, what the call was, and
    how to make its record from the usage before and after."""

    key: bytes
    op: str
    amount: int
    record: Callable[[int, int], quotas.RequestRecord]


# What _update did: usage after, revision, usage before, and the record replayed
# (None when this call made the change).
_Updated = tuple[int, int, int, quotas.RequestRecord | None]


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
        # (what for, start of its span) -> lease id: "window" leases hold a rate
        # window's usage keys, "request" leases the request records of 5 minutes.
        self._leases: dict[tuple[str, int], int] = {}
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
        self,
        tenant_id: str,
        header_tier: str,
        resource: quotas.Resource,
        amount: int,
        *,
        request_id: str = "",
    ) -> tuple[quotas.Usage, int, bool]:
        """Takes ``amount``; raises QuotaExceeded if it does not fit under the limit.
        Returns (usage after, revision, whether this was a replay): with a
        ``request_id`` used before (within 10 minutes), changes nothing and
        returns what that call returned."""
        merged = self.config(tenant_id, header_tier)
        limit = quotas.limit_of(resource, merged.values)
        now = self._clock()

        def step(used: int) -> int:
            after = quotas.allocate(used, amount, limit)
            if after is None:
                raise self._exceeded(tenant_id, merged.tier, resource, limit, used, amount, now)
            return after

        request = None
        if request_id:
            request = _Request(
                keys.quota_request_key(tenant_id, request_id),
                quotas.ALLOCATE,
                amount,
                lambda before, after: quotas.record_of(
                    quotas.ALLOCATE, resource, amount, self._usage(resource, after, limit, now)
                ),
            )
        used, revision, _, replayed = await self._update(
            self._key(tenant_id, resource, now), step, resource, now, request
        )
        if replayed is not None:
            return replayed.usage(), revision, True
        return self._usage(resource, used, limit, now), revision, False

    async def release(
        self,
        tenant_id: str,
        header_tier: str,
        resource: quotas.Resource,
        amount: int,
        *,
        request_id: str = "",
    ) -> tuple[quotas.Usage, int, int, bool]:
        """Gives back up to ``amount``; returns (usage after, amount released,
        revision, whether this was a replay): with a ``request_id`` used before
        (within 10 minutes), changes nothing and returns what that call returned.
        A rate (api_calls_per_hour) is never given back: the calls were made, so
        its release releases 0."""
        limit = quotas.limit_of(resource, self.config(tenant_id, header_tier).values)
        now = self._clock()
        request = None
        if request_id:
            request = _Request(
                keys.quota_request_key(tenant_id, request_id),
                quotas.RELEASE,
                amount,
                lambda before, after: quotas.record_of(
                    quotas.RELEASE,
                    resource,
                    amount,
                    self._usage(resource, after, limit, now),
                    released=before - after,
                ),
            )
        rate = resource.kind is quotas.Kind.RATE
        used, revision, before, replayed = await self._update(
            self._key(tenant_id, resource, now),
            lambda used: used if rate else quotas.release(used, amount)[0],
            resource,
            now,
            request,
        )
        if replayed is not None:
            return replayed.usage(), replayed.released, revision, True
        return self._usage(resource, used, limit, now), before - used, revision, False

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
        self,
        key: bytes,
        step: Callable[[int], int],
        resource: quotas.Resource,
        now: float,
        request: _Request | None = None,
    ) -> _Updated:
        """Read, step, compare-and-set, retried from what the failed txn read.

        ``step`` returns the new usage or raises (QuotaExceeded). A decision made
        on the cached hint is confirmed on a fresh read before it is final.
        Returns (usage after, revision, usage before, None).

        With a ``request``, the reads and the failed txn also read its record
        and the txn writes it if absent (even when usage does not change): a
        record found is a retry, answered by (_, its revision, _, the record).
        """
        async with self._turn(key):
            hint = self._known.get(key)
            fresh = hint is None
            revision = 0
            lease_renewed = False
            found: KeyValue | None = None  # the request's record, as last read
            if hint is None:
                hint, found, revision = await self._read(key, request)
            for attempt in range(ATTEMPTS):
                if found is not None and request is not None:
                    return self._replay(found, request, resource)
                used, mod_revision = hint
                try:
                    after = step(used)
                except HubError:
                    if fresh:  # (and no record was found in the same read)
                        raise
                    after = None
                if after is None or (after == used and not fresh):
                    hint, found, revision = await self._read(key, request)
                    fresh = True
                    continue
                if after == used and request is None:
                    # Nothing to change (a release with nothing in use).
                    return used, revision, used, None
                lease = record_lease = 0
                txn = Txn().mod_revision_is(key, mod_revision)
                if after != used:
                    if resource.kind is quotas.Kind.RATE:
                        lease = await self._window_lease(now)
                    txn.success.append(Txn.put(key, _encode_used(after), lease))
                txn.failure.append(Txn.get(key))
                if request is not None:
                    record_lease = await self._request_lease(now)
                    txn.absent(request.key)
                    txn.success.append(
                        Txn.put(request.key, request.record(used, after).to_json(), record_lease)
                    )
                    txn.failure.append(Txn.get(request.key))
                try:
                    result = await self._store.txn(txn)
                except HubError:
                    raise
                except Exception:
                    if not (lease or record_lease) or lease_renewed:
                        raise
                    # Most likely a lease is gone (etcd restored from a backup,
                    # say): forget them and try once more with new ones.
                    log.info(
                        "usage write with leases %x, %x failed; granting new leases",
                        lease,
                        record_lease,
                    )
                    self._leases = {
                        k: v for k, v in self._leases.items() if v not in (lease, record_lease)
                    }
                    lease_renewed = True
                    continue
                revision = result.revision
                if result.succeeded:
                    if after != used:
                        self._remember(key, (after, revision))
                    return after, revision, used, None
                kvs = result.ranges[0] if result.ranges else []
                hint, fresh = _decode_used(kvs[0] if kvs else None), True
                if request is not None:
                    # Both compares are read back: a record found means a retry
                    # of a call that took effect, not a usage change to redo.
                    records = result.ranges[1] if len(result.ranges) > 1 else []
                    found = records[0] if records else None
                    if found is not None:
                        continue
                if attempt >= 2:  # another replica keeps winning: step aside a little
                    await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
            raise contended("quota usage")

    async def _read(
        self, key: bytes, request: _Request | None
    ) -> tuple[tuple[int, int], KeyValue | None, int]:
        """(used, mod revision) of a usage key, the request's record (if a request
        is given and it has one) and the revision of the read: both in one read."""
        if request is None:
            kv, revision = await self._store.get(key)
            return _decode_used(kv), None, revision
        txn = Txn()  # no compares: the success ops run
        txn.success += [Txn.get(key), Txn.get(request.key)]
        result = await self._store.txn(txn)
        usage, records = result.ranges
        return (
            _decode_used(usage[0] if usage else None),
            records[0] if records else None,
            result.revision,
        )

    @staticmethod
    def _replay(kv: KeyValue, request: _Request, resource: quotas.Resource) -> _Updated:
        """The answer recorded for a request id, if this call is a retry of it."""
        record = quotas.RequestRecord.from_json(kv.value)
        problem = record.mismatch(request.op, resource, request.amount)
        if problem:
            raise InvalidArgument(
                [FieldViolation("request_id", problem)], reason=ERROR_REASON_REQUEST_ID_REUSED
            )
        return record.used, kv.mod_revision, record.used + record.released, record

    def _remember(self, key: bytes, value: tuple[int, int]) -> None:
        if len(self._known) >= self._known_capacity:
            self._known.clear()
        self._known[key] = value

    async def _window_lease(self, now: float) -> int:
        """This replica's lease for the window holding ``now`` (granted once)."""
        start, _ = quotas.window(now)
        return await self._lease("window", start, quotas.window_lease_ttl(now))

    async def _request_lease(self, now: float) -> int:
        """This replica's lease for request records written in the 5 minutes
        holding ``now`` (granted once)."""
        return await self._lease("request", *quotas.request_record_lease(now))

    async def _lease(self, kind: str, start: int, ttl: int) -> int:
        lease = self._leases.get((kind, start))
        if lease:
            return lease
        async with self._lease_lock:
            lease = self._leases.get((kind, start))
            if not lease:
                lease = await self._store.grant_lease(ttl)
                # Older spans' leases expire by themselves; only forget them.
                self._leases = {
                    (k, s): lease_id
                    for (k, s), lease_id in self._leases.items()
                    if k != kind or s >= start
                }
                self._leases[kind, start] = lease
            return lease
