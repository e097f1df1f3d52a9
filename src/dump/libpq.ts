import pg from "pg";
import { childProcessEnv, describeTarget, type PgTarget } from "../config.js";
import { pgConfigOf } from "../db/client.js";
import { tableKey, type TableRowCounts } from "../domain/backup.js";
import { DomainError } from "../errors.js";

export const APP_NAME = "backup-service";

export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

export interface TableName {
  schema: string;
  name: string;
}

/** Turns a libpq/node-postgres connection failure into something a person can act on. */
export function connectionFailure(err: unknown, where: string, database: string): DomainError {
  const e = err as { code?: string; message?: string };
  const msg = (e.message ?? String(err)).replace(/\s+/g, " ").trim();
  switch (e.code) {
    case "3D000":
      return new DomainError("not_found", `database "${database}" does not exist on ${where}`, { cause: err });
    case "28P01":
    case "28000":
      return new DomainError(
        "failed_precondition",
        `cannot log in to ${where}: ${msg} (hint: check the user and password in TARGET_DATABASE_URL)`,
        { cause: err },
      );
    case "42501":
      return new DomainError("failed_precondition", `permission denied on ${where}: ${msg}`, { cause: err });
    case "53300":
      return new DomainError("unavailable", `${where}/${database} takes no more sessions: ${msg}`, { cause: err });
    default:
      // Any other refusal in the server's own words (a setting that fails at log-in, say), unless it
      // is one that passes: the server starting up or shutting down, out of resources.
      if (typeof (e as { severity?: unknown }).severity === "string" && !/^(08|53|57)/.test(e.code ?? "")) {
        return new DomainError("failed_precondition", `${where} refused a session in database "${database}": ${msg}`, {
          cause: err,
        });
      }
      return new DomainError(
        "unavailable",
        `cannot reach the target database at ${where}: ${msg} (hint: check TARGET_DATABASE_URL and that PostgreSQL is running)`,
        { cause: err },
      );
  }
}

/**
 * Whether a connection failure was the server refusing this database to this role (no CONNECT
 * privilege, no pg_hba.conf line for it, the database gone, a per-database setting that fails at
 * log-in), so another database may still take it; not a wrong password, which would fail the same
 * everywhere, and not a server that could not be reached.
 */
export function refusedDatabase(err: unknown): boolean {
  const cause = (err as { cause?: { severity?: unknown; code?: unknown } } | null)?.cause;
  return typeof cause?.severity === "string" && cause.code !== "28P01";
}

/** Connections and child-process environments for one PostgreSQL server. */
export function createLibpq(target: PgTarget) {
  const where = describeTarget({ ...target, database: "" }).replace(/\/$/, "");
  return {
    where,

    /** libpq's environment for a child process: the password never goes on a command line. */
    env(database: string, appName = APP_NAME, options?: string): NodeJS.ProcessEnv {
      const env = childProcessEnv();
      env.PGHOST = target.host;
      env.PGPORT = String(target.port);
      if (target.user) env.PGUSER = target.user;
      if (target.password) env.PGPASSWORD = target.password;
      if (target.sslmode) env.PGSSLMODE = target.sslmode;
      if (target.sslrootcert) env.PGSSLROOTCERT = target.sslrootcert;
      if (target.sslcert) env.PGSSLCERT = target.sslcert;
      if (target.sslkey) env.PGSSLKEY = target.sslkey;
      env.PGDATABASE = database;
      env.PGCONNECT_TIMEOUT = "10";
      env.PGAPPNAME = appName;
      if (options) env.PGOPTIONS = options;
      return env;
    },

    /**
     * A connection that is ended when `signal` aborts, for as long as it lives;
     * failures become domain errors.
     */
    async connect(database: string, signal?: AbortSignal, appName = APP_NAME): Promise<pg.Client> {
      signal?.throwIfAborted();
      const client = new pg.Client(pgConfigOf({ ...target, database }, { application_name: appName }));
      client.on("error", () => undefined); // reported through the failing query instead
      // Not only while connecting: a query already running (a count waiting on a lock) must end on
      // a cancel, a deadline or shutdown too, or the caller's clean-up waits for it. (node-postgres
      // closes the socket of a client ended mid-query, so the query fails at once.)
      const onAbort = () => void client.end().catch(() => undefined);
      signal?.addEventListener("abort", onAbort, { once: true });
      client.once("end", () => signal?.removeEventListener("abort", onAbort));
      try {
        // node-postgres never settles connect() on a client ended while it connects (its 'end'
        // handler skips the callback once end() was called): the abort rejects it here instead,
        // or a cancel that lands then would leave the caller, and its clean-up, waiting for ever.
        await new Promise<void>((resolve, reject) => {
          const stop = () => reject(signal!.reason);
          signal?.addEventListener("abort", stop, { once: true });
          client.connect().then(() => resolve(), reject).finally(() => signal?.removeEventListener("abort", stop));
        });
      } catch (err) {
        signal?.removeEventListener("abort", onAbort);
        await client.end().catch(() => undefined);
        signal?.throwIfAborted();
        throw connectionFailure(err, where, database);
      }
      return client;
    },
  };
}

/**
 * The tables pg_dump writes data for: ordinary tables and partitions outside
 * the system schemas, not owned by an extension, not temporary, not in an
 * excluded schema.
 */
export async function listTables(client: pg.Client, excludeSchemas: string[]): Promise<TableName[]> {
  const res = await client.query<TableName>(
    `SELECT n.nspname AS schema, c.relname AS name
       FROM pg_catalog.pg_class c
       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind = 'r'
        AND c.relpersistence <> 't'
        AND n.nspname <> ALL ($1::text[])
        AND n.nspname NOT IN ('pg_catalog', 'information_schema')
        AND n.nspname NOT LIKE 'pg\\_toast%'
        AND n.nspname NOT LIKE 'pg\\_temp\\_%'
        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                         WHERE d.classid = 'pg_catalog.pg_class'::regclass
                           AND d.objid = c.oid AND d.deptype = 'e')
      ORDER BY 1, 2`,
    [excludeSchemas],
  );
  return res.rows;
}

/** Exact row counts (`count(*)`), keyed by `tableKey`. */
export async function countRows(client: pg.Client, tables: TableName[], signal?: AbortSignal): Promise<TableRowCounts> {
  const counts: TableRowCounts = {};
  for (const t of tables) {
    signal?.throwIfAborted();
    const res = await client.query<{ n: string }>(
      `SELECT count(*) AS n FROM ONLY ${quoteIdent(t.schema)}.${quoteIdent(t.name)}`,
    );
    counts[tableKey(t.schema, t.name)] = Number(res.rows[0]!.n);
  }
  return counts;
}
