/**
 * HAProxy and `registry sync` as they ship, for bench/reload.ts and
 * bench/burst.ts: Debian's HAProxy run as Debian's haproxy.service runs it
 * (master-worker, `-Ws -f CFG -p PIDFILE -S MASTER_SOCKET`; a reload is
 * `systemctl reload haproxy`'s two ExecReload= lines: `haproxy -Ws -f CFG -c
 * -q`, then SIGUSR2 to the master, which starts a new worker and soft-stops
 * the old one, as `-sf` does), with units/examples/haproxy/haproxy.cfg as it
 * is but for its paths and its `bind`, moved to a folder and a loopback
 * address of the benchmark's; and the sync with the words of
 * units/registry-haproxy@.service's ExecStart= (the bundle when built and
 * newer than its sources, else the source with the same arguments). Both
 * files are read when a benchmark starts, so the figures follow what ships.
 * Never shipped.
 *
 * @module
 */
import { hostname } from "node:os";
import { HAProxy, type HAProxyServer, parseServersState } from "../lib/haproxy.ts";
import { HAPROXY } from "../testbed/haproxy.ts";
import { delay, execStart, ROOT, Script, waitFor } from "../testbed/testbed.ts";
import { bundlesBuilt, type Runtime } from "./lib.ts";

/** The shipped example config and the sync's unit. */
export const EXAMPLE_CONFIG = "units/examples/haproxy/haproxy.cfg";
export const SYNC_UNIT = "registry-haproxy@.service";

/** Where the example and the unit keep files, each moved into the benchmark's folder. */
const SYSTEM_FOLDERS = /\/(?:run\/haproxy|var\/lib\/haproxy|etc\/haproxy|run)\/(?=[^/\s]+)/g;

/** `word` with the system folders the example and the unit name moved to `dir` (pure). */
export function localPath(word: string, dir: string): string {
  return word.replace(SYSTEM_FOLDERS, `${dir}/`);
}

/**
 * The example config for a private HAProxy (pure): its paths in `dir`, its frontend's `bind` on `ip:port`,
 * `lines` added to `defaults`; `chroot`, `user`, `group`, `daemon` and `log` lines dropped (the benchmark runs
 * it in the foreground, as root, in a folder of its own).
 */
export function exampleConfig(text: string, options: { dir: string; ip: string; port: number; lines?: string[] }) {
  const out: string[] = [];
  for (const line of text.split("\n")) {
    if (/^\s*(chroot|user|group|daemon|log)(\s|$)/.test(line)) continue;
    const bind = /^(\s*bind\s+)\S+(.*)$/.exec(line);
    out.push(bind ? `${bind[1]}${options.ip}:${options.port}${bind[2]}` : localPath(line, options.dir));
    if (/^defaults\b/.test(line)) { for (const l of options.lines ?? []) out.push(`\t${l}`); }
  }
  return out.join("\n");
}

/** Whether a `show servers state` row is in rotation: not in maintenance and running. */
export function inRotation(s: HAProxyServer | undefined): boolean {
  return s !== undefined && !s.maint && s.opState === 2;
}

/** `ip:port` of a server, whatever its name (a `server-template` slot's name is not its address). */
export const addressOf = (s: HAProxyServer) => `${s.ip}:${s.port}`;

/** One answer of the admin socket: the Pid that gave it and the backend's servers. */
export interface Snapshot {
  pid: number;
  servers: HAProxyServer[];
  /** When the answer was read. */
  at: number;
}

/** HAProxy as Debian's unit runs it, on the example config. */
export class ShippedHAProxy {
  /** Every worker Pid seen, so cleanup reaches an old worker still finishing. */
  readonly workers = new Set<number>();

  private constructor(readonly dir: string, readonly backend: string, readonly master: Script) {}

  get config(): string {
    return `${this.dir}/haproxy.cfg`;
  }

  get adminSocket(): string {
    return localPath("/run/haproxy/admin.sock", this.dir);
  }

