/**
 * Edges of the RPC layer and of start-up: what a caller without a token can make the
 * service do before it is refused, deadlines that pass while a request is still coming,
 * and settings that must stop the service at once, naming the setting.
 */
import { spawn } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import http2 from "node:http2";
import net from "node:net";
import path from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DownloadBackupRequestSchema } from "../gen/backup/v1/backup_pb.js";
import { KeyConfigError, loadJwtKeys } from "../src/auth/keys.js";
import { checkServiceFiles, ConfigError, loadConfig } from "../src/config.js";
import { MAX_CONCURRENT_STREAMS, startServer } from "../src/rpc/server.js";
import { createDatabase, createFixture, grpcFrame, h2Reply, mintToken, rawGrpcCall, sql, waitFor, type RawGrpcAnswer, type TestService } from "./helpers.js";

const fx = createFixture("rpcedges");
let svc: TestService;
let token: string;

beforeAll(async () => {
  await createDatabase(fx.target);
  svc = await fx.service();
  token = await mintToken({ sub: "edges", role: "admin" });
});

afterAll(() => fx.cleanup());

type Answer = RawGrpcAnswer;

const frame = grpcFrame;

const authed = () => ({ authorization: `Bearer ${token}` });

describe("gRPC calls before the body: the lean path and connect-node's answer alike", () => {
  // As test/clients.test.ts does: `grpc-encoding: gzip` with an uncompressed message (flag 0)
  // is the same call for connect-node, which the lean path (src/rpc/grpc-lean.ts) leaves to it.
  let session: http2.ClientHttp2Session;
  beforeAll(() => {
    session = http2.connect(svc.url);
  });
  afterAll(() => session.close());

  /**
   * One raw gRPC call. With `end: false` the request's body is sent but never ended, as a
   * client that holds the stream open would; the answer must come anyway, within `waitMs`.
   */
  function call(method: string, body: Buffer, headers: Record<string, string>, opts: { end?: boolean; waitMs?: number } = {}): Promise<Answer> {
    return rawGrpcCall(session, method, body, headers, opts);
  }

  /** The newest audit event and how many there are. */
  async function auditHead() {
    const { events, total } = await svc.client.listAuditEvents({ pageSize: 1 });
    const e = events[0];
    return { total: Number(total), newest: e && { actor: e.actor, action: e.action, outcome: e.outcome, message: e.message, backupId: e.backupId } };
  }

  /** A call and the audit event it wrote, if any. */
  async function audited(method: string, body: Buffer, headers: Record<string, string>, opts?: { end?: boolean }) {
    const before = await auditHead();
    const answer = await call(method, body, headers, opts);
    const after = await auditHead();
    expect(after.total - before.total, "audit events written").toBeLessThanOrEqual(1);
    return { answer, audit: after.total > before.total ? after.newest : null };
  }

  /** Sends a call both ways: the answers and the audit events they wrote must agree. */
  async function bothWays(method: string, body: Buffer, headers: Record<string, string> = {}, opts?: { end?: boolean }) {
    const lean = await audited(method, body, headers, opts);
    const connect = await audited(method, body, { ...headers, "grpc-encoding": "gzip" }, opts);
    const { encoding: leanEncoding, ...leanAnswer } = lean.answer;
    const { encoding: connectEncoding, ...connectAnswer } = connect.answer;
    expect(leanAnswer).toEqual(connectAnswer);
    expect(lean.audit).toEqual(connect.audit);
    // Two different paths answered (see test/clients.test.ts).
    expect([leanEncoding, connectEncoding]).toEqual([undefined, "gzip"]);
    return { answer: leanAnswer, audit: lean.audit };
  }

  const oversized = () => {
    const head = Buffer.alloc(5);
    head.writeUInt32BE(64 * 1024 * 1024, 1);
    return head;
  };

  for (const method of ["RestoreBackup", "DownloadBackup"]) {
    it(`${method}: a call without a token is refused as UNAUTHENTICATED and audited whatever its body or timeout`, async () => {
      const cases: [string, Buffer, Record<string, string>][] = [
        ["no body", Buffer.alloc(0), {}],
        ["a body that is not gRPC", Buffer.from("not a gRPC body at all"), {}],
        ["a message that is not protobuf", frame([0x0a, 0xff, 0xff]), {}],
        ["a cut-off envelope", Buffer.from([0, 0, 0]), {}],
        ["an oversized message", oversized(), {}],
        ["a malformed timeout", frame([]), { "grpc-timeout": "soon" }],
        ["a token that is not a JWT, and a malformed timeout", Buffer.alloc(0), { authorization: "Bearer nope", "grpc-timeout": "soon" }],
      ];
      for (const [name, body, headers] of cases) {
        const { answer, audit } = await bothWays(method, body, headers);
        expect(answer.status, name).toBe(200);
        expect(answer.trailers["grpc-status"], name).toBe("16");
        expect(answer.body, name).toBe("");
        expect(audit, name).toMatchObject({ actor: "", action: method, outcome: "UNAUTHENTICATED" });
      }
    });

    it(`${method}: an admin's malformed request fails the same way both ways, and is audited`, async () => {
      const cases: [string, Buffer, Record<string, string>][] = [
        ["no message", Buffer.alloc(0), authed()],
        ["a cut-off envelope", Buffer.from([0, 0, 0]), authed()],
        ["a cut-off message", frame([0x0a, 0x03, 0x61, 0x62, 0x63]).subarray(0, 7), authed()],
        ["a message that is not protobuf", frame([0x0a, 0xff, 0xff]), authed()],
        ["two messages", Buffer.concat([frame([]), frame([])]), authed()],
        ["an oversized message", oversized(), authed()],
        ["a malformed timeout", frame([]), { ...authed(), "grpc-timeout": "soon" }],
      ];
      const seen: Record<string, unknown> = {};
      for (const [name, body, headers] of cases) {
        const { answer, audit } = await bothWays(method, body, headers);
        expect(answer.status, name).toBe(200);
        expect(answer.body, name).toBe("");
        expect(audit, name).toMatchObject({ actor: "edges", action: method, outcome: expect.not.stringMatching(/^OK$/) });
        seen[name] = answer.trailers["grpc-status"];
      }
      expect(seen).toEqual({
        "no message": "12",
        "a cut-off envelope": "3",
        "a cut-off message": "3",
        "a message that is not protobuf": "13",
        "two messages": "12",
        "an oversized message": "8",
        "a malformed timeout": "3",
      });
    });

    it(`${method}: a call without a token is refused at once, though its body never ends`, async () => {
      const { answer, audit } = await bothWays(method, frame([0x0a, 0x01]), {}, { end: false });
      expect(answer.trailers["grpc-status"]).toBe("16");
      expect(audit).toMatchObject({ action: method, outcome: "UNAUTHENTICATED" });
    });
  }

  it("ends a call whose body has not come by its deadline with DEADLINE_EXCEEDED", async () => {
    // An admin's calls (the body is read before the handler runs), unary and streaming,
    // on the lean path: the deadline ends the wait for the body.
    for (const method of ["GetStats", "DownloadBackup"]) {
      const started = Date.now();
      const answer = await call(method, frame([0x0a, 0x01]), { ...authed(), "grpc-timeout": "300m" }, { end: false, waitMs: 5000 });
      expect(answer.trailers["grpc-status"], method).toBe("4");
      expect(Date.now() - started, method).toBeLessThan(3000);
    }
  });

  it("limits the streams a client may open at once on one connection", async () => {
    const client = http2.connect(svc.url);
    try {
      const settings = await new Promise<http2.Settings>((resolve) => client.once("remoteSettings", resolve));
      expect(settings.maxConcurrentStreams).toBe(MAX_CONCURRENT_STREAMS);
      // Above the bench's 50 callers on one connection (bench/callers.ts), far below node's default of 2^32-1.
      expect(MAX_CONCURRENT_STREAMS).toBeGreaterThanOrEqual(100);
      expect(MAX_CONCURRENT_STREAMS).toBeLessThanOrEqual(1000);
    } finally {
      client.close();
    }
  });
});

