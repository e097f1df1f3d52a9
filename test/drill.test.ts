import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { readdir, readFile, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupStatus, JobRunOutcome, VerificationLevel } from "../gen/backup/v1/backup_pb.js";
import { previousSlot } from "../src/scheduler/cron.js";
import {
  createDatabase,
  createFixture,
  dropDatabase,
  callFailure,
  PG_HOST,
  PG_PORT,
  PG_USER,
  seedDatabase,
  spawnService,
  sql,
  startService,
  tempDir,
  uniqueName,
  waitFor,
  type TestService,
} from "./helpers.js";
import { createRichSchema } from "./rich-schema.js";

const fx = createFixture("drill");
const extra: string[] = [];
let svc: TestService;

beforeAll(async () => {
  await createDatabase(fx.target);
  await seedDatabase(fx.target, 500);
  svc = await fx.service({
    VERIFY_SANITY_SQL: JSON.stringify({
      "*": ["SELECT true"],
      [fx.target]: ["SELECT count(*) = 500 FROM customers"],
    }),
  });
});

afterAll(async () => {
  await fx.cleanup();
  for (const d of extra) await dropDatabase(d);
});

async function scratchDatabases(s: TestService = svc): Promise<string[]> {
  const rows = await sql<{ datname: string }>("postgres", "SELECT datname FROM pg_database WHERE datname LIKE $1", [
    `bsvc\\_restore\\_${s.app.restoreTag}\\_%`,
  ]);
  return rows.map((r) => r.datname);
}

/** A new database of this file's, made by `ddl`, and a backup of it. */
async function backedUp(prefix: string, ddl: string) {
  const db = uniqueName(prefix);
  extra.push(db);
  await createDatabase(db);
  await sql(db, ddl);
  const { backup } = await svc.client.createBackup({ database: db });
  return { db, backup: backup! };
}

/** Makes a tampered file pass every file check: its record gets the file's size and SHA-256. */
async function matchRecordToFile(id: string, bytes: Buffer): Promise<void> {
  await sql(svc.control, "UPDATE backup_service.backup_history SET checksum = $2, file_size = $3 WHERE id = $1", [
    id,
    createHash("sha256").update(bytes).digest("hex"),
    bytes.length,
  ]);
}

