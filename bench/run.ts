/**
 * The benchmark: our service against what a user would otherwise run, on one
 * database, in one run, alternating A/B so that the machine's drift cancels.
 *
 *   npm run bench                      # default: pgbench scale 100 + ~200 MB mixed table (~1.5 GB)
 *   npm run bench -- --scale 5         # a quick check (about a minute)
 *   npm run bench -- --pairs 5 --out bench/results/mine.json
 *
 * Needs the local PostgreSQL (as for the tests) and pgbench (postgresql-contrib on Debian,
 * installed with the server). The benchmark database is built once and reused.
 */
import { appendFileSync, readFileSync, writeFileSync } from "node:fs";
import { fork, spawn, type ChildProcess } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { SignJWT } from "jose";
import pg from "pg";
import { toBinary } from "@bufbuild/protobuf";
import { BackupService, GetStatsResponseSchema, ListBackupsResponseSchema } from "../gen/backup/v1/backup_pb.js";
import type { CallersResult } from "./callers.js";

const { values: args } = parseArgs({
  options: {
    scale: { type: "string", default: "100" },
    "mixed-mb": { type: "string" },
    pairs: { type: "string", default: "3" },
    out: { type: "string" },
    "history-rows": { type: "string", default: "100000" },
    callers: { type: "string", default: "50" },
    "caller-procs": { type: "string", default: "1" },
    "caller-client": { type: "string", default: "h2" },
    "think-ms": { type: "string", default: "100" },
    "warmup-ms": { type: "string", default: "8000" },
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "5432" },
    user: { type: "string", default: "postgres" },
    "build-only": { type: "boolean", default: false },
    "latency-only": { type: "boolean", default: false },
    "download-only": { type: "string" },
    "restore-only": { type: "string" },
    "skip-floors": { type: "boolean", default: false },
  },
});
const scale = Number(args.scale);
const mixedMb = Number(args["mixed-mb"] ?? Math.max(4, Math.round(scale * 2)));
const pairs = Number(args.pairs);
const historyRows = Number(args["history-rows"]);
const callers = Number(args.callers);
const callerProcs = Number(args["caller-procs"]);
if (!["h2", "connect"].includes(args["caller-client"]!)) {
  process.stderr.write(`--caller-client must be h2 or connect, not "${args["caller-client"]}"\n`);
  process.exit(2);
}
const callerClient = args["caller-client"] as "h2" | "connect";
if (args["download-only"] !== undefined && !(Number.isInteger(Number(args["download-only"])) && Number(args["download-only"]) > 0)) {
  process.stderr.write(`--download-only takes a number of downloads (1 or more), not "${args["download-only"]}"\n`);
  process.exit(2);
}
if (args["restore-only"] !== undefined && !(Number.isInteger(Number(args["restore-only"])) && Number(args["restore-only"]) > 0)) {
  process.stderr.write(`--restore-only takes a number of restores (1 or more), not "${args["restore-only"]}"\n`);
  process.exit(2);
}
{
  const modes = ["latency-only", "download-only", "restore-only"].filter((m) => args[m as keyof typeof args] !== undefined && args[m as keyof typeof args] !== false);
  if (modes.length > 1) {
    process.stderr.write(`--${modes.join(" and --")} run different parts of the bench: give one of them\n`);
    process.exit(2);
  }
}
const thinkMs = Number(args["think-ms"]);
const warmupMs = Number(args["warmup-ms"]);
const PG = { host: args.host!, port: Number(args.port), user: args.user! };
const benchDb = `bench_s${scale}_m${mixedMb}_v2`;
const controlDb = "bench_control";
const SECRET = "benchmark-secret-that-is-long-enough-for-hs256";

const pgEnv = { ...process.env, PGHOST: PG.host, PGPORT: String(PG.port), PGUSER: PG.user };

function log(msg: string) {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

async function q<T extends pg.QueryResultRow>(database: string, text: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ ...PG, database });
  await c.connect();
  try {
    return (await c.query<T>(text, params)).rows;
  } finally {
    await c.end();
  }
}

/**
 * Before each timed step: PostgreSQL writes out its dirty buffers and the kernel its
 * dirty pages (pgbench checkpoints before a run for the same reason), so that no step
 * pays for the writes the one before it left behind: a restore leaves gigabytes.
 */
async function settle(): Promise<void> {
  await q("postgres", "CHECKPOINT");
  await sh("sync");
}

/**
 * Every process the bench starts, stopped when the bench ends however it ends (an error,
 * SIGTERM, SIGHUP, Ctrl-C): a service left running with its callers keeps polling
 * PostgreSQL and spoils the runs after it, as it once did (see bench/NOTES.md, "Runs").
 * SIGTERM lets the service stop its own pg_dump and zstd.
 */
const children = new Set<ChildProcess>();
function own<T extends ChildProcess>(child: T): T {
  children.add(child);
  child.once("exit", () => children.delete(child));
  return child;
}
process.once("exit", () => {
  for (const c of children) c.kill("SIGTERM");
});
for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143], ["SIGHUP", 129]] as const) {
  process.once(signal, () => process.exit(code));
}

/** Runs a shell pipeline; resolves with its wall time in ms. */
function sh(command: string): Promise<number> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = own(spawn("bash", ["-o", "pipefail", "-c", command], { env: pgEnv, stdio: ["ignore", "ignore", "pipe"] }));
    let err = "";
    child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
    child.once("close", (code) =>
      code === 0 ? resolve(performance.now() - started) : reject(new Error(`${command} -> ${code}: ${err.slice(-500)}`)),
    );
  });
}

async function dbExists(name: string): Promise<boolean> {
  return (await q("postgres", "SELECT 1 FROM pg_database WHERE datname = $1", [name])).length > 0;
}

