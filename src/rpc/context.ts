import { Code, ConnectError, createContextKey } from "@connectrpc/connect";
import type { Actor } from "../domain/backup.js";

/**
 * A client's own deadline timer resets the stream when the deadline passes by its clock, which
 * started before the request reached us: a reset that comes this close to the call's deadline (as
 * the server counts it) is taken for the deadline, not for a cancel. The gap is the request's
 * way here, which on a loaded machine has been seen past 250 ms.
 */
const DEADLINE_SLACK_MS = 1000;

/**
 * Whether a call aborted with `reason` (its signal's), `msLeft` before its deadline (undefined:
 * it has none), ended because of its deadline rather than a cancel. The one rule for the
 * handlers' signal, the audit trail and the error codes.
 */
export function endedByDeadline(reason: unknown, msLeft: number | undefined): boolean {
  return (reason instanceof ConnectError && reason.code === Code.DeadlineExceeded) || (msLeft !== undefined && msLeft <= DEADLINE_SLACK_MS);
}

/** The authenticated caller, set by the auth interceptor. */
export const kActor = createContextKey<Actor | undefined>(undefined, { description: "authenticated actor" });

/** The peer's address, set from the Node request by the adapter. */
export const kClientAddress = createContextKey<string | undefined>(undefined, { description: "client address" });

/** What the audit trail should say about a call, set by its handler (e.g. the restore target). */
export const kAuditNote = createContextKey<string | undefined>(undefined, { description: "audit note" });

/**
 * Set by a streaming handler whose client went away while its work went on: resolves, once that
 * work has ended, with what the audit trail should say it did (null: it did not complete).
 */
export const kAuditLate = createContextKey<Promise<string | null> | undefined>(undefined, { description: "audit late outcome" });

/** The backup a streaming call concerns, set by its handler for the audit trail. */
export const kAuditBackupId = createContextKey<string | undefined>(undefined, { description: "audit backup id" });
