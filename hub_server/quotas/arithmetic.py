"""Quota arithmetic, without I/O: which resources are metered, where their limits
come from, hourly windows, and what an allocation or a release does to usage.

Counting resources (connections, requests in flight, storage) go up on
allocation and down on release. A rate resource (API calls per hour) counts what
was allocated in the current hourly window; each window has its own usage key
under an etcd lease that outlives the window by an hour, so old windows expire
by themselves.

An allocation or release given a request id is recorded (RequestRecord) in the
same transaction as its usage change, so a retry finds the record and gets the
first call's answer instead of counting again. Records made in the same five
minutes share one lease that outlives the last of them by an hour: at most 12
lease grants an hour per replica, and expiries come in small batches.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass

from hub_server.config.merge import ConfigValues
from hub_server.kernel.errors import QuotaViolation

WINDOW_SECONDS = 3600
# A window's usage key lives this long after the window ends (so it can still be
# read for a while), then its lease expires it.
WINDOW_GRACE_SECONDS = 3600
MAX_AMOUNT = 1_000_000_000
# A retry of a call with a request id is recognised this long after the call at
# least; records made within one bucket share one lease.
REQUEST_RECORD_SECONDS = 600
REQUEST_BUCKET_SECONDS = 60


class Kind(enum.Enum):
    COUNT = "count"
    RATE = "rate"


@dataclass(frozen=True)
class Resource:
    """A metered resource: its name, kind, and the config field with its limit."""

    name: str
    kind: Kind
    limit_path: str


# In the order of the QuotaResource enum (values 1..4).
RESOURCES: tuple[Resource, ...] = (
    Resource("api_calls_per_hour", Kind.RATE, "rate_limits.api_calls_per_hour"),
    Resource("websocket_connections", Kind.COUNT, "rate_limits.websocket_connections"),
    Resource("concurrent_requests", Kind.COUNT, "resource_limits.max_concurrent_requests"),
    Resource("data_storage_mb", Kind.COUNT, "resource_limits.max_data_storage_mb"),
)
BY_NAME: dict[str, Resource] = {r.name: r for r in RESOURCES}


def limit_of(resource: Resource, config: ConfigValues) -> int:
    """The tenant's limit for a resource, from its merged config."""
    return config.limit(resource.limit_path)


def window(now: float) -> tuple[int, int]:
    """(start, end) of the hourly window holding ``now``, in whole epoch seconds."""
    start = int(now // WINDOW_SECONDS) * WINDOW_SECONDS
    return start, start + WINDOW_SECONDS


def window_lease_ttl(now: float) -> int:
    """TTL for a lease granted at ``now`` for its window's key: until an hour after
    the window ends (so between one and two hours)."""
    _, end = window(now)
    return max(1, int(end + WINDOW_GRACE_SECONDS - now + 0.999))


def request_record_lease(now: float) -> tuple[int, int]:
    """(start of the bucket holding ``now``, TTL) for the lease of a request record
    written at ``now``: the lease ends REQUEST_RECORD_SECONDS after the bucket does, so
    every record in it lives at least that long (at most a bucket more)."""
    start = int(now // REQUEST_BUCKET_SECONDS) * REQUEST_BUCKET_SECONDS
    end = start + REQUEST_BUCKET_SECONDS
    return start, max(1, int(end + REQUEST_RECORD_SECONDS - now + 0.999))


def check_amount(amount: int) -> str:
    """What is wrong with an amount ("" if nothing)."""
    if not 1 <= amount <= MAX_AMOUNT:
        return f"must be between 1 and {MAX_AMOUNT}"
    return ""


def fits(used: int, amount: int, limit: int) -> bool:
    """Whether ``amount`` more fits under ``limit`` (usage may equal the limit)."""
    return used + amount <= limit


def allocate(used: int, amount: int, limit: int) -> int | None:
    """The usage after allocating ``amount``; None when it would pass the limit."""
    return used + amount if fits(used, amount, limit) else None


def release(used: int, amount: int) -> tuple[int, int]:
    """(usage after, amount released): never below zero, so releasing more than
    is in use releases what is in use."""
    released = min(max(used, 0), amount)
    return max(used, 0) - released, released


def violation(
    tenant_id: str, tier: str, resource: Resource, *, limit: int, current: int, requested: int
) -> QuotaViolation:
    """The QuotaFailure entry for an allocation that does not fit."""
    per = " this hour" if resource.kind is Kind.RATE else ""
    return QuotaViolation(
        subject=f"tenant:{tenant_id}",
        description=(
            f"{resource.name}: limit {limit} ({tier} tier), current {current}{per}, "
            f"requested {requested}"
        ),
        limit=limit,
        current=current,
        requested=requested,
    )


@dataclass(frozen=True)
class Usage:
    """A tenant's use of one resource. For a rate, in the window [start, end)."""

    resource: Resource
    used: int
    limit: int
    window_start: int = 0
    window_end: int = 0


# -- retried requests ----------------------------------------------------------------

ALLOCATE = "allocate"
RELEASE = "release"


@dataclass(frozen=True)
class RequestRecord:
    """What an allocation or release with a request id did, kept for its retries:
    the request (op, resource, amount) and its answer (usage after, the amount
    released). The revision of the answer is the record's own mod revision."""

    op: str
    resource: str
    amount: int
    used: int
    limit: int
    window_start: int = 0
    window_end: int = 0
    released: int = 0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, value: bytes) -> RequestRecord:
        doc = json.loads(value)
        return cls(
            op=str(doc.get("op", "")),
            resource=str(doc.get("resource", "")),
            amount=int(doc.get("amount", 0)),
            used=int(doc.get("used", 0)),
            limit=int(doc.get("limit", 0)),
            window_start=int(doc.get("window_start", 0)),
            window_end=int(doc.get("window_end", 0)),
            released=int(doc.get("released", 0)),
        )

    def usage(self) -> Usage:
        """The usage the first call answered with."""
        return Usage(
            BY_NAME[self.resource], self.used, self.limit, self.window_start, self.window_end
        )

    def mismatch(self, op: str, resource: Resource, amount: int) -> str:
        """Why a call with this record's request id is not a retry of the recorded
        call ("" when it is: same op, resource and amount)."""
        if (self.op, self.resource, self.amount) == (op, resource.name, amount):
            return ""
        return (
            f"was used within the last {REQUEST_RECORD_SECONDS // 60} minutes by another "
            f"request ({self.op} {self.amount} {self.resource}); use a new id for a new request"
        )


def record_of(
    op: str, resource: Resource, amount: int, usage: Usage, released: int = 0
) -> RequestRecord:
    """The record of a call that answered ``usage`` (and released ``released``)."""
    return RequestRecord(
        op,
        resource.name,
        amount,
        usage.used,
        usage.limit,
        usage.window_start,
        usage.window_end,
        released,
    )
