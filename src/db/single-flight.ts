/**
 * A tiny read cache for expensive aggregate queries. Callers asking for the
 * same key at once share one query. An answer older than `ttlMs` is still
 * served while a fresh one is computed in the background (so callers rarely
 * wait on the aggregate); writes made by this process clear the cache at once,
 * so this process reads its own writes. Another replica's writes show within
 * at most twice `ttlMs`.
 */
export function createSingleFlight(ttlMs: number) {
  interface Entry {
    at: number;
    value: Promise<unknown>;
    settled: boolean;
    refreshing: boolean;
  }
  const entries = new Map<string, Entry>();
  let generation = 0;

  function start<T>(key: string, load: () => Promise<T>, previous?: Entry): Promise<T> {
    const gen = generation;
    const value = load();
    const entry: Entry = { at: performance.now(), value, settled: false, refreshing: false };
    if (!previous) entries.set(key, entry);
    value.then(
      () => {
        entry.settled = true;
        // Only an answer computed after the last write may be kept.
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
    get<T>(key: string, load: () => Promise<T>): Promise<T> {
      if (ttlMs <= 0) return load();
      const hit = entries.get(key);
      if (!hit) return start(key, load);
      const age = performance.now() - hit.at;
      // Too old to serve even while refreshing (after an idle spell): wait for a fresh answer.
      if (hit.settled && age >= 2 * ttlMs) {
        entries.delete(key);
        return start(key, load);
      }
      if (hit.settled && age >= ttlMs && !hit.refreshing) {
        hit.refreshing = true;
        void start(key, load, hit).catch(() => undefined);
      }
      return hit.value as Promise<T>;
    },
    clear(): void {
      generation++;
      entries.clear();
    },
  };
}
