/**
 * A generic @grpc/grpc-js client for a protobuf-es service descriptor: for
 * programs that already use grpc-js (the generated Connect client is the
 * simpler choice otherwise).
 */
import { create, fromBinary, toBinary, type DescMessage, type DescService, type MessageShape } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";

export type GrpcJsClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

export function createGrpcJsClient(
  address: string,
  service: DescService,
  credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure(),
  options?: grpc.ChannelOptions,
): GrpcJsClient {
  const definition: Record<string, grpc.MethodDefinition<MessageShape<DescMessage>, MessageShape<DescMessage>>> = {};
  for (const m of service.methods) {
    definition[m.localName] = {
      path: `/${service.typeName}/${m.name}`,
      requestStream: m.methodKind === "client_streaming" || m.methodKind === "bidi_streaming",
      responseStream: m.methodKind === "server_streaming" || m.methodKind === "bidi_streaming",
      // Requests may be plain init objects, as with generated clients.
      requestSerialize: (msg: MessageShape<DescMessage>) => Buffer.from(toBinary(m.input, create(m.input, msg))),
      requestDeserialize: (b: Buffer) => fromBinary(m.input, b),
      responseSerialize: (msg: MessageShape<DescMessage>) => Buffer.from(toBinary(m.output, msg)),
      responseDeserialize: (b: Buffer) => fromBinary(m.output, b),
    };
  }
  const Ctor = grpc.makeGenericClientConstructor(definition as grpc.ServiceDefinition, service.typeName);
  return new Ctor(address.replace(/^https?:\/\//, ""), credentials, options) as GrpcJsClient;
}
