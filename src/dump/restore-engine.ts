import { createReadStream } from "node:fs";
import { pipeline } from "node:stream/promises";
import type pg from "pg";
import { childProcessEnv, type PgTarget } from "../config.js";
import type { DatabaseState, LoadOptions, RestoreEngine } from "../domain/ports.js";
import { DomainError, safeReason } from "../errors.js";
import { countRows, createLibpq, listTables, quoteIdent } from "./libpq.js";
import { describeExit, startChild, succeeded } from "./process.js";
import { decompressCommand, type Tools } from "./tools.js";

const READ_CHUNK = 1 << 20;
const SWAP_ATTEMPTS = 5;

function quoteLiteral(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}

/** A libpq connection string naming only a database, safe for any name. */
function dbnameConninfo(name: string): string {
  return `dbname='${name.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}

const SYSTEM_SCHEMAS = `n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'`;

/** pg_restore / psql into databases of the target server, and the database-level moves around them. */
export function createRestoreEngine(opts: { target: PgTarget; tools: Tools }): RestoreEngine {
  const { tools } = opts;
  const libpq = createLibpq(opts.target);

  /** A connection for CREATE/ALTER/DROP DATABASE: never to a database being moved. */
  function admin(...avoid: string[]): Promise<pg.Client> {
    return libpq.connect(avoid.includes("postgres") ? "template1" : "postgres");
  }

  async function withAdmin<T>(avoid: string[], fn: (c: pg.Client) => Promise<T>): Promise<T> {
    const client = await admin(...avoid);
    try {
      return await fn(client);
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  return {
    async inspectDatabase(name, signal): Promise<DatabaseState> {
      const exists = await withAdmin([name], async (c) => {
        const res = await c.query<{ sessions: string }>(
          `SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()) AS sessions
             FROM pg_database WHERE datname = $1`,
          [name],
        );
        return res.rows[0] ? Number(res.rows[0].sessions) : null;
      });
      if (exists === null) return { exists: false, objectCount: 0, sessions: 0 };
      const client = await libpq.connect(name, signal);
      try {
        const res = await client.query<{ n: string }>(
          `SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE ${SYSTEM_SCHEMAS})
                + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE ${SYSTEM_SCHEMAS})
                + (SELECT count(*) FROM pg_namespace n WHERE ${SYSTEM_SCHEMAS} AND n.nspname <> 'public')
                + (SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql') AS n`,
        );
        return { exists: true, objectCount: Number(res.rows[0]!.n), sessions: exists };
      } finally {
        await client.end().catch(() => undefined);
      }
    },

    async createDatabase(name, like) {
      await withAdmin([name], async (c) => {
        let options = "TEMPLATE template0";
        if (like !== null) {
          const res = await c.query<{ d: Record<string, unknown>; owner: string; encoding: string }>(
            `SELECT to_jsonb(d) AS d, pg_get_userbyid(d.datdba) AS owner, pg_encoding_to_char(d.encoding) AS encoding
               FROM pg_database d WHERE datname = $1`,
            [like],
          );
          const row = res.rows[0];
          if (row) {
            options +=
              ` OWNER ${quoteIdent(row.owner)} ENCODING ${quoteLiteral(row.encoding)}` +
              ` LC_COLLATE ${quoteLiteral(String(row.d.datcollate))} LC_CTYPE ${quoteLiteral(String(row.d.datctype))}`;
            // PostgreSQL 15+ records the locale provider; keep ICU databases ICU.
            if (row.d.datlocprovider === "i" && typeof row.d.daticulocale === "string") {
              options += ` LOCALE_PROVIDER icu ICU_LOCALE ${quoteLiteral(row.d.daticulocale)}`;
            }
          }
        }
        await c.query(`CREATE DATABASE ${quoteIdent(name)} ${options}`);
      });
    },

    async load(options: LoadOptions, onBytes, signal) {
      const [dcmd, dargs] = decompressCommand(tools, options.compression);
      const dec = startChild(options.compression, dcmd, dargs, {
        env: childProcessEnv(),
        stdio: ["pipe", "pipe", "pipe"],
        signal,
      });
      const conninfo = dbnameConninfo(options.database);
      const loader =
        options.format === "custom"
          ? startChild("pg_restore", tools.pgRestore, ["--exit-on-error", "--no-password", `--dbname=${conninfo}`], {
              env: libpq.env(options.database),
              stdio: [dec.child.stdout!, "ignore", "pipe"],
              signal,
            })
          : startChild(
              "psql",
              tools.psql,
              ["-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1", `--dbname=${conninfo}`, "-f", "-"],
              { env: libpq.env(options.database), stdio: [dec.child.stdout!, "ignore", "pipe"], signal },
            );
      // Only the loader may hold the pipe's read end, so that the decompressor gets
      // SIGPIPE if the loader stops early.
      dec.child.stdout!.destroy();
      const reading = pipeline(
        createReadStream(options.path, { highWaterMark: READ_CHUNK }),
        async function* (source: AsyncIterable<Buffer>) {
          for await (const chunk of source) {
            onBytes(chunk.length);
            yield chunk;
          }
        },
        dec.child.stdin!,
        { signal },
      ).then(
        () => null,
        (err: unknown) => err as Error,
      );
      // A loader that gives up ends the decompressor too, rather than leaving it blocked on a full pipe.
      void loader.exit.then((e) => {
        if (!succeeded(e)) dec.stop();
      });
      const [decExit, loadExit, readError] = await Promise.all([dec.exit, loader.exit, reading]);
      signal.throwIfAborted();
      if (!succeeded(loadExit)) {
        const also = succeeded(decExit) ? "" : ` (${describeExit(decExit)})`;
        throw new DomainError("dump_failed", `${describeExit(loadExit)}${also}`);
      }
      if (!succeeded(decExit)) throw new DomainError("dump_failed", describeExit(decExit));
      if (readError) {
        throw new DomainError("dump_failed", `reading the backup file failed: ${safeReason(readError)}`, { cause: readError });
      }
    },

    async countRows(database, signal) {
      const client = await libpq.connect(database, signal);
      try {
        return await countRows(client, await listTables(client, []), signal);
      } finally {
        await client.end().catch(() => undefined);
      }
    },

    async swapIn(scratch, target, retired, terminateSessions) {
      await withAdmin([scratch, target, retired], async (c) => {
        for (let attempt = 1; ; attempt++) {
          if (terminateSessions) {
            await c.query(
              "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
              [target],
            );
          }
          try {
            await c.query("BEGIN");
            const exists = await c.query("SELECT 1 FROM pg_database WHERE datname = $1", [target]);
            if (exists.rowCount) await c.query(`ALTER DATABASE ${quoteIdent(target)} RENAME TO ${quoteIdent(retired)}`);
            await c.query(`ALTER DATABASE ${quoteIdent(scratch)} RENAME TO ${quoteIdent(target)}`);
            await c.query("COMMIT");
            return;
          } catch (err) {
            await c.query("ROLLBACK").catch(() => undefined);
            // 55006: someone connected to the target between our check and the rename.
            if ((err as { code?: string }).code !== "55006" || attempt >= SWAP_ATTEMPTS) {
              const inUse = (err as { code?: string }).code === "55006";
              throw new DomainError(
                "failed_precondition",
                inUse
                  ? `database "${target}" is in use and could not be replaced (hint: close its sessions, or set drop_existing to end them)`
                  : `could not swap the restored database in: ${(err as Error).message}`,
              );
            }
            await new Promise((r) => setTimeout(r, 200 * attempt));
          }
        }
      });
    },

    async dropDatabase(name) {
      await withAdmin([name], (c) => c.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`));
    },

    async listDatabases(prefix) {
      return withAdmin([], async (c) => {
        const like = prefix.replace(/[\\%_]/g, (ch) => `\\${ch}`) + "%";
        const res = await c.query<{ datname: string }>("SELECT datname FROM pg_database WHERE datname LIKE $1", [like]);
        return res.rows.map((r) => r.datname);
      });
    },
  };
}
