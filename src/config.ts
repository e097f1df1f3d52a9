import { readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { z } from "zod";
import { cronProblem } from "./scheduler/cron.js";

/**
 * Where and how to reach one PostgreSQL database. Parsed from a
 * `postgres://user:password@host:port/database?sslmode=...` URL.
 */
export interface PgTarget {
  readonly host: string;
  readonly port: number;
  readonly user: string | undefined;
  readonly password: string | undefined;
  readonly database: string;
  /**
   * libpq's sslmode. Unset, prefer and allow are settled when the service starts
   * (`settleSslMode`): node-postgres cannot fall back from SSL as libpq does, so the
   * server is asked once and both the service's connections and its tools then use
   * "require" or "disable".
   */
  readonly sslmode: SslMode | undefined;
  /** Files for TLS, as libpq's sslrootcert, sslcert and sslkey. */
  readonly sslrootcert?: string;
  readonly sslcert?: string;
  readonly sslkey?: string;
}

export const SSL_MODES = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] as const;
export type SslMode = (typeof SSL_MODES)[number];

/** The query parameters of a PostgreSQL URL the service passes on; libpq's others it refuses rather than ignore. */
const URL_PARAMETERS = ["host", "port", "user", "password", "sslmode", "sslrootcert", "sslcert", "sslkey"];

export type ArchiveFormatSetting = "custom" | "plain";
export type CompressionSetting = "zstd" | "gzip";

/** The service's whole configuration, validated once at start. */
export interface Config {
  readonly grpcHost: string;
  readonly grpcPort: number;
  readonly tlsCertFile: string | undefined;
  readonly tlsKeyFile: string | undefined;
  readonly control: PgTarget;
  readonly target: PgTarget;
  readonly dataDir: string;
  readonly backupDir: string;
  readonly backupFormat: ArchiveFormatSetting;
  readonly backupCompression: CompressionSetting;
  readonly compressionLevel: number;
  /** zstd worker threads (-T). */
  readonly compressionThreads: number;
  readonly retentionDays: number;
  /** Cleanup never removes the newest this many VERIFIED backups of a database. */
  readonly retentionMinKeep: number;
  /** Server sessions loading a custom archive: table rows split over them, pg_restore --jobs for indexes (1: one psql stream). */
  readonly restoreJobs: number;
  /** Free space BACKUP_DIR must keep beyond a backup's estimated size. */
  readonly minFreeBytes: number;
  /** Directory of pg_dump/pg_restore/psql; PATH when unset. */
  readonly pgBinDir: string | undefined;
  readonly jwt: {
    readonly secret: string | undefined;
    readonly secretFile: string | undefined;
    readonly publicKeyFile: string | undefined;
    readonly privateKeyFile: string | undefined;
    readonly issuer: string | undefined;
    readonly audience: string | undefined;
    readonly roleClaim: string;
    readonly usernameClaim: string;
  };
  readonly logLevel: string;
  readonly shutdownGraceMs: number;
  /** Days the service keeps its own history (job runs, incidents, restore runs, audit events); 0: forever. */
  readonly historyRetentionDays: number;
  /** How often, while running, backups left unfinished by a failed write are recovered (0: only at start). */
  readonly recoveryIntervalMs: number;
  /** Deep verification's sanity queries: inline JSON, or a JSON file (read at start). */
  readonly sanity: { readonly json: string | undefined; readonly file: string | undefined };
  readonly scheduler: {
    readonly enabled: boolean;
    readonly timeZone: string;
    /** Cron expressions; null when switched off. */
    readonly dailyBackupCron: string | null;
    readonly weeklyCleanupCron: string | null;
    readonly restoreDrillCron: string | null;
    readonly catchUpWindowMs: number;
    /** Databases the daily backup covers. */
    readonly databases: readonly string[];
    readonly replicaId: string;
  };
  /** Prometheus metrics over HTTP/1.1; null when switched off. */
  readonly metrics: { readonly host: string; readonly port: number } | null;
  readonly alerts: AlertConfig;
}

