import type { BlobStore, Clock, IncidentRepository } from "../domain/ports.js";
import type { JobSpec } from "../scheduler/scheduler.js";
import { formatBytes } from "../format.js";
import { formatAge, type Notification } from "./notification.js";
import type { Notifier } from "./notifier.js";

export interface AlertCheckOptions {
  cron: string | null;
  /** Why the checks are off, when they are off for want of a channel. */
  offReason?: string;
  /** The databases that must have a recent VERIFIED backup (the daily backup's). */
  databases: readonly string[];
  /** null: the dead-man's switch is off. */
  maxBackupAgeMs: number | null;
  minFreeBytes: number;
  minFreePercent: number;
  newestVerifiedCompletion(databases: readonly string[]): Promise<Map<string, Date>>;
  store: Pick<BlobStore, "diskSpace">;
  /** Names the backup disk in its incident key: replicas that share it share the incident. */
  diskLocation: string;
  incidents: IncidentRepository;
  notifier: Notifier;
  clock: Clock;
}

/** An open disk incident is resolved only once free space is this factor of each limit (see checkDisk). */
export const DISK_CLEAR_MARGIN = 1.1;

const BACKUP_AGE = "backup-age:";
const DISK_SPACE = "disk-space:";

export const backupAgeIncident = (database: string) => `${BACKUP_AGE}${database}`;

/** The database a backup-age incident's key names (undefined: another kind of incident). */
const databaseOf = (key: string) => (key.startsWith(BACKUP_AGE) ? key.slice(BACKUP_AGE.length) : undefined);

/**
 * An open incident that no replica has said it watches for this long is closed: no replica looks
 * at it any more (its database left BACKUP_DATABASES, its disk was renamed, or its check was
 * switched off). Every replica that runs the alert check says so for the incidents it watches at
 * each check it runs and at each recovery sweep (watchedIncidentKeys, IncidentRepository.touch),
 * whichever replica wins the check's slots: well within this.
 */
export const UNWATCHED_AFTER_MS = 24 * 3600_000;

export const diskIncidentKey = (location: string) => `${DISK_SPACE}${location}`;

/** The incidents a replica with these settings watches (its checks open and close them). */
export function watchedIncidentKeys(
  opts: Pick<AlertCheckOptions, "databases" | "maxBackupAgeMs" | "minFreeBytes" | "minFreePercent" | "diskLocation">,
): string[] {
  return [
    ...(opts.maxBackupAgeMs === null ? [] : opts.databases.map(backupAgeIncident)),
    ...(opts.minFreeBytes > 0 || opts.minFreePercent > 0 ? [diskIncidentKey(opts.diskLocation)] : []),
  ];
}

/**
 * alert-check: the dead-man's switch (a database whose newest VERIFIED backup
 * is older than the limit, or that has none) and free space in BACKUP_DIR.
 * Each condition is an incident: announced once when it starts, once when it
 * ends, and not at every check in between, whichever replica runs the check.
 */
