import {
  create,
  createFileRegistry,
  toBinary,
  type DescEnum,
  type DescFile,
  type DescMessage,
  type FileRegistry,
} from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, type ConnectRouter } from "@connectrpc/connect";
import { ServerReflection as ServerReflectionV1 } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1alpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";

/**
 * Serves gRPC server reflection, as both `grpc.reflection.v1.ServerReflection`
 * and `grpc.reflection.v1alpha.ServerReflection` (older clients only know the
 * latter), so tools like `buf curl` and grpcurl can list and call services
 * without a copy of the .proto files.
 *
 * @param files generated file descriptors (`file_*` exports); their imports
 *   are followed, so well-known types need not be listed
 * @param serviceNames fully-qualified services that list_services returns;
 *   each must be declared in `files`
 * @throws Error if a service name is not declared in `files`
 */
export function registerReflection(
  router: ConnectRouter,
  files: DescFile[],
  serviceNames: string[],
): void {
  const index = createReflectionIndex(files, serviceNames);
  // The two versions' messages are field-identical, so one generic handler
  // serves both; TypeScript checks each registration against its own schema.
  router.service(ServerReflectionV1, {
    serverReflectionInfo: (requests) => answerStream(index, requests),
  });
  router.service(ServerReflectionV1alpha, {
    serverReflectionInfo: (requests) => answerStream(index, requests),
  });
}

/** The fields of ServerReflectionRequest, common to v1 and v1alpha. */
interface ReflectionRequest {
  host: string;
  messageRequest:
    | {
        case: "fileByFilename" | "fileContainingSymbol" | "allExtensionNumbersOfType" | "listServices";
        value: string;
      }
    | { case: "fileContainingExtension"; value: { containingType: string; extensionNumber: number } }
    | { case: undefined; value?: undefined };
}

/** The message_response oneof of ServerReflectionResponse, common to v1 and v1alpha. */
type ReflectionAnswer =
  | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
  | { case: "allExtensionNumbersResponse"; value: { baseTypeName: string; extensionNumber: number[] } }
  | { case: "listServicesResponse"; value: { service: { name: string }[] } }
  | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };

interface ReflectionIndex {
  readonly registry: FileRegistry;
  readonly serviceNames: readonly string[];
  /** Encoded FileDescriptorProto by file name, computed once. */
  readonly encoded: ReadonlyMap<string, Uint8Array>;
  /** The file declaring each fully-qualified symbol, members included. */
  readonly symbols: ReadonlyMap<string, DescFile>;
}

function createReflectionIndex(files: DescFile[], serviceNames: string[]): ReflectionIndex {
  // A FileDescriptorSet must list every file after its imports.
  const ordered: DescFile[] = [];
  const seen = new Set<string>();
  const visit = (file: DescFile) => {
    if (seen.has(file.proto.name)) {
      return;
    }
    seen.add(file.proto.name);
    file.dependencies.forEach(visit);
    ordered.push(file);
  };
  files.forEach(visit);

  const registry = createFileRegistry(
    create(FileDescriptorSetSchema, { file: ordered.map((file) => file.proto) }),
  );
  for (const name of serviceNames) {
    if (registry.getService(name) === undefined) {
      throw new Error(`reflection: service ${name} is not declared in the given files`);
    }
  }

  const encoded = new Map<string, Uint8Array>();
  const symbols = new Map<string, DescFile>();
  for (const file of registry.files) {
    encoded.set(file.proto.name, toBinary(FileDescriptorProtoSchema, file.proto));
    indexSymbols(file, symbols);
  }
  return { registry, serviceNames: [...serviceNames], encoded, symbols };
}

