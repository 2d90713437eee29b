/**
 * How registry reads scale: `registry ls` over 1,000 and 10,000 records
 * beside `etcdctl get --prefix` of the same keys in the same run (the wall
 * time of each whole process, median of `--reps`, and their ratio; an empty
 * prefix first shows what starting the process costs; then that start in
 * parts, the runtime alone and the bundle loaded; and ls's own work on the
 * records, timed in this process), and `registry watch`
 * latency: from just before a put or delete to its line on the watcher's
 * stdout, p50 and p99 over `--changes` changes made one after another. Last,
 * 100 values of 1.45 MB: the peak resident memory (GNU time, /usr/bin/time)
 * of `registry ls --json` against `etcdctl get --prefix`'s.
 *
 * ```sh
 * node_modules/.bin/deno run -A bench/reads.ts [--sizes 1000,10000] [--reps 5] [--changes 1000]
 * node_modules/.bin/deno run -A bench/reads.ts --quick     # 2 reps, 200 changes, for development
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import type { Etcd } from "../lib/etcd.ts";
import { decodeEntry, DEFAULT_PREFIX, encodeRecord, instanceKey } from "../lib/record.ts";
import { byRank, entryRank, formatRows, tableRow } from "../lib/show.ts";
import { delay, EtcdCluster, ROOT } from "../testbed/testbed.ts";
import {
  benchmark,
  commandFor,
  formatMs,
  mainRuntime,
  now,
  percentile,
  type Runtime,
  runtimes,
  summarize,
} from "./lib.ts";

/** Wall times in ms of one listing size. */
export interface ListingFigures {
  records: number;
  etcdctl: number[];
  registry: Record<string, number[]>;
}

/** One command's runs over the large values: wall time and peak resident memory (GNU time's %M). */
export interface PeakRuns {
  ms: number[];
  peakKiB: number[];
}

/** `registry ls --json` and `etcdctl get` of a few very large values: how much memory each holds at its peak. */
export interface LargeFigures {
  values: number;
  valueBytes: number;
  etcdctl: PeakRuns;
  registry: Record<string, PeakRuns>;
}

/**
 * Where an empty listing's time goes, each a whole process's wall time: the
 * runtime alone (an empty module, run as the bundle is run), the bundle
 * loaded (`registry --help`: every module evaluated, no connection), per
 * runtime; the empty listing less the latter is its one request to etcd.
 */
export interface StartFigures {
  runtime: Record<string, number[]>;
  loaded: Record<string, number[]>;
}

/**
 * What `registry ls` does with 10,000 records once it has them, timed in
 * this process (deno) on its first pass, cold as a listing's process is:
 * each value decoded and checked as hostile input, ranked and made a row
 * (ms), then the rows sorted and laid out in columns (ms).
 */
export interface RecordWork {
  records: number;
  decodeMs: number;
  formatMs: number;
}

export interface ReadsFigures {
  listings: ListingFigures[];
  /** Absent from runs before they were measured. */
  start?: StartFigures;
  recordWork?: RecordWork;
  /** Absent from runs before it was measured. */
  large?: LargeFigures;
  watch: { runtime: string; changes: number; latencies: number[]; p50: number; p99: number; worst: number };
}

const SERVICES = 10;
/** The large values: as many, and as large (near etcd's 1.5 MiB request limit), as the memory target says. */
const LARGE_VALUES = 100;
const LARGE_VALUE_BYTES = 1_450_000;

/** The n-th test record: ten services, addresses spread over 10.x.y.z. */
function testRecord(n: number): { key: string; value: string } {
  const service = `svc${n % SERVICES}`;
  const ip = `10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}`;
  const port = 8000 + (n % 1000);
  return {
    key: instanceKey(DEFAULT_PREFIX, service, ip, port),
    value: encodeRecord({
      host: `host-${n % 500}`,
      ipv4_addr: ip,
      port,
      service,
      registered_at: new Date().toISOString(),
      meta: { zone: `z${n % 3}` },
    }),
  };
}

/** Puts records `from` to `to` - 1 (no lease), many at a time. */
async function populate(etcd: Etcd, from: number, to: number): Promise<void> {
  let next = from;
  const worker = async () => {
    while (next < to) {
      const { key, value } = testRecord(next++);
      await etcd.putIfAbsent(key, value, "0");
    }
  };
  await Promise.all(Array.from({ length: 32 }, worker));
}

