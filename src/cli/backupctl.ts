/**
 * backupctl: the command-line client of the backup service, over the
 * generated Connect client. Tables for people, `--json` for scripts, one line
 * on stderr for any failure, and exit codes scripts can rely on (errors.ts).
 *
 *   npx backupctl list --status verified
 *   npx backupctl restore <id> --target staging --yes
 */
import { createInterface } from "node:readline/promises";
import { toJson, type DescEnum, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import {
  BackupStatus,
  BackupStatusSchema,
  BackupTypeSchema,
  CleanupExpiredBackupsResponseSchema,
  CreateBackupResponseSchema,
  DeleteBackupResponseSchema,
  GetBackupResponseSchema,
  GetJobStatusResponseSchema,
  GetStatsResponseSchema,
  ListAuditEventsResponseSchema,
  ListBackupsResponseSchema,
  RestoreBackupResponseSchema,
  RestorePhase,
  VerifyBackupResponseSchema,
  type RestoreBackupResponse,
} from "../../gen/backup/v1/backup_pb.js";
import { createBackupClient, DEFAULT_URL, type BackupClient } from "./connection.js";
import { downloadBackup } from "./download.js";
import { CliError, describeFailure, Exit, usageError } from "./errors.js";
import { durationMs, formatBytes, formatMs, formatTime, oneLine, plural } from "./format.js";
import { createProgressBar, showsProgress } from "./progress.js";
import {
  phaseName,
  renderAudit,
  renderBackup,
  renderBackupTable,
  renderCleanup,
  renderJobs,
  renderPage,
  renderRestoreResult,
  renderStats,
  renderVerification,
  statusName,
} from "./render.js";

interface GlobalOptions {
  url: string;
  token?: string;
  ca?: string;
  json?: boolean;
}

/** What the run ends with; a command that found a problem sets it (verify: CORRUPTED). */
const state = { url: undefined as string | undefined, exitCode: Exit.OK as number };

function globals(cmd: Command): GlobalOptions {
  return cmd.optsWithGlobals<GlobalOptions>();
}

function clientFor(cmd: Command): BackupClient {
  const g = globals(cmd);
  state.url = g.url;
  return createBackupClient({ url: g.url, token: g.token, caFile: g.ca });
}

function print(text: string): void {
  process.stdout.write(text);
}

/** Canonical protobuf JSON (enum names, RFC 3339 times, 64-bit integers as strings), every field present. */
function printMessage<D extends DescMessage>(schema: D, message: MessageShape<D>): void {
  printJson(toJson(schema, message, { alwaysEmitImplicit: true }));
}

function printJson(value: unknown): void {
  print(`${JSON.stringify(value, null, 2)}\n`);
}

/** stderr notes for a person at a terminal; silent for scripts and with --json. */
function note(g: GlobalOptions, text: string): void {
  if (showsProgress(!!g.json)) process.stderr.write(`${text}\n`);
}

function wholeNumber(min = 1) {
  return (value: string): number => {
    if (!/^\d+$/.test(value.trim()) || Number(value) < min) throw new InvalidArgumentError(`must be a whole number from ${min}`);
    return Number(value);
  };
}

/** Accepts `verified`, `VERIFIED` or `BACKUP_STATUS_VERIFIED`. */
function enumValue(schema: DescEnum, allowed?: string[]) {
  const values = schema.values.filter((v) => v.number !== 0 && (!allowed || allowed.includes(v.localName)));
  return (text: string): number => {
    const t = text.trim().toUpperCase().replace(/-/g, "_");
    const v = values.find((x) => x.localName === t || x.name === t);
    if (!v) throw new InvalidArgumentError(`must be one of ${values.map((x) => x.localName.toLowerCase()).join(", ")}`);
    return v.number;
  };
}

/**
 * Runs a streaming call that Ctrl-C cancels: the first SIGINT aborts the
 * call (the service then stops the work), a second one exits at once.
 */
async function interruptible<T>(interrupted: string | (() => string), work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const onSigint = () => {
    if (controller.signal.aborted) process.exit(Exit.INTERRUPTED);
    controller.abort(new Error("interrupted"));
  };
  process.on("SIGINT", onSigint);
  try {
    return await work(controller.signal);
  } catch (err) {
    if (controller.signal.aborted) {
      throw new CliError(`interrupted: ${typeof interrupted === "string" ? interrupted : interrupted()}`, Exit.INTERRUPTED);
    }
    throw err;
  } finally {
    process.off("SIGINT", onSigint);
  }
}

/** Asks on the terminal (prompt on stderr: stdout stays for results). */
async function ask(question: string): Promise<string> {
  const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: true });
  let answered = false;
  try {
    return await new Promise<string>((resolve, reject) => {
      const refuse = (err: CliError) => {
        if (answered) return;
        process.stderr.write("\n"); // end the prompt's line
        reject(err);
      };
      rl.on("SIGINT", () => refuse(new CliError("interrupted: nothing was restored", Exit.INTERRUPTED)));
      // End of input (Ctrl-D) is no answer.
      rl.on("close", () => refuse(usageError("restore not confirmed: nothing was changed")));
      rl.question(question).then((answer) => {
        answered = true;
        resolve(answer);
      }, reject);
    });
  } finally {
    rl.close();
  }
}