// The registry only resolves types; clients also ask for methods, fields and
// enum values (grpcurl's `describe pkg.Svc.Method`), so every name is indexed.
function indexSymbols(file: DescFile, symbols: Map<string, DescFile>): void {
  const add = (name: string) => {
    if (!symbols.has(name)) {
      symbols.set(name, file);
    }
  };
  const addEnum = (desc: DescEnum) => {
    add(desc.typeName);
    // Enum values are scoped as siblings of their enum, as in C++.
    const scope = desc.typeName.slice(0, desc.typeName.length - desc.name.length);
    for (const value of desc.values) {
      add(scope + value.name);
    }
  };
  const addMessage = (desc: DescMessage) => {
    add(desc.typeName);
    for (const member of [...desc.fields, ...desc.oneofs]) {
      add(`${desc.typeName}.${member.name}`);
    }
    desc.nestedMessages.forEach(addMessage);
    // nestedMessages hides the synthetic map entry types; the proto has them.
    for (const nested of desc.proto.nestedType) {
      add(`${desc.typeName}.${nested.name}`);
    }
    desc.nestedEnums.forEach(addEnum);
    for (const ext of desc.nestedExtensions) {
      add(ext.typeName);
    }
  };
  for (const service of file.services) {
    add(service.typeName);
    for (const method of service.methods) {
      add(`${service.typeName}.${method.name}`);
    }
  }
  file.messages.forEach(addMessage);
  file.enums.forEach(addEnum);
  for (const ext of file.extensions) {
    add(ext.typeName);
  }
}

/** Answers each request of one ServerReflectionInfo stream, in order. */
async function* answerStream<R extends ReflectionRequest>(index: ReflectionIndex, requests: AsyncIterable<R>) {
  // Files already sent on this stream, so dependencies go out once.
  const sent = new Set<string>();
  for await (const request of requests) {
    yield {
      validHost: request.host,
      originalRequest: request,
      messageResponse: answer(index, request, sent),
    };
  }
}

function answer(index: ReflectionIndex, request: ReflectionRequest, sent: Set<string>): ReflectionAnswer {
  const { registry } = index;
  const req = request.messageRequest;
  switch (req.case) {
    case "listServices":
      return {
        case: "listServicesResponse",
        value: { service: index.serviceNames.map((name) => ({ name })) },
      };
    case "fileByFilename": {
      const file = registry.getFile(req.value);
      return file ? fileAnswer(index, file, sent) : failure(Code.NotFound, `unknown file ${req.value}`);
    }
    case "fileContainingSymbol": {
      const file = index.symbols.get(stripLeadingDot(req.value));
      return file ? fileAnswer(index, file, sent) : failure(Code.NotFound, `unknown symbol ${req.value}`);
    }
    case "fileContainingExtension": {
      const { containingType, extensionNumber } = req.value;
      const message = registry.getMessage(stripLeadingDot(containingType));
      const ext = message && registry.getExtensionFor(message, extensionNumber);
      return ext
        ? fileAnswer(index, ext.file, sent)
        : failure(Code.NotFound, `unknown extension ${extensionNumber} of ${containingType}`);
    }
    case "allExtensionNumbersOfType": {
      const message = registry.getMessage(stripLeadingDot(req.value));
      if (!message) {
        return failure(Code.NotFound, `unknown message type ${req.value}`);
      }
      const numbers: number[] = [];
      for (const desc of registry) {
        if (desc.kind === "extension" && desc.extendee.typeName === message.typeName) {
          numbers.push(desc.number);
        }
      }
      return {
        case: "allExtensionNumbersResponse",
        value: { baseTypeName: message.typeName, extensionNumber: numbers.sort((a, b) => a - b) },
      };
    }
    case undefined:
      return failure(Code.InvalidArgument, "empty reflection request: set one of the message_request fields");
  }
}

/**
 * The file and those of its transitive imports not yet sent on this stream.
 * The requested file itself always goes out, as grpc-go does, so a client
 * that asks twice never gets an empty answer.
 */
function fileAnswer(index: ReflectionIndex, file: DescFile, sent: Set<string>): ReflectionAnswer {
  const out: Uint8Array[] = [];
  const visited = new Set<string>();
  const queue = [file];
  for (let next = queue.shift(); next; next = queue.shift()) {
    const name = next.proto.name;
    if (visited.has(name)) {
      continue;
    }
    visited.add(name);
    if (next === file || !sent.has(name)) {
      sent.add(name);
      // The registry holds only files that were encoded above.
      out.push(index.encoded.get(name)!);
    }
    queue.push(...next.dependencies);
  }
  return { case: "fileDescriptorResponse", value: { fileDescriptorProto: out } };
}

function failure(code: Code, message: string): ReflectionAnswer {
  return { case: "errorResponse", value: { errorCode: code, errorMessage: message } };
}

function stripLeadingDot(name: string): string {
  return name.startsWith(".") ? name.slice(1) : name;
}
