import { createHash } from "node:crypto";
import { open, rm } from "node:fs/promises";
import path from "node:path";
import { setImmediate } from "node:timers/promises";
import type { Readable, Writable } from "node:stream";
import { childProcessEnv, type PgTarget } from "../config.js";
import { parseTableKey, type CompressionKind, type TableRowCounts } from "../domain/backup.js";
import type {
  CheckOutcome,
  DumpEngine,
  DumpOptions,
  DumpResult,
  InspectOptions,
  InspectResult,
  TargetInfo,
} from "../domain/ports.js";
import { DomainError, isPrivilegeFailure, safeReason } from "../errors.js";
import { createStopper } from "../domain/stopper.js";
import { readToc } from "./archive.js";
import { connectionFailure, countRows, createLibpq, listTables } from "./libpq.js";
import { BULK_NICE, describeExit, startChild, succeeded, type ExitInfo } from "./process.js";
import { childOutput, type ChildOutput } from "./slab-source.js";
import { decompressCommand, type Tools } from "./tools.js";
import { removeStaleWorkDirs, withWorkDirIfAny } from "./work-dir.js";

export interface DumpEngineOptions {
  target: PgTarget;
  tools: Tools;
  compressionLevel: number;
  compressionThreads: number;
  /**
   * The control database, when it lives on the target server, and the
   * service's schemas in it: a dump of that database leaves them out.
   */
  control: { database: string; schemas: string[] } | null;
}

const PLAIN_TRAILER = "-- PostgreSQL database dump complete";

