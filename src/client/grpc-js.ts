/**
 * A generic @grpc/grpc-js client for a protobuf-es service descriptor: for
 * programs that already use grpc-js (the generated Connect client is the
 * simpler choice otherwise).
 */
import { create, fromBinary, toBinary, type DescMessage, type DescService, type MessageShape } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";

export type GrpcJsClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

/**
 * The HTTP/2 flow-control window this client opens, per stream and per connection,
 * unless `options` set another ("grpc-node.flow_control_window"). grpc-js opens
 * 64 KiB: a server may send that much before it must wait for the client to
 * acknowledge it, and a DownloadBackup then goes at the pace of those round trips.
 * The window bounds what may be in flight unread, not what the client keeps.
 */
export const FLOW_CONTROL_WINDOW = 4 << 20;

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
  return new Ctor(address.replace(/^https?:\/\//, ""), credentials, {
    "grpc-node.flow_control_window": FLOW_CONTROL_WINDOW,
    ...options,
  }) as GrpcJsClient;
}
