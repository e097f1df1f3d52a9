/**
 * Human-readable output for backupctl: sizes, times, aligned tables and
 * "key: value" blocks. Machine-readable output is JSON (see backupctl.ts).
 */
import type { DescEnum } from "@bufbuild/protobuf";
import { timestampDate, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";

export { formatBytes } from "../format.js";

/** 1,234,567 */
export function formatCount(n: bigint | number): string {
  return Number(n).toLocaleString("en-US");
}

/** ISO 8601 in UTC to the second, e.g. 2026-11-26T02:00:00Z; "-" when unset. */
export function formatTime(ts: Timestamp | undefined): string {
  if (!ts) return "-";
  return timestampDate(ts).toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** 850 ms, 12.3 s, 4 min 05 s, 2 h 07 min, 3 d 4 h. */
export function formatMs(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const total = Math.round(s);
  const [d, h, m, sec] = [Math.floor(total / 86400), Math.floor(total / 3600) % 24, Math.floor(total / 60) % 60, total % 60];
  if (d > 0) return `${d} d ${h} h`;
  if (h > 0) return `${h} h ${String(m).padStart(2, "0")} min`;
  return `${m} min ${String(sec).padStart(2, "0")} s`;
}

export function durationMs(d: Duration | undefined): number {
  return d ? Number(d.seconds) * 1000 + d.nanos / 1e6 : 0;
}

export function formatDuration(d: Duration | undefined): string {
  return d ? formatMs(durationMs(d)) : "-";
}

/** The short name of an enum value (VERIFIED for BACKUP_STATUS_VERIFIED); "-" for UNSPECIFIED. */
export function enumName(schema: DescEnum, value: number): string {
  if (value === 0) return "-";
  const v = schema.value[value];
  return v ? v.localName : String(value);
}

/** One line: control characters and line breaks (e.g. in pg_dump's stderr) become " | ". */
export function oneLine(text: string): string {
  return text
    .trim()
    .replace(/\s*[\r\n]+\s*/g, " | ")
    .replace(/[\u0000-\u001f\u007f]/g, " ");
}

/** Columns separated by two spaces, headers first; the last column is not padded. */
export function formatTable(headers: string[], rows: string[][]): string {
  const cells = [headers, ...rows.map((r) => r.map((c) => oneLine(c)))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? "").length)));
  return (
    cells
      .map((r) =>
        r
          .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
          .join("  ")
          .trimEnd(),
      )
      .join("\n") + "\n"
  );
}

/** "key:  value" lines, values aligned; entries whose value is undefined are left out. */
export function formatFields(entries: [string, string | undefined][]): string {
  const shown = entries.filter((e): e is [string, string] => e[1] !== undefined);
  const width = Math.max(...shown.map(([k]) => k.length)) + 2;
  return shown.map(([k, v]) => `${`${k}:`.padEnd(width)}${oneLine(v)}`).join("\n") + "\n";
}

/** "1 table", "1,500 tables". */
export function plural(n: bigint | number, word: string): string {
  return `${formatCount(n)} ${word}${Number(n) === 1 ? "" : "s"}`;
}
