// Typed errors from gRPC status codes and the hub's google.rpc.ErrorInfo reasons,
// the same classes and the same choice (reason first, then code) as hub_client's.
import { ErrorReason, statusDetails, type StatusDetails } from "@aitrading/central-hub-stubs";

/** gRPC status codes (the numbers connect's Code and grpc-js's status use). */
export enum StatusCode {
  OK = 0,
  CANCELLED = 1,
  UNKNOWN = 2,
  INVALID_ARGUMENT = 3,
  DEADLINE_EXCEEDED = 4,
  NOT_FOUND = 5,
  ALREADY_EXISTS = 6,
  PERMISSION_DENIED = 7,
  RESOURCE_EXHAUSTED = 8,
  FAILED_PRECONDITION = 9,
  ABORTED = 10,
  OUT_OF_RANGE = 11,
  UNIMPLEMENTED = 12,
  INTERNAL = 13,
  UNAVAILABLE = 14,
  DATA_LOSS = 15,
  UNAUTHENTICATED = 16,
}

export interface FieldViolation {
  field: string;
  description: string;
}

/** One tenant limit a request would pass (the first one carries the numbers). */
export interface QuotaViolation {
  subject: string;
  description: string;
  resource: string;
  limit: number;
  current: number;
  requested: number;
}

/** Any error answer from the hub. */
export class HubError extends Error {
  /** The gRPC status code. */
  readonly code: StatusCode;
  /** The ErrorInfo reason ("INSTANCE_NOT_FOUND"); "" when the hub sent none. */
  readonly reason: string;
  /** The reason as the ErrorReason enum (UNSPECIFIED for none or an unknown one). */
  readonly errorReason: ErrorReason;
  /** The ErrorInfo metadata (for example `service`, `cause`). */
  readonly metadata: Record<string, string>;
  /** For INVALID_ARGUMENT: every bad field. */
  readonly fieldViolations: FieldViolation[];
  /** For QUOTA_EXCEEDED: the limits passed. */
  readonly quotaViolations: QuotaViolation[];
  /** Everything the status said, decoded. */
  readonly status: StatusDetails;

  constructor(status: StatusDetails, options?: { cause?: unknown }) {
    const code = status.code as StatusCode;
    super(
      `${StatusCode[code] ?? code}: ${status.message}` + (status.reason ? ` [${status.reason}]` : ""),
      options,
    );
    this.name = new.target.name;
    this.code = code;
    this.reason = status.reason;
    this.errorReason = status.errorReason;
    this.metadata = { ...(status.errorInfo?.metadata ?? {}) };
    this.fieldViolations = (status.badRequest?.fieldViolations ?? []).map((v) => ({
      field: v.field,
      description: v.description,
    }));
    this.quotaViolations = (status.quotaFailure?.violations ?? []).map((v, i) => ({
      subject: v.subject,
      description: v.description,
      resource: v.quotaMetric || (i === 0 ? (this.metadata.resource ?? "") : ""),
      // The numbers of the first violation travel in the ErrorInfo metadata.
      limit: i === 0 ? toInt(this.metadata.limit, Number(v.quotaValue)) : Number(v.quotaValue),
      current: i === 0 ? toInt(this.metadata.current, 0) : 0,
      requested: i === 0 ? toInt(this.metadata.requested, 0) : 0,
    }));
    this.status = status;
  }
}

function toInt(value: string | undefined, fallback: number): number {
  const n = value === undefined ? NaN : Number.parseInt(value, 10);
  return Number.isNaN(n) ? fallback : n;
}

/** The request had bad fields; see `fieldViolations`. */
export class InvalidArgument extends HubError {}
/** The thing named does not exist. */
export class NotFound extends HubError {}
/** No instance of the service is registered. */
export class ServiceNotFound extends NotFound {}
/** The instance (or its lease) is gone; it must register again. */
export class InstanceNotFound extends NotFound {}
/** The thing to create exists already. */
export class AlreadyExists extends HubError {}
/** A compare-and-set write lost: someone else wrote first. */
export class VersionConflict extends HubError {}
/** The request is valid but the state does not allow it now. */
export class FailedPrecondition extends HubError {}
/** A revision asked for is older than the history the hub keeps. */
export class RevisionCompacted extends HubError {}
/** The hub, or the etcd behind it, cannot serve right now; retrying may help. */
export class Unavailable extends HubError {}
/** Nothing may be picked; `cause` names the rule that removed the last instances. */
export class NoEligibleInstance extends Unavailable {
  get ineligibility(): string {
    return this.metadata.cause ?? "";
  }
}
/** The fleet-wide circuit refuses calls. */
export class CircuitOpen extends Unavailable {}
/** This caller is over its share of the hub (calls per second or open streams). */
export class RateLimited extends Unavailable {}
/** Over a tenant limit; see `quotaViolations`. */
export class QuotaExceeded extends HubError {}
/** No credentials, or bad ones. */
export class Unauthenticated extends HubError {}
/** The caller may not do this (role, tenant or tier). */
export class PermissionDenied extends HubError {}
/** The caller's subscription tier may not use this service. */
export class TierTooLow extends PermissionDenied {}

type HubErrorClass = new (status: StatusDetails, options?: { cause?: unknown }) => HubError;

const BY_REASON = new Map<ErrorReason, HubErrorClass>([
  [ErrorReason.SERVICE_NOT_FOUND, ServiceNotFound],
  [ErrorReason.INSTANCE_NOT_FOUND, InstanceNotFound],
  [ErrorReason.LEASE_NOT_FOUND, InstanceNotFound],
  [ErrorReason.VERSION_CONFLICT, VersionConflict],
  [ErrorReason.REVISION_COMPACTED, RevisionCompacted],
  [ErrorReason.NO_ELIGIBLE_INSTANCE, NoEligibleInstance],
  [ErrorReason.CIRCUIT_OPEN, CircuitOpen],
  [ErrorReason.QUOTA_EXCEEDED, QuotaExceeded],
  [ErrorReason.CALLER_RATE_LIMITED, RateLimited],
  [ErrorReason.CALLER_STREAM_LIMIT, RateLimited],
  [ErrorReason.SUBSCRIPTION_TIER_TOO_LOW, TierTooLow],
]);

const BY_CODE = new Map<StatusCode, HubErrorClass>([
  [StatusCode.INVALID_ARGUMENT, InvalidArgument],
  [StatusCode.NOT_FOUND, NotFound],
  [StatusCode.ALREADY_EXISTS, AlreadyExists],
  [StatusCode.ABORTED, VersionConflict],
  [StatusCode.FAILED_PRECONDITION, FailedPrecondition],
  [StatusCode.OUT_OF_RANGE, RevisionCompacted],
  [StatusCode.UNAVAILABLE, Unavailable],
  [StatusCode.DEADLINE_EXCEEDED, Unavailable],
  // The hub replica stopped with the call in flight: another may serve it.
  [StatusCode.CANCELLED, Unavailable],
  [StatusCode.RESOURCE_EXHAUSTED, QuotaExceeded],
  [StatusCode.UNAUTHENTICATED, Unauthenticated],
  [StatusCode.PERMISSION_DENIED, PermissionDenied],
]);

/** The typed HubError of a transport's error (a ConnectError or a grpc-js
 * ServiceError); undefined when `error` is no gRPC status (a bug, an abort). */
export function toHubError(error: unknown): HubError | undefined {
  if (error instanceof HubError) return error;
  const status = statusDetails(error);
  if (status === undefined) return undefined;
  const cls = BY_REASON.get(status.errorReason) ?? BY_CODE.get(status.code) ?? HubError;
  return new cls(status, { cause: error });
}
