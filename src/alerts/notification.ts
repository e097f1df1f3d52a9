import type { ServiceEvent } from "../domain/events.js";
import { formatBytes } from "../format.js";

/**
 * failure: something needs a person (a backup or restore failed, a database
 * has no recent verified backup, the disk is filling up).
 * resolved: a failure condition that was announced is over.
 * info: worth knowing (a restore finished, cleanup removed backups).
 */
export type Severity = "failure" | "resolved" | "info";

export type AlertKind =
  | "backup_failed"
  | "verification_failed"
  | "restore_finished"
  | "restore_failed"
  | "restore_cancelled"
  | "restore_refused"
  | "cleanup_removed"
  | "drill_failed"
  | "backup_overdue"
  | "disk_low";

export interface Notification {
  kind: AlertKind;
  severity: Severity;
  /** One line: an email subject, a chat message's first line. */
  title: string;
  /** What happened and what to do, in a few lines of plain text. */
  body: string;
  database?: string;
  backupId?: string;
  at: Date;
}

export function formatAge(ms: number): string {
  const h = ms / 3_600_000;
  if (h >= 48) return `${Math.floor(h / 24)} days`;
  if (h >= 1) return `${Math.floor(h)}h ${Math.floor((ms % 3_600_000) / 60_000)}m`;
  return `${Math.max(0, Math.round(ms / 60_000))}m`;
}

const HOW_TO_LOOK = "Look with: backupctl get <id> (or GetBackup), and the service log.";

/** The notification an event calls for, or null when it calls for none. */
export function notificationFor(event: ServiceEvent, now: Date): Notification | null {
  switch (event.type) {
    case "backup.failed":
      if (event.cancelled) return null;
      return {
        kind: "backup_failed",
        severity: "failure",
        title: event.unverified
          ? `Backup of "${event.database}" could not be verified`
          : `Backup of "${event.database}" failed`,
        body:
          `Backup ${event.backupId} of database "${event.database}" ${event.unverified ? "was written but could not be verified" : "failed"}: ${event.reason}\n` +
          `Until a backup of "${event.database}" is VERIFIED again, the newest usable one is older than you may think.\n` +
          HOW_TO_LOOK.replace("<id>", event.backupId),
        database: event.database,
        backupId: event.backupId,
        at: now,
      };
    case "verification.finished": {
      if (event.verified) return null;
      const { backup } = event;
      const drill = event.origin === "drill";
      return {
        kind: drill ? "drill_failed" : "verification_failed",
        severity: "failure",
        title: drill
          ? `Restore drill failed: backup of "${backup.databaseName}" does not restore correctly`
          : `Backup of "${backup.databaseName}" failed ${event.level === "restore" ? "restore " : ""}verification (CORRUPTED)`,
        body:
          `Backup ${backup.id} of database "${backup.databaseName}" (taken ${backup.startedAt.toISOString()}) is now CORRUPTED: ${event.message}\n` +
          "It will not be restored without force. Take a new backup (backupctl create) and find out what damaged this one.\n" +
          HOW_TO_LOOK.replace("<id>", backup.id),
        database: backup.databaseName,
        backupId: backup.id,
        at: now,
      };
    }
    case "drill.failed":
      return {
        kind: "drill_failed",
        severity: "failure",
        title: `Restore drill of "${event.database}" could not run`,
        body:
          `The restore drill of backup ${event.backupId} (database "${event.database}") could not run: ${event.reason}\n` +
          "The backup's status is unchanged; whether it restores is still unproven.",
        database: event.database,
        backupId: event.backupId,
        at: now,
      };
    case "restore.finished":
      return {
        kind: "restore_finished",
        severity: "info",
        title: `Restore into "${event.targetDatabase}" finished`,
        body:
          `Backup ${event.backupId} of "${event.sourceDatabase}" was restored into "${event.targetDatabase}" by ${event.actor} ` +
          `in ${(event.durationMs / 1000).toFixed(1)} s.` +
          (event.safetyBackupId
            ? `\nTo undo: restore safety backup ${event.safetyBackupId} into "${event.targetDatabase}" with drop_existing.`
            : ""),
        database: event.targetDatabase,
        backupId: event.backupId,
        at: now,
      };
    case "restore.failed": {
      // A refusal (the target is busy or holds data, no room...) changed nothing and the
      // caller was told: worth knowing, not worth paging anyone.
      const quiet = event.cancelled || event.refused;
      const what = event.cancelled ? "was cancelled" : event.refused ? `was refused: ${event.reason}` : `failed: ${event.reason}`;
      return {
        kind: event.cancelled ? "restore_cancelled" : event.refused ? "restore_refused" : "restore_failed",
        severity: quiet ? "info" : "failure",
        title: `Restore into "${event.targetDatabase}" ${event.cancelled ? "was cancelled" : event.refused ? "was refused" : "failed"}`,
        body:
          `Restore of backup ${event.backupId} into "${event.targetDatabase}" (by ${event.actor}) ${what}\n` +
          `The database "${event.targetDatabase}" was left as it was before the restore.`,
        database: event.targetDatabase ?? undefined,
        backupId: event.backupId,
        at: now,
      };
    }
    case "cleanup.finished": {
      if (event.dryRun || event.removed.length === 0) return null;
      const listed = event.removed
        .slice(0, 20)
        .map((b) => `- ${b.id} (${b.databaseName}, ${b.startedAt.toISOString()}, ${b.status})`)
        .join("\n");
      const more = event.removed.length > 20 ? `\n... and ${event.removed.length - 20} more` : "";
      return {
        kind: "cleanup_removed",
        severity: "info",
        title: `Cleanup removed ${event.removed.length} expired backup${event.removed.length === 1 ? "" : "s"}, freeing ${formatBytes(event.freedBytes)}`,
        body: `Expired backups removed:\n${listed}${more}`,
        at: now,
      };
    }
    case "backup.succeeded":
    case "backup.deleted":
      return null;
  }
}

/** The Slack-compatible `text` of a notification: title in bold, then the body. */
export function plainText(n: Notification, instance: string): string {
  const mark = n.severity === "failure" ? "FAILURE" : n.severity === "resolved" ? "RESOLVED" : "INFO";
  return `*[${mark}] ${n.title}*\n${n.body}\n(pg-backup-service ${instance}, ${n.at.toISOString()})`;
}
