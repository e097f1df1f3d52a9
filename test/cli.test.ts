/**
 * backupctl, run as users run it: the `bin` launcher in a child process,
 * against a real service, checking exit codes, stdout and stderr.
 */
import { execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupStatus, BackupType } from "../gen/backup/v1/backup_pb.js";
import {
  createDatabase,
  createFixture,
  dropDatabase,
  mintToken,
  seedDatabase,
  sql,
  uniqueName,
  waitFor,
  type TestService,
} from "./helpers.js";

const BIN = path.resolve("src/cli/backupctl-bin.mjs");

const fx = createFixture("cli");
const target = fx.target;
const big = uniqueName("bs_cli_big");
const extraDbs: string[] = [big];
let svc: TestService;
let token: string;
let expected: Record<string, number>;
/** A VERIFIED backup of the target, taken through the CLI. */
let backupId: string;

beforeAll(async () => {
  await createDatabase(target);
  expected = await seedDatabase(target, 1000);
  svc = await fx.service();
  token = await mintToken({ sub: "cli-admin", role: "admin", username: "CLI Admin" });
}, 60_000);

afterAll(async () => {
  await fx.cleanup();
  for (const d of extraDbs) await dropDatabase(d);
});

function newDbName(): string {
  const name = uniqueName("bs_cli_restored");
  extraDbs.push(name);
  return name;
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The environment of a shell that talks to the test service (none of the developer's BACKUP_* settings). */
function cliEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, BACKUP_SERVICE_URL: svc.url, BACKUP_TOKEN: token };
  delete env.BACKUP_CA_FILE;
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

/** Runs `backupctl args...` to completion; stdin is not a terminal (/dev/null). */
function ctl(args: string[], env: Record<string, string | undefined> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: cliEnv(env), stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, stdout, stderr }));
  });
}

async function ctlJson<T = Record<string, any>>(args: string[], env: Record<string, string | undefined> = {}): Promise<T> {
  const r = await ctl([...args, "--json"], env);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as T;
}

/**
 * A failure: the exit code, nothing on stdout, and the reason in one line on
 * stderr (the last; a restore's phase lines may come before it), returned.
 */
async function failure(args: string[], code: number, env: Record<string, string | undefined> = {}): Promise<string> {
  const r = await ctl(args, env);
  expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(code);
  expect(r.stdout).toBe("");
  const lines = r.stderr.split("\n");
  expect(lines.pop()).toBe("");
  expect(lines.filter((l) => l.startsWith("backupctl: "))).toEqual([lines.at(-1)]);
  expect(lines.slice(0, -1).every((l) => l.startsWith("restore: "))).toBe(true);
  return lines.at(-1)!;
}

async function sha256(file: string): Promise<string> {
  return createHash("sha256").update(await readFile(file)).digest("hex");
}

