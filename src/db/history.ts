import { and, isNotNull, lt, ne, notInArray, sql } from "drizzle-orm";
import type { HistoryPruner } from "../domain/ports.js";
import type { Db } from "./client.js";
import { alertIncidents, auditEvents, jobRuns, restoreRuns } from "./schema.js";

/**
 * Removes the service's own history older than a cutoff: finished scheduled runs (each job's
 * latest claimed run stays, for its status), resolved alert incidents, finished restore runs
 * and audit events. What is still going on (RUNNING runs, open incidents, a restore that still
 * holds a target's sessions off) is never removed, however old. Backup records are retention's
 * (CleanupExpiredBackups), not this.
 */
export function createHistoryPruner(db: Db): HistoryPruner {
  return {
    async prune(before) {
      const latestClaimed = db
        .selectDistinctOn([jobRuns.job], { id: jobRuns.id })
        .from(jobRuns)
        .where(sql`${jobRuns.claimed}`)
        .orderBy(jobRuns.job, sql`${jobRuns.slot} DESC`, sql`${jobRuns.id} DESC`);
      const runs = await db
        .delete(jobRuns)
        .where(
          and(
            ne(jobRuns.outcome, "RUNNING"),
            isNotNull(jobRuns.finishedAt),
            lt(jobRuns.finishedAt, before),
            notInArray(jobRuns.id, latestClaimed),
          ),
        );
      const incidents = await db
        .delete(alertIncidents)
        .where(and(isNotNull(alertIncidents.resolvedAt), lt(alertIncidents.resolvedAt, before)));
      const restores = await db
        .delete(restoreRuns)
        .where(
          and(
            ne(restoreRuns.outcome, "RUNNING"),
            sql`NOT ${restoreRuns.connectionsBlocked}`,
            isNotNull(restoreRuns.finishedAt),
            lt(restoreRuns.finishedAt, before),
          ),
        );
      const audit = await db.delete(auditEvents).where(lt(auditEvents.occurredAt, before));
      return {
        jobRuns: runs.rowCount ?? 0,
        alertIncidents: incidents.rowCount ?? 0,
        restoreRuns: restores.rowCount ?? 0,
        auditEvents: audit.rowCount ?? 0,
      };
    },
  };
}
