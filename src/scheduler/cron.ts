import parser from "cron-parser";

/** Why a cron expression or time zone is unusable, or null when it is fine. */
export function cronProblem(expr: string, tz: string): string | null {
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: tz });
  } catch {
    return `unknown time zone (use an IANA name such as Asia/Jakarta or UTC)`;
  }
  const fields = expr.trim().split(/\s+/);
  if (fields.length < 5 || fields.length > 6) return "must be a cron expression of 5 fields (or 6 with seconds), or off";
  try {
    parser.parseExpression(expr, { tz }).next();
    return null;
  } catch (err) {
    return `is not a valid cron expression (${(err as Error).message})`;
  }
}

/** The first slot strictly after `after`. */
export function nextSlot(expr: string, tz: string, after: Date): Date {
  return parser.parseExpression(expr, { tz, currentDate: after }).next().toDate();
}

/** The most recent slot at or before `at`, if there is one. */
export function previousSlot(expr: string, tz: string, at: Date): Date | null {
  // cron-parser's prev() is strictly before currentDate: step 1 ms past `at`.
  try {
    return parser.parseExpression(expr, { tz, currentDate: new Date(at.getTime() + 1) }).prev().toDate();
  } catch {
    return null;
  }
}

/** "2026-11-27T02:00:00+07:00": a time as the people in `tz` would read it. */
export function formatInZone(d: Date, tz: string): string {
  const parts = Object.fromEntries(
    new Intl.DateTimeFormat("en-CA", {
      timeZone: tz,
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
      hourCycle: "h23",
      timeZoneName: "longOffset",
    })
      .formatToParts(d)
      .map((p) => [p.type, p.value]),
  );
  const offset = parts.timeZoneName === "GMT" ? "+00:00" : String(parts.timeZoneName).replace("GMT", "");
  return `${parts.year}-${parts.month}-${parts.day}T${parts.hour}:${parts.minute}:${parts.second}${offset}`;
}
