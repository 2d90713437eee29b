/**
 * The whole benchmark suite in one run: `deno task bench`. Builds the bundles
 * if dist/ lacks them, runs every benchmark (ours and the article's loop in
 * the same run), prints their output as it comes, and writes the figures
 * beside their targets to bench/README.md with the date, the machine and the
 * command. It never asserts a speed.
 *
 * Phases that do not disturb each other's figures run together: the removal
 * trials (ours, and the article's loop at 20 s, which mostly sleeps) beside
 * the idle cost window; then the article's loop at 2 s; then the reads; then
 * what each check kind costs, one sidekick at a time, alone, as it measures
 * CPU; then memory as a host pays it (hosts of one and of ten sidekicks,
 * under deno and node); then 100 sidekicks, alone, as they load the host;
 * then traffic through HAProxy and nginx while instances come and go (six
 * lanes side by side), alone, as it loads both cores; then HAProxy reloaded
 * mid-run, alone, and a burst of thousands of removals through `registry sync`,
 * alone; then watch fan-out and the
 * lease load of thousands of instances against three members, alone. About
 * 50 minutes on 2 cores, 30 of them the lease load.
 *
 * Every sentence it writes into bench/README.md comes from that run's
 * figures: which targets were met or missed is computed, never written in.
 *
 * ```sh
 * node_modules/.bin/deno task bench                 # the full suite
 * node_modules/.bin/deno run -A bench/all.ts --quick  # few trials, short windows (about 7 min), for development
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { ROOT } from "../testbed/testbed.ts";
import type { CheckCost, ChecksFigures } from "./checks.ts";
import type { KilledFigures } from "./killed.ts";
import type { CostFigures, HostCost } from "./cost.ts";
import { type FanoutFigures, fanoutTable } from "./fanout.ts";
import { type LeaseFigures, leaseTable } from "./leases.ts";
import { bundlesBuilt, DEFAULT_ARGS, formatMiB, formatMs, percentile, summarize } from "./lib.ts";
import type { MemoryFigures, MemoryHost } from "./memory.ts";
import type { ReadsFigures } from "./reads.ts";
import type { RemovalFigures } from "./removal.ts";
import type { ScaleFigures } from "./scale.ts";
import type { TrafficFigures, TrafficLane } from "./traffic.ts";
import { type ReloadFigures, reloadSection } from "./reload.ts";
import type { BurstFigures } from "./burst.ts";

/** One benchmark run as a child process: its name, script, arguments and time limit. */
interface Phase {
  name: string;
  script: string;
  args: string[];
  limitMinutes: number;
}

interface PhaseResult {
  name: string;
  output: string;
  seconds: number;
  figures?: unknown;
  error?: string;
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean", default: false },
    out: { type: "string", default: `${ROOT}bench/README.md` },
  },
});
const quick = values.quick;
const q = quick ? ["--quick"] : [];

/** Runs one benchmark to its end (or its time limit), echoing its lines with its name. */
async function run(phase: Phase, dir: string): Promise<PhaseResult> {
  const json = `${dir}/${phase.name}.json`;
  const began = Date.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", `bench/${phase.script}`, ...phase.args, "--json", json],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  // over its limit: SIGTERM lets it stop what it started; SIGKILL if it does not
  const limitMs = phase.limitMinutes * 60_000;
  const term = setTimeout(() => child.kill("SIGTERM"), limitMs);
  const kill = setTimeout(() => child.kill("SIGKILL"), limitMs + 30_000);
  let output = "";
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    let partial = "";
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      const lines = (partial + decoder.decode(chunk, { stream: true })).split("\n");
      partial = lines.pop()!;
      for (const line of lines) {
        output += `${line}\n`;
        console.log(`[${phase.name}] ${line}`);
      }
    }
    if (partial) output += `${partial}\n`;
  };
  await Promise.all([pump(child.stdout), pump(child.stderr)]);
  const status = await child.status;
  clearTimeout(term);
  clearTimeout(kill);
  const seconds = (Date.now() - began) / 1000;
  if (!status.success) {
    return { name: phase.name, output, seconds, error: `exited ${status.code} after ${seconds.toFixed(0)} s` };
  }
  return { name: phase.name, output, seconds, figures: JSON.parse(await Deno.readTextFile(json)) };
}

function text(args: string[]): string {
  try {
    const out = new Deno.Command(args[0], { args: args.slice(1), stdout: "piped", stderr: "null" }).outputSync();
    return new TextDecoder().decode(out.stdout).trim();
  } catch {
    return "unknown";
  }
}

function machine(): string {
  const cpu = /^model name\s*:\s*(.*)$/m.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1] ?? "unknown";
  const memKiB = Number(/^MemTotal:\s+(\d+)/m.exec(Deno.readTextFileSync("/proc/meminfo"))?.[1] ?? 0);
  const etcd = /etcd Version: (\S+)/.exec(text(["etcd", "--version"]))?.[1] ?? "unknown";
  return `${text(["nproc"])} cores (${cpu}), ${(memKiB / 1024 / 1024).toFixed(0)} GiB, ` +
    `${text(["uname", "-sr"])}; etcd ${etcd}, deno ${Deno.version.deno}, node ${text(["node", "--version"])}`;
}

// ---------------------------------------------------------------------------
// The table

/** `median 1.02 s, worst 2.31 s` of some times; `n/a` when there are none. */
function mw(times: number[] | undefined): string {
  if (!times?.length) return "n/a";
  const s = summarize(times);
  return `median ${formatMs(s.median)}, worst ${formatMs(s.worst)}`;
}

function worst(times: number[] | undefined): number {
  return times?.length ? Math.max(...times) : Infinity;
}

