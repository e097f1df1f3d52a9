import { sql } from "drizzle-orm";
import {
  bigint,
  boolean,
  doublePrecision,
  index,
  integer,
  uniqueIndex,
  jsonb,
  pgSchema,
  text,
  timestamp,
  uuid,
  varchar,
} from "drizzle-orm/pg-core";

/**
 * Every table of the service lives in its own schema of the control database,
 * so that even when someone points the target at the same database, its dumps
 * can leave the service's records out (`--exclude-schema`).
 */
export const SERVICE_SCHEMA = "backup_service";
/** Where drizzle keeps its record of applied migrations. */
export const MIGRATIONS_SCHEMA = "backup_service_migrations";
export const serviceSchema = pgSchema(SERVICE_SCHEMA);

export const backupTypeEnum = serviceSchema.enum("backup_type", ["FULL", "INCREMENTAL", "MANUAL"]);
export const backupStatusEnum = serviceSchema.enum("backup_status", [
  "IN_PROGRESS",
  "COMPLETED",
  "FAILED",
  "VERIFIED",
  "CORRUPTED",
]);

const ts = (name: string) => timestamp(name, { withTimezone: true, mode: "date" });

export const backupHistory = serviceSchema.table(
  "backup_history",
  {
    // The reference design's columns.
    id: uuid("id").primaryKey().defaultRandom(),
    backupType: backupTypeEnum("backup_type").notNull(),
    fileName: varchar("file_name", { length: 255 }).notNull(),
    fileSize: bigint("file_size", { mode: "number" }),
    status: backupStatusEnum("status").notNull(),
    startedAt: ts("started_at").notNull().defaultNow(),
    completedAt: ts("completed_at"),
    durationMs: bigint("duration_ms", { mode: "number" }),
    databaseSize: bigint("database_size", { mode: "number" }),
    tableCount: integer("table_count"),
    rowCount: bigint("row_count", { mode: "number" }),
    compressionRatio: doublePrecision("compression_ratio"),
    checksum: varchar("checksum", { length: 64 }),
    verifiedAt: ts("verified_at"),
    isEncrypted: boolean("is_encrypted").notNull().default(false),
    triggeredBy: text("triggered_by"),
    triggeredByUsername: text("triggered_by_username"),
    errorMessage: text("error_message"),
    metadata: jsonb("metadata").$type<Record<string, unknown>>().notNull().default({}),
    retentionDays: integer("retention_days").notNull(),
    expiresAt: ts("expires_at").notNull(),
    isDeleted: boolean("is_deleted").notNull().default(false),
    deletedAt: ts("deleted_at"),
    createdAt: ts("created_at").notNull().defaultNow(),
    updatedAt: ts("updated_at").notNull().defaultNow(),
    // This service's additions.
    databaseName: text("database_name").notNull(),
    dumpSize: bigint("dump_size", { mode: "number" }),
    archiveFormat: varchar("archive_format", { length: 16 }).$type<"custom" | "plain">().notNull(),
    compression: varchar("compression", { length: 16 }).$type<"zstd" | "gzip">().notNull(),
    serverVersion: text("server_version"),
    pgDumpVersion: text("pg_dump_version"),
    label: text("label"),
    tableRowCounts: jsonb("table_row_counts").$type<Record<string, number>>(),
    restoreVerifiedAt: ts("restore_verified_at"),
  },
  (t) => [
    index("idx_backup_history_status").on(t.status),
    index("idx_backup_history_backup_type").on(t.backupType),
    index("idx_backup_history_started_at").on(t.startedAt.desc().nullsFirst()),
    index("idx_backup_history_expires_at").on(t.expiresAt),
    index("idx_backup_history_is_deleted").on(t.isDeleted),
    index("idx_backup_history_triggered_by").on(t.triggeredBy),
    // DESC indexes are NULLS FIRST, as ORDER BY ... DESC is: otherwise PostgreSQL cannot use them.
    // Listings page newest first with the id as tie-break: these serve that order from an
    // index instead of sorting the whole history on every call.
    index("idx_backup_history_database_started").on(
      t.databaseName,
      t.startedAt.desc().nullsFirst(),
      t.id.desc().nullsFirst(),
    ),
    index("idx_backup_history_started_id").on(t.startedAt.desc().nullsFirst(), t.id.desc().nullsFirst()),
    // Each metrics scrape reads every database's newest VERIFIED and newest restore-verified
    // backup: with these, one index probe per database, however long the history.
    index("idx_backup_history_verified_completed")
      .on(t.databaseName, t.completedAt.desc().nullsFirst())
      .where(sql`${t.status} = 'VERIFIED' AND NOT ${t.isDeleted}`),
    index("idx_backup_history_restore_verified")
      .on(t.databaseName, t.restoreVerifiedAt.desc().nullsFirst())
      .where(sql`${t.status} = 'VERIFIED' AND NOT ${t.isDeleted} AND ${t.restoreVerifiedAt} IS NOT NULL`),
    // One file, one record: two backups whose names would collide cannot both claim it.
    uniqueIndex("uq_backup_history_file_name").on(t.fileName),
  ],
);