/** pgbench tables at the given scale, plus a table that compresses like real data. */
async function buildDatabase(): Promise<void> {
  if (await dbExists(benchDb)) {
    const done = await q(benchDb, "SELECT to_regclass('bench_meta') IS NOT NULL AS ok").then((r) => r[0]?.ok);
    if (done) {
      log(`reusing ${benchDb}`);
      return;
    }
    await q("postgres", `DROP DATABASE "${benchDb}" WITH (FORCE)`);
  }
  log(`building ${benchDb}: pgbench scale ${scale} + ~${mixedMb} MB mixed table (once)`);
  await q("postgres", `CREATE DATABASE "${benchDb}"`);
  await sh(`pgbench -i -q -s ${scale} ${benchDb}`);
  // Text that repeats like prose, jsonb documents, timestamps and binary blobs of varying
  // entropy: it compresses about 2-3x, as application data does (pgbench's own tables are
  // mostly blank padding and compress far better).
  const rows = Math.round((mixedMb * 1024 * 1024) / 420);
  await q(
    benchDb,
    `CREATE TABLE events (
       id bigint PRIMARY KEY, happened timestamptz NOT NULL, kind text NOT NULL,
       message text, attrs jsonb, blob bytea)`,
  );
  const batch = 200_000;
  for (let from = 1; from <= rows; from += batch) {
    const to = Math.min(rows, from + batch - 1);
    await q(
      benchDb,
      `INSERT INTO events
       SELECT g,
              timestamptz '2026-01-01' + g * interval '17 seconds' + (g % 997) * interval '1 ms',
              (ARRAY['login','logout','purchase','refund','view','error'])[1 + g % 6],
              'user ' || (g::bigint * 2654435761 % 1000003) || ' did ' || (ARRAY['open','close','pay','read','edit'])[1 + g % 5] ||
                ' on item ' || (g::bigint * 7919 % 100000) || ' ref ' || md5(g::text),
              jsonb_build_object('session', md5((g * 3)::text), 'amount', round(((g::bigint * 48271) % 1000003) / 7.0, 2),
                                 'tags', jsonb_build_array('t' || g % 13, 't' || g % 29), 'ok', g % 3 = 0),
              decode(md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) || md5((g * 17)::text), 'hex')
         FROM generate_series(${from}, ${to}) g`,
    );
  }
  await q(benchDb, "VACUUM ANALYZE");
  await q(benchDb, "CREATE TABLE bench_meta (built timestamptz DEFAULT now())");
  await q(benchDb, "INSERT INTO bench_meta DEFAULT VALUES");
}

interface Service {
  child: ChildProcess;
  url: string;
  /** The service's Prometheus endpoint: server-side latency and event-loop lag. */
  metricsUrl: Promise<string>;
  client: Client<typeof BackupService>;
  token: string;
  dataDir: string;
  /** The steps of each restore the service finished, from its "restore finished" log lines. */
  restoreSteps: Record<string, number>[];
}

/**
 * How `npm start` runs the service, read from package.json so that the bench cannot drift from
 * it: node's flags (the young generation's size among them) and the allocator's setting.
 */
async function npmStart(): Promise<{ nodeFlags: string[]; mallocMmapThreshold: string }> {
  const script = (JSON.parse(await readFile("package.json", "utf8")) as { scripts: { start: string } }).scripts.start;
  const node = /\bnode((?:\s+--\S+)*)\s+dist\/src\/main\.js/.exec(script);
  const malloc = /MALLOC_MMAP_THRESHOLD_:-(\d+)/.exec(script);
  if (!node || !malloc) throw new Error(`package.json's start script is not in the form the bench expects: ${script}`);
  return { nodeFlags: node[1]!.split(/\s+/).filter(Boolean), mallocMmapThreshold: malloc[1]! };
}

