/**
 * The small interfaces the domain talks to. Adapters in src/db, src/dump and
 * src/storage implement them; src/app.ts wires them together.
 */
import type {
  ArchiveFormat,
  BackupPatch,
  BackupRecord,
  BackupStatus,
  BackupType,
  CompressionKind,
  NewBackupRecord,
  TableRowCounts,
} from "./backup.js";

export interface Page<T> {
  items: T[];
  total: number;
}

export interface BackupFilter {
  status?: BackupStatus;
  backupType?: BackupType;
  database?: string;
  includeDeleted: boolean;
}

export interface BackupStats {
  total: number;
  successful: number;
  failed: number;
  latest: BackupRecord | null;
  totalSizeBytes: number;
  averageCompression: number | null;
}

/** The backup history, kept in the control database. */
export interface BackupRepository {
  /**
   * The stored record, or null when another record already has its file name. Listings and
   * statistics show it to calls made after this returns, unless `intermediate` says that
   * whoever asked for it is answered only after a later write to the record (a synchronous
   * backup's final state): then they show it at their next re-read, as for update().
   */
  insert(record: NewBackupRecord, opts?: { intermediate?: boolean }): Promise<BackupRecord | null>;
  /**
   * Updates a record and returns it as stored; throws not_found if it is gone. Listings and
   * statistics show the change to calls made after it returns, unless `intermediate` says it
   * is a step of work still running (facts gathered before a dump, a dump done but not yet
   * verified), which they show at their next re-read: within one query of the next call.
   */
  update(id: string, patch: BackupPatch, opts?: { intermediate?: boolean }): Promise<BackupRecord>;
  findById(id: string): Promise<BackupRecord | null>;
  list(filter: BackupFilter, offset: number, limit: number): Promise<Page<BackupRecord>>;
  stats(database?: string): Promise<BackupStats>;
  findInProgress(database?: string): Promise<BackupRecord[]>;
  latestSuccessful(database: string): Promise<BackupRecord | null>;
  /**
   * Backups whose expiry is at or before `now`, oldest first: those not
   * deleted, and deleted ones whose file has not been removed yet.
   */
  listExpired(now: Date): Promise<BackupRecord[]>;
  /** Ids of the newest `n` VERIFIED, not deleted backups of every database (or of `database` alone). */
  newestVerifiedIds(n: number, database?: string): Promise<Set<string>>;
  /** Removes a record for good. */
  remove(id: string): Promise<void>;
  /** The newest VERIFIED, not deleted backup of every database (pre-restore safety backups aside). */
  newestVerifiedPerDatabase(): Promise<BackupRecord[]>;
  /**
   * For every database with backups (or just `database`): its newest
   * restore-verified backup, if any.
   */
  restoreVerification(database?: string): Promise<{ database: string; backupId: string | null; at: Date | null }[]>;
}

export interface AuditEvent {
  id: number;
  occurredAt: Date;
  actor: string | null;
  actorUsername: string | null;
  action: string;
  backupId: string | null;
  outcome: string;
  clientAddress: string | null;
  message: string | null;
}

export type NewAuditEvent = Omit<AuditEvent, "id" | "occurredAt">;

export interface AuditFilter {
  backupId?: string;
  actor?: string;
  action?: string;
}

export interface AuditRepository {
  record(event: NewAuditEvent): Promise<void>;
  list(filter: AuditFilter, offset: number, limit: number): Promise<Page<AuditEvent>>;
}

export interface Lock {
  /** Aborts if the lock is lost without being released (its connection dropped). */
  readonly lost: AbortSignal;
  release(): Promise<void>;
}

/** Locks shared by every replica (PostgreSQL advisory locks). */
export interface LockManager {
  /** The lock, or null when another holder has it. Never waits. */
  tryAcquire(key: string): Promise<Lock | null>;
  /** A shared hold on the key: many at once, but never with an exclusive holder. */
  tryAcquireShared(key: string): Promise<Lock | null>;
  /** Whether anyone holds the key now (a snapshot, for reporting only). */
  isHeld(key: string): Promise<boolean>;
}

