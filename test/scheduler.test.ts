import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupStatus, BackupType, JobRunOutcome } from "../gen/backup/v1/backup_pb.js";
import { loadConfig } from "../src/config.js";
import { createDb, createPool } from "../src/db/client.js";
import { createAuditRepository } from "../src/db/audit-repository.js";
import { createJobRunRepository } from "../src/db/job-run-repository.js";
import { createAdvisoryLocks } from "../src/db/locks.js";
import type { JobRun } from "../src/domain/ports.js";
import { createLogger } from "../src/logger.js";
import { formatInZone, nextSlot, previousSlot } from "../src/scheduler/cron.js";
import { createScheduler, type JobResult, type JobSpec } from "../src/scheduler/scheduler.js";
import {
  backupFiles,
  blockTable,
  createDatabase,
  createFixture,

  seedDatabase,
  sql,
  startService,
  waitFor,
  waitForBlockedDump,
  type TestService,
} from "./helpers.js";

const fx = createFixture("sched");
const DAILY = "0 2 * * *";
const TZ = "Asia/Jakarta";
/**
 * The zone the tests' running services use: one where it is about 14:00 now, so that no
 * 02:00-04:00 slot fires by itself while they run (Asia/Jakarta's 02:00 is 19:00 UTC).
 */
function afternoonZone(now = new Date()): string {
  let ahead = (14 - now.getUTCHours() + 24) % 24;
  if (ahead > 14) ahead -= 24;
  return ahead === 0 ? "Etc/GMT" : ahead > 0 ? `Etc/GMT-${ahead}` : `Etc/GMT+${-ahead}`;
}
const LIVE_TZ = afternoonZone();
const logger = createLogger("silent");

beforeAll(async () => {
  await createDatabase(fx.target);
  await seedDatabase(fx.target, 100);
});
afterAll(() => fx.cleanup());

describe("cron slots", () => {
  it("with Asia/Jakarta, a 02:00 job's next run is 19:00 UTC the previous day", () => {
    const next = nextSlot(DAILY, TZ, new Date("2026-11-26T03:00:00Z"));
    expect(next.toISOString()).toBe("2026-11-26T19:00:00.000Z");
    expect(formatInZone(next, TZ)).toBe("2026-11-27T02:00:00+07:00");
    expect(previousSlot(DAILY, TZ, new Date("2026-11-26T18:59:59Z"))!.toISOString()).toBe("2026-11-25T19:00:00.000Z");
    expect(previousSlot(DAILY, TZ, new Date("2026-11-26T19:00:00Z"))!.toISOString()).toBe("2026-11-26T19:00:00.000Z");
  });

  it("an invalid cron expression or time zone stops start-up, naming the setting", () => {
    expect(() => loadConfig({ DAILY_BACKUP_CRON: "0 25 * * *" })).toThrow(/DAILY_BACKUP_CRON: is not a valid cron expression/);
    expect(() => loadConfig({ WEEKLY_CLEANUP_CRON: "every sunday" })).toThrow(/WEEKLY_CLEANUP_CRON: must be a cron expression/);
    expect(() => loadConfig({ SCHEDULE_TZ: "Asia/Atlantis" })).toThrow(/SCHEDULE_TZ: unknown time zone/);
    expect(() => loadConfig({ SCHEDULE_CATCHUP_WINDOW: "soon" })).toThrow(/SCHEDULE_CATCHUP_WINDOW: must be a duration/);
    expect(() => loadConfig({ SCHEDULER_ENABLED: "maybe" })).toThrow(/SCHEDULER_ENABLED: must be true or false/);
    const c = loadConfig({ DAILY_BACKUP_CRON: "off" });
    expect(c.scheduler.dailyBackupCron).toBeNull();
    expect(c.scheduler.weeklyCleanupCron).toBe("0 3 * * 0");
    expect(c.scheduler.timeZone).toBe("Asia/Jakarta");
    expect(c.scheduler.catchUpWindowMs).toBe(6 * 3600 * 1000);
  });
});

