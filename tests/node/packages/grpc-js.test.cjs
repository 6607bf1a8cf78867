// The installed packages as CommonJS, over @grpc/grpc-js: HubClient on
// grpcJsTransport, and the stubs' grpc-js service definitions used directly.
// Run by tests/test_node_packages.py from the scratch folder the tarballs were
// installed in.
"use strict";
const assert = require("node:assert/strict");
const { test } = require("node:test");

const grpc = require("@grpc/grpc-js");
const client = require("@aitrading/central-hub-client");
const { grpcJsTransport } = require("@aitrading/central-hub-client/grpc-js");
const stubs = require("@aitrading/central-hub-stubs");
const { createGrpcJsClient, grpcServiceDefinition } = require("@aitrading/central-hub-stubs/grpc-js");

const scenario = require("./scenario.cjs");

const HUB_ADDR = process.env.HUB_ADDR;
const STALE = process.env.HUB_STALE_REVISION ? BigInt(process.env.HUB_STALE_REVISION) : undefined;

test("require() resolves to the packages' CommonJS builds", () => {
  assert.match(require.resolve("@aitrading/central-hub-stubs"), /central-hub-stubs\/dist\/cjs\/index\.js$/);
  assert.match(require.resolve("@aitrading/central-hub-client/grpc-js"), /central-hub-client\/dist\/cjs\/grpc-js\.js$/);
  const def = grpcServiceDefinition(stubs.RegistryService);
  assert.equal(def.getService.path, "/aitrading.hub.v1.RegistryService/GetService");
  assert.equal(def.watch.responseStream, true);
  assert.equal(def.getService.responseStream, false);
});

test("HubClient over grpc-js against a live hub", { skip: !HUB_ADDR && "HUB_ADDR not set", timeout: 60_000 }, async () => {
  await scenario.run({ client, stubs, transport: grpcJsTransport(HUB_ADDR), service: "node-grpcjs", staleRevision: STALE });
});

test("grpc-js clients from the stubs' definitions; grpc-status-details-bin decoded", { skip: !HUB_ADDR && "HUB_ADDR not set", timeout: 30_000 }, async () => {
  const registry = createGrpcJsClient(stubs.RegistryService, HUB_ADDR, grpc.credentials.createInsecure());
  const unary = (method, request) =>
    new Promise((resolve, reject) => registry[method](request, (err, res) => (err ? reject(err) : resolve(res))));
  try {
    const reg = await unary("register", { service: "node-grpcjs-raw", host: "10.41.0.1", port: 9100, protocol: stubs.Protocol.GRPC });
    assert.equal(reg.$typeName, "aitrading.hub.v1.RegisterResponse");
    assert.equal(reg.instance.instanceId, "10.41.0.1-9100");
    assert.equal(typeof reg.header.revision, "bigint");

    // A server stream: the snapshot.
    const stream = registry.watch({ service: "node-grpcjs-raw", startRevision: 0n });
    const [snapshot] = await new Promise((resolve, reject) => {
      stream.once("data", (msg) => resolve([msg]));
      stream.once("error", reject);
    });
    stream.cancel();
    assert.equal(snapshot.kind, stubs.WatchResponseKind.SNAPSHOT);
    assert.deepEqual(snapshot.instances.map((i) => i.instanceId), ["10.41.0.1-9100"]);

    await unary("deregister", { service: "node-grpcjs-raw", instanceId: "10.41.0.1-9100" });
    await assert.rejects(unary("keepAlive", { service: "node-grpcjs-raw", instanceId: "10.41.0.1-9100", leaseId: reg.instance.leaseId }), (err) => {
      assert.equal(err.code, grpc.status.NOT_FOUND);
      assert.ok(err.metadata.get("grpc-status-details-bin").length === 1);
      const status = stubs.statusDetails(err);
      assert.ok(["INSTANCE_NOT_FOUND", "LEASE_NOT_FOUND"].includes(status.reason), status.reason);
      assert.equal(status.errorInfo.domain, "hub.aitrading");
      // The client package types it the same way.
      const typed = client.toHubError(err);
      assert.ok(typed instanceof client.InstanceNotFound, String(typed));
      return true;
    });
  } finally {
    registry.close();
  }
});
