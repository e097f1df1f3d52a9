import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { BackupService, VerificationCheckSchema } from "../../gen/backup/v1/backup_pb.js";
import type { BackupService as Domain } from "../domain/backup-service.js";
import { DomainError } from "../errors.js";
import { kActor } from "./context.js";
import {
  auditEventToProto,
  backupStatusFromProto,
  backupToProto,
  backupTypeFromProto,
  statusToProto,
} from "./mappers.js";

/**
 * A signal for the domain that aborts with a domain error when the call is
 * cancelled by the client or runs past its deadline.
 */
function callSignal(ctx: HandlerContext): AbortSignal {
  const ac = new AbortController();
  const onAbort = () => {
    const reason: unknown = ctx.signal.reason;
    const deadline = reason instanceof ConnectError && reason.code === Code.DeadlineExceeded;
    ac.abort(
      deadline
        ? new DomainError("deadline_exceeded", "cancelled: the call's deadline was exceeded")
        : new DomainError("cancelled", "cancelled by the client"),
    );
  };
  if (ctx.signal.aborted) onAbort();
  else ctx.signal.addEventListener("abort", onAbort, { once: true });
  return ac.signal;
}

function actorOf(ctx: HandlerContext) {
  const actor = ctx.values.get(kActor);
  // The auth interceptor guarantees one; this guards against a wiring mistake.
  if (!actor) throw new ConnectError("no authenticated caller", Code.Unauthenticated);
  return actor;
}

/** Maps BackupService calls onto the domain; no business rules live here. */
export function createBackupHandlers(service: Domain): Partial<ServiceImpl<typeof BackupService>> {
  return {
    async getStats(req) {
      const s = await service.getStats(req.database);
      return {
        totalBackups: BigInt(s.total),
        successfulBackups: BigInt(s.successful),
        failedBackups: BigInt(s.failed),
        successRate: s.successRate,
        latestBackup: s.latest ? backupToProto(s.latest) : undefined,
        totalSizeBytes: BigInt(s.totalSizeBytes),
        averageCompression: s.averageCompression ?? 0,
      };
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

    async listBackups(req) {
      const page = await service.listBackups({
        page: req.page,
        pageSize: req.pageSize,
        status: backupStatusFromProto(req.status),
        backupType: backupTypeFromProto(req.backupType),
        database: req.database,
        includeDeleted: req.includeDeleted,
      });
      return {
        backups: page.items.map(backupToProto),
        total: BigInt(page.total),
        page: page.page,
        pages: page.pages,
      };
    },

    async getBackup(req) {
      const { record, fileExists } = await service.getBackup(req.id);
      return { backup: backupToProto(record), fileExists };
    },

    async verifyBackup(req, ctx) {
      const r = await service.verifyBackup(req.id, callSignal(ctx));
      return {
        verified: r.verified,
        status: statusToProto(r.status),
        checks: r.checks.map((c) => create(VerificationCheckSchema, c)),
        message: r.message,
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
  };
}
