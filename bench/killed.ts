/**
 * Killed target to record gone, with the connection watch and without it
 * (`--no-watch-connection`): the time from the cause (the moment the SIGKILL
 * is sent) to the record's delete as a watcher sees it (an etcd v3 watch in
 * this process), p50, p99 and the worst, for two kinds of target, each
 * killed with no goodbye:
 *
 * - `process`: an HTTP server in its own process (`deno eval` with
 *   Deno.serve), killed with SIGKILL;
 * - `apache`: Debian's Apache httpd in the foreground (mpm_event, a parent
 *   and its worker children; a minimal config of its own), in its own process
 *   group, the whole group killed with SIGKILL, as systemd's
 *   KillMode=control-group does, or a crash takes the whole service.
 *
 * The secretary is the deno bundle (dist/secretary.mjs, as its unit runs it)
 * at its defaults (interval 2 s, timeout 1 s, rise 2, fall 2, TTL 10 s).
 * Each trial kills the target at a random phase of the check interval after
 * its record is back (plus `--settle` seconds, none by default), starts it
 * again on the same port and waits for the record to be back. The four
 * combinations run side by side, one lane each (its own address 127.0.3.x,
 * target and secretary), against one etcd; a watch-on lane's kill never
 * overlaps a target's start in another lane (Quiet). About 4 minutes at 50
 * trials. With n = 50, p99 (nearest rank) is the worst.
 *
 * Each trial is also split where its time went, from the secretary's own log
 * (each stderr line stamped as it arrives, on the kill's clock): to its first
 * failing check (`check failed`), and from there to the watcher's event, with
 * its `deregistered` line (etcd's answer to the delete) beside it; and etcd's
 * WAL fsync and backend commit histograms are read before and after the lanes,
 * so a slow trial shows whether the time was ours or etcd's disk.
 *
 * Apache on Linux defers accepting a connection until it sends data
 * (`AcceptFilter http data`, TCP_DEFER_ACCEPT, the default): a connection that
 * has sent nothing waits in the kernel for about 30 s (SYN-RECV on Apache's
 * side), and a kill in that time tells its client nothing. So the watch sends
 * an HTTP instance an empty line, which HTTP servers ignore before a request,
 * and Apache takes the connection at once (lib/checks.ts, Greeting).
 *
 * ```sh
 * node_modules/.bin/deno task bundle                      # when dist/ is older than the source
 * node_modules/.bin/deno run -A bench/killed.ts [--trials 50] [--settle 0] [--json killed.json]
 * node_modules/.bin/deno run -A bench/killed.ts --quick   # 4 trials, for development
 * # before and after a change: a bundle of the old code (build.ts --out /tmp/old in its tree), then dist/'s
 * node_modules/.bin/deno run -A bench/killed.ts --secretary /tmp/old/secretary.mjs --net 127.0.5
 * ```
 *
 * @module
 */
import { existsSync } from "node:fs";
import { parseArgs } from "node:util";
import { DEFAULT_PREFIX, instanceKey } from "../lib/record.ts";
import { Apache, delay, EtcdCluster, freePort, ROOT, Script, Spawned, waitFor } from "../testbed/testbed.ts";
import {
  benchmark,
  bundlesBuilt,
  commandFor,
  DEFAULT_ARGS,
  type EventClock,
  formatMs,
  INTERVAL_MS,
  KeyClock,
  now,
  percentile,
  scrapeMetrics,
  TTL_MS,
} from "./lib.ts";

/** What is killed: a one-process HTTP server, or Apache's whole process group. */
export type TargetKind = "process" | "apache";

/** One combination's times, kill to delete event, in ms. */
export interface KilledRow {
  target: TargetKind;
  /** Whether the connection watch was on (the default) or off (`--no-watch-connection`). */
  watch: boolean;
  times: number[];
  /**
   * Per trial, kill to the secretary's first failing check (its `check failed`
   * line, stamped when it arrived here), in ms. The delete starts with the
   * fall's last failing check: at once after it with the watch on (refused
   * checks come back to back), a quick re-check (250 ms at the defaults)
   * later with it off. A trial whose
   * line never came is left out of this and `toWatcher` (no NaN), so their n
   * may be below `times`'. Absent in runs saved before it was measured.
   */
  found?: number[];
  /** Per trial, `times` - `found`: from the first failing check to the watcher's event; left out with `found`'s. */
  toWatcher?: number[];
  /** Per trial, kill to the secretary's `deregistered` line (etcd answered the delete), in ms; a missing line left out. */
  deleted?: number[];
}

