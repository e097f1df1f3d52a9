/**
 * A tiny read cache for expensive aggregate queries. Callers asking for the
 * same key at once share one query. An answer older than its time to live
 * is still served while a fresh one is computed in the background (so callers
 * rarely wait on the aggregate). Writes made by this process either clear the
 * cache at once (`clear`: this process reads its own writes) or, for the
 * intermediate steps of work still running, mark every answer for a refresh
 * (`refreshSoon`: the answers held are served until the fresh ones, whose
 * queries start at the next call, have landed). Another replica's writes show
 * within at most twice the time to live.
 */
export function createSingleFlight(defaultTtlMs: number) {
  interface Entry {
    at: number;
    ttl: number;
    value: Promise<unknown>;
    settled: boolean;
    refreshing: boolean;
    /** The `refreshSoon` count when its query started: an older one is refreshed at the next call. */
    marks: number;
  }
  const entries = new Map<string, Entry>();
  let generation = 0;
  let marks = 0;

  function start<T>(key: string, ttl: number, load: () => Promise<T>, previous?: Entry): Promise<T> {
    const gen = generation;
    const value = load();
    // Answers computed together (a dashboard's first poll) must not all go stale, and
    // refresh, in the same instant: each lives between 0.75 and 1.25 of its time to live.
    const entry: Entry = {
      at: performance.now(),
      ttl: ttl * (0.75 + Math.random() * 0.5),
      value,
      settled: false,
      refreshing: false,
      marks,
    };
    if (!previous) entries.set(key, entry);
    value.then(
      () => {
        entry.settled = true;
        // Only an answer computed after the last clearing write may be kept.
        if (gen === generation) entries.set(key, entry);
        else if (entries.get(key) === entry) entries.delete(key);
      },
      () => {
        if (entries.get(key) === entry) entries.delete(key);
        if (previous) previous.refreshing = false;
      },
    );
    return value;
  }

  return {
    /** `ttlMs`: how long this key's answer may be reused (default: the cache's). */
    get<T>(key: string, load: () => Promise<T>, ttlMs = defaultTtlMs): Promise<T> {
      if (ttlMs <= 0 || defaultTtlMs <= 0) return load();
      const hit = entries.get(key);
      if (!hit) return start(key, ttlMs, load);
      const age = performance.now() - hit.at;
      // Too old to serve even while refreshing (after an idle spell): wait for a fresh answer.
      if (hit.settled && age >= 2 * hit.ttl) {
        entries.delete(key);
        return start(key, ttlMs, load);
      }
      if (hit.settled && (age >= hit.ttl || hit.marks !== marks) && !hit.refreshing) {
        hit.refreshing = true;
        void start(key, ttlMs, load, hit).catch(() => undefined);
      }
      return hit.value as Promise<T>;
    },
    /** After a write whose effect callers must see from now on: every answer is computed again. */
    clear(): void {
      generation++;
      entries.clear();
    },
    /**
     * After a write that callers need not see at once (a step of work still running): each
     * answer held is refreshed at its next call and served until the fresh one has landed.
     */
    refreshSoon(): void {
      marks++;
    },
  };
}
