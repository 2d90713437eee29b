/**
 * The killed-target rows of bench/README.md's main table (bench/killed.ts):
 * a server process and Apache's process group killed, with the connection
 * watch on and off; the target judged with the watch on; and the tails of
 * both against the physical-limit target (p99, nearest rank: with 50 trials,
 * the worst); and, unjudged under it, where the watch-on time went (to the
 * secretary's first failing check, and from there to the watcher's event)
 * with etcd's slow disk writes in the run, so a missed p99 reads as ours or
 * etcd's.
 *
 * @module
 */
import type { DiskCounts, KilledFigures, KilledRow } from "../killed.ts";
import { formatMs, percentile } from "../lib.ts";
import { met, mw, worst } from "./table.ts";

export function killedRows(killed: KilledFigures | undefined): string[][] {
  const row = (target: string, watch: boolean): KilledRow | undefined =>
    killed?.rows.find((r) => r.target === target && r.watch === watch);
  const times = (target: string, watch: boolean) => row(target, watch)?.times;
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
  // runs saved before these were measured have neither: n/a
  const spread = (t: number[] | undefined) =>
    t?.length
      ? `p50 ${formatMs(percentile(t, 50))}, p99 ${formatMs(percentile(t, 99))}, max ${formatMs(percentile(t, 100))}`
      : "n/a";
  const split = (target: string) => {
    const r = row(target, true);
    return `found ${spread(r?.found)}; to the watcher ${spread(r?.toWatcher)}`;
  };
  const slow = (c: DiskCounts | undefined) =>
    c
      ? `${c.over32ms !== undefined ? `${c.over32ms} over 32 ms, ` : ""}${c.over64ms} over 64 ms, ${c.over128ms} ` +
        `over 128 ms, of ${c.total}`
      : "n/a";
  rows.push([
    "of which, watch on: kill → first failing check (found); → watcher's event",
    "",
    `server process: ${split("process")}. Apache: ${split("apache")}. etcd's disk in the run: WAL fsyncs ${
      slow(killed?.disk?.walFsync)
    }; backend commits ${slow(killed?.disk?.backendCommit)}`,
    "n/a",
    "n/a",
    "",
  ]);
  return rows;
}