function rate(x: number | undefined): string {
  if (x === undefined || !Number.isFinite(x)) return "n/a";
  return x === 0 ? "0" : x.toFixed(Math.abs(x) < 10 ? 1 : 0);
}

function back(r: RemovalFigures | undefined): string {
  if (!r) return "n/a";
  const times = r.back.filter((b): b is number => b !== null);
  const never = r.back.length - times.length;
  if (never === 0) return mw(times);
  if (times.length === 0) return `never: ${never} of ${never} not back within ${r.backBoundMs / 1000} s`;
  return `${mw(times)}; ${never} of ${r.back.length} not back within ${r.backBoundMs / 1000} s`;
}

function perRuntime(r: RemovalFigures | undefined, key: "start" | "sigterm"): string {
  if (!r) return "n/a";
  return Object.entries(r[key]).map(([runtime, times]) => `${runtime}: ${mw(times)}`).join("; ");
}

function hostOf(c: CostFigures | undefined, prefix: string): HostCost[] {
  return c?.host.filter((h) => h.label.startsWith(prefix)) ?? [];
}

function medianOf(hosts: HostCost[], field: keyof Omit<HostCost, "label">): number {
  return hosts.length ? summarize(hosts.map((h) => h[field])).median : NaN;
}

function memory(hosts: HostCost[]): string {
  return hosts.length ? formatMiB(medianOf(hosts, "rssKiB")) : "n/a";
}

/** `an idle minute`, or `an idle 24 s`: a window as long as it was. */
function idle(seconds: number | undefined): string {
  if (seconds === undefined) return "an idle window";
  return seconds === 60 ? "an idle minute" : `an idle ${seconds} s`;
}

/** What a host pays per sidekick under `runtime`, for each number of sidekicks on it. */
function hostMemory(m: MemoryFigures | undefined, runtime: MemoryHost["runtime"]): string {
  const hosts = m?.hosts.filter((h) => h.runtime === runtime) ?? [];
  if (!hosts.length) return "n/a";
  return hosts.map((h) =>
    `${h.sidekicks} a host: RSS ${formatMiB(h.rssKiB)}, PSS ${formatMiB(h.pssKiB)}, private ${
      formatMiB(h.privateKiB)
    }, shared ${formatMiB(h.rssKiB - h.privateKiB)}`
  ).join("; ");
}

/** The target for the figure of record of memory: PSS per sidekick, deno, many sidekicks a host. */
const MEMORY_TARGET_MIB = 48;

/** `http: 10; tcp: 9.4; …`: one figure per check kind, of the kinds `which` picks. */
function byCheck(
  c: ChecksFigures | undefined,
  show: (x: CheckCost) => string,
  which: (x: CheckCost) => boolean = () => true,
): string {
  const shown = c?.checks.filter(which) ?? [];
  return shown.length ? shown.map((x) => `${x.label}: ${show(x)}`).join("; ") : "n/a";
}