/** Operations of one of etcd's disk histograms during the lanes: all, and those slower than 64 and 128 ms. */
export interface DiskCounts {
  total: number;
  /** Absent from runs saved before it was counted. */
  over32ms?: number;
  over64ms: number;
  over128ms: number;
}

/** The figures: one row per target kind and watch setting. */
export interface KilledFigures {
  trials: number;
  /** How long the target ran registered before each kill, besides a random phase of the interval. */
  settleMs: number;
  /** The secretary's arguments besides its address and etcd's; the watch-off rows add `--no-watch-connection`. */
  args: string[];
  /** The bundle run, when not dist/secretary.mjs (`--secretary`). */
  secretary?: string;
  rows: KilledRow[];
  /**
   * etcd's disk during the lanes (the member's /metrics before and after):
   * WAL fsyncs and backend commits, a slow one being a likely cause of a slow
   * delete. Absent in runs saved before it was measured.
   */
  disk?: { walFsync: DiskCounts; backendCommit: DiskCounts };
}

/** Within this of the kill the record must be gone, or the trial fails: the lease's TTL and more. */
const GONE_TIMEOUT_MS = INTERVAL_MS + TTL_MS + 5000;
/** Within this of the kill the record must be back: the next check, rise - 1 quick ones, and more. */
const BACK_TIMEOUT_MS = 2 * INTERVAL_MS + 10_000;
/** Attempts to start a target again on its port (a dying process's listener may hold it a moment). */
const START_ATTEMPTS = 5;

/** A target that can be killed outright and started again on the same address. */
interface Killable {
  readonly host: string;
  readonly port: number;
  /** Starts it (again) and waits until it answers. */
  start(): Promise<void>;
  /** Sends the kill at once (before the first await); resolves when what was killed has exited. */
  kill(): Promise<void>;
}

/** An HTTP server in its own process, as tests/watch_test.ts starts one; SIGKILL takes it. */
class ServerProcess implements Killable {
  #proc?: Script;

  constructor(readonly host: string, readonly port: number) {}

  async start(): Promise<void> {
    const code = `Deno.serve({ hostname: "${this.host}", port: ${this.port}, onListen() { console.log("listening"); } },
      () => new Response("ok"));`;
    const proc = this.#proc = new Script(Deno.execPath(), ["eval", code]);
    await waitFor(() => proc.stdout.includes("listening") || (!proc.running && "exited"), "server listening", 10_000);
    if (!proc.running) throw new Error(`server on ${this.host}:${this.port} exited:\n${proc.stderr}`);
  }

  kill(): Promise<void> {
    return this.#proc?.stop("SIGKILL") ?? Promise.resolve();
  }
}

/** Debian's Apache in its own process group; SIGKILL to the group takes the parent and its workers. */
class ApacheGroup implements Killable {
  #apache?: Apache;

  constructor(readonly host: string, readonly port: number, readonly dir: string) {}

  async start(): Promise<void> {
    this.#apache = await Apache.start({ ip: this.host, port: this.port, dir: this.dir, serverName: "bench" });
  }

  kill(): Promise<void> {
    return this.#apache?.killGroup() ?? Promise.resolve();
  }
}

/**
 * One holder at a time: a watch-on lane's kill until its record is gone, or
 * any lane's target start. Starting a target (a deno or Apache process) is
 * the heaviest thing the benchmark itself does; a watch-on removal takes a few
 * milliseconds, so a start in another lane at that moment would be measured
 * as part of it. The watch-off lanes' kills (seconds) do not wait for it.
 */
class Quiet {
  #tail: Promise<void> = Promise.resolve();

  async hold<T>(fn: () => Promise<T>): Promise<T> {
    const before = this.#tail;
    let release = () => {};
    this.#tail = new Promise<void>((resolve) => (release = resolve));
    await before;
    try {
      return await fn();
    } finally {
      release();
    }
  }
}

const quiet = new Quiet();

