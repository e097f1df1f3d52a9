import nodemailer from "nodemailer";
import { createStopper } from "../domain/stopper.js";
import type { Notification } from "./notification.js";
import { plainText } from "./notification.js";

/** Where notifications go. `send` throws when the message was not accepted. */
export interface Channel {
  /** For logs: never the URL itself, which may carry a token. */
  readonly name: string;
  /** Only failures (and their resolutions) go to this channel. */
  readonly failuresOnly: boolean;
  send(n: Notification, signal: AbortSignal): Promise<void>;
  close(): void;
}

/**
 * A generic webhook: POST of JSON whose `text` field Slack, Mattermost,
 * Rocket.Chat and Teams-style incoming webhooks display as is; the other
 * fields are for receivers that route or filter.
 */
export function webhookChannel(opts: { url: string; failuresOnly: boolean; instance: string; timeoutMs: number }): Channel {
  // Credentials in the URL (https://user:password@host/...) go in an Authorization header:
  // fetch refuses such URLs, and its error would quote the password.
  const url = new URL(opts.url);
  const auth = url.username || url.password
    ? `Basic ${Buffer.from(`${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`).toString("base64")}`
    : null;
  url.username = "";
  url.password = "";
  const target = url.href;
  const host = url.host;
  return {
    name: `webhook ${host}`,
    failuresOnly: opts.failuresOnly,
    async send(n, signal) {
      const body = JSON.stringify({
        text: plainText(n, opts.instance),
        kind: n.kind,
        severity: n.severity,
        title: n.title,
        body: n.body,
        database: n.database ?? null,
        backupId: n.backupId ?? null,
        instance: opts.instance,
        at: n.at.toISOString(),
      });
      const stopper = createStopper(signal);
      const timer = setTimeout(
        () => stopper.stop(new Error(`the webhook did not answer within ${opts.timeoutMs} ms`)),
        opts.timeoutMs,
      );
      try {
        const res = await fetch(target, {
          method: "POST",
          headers: {
            "content-type": "application/json",
            "user-agent": "pg-backup-service",
            ...(auth ? { authorization: auth } : {}),
          },
          body,
          signal: stopper.signal,
          redirect: "error",
        });
        // Drain the body so the connection can be reused.
        await res.arrayBuffer().catch(() => undefined);
        if (!res.ok) throw new Error(`the webhook answered HTTP ${res.status}`);
      } catch (err) {
        if (stopper.signal.aborted) throw stopper.signal.reason;
        throw webhookError(err);
      } finally {
        clearTimeout(timer);
        stopper.dispose();
      }
    },
    close() {},
  };
}

/**
 * The webhook's failure in words that never quote the URL (which may carry a token
 * in its path): the HTTP status, or the network error's code.
 */
function webhookError(err: unknown): Error {
  const e = err as { message?: string; cause?: { code?: string; message?: string } };
  if (typeof e?.message === "string" && e.message.startsWith("the webhook answered HTTP")) return err as Error;
  const code = e?.cause?.code ?? (err as { name?: string })?.name ?? "error";
  return new Error(`the webhook request failed (${code})`);
}

/** Email over SMTP (nodemailer): smtp:// with STARTTLS when offered, smtps:// for TLS from the start. */
export function emailChannel(opts: {
  smtpUrl: string;
  from: string;
  to: readonly string[];
  failuresOnly: boolean;
  instance: string;
  timeoutMs: number;
}): Channel {
  const transport = nodemailer.createTransport({
    url: opts.smtpUrl,
    connectionTimeout: opts.timeoutMs,
    greetingTimeout: opts.timeoutMs,
    socketTimeout: opts.timeoutMs,
  });
  const host = new URL(opts.smtpUrl).host;
  return {
    name: `email via ${host}`,
    failuresOnly: opts.failuresOnly,
    async send(n, signal) {
      signal.throwIfAborted();
      const mark = n.severity === "failure" ? "FAILURE" : n.severity === "resolved" ? "RESOLVED" : "INFO";
      // Shutdown does not wait for a stuck SMTP server: an abort drops the connection at once.
      await transport.sendMail({
        from: opts.from,
        to: [...opts.to],
        subject: `[pg-backup ${mark}] ${n.title}`,
        text: `${n.body}\n\n--\npg-backup-service ${opts.instance}, ${n.at.toISOString()}\nkind: ${n.kind}` +
          (n.database ? `\ndatabase: ${n.database}` : "") +
          (n.backupId ? `\nbackup: ${n.backupId}` : ""),
        headers: { "X-PgBackup-Kind": n.kind, "X-PgBackup-Severity": n.severity },
        signal,
      });
    },
    close() {
      transport.close();
    },
  };
}