function buildProgram(): Command {
  const program = new Command("backupctl")
    .description("Command-line client of the PostgreSQL backup service (backup.v1.BackupService over gRPC)")
    .addOption(
      new Option("--url <url>", "service address: http:// (h2c) or https:// (TLS)").env("BACKUP_SERVICE_URL").default(DEFAULT_URL),
    )
    .addOption(new Option("--token <jwt>", "bearer token with the admin role").env("BACKUP_TOKEN"))
    .addOption(new Option("--ca <file>", "PEM file of the CA to trust for https:// URLs").env("BACKUP_CA_FILE"))
    .option("--json", "print machine-readable JSON on stdout (no progress bars)")
    .showSuggestionAfterError()
    .addHelpText(
      "after",
      "\nExit codes: 0 ok; 1 the operation failed or found a problem; 2 usage;\n" +
        "3 service unreachable or unavailable; 4 authentication or permission;\n" +
        "5 not found; 6 refused in the current state (busy, precondition); 130 interrupted.",
    );
  oneLineErrors(program);

  const command = (name: string, description: string) => oneLineErrors(program.command(name).description(description));

  command("stats", "totals of the backup history, the newest backup, and restore-verification ages")
    .option("--database <name>", "only this database")
    .action(async (opts: { database?: string }, cmd: Command) => {
      const res = await clientFor(cmd).getStats({ database: opts.database });
      if (globals(cmd).json) return printMessage(GetStatsResponseSchema, res);
      print(renderStats(res));
    });

  command("list", "backups, newest first")
    .option("--page <n>", "page number, from 1", wholeNumber(), 1)
    .option("--page-size <n>", "backups per page (at most 500)", wholeNumber(), 50)
    .option("--status <status>", "only this status: in_progress, completed, failed, verified, corrupted", enumValue(BackupStatusSchema))
    .option("--type <type>", "only this type: full, incremental, manual", enumValue(BackupTypeSchema))
    .option("--database <name>", "only this database")
    .option("--include-deleted", "also soft-deleted backups")
    .action(async (opts: { page: number; pageSize: number; status?: number; type?: number; database?: string; includeDeleted?: boolean }, cmd: Command) => {
      const res = await clientFor(cmd).listBackups({
        page: opts.page,
        pageSize: opts.pageSize,
        status: opts.status,
        backupType: opts.type,
        database: opts.database,
        includeDeleted: !!opts.includeDeleted,
      });
      if (globals(cmd).json) return printMessage(ListBackupsResponseSchema, res);
      if (res.backups.length === 0) print(res.total > 0n ? renderPage("backup", res.total, res.page, res.pages) : "no backups\n");
      else print(renderBackupTable(res.backups) + renderPage("backup", res.total, res.page, res.pages));
    });

  command("get", "one backup's record, and whether its file is on disk")
    .argument("<id>", "backup id")
    .action(async (id: string, _opts: unknown, cmd: Command) => {
      const res = await clientFor(cmd).getBackup({ id });
      if (globals(cmd).json) return printMessage(GetBackupResponseSchema, res);
      print(renderBackup(res.backup!, res.fileExists));
    });

  command("create", "take a backup and wait until it is verified (or --async)")
    .option("--database <name>", "database to back up (default: the service's TARGET_DATABASE_URL)")
    .option("--label <text>", "free text shown in listings")
    .option("--retention-days <n>", "days to keep it, 1..3650 (default: the service's RETENTION_DAYS)", wholeNumber())
    .option("--type <type>", "manual (default) or full", enumValue(BackupTypeSchema, ["MANUAL", "FULL"]))
    .option("--async", "return at once with the IN_PROGRESS record")
    .action(async (opts: { database?: string; label?: string; retentionDays?: number; type?: number; async?: boolean }, cmd: Command) => {
      const g = globals(cmd);
      const client = clientFor(cmd);
      if (!opts.async) note(g, `backing up ${opts.database ? `"${opts.database}"` : "the default database"} and verifying it...`);
      const res = await client.createBackup({
        database: opts.database,
        label: opts.label,
        retentionDays: opts.retentionDays,
        backupType: opts.type,
        async: !!opts.async,
      });
      const b = res.backup!;
      // Failures arrive as errors; a finished backup that is somehow not verified is still not good.
      if (!opts.async && !res.verified) state.exitCode = Exit.FAILED;
      if (g.json) return printMessage(CreateBackupResponseSchema, res);
      if (opts.async) print(`backup ${b.id} started (${statusName(b)}); follow it with: backupctl get ${b.id}\n`);
      else print(renderBackup(b));
    });

  command("verify", "re-check a backup's file (size, SHA-256, decompression, archive); --deep also restores it into a scratch database")
    .argument("<id>", "backup id")
    .option("--deep", "restore into a scratch database and check tables, row counts, objects and sanity queries")
    .action(async (id: string, opts: { deep?: boolean }, cmd: Command) => {
      const g = globals(cmd);
      const client = clientFor(cmd);
      if (opts.deep) note(g, "deep verification: restoring into a scratch database (the real database is not touched)...");
      const res = await client.verifyBackup({ id, deep: !!opts.deep });
      if (!res.verified) state.exitCode = Exit.FAILED;
      if (g.json) return printMessage(VerifyBackupResponseSchema, res);
      print(renderVerification(id, res));
    });

  command("restore", "restore a backup, atomically (asks for confirmation unless --yes)")
    .argument("<id>", "backup id")
    .option("--target <database>", "database to restore into (default: the backup's own; created if missing)")
    .option("--drop-existing", "replace the target if it holds objects (a safety backup of it is taken first)")
    .option("--force", "restore a backup that is not VERIFIED")
    .option("--skip-safety-backup", "do not back up the database being replaced")
    .option("-y, --yes", "do not ask for confirmation")
    .action(async (id: string, opts: { target?: string; dropExisting?: boolean; force?: boolean; skipSafetyBackup?: boolean; yes?: boolean }, cmd: Command) => {
      const g = globals(cmd);
      if (!opts.yes && !process.stdin.isTTY) {
        throw usageError("refusing to restore without confirmation: standard input is not a terminal (pass --yes)");
      }
      const client = clientFor(cmd);
      if (!opts.yes) await confirmRestore(client, id, opts);
      const progress = showsProgress(!!g.json);
      const bar = createProgressBar(progress, "restore  {bar} {percentage}% | {phase} | {elapsed} {detail}");
      let last: RestoreBackupResponse | undefined;
      let phase = -1;
      try {
        // Until the swap begins a cancel leaves the target as it was; once it has, the swap may
        // have committed before the cancel came, and then the restore went through.
        const interrupted = () =>
          phase === RestorePhase.FINALIZING
            ? `restore cancelled while the restored database was being swapped in: the target may have been replaced; ` +
              `the audit trail says which (backupctl audit --action RestoreBackup --backup ${id})`
            : "restore cancelled; the service drops its scratch database and the target is left as it was";
        await interruptible(interrupted, async (signal) => {
          const stream = client.restoreBackup(
            {
              id,
              confirmRestore: true,
              targetDatabase: opts.target,
              dropExisting: !!opts.dropExisting,
              force: !!opts.force,
              skipSafetyBackup: !!opts.skipSafetyBackup,
            },
            { signal },
          );
          bar.start(100, 0, { phase: "STARTING", elapsed: "0 ms", detail: "" });
          for await (const m of stream) {
            last = m;
            const payload = {
              phase: phaseName(m.phase),
              elapsed: formatMs(durationMs(m.elapsed)),
              detail: m.bytesTotal > 0n ? `| ${formatBytes(m.bytesDone)} of ${formatBytes(m.bytesTotal)}` : "",
            };
            bar.update(Math.min(100, Math.floor(m.percent)), payload);
            // Without a terminal (logs, CI): one line per phase on stderr instead of a bar.
            if (!progress && !g.json && m.phase !== phase) {
              process.stderr.write(`restore: ${payload.phase}${m.message ? `: ${oneLine(m.message)}` : ""}\n`);
            }
            phase = m.phase;
          }
        });
      } finally {
        bar.stop();
      }
      if (!last || last.phase !== RestorePhase.DONE || !last.result) {
        throw new CliError("the restore ended without a result (check the audit trail: backupctl audit --action RestoreBackup)", Exit.FAILED);
      }
      if (g.json) return printMessage(RestoreBackupResponseSchema, last);
      print(renderRestoreResult(id, last.result));
    });

  command("download", "download a backup's file, check its SHA-256, resumable")
    .argument("<id>", "backup id")
    .option("-o, --output <file>", "file or directory to write (default: the backup's file name, here)")
    .option("--resume", "continue an interrupted download (<file>.part)")
    .option("--force", "replace an existing file, or start a partial download over")
    .action(async (id: string, opts: { output?: string; resume?: boolean; force?: boolean }, cmd: Command) => {
      const g = globals(cmd);
      const client = clientFor(cmd);
      const bar = createProgressBar(showsProgress(!!g.json), "download {bar} {percentage}% | {done} of {size} | {speed} | eta {eta_formatted}");
      let part: string | undefined;
      let size = 0;
      const started = Date.now();
      let resumedAt = 0;
      try {
        const result = await interruptible("the partial download is kept: continue it with --resume", (signal) =>
          downloadBackup(client, {
            id,
            output: opts.output,
            resume: !!opts.resume,
            force: !!opts.force,
            signal,
            onStart(info) {
              part = `${info.out}.part`;
              size = info.fileSize;
              resumedAt = info.offset;
              if (info.offset > 0) note(g, `resuming ${part} at ${formatBytes(info.offset)}`);
              bar.start(Math.max(size, 1), info.offset, { done: formatBytes(info.offset), size: formatBytes(size), speed: "-" });
            },
            onProgress(bytes) {
              const seconds = (Date.now() - started) / 1000;
              const speed = seconds > 0 ? `${formatBytes((bytes - resumedAt) / seconds)}/s` : "-";
              bar.update(bytes, { done: formatBytes(bytes), size: formatBytes(size), speed });
            },
          }),
        ).catch((err: unknown) => {
          // A call that broke off mid-way leaves the partial file: say how to continue.
          if (part && !(err instanceof CliError)) {
            const f = describeFailure(err, state.url);
            throw new CliError(`${f.message} (the partial download is kept in ${part}: continue it with --resume)`, f.exitCode);
          }
          throw err;
        });
        bar.stop();
        if (g.json) return printJson({ ...result, verified: true });
        print(
          `downloaded backup ${result.backupId} to ${result.file} (${formatBytes(result.size)}${result.resumedFrom > 0 ? `, resumed at ${formatBytes(result.resumedFrom)}` : ""})\n` +
            `sha256 ${result.checksum} ok\n`,
        );
      } finally {
        bar.stop();
      }
    });

  command("delete", "mark a backup deleted (its file stays), or --hard remove the file and the record")
    .argument("<id>", "backup id")
    .option("--hard", "remove the file and the record (the audit trail keeps the events)")
    .action(async (id: string, opts: { hard?: boolean }, cmd: Command) => {
      const res = await clientFor(cmd).deleteBackup({ id, hardDelete: !!opts.hard });
      if (globals(cmd).json) return printMessage(DeleteBackupResponseSchema, res);
      print(
        opts.hard
          ? `removed backup ${id} and its record${res.fileRemoved ? `; file removed, ${formatBytes(res.freedBytes)} freed` : " (it had no file)"}\n`
          : `marked backup ${id} deleted; its file stays until it expires (delete --hard removes it now)\n`,
      );
    });

  command("cleanup", "remove expired backups (never the newest verified ones of a database)")
    .option("--dry-run", "only report what would be removed")
    .action(async (opts: { dryRun?: boolean }, cmd: Command) => {
      const res = await clientFor(cmd).cleanupExpiredBackups({ dryRun: !!opts.dryRun });
      if (globals(cmd).json) return printMessage(CleanupExpiredBackupsResponseSchema, res);
      print(renderCleanup(res));
    });

  command("jobs", "the scheduled jobs: next run, whether one is running, the last run")
    .action(async (_opts: unknown, cmd: Command) => {
      const res = await clientFor(cmd).getJobStatus({});
      if (globals(cmd).json) return printMessage(GetJobStatusResponseSchema, res);
      print(renderJobs(res));
    });

  command("audit", "the audit trail, newest first")
    .option("--page <n>", "page number, from 1", wholeNumber(), 1)
    .option("--page-size <n>", "events per page", wholeNumber(), 50)
    .option("--backup <id>", "only events about this backup")
    .option("--actor <name>", "only this actor (subject or username)")
    .option("--action <rpc>", "only this RPC, e.g. CreateBackup, RestoreBackup")
    .action(async (opts: { page: number; pageSize: number; backup?: string; actor?: string; action?: string }, cmd: Command) => {
      const res = await clientFor(cmd).listAuditEvents({
        page: opts.page,
        pageSize: opts.pageSize,
        backupId: opts.backup,
        actor: opts.actor,
        action: opts.action,
      });
      if (globals(cmd).json) return printMessage(ListAuditEventsResponseSchema, res);
      if (res.events.length === 0) print(res.total > 0n ? renderPage("event", res.total, res.page, res.pages) : "no audit events\n");
      else print(renderAudit(res.events) + renderPage("event", res.total, res.page, res.pages));
    });

  command("token", "mint a token signed with the key the service uses (reads the service's configuration, as npm run token)")
    .requiredOption("--sub <subject>", "the subject the token stands for")
    .option("--role <role>", "value of the role claim", "admin")
    .option("--username <name>", "value of the username claim (default: the subject)")
    .option("--ttl <duration>", "lifetime: 900, 30m, 1h, 7d", "1h")
    .action(async (opts: { sub: string; role: string; username?: string; ttl: string }, cmd: Command) => {
      // Loaded only here: it pulls in the service's configuration schema, which the other commands do not need.
      const { mintServiceToken } = await import("./mint-token.js");
      let token: string;
      try {
        token = await mintServiceToken(opts);
      } catch (err) {
        // A configuration or key problem: the caller has to change something.
        throw usageError(err instanceof Error ? err.message : String(err));
      }
      if (globals(cmd).json) return printJson({ token });
      print(`${token}\n`);
    });

  return program;
}

