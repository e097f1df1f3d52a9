/**
 * Test support: throwaway databases on the local PostgreSQL, the real service
 * on an ephemeral port, and real clients (connect-es and grpc-js).
 */
import { spawn } from "node:child_process";
import http2 from "node:http2";
import { randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import type { DescService } from "@bufbuild/protobuf";
import { ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { SignJWT } from "jose";
import pg from "pg";
import { BackupService } from "../gen/backup/v1/backup_pb.js";
import { createApp, type App, type AppDeps } from "../src/app.js";
import { createGrpcJsClient } from "../src/client/grpc-js.js";
import { loadConfig } from "../src/config.js";
import type { Clock } from "../src/domain/ports.js";
import { createLogger } from "../src/logger.js";

export const PG_HOST = process.env.TEST_PG_HOST ?? "127.0.0.1";
export const PG_PORT = Number(process.env.TEST_PG_PORT ?? 5432);
export const PG_USER = process.env.TEST_PG_USER ?? "postgres";
export const TEST_SECRET = "test-secret-that-is-long-enough-for-hs256!";

export function pgUrl(database: string): string {
  return `postgres://${PG_USER}@${PG_HOST}:${PG_PORT}/${encodeURIComponent(database)}`;
}

/** Runs SQL against a database and closes the connection. */
export async function sql<T extends pg.QueryResultRow = Record<string, unknown>>(
  database: string,
  text: string,
  params: unknown[] = [],
): Promise<T[]> {
  const client = new pg.Client({ host: PG_HOST, port: PG_PORT, user: PG_USER, database });
  await client.connect();
  try {
    return (await client.query<T>(text, params)).rows;
  } finally {
    await client.end();
  }
}

/** An open connection the test controls (e.g. to hold a lock). */
export async function connect(database: string, user = PG_USER): Promise<pg.Client> {
  const client = new pg.Client({ host: PG_HOST, port: PG_PORT, user, database });
  client.on("error", () => undefined);
  await client.connect();
  return client;
}

export function uniqueName(prefix: string): string {
  return `${prefix}_${randomBytes(4).toString("hex")}`;
}

export async function createDatabase(name: string): Promise<void> {
  await sql("postgres", `CREATE DATABASE "${name}"`);
}

export async function dropDatabase(name: string): Promise<void> {
  await sql("postgres", `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
}

/**
 * A small database with the things a dump must carry: tables of several
 * types (one with a name that needs quoting), a view, a sequence, an index,
 * a function and a partitioned table.
 */
export async function seedDatabase(name: string, rows = 1000): Promise<Record<string, number>> {
  await sql(
    name,
    `CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, profile jsonb, created timestamptz DEFAULT now());
     INSERT INTO customers (name, profile) SELECT 'customer ' || g, jsonb_build_object('n', g) FROM generate_series(1, ${rows}) g;
     CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int REFERENCES customers(id), total numeric(10,2), blob bytea);
     INSERT INTO orders (customer_id, total, blob) SELECT 1 + g % ${rows}, g * 1.5, decode(md5(g::text), 'hex') FROM generate_series(1, ${rows * 2}) g;
     CREATE INDEX orders_customer_idx ON orders (customer_id);
     CREATE SCHEMA billing;
     CREATE TABLE billing."Invoice Lines" (id int, note text);
     INSERT INTO billing."Invoice Lines" SELECT g, repeat('x', 20) FROM generate_series(1, 7) g;
     CREATE TABLE events (id int, at date NOT NULL) PARTITION BY RANGE (at);
     CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
     INSERT INTO events SELECT g, '2026-03-01' FROM generate_series(1, 5) g;
     CREATE TABLE empty_table (id int);
     CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;
     CREATE SEQUENCE invoice_seq;
     CREATE FUNCTION add_one(i int) RETURNS int LANGUAGE sql AS 'SELECT i + 1';
     CREATE SCHEMA "odd.names";
     CREATE TABLE "odd.names".a (x int);
     CREATE TABLE "odd.names"."a b" (x int);
     INSERT INTO "odd.names".a VALUES (1), (2);
     INSERT INTO "odd.names"."a b" VALUES (3);`,
  );
  return {
    "public.customers": rows,
    "public.orders": rows * 2,
    'billing."Invoice Lines"': 7,
    "public.events_2026": 5,
    "public.empty_table": 0,
    '"odd.names".a': 2,
    '"odd.names"."a b"': 1,
  };
}

export interface TestService {
  app: App;
  /** Name of its control database. */
  control: string;
  url: string;
  dataDir: string;
  backupDir: string;
  env: Record<string, string>;
  /** A connect-es client with an admin token. */
  client: Client<typeof BackupService>;
  clientWith(token: string | null): Client<typeof BackupService>;
  close(): Promise<void>;
}

/** The environment a test service runs with (also used for child-process services). */
export function serviceEnv(control: string, target: string, dataDir: string, extra: Record<string, string> = {}) {
  return {
    GRPC_HOST: "127.0.0.1",
    GRPC_PORT: "0",
    CONTROL_DATABASE_URL: pgUrl(control),
    TARGET_DATABASE_URL: pgUrl(target),
    DATA_DIR: dataDir,
    JWT_SECRET: TEST_SECRET,
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? "silent",
    SHUTDOWN_GRACE_MS: "2000",
    // No real cron firing or catch-up in the middle of a test; scheduler tests opt in.
    DAILY_BACKUP_CRON: "off",
    WEEKLY_CLEANUP_CRON: "off",
    RESTORE_DRILL_CRON: "off",
    SCHEDULE_CATCHUP_WINDOW: "0",
    ALERT_CHECK_CRON: "off",
    METRICS_PORT: "0",
    ...extra,
  };
}

/** Every directory tempDir made for this test file: removed once its tests are done (test/setup.ts). */
const madeDirs: string[] = [];

export async function tempDir(prefix = "bs-test-"): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  madeDirs.push(dir);
  return dir;
}

export async function removeMadeDirs(): Promise<void> {
  // Each one tried, whatever became of the others.
  await Promise.allSettled(madeDirs.splice(0).map((dir) => removeDir(dir)));
}

/** Starts the real service in this process against the given databases. */
export async function startService(
  control: string,
  target: string,
  extra: Record<string, string> = {},
  dataDir?: string,
  deps: AppDeps = {},
): Promise<TestService> {
  const dir = dataDir ?? (await tempDir());
  // A directory made here for a start that fails goes with it (tests may reuse one after close).
  const dropDir = () => (dataDir === undefined ? rm(dir, { recursive: true, force: true }) : Promise.resolve());
  const env = serviceEnv(control, target, dir, extra);
  const config = loadConfig(env);
  let app: App;
  try {
    app = await createApp(config, createLogger(config.logLevel), deps);
  } catch (err) {
    await dropDir();
    throw err;
  }
  const url = app.server.url;
  const token = await mintToken({ sub: "test-admin", role: "admin", username: "Test Admin" });
  const clientWith = (t: string | null) =>
    createClient(
      BackupService,
      createGrpcTransport({
        baseUrl: url,
        interceptors: t === null ? [] : [(next) => (req) => (req.header.set("authorization", `Bearer ${t}`), next(req))],
      }),
    );
  return {
    app,
    control,
    url,
    dataDir: dir,
    backupDir: config.backupDir,
    env,
    client: clientWith(token),
    clientWith,
    async close() {
      await app.close();
    },
  };
}

/** A clock that runs with the real one, moved ahead by `advance` (for checks that compare ages). */
export function movableClock(): Clock & { advance(ms: number): void } {
  let ahead = 0;
  return {
    now: () => new Date(Date.now() + ahead),
    advance(ms) {
      ahead += ms;
    },
  };
}

export async function mintToken(opts: {
  sub?: string;
  role?: unknown;
  username?: string;
  expiresIn?: number | null;
  secret?: string;
  alg?: string;
  key?: Parameters<SignJWT["sign"]>[0];
}): Promise<string> {
  // role: null leaves the claim out.
  const claims: Record<string, unknown> = opts.role === null ? {} : { role: opts.role ?? "admin" };
  if (opts.username) claims.username = opts.username;
  let jwt = new SignJWT(claims).setProtectedHeader({ alg: opts.alg ?? "HS256" }).setIssuedAt();
  if (opts.sub !== undefined) jwt = jwt.setSubject(opts.sub);
  if (opts.expiresIn !== null) jwt = jwt.setExpirationTime(Math.floor(Date.now() / 1000) + (opts.expiresIn ?? 3600));
  return jwt.sign(opts.key ?? new TextEncoder().encode(opts.secret ?? TEST_SECRET));
}

/** Files in the backup directory (final and partial). */
export async function backupFiles(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch {
    return [];
  }
}

/** Names of this process's live child processes (read from /proc). */
export async function childProcessNames(): Promise<string[]> {
  const names: string[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = await readFile(`/proc/${entry}/stat`, "utf8");
      // "pid (comm) state ppid ..."; comm may hold spaces, so split after the last ')'.
      const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(fields[1]) === process.pid && fields[0] !== "Z") names.push(comm);
    } catch {
      // gone
    }
  }
  return names;
}

/** PIDs of pg_dump processes working on the given database (read from /proc). */
export async function pgDumpPids(database: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = await readFile(`/proc/${entry}/cmdline`, "utf8");
      if (!cmdline.includes("pg_dump")) continue;
      const environ = await readFile(`/proc/${entry}/environ`, "utf8");
      if (environ.split("\0").includes(`PGDATABASE=${database}`)) pids.push(Number(entry));
    } catch {
      // the process ended while we looked
    }
  }
  return pids;
}

export async function waitFor<T>(what: string, probe: () => Promise<T | null | undefined | false>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Holds an ACCESS EXCLUSIVE lock on a table so that pg_dump (and the row
 * count) block on it: a backup that is reliably "mid-way" for as long as the
 * test wants.
 */
export async function blockTable(database: string, table: string): Promise<{ release(): Promise<void> }> {
  const client = await connect(database);
  await client.query("BEGIN");
  await client.query(`LOCK TABLE ${table} IN ACCESS EXCLUSIVE MODE`);
  return {
    async release() {
      await client.query("ROLLBACK").catch(() => undefined);
      await client.end().catch(() => undefined);
    },
  };
}

/** Waits until pg_dump's session in `database` waits on a lock (see blockTable). */
export async function waitForBlockedDump(database: string): Promise<void> {
  await waitFor("pg_dump to block on the table lock", async () => {
    // pg_dump's own session, at its LOCK TABLE: the row count's (the same application name)
    // can block first, before pg_dump has even started. (The query text read only for our database.)
    const rows = await sql<{ n: string }>(
      "postgres",
      `SELECT count(*) AS n FROM (SELECT application_name, wait_event_type, query FROM pg_stat_activity
                                   WHERE datname = $1 OFFSET 0) a
        WHERE application_name = 'backup-service' AND wait_event_type = 'Lock' AND query LIKE 'LOCK TABLE %'`,
      [database],
    );
    return Number(rows[0]!.n) > 0;
  });
}

/** A generic @grpc/grpc-js client built from the protobuf-es service descriptor. */
export function grpcJsClient(url: string, service: DescService = BackupService, options?: grpc.ChannelOptions) {
  return createGrpcJsClient(url, service, undefined, options) as grpc.Client & Record<string, (...args: unknown[]) => grpc.ClientUnaryCall>;
}

/** Calls a unary method on a grpc-js client as a promise. */
export function grpcJsUnary<T>(
  client: ReturnType<typeof grpcJsClient>,
  method: string,
  request: unknown,
  metadata: grpc.Metadata,
  options: grpc.CallOptions = {},
): Promise<T> {
  return new Promise((resolve, reject) => {
    client[method]!(request, metadata, options, (err: grpc.ServiceError | null, res: T) =>
      err ? reject(err) : resolve(res),
    );
  });
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

/**
 * One test file's world: a target database name and every service and control
 * database the file makes, removed by `cleanup()`; its directories go with the
 * file's others once its tests are done (test/setup.ts).
 */
export function createFixture(name: string) {
  const target = uniqueName(`bs_tgt_${name}`);
  const services: TestService[] = [];
  const controls: string[] = [];
  return {
    target,
    /** A service with its own control database, against the fixture's target. */
    async service(extra: Record<string, string> = {}, dataDir?: string): Promise<TestService> {
      const control = uniqueName(`bs_ctl_${name}`);
      controls.push(control);
      const s = await startService(control, target, extra, dataDir);
      services.push(s);
      return s;
    },
    /** A directory removed with the file's others, once its tests are done (test/setup.ts). */
    tempDir,
    async cleanup(): Promise<void> {
      for (const s of services) await s.close().catch(() => undefined);
      await dropDatabase(target);
      for (const c of controls) await dropDatabase(c);
    },
  };
}

/** Awaits a call that must fail, and returns its error (a ConnectError, or the test fails). */
export async function callFailure(p: Promise<unknown>): Promise<ConnectError> {
  const err = await p.then(
    () => {
      throw new Error("expected the call to fail");
    },
    (e: unknown) => e,
  );
  if (!(err instanceof ConnectError)) throw err;
  return err;
}

/**
 * Runs the service as its own process (as `npm start` runs it, from source)
 * and waits until it listens; for tests that kill it.
 */
export async function spawnService(control: string, target: string, dataDir: string, extra: Record<string, string> = {}) {
  const env = { ...process.env, ...serviceEnv(control, target, dataDir, extra), LOG_LEVEL: "info" };
  const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], { env, stdio: ["ignore", "pipe", "pipe"] });
  const logs: Record<string, unknown>[] = [];
  // Read, or "close" would never come: a pipe with unread output does not end.
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  // "close", not "exit": by then every line the service wrote has been read into `logs`.
  const exited = new Promise<number | null>((resolve) => child.once("close", (code) => resolve(code)));
  let gaveUp: NodeJS.Timeout | undefined;
  const url = await new Promise<string>((resolve, reject) => {
    // Well inside the test's own timeout (60 s), so the child is killed rather than left running.
    gaveUp = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`the service did not listen within 30 s; its stderr: ${stderr.slice(-2000)}`));
    }, 30_000);
    createInterface({ input: child.stdout! }).on("line", (line) => {
      try {
        const entry = JSON.parse(line) as Record<string, unknown>;
        logs.push(entry);
        if (entry.msg === "backup service listening") resolve(entry.url as string);
      } catch {
        // not a log line
      }
    });
    child.once("close", (code) => reject(new Error(`service exited with ${code} before listening; its stderr: ${stderr.slice(-2000)}`)));
  }).finally(() => clearTimeout(gaveUp));
  const token = await mintToken({ sub: "ops", role: "admin" });
  const client = createClient(
    BackupService,
    createGrpcTransport({
      baseUrl: url,
      interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${token}`), next(req))],
    }),
  );
  return { child, client, url, logs, exited };
}