/** Runs the service's entry point with `env` added; for settings that must stop it at once. */
function startMain(env: Record<string, string>): Promise<{ code: number | null; stderr: string; stdout: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
      env: { ...process.env, LOG_LEVEL: "info", GRPC_PORT: "0", METRICS_PORT: "off", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    let stdout = "";
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`the service did not stop: ${stdout}${stderr}`));
    }, 20_000);
    child.once("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stderr, stdout });
    });
  });
}

function configError(env: Record<string, string>): Error {
  try {
    loadConfig(env);
  } catch (e) {
    expect(e, JSON.stringify(Object.keys(env))).toBeInstanceOf(ConfigError);
    return e as Error;
  }
  throw new Error(`loadConfig accepted ${JSON.stringify(Object.keys(env))}`);
}

describe("database URLs with a stray %", () => {
  it("names the setting and the hint, never the password", () => {
    const cases: [Record<string, string>, RegExp][] = [
      [{ TARGET_DATABASE_URL: "postgres://app:50%off@db/prod" }, /TARGET_DATABASE_URL: .*password.*%25/],
      [{ CONTROL_DATABASE_URL: "postgres://app:hunter%2@db/ctl" }, /CONTROL_DATABASE_URL: .*password.*%25/],
      [{ TARGET_DATABASE_URL: "postgres://ap%p:x@db/prod" }, /TARGET_DATABASE_URL: .*user.*%25/],
      [{ TARGET_DATABASE_URL: "postgres://db/100%sure" }, /TARGET_DATABASE_URL: .*database.*%25/],
      [{ TARGET_DATABASE_URL: "postgres://d%zb/prod" }, /TARGET_DATABASE_URL: .*host.*%25/],
    ];
    for (const [env, message] of cases) {
      const err = configError(env);
      expect(err.message).toMatch(message);
      expect(err.message).not.toMatch(/50%off|hunter|%2@|100%sure|ap%p|d%zb/);
    }
    // A % written as %25 is a %.
    expect(loadConfig({ TARGET_DATABASE_URL: "postgres://app:50%25off@db/prod" }).target.password).toBe("50%off");
  });

  it("stops the service with exit code 2 and the message, no stack trace", async () => {
    const { code, stderr } = await startMain({ TARGET_DATABASE_URL: "postgres://app:50%off@db/prod" });
    expect(stderr).toMatch(/^invalid configuration: TARGET_DATABASE_URL: .*%25/);
    expect(stderr).not.toMatch(/URIError|    at |50%off/);
    expect(code).toBe(2);
  });
});

