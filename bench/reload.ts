/**
 * Requests through HAProxy while HAProxy itself is reloaded: what a client
 * sees across `systemctl reload haproxy`, with `registry sync` keeping the
 * backend.
 *
 * Debian's HAProxy on units/examples/haproxy/haproxy.cfg as it ships (its
 * paths in a folder of the benchmark's, its frontend on 127.6.1.1:8000), run
 * as Debian's haproxy.service runs it (bench/shipped-haproxy.ts:
 * master-worker; a reload is `haproxy -c`, then SIGUSR2 to the master, which
 * starts a new worker and soft-stops the old one as `-sf` does); the sync as
 * units/registry-haproxy@.service starts it (the bundle when built and newer
 * than its sources, else the source); three instances (testbed/traffic.ts `serve`: 200 after 20 ms of
 * work), each with a secretary (`--check http`, the unit's defaults
 * otherwise) on a host address of its own; and a steady load
 * (testbed/traffic.ts `load`: 4 keep-alive clients, GET and POST in turn, a
 * 5 s deadline, no retry: every non-2xx and every socket error counts).
 *
 * After a baseline with no reload, HAProxy is reloaded `--reloads` times
 * (5), one every `--every` seconds (6). A request is filed under the reload
 * whose window it ended in (from the start of that reload to the start of
 * the next, or the end of the run). From each SIGUSR2, the admin socket is
 * polled every 2 ms (`show info;show servers state`, one answer) until the
 * new worker answers with every instance in rotation: "reload to the backend
 * full again", and the servers in rotation in the new worker's first answer.
 *
 * `--defaults-line` (repeatable) adds a line to the example's `defaults`, and
 * `--sync-arg` (repeatable) an argument to the unit's sync (a path under
 * /var/lib/haproxy/ or /run/ moved as the config's are), for trying
 * alternatives; the figures of record use neither. `--source` runs the sync
 * and the secretaries from source even when the bundles are built.
 *
 * Addresses: etcd on 127.6.0.1, HAProxy on 127.6.1.1, the instances on
 * 127.6.1.2 to 127.6.1.4. About a minute.
 *
 * ```sh
 * node_modules/.bin/deno run --allow-all bench/reload.ts [--json reload.json]
 * node_modules/.bin/deno run --allow-all bench/reload.ts --quick   # shorter windows
 * node_modules/.bin/deno run --allow-all bench/reload.ts --defaults-line "option idle-close-on-response"
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import type { BurstFigures } from "./burst.ts";
import { delay, EtcdCluster, Script, waitFor } from "../testbed/testbed.ts";
import type { Failure, LoadTotals } from "../testbed/traffic.ts";
import { benchmark, commandFor, DEFAULT_ARGS, formatMs, LoadProcess, now, type Runtime } from "./lib.ts";
import {
  addressOf,
  chooseRuntime,
  EXAMPLE_CONFIG,
  inRotation,
  loadAverage,
  ShippedHAProxy,
  startSync,
} from "./shipped-haproxy.ts";
import { met } from "./report/table.ts";

/** One reload's figures. */
export interface ReloadRound {
  /** Seconds from the first reload. */
  atSeconds: number;
  /** The worker before and after (null: no new worker answered within the bound). */
  oldPid: number;
  newPid: number | null;
  /** Requests that ended in this reload's window, and those that failed, by method and by what. */
  requests: number;
  failed: { GET: number; POST: number };
  failedBy: Record<string, number>;
  /** The first and the last failure of the window, in ms from the SIGUSR2 (null: none failed). */
  failing: { fromMs: number; toMs: number } | null;
  /** SIGUSR2 to the new worker answering with every instance in rotation; null: not within the bound. */
  fullMs: number | null;
  /** SIGUSR2 to the new worker's first answer, and how many instances were in rotation in it. */
  firstAnswerMs: number | null;
  inRotationAtFirstAnswer: number | null;
}

export interface ReloadFigures {
  runtime: Runtime;
  config: string;
  /** Lines added to the example's `defaults` (none for the figures of record). */
  defaultsLines: string[];
  /** Arguments added to the unit's sync (none for the figures of record). */
  syncArgs: string[];
  instances: number;
  clients: number;
  deadlineMs: number;
  workMs: number;
  baselineSeconds: number;
  everySeconds: number;
  /** Every request of the run, those answered 2xx, and those that failed (baseline included). */
  requests: number;
  served: number;
  failed: number;
  baseline: { requests: number; failed: number };
  rounds: ReloadRound[];
  /** The first failures (at most FAILURES_KEPT): seconds from the first reload, window, method and what. */
  failures: { atSeconds: number; window: string; method: string; what: string }[];
  /** The sync's lines about HAProxy (restarts seen, refusals, warnings). */
  syncLines: string[];
  loadAverage: { start: number; end: number };
}

