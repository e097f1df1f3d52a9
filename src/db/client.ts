import { existsSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import pgpass from "pgpass";
import { drizzle, type NodePgDatabase } from "drizzle-orm/node-postgres";
import { migrate } from "drizzle-orm/node-postgres/migrator";
import { describeTarget, type PgTarget } from "../config.js";
import type { Logger } from "../logger.js";
import { MIGRATIONS_SCHEMA } from "./schema.js";
import * as schema from "./schema.js";

export type Db = NodePgDatabase<typeof schema>;

/**
 * node-postgres's TLS settings for libpq's sslmode: none over a Unix socket (libpq ignores
 * sslmode there) and for disable (and prefer or allow that could not be settled: see
 * `settleSslMode`); for require, no checks, unless a root certificate is given, when libpq
 * checks the chain as for verify-ca; for verify-ca the chain but not the host name; for
 * verify-full both. sslrootcert, sslcert and sslkey are read as each connection is made.
 */
function sslOf(t: PgTarget): pg.ClientConfig["ssl"] {
  if (t.host.startsWith("/") || t.sslmode === undefined || t.sslmode === "disable" || t.sslmode === "allow" || t.sslmode === "prefer") {
    return false;
  }
  const chain = t.sslmode === "verify-ca" || t.sslmode === "verify-full" || (t.sslmode === "require" && t.sslrootcert !== undefined);
  return {
    rejectUnauthorized: chain,
    ...(chain && t.sslmode !== "verify-full" ? { checkServerIdentity: () => undefined } : {}),
    ...(t.sslrootcert ? { ca: readFileSync(t.sslrootcert) } : {}),
    ...(t.sslcert ? { cert: readFileSync(t.sslcert) } : {}),
    ...(t.sslkey ? { key: readFileSync(t.sslkey) } : {}),
  };
}

/**
 * libpq's prefer (its default when the URL names no sslmode) tries SSL and falls back to none,
 * allow the other way round; node-postgres can do neither. So the server is asked once, as the
 * service starts, and the answer ("require" or "disable") holds for the service's connections and
 * its tools alike. A server that does not answer leaves the mode as it was (the service's
 * connections then go without SSL); a Unix socket has no SSL.
 */
export async function settleSslMode(t: PgTarget, logger?: Logger): Promise<PgTarget> {
  if (t.host.startsWith("/") || (t.sslmode !== undefined && t.sslmode !== "prefer" && t.sslmode !== "allow")) return t;
  const order: ("require" | "disable")[] = t.sslmode === "allow" ? ["disable", "require"] : ["require", "disable"];
  for (const mode of order) {
    const probe = new pg.Client(pgConfigOf({ ...t, sslmode: mode }, { connectionTimeoutMillis: 5_000 }));
    probe.on("error", () => undefined);
    try {
      await probe.connect();
      return { ...t, sslmode: mode };
    } catch (err) {
      // Past the login, on this mode: the database is not there yet (the control database, before
      // ensureDatabase makes it) or the server is full. The mode itself was taken.
      const code = (err as { code?: unknown }).code;
      if (code === "3D000" || code === "53300") return { ...t, sslmode: mode };
      // Only the server's own refusal (no SSL here, or a pg_hba.conf line for the other kind) is
      // a reason to try the other way; a server that cannot be reached answers neither.
      const answered = typeof (err as { severity?: unknown }).severity === "string" || /does not support SSL/.test(String((err as Error).message));
      if (!answered) break;
    } finally {
      await probe.end().catch(() => undefined);
    }
  }
  logger?.warn({ target: describeTarget(t) }, "could not ask the server whether to use SSL; connecting without it (set sslmode in the URL to decide)");
  return t;
}

/** node-postgres settings for a target; the password stays in memory only. */
export function pgConfigOf(t: PgTarget, extra: pg.PoolConfig = {}): pg.PoolConfig {
  const ssl = sslOf(t);
  // Like libpq: no user in the URL means the operating-system user.
  const user = t.user ?? os.userInfo().username;
  return {
    host: t.host,
    port: t.port,
    user,
    // No password in the URL: the password file (~/.pgpass), as libpq reads it for the tools.
    // Asked for here rather than by node-postgres, whose own reading of it is deprecated.
    // (Resolving undefined, no entry, node-postgres takes as no password; its types say string.)
    password:
      t.password ??
      ((() =>
        new Promise<string | undefined>((resolve) =>
          // Over a Unix socket libpq looks the password up as for host "localhost".
          pgpass({ host: t.host.startsWith("/") ? "localhost" : t.host, port: t.port, database: t.database, user }, resolve),
        )) as () => Promise<string>),
    database: t.database,
    ssl,
    connectionTimeoutMillis: 10_000,
    ...extra,
  };
}

export function createPool(t: PgTarget, logger: Logger, extra: pg.PoolConfig = {}): pg.Pool {
  const pool = new pg.Pool(pgConfigOf(t, { max: 10, idleTimeoutMillis: 30_000, ...extra }));
  // Without a listener, an idle connection ended by the server crashes the process.
  pool.on("error", (err) => logger.warn({ err: { message: err.message } }, "idle database connection lost"));
  return pool;
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** Creates the control database when it does not exist and the role may create it. */
export async function ensureDatabase(t: PgTarget, logger: Logger): Promise<void> {
  const probe = new pg.Client(pgConfigOf(t));
  try {
    await probe.connect();
    return;
  } catch (err) {
    if ((err as { code?: string }).code !== "3D000") throw err;
  } finally {
    await probe.end().catch(() => undefined);
  }
  const admin = new pg.Client(pgConfigOf({ ...t, database: "postgres" }));
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${quoteIdent(t.database)}`);
    logger.info({ database: t.database }, "created control database");
  } catch (err) {
    // Another replica won the race.
    const code = (err as { code?: string }).code;
    if (code !== "42P04" && code !== "23505") throw err;
  } finally {
    await admin.end().catch(() => undefined);
  }
}

const MIGRATION_LOCK = [0x6275, 0x1]; // "bu", 1: arbitrary but fixed

/** drizzle/ at the package root, whether we run from src/ (tsx) or from dist/src/ (built). */
function migrationsFolder(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = path.join(dir, "drizzle");
    if (existsSync(path.join(candidate, "meta", "_journal.json"))) return candidate;
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error("drizzle/ migrations not found above the service's code");
    dir = parent;
  }
}

/**
 * Applies drizzle's migrations. drizzle's migrate() takes no lock, so replicas
 * starting together would collide; a session advisory lock serialises them.
 */
export async function migrateControlDatabase(pool: pg.Pool, db: Db): Promise<void> {
  const client = await pool.connect();
  try {
    await client.query("SELECT pg_advisory_lock($1, $2)", MIGRATION_LOCK);
    try {
      await migrate(db, {
        migrationsFolder: migrationsFolder(),
        migrationsSchema: MIGRATIONS_SCHEMA,
        migrationsTable: "__drizzle_migrations",
      });
    } finally {
      await client.query("SELECT pg_advisory_unlock($1, $2)", MIGRATION_LOCK);
    }
  } finally {
    client.release();
  }
}

export function createDb(pool: pg.Pool): Db {
  return drizzle(pool, { schema });
}
