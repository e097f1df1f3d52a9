import schedule from "node-schedule";
import type { AuditRepository, Clock, JobOutcome, JobRun, JobRunRepository, LockManager } from "../domain/ports.js";
import { createStopper } from "../domain/stopper.js";
import { DomainError } from "../errors.js";
import type { Logger } from "../logger.js";
import { formatInZone, nextSlot, previousSlot } from "./cron.js";

export interface JobResult {
  outcome: "SUCCEEDED" | "FAILED";
  backupId?: string | null;
  error?: string | null;
  details?: Record<string, unknown>;
}

/** A job the scheduler runs: its cron expression (null: switched off) and its work. */
export interface JobSpec {
  name: string;
  cron: string | null;
  /** The setting that holds its cron expression, for log messages. */
  setting: string;
  /** Why it is off when its cron is null for a reason other than its setting. */
  offReason?: string;
  run(ctx: { slot: Date; signal: AbortSignal }): Promise<JobResult>;
}

export interface SchedulerOptions {
  enabled: boolean;
  timeZone: string;
  catchUpWindowMs: number;
  replicaId: string;
  runs: JobRunRepository;
  locks: LockManager;
  audit: AuditRepository;
  clock: Clock;
  logger: Logger;
}

/** What one firing came to on this replica. */
export type FireOutcome = "ran" | "taken" | "skipped" | "superseded" | "disabled" | "stopped";

export interface JobStatus {
  name: string;
  cron: string;
  timeZone: string;
  enabled: boolean;
  running: boolean;
  nextRunAt: Date | null;
  lastRun: JobRun | null;
}

export type Scheduler = ReturnType<typeof createScheduler>;

/** How long a claimed run may go without its job lock before recovery may call it dead. */
export const STALE_GRACE_MS = 60_000;

const STOPPED = new DomainError("unavailable", "interrupted by shutdown");

/**
 * node-schedule fires the jobs; PostgreSQL decides who runs each firing.
 * Every firing is the slot (scheduled time) it stands for, claimed once
 * across replicas in `job_runs`; a job's run holds an advisory lock so that
 * runs never overlap; missed and jumped-over slots run at most once.
 */
