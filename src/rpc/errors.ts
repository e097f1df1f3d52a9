import { Code, ConnectError } from "@connectrpc/connect";
import { DomainError, type ErrorKind } from "../errors.js";
import type { Logger } from "../logger.js";

/** The one table from domain failures to gRPC status codes. */
const CODES: Record<ErrorKind, Code> = {
  invalid_argument: Code.InvalidArgument,
  not_found: Code.NotFound,
  failed_precondition: Code.FailedPrecondition,
  unavailable: Code.Unavailable,
  busy: Code.Aborted,
  out_of_range: Code.OutOfRange,
  resource_exhausted: Code.ResourceExhausted,
  cancelled: Code.Canceled,
  deadline_exceeded: Code.DeadlineExceeded,
  dump_failed: Code.Internal,
  corrupted: Code.DataLoss,
};

/**
 * Domain errors keep their message (written to be shown); anything else is
 * logged once here and leaves as a generic `internal` error, since driver
 * errors can carry SQL and parameters.
 */
export function toConnectError(err: unknown, logger: Logger, method: string): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof DomainError) {
    return new ConnectError(err.message, CODES[err.kind], undefined, undefined, err);
  }
  logger.error({ err, method }, "unexpected error");
  return new ConnectError("internal error (details are in the service log)", Code.Internal, undefined, undefined, err);
}

/** gRPC's spelling of a code: "PERMISSION_DENIED". */
export function codeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}
