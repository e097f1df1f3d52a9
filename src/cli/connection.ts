/**
 * The generated Connect client backupctl talks through: gRPC over HTTP/2,
 * h2c for http:// URLs and TLS for https:// (optionally trusting a given CA).
 */
import { readFileSync } from "node:fs";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { BackupService } from "../../gen/backup/v1/backup_pb.js";
import { usageError } from "./errors.js";

export type BackupClient = Client<typeof BackupService>;

export interface ConnectionOptions {
  url: string;
  token?: string;
  /** PEM file of the CA(s) to trust for https:// URLs. */
  caFile?: string;
}

export const DEFAULT_URL = "http://127.0.0.1:50051";

/** Checks the address and the token before any call, so that mistakes are usage errors (exit 2). */
export function createBackupClient(opts: ConnectionOptions): BackupClient {
  let url: URL;
  try {
    url = new URL(opts.url);
  } catch {
    throw usageError(`--url: not a URL: expected e.g. ${DEFAULT_URL} or https://backups.example.com`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw usageError(`--url: expected an http:// (h2c) or https:// (TLS) URL, got ${url.protocol}// (e.g. ${DEFAULT_URL})`);
  }
  // A token pasted with its scheme, or read from a file with its newline, still works.
  const token = opts.token?.trim().replace(/^Bearer\s+/i, "");
  if (!token) {
    throw usageError("no token: pass --token or set BACKUP_TOKEN (mint one with: backupctl token --sub NAME)");
  }
  let ca: Buffer | undefined;
  if (opts.caFile !== undefined) {
    try {
      ca = readFileSync(opts.caFile);
    } catch (err) {
      throw usageError(`--ca: cannot read ${opts.caFile} (${(err as NodeJS.ErrnoException).code ?? "error"})`);
    }
  }
  const transport = createGrpcTransport({
    baseUrl: url.toString().replace(/\/$/, ""),
    nodeOptions: ca && url.protocol === "https:" ? { ca } : undefined,
    interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${token}`), next(req))],
  });
  return createClient(BackupService, transport);
}
