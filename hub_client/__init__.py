"""Central Hub's Python client: register, keep alive, discover and watch services.

Everything public is listed in ``__all__``; the rest lives in ``_private``.
"""

from hub_client._private.circuits import CircuitGuard
from hub_client._private.client import HubClient, TenantContext, health_check
from hub_client._private.errors import (
    AlreadyExists,
    CircuitOpen,
    FailedPrecondition,
    FieldViolation,
    HubError,
    InstanceNotFound,
    InvalidArgument,
    NoEligibleInstance,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    QuotaViolation,
    RevisionCompacted,
    ServiceNotFound,
    TierTooLow,
    Unauthenticated,
    Unavailable,
    VersionConflict,
)
from hub_client._private.models import (
    CircuitInfo,
    Endpoint,
    EventType,
    Health,
    Instance,
    Service,
    WatchEvent,
)
from hub_client._private.registration import Registration

__all__ = [
    "AlreadyExists",
    "CircuitGuard",
    "CircuitInfo",
    "CircuitOpen",
    "Endpoint",
    "EventType",
    "FailedPrecondition",
    "FieldViolation",
    "Health",
    "HubClient",
    "HubError",
    "Instance",
    "InstanceNotFound",
    "InvalidArgument",
    "NoEligibleInstance",
    "NotFound",
    "PermissionDenied",
    "QuotaExceeded",
    "QuotaViolation",
    "Registration",
    "RevisionCompacted",
    "Service",
    "ServiceNotFound",
    "TenantContext",
    "TierTooLow",
    "Unauthenticated",
    "Unavailable",
    "VersionConflict",
    "WatchEvent",
    "health_check",
]
