import { Code, ConnectError, createContextKey, type HandlerContext, type Interceptor, type StreamRequest, type UnaryRequest } from "@connectrpc/connect";
import { parseTimeout as parseConnectTimeout } from "@connectrpc/connect/protocol-connect";
import { parseTimeout as parseGrpcTimeout } from "@connectrpc/connect/protocol-grpc";
import type { JwtKeys } from "../auth/keys.js";
import { describeTokenError } from "../auth/keys.js";
import type { Actor } from "../domain/backup.js";
import type { AuditRepository, NewAuditEvent } from "../domain/ports.js";
import { DomainError } from "../errors.js";
import type { Logger } from "../logger.js";
import { endedByDeadline, kActor, kAuditBackupId, kAuditLate, kAuditNote, kClientAddress } from "./context.js";
import { codeName, toConnectError } from "./errors.js";

const ADMIN_ROLES = new Set(["admin", "superadmin"]);

/** The form of the authorization header every BackupService call must carry. */
const BEARER = /^Bearer\s+(\S+)\s*$/i;

/** RPCs that change state: every call is audited, whatever its outcome. */
export const AUDITED_METHODS = new Set([
  "CreateBackup",
  "VerifyBackup",
  "RestoreBackup",
  "DeleteBackup",
  "CleanupExpiredBackups",
  // Not a change, but it hands out the data: who took a copy is worth knowing.
  "DownloadBackup",
]);

/**
 * Whether a call that began at `started` (Date.now()) and whose client went away ended because of
 * its deadline (see endedByDeadline). The deadline is the header the call's protocol reads:
 * grpc-timeout for gRPC and gRPC-web, connect-timeout-ms for Connect. Read only once a call has
 * ended early, not on every call.
 */
function leftAtDeadline(req: { signal: AbortSignal; header: Headers }, started: number): boolean {
  const grpc = /^application\/grpc/i.test(req.header.get("content-type") ?? "");
  const value = req.header.get(grpc ? "grpc-timeout" : "connect-timeout-ms");
  const { timeoutMs } =
    value === null ? {} : grpc ? parseGrpcTimeout(value, Number.MAX_SAFE_INTEGER) : parseConnectTimeout(value, Number.MAX_SAFE_INTEGER);
  return endedByDeadline(req.signal.reason, timeoutMs === undefined ? undefined : started + timeoutMs - Date.now());
}

function recordAudit(audit: AuditRepository, logger: Logger, event: NewAuditEvent): Promise<void> {
  // An audit write that fails is logged; it never changes the call's outcome.
  return audit.record(event).catch((err: unknown) => logger.error({ err, event }, "could not write audit event"));
}

/** Checks an authorization header: the caller it names, or a ConnectError saying why not. */
export type Authenticate = (header: string | null) => Promise<Actor>;

/**
 * The check every call must pass: `authorization: Bearer <JWT>`, valid for the configured
 * key, with an admin role.
 */
export function createAuthenticator(keys: JwtKeys, claims: { roleClaim: string; usernameClaim: string }): Authenticate {
  return async function authenticate(header) {
    if (!header) {
      throw new ConnectError("missing authorization header (expected: authorization: Bearer <JWT>)", Code.Unauthenticated);
    }
    const m = BEARER.exec(header);
    if (!m) throw new ConnectError("authorization header must be of the form 'Bearer <JWT>'", Code.Unauthenticated);
    let payload;
    try {
      payload = await keys.verify(m[1]!);
    } catch (err) {
      throw new ConnectError(describeTokenError(err), Code.Unauthenticated);
    }
    if (typeof payload.sub !== "string" || payload.sub === "") {
      throw new ConnectError("token has no sub claim", Code.Unauthenticated);
    }
    const username = payload[claims.usernameClaim];
    const actor: Actor = { sub: payload.sub, username: typeof username === "string" ? username : null };
    const role = payload[claims.roleClaim];
    const roles = Array.isArray(role) ? role : [role];
    if (!roles.some((r) => typeof r === "string" && ADMIN_ROLES.has(r))) {
      const err = new ConnectError(
        `role claim "${claims.roleClaim}" must be admin or superadmin to use the backup service`,
        Code.PermissionDenied,
      );
      (err as ConnectError & { actor?: Actor }).actor = actor;
      throw err;
    }
    return actor;
  };
}

