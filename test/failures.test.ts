import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmod, open, readFile, symlink, truncate, writeFile } from "node:fs/promises";
import path from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupStatus } from "../gen/backup/v1/backup_pb.js";
import { parsePgUrl, type PgTarget } from "../src/config.js";
import { pgConfigOf } from "../src/db/client.js";
import { createAdvisoryLocks } from "../src/db/locks.js";
import { databaseLockKey, fileLockKey } from "../src/domain/backup.js";
import { createLogger } from "../src/logger.js";
import { previousSlot } from "../src/scheduler/cron.js";
import {
  backupFiles,
  blockTable,
  createDatabase,
  childProcessNames,
  createFixture,
  dropDatabase,
  PG_HOST,
  PG_PORT,
  pgDumpPids,
  pgUrl,
  seedDatabase,
  sql,
  startService,
  uniqueName,
  waitFor,
  waitForBlockedDump,
  type TestService,
} from "./helpers.js";

const fx = createFixture("fail");
const target = fx.target;
const service = fx.service;

/** A PG_BIN_DIR whose pg_dump is the given script; pg_restore and psql are the real ones. */
async function fakeBinDir(pgDumpScript: string): Promise<string> {
  const dir = await fx.tempDir("bs-fakebin-");
  const which = (cmd: string) => execFileSync("sh", ["-c", `command -v ${cmd}`], { encoding: "utf8" }).trim();
  const realDump = which("pg_dump");
  await symlink(which("pg_restore"), path.join(dir, "pg_restore"));
  await symlink(which("psql"), path.join(dir, "psql"));
  const file = path.join(dir, "pg_dump");
  await writeFile(file, `#!/bin/sh\nREAL_PG_DUMP='${realDump}'\ncase "$1" in --version) exec "$REAL_PG_DUMP" --version;; esac\n${pgDumpScript}\n`);
  await chmod(file, 0o755);
  return dir;
}

