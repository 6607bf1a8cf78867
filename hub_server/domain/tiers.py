"""Subscription tiers and who may use what (the write-up's hierarchy)."""

from __future__ import annotations

from collections.abc import Iterable

TIER_LEVELS = {"free": 0, "pro": 1, "enterprise": 2}


def parse_tier(value: str | None) -> str | None:
    tier = (value or "").strip().lower()
    return tier if tier in TIER_LEVELS else None


def can_access(requirements: Iterable[str], tier: str | None) -> bool:
    reqs = list(requirements)
    if not reqs:
        return True
    level = TIER_LEVELS.get(tier or "free", 0)
    return any(level >= TIER_LEVELS.get(r, 0) for r in reqs)
