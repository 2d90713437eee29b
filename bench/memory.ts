/**
 * Memory as a host pays it. Resident memory (RSS) counts the runtime's shared
 * pages in every process that maps them; PSS divides each shared page among
 * those processes, and private memory is what only that process holds. So
 * beside RSS this measures PSS, private memory and the shared part (RSS -
 * private), for one sidekick on a host, for `--instances` (ten by default)
 * and for `--dense` (a hundred by default; under deno only), under deno and
 * under node; and the agent's (one `secretary agent` a host, the instances
 * attached to it) with one, `--instances` and `--dense` instances, under deno.
 * Beside memory, CPU per instance-hour: the host's secretary processes' CPU
 * (utime + stime with their exited children) over the window, divided by its
 * instances.
 *
 * Each sidekick is the bundle (dist/secretary.mjs) started exactly as
 * units/apache-secretary@.service's ExecStart starts it (its flags, its
 * environment; node runs the same arguments), beside its own healthy target
 * on its own loopback address (127.0.7.x, 1 to 199), against one etcd,
 * started `--rate` a second (five by default) so the starts do not load the
 * window. An agent host runs the bundle as units/secretary-agent.service's
 * ExecStart starts it (its runtime folder, /run/secretary, in the host's
 * folder), its instances' targets on one address (127.0.7.201 and on, a port
 * each, as one host's), each attached through the agent's socket with the
 * flags units/apache-secretary-agent@.service gives attach
 * (`--hostname %H --drain 5s`). Each host is a
 * folder of its own holding a copy of the runtime and of the bundle, as
 * /opt/bin does on a host, so the hosts, measured side by side, share no page
 * but the system's libraries, and nothing with this benchmark's own deno.
 * Memory is read from /proc/PID/smaps_rollup at the end of an idle window
 * (`--minutes`, one by default) that starts `--settle` seconds (20) after
 * every instance is registered; CPU is counted over that window. The figures
 * of record: PSS per sidekick, deno, with `--instances` on a host; PSS per
 * instance of the agent with `--instances` and `--dense` on a host.
 *
 * ```sh
 * node_modules/.bin/deno task bundle                   # when dist/ is older than the source
 * node_modules/.bin/deno run -A bench/memory.ts [--minutes 1] [--instances 10] [--dense 100] [--settle 20]
 * node_modules/.bin/deno run -A bench/memory.ts --quick  # a 15 s window, 20 on the dense hosts
 * node_modules/.bin/deno run -A bench/memory.ts --instances 3 --dense 5 --minutes 0.25 --settle 5   # a smoke run
 * ```
 *
 * @module
 */
import { existsSync } from "node:fs";
import { parseArgs } from "node:util";
import { delay, EtcdCluster, execStart, ROOT, Script, TestServer, unitEnvironment } from "../testbed/testbed.ts";
import {
  agentListening,
  attach,
  benchmark,
  bundlesBuilt,
  cpuSecondsOf,
  formatMiB,
  KeyClock,
  keyOf,
  now,
  rollupOf,
} from "./lib.ts";

/** The unit whose ExecStart and environment the sidekicks run with. */
export const UNIT = "apache-secretary@.service";
/** The agent's unit, and the unit that attaches an instance to it (its instance flags: `--hostname %H --drain 5s`). */
export const AGENT_UNIT = "secretary-agent.service";
export const ATTACH_UNIT = "apache-secretary-agent@.service";
/** Where the agent's unit keeps its socket and agent.json (RuntimeDirectory=secretary). */
const RUNTIME_DIR = "/run/secretary";

/** One host's secretaries; memory per instance in KiB (the host's sum divided by its instances). */
export interface MemoryHost {
  runtime: "deno" | "node";
  /** A sidekick a instance, or one agent for them all; absent in runs before the agent: sidekicks. */
  kind?: "sidekicks" | "agent";
  /** Sidekicks on the host (an agent host: 0). */
  sidekicks: number;
  /** Instances on the host; absent in runs before the agent: as many as sidekicks. */
  instances?: number;
  rssKiB: number;
  pssKiB: number;
  privateKiB: number;
  /** CPU seconds per instance-hour over the window: the host's secretary processes' with their exited children. */
  cpuSecondsPerHour?: number;
}

