// HubClient's transport over @connectrpc/connect-node (real gRPC over HTTP/2).
import type { DescMessage, DescMethodServerStreaming, DescMethodUnary, MessageInitShape } from "@bufbuild/protobuf";
import { createGrpcTransport, type GrpcTransportOptions, Http2SessionManager } from "@connectrpc/connect-node";

import { type CallOptions, type HubTransport, splitAddress } from "./transport.js";

async function* one<T>(value: T): AsyncIterable<T> {
  yield value;
}

/**
 * A transport to the hub at `address` ("host:port", or an http:// or https:// URL).
 * `options` go to connect-node's createGrpcTransport (TLS options, interceptors...).
 */
export function connectTransport(address: string, options: Partial<GrpcTransportOptions> = {}): HubTransport {
  const { url } = splitAddress(address);
  // Our own session manager, so that close() can end the HTTP/2 connection;
  // one passed in options stays its owner's to close.
  const owned = options.sessionManager === undefined ? new Http2SessionManager(url, undefined, options.nodeOptions) : undefined;
  const transport = createGrpcTransport({ ...options, baseUrl: url, sessionManager: owned ?? options.sessionManager });
  return {
    async unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      request: MessageInitShape<I>,
      call: CallOptions,
    ) {
      const res = await transport.unary(method, call.signal, call.timeoutMs, call.headers, request);
      return res.message;
    },
    async *serverStream<I extends DescMessage, O extends DescMessage>(
      method: DescMethodServerStreaming<I, O>,
      request: MessageInitShape<I>,
      call: CallOptions,
    ) {
      const res = await transport.stream(method, call.signal, call.timeoutMs, call.headers, one(request));
      yield* res.message;
    },
    close() {
      owned?.abort();
    },
  };
}
