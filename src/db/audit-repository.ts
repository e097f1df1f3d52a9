import { and, count, desc, eq, or, type SQL } from "drizzle-orm";
import type { AuditFilter, AuditRepository } from "../domain/ports.js";
import type { Db } from "./client.js";
import { auditEvents as t } from "./schema.js";

export function createAuditRepository(db: Db): AuditRepository {
  function whereOf(filter: AuditFilter): SQL | undefined {
    const conds: SQL[] = [];
    if (filter.backupId !== undefined) conds.push(eq(t.backupId, filter.backupId));
    if (filter.actor !== undefined) conds.push(or(eq(t.actor, filter.actor), eq(t.actorUsername, filter.actor))!);
    if (filter.action !== undefined) conds.push(eq(t.action, filter.action));
    return conds.length > 0 ? and(...conds) : undefined;
  }

  return {
    async record(event) {
      await db.insert(t).values(event);
    },

    async list(filter, offset, limit) {
      const where = whereOf(filter);
      const [rows, [totals]] = await Promise.all([
        db.select().from(t).where(where).orderBy(desc(t.occurredAt), desc(t.id)).limit(limit).offset(offset),
        db.select({ n: count() }).from(t).where(where),
      ]);
      return { items: rows, total: totals?.n ?? 0 };
    },
  };
}
