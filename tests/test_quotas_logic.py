"""Quota arithmetic without I/O: resources and their limits, hourly windows,
allocation and release."""

from __future__ import annotations

import pytest
from aitrading.hub.v1 import tenant_pb2

from hub_server.config.merge import TIER_DEFAULTS
from hub_server.quotas import arithmetic as quotas

HOUR = 3600
T0 = 1_700_000_000 - 1_700_000_000 % HOUR  # the start of some hour


def test_resources_follow_the_proto_enum() -> None:
    names = [quotas.RESOURCES[i - 1].name for i in range(1, len(quotas.RESOURCES) + 1)]
    proto = [
        tenant_pb2.QuotaResource.Name(i).removeprefix("QUOTA_RESOURCE_").lower()
        for i in range(1, len(quotas.RESOURCES) + 1)
    ]
    assert names == proto
    assert len(tenant_pb2.QuotaResource.values()) == len(quotas.RESOURCES) + 1
    kinds = {r.name: r.kind for r in quotas.RESOURCES}
    assert kinds["api_calls_per_hour"] is quotas.Kind.RATE
    assert {k for k, v in kinds.items() if v is quotas.Kind.COUNT} == {
        "websocket_connections",
        "concurrent_requests",
        "data_storage_mb",
    }


@pytest.mark.parametrize(
    ("tier", "expected"),
    [
        ("free", {"api_calls_per_hour": 1000, "websocket_connections": 5,
                  "concurrent_requests": 10, "data_storage_mb": 100}),
        ("pro", {"api_calls_per_hour": 10000, "websocket_connections": 50,
                 "concurrent_requests": 100, "data_storage_mb": 1000}),
        ("enterprise", {"api_calls_per_hour": 100000, "websocket_connections": 500,
                        "concurrent_requests": 1000, "data_storage_mb": 10000}),
    ],
)  # fmt: skip
def test_limits_come_from_the_config(tier: str, expected: dict[str, int]) -> None:
    got = {r.name: quotas.limit_of(r, TIER_DEFAULTS[tier]) for r in quotas.RESOURCES}
    assert got == expected


@pytest.mark.parametrize(
    ("now", "start"),
    [
        (T0, T0),
        (T0 + 0.001, T0),
        (T0 + HOUR - 0.001, T0),
        (T0 + HOUR, T0 + HOUR),
        (T0 - 0.5, T0 - HOUR),
    ],
)
def test_hourly_windows(now: float, start: int) -> None:
    assert quotas.window(now) == (start, start + HOUR)


@pytest.mark.parametrize("offset", [0, 0.4, 1, 59, 1800, 3599, 3599.9])
def test_window_leases_outlive_the_window_by_an_hour(offset: float) -> None:
    now = T0 + offset
    ttl = quotas.window_lease_ttl(now)
    assert HOUR < ttl <= 2 * HOUR
    # The key expires no earlier than an hour after its window ends, and within a second.
    assert T0 + 2 * HOUR <= now + ttl < T0 + 2 * HOUR + 1


@pytest.mark.parametrize(
    ("used", "amount", "limit", "after"),
    [
        (0, 1, 5, 1),
        (4, 1, 5, 5),  # reaching the limit is allowed
        (5, 1, 5, None),  # passing it is not
        (3, 3, 5, None),
        (0, 5, 5, 5),
        (0, 1, 0, None),  # a zero limit allows nothing
        (0, 6, 5, None),
        (10, 1, 5, None),  # already over (the limit was lowered): nothing more
    ],
)
def test_allocate(used: int, amount: int, limit: int, after: int | None) -> None:
    assert quotas.allocate(used, amount, limit) == after
    assert quotas.fits(used, amount, limit) is (after is not None)


@pytest.mark.parametrize(
    ("used", "amount", "after", "released"),
    [
        (5, 1, 4, 1),
        (5, 5, 0, 5),
        (2, 5, 0, 2),  # never below zero: only what is in use is released
        (0, 1, 0, 0),
        (10, 3, 7, 3),  # over a lowered limit: releases still count down
        (-3, 1, 0, 0),  # a corrupt negative value is treated as zero
    ],
)
def test_release(used: int, amount: int, after: int, released: int) -> None:
    assert quotas.release(used, amount) == (after, released)


@pytest.mark.parametrize(
    ("amount", "ok"), [(1, True), (quotas.MAX_AMOUNT, True), (0, False), (-1, False),
                       (quotas.MAX_AMOUNT + 1, False)]
)  # fmt: skip
def test_amounts(amount: int, ok: bool) -> None:
    assert (quotas.check_amount(amount) == "") is ok


def test_violation_carries_the_numbers() -> None:
    resource = quotas.BY_NAME["websocket_connections"]
    v = quotas.violation("acme", "free", resource, limit=5, current=5, requested=2)
    assert (v.subject, v.limit, v.current, v.requested) == ("tenant:acme", 5, 5, 2)
    assert v.description == "websocket_connections: limit 5 (free tier), current 5, requested 2"
    rate = quotas.violation(
        "acme", "pro", quotas.BY_NAME["api_calls_per_hour"], limit=1, current=1, requested=1
    )
    assert "this hour" in rate.description


# -- request records (retries of Allocate and Release) ---------------------------------


@pytest.mark.parametrize("offset", [0, 0.4, 1, 59.9, 60, 300, 599.9])
def test_request_records_live_ten_minutes_at_least(offset: float) -> None:
    now = T0 + offset
    start, ttl = quotas.request_record_lease(now)
    assert start <= now < start + quotas.REQUEST_BUCKET_SECONDS
    assert start % quotas.REQUEST_BUCKET_SECONDS == 0
    kept = quotas.REQUEST_RECORD_SECONDS
    assert kept <= ttl <= kept + quotas.REQUEST_BUCKET_SECONDS
    # Every record of a bucket expires with it, ten minutes after the bucket ends.
    bucket_end = start + quotas.REQUEST_BUCKET_SECONDS
    assert bucket_end + kept <= now + ttl < bucket_end + kept + 1


def test_request_records_keep_the_first_answer() -> None:
    rate, ws = quotas.BY_NAME["api_calls_per_hour"], quotas.BY_NAME["websocket_connections"]
    usage = quotas.Usage(rate, 7, 1000, T0, T0 + HOUR)
    record = quotas.record_of(quotas.ALLOCATE, rate, 3, usage)
    assert quotas.RequestRecord.from_json(record.to_json()) == record
    assert record.usage() == usage
    released = quotas.record_of(quotas.RELEASE, ws, 5, quotas.Usage(ws, 0, 5), released=2)
    again = quotas.RequestRecord.from_json(released.to_json())
    assert (again.released, again.usage()) == (2, quotas.Usage(ws, 0, 5))


@pytest.mark.parametrize(
    ("op", "resource", "amount", "retry"),
    [
        ("allocate", "api_calls_per_hour", 3, True),
        ("allocate", "api_calls_per_hour", 4, False),
        ("release", "api_calls_per_hour", 3, False),
        ("allocate", "websocket_connections", 3, False),
    ],
)
def test_a_request_id_names_one_request(op: str, resource: str, amount: int, retry: bool) -> None:
    rate = quotas.BY_NAME["api_calls_per_hour"]
    record = quotas.record_of(quotas.ALLOCATE, rate, 3, quotas.Usage(rate, 3, 10))
    problem = record.mismatch(op, quotas.BY_NAME[resource], amount)
    assert (problem == "") is retry
    if not retry:
        assert "allocate 3 api_calls_per_hour" in problem
