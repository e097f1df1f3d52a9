import { and, asc, count, desc, eq, inArray, lte, or, sql, type SQL } from "drizzle-orm";
import type { BackupRecord } from "../domain/backup.js";
import { SUCCESSFUL_STATUSES } from "../domain/backup.js";
import type { BackupFilter, BackupRepository, BackupStats, Page } from "../domain/ports.js";
import { notFound } from "../errors.js";
import type { Db } from "./client.js";
import { backupHistory as t, backupStats as s } from "./schema.js";
import { createSingleFlight } from "./single-flight.js";

/** What was made of the last `max` rows read, by id, each with the row version it was made from. */
function createVersionMemo<T>(max: number) {
  const entries = new Map<string, { version: string; value: T }>();
  return {
    get(id: string, version: string): T | undefined {
      const hit = entries.get(id);
      if (hit?.version !== version) return undefined;
      entries.delete(id);
      entries.set(id, hit);
      return hit.value;
    },
    put(id: string, version: string, value: T): void {
      entries.delete(id);
      entries.set(id, { version, value });
      if (entries.size > max) entries.delete(entries.keys().next().value!);
    },
  };
}

// The table's columns are named after the record's fields, so a row is a record.
const toRecord = (row: typeof t.$inferSelect): BackupRecord => row;

/**
 * @param cacheMs how long pages, totals and statistics may be reused (counts of filtered listings:
 *   five times that; see single-flight.ts);
 *   0 turns the cache off.
 */
