/**
 * The restore's reader of the decompressor's output: a real child process
 * writing into the socket, read into reused buffers.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SlabSource } from "../src/dump/slab-source.js";

let dir: string;
let n = 0;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "bs-slab-"));
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A child writing about `mb` MB of numbered lines (different bytes everywhere) to its stdout, into a SlabSource. */
async function childInto(mb: number) {
  const { source, childEnd } = await SlabSource.open(path.join(dir, `s${n++}.sock`));
  const script = `seq 1 ${Math.round((mb * 1e6) / 8)}`;
  const child = spawn("sh", ["-c", script], { stdio: ["ignore", childEnd, "inherit"] });
  childEnd.destroy();
  const closed = once(child, "close") as Promise<[number | null, string | null]>;
  const expected = new Promise<string>((resolve, reject) => {
    const again = spawn("sh", ["-c", `${script} | md5sum`], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    again.stdout.on("data", (d: Buffer) => (out += d.toString()));
    again.once("close", (code) => (code === 0 ? resolve(out.split(" ")[0]!) : reject(new Error(`md5sum ${code}`))));
  });
  return { source, closed, expected };
}

describe("SlabSource", () => {
  it("hands on every byte a child writes, in order, with a slow reader, in a handful of reused slabs", async () => {
    const { source, closed, expected } = await childInto(48);
    const hash = createHash("md5");
    let reads = 0;
    for (let r = await source.next(); !r.done; r = await source.next()) {
      hash.update(r.value);
      // A reader that falls behind: the socket is paused and resumed.
      if (++reads % 20 === 0) await new Promise((res) => setTimeout(res, 20));
    }
    expect(hash.digest("hex")).toBe(await expected);
    expect(source.slabCount).toBeLessThanOrEqual(8); // 48 MiB went through at most 8 MiB of slabs
    await closed;
  }, 60_000);

  it("never reads into a piece that is held until it is released", async () => {
    const { source, closed, expected } = await childInto(24);
    const hash = createHash("md5");
    const held: { piece: Buffer; copy: Buffer; release: () => void }[] = [];
    let reads = 0;
    for (let r = await source.next(); !r.done; r = await source.next()) {
      hash.update(r.value);
      reads++;
      // Hold a piece of every 50th region for the next 500 (megabytes, longer than the slabs
      // take to come round), as a COPY session whose socket is far behind would.
      if (reads % 50 === 0) {
        const piece = r.value.subarray(0, Math.min(1000, r.value.length));
        held.push({ piece, copy: Buffer.from(piece), release: source.hold(piece) });
      }
      while (held.length > 10) {
        const h = held.shift()!;
        expect(h.piece.equals(h.copy)).toBe(true);
        h.release();
      }
    }
    for (const h of held) expect(h.piece.equals(h.copy)).toBe(true);
    expect(hash.digest("hex")).toBe(await expected);
    expect(source.hold(Buffer.from("not ours"))).toBeTypeOf("function"); // a buffer it did not give: nothing to hold
    await closed;
  }, 60_000);

  it("stopped halfway, ends at once, and the child writing into it is not left waiting", async () => {
    const { source, closed } = await childInto(512);
    const first = await source.next();
    expect(first.done).toBe(false);
    source.destroy();
    expect((await source.next()).done).toBe(true);
    const [code, signal] = await closed;
    // head gets EPIPE (or SIGPIPE) rather than blocking on a socket no one reads.
    expect(code !== 0 || signal !== null).toBe(true);
  }, 60_000);
});
