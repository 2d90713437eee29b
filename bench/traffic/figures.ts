/**
 * bench/traffic.ts's figures: their types (the JSON bench/all.ts reads), and
 * turning what a run recorded (the load's totals and failures, the windows,
 * the instances' receipts, the proxies' counters) into each lane's figures.
 * Pure but for printing them. Everything the churn times as it happens
 * (bench/traffic/changes.ts, bench/traffic/churn.ts) is written straight into
 * a lane's figures.
 *
 * @module
 */
import { parseWait, type Wait, whenToRender } from "../../lib/render.ts";
import type { Failure, Latency, LoadTotals } from "../../testbed/traffic.ts";
import { formatMs, percentile } from "../lib.ts";

/** What was going on when a request ended. */
export type CycleKind = "stop" | "kill" | "host";
/** `idle`: neither the baseline nor the churn (a lane waiting for its first cycle, or past its last). */
export type Window = "baseline" | CycleKind | "idle";
export const WINDOWS: Window[] = ["baseline", "stop", "kill", "host"];

export interface MethodCounts {
  GET: number;
  POST: number;
}

/** An nginx lane's figures: what `registry render` did, and nginx's reloads. */
export interface NginxFigures {
  /** The render's `--wait` (the shipped unit's), or null: every change rendered at once. */
  wait: string | null;
  /** nginx's reloads during the churn (its error log's "reconfiguring" lines), and a minute. */
  reloads: number;
  reloadsPerMinute: number;
  /** Changes during the churn that removed an instance (deletes of a live record), and the others (puts). */
  removals: number;
  additions: number;
  /**
   * The renders the other changes call for: `--wait` windows as lib/render.ts whenToRender closes them (a
   * removal renders what is pending with it), replayed from this benchmark's events; without `--wait`, one a change.
   * The target: reloads at most removals + windows.
   */
  windows: number;
  /** The render's `rendered` and `reloaded` log lines during the churn. */
  rendered: number;
  reloaded: number;
  /** Record removed to the render's `reloaded` line for a file without it (`nginx -s reload` returned). */
  removedToReloadedMs: number[];
  /** Record removed to nginx's next new worker after that reload (its error log's "start worker process"). */
  removedToWorkerMs: number[];
  /** Each removal: seconds from the start of the churn, ms to the `reloaded` line and to the new worker. */
  removalTimes: { atSeconds: number; reloadedMs: number; workerMs?: number }[];
  /** New record to the render's `reloaded` line for a file with it. */
  putToReloadedMs: number[];
}

/** One lane's figures. */
export interface TrafficLane {
  name: string;
  /** The proxy the load goes through. */
  proxy: "haproxy" | "nginx";
  registry: boolean;
  watchConnection: boolean;
  /** Every request, by the window it ended in. */
  requests: Record<Window, MethodCounts>;
  /** Failed requests (a non-2xx answer, a socket error, the deadline), by window. */
  failed: Record<Window, MethodCounts>;
  /** Each failure: seconds from the start of the churn, window, method, what. */
  failures: { atSeconds: number; window: string; method: string; what: string }[];
  /** Requests received by two instances or more (sent, then sent again by HAProxy's retry), by window. */
  sentTwice: Record<Window, MethodCounts>;
  /** Each of them: seconds from the start of the churn of each receipt, and the instances. */
  sentTwiceDetail: { id: string; method: string; window: string; atSeconds: number[]; instances: string[] }[];
  /** HAProxy's sessions (`scur`) on the killed server just before each SIGKILL (none for nginx lanes). */
  inFlightAtKills: number[];
  /** HAProxy's sessions on the host's server just before it died (null for nginx lanes). */
  inFlightAtHostDeath: number | null;
  /**
   * The host's death to its server out of rotation (down by HAProxy's check, or in maintenance); null for nginx
   * lanes, whose upstream state (max_fails) cannot be read.
   */
  hostOutMs: number | null;
  /** What took it out first. */
  hostOutBy: "HAProxy's check" | "the registry" | null;
  /** The host's death to its record's delete event (the lease expired). */
  hostRecordGoneMs: number | null;
  /** The host's death to its server in maintenance or deleted (HAProxy lanes with the registry). */
  hostMaintMs: number | null;
  /** Record removed to its server in maintenance or gone (HAProxy lanes with the registry; nginx: see `nginx`). */
  removedToOutMs: number[];
  /** Record removed to the sync's `server out` line read from its stderr (it logs once HAProxy answered). */
  removedToLoggedMs: number[];
  /** Each removal: seconds from the start of the churn, and the time to out of rotation and to the log line. */
  removals: { atSeconds: number; ms: number; loggedMs?: number }[];
  putToServingMs: number[];
  /** Each kill to its record's delete event, and to its server out of rotation (by the registry or the check). */
  killToGoneMs: number[];
  killToOutMs: number[];
  /** Records removed or added whose server never got there within the poll's bound. */
  unmatched: number;
  /**
   * New HAProxy processes seen (a reload or restart changes the Pid), and the Pids seen; nginx lanes: its reloads
   * over the whole run (during the churn: `nginx.reloads`), no Pids.
   */
  reloads: number;
  pids: number[];
  /** Successful requests a second. */
  throughput: { baseline: number; churn: number };
  /** Latency of the successful requests, by window. */
  latency: Partial<Record<Window, Latency>>;
  /** HAProxy's own counters over the churn: retries and redispatches of the backend (null for nginx lanes). */
  haproxyRetries: number | null;
  haproxyRedispatches: number | null;
  /**
   * Warnings the sync logged (HAProxy refused or unreachable, etcd unreachable); nginx lanes: the render's (a check,
   * reload or render failed, etcd unreachable).
   */
  syncWarnings: string[];
  /** nginx lanes' own figures; null for HAProxy lanes. */
  nginx: NginxFigures | null;
  /** Cycles this benchmark could not carry out (an instance that would not start): its figures are short of them. */
  cycleErrors: string[];
}

