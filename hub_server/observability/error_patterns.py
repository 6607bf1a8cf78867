"""ErrorDNA patterns aggregated across the fleet.

Services report deltas (occurrences since their last report); the hub adds them
into one record per (service, tenant, fingerprint) with compare-and-set, so
reports reaching different replicas at once are all counted.
"""

from __future__ import annotations

import asyncio
import re

from aitrading.hub.v1 import observability_pb2 as obs

from hub_server.kernel import validation
from hub_server.kernel.errors import Violations
from hub_server.store import keys
from hub_server.store.cas import CompareAndSet, contended
from hub_server.store.etcd import EtcdStore, Txn

CATEGORIES = {
    "connection", "timeout", "authentication", "authorization", "validation",
    "resource_exhaustion", "database", "dependency", "configuration", "unknown",
}  # fmt: skip
_FINGERPRINT = re.compile(r"[0-9a-f]{8,64}")
MAX_BATCH = 1000
MAX_TEXT = 2048
MAX_LIMIT = 1000


_key = keys.error_pattern_key


def validate(service: str, patterns: list[obs.ErrorPattern]) -> None:
    v = Violations()
    validation.check_dns_label(v, "service", service)
    if len(patterns) > MAX_BATCH:
        v.add("patterns", f"at most {MAX_BATCH} per report")
    for i, p in enumerate(patterns[:MAX_BATCH]):
        path = f"patterns[{i}]"
        if not _FINGERPRINT.fullmatch(p.fingerprint):
            v.add(f"{path}.fingerprint", "must be 8-64 lower-case hex digits")
        validation.check_safe_id(v, f"{path}.tenant_id", p.tenant_id, required=False)
        if p.category not in CATEGORIES:
            v.add(f"{path}.category", f"must be one of {', '.join(sorted(CATEGORIES))}")
        if not 1 <= p.count <= 1_000_000_000:
            v.add(f"{path}.count", "must be between 1 and 1000000000")
        for name in ("sample", "normalized_message", "exception_type", "severity"):
            if len(getattr(p, name)) > MAX_TEXT:
                v.add(f"{path}.{name}", f"must be at most {MAX_TEXT} characters")
        for name in ("first_seen", "last_seen"):
            if p.HasField(name):
                validation.check_timestamp(v, f"{path}.{name}", getattr(p, name))
    v.raise_if_any()


def merge(total: obs.ErrorPattern | None, delta: obs.ErrorPattern) -> obs.ErrorPattern:
    """Pure: the total after adding a delta (counts add, first/last seen widen)."""
    out = obs.ErrorPattern()
    out.CopyFrom(delta)
    if total is None:
        return out
    out.count = min(total.count + delta.count, 2**63 - 1)
    out.sample = total.sample or delta.sample
    if total.first_seen.ToNanoseconds() and (
        not delta.first_seen.ToNanoseconds()
        or total.first_seen.ToNanoseconds() < delta.first_seen.ToNanoseconds()
    ):
        out.first_seen.CopyFrom(total.first_seen)
    if total.last_seen.ToNanoseconds() > delta.last_seen.ToNanoseconds():
        out.last_seen.CopyFrom(total.last_seen)
    return out


class ErrorPatterns:
    def __init__(self, store: EtcdStore) -> None:
        self._store = store

    async def report(self, service: str, patterns: list[obs.ErrorPattern]) -> int:
        validate(service, patterns)
        grouped: dict[bytes, obs.ErrorPattern] = {}
        for p in patterns:
            p.service = service
            key = _key(service, p.tenant_id, p.fingerprint)
            grouped[key] = merge(grouped.get(key), p)
        revisions = await asyncio.gather(*(self._add(k, d) for k, d in grouped.items()))
        return max(revisions, default=0)

    async def _add(self, key: bytes, delta: obs.ErrorPattern) -> int:
        cas = CompareAndSet(self._store, key, lambda kv: kv, known=None)
        await cas.read()
        for kv in cas.attempts():
            total = obs.ErrorPattern.FromString(kv.value) if kv is not None else None
            txn = Txn().mod_revision_is(key, kv.mod_revision) if kv else Txn().absent(key)
            txn.success.append(Txn.put(key, merge(total, delta).SerializeToString()))
            result = await cas.write(txn)
            if result is not None:
                return result.revision
        raise contended("error pattern counts")

    async def list(
        self, *, service: str = "", tenant_id: str = "", category: str = "", limit: int = 0
    ) -> tuple[list[obs.ErrorPattern], int]:
        v = Violations()
        validation.check_dns_label(v, "service", service, required=False)
        if not 0 <= limit <= MAX_LIMIT:
            v.add("limit", f"must be between 0 and {MAX_LIMIT}")
        if category and category not in CATEGORIES:
            v.add("category", f"must be one of {', '.join(sorted(CATEGORIES))}")
        v.raise_if_any()
        prefix = keys.error_pattern_prefix(service) if service else keys.ERROR_PATTERNS
        kvs, revision = await self._store.get_prefix(prefix)
        found = [obs.ErrorPattern.FromString(kv.value) for kv in kvs]
        found = [
            p for p in found
            if (not tenant_id or p.tenant_id == tenant_id)
            and (not category or p.category == category)
        ]  # fmt: skip
        found.sort(key=lambda p: (-p.count, p.service, p.fingerprint))
        return found[: limit or 100], revision