/** The table's rows: figure, target, ours, the article's loop at its settings and at ours, and whether ours met it. */
function tableRows(results: Map<string, PhaseResult>): string[][] {
  const fig = <T>(name: string) => results.get(name)?.figures as T | undefined;
  const ours = fig<RemovalFigures>("removal-ours");
  const a20 = fig<RemovalFigures>("removal-article-20s");
  const a2 = fig<RemovalFigures>("removal-article-2s");
  const cost = fig<CostFigures>("cost");
  const reads = fig<ReadsFigures>("reads");
  const scale = fig<ScaleFigures>("scale");
  const checks = fig<ChecksFigures>("checks");
  const killed = fig<KilledFigures>("killed");
  const mem = fig<MemoryFigures>("memory");
  const ofRecord = mem?.hosts.find((h) => h.runtime === "deno" && h.sidekicks === mem.perHost);
  const killedRow = (target: string, watch: boolean) =>
    killed?.rows.find((r) => r.target === target && r.watch === watch)?.times;
  const isExec = (x: CheckCost) => x.label.startsWith("exec");
  const etcdOf = (label: string) => cost?.etcd.find((e) => e.label.startsWith(label));
  const [e, e20, e2] = [etcdOf("ours"), etcdOf("article's loop, 20"), etcdOf("article's loop, 2 ")];
  const cluster = (x: typeof e) =>
    x ? `${rate(x.proposals)}, plus ${rate(x.clusterProposalsPerMinute)} a minute cluster-wide` : "n/a";
  const oursDeno = hostOf(cost, "ours, deno");
  const oursNode = hostOf(cost, "ours, node");
  const floor = (label: string) => memory(hostOf(cost, label));
  const loop20 = hostOf(cost, "article's loop, 20");
  const loop2 = hostOf(cost, "article's loop, 2 ");
  const met = (ok: boolean | undefined) => ok === undefined ? "" : ok ? "yes" : "**no**";
  const killedRows = (["process", "apache"] as const).map((target) => [
    `killed ${target === "apache" ? "Apache (its process group)" : "server process"} to gone, SIGKILL, watch on / off`,
    "worst 0.5 s (watch on)",
    `on: ${mw(killedRow(target, true))}; off: ${mw(killedRow(target, false))}`,
    "n/a",
    "n/a",
    met(killed && worst(killedRow(target, true)) <= 500),
  ]);
  const all = (r: RemovalFigures | undefined, key: "start" | "sigterm", bound: number) =>
    r ? Object.values(r[key]).every((t) => worst(t) <= bound) : undefined;
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
  const scaleKilled = scale
    ? `${scale.killedGone} of ${scale.killed.length} gone, ${scale.killedWithinBound} within ${
      scale.killedBoundMs / 1000
    } s (${
      mw(scale.killed.filter(Number.isFinite))
    }); other records lost: ${scale.othersLost}; deregistered while starting them all: ${scale.flapsDuringStart}`
    : "n/a";
  return [
    [
      "killed target to gone",
      "worst 2.5 s",
      mw(ours?.killed),
      mw(a20?.killed),
      mw(a2?.killed),
      met(ours && worst(ours.killed) <= 2500),
    ],
    ...killedRows,
    [
      "hung target to gone",
      "worst 4.5 s",
      mw(ours?.hung),
      mw(a20?.hung),
      mw(a2?.hung),
      met(ours && worst(ours.hung) <= 4500),
    ],
    [
      "hung target answering again to back",
      "within 3 s",
      back(ours),
      back(a20),
      back(a2),
      met(ours && ours.back.every((b) => b !== null && b <= 3000)),
    ],
    [
      "SIGKILL of the sidekick to gone",
      "within TTL + 0.5 s (10.5 s)",
      mw(ours?.sigkill),
      mw(a20?.sigkill),
      mw(a2?.sigkill),
      met(ours && worst(ours.sigkill) <= 10_500),
    ],
    [
      "SIGTERM to gone",
      "50 ms",
      perRuntime(ours, "sigterm"),
      perRuntime(a20, "sigterm"),
      perRuntime(a2, "sigterm"),
      met(all(ours, "sigterm", 50)),
    ],
    [
      "start to registered",
      "1 s",
      perRuntime(ours, "start"),
      perRuntime(a20, "start"),
      perRuntime(a2, "start"),
      met(all(ours, "start", 1000)),
    ],
    [
      "raft proposals per healthy instance-minute",
      "0",
      rate(e?.proposals),
      cluster(e20),
      cluster(e2),
      met(e && e.proposals === 0),
    ],
    [
      "writes (v3 puts, v2 sets) per healthy instance-minute",
      "0",
      rate(e?.writes),
      rate(e20?.writes),
      rate(e2?.writes),
      met(e && e.writes === 0),
    ],
    [
      "revision (v2: index) growth per healthy instance-minute",
      "0",
      rate(e?.revisions),
      rate(e20?.revisions),
      rate(e2?.revisions),
      met(e && e.revisions === 0),
    ],
    [
      "watch events per healthy instance-minute",
      "0",
      rate(e?.watchEvents),
      rate(e20?.watchEvents),
      rate(e2?.watchEvents),
      met(e && e.watchEvents === 0),
    ],
    [
      "processes started per minute",
      "0",
      rate(medianOf([...oursDeno, ...oursNode], "processesPerMinute")),
      rate(medianOf(loop20, "processesPerMinute")),
      rate(medianOf(loop2, "processesPerMinute")),
      met(cost && [...oursDeno, ...oursNode].every((h) => h.processesPerMinute === 0)),
    ],
    [
      `resident memory after ${idle(cost?.windowSeconds)}, deno`,
      "",
      `${memory(oursDeno)} (an empty script: ${floor("empty script, deno")})`,
      `${memory(loop20)} (bash + sleep)`,
      `${memory(loop2)} (bash + sleep)`,
      "",
    ],
    [
      `resident memory after ${idle(cost?.windowSeconds)}, node`,
      "",
      `${memory(oursNode)} (an empty script: ${floor("empty script, node")})`,
      "",
      "",
      "",
    ],
    ...(["deno", "node"] as const).map((runtime) => [
      `memory as a host pays it after ${idle(mem?.windowSeconds)}, per sidekick, ${runtime} (the unit's flags)`,
      "",
      hostMemory(mem, runtime),
      "n/a",
      "n/a",
      "",
    ]),
    [
      `PSS per sidekick, ${mem?.perHost ?? "n/a"} a host, deno (the unit's flags): the figure of record for memory`,
      `${MEMORY_TARGET_MIB} MiB`,
      ofRecord ? formatMiB(ofRecord.pssKiB) : "n/a",
      "n/a",
      "n/a",
      met(ofRecord && ofRecord.pssKiB <= MEMORY_TARGET_MIB * 1024),
    ],
    [
      "CPU seconds per hour, one sidekick",
      "",
      [["deno", oursDeno], ["node", oursNode]].filter(([, h]) => (h as HostCost[]).length)
        .map(([r, h]) => `${r}: ${rate(medianOf(h as HostCost[], "cpuSecondsPerHour"))}`).join("; ") || "n/a",
      rate(medianOf(loop20, "cpuSecondsPerHour")),
      rate(medianOf(loop2, "cpuSecondsPerHour")),
      "",
    ],
    [
      "CPU seconds per hour, one sidekick, by check (of it, exited children)",
      "",
      byCheck(checks, (x) => `${rate(x.cpuSecondsPerHour)} (${rate(x.childCpuSecondsPerHour)})`),
      "n/a",
      "n/a",
      "",
    ],
    [
      "processes started per minute, exec check",
      "",
      byCheck(
        checks,
        (x) => `${rate(x.processesPerMinute)}${x.processesCountedBy === "perf" ? "" : " (one a check, not counted)"}`,
        isExec,
      ),
      "n/a",
      "n/a",
      "",
    ],
    [
      "revision growth per healthy instance-minute, by check",
      "0",
      byCheck(checks, (x) => rate(x.revisionsPerMinute)),
      "n/a",
      "n/a",
      met(checks && checks.checks.every((x) => x.revisionsPerMinute === 0)),
    ],
    [
      `resident memory after ${idle(checks?.windowSeconds)}, by check`,
      "",
      byCheck(checks, (x) => formatMiB(x.rssKiB)),
      "n/a",
      "n/a",
      "",
    ],
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
    [
      `${scale?.instances ?? "n/a"} sidekicks: first start to all registered`,
      "",
      scale ? `${formatMs(scale.allRegisteredMs)} (each: ${mw(scale.startToRegistered)})` : "n/a",
      "n/a",
      "n/a",
      "",
    ],
    [
      `${scale?.instances ?? "n/a"} sidekicks: ${scale?.killed.length ?? "n/a"} targets killed`,
      "exactly those gone, each within 2.5 s",
      scaleKilled,
      "n/a",
      "n/a",
      met(
        scale && scale.killedWithinBound === scale.killed.length && scale.killedGone === scale.killed.length &&
          scale.othersLost === 0,
      ),
    ],
    [
      `${scale?.instances ?? "n/a"} sidekicks: steady proposals per minute`,
      "0",
      scale
        ? `${rate(scale.proposalsPerMinute)} (memory: ${formatMiB(summarize(scale.rssKiB).median)} RSS each, ${
          formatMiB(scale.pssTotalKiB)
        } PSS for all)`
        : "n/a",
      "n/a",
      "n/a",
      met(scale && scale.proposalsPerMinute === 0),
    ],
  ];
}

