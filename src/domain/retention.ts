import type { Logger } from "../logger.js";
import { DomainError, notFound } from "../errors.js";
import { fileLockKey, type BackupRecord } from "./backup.js";
import type { BackupService } from "./backup-service.js";
import { NO_EVENTS, type EventBus } from "./events.js";
import type { BackupRepository, BlobStore, Clock, LockManager } from "./ports.js";

export interface RetentionDeps {
  backups: BackupRepository;
  store: BlobStore;
  locks: LockManager;
  clock: Clock;
  logger: Logger;
  core: BackupService["core"];
  /** The newest this many VERIFIED backups of each database are never removed by cleanup. */
  minKeep: number;
  /** Where outcomes are announced (alerts, metrics). */
  events?: EventBus;
}

export interface CleanupResult {
  removed: BackupRecord[];
  kept: BackupRecord[];
  freedBytes: number;
  dryRun: boolean;
}

/** Deleting backups, by hand or by their expiry, without ever losing the last good ones. */
export function createRetentionUseCase({ backups, store, locks, clock, logger, core, minKeep, events = NO_EVENTS }: RetentionDeps) {
  /** Removes a backup's file while nothing reads it; returns the bytes freed, or null if it is busy. */
  async function removeFile(record: BackupRecord): Promise<number | null> {
    const lock = await locks.tryAcquire(fileLockKey(record.id));
    if (!lock) return null;
    try {
      const stat = await store.stat(record.fileName);
      await store.remove(record.fileName);
      return stat?.size ?? 0;
    } finally {
      await lock.release();
    }
  }

  return {
    /**
     * Soft delete marks the record deleted and keeps the file; hard delete
     * removes the file and the record (its audit events remain). A hard
     * delete of a backup being restored or downloaded is refused (ABORTED).
     */
    async deleteBackup(id: string, hard: boolean): Promise<{ record: BackupRecord; fileRemoved: boolean; freedBytes: number }> {
      const backupId = core.validateId(id);
      const record = await backups.findById(backupId);
      if (!record) throw notFound(`backup ${backupId} not found`);
      if (record.status === "IN_PROGRESS") {
        throw new DomainError("failed_precondition", `backup ${backupId} is still in progress; delete it when it has finished`);
      }
      if (!hard) {
        if (record.isDeleted) return { record, fileRemoved: false, freedBytes: 0 };
        const updated = await backups.update(backupId, { isDeleted: true, deletedAt: clock.now() });
        logger.info({ backupId }, "backup soft-deleted");
        events.emit({ type: "backup.deleted", backupId, database: record.databaseName, freedBytes: 0, hard: false });
        return { record: updated, fileRemoved: false, freedBytes: 0 };
      }
      const freed = await removeFile(record);
      if (freed === null) {
        throw new DomainError(
          "busy",
          `backup ${backupId} is being restored or downloaded; delete it when that has finished`,
        );
      }
      await backups.remove(backupId);
      logger.info({ backupId, freedBytes: freed }, "backup deleted with its file");
      events.emit({ type: "backup.deleted", backupId, database: record.databaseName, freedBytes: freed, hard: true });
      return { record, fileRemoved: true, freedBytes: freed };
    },

    /**
     * Removes the files of expired backups and marks them deleted, except the
     * newest `minKeep` VERIFIED backups of each database, however old.
     */
    async cleanupExpired(dryRun: boolean): Promise<CleanupResult> {
      // One cleanup at a time across replicas.
      const lock = await locks.tryAcquire("cleanup");
      if (!lock) throw new DomainError("busy", "a cleanup is already running");
      try {
        const expired = await backups.listExpired(clock.now());
        const floor = await backups.newestVerifiedIds(minKeep);
        const kept = expired.filter((r) => floor.has(r.id));
        const candidates: BackupRecord[] = [];
        for (const r of expired) {
          if (floor.has(r.id) || r.status === "IN_PROGRESS") continue;
          // A backup being restored or downloaded is left for the next cleanup.
          if (await locks.isHeld(fileLockKey(r.id))) continue;
          candidates.push(r);
        }
        if (dryRun) {
          let freedBytes = 0;
          for (const r of candidates) freedBytes += (await store.stat(r.fileName))?.size ?? 0;
          return { removed: candidates, kept, freedBytes, dryRun };
        }
        const removed: BackupRecord[] = [];
        let freedBytes = 0;
        try {
          for (const r of candidates) {
            // The floor again (its database's alone), just before each removal: a verification
            // that found a newer backup CORRUPTED, or this one good, meanwhile makes it part of it.
            if ((await backups.newestVerifiedIds(minKeep, r.databaseName)).has(r.id)) {
              kept.push(r);
              continue;
            }
            // A FAILED backup normally has no file; if one was left (a failure after the rename),
            // it goes too, so that what a dry run counts is what the run frees.
            const freed = await removeFile(r);
            if (freed === null) {
              logger.warn({ backupId: r.id }, "expired backup is in use; cleanup will retry next time");
              continue;
            }
            const now = clock.now();
            removed.push(
              await backups.update(r.id, {
                isDeleted: true,
                deletedAt: r.deletedAt ?? now,
                metadata: { ...r.metadata, fileRemovedAt: now.toISOString() },
              }),
            );
            freedBytes += freed;
          }
        } finally {
          // Also when a later step failed: what was removed is gone, and is announced.
          events.emit({ type: "cleanup.finished", removed, freedBytes, dryRun });
        }
        logger.info({ removed: removed.length, kept: kept.length, freedBytes }, "cleanup finished");
        return { removed, kept, freedBytes, dryRun };
      } finally {
        await lock.release();
      }
    },
  };
}
