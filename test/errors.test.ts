/**
 * Which failures are the backup disk's (a file that cannot be opened or read) rather than the
 * work's: real errors from the file system and from a pipe into a stopped child.
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createReadStream } from "node:fs";
import { describe, expect, it } from "vitest";
import { DomainError, isFileReadError } from "../src/errors.js";
import { tempDir } from "./helpers.js";

async function errorOf(p: Promise<unknown>): Promise<Error> {
  return p.then(
    () => {
      throw new Error("expected a failure");
    },
    (e: unknown) => e as Error,
  );
}

describe("isFileReadError", () => {
  it("is true for a file that cannot be opened or read, also as a DomainError's cause", async () => {
    const dir = await tempDir("bs-errors-");
    const readAll = (file: string) =>
      new Promise<void>((resolve, reject) => createReadStream(file).on("error", reject).on("end", () => resolve()).resume());
    const missing = await errorOf(readAll(`${dir}/no-such-file`));
    // A directory opens, and fails at the first read (EISDIR).
    const unreadable = await errorOf(readAll(dir));
    expect([missing, unreadable].map((e) => (e as { syscall?: string }).syscall)).toEqual(["open", "read"]);
    expect(isFileReadError(missing)).toBe(true);
    expect(isFileReadError(unreadable)).toBe(true);
    expect(isFileReadError(new DomainError("dump_failed", "reading the backup file failed", { cause: unreadable }))).toBe(true);
  });

  it("is false for a write into a child that has stopped, and for errors with no system call", async () => {
    // A reader that takes one byte and exits, fed as a restore feeds its decompressor.
    const child = spawn("head", ["-c", "1"], { stdio: ["pipe", "ignore", "ignore"] });
    const written = await errorOf(
      new Promise((resolve, reject) => {
        child.stdin!.on("error", reject);
        const more = () => {
          while (child.stdin!.write(Buffer.alloc(1 << 16)));
          child.stdin!.once("drain", more);
        };
        more();
        setTimeout(resolve, 10_000);
      }),
    );
    if (child.exitCode === null && child.signalCode === null) await once(child, "exit");
    expect((written as { syscall?: string }).syscall).toBe("write");
    expect(isFileReadError(written)).toBe(false);
    expect(isFileReadError(new DomainError("dump_failed", "psql exited with code 3"))).toBe(false);
    expect(isFileReadError(null)).toBe(false);
  });
});
