import { DomainError } from "../errors.js";

/**
 * A restore's refusals when its target changed under it, told the same way wherever they are
 * found: when the restore looks again before the swap, and in the swap's own transaction.
 */

/** The target existed when the restore began and is gone: it is not created again under its name. */
export function targetGone(target: string): DomainError {
  return new DomainError("not_found", `database "${target}" no longer exists; nothing was changed`);
}

/** The target did not exist when the restore began and does now: someone's database, not replaced. */
export function targetCreatedMeanwhile(target: string): DomainError {
  return new DomainError(
    "failed_precondition",
    `database "${target}" was created while the backup was loading; nothing was changed ` +
      "(hint: restore into another target_database, or drop it, or set drop_existing to replace it)",
  );
}
