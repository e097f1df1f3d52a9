import { randomBytes, randomUUID } from "node:crypto";
import type { Logger } from "../logger.js";
import { DomainError, invalidArgument, isFileReadError, notFound } from "../errors.js";
import { sessionsNotEndable, targetCreatedMeanwhile, targetGone } from "./restore-refusals.js";
import { fileLockKey, type Actor, type BackupRecord, type TableRowCounts } from "./backup.js";
import type { BackupService, DeepChecks, TableMismatch, VerificationCheck } from "./backup-service.js";
import type {
  BackupRepository,
  BlobStore,
  Lock,
  LoadProgress,
  LockManager,
  RestoreEngine,
  RestoreRunRepository,
} from "./ports.js";
import { NO_EVENTS, type EventBus } from "./events.js";
import { createThrottle, streamWork } from "./progress.js";
import { createStopper } from "./stopper.js";

export type RestorePhase = "VALIDATING" | "SAFETY_BACKUP" | "RESTORING" | "FINALIZING" | "DONE";

export interface RestoreResult {
  targetDatabase: string;
  durationMs: number;
  safetyBackupId: string | null;
  tableRowCounts: TableRowCounts;
  undoHint: string;
  checksumOk: boolean;
}

export interface RestoreProgress {
  phase: RestorePhase;
  bytesDone: number;
  bytesTotal: number;
  /** Of the whole restore; never goes down. */
  percent: number;
  elapsedMs: number;
  message: string;
  /** The database being restored into, once known. */
  target?: string;
  result?: RestoreResult;
}

export interface RestoreInput {
  id: string;
  confirmRestore: boolean;
  force: boolean;
  dropExisting: boolean;
  targetDatabase?: string;
  skipSafetyBackup: boolean;
  actor: Actor;
}

/** Scratch databases are named so that no user's database can collide with them. */
export const SCRATCH_PREFIX = "bsvc_restore_";
export const RETIRED_PREFIX = "bsvc_retired_";
const RESERVED_TARGETS = new Set(["template0", "template1"]);

export interface RestoreDeps {
  backups: BackupRepository;
  runs: RestoreRunRepository;
  locks: LockManager;
  store: BlobStore;
  restorer: RestoreEngine;
  logger: Logger;
  core: BackupService["core"];
  replicaId: string;
  /** The control database, when it lives on the target server: never a restore target. */
  protectedDatabase: string | null;
  /**
   * Short tag of this service's control database, part of every scratch name:
   * advisory locks are per database, so services with other control databases
   * on the same server must neither see nor touch our scratch databases.
   */
  namespace: string;
  /** Sanity queries per database name ("*": every database); each must return true. */
  sanityQueries: Record<string, string[]>;
  /** Where outcomes are announced (alerts, metrics). */
  events?: EventBus;
}

/** The refusal to replace a database that holds objects (`what`) without drop_existing. */
function holdsObjects(target: string, what: string): DomainError {
  return new DomainError(
    "failed_precondition",
    `database "${target}" ${what}; nothing was changed ` +
      "(hint: set drop_existing to replace it, a safety backup is taken first, or restore into another target_database)",
  );
}

/** The refusal to restore over a database that holds a backup service's own records. */
function holdsServiceRecords(target: string): DomainError {
  return new DomainError(
    "failed_precondition",
    `refusing to restore into "${target}": it holds a backup service's own records (a control database)`,
  );
}

function notReplaceable(target: string, owner: string | null): DomainError {
  return new DomainError(
    "failed_precondition",
    `the role in TARGET_DATABASE_URL may not replace database "${target}", which role "${owner}" owns; ` +
      `nothing was changed (hint: restore as "${owner}", as a member of it that inherits its privileges ` +
      "(not NOINHERIT), or as a superuser; or restore into a new database)",
  );
}

/** Noted on a restore's run just before its swap: after a crash, recovery cannot tell whether it happened. */
const SWAPPING = "swapping the restored database in";

function restoreRunKey(id: string): string {
  return `restore-run:${id}`;
}

