"""Subscription tiers and who may use what: free < pro < enterprise.

An instance lists the tiers of which at least one is needed to use it; an empty
list means public. The hub (listing, discovery and picking) and a client that
picks locally (:func:`hub_client.choose`) decide with the one :func:`can_access`
here: the client may not import the hub, and the hub already depends on the client.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Tier(StrEnum):
    """A subscription tier, lowest first: each reaches what the ones before it reach.

    A missing or unknown tier counts as FREE.
    """

    FREE = "free"
    PRO = "pro"
    ENTERPRISE = "enterprise"


_LEVELS: dict[str, int] = {tier.value: level for level, tier in enumerate(Tier)}


def parse_tier(value: str | None) -> str | None:
    """Normalise a tier name as sent in headers or config.

    Args:
        value: A tier name in any case, possibly padded (``" Pro "``), or None.

    Returns:
        The canonical lower-case name, or None when the value names no known tier.
    """
    tier = (value or "").strip().lower()
    return tier if tier in _LEVELS else None


def tier_level(tier: str | None) -> int:
    """The level of a caller's tier (free is 0); a missing or unknown tier counts as free."""
    return _LEVELS[parse_tier(tier) or Tier.FREE]


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
    return any((required := parse_tier(r)) is not None and level >= _LEVELS[required] for r in reqs)
