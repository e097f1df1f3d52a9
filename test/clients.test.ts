import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { promisify } from "node:util";
import { create, fromBinary, toBinary, toJson } from "@bufbuild/protobuf";
import { createClient, createContextValues, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  BackupSchema,
  BackupService,
  BackupStatus,
  type CreateBackupResponse,
  type DownloadBackupResponse,
  DownloadBackupRequestSchema,
  DownloadBackupResponseSchema,
  type GetStatsResponse,
  type ListBackupsResponse,
  RestoreBackupRequestSchema,
} from "../gen/backup/v1/backup_pb.js";
import { FLOW_CONTROL_WINDOW } from "../src/client/grpc-js.js";
import { createLeanGrpcPath } from "../src/rpc/grpc-lean.js";
import { chunkWireParts } from "../src/rpc/mappers.js";
import { startServer } from "../src/rpc/server.js";
import {
  createDatabase,
  createFixture,
  dropDatabase,
  grpcJsClient,
  grpcJsUnary,
  mintToken,
  seedDatabase,
  sql,
  type TestService,
  uniqueName,
  waitFor,
  grpcFrame,
  rawGrpcCall,
} from "./helpers.js";

const run = promisify(execFile);
const fx = createFixture("clients");
const target = fx.target;
let svc: TestService;
let token: string;

beforeAll(async () => {
  await createDatabase(target);
  await seedDatabase(target, 100);
  svc = await fx.service();
  token = await mintToken({ sub: "ops", role: "superadmin" });
});

afterAll(() => fx.cleanup());

describe("@grpc/grpc-js client", () => {
  it("creates, lists and counts backups, with metadata auth", async () => {
    const client = grpcJsClient(svc.url);
    const md = new grpc.Metadata();
    md.set("authorization", `Bearer ${token}`);
    try {
      const created = await grpcJsUnary<CreateBackupResponse>(client, "createBackup", { label: "grpc-js" }, md);
      expect(created.verified).toBe(true);
      expect(created.backup?.status).toBe(BackupStatus.VERIFIED);
      expect(Number(created.backup?.rowCount)).toBe(100 + 200 + 7 + 5 + 2 + 1);

      const list = await grpcJsUnary<ListBackupsResponse>(client, "listBackups", {}, md);
      expect(list.backups.map((b) => b.id)).toContain(created.backup!.id);

      const stats = await grpcJsUnary<GetStatsResponse>(client, "getStats", {}, md);
      expect(Number(stats.totalBackups)).toBeGreaterThanOrEqual(1);
    } finally {
      client.close();
    }
  });

  it("gets the same status codes and messages", async () => {
    const client = grpcJsClient(svc.url);
    try {
      const none = await grpcJsUnary(client, "getStats", {}, new grpc.Metadata()).catch((e: grpc.ServiceError) => e);
      expect((none as grpc.ServiceError).code).toBe(grpc.status.UNAUTHENTICATED);

      const md = new grpc.Metadata();
      md.set("authorization", `Bearer ${token}`);
      const bad = await grpcJsUnary(client, "listBackups", { pageSize: 9999 }, md).catch((e: grpc.ServiceError) => e);
      expect((bad as grpc.ServiceError).code).toBe(grpc.status.INVALID_ARGUMENT);
      // connect-node percent-encodes grpc-message with encodeURIComponent; grpc-js decodes it
      // with decodeURI, which leaves reserved characters such as ':' encoded.
      expect(decodeURIComponent((bad as grpc.ServiceError).details)).toMatch(/^page_size: must be from 1 to 500/);
    } finally {
      client.close();
    }
  });
});

