/**
 * `registry sync` against Debian's HAProxy, started in the foreground with its
 * stats socket in the test's folder, a real etcd, and real instances with
 * their secretaries: the backend follows registrations, stops, kills and
 * restarts; a restarted HAProxy is refilled; etcd down takes nothing out; a
 * client through HAProxy sees no failed request while an instance stops as
 * systemd stops it (secretary first, with a drain, then the service);
 * bad input is one line, exit 2, and HAProxy untouched.
 */
import assert from "node:assert/strict";
import type { HAProxyServer } from "../lib/haproxy.ts";
import { DEFAULT_PREFIX, servicePrefix } from "../lib/record.ts";
import { HAProxyProcess } from "../testbed/haproxy.ts";
import {
  Apache,
  type EtcdCluster,
  EVENT_MS,
  execStart,
  installed,
  loopback,
  READY_MS,
  runScript,
  Script,
  SOURCE_FLAGS,
  TestServer,
  unitEnvironment,
  waitFor,
} from "../testbed/testbed.ts";
import type { Etcd } from "../lib/etcd.ts";

const lo = loopback(import.meta.url);
const FAST = ["--interval=500ms", "--timeout=300ms", "--ttl=5s", "--hostname=h", "--service=web"];
/** The sync's flags from source: etcd, and HAProxy's socket in the test's folder. */
const SYNC_FLAGS = ["--allow-net", "--allow-env", "--allow-read", "--allow-write"];

interface Bed {
  dir: string;
  cluster: EtcdCluster;
  etcd: Etcd;
  endpoints: string;
  haproxy: HAProxyProcess;
  scripts: Script[];
  sync(extra?: string[]): Script;
  secretary(ip: string, port: number, extra?: string[]): Script;
}