describe("TLS files", () => {
  it("are checked as the service starts: each unreadable one is named, its path is not", async () => {
    const dir = await fx.tempDir();
    const cert = path.join(dir, "cert-hunter2.pem");
    await writeFile(cert, "not checked here, only read\n");
    const asDir = path.join(dir, "key-hunter2.pem");
    await mkdir(asDir);
    const missing = path.join(dir, "missing-hunter2.pem");
    const cases: [Record<string, string>, RegExp[]][] = [
      [{ TLS_CERT_FILE: missing, TLS_KEY_FILE: cert }, [/TLS_CERT_FILE: cannot read the file \(ENOENT\)/]],
      [{ TLS_CERT_FILE: cert, TLS_KEY_FILE: asDir }, [/TLS_KEY_FILE: cannot read the file \(EISDIR\)/]],
      [{ TLS_CERT_FILE: missing, TLS_KEY_FILE: missing }, [/TLS_CERT_FILE: cannot read/, /TLS_KEY_FILE: cannot read/]],
    ];
    for (const [env, messages] of cases) {
      // backupctl token loads the same configuration, and need not read the TLS key.
      const config = loadConfig(env);
      let err: Error | undefined;
      try {
        checkServiceFiles(config);
      } catch (e) {
        expect(e).toBeInstanceOf(ConfigError);
        err = e as Error;
      }
      if (!err) throw new Error(`checkServiceFiles accepted ${JSON.stringify(Object.keys(env))}`);
      for (const m of messages) expect(err.message).toMatch(m);
      expect(err.message).not.toMatch(/hunter2/);
    }
    const ok = loadConfig({ TLS_CERT_FILE: cert, TLS_KEY_FILE: cert });
    checkServiceFiles(ok);
    expect([ok.tlsCertFile, ok.tlsKeyFile]).toEqual([cert, cert]);
  });

  it("stop the service at start, before it touches a database, with exit code 2", async () => {
    const dir = await fx.tempDir();
    const { code, stderr, stdout } = await startMain({
      TLS_CERT_FILE: path.join(dir, "cert.pem"),
      TLS_KEY_FILE: path.join(dir, "key.pem"),
      CONTROL_DATABASE_URL: "postgres://127.0.0.1:1/never_reached",
    });
    expect(stderr).toMatch(/TLS_CERT_FILE: cannot read the file \(ENOENT\)/);
    expect(stdout).not.toMatch(/migrat|never_reached/);
    expect(code).toBe(2);
  });
});

