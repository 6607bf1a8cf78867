// @aitrading/central-hub-client: HubClient over either transport. The
// transports are subpath exports so that only the one used must be installed:
//   import { connectTransport } from "@aitrading/central-hub-client/connect";
//   import { grpcJsTransport } from "@aitrading/central-hub-client/grpc-js";
export {
  HubClient,
  type DiscoverOptions,
  type HubClientOptions,
  type Instance,
  type RegisterOptions,
  type Service,
  type TenantContext,
  type WatchOptions,
} from "./client.js";
export { Backoff } from "./backoff.js";
export * from "./errors.js";
export { Registration, type RegisterInit, type RegistrationEvents } from "./registration.js";
export type { CallOptions, HubTransport } from "./transport.js";
export { RETRYABLE, registryEvents, resumeWatch, type ResumeOptions, type WatchEvent } from "./watch.js";
export { WatchEventType, WatchResponseKind, ErrorReason } from "@aitrading/central-hub-stubs";