export interface TrafficFigures {
  baselineSeconds: number;
  churnSeconds: number;
  cycleMs: number;
  cycles: Record<CycleKind, number>;
  clients: number;
  deadlineMs: number;
  workMs: number;
  drain: string;
  secretaryArgs: string[];
  /** The sync's `--server-options`. */
  serverOptions: string;
  /** Lines added to every lane's backend (none for the figures of record). */
  backendLines: string[];
  staticServerOptions: string;
  runtime: string;
  /** The host's 1-minute load average when the lanes were up and when the churn ended (above the machine's cores is contention). */
  loadAverage: { start: number; end: number };
  lanes: TrafficLane[];
}

/**
 * How many renders the changes other than removals call for (pure): `--wait` windows closed as lib/render.ts
 * whenToRender closes them, a removal rendering what is pending with it at once; without `wait`, one a change.
 * `changes` in time order. An upper bound without `wait`: changes during a render are rendered together.
 */
export function waitWindows(changes: readonly { atMs: number; removal: boolean }[], wait: Wait | undefined): number {
  let windows = 0;
  let pending: { firstMs?: number; lastMs?: number; removal: boolean } = { removal: false };
  for (const change of changes) {
    if (pending.firstMs !== undefined && whenToRender(pending, change.atMs, wait) === "now") {
      windows++;
      pending = { removal: false };
    }
    if (change.removal) pending = { removal: false };
    else if (wait === undefined) windows++;
    else pending = { firstMs: pending.firstMs ?? change.atMs, lastMs: change.atMs, removal: false };
  }
  return windows + (pending.firstMs === undefined ? 0 : 1);
}

/** Zero requests of each method in each window. */
function counts(): Record<Window, MethodCounts> {
  return Object.fromEntries([...WINDOWS, "idle"].map((w) => [w, { GET: 0, POST: 0 }])) as Record<
    Window,
    MethodCounts
  >;
}

