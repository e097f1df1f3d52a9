import { open, stat, statfs, writeFile, type FileHandle } from "node:fs/promises";
import path from "node:path";
import type { Writable } from "node:stream";
import type pg from "pg";
import { childProcessEnv, type PgTarget } from "../config.js";
import type { DatabaseState, LoadOptions, LoadProgress, LoadSummary, RestoreEngine } from "../domain/ports.js";
import { sessionsNotEndable, targetCreatedMeanwhile, targetGone } from "../domain/restore-refusals.js";
import { DomainError, isFileReadError, isPrivilegeFailure, safeReason } from "../errors.js";
import { readToc } from "./archive.js";
import { createCopyLanes } from "./copy-lanes.js";
import { tableKey, type TableRowCounts } from "../domain/backup.js";
import {
  ArchiveFormatError,
  copyTarget,
  CustomArchiveReader,
  UnsupportedArchiveError,
  type ArchiveHead,
  type TocEntry,
} from "./custom-archive.js";
import { countRows, createLibpq, listTables, quoteIdent, refusedDatabase } from "./libpq.js";
import { describeExit, startChild, succeeded, type ExitInfo } from "./process.js";
import { childOutput, type SlabSource } from "./slab-source.js";
import { removeStaleWorkDirs, withWorkDir } from "./work-dir.js";
import { decompressCommand, type Tools } from "./tools.js";

const READ_CHUNK = 1 << 20;
/**
 * Session settings for loading a scratch database: index builds sort in memory
 * (measured: about 7% off a 14 s restore), and commits need not wait for the
 * disk (safe here: the swap's own commit flushes everything before it, and a
 * crash before that discards the scratch database anyway).
 */
const LOAD_OPTIONS = "-c maintenance_work_mem=256MB -c synchronous_commit=off";
/** What a deep verification looks for in the archive's table of contents. */
const CHECKED_KINDS = ["SEQUENCE", "VIEW", "MATERIALIZED VIEW", "FUNCTION", "PROCEDURE", "INDEX"];
const SWAP_ATTEMPTS = 5;
/** The part of a lane load's progress that reading the file stands for; index builds follow it. */
const LANE_DATA_SHARE = 0.85;
/** A table's rows go over every lane once it has sent this much (small tables stay on one). */
const LANE_SPLIT_AFTER = 8 << 20;
const PROGRESS_STEP = 4 << 20;
const SECTION_PRE_DATA = 2;
const SECTION_POST_DATA = 4;

/**
 * What pg_restore sets in its session before loading data (its
 * _doSetFixedOutputState), with the archive's encoding and string syntax, for
 * a session that loads table data itself; null when the archive is not one
 * the lanes load (large objects, compressed data, data not in COPY form, an
 * encoding other than UTF8).
 */
function laneSessionSettings(head: ArchiveHead): string | null {
  if (head.compression !== 0) return null;
  if (head.entries.some((e) => e.desc === "BLOBS")) return null;
  const copyForm = /^COPY [\s\S]+ FROM stdin;\s*$/;
  if (head.entries.some((e) => e.desc === "TABLE DATA" && e.hadDumper && !copyForm.test(e.copyStmt ?? ""))) return null;
  const encoding = head.entries.find((e) => e.desc === "ENCODING")?.defn?.trim() ?? "";
  const strings = head.entries.find((e) => e.desc === "STDSTRINGS")?.defn?.trim() ?? "";
  // UTF8 only: node-postgres sends statements (a COPY naming its table) as UTF-8 whatever the
  // session's client_encoding, and the reader decodes the table of contents as UTF-8; an archive
  // in another encoding (a LATIN1 table named café) is pg_restore's to load, in its own encoding.
  if (encoding !== "SET client_encoding = 'UTF8';") return null;
  if (!/^SET standard_conforming_strings = '(on|off)';$/.test(strings)) return null;
  return [
    "SET statement_timeout = 0",
    "SET lock_timeout = 0",
    "SET idle_in_transaction_session_timeout = 0",
    encoding.slice(0, -1),
    strings.slice(0, -1),
    "SELECT pg_catalog.set_config('search_path', '', false)",
    "SET check_function_bodies = false",
    "SET xmloption = content",
    "SET client_min_messages = warning",
    "SET row_security = off",
    // As LOAD_OPTIONS: the swap's own commit flushes everything before it.
    "SET synchronous_commit = off",
  ].join("; ");
}

function tableName(e: TocEntry): string {
  return e.namespace ? `${e.namespace}.${e.tag}` : String(e.tag);
}

/** What a lane load did: the sessions it used, the milliseconds of each step, each table's committed rows. */
interface LaneLoadResult {
  sessions: number;
  stepsMs: Record<string, number>;
  rowCounts: TableRowCounts;
  /** The table loaded first, with its indexes built while the rest loaded (bigTableFirst), if any. */
  firstTable: string | null;
}

/** One read of the archive: its decompressor and the reader of its output. */
interface ArchivePass {
  reader: CustomArchiveReader;
  /** The reused buffers the decompressor's output is read into; null when read from a pipe. */
  slabs: SlabSource | null;
  signal: AbortSignal;
  /** Ends the decompressor and the reading. */
  stop(): void;
  /** The decompressor's exit and the file reader's error, once both are done. */
  settled(): Promise<[ExitInfo, Error | null]>;
  giveUp(): Promise<void>;
  /** Stops the pass and throws what explains `err`: the decompressor's failure first. */
  fail(err: unknown): Promise<never>;
}

/**
 * Which table to load first, and which of the post-data entries to run as
 * soon as it is in: the table with the most rows at backup time (from the
 * backup's own counts), and the indexes and constraints that belong to it
 * alone (primary keys, unique and exclusion constraints, indexes; not
 * foreign keys, nor anything that depends on another table). Tables before it
 * in the archive are loaded after it, from a second pass over the file (the
 * decompressor is cheap next to the server's work), so that its index builds,
 * which leave much of the machine idle, run beside their rows. This is the
 * order `pg_restore --jobs` chooses too: biggest first. Null when there is
 * nothing to gain (no counts, or no such entry).
 */
function bigTableFirst(head: ArchiveHead, counts: TableRowCounts | undefined): { big: TocEntry; early: TocEntry[] } | null {
  if (!counts) return null;
  const byId = new Map(head.entries.map((e) => [e.dumpId, e]));
  let big: TocEntry | null = null;
  let bigRows = 0;
  for (const e of head.entries) {
    if (e.desc !== "TABLE DATA" || !e.hadDumper || e.namespace === null || e.tag === null) continue;
    const rows = counts[tableKey(e.namespace, e.tag)] ?? 0;
    if (rows > bigRows) {
      big = e;
      bigRows = rows;
    }
  }
  if (!big) return null;
  const table = big.deps.find((d) => byId.get(d)?.desc === "TABLE");
  if (table === undefined) return null;
  const early = head.entries.filter(
    (e) =>
      e.section === SECTION_POST_DATA &&
      (e.desc === "INDEX" || e.desc === "CONSTRAINT") &&
      e.deps.includes(table) &&
      e.deps.every((d) => d === table || (byId.has(d) && byId.get(d)!.section === SECTION_PRE_DATA && byId.get(d)!.desc !== "TABLE")),
  );
  return early.length > 0 ? { big, early } : null;
}

