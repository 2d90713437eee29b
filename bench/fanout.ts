#!/usr/bin/env -S deno run --allow-all
/**
 * Watch fan-out: 1, 10 and 100 followers of one service while its instances
 * churn, against a three-member etcd on 127.5.0.1, each follower with its own
 * connection, directly to the members or through one `etcd grpc-proxy`
 * (127.5.1.n, a fresh one a run). A follower is lib/follow.ts's `follow()`,
 * the list-then-watch loop `registry watch` and `registry sync` both run,
 * with its liveness probe (a watch progress request every 2 s); with
 * `:stream` it is one bare watch stream (lib/etcd.ts's `watch()`, no probe),
 * which shows what the proxy itself delivers. For each run: etcd's CPU (the
 * leader, all members, the proxy), the watchers the members hold, and watch
 * latency, from just before each put or delete to each follower's callback:
 * p50, p99 and worst over every delivery, and how many changes reached a
 * follower only through a new listing after its watch broke.
 *
 * The followers share this one process (a real one runs on each proxy host):
 * with 100 of them, one change is decoded 100 times here, one after another,
 * so the p99 includes this process's own queue; its CPU and event-loop lag
 * are printed beside the figures.
 *
 * ```sh
 * node_modules/.bin/deno run -A bench/fanout.ts                 # 1, 10, 100 watchers x direct, proxy, proxy:stream
 * node_modules/.bin/deno run -A bench/fanout.ts --quick         # 1 and 10 watchers, 100 changes
 * node_modules/.bin/deno run -A bench/fanout.ts --watchers 100 --runs proxy,direct:stream --changes 300 --rate 20
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { describeError, Etcd, type StoredValue, type WatchEvent, type WatchHandle } from "../lib/etcd.ts";
import { follow } from "../lib/follow.ts";
import { DEFAULT_PREFIX, encodeRecord, instanceKey, servicePrefix } from "../lib/record.ts";
import { GrpcProxy } from "../testbed/grpcproxy.ts";
import { delay, EtcdCluster } from "../testbed/testbed.ts";
// shared with the lease-load phase (they belong in lib.ts once both land)
import { cpuOf, leaderOf } from "./leases.ts";
import { LoopLag } from "./leases/thread.ts";
import { benchmark, cores, formatMs, now, percentile, scrapeMetrics } from "./lib.ts";

/** The service the followers follow. */
const SERVICE = "web";

/** How the followers reach etcd, and what a follower is. */
export interface FanoutRunKind {
  path: "direct" | "proxy";
  /** `follow`: lib/follow.ts as registry watch and sync run it; `stream`: one watch stream, no probe. */
  follower: "follow" | "stream";
}

export interface FanoutRun extends FanoutRunKind {
  watchers: number;
  changes: number;
  seconds: number;
  /** Changes delivered to followers by their watch, of watchers x changes. */
  deliveries: number;
  expected: number;
  /** Changes a follower saw only in a new listing (its watch broke meanwhile), or never. */
  missed: number;
  /** Times a follower's watch broke (follow: `waiting`), and listings after the first. */
  breaks: number;
  relists: number;
  p50Ms: number;
  p99Ms: number;
  worstMs: number;
  /** CPU, in cores, over the churn: the leader, all members, the proxy, this process. */
  leaderCpu: number;
  membersCpu: number;
  proxyCpu: number;
  benchCpu: number;
  /** CPU milliseconds of all members and the proxy per change. */
  etcdCpuMsPerChange: number;
  /** Watchers and watch streams the members held in the middle of the churn (etcd_debugging_mvcc_*). */
  memberWatchers: number;
  memberWatchStreams: number;
  loopLagP99Ms: number;
  /** A quiet window after the churn (no change at all): watch breaks and listings again, and etcd's CPU. */
  quietSeconds: number;
  quietBreaks: number;
  quietRelists: number;
  quietMembersCpu: number;
  quietProxyCpu: number;
  error?: string;
}

export interface FanoutFigures {
  instances: number;
  ratePerSecond: number;
  quietSeconds: number;
  runs: FanoutRun[];
}

interface Config {
  watchers: number[];
  runs: FanoutRunKind[];
  changes: number;
  rate: number;
  instances: number;
  quietSeconds: number;
  json?: string;
}

