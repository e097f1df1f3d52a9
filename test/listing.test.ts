/**
 * ListBackups over a long history, through the repository's shared pages and the
 * records it keeps by row version: every page, with and without a filter, must agree
 * with PostgreSQL's own order, and a deletion must show at once on a page near the
 * top and on one past the thousandth row.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupStatus } from "../gen/backup/v1/backup_pb.js";
import { createDatabase, createFixture, sql, type TestService, waitFor } from "./helpers.js";

const fx = createFixture("listing");
let svc: TestService;
const ROWS = 1234;

beforeAll(async () => {
  await createDatabase(fx.target);
  svc = await fx.service();
  // As years of backups would leave them; every fifth FAILED, so that a filtered listing has pages too.
  await sql(
    svc.control,
    `INSERT INTO backup_service.backup_history
       (backup_type, file_name, file_size, status, started_at, completed_at, duration_ms, triggered_by, retention_days,
        expires_at, database_name, archive_format, compression, metadata)
     SELECT 'FULL', 'seed_' || g || '.dump.zst', 1000 + g,
            (CASE WHEN g % 5 = 0 THEN 'FAILED' ELSE 'VERIFIED' END)::backup_service.backup_status,
            now() - (g / 3) * interval '1 minute', now(), 1000, 'seed', 30, now() + interval '30 days', 'seeddb',
            'custom', 'zstd', '{}'::jsonb
       FROM generate_series(1, ${ROWS}) g`,
  );
});

afterAll(() => fx.cleanup());

/** Ids in the listing's order, as PostgreSQL gives them (several rows share a start time). */
async function expectedIds(where = "NOT is_deleted"): Promise<string[]> {
  const rows = await sql<{ id: string }>(
    svc.control,
    `SELECT id FROM backup_service.backup_history WHERE ${where} ORDER BY started_at DESC, id DESC`,
  );
  return rows.map((r) => r.id);
}

async function allPages(pageSize: number, status?: BackupStatus): Promise<string[]> {
  const ids: string[] = [];
  for (let page = 1; ; page++) {
    const r = await svc.client.listBackups({ page, pageSize, status });
    ids.push(...r.backups.map((b) => b.id));
    if (page >= r.pages) return ids;
  }
}

describe("ListBackups over 1,234 records", () => {
  it("pages through the whole history in order, whatever the page size", async () => {
    const expected = await expectedIds();
    expect(expected).toHaveLength(ROWS);
    for (const size of [7, 50, 500]) expect(await allPages(size), `pageSize ${size}`).toEqual(expected);
    const failed = await expectedIds("NOT is_deleted AND status = 'FAILED'");
    expect(failed.length).toBeGreaterThan(200);
    expect(await allPages(9, BackupStatus.FAILED)).toEqual(failed);
  });

  it("shows a deletion at once, near the top and past the thousandth row", async () => {
    const before = await expectedIds();
    // Read (and cache) the pages first, as a polling dashboard would.
    const inside = await svc.client.listBackups({ page: 1, pageSize: 50 });
    const past = await svc.client.listBackups({ page: 23, pageSize: 50 });
    expect(past.backups.map((b) => b.id)).toEqual(before.slice(1100, 1150));
    const gone = [inside.backups[3]!.id, past.backups[10]!.id];
    for (const id of gone) await svc.client.deleteBackup({ id });

    const after = before.filter((id) => !gone.includes(id));
    const inside2 = await svc.client.listBackups({ page: 1, pageSize: 50 });
    const past2 = await svc.client.listBackups({ page: 23, pageSize: 50 });
    expect(inside2.backups.map((b) => b.id)).toEqual(after.slice(0, 50));
    expect(past2.backups.map((b) => b.id)).toEqual(after.slice(1100, 1150));
    expect(Number(inside2.total)).toBe(ROWS - 2);
  });

  it("shortens the last page when its last record goes, and keeps the pages before it", async () => {
    const failed = await expectedIds("NOT is_deleted AND status = 'FAILED'");
    const last = Math.ceil(failed.length / 100);
    const read = (page: number) => svc.client.listBackups({ page, pageSize: 100, status: BackupStatus.FAILED });
    const before = await read(last);
    expect(before.backups.map((b) => b.id)).toEqual(failed.slice((last - 1) * 100));
    await svc.client.deleteBackup({ id: failed.at(-1)! });
    const after = await read(last);
    expect(after.backups.map((b) => b.id)).toEqual(failed.slice((last - 1) * 100, -1));
    expect((await read(1)).backups.map((b) => b.id)).toEqual(failed.slice(0, 100));
  });

  it("lists an async backup at once and a synchronous one, in its final state, when its call returns", async () => {
    const top = async () => (await svc.client.listBackups({ page: 1, pageSize: 50 })).backups;
    const total = async () => Number((await svc.client.getStats({})).totalBackups);
    // A dashboard's pages and totals, read and cached first.
    await top();
    const before = await total();

    // The caller is answered right after the record is made: every listing shows it from then on.
    const { backup: started } = await svc.client.createBackup({ async: true, label: "async, listed at once" });
    expect((await top())[0]?.id).toBe(started!.id);
    expect(await total()).toBe(before + 1);
    await waitFor("the async backup to finish", async () => {
      const { backup } = await svc.client.getBackup({ id: started!.id });
      return backup!.status === BackupStatus.VERIFIED ? backup : null;
    });

    // The caller is answered at the end: the final state shows at once, whatever was cached meanwhile.
    const running = svc.client.createBackup({ label: "sync, listed when it returns" });
    await top();
    await total();
    const { backup: done } = await running;
    const first = (await top())[0];
    expect(first?.id).toBe(done!.id);
    expect(first?.status).toBe(BackupStatus.VERIFIED);
    expect(await total()).toBe(before + 2);
  });
});
