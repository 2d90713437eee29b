/**
 * A real nginx (Debian's 1.22) for tests and benchmarks: started in the
 * foreground with its own prefix folder and config, one server on a loopback
 * address proxying to `upstream <name>`, whose block is in an included file
 * (what `registry render` writes). Never shipped.
 *
 * @module
 */
import { Spawned, waitFor } from "./process.ts";

/** The path of Debian's nginx. */
export const NGINX = "/usr/sbin/nginx";

/** One nginx; its upstream block lives in `upstreamFile`, which must exist (valid) before start. */
export class NginxProcess {
  private constructor(readonly dir: string, readonly ip: string, readonly port: number, readonly process: Spawned) {}

  /** The main config: the http context includes `conf.d/*.conf`; `/` proxies to `upstream`; `serverLines` go in its server. */
  static config(dir: string, ip: string, port: number, upstream: string, serverLines: string[] = []): string {
    return [
      "worker_processes 1;",
      `pid ${dir}/nginx.pid;`,
      `error_log ${dir}/error.log notice;`,
      "events { worker_connections 256; }",
      "http {",
      "  access_log off;",
      `  client_body_temp_path ${dir}/tmp/body;`,
      `  proxy_temp_path ${dir}/tmp/proxy;`,
      `  fastcgi_temp_path ${dir}/tmp/fastcgi;`,
      `  uwsgi_temp_path ${dir}/tmp/uwsgi;`,
      `  scgi_temp_path ${dir}/tmp/scgi;`,
      `  include ${dir}/conf.d/*.conf;`,
      "  server {",
      `    listen ${ip}:${port};`,
      ...serverLines.map((l) => `    ${l}`),
      "    location / {",
      `      proxy_pass http://${upstream};`,
      "      proxy_next_upstream error timeout http_502;",
      "      proxy_connect_timeout 1s;",
      "    }",
      "  }",
      "}",
      "",
    ].join("\n");
  }

  /** The args that address this nginx: its prefix and config. */
  static args(dir: string): string[] {
    return ["-p", dir, "-c", `${dir}/nginx.conf`];
  }

  /** Writes the config (conf.d/ must hold the upstream file already), starts nginx, waits until it listens. */
  static async start(
    options: { dir: string; ip: string; port: number; upstream: string; serverLines?: string[] },
  ): Promise<NginxProcess> {
    const { dir, ip, port, upstream, serverLines } = options;
    await Deno.mkdir(`${dir}/tmp`, { recursive: true });
    await Deno.mkdir(`${dir}/conf.d`, { recursive: true });
    await Deno.writeTextFile(`${dir}/nginx.conf`, NginxProcess.config(dir, ip, port, upstream, serverLines));
    const process = new Spawned(NGINX, [...NginxProcess.args(dir), "-g", "daemon off;"], { cwd: dir });
    const nginx = new NginxProcess(dir, ip, port, process);
    await waitFor(
      async () => {
        if (!process.running) throw new Error(`nginx exited:\n${process.stderr}`);
        try {
          const conn = await Deno.connect({ hostname: ip, port });
          conn.close();
          return true;
        } catch {
          return false;
        }
      },
      `nginx listening on ${ip}:${port}`,
      15_000,
      50,
    );
    return nginx;
  }

  /** Its error log so far ("" before there is one). */
  errorLog(): Promise<string> {
    return Deno.readTextFile(`${this.dir}/error.log`).catch(() => "");
  }

  /**
   * How many times it has reloaded: its error log's "reconfiguring" lines, the master's own (the line of the
   * SIGHUP's receipt, "signal 1 (SIGHUP) received from …, reconfiguring", is not counted: it would count each twice).
   */
  async reloads(): Promise<number> {
    return (await this.errorLog()).split("\n").filter((l) => /: reconfiguring$/.test(l)).length;
  }

  /** How many worker processes it has started (one at its start and at each reload, with `worker_processes 1`). */
  async workersStarted(): Promise<number> {
    return (await this.errorLog()).split("\n").filter((l) => l.includes("start worker process")).length;
  }

  /** SIGTERM: nginx's fast shutdown, which ends its workers too (a SIGKILL would leave them behind). */
  async stop(): Promise<void> {
    await this.process.stop("SIGTERM", 10_000);
  }
}
