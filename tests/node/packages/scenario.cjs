// The scenario both transports run against the live hub, through the installed
// packages only: each test file loads the packages its own way (ES modules or
// CommonJS) and hands them in, so this file imports nothing but node:assert.
"use strict";
const assert = require("node:assert/strict");

/** Polls `check` until it returns a truthy value, failing after `ms`. */
async function eventually(check, what, ms = 15_000) {
  const until = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > until) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Reads the next item of an async iterator, failing after `ms` instead of hanging. */
async function next(iterator, ms = 10_000) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`nothing within ${ms} ms`)), ms);
  });
  try {
    const result = await Promise.race([iterator.next(), timeout]);
    assert.equal(result.done, false, "the watch ended early");
    return result.value;
  } finally {
    clearTimeout(timer);
  }
}

/** Reads watch events until one matches. */
async function nextMatching(iterator, match) {
  for (;;) {
    const event = await next(iterator);
    if (match(event)) return event;
  }
}

/**
 * Register, discover, watch, re-registration after the hub lost the instance,
 * resync after a compacted revision, typed errors; over `transport`.
 * `client` is @aitrading/central-hub-client, `stubs` @aitrading/central-hub-stubs.
 */
async function run({ client, stubs, transport, service, staleRevision }) {
  const { HubClient, ServiceNotFound, InvalidArgument, TierTooLow, NotFound, HubError, QuotaExceeded, StatusCode } =
    client;
  const { Protocol, SubscriptionTier, WatchEventType, ErrorReason, RegistryService, TenantService, QuotaResource } =
    stubs;
  const hub = new HubClient(transport, { timeoutMs: 10_000 });
  const watchAbort = new AbortController();
  try {
    // Register: the background keep-alive renews every third of the TTL.
    const errors = [];
    const reg = await hub.register(
      {
        service,
        host: "10.40.0.1",
        port: 9001,
        protocol: Protocol.GRPC,
        version: "2.0.0",
        metadata: { lang: "node" },
        subscriptionRequirements: [SubscriptionTier.ENTERPRISE],
        ttlSeconds: 3,
      },
      { onError: (e) => errors.push(e) },
    );
    assert.equal(reg.instanceId, "10.40.0.1-9001");
    assert.equal(typeof reg.instance.leaseId, "bigint");

    // Discover.
    const svc = await hub.discover(service);
    assert.equal(svc.name, service);
    assert.deepEqual(
      svc.instances.map((i) => [i.instanceId, i.version, i.metadata.lang]),
      [["10.40.0.1-9001", "2.0.0", "node"]],
    );

    // Watch: the snapshot as ADDED (initial), then live changes.
    const watch = hub.watch(service, { signal: watchAbort.signal });
    const first = await next(watch);
    assert.equal(first.type, WatchEventType.ADDED);
    assert.equal(first.initial, true);
    assert.equal(first.instance.instanceId, "10.40.0.1-9001");
    const second = await hub.register({ service, host: "10.40.0.2", port: 9002 }, { keepAlive: false });
    const added = await nextMatching(watch, (e) => e.instance.instanceId === "10.40.0.2-9002");
    assert.equal(added.type, WatchEventType.ADDED);
    assert.equal(added.initial, false);
    assert.equal(added.revision, second.instance.modRevision);
    await second.deregister();
    const removed = await nextMatching(watch, (e) => e.instance.instanceId === "10.40.0.2-9002");
    assert.equal(removed.type, WatchEventType.REMOVED);

    // The hub loses the instance (removed behind the client's back): the next
    // keep-alive gets INSTANCE_NOT_FOUND and the client registers it again.
    await hub.unary(RegistryService.method.deregister, { service, instanceId: reg.instanceId });
    await nextMatching(watch, (e) => e.instance.instanceId === reg.instanceId && e.type === WatchEventType.REMOVED);
    const back = await nextMatching(watch, (e) => e.instance.instanceId === reg.instanceId);
    assert.equal(back.type, WatchEventType.ADDED);
    await eventually(() => reg.reregistrations >= 1, "the re-registration");
    assert.ok(reg.renewals >= 0);
    assert.deepEqual(errors, [], "keep-alive errors other than the NOT_FOUND it handled");
    assert.deepEqual((await hub.discover(service)).instances.map((i) => i.instanceId), [reg.instanceId]);

    // Resume from a compacted revision: RESYNC_REQUIRED, then a fresh snapshot.
    if (staleRevision !== undefined) {
      const why = [];
      const resync = hub.watch(service, {
        startRevision: staleRevision,
        signal: watchAbort.signal,
        onInterrupt: (w) => why.push(w),
      });
      const e = await next(resync);
      assert.equal(e.type, WatchEventType.ADDED);
      assert.equal(e.instance.instanceId, reg.instanceId);
      assert.deepEqual(why, ["history compacted; resyncing"]);
      await resync.return();
    }

    // Typed errors, chosen by the ErrorInfo reason.
    await assert.rejects(hub.discover(`${service}-missing`), (err) => {
      assert.ok(err instanceof ServiceNotFound, String(err));
      assert.ok(err instanceof NotFound && err instanceof HubError);
      assert.equal(err.code, StatusCode.NOT_FOUND);
      assert.equal(err.reason, "SERVICE_NOT_FOUND");
      assert.equal(err.errorReason, ErrorReason.SERVICE_NOT_FOUND);
      assert.equal(err.status.errorInfo.domain, "hub.aitrading");
      return true;
    });
    await assert.rejects(hub.register({ service: "Not A Dns Label", host: "10.40.0.3", port: 0 }), (err) => {
      assert.ok(err instanceof InvalidArgument, String(err));
      const fields = err.fieldViolations.map((v) => v.field);
      assert.ok(fields.includes("service"), fields.join());
      return true;
    });
    // A tenant without a record on the pro tier (from the header) may hold 100
    // concurrent requests: QuotaFailure and ErrorInfo give the numbers.
    const pro = hub.withContext({ subscriptionTier: "pro" });
    const allocate = { tenantId: `${service}-ghost`, resource: QuotaResource.CONCURRENT_REQUESTS, amount: 101n };
    await assert.rejects(pro.unary(TenantService.method.allocate, allocate), (err) => {
      assert.ok(err instanceof QuotaExceeded, String(err));
      assert.equal(err.reason, "QUOTA_EXCEEDED");
      assert.ok(err.status.quotaFailure.violations.length >= 1);
      const [v] = err.quotaViolations;
      assert.deepEqual([v.resource, v.limit, v.current, v.requested], ["concurrent_requests", 100, 0, 101]);
      return true;
    });
    const free = hub.withContext({ tenantId: `${service}-t`, subscriptionTier: "free" });
    await assert.rejects(free.discover(service), (err) => {
      assert.ok(err instanceof TierTooLow, String(err));
      assert.equal(err.reason, "SUBSCRIPTION_TIER_TOO_LOW");
      return true;
    });
  } finally {
    watchAbort.abort();
    // Deregisters what is left, then closes the connection.
    await hub.close();
  }
}

module.exports = { run, next, eventually };
