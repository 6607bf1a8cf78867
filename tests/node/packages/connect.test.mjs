// The installed packages as ES modules, over @connectrpc/connect-node. Run by
// tests/test_node_packages.py from a scratch folder where the packed tarballs
// were installed (so every import below resolves to node_modules there).
import assert from "node:assert/strict";
import { test } from "node:test";

import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as client from "@aitrading/central-hub-client";
import { connectTransport } from "@aitrading/central-hub-client/connect";
import * as stubs from "@aitrading/central-hub-stubs";
import { TradingSignalSchema } from "@aitrading/central-hub-stubs/aitrading/trading/v1";

import scenario from "./scenario.cjs";

const HUB_ADDR = process.env.HUB_ADDR;
const STALE = process.env.HUB_STALE_REVISION ? BigInt(process.env.HUB_STALE_REVISION) : undefined;

test("ES modules resolve to the packages' ESM builds", () => {
  assert.match(import.meta.resolve("@aitrading/central-hub-stubs"), /node_modules\/@aitrading\/central-hub-stubs\/dist\/esm\/index\.js$/);
  assert.match(import.meta.resolve("@aitrading/central-hub-client/connect"), /central-hub-client\/dist\/esm\/connect\.js$/);
  assert.equal(TradingSignalSchema.typeName, "aitrading.trading.v1.TradingSignal");
});

test("HubClient over connect-node against a live hub", { skip: !HUB_ADDR && "HUB_ADDR not set", timeout: 60_000 }, async () => {
  await scenario.run({ client, stubs, transport: connectTransport(HUB_ADDR), service: "node-connect", staleRevision: STALE });
});

test("a ConnectError's details decode to ErrorInfo and BadRequest", { skip: !HUB_ADDR && "HUB_ADDR not set" }, async () => {
  const registry = createClient(stubs.RegistryService, createGrpcTransport({ baseUrl: `http://${HUB_ADDR}` }));
  // What the scenario registered is gone after its close().
  await assert.rejects(registry.getService({ service: "node-connect" }), (err) => {
    assert.ok(err instanceof ConnectError);
    assert.equal(err.code, Code.NotFound);
    const status = stubs.statusDetails(err);
    assert.equal(status.code, 5);
    assert.equal(status.reason, "SERVICE_NOT_FOUND");
    assert.equal(status.errorReason, stubs.ErrorReason.SERVICE_NOT_FOUND);
    assert.equal(status.errorInfo.domain, "hub.aitrading");
    assert.equal(status.errorInfo.metadata.service, "node-connect");
    return true;
  });
  await assert.rejects(registry.register({ service: "node-connect", host: "", port: 70000 }), (err) => {
    const status = stubs.statusDetails(err);
    assert.equal(status.code, 3);
    assert.equal(status.reason, "INVALID_ARGUMENT");
    const fields = status.badRequest.fieldViolations.map((v) => v.field).sort();
    assert.ok(fields.includes("host") && fields.includes("port"), fields.join());
    return true;
  });
});