/** One gRPC frame: the compressed flag, the length, the payload. */
export function grpcFrame(payload: number[] | Buffer, flags = 0): Buffer {
  const body = Buffer.from(payload);
  const head = Buffer.alloc(5);
  head[0] = flags;
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}

/** What a raw gRPC call got back: HTTP status, content type, the status trailers, the body (hex). */
export type RawGrpcAnswer = { status: number; contentType: unknown; trailers: Record<string, unknown>; body: string; encoding?: unknown };

/** A raw HTTP/2 reply once its stream has ended: head, trailers and body; rejects after `waitMs`. */
export function h2Reply(
  req: http2.ClientHttp2Stream,
  waitMs = 5000,
): Promise<{ head: http2.IncomingHttpHeaders; trailers: http2.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      req.close(http2.constants.NGHTTP2_CANCEL);
      reject(new Error(`no answer within ${waitMs} ms`));
    }, waitMs);
    let head: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    req.on("response", (h) => (head = h));
    req.on("trailers", (t) => (trailers = t));
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.on("end", () => {
      clearTimeout(timer);
      resolve({ head, trailers, body: Buffer.concat(chunks) });
    });
  });
}

/**
 * One raw gRPC call to BackupService on `session`, as a load generator would send it. With
 * `end: false` the body is sent but the request never ended (the client closes it once
 * answered); the answer must come within `waitMs` anyway.
 */