/** A scheduler over the real control database of `svc`, with a fake clock and jobs the test controls. */
function harness(svc: TestService, replicaId: string, jobs: JobSpec[], clock: { t: Date }, catchUpWindowMs = 6 * 3600_000) {
  const config = loadConfig(svc.env);
  const pool = createPool(config.control, logger, { max: 4 });
  const db = createDb(pool);
  const scheduler = createScheduler(jobs, {
    enabled: true,
    timeZone: TZ,
    catchUpWindowMs,
    replicaId,
    runs: createJobRunRepository(db),
    locks: createAdvisoryLocks(config.control, pool, logger),
    audit: createAuditRepository(db),
    clock: { now: () => clock.t },
    logger,
  });
  return { scheduler, close: async () => (await scheduler.stop(), await pool.end()) };
}

/** A job that counts its runs and, when asked, waits until released. */
function controlledJob(name = "test-job") {
  let release: () => void = () => undefined;
  let gate: Promise<void> | null = null;
  const state = { runs: 0, slots: [] as string[] };
  const job: JobSpec = {
    name,
    cron: DAILY,
    setting: "TEST_CRON",
    async run({ slot, signal }): Promise<JobResult> {
      state.runs++;
      state.slots.push(slot.toISOString());
      if (gate) {
        await Promise.race([
          gate,
          new Promise((_, reject) => signal.addEventListener("abort", () => reject(signal.reason), { once: true })),
        ]);
      }
      return { outcome: "SUCCEEDED" };
    },
  };
  return {
    job,
    state,
    hold() {
      gate = new Promise((r) => (release = r));
    },
    release() {
      release();
      gate = null;
    },
  };
}

async function runsOf(control: string, job: string): Promise<(JobRun & { slot_iso: string })[]> {
  const rows = await sql<Record<string, unknown>>(
    control,
    "SELECT *, to_char(slot AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') AS slot_iso FROM backup_service.job_runs WHERE job = $1 ORDER BY id",
    [job],
  );
  return rows.map((r) => ({
    ...(r as object),
    replicaId: r.replica_id,
    outcome: r.outcome,
    claimed: r.claimed,
    slot_iso: r.slot_iso,
    error: r.error,
  })) as never;
}

describe("exactly once per slot", () => {
  it("two schedulers firing the same slot: one runs it, the other records that it was taken", async () => {
    const svc = await fx.service();
    const clock = { t: new Date("2026-11-26T19:00:05Z") };
    const slot = new Date("2026-11-26T19:00:00Z");
    const a = controlledJob();
    const b = { ...a, job: { ...a.job } }; // same counter: the two replicas run "the same" job
    const ra = harness(svc, "replica-a", [a.job], clock);
    const rb = harness(svc, "replica-b", [b.job], clock);
    try {
      const outcomes = await Promise.all([ra.scheduler.fire("test-job", slot), rb.scheduler.fire("test-job", slot)]);
      expect(outcomes.sort()).toEqual(["ran", "taken"]);
      expect(a.state.runs).toBe(1);
      const rows = await runsOf(svc.control, "test-job");
      expect(rows.filter((r) => r.claimed)).toHaveLength(1);
      expect(rows.find((r) => r.claimed)!.outcome).toBe("SUCCEEDED");
      const note = rows.find((r) => !r.claimed)!;
      expect(note.outcome).toBe("TAKEN_ELSEWHERE");
      expect(note.error).toMatch(/taken by replica replica-[ab]/);
      // Firing the same slot again later does nothing.
      expect(await ra.scheduler.fire("test-job", slot)).toBe("taken");
      expect(a.state.runs).toBe(1);
    } finally {
      await ra.close();
      await rb.close();
    }
  });

  it("two service replicas firing the daily backup for one slot take exactly one backup", async () => {
    const first = await fx.service({ SCHEDULE_TZ: LIVE_TZ, DAILY_BACKUP_CRON: DAILY, REPLICA_ID: "svc-1" });
    const second = await startService(first.control, fx.target, { SCHEDULE_TZ: LIVE_TZ, DAILY_BACKUP_CRON: DAILY, REPLICA_ID: "svc-2" }, first.dataDir);
    try {
      const slot = previousSlot(DAILY, LIVE_TZ, new Date())!;
      const outcomes = await Promise.all([
        first.app.scheduler.fire("daily-backup", slot),
        second.app.scheduler.fire("daily-backup", slot),
      ]);
      expect(outcomes.sort()).toEqual(["ran", "taken"]);
      const { backups } = await first.client.listBackups({});
      expect(backups).toHaveLength(1);
      expect(backups[0]!.backupType).toBe(BackupType.FULL);
      expect(backups[0]!.status).toBe(BackupStatus.VERIFIED);
      expect(backups[0]!.triggeredBy).toBe("scheduler");
      const rows = await runsOf(first.control, "daily-backup");
      expect(rows.map((r) => [r.claimed, r.outcome]).sort()).toEqual([
        [false, "TAKEN_ELSEWHERE"],
        [true, "SUCCEEDED"],
      ]);
      const status = await second.client.getJobStatus({});
      const daily = status.jobs.find((j) => j.name === "daily-backup")!;
      expect(daily.lastRun?.outcome).toBe(JobRunOutcome.SUCCEEDED);
      expect(daily.lastRun?.backupId).toBe(backups[0]!.id);
      expect(["svc-1", "svc-2"]).toContain(daily.lastRun?.replicaId);
      const { events } = await first.client.listAuditEvents({ action: "job:daily-backup" });
      expect(events).toHaveLength(1);
      expect(events[0]).toMatchObject({ actor: "scheduler", outcome: "OK", backupId: backups[0]!.id });
    } finally {
      await second.close();
    }
  });
});