function markdown(
  rows: string[][],
  header = [
    "figure",
    "target",
    "ours",
    "the article's loop, 20 s / TTL 30 s",
    "the article's loop, 2 s / TTL 10 s",
    "met",
  ],
): string {
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...rows.map(line)].join("\n");
}

// ---------------------------------------------------------------------------
// Traffic through HAProxy: a table of its own, one column per lane

/** `p50 1.2 ms, p99 3.4 ms (n=20)`, or `n/a`. */
function p50p99(times: number[] | undefined): string {
  if (!times?.length) return "n/a";
  return `p50 ${formatMs(percentile(times, 50))}, p99 ${formatMs(percentile(times, 99))} (n=${times.length})`;
}

/** `GET 0, POST 1 of 5,432`. */
function failedOf(f: TrafficLane, window: "stop" | "kill" | "host"): string {
  const all = f.requests[window].GET + f.requests[window].POST;
  return `GET ${f.failed[window].GET}, POST ${f.failed[window].POST} of ${all.toLocaleString("en")}`;
}

/** The rows: figure, target (for lane 1), the three HAProxy lanes, and whether lane 1 met it. */
function trafficRows(t: TrafficFigures | undefined): string[][] {
  const met = (ok: boolean | undefined) => ok === undefined ? "" : ok ? "yes" : "**no**";
  const [ours, none, noWatch] = [0, 1, 2].map((i) => t?.lanes[i]);
  const each = (cell: (f: TrafficLane) => string, registryOnly = false) =>
    [ours, none, noWatch].map((f) => (!f ? "n/a" : registryOnly && !f.registry ? "n/a (no registry)" : cell(f)));
  const inFlight = (f: TrafficLane) => f.inFlightAtKills.reduce((a, b) => a + b, 0);
  const twice = (f: TrafficLane) =>
    (["stop", "kill", "host"] as const).map((w) => `${w}: GET ${f.sentTwice[w].GET}, POST ${f.sentTwice[w].POST}`)
      .join("; ");
  const hostOut = (f: TrafficLane) =>
    f.hostOutMs === null
      ? "never"
      : `${formatMs(f.hostOutMs)}, by ${f.hostOutBy}${
        f.hostRecordGoneMs !== null ? ` (record gone after ${formatMs(f.hostRecordGoneMs)})` : ""
      }; failed after it: GET ${f.failed.host.GET}`;
  return [
    [
      `failed requests in stop cycles (${t?.cycles.stop ?? "n/a"})`,
      "0 of either method",
      ...each((f) => failedOf(f, "stop")),
      met(ours && ours.failed.stop.GET + ours.failed.stop.POST === 0),
    ],
    [
      `failed requests in kill cycles (${t?.cycles.kill ?? "n/a"})`,
      "0 GET; POST at most those in flight at the kills",
      ...each((f) => failedOf(f, "kill")),
      met(ours && ours.failed.kill.GET === 0 && ours.failed.kill.POST <= inFlight(ours)),
    ],
    ["requests in flight at each kill (HAProxy's scur)", "", ...each((f) => f.inFlightAtKills.join(", ") || "n/a"), ""],
    ["failed requests after the host death", "", ...each((f) => failedOf(f, "host")), ""],
    [
      "requests in flight at the host death",
      "",
      ...each((f) => String(f.inFlightAtHostDeath ?? "n/a")),
      "",
    ],
    [
      "host death to out of rotation",
      "within 3 s, no failed GET",
      ...each(hostOut),
      met(ours && ours.hostOutMs !== null && ours.hostOutMs <= 3000 && ours.failed.host.GET === 0),
    ],
    [
      "requests received twice (sent, then retried by HAProxy on another instance), by cycle",
      "",
      ...each(twice),
      "",
    ],
    [
      "record removed to server out of rotation",
      "p99 50 ms",
      ...each((f) => p50p99(f.removedToOutMs), true),
      met(ours && ours.removedToOutMs.length > 0 && percentile(ours.removedToOutMs, 99) <= 50),
    ],
    [
      "record removed to the sync's `server out` log line (it logs once HAProxy answered)",
      "",
      ...each((f) => p50p99(f.removedToLoggedMs), true),
      "",
    ],
    ["new record to server serving", "", ...each((f) => p50p99(f.putToServingMs), true), ""],
    ["SIGKILL to record gone (the secretary's own finding)", "", ...each((f) => p50p99(f.killToGoneMs), true), ""],
    [
      "SIGKILL to out of rotation (by the registry or HAProxy's check)",
      "",
      ...each((f) => p50p99(f.killToOutMs), true),
      "",
    ],
    [
      "HAProxy reloads (new Pids in `show info`)",
      "0",
      ...each((f) => String(f.reloads)),
      met(ours && ours.reloads === 0),
    ],
    [
      "throughput during the churn, against the baseline",
      "",
      ...each((f) =>
        `${f.throughput.churn.toFixed(0)} of ${f.throughput.baseline.toFixed(0)} req/s (${
          (100 * f.throughput.churn / f.throughput.baseline).toFixed(0)
        }%)`
      ),
      "",
    ],
    [
      "latency of successful requests, p99 / worst: baseline; stop; kill; host death",
      "",
      ...each((f) =>
        (["baseline", "stop", "kill", "host"] as const).map((w) => {
          const l = f.latency[w];
          return l ? `${formatMs(l.p99Ms)} / ${formatMs(l.worstMs)}` : "n/a";
        }).join("; ")
      ),
      "",
    ],
    [
      "HAProxy's retries, redispatches during the churn",
      "",
      ...each((f) => `${f.haproxyRetries}, ${f.haproxyRedispatches}`),
      "",
    ],
  ];
}

