// HubClient's transport over @grpc/grpc-js, with the stubs package's
// definitions (the same protobuf-es messages as over connect).
import type { DescMessage, DescMethodServerStreaming, DescMethodUnary, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { grpcMethodDefinition } from "@aitrading/central-hub-stubs/grpc-js";

import { type CallOptions, type HubTransport, splitAddress } from "./transport.js";

function metadataOf(call: CallOptions): grpc.Metadata {
  const metadata = new grpc.Metadata();
  for (const [key, value] of Object.entries(call.headers ?? {})) metadata.set(key, value);
  return metadata;
}

function optionsOf(call: CallOptions): grpc.CallOptions {
  return call.timeoutMs === undefined ? {} : { deadline: Date.now() + call.timeoutMs };
}

/**
 * A transport to the hub at `address` ("host:port"; an https:// URL uses TLS).
 * `credentials` replace the default (insecure, or TLS for https://);
 * `options` are grpc-js channel options.
 */
export function grpcJsTransport(
  address: string,
  credentials?: grpc.ChannelCredentials,
  options?: grpc.ClientOptions,
): HubTransport {
  const { target, tls } = splitAddress(address);
  const creds = credentials ?? (tls ? grpc.credentials.createSsl() : grpc.credentials.createInsecure());
  const client = new grpc.Client(target, creds, options);
  return {
    unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      request: MessageInitShape<I>,
      call: CallOptions,
    ): Promise<MessageShape<O>> {
      const def = grpcMethodDefinition(method);
      return new Promise((resolve, reject) => {
        const cancel = () => pending.cancel();
        const pending = client.makeUnaryRequest(
          def.path,
          def.requestSerialize,
          def.responseDeserialize,
          request as MessageShape<DescMessage>,
          metadataOf(call),
          optionsOf(call),
          (err, res) => {
            call.signal?.removeEventListener("abort", cancel);
            if (err) reject(err);
            else resolve(res as MessageShape<O>);
          },
        );
        call.signal?.addEventListener("abort", cancel, { once: true });
      });
    },
    async *serverStream<I extends DescMessage, O extends DescMessage>(
      method: DescMethodServerStreaming<I, O>,
      request: MessageInitShape<I>,
      call: CallOptions,
    ): AsyncIterable<MessageShape<O>> {
      const def = grpcMethodDefinition(method);
      const stream = client.makeServerStreamRequest(
        def.path,
        def.requestSerialize,
        def.responseDeserialize,
        request as MessageShape<DescMessage>,
        metadataOf(call),
        optionsOf(call),
      );
      const cancel = () => stream.cancel();
      call.signal?.addEventListener("abort", cancel, { once: true });
      try {
        for await (const message of stream) yield message as MessageShape<O>;
      } finally {
        call.signal?.removeEventListener("abort", cancel);
        stream.cancel(); // a no-op once the call ended; stops it when the reader left early
      }
    },
    close() {
      client.close();
    },
  };
}
