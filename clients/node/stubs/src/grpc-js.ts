// @grpc/grpc-js support, derived from the protobuf-es service descriptors rather
// than generated a second time: the messages a grpc-js client sends and receives
// are the same protobuf-es messages the rest of this package (and connect)
// uses, so one set of types serves both transports.
//
//   import * as grpc from "@grpc/grpc-js";
//   import { RegistryService } from "@aitrading/central-hub-stubs";
//   import { createGrpcJsClient } from "@aitrading/central-hub-stubs/grpc-js";
//   const registry = createGrpcJsClient(RegistryService, "127.0.0.1:7000", grpc.credentials.createInsecure());
//   registry.getService({ service: "orders" }, (err, res) => ...);
//
// grpcServiceDefinition() is the plain grpc-js ServiceDefinition, for
// grpc.makeGenericClientConstructor or a grpc-js server's addService.
import * as grpc from "@grpc/grpc-js";
import {
  create,
  type DescMessage,
  type DescMethod,
  type DescService,
  fromBinary,
  type MessageInitShape,
  type MessageShape,
  toBinary,
} from "@bufbuild/protobuf";

type AnyMessage = MessageShape<DescMessage>;

/** The grpc-js definition of one method: its path, streaming kinds, (de)serializers.
 * Requests may be full messages or init objects ({ service: "orders" }). */
export function grpcMethodDefinition(method: DescMethod): grpc.MethodDefinition<AnyMessage, AnyMessage> {
  const streamsIn = method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming";
  const streamsOut = method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming";
  return {
    path: `/${method.parent.typeName}/${method.name}`,
    requestStream: streamsIn,
    responseStream: streamsOut,
    originalName: method.localName,
    requestSerialize: (value) => Buffer.from(toBinary(method.input, create(method.input, value))),
    requestDeserialize: (bytes) => fromBinary(method.input, bytes),
    responseSerialize: (value) => Buffer.from(toBinary(method.output, create(method.output, value))),
    responseDeserialize: (bytes) => fromBinary(method.output, bytes),
  };
}

/** The grpc-js ServiceDefinition of a service, keyed by the methods' local
 * (lowerCamelCase) names, as connect's clients are. */
export function grpcServiceDefinition(service: DescService): grpc.ServiceDefinition {
  const definition: Record<string, grpc.MethodDefinition<AnyMessage, AnyMessage>> = {};
  for (const method of service.methods) definition[method.localName] = grpcMethodDefinition(method);
  return definition;
}

type Kind = DescMethod["methodKind"];
type Shape = { methodKind: Kind; input: DescMessage; output: DescMessage };

/** One method of a grpc-js client, typed from its descriptor. */
export type GrpcJsMethod<M extends Shape> = M["methodKind"] extends "unary"
  ? {
      (
        request: MessageInitShape<M["input"]>,
        metadata: grpc.Metadata,
        options: Partial<grpc.CallOptions>,
        callback: grpc.requestCallback<MessageShape<M["output"]>>,
      ): grpc.ClientUnaryCall;
      (
        request: MessageInitShape<M["input"]>,
        metadata: grpc.Metadata,
        callback: grpc.requestCallback<MessageShape<M["output"]>>,
      ): grpc.ClientUnaryCall;
      (
        request: MessageInitShape<M["input"]>,
        callback: grpc.requestCallback<MessageShape<M["output"]>>,
      ): grpc.ClientUnaryCall;
    }
  : M["methodKind"] extends "server_streaming"
    ? (
        request: MessageInitShape<M["input"]>,
        metadata?: grpc.Metadata,
        options?: Partial<grpc.CallOptions>,
      ) => grpc.ClientReadableStream<MessageShape<M["output"]>>
    : M["methodKind"] extends "client_streaming"
      ? (
          metadata: grpc.Metadata,
          options: Partial<grpc.CallOptions>,
          callback: grpc.requestCallback<MessageShape<M["output"]>>,
        ) => grpc.ClientWritableStream<MessageInitShape<M["input"]>>
      : (
          metadata?: grpc.Metadata,
          options?: Partial<grpc.CallOptions>,
        ) => grpc.ClientDuplexStream<MessageInitShape<M["input"]>, MessageShape<M["output"]>>;

/** A grpc-js client of a service: grpc.Client plus one typed method per RPC. */
export type GrpcJsClient<S extends DescService> = grpc.Client & {
  [K in keyof S["method"]]: S["method"][K] extends Shape ? GrpcJsMethod<S["method"][K]> : never;
};

/** A grpc-js client of `service` at `address` ("host:port"). */
export function createGrpcJsClient<S extends DescService>(
  service: S,
  address: string,
  credentials: grpc.ChannelCredentials,
  options?: grpc.ClientOptions,
): GrpcJsClient<S> {
  const Client = grpc.makeGenericClientConstructor(grpcServiceDefinition(service), service.name);
  return new Client(address, credentials, options) as unknown as GrpcJsClient<S>;
}
