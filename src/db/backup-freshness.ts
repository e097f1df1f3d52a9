import { sql } from "drizzle-orm";
import type { Db } from "./client.js";
import { backupHistory as t } from "./schema.js";

/** How recent a database's proof of backup is. */
export interface BackupFreshness {
  database: string;
  /** completed_at of its newest non-deleted VERIFIED backup. */
  lastSuccessAt: Date;
  /** restore_verified_at of its newest non-deleted VERIFIED backup proven by a restore, if any. */
  lastRestoreVerifiedAt: Date | null;
}

/**
 * For every database with a non-deleted VERIFIED backup: when the newest one
 * completed and when one was last proven by a restore. Read from the control
 * database, so the answer survives restarts and covers every replica.
 *
 * Run at every metrics scrape, so it must stay cheap however long the
 * history: a loose index scan walks the distinct databases in the partial
 * index idx_backup_history_verified_completed, and each max() is one probe
 * of that index or of idx_backup_history_restore_verified (a GROUP BY would
 * read every verified row, about 10 ms per 100,000).
 */
export function createBackupFreshnessQuery(db: Db): () => Promise<BackupFreshness[]> {
  return async () => {
    const res = await db.execute<{ database: string; last_success: Date | string; last_restore_verified: Date | string | null }>(sql`
      WITH RECURSIVE dbs(name) AS (
        (SELECT database_name FROM ${t}
          WHERE status = 'VERIFIED' AND NOT is_deleted
          ORDER BY database_name LIMIT 1)
        UNION ALL
        SELECT (SELECT b.database_name FROM ${t} b
                 WHERE b.status = 'VERIFIED' AND NOT b.is_deleted AND b.database_name > dbs.name
                 ORDER BY b.database_name LIMIT 1)
          FROM dbs WHERE dbs.name IS NOT NULL
      )
      SELECT d.name AS database,
             (SELECT max(b.completed_at) FROM ${t} b
               WHERE b.database_name = d.name AND b.status = 'VERIFIED' AND NOT b.is_deleted) AS last_success,
             (SELECT max(b.restore_verified_at) FROM ${t} b
               WHERE b.database_name = d.name AND b.status = 'VERIFIED' AND NOT b.is_deleted
                 AND b.restore_verified_at IS NOT NULL) AS last_restore_verified
        FROM dbs d
       WHERE d.name IS NOT NULL`);
    return res.rows
      .filter((r) => r.last_success !== null)
      .map((r) => ({
        database: r.database,
        lastSuccessAt: new Date(r.last_success),
        lastRestoreVerifiedAt: r.last_restore_verified === null ? null : new Date(r.last_restore_verified),
      }));
  };
}
