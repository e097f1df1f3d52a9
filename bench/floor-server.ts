/**
 * The latency benchmark's floors: servers that answer ListBackups and GetStats with
 * constant replies (the service's own, captured once by bench/run.ts), with no
 * database, no authentication and no interceptors. The same callers poll them
 * while a backup runs on the service, so what they measure is what the HTTP/2
 * stack, and the RPC framework on top of it, cost on this machine under that load:
 *
 * - "connect": connect-node's adapter, as the service serves its API (the page's
 *   records encoded once, as the service sends them; GetStats encoded per call);
 * - "http2": node:http2 alone, writing the same gRPC frames and trailers.
 *
 * The connect floor also serves DownloadBackup for files it is told of: the file read
 * in 1 MiB chunks, as the service reads it, and sent as the service sends it, with no
 * record lookup, lock or audit. It is the download's floor with this framework.
 *
 *   fork("bench/floor-server.ts", ["connect" | "http2"]); send {list, stats} (the
 *   replies' protobuf bytes, base64); it answers {url}. Then {file: {id, path,
 *   checksum}} makes a backup's file downloadable; it answers {registered: id}.
 */
import { createReadStream } from "node:fs";
import http2 from "node:http2";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { Code, ConnectError } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  BackupSchema,
  BackupService,
  GetStatsResponseSchema,
  ListBackupsResponseSchema,
} from "../gen/backup/v1/backup_pb.js";
import { startServer } from "../src/rpc/server.js";

const mode = process.argv[2];
if (mode !== "connect" && mode !== "http2") {
  process.stderr.write(`floor-server: mode must be connect or http2, not "${mode}"\n`);
  process.exit(2);
}

const { list, stats } = await new Promise<{ list: string; stats: string }>((resolve) =>
  process.once("message", (m) => resolve(m as { list: string; stats: string })),
);
const files = new Map<string, { path: string; checksum: string }>();
process.on("message", (m: { file?: { id: string; path: string; checksum: string } }) => {
  if (m.file) {
    files.set(m.file.id, m.file);
    process.send!({ registered: m.file.id });
  }
});
const listBytes = Buffer.from(list, "base64");
const statsBytes = Buffer.from(stats, "base64");

function connectHandler() {
  const reply = fromBinary(ListBackupsResponseSchema, listBytes);
  // As the service does (src/rpc/mappers.ts): the records' bytes built once, sent as they are.
  reply.$unknown = reply.backups.splice(0).map((b) => ({
    no: ListBackupsResponseSchema.field.backups.number,
    wireType: WireType.LengthDelimited,
    data: new BinaryWriter().bytes(toBinary(BackupSchema, b)).finish(),
  }));
  const statsReply = fromBinary(GetStatsResponseSchema, statsBytes);
  return connectNodeAdapter({
    routes: (router) =>
      router.service(
        BackupService,
        {
          listBackups: () => reply,
          getStats: () => statsReply,
          async *downloadBackup(req) {
            const file = files.get(req.id);
            if (!file) throw new ConnectError(`no file registered for ${req.id}`, Code.NotFound);
            yield { payload: { case: "info", value: { backupId: req.id, checksum: file.checksum } } };
            let offset = 0n;
            for await (const data of createReadStream(file.path, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
              yield { payload: { case: "chunk", value: { offset, data } } };
              offset += BigInt(data.length);
            }
          },
        },
        // As the service: no gzip on the wire (backup chunks are compressed already).
        { compressMinBytes: Number.MAX_SAFE_INTEGER },
      ),
  });
}

// Answers with the gRPC frames and trailers, on node:http2's compatibility API (as connect-node uses it).
function http2Handler(): (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void {
  const frame = (b: Uint8Array) => {
    const f = Buffer.alloc(5 + b.length);
    f.writeUInt32BE(b.length, 1);
    f.set(b, 5);
    return f;
  };
  const listFrame = frame(listBytes);
  const statsFrame = frame(statsBytes);
  return (req, res) => {
    req.on("data", () => undefined);
    req.once("end", () => {
      res.writeHead(200, { "content-type": "application/grpc" });
      res.addTrailers({ "grpc-status": "0" });
      res.end(String(req.url).endsWith("/ListBackups") ? listFrame : statsFrame);
    });
  };
}

// The service's own HTTP/2 server set-up (src/rpc/server.ts), with the floor's handler.
const server = await startServer({ host: "127.0.0.1", port: 0, handler: mode === "connect" ? connectHandler() : http2Handler() });
process.send!({ url: server.url });
process.on("SIGTERM", () => void server.close(1000).then(() => process.exit(0)));
