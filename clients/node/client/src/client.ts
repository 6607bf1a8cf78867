// HubClient: the hub's registry for Node services, over either transport, in the
// spirit of Python's hub_client: register (background keep-alive, re-registration
// on NOT_FOUND), discover, list, watch (resumed by revision, RESYNC handled),
// typed errors from ErrorInfo reasons. Anything else is one call away through
// unary() / serverStream() with the stubs' descriptors.
import {
  type Instance,
  RegistryService,
  type Service,
  type WatchResponse,
} from "@aitrading/central-hub-stubs";
import type {
  DescMessage,
  DescMethodServerStreaming,
  DescMethodUnary,
  MessageInitShape,
  MessageShape,
} from "@bufbuild/protobuf";

import { toHubError } from "./errors.js";
import { type RegisterInit, Registration, type RegistrationEvents, type RegistryCalls } from "./registration.js";
import type { CallOptions, HubTransport } from "./transport.js";
import { registryEvents, resumeWatch, type ResumeOptions, type WatchEvent } from "./watch.js";

/** Who the calls are made for: sent as x-tenant-id, x-user-id,
 * x-subscription-tier and x-correlation-id. */
export interface TenantContext {
  tenantId?: string;
  userId?: string;
  subscriptionTier?: "free" | "pro" | "enterprise";
  correlationId?: string;
}

export interface HubClientOptions {
  /** Tenant context for every call. */
  context?: TenantContext;
  /** Extra headers for every call (an authorization token, ...). */
  headers?: Record<string, string>;
  /** Deadline of each unary call, in ms (default 10000); watches have none. */
  timeoutMs?: number;
}

export interface RegisterOptions extends RegistrationEvents {
  /** Renew the lease in the background (default true). */
  keepAlive?: boolean;
}

export interface DiscoverOptions {
  legacyMode?: boolean;
  includeUnhealthy?: boolean;
}

export interface WatchOptions extends Omit<ResumeOptions, "backoff"> {
  legacyMode?: boolean;
}

function headersOf(options: HubClientOptions): Record<string, string> {
  const headers: Record<string, string> = { ...(options.headers ?? {}) };
  const ctx = options.context ?? {};
  if (ctx.tenantId) headers["x-tenant-id"] = ctx.tenantId;
  if (ctx.userId) headers["x-user-id"] = ctx.userId;
  if (ctx.subscriptionTier) headers["x-subscription-tier"] = ctx.subscriptionTier;
  if (ctx.correlationId) headers["x-correlation-id"] = ctx.correlationId;
  return headers;
}

export class HubClient {
  private readonly headers: Record<string, string>;
  private readonly timeoutMs: number;
  private readonly registrations: Set<Registration>;

  /**
   * @param transport connectTransport(address) from "@aitrading/central-hub-client/connect"
   *   or grpcJsTransport(address) from "@aitrading/central-hub-client/grpc-js".
   */
  constructor(
    readonly transport: HubTransport,
    private readonly options: HubClientOptions = {},
    shared?: Set<Registration>,
  ) {
    this.headers = headersOf(options);
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.registrations = shared ?? new Set();
  }

  /** A client on the same connection that calls for another tenant context. */
  withContext(context: TenantContext): HubClient {
    return new HubClient(
      this.transport,
      { ...this.options, context: { ...this.options.context, ...context } },
      this.registrations,
    );
  }

  /** Any unary RPC of the hub (a method of a service from the stubs package),
   * with this client's headers and deadline; errors are typed HubErrors. */
  async unary<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    request: MessageInitShape<I>,
    options: CallOptions = {},
  ): Promise<MessageShape<O>> {
    try {
      return await this.transport.unary(method, request, this.callOptions(options, this.timeoutMs));
    } catch (err) {
      throw toHubError(err) ?? err;
    }
  }

  /** Any server-streaming RPC of the hub; errors are typed HubErrors. */
  async *serverStream<I extends DescMessage, O extends DescMessage>(
    method: DescMethodServerStreaming<I, O>,
    request: MessageInitShape<I>,
    options: CallOptions = {},
  ): AsyncGenerator<MessageShape<O>, void, undefined> {
    try {
      yield* this.transport.serverStream(method, request, this.callOptions(options, undefined));
    } catch (err) {
      throw toHubError(err) ?? err;
    }
  }

  private callOptions(options: CallOptions, timeoutMs: number | undefined): CallOptions {
    return {
      ...options,
      headers: { ...this.headers, ...(options.headers ?? {}) },
      timeoutMs: options.timeoutMs ?? timeoutMs,
    };
  }

  private readonly registry: RegistryCalls = {
    register: (request) => this.unary(RegistryService.method.register, request),
    keepAlive: (request) => this.unary(RegistryService.method.keepAlive, request),
    deregister: (request) => this.unary(RegistryService.method.deregister, request),
  };

  /**
   * Registers an instance (RegisterRequest's fields: service, host, port,
   * protocol, version, metadata, ttlSeconds, ...) and keeps its lease alive until
   * deregister() or close().
   */
  async register(request: RegisterInit, options: RegisterOptions = {}): Promise<Registration> {
    const res = await this.registry.register(request);
    if (res.instance === undefined) throw new Error("Register answered without an instance");
    const registration = new Registration(this.registry, request, res.instance, options, (r) =>
      this.registrations.delete(r),
    );
    this.registrations.add(registration);
    if (options.keepAlive ?? true) registration.startKeepAlive();
    return registration;
  }

  /** The service and its instances this caller may use. Throws ServiceNotFound. */
  async discover(service: string, options: DiscoverOptions = {}): Promise<Service> {
    const res = await this.unary(RegistryService.method.getService, { service, ...options });
    if (res.service === undefined) throw new Error("GetService answered without a service");
    return res.service;
  }

  /** Every service this caller may use (all pages). */
  async listServices(options: { legacyMode?: boolean } = {}): Promise<Service[]> {
    const services: Service[] = [];
    let pageToken = "";
    do {
      const res = await this.unary(RegistryService.method.listServices, { ...options, pageToken });
      services.push(...res.services);
      pageToken = res.nextPageToken;
    } while (pageToken);
    return services;
  }

  /** A service's instances as ADDED (`initial` for the first snapshot) / UPDATED /
   * REMOVED events. Resumes after a disconnect or a hub restart from the last
   * revision + 1, without losing or repeating an event; after RESYNC_REQUIRED it
   * reads a fresh snapshot and yields only the differences. Stop it with
   * `signal` or by leaving the loop. */
  watch(service: string, options: WatchOptions = {}): AsyncGenerator<WatchEvent, void, undefined> {
    return registryEvents(this.watchMessages(service, options));
  }

  /** The raw Watch messages behind watch(), across reopenings (RESYNC_REQUIRED included). */
  watchMessages(service: string, options: WatchOptions = {}): AsyncGenerator<WatchResponse, void, undefined> {
    const { legacyMode = false, ...resume } = options;
    return resumeWatch(
      (startRevision, signal) =>
        this.serverStream(RegistryService.method.watch, { service, startRevision, legacyMode }, { signal }),
      resume,
    );
  }

  /** Deregisters every instance registered through this client (and its
   * withContext copies), then closes the transport. */
  async close(): Promise<void> {
    await Promise.allSettled([...this.registrations].map((r) => r.deregister()));
    this.transport.close();
  }
}

export type { Instance, Service };
