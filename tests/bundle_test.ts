/**
 * The one-file bundles, built fresh by build.ts into this test's own folder
 * and copied alone into empty folders: they run under deno with exactly the
 * unit's permissions and under node, against a real etcd, through no proxy,
 * with source maps both runtimes use. Each permission in the unit's set is
 * shown to be needed by dropping it.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { embedProto, protoDescriptor } from "../build.ts";
import { clientDefinition } from "../lib/client-definition.ts";
import { type Etcd } from "../lib/etcd.ts";
import { decodeEntry, encodeRecord, instanceKey } from "../lib/record.ts";
import {
  bundles,
  clientCertOptions,
  EtcdCluster,
  type EtcdCreateOptions,
  EVENT_MS,
  execStart,
  loopback,
  makeCerts,
  READY_MS,
  ROOT,
  Script,
  TestServer,
  unitEnvironment,
  waitFor,
} from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);

/** The variables the registry wrapper install.sh writes lets deno read; the test checks the wrapper says the same. */
const REGISTRY_ENV = "ETCDCTL_CACERT,ETCDCTL_CERT,ETCDCTL_KEY,ETCDCTL_USER,GRPC_*";

/** Short checks so a test takes seconds; the unit's own flags otherwise. */
const FAST = ["--interval=500ms", "--timeout=300ms", "--ttl=5s"];

// ---------------------------------------------------------------------------
// helpers

/** An empty folder holding only the named files from the build; removed by the returned function. */
async function emptyFolderWith(files: string[]): Promise<{ dir: string; remove: () => Promise<void> }> {
  const from = await bundles();
  const dir = await Deno.makeTempDir({ prefix: "secretary-alone-" });
  for (const f of files) await Deno.copyFile(`${from}/${f}`, `${dir}/${f}`);
  return { dir, remove: () => Deno.remove(dir, { recursive: true }) };
}

/** The unit's deno permissions (`--allow-*` words of its ExecStart), for one instance and one etcd. */
async function unitPermissions(ip: string, port: number, etcdHostPort: string): Promise<string[]> {
  const words = await execStart("apache-secretary@.service", {
    COREOS_PUBLIC_IPV4: ip,
    "%i": String(port),
    SECRETARY_ETCD: etcdHostPort,
  });
  return words.filter((w) => w.startsWith("--allow-"));
}

/** Every file under `dir`, as paths relative to it. */
function* walkFiles(dir: string, prefix = ""): Generator<string> {
  for (const entry of Deno.readDirSync(dir)) {
    if (entry.isDirectory) yield* walkFiles(`${dir}/${entry.name}`, `${prefix}${entry.name}/`);
    else yield `${prefix}${entry.name}`;
  }
}

/** A bundle run as a host runs it: in `cwd`, with only the environment given. */
function proc(command: string, args: string[], cwd: string, env: Record<string, string>): Script {
  return new Script(command, args, { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin", ...env }, {
    cwd,
    clearEnv: true,
  });
}

/** Runs a bundle to its end; killed after `timeoutMs`. */
async function run(
  command: string,
  args: string[],
  cwd: string,
  env: Record<string, string> = {},
  timeoutMs = 20_000,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = proc(command, args, cwd, env);
  const status = await p.finished(timeoutMs);
  return { code: status.code, stdout: p.stdout, stderr: p.stderr };
}

interface Bed {
  cluster: EtcdCluster;
  etcd: Etcd;
  /** etcd's client address as host:port, the form --allow-net and --endpoints both take. */
  etcdHostPort: string;
  dir: string;
  procs: Script[];
}

/**
 * A one-member etcd (on an address of this file's own unless `etcdOptions` names one of them) and an empty folder
 * with the bundles alone; stops and removes everything after.
 */
