"""Subscription tiers as the hub's reads see them: whose view is filtered by
which tier, and what a change looks like to a filtered stream.

The tier table and the access rule (:func:`can_access`) are hub_client's public
API, so a client that picks locally applies the very rule the hub does; the
registry (listing, discovery) and the balancer (picking) both decide with it, so a
caller never gets picked an instance it cannot see.
"""

from __future__ import annotations

from collections.abc import Iterable

from hub_client import Tier, can_access, parse_tier, tier_level
from hub_server.kernel.changes import ADDED, REMOVED, UPDATED

TIER_LEVELS: dict[str, int] = {tier.value: tier_level(tier) for tier in Tier}

# What a missing or unknown tier counts as (hub_client.tier_level).
DEFAULT_TIER: str = Tier.FREE.value


def view_tier(
    tier: str | None, *, has_tenant: bool, tenant_bound: bool, legacy_mode: bool
) -> str | None:
    """The tier a caller's discovery reads are filtered by; None: no filtering.

    The one rule for every read that lists instances (GetService, ListServices,
    Watch, PickEndpoint, and health reads that show instances).

    Args:
        tier: The caller's tier (a bound caller's tenant record, else the tenant
            record named by its headers, else its x-subscription-tier header).
        has_tenant: The call carries tenant context (a tenant id or a tier).
        tenant_bound: The caller's credential is bound to a tenant.
        legacy_mode: The request asks to ignore the tier (services that predate
            tenancy). Honoured only for callers not bound to a tenant: a bound
            credential always gets its own tier's view.

    Returns:
        None when the caller sees everything (no tenant context, or legacy mode
        honoured), else its tier, an unknown or missing one counting as free.
    """
    if not tenant_bound and (legacy_mode or not has_tenant):
        return None
    return parse_tier(tier) or DEFAULT_TIER


def visible_to(requirements: Iterable[str], filter_tier: str | None) -> bool:
    """Whether an instance with these tier requirements is visible to a caller
    whose reads are filtered by ``filter_tier`` (from :func:`view_tier`; None:
    everything is visible)."""
    return filter_tier is None or can_access(requirements, filter_tier)


def filtered_event_type(change_type: int, was_visible: bool | None, is_visible: bool) -> int | None:
    """What a change looks like to a stream that shows only visible items, so that
    its snapshot plus events always equal what a read answers the same caller.

    Args:
        change_type: ADDED, UPDATED or REMOVED (``hub_server.store.mirror``).
        was_visible: For UPDATED, whether the value before it was visible (None:
            unknown). Ignored for ADDED and REMOVED.
        is_visible: Whether the value the change is about is visible: the value
            after it, or for REMOVED the value before it.

    Returns:
        The type to send, or None to send nothing: an update that makes an item
        visible is ADDED, one that hides it is REMOVED (also when it is unknown
        whether it was visible: removing what a stream lacks is harmless).
    """
    if change_type != UPDATED:
        return change_type if is_visible else None
    if is_visible:
        return UPDATED if was_visible or was_visible is None else ADDED
    return None if was_visible is False else REMOVED