describe("no overlap", () => {
  it("a slot that fires while the previous run is still running is recorded as skipped", async () => {
    const svc = await fx.service();
    const clock = { t: new Date("2026-11-26T19:00:01Z") };
    const j = controlledJob("overlap-job");
    const h = harness(svc, "replica-o", [j.job], clock);
    try {
      j.hold();
      const first = h.scheduler.fire("overlap-job", new Date("2026-11-26T19:00:00Z"));
      await waitFor("the first run to start", async () => j.state.runs === 1);
      clock.t = new Date("2026-11-27T19:00:01Z");
      expect(await h.scheduler.fire("overlap-job", new Date("2026-11-27T19:00:00Z"))).toBe("skipped");
      const statuses = await h.scheduler.status();
      expect(statuses[0]!.running).toBe(true);
      j.release();
      expect(await first).toBe("ran");
      const rows = await runsOf(svc.control, "overlap-job");
      expect(rows.map((r) => [r.slot_iso, r.outcome])).toEqual([
        ["2026-11-26T19:00:00", "SUCCEEDED"],
        ["2026-11-27T19:00:00", "SKIPPED"],
      ]);
      expect(rows[1]!.error).toMatch(/previous run of overlap-job \(slot 2026-11-26T19:00:00.000Z\) is still running/);
      expect(j.state.runs).toBe(1);
    } finally {
      j.release();
      await h.close();
    }
  });
});

describe("missed slots", () => {
  it("a missed slot inside the catch-up window runs once at start-up; outside it, not at all", async () => {
    const svc = await fx.service();
    const j = controlledJob("catchup-job");
    const inside = { t: new Date("2026-11-26T20:30:00Z") }; // 1.5 h after the 19:00 UTC slot
    const h = harness(svc, "replica-c", [j.job], inside);
    try {
      await h.scheduler.catchUp();
      expect(j.state.slots).toEqual(["2026-11-26T19:00:00.000Z"]);
      await h.scheduler.catchUp(); // a second start (or replica) does not run it again
      expect(j.state.runs).toBe(1);
    } finally {
      await h.close();
    }
    const late = controlledJob("late-job");
    const outside = { t: new Date("2026-11-27T02:00:00Z") }; // 7 h after the slot
    const h2 = harness(svc, "replica-c", [late.job], outside);
    try {
      await h2.scheduler.catchUp();
      expect(late.state.runs).toBe(0);
    } finally {
      await h2.close();
    }
  });

  it("a clock jump over several slots runs once, not once per slot", async () => {
    const svc = await fx.service();
    const j = controlledJob("jump-job");
    const clock = { t: new Date("2026-11-20T19:00:01Z") };
    const h = harness(svc, "replica-j", [j.job], clock);
    try {
      expect(await h.scheduler.fire("jump-job", new Date("2026-11-20T19:00:00Z"))).toBe("ran");
      clock.t = new Date("2026-11-25T20:00:00Z"); // the clock jumps five days
      // node-schedule may fire every missed invocation at once; so does start-up catch-up.
      const burst = await Promise.all(
        ["21", "22", "23", "24", "25"].map((d) => h.scheduler.fire("jump-job", new Date(`2026-11-${d}T19:00:00Z`))),
      );
      await h.scheduler.catchUp();
      expect(burst.filter((o) => o === "ran")).toHaveLength(1);
      expect(burst.filter((o) => o === "superseded")).toHaveLength(4);
      expect(j.state.slots).toEqual(["2026-11-20T19:00:00.000Z", "2026-11-25T19:00:00.000Z"]);
    } finally {
      await h.close();
    }
  });

  it("a run left RUNNING by a dead replica is marked interrupted at start-up; one another replica has just claimed is not", async () => {
    const svc = await fx.service({ SCHEDULE_TZ: LIVE_TZ, DAILY_BACKUP_CRON: DAILY });
    // The dead replica's run started minutes ago; the other replica claimed its slot a moment
    // ago and is about to take the job's lock (runClaimed), which it does not hold yet.
    await sql(
      svc.control,
      `INSERT INTO backup_service.job_runs (job, slot, replica_id, claimed, outcome, started_at) VALUES
         ('daily-backup', '2026-11-01T19:00:00Z', 'dead-replica', true, 'RUNNING', now() - interval '10 minutes'),
         ('daily-backup', '2026-11-02T19:00:00Z', 'starting-replica', true, 'RUNNING', now())`,
    );
    const again = await startService(svc.control, fx.target, { SCHEDULE_TZ: LIVE_TZ, DAILY_BACKUP_CRON: DAILY }, svc.dataDir);
    try {
      const rows = await runsOf(svc.control, "daily-backup");
      expect(rows.find((r) => r.replicaId === "dead-replica")).toMatchObject({
        outcome: "INTERRUPTED",
        error: "the replica running it stopped",
      });
      expect(rows.find((r) => r.replicaId === "starting-replica")).toMatchObject({ outcome: "RUNNING", error: null });
    } finally {
      await again.close();
    }
  });
});

