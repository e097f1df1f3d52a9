import { and, eq, inArray, isNull, sql } from "drizzle-orm";
import type { Incident, IncidentRepository } from "../domain/ports.js";
import type { Db } from "./client.js";
import { alertIncidents as t } from "./schema.js";

export function createIncidentRepository(db: Db): IncidentRepository {
  return {
    async open(key, message) {
      // The partial unique index (key WHERE resolved_at IS NULL) keeps one open row per key.
      const [inserted] = await db
        .insert(t)
        .values({ key, message })
        .onConflictDoNothing({ target: t.key, where: sql`${t.resolvedAt} IS NULL` })
        .returning();
      if (inserted) return inserted;
      const [open] = await db
        .update(t)
        .set({ lastSeenAt: sql`now()` })
        .where(and(eq(t.key, key), isNull(t.resolvedAt)))
        .returning();
      // Resolved between the two statements: open it again.
      return open ?? this.open(key, message);
    },

    async markNotified(id, message) {
      await db
        .update(t)
        .set({ notifiedAt: new Date(), message })
        .where(and(eq(t.id, id), isNull(t.notifiedAt)));
    },

    async resolve(key) {
      const [row] = await db
        .update(t)
        .set({ resolvedAt: new Date() })
        .where(and(eq(t.key, key), isNull(t.resolvedAt)))
        .returning();
      return (row as Incident | undefined) ?? null;
    },

    async touch(keys) {
      if (keys.length === 0) return;
      await db
        .update(t)
        .set({ lastSeenAt: sql`now()` })
        .where(and(isNull(t.resolvedAt), inArray(t.key, [...keys])));
    },

    async listOpen() {
      return db.select().from(t).where(isNull(t.resolvedAt)).orderBy(t.openedAt);
    },
  };
}