/**
 * The nginx lanes' rows: figure, target (for lane 4), lanes 4 to 6, lane 1 (HAProxy) beside them where it has the
 * like figure, and whether lane 4 met it.
 */
function trafficNginxRows(t: TrafficFigures | undefined): string[][] {
  const met = (ok: boolean | undefined) => ok === undefined ? "" : ok ? "yes" : "**no**";
  const [ours, wait, every, closing] = [0, 3, 4, 5].map((i) => t?.lanes[i]);
  const n4 = wait?.nginx ?? undefined;
  /** Lanes 4 to 6, then lane 1's like figure (or nothing). */
  const each = (cell: (f: TrafficLane) => string, haproxy?: (f: TrafficLane) => string) => [
    ...[wait, every, closing].map((f) => (f?.nginx ? cell(f) : "n/a")),
    ours && haproxy ? haproxy(ours) : "",
  ];
  const nginx = (cell: (n: NonNullable<TrafficLane["nginx"]>) => string) => (f: TrafficLane) => cell(f.nginx!);
  const throughput = (f: TrafficLane) =>
    `${f.throughput.churn.toFixed(0)} of ${f.throughput.baseline.toFixed(0)} req/s (${
      (100 * f.throughput.churn / f.throughput.baseline).toFixed(0)
    }%)`;
  const latency = (f: TrafficLane) =>
    (["baseline", "stop", "kill", "host"] as const).map((w) => {
      const l = f.latency[w];
      return l ? `${formatMs(l.p99Ms)} / ${formatMs(l.worstMs)}` : "n/a";
    }).join("; ");
  return [
    [
      `failed requests in stop cycles (${t?.cycles.stop ?? "n/a"})`,
      "0 of either method",
      ...each((f) => failedOf(f, "stop"), (f) => failedOf(f, "stop")),
      met(wait && wait.failed.stop.GET + wait.failed.stop.POST === 0),
    ],
    [
      `failed requests in kill cycles (${t?.cycles.kill ?? "n/a"})`,
      "",
      ...each((f) => failedOf(f, "kill"), (f) => failedOf(f, "kill")),
      "",
    ],
    [
      "failed requests after the host death",
      "",
      ...each((f) => failedOf(f, "host"), (f) => failedOf(f, "host")),
      "",
    ],
    [
      "record removed to nginx reloaded (the render's `reloaded` line); lane 1: to out of rotation",
      "p99 100 ms",
      ...each(nginx((n) => p50p99(n.removedToReloadedMs)), (f) => p50p99(f.removedToOutMs)),
      met(n4 && n4.removedToReloadedMs.length > 0 && percentile(n4.removedToReloadedMs, 99) <= 100),
    ],
    [
      "record removed to nginx's new worker (its error log)",
      "",
      ...each(nginx((n) => p50p99(n.removedToWorkerMs))),
      "",
    ],
    [
      "new record to nginx reloaded with it; lane 1: to serving",
      "",
      ...each(nginx((n) => p50p99(n.putToReloadedMs)), (f) => p50p99(f.putToServingMs)),
      "",
    ],
    [
      "nginx reloads during the churn (a minute); lane 1: HAProxy reloads",
      "at most removals + one per `--wait` window",
      ...each(
        nginx((n) => `${n.reloads} (${n.reloadsPerMinute.toFixed(1)}/min)`),
        (f) => String(f.reloads),
      ),
      met(n4 && n4.reloads <= n4.removals + n4.windows),
    ],
    [
      "changes that removed an instance + `--wait` windows of the others (without `--wait`: one a change)",
      "",
      ...each(nginx((n) => `${n.removals} + ${n.windows} = ${n.removals + n.windows} (other changes: ${n.additions})`)),
      "",
    ],
    [
      "the render's `rendered` / `reloaded` log lines during the churn",
      "",
      ...each(nginx((n) => `${n.rendered} / ${n.reloaded}`)),
      "",
    ],
    [
      "SIGKILL to record gone (the secretary's own finding)",
      "",
      ...each((f) => p50p99(f.killToGoneMs), (f) => p50p99(f.killToGoneMs)),
      "",
    ],
    [
      "host death to record gone (its lease expired)",
      "",
      ...each(
        (f) => f.hostRecordGoneMs === null ? "never" : formatMs(f.hostRecordGoneMs),
        (f) => f.hostRecordGoneMs === null ? "never" : formatMs(f.hostRecordGoneMs),
      ),
      "",
    ],
    [
      "throughput during the churn, against the baseline",
      "",
      ...each(throughput, throughput),
      "",
    ],
    [
      "latency of successful requests, p99 / worst: baseline; stop; kill; host death",
      "",
      ...each(latency, latency),
      "",
    ],
  ];
}