async function withBed(fn: (bed: Bed) => Promise<void>, etcdOptions: EtcdCreateOptions = {}): Promise<void> {
  const folder = await emptyFolderWith(["secretary.mjs", "registry.mjs"]);
  const cluster = await EtcdCluster.create(1, { ...etcdOptions, host: etcdOptions.host ?? lo.etcdHost() });
  const procs: Script[] = [];
  let etcd: Etcd | undefined;
  try {
    await cluster.start();
    etcd = cluster.client();
    await fn({ cluster, etcd, etcdHostPort: new URL(cluster.endpoints[0]).host, dir: folder.dir, procs });
  } finally {
    for (const p of procs) p.kill("SIGKILL");
    await Promise.all(procs.map((p) => p.finished()));
    etcd?.close();
    await cluster.stop();
    await folder.remove();
  }
}

/** Starts a secretary bundle, waits until its record is in etcd, stops it with SIGTERM: record gone, exit 0. */
async function registerAndDeregister(
  bed: Bed,
  target: TestServer,
  start: () => Script,
): Promise<Script> {
  const key = instanceKey("/services", "apache", target.host, target.port);
  const p = start();
  bed.procs.push(p);
  // the line follows the put's answer
  await p.waitForLog(/^(<\d>)?registered key=/, READY_MS);
  assert.notEqual(await bed.etcd.get(key), undefined, `logged as registered, but not in etcd:\n${p.stderr}`);
  const stored = decodeEntry("/services", key, (await bed.etcd.get(key))!.value);
  assert.equal(stored.record?.host, "bundle-host");
  assert.equal(stored.record?.port, target.port);
  p.kill("SIGTERM");
  const status = await p.finished();
  assert.equal(status.code, 0, p.stderr);
  assert.equal(await bed.etcd.get(key), undefined, "the record outlived the secretary");
  assert.match(p.stderr, /^(<\d>)?stopped .*record=removed/m); // <5> under journald (the unit's run)
  assert.doesNotMatch(p.stderr, /NotCapable|Requires \w+ access|Warning/);
  return p;
}

// ---------------------------------------------------------------------------
// the build