  /** `-S`: the master's CLI, as the unit's EXTRAOPTS has it. */
  get #masterSocket(): string {
    return `${this.dir}/haproxy-master.sock`;
  }

  /** Writes the example config into `dir` and starts the master; waits until the admin socket answers. */
  static async start(
    options: { dir: string; ip: string; port: number; backend: string; lines?: string[] },
  ): Promise<ShippedHAProxy> {
    await Deno.mkdir(options.dir, { recursive: true });
    const text = exampleConfig(await Deno.readTextFile(`${ROOT}${EXAMPLE_CONFIG}`), options);
    await Deno.writeTextFile(`${options.dir}/haproxy.cfg`, text);
    // the folders the config reads state from (`server-state-base`, `server-state-file`'s), which the sync writes
    for (const m of text.matchAll(/^\s*server-state-(base|file)\s+(\S+)/gm)) {
      await Deno.mkdir(m[1] === "base" ? m[2] : m[2].slice(0, m[2].lastIndexOf("/")), { recursive: true });
    }
    const dir = options.dir;
    const master = new Script(
      HAPROXY,
      ["-Ws", "-f", `${dir}/haproxy.cfg`, "-p", `${dir}/haproxy.pid`, "-S", `${dir}/haproxy-master.sock`],
      {},
      { cwd: dir },
    );
    const p = new ShippedHAProxy(dir, options.backend, master);
    await waitFor(
      () => p.snapshot().then(() => true, () => false),
      () => `HAProxy's admin socket\n${master.stderr}`,
      15_000,
      50,
    );
    return p;
  }

  /** A client of the admin socket. */
  client(timeoutMs = 2000): HAProxy {
    return new HAProxy({ path: this.adminSocket }, timeoutMs);
  }

  /** The Pid and the backend's servers in one answer (`show info;show servers state B`). */
  async snapshot(client = this.client()): Promise<Snapshot> {
    const text = await client.run(`show info;show servers state ${this.backend}`);
    const at = performance.timeOrigin + performance.now();
    const pid = Number(/^Pid: (\d+)$/m.exec(text)?.[1]);
    const start = text.search(/^1\n#/m);
    if (!Number.isInteger(pid) || start < 0) throw new Error(`unexpected answer: ${text.slice(0, 120)}`);
    this.workers.add(pid);
    return { pid, servers: parseServersState(text.slice(start)), at };
  }

  /**
   * `systemctl reload haproxy`: the config checked (`haproxy -Ws -f CFG -c -q`), then SIGUSR2 to the master.
   * Returns when the signal was sent.
   */
  async reload(): Promise<number> {
    const check = await new Deno.Command(HAPROXY, {
      args: ["-Ws", "-f", this.config, "-c", "-q", "-S", this.#masterSocket],
      cwd: this.dir,
      stdout: "null",
      stderr: "piped",
    }).output();
    if (!check.success) throw new Error(`haproxy -c failed: ${new TextDecoder().decode(check.stderr).trim()}`);
    const at = performance.timeOrigin + performance.now();
    Deno.kill(this.master.pid, "SIGUSR2");
    return at;
  }

  /** As the unit stops (KillMode=mixed): SIGTERM to the master, then SIGKILL to whatever of it is left. */
  async stop(): Promise<void> {
    this.master.kill("SIGTERM");
    await this.master.finished(5000);
    await delay(100);
    for (const pid of this.workers) {
      // only a process still running this config: the Pid may be another's by now
      const cmdline = await Deno.readTextFile(`/proc/${pid}/cmdline`).catch(() => "");
      if (cmdline.includes(this.config)) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch { /* gone */ }
      }
    }
  }
}

/**
 * The sync as units/registry-haproxy@.service starts it for service `service` (`%i`, so the backend is named
 * after it): the bundle (dist/registry.mjs) with the unit's deno flags, or, from source, registry.ts with the
 * same arguments; `args` are added to the unit's (their paths moved as the config's are).
 */
export async function startSync(
  runtime: Runtime,
  options: { service: string; dir: string; socket: string; etcd: string; args?: string[] },
): Promise<Script> {
  const vars = {
    "%i": options.service,
    "%H": hostname(),
    SECRETARY_ETCD: options.etcd,
    HAPROXY_SOCKET: options.socket,
  };
  const unit = await execStart(SYNC_UNIT, vars, `${ROOT}dist`);
  const words = [...unit, ...(options.args ?? [])].map((w) => localPath(w, options.dir));
  const bundle = words.findIndex((w) => w.endsWith("/registry.mjs"));
  if (bundle < 0) throw new Error(`${SYNC_UNIT}'s ExecStart= runs no registry.mjs`);
  const sync = runtime === "source"
    ? new Script(Deno.execPath(), ["run", "--allow-all", "registry.ts", ...words.slice(bundle + 1)])
    : new Script(words[0], words.slice(1));
  await sync.waitForLog(/^started /);
  return sync;
}

/**
 * The bundles when built and `source` is false, else the source. Bundles older than a source they are built from
 * would measure old code (or refuse a flag the unit now passes): then the source, said on stdout.
 */
export function chooseRuntime(source: boolean): Runtime {
  if (source || !bundlesBuilt()) return "source";
  if (!staleBundle()) return "deno";
  console.log("dist/registry.mjs is older than its sources: running from source (deno task bundle to run the bundles)");
  return "source";
}

/** Whether dist/registry.mjs is older than a source it is built from. */
function staleBundle(): boolean {
  try {
    const built = Deno.statSync(`${ROOT}dist/registry.mjs`).mtime!.getTime();
    const sources = ["registry.ts", ...[...Deno.readDirSync(`${ROOT}lib`)].map((e) => `lib/${e.name}`)];
    return sources.some((s) => Deno.statSync(`${ROOT}${s}`).mtime!.getTime() > built);
  } catch {
    return false;
  }
}

/** The 1-minute load average. */
export function loadAverage(): number {
  return Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]);
}