describe("history", () => {
  it("weekly-cleanup removes the service's own history older than HISTORY_RETENTION_DAYS, and nothing still going on", async () => {
    const svc = await fx.service({ SCHEDULE_TZ: LIVE_TZ, WEEKLY_CLEANUP_CRON: "0 3 * * 0", HISTORY_RETENTION_DAYS: "30" });
    const old = "now() - interval '40 days'";
    const recent = "now() - interval '20 days'";
    await sql(
      svc.control,
      `INSERT INTO backup_service.job_runs (job, slot, replica_id, claimed, outcome, started_at, finished_at) VALUES
         ('old-job', ${old} - interval '1 day', 'r', true, 'SUCCEEDED', ${old}, ${old}),
         ('old-job', ${old}, 'r', true, 'FAILED', ${old}, ${old}),
         ('old-job', ${old}, 'r2', false, 'TAKEN_ELSEWHERE', ${old}, ${old}),
         ('old-job', ${recent}, 'r', true, 'SUCCEEDED', ${recent}, ${recent}),
         ('dead-job', ${old}, 'r', true, 'RUNNING', ${old}, NULL),
         ('quiet-job', ${old}, 'r', true, 'SUCCEEDED', ${old}, ${old})`,
    );
    await sql(
      svc.control,
      `INSERT INTO backup_service.alert_incidents (key, opened_at, resolved_at, message) VALUES
         ('old-resolved', ${old}, ${old}, 'm'), ('recent-resolved', ${old}, ${recent}, 'm'), ('still-open', ${old}, NULL, 'm')`,
    );
    await sql(
      svc.control,
      `INSERT INTO backup_service.restore_runs (backup_id, target_database, replica_id, outcome, started_at, finished_at, connections_blocked) VALUES
         ('b1', 'old-done', 'r', 'SUCCEEDED', ${old}, ${old}, false),
         ('b2', 'old-blocked', 'r', 'FAILED', ${old}, ${old}, true),
         ('b3', 'old-running', 'r', 'RUNNING', ${old}, NULL, false),
         ('b4', 'recent-done', 'r', 'SUCCEEDED', ${recent}, ${recent}, false)`,
    );
    await sql(
      svc.control,
      `INSERT INTO backup_service.audit_events (occurred_at, action, outcome) VALUES (${old}, 'old-action', 'OK'), (${recent}, 'recent-action', 'OK')`,
    );

    expect(await svc.app.scheduler.fire("weekly-cleanup", previousSlot("0 3 * * 0", LIVE_TZ, new Date())!)).toBe("ran");

    const runs = await sql<{ job: string; outcome: string }>(
      svc.control,
      "SELECT job, outcome FROM backup_service.job_runs WHERE job <> 'weekly-cleanup' ORDER BY job, id",
    );
    expect(runs).toEqual([
      { job: "dead-job", outcome: "RUNNING" }, // still on record for recovery, however old
      { job: "old-job", outcome: "SUCCEEDED" }, // the recent one
      { job: "quiet-job", outcome: "SUCCEEDED" }, // old, but the job's latest: its status
    ]);
    const incidents = await sql<{ key: string }>(svc.control, "SELECT key FROM backup_service.alert_incidents ORDER BY key");
    expect(incidents.map((i) => i.key)).toEqual(["recent-resolved", "still-open"]);
    const restores = await sql<{ target_database: string }>(
      svc.control,
      "SELECT target_database FROM backup_service.restore_runs ORDER BY target_database",
    );
    expect(restores.map((r) => r.target_database)).toEqual(["old-blocked", "old-running", "recent-done"]);
    const audit = await sql<{ action: string }>(
      svc.control,
      "SELECT action FROM backup_service.audit_events WHERE action IN ('old-action', 'recent-action')",
    );
    expect(audit.map((a) => a.action)).toEqual(["recent-action"]);
    const [cleanup] = await runsOf(svc.control, "weekly-cleanup");
    expect((cleanup as unknown as { details: unknown }).details).toMatchObject({
      historyPruned: { jobRuns: 3, alertIncidents: 1, restoreRuns: 1, auditEvents: 1 },
    });
  });

  it("a prune the database refuses: the run is FAILED with the server's reason, and keeps what cleanup did", async () => {
    const svc = await fx.service({ SCHEDULE_TZ: LIVE_TZ, WEEKLY_CLEANUP_CRON: "0 3 * * 0", HISTORY_RETENTION_DAYS: "30" });
    // As an operator who keeps the audit trail append-only might.
    await sql(
      svc.control,
      `CREATE FUNCTION backup_service.no_audit_delete() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'audit_events is append-only'; END $$;
       CREATE TRIGGER no_audit_delete BEFORE DELETE ON backup_service.audit_events
         FOR EACH ROW EXECUTE FUNCTION backup_service.no_audit_delete();
       INSERT INTO backup_service.audit_events (occurred_at, action, outcome) VALUES (now() - interval '40 days', 'old-action', 'OK')`,
    );
    expect(await svc.app.scheduler.fire("weekly-cleanup", previousSlot("0 3 * * 0", LIVE_TZ, new Date())!)).toBe("ran");
    const [run] = await runsOf(svc.control, "weekly-cleanup");
    expect(run).toMatchObject({
      outcome: "FAILED",
      error: "backups cleaned up; pruning the service's history failed: audit_events is append-only",
    });
    expect((run as unknown as { details: unknown }).details).toMatchObject({ removed: [], kept: [], freedBytes: 0 });
  });

  it("HISTORY_RETENTION_DAYS=0 keeps it all; a bad value stops start-up", async () => {
    const svc = await fx.service({ SCHEDULE_TZ: LIVE_TZ, WEEKLY_CLEANUP_CRON: "0 3 * * 0", HISTORY_RETENTION_DAYS: "0" });
    await sql(
      svc.control,
      "INSERT INTO backup_service.audit_events (occurred_at, action, outcome) VALUES (now() - interval '20 years', 'ancient', 'OK')",
    );
    expect(await svc.app.scheduler.fire("weekly-cleanup", previousSlot("0 3 * * 0", LIVE_TZ, new Date())!)).toBe("ran");
    expect(await sql(svc.control, "SELECT 1 FROM backup_service.audit_events WHERE action = 'ancient'")).toHaveLength(1);
    expect(() => loadConfig({ HISTORY_RETENTION_DAYS: "-1" })).toThrow(/HISTORY_RETENTION_DAYS: must be a whole number from 0 to 36500/);
    expect(loadConfig({}).historyRetentionDays).toBe(365);
  });
});