describe("ListBackups in every wire format", () => {
  // Binary replies carry a page's records encoded once for all its callers; JSON replies
  // are built per call. Both must say the same, and a change must show at once.
  const auth = (): Parameters<typeof createGrpcTransport>[0]["interceptors"] => [
    (next) => (req) => (req.header.set("authorization", `Bearer ${token}`), next(req)),
  ];
  const transports: Record<string, () => Transport> = {
    "gRPC, binary": () => createGrpcTransport({ baseUrl: svc.url, interceptors: auth() }),
    "gRPC, JSON": () => createGrpcTransport({ baseUrl: svc.url, interceptors: auth(), useBinaryFormat: false }),
    "gRPC-web, binary": () => createGrpcWebTransport({ baseUrl: svc.url, httpVersion: "2", interceptors: auth() }),
    "Connect, binary": () => createConnectTransport({ baseUrl: svc.url, httpVersion: "2", interceptors: auth() }),
    "Connect, JSON": () =>
      createConnectTransport({ baseUrl: svc.url, httpVersion: "2", interceptors: auth(), useBinaryFormat: false }),
  };

  async function listings() {
    const out: Record<string, unknown> = {};
    for (const [name, transport] of Object.entries(transports)) {
      const client = createClient(BackupService, transport());
      const r = await client.listBackups({ pageSize: 10 });
      out[name] = { total: r.total, page: r.page, pages: r.pages, backups: r.backups.map((b) => toJson(BackupSchema, b)) };
    }
    const gjs = grpcJsClient(svc.url);
    const md = new grpc.Metadata();
    md.set("authorization", `Bearer ${token}`);
    try {
      const r = await grpcJsUnary<ListBackupsResponse>(gjs, "listBackups", { pageSize: 10 }, md);
      out["grpc-js"] = { total: r.total, page: r.page, pages: r.pages, backups: r.backups.map((b) => toJson(BackupSchema, b)) };
    } finally {
      gjs.close();
    }
    return out;
  }

  it("gives the same page, every field, to binary and JSON clients, and shows a change at once", async () => {
    const a = await svc.client.createBackup({ label: "wire a" });
    const b = await svc.client.createBackup({ label: "wire b" });
    const first = await listings();
    const reference = first["Connect, JSON"] as { total: bigint; backups: Record<string, unknown>[] };
    expect(reference.backups.length).toBeGreaterThanOrEqual(2);
    const newest = reference.backups[0]!;
    expect(newest).toMatchObject({ id: b.backup!.id, label: "wire b", status: "BACKUP_STATUS_VERIFIED" });
    expect(newest.checksum).toMatch(/^[0-9a-f]{64}$/);
    expect(newest.startedAt).toBeTruthy();
    expect(newest.metadata).toBeTruthy();
    for (const [name, listing] of Object.entries(first)) expect(listing, name).toEqual(reference);

    // Served again from the shared page: still the same.
    expect(await listings()).toEqual(first);

    // A write shows in the next listing, in every format.
    await svc.client.deleteBackup({ id: a.backup!.id });
    const after = await listings();
    for (const [name, listing] of Object.entries(after)) {
      const ids = (listing as { backups: { id: string }[] }).backups.map((x) => x.id);
      expect(ids, name).not.toContain(a.backup!.id);
      expect(ids, name).toContain(b.backup!.id);
      expect(listing, name).toEqual(after["Connect, JSON"]);
    }
  });

  it("shows a change another replica made, in every format, once the shared page expires", async () => {
    // Straight in the control database, as another replica's write: this process's cache is
    // not cleared, and its listing must still not keep the record's old form (it reuses a
    // record, and its encoding, only while the row's version is unchanged).
    const c = await svc.client.createBackup({ label: "before" });
    const labels = (l: unknown) => (l as { backups: { id: string; label?: string }[] }).backups.find((x) => x.id === c.backup!.id)?.label;
    expect(Object.values(await listings()).map(labels)).toEqual(Array(6).fill("before"));
    await sql(svc.control, "UPDATE backup_service.backup_history SET label = 'after' WHERE id = $1", [c.backup!.id]);
    const seen = await waitFor("the change to show in every format", async () => {
      const now = await listings();
      return Object.values(now).every((l) => labels(l) === "after") ? now : null;
    });
    for (const [name, listing] of Object.entries(seen)) expect(listing, name).toEqual(seen["Connect, JSON"]);
  });
});

