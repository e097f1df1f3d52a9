import { spawn, type ChildProcess, type StdioOptions } from "node:child_process";
import os from "node:os";

/** How a child process ended. */
export interface ExitInfo {
  name: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The last few KiB of its stderr, trimmed. */
  stderr: string;
}

export interface RunningChild {
  child: ChildProcess;
  exit: Promise<ExitInfo>;
  /** Stops the process: SIGTERM, then SIGKILL if it lingers. */
  stop(): void;
}

const STDERR_TAIL = 4096;
/** Niceness for the compressor and the verification readers (see startChild). */
export const BULK_NICE = 10;
const KILL_AFTER_MS = 2000;

/**
 * Spawns a tool with a clean environment of our choosing. Its stderr is kept
 * (the tail only) for error messages; `exit` resolves when the process and
 * its stdio are closed, never rejects (a spawn failure is reported as code 127).
 */
export function startChild(
  name: string,
  command: string,
  args: string[],
  options: {
    env: NodeJS.ProcessEnv;
    stdio: StdioOptions;
    signal?: AbortSignal;
    nice?: number;
    /** `chrt`, to run the command under SCHED_IDLE (it execs the command: same pid). */
    idleScheduler?: string | null;
  },
): RunningChild {
  const child = options.idleScheduler
    ? spawn(options.idleScheduler, ["--idle", "0", command, ...args], { env: options.env, stdio: options.stdio })
    : spawn(command, args, { env: options.env, stdio: options.stdio });
  if (options.nice && child.pid !== undefined) {
    try {
      // Bulk work yields the CPU to the service's own calls (and to PostgreSQL) when both want it.
      os.setPriority(child.pid, options.nice);
    } catch {
      // not permitted here: run at normal priority
    }
  }
  let stderr = "";
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (chunk: string) => {
    stderr = (stderr + chunk).slice(-STDERR_TAIL);
  });
  let killTimer: NodeJS.Timeout | undefined;
  const stop = () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill("SIGTERM");
    killTimer ??= setTimeout(() => child.kill("SIGKILL"), KILL_AFTER_MS).unref();
  };
  const exit = new Promise<ExitInfo>((resolve) => {
    let spawnError: Error | undefined;
    child.once("error", (err) => {
      spawnError = err;
    });
    child.once("close", (code, signal) => {
      clearTimeout(killTimer);
      options.signal?.removeEventListener("abort", stop);
      if (spawnError && code === null && signal === null) {
        resolve({ name, code: 127, signal: null, stderr: spawnError.message });
      } else {
        resolve({ name, code, signal, stderr: stderr.trim() });
      }
    });
  });
  if (options.signal?.aborted) stop();
  else options.signal?.addEventListener("abort", stop, { once: true });
  return { child, exit, stop };
}

export function succeeded(e: ExitInfo): boolean {
  return e.code === 0 && e.signal === null;
}

/** "pg_dump exited with code 1: <last stderr line(s)>" */
export function describeExit(e: ExitInfo): string {
  const how = e.signal ? `was killed by ${e.signal}` : `exited with code ${e.code}`;
  const tail = lastLines(e.stderr, 3);
  return `${e.name} ${how}${tail ? `: ${tail}` : ""}`;
}

function lastLines(text: string, n: number): string {
  return text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l.length > 0)
    .slice(-n)
    .join(" | ");
}
