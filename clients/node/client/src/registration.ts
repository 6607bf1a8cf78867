// A registered instance that keeps its lease alive in the background, as
// hub_client's Registration: renews every third of the TTL; when the hub says
// the instance or its lease is gone (INSTANCE_NOT_FOUND, LEASE_NOT_FOUND: etcd
// restarted, the lease lapsed while the hub was unreachable) it registers again
// with the same instance id. deregister() stops that and removes the instance.
import type {
  DeregisterRequestSchema,
  Instance,
  KeepAliveRequestSchema,
  KeepAliveResponse,
  RegisterRequestSchema,
  RegisterResponse,
} from "@aitrading/central-hub-stubs";
import type { MessageInitShape } from "@bufbuild/protobuf";

import { NotFound } from "./errors.js";

/** The registry calls a Registration makes (through HubClient, errors typed). */
export interface RegistryCalls {
  register(request: RegisterInit): Promise<RegisterResponse>;
  keepAlive(request: MessageInitShape<typeof KeepAliveRequestSchema>): Promise<KeepAliveResponse>;
  deregister(request: MessageInitShape<typeof DeregisterRequestSchema>): Promise<unknown>;
}

/** What register() takes: RegisterRequest's fields. */
export type RegisterInit = MessageInitShape<typeof RegisterRequestSchema>;

export interface RegistrationEvents {
  /** A keep-alive or re-registration failed (it is retried). Without this
   * handler the failure is a process warning (process.emitWarning). */
  onError?: (error: Error) => void;
  /** The instance was registered again after the hub lost it. */
  onReregistered?: (instance: Instance) => void;
}

export class Registration {
  /** The instance as the hub stored it (updated by each re-registration). */
  instance: Instance;
  /** Successful keep-alives so far. */
  renewals = 0;
  /** Re-registrations after a NOT_FOUND so far. */
  reregistrations = 0;
  private timer: NodeJS.Timeout | undefined;
  private inFlight: Promise<void> | undefined;
  private closed = false;

  /** @internal HubClient.register makes these. */
  constructor(
    private readonly call: RegistryCalls,
    private request: RegisterInit,
    instance: Instance,
    private readonly events: RegistrationEvents,
    private readonly onClose: (r: Registration) => void,
  ) {
    this.instance = instance;
    // Later registrations must update this instance, not make a new one.
    this.request = { ...request, instanceId: instance.instanceId };
  }

  get instanceId(): string {
    return this.instance.instanceId;
  }

  private get intervalMs(): number {
    return Math.max((this.instance.ttlSeconds * 1000) / 3, 500);
  }

  /** @internal Starts the background keep-alive. */
  startKeepAlive(): void {
    this.schedule(this.intervalMs);
  }

  private schedule(ms: number): void {
    if (this.closed) return;
    // unref: a forgotten registration does not keep the process alive.
    this.timer = setTimeout(() => {
      this.inFlight = this.tick().finally(() => (this.inFlight = undefined));
    }, ms);
    this.timer.unref();
  }

  private async tick(): Promise<void> {
    let delay = this.intervalMs;
    try {
      await this.keepAlive();
    } catch (err) {
      if (this.closed) return;
      if (err instanceof NotFound) {
        try {
          await this.reregister();
        } catch (again) {
          this.report(again);
          delay = Math.min(1000, delay);
        }
      } else {
        // The hub or etcd is unreachable: retry soon, the lease may still live.
        this.report(err);
        delay = Math.min(1000, delay);
      }
    }
    this.schedule(delay);
  }

  private report(err: unknown): void {
    const error = err instanceof Error ? err : new Error(String(err));
    if (this.events.onError) this.events.onError(error);
    else process.emitWarning(`keep-alive of ${this.instance.service}/${this.instanceId} failed: ${error.message}`, "HubClientWarning");
  }

  private async reregister(): Promise<void> {
    const res = await this.call.register(this.request);
    if (res.instance === undefined) throw new Error("Register answered without an instance");
    this.instance = res.instance;
    this.reregistrations += 1;
    this.events.onReregistered?.(res.instance);
  }

  /** Renews the lease once; returns the TTL in seconds. Throws InstanceNotFound if gone. */
  async keepAlive(): Promise<number> {
    const res = await this.call.keepAlive({
      service: this.instance.service,
      instanceId: this.instance.instanceId,
      leaseId: this.instance.leaseId,
    });
    this.renewals += 1;
    return res.ttlSeconds;
  }

  /** Stops the keep-alive and removes the instance (already gone is fine). */
  async deregister(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    await this.inFlight?.catch(() => {});
    this.onClose(this);
    try {
      await this.call.deregister({ service: this.instance.service, instanceId: this.instance.instanceId });
    } catch (err) {
      if (!(err instanceof NotFound)) throw err;
    }
  }
}