export interface AlertConfig {
  readonly webhook: { readonly url: string; readonly failuresOnly: boolean } | null;
  readonly email: {
    readonly smtpUrl: string;
    readonly from: string;
    readonly to: readonly string[];
    readonly failuresOnly: boolean;
  } | null;
  /** Dead-man's switch: alert when a database's newest VERIFIED backup is older; null: off. */
  readonly maxBackupAgeMs: number | null;
  /** Disk alert when BACKUP_DIR has less free space than this (0: off). */
  readonly minFreeBytes: number;
  /** Disk alert when BACKUP_DIR has less than this percent free (0: off). */
  readonly minFreePercent: number;
  /** Names the backup disk in its incident; unset: `<hostname>:<BACKUP_DIR>`. */
  readonly diskName: string | undefined;
  /** When the alert-check job (backup age, disk space) runs; null when switched off. */
  readonly checkCron: string | null;
  /** Delivery attempts after the first, with doubling delays from retryDelayMs. */
  readonly retries: number;
  readonly retryDelayMs: number;
  readonly timeoutMs: number;
}

/** Thrown when the environment does not hold a valid configuration. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

const optionalString = z
  .string()
  .optional()
  .transform((v) => (v === undefined || v.trim() === "" ? undefined : v));

function intSetting(def: number, min: number, max: number) {
  return z
    .string()
    .optional()
    .transform((v, ctx) => {
      if (v === undefined || v.trim() === "") return def;
      if (!/^-?\d+$/.test(v.trim())) {
        ctx.addIssue({ code: "custom", message: `must be a whole number from ${min} to ${max}` });
        return z.NEVER;
      }
      const n = Number(v);
      if (n < min || n > max) {
        ctx.addIssue({ code: "custom", message: `must be a whole number from ${min} to ${max}` });
        return z.NEVER;
      }
      return n;
    });
}

function booleanSetting() {
  return optionalString.pipe(
    z.enum(["true", "false", "1", "0", "yes", "no"], { message: "must be true or false" }).optional(),
  );
}

const isTrue = (v: string | undefined) => v !== undefined && ["true", "1", "yes"].includes(v);

const EMAIL = /^[^\s@<>,]+@[^\s@<>,]+$/;

function pgUrl(def: string) {
  return z
    .string()
    .optional()
    .transform((v, ctx): PgTarget => {
      const raw = v === undefined || v.trim() === "" ? def : v.trim();
      const parsed = parsePgUrl(raw);
      if (typeof parsed === "string") {
        ctx.addIssue({ code: "custom", message: parsed });
        return z.NEVER;
      }
      return parsed;
    });
}

/** Parses a PostgreSQL URL; returns a reason (never the URL) when it is not one. */
export function parsePgUrl(raw: string): PgTarget | string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return "must be a URL of the form postgres://user:password@host:port/database";
  }
  if (url.protocol !== "postgres:" && url.protocol !== "postgresql:") {
    return "must start with postgres:// or postgresql://";
  }
  // URL keeps a % that starts no escape as it is, and decodeURIComponent throws on it
  // (a password such as 50%off): that is a setting to fix, not a crash.
  const parts: Record<"database" | "host" | "user" | "password", string> = { database: "", host: "", user: "", password: "" };
  for (const [part, raw] of [
    ["database", url.pathname.replace(/^\//, "")],
    ["host", url.hostname],
    ["user", url.username],
    ["password", url.password],
  ] as const) {
    try {
      parts[part] = decodeURIComponent(raw);
    } catch {
      return `has a % not followed by two hex digits in its ${part} (hint: write a % as %25)`;
    }
  }
  const { database } = parts;
  if (database === "" || database.includes("/")) {
    return "must name a database in its path, e.g. postgres://127.0.0.1:5432/mydb";
  }
  const unknown = [...new Set(url.searchParams.keys())].filter((k) => !URL_PARAMETERS.includes(k));
  if (unknown.length > 0) {
    return (
      `has query parameters the service does not pass on to its connections: ${unknown.join(", ")} ` +
      `(it takes ${URL_PARAMETERS.join(", ")}; leave the others out rather than have them ignored)`
    );
  }
  // As libpq: a query parameter wins over the same part of the URL.
  const param = (k: string) => url.searchParams.get(k) ?? undefined;
  const host = param("host") ?? parts.host;
  if (host === "") {
    // libpq would use its compiled-in socket directory, which the service cannot know.
    return "names no host (hint: postgres://127.0.0.1:5432/mydb, or for the Unix socket its directory: postgres:///mydb?host=/var/run/postgresql)";
  }
  const portText = param("port") ?? url.port;
  const port = portText === "" ? 5432 : Number(portText);
  if (!/^\d*$/.test(portText) || !Number.isInteger(port) || port < 1 || port > 65535) return "has an invalid port";
  const sslmode = param("sslmode");
  if (sslmode !== undefined && !(SSL_MODES as readonly string[]).includes(sslmode)) {
    return `has an sslmode libpq does not know (it takes ${SSL_MODES.join(", ")})`;
  }
  const user = param("user") ?? parts.user;
  const password = param("password") ?? parts.password;
  return {
    host: host.replace(/^\[(.*)\]$/, "$1"),
    port,
    user: user === "" ? undefined : user,
    password: password === "" ? undefined : password,
    database,
    sslmode: sslmode as SslMode | undefined,
    ...(param("sslrootcert") ? { sslrootcert: param("sslrootcert") } : {}),
    ...(param("sslcert") ? { sslcert: param("sslcert") } : {}),
    ...(param("sslkey") ? { sslkey: param("sslkey") } : {}),
  };
}

/**
 * The files only the service itself reads (not `backupctl token`, which loads the same
 * configuration, perhaps as a user who may not read the TLS key): checked as the service
 * starts, before it touches a database, since the server reads them only when it starts
 * listening, after migrations and recovery.
 */
export function checkServiceFiles(config: Config): void {
  const problems: string[] = [];
  for (const [name, file] of [["TLS_CERT_FILE", config.tlsCertFile], ["TLS_KEY_FILE", config.tlsKeyFile]] as const) {
    const problem = file === undefined ? null : unreadableFile(file);
    if (problem) problems.push(`${name}: ${problem}`);
  }
  for (const [name, t] of [["CONTROL_DATABASE_URL", config.control], ["TARGET_DATABASE_URL", config.target]] as const) {
    for (const k of ["sslrootcert", "sslcert", "sslkey"] as const) {
      const problem = t[k] === undefined ? null : unreadableFile(t[k]);
      if (problem) problems.push(`${name}: ${k}: ${problem}`);
    }
  }
  if (problems.length > 0) throw new ConfigError(`invalid configuration: ${problems.join("; ")}`);
}

/** Why a file the service reads at start cannot be read (its error code), or null; never its path. */
function unreadableFile(file: string): string | null {
  try {
    // Read, not only access(): a directory passes access() and fails the read at listen time.
    readFileSync(file);
    return null;
  } catch (err) {
    return `cannot read the file (${(err as NodeJS.ErrnoException).code ?? "error"})`;
  }
}

const envSchema = z.object({
  GRPC_HOST: optionalString.transform((v) => v ?? "127.0.0.1"),
  GRPC_PORT: intSetting(50051, 0, 65535),
  TLS_CERT_FILE: optionalString,
  TLS_KEY_FILE: optionalString,
  CONTROL_DATABASE_URL: pgUrl("postgres://127.0.0.1:5432/backup_service"),
  TARGET_DATABASE_URL: pgUrl("postgres://127.0.0.1:5432/postgres"),
  DATA_DIR: optionalString,
  BACKUP_DIR: optionalString,
  BACKUP_FORMAT: optionalString.pipe(z.enum(["custom", "plain"], { message: "must be custom or plain" }).optional()),
  BACKUP_COMPRESSION: optionalString.pipe(z.enum(["zstd", "gzip"], { message: "must be zstd or gzip" }).optional()),
  BACKUP_COMPRESSION_LEVEL: optionalString,
  BACKUP_COMPRESSION_THREADS: intSetting(2, 0, 64),
  RETENTION_DAYS: intSetting(30, 1, 3650),
  BACKUP_MIN_FREE_BYTES: intSetting(0, 0, Number.MAX_SAFE_INTEGER),
  RETENTION_MIN_KEEP: intSetting(3, 1, 1000),
  RESTORE_JOBS: intSetting(2, 1, 32),
  PG_BIN_DIR: optionalString,
  JWT_SECRET: optionalString,
  JWT_SECRET_FILE: optionalString,
  JWT_PUBLIC_KEY_FILE: optionalString,
  JWT_PRIVATE_KEY_FILE: optionalString,
  JWT_ISSUER: optionalString,
  JWT_AUDIENCE: optionalString,
  JWT_ROLE_CLAIM: optionalString.transform((v) => v ?? "role"),
  JWT_USERNAME_CLAIM: optionalString.transform((v) => v ?? "username"),
  LOG_LEVEL: optionalString.pipe(
    z
      .enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"], {
        message: "must be one of fatal, error, warn, info, debug, trace, silent",
      })
      .optional(),
  ),
  SHUTDOWN_GRACE_MS: intSetting(10_000, 0, 600_000),
  RECOVERY_INTERVAL_MS: intSetting(300_000, 0, 86_400_000),
  HISTORY_RETENTION_DAYS: intSetting(365, 0, 36_500),
  SCHEDULER_ENABLED: booleanSetting(),
  SCHEDULE_TZ: optionalString,
  DAILY_BACKUP_CRON: optionalString,
  WEEKLY_CLEANUP_CRON: optionalString,
  RESTORE_DRILL_CRON: optionalString,
  VERIFY_SANITY_SQL: optionalString,
  VERIFY_SANITY_SQL_FILE: optionalString,
  SCHEDULE_CATCHUP_WINDOW: optionalString,
  BACKUP_DATABASES: optionalString,
  REPLICA_ID: optionalString,
  METRICS_HOST: optionalString,
  METRICS_PORT: optionalString,
  ALERT_WEBHOOK_URL: optionalString,
  ALERT_WEBHOOK_FAILURES_ONLY: booleanSetting(),
  SMTP_URL: optionalString,
  ALERT_EMAIL_FROM: optionalString,
  ALERT_EMAIL_TO: optionalString,
  ALERT_EMAIL_FAILURES_ONLY: booleanSetting(),
  ALERT_MAX_BACKUP_AGE: optionalString,
  ALERT_MIN_FREE_BYTES: intSetting(0, 0, Number.MAX_SAFE_INTEGER),
  ALERT_MIN_FREE_PERCENT: intSetting(10, 0, 99),
  ALERT_CHECK_CRON: optionalString,
  ALERT_DISK_NAME: optionalString,
  ALERT_RETRIES: intSetting(4, 0, 20),
  ALERT_RETRY_DELAY_MS: intSetting(2000, 1, 3_600_000),
  ALERT_TIMEOUT_MS: intSetting(10_000, 100, 600_000),
});