describe("JWKS files of the wrong shape", () => {
  it("are refused with the key-configuration error naming the setting", async () => {
    const dir = await fx.tempDir();
    const cases: [string, RegExp][] = [
      ['{"keys":{}}', /JWT_PUBLIC_KEY_FILE: .*list/],
      ['{"keys":"abc"}', /JWT_PUBLIC_KEY_FILE: .*list/],
      ['{"keys":[null]}', /JWT_PUBLIC_KEY_FILE: .*object/],
      ['{"keys":[1, "x"]}', /JWT_PUBLIC_KEY_FILE: .*object/],
      ['{"keys":[[]]}', /JWT_PUBLIC_KEY_FILE: .*object/],
      ['{"kty":"EC","crv":"P-256"}', /JWT_PUBLIC_KEY_FILE: /],
      ['{"keys":[]}', /JWT_PUBLIC_KEY_FILE: the JWKS holds no keys/],
    ];
    for (const [i, [text, message]] of cases.entries()) {
      const file = path.join(dir, `jwks-${i}.json`);
      await writeFile(file, text);
      const err = await loadJwtKeys(loadConfig({ JWT_PUBLIC_KEY_FILE: file, DATA_DIR: dir })).then(
        () => new Error("accepted"),
        (e: unknown) => e as Error,
      );
      expect(err, text).toBeInstanceOf(KeyConfigError);
      expect(err.message, text).toMatch(message);
    }
  });
});

