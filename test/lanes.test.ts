/**
 * The restore's own loader, piece by piece, against pg_dump's and
 * pg_restore's real output: the custom-archive reader, and rows spread over
 * several COPY sessions.
 */
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createCopyLanes } from "../src/dump/copy-lanes.js";
import { createRestoreEngine } from "../src/dump/restore-engine.js";
import { resolveTools } from "../src/dump/tools.js";
import { tableKey, type TableRowCounts } from "../src/domain/backup.js";
import type { LoadProgress, RestoreEngine } from "../src/domain/ports.js";
import { copyTarget, CustomArchiveReader, type TocEntry } from "../src/dump/custom-archive.js";
import { connect, createDatabase, dropDatabase, PG_HOST, PG_PORT, PG_USER, sql, uniqueName } from "./helpers.js";

const src = uniqueName("bs_lanes_src");
const targets: string[] = [];
let dir: string;
let archiveFile: string;
let archive: Buffer;
/** The source's archive, compressed as the service stores it. */
let srcZst: { file: string; dumpBytes: number };
const ROWS = 40_000;
const LIMITED = uniqueName("bs_lanes_limited");
const BIG_ROWS = 3;

function run(cmd: string, args: string[]): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      env: { ...process.env, PGHOST: PG_HOST, PGPORT: String(PG_PORT), PGUSER: PG_USER },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const out: Buffer[] = [];
    let err = "";
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.once("close", (code) => (code === 0 ? resolve(Buffer.concat(out)) : reject(new Error(`${cmd} ${code}: ${err}`))));
  });
}

/** The archive as a stream of pieces of random sizes (1 byte to 4 KiB), so that headers and rows straddle them. */
async function* inPieces(data: Buffer, seed: number): AsyncGenerator<Buffer> {
  let x = seed;
  for (let at = 0; at < data.length; ) {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    const n = 1 + (x % 4096);
    yield Buffer.from(data.subarray(at, at + n)); // a copy: the reader may write into what it is given
    at += n;
  }
}

async function newTarget(): Promise<string> {
  const name = uniqueName("bs_lanes_dst");
  targets.push(name);
  await createDatabase(name);
  await run("pg_restore", ["--section=pre-data", "--exit-on-error", `--dbname=${name}`, archiveFile]);
  return name;
}

const contents = (db: string, table: string) =>
  sql<{ n: string; h: string }>(db, `SELECT count(*) AS n, md5(string_agg(x::text, '|' ORDER BY x.id)) AS h FROM ${table} x`).then((r) => r[0]);

/** `db` dumped as the service dumps it (pg_dump -Fc -Z0, then zstd), with `args`; the file and its uncompressed size. */
async function zstdArchive(name: string, db: string, args: string[] = []): Promise<{ file: string; dumpBytes: number }> {
  const dump = await run("pg_dump", ["-Fc", "-Z0", ...args, `--dbname=${db}`]);
  const raw = path.join(dir, `${name}.dump`);
  await writeFile(raw, dump);
  const file = `${raw}.zst`;
  await writeFile(file, await run("zstd", ["-q", "-c", raw]));
  return { file, dumpBytes: dump.length };
}

/** A restore engine connected as `user`, loading over two sessions. */
async function engineAs(user = PG_USER) {
  return createRestoreEngine({
    target: { host: PG_HOST, port: PG_PORT, user, password: undefined, database: "postgres", sslmode: undefined },
    tools: await resolveTools(undefined),
    jobs: 2,
  });
}

