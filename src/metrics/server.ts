import http from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";
import type { Logger } from "../logger.js";

export interface MetricsServer {
  /** The scrape URL, e.g. http://127.0.0.1:9464/metrics */
  readonly url: string;
  /** Stops listening and ends open connections (a scrape in progress is cut off). */
  close(): Promise<void>;
}

/**
 * `GET /metrics` in Prometheus' text format, and `GET /healthz` (200 while
 * the process runs), on a plain HTTP/1.1 port of its own: the gRPC port is
 * h2c, which Prometheus cannot scrape.
 */
export async function startMetricsServer(opts: {
  host: string;
  port: number;
  registry: Registry;
  logger: Logger;
}): Promise<MetricsServer> {
  const { registry, logger } = opts;
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    const route = path === "/metrics" ? "metrics" : path === "/healthz" ? "healthz" : null;
    if (route === null) {
      res.writeHead(404, { "content-type": "text/plain; charset=utf-8" }).end("not found: try /metrics\n");
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain; charset=utf-8" }).end("method not allowed\n");
      return;
    }
    if (route === "healthz") {
      res.writeHead(200, { "content-type": "text/plain; charset=utf-8" }).end("ok\n");
      return;
    }
    registry.metrics().then(
      (body) => res.writeHead(200, { "content-type": registry.contentType }).end(body),
      (err: unknown) => {
        // Each source guards itself; this is a bug, not an outage of one source.
        logger.error({ err }, "metrics scrape failed");
        res.writeHead(500, { "content-type": "text/plain; charset=utf-8" }).end("metrics scrape failed\n");
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) =>
      reject(
        new Error(
          `could not serve metrics on ${opts.host}:${opts.port}: ${err.code ?? err.message} (hint: set METRICS_PORT to a free port, or off)`,
        ),
      ),
    );
    server.listen(opts.port, opts.host, () => resolve());
  });
  server.removeAllListeners("error");
  server.on("error", (err) => logger.error({ err }, "metrics server error"));
  const port = (server.address() as AddressInfo).port;
  const host = opts.host.includes(":") ? `[${opts.host}]` : opts.host;
  return {
    url: `http://${host}:${port}/metrics`,
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // Prometheus keeps its connection alive between scrapes; close() would wait for it.
      server.closeAllConnections();
      await closed;
    },
  };
}