/** "6h", "90m", "30s", "2d" or plain seconds -> milliseconds; null if malformed. */
export function parseDuration(text: string): number | null {
  const m = /^(\d+)\s*(ms|s|m|h|d)?$/.exec(text.trim());
  if (!m) return null;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[(m[2] ?? "s") as "ms" | "s" | "m" | "h" | "d"];
  return Number(m[1]) * unit;
}

/**
 * Reads and validates the configuration. This is the only place that reads
 * the environment. Errors name the setting and the rule, never the value.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const result = envSchema.safeParse(env);
  if (!result.success) {
    const lines = result.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`);
    throw new ConfigError(`invalid configuration: ${lines.join("; ")}`);
  }
  const e = result.data;
  const problems: string[] = [];
  const compression = e.BACKUP_COMPRESSION ?? "zstd";
  const [minLevel, maxLevel, defLevel] = compression === "zstd" ? [1, 19, 3] : [1, 9, 6];
  let level = defLevel;
  if (e.BACKUP_COMPRESSION_LEVEL !== undefined) {
    const n = Number(e.BACKUP_COMPRESSION_LEVEL);
    if (!Number.isInteger(n) || n < minLevel || n > maxLevel) {
      problems.push(`BACKUP_COMPRESSION_LEVEL: must be a whole number from ${minLevel} to ${maxLevel} for ${compression}`);
    } else {
      level = n;
    }
  }
  if ((e.TLS_CERT_FILE === undefined) !== (e.TLS_KEY_FILE === undefined)) {
    problems.push("TLS_CERT_FILE, TLS_KEY_FILE: set both to serve TLS, or neither");
  }
  const keySources = [e.JWT_SECRET, e.JWT_SECRET_FILE, e.JWT_PUBLIC_KEY_FILE].filter((v) => v !== undefined);
  if (keySources.length > 1) {
    problems.push("JWT_SECRET, JWT_SECRET_FILE, JWT_PUBLIC_KEY_FILE: set at most one of them");
  }
  if (e.JWT_SECRET !== undefined && Buffer.byteLength(e.JWT_SECRET) < 32) {
    problems.push("JWT_SECRET: must be at least 32 bytes long");
  }
  const tz = e.SCHEDULE_TZ ?? "Asia/Jakarta";
  const cronSetting = (name: string, value: string | undefined, def: string): string | null => {
    const expr = (value ?? def).trim();
    if (expr.toLowerCase() === "off") return null;
    const problem = cronProblem(expr, tz);
    if (problem) problems.push(problem.startsWith("unknown time zone") ? `SCHEDULE_TZ: ${problem}` : `${name}: ${problem}`);
    return expr;
  };
  const dailyBackupCron = cronSetting("DAILY_BACKUP_CRON", e.DAILY_BACKUP_CRON, "0 2 * * *");
  const weeklyCleanupCron = cronSetting("WEEKLY_CLEANUP_CRON", e.WEEKLY_CLEANUP_CRON, "0 3 * * 0");
  const restoreDrillCron = cronSetting("RESTORE_DRILL_CRON", e.RESTORE_DRILL_CRON, "0 4 * * 0");
  if (e.VERIFY_SANITY_SQL !== undefined && e.VERIFY_SANITY_SQL_FILE !== undefined) {
    problems.push("VERIFY_SANITY_SQL, VERIFY_SANITY_SQL_FILE: set at most one of them");
  }
  if (e.VERIFY_SANITY_SQL !== undefined) {
    const problem = sanityProblem(e.VERIFY_SANITY_SQL);
    if (problem) problems.push(`VERIFY_SANITY_SQL: ${problem}`);
  }
  const catchUpWindowMs = parseDuration(e.SCHEDULE_CATCHUP_WINDOW ?? "6h");
  if (catchUpWindowMs === null) {
    problems.push("SCHEDULE_CATCHUP_WINDOW: must be a duration such as 6h, 90m or 3600 (seconds); 0 turns catch-up off");
  }
  // The target's own database as it is: a name may hold a comma or spaces.
  const databases =
    e.BACKUP_DATABASES === undefined
      ? [e.TARGET_DATABASE_URL.database]
      : e.BACKUP_DATABASES.split(",")
          .map((d) => d.trim())
          .filter((d) => d.length > 0);
  if (databases.length === 0 || databases.some((d) => Buffer.byteLength(d) > 63)) {
    problems.push("BACKUP_DATABASES: must be a comma-separated list of database names (1 to 63 bytes each)");
  }
  const alertCheckCron = cronSetting("ALERT_CHECK_CRON", e.ALERT_CHECK_CRON, "*/15 * * * *");
  let metricsPort: number | null = 9464;
  if (e.METRICS_PORT !== undefined) {
    const v = e.METRICS_PORT.trim().toLowerCase();
    if (v === "off") metricsPort = null;
    else if (/^\d+$/.test(v) && Number(v) <= 65535) metricsPort = Number(v);
    else problems.push("METRICS_PORT: must be a port from 0 to 65535, or off");
  }
  let maxBackupAgeMs: number | null = 26 * 3_600_000;
  if (e.ALERT_MAX_BACKUP_AGE !== undefined) {
    if (e.ALERT_MAX_BACKUP_AGE.trim().toLowerCase() === "off") maxBackupAgeMs = null;
    else {
      maxBackupAgeMs = parseDuration(e.ALERT_MAX_BACKUP_AGE);
      if (maxBackupAgeMs === null || maxBackupAgeMs === 0) {
        problems.push("ALERT_MAX_BACKUP_AGE: must be a duration such as 26h, 90m or 2d, or off");
      }
    }
  }
  let webhook: AlertConfig["webhook"] = null;
  if (e.ALERT_WEBHOOK_URL !== undefined) {
    const ok = URL.canParse(e.ALERT_WEBHOOK_URL) && /^https?:$/.test(new URL(e.ALERT_WEBHOOK_URL).protocol);
    if (!ok) problems.push("ALERT_WEBHOOK_URL: must be an http:// or https:// URL");
    else webhook = Object.freeze({ url: e.ALERT_WEBHOOK_URL, failuresOnly: isTrue(e.ALERT_WEBHOOK_FAILURES_ONLY) });
  }
  let email: AlertConfig["email"] = null;
  const emailSettings = [e.SMTP_URL, e.ALERT_EMAIL_FROM, e.ALERT_EMAIL_TO];
  if (emailSettings.some((v) => v !== undefined)) {
    const to = (e.ALERT_EMAIL_TO ?? "").split(",").map((a) => a.trim()).filter((a) => a.length > 0);
    const before = problems.length;
    if (emailSettings.some((v) => v === undefined)) {
      problems.push("SMTP_URL, ALERT_EMAIL_FROM, ALERT_EMAIL_TO: set all three to send alerts by email, or none");
    } else {
      const smtpOk = URL.canParse(e.SMTP_URL!) && /^smtps?:$/.test(new URL(e.SMTP_URL!).protocol);
      if (!smtpOk) problems.push("SMTP_URL: must be a URL such as smtp://user:password@mail.example.com:587 or smtps://...:465");
      if (!EMAIL.test(e.ALERT_EMAIL_FROM!.replace(/^.*<(.*)>\s*$/, "$1"))) {
        problems.push("ALERT_EMAIL_FROM: must be an address such as backups@example.com or \"Backups <backups@example.com>\"");
      }
      if (to.length === 0 || to.some((a) => !EMAIL.test(a))) {
        problems.push("ALERT_EMAIL_TO: must be a comma-separated list of addresses such as ops@example.com");
      }
    }
    if (problems.length === before) {
      email = Object.freeze({
        smtpUrl: e.SMTP_URL!,
        from: e.ALERT_EMAIL_FROM!,
        to: Object.freeze(to),
        failuresOnly: isTrue(e.ALERT_EMAIL_FAILURES_ONLY),
      });
    }
  }
  if (problems.length > 0) throw new ConfigError(`invalid configuration: ${problems.join("; ")}`);

  const dataDir = path.resolve(e.DATA_DIR ?? "data");
  return Object.freeze({
    grpcHost: e.GRPC_HOST,
    grpcPort: e.GRPC_PORT,
    tlsCertFile: e.TLS_CERT_FILE,
    tlsKeyFile: e.TLS_KEY_FILE,
    control: Object.freeze(e.CONTROL_DATABASE_URL),
    target: Object.freeze(e.TARGET_DATABASE_URL),
    dataDir,
    backupDir: path.resolve(e.BACKUP_DIR ?? path.join(dataDir, "backups")),
    backupFormat: e.BACKUP_FORMAT ?? "custom",
    backupCompression: compression,
    compressionLevel: level,
    compressionThreads: e.BACKUP_COMPRESSION_THREADS,
    retentionDays: e.RETENTION_DAYS,
    minFreeBytes: e.BACKUP_MIN_FREE_BYTES,
    retentionMinKeep: e.RETENTION_MIN_KEEP,
    restoreJobs: e.RESTORE_JOBS,
    pgBinDir: e.PG_BIN_DIR,
    jwt: Object.freeze({
      secret: e.JWT_SECRET,
      secretFile: e.JWT_SECRET_FILE,
      publicKeyFile: e.JWT_PUBLIC_KEY_FILE,
      privateKeyFile: e.JWT_PRIVATE_KEY_FILE,
      issuer: e.JWT_ISSUER,
      audience: e.JWT_AUDIENCE,
      roleClaim: e.JWT_ROLE_CLAIM,
      usernameClaim: e.JWT_USERNAME_CLAIM,
    }),
    logLevel: e.LOG_LEVEL ?? "info",
    shutdownGraceMs: e.SHUTDOWN_GRACE_MS,
    recoveryIntervalMs: e.RECOVERY_INTERVAL_MS,
    historyRetentionDays: e.HISTORY_RETENTION_DAYS,
    sanity: Object.freeze({ json: e.VERIFY_SANITY_SQL, file: e.VERIFY_SANITY_SQL_FILE }),
    scheduler: Object.freeze({
      enabled: isTrue(e.SCHEDULER_ENABLED ?? "true"),
      timeZone: tz,
      dailyBackupCron,
      weeklyCleanupCron,
      restoreDrillCron,
      catchUpWindowMs: catchUpWindowMs ?? 0,
      databases: Object.freeze([...new Set(databases)]),
      replicaId: e.REPLICA_ID ?? `${os.hostname()}-${process.pid}`,
    }),
    metrics: metricsPort === null ? null : Object.freeze({ host: e.METRICS_HOST ?? e.GRPC_HOST, port: metricsPort }),
    alerts: Object.freeze({
      webhook,
      email,
      maxBackupAgeMs,
      minFreeBytes: e.ALERT_MIN_FREE_BYTES,
      minFreePercent: e.ALERT_MIN_FREE_PERCENT,
      diskName: e.ALERT_DISK_NAME,
      checkCron: alertCheckCron,
      retries: e.ALERT_RETRIES,
      retryDelayMs: e.ALERT_RETRY_DELAY_MS,
      timeoutMs: e.ALERT_TIMEOUT_MS,
    }),
  });
}