/** Creates `scratch` (like `like`) and loads the archive into it. */
async function loadInto(
  engine: RestoreEngine,
  scratch: string,
  archiveOf: { file: string; dumpBytes: number },
  more: { like?: string; tableRowCounts?: TableRowCounts; onProgress?: (p: LoadProgress) => void } = {},
) {
  targets.push(scratch);
  await engine.createDatabase(scratch, more.like ?? null);
  return engine.load(
    {
      path: archiveOf.file,
      format: "custom",
      compression: "zstd",
      database: scratch,
      expectedBytes: 0,
      dumpBytes: archiveOf.dumpBytes,
      tableRowCounts: more.tableRowCounts,
    },
    more.onProgress ?? (() => undefined),
    new AbortController().signal,
  );
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "bs-lanes-"));
  await createDatabase(src);
  // Rows with what COPY text escapes (newlines, tabs, backslashes), multibyte text, nulls,
  // binary data, and a few rows of 3 MB, longer than any piece.
  await sql(
    src,
    `CREATE TABLE t (id int, body text, data bytea, note text);
     INSERT INTO t SELECT g, repeat('x', g % 300) || E'\\n\\t\\\\ line ' || g || ' äö€😀\r',
                          decode(md5(g::text), 'hex'), CASE WHEN g % 7 = 0 THEN NULL ELSE 'n' || g END
       FROM generate_series(1, ${ROWS}) g;
     INSERT INTO t SELECT ${ROWS} + g, repeat(E'long\\n', 600000), NULL, 'big' FROM generate_series(1, ${BIG_ROWS}) g;
     CREATE TABLE s (id int primary key, label text);
     INSERT INTO s SELECT g, 'small ' || g FROM generate_series(1, 10) g;`,
  );
  // Owned by a role that is not a superuser, so that one can restore the archive (below).
  await sql("postgres", `CREATE ROLE ${LIMITED} LOGIN CREATEDB`);
  await sql(src, `ALTER TABLE t OWNER TO ${LIMITED}; ALTER TABLE s OWNER TO ${LIMITED}`);
  archive = await run("pg_dump", ["-Fc", "-Z0", `--dbname=${src}`]);
  archiveFile = path.join(dir, "src.dump");
  await writeFile(archiveFile, archive);
  srcZst = { file: `${archiveFile}.zst`, dumpBytes: archive.length };
  await writeFile(srcZst.file, await run("zstd", ["-q", "-c", archiveFile]));
}, 120_000);