Deno.test("build: etcd3's loadSync of rpc.proto is replaced by clientDefinition() of an embedded descriptor, exactly once", async () => {
  const source = await Deno.readTextFile(`${ROOT}node_modules/etcd3/lib/connection-pool.js`);
  const descriptor = protoDescriptor();
  const embedded = embedProto(source, descriptor);
  assert.doesNotMatch(embedded, /loadSync|rpc\.proto|__dirname|proto-loader|proto_loader_1/);
  assert.match(embedded, /require\("[^"]*\/lib\/client-definition\.ts"\)\.clientDefinition\(\{"nested":/);
  // the descriptor serves etcd's services, with etcd3's field names (keepCase)
  const definition = clientDefinition(descriptor, { longs: String });
  assert.equal(definition["etcdserverpb.KV"].Range.path, "/etcdserverpb.KV/Range");
  assert.ok(definition["etcdserverpb.Lease"].LeaseKeepAlive.requestStream, "Lease.LeaseKeepAlive streams");
  const request = { key: Buffer.from("a"), range_end: Buffer.from("b") };
  const bytes = definition["etcdserverpb.KV"].Range.requestSerialize(request);
  // field 2 (range_end) is there: snake_case names were kept
  assert.deepEqual([...bytes], [0x0a, 1, 0x61, 0x12, 1, 0x62]);
});

Deno.test("build: fails loudly when etcd3's code changes shape", () => {
  const source = `const proto_loader_1 = require("@grpc/proto-loader");
const packageDefinition = (0, proto_loader_1.loadSync)(\`\${__dirname}/../proto/rpc.proto\`, {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
});`;
  const descriptor = { nested: {} };
  assert.doesNotThrow(() => embedProto(source, descriptor));
  const changed = [
    source.replace("rpc.proto", "etcd.proto"), // another file
    source.replace("oneofs: true", "oneofs: false"), // other options
    source.replace("(0, proto_loader_1.loadSync)", "proto_loader_1.loadSync"), // another compiler output
    `${source}\n${source}`, // twice
    source.replace('require("@grpc/proto-loader")', 'require("@grpc/proto-loader/build")'), // another require
  ];
  for (const text of changed) {
    assert.throws(() => embedProto(text, descriptor), /exactly once in the known form, found [012] and [012]/);
  }
});

Deno.test("build: self-contained minified ESM bundles with source maps beside them", async () => {
  const dir = await bundles();
  // registry serve's page (HTML, CSS, script) is carried as the text it is, line for line
  let pageLines = 0;
  for (const file of Deno.readDirSync(`${ROOT}lib/page`)) {
    pageLines += (await Deno.readTextFile(`${ROOT}lib/page/${file.name}`)).split("\n").length;
  }
  for (const name of ["secretary", "registry"]) {
    const code = await Deno.readTextFile(`${dir}/${name}.mjs`);
    assert.ok(code.trimEnd().endsWith(`//# sourceMappingURL=${name}.mjs.map`), "a linked source map");
    assert.ok(!code.startsWith("#!"), "the source's #! line (flags for running from source) is gone");
    // minified: few, long lines
    const most = 300 + (name === "registry" ? pageLines : 0);
    assert.ok(code.split("\n").length < most, `${name}.mjs has ${code.split("\n").length} lines, not under ${most}`);
    // nothing from outside at run time: every import and require names a node built-in
    const requireAlias = /var ([\w$]+)=\(\w+=>typeof require<"u"\?require/.exec(code)?.[1];
    assert.ok(requireAlias, "esbuild's require shim");
    const specifiers = [
      ...code.matchAll(/(?:^|;)\s*import\s*\{[^}]*\}\s*from\s*"([^"]+)"/gm),
      ...code.matchAll(new RegExp(`[^\\w$.]${requireAlias.replace("$", "\\$")}\\("([^"]+)"\\)`, "g")),
    ].map((m) => m[1]);
    assert.ok(specifiers.includes("node:module") && specifiers.includes("http2"), specifiers.join(", "));
    const foreign = specifiers.filter((s) => !/^(node:)?[a-z_0-9]+(\/[a-z_0-9]+)?$/.test(s));
    assert.deepEqual(foreign, [], `${name}.mjs imports ${foreign.join(", ")}`);
    assert.doesNotMatch(code, /etcd3\/proto|rpc\.proto/);
    const map = JSON.parse(await Deno.readTextFile(`${dir}/${name}.mjs.map`));
    assert.equal(map.version, 3);
    assert.ok(map.sources.includes(`../${name}.ts`) || map.sources.some((s: string) => s.endsWith(`/${name}.ts`)));
    assert.equal(map.sourcesContent.length, map.sources.length, "the sources travel inside the map");
  }
});

// ---------------------------------------------------------------------------
// alone in an empty folder