function tableDifferences(expected: TableRowCounts, found: TableRowCounts): string[] {
  const out: string[] = [];
  for (const [table, rows] of Object.entries(expected)) {
    if (!(table in found)) out.push(`${table} is missing (${rows} rows recorded)`);
    else if (found[table] !== rows) out.push(`${table} has ${found[table]} rows, ${rows} recorded at backup time`);
  }
  for (const table of Object.keys(found)) {
    if (!(table in expected)) out.push(`${table} was not in the backup`);
  }
  return out;
}

// Where each phase sits in the overall percent.
const SPAN: Record<Exclude<RestorePhase, "DONE">, [number, number]> = {
  VALIDATING: [0, 10],
  RESTORING: [10, 80],
  SAFETY_BACKUP: [80, 95],
  FINALIZING: [95, 100],
};

/** A backup loaded into a scratch database: its name, its lock, how the load went and its own row counts. */
interface ScratchLoad {
  name: string;
  lock: Lock | null;
  how: string;
  stepsMs: Record<string, number>;
  rowCounts: TableRowCounts | undefined;
}

/**
 * A load that failed on the data itself: the server rejected a row (SQLSTATE class 22, data
 * exception, or 23, integrity: a garbled key is a duplicate), in a COPY of ours or in the
 * words psql and pg_restore print for it.
 */
function rejectedData(err: unknown): boolean {
  if (!(err instanceof DomainError) || err.kind !== "dump_failed") return false;
  const sqlstate = (err.cause as { code?: unknown } | undefined)?.code;
  if (typeof sqlstate === "string" && /^2[23]/.test(sqlstate)) return true;
  return /ERROR: +(invalid input syntax|invalid byte sequence|extra data after last expected column|missing data for column|value too long|duplicate key value|null value in column|.* out of range)/.test(
    err.message,
  );
}