/** Where backup files live. Files are written as `<name>.partial` first. */
export interface BlobStore {
  partialPath(name: string): string;
  path(name: string): string;
  stat(name: string): Promise<{ size: number } | null>;
  /** SHA-256 of the file; `onBytes` sees each chunk's size as it is read. */
  sha256(name: string, signal?: AbortSignal, onBytes?: (n: number) => void): Promise<string>;
  /** fsyncs `<name>.partial`, renames it to `<name>` and fsyncs the directory. */
  commit(name: string): Promise<void>;
  discardPartial(name: string): Promise<void>;
  remove(name: string): Promise<void>;
  freeBytes(): Promise<number>;
  /** Space on the file system that holds the backups (free: what an unprivileged writer may use). */
  diskSpace(): Promise<{ freeBytes: number; totalBytes: number }>;
  /** Names (without `.partial`) of the partial files present. */
  listPartials(): Promise<string[]>;
  /** The file's bytes from `offset` on, in chunks of at most 1 MiB (see FileChunk). */
  read(name: string, offset: number, signal?: AbortSignal): AsyncIterable<FileChunk>;
}

/**
 * A piece of a file. Its buffer is read into again, for a later chunk, once `release()`
 * says nothing needs it any more; a chunk never released is left to the garbage
 * collector, so a reader that keeps the bytes simply does not call it.
 */
export interface FileChunk {
  data: Buffer;
  release(): void;
}

export interface TargetInfo {
  serverVersion: string;
  serverMajor: number;
  databaseSize: number;
}

export interface DumpOptions {
  database: string;
  format: ArchiveFormat;
  compression: CompressionKind;
  /** Where to write the compressed archive. */
  outputPath: string;
}

export interface DumpResult {
  fileSize: number;
  /** SHA-256 of the bytes written, hex. */
  checksum: string;
  tableRowCounts: TableRowCounts;
  durationMs: number;
  /**
   * Set when the compressed bytes, as they were written, were also decompressed
   * and read whole by pg_restore without fault: the dump's size. Those bytes are
   * the ones `checksum` covers, so a file whose SHA-256 matches needs no second
   * reading. null: the verification reads the file.
   */
  readBack: { dumpSize: number } | null;
  /** pg_dump's warnings (it succeeded): what the archive may lack, such as subscriptions. */
  warnings: string[];
}

export interface InspectOptions {
  path: string;
  format: ArchiveFormat;
  compression: CompressionKind;
  /** Tables (`schema.table`) whose data the archive must hold. */
  expectedTables: string[];
  /**
   * false: skip reading the whole archive (a deep verification restores it,
   * which reads and checks every byte anyway); only the table of contents.
   */
  full?: boolean;
  /** The dump's read-back (see DumpResult.readBack), used instead of reading the file whole again. */
  readBack?: { dumpSize: number } | null;
}

export interface CheckOutcome {
  passed: boolean;
  detail: string;
}

export interface InspectResult {
  decompress: CheckOutcome & { dumpSize: number | null };
  archive: CheckOutcome;
}

/** pg_dump and friends, as child processes. */
export interface DumpEngine {
  readonly pgDumpVersion: string;
  readonly pgDumpMajor: number;
  /** Connects to the database; throws unavailable / not_found / failed_precondition. */
  probe(database: string, signal?: AbortSignal): Promise<TargetInfo>;
  dump(options: DumpOptions, signal: AbortSignal): Promise<DumpResult>;
  inspect(options: InspectOptions, signal?: AbortSignal): Promise<InspectResult>;
}

export interface Clock {
  now(): Date;
}

export interface DatabaseState {
  exists: boolean;
  /**
   * User objects it holds: relations, functions, types, schemas besides
   * public, extensions, large objects, and the like. Zero means empty.
   */
  objectCount: number;
  /** Sessions connected to it, other than ours (autovacuum workers are not counted). */
  sessions: number;
  /** The roles of those sessions that the service's role may not end (sorted): they would keep the swap from renaming it. */
  unendableRoles: string[];
  /** It holds this service's own tables (a control database): never a restore target. */
  holdsServiceRecords: boolean;
  /** Its owner (null: it does not exist). */
  owner: string | null;
  /** Whether the service's role may act as its owner (rename it at the swap): true when it does not exist. */
  mayReplace: boolean;
}

export interface LoadOptions {
  path: string;
  format: ArchiveFormat;
  compression: CompressionKind;
  database: string;
  /** About how large the database will be (its size at backup time), for progress; 0 if unknown. */
  expectedBytes: number;
  /** Size of the uncompressed archive (pg_dump's output), for progress; 0 if unknown. */
  dumpBytes: number;
  /** The rows of each table at backup time, if recorded: the biggest table is loaded first. */
  tableRowCounts?: TableRowCounts;
}

