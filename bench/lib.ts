/**
 * What the benchmarks share: starting our secretary or the article's bash
 * loop for a target, clocks that time every put and delete of a key to the
 * millisecond (through an etcd v3 watch, or v2 long polls for the loop),
 * reading etcd's `/metrics` and a process's memory and CPU from `/proc`, and
 * summarising trials, and running the traffic load (testbed/traffic.ts) in a
 * process of its own. Benchmarks print figures; they never assert a speed.
 *
 * @module
 */
import { existsSync } from "node:fs";
import { ask } from "../lib/agent.ts";
import { type Etcd, type WatchHandle } from "../lib/etcd.ts";
import { DEFAULT_PREFIX, instanceKey } from "../lib/record.ts";
import { currentRevision, delay, ROOT, Script, SOURCE_FLAGS, type TestServer } from "../testbed/testbed.ts";
import type { Failure, LoadTotals } from "../testbed/traffic.ts";

/** Default settings: the product's own defaults. */
export const DEFAULT_ARGS = ["--interval=2s", "--timeout=1s", "--rise=2", "--fall=2", "--ttl=10s"];
export const INTERVAL_MS = 2000;
export const TTL_MS = 10_000;

/** How a sidekick is run: our script from source, or a bundle under deno or node. */
export type Runtime = "source" | "deno" | "node";

/** Whether `deno task bundle` has built dist/secretary.mjs and dist/registry.mjs. */
export function bundlesBuilt(): boolean {
  return existsSync(`${ROOT}dist/secretary.mjs`) && existsSync(`${ROOT}dist/registry.mjs`);
}

/** The runtime a user would run: the deno bundle when built, else the source. */
export function mainRuntime(): Runtime {
  return bundlesBuilt() ? "deno" : "source";
}

/** The runtimes to compare: both bundles when built, else the source alone. */
export function runtimes(): Runtime[] {
  return bundlesBuilt() ? ["deno", "node"] : ["source"];
}

/** The command line that runs `script` ("secretary" or "registry") under `runtime`. */
export function commandFor(script: "secretary" | "registry", runtime: Runtime, args: string[]): [string, string[]] {
  switch (runtime) {
    case "source":
      return [Deno.execPath(), ["run", ...SOURCE_FLAGS, `${script}.ts`, ...args]];
    case "deno":
      // the secretary as its unit runs it (V8's lite mode); permissions wide, as they cost nothing to measure
      return [
        Deno.execPath(),
        [
          "run",
          ...(script === "secretary" ? ["--v8-flags=--lite-mode"] : []),
          "--allow-net",
          "--allow-env",
          `dist/${script}.mjs`,
          ...args,
        ],
      ];
    case "node":
      return ["node", [`dist/${script}.mjs`, ...args]];
  }
}

/** Starts our secretary for `target` against `endpoints`. */
export function startSecretary(
  target: TestServer,
  endpoints: string[],
  options: { runtime?: Runtime; args?: string[] } = {},
): Script {
  const [command, args] = commandFor("secretary", options.runtime ?? mainRuntime(), [
    String(target.port),
    `--ip=${target.host}`,
    "--hostname=bench",
    `--endpoints=${endpoints.join(",")}`,
    ...(options.args ?? DEFAULT_ARGS),
  ]);
  return new Script(command, args);
}

// ---------------------------------------------------------------------------
// The agent: one process a host, instances attached over its socket

/** The agent's flag of DEFAULT_ARGS: the TTL of the host's one lease. */
export const AGENT_ARGS = DEFAULT_ARGS.filter((a) => a.startsWith("--ttl"));
/** The instance's flags of DEFAULT_ARGS, as attach takes them (--ttl is the agent's: attach refuses it). */
export const ATTACH_ARGS = DEFAULT_ARGS.filter((a) => !a.startsWith("--ttl"));
/**
 * The agent's command line from dist/: the bundle under deno in V8's lite
 * mode and with permissions wide, as commandFor() runs the sidekick, listening
 * on `socket` (agent.json beside it).
 */
