// Decodes the google.rpc.Status a gRPC error carries (the grpc-status-details-bin
// trailer): the hub's ErrorInfo (reason, domain, metadata), BadRequest,
// QuotaFailure and the other standard details. Works on what either Node
// transport throws, without importing either: a ConnectError (connect-node has
// parsed the trailer into `details`) or a grpc-js ServiceError (the raw trailer
// is in `metadata`).
import { createRegistry, fromBinary, type Message } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";

import { ErrorReason } from "./gen/aitrading/hub/v1/errors_pb.js";
import {
  type BadRequest,
  BadRequestSchema,
  type DebugInfo,
  DebugInfoSchema,
  type ErrorInfo,
  ErrorInfoSchema,
  file_google_rpc_error_details,
  type Help,
  HelpSchema,
  type LocalizedMessage,
  LocalizedMessageSchema,
  type PreconditionFailure,
  PreconditionFailureSchema,
  type QuotaFailure,
  QuotaFailureSchema,
  type RequestInfo,
  RequestInfoSchema,
  type ResourceInfo,
  ResourceInfoSchema,
  type RetryInfo,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";
import { type Status, StatusSchema } from "./gen/google/rpc/status_pb.js";

/** The trailer that carries a serialized google.rpc.Status. */
export const GRPC_STATUS_DETAILS_KEY = "grpc-status-details-bin";

const detailTypes = createRegistry(file_google_rpc_error_details);

/** What an error status says, its details decoded. */
export interface StatusDetails {
  /** The gRPC status code (3 INVALID_ARGUMENT, 5 NOT_FOUND, ...). */
  code: number;
  /** The status message, without a transport's prefix. */
  message: string;
  /** ErrorInfo.reason ("INSTANCE_NOT_FOUND"), "" when the status has none. */
  reason: string;
  /** The reason as the ErrorReason enum (UNSPECIFIED for none or an unknown one). */
  errorReason: ErrorReason;
  errorInfo?: ErrorInfo;
  badRequest?: BadRequest;
  quotaFailure?: QuotaFailure;
  preconditionFailure?: PreconditionFailure;
  retryInfo?: RetryInfo;
  resourceInfo?: ResourceInfo;
  requestInfo?: RequestInfo;
  debugInfo?: DebugInfo;
  help?: Help;
  localizedMessage?: LocalizedMessage;
  /** Every detail this package knows, in the order sent. */
  details: Message[];
}

/** The ErrorReason an ErrorInfo reason names ("INSTANCE_NOT_FOUND"); UNSPECIFIED
 * for "" or for a reason this package does not know (a newer hub's). */
export function errorReason(reason: string): ErrorReason {
  // protobuf-es names enum values without their shared prefix, as the wire does.
  const value = (ErrorReason as unknown as Record<string, unknown>)[reason];
  return typeof value === "number" ? (value as ErrorReason) : ErrorReason.UNSPECIFIED;
}

/** The ErrorInfo reason of an ErrorReason on the wire: INSTANCE_NOT_FOUND. */
export function reasonName(reason: ErrorReason): string {
  return ErrorReason[reason] ?? "UNSPECIFIED";
}

function collect(code: number, message: string, details: Message[]): StatusDetails {
  const out: StatusDetails = { code, message, reason: "", errorReason: ErrorReason.UNSPECIFIED, details };
  for (const d of details) {
    switch (d.$typeName) {
      case ErrorInfoSchema.typeName:
        out.errorInfo = d as ErrorInfo;
        out.reason = out.errorInfo.reason;
        out.errorReason = errorReason(out.reason);
        break;
      case BadRequestSchema.typeName:
        out.badRequest = d as BadRequest;
        break;
      case QuotaFailureSchema.typeName:
        out.quotaFailure = d as QuotaFailure;
        break;
      case PreconditionFailureSchema.typeName:
        out.preconditionFailure = d as PreconditionFailure;
        break;
      case RetryInfoSchema.typeName:
        out.retryInfo = d as RetryInfo;
        break;
      case ResourceInfoSchema.typeName:
        out.resourceInfo = d as ResourceInfo;
        break;
      case RequestInfoSchema.typeName:
        out.requestInfo = d as RequestInfo;
        break;
      case DebugInfoSchema.typeName:
        out.debugInfo = d as DebugInfo;
        break;
      case HelpSchema.typeName:
        out.help = d as Help;
        break;
      case LocalizedMessageSchema.typeName:
        out.localizedMessage = d as LocalizedMessage;
        break;
    }
  }
  return out;
}

/** Decodes a serialized google.rpc.Status (the grpc-status-details-bin value). */
export function decodeStatus(bytes: Uint8Array): StatusDetails {
  const status: Status = fromBinary(StatusSchema, bytes);
  const details: Message[] = [];
  for (const any of status.details) {
    const message = anyUnpack(any, detailTypes);
    if (message !== undefined) details.push(message);
  }
  return collect(status.code, status.message, details);
}

interface WireDetail {
  type: string;
  value: Uint8Array;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null;
}

/**
 * The status details of an error thrown by either Node transport:
 * - a ConnectError from @connectrpc/connect (its `details`, which connect-node
 *   read from the trailer);
 * - a ServiceError from @grpc/grpc-js (the grpc-status-details-bin entry of its
 *   `metadata`);
 * - the trailer's bytes themselves.
 * Returns undefined for anything else (not a gRPC error). A status without
 * details still gives its code and message, with reason "".
 */
export function statusDetails(error: unknown): StatusDetails | undefined {
  if (error instanceof Uint8Array) return decodeStatus(error);
  if (!isObject(error) || typeof error.code !== "number") return undefined;
  const code = error.code;
  if (Array.isArray(error.details)) {
    // ConnectError: details are {type, value} as received, or {desc, value} when
    // made locally; rawMessage is the message without connect's "[code]" prefix.
    const details: Message[] = [];
    for (const d of error.details as unknown[]) {
      if (!isObject(d)) continue;
      if (typeof d.type === "string" && d.value instanceof Uint8Array) {
        const wire = d as unknown as WireDetail;
        const schema = detailTypes.getMessage(wire.type);
        if (schema !== undefined) details.push(fromBinary(schema, wire.value));
      } else if (isObject(d.desc) && isObject(d.value) && typeof d.value.$typeName === "string") {
        details.push(d.value as unknown as Message);
      }
    }
    const message = typeof error.rawMessage === "string" ? error.rawMessage : String(error.message ?? "");
    return collect(code, message, details);
  }
  const metadata = error.metadata;
  if (isObject(metadata) && typeof metadata.get === "function") {
    // grpc-js ServiceError: `details` is the status message.
    const raw = (metadata.get as (key: string) => unknown[])(GRPC_STATUS_DETAILS_KEY)[0];
    const message = typeof error.details === "string" ? error.details : "";
    if (raw instanceof Uint8Array) {
      const decoded = decodeStatus(raw);
      return { ...decoded, code, message: decoded.message || message };
    }
    return collect(code, message, []);
  }
  return undefined;
}
