// A TypeScript program a team would write, compiled with `tsc --strict` against
// the installed packages' .d.ts and run by node (tests/test_node_packages.py).
// Exits non-zero on any failure.
import { HubClient, ServiceNotFound, type WatchEvent } from "@aitrading/central-hub-client";
import { grpcJsTransport } from "@aitrading/central-hub-client/grpc-js";
import { connectTransport } from "@aitrading/central-hub-client/connect";
import { type Instance, Protocol, statusDetails, WatchEventType } from "@aitrading/central-hub-stubs";

const address = process.env.HUB_ADDR;
if (!address) throw new Error("HUB_ADDR not set");

async function main(hubAddress: string): Promise<void> {
  for (const [name, transport] of [
    ["connect", connectTransport(hubAddress)],
    ["grpc-js", grpcJsTransport(hubAddress)],
  ] as const) {
    const hub = new HubClient(transport);
    const service = `ts-${name}`;
    try {
      const reg = await hub.register({ service, host: "10.42.0.1", port: 9200, protocol: Protocol.HTTP, ttlSeconds: 10 });
      const leaseId: bigint = reg.instance.leaseId;
      if (leaseId <= 0n) throw new Error("no lease");

      const found: Instance[] = (await hub.discover(service)).instances;
      if (found.map((i) => i.instanceId).join() !== "10.42.0.1-9200") throw new Error(`discover: ${found.length}`);

      const abort = new AbortController();
      for await (const event of hub.watch(service, { signal: abort.signal })) {
        const e: WatchEvent = event;
        if (e.type !== WatchEventType.ADDED || !e.initial) throw new Error(`first event ${WatchEventType[e.type]}`);
        break;
      }
      abort.abort();

      try {
        await hub.discover(`${service}-missing`);
        throw new Error("discover of a missing service succeeded");
      } catch (err) {
        if (!(err instanceof ServiceNotFound)) throw err;
        const reason: string = err.reason;
        if (reason !== "SERVICE_NOT_FOUND" || statusDetails(err.cause)?.reason !== reason) {
          throw new Error(`reason ${reason}`);
        }
      }
      await reg.deregister();
      console.log(`typescript over ${name}: register, discover, watch, typed error OK`);
    } finally {
      await hub.close();
    }
  }
}

await main(address);
