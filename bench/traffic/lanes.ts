/**
 * bench/traffic.ts's lanes: what each one is (LANES), and setting one up: its
 * three hosts, its proxy (HAProxy and `registry sync` as its unit runs it, or
 * nginx and `registry render` as units/examples/nginx/registry-nginx@.service
 * runs it), and its instances (a service and, with the registry, a
 * secretary), started and stopped as systemd would. What a run holds across
 * lanes is a `Run`.
 *
 * @module
 */
import type { HAProxy } from "../../lib/haproxy.ts";
import { DEFAULT_PREFIX, instanceKey } from "../../lib/record.ts";
import { readTemplate, renderTemplate, templateView } from "../../lib/render.ts";
import { HAProxyProcess } from "../../testbed/haproxy.ts";
import { NGINX, NginxProcess } from "../../testbed/nginx.ts";
import { delay, ROOT, Script, SOURCE_FLAGS, waitFor } from "../../testbed/testbed.ts";
import { NetnsHost } from "../../testbed/traffic.ts";
import { commandFor, DEFAULT_ARGS } from "../lib.ts";
import { type CycleKind, laneFigures, type TrafficLane } from "./figures.ts";

export const CYCLE_MS = 5000;
export const DRAIN = "2s";
export const WORK_MS = 20;
export const CLIENTS = 4;
export const DEADLINE_MS = 5000;
/** Not the frontend's name (`web`): `show stat web …` would then find the frontend, which has no servers. */
export const BACKEND = "app";
export const STATIC_CHECK = "check inter 2s fall 2 rise 2";
/** The first port of each host's instances. */
const FIRST_PORT = 20_000;
export const SECRETARY_ARGS = [...DEFAULT_ARGS, "--check=http", `--drain=${DRAIN}`];

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

