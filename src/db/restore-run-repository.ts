import { eq, or } from "drizzle-orm";
import type { RestoreRun, RestoreRunRepository } from "../domain/ports.js";
import type { Db } from "./client.js";
import { restoreRuns as t } from "./schema.js";

const toRun = (row: typeof t.$inferSelect): RestoreRun => row;

export function createRestoreRunRepository(db: Db): RestoreRunRepository {
  return {
    async start(run) {
      const [row] = await db.insert(t).values({ ...run, outcome: "RUNNING" }).returning();
      return toRun(row!);
    },
    async update(id, patch) {
      await db.update(t).set(patch).where(eq(t.id, id));
    },
    async listUnsettled() {
      return (await db.select().from(t).where(or(eq(t.outcome, "RUNNING"), eq(t.connectionsBlocked, true)))).map(toRun);
    },
  };
}
