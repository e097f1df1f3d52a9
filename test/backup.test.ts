import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { statSync, writeFileSync } from "node:fs";
import { mkdir, readdir } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import {
  ArchiveFormat,
  BackupStatus,
  BackupType,
  Compression,
} from "../gen/backup/v1/backup_pb.js";
import {
  backupFiles,
  createDatabase,
  createFixture,
  dropDatabase,
  seedDatabase,
  sql,
  startService,
  uniqueName,
  waitFor,
  type TestService,
} from "./helpers.js";
import { zstdReportedBytes } from "../src/dump/engine.js";

const fx = createFixture("backup");
const target = fx.target;
let expected: Record<string, number>;
let svc: TestService;

beforeAll(async () => {
  await createDatabase(target);
  expected = await seedDatabase(target, 2000);
  svc = await fx.service();
});

afterAll(() => fx.cleanup());

function sha256sum(file: string): string {
  return execFileSync("sha256sum", [file], { encoding: "utf8" }).split(" ")[0]!;
}

describe("CreateBackup (custom format, zstd)", () => {
  it("takes a verified backup whose record describes the file and the data", async () => {
    const before = Date.now();
    const res = await svc.client.createBackup({ label: "nightly check", retentionDays: 7 });
    const b = res.backup!;
    expect(res.verified).toBe(true);
    expect(b.status).toBe(BackupStatus.VERIFIED);
    expect(b.backupType).toBe(BackupType.MANUAL);
    expect(b.databaseName).toBe(target);
    expect(b.label).toBe("nightly check");
    expect(b.triggeredBy).toBe("test-admin");
    expect(b.triggeredByUsername).toBe("Test Admin");
    expect(b.archiveFormat).toBe(ArchiveFormat.CUSTOM);
    expect(b.compression).toBe(Compression.ZSTD);
    expect(b.fileName).toMatch(new RegExp(`^${target}_backup_\\d{8}T\\d{9}Z\\.dump\\.zst$`));

    // Counts are exact, in the dump's snapshot.
    expect(b.tableCount).toBe(Object.keys(expected).length);
    expect(Number(b.rowCount)).toBe(Object.values(expected).reduce((a, n) => a + n, 0));

    // The checksum and size are those of the file on disk.
    const file = path.join(svc.backupDir, b.fileName);
    expect(b.checksum).toBe(sha256sum(file));
    expect(Number(b.fileSize)).toBe(statSync(file).size);

    // Ratio = (1 - file/dump) * 100, from the real decompressed size.
    const dumpSize = Number(execFileSync("sh", ["-c", `zstd -dc '${file}' | wc -c`], { encoding: "utf8" }).trim());
    expect(Number(b.dumpSize)).toBe(dumpSize);
    expect(b.compressionRatio).toBeCloseTo((1 - Number(b.fileSize) / dumpSize) * 100, 1);
    expect(b.compressionRatio).toBeGreaterThan(0);
    expect(b.compressionRatio).toBeLessThan(100);

    const [{ size }] = await sql<{ size: string }>(target, "SELECT pg_database_size(current_database()) AS size");
    expect(Number(b.databaseSize)).toBeGreaterThan(Number(size) / 2);
    expect(b.serverVersion).toMatch(/^\d+\.\d+$/);
    expect(b.pgDumpVersion).toMatch(/^\d+\.\d+$/);
    expect(b.verifiedAt).toBeDefined();
    expect(b.duration).toBeDefined();
    expect(b.retentionDays).toBe(7);
    const started = Number(b.startedAt!.seconds) * 1000;
    expect(started).toBeGreaterThanOrEqual(Math.floor(before / 1000) * 1000);
    expect(Number(b.expiresAt!.seconds) - Number(b.startedAt!.seconds)).toBe(7 * 86400);

    // pg_restore can read it, and it holds every table's data.
    const list = execFileSync("sh", ["-c", `zstd -dc '${file}' | pg_restore --list`], { encoding: "utf8" });
    expect(list).toContain("TABLE DATA public customers");
    expect(list).toContain("TABLE DATA billing Invoice Lines");
    expect(list).toMatch(/FUNCTION public add_one/);
    expect(list).toMatch(/VIEW public big_orders/);

    // Nothing but the final file is left in the directory.
    expect(await backupFiles(svc.backupDir)).toEqual([b.fileName]);

    const got = await svc.client.getBackup({ id: b.id });
    expect(got.fileExists).toBe(true);
    expect(got.backup?.checksum).toBe(b.checksum);
  });

  it("returns the IN_PROGRESS record at once with async, then finishes verified", async () => {
    const res = await svc.client.createBackup({ async: true, backupType: BackupType.FULL });
    expect(res.verified).toBe(false);
    expect(res.backup?.status).toBe(BackupStatus.IN_PROGRESS);
    expect(res.backup?.backupType).toBe(BackupType.FULL);
    const done = await waitFor("the async backup to finish", async () => {
      const { backup } = await svc.client.getBackup({ id: res.backup!.id });
      // COMPLETED is passed on the way: the dump is done, verification is running.
      const busy = backup!.status === BackupStatus.IN_PROGRESS || backup!.status === BackupStatus.COMPLETED;
      return busy ? null : backup;
    });
    expect(done.status).toBe(BackupStatus.VERIFIED);
  });

  it("reads the dump's size from zstd -v, for backup file names of any length", async () => {
    // Verification decompresses once and takes the size from zstd; were that not read, a
    // second decompression would count the bytes (right, but twice the work).
    const dir = await fx.tempDir();
    const raw = Buffer.concat([randomBytes(50_000), Buffer.alloc(200_000, "row\n")]);
    for (const name of ["a.zst", `${"shop_backup_20261126T070753764Z_".repeat(3)}.dump.zst`]) {
      const file = path.join(dir, name);
      writeFileSync(file, execFileSync("zstd", ["-q", "-c"], { input: raw }));
      const run = spawnSync("zstd", ["-dc", "-v", "--", file], { encoding: "buffer" });
      expect(run.status).toBe(0);
      expect(zstdReportedBytes(run.stderr.toString("utf8"))).toBe(raw.length);
    }
    expect(zstdReportedBytes("zstd: error: truncated\n")).toBeNull();
  });

  it("a backup many times the size of the compressor's read buffers is written and read back byte for byte", async () => {
    // About 50 MB of hex that compresses to about half: the compressor's output goes through
    // the service's 1 MiB slabs some twenty-five times, each written to the file and to the
    // read-back before it is read into again.
    const big = uniqueName("bs_big_src");
    await createDatabase(big);
    onTestFinished(() => dropDatabase(big));
    await sql(big, "CREATE TABLE blob (id int PRIMARY KEY, b bytea); INSERT INTO blob SELECT g, sha512(int4send(g)) FROM generate_series(1, 400000) g");
    const [{ sum }] = await sql<{ sum: string }>(big, "SELECT md5(string_agg(b::text, '' ORDER BY id)) AS sum FROM blob");
    const { backup } = await svc.client.createBackup({ database: big });
    expect(backup!.status).toBe(BackupStatus.VERIFIED);
    const file = path.join(svc.backupDir, backup!.fileName);
    expect(Number(backup!.fileSize)).toBe(statSync(file).size);
    expect(Number(backup!.fileSize)).toBeGreaterThan(20 << 20);
    expect(backup!.checksum).toBe(sha256sum(file));
    const dumpSize = Number(execFileSync("sh", ["-c", `zstd -dc '${file}' | wc -c`], { encoding: "utf8" }).trim());
    expect(Number(backup!.dumpSize)).toBe(dumpSize);
    // What the file holds restores to the same bytes.
    const copy = uniqueName("bs_big_copy");
    await createDatabase(copy);
    onTestFinished(() => dropDatabase(copy));
    execFileSync("sh", ["-c", `zstd -dc '${file}' | pg_restore --exit-on-error -h 127.0.0.1 -U postgres -d ${copy}`], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    expect(await sql(copy, "SELECT md5(string_agg(b::text, '' ORDER BY id)) AS sum FROM blob")).toEqual([{ sum }]);
    // The compressor's socket went with its private directory.
    expect((await readdir(os.tmpdir())).filter((n) => n.startsWith(`bsvc-backup-${process.pid}-`))).toEqual([]);
  }, 120_000);

  it("where the temporary area cannot hold the compressor's socket, the backup reads it through a pipe, verified all the same", async () => {
    const base = await fx.tempDir();
    const long = path.join(base, "a-temporary-directory-whose-path-is-longer-than-a-unix-socket-name-may-be".repeat(2));
    await mkdir(long);
    const saved = process.env.TMPDIR;
    try {
      // A path too long for a socket's name; then one where no directory can be made at all.
      for (const tmp of [long, path.join(base, "no-such-directory")]) {
        process.env.TMPDIR = tmp;
        expect(os.tmpdir()).toBe(tmp);
        const { backup } = await svc.client.createBackup({});
        expect(backup!.status).toBe(BackupStatus.VERIFIED);
        const file = path.join(svc.backupDir, backup!.fileName);
        expect(backup!.checksum).toBe(sha256sum(file));
        expect(Number(backup!.fileSize)).toBe(statSync(file).size);
      }
      expect(await readdir(long)).toEqual([]);
    } finally {
      if (saved === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = saved;
    }
  });

  it("VerifyBackup re-checks a good backup and reports every check", async () => {
    const { backup } = await svc.client.createBackup({});
    // The backup's own verification used the reading-back done while the file was written
    // (its SHA-256 ties the file to those bytes); VerifyBackup reads the file whole.
    type Checks = { verification: { checks: { name: string; detail: string }[] } };
    const atBackup = (backup!.metadata as unknown as Checks).verification.checks;
    expect(atBackup.find((c) => c.name === "decompress")?.detail).toMatch(/^decompresses to \d+ bytes \(read back whole as it was written\)$/);
    expect(atBackup.find((c) => c.name === "checksum")?.detail).toBe(`sha256 ${backup!.checksum}`);
    const v = await svc.client.verifyBackup({ id: backup!.id });
    expect(v.verified).toBe(true);
    expect(v.status).toBe(BackupStatus.VERIFIED);
    expect(v.checks.map((c) => c.name)).toEqual(["file_exists", "file_size", "checksum", "decompress", "archive"]);
    expect(v.checks.every((c) => c.passed)).toBe(true);
    expect(v.checks.find((c) => c.name === "decompress")?.detail).toBe(`decompresses to ${backup!.dumpSize} bytes`);
  });
});

describe("ListBackups, GetStats and ListAuditEvents", () => {
  it("lists newest first, pages, and filters", async () => {
    const all = await svc.client.listBackups({});
    expect(Number(all.total)).toBeGreaterThanOrEqual(3);
    const starts = all.backups.map((b) => Number(b.startedAt!.seconds) * 1e9 + b.startedAt!.nanos);
    expect([...starts].sort((a, b) => b - a)).toEqual(starts);

    const page1 = await svc.client.listBackups({ page: 1, pageSize: 2 });
    const page2 = await svc.client.listBackups({ page: 2, pageSize: 2 });
    expect(page1.backups).toHaveLength(2);
    expect(page1.pages).toBe(Math.ceil(Number(all.total) / 2));
    expect(page2.backups[0]!.id).toBe(all.backups[2]!.id);

    const full = await svc.client.listBackups({ backupType: BackupType.FULL });
    expect(full.backups.length).toBeGreaterThan(0);
    expect(full.backups.every((b) => b.backupType === BackupType.FULL)).toBe(true);

    const none = await svc.client.listBackups({ status: BackupStatus.CORRUPTED });
    expect(none.backups).toHaveLength(0);
    expect(Number(none.total)).toBe(0);

    const other = await svc.client.listBackups({ database: "some_other_db" });
    expect(other.backups).toHaveLength(0);
  });

  it("counts backups, success rate, size and compression", async () => {
    const { backups } = await svc.client.listBackups({ pageSize: 500 });
    const s = await svc.client.getStats({});
    expect(Number(s.totalBackups)).toBe(backups.length);
    expect(Number(s.successfulBackups)).toBe(backups.filter((b) => b.status === BackupStatus.VERIFIED).length);
    expect(Number(s.failedBackups)).toBe(0);
    expect(s.successRate).toBe(100);
    expect(Number(s.totalSizeBytes)).toBe(backups.reduce((a, b) => a + Number(b.fileSize), 0));
    const avg = backups.reduce((a, b) => a + b.compressionRatio, 0) / backups.length;
    expect(s.averageCompression).toBeCloseTo(avg, 1);
    expect(s.latestBackup?.id).toBe(backups[0]!.id);

    const forOther = await svc.client.getStats({ database: "some_other_db" });
    expect(Number(forOther.totalBackups)).toBe(0);
    expect(forOther.latestBackup).toBeUndefined();
  });

  it("totals kept by the trigger equal a count of the history, through inserts, updates and deletes", async () => {
    const other = uniqueName("bs_backup_totals");
    await createDatabase(other);
    try {
      await sql(other, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
      await svc.client.createBackup({ database: uniqueName("bs_backup_missing") }).catch(() => undefined);
      const kept = (await svc.client.createBackup({ database: other })).backup!;
      const soft = (await svc.client.createBackup({ database: other })).backup!;
      const hard = (await svc.client.createBackup({ database: other })).backup!;
      await svc.client.deleteBackup({ id: soft.id });
      await svc.client.deleteBackup({ id: hard.id, hardDelete: true });
      // Changed behind the service's back, too: the trigger sees every change.
      await sql(svc.control, "UPDATE backup_service.backup_history SET status = 'CORRUPTED', compression_ratio = 50 WHERE id = $1", [kept.id]);
      await sql(svc.control, "INSERT INTO backup_service.backup_history (backup_type, file_name, status, triggered_by, retention_days, expires_at, database_name, archive_format, compression, file_size, compression_ratio) VALUES ('MANUAL', $1, 'VERIFIED', 'x', 1, now(), $2, 'custom', 'zstd', 1000, 80)", [uniqueName("raw"), other]);

      const [truth] = await sql<Record<string, string | null>>(
        svc.control,
        `SELECT count(*) AS total,
                count(*) FILTER (WHERE status IN ('COMPLETED', 'VERIFIED')) AS successful,
                count(*) FILTER (WHERE status IN ('FAILED', 'CORRUPTED')) AS failed,
                coalesce(sum(file_size) FILTER (WHERE status IN ('COMPLETED', 'VERIFIED')), 0) AS size,
                round(avg(compression_ratio) FILTER (WHERE status IN ('COMPLETED', 'VERIFIED'))::numeric, 2) AS ratio
           FROM backup_service.backup_history WHERE NOT is_deleted`,
      );
      const byDb = await sql<{ database_name: string; total: string }>(
        svc.control,
        `SELECT h.database_name, count(*) AS total FROM backup_service.backup_history h WHERE NOT is_deleted GROUP BY 1
         EXCEPT SELECT database_name, total FROM backup_service.backup_stats WHERE total > 0`,
      );
      expect(byDb, "every database's total matches").toEqual([]);
      // A second service on the same records: nothing cached.
      const fresh = await startService(svc.control, target, {}, svc.dataDir);
      onTestFinished(() => fresh.close());
      const stats = await fresh.client.getStats({});
      expect(stats.totalBackups).toBe(BigInt(truth!.total!));
      expect(stats.successfulBackups).toBe(BigInt(truth!.successful!));
      expect(stats.failedBackups).toBe(BigInt(truth!.failed!));
      expect(stats.totalSizeBytes).toBe(BigInt(truth!.size!));
      expect(stats.averageCompression).toBeCloseTo(Number(truth!.ratio), 2);
      const listed = await fresh.client.listBackups({ pageSize: 1 });
      expect(BigInt(listed.total)).toBe(BigInt(truth!.total!));
    } finally {
      await dropDatabase(other);
    }
  });

  it("audits state-changing calls with the actor and outcome", async () => {
    const { events, total } = await svc.client.listAuditEvents({ action: "CreateBackup" });
    expect(Number(total)).toBeGreaterThanOrEqual(3);
    expect(events[0]).toMatchObject({ actor: "test-admin", actorUsername: "Test Admin", outcome: "OK", action: "CreateBackup" });
    expect(events[0]!.backupId).toMatch(/^[0-9a-f-]{36}$/);
    expect(events[0]!.clientAddress).toBe("127.0.0.1");
    const byBackup = await svc.client.listAuditEvents({ backupId: events[0]!.backupId });
    expect(byBackup.events.length).toBeGreaterThan(0);
    expect(byBackup.events.every((e) => e.backupId === events[0]!.backupId)).toBe(true);
    // Reads are not audited.
    const reads = await svc.client.listAuditEvents({ action: "ListBackups" });
    expect(Number(reads.total)).toBe(0);
  });
});

describe("plain format with gzip (the reference design's .sql.gz)", () => {
  let plain: TestService;
  beforeAll(async () => {
    plain = await fx.service({ BACKUP_FORMAT: "plain", BACKUP_COMPRESSION: "gzip" });
  });

  it("writes a verified .sql.gz that zcat | psql can restore", async () => {
    const { backup } = await plain.client.createBackup({});
    expect(backup!.status).toBe(BackupStatus.VERIFIED);
    expect(backup!.fileName).toMatch(/\.sql\.gz$/);
    expect(backup!.archiveFormat).toBe(ArchiveFormat.PLAIN);
    expect(backup!.compression).toBe(Compression.GZIP);
    const file = path.join(plain.backupDir, backup!.fileName);
    expect(backup!.checksum).toBe(sha256sum(file));
    const dumpSize = Number(execFileSync("sh", ["-c", `gzip -dc '${file}' | wc -c`], { encoding: "utf8" }).trim());
    expect(Number(backup!.dumpSize)).toBe(dumpSize);
    expect(backup!.compressionRatio).toBeCloseTo((1 - Number(backup!.fileSize) / dumpSize) * 100, 1);
    expect(backup!.tableCount).toBe(Object.keys(expected).length);
    expect(Number(backup!.rowCount)).toBe(Object.values(expected).reduce((a, n) => a + n, 0));

    const restored = uniqueName("bs_restored");
    await createDatabase(restored);
    try {
      execFileSync("sh", ["-c", `gzip -dc '${file}' | psql -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d ${restored}`], {
        stdio: ["ignore", "ignore", "pipe"],
      });
      const [{ n }] = await sql<{ n: string }>(restored, "SELECT count(*) AS n FROM orders");
      expect(Number(n)).toBe(expected["public.orders"]);
    } finally {
      await dropDatabase(restored);
    }
  });
});
