/**
 * What healthy instances cost, over an idle window (`--minutes`, one by
 * default), ours beside the article's loop (at 20 s / TTL 30 s and at 2 s /
 * TTL 10 s), each on its own etcd:
 *
 * - etcd: raft proposals (`etcd_server_proposals_committed_total`), mvcc puts
 *   (`etcd_mvcc_put_total`; the loop writes v2 sets, counted by
 *   `etcd_debugging_store_writes_total{action="set"}`), revision (v2: index)
 *   growth and the watch events a consumer sees, per healthy instance-minute;
 *   and etcd's own CPU.
 * - the host: resident memory of one sidekick at the end of the window (an
 *   idle minute after it registered) beside an empty script under the same
 *   runtime, CPU seconds per hour, and processes started per minute. The
 *   loop's CPU counts its exited children (curl, etcdctl, sleep), read when
 *   it sleeps so that whole passes are counted; its processes are counted by
 *   shims on its PATH that note each start and `exec` the real program.
 *
 * ```sh
 * node_modules/.bin/deno run -A bench/cost.ts [--minutes 1] [--instances 2]
 * node_modules/.bin/deno run -A bench/cost.ts --quick     # a 24 s window, for development
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { currentRevision, delay, EtcdCluster, Script, TestServer, waitFor } from "../testbed/testbed.ts";
import {
  ArticleLoop,
  benchmark,
  childrenOf,
  countedProcesses,
  cpuSecondsOf,
  type EventClock,
  formatMiB,
  KeyClock,
  keyOf,
  memoryOf,
  metricsDelta,
  now,
  pssOf,
  type Runtime,
  runtimes,
  scrapeMetrics,
  startSecondsOf,
  startSecretary,
  V2Clock,
} from "./lib.ts";

/** One process's host cost. */
export interface HostCost {
  label: string;
  rssKiB: number;
  anonKiB: number;
  fileKiB: number;
  pssKiB: number;
  cpuSecondsPerHour: number;
  processesPerMinute: number;
}

/** The etcd cost of one set of healthy instances, per instance-minute unless named otherwise. */
export interface EtcdCost {
  label: string;
  instances: number;
  minutes: number;
  proposals: number;
  /** Proposals per minute for the whole cluster beyond the instances' own writes (v2 TTL expiry). */
  clusterProposalsPerMinute: number;
  writes: number;
  revisions: number;
  watchEvents: number;
  etcdCpuSecondsPerHour: number;
}

export interface CostFigures {
  windowSeconds: number;
  etcd: EtcdCost[];
  host: HostCost[];
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    minutes: { type: "string" },
    instances: { type: "string" },
    quick: { type: "boolean", default: false },
    json: { type: "string" },
  },
});
// quick: long enough for two passes of the article's 20 s loop
const windowMs = Number(values.minutes ?? (values.quick ? 0.4 : 1)) * 60_000;
const perRuntime = Number(values.instances ?? 2);
const SETTINGS = [[20, 30], [2, 10]] as const;

const clusters: EtcdCluster[] = [];
const targets: TestServer[] = [];
const scripts: Script[] = [];
const loops: ArticleLoop[] = [];
const clocks: EventClock[] = [];
const shimDirs: string[] = [];
const clients: { close(): void }[] = [];

async function etcd(extraArgs: string[] = []): Promise<EtcdCluster> {
  const cluster = await EtcdCluster.create(1, { extraArgs });
  clusters.push(cluster);
  return await cluster.start();
}

async function target(host: string): Promise<TestServer> {
  const t = await TestServer.start(host);
  targets.push(t);
  return t;
}

/** A snapshot of a cluster's counters. */
async function snapshot(cluster: EtcdCluster, clock: EventClock, v2: boolean) {
  const endpoint = cluster.endpoints[0];
  let revision: number;
  if (v2) {
    const res = await fetch(`${endpoint}/v2/keys/`);
    await res.body?.cancel();
    revision = Number(res.headers.get("X-Etcd-Index"));
  } else {
    const client = cluster.client();
    revision = Number(await currentRevision(client));
    client.close();
  }
  return {
    at: now(),
    metrics: await scrapeMetrics(endpoint),
    revision,
    events: clock.events,
    etcdCpu: cpuSecondsOf(cluster.members[0].pid!),
  };
}

type Snapshot = Awaited<ReturnType<typeof snapshot>>;

/**
 * The cost between two snapshots. `passMinutes`: the loops' writes come in
 * whole passes, so per-instance rates run over the passes' own duration.
 */