export const LANES: readonly LaneSpec[] = [
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

/** One instance: its service and, with the registry, its secretary. */
export interface Instance {
  ip: string;
  port: number;
  /** Its server's name in HAProxy. */
  server: string;
  service: Script;
  secretary?: Script;
  key?: string;
}

/** A host: an address, the instance on it now, and the next port to use. */
export interface Host {
  index: number;
  ip: string;
  netns?: NetnsHost;
  port: number;
  current?: Instance;
  /** The operation on it in progress, awaited before the next. */
  busy: Promise<void>;
}

export interface Lane {
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

/** The command line's options. */
export interface Options {
  churnSeconds: number;
  baselineSeconds: number;
  serverOptions: string | undefined;
  backendLines: string[];
  json: string | undefined;
}

/** What a run holds across lanes: for setting up, the churn, the figures and the cleanup. */
export interface Run {
  options: Options;
  runtime: "deno" | "source";
  dir: string;
  endpoints: string;
  /** Every process started, for the cleanup. */
  scripts: Script[];
  /** Every instance's service and its address (lane 2 reuses addresses). */
  services: [string, Script][];
  /** How each instance that went, went. */
  fates: Map<Script, CycleKind>;
  lanes: Lane[];
  netns: NetnsHost[];
  /** Timings in flight, awaited before the figures. */
  pending: Promise<unknown>[];
  /** When the churn started; Infinity before. */
  churnAt: number;
}

/** The `--wait` of the shipped unit (units/examples/nginx/registry-nginx@.service), as written there. */
function unitWait(): string {
  const wait = /--wait (\S+)/.exec(Deno.readTextFileSync(`${ROOT}${NGINX_UNIT}`))?.[1];
  if (!wait) throw new Error(`${NGINX_UNIT} has no --wait`);
  return wait;
}

/** Starts a service on `host`'s address and port (in its namespace, if it has one), retrying a port still held. */
async function startService(run: Run, host: Host): Promise<Script> {
  for (let attempt = 1;; attempt++) {
    const deno = [Deno.execPath(), "run", "--allow-net", "testbed/traffic.ts", "serve", host.ip, String(host.port)];
    const [command, args] = host.netns
      ? host.netns.command(deno[0], [...deno.slice(1), "--work-ms", String(WORK_MS)])
      : [deno[0], [...deno.slice(1), "--work-ms", String(WORK_MS)]];
    const service = new Script(command, args);
    run.scripts.push(service);
    run.services.push([`${host.ip}:${host.port}`, service]);
    await waitFor(() => service.stdout.startsWith("listening") || !service.running, "an instance", 15_000, 20);
    if (service.running) return service;
    if (attempt === 5) throw new Error(`no instance on ${host.ip}:${host.port}:\n${service.stderr}`);
    await delay(200); // its port still held a moment
  }
}

/** Starts an instance on `host`: its service, then (with the registry) its secretary. */
export async function startInstance(run: Run, lane: Lane, host: Host): Promise<Instance> {
  const service = await startService(run, host);
  const { ip, port } = host;
  if (!lane.spec.registry) return { ip, port, server: `s${host.index}`, service };
  const [command, args] = commandFor("secretary", run.runtime, [
    String(port),
    `--ip=${ip}`,
    "--hostname=bench",
    `--service=${lane.service}`,
    `--endpoints=${run.endpoints}`,
    ...SECRETARY_ARGS,
    ...(lane.spec.watchConnection ? [] : ["--no-watch-connection"]),
  ]);
  const secretary = new Script(command, args);
  run.scripts.push(secretary);
  const key = instanceKey(DEFAULT_PREFIX, lane.service, ip, port);
  return { ip, port, server: `${ip}:${port}`, service, secretary, key };
}

/** As systemd stops the two units: the secretary (its drain included), then the service. */
export async function stopInstance(instance: Instance): Promise<void> {
  if (instance.secretary) {
    instance.secretary.kill("SIGTERM");
    await instance.secretary.finished(30_000);
  }
  instance.service.kill("SIGTERM");
  await instance.service.finished(30_000);
}

/** Sets up every lane of LANES, in turn: hosts, HAProxy and the sync, or nginx and the render; no instance yet. */
export async function startLanes(run: Run): Promise<void> {
  const wait = unitWait();
  for (const [index, spec] of LANES.entries()) run.lanes.push(await startLane(run, index, spec, wait));
}

async function startLane(run: Run, index: number, spec: LaneSpec, unitWait: string): Promise<Lane> {
  const net = `127.0.${11 + index}`;
  const host = await NetnsHost.create(`sttraffic${index + 1}`, index + 1);
  run.netns.push(host);
  const hosts: Host[] = [
    { index: 0, ip: host.ip, netns: host, port: FIRST_PORT, busy: Promise.resolve() },
    { index: 1, ip: `${net}.2`, port: FIRST_PORT, busy: Promise.resolve() },
    { index: 2, ip: `${net}.3`, port: FIRST_PORT, busy: Promise.resolve() },
  ];
  const service = `traffic-${index + 1}`;
  const front = { ip: `${net}.1`, port: 8000 };
  const haproxy = spec.proxy === "haproxy"
    ? await HAProxyProcess.start({
      dir: `${run.dir}/haproxy-${index + 1}`,
      ...front,
      backend: BACKEND,
      backendLines: [
        ...run.options.backendLines,
        ...(spec.registry ? [] : hosts.map((h) => `server s${h.index} ${h.ip}:${h.port} ${STATIC_CHECK}`)),
      ],
    })
    : undefined;
  let nginx: NginxProcess | undefined;
  const nginxDir = `${run.dir}/nginx-${index + 1}`;
  const out = `${nginxDir}/conf.d/upstream.conf`;
  if (spec.proxy === "nginx") {
    // nginx needs the file before it starts: what the render's first listing will write, no instance yet
    await Deno.mkdir(`${nginxDir}/conf.d`, { recursive: true });
    const template = readTemplate(`${ROOT}${NGINX_TEMPLATE}`);
    await Deno.writeTextFile(out, renderTemplate(template, templateView(DEFAULT_PREFIX, service, new Map())));
    nginx = await NginxProcess.start({
      dir: nginxDir,
      ...front,
      upstream: NGINX_UPSTREAM,
      serverLines: spec.serverLines,
    });
  }
  const wait = spec.wait ? unitWait : undefined;
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
    figures: laneFigures(spec, haproxy ? (await haproxy.client().process()).pid : undefined, wait),
  };
  if (nginx) {
    lane.render = startRender(run, lane, nginxDir, wait);
    await lane.render.waitForLog(/^started /);
  } else if (spec.registry) {
    lane.sync = startSync(run, lane);
    await lane.sync.waitForLog(/^started /);
  }
  return lane;
}

/** nginx lanes: `registry render` as units/examples/nginx/registry-nginx@.service runs it, addressed to this nginx. */
function startRender(run: Run, lane: Lane, nginxDir: string, wait: string | undefined): Script {
  const addressed = NginxProcess.args(nginxDir).join(" ");
  const args = [
    "render",
    lane.service,
    "--template",
    NGINX_TEMPLATE,
    "--out",
    lane.out!,
    "--check",
    `${NGINX} -t -q ${addressed}`,
    "--reload",
    `${NGINX} -s reload ${addressed}`,
    ...(wait ? ["--wait", wait] : []),
    "--endpoints",
    run.endpoints,
  ];
  const render = run.runtime === "deno"
    ? new Script(Deno.execPath(), [
      "run",
      "--v8-flags=--lite-mode",
      `--allow-net=${etcdHost(run)}`,
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
  run.scripts.push(render);
  return render;
}

/** HAProxy lanes with the registry: `registry sync` as units/registry-haproxy@.service runs it. */
function startSync(run: Run, lane: Lane): Script {
  const socket = lane.haproxy!.adminSocket;
  const serverOptions = run.options.serverOptions;
  const args = [
    "sync",
    lane.service,
    `--haproxy=${socket}`,
    `--backend=${BACKEND}`,
    `--endpoints=${run.endpoints}`,
    ...(serverOptions === undefined ? [] : [`--server-options=${serverOptions}`]),
  ];
  const sync = run.runtime === "deno"
    ? new Script(Deno.execPath(), [
      "run",
      "--v8-flags=--lite-mode",
      `--allow-net=${etcdHost(run)},unix:${socket}`,
      `--allow-read=${socket}`,
      `--allow-write=${socket}`,
      "--allow-env=ETCDCTL_CACERT,ETCDCTL_CERT,ETCDCTL_KEY,ETCDCTL_USER,JOURNAL_STREAM,GRPC_*",
      "dist/registry.mjs",
      ...args,
    ])
    : new Script(Deno.execPath(), ["run", ...SOURCE_FLAGS, "--allow-write", "registry.ts", ...args]);
  run.scripts.push(sync);
  return sync;
}

/** etcd's `host:port`, for a bundle's `--allow-net`. */
function etcdHost(run: Run): string {
  return new URL(run.endpoints.split(",")[0]).host;
}
