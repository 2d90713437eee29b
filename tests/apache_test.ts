/**
 * The article's scenario end to end, on the real Apache httpd from Debian:
 * two "hosts", 127.B.1.2 with apache@8080 and 127.B.1.3 with apache@8081
 * (B: this file's loopback block),
 * each with its secretary started exactly as the installed unit's ExecStart
 * starts it (the unit file read, its specifiers and variables expanded as
 * systemd expands them, the environment systemd gives a service), the
 * bundles installed by install.sh into a scratch root.
 *
 * Then, as in the article: `registry ls apache` lists both; apache@8080 is
 * stopped as systemd stops it (the secretary first, then Apache), after which
 * `ls` lists only 8081 and `get` of 8080 says `Key not found`; and Apache on
 * the other host is killed outright, its record gone once its connections
 * close (how soon is a benchmark's figure: bench/killed.ts).
 */
import assert from "node:assert/strict";
import { type Etcd } from "../lib/etcd.ts";
import { decodeEntry, instanceKey } from "../lib/record.ts";
import {
  Apache,
  type EtcdCluster,
  EVENT_MS,
  httpStatus,
  loopback,
  READY_MS,
  ROOT,
  Script,
  waitFor,
} from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);

/** What systemd puts in every service's environment besides Environment= and EnvironmentFile=. */
const SYSTEMD_ENV = {
  PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
  LANG: "C.UTF-8",
  INVOCATION_ID: "5f0c3b1e2d4a4c6e8f0a1b2c3d4e5f60",
  JOURNAL_STREAM: "8:40017",
};

// ---------------------------------------------------------------------------
// systemd, as far as these units need it

/** A unit file's settings: section → key → values in order. */
function parseUnit(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let current = new Map<string, string[]>();
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const section = /^\[(.+)\]$/.exec(line);
    if (section) sections.set(section[1], current = new Map());
    else {
      const eq = line.indexOf("=");
      current.set(line.slice(0, eq), [...(current.get(line.slice(0, eq)) ?? []), line.slice(eq + 1)]);
    }
  }
  return sections;
}

