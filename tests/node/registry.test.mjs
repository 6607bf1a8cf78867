// The generated Node stubs (gen/node) against a live hub, over real gRPC with
// @connectrpc/connect-node. Run by tests/test_polyglot.py, which starts the hub
// and passes its address in HUB_ADDR:
//
//   HUB_ADDR=127.0.0.1:50051 node --test tests/node/
import assert from "node:assert/strict";
import { test } from "node:test";

import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import {
  RegistryService,
  WatchEventType,
  WatchResponseKind,
} from "../../gen/node/src/aitrading/hub/v1/registry_pb.js";
import { Protocol, ResourceTier, SubscriptionTier } from "../../gen/node/src/aitrading/hub/v1/types_pb.js";

const HUB_ADDR = process.env.HUB_ADDR;
const SERVICE = "node-svc";

/** Reads the next message of a stream, failing after `ms` instead of hanging. */
async function next(iterator, ms = 10_000) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no watch message within ${ms} ms`)), ms);
  });
  try {
    const result = await Promise.race([iterator.next(), timeout]);
    assert.equal(result.done, false, "the watch stream ended early");
    return result.value;
  } finally {
    clearTimeout(timer);
  }
}

/** Reads watch messages until one carries an event matching `match`. */
async function nextEvent(iterator, match) {
  for (;;) {
    const msg = await next(iterator);
    assert.ok(
      msg.kind === WatchResponseKind.EVENTS || msg.kind === WatchResponseKind.PROGRESS,
      `unexpected watch message kind ${WatchResponseKind[msg.kind]}`,
    );
    const event = msg.events.find(match);
    if (event) {
      return { msg, event };
    }
  }
}

test("register, discover and watch through the generated Node stubs", { skip: !HUB_ADDR && "HUB_ADDR not set", timeout: 60_000 }, async () => {
  const transport = createGrpcTransport({ baseUrl: `http://${HUB_ADDR}` });
  const registry = createClient(RegistryService, transport);

  // Register.
  const first = await registry.register({
    service: SERVICE,
    host: "10.20.0.1",
    port: 7001,
    protocol: Protocol.GRPC,
    version: "1.2.3",
    metadata: { lang: "node", zone: "b" },
    subscriptionRequirements: [SubscriptionTier.PRO],
    resourceTier: ResourceTier.PREMIUM,
    ttlSeconds: 30,
    weight: 70,
  });
  assert.equal(first.instance.instanceId, "10.20.0.1-7001");
  assert.equal(typeof first.instance.leaseId, "bigint");
  assert.ok(first.instance.leaseId > 0n);
  assert.ok(first.header.revision > 0n);
  assert.ok(first.header.hubId.length > 0);

  // Discover it and check every field we sent came back.
  const found = await registry.getService({ service: SERVICE });
  assert.equal(found.service.name, SERVICE);
  assert.equal(found.service.instances.length, 1);
  const inst = found.service.instances[0];
  assert.equal(inst.service, SERVICE);
  assert.equal(inst.instanceId, "10.20.0.1-7001");
  assert.equal(inst.host, "10.20.0.1");
  assert.equal(inst.port, 7001);
  assert.equal(inst.protocol, Protocol.GRPC);
  assert.equal(inst.version, "1.2.3");
  assert.deepEqual(inst.metadata, { lang: "node", zone: "b" });
  assert.deepEqual(inst.subscriptionRequirements, [SubscriptionTier.PRO]);
  assert.equal(inst.resourceTier, ResourceTier.PREMIUM);
  assert.equal(inst.tenantCapable, true);
  assert.equal(inst.ttlSeconds, 30);
  assert.equal(inst.weight, 70);
  assert.equal(inst.leaseId, first.instance.leaseId);
  assert.ok(inst.registeredAt && inst.registeredAt.seconds > 0n);
  assert.equal(inst.modRevision, first.header.revision);
  assert.ok(found.header.revision >= inst.modRevision);

  // Watch from a snapshot (start_revision 0).
  const abort = new AbortController();
  const stream = registry.watch({ service: SERVICE, startRevision: 0n }, { signal: abort.signal });
  const watch = stream[Symbol.asyncIterator]();
  try {
    const snapshot = [];
    let snapshotRevision = 0n;
    for (;;) {
      const msg = await next(watch);
      assert.equal(msg.kind, WatchResponseKind.SNAPSHOT);
      snapshot.push(...msg.instances);
      snapshotRevision = msg.header.revision;
      if (!msg.more) break;
    }
    assert.deepEqual(
      snapshot.map((i) => i.instanceId),
      ["10.20.0.1-7001"],
    );
    assert.ok(snapshotRevision >= first.header.revision);

    // A second instance shows up as ADDED.
    const second = await registry.register({ service: SERVICE, host: "10.20.0.2", port: 7002, version: "1.2.4" });
    assert.equal(second.instance.instanceId, "10.20.0.2-7002");
    const added = await nextEvent(
      watch,
      (e) => e.instance?.instanceId === "10.20.0.2-7002",
    );
    assert.equal(added.event.type, WatchEventType.ADDED);
    assert.equal(added.event.instance.version, "1.2.4");
    assert.equal(added.event.revision, second.header.revision);
    assert.ok(added.msg.header.revision >= added.event.revision);

    // Deregister both; the second's removal is REMOVED on the watch.
    await registry.deregister({ service: SERVICE, instanceId: "10.20.0.2-7002" });
    const removed = await nextEvent(
      watch,
      (e) => e.instance?.instanceId === "10.20.0.2-7002" && e.type !== WatchEventType.ADDED,
    );
    assert.equal(removed.event.type, WatchEventType.REMOVED);
    await registry.deregister({ service: SERVICE, instanceId: "10.20.0.1-7001" });
  } finally {
    abort.abort();
    // Drain the aborted stream so that nothing is left pending.
    await watch.return?.().catch(() => {});
  }

  // Gone: the hub answers NOT_FOUND, which connect reports as Code.NotFound.
  await assert.rejects(registry.getService({ service: SERVICE }), (err) => {
    assert.ok(err instanceof ConnectError);
    assert.equal(err.code, Code.NotFound);
    return true;
  });
});