/** Restores backups atomically: into a scratch database first, then swapped in by name. */
export function createRestoreUseCase(deps: RestoreDeps) {
  const { backups, runs, locks, store, restorer, logger, core } = deps;
  const events = deps.events ?? NO_EVENTS;
  const scratchPrefix = `${SCRATCH_PREFIX}${deps.namespace}_`;
  const retiredPrefix = `${RETIRED_PREFIX}${deps.namespace}_`;

  async function checkRecord(input: RestoreInput): Promise<{ record: BackupRecord; target: string }> {
    if (!input.confirmRestore) {
      throw invalidArgument(
        "confirm_restore",
        "must be true: a restore replaces the contents of the target database (set confirm_restore: true)",
      );
    }
    const id = core.validateId(input.id);
    if (input.targetDatabase !== undefined) core.validateDatabaseName(input.targetDatabase, "target_database");
    const record = await backups.findById(id);
    if (!record) throw notFound(`backup ${id} not found`);
    if (record.isDeleted) throw notFound(`backup ${id} was deleted`);
    if (record.status === "IN_PROGRESS" || record.status === "FAILED") {
      throw new DomainError("failed_precondition", `backup ${id} is ${record.status} and has no file to restore`);
    }
    if (record.status !== "VERIFIED" && !input.force) {
      throw new DomainError(
        "failed_precondition",
        `backup ${id} is ${record.status}, not VERIFIED` +
          (record.errorMessage ? ` (${record.errorMessage})` : "") +
          "; verify it first, or set force to restore it anyway",
      );
    }
    // By default, back into the database the backup came from.
    const target = input.targetDatabase ?? record.databaseName;
    if (RESERVED_TARGETS.has(target) || target.startsWith("bsvc_")) {
      throw invalidArgument("target_database", `"${target}" is reserved (template databases and names starting bsvc_)`);
    }
    if (deps.protectedDatabase !== null && target === deps.protectedDatabase) {
      throw new DomainError("failed_precondition", `refusing to restore into "${target}": it is the service's own control database`);
    }
    return { record, target };
  }

  /**
   * Creates a scratch database (like `like`, if given) and loads the backup
   * into it: the one restore path that RestoreBackup and deep verification
   * share. On failure nothing is left behind; on success the caller owns the
   * database and its lock.
   */
  async function loadScratch(
    record: BackupRecord,
    like: string | null,
    signal: AbortSignal,
    onProgress: (p: LoadProgress) => void,
    ownerOf?: string,
  ): Promise<ScratchLoad> {
    const name = `${scratchPrefix}${randomBytes(4).toString("hex")}`;
    // Held for the scratch database's lifetime: start-up clean-up leaves it alone while we live.
    const lock = await locks.tryAcquire(`scratch:${name}`);
    try {
      await restorer.createDatabase(name, like, ownerOf);
      const { how, stepsMs, rowCounts } = await restorer.load(
        {
          path: store.path(record.fileName),
          format: record.archiveFormat,
          compression: record.compression,
          database: name,
          expectedBytes: record.databaseSize ?? 0,
          dumpBytes: record.dumpSize ?? 0,
          tableRowCounts: record.tableRowCounts ?? undefined,
        },
        onProgress,
        signal,
      );
      return { name, lock, how, stepsMs, rowCounts };
    } catch (err) {
      await restorer.dropDatabase(name).catch((e: unknown) =>
        logger.error({ err: e, database: name }, "could not drop the scratch database; the recovery sweep will retry"),
      );
      await lock?.release();
      throw err;
    }
  }

  /** Sanity queries for a database: its own and those for every database ("*"). */
  function sanityFor(database: string): string[] {
    return [...(deps.sanityQueries["*"] ?? []), ...(deps.sanityQueries[database] ?? [])];
  }

  /**
   * The restore half of a deep verification: the backup restored into a
   * scratch database (never the real one, and without its lock), then its
   * tables and rows, its objects and the sanity queries checked there. The
   * scratch database is dropped whatever happens.
   */
  // Tracked, so that shutdown waits for the scratch database to be dropped.
  const deepChecks: DeepChecks = (record, callSignal) => core.track(runDeepChecks(record, callSignal));

  async function runDeepChecks(record: BackupRecord, callSignal?: AbortSignal) {
    const stopper = createStopper(callSignal, core.shutdownSignal);
    const signal = stopper.signal;
    const checks: VerificationCheck[] = [];
    const mismatches: TableMismatch[] = [];
    let scratch: ScratchLoad | null = null;
    try {
      const started = performance.now();
      try {
        // Owned as the backed-up database is, where the role may: a role that is not a superuser
        // can then give the archive's objects that owner, as a restore over the database would.
        scratch = await loadScratch(record, null, signal, () => undefined, record.databaseName);
        checks.push({
          name: "restore",
          passed: true,
          detail: `restored into a scratch database in ${Math.round(performance.now() - started)} ms, ${scratch.how}`,
        });
      } catch (err) {
        signal.throwIfAborted();
        // Only the loader or the decompressor failing, or the archive found damaged, says
        // something about the backup. Anything else (no right to create databases, the server
        // down, a full disk, the backup disk failing a read, as the checksum check treats it)
        // means the verification could not run: the backup's status must not change for it.
        if (!(err instanceof DomainError) || (err.kind !== "dump_failed" && err.kind !== "corrupted") || isFileReadError(err)) {
          throw err;
        }
        checks.push({ name: "restore", passed: false, detail: `the restore failed: ${err.message}` });
        return { checks, mismatches };
      }
      const found = await restorer.countRows(scratch.name, signal, scratch.rowCounts);
      const expected = record.tableRowCounts ?? {};
      for (const [table, rows] of Object.entries(expected)) {
        if (found[table] !== rows) mismatches.push({ table, expectedRows: rows, foundRows: found[table] ?? null });
      }
      const extra = Object.keys(found).filter((t) => !(t in expected));
      const tablesOk = mismatches.length === 0 && extra.length === 0;
      checks.push({
        name: "tables",
        passed: tablesOk,
        detail: tablesOk
          ? `all ${Object.keys(expected).length} tables have the recorded row counts`
          : [
              ...mismatches.map((m) =>
                m.foundRows === null
                  ? `${m.table} is missing (${m.expectedRows} rows expected)`
                  : `${m.table}: expected ${m.expectedRows} rows, found ${m.foundRows}`,
              ),
              ...extra.map((t) => `${t} was not in the backup`),
            ]
              .slice(0, 20)
              .join("; "),
      });
      const objects = await restorer.archiveObjects(
        { path: store.path(record.fileName), format: record.archiveFormat, compression: record.compression },
        signal,
      );
      if (objects === null) {
        checks.push({ name: "objects", passed: true, detail: "a plain dump has no table of contents to compare; tables were checked" });
      } else {
        const missing = await restorer.missingObjects(scratch.name, objects);
        checks.push({
          name: "objects",
          passed: missing.length === 0,
          detail:
            missing.length === 0
              ? `all ${objects.length} sequences, views, functions and indexes of the archive exist`
              : `missing after the restore: ${missing.slice(0, 10).join("; ")}`,
        });
      }
      const queries = sanityFor(record.databaseName);
      if (queries.length === 0) {
        checks.push({ name: "sanity", passed: true, detail: `no sanity queries configured for ${record.databaseName}` });
      } else {
        const results = await restorer.runSanityQueries(scratch.name, queries, signal);
        const bad = results.filter((r) => !r.passed);
        checks.push({
          name: "sanity",
          passed: bad.length === 0,
          detail:
            bad.length === 0
              ? `all ${results.length} sanity queries returned true`
              : bad.map((r) => `${r.query} ${r.detail}`).join("; "),
        });
      }
      return { checks, mismatches };
    } finally {
      if (scratch) {
        await restorer.dropDatabase(scratch.name).catch((err: unknown) =>
          logger.error({ err, database: scratch!.name }, "could not drop the scratch database; the recovery sweep will retry"),
        );
        await scratch.lock?.release();
      }
      stopper.dispose();
    }
  }

  function restore(input: RestoreInput, callSignal: AbortSignal): AsyncGenerator<RestoreProgress, void> {
    const started = performance.now();
    const stopper = createStopper(callSignal, core.shutdownSignal);
    const signal = stopper.signal;
    // Tracked, so that shutdown waits for the clean-up of a cancelled restore.
    return streamWork<RestoreProgress, void>((emit) => core.track(run(emit)));

    async function run(emit: (p: RestoreProgress) => void): Promise<void> {
      const elapsed = () => Math.round(performance.now() - started);
      const throttle = createThrottle();
      let emitted: RestorePhase | undefined;
      let current: RestoreProgress = {
        phase: "VALIDATING",
        bytesDone: 0,
        bytesTotal: 0,
        percent: 0,
        elapsedMs: 0,
        message: "checking the request",
      };
      /** `within` is the phase's own progress (0..1), mapped onto the overall percent. */
      const send = (p: Partial<RestoreProgress> & { within?: number }, force = false) => {
        const phase = p.phase ?? current.phase;
        let percent = current.percent;
        if (phase !== "DONE" && p.within !== undefined) {
          const [from, to] = SPAN[phase];
          percent = Math.floor((from + (to - from) * Math.min(1, p.within)) * 100) / 100;
        }
        const { within: _within, ...rest } = p;
        if (p.percent !== undefined) percent = p.percent;
        current = { ...current, ...rest, phase, percent: Math.max(current.percent, percent), elapsedMs: elapsed() };
        // At most four a second, at least one a second (heartbeat); the first message, each
        // phase change (five at most) and the last always go out.
        const now = performance.now();
        const phaseChanged = emitted !== current.phase;
        if (force || phaseChanged || throttle.due(current.percent, now)) {
          throttle.sent(current.percent, now);
          emitted = current.phase;
          emit(current);
        }
      };
      const heartbeat = setInterval(() => send({}), 250);
      const held: Lock[] = [];
      let scratch: string | null = null;
      let runId: string | null = null;
      let blocked: { database: string; restore: { release(): Promise<void> } } | null = null;
      // Known once the request passed its checks: from then on, an outcome is announced.
      let checked: { record: BackupRecord; target: string } | null = null;
      // Refused before loading (nothing was attempted), failed while loading, or swapped in.
      let loading = false;
      let swapped = false;
      try {
        send({}, true);
        const { record, target } = await checkRecord(input);
        checked = { record, target };
        signal.throwIfAborted();

        held.push(await core.lockDatabase(target));
        const fileLock = await locks.tryAcquireShared(fileLockKey(record.id));
        if (!fileLock) throw new DomainError("busy", `backup ${record.id} is being deleted; nothing to restore`);
        held.push(fileLock);
        // The run's lock is held before its row exists, as claimRun does for backups: recovery (on any
        // replica, at any time) takes a RUNNING run whose lock is free for one whose replica died.
        const claimedId = randomUUID();
        const runLock = await locks.tryAcquire(restoreRunKey(claimedId));
        if (!runLock) throw new DomainError("unavailable", "could not take a new restore's run lock; nothing was changed (retry)");
        held.push(runLock);
        const restoreRun = await runs.start({
          id: claimedId,
          backupId: record.id,
          targetDatabase: target,
          replicaId: deps.replicaId,
          actor: input.actor.sub,
        });
        runId = restoreRun.id;
        // Losing a lock (its connection dropped) stops the restore before anything is swapped.
        for (const l of held) stopper.follow(l.lost);

        const stat = await store.stat(record.fileName);
        if (!stat) {
          throw new DomainError(
            "failed_precondition",
            `the file of backup ${record.id} (${record.fileName}) is missing from the backup directory`,
          );
        }
        const total = stat.size;
        send({ target, message: `restoring backup ${record.id} into "${target}": re-checking the SHA-256 of ${record.fileName}`, bytesTotal: total });
        let hashed = 0;
        const hash = await store.sha256(record.fileName, signal, (n) => {
          hashed += n;
          send({ bytesDone: hashed, within: total === 0 ? 1 : hashed / total });
        });
        const checksumOk = hash === record.checksum;
        if (!checksumOk && !input.force) {
          throw new DomainError(
            "corrupted",
            `backup ${record.id} failed its checksum check (sha256 is ${hash}, ${record.checksum ?? "none"} recorded); ` +
              "nothing was changed (set force to restore it anyway)",
          );
        }
        const state = await restorer.inspectDatabase(target, signal);
        if (state.holdsServiceRecords) throw holdsServiceRecords(target);
        // Found now, not after the load: the swap renames the target, which only its owner may.
        if (!state.mayReplace) throw notReplaceable(target, state.owner);
        if (state.exists && state.objectCount > 0 && !input.dropExisting) {
          throw holdsObjects(target, `already holds ${state.objectCount} objects`);
        }
        if (state.exists && state.sessions > 0 && !input.dropExisting) {
          throw new DomainError(
            "failed_precondition",
            `database "${target}" is in use by ${state.sessions} session(s); nothing was changed ` +
              "(hint: close them, or set drop_existing to end them)",
          );
        }
        // drop_existing ends the target's sessions before the swap, but only those the service's role may end.
        if (state.exists && state.unendableRoles.length > 0) throw sessionsNotEndable(target, state.unendableRoles);
        // The scratch copy needs about as much room as the database had when it was backed up.
        const needed = Math.ceil((record.databaseSize ?? 0) * 1.1);
        const free = await restorer.serverFreeBytes();
        if (free !== null && free < needed) {
          throw new DomainError(
            "resource_exhausted",
            `not enough free space on the database server: ${free} bytes free, the restore needs about ${needed}; nothing was changed`,
          );
        }
        send(
          {
            within: 1,
            message: checksumOk
              ? `checksum ok; restoring into ${state.exists ? "existing" : "new"} database "${target}"`
              : `checksum MISMATCH (sha256 is ${hash}); restoring anyway because force is set`,
          },
          !checksumOk, // a warning is never throttled away
        );

        // The live database keeps serving while the backup loads into a scratch database.
        loading = true;
        send({ phase: "RESTORING", within: 0, bytesDone: 0, bytesTotal: total, message: `loading ${record.fileName}` });
        const loaded = await loadScratch(record, state.exists ? target : null, signal, (p) => {
          send({ bytesDone: p.bytesRead, within: p.fraction * 0.9 });
        }).catch((err: unknown) => {
          // Forced past a checksum that does not match: the file is known to be damaged, and bytes
          // that still decompress reach the server as rows it rejects. That is DATA_LOSS too; a
          // session ended, a process killed or a full disk is not the file's doing.
          if (!checksumOk && rejectedData(err)) {
            throw new DomainError("corrupted", `${(err as Error).message} (the file is damaged: its checksum does not match)`, { cause: err });
          }
          throw err;
        });
        scratch = loaded.name;
        if (loaded.lock) held.push(loaded.lock);
        send({ within: 0.9, bytesDone: total, message: `archive loaded ${loaded.how}; checking table and row counts` });
        const countStarted = performance.now();
        const found = await restorer.countRows(scratch, signal, loaded.rowCounts);
        const countMs = Math.round(performance.now() - countStarted);
        if (record.tableRowCounts) {
          const diffs = tableDifferences(record.tableRowCounts, found);
          if (diffs.length > 0) {
            throw new DomainError(
              "corrupted",
              `the restored data does not match backup ${record.id}: ${diffs.slice(0, 10).join("; ")}; nothing was changed`,
            );
          }
        }
        send({ within: 1, message: "counts match the backup" });

        let safetyBackupId: string | null = null;
        let heldLimit: number | null = null;
        if (state.exists) {
          // From here nobody writes to the old database: the safety backup is its last state, and
          // what is inspected below is what the swap replaces. (The swap ends its sessions anyway.)
          const id = runId;
          const holding = await restorer.holdSessions(target, async (originalLimit) => {
            // Before the limit is set to 0: recovery puts it back after a crash, and the finally
            // below if holdSessions fails once it is set.
            await runs.update(id, { connectionsBlocked: true, originalConnectionLimit: originalLimit });
            blocked = { database: target, restore: { release: () => restorer.releaseSessions(target, originalLimit) } };
          });
          blocked = { database: target, restore: holding };
          heldLimit = holding.originalLimit;
        }
        // The target again, as the swap will find it: the load may have taken hours, and someone may
        // have created the database, or objects in it, meanwhile. The swap must not drop those
        // without drop_existing, nor without the safety backup.
        const now = await restorer.inspectDatabase(target, signal);
        if (state.exists && !now.exists) throw targetGone(target);
        if (!state.exists && now.exists) throw targetCreatedMeanwhile(target);
        if (now.holdsServiceRecords) throw holdsServiceRecords(target);
        if (!now.mayReplace) throw notReplaceable(target, now.owner);
        const replacing = now.exists && now.objectCount > 0;
        if (replacing && !input.dropExisting) {
          throw holdsObjects(target, `now holds ${now.objectCount} objects, created while the backup was loading`);
        }
        // What the target's sessions have written so far: the swap refuses to replace it if this
        // moves before then, since the safety backup would miss it. (A role that is not a
        // superuser can only end the target's sessions, not keep them out.)
        let unwrittenSince: number | undefined;
        if (replacing && !input.skipSafetyBackup) {
          unwrittenSince = (await restorer.writesTo(target)) ?? undefined;
          send({ phase: "SAFETY_BACKUP", within: 0, bytesDone: 0, bytesTotal: 0, message: `taking a safety backup of "${target}"` });
          try {
            const safety = await core.backupUnderLock(
              {
                database: target,
                label: `pre-restore safety backup of ${target} before restoring backup ${record.id}`,
                actor: input.actor,
                metadata: { safetyBackupFor: { restoreOf: record.id, database: target } },
              },
              signal,
            );
            safetyBackupId = safety.id;
          } catch (err) {
            signal.throwIfAborted();
            const why = err instanceof DomainError ? err.message : "internal error";
            throw new DomainError(
              err instanceof DomainError ? err.kind : "dump_failed",
              `the safety backup of "${target}" failed, so nothing was changed: ${why}`,
            );
          }
          await runs.update(runId, { safetyBackupId });
          send({ within: 1, message: `safety backup ${safetyBackupId} is verified` });
        }

        send({ phase: "FINALIZING", within: 0, message: `swapping the restored database in as "${target}"` });
        const retired = `${retiredPrefix}${randomBytes(4).toString("hex")}`;
        // Written ahead: should the outcome below never be recorded, recovery must not say the target
        // was left as it was.
        // And the swap shuts every session out of the target until it commits: should the service
        // die before, recovery lets them in again (what the limit is, it knows from here).
        await runs.update(runId, {
          error: SWAPPING,
          ...(heldLimit !== null ? { connectionsBlocked: true, originalConnectionLimit: heldLimit } : {}),
        });
        await restorer.swapIn(scratch, target, retired, now.exists, signal, unwrittenSince);
        scratch = null; // it is the target now
        blocked = null; // the new database has the old one's connection limit
        if (now.exists) {
          await restorer.dropDatabase(retired).catch((err: unknown) =>
            logger.warn({ err, database: retired }, "could not drop the replaced database; the recovery sweep will retry"),
          );
        }
        const rows = Object.values(found).reduce((a, b) => a + b, 0);
        const undoHint = safetyBackupId
          ? `to undo, restore safety backup ${safetyBackupId} into "${target}" with drop_existing`
          : replacing
            ? "no safety backup was taken (skip_safety_backup); this restore cannot be undone by the service"
            : `"${target}" held nothing before; to undo, drop it`;
        // The restore happened, whatever befalls the bookkeeping below.
        swapped = true;
        events.emit({
          type: "restore.finished",
          backupId: record.id,
          sourceDatabase: record.databaseName,
          targetDatabase: target,
          safetyBackupId,
          durationMs: elapsed(),
          actor: input.actor.sub,
        });
        // The caller is told it succeeded, as it did: a failing control database only leaves the run's
        // record behind (RUNNING, noting the swap), which recovery closes at the next start.
        await runs
          .update(runId, { outcome: "SUCCEEDED", error: null, finishedAt: new Date(), connectionsBlocked: false })
          .catch((err: unknown) =>
            logger.error({ err, runId, target }, "the restore succeeded but its outcome could not be recorded"),
          );
        logger.info(
                    {
            backupId: record.id,
            target,
            safetyBackupId,
            tables: Object.keys(found).length,
            rows,
            loaded: loaded.how,
            // Where the time went: the load's steps, then the row counts.
            stepsMs: { ...loaded.stepsMs, counts: countMs },
            durationMs: elapsed(),
            actor: input.actor.sub,
          },
          "restore finished",
        );
        send(
          {
            phase: "DONE",
            percent: 100,
            message: `restored backup ${record.id} into "${target}": ${Object.keys(found).length} tables, ${rows} rows (loaded ${loaded.how})`,
            result: {
              targetDatabase: target,
              durationMs: elapsed(),
              safetyBackupId,
              tableRowCounts: found,
              undoHint,
              checksumOk,
            },
          },
          true,
        );
      } catch (err) {
        if (checked !== null && !swapped) {
          const cancelled = signal.aborted && !(err instanceof DomainError && err.kind !== "cancelled");
          events.emit({
            type: "restore.failed",
            refused: !loading && !cancelled,
            backupId: checked.record.id,
            targetDatabase: checked.target,
            reason: err instanceof DomainError ? err.message : signal.aborted ? "cancelled" : "internal error (details are in the service log)",
            cancelled,
            durationMs: elapsed(),
            actor: input.actor.sub,
          });
        }
        if (runId !== null) {
          const message = err instanceof DomainError ? err.message : signal.aborted ? "cancelled" : "internal error";
          await runs
            .update(runId, { outcome: signal.aborted ? "INTERRUPTED" : "FAILED", error: message, finishedAt: new Date() })
            .catch(() => undefined);
        }
        throw err;
      } finally {
        clearInterval(heartbeat);
        if (scratch !== null) {
          await restorer.dropDatabase(scratch).catch((err: unknown) =>
            logger.error({ err, database: scratch }, "could not drop the scratch database; the recovery sweep will retry"),
          );
        }
        if (blocked !== null) {
          const { database, restore: release } = blocked;
          await release
            .release()
            .then(() => (runId ? runs.update(runId, { connectionsBlocked: false }) : undefined))
            .catch((err: unknown) => logger.error({ err, database }, "could not let sessions into the database again"));
        }
        for (const lock of held.reverse()) await lock.release();
        stopper.dispose();
      }
    }
  }

  return {
    /**
     * Streams the progress of a restore; the last message (phase DONE) carries
     * the result. Throws a domain error when the restore cannot or did not
     * complete, in which case the target is as it was.
     */
    restoreBackup: restore,

    /** For VerifyBackup with deep: restore-based checks on a scratch database. */
    deepChecks,

    /**
     * After a crash: restores that no live replica runs are marked
     * INTERRUPTED (their targets let sessions in again; so are those of
     * finished restores whose own release failed), and scratch and
     * retired databases they left are dropped.
     */
    async recoverInterrupted(): Promise<number> {
      let fixed = 0;
      // Each on its own: one that cannot be put right now (a database with a session the role may
      // not end) must not keep the others as they are; the next sweep tries it again.
      const attempt = async (what: Record<string, unknown>, fn: () => Promise<boolean>) => {
        try {
          if (await fn()) fixed++;
        } catch (err) {
          logger.warn({ ...what, err }, "could not clean up after an interrupted restore; the next sweep tries again");
        }
      };
      for (const run of await runs.listUnsettled()) {
        await attempt({ restoreRun: run.id, database: run.targetDatabase }, async () => {
          const lock = await locks.tryAcquire(restoreRunKey(run.id));
          if (!lock) return false; // still running on a live replica
          // And not while a backup or another restore of the database runs: letting sessions in
          // now would undo a new restore's hold on them (the next sweep tries again).
          const dbLock = run.connectionsBlocked ? await locks.tryAcquire(core.lockKey(run.targetDatabase)) : null;
          if (run.connectionsBlocked && !dbLock) {
            await lock.release();
            return false;
          }
          try {
            if (run.connectionsBlocked) {
              await restorer.releaseSessions(run.targetDatabase, run.originalConnectionLimit ?? -1);
            }
            if (run.outcome !== "RUNNING") {
              // It ended, but letting sessions in again at its end failed: only that was left to do.
              await runs.update(run.id, { connectionsBlocked: false });
              return true;
            }
            await runs.update(run.id, {
              outcome: "INTERRUPTED",
              connectionsBlocked: false,
              error:
                run.error === SWAPPING
                  ? `interrupted while or after swapping the restored database in; check whether "${run.targetDatabase}" holds the restored backup`
                  : "interrupted: the service stopped before the restore finished; the target was not replaced",
              finishedAt: new Date(),
            });
            return true;
          } finally {
            await dbLock?.release();
            await lock.release();
          }
        });
      }
      for (const name of await restorer.listDatabases(scratchPrefix)) {
        await attempt({ database: name }, async () => {
          const lock = await locks.tryAcquire(`scratch:${name}`);
          if (!lock) return false; // a live restore's or drill's
          try {
            await restorer.dropDatabase(name);
            return true;
          } finally {
            await lock.release();
          }
        });
      }
      for (const name of await restorer.listDatabases(retiredPrefix)) {
        await attempt({ database: name }, async () => {
          await restorer.dropDatabase(name);
          return true;
        });
      }
      if (fixed > 0) logger.warn({ fixed }, "cleaned up after restores interrupted by an earlier stop");
      return fixed;
    },
  };
}
