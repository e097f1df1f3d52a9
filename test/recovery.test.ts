import type { ChildProcess } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupStatus } from "../gen/backup/v1/backup_pb.js";
import {
  backupFiles,
  blockTable,
  createDatabase,
  dropDatabase,
  pgDumpPids,
  removeDir,
  seedDatabase,
  spawnService,
  startService,
  tempDir,
  uniqueName,
  waitFor,
  waitForBlockedDump,
} from "./helpers.js";

const target = uniqueName("bs_tgt_recover");
const controls: string[] = [];
const dirs: string[] = [];
const children: ChildProcess[] = [];

beforeAll(async () => {
  await createDatabase(target);
  await seedDatabase(target, 200);
});

afterAll(async () => {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
  for (const pid of await pgDumpPids(target)) process.kill(pid, "SIGKILL");
  await dropDatabase(target);
  for (const c of controls) await dropDatabase(c);
  for (const d of dirs) await removeDir(d);
});

async function spawnTracked(control: string, dataDir: string) {
  const svc = await spawnService(control, target, dataDir);
  children.push(svc.child);
  return svc;
}

/**
 * A service process whose async backup is stuck mid-way (pg_dump waits on a
 * table lock the test holds). The caller releases `lock`.
 */
async function childWithRunningBackup(name: string) {
  const control = uniqueName(`bs_ctl_${name}`);
  controls.push(control);
  const dataDir = await tempDir();
  dirs.push(dataDir);
  const lock = await blockTable(target, "customers");
  try {
    const svc = await spawnTracked(control, dataDir);
    const { backup } = await svc.client.createBackup({ async: true });
    await waitForBlockedDump(target);
    return { svc, control, dataDir, lock, id: backup!.id };
  } catch (err) {
    await lock.release();
    throw err;
  }
}

describe("start-up recovery after a crash", () => {
  it("a killed service's IN_PROGRESS backup becomes FAILED (interrupted) and its partial file goes", async () => {
    const { svc, control, dataDir, lock, id } = await childWithRunningBackup("crash");
    try {
      const partials = (await backupFiles(`${dataDir}/backups`)).filter((f) => f.endsWith(".partial"));
      expect(partials).toHaveLength(1);
      svc.child.kill("SIGKILL");
      await svc.exited;
      // The orphaned pg_dump would die of SIGPIPE once unblocked; end it now.
      for (const pid of await pgDumpPids(target)) process.kill(pid, "SIGKILL");
    } finally {
      await lock.release();
    }

    const restarted = await startService(control, target, {}, dataDir);
    try {
      const { backup } = await restarted.client.getBackup({ id });
      expect(backup!.status).toBe(BackupStatus.FAILED);
      expect(backup!.errorMessage).toMatch(/^interrupted/);
      expect(await backupFiles(restarted.backupDir)).toEqual([]);
      // And the service works again for that database.
      const again = await restarted.client.createBackup({});
      expect(again.backup!.status).toBe(BackupStatus.VERIFIED);
    } finally {
      await restarted.close();
    }
  });

  it("a second replica starting up leaves the first replica's running backup alone", async () => {
    const control = uniqueName("bs_ctl_replica");
    controls.push(control);
    const lock = await blockTable(target, "customers");
    const first = await startService(control, target);
    let second: Awaited<ReturnType<typeof startService>> | undefined;
    try {
      const { backup } = await first.client.createBackup({ async: true });
      await waitForBlockedDump(target);
      second = await startService(control, target, {}, first.dataDir);
      const seen = await second.client.getBackup({ id: backup!.id });
      expect(seen.backup!.status).toBe(BackupStatus.IN_PROGRESS);
      expect((await backupFiles(first.backupDir)).some((f) => f.endsWith(".partial"))).toBe(true);
      await lock.release();
      const done = await waitFor("the first replica's backup to finish", async () => {
        const r = (await second!.client.getBackup({ id: backup!.id })).backup!;
        return r.status === BackupStatus.VERIFIED ? r : null;
      });
      expect(done.status).toBe(BackupStatus.VERIFIED);
    } finally {
      await lock.release();
      await second?.close();
      await first.close();
      await removeDir(first.dataDir);
    }
  });
});

describe("several replicas starting at once", () => {
  it("create the control database and migrate it once, without colliding", async () => {
    const control = uniqueName("bs_ctl_race");
    controls.push(control);
    const starts = await Promise.allSettled([0, 1, 2].map(() => startService(control, target)));
    const started = starts.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
    try {
      for (const r of starts) if (r.status === "rejected") throw r.reason;
      const ids = await Promise.all(started.map(async (s) => (await s.client.getStats({})).totalBackups));
      expect(ids).toEqual([0n, 0n, 0n]);
    } finally {
      for (const s of started) {
        await s.close();
        await removeDir(s.dataDir);
      }
    }
  });
});

describe("graceful shutdown", () => {
  it("SIGTERM cancels a running backup cleanly (interrupted by shutdown) and exits 0", async () => {
    const { svc, control, dataDir, lock, id } = await childWithRunningBackup("term");
    try {
      svc.child.kill("SIGTERM");
      expect(await svc.exited).toBe(0);
      expect(svc.logs.some((l) => l.msg === "backup service stopped")).toBe(true);
      await waitFor("pg_dump to exit", async () => (await pgDumpPids(target)).length === 0);
      expect(await backupFiles(`${dataDir}/backups`)).toEqual([]);
    } finally {
      await lock.release();
    }
    const after = await startService(control, target, {}, dataDir);
    try {
      const { backup } = await after.client.getBackup({ id });
      expect(backup!.status).toBe(BackupStatus.FAILED);
      expect(backup!.errorMessage).toBe("interrupted by shutdown");
    } finally {
      await after.close();
    }
  });
});
