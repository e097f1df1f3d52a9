import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { create, toBinary } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  BackupService,
  GetStatsResponseSchema,
  ListBackupsResponseSchema,
  type GetStatsResponse,
  type ListBackupsResponse,
  VerificationCheckSchema,
  VerificationLevel,
} from "../../gen/backup/v1/backup_pb.js";
import type { BackupService as Domain, VerificationResult } from "../domain/backup-service.js";
import { DomainError } from "../errors.js";
import type { createDownloadUseCase } from "../domain/download.js";
import type { createRestoreUseCase, RestoreProgress } from "../domain/restore.js";
import type { createRetentionUseCase } from "../domain/retention.js";
import type { JobStatus } from "../scheduler/scheduler.js";
import { endedByDeadline, kActor, kAuditBackupId, kAuditLate, kAuditNote } from "./context.js";
import { withEncodedReply } from "./grpc-lean.js";
import {
  auditEventToProto,
  backupStatusFromProto,
  backupToProto,
  backupTypeFromProto,
  downloadItemToProto,
  encodedBackupsField,
  jobStatusToProto,
  restoreProgressToProto,
  statusToProto,
} from "./mappers.js";

/**
 * A signal for the domain that aborts with a domain error when the call is
 * cancelled by the client or runs past its deadline.
 */
function callSignal(ctx: HandlerContext): AbortSignal {
  const ac = new AbortController();
  const onAbort = () => {
    ac.abort(
      endedByDeadline(ctx.signal.reason, ctx.timeoutMs())
        ? new DomainError("deadline_exceeded", "cancelled: the call's deadline was exceeded")
        : new DomainError("cancelled", "cancelled by the client"),
    );
  };
  if (ctx.signal.aborted) onAbort();
  else ctx.signal.addEventListener("abort", onAbort, { once: true });
  return ac.signal;
}

/** Whether the reply goes out in protobuf's binary form (gRPC, gRPC-web, Connect), not JSON. */
function binaryReply(ctx: HandlerContext): boolean {
  const type = ctx.requestHeader.get("content-type") ?? "";
  return /^application\/(grpc(-web)?(\+proto)?|proto)\s*(;|$)/i.test(type);
}

function actorOf(ctx: HandlerContext) {
  const actor = ctx.values.get(kActor);
  // The auth interceptor guarantees one; this guards against a wiring mistake.
  if (!actor) throw new ConnectError("no authenticated caller", Code.Unauthenticated);
  return actor;
}

/** Every use case the BackupService RPCs map onto. */
export type BackupUseCases = Omit<Domain, "core" | "verifyBackup"> & {
  verifyBackup(id: string, signal: AbortSignal | undefined, deep: boolean): Promise<VerificationResult>;
} &
  Pick<ReturnType<typeof createRestoreUseCase>, "restoreBackup"> &
  ReturnType<typeof createDownloadUseCase> &
  ReturnType<typeof createRetentionUseCase> & {
    jobStatus(): Promise<{ jobs: JobStatus[]; enabled: boolean; replicaId: string }>;
  };