describe("@grpc/grpc-js client from src/client/grpc-js.ts", () => {
  // grpc-js opens a 64 KiB window, which holds a download to the pace of round trips.
  it("opens a 4 MiB flow-control window, per stream and per connection, unless told otherwise", async () => {
    const seen = async (options?: grpc.ChannelOptions) => {
      const server = http2.createServer();
      let session: http2.Http2Session | undefined;
      server.on("stream", (stream) => {
        session = stream.session;
        stream.respond({ ":status": 200, "content-type": "application/grpc", "grpc-status": "12" }, { endStream: true });
      });
      await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
      const client = grpcJsClient(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, BackupService, options);
      try {
        const err = await grpcJsUnary(client, "getStats", {}, new grpc.Metadata()).catch((e: grpc.ServiceError) => e);
        expect((err as grpc.ServiceError).code).toBe(grpc.status.UNIMPLEMENTED);
        // The connection's window grows by a WINDOW_UPDATE that may trail the call.
        await expect.poll(() => session!.state.remoteWindowSize).toBeGreaterThan(1 << 20);
        return { stream: session!.remoteSettings.initialWindowSize, connection: session!.state.remoteWindowSize };
      } finally {
        client.close();
        session?.destroy();
        await new Promise((resolve) => server.close(resolve));
      }
    };
    const ours = await seen();
    expect(ours.stream).toBe(FLOW_CONTROL_WINDOW);
    expect(ours.connection).toBeGreaterThanOrEqual(FLOW_CONTROL_WINDOW - 65535);
    expect(FLOW_CONTROL_WINDOW).toBe(4 << 20);
    const smaller = await seen({ "grpc-node.flow_control_window": 2 << 20 });
    expect(smaller.stream).toBe(2 << 20);
  });
});

