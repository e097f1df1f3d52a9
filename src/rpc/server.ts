import http2 from "node:http2";
import { readFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";

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

/** One HTTP/2 port: h2c, or TLS when a certificate and key are given. */
export async function startServer(opts: {
  host: string;
  port: number;
  handler: Handler;
  tls?: { certFile: string; keyFile: string };
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
  server.on("session", (s: http2.ServerHttp2Session) => {
    sessions.add(s);
    s.once("close", () => sessions.delete(s));
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