async function expectError(p: Promise<unknown>, code: Code): Promise<ConnectError> {
  const err = await p.then(
    () => {
      throw new Error("expected the call to fail");
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ConnectError);
  expect(Code[(err as ConnectError).code]).toBe(Code[code]);
  return err as ConnectError;
}

async function recordOf(svc: TestService, id: string) {
  return (await svc.client.getBackup({ id })).backup!;
}

async function onlyBackup(svc: TestService) {
  const { backups } = await svc.client.listBackups({});
  expect(backups).toHaveLength(1);
  return backups[0]!;
}

let main: TestService;

/** A lock of `svc`'s, taken as another replica would take it (the real advisory lock); release() lets go. */
async function holdLockOf(svc: TestService, key: string) {
  const control = parsePgUrl(pgUrl(svc.control)) as PgTarget;
  const pool = new pg.Pool(pgConfigOf(control, { max: 1 }));
  const lock = await createAdvisoryLocks(control, pool, createLogger("silent")).tryAcquire(key);
  expect(lock, `${key} is free to take`).not.toBeNull();
  return {
    async release() {
      await lock!.release();
      await pool.end();
    },
  };
}

/**
 * After a cancelled backup: the newest record is FAILED with `reason`, pg_dump and the
 * compressor are gone, and no file (partial or not) is left.
 */
async function expectStoppedCleanly(reason: RegExp, svc: TestService = main): Promise<void> {
  const { backups } = await svc.client.listBackups({ pageSize: 1 });
  const b = await waitFor("the backup to be recorded as failed", async () => {
    const r = await recordOf(svc, backups[0]!.id);
    return r.status === BackupStatus.FAILED ? r : null;
  });
  expect(b.errorMessage).toMatch(reason);
  await waitFor("pg_dump to exit", async () => (await pgDumpPids(target)).length === 0);
  await waitFor("the compressor to exit", async () => !(await childProcessNames()).includes("zstd"));
  expect(await backupFiles(svc.backupDir)).toEqual([]);
}

beforeAll(async () => {
  await createDatabase(target);
  await seedDatabase(target, 500);
  main = await service();
});

afterAll(() => fx.cleanup());

describe("when pg_dump cannot do its job", () => {
  it("an unreachable target: UNAVAILABLE, FAILED with the reason, no file", async () => {
    const s = await service({ TARGET_DATABASE_URL: "postgres://postgres@127.0.0.1:1/postgres" });
    const err = await expectError(s.client.createBackup({}), Code.Unavailable);
    expect(err.rawMessage).toMatch(/cannot reach the target database at .*127\.0\.0\.1:1/);
    expect(err.rawMessage).toMatch(/hint: check TARGET_DATABASE_URL/);
    const b = await onlyBackup(s);
    expect(b.status).toBe(BackupStatus.FAILED);
    expect(b.errorMessage).toMatch(/cannot reach the target database/);
    expect(b.id.length).toBe(36);
    expect(err.rawMessage).toContain(b.id);
    expect(await backupFiles(s.backupDir)).toEqual([]);
  });

  it("what the target's server refuses at login: the right code and a hint, FAILED, no file", async () => {
    const suffix = uniqueName("r").slice(-8);
    const unknown = `bs_nosuch_${suffix}`;
    const full = `bs_full_${suffix}`;
    const shut = `bs_shut_${suffix}`;
    const closed = uniqueName("bs_closed");
    await sql("postgres", `CREATE ROLE ${full} LOGIN CONNECTION LIMIT 0`);
    await sql("postgres", `CREATE ROLE ${shut} LOGIN`);
    await createDatabase(closed);
    await sql("postgres", `REVOKE CONNECT ON DATABASE "${closed}" FROM PUBLIC`);
    const as = (user: string, db = target) => `postgres://${user}@${PG_HOST}:${PG_PORT}/${db}`;
    try {
      const cases: [string, Code, RegExp][] = [
        [as(unknown), Code.FailedPrecondition, new RegExp(`cannot log in to .*role "${unknown}" does not exist.*hint: check the user and password in TARGET_DATABASE_URL`)],
        [as(full), Code.Unavailable, new RegExp(`takes no more sessions: too many connections for role "${full}"`)],
        [as(shut, closed), Code.FailedPrecondition, new RegExp(`permission denied on .*permission denied for database "?${closed}"?`)],
      ];
      for (const [url, code, message] of cases) {
        const s = await service({ TARGET_DATABASE_URL: url });
        const err = await expectError(s.client.createBackup({}), code);
        expect(err.rawMessage, url).toMatch(message);
        const b = await onlyBackup(s);
        expect(b.status, url).toBe(BackupStatus.FAILED);
        expect(await backupFiles(s.backupDir), url).toEqual([]);
      }
    } finally {
      await dropDatabase(closed);
      await sql("postgres", `DROP ROLE IF EXISTS ${full}`);
      await sql("postgres", `DROP ROLE IF EXISTS ${shut}`);
    }
  });

  it("a database that does not exist: NOT_FOUND, FAILED, no file", async () => {
    const err = await expectError(main.client.createBackup({ database: "no_such_database_here" }), Code.NotFound);
    expect(err.rawMessage).toMatch(/database "no_such_database_here" does not exist/);
    const { backups } = await main.client.listBackups({ database: "no_such_database_here" });
    expect(backups).toHaveLength(1);
    expect(backups[0]!.status).toBe(BackupStatus.FAILED);
    expect(await backupFiles(main.backupDir)).toEqual([]);
  });

  it("pg_dump killed halfway: FAILED naming the signal, no file, nothing verified", async () => {
    const lock = await blockTable(target, "customers");
    try {
      const { backup } = await main.client.createBackup({ async: true });
      await waitForBlockedDump(target);
      const pids = await pgDumpPids(target);
      expect(pids.length).toBeGreaterThan(0);
      expect((await backupFiles(main.backupDir)).some((f) => f.endsWith(".partial"))).toBe(true);
      for (const pid of pids) process.kill(pid, "SIGKILL");
      const b = await waitFor("the backup to fail", async () => {
        const r = await recordOf(main, backup!.id);
        return r.status === BackupStatus.IN_PROGRESS ? null : r;
      });
      expect(b.status).toBe(BackupStatus.FAILED);
      expect(b.errorMessage).toMatch(/pg_dump was killed by SIGKILL/);
      expect(b.verifiedAt).toBeUndefined();
    } finally {
      await lock.release();
    }
    expect(await backupFiles(main.backupDir)).toEqual([]);
  });

  it("pg_dump failing halfway through its output: FAILED with exit code and stderr, no file", async () => {
    const bin = await fakeBinDir(
      `"$REAL_PG_DUMP" "$@" | head -c 3000\necho "pg_dump: error: simulated failure halfway" >&2\nexit 1`,
    );
    const s = await service({ PG_BIN_DIR: bin });
    const err = await expectError(s.client.createBackup({}), Code.Internal);
    expect(err.rawMessage).toMatch(/pg_dump exited with code 1: pg_dump: error: simulated failure halfway/);
    const b = await onlyBackup(s);
    expect(b.status).toBe(BackupStatus.FAILED);
    expect(b.errorMessage).toMatch(/exited with code 1/);
    expect(await backupFiles(s.backupDir)).toEqual([]);
  });

  it("an empty dump that pg_dump calls a success is never VERIFIED", async () => {
    const bin = await fakeBinDir("exit 0");
    const s = await service({ PG_BIN_DIR: bin });
    const err = await expectError(s.client.createBackup({}), Code.DataLoss);
    expect(err.rawMessage).toMatch(/failed verification/);
    expect(err.rawMessage).toMatch(/archive: pg_restore cannot read/);
    const b = await onlyBackup(s);
    expect(b.status).toBe(BackupStatus.CORRUPTED);
    expect(b.verifiedAt).toBeUndefined();
    expect(b.errorMessage).toMatch(/^verification failed: archive/);
    const stats = await s.client.getStats({});
    expect(Number(stats.successfulBackups)).toBe(0);
    expect(Number(stats.failedBackups)).toBe(1);
    expect(stats.latestBackup).toBeUndefined();
  });

  it("pg_dump yields the CPU: it runs under SCHED_IDLE at niceness 10, and the backup is VERIFIED", async () => {
    // Field 19 of /proc/<pid>/stat is the niceness, field 41 the policy (5: SCHED_IDLE). The
    // policy is set before pg_dump starts, the niceness just after (hence the pause).
    const seen = path.join(await fx.tempDir(), "sched");
    const bin = await fakeBinDir(`sleep 0.2\ncut -d' ' -f19,41 /proc/$$/stat > '${seen}'\nexec "$REAL_PG_DUMP" "$@"`);
    const s = await service({ PG_BIN_DIR: bin });
    const { backup } = await s.client.createBackup({});
    expect(backup!.status).toBe(BackupStatus.VERIFIED);
    const [nice, policy] = (await readFile(seen, "utf8")).trim().split(" ");
    expect({ nice, policy }).toEqual({ nice: "10", policy: "5" });
  });

  it("a truncated dump that pg_dump calls a success is never VERIFIED", async () => {
    // The table of contents survives (pg_restore --list is happy); the data does not.
    const bin = await fakeBinDir(
      `tmp=$(mktemp)\n"$REAL_PG_DUMP" "$@" > "$tmp" || exit 1\nhead -c $(( $(stat -c %s "$tmp") / 2 )) "$tmp"\nrm -f "$tmp"\nexit 0`,
    );
    const s = await service({ PG_BIN_DIR: bin });
    const err = await expectError(s.client.createBackup({}), Code.DataLoss);
    expect(err.rawMessage).toMatch(/archive: pg_restore cannot read the whole archive/);
    const b = await onlyBackup(s);
    expect(b.status).toBe(BackupStatus.CORRUPTED);
  });
});

describe("preflight refuses before dumping", () => {
  it("a pg_dump older than the server: FAILED_PRECONDITION with both versions and a hint", async () => {
    const bin = await fakeBinDir("exit 0");
    // Make this fake report an old version.
    await writeFile(path.join(bin, "pg_dump"), "#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n");
    const s = await service({ PG_BIN_DIR: bin });
    const err = await expectError(s.client.createBackup({}), Code.FailedPrecondition);
    expect(err.rawMessage).toMatch(/pg_dump 9\.6 cannot dump server version \d+\.\d+/);
    expect(err.rawMessage).toMatch(/hint: install postgresql-client-\d+/);
    const b = await onlyBackup(s);
    expect(b.status).toBe(BackupStatus.FAILED);
    expect(await backupFiles(s.backupDir)).toEqual([]);
  });

  it("not enough free space: RESOURCE_EXHAUSTED, nothing written", async () => {
    const s = await service({ BACKUP_MIN_FREE_BYTES: String(2 ** 52) });
    const err = await expectError(s.client.createBackup({}), Code.ResourceExhausted);
    expect(err.rawMessage).toMatch(/not enough free space in the backup directory: \d+ bytes free/);
    expect(err.rawMessage).toMatch(/BACKUP_MIN_FREE_BYTES/);
    expect((await onlyBackup(s)).status).toBe(BackupStatus.FAILED);
    expect(await backupFiles(s.backupDir)).toEqual([]);
  });
});

describe("cancellation", () => {
  it("a client cancelling mid-backup: pg_dump gone, no partial file, FAILED cancelled", async () => {
    const lock = await blockTable(target, "customers");
    try {
      const ac = new AbortController();
      const call = main.client.createBackup({}, { signal: ac.signal });
      await waitForBlockedDump(target);
      expect((await backupFiles(main.backupDir)).some((f) => f.endsWith(".partial"))).toBe(true);
      ac.abort();
      await expectError(call, Code.Canceled);
      await expectStoppedCleanly(/^cancelled by the client$/);
    } finally {
      await lock.release();
    }
  });

  it("a deadline that passes mid-backup: same clean-up, FAILED with the reason", async () => {
    const lock = await blockTable(target, "customers");
    try {
      const call = main.client.createBackup({}, { timeoutMs: 6000 });
      await waitForBlockedDump(target);
      expect((await backupFiles(main.backupDir)).some((f) => f.endsWith(".partial"))).toBe(true);
      await expectError(call, Code.DeadlineExceeded);
      await expectStoppedCleanly(/cancelled: the call's deadline was exceeded/);
    } finally {
      await lock.release();
    }
  });

  it("deadlines swept across a whole backup: each one leaves a VERIFIED backup whose file matches its record, or a FAILED one and no file, and its audit event says which", async () => {
    // A service of its own: its backup directory holds only this test's files.
    const svc = await service();
    const t0 = performance.now();
    const { backup: first } = await svc.client.createBackup({});
    const full = performance.now() - t0;
    expect(first!.status).toBe(BackupStatus.VERIFIED);
    const outcomes: string[] = [];
    const audits = () => svc.client.listAuditEvents({ action: "CreateBackup", pageSize: 1 });
    // From well before the end to well after it (a slow moment of the machine included).
    for (const ms of [...[0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1, 1.05, 1.1, 1.3].map((f) => full * f), 3 * full + 5000]) {
      const deadline = Math.max(1, Math.round(ms));
      const calls = (await audits()).total;
      let client = "OK";
      let returned: string | undefined;
      try {
        returned = (await svc.client.createBackup({}, { timeoutMs: deadline })).backup!.id;
      } catch (err) {
        client = Code[(err as ConnectError).code];
      }
      // Each call is audited once it has ended, naming the backup it made, if it made one.
      const audit = await waitFor("the call's audit event", async () => {
        const r = await audits();
        return r.total > calls ? r.events[0] : null;
      });
      if (!audit.backupId) {
        // Past its deadline before a backup was begun: nothing made, nothing on disk.
        expect(client, `deadline ${deadline} ms: audited ${audit.outcome} (${audit.message})`).toBe("DeadlineExceeded");
        expect(await backupFiles(svc.backupDir)).not.toContainEqual(expect.stringMatching(/\.partial$/));
        outcomes.push("NONE");
        continue;
      }
      // A client that stops waiting stops the dump, not the verification once the dump is
      // complete (COMPLETED): that goes on to its end.
      const newest = await waitFor("the backup to end", async () => {
        const r = await recordOf(svc, audit.backupId);
        return r.status === BackupStatus.IN_PROGRESS || r.status === BackupStatus.COMPLETED ? null : r;
      });
      const what = `deadline ${deadline} ms: the client saw ${client}, the record is ${BackupStatus[newest.status]} (${newest.errorMessage})`;
      if (client === "OK") expect(returned, what).toBe(newest.id);
      else expect(client, what).toBe("DeadlineExceeded");
      await waitFor("pg_dump to exit", async () => (await pgDumpPids(target)).length === 0);
      const files = await backupFiles(svc.backupDir);
      expect(files.filter((f) => f.endsWith(".partial")), what).toEqual([]);
      if (newest.status === BackupStatus.VERIFIED) {
        expect(files, what).toContain(newest.fileName);
        const bytes = await readFile(path.join(svc.backupDir, newest.fileName));
        expect(BigInt(bytes.length), what).toBe(newest.fileSize);
        expect(createHash("sha256").update(bytes).digest("hex"), what).toBe(newest.checksum);
      } else {
        expect(newest.status, what).toBe(BackupStatus.FAILED);
        expect(newest.errorMessage, what).toMatch(/cancelled: the call's deadline was exceeded|cancelled by the client/);
        expect(files, what).not.toContain(newest.fileName);
      }
      // The audit trail says what became of the backup, whatever the client saw.
      if (newest.status === BackupStatus.VERIFIED) expect(audit.outcome, `${what}; audited ${audit.outcome}`).toBe("OK");
      else expect(["DEADLINE_EXCEEDED", "CANCELED"], `${what}; audited ${audit.outcome}`).toContain(audit.outcome);
      outcomes.push(BackupStatus[newest.status]);
    }
    // Every file in the directory is a VERIFIED backup's.
    const { backups } = await svc.client.listBackups({ pageSize: 100 });
    const verified = backups.filter((b) => b.status === BackupStatus.VERIFIED).map((b) => b.fileName).sort();
    expect(await backupFiles(svc.backupDir)).toEqual(verified);
    // The sweep reached both sides of the backup's end.
    expect(outcomes[0]).not.toBe("VERIFIED");
    expect(outcomes.at(-1)).toBe("VERIFIED");
  }, 180_000);

  it("a backup still running can be neither deleted nor verified; a deleted one cannot be verified", async () => {
    const lock = await blockTable(target, "customers");
    let id: string;
    try {
      id = (await main.client.createBackup({ async: true })).backup!.id;
      await waitForBlockedDump(target);
      for (const hardDelete of [false, true]) {
        const err = await expectError(main.client.deleteBackup({ id, hardDelete }), Code.FailedPrecondition);
        expect(err.rawMessage).toBe(`backup ${id} is still in progress; delete it when it has finished`);
      }
      for (const deep of [false, true]) {
        const err = await expectError(main.client.verifyBackup({ id, deep }), Code.FailedPrecondition);
        expect(err.rawMessage).toBe(`backup ${id} is still in progress; verify it when it has finished`);
      }
    } finally {
      await lock.release();
    }
    await waitFor("the backup to finish", async () => (await recordOf(main, id)).status === BackupStatus.VERIFIED);
    await main.client.deleteBackup({ id });
    const err = await expectError(main.client.verifyBackup({ id }), Code.NotFound);
    expect(err.rawMessage).toBe(`backup ${id} was deleted; there is nothing to verify`);
  });

  it("two replicas on one control database: a backup on one makes the other's ABORTED", async () => {
    const lock = await blockTable(target, "customers");
    const other = await startService(main.control, target, {}, main.dataDir);
    try {
      const first = await main.client.createBackup({ async: true });
      await waitForBlockedDump(target);
      const err = await expectError(other.client.createBackup({}), Code.Aborted);
      expect(err.rawMessage).toContain(first.backup!.id);
      await lock.release();
      await waitFor("the first backup to finish", async () => {
        const r = await recordOf(main, first.backup!.id);
        return r.status === BackupStatus.VERIFIED;
      });
    } finally {
      await lock.release();
      await other.close();
    }
  });

  it("a database lock let go a moment after its holder finished: the next backup waits for it, not ABORTED", async () => {
    // The lock's key as the service makes it for the fixture's target (127.0.0.1 is "localhost").
    const key = databaseLockKey(`localhost:${PG_PORT}`, target);
    // Held throughout, with no backup on record (a restore, or a holder just finishing): ABORTED after its wait.
    const held = await holdLockOf(main, key);
    try {
      const err = await expectError(main.client.createBackup({}), Code.Aborted);
      expect(err.rawMessage).toMatch(new RegExp(`database "${target}" is already running; wait for it to finish`));
    } finally {
      await held.release();
    }
    // Let go 300 ms in, as a backup whose record is already VERIFIED lets go of it: the next one runs.
    const finishing = await holdLockOf(main, key);
    const letGo = new Promise((r) => setTimeout(r, 300)).then(() => finishing.release());
    try {
      const { backup } = await main.client.createBackup({});
      expect(backup!.status).toBe(BackupStatus.VERIFIED);
    } finally {
      await letGo;
    }
  });

  it("two backups of one database at once: the second is ABORTED naming the first", async () => {
    const lock = await blockTable(target, "customers");
    let firstId: string;
    try {
      const first = await main.client.createBackup({ async: true });
      firstId = first.backup!.id;
      await waitForBlockedDump(target);
      const err = await expectError(main.client.createBackup({}), Code.Aborted);
      expect(err.rawMessage).toContain(firstId);
      expect(err.rawMessage).toMatch(/already running/);
    } finally {
      await lock.release();
    }
    const done = await waitFor("the first backup to finish", async () => {
      const r = await recordOf(main, firstId);
      return r.status === BackupStatus.VERIFIED ? r : null;
    });
    expect(done.status).toBe(BackupStatus.VERIFIED);
  });
});

/** A PG_BIN_DIR whose pg_restore takes 30 s to list an archive: only the verification after the dump does. */
async function slowListingBinDir(): Promise<string> {
  const bin = await fakeBinDir('exec "$REAL_PG_DUMP" "$@"');
  const realRestore = execFileSync("sh", ["-c", "command -v pg_restore"], { encoding: "utf8" }).trim();
  execFileSync("rm", [path.join(bin, "pg_restore")]);
  await writeFile(path.join(bin, "pg_restore"), `#!/bin/sh\ncase "$*" in *--list*) exec sleep 30;; esac\nexec '${realRestore}' "$@"\n`);
  await chmod(path.join(bin, "pg_restore"), 0o755);
  return bin;
}

describe("verification interrupted by shutdown", () => {
  it("leaves the backup COMPLETED, saying so, and the next start verifies it", async () => {
    // A pg_restore that takes its time listing the archive's table of contents, which only the
    // verification after the dump does: shutdown lands mid-verification.
    const bin = await fakeBinDir('exec "$REAL_PG_DUMP" "$@"');
    const realRestore = execFileSync("sh", ["-c", "command -v pg_restore"], { encoding: "utf8" }).trim();
    await execFileSync("rm", [path.join(bin, "pg_restore")]);
    await writeFile(
      path.join(bin, "pg_restore"),
      `#!/bin/sh\ncase "$*" in *--list*) exec sleep 30;; esac\nexec '${realRestore}' "$@"\n`,
    );
    await chmod(path.join(bin, "pg_restore"), 0o755);
    const slow = await service({ PG_BIN_DIR: bin });
    const { backup } = await slow.client.createBackup({ async: true });
    await waitFor("the dump to finish", async () => (await recordOf(slow, backup!.id)).status === BackupStatus.COMPLETED);
    await slow.app.close();
    const [left] = await sql<{ status: string; error_message: string }>(
      slow.control,
      "SELECT status, error_message FROM backup_service.backup_history WHERE id = $1",
      [backup!.id],
    );
    expect(left).toEqual({ status: "COMPLETED", error_message: expect.stringMatching(/verification interrupted by shutdown/) });
    const again = await startService(slow.control, target, {}, slow.dataDir);
    try {
      const done = await waitFor("the pending verification", async () => {
        const r = await recordOf(again, backup!.id);
        return r.status === BackupStatus.VERIFIED ? r : null;
      });
      expect(done.verifiedAt).toBeDefined();
    } finally {
      await again.close();
    }
  });

  it("a scheduled backup's verification is cut short by shutdown too, and its run recorded INTERRUPTED", async () => {
    // Due only on 29 February, so that nothing but this test fires it.
    const cron = "0 0 29 2 *";
    const slow = await service({ PG_BIN_DIR: await slowListingBinDir(), DAILY_BACKUP_CRON: cron });
    // The latest slot (an older one is superseded, not run).
    const firing = slow.app.scheduler.fire("daily-backup", previousSlot(cron, "Asia/Jakarta", new Date())!);
    await waitFor("the scheduled dump to finish", async () => {
      const [r] = await sql<{ status: string }>(slow.control, "SELECT status FROM backup_service.backup_history");
      return r?.status === "COMPLETED";
    });
    const stopping = Date.now();
    await slow.app.close();
    // Not the 30 s the slow listing would take: shutdown stops the verification.
    expect(Date.now() - stopping).toBeLessThan(10_000);
    await firing;
    const [run] = await sql<{ outcome: string }>(slow.control, "SELECT outcome FROM backup_service.job_runs WHERE job = 'daily-backup'");
    expect(run!.outcome).toBe("INTERRUPTED");
    const [left] = await sql<{ status: string; error_message: string }>(slow.control, "SELECT status, error_message FROM backup_service.backup_history");
    expect(left).toEqual({ status: "COMPLETED", error_message: expect.stringMatching(/verification interrupted by shutdown/) });
  });
});

describe("the service's own records", () => {
  it("are never in a dump, even of the control database itself", async () => {
    const { backup } = await main.client.createBackup({ database: main.control });
    expect(backup!.status).toBe(BackupStatus.VERIFIED);
    const list = execFileSync("sh", ["-c", `zstd -dc '${path.join(main.backupDir, backup!.fileName)}' | pg_restore --list`], {
      encoding: "utf8",
    });
    expect(list).not.toMatch(/backup_service/);
    expect(backup!.tableCount).toBe(0);
  });

  it("a restore into the control database is refused", async () => {
    const { backup } = await main.client.createBackup({});
    const call = (async () => {
      for await (const _ of main.client.restoreBackup({ id: backup!.id, confirmRestore: true, targetDatabase: main.control, dropExisting: true })) {
        // drain
      }
    })();
    const err = await expectError(call, Code.FailedPrecondition);
    expect(err.rawMessage).toMatch(/control database/);
  });
});

describe("VerifyBackup finds damage", () => {
  it("one flipped byte: CORRUPTED, the checksum check fails", async () => {
    const { backup } = await main.client.createBackup({});
    const file = path.join(main.backupDir, backup!.fileName);
    const fh = await open(file, "r+");
    const buf = Buffer.alloc(1);
    const at = Math.floor(Number(backup!.fileSize) / 2);
    await fh.read(buf, 0, 1, at);
    buf[0] = buf[0]! ^ 0xff;
    await fh.write(buf, 0, 1, at);
    await fh.close();

    const v = await main.client.verifyBackup({ id: backup!.id });
    expect(v.verified).toBe(false);
    expect(v.status).toBe(BackupStatus.CORRUPTED);
    const failed = v.checks.filter((c) => !c.passed).map((c) => c.name);
    expect(failed).toContain("checksum");
    expect(v.checks.find((c) => c.name === "file_size")?.passed).toBe(true);
    expect(v.message).toMatch(/checksum: sha256 is [0-9a-f]{64}, [0-9a-f]{64} recorded/);
    const after = await recordOf(main, backup!.id);
    expect(after.status).toBe(BackupStatus.CORRUPTED);
    expect(after.errorMessage).toMatch(/checksum/);
  });

  it("a truncated file: CORRUPTED, size, checksum and decompression fail", async () => {
    const { backup } = await main.client.createBackup({});
    const file = path.join(main.backupDir, backup!.fileName);
    await truncate(file, Math.floor(Number(backup!.fileSize) / 2));
    const v = await main.client.verifyBackup({ id: backup!.id });
    expect(v.status).toBe(BackupStatus.CORRUPTED);
    const failed = v.checks.filter((c) => !c.passed).map((c) => c.name);
    expect(failed).toEqual(expect.arrayContaining(["file_size", "checksum", "decompress"]));
  });

  it("a missing file: CORRUPTED, file_exists fails, GetBackup says so", async () => {
    const { backup } = await main.client.createBackup({});
    const file = path.join(main.backupDir, backup!.fileName);
    execFileSync("rm", [file]);
    const got = await main.client.getBackup({ id: backup!.id });
    expect(got.fileExists).toBe(false);
    const v = await main.client.verifyBackup({ id: backup!.id });
    expect(v.status).toBe(BackupStatus.CORRUPTED);
    expect(v.checks).toEqual([expect.objectContaining({ name: "file_exists", passed: false })]);
  });

  it("refuses to verify a failed backup", async () => {
    await expectError(main.client.createBackup({ database: "no_such_db_for_verify" }), Code.NotFound);
    const { backups } = await main.client.listBackups({ database: "no_such_db_for_verify" });
    expect(backups[0]!.status).toBe(BackupStatus.FAILED);
    const err = await expectError(main.client.verifyBackup({ id: backups[0]!.id }), Code.FailedPrecondition);
    expect(err.rawMessage).toMatch(/failed and has no file/);
  });
});

describe("a restore whose safety backup fails", () => {
  it("changes nothing: the target keeps its data and lets sessions in again, no scratch database is left", async () => {
    const source = uniqueName("bs_safety_src");
    const tgt = uniqueName("bs_safety_tgt");
    await createDatabase(source);
    await createDatabase(tgt);
    try {
      await sql(source, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)");
      await sql(tgt, "CREATE TABLE keep (id int); INSERT INTO keep VALUES (7)");
      const { backup } = await main.client.createBackup({ database: source });
      // pg_dump fails for the target alone: the backup above was made, the safety backup is not.
      const bin = await fakeBinDir(
        `case "$PGDATABASE" in ${tgt}) echo "pg_dump: error: simulated failure of the safety backup" >&2; exit 1;; esac\nexec "$REAL_PG_DUMP" "$@"`,
      );
      const s = await startService(main.control, target, { PG_BIN_DIR: bin }, main.dataDir);
      try {
        const phases: string[] = [];
        const err = await expectError(
          (async () => {
            for await (const m of s.client.restoreBackup({ id: backup!.id, confirmRestore: true, targetDatabase: tgt, dropExisting: true })) {
              phases.push(String(m.phase));
            }
          })(),
          Code.Internal,
        );
        expect(err.rawMessage).toMatch(new RegExp(`the safety backup of "${tgt}" failed, so nothing was changed: .*simulated failure of the safety backup`));
        expect(await sql(tgt, "SELECT id FROM keep")).toEqual([{ id: 7 }]);
        expect(await sql(tgt, "SELECT to_regclass('public.t') IS NULL AS absent")).toEqual([{ absent: true }]);
        const [{ limit }] = await sql<{ limit: number }>("postgres", "SELECT datconnlimit AS limit FROM pg_database WHERE datname = $1", [tgt]);
        expect(limit, "sessions are let in again").toBe(-1);
        const scratch = await sql("postgres", "SELECT datname FROM pg_database WHERE datname LIKE $1", [`bsvc\\_%\\_${s.app.restoreTag}\\_%`]);
        expect(scratch).toEqual([]);
        const { backups } = await s.client.listBackups({ database: tgt });
        expect(backups.map((b) => b.status)).toEqual([BackupStatus.FAILED]);
      } finally {
        await s.close();
      }
    } finally {
      await dropDatabase(source);
      await dropDatabase(tgt);
    }
  }, 120_000);
});

describe("when the control database's sessions or the backup disk fail under the work", () => {
  it("the lock's session to the control database ends mid-backup: FAILED as UNAVAILABLE, pg_dump stopped, no file; the next backup runs", async () => {
    const s = await service();
    const lock = await blockTable(target, "customers");
    try {
      await s.client.createBackup({ async: true });
      await waitForBlockedDump(target);
      // What a restarted control server or a dropped network path does to the locks' sessions.
      // (The sessions found first, then ended: in one WHERE the server may end sessions before it filters them.)
      const sessions = await sql<{ pid: number }>(
        "postgres",
        `SELECT pid FROM (SELECT pid, datname, application_name FROM pg_stat_activity OFFSET 0) a
          WHERE datname = $1 AND application_name = 'backup-service lock'`,
        [s.control],
      );
      expect(sessions.length).toBeGreaterThan(0);
      for (const { pid } of sessions) await sql("postgres", "SELECT pg_terminate_backend($1)", [pid]);
      await expectStoppedCleanly(/^lost the lock that guards this work: the connection to the control database dropped$/, s);
    } finally {
      await lock.release();
    }
    const next = await s.client.createBackup({});
    expect(next.backup!.status).toBe(BackupStatus.VERIFIED);
    expect(await backupFiles(s.backupDir)).toEqual([next.backup!.fileName]);
  });

  it("the row count's session ends mid-backup: FAILED naming the count, pg_dump stopped, no file", async () => {
    const s = await service();
    const lock = await blockTable(target, "customers");
    try {
      await s.client.createBackup({ async: true });
      // pg_dump waits at its LOCK TABLE of customers; the count, in the dump's snapshot, at its count of them.
      const blocked = () =>
        sql<{ pid: number; query: string }>(
          "postgres",
          `SELECT pid, query FROM (SELECT pid, datname, application_name, wait_event_type, query FROM pg_stat_activity
                                    WHERE datname = $1 OFFSET 0) a
            WHERE application_name = 'backup-service' AND wait_event_type = 'Lock'`,
          [target],
        );
      const counting = await waitFor("the count and pg_dump to block on the table lock", async () => {
        const rows = await blocked();
        return rows.length === 2 ? rows.find((r) => !r.query.startsWith("LOCK TABLE")) : null;
      });
      expect(counting.query).toMatch(/count/i);
      await sql("postgres", "SELECT pg_terminate_backend($1)", [counting.pid]);
      await expectStoppedCleanly(/^counting rows in the dump's snapshot failed: terminating connection due to administrator command$/, s);
    } finally {
      await lock.release();
    }
  });

  it("a backup another replica is deleting: verify, restore and download are ABORTED, the record and file untouched", async () => {
    const { backup } = await main.client.createBackup({});
    const id = backup!.id;
    const file = path.join(main.backupDir, backup!.fileName);
    const before = await readFile(file);
    // The lock a hard delete holds while it removes the file, taken as another replica would.
    const deleting = await holdLockOf(main, fileLockKey(id));
    try {
      for (const deep of [false, true]) {
        const err = await expectError(main.client.verifyBackup({ id, deep }), Code.Aborted);
        expect(err.rawMessage).toBe(`backup ${id} is being deleted; nothing to verify`);
      }
      const restoreTo = uniqueName("bs_fail_deleting");
      const err = await expectError(
        (async () => {
          for await (const _ of main.client.restoreBackup({ id, confirmRestore: true, targetDatabase: restoreTo })) {
            // progress
          }
        })(),
        Code.Aborted,
      );
      expect(err.rawMessage).toMatch(new RegExp(`backup ${id} is being deleted; nothing to restore`));
      expect(await sql("postgres", "SELECT 1 FROM pg_database WHERE datname = $1", [restoreTo])).toEqual([]);
      const dl = await expectError(
        (async () => {
          for await (const _ of main.client.downloadBackup({ id })) {
            // chunks
          }
        })(),
        Code.Aborted,
      );
      expect(dl.rawMessage).toBe(`backup ${id} is being deleted`);
    } finally {
      await deleting.release();
    }
    expect((await recordOf(main, id)).status).toBe(BackupStatus.VERIFIED);
    expect((await readFile(file)).equals(before)).toBe(true);
    // Once the other replica lets go (here: without deleting), the backup is there to use.
    expect((await main.client.verifyBackup({ id })).status).toBe(BackupStatus.VERIFIED);
  });

  it("the backup disk fills up during the dump: RESOURCE_EXHAUSTED, FAILED, the partial file removed; a backup that fits then succeeds", async (ctx) => {
    // A 5 MiB tmpfs as BACKUP_DIR (root can mount one; CI runs as root).
    const mountpoint = await fx.tempDir("bs-full-disk-");
    try {
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=5m,mode=0700", "tmpfs", mountpoint], { stdio: "ignore" });
    } catch {
      ctx.skip();
    }
    const db = uniqueName("bs_fail_full");
    await createDatabase(db);
    let s: TestService | undefined;
    try {
      // About 6.4 MB of random bytes: about 14 MB on disk with the catalogs, so the estimate
      // before the dump (a quarter of that) fits in 5 MiB, and the dump (random bytes do not
      // compress) does not.
      await sql(
        db,
        `CREATE TABLE noise (id int PRIMARY KEY, b bytea);
         INSERT INTO noise SELECT g, decode((SELECT string_agg(md5(random()::text || g || i), '') FROM generate_series(1, 100) i), 'hex')
           FROM generate_series(1, 4000) g`,
      );
      s = await service({ BACKUP_DIR: mountpoint, TARGET_DATABASE_URL: pgUrl(db) });
      const err = await expectError(s.client.createBackup({}), Code.ResourceExhausted);
      expect(err.rawMessage).toMatch(/the backup directory ran out of space while the backup was written \(ENOSPC\); the partial file is removed/);
      const b = await onlyBackup(s);
      expect(b.status).toBe(BackupStatus.FAILED);
      expect(b.errorMessage).toMatch(/ran out of space/);
      expect(await backupFiles(mountpoint)).toEqual([]);
      await waitFor("pg_dump to exit", async () => (await pgDumpPids(db)).length === 0);
      await sql(db, "DROP TABLE noise");
      const ok = await s.client.createBackup({});
      expect(ok.backup!.status).toBe(BackupStatus.VERIFIED);
    } finally {
      try {
        await s?.close();
        await dropDatabase(db);
      } finally {
        // Never left mounted on the machine, even when something above failed (lazily if still busy).
        try {
          execFileSync("umount", [mountpoint], { stdio: "ignore" });
        } catch {
          execFileSync("umount", ["-l", mountpoint], { stdio: "ignore" });
        }
      }
    }
  }, 120_000);
});
