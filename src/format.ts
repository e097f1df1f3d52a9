/** Wording shared by everything that speaks to people: the CLI and the alerts. */

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/** 0 B, 512 B, 12.3 MiB, 1.02 GiB. */
export function formatBytes(n: bigint | number): string {
  let v = Number(n);
  let u = 0;
  while (Math.abs(v) >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  if (u === 0) return `${v} B`;
  return `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ${UNITS[u]}`;
}