export const auditEvents = serviceSchema.table(
  "audit_events",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedAlwaysAsIdentity(),
    occurredAt: ts("occurred_at").notNull().default(sql`now()`),
    actor: text("actor"),
    actorUsername: text("actor_username"),
    action: text("action").notNull(),
    // Text, not a foreign key: denied calls may name ids that do not exist.
    backupId: text("backup_id"),
    outcome: text("outcome").notNull(),
    clientAddress: text("client_address"),
    message: text("message"),
  },
  (t) => [
    index("idx_audit_events_occurred_at").on(t.occurredAt.desc().nullsFirst()),
    index("idx_audit_events_backup_id").on(t.backupId),
    index("idx_audit_events_actor").on(t.actor),
    index("idx_audit_events_action").on(t.action),
  ],
);

export const jobRuns = serviceSchema.table(
  "job_runs",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedAlwaysAsIdentity(),
    job: text("job").notNull(),
    // The scheduled time this firing stands for: (job, slot) identifies it across replicas.
    slot: ts("slot").notNull(),
    replicaId: text("replica_id").notNull(),
    // True for the one row that owns the slot; other replicas' rows only note that it was taken.
    claimed: boolean("claimed").notNull(),
    startedAt: ts("started_at").notNull().defaultNow(),
    finishedAt: ts("finished_at"),
    outcome: varchar("outcome", { length: 16 })
      .$type<"RUNNING" | "SUCCEEDED" | "FAILED" | "SKIPPED" | "INTERRUPTED" | "TAKEN_ELSEWHERE">()
      .notNull(),
    backupId: text("backup_id"),
    error: text("error"),
    details: jsonb("details").$type<Record<string, unknown>>(),
  },
  (t) => [
    // PostgreSQL arbitrates between replicas: only one claimed row per (job, slot).
    uniqueIndex("uq_job_runs_claimed_slot").on(t.job, t.slot).where(sql`${t.claimed}`),
    index("idx_job_runs_job_slot").on(t.job, t.slot.desc().nullsFirst()),
  ],
);

export const restoreRuns = serviceSchema.table(
  "restore_runs",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    backupId: text("backup_id").notNull(),
    targetDatabase: text("target_database").notNull(),
    replicaId: text("replica_id").notNull(),
    actor: text("actor"),
    startedAt: ts("started_at").notNull().defaultNow(),
    finishedAt: ts("finished_at"),
    outcome: varchar("outcome", { length: 16 }).$type<"RUNNING" | "SUCCEEDED" | "FAILED" | "INTERRUPTED">().notNull(),
    safetyBackupId: text("safety_backup_id"),
    // True while the restore keeps new sessions out of the target: a crash must not leave it so.
    connectionsBlocked: boolean("connections_blocked").notNull().default(false),
    // The target's connection limit before the restore held its sessions off, to put back.
    originalConnectionLimit: integer("original_connection_limit"),
    error: text("error"),
  },
  (t) => [index("idx_restore_runs_outcome").on(t.outcome)],
);

/**
 * Conditions the alert checks watch (a database without a recent verified
 * backup, a filling disk). One open row per condition, shared by the
 * replicas: its alert goes out once (again at the next check only if no
 * channel took it), not at every check, and its resolution once too.
 */
export const alertIncidents = serviceSchema.table(
  "alert_incidents",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedAlwaysAsIdentity(),
    key: text("key").notNull(),
    // When a check first saw the condition.
    openedAt: ts("opened_at").notNull().defaultNow(),
    // When its alert went out (null: not yet due, e.g. a database not yet backed up within the age limit).
    notifiedAt: ts("notified_at"),
    resolvedAt: ts("resolved_at"),
    // When a live replica that watches it last said so: an incident no replica looks at any more
    // (its database left BACKUP_DATABASES, the disk was renamed) is closed once this is a day old.
    lastSeenAt: ts("last_seen_at").notNull().defaultNow(),
    message: text("message").notNull(),
  },
  (t) => [uniqueIndex("uq_alert_incidents_open_key").on(t.key).where(sql`${t.resolvedAt} IS NULL`)],
);

/**
 * Running totals of backup_history's rows that are not deleted, per database,
 * kept by a trigger (migration 0009) in the same transaction as every change
 * to backup_history: GetStats and listing totals read a row per database
 * instead of scanning the whole history (tens of ms of database CPU at
 * 100,000 rows, paid again after every write).
 */
export const backupStats = serviceSchema.table("backup_stats", {
  databaseName: text("database_name").primaryKey(),
  total: bigint("total", { mode: "number" }).notNull().default(0),
  // COMPLETED and VERIFIED
  successful: bigint("successful", { mode: "number" }).notNull().default(0),
  // FAILED and CORRUPTED
  failed: bigint("failed", { mode: "number" }).notNull().default(0),
  // file_size of the successful ones
  totalSize: bigint("total_size", { mode: "number" }).notNull().default(0),
  // compression_ratio of the successful ones that have one
  ratioSum: doublePrecision("ratio_sum").notNull().default(0),
  ratioCount: bigint("ratio_count", { mode: "number" }).notNull().default(0),
});