export interface MemoryFigures {
  unit: string;
  /** The agent's unit, when agent hosts ran. */
  agentUnit?: string;
  windowSeconds: number;
  /** From the last registration to the window's start; absent in runs before the agent. */
  settleSeconds?: number;
  /** Sidekicks on the many-sidekick host: the figure of record is deno's PSS per sidekick there. */
  perHost: number;
  /** Instances on the dense hosts (deno's sidekicks, the agent's); absent in runs before the agent. */
  dense?: number;
  hosts: MemoryHost[];
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    minutes: { type: "string" },
    instances: { type: "string", default: "10" },
    dense: { type: "string" },
    settle: { type: "string" },
    rate: { type: "string", default: "5" },
    quick: { type: "boolean", default: false },
    json: { type: "string" },
  },
});
const windowMs = Number(values.minutes ?? (values.quick ? 0.25 : 1)) * 60_000;
const settleMs = Number(values.settle ?? (values.quick ? 5 : 20)) * 1000;
const perHost = Number(values.instances);
const dense = Number(values.dense ?? (values.quick ? 20 : 100));
const rate = Number(values.rate);
/** Sidekicks' addresses: 127.0.7.1 to .199 (deno: 1, perHost, dense; node: 1, perHost); the agents' from .201. */
const SIDEKICK_ADDRESSES = 199;
if (!Number.isInteger(perHost) || perHost < 2) {
  console.error(`memory: Cannot use --instances ${values.instances}: expected an integer of 2 or more`);
  Deno.exit(2);
}
if (!Number.isInteger(dense) || dense < 0 || 2 + 2 * perHost + dense > SIDEKICK_ADDRESSES) {
  console.error(
    `memory: Cannot use --dense ${values.dense}: expected 0 (none) or an integer with 2 + 2 x --instances + --dense ` +
      `at most ${SIDEKICK_ADDRESSES}`,
  );
  Deno.exit(2);
}
if (!(windowMs >= 0) || !(settleMs >= 0) || !(rate > 0)) {
  console.error(
    `memory: Cannot use --minutes ${values.minutes} --settle ${values.settle} --rate ${values.rate}: ` +
      "expected minutes, seconds and starts a second",
  );
  Deno.exit(2);
}
if (!bundlesBuilt()) {
  console.error("memory: dist/secretary.mjs is missing: run deno task bundle");
  Deno.exit(2);
}
const bundleHasAgent = (await Deno.readTextFile(`${ROOT}dist/secretary.mjs`)).includes("agent started");
const agentUnits = [AGENT_UNIT, ATTACH_UNIT].every((unit) => existsSync(`${ROOT}units/${unit}`));
const withAgent = bundleHasAgent && agentUnits;
if (!bundleHasAgent) console.log("dist/secretary.mjs predates the agent: sidekicks only (run deno task bundle)");
else if (!agentUnits) console.log(`units/${AGENT_UNIT} or units/${ATTACH_UNIT} is missing: sidekicks only`);

const dir = await Deno.makeTempDir({ prefix: "secretary-memory-" });
const cluster = await EtcdCluster.create(1);
const etcd = cluster.client();
const targets: TestServer[] = [];
const scripts: Script[] = [];
let clock: KeyClock | undefined;

/** A host as started: its runtime and kind, its secretary processes and its instances' targets. */
interface Host {
  runtime: MemoryHost["runtime"];
  kind: "sidekicks" | "agent";
  processes: Script[];
  targets: TestServer[];
}

/** Where a program on PATH is. */
function which(name: string): string {
  return new TextDecoder().decode(new Deno.Command("which", { args: [name] }).outputSync().stdout).trim();
}

/** A host's /opt/bin: a folder of its own with a copy of the runtime and of the bundle. */
async function hostBin(name: string, runtime: MemoryHost["runtime"]): Promise<string> {
  const bin = `${dir}/${name}`;
  await Deno.mkdir(bin);
  await Deno.copyFile(runtime === "deno" ? Deno.execPath() : which("node"), `${bin}/${runtime}`);
  await Deno.copyFile(`${ROOT}dist/secretary.mjs`, `${bin}/secretary.mjs`);
  return bin;
}

