import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupStatus, BackupType } from "../gen/backup/v1/backup_pb.js";
import { checkServiceFiles, ConfigError, loadConfig, parsePgUrl, type PgTarget } from "../src/config.js";
import { pgConfigOf, settleSslMode } from "../src/db/client.js";
import {
  createDatabase,
  createFixture,
  dropDatabase,
  PG_HOST,
  PG_PORT,
  PG_USER,
  removeDir,
  spawnService,
  sql,
  startService,
  tempDir,
  uniqueName,
  type TestService,
} from "./helpers.js";

const fx = createFixture("valid");
const target = fx.target;
let svc: TestService;

beforeAll(async () => {
  await createDatabase(target);
  svc = await fx.service();
});

afterAll(() => fx.cleanup());

async function invalid(p: Promise<unknown>, field: string, why?: RegExp): Promise<void> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err, `${field} should be refused`).toBeInstanceOf(ConnectError);
  const ce = err as ConnectError;
  expect(Code[ce.code]).toBe("InvalidArgument");
  expect(ce.rawMessage.startsWith(`${field}: `), ce.rawMessage).toBe(true);
  if (why) expect(ce.rawMessage).toMatch(why);
}

describe("bad input is INVALID_ARGUMENT naming the field", () => {
  it("malformed ids", async () => {
    await invalid(svc.client.getBackup({ id: "" }), "id", /UUID/);
    await invalid(svc.client.getBackup({ id: "42" }), "id");
    await invalid(svc.client.getBackup({ id: "../../etc/passwd" }), "id");
    await invalid(svc.client.verifyBackup({ id: "not-a-uuid" }), "id");
    await invalid(svc.client.listAuditEvents({ backupId: "x" }), "backup_id");
  });

  it("an unknown but well-formed id is NOT_FOUND", async () => {
    const err = await svc.client.getBackup({ id: "00000000-0000-4000-8000-000000000000" }).catch((e: unknown) => e);
    expect(Code[(err as ConnectError).code]).toBe("NotFound");
    expect((err as ConnectError).rawMessage).toMatch(/backup 00000000-0000-4000-8000-000000000000 not found/);
  });

  it("retention out of range", async () => {
    await invalid(svc.client.createBackup({ retentionDays: 0 }), "retention_days", /1 to 3650/);
    await invalid(svc.client.createBackup({ retentionDays: 3651 }), "retention_days");
    await invalid(svc.client.createBackup({ retentionDays: -5 }), "retention_days");
  });

  it("page and page size", async () => {
    await invalid(svc.client.listBackups({ pageSize: 501 }), "page_size", /1 to 500/);
    await invalid(svc.client.listBackups({ pageSize: -1 }), "page_size");
    await invalid(svc.client.listBackups({ page: -1 }), "page");
    await invalid(svc.client.listAuditEvents({ pageSize: 1000 }), "page_size");
    const ok = await svc.client.listBackups({ pageSize: 500 });
    expect(ok.page).toBe(1);
  });

  it("unknown enum values", async () => {
    await invalid(svc.client.createBackup({ backupType: 99 as BackupType }), "backup_type", /unknown value 99/);
    await invalid(svc.client.listBackups({ status: 42 as BackupStatus }), "status", /unknown value 42/);
    await invalid(svc.client.listBackups({ backupType: 7 as BackupType }), "backup_type");
  });

  it("INCREMENTAL is refused: logical backups are always full", async () => {
    await invalid(svc.client.createBackup({ backupType: BackupType.INCREMENTAL }), "backup_type", /always full/);
  });

  it("labels and database names", async () => {
    await invalid(svc.client.createBackup({ label: "x".repeat(201) }), "label", /200/);
    await invalid(svc.client.createBackup({ database: "" }), "database");
    await invalid(svc.client.createBackup({ database: "d".repeat(64) }), "database");
  });

  it("nothing was recorded by refused requests", async () => {
    const { total } = await svc.client.listBackups({ includeDeleted: true });
    expect(Number(total)).toBe(0);
  });
});

