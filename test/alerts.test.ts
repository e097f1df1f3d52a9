/**
 * Alerts against real receivers: an HTTP server standing in for a chat
 * webhook, and a real SMTP server (smtp-server) for email.
 */
import { createServer, type Server } from "node:http";
import { open, statfs } from "node:fs/promises";
import path from "node:path";
import { createServer as createNetServer, type AddressInfo } from "node:net";
import { SMTPServer } from "smtp-server";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupStatus } from "../gen/backup/v1/backup_pb.js";
import { backupAgeIncident } from "../src/alerts/checks.js";
import { ConfigError, loadConfig } from "../src/config.js";
import {
  callFailure,
  createDatabase,
  createFixture,
  dropDatabase,
  seedDatabase,
  serviceEnv,
  sql,
  spawnService,
  movableClock,
  startService,
  uniqueName,
  waitFor,
  type TestService,
} from "./helpers.js";

/**
 * The alert check's schedule in these tests: on (so that it can be fired) but due only on 29
 * February, so that no real firing lands between a test's own (`scheduler.fire`).
 */
const HAND_FIRED = "0 0 29 2 *";

interface Hook {
  kind: string;
  severity: string;
  title: string;
  text: string;
  database: string | null;
  backupId: string | null;
}
interface Mail {
  from: string;
  to: string[];
  subject: string;
  body: string;
}

