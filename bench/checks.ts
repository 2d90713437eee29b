/**
 * What each check kind costs the host: one healthy, registered sidekick at a
 * time (the deno bundle as its unit runs it, at the default 2 s interval),
 * alone on the benchmark's own etcd, for each of
 *
 * - `--check http` (GET / on ip:port),
 * - `--check tcp`,
 * - `--check exec --command /bin/true`,
 * - `--check exec` with a command that prints a JSON status that never
 *   changes (`sh -c "echo '{…}'"`), checked in the record before the window,
 *
 * each with a target listening on its ip:port, as an instance would (the
 * connection watch, on by default, holds an idle connection to it).
 *
 * Over an idle window (`--minutes`, one by default) that starts one interval
 * after the record is registered: CPU seconds per hour of the sidekick with
 * its exited children (utime + stime + cutime + cstime, in 10 ms ticks), the
 * children's part of it, resident memory at the end, and etcd's revision
 * growth and writes (a steady status writes nothing). `perf stat` on the
 * sidekick and everything it starts counts the processes (execs: the
 * sidekick itself never execs) and tasks (processes and threads) started,
 * and CPU again to the nanosecond (task-clock); without perf, processes are
 * reckoned as one per check.
 *
 * ```sh
 * node_modules/.bin/deno run -A bench/checks.ts [--minutes 1]
 * node_modules/.bin/deno run -A bench/checks.ts --quick     # a 20 s window per check
 * ```
 *
 * @module
 */
import { isDeepStrictEqual, parseArgs } from "node:util";
import type { Etcd } from "../lib/etcd.ts";
import { currentRevision, delay, EtcdCluster, Script, TestServer, waitFor } from "../testbed/testbed.ts";
import {
  benchmark,
  commandFor,
  cpuSecondsOf,
  DEFAULT_ARGS,
  formatMiB,
  INTERVAL_MS,
  keyOf,
  mainRuntime,
  memoryOf,
  metricsDelta,
  now,
  type Runtime,
  scrapeMetrics,
} from "./lib.ts";

/** The status the reporting exec check prints, every time the same. */
export const STATUS = { version: "1.2", load: 0.5 };

/** One check kind as measured. */
export interface CheckCost {
  /** `http`, `tcp`, `exec /bin/true`, `exec with a JSON status`. */
  label: string;
  /** The check's flags, as given to the sidekick. */
  args: string[];
  windowSeconds: number;
  /** The sidekick with its exited children. */
  cpuSecondsPerHour: number;
  /** Of it, the exited children's (cutime + cstime). */
  childCpuSecondsPerHour: number;
  processesPerMinute: number;
  /** `perf`: execs counted over the window; `interval`: one process per check, from the window and the interval. */
  processesCountedBy: "perf" | "interval";
  /** New tasks (processes and threads) per minute, when perf counted them. */
  tasksPerMinute?: number;
  /** CPU seconds per hour as perf's task-clock counts them (to the nanosecond, children included), when it could. */
  taskClockSecondsPerHour?: number;
  rssKiB: number;
  anonKiB: number;
  fileKiB: number;
  /** etcd's revision growth over the window, per minute: 0 while the record and its status stay the same. */
  revisionsPerMinute: number;
  /** Puts and deletes per minute. */
  writesPerMinute: number;
  /** The record's `status` as read from etcd before the window. */
  status?: unknown;
}

export interface ChecksFigures {
  runtime: Runtime;
  intervalMs: number;
  windowSeconds: number;
  checks: CheckCost[];
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    minutes: { type: "string" },
    quick: { type: "boolean", default: false },
    json: { type: "string" },
  },
});
const windowMs = Number(values.minutes ?? (values.quick ? 1 / 3 : 1)) * 60_000;

// a JSON string is also one "…" word for --command's splitting: \" and \\ are its only escapes
const STATUS_COMMAND = `sh -c ${JSON.stringify(`echo '${JSON.stringify(STATUS)}'`)}`;

const KINDS: { label: string; args: string[]; status?: unknown }[] = [
  { label: "http", args: ["--check=http"] },
  { label: "tcp", args: ["--check=tcp"] },
  { label: "exec /bin/true", args: ["--check=exec", "--command=/bin/true"] },
  {
    label: "exec with a JSON status",
    args: ["--check=exec", `--command=${STATUS_COMMAND}`],
    status: STATUS,
  },
];

