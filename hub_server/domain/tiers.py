"""Subscription tiers and who may use what (the write-up's hierarchy).

Tiers are ordered free (0) < pro (1) < enterprise (2). An instance lists the
tiers of which at least one is needed to use it; an empty list means public.
The registry (listing, discovery) and the balancer (picking) both decide with
:func:`can_access`, so a caller never gets picked an instance it cannot see.
"""

from __future__ import annotations

from collections.abc import Iterable

TIER_LEVELS: dict[str, int] = {"free": 0, "pro": 1, "enterprise": 2}

DEFAULT_TIER = "free"


def parse_tier(value: str | None) -> str | None:
    """Normalise a tier name as sent in headers or config.

    Args:
        value: A tier name in any case, possibly padded (``" Pro "``), or None.

    Returns:
        The canonical lower-case name, or None when the value names no known tier.
    """
    tier = (value or "").strip().lower()
    return tier if tier in TIER_LEVELS else None


def tier_level(tier: str | None) -> int:
    """The level of a caller's tier; a missing or unknown tier counts as free."""
    return TIER_LEVELS.get(parse_tier(tier) or DEFAULT_TIER, TIER_LEVELS[DEFAULT_TIER])


def can_access(requirements: Iterable[str], tier: str | None, *, legacy: bool = False) -> bool:
    """Whether a caller of ``tier`` may use an instance with these requirements.

    Args:
        requirements: Tier names of which at least one is needed; empty means public.
        tier: The caller's tier. None or an unknown name counts as free.
        legacy: Legacy mode ignores the caller's tier: everything is accessible.

    Returns:
        True when there are no requirements, in legacy mode, or when the caller's
        level is at least the level of one of the required tiers.
    """
    if legacy:
        return True
    reqs = list(requirements)
    if not reqs:
        return True
    level = tier_level(tier)
    # An unknown requirement name is unsatisfiable rather than "free": a typo in a
    # paid gate must not open the instance to everyone.
    return any(
        (required := parse_tier(r)) is not None and level >= TIER_LEVELS[required] for r in reqs
    )