const ending = new WeakMap<pg.Client, Promise<void>>();
/** Ends a session, even one in the middle of a COPY: after 2 s its socket is closed. */
function endClient(c: pg.Client): Promise<void> {
  let p = ending.get(c);
  if (!p) {
    const timer = setTimeout(() => (c as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy(), 2000);
    p = c.end().catch(() => undefined).finally(() => clearTimeout(timer));
    ending.set(c, p);
  }
  return p;
}

function quoteLiteral(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}

/** A libpq connection string naming only a database, safe for any name. */
function dbnameConninfo(name: string): string {
  return `dbname='${name.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}

const SYSTEM_SCHEMAS = `n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'`;

interface SourceDatabase {
  name: string;
  d: Record<string, unknown>;
  owner: string;
  encoding: string;
  tablespace: string;
  comment: string | null;
  acl: { grantee: string | null; privilege: string; grantable: boolean }[] | null;
  settings: { role: string | null; config: string[] }[];
}

async function describeDatabase(c: pg.Client, name: string): Promise<SourceDatabase | null> {
  const res = await c.query<SourceDatabase>(
    `SELECT d.datname AS name, to_jsonb(d) - 'datacl' AS d, pg_get_userbyid(d.datdba) AS owner,
            pg_encoding_to_char(d.encoding) AS encoding, t.spcname AS tablespace,
            shobj_description(d.oid, 'pg_database') AS comment,
            CASE WHEN d.datacl IS NULL THEN NULL ELSE
              (SELECT coalesce(jsonb_agg(jsonb_build_object(
                        'grantee', CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,
                        'privilege', a.privilege_type, 'grantable', a.is_grantable)), '[]'::jsonb)
                 FROM aclexplode(d.datacl) a) END AS acl,
            (SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'role', CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END,
                       'config', s.setconfig)), '[]'::jsonb)
               FROM pg_db_role_setting s WHERE s.setdatabase = d.oid) AS settings
       FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace
      WHERE d.datname = $1`,
    [name],
  );
  return res.rows[0] ?? null;
}

/** CREATE DATABASE options that reproduce `src`'s owner, encoding, locale and tablespace. */
function createOptions(src: SourceDatabase): string {
  const d = src.d;
  let o =
    `TEMPLATE template0 OWNER ${quoteIdent(src.owner)} ENCODING ${quoteLiteral(src.encoding)}` +
    ` LC_COLLATE ${quoteLiteral(String(d.datcollate))} LC_CTYPE ${quoteLiteral(String(d.datctype))}` +
    // pg_default is template0's already; naming it needs CREATE on it, which a role that is not
    // a superuser lacks.
    (src.tablespace === "pg_default" ? "" : ` TABLESPACE ${quoteIdent(src.tablespace)}`) +
    ` CONNECTION LIMIT ${Number(d.datconnlimit ?? -1)}`;
  // PostgreSQL 15 added locale providers; 16 ICU rules; 17 renamed daticulocale to datlocale
  // and added the builtin provider.
  const locale = (d.datlocale ?? d.daticulocale) as string | null | undefined;
  if (d.datlocprovider === "i" && locale) {
    o += ` LOCALE_PROVIDER icu ICU_LOCALE ${quoteLiteral(locale)}`;
    if (typeof d.daticurules === "string") o += ` ICU_RULES ${quoteLiteral(d.daticurules)}`;
  } else if (d.datlocprovider === "b" && locale) {
    o += ` LOCALE_PROVIDER builtin BUILTIN_LOCALE ${quoteLiteral(locale)}`;
  }
  return o;
}

/**
 * Settings whose stored value is a list of items each quoted as needed
 * (GUC_LIST_QUOTE): set from one string, the whole list would become a single
 * item ("app, public" one schema). pg_dump's variable_is_guc_list_quote.
 */
const LIST_QUOTE_SETTINGS = new Set([
  "local_preload_libraries",
  "search_path",
  "session_preload_libraries",
  "shared_preload_libraries",
  "temp_tablespaces",
  "unix_socket_directories",
]);

/**
 * The items of such a stored list, as PostgreSQL's SplitGUCList reads it:
 * comma-separated, whitespace around items dropped, a double-quoted item may
 * hold commas and spaces ("" for a quote), unquoted items kept as they are (not
 * downcased). Null if the value is not such a list (the server stores none such).
 */
function splitGucList(value: string): string[] | null {
  const items: string[] = [];
  // C's isspace, as the server's own reading of it.
  const space = /[ \t\n\v\f\r]/;
  let i = 0;
  const skipSpace = () => {
    while (i < value.length && space.test(value[i]!)) i++;
  };
  skipSpace();
  if (i === value.length) return items;
  for (;;) {
    let item = "";
    if (value[i] === '"') {
      for (i++; ; i++) {
        if (i >= value.length) return null; // mismatched quotes
        if (value[i] === '"') {
          if (value[i + 1] !== '"') break;
          i++;
        }
        item += value[i];
      }
      i++;
    } else {
      const start = i;
      while (i < value.length && value[i] !== "," && !space.test(value[i]!)) i++;
      if (i === start) return null; // an empty unquoted item
      item = value.slice(start, i);
    }
    items.push(item);
    skipSpace();
    if (i === value.length) return items;
    if (value[i] !== ",") return null;
    i++;
    skipSpace();
  }
}

/**
 * The privileges of `src` (null: a database that did not exist, which gets the
 * defaults), onto the scratch database `name`, which was created with CONNECT
 * revoked from PUBLIC (see createDatabase).
 */
async function copyPrivileges(c: pg.Client, src: SourceDatabase | null, name: string): Promise<void> {
  const db = quoteIdent(name);
  if (src === null || src.acl === null) {
    // The default ACL (PUBLIC may connect and create temporary tables), written out.
    await c.query(`GRANT CONNECT ON DATABASE ${db} TO PUBLIC`);
    return;
  }
  // An explicit ACL replaces the defaults: start from none.
  await c.query(`REVOKE ALL ON DATABASE ${db} FROM PUBLIC`);
  await c.query(`REVOKE ALL ON DATABASE ${db} FROM ${quoteIdent(src.owner)}`);
  for (const a of src.acl) {
    const grantee = a.grantee === null ? "PUBLIC" : quoteIdent(a.grantee);
    await c.query(`GRANT ${a.privilege} ON DATABASE ${db} TO ${grantee}${a.grantable ? " WITH GRANT OPTION" : ""}`);
  }
}

/** Comment and per-database settings of `src`, onto the database `name` (privileges: copyPrivileges, at the swap). */
async function copyDatabaseSettings(c: pg.Client, src: SourceDatabase, name: string): Promise<void> {
  const db = quoteIdent(name);
  if (src.comment !== null) await c.query(`COMMENT ON DATABASE ${db} IS ${quoteLiteral(src.comment)}`);
  for (const s of src.settings) {
    for (const item of s.config) {
      const eq = item.indexOf("=");
      const key = item.slice(0, eq);
      const value = item.slice(eq + 1);
      if (!/^[A-Za-z_][A-Za-z0-9_.]*$/.test(key)) continue;
      const scope = s.role === null ? `DATABASE ${db}` : `ROLE ${quoteIdent(s.role)} IN DATABASE ${db}`;
      // A list is set item by item, each its own literal, as pg_dump's makeAlterConfigCommand does
      // (an empty one, or one that does not split, as the one string it is).
      const items = LIST_QUOTE_SETTINGS.has(key.toLowerCase()) ? splitGucList(value) : null;
      const literal = items && items.length > 0 ? items.map(quoteLiteral).join(", ") : quoteLiteral(value);
      await c.query(`ALTER ${scope} SET ${key} TO ${literal}`);
    }
  }
}

function insufficientPrivilege(err: unknown): boolean {
  return (err as { code?: string }).code === "42501";
}

/** What to do about CREATE DATABASE's "permission denied" (`reason`, the server's words). */
function createHint(reason: string, source: SourceDatabase | null): string {
  const who = "the role in TARGET_DATABASE_URL";
  if (/create database/.test(reason)) return `ALTER ROLE ... CREATEDB for ${who}`;
  if (source && /member of role|SET ROLE/.test(reason)) {
    return `the scratch database gets the target's owner, so ${who} must be a member of "${source.owner}" (GRANT "${source.owner}" TO ...), or restore as a superuser`;
  }
  if (source && /tablespace/.test(reason)) {
    return `GRANT CREATE ON TABLESPACE ${quoteIdent(source.tablespace)} to ${who}, or restore as a superuser`;
  }
  return `${who} needs CREATEDB, membership in the target's owner and CREATE on its tablespace`;
}

/**
 * The decompressor failed of its own accord. An exit with an error is the file's bytes (zstd and
 * gzip exit 1 on data they cannot decode): DATA_LOSS, as a checksum mismatch is. Killed (out of
 * memory, say) is not the file's fault.
 */
function decompressorFailure(exit: ExitInfo): DomainError {
  return exit.signal === null
    ? new DomainError("corrupted", `${describeExit(exit)} (the file does not decompress)`)
    : new DomainError("dump_failed", describeExit(exit));
}

/**
 * Reading the backup file failed of itself (the disk, not the file's bytes), rather than because
 * the decompressor it fed stopped or the load was stopped: then that is what is reported. The
 * file's own errors are the file system's calls (open, read); writing into a child that has
 * stopped fails in a write (EPIPE, or ECONNRESET: Node's stdio pipes are socket pairs).
 */
function ownReadFailure(err: Error | null): DomainError | null {
  return err && isFileReadError(err) ? readFailure(err) : null;
}

function readFailure(err: Error): DomainError {
  return new DomainError("dump_failed", `reading the backup file failed: ${safeReason(err)}`, { cause: err });
}

/**
 * The sessions in a database (parameter $1) other than ours, each with its role and whether the
 * service's role may end it, by pg_terminate_backend's own rule: a superuser's session only as a
 * superuser, another role's with that role's privileges or pg_signal_backend's. Processes without
 * a role (autovacuum workers) are not sessions: a rename or DROP DATABASE ends those itself.
 */
const SESSIONS_OF = `SELECT a.pid, r.rolname AS role,
         me.rolsuper OR (NOT r.rolsuper AND (pg_has_role(r.oid, 'USAGE') OR pg_has_role('pg_signal_backend', 'USAGE'))) AS may_end
    FROM pg_stat_activity a
    JOIN pg_roles r ON r.oid = a.usesysid
   CROSS JOIN (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) me
   WHERE a.datname = $1 AND a.pid <> pg_backend_pid()`;

/**
 * Ends the sessions in `name` the service's role may end (but the session `keep`), waiting up to
 * 5 s for each to be gone. Returns the roles of those it may not end (sorted, once each), and how
 * many it told to end are not gone yet (or had left by themselves a moment before).
 */
async function terminate(c: pg.Client, name: string, keep: number | null = null): Promise<{ refused: string[]; lingering: number }> {
  // CASE, so that pg_terminate_backend is not even tried (it would raise an error) where it may not.
  const res = await c.query<{ role: string; may_end: boolean; ended: boolean | null }>(
    `SELECT s.role::text AS role, s.may_end, CASE WHEN s.may_end THEN pg_terminate_backend(s.pid, 5000) END AS ended
       FROM (${SESSIONS_OF}) s WHERE s.pid IS DISTINCT FROM $2::int`,
    [name, keep],
  );
  return {
    refused: [...new Set(res.rows.filter((r) => !r.may_end).map((r) => r.role))].sort(),
    lingering: res.rows.filter((r) => r.may_end && r.ended !== true).length,
  };
}

/**
 * See RestoreEngine.writesTo; `c` is a session in that database. The tables of its schemas and
 * its large objects: not the system catalogs, which autovacuum's ANALYZE writes to and a session
 * that only reads changes with its temporary tables (nor those tables; nor sequences, whose
 * nextval is not counted).
 */
async function countWrites(c: pg.Client): Promise<number | null> {
  const res = await c.query<{ on: boolean; n: string }>(
    `SELECT current_setting('track_counts')::bool AS on,
            (SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_all_tables
              WHERE (schemaname NOT IN ('pg_catalog', 'information_schema') AND schemaname !~ '^pg_(toast|temp_)')
                 OR relid IN ('pg_catalog.pg_largeobject'::regclass, 'pg_catalog.pg_largeobject_metadata'::regclass))::text AS n`,
  );
  const row = res.rows[0];
  return row?.on ? Number(row.n) : null;
}

/** Rows inserted, updated and deleted in database `name` as a whole (its catalogs too); null where not counted. */
async function databaseWrites(c: pg.Client, name: string): Promise<number | null> {
  const res = await c.query<{ on: boolean; n: string | null }>(
    `SELECT current_setting('track_counts')::bool AS on,
            (SELECT tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datname = $1)::text AS n`,
    [name],
  );
  const row = res.rows[0];
  return row?.on && row.n !== null ? Number(row.n) : null;
}

function sessionsLingering(name: string, n: number): DomainError {
  return new DomainError(
    "failed_precondition",
    `database "${name}" has ${n} session(s) that did not end within 5 s of being told to; nothing was changed ` +
      "(hint: try again; a session in an uninterruptible wait ends only once that wait does)",
  );
}

function writtenAfterSafetyBackup(target: string, rows: number): DomainError {
  return new DomainError(
    "failed_precondition",
    // Fewer than before only if someone reset the server's statistics meanwhile: written or not, it cannot be told.
    `database "${target}" was written to${rows > 0 ? ` (${rows} row${rows === 1 ? "" : "s"})` : " (or its statistics reset)"} after its safety backup began, so the ` +
      "safety backup does not hold its last state; nothing was changed (hint: stop its clients and try again; a " +
      "service role that is a superuser keeps other roles' sessions out while the safety backup runs)",
  );
}

async function fileSizeOf(p: string): Promise<number> {
  return (await stat(p)).size;
}

/**
 * Streams a file into a writable (a child's stdin), counting the bytes; resolves with the error,
 * if any: the first of a read's (syscall "open" or "read"), the writable's, or the abort.
 *
 * The file is read into two buffers that take turns: one is read into while the other is being
 * written, and a buffer is read into again only once its write is done. A read stream would give
 * every read a new 1 MiB buffer, some seventy per restore of the benchmark database: external
 * memory that V8 lets pile up before it collects it.
 */
export async function feedFile(file: string, sink: Writable, onBytes: (n: number) => void, signal: AbortSignal): Promise<Error | null> {
  let failure: Error | null = null;
  const onError = (err: Error) => void (failure ??= err);
  // Kept after we are done: a write error the child's stdin reports later must not end the process.
  sink.on("error", onError);
  const onAbort = () => sink.destroy();
  signal.addEventListener("abort", onAbort, { once: true });
  let fh: FileHandle | null = null;
  try {
    signal.throwIfAborted();
    fh = await open(file, "r");
    const buffers = [Buffer.allocUnsafeSlow(READ_CHUNK), Buffer.allocUnsafeSlow(READ_CHUNK)];
    let writing: Promise<void> = Promise.resolve();
    for (let i = 0; ; i ^= 1) {
      const { bytesRead } = await fh.read(buffers[i]!, 0, READ_CHUNK, null);
      signal.throwIfAborted();
      if (bytesRead === 0) break;
      onBytes(bytesRead);
      // The other buffer's write: once it is done, that buffer may be read into.
      await writing;
      const data = buffers[i]!.subarray(0, bytesRead);
      writing = new Promise((resolve, reject) => sink.write(data, (err) => (err ? reject(err) : resolve())));
      writing.catch(() => undefined);
    }
    await writing;
    await new Promise<void>((resolve, reject) => sink.end((err?: Error | null) => (err ? reject(err) : resolve())));
    return failure;
  } catch (err) {
    sink.destroy();
    return failure ?? (signal.aborted ? (signal.reason as Error) : (err as Error));
  } finally {
    signal.removeEventListener("abort", onAbort);
    await fh?.close().catch(() => undefined);
  }
}

/** pg_restore / psql into databases of the target server, and the database-level moves around them. */
export function createRestoreEngine(opts: {
  target: PgTarget;
  tools: Tools;
  /** Sessions a custom archive loads over (laneLoad); 1: one psql stream (streamLoad). */
  jobs: number;
}): RestoreEngine {
  const { tools } = opts;
  const libpq = createLibpq(opts.target);
  // What a killed process left; small, private files, so a failure here only waits for the next start.
  void removeStaleWorkDirs().catch(() => undefined);

  /**
   * A connection for CREATE/ALTER/DROP DATABASE: never to a database being moved. `postgres`
   * first, as the tools do; where the server refuses the role that one (hardened servers revoke
   * CONNECT on it, managed ones may not have it), the database TARGET_DATABASE_URL names, then
   * template1. The first refusal is the one reported.
   */
  async function admin(...avoid: string[]): Promise<pg.Client> {
    const candidates = [...new Set(["postgres", opts.target.database, "template1"])].filter(
      (d) => d !== "" && !avoid.includes(d),
    );
    let first: unknown;
    for (const database of candidates) {
      try {
        return await libpq.connect(database);
      } catch (err) {
        first ??= err;
        if (!refusedDatabase(err)) break;
      }
    }
    throw first;
  }

  async function withAdmin<T>(avoid: string[], fn: (c: pg.Client) => Promise<T>): Promise<T> {
    const client = await admin(...avoid);
    try {
      return await fn(client);
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  /**
   * The archive streamed into psql, no temporary file: file -> Node (counting)
   * -> decompressor -> [pg_restore -f -, for a custom archive] -> psql.
   *
   * A custom archive goes through pg_restore's script output rather than
   * pg_restore's own connection: pg_dump -Z0 stores table data one row per
   * chunk, and pg_restore sends each as a COPY message of its own, while psql
   * sends the same rows in 8 KB messages, which the server parses faster (the
   * server process is what a restore waits for; the benchmark archive loaded
   * in 12.6-12.9 s this way against 13.2-13.3 s, three alternating runs of
   * each). psql stops at the first error (ON_ERROR_STOP), as
   * pg_restore --exit-on-error would.
   */
  async function streamLoad(options: LoadOptions, onBytes: (n: number) => void, signal: AbortSignal): Promise<void> {
    const [dcmd, dargs] = decompressCommand(tools, options.compression);
    const dec = startChild(options.compression, dcmd, dargs, { env: childProcessEnv(), stdio: ["pipe", "pipe", "pipe"], signal });
    const script =
      options.format === "custom"
        ? startChild("pg_restore", tools.pgRestore, ["--file=-"], {
            env: childProcessEnv(),
            stdio: [dec.child.stdout!, "pipe", "pipe"],
            signal,
          })
        : null;
    const psql = startChild(
      "psql",
      tools.psql,
      ["-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1", `--dbname=${dbnameConninfo(options.database)}`, "-f", "-"],
      {
        env: libpq.env(options.database, undefined, LOAD_OPTIONS),
        stdio: [script ? script.child.stdout! : dec.child.stdout!, "ignore", "pipe"],
        signal,
      },
    );
    // Only the next process may hold a pipe's read end, so that the one writing into it gets
    // SIGPIPE if the reader stops early.
    dec.child.stdout!.destroy();
    script?.child.stdout!.destroy();
    const reading = feedFile(options.path, dec.child.stdin!, onBytes, signal);
    // A process that gives up ends the others rather than leave them blocked on a full pipe,
    // and psql must not finish a script pg_restore could not finish writing. Which failure to
    // report: several may end at once (when psql stops, pg_restore's next write fails with
    // SIGPIPE, or ECONNRESET: Node's stdio pipes are socket pairs), so one that could not
    // write, or that we stopped (SIGTERM), is a consequence, reported only if nothing else failed.
    const failures: ExitInfo[] = [];
    for (const p of [dec, script, psql]) {
      void p?.exit.then((e) => {
        if (succeeded(e)) return;
        failures.push(e);
        dec.stop();
        script?.stop();
        psql.stop();
      });
    }
    await Promise.all([dec.exit, script?.exit, psql.exit]);
    const readError = await reading;
    signal.throwIfAborted();
    const consequence = (e: ExitInfo) =>
      e.signal === "SIGPIPE" || e.signal === "SIGTERM" || /could not write|broken pipe|connection reset|write error/i.test(e.stderr);
    const ownRead = ownReadFailure(readError);
    if (ownRead) throw ownRead; // the decompressor's exit on its cut input says nothing of the file
    const cause = failures.find((e) => !consequence(e)) ?? failures[0];
    if (cause) {
      throw cause === (await dec.exit) && !consequence(cause) ? decompressorFailure(cause) : new DomainError("dump_failed", describeExit(cause));
    }
    if (readError) throw readFailure(readError);
  }

  /**
   * A custom archive loaded over `opts.jobs` sessions, streamed, no temporary
   * copy of the data: file -> Node (counting) -> decompressor -> Node, which
   * reads the archive (custom-archive.ts) and sends each table's COPY data to
   * the server itself, a big table's rows split over the sessions
   * (copy-lanes.ts). pg_restore does everything else from the archive's
   * header and table of contents, written to a small temporary file: the
   * schema before the data, sequence values and other data-section entries
   * after it, then indexes, constraints and the rest with `--jobs`, so that
   * index builds run side by side too.
   *
   * Resolves with the sessions used (fewer than `opts.jobs` when the
   * database's connection limit allows no more) and the milliseconds each
   * step took (schema; rows and sequence values; indexes, constraints and the
   * rest), or with null, having changed
   * nothing, for an archive this cannot load (large objects, compressed data,
   * an unknown format version): the caller uses streamLoad.
   */
  async function laneLoad(
    options: LoadOptions,
    onProgress: (p: LoadProgress) => void,
    signal: AbortSignal,
  ): Promise<LaneLoadResult | null> {
    // The table of contents (the schema's DDL) and the decompressor's socket go to a private
    // directory (see work-dir.ts).
    return withWorkDir("restore", (work) => laneLoadIn(work, options, onProgress, signal));
  }

  async function laneLoadIn(
    work: string,
    options: LoadOptions,
    onProgress: (p: LoadProgress) => void,
    signal: AbortSignal,
  ): Promise<LaneLoadResult | null> {
    const fileSize = await fileSizeOf(options.path);
    let read = 0;
    // Progress follows the archive's data as it is loaded when the archive's size is known: how
    // far the file has been read says little, since tables compress very differently and the
    // decompressor reads ahead.
    const byArchive = options.dumpBytes > 0;
    let sent = 0;
    let reported = 0;
    const loaded = (n: number) => {
      sent += n;
      if (!byArchive || sent - reported < PROGRESS_STEP) return;
      reported = sent;
      onProgress({ bytesRead: read, fraction: LANE_DATA_SHARE * Math.min(1, sent / options.dumpBytes) });
    };
    const passes: ArchivePass[] = [];
    const openPass = async (name: string, countFile: boolean): Promise<ArchivePass> => {
      const pass = await openArchivePass(options, path.join(work, name), signal, (n) => {
        if (!countFile) return;
        read += n;
        if (!byArchive) onProgress({ bytesRead: read, fraction: LANE_DATA_SHARE * (fileSize === 0 ? 1 : read / fileSize) });
      });
      passes.push(pass);
      return pass;
    };
    const first = await openPass("out.sock", true);

    let head: ArchiveHead;
    try {
      head = await first.reader.readHead();
    } catch (err) {
      // A damaged archive is reported by the pg_restore path, in pg_restore's words.
      await first.giveUp();
      signal.throwIfAborted();
      if (err instanceof UnsupportedArchiveError || err instanceof ArchiveFormatError) return null;
      throw err;
    }
    const fixed = laneSessionSettings(head);
    if (fixed === null) {
      await first.giveUp();
      return null;
    }
    const tocFile = path.join(work, "toc.dump");
    const clients: pg.Client[] = [];
    const endClients = () => Promise.all(clients.map((c) => endClient(c)));
    const onAbort = () => void endClients();
    signal.addEventListener("abort", onAbort, { once: true });
    // Ends the early index builds (below) if the load fails.
    const earlyStop = new AbortController();
    const stopEarly = () => earlyStop.abort(signal.reason);
    signal.addEventListener("abort", stopEarly, { once: true });
    let early: Promise<unknown> | null = null;
    try {
      await writeFile(tocFile, head.headBytes, { mode: 0o600 });
      // The header must be what pg_restore reads too: as many entries, the ones it lists
      // among ours, or nothing is loaded this way.
      const listed = await pgRestoreList(tocFile, signal);
      const ours = new Set(head.entries.map((e) => e.dumpId));
      if (listed === null || listed.count !== ours.size || !listed.ids.every((id) => ours.has(id))) {
        await first.giveUp();
        return null;
      }
      const restore = (args: string[], s = signal) => runPgRestore(options.database, [...args, tocFile], s);
      const useList = async (name: string, entries: TocEntry[]) => {
        const list = path.join(work, name);
        await writeFile(list, entries.map((e) => `${e.dumpId};\n`).join(""), { mode: 0o600 });
        return `--use-list=${list}`;
      };
      let mark = performance.now();
      const steps: Record<string, number> = {};
      const step = (name: string) => {
        const now = performance.now();
        steps[name] = Math.round(now - mark);
        mark = now;
      };
      await restore(["--section=pre-data"]);
      step("schema");

      for (let i = 0; i < opts.jobs; i++) {
        let c: pg.Client;
        try {
          c = await libpq.connect(options.database, signal);
        } catch (err) {
          // The database's connection limit (copied from the target), which binds a role that
          // is not a superuser: load over the sessions there are.
          if (i > 0 && ((err as { cause?: { code?: string } }).cause?.code === "53300")) break;
          throw err;
        }
        clients.push(c);
        await c.query(fixed);
      }
      const sessions = clients.length;
      const hold = (pass: ArchivePass) => (pass.slabs ? (piece: Buffer) => pass.slabs!.hold(piece) : undefined);
      let laneClients = clients;
      const byId = new Map(head.entries.map((e) => [e.dumpId, e]));
      const pending = new Set(head.entries.filter((e) => e.desc === "TABLE DATA" && e.hadDumper).map((e) => e.dumpId));
      // The rows each table's own COPY committed, as the server reported them: the row count of
      // a table no one else can reach yet. A COPY into another table (a partition's rows
      // loaded through its root) is left for count(*).
      const rowCounts: TableRowCounts = {};
      const loadBlock = async (pass: ArchivePass, entry: TocEntry) => {
        const lanes = createCopyLanes(laneClients, { splitAfter: LANE_SPLIT_AFTER, hold: hold(pass) });
        const feed = (send: (piece: Buffer) => Promise<void>) =>
          pass.reader.readData((piece) => {
            loaded(piece.length);
            return send(piece);
          });
        const perLane = await lanes.table(entry.copyStmt!, feed).catch((err: unknown) => {
          if (err instanceof ArchiveFormatError || signal.aborted) throw err;
          throw new DomainError("dump_failed", `loading the rows of table ${tableName(entry)} failed: ${safeReason(err)}`, { cause: err });
        });
        const into = copyTarget(entry.copyStmt!);
        if (into && entry.namespace !== null && entry.tag !== null && into.schema === entry.namespace && into.name === entry.tag) {
          const key = tableKey(entry.namespace, entry.tag);
          rowCounts[key] = (rowCounts[key] ?? 0) + perLane.reduce((a, b) => a + b, 0);
        }
      };
      const skipBlock = (pass: ArchivePass) => pass.reader.readData(async () => undefined);

      // The biggest table first, and its indexes built while the rest loads (see bigTableFirst).
      const plan = sessions > 1 ? bigTableFirst(head, options.tableRowCounts) : null;
      const deferred = new Set<number>();
      let bigLoaded = false;
      const earlyFailure: { err?: unknown } = {};
      await runPass(first, async (entry) => {
        if (!pending.has(entry.dumpId)) throw new ArchiveFormatError(`a data block for entry ${entry.dumpId}, which has none`);
        if (plan && !bigLoaded && entry !== plan.big) {
          // Before the biggest table in the archive: loaded after it, from a second pass.
          await skipBlock(first);
          deferred.add(entry.dumpId);
          return;
        }
        await loadBlock(first, entry);
        pending.delete(entry.dumpId);
        if (plan && entry === plan.big) {
          bigLoaded = true;
          step("bigRows");
          // One session fewer for the rest of the rows, so that the index build's own session
          // stays within what the rows had (a connection limit may allow no more).
          const freed = clients.pop()!;
          laneClients = clients.slice();
          await endClient(freed);
          early = restore(["--section=post-data", await useList("early", plan.early)], earlyStop.signal).catch(
            (err: unknown) => (earlyFailure.err = err),
          );
        }
      }, byId);
      if (deferred.size > 0) {
        const second = await openPass("out2.sock", false);
        try {
          await second.reader.readHead();
        } catch (err) {
          await second.fail(err);
        }
        await runPass(second, async (entry) => {
          if (!deferred.delete(entry.dumpId)) return skipBlock(second);
          await loadBlock(second, entry);
          pending.delete(entry.dumpId);
          return deferred.size === 0 ? "stop" : undefined;
        }, byId);
      }
      if (pending.size > 0) {
        const missing = head.entries.find((e) => pending.has(e.dumpId))!;
        await first.fail(new ArchiveFormatError(`the archive ends before the data of table ${tableName(missing)}`));
      }
      await endClients();
      clients.length = 0;
      await early;
      if (earlyFailure.err !== undefined) throw earlyFailure.err;

      // Sequence values and anything else of the data section that is not a table's rows:
      // every entry but the tables' rows, of which pg_restore takes the data section's.
      await restore(["--section=data", await useList("data", head.entries.filter((e) => e.desc !== "TABLE DATA"))]);
      // With the biggest table first: the other tables' rows, beside its keys.
      step(bigLoaded ? "restRows" : "rows");
      // The biggest table's own keys and indexes are in already (bigLoaded: its build was started).
      const done = new Set(plan && bigLoaded ? plan.early.map((e) => e.dumpId) : []);
      await restore(["--section=post-data", `--jobs=${sessions}`, await useList("post", head.entries.filter((e) => !done.has(e.dumpId)))]);
      step("indexes");
      onProgress({ bytesRead: read, fraction: 1 });
      return { sessions, stepsMs: steps, rowCounts, firstTable: plan && bigLoaded ? tableName(plan.big) : null };
    } finally {
      signal.removeEventListener("abort", onAbort);
      signal.removeEventListener("abort", stopEarly);
      earlyStop.abort();
      await early;
      await endClients();
      for (const p of passes) p.stop();
    }
  }

  /**
   * Every data block of one pass over the archive, in order, each given to
   * `onBlock` (which must read or skip its data; "stop" ends the pass there).
   * The decompressor's own failure, when it has one, is what is reported.
   */
  async function runPass(
    pass: ArchivePass,
    onBlock: (entry: TocEntry) => Promise<unknown>,
    byId: Map<number, TocEntry>,
  ): Promise<void> {
    let stopped = false;
    try {
      for (let id = await pass.reader.nextBlock(); id !== null; id = await pass.reader.nextBlock()) {
        const entry = byId.get(id);
        if (!entry) throw new ArchiveFormatError(`a data block for entry ${id}, which has none`);
        if ((await onBlock(entry)) === "stop") {
          stopped = true;
          break;
        }
      }
    } catch (err) {
      await pass.fail(err);
    }
    if (stopped) {
      pass.stop();
      await pass.settled();
      return;
    }
    const [decExit, readError] = await pass.settled();
    // Its slabs are not needed while the next pass loads (every COPY it fed has committed).
    pass.slabs?.destroy();
    pass.signal.throwIfAborted();
    const ownRead = ownReadFailure(readError);
    if (ownRead) throw ownRead;
    if (!succeeded(decExit)) throw decompressorFailure(decExit);
    if (readError) throw readFailure(readError);
  }

  /** The archive streamed from the file through its decompressor into a reader. */
  async function openArchivePass(
    options: LoadOptions,
    socketPath: string,
    signal: AbortSignal,
    onFileBytes: (n: number) => void,
  ): Promise<ArchivePass> {
    const [dcmd, dargs] = decompressCommand(tools, options.compression);
    // The decompressor writes into a socket that is read into reused buffers (see SlabSource);
    // where none can be made (a temporary path too long for a socket's name), into a pipe.
    const out = await childOutput(socketPath);
    let dec: ReturnType<typeof startChild>;
    try {
      dec = startChild(options.compression, dcmd, dargs, { env: childProcessEnv(), stdio: ["pipe", out.stdio, "pipe"], signal });
    } catch (err) {
      out.stop();
      throw err;
    }
    const reading = feedFile(options.path, dec.child.stdin!, onFileBytes, signal);
    const reader = new CustomArchiveReader(out.attach(dec.child.stdout));
    // Its output is read by us: unread, the child would wait for it for ever.
    const stop = () => {
      dec.stop();
      out.stop();
    };
    const settled = () => Promise.all([dec.exit, reading]);
    return {
      reader,
      slabs: out.slabs,
      signal,
      stop,
      settled,
      async giveUp() {
        stop();
        await settled();
      },
      async fail(err: unknown): Promise<never> {
        stop();
        const [decExit, readError] = await settled();
        signal.throwIfAborted();
        const ownRead = ownReadFailure(readError);
        if (ownRead) throw ownRead;
        // A file that does not decompress is the cause of whatever the reader met. The
        // decompressor may not have said so yet when the reader gave up (it was stopped,
        // or ended on a pipe no longer read): then a second pass, only on this path, asks it.
        if (!succeeded(decExit) && decExit.signal !== "SIGTERM" && decExit.signal !== "SIGPIPE") {
          throw decompressorFailure(decExit);
        }
        if (err instanceof ArchiveFormatError) {
          const undecompressable = await decompressFailure(options, signal);
          // The file's own bytes are bad (DATA_LOSS), as with a checksum that does not match.
          if (undecompressable) throw new DomainError("corrupted", undecompressable);
          throw new DomainError("corrupted", `the archive is damaged: ${err.message}`);
        }
        throw err;
      },
    };
  }

  /** Why the file does not decompress (the decompressor's exit and words), or null if it does. */
  async function decompressFailure(options: LoadOptions, signal: AbortSignal): Promise<string | null> {
    const [cmd, args] = decompressCommand(tools, options.compression, options.path);
    const exit = await startChild(options.compression, cmd, args, { env: childProcessEnv(), stdio: ["ignore", "ignore", "pipe"], signal }).exit;
    signal.throwIfAborted();
    return succeeded(exit) ? null : `${describeExit(exit)} (the file does not decompress)`;
  }

  /** What `pg_restore --list` makes of an archive: its entry count and the ids it lists; null if it cannot read it. */
  async function pgRestoreList(file: string, signal: AbortSignal): Promise<{ count: number; ids: number[] } | null> {
    const child = startChild("pg_restore", tools.pgRestore, ["--list", file], {
      env: childProcessEnv(),
      stdio: ["ignore", "pipe", "pipe"],
      signal,
    });
    let out = "";
    child.child.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
    const exit = await child.exit;
    signal.throwIfAborted();
    const count = /^;\s+TOC Entries: (\d+)$/m.exec(out);
    if (!succeeded(exit) || !count) return null;
    return { count: Number(count[1]), ids: [...out.matchAll(/^(\d+);/gm)].map((m) => Number(m[1])) };
  }

  /** pg_restore connected to the database being loaded; stops at the first error. */
  async function runPgRestore(database: string, args: string[], signal: AbortSignal): Promise<void> {
    const child = startChild(
      "pg_restore",
      tools.pgRestore,
      ["--exit-on-error", "--no-password", `--dbname=${dbnameConninfo(database)}`, ...args],
      { env: libpq.env(database, undefined, LOAD_OPTIONS), stdio: ["ignore", "ignore", "pipe"], signal },
    );
    const exit = await child.exit;
    signal.throwIfAborted();
    if (!succeeded(exit)) throw new DomainError("dump_failed", describeExit(exit));
  }

  /**
   * Lets sessions into `name` again: puts back the connection limit a restore set to 0 (a limit
   * that is not 0 is left alone), and allows connections the swap had shut out.
   */
  async function putBackLimit(name: string, originalLimit: number): Promise<void> {
    await withAdmin([name], async (c) => {
      const res = await c.query<{ limit: number; allow: boolean }>(
        "SELECT datconnlimit AS limit, datallowconn AS allow FROM pg_database WHERE datname = $1",
        [name],
      );
      if (res.rows[0]?.limit === 0) {
        await c.query(`ALTER DATABASE ${quoteIdent(name)} CONNECTION LIMIT ${Number(originalLimit)}`);
      }
      if (res.rows[0]?.allow === false) await c.query(`ALTER DATABASE ${quoteIdent(name)} ALLOW_CONNECTIONS true`);
    });
  }

  /** The load itself: over the COPY sessions where it can, else pg_restore's script through psql. */
  async function loadInto(options: LoadOptions, onProgress: (p: LoadProgress) => void, signal: AbortSignal): Promise<LoadSummary> {
    if (options.format === "custom" && opts.jobs > 1) {
      const lanes = await laneLoad(options, onProgress, signal);
      if (lanes) {
        return {
          how:
            `over ${lanes.sessions} session${lanes.sessions === 1 ? "" : "s"}` +
            (lanes.firstTable ? `, ${lanes.firstTable} first` : ""),
          stepsMs: lanes.stepsMs,
          rowCounts: lanes.rowCounts,
        };
      }
    }
    const started = performance.now();
    let read = 0;
    const fileSize = await fileSizeOf(options.path);
    await streamLoad(options, (n) => {
      read += n;
      onProgress({ bytesRead: read, fraction: fileSize === 0 ? 1 : read / fileSize });
    }, signal);
    return { how: "through psql", stepsMs: { load: Math.round(performance.now() - started) } };
  }

  /** Whether a swap committed: the database named `target` is the scratch database (`scratchOid`); null if that cannot be told. */
  async function swapped(target: string, scratchOid: string): Promise<boolean | null> {
    return withAdmin([target], async (c) => {
      const res = await c.query<{ oid: string }>("SELECT oid::text AS oid FROM pg_database WHERE datname = $1", [target]);
      return res.rows[0]?.oid === scratchOid;
    }).catch(() => null);
  }

  return {
    async inspectDatabase(name, signal): Promise<DatabaseState> {
      const found = await withAdmin([name], async (c) => {
        // USAGE, not MEMBER: renaming it takes its owner's privileges, which a NOINHERIT member lacks.
        const res = await c.query<{ sessions: string; unendable: string[]; owner: string; may_replace: boolean }>(
          `SELECT (SELECT count(*) FROM (${SESSIONS_OF}) s) AS sessions,
                  ARRAY(SELECT DISTINCT s.role::text FROM (${SESSIONS_OF}) s WHERE NOT s.may_end ORDER BY 1) AS unendable,
                  pg_get_userbyid(datdba) AS owner, pg_has_role(current_user, datdba, 'USAGE') AS may_replace
             FROM pg_database WHERE datname = $1`,
          [name],
        );
        return res.rows[0] ?? null;
      });
      if (found === null) {
        return { exists: false, objectCount: 0, sessions: 0, unendableRoles: [], holdsServiceRecords: false, owner: null, mayReplace: true };
      }
      const sessions = Number(found.sessions);
      const client = await libpq.connect(name, signal);
      try {
        // Anything a user could have created; oid 16384 is where user objects start.
        const res = await client.query<{ n: string; service: boolean }>(
          `SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE ${SYSTEM_SCHEMAS})
                + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE ${SYSTEM_SCHEMAS})
                + (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE ${SYSTEM_SCHEMAS})
                + (SELECT count(*) FROM pg_namespace n WHERE ${SYSTEM_SCHEMAS} AND n.nspname <> 'public')
                + (SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql')
                + (SELECT count(*) FROM pg_largeobject_metadata)
                + (SELECT count(*) FROM pg_collation WHERE oid >= 16384)
                + (SELECT count(*) FROM pg_operator WHERE oid >= 16384)
                + (SELECT count(*) FROM pg_ts_config WHERE oid >= 16384)
                + (SELECT count(*) FROM pg_publication)
                + (SELECT count(*) FROM pg_event_trigger)
                + (SELECT count(*) FROM pg_default_acl) AS n,
                  to_regclass('backup_service.backup_history') IS NOT NULL AS service`,
        );
        return {
          exists: true,
          objectCount: Number(res.rows[0]!.n),
          sessions,
          unendableRoles: found.unendable,
          holdsServiceRecords: res.rows[0]!.service,
          owner: found.owner,
          mayReplace: found.may_replace,
        };
      } finally {
        await client.end().catch(() => undefined);
      }
    },

    async createDatabase(name, like, ownerOf) {
      await withAdmin(ownerOf === undefined ? [name] : [name, ownerOf], async (c) => {
        const source = like === null ? null : await describeDatabase(c, like);
        let options = source ? createOptions(source) : "TEMPLATE template0";
        if (!source && ownerOf !== undefined) {
          const res = await c.query<{ owner: string }>(
            `SELECT pg_get_userbyid(datdba) AS owner FROM pg_database
              WHERE datname = $1 AND pg_has_role(current_user, datdba, 'USAGE')`,
            [ownerOf],
          );
          if (res.rows[0]) options += ` OWNER ${quoteIdent(res.rows[0].owner)}`;
        }
        try {
          await c.query(`CREATE DATABASE ${quoteIdent(name)} ${options}`);
        } catch (err) {
          if (!insufficientPrivilege(err)) throw err;
          throw new DomainError(
            "failed_precondition",
            `could not create the scratch database: ${safeReason(err)}; nothing was changed (hint: ${createHint(safeReason(err), source)})`,
            { cause: err },
          );
        }
        // Until the swap, no one but the owner (and superusers) may connect: nothing else may write
        // into what is being loaded, whose row counts the swap trusts. The target's privileges are
        // given at the swap (copyPrivileges).
        await c.query(`REVOKE CONNECT ON DATABASE ${quoteIdent(name)} FROM PUBLIC`);
        if (!source) return;
        try {
          await copyDatabaseSettings(c, source, name);
        } catch (err) {
          if (!insufficientPrivilege(err)) throw err;
          const reason = safeReason(err);
          throw new DomainError(
            "failed_precondition",
            `could not copy the settings of "${source.name}" onto the scratch database: ${reason}; nothing was changed (hint: ` +
              (/set parameter/.test(reason)
                ? "a setting only a superuser may set needs GRANT SET ON PARAMETER to the role in TARGET_DATABASE_URL"
                : /alter superusers/.test(reason)
                  ? "a superuser role's settings in the database only a superuser may copy, CREATEROLE or not"
                  : "the role in TARGET_DATABASE_URL needs CREATEROLE to copy other roles' settings in the database") +
              ", or restore as a superuser)",
            { cause: err },
          );
        }
      });
    },

    async load(options: LoadOptions, onProgress, signal) {
      try {
        return await loadInto(options, onProgress, signal);
      } catch (err) {
        // The archive asked for something the role may not do (an owner it may not act as, an
        // extension only a superuser creates): not the file's fault, and not ours.
        if (err instanceof DomainError && err.kind === "dump_failed" && (isPrivilegeFailure(err.message) || isPrivilegeFailure(err))) {
          throw new DomainError(
            "failed_precondition",
            `the role in TARGET_DATABASE_URL may not restore this archive: ${err.message}; nothing was changed (hint: restore ` +
              "as a superuser, or as a role with the privileges of every owner in the archive; extensions that are not " +
              "trusted need a superuser)",
            { cause: err },
          );
        }
        throw err;
      }
    },

    async countRows(database, signal, known = {}) {
      const client = await libpq.connect(database, signal);
      try {
        const tables = await listTables(client, []);
        const counts = await countRows(client, tables.filter((t) => !Object.hasOwn(known, tableKey(t.schema, t.name))), signal);
        for (const t of tables) {
          const key = tableKey(t.schema, t.name);
          if (Object.hasOwn(known, key)) counts[key] = known[key]!;
        }
        return counts;
      } finally {
        await client.end().catch(() => undefined);
      }
    },

    async holdSessions(name, intent) {
      return withAdmin([name], async (c) => {
        const res = await c.query<{ limit: number; superuser: boolean }>(
          `SELECT d.datconnlimit AS limit, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser
             FROM pg_database d WHERE d.datname = $1`,
          [name],
        );
        const row = res.rows[0];
        if (!row) throw targetGone(name);
        // Superusers pass a connection limit of 0, so our own pg_dump still gets in; a role that
        // is not one cannot keep others out, and only ends the sessions there are.
        const limited = row.superuser;
        if (limited) {
          // Recorded first: should the service die once the limit is 0, recovery must know to put
          // the original back.
          await intent(row.limit);
          try {
            await c.query(`ALTER DATABASE ${quoteIdent(name)} CONNECTION LIMIT 0`);
            // Any left still (a superuser's that will not end) are the swap's to deal with.
            await terminate(c, name);
          } catch (err) {
            // The caller gets no release: the limit (if the ALTER went through) is put back here.
            await putBackLimit(name, row.limit).catch(() => undefined);
            throw err;
          }
        } else {
          const { refused } = await terminate(c, name);
          // Still there at the swap, they would fail its rename: better said now, before a safety backup.
          if (refused.length > 0) throw sessionsNotEndable(name, refused);
        }
        return {
          originalLimit: row.limit,
          // Also after a swap that failed once it had shut every session out.
          release: () => putBackLimit(name, row.limit),
        };
      });
    },

    releaseSessions: putBackLimit,

    async writesTo(name) {
      const c = await libpq.connect(name);
      try {
        return await countWrites(c);
      } finally {
        await c.end().catch(() => undefined);
      }
    },

    async swapIn(scratch, target, retired, targetExists, signal, unwrittenSince) {
      await withAdmin([scratch, target, retired], async (c) => {
        // Nobody may connect to either database from here until the swap commits, not even a
        // superuser: a connection limit keeps out only roles that are not, and only when the
        // service's role is one, and a pool that reconnects the moment its session is ended would
        // be back before the rename, which then fails (55006). The restored database allows
        // connections again in the swap's own transaction; a swap that fails puts it back here (and
        // the caller's release, or recovery after a crash, if this cannot).
        const fenced = targetExists ? [target, scratch] : [scratch];
        const scratchOid = (await c.query<{ oid: string }>("SELECT oid::text AS oid FROM pg_database WHERE datname = $1", [scratch]))
          .rows[0]?.oid;
        if (scratchOid === undefined) throw new DomainError("failed_precondition", `the scratch database "${scratch}" is gone; nothing was changed`);
        // The target's writes are counted from a session in it, opened while it still lets one in
        // and ended before the rename (which waits for it to be gone). A swap that does not commit
        // lets sessions into both names again; one whose outcome is not known too, since the
        // database by the target's name is to let them in either way.
        let probe: { client: pg.Client; pid: number } | null = null;
        if (unwrittenSince !== undefined && targetExists) {
          const client = await libpq.connect(target).catch((err: unknown) => {
            // Already in words a person can act on (a database that is gone: NOT_FOUND).
            if (err instanceof DomainError) throw err;
            throw new DomainError("failed_precondition", `could not connect to "${target}" before the swap: ${safeReason(err)}; nothing was changed`, {
              cause: err,
            });
          });
          try {
            probe = { client, pid: (await client.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0]!.pid };
          } catch (err) {
            await client.end().catch(() => undefined);
            throw new DomainError("failed_precondition", `could not look at "${target}" before the swap: ${safeReason(err)}; nothing was changed`, {
              cause: err,
            });
          }
        }
        const endProbe = async () => {
          const p = probe;
          probe = null;
          await p?.client.end().catch(() => undefined);
        };
        let swappedIn = false;
        try {
          for (const name of fenced) {
            await c.query(`ALTER DATABASE ${quoteIdent(name)} ALLOW_CONNECTIONS false`).catch((err: unknown) => {
              if (name === target && (err as { code?: string }).code === "3D000") throw targetGone(target);
              throw new DomainError(
                "failed_precondition",
                `could not keep sessions out of "${name}" for the swap: ${safeReason(err)}; nothing was changed`,
                { cause: err },
              );
            });
          }
          await swapAttempts(c, {
            scratchOid,
            probe: () => probe,
            endProbe,
            committed: () => {
              swappedIn = true;
            },
          });
        } finally {
          await endProbe();
          if (!swappedIn) {
            for (const name of fenced) {
              await c.query(`ALTER DATABASE ${quoteIdent(name)} ALLOW_CONNECTIONS true`).catch(() => undefined);
            }
          }
        }
      });

      async function swapAttempts(
        c: pg.Client,
        how: {
          scratchOid: string;
          probe: () => { client: pg.Client; pid: number } | null;
          endProbe: () => Promise<void>;
          committed: () => void;
        },
      ): Promise<void> {
        const { committed } = how;
        let dbWrites: number | null = null;
        for (let attempt = 1; ; attempt++) {
          // The scratch database's too: only its owner and superusers may connect to it, but a
          // superuser's session there (a monitoring agent's) would fail its rename the same way.
          const ended = [
            [target, await terminate(c, target, how.probe()?.pid ?? null)],
            [scratch, await terminate(c, scratch)],
          ] as const;
          const stuck = ended.find(([, r]) => r.refused.length > 0);
          const lingering = ended.find(([, r]) => r.lingering > 0);
          if (stuck || lingering) {
            // The rename would wait five seconds for them and fail (55006); they may still leave by
            // themselves. And one not gone yet has not reported what it wrote.
            if (attempt >= SWAP_ATTEMPTS) {
              throw stuck ? sessionsNotEndable(stuck[0], stuck[1].refused) : sessionsLingering(lingering![0], lingering![1].lingering);
            }
            if (signal.aborted) throw signal.reason;
            await new Promise((r) => setTimeout(r, 200 * attempt));
            continue;
          }
          // Every session that could have written is gone, and reported its counts in going.
          const probe = how.probe();
          if (probe) {
            const now = await countWrites(probe.client);
            await how.endProbe();
            if (now !== null && now !== unwrittenSince) throw writtenAfterSafetyBackup(target, now - unwrittenSince!);
            // A session that was logging in as the target was shut can still be found by the rename
            // (55006) and write before the next attempt ends it; the probe is gone by then (the target
            // takes no new session), so the next attempts compare the server's counts for the whole
            // database, catalogs included: an ANALYZE meanwhile refuses too, which errs the safe way.
            dbWrites = await databaseWrites(c, target);
          } else if (dbWrites !== null) {
            const now = await databaseWrites(c, target);
            if (now !== null && now !== dbWrites) throw writtenAfterSafetyBackup(target, now - dbWrites);
          }
          let committing = false;
          try {
            await c.query("BEGIN");
            const existing = await describeDatabase(c, target);
            // Dropped by someone since it was inspected: the restore was into that database, and
            // creating it again under its name is not what was asked.
            if (targetExists && !existing) throw targetGone(target);
            // And the other way: created since, it is someone's database, and the restore was to a new one.
            if (!targetExists && existing) throw targetCreatedMeanwhile(target);
            // The target's privileges (as they are now) only in the transaction that gives the
            // scratch database its name: no one it lets in could connect while the backup loaded.
            await copyPrivileges(c, existing, scratch);
            if (existing) await c.query(`ALTER DATABASE ${quoteIdent(target)} RENAME TO ${quoteIdent(retired)}`);
            await c.query(`ALTER DATABASE ${quoteIdent(scratch)} RENAME TO ${quoteIdent(target)}`);
            await c.query(`ALTER DATABASE ${quoteIdent(target)} ALLOW_CONNECTIONS true`);
            // The last moment a cancel or a deadline can still leave the target as it was.
            if (signal.aborted) {
              await c.query("ROLLBACK");
              signal.throwIfAborted();
            }
            committing = true;
            await c.query("COMMIT");
            committed();
            return;
          } catch (err) {
            await c.query("ROLLBACK").catch(() => undefined);
            // A COMMIT whose answer was lost (the session dropped) may have gone through: then the
            // target is replaced, and saying "nothing was changed" would be false.
            if (committing) {
              const done = await swapped(target, how.scratchOid);
              if (done === true) {
                committed();
                return;
              }
              if (done === null) {
                // Either way the database by that name is to let sessions in (see the finally above).
                throw new DomainError(
                  "unavailable",
                  `the swap's COMMIT got no answer (${safeReason(err)}), and whether "${target}" was replaced cannot be told now; ` +
                    `check whether it holds the restored backup (its retired predecessor, if any, is "${retired}")`,
                  { cause: err },
                );
              }
            }
            if (signal.aborted) throw signal.reason;
            if (err instanceof DomainError) throw err;
            // 55006: a session connected between the termination and the rename.
            const inUse = (err as { code?: string }).code === "55006";
            if (!inUse || attempt >= SWAP_ATTEMPTS) {
              throw new DomainError(
                "failed_precondition",
                inUse
                  ? `database "${target}" is in use and could not be replaced; nothing was changed (hint: stop its clients and try again)`
                  : `could not swap the restored database in: ${safeReason(err)}; nothing was changed`,
                { cause: err },
              );
            }
            await new Promise((r) => setTimeout(r, 200 * attempt));
          }
        }
      }
    },

    async dropDatabase(name) {
      await withAdmin([name], (c) => c.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`));
    },

    async serverFreeBytes() {
      // Only a server on this machine has a data directory we can look at.
      if (!["127.0.0.1", "localhost", "::1"].includes(opts.target.host) && !opts.target.host.startsWith("/")) return null;
      try {
        const dir = await withAdmin([], async (c) => (await c.query<{ d: string }>("SHOW data_directory")).rows[0]!.d);
        const s = await statfs(dir);
        return s.bavail * s.bsize;
      } catch {
        return null; // not allowed to see it, or not readable by this process
      }
    },

    async archiveObjects(options, signal) {
      if (options.format !== "custom") return null;
      const toc = await readToc(tools, options.path, options.compression, signal);
      if (!toc.ok) throw new DomainError("corrupted", `pg_restore cannot read the archive's table of contents: ${toc.detail}`);
      return toc.entries.filter((e) => CHECKED_KINDS.includes(e.type)).map((e) => `${e.type} ${e.rest}`);
    },

    async missingObjects(database, objects) {
      const client = await libpq.connect(database);
      try {
        // The same "<TYPE> <schema> <name> <owner>" strings pg_restore --list prints, from the catalog.
        const res = await client.query<{ o: string }>(
          `SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'INDEX' END
                  || ' ' || n.nspname || ' ' || c.relname || ' ' || pg_get_userbyid(c.relowner) AS o
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('S', 'v', 'm', 'i', 'I')
           UNION ALL
           SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END
                  || ' ' || n.nspname || ' ' || p.proname || '(' || oidvectortypes(p.proargtypes) || ') '
                  || pg_get_userbyid(p.proowner)
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE p.prokind IN ('f', 'p')`,
        );
        const present = new Set(res.rows.map((r) => r.o));
        return objects.filter((o) => !present.has(o));
      } finally {
        await client.end().catch(() => undefined);
      }
    },

    async runSanityQueries(database, queries, signal) {
      const client = await libpq.connect(database, signal);
      try {
        // Sanity queries look; they never change the scratch copy, nor run for ever, nor fill the
        // service's memory: each is one statement (the extended protocol refuses more, so no
        // `SET ...; DELETE ...` gets past the read-only transaction) behind a cursor, of which
        // only the first row is read.
        await client.query("SET statement_timeout = '5min'");
        const out: { query: string; passed: boolean; detail: string }[] = [];
        for (const [i, query] of queries.entries()) {
          signal?.throwIfAborted();
          try {
            await client.query("BEGIN READ ONLY");
            // A named statement: node-postgres sends it by the extended protocol (one statement).
            await client.query({ name: `sanity-${i}`, text: `DECLARE sanity NO SCROLL CURSOR FOR ${query}` });
            const res = await client.query({ text: "FETCH 1 FROM sanity", rowMode: "array" });
            const value: unknown = res.rows[0]?.[0];
            out.push({
              query,
              passed: value === true,
              detail: value === true ? "returned true" : `returned ${res.rows.length === 0 ? "no row" : JSON.stringify(value)}`,
            });
          } catch (err) {
            signal?.throwIfAborted();
            out.push({ query, passed: false, detail: `failed: ${safeReason(err)}` });
          } finally {
            await client.query("ROLLBACK").catch(() => undefined);
          }
        }
        return out;
      } finally {
        await client.end().catch(() => undefined);
      }
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