Deno.test("bundles alone in an empty folder: --help exits 0, bad input exits 2 with one line, deno and node", async () => {
  const folder = await emptyFolderWith(["secretary.mjs", "registry.mjs"]);
  const denoDir = await Deno.makeTempDir({ prefix: "secretary-denodir-" });
  try {
    // nothing is dialled: --help and bad input end before any connection
    const etcdHostPort = `${lo.ip(1)}:2379`;
    const secretaryPermissions = await unitPermissions(lo.ip(1), 8080, etcdHostPort);
    const registryPermissions = [`--allow-net=${etcdHostPort}`, `--allow-env=${REGISTRY_ENV}`];
    const env = { DENO_DIR: denoDir };
    const runtimes: [string, string[], string[]][] = [
      ["deno", [Deno.execPath(), "run", ...secretaryPermissions], [Deno.execPath(), "run", ...registryPermissions]],
      ["node", ["node"], ["node"]],
    ];
    const cases = runtimes.flatMap(([runtime, secretary, registry]) => [
      { runtime, cmd: [...secretary, "secretary.mjs", "--help"], code: 0, out: /^Usage: secretary <port>/ },
      { runtime, cmd: [...registry, "registry.mjs", "--help"], code: 0, out: /^Usage: registry <command>/ },
      { runtime, cmd: [...secretary, "secretary.mjs", "80a"], code: 2, err: /^secretary: Cannot use port "80a"/ },
      { runtime, cmd: [...secretary, "secretary.mjs", "8080", "--bogus"], code: 2, err: /^secretary: .*'--bogus'/ },
      { runtime, cmd: [...registry, "registry.mjs", "list"], code: 2, err: /^registry: Cannot use command "list"/ },
    ]);
    const results = await Promise.all(
      cases.map((c) => run(c.cmd[0], c.cmd.slice(1), folder.dir, env).then((r) => ({ c, r }))),
    );
    for (const { c, r } of results) {
      const what = `${c.runtime}: ${c.cmd.slice(-2).join(" ")}\n${r.stderr}`;
      assert.equal(r.code, c.code, what);
      if (c.out) {
        assert.match(r.stdout, c.out, what);
        assert.equal(r.stderr, "", what);
      }
      if (c.err) {
        assert.equal(r.stderr.trimEnd().split("\n").length, 1, `one line: ${what}`);
        assert.match(r.stderr, c.err, what);
        assert.equal(r.stdout, "", what);
      }
    }
    // nothing fetched for the bundles: deno's cache holds no npm package and no remote module
    const fetched = [...walkFiles(denoDir)].filter((f) => /^(npm|remote|deps)\//.test(f));
    assert.deepEqual(fetched, [], "deno fetched modules for a bundle");
    assert.deepEqual([...Deno.readDirSync(folder.dir)].map((e) => e.name).sort(), ["registry.mjs", "secretary.mjs"]);
  } finally {
    await folder.remove();
    await Deno.remove(denoDir, { recursive: true });
  }
});

Deno.test("secretary bundle under deno, started exactly as the unit's ExecStart starts it, registers; SIGTERM deregisters", async () => {
  await withBed(async (bed) => {
    const target = await TestServer.start(lo.ip(2));
    try {
      // as systemd runs it: the IP from the environment (EnvironmentFile=), %H as --hostname
      const environment = { COREOS_PUBLIC_IPV4: target.host, SECRETARY_ETCD: bed.etcdHostPort };
      const vars = { ...environment, "%i": String(target.port), "%H": "bundle-host" };
      const argv = await execStart("apache-secretary@.service", vars, bed.dir);
      await registerAndDeregister(bed, target, () =>
        proc(argv[0], [...argv.slice(1), ...FAST], bed.dir, {
          ...environment,
          JOURNAL_STREAM: "8:4242",
          INVOCATION_ID: "0123456789abcdef",
        }));
    } finally {
      await target.close();
    }
  });
});

Deno.test("over TLS, the drop-in's permissions (the unit's, and reading the three certificate files) are enough", async () => {
  const host = lo.etcdHost();
  const certs = await makeCerts([host]);
  try {
    await withBed(async (bed) => {
      const target = await TestServer.start(lo.ip(3));
      try {
        // what /etc/environment holds on such a host
        const environment = {
          COREOS_PUBLIC_IPV4: target.host,
          SECRETARY_ETCD: bed.etcdHostPort,
          ETCDCTL_ENDPOINTS: bed.cluster.endpoints[0],
          ETCDCTL_CACERT: certs.ca,
          ETCDCTL_CERT: certs.clientCert,
          ETCDCTL_KEY: certs.clientKey,
        };
        assert.match(environment.ETCDCTL_ENDPOINTS, /^https:/);
        const vars = { ...environment, "%i": String(target.port), "%H": "bundle-host" };
        const argv = await execStart("apache-secretary-tls.conf", vars, bed.dir);
        assert.deepEqual(argv.filter((w) => w.startsWith("--allow-read")), [
          `--allow-read=${certs.ca},${certs.clientCert},${certs.clientKey}`,
        ]);
        await registerAndDeregister(
          bed,
          target,
          () => proc(argv[0], [...argv.slice(1), ...FAST], bed.dir, environment),
        );
      } finally {
        await target.close();
      }
    }, clientCertOptions(host, certs));
  } finally {
    await Deno.remove(certs.dir, { recursive: true });
  }
});

Deno.test("secretary bundle under node registers, and SIGTERM deregisters", async () => {
  await withBed(async (bed) => {
    const target = await TestServer.start(lo.ip(4));
    try {
      await registerAndDeregister(bed, target, () =>
        proc(
          "node",
          [
            "secretary.mjs",
            String(target.port),
            "--ip",
            target.host,
            "--hostname",
            "bundle-host",
            "--endpoints",
            bed.etcdHostPort,
            ...FAST,
          ],
          bed.dir,
          {},
        ));
    } finally {
      await target.close();
    }
  });
});

Deno.test("registry bundle under deno and node prints every line of a listing larger than a pipe holds", async () => {
  await withBed(async (bed) => {
    const lease = await bed.etcd.grantLease(60);
    const count = 3000; // about 140 KB of table: more than a 64 KB pipe takes at once
    for (let i = 0; i < count; i += 100) {
      await Promise.all(Array.from({ length: 100 }, (_, j) => {
        const ip = `10.1.${(i + j) >> 8}.${(i + j) & 255}`;
        const record = { host: "h", ipv4_addr: ip, port: 80, service: "web", registered_at: "", meta: {} };
        return bed.etcd.putIfAbsent(instanceKey("/services", "web", ip, 80), encodeRecord(record), lease);
      }));
    }
    const args = ["ls", "--endpoints", bed.etcdHostPort];
    for (
      const [command, argv] of [
        ["node", ["registry.mjs", ...args]],
        [Deno.execPath(), ["run", `--allow-net=${bed.etcdHostPort}`, "--allow-env", "registry.mjs", ...args]],
      ] as const
    ) {
      const result = await run(command, [...argv], bed.dir, {});
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stdout.trimEnd().split("\n").length, count + 1, `${command}: a cut listing`);
    }
  });
});

