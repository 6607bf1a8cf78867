"""Domain errors. Each carries a stable UPPER_SNAKE reason; the API layer maps the
class to a gRPC status code in one table (hub_server/rpc/errors.py) and sends the
reason as a google.rpc.ErrorInfo so clients branch on it, never on the message."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


class HubError(Exception):
    """Base of every error the domain raises on purpose."""

    reason = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.metadata = {k: str(v) for k, v in metadata.items()}


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (``instance.port``) and what is wrong."""

    field: str
    description: str


class InvalidArgument(HubError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Iterable[FieldViolation], *, reason: str | None = None) -> None:
        self.violations = list(violations)
        text = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"invalid request: {text}", reason=reason)

    @classmethod
    def single(cls, field_path: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field_path, description)])


class NotFound(HubError):
    reason = "NOT_FOUND"


class AlreadyExists(HubError):
    reason = "ALREADY_EXISTS"


class VersionConflict(HubError):
    """A compare-and-set write found another version than the one it expected."""

    reason = "VERSION_CONFLICT"


class FailedPrecondition(HubError):
    reason = "FAILED_PRECONDITION"


class Compacted(HubError):
    """A revision asked for is older than the history still kept."""

    reason = "REVISION_COMPACTED"

    def __init__(self, message: str, *, compact_revision: int) -> None:
        super().__init__(message, compact_revision=str(compact_revision))
        self.compact_revision = compact_revision


class StoreUnavailable(HubError):
    """etcd cannot be reached (or did not answer in time)."""

    reason = "STORE_UNAVAILABLE"


class NoEligibleInstance(HubError):
    """A service exists but no instance may be picked right now."""

    reason = "NO_ELIGIBLE_INSTANCE"


@dataclass
class QuotaViolation:
    """Which limit a request would break and by how much."""

    subject: str
    description: str
    limit: int = 0
    current: int = 0
    requested: int = 0


class QuotaExceeded(HubError):
    reason = "QUOTA_EXCEEDED"

    def __init__(self, message: str, violations: list[QuotaViolation]) -> None:
        super().__init__(message)
        self.violations = violations


class Unauthenticated(HubError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(HubError):
    reason = "PERMISSION_DENIED"


class TooManyCalls(HubError):
    """One caller is over its share of the hub (calls per second, open streams);
    it should back off and retry."""

    reason = "CALLER_RATE_LIMITED"


@dataclass
class Violations:
    """Collects field violations so a validator reports every bad field at once."""

    items: list[FieldViolation] = field(default_factory=list)

    def add(self, field_path: str, description: str) -> None:
        self.items.append(FieldViolation(field_path, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)
