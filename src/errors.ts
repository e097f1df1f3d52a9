/** What went wrong, in terms the RPC layer maps to a status code. */
export type ErrorKind =
  | "invalid_argument"
  | "not_found"
  | "failed_precondition"
  | "unavailable"
  | "busy"
  | "out_of_range"
  | "resource_exhausted"
  | "cancelled"
  | "deadline_exceeded"
  | "dump_failed"
  | "corrupted";

/**
 * A failure the caller can act on. Its message is safe to send to clients:
 * lowercase, says what failed and where, with a hint where one helps.
 */
export class DomainError extends Error {
  override name = "DomainError";
  /** The backup the failure concerns, when there is one. */
  readonly backupId: string | undefined;
  constructor(
    readonly kind: ErrorKind,
    message: string,
    options?: { cause?: unknown; backupId?: string },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.backupId = options?.backupId;
  }
}

export const invalidArgument = (field: string, why: string) =>
  new DomainError("invalid_argument", `${field}: ${why}`);

export const notFound = (what: string) => new DomainError("not_found", what);

export function isDomainError(e: unknown, kind?: ErrorKind): e is DomainError {
  return e instanceof DomainError && (kind === undefined || e.kind === kind);
}

/**
 * A file that could not be opened or read (the disk's failure, not its bytes'): a file
 * system call's error, or a DomainError caused by one.
 */
export function isFileReadError(err: unknown): boolean {
  const e = err instanceof DomainError ? err.cause : err;
  const syscall = (e as { syscall?: unknown } | null | undefined)?.syscall;
  return syscall === "open" || syscall === "read";
}

/**
 * Words about an unexpected error that are safe to show a client: a
 * PostgreSQL server message, or which system call failed with which code;
 * never a path, SQL text or parameters.
 */
export function safeReason(err: unknown): string {
  const e = err as { code?: unknown; syscall?: unknown; severity?: unknown; message?: unknown } | null;
  if (e && typeof e.severity === "string" && typeof e.message === "string") return e.message;
  if (e && typeof e.code === "string" && typeof e.syscall === "string") return `${e.syscall} failed (${e.code})`;
  return "internal error (details are in the service log)";
}

/**
 * PostgreSQL's words for a privilege the role lacks, as the server and its client tools
 * (pg_dump, pg_restore, psql) print them; SQLSTATE 42501 in a server error.
 */
const PRIVILEGE_WORDS =
  /permission denied|must be owner of|must be (?:a )?member of (?:the )?role|must be (?:a )?superuser|query would be affected by row-level security policy/i;

/** A server error, or a client tool's output, that says the role lacks a privilege (not that anything is damaged). */
export function isPrivilegeFailure(err: unknown): boolean {
  if (typeof err === "string") return PRIVILEGE_WORDS.test(err);
  const e = err as { code?: unknown; message?: unknown } | null | undefined;
  if (e?.code === "42501") return true;
  const cause = (err as { cause?: unknown } | null | undefined)?.cause;
  if (err instanceof DomainError && cause !== undefined) return isPrivilegeFailure(cause);
  return false;
}
