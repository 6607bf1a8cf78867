"""The one table that maps domain errors to gRPC status codes, with rich details
(google.rpc.ErrorInfo always; BadRequest for bad fields; QuotaFailure for quotas)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from hub_server.kernel import errors

ERROR_DOMAIN = "hub.aitrading"

# The standard mapping of gRPC codes to HTTP statuses (google/rpc/code.proto),
# one table for both HTTP surfaces: the gateway and the dashboard.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

# Most specific first: the first class an error is an instance of wins.
STATUS_BY_ERROR: list[tuple[type[errors.HubError], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.VersionConflict, grpc.StatusCode.ABORTED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Compacted, grpc.StatusCode.OUT_OF_RANGE),
    (errors.StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.NoEligibleInstance, grpc.StatusCode.UNAVAILABLE),
    (errors.QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.TooManyCalls, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
]


def status_code_for(error: errors.HubError) -> grpc.StatusCode:
    for cls, code in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _pack(message) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message)
    return detail


def _error_metadata(error: errors.HubError) -> dict[str, str]:
    metadata = dict(error.metadata)
    if isinstance(error, errors.QuotaExceeded) and error.violations:
        # QuotaFailure has no fields for usage: the (first) violation's numbers
        # travel here, so clients need not parse descriptions.
        v = error.violations[0]
        metadata.setdefault("subject", v.subject)
        metadata.setdefault("limit", str(v.limit))
        metadata.setdefault("current", str(v.current))
        metadata.setdefault("requested", str(v.requested))
    return metadata


def to_status(error: errors.HubError) -> grpc.Status:
    code = status_code_for(error)
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason, domain=ERROR_DOMAIN, metadata=_error_metadata(error)
            )
        )
    ]
    if isinstance(error, errors.InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    if isinstance(error, errors.QuotaExceeded):
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=v.subject,
                            description=v.description,
                            quota_metric=error.metadata.get("resource", ""),
                            quota_value=v.limit,
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=error.message, details=details
    )
    return rpc_status.to_status(status)
