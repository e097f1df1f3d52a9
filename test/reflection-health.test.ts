import { execFile } from "node:child_process";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { fromBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { BackupService, file_backup_v1_backup } from "../gen/backup/v1/backup_pb.js";
import {
  file_grpc_reflection_v1_reflection,
  ServerReflection as ServerReflectionV1,
  ServerReflectionRequestSchema as RequestV1Schema,
  type ServerReflectionResponse as ResponseV1,
} from "../gen/grpc/reflection/v1/reflection_pb.js";
import {
  file_grpc_reflection_v1alpha_reflection,
  ServerReflection as ServerReflectionV1alpha,
} from "../gen/grpc/reflection/v1alpha/reflection_pb.js";
import {
  file_health_v1_health,
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "../gen/health/v1/health_pb.js";
import { createHealth } from "../src/rpc/health.js";
import { registerReflection } from "../src/rpc/reflection.js";

const run = promisify(execFile);
const buf = fileURLToPath(new URL("../node_modules/.bin/buf", import.meta.url));

const LISTED = [
  "backup.v1.BackupService",
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
  "grpc.reflection.v1alpha.ServerReflection",
];

const health = createHealth(["backup.v1.BackupService"]);
const sessions = new Set<http2.ServerHttp2Session>();
let server: http2.Http2Server;
let baseUrl: string;
let sessionManager: Http2SessionManager;

beforeAll(async () => {
  server = http2.createServer(
    connectNodeAdapter({
      routes: (router) => {
        health.register(router);
        registerReflection(
          router,
          [
            file_backup_v1_backup,
            file_health_v1_health,
            file_grpc_reflection_v1_reflection,
            file_grpc_reflection_v1alpha_reflection,
          ],
          LISTED,
        );
        router.service(BackupService, { getStats: () => ({ totalBackups: 7n }) });
      },
    }),
  );
  server.on("session", (session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  sessionManager = new Http2SessionManager(baseUrl);
});

afterAll(async () => {
  sessionManager?.abort();
  if (!server) {
    return;
  }
  // close() waits for every session to end; buf curl or an abandoned stream
  // may leave one open, so end them outright.
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  for (const session of sessions) {
    session.destroy();
  }
  await closed;
});

beforeEach(() => health.setServing(true));

function transport() {
  // gRPC is HTTP/2 only: GrpcTransportOptions has no httpVersion to set.
  return createGrpcTransport({ baseUrl, sessionManager });
}

describe("grpc.health.v1.Health", () => {
  it("checks the server, a named service and an unknown service", async () => {
    const client = createClient(Health, transport());

    expect((await client.check({ service: "" })).status).toBe(ServingStatus.SERVING);
    expect((await client.check({ service: "backup.v1.BackupService" })).status).toBe(ServingStatus.SERVING);

    health.setServing(false);
    expect((await client.check({ service: "" })).status).toBe(ServingStatus.NOT_SERVING);
    expect((await client.check({ service: "backup.v1.BackupService" })).status).toBe(ServingStatus.NOT_SERVING);

    const err = await client.check({ service: "no.such.Service" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectError);
    expect(err).toMatchObject({ code: Code.NotFound, rawMessage: "unknown service no.such.Service" });
  });

  it("lists every known service", async () => {
    const client = createClient(Health, transport());
    health.setServing(false);
    const { statuses } = await client.list({});
    expect(Object.fromEntries(Object.entries(statuses).map(([name, { status }]) => [name, status]))).toEqual({
      "": ServingStatus.NOT_SERVING,
      "backup.v1.BackupService": ServingStatus.NOT_SERVING,
    });
  });

  it("watches: current status first, then each change, until the client aborts", async () => {
    const client = createClient(Health, transport());
    const abort = new AbortController();
    const stream = client
      .watch({ service: "backup.v1.BackupService" }, { signal: abort.signal })
      [Symbol.asyncIterator]();

    expect((await stream.next()).value).toMatchObject({ status: ServingStatus.SERVING });
    health.setServing(false);
    expect((await stream.next()).value).toMatchObject({ status: ServingStatus.NOT_SERVING });
    // Setting the same status again sends nothing; the next message is the flip back.
    health.setServing(false);
    health.setServing(true);
    expect((await stream.next()).value).toMatchObject({ status: ServingStatus.SERVING });

    // Breaking out of for-await does not cancel in connect 2.2; the signal does.
    abort.abort();
    await expect(stream.next()).rejects.toMatchObject({ code: Code.Canceled });

    // The server is still healthy and serving after the abandoned watch.
    expect((await client.check({ service: "" })).status).toBe(ServingStatus.SERVING);
  });

  it("watches an unknown service as SERVICE_UNKNOWN without ending the call", async () => {
    const client = createClient(Health, transport());
    const abort = new AbortController();
    const stream = client.watch({ service: "no.such.Service" }, { signal: abort.signal })[Symbol.asyncIterator]();

    expect((await stream.next()).value).toMatchObject({ status: ServingStatus.SERVICE_UNKNOWN });
    const pending = stream.next();
    health.setServing(false);
    const outcome = await Promise.race([
      pending.then(() => "message", () => "ended"),
      new Promise((resolve) => setTimeout(resolve, 200, "still open")),
    ]);
    expect(outcome).toBe("still open");
    abort.abort();
    await expect(pending).rejects.toMatchObject({ code: Code.Canceled });
  });
});

describe("grpc.reflection ServerReflectionInfo", () => {
  const fileNames = (res: ResponseV1) => {
    expect(res.messageResponse.case).toBe("fileDescriptorResponse");
    return res.messageResponse.case === "fileDescriptorResponse"
      ? res.messageResponse.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b).name)
      : [];
  };
  const errorOf = (res: ResponseV1) =>
    res.messageResponse.case === "errorResponse" ? res.messageResponse.value : res.messageResponse;

  it("answers each request in order on one v1 stream, errors included", async () => {
    const client = createClient(ServerReflectionV1, transport());
    const requests: MessageInitShape<typeof RequestV1Schema>[] = [
      { host: "h", messageRequest: { case: "fileContainingSymbol", value: "no.such.Symbol" } },
      { messageRequest: { case: "listServices", value: "" } },
      { messageRequest: { case: "fileContainingSymbol", value: "backup.v1.BackupService" } },
      { messageRequest: { case: "fileByFilename", value: "google/protobuf/timestamp.proto" } },
      { messageRequest: { case: "fileContainingSymbol", value: "backup.v1.BackupService.GetStats" } },
      { messageRequest: { case: "fileContainingSymbol", value: "grpc.health.v1.HealthCheckResponse.SERVING" } },
      { messageRequest: { case: "fileContainingSymbol", value: "grpc.health.v1.HealthListResponse.StatusesEntry" } },
      { messageRequest: { case: "fileByFilename", value: "no/such/file.proto" } },
      {
        messageRequest: {
          case: "fileContainingExtension",
          value: { containingType: "backup.v1.Backup", extensionNumber: 100 },
        },
      },
      { messageRequest: { case: "allExtensionNumbersOfType", value: "backup.v1.Backup" } },
      { messageRequest: { case: "allExtensionNumbersOfType", value: "no.such.Message" } },
      {},
    ];
    async function* send() {
      yield* requests;
    }
    const responses: ResponseV1[] = [];
    for await (const res of client.serverReflectionInfo(send())) {
      responses.push(res);
    }
    expect(responses).toHaveLength(requests.length);
    const [unknown, list, service, timestamp, method, enumValue, mapEntry, noFile, ext, extNumbers, noType, empty] =
      responses;

    // An unknown symbol is answered, not fatal: the stream goes on.
    expect(unknown.validHost).toBe("h");
    expect(unknown.originalRequest?.messageRequest).toEqual(requests[0].messageRequest);
    expect(errorOf(unknown)).toMatchObject({ errorCode: Code.NotFound, errorMessage: "unknown symbol no.such.Symbol" });

    expect(list.messageResponse.case).toBe("listServicesResponse");
    if (list.messageResponse.case === "listServicesResponse") {
      expect(list.messageResponse.value.service.map((s) => s.name)).toEqual(LISTED);
    }

    // The file comes with its transitive imports...
    expect(fileNames(service)).toEqual([
      "backup/v1/backup.proto",
      "google/protobuf/duration.proto",
      "google/protobuf/struct.proto",
      "google/protobuf/timestamp.proto",
    ]);
    // ...which are not sent again on the same stream; a file asked for by
    // name still is.
    expect(fileNames(timestamp)).toEqual(["google/protobuf/timestamp.proto"]);
    expect(fileNames(method)).toEqual(["backup/v1/backup.proto"]);
    expect(fileNames(enumValue)).toEqual(["health/v1/health.proto"]);
    expect(fileNames(mapEntry)).toEqual(["health/v1/health.proto"]);

    expect(errorOf(noFile)).toMatchObject({ errorCode: Code.NotFound });
    expect(errorOf(ext)).toMatchObject({ errorCode: Code.NotFound });
    expect(extNumbers.messageResponse).toMatchObject({
      case: "allExtensionNumbersResponse",
      value: { baseTypeName: "backup.v1.Backup", extensionNumber: [] },
    });
    expect(errorOf(noType)).toMatchObject({ errorCode: Code.NotFound });
    expect(errorOf(empty)).toMatchObject({ errorCode: Code.InvalidArgument });
  });

  it("serves v1alpha from the same implementation", async () => {
    const client = createClient(ServerReflectionV1alpha, transport());
    async function* send() {
      yield { messageRequest: { case: "fileContainingSymbol" as const, value: "no.such.Symbol" } };
      yield { messageRequest: { case: "fileContainingSymbol" as const, value: "grpc.health.v1.Health.Watch" } };
    }
    const responses = [];
    for await (const res of client.serverReflectionInfo(send())) {
      responses.push(res);
    }
    expect(responses.map((r) => r.messageResponse.case)).toEqual(["errorResponse", "fileDescriptorResponse"]);
    expect(responses[0].messageResponse.value).toMatchObject({ errorCode: Code.NotFound });
  });
});

describe("buf curl by reflection", () => {
  const curl = (...args: string[]) =>
    run(buf, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--timeout", "20s", ...args], {
      timeout: 30_000,
    });

  describe.each(["grpc-v1", "grpc-v1alpha"])("--reflect-protocol %s", (protocol) => {
    it("lists services", async () => {
      const { stdout } = await curl("--reflect-protocol", protocol, "--list-services", baseUrl);
      expect(stdout.trim().split("\n").sort()).toEqual([...LISTED].sort());
    });

    it("lists the methods of BackupService", async () => {
      const { stdout } = await curl("--reflect-protocol", protocol, "--list-methods", baseUrl);
      const methods = stdout.trim().split("\n");
      expect(methods).toEqual(
        expect.arrayContaining([
          "backup.v1.BackupService/GetStats",
          "backup.v1.BackupService/CreateBackup",
          "grpc.health.v1.Health/Watch",
        ]),
      );
    });

    it("calls GetStats with a JSON body", async () => {
      const { stdout } = await curl(
        "--reflect-protocol",
        protocol,
        "-d",
        "{}",
        `${baseUrl}/backup.v1.BackupService/GetStats`,
      );
      expect(JSON.parse(stdout)).toMatchObject({ totalBackups: "7" });
    });

    it("reports an unimplemented method with exit code 12 << 3", async () => {
      const err = await curl(
        "--reflect-protocol",
        protocol,
        "-d",
        "{}",
        `${baseUrl}/backup.v1.BackupService/ListBackups`,
      ).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: Code.Unimplemented << 3 });
    });
  });
});
