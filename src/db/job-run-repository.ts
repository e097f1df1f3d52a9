import { and, desc, eq, sql } from "drizzle-orm";
import type { JobRun, JobRunRepository } from "../domain/ports.js";
import type { Db } from "./client.js";
import { jobRuns as t } from "./schema.js";

const toRun = (row: typeof t.$inferSelect): JobRun => row;

export function createJobRunRepository(db: Db): JobRunRepository {
  return {
    async claim(job, slot, replicaId) {
      // The partial unique index on (job, slot) WHERE claimed makes exactly one claim win.
      const [row] = await db
        .insert(t)
        .values({ job, slot, replicaId, claimed: true, outcome: "RUNNING" })
        .onConflictDoNothing({ target: [t.job, t.slot], where: sql`claimed` })
        .returning();
      return row ? toRun(row) : null;
    },

    async findClaim(job, slot) {
      const [row] = await db
        .select()
        .from(t)
        .where(and(eq(t.job, job), eq(t.slot, slot), eq(t.claimed, true)))
        .limit(1);
      return row ? toRun(row) : null;
    },

    async note(job, slot, replicaId, outcome, error) {
      await db.insert(t).values({ job, slot, replicaId, claimed: false, outcome, error, finishedAt: new Date() });
    },

    async finish(id, patch) {
      await db
        .update(t)
        .set({ ...patch, finishedAt: new Date() })
        .where(eq(t.id, id));
    },

    async lastRun(job) {
      const [row] = await db
        .select()
        .from(t)
        .where(and(eq(t.job, job), eq(t.claimed, true)))
        .orderBy(desc(t.slot), desc(t.id))
        .limit(1);
      return row ? toRun(row) : null;
    },

    async interruptStale(job, graceMs, error) {
      const rows = await db
        .update(t)
        .set({ outcome: "INTERRUPTED", error, finishedAt: new Date() })
        .where(
          and(
            eq(t.job, job),
            eq(t.claimed, true),
            eq(t.outcome, "RUNNING"),
            // The database's clock, as started_at's default is: replicas' clocks may differ.
            sql`${t.startedAt} < now() - make_interval(secs => ${graceMs / 1000})`,
          ),
        )
        .returning();
      return rows.map(toRun);
    },

    async listRunning(job) {
      const conds = [eq(t.claimed, true), eq(t.outcome, "RUNNING")];
      if (job !== undefined) conds.push(eq(t.job, job));
      return (await db.select().from(t).where(and(...conds))).map(toRun);
    },
  };
}
