import { mkdtemp, readdir, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

/**
 * Private directories in the system's temporary area, never beside the
 * backups: `bsvc-<kind>-<pid>-<random>` (mode 0700, from mkdtemp), for what a
 * backup or a restore keeps while it runs (a restore's table of contents, the
 * Unix sockets the decompressor and the compressor write into).
 */
export type WorkKind = "backup" | "restore";

function makeWorkDir(kind: WorkKind): Promise<string> {
  return mkdtemp(path.join(os.tmpdir(), `bsvc-${kind}-${process.pid}-`));
}

async function inWorkDir<T>(dir: string | null, fn: (dir: string | null) => Promise<T>): Promise<T> {
  try {
    return await fn(dir);
  } finally {
    if (dir !== null) await rm(dir, { recursive: true, force: true });
  }
}

/** Runs `fn` with a new private directory, removed whatever happens. */
export async function withWorkDir<T>(kind: WorkKind, fn: (dir: string) => Promise<T>): Promise<T> {
  return inWorkDir(await makeWorkDir(kind), (dir) => fn(dir!));
}

/**
 * As withWorkDir, for work that can do without one: where the temporary area has no room for a
 * directory (not writable, say), `fn` runs with null.
 */
export async function withWorkDirIfAny<T>(kind: WorkKind, fn: (dir: string | null) => Promise<T>): Promise<T> {
  return inWorkDir(await makeWorkDir(kind).catch(() => null), fn);
}

/** Removes the directories a process that is gone (killed mid-backup or mid-restore) left behind. */
export async function removeStaleWorkDirs(): Promise<void> {
  for (const name of await readdir(os.tmpdir())) {
    const m = /^bsvc-(?:backup|restore)-(\d+)-/.exec(name);
    if (!m || Number(m[1]) === process.pid) continue;
    try {
      process.kill(Number(m[1]), 0);
      continue; // alive: perhaps another replica on this machine, mid-restore
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ESRCH") continue;
    }
    await rm(path.join(os.tmpdir(), name), { recursive: true, force: true });
  }
}
