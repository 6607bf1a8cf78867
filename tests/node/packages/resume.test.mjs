// HubClient's watch logic without a hub: reopening from the last revision + 1
// after a retryable error, starting over from 0 after RESYNC_REQUIRED, a
// non-retryable status thrown as its typed error, and the events a resync's
// snapshot turns into. Streams are scripted; errors are real ConnectErrors.
import assert from "node:assert/strict";
import { test } from "node:test";

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { Backoff, PermissionDenied, registryEvents, resumeWatch } from "@aitrading/central-hub-client";
import {
  InstanceSchema,
  WatchEventType,
  WatchResponseKind,
  WatchResponseSchema,
} from "@aitrading/central-hub-stubs";

const inst = (id, modRevision) => create(InstanceSchema, { service: "s", instanceId: id, modRevision });
const msg = (kind, revision, fields = {}) => create(WatchResponseSchema, { kind, header: { revision }, ...fields });
const fast = () => new Backoff(1, 2);

test("a watch resumes from the last revision + 1, and from 0 after RESYNC_REQUIRED", async () => {
  const starts = [];
  const why = [];
  const scripts = [
    async function* () {
      yield msg(WatchResponseKind.SNAPSHOT, 10n, { instances: [inst("a", 5n), inst("b", 6n)] });
      yield msg(WatchResponseKind.EVENTS, 11n, {
        events: [{ type: WatchEventType.UPDATED, instance: inst("b", 11n), revision: 11n }],
      });
      throw new ConnectError("hub went away", Code.Unavailable);
    },
    async function* () {
      yield msg(WatchResponseKind.RESYNC_REQUIRED, 30n, { compactRevision: 25n });
    },
    async function* () {
      yield msg(WatchResponseKind.SNAPSHOT, 31n, { instances: [inst("b", 28n)], more: true });
      yield msg(WatchResponseKind.SNAPSHOT, 31n, { instances: [inst("c", 29n)] });
    },
  ];
  const messages = resumeWatch(
    (start) => {
      starts.push(start);
      return scripts.shift()();
    },
    { onInterrupt: (w) => why.push(w), backoff: fast() },
  );
  const events = [];
  for await (const e of registryEvents(messages)) {
    events.push([WatchEventType[e.type], e.instance.instanceId, e.revision, e.initial]);
    if (events.length === 6) break;
  }
  assert.deepEqual(starts, [0n, 12n, 0n]);
  assert.deepEqual(why, ["UNAVAILABLE", "history compacted; resyncing"]);
  assert.deepEqual(events, [
    ["ADDED", "a", 5n, true],
    ["ADDED", "b", 6n, true],
    ["UPDATED", "b", 11n, false],
    // The resync's snapshot (b changed, c new, a gone) as differences only.
    ["REMOVED", "a", 31n, false],
    ["UPDATED", "b", 28n, false],
    ["ADDED", "c", 29n, false],
  ]);
});

test("a non-retryable status ends the watch with its typed error", async () => {
  const messages = resumeWatch(
    async function* () {
      yield msg(WatchResponseKind.PROGRESS, 3n);
      throw new ConnectError("no", Code.PermissionDenied);
    },
    { backoff: fast() },
  );
  const kinds = [];
  await assert.rejects(
    (async () => {
      for await (const m of messages) kinds.push(m.kind);
    })(),
    (err) => err instanceof PermissionDenied && err.code === 7,
  );
  assert.deepEqual(kinds, [WatchResponseKind.PROGRESS]);
});