describe("configuration", () => {
  it("names the setting and the rule, never the value", () => {
    const bad: [Record<string, string>, RegExp][] = [
      [{ GRPC_PORT: "seventy" }, /GRPC_PORT: must be a whole number/],
      [{ RETENTION_DAYS: "0" }, /RETENTION_DAYS: must be a whole number from 1 to 3650/],
      [{ BACKUP_FORMAT: "tar" }, /BACKUP_FORMAT: must be custom or plain/],
      [{ BACKUP_COMPRESSION: "lz4" }, /BACKUP_COMPRESSION: must be zstd or gzip/],
      [{ BACKUP_COMPRESSION: "gzip", BACKUP_COMPRESSION_LEVEL: "12" }, /BACKUP_COMPRESSION_LEVEL: .*1 to 9/],
      [{ CONTROL_DATABASE_URL: "mysql://secret-host/db" }, /CONTROL_DATABASE_URL: must start with postgres:\/\//],
      [{ TARGET_DATABASE_URL: "postgres://u:hunter2@host:5432" }, /TARGET_DATABASE_URL: must name a database/],
      [{ JWT_SECRET: "short-hunter2" }, /JWT_SECRET: must be at least 32 bytes/],
      [{ TLS_CERT_FILE: "/tmp/cert.pem" }, /TLS_CERT_FILE, TLS_KEY_FILE: set both/],
      [{ LOG_LEVEL: "loud" }, /LOG_LEVEL: must be one of/],
      // libpq would take these; ignored, they would change what the service connects to.
      [
        { TARGET_DATABASE_URL: "postgres://u:hunter2@h/db?options=-c%20statement_timeout%3D0&connect_timeout=3" },
        /TARGET_DATABASE_URL: has query parameters the service does not pass on to its connections: options, connect_timeout/,
      ],
      [{ TARGET_DATABASE_URL: "postgres:///db" }, /TARGET_DATABASE_URL: names no host \(hint: .*\?host=\/var\/run\/postgresql/],
      [{ TARGET_DATABASE_URL: "postgres://h/db?sslmode=verify_full" }, /TARGET_DATABASE_URL: has an sslmode libpq does not know \(it takes disable, allow, prefer, require, verify-ca, verify-full\)/],
      [{ TARGET_DATABASE_URL: "postgres://h/db?port=5x" }, /TARGET_DATABASE_URL: has an invalid port/],
    ];
    for (const [env, message] of bad) {
      let err: unknown;
      try {
        loadConfig(env);
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(env)).toBeInstanceOf(ConfigError);
      expect((err as Error).message).toMatch(message);
      expect((err as Error).message).not.toMatch(/hunter2|secret-host|seventy/);
    }
  });

  it("start-up names the Debian package of a missing tool", async () => {
    const empty = await tempDir("bs-nobin-");
    try {
      const err = await startService(uniqueName("bs_ctl_nobin"), target, { PG_BIN_DIR: empty }).catch((e: unknown) => e);
      expect((err as Error).message).toMatch(/pg_dump not found .*hint: apt-get install postgresql-client/);
    } finally {
      await removeDir(empty);
    }
  });

  it("libpq's variables in the service's environment change none of its connections", async () => {
    const dir = await tempDir("bs-pgenv-");
    // Its own control database, so that the sessions seen there are its own.
    const control = uniqueName("bs_ctl_pgenv");
    // A read-only session setting would stop the migrations; a wrong password would matter behind password auth.
    const spawned = await spawnService(control, target, dir, {
      PGOPTIONS: "-c default_transaction_read_only=on",
      PGPASSWORD: "not-the-urls",
      PGAPPNAME: "from-the-environment",
    });
    try {
      const warning = spawned.logs.find((l) => String(l.msg).startsWith("ignoring libpq's environment variables"));
      expect(warning?.variables).toEqual(expect.arrayContaining(["PGAPPNAME", "PGOPTIONS", "PGPASSWORD"]));
      expect(JSON.stringify(spawned.logs)).not.toContain("not-the-urls");
      const { backup } = await spawned.client.createBackup({});
      expect(backup!.status).toBe(BackupStatus.VERIFIED);
      // Its pool to the control database names no application, so PGAPPNAME would show there.
      const sessions = await sql<{ app: string }>(
        "postgres",
        "SELECT application_name AS app FROM (SELECT datname, application_name FROM pg_stat_activity OFFSET 0) a WHERE datname = $1",
        [control],
      );
      expect(sessions.length).toBeGreaterThan(0);
      expect(sessions.map((r) => r.app)).not.toContain("from-the-environment");
    } finally {
      spawned.child.kill("SIGTERM");
      await spawned.exited;
      await removeDir(dir);
      await dropDatabase(control);
    }
  });

  /**
   * Runs `fn` with the password lookup pointed at a file holding `lines` (PGPASSFILE, here only: the
   * service takes it out of its environment, so that it and the tools both read ~/.pgpass), and
   * with a runner's own PGPASSWORD put aside (libpq, and pgpass, read no file while it is set).
   */
  async function withPasswordFile(lines: string, fn: (passwordFor: (url: string) => Promise<unknown>) => Promise<void>) {
    const dir = await tempDir("bs-pgpass-");
    const file = path.join(dir, "pgpass");
    await writeFile(file, lines, { mode: 0o600 });
    const saved = { PGPASSFILE: process.env.PGPASSFILE, PGPASSWORD: process.env.PGPASSWORD };
    process.env.PGPASSFILE = file;
    delete process.env.PGPASSWORD;
    try {
      await fn(async (url) => {
        const p = pgConfigOf(parsePgUrl(url) as PgTarget).password;
        return typeof p === "function" ? await p() : p;
      });
    } finally {
      for (const [name, value] of Object.entries(saved)) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
      await removeDir(dir);
    }
  }

  it("with no password in the URL, the service's own connections read the password file, as libpq does for the tools", async () => {
    await withPasswordFile("db.example:5433:shop:alice:from-the-file\n*:*:*:bob:bobs-own\n", async (passwordFor) => {
      expect(await passwordFor("postgres://alice@db.example:5433/shop")).toBe("from-the-file");
      expect(await passwordFor("postgres://bob@elsewhere:5432/any")).toBe("bobs-own");
      expect(await passwordFor("postgres://carol@db.example:5433/shop")).toBeUndefined();
      expect(await passwordFor("postgres://alice@db.example:5433/other")).toBeUndefined();
      expect(await passwordFor("postgres://alice:in-the-url@db.example:5433/shop")).toBe("in-the-url");
    });
  });

  it("reads a URL's query parameters as libpq does: they win over the same parts of the URL", () => {
    expect(parsePgUrl("postgres://a:x@h:5432/db?port=5433&user=b&password=p%40ss&host=/var/run/postgresql&sslmode=verify-full&sslrootcert=/etc/ca.pem")).toEqual({
      host: "/var/run/postgresql",
      port: 5433,
      user: "b",
      password: "p@ss",
      database: "db",
      sslmode: "verify-full",
      sslrootcert: "/etc/ca.pem",
    });
    expect(parsePgUrl("postgres://%2Fvar%2Frun%2Fpostgresql/db")).toMatchObject({ host: "/var/run/postgresql", port: 5432 });
    expect(parsePgUrl("postgres://[::1]:5433/db")).toMatchObject({ host: "::1", port: 5433 });
  });

  it("the daily backup of the target's own database keeps its name whole, commas and all", () => {
    expect(loadConfig({ TARGET_DATABASE_URL: "postgres://127.0.0.1/a%2Cb%20" }).scheduler.databases).toEqual(["a,b "]);
    expect(loadConfig({ TARGET_DATABASE_URL: "postgres://127.0.0.1/x", BACKUP_DATABASES: "a, b" }).scheduler.databases).toEqual(["a", "b"]);
  });

  it("an SSL file a URL names must be readable as the service starts", () => {
    const problem = () => checkServiceFiles(loadConfig({ TARGET_DATABASE_URL: "postgres://127.0.0.1/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem" }));
    expect(problem).toThrow(/TARGET_DATABASE_URL: sslrootcert: cannot read the file \(ENOENT\)/);
  });

  it("libpq's default, prefer, is settled once with the server: without SSL here, both for the service and its tools", async () => {
    const local = (q: string) => parsePgUrl(`postgres://${PG_USER}@${PG_HOST}:${PG_PORT}/postgres${q}`) as PgTarget;
    const [{ ssl }] = await sql<{ ssl: string }>("postgres", "SHOW ssl");
    const expected = ssl === "on" ? "require" : "disable";
    expect((await settleSslMode(local(""))).sslmode).toBe(expected);
    expect((await settleSslMode(local("?sslmode=prefer"))).sslmode).toBe(expected);
    expect((await settleSslMode(local("?sslmode=allow"))).sslmode).toBe("disable"); // plain first, as libpq
    // What the URL decides is left alone; so is a Unix socket, which has no SSL.
    expect((await settleSslMode(local("?sslmode=require"))).sslmode).toBe("require");
    expect((await settleSslMode(local("?host=/var/run/postgresql"))).sslmode).toBeUndefined();
    // The control database before it exists: the server took the mode all the same.
    expect((await settleSslMode({ ...local(""), database: uniqueName("bs_not_yet") })).sslmode).toBe(expected);
    // A server that does not answer: unsettled, and said so.
    const unreachable = await settleSslMode({ ...local(""), port: 1 });
    expect(unreachable.sslmode).toBeUndefined();
  });

  it("a target over the Unix socket: backups and deep verification work, for the service's connections and its tools alike", async (ctx) => {
    const socketDir = "/var/run/postgresql";
    if (!existsSync(path.join(socketDir, `.s.PGSQL.${PG_PORT}`))) ctx.skip();
    await sql(target, "CREATE TABLE IF NOT EXISTS over_socket (x int); INSERT INTO over_socket VALUES (1), (2)");
    const viaSocket = await startService(
      svc.control,
      target,
      { TARGET_DATABASE_URL: `postgres://${PG_USER}@${encodeURIComponent(socketDir)}:${PG_PORT}/${encodeURIComponent(target)}` },
      svc.dataDir,
    );
    try {
      const { backup } = await viaSocket.client.createBackup({ database: target });
      expect(backup?.status).toBe(BackupStatus.VERIFIED);
      const v = await viaSocket.client.verifyBackup({ id: backup!.id, deep: true });
      expect(v.checks.filter((c) => !c.passed)).toEqual([]);
      expect(v.verified).toBe(true);
    } finally {
      await viaSocket.close();
    }
  }, 60_000);

  it("over a Unix socket, the password file is read as for localhost, as libpq does", async () => {
    await withPasswordFile("localhost:5432:shop:alice:over-the-socket\n", async (passwordFor) => {
      expect(await passwordFor("postgres:///shop?host=/var/run/postgresql&user=alice")).toBe("over-the-socket");
    });
  });

  it("has the documented defaults", () => {
    const c = loadConfig({});
    expect(c.grpcHost).toBe("127.0.0.1");
    expect(c.grpcPort).toBe(50051);
    expect(c.control.database).toBe("backup_service");
    expect(c.target.database).toBe("postgres");
    expect(c.backupFormat).toBe("custom");
    expect(c.backupCompression).toBe("zstd");
    expect(c.retentionDays).toBe(30);
    expect(c.backupDir.endsWith("/data/backups")).toBe(true);
  });
});
