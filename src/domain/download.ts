import { DomainError, invalidArgument, notFound } from "../errors.js";
import { fileLockKey, type ArchiveFormat, type CompressionKind } from "./backup.js";
import type { BackupService } from "./backup-service.js";
import type { BackupRepository, BlobStore, LockManager } from "./ports.js";

export type DownloadItem =
  | {
      kind: "info";
      backupId: string;
      fileName: string;
      fileSize: number;
      checksum: string;
      format: ArchiveFormat;
      compression: CompressionKind;
      offset: number;
    }
  /** `release()`: the data has been sent (or copied) and its buffer may be read into again. */
  | { kind: "chunk"; offset: number; data: Buffer; release(): void };

export interface DownloadDeps {
  backups: BackupRepository;
  store: BlobStore;
  locks: LockManager;
  core: BackupService["core"];
}

/** Streams backup files, resumable from any offset. */
export function createDownloadUseCase({ backups, store, locks, core }: DownloadDeps) {
  return {
    /**
     * First the file's description, then its bytes from `offset` in order.
     * A hard delete waits (is refused) while a download holds the file.
     */
    async *downloadBackup(id: string, from: number | bigint, signal?: AbortSignal): AsyncGenerator<DownloadItem> {
      const backupId = core.validateId(id);
      // A bigint as the wire's int64 has it: one past what a number holds exactly is still
      // just an offset past the end of the file, told once the file is known.
      if (typeof from === "number" ? !Number.isSafeInteger(from) || from < 0 : from < 0n) {
        throw invalidArgument("offset", "must be 0 or a positive byte offset");
      }
      const record = await backups.findById(backupId);
      if (!record) throw notFound(`backup ${backupId} not found`);
      if (record.isDeleted) throw notFound(`backup ${backupId} was deleted`);
      if (record.status === "IN_PROGRESS" || record.status === "FAILED") {
        throw new DomainError("failed_precondition", `backup ${backupId} is ${record.status} and has no file to download`);
      }
      const lock = await locks.tryAcquireShared(fileLockKey(backupId));
      if (!lock) throw new DomainError("busy", `backup ${backupId} is being deleted`);
      try {
        // Again under the lock: a delete that finished between the read above and the lock
        // leaves no record (or a deleted one), and is NOT_FOUND, not a missing file.
        const held = await backups.findById(backupId);
        if (!held) throw notFound(`backup ${backupId} not found`);
        if (held.isDeleted) throw notFound(`backup ${backupId} was deleted`);
        const stat = await store.stat(record.fileName);
        if (!stat) {
          throw new DomainError(
            "failed_precondition",
            `the file of backup ${backupId} (${record.fileName}) is missing from the backup directory`,
          );
        }
        if (BigInt(from) > BigInt(stat.size)) {
          throw new DomainError("out_of_range", `offset ${from} is past the end of the file (${stat.size} bytes)`);
        }
        const offset = Number(from);
        yield {
          kind: "info",
          backupId,
          fileName: record.fileName,
          fileSize: stat.size,
          checksum: record.checksum ?? "",
          format: record.archiveFormat,
          compression: record.compression,
          offset,
        };
        let at = offset;
        if (at === stat.size) return;
        try {
          for await (const { data, release } of store.read(record.fileName, offset, signal)) {
            yield { kind: "chunk", offset: at, data, release };
            at += data.length;
          }
        } catch (err) {
          signal?.throwIfAborted(); // a cancelled call, not a read failure
          throw err;
        }
      } finally {
        await lock.release();
      }
    },
  };
}
