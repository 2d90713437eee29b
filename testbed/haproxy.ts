/**
 * A real HAProxy (Debian's 2.6) for tests and benchmarks: started in the
 * foreground with a config of its own in its own folder, one frontend on a
 * loopback address, one backend with no servers, and two stats sockets (admin
 * and operator level). Never shipped.
 *
 * @module
 */
import { HAProxy } from "../lib/haproxy.ts";
import { Script, waitFor } from "./testbed.ts";

/** The path of Debian's HAProxy. */
export const HAPROXY = "/usr/sbin/haproxy";

/** What the frontend does with a request whose server just died: retried on another, as the example config says. */
export const RETRY_SETTINGS = [
  "retries 3",
  "option redispatch 1",
  "retry-on conn-failure empty-response response-timeout",
];

/** The config: `stats socket` at admin and operator level, the frontend, the empty backend. */
export function haproxyConfig(
  options: { dir: string; ip: string; port: number; backend: string; backendLines?: string[] },
): string {
  return [
    "global",
    `  stats socket ${options.dir}/admin.sock mode 600 level admin`,
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

/** One HAProxy process; `restart()` starts a new one on the same config (its run-time servers gone). */
export class HAProxyProcess {
  #process: Script;

  private constructor(readonly dir: string, readonly ip: string, readonly port: number, process: Script) {
    this.#process = process;
  }

  /** Writes the config into `dir`, starts HAProxy, and waits until its admin socket answers. */
  static async start(
    options: { dir: string; ip: string; port: number; backend: string; backendLines?: string[] },
  ): Promise<HAProxyProcess> {
    await Deno.mkdir(options.dir, { recursive: true });
    await Deno.writeTextFile(`${options.dir}/haproxy.cfg`, haproxyConfig(options));
    const p = new HAProxyProcess(options.dir, options.ip, options.port, HAProxyProcess.#spawn(options.dir));
    await p.#ready();
    return p;
  }

  static #spawn(dir: string): Script {
    return new Script(HAPROXY, ["-f", `${dir}/haproxy.cfg`, "-db"], {}, { cwd: dir });
  }

  async #ready(): Promise<void> {
    const admin = new HAProxy({ path: this.adminSocket }, 1000);
    await waitFor(
      () => admin.process().then(() => true, () => false),
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

  async stop(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    await this.#process.stop(signal);
  }
}
