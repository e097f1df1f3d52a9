import { collectDefaultMetrics, Counter, exponentialBuckets, Gauge, Histogram, Registry } from "prom-client";
import type { BackupFreshness } from "../db/backup-freshness.js";
import type { EventBus, ServiceEvent } from "../domain/events.js";
import type { Logger } from "../logger.js";

/** What a scrape reads besides the counters kept in memory. */
export interface MetricsSources {
  events: EventBus;
  /** Per database: newest VERIFIED backup and newest restore-verified one (control database). */
  freshness(): Promise<BackupFreshness[]>;
  /** Space of the file system holding BACKUP_DIR. */
  diskSpace(): Promise<{ freeBytes: number; totalBytes: number }>;
  /** The scheduler's jobs (as GetJobStatus reports them). */
  jobs(): Promise<
    {
      name: string;
      enabled: boolean;
      nextRunAt: Date | null;
      lastRun: { outcome: string; startedAt: Date; finishedAt: Date | null } | null;
    }[]
  >;
  logger: Logger;
}

export interface ServiceMetrics {
  /** This app's metrics plus the process's (CPU, memory, event loop, GC). */
  readonly registry: Registry;
  /** Records one finished RPC: its method name, status code name ("OK", "NOT_FOUND") and duration. */
  observeRpc(method: string, code: string, seconds: number): void;
  /** Stops listening to events. */
  close(): void;
}

const seconds = (d: Date) => d.getTime() / 1000;

// From a one-second dump to a six-hour one.
const BACKUP_SECONDS = [1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 21600];
// 1 MiB, 4 MiB, ... 1 TiB.
const BACKUP_BYTES = exponentialBuckets(2 ** 20, 4, 11);
// Most calls take milliseconds; synchronous backups and restores take minutes or hours.
const RPC_SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400];

let processRegistry: Registry | undefined;

/**
 * The process's own metrics, once per process. They describe the process, not
 * an app, and their collectors (an event-loop delay monitor, a GC observer)
 * can never be stopped: made per app, every app started in a process (tests
 * start many) would leave its own running behind.
 */
function processMetrics(): Registry {
  if (!processRegistry) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry });
  }
  return processRegistry;
}

/**
 * Prometheus metrics of one app, in a registry of its own (never prom-client's
 * global one: several apps may share a process). Outcomes are counted from the
 * event bus as they happen; backup ages, disk space and the schedule are read
 * at scrape time, and a source that fails only leaves its own series out.
 */
