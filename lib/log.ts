/**
 * One event a line, for journald: `event key=value ...`, the event a stable
 * past-tense name an operator can grep and alert on, the explanation in the
 * fields; `<N>` priority prefixes when `JOURNAL_STREAM` says stderr is the
 * journal, so `journalctl -p warning` works.
 *
 * @module
 */
import type { Env } from "./cli.ts";
import { quote } from "./text.ts";

/** Log priorities, as syslog and journald number them. */
export type Level = "err" | "warning" | "notice" | "info" | "debug";
const PRIORITY: Record<Level, number> = { err: 3, warning: 4, notice: 5, info: 6, debug: 7 };

/** Writes one event a line: `event key=value ...`; with `<N>` priority prefixes under journald. */
export type Log = (level: Level, event: string, fields?: Record<string, unknown>) => void;

/** Formats one log line (pure). */
export function formatEvent(event: string, fields: Record<string, unknown> = {}): string {
  const parts = [event];
  for (const [k, v] of Object.entries(fields)) {
    if (v === undefined) continue;
    const text = String(v);
    // anything but a plain word is quoted, its control characters escaped: one event stays one line
    parts.push(`${k}=${/^[!#-<>-~]+$/.test(text) ? text : quote(text, Infinity)}`);
  }
  return parts.join(" ");
}

/** A logger to stderr; `JOURNAL_STREAM` in the environment turns on priority prefixes. */
export function createLog(env: Env, write: (line: string) => void = (l) => process.stderr.write(l)): Log {
  const journal = Boolean(env.JOURNAL_STREAM);
  return (level, event, fields) => {
    write(`${journal ? `<${PRIORITY[level]}>` : ""}${formatEvent(event, fields)}\n`);
  };
}
