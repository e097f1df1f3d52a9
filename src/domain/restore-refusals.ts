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

/**
 * Sessions in the target that the service's role may not end (PostgreSQL's own rule: only a
 * superuser ends a superuser's session; another role's needs its privileges or pg_signal_backend).
 * Left there, they would make the swap's rename fail, so the restore stops first.
 */
export function sessionsNotEndable(target: string, roles: readonly string[]): DomainError {
  const who = roles.map((r) => `"${r}"`).join(", ");
  return new DomainError(
    "failed_precondition",
    `database "${target}" has sessions of ${roles.length === 1 ? "role" : "roles"} ${who} that the service's role ` +
      "may not end; nothing was changed (hint: close them; only a superuser may end a superuser's sessions, " +
      "and another role's need its privileges or membership in pg_signal_backend)",
  );
}