/** Runs a command to its end; returns its wall time in ms and its stdout's line count. */
async function timeCommand(command: string, args: string[], env: Record<string, string> = {}) {
  const at = now();
  const out = await new Deno.Command(command, { args, env, cwd: ROOT, stdout: "piped", stderr: "piped" }).output();
  const ms = now() - at;
  if (!out.success) throw new Error(`${command} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  const text = new TextDecoder().decode(out.stdout);
  return { ms, lines: text.split("\n").filter(Boolean).length };
}

/** Runs a command to its end under GNU time; returns its wall time in ms and its peak resident memory in KiB. */
async function peakOf(command: string, args: string[], env: Record<string, string> = {}) {
  const at = now();
  const out = await new Deno.Command("/usr/bin/time", {
    args: ["-f", "peak %M", command, ...args],
    env,
    cwd: ROOT,
    stdout: "null",
    stderr: "piped",
  }).output();
  const ms = now() - at;
  const stderr = new TextDecoder().decode(out.stderr);
  const peak = stderr.match(/^peak (\d+)$/m);
  if (!out.success || !peak) throw new Error(`${command} ${args.join(" ")} failed: ${stderr.slice(-2000)}`);
  return { ms, peakKiB: Number(peak[1]) };
}

/**
 * `values` records of about `valueBytes` each (a meta field that size), in a
 * service of their own; then `etcdctl get --prefix` and `registry ls --json`
 * of that service, `reps` times each, under GNU time: a listing's peak memory
 * against etcdctl's for values near etcd's request limit (1.5 MiB).
 */
async function large(endpoint: string, etcd: Etcd, values: number, valueBytes: number, reps: number) {
  const service = "large";
  const blob = "x".repeat(valueBytes);
  for (let i = 0; i < values; i++) {
    const ip = `10.200.0.${i + 1}`;
    const value = encodeRecord({
      host: "bench",
      ipv4_addr: ip,
      port: 8080,
      service,
      registered_at: new Date().toISOString(),
      meta: { blob },
    });
    await etcd.putIfAbsent(instanceKey(DEFAULT_PREFIX, service, ip, 8080), value, "0");
  }
  const figures: LargeFigures = { values, valueBytes, etcdctl: { ms: [], peakKiB: [] }, registry: {} };
  const prefix = `${DEFAULT_PREFIX}/${service}/`;
  const etcdctl = () => peakOf("etcdctl", [`--endpoints=${endpoint}`, "get", "--prefix", prefix], { ETCDCTL_API: "3" });
  const registry = (r: Runtime) =>
    peakOf(...commandFor("registry", r, ["ls", service, "--json", `--endpoints=${endpoint}`]));
  const keep = (into: PeakRuns, run: { ms: number; peakKiB: number }) => {
    into.ms.push(run.ms);
    into.peakKiB.push(run.peakKiB);
  };
  for (const r of runtimes()) figures.registry[r] = { ms: [], peakKiB: [] };
  for (let i = 0; i < reps; i++) {
    keep(figures.etcdctl, await etcdctl());
    for (const r of runtimes()) keep(figures.registry[r], await registry(r));
  }
  const mib = (kib: number[]) => `${(summarize(kib).median / 1024).toFixed(0)} MiB`;
  const base = summarize(figures.etcdctl.peakKiB).median;
  console.log(
    `${values} values of ${(valueBytes / 1e6).toFixed(2)} MB: etcdctl get --prefix peak ${
      mib(figures.etcdctl.peakKiB)
    }, ` +
      `${formatMs(summarize(figures.etcdctl.ms).median)}`,
  );
  for (const r of runtimes()) {
    const run = figures.registry[r];
    console.log(
      `${"".padStart(15)} registry ls --json (${r}) peak ${mib(run.peakKiB)}  ` +
        `${(summarize(run.peakKiB).median / base).toFixed(2)}x etcdctl, ${formatMs(summarize(run.ms).median)}`,
    );
  }
  return figures;
}

/**
 * The runtime alone and the bundle loaded, `reps` times each per runtime
 * (after one untimed run of each): what an empty listing's start is made of.
 */
async function startParts(reps: number): Promise<StartFigures> {
  const dir = await Deno.makeTempDir({ prefix: "secretary-reads-" });
  try {
    const empty = `${dir}/empty.mjs`;
    await Deno.writeTextFile(empty, "");
    const figures: StartFigures = { runtime: {}, loaded: {} };
    for (const r of runtimes()) {
      // the same runtime and flags as the listing, the bundle's path swapped for an empty module
      const [command, args] = commandFor("registry", r, ["--help"]);
      const bare = args.filter((a) => a !== "--help").map((a) => (a === "dist/registry.mjs" ? empty : a));
      await timeCommand(command, bare);
      await timeCommand(command, args);
      figures.runtime[r] = [];
      figures.loaded[r] = [];
      for (let i = 0; i < reps; i++) {
        figures.runtime[r].push((await timeCommand(command, bare)).ms);
        figures.loaded[r].push((await timeCommand(command, args)).ms);
      }
      const med = (ms: number[]) => formatMs(summarize(ms).median);
      console.log(
        `  start (${r}): the runtime alone ${med(figures.runtime[r])}, the bundle loaded ${med(figures.loaded[r])}`,
      );
    }
    return figures;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** registry.ts ls()'s work on `records` test records, timed on its first pass in this process (see RecordWork). */
function recordWork(records: number): RecordWork {
  const values = Array.from({ length: records }, (_, n) => testRecord(n));
  const nowMs = Date.now();
  const at = now();
  const rows = values.map((v) => {
    const e = decodeEntry(DEFAULT_PREFIX, v.key, v.value);
    return { rank: entryRank(e), cells: tableRow(e, nowMs) };
  });
  const decoded = now();
  const lines = formatRows(byRank(rows).map((r) => r.cells));
  const done = now();
  if (lines.length !== records + 1) throw new Error(`formatRows gave ${lines.length} lines for ${records} records`);
  const work = { records, decodeMs: decoded - at, formatMs: done - decoded };
  console.log(
    `  ${records} records in this process: decoded, checked and made rows ${
      formatMs(work.decodeMs)
    }, sorted and laid out ${formatMs(work.formatMs)}`,
  );
  return work;
}

async function listings(endpoint: string, etcd: Etcd, sizes: number[], reps: number): Promise<ListingFigures[]> {
  const all: ListingFigures[] = [];
  let populated = 0;
  for (const size of [0, ...sizes]) {
    await populate(etcd, populated, size);
    populated = size;
    const figures: ListingFigures = { records: size, etcdctl: [], registry: {} };
    const etcdctl = () =>
      timeCommand("etcdctl", [`--endpoints=${endpoint}`, "get", "--prefix", "/services/"], { ETCDCTL_API: "3" });
    const registry = (runtime: Runtime) =>
      timeCommand(...commandFor("registry", runtime, ["ls", `--endpoints=${endpoint}`]));
    // one untimed run of each first: file caches, deno's module cache
    await etcdctl();
    for (const r of runtimes()) {
      const { lines } = await registry(r);
      if (lines !== size + 1) console.log(`  warning: registry ls (${r}) printed ${lines} lines, expected ${size + 1}`);
      figures.registry[r] = [];
    }
    for (let i = 0; i < reps; i++) {
      figures.etcdctl.push((await etcdctl()).ms);
      for (const r of runtimes()) figures.registry[r].push((await registry(r)).ms);
    }
    const base = summarize(figures.etcdctl).median;
    console.log(`${String(size).padStart(6)} records: etcdctl get --prefix ${formatMs(base)}`);
    for (const r of runtimes()) {
      const median = summarize(figures.registry[r]).median;
      console.log(`${"".padStart(15)} registry ls (${r}) ${formatMs(median)}  ${(median / base).toFixed(2)}x etcdctl`);
    }
    all.push(figures);
  }
  return all;
}

/** A child's stdout as lines, each stamped with when it arrived. */
class Lines {
  #queue: { line: string; at: number }[] = [];
  #wake: () => void = () => {};

  constructor(stream: ReadableStream<Uint8Array>) {
    void (async () => {
      const decoder = new TextDecoder();
      let partial = "";
      for await (const chunk of stream) {
        const at = now();
        const lines = (partial + decoder.decode(chunk, { stream: true })).split("\n");
        partial = lines.pop()!;
        for (const line of lines) this.#queue.push({ line, at });
        this.#wake();
      }
    })();
  }

  async next(timeoutMs = 5000): Promise<{ line: string; at: number }> {
    const deadline = Date.now() + timeoutMs;
    while (this.#queue.length === 0) {
      if (Date.now() > deadline) throw new Error(`no line within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 50);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    return this.#queue.shift()!;
  }
}

