import { randomUUID } from "node:crypto";
import { mkdir, rm } from "node:fs/promises";
import { Code } from "@connectrpc/connect";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupStatus, JobRunOutcome, type Backup } from "../gen/backup/v1/backup_pb.js";
import { ConfigError, loadConfig } from "../src/config.js";
import { previousSlot } from "../src/scheduler/cron.js";
import {
  callFailure,
  createDatabase,
  createFixture,
  dropDatabase,
  mintToken,
  seedDatabase,
  sql,
  uniqueName,
  type TestService,
} from "./helpers.js";

const fx = createFixture("metrics");
const target = fx.target;
// A slot long past and the next one far off: no real firing during the test.
const YEARLY = "30 2 1 1 *";
const TZ = "Asia/Jakarta";
const restored = uniqueName("bs_metrics_restored");
let svc: TestService;

beforeAll(async () => {
  await createDatabase(target);
  await seedDatabase(target, 500);
  svc = await fx.service({ DAILY_BACKUP_CRON: YEARLY, RETENTION_MIN_KEEP: "1" });
});

afterAll(async () => {
  await fx.cleanup();
  await dropDatabase(restored);
});

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Prometheus' text format, as a scraper reads it. */
function parseExposition(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not an exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]!] = l[2]!.replace(/\\n/g, "\n").replace(/\\(.)/g, "$1");
    }
    samples.push({ name: m[1]!, labels, value: m[3] === "+Inf" ? Infinity : Number(m[3]) });
  }
  return samples;
}

async function scrape(url = svc.app.metricsUrl!) {
  const res = await fetch(url);
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8");
  const samples = parseExposition(await res.text());
  return {
    samples,
    /** The value of the series with exactly these labels; undefined when there is none. */
    get(name: string, labels: Record<string, string> = {}): number | undefined {
      const want = Object.entries(labels);
      const hit = samples.find(
        (s) => s.name === name && Object.keys(s.labels).length === want.length && want.every(([k, v]) => s.labels[k] === v),
      );
      return hit?.value;
    },
    series(name: string): Sample[] {
      return samples.filter((s) => s.name === name);
    },
  };
}

const secondsOf = (t: Timestamp | undefined) => timestampDate(t!).getTime() / 1000;

describe("the metrics endpoint", () => {
  it("serves Prometheus' text format over HTTP/1.1 on a port of its own", async () => {
    const url = svc.app.metricsUrl!;
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    expect(new URL(url).port).not.toBe(new URL(svc.url).port);

    const m = await scrape();
    // The process's own metrics, conventionally named.
    expect(m.get("process_cpu_user_seconds_total")).toBeGreaterThan(0);
    expect(m.get("nodejs_heap_size_used_bytes")).toBeGreaterThan(0);
    // BACKUP_DIR's file system.
    const free = m.get("pgbackup_backup_dir_free_bytes")!;
    expect(free).toBeGreaterThan(0);
    expect(m.get("pgbackup_backup_dir_size_bytes")).toBeGreaterThanOrEqual(free);
    // Nothing backed up yet; restore outcomes start at zero.
    expect(m.series("pgbackup_last_success_timestamp_seconds")).toEqual([]);
    expect(m.get("pgbackup_restores_total", { outcome: "succeeded" })).toBe(0);
    expect(m.get("pgbackup_cleanup_freed_bytes_total", { source: "cleanup" })).toBe(0);
    for (const source of ["backup_history", "backup_dir", "scheduler"]) {
      expect(m.get("pgbackup_scrape_source_up", { source })).toBe(1);
    }

    // The next run of the one job switched on, as GetJobStatus tells it; the others have none.
    const { jobs } = await svc.client.getJobStatus({});
    const daily = jobs.find((j) => j.name === "daily-backup")!;
    expect(m.get("pgbackup_scheduler_next_run_timestamp_seconds", { job: "daily-backup" })).toBe(secondsOf(daily.nextRunAt));
    expect(m.series("pgbackup_scheduler_next_run_timestamp_seconds").map((s) => s.labels.job)).toEqual(["daily-backup"]);
  });

  it("answers 404 to other paths, 405 to other methods, and 200 on /healthz", async () => {
    const base = svc.app.metricsUrl!;
    expect((await fetch(new URL("/other", base))).status).toBe(404);
    const post = await fetch(base, { method: "POST", body: "x" });
    expect(post.status).toBe(405);
    expect(post.headers.get("allow")).toBe("GET, HEAD");
    const health = await fetch(new URL("/healthz", base));
    expect(health.status).toBe(200);
    expect(await health.text()).toBe("ok\n");
  });
});

