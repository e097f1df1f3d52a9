/**
 * How a restore feeds the backup file into the decompressor: real files, real
 * child processes reading their stdin.
 */
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { feedFile } from "../src/dump/restore-engine.js";
import { isFileReadError } from "../src/errors.js";

let dir: string;
let file: string;
let data: Buffer;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "bs-feed-"));
  file = path.join(dir, "backup.bin");
  // Five and a half reads' worth: the two buffers take turns several times, the last one part full.
  data = randomBytes(5.5 * (1 << 20));
  await writeFile(file, data);
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A child that reads its stdin through `sh -c cmd`, with what it printed. */
function child(cmd: string) {
  const c = spawn("sh", ["-c", cmd], { stdio: ["pipe", "pipe", "inherit"] });
  const out: Buffer[] = [];
  c.stdout.on("data", (d: Buffer) => out.push(d));
  const exit = once(c, "close").then(() => Buffer.concat(out));
  return { stdin: c.stdin, exit, child: c };
}

describe("feeding the backup file to the decompressor", () => {
  it("hands over every byte in order, and counts them", async () => {
    const c = child("sha256sum -b");
    let counted = 0;
    const err = await feedFile(file, c.stdin, (n) => (counted += n), new AbortController().signal);
    expect(err).toBeNull();
    expect((await c.exit).toString().split(" ")[0]).toBe(createHash("sha256").update(data).digest("hex"));
    expect(counted).toBe(data.length);
  });

  it("reads into two buffers that take turns, each read into again only once its write is done", async () => {
    const memory = new Set<ArrayBufferLike>();
    let offset = 0;
    let intact = true;
    const slow = new Writable({
      write(chunk: Buffer, _enc, done) {
        memory.add(chunk.buffer);
        const at = offset;
        offset += chunk.length;
        // Done a little later: were the buffer read into before, these bytes would have changed.
        setTimeout(() => {
          if (!chunk.equals(data.subarray(at, at + chunk.length))) intact = false;
          done();
        }, 5);
      },
    });
    expect(await feedFile(file, slow, () => undefined, new AbortController().signal)).toBeNull();
    expect(offset).toBe(data.length);
    expect(intact).toBe(true);
    expect(memory.size).toBe(2);
  });

  it("a file that cannot be read is the file's failure, told apart from the child's", async () => {
    const missing = child("cat > /dev/null");
    const gone = await feedFile(path.join(dir, "missing"), missing.stdin, () => undefined, new AbortController().signal);
    expect(gone).not.toBeNull();
    expect(isFileReadError(gone)).toBe(true);
    await missing.exit;

    // A directory opens, and fails at the first read (EISDIR).
    const sub = path.join(dir, "a-directory");
    await mkdir(sub);
    const dirChild = child("cat > /dev/null");
    const unreadable = await feedFile(sub, dirChild.stdin, () => undefined, new AbortController().signal);
    expect((unreadable as NodeJS.ErrnoException).code).toBe("EISDIR");
    expect(isFileReadError(unreadable)).toBe(true);
    await dirChild.exit;
  });

  it("a child that stops reading ends the feed with its failure, not the file's, and nothing hangs", async () => {
    const c = child("head -c 1000 > /dev/null");
    const err = await feedFile(file, c.stdin, () => undefined, new AbortController().signal);
    expect(err).not.toBeNull();
    expect(isFileReadError(err)).toBe(false);
    await c.exit;
  });

  it("an abort ends the feed at once, while the child reads nothing", async () => {
    // A child that never reads: the pipe fills and the feed waits on its write.
    const c = child("exec sleep 30");
    const ac = new AbortController();
    const fed = feedFile(file, c.stdin, () => undefined, ac.signal);
    await new Promise((r) => setTimeout(r, 200));
    const t0 = performance.now();
    ac.abort(new Error("the call was cancelled"));
    const err = await fed;
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(err?.message).toBe("the call was cancelled");
    c.child.kill();
    await c.exit;
  });
});