async function withBed(fn: (bed: Bed) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "secretary-sync-" });
  const cluster = await lo.etcd();
  await cluster.start();
  const etcd = cluster.client();
  const endpoints = cluster.endpoints.join(",");
  const haproxy = await HAProxyProcess.start({ dir: `${dir}/haproxy`, ip: lo.ip(1), port: 8000, backend: "web" });
  const scripts: Script[] = [];
  const bed: Bed = {
    dir,
    cluster,
    etcd,
    endpoints,
    haproxy,
    scripts,
    sync(extra = []) {
      const s = Script.deno("registry.ts", [
        "sync",
        "web",
        `--haproxy=${haproxy.adminSocket}`,
        "--backend=web",
        `--endpoints=${endpoints}`,
        ...extra,
      ], { flags: SYNC_FLAGS });
      scripts.push(s);
      return s;
    },
    secretary(ip, port, extra = []) {
      const s = Script.deno(
        "secretary.ts",
        [String(port), `--ip=${ip}`, `--endpoints=${endpoints}`, ...FAST, ...extra],
        {
          flags: SOURCE_FLAGS,
        },
      );
      scripts.push(s);
      return s;
    },
  };
  try {
    await fn(bed);
  } finally {
    for (const s of scripts) s.kill("SIGKILL");
    await Promise.all(scripts.map((s) => s.finished()));
    await haproxy.stop();
    etcd.close();
    await cluster.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

/** The servers HAProxy sends new requests to (in rotation), by name. */
async function inRotation(bed: Bed): Promise<string[]> {
  const servers: HAProxyServer[] = await bed.haproxy.client().servers("web");
  return servers.filter((s) => !s.maint).map((s) => s.name).sort();
}

/** The instances the registry lists, as ip:port. */
async function listed(bed: Bed): Promise<string[]> {
  const { values } = await bed.etcd.list(servicePrefix(DEFAULT_PREFIX, "web"));
  return values.map((v) => v.key.slice(v.key.lastIndexOf("/") + 1)).sort();
}

/** Waits until what HAProxy has in rotation is what the registry lists, and that is `expected`. */
async function backendEqualsRegistry(bed: Bed, expected: string[], what: string): Promise<void> {
  const want = [...expected].sort();
  await waitFor(
    async () => {
      const [rotation, registry] = await Promise.all([inRotation(bed), listed(bed)]);
      return JSON.stringify(rotation) === JSON.stringify(want) && JSON.stringify(registry) === JSON.stringify(want);
    },
    `${what}: HAProxy ${JSON.stringify(await inRotation(bed))}, registry ${JSON.stringify(await listed(bed))}`,
    EVENT_MS,
    50,
  );
}

Deno.test("sync: registration, stop, kill and restart of instances show in HAProxy as in the registry", async () => {
  await withBed(async (bed) => {
    const servers = await Promise.all([2, 3, 4].map((n) => TestServer.start(lo.ip(n))));
    const names = servers.map((t) => `${t.host}:${t.port}`);
    const sync = bed.sync();
    await sync.waitForLog(/^started /, READY_MS);
    const secretaries = servers.map((t) => bed.secretary(t.host, t.port));
    await backendEqualsRegistry(bed, names, "three registered");
    const state = await bed.haproxy.client().servers("web");
    assert.ok(state.every((s) => s.ip === s.name.split(":")[0] && String(s.port) === s.name.split(":")[1]));

    secretaries[0].kill("SIGTERM"); // stopped: its record goes at once
    await backendEqualsRegistry(bed, names.slice(1), "one stopped");
    await waitFor(async () => (await bed.haproxy.client().servers("web")).length === 2, "the server deleted", EVENT_MS);
    await sync.waitForLog(/^server out backend=web server=\S+/);
    await sync.waitForLog(/^server deleted backend=web server=\S+/);

    await servers[1].close(); // killed: its secretary finds it dead
    await backendEqualsRegistry(bed, names.slice(2), "one killed");

    const back = await TestServer.start(servers[1].host, servers[1].port); // restarted on its port
    await backendEqualsRegistry(bed, names.slice(1), "one back");
    await back.close();
    await Promise.all(servers.map((t) => t.close()));
    assert.doesNotMatch(sync.stderr, /haproxy (refused|unreachable)/, sync.stderr);
  });
});

Deno.test("sync: a restarted HAProxy is refilled; etcd down for longer than a TTL takes nothing out, and it converges after", async () => {
  await withBed(async (bed) => {
    const servers = await Promise.all([2, 3].map((n) => TestServer.start(lo.ip(n))));
    const names = servers.map((t) => `${t.host}:${t.port}`);
    const sync = bed.sync();
    const secretaries = servers.map((t) => bed.secretary(t.host, t.port));
    await backendEqualsRegistry(bed, names, "registered");

    await bed.haproxy.restart("SIGKILL"); // its run-time servers are gone
    await backendEqualsRegistry(bed, names, "refilled after HAProxy restarted");
    await sync.waitForLog(/^haproxy restarted /, EVENT_MS);

    const [member] = bed.cluster.members;
    await member.stop("SIGKILL");
    await sync.waitForLog(/^etcd unreachable /, EVENT_MS);
    // longer than a TTL: the secretaries' leases are lost (no keep-alive answered for about 2 x TTL)
    for (const s of secretaries) await s.waitForLog(/^lease lost /, 3 * EVENT_MS);
    // a server taken out by hand is put back: a pass ran after that, from the last listing, not an empty one
    await bed.haproxy.client().command(`set server web/${names[0]} state maint`);
    await sync.waitForLog(new RegExp(`^server ready backend=web server=${names[0].replaceAll(".", "\\.")}$`), EVENT_MS);
    assert.deepEqual(await inRotation(bed), [...names].sort(), "a server was taken out while etcd was down");
    member.start("existing");
    await bed.cluster.waitReady();
    await backendEqualsRegistry(bed, names, "after etcd answers again");
    await sync.waitForLog(/^etcd answered/, EVENT_MS);
    await Promise.all(servers.map((t) => t.close()));
  });
});

Deno.test("sync: requests through HAProxy while Apache stops as systemd stops it (secretary with a drain, then Apache) all succeed", async () => {
  await withBed(async (bed) => {
    const apaches = await Promise.all(
      [2, 3].map((n) => Apache.start({ ip: lo.ip(n), port: 8080, dir: `${bed.dir}/apache-${n}` })),
    );
    try {
      const names = apaches.map((a) => `${a.ip}:${a.port}`);
      bed.sync();
      const secretaries = apaches.map((a) => bed.secretary(a.ip, a.port, ["--drain=2s"]));
      await backendEqualsRegistry(bed, names, "two Apaches registered");
      const url = `http://${lo.ip(1)}:8000/`;
      let ok = 0;
      const failures: string[] = [];
      let running = true;
      const client = async () => {
        for (let i = 0; running; i++) {
          const post = i % 2 === 1;
          try {
            const res = await fetch(url, { method: post ? "POST" : "GET", body: post ? "x" : undefined });
            await res.arrayBuffer();
            if (res.status >= 200 && res.status < 300) ok++; // Apache serves its page to a POST too
            else failures.push(`${post ? "POST" : "GET"} status ${res.status}`);
          } catch (err) {
            failures.push(String(err));
          }
        }
      };
      const clients = [client(), client(), client(), client()];
      await waitFor(() => ok >= 50, "50 requests answered before the stop", EVENT_MS);
      secretaries[0].kill("SIGTERM"); // the record goes, then a 2 s drain, then the secretary exits
      assert.equal((await secretaries[0].finished(EVENT_MS)).code, 0, secretaries[0].stderr);
      apaches[0].process.kill("SIGTERM"); // only then the service, as systemd stops it
      await apaches[0].process.finished(EVENT_MS);
      const after = ok;
      await waitFor(() => ok >= after + 100, "100 requests answered after the stop", EVENT_MS);
      running = false;
      await Promise.all(clients);
      assert.equal(failures.length, 0, `${failures.length} failed of ${ok + failures.length}: ${failures.slice(0, 3)}`);
      await backendEqualsRegistry(bed, names.slice(1), "the stopped Apache out");
    } finally {
      await Promise.all(apaches.map((a) => a.killGroup()));
    }
  });
});

Deno.test("sync: no such socket, no such backend, a socket below admin level: one line, exit 2, HAProxy untouched", async () => {
  await withBed(async (bed) => {
    const before = await bed.haproxy.client().run("show servers state");
    const cases: [string[], RegExp][] = [
      [[`--haproxy=${bed.dir}/nope.sock`, "--backend=web"], /--haproxy ".*nope\.sock": no such socket$/],
      [[`--haproxy=${bed.haproxy.adminSocket}`, "--backend=nope"], /--backend "nope": HAProxy has no such backend$/],
      [[`--haproxy=${bed.haproxy.operatorSocket}`, "--backend=web"], /expected a stats socket at level admin/],
      [[`--haproxy=${lo.ip(9)}:1`, "--backend=web"], /nothing answers there$/],
      [["--haproxy=relative.sock", "--backend=web"], /expected an absolute path or host:port$/],
      [
        [`--haproxy=${bed.haproxy.adminSocket}`, "--backend=web", "--server-options=check; del server web/x"],
        /--server-options/,
      ],
      [
        [`--haproxy=${bed.haproxy.adminSocket}`, "--backend=web", `--state-file=${bed.dir}/nope/web`],
        /--state-file ".*\/nope\/web": no such folder ".*\/nope"$/,
      ],
      [[`--haproxy=${bed.haproxy.adminSocket}`, "--backend=web", "--state-file=web"], /expected an absolute path/],
      [
        [`--haproxy=${bed.haproxy.adminSocket}`, "--backend=web", `--state-file=${bed.dir}`],
        /expected a regular file$/,
      ],
    ];
    const results = await Promise.all(
      cases.map(([args]) =>
        runScript("registry.ts", ["sync", "web", `--endpoints=${bed.endpoints}`, ...args], { flags: SYNC_FLAGS })
      ),
    );
    results.forEach((r, i) => {
      assert.equal(r.code, 2, `${cases[i][0].join(" ")}: ${r.stderr}`);
      const lines = r.stderr.trimEnd().split("\n");
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0], /^registry: Cannot use /);
      assert.match(lines[0], cases[i][1]);
    });
    assert.equal(await bed.haproxy.client().run("show servers state"), before, "HAProxy was changed");
  });
});

