/**
 * A real HAProxy (Debian's 2.6) for tests and benchmarks: started in the
 * foreground with a config of its own in its own folder, one frontend on a
 * loopback address, one backend with no servers (or the shipped example's
 * config, `exampleConfig()`, with its slots and state file), and two stats
 * sockets (admin and operator level). `reload()` does what
 * `systemctl reload haproxy` does: a new process takes over the listening
 * sockets and the old one finishes what it serves (`-sf`). Never shipped.
 *
 * @module
 */
import { HAProxy } from "../lib/haproxy.ts";
import { ROOT, Spawned, waitFor } from "./process.ts";

/** The path of Debian's HAProxy. */
export const HAPROXY = "/usr/sbin/haproxy";

/** The shipped example config. */
export const EXAMPLE_CONFIG = `${ROOT}units/examples/haproxy/haproxy.cfg`;

/** What the frontend does with a request whose server just died: retried on another, as the example config says. */
export const RETRY_SETTINGS = [
  "retries 3",
  "option redispatch 1",
  "retry-on conn-failure empty-response response-timeout",
];

/** Where the process is, and what it serves. */
export interface HAProxyOptions {
  dir: string;
  ip: string;
  port: number;
  backend: string;
  backendLines?: string[];
  /** The whole config (e.g. exampleConfig()), instead of haproxyConfig()'s. */
  config?: string;
}

/** The config: `stats socket` at admin and operator level, the frontend, the empty backend. */
export function haproxyConfig(
  options: { dir: string; ip: string; port: number; backend: string; backendLines?: string[] },
): string {
  return [
    "global",
    `  stats socket ${options.dir}/admin.sock mode 600 level admin expose-fd listeners`,
    `  stats socket ${options.dir}/operator.sock mode 600 level operator`,
    "  stats timeout 10s",
    `  pidfile ${options.dir}/haproxy.pid`,
    "defaults",
    "  mode http",
    "  timeout connect 1s",
    "  timeout client 30s",
    "  timeout server 3s", // as units/examples/haproxy/haproxy.cfg
    ...RETRY_SETTINGS.map((l) => `  ${l}`),
    "frontend web",
    `  bind ${options.ip}:${options.port}`,
    `  default_backend ${options.backend}`,
    `backend ${options.backend}`,
    "  balance roundrobin",
    ...(options.backendLines ?? []).map((l) => `  ${l}`),
    "",
  ].join("\n");
}

/**
 * The shipped example config, run from `dir`: its admin socket and state
 * files there, its frontend on `ip:port`, its backend named `backend`, an
 * operator-level socket added; `slots` servers in its template when given.
 */
export async function exampleConfig(
  options: { dir: string; ip: string; port: number; backend: string; slots?: number },
): Promise<string> {
  const text = await Deno.readTextFile(EXAMPLE_CONFIG);
  const replace = (from: string | RegExp, to: string, t: string) => {
    const out = t.replace(from, to);
    if (out === t) throw new Error(`${EXAMPLE_CONFIG} has no ${from}: update testbed/haproxy.ts`);
    return out;
  };
  let config = replace(
    /^(\s*stats socket )\/run\/haproxy\/admin\.sock mode 660 (.*)$/m,
    `$1${options.dir}/admin.sock mode 600 $2\n$1${options.dir}/operator.sock mode 600 level operator\n\tpidfile ${options.dir}/haproxy.pid`,
    text,
  );
  config = replace(/^(\s*server-state-base ).*$/m, `$1${options.dir}`, config);
  config = replace(/^(\s*bind ):80$/m, `$1${options.ip}:${options.port}`, config);
  config = replace(/(default_backend |^backend )apache$/gm, `$1${options.backend}`, config);
  if (options.slots !== undefined) config = replace(/(server-template slot )1-\d+/, `$11-${options.slots}`, config);
  return config;
}

/** One HAProxy process; `restart()` starts a new one on the same config (its run-time servers gone). */
export class HAProxyProcess {
  #process: Spawned;

  private constructor(readonly dir: string, readonly ip: string, readonly port: number, process: Spawned) {
    this.#process = process;
  }

  /** Writes the config into `dir`, starts HAProxy, and waits until its admin socket answers. */
  static async start(options: HAProxyOptions): Promise<HAProxyProcess> {
    await Deno.mkdir(options.dir, { recursive: true });
    await Deno.writeTextFile(`${options.dir}/haproxy.cfg`, options.config ?? haproxyConfig(options));
    const p = new HAProxyProcess(options.dir, options.ip, options.port, HAProxyProcess.#spawn(options.dir));
    await p.#ready();
    return p;
  }

  static #spawn(dir: string, more: string[] = []): Spawned {
    return new Spawned(HAPROXY, ["-f", `${dir}/haproxy.cfg`, "-db", ...more], { cwd: dir });
  }

  /** Waits until the admin socket answers, from `pid` when given. */
  async #ready(pid?: number): Promise<void> {
    const admin = new HAProxy({ path: this.adminSocket }, 1000);
    await waitFor(
      () => admin.process().then((p) => pid === undefined || p.pid === pid, () => false),
      `HAProxy's admin socket\n${this.#process.stderr}`,
      15_000,
      50,
    );
  }

  get adminSocket(): string {
    return `${this.dir}/admin.sock`;
  }

  get operatorSocket(): string {
    return `${this.dir}/operator.sock`;
  }

  get pid(): number {
    return this.#process.pid;
  }

  get stderr(): string {
    return this.#process.stderr;
  }

  /** A client of its admin socket. */
  client(): HAProxy {
    return new HAProxy({ path: this.adminSocket });
  }

  /** Kills it (SIGKILL by default) and starts a new process on the same config. */
  async restart(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    await this.stop(signal);
    this.#process = HAProxyProcess.#spawn(this.dir);
    await this.#ready();
  }

  /**
   * Reloads it as `systemctl reload haproxy` does: a new process on the same
   * config (state files loaded) takes the listening sockets over from the old
   * one (`-x`, through the admin socket's `expose-fd listeners`), which
   * finishes its connections and exits (`-sf`). Resolves once the new one
   * answers on the admin socket; the old one's exit is awaited.
   */
  async reload(): Promise<void> {
    const old = this.#process;
    this.#process = HAProxyProcess.#spawn(this.dir, ["-sf", String(old.pid), "-x", this.adminSocket]);
    await this.#ready(this.#process.pid);
    await old.finished(30_000);
  }

  async stop(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    await this.#process.stop(signal);
  }
}