describe("backupctl", () => {
  it("creates a backup, then list, get and stats show it, as tables and as JSON", async () => {
    const created = await ctlJson(["create", "--label", "from the cli", "--retention-days", "9"]);
    expect(created.verified).toBe(true);
    expect(created.backup.status).toBe("BACKUP_STATUS_VERIFIED");
    expect(created.backup.label).toBe("from the cli");
    expect(created.backup.retentionDays).toBe(9);
    expect(created.backup.triggeredBy).toBe("cli-admin");
    // 64-bit integers are strings, as in protobuf's JSON mapping.
    expect(created.backup.rowCount).toBe(String(Object.values(expected).reduce((a, n) => a + n, 0)));
    backupId = created.backup.id;

    const [list, listJson, get, getJson, stats, statsJson] = await Promise.all([
      ctl(["list"]),
      ctlJson(["list", "--status", "verified", "--database", target]),
      ctl(["get", backupId]),
      ctlJson(["get", backupId]),
      ctl(["stats"]),
      ctlJson(["stats", "--database", target]),
    ]);
    expect(list.code).toBe(0);
    expect(list.stderr).toBe("");
    const lines = list.stdout.trim().split("\n");
    expect(lines[0]).toMatch(/^ID\s+DATABASE\s+TYPE\s+STATUS\s+STARTED\s+SIZE\s+ROWS\s+LABEL$/);
    expect(lines[1]).toMatch(new RegExp(`^${backupId}\\s+${target}\\s+MANUAL\\s+VERIFIED\\s+\\d{4}-\\d\\d-\\d\\dT[\\d:]+Z\\s+[\\d.]+ KiB\\s+3,015\\s+from the cli$`));
    expect(lines.at(-1)).toBe("page 1 of 1, 1 backup in all");

    expect(listJson.backups.map((b: { id: string }) => b.id)).toEqual([backupId]);
    expect(listJson.total).toBe("1");

    expect(get.code).toBe(0);
    expect(get.stdout).toMatch(new RegExp(`^id:\\s+${backupId}$`, "m"));
    expect(get.stdout).toMatch(/^status:\s+VERIFIED$/m);
    expect(get.stdout).toMatch(/^file:\s+\S+\.dump\.zst \(on disk\)$/m);
    expect(get.stdout).toMatch(/^contents:\s+7 tables, 3,015 rows$/m);
    expect(getJson.fileExists).toBe(true);
    expect(getJson.backup.checksum).toBe(await sha256(path.join(svc.backupDir, getJson.backup.fileName)));

    expect(stats.code).toBe(0);
    expect(stats.stdout).toMatch(/^success rate:\s+100\.00%$/m);
    expect(statsJson.totalBackups).toBe("1");
    expect(statsJson.latestBackup.id).toBe(backupId);
  });

  it("create --async returns the IN_PROGRESS record at once", async () => {
    const r = await ctl(["create", "--async", "--type", "full"]);
    expect(r.code, r.stderr).toBe(0);
    const id = /^backup (\S+) started \(IN_PROGRESS\)/.exec(r.stdout)?.[1];
    expect(id).toBeDefined();
    // Let it finish: a running backup would make the restores below wait their turn (ABORTED).
    const done = await waitFor("the async backup", async () => {
      const { backup } = await svc.client.getBackup({ id: id! });
      return backup!.status === BackupStatus.IN_PROGRESS || backup!.status === BackupStatus.COMPLETED ? null : backup;
    });
    expect(done.status).toBe(BackupStatus.VERIFIED);
    expect(done.backupType).toBe(BackupType.FULL);
  });

  it("exits with a code scripts can rely on, and says why in one line", async () => {
    const stranger = await mintToken({ sub: "x", secret: "another-secret-that-is-long-enough-for-hs256" });
    const viewer = await mintToken({ sub: "v", role: "viewer" });
    const [badFlag, unknownCmd, missingArg, noToken, wrongToken, notAdmin, unknownId, badId, unreachable, badUrl] = await Promise.all([
      failure(["list", "--page", "0"], 2),
      failure(["frobnicate"], 2),
      failure(["get"], 2),
      failure(["list"], 2, { BACKUP_TOKEN: undefined }),
      failure(["list"], 4, { BACKUP_TOKEN: stranger }),
      failure(["stats"], 4, { BACKUP_TOKEN: viewer }),
      failure(["get", "0b9f7c1e-5d2a-4c1b-9a3e-2f4d6b8a0c1e"], 5),
      failure(["get", "not-a-uuid"], 2),
      failure(["--url", "http://127.0.0.1:1", "list"], 3),
      failure(["list", "--url", "ftp://127.0.0.1"], 2),
    ]);
    expect(badFlag).toMatch(/--page.*must be a whole number/);
    expect(unknownCmd).toMatch(/unknown command 'frobnicate'/);
    expect(missingArg).toMatch(/missing required argument 'id'/);
    expect(noToken).toMatch(/no token: pass --token or set BACKUP_TOKEN/);
    expect(wrongToken).toMatch(/^backupctl: UNAUTHENTICATED: token signature is invalid/);
    expect(notAdmin).toMatch(/^backupctl: PERMISSION_DENIED: /);
    expect(unknownId).toMatch(/^backupctl: NOT_FOUND: backup 0b9f7c1e-5d2a-4c1b-9a3e-2f4d6b8a0c1e not found/);
    expect(badId).toMatch(/^backupctl: INVALID_ARGUMENT: id: /);
    expect(unreachable).toMatch(/^backupctl: UNAVAILABLE: connection to the service at http:\/\/127\.0\.0\.1:1 failed: .*ECONNREFUSED/);
    expect(badUrl).toMatch(/--url: expected an http:\/\/ \(h2c\) or https:\/\/ \(TLS\) URL/);

    // --help is not an error.
    const help = await ctl(["restore", "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/--yes/);
  });

  it("verify and verify --deep pass a good backup; a damaged file is CORRUPTED with exit code 1", async () => {
    const [quick, deep] = await Promise.all([ctlJson(["verify", backupId]), ctl(["verify", backupId, "--deep"])]);
    expect(quick.verified).toBe(true);
    expect(quick.level).toBe("VERIFICATION_LEVEL_CHECKSUM");
    expect(quick.checks.map((c: { name: string }) => c.name)).toEqual(["file_exists", "file_size", "checksum", "decompress", "archive"]);
    expect(deep.code, deep.stderr).toBe(0);
    expect(deep.stdout).toMatch(/: VERIFIED \(verified, restore level, /);
    expect(deep.stdout).toMatch(/^tables\s+ok\s+all 7 tables have the recorded row counts$/m);

    const { backup } = await svc.client.createBackup({ label: "to damage" });
    const file = path.join(svc.backupDir, backup!.fileName);
    const bytes = await readFile(file);
    bytes[bytes.length >> 1] ^= 0xff;
    await writeFile(file, bytes);
    const bad = await ctl(["verify", backup!.id]);
    expect(bad.code).toBe(1);
    expect(bad.stdout).toMatch(/: CORRUPTED \(NOT verified, checksum level, /);
    expect(bad.stdout).toMatch(/^checksum\s+FAILED\s+/m);
    // With --json the result is still printed, and the exit code still says it failed.
    const badJson = await ctl(["verify", backup!.id, "--json"]);
    expect(badJson.code).toBe(1);
    expect(JSON.parse(badJson.stdout)).toMatchObject({ verified: false, status: "BACKUP_STATUS_CORRUPTED" });
    await svc.client.deleteBackup({ id: backup!.id, hardDelete: true });
  });

  it("restore refuses without --yes when stdin is not a terminal, and restores with it", async () => {
    const db = newDbName();
    const refused = await failure(["restore", backupId, "--target", db], 2);
    expect(refused).toMatch(/refusing to restore without confirmation: standard input is not a terminal \(pass --yes\)/);
    expect(await sql("postgres", "SELECT 1 FROM pg_database WHERE datname = $1", [db])).toHaveLength(0);

    const r = await ctl(["restore", backupId, "--target", db, "--yes"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^restored:\\s+backup ${backupId} into database "${db}" in `, "m"));
    expect(r.stdout).toMatch(/^contents:\s+7 tables, 3,015 rows/m);
    expect(r.stdout).toMatch(/^undo:\s+\S/m);
    // No terminal: one line per phase on stderr instead of a progress bar.
    expect(r.stderr).toMatch(/^restore: VALIDATING/m);
    expect(r.stderr).toMatch(/^restore: DONE/m);
    expect(r.stderr).not.toMatch(/\u001b\[|█/);
    const [{ n }] = await sql<{ n: string }>(db, "SELECT count(*) AS n FROM customers");
    expect(Number(n)).toBe(expected["public.customers"]);

    // The target now holds objects: replacing it needs --drop-existing (exit 6 without).
    expect(await failure(["restore", backupId, "--target", db, "--yes"], 6)).toMatch(/^backupctl: FAILED_PRECONDITION: .*already holds/);
    await sql(db, `DELETE FROM billing."Invoice Lines"`);
    const replaced = await ctlJson(["restore", backupId, "--target", db, "--yes", "--drop-existing"]);
    expect(replaced.phase).toBe("RESTORE_PHASE_DONE");
    expect(replaced.result.targetDatabase).toBe(db);
    expect(replaced.result.safetyBackupId).toMatch(/^[0-9a-f-]{36}$/);
    const [{ m }] = await sql<{ m: string }>(db, `SELECT count(*) AS m FROM billing."Invoice Lines"`);
    expect(Number(m)).toBe(expected['billing."Invoice Lines"']);
  });

  it("download writes the file under its name only once its SHA-256 matches", async () => {
    const dir = await fx.tempDir("bs-cli-dl-");
    const { backup } = await svc.client.getBackup({ id: backupId });
    const whole = await ctlJson(["download", backupId, "-o", dir]);
    expect(whole).toMatchObject({ backupId, file: path.join(dir, backup!.fileName), checksum: backup!.checksum, verified: true, resumedFrom: 0 });
    expect(await sha256(whole.file)).toBe(backup!.checksum);
    expect(existsSync(`${whole.file}.part`)).toBe(false);
    expect(await failure(["download", backupId, "-o", dir], 2)).toMatch(/already exists \(pass --force to replace it\)/);

    // An interrupted download continues from the partial file's size.
    const content = await readFile(whole.file);
    const half = content.length >> 1;
    const resumed = path.join(dir, "resumed.dump.zst");
    await writeFile(`${resumed}.part`, content.subarray(0, half));
    expect(await failure(["download", backupId, "-o", resumed], 2)).toMatch(/partial download .* exists \(pass --resume/);
    const r = await ctl(["download", backupId, "-o", resumed, "--resume"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`resumed at .*\\nsha256 ${backup!.checksum} ok\\n$`));
    expect(await sha256(resumed)).toBe(backup!.checksum);
    expect(existsSync(`${resumed}.part`)).toBe(false);

    // A partial file altered on disk: the whole-file checksum catches it, and nothing looks complete.
    const tampered = path.join(dir, "tampered.dump.zst");
    const prefix = Buffer.from(content.subarray(0, half));
    prefix[10] ^= 0xff;
    await writeFile(`${tampered}.part`, prefix);
    const mismatch = await failure(["download", backupId, "-o", tampered, "--resume"], 1);
    expect(mismatch).toMatch(/^backupctl: checksum mismatch: the downloaded file's SHA-256 is [0-9a-f]{64}, the backup's is [0-9a-f]{64}/);
    expect(existsSync(tampered)).toBe(false);
    expect(existsSync(`${tampered}.part`)).toBe(false);
  });

  it("delete marks a backup deleted; --hard removes its file and record", async () => {
    const { backup } = await svc.client.createBackup({ label: "to delete" });
    const id = backup!.id;
    const soft = await ctl(["delete", id]);
    expect(soft.code, soft.stderr).toBe(0);
    expect(soft.stdout).toMatch(/marked backup .* deleted; its file stays/);
    const [got, listed, withDeleted] = await Promise.all([
      ctlJson(["get", id]),
      ctlJson(["list"]),
      ctlJson(["list", "--include-deleted"]),
    ]);
    expect(got.backup.isDeleted).toBe(true);
    expect(got.fileExists).toBe(true);
    expect(listed.backups.map((b: { id: string }) => b.id)).not.toContain(id);
    expect(withDeleted.backups.map((b: { id: string }) => b.id)).toContain(id);

    const hard = await ctlJson(["delete", id, "--hard"]);
    expect(hard.fileRemoved).toBe(true);
    expect(hard.freedBytes).toBe(backup!.fileSize.toString());
    expect(existsSync(path.join(svc.backupDir, backup!.fileName))).toBe(false);
    await failure(["get", id], 5);
  });

  it("cleanup --dry-run reports what would go and changes nothing; cleanup removes it", async () => {
    const [{ id }] = await sql<{ id: string }>(
      svc.control,
      `INSERT INTO backup_service.backup_history
         (backup_type, file_name, status, started_at, retention_days, expires_at, database_name, archive_format, compression, error_message)
       VALUES ('FULL', 'cli_expired.dump.zst', 'FAILED', now() - interval '3 days', 1, now() - interval '2 days', $1, 'custom', 'zstd', 'pg_dump exited with code 1')
       RETURNING id`,
      [target],
    );
    const dry = await ctl(["cleanup", "--dry-run"]);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toMatch(/^dry run: would remove 1 backup, freeing 0 B; nothing was changed$/m);
    expect(dry.stdout).toContain(id);
    expect((await ctlJson(["get", id])).backup.isDeleted).toBe(false);

    const real = await ctlJson(["cleanup"]);
    expect(real).toMatchObject({ dryRun: false, deletedCount: "1" });
    expect(real.removed.map((b: { id: string }) => b.id)).toEqual([id]);
    expect((await ctlJson(["get", id])).backup.isDeleted).toBe(true);
  });

  it("jobs and audit show the schedule and the trail", async () => {
    const [jobs, jobsJson, audit, auditJson] = await Promise.all([
      ctl(["jobs"]),
      ctlJson(["jobs"]),
      ctl(["audit", "--page-size", "5"]),
      ctlJson(["audit", "--action", "CreateBackup", "--actor", "cli-admin"]),
    ]);
    expect(jobs.code).toBe(0);
    expect(jobs.stdout).toMatch(/^daily-backup\s+off\s+Asia\/Jakarta\s+no\s+no\s+-/m);
    expect(jobsJson.jobs.map((j: { name: string }) => j.name)).toEqual(expect.arrayContaining(["daily-backup", "weekly-cleanup", "restore-drill"]));
    expect(audit.code).toBe(0);
    expect(audit.stdout).toMatch(/^TIME\s+ACTOR\s+ACTION\s+OUTCOME\s+BACKUP\s+CLIENT\s+MESSAGE$/m);
    expect(audit.stdout).toMatch(/^page 1 of \d+, [\d,]+ events? in all$/m);
    expect(auditJson.events.length).toBeGreaterThanOrEqual(2);
    expect(auditJson.events.every((e: { action: string; actor: string }) => e.action === "CreateBackup" && e.actor === "cli-admin")).toBe(true);
    expect(auditJson.events.map((e: { backupId: string }) => e.backupId)).toContain(backupId);
  });

  it("token mints a token, as npm run token does, that the service accepts", async () => {
    // The service's own configuration (its JWT_SECRET) is what signs.
    const minted = await ctl(["token", "--sub", "carol", "--username", "Carol", "--ttl", "10m"], { ...svc.env, BACKUP_TOKEN: undefined });
    expect(minted.code, minted.stderr).toBe(0);
    expect(minted.stdout).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+\n$/);
    const carol = minted.stdout.trim();
    const delCheck = await ctl(["delete", "0b9f7c1e-5d2a-4c1b-9a3e-2f4d6b8a0c1e"], { BACKUP_TOKEN: carol });
    expect(delCheck.code).toBe(5); // authenticated and allowed: the backup just does not exist
    const audit = await ctlJson(["audit", "--actor", "carol"]);
    expect(audit.events[0]).toMatchObject({ actor: "carol", actorUsername: "Carol", action: "DeleteBackup", outcome: "NOT_FOUND" });

    const json = await ctlJson(["token", "--sub", "dave"], { ...svc.env });
    expect(json.token).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/);
    expect(await failure(["token", "--sub", "erin", "--ttl", "soon"], 2, svc.env)).toMatch(/--ttl: expected a duration/);
    expect(await failure(["token"], 2, svc.env)).toMatch(/required option '--sub <subject>'/);
  });

  it("talks TLS to an https:// URL, trusting the CA given with --ca", async () => {
    const dir = await fx.tempDir("bs-cli-tls-");
    const cert = path.join(dir, "cert.pem");
    const key = path.join(dir, "key.pem");
    await new Promise<void>((resolve, reject) =>
      execFile(
        "openssl",
        ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
          "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
        (err) => (err ? reject(err) : resolve()),
      ),
    );
    const tls = await fx.service({ TLS_CERT_FILE: cert, TLS_KEY_FILE: key });
    expect(tls.url).toMatch(/^https:/);
    const [ok, untrusted, h2c, tlsToH2c] = await Promise.all([
      ctlJson(["stats", "--ca", cert], { BACKUP_SERVICE_URL: tls.url }),
      failure(["stats"], 3, { BACKUP_SERVICE_URL: tls.url }),
      failure(["stats"], 3, { BACKUP_SERVICE_URL: tls.url.replace(/^https:/, "http:") }),
      failure(["stats"], 3, { BACKUP_SERVICE_URL: svc.url.replace(/^http:/, "https:") }),
    ]);
    expect(ok.totalBackups).toBe("0");
    expect(untrusted).toMatch(/^backupctl: UNAVAILABLE: connection to the service at https:.* failed: self-signed certificate \(hint: pass --ca /);
    expect(h2c).toMatch(/^backupctl: UNAVAILABLE: connection to the service at http:.*if the service serves TLS, use an https:\/\/ URL\)$/);
    expect(tlsToH2c).toMatch(/^backupctl: UNAVAILABLE: .* failed: wrong version number \(hint: the service does not serve TLS there: use an http:\/\/ URL\)$/);
    expect(await failure(["stats", "--ca", path.join(dir, "missing.pem")], 2, { BACKUP_SERVICE_URL: tls.url })).toMatch(/--ca: cannot read .*missing\.pem \(ENOENT\)/);
  });

  it("Ctrl-C during a restore cancels it: exit 130, and the target is left as it was", async () => {
    // Big enough that the restore is still loading when the interrupt arrives.
    await createDatabase(big);
    await sql(
      big,
      `CREATE TABLE payload (id int PRIMARY KEY, body text NOT NULL);
       INSERT INTO payload SELECT g, md5(g::text) || repeat(md5((g * 7)::text), 3) FROM generate_series(1, 600000) g;`,
    );
    const { backup } = await svc.client.createBackup({ database: big });
    const db = newDbName();
    const child = spawn(process.execPath, [BIN, "restore", backup!.id, "--target", db, "--yes"], {
      env: cliEnv(),
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    const exited = new Promise<number | null>((resolve) => child.once("close", resolve));
    const loading = await new Promise<boolean>((resolve) => {
      child.stderr.on("data", (d) => {
        stderr += d;
        if (stderr.includes("restore: RESTORING")) resolve(true);
      });
      child.once("close", () => resolve(false));
    });
    expect(loading, stderr).toBe(true);
    child.kill("SIGINT");
    expect(await exited).toBe(130);
    expect(stderr).toMatch(/^backupctl: interrupted: restore cancelled; .*the target is left as it was$/m);
    // The service saw the cancel: the scratch database is dropped, and the target was never created.
    await waitFor("the scratch database to be dropped", async () => {
      const rows = await sql("postgres", "SELECT datname FROM pg_database WHERE datname LIKE $1", [`bsvc_restore_${svc.app.restoreTag}_%`]);
      return rows.length === 0;
    });
    expect(await sql("postgres", "SELECT 1 FROM pg_database WHERE datname = $1", [db])).toHaveLength(0);
  });

  it("Ctrl-C once the swap has begun: it may have gone through, so the CLI does not say the target was left as it was", async () => {
    const { backup } = await svc.client.createBackup({ database: target });
    const expected = await sql<{ n: string }>(target, "SELECT count(*)::text AS n FROM pg_class WHERE relkind = 'r'");
    for (let attempt = 0; attempt < 3; attempt++) {
      const db = newDbName();
      const child = spawn(process.execPath, [BIN, "restore", backup!.id, "--target", db, "--yes"], {
        env: cliEnv(),
        stdio: ["ignore", "pipe", "pipe"],
      });
      let stderr = "";
      let interrupted = false;
      const exited = new Promise<number | null>((resolve) => child.once("close", resolve));
      child.stderr.on("data", (d) => {
        stderr += d;
        // Once: a second Ctrl-C exits at once.
        if (!interrupted && stderr.includes("restore: FINALIZING")) interrupted = child.kill("SIGINT");
      });
      const code = await exited;
      const { events } = await waitFor("the restore's audit event", async () => {
        const r = await svc.client.listAuditEvents({ action: "RestoreBackup", backupId: backup!.id, pageSize: 1 });
        return r.events[0]?.message.includes(db) ? r : null;
      });
      const replaced = (await sql("postgres", "SELECT 1 FROM pg_database WHERE datname = $1", [db])).length === 1;
      // What the audit trail says is what happened.
      expect(events[0]!.outcome === "OK", events[0]!.message).toBe(replaced);
      if (replaced) expect(await sql(db, "SELECT count(*)::text AS n FROM pg_class WHERE relkind = 'r'")).toEqual(expected);
      if (code === 0) continue; // the restore ended before the interrupt was read
      expect(code, stderr).toBe(130);
      expect(stderr).toMatch(
        new RegExp(`^backupctl: interrupted: restore cancelled while the restored database was being swapped in: the target may have been replaced; the audit trail says which \\(backupctl audit --action RestoreBackup --backup ${backup!.id}\\)$`, "m"),
      );
      expect(stderr).not.toMatch(/left as it was/);
      return;
    }
    // Three restores that each finished before their interrupt was read: nothing more to check here.
  }, 120_000);
});
