import type { Logger } from "../logger.js";
import type { BackupRecord } from "./backup.js";

/** What asked for a verification: a backup's own, an API call, or the restore drill. */
export type VerificationOrigin = "backup" | "request" | "drill";

/**
 * What happened in the service, for whoever watches: alerts and metrics.
 * Events are facts after the records are written; nothing listens for
 * permission, and a listener cannot slow down or fail the work.
 */
export type ServiceEvent =
  | { type: "backup.succeeded"; backup: BackupRecord; durationMs: number }
  | {
      type: "backup.failed";
      backupId: string;
      database: string;
      reason: string;
      /** Cancelled by the caller: not a failure of the backup itself. */
      cancelled: boolean;
      /** The dump completed but could not be verified (the record stays COMPLETED). */
      unverified: boolean;
      durationMs: number;
    }
  | {
      type: "verification.finished";
      backup: BackupRecord;
      level: "checksum" | "restore";
      origin: VerificationOrigin;
      verified: boolean;
      message: string;
      durationMs: number;
    }
  | {
      type: "restore.finished";
      backupId: string;
      sourceDatabase: string;
      targetDatabase: string;
      safetyBackupId: string | null;
      durationMs: number;
      actor: string;
    }
  | {
      type: "restore.failed";
      /** Refused by its checks before anything was loaded (target busy, not empty, no room...). */
      refused: boolean;
      backupId: string;
      targetDatabase: string | null;
      reason: string;
      cancelled: boolean;
      durationMs: number;
      actor: string;
    }
  | { type: "cleanup.finished"; removed: BackupRecord[]; freedBytes: number; dryRun: boolean }
  | { type: "backup.deleted"; backupId: string; database: string; freedBytes: number; hard: boolean }
  | { type: "drill.failed"; backupId: string; database: string; reason: string };

export type ServiceEventType = ServiceEvent["type"];
export type EventOf<T extends ServiceEventType> = Extract<ServiceEvent, { type: T }>;

export interface EventBus {
  emit(event: ServiceEvent): void;
  /** Returns a function that unsubscribes. */
  subscribe(listener: (event: ServiceEvent) => void): () => void;
}

/**
 * Synchronous fan-out. A listener that throws is logged and skipped; work
 * that takes time (sending a notification) is the listener's to queue.
 */
export function createEventBus(logger: Logger): EventBus {
  const listeners = new Set<(event: ServiceEvent) => void>();
  return {
    emit(event) {
      for (const listener of listeners) {
        try {
          listener(event);
        } catch (err) {
          logger.error({ err, event: event.type }, "an event listener failed");
        }
      }
    },
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
}

/** For use cases built without observers (tests of one part). */
export const NO_EVENTS: EventBus = { emit: () => undefined, subscribe: () => () => undefined };
