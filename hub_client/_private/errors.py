"""Typed exceptions from gRPC status codes and google.rpc.ErrorInfo reasons."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum

import grpc
from aitrading.hub.v1.errors_pb2 import (
    ERROR_REASON_CALLER_RATE_LIMITED,
    ERROR_REASON_CALLER_STREAM_LIMIT,
    ERROR_REASON_CIRCUIT_OPEN,
    ERROR_REASON_INSTANCE_NOT_FOUND,
    ERROR_REASON_LEASE_NOT_FOUND,
    ERROR_REASON_NO_ELIGIBLE_INSTANCE,
    ERROR_REASON_QUOTA_EXCEEDED,
    ERROR_REASON_REVISION_COMPACTED,
    ERROR_REASON_SERVICE_NOT_FOUND,
    ERROR_REASON_SUBSCRIPTION_TIER_TOO_LOW,
    ERROR_REASON_UNSPECIFIED,
    ERROR_REASON_VERSION_CONFLICT,
    ErrorReason,
)
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """One limit a request would pass.

    Attributes:
        subject: whose limit (``tenant:<id>``).
        description: readable, with the numbers.
        resource: the quota resource (``websocket_connections``, ...).
        limit: the limit in force.
        current: the usage when the request was refused.
        requested: the amount asked for.
    """

    subject: str
    description: str
    resource: str = ""
    limit: int = 0
    current: int = 0
    requested: int = 0


class HubError(Exception):
    """Any error answer from the hub.

    Attributes:
        code: the gRPC status code.
        reason: the ErrorInfo reason: an ``ErrorReason`` value's name without its
            ``ERROR_REASON_`` prefix (``INSTANCE_NOT_FOUND``), "" when the hub sent none.
        metadata: the ErrorInfo metadata (for example ``service``).
        field_violations: for INVALID_ARGUMENT, every bad field.
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: list[FieldViolation] | None = None,
        quota_violations: list[QuotaViolation] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata = metadata or {}
        self.field_violations = field_violations or []
        self.quota_violations = quota_violations or []

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" + (f" [{self.reason}]" if self.reason else "")


class InvalidArgument(HubError):
    """The request had bad fields; see ``field_violations``."""


class NotFound(HubError):
    """The thing named does not exist."""


class ServiceNotFound(NotFound):
    """No instance of the service is registered."""


class InstanceNotFound(NotFound):
    """The instance (or its lease) is gone; it must register again."""


class AlreadyExists(HubError):
    """The thing to create exists already."""


class VersionConflict(HubError):
    """A compare-and-set write lost: someone else wrote first."""


class FailedPrecondition(HubError):
    """The request is valid but the state does not allow it now."""


class RevisionCompacted(HubError):
    """A revision asked for is older than the history the hub keeps."""


class Unavailable(HubError):
    """The hub, or the etcd behind it, cannot serve right now; retrying may help."""


class DeadlineExceeded(Unavailable):
    """The call's deadline (its ``timeout=``, else the client's) passed before
    the hub answered; whether a write took effect is unknown."""


class Ineligibility(StrEnum):
    """Why nothing could be picked: the rule that removed the last instances."""

    NO_INSTANCES = "NO_INSTANCES"
    TIER = "TIER"
    DRAINING = "DRAINING"
    CIRCUIT_OPEN = "CIRCUIT_OPEN"
    UNHEALTHY = "UNHEALTHY"  # unhealthy, or no status


class NoEligibleInstance(Unavailable):
    """Nothing may be picked; ``cause`` says why (UNHEALTHY, TIER, ...), and the
    metadata has it as ``cause`` with how many instances each rule excluded."""

    @property
    def cause(self) -> Ineligibility | None:
        """The rule that removed the last instances; None when the hub named none
        this client knows."""
        try:
            return Ineligibility(self.metadata.get("cause", ""))
        except ValueError:
            return None


class CircuitOpen(Unavailable):
    """The fleet-wide circuit refuses calls; raised locally, without a round trip."""


class RateLimited(Unavailable):
    """This caller is over its share of the hub (reason CALLER_RATE_LIMITED: calls
    per second; CALLER_STREAM_LIMIT: open streams); back off and retry."""


class QuotaExceeded(HubError):
    """Over a tenant limit; see ``quota_violations`` (``resource``, ``limit``,
    ``current`` and ``requested`` are those of the first one)."""

    @property
    def violation(self) -> QuotaViolation:
        if self.quota_violations:
            return self.quota_violations[0]
        return QuotaViolation("", self.message)

    @property
    def resource(self) -> str:
        return self.violation.resource

    @property
    def limit(self) -> int:
        return self.violation.limit

    @property
    def current(self) -> int:
        return self.violation.current

    @property
    def requested(self) -> int:
        return self.violation.requested