/** The section: what ran, the tables (HAProxy's lanes, nginx's), and which lane-1 and lane-4 targets this run met. */
export function trafficSection(t: TrafficFigures | undefined): string {
  const rows = trafficRows(t);
  const header = ["figure", "target (lane 1)", "1. ours", "2. no registry", "3. ours, --no-watch-connection", "met"];
  const what = t
    ? `${t.churnSeconds} s of churn after a ${t.baselineSeconds} s baseline: ${t.cycles.stop} stops, ${t.cycles.kill} ` +
      `kills and one host death, a cycle every ${
        t.cycleMs / 1000
      } s; ${t.clients} keep-alive clients a lane, GET and ` +
      `POST in turn, ${t.deadlineMs / 1000} s deadline, no client retry; instances answer after ${t.workMs} ms. ` +
      `Secretaries: \`${t.secretaryArgs.join(" ")}\` (${t.runtime === "deno" ? "the bundle" : "source"}); ` +
      `the sync's server options: \`${t.serverOptions}\`; lane 2's servers: \`${t.staticServerOptions}\`.` +
      (t.backendLines.length ? ` Added to every backend: \`${t.backendLines.join("; ")}\`.` : "") +
      ` The machine's load average (1 min, 2 cores) was ${t.loadAverage.start} as the churn began and ` +
      `${t.loadAverage.end} as it ended.`
    : "The traffic benchmark failed or did not run.";
  const nginxRows = trafficNginxRows(t);
  const nginxHeader = [
    "figure",
    "target (lane 4)",
    "4. nginx, `render --wait`",
    "5. nginx, reload on every change (confd)",
    "6. nginx, `render --wait`, `keepalive_timeout 0`",
    "1. ours (HAProxy), beside them",
    "met",
  ];
  const wait = t?.lanes[3]?.nginx?.wait;
  const nginxWhat = t?.lanes[3]?.nginx
    ? `Lanes 4 to 6 of the same run, with the same churn and load: Debian's nginx with \`proxy_next_upstream ` +
      `error timeout http_502\` and \`proxy_connect_timeout 1s\`, its upstream rendered by \`registry render\` ` +
      `from the shipped template (units/examples/nginx/apache-upstream.conf.tmpl), checked with \`nginx -t\` and ` +
      `reloaded with \`nginx -s reload\`; lane 4 with the shipped unit's \`--wait ${wait}\`, lane 5 without ` +
      "`--wait` (every change rendered and reloaded at once, as confd does); lane 6 as lane 4, with " +
      "`keepalive_timeout 0;` in nginx's server block (no keep-alive to the clients: at a reload, nginx's old " +
      "worker closes its idle keep-alive connections, and a request sent on one at that instant fails unless the " +
      "client retries it). nginx's upstream state cannot be read: times run to the render's `reloaded` line and to " +
      "nginx's new worker, not to out of rotation."
    : "The nginx lanes did not run.";
  return `## Traffic through HAProxy while instances come and go

${what}

${markdown(rows, header)}

${verdict(rows)}

## Traffic through nginx fed by \`registry render\`

${nginxWhat}

${markdown(nginxRows, nginxHeader)}

${verdict(nginxRows)}`;
}

/** HAProxy reloaded mid-run and a burst of removals (bench/reload.ts, bench/burst.ts): a table of their own. */
function reloadAndBurst(r: ReloadFigures | undefined, b: BurstFigures | undefined): string {
  const { what, rows } = reloadSection(r, b);
  return `## HAProxy reloaded mid-run, and a burst of removals

${what}

${markdown(rows, ["figure", "target", "this run", "met"])}

${verdict(rows)}`;
}

/** Which targets this run met and missed, from the table's own cells. */
function verdict(rows: string[][]): string {
  const met = (r: string[]) => r[r.length - 1];
  const judged = rows.filter((r) => met(r) === "yes" || met(r) === "**no**");
  const missed = judged.filter((r) => met(r) === "**no**");
  const unjudged = rows.filter((r) => r[1] !== "" && met(r) === "");
  const parts = [
    missed.length
      ? `This run missed ${missed.length} of the ${judged.length} targets it judged:\n\n${
        missed.map((r) => `- ${r[0]}. Target: ${r[1]}; this run: ${r[2]}.`).join("\n")
      }`
      : `This run met all ${judged.length} targets it judged.`,
  ];
  if (unjudged.length) {
    parts.push(
      `Not judged, as their benchmark failed or did not run: ${unjudged.map((r) => r[0]).join("; ")}.`,
    );
  }
  return parts.join("\n\n");
}