describe("deep verification", () => {
  it("a good backup passes: restored, tables, objects and sanity checked; the scratch database is gone", async () => {
    const rich = uniqueName("bs_drill_rich");
    extra.push(rich);
    await createDatabase(rich);
    await createRichSchema(rich);
    const { backup } = await svc.client.createBackup({ database: rich });
    const v = await svc.client.verifyBackup({ id: backup!.id, deep: true });
    expect(v.verified, v.message).toBe(true);
    expect(v.level).toBe(VerificationLevel.RESTORE);
    expect(v.status).toBe(BackupStatus.VERIFIED);
    expect(v.checks.map((c) => c.name)).toEqual([
      "file_exists", "file_size", "checksum", "decompress", "archive", "restore", "tables", "objects", "sanity",
    ]);
    expect(v.checks.find((c) => c.name === "objects")!.detail).toMatch(/all \d+ sequences, views, functions and indexes/);
    expect(v.checks.find((c) => c.name === "sanity")!.detail).toBe("all 1 sanity queries returned true");
    expect(v.tableMismatches).toEqual([]);
    expect(v.duration).toBeDefined();
    expect(await scratchDatabases()).toEqual([]);

    const { backup: after } = await svc.client.getBackup({ id: backup!.id });
    expect(after!.restoreVerifiedAt).toBeDefined();
    expect((after!.metadata as { verification: { level: string } }).verification.level).toBe("restore");

    const stats = await svc.client.getStats({ database: rich });
    expect(stats.restoreVerification).toHaveLength(1);
    expect(stats.restoreVerification[0]!.backupId).toBe(backup!.id);
    expect(Number(stats.restoreVerification[0]!.age!.seconds)).toBeLessThan(60);
  });

  it("runs the database's sanity queries: one returning false fails, naming the query", async () => {
    const { backup } = await svc.client.createBackup({});
    const good = await svc.client.verifyBackup({ id: backup!.id, deep: true });
    expect(good.verified, good.message).toBe(true);
    expect(good.checks.find((c) => c.name === "sanity")!.detail).toBe("all 2 sanity queries returned true");

    const strict = await fx.service({
      VERIFY_SANITY_SQL: JSON.stringify({ [fx.target]: ["SELECT count(*) > 1000000 FROM customers", "SELECT 1/0 = 1"] }),
    });
    const { backup: b2 } = await strict.client.createBackup({});
    const v = await strict.client.verifyBackup({ id: b2!.id, deep: true });
    expect(v.verified).toBe(false);
    expect(v.status).toBe(BackupStatus.CORRUPTED);
    const sanity = v.checks.find((c) => c.name === "sanity")!;
    expect(sanity.passed).toBe(false);
    expect(sanity.detail).toContain("SELECT count(*) > 1000000 FROM customers returned false");
    expect(sanity.detail).toMatch(/SELECT 1\/0 = 1 failed: division by zero/);
    const { backup: after } = await strict.client.getBackup({ id: b2!.id });
    expect(after!.errorMessage).toMatch(/^restore verification failed: sanity: /);
    expect(after!.restoreVerifiedAt).toBeUndefined();
  });

  it("sanity queries are read-only single statements of which one row is read", async () => {
    const guarded = await fx.service({
      VERIFY_SANITY_SQL: JSON.stringify({
        [fx.target]: [
          // Would turn the read-only default off, then write, if more than one statement ran.
          "SET default_transaction_read_only = off; DELETE FROM customers; SELECT true",
          "WITH gone AS (DELETE FROM customers RETURNING 1) SELECT true",
          "SELECT false; SELECT true",
          // About 64 million rows if all were fetched: only the first is.
          "SELECT a.oid > 0 FROM pg_class a, pg_class b, pg_class c",
          "SELECT true;",
        ],
      }),
    });
    const { backup } = await guarded.client.createBackup({});
    const started = Date.now();
    const v = await guarded.client.verifyBackup({ id: backup!.id, deep: true });
    expect(Date.now() - started).toBeLessThan(30_000);
    const sanity = v.checks.find((c) => c.name === "sanity")!;
    expect(sanity.passed).toBe(false);
    expect(sanity.detail).toMatch(/DELETE FROM customers; SELECT true failed: /);
    expect(sanity.detail).toMatch(/RETURNING 1\) SELECT true failed: .*data-modifying/);
    expect(sanity.detail).toMatch(/SELECT false; SELECT true failed: .*multiple commands/);
    expect(sanity.detail).not.toMatch(/pg_class c (failed|returned)/);
    expect(sanity.detail).not.toMatch(/SELECT true; (failed|returned)/);
  }, 60_000);

  it("an archive re-made after rows were deleted fails with the table and the expected and found counts", async () => {
    const { db, backup } = await backedUp("bs_drill_tamper", "CREATE TABLE ledger (id int PRIMARY KEY); INSERT INTO ledger SELECT generate_series(1, 100)");
    // Rows vanish after the counts were taken; the archive is re-made, and made to pass every file check.
    await sql(db, "DELETE FROM ledger WHERE id > 90");
    const file = path.join(svc.backupDir, backup!.fileName);
    execFileSync("sh", ["-c", `pg_dump -Fc -Z0 -h ${PG_HOST} -p ${PG_PORT} -U ${PG_USER} ${db} | zstd -q -c > '${file}'`]);
    await matchRecordToFile(backup!.id, await readFile(file));
    const shallow = await svc.client.verifyBackup({ id: backup!.id });
    expect(shallow.verified, shallow.message).toBe(true); // the file itself looks fine

    const v = await svc.client.verifyBackup({ id: backup!.id, deep: true });
    expect(v.verified).toBe(false);
    expect(v.status).toBe(BackupStatus.CORRUPTED);
    expect(v.tableMismatches).toEqual([
      expect.objectContaining({ table: "public.ledger", expectedRows: 100n, foundRows: 90n, missing: false }),
    ]);
    expect(v.checks.find((c) => c.name === "tables")!.detail).toBe("public.ledger: expected 100 rows, found 90");
    expect(v.message).toMatch(/tables: public\.ledger: expected 100 rows, found 90/);
    expect(await scratchDatabases()).toEqual([]);
  });

  it("never takes the database's lock: a backup of it runs during a deep verification", async () => {
    // Big enough that the drill is still loading when the second backup starts.
    const { db, backup } = await backedUp("bs_drill_lock", "CREATE TABLE p (id int PRIMARY KEY, body text); INSERT INTO p SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 300000) g");
    let deepDone = false;
    const deep = svc.client.verifyBackup({ id: backup!.id, deep: true }).finally(() => (deepDone = true));
    await waitFor("the scratch database", async () => (await scratchDatabases()).length > 0);
    // Started (its lock taken) while the drill runs: a drill holding the lock would make it ABORTED.
    const during = await svc.client.createBackup({ database: db, async: true });
    expect(deepDone, "the drill was still running when the backup started").toBe(false);
    expect((await deep).verified).toBe(true);
    const done = await waitFor("the second backup", async () => {
      const { backup: b } = await svc.client.getBackup({ id: during.backup!.id });
      // COMPLETED is on the way: the dump is in, its verification not yet.
      return b!.status === BackupStatus.IN_PROGRESS || b!.status === BackupStatus.COMPLETED ? null : b;
    });
    expect(done.status).toBe(BackupStatus.VERIFIED);
  }, 120_000);

  it("cancelled mid-drill: the scratch database is dropped and the backup's status is unchanged", async () => {
    const { backup } = await backedUp("bs_drill_big", "CREATE TABLE p (id int PRIMARY KEY, body text); INSERT INTO p SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 800000) g");
    const ac = new AbortController();
    const call = svc.client.verifyBackup({ id: backup!.id, deep: true }, { signal: ac.signal });
    await waitFor("the scratch database", async () => (await scratchDatabases()).length > 0);
    ac.abort();
    const err = await callFailure(call);
    expect(Code[err.code]).toBe("Canceled");
    await waitFor("the scratch database to be dropped", async () => (await scratchDatabases()).length === 0);
    const { backup: after } = await svc.client.getBackup({ id: backup!.id });
    expect(after!.status).toBe(BackupStatus.VERIFIED);
    expect(after!.restoreVerifiedAt).toBeUndefined();
    expect((after!.metadata as { verification: { level: string } }).verification.level).toBe("checksum");
  }, 120_000);

  it("deadlines swept across a deep verification: none makes the backup anything but VERIFIED, and each leaves it as it was or restore-verified", async () => {
    const { backup } = await backedUp("bs_drill_sweep", "CREATE TABLE p (id int PRIMARY KEY, body text); INSERT INTO p SELECT g, md5(g::text) FROM generate_series(1, 20000) g");
    const t0 = performance.now();
    await svc.client.verifyBackup({ id: backup!.id, deep: true });
    const full = performance.now() - t0;
    const levels: string[] = [];
    // From well before the end to well after it (a slow moment of the machine included).
    for (const ms of [...[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.1].map((f) => full * f), 3 * full + 5000]) {
      // Back to a checksum-level verification, so that a deep one that went through shows.
      await sql(svc.control, "UPDATE backup_service.backup_history SET restore_verified_at = NULL, metadata = jsonb_set(metadata, '{verification,level}', '\"checksum\"') WHERE id = $1", [backup!.id]);
      const deadline = Math.max(1, Math.round(ms));
      let client = "OK";
      try {
        await svc.client.verifyBackup({ id: backup!.id, deep: true }, { timeoutMs: deadline });
      } catch (err) {
        client = Code[(err as { code: Code }).code];
      }
      await waitFor("the scratch database to be dropped", async () => (await scratchDatabases()).length === 0);
      // What the service records after the call: nothing, or all of the deep verification.
      const after = await waitFor("the verification to settle", async () => {
        const { backup: b } = await svc.client.getBackup({ id: backup!.id });
        const level = (b!.metadata as { verification: { level: string } }).verification.level;
        return level === "checksum" || b!.restoreVerifiedAt !== undefined ? { b: b!, level } : null;
      });
      const what = `deadline ${deadline} ms: the client saw ${client}; the backup is ${BackupStatus[after.b.status]} at level ${after.level}`;
      expect(after.b.status, what).toBe(BackupStatus.VERIFIED);
      if (client === "OK") expect(after.level, what).toBe("restore");
      else expect(client, what).toBe("DeadlineExceeded");
      expect(after.level === "restore", what).toBe(after.b.restoreVerifiedAt !== undefined);
      levels.push(after.level);
    }
    expect(levels[0]).toBe("checksum");
    expect(levels.at(-1)).toBe("restore");
  }, 180_000);
});

