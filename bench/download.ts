/**
 * The download benchmark's client: a @grpc/grpc-js client in a process of its own
 * (bench/run.ts forks one per download), so that the bench's own state and
 * bookkeeping do not share its event loop. It downloads one backup, hashes it as it
 * arrives, checks the hash against the one the service announced, and sends
 * {result: {bytes, ms}} or {error} to the parent.
 *
 *   callers: fork("bench/download.ts", [url, token, backupId, window | "default"])
 */
import { createHash } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { BackupService, type DownloadBackupResponse } from "../gen/backup/v1/backup_pb.js";
import { createGrpcJsClient } from "../src/client/grpc-js.js";

const [url, token, id, windowArg] = process.argv.slice(2);

function download(): Promise<{ bytes: number; ms: number }> {
  const client = createGrpcJsClient(url!, BackupService, undefined, {
    "grpc.max_receive_message_length": 8 << 20,
    // "default": our client's own window (4 MiB); a number: that window, e.g. grpc-js's 65535.
    ...(windowArg === "default" ? {} : { "grpc-node.flow_control_window": Number(windowArg) }),
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
