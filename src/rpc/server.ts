import http2 from "node:http2";
import { readFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { parseTimeout as parseConnectTimeout } from "@connectrpc/connect/protocol-connect";
import { parseTimeout as parseGrpcTimeout } from "@connectrpc/connect/protocol-grpc";

export interface RunningServer {
  readonly port: number;
  /** Base URL for clients, e.g. http://127.0.0.1:50051 */
  readonly url: string;
  /**
   * Stops accepting connections, asks open sessions to finish (GOAWAY), and
   * destroys whatever is still open after `graceMs`.
   */
  close(graceMs: number): Promise<void>;
}

type Handler = (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void;

/**
 * Streams one connection may have open at once (node's default is 2^32-1). Each open
 * call can hold a request body being read, before its token is checked for a unary call,
 * so a client gets this many, not an unbounded number. The bench's callers make at most
 * 50 calls at once on one connection (bench/callers.ts) and a download is one stream.
 * Node's client, once it has these settings, queues the calls beyond the limit (measured);
 * only a burst of more than this many on a connection not yet set up is refused.
 */
export const MAX_CONCURRENT_STREAMS = 256;

/**
 * How often each connection is pinged, and how long its ack may take before the connection
 * may be dropped (see ping). node:http2 has no keepalive of its own: a client that vanished
 * without a FIN (a half-open TCP connection) with nothing left to send it would keep its
 * calls open, a stalled download's file lock among them, for as long as the process runs.
 * Every HTTP/2 client acks pings (its stack does, whatever the application reads); 20 s is
 * gRPC's keepalive timeout.
 */
export const KEEPALIVE = { intervalMs: 60_000, timeoutMs: 20_000 };

/** One HTTP/2 port: h2c, or TLS when a certificate and key are given. */
export async function startServer(opts: {
  host: string;
  port: number;
  handler: Handler;
  tls?: { certFile: string; keyFile: string };
  keepalive?: { intervalMs: number; timeoutMs: number };
}): Promise<RunningServer> {
  const settings: http2.Settings = { maxConcurrentStreams: MAX_CONCURRENT_STREAMS };
  const server = opts.tls
    ? http2.createSecureServer(
        { cert: await readFile(opts.tls.certFile), key: await readFile(opts.tls.keyFile), allowHTTP1: true, settings },
        opts.handler,
      )
    : http2.createServer({ settings }, opts.handler);
  // Small responses must not wait for Nagle's algorithm (40 ms stalls against delayed ACKs).
  server.on(opts.tls ? "secureConnection" : "connection", (socket: import("node:net").Socket) => socket.setNoDelay(true));
  // server.close() waits for every session; a client that abandoned a stream
  // would keep it open forever, so sessions are tracked and ended on shutdown.
  const sessions = new Set<http2.ServerHttp2Session>();
  const keepalive = opts.keepalive ?? KEEPALIVE;
  server.on("session", (s: http2.ServerHttp2Session) => {
    sessions.add(s);
    const pings = setInterval(() => ping(s, keepalive.timeoutMs), keepalive.intervalMs);
    pings.unref();
    s.once("close", () => {
      sessions.delete(s);
      clearInterval(pings);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const host = opts.host.includes(":") ? `[${opts.host}]` : opts.host;
  return {
    port,
    url: `${opts.tls ? "https" : "http"}://${host}:${port}`,
    async close(graceMs) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sessions) s.close();
      const timer = setTimeout(() => {
        for (const s of sessions) s.destroy();
      }, graceMs);
      timer.unref();
      await closed;
      clearTimeout(timer);
    },
  };
}

/**
 * Pings `s`, destroying it when no ack comes within `timeoutMs` and the connection took
 * nothing but control frames meanwhile. An ack can wait behind the replies already handed
 * to the socket (up to a window's worth, on a slow link): while they still go out, the
 * peer is alive. A peer that is gone stops taking them once the kernel's buffer is full,
 * so it is dropped at the next ping at the latest.
 */
function ping(s: http2.ServerHttp2Session, timeoutMs: number): void {
  if (s.destroyed || s.closed) return;
  const sent = s.socket.bytesWritten;
  const timer = setTimeout(() => {
    if (!s.destroyed && s.socket.bytesWritten - sent < 16 * 1024) s.destroy();
  }, timeoutMs);
  timer.unref();
  try {
    // false: pings already outstanding (the timer of the first one still runs).
    if (!s.ping((err) => err === null && clearTimeout(timer))) clearTimeout(timer);
  } catch {
    clearTimeout(timer);
  }
}

/**
 * For a call connect-node serves. connect-node writes each reply and waits for "drain" or
 * "error" on the response, but node's Http2ServerResponse emits neither when its stream
 * closes with a write pending (measured, node 20): a download whose client stopped reading
 * kept its handler, buffer and file lock forever, even after the client reset the stream.
 * So "drain" is emitted when the stream closes: connect-node's next write fails on the
 * closed stream (ERR_HTTP2_INVALID_STREAM, which it takes for a client that went away) and
 * it closes the handler's stream. And a client that stops reading but keeps the stream open
 * is reset (CANCEL) once the call's deadline (grpc-timeout, or connect-timeout-ms for the
 * Connect protocol) has passed and its replies still wait on it, checked each second until
 * the call ends, as the lean path does for its calls (src/rpc/grpc-lean.ts, serveStream).
 * The first check comes just after connect's own deadline has aborted the call, so that the
 * call is audited and counted as DEADLINE_EXCEEDED, not as cancelled by the reset.
 * A call without a deadline is left to the connection's keepalive (KEEPALIVE).
 */
export function guardConnectNodeCall(req: http2.Http2ServerRequest, res: http2.Http2ServerResponse): void {
  // HTTP/1.1 calls (TLS with allowHTTP1) are not guarded.
  if (req.httpVersionMajor !== 2) return;
  let deadline: NodeJS.Timeout | undefined;
  let checks: NodeJS.Timeout | undefined;
  res.once("close", () => {
    clearTimeout(deadline);
    clearInterval(checks);
    res.emit("drain");
  });
  const connect = req.headers["connect-timeout-ms"];
  const grpc = req.headers["grpc-timeout"];
  const { timeoutMs } =
    typeof connect === "string"
      ? parseConnectTimeout(connect, Number.MAX_SAFE_INTEGER)
      : typeof grpc === "string"
        ? parseGrpcTimeout(grpc, Number.MAX_SAFE_INTEGER)
        : {};
  // Past 2^31-1 ms setTimeout fires at once; a deadline that far off is left to the keepalive.
  if (timeoutMs === undefined || timeoutMs > 2 ** 31 - 1) return;
  const check = () => {
    if (res.stream.writableNeedDrain) res.stream.close(http2.constants.NGHTTP2_CANCEL);
  };
  deadline = setTimeout(() => {
    check();
    checks = setInterval(check, 1000);
  }, Math.max(timeoutMs, 0) + 50);
}