describe("crash mid-drill", () => {
  it("after the process is killed, the next start removes the leftover scratch database", async () => {
    const big = uniqueName("bs_drill_crash");
    extra.push(big);
    await createDatabase(big);
    await sql(big, "CREATE TABLE p (id int PRIMARY KEY, body text); INSERT INTO p SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 800000) g");
    const control = uniqueName("bs_ctl_drillcrash");
    const dataDir = await tempDir();
    const { child, client } = await spawnService(control, fx.target, dataDir);
    try {
      const { backup } = await client.createBackup({ database: big });
      void client.verifyBackup({ id: backup!.id, deep: true }).catch(() => undefined);
      // The child's scratch databases carry its control database's tag.
      const tag = createHash("sha256").update(`${PG_USER}@${PG_HOST}:${PG_PORT}/${control}`).digest("hex").slice(0, 6);
      const before = await waitFor("a scratch database", async () => {
        const rows = await sql<{ datname: string }>("postgres", "SELECT datname FROM pg_database WHERE datname LIKE $1", [
          `bsvc\\_restore\\_${tag}\\_%`,
        ]);
        return rows.length > 0 ? rows.map((r) => r.datname) : null;
      });
      // The load has begun once the restore's private directory (its table of contents) exists.
      const leftover = await waitFor("the restore's temporary directory", async () => {
        const found = (await readdir(os.tmpdir())).filter((n) => n.startsWith(`bsvc-restore-${child.pid}-`));
        return found.length > 0 ? found : null;
      });
      child.kill("SIGKILL");
      await new Promise((r) => child.once("exit", r));
      const restarted = await startService(control, fx.target, {}, dataDir);
      try {
        expect(restarted.app.restoreTag).toBe(tag);
        // What the killed process left in the temporary area goes at the next start.
        await waitFor("the killed restore's directory to be removed", async () => !existsSync(path.join(os.tmpdir(), leftover[0]!)));
        expect(await sql("postgres", "SELECT 1 FROM pg_database WHERE datname = ANY($1)", [before])).toEqual([]);
        const { backup: after } = await restarted.client.getBackup({ id: backup!.id });
        expect(after!.status).toBe(BackupStatus.VERIFIED);
      } finally {
        await restarted.close();
      }
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
      await dropDatabase(control);
    }
  }, 120_000);
});