function parseConfig(args: string[]): Config {
  const { values } = parseArgs({
    args,
    options: {
      watchers: { type: "string" },
      runs: { type: "string", default: "direct,proxy,proxy:stream" },
      changes: { type: "string" },
      rate: { type: "string", default: "20" },
      instances: { type: "string", default: "100" },
      quiet: { type: "string" },
      quick: { type: "boolean", default: false },
      json: { type: "string" },
    },
  });
  const list = (text: string) => text.split(",").map((s) => s.trim()).filter(Boolean);
  const runs = list(values.runs).map((text): FanoutRunKind => {
    const [path, follower = "follow"] = text.split(":");
    if ((path !== "direct" && path !== "proxy") || (follower !== "follow" && follower !== "stream")) {
      throw new Error(`--runs: ${text}: expected direct or proxy, with :follow (the default) or :stream`);
    }
    return { path, follower };
  });
  return {
    watchers: list(values.watchers ?? (values.quick ? "1,10" : "1,10,100")).map(Number),
    runs,
    changes: Number(values.changes ?? (values.quick ? 100 : 400)),
    rate: Number(values.rate),
    instances: Number(values.instances),
    quietSeconds: Number(values.quiet ?? (values.quick ? 6 : 10)),
    json: values.json,
  };
}

/** Sums a metric (any labels) over members. */
async function memberMetric(cluster: EtcdCluster, name: string): Promise<number> {
  let sum = 0;
  for (const m of cluster.members) {
    const metrics = await scrapeMetrics(m.clientUrl);
    for (const [key, value] of metrics) if (key === name || key.startsWith(`${name}{`)) sum += value;
  }
  return sum;
}

/** The record of churn key `n`. */
function churnRecord(n: number): { key: string; value: string } {
  const ip = `10.9.${(n >> 8) & 255}.${n & 255}`;
  return {
    key: instanceKey(DEFAULT_PREFIX, SERVICE, ip, 8080),
    value: encodeRecord({
      host: `host-${n}`,
      ipv4_addr: ip,
      port: 8080,
      service: SERVICE,
      registered_at: new Date().toISOString(),
      meta: {},
    }),
  };
}

/** One follower: counts what it is told, timing each change against when it was made. */
class Follower {
  listings = 0;
  breaks = 0;
  deliveries = 0;
  latencies: number[] = [];
  constructor(readonly sent: Map<string, number>) {}
  listed(_values: StoredValue[], _revision: string): void {
    this.listings++;
  }
  changed(event: WatchEvent): void {
    const at = now();
    const sentAt = this.sent.get(`${event.type} ${event.key}`);
    if (sentAt === undefined) return; // not a churn change of this run
    this.deliveries++;
    this.latencies.push(at - sentAt);
  }
  waiting(_reason: unknown): void {
    this.breaks++;
  }
  answered(): void {}
}

/** What runOne() started, so an interrupted benchmark can stop it. */
let current: (() => Promise<void>) | undefined;

/** Puts the service's steady instances, which every follower lists first, under `lease`. */
async function putInstances(writer: Etcd, lease: string, count: number): Promise<void> {
  for (let i = 0; i < count; i += 50) {
    await Promise.all(
      Array.from({ length: Math.min(50, count - i) }, (_, j) => {
        const n = i + j;
        const ip = `10.8.${(n >> 8) & 255}.${n & 255}`;
        const record = { host: `host-${n}`, ipv4_addr: ip, port: 8080, service: SERVICE, meta: {} };
        return writer.putIfAbsent(
          instanceKey(DEFAULT_PREFIX, SERVICE, ip, 8080),
          encodeRecord({ ...record, registered_at: new Date().toISOString() }),
          lease,
        );
      }),
    );
  }
}

/**
 * One run on a fresh cluster (127.5.0.n; a closed client's watch stays on a
 * member until its connection goes, so watchers of an earlier run would get
 * this run's events), and a fresh proxy on 127.5.n.1.
 */