/** The token check the request gate began for a call's header, so that the interceptor does not check it again. */
const kGateCheck = createContextKey<{ header: string; actor: Promise<Actor> } | undefined>(undefined, {
  description: "the request gate's token check",
});

/** Refuses, and audits, every call that does not pass `authenticate`. */
export function createAuthInterceptor(authenticate: Authenticate, audit: AuditRepository, logger: Logger): Interceptor {
  return (next) => async (req) => {
    let actor: Actor;
    try {
      const header = req.header.get("authorization");
      const gate = req.contextValues.get(kGateCheck);
      actor = await (gate && gate.header === header ? gate.actor : authenticate(header));
    } catch (err) {
      const ce = err as ConnectError & { actor?: Actor };
      const clientAddress = req.contextValues.get(kClientAddress) ?? null;
      logger.warn({ method: req.method.name, code: codeName(ce.code), reason: ce.rawMessage, clientAddress }, "call denied");
      await recordAudit(audit, logger, {
        actor: ce.actor?.sub ?? null,
        actorUsername: ce.actor?.username ?? null,
        action: req.method.name,
        backupId: null,
        outcome: codeName(ce.code),
        clientAddress,
        message: ce.rawMessage,
      });
      throw ce;
    }
    req.contextValues.set(kActor, actor);
    return next(req);
  };
}

/**
 * A check that runs before a call's request body is read (connect's `requestGate`, and the
 * lean path's), so that a caller without a valid admin token cannot make the service read and
 * hold a body of up to 4 MiB per stream. The token is checked there, once: the auth interceptor
 * takes the gate's result from the call's context values. A call it refuses is refused by
 * running `interceptors` for it, the auth interceptor among them (it refuses such a call before
 * anything else), so that it is counted, logged and audited as any denied call; it is refused
 * as before, only without its body (which also means a malformed body or timeout no longer
 * decides its error: it is UNAUTHENTICATED or PERMISSION_DENIED, as a server stream's always was).
 */
export function createTokenGate(interceptors: Interceptor[], authenticate: Authenticate): (ctx: HandlerContext) => Promise<void> {
  let refuse: (req: UnaryRequest | StreamRequest) => Promise<unknown> = () => {
    throw new ConnectError("internal error: the token check let in a call it had refused", Code.Internal);
  };
  for (let i = interceptors.length - 1; i >= 0; i--) refuse = interceptors[i]!(refuse as never) as typeof refuse;
  return async (ctx) => {
    const header = ctx.requestHeader.get("authorization");
    if (header !== null) {
      const actor = authenticate(header);
      ctx.values.set(kGateCheck, { header, actor });
      if (await actor.then(() => true, () => false)) return;
    }
    await refuse({
      stream: ctx.method.methodKind !== "unary",
      method: ctx.method,
      service: ctx.service,
      requestMethod: ctx.requestMethod,
      url: ctx.url,
      header: ctx.requestHeader,
      contextValues: ctx.values,
      message: undefined,
      get signal() {
        return ctx.signal;
      },
    } as unknown as UnaryRequest);
  };
}

function requestBackupId(message: unknown): string | null {
  const id = (message as { id?: unknown } | null)?.id;
  return typeof id === "string" && id !== "" ? id : null;
}

