/** Entities and rules of the backup history, free of any adapter. */

export const BACKUP_TYPES = ["FULL", "INCREMENTAL", "MANUAL"] as const;
export type BackupType = (typeof BACKUP_TYPES)[number];

export const BACKUP_STATUSES = ["IN_PROGRESS", "COMPLETED", "FAILED", "VERIFIED", "CORRUPTED"] as const;
export type BackupStatus = (typeof BACKUP_STATUSES)[number];

export type ArchiveFormat = "custom" | "plain";
export type CompressionKind = "zstd" | "gzip";

/** Exact row counts per table (keyed by `tableKey`) in the dump's snapshot. */
export type TableRowCounts = Record<string, number>;

const PLAIN_IDENT = /^[a-z_][a-z0-9_$]*$/;
const quotePart = (s: string) => (PLAIN_IDENT.test(s) ? s : `"${s.replace(/"/g, '""')}"`);

/**
 * `schema.table` as PostgreSQL would print it: a part is double-quoted unless
 * it is a plain lowercase identifier, so `"my.schema".t` stays unambiguous.
 */
export function tableKey(schema: string, name: string): string {
  return `${quotePart(schema)}.${quotePart(name)}`;
}

/** The inverse of `tableKey`. */
export function parseTableKey(key: string): { schema: string; name: string } {
  const parts: string[] = [];
  let i = 0;
  while (i <= key.length) {
    if (key[i] === '"') {
      let j = i + 1;
      let part = "";
      for (;;) {
        if (j >= key.length) throw new Error(`malformed table key ${key}`);
        if (key[j] === '"') {
          if (key[j + 1] === '"') {
            part += '"';
            j += 2;
            continue;
          }
          break;
        }
        part += key[j++];
      }
      parts.push(part);
      i = j + 2; // past the closing quote and the dot
    } else {
      const dot = parts.length === 0 ? key.indexOf(".", i) : key.length;
      const end = dot === -1 ? key.length : dot;
      parts.push(key.slice(i, end));
      i = end + 1;
    }
    if (parts.length === 2) break;
  }
  if (parts.length !== 2) throw new Error(`malformed table key ${key}`);
  return { schema: parts[0]!, name: parts[1]! };
}

/** One entry of the backup history. */
export interface BackupRecord {
  id: string;
  backupType: BackupType;
  fileName: string;
  fileSize: number | null;
  status: BackupStatus;
  startedAt: Date;
  completedAt: Date | null;
  durationMs: number | null;
  databaseSize: number | null;
  tableCount: number | null;
  rowCount: number | null;
  compressionRatio: number | null;
  checksum: string | null;
  verifiedAt: Date | null;
  isEncrypted: boolean;
  triggeredBy: string | null;
  triggeredByUsername: string | null;
  errorMessage: string | null;
  metadata: Record<string, unknown>;
  retentionDays: number;
  expiresAt: Date;
  isDeleted: boolean;
  deletedAt: Date | null;
  createdAt: Date;
  updatedAt: Date;
  databaseName: string;
  dumpSize: number | null;
  archiveFormat: ArchiveFormat;
  compression: CompressionKind;
  serverVersion: string | null;
  pgDumpVersion: string | null;
  label: string | null;
  tableRowCounts: TableRowCounts | null;
  /** When a deep verification last restored this backup and found it whole. */
  restoreVerifiedAt: Date | null;
}

export type NewBackupRecord = Pick<
  BackupRecord,
  | "id"
  | "backupType"
  | "fileName"
  | "status"
  | "startedAt"
  | "triggeredBy"
  | "triggeredByUsername"
  | "retentionDays"
  | "expiresAt"
  | "databaseName"
  | "archiveFormat"
  | "compression"
  | "label"
  | "metadata"
>;

export type BackupPatch = Partial<Omit<BackupRecord, "id" | "createdAt">>;

/** Who asked for something: a token's subject, or the scheduler. */
export interface Actor {
  sub: string;
  username: string | null;
}

export const SUCCESSFUL_STATUSES: readonly BackupStatus[] = ["COMPLETED", "VERIFIED"];
export const FAILED_STATUSES: readonly BackupStatus[] = ["FAILED", "CORRUPTED"];

export const MIN_RETENTION_DAYS = 1;
export const MAX_RETENTION_DAYS = 3650;
export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 500;
export const MAX_LABEL_LENGTH = 200;

const DAY_MS = 24 * 60 * 60 * 1000;

export function expiryOf(startedAt: Date, retentionDays: number): Date {
  return new Date(startedAt.getTime() + retentionDays * DAY_MS);
}

/** File extension for a format and compression: `.dump.zst`, `.sql.gz`, ... */
export function extensionOf(format: ArchiveFormat, compression: CompressionKind): string {
  return `${format === "custom" ? "dump" : "sql"}.${compression === "zstd" ? "zst" : "gz"}`;
}

/**
 * `<database>_backup_<UTC timestamp>.<ext>`. The database name is reduced to
 * safe characters so that no input can steer the path.
 */
export function backupFileName(
  database: string,
  at: Date,
  format: ArchiveFormat,
  compression: CompressionKind,
  attempt = 1,
): string {
  const safe = database.replace(/[^A-Za-z0-9_-]/g, "_").slice(0, 63) || "db";
  const stamp = at.toISOString().replace(/[-:]/g, "").replace(/\.(\d{3})Z$/, "$1Z");
  // Different databases can share a safe name ("a.b", "a_b"): a later attempt gets a suffix.
  const suffix = attempt > 1 ? `-${attempt}` : "";
  return `${safe}_backup_${stamp}${suffix}.${extensionOf(format, compression)}`;
}

/** (1 - file/dump) * 100, to 2 decimals; null when either size is unknown. */
export function compressionRatioOf(fileSize: number | null, dumpSize: number | null): number | null {
  if (fileSize === null || dumpSize === null || dumpSize <= 0) return null;
  return Math.round((1 - fileSize / dumpSize) * 10_000) / 100;
}

export function pageCount(total: number, pageSize: number): number {
  return Math.max(1, Math.ceil(total / pageSize));
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
export function isUuid(s: string): boolean {
  return UUID_RE.test(s);
}

/** The lock of one database (its backups and restores), across replicas: `server` as `host:port`. */
export function databaseLockKey(server: string, database: string): string {
  return `backup:${server}/${database}`;
}

/**
 * The lock on a backup's file: readers (restore, download, verification)
 * share it; removing the file needs it alone.
 */
export function fileLockKey(id: string): string {
  return `file:${id}`;
}
