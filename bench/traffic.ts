/**
 * Requests through HAProxy and nginx while instances come and go: what a
 * client sees.
 *
 * Six lanes side by side in one run, each with three instances on hosts of
 * their own and a load of keep-alive clients; lanes 1–3 with Debian's HAProxy
 * (testbed/haproxy.ts: `retries 3`, `option redispatch 1`, `retry-on
 * conn-failure empty-response response-timeout`), lanes 4 to 6 with
 * Debian's nginx (testbed/nginx.ts: `proxy_next_upstream error timeout
 * http_502`, `proxy_connect_timeout 1s`):
 *
 * 1. ours: a secretary per instance (`--check http --drain 2s`, the unit's
 *    defaults otherwise) and `registry sync` on an empty backend, with its
 *    default `--server-options` (HAProxy's check, `inter 1s fall 2 rise 1`);
 * 2. no registry: a static backend listing the instances with HAProxy's own
 *    checks (`check inter 2s fall 2 rise 2`); an instance is restarted on its
 *    own port, as HAProxy cannot learn a new one;
 * 3. ours with `--no-watch-connection`;
 * 4. nginx fed by `registry render --wait` as
 *    units/examples/nginx/registry-nginx@.service runs it (its `--wait`, its
 *    permissions, its `--check "nginx -t -q"` and `--reload "nginx -s
 *    reload"`, addressed to this nginx), the shipped template
 *    units/examples/nginx/apache-upstream.conf.tmpl as it is, secretaries as
 *    in lane 1;
 * 5. the same without `--wait`: every change rendered and nginx reloaded at
 *    once (confd's behaviour);
 * 6. lane 4 with `keepalive_timeout 0;` in nginx's server block: a reload
 *    makes nginx's old worker close its idle keep-alive connections, and a
 *    client that sends on one at that instant sees it reset (it would have to
 *    retry, which this load never does); with no keep-alive to the clients,
 *    there is no such connection.
 *
 * The instances (testbed/traffic.ts `serve`) answer GET and POST with 200
 * after 20 ms of work, each in a process of its own. The load
 * (testbed/traffic.ts `load`, one process for all lanes) runs 4 clients per
 * lane, each on one keep-alive connection, alternating GET and POST, a 5 s
 * deadline on each, no retry: every non-2xx and every socket error counts,
 * filed under the cycle kind in effect when it ended.
 *
 * After a baseline window with no churn, every 5 s for 120 s one instance
 * goes, the hosts in turn, and a replacement starts on its host once it is
 * gone, on a new port (lane 2: on the same port). The lanes run the same
 * schedule a sixth of a cycle apart, so one lane's process starts and stops
 * (CPU on 2 cores) do not land on another's removals and additions:
 * - stop (as systemd stops the secretary's unit, then the service's):
 *   SIGTERM to the secretary, which removes the record, drains 2 s and exits,
 *   then SIGTERM to the service, which answers what it has in flight and
 *   exits. The unit's drain is 5 s; 2 s here so that each stop ends inside
 *   its own 5 s cycle and its failures, if any, are filed under it (the sync
 *   takes a server out in milliseconds: any drain longer than a request does
 *   the same). Lane 2 has no secretary: SIGTERM to the service;
 * - kill, every fourth cycle: the service gets SIGKILL (its sessions in
 *   HAProxy, `scur`, read just before); the secretary finds out by itself and
 *   is stopped once the record is gone, as systemd's BindsTo= would;
 * - once, mid-run, a host dies: the instance on a host of its own (a network
 *   namespace behind a veth pair, testbed/traffic.ts NetnsHost) has every
 *   packet dropped both ways, then its service and secretary get SIGKILL, so
 *   no RST or FIN ever comes and a connection attempt times out. No churn
 *   for the next 15 s, then the host comes back (packets flow, a new
 *   instance on it), and the churn goes on 5 s later.
 *
 * Timings come from polling HAProxy's `show servers state` every 2 ms from
 * the event on: "record removed → out of rotation" from the delete event
 * (this benchmark's own etcd watch) to the server in maintenance (or gone),
 * and to the sync's `server out` line on its stderr, read as often;
 * "new record → serving" from the put event to the server in rotation and
 * running; "host death → out of rotation" from the drop to the server down
 * by HAProxy's check or in maintenance. Reloads: HAProxy's Pid (`show info`)
 * read every second. Requests sent to an instance and then received by
 * another too (HAProxy's retries of requests already sent) are found from
 * the ids the instances print on receipt, and filed under what happened to
 * the instance that got them first.
 *
 * nginx's upstream state cannot be read, so the nginx lanes have no sessions,
 * no "out of rotation" and no `show servers state` polling. Instead, polled
 * every 2 ms from the event: "record removed → reloaded" to the render's
 * `reloaded` line (`nginx -s reload` returned) for a file without the
 * instance, and on to nginx's next new worker ("start worker process" in its
 * error log); "new record → reloaded" likewise. Reloads: the "reconfiguring"
 * lines in nginx's error log during the churn, beside the changes that
 * removed an instance and the `--wait` windows the other changes make
 * (replayed from this benchmark's events by lib/render.ts whenToRender; one a
 * change without `--wait`), as the target is "no more reloads than removals
 * plus one per window". After the host death: the failed requests, and the
 * record gone when its lease expires.
 *
 * `--server-options` (the sync's) and `--backend-line` (repeatable, added to
 * every lane's backend) are for trying alternatives; the figures of record
 * use neither.
 *
 * Addresses: etcd on 127.0.10.1, lane N's HAProxy or nginx on
 * 127.0.1N.1:8000 and two of its hosts on 127.0.1N.2 and 127.0.1N.3 (N = 1
 * to 6); its third host at 198.51.100.(4N+2) in namespace `sttrafficN`.
 * Needs root (the namespaces), nginx and HAProxy, and the bundles (or it
 * runs the source). About 3 minutes, alone.
 *
 * ```sh
 * node_modules/.bin/deno task bundle && node_modules/.bin/deno run -A bench/traffic.ts [--json traffic.json]
 * node_modules/.bin/deno run -A bench/traffic.ts --quick   # 60 s of churn, for development
 * node_modules/.bin/deno run -A bench/traffic.ts --quick --backend-line "option abortonclose"
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { type HAProxy, type HAProxyServer, parseServersState } from "../lib/haproxy.ts";
import { DEFAULT_PREFIX, instanceKey } from "../lib/record.ts";
import { parseWait, readTemplate, renderTemplate, templateView, type Wait, whenToRender } from "../lib/render.ts";
import { DEFAULT_SERVER_OPTIONS } from "../lib/sync.ts";
import { HAProxyProcess } from "../testbed/haproxy.ts";
import { NGINX, NginxProcess } from "../testbed/nginx.ts";
import { delay, EtcdCluster, ROOT, Script, SOURCE_FLAGS, waitFor } from "../testbed/testbed.ts";
import { type Failure, type Latency, type LoadTotals, NetnsHost } from "../testbed/traffic.ts";
import { benchmark, bundlesBuilt, commandFor, DEFAULT_ARGS, formatMs, now, percentile, TTL_MS } from "./lib.ts";

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
  /** The host's 1-minute load average when the lanes were up and when the churn ended (2 cores: above 2 is contention). */
  loadAverage: { start: number; end: number };
  lanes: TrafficLane[];
}