export function agentCommand(socket: string, endpoints: string[]): [string, string[]] {
  const dir = socket.slice(0, socket.lastIndexOf("/"));
  return [Deno.execPath(), [
    "run",
    "--v8-flags=--lite-mode",
    "--allow-net",
    "--allow-env",
    `--allow-read=${dir}`,
    `--allow-write=${dir}`,
    "dist/secretary.mjs",
    "agent",
    `--socket=${socket}`,
    `--endpoints=${endpoints.join(",")}`,
    ...AGENT_ARGS,
  ]];
}

/**
 * Attaches `target` to the agent on `socket` through its protocol (what
 * `secretary attach` sends it: the port and address, then `args`, the
 * hostname among them); throws if refused.
 */
export async function attach(
  socket: string,
  target: { host: string; port: number },
  args = ["--hostname=bench", ...ATTACH_ARGS],
): Promise<void> {
  const request = { op: "attach" as const, args: [String(target.port), `--ip=${target.host}`, ...args] };
  const reply = await ask(socket, request, 30_000);
  if (!reply.ok) throw new Error(`the agent refused ${target.host}:${target.port}: ${reply.error}`);
}

/** Waits until the agent on `socket` answers (it is listening); throws after `timeoutMs`, or if `agent` exited. */
export async function agentListening(socket: string, agent: Script, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (!agent.running) throw new Error(`the agent exited:\n${agent.stderr}`);
    try {
      if ((await ask(socket, { op: "list" }, 5000)).ok) return;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`the agent did not answer on ${socket}: ${(err as Error).message}`);
    }
    await delay(100);
  }
}

/** The key of `target`'s record. */
export function keyOf(target: TestServer, service = "apache"): string {
  return instanceKey(DEFAULT_PREFIX, service, target.host, target.port);
}

// ---------------------------------------------------------------------------
// Clocks: when each key was last put and deleted

/** Records when each key was last put and deleted (ms since epoch), and counts events. */
export class EventClock {
  readonly puts = new Map<string, number>();
  readonly deletes = new Map<string, number>();
  events = 0;
  #waiters: (() => void)[] = [];

  protected record(kind: "put" | "delete", key: string): void {
    this.events++;
    (kind === "put" ? this.puts : this.deletes).set(key, now());
    for (const wake of this.#waiters.splice(0)) wake();
  }