/** Runs pg_dump, the compressors and pg_restore as child processes. */
export function createDumpEngine(opts: DumpEngineOptions): DumpEngine {
  const { target, tools } = opts;
  const libpq = createLibpq(target);
  const { where } = libpq;
  const connect = libpq.connect;
  // What a killed process left; small, private directories, so a failure here only waits for the next start.
  void removeStaleWorkDirs().catch(() => undefined);

  /** For the bulk children: they get the CPU after the service's calls and PostgreSQL. */
  const bulk = { nice: BULK_NICE, idleScheduler: tools.idleScheduler };
  /** pg_restore reading a whole custom archive, printing nothing: fails if it is cut short or malformed. */
  const toNull = { name: "pg_restore", command: tools.pgRestore, args: ["--file=/dev/null"], stdout: "ignore" as const };

  /**
   * A decompressor (fed from `input`: a file path's argv, or "pipe" for stdin)
   * straight into a reader, child to child. Our end of the pipe between them
   * is closed, so that the decompressor gets SIGPIPE if the reader stops early.
   */
  function decompressInto(
    kind: CompressionKind,
    path: string | undefined,
    reader: { name: string; command: string; args: string[]; stdout: "ignore" | "pipe" },
    signal: AbortSignal | undefined,
    verbose = false,
  ) {
    const [cmd, argv] = decompressCommand(tools, kind, path, verbose);
    const dec = startChild(kind, cmd, argv, {
      env: childProcessEnv(),
      stdio: [path === undefined ? "pipe" : "ignore", "pipe", "pipe"],
      signal,
      ...bulk,
    });
    const sink = startChild(reader.name, reader.command, reader.args, {
      env: childProcessEnv(),
      stdio: [dec.child.stdout!, reader.stdout, "pipe"],
      signal,
      ...bulk,
    });
    dec.child.stdout!.destroy();
    return { dec, sink };
  }

  function compressArgs(kind: CompressionKind): [string, string[]] {
    return kind === "zstd"
      ? [tools.zstd, [`-${opts.compressionLevel}`, `-T${opts.compressionThreads}`, "-q", "-c"]]
      : [tools.gzip, [`-${opts.compressionLevel}`, "-c"]];
  }

  /** One dump; `utf8`: the archive in UTF-8 (see encodingArgs). */
  async function dumpIn(work: string | null, options: DumpOptions, signal: AbortSignal, utf8: boolean): Promise<DumpResult> {
    const started = performance.now();
    // One snapshot for pg_dump and for the row counts, so that the counts describe
    // exactly what the dump holds.
    const client = await connect(options.database, signal);
    const onAbort = () => void client.end().catch(() => undefined);
    signal.addEventListener("abort", onAbort, { once: true });
    let output: ChildOutput | null = null;
    try {
      // Lets the server notice a vanished client during a long count (PostgreSQL 14+).
      await client.query("SET client_connection_check_interval = 1000").catch(() => undefined);
      // The row counts overlap pg_dump, which takes longer anyway: on one core, not with
      // parallel workers that took every core for the first second of a backup (the calls
      // answered meanwhile waited; measured under the latency bench). A count gains nothing
      // from JIT, which cost up to 0.1 s of compiling per big table.
      // And with row-level security off, as pg_dump runs: a policy that would hide rows from the
      // count is an error (42501), not a smaller count.
      await client.query("SET max_parallel_workers_per_gather = 0; SET jit = off; SET row_security = off");
      await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
      const snap = await client.query<{ id: string; encoding: string }>(
        "SELECT pg_export_snapshot() AS id, current_setting('server_encoding') AS encoding",
      );
      const excluded = opts.control?.database === options.database ? opts.control.schemas : [];
      const tables = await listTables(client, excluded);

      // The first step to fail stops the others (a dead pg_dump must not leave the row
      // count waiting on a lock, and vice versa); its error is the one reported.
      const stopAll = createStopper(signal);
      const steps = stopAll.signal;
      let firstFailure: DomainError | undefined;
      const fail = (e: DomainError) => {
        firstFailure ??= e;
        stopAll.stop(e);
        void client.end().catch(() => undefined);
      };

      const formatArgs = options.format === "custom" ? ["-Fc", "-Z0"] : ["-Fp", "--no-owner", "--no-acl"];
      const excludeArgs = excluded.map((s) => `--exclude-schema=${s}`);
      // The archive in UTF-8 whatever the database's encoding (the server converts; for a UTF8
      // database nothing changes): its table of contents then names the tables as the row
      // counts do, and a LATIN1 table named café is found in it. Not for SQL_ASCII, whose bytes
      // have no known encoding (a UTF8 restore would refuse them), nor for MULE_INTERNAL, which
      // has no conversion to UTF8.
      const encoding = snap.rows[0]!.encoding;
      const encodingArgs = !utf8 || encoding === "SQL_ASCII" || encoding === "MULE_INTERNAL" ? [] : ["--encoding=UTF8"];
      // The compressor writes into a socket read into reused buffers (see SlabSource), not a
      // pipe, whose every read would be a new buffer that glibc keeps once freed (bench/NOTES.md,
      // 2026-12-08); into a pipe where no socket can be made. Made before pg_dump starts: nothing
      // may come between its start and the compressor's, which takes pg_dump's stdout while it
      // is still open.
      const out = (output = await childOutput(work === null ? null : path.join(work, "out.sock")));
      const dump = startChild(
        "pg_dump",
        tools.pgDump,
        [...formatArgs, ...encodingArgs, "--no-password", `--snapshot=${snap.rows[0]!.id}`, ...excludeArgs],
        {
          env: libpq.env(options.database),
          stdio: ["ignore", "pipe", "pipe"],
          signal: steps,
          ...bulk,
        },
      );
      const [compressCmd, compressArgv] = compressArgs(options.compression);
      // pg_dump's stdout goes straight into the compressor: no raw byte passes through Node.
      const compressor = startChild(options.compression, compressCmd, compressArgv, {
        env: childProcessEnv(),
        stdio: [dump.child.stdout!, out.stdio, "pipe"],
        signal: steps,
        ...bulk,
      });
      // Our copy of the pipe's read end must go, or pg_dump would block instead of
      // getting SIGPIPE if the compressor died.
      dump.child.stdout!.destroy();
      const pieces = out.attach(compressor.child.stdout);
      steps.addEventListener("abort", () => out.stop(), { once: true });

      const hash = createHash("sha256");
      let fileSize = 0;
      // A custom archive in zstd is read back as it is written, on what CPU the dump leaves
      // idle (measured: about a second less than reading the file after the dump).
      const readsBack = options.format === "custom" && options.compression === "zstd";
      // Each spawn holds the event loop until its child has started (2-5 ms for a process of
      // this size, more on busy cores): the calls waiting meanwhile are answered between the
      // dump's two processes and the read-back's two. (Not between pg_dump and the
      // compressor: Node starts reading the compressor's output at the next turn of the loop.)
      if (readsBack) await setImmediate();
      const readBack = readsBack ? startReadBack(steps) : null;
      // Each piece is hashed, written to the file and handed to the read-back (which holds its
      // slab until written) before the next is read into.
      const written = (async () => {
        const file = await open(options.outputPath, "wx", 0o600);
        try {
          for (let r = await pieces.next(); !r.done; r = await pieces.next()) {
            if (steps.aborted) return;
            const piece = r.value;
            hash.update(piece);
            fileSize += piece.length;
            await readBack?.feed(piece, out.slabs?.hold(piece));
            for (let at = 0; at < piece.length; ) {
              at += (await file.write(piece, at, piece.length - at)).bytesWritten;
            }
          }
          readBack?.end();
        } finally {
          await file.close();
        }
      })().catch((err: unknown) => {
        out.stop();
        if (steps.aborted) return;
        const code = (err as { code?: unknown }).code;
        // The disk filled up under the dump (the estimate before it was short, or something else
        // wrote there meanwhile): the operator's to fix, not ours, and said so.
        fail(
          code === "ENOSPC" || code === "EDQUOT"
            ? new DomainError(
                "resource_exhausted",
                `the backup directory ran out of space while the backup was written (${code}); the partial file ` +
                  "is removed (hint: free space, or point BACKUP_DIR at a larger disk)",
                { cause: err },
              )
            : new DomainError("dump_failed", `writing the backup file failed: ${safeReason(err)}`, { cause: err }),
        );
      });
      const watch = (p: Promise<ExitInfo>) =>
        p.then((e) => {
          if (!succeeded(e) && !steps.aborted) fail(dumpFailure(e, options.database));
        });
      let counts: TableRowCounts = {};
      const counting = countRows(client, tables, steps).then(
        (c) => {
          counts = c;
        },
        (err: unknown) => {
          if (!steps.aborted) {
            fail(
              isPrivilegeFailure(err)
                ? unreadable(options.database, safeReason(err), err)
                : new DomainError("dump_failed", `counting rows in the dump's snapshot failed: ${safeReason(err)}`, {
                    cause: err,
                  }),
            );
          }
        },
      );
      await Promise.all([watch(dump.exit), watch(compressor.exit), written, counting]);
      if (firstFailure) readBack?.stop();
      const readBackResult = readBack ? await readBack.result() : null;
      stopAll.dispose();
      signal.throwIfAborted();
      if (firstFailure) throw firstFailure;
      await client.query("COMMIT");
      return {
        fileSize,
        checksum: hash.digest("hex"),
        tableRowCounts: counts,
        durationMs: Math.round(performance.now() - started),
        readBack: readBackResult,
        warnings: dumpWarnings((await dump.exit).stderr),
      };
    } catch (err) {
      signal.throwIfAborted();
      if (err instanceof DomainError) throw err;
      throw new DomainError("dump_failed", `backup of "${options.database}" failed: ${safeReason(err)}`, {
        cause: err,
      });
    } finally {
      signal.removeEventListener("abort", onAbort);
      output?.stop();
      await client.end().catch(() => undefined);
    }
  }

  return {
    pgDumpVersion: tools.pgDumpVersion,
    pgDumpMajor: tools.pgDumpMajor,

    async probe(database, signal): Promise<TargetInfo> {
      const client = await connect(database, signal);
      try {
        const res = await client.query<{ v: string; n: number; size: string }>(
          `SELECT current_setting('server_version') AS v,
                  current_setting('server_version_num')::int AS n,
                  pg_database_size(current_database()) AS size`,
        );
        const row = res.rows[0]!;
        return {
          serverVersion: row.v.split(" ")[0]!,
          serverMajor: Math.floor(row.n / 10_000),
          databaseSize: Number(row.size),
        };
      } catch (err) {
        signal?.throwIfAborted();
        throw connectionFailure(err, where, database);
      } finally {
        await client.end().catch(() => undefined);
      }
    },

    async dump(options: DumpOptions, signal: AbortSignal): Promise<DumpResult> {
      try {
        // The compressor's socket goes to a private directory (see work-dir.ts), a pipe if none.
        return await withWorkDirIfAny("backup", (work) => dumpIn(work, options, signal, true));
      } catch (err) {
        // A byte of the database's own encoding with no Unicode equivalent (WIN1252's 0x81, say,
        // which the server stores without a check): dumped again in that encoding, as pg_dump
        // does by default, rather than no backup at all. Names outside ASCII in it are then not
        // matched in the table of contents (its check reads UTF-8).
        if (signal.aborted || !(err instanceof DomainError) || !/has no equivalent in encoding "UTF8"/.test(err.message)) throw err;
        await rm(options.outputPath, { force: true });
        return withWorkDirIfAny("backup", (work) => dumpIn(work, options, signal, false));
      }
    },

    async inspect(options: InspectOptions, signal?: AbortSignal): Promise<InspectResult> {
      if (options.full === false && options.format === "custom") {
        const toc = await listArchive(options, signal);
        const missing = options.expectedTables.filter((t) => !toc.tables.has(t));
        return {
          decompress: { passed: true, detail: "skipped: the restore that follows decompresses the whole file", dumpSize: null },
          archive: !toc.ok
            ? { passed: false, detail: `pg_restore cannot read the archive's table of contents: ${toc.detail}` }
            : missing.length > 0
              ? { passed: false, detail: `archive lacks the data of ${missing.length} table(s): ${missing.slice(0, 10).join(", ")}` }
              : { passed: true, detail: "the table of contents lists the data of every counted table; the restore reads the rest" },
        };
      }
      const readBack = options.format === "custom" ? options.readBack : null;
      const [decompress, toc] = await Promise.all([
        readBack
          ? { ok: true, bytes: readBack.dumpSize, detail: "", trailer: false, restoreOk: true, restoreDetail: "" }
          : readWhole(options, signal),
        options.format === "custom" ? listArchive(options, signal) : Promise.resolve(null),
      ]);
      let archive: CheckOutcome;
      if (options.format === "plain") {
        archive = decompress.trailer
          ? { passed: true, detail: "plain dump ends with pg_dump's completion trailer" }
          : { passed: false, detail: "plain dump lacks pg_dump's completion trailer: the dump is truncated" };
      } else if (!toc!.ok) {
        archive = { passed: false, detail: `pg_restore cannot read the archive's table of contents: ${toc!.detail}` };
      } else if (!decompress.restoreOk) {
        archive = { passed: false, detail: `pg_restore cannot read the whole archive: ${decompress.restoreDetail}` };
      } else {
        const missing = options.expectedTables.filter((t) => !toc!.tables.has(t));
        const listed = [...toc!.tables].filter((t) => !t.startsWith("(unexpected)")).length;
        archive =
          missing.length === 0
            ? {
                passed: true,
                detail: `archive is complete: the data of all ${listed} counted tables is listed`,
              }
            : {
                passed: false,
                detail: `archive lacks the data of ${missing.length} table(s): ${missing.slice(0, 10).join(", ")}`,
              };
      }
      return {
        decompress: {
          passed: decompress.ok,
          detail: decompress.ok
            ? `decompresses to ${decompress.bytes} bytes${readBack ? " (read back whole as it was written)" : ""}`
            : decompress.detail,
          dumpSize: decompress.ok ? decompress.bytes : null,
        },
        archive,
      };
    },
  };

  /**
   * Decompresses the whole file, counting the bytes. A custom archive is also fed
   * to `pg_restore -f /dev/null`, which reads every data block; a plain dump's tail
   * is kept to look for pg_dump's completion trailer.
   */
  async function readWhole(options: InspectOptions, signal?: AbortSignal) {
    if (options.format === "custom") return readWholeCustom(options, signal);
    const [cmd, argv] = decompressCommand(tools, options.compression, options.path);
    const dec = startChild(options.compression, cmd, argv, { env: childProcessEnv(), stdio: ["ignore", "pipe", "pipe"], signal, ...bulk });
    let bytes = 0;
    let tail = Buffer.alloc(0);
    const fed = feed(dec.child.stdout!, null, (chunk) => {
      bytes += chunk.length;
      tail = Buffer.concat([tail, chunk]).subarray(-1024);
    });
    const [decExit] = await Promise.all([dec.exit, fed]);
    signal?.throwIfAborted();
    const ok = succeeded(decExit);
    return {
      ok,
      bytes,
      detail: ok ? "" : `${describeExit(decExit)} (the file does not decompress completely)`,
      trailer: tail.toString("utf8").includes(PLAIN_TRAILER),
      restoreOk: true,
      restoreDetail: "",
    };
  }

  /**
   * A custom archive is decompressed child to child, no byte through Node
   * (measured: Node in the middle cost 1.5 s of 2.9 on a 1.2 GB dump), into
   * `pg_restore -f /dev/null`, which must read every data block. zstd -v
   * reports how many bytes it wrote, which is the dump's size; for gzip (or a
   * zstd that does not say), a second decompression into `wc -c` counts them,
   * on the other core.
   */
  async function readWholeCustom(options: InspectOptions, signal?: AbortSignal) {
    const toWc = { name: "wc", command: tools.wc, args: ["-c"], stdout: "pipe" as const };
    const countWithWc = async () => {
      const counting = decompressInto(options.compression, options.path, toWc, signal);
      let out = "";
      counting.sink.child.stdout!.setEncoding("utf8");
      counting.sink.child.stdout!.on("data", (d: string) => (out += d));
      const [decExit, countExit] = await Promise.all([counting.dec.exit, counting.sink.exit]);
      const bytes = Number(out.trim());
      return { decExit, countExit, bytes: succeeded(countExit) && Number.isFinite(bytes) ? bytes : null };
    };
    const zstd = options.compression === "zstd";
    const reading = decompressInto(options.compression, options.path, toNull, signal, zstd);
    const wc = zstd ? null : countWithWc();
    const [restoreExit, decExit] = await Promise.all([reading.sink.exit, reading.dec.exit]);
    signal?.throwIfAborted();
    let bytes = zstd && succeeded(decExit) ? zstdReportedBytes(decExit.stderr) : null;
    // If pg_restore gave up early, the decompressor died of SIGPIPE and says nothing about the
    // rest of the file: a reading of its own decides whether the file decompresses.
    const counted = wc ?? (bytes === null || !succeeded(restoreExit) ? countWithWc() : null);
    const count = counted ? await counted : null;
    signal?.throwIfAborted();
    const decompressed = count ? count.decExit : decExit;
    const ok = succeeded(decompressed) && (count === null || succeeded(count.countExit));
    bytes = count ? count.bytes : bytes;
    return {
      ok,
      bytes: bytes ?? 0,
      detail: ok ? "" : `${describeExit(!succeeded(decompressed) ? decompressed : count!.countExit)} (the file does not decompress completely)`,
      trailer: false,
      restoreOk: succeeded(restoreExit),
      restoreDetail: describeExit(restoreExit),
    };
  }

  /**
   * zstd -dc -v into pg_restore -f /dev/null, fed the compressed bytes as they
   * are written (with backpressure). Its result counts only when both finish
   * cleanly; anything else (pg_restore finding the archive cut short, a broken
   * pipe) leaves the question to the verification, which reads the file.
   */
  function startReadBack(signal: AbortSignal) {
    const { dec, sink: reader } = decompressInto("zstd", undefined, toNull, signal, true);
    const stdin = dec.child.stdin!;
    let broken = false;
    stdin.on("error", () => {
      broken = true;
    });
    return {
      /** `sent`, if given, is called once the child's stdin no longer needs `chunk` (written, or gone). */
      async feed(chunk: Buffer, sent?: () => void): Promise<void> {
        if (broken || stdin.destroyed) {
          sent?.();
          return;
        }
        if (stdin.write(chunk, () => sent?.())) return;
        await new Promise<void>((resolve) => {
          const done = () => {
            stdin.off("drain", done);
            stdin.off("close", done);
            resolve();
          };
          stdin.on("drain", done);
          stdin.on("close", done);
        });
      },
      end(): void {
        if (!broken && !stdin.destroyed) stdin.end();
      },
      stop(): void {
        dec.stop();
        reader.stop();
      },
      async result(): Promise<{ dumpSize: number } | null> {
        const [decExit, readExit] = await Promise.all([dec.exit, reader.exit]);
        if (broken || !succeeded(decExit) || !succeeded(readExit)) return null;
        const dumpSize = zstdReportedBytes(decExit.stderr);
        return dumpSize === null ? null : { dumpSize };
      },
    };
  }

  /** `pg_restore --list`: the TABLE DATA entries of the archive's table of contents. */
  async function listArchive(options: InspectOptions, signal?: AbortSignal) {
    const toc = await readToc(tools, options.path, options.compression, signal);
    if (!toc.ok) return { ok: false, detail: toc.detail, tables: new Set<string>() };
    // A line reads "<id>; <oids> TABLE DATA <schema> <name> <owner>", unquoted, so names with
    // spaces are ambiguous: each line is given to the expected table with the longest
    // matching "<schema> <name> " prefix (every table pg_dump dumps is expected).
    const expected = options.expectedTables.map((key) => {
      const t = parseTableKey(key);
      return { key, prefix: `${t.schema} ${t.name} ` };
    });
    const tables = new Set<string>();
    for (const entry of toc.entries) {
      if (entry.type !== "TABLE DATA") continue;
      let best: { key: string; prefix: string } | undefined;
      for (const e of expected) {
        if (entry.rest.startsWith(e.prefix) && (!best || e.prefix.length > best.prefix.length)) best = e;
      }
      tables.add(best ? best.key : `(unexpected) ${entry.rest}`);
    }
    return { ok: true, detail: "", tables };
  }
}

