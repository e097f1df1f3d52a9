import type { Logger } from "../logger.js";
import type { Channel } from "./channels.js";
import type { Notification } from "./notification.js";

export interface Notifier {
  /** Queues the notification for every channel that wants it; never throws, never waits. */
  notify(n: Notification): void;
  /**
   * Sends the notification to every channel that wants it, with the retries, and
   * resolves to whether at least one accepted it (for callers that must know: the
   * alert checks send an incident's alert again at the next check when none did).
   */
  deliver(n: Notification): Promise<boolean>;
  /** Settles when every queued delivery has been made or given up. */
  idle(): Promise<void>;
  /** Waits up to `graceMs` for queued deliveries, then abandons the rest (logged). */
  close(graceMs: number): Promise<void>;
  readonly channels: readonly string[];
}

export interface NotifierOptions {
  channels: Channel[];
  /** Attempts after the first. */
  retries: number;
  /** Delay before the first retry; each next one doubles (with jitter). */
  retryDelayMs: number;
  logger: Logger;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * Delivers notifications in the background, each channel on its own, retried
 * with exponential backoff. A notification that cannot be delivered is logged
 * and dropped: alerting never blocks or fails the work it reports on.
 */
export function createNotifier(opts: NotifierOptions): Notifier {
  const { logger } = opts;
  const closing = new AbortController();
  const pending = new Set<Promise<unknown>>();

  async function sendWithRetries(channel: Channel, n: Notification): Promise<boolean> {
    const attempts = opts.retries + 1;
    for (let attempt = 1; attempt <= attempts; attempt++) {
      try {
        await channel.send(n, closing.signal);
        logger.info({ channel: channel.name, kind: n.kind, backupId: n.backupId, attempt }, "alert delivered");
        return true;
      } catch (err) {
        // Channels word their errors without URLs or credentials (see channels.ts).
        const reason = err instanceof Error ? err.message : String(err);
        if (closing.signal.aborted) {
          logger.error({ channel: channel.name, kind: n.kind, title: n.title, reason }, "alert abandoned at shutdown");
          return false;
        }
        if (attempt === attempts) {
          logger.error(
            { channel: channel.name, kind: n.kind, title: n.title, attempts, reason },
            "alert could not be delivered; giving up",
          );
          return false;
        }
        const delay = Math.round(opts.retryDelayMs * 2 ** (attempt - 1) * (0.8 + Math.random() * 0.4));
        logger.warn({ channel: channel.name, kind: n.kind, attempt, retryInMs: delay, reason }, "alert delivery failed; will retry");
        await sleep(delay, closing.signal);
      }
    }
    return false;
  }

  function deliver(n: Notification): Promise<boolean> {
    if (closing.signal.aborted) {
      logger.warn({ kind: n.kind, title: n.title }, "alert not sent: the service is stopping");
      return Promise.resolve(false);
    }
    const sends = opts.channels
      .filter((c) => !(c.failuresOnly && n.severity === "info"))
      .map((channel) => {
        const p = sendWithRetries(channel, n).catch((err: unknown) => {
          logger.error({ err }, "alert delivery crashed");
          return false;
        });
        pending.add(p);
        void p.finally(() => pending.delete(p));
        return p;
      });
    return Promise.all(sends).then((results) => results.some(Boolean));
  }

  return {
    channels: opts.channels.map((c) => c.name),
    notify(n) {
      void deliver(n);
    },
    deliver,
    async idle() {
      while (pending.size > 0) await Promise.allSettled([...pending]);
    },
    async close(graceMs) {
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, graceMs);
      });
      await Promise.race([this.idle(), deadline]);
      clearTimeout(timer);
      closing.abort(new Error("the service is stopping"));
      await this.idle();
      for (const c of opts.channels) c.close();
    },
  };
}