describe("after real operations", () => {
  let a: Backup, b: Backup, c: Backup;
  let backupWallSeconds = 0;
  let restoreSeconds = 0;
  let freedByDelete = 0;
  const missing = uniqueName("bs_metrics_missing");

  const timed = async <T>(p: () => Promise<T>): Promise<T> => {
    const t0 = performance.now();
    try {
      return await p();
    } finally {
      backupWallSeconds += (performance.now() - t0) / 1000;
    }
  };

  beforeAll(async () => {
    // A: verified, checked again, later expired and cleaned up.
    a = (await timed(() => svc.client.createBackup({})).then((r) => r.backup!));
    await svc.client.verifyBackup({ id: a.id });
    // B: verified, then deleted with its file.
    b = (await timed(() => svc.client.createBackup({})).then((r) => r.backup!));
    freedByDelete = Number((await svc.client.deleteBackup({ id: b.id, hardDelete: true })).freedBytes);
    // C: the scheduled daily backup, proven by a restore drill, restored, downloaded.
    const slot = previousSlot(YEARLY, TZ, new Date())!;
    expect(await timed(() => svc.app.scheduler.fire("daily-backup", slot))).toBe("ran");
    const { backups } = await svc.client.listBackups({ pageSize: 1 });
    expect(backups[0]!.status).toBe(BackupStatus.VERIFIED);
    const verified = await svc.client.verifyBackup({ id: backups[0]!.id, deep: true });
    expect(verified.verified).toBe(true);
    c = (await svc.client.getBackup({ id: backups[0]!.id })).backup!;
    for await (const msg of svc.client.restoreBackup({ id: c.id, confirmRestore: true, targetDatabase: restored })) {
      if (msg.result) restoreSeconds = Number(msg.result.duration!.seconds) + msg.result.duration!.nanos / 1e9;
    }
    expect(restoreSeconds).toBeGreaterThan(0);
    for await (const _ of svc.client.downloadBackup({ id: c.id })) {
      // drain
    }
    // A expires; cleanup removes it (C, the newest verified, is the floor).
    await sql(svc.control, "UPDATE backup_service.backup_history SET expires_at = now() - interval '1 day' WHERE id = $1", [a.id]);
    const cleanup = await svc.client.cleanupExpiredBackups({});
    expect(cleanup.removed.map((r) => r.id)).toEqual([a.id]);

    // Calls that fail: a database that does not exist, no token, a wrong role, an unknown id.
    expect((await callFailure(svc.client.createBackup({ database: missing }))).code).toBe(Code.NotFound);
    expect((await callFailure(svc.clientWith(null).getStats({}))).code).toBe(Code.Unauthenticated);
    const viewer = await mintToken({ sub: "viewer", role: "viewer" });
    expect((await callFailure(svc.clientWith(viewer).getStats({}))).code).toBe(Code.PermissionDenied);
    expect((await callFailure(svc.client.getBackup({ id: randomUUID() }))).code).toBe(Code.NotFound);
  }, 120_000);

  it("counts backups by outcome, with duration and size histograms", async () => {
    const m = await scrape();
    expect(m.get("pgbackup_backups_total", { database: target, outcome: "verified" })).toBe(3);
    expect(m.get("pgbackup_backups_total", { database: missing, outcome: "failed" })).toBe(1);
    expect(m.get("pgbackup_backups_total", { database: target, outcome: "failed" })).toBeUndefined();

    const sizes = [a, b, c].map((x) => Number(x.fileSize));
    expect(m.get("pgbackup_backup_size_bytes_count", { database: target })).toBe(3);
    expect(m.get("pgbackup_backup_size_bytes_sum", { database: target })).toBe(sizes.reduce((x, y) => x + y, 0));
    expect(m.get("pgbackup_backup_size_bytes_bucket", { database: target, le: "+Inf" })).toBe(3);
    expect(m.get("pgbackup_backup_size_bytes_bucket", { database: target, le: "1048576" })).toBe(
      sizes.filter((s) => s <= 2 ** 20).length,
    );

    // From the start of the dump to the end of its verification: more than the dump alone, less
    // than the calls that waited for it.
    const dumpSeconds = [a, b, c].reduce((s, x) => s + Number(x.duration!.seconds) + x.duration!.nanos / 1e9, 0);
    expect(m.get("pgbackup_backup_duration_seconds_count", { database: target })).toBe(3);
    const sum = m.get("pgbackup_backup_duration_seconds_sum", { database: target })!;
    expect(sum).toBeGreaterThanOrEqual(dumpSeconds - 0.003);
    expect(sum).toBeLessThanOrEqual(backupWallSeconds);
  });

  it("counts verifications, restores and freed space", async () => {
    const m = await scrape();
    const v = (level: string, origin: string, result: string) =>
      m.get("pgbackup_verifications_total", { database: target, level, origin, result });
    expect(v("checksum", "backup", "passed")).toBe(3);
    expect(v("checksum", "request", "passed")).toBe(1);
    expect(v("restore", "request", "passed")).toBe(1);
    expect(v("checksum", "backup", "failed")).toBeUndefined();

    expect(m.get("pgbackup_restores_total", { outcome: "succeeded" })).toBe(1);
    expect(m.get("pgbackup_restores_total", { outcome: "failed" })).toBe(0);
    expect(m.get("pgbackup_restores_total", { outcome: "cancelled" })).toBe(0);

    expect(freedByDelete).toBe(Number(b.fileSize));
    expect(m.get("pgbackup_cleanup_freed_bytes_total", { source: "delete" })).toBe(Number(b.fileSize));
    expect(m.get("pgbackup_cleanup_removed_backups_total", { source: "delete" })).toBe(1);
    expect(m.get("pgbackup_cleanup_freed_bytes_total", { source: "cleanup" })).toBe(Number(a.fileSize));
    expect(m.get("pgbackup_cleanup_removed_backups_total", { source: "cleanup" })).toBe(1);
  });

  it("reads the newest verified and restore-verified backup of each database from the control database", async () => {
    const m = await scrape();
    // A was cleaned up and B deleted: C is the newest that counts.
    expect(m.get("pgbackup_last_success_timestamp_seconds", { database: target })).toBe(secondsOf(c.completedAt));
    expect(m.get("pgbackup_last_restore_verified_timestamp_seconds", { database: target })).toBe(
      secondsOf(c.restoreVerifiedAt),
    );
    expect(m.series("pgbackup_last_success_timestamp_seconds").map((s) => s.labels.database)).toEqual([target]);

    // The scheduled run that took C.
    const { jobs } = await svc.client.getJobStatus({});
    const last = jobs.find((j) => j.name === "daily-backup")!.lastRun!;
    expect(last.outcome).toBe(JobRunOutcome.SUCCEEDED);
    expect(m.get("pgbackup_scheduler_last_run_timestamp_seconds", { job: "daily-backup", outcome: "SUCCEEDED" })).toBe(
      secondsOf(last.finishedAt),
    );
  });

  it("counts calls by method and code, denied ones included, and times streams to their end", async () => {
    const m = await scrape();
    const calls = (method: string, code: string) => m.get("pgbackup_rpc_requests_total", { method, code });
    expect(calls("CreateBackup", "OK")).toBe(2);
    expect(calls("CreateBackup", "NOT_FOUND")).toBe(1);
    expect(calls("VerifyBackup", "OK")).toBe(2);
    expect(calls("DeleteBackup", "OK")).toBe(1);
    expect(calls("CleanupExpiredBackups", "OK")).toBe(1);
    expect(calls("GetStats", "UNAUTHENTICATED")).toBe(1);
    expect(calls("GetStats", "PERMISSION_DENIED")).toBe(1);
    expect(calls("GetStats", "OK")).toBeUndefined();
    expect(calls("GetBackup", "NOT_FOUND")).toBe(1);
    expect(calls("RestoreBackup", "OK")).toBe(1);
    expect(calls("DownloadBackup", "OK")).toBe(1);

    const duration = (method: string, code: string) => ({
      count: m.get("pgbackup_rpc_duration_seconds_count", { method, code }),
      sum: m.get("pgbackup_rpc_duration_seconds_sum", { method, code })!,
    });
    expect(duration("GetStats", "UNAUTHENTICATED").count).toBe(1);
    // The restore's stream is timed until its last message, which reports the restore's own duration.
    const restore = duration("RestoreBackup", "OK");
    expect(restore.count).toBe(1);
    expect(restore.sum).toBeGreaterThanOrEqual(restoreSeconds);
  });

  it("leaves out only the series of a source that fails, and says which", async () => {
    await sql(svc.control, "ALTER TABLE backup_service.backup_history RENAME TO backup_history_away");
    await rm(svc.backupDir, { recursive: true, force: true });
    try {
      const m = await scrape();
      expect(m.get("pgbackup_scrape_source_up", { source: "backup_history" })).toBe(0);
      expect(m.get("pgbackup_scrape_source_up", { source: "backup_dir" })).toBe(0);
      expect(m.get("pgbackup_scrape_source_up", { source: "scheduler" })).toBe(1);
      expect(m.series("pgbackup_last_success_timestamp_seconds")).toEqual([]);
      expect(m.series("pgbackup_backup_dir_free_bytes")).toEqual([]);
      // The rest is served as before.
      expect(m.get("pgbackup_backups_total", { database: target, outcome: "verified" })).toBe(3);
      expect(m.get("pgbackup_scheduler_next_run_timestamp_seconds", { job: "daily-backup" })).toBeGreaterThan(Date.now() / 1000);
    } finally {
      await sql(svc.control, "ALTER TABLE backup_service.backup_history_away RENAME TO backup_history");
      await mkdir(svc.backupDir, { recursive: true });
    }
    const m = await scrape();
    expect(m.get("pgbackup_scrape_source_up", { source: "backup_history" })).toBe(1);
    expect(m.get("pgbackup_last_success_timestamp_seconds", { database: target })).toBe(secondsOf(c.completedAt));
  });
});