/** A PostgreSQL URL without its password, for logs and messages. */
export function describeTarget(t: PgTarget): string {
  return `${t.user ? `${t.user}@` : ""}${t.host}:${t.port}/${t.database}`;
}

/** libpq's own variables (PGPASSWORD, PGSSLMODE, PGOPTIONS, PGCONNECT_TIMEOUT...); not the service's PG_BIN_DIR. */
const LIBPQ_VARIABLE = /^PG[A-Z][A-Z_]*$/;

/**
 * Takes libpq's variables out of this process's environment, once the configuration is read,
 * and returns their names. The service connects with what CONTROL_DATABASE_URL and
 * TARGET_DATABASE_URL say: node-postgres would otherwise fill what a URL leaves out from them
 * (a password, sslmode, session options), while pg_dump, pg_restore and psql never see them
 * (childProcessEnv), so the service's own connections and its tools' could differ. A password
 * file at the default place (~/.pgpass) still serves both.
 */
export function dropLibpqEnvironment(env: NodeJS.ProcessEnv = process.env): string[] {
  const names = Object.keys(env).filter((k) => LIBPQ_VARIABLE.test(k)).sort();
  for (const k of names) delete env[k];
  return names;
}

/**
 * The environment handed to child processes: ours, minus libpq's variables
 * (each child gets exactly the connection we give it) and the service's own
 * secrets.
 */
export function childProcessEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith("PG") || k.startsWith("JWT_") || k.endsWith("DATABASE_URL")) continue;
    if (k.startsWith("SMTP_") || k.startsWith("ALERT_")) continue;
    env[k] = v;
  }
  return env;
}

/**
 * Sanity queries: a JSON object from database name ("*" for every database)
 * to a list of SQL queries, each of which must return true.
 */
export function parseSanityQueries(text: string): Record<string, string[]> | string {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return 'must be JSON such as {"mydb": ["SELECT count(*) > 0 FROM users"], "*": ["SELECT true"]}';
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return "must be a JSON object from database name (or \"*\") to a list of queries";
  }
  const out: Record<string, string[]> = {};
  for (const [db, queries] of Object.entries(value)) {
    if (!Array.isArray(queries) || queries.some((q) => typeof q !== "string" || q.trim() === "")) {
      return `the entry for "${db}" must be a list of non-empty SQL strings`;
    }
    out[db] = queries as string[];
  }
  return out;
}

function sanityProblem(text: string): string | null {
  const r = parseSanityQueries(text);
  return typeof r === "string" ? r : null;
}
