/**
 * Memory as a host pays it. Resident memory (RSS) counts the runtime's shared
 * pages in every process that maps them; PSS divides each shared page among
 * those processes, and private memory is what only that process holds. So
 * beside RSS this measures PSS, private memory and the shared part (RSS -
 * private), for one sidekick on a host and for `--instances` (ten by default),
 * under deno and under node.
 *
 * Each sidekick is the bundle (dist/secretary.mjs) started exactly as
 * units/apache-secretary@.service's ExecStart starts it (its flags, its
 * environment; node runs the same arguments), beside its own healthy target
 * on its own loopback address (127.0.7.x), against one etcd. Each host is a
 * folder of its own holding a copy of the runtime and of the bundle, as
 * /opt/bin does on a host, so the hosts, measured side by side, share no page
 * but the system's libraries, and nothing with this benchmark's own deno.
 * Read from /proc/PID/smaps_rollup at the end of an idle window (`--minutes`,
 * one by default) that starts once every sidekick is registered. The figure
 * of record: PSS per sidekick, deno, with `--instances` on a host.
 *
 * ```sh
 * node_modules/.bin/deno task bundle                   # when dist/ is older than the source
 * node_modules/.bin/deno run -A bench/memory.ts [--minutes 1] [--instances 10]
 * node_modules/.bin/deno run -A bench/memory.ts --quick  # a 15 s window
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { delay, EtcdCluster, execStart, ROOT, Script, TestServer, unitEnvironment } from "../testbed/testbed.ts";
import { benchmark, bundlesBuilt, formatMiB, KeyClock, keyOf, rollupOf } from "./lib.ts";

/** The unit whose ExecStart and environment the sidekicks run with. */
export const UNIT = "apache-secretary@.service";

/** One host's sidekicks; memory per sidekick in KiB (the host's sum divided by its sidekicks). */
export interface MemoryHost {
  runtime: "deno" | "node";
  sidekicks: number;
  rssKiB: number;
  pssKiB: number;
  privateKiB: number;
}

export interface MemoryFigures {
  unit: string;
  windowSeconds: number;
  /** Sidekicks on the many-sidekick host: the figure of record is deno's PSS per sidekick there. */
  perHost: number;
  hosts: MemoryHost[];
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    minutes: { type: "string" },
    instances: { type: "string", default: "10" },
    quick: { type: "boolean", default: false },
    json: { type: "string" },
  },
});
const windowMs = Number(values.minutes ?? (values.quick ? 0.25 : 1)) * 60_000;
const perHost = Number(values.instances);
if (!Number.isInteger(perHost) || perHost < 2) {
  console.error(`memory: Cannot use --instances ${values.instances}: expected an integer of 2 or more`);
  Deno.exit(2);
}
if (!(windowMs >= 0)) {
  console.error(`memory: Cannot use --minutes ${values.minutes}: expected a number of minutes`);
  Deno.exit(2);
}
if (!bundlesBuilt()) {
  console.error("memory: dist/secretary.mjs is missing: run deno task bundle");
  Deno.exit(2);
}

const dir = await Deno.makeTempDir({ prefix: "secretary-memory-" });
const cluster = await EtcdCluster.create(1);
const etcd = cluster.client();
const targets: TestServer[] = [];
const scripts: Script[] = [];
let clock: KeyClock | undefined;

/** Where a program on PATH is. */
function which(name: string): string {
  return new TextDecoder().decode(new Deno.Command("which", { args: [name] }).outputSync().stdout).trim();
}

/** Starts `count` sidekicks under `runtime` from a folder of their own, as one host's /opt/bin. */
async function startHost(runtime: MemoryHost["runtime"], count: number, firstAddress: number) {
  const bin = `${dir}/${runtime}-${count}`;
  await Deno.mkdir(bin);
  await Deno.copyFile(runtime === "deno" ? Deno.execPath() : which("node"), `${bin}/${runtime}`);
  await Deno.copyFile(`${ROOT}dist/secretary.mjs`, `${bin}/secretary.mjs`);
  const etcdHostPort = new URL(cluster.endpoints[0]).host;
  const unitEnv = await unitEnvironment(UNIT);
  const host = { runtime, sidekicks: [] as { target: TestServer; script: Script }[] };
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
    host.sidekicks.push({ target, script });
    if (runtime === "deno" && i === 0 && count === 1) {
      console.log(`deno's flags, from units/${UNIT}: ${args.slice(1, args.indexOf(`${bin}/secretary.mjs`)).join(" ")}`);
    }
  }
  return host;
}

/** Memory per sidekick: the host's sum divided by its sidekicks. */
function perSidekick(host: Awaited<ReturnType<typeof startHost>>): MemoryHost {
  const sum = { rssKiB: 0, pssKiB: 0, privateKiB: 0 };
  for (const { script } of host.sidekicks) {
    if (!script.running) throw new Error(`a ${host.runtime} sidekick exited:\n${script.stderr}`);
    const m = rollupOf(script.pid);
    sum.rssKiB += m.rssKiB;
    sum.pssKiB += m.pssKiB;
    sum.privateKiB += m.privateKiB;
  }
  const n = host.sidekicks.length;
  return {
    runtime: host.runtime,
    sidekicks: n,
    rssKiB: sum.rssKiB / n,
    pssKiB: sum.pssKiB / n,
    privateKiB: sum.privateKiB / n,
  };
}

async function main(): Promise<MemoryFigures> {
  await cluster.start();
  clock = await KeyClock.start(etcd);
  const hosts = [];
  for (const runtime of ["deno", "node"] as const) {
    for (const count of [1, perHost]) hosts.push(await startHost(runtime, count, targets.length + 1));
  }
  const all = hosts.flatMap((h) => h.sidekicks);
  await Promise.all(all.map(({ target, script }) =>
    clock!.until("put", keyOf(target), 0, 120_000).catch((err) => {
      throw new Error(`${err.message}\n${script.stderr}`);
    })
  ));
  console.log(
    `${all.length} sidekicks registered (hosts of 1 and ${perHost}, deno and node); an idle window of ${
      windowMs / 1000
    } s`,
  );
  await delay(windowMs);
  const listed = new Set((await etcd.list("/services/")).values.map((v) => v.key));
  const missing = all.filter(({ target }) => !listed.has(keyOf(target)));
  if (missing.length) throw new Error(`records gone at the end of the window:\n${missing[0].script.stderr}`);
  const figures = { unit: UNIT, windowSeconds: windowMs / 1000, perHost, hosts: hosts.map(perSidekick) };
  print(figures);
  return figures;
}

function print(figures: MemoryFigures): void {
  console.log(`per sidekick (the host's sum divided by its sidekicks) after ${figures.windowSeconds} s idle:`);
  const row = (cells: string[]) => cells.map((c, i) => (i < 2 ? c.padEnd(10) : c.padStart(12))).join("");
  console.log(row(["runtime", "per host", "RSS", "PSS", "private", "shared"]));
  for (const h of figures.hosts) {
    console.log(row([
      h.runtime,
      String(h.sidekicks),
      formatMiB(h.rssKiB),
      formatMiB(h.pssKiB),
      formatMiB(h.privateKiB),
      formatMiB(h.rssKiB - h.privateKiB),
    ]));
  }
  console.log("shared: RSS - private, the pages some other process on the host maps too");
  const record = figures.hosts.find((h) => h.runtime === "deno" && h.sidekicks === figures.perHost);
  if (record) {
    console.log(`figure of record: PSS per sidekick, deno, ${figures.perHost} a host: ${formatMiB(record.pssKiB)}`);
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
