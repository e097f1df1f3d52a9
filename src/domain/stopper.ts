/**
 * One AbortSignal that aborts (with the source's reason) when any signal it
 * follows does. Used instead of AbortSignal.any(), whose composite signals
 * Node keeps only weakly and which has lost aborts in Node 20 under garbage
 * collection; here every link is a plain listener, removed by `dispose()` so
 * that long-lived sources (the shutdown signal) do not accumulate them.
 */
export function createStopper(...sources: (AbortSignal | undefined)[]) {
  const controller = new AbortController();
  const links: [AbortSignal, () => void][] = [];
  const stopper = {
    signal: controller.signal,
    /** Also stop when `source` aborts. */
    follow(source: AbortSignal | undefined): void {
      if (!source || controller.signal.aborted) return;
      if (source.aborted) {
        controller.abort(source.reason);
        return;
      }
      const onAbort = () => controller.abort(source.reason);
      source.addEventListener("abort", onAbort, { once: true });
      links.push([source, onAbort]);
    },
    /** Stop now, with `reason`. */
    stop(reason: unknown): void {
      controller.abort(reason);
    },
    /** Stops following every source (call when the work is over). */
    dispose(): void {
      for (const [source, onAbort] of links.splice(0)) source.removeEventListener("abort", onAbort);
    },
  };
  for (const s of sources) stopper.follow(s);
  return stopper;
}
