/**
 * Runs `work` and yields what it emits while it runs, then returns its
 * result (or throws its error). The work owns its own clean-up: if the
 * consumer stops listening, the work is stopped through its AbortSignal, not
 * through the generator.
 */
export async function* streamWork<P, T>(work: (emit: (p: P) => void) => Promise<T>): AsyncGenerator<P, T> {
  const queue: P[] = [];
  let wake: (() => void) | undefined;
  let outcome: { ok: true; value: T } | { ok: false; error: unknown } | undefined;
  const emit = (p: P) => {
    queue.push(p);
    wake?.();
  };
  work(emit).then(
    (value) => {
      outcome = { ok: true, value };
      wake?.();
    },
    (error: unknown) => {
      outcome = { ok: false, error };
      wake?.();
    },
  );
  for (;;) {
    while (queue.length > 0) yield queue.shift()!;
    if (outcome) {
      if (outcome.ok) return outcome.value;
      throw outcome.error;
    }
    await new Promise<void>((resolve) => (wake = resolve));
    wake = undefined;
  }
}

/**
 * Decides when a progress message is worth sending: at least one a second,
 * one per percent when that is rarer, never more than four a second.
 */
export function createThrottle(minGapMs = 250, maxGapMs = 1000) {
  let lastAt = Number.NEGATIVE_INFINITY;
  let lastPercent = Number.NEGATIVE_INFINITY;
  return {
    /** Whether a message with this percent should go out now (and if so, counts it as sent). */
    due(percent: number, nowMs: number): boolean {
      const gap = nowMs - lastAt;
      if (gap >= maxGapMs || (gap >= minGapMs && percent - lastPercent >= 1)) {
        this.sent(percent, nowMs);
        return true;
      }
      return false;
    },
    sent(percent: number, nowMs: number): void {
      lastAt = nowMs;
      lastPercent = percent;
    },
  };
}