describe("TLS", () => {
  it("serves the same API over TLS when TLS_CERT_FILE and TLS_KEY_FILE are set", async () => {
    const dir = await fx.tempDir();
    const cert = path.join(dir, "cert.pem");
    const key = path.join(dir, "key.pem");
    await run("openssl", [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
      "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
      "-keyout", key, "-out", cert,
    ]);
    const tls = await fx.service({ TLS_CERT_FILE: cert, TLS_KEY_FILE: key });
    expect(tls.url).toMatch(/^https:/);
    const client = createClient(
      BackupService,
      createGrpcTransport({
        baseUrl: tls.url,
        nodeOptions: { ca: await readFile(cert) },
        interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${token}`), next(req))],
      }),
    );
    const stats = await client.getStats({});
    expect(stats.successRate).toBeGreaterThanOrEqual(0);
  });
});

describe("buf curl, by reflection", () => {
  const buf = "node_modules/.bin/buf";
  const base = ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--timeout", "30s"];

  it("lists the services without a token", async () => {
    const { stdout } = await run(buf, [...base, "--list-services", svc.url]);
    const services = stdout.trim().split("\n");
    expect(services).toEqual(
      expect.arrayContaining([
        "backup.v1.BackupService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
      ]),
    );
    const methods = await run(buf, [...base, "--list-methods", svc.url]);
    for (const m of ["GetStats", "CreateBackup", "ListBackups", "GetBackup", "VerifyBackup", "ListAuditEvents", "RestoreBackup", "DownloadBackup", "DeleteBackup", "CleanupExpiredBackups", "GetJobStatus"]) {
      expect(methods.stdout).toContain(`backup.v1.BackupService/${m}`);
    }
  });

  it("calls GetStats with a token, and is refused without one", async () => {
    const { stdout } = await run(buf, [
      ...base,
      "-H",
      `authorization: Bearer ${token}`,
      "-d",
      "{}",
      `${svc.url}/backup.v1.BackupService/GetStats`,
    ]);
    const stats = JSON.parse(stdout) as { totalBackups?: string; successRate?: number };
    expect(Number(stats.totalBackups)).toBeGreaterThanOrEqual(1);
    expect(stats.successRate).toBe(100);

    const denied = await run(buf, [...base, "-d", "{}", `${svc.url}/backup.v1.BackupService/GetStats`]).catch(
      (e: { code: number; stderr: string }) => e,
    );
    // buf curl's exit code is the gRPC code times 8: 16 (UNAUTHENTICATED) * 8.
    expect((denied as { code: number }).code).toBe(128);
  });
});

describe("unary gRPC: the lean path and connect-node's answer alike", () => {
  // Unary and server-streaming gRPC calls with uncompressed requests take src/rpc/grpc-lean.ts; the rest go through
  // connect-node. A request that names `grpc-encoding: gzip` but sends an uncompressed message
  // (flag 0, which gRPC allows) is the same call for connect-node, so each case is sent both ways
  // and the answers must agree: HTTP status, content type, grpc-status, grpc-message, details, body.
  let session: http2.ClientHttp2Session;
  beforeAll(() => {
    session = http2.connect(svc.url);
  });
  afterAll(() => session.close());

  const frame = grpcFrame;

  const call = (method: string, body: Buffer, headers: Record<string, string>) => rawGrpcCall(session, method, body, headers);

  async function bothWays(method: string, body: Buffer, headers: Record<string, string> = {}) {
    const { encoding: leanEncoding, ...lean } = await call(method, body, headers);
    const { encoding: connectEncoding, ...connect } = await call(method, body, { ...headers, "grpc-encoding": "gzip" });
    expect(lean).toEqual(connect);
    // Two different paths answered: connect-node names the reply compression it negotiated
    // (its messages stay uncompressed, see compressMinBytes); the lean path does not compress.
    expect([leanEncoding, connectEncoding]).toEqual([undefined, "gzip"]);
    return lean;
  }

  const authed = () => ({ authorization: `Bearer ${token}` });

  /** Sends each refused call both ways; the grpc-status of each, by name (no reply, never OK). */
  async function refusals(cases: [string, string, Buffer, Record<string, string>][]) {
    const seen: Record<string, unknown> = {};
    for (const [name, method, body, headers] of cases) {
      const answer = await bothWays(method, body, headers);
      expect(answer.status, name).toBe(200);
      expect(answer.trailers["grpc-status"], name).not.toBe("0");
      expect(answer.body, name).toBe("");
      seen[name] = answer.trailers["grpc-status"];
    }
    return seen;
  }

  it("answers successful calls with the same bytes", async () => {
    await svc.client.createBackup({ label: "lean path" });
    const stats = await bothWays("GetStats", frame([]), authed());
    expect(stats.trailers["grpc-status"]).toBe("0");
    expect(stats.contentType).toBe("application/grpc+proto");
    expect(stats.body.length).toBeGreaterThan(20);
    // page_size = 10 (field 2, varint)
    const page = await bothWays("ListBackups", frame([0x10, 10]), authed());
    expect(page.trailers["grpc-status"]).toBe("0");
    expect(Buffer.from(page.body, "hex").includes(Buffer.from("lean path"))).toBe(true);
  });

  it("refuses the same calls with the same status and message", async () => {
    const cases: [string, string, Buffer, Record<string, string>][] = [
      ["no token", "GetStats", frame([]), {}],
      ["a token that is not a JWT", "GetStats", frame([]), { authorization: "Bearer nope" }],
      ["a bad page size", "ListBackups", frame([0x10, 0xe7, 0x4e]), authed()],
      ["an unknown backup", "GetBackup", frame([0x0a, 0x03, 0x61, 0x62, 0x63]), authed()],
      ["a message that is not protobuf", "GetBackup", frame([0x0a, 0xff, 0xff]), authed()],
      ["no message", "GetStats", Buffer.alloc(0), authed()],
      ["two messages", "GetStats", Buffer.concat([frame([]), frame([])]), authed()],
      ["a cut-off message", "GetBackup", frame([0x0a, 0x03, 0x61, 0x62, 0x63]).subarray(0, 7), authed()],
      ["a malformed timeout", "GetStats", frame([]), { ...authed(), "grpc-timeout": "soon" }],
    ];
    expect(await refusals(cases)).toEqual({
      "no token": "16",
      "a token that is not a JWT": "16",
      "a bad page size": "3",
      "an unknown backup": "3",
      "a message that is not protobuf": "13",
      "no message": "12",
      "two messages": "12",
      "a cut-off message": "3",
      "a malformed timeout": "3",
    });
  });

  describe("server streams", () => {
    // A database whose backup is several 1 MiB chunks: 6 MB of hex digits, about 3 MB compressed.
    const source = uniqueName("bs_clients_dl");
    let backup: { id: string; fileName: string; fileSize: bigint; checksum: string };
    beforeAll(async () => {
      await createDatabase(source);
      await sql(
        source,
        `CREATE TABLE noise AS
           SELECT g AS id, (SELECT string_agg(md5(random()::text || g || i), '') FROM generate_series(1, 32) i) AS hex
             FROM generate_series(1, 6000) g`,
      );
      backup = (await svc.client.createBackup({ database: source })).backup!;
    });
    afterAll(() => dropDatabase(source));

    const downloadRequest = (id: string, offset = 0n) => frame(Buffer.from(toBinary(DownloadBackupRequestSchema, create(DownloadBackupRequestSchema, { id, offset }))));

    /** The replies of a gRPC response body, decoded. */
    function replies(hex: string): DownloadBackupResponse[] {
      const body = Buffer.from(hex, "hex");
      const out: DownloadBackupResponse[] = [];
      for (let at = 0; at < body.length; ) {
        expect(body[at], "an uncompressed message").toBe(0);
        const length = body.readUInt32BE(at + 1);
        out.push(fromBinary(DownloadBackupResponseSchema, body.subarray(at + 5, at + 5 + length)));
        at += 5 + length;
      }
      return out;
    }

    it("downloads with the same bytes both ways: the description, then the file's chunks in order", async () => {
      const onDisk = await readFile(path.join(svc.backupDir, backup.fileName));
      expect(onDisk.length).toBeGreaterThan(2 << 20);
      for (const offset of [0, 1000, onDisk.length]) {
        const answer = await bothWays("DownloadBackup", downloadRequest(backup.id, BigInt(offset)), authed());
        expect(answer.trailers["grpc-status"]).toBe("0");
        expect(answer.contentType).toBe("application/grpc+proto");
        const [info, ...chunks] = replies(answer.body);
        expect(info!.payload.case).toBe("info");
        expect(info!.payload.value).toMatchObject({ fileName: backup.fileName, fileSize: BigInt(onDisk.length), offset: BigInt(offset) });
        let at = offset;
        for (const c of chunks) {
          if (c.payload.case !== "chunk") throw new Error(`a ${c.payload.case} reply after the description`);
          expect(Number(c.payload.value.offset)).toBe(at);
          expect(Buffer.from(c.payload.value.data).equals(onDisk.subarray(at, at + c.payload.value.data.length))).toBe(true);
          at += c.payload.value.data.length;
        }
        expect(at).toBe(onDisk.length);
        if (offset === 0) expect(chunks.length).toBeGreaterThanOrEqual(3);
      }
    });

    it("refuses the same streaming calls with the same status and message", async () => {
      const restoreRequest = (id: string) =>
        frame(Buffer.from(toBinary(RestoreBackupRequestSchema, create(RestoreBackupRequestSchema, { id, confirmRestore: true, targetDatabase: "bs_never" }))));
      const unknown = "00000000-0000-4000-8000-000000000000";
      const cases: [string, string, Buffer, Record<string, string>][] = [
        ["no token", "DownloadBackup", downloadRequest(backup.id), {}],
        ["an unknown backup", "DownloadBackup", downloadRequest(unknown), authed()],
        ["an offset past the end", "DownloadBackup", downloadRequest(backup.id, 1n << 40n), authed()],
        ["an offset no file has", "DownloadBackup", downloadRequest(backup.id, 1n << 60n), authed()],
        ["an unknown backup, an offset no file has", "DownloadBackup", downloadRequest(unknown, 1n << 60n), authed()],
        ["no message", "DownloadBackup", Buffer.alloc(0), authed()],
        ["two messages", "DownloadBackup", Buffer.concat([downloadRequest(backup.id), downloadRequest(backup.id)]), authed()],
        ["a message that is not protobuf", "DownloadBackup", frame([0x0a, 0xff, 0xff]), authed()],
        ["a malformed timeout", "DownloadBackup", downloadRequest(backup.id), { ...authed(), "grpc-timeout": "soon" }],
        ["a restore without a token", "RestoreBackup", restoreRequest(backup.id), {}],
      ];
      expect(await refusals(cases)).toEqual({
        "no token": "16",
        "an unknown backup": "5",
        "an offset past the end": "11",
        "an offset no file has": "11",
        "an unknown backup, an offset no file has": "5",
        "no message": "12",
        "two messages": "12",
        "a message that is not protobuf": "13",
        "a malformed timeout": "3",
        "a restore without a token": "16",
      });
      const huge = await bothWays("DownloadBackup", downloadRequest(backup.id, 1n << 60n), authed());
      expect(decodeURIComponent(String(huge.trailers["grpc-message"] ?? ""))).toBe(
        `offset ${1n << 60n} is past the end of the file (${backup.fileSize} bytes)`,
      );
      // A restore reports its first phase before it fails, with the time it took: the same
      // status and message both ways.
      const lean = await call("RestoreBackup", restoreRequest(unknown), authed());
      const connect = await call("RestoreBackup", restoreRequest(unknown), { ...authed(), "grpc-encoding": "gzip" });
      expect(lean.trailers).toEqual(connect.trailers);
      expect(lean.trailers["grpc-status"]).toBe("5");
      expect(lean.body.length).toBeGreaterThan(0);
    });

    it("a grpc-js client downloads the file whole, and one that gives up midway is recorded as CANCELED and frees the file", async () => {
      const client = grpcJsClient(svc.url);
      const md = new grpc.Metadata();
      md.set("authorization", `Bearer ${token}`);
      const start = (onChunk?: (n: number, call: grpc.ClientReadableStream<DownloadBackupResponse>) => void) =>
        new Promise<{ bytes: Buffer; checksum: string; code: number }>((resolve) => {
          const call = (client.downloadBackup as (r: unknown, m: grpc.Metadata) => grpc.ClientReadableStream<DownloadBackupResponse>)(
            { id: backup.id },
            md,
          );
          const parts: Buffer[] = [];
          let checksum = "";
          call.on("data", (m: DownloadBackupResponse) => {
            if (m.payload.case === "info") checksum = m.payload.value.checksum;
            if (m.payload.case === "chunk") {
              parts.push(Buffer.from(m.payload.value.data));
              onChunk?.(parts.length, call);
            }
          });
          call.on("error", (e: grpc.ServiceError) => resolve({ bytes: Buffer.concat(parts), checksum, code: e.code }));
          call.on("end", () => resolve({ bytes: Buffer.concat(parts), checksum, code: grpc.status.OK }));
        });
      try {
        const whole = await start();
        expect(whole.code).toBe(grpc.status.OK);
        expect(whole.bytes.length).toBe(Number(backup.fileSize));
        expect(createHash("sha256").update(whole.bytes).digest("hex")).toBe(backup.checksum);

        const cut = await start((n, call) => n === 1 && call.cancel());
        expect(cut.code).toBe(grpc.status.CANCELLED);
        expect(cut.bytes.length).toBeLessThan(Number(backup.fileSize));
        const cancelled = await waitFor("the cancelled download in the audit log", async () => {
          const { events } = await svc.client.listAuditEvents({ backupId: backup.id, action: "DownloadBackup" });
          return events.find((e) => e.outcome === "CANCELED");
        });
        expect(cancelled.message).toMatch(/cancel/);
        // The download let go of the file: a hard delete is not refused as ABORTED.
        const deleted = await svc.client.deleteBackup({ id: backup.id, hardDelete: true });
        expect(deleted.fileRemoved).toBe(true);
      } finally {
        client.close();
      }
    });
  });

  it("writes a download chunk's wire form as toBinary does", () => {
    for (const offset of [0n, 1n, 127n, 128n, 1n << 40n]) {
      for (const length of [0, 1, 127, 128, 16_383, 16_384, 1 << 20]) {
        const data = Buffer.alloc(length, 0xa5);
        const parts = chunkWireParts(offset, data);
        const expected = toBinary(DownloadBackupResponseSchema, create(DownloadBackupResponseSchema, { payload: { case: "chunk", value: { offset, data } } }));
        expect(Buffer.concat(parts).equals(Buffer.from(expected)), `offset ${offset}, ${length} bytes`).toBe(true);
        // The data goes out as the buffer it is, not a copy.
        if (length > 0) expect(parts.at(-1)).toBe(data);
      }
    }
  });

  it("makes a call's AbortSignal only for a handler or interceptor that asks for it", async () => {
    // Node keeps AbortSignals through young-generation collections, so one made per call is
    // garbage for the full collector (bench/NOTES.md, "Listing latency"). The lean path makes
    // it on demand: nothing here may read it unless the call asks.
    let seen: AbortSignal | undefined;
    let interceptorSignal: PropertyDescriptor | undefined;
    const lean = createLeanGrpcPath({
      service: BackupService,
      impl: {
        getStats: (_req, ctx) => {
          if (ctx.requestHeader.get("x-read-signal") === "1") seen = ctx.signal;
          return {};
        },
      },
      interceptors: [
        (next) => (req) => {
          interceptorSignal = Object.getOwnPropertyDescriptor(req, "signal");
          return next(req);
        },
      ],
      contextValues: () => createContextValues(),
    });
    const server = await startServer({
      host: "127.0.0.1",
      port: 0,
      handler: (req, res) => {
        if (!lean.handle(req, res)) res.writeHead(404).end();
      },
    });
    const client = http2.connect(server.url);
    const Original = globalThis.AbortController;
    let made = 0;
    globalThis.AbortController = class extends Original {
      constructor() {
        super();
        made++;
      }
    };
    try {
      const getStats = (headers: Record<string, string>) =>
        new Promise<unknown>((resolve, reject) => {
          const req = client.request({ ":method": "POST", ":path": "/backup.v1.BackupService/GetStats", "content-type": "application/grpc", te: "trailers", ...headers });
          req.on("trailers", (t) => resolve(t["grpc-status"]));
          req.on("error", reject);
          req.resume();
          req.end(Buffer.alloc(5));
        });
      expect(await getStats({})).toBe("0");
      expect(await getStats({})).toBe("0");
      expect(made).toBe(0);
      expect(typeof interceptorSignal?.get).toBe("function");
      expect(seen).toBeUndefined();
      expect(await getStats({ "x-read-signal": "1" })).toBe("0");
      expect(made).toBe(1);
      // The signal a handler kept is aborted once the call is over.
      expect(seen?.aborted).toBe(true);
    } finally {
      globalThis.AbortController = Original;
      client.close();
      await server.close(100);
    }
  });

  it("refuses a compressed message it was not told how to decompress, and an oversized one", async () => {
    const compressed = await call("GetStats", frame([], 1), authed());
    expect(compressed.trailers["grpc-status"]).toBe("13");
    const huge = Buffer.alloc(5);
    huge.writeUInt32BE(64 * 1024 * 1024, 1);
    const oversized = await call("GetStats", huge, authed());
    expect(oversized.trailers["grpc-status"]).toBe("8");
    expect(decodeURIComponent(String(oversized.trailers["grpc-message"]))).toMatch(/larger than configured readMaxBytes 4194304/);
  });
});
