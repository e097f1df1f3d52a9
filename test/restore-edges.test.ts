/**
 * Edges of RestoreBackup: what a restore must carry over exactly (list-valued
 * database settings, a non-UTF8 encoding), and what it must not replace (a
 * target someone created, or wrote into, while the backup was loading).
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { open, writeFile } from "node:fs/promises";
import { Code, ConnectError } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupStatus, RestorePhase, VerificationLevel, type RestoreBackupResponse } from "../gen/backup/v1/backup_pb.js";
import {
  backupFiles,
  blockTable,
  callFailure,
  connect,
  createDatabase,
  createPayloadDatabase,
  createFixture,
  dropDatabase,
  PG_HOST,
  PG_PORT,
  PG_USER,
  spawnService,
  sql,
  startService,
  uniqueName,
  waitFor,
  waitForBlockedDump,
  type TestService,
} from "./helpers.js";

const fx = createFixture("redges");
const big = uniqueName("bs_edges_big");
const role = uniqueName("bs_edges_role");
const extraDbs: string[] = [];
const tags: string[] = [];
let svc: TestService;

beforeAll(async () => {
  await createDatabase(fx.target);
  await sql(fx.target, "CREATE TABLE t (id int)");
  await sql("postgres", `CREATE ROLE ${role}`);
  await createPayloadDatabase(big);
  svc = await fx.service();
  tags.push(svc.app.restoreTag);
}, 180_000);

afterAll(async () => {
  await fx.cleanup();
  await dropDatabase(big);
  for (const d of extraDbs) await dropDatabase(d);
  for (const d of await leftovers()) await dropDatabase(d);
  await sql("postgres", `DROP ROLE IF EXISTS ${role}`).catch(() => undefined);
});

/** Waits until one of `svc`'s scratch databases has a session running `query` (a LIKE pattern); returns its name. */
function loadingScratch(what: string, query = "COPY %"): Promise<string> {
  return waitFor(what, async () => {
    const rows = await sql<{ datname: string }>(
      "postgres",
      "SELECT datname FROM (SELECT * FROM pg_stat_activity WHERE datname LIKE $1 OFFSET 0) a WHERE state = 'active' AND query ILIKE $2",
      [`bsvc\\_restore\\_${svc.app.restoreTag}\\_%`, query],
    );
    return rows[0]?.datname;
  });
}

function newDbName(prefix: string): string {
  const name = uniqueName(prefix);
  extraDbs.push(name);
  return name;
}

/** A service on this file's records whose role in TARGET_DATABASE_URL is `user` (and `extra` settings); its scratch databases count as leftovers. */
async function serviceAs(user: string, extra: Record<string, string> = {}): Promise<TestService> {
  const s = await startService(
    svc.control,
    fx.target,
    { TARGET_DATABASE_URL: `postgres://${user}@${PG_HOST}:${PG_PORT}/${encodeURIComponent(fx.target)}`, ...extra },
    svc.dataDir,
  );
  tags.push(s.app.restoreTag);
  return s;
}

/** This file's services' scratch and retired databases. */
async function leftovers(): Promise<string[]> {
  const rows = await sql<{ datname: string }>("postgres", "SELECT datname FROM pg_database WHERE datname LIKE 'bsvc\\_%'");
  return rows.map((r) => r.datname).filter((d) => tags.some((t) => d.includes(`_${t}_`)));
}

async function drain(req: { id: string; targetDatabase?: string; dropExisting?: boolean; skipSafetyBackup?: boolean; force?: boolean }) {
  const msgs: RestoreBackupResponse[] = [];
  for await (const m of svc.client.restoreBackup({ confirmRestore: true, ...req })) msgs.push(m);
  return msgs;
}

/** Every per-database and role-in-database setting of a database, by role ("" for the database's own). */
async function settingsOf(db: string): Promise<Record<string, string[]>> {
  const rows = await sql<{ role: string; config: string[] }>(
    "postgres",
    `SELECT CASE WHEN s.setrole = 0 THEN '' ELSE pg_get_userbyid(s.setrole) END AS role, s.setconfig AS config
       FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = $1`,
    [db],
  );
  return Object.fromEntries(rows.map((r) => [r.role, r.config]));
}

describe("per-database settings survive a restore exactly", () => {
  it("list settings (search_path with a quoted item, temp_tablespaces) keep their items; other settings their value", async () => {
    const db = newDbName("bs_edges_settings");
    await createDatabase(db);
    await sql(db, "CREATE SCHEMA app; CREATE SCHEMA \"my schema\"; CREATE TABLE app.t (x int); INSERT INTO app.t VALUES (1)");
    await sql("postgres", `ALTER DATABASE "${db}" SET search_path = app, "my schema", public`);
    await sql("postgres", `ALTER DATABASE "${db}" SET temp_tablespaces = pg_default`);
    await sql("postgres", `ALTER DATABASE "${db}" SET DateStyle = 'ISO, DMY'`);
    await sql("postgres", `ALTER DATABASE "${db}" SET statement_timeout = '42s'`);
    await sql("postgres", `ALTER ROLE ${role} IN DATABASE "${db}" SET search_path = "a, b", "x""y", "$user", public`);
    const before = await settingsOf(db);
    expect(before[""]).toContain('search_path=app, "my schema", public');
    expect(before[role]).toEqual(['search_path="a, b", "x""y", "$user", public']);

    const { backup } = await svc.client.createBackup({ database: db });
    const msgs = await drain({ id: backup!.id, dropExisting: true, skipSafetyBackup: true });
    expect(msgs.at(-1)!.phase).toBe(RestorePhase.DONE);
    expect(await settingsOf(db)).toEqual(before);
    // And they work: the database's search_path finds app.t unqualified.
    const [{ x }] = await sql<{ x: number }>(db, "SELECT x FROM t");
    expect(x).toBe(1);
  }, 60_000);
});

describe("a LATIN1 database", () => {
  it("is restored in place: still LATIN1, its rows intact", async () => {
    const db = newDbName("bs_edges_latin1");
    await sql("postgres", `CREATE DATABASE "${db}" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`);
    await sql(db, "CREATE TABLE café (id int PRIMARY KEY, s text); INSERT INTO café VALUES (1, 'é'), (2, 'crème brûlée')");
    // The archive is written in UTF-8, so its table of contents names public."café" as the row
    // counts do: the backup verifies, and so does its deep verification.
    const { backup } = await svc.client.createBackup({ database: db });
    expect(backup!.status).toBe(BackupStatus.VERIFIED);
    const deep = await svc.client.verifyBackup({ id: backup!.id, deep: true });
    expect(deep.status).toBe(BackupStatus.VERIFIED);
    expect(deep.verified).toBe(true);

    await sql(db, "UPDATE café SET s = 'changed'");
    const msgs = await drain({ id: backup!.id, dropExisting: true, skipSafetyBackup: true });
    expect(msgs.at(-1)!.phase).toBe(RestorePhase.DONE);
    const [d] = await sql<{ encoding: string; collate: string; ctype: string }>(
      "postgres",
      "SELECT pg_encoding_to_char(encoding) AS encoding, datcollate AS collate, datctype AS ctype FROM pg_database WHERE datname = $1",
      [db],
    );
    expect(d).toEqual({ encoding: "LATIN1", collate: "C", ctype: "C" });
    expect(await sql(db, "SELECT id, s, octet_length(s) AS bytes FROM café ORDER BY id")).toEqual([
      { id: 1, s: "é", bytes: 1 },
      { id: 2, s: "crème brûlée", bytes: 12 },
    ]);
  }, 60_000);
});

