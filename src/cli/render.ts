/**
 * Human-readable renderings of the service's responses, for backupctl's
 * default output.
 */
import {
  ArchiveFormatSchema,
  BackupStatusSchema,
  BackupTypeSchema,
  CompressionSchema,
  JobRunOutcomeSchema,
  RestorePhaseSchema,
  VerificationLevelSchema,
  type AuditEvent,
  type Backup,
  type CleanupExpiredBackupsResponse,
  type GetJobStatusResponse,
  type GetStatsResponse,
  type RestoreResult,
  type VerifyBackupResponse,
} from "../../gen/backup/v1/backup_pb.js";
import {
  enumName,
  formatBytes,
  formatCount,
  formatDuration,
  formatFields,
  formatTable,
  formatTime,
  plural,
} from "./format.js";

export const statusName = (b: Backup) => enumName(BackupStatusSchema, b.status) + (b.isDeleted ? " (deleted)" : "");
export const phaseName = (p: number) => enumName(RestorePhaseSchema, p);

export function renderBackup(b: Backup, fileExists?: boolean): string {
  const ratio = b.dumpSize > 0n ? `, dump ${formatBytes(b.dumpSize)}, ${b.compressionRatio.toFixed(1)}% smaller` : "";
  const file = b.fileName ? `${b.fileName}${fileExists === undefined ? "" : fileExists ? " (on disk)" : " (missing)"}` : "-";
  const who = b.triggeredByUsername && b.triggeredByUsername !== b.triggeredBy ? `${b.triggeredBy} (${b.triggeredByUsername})` : b.triggeredBy;
  return formatFields([
    ["id", b.id],
    ["database", b.databaseName],
    ["status", statusName(b)],
    ["type", enumName(BackupTypeSchema, b.backupType)],
    ["label", b.label || undefined],
    ["file", file],
    ["size", b.fileName ? `${formatBytes(b.fileSize)}${ratio}` : undefined],
    ["sha256", b.checksum || undefined],
    ["contents", b.tableCount > 0 || b.rowCount > 0n ? `${plural(b.tableCount, "table")}, ${plural(b.rowCount, "row")}` : undefined],
    ["database size", b.databaseSize > 0n ? formatBytes(b.databaseSize) : undefined],
    [
      "format",
      b.archiveFormat
        ? `${enumName(ArchiveFormatSchema, b.archiveFormat).toLowerCase()}, ${enumName(CompressionSchema, b.compression).toLowerCase()}` +
          (b.pgDumpVersion ? `; pg_dump ${b.pgDumpVersion}, server ${b.serverVersion || "?"}` : "")
        : undefined,
    ],
    ["started", formatTime(b.startedAt)],
    ["completed", b.completedAt ? `${formatTime(b.completedAt)} (dump took ${formatDuration(b.duration)})` : undefined],
    ["verified", b.verifiedAt ? formatTime(b.verifiedAt) : undefined],
    ["restore-verified", b.restoreVerifiedAt ? formatTime(b.restoreVerifiedAt) : undefined],
    ["expires", b.expiresAt ? `${formatTime(b.expiresAt)} (kept ${b.retentionDays} days)` : undefined],
    ["deleted", b.isDeleted ? formatTime(b.deletedAt) : undefined],
    ["triggered by", who || undefined],
    ["error", b.errorMessage || undefined],
  ]);
}

export function renderStats(s: GetStatsResponse): string {
  const latest = s.latestBackup;
  let text = formatFields([
    ["backups", formatCount(s.totalBackups)],
    ["successful", formatCount(s.successfulBackups)],
    ["failed", formatCount(s.failedBackups)],
    ["success rate", `${s.successRate.toFixed(2)}%`],
    ["total size", formatBytes(s.totalSizeBytes)],
    ["average compression", `${s.averageCompression.toFixed(1)}%`],
    ["latest backup", latest ? `${latest.id} (${latest.databaseName}, ${formatTime(latest.startedAt)}, ${statusName(latest)})` : "none"],
  ]);
  if (s.restoreVerification.length > 0) {
    text += "\nnewest restore-verified backup of each database:\n";
    text += formatTable(
      ["DATABASE", "BACKUP", "RESTORE-VERIFIED", "AGE"],
      s.restoreVerification.map((r) => [
        r.database,
        r.backupId || "-",
        r.backupId ? formatTime(r.restoreVerifiedAt) : "never",
        r.age ? formatDuration(r.age) : "-",
      ]),
    );
  }
  return text;
}