async function startService(): Promise<Service> {
  const start = await npmStart();
  const dataDir = await mkdtemp(path.join(os.tmpdir(), "bench-data-"));
  const env = {
    ...process.env,
    GRPC_PORT: "0",
    CONTROL_DATABASE_URL: `postgres://${PG.user}@${PG.host}:${PG.port}/${controlDb}`,
    TARGET_DATABASE_URL: `postgres://${PG.user}@${PG.host}:${PG.port}/${benchDb}`,
    DATA_DIR: dataDir,
    JWT_SECRET: SECRET,
    LOG_LEVEL: "info",
    DAILY_BACKUP_CRON: "off",
    WEEKLY_CLEANUP_CRON: "off",
    RESTORE_DRILL_CRON: "off",
    SCHEDULE_CATCHUP_WINDOW: "0",
    // A free port: the default 9464 may be taken by a service running on the same machine.
    METRICS_PORT: "0",
    // As `npm start` sets it (see bench/NOTES.md, "Memory").
    MALLOC_MMAP_THRESHOLD_: process.env.MALLOC_MMAP_THRESHOLD_ ?? start.mallocMmapThreshold,
  };
  // The built service, as `npm start` runs it (npm run bench builds it first).
  const profile = process.env.BENCH_CPU_PROF ? ["--cpu-prof", `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`] : [];
  // BENCH_NODE_FLAGS="--trace-gc" and the like go to the service's node.
  const flags = (process.env.BENCH_NODE_FLAGS ?? "").split(" ").filter(Boolean);
  const child = own(
    spawn(process.execPath, [...profile, ...start.nodeFlags, ...flags, "dist/src/main.js"], {
      env,
      stdio: ["ignore", "pipe", "inherit"],
    }),
  );
  if (process.env.BENCH_SCHEDSTAT) recordSchedstat(child, process.env.BENCH_SCHEDSTAT);
  let gotMetricsUrl: (u: string) => void = () => undefined;
  const restoreSteps: Record<string, number>[] = [];
  const metricsUrl = new Promise<string>((r) => (gotMetricsUrl = r));
  const url = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on("line", (line) => {
      // BENCH_SERVICE_STDOUT=file keeps everything the service prints (e.g. with NODE_OPTIONS=--trace-gc).
      if (process.env.BENCH_SERVICE_STDOUT) appendFileSync(process.env.BENCH_SERVICE_STDOUT, `${line}\n`);
      try {
        const e = JSON.parse(line) as { msg?: string; url?: string; level?: number; stepsMs?: Record<string, number> };
        if (e.msg === "backup service listening") resolve(e.url!);
        else if (e.msg === "restore finished" && e.stepsMs) restoreSteps.push(e.stepsMs);
        else if (e.msg === "metrics listening") gotMetricsUrl(e.url!);
        else if ((e.level ?? 0) >= 50) process.stderr.write(`service: ${line}\n`);
      } catch {
        // not a log line
      }
    });
    child.once("exit", (code) => reject(new Error(`service exited with ${code}`)));
  });
  const token = await new SignJWT({ role: "admin" })
    .setProtectedHeader({ alg: "HS256" })
    .setSubject("bench")
    .setExpirationTime("1d")
    .sign(new TextEncoder().encode(SECRET));
  const client = createClient(
    BackupService,
    createGrpcTransport({
      baseUrl: url,
      interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${token}`), next(req))],
    }),
  );
  return { child, url, metricsUrl, client, token, dataDir, restoreSteps };
}

/**
 * BENCH_SCHEDSTAT=file: every 5 ms, the service's main thread's time on a core and its time
 * runnable but waiting for one (the kernel's /proc/<pid>/task/<pid>/schedstat, cumulative ns),
 * written as "<ms since the epoch> <on-CPU ns> <waiting ns>" lines when the service exits.
 * Linux only; it tells a busy event loop from one that waits for a core.
 */
function recordSchedstat(child: ChildProcess, file: string): void {
  const lines: string[] = [];
  const source = `/proc/${child.pid}/task/${child.pid}/schedstat`;
  const timer = setInterval(() => {
    try {
      const [onCpu, waiting] = readFileSync(source, "utf8").split(" ");
      lines.push(`${Date.now()} ${onCpu} ${waiting}`);
    } catch (err) {
      clearInterval(timer);
      // Not Linux, or a kernel without schedstats: say so rather than leave an empty file.
      if (lines.length === 0) log(`BENCH_SCHEDSTAT: cannot read ${source} (${(err as Error).message}); nothing recorded`);
    }
  }, 5);
  timer.unref();
  child.once("exit", () => {
    clearInterval(timer);
    if (lines.length > 0) writeFileSync(file, `${lines.join("\n")}\n`);
  });
}

/** Parses the Prometheus text format into series -> value. */
async function scrape(svc: Service): Promise<Map<string, number>> {
  const text = await (await fetch(await svc.metricsUrl)).text();
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || line.trim() === "") continue;
    const i = line.lastIndexOf(" ");
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

/**
 * What the service itself saw between two scrapes, for one method: the share of
 * calls it finished within 10 and 25 ms (from its histogram), and its event-loop lag.
 */
function serverView(before: Map<string, number>, after: Map<string, number>, method: string) {
  const bucket = (m: Map<string, number>, le: string) => {
    for (const [k, v] of m) {
      if (k.startsWith("pgbackup_rpc_duration_seconds_bucket{") && k.includes(`le="${le}"`) && k.includes(`method="${method}"`) && k.includes('code="OK"')) return v;
    }
    return 0;
  };
  const n = bucket(after, "+Inf") - bucket(before, "+Inf");
  const within = (le: string) => (n === 0 ? null : Math.round(((bucket(after, le) - bucket(before, le)) / n) * 1000) / 10);
  return { calls: n, pctWithin10ms: within("0.01"), pctWithin25ms: within("0.025") };
}

/** Samples the service's resident memory while `fn` runs; returns fn's result and the peak in MB. */
async function withPeakRss<T>(pid: number, fn: () => Promise<T>): Promise<{ value: T; peakMb: number; startMb: number }> {
  let peak = 0;
  let start = 0;
  const sample = async () => {
    try {
      const status = await readFile(`/proc/${pid}/status`, "utf8");
      const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
      peak = Math.max(peak, kb);
    } catch {
      // gone
    }
  };
  await sample();
  start = peak;
  const timer = setInterval(() => void sample(), 50);
  try {
    const value = await fn();
    await sample();
    return { value, peakMb: peak / 1024, startMb: start / 1024 };
  } finally {
    clearInterval(timer);
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};

async function main() {
  await buildDatabase();
  if (args["build-only"]) return;
  const [{ size }] = await q<{ size: string }>(benchDb, "SELECT pg_database_size(current_database()) AS size");
  const dbBytes = Number(size);
  log(`database ${benchDb}: ${(dbBytes / 1e9).toFixed(2)} GB on disk`);
  if (await dbExists(controlDb)) await q("postgres", `DROP DATABASE "${controlDb}" WITH (FORCE)`);
  const work = await mkdtemp(path.join(os.tmpdir(), "bench-work-"));
  const svc = await startService();
  const pid = svc.child.pid!;
  const results: Record<string, number[]> = {};
  const rss: Record<string, number> = {};
  const add = (k: string, v: number) => (results[k] ??= []).push(v);
  const peak = (k: string, mb: number) => (rss[k] = Math.max(rss[k] ?? 0, mb));
  let refSize = 0;
  let ourSize = 0;
  let dumpSize = 0;
  let lastBackupId = "";
  let fresh = 0;
  const freshDb = () => `bench_restore_${process.pid}_${fresh++}`;

  const downloadFloor = await startFloorServer("connect");
  try {
    if (args["download-only"]) {
      await downloadOnly(svc, Number(args["download-only"]), downloadFloor);
      return;
    }
    if (args["restore-only"]) {
      await restoreOnly(svc, Number(args["restore-only"]), work, freshDb);
      return;
    }
    for (let i = 1; i <= (args["latency-only"] ? 0 : pairs); i++) {
      log(`pair ${i}/${pairs}: backups`);
      const refFile = path.join(work, "ref.sql.gz");
      // Which of the two goes first changes from pair to pair, so that what the first step after
      // another phase pays (see bench/NOTES.md, 2026-12-08, a fourteenth machine) falls on both.
      const ourBackup = () =>
        withPeakRss(pid, async () => {
          const t0 = performance.now();
          const { backup } = await svc.client.createBackup({ label: `bench ${i}` });
          return { ms: performance.now() - t0, backup: backup! };
        });
      let ours!: Awaited<ReturnType<typeof ourBackup>>;
      for (const kind of rotate(["reference", "ours"] as const, i - 1)) {
        await settle();
        if (kind === "reference") {
          add("backup.reference", await sh(`pg_dump --no-owner --no-acl ${benchDb} | gzip > '${refFile}'`));
          refSize = (await stat(refFile)).size;
        } else {
          ours = await ourBackup();
        }
      }
      add("backup.ours", ours.value.ms);
      add("backup.ours.dump", Number(ours.value.backup.duration?.seconds ?? 0) * 1000 + (ours.value.backup.duration?.nanos ?? 0) / 1e6);
      add(
        "backup.ours.verify",
        Number((ours.value.backup.metadata as { verification?: { durationMs?: number } }).verification?.durationMs ?? 0),
      );
      peak("backup", ours.peakMb);
      ourSize = Number(ours.value.backup.fileSize);
      dumpSize = Number(ours.value.backup.dumpSize);
      lastBackupId = ours.value.backup.id;
      await settle();
      add("backup.floor", await sh(`pg_dump ${benchDb} > /dev/null`));

      log(`pair ${i}/${pairs}: restores`);
      // Ours first in the first pair: a first timed restore that is still slow after the warm-up
      // then falls on ours, not on the reference (bench/NOTES.md, a fourteenth machine).
      if (i === 1) await warmUpRestore(refFile, freshDb());
      for (const kind of rotate(["ours", "reference"] as const, i - 1)) {
        if (kind === "reference") {
          add("restore.reference", await referenceRestore(refFile, freshDb()));
          continue;
        }
        const restore = await ourRestore(svc, lastBackupId, freshDb());
        add("restore.ours", restore.ms);
        peak("restore", restore.peakMb);
        for (const [step, ms] of Object.entries(restore.steps ?? {})) add(`restore.ours.${step}`, ms);
      }

      log(`pair ${i}/${pairs}: deep verification`);
      await settle();
      const deep = await withPeakRss(pid, async () => {
        const t0 = performance.now();
        const v = await svc.client.verifyBackup({ id: lastBackupId, deep: true });
        if (!v.verified) throw new Error(`deep verification failed: ${v.message}`);
        return performance.now() - t0;
      });
      add("deep.ours", deep.value);
      peak("deep", deep.peakMb);

      log(`pair ${i}/${pairs}: download`);
      // Our grpc-js client (a 4 MiB flow-control window), grpc-js's own 64 KiB window, and
      // the floor: the same file and client, from connect-node with nothing else to do.
      // Each pair starts with a different one: the first download after the restores is slower.
      await downloadFloor.register(backupFile(svc, ours.value.backup));
      for (const [key, window, url, via, rssRow] of rotate(downloadKinds(svc.url, downloadFloor.url), i - 1)) {
        await settle();
        const dl = await withPeakRss(pid, () => download(svc, lastBackupId, window, url, via));
        add(key, dl.value.ms);
        if (rssRow) peak(rssRow, dl.peakMb);
        if (dl.value.bytes !== ourSize) throw new Error(`download size mismatch (${key})`);
      }
    }

    log(`latency: ${historyRows} history rows, ${callers} concurrent callers during a backup`);
    await seedHistory();
    await settle();
    const lat = await withPeakRss(pid, () => latency(svc));
    peak("latency", lat.peakMb);
    const floors = args["skip-floors"] ? undefined : await latencyFloors(svc);

    if (args["latency-only"]) {
      process.stdout.write(JSON.stringify({ latency: { ...lat.value, floors }, peakRssMb: rss }, null, 2) + "\n");
      return;
    }
    const med = (k: string) => median(results[k]!);
    const table = {
      machine: { cpus: os.cpus().length, memGb: Math.round(os.totalmem() / 2 ** 30), node: process.version },
      database: { name: benchDb, scale, mixedMb, bytesOnDisk: dbBytes, dumpBytes: dumpSize },
      pairs,
      backup: {
        referenceMs: med("backup.reference"),
        oursMs: med("backup.ours"),
        oursDumpMs: med("backup.ours.dump"),
        oursVerifyMs: med("backup.ours.verify"),
        floorMs: med("backup.floor"),
        oursRatio: med("backup.ours") / med("backup.reference"),
        floorRatio: med("backup.floor") / med("backup.reference"),
        oursDumpMBps: dumpSize / 1e6 / (med("backup.ours") / 1000),
        referenceFileBytes: refSize,
        oursFileBytes: ourSize,
        fileSizeRatio: ourSize / refSize,
        oursCompressionPct: (1 - ourSize / dumpSize) * 100,
      },
      restore: {
        referenceMs: med("restore.reference"),
        oursMs: med("restore.ours"),
        oursRatio: med("restore.ours") / med("restore.reference"),
        ...Object.fromEntries(
          Object.keys(results)
            .filter((k) => k.startsWith("restore.ours."))
            .map((k) => [`${k.slice("restore.ours.".length)}Ms`, med(k)]),
        ),
      },
      deepVerification: { oursMs: med("deep.ours"), ratioToOurRestore: med("deep.ours") / med("restore.ours") },
      download: {
        ms: med("download.ms"),
        MBps: ourSize / 1e6 / (med("download.ms") / 1000),
        defaultWindowMs: med("download.defaultWindow.ms"),
        defaultWindowMBps: ourSize / 1e6 / (med("download.defaultWindow.ms") / 1000),
        floorMs: med("download.floor.ms"),
        floorMBps: ourSize / 1e6 / (med("download.floor.ms") / 1000),
      },
      latency: { ...lat.value, floors },
      peakRssMb: rss,
      raw: results,
    };
    printTable(table);
    const out = args.out ?? path.join("bench", "results", `${new Date().toISOString().replace(/[:.]/g, "-")}-s${scale}.json`);
    await mkdir(path.dirname(out), { recursive: true });
    await writeFile(out, JSON.stringify(table, null, 2) + "\n");
    log(`wrote ${out}`);
  } finally {
    await downloadFloor.stop();
    svc.child.kill("SIGTERM");
    await new Promise((r) => svc.child.once("exit", r));
    for (const row of await q<{ datname: string }>("postgres", "SELECT datname FROM pg_database WHERE datname LIKE $1", [
      `bench\\_restore\\_${process.pid}\\_%`,
    ])) {
      await q("postgres", `DROP DATABASE "${row.datname}" WITH (FORCE)`);
    }
    await q("postgres", `DROP DATABASE IF EXISTS "${controlDb}" WITH (FORCE)`);
    await rm(work, { recursive: true, force: true });
    await rm(svc.dataDir, { recursive: true, force: true });
  }
}

/**
 * The downloads each pair measures: [result key, flow-control window, server, the service's
 * path, the peak-RSS row (null: not the service's)]: our grpc-js client's window and grpc-js's
 * own on the lean path, and the connect-node floor; with `before`, also our client's window on
 * connect-node's path (the request compressed, see bench/download.ts), the path all downloads
 * took before the lean path served them. Only --download-only measures that one: it leaves the
 * service 25-50 MB larger, which would show in every later phase's peak.
 */
function downloadKinds(
  serviceUrl: string,
  floorUrl: string,
  before = false,
): [string, number | undefined, string, "lean" | "connect", string | null][] {
  return [
    ["download.ms", undefined, serviceUrl, "lean", "download"],
    ["download.defaultWindow.ms", 65535, serviceUrl, "lean", "download"],
    ...(before ? [["download.connectPath.ms", undefined, serviceUrl, "connect", "downloadConnectPath"] as [string, undefined, string, "connect", string]] : []),
    ["download.floor.ms", undefined, floorUrl, "connect", null],
  ];
}

/** `xs` starting at index `k` (mod its length). */
function rotate<T>(xs: T[], k: number): T[] {
  const i = k % xs.length;
  return [...xs.slice(i), ...xs.slice(0, i)];
}

/**
 * `--download-only N`: one backup, then N rounds of downloads: with each window, on
 * connect-node's path (as before the lean path served downloads), and from the
 * connect-node floor server, each round starting with a different one (a quick check of
 * the download path), with the service's RSS at each download's start and its peak.
 */
async function downloadOnly(svc: Service, n: number, floor: Awaited<ReturnType<typeof startFloorServer>>): Promise<void> {
  log("download-only: one backup");
  const { backup } = await svc.client.createBackup({ label: "bench download" });
  const size = Number(backup!.fileSize);
  await floor.register(backupFile(svc, backup!));
  const times: Record<string, number[]> = {};
  const peaks: Record<string, [number, number][]> = {};
  for (let i = 1; i <= n; i++) {
    for (const [key, window, url, via, rssRow] of rotate(downloadKinds(svc.url, floor.url, true), i - 1)) {
      await settle();
      const dl = await withPeakRss(svc.child.pid!, () => download(svc, backup!.id, window, url, via));
      if (dl.value.bytes !== size) throw new Error("download size mismatch");
      (times[key] ??= []).push(dl.value.ms);
      if (rssRow) (peaks[key] ??= []).push([dl.startMb, dl.peakMb]);
    }
  }
  for (const [key, ms] of Object.entries(times)) {
    const mbps = ms.map((t) => Math.round(size / 1e3 / t));
    const rss = peaks[key] ? `; the service's RSS at the start and its peak ${peaks[key].map(([a, b]) => `${a.toFixed(0)}->${b.toFixed(0)}`).join(", ")} MB` : "";
    log(`${key}: median ${Math.round(size / 1e3 / median(ms))} MB/s; each round: ${mbps.join(", ")}${rss}`);
  }
}

/**
 * `--restore-only N`: one backup of ours and one reference file, then N pairs of restores
 * into fresh databases, ours and `gunzip -c | psql`, each pair starting with the other one
 * (a quick check of the restore path, with the steps the service logs).
 */
async function restoreOnly(svc: Service, n: number, work: string, freshDb: () => string): Promise<void> {
  log("restore-only: one backup of ours, one reference file");
  const { backup } = await svc.client.createBackup({ label: "bench restore" });
  const refFile = path.join(work, "ref.sql.gz");
  await sh(`pg_dump --no-owner --no-acl ${benchDb} | gzip > '${refFile}'`);
  await warmUpRestore(refFile, freshDb());
  const times: { reference: number[]; ours: number[] } = { reference: [], ours: [] };
  const steps: Record<string, number[]> = {};
  let last = "";
  const kinds = {
    reference: () => referenceRestore(refFile, freshDb()),
    async ours() {
      const r = await ourRestore(svc, backup!.id, freshDb());
      const these = Object.entries(r.steps ?? {});
      for (const [step, v] of these) (steps[step] ??= []).push(v);
      last = `${these.map(([k, v]) => `${k} ${(v / 1000).toFixed(2)}`).join(", ")}; the service's peak RSS ${r.peakMb.toFixed(0)} MB`;
      return r.ms;
    },
  };
  for (let i = 1; i <= n; i++) {
    for (const kind of rotate(["ours", "reference"] as const, i - 1)) times[kind].push(await kinds[kind]());
    const [ref, ours] = [times.reference.at(-1)!, times.ours.at(-1)!];
    log(`pair ${i}/${n}: reference ${(ref / 1000).toFixed(2)} s, ours ${(ours / 1000).toFixed(2)} s (${(ours / ref).toFixed(2)}x); ours: ${last}`);
  }
  const med = (xs: number[]) => (median(xs) / 1000).toFixed(2);
  log(`restore: reference ${med(times.reference)} s, ours ${med(times.ours)} s, ${(median(times.ours) / median(times.reference)).toFixed(2)}x (medians)`);
  log(`ours, steps (medians): ${Object.entries(steps).map(([k, v]) => `${k} ${med(v)} s`).join(", ")}`);
}

/**
 * One reference restore, not timed, before the first timed one. The first restore of a run
 * was the slowest of its kind in every run on the thirteenth and fourteenth machines (15.6-22.4 s
 * against 12.5-17.7 s for the same restore later in the run). Until 2026-12-08 that first restore
 * was always the reference's, which flattered our ratio (bench/NOTES.md, a fourteenth machine).
 */
async function warmUpRestore(refFile: string, target: string): Promise<void> {
  log("warm-up: one reference restore, not timed");
  await referenceRestore(refFile, target);
}

/** `gunzip -c | psql` of the reference file into a new database, dropped after: the wall time. */
async function referenceRestore(refFile: string, target: string): Promise<number> {
  await settle();
  const ms = await sh(`createdb ${target} && gunzip -c '${refFile}' | psql -q -X -v ON_ERROR_STOP=1 -d ${target} > /dev/null`);
  await q("postgres", `DROP DATABASE "${target}" WITH (FORCE)`);
  return ms;
}

/**
 * Our RestoreBackup into a new database, dropped after: the wall time, the service's peak RSS,
 * and the steps the service logged for it (null if its log line did not come).
 */
async function ourRestore(svc: Service, id: string, target: string) {
  const before = svc.restoreSteps.length;
  await settle();
  const { value: ms, peakMb } = await withPeakRss(svc.child.pid!, async () => {
    const t0 = performance.now();
    for await (const _ of svc.client.restoreBackup({ id, confirmRestore: true, targetDatabase: target })) {
      // progress
    }
    return performance.now() - t0;
  });
  // Where our restore's time went, as the service logged it (the line may trail the reply).
  const steps = (await waitForLog(() => svc.restoreSteps.length > before, 2000)) ? svc.restoreSteps.at(-1)! : null;
  await q("postgres", `DROP DATABASE "${target}" WITH (FORCE)`);
  return { ms, peakMb, steps };
}

/**
 * Downloads a backup to a @grpc/grpc-js client in a process of its own (bench/download.ts),
 * hashing it; returns bytes and wall time.
 */
function download(svc: Service, id: string, window?: number, url = svc.url, via: "lean" | "connect" = "lean"): Promise<{ bytes: number; ms: number }> {
  const child = own(fork(fileURLToPath(new URL("./download.ts", import.meta.url)), [url, svc.token, id, String(window ?? "default"), via], {
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  }));
  return new Promise((resolve, reject) => {
    child.once("message", (m: { result?: { bytes: number; ms: number }; error?: string }) =>
      m.result ? resolve(m.result) : reject(new Error(`download: ${m.error}`)),
    );
    child.once("exit", (code) => reject(new Error(`the download process exited with ${code}`)));
  });
}

/** 100,000 plausible history rows, as years of backups of many databases would leave. */
async function seedHistory(): Promise<void> {
  await q(
    controlDb,
    `INSERT INTO backup_service.backup_history
       (backup_type, file_name, file_size, status, started_at, completed_at, duration_ms, database_size, table_count,
        row_count, compression_ratio, checksum, verified_at, triggered_by, retention_days, expires_at, database_name,
        dump_size, archive_format, compression, metadata)
     SELECT 'FULL', 'seed_' || g || '.dump.zst', 1000000 + g, (ARRAY['VERIFIED','VERIFIED','VERIFIED','FAILED','CORRUPTED'])[1 + g % 5]::backup_service.backup_status,
            now() - g * interval '5 minutes', now() - g * interval '5 minutes' + interval '1 minute', 60000, 5000000, 12,
            100000, 70.5, md5(g::text) || md5(g::text), now() - g * interval '5 minutes', 'seed', 30,
            now() + interval '30 days', 'seeddb_' || (g % 40), 3000000, 'custom', 'zstd', '{}'::jsonb
       FROM generate_series(1, ${historyRows}) g`,
  );
  await q(controlDb, "ANALYZE backup_service.backup_history");
}

/**
 * 50 callers alternating ListBackups and GetStats for the length of a backup,
 * each pausing about `thinkMs` between calls (a dashboard polls; it does not
 * hammer): about 500 calls a second in all. The callers run in `callerProcs`
 * processes of their own (bench/callers.ts), apart from this one's bookkeeping.
 */
async function latency(svc: Service) {
  return pollDuringBackup(svc, { url: svc.url, pid: svc.child.pid! }, true);
}

/**
 * The latency floors (bench/floor-server.ts): the same callers, during the same kind of
 * backup, against servers that answer with the service's own replies as constants. They
 * show what the HTTP/2 stack and the RPC framework cost here under this load, apart from
 * the service's own work.
 */
async function latencyFloors(svc: Service) {
  // The replies the callers get from the service: a page of 50 records, and the totals.
  const [list, stats] = await Promise.all([
    svc.client.listBackups({ page: 1, pageSize: 50 }),
    svc.client.getStats({}),
  ]);
  const floors: Record<string, Awaited<ReturnType<typeof pollDuringBackup>>> = {};
  for (const mode of ["connect", "http2"] as const) {
    const server = await startFloorServer(mode, toBinary(ListBackupsResponseSchema, list), toBinary(GetStatsResponseSchema, stats));
    try {
      log(`latency floor: ${mode}, the same callers during a backup`);
      await settle();
      floors[mode] = await pollDuringBackup(svc, server, false);
    } finally {
      await server.stop();
    }
  }
  return floors;
}

/** Starts a floor server (bench/floor-server.ts) with the replies it is to give. */
async function startFloorServer(mode: "connect" | "http2", list = new Uint8Array(0), stats = new Uint8Array(0)) {
  const child = own(fork(fileURLToPath(new URL("./floor-server.ts", import.meta.url)), [mode], {
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  }));
  const url = await new Promise<string>((resolve, reject) => {
    child.once("message", (m: { url: string }) => resolve(m.url));
    child.once("exit", (code) => reject(new Error(`the ${mode} floor server exited with ${code}`)));
    child.send({ list: Buffer.from(list).toString("base64"), stats: Buffer.from(stats).toString("base64") });
  });
  // A process ended by a signal has no exit code, only a signal code.
  const exited = () => child.exitCode !== null || child.signalCode !== null;
  return {
    url,
    pid: child.pid!,
    /** Makes a backup's file downloadable from it. */
    register: (file: { id: string; path: string; checksum: string }) =>
      new Promise<void>((resolve, reject) => {
        if (exited()) return reject(new Error(`the ${mode} floor server has exited`));
        const onExit = (code: number | null) => reject(new Error(`the ${mode} floor server exited with ${code}`));
        const onMessage = (m: { registered?: string }) => {
          if (m.registered === file.id) {
            child.off("message", onMessage);
            child.off("exit", onExit);
            resolve();
          }
        };
        child.on("message", onMessage);
        child.once("exit", onExit);
        child.send({ file });
      }),
    stop: async () => {
      if (exited()) return;
      const gone = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await gone;
    },
  };
}

/** Where the service keeps a backup's file, and what the floor server needs to send it. */
function backupFile(svc: Service, backup: { id: string; fileName: string; checksum: string }) {
  return { id: backup.id, path: path.join(svc.dataDir, "backups", backup.fileName), checksum: backup.checksum };
}

/** CPU time (user + system) a process has used so far, in ms. */
async function cpuMsOf(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / clockTicks;
}
const clockTicks = 100; // USER_HZ on Linux

/**
 * The callers poll `target` while the service makes a backup; `serviceView` adds what
 * the service itself saw (its /metrics), when the target is the service.
 */
async function pollDuringBackup(svc: Service, target: { url: string; pid: number }, serviceView: boolean) {
  const nProcs = Math.max(1, Math.min(callerProcs, callers));
  const procs = Array.from({ length: nProcs }, (_, p) => {
    const first = Math.floor((p * callers) / nProcs);
    const count = Math.floor(((p + 1) * callers) / nProcs) - first;
    // fork() runs the file with this process's node flags: tsx's loader, under `tsx bench/run.ts`.
    return own(fork(fileURLToPath(new URL("./callers.ts", import.meta.url)), [target.url, svc.token, String(count), String(thinkMs), String(first), callerClient], {
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    }));
  });
  const message = <T>(child: ChildProcess, key: string) =>
    new Promise<T>((resolve, reject) => {
      const onMessage = (m: Record<string, unknown>) => {
        if (key in m) {
          child.off("message", onMessage);
          resolve(m[key] as T);
        }
      };
      child.on("message", onMessage);
      child.once("exit", (code) => reject(new Error(`a callers process exited with ${code}`)));
    });
  await Promise.all(procs.map((c) => message(c, "ready")));
  // Warm-up (`--warmup-ms`: connections, caches, JIT), then measure for the length of a backup.
  // This process's own first-time work happens in the warm-up, not in the measured window
  // on the same two cores: the first fetch() loads undici, and the client's HTTP/2
  // connection may have gone idle. Measured with `perf record -a`: without this, this
  // process took 50-160 ms of a core in the first 0.2 s of the window.
  if (serviceView) await scrape(svc);
  await new Promise((r) => setTimeout(r, warmupMs));
  await svc.client.getStats({});
  const before = serviceView ? await scrape(svc) : new Map<string, number>(); // also restarts the service's event-loop lag sampling
  const results = procs.map((c) => message<CallersResult>(c, "result"));
  for (const c of procs) c.send({ measure: true });
  const cpuBefore = await cpuMsOf(target.pid);
  const started = performance.now();
  await (process.env.BENCH_NO_BACKUP
    ? new Promise((r) => setTimeout(r, 8000))
    : svc.client.createBackup({ label: "during latency" }));
  for (const c of procs) c.send({ stop: true });
  const seconds = (performance.now() - started) / 1000;
  const targetCpuMs = (await cpuMsOf(target.pid)) - cpuBefore;
  const all = await Promise.all(results);
  const samples = all.flatMap((r) => r.samples).sort((a, b) => a.at - b.at);
  if (process.env.BENCH_SAMPLES) {
    writeFileSync(
      process.env.BENCH_SAMPLES,
      samples.map((x) => `${x.at.toFixed(0)} ${x.ms.toFixed(1)} ${x.method}${x.ok ? "" : " error"}`).join("\n"),
    );
  }
  const measureStart = samples[0]?.at ?? 0;
  const ok = samples.filter((x) => x.ok);
  const list = ok.filter((x) => x.method === "ListBackups").map((x) => x.ms);
  const stats = ok.filter((x) => x.method === "GetStats").map((x) => x.ms);
  const after = serviceView ? await scrape(svc) : new Map<string, number>();
  const cpuSeconds = (m: Map<string, number>) => m.get("process_cpu_seconds_total") ?? NaN;
  const server = !serviceView ? undefined : {
    cpuPercentOfOneCore: Math.round(((cpuSeconds(after) - cpuSeconds(before)) / seconds) * 100),
    listBackups: serverView(before, after, "ListBackups"),
    getStats: serverView(before, after, "GetStats"),
    eventLoopLagMs: {
      p50: Math.round((after.get("nodejs_eventloop_lag_p50_seconds") ?? NaN) * 10000) / 10,
      p99: Math.round((after.get("nodejs_eventloop_lag_p99_seconds") ?? NaN) * 10000) / 10,
      max: Math.round((after.get("nodejs_eventloop_lag_max_seconds") ?? NaN) * 10000) / 10,
    },
    // Where the service's memory is at the end: its V8 heap, buffers outside it, and all of it.
    memoryMb: Object.fromEntries(
      [
        ["rss", "process_resident_memory_bytes"],
        ["heapTotal", "nodejs_heap_size_total_bytes"],
        ["heapUsed", "nodejs_heap_size_used_bytes"],
        ["external", "nodejs_external_memory_bytes"],
      ].map(([k, series]) => [k, Math.round((after.get(series!) ?? NaN) / 2 ** 20)]),
    ),
    // Garbage collections while measuring: how many of each kind, and the main thread's time in them.
    gc: Object.fromEntries(
      ["minor", "major", "incremental"].map((kind) => {
        const delta = (stat: string) =>
          (after.get(`nodejs_gc_duration_seconds_${stat}{kind="${kind}"}`) ?? 0) -
          (before.get(`nodejs_gc_duration_seconds_${stat}{kind="${kind}"}`) ?? 0);
        return [kind, { count: delta("count"), ms: Math.round(delta("sum") * 1000) }];
      }),
    ),
  };
  // The callers' processes share the two cores: what they cost and how late their loops ran
  // is reported beside the latencies they measure.
  const client = {
    processes: procs.length,
    kind: callerClient,
    cpuPercentOfOneCore: Math.round((all.reduce((t, r) => t + r.cpuMs, 0) / 1000 / seconds) * 100),
    eventLoopLagMs: {
      p99: Math.max(...all.map((r) => r.eventLoopLagMs.p99)),
      max: Math.max(...all.map((r) => r.eventLoopLagMs.max)),
    },
  };
  return {
    callers,
    thinkMs,
    historyRows,
    seconds,
    calls: samples.length,
    callsPerSecond: samples.length / seconds,
    // The answering process's CPU (all its threads) per call, from /proc.
    cpuMsPerCall: targetCpuMs / samples.length,
    server,
    client,
    errors: samples.length - ok.length,
    listBackups: { p50: pct(list, 50), p90: pct(list, 90), p99: pct(list, 99), over100ms: list.filter((v) => v > 100).length },
    getStats: { p50: pct(stats, 50), p90: pct(stats, 90), p99: pct(stats, 99), over100ms: stats.filter((v) => v > 100).length },
    slowCallsAtSecond: process.env.BENCH_SLOW_TIMES
      ? ok.filter((x) => x.ms > 100).map((x) => Math.round((x.at - measureStart) / 100) / 10)
      : undefined,
  };
}

/** The steps of our restore that the service logged, labelled, in order. */
function restoreSteps(r: Record<string, number>): [string, number][] {
  const labels: Record<string, string> = {
    schema: "schema (pg_restore, pre-data)",
    rows: "rows (the service, over the sessions)",
    bigRows: "rows of the biggest table (over the sessions)",
    restRows: "other rows, beside the biggest table's keys",
    indexes: "indexes, constraints (pg_restore --jobs)",
    load: "load (pg_restore -f - | psql)",
    counts: "row counts of every table",
  };
  return Object.entries(labels)
    .filter(([k]) => r[`${k}Ms`] !== undefined)
    .map(([k, label]) => [label, r[`${k}Ms`]!]);
}

async function waitForLog(ok: () => boolean, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > until) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

type LatencyResult = { errors: number; calls: number; cpuMsPerCall: number; listBackups: Record<string, number>; getStats: Record<string, number> };

function printTable(t: {
  backup: Record<string, number>;
  restore: Record<string, number>;
  deepVerification: Record<string, number>;
  download: Record<string, number>;
  latency: LatencyResult & { floors?: Record<string, LatencyResult> };
  peakRssMb: Record<string, number>;
  database: Record<string, unknown>;
}) {
  const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
  const r = (x: number) => `${x.toFixed(2)}x`;
  const mb = (b: number) => `${(b / 1e6).toFixed(1)} MB`;
  const rows: [string, string, string, string][] = [
    ["backup: reference pg_dump | gzip", s(t.backup.referenceMs!), "1.00x", `file ${mb(t.backup.referenceFileBytes!)}`],
    [
      "backup: ours (CreateBackup, verified)",
      s(t.backup.oursMs!),
      r(t.backup.oursRatio!),
      `file ${mb(t.backup.oursFileBytes!)} (${r(t.backup.fileSizeRatio!)} of ref), ${t.backup.oursDumpMBps!.toFixed(0)} MB/s of dump, ratio ${t.backup.oursCompressionPct!.toFixed(1)}%`,
    ],
    ["  of which: dump (pg_dump | zstd, counts, read back)", s(t.backup.oursDumpMs!), "", ""],
    ["  of which: verification after the dump", s(t.backup.oursVerifyMs!), "", ""],
    ["backup: floor pg_dump > /dev/null", s(t.backup.floorMs!), r(t.backup.floorRatio!), ""],
    ["restore: reference gunzip | psql", s(t.restore.referenceMs!), "1.00x", ""],
    ["restore: ours (RestoreBackup)", s(t.restore.oursMs!), r(t.restore.oursRatio!), ""],
    ...restoreSteps(t.restore).map(([label, ms]): [string, string, string, string] => [`  of which: ${label}`, s(ms), "", ""]),
    ["deep verification (vs our restore)", s(t.deepVerification.oursMs!), r(t.deepVerification.ratioToOurRestore!), ""],
    ["download to grpc-js (our client: 4 MiB window)", s(t.download.ms!), "", `${t.download.MBps!.toFixed(0)} MB/s`],
    ["download to grpc-js (its default 64 KiB window)", s(t.download.defaultWindowMs!), "", `${t.download.defaultWindowMBps!.toFixed(0)} MB/s`],
    ["  floor: connect-node sending the file (4 MiB window)", s(t.download.floorMs!), "", `${t.download.floorMBps!.toFixed(0)} MB/s`],
    [
      "ListBackups p50 / p99",
      `${t.latency.listBackups.p50!.toFixed(1)} / ${t.latency.listBackups.p99!.toFixed(1)} ms`,
      "",
      `${t.latency.calls} calls, ${t.latency.errors} errors`,
    ],
    [
      "GetStats p50 / p99",
      `${t.latency.getStats.p50!.toFixed(1)} / ${t.latency.getStats.p99!.toFixed(1)} ms`,
      "",
      `${t.latency.cpuMsPerCall.toFixed(2)} ms of the service's CPU per call`,
    ],
    ...Object.entries(t.latency.floors ?? {}).flatMap(([mode, f]): [string, string, string, string][] => [
      [
        `  floor: ${mode === "connect" ? "connect-node" : "node:http2"}, constant replies: ListBackups`,
        `${f.listBackups.p50!.toFixed(1)} / ${f.listBackups.p99!.toFixed(1)} ms`,
        "",
        `${f.calls} calls, ${f.errors} errors, ${f.cpuMsPerCall.toFixed(2)} ms of CPU per call`,
      ],
      [`  floor: ${mode === "connect" ? "connect-node" : "node:http2"}, constant replies: GetStats`, `${f.getStats.p50!.toFixed(1)} / ${f.getStats.p99!.toFixed(1)} ms`, "", ""],
    ]),
    [
      "service peak RSS, MB",
      "",
      "",
      Object.entries(t.peakRssMb)
        .map(([k, v]) => `${k} ${v.toFixed(0)}`)
        .join(", "),
    ],
  ];
  const w = [0, 1, 2].map((i) => Math.max(...rows.map((row) => row[i]!.length)));
  process.stdout.write(`\nbenchmark database ${String(t.database.name)} (${mb(Number(t.database.bytesOnDisk))} on disk, dump ${mb(Number(t.database.dumpBytes))})\n\n`);
  for (const row of rows) {
    process.stdout.write(`${row[0].padEnd(w[0]!)}  ${row[1].padStart(w[1]!)}  ${row[2].padStart(w[2]!)}  ${row[3]}\n`);
  }
  process.stdout.write("\n");
}

await main();