  /** Waits until `key` is put (or deleted) at or after `since`; returns the time it happened. */
  async until(kind: "put" | "delete", key: string, since: number, timeoutMs = 60_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    const map = kind === "put" ? this.puts : this.deletes;
    while (true) {
      const at = map.get(key);
      if (at !== undefined && at >= since) return at;
      if (Date.now() > deadline) throw new Error(`no ${kind} of ${key} within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 100);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  stop(): void {}
}

/** An EventClock fed by an etcd v3 watch of a prefix. */
export class KeyClock extends EventClock {
  #handle?: WatchHandle;

  static async start(etcd: Etcd, prefix = "/services/"): Promise<KeyClock> {
    const clock = new KeyClock();
    const revision = await currentRevision(etcd);
    clock.#handle = await etcd.watch(prefix, String(BigInt(revision) + 1n), (e) => clock.record(e.type, e.key));
    return clock;
  }

  override stop(): void {
    this.#handle?.cancel();
  }
}

/**
 * An EventClock fed by etcd v2 long polls (`?wait=true&recursive=true`) of a
 * directory, as a v2 consumer would watch it: `set` counts as a put,
 * `delete` and `expire` (the TTL ran out) as deletes.
 */
export class V2Clock extends EventClock {
  #abort = new AbortController();

  static async start(endpoint: string, dir = "/services/apache"): Promise<V2Clock> {
    const clock = new V2Clock();
    const res = await fetch(`${endpoint}/v2/keys${dir}?recursive=true`);
    await res.body?.cancel();
    let index = Number(res.headers.get("X-Etcd-Index"));
    void (async () => {
      while (!clock.#abort.signal.aborted) {
        try {
          const url = `${endpoint}/v2/keys${dir}?wait=true&recursive=true&waitIndex=${index + 1}`;
          const event = await (await fetch(url, { signal: clock.#abort.signal })).json();
          if (event.errorCode === 401) { // the index fell out of etcd's 1000-event history
            index = Number(event.index);
            continue;
          }
          if (!event.node) continue; // an empty answer: etcd closed the long poll, poll again
          index = event.node.modifiedIndex;
          const gone = ["delete", "expire", "compareAndDelete"].includes(event.action);
          clock.record(gone ? "delete" : "put", event.node.key);
        } catch {
          if (!clock.#abort.signal.aborted) await delay(50);
        }
      }
    })();
    return clock;
  }

  override stop(): void {
    this.#abort.abort();
  }
}

// ---------------------------------------------------------------------------
// The article's loop

/** The article's key: one per IP. */
export function articleKey(ip: string): string {
  return `/services/apache/${ip}`;
}

/**
 * The article's loop (bench/article-loop.sh) for one target, in its own
 * process group so that a stop reaches curl, etcdctl and sleep as systemd's
 * does a unit's control group.
 */
export class ArticleLoop {
  readonly child: Deno.ChildProcess;
  #exited = false;

  constructor(
    readonly target: TestServer,
    readonly endpoint: string,
    readonly intervalSeconds: number,
    readonly ttlSeconds: number,
    options: { countProcessesIn?: string } = {},
  ) {
    const env: Record<string, string> = { ETCDCTL_API: "2", ETCDCTL_ENDPOINTS: endpoint };
    if (options.countProcessesIn) {
      env.PATH = `${makeCountingShims(options.countProcessesIn)}:${Deno.env.get("PATH")}`;
      env.COUNT_FILE = `${options.countProcessesIn}/count`;
    }
    // setsid: bash leads its own process group, so one kill reaches it and its children
    this.child = new Deno.Command("setsid", {
      args: [
        "bash",
        `${ROOT}bench/article-loop.sh`,
        target.host,
        String(target.port),
        "bench",
        String(intervalSeconds),
        String(ttlSeconds),
      ],
      env,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    this.child.status.then(() => (this.#exited = true));
  }

  get pid(): number {
    return this.child.pid;
  }

  get key(): string {
    return articleKey(this.target.host);
  }

  /** As systemd stops the unit: SIGTERM to the group, then ExecStop (`etcdctl rm`). */
  async stop(): Promise<void> {
    this.#signal("SIGTERM");
    await new Deno.Command("/usr/bin/etcdctl", {
      args: ["rm", this.key],
      env: { ETCDCTL_API: "2", ETCDCTL_ENDPOINTS: this.endpoint },
      stdout: "null",
      stderr: "null",
    }).output();
    await this.child.status;
  }

  /** SIGKILL to the group: the loop dies with its record left for the TTL. */
  async kill(): Promise<void> {
    this.#signal("SIGKILL");
    await this.child.status;
  }

  #signal(signal: Deno.Signal): void {
    if (this.#exited) return; // its group is gone; the number may be another's by now
    try {
      Deno.kill(-this.child.pid, signal);
    } catch { /* already gone */ }
  }
}

/** Writes curl, etcdctl and sleep shims that count each start in `dir`/count, then exec the real one. */
function makeCountingShims(dir: string): string {
  const bin = `${dir}/bin`;
  Deno.mkdirSync(bin, { recursive: true });
  for (const name of ["curl", "etcdctl", "sleep"]) {
    const real = new TextDecoder().decode(new Deno.Command("which", { args: [name] }).outputSync().stdout).trim();
    // exec keeps the PID: the shim adds no process of its own
    Deno.writeTextFileSync(`${bin}/${name}`, `#!/bin/sh\necho ${name} >>"$COUNT_FILE"\nexec ${real} "$@"\n`);
    Deno.chmodSync(`${bin}/${name}`, 0o755);
  }
  return bin;
}

/** How many processes the counting shims saw start. */
export function countedProcesses(dir: string): number {
  try {
    return Deno.readTextFileSync(`${dir}/count`).split("\n").filter(Boolean).length;
  } catch {
    return 0;
  }
}

// ---------------------------------------------------------------------------
// etcd's metrics and /proc

/** etcd's `/metrics` as name (with labels) to value. */
export async function scrapeMetrics(endpoint: string): Promise<Map<string, number>> {
  const text = await (await fetch(`${endpoint}/metrics`)).text();
  const metrics = new Map<string, number>();
  for (const line of text.split("\n")) {
    const match = /^([a-z_]+(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (match) metrics.set(match[1], Number(match[2]));
  }
  return metrics;
}

/** The counters the cost benchmarks read, as a difference between two scrapes. */
export function metricsDelta(before: Map<string, number>, after: Map<string, number>) {
  const d = (name: string) => (after.get(name) ?? 0) - (before.get(name) ?? 0);
  return {
    proposals: d("etcd_server_proposals_committed_total"),
    puts: d("etcd_mvcc_put_total"),
    deletes: d("etcd_mvcc_delete_total"),
    v2Sets: d('etcd_debugging_store_writes_total{action="set"}'),
    v2Deletes: d('etcd_debugging_store_writes_total{action="delete"}'),
    v2Expires: d("etcd_debugging_store_expires_total"),
    leasesGranted: d("etcd_debugging_lease_granted_total"),
    leasesRevoked: d("etcd_debugging_lease_revoked_total"),
  };
}

/** Resident memory of a process from /proc/PID/status, in KiB: total, anonymous and file-backed. */
export function memoryOf(pid: number): { rssKiB: number; anonKiB: number; fileKiB: number } {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN);
  return { rssKiB: field("VmRSS"), anonKiB: field("RssAnon"), fileKiB: field("RssFile") };
}

/**
 * A process's memory from /proc/PID/smaps_rollup, in KiB: resident (Rss),
 * proportional (Pss: each shared page divided among the processes that map
 * it) and private (Private_Clean + Private_Dirty: pages no other process maps).
 */
export function rollupOf(pid: number): { rssKiB: number; pssKiB: number; privateKiB: number } {
  const rollup = Deno.readTextFileSync(`/proc/${pid}/smaps_rollup`);
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(rollup)?.[1] ?? NaN);
  return { rssKiB: field("Rss"), pssKiB: field("Pss"), privateKiB: field("Private_Clean") + field("Private_Dirty") };
}

/** Proportional resident memory (shared pages divided among their users), in KiB. */
export function pssOf(pid: number): number {
  return rollupOf(pid).pssKiB;
}

const CLOCK_TICKS = Number(
  new TextDecoder().decode(new Deno.Command("getconf", { args: ["CLK_TCK"] }).outputSync().stdout),
);

/** CPU seconds a process has used; with `children`, also its children that have exited. */
export function cpuSecondsOf(pid: number, children = false): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ").map(Number);
  // fields[11..14] are utime, stime, cutime, cstime (stat fields 14 to 17)
  const ticks = fields[11] + fields[12] + (children ? fields[13] + fields[14] : 0);
  return ticks / CLOCK_TICKS;
}

/** When a process started, in seconds since boot. */
export function startSecondsOf(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]) / CLOCK_TICKS; // stat field 22
}