export function createBackupRepository(db: Db, cacheMs = 1000): BackupRepository {
  // Totals of filtered listings count rows (tens of ms of database CPU at 100,000 rows):
  // they are recomputed at most every few seconds (own writes still clear them).
  const countMs = cacheMs * 5;
  const summarized = (f: BackupFilter) => !f.includeDeleted && !f.status && !f.backupType;
  // Totals, statistics and pages: under many concurrent callers each is computed once
  // and shared for up to `cacheMs` (another replica's writes show within twice that).
  const cache = createSingleFlight(cacheMs);
  const write = <T>(p: Promise<T>): Promise<T> => p.finally(() => cache.clear());
  // A step of a backup still running: listings show it at their next re-read, started by the
  // next call, instead of every polling caller waiting on fresh queries at once (measured under
  // the latency bench: each write at a backup's start held up the calls of the next 20-60 ms).
  const intermediateWrite = <T>(p: Promise<T>): Promise<T> => p.finally(() => cache.refreshSoon());
  // A write clears every cached page, and each page's next read would map its rows again; a
  // row whose version (xmin: any change to a row makes a new one) is unchanged keeps its
  // record object, and with it the wire form mappers built for it. Otherwise every backup's
  // start and end re-encoded all polled pages at once, a stall for the calls answered meanwhile.
  const seen = createVersionMemo<BackupRecord>(5000);
  const version = sql<string>`${t}.xmin::text`;

  /**
   * A page's ids and row versions first; then whole rows only for those not already
   * held at that version. A page re-read every second with nothing changed costs 50
   * short rows instead of 50 mapped records with their metadata. If a row changed or
   * went between the two reads, the page is read again in one query.
   */
  async function loadPage(where: SQL | undefined, offset: number, limit: number): Promise<BackupRecord[]> {
    const order = [desc(t.startedAt), desc(t.id)];
    const keys = await db.select({ id: t.id, version }).from(t).where(where).orderBy(...order).limit(limit).offset(offset);
    const missing = keys.filter((k) => seen.get(k.id, k.version) === undefined).map((k) => k.id);
    if (missing.length > 0) {
      for (const r of await db.select({ row: t, version }).from(t).where(inArray(t.id, missing))) {
        seen.put(r.row.id, r.version, toRecord(r.row));
      }
    }
    const records: BackupRecord[] = [];
    for (const k of keys) {
      const record = seen.get(k.id, k.version);
      if (record === undefined) {
        const rows = await db.select({ row: t, version }).from(t).where(where).orderBy(...order).limit(limit).offset(offset);
        return rows.map((r) => {
          const made = toRecord(r.row);
          seen.put(r.row.id, r.version, made);
          return made;
        });
      }
      records.push(record);
    }
    return records;
  }
  function whereOf(filter: BackupFilter): SQL | undefined {
    const conds: SQL[] = [];
    if (!filter.includeDeleted) conds.push(eq(t.isDeleted, false));
    if (filter.status) conds.push(eq(t.status, filter.status));
    if (filter.backupType) conds.push(eq(t.backupType, filter.backupType));
    if (filter.database !== undefined) conds.push(eq(t.databaseName, filter.database));
    return conds.length > 0 ? and(...conds) : undefined;
  }

  /** Totals from the trigger-kept backup_stats (migration 0009): a row per database, not a scan. */
  async function computeStats(database: string | undefined): Promise<BackupStats> {
    const base = database === undefined ? eq(t.isDeleted, false) : and(eq(t.isDeleted, false), eq(t.databaseName, database));
    const ok = inArray(t.status, [...SUCCESSFUL_STATUSES]);
    const [[agg], [latest]] = await Promise.all([
      db
        .select({
          total: sql<number>`coalesce(sum(${s.total}), 0)`.mapWith(Number),
          successful: sql<number>`coalesce(sum(${s.successful}), 0)`.mapWith(Number),
          failed: sql<number>`coalesce(sum(${s.failed}), 0)`.mapWith(Number),
          totalSize: sql<number>`coalesce(sum(${s.totalSize}), 0)`.mapWith(Number),
          ratioSum: sql<number>`coalesce(sum(${s.ratioSum}), 0)`.mapWith(Number),
          ratioCount: sql<number>`coalesce(sum(${s.ratioCount}), 0)`.mapWith(Number),
        })
        .from(s)
        .where(database === undefined ? undefined : eq(s.databaseName, database)),
      db.select().from(t).where(and(base, ok)).orderBy(desc(t.startedAt)).limit(1),
    ]);
    return {
      total: agg?.total ?? 0,
      successful: agg?.successful ?? 0,
      failed: agg?.failed ?? 0,
      latest: latest ? toRecord(latest) : null,
      totalSizeBytes: agg?.totalSize ?? 0,
      averageCompression: agg && agg.ratioCount > 0 ? Math.round((agg.ratioSum / agg.ratioCount) * 100) / 100 : null,
    };
  }

  /** How many rows a listing's filter matches: from backup_stats when it can say, else counted. */
  async function countMatching(filter: BackupFilter, where: SQL | undefined): Promise<number> {
    if (summarized(filter)) {
      const [row] = await db
        .select({ n: sql<number>`coalesce(sum(${s.total}), 0)`.mapWith(Number) })
        .from(s)
        .where(filter.database === undefined ? undefined : eq(s.databaseName, filter.database));
      return row?.n ?? 0;
    }
    return (await db.select({ n: count() }).from(t).where(where))[0]?.n ?? 0;
  }

  /**
   * Every database's newest VERIFIED backup proven by a restore. A loose index scan
   * walks the distinct databases (one probe each in idx_backup_history_database_started)
   * and each answer is one probe of idx_backup_history_restore_verified: a DISTINCT over
   * the history cost 300-600 ms a second at 100,000 rows under the latency bench.
   */
  async function computeRestoreVerification(database: string | undefined) {
    const one = database === undefined ? sql`` : sql`AND database_name = ${database}`;
    const res = await db.execute<{ database: string; backup_id: string | null; at: Date | string | null }>(sql`
      WITH RECURSIVE dbs(name) AS (
        (SELECT database_name FROM ${t} WHERE NOT is_deleted ${one} ORDER BY database_name LIMIT 1)
        UNION ALL
        SELECT (SELECT b.database_name FROM ${t} b
                 WHERE NOT b.is_deleted AND b.database_name > dbs.name ${one}
                 ORDER BY b.database_name LIMIT 1)
          FROM dbs WHERE dbs.name IS NOT NULL
      )
      SELECT d.name AS database, v.id AS backup_id, v.restore_verified_at AS at
        FROM dbs d
        LEFT JOIN LATERAL (
          SELECT id, restore_verified_at FROM ${t} b
           WHERE b.database_name = d.name AND b.status = 'VERIFIED' AND NOT b.is_deleted
             AND b.restore_verified_at IS NOT NULL
           ORDER BY b.restore_verified_at DESC NULLS FIRST LIMIT 1) v ON true
       WHERE d.name IS NOT NULL
       ORDER BY 1`);
    return res.rows.map((r) => ({
      database: r.database,
      backupId: r.backup_id,
      at: r.at === null ? null : new Date(r.at),
    }));
  }

  return {
    async insert(record, opts) {
      const [row] = await (opts?.intermediate ? intermediateWrite : write)(
        db.insert(t).values(record).onConflictDoNothing({ target: t.fileName }).returning(),
      );
      return row ? toRecord(row) : null;
    },

    async update(id, patch, opts) {
      const [row] = await (opts?.intermediate ? intermediateWrite : write)(
        db
          .update(t)
          .set({ ...patch, updatedAt: new Date() })
          .where(eq(t.id, id))
          .returning(),
      );
      if (!row) throw notFound(`backup ${id} not found`);
      return toRecord(row);
    },

    async findById(id) {
      const [row] = await db.select().from(t).where(eq(t.id, id)).limit(1);
      return row ? toRecord(row) : null;
    },

    async list(filter, offset, limit): Promise<Page<BackupRecord>> {
      const where = whereOf(filter);
      // Pages are shared like the totals: a dashboard's many callers polling the same pages
      // cost one query per page and second, and the same record objects (mappers reuse their
      // wire form). This process still reads its own writes at once.
      const key = JSON.stringify(filter);
      const [items, total] = await Promise.all([
        cache.get(`page:${key}:${offset}:${limit}`, () => loadPage(where, offset, limit)),
        cache.get(`count:${key}`, () => countMatching(filter, where), summarized(filter) ? cacheMs : countMs),
      ]);
      return { items, total };
    },

    stats(database): Promise<BackupStats> {
      return cache.get(`stats:${database ?? "*"}`, () => computeStats(database));
    },

    async findInProgress(database) {
      const where =
        database === undefined
          ? eq(t.status, "IN_PROGRESS")
          : and(eq(t.status, "IN_PROGRESS"), eq(t.databaseName, database));
      const rows = await db.select().from(t).where(where).orderBy(desc(t.startedAt));
      return rows.map(toRecord);
    },

    async listExpired(now) {
      // Expired backups, and soft-deleted ones whose file has not been removed yet.
      const rows = await db
        .select()
        .from(t)
        .where(
          and(
            lte(t.expiresAt, now),
            or(eq(t.isDeleted, false), sql`NOT jsonb_exists(${t.metadata}, 'fileRemovedAt')`),
          ),
        )
        .orderBy(asc(t.expiresAt));
      return rows.map(toRecord);
    },

    async newestVerifiedIds(n, database) {
      const ranked = db
        .select({
          id: t.id,
          rank: sql<number>`row_number() over (partition by ${t.databaseName} order by ${t.startedAt} desc)`.as("rank"),
        })
        .from(t)
        // Pre-restore safety backups follow retention but do not count towards the floor.
        .where(
          and(
            eq(t.isDeleted, false),
            eq(t.status, "VERIFIED"),
            sql`NOT jsonb_exists(${t.metadata}, 'safetyBackupFor')`,
            database === undefined ? undefined : eq(t.databaseName, database),
          ),
        )
        .as("ranked");
      const rows = await db.select({ id: ranked.id }).from(ranked).where(lte(ranked.rank, n));
      return new Set(rows.map((r) => r.id));
    },

    async newestVerifiedPerDatabase() {
      const rows = await db
        .selectDistinctOn([t.databaseName])
        .from(t)
        .where(
          and(eq(t.isDeleted, false), eq(t.status, "VERIFIED"), sql`NOT jsonb_exists(${t.metadata}, 'safetyBackupFor')`),
        )
        .orderBy(t.databaseName, desc(t.startedAt));
      return rows.map(toRecord);
    },

    restoreVerification(database) {
      return cache.get(`rv:${database ?? "*"}`, () => computeRestoreVerification(database));
    },

    async remove(id) {
      await write(db.delete(t).where(eq(t.id, id)));
    },

    async latestSuccessful(database) {
      const [row] = await db
        .select()
        .from(t)
        .where(and(eq(t.databaseName, database), eq(t.isDeleted, false), inArray(t.status, [...SUCCESSFUL_STATUSES])))
        .orderBy(desc(t.startedAt))
        .limit(1);
      return row ? toRecord(row) : null;
    },
  };
}
