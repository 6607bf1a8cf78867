/** Exponential delays from `firstMs` to `capMs`, each drawn from [delay/2, delay]
 * so that many clients do not reconnect in step (hub_client's Backoff). */
export class Backoff {
  private nextMs: number;

  constructor(
    readonly firstMs = 100,
    readonly capMs = 5000,
  ) {
    this.nextMs = firstMs;
  }

  reset(): void {
    this.nextMs = this.firstMs;
  }

  nextDelay(): number {
    const delay = this.nextMs;
    this.nextMs = Math.min(delay * 2, this.capMs);
    return delay / 2 + Math.random() * (delay / 2);
  }

  /** Waits the next delay; resolves early when `signal` aborts. */
  wait(signal?: AbortSignal): Promise<void> {
    return sleep(this.nextDelay(), signal);
  }
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}