/** The PIDs of a process's children, and their command names. */
export function childrenOf(pid: number): { pid: number; comm: string }[] {
  try {
    const pids = Deno.readTextFileSync(`/proc/${pid}/task/${pid}/children`).split(" ").filter(Boolean).map(Number);
    return pids.map((p) => {
      try {
        return { pid: p, comm: Deno.readTextFileSync(`/proc/${p}/comm`).trim() };
      } catch {
        return { pid: p, comm: "" };
      }
    });
  } catch {
    return [];
  }
}

// ---------------------------------------------------------------------------
// Figures

/** The wall clock in ms with sub-ms precision, comparable with the clocks' times. */
export function now(): number {
  return performance.timeOrigin + performance.now();
}

/** The value below which `p` percent of `values` fall (nearest rank). */
export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
}

/** Median and worst of a set of times. */
export function summarize(values: number[]): { n: number; median: number; worst: number } {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  return { n: sorted.length, median, worst: sorted[sorted.length - 1] };
}

/** `1.23 s` or `45 ms`. */
export function formatMs(ms: number): string {
  if (!Number.isFinite(ms)) return "n/a";
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : ms >= 10 ? `${Math.round(ms)} ms` : `${ms.toFixed(1)} ms`;
}

/** One line of figures: `name  n=20  median 1.23 s  worst 2.34 s`. */
export function formatTimes(name: string, times: number[]): string {
  if (times.length === 0) return `${name.padEnd(36)} n=0`;
  const s = summarize(times);
  return `${name.padEnd(36)} n=${String(s.n).padEnd(3)} median ${formatMs(s.median).padStart(8)}  worst ${
    formatMs(s.worst).padStart(8)
  }`;
}