/** Starts `count` sidekicks under `runtime` from a folder of their own, as one host's /opt/bin, `--rate` a second. */
async function startSidekicks(runtime: MemoryHost["runtime"], count: number, firstAddress: number): Promise<Host> {
  const bin = await hostBin(`${runtime}-${count}`, runtime);
  const etcdHostPort = new URL(cluster.endpoints[0]).host;
  const unitEnv = await unitEnvironment(UNIT);
  const host: Host = { runtime, kind: "sidekicks", processes: [], targets: [] };
  for (let i = 0; i < count; i++) {
    const target = await TestServer.start(`127.0.7.${firstAddress + i}`);
    targets.push(target);
    // what /etc/environment (EnvironmentFile=) holds on such a host
    const environment = { COREOS_PUBLIC_IPV4: target.host, SECRETARY_ETCD: etcdHostPort };
    const argv = await execStart(UNIT, { ...environment, "%i": String(target.port), "%H": "bench" }, bin);
    // node runs the same arguments from the bundle on; it has no permission flags
    const [command, ...args] = runtime === "deno"
      ? argv
      : [`${bin}/node`, ...argv.slice(argv.indexOf(`${bin}/secretary.mjs`))];
    const env = { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin", ...unitEnv, ...environment };
    const script = new Script(command, args, { ...env, DENO_DIR: `${bin}/cache` }, { cwd: bin, clearEnv: true });
    scripts.push(script);
    host.processes.push(script);
    host.targets.push(target);
    if (runtime === "deno" && i === 0 && count === 1) {
      console.log(`deno's flags, from units/${UNIT}: ${args.slice(1, args.indexOf(`${bin}/secretary.mjs`)).join(" ")}`);
    }
    await delay(1000 / rate);
  }
  return host;
}

/**
 * Starts an agent from a folder of its own, as units/secretary-agent.service
 * starts it (its flags, its environment; the runtime folder in the host's
 * folder), and attaches `count` instances on `address`, a port each, with
 * units/apache-secretary-agent@.service's instance flags.
 */
async function startAgent(count: number, address: string): Promise<Host> {
  const bin = await hostBin(`agent-${count}`, "deno");
  const etcdHostPort = new URL(cluster.endpoints[0]).host;
  const environment = { COREOS_PUBLIC_IPV4: address, SECRETARY_ETCD: etcdHostPort };
  const inHost = (argv: string[]) => argv.map((word) => word.replaceAll(RUNTIME_DIR, `${bin}/run`));
  const [command, ...args] = inHost(await execStart(AGENT_UNIT, { ...environment, "%H": "bench" }, bin));
  const env = {
    PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
    ...await unitEnvironment(AGENT_UNIT),
    ...environment,
    DENO_DIR: `${bin}/cache`,
  };
  const agent = new Script(command, args, env, { cwd: bin, clearEnv: true });
  scripts.push(agent);
  if (count === 1) console.log(`the agent's flags, from units/${AGENT_UNIT}: ${args.join(" ")}`);
  const socket = args[args.indexOf("--socket") + 1];
  await agentListening(socket, agent);
  // attach's flags after its port, its --socket left out (the request goes there)
  const attachArgv = inHost(await execStart(ATTACH_UNIT, { ...environment, "%i": "0", "%H": "bench" }, bin));
  const flags = attachArgv.slice(attachArgv.indexOf("attach") + 2);
  flags.splice(flags.indexOf("--socket"), 2);
  const host: Host = { runtime: "deno", kind: "agent", processes: [agent], targets: [] };
  for (let i = 0; i < count; i++) {
    const target = await TestServer.start(address);
    targets.push(target);
    host.targets.push(target);
  }
  // as a host's units attach them at boot: all at once
  await Promise.all(host.targets.map((t) => attach(socket, t, flags)));
  return host;
}

/** Memory per instance (the host's sum divided by its instances), and CPU per instance-hour over the window. */
function perInstance(host: Host, cpu: { before: number[]; after: number[]; seconds: number }): MemoryHost {
  const sum = { rssKiB: 0, pssKiB: 0, privateKiB: 0 };
  for (const script of host.processes) {
    if (!script.running) throw new Error(`a ${host.runtime} ${host.kind} process exited:\n${script.stderr}`);
    const m = rollupOf(script.pid);
    sum.rssKiB += m.rssKiB;
    sum.pssKiB += m.pssKiB;
    sum.privateKiB += m.privateKiB;
  }
  const n = host.targets.length;
  const cpuSeconds = cpu.after.reduce((a, b) => a + b, 0) - cpu.before.reduce((a, b) => a + b, 0);
  return {
    runtime: host.runtime,
    kind: host.kind,
    sidekicks: host.kind === "agent" ? 0 : n,
    instances: n,
    rssKiB: sum.rssKiB / n,
    pssKiB: sum.pssKiB / n,
    privateKiB: sum.privateKiB / n,
    cpuSecondsPerHour: cpuSeconds / n / cpu.seconds * 3600,
  };
}

async function main(): Promise<MemoryFigures> {
  await cluster.start();
  clock = await KeyClock.start(etcd);
  const hosts: Host[] = [];
  const sizes = (runtime: string) => [1, perHost, ...(runtime === "deno" && dense ? [dense] : [])];
  for (const runtime of ["deno", "node"] as const) {
    for (const count of sizes(runtime)) {
      hosts.push(await startSidekicks(runtime, count, targets.length + 1));
    }
  }
  if (withAgent) {
    for (const [i, count] of sizes("deno").entries()) hosts.push(await startAgent(count, `127.0.7.${201 + i}`));
  }
  const all = hosts.flatMap((h) => h.targets.map((target) => ({ target, host: h })));
  await Promise.all(all.map(({ target, host }) =>
    clock!.until("put", keyOf(target), 0, 120_000).catch((err) => {
      throw new Error(`${err.message}\n${host.processes.map((p) => p.stderr).join("\n").slice(-2000)}`);
    })
  ));
  const sidekicks = hosts.filter((h) => h.kind === "sidekicks").reduce((n, h) => n + h.processes.length, 0);
  console.log(
    `${all.length} instances registered: ${sidekicks} sidekicks (hosts of ${sizes("deno").join(", ")} under deno, ` +
      `${sizes("node").join(" and ")} under node)${
        withAgent ? `, ${all.length - sidekicks} on agents (hosts of ${sizes("deno").join(", ")})` : ""
      }; ${settleMs / 1000} s to settle, then an idle window of ${windowMs / 1000} s`,
  );
  await delay(settleMs);
  const cpuOf = (h: Host) => h.processes.map((p) => cpuSecondsOf(p.pid, true));
  const before = { at: now(), cpu: hosts.map(cpuOf) };
  await delay(windowMs);
  const after = { at: now(), cpu: hosts.map(cpuOf) };
  const listed = new Set((await etcd.list("/services/")).values.map((v) => v.key));
  const missing = all.filter(({ target }) => !listed.has(keyOf(target)));
  if (missing.length) {
    throw new Error(`records gone at the end of the window:\n${missing[0].host.processes[0].stderr.slice(-2000)}`);
  }
  const seconds = (after.at - before.at) / 1000;
  const figures: MemoryFigures = {
    unit: UNIT,
    ...(withAgent ? { agentUnit: AGENT_UNIT } : {}),
    windowSeconds: windowMs / 1000,
    settleSeconds: settleMs / 1000,
    perHost,
    dense,
    hosts: hosts.map((h, i) => perInstance(h, { before: before.cpu[i], after: after.cpu[i], seconds })),
  };
  print(figures);
  return figures;
}

function print(figures: MemoryFigures): void {
  console.log(
    `per instance (the host's sum divided by its instances) after ${figures.windowSeconds} s idle; CPU over it:`,
  );
  const row = (cells: string[]) => cells.map((c, i) => (i < 3 ? c.padEnd(10) : c.padStart(12))).join("");
  console.log(row(["runtime", "kind", "per host", "RSS", "PSS", "private", "shared", "CPU s/h"]));
  for (const h of figures.hosts) {
    console.log(row([
      h.runtime,
      h.kind === "agent" ? "agent" : "sidekicks",
      String(h.instances),
      formatMiB(h.rssKiB),
      formatMiB(h.pssKiB),
      formatMiB(h.privateKiB),
      formatMiB(h.rssKiB - h.privateKiB),
      (h.cpuSecondsPerHour ?? NaN).toFixed(1),
    ]));
  }
  console.log("shared: RSS - private, the pages some other process on the host maps too");
  const record = figures.hosts.find((h) =>
    h.runtime === "deno" && h.kind !== "agent" && h.sidekicks === figures.perHost
  );
  if (record) {
    console.log(`figure of record: PSS per sidekick, deno, ${figures.perHost} a host: ${formatMiB(record.pssKiB)}`);
  }
  for (const h of figures.hosts.filter((h) => h.kind === "agent" && h.instances !== 1)) {
    console.log(`PSS per instance, the agent with ${h.instances} a host: ${formatMiB(h.pssKiB)}`);
  }
}

const cleanup = async () => {
  clock?.stop();
  etcd.close();
  await Promise.all(scripts.map((s) => s.stop()));
  await Promise.all(targets.map((t) => t.close()));
  await cluster.stop();
  await Deno.remove(dir, { recursive: true }).catch(() => {});
};
await benchmark(values.json, cleanup, main);