const CYCLE_MS = 5000;
const DRAIN = "2s";
const WORK_MS = 20;
const CLIENTS = 4;
const DEADLINE_MS = 5000;
/** Not the frontend's name (`web`): `show stat web …` would then find the frontend, which has no servers. */
const BACKEND = "app";
const STATIC_CHECK = "check inter 2s fall 2 rise 2";
/** How long the poll waits for HAProxy to show a change. */
const POLL_BOUND_MS = 20_000;
const POLL_EVERY_MS = 2;
/** The first port of each host's instances. */
const FIRST_PORT = 20_000;
const SECRETARY_ARGS = [...DEFAULT_ARGS, "--check=http", `--drain=${DRAIN}`];

/** The shipped nginx example: the template, and the unit whose `--wait` lane 4 uses. */
const NGINX_TEMPLATE = "units/examples/nginx/apache-upstream.conf.tmpl";
const NGINX_UNIT = "units/examples/nginx/registry-nginx@.service";
/** The upstream the template names. */
const NGINX_UPSTREAM = "apache";

interface LaneSpec {
  name: string;
  proxy: "haproxy" | "nginx";
  registry: boolean;
  watchConnection: boolean;
  /** nginx lanes: `registry render --wait` as the shipped unit has it, or no --wait (every change rendered). */
  wait?: boolean;
  /** nginx lanes: lines added to nginx's server block. */
  serverLines?: string[];
}

const LANES: readonly LaneSpec[] = [
  { name: "ours", proxy: "haproxy", registry: true, watchConnection: true },
  { name: "no registry", proxy: "haproxy", registry: false, watchConnection: false },
  { name: "ours, --no-watch-connection", proxy: "haproxy", registry: true, watchConnection: false },
  { name: "nginx, render --wait", proxy: "nginx", registry: true, watchConnection: true, wait: true },
  {
    name: "nginx, reload on every change (confd)",
    proxy: "nginx",
    registry: true,
    watchConnection: true,
    wait: false,
  },
  {
    name: "nginx, render --wait, keepalive_timeout 0",
    proxy: "nginx",
    registry: true,
    watchConnection: true,
    wait: true,
    serverLines: ["keepalive_timeout 0;"],
  },
];

