import { randomBytes } from "node:crypto";
import type { Logger } from "../logger.js";
import { DomainError, invalidArgument, notFound } from "../errors.js";
import type { Actor, BackupRecord, TableRowCounts } from "./backup.js";
import type { BackupService } from "./backup-service.js";
import type { BackupRepository, BlobStore, Lock, LockManager, RestoreEngine } from "./ports.js";
import { createThrottle, streamWork } from "./progress.js";

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
  percent: number;
  elapsedMs: number;
  message: string;
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

export interface RestoreDeps {
  backups: BackupRepository;
  locks: LockManager;
  store: BlobStore;
  restorer: RestoreEngine;
  logger: Logger;
  core: BackupService["core"];
  /** The control database, when it lives on the target server: never a restore target. */
  protectedDatabase: string | null;
  /**
   * Short tag of this service's control database, part of every scratch name:
   * advisory locks are per database, so services with other control databases
   * on the same server must neither see nor touch our scratch databases.
   */
  namespace: string;
}

export function fileLockKey(id: string): string {
  return `file:${id}`;
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

/** Restores backups atomically: into a scratch database first, then swapped in by name. */
export function createRestoreUseCase(deps: RestoreDeps) {
  const { backups, locks, store, restorer, logger, core } = deps;
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
    if (deps.protectedDatabase !== null && target === deps.protectedDatabase) {
      throw new DomainError(
        "failed_precondition",
        `refusing to restore into "${target}": it is the service's own control database`,
      );
    }
    return { record, target };
  }

  function restore(input: RestoreInput, callSignal: AbortSignal): AsyncGenerator<RestoreProgress, void> {
    const started = performance.now();
    let signal = AbortSignal.any([callSignal, core.shutdownSignal]);
    // Tracked, so that shutdown waits for the clean-up of a cancelled restore.
    return streamWork<RestoreProgress, void>((emit) => core.track(run(emit)));

    async function run(emit: (p: RestoreProgress) => void): Promise<void> {
      const elapsed = () => Math.round(performance.now() - started);
      const throttle = createThrottle();
      let current: RestoreProgress = {
        phase: "VALIDATING",
        bytesDone: 0,
        bytesTotal: 0,
        percent: 0,
        elapsedMs: 0,
        message: "checking the request",
      };
      const send = (p: Partial<RestoreProgress>, always = false) => {
        current = { ...current, ...p, elapsedMs: elapsed() };
        if (always || throttle(current.percent, performance.now())) emit(current);
      };
      // A message at least every second, even while a phase makes no byte progress.
      const heartbeat = setInterval(() => send({}), 1000);
      const held: Lock[] = [];
      let scratch: string | null = null;
      try {
        send({}, true);
        const { record, target } = await checkRecord(input);
        signal.throwIfAborted();

        held.push(await core.lockDatabase(target));
        const fileLock = await locks.tryAcquireShared(fileLockKey(record.id));
        if (!fileLock) throw new DomainError("busy", `backup ${record.id} is being deleted; nothing to restore`);
        held.push(fileLock);
        // Losing a lock (its connection dropped) stops the restore before anything is swapped.
        signal = AbortSignal.any([signal, ...held.map((l) => l.lost)]);

        const stat = await store.stat(record.fileName);
        if (!stat) {
          throw new DomainError(
            "failed_precondition",
            `the file of backup ${record.id} (${record.fileName}) is missing from the backup directory`,
          );
        }
        const total = stat.size;
        send({ message: `re-checking the SHA-256 of ${record.fileName}`, bytesTotal: total }, true);
        const hash = await store.sha256(record.fileName, signal);
        const checksumOk = hash === record.checksum;
        if (!checksumOk && !input.force) {
          throw new DomainError(
            "corrupted",
            `backup ${record.id} failed its checksum check (sha256 is ${hash}, ${record.checksum ?? "none"} recorded); ` +
              "nothing was changed (set force to restore it anyway)",
          );
        }
        const state = await restorer.inspectDatabase(target, signal);
        if (state.exists && state.objectCount > 0 && !input.dropExisting) {
          throw new DomainError(
            "failed_precondition",
            `database "${target}" already holds ${state.objectCount} objects; nothing was changed ` +
              "(hint: set drop_existing to replace it, a safety backup is taken first, or restore into another target_database)",
          );
        }
        if (state.exists && state.sessions > 0 && !input.dropExisting) {
          throw new DomainError(
            "failed_precondition",
            `database "${target}" is in use by ${state.sessions} session(s); nothing was changed ` +
              "(hint: close them, or set drop_existing to end them)",
          );
        }
        send({
          message: checksumOk
            ? `checksum ok; restoring into ${state.exists ? "existing" : "new"} database "${target}"`
            : `checksum MISMATCH (sha256 is ${hash}); restoring anyway because force is set`,
          percent: 100,
        }, true);

        let safetyBackupId: string | null = null;
        if (state.exists && state.objectCount > 0 && !input.skipSafetyBackup) {
          send({ phase: "SAFETY_BACKUP", percent: 0, bytesDone: 0, message: `taking a safety backup of "${target}"` }, true);
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
          send({ percent: 100, message: `safety backup ${safetyBackupId} is verified` }, true);
        }

        scratch = `${scratchPrefix}${randomBytes(4).toString("hex")}`;
        // Held for the scratch database's lifetime: start-up clean-up leaves it alone while we live.
        const scratchLock = await locks.tryAcquire(`scratch:${scratch}`);
        if (scratchLock) held.push(scratchLock);
        send({ phase: "RESTORING", percent: 0, bytesDone: 0, message: `loading ${record.fileName}` }, true);
        await restorer.createDatabase(scratch, state.exists ? target : null);
        let done = 0;
        await restorer.load(
          { path: store.path(record.fileName), format: record.archiveFormat, compression: record.compression, database: scratch },
          (n) => {
            done += n;
            send({ bytesDone: done, percent: total === 0 ? 100 : Math.floor((done / total) * 10_000) / 100 });
          },
          signal,
        );
        send({ bytesDone: total, percent: 100, message: "archive loaded" }, true);

        send({ phase: "FINALIZING", percent: 0, message: "checking table and row counts" }, true);
        const found = await restorer.countRows(scratch, signal);
        if (record.tableRowCounts) {
          const diffs = tableDifferences(record.tableRowCounts, found);
          if (diffs.length > 0) {
            throw new DomainError(
              "corrupted",
              `the restored data does not match backup ${record.id}: ${diffs.slice(0, 10).join("; ")}; nothing was changed`,
            );
          }
        }
        signal.throwIfAborted();
        send({ percent: 50, message: `counts match; swapping the restored database in as "${target}"` }, true);
        const retired = `${retiredPrefix}${randomBytes(4).toString("hex")}`;
        await restorer.swapIn(scratch, target, retired, input.dropExisting);
        scratch = null; // it is the target now
        if (state.exists) {
          await restorer.dropDatabase(retired).catch((err: unknown) =>
            logger.warn({ err, database: retired }, "could not drop the replaced database; start-up will retry"),
          );
        }
        const rows = Object.values(found).reduce((a, b) => a + b, 0);
        const undoHint = safetyBackupId
          ? `to undo, restore safety backup ${safetyBackupId} into "${target}" with drop_existing`
          : state.exists && state.objectCount > 0
            ? "no safety backup was taken (skip_safety_backup); this restore cannot be undone by the service"
            : `"${target}" held nothing before; to undo, drop it`;
        logger.info(
          { backupId: record.id, target, safetyBackupId, tables: Object.keys(found).length, rows, actor: input.actor.sub },
          "restore finished",
        );
        send(
          {
            phase: "DONE",
            percent: 100,
            message: `restored backup ${record.id} into "${target}": ${Object.keys(found).length} tables, ${rows} rows`,
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
      } finally {
        clearInterval(heartbeat);
        if (scratch !== null) {
          await restorer.dropDatabase(scratch).catch((err: unknown) =>
            logger.error({ err, database: scratch }, "could not drop the scratch database; start-up will retry"),
          );
        }
        for (const lock of held.reverse()) await lock.release();
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

    /** Drops scratch and retired databases left by a crash (those no live replica holds). */
    async dropLeftovers(): Promise<number> {
      let dropped = 0;
      for (const name of await restorer.listDatabases(scratchPrefix)) {
        const lock = await locks.tryAcquire(`scratch:${name}`);
        if (!lock) continue;
        try {
          await restorer.dropDatabase(name);
          dropped++;
        } finally {
          await lock.release();
        }
      }
      for (const name of await restorer.listDatabases(retiredPrefix)) {
        await restorer.dropDatabase(name);
        dropped++;
      }
      if (dropped > 0) logger.warn({ dropped }, "dropped databases left behind by interrupted restores");
      return dropped;
    },
  };
}