/** A lane's figures before the run: nothing counted yet. `pid`: its HAProxy's (none for nginx lanes). */
export function laneFigures(
  lane: Pick<TrafficLane, "name" | "proxy" | "registry" | "watchConnection">,
  pid: number | undefined,
  wait: string | undefined,
): TrafficLane {
  const haproxy = lane.proxy === "haproxy";
  return {
    name: lane.name,
    proxy: lane.proxy,
    registry: lane.registry,
    watchConnection: lane.watchConnection,
    requests: counts(),
    failed: counts(),
    failures: [],
    sentTwice: counts(),
    sentTwiceDetail: [],
    inFlightAtKills: [],
    inFlightAtHostDeath: null,
    hostOutMs: null,
    hostOutBy: null,
    hostRecordGoneMs: null,
    hostMaintMs: null,
    removedToOutMs: [],
    removedToLoggedMs: [],
    removals: [],
    putToServingMs: [],
    killToGoneMs: [],
    killToOutMs: [],
    unmatched: 0,
    reloads: 0,
    pids: pid === undefined ? [] : [pid],
    throughput: { baseline: 0, churn: 0 },
    latency: {},
    haproxyRetries: haproxy ? 0 : null,
    haproxyRedispatches: haproxy ? 0 : null,
    syncWarnings: [],
    cycleErrors: [],
    nginx: haproxy ? null : {
      wait: wait ?? null,
      reloads: 0,
      reloadsPerMinute: 0,
      removals: 0,
      additions: 0,
      windows: 0,
      rendered: 0,
      reloaded: 0,
      removedToReloadedMs: [],
      removedToWorkerMs: [],
      removalTimes: [],
      putToReloadedMs: [],
    },
  };
}

/** HAProxy's backend counters at one moment (`show stat`). */
export interface RetryCounts {
  retries: number;
  redispatches: number;
}

/** An nginx lane's counts at one moment: nginx's reloads, and the render's log lines. */
export interface NginxCounts {
  reloads: number;
  rendered: number;
  reloaded: number;
}

/** What the whole run recorded, every lane's: what the figures are tallied from at its end. */
export interface Recorded {
  totals: LoadTotals;
  failures: Failure[];
  /** Each lane's windows in time order: what its outcomes were filed under, from when. */
  windows: { window: Window; from: number }[][];
  /** Every instance's service: its address, its stdout (a line per request received), and how it went. */
  services: { instance: string; stdout: string; fate?: CycleKind }[];
  baselineAt: number;
  churnAt: number;
  churnMs: number;
  /** Where the last cycle's changes had been acted on. */
  churnEnd: number;
}

/** What one lane recorded besides what the churn wrote into its figures. */
export interface LaneRecorded {
  index: number;
  /** Every change of the lane's records, as the benchmark's watch saw it. */
  changes: { atMs: number; removal: boolean }[];
  /** The sync's stderr, or the render's in nginx lanes ("" with no registry). */
  log: string;
  /** HAProxy lanes: the backend's counters as the churn began and as it ended. */
  retries?: [RetryCounts, RetryCounts];
  /** nginx lanes: the counts as the churn began and once its changes were acted on. */
  nginx?: [NginxCounts, NginxCounts];
}

/** Fills in a lane's figures from what the run recorded. */
export function tallyLane(f: TrafficLane, lane: LaneRecorded, run: Recorded): void {
  const byLabel = run.totals.totals[lane.index];
  for (const [window, byMethod] of Object.entries(byLabel)) {
    f.latency[window as Window] = byMethod.latency;
    for (const method of ["GET", "POST"] as const) {
      const c = byMethod[method];
      f.requests[window as Window][method] += c.ok + c.status + c.error;
      f.failed[window as Window][method] += c.status + c.error;
    }
  }
  f.failures = run.failures.filter((x) => x.lane === lane.index).map((x) => ({
    atSeconds: Math.round((x.at - run.churnAt) / 100) / 10,
    window: x.label,
    method: x.method,
    what: x.status ? `status ${x.status}` : x.error ?? "?",
  }));
  const ok = (windows: Window[]) =>
    windows.reduce((sum, w) => sum + (byLabel[w] ? byLabel[w].GET.ok + byLabel[w].POST.ok : 0), 0);
  f.throughput = {
    baseline: ok(["baseline"]) / ((run.churnAt - run.baselineAt) / 1000),
    churn: ok(["stop", "kill", "host"]) / (run.churnMs / 1000),
  };
  if (lane.retries) {
    const [before, after] = lane.retries;
    f.haproxyRetries = after.retries - before.retries;
    f.haproxyRedispatches = after.redispatches - before.redispatches;
  }
  if (f.nginx && lane.nginx) {
    const [before, after] = lane.nginx;
    const changes = lane.changes.filter((c) => c.atMs >= run.churnAt && c.atMs <= run.churnEnd);
    f.nginx.reloads = after.reloads - before.reloads;
    f.nginx.reloadsPerMinute = f.nginx.reloads / ((run.churnEnd - run.churnAt) / 60_000);
    f.nginx.rendered = after.rendered - before.rendered;
    f.nginx.reloaded = after.reloaded - before.reloaded;
    f.nginx.removals = changes.filter((c) => c.removal).length;
    f.nginx.additions = changes.length - f.nginx.removals;
    f.nginx.windows = waitWindows(changes, f.nginx.wait === null ? undefined : parseWait(f.nginx.wait));
    f.reloads = after.reloads;
  }
  tallySentTwice(f, lane.index, run);
  f.syncWarnings = lane.log.split("\n").filter((l) => (f.nginx ? /failed|unreachable/ : /unreachable|refused/).test(l));
}