function etcdCost(
  label: string,
  instances: number,
  a: Snapshot,
  b: Snapshot,
  v2: boolean,
  passMinutes = (b.at - a.at) / 60_000,
): EtcdCost {
  const minutes = (b.at - a.at) / 60_000;
  const d = metricsDelta(a.metrics, b.metrics);
  const writes = v2 ? d.v2Sets + d.v2Deletes : d.puts + d.deletes;
  const per = (n: number) => n / instances / passMinutes;
  return {
    label,
    instances,
    minutes: passMinutes,
    // a v2 write is one proposal; the rest is the leader's TTL expiry sweep, for the whole cluster
    proposals: per(v2 ? writes : d.proposals),
    clusterProposalsPerMinute: v2 ? (d.proposals - writes) / minutes : 0,
    writes: per(writes),
    revisions: per(b.revision - a.revision),
    watchEvents: per(b.events - a.events),
    etcdCpuSecondsPerHour: (b.etcdCpu - a.etcdCpu) / (b.at - a.at) * 3_600_000,
  };
}

/**
 * Reads a loop's CPU (with its exited children) and its process count while
 * it sleeps, dated by when that sleep began: between two such readings lie
 * whole passes, however long the window.
 */
async function whenSleeping(loop: ArticleLoop, dir?: string) {
  const sleep = await waitFor(
    () => {
      const children = childrenOf(loop.pid);
      return children.length === 1 && children[0].comm === "sleep" && children[0];
    },
    `loop ${loop.pid} sleeping`,
    30_000,
    5,
  );
  return {
    atSeconds: startSecondsOf(sleep.pid),
    cpu: cpuSecondsOf(loop.pid, true),
    processes: dir ? countedProcesses(dir) : 0,
  };
}

function memoryOfTree(pid: number) {
  const pids = [pid, ...childrenOf(pid).map((c) => c.pid)];
  const total = { rssKiB: 0, anonKiB: 0, fileKiB: 0, pssKiB: 0 };
  for (const p of pids) {
    try {
      const m = memoryOf(p);
      total.rssKiB += m.rssKiB;
      total.anonKiB += m.anonKiB;
      total.fileKiB += m.fileKiB;
      total.pssKiB += pssOf(p);
    } catch { /* exited meanwhile */ }
  }
  return total;
}