/**
 * What pg_dump warned about while it still succeeded: above all, the subscriptions a role that is
 * not a superuser cannot dump ("subscriptions not dumped because current user is not a
 * superuser"), which are then missing from the backup.
 */
export function dumpWarnings(stderr: string): string[] {
  return [...stderr.matchAll(/^pg_dump: warning: (.+)$/gm)].map((m) => m[1]!.trim());
}

/**
 * The size zstd -v reports after decompressing, or null: "<name> : 1204315615 bytes", with no
 * space before the colon once the name is longer than zstd's column.
 */
export function zstdReportedBytes(stderr: string): number | null {
  const last = stderr.split("\n").map((l) => l.trim()).filter((l) => l.length > 0).at(-1) ?? "";
  const m = /: *(\d+) bytes$/.exec(last);
  return m ? Number(m[1]) : null;
}

function dumpFailure(e: ExitInfo, database: string): DomainError {
  if (e.name === "pg_dump" && isPrivilegeFailure(e.stderr)) return unreadable(database, describeExit(e));
  return new DomainError("dump_failed", describeExit(e));
}

/**
 * The role in TARGET_DATABASE_URL may not read all of the database (a table without SELECT, or
 * one whose row-level security would hide rows: pg_dump refuses those rather than dump part of
 * them, and so does the row count, which runs with row_security off): the operator's to grant.
 */