/**
 * A secretary's stderr, each line stamped with now() when the chunk that ends
 * it arrived (the kill's clock), kept from the last clear() on.
 */
class StampedLog {
  #lines: { at: number; line: string }[] = [];
  #partial = "";

  /** For SpawnOptions.onStderr. */
  add = (text: string): void => {
    const at = now();
    const lines = (this.#partial + text).split("\n");
    this.#partial = lines.pop()!;
    // without a journal priority prefix (`<4>`), in case this runs under systemd with JOURNAL_STREAM set
    for (const line of lines) this.#lines.push({ at, line: line.replace(/^<\d>/, "") });
  };

  /** Forgets the lines so far: each trial looks only at its own. */
  clear(): void {
    this.#lines = [];
  }

  /** When the first line of `event` (lib/log.ts formatEvent: `event key=value ...`) at or after `since` came. */
  first(event: string, since: number): number | undefined {
    return this.#lines.find((l) => l.at >= since && (l.line === event || l.line.startsWith(`${event} `)))?.at;
  }
}

/** Starts `target`, again after a short wait if its port is still held. */
async function startTarget(target: Killable): Promise<void> {
  for (let attempt = 1;; attempt++) {
    try {
      return await target.start();
    } catch (err) {
      if (attempt === START_ATTEMPTS) throw err;
      await delay(200);
    }
  }
}

/**
 * The bundle's secretary (`bundle`, else dist's) at the defaults for `target`,
 * with the watch on or off, its stderr lines stamped into `log` as they come.
 */
function startSecretary(
  target: Killable,
  endpoints: string[],
  watch: boolean,
  log: StampedLog,
  bundle?: string,
): Spawned {
  const [command, args] = commandFor("secretary", "deno", [
    String(target.port),
    `--ip=${target.host}`,
    "--hostname=bench",
    `--endpoints=${endpoints.join(",")}`,
    ...DEFAULT_ARGS,
    ...(watch ? [] : ["--no-watch-connection"]),
  ]);
  // as Script runs it (from the repository), with the stamping Script has no option for
  return new Spawned(command, bundle ? args.map((a) => a === "dist/secretary.mjs" ? bundle : a) : args, {
    cwd: ROOT,
    onStderr: log.add,
  });
}

/** One trial's times from the kill, in ms: to the watcher's event, and to the secretary's two lines if they came. */
interface Trial {
  total: number;
  found?: number;
  deleted?: number;
}

/** How long after the watcher's event a trial waits for the secretary's `deregistered` line (read from its pipe). */
const LINES_WAIT_MS = 2000;

/**
 * One lane: register, then per trial wait the settle and a random phase of
 * the interval, kill the target, time the delete, start the target again and wait for the
 * record to be back. Returns each trial's times, for the slowest trials' lines.
 */
async function lane(
  row: KilledRow,
  target: Killable,
  endpoints: string[],
  clock: EventClock,
  figures: KilledFigures,
  secretaries: Spawned[],
): Promise<Trial[]> {
  const key = instanceKey(DEFAULT_PREFIX, "apache", target.host, target.port);
  await quiet.hold(() => startTarget(target));
  const log = new StampedLog();
  const secretary = startSecretary(target, endpoints, row.watch, log, figures.secretary);
  const trials: Trial[] = [];
  secretaries.push(secretary);
  const name = `${row.target}, watch ${row.watch ? "on" : "off"}`;
  try {
    await clock.until("put", key, 0, 30_000);
    for (let i = 0; i < figures.trials; i++) {
      await delay(figures.settleMs + Math.random() * INTERVAL_MS); // any phase of the check interval
      log.clear(); // this trial's lines only (first() also takes none from before the kill)
      const kill = async () => {
        const at = now(); // the cause: the SIGKILL is sent next, before any await
        const exited = target.kill();
        return { at, exited, gone: await clock.until("delete", key, at, GONE_TIMEOUT_MS) };
      };
      const { at, exited, gone } = row.watch ? await quiet.hold(kill) : await kill();
      row.times.push(gone - at);
      // the watcher can see the delete before the secretary's line has been read here; the line keeps its own stamp
      await waitFor(() => log.first("deregistered", at) !== undefined, "its line", LINES_WAIT_MS).catch(() => {});
      const found = log.first("check failed", at);
      const deleted = log.first("deregistered", at);
      const trial: Trial = { total: gone - at };
      if (found !== undefined) {
        trial.found = found - at;
        row.found?.push(found - at);
        row.toWatcher?.push(gone - found);
      }
      if (deleted !== undefined) {
        trial.deleted = deleted - at;
        row.deleted?.push(deleted - at);
      }
      trials.push(trial);
      await exited;
      await quiet.hold(() => startTarget(target));
      await clock.until("put", key, at, BACK_TIMEOUT_MS);
    }
  } catch (err) {
    throw new Error(`${name}: ${(err as Error).message}\n${secretary.stderr.slice(-2000)}`);
  } finally {
    await secretary.stop();
    await target.kill();
  }
  return trials;
}

/** Whether dist/secretary.mjs was built from a source that knows `--no-watch-connection`. */
async function bundleHasWatch(): Promise<boolean> {
  return bundlesBuilt() && (await Deno.readTextFile(`${ROOT}dist/secretary.mjs`)).includes("no-watch-connection");
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      trials: { type: "string" },
      settle: { type: "string", default: "0" },
      quick: { type: "boolean", default: false },
      json: { type: "string" },
      secretary: { type: "string" },
      net: { type: "string", default: "127.0.3" },
    },
  });
  const trials = Number(values.trials ?? (values.quick ? 4 : 50));
  const settleSeconds = Number(values.settle);
  if (!Number.isInteger(trials) || trials < 1 || !(settleSeconds >= 0)) {
    console.error(
      `killed: Cannot use --trials ${values.trials} --settle ${values.settle}: expected N >= 1, SECONDS >= 0`,
    );
    Deno.exit(2);
  }
  if (!/^127\.\d{1,3}\.\d{1,3}$/.test(values.net) || (values.secretary && !existsSync(values.secretary))) {
    console.error(
      `killed: Cannot use --net ${values.net} --secretary ${values.secretary}: expected 127.X.Y and a bundle that exists`,
    );
    Deno.exit(2);
  }
  if (!values.secretary && !(await bundleHasWatch())) {
    console.error("killed: dist/secretary.mjs is missing or predates --no-watch-connection: run deno task bundle");
    Deno.exit(2);
  }

  const cluster = await EtcdCluster.create(1);
  const dir = await Deno.makeTempDir({ prefix: "secretary-killed-" });
  const targets: Killable[] = [];
  const secretaries: Spawned[] = [];
  let clock: EventClock | undefined;
  const etcd = cluster.client();
  const cleanup = async () => {
    clock?.stop();
    etcd.close();
    await Promise.all(secretaries.map((s) => s.stop()));
    await Promise.all(targets.map((t) => t.kill()));
    await cluster.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  await benchmark(values.json, cleanup, async () => {
    await cluster.start();
    clock = await KeyClock.start(etcd);
    const figures: KilledFigures = {
      trials,
      settleMs: settleSeconds * 1000,
      args: DEFAULT_ARGS,
      ...(values.secretary ? { secretary: values.secretary } : {}),
      rows: [],
    };
    const member = cluster.members[0].clientUrl; // one member, plain http
    const diskBefore = await scrapeMetrics(member);
    const lanes: Promise<Trial[]>[] = [];
    for (const kind of ["process", "apache"] as const) {
      for (const watch of [true, false]) {
        const host = `${values.net}.${figures.rows.length + 1}`;
        const port = await freePort(host);
        const target = kind === "process"
          ? new ServerProcess(host, port)
          : new ApacheGroup(host, port, `${dir}/apache-${host}`);
        const row: KilledRow = { target: kind, watch, times: [], found: [], toWatcher: [], deleted: [] };
        figures.rows.push(row);
        targets.push(target);
        lanes.push(lane(row, target, cluster.endpoints, clock, figures, secretaries));
      }
    }
    console.log(
      `killed target to gone: ${figures.rows.length} lanes side by side, ${trials} trials each, ` +
        `each kill ${settleSeconds} s + a random phase after registration; ${values.secretary ?? "dist/secretary.mjs"}`,
    );
    const began = Date.now();
    // every lane ends (with its secretary and target stopped) before a failure is reported
    const settled = await Promise.allSettled(lanes);
    const failed = settled.find((r) => r.status === "rejected");
    if (failed) throw failed.reason;
    try {
      const diskAfter = await scrapeMetrics(member);
      figures.disk = {
        walFsync: diskCounts(diskBefore, diskAfter, "etcd_disk_wal_fsync_duration_seconds"),
        backendCommit: diskCounts(diskBefore, diskAfter, "etcd_disk_backend_commit_duration_seconds"),
      };
    } catch (err) { // the trials stand without it
      console.error(`killed: etcd's disk histograms not read: ${(err as Error).message}`);
    }
    console.log(`lanes done in ${Math.round((Date.now() - began) / 1000)} s`);
    for (const row of figures.rows) {
      console.log(formatPercentiles(`${row.target}, watch ${row.watch ? "on" : "off"}`, row.times));
    }
    // with the watch off, "to watcher" holds the fall's quick re-check besides the delete
    console.log("where the time went: kill -> first failing check (found), and from there to the watcher's event");
    figures.rows.forEach((row, i) => {
      const name = `${row.target}, watch ${row.watch ? "on" : "off"}`;
      console.log(formatPercentiles(`  ${name}: found`, row.found ?? [], 32));
      console.log(formatPercentiles(`  ${name}: to watcher`, row.toWatcher ?? [], 32));
      if (!row.watch) return; // without the watch the time is the check interval's, not worth a line a trial
      const trials = (settled[i] as PromiseFulfilledResult<Trial[]>).value;
      for (const t of [...trials].sort((a, b) => b.total - a.total).slice(0, 3)) console.log(`    ${slowest(t)}`);
    });
    const disk = (name: string, c: DiskCounts | undefined) =>
      c
        ? `${name} ${c.total} (over 32 ms: ${c.over32ms}, over 64 ms: ${c.over64ms}, over 128 ms: ${c.over128ms})`
        : `${name} n/a`;
    console.log(
      `etcd's disk during the lanes: ${disk("WAL fsyncs", figures.disk?.walFsync)}; ${
        disk("backend commits", figures.disk?.backendCommit)
      }`,
    );
    return figures;
  });
}