describe("a target that changes while the backup loads is not replaced behind the caller's back", () => {
  let bigBackup: string;
  beforeAll(async () => {
    bigBackup = (await svc.client.createBackup({ database: big })).backup!.id;
  }, 300_000);

  /** Server sessions of the service's scratch databases that are loading rows (COPY). */
  async function copySessions(): Promise<number> {
    const [{ n }] = await sql<{ n: string }>(
      "postgres",
      "SELECT count(*) AS n FROM (SELECT * FROM pg_stat_activity WHERE datname LIKE $1 OFFSET 0) a WHERE state = 'active' AND query ILIKE 'COPY %'",
      [`bsvc\\_restore\\_${svc.app.restoreTag}\\_%`],
    );
    return Number(n);
  }

  /** Starts a restore; `meanwhile` runs once its rows are loading; resolves with the messages or the error. */
  async function restoreWhile(req: Parameters<typeof drain>[0], meanwhile: () => Promise<void>) {
    const msgs: RestoreBackupResponse[] = [];
    const outcome = callFailure(
      (async () => {
        for await (const m of svc.client.restoreBackup({ confirmRestore: true, ...req })) msgs.push(m);
      })(),
    ).then(
      (err) => ({ err }),
      (e: unknown) => ({ err: null, other: e }),
    );
    await waitFor("the rows to be loading", async () => msgs.some((m) => m.phase === RestorePhase.RESTORING) && (await copySessions()) > 0);
    await meanwhile();
    // Still loading when the change was made, or the test proves nothing.
    expect(msgs.some((m) => m.phase === RestorePhase.FINALIZING)).toBe(false);
    return { msgs, ...(await outcome) };
  }

  it("a new target created (with a table) during the load: FAILED_PRECONDITION, it is untouched, no scratch database left", async () => {
    const target = newDbName("bs_edges_appeared");
    const { err } = await restoreWhile({ id: bigBackup, targetDatabase: target }, async () => {
      await createDatabase(target);
      await sql(target, "CREATE TABLE mine (x int); INSERT INTO mine VALUES (7)");
    });
    expect(err, "the restore went through").not.toBeNull();
    expect(Code[err!.code], err!.rawMessage).toBe("FailedPrecondition");
    expect(err!.rawMessage).toMatch(/was created while the backup was loading; nothing was changed/);
    expect(await sql(target, "SELECT x FROM mine")).toEqual([{ x: 7 }]);
    expect(await sql(target, "SELECT to_regclass('public.payload') IS NULL AS gone")).toEqual([{ gone: true }]);
    await waitFor("the scratch database to be dropped", async () => (await leftovers()).length === 0);
  }, 120_000);

  it("an empty target given a table during the load: FAILED_PRECONDITION without drop_existing, the table is still there", async () => {
    const target = newDbName("bs_edges_filled");
    await createDatabase(target);
    const { err } = await restoreWhile({ id: bigBackup, targetDatabase: target }, async () => {
      await sql(target, "CREATE TABLE mine (x int); INSERT INTO mine VALUES (7)");
    });
    expect(err, "the restore went through").not.toBeNull();
    expect(Code[err!.code], err!.rawMessage).toBe("FailedPrecondition");
    expect(err!.rawMessage).toMatch(/now holds \d+ objects, created while the backup was loading/);
    expect(err!.rawMessage).toMatch(/nothing was changed.*drop_existing/);
    expect(await sql(target, "SELECT x FROM mine")).toEqual([{ x: 7 }]);
    const [{ limit }] = await sql<{ limit: number }>("postgres", "SELECT datconnlimit AS limit FROM pg_database WHERE datname = $1", [target]);
    expect(limit).toBe(-1); // sessions are let in again
    await waitFor("the scratch database to be dropped", async () => (await leftovers()).length === 0);
  }, 120_000);

  it("a target dropped during the load: NOT_FOUND, nothing made under its name, no scratch database left", async () => {
    const target = newDbName("bs_edges_dropped");
    await createDatabase(target);
    const { err } = await restoreWhile({ id: bigBackup, targetDatabase: target }, async () => {
      await dropDatabase(target);
    });
    expect(err, "the restore went through").not.toBeNull();
    expect(Code[err!.code], err!.rawMessage).toBe("NotFound");
    expect(err!.rawMessage).toMatch(new RegExp(`database "${target}" no longer exists; nothing was changed`));
    expect(await sql("postgres", "SELECT 1 FROM pg_database WHERE datname = $1", [target])).toHaveLength(0);
    await waitFor("the scratch database to be dropped", async () => (await leftovers()).length === 0);
  }, 120_000);

  it("with drop_existing, what was written during the load is kept in a safety backup before the swap", async () => {
    const target = newDbName("bs_edges_filled_drop");
    await createDatabase(target);
    const { msgs, err } = await restoreWhile({ id: bigBackup, targetDatabase: target, dropExisting: true }, async () => {
      await sql(target, "CREATE TABLE mine (x int); INSERT INTO mine VALUES (7)");
    });
    expect(err, "the restore failed").toBeNull();
    const result = msgs.at(-1)!.result!;
    expect(msgs.some((m) => m.phase === RestorePhase.SAFETY_BACKUP)).toBe(true);
    expect(result.safetyBackupId).toMatch(/^[0-9a-f-]{36}$/);
    const { backup: safety } = await svc.client.getBackup({ id: result.safetyBackupId });
    expect({ tables: safety!.tableCount, rows: safety!.rowCount }).toEqual({ tables: 1, rows: 1n });
    expect(await sql(target, "SELECT to_regclass('public.mine') IS NULL AS gone")).toEqual([{ gone: true }]);
    expect(await leftovers()).toEqual([]);
  }, 120_000);
});

describe("a restore whose outcome was never recorded", () => {
  it("is not said, after a restart, to have left its target as it was once its swap was under way", async () => {
    const victim = newDbName("bs_edges_swapped");
    await sql(
      svc.control,
      `INSERT INTO backup_service.restore_runs (backup_id, target_database, replica_id, outcome, error)
       VALUES ('00000000-0000-4000-8000-000000000000', $1, 'dead-replica', 'RUNNING', 'swapping the restored database in')`,
      [victim],
    );
    const again = await startService(svc.control, fx.target, {}, svc.dataDir);
    try {
      const [run] = await sql<{ outcome: string; error: string }>(
        svc.control,
        "SELECT outcome, error FROM backup_service.restore_runs WHERE target_database = $1",
        [victim],
      );
      expect(run!.outcome).toBe("INTERRUPTED");
      expect(run!.error).toMatch(/while or after swapping the restored database in; check whether/);
    } finally {
      await again.close();
    }
  });
});