class Unauthenticated(HubError):
    """No credentials, or bad ones."""


class PermissionDenied(HubError):
    """The caller may not do this (role, tenant or tier)."""


class TierTooLow(PermissionDenied):
    """The caller's subscription tier may not use this service."""


_REASON_PREFIX = "ERROR_REASON_"


def reason_text(reason: ErrorReason.ValueType) -> str:
    """The ErrorInfo reason on the wire: the value's name without ``ERROR_REASON_``."""
    return ErrorReason.Name(reason).removeprefix(_REASON_PREFIX)


def reason_value(text: str) -> ErrorReason.ValueType:
    """The ErrorReason an ErrorInfo reason names; UNSPECIFIED for none, or for one
    this client does not know (a newer hub's)."""
    try:
        return ErrorReason.Value(_REASON_PREFIX + text)
    except ValueError:
        return ERROR_REASON_UNSPECIFIED


_BY_REASON: dict[ErrorReason.ValueType, type[HubError]] = {
    ERROR_REASON_SERVICE_NOT_FOUND: ServiceNotFound,
    ERROR_REASON_INSTANCE_NOT_FOUND: InstanceNotFound,
    ERROR_REASON_LEASE_NOT_FOUND: InstanceNotFound,
    ERROR_REASON_VERSION_CONFLICT: VersionConflict,
    ERROR_REASON_REVISION_COMPACTED: RevisionCompacted,
    ERROR_REASON_NO_ELIGIBLE_INSTANCE: NoEligibleInstance,
    ERROR_REASON_CIRCUIT_OPEN: CircuitOpen,
    ERROR_REASON_QUOTA_EXCEEDED: QuotaExceeded,
    ERROR_REASON_CALLER_RATE_LIMITED: RateLimited,
    ERROR_REASON_CALLER_STREAM_LIMIT: RateLimited,
    ERROR_REASON_SUBSCRIPTION_TIER_TOO_LOW: TierTooLow,
}

_BY_CODE: dict[grpc.StatusCode, type[HubError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.ABORTED: VersionConflict,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.OUT_OF_RANGE: RevisionCompacted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    # The hub replica stopped with the call in flight: another may serve it.
    grpc.StatusCode.CANCELLED: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: QuotaExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def channel_closed() -> Unavailable | None:
    """For an ``asyncio.CancelledError`` out of a grpc.aio call: Unavailable when
    it came from the channel being closed under the call (hub_client.sync does
    that before a fork) rather than from a cancel of the running task, which
    must go on (None)."""
    task = asyncio.current_task()
    if task is None or task.cancelling():
        return None
    return Unavailable("the channel was closed during the call", code=grpc.StatusCode.CANCELLED)


def invalid_argument(field: str, description: str) -> InvalidArgument:
    """A bad value refused by the client before any RPC, as the hub would."""
    return InvalidArgument(
        f"{field}: {description}",
        code=grpc.StatusCode.INVALID_ARGUMENT,
        field_violations=[FieldViolation(field, description)],
    )


def deadline_exceeded(what: str, timeout: float) -> DeadlineExceeded:
    """The error of a client-side deadline (a watch's wait for its next item)."""
    return DeadlineExceeded(
        f"{what}: nothing within {timeout:g}s", code=grpc.StatusCode.DEADLINE_EXCEEDED
    )


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def from_rpc_error(error: grpc.aio.AioRpcError) -> HubError:
    """The typed exception for an error status (reason first, then code)."""
    code = error.code()
    reason = ""
    metadata: dict[str, str] = {}
    fields: list[FieldViolation] = []
    quotas: list[QuotaViolation] = []
    status = None
    try:
        status = rpc_status.from_call(error)
    except Exception:
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            qf = error_details_pb2.QuotaFailure()
            detail.Unpack(qf)
            quotas = [
                QuotaViolation(v.subject, v.description, v.quota_metric, v.quota_value)
                for v in qf.violations
            ]
    if quotas:
        # The numbers of the first violation travel in the ErrorInfo metadata.
        first = quotas[0]
        quotas[0] = QuotaViolation(
            first.subject,
            first.description,
            first.resource or metadata.get("resource", ""),
            _int(metadata.get("limit"), first.limit),
            _int(metadata.get("current"), 0),
            _int(metadata.get("requested"), 0),
        )
    cls = _BY_REASON.get(reason_value(reason)) or _BY_CODE.get(code, HubError)
    return cls(
        error.details() or code.name,
        code=code,
        reason=reason,
        metadata=metadata,
        field_violations=fields,
        quota_violations=quotas,
    )