function unreadable(database: string, why: string, cause?: unknown): DomainError {
  return new DomainError(
    "failed_precondition",
    `the role in TARGET_DATABASE_URL may not read all of "${database}": ${why}; no backup was written ` +
      "(hint: GRANT pg_read_all_data to it, or SELECT on the table; a table with row-level security also needs BYPASSRLS)",
    cause === undefined ? undefined : { cause },
  );
}

/**
 * Copies `source` into `sink` (when there is one) with back-pressure, calling
 * `onChunk` for every chunk. If the sink goes away early, the source is still
 * drained so that the producer's own exit status stays meaningful.
 */
function feed(source: Readable, sink: Writable | null, onChunk: (chunk: Buffer) => void): Promise<void> {
  return new Promise((resolve) => {
    let sinkOpen = sink !== null;
    const closeSink = () => {
      if (!sinkOpen) return;
      sinkOpen = false;
      source.resume();
    };
    sink?.on("error", closeSink);
    sink?.on("close", closeSink);
    source.on("data", (chunk: Buffer) => {
      onChunk(chunk);
      if (sinkOpen && !sink!.write(chunk)) {
        source.pause();
        sink!.once("drain", () => source.resume());
      }
    });
    source.on("error", () => undefined);
    source.on("close", () => {
      if (sinkOpen) sink!.end();
      resolve();
    });
  });
}