/** Lease load and watch fan-out (bench/leases.ts, bench/fanout.ts), with the scale targets judged from the run. */
export function scaleSection(leases: LeaseFigures | undefined, fanout: FanoutFigures | undefined): string {
  const judged: string[] = [];
  if (leases) {
    const big = leases.runs.filter((r) => r.instances >= 10_000);
    for (const r of big) {
      const held = !r.error && r.registered === r.instances && r.leasesLost === 0;
      const out = !r.error && r.killed.length > 0 && r.killedWithinBound === r.killed.length;
      judged.push(
        `- ${r.instances.toLocaleString("en-US")} instances, TTL ${r.ttlSeconds} s, ${
          r.path === "proxy" ? `${r.proxies} gRPC proxies` : "direct"
        }: ${
          r.error
            ? `failed (${r.error})`
            : `${held ? "held" : "**not held**"} (${r.leasesLost} leases lost), the ${r.killed.length} killed ${
              out ? "out" : "**not all out**"
            } within ${formatMs(leases.killBoundMs)} (${r.killedWithinBound} were)`
        }.`,
      );
    }
  }
  if (fanout) {
    const base = fanout.runs.find((r) =>
      r.watchers === 1 && r.path === "direct" && r.follower === "follow" && !r.error
    );
    const proxied = fanout.runs.find((r) =>
      r.watchers === 100 && r.path === "proxy" && r.follower === "follow" && !r.error
    );
    if (base && proxied) {
      const ratio = proxied.p99Ms / base.p99Ms;
      judged.push(
        `- 100 watchers through the gRPC proxy: watch p99 ${formatMs(proxied.p99Ms)}, ${ratio.toFixed(1)}x one ` +
          `direct watcher's ${formatMs(base.p99Ms)} (target: at most 2x): ${ratio <= 2 ? "met" : "**missed**"}.`,
      );
    }
  }
  return `## Scale: lease load and watch fan-out

Targets: 10,000 instances held with 0 leases lost and 10 killed ones out within 0.5 s; at 100 watchers through etcd's
gRPC proxy, watch p99 no worse than twice one direct watcher's. What to run at each size, from these tables:
[docs/scale.md](../docs/scale.md).

${judged.length ? judged.join("\n") : "Neither the lease load nor the fan-out ran."}

Lease load ([leases.ts](leases.ts)): the secretary's own registrar (lib/registrar.ts), one connection an instance, in
the threads of one process on the machine's two cores beside three members on loopback; "proxies": one
\`etcd grpc-proxy\` per host group.

${leases ? leaseTable(leases) : "The lease load failed or did not run."}

Watch fan-out ([fanout.ts](fanout.ts)): followers of one service (lib/follow.ts, as \`registry watch\`, \`sync\`
and \`render\` follow it), each with its own connection, while its instances change; then a quiet window.

${fanout ? fanoutTable(fanout) : "The fan-out failed or did not run."}`;
}

function readme(results: Map<string, PhaseResult>, began: Date, minutes: number, note: string): string {
  const command = quick ? "node_modules/.bin/deno run -A bench/all.ts --quick" : "node_modules/.bin/deno task bench";
  const rows = tableRows(results);
  const killed = results.get("killed")?.figures as KilledFigures | undefined;
  const mem = results.get("memory")?.figures as MemoryFigures | undefined;
  const scale = results.get("scale")?.figures as ScaleFigures | undefined;
  const details = [...results.values()].map((r) =>
    `### ${r.name} (${r.seconds.toFixed(0)} s${
      r.error ? `, failed: ${r.error}` : ""
    })\n\n\`\`\`\n${r.output.trim()}\n\`\`\``
  ).join("\n\n");
  return `# Benchmarks

${
    quick
      ? "**A quick run (`--quick`): few trials and short windows, so the figures are noisy. Run `deno task bench` for the figures of record.**\n\n"
      : ""
  }\
- Date: ${began.toISOString()}, ${minutes.toFixed(1)} minutes
- Machine: ${machine()}
- Command: \`${command}\`${note ? `\n- ${note}` : ""}

Our secretary at its defaults (\`${DEFAULT_ARGS.join(" ")}\`; the deno bundle unless a runtime is named) beside the
2015 article's bash loop ([article-loop.sh](article-loop.sh)) on etcd's v2 API, at the article's interval and TTL and
at ours. Times run from the event to the record's watch event (etcd v3 watch for ours, v2 long polls for the loop).

${markdown(rows)}

${verdict(rows)}

${trafficSection(results.get("traffic")?.figures as TrafficFigures | undefined)}

${
    reloadAndBurst(
      results.get("reload")?.figures as ReloadFigures | undefined,
      results.get("burst")?.figures as BurstFigures | undefined,
    )
  }

${
    scaleSection(
      results.get("leases")?.figures as LeaseFigures | undefined,
      results.get("fanout")?.figures as FanoutFigures | undefined,
    )
  }

How each figure is taken:

- Removal ([removal.ts](removal.ts)): each trial waits a random part of the check interval first; trials run in
  parallel lanes, each with its own target and key. "Killed": the target stops listening; "hung": it accepts and never
  answers. The article's SIGTERM is systemd's stop: SIGTERM to the unit's processes, then its ExecStop
  (\`etcdctl rm\`), timed from the SIGTERM.
- Cost ([cost.ts](cost.ts)): an idle window after every instance registered, each set on its own etcd; counters from
  etcd's \`/metrics\`. The loop's v2 TTL keys make the leader commit expiry sweeps, shown as cluster-wide proposals.
  Memory is VmRSS at the end of the window; CPU is utime + stime over the window (the loop's with its exited children,
  over whole passes); the loop's processes are counted by shims on its PATH, ours by looking for its children
  throughout the window.
- Killed ([killed.ts](killed.ts)): a server in its own process (\`deno eval\` of Deno.serve) killed with SIGKILL, and
  Debian's Apache (mpm_event, its own minimal config) with its whole process group killed with SIGKILL, as a crash or
  systemd's KillMode=control-group takes it; each with the connection watch on (the default) and off, ${
    killed ? `${killed.trials} trials each, ${killed.rows.length} lanes side by side` : "one lane each, side by side"
  }; each kill comes a random phase of the interval after the record is back.
- Checks ([checks.ts](checks.ts)): one sidekick at a time, alone on the benchmark's etcd, for each check kind: http and
  tcp against a target, exec of \`/bin/true\`, and exec of \`sh -c "echo '{…}'"\`, whose JSON status is in the record
  before the window starts and never changes. An idle window one interval after it registered; CPU is utime + stime +
  cutime + cstime (with its exited children) over the window; processes are the execs \`perf stat\` counts in the
  sidekick and everything it starts (its output also has perf's task-clock, to the nanosecond, beside the clock ticks
  of \`/proc\`).
- Memory as a host pays it ([memory.ts](memory.ts)): the bundle started as
  [units/apache-secretary@.service](../units/apache-secretary@.service)'s ExecStart starts it (node: the same
  arguments), one sidekick on a host and ${mem?.perHost ?? "several"} on another, under each runtime, each beside its
  own target. Each host is a folder holding its own copy of the runtime and the bundle, as /opt/bin is, so hosts share
  no page but the system's libraries. Rss, Pss and Private_Clean + Private_Dirty from /proc/PID/smaps_rollup at the end
  of an idle window, per sidekick (the host's sum divided by its sidekicks); shared is RSS - private. PSS divides each
  shared page among the processes that map it, so it is what a sidekick costs its host.
- Reads ([reads.ts](reads.ts)): wall time of each whole process, median of several runs, against the same etcd in the
  same run. Watch latency: from just before each put or delete to its line on \`registry watch\`'s stdout.
- Scale ([scale.ts](scale.ts)): ${
    scale ? `${scale.instances} sidekicks` : "sidekicks"
  } started at a steady rate, each with its own target, all served by the benchmark's one process.
- Traffic ([traffic.ts](traffic.ts)): six lanes side by side (their cycles a sixth of a cycle apart), each a proxy
  before three instances, each a process of its own on a host of its own: Debian's HAProxy (\`retries 3\`,
  \`option redispatch 1\`, \`retry-on conn-failure empty-response response-timeout\`) in lanes 1 to 3, Debian's nginx
  in lanes 4 to 6. A stop is systemd's:
  SIGTERM to the secretary (it removes the record, drains, exits), then to the service; a kill is SIGKILL to the
  service, its HAProxy sessions read just before; the host death drops every packet to and from a host (a network
  namespace behind a veth pair) before its service and secretary get SIGKILL, so no RST ever comes. Lane 2 restarts an
  instance on its port, the others on a new one. A request fails on any non-2xx or socket error, filed under the cycle
  in effect in its lane when it ended. Times are from the event (the benchmark's own etcd watch, or the drop) to
  HAProxy's \`show servers state\` showing it, polled every 2 ms; requests received twice are counted from the ids
  the instances print on receipt, filed under what happened to the instance that got them first.
- Reloads ([reload.ts](reload.ts)): Debian's HAProxy on the shipped example config, run as Debian's unit runs it
  (master-worker), reloaded as \`systemctl reload haproxy\` does it; from each SIGUSR2, the admin socket polled every
  2 ms until the new worker answers with every instance in rotation. The load is the traffic benchmark's, one lane.
- Burst ([burst.ts](burst.ts)): records put straight into etcd (no lease, no secretary), each at a port of one process
  that accepts and closes every connection; one delete-range removes them all in one revision.
- The soak ([soak.ts](soak.ts)) is not part of this suite: it runs far longer than the rest.

## Output of each benchmark

${details}
`;
}