export function createScheduler(jobs: JobSpec[], opts: SchedulerOptions) {
  const { runs, locks, clock, logger, timeZone: tz } = opts;
  const byName = new Map(jobs.map((j) => [j.name, j]));
  const handles: schedule.Job[] = [];
  const active = new Map<Promise<void>, AbortController>();
  const inflight = new Set<Promise<FireOutcome>>();
  let stopped = false;

  const jobLockKey = (name: string) => `job:${name}`;
  const isOn = (j: JobSpec) => opts.enabled && j.cron !== null;

  function audit(name: string, outcome: string, backupId: string | null, message: string | null) {
    return opts.audit
      .record({
        actor: "scheduler",
        actorUsername: opts.replicaId,
        action: `job:${name}`,
        backupId,
        outcome,
        clientAddress: null,
        message,
      })
      .catch((err: unknown) => logger.error({ err }, "could not write audit event"));
  }

  async function runClaimed(job: JobSpec, claim: JobRun): Promise<FireOutcome> {
    const controller = new AbortController();
    let lock;
    try {
      lock = await locks.tryAcquire(jobLockKey(job.name));
    } catch (err) {
      // The claim must not stay RUNNING for a run that never started.
      await runs.finish(claim.id, { outcome: "FAILED", error: "could not take the job's lock" }).catch(() => undefined);
      throw err;
    }
    if (lock && stopped) {
      await lock.release();
      await runs.finish(claim.id, { outcome: "INTERRUPTED", error: "interrupted by shutdown before it started" });
      return "stopped";
    }
    if (!lock) {
      const others = (await runs.listRunning(job.name)).filter((r) => r.id !== claim.id);
      const why = `the previous run of ${job.name}${others[0] ? ` (slot ${others[0].slot.toISOString()})` : ""} is still running`;
      await runs.finish(claim.id, { outcome: "SKIPPED", error: why });
      logger.warn({ job: job.name, slot: claim.slot, reason: why }, "scheduled run skipped");
      return "skipped";
    }
    const stopper = createStopper(controller.signal, lock.lost);
    const work = (async () => {
      logger.info({ job: job.name, slot: claim.slot, replica: opts.replicaId }, "scheduled run started");
      let outcome: JobOutcome;
      try {
        const r = await job.run({ slot: claim.slot, signal: stopper.signal });
        outcome = r.outcome;
        await runs.finish(claim.id, {
          outcome,
          backupId: r.backupId ?? null,
          error: r.error ?? null,
          details: r.details,
        });
        await audit(job.name, outcome === "SUCCEEDED" ? "OK" : "FAILED", r.backupId ?? null, r.error ?? null);
        logger[outcome === "SUCCEEDED" ? "info" : "warn"](
          { job: job.name, slot: claim.slot, outcome, error: r.error },
          "scheduled run finished",
        );
      } catch (err) {
        const interrupted = controller.signal.aborted || lock.lost.aborted;
        outcome = interrupted ? "INTERRUPTED" : "FAILED";
        const message = err instanceof DomainError ? err.message : "internal error (details are in the service log)";
        if (!interrupted) logger.error({ err, job: job.name }, "scheduled run failed");
        await runs.finish(claim.id, { outcome, error: message });
        await audit(job.name, outcome, null, message);
      } finally {
        stopper.dispose();
        await lock.release();
      }
    })();
    active.set(work, controller);
    if (stopped) controller.abort(STOPPED); // stop() ran between our check and here
    try {
      await work;
    } finally {
      active.delete(work);
    }
    return "ran";
  }

  /**
   * Handles one firing of `name` for `slot`. Called by node-schedule, by
   * start-up catch-up, and directly by tests (no test waits for a real cron time).
   */
  function fire(name: string, slot: Date): Promise<FireOutcome> {
    // Every firing is tracked from its start, so that stop() waits for those still claiming.
    const p = fireOnce(name, slot);
    inflight.add(p);
    void p.then(
      () => inflight.delete(p),
      () => inflight.delete(p),
    );
    return p;
  }

  async function fireOnce(name: string, slot: Date): Promise<FireOutcome> {
    const job = byName.get(name);
    if (!job) throw new Error(`unknown job ${name}`);
    if (stopped) return "stopped";
    if (!isOn(job)) return "disabled";
    // After a clock jump or a stall, only the newest passed slot runs: never a burst.
    const latest = previousSlot(job.cron!, tz, clock.now());
    if (latest && latest.getTime() > slot.getTime()) {
      logger.warn({ job: name, slot, latest }, "firing superseded by a later slot; not run");
      return "superseded";
    }
    const claim = await runs.claim(name, slot, opts.replicaId);
    if (!claim) {
      const owner = await runs.findClaim(name, slot);
      const why = `taken by replica ${owner?.replicaId ?? "unknown"}`;
      await runs.note(name, slot, opts.replicaId, "TAKEN_ELSEWHERE", why);
      logger.info({ job: name, slot, owner: owner?.replicaId }, "slot already taken by another replica");
      return "taken";
    }
    return runClaimed(job, claim);
  }

  return {
    fire,

    /**
     * Marks RUNNING runs whose job lock nobody holds (their replica died) as INTERRUPTED.
     * A run is claimed a moment before its replica takes the lock (runClaimed), so a run
     * claimed in the last STALE_GRACE_MS is left alone: it may be another replica's, just
     * starting. Runs at start and at every recovery sweep.
     */
    async recoverStale(): Promise<void> {
      for (const job of jobs) {
        if (await locks.isHeld(jobLockKey(job.name))) continue;
        for (const run of await runs.interruptStale(job.name, STALE_GRACE_MS, "the replica running it stopped")) {
          logger.warn({ job: job.name, slot: run.slot, replica: run.replicaId }, "marked a dead scheduled run interrupted");
        }
      }
    },

    /**
     * For each job whose most recent slot passed unclaimed less than the
     * catch-up window ago, runs that one slot. Resolves when they are done.
     */
    async catchUp(): Promise<void> {
      const now = clock.now();
      const pending: Promise<unknown>[] = [];
      for (const job of jobs) {
        if (!isOn(job)) continue;
        const slot = previousSlot(job.cron!, tz, now);
        if (!slot) continue;
        const age = now.getTime() - slot.getTime();
        if (age > opts.catchUpWindowMs) continue;
        if (await runs.findClaim(job.name, slot)) continue;
        logger.warn({ job: job.name, slot, ageMs: age }, "running a missed slot (catch-up)");
        pending.push(fire(job.name, slot));
      }
      await Promise.allSettled(pending);
    },

    /** Schedules every job with node-schedule and logs, in words, what will run when. */
    start(): void {
      if (!opts.enabled) {
        logger.info("scheduler disabled (SCHEDULER_ENABLED=false): this replica runs no jobs");
        return;
      }
      for (const job of jobs) {
        if (job.cron === null) {
          logger.info(`${job.name} is off (${job.offReason ?? `${job.setting}=off`})`);
          continue;
        }
        const handle = schedule.scheduleJob(job.name, { rule: job.cron, tz }, (fireDate: Date) => {
          fire(job.name, fireDate).catch((err: unknown) => logger.error({ err, job: job.name }, "scheduled firing failed"));
        });
        if (!handle) throw new Error(`${job.setting}: node-schedule refused the rule`);
        handles.push(handle);
        const next = nextSlot(job.cron, tz, clock.now());
        logger.info(`${job.name} scheduled: ${job.cron} ${tz} (next ${formatInZone(next, tz)})`);
      }
    },

    async status(): Promise<JobStatus[]> {
      const now = clock.now();
      return Promise.all(
        jobs.map(async (job) => ({
          name: job.name,
          cron: job.cron ?? "off",
          timeZone: tz,
          enabled: isOn(job),
          running: await locks.isHeld(jobLockKey(job.name)),
          nextRunAt: isOn(job) ? nextSlot(job.cron!, tz, now) : null,
          lastRun: await runs.lastRun(job.name),
        })),
      );
    },

    /** Cancels future firings, then stops running jobs (recorded INTERRUPTED) and waits for them. */
    async stop(): Promise<void> {
      stopped = true;
      for (const h of handles) h.cancel();
      for (const c of active.values()) c.abort(STOPPED);
      await Promise.allSettled([...active.keys(), ...inflight]);
    },
  };
}