/** `KEY=value` lines of an environment file (comments, blank lines and quotes as systemd reads them). */
function parseEnvironmentFile(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const match = /^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*?)\s*$/.exec(line);
    if (match) env[match[1]] = match[2].replace(/^(["'])(.*)\1$/, "$2");
  }
  return env;
}

/**
 * The command line and environment systemd would run for a unit's ExecStart=:
 * specifiers (`%i`, `%H`, `%C`, `%%`), then Environment=, then EnvironmentFile=
 * (later files win), then `${VAR}` in the command. Anything else (quotes,
 * `$VAR` word splitting, unknown specifiers) throws rather than guess.
 */
async function execStart(
  unitText: string,
  specifiers: { i: string; H: string; C: string },
  files: (path: string) => string,
): Promise<{ argv: string[]; env: Record<string, string> }> {
  const unit = parseUnit(unitText);
  const service = unit.get("Service")!;
  const expand = (text: string) =>
    text.replace(/%(.)/g, (_, c: string) => {
      if (c === "%") return "%";
      if (c === "i" || c === "H" || c === "C") return specifiers[c];
      throw new Error(`specifier %${c} is not known to this test`);
    });
  const env: Record<string, string> = { ...SYSTEMD_ENV };
  for (const assignment of service.get("Environment") ?? []) {
    const [key, ...value] = expand(assignment).split("=");
    env[key] = value.join("=");
  }
  for (const path of service.get("EnvironmentFile") ?? []) {
    const optional = path.startsWith("-");
    const file = files(expand(path.replace(/^-/, "")));
    try {
      Object.assign(env, parseEnvironmentFile(await Deno.readTextFile(file)));
    } catch (err) {
      if (!optional) throw err;
    }
  }
  const [line, ...more] = service.get("ExecStart") ?? [];
  assert.ok(line && more.length === 0, "one ExecStart=");
  if (/["'\\]|\$[A-Za-z_]/.test(line)) throw new Error(`ExecStart= uses syntax this test does not expand: ${line}`);
  const argv = expand(line).trim().split(/\s+/).map((word) =>
    word.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_, name: string) => env[name] ?? "")
  );
  return { argv, env };
}

// ---------------------------------------------------------------------------
// processes

/** A process started as systemd starts one: only the environment given, in `/`. */
function proc(argv: string[], env: Record<string, string>): Script {
  return new Script(argv[0], argv.slice(1), env, { cwd: "/", clearEnv: true });
}

/** One of the article's hosts: its address, its /etc/environment, its Apache and its secretary. */
class Host {
  apache?: Apache;
  secretary?: Script;

  constructor(
    readonly name: string,
    readonly ip: string,
    readonly port: number,
    readonly dir: string,
  ) {}

  get key(): string {
    return instanceKey("/services", "apache", this.ip, this.port);
  }

  /** The host's /etc/environment, as CoreOS writes it, plus where etcd is. */
  async writeEnvironment(etcdHostPort: string): Promise<void> {
    await Deno.writeTextFile(
      `${this.dir}/environment`,
      `COREOS_PUBLIC_IPV4=${this.ip}\nCOREOS_PRIVATE_IPV4=${this.ip}\nSECRETARY_ETCD=${etcdHostPort}\n`,
    );
  }

  /**
   * Apache in the foreground with a minimal config of this test's own, in
   * its own process group, so "killed outright" can kill the whole of it as
   * `docker kill` kills a container.
   */
  async startApache(): Promise<void> {
    this.apache = await Apache.start({
      ip: this.ip,
      port: this.port,
      dir: this.dir,
      serverName: this.name,
      index: `<h1>apache@${this.port} on ${this.name}</h1>\n`,
    });
  }

  /** The secretary, as apache-secretary@<port>.service's ExecStart starts it on this host. */
  async startSecretary(scratchRoot: string): Promise<void> {
    const unit = await Deno.readTextFile(`${scratchRoot}/etc/systemd/system/apache-secretary@.service`);
    const { argv, env } = await execStart(
      unit,
      // %C: the cache root (/var/cache for a system unit), inside the scratch root here
      { i: String(this.port), H: this.name, C: `${scratchRoot}/var/cache` },
      (path) => path === "/etc/environment" ? `${this.dir}/environment` : `${scratchRoot}${path}`,
    );
    // the unit's binaries are the ones install.sh put in the scratch root
    const inRoot = argv.map((word) => word.startsWith("/opt/bin/") ? `${scratchRoot}${word}` : word);
    this.secretary = proc(inRoot, env);
  }

  /** Kills whatever still runs, by PID (Apache by its process group); for cleanup. */
  async stopAll(): Promise<void> {
    if (this.secretary?.running) this.secretary.kill("SIGKILL");
    await Promise.all([this.secretary?.finished(), this.apache?.killGroup()]);
  }
}

/** Runs the installed `registry` command, as a person on any host would. */
async function registry(scratchRoot: string, etcdHostPort: string, args: string[]) {
  const out = await new Deno.Command(`${scratchRoot}/opt/bin/registry`, {
    args,
    env: { PATH: SYSTEMD_ENV.PATH, SECRETARY_ETCD: etcdHostPort, NO_COLOR: "1" },
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

/** The ADDRESS column of `registry ls apache`. */
async function listed(scratchRoot: string, etcdHostPort: string): Promise<string[]> {
  const ls = await registry(scratchRoot, etcdHostPort, ["ls", "apache"]);
  assert.equal(ls.code, 0, ls.stderr);
  return ls.stdout.trimEnd().split("\n").slice(1).map((row) => row.split(/\s+/)[1]);
}

function portTaken(ip: string, port: number): boolean {
  try {
    Deno.listen({ hostname: ip, port }).close();
    return false;
  } catch {
    return true;
  }
}

// ---------------------------------------------------------------------------

Deno.test({
  name:
    "the article on real Apache: two hosts listed; one stopped as systemd stops it, then gone; the other killed, gone as its connections close",
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "secretary-apache-" });
    const hostA = new Host("host-a", lo.ip(2), 8080, `${dir}/host-a`);
    const hostB = new Host("host-b", lo.ip(3), 8081, `${dir}/host-b`);
    const hosts = [hostA, hostB];
    let cluster: EtcdCluster | undefined;
    let etcd: Etcd | undefined;
    try {
      for (const h of hosts) {
        assert.ok(!portTaken(h.ip, h.port), `${h.ip}:${h.port} is taken: the article's ports are needed`);
        await Deno.mkdir(h.dir, { recursive: true });
      }
      // the host install: fresh bundles, then install.sh into a scratch root
      const root = `${dir}/root`;
      const build = await new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-all", `${ROOT}build.ts`, "--out", `${dir}/dist`, "--quiet"],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.ok(build.success, new TextDecoder().decode(build.stderr));
      const install = await new Deno.Command(`${ROOT}install.sh`, {
        args: ["--root", root, "--from", `${dir}/dist`],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.ok(install.success, new TextDecoder().decode(install.stderr));

      cluster = await lo.etcd(1);
      await cluster.start();
      etcd = cluster.client();
      const etcdHostPort = new URL(cluster.endpoints[0]).host;

      // systemctl start apache@8080 / apache@8081: Apache, then (Before=) its secretary
      for (const h of hosts) {
        await h.writeEnvironment(etcdHostPort);
        await h.startApache();
        await h.startSecretary(root);
      }
      const both = [`${hostA.ip}:${hostA.port}`, `${hostB.ip}:${hostB.port}`];
      await waitFor(
        async () => JSON.stringify(await listed(root, etcdHostPort)) === JSON.stringify(both),
        () => `registry ls apache listing both\n${hostA.secretary!.stderr}\n${hostB.secretary!.stderr}`,
        READY_MS,
        200,
      );
      for (const h of hosts) {
        const value: string = (await etcd.get(h.key))!.value;
        const record = decodeEntry("/services", h.key, value).record!;
        assert.deepEqual([record.host, record.ipv4_addr, record.port], [h.name, h.ip, h.port]);
        // under systemd (JOURNAL_STREAM set) the log lines carry journald priorities
        await h.secretary!.waitForLog(new RegExp(`^<5>registered key=${h.key.replaceAll(".", "\\.")} `));
      }

      // systemctl stop apache@8080: the secretary first (it is ordered After= Apache), then Apache
      hostA.secretary!.kill("SIGTERM");
      assert.equal((await hostA.secretary!.finished()).code, 0, hostA.secretary!.stderr);
      assert.equal(await etcd.get(hostA.key), undefined, "the record outlived the secretary");
      assert.equal(await httpStatus(hostA.ip, hostA.port), 200, "Apache still answers: the record went first");
      hostA.apache!.process.kill("SIGTERM"); // docker stop
      assert.equal((await hostA.apache!.process.finished()).success, true, hostA.apache!.process.stderr);

      assert.deepEqual(await listed(root, etcdHostPort), [`${hostB.ip}:${hostB.port}`]);
      const get = await registry(root, etcdHostPort, ["get", "apache", `${hostA.ip}:${hostA.port}`]);
      assert.equal(get.code, 1);
      assert.equal(get.stderr, `registry: Key not found (${hostA.key})\n`);
      const getB = await registry(root, etcdHostPort, ["get", "apache", `${hostB.ip}:${hostB.port}`]);
      assert.equal(getB.code, 0, getB.stderr);
      assert.equal(JSON.parse(getB.stdout).host, "host-b");

      // Apache on host-b killed outright, the whole process group (docker kill): no goodbye
      await hostB.apache!.killGroup();
      await waitFor(
        async () => (await etcd!.get(hostB.key)) === undefined,
        () => `host-b's record gone\n${hostB.secretary!.stderr}`,
        EVENT_MS,
        20,
      );
      // the line may still be in the pipe when etcd already shows the delete
      await hostB.secretary!.waitForLog(
        new RegExp(`^<5>deregistered key=${hostB.key.replaceAll(".", "\\.")} reason=ECONNREFUSED`),
      );
      // the connection watch saw Apache's sockets close first, rather than a check at its next interval
      const lines = hostB.secretary!.stderr.split("\n");
      const closed = lines.findIndex((l) => /^<7>watch connection closed /.test(l));
      assert.ok(closed !== -1 && closed < lines.findIndex((l) => /^<5>deregistered /.test(l)), hostB.secretary!.stderr);
      assert.ok(hostB.secretary!.running, "the secretary stays, to register Apache again when it is back");
      assert.deepEqual(await listed(root, etcdHostPort), []);
      for (const h of hosts) assert.doesNotMatch(h.secretary!.stderr, /NotCapable|Requires \w+ access|<3>/);
    } finally {
      await Promise.all(hosts.map((h) => h.stopAll()));
      etcd?.close();
      await cluster?.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