Deno.test("each of the unit's permissions is needed: without it the secretary fails or cannot reach its instance or etcd", async () => {
  await withBed(async (bed) => {
    const target = await TestServer.start(lo.ip(5));
    try {
      const permissions = await unitPermissions(target.host, target.port, bed.etcdHostPort);
      const net = permissions.find((p) => p.startsWith("--allow-net="))!;
      const env = permissions.find((p) => p.startsWith("--allow-env="))!;
      assert.deepEqual(permissions, [net, env], "the unit grants network and environment, nothing else");
      const variables = env.slice("--allow-env=".length).split(",");
      const [instance, etcd] = net.slice("--allow-net=".length).split(",");
      assert.equal(instance, `${target.host}:${target.port}`);
      assert.equal(etcd, bed.etcdHostPort);
      const start = (allow: string[]) =>
        proc(
          Deno.execPath(),
          ["run", ...allow, "secretary.mjs", String(target.port), "--hostname=h", `--endpoints=${etcd}`, ...FAST],
          bed.dir,
          { COREOS_PUBLIC_IPV4: target.host },
        );
      // each variable it reads: refused, the read fails and the secretary exits 1 naming it
      const withoutVariable = await Promise.all(variables.map(async (v) => {
        const allow = [net, `--allow-env=${variables.filter((x) => x !== v).join(",")}`];
        const p = start(allow);
        bed.procs.push(p);
        return { v, status: await p.finished(), stderr: p.stderr };
      }));
      for (const { v, status, stderr } of withoutVariable) {
        assert.equal(status.code, 1, `without ${v}: ${stderr}`);
        assert.match(stderr, new RegExp(`Requires env access to "${v.replace("*", "[A-Z_]+")}"`), `without ${v}`);
      }
      // the instance: every check fails; etcd: every call fails
      const noInstance = start([`--allow-net=${etcd}`, env]);
      const noEtcd = start([`--allow-net=${instance}`, env]);
      bed.procs.push(noInstance, noEtcd);
      const quoted = `\\\\"${target.host.replaceAll(".", "\\.")}:${target.port}\\\\"`; // as a quoted value escapes it
      await noInstance.waitForLog(new RegExp(`^check failed reason=.*Requires net access to ${quoted}`));
      await noEtcd.waitForLog(/etcd call failed .*Requires net access/);
      assert.deepEqual((await bed.etcd.list("/")).values, [], "registered without its permissions");
    } finally {
      await target.close();
    }
  });
});

