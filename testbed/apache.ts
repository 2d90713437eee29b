/**
 * Debian's Apache httpd, as a real target, started and killed as systemd or
 * docker would (`Apache`). Deno only.
 *
 * @module
 */
import { Spawned, waitFor } from "./process.ts";
import { httpStatus } from "./targets.ts";

/** Debian's Apache httpd binary. */
export const APACHE = "/usr/sbin/apache2";
const APACHE_MODULES = "/usr/lib/apache2/modules";

/**
 * Debian's Apache httpd in the foreground (mpm_event: a parent and its worker
 * children, no `-X`) on `ip:port`, with a minimal config of its own in `dir`,
 * started as systemd starts a service (only PATH in its environment, in `/`)
 * and in its own process group, so that one kill can take the whole of it as
 * systemd's KillMode=control-group or `docker kill` does. Needs root (its
 * workers run as nobody).
 */
export class Apache {
  private constructor(
    readonly ip: string,
    readonly port: number,
    readonly dir: string,
    /** The parent process (setsid execs Apache in place: same PID). */
    readonly process: Spawned,
  ) {}

  /**
   * Writes the config and document root into `dir` (made if missing), starts
   * Apache and waits until `GET /` answers 200; throws with Apache's stderr
   * when it does not. Starting again in the same `dir` reuses it.
   */
  static async start(
    options: { ip: string; port: number; dir: string; serverName?: string; index?: string; timeoutMs?: number },
  ): Promise<Apache> {
    const { ip, port, dir } = options;
    const conf = `${dir}/httpd.conf`;
    await Deno.mkdir(`${dir}/htdocs`, { recursive: true });
    await Deno.writeTextFile(`${dir}/htdocs/index.html`, options.index ?? `<h1>apache on ${ip}:${port}</h1>\n`);
    await Deno.writeTextFile(
      conf,
      [
        `ServerRoot "${dir}"`,
        `ServerName ${options.serverName ?? ip}`,
        `Listen ${ip}:${port}`,
        `PidFile "${dir}/httpd.pid"`,
        `DefaultRuntimeDir "${dir}"`,
        `Mutex file:${dir} default`,
        `LoadModule mpm_event_module ${APACHE_MODULES}/mod_mpm_event.so`,
        `LoadModule authz_core_module ${APACHE_MODULES}/mod_authz_core.so`,
        `LoadModule dir_module ${APACHE_MODULES}/mod_dir.so`,
        "User nobody",
        "Group nogroup",
        "ErrorLog /dev/stderr",
        "LogLevel notice",
        `DocumentRoot "${dir}/htdocs"`,
        "DirectoryIndex index.html",
        `<Directory "${dir}/htdocs">`,
        "  Require all granted",
        "</Directory>",
        "",
      ].join("\n"),
    );
    // the workers run as nobody: they must be able to reach and read the document root
    for (const path of [`${dir}/..`, dir, `${dir}/htdocs`]) await Deno.chmod(path, 0o755);
    await Deno.chmod(`${dir}/htdocs/index.html`, 0o644);
    const process = new Spawned("setsid", [APACHE, "-f", conf, "-D", "FOREGROUND"], {
      env: { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin" },
      cwd: "/",
      clearEnv: true,
    });
    const apache = new Apache(ip, port, dir, process);
    let last: number | undefined;
    try {
      await waitFor(
        async () => (last = await httpStatus(ip, port)) === 200 || (!process.running && "exited"),
        `Apache on ${ip}:${port}`,
        options.timeoutMs ?? 15_000,
      );
      if (!process.running) throw new Error(`Apache on ${ip}:${port} exited`);
      const stat = await Deno.readTextFile(`/proc/${process.pid}/stat`);
      const pgid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[2]);
      if (pgid !== process.pid) throw new Error(`Apache (PID ${process.pid}) is in process group ${pgid}, not its own`);
    } catch (err) {
      await apache.killGroup();
      throw new Error(`${(err as Error).message}: last status ${last}\n${process.stderr}`);
    }
    return apache;
  }

  /** The parent's PID, which is also the process group's ID. */
  get pid(): number {
    return this.process.pid;
  }

  /** SIGKILL to the whole process group (the parent and every worker), then waits for the parent to exit. */
  async killGroup(): Promise<void> {
    if (this.process.running) { // else its group is gone; the number may be another's by now
      try {
        Deno.kill(-this.pid, "SIGKILL");
      } catch { /* already gone */ }
    }
    await this.process.finished();
  }
}
