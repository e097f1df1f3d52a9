/**
 * The latency benchmark's callers, in a process of their own (bench/run.ts starts
 * one or more): each caller polls ListBackups and GetStats alternately, pausing
 * about `thinkMs` between calls, as a dashboard does.
 *
 * A process that runs 50 callers spends most of a core on its own client stack
 * (HTTP/2 and protobuf decoding): the calls then wait in the callers' event loop,
 * and the benchmark times itself, not the service. Spread over processes, each
 * loop stays idle most of the time, as 50 real clients on other machines would.
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
  seconds: number;
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
let started = 0;
process.send!({ ready: true });
process.on("message", (m: { measure?: boolean; stop?: boolean }) => {
  if (m.measure) {
    measuring = true;
    started = performance.now();
    cpu = process.cpuUsage();
    lag.enable();
  } else if (m.stop) {
    measuring = false;
    running = false;
    const seconds = (performance.now() - started) / 1000;
    const used = process.cpuUsage(cpu);
    lag.disable();
    void done.then(() => {
      const result: CallersResult = {
        samples,
        cpuMs: (used.user + used.system) / 1000,
        seconds,
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
