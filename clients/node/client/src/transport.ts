// What HubClient needs from a transport: one unary call and one server stream.
// connect-node ("./connect") and @grpc/grpc-js ("./grpc-js") each provide one;
// errors are left as the transport throws them (HubClient types them).
import type {
  DescMessage,
  DescMethodServerStreaming,
  DescMethodUnary,
  MessageInitShape,
  MessageShape,
} from "@bufbuild/protobuf";

export interface CallOptions {
  /** Request headers (gRPC metadata), such as the tenant context. */
  headers?: Record<string, string>;
  /** The call's deadline, in milliseconds from now. */
  timeoutMs?: number;
  /** Cancels the call. */
  signal?: AbortSignal;
}

export interface HubTransport {
  unary<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    request: MessageInitShape<I>,
    options: CallOptions,
  ): Promise<MessageShape<O>>;
  serverStream<I extends DescMessage, O extends DescMessage>(
    method: DescMethodServerStreaming<I, O>,
    request: MessageInitShape<I>,
    options: CallOptions,
  ): AsyncIterable<MessageShape<O>>;
  /** Closes the connection; calls after it fail. */
  close(): void;
}

/** "host:port" as an http:// URL (connect) or as is (grpc-js). */
export function splitAddress(address: string): { url: string; target: string; tls: boolean } {
  const match = /^(https?):\/\/(.*)$/.exec(address);
  if (match) return { url: address, target: match[2]!, tls: match[1] === "https" };
  return { url: `http://${address}`, target: address, tls: false };
}