describe("the recovery sweep", () => {
  it("marks a dead replica's run interrupted while the service runs, and leaves one whose job lock is held, however old", async () => {
    const svc = await fx.service({ SCHEDULE_TZ: LIVE_TZ, DAILY_BACKUP_CRON: DAILY, RECOVERY_INTERVAL_MS: "200" });
    const config = loadConfig(svc.env);
    const pool = createPool(config.control, logger, { max: 2 });
    // Another replica's weekly cleanup, running for ten minutes: it holds the job's lock.
    const held = await createAdvisoryLocks(config.control, pool, logger).tryAcquire("job:weekly-cleanup");
    try {
      expect(held).not.toBeNull();
      await sql(
        svc.control,
        `INSERT INTO backup_service.job_runs (job, slot, replica_id, claimed, outcome, started_at) VALUES
           ('daily-backup', '2026-11-03T19:00:00Z', 'died-later', true, 'RUNNING', now() - interval '10 minutes'),
           ('weekly-cleanup', '2026-11-01T20:00:00Z', 'alive', true, 'RUNNING', now() - interval '10 minutes')`,
      );
      const outcome = async (replica: string) =>
        (await sql<{ outcome: string }>(svc.control, "SELECT outcome FROM backup_service.job_runs WHERE replica_id = $1", [replica]))[0]!.outcome;
      await waitFor("the sweep to mark the dead run", async () => (await outcome("died-later")) === "INTERRUPTED");
      await new Promise((r) => setTimeout(r, 600)); // a few more sweeps
      expect(await outcome("alive")).toBe("RUNNING");
      await held!.release();
      await waitFor("the sweep to mark the run whose replica let go", async () => (await outcome("alive")) === "INTERRUPTED");
    } finally {
      await held?.release();
      await pool.end();
    }
  });
});

