import type { Actor, BackupRecord } from "../domain/backup.js";
import type { VerificationResult } from "../domain/backup-service.js";
import type { EventBus } from "../domain/events.js";
import type { HistoryPruner } from "../domain/ports.js";
import { DomainError } from "../errors.js";
import type { BackupUseCases } from "../rpc/backup-handlers.js";
import type { JobSpec } from "./scheduler.js";

/** Who scheduled work is recorded as. */
export const SCHEDULER_ACTOR: Actor = { sub: "scheduler", username: "scheduler" };

/** daily-backup: a verified FULL backup of each database, one after the other. */
export function dailyBackupJob(
  service: Pick<BackupUseCases, "createBackup">,
  opts: { cron: string | null; databases: string[]; retentionDays: number },
): JobSpec {
  return {
    name: "daily-backup",
    cron: opts.cron,
    setting: "DAILY_BACKUP_CRON",
    async run({ slot, signal }) {
      const results: { database: string; backupId: string | null; status: string; error: string | null }[] = [];
      for (const database of opts.databases) {
        signal.throwIfAborted();
        try {
          const { record } = await service.createBackup(
            {
              backupType: "FULL",
              retentionDays: opts.retentionDays,
              database,
              async: false,
              actor: SCHEDULER_ACTOR,
              metadata: { job: "daily-backup", slot: slot.toISOString() },
            },
            signal,
          );
          results.push({ database, backupId: record.id, status: record.status, error: null });
        } catch (err) {
          // Shutdown stops the whole run; any other failure is this database's alone.
          if (signal.aborted) throw signal.reason ?? err;
          const message = err instanceof DomainError ? err.message : "internal error (details are in the service log)";
          results.push({ database, backupId: (err as DomainError).backupId ?? null, status: "FAILED", error: message });
        }
      }
      const failed = results.filter((r) => r.error !== null);
      const last = [...results].reverse().find((r) => r.backupId !== null);
      return {
        outcome: failed.length === 0 ? "SUCCEEDED" : "FAILED",
        backupId: last?.backupId ?? null,
        error: failed.length === 0 ? null : failed.map((f) => `${f.database}: ${f.error}`).join("; "),
        details: { backups: results },
      };
    },
  };
}

/**
 * weekly-cleanup: CleanupExpiredBackups, with its safety floor, then (when `history` is given)
 * the service's own history older than its days: finished job runs, resolved incidents, finished
 * restore runs, audit events.
 */
export function weeklyCleanupJob(
  service: Pick<BackupUseCases, "cleanupExpired">,
  opts: { cron: string | null; history?: { pruner: HistoryPruner; days: number; now: () => Date } },
): JobSpec {
  return {
    name: "weekly-cleanup",
    cron: opts.cron,
    setting: "WEEKLY_CLEANUP_CRON",
    async run() {
      const r = await service.cleanupExpired(false);
      const details: Record<string, unknown> = {
        removed: r.removed.map((b) => b.id),
        kept: r.kept.map((b) => b.id),
        freedBytes: r.freedBytes,
      };
      const h = opts.history;
      if (h) {
        try {
          details.historyPruned = await h.pruner.prune(new Date(h.now().getTime() - h.days * 86_400_000));
        } catch (err) {
          // What cleanup removed stays on record with the run. The server's reason, not drizzle's
          // "Failed query: <sql> params: ..." around it.
          const cause = (err as { cause?: unknown }).cause;
          const message = cause instanceof Error ? cause.message : err instanceof Error ? err.message : String(err);
          return { outcome: "FAILED", error: `backups cleaned up; pruning the service's history failed: ${message}`, details };
        }
      }
      return { outcome: "SUCCEEDED", details };
    },
  };
}

/**
 * restore-drill: deep-verifies (restores into a scratch database and checks)
 * the newest VERIFIED backup of each database that no restore has proven yet.
 */
export function restoreDrillJob(opts: {
  cron: string | null;
  candidates(): Promise<BackupRecord[]>;
  verifyDeep(id: string, signal: AbortSignal): Promise<VerificationResult>;
  /** A drill that could not run is announced here; a failed verification announces itself. */
  events?: EventBus;
}): JobSpec {
  return {
    name: "restore-drill",
    cron: opts.cron,
    setting: "RESTORE_DRILL_CRON",
    async run({ signal }) {
      const drilled: { database: string; backupId: string; verified: boolean; message: string }[] = [];
      for (const record of await opts.candidates()) {
        if (record.restoreVerifiedAt !== null) continue;
        signal.throwIfAborted();
        try {
          const r = await opts.verifyDeep(record.id, signal);
          drilled.push({ database: record.databaseName, backupId: record.id, verified: r.verified, message: r.message });
        } catch (err) {
          if (signal.aborted) throw signal.reason ?? err;
          const message = err instanceof DomainError ? err.message : "internal error (details are in the service log)";
          drilled.push({ database: record.databaseName, backupId: record.id, verified: false, message });
          opts.events?.emit({ type: "drill.failed", backupId: record.id, database: record.databaseName, reason: message });
        }
      }
      const failed = drilled.filter((d) => !d.verified);
      return {
        outcome: failed.length === 0 ? "SUCCEEDED" : "FAILED",
        backupId: drilled.at(-1)?.backupId ?? null,
        error: failed.length === 0 ? null : failed.map((f) => `${f.database} (backup ${f.backupId}): ${f.message}`).join("; "),
        details: { drilled },
      };
    },
  };
}