Deno.test("proxy variables send neither the health check nor etcd traffic through a proxy, deno and node", async () => {
  // a proxy that keeps the first line of every connection made to it (a CONNECT names its destination), on an
  // address nothing else dials: a port the kernel picks on a shared address may be one a killed etcd of another test
  // gave up, its clients still reconnecting to it
  const proxy = Deno.listen({ hostname: lo.ip(6), port: 0 });
  const proxied: string[] = [];
  const accepting = (async () => {
    for await (const conn of proxy) {
      const buf = new Uint8Array(1024);
      const timer = setTimeout(() => conn.close(), 1000);
      const n = await conn.read(buf).catch(() => null);
      clearTimeout(timer);
      proxied.push(new TextDecoder().decode(buf.subarray(0, n ?? 0)).split("\r\n")[0] || "(nothing sent)");
      try {
        conn.close();
      } catch { /* closed by the timer */ }
    }
  })();
  const url = `http://${lo.ip(6)}:${(proxy.addr as Deno.NetAddr).port}`;
  // deno's own update check (CONNECT dl.deno.land:443, whatever --allow-net says) would go through the proxy: the
  // unit turns it off, and so does this run, as the unit does
  const { DENO_NO_UPDATE_CHECK } = await unitEnvironment("apache-secretary@.service");
  assert.equal(DENO_NO_UPDATE_CHECK, "1");
  const proxyEnv = {
    http_proxy: url,
    HTTP_PROXY: url,
    https_proxy: url,
    HTTPS_PROXY: url,
    grpc_proxy: url,
    ALL_PROXY: url,
    all_proxy: url,
    DENO_NO_UPDATE_CHECK,
  };
  try {
    await withBed(async (bed) => {
      const target = await TestServer.start(lo.ip(7));
      try {
        const args = [
          "secretary.mjs",
          String(target.port),
          `--ip=${target.host}`,
          "--hostname=bundle-host",
          `--endpoints=${bed.etcdHostPort}`,
          ...FAST,
        ];
        // deno with every variable readable, so a proxy variable would be seen if anything looked
        const denoNet = `--allow-net=${target.host}:${target.port},${bed.etcdHostPort}`;
        await registerAndDeregister(
          bed,
          target,
          () => proc(Deno.execPath(), ["run", denoNet, "--allow-env", ...args], bed.dir, proxyEnv),
        );
        await registerAndDeregister(bed, target, () => proc("node", args, bed.dir, proxyEnv));
        for (const registry of [[Deno.execPath(), "run", denoNet, "--allow-env"], ["node"]]) {
          const ls = await run(
            registry[0],
            [...registry.slice(1), "registry.mjs", "ls", `--endpoints=${bed.etcdHostPort}`],
            bed.dir,
            proxyEnv,
          );
          assert.equal(ls.code, 0, ls.stderr);
        }
        assert.ok(target.requests >= 4, `the checks went straight to the instance: ${target.requests}`);
        assert.deepEqual(proxied, [], "connections went to the proxy");
      } finally {
        await target.close();
      }
    });
  } finally {
    proxy.close();
    await accepting.catch(() => {});
  }
});