/** How far a load has come: bytes of the file read, and the fraction of the whole load done. */
export interface LoadProgress {
  bytesRead: number;
  fraction: number;
}

/** How a load went in: "over 2 sessions", "through psql", and how long each step took. */
export interface LoadSummary {
  how: string;
  /** Milliseconds per step, in order: e.g. schema, rows, indexes (lanes) or load (psql). */
  stepsMs: Record<string, number>;
  /**
   * Rows each table's own COPY committed, as the server reported them, for
   * the tables the service loaded itself; a table not here is counted.
   */
  rowCounts?: TableRowCounts;
}

/** Creating, loading, checking and swapping databases on the target server. */
export interface RestoreEngine {
  inspectDatabase(name: string, signal?: AbortSignal): Promise<DatabaseState>;
  /**
   * Creates an empty database. With `like`, it gets that database's owner,
   * encoding, locale, tablespace, connection limit, privileges, comment and
   * settings, so that swapping it in changes only the contents. Without,
   * `ownerOf` names a database whose owner it gets, if that database exists
   * and the service's role may act as its owner (else the role owns it): an
   * archive of that database then restores its objects' owners as it would
   * over the database itself.
   */
  createDatabase(name: string, like: string | null, ownerOf?: string): Promise<void>;
  /** Loads the archive file into the database, reporting progress as it goes. */
  load(options: LoadOptions, onProgress: (p: LoadProgress) => void, signal: AbortSignal): Promise<LoadSummary>;
  /** Every table's rows: `known` (the load's own counts) where given, count(*) for the rest. */
  countRows(database: string, signal?: AbortSignal, known?: TableRowCounts): Promise<TableRowCounts>;
  /**
   * Ends the database's sessions and keeps new ones out (connection limit 0,
   * which the service's role passes only if it is a superuser) until
   * `release`, which puts the original limit back and allows connections
   * again should a swap that failed have left them shut out.
   */
  holdSessions(
    name: string,
    /** Awaited with the original limit before it is set to 0, so that recovery can put it back. */
    intent: (originalLimit: number) => Promise<void>,
  ): Promise<{ originalLimit: number; release(): Promise<void> }>;
  /** After a crash: puts back the connection limit a restore had set to 0, and allows connections a swap had shut out. */
  releaseSessions(name: string, originalLimit: number): Promise<void>;
  /**
   * Gives `scratch` the name `target` in one transaction; an existing `target`
   * is renamed to `retired` first (then dropped by the caller). No session,
   * not even a superuser's, may connect to either from its start until that
   * transaction commits (ALLOW_CONNECTIONS false), so that a client that
   * reconnects at once cannot make the rename fail; the restored database
   * allows connections, and a swap that fails allows them again. Nothing
   * changes if `signal` has aborted by the time it would commit, nor if the
   * target's existence is no longer `targetExists` (a dropped target is not
   * created again: NOT_FOUND; one created meanwhile is not replaced:
   * FAILED_PRECONDITION).
   */
  swapIn(
    scratch: string,
    target: string,
    retired: string,
    targetExists: boolean,
    signal: AbortSignal,
    /**
     * The target's rows written so far (writesTo) when its safety backup began: once no session
     * may connect, a count that moved since is FAILED_PRECONDITION, and nothing is changed, for
     * the safety backup would not hold what was written.
     */
    unwrittenSince?: number,
  ): Promise<void>;
  /**
   * Rows inserted, updated and deleted in the database since the server's statistics began, as
   * its ended sessions have reported them; null where the server does not count them
   * (track_counts off).
   */
  writesTo(name: string): Promise<number | null>;
  dropDatabase(name: string): Promise<void>;
  listDatabases(prefix: string): Promise<string[]>;
  /** Free bytes where the server keeps its data, when that can be seen from here; null otherwise. */
  serverFreeBytes(): Promise<number | null>;
  /**
   * The sequences, views, materialized views, functions, procedures and
   * indexes a custom archive's table of contents lists; null for a plain dump
   * (it has none). Each as "<TYPE> <schema> <name> <owner>".
   */
  archiveObjects(options: Omit<LoadOptions, "database" | "expectedBytes" | "dumpBytes">, signal?: AbortSignal): Promise<string[] | null>;
  /** Which of those objects the database lacks. */
  missingObjects(database: string, objects: string[]): Promise<string[]>;
  /** Runs each query in the database: it passes when it returns true. */
  runSanityQueries(database: string, queries: string[], signal?: AbortSignal): Promise<{ query: string; passed: boolean; detail: string }[]>;
}

