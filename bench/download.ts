/**
 * The download benchmark's client: a @grpc/grpc-js client in a process of its own
 * (bench/run.ts forks one per download), so that the bench's own state and
 * bookkeeping do not share its event loop. It downloads one backup, hashes it as it
 * arrives, checks the hash against the one the service announced, and sends
 * {result: {bytes, ms}} or {error} to the parent.
 *
 *   callers: fork("bench/download.ts", [url, token, backupId, window | "default", "lean" | "connect"])
 *
 * "connect" sends the request gzip-compressed, which the service's lean gRPC path leaves
 * to connect-node (src/rpc/grpc-lean.ts): the path every download took before the lean
 * path served server streams, measured beside it. (grpc-js hands on no header that tells
 * the two apart; test/clients.test.ts checks which path answers such a request.)
 */
import { createHash } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { BackupService, type DownloadBackupResponse } from "../gen/backup/v1/backup_pb.js";
import { createGrpcJsClient } from "../src/client/grpc-js.js";

const [url, token, id, windowArg, pathArg = "lean"] = process.argv.slice(2);

function download(): Promise<{ bytes: number; ms: number }> {
  const client = createGrpcJsClient(url!, BackupService, undefined, {
    "grpc.max_receive_message_length": 8 << 20,
    // "default": our client's own window (4 MiB); a number: that window, e.g. grpc-js's 65535.
    ...(windowArg === "default" ? {} : { "grpc-node.flow_control_window": Number(windowArg) }),
    // 2: gzip (grpc-js's CompressionAlgorithms).
    ...(pathArg === "connect" ? { "grpc.default_compression_algorithm": 2 } : {}),
  });
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${token}`);
  const t0 = performance.now();
  const hash = createHash("sha256");
  let bytes = 0;
  let announced = "";
  return new Promise((resolve, reject) => {
    const call = (client.downloadBackup as (r: unknown, m: grpc.Metadata) => grpc.ClientReadableStream<DownloadBackupResponse>)(
      { id },
      md,
    );
    call.on("data", (m: DownloadBackupResponse) => {
      if (m.payload.case === "info") announced = m.payload.value.checksum;
      else if (m.payload.case === "chunk") {
        hash.update(m.payload.value.data);
        bytes += m.payload.value.data.length;
      }
    });
    call.on("error", reject);
    call.on("end", () => {
      const ms = performance.now() - t0;
      client.close();
      if (hash.digest("hex") !== announced) reject(new Error("download checksum mismatch"));
      else resolve({ bytes, ms });
    });
  });
}

download().then(
  (result) => process.send!({ result }, () => process.exit(0)),
  (err: unknown) => process.send!({ error: String((err as Error).message ?? err) }, () => process.exit(1)),
);