async function main(): Promise<CostFigures> {
  const figures: CostFigures = { windowSeconds: windowMs / 1000, etcd: [], host: [] };

  // ours: a few sidekicks per runtime on one etcd v3, and an empty script per runtime as the floor
  const v3 = await etcd();
  const client = v3.client();
  clients.push(client);
  const ourClock = await KeyClock.start(client);
  clocks.push(ourClock);
  const ours: { runtime: Runtime; script: Script; target: TestServer }[] = [];
  for (const runtime of runtimes()) {
    for (let i = 0; i < perRuntime; i++) {
      const t = await target(`127.0.4.${ours.length + 1}`);
      const script = startSecretary(t, v3.endpoints, { runtime });
      scripts.push(script);
      ours.push({ runtime, script, target: t });
    }
  }
  const floors = [
    { label: "empty script, deno", script: new Script(Deno.execPath(), ["eval", "setInterval(() => {}, 1e9)"]) },
    { label: "empty script, node", script: new Script("node", ["-e", "setInterval(() => {}, 1e9)"]) },
  ];
  scripts.push(...floors.map((f) => f.script));

  // the article's loop: per setting, an etcd v2, a few loops and one more whose processes are counted
  const articles = [];
  for (const [index, [interval, ttl]] of SETTINGS.entries()) {
    const cluster = await etcd(["--enable-v2"]);
    const clock = await V2Clock.start(cluster.endpoints[0]);
    clocks.push(clock);
    const group: ArticleLoop[] = [];
    for (let i = 0; i < perRuntime; i++) {
      group.push(new ArticleLoop(await target(`127.0.${5 + index}.${i + 1}`), cluster.endpoints[0], interval, ttl));
    }
    const dir = await Deno.makeTempDir({ prefix: "secretary-bench-count-" });
    shimDirs.push(dir);
    const counted = new ArticleLoop(await target(`127.0.${5 + index}.100`), cluster.endpoints[0], interval, ttl, {
      countProcessesIn: dir,
    });
    loops.push(...group, counted);
    articles.push({ label: `article's loop, ${interval} s / TTL ${ttl} s`, cluster, clock, group, counted, dir });
  }

  await Promise.all(ours.map((o) => ourClock.until("put", keyOf(o.target), 0, 30_000)));
  for (const a of articles) {
    await Promise.all([...a.group, a.counted].map((l) => a.clock.until("put", l.key, 0, 30_000)));
  }
  await delay(2000); // let the start settle
  console.log(`all registered; measuring an idle window of ${windowMs / 1000} s`);

  const ourBefore = await snapshot(v3, ourClock, false);
  const cpuBefore = ours.map((o) => cpuSecondsOf(o.script.pid));
  const floorCpuBefore = floors.map((f) => cpuSecondsOf(f.script.pid));
  // the loops of a setting started together and write together: read etcd while they sleep
  const countedBefore = await Promise.all(articles.map((a) => whenSleeping(a.counted, a.dir)));
  const articleBefore = await Promise.all(articles.map((a) => snapshot(a.cluster, a.clock, true)));
  const loopBefore = await Promise.all(articles.map((a) => Promise.all(a.group.map((l) => whenSleeping(l)))));
  const started = now();
  const ourChildren = new Set<number>();
  while (now() - started < windowMs) {
    for (const o of ours) for (const c of childrenOf(o.script.pid)) ourChildren.add(c.pid);
    await delay(500);
  }
  const ourAfter = await snapshot(v3, ourClock, false);
  const cpuAfter = ours.map((o) => cpuSecondsOf(o.script.pid));
  const countedAfter = await Promise.all(articles.map((a) => whenSleeping(a.counted, a.dir)));
  const articleAfter = await Promise.all(articles.map((a) => snapshot(a.cluster, a.clock, true)));
  const loopAfter = await Promise.all(articles.map((a) => Promise.all(a.group.map((l) => whenSleeping(l)))));

  figures.etcd.push(etcdCost("ours", ours.length, ourBefore, ourAfter, false));
  for (const [i, a] of articles.entries()) {
    const passMinutes = (countedAfter[i].atSeconds - countedBefore[i].atSeconds) / 60;
    figures.etcd.push(etcdCost(a.label, a.group.length + 1, articleBefore[i], articleAfter[i], true, passMinutes));
  }

  const seconds = (ourAfter.at - ourBefore.at) / 1000;
  for (const runtime of runtimes()) {
    const mine = ours.map((o, i) => ({ ...o, cpu: cpuAfter[i] - cpuBefore[i] })).filter((o) => o.runtime === runtime);
    for (const [n, o] of mine.entries()) {
      figures.host.push({
        label: `ours, ${runtime === "source" ? "deno (source)" : runtime} #${n + 1}`,
        ...memoryOf(o.script.pid),
        pssKiB: pssOf(o.script.pid),
        cpuSecondsPerHour: o.cpu / seconds * 3600,
        processesPerMinute: ourChildren.size / (seconds / 60),
      });
    }
  }
  for (const [i, f] of floors.entries()) {
    figures.host.push({
      label: f.label,
      ...memoryOf(f.script.pid),
      pssKiB: pssOf(f.script.pid),
      cpuSecondsPerHour: (cpuSecondsOf(f.script.pid) - floorCpuBefore[i]) / ((now() - ourBefore.at) / 1000) * 3600,
      processesPerMinute: 0,
    });
  }
  for (const [i, a] of articles.entries()) {
    const processesPerMinute = (countedAfter[i].processes - countedBefore[i].processes) /
      ((countedAfter[i].atSeconds - countedBefore[i].atSeconds) / 60);
    for (const [n, loop] of a.group.entries()) {
      const before = loopBefore[i][n];
      const after = loopAfter[i][n];
      figures.host.push({
        label: `${a.label} #${n + 1} (bash + sleep)`,
        ...memoryOfTree(loop.pid),
        cpuSecondsPerHour: (after.cpu - before.cpu) / (after.atSeconds - before.atSeconds) * 3600,
        processesPerMinute,
      });
    }
  }
  return figures;
}

function print(figures: CostFigures): void {
  const n = (x: number) => x.toFixed(x !== 0 && Math.abs(x) < 10 ? 2 : 0);
  console.log(`etcd, per healthy instance-minute (window ${figures.windowSeconds} s):`);
  for (const e of figures.etcd) {
    const cluster = e.clusterProposalsPerMinute ? ` + ${n(e.clusterProposalsPerMinute)}/min cluster-wide` : "";
    console.log(
      `  ${e.label.padEnd(34)} ${e.instances} instances  proposals ${n(e.proposals)}${cluster}  writes ${
        n(e.writes)
      }  revisions ${n(e.revisions)}  watch events ${n(e.watchEvents)}  etcd CPU ${n(e.etcdCpuSecondsPerHour)} s/h`,
    );
  }
  console.log("host, per process:");
  for (const h of figures.host) {
    console.log(
      `  ${h.label.padEnd(44)} RSS ${formatMiB(h.rssKiB).padStart(9)} (anon ${formatMiB(h.anonKiB)}, file ${
        formatMiB(h.fileKiB)
      }, PSS ${formatMiB(h.pssKiB)})  CPU ${n(h.cpuSecondsPerHour)} s/h  processes ${n(h.processesPerMinute)}/min`,
    );
  }
}

const cleanup = async () => {
  for (const c of clocks) c.stop();
  for (const c of clients) c.close();
  await Promise.all([...scripts.map((s) => s.stop()), ...loops.map((l) => l.kill())]);
  await Promise.all(targets.map((t) => t.close()));
  await Promise.all(clusters.map((c) => c.stop()));
  for (const dir of shimDirs) await Deno.remove(dir, { recursive: true }).catch(() => {});
};
await benchmark(values.json, cleanup, async () => {
  const figures = await main();
  print(figures);
  return figures;
});
