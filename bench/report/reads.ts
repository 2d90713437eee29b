/**
 * The reads' rows of bench/README.md's main table (bench/reads.ts): `registry
 * ls` against etcdctl, and `registry watch`'s latency.
 *
 * @module
 */
import { formatMs, summarize } from "../lib.ts";
import type { ReadsFigures } from "../reads.ts";
import { met } from "./table.ts";

export function readsRows(reads: ReadsFigures | undefined): string[][] {
  const listing = (n: number) => reads?.listings.find((l) => l.records === n);
  const ls = (n: number) => {
    const l = listing(n);
    if (!l) return "n/a";
    const base = summarize(l.etcdctl).median;
    return Object.entries(l.registry).map(([r, t]) => {
      const m = summarize(t).median;
      return `${r}: ${formatMs(m)} (${(m / base).toFixed(1)}x)`;
    }).join("; ") + `; etcdctl ${formatMs(base)}`;
  };
  const lsRatio = (n: number) => {
    const l = listing(n);
    if (!l) return undefined;
    const first = Object.values(l.registry)[0];
    return summarize(first).median <= 2 * summarize(l.etcdctl).median;
  };
  return [
    ["`registry ls` of 1,000 (x etcdctl)", "", ls(1000), "n/a", "n/a", ""],
    ["`registry ls` of 10,000 (x etcdctl)", "at most 2x etcdctl", ls(10_000), "n/a", "n/a", met(lsRatio(10_000))],
    [
      `\`registry watch\` latency, ${reads?.watch.changes ?? "n/a"} changes`,
      "p99 50 ms",
      reads
        ? `p50 ${formatMs(reads.watch.p50)}, p99 ${formatMs(reads.watch.p99)}, worst ${formatMs(reads.watch.worst)}`
        : "n/a",
      "n/a",
      "n/a",
      met(reads && reads.watch.p99 <= 50),
    ],
  ];
}
