/**
 * bench/README.md's tables, as bench/all.ts writes them: a row is its cells
 * (figure, target, the figures, and whether the target was met, last), the
 * cells' formats, a table in markdown, and the verdict a table's own cells
 * give. Pure; every phase's rows (bench/report/*.ts, bench/reload.ts) are
 * made with these.
 *
 * @module
 */
import { formatMs, percentile, summarize } from "../lib.ts";

/** `yes`, `**no**`, or nothing when not judged (its phase failed or did not run). */
export function met(ok: boolean | undefined): string {
  return ok === undefined ? "" : ok ? "yes" : "**no**";
}

/** `median 1.02 s, worst 2.31 s` of some times; `n/a` when there are none. */
export function mw(times: number[] | undefined): string {
  if (!times?.length) return "n/a";
  const s = summarize(times);
  return `median ${formatMs(s.median)}, worst ${formatMs(s.worst)}`;
}

/** The worst of some times; Infinity when there are none (no target is met by nothing). */
export function worst(times: number[] | undefined): number {
  return times?.length ? Math.max(...times) : Infinity;
}

/** A rate to a sensible precision; `n/a` when not measured. */
export function rate(x: number | undefined): string {
  if (x === undefined || !Number.isFinite(x)) return "n/a";
  return x === 0 ? "0" : x.toFixed(Math.abs(x) < 10 ? 1 : 0);
}

/** `p50 1.2 ms, p99 3.4 ms (n=20)`, or `n/a`. */
export function p50p99(times: number[] | undefined): string {
  if (!times?.length) return "n/a";
  return `p50 ${formatMs(percentile(times, 50))}, p99 ${formatMs(percentile(times, 99))} (n=${times.length})`;
}

/** `an idle minute`, or `an idle 24 s`: a window as long as it was. */
export function idle(seconds: number | undefined): string {
  if (seconds === undefined) return "an idle window";
  return seconds === 60 ? "an idle minute" : `an idle ${seconds} s`;
}

/** The main table's columns: the figure, its target, ours, the article's loop at its settings and at ours, met. */
export const MAIN_HEADER = [
  "figure",
  "target",
  "ours",
  "the article's loop, 20 s / TTL 30 s",
  "the article's loop, 2 s / TTL 10 s",
  "met",
];

/** A table in markdown (deno fmt aligns it afterwards). */
export function markdown(rows: string[][], header = MAIN_HEADER): string {
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...rows.map(line)].join("\n");
}

/** Which targets this run met and missed, from the table's own cells. */
export function verdict(rows: string[][]): string {
  const met = (r: string[]) => r[r.length - 1];
  const judged = rows.filter((r) => met(r) === "yes" || met(r) === "**no**");
  const missed = judged.filter((r) => met(r) === "**no**");
  const unjudged = rows.filter((r) => r[1] !== "" && met(r) === "");
  const parts = [
    missed.length
      ? `This run missed ${missed.length} of the ${judged.length} targets it judged:\n\n${
        missed.map((r) => `- ${r[0]}. Target: ${r[1]}; this run: ${r[2]}.`).join("\n")
      }`
      : judged.length === 1
      ? "This run met the one target it judged."
      : `This run met all ${judged.length} targets it judged.`,
  ];
  if (unjudged.length) {
    parts.push(
      `Not judged, as their benchmark failed or did not run: ${unjudged.map((r) => r[0]).join("; ")}.`,
    );
  }
  return parts.join("\n\n");
}

/** A section of the page: its title, what ran (sentences from the run), its table and the table's verdict. */
export function section(title: string, what: string, rows: string[][], header: string[]): string {
  return `## ${title}

${what}

${markdown(rows, header)}

${verdict(rows)}`;
}

/** The machine's cores, in words: `2 cores`, `1 core`. */
export function coresText(n: number): string {
  return n === 1 ? "1 core" : `${n} cores`;
}
