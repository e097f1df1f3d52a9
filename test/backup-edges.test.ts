import { writeFile } from "node:fs/promises";
import path from "node:path";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupStatus } from "../gen/backup/v1/backup_pb.js";
import { createAdvisoryLocks } from "../src/db/locks.js";
import { DomainError } from "../src/errors.js";
import { createLogger } from "../src/logger.js";
import pg from "pg";
import {
  backupFiles,
  blockTable,
  callFailure,
  createDatabase,
  createFixture,
  pgUrl,
  seedDatabase,
  sql,
  startService,
  uniqueName,
  waitFor,
  waitForBlockedDump,
} from "./helpers.js";

const fx = createFixture("edges");

beforeAll(async () => {
  await createDatabase(fx.target);
  await seedDatabase(fx.target, 200);
});

afterAll(() => fx.cleanup());

/** Makes the control database refuse every backup record's move out of IN_PROGRESS to `status`. */
async function refuseStatus(control: string, status: string): Promise<void> {
  await sql(
    control,
    `CREATE FUNCTION backup_service.refuse_status() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
       IF NEW.status::text = '${status}' THEN RAISE EXCEPTION 'test: % refused', NEW.status; END IF;
       RETURN NEW;
     END $$`,
  );
  await sql(
    control,
    `CREATE TRIGGER refuse_status BEFORE UPDATE ON backup_service.backup_history
       FOR EACH ROW EXECUTE FUNCTION backup_service.refuse_status()`,
  );
}

describe("a backup file is never left behind unrecorded", () => {
  it("a failure after the rename (the COMPLETED update) removes the final file and records FAILED", async () => {
    const svc = await fx.service();
    await refuseStatus(svc.control, "COMPLETED");
    const err = await callFailure(svc.client.createBackup({}));
    expect(err.code).toBe(Code.Internal);
    // The database's own error (the trigger's text, the statement) stays in the service log.
    expect(err.rawMessage).toMatch(/: backup failed: internal error \(details are in the service log\)$/);
    expect(err.rawMessage).not.toMatch(/refused|backup_history|update/i);
    const { backups } = await svc.client.listBackups({});
    expect(backups).toHaveLength(1);
    expect(backups[0]!.status).toBe(BackupStatus.FAILED);
    // Neither the partial nor the final name: no file with no checksum on record.
    expect(await backupFiles(svc.backupDir)).toEqual([]);
  });

  it("start-up recovery removes the final-named file of a backup left IN_PROGRESS", async () => {
    const svc = await fx.service();
    // The run stays IN_PROGRESS, as after a crash between the rename and the COMPLETED update.
    await refuseStatus(svc.control, "COMPLETED");
    await sql(svc.control, `CREATE OR REPLACE FUNCTION backup_service.refuse_status() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN IF OLD.status::text = 'IN_PROGRESS' AND NEW.status::text <> 'IN_PROGRESS' THEN RAISE EXCEPTION 'test: refused'; END IF;
      RETURN NEW; END $$`);
    await callFailure(svc.client.createBackup({}));
    const [row] = await sql<{ id: string; file_name: string; status: string }>(
      svc.control,
      "SELECT id, file_name, status FROM backup_service.backup_history",
    );
    expect(row!.status).toBe("IN_PROGRESS");
    await svc.close();
    // What a crash in that window leaves: the file under its final name.
    await writeFile(path.join(svc.backupDir, row!.file_name), "committed, never recorded");
    await sql(svc.control, "DROP TRIGGER refuse_status ON backup_service.backup_history");

    const restarted = await startService(svc.control, fx.target, {}, svc.dataDir);
    try {
      const { backup } = await restarted.client.getBackup({ id: row!.id });
      expect(backup!.status).toBe(BackupStatus.FAILED);
      expect(backup!.errorMessage).toMatch(/^interrupted/);
      expect(await backupFiles(restarted.backupDir)).toEqual([]);
    } finally {
      await restarted.close();
    }
  });

  it("cleanup removes an expired FAILED backup's leftover file, and its dry run counts the same bytes", async () => {
    const svc = await fx.service();
    await refuseStatus(svc.control, "COMPLETED");
    await callFailure(svc.client.createBackup({}));
    const [row] = await sql<{ id: string; file_name: string }>(
      svc.control,
      "UPDATE backup_service.backup_history SET expires_at = now() - interval '1 day' RETURNING id, file_name",
    );
    // A file left by an earlier version of the service, which kept such files.
    const leftover = Buffer.alloc(4096, 1);
    await writeFile(path.join(svc.backupDir, row!.file_name), leftover);

    const dry = await svc.client.cleanupExpiredBackups({ dryRun: true });
    expect(Number(dry.freedBytes)).toBe(leftover.length);
    expect(await backupFiles(svc.backupDir)).toEqual([row!.file_name]);
    const real = await svc.client.cleanupExpiredBackups({});
    expect(Number(real.freedBytes)).toBe(leftover.length);
    expect(await backupFiles(svc.backupDir)).toEqual([]);
  });
});