/** A webhook receiver; `failNext` makes the next requests answer 503. */
async function startWebhook() {
  const received: Hook[] = [];
  let attempts = 0;
  let failNext = 0;
  const server: Server = createServer((req, res) => {
    let data = "";
    req.on("data", (c: Buffer) => (data += c.toString()));
    req.on("end", () => {
      attempts++;
      if (failNext > 0) {
        failNext--;
        res.writeHead(503).end("try later");
        return;
      }
      received.push(JSON.parse(data) as Hook);
      res.writeHead(200).end("ok");
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks/backup`,
    received,
    attempts: () => attempts,
    failNext(n: number) {
      failNext = n;
    },
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

/** Undoes the transfer encodings a plain-text alert may come in (quoted-printable, folded headers). */
function decodeMail(raw: string): { subject: string; body: string } {
  const [head, ...rest] = raw.split(/\r?\n\r?\n/);
  const headers = head!.replace(/\r?\n[ \t]+/g, " ");
  // RFC 2047 encoded words (=?UTF-8?Q?...?=), as nodemailer writes subjects with quotes in them.
  const subject = (/^Subject: (.*)$/m.exec(headers)?.[1] ?? "")
    .replace(/\?=\s+=\?/g, "?==?")
    .replace(/=\?UTF-8\?Q\?(.*?)\?=/gi, (_, q: string) =>
      Buffer.from(q.replace(/_/g, " ").replace(/=([0-9A-F]{2})/gi, (_m, h: string) => String.fromCharCode(parseInt(h, 16))), "latin1").toString("utf8"),
    );
  let body = rest.join("\n\n");
  if (/Content-Transfer-Encoding: quoted-printable/i.test(headers)) {
    body = body.replace(/=\r?\n/g, "").replace(/=([0-9A-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
  }
  return { subject, body };
}

async function startSmtp() {
  const received: Mail[] = [];
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ["STARTTLS"],
    logger: false,
    onData(stream, session, callback) {
      let raw = "";
      stream.on("data", (c: Buffer) => (raw += c.toString()));
      stream.on("end", () => {
        received.push({
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : "",
          to: session.envelope.rcptTo.map((r) => r.address),
          ...decodeMail(raw),
        });
        callback();
      });
    },
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.server.address() as AddressInfo).port;
  return { url: `smtp://127.0.0.1:${port}`, received, close: () => new Promise<void>((r) => server.close(() => r())) };
}

const fx = createFixture("alerts");
const extraDbs: string[] = [];
let hook: Awaited<ReturnType<typeof startWebhook>>;
let smtp: Awaited<ReturnType<typeof startSmtp>>;
let svc: TestService;

function channels(extra: Record<string, string> = {}): Record<string, string> {
  return {
    ALERT_WEBHOOK_URL: hook.url,
    SMTP_URL: smtp.url,
    ALERT_EMAIL_FROM: "Backups <backups@example.com>",
    ALERT_EMAIL_TO: "ops@example.com, dba@example.com",
    ALERT_RETRY_DELAY_MS: "50",
    ...extra,
  };
}

/** Waits for alerts to be delivered, then returns those of `kind` that arrived since `from`. */
async function hooksOf(kind: string, from = 0, s: TestService = svc): Promise<Hook[]> {
  await s.app.alerts.idle();
  return hook.received.slice(from).filter((h) => h.kind === kind);
}

async function tamper(s: TestService, fileName: string): Promise<void> {
  const f = await open(path.join(s.backupDir, fileName), "r+");
  try {
    const { size } = await f.stat();
    await f.write(Buffer.alloc(64, 0x5a), 0, 64, Math.floor(size / 2));
  } finally {
    await f.close();
  }
}

beforeAll(async () => {
  [hook, smtp] = await Promise.all([startWebhook(), startSmtp()]);
  await createDatabase(fx.target);
  await seedDatabase(fx.target, 200);
  svc = await fx.service(channels());
});

afterAll(async () => {
  await fx.cleanup();
  for (const d of extraDbs) await dropDatabase(d);
  await Promise.all([hook.close(), smtp.close()]);
});

describe("alerts on outcomes", () => {
  it("a failed backup alerts by webhook (Slack-compatible text) and by email; nothing else is sent", async () => {
    const from = hook.received.length;
    const mails = smtp.received.length;
    const missing = uniqueName("bs_alert_missing");
    const err = await callFailure(svc.client.createBackup({ database: missing }));
    const [alert] = await hooksOf("backup_failed", from);
    expect(alert, "webhook alert").toBeDefined();
    expect(alert!.severity).toBe("failure");
    expect(alert!.database).toBe(missing);
    expect(alert!.text).toMatch(/^\*\[FAILURE\] Backup of ".*" failed\*/);
    expect(alert!.text).toContain(missing);
    expect(alert!.text).toContain(alert!.backupId!);
    // The reason the caller got is the reason the alert gives.
    expect(err.rawMessage.length).toBeGreaterThan(0);
    expect(alert!.text).toContain(err.rawMessage.split(": ").at(-1)!.slice(0, 30));
    expect(hook.received.length - from).toBe(1);

    await waitFor("the email", async () => smtp.received.length > mails);
    const mail = smtp.received.at(-1)!;
    expect(mail.from).toBe("backups@example.com");
    expect(mail.to.sort()).toEqual(["dba@example.com", "ops@example.com"]);
    expect(mail.subject).toBe(`[pg-backup FAILURE] Backup of "${missing}" failed`);
    expect(mail.body).toContain(`Backup ${alert!.backupId} of database "${missing}" failed`);
  });

  it("a successful backup sends nothing; a backup that fails verification (CORRUPTED) alerts", async () => {
    const from = hook.received.length;
    const { backup } = await svc.client.createBackup({});
    await svc.app.alerts.idle();
    expect(hook.received.length, "a verified backup is not news").toBe(from);

    await tamper(svc, backup!.fileName);
    const v = await svc.client.verifyBackup({ id: backup!.id });
    expect(v.status).toBe(BackupStatus.CORRUPTED);
    const [alert] = await hooksOf("verification_failed", from);
    expect(alert!.title).toBe(`Backup of "${fx.target}" failed verification (CORRUPTED)`);
    expect(alert!.backupId).toBe(backup!.id);
    expect(alert!.text).toContain("checksum");
  });

  it("restores alert when they finish, fail or are refused; a failures-only channel gets only the failure", async () => {
    const s = await startService(svc.control, fx.target, channels({ ALERT_WEBHOOK_FAILURES_ONLY: "true" }), svc.dataDir);
    try {
      const from = hook.received.length;
      const mails = smtp.received.length;
      const { backup } = await s.client.createBackup({});
      const into = uniqueName("bs_alert_restored");
      const broken = uniqueName("bs_alert_broken");
      extraDbs.push(into, broken);
      const restore = async (req: Parameters<typeof s.client.restoreBackup>[0]) => {
        for await (const _ of s.client.restoreBackup(req)) {
          // progress
        }
      };
      await restore({ id: backup!.id, confirmRestore: true, targetDatabase: into });
      // Into a database that holds data, without drop_existing: refused by its checks, nothing loaded.
      await callFailure(restore({ id: backup!.id, confirmRestore: true, targetDatabase: into }));
      // A damaged archive forced through: the load itself fails.
      await tamper(s, backup!.fileName);
      await callFailure(restore({ id: backup!.id, confirmRestore: true, targetDatabase: broken, force: true }));
      await s.app.alerts.idle();

      const sent = hook.received.slice(from).filter((h) => h.kind.startsWith("restore_"));
      expect(sent.map((h) => h.kind), "only the failure reaches a failures-only webhook").toEqual(["restore_failed"]);
      expect(sent[0]!.title).toBe(`Restore into "${broken}" failed`);
      expect(sent[0]!.text).toContain("left as it was");

      await waitFor("three emails", async () => smtp.received.length >= mails + 3);
      const subjects = smtp.received.slice(mails).map((m) => m.subject);
      expect(subjects).toContain(`[pg-backup INFO] Restore into "${into}" finished`);
      expect(subjects).toContain(`[pg-backup INFO] Restore into "${into}" was refused`);
      expect(subjects).toContain(`[pg-backup FAILURE] Restore into "${broken}" failed`);
      const refused = smtp.received.slice(mails).find((m) => m.subject.includes("was refused"))!;
      expect(refused.body).toContain("already holds");
    } finally {
      await s.close();
    }
  });

  it("a cleanup that removes backups says how many and how much space it freed; a dry run says nothing", async () => {
    const s = await startService(svc.control, fx.target, channels({ RETENTION_MIN_KEEP: "1" }), svc.dataDir);
    try {
      const old = (await s.client.createBackup({ label: "to expire" })).backup!;
      await s.client.createBackup({ label: "newest" });
      await sql(svc.control, "UPDATE backup_service.backup_history SET expires_at = now() - interval '1 day' WHERE id = $1", [
        old.id,
      ]);
      const from = hook.received.length;
      await s.client.cleanupExpiredBackups({ dryRun: true });
      expect(await hooksOf("cleanup_removed", from, s)).toEqual([]);
      const r = await s.client.cleanupExpiredBackups({});
      expect(r.removed.map((b) => b.id)).toContain(old.id);
      const [alert] = await hooksOf("cleanup_removed", from, s);
      expect(alert!.severity).toBe("info");
      expect(alert!.title).toMatch(new RegExp(`^Cleanup removed ${r.removed.length} expired backups?, freeing `));
      expect(alert!.text).toContain(old.id);
    } finally {
      await s.close();
    }
  });

  it("a restore drill that finds a backup does not restore alerts once, as a drill failure", async () => {
    const db = uniqueName("bs_alert_drill");
    extraDbs.push(db);
    await createDatabase(db);
    await sql(db, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 50)");
    const cron = "0 4 * * 0";
    const s = await startService(svc.control, fx.target, channels({ RESTORE_DRILL_CRON: cron }), svc.dataDir);
    try {
      const { backup } = await s.client.createBackup({ database: db });
      // Other databases' newest backups are drilled too; only this one is damaged.
      for (const other of (await s.client.listBackups({ pageSize: 100, status: BackupStatus.VERIFIED })).backups) {
        if (other.databaseName !== db) await s.client.deleteBackup({ id: other.id });
      }
      await tamper(s, backup!.fileName);
      const from = hook.received.length;
      expect(await s.app.scheduler.fire("restore-drill", new Date())).toBe("ran");
      await s.app.alerts.idle();
      const sent = hook.received.slice(from);
      expect(sent.map((h) => h.kind)).toEqual(["drill_failed"]);
      expect(sent[0]!.title).toBe(`Restore drill failed: backup of "${db}" does not restore correctly`);
      expect(sent[0]!.backupId).toBe(backup!.id);
    } finally {
      await s.close();
    }
  });
});

/** A fresh database holding one row, for the dead-man's switch to watch. */
async function watchedDatabase(prefix: string): Promise<string> {
  const db = uniqueName(prefix);
  extraDbs.push(db);
  await createDatabase(db);
  await sql(db, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
  return db;
}

/** Whether the shared control database holds an open incident of `key`. */
async function incidentIsOpen(key: string): Promise<boolean> {
  const rows = await sql(svc.control, "SELECT 1 FROM backup_service.alert_incidents WHERE key = $1 AND resolved_at IS NULL", [key]);
  return rows.length === 1;
}

/** Makes the open incident of `key` look unwatched for 25 hours. */
async function backdateIncident(key: string): Promise<void> {
  await sql(
    svc.control,
    "UPDATE backup_service.alert_incidents SET last_seen_at = now() - interval '25 hours' WHERE key = $1 AND resolved_at IS NULL",
    [key],
  );
}

/** Whether a replica said, in the last minute, that it watches the open incident of `key`. */
async function incidentSeenLately(key: string): Promise<boolean> {
  const rows = await sql(
    svc.control,
    "SELECT 1 FROM backup_service.alert_incidents WHERE key = $1 AND resolved_at IS NULL AND last_seen_at > now() - interval '1 minute'",
    [key],
  );
  return rows.length === 1;
}

/**
 * Settings that watch `db` with an hour's dead-man's switch and no disk limit. The tests move
 * their services' clock past the hour (`overAnHour`) rather than wait: a check right after a
 * backup must find it fresh however slow the machine.
 */
function watching(db: string, extra: Record<string, string> = {}): Record<string, string> {
  return { ALERT_CHECK_CRON: HAND_FIRED, ALERT_MAX_BACKUP_AGE: "1h", ALERT_MIN_FREE_PERCENT: "0", BACKUP_DATABASES: db, ...extra };
}
const overAnHour = 3_600_000 + 60_000;

describe("the dead-man's switch and disk space", () => {
  it("alerts once per incident, across replicas, and once when it is resolved", async () => {
    const clock = movableClock();
    const db = await watchedDatabase("bs_alert_dms");
    const env = channels(watching(db));
    const one = await startService(svc.control, fx.target, { ...env, REPLICA_ID: "dms-1" }, svc.dataDir, { clock });
    const two = await startService(svc.control, fx.target, { ...env, REPLICA_ID: "dms-2" }, svc.dataDir, { clock });
    try {
      const from = hook.received.length;
      const overdue = async () => {
        await two.app.alerts.idle();
        return hooksOf("backup_overdue", from, one);
      };
      // First sight of a database never backed up: it gets the same time as any other.
      expect(await one.app.scheduler.fire("alert-check", clock.now())).toBe("ran");
      expect(await overdue()).toEqual([]);
      clock.advance(overAnHour);
      expect(await one.app.scheduler.fire("alert-check", clock.now())).toBe("ran");
      expect(await two.app.scheduler.fire("alert-check", clock.now())).toBe("ran");
      expect(await one.app.scheduler.fire("alert-check", clock.now())).toBe("ran");
      let sent = await overdue();
      expect(sent.map((h) => [h.severity, h.title])).toEqual([["failure", `No verified backup of "${db}" at all`]]);

      await one.client.createBackup({ database: db });
      await two.app.scheduler.fire("alert-check", clock.now());
      await one.app.scheduler.fire("alert-check", clock.now());
      sent = await overdue();
      expect(sent.map((h) => h.severity)).toEqual(["failure", "resolved"]);
      expect(sent[1]!.title).toBe(`"${db}" has a verified backup again`);

      // The backup ages past the limit: a new incident, announced once.
      clock.advance(overAnHour);
      await two.app.scheduler.fire("alert-check", clock.now());
      await one.app.scheduler.fire("alert-check", clock.now());
      sent = await overdue();
      expect(sent.map((h) => h.severity)).toEqual(["failure", "resolved", "failure"]);
      expect(sent[2]!.title).toMatch(new RegExp(`^No verified backup of "${db}" for 1h \\d+m$`));
    } finally {
      await one.close();
      await two.close();
    }
  });

  it("a resolution no channel took is sent again at the next check", async () => {
    const clock = movableClock();
    const db = await watchedDatabase("bs_alert_res");
    const env = channels(
      watching(db, {
        // The webhook alone, so that when it refuses, no channel takes the notice.
        SMTP_URL: "",
        ALERT_EMAIL_FROM: "",
        ALERT_EMAIL_TO: "",
        ALERT_RETRIES: "0",
        REPLICA_ID: "res-1",
      }),
    );
    const openIncident = async () =>
      (await sql<{ n: string }>(
        svc.control,
        "SELECT count(*) AS n FROM backup_service.alert_incidents WHERE key = $1 AND resolved_at IS NULL",
        [`backup-age:${db}`],
      ))[0]!.n;
    const s = await startService(svc.control, fx.target, env, svc.dataDir, { clock });
    try {
      const from = hook.received.length;
      const sent = () => hooksOf("backup_overdue", from, s).then((hs) => hs.filter((h) => h.database === db));
      await s.app.scheduler.fire("alert-check", clock.now());
      clock.advance(overAnHour);
      await s.app.scheduler.fire("alert-check", clock.now());
      expect((await sent()).map((h) => h.severity)).toEqual(["failure"]);

      await s.client.createBackup({ database: db });
      hook.failNext(1);
      await s.app.scheduler.fire("alert-check", clock.now());
      expect((await sent()).map((h) => h.severity), "the refused notice is not counted as sent").toEqual(["failure"]);
      expect(await openIncident()).toBe("1");
      await s.app.scheduler.fire("alert-check", clock.now());
      expect((await sent()).map((h) => h.severity)).toEqual(["failure", "resolved"]);
      expect(await openIncident()).toBe("0");

    } finally {
      await s.close();
    }
  });

  it("an incident no replica checks any more (its database left BACKUP_DATABASES) is closed after a day, with a notice", async () => {
    const clock = movableClock();
    const gone = await watchedDatabase("bs_alert_gone");
    const kept = await watchedDatabase("bs_alert_kept");
    const from = hook.received.length;
    const about = async (db: string, s: TestService) =>
      (await hooksOf("backup_overdue", from, s)).filter((h) => h.database === db).map((h) => [h.severity, h.title]);
    const open = async (db: string) => ((await incidentIsOpen(backupAgeIncident(db))) ? 1 : 0);
    const backdate = (db: string) => backdateIncident(backupAgeIncident(db));

    const before = await startService(svc.control, fx.target, channels(watching(gone)), svc.dataDir, { clock });
    try {
      await before.app.scheduler.fire("alert-check", clock.now());
      clock.advance(overAnHour);
      await before.app.scheduler.fire("alert-check", clock.now());
      expect(await about(gone, before)).toEqual([["failure", `No verified backup of "${gone}" at all`]]);
    } finally {
      await before.close();
    }

    // The database is no longer watched: its incident stays open for a day, as another replica may still watch it.
    const after = await startService(svc.control, fx.target, channels(watching(kept)), svc.dataDir, { clock });
    try {
      await after.app.scheduler.fire("alert-check", clock.now());
      expect(await open(gone)).toBe(1);
      expect(await open(kept)).toBe(1);
      await backdate(gone);
      await backdate(kept); // watched by this replica: found again, not closed
      await after.app.scheduler.fire("alert-check", clock.now());
      const notices = await about(gone, after);
      expect(notices).toEqual([
        ["failure", `No verified backup of "${gone}" at all`],
        ["resolved", `No longer watched: "${gone}"`],
      ]);
      const text = (await hooksOf("backup_overdue", from, after)).find((h) => h.severity === "resolved" && h.database === gone)!.text;
      expect(text).toContain("BACKUP_DATABASES");
      expect(await open(gone)).toBe(0);
      expect(await open(kept)).toBe(1);
      expect(await incidentSeenLately(backupAgeIncident(kept))).toBe(true);
    } finally {
      await after.close();
    }
  });

  it("an incident another live replica watches stays open, whoever runs the checks; a stale disk incident is closed", async () => {
    const clock = movableClock();
    const watchedElsewhere = await watchedDatabase("bs_alert_elsewhere");
    const own = await watchedDatabase("bs_alert_own");
    const from = hook.received.length;
    const key = backupAgeIncident(watchedElsewhere);
    const staleDisk = `disk-space:${uniqueName("old-host")}:/backups`;

    // Replica A watches the database but never wins a check's slot; B runs every check.
    const a = await startService(svc.control, fx.target, channels(watching(watchedElsewhere, { RECOVERY_INTERVAL_MS: "200" })), svc.dataDir, { clock });
    const b = await startService(svc.control, fx.target, channels(watching(own)), svc.dataDir, { clock });
    try {
      await a.app.scheduler.fire("alert-check", clock.now()); // opens the incident (not yet due)
      expect(await incidentIsOpen(key)).toBe(true);
      await backdateIncident(key);
      await sql(svc.control, "INSERT INTO backup_service.alert_incidents (key, message, last_seen_at) VALUES ($1, 'low', now() - interval '25 hours')", [staleDisk]);
      await waitFor("A's sweep to say it watches the incident", () => incidentSeenLately(key));
      await b.app.scheduler.fire("alert-check", clock.now());
      expect(await incidentIsOpen(key), "watched by A").toBe(true);
      expect(await incidentIsOpen(staleDisk), "watched by no one").toBe(false);

      await a.close();
      await backdateIncident(key);
      await b.app.scheduler.fire("alert-check", clock.now());
      expect(await incidentIsOpen(key), "A is gone").toBe(false);
      // Neither was announced (the database's was never due, the disk's never sent): no notices.
      expect((await hooksOf("backup_overdue", from, b)).filter((h) => h.database === watchedElsewhere)).toEqual([]);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it("a replica that does not watch a database still resolves its incident once it has a verified backup again", async () => {
    const clock = movableClock();
    const x = await watchedDatabase("bs_alert_x");
    const from = hook.received.length;
    const a = await startService(svc.control, fx.target, channels(watching(x)), svc.dataDir, { clock });
    const b = await startService(svc.control, fx.target, channels(watching(await watchedDatabase("bs_alert_y"))), svc.dataDir, { clock });
    try {
      await a.app.scheduler.fire("alert-check", clock.now());
      clock.advance(overAnHour);
      await a.app.scheduler.fire("alert-check", clock.now());
      await b.client.createBackup({ database: x });
      // B wins the next slot: it does not watch x, but x's incident is open and watched.
      await b.app.scheduler.fire("alert-check", clock.now());
      await a.app.alerts.idle();
      const sent = (await hooksOf("backup_overdue", from, b)).filter((h) => h.database === x);
      expect(sent.map((h) => [h.severity, h.title])).toEqual([
        ["failure", `No verified backup of "${x}" at all`],
        ["resolved", `"${x}" has a verified backup again`],
      ]);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it("an incident whose alert no channel took is announced at the next check", async () => {
    const env = channels({
      ALERT_CHECK_CRON: HAND_FIRED,
      ALERT_MAX_BACKUP_AGE: "off",
      ALERT_MIN_FREE_BYTES: String(Number.MAX_SAFE_INTEGER),
      ALERT_DISK_NAME: uniqueName("disk"),
      ALERT_RETRIES: "1",
      SMTP_URL: "",
      ALERT_EMAIL_FROM: "",
      ALERT_EMAIL_TO: "",
    });
    const s = await startService(svc.control, fx.target, env, svc.dataDir);
    try {
      const from = hook.received.length;
      hook.failNext(2); // both attempts of the first check fail
      await s.app.scheduler.fire("alert-check", new Date());
      expect(await hooksOf("disk_low", from, s)).toEqual([]);
      await s.app.scheduler.fire("alert-check", new Date());
      await s.app.scheduler.fire("alert-check", new Date());
      expect((await hooksOf("disk_low", from, s)).map((h) => h.severity)).toEqual(["failure"]);
    } finally {
      await s.close();
    }
  });

  it("a low backup disk alerts once, and once more when space is back", async () => {
    const base = channels({ ALERT_CHECK_CRON: HAND_FIRED, ALERT_MAX_BACKUP_AGE: "off" });
    const low = await startService(svc.control, fx.target, { ...base, ALERT_MIN_FREE_BYTES: String(Number.MAX_SAFE_INTEGER) }, svc.dataDir);
    let ok: TestService | undefined;
    try {
      const from = hook.received.length;
      await low.app.scheduler.fire("alert-check", new Date());
      await low.app.scheduler.fire("alert-check", new Date());
      const [alert, ...more] = await hooksOf("disk_low", from, low);
      expect(more).toEqual([]);
      expect(alert!.severity).toBe("failure");
      expect(alert!.title).toMatch(/^Backup disk is low on space: .* free \([\d.]+%\)$/);
      expect(alert!.text).toContain("ALERT_MIN_FREE_BYTES");
      await low.close();

      ok = await startService(svc.control, fx.target, { ...base, ALERT_MIN_FREE_BYTES: "1", ALERT_MIN_FREE_PERCENT: "0" }, svc.dataDir);
      await ok.app.scheduler.fire("alert-check", new Date());
      const resolved = await hooksOf("disk_low", from, ok);
      expect(resolved.map((h) => h.severity)).toEqual(["failure", "resolved"]);
    } finally {
      await low.close();
      await ok?.close();
    }
  });

  it("a disk hovering just above its limit stays one incident: it ends only 10% above the limit", async () => {
    const base = channels({ ALERT_CHECK_CRON: HAND_FIRED, ALERT_MAX_BACKUP_AGE: "off", ALERT_MIN_FREE_PERCENT: "0", ALERT_DISK_NAME: uniqueName("disk") });
    const withLimit = (bytes: number) =>
      startService(svc.control, fx.target, { ...base, ALERT_MIN_FREE_BYTES: String(Math.floor(bytes)) }, svc.dataDir);
    const from = hook.received.length;
    /** A check with the limit at `share` of the free space right now (the other tests write to this disk too). */
    const check = async (share: number) => {
      const { bavail, bsize } = await statfs(svc.dataDir);
      const s = await withLimit(bavail * bsize * share);
      try {
        await s.app.scheduler.fire("alert-check", new Date());
        return (await hooksOf("disk_low", from, s)).map((h) => h.severity);
      } finally {
        await s.close();
      }
    };
    expect(await check(2)).toEqual(["failure"]);
    // 5% above the limit: no longer under it, but not clear of it either.
    expect(await check(1 / 1.05)).toEqual(["failure"]);
    expect(await check(2)).toEqual(["failure"]);
    expect(await check(1 / 1.05)).toEqual(["failure"]);
    expect(await check(1 / 1.25)).toEqual(["failure", "resolved"]);
    // Once resolved, the limit itself is the line again: 5% above it raises nothing.
    expect(await check(1 / 1.05)).toEqual(["failure", "resolved"]);
  });
});

describe("delivery", () => {
  it("a webhook that fails is retried with backoff until it takes the alert", async () => {
    const s = await startService(svc.control, fx.target, channels({ ALERT_RETRIES: "3", SMTP_URL: "", ALERT_EMAIL_FROM: "", ALERT_EMAIL_TO: "" }), svc.dataDir);
    try {
      const from = hook.received.length;
      const attempts = hook.attempts();
      hook.failNext(2);
      await callFailure(s.client.createBackup({ database: uniqueName("bs_alert_retry") }));
      const sent = await hooksOf("backup_failed", from, s);
      expect(sent).toHaveLength(1);
      expect(hook.attempts() - attempts).toBe(3);
    } finally {
      await s.close();
    }
  });

  it("channels that hang or cannot be reached never hold up a backup, nor shutdown", async () => {
    // A webhook that takes the request and never answers, and an SMTP server that never greets.
    const hanging = createServer(() => undefined);
    await new Promise<void>((r) => hanging.listen(0, "127.0.0.1", r));
    const silent = createNetServer(() => undefined);
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    const s = await startService(
      svc.control,
      fx.target,
      {
        ALERT_WEBHOOK_URL: `http://127.0.0.1:${(hanging.address() as AddressInfo).port}/hook`,
        SMTP_URL: `smtp://127.0.0.1:${(silent.address() as AddressInfo).port}`,
        ALERT_EMAIL_FROM: "backups@example.com",
        ALERT_EMAIL_TO: "ops@example.com",
        ALERT_TIMEOUT_MS: "600000",
        ALERT_RETRIES: "2",
        ALERT_RETRY_DELAY_MS: "20",
      },
      svc.dataDir,
    );
    try {
      const started = Date.now();
      await callFailure(s.client.createBackup({ database: uniqueName("bs_alert_nowhere") }));
      const { backup } = await s.client.createBackup({});
      expect(backup!.status).toBe(BackupStatus.VERIFIED);
      expect(Date.now() - started, "the backups did not wait for the alert").toBeLessThan(15_000);
      const stopping = Date.now();
      await s.close();
      // Queued alerts get the grace period (2 s here, 5 s at most); hanging channels are then abandoned.
      expect(Date.now() - stopping).toBeLessThan(6_000);
    } finally {
      await s.close();
      hanging.closeAllConnections();
      await new Promise<void>((r) => hanging.close(() => r()));
      await new Promise<void>((r) => silent.close(() => r()));
    }
  });

  it("an alert check sending to a hanging channel does not hold up shutdown", async () => {
    let requests = 0;
    const hanging = createServer(() => {
      requests++;
    });
    await new Promise<void>((r) => hanging.listen(0, "127.0.0.1", r));
    const db = uniqueName("bs_alert_hang");
    extraDbs.push(db);
    await createDatabase(db);
    const s = await startService(
      svc.control,
      fx.target,
      {
        ALERT_WEBHOOK_URL: `http://127.0.0.1:${(hanging.address() as AddressInfo).port}/hook`,
        ALERT_TIMEOUT_MS: "600000",
        ALERT_CHECK_CRON: HAND_FIRED,
        ALERT_MAX_BACKUP_AGE: "100ms",
        ALERT_MIN_FREE_PERCENT: "0",
        BACKUP_DATABASES: db,
        REPLICA_ID: "hang-1",
      },
      svc.dataDir,
    );
    try {
      // The first check only sees the database; the second, past the limit, raises the alert.
      expect(await s.app.scheduler.fire("alert-check", new Date())).toBe("ran");
      await new Promise((r) => setTimeout(r, 200));
      const firing = s.app.scheduler.fire("alert-check", new Date(Date.now() + 60_000));
      await waitFor("the alert to reach the hanging webhook", async () => requests > 0);
      const stopping = Date.now();
      const closed = await Promise.race([
        s.close().then(() => true),
        new Promise<boolean>((r) => setTimeout(() => r(false), 20_000)),
      ]);
      expect(closed, "shutdown waited for the hanging alert").toBe(true);
      // The grace period for queued alerts (2 s here), not the channel's 10-minute timeout.
      expect(Date.now() - stopping).toBeLessThan(6_000);
      expect(await firing).toBe("ran");
      const [run] = await sql<{ outcome: string }>(
        svc.control,
        "SELECT outcome FROM backup_service.job_runs WHERE job = 'alert-check' AND replica_id = 'hang-1' ORDER BY started_at DESC LIMIT 1",
      );
      expect(run!.outcome).toBe("INTERRUPTED");
    } finally {
      await s.close();
      hanging.closeAllConnections();
      await new Promise<void>((r) => hanging.close(() => r()));
    }
  });

  it("credentials in the webhook URL go in an Authorization header and never into the logs", async () => {
    const seen: (string | undefined)[] = [];
    const server = createServer((req, res) => {
      seen.push(req.headers.authorization);
      req.resume();
      req.on("end", () => res.writeHead(204).end());
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as AddressInfo).port;
    const s = await startService(svc.control, fx.target, { ALERT_WEBHOOK_URL: `http://hook:s3cret@127.0.0.1:${port}/x`, ALERT_RETRY_DELAY_MS: "20" }, svc.dataDir);
    try {
      await callFailure(s.client.createBackup({ database: uniqueName("bs_alert_auth") }));
      await s.app.alerts.idle();
      expect(seen).toEqual([`Basic ${Buffer.from("hook:s3cret").toString("base64")}`]);
    } finally {
      await s.close();
      await new Promise<void>((r) => server.close(() => r()));
    }

    // With the receiver gone, every failed attempt is logged: without the URL or its password.
    const spawned = await spawnService(svc.control, fx.target, svc.dataDir, {
      ALERT_WEBHOOK_URL: `http://hook:s3cret@127.0.0.1:${port}/x`,
      ALERT_RETRIES: "1",
      ALERT_RETRY_DELAY_MS: "20",
    });
    try {
      await callFailure(spawned.client.createBackup({ database: uniqueName("bs_alert_auth") }));
      const gaveUp = await waitFor("the give-up log line", async () =>
        spawned.logs.find((l) => l.msg === "alert could not be delivered; giving up"),
      );
      expect(gaveUp.reason).toMatch(/^the webhook request failed \(/);
      const text = spawned.logs.map((l) => JSON.stringify(l)).join("\n");
      expect(text).not.toContain("s3cret");
      expect(text).toContain("alert delivery failed; will retry");
    } finally {
      spawned.child.kill("SIGTERM");
      await spawned.exited;
    }
  });
});

describe("alert settings", () => {
  const env = (extra: Record<string, string>) => serviceEnv("c", "t", "/tmp/x", extra);
  it.each([
    [{ ALERT_WEBHOOK_URL: "ftp://example.com/x" }, "ALERT_WEBHOOK_URL: must be an http:// or https:// URL"],
    [{ SMTP_URL: "smtp://mail.example.com" }, "SMTP_URL, ALERT_EMAIL_FROM, ALERT_EMAIL_TO: set all three"],
    [
      { SMTP_URL: "http://mail", ALERT_EMAIL_FROM: "a@b.c", ALERT_EMAIL_TO: "d@e.f" },
      "SMTP_URL: must be a URL such as smtp://",
    ],
    [{ SMTP_URL: "smtp://m", ALERT_EMAIL_FROM: "a@b.c", ALERT_EMAIL_TO: "ops" }, "ALERT_EMAIL_TO: must be a comma-separated list"],
    [{ ALERT_MAX_BACKUP_AGE: "soon" }, "ALERT_MAX_BACKUP_AGE: must be a duration"],
    [{ ALERT_MIN_FREE_PERCENT: "150" }, "ALERT_MIN_FREE_PERCENT: must be a whole number from 0 to 99"],
    [{ ALERT_CHECK_CRON: "every day" }, "ALERT_CHECK_CRON:"],
  ])("%o is refused with a message naming the setting", (extra, message) => {
    expect(() => loadConfig(env(extra))).toThrow(ConfigError);
    expect(() => loadConfig(env(extra))).toThrow(message);
  });

  it("defaults: a 26h dead-man's switch, 10% free disk, checks every 15 minutes", () => {
    const { ALERT_CHECK_CRON: _c, ...rest } = env({});
    const c = loadConfig(rest);
    expect(c.alerts.maxBackupAgeMs).toBe(26 * 3_600_000);
    expect(c.alerts.minFreePercent).toBe(10);
    expect(c.alerts.checkCron).toBe("*/15 * * * *");
    expect(c.alerts.webhook).toBeNull();
    expect(c.alerts.email).toBeNull();
  });
});