async function runOne(config: Config, n: number, watchers: number, kind: FanoutRunKind): Promise<FanoutRun> {
  const cluster = await EtcdCluster.create(3, { host: `127.5.0.${n}` });
  const writer = cluster.client(5000);
  const stop = new AbortController();
  const clients: Etcd[] = [];
  const handles: WatchHandle[] = [];
  const lag = new LoopLag();
  let proxy: GrpcProxy | undefined;
  const teardown = async () => {
    stop.abort();
    lag.stop();
    for (const h of handles) h.cancel();
    for (const c of clients) c.close();
    writer.close();
    await proxy?.stop();
    await cluster.stop();
  };
  current = teardown;
  const prefix = servicePrefix(DEFAULT_PREFIX, SERVICE);
  const sent = new Map<string, number>();
  const followers = Array.from({ length: watchers }, () => new Follower(sent));
  const run: FanoutRun = {
    ...kind,
    watchers,
    changes: config.changes,
    seconds: NaN,
    deliveries: 0,
    expected: watchers * config.changes,
    missed: NaN,
    breaks: 0,
    relists: 0,
    p50Ms: NaN,
    p99Ms: NaN,
    worstMs: NaN,
    leaderCpu: NaN,
    membersCpu: NaN,
    proxyCpu: NaN,
    benchCpu: NaN,
    etcdCpuMsPerChange: NaN,
    memberWatchers: NaN,
    memberWatchStreams: NaN,
    loopLagP99Ms: NaN,
    quietSeconds: config.quietSeconds,
    quietBreaks: NaN,
    quietRelists: NaN,
    quietMembersCpu: NaN,
    quietProxyCpu: NaN,
  };
  try {
    await cluster.start();
    const lease = await writer.grantLease(3600); // outlives the run: nothing need keep it alive
    await putInstances(writer, lease, config.instances);
    if (kind.path === "proxy") proxy = await GrpcProxy.start(cluster.endpoints, `127.5.${n}.1`);
    const endpoints = proxy ? [proxy.url] : cluster.endpoints;
    for (const f of followers) {
      const etcd = new Etcd({ endpoints });
      clients.push(etcd);
      if (kind.follower === "follow") {
        void follow(etcd, prefix, f, stop.signal);
      } else {
        const { values, revision } = await etcd.list(prefix);
        f.listed(values, revision);
        const handle = await etcd.watch(prefix, String(BigInt(revision) + 1n), (e) => f.changed(e));
        handles.push(handle);
        handle.done.then(() => !stop.signal.aborted && f.breaks++);
      }
    }
    const readyBy = now() + 60_000;
    while (followers.some((f) => f.listings === 0) && now() < readyBy) await delay(50);
    if (followers.some((f) => f.listings === 0)) throw new Error("not every follower listed within 60 s");
    await delay(1000);
    const leader = await leaderOf(cluster);
    const pids = cluster.members.map((m) => m.pid);
    const sample = () => ({
      at: now(),
      leader: cpuOf([leader.pid]),
      members: cpuOf(pids),
      proxy: cpuOf([proxy?.pid]),
      bench: cpuOf([Deno.pid]),
      breaks: followers.reduce((s, f) => s + f.breaks, 0),
      listings: followers.reduce((s, f) => s + f.listings, 0),
    });
    lag.start();
    const before = sample();
    // the churn: instances of the service registered and deregistered in turn, as the registrar writes them
    const pool = Math.max(10, Math.min(200, config.rate * 5));
    const present = new Set<number>();
    const spacingMs = 1000 / config.rate;
    for (let i = 0; i < config.changes; i++) {
      const wait = before.at + i * spacingMs - now();
      if (wait > 1) await delay(wait);
      const slot = i % pool;
      const { key, value } = churnRecord(slot);
      if (present.has(slot)) {
        sent.set(`delete ${key}`, now());
        await writer.deleteIfLease(key, lease);
        present.delete(slot);
      } else {
        sent.set(`put ${key}`, now());
        await writer.putIfAbsent(key, value, lease);
        present.add(slot);
      }
      if (i === Math.floor(config.changes / 2)) {
        run.memberWatchers = await memberMetric(cluster, "etcd_debugging_mvcc_watcher_total");
        run.memberWatchStreams = await memberMetric(cluster, "etcd_debugging_mvcc_watch_stream_total");
      }
    }
    // the last deliveries: everything delivered, or 5 s
    const drainBy = now() + 5000;
    while (now() < drainBy && followers.some((f) => f.deliveries < config.changes)) await delay(20);
    const after = sample();
    lag.stop();
    const seconds = (after.at - before.at) / 1000;
    const latencies = followers.flatMap((f) => f.latencies);
    run.seconds = seconds;
    run.deliveries = followers.reduce((s, f) => s + f.deliveries, 0);
    run.missed = run.expected - run.deliveries;
    run.breaks = after.breaks - before.breaks;
    run.relists = after.listings - before.listings;
    if (latencies.length) {
      run.p50Ms = percentile(latencies, 50);
      run.p99Ms = percentile(latencies, 99);
      run.worstMs = latencies.reduce((a, b) => Math.max(a, b), 0);
    }
    run.leaderCpu = (after.leader - before.leader) / seconds;
    run.membersCpu = (after.members - before.members) / seconds;
    run.proxyCpu = (after.proxy - before.proxy) / seconds;
    run.benchCpu = (after.bench - before.bench) / seconds;
    run.etcdCpuMsPerChange = ((after.members - before.members + after.proxy - before.proxy) * 1000) / config.changes;
    run.loopLagP99Ms = lag.samples.length ? percentile(lag.samples, 99) : NaN;

    // quiet: nothing changes; a follower whose watch holds does nothing, and neither should etcd
    await delay(config.quietSeconds * 1000);
    const quiet = sample();
    const quietSeconds = (quiet.at - after.at) / 1000;
    run.quietSeconds = quietSeconds;
    run.quietBreaks = quiet.breaks - after.breaks;
    run.quietRelists = quiet.listings - after.listings;
    run.quietMembersCpu = (quiet.members - after.members) / quietSeconds;
    run.quietProxyCpu = (quiet.proxy - after.proxy) / quietSeconds;
  } catch (err) {
    run.error = describeError(err);
    console.log(`  failed: ${run.error}`);
  } finally {
    await teardown();
    current = undefined;
  }
  return run;
}

