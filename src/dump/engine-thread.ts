/**
 * The worker-thread side of the threaded dump engine: runs dumps and
 * inspections with the ordinary engine, off the thread that serves calls.
 */
import { parentPort, workerData } from "node:worker_threads";
import { DomainError } from "../errors.js";
import { createDumpEngine, type DumpEngineOptions } from "./engine.js";
import type { EngineRequest, EngineResponse, WireError } from "./threaded-engine.js";

const engine = createDumpEngine(workerData as DumpEngineOptions);
const running = new Map<number, AbortController>();
const port = parentPort!;

function toWire(err: unknown): WireError {
  if (err instanceof DomainError) return { kind: err.kind, message: err.message, stack: err.stack };
  const e = err as { message?: unknown; stack?: unknown; code?: unknown; syscall?: unknown; severity?: unknown } | null;
  return {
    kind: null,
    message: typeof e?.message === "string" ? e.message : String(err),
    stack: typeof e?.stack === "string" ? e.stack : undefined,
    // What safeReason() looks at, so that the main thread words the error as it would have.
    code: typeof e?.code === "string" ? e.code : undefined,
    syscall: typeof e?.syscall === "string" ? e.syscall : undefined,
    severity: typeof e?.severity === "string" ? e.severity : undefined,
  };
}

port.on("message", (m: EngineRequest) => {
  if (m.type === "abort") {
    running.get(m.id)?.abort(new DomainError(m.reason.kind ?? "cancelled", m.reason.message));
    return;
  }
  const controller = new AbortController();
  running.set(m.id, controller);
  const work = m.op === "dump" ? engine.dump(m.args, controller.signal) : engine.inspect(m.args, controller.signal);
  work.then(
    (value) => port.postMessage({ id: m.id, ok: true, value } satisfies EngineResponse),
    (err: unknown) => port.postMessage({ id: m.id, ok: false, error: toWire(err) } satisfies EngineResponse),
  ).finally(() => running.delete(m.id));
});
