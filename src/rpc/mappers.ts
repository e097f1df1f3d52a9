import { create, toBinary, type JsonObject, type UnknownField } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  ArchiveFormat,
  type AuditEvent as AuditEventMsg,
  AuditEventSchema,
  type Backup,
  BackupSchema,
  BackupStatus,
  BackupType,
  Compression,
  type DownloadBackupResponse,
  DownloadBackupResponseSchema,
  DownloadChunkSchema,
  type RestoreBackupResponse,
  RestoreBackupResponseSchema,
  RestorePhase,
  JobRunOutcome,
  type JobStatus as JobStatusMsg,
  JobStatusSchema,
  ListBackupsResponseSchema,
} from "../../gen/backup/v1/backup_pb.js";
import type { JobStatus } from "../scheduler/scheduler.js";
import type { DownloadItem } from "../domain/download.js";
import type { RestoreProgress } from "../domain/restore.js";
import type { BackupRecord, BackupStatus as DomainStatus, BackupType as DomainType } from "../domain/backup.js";
import type { AuditEvent, JobOutcome } from "../domain/ports.js";
import { invalidArgument } from "../errors.js";
import { withWireParts } from "./grpc-lean.js";

const TYPE_TO_PROTO: Record<DomainType, BackupType> = {
  FULL: BackupType.FULL,
  INCREMENTAL: BackupType.INCREMENTAL,
  MANUAL: BackupType.MANUAL,
};
const STATUS_TO_PROTO: Record<DomainStatus, BackupStatus> = {
  IN_PROGRESS: BackupStatus.IN_PROGRESS,
  COMPLETED: BackupStatus.COMPLETED,
  FAILED: BackupStatus.FAILED,
  VERIFIED: BackupStatus.VERIFIED,
  CORRUPTED: BackupStatus.CORRUPTED,
};

function invert<K extends string, V extends number>(m: Record<K, V>): Map<V, K> {
  return new Map(Object.entries(m).map(([k, v]) => [v as V, k as K]));
}
const TYPE_FROM_PROTO = invert(TYPE_TO_PROTO);
const STATUS_FROM_PROTO = invert(STATUS_TO_PROTO);

/** UNSPECIFIED -> undefined; a value the contract does not define -> invalid_argument naming the field. */
export function backupTypeFromProto(v: BackupType, field = "backup_type"): DomainType | undefined {
  if (v === BackupType.UNSPECIFIED) return undefined;
  const t = TYPE_FROM_PROTO.get(v);
  if (!t) throw invalidArgument(field, `unknown value ${v} (expected FULL or MANUAL)`);
  return t;
}

export function backupStatusFromProto(v: BackupStatus, field = "status"): DomainStatus | undefined {
  if (v === BackupStatus.UNSPECIFIED) return undefined;
  const s = STATUS_FROM_PROTO.get(v);
  if (!s) throw invalidArgument(field, `unknown value ${v} (expected IN_PROGRESS, COMPLETED, FAILED, VERIFIED or CORRUPTED)`);
  return s;
}

export function statusToProto(s: DomainStatus): BackupStatus {
  return STATUS_TO_PROTO[s];
}

const ts = (d: Date | null) => (d ? timestampFromDate(d) : undefined);

// Records served from the repository's shared cache are the same objects call after call:
// their wire form is built once. (Records are never mutated; updates make new ones.)
const protoOf = new WeakMap<BackupRecord, Backup>();

export function backupToProto(r: BackupRecord): Backup {
  let m = protoOf.get(r);
  if (!m) {
    m = buildBackup(r);
    protoOf.set(r, m);
  }
  return m;
}

const BACKUPS_FIELD = ListBackupsResponseSchema.field.backups.number;
// A record's `backups` entry in wire form: length and encoded Backup.
const wireOf = new WeakMap<BackupRecord, Uint8Array>();
const pageWireOf = new WeakMap<readonly BackupRecord[], UnknownField[]>();