export async function rawGrpcCall(
  session: http2.ClientHttp2Session,
  method: string,
  body: Buffer,
  headers: Record<string, string>,
  opts: { end?: boolean; waitMs?: number } = {},
): Promise<RawGrpcAnswer> {
  const req = session.request({
    ":method": "POST",
    ":path": `/backup.v1.BackupService/${method}`,
    "content-type": "application/grpc",
    te: "trailers",
    ...headers,
  });
  const replied = h2Reply(req, opts.waitMs).catch((err: Error) => {
    throw new Error(`${method}: ${err.message}`);
  });
  if (opts.end === false) req.write(body);
  else req.end(body);
  const { head, trailers, body: reply } = await replied;
  if (opts.end === false) req.close();
  return {
    status: Number(head[":status"]),
    contentType: head["content-type"],
    trailers: {
      "grpc-status": trailers["grpc-status"] ?? head["grpc-status"],
      "grpc-message": trailers["grpc-message"] ?? head["grpc-message"],
      "grpc-status-details-bin": trailers["grpc-status-details-bin"] ?? head["grpc-status-details-bin"],
    },
    body: reply.toString("hex"),
    encoding: head["grpc-encoding"],
  };
}

/** A database whose restore takes a few seconds (1.2 million rows, about 150 MB): time to act while it loads. */
export async function createPayloadDatabase(name: string, extraSql = ""): Promise<void> {
  await createDatabase(name);
  await sql(
    name,
    `CREATE TABLE payload (id int PRIMARY KEY, body text NOT NULL);
     INSERT INTO payload SELECT g, md5(g::text) || repeat(md5((g * 7)::text), 3) FROM generate_series(1, 1200000) g;
     ${extraSql}`,
  );
}