async function confirmRestore(client: BackupClient, id: string, opts: { target?: string; dropExisting?: boolean; force?: boolean; skipSafetyBackup?: boolean }) {
  const { backup } = await client.getBackup({ id });
  const b = backup!;
  const target = opts.target ?? b.databaseName;
  const lines = [
    `restore backup ${b.id}`,
    `  taken    ${formatTime(b.startedAt)} of database "${b.databaseName}" (${statusName(b)}, ${plural(b.tableCount, "table")}, ${plural(b.rowCount, "row")})`,
    `  into     database "${target}"${opts.dropExisting ? ", REPLACING it if it holds anything" : " (created if missing; refused if it holds objects)"}`,
  ];
  if (opts.dropExisting) lines.push(`  safety   ${opts.skipSafetyBackup ? "NONE (--skip-safety-backup): the replaced data cannot be recovered" : "a verified backup of the replaced database is taken first"}`);
  if (b.status !== BackupStatus.VERIFIED) lines.push(`  warning  the backup is ${statusName(b)}, not VERIFIED${opts.force ? "" : " (the service refuses without --force)"}`);
  process.stderr.write(`${lines.join("\n")}\n`);
  const answer = await ask(`type the target database name (${target}) to confirm: `);
  if (answer.trim() !== target) throw usageError("restore not confirmed: nothing was changed");
}

/** Commander's errors become one line, "backupctl: <what> (see backupctl <command> --help)", exit code 2. */
function oneLineErrors(cmd: Command): Command {
  return cmd.exitOverride().configureOutput({
    outputError: (text, write) => {
      const what = text.replace(/^error:\s*/i, "").trim().split(/\s*\n\s*/).join(" ");
      const name = cmd.parent ? `backupctl ${cmd.name()}` : "backupctl";
      write(`backupctl: ${what} (see ${name} --help)\n`);
    },
  });
}

async function main(argv: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv);
    return state.exitCode;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version are not errors; everything else commander refuses is a usage error, already printed.
      return err.code === "commander.helpDisplayed" || err.code === "commander.version" ? Exit.OK : Exit.USAGE;
    }
    const failure = describeFailure(err, state.url);
    process.stderr.write(`backupctl: ${failure.message}\n`);
    return failure.exitCode;
  }
}

const code = await main(process.argv);
// Exit explicitly: an idle HTTP/2 session would otherwise keep the process alive. stdout is flushed first.
process.stdout.write("", () => process.exit(code));
