/**
 * backupctl's exit codes and how a failure becomes one line on stderr.
 * The table is documented in the README ("CLI: backupctl"); scripts rely on it.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { oneLine } from "./format.js";

export const Exit = {
  OK: 0,
  /** The operation ran and failed, or found a problem (CORRUPTED, checksum mismatch, backup/restore failed). */
  FAILED: 1,
  /** Bad flags or arguments, no token, an unconfirmed restore, INVALID_ARGUMENT / OUT_OF_RANGE. */
  USAGE: 2,
  /** The service could not be reached or is unavailable (UNAVAILABLE, DEADLINE_EXCEEDED). */
  UNAVAILABLE: 3,
  /** UNAUTHENTICATED or PERMISSION_DENIED. */
  AUTH: 4,
  /** NOT_FOUND. */
  NOT_FOUND: 5,
  /** Refused in the current state: FAILED_PRECONDITION, ABORTED, ALREADY_EXISTS, RESOURCE_EXHAUSTED. */
  CONFLICT: 6,
  /** Interrupted with Ctrl-C (SIGINT). */
  INTERRUPTED: 130,
} as const;

/** A failure of the CLI itself (not of a call), with the exit code it stands for. */
export class CliError extends Error {
  override name = "CliError";
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

export function usageError(message: string): CliError {
  return new CliError(message, Exit.USAGE);
}

/** The exit code a gRPC status code stands for. */
export function exitCodeOf(code: Code): number {
  switch (code) {
    case Code.InvalidArgument:
    case Code.OutOfRange:
      return Exit.USAGE;
    case Code.Unavailable:
    case Code.DeadlineExceeded:
      return Exit.UNAVAILABLE;
    case Code.Unauthenticated:
    case Code.PermissionDenied:
      return Exit.AUTH;
    case Code.NotFound:
      return Exit.NOT_FOUND;
    case Code.FailedPrecondition:
    case Code.Aborted:
    case Code.AlreadyExists:
    case Code.ResourceExhausted:
      return Exit.CONFLICT;
    default:
      // INTERNAL, DATA_LOSS, UNKNOWN, CANCELLED, UNIMPLEMENTED: the call ran and failed.
      return Exit.FAILED;
  }
}

/** NOT_FOUND for Code.NotFound: the names the service's audit trail uses too. */
export function codeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** Node error codes that mean the connection itself failed (refused, DNS, TLS, HTTP/2 setup). */
const CONNECTION_FAILURE = /^(E[A-Z]+$|ERR_HTTP2_|ERR_SSL_|ERR_TLS_|CERT_|UNABLE_TO_|DEPTH_ZERO_|SELF_SIGNED_|HOSTNAME_MISMATCH)/;
const UNTRUSTED_CERTIFICATE = /^(CERT_|UNABLE_TO_|DEPTH_ZERO_|SELF_SIGNED_|HOSTNAME_MISMATCH|ERR_TLS_CERT)/;

/**
 * When a call failed because the connection did (rather than with a status
 * from the service): what happened and a hint, else undefined.
 */
function connectionFailure(err: ConnectError, url: string | undefined): { what: string; hint: string } | undefined {
  // h2c spoken to a TLS port ends in a reset connection or a reset stream, whichever comes first.
  const tls = url?.startsWith("http:") ? "; if the service serves TLS, use an https:// URL" : "";
  const seen = new Set<unknown>();
  for (let e: unknown = err.cause; e instanceof Error && !seen.has(e); e = (e as { cause?: unknown }).cause) {
    seen.add(e);
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code !== "string" || !CONNECTION_FAILURE.test(code)) continue;
    // OpenSSL's messages are long; its short reason says the same.
    const what = (e as { reason?: unknown }).reason;
    const text = typeof what === "string" && what ? what : e.message;
    if (UNTRUSTED_CERTIFICATE.test(code)) return { what: text, hint: "pass --ca with the CA certificate the service's certificate is signed by" };
    if (code === "ERR_SSL_WRONG_VERSION_NUMBER") return { what: text, hint: "the service does not serve TLS there: use an http:// URL" };
    if (/^(ECONNRESET|EPIPE|ERR_HTTP2_)/.test(code)) return { what: text, hint: `check --url or BACKUP_SERVICE_URL${tls}` };
    return { what: text, hint: "check --url or BACKUP_SERVICE_URL" };
  }
  // HTTP/2 itself broke off (connect-node's words for a reset stream).
  if (err.rawMessage.startsWith("http/2 stream closed with error code")) {
    return { what: err.rawMessage, hint: `check --url or BACKUP_SERVICE_URL${tls}` };
  }
  return undefined;
}

/** One line for stderr (without the "backupctl: " prefix) and the exit code, for any failure. */
export function describeFailure(err: unknown, url: string | undefined): { message: string; exitCode: number } {
  if (err instanceof CliError) return { message: oneLine(err.message), exitCode: err.exitCode };
  if (err instanceof ConnectError) {
    const conn = connectionFailure(err, url);
    if (conn) {
      return {
        message: `UNAVAILABLE: connection to the service at ${url ?? "?"} failed: ${oneLine(conn.what)} (hint: ${conn.hint})`,
        exitCode: Exit.UNAVAILABLE,
      };
    }
    const hint =
      err.code === Code.Unauthenticated
        ? " (hint: check --token or BACKUP_TOKEN; mint one with backupctl token --sub NAME)"
        : err.code === Code.PermissionDenied
          ? " (hint: the token's role must be admin or superadmin)"
          : "";
    return { message: `${codeName(err.code)}: ${oneLine(err.rawMessage)}${hint}`, exitCode: exitCodeOf(err.code) };
  }
  if (err instanceof Error) return { message: oneLine(err.message), exitCode: Exit.FAILED };
  return { message: oneLine(String(err)), exitCode: Exit.FAILED };
}
