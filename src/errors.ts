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