/**
 * A listing page's `backups` field (ListBackupsResponse field 1) already encoded, for
 * a reply's `$unknown`, which protobuf-es writes out as it is. The repository shares a
 * page's record array between callers for a second, so its encoding is done once for
 * all of them, not once per call (it was most of a listing call's encoding cost, and a
 * buffer grown by doubling per call for the garbage collector). Field order on the wire
 * then differs (the records come after `total`), which protobuf allows.
 *
 * Only for the binary codec: the JSON codec ignores unknown fields.
 */
export function encodedBackupsField(items: readonly BackupRecord[]): UnknownField[] {
  let fields = pageWireOf.get(items);
  if (!fields) {
    fields = items.map((r) => {
      let data = wireOf.get(r);
      if (!data) {
        data = new BinaryWriter().bytes(toBinary(BackupSchema, backupToProto(r))).finish();
        wireOf.set(r, data);
      }
      return { no: BACKUPS_FIELD, wireType: WireType.LengthDelimited, data };
    });
    pageWireOf.set(items, fields);
  }
  return fields;
}

function buildBackup(r: BackupRecord): Backup {
  return create(BackupSchema, {
    id: r.id,
    backupType: TYPE_TO_PROTO[r.backupType],
    fileName: r.fileName,
    fileSize: BigInt(r.fileSize ?? 0),
    status: STATUS_TO_PROTO[r.status],
    startedAt: ts(r.startedAt),
    completedAt: ts(r.completedAt),
    duration: r.durationMs === null ? undefined : durationFromMs(r.durationMs),
    databaseSize: BigInt(r.databaseSize ?? 0),
    tableCount: r.tableCount ?? 0,
    rowCount: BigInt(r.rowCount ?? 0),
    compressionRatio: r.compressionRatio ?? 0,
    checksum: r.checksum ?? "",
    verifiedAt: ts(r.verifiedAt),
    isEncrypted: r.isEncrypted,
    triggeredBy: r.triggeredBy ?? "",
    triggeredByUsername: r.triggeredByUsername ?? "",
    errorMessage: r.errorMessage ?? "",
    metadata: r.metadata as JsonObject,
    retentionDays: r.retentionDays,
    expiresAt: ts(r.expiresAt),
    isDeleted: r.isDeleted,
    deletedAt: ts(r.deletedAt),
    createdAt: ts(r.createdAt),
    updatedAt: ts(r.updatedAt),
    databaseName: r.databaseName,
    dumpSize: BigInt(r.dumpSize ?? 0),
    archiveFormat: r.archiveFormat === "custom" ? ArchiveFormat.CUSTOM : ArchiveFormat.PLAIN,
    compression: r.compression === "zstd" ? Compression.ZSTD : Compression.GZIP,
    serverVersion: r.serverVersion ?? "",
    pgDumpVersion: r.pgDumpVersion ?? "",
    label: r.label ?? "",
    restoreVerifiedAt: ts(r.restoreVerifiedAt),
  });
}

export function auditEventToProto(e: AuditEvent): AuditEventMsg {
  return create(AuditEventSchema, {
    id: BigInt(e.id),
    occurredAt: timestampFromDate(e.occurredAt),
    actor: e.actor ?? "",
    actorUsername: e.actorUsername ?? "",
    action: e.action,
    backupId: e.backupId ?? "",
    outcome: e.outcome,
    clientAddress: e.clientAddress ?? "",
    message: e.message ?? "",
  });
}

const PHASE_TO_PROTO: Record<RestoreProgress["phase"], RestorePhase> = {
  VALIDATING: RestorePhase.VALIDATING,
  SAFETY_BACKUP: RestorePhase.SAFETY_BACKUP,
  RESTORING: RestorePhase.RESTORING,
  FINALIZING: RestorePhase.FINALIZING,
  DONE: RestorePhase.DONE,
};

