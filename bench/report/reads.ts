/**
 * The reads' rows of bench/README.md's main table (bench/reads.ts): `registry
 * ls` against etcdctl (empty: the start; 1,000; 10,000), its peak memory
 * over very large values against etcdctl's, and `registry watch`'s latency.
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
    // under every runtime measured (deno and node), as the target says
    return Object.values(l.registry).every((t) => summarize(t).median <= 2 * summarize(l.etcdctl).median);
  };
  // where a listing's time goes: the empty listing is the start, the rest is reading and printing the records
  const split = (n: number) => {
    const [none, all] = [listing(0), listing(n)];
    if (!none || !all) return "n/a";
    const part = (empty: number[], full: number[]) => {
      const start = summarize(empty).median;
      return `start ${formatMs(start)} + records ${formatMs(summarize(full).median - start)}`;
    };
    return Object.keys(all.registry).map((r) => `${r}: ${part(none.registry[r] ?? [], all.registry[r])}`)
      .join("; ") + `; etcdctl: ${part(none.etcdctl, all.etcdctl)}`;
  };
  // the start's parts: the runtime alone, the bundle loaded (--help), the request (the empty listing less the load)
  const startParts = () => {
    const [none, start] = [listing(0), reads?.start];
    if (!none || !start) return "n/a";
    return Object.keys(start.loaded).map((r) => {
      const [runtime, loaded] = [summarize(start.runtime[r]).median, summarize(start.loaded[r]).median];
      const request = summarize(none.registry[r] ?? []).median - loaded;
      return `${r}: the runtime ${formatMs(runtime)} + the bundle loaded ${formatMs(loaded - runtime)} + the ` +
        `request ${formatMs(request)}`;
    }).join("; ") + `; etcdctl all told ${formatMs(summarize(none.etcdctl).median)}`;
  };
  // the records' part against what ls() does with them in-process (deno, cold)
  const recordParts = () => {
    const [none, all, work] = [listing(0), listing(reads?.recordWork?.records ?? -1), reads?.recordWork];
    if (!none || !all || !work) return "n/a";
    const deno = all.registry.deno && none.registry.deno
      ? summarize(all.registry.deno).median - summarize(none.registry.deno).median
      : undefined;
    return `decoded, checked and made rows ${formatMs(work.decodeMs)}, sorted and laid out ${
      formatMs(work.formatMs)
    } (in this process, deno, first pass)${
      deno === undefined
        ? ""
        : `; the rest of deno's ${formatMs(deno)} (reading from etcd, collecting garbage, writing): ${
          formatMs(Math.max(0, deno - work.decodeMs - work.formatMs))
        }`
    }`;
  };
  const large = reads?.large;
  const peak = (kib: number[]) => summarize(kib).median;
  const peaks = large
    ? Object.entries(large.registry).map(([r, run]) =>
      `${r}: ${(peak(run.peakKiB) / 1024).toFixed(0)} MiB (${
        (peak(run.peakKiB) / peak(large.etcdctl.peakKiB)).toFixed(1)
      }x)`
    ).join("; ") + `; etcdctl ${(peak(large.etcdctl.peakKiB) / 1024).toFixed(0)} MiB`
    : "n/a";
  const peaksMet = large &&
    Object.values(large.registry).every((run) => peak(run.peakKiB) <= 2 * peak(large.etcdctl.peakKiB));
  return [
    // what starting the process costs: no record to read, the same round trip to etcd
    ["`registry ls` of none: the start (x etcdctl)", "", ls(0), "n/a", "n/a", ""],
    ["`registry ls` of 1,000 (x etcdctl)", "", ls(1000), "n/a", "n/a", ""],
    ["`registry ls` of 10,000 (x etcdctl)", "at most 2x etcdctl", ls(10_000), "n/a", "n/a", met(lsRatio(10_000))],
    ["of which: the start (the empty listing's time), and the records", "", split(10_000), "n/a", "n/a", ""],
    [
      "of which, the start: the runtime alone (an empty module), the bundle loaded (`--help`), the request",
      "",
      startParts(),
      "n/a",
      "n/a",
      "",
    ],
    [
      `of which, the records: ls's own work on ${(reads?.recordWork?.records ?? 10_000).toLocaleString("en-US")}`,
      "",
      recordParts(),
      "n/a",
      "n/a",
      "",
    ],
    [
      `\`registry ls --json\` of ${large?.values ?? 100} values of ${
        ((large?.valueBytes ?? 1_450_000) / 1e6).toFixed(2)
      } MB: peak memory (x etcdctl's)`,
      "at most 2x etcdctl's",
      peaks,
      "n/a",
      "n/a",
      met(peaksMet),
    ],
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
