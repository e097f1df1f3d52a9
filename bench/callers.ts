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
import http2 from "node:http2";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  BackupService,
  GetStatsResponseSchema,
  ListBackupsRequestSchema,
  ListBackupsResponseSchema,
} from "../gen/backup/v1/backup_pb.js";

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

const [url, token, countArg, thinkArg, firstArg, clientArg] = process.argv.slice(2);
const count = Number(countArg);
const thinkMs = Number(thinkArg);
const first = Number(firstArg);

type Caller = { listBackups(page: number): Promise<void>; getStats(): Promise<void> };

/** connect-es's gRPC client (createGrpcTransport), as the service's own tests and tools use. */
function connectCaller(): Caller {
  const client = createClient(
    BackupService,
    createGrpcTransport({
      baseUrl: url!,
      interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${token}`), next(req))],
    }),
  );
  return {
    listBackups: async (page) => void (await client.listBackups({ page, pageSize: 50 })),
    getStats: async () => void (await client.getStats({})),
  };
}

/**
 * A plain gRPC client on node:http2, as load generators such as ghz or h2load are plain:
 * one HTTP/2 connection, requests encoded once, and per reply the gRPC framing and
 * `grpc-status: 0` checked. It costs the shared two cores a fraction of what a full client
 * stack costs, so the latency measured is more the service's own. Every 25th reply is
 * also decoded and checked.
 */
function h2Caller(): Caller {
  const session = http2.connect(url!);
  session.on("error", () => undefined);
  const frame = (body: Uint8Array) => {
    const f = Buffer.alloc(5 + body.length);
    f.writeUInt32BE(body.length, 1);
    f.set(body, 5);
    return f;
  };
  const listBodies = Array.from({ length: 21 }, (_, page) =>
    frame(toBinary(ListBackupsRequestSchema, create(ListBackupsRequestSchema, { page, pageSize: 50 }))),
  );
  const empty = frame(new Uint8Array(0));
  let n = 0;
  const call = (method: string, body: Buffer, check: (reply: Buffer) => void) =>
    new Promise<void>((resolve, reject) => {
      const req = session.request({
        ":method": "POST",
        ":path": `/backup.v1.BackupService/${method}`,
        "content-type": "application/grpc+proto",
        te: "trailers",
        authorization: `Bearer ${token}`,
      });
      const chunks: Buffer[] = [];
      let status: string | undefined;
      req.on("response", (h) => (status = h["grpc-status"] as string | undefined));
      req.on("trailers", (t) => (status = t["grpc-status"] as string | undefined));
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("error", reject);
      req.on("end", () => {
        const reply = Buffer.concat(chunks);
        if (status !== "0") return reject(new Error(`${method}: grpc-status ${status}`));
        if (reply.length < 5 || reply[0] !== 0 || reply.readUInt32BE(1) !== reply.length - 5) {
          return reject(new Error(`${method}: a reply that is not one gRPC message`));
        }
        try {
          if (n++ % 25 === 0) check(reply.subarray(5));
          resolve();
        } catch (err) {
          reject(err as Error);
        }
      });
      req.end(body);
    });
  return {
    listBackups: (page) =>
      call("ListBackups", listBodies[page]!, (b) => {
        if (fromBinary(ListBackupsResponseSchema, b).backups.length !== 50) throw new Error("ListBackups: not 50 backups");
      }),
    getStats: () =>
      call("GetStats", empty, (b) => {
        if (fromBinary(GetStatsResponseSchema, b).totalBackups <= 0n) throw new Error("GetStats: no backups counted");
      }),
  };
}

const client = clientArg === "connect" ? connectCaller() : h2Caller();

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
      if (list) await client.listBackups(1 + (i % 20));
      else await client.getStats();
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