afterAll(async () => {
  for (const d of [src, ...targets]) await dropDatabase(d);
  await sql("postgres", `DROP ROLE IF EXISTS ${LIMITED}`).catch(() => undefined);
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("the custom-archive reader", () => {
  it("reads the table of contents pg_restore reads, and each table's rows as pg_restore prints them", async () => {
    const reader = new CustomArchiveReader(inPieces(archive, 7));
    const head = await reader.readHead();
    expect(head.compression).toBe(0);
    const listing = (await run("pg_restore", ["--list", archiveFile])).toString();
    expect(head.entries.length).toBe(Number(/TOC Entries: (\d+)/.exec(listing)![1]));
    const listed = [...listing.matchAll(/^(\d+);/gm)].map((m) => Number(m[1]));
    const ours = new Set(head.entries.map((e) => e.dumpId));
    expect(listed.filter((id) => !ours.has(id))).toEqual([]);
    expect(head.headBytes.equals(archive.subarray(0, head.headBytes.length))).toBe(true);

    const byId = new Map(head.entries.map((e) => [e.dumpId, e]));
    const seen: string[] = [];
    for (let id = await reader.nextBlock(); id !== null; id = await reader.nextBlock()) {
      const entry = byId.get(id)!;
      expect(entry.desc).toBe("TABLE DATA");
      const parts: Buffer[] = [];
      const n = await reader.readData(async (p) => void parts.push(Buffer.from(p)));
      const ours = Buffer.concat(parts);
      expect(ours.length).toBe(n);
      // pg_restore's script: the COPY statement, the rows, then "\.".
      const script = await run("pg_restore", ["--data-only", `--table=${entry.tag}`, "--file=-", archiveFile]);
      const start = script.indexOf(entry.copyStmt!) + Buffer.byteLength(entry.copyStmt!);
      const end = script.indexOf("\\.\n", start);
      const rows = script.subarray(start, end);
      expect(ours.subarray(0, rows.length).equals(rows), `rows of ${entry.tag}`).toBe(true);
      expect(ours.subarray(rows.length).toString()).toMatch(/^\\\.\n*$/);
      seen.push(String(entry.tag));
    }
    expect(seen.sort()).toEqual(["s", "t"]);
  });

  it("hands on every row as a view of a buffer it was given, where headers straddle two of them too", async () => {
    // Each piece in memory of its own, so that a copy made by the reader cannot pass for one.
    const given = new Set<ArrayBufferLike>();
    async function* own(): AsyncGenerator<Buffer> {
      for await (const piece of inPieces(archive, 13)) {
        const b = Buffer.allocUnsafeSlow(piece.length);
        piece.copy(b);
        given.add(b.buffer);
        yield b;
      }
    }
    const reader = new CustomArchiveReader(own());
    await reader.readHead();
    let pieces = 0;
    let foreign = 0;
    const parts: Buffer[] = [];
    for (let id = await reader.nextBlock(); id !== null; id = await reader.nextBlock()) {
      await reader.readData(async (p) => {
        pieces++;
        if (!given.has(p.buffer)) foreign++;
        parts.push(Buffer.from(p));
      });
    }
    // Pieces of 1 byte to 4 KiB over some 40,000 rows: thousands of reads, many cut a header.
    expect(pieces).toBeGreaterThan(500);
    expect(foreign).toBe(0);
    // And the rows are still whole: the same bytes as a reader given the archive in one piece.
    const whole = new CustomArchiveReader((async function* () { yield Buffer.from(archive); })());
    await whole.readHead();
    const expected: Buffer[] = [];
    for (let id = await whole.nextBlock(); id !== null; id = await whole.nextBlock()) {
      await whole.readData(async (p) => void expected.push(Buffer.from(p)));
    }
    expect(Buffer.concat(parts).equals(Buffer.concat(expected))).toBe(true);
  });

  it("refuses what it does not read: not an archive, an archive cut short", async () => {
    await expect(new CustomArchiveReader(inPieces(Buffer.from("-- PostgreSQL database dump\n"), 1)).readHead()).rejects.toThrow(
      /not a pg_dump custom archive/,
    );
    const cut = new CustomArchiveReader(inPieces(archive.subarray(0, 200), 3));
    await expect(cut.readHead()).rejects.toThrow(/the archive ends inside/);
    // Cut inside a table's data.
    const reader = new CustomArchiveReader(inPieces(archive.subarray(0, archive.length - 1000), 5));
    await reader.readHead();
    await expect(
      (async () => {
        while ((await reader.nextBlock()) !== null) await reader.readData(async () => undefined);
      })(),
    ).rejects.toThrow(/ends inside a table's data/);
  });
});

describe("COPY lanes", () => {
  async function load(db: string, sessions: number, splitAfter: number) {
    const clients: pg.Client[] = [];
    for (let i = 0; i < sessions; i++) clients.push(await connect(db));
    try {
      const lanes = createCopyLanes(clients, { splitAfter });
      const reader = new CustomArchiveReader(inPieces(archive, 11));
      const head = await reader.readHead();
      const byId = new Map<number, TocEntry>(head.entries.map((e) => [e.dumpId, e]));
      const rows: Record<string, number[]> = {};
      for (let id = await reader.nextBlock(); id !== null; id = await reader.nextBlock()) {
        const entry = byId.get(id)!;
        rows[entry.tag!] = await lanes.table(entry.copyStmt!, (send) => reader.readData(send));
      }
      return rows;
    } finally {
      for (const c of clients) await c.end();
    }
  }

  it("spreads a big table's rows over two sessions and loads every row as it was", async () => {
    const db = await newTarget();
    const rows = await load(db, 2, 1 << 20);
    // Both sessions loaded rows of the big table; the small one stayed on one.
    expect(rows.t!.length).toBe(2);
    expect(Math.min(...rows.t!)).toBeGreaterThan(1000);
    expect(rows.t![0]! + rows.t![1]!).toBe(ROWS + BIG_ROWS);
    expect(rows.s).toEqual([10]);
    expect(await contents(db, "t")).toEqual(await contents(src, "t"));
    expect(await contents(db, "s")).toEqual(await contents(src, "s"));
  });

  it("with one session, loads the same", async () => {
    const db = await newTarget();
    const rows = await load(db, 1, 1 << 20);
    expect(rows.t).toEqual([ROWS + BIG_ROWS]);
    expect(await contents(db, "t")).toEqual(await contents(src, "t"));
  });

  it("a row the server refuses fails the table with the server's reason", async () => {
    const db = await newTarget();
    const clients = [await connect(db), await connect(db)];
    try {
      const lanes = createCopyLanes(clients, { splitAfter: 16 });
      const bad = lanes.table("COPY public.s (id, label) FROM stdin;", async (send) => {
        for (let i = 1; i <= 50; i++) await send(Buffer.from(`${i}\tok\n`));
        await send(Buffer.from("fifty-one\tnot a number\n"));
      });
      await expect(bad).rejects.toThrow(/invalid input syntax for type integer: "fifty-one"/);
    } finally {
      for (const c of clients) await c.end().catch(() => undefined);
    }
  });
});

describe("the restore engine", () => {
  it("loads over the sessions a connection limit leaves a role that is not a superuser", async () => {
    // The scratch database copies the target's limit: one session here, which such a role
    // cannot exceed. The load goes over one session instead of failing.
    const like = uniqueName("bs_lanes_like");
    const scratch = uniqueName("bs_lanes_scratch");
    targets.push(like);
    await sql("postgres", `CREATE DATABASE ${like} OWNER ${LIMITED} CONNECTION LIMIT 1`);
    const summary = await loadInto(await engineAs(LIMITED), scratch, srcZst, { like });
    expect(summary.how).toBe("over 1 session");
    expect(await contents(scratch, "t")).toEqual(await contents(src, "t"));
    const [{ n }] = await sql<{ n: string }>(scratch, "SELECT count(*) AS n FROM pg_indexes WHERE tablename = 's'");
    expect(Number(n)).toBe(1); // the post-data section (the primary key) was restored too
  });

  it("reports each table's rows as its own COPY committed them; rows loaded through a partitioned root are counted", async () => {
    const source = uniqueName("bs_lanes_counts");
    const scratch = uniqueName("bs_lanes_counts_dst");
    targets.push(source);
    await createDatabase(source);
    await sql(
      source,
      `CREATE SCHEMA "Odd ""Schema""";
       CREATE TABLE "Odd ""Schema"""."Mixed Case" (id int);
       INSERT INTO "Odd ""Schema"""."Mixed Case" SELECT generate_series(1, 1234);
       CREATE TABLE plain (id int); INSERT INTO plain SELECT generate_series(1, 20000);
       CREATE TABLE empty (id int);
       CREATE TABLE m (id int, at int) PARTITION BY RANGE (at);
       CREATE TABLE m_low PARTITION OF m FOR VALUES FROM (0) TO (100);
       CREATE TABLE m_high PARTITION OF m FOR VALUES FROM (100) TO (200);
       INSERT INTO m SELECT g, g % 200 FROM generate_series(1, 3000) g;`,
    );
    // Partitions' rows go through the root: each COPY names "m", not the partition it fills.
    const engine = await engineAs();
    const summary = await loadInto(engine, scratch, await zstdArchive("counts", source, ["--load-via-partition-root"]));
    expect(summary.how).toBe("over 2 sessions");
    expect(summary.rowCounts).toEqual({
      [tableKey('Odd "Schema"', "Mixed Case")]: 1234,
      [tableKey("public", "plain")]: 20000,
      [tableKey("public", "empty")]: 0,
    });
    const counted = await engine.countRows(scratch, undefined, summary.rowCounts);
    const truth = await engine.countRows(scratch);
    expect(counted).toEqual(truth);
    expect(truth["public.m_low"]! + truth["public.m_high"]!).toBe(3000);
    expect(truth["public.m_low"]).toBe(1500);
  });

  it("names the table a COPY loads, quoted or not", () => {
    expect(copyTarget("COPY public.t (id, body) FROM stdin;\n")).toEqual({ schema: "public", name: "t" });
    expect(copyTarget('COPY "A ""b"".c"."T 1" (id) FROM stdin;\n')).toEqual({ schema: 'A "b".c', name: "T 1" });
    expect(copyTarget("COPY t FROM stdin;\n")).toEqual({ schema: null, name: "t" });
    expect(copyTarget("COPY (SELECT 1) TO stdout;")).toBeNull();
  });

  it("where the temporary directory's path is too long for a socket, reads the decompressor through a pipe", async () => {
    const scratch = uniqueName("bs_lanes_longtmp");
    const long = path.join(dir, "a-temporary-directory-whose-path-is-longer-than-a-unix-socket-name-may-be".repeat(2));
    await mkdir(long);
    const engine = await engineAs();
    const saved = process.env.TMPDIR;
    process.env.TMPDIR = long;
    try {
      expect(os.tmpdir()).toBe(long);
      expect((await loadInto(engine, scratch, srcZst)).how).toBe("over 2 sessions");
    } finally {
      if (saved === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = saved;
    }
    expect(await contents(scratch, "t")).toEqual(await contents(src, "t"));
  });

  it("rows longer than the decompressor's read buffers load intact over two sessions while those buffers are reused", async () => {
    // The 3 MB rows span several of the 1 MiB buffers the decompressor's output is read into,
    // and stay in a session's socket while later buffers are read: a buffer reused too early
    // shows up as a row loaded twice or cut short. Three loads, since it depends on timing.
    const engine = await engineAs();
    const expected = await contents(src, "t");
    for (let i = 0; i < 3; i++) {
      const scratch = uniqueName("bs_lanes_slabs");
      expect((await loadInto(engine, scratch, srcZst)).how).toBe("over 2 sessions");
      expect(await contents(scratch, "t")).toEqual(expected);
    }
  });

  it("loads the biggest table first and builds its keys while the tables before it load from a second pass", async () => {
    // "a_small" comes first in the archive and references "b_big", the biggest table: b_big's
    // rows go in first, its primary key and index are built while a_small loads, and the
    // foreign key between them comes last, as pg_restore would do it.
    const source = uniqueName("bs_lanes_order");
    const scratch = uniqueName("bs_lanes_order_dst");
    targets.push(source);
    await createDatabase(source);
    await sql(
      source,
      `CREATE TABLE b_big (id int PRIMARY KEY, label text UNIQUE, body text);
       CREATE INDEX b_big_body ON b_big (body);
       INSERT INTO b_big SELECT g, 'b' || g, repeat('y', g % 50) FROM generate_series(1, 60000) g;
       CREATE TABLE a_small (id int PRIMARY KEY, big_id int REFERENCES b_big (id), note text);
       INSERT INTO a_small SELECT g, g * 3, 'a' || g FROM generate_series(1, 5000) g;
       CREATE TABLE c_after (id int PRIMARY KEY);
       INSERT INTO c_after SELECT generate_series(1, 100);
       CREATE SEQUENCE s_seq; SELECT setval('s_seq', 4242);`,
    );
    const progress: number[] = [];
    const summary = await loadInto(await engineAs(), scratch, await zstdArchive("order", source), {
      tableRowCounts: { [tableKey("public", "a_small")]: 5000, [tableKey("public", "b_big")]: 60000, [tableKey("public", "c_after")]: 100 },
      onProgress: (p) => progress.push(p.fraction),
    });
    expect(summary.how).toBe("over 2 sessions, public.b_big first");
    expect(summary.rowCounts).toEqual({
      [tableKey("public", "a_small")]: 5000,
      [tableKey("public", "b_big")]: 60000,
      [tableKey("public", "c_after")]: 100,
    });
    for (const t of ["a_small", "b_big", "c_after"]) expect(await contents(scratch, t)).toEqual(await contents(source, t));
    // The same schema: keys, the unique constraint, the index, the foreign key, the sequence.
    const schema = async (db: string) => (await run("pg_dump", ["-s", `--dbname=${db}`])).toString().replace(/^(--.*|\\(un)?restrict .*)$/gm, "");
    expect(await schema(scratch)).toBe(await schema(source));
    const [{ v }] = await sql<{ v: string }>(scratch, "SELECT last_value AS v FROM s_seq");
    expect(Number(v)).toBe(4242);
    expect(progress.every((f, i) => i === 0 || f >= progress[i - 1]!)).toBe(true);
    expect(progress.at(-1)).toBe(1);
  });
});

describe("the restore's connections", () => {
  it("a cancel that lands while a connection is being made ends the wait at once", async () => {
    const { createLibpq } = await import("../src/dump/libpq.js");
    const libpq = createLibpq({ host: PG_HOST, port: PG_PORT, user: PG_USER, password: undefined, database: "postgres", sslmode: undefined });
    // node-postgres, ended before its startup message is answered, never settles its connect():
    // the loader would then wait for ever on a cancelled restore, its scratch database kept.
    for (let i = 0; i < 5; i++) {
      const ac = new AbortController();
      const connecting = libpq.connect("postgres", ac.signal);
      ac.abort(new Error("cancelled"));
      const outcome = await Promise.race([
        connecting.then(
          async (c) => {
            await c.end();
            return "connected";
          },
          (err: unknown) => (err as Error).message,
        ),
        new Promise((r) => setTimeout(() => r("still waiting after 5 s"), 5000)),
      ]);
      expect(outcome).toBe("cancelled");
    }
  });
});