export function renderBackupTable(backups: Backup[]): string {
  return formatTable(
    ["ID", "DATABASE", "TYPE", "STATUS", "STARTED", "SIZE", "ROWS", "LABEL"],
    backups.map((b) => [
      b.id,
      b.databaseName,
      enumName(BackupTypeSchema, b.backupType),
      statusName(b),
      formatTime(b.startedAt),
      b.fileName ? formatBytes(b.fileSize) : "-",
      b.rowCount > 0n || b.tableCount > 0 ? formatCount(b.rowCount) : "-",
      b.label,
    ]),
  );
}

export function renderPage(what: string, total: bigint, page: number, pages: number): string {
  return `page ${page} of ${Math.max(pages, 1)}, ${plural(total, what)} in all\n`;
}

export function renderVerification(id: string, v: VerifyBackupResponse): string {
  const level = enumName(VerificationLevelSchema, v.level).toLowerCase();
  let text = `backup ${id}: ${enumName(BackupStatusSchema, v.status)} (${v.verified ? "verified" : "NOT verified"}, ${level} level, ${formatDuration(v.duration)})\n`;
  if (v.message) text += `${v.message}\n`;
  if (v.checks.length > 0) {
    text += formatTable(
      ["CHECK", "RESULT", "DETAIL"],
      v.checks.map((c) => [c.name, c.passed ? "ok" : "FAILED", c.detail]),
    );
  }
  if (v.tableMismatches.length > 0) {
    text += "\ntables that differ from the backup's record:\n";
    text += formatTable(
      ["TABLE", "EXPECTED ROWS", "FOUND"],
      v.tableMismatches.map((t) => [t.table, formatCount(t.expectedRows), t.missing ? "missing" : formatCount(t.foundRows)]),
    );
  }
  return text;
}

export function renderRestoreResult(id: string, r: RestoreResult): string {
  return formatFields([
    ["restored", `backup ${id} into database "${r.targetDatabase}" in ${formatDuration(r.duration)}`],
    ["contents", `${plural(r.tableCount, "table")}, ${plural(r.rowCount, "row")} (equal to the backup's record)`],
    ["checksum", r.checksumOk ? "ok" : "MISMATCH (restored with --force)"],
    ["safety backup", r.safetyBackupId || "none (nothing was replaced, or --skip-safety-backup)"],
    ["undo", r.undoHint || undefined],
  ]);
}

export function renderCleanup(r: CleanupExpiredBackupsResponse): string {
  let text = r.dryRun
    ? `dry run: would remove ${plural(r.deletedCount, "backup")}, freeing ${formatBytes(r.freedBytes)}; nothing was changed\n`
    : `removed ${plural(r.deletedCount, "backup")}, freed ${formatBytes(r.freedBytes)}\n`;
  const rows = (list: Backup[]) =>
    list.map((b) => [b.id, b.databaseName, statusName(b), formatTime(b.startedAt), formatTime(b.expiresAt), b.fileName ? formatBytes(b.fileSize) : "-"]);
  const headers = ["ID", "DATABASE", "STATUS", "STARTED", "EXPIRED", "SIZE"];
  if (r.removed.length > 0) text += `\n${r.dryRun ? "would remove" : "removed"}:\n${formatTable(headers, rows(r.removed))}`;
  if (r.kept.length > 0) text += `\nexpired but kept by the safety floor (newest verified backups):\n${formatTable(headers, rows(r.kept))}`;
  return text;
}

export function renderJobs(s: GetJobStatusResponse): string {
  const head = `scheduler ${s.schedulerEnabled ? "enabled" : "DISABLED"} on replica ${s.replicaId || "?"}\n`;
  if (s.jobs.length === 0) return `${head}no scheduled jobs\n`;
  return (
    head +
    formatTable(
      ["JOB", "CRON", "TIME ZONE", "ENABLED", "RUNNING", "NEXT RUN", "LAST SLOT", "LAST OUTCOME", "LAST FINISHED", "LAST ERROR"],
      s.jobs.map((j) => [
        j.name,
        j.cron,
        j.timeZone,
        j.enabled ? "yes" : "no",
        j.running ? "yes" : "no",
        formatTime(j.nextRunAt),
        formatTime(j.lastRun?.slot),
        j.lastRun ? enumName(JobRunOutcomeSchema, j.lastRun.outcome) : "-",
        formatTime(j.lastRun?.finishedAt),
        j.lastRun?.error || "",
      ]),
    )
  );
}

export function renderAudit(events: AuditEvent[]): string {
  return formatTable(
    ["TIME", "ACTOR", "ACTION", "OUTCOME", "BACKUP", "CLIENT", "MESSAGE"],
    events.map((e) => [
      formatTime(e.occurredAt),
      e.actor ? (e.actorUsername && e.actorUsername !== e.actor ? `${e.actor} (${e.actorUsername})` : e.actor) : "-",
      e.action,
      e.outcome,
      e.backupId || "-",
      e.clientAddress || "-",
      e.message,
    ]),
  );
}
