// A proxyless Node client (@grpc/grpc-js + @grpc/grpc-js-xds) balanced by the hub
// over xDS. Run by tests/test_xds_clients.py, which starts the hub and three
// backends, registers them as XDS_SERVICE and writes the bootstrap:
//
//   GRPC_XDS_BOOTSTRAP=bootstrap.json XDS_SERVICE=svc \
//   XDS_BACKENDS=b0=127.0.0.1:1,b1=127.0.0.1:2,b2=127.0.0.1:3 node --test tests/xds/node/
import assert from "node:assert/strict";
import { test } from "node:test";

import grpc from "@grpc/grpc-js";
import xds from "@grpc/grpc-js-xds";

xds.register();

const SERVICE = process.env.XDS_SERVICE;
const BACKENDS = Object.fromEntries(
  (process.env.XDS_BACKENDS ?? "").split(",").filter(Boolean).map((s) => s.split("=")),
);
const CONVERGE_MS = 20_000;
const passThrough = (buffer) => buffer;

/** One unary call of a raw-bytes method; resolves with the answer as text. */
function unary(client, method, body = Buffer.alloc(0), timeoutMs = 5_000) {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(
      method, passThrough, passThrough, body, { deadline: Date.now() + timeoutMs },
      (err, answer) => (err ? reject(err) : resolve(answer.toString())),
    );
  });
}

/** `n` calls of Who: calls per backend name, errors per status code. */
async function calls(client, n) {
  const backends = {};
  const errors = {};
  for (let i = 0; i < n; i++) {
    try {
      const name = await unary(client, "/hubtest.Backend/Who");
      backends[name] = (backends[name] ?? 0) + 1;
    } catch (err) {
      errors[err.code] = (errors[err.code] ?? 0) + 1;
    }
  }
  return { backends, errors };
}

/** Calls in batches until one satisfies `ok` (the client followed the hub). */
async function until(client, ok, n = 30) {
  const deadline = Date.now() + CONVERGE_MS;
  let last;
  while (Date.now() < deadline) {
    last = await calls(client, n);
    if (ok(last)) {
      return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`no batch converged within ${CONVERGE_MS} ms; last: ${JSON.stringify(last)}`);
}

/** A call to one backend directly (not through xDS): the test's controls. */
async function control(name, method, body) {
  const direct = new grpc.Client(BACKENDS[name], grpc.credentials.createInsecure());
  try {
    await unary(direct, method, Buffer.from(body), 30_000);
  } finally {
    direct.close();
  }
}

const setServing = (name, serving) => control(name, "/hubtest.Backend/SetServing", serving ? "1" : "0");
const act = (name, action) => control(name, "/hubtest.Backend/Do", action);

test(
  "grpc-js with grpc-js-xds is balanced by the hub, follows health and a hub restart",
  { skip: !SERVICE && "XDS_SERVICE not set", timeout: 120_000 },
  async () => {
    const client = new grpc.Client(`xds:///${SERVICE}`, grpc.credentials.createInsecure());
    try {
      // Spread over the three backends.
      await until(client, ({ backends }) => Object.keys(backends).length === 3, 60);
      const spread = await calls(client, 90);
      assert.deepEqual(Object.keys(spread.errors), []);
      assert.deepEqual(Object.keys(spread.backends).sort(), ["b0", "b1", "b2"]);

      // b1's health endpoint stops: once the hub marks it UNHEALTHY, it gets nothing.
      await setServing("b1", false);
      await until(client, ({ backends }) => !("b1" in backends));
      const without = await calls(client, 90);
      assert.deepEqual(Object.keys(without.errors), []);
      assert.deepEqual(Object.keys(without.backends).sort(), ["b0", "b2"]);

      // It recovers: calls reach it again.
      await setServing("b1", true);
      await until(client, ({ backends }) => "b1" in backends);

      // The hub restarts (empty at first, then loaded from etcd): calls go on,
      // and the client reconnects and follows the restarted hub.
      await act("b0", "restart-hub");
      const through = await calls(client, 60);
      assert.deepEqual(Object.keys(through.errors), []);
      await setServing("b2", false);
      await until(client, ({ backends }) => !("b2" in backends));
      await setServing("b2", true);
      await until(client, ({ backends }) => "b2" in backends);
    } finally {
      client.close();
    }
  },
);