Deno.test("source maps: deno and node report the bundle's frames at their TypeScript lines", async () => {
  const folder = await emptyFolderWith(["secretary.mjs", "secretary.mjs.map"]);
  const preloadDir = await Deno.makeTempDir({ prefix: "secretary-preload-" });
  try {
    // prints a stack trace with each line written to stderr: main() writes the usage error
    const preload = `${preloadDir}/trace.mjs`;
    await Deno.writeTextFile(
      preload,
      "const write = process.stderr.write.bind(process.stderr);\n" +
        "process.stderr.write = (chunk, ...rest) => write(`${chunk}${new Error('trace').stack}\\n`, ...rest);\n",
    );
    const source = (await Deno.readTextFile(`${ROOT}secretary.ts`)).split("\n");
    const permissions = await unitPermissions(lo.ip(8), 8080, `${lo.ip(8)}:2379`); // nothing is dialled
    const runs = await Promise.all([
      run(Deno.execPath(), ["run", ...permissions, "--preload", preload, "secretary.mjs", "80a"], folder.dir),
      run("node", ["--enable-source-maps", "--import", preload, "secretary.mjs", "80a"], folder.dir),
    ]);
    for (const [i, r] of runs.entries()) {
      const runtime = i === 0 ? "deno" : "node";
      assert.equal(r.code, 2, `${runtime}: ${r.stderr}`);
      const frame = /\bsecretary\.ts:(\d+):\d+/.exec(r.stderr);
      assert.ok(frame, `${runtime}: no frame in secretary.ts:\n${r.stderr}`);
      // the frame's line is the TypeScript line that wrote the usage error
      assert.match(source[Number(frame[1]) - 1], /process\.stderr\.write\(`secretary: /, `${runtime}: ${frame[0]}`);
    }
  } finally {
    await folder.remove();
    await Deno.remove(preloadDir, { recursive: true });
  }
});

Deno.test("the example exec unit's ExecStart, bundle under deno: status published, maintenance honoured, drain on SIGTERM; exec under node", async () => {
  await withBed(async (bed) => {
    const target = await TestServer.start(lo.ip(9)); // the worker listens, so the watch has a connection to hold
    try {
      await Deno.writeTextFile(
        `${bed.dir}/check-queue`,
        '#!/bin/sh\nsleep 30 &\necho "{\\"depth\\":7,\\"args\\":\\"$*\\",\\"port\\":\\"$SECRETARY_PORT\\"}"\n',
        { mode: 0o755 },
      );
      const environment = { COREOS_PUBLIC_IPV4: target.host, SECRETARY_ETCD: bed.etcdHostPort };
      const vars = { ...environment, "%i": String(target.port), "%H": "bundle-host" };
      const argv = (await execStart("examples/queue-secretary@.service", vars, bed.dir))
        .map((word) => word.replaceAll("/run/", `${bed.dir}/`));
      const p = proc(argv[0], [...argv.slice(1), ...FAST], bed.dir, { ...environment, JOURNAL_STREAM: "8:4242" });
      bed.procs.push(p);
      const key = instanceKey("/services", "queue", target.host, target.port);
      const present = async () => (await bed.etcd.get(key)) !== undefined;
      await p.waitForLog(/^<\d>registered key=/, READY_MS);
      const record = decodeEntry("/services", key, (await bed.etcd.get(key))!.value).record!;
      assert.deepEqual(record.status, { depth: 7, args: `--port ${target.port}`, port: String(target.port) });

      const file = `${bed.dir}/queue@${target.port}.maintenance`;
      await Deno.writeTextFile(file, "");
      await waitFor(async () => !(await present()), "deregistered in maintenance", EVENT_MS);
      await Deno.remove(file);
      await waitFor(present, "registered after maintenance", EVENT_MS);

      p.kill("SIGTERM");
      await waitFor(async () => !(await present()), "the record gone at once", EVENT_MS);
      assert.ok(p.running, `not draining (--drain 5s) once the record was gone:\n${p.stderr}`);
      p.kill("SIGTERM");
      assert.equal((await p.finished(EVENT_MS)).code, 0, "a second SIGTERM ends the drain");
      assert.doesNotMatch(p.stderr, /NotCapable|Requires \w+ access|Warning/);

      const n = proc(
        "node",
        [
          "secretary.mjs",
          String(target.port),
          ...["--ip", target.host, "--hostname", "bundle-host", "--endpoints", bed.etcdHostPort, "--service", "queue"],
          ...["--check", "exec", "--command", `${bed.dir}/check-queue --port 1`, ...FAST],
        ],
        bed.dir,
        {},
      );
      bed.procs.push(n);
      await n.waitForLog(/^registered key=/, READY_MS);
      assert.equal(decodeEntry("/services", key, (await bed.etcd.get(key))!.value).record?.status?.args, "--port 1");
      n.kill("SIGTERM");
      assert.equal((await n.finished(EVENT_MS)).code, 0, n.stderr);
    } finally {
      await target.close();
    }
  });
});