async function main(): Promise<void> {
  const began = new Date();
  let note = "";
  if (!bundlesBuilt()) {
    console.log("[all] dist/ lacks the bundles: node_modules/.bin/deno task bundle");
    const built = await new Deno.Command(`${ROOT}node_modules/.bin/deno`, { args: ["task", "bundle"], cwd: ROOT })
      .output();
    if (!built.success || !bundlesBuilt()) {
      note = "The bundles could not be built: ours ran from source (deno), no node figures.";
    }
  }
  const dir = await Deno.makeTempDir({ prefix: "secretary-bench-" });
  const results = new Map<string, PhaseResult>();
  const stage = async (phases: Phase[]) => {
    for (const r of await Promise.all(phases.map((p) => run(p, dir)))) results.set(r.name, r);
  };
  try {
    await stage([
      { name: "removal-ours", script: "removal.ts", args: ["--impl", "ours", ...q], limitMinutes: 8 },
      {
        name: "removal-article-20s",
        script: "removal.ts",
        args: ["--impl", "article", "--interval", "20", "--ttl", "30", ...q],
        limitMinutes: 8,
      },
      { name: "cost", script: "cost.ts", args: q, limitMinutes: 6 },
    ]);
    await stage([{
      name: "removal-article-2s",
      script: "removal.ts",
      args: ["--impl", "article", "--interval", "2", "--ttl", "10", ...q],
      limitMinutes: 5,
    }]);
    await stage([{ name: "reads", script: "reads.ts", args: q, limitMinutes: 5 }]);
    await stage([{ name: "killed", script: "killed.ts", args: q, limitMinutes: 6 }]);
    await stage([{ name: "checks", script: "checks.ts", args: q, limitMinutes: 8 }]);
    await stage([{ name: "memory", script: "memory.ts", args: q, limitMinutes: 4 }]);
    await stage([{ name: "scale", script: "scale.ts", args: q, limitMinutes: 8 }]);
    await stage([{ name: "traffic", script: "traffic.ts", args: q, limitMinutes: 6 }]);
    await stage([{ name: "reload", script: "reload.ts", args: q, limitMinutes: 4 }]);
    await stage([{ name: "burst", script: "burst.ts", args: q, limitMinutes: 15 }]);
    await stage([{ name: "fanout", script: "fanout.ts", args: q, limitMinutes: 10 }]);
    await stage([{ name: "leases", script: "leases.ts", args: q, limitMinutes: 45 }]);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  const minutes = (Date.now() - began.getTime()) / 60_000;
  const failed = [...results.values()].filter((r) => r.error);
  await Deno.writeTextFile(values.out, readme(results, began, minutes, note));
  // as `deno task check` wants it: deno fmt aligns the table
  await new Deno.Command(Deno.execPath(), { args: ["fmt", "--quiet", values.out], cwd: ROOT }).output();
  console.log(`[all] ${minutes.toFixed(1)} minutes; wrote ${values.out}`);
  for (const r of failed) console.log(`[all] ${r.name} failed: ${r.error}`);
}

if (import.meta.main) await main();