const WORK_MS = 20;
const CLIENTS = 4;
const DEADLINE_MS = 5000;
const SERVICE = "apache"; // the example's backend, and the unit's %i
const INSTANCES = 3;
const FIRST_PORT = 20_000;
const POLL_EVERY_MS = 2;
const FULL_BOUND_MS = 15_000;

function parseOptions() {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      reloads: { type: "string", default: "5" },
      every: { type: "string" },
      baseline: { type: "string" },
      "defaults-line": { type: "string", multiple: true },
      "sync-arg": { type: "string", multiple: true },
      quick: { type: "boolean", default: false },
      source: { type: "boolean", default: false },
      json: { type: "string" },
    },
  });
  const reloads = Number(values.reloads);
  const everySeconds = Number(values.every ?? (values.quick ? 4 : 6));
  const baselineSeconds = Number(values.baseline ?? (values.quick ? 4 : 10));
  if (![reloads, everySeconds, baselineSeconds].every((n) => Number.isInteger(n) && n >= 1)) {
    console.error(
      `reload: Cannot use --reloads ${values.reloads} --every ${values.every} --baseline ${values.baseline}: ` +
        "expected whole numbers from 1",
    );
    Deno.exit(2);
  }
  const defaultsLines = values["defaults-line"] ?? [];
  const syncArgs = values["sync-arg"] ?? [];
  return { reloads, everySeconds, baselineSeconds, defaultsLines, syncArgs, source: values.source, json: values.json };
}

/**
 * Polls from a reload at `at` until a worker other than `oldPid` has every address of `wanted` in rotation: its
 * first answer and when it was full, in ms from `at`.
 */
async function untilFull(haproxy: ShippedHAProxy, oldPid: number, wanted: string[], at: number) {
  const client = haproxy.client(1000);
  const result = {
    newPid: null as number | null,
    firstAnswerMs: null as number | null,
    inRotationAtFirstAnswer: null as number | null,
    fullMs: null as number | null,
  };
  while (now() - at < FULL_BOUND_MS) {
    const s = await haproxy.snapshot(client).catch(() => undefined);
    if (s && s.pid !== oldPid) {
      const serving = new Set(s.servers.filter(inRotation).map(addressOf));
      const count = wanted.filter((a) => serving.has(a)).length;
      if (result.newPid === null) {
        Object.assign(result, { newPid: s.pid, firstAnswerMs: s.at - at, inRotationAtFirstAnswer: count });
      }
      if (count === wanted.length) {
        result.fullMs = s.at - at;
        return result;
      }
    }
    await delay(POLL_EVERY_MS);
  }
  return result;
}

/** The figures of one window of the load's totals: requests, failures by method. */
function windowOf(totals: LoadTotals, label: string) {
  const t = totals.totals[0][label];
  if (!t) return { requests: 0, ok: 0, failed: { GET: 0, POST: 0 } };
  const failed = { GET: t.GET.status + t.GET.error, POST: t.POST.status + t.POST.error };
  return { requests: t.GET.ok + t.POST.ok + failed.GET + failed.POST, ok: t.GET.ok + t.POST.ok, failed };
}

