/**
 * The proxy units on a secure etcd, run as a host runs them: `install.sh
 * --root --tls --auth` with freshly built bundles, then each consumer unit's
 * own ExecStart as its installed `tls.conf` drop-in replaces it, with the
 * unit's `Environment=`, the TLS settings an operator puts in
 * /etc/environment, and the `ETCDCTL_USER` of the file that the installed
 * `auth.conf` drop-in names, against an etcd that takes only client
 * certificates and authenticated users: `registry-haproxy@` puts a server in
 * a real HAProxy's backend, `registry-nginx@` renders the upstream file and
 * reloads a real nginx. Without its drop-in, each unit exits 2 with one line.
 * And under `registry-nginx@`'s `--allow-run=/usr/sbin/nginx`, a hung
 * `nginx -t` is still killed at the check's timeout.
 */
import assert from "node:assert/strict";
import { Etcd } from "../lib/etcd.ts";
import { encodeRecord, instanceKey } from "../lib/record.ts";
import { HAProxyProcess } from "../testbed/haproxy.ts";
import { NGINX, NginxProcess } from "../testbed/nginx.ts";
import {
  bundles,
  type Certs,
  clientCertOptions,
  enableAuth,
  EtcdCluster,
  EVENT_MS,
  execStart,
  loopback,
  makeCerts,
  READY_MS,
  ROOT,
  Script,
  TEST_CALL_TIMEOUT_MS,
  TestServer,
  unitEnvironment,
  waitFor,
} from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);

const UNITS = "etc/systemd/system";
const PASSWORD = "s3cret-Pw";
const PATH = "/usr/sbin:/usr/bin:/bin";

