/**
 * The control database's read cache: what a caller is served after each kind of
 * write. Loads are plain functions here, so that each answer can be told apart
 * and each query counted; the repository's use of it runs against PostgreSQL in
 * the other suites (clients.test.ts: a deletion shows at once).
 */
import { describe, expect, it } from "vitest";
import { createSingleFlight } from "../src/db/single-flight.js";

/** A load whose answers are 1, 2, 3...; `release()` lets the pending one finish. */
function loads() {
  let n = 0;
  const pending: (() => void)[] = [];
  return {
    get calls() {
      return n;
    },
    load: () => {
      const value = ++n;
      return new Promise<number>((resolve) => pending.push(() => resolve(value)));
    },
    release: async () => {
      while (pending.length > 0) pending.shift()!();
      await new Promise((r) => setImmediate(r));
    },
  };
}

/** A cache for "k" whose query, started now, will answer 1 once released. */
function asked() {
  const cache = createSingleFlight(60_000);
  const q = loads();
  return { cache, q, first: cache.get("k", q.load) };
}

/** A cache holding answer 1 for "k", and the load behind it. */
async function primed() {
  const { cache, q, first } = asked();
  await q.release();
  expect(await first).toBe(1);
  return { cache, q };
}

describe("single-flight cache", () => {
  it("shares one query between callers asking at once", async () => {
    const { cache, q, first: a } = asked();
    const b = cache.get("k", q.load);
    await q.release();
    expect([await a, await b]).toEqual([1, 1]);
    expect(q.calls).toBe(1);
  });

  it("after clear(), the next caller waits for a fresh answer", async () => {
    const { cache, q } = await primed();
    cache.clear();
    const next = cache.get("k", q.load);
    await q.release();
    expect(await next).toBe(2);
  });

  it("an answer whose query started before clear() is never kept", async () => {
    const { cache, q, first: before } = asked();
    cache.clear();
    await q.release();
    expect(await before).toBe(1);
    const after = cache.get("k", q.load);
    await q.release();
    expect(await after).toBe(2);
  });

  it("after refreshSoon(), the next caller gets the held answer and starts one fresh query; later callers get the fresh one", async () => {
    const { cache, q } = await primed();

    cache.refreshSoon();
    expect(await cache.get("k", q.load)).toBe(1);
    expect(await cache.get("k", q.load)).toBe(1);
    expect(q.calls).toBe(2);
    await q.release();
    expect(await cache.get("k", q.load)).toBe(2);
    expect(q.calls).toBe(2);
  });

  it("an answer whose query started before refreshSoon() is served, then refreshed at the next call", async () => {
    const { cache, q, first: inFlight } = asked();
    cache.refreshSoon();
    await q.release();
    expect(await inFlight).toBe(1);
    expect(await cache.get("k", q.load)).toBe(1);
    await q.release();
    expect(await cache.get("k", q.load)).toBe(2);
  });

  it("clear() after refreshSoon() still makes the next caller wait for a fresh answer", async () => {
    const { cache, q } = await primed();
    cache.refreshSoon();
    const stale = cache.get("k", q.load);
    cache.clear();
    const next = cache.get("k", q.load);
    await q.release();
    expect([await stale, await next]).toEqual([1, 3]);
    // The refresh started before clear() was not kept either.
    expect(await cache.get("k", q.load)).toBe(3);
  });
});
