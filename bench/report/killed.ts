/**
 * The killed-target rows of bench/README.md's main table (bench/killed.ts):
 * a server process and Apache's process group killed, with the connection
 * watch on and off; the target judged with the watch on; and the tails of
 * both against the physical-limit target (p99, nearest rank: with 50 trials,
 * the worst).
 *
 * @module
 */
import type { KilledFigures } from "../killed.ts";
import { formatMs, percentile } from "../lib.ts";
import { met, mw, worst } from "./table.ts";

export function killedRows(killed: KilledFigures | undefined): string[][] {
  const times = (target: string, watch: boolean) =>
    killed?.rows.find((r) => r.target === target && r.watch === watch)?.times;
  const tail = (target: string) => {
    const t = times(target, true);
    return t?.length
      ? `p50 ${formatMs(percentile(t, 50))}, p90 ${formatMs(percentile(t, 90))}, p99 ${formatMs(percentile(t, 99))}`
      : "n/a";
  };
  const p99 = (target: string) => {
    const t = times(target, true);
    return t?.length ? percentile(t, 99) : Infinity;
  };
  const rows = (["process", "apache"] as const).map((target) => [
    `killed ${target === "apache" ? "Apache (its process group)" : "server process"} to gone, SIGKILL, watch on / off`,
    "worst 0.5 s (watch on)",
    `on: ${mw(times(target, true))}; off: ${mw(times(target, false))}`,
    "n/a",
    "n/a",
    met(killed && worst(times(target, true)) <= 500),
  ]);
  rows.push([
    `killed to gone, SIGKILL, watch on, ${killed?.trials ?? "n/a"} trials each`,
    "p99 25 ms",
    `server process: ${tail("process")}; Apache: ${tail("apache")}`,
    "n/a",
    "n/a",
    met(killed && p99("process") <= 25 && p99("apache") <= 25),
  ]);
  return rows;
}
