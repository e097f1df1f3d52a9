import { randomUUID } from "node:crypto";
import type { Logger } from "../logger.js";
import { DomainError, invalidArgument, isDomainError, notFound, safeReason } from "../errors.js";
import {
  type Actor,
  type ArchiveFormat,
  type BackupRecord,
  type BackupStatus,
  type BackupType,
  type CompressionKind,
  BACKUP_STATUSES,
  BACKUP_TYPES,
  DEFAULT_PAGE_SIZE,
  MAX_LABEL_LENGTH,
  MAX_PAGE_SIZE,
  MAX_RETENTION_DAYS,
  MIN_RETENTION_DAYS,
  backupFileName,
  compressionRatioOf,
  databaseLockKey,
  fileLockKey,
  expiryOf,
  isUuid,
  pageCount,
} from "./backup.js";
import type {
  AuditEvent,
  AuditFilter,
  AuditRepository,
  BackupFilter,
  BackupRepository,
  BackupStats,
  BlobStore,
  Clock,
  DumpEngine,
  DumpResult,
  Lock,
  LockManager,
} from "./ports.js";
import { NO_EVENTS, type EventBus, type VerificationOrigin } from "./events.js";
import { createStopper } from "./stopper.js";

export interface BackupServiceDeps {
  backups: BackupRepository;
  audit: AuditRepository;
  locks: LockManager;
  engine: DumpEngine;
  store: BlobStore;
  clock: Clock;
  logger: Logger;
  /** Where outcomes are announced (alerts, metrics). */
  events?: EventBus;
  options: {
    /** Database backed up when a request names none. */
    defaultDatabase: string;
    /** host:port of the target server, part of every lock key. */
    targetServer: string;
    format: ArchiveFormat;
    compression: CompressionKind;
    retentionDays: number;
    /** Free space the backup directory must keep beyond the backup itself. */
    minFreeBytes: number;
  };
}

export interface CreateBackupInput {
  backupType?: BackupType;
  retentionDays?: number;
  label?: string;
  database?: string;
  async: boolean;
  actor: Actor;
  /** Free-form facts stored with the record (e.g. which job took it). */
  metadata?: Record<string, unknown>;
}

export interface PageRequest {
  page?: number;
  pageSize?: number;
}

export interface PageResult<T> {
  items: T[];
  total: number;
  page: number;
  pages: number;
}

export interface VerificationCheck {
  name: string;
  passed: boolean;
  detail: string;
}

export interface TableMismatch {
  table: string;
  expectedRows: number;
  /** null: the table is missing. */
  foundRows: number | null;
}

/** The restore-based checks of a deep verification (supplied by the restore use case). */
export type DeepChecks = (
  record: BackupRecord,
  signal?: AbortSignal,
) => Promise<{ checks: VerificationCheck[]; mismatches: TableMismatch[] }>;

export type VerificationLevel = "checksum" | "restore";

export interface VerificationResult {
  verified: boolean;
  status: BackupStatus;
  level: VerificationLevel;
  durationMs: number;
  checks: VerificationCheck[];
  mismatches: TableMismatch[];
  message: string;
  record: BackupRecord;
}

/** GetStats' answer: the totals, the success rate, and each database's newest restore-verified backup with its age. */
export interface BackupStatsView extends BackupStats {
  successRate: number;
  restoreVerification: { database: string; backupId: string | null; at: Date | null; ageMs: number | null }[];
}

export type BackupService = ReturnType<typeof createBackupService>;

/** Exact names of the checks, in the order they run. */
export const CHECK_NAMES = ["file_exists", "file_size", "checksum", "decompress", "archive"] as const;

const SHUTDOWN = new DomainError("unavailable", "interrupted by shutdown");

/**
 * The backup use cases: take a backup and prove it, verify one again, list,
 * inspect and count them, and recover from a crash at start-up.
 */