export function restoreProgressToProto(p: RestoreProgress): RestoreBackupResponse {
  const r = p.result;
  return create(RestoreBackupResponseSchema, {
    phase: PHASE_TO_PROTO[p.phase],
    bytesDone: BigInt(p.bytesDone),
    bytesTotal: BigInt(p.bytesTotal),
    percent: p.percent,
    elapsed: durationFromMs(p.elapsedMs),
    message: p.message,
    result: r
      ? {
          targetDatabase: r.targetDatabase,
          duration: durationFromMs(r.durationMs),
          safetyBackupId: r.safetyBackupId ?? "",
          tableCount: Object.keys(r.tableRowCounts).length,
          rowCount: BigInt(Object.values(r.tableRowCounts).reduce((a, b) => a + b, 0)),
          tables: Object.entries(r.tableRowCounts)
            .sort(([a], [b]) => a.localeCompare(b))
            .map(([table, rows]) => ({ table, rows: BigInt(rows) })),
          undoHint: r.undoHint,
          checksumOk: r.checksumOk,
        }
      : undefined,
  });
}

const CHUNK_FIELD = DownloadBackupResponseSchema.field.chunk.number;
const CHUNK_OFFSET_FIELD = DownloadChunkSchema.field.offset.number;
const CHUNK_DATA_FIELD = DownloadChunkSchema.field.data.number;

/**
 * The binary form of a DownloadBackupResponse holding a chunk, as parts: the tags and
 * lengths (a few bytes), then `data` itself, so that the lean gRPC path writes the
 * file's buffer without copying it (see withWireParts). Concatenated, they are what
 * toBinary makes of the message.
 */
export function chunkWireParts(offset: bigint, data: Uint8Array): Uint8Array[] {
  const inner = new BinaryWriter();
  if (offset !== 0n) inner.tag(CHUNK_OFFSET_FIELD, WireType.Varint).int64(offset);
  if (data.length > 0) inner.tag(CHUNK_DATA_FIELD, WireType.LengthDelimited).uint32(data.length);
  const head = inner.finish();
  const outer = new BinaryWriter().tag(CHUNK_FIELD, WireType.LengthDelimited).uint32(head.length + data.length).raw(head).finish();
  return data.length > 0 ? [outer, data] : [outer];
}

export function downloadItemToProto(item: DownloadItem): DownloadBackupResponse {
  if (item.kind === "chunk") {
    const offset = BigInt(item.offset);
    const reply = create(DownloadBackupResponseSchema, { payload: { case: "chunk", value: { offset, data: item.data } } });
    // The lean gRPC path writes the read buffer itself and hands it back once written.
    return withWireParts(reply, chunkWireParts(offset, item.data), item.release);
  }
  return create(DownloadBackupResponseSchema, {
    payload: {
      case: "info",
      value: {
        backupId: item.backupId,
        fileName: item.fileName,
        fileSize: BigInt(item.fileSize),
        checksum: item.checksum,
        archiveFormat: item.format === "custom" ? ArchiveFormat.CUSTOM : ArchiveFormat.PLAIN,
        compression: item.compression === "zstd" ? Compression.ZSTD : Compression.GZIP,
        offset: BigInt(item.offset),
      },
    },
  });
}

const OUTCOME_TO_PROTO: Record<JobOutcome, JobRunOutcome> = {
  RUNNING: JobRunOutcome.RUNNING,
  SUCCEEDED: JobRunOutcome.SUCCEEDED,
  FAILED: JobRunOutcome.FAILED,
  SKIPPED: JobRunOutcome.SKIPPED,
  INTERRUPTED: JobRunOutcome.INTERRUPTED,
  TAKEN_ELSEWHERE: JobRunOutcome.UNSPECIFIED, // never a claimed run
};

export function jobStatusToProto(j: JobStatus): JobStatusMsg {
  const r = j.lastRun;
  return create(JobStatusSchema, {
    name: j.name,
    cron: j.cron,
    timeZone: j.timeZone,
    enabled: j.enabled,
    running: j.running,
    nextRunAt: ts(j.nextRunAt),
    lastRun: r
      ? {
          slot: timestampFromDate(r.slot),
          startedAt: timestampFromDate(r.startedAt),
          finishedAt: ts(r.finishedAt),
          outcome: OUTCOME_TO_PROTO[r.outcome],
          backupId: r.backupId ?? "",
          error: r.error ?? "",
          replicaId: r.replicaId,
        }
      : undefined,
  });
}