Deno.test("sync: the installed registry-haproxy@ unit's ExecStart (the bundle, the unit's least privilege) keeps the backend", async () => {
  const root = await installed();
  await withBed(async (bed) => {
    const unit = `${root}/etc/systemd/system/registry-haproxy@.service`;
    const vars = {
      SECRETARY_ETCD: new URL(bed.endpoints.split(",")[0]).host,
      HAPROXY_SOCKET: bed.haproxy.adminSocket,
      "%i": "web",
    };
    // the unit's folder of server-state files (its StateDirectory), moved into this test's
    const stateDir = `${bed.dir}/var/lib/haproxy/server-state`;
    await Deno.mkdir(stateDir, { recursive: true });
    const argv = (await execStart(unit, vars, `${root}/opt/bin`)).map((word) =>
      word.replaceAll("/var/lib/haproxy/server-state", stateDir)
    );
    assert.ok(argv.includes(`${stateDir}/web`), `the unit passes no --state-file: ${argv.join(" ")}`);
    const env = await unitEnvironment(unit);
    for (const [k, v] of Object.entries(env)) env[k] = v.replaceAll("%C", `${bed.dir}/cache`);
    const sync = new Script(argv[0], argv.slice(1), { ...env, ...vars }, { clearEnv: true, cwd: root });
    bed.scripts.push(sync);
    const t = await TestServer.start(lo.ip(2));
    bed.secretary(t.host, t.port);
    await backendEqualsRegistry(bed, [`${t.host}:${t.port}`], "registered, through the unit's sync");
    assert.doesNotMatch(sync.stderr, /NotCapable|Requires \w+ access|haproxy (refused|unreachable)/, sync.stderr);
    await waitFor(
      () => Deno.stat(`${stateDir}/web`).then(() => true, () => false),
      `the server-state file written under the unit's flags:\n${sync.stderr}`,
      EVENT_MS,
    );
    sync.kill("SIGTERM");
    assert.equal((await sync.finished(EVENT_MS)).code, 0, sync.stderr);
    await t.close();
  });
});
