// @aitrading/central-hub-stubs: the hub API (package aitrading.hub.v1), the
// google.rpc status and error details, and the decoder of error statuses.
// The platform schemas (aitrading.business.v1, common.v1, ml.v1, trading.v1)
// are subpath exports: "@aitrading/central-hub-stubs/aitrading/trading/v1".
// @grpc/grpc-js definitions are in "@aitrading/central-hub-stubs/grpc-js".
export * from "./gen/aitrading/hub/v1.js";
export * from "./gen/google/rpc.js";
export {
  GRPC_STATUS_DETAILS_KEY,
  type StatusDetails,
  decodeStatus,
  errorReason,
  reasonName,
  statusDetails,
} from "./status.js";