const clusters: EtcdCluster[] = [];
const targets: TestServer[] = [];
const scripts: Script[] = [];
const clients: Etcd[] = [];
const counters: TaskCounter[] = [];

/**
 * Counts, with `perf stat`, the processes (execs: the sidekick itself never
 * execs) and tasks (processes and threads) that a process and everything it
 * starts after the count began start. Counting a tracepoint costs the counted
 * process next to nothing.
 */
class TaskCounter {
  readonly started = now();
  #child: Deno.ChildProcess;

  private constructor(pid: number) {
    this.#child = new Deno.Command("perf", {
      args: ["stat", "-x", ",", "-e", "task-clock,sched:sched_process_exec,task:task_newtask", "-p", String(pid)],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
  }

  /** Starts counting; undefined when perf is not installed. */
  static start(pid: number): TaskCounter | undefined {
    try {
      const counter = new TaskCounter(pid);
      counters.push(counter);
      return counter;
    } catch {
      return undefined;
    }
  }

  /** Stops counting; undefined when perf could not count (not permitted, no tracepoints). */
  async stop(): Promise<{ execs: number; tasks: number; cpuSeconds: number; minutes: number } | undefined> {
    const minutes = (now() - this.started) / 60_000;
    try {
      this.#child.kill("SIGINT");
    } catch { /* already exited */ }
    const text = new TextDecoder().decode((await this.#child.output()).stderr);
    // CSV lines: count,unit,event,…; "<not counted>" or "<not supported>" when it could not count
    const count = (event: string) => Number(text.split("\n").find((l) => l.split(",")[2] === event)?.split(",")[0]);
    const execs = count("sched:sched_process_exec");
    const tasks = count("task:task_newtask");
    const cpuSeconds = count("task-clock") / 1000; // in msec
    return [execs, tasks, cpuSeconds].every(Number.isFinite) ? { execs, tasks, cpuSeconds, minutes } : undefined;
  }

  kill(): void {
    try {
      this.#child.kill("SIGKILL");
    } catch { /* already exited */ }
  }
}

/** Starts a sidekick for `target` with `checkArgs`; an exec check gets deno's `--allow-run` as well. */
function startSidekick(
  runtime: Runtime,
  target: TestServer,
  endpoints: string[],
  checkArgs: string[],
  exec: boolean,
): Script {
  const [command, args] = commandFor("secretary", runtime, [
    String(target.port),
    `--ip=${target.host}`,
    "--hostname=bench",
    `--endpoints=${endpoints.join(",")}`,
    ...DEFAULT_ARGS,
    ...checkArgs,
  ]);
  // after `run`: the unit's flags stay, plus the one the exec check needs (--allow-env is already unscoped)
  if (exec && runtime !== "node") args.splice(1, 0, "--allow-run");
  const script = new Script(command, args);
  scripts.push(script);
  return script;
}

async function measure(
  kind: (typeof KINDS)[number],
  index: number,
  runtime: Runtime,
  cluster: EtcdCluster,
  client: Etcd,
): Promise<CheckCost> {
  // every kind has an instance listening: the connection watch (on by default) holds an idle connection to it
  const target = await TestServer.start(`127.0.9.${index + 1}`);
  targets.push(target);
  const exec = kind.args.includes("--check=exec");
  const key = keyOf(target);
  const script = startSidekick(runtime, target, cluster.endpoints, kind.args, exec);
  const record = await waitFor(
    async () => {
      if (!script.running) throw new Error(`the sidekick for ${kind.label} exited:\n${script.stderr}`);
      const stored = await client.get(key);
      if (!stored) return undefined;
      const parsed = JSON.parse(stored.value);
      return (kind.status === undefined || isDeepStrictEqual(parsed.status, kind.status)) && parsed;
    },
    `${kind.label}: ${key} registered${kind.status ? " with its status" : ""}\n${script.stderr}`,
    30_000,
  );
  console.log(`${kind.label}: registered${record.status ? ` with status ${JSON.stringify(record.status)}` : ""}`);
  await delay(INTERVAL_MS); // let the start settle

  const counter = TaskCounter.start(script.pid);
  await delay(500); // perf attached
  const sample = async () => ({
    at: now(),
    cpu: cpuSecondsOf(script.pid, true),
    own: cpuSecondsOf(script.pid),
    revision: Number(await currentRevision(client)),
    metrics: await scrapeMetrics(cluster.endpoints[0]),
  });
  const before = await sample();
  await delay(windowMs);
  const after = await sample();
  const counted = await counter?.stop();
  const memory = memoryOf(script.pid);
  const stillThere = await client.get(key);
  if (!stillThere) throw new Error(`${kind.label}: ${key} was gone at the end of the window\n${script.stderr}`);
  await script.stop("SIGTERM");

  const seconds = (after.at - before.at) / 1000;
  const perHour = (s: number) => s / seconds * 3600;
  const d = metricsDelta(before.metrics, after.metrics);
  return {
    label: kind.label,
    args: kind.args,
    windowSeconds: seconds,
    cpuSecondsPerHour: perHour(after.cpu - before.cpu),
    childCpuSecondsPerHour: perHour(after.cpu - after.own - (before.cpu - before.own)),
    processesPerMinute: counted ? counted.execs / counted.minutes : exec ? 60_000 / INTERVAL_MS : 0,
    processesCountedBy: counted ? "perf" : "interval",
    ...(counted
      ? {
        tasksPerMinute: counted.tasks / counted.minutes,
        taskClockSecondsPerHour: counted.cpuSeconds / counted.minutes * 60,
      }
      : {}),
    ...memory,
    revisionsPerMinute: (after.revision - before.revision) / (seconds / 60),
    writesPerMinute: (d.puts + d.deletes) / (seconds / 60),
    ...(record.status === undefined ? {} : { status: record.status }),
  };
}

async function main(): Promise<ChecksFigures> {
  const runtime = mainRuntime();
  const cluster = await EtcdCluster.create(1);
  clusters.push(cluster);
  await cluster.start();
  const client = cluster.client();
  clients.push(client);
  console.log(
    `${runtime === "source" ? "deno (source)" : runtime}, interval ${INTERVAL_MS / 1000} s, one sidekick at a time, ` +
      `a window of ${windowMs / 1000} s each`,
  );
  const figures: ChecksFigures = { runtime, intervalMs: INTERVAL_MS, windowSeconds: windowMs / 1000, checks: [] };
  for (const [index, kind] of KINDS.entries()) {
    figures.checks.push(await measure(kind, index, runtime, cluster, client));
  }
  return figures;
}

const COLUMNS = [
  "check",
  "CPU s/h",
  "children's",
  "perf's",
  "processes/min",
  "tasks/min",
  "RSS",
  "revisions/min",
  "writes/min",
];
const WIDTHS = [24, 8, 11, 7, 14, 10, 10, 14, 10];

function n(x: number | undefined): string {
  if (x === undefined || !Number.isFinite(x)) return "n/a";
  return x.toFixed(x !== 0 && Math.abs(x) < 10 ? 2 : 0);
}

function row(cells: string[]): string {
  return cells.map((c, i) => (i === 0 ? c.padEnd(WIDTHS[i]) : c.padStart(WIDTHS[i]))).join("  ");
}

function line(c: CheckCost): string {
  return row([
    c.label,
    n(c.cpuSecondsPerHour),
    n(c.childCpuSecondsPerHour),
    n(c.taskClockSecondsPerHour),
    `${n(c.processesPerMinute)}${c.processesCountedBy === "perf" ? "" : "*"}`,
    n(c.tasksPerMinute),
    formatMiB(c.rssKiB),
    n(c.revisionsPerMinute),
    n(c.writesPerMinute),
  ]);
}

function print(figures: ChecksFigures): void {
  console.log(
    `per sidekick over ${figures.windowSeconds} s; CPU with its exited children, from /proc (ticks) and from perf:`,
  );
  console.log(row(COLUMNS));
  for (const c of figures.checks) console.log(line(c));
  if (figures.checks.some((c) => c.processesCountedBy === "interval")) {
    console.log("* not counted (perf could not): one process per exec check, from the interval");
  }
  const status = figures.checks.find((c) => c.status !== undefined);
  if (status) console.log(`status in the record (${status.label}): ${JSON.stringify(status.status)}`);
}

const cleanup = async () => {
  for (const c of counters) c.kill();
  for (const c of clients) c.close();
  await Promise.all(scripts.map((s) => s.stop()));
  await Promise.all(targets.map((t) => t.close()));
  await Promise.all(clusters.map((c) => c.stop()));
};
await benchmark(values.json, cleanup, async () => {
  const figures = await main();
  print(figures);
  return figures;
});
