import { Worker } from "node:worker_threads";
import type { DumpEngine, DumpOptions, DumpResult, InspectOptions, InspectResult } from "../domain/ports.js";
import { DomainError, isDomainError, type ErrorKind } from "../errors.js";
import { createDumpEngine, type DumpEngineOptions } from "./engine.js";

export interface WireError {
  kind: ErrorKind | null;
  message: string;
  stack?: string;
  code?: string;
  syscall?: string;
  severity?: string;
}

export type EngineRequest =
  | { type: "call"; id: number; op: "dump"; args: DumpOptions }
  | { type: "call"; id: number; op: "inspect"; args: InspectOptions }
  | { type: "abort"; id: number; reason: { kind: ErrorKind | null; message: string } };

export type EngineResponse = { id: number; ok: true; value: unknown } | { id: number; ok: false; error: WireError };

function revive(w: WireError): Error {
  const err: Error & Partial<Pick<WireError, "code" | "syscall" | "severity">> =
    w.kind === null ? new Error(w.message) : new DomainError(w.kind, w.message);
  if (w.stack) err.stack = w.stack;
  if (w.code !== undefined) err.code = w.code;
  if (w.syscall !== undefined) err.syscall = w.syscall;
  if (w.severity !== undefined) err.severity = w.severity;
  return err;
}

/** How the worker is started: from the compiled .js, or from source through tsx (tests, `tsx`). */
function workerSource(): string {
  const fromSource = import.meta.url.endsWith(".ts");
  const entry = new URL(fromSource ? "./engine-thread.ts" : "./engine-thread.js", import.meta.url).href;
  return fromSource
    ? `import("tsx/esm/api").then((tsx) => { tsx.register(); return import(${JSON.stringify(entry)}); })`
    : `import(${JSON.stringify(entry)})`;
}

/**
 * The dump engine with its dumps and inspections in a worker thread. Spawning
 * a child process blocks the calling thread until the child has started (tens
 * of milliseconds on a busy machine, measured), and a backup and its
 * verification start eight; hashing and writing the archive take CPU slices
 * too. Off the main thread, none of it delays the calls the service answers
 * meanwhile. The probe (one query) stays here.
 */
export function createThreadedDumpEngine(opts: DumpEngineOptions): DumpEngine & { close(): Promise<void> } {
  const local = createDumpEngine(opts);
  const pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  let worker: Worker | null = null;
  let nextId = 1;

  function failAll(err: Error) {
    for (const p of pending.values()) p.reject(err);
    pending.clear();
  }

  function start(): Worker {
    if (worker) return worker;
    const w = new Worker(workerSource(), { eval: true, workerData: opts });
    w.on("message", (m: EngineResponse) => {
      const p = pending.get(m.id);
      if (!p) return;
      pending.delete(m.id);
      if (pending.size === 0) w.unref();
      if (m.ok) p.resolve(m.value);
      else p.reject(revive(m.error));
    });
    w.on("error", (err) => failAll(new DomainError("dump_failed", "the dump worker failed: internal error", { cause: err })));
    w.on("exit", () => {
      if (worker === w) worker = null;
      failAll(new DomainError("dump_failed", "the dump worker stopped: internal error"));
    });
    worker = w;
    return w;
  }

  function call<T>(request: Omit<Extract<EngineRequest, { type: "call" }>, "id">, signal?: AbortSignal): Promise<T> {
    const w = start();
    const id = nextId++;
    // A running call keeps the process alive; an idle worker does not.
    w.ref();
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => {
        const reason: unknown = signal!.reason;
        w.postMessage({
          type: "abort",
          id,
          reason: isDomainError(reason) ? { kind: reason.kind, message: reason.message } : { kind: null, message: "cancelled" },
        } satisfies EngineRequest);
      };
      const settle = () => signal?.removeEventListener("abort", onAbort);
      pending.set(id, {
        resolve: (v) => (settle(), resolve(v as T)),
        reject: (e) => (settle(), reject(e)),
      });
      w.postMessage({ ...request, id } as EngineRequest);
      if (signal?.aborted) onAbort();
      else signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  return {
    pgDumpVersion: local.pgDumpVersion,
    pgDumpMajor: local.pgDumpMajor,
    probe: local.probe,
    dump: (options, signal) => call<DumpResult>({ type: "call", op: "dump", args: options }, signal),
    inspect: (options, signal) => call<InspectResult>({ type: "call", op: "inspect", args: options }, signal),
    async close() {
      const w = worker;
      worker = null;
      if (w) await w.terminate();
    },
  };
}