export function alertCheckJob(opts: AlertCheckOptions): JobSpec {
  const { incidents, notifier, clock } = opts;
  const diskIncident = diskIncidentKey(opts.diskLocation);

  /** Opens the incident (if new) and announces it once, when it is due. */
  async function raise(
    key: string,
    n: Notification,
    signal: AbortSignal,
    isDue: (openedAt: Date) => boolean = () => true,
  ): Promise<"alerted" | "open" | "pending" | "undelivered"> {
    const incident = await incidents.open(key, n.title);
    if (incident.notifiedAt !== null) return "open";
    if (!isDue(incident.openedAt)) return "pending";
    // Marked only once a channel took it: if none did, the next check sends it again. (Checks
    // never overlap: the job runs under its lock, so two replicas cannot both send it.)
    // A job being stopped does not wait out a hanging channel's retries (shutdown would): the
    // delivery goes on in the background, bounded by the notifier's close, and an alert not
    // marked sent is sent again by the next check.
    if (!(await untilAborted(notifier.deliver(n), signal))) return "undelivered";
    signal.throwIfAborted();
    await incidents.markNotified(incident.id, n.title);
    return "alerted";
  }

  /**
   * Closes the incident, announcing it if its alert went out. Closed only once a channel took
   * the notice: if none did, it stays open and the next check sends the notice again (as an
   * alert is sent again), so on-call never misses the end of what they were told began.
   * Returns whether it closed one.
   */
  async function clear(
    key: string,
    n: Omit<Notification, "severity" | "body"> & { body: (openedAt: Date) => string },
    signal: AbortSignal,
  ) {
    const incident = (await incidents.listOpen()).find((i) => i.key === key);
    if (!incident) return false;
    if (incident.notifiedAt !== null && notifier.channels.length > 0) {
      const notice: Notification = { ...n, severity: "resolved", body: n.body(incident.openedAt) };
      if (!(await untilAborted(notifier.deliver(notice), signal))) return false;
    }
    await incidents.resolve(key);
    return true;
  }

  function clearBackupAge(database: string, last: Date, age: number, now: Date, signal: AbortSignal) {
    return clear(backupAgeIncident(database), {
      kind: "backup_overdue",
      title: `"${database}" has a verified backup again`,
      body: (openedAt) =>
        `The newest VERIFIED backup of "${database}" completed ${last.toISOString()} (${formatAge(age)} ago); ` +
        `the alert raised for it (first seen ${openedAt.toISOString()}) is resolved.`,
      database,
      at: now,
    }, signal);
  }

  async function checkBackupAge(now: Date, maxAgeMs: number, signal: AbortSignal) {
    // Databases only other replicas watch (their open incidents, said to be watched within the
    // day) are resolved here too once they have a recent verified backup: the replica that
    // raised one may seldom win a check's slot. Only the replicas that watch one raise it.
    const others = (await incidents.listOpen())
      .filter((i) => now.getTime() - i.lastSeenAt.getTime() <= UNWATCHED_AFTER_MS)
      .map((i) => databaseOf(i.key))
      .filter((d): d is string => d !== undefined && !opts.databases.includes(d));
    const newest = await opts.newestVerifiedCompletion([...opts.databases, ...others]);
    for (const database of others) {
      signal.throwIfAborted();
      const last = newest.get(database) ?? null;
      const age = last ? now.getTime() - last.getTime() : null;
      if (age !== null && age <= maxAgeMs) await clearBackupAge(database, last!, age, now, signal);
    }
    const overdue: { database: string; newest: string | null; state: string }[] = [];
    for (const database of opts.databases) {
      signal.throwIfAborted();
      const key = backupAgeIncident(database);
      const last = newest.get(database) ?? null;
      const age = last ? now.getTime() - last.getTime() : null;
      if (age !== null && age <= maxAgeMs) {
        await clearBackupAge(database, last!, age, now, signal);
        continue;
      }
      const limit = formatAge(maxAgeMs);
      // A database never backed up is given the same time from when a check first saw it.
      const isDue = (openedAt: Date) => last !== null || now.getTime() - openedAt.getTime() > maxAgeMs;
      const state = await raise(key, {
        kind: "backup_overdue",
        severity: "failure",
        title: last
          ? `No verified backup of "${database}" for ${formatAge(age!)}`
          : `No verified backup of "${database}" at all`,
        body:
          (last
            ? `The newest VERIFIED backup of "${database}" completed ${last.toISOString()}, ${formatAge(age!)} ago (limit ${limit}, ALERT_MAX_BACKUP_AGE).`
            : `There is no VERIFIED backup of "${database}", and there has been none for more than ${limit} (ALERT_MAX_BACKUP_AGE).`) +
          "\nCheck the daily-backup job (backupctl jobs) and recent failures (backupctl list --status failed); " +
          "take one now with: backupctl create --database " + database,
        database,
        at: now,
      }, signal, isDue);
      overdue.push({ database, newest: last?.toISOString() ?? null, state });
    }
    return overdue;
  }

  async function checkDisk(now: Date, signal: AbortSignal) {
    const { freeBytes, totalBytes } = await opts.store.diskSpace();
    const percent = totalBytes > 0 ? (freeBytes / totalBytes) * 100 : 100;
    const low =
      (opts.minFreeBytes > 0 && freeBytes < opts.minFreeBytes) || (opts.minFreePercent > 0 && percent < opts.minFreePercent);
    // Once raised, the incident ends only when free space is clear of each limit by a margin
    // (10% of the limit, at most half of what is left above it): a disk that hovers at the limit
    // is announced once, not low and fine at every other check. In between, nothing is sent.
    const clearOf = (limit: number, whole: number) => limit + Math.min(limit * (DISK_CLEAR_MARGIN - 1), Math.max(whole - limit, 0) / 2);
    const clearOfLimits =
      (opts.minFreeBytes === 0 || freeBytes >= clearOf(opts.minFreeBytes, totalBytes)) &&
      (opts.minFreePercent === 0 || percent >= clearOf(opts.minFreePercent, 100));
    const disk = { freeBytes, totalBytes, freePercent: Math.round(percent * 10) / 10, low, state: "ok" };
    const margins = [
      opts.minFreeBytes > 0 ? formatBytes(clearOf(opts.minFreeBytes, totalBytes) - opts.minFreeBytes) : null,
      opts.minFreePercent > 0 ? `${Math.round((clearOf(opts.minFreePercent, 100) - opts.minFreePercent) * 10) / 10} points` : null,
    ]
      .filter(Boolean)
      .join(" and ");
    const limits = [
      opts.minFreeBytes > 0 ? `ALERT_MIN_FREE_BYTES ${formatBytes(opts.minFreeBytes)}` : null,
      opts.minFreePercent > 0 ? `ALERT_MIN_FREE_PERCENT ${opts.minFreePercent}%` : null,
    ]
      .filter(Boolean)
      .join(", ");
    const open = (await incidents.listOpen()).some((i) => i.key === diskIncident);
    if (!low && open && !clearOfLimits) {
      disk.state = "recovering";
    } else if (low) {
      disk.state = await raise(diskIncident, {
        kind: "disk_low",
        severity: "failure",
        title: `Backup disk is low on space: ${formatBytes(freeBytes)} free (${disk.freePercent}%)`,
        body:
          `The backup directory's file system has ${formatBytes(freeBytes)} free of ${formatBytes(totalBytes)} ` +
          `(${disk.freePercent}%), below the limit (${limits}).\n` +
          "Backups refuse to start when they would not fit. Free space: backupctl cleanup --dry-run shows what retention " +
          "would remove; backupctl delete --hard <id> removes a backup and its file; or move BACKUP_DIR to a larger disk.",
        at: now,
      }, signal);
    } else {
      await clear(diskIncident, {
        kind: "disk_low",
        title: `Backup disk has enough space again: ${formatBytes(freeBytes)} free (${disk.freePercent}%)`,
        body: (openedAt) =>
          `Free space is back above the limit (${limits}), clear of it by ${margins}; ` +
          `the alert raised ${openedAt.toISOString()} is resolved.`,
        at: now,
      }, signal);
    }
    return disk;
  }

  /** Closes the open incidents that this replica does not watch and that no replica has said it watches for a day. */
  async function closeUnwatched(now: Date, checked: Set<string>, signal: AbortSignal) {
    const closed: string[] = [];
    for (const incident of await incidents.listOpen()) {
      signal.throwIfAborted();
      if (checked.has(incident.key) || now.getTime() - incident.lastSeenAt.getTime() <= UNWATCHED_AFTER_MS) continue;
      const database = databaseOf(incident.key);
      const what =
        database !== undefined
          ? `"${database}"`
          : incident.key.startsWith(DISK_SPACE)
            ? `the disk ${incident.key.slice(DISK_SPACE.length)}`
            : incident.key;
      const done = await clear(incident.key, {
        kind: database !== undefined ? "backup_overdue" : "disk_low",
        title: `No longer watched: ${what}`,
        body: (openedAt) =>
          `No replica has watched ${what} since ${incident.lastSeenAt.toISOString()} ` +
          (database !== undefined ? "(it is not in any replica's BACKUP_DATABASES, or ALERT_MAX_BACKUP_AGE is off)" : "(ALERT_DISK_NAME or BACKUP_DIR changed, or the disk check is off)") +
          `; the alert raised for it ${openedAt.toISOString()} is closed without being resolved.`,
        ...(database !== undefined ? { database } : {}),
        at: now,
      }, signal);
      if (done) closed.push(incident.key);
    }
    return closed;
  }

  return {
    name: "alert-check",
    cron: opts.cron,
    setting: "ALERT_CHECK_CRON",
    offReason: opts.offReason,
    async run({ signal }) {
      const now = clock.now();
      const overdue = opts.maxBackupAgeMs === null ? [] : await checkBackupAge(now, opts.maxBackupAgeMs, signal);
      signal.throwIfAborted();
      const watched = watchedIncidentKeys(opts);
      const disk = watched.includes(diskIncident) ? await checkDisk(now, signal) : null;
      await incidents.touch(watched);
      const unwatched = await closeUnwatched(now, new Set(watched), signal);
      const problems = [
        ...overdue.filter((o) => o.state !== "pending").map((o) => `no recent verified backup of "${o.database}"`),
        ...(disk?.low ? ["backup disk low on space"] : []),
      ];
      return {
        // The job did its work; what it found is in the details (and the alerts).
        outcome: "SUCCEEDED",
        error: problems.length > 0 ? problems.join("; ") : null,
        details: { overdue, disk, ...(unwatched.length > 0 ? { closedUnwatched: unwatched } : {}) },
      };
    },
  };
}

/** `p`'s result, or false as soon as `signal` aborts (p goes on unwatched). */
function untilAborted(p: Promise<boolean>, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onAbort = () => resolve(false);
    signal.addEventListener("abort", onAbort, { once: true });
    void p.then(
      (v) => resolve(v),
      () => resolve(false),
    ).finally(() => signal.removeEventListener("abort", onAbort));
  });
}