/**
 * One of etcd's duration histograms (`name`_bucket, in seconds) between two
 * scrapes: how many were observed, and how many took longer than 32, 64 and 128
 * ms (the total less those in the cumulative buckets up to that bound).
 */
function diskCounts(before: Map<string, number>, after: Map<string, number>, name: string): DiskCounts {
  const d = (key: string) => {
    // a missing series would read as 0 and count every operation slow
    if (!before.has(key) || !after.has(key)) throw new Error(`etcd's /metrics has no ${key}`);
    return after.get(key)! - before.get(key)!;
  };
  const total = d(`${name}_count`);
  return {
    total,
    over32ms: total - d(`${name}_bucket{le="0.032"}`),
    over64ms: total - d(`${name}_bucket{le="0.064"}`),
    over128ms: total - d(`${name}_bucket{le="0.128"}`),
  };
}

/** A slow trial's line: `slowest: 101 ms = found 6.1 ms + delete to watcher 95 ms (deregistered logged at 99 ms)`. */
function slowest(t: Trial): string {
  const split = t.found === undefined
    ? "? (no check failed line)"
    : `found ${formatMs(t.found)} + delete to watcher ${formatMs(t.total - t.found)}`;
  const deleted = t.deleted === undefined ? "no deregistered line" : `deregistered logged at ${formatMs(t.deleted)}`;
  return `slowest: ${formatMs(t.total)} = ${split} (${deleted})`;
}

/** One line of figures: `name  n=50  p50 12 ms  p99 20 ms  max 21 ms`, the name padded to `width`. */
export function formatPercentiles(name: string, times: number[], width = 24): string {
  if (times.length === 0) return `${name.padEnd(width)} n=0`;
  const cell = (label: string, p: number) => `${label} ${formatMs(percentile(times, p)).padStart(8)}`;
  return `${name.padEnd(width)} n=${String(times.length).padEnd(3)} ${cell("p50", 50)}  ${cell("p99", 99)}  ${
    cell("max", 100)
  }`;
}

if (import.meta.main) await main();