/**
 * Requests received by two instances (sent, then sent again), from the ids the instances print on receipt: each
 * filed under what happened to the instance that got it first (else the window of the second receipt).
 */
function tallySentTwice(f: TrafficLane, index: number, run: Recorded): void {
  const received = new Map<string, { at: number[]; method: string; instances: string[]; first?: number }>();
  for (const [s, { instance, stdout }] of run.services.entries()) {
    for (const line of stdout.split("\n")) {
      const m = /^(GET|POST) (\d+)\.(\S+) (\S+)$/.exec(line);
      if (!m || Number(m[2]) !== index) continue;
      const id = `${m[2]}.${m[3]}`;
      const seen = received.get(id) ?? { at: [], method: m[1], instances: [] };
      seen.at.push(Number(m[4]));
      seen.instances.push(instance);
      if (seen.at.length === 1 || Number(m[4]) < Math.min(...seen.at.slice(0, -1))) seen.first = s;
      received.set(id, seen);
    }
  }
  const windowAt = (t: number) => run.windows[index].findLast((w) => w.from <= t)?.window;
  for (const [id, r] of received) {
    const order = r.at.map((_, i) => i).sort((a, b) => r.at[a] - r.at[b]);
    const window = run.services[r.first!].fate ?? windowAt(r.at[order[1]]);
    if (r.at.length < 2 || !window) continue;
    f.sentTwice[window][r.method as "GET" | "POST"]++;
    const atSeconds = order.map((i) => Math.round(r.at[i] - run.churnAt) / 1000);
    const instances = order.map((i) => r.instances[i]);
    f.sentTwiceDetail.push({ id, method: r.method, window, atSeconds, instances });
  }
}

/** `p50 1.2 ms, p99 3.4 ms (n=20)`. */
export function p50p99(times: number[]): string {
  if (!times.length) return "n/a";
  return `p50 ${formatMs(percentile(times, 50))}, p99 ${formatMs(percentile(times, 99))} (n=${times.length})`;
}

/** `GET 0, POST 2 of 1234`. */
export function failedText(f: TrafficLane, w: Window): string {
  const n = f.requests[w].GET + f.requests[w].POST;
  return `GET ${f.failed[w].GET}, POST ${f.failed[w].POST} of ${n}`;
}

