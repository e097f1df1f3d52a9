/**
 * A tiny read cache for expensive aggregate queries: callers asking for the
 * same key at the same time share one query, and its answer is reused for
 * `ttlMs`. Writes made by this process clear it at once; another replica's
 * writes show within `ttlMs`.
 */
export function createSingleFlight(ttlMs: number) {
  const entries = new Map<string, { at: number; value: Promise<unknown> }>();
  let generation = 0;
  return {
    get<T>(key: string, load: () => Promise<T>): Promise<T> {
      const now = performance.now();
      const hit = entries.get(key);
      if (hit && now - hit.at < ttlMs) return hit.value as Promise<T>;
      const gen = generation;
      const value = load();
      entries.set(key, { at: now, value });
      // A failed query is not cached; nor is one started before a write.
      value.catch(() => entries.delete(key));
      void value.then(() => {
        if (gen !== generation) entries.delete(key);
      }, () => undefined);
      return value;
    },
    clear(): void {
      generation++;
      entries.clear();
    },
  };
}
