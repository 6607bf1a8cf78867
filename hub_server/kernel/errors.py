"""Domain errors. Each carries a reason from the protos' ErrorReason enum; the API
layer maps the class to a gRPC status code in one table (hub_server/rpc/errors.py)
and sends the reason as a google.rpc.ErrorInfo so clients branch on it, never on
the message."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from aitrading.hub.v1.errors_pb2 import (
    ERROR_REASON_ALREADY_EXISTS,
    ERROR_REASON_CALLER_RATE_LIMITED,
    ERROR_REASON_FAILED_PRECONDITION,
    ERROR_REASON_INTERNAL,
    ERROR_REASON_INVALID_ARGUMENT,
    ERROR_REASON_NO_ELIGIBLE_INSTANCE,
    ERROR_REASON_NOT_FOUND,
    ERROR_REASON_PERMISSION_DENIED,
    ERROR_REASON_QUOTA_EXCEEDED,
    ERROR_REASON_REVISION_COMPACTED,
    ERROR_REASON_STORE_UNAVAILABLE,
    ERROR_REASON_UNAUTHENTICATED,
    ERROR_REASON_VERSION_CONFLICT,
    ErrorReason,
)


def reason_text(reason: ErrorReason.ValueType) -> str:
    """The ErrorInfo reason on the wire: the value's name without ``ERROR_REASON_``.
    Anything but an ErrorReason value (a bare string) raises TypeError or ValueError."""
    return ErrorReason.Name(reason).removeprefix("ERROR_REASON_")


class HubError(Exception):
    """Base of every error the domain raises on purpose.

    Attributes:
        reason: the ErrorInfo reason sent, as on the wire (``INSTANCE_NOT_FOUND``):
            the ``reason`` given, else the class's ``default_reason``.
    """

    default_reason: ErrorReason.ValueType = ERROR_REASON_INTERNAL

    def __init__(
        self, message: str, *, reason: ErrorReason.ValueType | None = None, **metadata: str
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason_text(reason or self.default_reason)
        self.metadata = {k: str(v) for k, v in metadata.items()}


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (``instance.port``) and what is wrong."""

    field: str
    description: str


class InvalidArgument(HubError):
    default_reason = ERROR_REASON_INVALID_ARGUMENT

    def __init__(
        self, violations: Iterable[FieldViolation], *, reason: ErrorReason.ValueType | None = None
    ) -> None:
        self.violations = list(violations)
        text = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"invalid request: {text}", reason=reason)

    @classmethod
    def single(cls, field_path: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field_path, description)])


class NotFound(HubError):
    default_reason = ERROR_REASON_NOT_FOUND


class AlreadyExists(HubError):
    default_reason = ERROR_REASON_ALREADY_EXISTS


class VersionConflict(HubError):
    """A compare-and-set write found another version than the one it expected."""

    default_reason = ERROR_REASON_VERSION_CONFLICT


class FailedPrecondition(HubError):
    default_reason = ERROR_REASON_FAILED_PRECONDITION


class Compacted(HubError):
    """A revision asked for is older than the history still kept."""

    default_reason = ERROR_REASON_REVISION_COMPACTED

    def __init__(self, message: str, *, compact_revision: int) -> None:
        super().__init__(message, compact_revision=str(compact_revision))
        self.compact_revision = compact_revision


class StoreUnavailable(HubError):
    """etcd cannot be reached (or did not answer in time)."""

    default_reason = ERROR_REASON_STORE_UNAVAILABLE


class NoEligibleInstance(HubError):
    """A service exists but no instance may be picked right now."""

    default_reason = ERROR_REASON_NO_ELIGIBLE_INSTANCE


@dataclass
class QuotaViolation:
    """Which limit a request would break and by how much."""

    subject: str
    description: str
    limit: int = 0
    current: int = 0
    requested: int = 0


class QuotaExceeded(HubError):
    default_reason = ERROR_REASON_QUOTA_EXCEEDED

    def __init__(self, message: str, violations: list[QuotaViolation]) -> None:
        super().__init__(message)
        self.violations = violations


class Unauthenticated(HubError):
    default_reason = ERROR_REASON_UNAUTHENTICATED


class PermissionDenied(HubError):
    default_reason = ERROR_REASON_PERMISSION_DENIED


class TooManyCalls(HubError):
    """One caller is over its share of the hub (calls per second, open streams);
    it should back off and retry."""

    default_reason = ERROR_REASON_CALLER_RATE_LIMITED


@dataclass
class Violations:
    """Collects field violations so a validator reports every bad field at once."""

    items: list[FieldViolation] = field(default_factory=list)

    def add(self, field_path: str, description: str) -> None:
        self.items.append(FieldViolation(field_path, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)
