import { createHash } from "node:crypto";
import os from "node:os";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { createContextValues } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { BackupService, file_backup_v1_backup } from "../gen/backup/v1/backup_pb.js";
import { file_health_v1_health } from "../gen/health/v1/health_pb.js";
import { file_grpc_reflection_v1_reflection } from "../gen/grpc/reflection/v1/reflection_pb.js";
import { file_grpc_reflection_v1alpha_reflection } from "../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { alertCheckJob, watchedIncidentKeys } from "./alerts/checks.js";
import { emailChannel, webhookChannel, type Channel } from "./alerts/channels.js";
import { notificationFor } from "./alerts/notification.js";
import { createNotifier, type Notifier } from "./alerts/notifier.js";
import { loadJwtKeys, type JwtKeys } from "./auth/keys.js";
import { checkServiceFiles, describeTarget, type Config, type PgTarget } from "./config.js";
import { createAuditRepository } from "./db/audit-repository.js";
import { createBackupRepository } from "./db/backup-repository.js";
import { createDb, createPool, ensureDatabase, migrateControlDatabase, settleSslMode } from "./db/client.js";
import { createAdvisoryLocks } from "./db/locks.js";
import { MIGRATIONS_SCHEMA, SERVICE_SCHEMA } from "./db/schema.js";
import { createBackupService } from "./domain/backup-service.js";
import { createDownloadUseCase } from "./domain/download.js";
import { createEventBus, type EventBus } from "./domain/events.js";
import { createRestoreUseCase } from "./domain/restore.js";
import { createRetentionUseCase } from "./domain/retention.js";
import type { Clock } from "./domain/ports.js";
import { createDumpEngine } from "./dump/engine.js";
import { createRestoreEngine } from "./dump/restore-engine.js";
import { resolveTools } from "./dump/tools.js";
import type { Logger } from "./logger.js";
import { createBackupHandlers, type BackupUseCases } from "./rpc/backup-handlers.js";
import { kClientAddress } from "./rpc/context.js";
import { createHealth } from "./rpc/health.js";
import {
  createAuditInterceptor,
  createAuthenticator,
  createAuthInterceptor,
  createErrorInterceptor,
  createTokenGate,
} from "./rpc/interceptors.js";
import { registerReflection } from "./rpc/reflection.js";
import { createLeanGrpcPath, READ_MAX_BYTES } from "./rpc/grpc-lean.js";
import { guardConnectNodeCall, startServer, type RunningServer } from "./rpc/server.js";
import { createLocalStore } from "./storage/local-store.js";
import { loadSanityQueries } from "./sanity.js";
import { createIncidentRepository } from "./db/incident-repository.js";
import { createJobRunRepository } from "./db/job-run-repository.js";
import { createRestoreRunRepository } from "./db/restore-run-repository.js";
import { createHistoryPruner } from "./db/history.js";
import { dailyBackupJob, restoreDrillJob, weeklyCleanupJob } from "./scheduler/jobs.js";
import { createScheduler, STALE_GRACE_MS, type Scheduler } from "./scheduler/scheduler.js";
import { createBackupFreshnessQuery } from "./db/backup-freshness.js";
import { createServiceMetrics } from "./metrics/metrics.js";
import { startMetricsServer } from "./metrics/server.js";
import { createMetricsInterceptor } from "./rpc/metrics-interceptor.js";

export interface App {
  readonly server: RunningServer;
  readonly service: BackupUseCases;
  readonly keys: JwtKeys;
  readonly scheduler: Scheduler;
  /** Outcomes of backups, verifications, restores and cleanups, as they happen. */
  readonly events: EventBus;
  /** Alert delivery (webhook, email); `idle()` settles when queued alerts are out. */
  readonly alerts: Notifier;
  /** Tag in the names of this service's scratch databases (bsvc_restore_<tag>_...). */
  readonly restoreTag: string;
  /** Settles when start-up catch-up of missed slots is done. */
  readonly catchingUp: Promise<unknown>;
  /** Where Prometheus scrapes this app (http://host:port/metrics); null when METRICS_PORT=off. */
  readonly metricsUrl: string | null;
  /** Graceful stop: refuse new work, cancel running work, close everything. */
  close(): Promise<void>;
}

