/**
 * The latency benchmark's callers, in a process of their own (bench/run.ts starts
 * one, or `--caller-procs N`): each caller polls ListBackups and GetStats
 * alternately, pausing about `thinkMs` between calls, as a dashboard does.
 *
 * Apart from the bench's own process, the bench's bookkeeping (sampling the
 * service's memory, parsing its /metrics scrape) cannot hold up the replies the
 * callers time. More than one process costs more CPU in all, each paying for its
 * own client stack, and measured slower on two cores.
 *
 * Protocol with the parent (IPC): it sends {measure: true}, then {stop: true};
 * this process answers {ready: true} once its callers run, and at the end
 * {result} with every measured call.
 */
import { monitorEventLoopDelay } from "node:perf_hooks";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { BackupService } from "../gen/backup/v1/backup_pb.js";

export interface CallerSample {
  /** Start of the call, ms since the epoch. */
  at: number;
  ms: number;
  method: "ListBackups" | "GetStats";
  ok: boolean;
}

export interface CallersResult {
  samples: CallerSample[];
  cpuMs: number;
  eventLoopLagMs: { p50: number; p99: number; max: number };
}

const [url, token, countArg, thinkArg, firstArg] = process.argv.slice(2);
const count = Number(countArg);
const thinkMs = Number(thinkArg);
const first = Number(firstArg);

const client = createClient(
  BackupService,
  createGrpcTransport({
    baseUrl: url!,
    interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${token}`), next(req))],
  }),
);

let running = true;
let measuring = false;
const samples: CallerSample[] = [];

async function loop(n: number) {
  let i = n;
  while (running) {
    const list = i++ % 2 === 0;
    const t0 = performance.now();
    let ok = true;
    try {
      if (list) await client.listBackups({ page: 1 + (i % 20), pageSize: 50 });
      else await client.getStats({});
    } catch {
      ok = false;
    }
    if (measuring) {
      samples.push({
        at: performance.timeOrigin + t0,
        ms: performance.now() - t0,
        method: list ? "ListBackups" : "GetStats",
        ok,
      });
    }
    await new Promise((r) => setTimeout(r, thinkMs * (0.5 + Math.random())));
  }
}

const done = Promise.all(Array.from({ length: count }, (_, k) => loop(first + k)));
const lag = monitorEventLoopDelay({ resolution: 10 });
let cpu = process.cpuUsage();
process.send!({ ready: true });
process.on("message", (m: { measure?: boolean; stop?: boolean }) => {
  if (m.measure) {
    measuring = true;
    cpu = process.cpuUsage();
    lag.enable();
  } else if (m.stop) {
    measuring = false;
    running = false;
    const used = process.cpuUsage(cpu);
    lag.disable();
    void done.then(() => {
      const result: CallersResult = {
        samples,
        cpuMs: (used.user + used.system) / 1000,
        eventLoopLagMs: {
          p50: Math.round(lag.percentile(50) / 1e5) / 10,
          p99: Math.round(lag.percentile(99) / 1e5) / 10,
          max: Math.round(lag.max / 1e5) / 10,
        },
      };
      process.send!({ result }, () => process.exit(0));
    });
  }
});