describe("the restore-drill job", () => {
  it("drills the newest unproven VERIFIED backup of each database, once per slot across two replicas", async () => {
    const a = uniqueName("bs_drill_a");
    const b = uniqueName("bs_drill_b");
    extra.push(a, b);
    for (const d of [a, b]) {
      await createDatabase(d);
      await sql(d, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10)");
    }
    const cron = "0 4 * * 0";
    const one = await fx.service({ RESTORE_DRILL_CRON: cron, REPLICA_ID: "drill-1" });
    const two = await startService(one.control, fx.target, { RESTORE_DRILL_CRON: cron, REPLICA_ID: "drill-2" }, one.dataDir);
    try {
      const oldA = (await one.client.createBackup({ database: a })).backup!;
      const newA = (await one.client.createBackup({ database: a })).backup!;
      const onlyB = (await one.client.createBackup({ database: b })).backup!;
      // b's newest backup was already proven by a restore: nothing to drill there.
      await one.client.verifyBackup({ id: onlyB.id, deep: true });
      const provenAt = (await one.client.getBackup({ id: onlyB.id })).backup!.restoreVerifiedAt;

      const slot = previousSlot(cron, "Asia/Jakarta", new Date())!;
      const outcomes = await Promise.all([
        one.app.scheduler.fire("restore-drill", slot),
        two.app.scheduler.fire("restore-drill", slot),
      ]);
      expect(outcomes.sort()).toEqual(["ran", "taken"]);

      expect((await one.client.getBackup({ id: newA.id })).backup!.restoreVerifiedAt).toBeDefined();
      expect((await one.client.getBackup({ id: oldA.id })).backup!.restoreVerifiedAt).toBeUndefined();
      expect((await one.client.getBackup({ id: onlyB.id })).backup!.restoreVerifiedAt).toEqual(provenAt);
      const status = await two.client.getJobStatus({});
      const drill = status.jobs.find((j) => j.name === "restore-drill")!;
      expect(drill.cron).toBe(cron);
      expect(drill.lastRun?.outcome).toBe(JobRunOutcome.SUCCEEDED);
      expect(drill.lastRun?.backupId).toBe(newA.id);
      const [run] = await sql<{ details: { drilled: { backupId: string }[] } }>(
        one.control,
        "SELECT details FROM backup_service.job_runs WHERE job = 'restore-drill' AND claimed",
      );
      expect(run!.details.drilled.map((d) => d.backupId)).toEqual([newA.id]);
    } finally {
      await two.close();
    }
  });
});


describe("deep verification of a truncated archive", () => {
  it("a file cut short (record made to match) fails at the restore, CORRUPTED", async () => {
    const { backup } = await backedUp("bs_drill_cut", "CREATE TABLE big (id int, body text); INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 200000) g");
    const file = path.join(svc.backupDir, backup!.fileName);
    const bytes = (await readFile(file)).subarray(0, Math.floor(Number(backup!.fileSize) * 0.6));
    await writeFile(file, bytes);
    await matchRecordToFile(backup!.id, bytes);
    const v = await svc.client.verifyBackup({ id: backup!.id, deep: true });
    expect(v.verified).toBe(false);
    expect(v.status).toBe(BackupStatus.CORRUPTED);
    const restore = v.checks.find((c) => c.name === "restore");
    expect(restore?.passed).toBe(false);
    expect(restore?.detail).toMatch(/the restore failed: (zstd|pg_restore)/);
    expect(await scratchDatabases()).toEqual([]);
  });
});