describe("locks when the control database is unreachable", () => {
  it("taking a lock fails as UNAVAILABLE, not as an internal error", async () => {
    // A port nothing listens on: a real refused connection.
    const server = await new Promise<import("node:net").Server>((resolve) => {
      import("node:net").then(({ createServer }) => {
        const s = createServer();
        s.listen(0, "127.0.0.1", () => resolve(s));
      });
    });
    const port = (server.address() as import("node:net").AddressInfo).port;
    await new Promise((r) => server.close(r));
    const pool = new pg.Pool({ host: "127.0.0.1", port });
    const locks = createAdvisoryLocks(
      { host: "127.0.0.1", port, user: "root", password: undefined, database: uniqueName("nowhere"), sslmode: undefined },
      pool,
      createLogger("silent"),
    );
    try {
      const err = await locks.tryAcquire("anything").then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(DomainError);
      expect((err as DomainError).kind).toBe("unavailable");
      expect((err as DomainError).message).toMatch(/control database is unreachable/);
    } finally {
      await pool.end();
    }
  });
});

describe("recovery while the service runs", () => {
  it("a backup whose final writes failed is marked FAILED by the next sweep, without a restart", async () => {
    const svc = await fx.service({ RECOVERY_INTERVAL_MS: "200" });
    await refuseStatus(svc.control, "COMPLETED");
    await sql(svc.control, `CREATE OR REPLACE FUNCTION backup_service.refuse_status() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN IF OLD.status::text = 'IN_PROGRESS' AND NEW.status::text <> 'IN_PROGRESS' THEN RAISE EXCEPTION 'test: refused'; END IF;
      RETURN NEW; END $$`);
    await callFailure(svc.client.createBackup({}));
    const [row] = await sql<{ id: string }>(svc.control, "SELECT id FROM backup_service.backup_history");
    // The sweeps fail while the control database refuses the write, and the record waits.
    await new Promise((r) => setTimeout(r, 500));
    expect((await svc.client.getBackup({ id: row!.id })).backup!.status).toBe(BackupStatus.IN_PROGRESS);
    await sql(svc.control, "DROP TRIGGER refuse_status ON backup_service.backup_history");
    const backup = await waitFor("the sweep to mark the backup failed", async () => {
      const { backup } = await svc.client.getBackup({ id: row!.id });
      return backup!.status === BackupStatus.FAILED ? backup : null;
    });
    expect(backup!.errorMessage).toMatch(/^interrupted: its run ended without recording the outcome/);
    expect(await backupFiles(svc.backupDir)).toEqual([]);
    // And the database is free for the next backup.
    expect((await svc.client.createBackup({})).backup!.status).toBe(BackupStatus.VERIFIED);
  });
});

describe("the database lock across replicas", () => {
  it("replicas that spell the target server differently (127.0.0.1, localhost) still take one lock", async () => {
    const a = await fx.service();
    const otherSpelling = pgUrl(fx.target).replace("@127.0.0.1:", "@LocalHost:");
    expect(otherSpelling).not.toBe(pgUrl(fx.target));
    const b = await startService(a.control, fx.target, { TARGET_DATABASE_URL: otherSpelling });
    const lock = await blockTable(fx.target, "customers");
    try {
      const first = await a.client.createBackup({ async: true });
      await waitForBlockedDump(fx.target);
      const err = await callFailure(b.client.createBackup({}));
      expect(err.code).toBe(Code.Aborted);
      expect(err.rawMessage).toMatch(/already running/);
      await lock.release();
      await waitFor("the first backup to finish", async () => {
        const { backup } = await a.client.getBackup({ id: first.backup!.id });
        return backup!.status === BackupStatus.VERIFIED;
      });
    } finally {
      await lock.release();
      await b.close();
    }
  });
});

describe("a database in another encoding", () => {
  it("a WIN1252 byte with no Unicode equivalent still gets a verified backup, dumped in WIN1252", async () => {
    const db = uniqueName("bs_edges_win1252");
    await sql("postgres", `CREATE DATABASE "${db}" ENCODING 'WIN1252' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`);
    try {
      // 0x81 is unassigned in WIN1252: the server stores it (no check within one encoding),
      // but it has no UTF-8 form.
      await sql(db, "CREATE TABLE t (id int PRIMARY KEY, s text); INSERT INTO t VALUES (1, E'a\\x81b')");
      const svc = await fx.service();
      const { backup } = await svc.client.createBackup({ database: db });
      expect(backup!.status).toBe(BackupStatus.VERIFIED);
      expect(Number(backup!.rowCount)).toBe(1);
    } finally {
      await sql("postgres", `DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`);
    }
  });
});