async function watchLatency(endpoint: string, etcd: Etcd, changes: number): Promise<ReadsFigures["watch"]> {
  const runtime = mainRuntime();
  const [command, args] = commandFor("registry", runtime, ["watch", "latency", `--endpoints=${endpoint}`]);
  const child = new Deno.Command(command, { args, cwd: ROOT, stdout: "piped", stderr: "null", stdin: "null" })
    .spawn();
  try {
    const lines = new Lines(child.stdout);
    const key = (i: number) => instanceKey(DEFAULT_PREFIX, "latency", `127.3.${(i >> 8) & 255}.${i & 255}`, 8080);
    const value = (i: number) =>
      encodeRecord({
        host: "bench",
        ipv4_addr: `127.3.${(i >> 8) & 255}.${i & 255}`,
        port: 8080,
        service: "latency",
        registered_at: new Date().toISOString(),
        meta: {},
      });
    // ready once a put shows up: the watcher has listed and is watching
    const ready = key(65535);
    for (let attempt = 0;; attempt++) {
      await etcd.putIfAbsent(ready, value(65535), "0");
      try {
        await lines.next(1000);
        break;
      } catch (err) {
        if (attempt > 30) throw err;
      }
    }
    await etcd.deleteIfLease(ready, "0");
    await lines.next();
    const latencies: number[] = [];
    for (let i = 0; i < changes; i++) {
      const n = i >> 1; // each instance is put, then deleted
      const at = now();
      if (i % 2 === 0) await etcd.putIfAbsent(key(n), value(n), "0");
      else await etcd.deleteIfLease(key(n), "0");
      const { line, at: seen } = await lines.next();
      const expected = `${i % 2 === 0 ? "+" : "-"} latency ${key(n).split("/").pop()}`;
      if (!line.startsWith(expected)) throw new Error(`watch printed "${line}", expected "${expected}"`);
      latencies.push(seen - at);
      await delay(2 + Math.random() * 3);
    }
    const figures = {
      runtime,
      changes,
      latencies,
      p50: percentile(latencies, 50),
      p99: percentile(latencies, 99),
      worst: Math.max(...latencies),
    };
    console.log(
      `registry watch (${runtime}), ${changes} changes: p50 ${formatMs(figures.p50)}  p99 ${
        formatMs(figures.p99)
      }  worst ${formatMs(figures.worst)}`,
    );
    return figures;
  } finally {
    try {
      child.kill("SIGTERM");
    } catch { /* already gone */ }
    await child.status;
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      sizes: { type: "string", default: "1000,10000" },
      reps: { type: "string" },
      changes: { type: "string" },
      quick: { type: "boolean", default: false },
      json: { type: "string" },
    },
  });
  const cluster = await EtcdCluster.create(1);
  const etcd = cluster.client(5000);
  const cleanup = async () => {
    etcd.close();
    await cluster.stop();
  };
  await benchmark(values.json, cleanup, async (): Promise<ReadsFigures> => {
    await cluster.start();
    const endpoint = cluster.endpoints[0];
    const reps = Number(values.reps ?? (values.quick ? 2 : 5));
    const sizes = values.sizes.split(",").map(Number);
    return {
      // first, before this process has run any of it: cold, as each listing's process is
      recordWork: recordWork(Math.max(...sizes)),
      listings: await listings(endpoint, etcd, sizes, reps),
      start: await startParts(reps),
      watch: await watchLatency(endpoint, etcd, Number(values.changes ?? (values.quick ? 200 : 1000))),
      // last: the watcher above lists the whole registry first, and these are 145 MB
      large: await large(endpoint, etcd, LARGE_VALUES, LARGE_VALUE_BYTES, values.quick ? 1 : 3),
    };
  });
}

if (import.meta.main) await main();