describe("GetJobStatus and shutdown", () => {
  it("reports each job; a shutdown during a scheduled backup leaves no file and records the run interrupted", async () => {
    const svc = await fx.service({ SCHEDULE_TZ: LIVE_TZ, DAILY_BACKUP_CRON: DAILY, WEEKLY_CLEANUP_CRON: "off", REPLICA_ID: "status-replica" });
    const before = await svc.client.getJobStatus({});
    expect(before.schedulerEnabled).toBe(true);
    expect(before.replicaId).toBe("status-replica");
    const daily = before.jobs.find((j) => j.name === "daily-backup")!;
    expect(daily).toMatchObject({ cron: DAILY, timeZone: LIVE_TZ, enabled: true, running: false });
    const next = new Date(Number(daily.nextRunAt!.seconds) * 1000);
    // 02:00 in the service's zone, within the next day.
    expect(formatInZone(next, LIVE_TZ)).toMatch(/T02:00:00([+-]\d\d:\d\d|Z)$/);
    expect(next.getTime()).toBeGreaterThan(Date.now());
    expect(next.getTime() - Date.now()).toBeLessThanOrEqual(24 * 3_600_000);
    expect(before.jobs.find((j) => j.name === "weekly-cleanup")).toMatchObject({ cron: "off", enabled: false });

    const lock = await blockTable(fx.target, "customers");
    try {
      const slot = previousSlot(DAILY, LIVE_TZ, new Date())!;
      const firing = svc.app.scheduler.fire("daily-backup", slot);
      await waitForBlockedDump(fx.target);
      expect((await svc.client.getJobStatus({})).jobs.find((j) => j.name === "daily-backup")!.running).toBe(true);
      await svc.app.close();
      expect(await firing).toBe("ran");
    } finally {
      await lock.release();
    }
    const rows = await runsOf(svc.control, "daily-backup");
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ outcome: "INTERRUPTED", error: "interrupted by shutdown" });
    expect(await backupFiles(svc.backupDir)).toEqual([]);
    const [b] = await sql<{ status: string; error_message: string }>(
      svc.control,
      "SELECT status, error_message FROM backup_service.backup_history",
    );
    expect(b).toEqual({ status: "FAILED", error_message: "interrupted by shutdown" });
  });

  it("SCHEDULER_ENABLED=false: no job runs on that replica", async () => {
    const svc = await fx.service({ SCHEDULE_TZ: LIVE_TZ, SCHEDULER_ENABLED: "false", DAILY_BACKUP_CRON: DAILY });
    expect(await svc.app.scheduler.fire("daily-backup", previousSlot(DAILY, LIVE_TZ, new Date())!)).toBe("disabled");
    const s = await svc.client.getJobStatus({});
    expect(s.schedulerEnabled).toBe(false);
    expect(s.jobs.length).toBeGreaterThan(0);
    expect(s.jobs.every((j) => !j.enabled)).toBe(true);
  });
});

