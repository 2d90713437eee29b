/**
 * etcd's gRPC proxy (`etcd grpc-proxy start`, in Debian's etcd package) for
 * tests and benchmarks: one process on an address and port of the caller's,
 * in front of a cluster's members, with its own data directory. Clients
 * (lib/etcd.ts's Etcd) connect to `url` as to a member. `restart()` starts a
 * new process on the same address, as systemd restarts a killed one. Stopped
 * by PID, never by name. Never shipped.
 *
 * @module
 */
import { Etcd } from "../lib/etcd.ts";
import { currentRevision } from "./etcd.ts";
import { freePort, Restartable, waitFor } from "./process.ts";

/** One `etcd grpc-proxy start` process at a time. */
export class GrpcProxy extends Restartable {
  private constructor(
    readonly endpoints: string[],
    readonly host: string,
    readonly port: number,
    readonly dataDir: string,
  ) {
    super();
  }

  /**
   * Starts a proxy for `endpoints` (members' client URLs) on `host` (a port
   * the kernel picks unless `port` is given) and waits until a read through
   * it succeeds.
   */
  static async start(endpoints: string[], host: string, options: { port?: number } = {}): Promise<GrpcProxy> {
    const dataDir = await Deno.makeTempDir({ prefix: "secretary-grpc-proxy-" });
    const proxy = new GrpcProxy(endpoints, host, options.port ?? await freePort(host), dataDir);
    try {
      await proxy.#start();
    } catch (err) {
      await proxy.stop();
      throw err;
    }
    return proxy;
  }

  /** The URL clients are given instead of the members'. */
  get url(): string {
    return `http://${this.host}:${this.port}`;
  }

  async #start(): Promise<void> {
    this.spawn("etcd", [
      "grpc-proxy",
      "start",
      // host:port, as the proxy's client takes them
      `--endpoints=${this.endpoints.map((e) => new URL(e).host).join(",")}`,
      `--listen-addr=${this.host}:${this.port}`,
      `--advertise-client-url=${this.host}:${this.port}`,
      `--data-dir=${this.dataDir}`,
    ]);
    await waitFor(
      async () => {
        const etcd = new Etcd({ endpoints: [this.url], callTimeoutMs: 1000 });
        try {
          await currentRevision(etcd);
          return true;
        } catch {
          return false;
        } finally {
          etcd.close();
        }
      },
      `etcd grpc-proxy at ${this.url}\n${this.log.slice(-2000)}`,
      20_000,
      100,
    );
  }

  /** Kills the process (SIGKILL by default) and waits for it to exit, however long that takes. */
  kill(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    return this.halt(signal);
  }

  /** Starts a new process on the same address and port; waits until it answers. */
  async restart(): Promise<void> {
    await this.kill();
    await this.#start();
  }

  /** Kills the process and removes its data directory. */
  async stop(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    await this.kill(signal);
    await Deno.remove(this.dataDir, { recursive: true }).catch(() => {});
  }
}