/** The `--wait` of the shipped unit (units/examples/nginx/registry-nginx@.service), as written there. */
function unitWait(): string {
  const wait = /--wait (\S+)/.exec(Deno.readTextFileSync(`${ROOT}${NGINX_UNIT}`))?.[1];
  if (!wait) throw new Error(`${NGINX_UNIT} has no --wait`);
  return wait;
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

/**
 * What each of `n` cycles does: a stop, or a kill every fourth, of hosts 0, 1, 2 in turn; mid-run, host 0 dies,
 * two quiet cycles, then it comes back. The death is at a multiple of 3, so host 0's last cycle was 3 cycles before.
 */
export function schedule(n: number): { kind: CycleKind | "host-return" | "host-wait"; host: number }[] {
  const death = 3 * Math.floor(n / 6);
  return Array.from({ length: n }, (_, c) => {
    if (c === death) return { kind: "host", host: 0 };
    if (c > death && c < death + 3) return { kind: "host-wait", host: 0 };
    if (c === death + 3) return { kind: "host-return", host: 0 };
    return { kind: c % 4 === 2 ? "kill" : "stop", host: c % 3 };
  });
}

function counts(): Record<Window, MethodCounts> {
  return Object.fromEntries([...WINDOWS, "idle"].map((w) => [w, { GET: 0, POST: 0 }])) as Record<
    Window,
    MethodCounts
  >;
}

/** One instance: its service and, with the registry, its secretary. */
interface Instance {
  ip: string;
  port: number;
  /** Its server's name in HAProxy. */
  server: string;
  service: Script;
  secretary?: Script;
  key?: string;
}

/** A host: an address, the instance on it now, and the next port to use. */
interface Host {
  index: number;
  ip: string;
  netns?: NetnsHost;
  port: number;
  current?: Instance;
  /** The operation on it in progress, awaited before the next. */
  busy: Promise<void>;
}

interface Lane {
  index: number;
  spec: LaneSpec;
  service: string;
  /** Where the load goes: HAProxy's frontend or nginx's server. */
  front: { ip: string; port: number };
  /** HAProxy lanes. */
  haproxy?: HAProxyProcess;
  client?: HAProxy;
  sync?: Script;
  /** nginx lanes: nginx, `registry render`, and the upstream file it writes. */
  nginx?: NginxProcess;
  render?: Script;
  out?: string;
  hosts: Host[];
  figures: TrafficLane;
  /** Keys with a record now. */
  present: Set<string>;
  /** When each key's record was last deleted. */
  deleted: Map<string, number>;
  /** Every change of the lane's records, as this benchmark's watch saw it. */
  changes: { atMs: number; removal: boolean }[];
}

/** How many lines of `text` match `line` (a regexp with the m and g flags). */
function linesOf(text: string, line: RegExp): number {
  return text.match(line)?.length ?? 0;
}

const RELOADED = /^reloaded /gm;
const RENDERED = /^rendered /gm;

/** Whether an upstream file rendered from the template lists `server` (`ip:port`). */
const lists = (upstream: string, server: string) => upstream.includes(`server ${server} `);

/**
 * Polls an nginx lane's render until a `reloaded` line past the first `after` is for a file with `server` (or
 * without it): when that line was read and how many there were then, or undefined after `boundMs`. The file is
 * read when the line is: a render that followed within the poll's 2 ms could be taken for the one before.
 */
async function reloadedWith(
  lane: Lane,
  server: string,
  present: boolean,
  after: number,
  boundMs = POLL_BOUND_MS,
): Promise<{ at: number; count: number } | undefined> {
  const deadline = now() + boundMs;
  let seen = after;
  while (now() < deadline) {
    const count = linesOf(lane.render!.stderr, RELOADED);
    if (count > seen) {
      const at = now();
      if (lists(await Deno.readTextFile(lane.out!).catch(() => ""), server) === present) return { at, count };
      seen = count;
    }
    await delay(POLL_EVERY_MS);
  }
  return undefined;
}

/** Polls nginx's error log until it has started `atLeast` workers: when, or undefined after `boundMs`. */
async function workerStarted(nginx: NginxProcess, atLeast: number, boundMs = POLL_BOUND_MS) {
  const deadline = now() + boundMs;
  while (now() < deadline) {
    if ((await nginx.workersStarted()) >= atLeast) return now();
    await delay(POLL_EVERY_MS);
  }
  return undefined;
}

function parseArgsOrExit() {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      churn: { type: "string" },
      baseline: { type: "string" },
      "server-options": { type: "string" },
      "backend-line": { type: "string", multiple: true },
      quick: { type: "boolean", default: false },
      json: { type: "string" },
    },
  });
  const churnSeconds = Number(values.churn ?? (values.quick ? 60 : 120));
  const baselineSeconds = Number(values.baseline ?? (values.quick ? 10 : 15));
  if (!(churnSeconds >= 30 && churnSeconds % 5 === 0) || !(baselineSeconds >= 5)) {
    console.error(
      `traffic: Cannot use --churn ${values.churn} --baseline ${values.baseline}: expected a multiple of 5 >= 30, >= 5`,
    );
    Deno.exit(2);
  }
  return {
    churnSeconds,
    baselineSeconds,
    serverOptions: values["server-options"],
    backendLines: values["backend-line"] ?? [],
    json: values.json,
  };
}

/** The servers of the backend, as `show servers state` says (no sessions: one command, for polling). */
async function serversState(client: HAProxy): Promise<HAProxyServer[]> {
  return parseServersState(await client.run(`show servers state ${BACKEND}`));
}

/** Polls HAProxy until `done` holds; the time of the answer that showed it, or undefined after `boundMs`. */
async function pollUntil(
  client: HAProxy,
  done: (servers: HAProxyServer[]) => boolean,
  boundMs = POLL_BOUND_MS,
): Promise<number | undefined> {
  const deadline = now() + boundMs;
  while (now() < deadline) {
    try {
      if (done(await serversState(client))) return now();
    } catch { /* asked again */ }
    await delay(POLL_EVERY_MS);
  }
  return undefined;
}

const inRotation = (s: HAProxyServer | undefined) => s !== undefined && !s.maint && s.opState === 2;

/** Reads one server's sessions now (`scur`). */
async function sessionsOf(client: HAProxy, server: string): Promise<number> {
  return (await client.servers(BACKEND)).find((s) => s.name === server)?.sessions ?? 0;
}

/** The backend's retries and redispatches so far (`show stat`, the BACKEND row). */
async function retryCounters(client: HAProxy): Promise<{ retries: number; redispatches: number }> {
  const lines = (await client.run("show stat -1 2 -1")).split("\n");
  const header = lines[0].replace(/^#\s*/, "").split(",");
  const row = lines.find((l) => l.startsWith(`${BACKEND},BACKEND,`))?.split(",") ?? [];
  const field = (name: string) => Number(row[header.indexOf(name)]) || 0;
  return { retries: field("wretr"), redispatches: field("wredis") };
}

/** The 1-minute load average. */
function loadAverage(): number {
  return Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]);
}

