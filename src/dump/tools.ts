import { execFile } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/** Absolute or PATH-relative commands for every tool the pipeline uses. */
export interface Tools {
  pgDump: string;
  pgRestore: string;
  psql: string;
  zstd: string;
  gzip: string;
  wc: string;
  /**
   * `chrt`, when it can run a command under SCHED_IDLE here: the bulk children
   * (pg_dump, the compressor, the verification readers) then get the CPU only
   * when nothing else wants it. null: they run at niceness 10 only.
   */
  idleScheduler: string | null;
  pgDumpVersion: string;
  pgDumpMajor: number;
}

const PACKAGES: Record<string, string> = {
  pg_dump: "postgresql-client",
  pg_restore: "postgresql-client",
  psql: "postgresql-client",
  zstd: "zstd",
  gzip: "gzip",
  wc: "coreutils",
};

export class MissingToolError extends Error {
  override name = "MissingToolError";
}

async function versionOf(name: string, command: string): Promise<string> {
  try {
    const { stdout } = await run(command, ["--version"], { timeout: 10_000 });
    return stdout.trim();
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code === "ENOENT" ? "not found" : "does not run";
    throw new MissingToolError(
      `${name} ${why} (${command}) (hint: apt-get install ${PACKAGES[name]}${
        PACKAGES[name] === "postgresql-client" ? ", or set PG_BIN_DIR" : ""
      })`,
    );
  }
}

/** "pg_dump (PostgreSQL) 15.20 (Debian ...)" -> { version: "15.20", major: 15 } */
export function parsePgVersion(text: string): { version: string; major: number } | null {
  const m = /\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?/.exec(text);
  if (!m) return null;
  return { version: m[2] === undefined ? m[1]! : `${m[1]}.${m[2]}`, major: Number(m[1]) };
}

/** Finds every tool and checks that it runs; fails with the Debian package to install. */
export async function resolveTools(pgBinDir: string | undefined): Promise<Tools> {
  const pg = (name: string) => (pgBinDir ? path.join(pgBinDir, name) : name);
  const tools = {
    pgDump: pg("pg_dump"),
    pgRestore: pg("pg_restore"),
    psql: pg("psql"),
    zstd: "zstd",
    gzip: "gzip",
    wc: "wc",
  };
  const [dumpText] = await Promise.all([
    versionOf("pg_dump", tools.pgDump),
    versionOf("pg_restore", tools.pgRestore),
    versionOf("psql", tools.psql),
    versionOf("zstd", tools.zstd),
    versionOf("gzip", tools.gzip),
    versionOf("wc", tools.wc),
  ]);
  const parsed = parsePgVersion(dumpText);
  if (!parsed) throw new MissingToolError(`pg_dump printed an unexpected version: ${dumpText.slice(0, 100)}`);
  return { ...tools, idleScheduler: await idleScheduler(), pgDumpVersion: parsed.version, pgDumpMajor: parsed.major };
}

/** "chrt" if `chrt --idle 0 <command>` works on this machine (util-linux; Linux only), else null. */
async function idleScheduler(): Promise<string | null> {
  try {
    await run("chrt", ["--idle", "0", "true"], { timeout: 10_000 });
    return "chrt";
  } catch {
    return null;
  }
}

/**
 * The command that decompresses `path` (or stdin when no path) to stdout. With
 * `verbose`, zstd ends by printing "<name> : <bytes> bytes" on stderr (see
 * zstdReportedBytes); gzip prints nothing either way.
 */
export function decompressCommand(tools: Tools, kind: "zstd" | "gzip", path?: string, verbose = false): [string, string[]] {
  const file = path === undefined ? [] : ["--", path];
  return kind === "zstd" ? [tools.zstd, ["-dc", verbose ? "-v" : "-q", ...file]] : [tools.gzip, ["-dc", ...file]];
}