export function printFigures(figures: TrafficFigures): void {
  /** A cell for HAProxy lanes only (nginx's upstream state and sessions cannot be read). */
  const haproxy = (cell: (f: TrafficLane) => string) => (f: TrafficLane) => f.proxy === "haproxy" ? cell(f) : "n/a";
  /** A cell for nginx lanes only. */
  const nginx = (cell: (n: NginxFigures) => string) => (f: TrafficLane) => f.nginx ? cell(f.nginx) : "n/a";
  const rows: [string, (f: TrafficLane) => string][] = [
    ["failed in stop cycles", (f) => failedText(f, "stop")],
    ["failed in kill cycles", (f) => failedText(f, "kill")],
    ["in flight at each kill (scur)", haproxy((f) => f.inFlightAtKills.join(", ") || "n/a")],
    ["failed after the host death", (f) => failedText(f, "host")],
    ["in flight at the host death", haproxy((f) => String(f.inFlightAtHostDeath ?? "n/a"))],
    ["failed in the baseline", (f) => failedText(f, "baseline")],
    [
      "sent twice (stop, kill, host)",
      (f) =>
        (["stop", "kill", "host"] as const).map((w) => `GET ${f.sentTwice[w].GET} POST ${f.sentTwice[w].POST}`).join(
          "; ",
        ),
    ],
    [
      "host death -> out of rotation",
      haproxy((f) => f.hostOutMs === null ? "never" : `${formatMs(f.hostOutMs)} (${f.hostOutBy})`),
    ],
    [
      "host death -> record gone / server in maint",
      (f) =>
        f.registry
          ? `${formatMs(f.hostRecordGoneMs ?? NaN)} / ${f.nginx ? "n/a" : formatMs(f.hostMaintMs ?? NaN)}`
          : "n/a",
    ],
    ["kill -> record gone", (f) => f.registry ? p50p99(f.killToGoneMs) : "n/a"],
    ["kill -> out of rotation", haproxy((f) => f.registry ? p50p99(f.killToOutMs) : "n/a")],
    ["record removed -> out of rotation", haproxy((f) => f.registry ? p50p99(f.removedToOutMs) : "n/a")],
    ["record removed -> sync logged server out", haproxy((f) => f.registry ? p50p99(f.removedToLoggedMs) : "n/a")],
    [
      "  each (s into the churn: ms to out/logged)",
      haproxy((f) =>
        f.removals.map((r) => `${r.atSeconds.toFixed(1)}: ${r.ms.toFixed(1)}/${r.loggedMs?.toFixed(1) ?? "-"}`)
          .join(", ") || "n/a"
      ),
    ],
    ["new record -> serving", haproxy((f) => f.registry ? p50p99(f.putToServingMs) : "n/a")],
    ["record removed -> render reloaded nginx", nginx((n) => p50p99(n.removedToReloadedMs))],
    ["record removed -> nginx's new worker", nginx((n) => p50p99(n.removedToWorkerMs))],
    [
      "  each (s into the churn: ms to reloaded/worker)",
      nginx((n) =>
        n.removalTimes.map((r) =>
          `${r.atSeconds.toFixed(1)}: ${r.reloadedMs.toFixed(1)}/${r.workerMs?.toFixed(1) ?? "-"}`
        ).join(", ") || "n/a"
      ),
    ],
    ["new record -> render reloaded nginx with it", nginx((n) => p50p99(n.putToReloadedMs))],
    [
      "nginx reloads in the churn, a minute",
      nginx((n) => `${n.reloads}, ${n.reloadsPerMinute.toFixed(1)}/min (--wait ${n.wait ?? "none"})`),
    ],
    [
      "removals + --wait windows (reloads at most)",
      nginx((n) => `${n.removals} + ${n.windows} = ${n.removals + n.windows} (other changes ${n.additions})`),
    ],
    ["render's rendered / reloaded lines in the churn", nginx((n) => `${n.rendered} / ${n.reloaded}`)],
    ["HAProxy reloads", haproxy((f) => String(f.reloads))],
    [
      "throughput, churn / baseline",
      (f) => `${f.throughput.churn.toFixed(0)} / ${f.throughput.baseline.toFixed(0)} req/s`,
    ],
    ["HAProxy retries, redispatches", haproxy((f) => `${f.haproxyRetries}, ${f.haproxyRedispatches}`)],
    [
      "latency p99/worst: baseline, stop, kill, host",
      (f) =>
        WINDOWS.map((w) => f.latency[w] ? `${formatMs(f.latency[w].p99Ms)}/${formatMs(f.latency[w].worstMs)}` : "n/a")
          .join(", "),
    ],
  ];
  console.log(
    `\n${figures.cycles.stop} stops, ${figures.cycles.kill} kills, 1 host death in ${figures.churnSeconds} s; ` +
      `baseline ${figures.baselineSeconds} s; load average ${figures.loadAverage.start} at the churn's start, ` +
      `${figures.loadAverage.end} at its end`,
  );
  for (const f of figures.lanes) {
    console.log(`\n${f.name}`);
    for (const [name, cell] of rows) console.log(`  ${name.padEnd(44)} ${cell(f)}`);
    if (f.unmatched) console.log(`  ${"changes HAProxy never showed".padEnd(44)} ${f.unmatched}`);
    for (const x of f.failures) console.log(`  failed at ${x.atSeconds} s (${x.window}): ${x.method} ${x.what}`);
    for (const x of f.sentTwiceDetail) {
      console.log(
        `  sent twice (${x.window}): ${x.method} ${x.id} at ${x.atSeconds.join(", ")} s to ${x.instances.join(", ")}`,
      );
    }
    for (const w of f.syncWarnings) console.log(`  ${f.nginx ? "render" : "sync"}: ${w}`);
    for (const e of f.cycleErrors) console.log(`  not carried out: ${e}`);
  }
}