export function createServiceMetrics(sources: MetricsSources): ServiceMetrics {
  const { logger } = sources;
  const own = new Registry();
  const registers = [own];

  // Counted from events: since this process started.
  const backups = new Counter({
    name: "pgbackup_backups_total",
    help: "Backups taken by this process, by outcome: verified, corrupted (failed its verification), failed, cancelled.",
    labelNames: ["database", "outcome"] as const,
    registers,
  });
  const backupDuration = new Histogram({
    name: "pgbackup_backup_duration_seconds",
    help: "Time from the start of a successful backup to the end of its verification.",
    labelNames: ["database"] as const,
    buckets: BACKUP_SECONDS,
    registers,
  });
  const backupSize = new Histogram({
    name: "pgbackup_backup_size_bytes",
    help: "File size (compressed) of successful backups.",
    labelNames: ["database"] as const,
    buckets: BACKUP_BYTES,
    registers,
  });
  const verifications = new Counter({
    name: "pgbackup_verifications_total",
    help: "Verifications run by this process, by level (checksum, restore), origin (backup, request, drill) and result (passed, failed).",
    labelNames: ["database", "level", "origin", "result"] as const,
    registers,
  });
  const drillErrors = new Counter({
    name: "pgbackup_drill_errors_total",
    help: "Restore drills that could not run at all (a failed verification counts in pgbackup_verifications_total).",
    labelNames: ["database"] as const,
    registers,
  });
  const restores = new Counter({
    name: "pgbackup_restores_total",
    help: "Restores run by this process, by outcome: succeeded, failed, refused (by its checks, nothing loaded), cancelled.",
    labelNames: ["outcome"] as const,
    registers,
  });
  const freedBytes = new Counter({
    name: "pgbackup_cleanup_freed_bytes_total",
    help: "Bytes of backup files removed, by source: cleanup (expiry) or delete (DeleteBackup with hard_delete).",
    labelNames: ["source"] as const,
    registers,
  });
  const removedBackups = new Counter({
    name: "pgbackup_cleanup_removed_backups_total",
    help: "Backups removed, by source: cleanup (expiry) or delete (DeleteBackup with hard_delete).",
    labelNames: ["source"] as const,
    registers,
  });
  const rpcRequests = new Counter({
    name: "pgbackup_rpc_requests_total",
    help: "Finished BackupService calls, by method and status code (OK, UNAUTHENTICATED, NOT_FOUND, ...).",
    labelNames: ["method", "code"] as const,
    registers,
  });
  const rpcDuration = new Histogram({
    name: "pgbackup_rpc_duration_seconds",
    help: "Duration of BackupService calls, to the last message for streaming calls, by method and status code.",
    labelNames: ["method", "code"] as const,
    buckets: RPC_SECONDS,
    registers,
  });
  // Known label values start at zero, so that rate() and alerts see the first increment.
  for (const outcome of ["succeeded", "failed", "refused", "cancelled"]) restores.inc({ outcome }, 0);
  for (const source of ["cleanup", "delete"]) {
    freedBytes.inc({ source }, 0);
    removedBackups.inc({ source }, 0);
  }

  // Read at scrape time. Both gauges of a source share one read per scrape: prom-client
  // collects every metric of a scrape at once, so a read already in flight is reused.
  function shared<T>(read: () => Promise<T>): () => Promise<T> {
    let inflight: Promise<T> | null = null;
    return () => (inflight ??= read().finally(() => (inflight = null)));
  }
  const sourceUp = new Gauge({
    name: "pgbackup_scrape_source_up",
    help: "1 if this scrape could read the source (backup_history, backup_dir, scheduler), 0 if its series were left out.",
    labelNames: ["source"] as const,
    collect: async (): Promise<void> => {
      await Promise.all([freshness(), disk(), schedule()]);
    },
    registers,
  });
  /** Fills `gauges` from a source at each scrape; on failure logs, and leaves their series out. */
  function fromSource<T>(source: string, read: () => Promise<T>, fill: (value: T) => void, gauges: Gauge[]): () => Promise<void> {
    const once = shared(async () => {
      try {
        const value = await read();
        sourceUp.set({ source }, 1);
        return { ok: true as const, value };
      } catch (err) {
        sourceUp.set({ source }, 0);
        logger.warn({ source, reason: (err as Error).message }, "metrics scrape could not read a source; its series are left out");
        return { ok: false as const };
      }
    });
    return async () => {
      const r = await once();
      for (const g of gauges) {
        g.reset();
        // A gauge without labels would still show 0 after reset(): remove() takes that out too.
        g.remove({});
      }
      if (r.ok) fill(r.value);
    };
  }

  const lastSuccess = new Gauge({
    name: "pgbackup_last_success_timestamp_seconds",
    help: "When the newest non-deleted VERIFIED backup of the database completed (Unix time; all replicas).",
    labelNames: ["database"] as const,
    collect: (): Promise<void> => freshness(),
    registers,
  });
  const lastRestoreVerified = new Gauge({
    name: "pgbackup_last_restore_verified_timestamp_seconds",
    help: "When a non-deleted VERIFIED backup of the database was last proven by a restore (deep verification or drill; Unix time).",
    labelNames: ["database"] as const,
    collect: (): Promise<void> => freshness(),
    registers,
  });
  const freshness: () => Promise<void> = fromSource(
    "backup_history",
    sources.freshness,
    (rows) => {
      for (const r of rows) {
        lastSuccess.set({ database: r.database }, seconds(r.lastSuccessAt));
        if (r.lastRestoreVerifiedAt) lastRestoreVerified.set({ database: r.database }, seconds(r.lastRestoreVerifiedAt));
      }
    },
    [lastSuccess, lastRestoreVerified],
  );

  const dirFree = new Gauge({
    name: "pgbackup_backup_dir_free_bytes",
    help: "Free space (available to the service) on the file system holding BACKUP_DIR.",
    collect: (): Promise<void> => disk(),
    registers,
  });
  const dirSize = new Gauge({
    name: "pgbackup_backup_dir_size_bytes",
    help: "Total size of the file system holding BACKUP_DIR.",
    collect: (): Promise<void> => disk(),
    registers,
  });
  const disk: () => Promise<void> = fromSource(
    "backup_dir",
    sources.diskSpace,
    (s) => {
      dirFree.set(s.freeBytes);
      dirSize.set(s.totalBytes);
    },
    [dirFree, dirSize],
  );

  const nextRun = new Gauge({
    name: "pgbackup_scheduler_next_run_timestamp_seconds",
    help: "When each scheduled job next runs (Unix time); jobs switched off have no series.",
    labelNames: ["job"] as const,
    collect: (): Promise<void> => schedule(),
    registers,
  });
  const lastRun = new Gauge({
    name: "pgbackup_scheduler_last_run_timestamp_seconds",
    help: "When each job's last run (on any replica) finished, or started if it is still running, with its outcome.",
    labelNames: ["job", "outcome"] as const,
    collect: (): Promise<void> => schedule(),
    registers,
  });
  const schedule: () => Promise<void> = fromSource(
    "scheduler",
    sources.jobs,
    (jobs) => {
      for (const j of jobs) {
        if (j.enabled && j.nextRunAt) nextRun.set({ job: j.name }, seconds(j.nextRunAt));
        if (j.lastRun) {
          lastRun.set({ job: j.name, outcome: j.lastRun.outcome }, seconds(j.lastRun.finishedAt ?? j.lastRun.startedAt));
        }
      }
    },
    [nextRun, lastRun],
  );

  function onEvent(e: ServiceEvent): void {
    switch (e.type) {
      case "backup.succeeded":
        backupDuration.observe({ database: e.backup.databaseName }, e.durationMs / 1000);
        if (e.backup.fileSize !== null) backupSize.observe({ database: e.backup.databaseName }, e.backup.fileSize);
        break;
      case "backup.failed":
        // A dump whose verification could not run stays COMPLETED and is verified at the next
        // start: that verification decides its outcome, so it is not counted twice.
        if (!e.unverified) backups.inc({ database: e.database, outcome: e.cancelled ? "cancelled" : "failed" });
        break;
      case "verification.finished": {
        const database = e.backup.databaseName;
        verifications.inc({ database, level: e.level, origin: e.origin, result: e.verified ? "passed" : "failed" });
        // A backup's own verification decides its outcome, also when it ran after a restart
        // (backup.succeeded is only announced by the run that took the dump).
        if (e.origin === "backup") backups.inc({ database, outcome: e.verified ? "verified" : "corrupted" });
        break;
      }
      case "drill.failed":
        drillErrors.inc({ database: e.database });
        break;
      case "restore.finished":
        restores.inc({ outcome: "succeeded" });
        break;
      case "restore.failed":
        restores.inc({ outcome: e.cancelled ? "cancelled" : e.refused ? "refused" : "failed" });
        break;
      case "cleanup.finished":
        if (e.dryRun) break;
        freedBytes.inc({ source: "cleanup" }, e.freedBytes);
        removedBackups.inc({ source: "cleanup" }, e.removed.length);
        break;
      case "backup.deleted":
        // A soft delete keeps the file: nothing is freed until cleanup removes it.
        if (!e.hard) break;
        freedBytes.inc({ source: "delete" }, e.freedBytes);
        removedBackups.inc({ source: "delete" });
        break;
    }
  }
  const unsubscribe = sources.events.subscribe(onEvent);

  return {
    registry: Registry.merge([own, processMetrics()]),
    observeRpc(method, code, secs) {
      rpcRequests.inc({ method, code });
      rpcDuration.observe({ method, code }, secs);
    },
    close() {
      unsubscribe();
    },
  };
}