const LOCAL_HOSTS = new Set(["127.0.0.1", "localhost", "::1"]);
/** One spelling per server address: host names are case-blind, and loopback is loopback. */
function serverHost(h: string): string {
  if (h.startsWith("/")) return h; // a socket directory
  const lower = h.toLowerCase();
  return LOCAL_HOSTS.has(lower) ? "localhost" : lower;
}
function sameServer(a: PgTarget, b: PgTarget): boolean {
  return serverHost(a.host) === serverHost(b.host) && a.port === b.port;
}
function sameDatabase(a: PgTarget, b: PgTarget): boolean {
  return sameServer(a, b) && a.database === b.database;
}

/** What a caller may put in place of the real thing: tests move the clock instead of sleeping. */
export interface AppDeps {
  /**
   * The service's time, everywhere it reads one: records, retention, alerts and the scheduler
   * (whose firings come at real cron times, so a clock moved far ahead can find them
   * superseded; tests fire jobs by hand instead).
   */
  clock?: Clock;
}

/** The composition root: the only place that builds adapters. */
export async function createApp(config: Config, logger: Logger, deps: AppDeps = {}): Promise<App> {
  checkServiceFiles(config);
  const tools = await resolveTools(config.pgBinDir);
  const keys = await loadJwtKeys(config);
  if (keys.generated) {
    logger.warn({ source: keys.source }, "no JWT key configured: generated a random HS256 secret (mode 0600); mint tokens with `npm run token`");
  }
  logger.info({ source: keys.source, algorithms: keys.algorithms }, "JWT verification key loaded");

  // libpq's prefer/allow, which node-postgres cannot do, settled once for both servers.
  config = { ...config, control: await settleSslMode(config.control, logger), target: await settleSslMode(config.target, logger) };
  await ensureDatabase(config.control, logger);
  const pool = createPool(config.control, logger);
  // Timers started before the servers: a failed start stops them (its pool is closed).
  const timers: NodeJS.Timeout[] = [];
  try {
    const db = createDb(pool);
    await migrateControlDatabase(pool, db);
    const store = await createLocalStore(config.backupDir);
    const audit = createAuditRepository(db);
    const sharedWithControl = sameDatabase(config.control, config.target);
    if (sharedWithControl) {
      logger.warn("TARGET_DATABASE_URL is the control database: the service's own schemas are left out of its dumps");
    }
    const backupsRepo = createBackupRepository(db);
    const locks = createAdvisoryLocks(config.control, pool, logger);
    const clock: Clock = deps.clock ?? { now: () => new Date() };
    const events = createEventBus(logger);
    const backupService = createBackupService({
      events,
      backups: backupsRepo,
      audit,
      locks,
      engine: createDumpEngine({
        target: config.target,
        tools,
        compressionLevel: config.compressionLevel,
        compressionThreads: config.compressionThreads,
        control: sameServer(config.control, config.target)
          ? { database: config.control.database, schemas: [SERVICE_SCHEMA, MIGRATIONS_SCHEMA] }
          : null,
      }),
      store,
      clock,
      logger,
      options: {
        defaultDatabase: config.target.database,
        // The databases' lock keys: replicas that spell the server differently (localhost,
        // 127.0.0.1) must still take the same lock.
        targetServer: `${serverHost(config.target.host)}:${config.target.port}`,
        format: config.backupFormat,
        compression: config.backupCompression,
        retentionDays: config.retentionDays,
        minFreeBytes: config.minFreeBytes,
      },
    });
    const { core } = backupService;
    const restoreTag = createHash("sha256").update(describeTarget(config.control)).digest("hex").slice(0, 6);
    const restore = createRestoreUseCase({
      backups: backupsRepo,
      runs: createRestoreRunRepository(db),
      replicaId: config.scheduler.replicaId,
      locks,
      store,
      restorer: createRestoreEngine({ target: config.target, tools, jobs: config.restoreJobs }),
      logger,
      core,
      protectedDatabase: sameServer(config.control, config.target) ? config.control.database : null,
      namespace: restoreTag,
      events,
      sanityQueries: await loadSanityQueries(config),
    });
    const retention = createRetentionUseCase({
      backups: backupsRepo,
      store,
      locks,
      clock,
      logger,
      core,
      minKeep: config.retentionMinKeep,
      events,
    });
    const sched = config.scheduler;
    const freshness = createBackupFreshnessQuery(db);
    const alerts = createAlerts(config, logger);
    events.subscribe((event) => {
      const n = notificationFor(event, clock.now());
      if (n) alerts.notify(n);
    });
    const incidents = createIncidentRepository(db);
    const alertCheck = {
      // Without a channel there is nobody to tell: the checks stay off.
      cron: alerts.channels.length > 0 ? config.alerts.checkCron : null,
      offReason: alerts.channels.length > 0 ? undefined : "no alert channel is configured: set ALERT_WEBHOOK_URL or SMTP_URL",
      databases: sched.databases,
      maxBackupAgeMs: config.alerts.maxBackupAgeMs,
      minFreeBytes: config.alerts.minFreeBytes,
      minFreePercent: config.alerts.minFreePercent,
      newestVerifiedCompletion: async (dbs: readonly string[]) =>
        new Map((await freshness()).filter((f) => dbs.includes(f.database)).map((f) => [f.database, f.lastSuccessAt])),
      store,
      diskLocation: config.alerts.diskName ?? `${os.hostname()}:${config.backupDir}`,
      incidents,
      notifier: alerts,
      clock,
    };
    // The open incidents this replica watches, said to be watched at start and at every sweep,
    // whichever replica wins the alert check's slots (see UNWATCHED_AFTER_MS).
    const watchedKeys = sched.enabled && alertCheck.cron !== null ? watchedIncidentKeys(alertCheck) : [];
    const scheduler = createScheduler(
      [
        dailyBackupJob(backupService, {
          cron: sched.dailyBackupCron,
          databases: [...sched.databases],
          retentionDays: config.retentionDays,
        }),
        weeklyCleanupJob(retention, {
          cron: sched.weeklyCleanupCron,
          history:
            config.historyRetentionDays > 0
              ? { pruner: createHistoryPruner(db), days: config.historyRetentionDays, now: () => clock.now() }
              : undefined,
        }),
        restoreDrillJob({
          cron: sched.restoreDrillCron,
          candidates: () => backupsRepo.newestVerifiedPerDatabase(),
          verifyDeep: (id, signal) => backupService.verifyBackup(id, signal, restore.deepChecks, "drill"),
          events,
        }),
        alertCheckJob(alertCheck),
      ],
      {
        enabled: sched.enabled,
        timeZone: sched.timeZone,
        catchUpWindowMs: sched.catchUpWindowMs,
        replicaId: sched.replicaId,
        runs: createJobRunRepository(db),
        locks,
        audit,
        clock,
        logger,
      },
    );
    // Before any work starts (recovery verifies pending backups): every outcome is counted.
    const metrics = config.metrics
      ? createServiceMetrics({
          events,
          freshness,
          diskSpace: () => store.diskSpace(),
          jobs: () => scheduler.status(),
          logger,
        })
      : null;

    const service: BackupUseCases = {
      ...backupService,
      verifyBackup: (id, signal, deep) => backupService.verifyBackup(id, signal, deep ? restore.deepChecks : undefined),
      restoreBackup: restore.restoreBackup,
      ...createDownloadUseCase({ backups: backupsRepo, store, locks, core }),
      ...retention,
      jobStatus: async () => ({ jobs: await scheduler.status(), enabled: sched.enabled, replicaId: sched.replicaId }),
    };
    const recovered = await backupService.recoverInterrupted();
    if (recovered > 0) logger.warn({ recovered }, "backups interrupted by an earlier stop were marked failed");
    // The target may be down; the service still starts (listings, downloads) and retries next start.
    await restore.recoverInterrupted().catch((err: unknown) =>
      logger.warn({ reason: (err as Error).message }, "could not look for databases left by interrupted restores"),
    );
    void backupService.verifyPending();
    await scheduler.recoverStale();
    await incidents.touch(watchedKeys);
    // The same, while the service runs: a backup whose final write failed (the control database
    // dropped) stays IN_PROGRESS, and one whose verification could not run stays COMPLETED,
    // until something looks again; their run locks keep live backups out of it.
    // One sweep at a time, verifications included; shutdown waits for the one running. Each
    // step on its own: one that fails does not keep the others from running.
    let sweeping: Promise<void> | undefined;
    const sweepOnce = (steps: [string, () => Promise<unknown>][]) => {
      if (sweeping) return;
      sweeping = (async () => {
        for (const [what, step] of steps) {
          await step().catch((err: unknown) =>
            logger.warn({ step: what, reason: (err as Error).message }, "recovery sweep step failed; it runs again later"),
          );
        }
      })().finally(() => {
        sweeping = undefined;
      });
    };
    const recoverStale: [string, () => Promise<unknown>] = ["scheduled runs", () => scheduler.recoverStale()];
    const sweep =
      config.recoveryIntervalMs > 0
        ? setInterval(
            () =>
              sweepOnce([
                // First: a long backlog of verifications must not hold it back.
                ["watched incidents", () => incidents.touch(watchedKeys)],
                [
                  "backups",
                  async () => {
                    const n = await backupService.recoverInterrupted();
                    if (n > 0) logger.warn({ recovered: n }, "backups left unfinished were marked failed");
                  },
                ],
                ["verifications", () => backupService.verifyPending()],
                // Scratch and retired databases a restore or drill could not drop when it ended.
                ["restores", () => restore.recoverInterrupted()],
                recoverStale,
              ]),
            config.recoveryIntervalMs,
          )
        : undefined;
    // A run claimed just before a crash is spared by the start-up recovery (STALE_GRACE_MS):
    // it is looked at again once that has passed, sweep or no sweep.
    const staleAgain = setTimeout(() => sweepOnce([recoverStale]), STALE_GRACE_MS + 1000);
    staleAgain.unref();
    timers.push(staleAgain, ...(sweep ? [sweep] : []));
    sweep?.unref();

    const health = createHealth([BackupService.typeName]);
    const backupImpl = createBackupHandlers(service);
    const authenticate = createAuthenticator(keys, config.jwt);
    const interceptors = [
      // First, so that denied calls are counted too.
      ...(metrics ? [createMetricsInterceptor(metrics.observeRpc)] : []),
      createAuthInterceptor(authenticate, audit, logger),
      createAuditInterceptor(audit, logger),
      createErrorInterceptor(logger),
    ];
    // A call without a valid admin token is refused before its body is read, on both paths (the token checked once).
    const requestGate = createTokenGate(interceptors, authenticate);
    const contextValues = (req: { socket?: { remoteAddress?: string } }) =>
      createContextValues().set(kClientAddress, req.socket?.remoteAddress);
    const connectHandler = connectNodeAdapter({
      contextValues,
      readMaxBytes: READ_MAX_BYTES,
      routes(router) {
        health.register(router);
        registerReflection(
          router,
          [file_backup_v1_backup, file_health_v1_health, file_grpc_reflection_v1_reflection, file_grpc_reflection_v1alpha_reflection],
          [
            BackupService.typeName,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
          ],
        );
        router.service(BackupService, backupImpl, {
          // Backup chunks are already compressed: gzip would only cost CPU (about 5x slower
          // downloads, see STACK-NOTES), and the other responses are small.
          compressMinBytes: Number.MAX_SAFE_INTEGER,
          interceptors,
          requestGate,
        });
      },
    });
    // Unary and server-streaming gRPC calls to BackupService (grpc-js, grpcurl) take the lean path; the rest, connect-node's.
    const leanGrpc = createLeanGrpcPath({ service: BackupService, impl: backupImpl, interceptors, contextValues, requestGate });
    const handler = (req: Http2ServerRequest, res: Http2ServerResponse) => {
      if (leanGrpc.handle(req, res)) return;
      guardConnectNodeCall(req, res);
      connectHandler(req, res);
    };
    const server = await startServer({
      host: config.grpcHost,
      port: config.grpcPort,
      handler,
      tls: config.tlsCertFile && config.tlsKeyFile ? { certFile: config.tlsCertFile, keyFile: config.tlsKeyFile } : undefined,
    });
    logger.info(
      { url: server.url, target: describeTarget(config.target), control: describeTarget(config.control), backupDir: config.backupDir },
      "backup service listening",
    );
    const metricsServer =
      metrics && config.metrics
        ? await startMetricsServer({ ...config.metrics, registry: metrics.registry, logger }).catch(async (err: unknown) => {
            await server.close(0);
            throw err;
          })
        : null;
    if (metricsServer) logger.info({ url: metricsServer.url }, "metrics listening");

    scheduler.start();
    // Catch-up runs in the background: the service answers calls meanwhile.
    const catchingUp = scheduler.catchUp().catch((err: unknown) => logger.error({ err }, "catch-up failed"));

    let closing: Promise<void> | undefined;
    return {
      server,
      service,
      keys,
      scheduler,
      events,
      alerts,
      catchingUp,
      restoreTag,
      metricsUrl: metricsServer?.url ?? null,
      close() {
        closing ??= (async () => {
          health.setServing(false);
          clearInterval(sweep);
          clearTimeout(staleAgain);
          const serverClosed = server.close(config.shutdownGraceMs);
          const metricsClosed = metricsServer?.close();
          // Both at once: the scheduler first marks its jobs stopped (so a job cut short is
          // recorded INTERRUPTED), then the service cancels every backup and verification, which
          // a scheduled backup's job would otherwise wait for to the end.
          const schedulerStopped = scheduler.stop();
          const backupsStopped = backupService.shutdown();
          await schedulerStopped;
          await backupsStopped;
          await sweeping;
          // Outcomes of the work just stopped still go out, within the grace period.
          await alerts.close(Math.min(config.shutdownGraceMs, 5000));
          await serverClosed;
          await metricsClosed;
          metrics?.close();
          await pool.end();
          logger.info("backup service stopped");
        })();
        return closing;
      },
    };
  } catch (err) {
    for (const t of timers) clearTimeout(t);
    await pool.end().catch(() => undefined);
    throw err;
  }
}

function createAlerts(config: Config, logger: Logger): Notifier {
  const { alerts } = config;
  const instance = config.scheduler.replicaId;
  const channels: Channel[] = [];
  if (alerts.webhook) {
    channels.push(webhookChannel({ ...alerts.webhook, instance, timeoutMs: alerts.timeoutMs }));
  }
  if (alerts.email) {
    channels.push(emailChannel({ ...alerts.email, instance, timeoutMs: alerts.timeoutMs }));
  }
  const notifier = createNotifier({ channels, retries: alerts.retries, retryDelayMs: alerts.retryDelayMs, logger });
  if (channels.length === 0) {
    logger.warn("no alert channel configured (ALERT_WEBHOOK_URL, SMTP_URL): failures are only logged");
  } else {
    logger.info({ channels: notifier.channels }, "alerts go to these channels");
  }
  return notifier;
}