async function main(): Promise<void> {
  const options = parseArgsOrExit();
  if (!(await NetnsHost.available())) {
    console.error("traffic: the host death needs network namespaces: run as root with iproute2 (ip netns)");
    Deno.exit(2);
  }
  const runtime = bundlesBuilt() ? "deno" : "source";
  const cluster = await EtcdCluster.create(1, { host: "127.0.10.1" });
  const etcd = cluster.client();
  const dir = await Deno.makeTempDir({ prefix: "secretary-traffic-" });
  const scripts: Script[] = [];
  /** Every instance's service and its address (lane 2 reuses addresses). */
  const services: [string, Script][] = [];
  /** How each instance that went, went. */
  const fates = new Map<Script, CycleKind>();
  const lanes: Lane[] = [];
  const netns: NetnsHost[] = [];
  let load: Deno.ChildProcess | undefined;
  let stopWatch = () => {};
  const timers: ReturnType<typeof setInterval>[] = [];
  const cleanup = async () => {
    stopWatch();
    for (const t of timers) clearInterval(t);
    try {
      load?.kill("SIGKILL");
    } catch { /* exited */ }
    await load?.status;
    await Promise.all(scripts.map((s) => s.stop()));
    await Promise.all(lanes.map((l) => l.haproxy?.stop()));
    await Promise.all(lanes.map((l) => l.nginx?.stop()));
    for (const n of netns) await n.remove();
    etcd.close();
    await cluster.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };

  await benchmark(options.json, cleanup, async () => {
    const cycles = options.churnSeconds * 1000 / CYCLE_MS;
    const plan = schedule(cycles);
    const figures: TrafficFigures = {
      baselineSeconds: options.baselineSeconds,
      churnSeconds: options.churnSeconds,
      cycleMs: CYCLE_MS,
      cycles: {
        stop: plan.filter((p) => p.kind === "stop").length,
        kill: plan.filter((p) => p.kind === "kill").length,
        host: 1,
      },
      clients: CLIENTS,
      deadlineMs: DEADLINE_MS,
      workMs: WORK_MS,
      drain: DRAIN,
      secretaryArgs: SECRETARY_ARGS,
      serverOptions: options.serverOptions ?? DEFAULT_SERVER_OPTIONS,
      backendLines: options.backendLines,
      staticServerOptions: STATIC_CHECK,
      runtime,
      loadAverage: { start: NaN, end: NaN },
      lanes: [],
    };
    await cluster.start();
    const endpoints = cluster.endpoints.join(",");
    const etcdHost = new URL(cluster.endpoints[0]).host;

    // ---- instances
    const startService = async (host: Host): Promise<Script> => {
      for (let attempt = 1;; attempt++) {
        const deno = [Deno.execPath(), "run", "--allow-net", "testbed/traffic.ts", "serve", host.ip, String(host.port)];
        const [command, args] = host.netns
          ? host.netns.command(deno[0], [...deno.slice(1), "--work-ms", String(WORK_MS)])
          : [deno[0], [...deno.slice(1), "--work-ms", String(WORK_MS)]];
        const service = new Script(command, args);
        scripts.push(service);
        services.push([`${host.ip}:${host.port}`, service]);
        await waitFor(() => service.stdout.startsWith("listening") || !service.running, "an instance", 15_000, 20);
        if (service.running) return service;
        if (attempt === 5) throw new Error(`no instance on ${host.ip}:${host.port}:\n${service.stderr}`);
        await delay(200); // its port still held a moment
      }
    };
    const startInstance = async (lane: Lane, host: Host): Promise<Instance> => {
      const service = await startService(host);
      const { ip, port } = host;
      if (!lane.spec.registry) return { ip, port, server: `s${host.index}`, service };
      const [command, args] = commandFor("secretary", runtime, [
        String(port),
        `--ip=${ip}`,
        "--hostname=bench",
        `--service=${lane.service}`,
        `--endpoints=${endpoints}`,
        ...SECRETARY_ARGS,
        ...(lane.spec.watchConnection ? [] : ["--no-watch-connection"]),
      ]);
      const secretary = new Script(command, args);
      scripts.push(secretary);
      const key = instanceKey(DEFAULT_PREFIX, lane.service, ip, port);
      return { ip, port, server: `${ip}:${port}`, service, secretary, key };
    };
    /** As systemd stops the two units: the secretary (its drain included), then the service. */
    const stopInstance = async (instance: Instance): Promise<void> => {
      if (instance.secretary) {
        instance.secretary.kill("SIGTERM");
        await instance.secretary.finished(30_000);
      }
      instance.service.kill("SIGTERM");
      await instance.service.finished(30_000);
    };
    const waitDeleted = (lane: Lane, key: string, since: number, boundMs: number) =>
      waitFor(() => (lane.deleted.get(key) ?? 0) >= since, `${key} deleted`, boundMs, 20).then(() => true, () => false);

    // ---- lanes: hosts, instances, HAProxy and the sync, or nginx and the render
    const waitText = unitWait();
    const template = readTemplate(`${ROOT}${NGINX_TEMPLATE}`);
    for (const [index, spec] of LANES.entries()) {
      const net = `127.0.${11 + index}`;
      const host = await NetnsHost.create(`sttraffic${index + 1}`, index + 1);
      netns.push(host);
      const hosts: Host[] = [
        { index: 0, ip: host.ip, netns: host, port: FIRST_PORT, busy: Promise.resolve() },
        { index: 1, ip: `${net}.2`, port: FIRST_PORT, busy: Promise.resolve() },
        { index: 2, ip: `${net}.3`, port: FIRST_PORT, busy: Promise.resolve() },
      ];
      const service = `traffic-${index + 1}`;
      const front = { ip: `${net}.1`, port: 8000 };
      const haproxy = spec.proxy === "haproxy"
        ? await HAProxyProcess.start({
          dir: `${dir}/haproxy-${index + 1}`,
          ...front,
          backend: BACKEND,
          backendLines: [
            ...options.backendLines,
            ...(spec.registry ? [] : hosts.map((h) => `server s${h.index} ${h.ip}:${h.port} ${STATIC_CHECK}`)),
          ],
        })
        : undefined;
      let nginx: NginxProcess | undefined;
      const nginxDir = `${dir}/nginx-${index + 1}`;
      const out = `${nginxDir}/conf.d/upstream.conf`;
      if (spec.proxy === "nginx") {
        // nginx needs the file before it starts: what the render's first listing will write, no instance yet
        await Deno.mkdir(`${nginxDir}/conf.d`, { recursive: true });
        await Deno.writeTextFile(out, renderTemplate(template, templateView(DEFAULT_PREFIX, service, new Map())));
        nginx = await NginxProcess.start({
          dir: nginxDir,
          ...front,
          upstream: NGINX_UPSTREAM,
          serverLines: spec.serverLines,
        });
      }
      const wait = spec.wait ? waitText : undefined;
      const lane: Lane = {
        index,
        spec,
        service,
        front,
        haproxy,
        client: haproxy?.client(),
        nginx,
        out: nginx ? out : undefined,
        hosts,
        present: new Set(),
        deleted: new Map(),
        changes: [],
        figures: {
          name: spec.name,
          proxy: spec.proxy,
          registry: spec.registry,
          watchConnection: spec.watchConnection,
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
          pids: haproxy ? [(await haproxy.client().process()).pid] : [],
          throughput: { baseline: 0, churn: 0 },
          latency: {},
          haproxyRetries: haproxy ? 0 : null,
          haproxyRedispatches: haproxy ? 0 : null,
          syncWarnings: [],
          cycleErrors: [],
          nginx: nginx
            ? {
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
            }
            : null,
        },
      };
      lanes.push(lane);
      figures.lanes.push(lane.figures);
      if (nginx) {
        // as units/examples/nginx/registry-nginx@.service runs it, this nginx's prefix and config added
        const addressed = NginxProcess.args(nginxDir).join(" ");
        const args = [
          "render",
          service,
          "--template",
          NGINX_TEMPLATE,
          "--out",
          out,
          "--check",
          `${NGINX} -t -q ${addressed}`,
          "--reload",
          `${NGINX} -s reload ${addressed}`,
          ...(wait ? ["--wait", wait] : []),
          "--endpoints",
          endpoints,
        ];
        const render = runtime === "deno"
          ? new Script(Deno.execPath(), [
            "run",
            "--v8-flags=--lite-mode",
            `--allow-net=${etcdHost}`,
            // and nginx itself: render's check that a command can run stats it, which the unit does not allow
            `--allow-read=${NGINX_TEMPLATE},${nginxDir}/conf.d,${NGINX}`,
            `--allow-write=${nginxDir}/conf.d`,
            "--allow-run",
            "--allow-env=ETCDCTL_CACERT,ETCDCTL_CERT,ETCDCTL_KEY,ETCDCTL_USER,JOURNAL_STREAM,GRPC_*,PATH,NODE_V8_COVERAGE",
            "dist/registry.mjs",
            ...args,
          ])
          : new Script(Deno.execPath(), [
            "run",
            "--allow-net",
            "--allow-env",
            "--allow-read",
            "--allow-write",
            "--allow-run",
            "registry.ts",
            ...args,
          ]);
        scripts.push(render);
        lane.render = render;
        await render.waitForLog(/^started /);
      } else if (spec.registry) {
        const socket = haproxy!.adminSocket;
        // as units/registry-haproxy@.service runs it
        const args = [
          "sync",
          lane.service,
          `--haproxy=${socket}`,
          `--backend=${BACKEND}`,
          `--endpoints=${endpoints}`,
          ...(options.serverOptions === undefined ? [] : [`--server-options=${options.serverOptions}`]),
        ];
        const sync = runtime === "deno"
          ? new Script(Deno.execPath(), [
            "run",
            "--v8-flags=--lite-mode",
            `--allow-net=${etcdHost},unix:${socket}`,
            `--allow-read=${socket}`,
            `--allow-write=${socket}`,
            "--allow-env=ETCDCTL_CACERT,ETCDCTL_CERT,ETCDCTL_KEY,ETCDCTL_USER,JOURNAL_STREAM,GRPC_*",
            "dist/registry.mjs",
            ...args,
          ])
          : new Script(Deno.execPath(), ["run", ...SOURCE_FLAGS, "--allow-write", "registry.ts", ...args]);
        scripts.push(sync);
        lane.sync = sync;
        await sync.waitForLog(/^started /);
      }
    }

    // ---- the registry as this benchmark sees it: every put and delete, timed, and HAProxy polled from there
    const pending: Promise<unknown>[] = [];
    let churnAt = Infinity; // set when the churn starts
    const laneOf = (key: string) => lanes.find((l) => key.startsWith(`${DEFAULT_PREFIX}/${l.service}/`));
    const onEvent = (type: "put" | "delete", key: string) => {
      const at = now();
      const lane = laneOf(key);
      if (!lane) return;
      const server = key.slice(key.lastIndexOf("/") + 1);
      lane.changes.push({ atMs: at, removal: type === "delete" && lane.present.has(key) });
      if (lane.nginx) {
        const nginx = lane.nginx;
        const f = lane.figures.nginx!;
        const after = linesOf(lane.render!.stderr, RELOADED);
        if (type === "delete") {
          lane.present.delete(key);
          lane.deleted.set(key, at);
          pending.push((async () => {
            const workers = await nginx.workersStarted();
            const reloaded = await reloadedWith(lane, server, false, after);
            if (!reloaded) return lane.figures.unmatched++;
            // one new worker a reload (worker_processes 1): the one of the reload that matched
            const worker = await workerStarted(nginx, workers + reloaded.count - after);
            f.removedToReloadedMs.push(reloaded.at - at);
            if (worker !== undefined) f.removedToWorkerMs.push(worker - at);
            f.removalTimes.push({
              atSeconds: Math.round(at - churnAt) / 1000,
              reloadedMs: reloaded.at - at,
              ...(worker === undefined ? {} : { workerMs: worker - at }),
            });
          })());
        } else if (!lane.present.has(key)) {
          lane.present.add(key);
          pending.push(
            reloadedWith(lane, server, true, after).then((r) =>
              r === undefined ? lane.figures.unmatched++ : f.putToReloadedMs.push(r.at - at)
            ),
          );
        }
        return;
      }
      if (type === "delete") {
        lane.present.delete(key);
        lane.deleted.set(key, at);
        const line = new RegExp(`^server out backend=${BACKEND} server=${server.replaceAll(".", "\\.")}$`, "m");
        const logged = lane.sync!.stderr.split(line).length - 1; // lines for this server so far
        pending.push(
          Promise.all([
            pollUntil(lane.client!, (servers) => {
              const s = servers.find((x) => x.name === server);
              return s === undefined || s.maint;
            }),
            waitFor(() => lane.sync!.stderr.split(line).length - 1 > logged && now(), "", POLL_BOUND_MS, POLL_EVERY_MS)
              .catch(() => undefined),
          ]).then(([t, l]) => {
            if (t === undefined) return lane.figures.unmatched++;
            lane.figures.removedToOutMs.push(t - at);
            if (l !== undefined) lane.figures.removedToLoggedMs.push(l - at);
            lane.figures.removals.push({
              atSeconds: Math.round(at - churnAt) / 1000,
              ms: t - at,
              ...(l === undefined ? {} : { loggedMs: l - at }),
            });
          }),
        );
      } else if (!lane.present.has(key)) {
        lane.present.add(key);
        pending.push(
          pollUntil(lane.client!, (servers) => inRotation(servers.find((x) => x.name === server)))
            .then((t) => t === undefined ? lane.figures.unmatched++ : lane.figures.putToServingMs.push(t - at)),
        );
      }
    };
    const watch = await etcd.watch(
      `${DEFAULT_PREFIX}/`,
      String(BigInt(await etcd.revision()) + 1n),
      (e) => onEvent(e.type, e.key),
    );
    stopWatch = () => watch.cancel();
    watch.done.then((err) => {
      if (!/canceled/.test(err.message)) console.error(`the benchmark's watch ended: ${err.message}`);
    });

    // ---- every instance up and in rotation
    await Promise.all(lanes.flatMap((lane) =>
      lane.hosts.map(async (host) => {
        host.current = await startInstance(lane, host);
      })
    ));
    await waitFor(
      async () => {
        for (const lane of lanes) {
          if (lane.nginx) {
            // every instance in the file, and nginx told of it: no render in flight
            const upstream = await Deno.readTextFile(lane.out!).catch(() => "");
            if (!lane.hosts.every((h) => h.current && lists(upstream, h.current.server))) return false;
            const log = lane.render!.stderr;
            if (linesOf(log, RELOADED) < linesOf(log, RENDERED)) return false;
            continue;
          }
          const servers = await serversState(lane.client!);
          if (!lane.hosts.every((h) => inRotation(servers.find((s) => s.name === h.current?.server)))) return false;
        }
        return true;
      },
      "every instance in rotation",
      30_000,
      100,
    );
    console.log(
      `${LANES.length} lanes side by side, 3 instances each (${runtime === "deno" ? "the bundles" : "from source"}); ` +
        `${CLIENTS} clients a lane, GET and POST in turn, ${
          DEADLINE_MS / 1000
        } s deadline, ${WORK_MS} ms of work a request`,
    );

    // ---- reloads: HAProxy's Pid every second (nginx's are in its error log)
    for (const lane of lanes) {
      if (!lane.client) continue;
      const client = lane.client;
      timers.push(setInterval(() => {
        client.process().then((p) => {
          if (!lane.figures.pids.includes(p.pid)) {
            lane.figures.pids.push(p.pid);
            lane.figures.reloads++;
          }
        }, () => {});
      }, 1000));
    }

    // ---- the load, labelled with the window in effect
    load = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-net",
        "testbed/traffic.ts",
        "load",
        ...lanes.map((l) => `http://${l.front.ip}:${l.front.port}/`),
        "--clients",
        String(CLIENTS),
        "--deadline-ms",
        String(DEADLINE_MS),
      ],
      cwd: ROOT,
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const labels = load.stdin.getWriter();
    const windows: { window: Window; from: number }[][] = lanes.map(() => []);
    const label = async (lane: Lane | undefined, window: Window) => {
      for (const l of lane ? [lane] : lanes) windows[l.index].push({ window, from: now() });
      await labels.write(new TextEncoder().encode(`${lane?.index ?? "*"} ${window}\n`));
    };
    const failures: Failure[] = [];
    let totals: LoadTotals | undefined;
    const reading = (async () => {
      let partial = "";
      const decoder = new TextDecoder();
      for await (const chunk of load!.stdout) {
        const lines = (partial + decoder.decode(chunk, { stream: true })).split("\n");
        partial = lines.pop()!;
        for (const line of lines.filter(Boolean)) {
          const parsed = JSON.parse(line);
          if ("totals" in parsed) totals = parsed;
          else failures.push(parsed);
        }
      }
    })();

    await label(undefined, "baseline");
    const baselineAt = now();
    await delay(options.baselineSeconds * 1000);
    const retriesAtChurn = await Promise.all(lanes.map((l) => l.client && retryCounters(l.client)));
    figures.loadAverage.start = loadAverage();
    /** nginx lanes: nginx's reloads and the render's log lines so far. */
    const nginxCounts = (lane: Lane) =>
      lane.nginx!.reloads().then((reloads) => ({
        reloads,
        rendered: linesOf(lane.render!.stderr, RENDERED),
        reloaded: linesOf(lane.render!.stderr, RELOADED),
      }));
    const nginxAtChurn = await Promise.all(lanes.map((l) => l.nginx && nginxCounts(l)));

    // ---- the churn
    churnAt = now();
    await label(undefined, "idle");
    const background: Promise<unknown>[] = [];
    const cycle = async (lane: Lane, step: ReturnType<typeof schedule>[number]) => {
      const host = lane.hosts[step.host];
      const old = host.current!;
      if (step.kind === "stop" || step.kind === "kill" || step.kind === "host") {
        fates.set(old.service, step.kind);
      }
      switch (step.kind) {
        case "stop":
          await stopInstance(old);
          if (lane.spec.registry) host.port++;
          host.current = await startInstance(lane, host);
          return;
        case "kill": {
          if (lane.client) lane.figures.inFlightAtKills.push(await sessionsOf(lane.client, old.server));
          const at = now();
          old.service.kill("SIGKILL");
          if (lane.spec.registry && lane.client) {
            background.push(
              pollUntil(lane.client, (servers) => !inRotation(servers.find((s) => s.name === old.server)))
                .then((t) => t !== undefined && lane.figures.killToOutMs.push(t - at)),
            );
          }
          await old.service.finished();
          if (lane.spec.registry) {
            // the secretary finds out by itself; then systemd's BindsTo= stops it, and the unit starts again
            const gone = await waitDeleted(lane, old.key!, at, TTL_MS + 10_000);
            if (gone) lane.figures.killToGoneMs.push(lane.deleted.get(old.key!)! - at);
            // not before the sync (the render) has acted on the removal: starting processes then would slow what is
            // timed
            if (lane.client) {
              await pollUntil(lane.client, (servers) => {
                const s = servers.find((x) => x.name === old.server);
                return s === undefined || s.maint;
              }, 2000);
            } else {
              const after = linesOf(lane.render!.stderr, RELOADED) - 1; // its reload may be logged already
              await reloadedWith(lane, old.server, false, Math.max(0, after), 2000);
            }
            old.secretary!.kill(gone ? "SIGTERM" : "SIGKILL");
            await old.secretary!.finished(30_000);
            host.port++;
          }
          host.current = await startInstance(lane, host);
          return;
        }
        case "host": {
          const netns = host.netns!;
          const client = lane.client;
          if (client) lane.figures.inFlightAtHostDeath = await sessionsOf(client, old.server);
          await netns.drop();
          const at = now();
          old.service.kill("SIGKILL");
          old.secretary?.kill("SIGKILL");
          background.push((async () => {
            if (!client) {
              // nginx's view of its upstream cannot be read: the record's lease expiring is what there is
              if (await waitDeleted(lane, old.key!, at, TTL_MS + 10_000)) {
                lane.figures.hostRecordGoneMs = lane.deleted.get(old.key!)! - at;
              }
              return;
            }
            const out = await pollUntil(
              client,
              (servers) => !inRotation(servers.find((s) => s.name === old.server)),
            );
            if (out !== undefined) {
              lane.figures.hostOutMs = out - at;
              const s = (await serversState(client)).find((x) => x.name === old.server);
              lane.figures.hostOutBy = s === undefined || s.maint ? "the registry" : "HAProxy's check";
            }
            if (lane.spec.registry) {
              const maint = await pollUntil(client, (servers) => {
                const s = servers.find((x) => x.name === old.server);
                return s === undefined || s.maint;
              });
              if (maint !== undefined) lane.figures.hostMaintMs = maint - at;
              if (await waitDeleted(lane, old.key!, at, 1000)) {
                lane.figures.hostRecordGoneMs = lane.deleted.get(old.key!)! - at;
              }
            }
          })());
          await Promise.all([old.service.finished(), old.secretary?.finished()]);
          return;
        }
        case "host-return":
          await host.netns!.heal();
          if (lane.spec.registry) host.port++;
          host.current = await startInstance(lane, host);
          return;
        case "host-wait":
          return;
      }
    };
    // each lane a fifth of a cycle (1/lanes) after the one before, so that one lane's process starts and stops do not
    // land on another's removals and additions; the load's labels are per lane
    const offsetMs = (lane: Lane) => lane.index * CYCLE_MS / lanes.length;
    const events = plan.flatMap((step, c) =>
      lanes.map((lane) => ({ c, step, lane, at: c * CYCLE_MS + offsetMs(lane) }))
    )
      .sort((a, b) => a.at - b.at);
    for (const { c, step, lane, at } of events) {
      await delay(Math.max(0, churnAt + at - now()));
      const window: Window = step.kind === "host-wait" || step.kind === "host-return" ? "host" : step.kind;
      if (windows[lane.index].at(-1)?.window !== window || step.kind === "stop" || step.kind === "kill") {
        await label(lane, window);
      }
      if (lane.index === 0) {
        console.log(
          `${((now() - churnAt) / 1000).toFixed(1).padStart(5)} s  cycle ${c + 1}/${plan.length}: ${step.kind}` +
            (step.kind === "host-wait" ? "" : ` host ${step.host}`) +
            (lanes.length > 1 ? ` (the other lanes ${formatMs(offsetMs(lanes[1]))} apart)` : ""),
        );
      }
      const h = lane.hosts[step.host];
      const previous = h.busy;
      h.busy = previous.then(() => cycle(lane, step)).catch((err) => {
        const what = `cycle ${c + 1} (${step.kind}): ${(err as Error).message.split("\n")[0]}`;
        lane.figures.cycleErrors.push(what);
        console.error(`lane ${lane.index + 1}, ${what}`);
      });
    }
    const churnMs = plan.length * CYCLE_MS;
    for (const lane of [...lanes].sort((a, b) => offsetMs(a) - offsetMs(b))) {
      await delay(Math.max(0, churnAt + churnMs + offsetMs(lane) - now()));
      await label(lane, "idle");
    }
    const retriesAtEnd = await Promise.all(lanes.map((l) => l.client && retryCounters(l.client)));
    figures.loadAverage.end = loadAverage();
    await labels.close();
    await reading;
    await load.status;
    load = undefined;
    await Promise.all(lanes.flatMap((l) => l.hosts.map((h) => h.busy)));
    await Promise.all(background);
    await Promise.all(pending);
    // the churn's reloads: to here, where the last cycle's changes have been rendered and reloaded
    const churnEnd = now();
    const nginxAtEnd = await Promise.all(lanes.map((l) => l.nginx && nginxCounts(l)));

    // ---- figures
    if (!totals) throw new Error("the load printed no totals");
    const windowAt = (lane: Lane, t: number): Window | undefined =>
      windows[lane.index].findLast((w) => w.from <= t)?.window;
    for (const lane of lanes) {
      const f = lane.figures;
      const byLabel = totals.totals[lane.index];
      for (const [window, byMethod] of Object.entries(byLabel)) {
        f.latency[window as Window] = byMethod.latency;
        for (const method of ["GET", "POST"] as const) {
          const c = byMethod[method];
          f.requests[window as Window][method] += c.ok + c.status + c.error;
          f.failed[window as Window][method] += c.status + c.error;
        }
      }
      f.failures = failures.filter((x) => x.lane === lane.index).map((x) => ({
        atSeconds: Math.round((x.at - churnAt) / 100) / 10,
        window: x.label,
        method: x.method,
        what: x.status ? `status ${x.status}` : x.error ?? "?",
      }));
      const ok = (windows: Window[]) =>
        windows.reduce((sum, w) => sum + (byLabel[w] ? byLabel[w].GET.ok + byLabel[w].POST.ok : 0), 0);
      f.throughput = {
        baseline: ok(["baseline"]) / ((churnAt - baselineAt) / 1000),
        churn: ok(["stop", "kill", "host"]) / (churnMs / 1000),
      };
      const [retriesBefore, retriesAfter] = [retriesAtChurn[lane.index], retriesAtEnd[lane.index]];
      if (retriesBefore && retriesAfter) {
        f.haproxyRetries = retriesAfter.retries - retriesBefore.retries;
        f.haproxyRedispatches = retriesAfter.redispatches - retriesBefore.redispatches;
      }
      const [nginxBefore, nginxAfter] = [nginxAtChurn[lane.index], nginxAtEnd[lane.index]];
      if (f.nginx && nginxBefore && nginxAfter) {
        const changes = lane.changes.filter((c) => c.atMs >= churnAt && c.atMs <= churnEnd);
        f.nginx.reloads = nginxAfter.reloads - nginxBefore.reloads;
        f.nginx.reloadsPerMinute = f.nginx.reloads / ((churnEnd - churnAt) / 60_000);
        f.nginx.rendered = nginxAfter.rendered - nginxBefore.rendered;
        f.nginx.reloaded = nginxAfter.reloaded - nginxBefore.reloaded;
        f.nginx.removals = changes.filter((c) => c.removal).length;
        f.nginx.additions = changes.length - f.nginx.removals;
        f.nginx.windows = waitWindows(changes, f.nginx.wait === null ? undefined : parseWait(f.nginx.wait));
        f.reloads = nginxAfter.reloads;
      }
      // requests received by two instances: sent, then sent again
      const received = new Map<string, { at: number[]; method: string; instances: string[]; first?: Script }>();
      for (const [instance, s] of services) {
        for (const line of s.stdout.split("\n")) {
          const m = /^(GET|POST) (\d+)\.(\S+) (\S+)$/.exec(line);
          if (!m || Number(m[2]) !== lane.index) continue;
          const id = `${m[2]}.${m[3]}`;
          const seen = received.get(id) ?? { at: [], method: m[1], instances: [] };
          seen.at.push(Number(m[4]));
          seen.instances.push(instance);
          if (seen.at.length === 1 || Number(m[4]) < Math.min(...seen.at.slice(0, -1))) seen.first = s;
          received.set(id, seen);
        }
      }
      for (const [id, r] of received) {
        // filed under what happened to the instance that got it first (else the window of the retry)
        const order = r.at.map((_, i) => i).sort((a, b) => r.at[a] - r.at[b]);
        const window = fates.get(r.first!) ?? windowAt(lane, r.at[order[1]]);
        if (r.at.length < 2 || !window) continue;
        f.sentTwice[window][r.method as "GET" | "POST"]++;
        const atSeconds = order.map((i) => Math.round(r.at[i] - churnAt) / 1000);
        const instances = order.map((i) => r.instances[i]);
        f.sentTwiceDetail.push({ id, method: r.method, window, atSeconds, instances });
      }
      f.syncWarnings = lane.render
        ? lane.render.stderr.split("\n").filter((l) => /failed|unreachable/.test(l))
        : (lane.sync?.stderr ?? "").split("\n").filter((l) => /unreachable|refused/.test(l));
    }
    print(figures);
    return figures;
  });
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

function print(figures: TrafficFigures): void {
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

if (import.meta.main) await main();