/** A run's kind as the tables name it. */
export function fanoutKindName(kind: FanoutRunKind): string {
  const path = kind.path === "proxy" ? "gRPC proxy" : "direct";
  return kind.follower === "follow" ? path : `${path}, watch stream without the probe`;
}

function describeRun(r: FanoutRun): string {
  return [
    `latency p50 ${formatMs(r.p50Ms)}, p99 ${formatMs(r.p99Ms)}, worst ${formatMs(r.worstMs)} ` +
    `(${r.deliveries} of ${r.expected} delivered by the watch; breaks ${r.breaks}, listings again ${r.relists})`,
    `CPU leader ${cores(r.leaderCpu)}, members ${cores(r.membersCpu)}, proxy ${cores(r.proxyCpu)}, ` +
    `${r.etcdCpuMsPerChange.toFixed(1)} ms of etcd CPU a change; this process ${cores(r.benchCpu)} ` +
    `(loop lag p99 ${formatMs(r.loopLagP99Ms)})`,
    `the members held ${r.memberWatchers} watchers on ${r.memberWatchStreams} streams`,
    `quiet ${r.quietSeconds.toFixed(0)} s: watch breaks ${r.quietBreaks}, listings again ${r.quietRelists}; ` +
    `CPU members ${cores(r.quietMembersCpu)}, proxy ${cores(r.quietProxyCpu)}`,
  ].join("\n  ");
}

/** The fan-out table, in Markdown, for bench/README.md. */
export function fanoutTable(figures: FanoutFigures): string {
  const header = [
    "watchers",
    "path",
    "watch p50 / p99 (worst)",
    "x one direct watcher's p99",
    "delivered by the watch",
    "watch breaks (listings again)",
    "leader CPU",
    "all members' CPU",
    "proxy CPU",
    "etcd CPU a change",
    "watchers the members held",
    `${figures.quietSeconds} s quiet: watch breaks (listings again)`,
    `${figures.quietSeconds} s quiet: members' (proxy's) CPU`,
    "this process: CPU, loop lag p99",
  ];
  const base = figures.runs.find((r) => r.watchers === 1 && r.path === "direct" && r.follower === "follow" && !r.error);
  const row = (r: FanoutRun) =>
    r.error ? [String(r.watchers), fanoutKindName(r), `failed: ${r.error}`, ...header.slice(3).map(() => "")] : [
      String(r.watchers),
      fanoutKindName(r),
      `${formatMs(r.p50Ms)} / ${formatMs(r.p99Ms)} (${formatMs(r.worstMs)})`,
      base ? `${(r.p99Ms / base.p99Ms).toFixed(1)}x` : "n/a",
      `${r.deliveries} of ${r.expected}`,
      `${r.breaks} (${r.relists})`,
      cores(r.leaderCpu),
      cores(r.membersCpu),
      r.path === "proxy" ? cores(r.proxyCpu) : "",
      `${r.etcdCpuMsPerChange.toFixed(1)} ms`,
      String(r.memberWatchers),
      `${r.quietBreaks} (${r.quietRelists})`,
      `${cores(r.quietMembersCpu)}${r.path === "proxy" ? ` (${cores(r.quietProxyCpu)})` : ""}`,
      `${cores(r.benchCpu)}, ${formatMs(r.loopLagP99Ms)}`,
    ];
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...figures.runs.map((r) => line(row(r)))].join("\n");
}

async function main(config: Config): Promise<FanoutFigures> {
  const figures: FanoutFigures = {
    instances: config.instances,
    ratePerSecond: config.rate,
    quietSeconds: config.quietSeconds,
    runs: [],
  };
  let n = 0;
  for (const watchers of config.watchers) {
    for (const kind of config.runs) {
      n++;
      console.log(`${watchers} watcher(s), ${fanoutKindName(kind)}, ${config.changes} changes at ${config.rate}/s:`);
      const r = await runOne(config, n, watchers, kind);
      figures.runs.push(r);
      if (!r.error) console.log(`  ${describeRun(r)}`);
    }
  }
  console.log(
    `\nEach follower its own connection; ${config.instances} instances registered in the service, ` +
      `${config.changes} changes at ${config.rate} a second, then ${config.quietSeconds} s without a change. ` +
      `Three members on loopback, a fresh cluster a run; CPU in % of one core.\n`,
  );
  console.log(fanoutTable(figures));
  return figures;
}

if (import.meta.main) {
  const config = parseConfig(Deno.args);
  await benchmark(config.json, async () => await current?.(), () => main(config));
}
