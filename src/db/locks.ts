import { createHash } from "node:crypto";
import pg from "pg";
import type { PgTarget } from "../config.js";
import type { Lock, LockManager } from "../domain/ports.js";
import { DomainError } from "../errors.js";
import type { Logger } from "../logger.js";
import { pgConfigOf } from "./client.js";

const NAMESPACE = 0x62616b; // "bak": keeps our keys apart from other users of advisory locks

function keyOf(key: string): number {
  return createHash("sha256").update(key).digest().readInt32BE(0);
}

/**
 * Session advisory locks in the control database, each on its own connection:
 * held as long as the work runs, released by PostgreSQL itself if the holder
 * dies, and shared by every replica that uses the same control database.
 */
export function createAdvisoryLocks(control: PgTarget, pool: pg.Pool, logger: Logger): LockManager {
  async function take(key: string, fn: "pg_try_advisory_lock" | "pg_try_advisory_lock_shared"): Promise<Lock | null> {
    // keepAlive: a dead peer is noticed, so a lost lock does not go unnoticed for long.
    const client = new pg.Client(pgConfigOf(control, { application_name: "backup-service lock", keepAlive: true }));
    const lost = new AbortController();
    let released = false;
    const onLost = (why: string) => {
      if (released || lost.signal.aborted) return;
      logger.error({ key, why }, "advisory lock lost: the work it guarded is stopped");
      lost.abort(
        new DomainError("unavailable", "lost the lock that guards this work: the connection to the control database dropped"),
      );
    };
    client.on("error", (err) => onLost(err.message));
    client.on("end", () => onLost("connection ended"));
    try {
      await client.connect();
    } catch (err) {
      released = true;
      await client.end().catch(() => undefined);
      // A retryable outage, not a bug: callers get UNAVAILABLE rather than INTERNAL.
      throw new DomainError("unavailable", "the control database is unreachable; retry when it is back", { cause: err });
    }
    try {
      const res = await client.query<{ ok: boolean }>(`SELECT ${fn}($1, $2) AS ok`, [NAMESPACE, keyOf(key)]);
      if (!res.rows[0]?.ok) {
        released = true;
        await client.end();
        return null;
      }
    } catch (err) {
      released = true;
      await client.end().catch(() => undefined);
      throw err;
    }
    return {
      lost: lost.signal,
      async release() {
        if (released) return;
        released = true;
        // Ending the session releases the lock; no need to unlock first.
        await client.end().catch(() => undefined);
      },
    };
  }

  return {
    tryAcquire: (key) => take(key, "pg_try_advisory_lock"),
    tryAcquireShared: (key) => take(key, "pg_try_advisory_lock_shared"),
    async isHeld(key) {
      // Two-int4 advisory locks show in pg_locks as classid/objid (as oids) with objsubid 2.
      const res = await pool.query<{ held: boolean }>(
        `SELECT EXISTS (SELECT 1 FROM pg_locks
                         WHERE locktype = 'advisory' AND granted AND objsubid = 2
                           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                           AND classid = $1::oid AND objid = $2::oid) AS held`,
        [String(NAMESPACE >>> 0), String(keyOf(key) >>> 0)],
      );
      return res.rows[0]?.held ?? false;
    },
  };
}