async function main(): Promise<void> {
  const options = parseOptions();
  const runtime = chooseRuntime(options.source);
  const cluster = await EtcdCluster.create(1, { host: "127.6.0.1" });
  const dir = await Deno.makeTempDir({ prefix: "secretary-reload-" });
  const scripts: Script[] = [];
  let haproxy: ShippedHAProxy | undefined;
  let load: LoadProcess | undefined;
  const cleanup = async () => {
    await load?.kill();
    await Promise.all(scripts.map((s) => s.stop()));
    await haproxy?.stop();
    await cluster.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  await benchmark(options.json, cleanup, async () => {
    await cluster.start();
    const endpoint = new URL(cluster.endpoints[0]).host;
    haproxy = await ShippedHAProxy.start({
      dir: `${dir}/haproxy`,
      ip: "127.6.1.1",
      port: 8000,
      backend: SERVICE,
      lines: options.defaultsLines,
    });
    const sync = await startSync(runtime, {
      service: SERVICE,
      dir: haproxy.dir,
      socket: haproxy.adminSocket,
      etcd: endpoint,
      args: options.syncArgs,
    });
    scripts.push(sync);
    const wanted: string[] = [];
    for (let i = 0; i < INSTANCES; i++) {
      const ip = `127.6.1.${2 + i}`;
      const service = new Script(Deno.execPath(), [
        "run",
        "--allow-net",
        "testbed/traffic.ts",
        "serve",
        ip,
        String(FIRST_PORT),
        "--work-ms",
        String(WORK_MS),
      ]);
      scripts.push(service);
      await waitFor(() => service.stdout.startsWith("listening"), () => `an instance\n${service.stderr}`, 15_000, 20);
      const [command, args] = commandFor("secretary", runtime, [
        String(FIRST_PORT),
        `--ip=${ip}`,
        "--hostname=bench",
        `--service=${SERVICE}`,
        `--endpoints=${endpoint}`,
        ...DEFAULT_ARGS,
        "--check=http",
      ]);
      scripts.push(new Script(command, args));
      wanted.push(`${ip}:${FIRST_PORT}`);
    }
    const client = haproxy.client();
    await waitFor(
      async () => {
        const s = await haproxy!.snapshot(client).catch(() => undefined);
        const serving = new Set(s?.servers.filter(inRotation).map(addressOf));
        return wanted.every((a) => serving.has(a));
      },
      () => `every instance in rotation\n${scripts.map((s) => s.stderr.trim()).filter(Boolean).join("\n")}`,
      30_000,
      100,
    );
    console.log(
      `HAProxy (${EXAMPLE_CONFIG}, master-worker) before ${INSTANCES} instances kept by the sync (${
        runtime === "deno" ? "the bundles" : "from source"
      }); ${CLIENTS} keep-alive clients, GET and POST in turn, ${DEADLINE_MS / 1000} s deadline, no retry`,
    );

    load = LoadProcess.start(["http://127.6.1.1:8000/"], { clients: CLIENTS, deadlineMs: DEADLINE_MS });
    await load.label(0, "baseline");
    await delay(options.baselineSeconds * 1000);
    const start = loadAverage();
    const firstAt = now();
    const rounds: Seen[] = [];
    for (let r = 1; r <= options.reloads; r++) {
      await delay(Math.max(0, firstAt + (r - 1) * options.everySeconds * 1000 - now()));
      const label = `reload-${r}`;
      await load.label(0, label);
      const oldPid = (await haproxy.snapshot(client)).pid;
      const at = await haproxy.reload();
      const seen = await untilFull(haproxy, oldPid, wanted, at);
      rounds.push({ label, at, oldPid, ...seen });
      console.log(
        `reload ${r} at ${((at - firstAt) / 1000).toFixed(1)} s: worker ${oldPid} -> ${seen.newPid ?? "none"}, ` +
          `${seen.inRotationAtFirstAnswer ?? "n/a"} of ${INSTANCES} in rotation at its first answer (${
            formatMs(seen.firstAnswerMs ?? NaN)
          }), full after ${seen.fullMs === null ? "never" : formatMs(seen.fullMs)}`,
      );
    }
    await delay(Math.max(0, firstAt + options.reloads * options.everySeconds * 1000 - now()));
    const totals = await load.finish();
    const failures = load.failures;
    load = undefined;
    const figures: ReloadFigures = {
      runtime,
      config: EXAMPLE_CONFIG,
      defaultsLines: options.defaultsLines,
      syncArgs: options.syncArgs,
      instances: INSTANCES,
      clients: CLIENTS,
      deadlineMs: DEADLINE_MS,
      workMs: WORK_MS,
      baselineSeconds: options.baselineSeconds,
      everySeconds: options.everySeconds,
      ...tally(totals, failures, rounds, firstAt),
      syncLines: sync.stderr.split("\n").filter((l) => /restarted|refused|unreachable|warning|failed/.test(l)),
      loadAverage: { start, end: loadAverage() },
    };
    print(figures);
    return figures;
  });
}

/** What one reload's poll saw, before the load's totals are in. */
type Seen = Awaited<ReturnType<typeof untilFull>> & { label: string; at: number; oldPid: number };

/** At most this many failures are kept in the figures and printed (a 503 comes back at once, so there can be many). */
const FAILURES_KEPT = 10;

/** The load's totals and failures, by reload window. */
function tally(totals: LoadTotals, failures: Failure[], rounds: Seen[], firstAt: number) {
  const all = Object.keys(totals.totals[0]).map((l) => windowOf(totals, l));
  const base = windowOf(totals, "baseline");
  const what = (f: Failure) => f.status ? `status ${f.status}` : f.error ?? "?";
  return {
    requests: all.reduce((n, w) => n + w.requests, 0),
    served: all.reduce((n, w) => n + w.ok, 0),
    failed: all.reduce((n, w) => n + w.failed.GET + w.failed.POST, 0),
    baseline: { requests: base.requests, failed: base.failed.GET + base.failed.POST },
    rounds: rounds.map(({ label, at, ...round }): ReloadRound => {
      const w = windowOf(totals, label);
      const mine = failures.filter((f) => f.label === label);
      const failedBy: Record<string, number> = {};
      for (const f of mine) failedBy[what(f)] = (failedBy[what(f)] ?? 0) + 1;
      const failing = mine.length
        ? { fromMs: Math.min(...mine.map((f) => f.at)) - at, toMs: Math.max(...mine.map((f) => f.at)) - at }
        : null;
      return {
        ...round,
        atSeconds: Math.round(at - firstAt) / 1000,
        requests: w.requests,
        failed: w.failed,
        failedBy,
        failing,
      };
    }),
    failures: failures.slice(0, FAILURES_KEPT).map((f) => ({
      atSeconds: Math.round(f.at - firstAt) / 1000,
      window: f.label,
      method: f.method,
      what: what(f),
    })),
  };
}

/** The failed requests across the reloads, by method: `GET 0, POST 0 of 1,234`. */
export function failedAcross(f: ReloadFigures): string {
  const get = f.rounds.reduce((n, r) => n + r.failed.GET, 0);
  const post = f.rounds.reduce((n, r) => n + r.failed.POST, 0);
  const requests = f.rounds.reduce((n, r) => n + r.requests, 0);
  return `${(get + post).toLocaleString("en")} (GET ${get}, POST ${post}) of ${requests.toLocaleString("en")}`;
}

/** Each reload's failed requests and what they were: `3 (status 503: 3); 0; …`. */
export function failedEach(f: ReloadFigures): string {
  return f.rounds.map((r) => {
    const n = r.failed.GET + r.failed.POST;
    const by = Object.entries(r.failedBy).map(([what, k]) => `${what}: ${k}`).join(", ");
    return n ? `${n.toLocaleString("en")} (${by})` : "0";
  }).join("; ");
}

/** Each reload's time to the backend full again: `2.1 ms, 1.9 ms, never, …`. */
export function fullEach(f: ReloadFigures): string {
  return f.rounds.map((r) => r.fullMs === null ? "never" : formatMs(r.fullMs)).join(", ");
}

function print(f: ReloadFigures): void {
  const rows: [string, string][] = [
    [`failed requests across ${f.rounds.length} reloads`, failedAcross(f)],
    ["  each reload", failedEach(f)],
    ["failed in the baseline (no reload)", `${f.baseline.failed} of ${f.baseline.requests.toLocaleString("en")}`],
    ["requests served (2xx), all of the run", `${f.served.toLocaleString("en")} of ${f.requests.toLocaleString("en")}`],
    ["reload (SIGUSR2) to the backend full again", fullEach(f)],
    [
      "failing from / to (ms after each SIGUSR2)",
      f.rounds.map((r) => r.failing ? `${formatMs(r.failing.fromMs)}-${formatMs(r.failing.toMs)}` : "none").join(", "),
    ],
    [
      "in rotation at the new worker's first answer",
      f.rounds.map((r) => `${r.inRotationAtFirstAnswer ?? "n/a"} of ${f.instances}`).join(", "),
    ],
    ["reload to the new worker's first answer", f.rounds.map((r) => formatMs(r.firstAnswerMs ?? NaN)).join(", ")],
  ];
  console.log(
    `\n${f.rounds.length} reloads ${f.everySeconds} s apart after a ${f.baselineSeconds} s baseline; ` +
      `load average ${f.loadAverage.start} at the first reload, ${f.loadAverage.end} at the end` +
      (f.defaultsLines.length ? `; added to defaults: ${f.defaultsLines.join("; ")}` : "") +
      (f.syncArgs.length ? `; added to the sync: ${f.syncArgs.join(" ")}` : ""),
  );
  for (const [name, value] of rows) console.log(`  ${name.padEnd(46)} ${value}`);
  for (const x of f.failures) console.log(`  failed at ${x.atSeconds} s (${x.window}): ${x.method} ${x.what}`);
  if (f.failed > f.failures.length) console.log(`  … and ${f.failed - f.failures.length} more failures`);
  for (const l of f.syncLines) console.log(`  sync: ${l}`);
}

if (import.meta.main) await main();

/**
 * For bench/all.ts: what this run did, in sentences made from its figures, and the table's rows (figure, target,
 * this run, met) for the reloads (`r`) and the burst (`b`); either may be missing (its phase failed).
 */
export function reloadSection(
  r: ReloadFigures | undefined,
  b: BurstFigures | undefined,
): { what: string; rows: string[][] } {
  const source = (runtime: string) => runtime === "source" ? "from source" : "the bundle";
  const what = [
    r
      ? `${r.rounds.length} reloads of HAProxy, ${r.everySeconds} s apart after a ${r.baselineSeconds} s baseline, as ` +
        "`systemctl reload haproxy` does it (`haproxy -c`, then SIGUSR2 to the master, which starts a new worker and " +
        `soft-stops the old one), on ${r.config}${
          r.defaultsLines.length ? ` with \`${r.defaultsLines.join("; ")}\` added to its defaults` : " as it ships"
        }, while ${r.clients} keep-alive clients (GET and POST in turn, ${r.deadlineMs / 1000} s deadline, no retry) ` +
        `sent requests through it to ${r.instances} instances (${r.workMs} ms of work each) kept in its backend by ` +
        `\`registry sync\` as its unit runs it (${source(r.runtime)}${
          r.syncArgs.length ? `, with \`${r.syncArgs.join(" ")}\` added` : ""
        }). A request is filed under the reload whose window it ended in. ` +
        `The machine's load average (1 min) was ${r.loadAverage.start} at the first reload and ${r.loadAverage.end} ` +
        "at the end."
      : "The reload benchmark failed or did not run.",
    b
      ? `${b.instances.toLocaleString("en")} records put straight into etcd, ${
        b.listening ? "each at an address that listens (its layer-4 check passes)" : "at addresses that do not listen"
      }, kept in the backend by \`registry sync\` (${source(b.runtime)}), then one delete-range of the service's ` +
        `prefix (${b.deleted.toLocaleString("en")} keys, answered in ${formatMs(b.deleteAnsweredMs)}); times from ` +
        `the delete request sent, HAProxy's \`show servers state\` polled ${
          b.pollPauseMs ? `with a ${b.pollPauseMs} ms pause` : "back to back"
        } (an answer every ${formatMs(b.pollMedianMs)} at the median, ${formatMs(b.pollWorstMs)} at worst). ` +
        `The machine's load average (1 min) was ${b.loadAverage} after the burst.`
      : "The burst benchmark failed or did not run.",
  ].join(" ");
  const n = b ? b.instances.toLocaleString("en") : "n/a";
  const ms = (x: number | null | undefined) =>
    x === undefined ? "n/a" : x === null ? `not within ${b!.outBoundMs / 1000} s` : formatMs(x);
  const rows = [
    [
      `failed requests across ${r?.rounds.length ?? "n/a"} HAProxy reloads`,
      "0",
      r ? failedAcross(r) : "n/a",
      met(r && r.rounds.every((x) => x.failed.GET + x.failed.POST === 0)),
    ],
    ["failed requests, each reload (what failed)", "", r ? failedEach(r) : "n/a", ""],
    [
      "requests served (2xx) during the run, baseline included",
      "",
      r ? `${r.served.toLocaleString("en")} of ${r.requests.toLocaleString("en")}` : "n/a",
      "",
    ],
    ["reload (SIGUSR2) to the backend full again, each", "", r ? fullEach(r) : "n/a", ""],
    [
      "instances in rotation at the new worker's first answer, each reload",
      "",
      r ? r.rounds.map((x) => `${x.inRotationAtFirstAnswer ?? "n/a"} of ${r.instances}`).join(", ") : "n/a",
      "",
    ],
    [
      `${n} instances deleted at once: delete to the last server out of rotation`,
      "within 1 s",
      ms(b?.lastOutMs),
      met(b && b.lastOutMs !== null && b.lastOutMs <= 1000),
    ],
    [`${n} deleted at once: delete to the first server out of rotation`, "", ms(b?.firstOutMs), ""],
    [`${n} deleted at once: delete to the last run-time server deleted`, "", ms(b?.clearedMs), ""],
    [
      `${n} put: first put to every server in rotation`,
      "",
      b ? (b.fillMs === null ? "not within the bound" : formatMs(b.fillMs)) : "n/a",
      "",
    ],
    ["the sync's warnings during the burst", "", b ? String(b.syncWarnings) : "n/a", ""],
  ];
  return { what, rows };
}