/** `12.3 MiB` from KiB. */
export function formatMiB(kib: number): string {
  return `${(kib / 1024).toFixed(1)} MiB`;
}

/**
 * A benchmark's start-up and tail, the same in every one: runs `measure`,
 * writes the figures it returns as JSON to `json` (for bench/all.ts) when
 * given, and runs `cleanup` once, whatever happens. On SIGINT or SIGTERM it
 * runs `cleanup` and exits 130, so a benchmark stopped early still stops every
 * process it started and removes etcd's data. `measure` prints its own figures.
 */
export async function benchmark<T>(
  json: string | undefined,
  cleanup: () => Promise<void>,
  measure: () => Promise<T>,
): Promise<T> {
  let cleaned: Promise<void> | undefined;
  const once = () => cleaned ??= cleanup();
  const stop = async () => {
    console.error("stopping: cleaning up");
    await once().catch(() => {});
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  try {
    const figures = await measure();
    if (json) await Deno.writeTextFile(json, JSON.stringify(figures, null, 2));
    return figures;
  } finally {
    await once();
    Deno.removeSignalListener("SIGINT", stop);
    Deno.removeSignalListener("SIGTERM", stop);
  }
}

/** A CPU share as `35%` of one core; `n/a` when not measured. */
export function cores(x: number): string {
  return Number.isFinite(x) ? `${Math.round(x * 100)}%` : "n/a";
}

// ---------------------------------------------------------------------------
// The load (testbed/traffic.ts `load`) in a process of its own

/**
 * testbed/traffic.ts `load` run as a child process: keep-alive clients per
 * URL, no retry; `label()` sets what a lane's outcomes are filed under from
 * now on, each failure is kept as it comes, and `finish()` closes its stdin
 * and returns the totals it prints last.
 */
export class LoadProcess {
  readonly failures: Failure[] = [];
  #totals?: LoadTotals;
  #labels: WritableStreamDefaultWriter<Uint8Array>;
  #reading: Promise<void>;

  private constructor(readonly child: Deno.ChildProcess) {
    this.#labels = child.stdin.getWriter();
    this.#reading = (async () => {
      let partial = "";
      const decoder = new TextDecoder();
      for await (const chunk of child.stdout) {
        const lines = (partial + decoder.decode(chunk, { stream: true })).split("\n");
        partial = lines.pop()!;
        for (const line of lines.filter(Boolean)) {
          const parsed = JSON.parse(line);
          if ("totals" in parsed) this.#totals = parsed;
          else this.failures.push(parsed);
        }
      }
    })();
  }

  static start(urls: string[], options: { clients: number; deadlineMs: number }): LoadProcess {
    return new LoadProcess(
      new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--allow-net",
          "testbed/traffic.ts",
          "load",
          ...urls,
          "--clients",
          String(options.clients),
          "--deadline-ms",
          String(options.deadlineMs),
        ],
        cwd: ROOT,
        stdin: "piped",
        stdout: "piped",
        stderr: "inherit",
      }).spawn(),
    );
  }

  /** Files lane `lane`'s outcomes (every lane's: "*") under `label` from now on. */
  async label(lane: number | "*", label: string): Promise<void> {
    await this.#labels.write(new TextEncoder().encode(`${lane} ${label}\n`));
  }

  /** Stops the clients and returns the totals by lane, label and method. */
  async finish(): Promise<LoadTotals> {
    await this.#labels.close();
    await this.#reading;
    await this.child.status;
    if (!this.#totals) throw new Error("the load printed no totals");
    return this.#totals;
  }

  /** For cleanup: SIGKILL, and wait. */
  async kill(): Promise<void> {
    try {
      this.child.kill("SIGKILL");
    } catch { /* exited */ }
    await this.child.status;
  }
}