export function createBackupService(deps: BackupServiceDeps) {
  const { backups, audit, locks, engine, store, clock, logger, options } = deps;
  type RestoreVerificationRows = Awaited<ReturnType<BackupRepository["restoreVerification"]>>;
  const statsMemo = new WeakMap<BackupStats, { restoreVerification: RestoreVerificationRows; second: number; result: BackupStatsView }>();
  const events = deps.events ?? NO_EVENTS;
  const shutdownController = new AbortController();
  const running = new Set<Promise<unknown>>();

  function lockKey(database: string): string {
    return databaseLockKey(options.targetServer, database);
  }

  function runKey(id: string): string {
    return `run:${id}`;
  }

  function validateDatabaseName(name: string, field = "database"): string {
    if (name.length === 0 || Buffer.byteLength(name) > 63 || name.includes("\0")) {
      throw invalidArgument(field, "must be a database name of 1 to 63 bytes");
    }
    return name;
  }

  function validatePage(req: PageRequest): { page: number; pageSize: number } {
    const page = req.page ?? 0;
    const pageSize = req.pageSize ?? 0;
    if (!Number.isInteger(page) || page < 0) throw invalidArgument("page", "must be 1 or more");
    if (!Number.isInteger(pageSize) || pageSize < 0 || pageSize > MAX_PAGE_SIZE) {
      throw invalidArgument("page_size", `must be from 1 to ${MAX_PAGE_SIZE} (default ${DEFAULT_PAGE_SIZE})`);
    }
    return { page: page === 0 ? 1 : page, pageSize: pageSize === 0 ? DEFAULT_PAGE_SIZE : pageSize };
  }

  function validateId(id: string, field = "id"): string {
    if (!isUuid(id)) throw invalidArgument(field, "must be a backup UUID such as 0b9f7c1e-5d2a-4c1b-9a3e-2f4d6b8a0c1e");
    return id.toLowerCase();
  }

  function track<T>(p: Promise<T>): Promise<T> {
    running.add(p);
    void p.then(
      () => running.delete(p),
      () => running.delete(p),
    );
    return p;
  }

  function failureOf(err: unknown, signal: AbortSignal): DomainError {
    if (signal.aborted) {
      const reason: unknown = signal.reason;
      return isDomainError(reason) ? reason : new DomainError("cancelled", "cancelled");
    }
    if (isDomainError(err)) return err;
    // Driver errors can carry SQL and parameters: log the cause, keep it out of messages.
    logger.error({ err }, "backup failed with an unexpected error");
    return new DomainError("dump_failed", "backup failed: internal error (details are in the service log)", {
      cause: err,
    });
  }

  async function preflight(record: BackupRecord, signal: AbortSignal) {
    const info = await engine.probe(record.databaseName, signal);
    if (engine.pgDumpMajor < info.serverMajor) {
      throw new DomainError(
        "failed_precondition",
        `pg_dump ${engine.pgDumpVersion} cannot dump server version ${info.serverVersion} ` +
          `(hint: install postgresql-client-${info.serverMajor} and point PG_BIN_DIR at its bin directory)`,
      );
    }
    // A compressed logical dump is rarely larger than a quarter of the database on disk
    // (indexes are not dumped); the previous backup of the same database is a better guess.
    const previous = await backups.latestSuccessful(record.databaseName);
    const estimate = Math.ceil(previous?.fileSize ? previous.fileSize * 1.2 : info.databaseSize / 4);
    const needed = estimate + options.minFreeBytes;
    const free = await store.freeBytes();
    if (free < needed) {
      throw new DomainError(
        "resource_exhausted",
        `not enough free space in the backup directory: ${free} bytes free, the backup needs about ${estimate}` +
          (options.minFreeBytes > 0 ? ` and BACKUP_MIN_FREE_BYTES keeps ${options.minFreeBytes} in reserve` : "") +
          " (hint: free space, or point BACKUP_DIR at a larger disk)",
      );
    }
    return info;
  }

  /**
   * A new backup's id with its run lock already held, taken before its record exists: start-up
   * recovery on any replica tells a dead run (lock free) from a live one, and there is no moment
   * when a live backup's IN_PROGRESS record is there without its lock.
   */
  async function claimRun(): Promise<{ id: string; runLock: Lock }> {
    const id = randomUUID();
    const runLock = await locks.tryAcquire(runKey(id));
    if (!runLock) throw new DomainError("unavailable", "could not take a new backup's run lock; retry");
    return { id, runLock };
  }

  /** Inserts the record of a claimed run; the run lock is released if that fails. */
  async function insertClaimed(claim: { id: string; runLock: Lock }, p: Omit<Parameters<typeof insertRecord>[0], "id">) {
    try {
      return await insertRecord({ ...p, id: claim.id });
    } catch (err) {
      await claim.runLock.release();
      throw err;
    }
  }

  /** The dump, then the verification, under the run's lock; always leaves the record in a final state. */
  async function runBackup(record: BackupRecord, runLock: Lock, signal: AbortSignal): Promise<BackupRecord> {
    const stopper = createStopper(signal, runLock.lost);
    try {
      return await dumpAndVerify(record, stopper.signal, runLock.lost);
    } finally {
      stopper.dispose();
      await runLock.release();
    }
  }

  async function dumpAndVerify(record: BackupRecord, signal: AbortSignal, lost: AbortSignal): Promise<BackupRecord> {
    const started = performance.now();
    let current = record;
    let readBack: DumpResult["readBack"] = null;
    let committed = false;
    try {
      const info = await preflight(record, signal);
      current = await backups.update(
        record.id,
        { databaseSize: info.databaseSize, serverVersion: info.serverVersion, pgDumpVersion: engine.pgDumpVersion },
        { intermediate: true },
      );
      const result = await engine.dump(
        {
          database: record.databaseName,
          format: record.archiveFormat,
          compression: record.compression,
          outputPath: store.partialPath(record.fileName),
        },
        signal,
      );
      signal.throwIfAborted();
      readBack = result.readBack;
      if (result.warnings.length > 0) {
        logger.warn({ backupId: record.id, database: record.databaseName, warnings: result.warnings }, "pg_dump warned: the backup may lack what it names");
      }
      await store.commit(record.fileName);
      committed = true;
      const counts = Object.values(result.tableRowCounts);
      current = await backups.update(
        record.id,
        {
          status: "COMPLETED",
          completedAt: clock.now(),
          durationMs: result.durationMs,
          fileSize: result.fileSize,
          checksum: result.checksum,
          tableRowCounts: result.tableRowCounts,
          tableCount: counts.length,
          rowCount: counts.reduce((a, b) => a + b, 0),
          ...(result.warnings.length > 0 ? { metadata: { ...current.metadata, dumpWarnings: result.warnings } } : {}),
        },
        // The verification follows at once and its update is the one callers must see.
        { intermediate: true },
      );
    } catch (err) {
      const failure = failureOf(err, signal);
      await store.discardPartial(record.fileName).catch((e: unknown) => {
        logger.error({ err: e, backupId: record.id }, "could not remove partial backup file");
      });
      const recorded = await backups
        .update(record.id, {
          status: "FAILED",
          errorMessage: failure.message,
          completedAt: clock.now(),
          durationMs: Math.round(performance.now() - started),
        })
        .then(
          () => true,
          (e: unknown) => {
            logger.error({ err: e, backupId: record.id }, "could not record backup failure");
            return false;
          },
        );
      // Renamed to its final name, but never recorded as COMPLETED (the control database failed
      // in between): a file with no checksum on record is no backup, and nothing would remove it.
      // Only once FAILED is on record: if the COMPLETED update did commit (its answer lost), and
      // FAILED could not be written, the file is the backup, which the recovery sweep verifies.
      if (committed && recorded) {
        await store.remove(record.fileName).catch((e: unknown) => {
          logger.error({ err: e, backupId: record.id }, "could not remove the unrecorded backup file");
        });
      }
      logger.warn(
        { backupId: record.id, database: record.databaseName, reason: failure.message, cause: failure.cause },
        "backup failed",
      );
      events.emit({
        type: "backup.failed",
        backupId: record.id,
        database: record.databaseName,
        reason: failure.message,
        cancelled: failure.kind === "cancelled",
        unverified: false,
        durationMs: Math.round(performance.now() - started),
      });
      throw withBackupId(failure, record.id);
    }
    // The dump is complete and durable; from here on the question is only whether it is good.
    // A client that stops waiting does not stop the verification: only shutdown does.
    let verification: VerificationResult;
    try {
      // The dump read its bytes back as it wrote them; the verification then checks that the
      // file still holds exactly those bytes (SHA-256) rather than reading it whole again.
      // Nor a lost run lock: another replica's sweep may then take the backup's verification up
      // (it stays COMPLETED), and two must not run.
      const verifyStop = createStopper(shutdownController.signal, lost);
      try {
        verification = await verifyRecord(current, verifyStop.signal, undefined, "backup", readBack);
      } finally {
        verifyStop.dispose();
      }
    } catch (err) {
      const shutdown = shutdownController.signal.aborted;
      const interrupted = shutdown || lost.aborted;
      const why = shutdown
        ? "verification interrupted by shutdown; it runs again at the next start"
        : lost.aborted
          ? "verification interrupted: the run's lock was lost with its control-database connection; the recovery sweep runs it again"
          : `verification could not run: ${err instanceof DomainError ? err.message : safeReason(err)}`;
      if (!interrupted) logger.error({ err, backupId: record.id }, "verification could not run");
      await backups.update(record.id, { errorMessage: why }).catch(() => undefined);
      if (!interrupted) {
        events.emit({
          type: "backup.failed",
          backupId: record.id,
          database: record.databaseName,
          reason: why,
          cancelled: false,
          unverified: true,
          durationMs: Math.round(performance.now() - started),
        });
      }
      throw withBackupId(
        shutdown ? SHUTDOWN : new DomainError(lost.aborted ? "unavailable" : "dump_failed", why),
        record.id,
      );
    }
    logger.info(
      { backupId: record.id, database: record.databaseName, status: verification.status, bytes: current.fileSize },
      "backup finished",
    );
    if (verification.verified) {
      events.emit({ type: "backup.succeeded", backup: verification.record, durationMs: Math.round(performance.now() - started) });
    } else {
      throw withBackupId(
        new DomainError("corrupted", `backup ${record.id} failed verification: ${verification.message}`),
        record.id,
      );
    }
    return verification.record;
  }

  async function runChecks(record: BackupRecord, signal?: AbortSignal, full = true, readBack: DumpResult["readBack"] = null) {
    const checks: VerificationCheck[] = [];
    let dumpSize: number | null = null;
    const stat = await store.stat(record.fileName);
    checks.push({
      name: "file_exists",
      passed: stat !== null,
      detail: stat ? `${record.fileName} is present` : `${record.fileName} is missing from the backup directory`,
    });
    if (!stat) return { checks, dumpSize };
    checks.push({
      name: "file_size",
      passed: stat.size === record.fileSize,
      detail:
        stat.size === record.fileSize
          ? `${stat.size} bytes as recorded`
          : `file has ${stat.size} bytes, ${record.fileSize ?? "unknown"} recorded`,
    });
    const [hash, inspected] = await Promise.all([
      store.sha256(record.fileName, signal),
      engine.inspect(
        {
          path: store.path(record.fileName),
          format: record.archiveFormat,
          compression: record.compression,
          expectedTables: Object.keys(record.tableRowCounts ?? {}),
          full,
          readBack,
        },
        signal,
      ),
    ]);
    checks.push({
      name: "checksum",
      passed: hash === record.checksum,
      detail: hash === record.checksum ? `sha256 ${hash}` : `sha256 is ${hash}, ${record.checksum ?? "none"} recorded`,
    });
    checks.push({ name: "decompress", passed: inspected.decompress.passed, detail: inspected.decompress.detail });
    checks.push({ name: "archive", passed: inspected.archive.passed, detail: inspected.archive.detail });
    if (inspected.decompress.passed) dumpSize = inspected.decompress.dumpSize;
    return { checks, dumpSize };
  }

  /**
   * Runs every check and records the outcome as the backup's status. With
   * `deep`, a backup whose file passes is also restored into a scratch
   * database and checked there. A cancelled verification changes nothing.
   */
  async function verifyRecord(
    record: BackupRecord,
    signal: AbortSignal | undefined,
    deep: DeepChecks | undefined,
    origin: VerificationOrigin,
    readBack: DumpResult["readBack"] = null,
  ): Promise<VerificationResult> {
    const lock = await locks.tryAcquireShared(fileLockKey(record.id));
    if (!lock) throw new DomainError("busy", `backup ${record.id} is being deleted; nothing to verify`);
    try {
      // Again under the lock: a hard delete that finished just before it leaves nothing to check,
      // and its missing file must not read as corruption.
      if (!(await backups.findById(record.id))) throw notFound(`backup ${record.id} not found`);
      const result = await verifyHeld(record, signal, deep, readBack);
      events.emit({
        type: "verification.finished",
        backup: result.record,
        level: result.level,
        origin,
        verified: result.verified,
        message: result.message,
        durationMs: result.durationMs,
      });
      return result;
    } finally {
      await lock.release();
    }
  }

  async function verifyHeld(
    record: BackupRecord,
    signal?: AbortSignal,
    deep?: DeepChecks,
    readBack: DumpResult["readBack"] = null,
  ): Promise<VerificationResult> {
    const started = performance.now();
    // A deep verification's restore reads every byte of the archive: the file checks need not.
    const { checks, dumpSize } = await runChecks(record, signal, deep === undefined, readBack);
    let mismatches: TableMismatch[] = [];
    const level: VerificationLevel = deep ? "restore" : "checksum";
    if (deep && checks.every((c) => c.passed)) {
      const d = await deep(record, signal);
      checks.push(...d.checks);
      mismatches = d.mismatches;
    }
    signal?.throwIfAborted();
    const failed = checks.filter((c) => !c.passed);
    const verified = failed.length === 0;
    const now = clock.now();
    const durationMs = Math.round(performance.now() - started);
    const message = verified
      ? `all ${checks.length} checks passed`
      : failed.map((c) => `${c.name}: ${c.detail}`).join("; ");
    const patch: Parameters<BackupRepository["update"]>[1] = {
      status: verified ? "VERIFIED" : "CORRUPTED",
      errorMessage: verified ? null : `${level === "restore" ? "restore verification" : "verification"} failed: ${message}`,
      metadata: {
        ...record.metadata,
        verification: { level, at: now.toISOString(), durationMs, checks, ...(mismatches.length ? { mismatches } : {}) },
      },
    };
    if (verified) patch.verifiedAt = now;
    if (verified && level === "restore") patch.restoreVerifiedAt = now;
    if (dumpSize !== null) {
      patch.dumpSize = dumpSize;
      patch.compressionRatio = compressionRatioOf(record.fileSize, dumpSize);
    }
    const updated = await backups.update(record.id, patch);
    if (!verified) logger.warn({ backupId: record.id, level, failed: failed.map((c) => c.name) }, "backup failed verification");
    return { verified, status: updated.status, level, durationMs, checks, mismatches, message, record: updated };
  }

  /** The cross-replica lock of one database (backups and restores); busy when held. */
  async function lockDatabase(database: string): Promise<Lock> {
    // A holder with no IN_PROGRESS record has either just taken the lock (its record follows at
    // once) or just finished (its record final, the lock let go a moment later: a caller that
    // saw VERIFIED and starts the next backup must not be refused). Either is waited for, for
    // up to a second; a restore holds it longer, and is then named as running.
    for (let attempt = 0; ; attempt++) {
      const lock = await locks.tryAcquire(lockKey(database));
      if (lock) return lock;
      const [running] = await backups.findInProgress(database);
      if (running || attempt >= 10) {
        throw new DomainError(
          "busy",
          `a backup or restore of database "${database}" is already running` +
            (running ? ` (backup ${running.id})` : "") +
            "; wait for it to finish",
        );
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async function insertRecord(p: {
    id: string;
    backupType: BackupType;
    retentionDays: number;
    label: string | null;
    database: string;
    actor: Actor;
    metadata?: Record<string, unknown>;
    /**
     * The one who asked is answered only once the backup has ended, by a write that every
     * listing shows at once: the record's creation need not make every polling caller wait
     * on fresh queries (measured: most calls in a backup's first 0.25 s, under the latency
     * bench). Listings show the running backup at their next re-read.
     */
    answeredAtEnd: boolean;
  }): Promise<BackupRecord> {
    const startedAt = clock.now();
    for (let attempt = 1; attempt <= 20; attempt++) {
      const record = await backups.insert(
        {
          id: p.id,
          backupType: p.backupType,
          fileName: backupFileName(p.database, startedAt, options.format, options.compression, attempt),
          status: "IN_PROGRESS",
          startedAt,
          triggeredBy: p.actor.sub,
          triggeredByUsername: p.actor.username,
          retentionDays: p.retentionDays,
          expiresAt: expiryOf(startedAt, p.retentionDays),
          databaseName: p.database,
          archiveFormat: options.format,
          compression: options.compression,
          label: p.label,
          metadata: p.metadata ?? {},
        },
        { intermediate: p.answeredAtEnd },
      );
      if (record) return record;
    }
    throw new DomainError("busy", `could not find a free file name for a backup of "${p.database}"; try again`);
  }

  /** What sibling use cases (restore, retention, downloads) share with this one. */
  const core = {
    lockKey,
    lockDatabase,
    validateId,
    validateDatabaseName,
    validatePage,
    track,
    shutdownSignal: shutdownController.signal,
    /** Takes and verifies a backup while the caller holds the database's lock. */
    async backupUnderLock(
      p: { database: string; label: string; actor: Actor; metadata?: Record<string, unknown> },
      signal: AbortSignal,
    ): Promise<BackupRecord> {
      const claim = await claimRun();
      const record = await insertClaimed(claim, {
        backupType: "MANUAL",
        retentionDays: options.retentionDays,
        label: p.label,
        database: p.database,
        actor: p.actor,
        metadata: p.metadata,
        answeredAtEnd: true,
      });
      logger.info({ backupId: record.id, database: p.database, label: p.label }, "backup started");
      return runBackup(record, claim.runLock, signal);
    },
  };

  return {
    core,

    /**
     * Takes a backup. Synchronous calls resolve with the verified record or
     * reject with what failed; async calls resolve at once with the
     * IN_PROGRESS record while the work goes on.
     */
    async createBackup(input: CreateBackupInput, signal?: AbortSignal): Promise<{ record: BackupRecord; verified: boolean }> {
      const backupType = input.backupType ?? "MANUAL";
      if (!BACKUP_TYPES.includes(backupType)) throw invalidArgument("backup_type", "unknown backup type");
      if (backupType === "INCREMENTAL") {
        throw invalidArgument(
          "backup_type",
          "INCREMENTAL is not supported: logical backups (pg_dump) are always full; use FULL or MANUAL",
        );
      }
      const retentionDays = input.retentionDays ?? options.retentionDays;
      if (!Number.isInteger(retentionDays) || retentionDays < MIN_RETENTION_DAYS || retentionDays > MAX_RETENTION_DAYS) {
        throw invalidArgument("retention_days", `must be from ${MIN_RETENTION_DAYS} to ${MAX_RETENTION_DAYS} days`);
      }
      const label = input.label?.trim() || null;
      if (label !== null && label.length > MAX_LABEL_LENGTH) {
        throw invalidArgument("label", `must be at most ${MAX_LABEL_LENGTH} characters`);
      }
      const database = validateDatabaseName(input.database ?? options.defaultDatabase);
      if (shutdownController.signal.aborted) throw SHUTDOWN;

      const lock = await lockDatabase(database);
      let record: BackupRecord;
      let claim: { id: string; runLock: Lock };
      try {
        claim = await claimRun();
        record = await insertClaimed(claim, {
          backupType,
          retentionDays,
          label,
          database,
          actor: input.actor,
          metadata: input.metadata,
          answeredAtEnd: !input.async,
        });
      } catch (err) {
        await lock.release();
        throw err;
      }
      logger.info({ backupId: record.id, database, actor: input.actor.sub, async: input.async }, "backup started");

      const stopper = createStopper(shutdownController.signal, lock.lost, input.async ? undefined : signal);
      const job = track(
        runBackup(record, claim.runLock, stopper.signal).finally(() => {
          stopper.dispose();
          return lock.release();
        }),
      );
      if (input.async) {
        job.catch(() => {
          /* recorded on the backup and logged */
        });
        return { record, verified: false };
      }
      return { record: await job, verified: true };
    },

    async getBackup(id: string): Promise<{ record: BackupRecord; fileExists: boolean }> {
      const record = await backups.findById(validateId(id));
      if (!record) throw notFound(`backup ${id} not found`);
      const stat = record.status === "IN_PROGRESS" || record.status === "FAILED" ? null : await store.stat(record.fileName);
      return { record, fileExists: stat !== null };
    },

    async listBackups(
      filter: Partial<BackupFilter> & PageRequest,
    ): Promise<PageResult<BackupRecord>> {
      const { page, pageSize } = validatePage(filter);
      if (filter.status !== undefined && !BACKUP_STATUSES.includes(filter.status)) {
        throw invalidArgument("status", "unknown status");
      }
      if (filter.backupType !== undefined && !BACKUP_TYPES.includes(filter.backupType)) {
        throw invalidArgument("backup_type", "unknown backup type");
      }
      if (filter.database !== undefined) validateDatabaseName(filter.database);
      const { items, total } = await backups.list(
        {
          status: filter.status,
          backupType: filter.backupType,
          database: filter.database,
          includeDeleted: filter.includeDeleted ?? false,
        },
        (page - 1) * pageSize,
        pageSize,
      );
      return { items, total, page, pages: pageCount(total, pageSize) };
    },

    async verifyBackup(
      id: string,
      signal?: AbortSignal,
      deep?: DeepChecks,
      origin: VerificationOrigin = "request",
    ): Promise<VerificationResult> {
      const record = await backups.findById(validateId(id));
      if (!record) throw notFound(`backup ${id} not found`);
      if (record.isDeleted) {
        // As a download or a restore of it: a deleted backup is not there to act on.
        throw notFound(`backup ${id} was deleted; there is nothing to verify`);
      }
      if (record.status === "IN_PROGRESS") {
        throw new DomainError("failed_precondition", `backup ${id} is still in progress; verify it when it has finished`);
      }
      if (record.status === "FAILED") {
        throw new DomainError("failed_precondition", `backup ${id} failed and has no file to verify`);
      }
      return verifyRecord(record, signal, deep, origin);
    },

    async getStats(database?: string) {
      if (database !== undefined) validateDatabaseName(database);
      const [stats, restoreVerification] = await Promise.all([backups.stats(database), backups.restoreVerification(database)]);
      const now = clock.now().getTime();
      // Callers within the same second of the same cached answers share one result (and the
      // RPC layer its encoded reply): ages are then up to a second old, like the answers.
      const second = Math.floor(now / 1000);
      const memo = statsMemo.get(stats);
      if (memo && memo.restoreVerification === restoreVerification && memo.second === second) return memo.result;
      const finished = stats.successful + stats.failed;
      const successRate = finished === 0 ? 0 : Math.round((stats.successful / finished) * 10_000) / 100;
      const result: BackupStatsView = {
        ...stats,
        successRate,
        restoreVerification: restoreVerification.map((r) => ({ ...r, ageMs: r.at ? now - r.at.getTime() : null })),
      };
      statsMemo.set(stats, { restoreVerification, second, result });
      return result;
    },

    async listAuditEvents(filter: AuditFilter & PageRequest): Promise<PageResult<AuditEvent>> {
      const { page, pageSize } = validatePage(filter);
      if (filter.backupId !== undefined) validateId(filter.backupId, "backup_id");
      const { items, total } = await audit.list(
        { backupId: filter.backupId?.toLowerCase(), actor: filter.actor, action: filter.action },
        (page - 1) * pageSize,
        pageSize,
      );
      return { items, total, page, pages: pageCount(total, pageSize) };
    },

    /**
     * After a crash: backups left IN_PROGRESS whose lock nobody holds become
     * FAILED, and partial files that no running backup owns are removed.
     */
    async recoverInterrupted(): Promise<number> {
      let recovered = 0;
      for (const record of await backups.findInProgress()) {
        const lock = await locks.tryAcquire(runKey(record.id));
        if (!lock) continue; // a live replica is running it right now
        try {
          const fresh = await backups.findById(record.id);
          if (fresh?.status !== "IN_PROGRESS") continue;
          await store.discardPartial(record.fileName);
          // A crash between the rename and the COMPLETED update leaves the final name on disk,
          // with no checksum or row counts on record: no backup, so it goes with the partial.
          await store.remove(record.fileName);
          await backups.update(record.id, {
            status: "FAILED",
            errorMessage: "interrupted: its run ended without recording the outcome (the service stopped, or its last write failed)",
            completedAt: clock.now(),
          });
          recovered++;
          logger.warn({ backupId: record.id, database: record.databaseName }, "marked interrupted backup as failed");
        } finally {
          await lock.release();
        }
      }
      // The directory first, then the records: a partial file is only made after its record is
      // written, so every partial listed here that a live backup owns has its record in the list.
      const partials = await store.listPartials();
      const owned = new Set((await backups.findInProgress()).map((r) => r.fileName));
      for (const name of partials) {
        if (owned.has(name)) continue;
        await store.discardPartial(name);
        logger.warn({ file: `${name}.partial` }, "removed orphaned partial backup file");
      }
      return recovered;
    },

    /**
     * Verifies backups whose dump finished but whose verification never did (the service
     * stopped in between, or the verification could not run). Runs in the background, tracked
     * for shutdown; the promise settles when it is done, and never rejects.
     */
    verifyPending(): Promise<void> {
      const work = (async () => {
        if (shutdownController.signal.aborted) return;
        const { items } = await backups.list({ status: "COMPLETED", includeDeleted: false }, 0, 1000);
        for (const record of items) {
          if (shutdownController.signal.aborted) return;
          const lock = await locks.tryAcquire(runKey(record.id));
          if (!lock) continue; // its own run is still going
          try {
            // Again under the lock: another replica's sweep may have verified it since the list.
            const fresh = await backups.findById(record.id);
            if (fresh?.status !== "COMPLETED" || fresh.isDeleted) continue;
            const r = await verifyRecord(fresh, shutdownController.signal, undefined, "backup");
            logger.info({ backupId: record.id, status: r.status }, "verified a backup left unverified by an earlier stop");
          } finally {
            await lock.release();
          }
        }
      })();
      return track(work).catch((err: unknown) => {
        if (!shutdownController.signal.aborted) logger.error({ err }, "verifying pending backups failed");
      });
    },

    /** Cancels running backups (recorded as interrupted by shutdown) and waits for them. */
    async shutdown(): Promise<void> {
      shutdownController.abort(SHUTDOWN);
      await Promise.allSettled([...running]);
    },
  };
}

function withBackupId(err: DomainError, backupId: string): DomainError {
  const message = err.message.includes(backupId) ? err.message : `backup ${backupId}: ${err.message}`;
  return new DomainError(err.kind, message, { cause: err, backupId });
}
