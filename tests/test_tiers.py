"""Subscription tiers: parsing, levels and the access rule, every combination."""

from __future__ import annotations

import pytest

from hub_server.kernel.tiers import (
    TIER_LEVELS,
    can_access,
    filtered_event_type,
    parse_tier,
    tier_level,
    view_tier,
    visible_to,
)
from hub_server.store.mirror import ADDED, REMOVED, UPDATED


def test_hierarchy() -> None:
    assert TIER_LEVELS == {"free": 0, "pro": 1, "enterprise": 2}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("free", "free"),
        ("pro", "pro"),
        ("enterprise", "enterprise"),
        ("PRO", "pro"),
        (" Enterprise ", "enterprise"),
        ("", None),
        ("   ", None),
        (None, None),
        ("bogus", None),
        ("platinum", None),
        ("pro ", "pro"),
        ("SUBSCRIPTION_TIER_PRO", None),  # proto enum names are the API layer's job
    ],
)
def test_parse_tier(value: str | None, expected: str | None) -> None:
    assert parse_tier(value) == expected


@pytest.mark.parametrize(
    ("tier", "level"),
    [("free", 0), ("pro", 1), ("enterprise", 2), ("ENTERPRISE", 2), (None, 0), ("bogus", 0)],
)
def test_tier_level(tier: str | None, level: int) -> None:
    assert tier_level(tier) == level


CALLER_TIERS: list[str | None] = [None, "free", "pro", "enterprise", "bogus", "Pro"]

# requirements -> whether each caller in CALLER_TIERS may use the instance
# (Y/n, in the order None, free, pro, enterprise, bogus, Pro). A missing or
# unknown caller tier is free; one satisfied requirement is enough; an unknown
# requirement name is satisfied by nobody.
ACCESS_TABLE: list[tuple[tuple[str, ...], str]] = [
    ((), "YYYYYY"),
    (("free",), "YYYYYY"),
    (("pro",), "nnYYnY"),
    (("enterprise",), "nnnYnn"),
    (("free", "pro"), "YYYYYY"),
    (("free", "enterprise"), "YYYYYY"),
    (("pro", "enterprise"), "nnYYnY"),
    (("enterprise", "pro"), "nnYYnY"),
    (("free", "pro", "enterprise"), "YYYYYY"),
    (("PRO",), "nnYYnY"),
    (("bogus",), "nnnnnn"),
    (("bogus", "pro"), "nnYYnY"),
    (("bogus", "free"), "YYYYYY"),
]


@pytest.mark.parametrize(("requirements", "row"), ACCESS_TABLE)
@pytest.mark.parametrize("index", range(len(CALLER_TIERS)))
def test_can_access_table(requirements: tuple[str, ...], row: str, index: int) -> None:
    tier = CALLER_TIERS[index]
    assert can_access(requirements, tier) is (row[index] == "Y")


@pytest.mark.parametrize(("requirements", "row"), ACCESS_TABLE)
@pytest.mark.parametrize("tier", CALLER_TIERS)
def test_legacy_sees_everything(requirements: tuple[str, ...], row: str, tier: str | None) -> None:
    assert can_access(requirements, tier, legacy=True)


def test_requirements_may_be_any_iterable() -> None:
    assert can_access(iter(["pro"]), "pro")
    assert not can_access((r for r in ["enterprise"]), None)


def test_access_is_monotonic_in_tier() -> None:
    """A higher tier never loses access a lower one has."""
    ordered = ["free", "pro", "enterprise"]
    for requirements, _ in ACCESS_TABLE:
        allowed = [can_access(requirements, t) for t in ordered]
        assert allowed == sorted(allowed)


@pytest.mark.parametrize(
    ("tier", "has_tenant", "bound", "legacy", "expected"),
    [
        # Not bound to a tenant: legacy mode, or no tenant context, sees everything.
        ("pro", True, False, False, "pro"),
        ("pro", True, False, True, None),
        ("", False, False, False, None),
        ("", False, False, True, None),
        ("", True, False, False, "free"),  # a tenant without a tier is free
        ("bogus", True, False, False, "free"),
        # Bound to a tenant: always its own tier's view, legacy mode or not.
        ("free", True, True, True, "free"),
        ("enterprise", True, True, True, "enterprise"),
        ("", True, True, True, "free"),
        ("", False, True, True, "free"),
    ],
)
def test_view_tier(
    tier: str, has_tenant: bool, bound: bool, legacy: bool, expected: str | None
) -> None:
    got = view_tier(tier, has_tenant=has_tenant, tenant_bound=bound, legacy_mode=legacy)
    assert got == expected


def test_visible_to() -> None:
    assert visible_to(["enterprise"], None)
    assert not visible_to(["enterprise"], "pro")
    assert visible_to([], "free")


@pytest.mark.parametrize(
    ("change", "was", "now", "sent"),
    [
        (ADDED, None, True, ADDED),
        (ADDED, None, False, None),
        (REMOVED, None, True, REMOVED),
        (REMOVED, None, False, None),
        (UPDATED, True, True, UPDATED),
        (UPDATED, False, True, ADDED),  # enters the view
        (UPDATED, True, False, REMOVED),  # leaves it
        (UPDATED, False, False, None),
        (UPDATED, None, True, UPDATED),  # unknown before: an upsert either way
        (UPDATED, None, False, REMOVED),  # unknown before: make sure it is gone
    ],
)
def test_filtered_event_type(change: int, was: bool | None, now: bool, sent: int | None) -> None:
    assert filtered_event_type(change, was, now) == sent
