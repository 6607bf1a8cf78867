"""The plain values callers pass (tier names, seconds) as proto values, for the
requests several capabilities build; models.py converts the other way."""

from __future__ import annotations

from aitrading.hub.v1 import types_pb2
from google.protobuf import duration_pb2

from hub_client._private.models import lookup

TIERS = {
    "free": types_pb2.SUBSCRIPTION_TIER_FREE,
    "pro": types_pb2.SUBSCRIPTION_TIER_PRO,
    "enterprise": types_pb2.SUBSCRIPTION_TIER_ENTERPRISE,
}


def tier(name: str, field: str = "tier") -> types_pb2.SubscriptionTier.ValueType:
    """A tier name (or ``Tier``) as its enum value; InvalidArgument naming
    ``field`` for an unknown one, before any RPC."""
    return lookup(TIERS, name, field)


def duration(seconds: float | None) -> duration_pb2.Duration | None:
    if seconds is None:
        return None
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d