describe("METRICS_PORT and METRICS_HOST", () => {
  it("METRICS_PORT=off serves no metrics", async () => {
    const off = await fx.service({ METRICS_PORT: "off" });
    expect(off.app.metricsUrl).toBeNull();
  });

  it("parses the port and the host, defaulting to 9464 on GRPC_HOST", () => {
    expect(loadConfig({}).metrics).toEqual({ host: "127.0.0.1", port: 9464 });
    expect(loadConfig({ GRPC_HOST: "0.0.0.0" }).metrics).toEqual({ host: "0.0.0.0", port: 9464 });
    expect(loadConfig({ METRICS_HOST: "::1", METRICS_PORT: "9100" }).metrics).toEqual({ host: "::1", port: 9100 });
    expect(loadConfig({ METRICS_PORT: "0" }).metrics).toEqual({ host: "127.0.0.1", port: 0 });
    expect(loadConfig({ METRICS_PORT: "off" }).metrics).toBeNull();
    expect(loadConfig({ METRICS_PORT: " OFF " }).metrics).toBeNull();
    for (const bad of ["65536", "-1", "ninety", "9464x"]) {
      let err: unknown;
      try {
        loadConfig({ METRICS_PORT: bad });
      } catch (e) {
        err = e;
      }
      expect(err, bad).toBeInstanceOf(ConfigError);
      expect((err as Error).message).toMatch(/METRICS_PORT: must be a port from 0 to 65535, or off/);
      expect((err as Error).message).not.toContain(bad);
    }
  });
});
