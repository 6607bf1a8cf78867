// The resuming loop behind HubClient.watch, as hub_client's resume_watch: a
// stream is reopened from the last revision it delivered + 1 after a retryable
// error and after the hub ends it normally (a replica stopping); a
// RESYNC_REQUIRED starts over from 0 (a fresh snapshot, diffed against what the
// caller already has). Reopens wait a jittered backoff that drops back to its
// first step only once the stream delivered a newer revision.
import {
  type Instance,
  WatchEventType,
  type WatchResponse,
  WatchResponseKind,
} from "@aitrading/central-hub-stubs";

import { Backoff } from "./backoff.js";
import { StatusCode, toHubError } from "./errors.js";

/** Statuses after which reopening makes sense; any other is thrown as a HubError. */
export const RETRYABLE: ReadonlySet<StatusCode> = new Set([
  StatusCode.UNAVAILABLE,
  StatusCode.DEADLINE_EXCEEDED,
  StatusCode.CANCELLED,
  StatusCode.INTERNAL,
  StatusCode.UNKNOWN,
]);

export interface ResumeOptions {
  startRevision?: bigint;
  signal?: AbortSignal;
  /** Told why each reopen happens ("UNAVAILABLE", "history compacted; resyncing", ...). */
  onInterrupt?: (why: string) => void;
  backoff?: Backoff;
}

interface WatchMessage {
  kind: number;
  header?: { revision: bigint };
  more?: boolean;
}

/** Every message of a hub watch stream across reopenings (RESYNC_REQUIRED included). */
export async function* resumeWatch<M extends WatchMessage>(
  open: (startRevision: bigint, signal: AbortSignal) => AsyncIterable<M>,
  options: ResumeOptions = {},
): AsyncGenerator<M, void, undefined> {
  const { signal, onInterrupt } = options;
  const backoff = options.backoff ?? new Backoff();
  let start = options.startRevision ?? 0n;
  let seen = -1n;
  while (!signal?.aborted) {
    const call = new AbortController();
    const stop = () => call.abort();
    signal?.addEventListener("abort", stop, { once: true });
    let why = "the hub ended the stream";
    try {
      for await (const msg of open(start, call.signal)) {
        const revision = msg.header?.revision ?? 0n;
        if (revision > seen) {
          seen = revision;
          backoff.reset();
        }
        yield msg;
        if (msg.kind === WatchResponseKind.RESYNC_REQUIRED) {
          start = 0n;
          why = "history compacted; resyncing";
          break;
        }
        if (!msg.more) start = revision + 1n; // mid-snapshot: resume from its start
      }
    } catch (err) {
      if (signal?.aborted) return;
      const error = toHubError(err);
      if (error === undefined) throw err;
      if (!RETRYABLE.has(error.code)) throw error;
      why = StatusCode[error.code] ?? String(error.code);
    } finally {
      call.abort();
      signal?.removeEventListener("abort", stop);
    }
    if (signal?.aborted) return;
    onInterrupt?.(why);
    await backoff.wait(signal);
  }
}

/** One change of a watched service. */
export interface WatchEvent {
  type: WatchEventType;
  instance: Instance;
  revision: bigint;
  /** True for the ADDED events of the first snapshot. */
  initial: boolean;
}

/** Registry events from Watch messages: a snapshot becomes the events that turn
 * what the caller knows into it (all ADDED the first time; after a resync, only
 * what changed), so a resync never repeats or loses an event. */
export async function* registryEvents(
  messages: AsyncIterable<WatchResponse>,
): AsyncGenerator<WatchEvent, void, undefined> {
  let known = new Map<string, Instance>();
  let snapshot: Map<string, Instance> | undefined;
  let first = true;
  for await (const msg of messages) {
    switch (msg.kind) {
      case WatchResponseKind.SNAPSHOT: {
        snapshot ??= new Map();
        for (const inst of msg.instances) snapshot.set(keyOf(inst), inst);
        if (msg.more) break;
        yield* diff(known, snapshot, msg.header?.revision ?? 0n, first);
        known = snapshot;
        snapshot = undefined;
        first = false;
        break;
      }
      case WatchResponseKind.EVENTS:
        for (const e of msg.events) {
          if (e.instance === undefined) continue;
          if (e.type === WatchEventType.REMOVED) known.delete(keyOf(e.instance));
          else known.set(keyOf(e.instance), e.instance);
          yield { type: e.type, instance: e.instance, revision: e.revision, initial: false };
        }
        break;
      case WatchResponseKind.RESYNC_REQUIRED:
        snapshot = undefined; // the next stream starts with a fresh snapshot
        break;
    }
  }
}

function diff(
  old: Map<string, Instance>,
  next: Map<string, Instance>,
  revision: bigint,
  first: boolean,
): WatchEvent[] {
  const events: WatchEvent[] = [];
  for (const [id, inst] of old) {
    if (!next.has(id)) events.push({ type: WatchEventType.REMOVED, instance: inst, revision, initial: false });
  }
  for (const [id, inst] of next) {
    const before = old.get(id);
    if (before === undefined) {
      events.push({ type: WatchEventType.ADDED, instance: inst, revision: inst.modRevision || revision, initial: first });
    } else if (before.modRevision !== inst.modRevision) {
      events.push({ type: WatchEventType.UPDATED, instance: inst, revision: inst.modRevision, initial: false });
    }
  }
  return events;
}

function keyOf(inst: Instance): string {
  return `${inst.service}\u0000${inst.instanceId}`;
}