describe("calls that must not wait on a client", () => {
  // The same call to each path, as above: the lean one (gRPC, binary, uncompressed) and
  // connect-node's, for gRPC (`grpc-encoding: gzip`, a message left uncompressed) and Connect.
  const paths: [string, Record<string, string>][] = [
    ["lean gRPC", { "content-type": "application/grpc", te: "trailers" }],
    ["connect-node gRPC", { "content-type": "application/grpc", te: "trailers", "grpc-encoding": "gzip" }],
    ["connect-node Connect", { "content-type": "application/connect+proto", "connect-protocol-version": "1" }],
  ];
  beforeAll(async () => {
    // Random text: backups of about 2 MB, more than the client's windows and the server's buffers.
    await sql(fx.target, "CREATE TABLE stall AS SELECT g AS id, md5(random()::text) || md5(random()::text) AS v FROM generate_series(1, 60000) g");
  });
  const timeoutHeader = (name: string, ms: number): Record<string, string> =>
    name.endsWith("Connect") ? { "connect-timeout-ms": String(ms) } : { "grpc-timeout": `${ms}m` };

  /** Opens a call on its own connection (node's default windows: 64 KiB) and never reads its reply. */
  function open(method: string, headers: Record<string, string>, body: Buffer, end: boolean) {
    const session = http2.connect(svc.url);
    session.on("error", () => undefined);
    const started = Date.now();
    const req = session.request({ ":method": "POST", ":path": `/backup.v1.BackupService/${method}`, ...headers });
    req.on("error", () => undefined);
    if (end) req.end(body);
    else req.write(body);
    return { session, req, started };
  }

  it("ends a download whose client stops reading once its deadline has passed, and lets go of the file", async () => {
    for (const [name, headers] of paths) {
      const { backup } = await svc.client.createBackup({});
      expect(Number(backup!.fileSize), name).toBeGreaterThan(1 << 20);
      const body = frame(Buffer.from(toBinary(DownloadBackupRequestSchema, create(DownloadBackupRequestSchema, { id: backup!.id }))));
      const { session, req, started } = open("DownloadBackup", { ...headers, ...authed(), ...timeoutHeader(name, 1000) }, body, true);
      try {
        const ended = await new Promise<number | undefined>((resolve) => {
          const timer = setTimeout(() => resolve(undefined), 6000);
          req.once("close", () => (clearTimeout(timer), resolve(Date.now() - started)));
        });
        expect(ended, `${name}: the stream ended (ms after the call)`).toBeDefined();
        expect(ended!, name).toBeLessThan(4000);
        const audit = await waitFor(`${name}: the download's audit event`, async () => {
          const { events } = await svc.client.listAuditEvents({ backupId: backup!.id, action: "DownloadBackup" });
          return events[0];
        });
        expect(req.rstCode, name).toBe(http2.constants.NGHTTP2_CANCEL);
        expect({ outcome: audit.outcome, message: audit.message }, name).toEqual({
          outcome: "DEADLINE_EXCEEDED",
          message: "download from offset 0: cancelled: the call's deadline was exceeded",
        });
        // The download let go of the file: a hard delete is not refused as ABORTED.
        const deleted = await svc.client.deleteBackup({ id: backup!.id, hardDelete: true });
        expect(deleted.fileRemoved, name).toBe(true);
      } finally {
        session.destroy();
      }
    }
  }, 60_000);

  it("a download its client resets a moment before its deadline is audited as past its deadline, by the header its protocol reads", async () => {
    for (const [name, headers] of paths) {
      const { backup } = await svc.client.createBackup({});
      const body = frame(Buffer.from(toBinary(DownloadBackupRequestSchema, create(DownloadBackupRequestSchema, { id: backup!.id }))));
      // The other protocol's header too, saying something else: only the call's own counts.
      const stray: Record<string, string> = name.endsWith("Connect") ? { "grpc-timeout": "999S" } : { "connect-timeout-ms": "999000" };
      const { session, req } = open("DownloadBackup", { ...headers, ...authed(), ...stray, ...timeoutHeader(name, 1500) }, body, true);
      try {
        // As a client's own deadline timer does, a little before the server's would fire.
        await new Promise((r) => setTimeout(r, 1000));
        req.close(http2.constants.NGHTTP2_CANCEL);
        const audit = await waitFor(`${name}: the download's audit event`, async () => {
          const { events } = await svc.client.listAuditEvents({ backupId: backup!.id, action: "DownloadBackup" });
          return events[0];
        });
        // Closed on the lean path, failing on connect-node's (its write to the reset stream): either way the deadline.
        expect(audit.outcome, `${name}: ${audit.message}`).toBe("DEADLINE_EXCEEDED");
        expect(audit.message, name).toMatch(/^download from offset 0: (the call's deadline passed|cancelled: the call's deadline was exceeded)$/);
      } finally {
        session.destroy();
      }
    }
  }, 60_000);

  /** The answer to a call opened with `open`, and how long it took to come. */
  async function answer(opened: ReturnType<typeof open>) {
    const { req, started } = opened;
    const { head, trailers, body } = await h2Reply(req);
    const t = { ...head, ...trailers };
    return {
      status: Number(head[":status"]),
      trailers: { "grpc-status": t["grpc-status"], "grpc-message": t["grpc-message"] },
      body: body.toString(),
      ms: Date.now() - started,
    };
  }

  /** pgbackup_rpc_requests_total for a method and code. */
  async function counted(method: string, code: string): Promise<number> {
    const text = await (await fetch(svc.app.metricsUrl!)).text();
    const line = text.split("\n").find((l) => l.startsWith(`pgbackup_rpc_requests_total{method="${method}",code="${code}"} `));
    return line ? Number(line.split(" ")[1]) : 0;
  }

  it("refuses a unary call without a valid admin token at once, before its body has come, counted and audited as before", async () => {
    const big = Buffer.alloc(4 * 1024 * 1024 - 64, 0x61);
    const cases: [string, Buffer, boolean][] = [
      ["a message whose stream never ends", frame([0x0a, 0x01]), false],
      ["a 4 MiB message whose stream never ends", frame(Buffer.concat([Buffer.from([0x0a, 0xb8, 0xff, 0xff, 0x01]), big])), false],
      ["a 4 MiB message", frame(Buffer.concat([Buffer.from([0x0a, 0xb8, 0xff, 0xff, 0x01]), big])), true],
    ];
    const forged = await mintToken({ sub: "mallory", role: "admin", secret: "another-secret-another-secret-another" });
    const viewer = await mintToken({ sub: "victor", role: "viewer" });
    const denials: { who: string; auth: Record<string, string>; code: string; grpc: string; http: number; connect: string; actor: string; message: RegExp }[] = [
      { who: "no token", auth: {}, code: "UNAUTHENTICATED", grpc: "16", http: 401, connect: "unauthenticated", actor: "", message: /^missing authorization header \(expected: authorization: Bearer <JWT>\)$/ },
      { who: "a token signed with another key", auth: { authorization: `Bearer ${forged}` }, code: "UNAUTHENTICATED", grpc: "16", http: 401, connect: "unauthenticated", actor: "", message: /signature/ },
      { who: "a token without the admin role", auth: { authorization: `Bearer ${viewer}` }, code: "PERMISSION_DENIED", grpc: "7", http: 403, connect: "permission_denied", actor: "victor", message: /must be admin or superadmin/ },
    ];
    for (const d of denials) {
      for (const [what, body, end] of cases) {
        const seen: Record<string, unknown> = {};
        let message = "";
        for (const [name, headers] of paths) {
          const label = `${d.who}, ${what}, ${name}`;
          const before = await counted("GetBackup", d.code);
          // The Connect protocol's unary body is the message itself, not enveloped.
          const connectProtocol = name.endsWith("Connect");
          const opened = open(
            "GetBackup",
            { ...(connectProtocol ? { "content-type": "application/proto", "connect-protocol-version": "1" } : headers), ...d.auth },
            connectProtocol ? body.subarray(5) : body,
            end,
          );
          try {
            const got = await answer(opened);
            expect(got.ms, `${label}: answered at once`).toBeLessThan(3000);
            // Held back by flow control: the server took no more than its windows' worth of the body.
            if (body.length > 1 << 20) expect(opened.req.writableLength, `${label}: bytes never read`).toBeGreaterThan(3 << 20);
            const { events } = await svc.client.listAuditEvents({ pageSize: 1 });
            message = events[0]?.message ?? "";
            expect(message, label).toMatch(d.message);
            const { ms, ...rest } = got;
            seen[name] = { ...rest, audit: events[0] && { actor: events[0].actor, action: events[0].action, outcome: events[0].outcome, message: events[0].message } };
            expect(await counted("GetBackup", d.code), `${label}: counted once`).toBe(before + 1);
          } finally {
            opened.session.destroy();
          }
        }
        const audit = { actor: d.actor, action: "GetBackup", outcome: d.code, message };
        const grpc = { status: 200, trailers: { "grpc-status": d.grpc, "grpc-message": encodeURIComponent(message) }, body: "", audit };
        expect(seen, `${d.who}, ${what}`).toEqual({
          "lean gRPC": grpc,
          "connect-node gRPC": grpc,
          "connect-node Connect": { status: d.http, trailers: {}, body: JSON.stringify({ code: d.connect, message }), audit },
        });
      }
    }
  }, 60_000);

  it("verifies an admin's token once per call, on each path, before and not again after the body", async () => {
    const keys = svc.app.keys as { verify: (token: string) => Promise<unknown> };
    const verify = keys.verify;
    let verified = 0;
    keys.verify = (t: string) => (verified++, verify.call(keys, t));
    try {
      for (const [name, headers] of paths) {
        const connectProtocol = name.endsWith("Connect");
        const before = verified;
        const opened = open(
          "GetStats",
          { ...(connectProtocol ? { "content-type": "application/proto", "connect-protocol-version": "1" } : headers), ...authed() },
          connectProtocol ? Buffer.alloc(0) : frame([]),
          true,
        );
        try {
          const got = await answer(opened);
          expect(got.status, name).toBe(200);
          if (!connectProtocol) expect(got.trailers["grpc-status"], name).toBe("0");
          expect(verified - before, name).toBe(1);
        } finally {
          opened.session.destroy();
        }
      }
    } finally {
      keys.verify = verify;
    }
  });

  it("lets go of the file of a download whose client stops reading and then cancels it", async () => {
    for (const [name, headers] of paths) {
      const { backup } = await svc.client.createBackup({});
      expect(Number(backup!.fileSize), name).toBeGreaterThan(1 << 20);
      const body = frame(Buffer.from(toBinary(DownloadBackupRequestSchema, create(DownloadBackupRequestSchema, { id: backup!.id }))));
      const { session, req } = open("DownloadBackup", { ...headers, ...authed() }, body, true);
      try {
        await new Promise((resolve) => req.once("response", resolve));
        await new Promise((resolve) => setTimeout(resolve, 300));
        req.close(http2.constants.NGHTTP2_CANCEL);
        const audit = await waitFor(`${name}: the download's audit event`, async () => {
          const { events } = await svc.client.listAuditEvents({ backupId: backup!.id, action: "DownloadBackup" });
          return events[0];
        }, 5000);
        expect(audit.outcome, name).toBe("CANCELED");
        const deleted = await svc.client.deleteBackup({ id: backup!.id, hardDelete: true });
        expect(deleted.fileRemoved, name).toBe(true);
      } finally {
        session.destroy();
      }
    }
  }, 60_000);
});