describe("a restore that ended without letting sessions in again", () => {
  it("has them let in by the next start (or sweep): the connection limit put back, connections allowed, the outcome kept", async () => {
    const db = newDbName("bs_edges_shut");
    await createDatabase(db);
    await sql("postgres", `ALTER DATABASE "${db}" CONNECTION LIMIT 0 ALLOW_CONNECTIONS false`);
    // As a restore leaves it whose swap failed, and whose release failed after it.
    await sql(
      svc.control,
      `INSERT INTO backup_service.restore_runs (backup_id, target_database, replica_id, outcome, error, connections_blocked, original_connection_limit, finished_at)
       VALUES ('00000000-0000-4000-8000-000000000000', $1, 'dead-replica', 'FAILED', 'the swap failed', true, 7, now())`,
      [db],
    );
    const again = await startService(svc.control, fx.target, {}, svc.dataDir);
    try {
      expect(await accessOf(db)).toEqual({ allow: true, limit: 7 });
      const [run] = await sql<{ outcome: string; error: string; connections_blocked: boolean }>(
        svc.control,
        "SELECT outcome, error, connections_blocked FROM backup_service.restore_runs WHERE target_database = $1",
        [db],
      );
      expect(run).toEqual({ outcome: "FAILED", error: "the swap failed", connections_blocked: false });
    } finally {
      await again.close();
    }
  });

  it("is left alone while a backup or restore of its database runs, and let in once that has ended", async () => {
    const db = newDbName("bs_edges_shut_busy");
    await createDatabase(db);
    await sql(db, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    await sql("postgres", `ALTER DATABASE "${db}" CONNECTION LIMIT 0`);
    await sql(
      svc.control,
      `INSERT INTO backup_service.restore_runs (backup_id, target_database, replica_id, outcome, error, connections_blocked, original_connection_limit, finished_at)
       VALUES ('00000000-0000-4000-8000-000000000000', $1, 'dead-replica', 'FAILED', 'the swap failed', true, 7, now())`,
      [db],
    );
    // A backup of it that holds the database's lock (its dump blocked on a table lock): what a new
    // restore of it would hold too, whose hold on the sessions a release now would undo.
    const block = await blockTable(db, "t");
    const backup = svc.client.createBackup({ database: db });
    let again: TestService | null = null;
    try {
      await waitForBlockedDump(db);
      again = await startService(svc.control, fx.target, { RECOVERY_INTERVAL_MS: "300" }, svc.dataDir);
      await new Promise((r) => setTimeout(r, 1000));
      expect(await connLimitOf(db)).toBe(0);
      expect((await runOf(db))?.connections_blocked).toBe(true);
      await block.release();
      expect((await backup).backup?.status).toBe(BackupStatus.VERIFIED);
      await waitFor("the sweep to let sessions in", async () => (await connLimitOf(db)) === 7);
      expect(await runOf(db)).toEqual({ outcome: "FAILED", connections_blocked: false });
    } finally {
      await block.release().catch(() => undefined);
      await backup.catch(() => undefined);
      await again?.close();
    }
  });
});

/** The service's sessions in `db` that wait on a lock, running a query like `like`. */
async function lockWaiters(db: string, like: string): Promise<number> {
  const [{ n }] = await sql<{ n: string }>(
    "postgres",
    `SELECT count(*) AS n FROM (SELECT * FROM pg_stat_activity WHERE datname = $1 OFFSET 0) a
      WHERE application_name = 'backup-service' AND wait_event_type = 'Lock' AND query ILIKE $2`,
    [db, like],
  );
  return Number(n);
}

async function allowsConnections(db: string): Promise<boolean> {
  const [{ allow }] = await sql<{ allow: boolean }>("postgres", "SELECT datallowconn AS allow FROM pg_database WHERE datname = $1", [db]);
  return allow;
}

async function connLimitOf(db: string): Promise<number> {
  const [{ limit }] = await sql<{ limit: number }>("postgres", "SELECT datconnlimit AS limit FROM pg_database WHERE datname = $1", [db]);
  return limit;
}

/**
 * An application that reconnects to `db` as `user` the moment its session is ended, as a
 * connection pool does; each session runs `query` (by default one that sits until it is ended),
 * then ends and the next connects. stop() ends it and
 * resolves with how many sessions it had and the errors the server gave it, once each.
 */
function reconnecting(db: string, user = PG_USER, query = "SELECT pg_sleep(60)") {
  let stopped = false;
  let sessions = 0;
  const refusals = new Set<string>();
  let current: pg.Client | null = null;
  const loop = (async () => {
    while (!stopped) {
      const c = new pg.Client({ host: PG_HOST, port: PG_PORT, user, database: db });
      c.on("error", () => undefined);
      current = c;
      try {
        await c.connect();
        sessions++;
        await c.query(query);
      } catch (err) {
        const msg = (err as Error).message;
        if (!/terminat|Connection terminated/i.test(msg)) refusals.add(msg);
      } finally {
        await c.end().catch(() => undefined);
      }
    }
  })();
  return {
    async stop(): Promise<{ sessions: number; refusals: string[] }> {
      stopped = true;
      await current?.end().catch(() => undefined);
      await loop;
      return { sessions, refusals: [...refusals] };
    },
  };
}

/** Waits until the sessions in the control database of a service started at `spawned` (killed since) are gone. */
async function killedServiceGone(spawned: Date): Promise<void> {
  await waitFor("the killed service's sessions to end", async () => {
    const [{ n }] = await sql<{ n: string }>(
      "postgres",
      "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND backend_start >= $2",
      [svc.control, spawned],
    );
    return Number(n) === 0;
  });
}

/** Starts the service again on the same records (its start-up recovers), runs `check`, stops it; then waits for the scratch databases to be gone. */
async function afterRestart(check: () => Promise<void>): Promise<void> {
  const again = await startService(svc.control, fx.target, {}, svc.dataDir);
  try {
    await check();
  } finally {
    await again.close();
  }
  await waitFor("the scratch database to be dropped", async () => (await leftovers()).length === 0);
}

/** Whether `db` allows connections, and its connection limit. */
async function accessOf(db: string): Promise<{ allow: boolean; limit: number }> {
  const [row] = await sql<{ allow: boolean; limit: number }>(
    "postgres",
    "SELECT datallowconn AS allow, datconnlimit AS limit FROM pg_database WHERE datname = $1",
    [db],
  );
  return row!;
}

/** The outcome of the restore run into `db`, and whether it still holds the target's sessions off. */
async function runOf(db: string): Promise<{ outcome: string; connections_blocked: boolean } | undefined> {
  const [run] = await sql<{ outcome: string; connections_blocked: boolean }>(
    svc.control,
    "SELECT outcome, connections_blocked FROM backup_service.restore_runs WHERE target_database = $1",
    [db],
  );
  return run;
}

describe("a crash while the target's sessions are held off", () => {
  it("leaves the next start what it needs to put the connection limit back", async () => {
    const db = newDbName("bs_edges_held");
    await createDatabase(db);
    await sql(db, "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)");
    await sql("postgres", `ALTER DATABASE "${db}" CONNECTION LIMIT 7`);
    const { backup } = await svc.client.createBackup({ database: db });
    // An open transaction that changed the target's pg_database row: the restore's
    // ALTER DATABASE ... CONNECTION LIMIT 0 waits for it, so the service can be killed right there.
    const blocker = await connect("postgres");
    await blocker.query("BEGIN");
    await blocker.query(`ALTER DATABASE "${db}" CONNECTION LIMIT 7`);
    const [{ spawned }] = await sql<{ spawned: Date }>("postgres", "SELECT now() AS spawned");
    const child = await spawnService(svc.control, fx.target, svc.dataDir);
    try {
      void (async () => {
        for await (const _ of child.client.restoreBackup({ id: backup!.id, confirmRestore: true, dropExisting: true, skipSafetyBackup: true })) {
          // drain
        }
      })().catch(() => undefined);
      await waitFor("the restore to wait on the connection limit", async () => (await lockWaiters("postgres", "ALTER DATABASE%CONNECTION LIMIT 0")) > 0);
      child.child.kill("SIGKILL");
      await child.exited;
    } finally {
      if (child.child.exitCode === null) child.child.kill("SIGKILL");
      await blocker.query("ROLLBACK").catch(() => undefined);
      await blocker.end().catch(() => undefined);
    }
    // The killed service's ALTER goes through once the blocker is gone: the target is left at 0.
    await waitFor("the connection limit to be 0", async () => (await connLimitOf(db)) === 0);
    // And the killed service's sessions (its run lock) are gone, so that recovery may act.
    await killedServiceGone(spawned);
    await afterRestart(async () => {
      expect(await connLimitOf(db)).toBe(7);
      expect(await runOf(db)).toEqual({ outcome: "INTERRUPTED", connections_blocked: false });
      expect(await sql(db, "SELECT count(*)::int AS n FROM t")).toEqual([{ n: 2 }]);
    });
  }, 120_000);

  it("during the swap, once no session may connect: the next start allows connections again", async () => {
    const db = newDbName("bs_edges_fenced");
    await createDatabase(db);
    await sql(db, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 300000)");
    const { backup } = await svc.client.createBackup({ database: db });
    const [{ spawned }] = await sql<{ spawned: Date }>("postgres", "SELECT now() AS spawned");
    const child = await spawnService(svc.control, fx.target, svc.dataDir);
    const blocker = await connect("postgres");
    try {
      void (async () => {
        for await (const _ of child.client.restoreBackup({ id: backup!.id, confirmRestore: true, dropExisting: true, skipSafetyBackup: true })) {
          // drain
        }
      })().catch(() => undefined);
      // An open transaction that changed the scratch database's pg_database row: the swap shuts the
      // target, then waits to shut the scratch database, so the service can be killed right there.
      const scratch = await waitFor("the scratch database", async () => {
        const rows = await sql<{ datname: string }>("postgres", "SELECT datname FROM pg_database WHERE datname LIKE $1", [
          `bsvc\_restore\_${svc.app.restoreTag}\_%`,
        ]);
        return rows[0]?.datname;
      });
      await blocker.query("BEGIN");
      await blocker.query(`ALTER DATABASE "${scratch}" CONNECTION LIMIT -1`);
      await waitFor("the swap to wait on the scratch database", async () => (await lockWaiters("postgres", "ALTER DATABASE%ALLOW_CONNECTIONS false")) > 0);
      child.child.kill("SIGKILL");
      await child.exited;
    } finally {
      if (child.child.exitCode === null) child.child.kill("SIGKILL");
      await blocker.query("ROLLBACK").catch(() => undefined);
      await blocker.end().catch(() => undefined);
    }
    expect(await allowsConnections(db), "the target was not shut when the service was killed").toBe(false);
    await killedServiceGone(spawned);
    await afterRestart(async () => {
      expect(await accessOf(db)).toEqual({ allow: true, limit: -1 });
      expect(await runOf(db)).toEqual({ outcome: "INTERRUPTED", connections_blocked: false });
      expect(await sql(db, "SELECT count(*)::int AS n FROM t")).toEqual([{ n: 300000 }]);
    });
  }, 120_000);
});

describe("an application that reconnects the moment its sessions are ended", () => {
  it("is kept out for the swap, which goes through; it is let in again to the restored database", async () => {
    const db = newDbName("bs_edges_pool");
    await createDatabase(db);
    await sql(db, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 300000)");
    const { backup } = await svc.client.createBackup({ database: db });
    await sql(db, "INSERT INTO t VALUES (0)");
    // A superuser's pool: the connection limit of 0 does not keep it out.
    const app = reconnecting(db);
    let phases: RestorePhase[] = [];
    let err: ConnectError | null;
    try {
      await waitFor("the application to be connected", async () => (await sql("postgres", "SELECT 1 FROM pg_stat_activity WHERE datname = $1", [db])).length > 0);
      err = await (async () => {
        for await (const m of svc.client.restoreBackup({ id: backup!.id, confirmRestore: true, dropExisting: true, skipSafetyBackup: true })) {
          phases.push(m.phase);
        }
      })().then(
        () => null,
        (e: unknown) => ConnectError.from(e),
      );
      expect(err, err?.rawMessage).toBeNull();
      expect(phases.at(-1)).toBe(RestorePhase.DONE);
      // It is let in again, to the restored database.
      expect(await allowsConnections(db)).toBe(true);
      await waitFor("the application to be back", async () => (await sql("postgres", "SELECT 1 FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'SELECT pg_sleep%'", [db])).length > 0);
    } finally {
      const seen = await app.stop();
      expect(seen.sessions).toBeGreaterThan(1);
      // Refused in the server's words while the swap ran.
      expect(seen.refusals.join("\n")).toMatch(new RegExp(`database "${db}" is not currently accepting connections`));
    }
    expect(await sql(db, "SELECT count(*)::int AS n FROM t")).toEqual([{ n: 300000 }]);
    await waitFor("the retired database to be dropped", async () => (await leftovers()).length === 0);
  }, 60_000);
});

/** Whether the database named `db` is still the one with `oid` (not replaced). */
async function oidStill(db: string, oid: string): Promise<boolean> {
  const rows = await sql<{ oid: string }>("postgres", "SELECT oid::text AS oid FROM pg_database WHERE datname = $1", [db]);
  return rows[0]?.oid === oid;
}

/** Lets a stopped server process go on; once it is gone there is nothing to signal. */
function resume(pid: number): void {
  try {
    process.kill(pid, "SIGCONT");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ESRCH") throw err;
  }
}

/**
 * A superuser's session in `db` (the connection limit of 0 does not keep it out), whose server
 * process is then stopped (SIGSTOP: it neither ends when told to nor reports anything), after
 * running `statements` one by one. Resolves with the process's pid and the session.
 */
async function stoppedSession(db: string, statements: string[] = []): Promise<{ pid: number; session: pg.Client }> {
  const session = await connect(db);
  const pid = (await session.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0]!.pid;
  for (const q of statements) await session.query(q);
  process.kill(pid, "SIGSTOP");
  return { pid, session };
}

/** Restores `id` over its database with drop_existing and a safety backup through the superuser service; resolves with the call's error, null if it succeeded. */
function restoreOverAsSuperuser(id: string): Promise<ConnectError | null> {
  return (async () => {
    for await (const _ of svc.client.restoreBackup({ id, confirmRestore: true, dropExisting: true })) {
      // drain
    }
  })().then(
    () => null,
    (e: unknown) => ConnectError.from(e),
  );
}

describe("a session that does not end when told to", () => {
  // Stopping a server process takes root, as CI runs. While it is stopped (about 12 s), every
  // DROP DATABASE on the server waits for it (PostgreSQL's signal barrier), other files' too.
  const asRoot = process.getuid?.() === 0;

  it.skipIf(!asRoot)(
    "holds up the swap until it has gone, and what it wrote but had not reported yet still refuses the swap",
    async () => {
      const db = newDbName("bs_edges_stopped");
      await createDatabase(db);
      await sql(db, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 300000)");
      const { backup } = await svc.client.createBackup({ database: db });
      const [{ oid }] = await sql<{ oid: string }>("postgres", "SELECT oid::text AS oid FROM pg_database WHERE datname = $1", [db]);
      // A write in a transaction still open when it is stopped: a session reports its counts only
      // once its transaction has ended (an aborted insert counts too). Told to end before the safety
      // backup, it does not: so the write is not in the count taken then.
      const { pid, session } = await stoppedSession(db, ["BEGIN", "INSERT INTO t VALUES (-1)"]);
      try {
        const call = restoreOverAsSuperuser(backup!.id);
        // The swap has shut the target and is waiting 5 s for the session to end; it goes on once
        // that wait is over and the next has begun, and reports its write in ending.
        await waitFor("the swap to shut the target", async () => !(await allowsConnections(db)), 60_000);
        await new Promise((r) => setTimeout(r, 5500));
        resume(pid);
        const err = await call;
        expect(err, "the restore went through").not.toBeNull();
        expect(Code[err!.code], err!.rawMessage).toBe("FailedPrecondition");
        expect(err!.rawMessage).toMatch(new RegExp(`^database "${db}" was written to \\(1 row\\) after its safety backup began`));
      } finally {
        resume(pid);
        await session.end().catch(() => undefined);
      }
      // Not replaced: the target as that session left it (its transaction rolled back as it ended).
      expect(await sql(db, "SELECT count(*)::int AS n FROM t")).toEqual([{ n: 300000 }]);
      expect(await oidStill(db, oid)).toBe(true);
      expect(await allowsConnections(db)).toBe(true);
      await waitFor("the scratch database to be dropped", async () => (await leftovers()).length === 0);
    },
    90_000,
  );
});

describe("a service role that is not a superuser", () => {
  const creator = uniqueName("bs_edges_creator");
  let limited: TestService;
  beforeAll(async () => {
    // May create databases, but not change other roles' settings.
    await sql("postgres", `CREATE ROLE ${creator} LOGIN CREATEDB`);
    limited = await serviceAs(creator);
  });
  const owned: string[] = [];
  afterAll(async () => {
    await limited?.close();
    // Every database the role owns, or it cannot be dropped.
    const mine = await sql<{ datname: string }>("postgres", "SELECT datname FROM pg_database WHERE pg_get_userbyid(datdba) = $1", [creator]);
    for (const d of [...owned, ...mine.map((r) => r.datname)]) await dropDatabase(d);
    await sql("postgres", `DROP ROLE IF EXISTS ${creator}`).catch(() => undefined);
  });

  async function restoreAs(id: string) {
    return callFailure(
      (async () => {
        for await (const _ of limited.client.restoreBackup({ id, confirmRestore: true, dropExisting: true, skipSafetyBackup: true })) {
          // drain
        }
      })(),
    );
  }

  it("a setting of another role in the target it may not copy: FAILED_PRECONDITION in the server's words, nothing left", async () => {
    const db = newDbName("bs_edges_roleset");
    owned.push(db);
    await sql("postgres", `CREATE DATABASE "${db}" OWNER ${creator}`);
    await sql(db, `CREATE TABLE t (id int); INSERT INTO t VALUES (1); ALTER TABLE t OWNER TO ${creator}`);
    await sql("postgres", `ALTER ROLE ${role} IN DATABASE "${db}" SET work_mem = '8MB'`);
    const { backup } = await svc.client.createBackup({ database: db });
    const err = await restoreAs(backup!.id);
    expect(Code[err.code], err.rawMessage).toBe("FailedPrecondition");
    expect(err.rawMessage).toMatch(new RegExp(`settings of "${db}" onto the scratch database: permission denied; nothing was changed \\(hint: .*CREATEROLE`));
    expect(await sql(db, "SELECT id FROM t")).toEqual([{ id: 1 }]);
    expect(await leftovers()).toEqual([]);
  }, 60_000);

  it("a setting of a superuser in the target, which CREATEROLE does not let it copy: FAILED_PRECONDITION saying only a superuser may", async () => {
    const manager = uniqueName("bs_edges_manager");
    await sql("postgres", `CREATE ROLE ${manager} LOGIN CREATEDB CREATEROLE`);
    const asManager = await serviceAs(manager);
    const db = newDbName("bs_edges_suset");
    try {
      await sql("postgres", `CREATE DATABASE "${db}" OWNER ${manager}`);
      await sql(db, `CREATE TABLE t (id int); INSERT INTO t VALUES (1); ALTER TABLE t OWNER TO ${manager}`);
      await sql("postgres", `ALTER ROLE ${PG_USER} IN DATABASE "${db}" SET work_mem = '8MB'`);
      const { backup } = await svc.client.createBackup({ database: db });
      const err = await callFailure(
        (async () => {
          for await (const _ of asManager.client.restoreBackup({ id: backup!.id, confirmRestore: true, dropExisting: true, skipSafetyBackup: true })) {
            // drain
          }
        })(),
      );
      expect(Code[err.code], err.rawMessage).toBe("FailedPrecondition");
      expect(err.rawMessage).toMatch(/must be superuser to alter superusers; nothing was changed \(hint: a superuser role's settings in the database only a superuser may copy/);
      expect(await sql(db, "SELECT id FROM t")).toEqual([{ id: 1 }]);
      expect(await leftovers()).toEqual([]);
    } finally {
      await asManager.close();
      await dropDatabase(db); // it owns it
      await sql("postgres", `DROP ROLE IF EXISTS ${manager}`).catch(() => undefined);
    }
  }, 60_000);

  it("a target owned by a role it is not a member of: refused before anything is created, naming the owner", async () => {
    const db = newDbName("bs_edges_owner");
    await sql("postgres", `CREATE DATABASE "${db}" OWNER ${role}`);
    await sql(db, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    const { backup } = await svc.client.createBackup({ database: db });
    const err = await restoreAs(backup!.id);
    expect(Code[err.code], err.rawMessage).toBe("FailedPrecondition");
    expect(err.rawMessage).toContain(`may not replace database "${db}", which role "${role}" owns; nothing was changed`);
    expect(err.rawMessage).not.toMatch(/may not create databases/);
    expect(await sql(db, "SELECT id FROM t")).toEqual([{ id: 1 }]);
    expect(await leftovers()).toEqual([]);
  }, 60_000);

  it("a role the server refuses in the postgres database: the database moves go through the one TARGET_DATABASE_URL names; refused there and in template1 too, FAILED_PRECONDITION in the server's words", async () => {
    const shut = uniqueName("bs_edges_nopg");
    await sql("postgres", `CREATE ROLE ${shut} LOGIN CREATEDB`);
    // What fails its every log-in to postgres, as no CONNECT privilege or no pg_hba.conf line would.
    const refuse = (db: string) => sql("postgres", `ALTER ROLE ${shut} IN DATABASE "${db}" SET session_preload_libraries = 'bs_no_such_lib'`);
    await refuse("postgres");
    const asShut = await serviceAs(shut);
    const source = newDbName("bs_edges_nopg_src");
    const into = [newDbName("bs_edges_nopg_a"), newDbName("bs_edges_nopg_b")];
    const restoreInto = async (id: string, targetDatabase: string) => {
      for await (const _ of asShut.client.restoreBackup({ id, targetDatabase, confirmRestore: true })) {
        // drain
      }
    };
    try {
      await sql("postgres", `CREATE DATABASE "${source}" OWNER ${shut}`);
      await sql(source, `CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2); ALTER TABLE t OWNER TO ${shut}`);
      const { backup } = await svc.client.createBackup({ database: source });
      expect(await connect("postgres", shut).then((c) => c.end(), (e: Error) => e.message)).toMatch(/bs_no_such_lib/);

      await restoreInto(backup!.id, into[0]!);
      expect(await sql(into[0]!, "SELECT id FROM t ORDER BY id")).toEqual([{ id: 1 }, { id: 2 }]);

      await refuse(fx.target);
      await refuse("template1");
      const err = await callFailure(restoreInto(backup!.id, into[1]!));
      expect(Code[err.code], err.rawMessage).toBe("FailedPrecondition");
      expect(err.rawMessage).toMatch(/refused a session in database "postgres": .*bs_no_such_lib/);
      expect(await sql("postgres", "SELECT 1 FROM pg_database WHERE datname = $1", [into[1]])).toEqual([]);
      expect(await leftovers()).toEqual([]);
    } finally {
      await asShut.close();
      const mine = await sql<{ datname: string }>("postgres", "SELECT datname FROM pg_database WHERE pg_get_userbyid(datdba) = $1", [shut]);
      for (const d of mine) await dropDatabase(d.datname);
      await sql("postgres", `DROP ROLE IF EXISTS ${shut}`).catch(() => undefined);
    }
  }, 60_000);

  /**
   * A database owned by the service's role, holding t: 300,000 rows (enough that a backup or a
   * load takes a moment), owned by that role too; and a backup of it.
   */
  async function ownTarget(prefix: string): Promise<{ db: string; backupId: string }> {
    const db = newDbName(prefix);
    await sql("postgres", `CREATE DATABASE "${db}" OWNER ${creator}`);
    await sql(db, `CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 300000); ALTER TABLE t OWNER TO ${creator}`);
    const { backup } = await limited.client.createBackup({ database: db });
    expect(backup?.status).toBe(BackupStatus.VERIFIED);
    return { db, backupId: backup!.id };
  }

  /**
   * Restores `id` over its database as the limited service, with drop_existing and a safety
   * backup; once a message of phase `when` has arrived, a superuser session (this test's own
   * role) connects to `db` and stays, or leaves `leaveAfterMs` after the swap has begun. Resolves with the call's
   * error (null if it succeeded), its phases, those seen before the session was in, and the session.
   */
  async function restoreWithSuperuserArriving(id: string, db: string, when: RestorePhase, leaveAfterMs?: number) {
    const phases: RestorePhase[] = [];
    let arrived: Promise<pg.Client> | null = null;
    let seenBefore: RestorePhase[] = [];
    const call = async () => {
      for await (const m of limited.client.restoreBackup({ id, confirmRestore: true, dropExisting: true })) {
        phases.push(m.phase);
        if (m.phase === when && !arrived) {
          arrived = connect(db).then((c) => {
            seenBefore = [...phases];
            return c;
          });
          await arrived;
        }
        if (m.phase === RestorePhase.FINALIZING && arrived && leaveAfterMs !== undefined) {
          const session = await arrived;
          setTimeout(() => void session.end(), leaveAfterMs);
        }
      }
    };
    const err = await call().then(
      () => null,
      (e: unknown) => ConnectError.from(e),
    );
    expect(arrived, `no message of phase ${RestorePhase[when]}`).not.toBeNull();
    return { err, phases, seenBefore, session: await arrived! };
  }

  /** Restores `id` over its database as the limited service with drop_existing (and a safety backup unless `skip`); resolves with the call's error, null if it succeeded. */
  function restoreOver(id: string, skip: boolean): Promise<ConnectError | null> {
    return (async () => {
      for await (const _ of limited.client.restoreBackup({ id, confirmRestore: true, dropExisting: true, skipSafetyBackup: skip })) {
        // drain
      }
    })().then(
      () => null,
      (e: unknown) => ConnectError.from(e),
    );
  }

  it.each([true, false])(
    "an application of its own role that reconnects the moment its sessions are ended (skip_safety_backup %s): kept out for the swap, which goes through",
    async (skip) => {
      const { db, backupId } = await ownTarget("bs_edges_own_pool");
      await sql(db, "INSERT INTO t VALUES (0)");
      const app = reconnecting(db, creator);
      try {
        await waitFor("the application to be connected", async () => (await sql("postgres", "SELECT 1 FROM pg_stat_activity WHERE datname = $1", [db])).length > 0);
        const err = await restoreOver(backupId, skip);
        expect(err, err?.rawMessage).toBeNull();
      } finally {
        await app.stop();
      }
      expect(await sql(db, "SELECT count(*)::int AS n FROM t")).toEqual([{ n: 300000 }]);
      await waitFor("the retired database to be dropped", async () => (await leftovers()).length === 0);
    },
    60_000,
  );

  it("an application of its own role that only reads through the safety backup (with temporary tables, and an ANALYZE): the swap goes through", async () => {
    const { db, backupId } = await ownTarget("bs_edges_own_reader");
    // Writes to the system catalogs and to its own temporary tables, none to the database's tables.
    const app = reconnecting(db, creator, "CREATE TEMP TABLE scratchpad AS SELECT id FROM t LIMIT 100; ANALYZE t; SELECT pg_sleep(0.01)");
    let err: ConnectError | null;
    try {
      await waitFor("the application to be connected", async () => (await sql("postgres", "SELECT 1 FROM pg_stat_activity WHERE datname = $1", [db])).length > 0);
      err = await restoreOver(backupId, false);
    } finally {
      const seen = await app.stop();
      expect(seen.sessions).toBeGreaterThan(1);
    }
    expect(err, err?.rawMessage).toBeNull();
    expect(await sql(db, "SELECT count(*)::int AS n FROM t")).toEqual([{ n: 300000 }]);
    await waitFor("the retired database to be dropped", async () => (await leftovers()).length === 0);
  }, 60_000);

  it("an application of its own role that goes on writing through the safety backup: FAILED_PRECONDITION, the target as the application left it", async () => {
    const { db, backupId } = await ownTarget("bs_edges_own_writer");
    // A new session every few milliseconds, each writing one row: this role cannot keep them out.
    const app = reconnecting(db, creator, "INSERT INTO t VALUES (-1); SELECT pg_sleep(0.01)");
    let err: ConnectError | null;
    try {
      await waitFor("the application to have written", async () => (await sql(db, "SELECT 1 FROM t WHERE id = -1 LIMIT 1")).length > 0);
      err = await restoreOver(backupId, false);
    } finally {
      await app.stop();
    }
    expect(err, "the restore went through").not.toBeNull();
    expect(Code[err!.code], err!.rawMessage).toBe("FailedPrecondition");
    expect(err!.rawMessage).toMatch(
      new RegExp(`^database "${db}" was written to \\(\\d+ rows?\\) after its safety backup began, so the safety backup does not hold its last state; nothing was changed \\(hint: stop its clients`),
    );
    // Not replaced: every row the application wrote is still there, and it may connect.
    const [{ n, written }] = await sql<{ n: number; written: number }>(db, "SELECT count(*)::int AS n, count(*) FILTER (WHERE id = -1)::int AS written FROM t");
    expect(written).toBeGreaterThan(0);
    expect(n).toBe(300000 + written);
    expect(await allowsConnections(db)).toBe(true);
    await waitFor("the scratch database to be dropped", async () => (await leftovers()).length === 0);
  }, 60_000);

  it("a superuser's session in the target, which its role may not end: refused before the load, naming the role; the session left alone", async () => {
    const { db, backupId } = await ownTarget("bs_edges_su_before");
    const session = await connect(db);
    try {
      const err = await restoreAs(backupId);
      expect(Code[err.code], err.rawMessage).toBe("FailedPrecondition");
      expect(err.rawMessage).toContain(`database "${db}" has sessions of role "${PG_USER}" that the service's role may not end; nothing was changed`);
      expect(err.rawMessage).toMatch(/hint: close them; only a superuser may end a superuser's sessions/);
      expect((await session.query("SELECT count(*)::int AS n FROM t")).rows).toEqual([{ n: 300000 }]);
      // Refused before a scratch database was made (none was ever there to drop).
      expect(await leftovers()).toEqual([]);
    } finally {
      await session.end();
    }
  }, 60_000);

  it("one that arrives during the load: refused before the safety backup and the swap, the target and the session left alone", async () => {
    const { db, backupId } = await ownTarget("bs_edges_su_load");
    await sql(db, "INSERT INTO t VALUES (0)"); // so that a restore would show
    const { err, phases, session } = await restoreWithSuperuserArriving(backupId, db, RestorePhase.RESTORING);
    try {
      expect(phases).not.toContain(RestorePhase.SAFETY_BACKUP);
      expect(err, "the restore went through").not.toBeNull();
      expect(Code[err!.code], err!.rawMessage).toBe("FailedPrecondition");
      expect(err!.rawMessage).toContain(`database "${db}" has sessions of role "${PG_USER}" that the service's role may not end; nothing was changed`);
      expect((await session.query("SELECT count(*)::int AS n FROM t")).rows).toEqual([{ n: 300001 }]);
      // The swap shut it while it waited; it lets everyone in again.
      expect(await allowsConnections(db)).toBe(true);
      await waitFor("the scratch database to be dropped", async () => (await leftovers()).length === 0);
    } finally {
      await session.end();
    }
  }, 60_000);

  it("one that arrives during the safety backup: the swap waits for it a moment, then FAILED_PRECONDITION; the target left as it was", async () => {
    const { db, backupId } = await ownTarget("bs_edges_su_swap");
    await sql(db, "INSERT INTO t VALUES (0)");
    const { err, phases, seenBefore, session } = await restoreWithSuperuserArriving(backupId, db, RestorePhase.SAFETY_BACKUP);
    try {
      // In before the swap began, or the test proves nothing; and the swap was reached.
      expect(seenBefore).not.toContain(RestorePhase.FINALIZING);
      expect(phases).toContain(RestorePhase.FINALIZING);
      expect(err, "the restore went through").not.toBeNull();
      expect(Code[err!.code], err!.rawMessage).toBe("FailedPrecondition");
      expect(err!.rawMessage).toContain(`database "${db}" has sessions of role "${PG_USER}" that the service's role may not end; nothing was changed`);
      expect((await session.query("SELECT count(*)::int AS n FROM t")).rows).toEqual([{ n: 300001 }]);
      // The swap shut it while it waited; it lets everyone in again.
      expect(await allowsConnections(db)).toBe(true);
      const [{ owner }] = await sql<{ owner: string }>("postgres", "SELECT pg_get_userbyid(datdba) AS owner FROM pg_database WHERE datname = $1", [db]);
      expect(owner).toBe(creator);
      await waitFor("the scratch and retired databases to be dropped", async () => (await leftovers()).length === 0);
    } finally {
      await session.end();
    }
  }, 60_000);

  it("one that arrives during the safety backup and leaves a moment later: the swap waits for it and goes through", async () => {
    const { db, backupId } = await ownTarget("bs_edges_su_leaves");
    await sql(db, "INSERT INTO t VALUES (0)");
    const { err, phases, seenBefore } = await restoreWithSuperuserArriving(backupId, db, RestorePhase.SAFETY_BACKUP, 300);
    expect(seenBefore).not.toContain(RestorePhase.FINALIZING);
    expect(err, err?.rawMessage).toBeNull();
    expect(phases.at(-1)).toBe(RestorePhase.DONE);
    expect(await sql(db, "SELECT count(*)::int AS n FROM t")).toEqual([{ n: 300000 }]);
    await waitFor("the retired database to be dropped", async () => (await leftovers()).length === 0);
  }, 60_000);

  /**
   * A service whose role is a member of `role` (inheriting its privileges or not), and a new
   * database owned by `role` holding t(1); the role is dropped afterwards.
   */
  async function asOwnerMember(
    inherit: boolean,
    fn: (member: TestService, db: string) => Promise<void>,
  ): Promise<void> {
    const member = uniqueName(inherit ? "bs_edges_inherit" : "bs_edges_noinherit");
    const db = newDbName(inherit ? "bs_edges_iowner" : "bs_edges_niowner");
    await sql("postgres", `CREATE ROLE ${member} LOGIN CREATEDB ${inherit ? "INHERIT" : "NOINHERIT"}; GRANT ${role} TO ${member}`);
    const asMember = await serviceAs(member);
    try {
      await sql("postgres", `CREATE DATABASE "${db}" OWNER ${role}`);
      await sql(db, `CREATE TABLE t (id int); INSERT INTO t VALUES (1); ALTER TABLE t OWNER TO ${role}`);
      await fn(asMember, db);
    } finally {
      await asMember.close();
      await sql("postgres", `DROP ROLE IF EXISTS ${member}`).catch(() => undefined);
    }
  }

  it("a superuser's session in the scratch database: the swap waits, then FAILED_PRECONDITION naming it; the sweep drops it once the session has gone", async () => {
    const { db, backupId } = await ownTarget("bs_edges_su_scratch");
    const sweeping = await serviceAs(creator, { RECOVERY_INTERVAL_MS: "300" });
    let session: pg.Client | null = null;
    try {
      const call = (async () => {
        for await (const _ of sweeping.client.restoreBackup({ id: backupId, confirmRestore: true, dropExisting: true, skipSafetyBackup: true })) {
          // drain
        }
      })().then(
        () => null,
        (e: unknown) => ConnectError.from(e),
      );
      const scratch = await waitFor("the scratch database", async () => {
        const rows = await sql<{ datname: string }>("postgres", "SELECT datname FROM pg_database WHERE datname LIKE $1", [
          `bsvc\_restore\_${sweeping.app.restoreTag}\_%`,
        ]);
        return rows[0]?.datname;
      });
      session = await connect(scratch);
      const err = await call;
      expect(err, "the restore went through").not.toBeNull();
      expect(Code[err!.code], err!.rawMessage).toBe("FailedPrecondition");
      expect(err!.rawMessage).toContain(`database "${scratch}" has sessions of role "${PG_USER}" that the service's role may not end; nothing was changed`);
      expect(await sql(db, "SELECT count(*)::int AS n FROM t")).toEqual([{ n: 300000 }]);
      // It could not be dropped with the session in it; the next sweep after the session has gone drops it.
      expect(await sql("postgres", "SELECT 1 FROM pg_database WHERE datname = $1", [scratch])).toHaveLength(1);
      await session.end();
      session = null;
      await waitFor("the sweep to drop the scratch database", async () => (await leftovers()).length === 0);
    } finally {
      await session?.end().catch(() => undefined);
      await sweeping.close();
    }
  }, 60_000);

  it("start-up's clean-up goes on past a database it cannot drop yet, and the sweep drops that one later", async () => {
    const sweeping = await serviceAs(creator, { RECOVERY_INTERVAL_MS: "300" });
    const tag = sweeping.app.restoreTag;
    await sweeping.close();
    // As a crash would leave them: no live restore holds their locks.
    const [held, scratch, retired] = [`bsvc_restore_${tag}_00held`, `bsvc_restore_${tag}_00free`, `bsvc_retired_${tag}_00free`];
    for (const d of [held, scratch, retired]) await sql("postgres", `CREATE DATABASE "${d}" OWNER ${creator}`);
    const session = await connect(held);
    let again: TestService | null = null;
    try {
      again = await serviceAs(creator, { RECOVERY_INTERVAL_MS: "300" });
      const present = async () =>
        (await sql<{ datname: string }>("postgres", "SELECT datname FROM pg_database WHERE datname = ANY($1) ORDER BY 1", [[held, scratch, retired]])).map(
          (r) => r.datname,
        );
      // The two it could drop are gone as the service starts; the held one stays while its session does.
      expect(await present()).toEqual([held]);
      await session.end();
      await waitFor("the sweep to drop the held database", async () => (await present()).length === 0);
    } finally {
      await session.end().catch(() => undefined);
      await again?.close();
      for (const d of [held, scratch, retired]) await dropDatabase(d);
    }
  }, 60_000);

  /** The control database's record of a backup: its status and error. */
  async function recordOf(id: string) {
    const [row] = await sql<{ status: string; error: string | null }>(
      svc.control,
      "SELECT status, error_message AS error FROM backup_service.backup_history WHERE id = $1",
      [id],
    );
    return row;
  }

  it("a backup of a table it may not read: FAILED_PRECONDITION with the grant to ask for, FAILED, no file", async () => {
    const db = newDbName("bs_edges_unreadable");
    await sql("postgres", `CREATE DATABASE "${db}" OWNER ${creator}`);
    await sql(db, `CREATE TABLE mine (x int); ALTER TABLE mine OWNER TO ${creator}; CREATE TABLE secret (x int); INSERT INTO secret VALUES (1); ALTER TABLE secret OWNER TO ${role}`);
    const before = await backupFiles(svc.dataDir);
    const err = await callFailure(limited.client.createBackup({ database: db }));
    expect(Code[err.code], err.rawMessage).toBe("FailedPrecondition");
    expect(err.rawMessage).toContain(`the role in TARGET_DATABASE_URL may not read all of "${db}"`);
    expect(err.rawMessage).toMatch(/permission denied for table secret/);
    expect(err.rawMessage).toMatch(/hint: GRANT pg_read_all_data/);
    const [row] = await sql<{ status: string; error: string }>(
      svc.control,
      "SELECT status, error_message AS error FROM backup_service.backup_history WHERE database_name = $1",
      [db],
    );
    expect(row).toEqual({ status: "FAILED", error: expect.stringContaining("may not read all of") });
    expect(await backupFiles(svc.dataDir)).toEqual(before);
  }, 60_000);

  it("a database with a subscription, which pg_dump dumps only for a superuser: VERIFIED, with pg_dump's warning in its metadata", async () => {
    const db = newDbName("bs_edges_subs");
    await sql("postgres", `CREATE DATABASE "${db}" OWNER ${creator}`);
    await sql(db, `CREATE TABLE mine (x int); ALTER TABLE mine OWNER TO ${creator}`);
    // Never connects anywhere: no slot, not enabled.
    await sql(
      db,
      `CREATE SUBSCRIPTION bs_edges_sub CONNECTION 'host=${PG_HOST} port=${PG_PORT} dbname=postgres' PUBLICATION nowhere
         WITH (connect = false, slot_name = NONE, enabled = false, create_slot = false)`,
    );
    try {
      const { backup } = await limited.client.createBackup({ database: db });
      expect(backup?.status).toBe(BackupStatus.VERIFIED);
      expect(backup?.metadata?.dumpWarnings).toEqual(["subscriptions not dumped because current user is not a superuser"]);
      // And by a superuser, nothing to warn about.
      const { backup: full } = await svc.client.createBackup({ database: db });
      expect(full?.status).toBe(BackupStatus.VERIFIED);
      expect(full?.metadata?.dumpWarnings).toBeUndefined();
    } finally {
      await sql(db, "DROP SUBSCRIPTION bs_edges_sub"); // or the database could not be dropped
    }
  }, 60_000);

  it("a table whose row-level security would hide rows from it: FAILED_PRECONDITION, not a backup of some of the rows", async () => {
    const db = newDbName("bs_edges_rls");
    await sql("postgres", `CREATE DATABASE "${db}" OWNER ${creator}`);
    await sql(
      db,
      `CREATE TABLE guarded (x int); INSERT INTO guarded VALUES (1), (2); ALTER TABLE guarded OWNER TO ${role};
       ALTER TABLE guarded ENABLE ROW LEVEL SECURITY; GRANT SELECT ON guarded TO ${creator}`,
    );
    const err = await callFailure(limited.client.createBackup({ database: db }));
    expect(Code[err.code], err.rawMessage).toBe("FailedPrecondition");
    expect(err.rawMessage).toMatch(/row-level security policy for table "guarded"/);
    expect(err.rawMessage).toMatch(/BYPASSRLS/);
  }, 60_000);

  it("an archive holding an object it may not give its owner: deep verification could not run (FAILED_PRECONDITION), the backup stays VERIFIED; a restore is FAILED_PRECONDITION too", async () => {
    const db = newDbName("bs_edges_foreign_owner");
    await sql("postgres", `CREATE DATABASE "${db}" OWNER ${creator}`);
    await sql(db, `CREATE TABLE theirs (x int); INSERT INTO theirs VALUES (1); ALTER TABLE theirs OWNER TO ${role}; GRANT SELECT ON theirs TO ${creator}`);
    const { backup } = await limited.client.createBackup({ database: db });
    expect(backup?.status).toBe(BackupStatus.VERIFIED);
    const err = await callFailure(limited.client.verifyBackup({ id: backup!.id, deep: true }));
    expect(Code[err.code], err.rawMessage).toBe("FailedPrecondition");
    expect(err.rawMessage).toMatch(/may not restore this archive: .*must be member of role/);
    expect((await recordOf(backup!.id))?.status).toBe("VERIFIED");
    const target = newDbName("bs_edges_foreign_tgt");
    const restoreErr = await callFailure(
      (async () => {
        for await (const _ of limited.client.restoreBackup({ id: backup!.id, confirmRestore: true, targetDatabase: target })) {
          // drain
        }
      })(),
    );
    expect(Code[restoreErr.code], restoreErr.rawMessage).toBe("FailedPrecondition");
    expect(restoreErr.rawMessage).toMatch(/may not restore this archive: .*; nothing was changed \(hint: restore as a superuser/);
    expect(await sql("postgres", "SELECT 1 FROM pg_database WHERE datname = $1", [target])).toHaveLength(0);
    await waitFor("the scratch databases to be dropped", async () => (await leftovers()).length === 0);
  }, 60_000);

  it("a member of the target's owner that inherits its privileges restores over it", async () => {
    await asOwnerMember(true, async (member, db) => {
      const { backup } = await svc.client.createBackup({ database: db });
      await sql(db, "INSERT INTO t VALUES (2)");
      let last: RestoreBackupResponse | undefined;
      for await (const m of member.client.restoreBackup({ id: backup!.id, confirmRestore: true, dropExisting: true, skipSafetyBackup: true })) {
        last = m;
      }
      expect(last?.phase).toBe(RestorePhase.DONE);
      expect(await sql(db, "SELECT id FROM t")).toEqual([{ id: 1 }]);
      const [{ owner }] = await sql<{ owner: string }>("postgres", "SELECT pg_get_userbyid(datdba) AS owner FROM pg_database WHERE datname = $1", [db]);
      expect(owner).toBe(role);
    });
  }, 60_000);

  it("a member of the database's owner deep-verifies its backup: the scratch database is owned as the database is", async () => {
    await asOwnerMember(true, async (member, db) => {
      const { backup } = await member.client.createBackup({ database: db });
      expect(backup?.status).toBe(BackupStatus.VERIFIED);
      const v = await member.client.verifyBackup({ id: backup!.id, deep: true });
      expect(v.checks.filter((c) => !c.passed)).toEqual([]);
      expect({ verified: v.verified, level: v.level, status: v.status }).toEqual({
        verified: true,
        level: VerificationLevel.RESTORE,
        status: BackupStatus.VERIFIED,
      });
    });
  }, 60_000);

  it("a NOINHERIT member of the target's owner: refused before the load, which its swap could never finish", async () => {
    // A NOINHERIT member may create a database owned by the role, but not act as its owner:
    // the swap's rename would fail after the whole load.
    await asOwnerMember(false, async (member, db) => {
      const { backup } = await svc.client.createBackup({ database: db });
      const err = await callFailure(
        (async () => {
          for await (const _ of member.client.restoreBackup({ id: backup!.id, confirmRestore: true, dropExisting: true, skipSafetyBackup: true })) {
            // drain
          }
        })(),
      );
      expect(Code[err.code], err.rawMessage).toBe("FailedPrecondition");
      expect(err.rawMessage).toContain(`may not replace database "${db}", which role "${role}" owns; nothing was changed`);
      expect(err.rawMessage).toMatch(/not NOINHERIT/);
      expect(await sql(db, "SELECT id FROM t")).toEqual([{ id: 1 }]);
      expect(await leftovers()).toEqual([]);
    });
  }, 60_000);
});

describe("cancelling a restore whose row count waits on a lock", () => {
  it("ends the count: the scratch database is dropped at once, the target never appears", async () => {
    const src = newDbName("bs_edges_countsrc");
    await sql("postgres", `CREATE DATABASE "${src}" TEMPLATE "${big}"`);
    // Loaded before payload (table data goes by name) and never touched again by the load: a lock
    // taken on it while payload loads blocks only the row count.
    await sql(src, "CREATE TABLE aaa_side (x int); INSERT INTO aaa_side VALUES (1), (2), (3)");
    const { backup } = await svc.client.createBackup({ database: src });
    const psqlPath = await startService(svc.control, fx.target, { RESTORE_JOBS: "1" }, svc.dataDir);
    const target = newDbName("bs_edges_counttgt");
    const ac = new AbortController();
    let locker: Awaited<ReturnType<typeof connect>> | null = null;
    try {
      const call = (async () => {
        for await (const _ of psqlPath.client.restoreBackup({ id: backup!.id, confirmRestore: true, targetDatabase: target }, { signal: ac.signal })) {
          // drain
        }
      })().then(
        () => null,
        (e: unknown) => e,
      );
      const scratch = await loadingScratch("payload to be loading through psql", "COPY public.payload %");
      locker = await connect(scratch);
      await locker.query("BEGIN");
      await locker.query("LOCK TABLE public.aaa_side IN ACCESS EXCLUSIVE MODE");
      await waitFor("the row count to wait on the lock", async () => (await lockWaiters(scratch, "SELECT count(*)%")) > 0, 60_000);
      ac.abort();
      const err = await call;
      expect(err instanceof ConnectError ? Code[err.code] : err, "the call's end").toBe("Canceled");
      // Well before the lock is given up (the finally below).
      await waitFor("the scratch database to be dropped", async () => (await leftovers()).length === 0, 10_000);
      expect(await sql("postgres", "SELECT 1 FROM pg_database WHERE datname = $1", [target])).toHaveLength(0);
    } finally {
      await locker?.end().catch(() => undefined);
      await psqlPath.close();
    }
  }, 120_000);
});

describe("the scratch database while it loads", () => {
  it("takes no sessions of roles the target lets in; after the swap it has exactly the target's privileges", async () => {
    const reader = uniqueName("bs_edges_reader");
    const target = newDbName("bs_edges_acl");
    await sql("postgres", `CREATE ROLE ${reader} LOGIN`);
    try {
      await createDatabase(target);
      await sql("postgres", `REVOKE CONNECT ON DATABASE "${target}" FROM PUBLIC; GRANT CONNECT ON DATABASE "${target}" TO ${reader}`);
      const aclOf = async (db: string) =>
        (await sql<{ acl: string }>("postgres", "SELECT datacl::text AS acl FROM pg_database WHERE datname = $1", [db]))[0]!.acl;
      const before = await aclOf(target);
      expect(before).toContain(`${reader}=c/`);
      const { backup } = await svc.client.createBackup({ database: big });
      const msgs: RestoreBackupResponse[] = [];
      const call = (async () => {
        for await (const m of svc.client.restoreBackup({ id: backup!.id, confirmRestore: true, targetDatabase: target, dropExisting: true, skipSafetyBackup: true })) {
          msgs.push(m);
        }
      })().then(
        () => null,
        (e: unknown) => e,
      );
      const scratch = await loadingScratch("the rows to be loading");
      const attempt = new pg.Client({ host: PG_HOST, port: PG_PORT, user: reader, database: scratch });
      const refused = await attempt.connect().then(
        () => null,
        (e: { code?: string; message?: string }) => e,
      );
      await attempt.end().catch(() => undefined);
      // Still loading when it tried, or the test proves nothing.
      expect(msgs.some((m) => m.phase === RestorePhase.FINALIZING)).toBe(false);
      expect(refused?.code, "a role granted CONNECT on the target got into the scratch database").toBe("42501");
      expect(await call).toBeNull();
      expect(msgs.at(-1)!.phase).toBe(RestorePhase.DONE);
      expect(await aclOf(target)).toBe(before);
      const ok = new pg.Client({ host: PG_HOST, port: PG_PORT, user: reader, database: target });
      await ok.connect();
      await ok.end();
    } finally {
      await dropDatabase(target); // its privileges name the role
      await sql("postgres", `DROP ROLE IF EXISTS ${reader}`).catch(() => undefined);
    }
  }, 120_000);
});

describe("refused before anything is loaded", () => {
  /** A small database of its own and a verified backup of it. */
  async function backedUp(prefix: string) {
    const db = newDbName(prefix);
    await createDatabase(db);
    await sql(db, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)");
    const { backup } = await svc.client.createBackup({ database: db });
    expect(backup!.status).toBe(BackupStatus.VERIFIED);
    return backup!;
  }

  it("a FAILED backup: FAILED_PRECONDITION, even with force", async () => {
    const backup = await backedUp("bs_edges_failedsrc");
    await sql(svc.control, "UPDATE backup_service.backup_history SET status = 'FAILED' WHERE id = $1", [backup.id]);
    const target = newDbName("bs_edges_failedtgt");
    for (const force of [false, true]) {
      const err = await callFailure(drain({ id: backup.id, targetDatabase: target, force }));
      expect(Code[err.code], err.rawMessage).toBe("FailedPrecondition");
      expect(err.rawMessage).toMatch(/is FAILED and has no file to restore/);
    }
    expect(await sql("postgres", "SELECT 1 FROM pg_database WHERE datname = $1", [target])).toHaveLength(0);
  });

  it("a VERIFIED backup whose file changed since: DATA_LOSS naming both checksums, the target untouched", async () => {
    const backup = await backedUp("bs_edges_sumsrc");
    const file = `${svc.backupDir}/${backup.fileName}`;
    const fh = await open(file, "r+");
    // The last byte flipped (zstd's own checksum ends the file: written as a constant, it could already be that).
    const last = Buffer.alloc(1);
    await fh.read(last, 0, 1, Number(backup.fileSize) - 1);
    await fh.write(Buffer.from([last[0]! ^ 0xff]), 0, 1, Number(backup.fileSize) - 1);
    await fh.close();
    const target = newDbName("bs_edges_sumtgt");
    await createDatabase(target);
    await sql(target, "CREATE TABLE keep (id int); INSERT INTO keep VALUES (7)");
    const err = await callFailure(drain({ id: backup.id, targetDatabase: target, dropExisting: true, skipSafetyBackup: true }));
    expect(Code[err.code], err.rawMessage).toBe("DataLoss");
    expect(err.rawMessage).toMatch(
      new RegExp(`failed its checksum check \\(sha256 is [0-9a-f]{64}, ${backup.checksum} recorded\\); nothing was changed`),
    );
    expect(await sql(target, "SELECT id FROM keep")).toEqual([{ id: 7 }]);
    // An earlier test's restore may still be dropping what it made.
    await waitFor("no scratch or retired database left", async () => (await leftovers()).length === 0);
  });

  it("an empty target someone is connected to, without drop_existing: FAILED_PRECONDITION, the session left alone", async () => {
    const backup = await backedUp("bs_edges_busysrc");
    const target = newDbName("bs_edges_busytgt");
    await createDatabase(target);
    const session = await connect(target);
    try {
      const err = await callFailure(drain({ id: backup.id, targetDatabase: target }));
      expect(Code[err.code], err.rawMessage).toBe("FailedPrecondition");
      expect(err.rawMessage).toMatch(/is in use by 1 session\(s\); nothing was changed \(hint: close them, or set drop_existing/);
      expect((await session.query("SELECT 1 AS ok")).rows).toEqual([{ ok: 1 }]);
      // An earlier test's restore may still be dropping what it made.
      await waitFor("no scratch or retired database left", async () => (await leftovers()).length === 0);
    } finally {
      await session.end();
    }
  });
});

describe("a service role that may not create databases", () => {
  it("is refused before anything is loaded, with the grant to ask for", async () => {
    const plain = uniqueName("bs_edges_plain");
    await sql("postgres", `CREATE ROLE ${plain} LOGIN`);
    const { backup } = await svc.client.createBackup({ database: fx.target });
    const s = await serviceAs(plain);
    const target = newDbName("bs_edges_plaintgt");
    try {
      const err = await callFailure(
        (async () => {
          for await (const _ of s.client.restoreBackup({ id: backup!.id, confirmRestore: true, targetDatabase: target })) {
            // drain
          }
        })(),
      );
      expect(Code[err.code], err.rawMessage).toBe("FailedPrecondition");
      expect(err.rawMessage).toMatch(
        /could not create the scratch database: permission denied to create database; nothing was changed \(hint: ALTER ROLE \.\.\. CREATEDB for the role in TARGET_DATABASE_URL\)/,
      );
      expect(await sql("postgres", "SELECT 1 FROM pg_database WHERE datname = $1", [target])).toHaveLength(0);
      // An earlier test's restore may still be dropping what it made.
      await waitFor("no scratch or retired database left", async () => (await leftovers()).length === 0);
    } finally {
      await s.close();
      await sql("postgres", `DROP ROLE IF EXISTS ${plain}`).catch(() => undefined);
    }
  });
});

/**
 * A backup of a new database holding table t (50,000 rows), whose archive `edit` then changes
 * (decompressed, edited, compressed again, so that zstd decodes it): its record and file path.
 */
async function backupEditedAs(prefix: string, edit: (archive: Buffer) => Buffer) {
  const db = newDbName(prefix);
  await createDatabase(db);
  await sql(db, "CREATE TABLE t (id int PRIMARY KEY, body text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 50000) g");
  const { backup } = await svc.client.createBackup({ database: db });
  const file = `${svc.backupDir}/${backup!.fileName}`;
  const edited = edit(execFileSync("zstd", ["-dc", file], { maxBuffer: 1 << 28 }));
  const bytes = execFileSync("zstd", ["-q", "-c"], { input: edited, maxBuffer: 1 << 28 });
  await writeFile(file, bytes);
  return { backup: backup!, bytes };
}

describe("an archive that decompresses but ends early", () => {
  it("fails the restore as damaged: DATA_LOSS naming what was cut, the target untouched, no scratch database left", async () => {
    // Cut in the middle of the table's rows: zstd is content, the archive is not. Its checksum
    // recorded as the cut file's, as if it had been written so.
    const { backup, bytes: cut } = await backupEditedAs("bs_edges_cutsrc", (a) => a.subarray(0, Math.floor(a.length * 0.6)));
    await sql(svc.control, "UPDATE backup_service.backup_history SET checksum = $2, file_size = $3 WHERE id = $1", [
      backup.id,
      createHash("sha256").update(cut).digest("hex"),
      cut.length,
    ]);
    const target = newDbName("bs_edges_cuttgt");
    await createDatabase(target);
    await sql(target, "CREATE TABLE keep (id int); INSERT INTO keep VALUES (7)");
    const err = await callFailure(drain({ id: backup.id, targetDatabase: target, dropExisting: true, skipSafetyBackup: true }));
    expect(Code[err.code], err.rawMessage).toBe("DataLoss");
    expect(err.rawMessage).toMatch(/the archive is damaged: the archive ends inside a table's data/);
    expect(await sql(target, "SELECT id FROM keep")).toEqual([{ id: 7 }]);
    await waitFor("the scratch database to be dropped", async () => (await leftovers()).length === 0);
  });
});

describe("a file that decompresses but holds rows the server rejects", () => {
  it("forced past its checksum, the load's failure is DATA_LOSS, naming the row and the damage; the target untouched", async () => {
    // One row's id made a non-number, in place (the archive's framing intact): zstd decodes it,
    // pg_restore reads it, the server refuses the row. The recorded checksum stays.
    const { backup } = await backupEditedAs("bs_edges_badsrc", (a) => {
      // (Each row is a chunk of its own in a -Z0 archive, after its length: no newline before it.)
      const at = a.indexOf("12345\t");
      expect(at).toBeGreaterThan(0);
      a.write("x", at + 4);
      return a;
    });
    const target = newDbName("bs_edges_badtgt");
    await createDatabase(target);
    await sql(target, "CREATE TABLE keep (id int); INSERT INTO keep VALUES (7)");
    const refused = await callFailure(drain({ id: backup.id, targetDatabase: target, dropExisting: true, skipSafetyBackup: true }));
    expect(Code[refused.code], refused.rawMessage).toBe("DataLoss");
    expect(refused.rawMessage).toMatch(/failed its checksum check .*\(set force to restore it anyway\)/);
    const err = await callFailure(
      drain({ id: backup.id, targetDatabase: target, dropExisting: true, skipSafetyBackup: true, force: true }),
    );
    expect(Code[err.code], err.rawMessage).toBe("DataLoss");
    expect(err.rawMessage).toMatch(/invalid input syntax for type integer: "1234x"/);
    expect(err.rawMessage).toMatch(/\(the file is damaged: its checksum does not match\)/);
    expect(await sql(target, "SELECT id FROM keep")).toEqual([{ id: 7 }]);
    await waitFor("the scratch database to be dropped", async () => (await leftovers()).length === 0);
  });
});