export type JobOutcome = "RUNNING" | "SUCCEEDED" | "FAILED" | "SKIPPED" | "INTERRUPTED" | "TAKEN_ELSEWHERE";

/** One firing of a scheduled job, or one replica's note that another took it. */
export interface JobRun {
  id: number;
  job: string;
  slot: Date;
  replicaId: string;
  claimed: boolean;
  startedAt: Date;
  finishedAt: Date | null;
  outcome: JobOutcome;
  backupId: string | null;
  error: string | null;
  details: Record<string, unknown> | null;
}

/** The record of scheduled runs, shared by every replica. */
export interface JobRunRepository {
  /** Claims (job, slot) for this replica as RUNNING, or returns null when it is already claimed. */
  claim(job: string, slot: Date, replicaId: string): Promise<JobRun | null>;
  /** The row that owns (job, slot), if any. */
  findClaim(job: string, slot: Date): Promise<JobRun | null>;
  /** Notes, without claiming, what this replica saw of a slot (e.g. taken elsewhere). */
  note(job: string, slot: Date, replicaId: string, outcome: JobOutcome, error: string): Promise<void>;
  finish(
    id: number,
    patch: { outcome: JobOutcome; backupId?: string | null; error?: string | null; details?: Record<string, unknown> },
  ): Promise<void>;
  /** The claimed run of `job` with the latest slot. */
  lastRun(job: string): Promise<JobRun | null>;
  /** Claimed runs still marked RUNNING. */
  listRunning(job?: string): Promise<JobRun[]>;
  /**
   * Marks INTERRUPTED, and returns, the claimed runs of `job` still RUNNING that were
   * claimed more than `graceMs` ago (by the database's clock), in one statement.
   */
  interruptStale(job: string, graceMs: number, error: string): Promise<JobRun[]>;
}

/** Removes the service's own records of what is over, older than a cutoff (src/db/history.ts). */
export interface HistoryPruner {
  prune(before: Date): Promise<{ jobRuns: number; alertIncidents: number; restoreRuns: number; auditEvents: number }>;
}

export type RestoreOutcome = "RUNNING" | "SUCCEEDED" | "FAILED" | "INTERRUPTED";

export interface RestoreRun {
  id: string;
  backupId: string;
  targetDatabase: string;
  replicaId: string;
  actor: string | null;
  startedAt: Date;
  finishedAt: Date | null;
  outcome: RestoreOutcome;
  safetyBackupId: string | null;
  connectionsBlocked: boolean;
  originalConnectionLimit: number | null;
  error: string | null;
}

/** Restores in progress and done, so that a crash mid-restore can be cleaned up. */
export interface RestoreRunRepository {
  /** Inserts a RUNNING run with the given id, whose run lock the caller already holds. */
  start(run: { id: string; backupId: string; targetDatabase: string; replicaId: string; actor: string | null }): Promise<RestoreRun>;
  update(
    id: string,
    patch: Partial<
      Pick<RestoreRun, "outcome" | "safetyBackupId" | "connectionsBlocked" | "originalConnectionLimit" | "error" | "finishedAt">
    >,
  ): Promise<void>;
  /**
   * Runs still RUNNING, and finished runs that still hold their target's sessions off (the
   * release at their end failed).
   */
  listUnsettled(): Promise<RestoreRun[]>;
}

export interface Incident {
  id: number;
  key: string;
  openedAt: Date;
  notifiedAt: Date | null;
  resolvedAt: Date | null;
  /** When a live replica last said it watches it (open() and touch() refresh it). */
  lastSeenAt: Date;
  message: string;
}

/** Conditions the alert checks watch, shared by every replica: each announced once. */
export interface IncidentRepository {
  /** The open incident of `key`, opened now with `message` if there is none; either way, seen now. */
  open(key: string, message: string): Promise<Incident>;
  /** Records that the incident's alert went out. */
  markNotified(id: number, message: string): Promise<void>;
  /** Closes the open incident of `key`; returns it, or null when none was open. */
  resolve(key: string): Promise<Incident | null>;
  /** Notes that a live replica watches these keys' open incidents (see UNWATCHED_AFTER_MS). */
  touch(keys: readonly string[]): Promise<void>;
  listOpen(): Promise<Incident[]>;
}
