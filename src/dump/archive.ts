import { childProcessEnv } from "../config.js";
import type { CompressionKind } from "../domain/backup.js";
import { describeExit, startChild, succeeded } from "./process.js";
import { decompressCommand, type Tools } from "./tools.js";

/** One line of `pg_restore --list`: "<id>; <oid> <oid> <TYPE> <schema> <tag> <owner>". */
export interface TocEntry {
  type: string;
  /** "<schema> <tag> <owner>", unquoted (names may hold spaces, so it is not split). */
  rest: string;
}

// Types of more than one word come first, so that "TABLE DATA" is not read as "TABLE".
const TYPES = [
  "TABLE DATA",
  "MATERIALIZED VIEW DATA",
  "MATERIALIZED VIEW",
  "SEQUENCE SET",
  "SEQUENCE OWNED BY",
  "FK CONSTRAINT",
  "DEFAULT ACL",
  "LARGE OBJECT",
  "BLOB",
  "BLOBS",
  "TABLE",
  "VIEW",
  "SEQUENCE",
  "INDEX",
  "FUNCTION",
  "PROCEDURE",
  "AGGREGATE",
  "TYPE",
  "DOMAIN",
  "SCHEMA",
  "EXTENSION",
  "TRIGGER",
  "CONSTRAINT",
  "COMMENT",
  "ACL",
  "DEFAULT",
];

/**
 * The table of contents of a custom archive: decompressed straight into
 * `pg_restore --list`, which stops after the TOC (the decompressor's SIGPIPE
 * then says nothing about the file).
 */
export async function readToc(
  tools: Tools,
  path: string,
  compression: CompressionKind,
  signal?: AbortSignal,
): Promise<{ ok: true; entries: TocEntry[] } | { ok: false; detail: string }> {
  const [cmd, argv] = decompressCommand(tools, compression, path);
  const dec = startChild(compression, cmd, argv, { env: childProcessEnv(), stdio: ["ignore", "pipe", "pipe"], signal });
  const list = startChild("pg_restore", tools.pgRestore, ["--list"], {
    env: childProcessEnv(),
    stdio: [dec.child.stdout!, "pipe", "pipe"],
    signal,
  });
  dec.child.stdout!.destroy();
  let out = "";
  list.child.stdout!.setEncoding("utf8");
  list.child.stdout!.on("data", (s: string) => (out += s));
  const [, listExit] = await Promise.all([dec.exit, list.exit]);
  signal?.throwIfAborted();
  if (!succeeded(listExit)) return { ok: false, detail: describeExit(listExit) };
  const entries: TocEntry[] = [];
  for (const line of out.split("\n")) {
    const m = /^\d+; \d+ \d+ (.*)$/.exec(line);
    if (!m) continue;
    const type = TYPES.find((t) => m[1]!.startsWith(`${t} `));
    if (type) entries.push({ type, rest: m[1]!.slice(type.length + 1) });
  }
  return { ok: true, entries };
}
