/**
 * Progress bars on stderr, shown only to a person: when stderr is a terminal
 * and the output is not --json. Otherwise every call is a no-op.
 */
import cliProgress from "cli-progress";

export interface ProgressBar {
  start(total: number, value: number, payload?: Record<string, string>): void;
  update(value: number, payload?: Record<string, string>): void;
  /** Leaves the bar as it is on its own line. */
  stop(): void;
}

const noop: ProgressBar = { start() {}, update() {}, stop() {} };

export function showsProgress(json: boolean): boolean {
  return !json && process.stderr.isTTY === true;
}

export function createProgressBar(enabled: boolean, format: string): ProgressBar {
  if (!enabled) return noop;
  const bar = new cliProgress.SingleBar(
    { stream: process.stderr, format, hideCursor: true, barsize: 30, fps: 5, etaBuffer: 50 },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    start(total, value, payload) {
      started = true;
      bar.start(total, value, payload);
    },
    update(value, payload) {
      if (started) bar.update(value, payload);
    },
    stop() {
      if (started) bar.stop();
      started = false;
    },
  };
}