describe("keepalive", () => {
  it("drops a connection whose client no longer acks pings, and keeps one that does", async () => {
    const server = await startServer({
      host: "127.0.0.1",
      port: 0,
      handler: (_req, res) => res.writeHead(404).end(),
      keepalive: { intervalMs: 200, timeoutMs: 1000 },
    });
    const live = http2.connect(server.url);
    try {
      // A peer that spoke HTTP/2 once and then went silent, as a half-open connection does.
      const silent = net.connect(server.port, "127.0.0.1");
      silent.on("data", () => undefined);
      silent.write(Buffer.concat([Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]));
      const started = Date.now();
      const dropped = await new Promise<number | undefined>((resolve) => {
        const timer = setTimeout(() => resolve(undefined), 5000);
        silent.once("close", () => (clearTimeout(timer), resolve(Date.now() - started)));
      });
      silent.destroy();
      expect(dropped, "the silent connection was dropped").toBeDefined();
      expect(dropped!).toBeLessThan(3000);
      expect(live.closed || live.destroyed, "the live connection is still open").toBe(false);
      const { status } = await new Promise<{ status: unknown }>((resolve, reject) => {
        const req = live.request({ ":path": "/" });
        req.on("response", (h) => resolve({ status: h[":status"] }));
        req.on("error", reject);
        req.end();
      });
      expect(status).toBe(404);
    } finally {
      live.close();
      await server.close(1000);
    }
  });
});