/** Records every call to a state-changing RPC with its outcome. */
export function createAuditInterceptor(audit: AuditRepository, logger: Logger): Interceptor {
  return (next) => async (req) => {
    if (!AUDITED_METHODS.has(req.method.name)) return next(req);
    const actor = req.contextValues.get(kActor);
    const base = {
      actor: actor?.sub ?? null,
      actorUsername: actor?.username ?? null,
      action: req.method.name,
      clientAddress: req.contextValues.get(kClientAddress) ?? null,
    };
    const requestId = req.stream ? null : requestBackupId(req.message);
    const started = Date.now();
    const note = () => req.contextValues.get(kAuditNote) ?? null;
    /**
     * Work that went on after its client had gone and did complete (a restore past its swap) is
     * recorded as done, with how the call ended. False when there was no such work.
     */
    const late = async (backupId: string | null, ended: string) => {
      const done = await (req.contextValues.get(kAuditLate) ?? null);
      if (done === null) return false;
      await recordAudit(audit, logger, { ...base, backupId, outcome: "OK", message: `${done}; ${ended} before it was told` });
      return true;
    };
    const failed = async (err: unknown, backupId: string | null) => {
      const ce = err instanceof ConnectError ? err : new ConnectError(String(err), Code.Unknown);
      const cause = ce.cause instanceof DomainError ? ce.cause.backupId : undefined;
      if (await late(cause ?? backupId, `the call ended with ${codeName(ce.code)} (${ce.rawMessage})`)) return;
      const n = note();
      await recordAudit(audit, logger, {
        ...base,
        backupId: cause ?? backupId,
        outcome: codeName(ce.code),
        message: n ? `${n}: ${ce.rawMessage}` : ce.rawMessage,
      });
    };
    let res;
    try {
      res = await next(req);
    } catch (err) {
      await failed(err, requestId);
      throw err;
    }
    if (!res.stream) {
      const backup = (res.message as { backup?: { id?: string } }).backup;
      await recordAudit(audit, logger, { ...base, backupId: backup?.id || requestId, outcome: "OK", message: note() });
      return res;
    }
    const inner = res.message;
    return {
      ...res,
      message: (async function* () {
        const backupId = () => req.contextValues.get(kAuditBackupId) ?? null;
        let settled = false;
        try {
          yield* inner;
          settled = true;
          await recordAudit(audit, logger, { ...base, backupId: backupId(), outcome: "OK", message: note() });
        } catch (err) {
          settled = true;
          await failed(err, backupId());
          throw err;
        } finally {
          // The client went away mid-stream (cancelled, or its deadline passed): the generator is
          // closed without an error.
          const left = settled
            ? null
            : leftAtDeadline(req, started)
              ? { outcome: "DEADLINE_EXCEEDED", words: "the call's deadline passed" }
              : { outcome: "CANCELED", words: "the client cancelled the call" };
          if (left && !(await late(backupId(), left.words))) {
            const n = note();
            await recordAudit(audit, logger, {
              ...base,
              backupId: backupId(),
              outcome: left.outcome,
              message: n ? `${n}: ${left.words}` : left.words,
            });
          }
        }
      })(),
    };
  };
}

/** Innermost: turns domain errors into status codes, for unary and streaming calls. */
export function createErrorInterceptor(logger: Logger): Interceptor {
  return (next) => async (req) => {
    // Once the client has gone (cancelled, or past its deadline), any error is that: for
    // example a write to the closed stream, which is no fault of the service.
    const started = Date.now();
    const map = (err: unknown) =>
      req.signal.aborted && !(err instanceof DomainError)
        ? leftAtDeadline(req, started)
          ? new ConnectError("cancelled: the call's deadline was exceeded", Code.DeadlineExceeded)
          : new ConnectError("cancelled by the client", Code.Canceled)
        : toConnectError(err, logger, req.method.name);
    try {
      const res = await next(req);
      if (!res.stream) return res;
      const inner = res.message;
      return {
        ...res,
        message: (async function* () {
          try {
            yield* inner;
          } catch (err) {
            throw map(err);
          }
        })(),
      };
    } catch (err) {
      throw map(err);
    }
  };
}
