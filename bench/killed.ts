/**
 * Killed target to record gone, with the connection watch and without it
 * (`--no-watch-connection`): the time from the kill to the record's delete
 * event (an etcd v3 watch), for two kinds of target, each killed with no
 * goodbye:
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
 * target and secretary), against one etcd. About 2 minutes.
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
 * node_modules/.bin/deno run -A bench/killed.ts [--trials 20] [--settle 0] [--json killed.json]
 * node_modules/.bin/deno run -A bench/killed.ts --quick   # 4 trials, for development
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { DEFAULT_PREFIX, instanceKey } from "../lib/record.ts";
import { Apache, delay, EtcdCluster, freePort, ROOT, Script, waitFor } from "../testbed/testbed.ts";
import {
  benchmark,
  bundlesBuilt,
  commandFor,
  DEFAULT_ARGS,
  type EventClock,
  formatTimes,
  INTERVAL_MS,
  KeyClock,
  now,
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
}

/** The figures: one row per target kind and watch setting. */
export interface KilledFigures {
  trials: number;
  /** How long the target ran registered before each kill, besides a random phase of the interval. */
  settleMs: number;
  /** The secretary's arguments besides its address and etcd's; the watch-off rows add `--no-watch-connection`. */
  args: string[];
  rows: KilledRow[];
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

/** The bundle's secretary at the defaults for `target`, with the watch on or off. */
function startSecretary(target: Killable, endpoints: string[], watch: boolean): Script {
  const [command, args] = commandFor("secretary", "deno", [
    String(target.port),
    `--ip=${target.host}`,
    "--hostname=bench",
    `--endpoints=${endpoints.join(",")}`,
    ...DEFAULT_ARGS,
    ...(watch ? [] : ["--no-watch-connection"]),
  ]);
  return new Script(command, args);
}

/**
 * One lane: register, then per trial wait the settle and a random phase of
 * the interval, kill the target, time the delete, start the target again and wait for the
 * record to be back.
 */
async function lane(
  row: KilledRow,
  target: Killable,
  endpoints: string[],
  clock: EventClock,
  figures: KilledFigures,
  secretaries: Script[],
): Promise<void> {
  const key = instanceKey(DEFAULT_PREFIX, "apache", target.host, target.port);
  await startTarget(target);
  const secretary = startSecretary(target, endpoints, row.watch);
  secretaries.push(secretary);
  const name = `${row.target}, watch ${row.watch ? "on" : "off"}`;
  try {
    await clock.until("put", key, 0, 30_000);
    for (let i = 0; i < figures.trials; i++) {
      await delay(figures.settleMs + Math.random() * INTERVAL_MS); // any phase of the check interval
      const at = now();
      const exited = target.kill();
      row.times.push(await clock.until("delete", key, at, GONE_TIMEOUT_MS) - at);
      await exited;
      await startTarget(target);
      await clock.until("put", key, at, BACK_TIMEOUT_MS);
    }
  } catch (err) {
    throw new Error(`${name}: ${(err as Error).message}\n${secretary.stderr.slice(-2000)}`);
  } finally {
    await secretary.stop();
    await target.kill();
  }
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
    },
  });
  const trials = Number(values.trials ?? (values.quick ? 4 : 20));
  const settleSeconds = Number(values.settle);
  if (!Number.isInteger(trials) || trials < 1 || !(settleSeconds >= 0)) {
    console.error(
      `killed: Cannot use --trials ${values.trials} --settle ${values.settle}: expected N >= 1, SECONDS >= 0`,
    );
    Deno.exit(2);
  }
  if (!(await bundleHasWatch())) {
    console.error("killed: dist/secretary.mjs is missing or predates --no-watch-connection: run deno task bundle");
    Deno.exit(2);
  }

  const cluster = await EtcdCluster.create(1);
  const dir = await Deno.makeTempDir({ prefix: "secretary-killed-" });
  const targets: Killable[] = [];
  const secretaries: Script[] = [];
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
    const figures: KilledFigures = { trials, settleMs: settleSeconds * 1000, args: DEFAULT_ARGS, rows: [] };
    const lanes: Promise<void>[] = [];
    for (const kind of ["process", "apache"] as const) {
      for (const watch of [true, false]) {
        const host = `127.0.3.${figures.rows.length + 1}`;
        const port = await freePort(host);
        const target = kind === "process"
          ? new ServerProcess(host, port)
          : new ApacheGroup(host, port, `${dir}/apache-${host}`);
        const row: KilledRow = { target: kind, watch, times: [] };
        figures.rows.push(row);
        targets.push(target);
        lanes.push(lane(row, target, cluster.endpoints, clock, figures, secretaries));
      }
    }
    console.log(
      `killed target to gone: ${figures.rows.length} lanes side by side, ${trials} trials each, ` +
        `each kill ${settleSeconds} s + a random phase after registration`,
    );
    const began = Date.now();
    // every lane ends (with its secretary and target stopped) before a failure is reported
    const failed = (await Promise.allSettled(lanes)).find((r) => r.status === "rejected");
    if (failed) throw failed.reason;
    console.log(`lanes done in ${Math.round((Date.now() - began) / 1000)} s`);
    for (const row of figures.rows) {
      console.log(formatTimes(`${row.target}, watch ${row.watch ? "on" : "off"}`, row.times));
    }
    return figures;
  });
}

if (import.meta.main) await main();