/** A root as `install.sh --root ROOT --tls --auth` leaves it, the etcd user's file in place first (mode 0600). */
let installedRoot: Promise<string> | undefined;
function installedSecure(): Promise<string> {
  installedRoot ??= (async () => {
    const root = await Deno.makeTempDir({ prefix: "secretary-secure-root-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(root, { recursive: true }));
    await Deno.mkdir(`${root}/etc/secretary`, { recursive: true, mode: 0o700 });
    await Deno.writeTextFile(`${root}/etc/secretary/etcd-user`, `ETCDCTL_USER=root:${PASSWORD}\n`, { mode: 0o600 });
    const out = await new Deno.Command(`${ROOT}install.sh`, {
      args: ["--root", root, "--from", await bundles(), "--tls", "--auth"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) throw new Error(`install.sh failed:\n${new TextDecoder().decode(out.stderr)}`);
    return root;
  })();
  return installedRoot;
}

/** The variables of the files a unit's `EnvironmentFile=` lines name in `file` (paths inside `root`), as systemd reads them. */
async function environmentFiles(root: string, file: string): Promise<Record<string, string>> {
  const env: Record<string, string> = {};
  for (const [, path] of (await Deno.readTextFile(file)).matchAll(/^EnvironmentFile=(\/\S+)$/gm)) {
    for (const [, k, v] of (await Deno.readTextFile(`${root}${path}`)).matchAll(/^([A-Za-z_]\w*)=(.*)$/gm)) env[k] = v;
  }
  return env;
}

/** A TLS etcd (client certificates required) with authentication on, user root; the test's own patient client. */
interface SecureEtcd {
  cluster: EtcdCluster;
  certs: Certs;
  etcd: Etcd;
  /** What an operator puts in /etc/environment for it. */
  environment: Record<string, string>;
  close(): Promise<void>;
}

async function secureEtcd(): Promise<SecureEtcd> {
  const host = lo.etcdHost();
  const certs = await makeCerts([host]);
  const tls = { cacert: certs.ca, cert: certs.clientCert, key: certs.clientKey };
  const cluster = await EtcdCluster.create(1, clientCertOptions(host, certs));
  await cluster.start();
  const endpoint = cluster.endpoints[0];
  await enableAuth(endpoint, PASSWORD, certs);
  // each authentication costs etcd a bcrypt, slow on a loaded machine: a patient client
  const etcd = new Etcd({
    endpoints: [endpoint],
    ...tls,
    user: { name: "root", password: PASSWORD },
    callTimeoutMs: TEST_CALL_TIMEOUT_MS,
  });
  return {
    cluster,
    certs,
    etcd,
    environment: {
      ETCDCTL_ENDPOINTS: endpoint,
      SECRETARY_ETCD: new URL(endpoint).host,
      ETCDCTL_CACERT: certs.ca,
      ETCDCTL_CERT: certs.clientCert,
      ETCDCTL_KEY: certs.clientKey,
    },
    async close() {
      etcd.close();
      await cluster.stop();
      await Deno.remove(certs.dir, { recursive: true });
    },
  };
}

/** Puts a record for `ip:port` of service apache under a lease of its own, as a secretary would. */
async function register(etcd: Etcd, ip: string, port: number): Promise<void> {
  const lease = await etcd.grantLease(60);
  const record = {
    host: "proxy-test",
    ipv4_addr: ip,
    port,
    service: "apache",
    registered_at: new Date().toISOString(),
    meta: {},
  };
  await etcd.putIfAbsent(instanceKey("/services", "apache", ip, port), encodeRecord(record), lease);
}

/**
 * The installed `unit` started as systemd starts it with its drop-ins: the last ExecStart (the tls.conf drop-in's
 * when `dropIn`), the unit's Environment= (%C in `dir`), then /etc/environment's `environment`, then the files of
 * the installed auth.conf's EnvironmentFile=; each word passed through `rewrite` (the test's own paths).
 */
async function startUnit(
  root: string,
  unit: string,
  options: {
    dropIn: boolean;
    vars: Record<string, string>;
    environment: Record<string, string>;
    dir: string;
    rewrite?: (word: string) => string;
  },
): Promise<Script> {
  const units = `${root}/${UNITS}`;
  const file = options.dropIn ? `${units}/${unit}.d/tls.conf` : `${units}/${unit}`;
  const argv = (await execStart(file, options.vars, `${root}/opt/bin`)).map(options.rewrite ?? ((w) => w));
  const env = await unitEnvironment(`${units}/${unit}`);
  for (const [k, v] of Object.entries(env)) env[k] = v.replaceAll("%C", `${options.dir}/cache`);
  const auth = await environmentFiles(root, `${units}/${unit}.d/auth.conf`);
  return new Script(argv[0], argv.slice(1), { ...env, ...options.environment, ...auth, PATH }, {
    clearEnv: true,
    cwd: options.dir,
  });
}

/** Without its TLS drop-in, the unit refuses the TLS environment at once: exit 2, one line. */
async function assertRefusedWithoutDropIn(p: Script): Promise<void> {
  const status = await p.finished(READY_MS);
  assert.equal(status.code, 2, p.stderr);
  assert.match(
    p.stderr,
    /^registry: Cannot use TLS files with endpoints "http:\/\/[^"]+": expected https:\/\/ endpoints\n$/,
  );
}

function assertNoRefusals(p: Script): void {
  assert.doesNotMatch(p.stderr, /NotCapable|Requires \w+ access|cannot be looked at/, p.stderr);
  assert.doesNotMatch(p.stderr, /reason=.*(auth|password|permission|certif|CERT|TLS|SSL)/i, p.stderr);
  assert.doesNotMatch(p.stderr, new RegExp(PASSWORD), "the password is printed");
}

Deno.test("registry-haproxy@ over TLS with authentication: the installed unit with its tls.conf and auth.conf drop-ins fills the backend", async () => {
  const root = await installedSecure();
  const dir = await Deno.makeTempDir({ prefix: "secretary-consumer-haproxy-" });
  const secure = await secureEtcd();
  const haproxy = await HAProxyProcess.start({ dir: `${dir}/haproxy`, ip: lo.ip(1), port: 8000, backend: "apache" });
  const target = await TestServer.start(lo.ip(2));
  const scripts: Script[] = [];
  try {
    // the folder of HAProxy's server-state files, if the unit names one (--state-file), moved into this test's
    await Deno.mkdir(`${dir}/var/lib/haproxy/server-state`, { recursive: true });
    const options = {
      vars: { ...secure.environment, HAPROXY_SOCKET: haproxy.adminSocket, "%i": "apache" },
      environment: { ...secure.environment, HAPROXY_SOCKET: haproxy.adminSocket },
      dir,
      rewrite: (word: string) => word.replaceAll("/var/lib/haproxy/", `${dir}/var/lib/haproxy/`),
    };
    const unit = "registry-haproxy@.service";
    const alone = await startUnit(root, unit, { ...options, dropIn: false });
    scripts.push(alone);
    await assertRefusedWithoutDropIn(alone);

    const sync = await startUnit(root, unit, { ...options, dropIn: true });
    scripts.push(sync);
    await register(secure.etcd, target.host, target.port);
    const name = `${target.host}:${target.port}`;
    await waitFor(
      async () => (await haproxy.client().servers("apache")).some((s) => s.name === name && !s.maint),
      () => `${name} in HAProxy's backend, through the unit's sync over TLS with a user:\n${sync.stderr}`,
      READY_MS,
      100,
    );
    const words = await execStart(`${root}/${UNITS}/${unit}.d/tls.conf`, options.vars, `${root}/opt/bin`);
    const stateFile = words[words.indexOf("--state-file") + 1];
    if (words.includes("--state-file")) {
      await waitFor(
        () => Deno.stat(options.rewrite(stateFile)).then(() => true, () => false),
        () => `the state file ${stateFile} written:\n${sync.stderr}`,
        EVENT_MS,
      );
    }
    assertNoRefusals(sync);
    assert.doesNotMatch(sync.stderr, /state file not written/, sync.stderr);
    sync.kill("SIGTERM");
    assert.equal((await sync.finished(EVENT_MS)).code, 0, sync.stderr);
  } finally {
    for (const s of scripts) await s.stop();
    await target.close();
    await haproxy.stop();
    await secure.close();
    await Deno.remove(dir, { recursive: true });
  }
});

/** A folder with the nginx unit's paths (/etc/nginx/…) moved into it and a running nginx that includes conf.d. */
async function nginxHost(dir: string): Promise<{ nginx: NginxProcess; rewrite: (word: string) => string }> {
  const nginxDir = `${dir}/nginx`;
  await Deno.mkdir(`${nginxDir}/conf.d`, { recursive: true });
  await Deno.mkdir(`${dir}/secretary`);
  await Deno.copyFile(
    `${ROOT}units/examples/nginx/apache-upstream.conf.tmpl`,
    `${dir}/secretary/apache-upstream.conf.tmpl`,
  );
  // nginx refuses an empty upstream: the placeholder the template renders for no instance
  await Deno.writeTextFile(`${nginxDir}/conf.d/apache-upstream.conf`, "upstream apache { server 127.0.0.1:9 down; }\n");
  const nginx = await NginxProcess.start({ dir: nginxDir, ip: lo.ip(1), port: 8001, upstream: "apache" });
  const own = `${NGINX} ${NginxProcess.args(nginxDir).join(" ")}`;
  const rewrite = (word: string) =>
    word.replaceAll("/etc/nginx/conf.d", `${nginxDir}/conf.d`).replaceAll("/etc/nginx/", `${dir}/`)
      .replace(/^\/usr\/sbin\/nginx (-t -q|-s reload)$/, `${own} $1`);
  return { nginx, rewrite };
}

Deno.test("registry-nginx@ over TLS with authentication: the installed unit with its tls.conf and auth.conf drop-ins renders and reloads", async () => {
  const root = await installedSecure();
  const dir = await Deno.makeTempDir({ prefix: "secretary-consumer-nginx-" });
  const secure = await secureEtcd();
  const { nginx, rewrite } = await nginxHost(dir);
  const target = await TestServer.start(lo.ip(3));
  const scripts: Script[] = [];
  try {
    const options = {
      vars: { ...secure.environment, "%i": "apache" },
      environment: secure.environment,
      dir,
      rewrite,
    };
    const unit = "registry-nginx@.service";
    const alone = await startUnit(root, unit, { ...options, dropIn: false });
    scripts.push(alone);
    await assertRefusedWithoutDropIn(alone);

    const render = await startUnit(root, unit, { ...options, dropIn: true });
    scripts.push(render);
    await render.waitForLog(/^started /, READY_MS);
    const reloads = await nginx.reloads();
    await register(secure.etcd, target.host, target.port);
    const out = `${dir}/nginx/conf.d/apache-upstream.conf`;
    await waitFor(
      async () => (await Deno.readTextFile(out)).includes(`server ${target.host}:${target.port}`),
      () => `${target.host}:${target.port} rendered into ${out} by the unit over TLS with a user:\n${render.stderr}`,
      READY_MS,
      100,
    );
    await waitFor(async () => (await nginx.reloads()) > reloads, "nginx reloaded by the unit's command", EVENT_MS);
    assertNoRefusals(render);
    assert.doesNotMatch(render.stderr, /check failed|reload failed/, render.stderr);
    render.kill("SIGTERM");
    assert.equal((await render.finished(EVENT_MS)).code, 0, render.stderr);
  } finally {
    for (const s of scripts) await s.stop();
    await target.close();
    await nginx.stop();
    await secure.close();
    await Deno.remove(dir, { recursive: true });
  }
});

/** The PIDs of the processes whose parent is `pid`, with their command name. */
async function children(pid: number): Promise<{ pid: number; comm: string }[]> {
  const found = [];
  for await (const entry of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    const stat = await Deno.readTextFile(`/proc/${entry.name}/stat`).catch(() => "");
    // pid (comm) state ppid …: comm may hold spaces and parentheses, so split after the last ")"
    const close = stat.lastIndexOf(")");
    if (close < 0) continue;
    const ppid = Number(stat.slice(close + 2).split(" ")[1]);
    if (ppid === pid) found.push({ pid: Number(entry.name), comm: stat.slice(stat.indexOf("(") + 1, close) });
  }
  return found;
}

Deno.test("registry-nginx@ under its --allow-run=/usr/sbin/nginx: a hung nginx -t is killed at the check's timeout", async () => {
  const root = await installedSecure();
  const dir = await Deno.makeTempDir({ prefix: "secretary-consumer-hung-" });
  const secure = await secureEtcd();
  const { nginx, rewrite } = await nginxHost(dir);
  // a configuration whose include is a FIFO nobody writes: `nginx -t` blocks in open() for ever
  const fifo = `${dir}/nginx/hung.fifo`;
  const mkfifo = await new Deno.Command("mkfifo", { args: [fifo] }).output();
  assert.ok(mkfifo.success);
  await Deno.writeTextFile(
    `${dir}/nginx/hung.conf`,
    NginxProcess.config(`${dir}/nginx`, lo.ip(1), 8001, "apache").replace(/^http \{$/m, `http {\n  include ${fifo};`),
  );
  const scripts: Script[] = [];
  const hung: number[] = [];
  try {
    const render = await startUnit(root, "registry-nginx@.service", {
      dropIn: true,
      vars: { ...secure.environment, "%i": "apache" },
      environment: secure.environment,
      dir,
      rewrite: (word) => rewrite(word).replace(`-c ${dir}/nginx/nginx.conf -t -q`, `-c ${dir}/nginx/hung.conf -t -q`),
    });
    scripts.push(render);
    const words = await execStart(`${root}/${UNITS}/registry-nginx@.service.d/tls.conf`, {}, `${root}/opt/bin`);
    assert.ok(words.includes("--allow-run=/usr/sbin/nginx"), words.join(" "));
    // the first render (no instance yet) is checked: its nginx -t hangs
    const checks = await waitFor(
      async () => {
        const nginxes = (await children(render.pid)).filter((c) => c.comm === "nginx");
        return nginxes.length > 0 ? nginxes : undefined;
      },
      () => `the unit's nginx -t running:\n${render.stderr}`,
      READY_MS,
    );
    assert.equal(checks.length, 1);
    const line = await render.waitForLog(/^(<\d>)?check failed /, 90_000);
    assert.match(line, /no exit within \d+ ?ms, killed/);
    assert.equal(await Deno.stat(`/proc/${checks[0].pid}`).then(() => "alive", () => "gone"), "gone");
    assert.doesNotMatch(render.stderr, /NotCapable|Requires \w+ access/, render.stderr);
    assert.ok(render.running, "the render stopped");
    // a check that started again since: the render cannot kill its group under a listed --allow-run (systemd's
    // stop kills the unit's cgroup); the test kills it by PID
    hung.push(...(await children(render.pid)).filter((c) => c.comm === "nginx").map((c) => c.pid));
    render.kill("SIGTERM");
    assert.equal((await render.finished(EVENT_MS)).code, 0, render.stderr);
  } finally {
    for (const s of scripts) await s.stop();
    for (const pid of hung) {
      try {
        Deno.kill(pid, "SIGKILL");
      } catch { /* gone, as it should be */ }
    }
    await nginx.stop();
    await secure.close();
    await Deno.remove(dir, { recursive: true });
  }
});