/** Maps BackupService calls onto the domain; no business rules live here. */
export function createBackupHandlers(service: BackupUseCases): ServiceImpl<typeof BackupService> {
  const statsReplies = new WeakMap<object, GetStatsResponse>();
  const pageReplies = new WeakMap<object, { total: number; page: number; pages: number; reply: ListBackupsResponse }>();
  return {
    async getStats(req) {
      // The domain shares one result per second of cached answers; so do the reply and its bytes.
      const s = await service.getStats(req.database);
      let reply = statsReplies.get(s);
      if (!reply) {
        reply = create(GetStatsResponseSchema, {
          totalBackups: BigInt(s.total),
          successfulBackups: BigInt(s.successful),
          failedBackups: BigInt(s.failed),
          successRate: s.successRate,
          latestBackup: s.latest ? backupToProto(s.latest) : undefined,
          totalSizeBytes: BigInt(s.totalSizeBytes),
          averageCompression: s.averageCompression ?? 0,
          restoreVerification: s.restoreVerification.map((r) => ({
            database: r.database,
            backupId: r.backupId ?? "",
            restoreVerifiedAt: r.at ? timestampFromDate(r.at) : undefined,
            age: r.ageMs === null ? undefined : durationFromMs(r.ageMs),
          })),
        });
        withEncodedReply(reply, toBinary(GetStatsResponseSchema, reply));
        statsReplies.set(s, reply);
      }
      return reply;
    },

    async createBackup(req, ctx) {
      const { record, verified } = await service.createBackup(
        {
          backupType: backupTypeFromProto(req.backupType),
          retentionDays: req.retentionDays,
          label: req.label,
          database: req.database,
          async: req.async,
          actor: actorOf(ctx),
        },
        callSignal(ctx),
      );
      return { backup: backupToProto(record), verified };
    },

    async listBackups(req, ctx) {
      const page = await service.listBackups({
        page: req.page,
        pageSize: req.pageSize,
        status: backupStatusFromProto(req.status),
        backupType: backupTypeFromProto(req.backupType),
        database: req.database,
        includeDeleted: req.includeDeleted,
      });
      if (!binaryReply(ctx)) {
        const reply = create(ListBackupsResponseSchema, { total: BigInt(page.total), page: page.page, pages: page.pages });
        reply.backups = page.items.map(backupToProto);
        return reply;
      }
      // The page's records go out as bytes encoded once per shared page (see encodedBackupsField),
      // and the whole reply, on the lean gRPC path, as bytes encoded once per shared page too.
      const shared = pageReplies.get(page.items);
      if (shared && shared.total === page.total && shared.page === page.page && shared.pages === page.pages) return shared.reply;
      const reply = create(ListBackupsResponseSchema, { total: BigInt(page.total), page: page.page, pages: page.pages });
      reply.$unknown = encodedBackupsField(page.items);
      withEncodedReply(reply, toBinary(ListBackupsResponseSchema, reply));
      pageReplies.set(page.items, { total: page.total, page: page.page, pages: page.pages, reply });
      return reply;
    },

    async getBackup(req) {
      const { record, fileExists } = await service.getBackup(req.id);
      return { backup: backupToProto(record), fileExists };
    },

    async verifyBackup(req, ctx) {
      ctx.values.set(kAuditNote, req.deep ? "deep verification" : "verification");
      const r = await service.verifyBackup(req.id, callSignal(ctx), req.deep);
      return {
        verified: r.verified,
        status: statusToProto(r.status),
        checks: r.checks.map((c) => create(VerificationCheckSchema, c)),
        message: r.message,
        level: r.level === "restore" ? VerificationLevel.RESTORE : VerificationLevel.CHECKSUM,
        duration: durationFromMs(r.durationMs),
        tableMismatches: r.mismatches.map((m) => ({
          table: m.table,
          expectedRows: BigInt(m.expectedRows),
          foundRows: BigInt(m.foundRows ?? 0),
          missing: m.foundRows === null,
        })),
      };
    },

    async listAuditEvents(req) {
      const page = await service.listAuditEvents({
        page: req.page,
        pageSize: req.pageSize,
        backupId: req.backupId,
        actor: req.actor,
        action: req.action,
      });
      return {
        events: page.items.map(auditEventToProto),
        total: BigInt(page.total),
        page: page.page,
        pages: page.pages,
      };
    },

    async *restoreBackup(req, ctx) {
      const actor = actorOf(ctx);
      ctx.values.set(kAuditBackupId, req.id.toLowerCase());
      const flags = [req.dropExisting && "drop_existing", req.force && "force", req.skipSafetyBackup && "skip_safety_backup"]
        .filter(Boolean)
        .join(", ");
      const note = (db: string) => `restore into ${db}${flags ? ` (${flags})` : ""}`;
      ctx.values.set(kAuditNote, note(req.targetDatabase ? `"${req.targetDatabase}"` : "the backup's own database"));
      const progress = service.restoreBackup(
        {
          id: req.id,
          confirmRestore: req.confirmRestore,
          force: req.force,
          dropExisting: req.dropExisting,
          targetDatabase: req.targetDatabase,
          skipSafetyBackup: req.skipSafetyBackup,
          actor,
        },
        callSignal(ctx),
      );
      /** What the audit trail says once the restore has swapped its database in. */
      let restored: string | null = null;
      const track = (p: RestoreProgress) => {
        if (p.target) ctx.values.set(kAuditNote, note(`"${p.target}"`));
        if (p.result) {
          const safety = p.result.safetyBackupId ? `, safety backup ${p.result.safetyBackupId}` : "";
          restored = `restored into "${p.result.targetDatabase}"${safety}${flags ? ` (${flags})` : ""}`;
          ctx.values.set(kAuditNote, restored);
        }
      };
      // Read by hand rather than with for-await, which would close the progress when the client
      // goes away and lose how the restore ended.
      let ended = false;
      try {
        for (;;) {
          let r: IteratorResult<RestoreProgress>;
          try {
            r = await progress.next();
          } catch (err) {
            ended = true;
            throw err;
          }
          if (r.done) break;
          track(r.value);
          yield restoreProgressToProto(r.value);
        }
        ended = true;
      } finally {
        if (!ended) {
          // The client went away (cancelled, or its deadline passed) while the restore ran. Before
          // the swap that stops it and the target stays as it was; once the swap has begun it
          // finishes, and the audit trail must say that the target was replaced.
          ctx.values.set(
            kAuditLate,
            (async () => {
              try {
                for (let r = await progress.next(); !r.done; r = await progress.next()) track(r.value);
              } catch {
                // stopped: not restored
              }
              return restored;
            })(),
          );
        }
      }
    },

    async *downloadBackup(req, ctx) {
      ctx.values.set(kAuditBackupId, req.id.toLowerCase());
      ctx.values.set(kAuditNote, `download from offset ${req.offset}`);
      for await (const item of service.downloadBackup(req.id, req.offset, ctx.signal)) {
        yield downloadItemToProto(item);
      }
    },

    async deleteBackup(req) {
      const r = await service.deleteBackup(req.id, req.hardDelete);
      return { backup: backupToProto(r.record), fileRemoved: r.fileRemoved, freedBytes: BigInt(r.freedBytes) };
    },

    async getJobStatus() {
      const s = await service.jobStatus();
      return { jobs: s.jobs.map(jobStatusToProto), schedulerEnabled: s.enabled, replicaId: s.replicaId };
    },

    async cleanupExpiredBackups(req, ctx) {
      const r = await service.cleanupExpired(req.dryRun);
      ctx.values.set(
        kAuditNote,
        `${r.dryRun ? "dry run: would remove" : "removed"} ${r.removed.length} backup(s), ${r.freedBytes} bytes; kept ${r.kept.length} by the safety floor`,
      );
      return {
        deletedCount: BigInt(r.removed.length),
        freedBytes: BigInt(r.freedBytes),
        removed: r.removed.map(backupToProto),
        kept: r.kept.map(backupToProto),
        dryRun: r.dryRun,
      };
    },
  };
}
