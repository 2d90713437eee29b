/**
 * `registry render` as an attacker and an unlucky operator would try it,
 * against Debian's nginx and a real etcd: a record cannot inject
 * configuration (nginx's own `nginx -T` and a request prove nothing foreign
 * was loaded), a record nginx refuses does not freeze the file (a later
 * addition and removal land in nginx), a failed reload is retried until one
 * succeeds and `--once` fails while the file on disk was never reloaded, the
 * file is replaced atomically (a link at --out kept, owner and mode kept, no
 * staged file left on a full disk), bad --out and --template are refused at
 * start, and a bare command name is found under the unit's deno flags.
 */
import assert from "node:assert/strict";
import { DEFAULT_PREFIX, encodeRecord, instanceKey } from "../lib/record.ts";
import { NGINX, NginxProcess } from "../testbed/nginx.ts";
import {
  type EtcdCluster,
  EtcdGateway,
  EVENT_MS,
  loopback,
  READY_MS,
  ROOT,
  runScript,
  Script,
  TestServer,
  waitFor,
} from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);
const SHIPPED = `${ROOT}units/examples/nginx/apache-upstream.conf.tmpl`;
const RENDER_FLAGS = ["--allow-net", "--allow-env", "--allow-read", "--allow-write", "--allow-run"];
/** The issue's payload: a weight that closes the upstream and opens a server serving /etc. */
const INJECTED_PORT = 18098;
const injection = (ip: string) =>
  `1; } server { listen ${ip}:${INJECTED_PORT}; location / { alias /etc/; autoindex on; } } upstream y { server 127.0.0.1:1`;
/** A template as an operator may have written one before the validated weights: meta inserted with {{x}}. */
const META_TEMPLATE = [
  "upstream apache {",
  "{{#instances}}",
  "    server {{address}}{{#meta.weight}} weight={{meta.weight}}{{/meta.weight}} max_fails=1 fail_timeout=2s; # {{host}}{{constructor}}{{__proto__}}{{toString}}",
  "{{/instances}}",
  "{{^instances}}",
  "    server 127.0.0.1:9 down;",
  "{{/instances}}",
  "}",
  "",
].join("\n");

interface Bed {
  dir: string;
  cluster: EtcdCluster;
  gateway: EtcdGateway;
  endpoints: string;
  nginxDir: string;
  out: string;
  scripts: Script[];
  nginx?: NginxProcess;
  put(ip: string, port: number, meta?: Record<string, string>, host?: string): Promise<string>;
  render(extra: string[], options?: { flags?: string[]; env?: Record<string, string> }): Script;
  once(extra: string[], options?: { flags?: string[]; env?: Record<string, string> }): Promise<
    { code: number; stderr: string }
  >;
  upstream(): Promise<string[]>;
}

async function withBed(fn: (bed: Bed) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "secretary-render-trust-" });
  const cluster = await lo.etcd();
  await cluster.start();
  const endpoints = cluster.endpoints.join(",");
  const nginxDir = `${dir}/nginx`;
  await Deno.mkdir(`${nginxDir}/conf.d`, { recursive: true });
  const scripts: Script[] = [];
  const bed: Bed = {
    dir,
    cluster,
    gateway: new EtcdGateway(cluster.endpoints),
    endpoints,
    nginxDir,
    out: `${nginxDir}/conf.d/apache-upstream.conf`,
    scripts,
    async put(ip, port, meta = {}, host = "h") {
      const key = instanceKey(DEFAULT_PREFIX, "apache", ip, port);
      const record = { host, ipv4_addr: ip, port, service: "apache", registered_at: "2026-01-01T00:00:00Z", meta };
      await this.gateway.put(key, encodeRecord(record));
      return key;
    },
    render(extra, options = {}) {
      const s = Script.deno("registry.ts", ["render", "apache", `--endpoints=${endpoints}`, ...extra], {
        flags: RENDER_FLAGS,
        ...options,
      });
      scripts.push(s);
      return s;
    },
    async once(extra, options = {}) {
      const r = await runScript("registry.ts", ["render", "apache", `--endpoints=${endpoints}`, "--once", ...extra], {
        flags: RENDER_FLAGS,
        ...options,
      });
      return { code: r.code, stderr: r.stderr };
    },
    async upstream() {
      const text = await Deno.readTextFile(this.out).catch(() => "");
      return [...text.matchAll(/^\s*server (\S+) /gm)].map((m) => m[1]).filter((a) => a !== "127.0.0.1:9").sort();
    },
  };
  try {
    await fn(bed);
  } finally {
    for (const s of scripts) s.kill("SIGKILL");
    await Promise.all(scripts.map((s) => s.finished()));
    await bed.nginx?.stop();
    await cluster.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

/** nginx -t's words for this bed's nginx, as --check wants them. */
const nginxCheck = (bed: Bed) => `--check=${NGINX} -t -q ${NginxProcess.args(bed.nginxDir).join(" ")}`;
const nginxReload = (bed: Bed) => `--reload=${NGINX} ${NginxProcess.args(bed.nginxDir).join(" ")} -s reload`;

/** Starts nginx on an empty upstream (the file must exist first), proxying / to `upstream apache`. */
async function startNginx(bed: Bed): Promise<NginxProcess> {
  await Deno.writeTextFile(bed.out, "upstream apache {\n    server 127.0.0.1:9 down;\n}\n");
  bed.nginx = await NginxProcess.start({ dir: bed.nginxDir, ip: lo.ip(1), port: 8000, upstream: "apache" });
  return bed.nginx;
}

async function connects(hostname: string, port: number): Promise<boolean> {
  try {
    (await Deno.connect({ hostname, port })).close();
    return true;
  } catch {
    return false;
  }
}

/** The status of a GET on a connection of its own (HTTP/1.0: closed after it, so no old worker keeps it). */
async function getOnce(hostname: string, port: number): Promise<number> {
  const conn = await Deno.connect({ hostname, port });
  try {
    await conn.write(new TextEncoder().encode("GET / HTTP/1.0\r\n\r\n"));
    let text = "";
    const buffer = new Uint8Array(4096);
    for (let n; (n = await conn.read(buffer)) !== null;) text += new TextDecoder().decode(buffer.subarray(0, n));
    return Number(/^HTTP\/1\.\d (\d{3})/.exec(text)?.[1]);
  } finally {
    conn.close();
  }
}

/** nginx's whole configuration as it would load it now (`nginx -T`). */
async function nginxConfig(bed: Bed): Promise<string> {
  const out = await new Deno.Command(NGINX, { args: ["-T", ...NginxProcess.args(bed.nginxDir)] }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout);
}

async function upstreamIs(bed: Bed, expected: string[], what: string): Promise<void> {
  const want = [...expected].sort();
  await waitFor(
    async () => JSON.stringify(await bed.upstream()) === JSON.stringify(want),
    `${what}: upstream ${JSON.stringify(await bed.upstream())}`,
    EVENT_MS,
    50,
  );
}

Deno.test("render: a record's meta cannot inject configuration into nginx, with the shipped template or one inserting meta", async () => {
  await withBed(async (bed) => {
    const nginx = await startNginx(bed);
    const a = await TestServer.start(lo.ip(2));
    const injectedIp = lo.ip(98);
    const hostileHost = `h\n} server { listen ${lo.ip(97)}:${INJECTED_PORT}; } upstream z { server 127.0.0.1:1;`;
    const aKey = await bed.put(a.host, a.port, { weight: injection(injectedIp) }, hostileHost);
    // the shipped template: the instance is in, with no weight (its weight is not one)
    const shipped = await bed.once([`--template=${SHIPPED}`, `--out=${bed.out}`, nginxCheck(bed), nginxReload(bed)]);
    assert.equal(shipped.code, 0, shipped.stderr);
    assert.deepEqual(await bed.upstream(), [`${a.host}:${a.port}`]);
    assert.match(await Deno.readTextFile(bed.out), new RegExp(`server ${a.host}:${a.port} max_fails=1`));
    await waitFor(async () => (await nginx.reloads()) >= 1, "nginx reloaded", EVENT_MS);
    // the reload is asynchronous: the old worker serves the old upstream a moment longer
    await waitFor(async () => (await getOnce(nginx.ip, nginx.port)) === 200, "nginx serving through a", EVENT_MS);

    // a template that inserts meta and the host with {{x}}: the instance is left out, and named
    await Deno.writeTextFile(`${bed.dir}/meta.tmpl`, META_TEMPLATE);
    const meta = await bed.once([
      `--template=${bed.dir}/meta.tmpl`,
      `--out=${bed.out}`,
      nginxCheck(bed),
      nginxReload(bed),
    ]);
    assert.equal(meta.code, 0, meta.stderr);
    assert.match(meta.stderr, new RegExp(`^instance left out key=${aKey} reason="meta\\.weight does not fit`, "m"));
    assert.deepEqual(await bed.upstream(), [], meta.stderr);
    const text = await Deno.readTextFile(bed.out);
    assert.doesNotMatch(text, /function|object|\[native/, "{{constructor}} and friends resolved");
    await waitFor(async () => (await nginx.reloads()) >= 2, "nginx reloaded again", EVENT_MS);

    // nothing foreign in what nginx loads, and nothing listens where the payloads said
    const config = await nginxConfig(bed);
    assert.doesNotMatch(config, new RegExp(`${INJECTED_PORT}|alias /etc|upstream [yz] `), config);
    assert.equal(await connects(injectedIp, INJECTED_PORT), false, "the injected server listens");
    assert.equal(await connects(lo.ip(97), INJECTED_PORT), false, "the host's injected server listens");
    await a.close();
  });
});

Deno.test("render: weights nginx refuses (0, abc, a 5 KB token) freeze nothing: they are left out, and a later addition and removal land in nginx", async () => {
  await withBed(async (bed) => {
    const nginx = await startNginx(bed);
    await Deno.writeTextFile(`${bed.dir}/meta.tmpl`, META_TEMPLATE);
    const [a, e] = await Promise.all([2, 5].map((n) => TestServer.start(lo.ip(n))));
    await bed.put(a.host, a.port, { weight: "2" });
    const render = bed.render([
      `--template=${bed.dir}/meta.tmpl`,
      `--out=${bed.out}`,
      nginxCheck(bed),
      nginxReload(bed),
    ]);
    await upstreamIs(bed, [`${a.host}:${a.port}`], "a");
    await render.waitForLog(/^reloaded /, EVENT_MS);
    const bad = [
      await bed.put(lo.ip(3), 8080, { weight: "0" }),
      await bed.put(lo.ip(4), 8080, { weight: "abc" }),
      await bed.put(lo.ip(6), 8080, { weight: "9".repeat(5000) }),
    ];
    await bed.put(e.host, e.port);
    await upstreamIs(bed, [`${a.host}:${a.port}`, `${e.host}:${e.port}`], "e added; the bad ones left out");
    for (const key of bad) await render.waitForLog(new RegExp(`^instance left out key=${key} `), EVENT_MS);
    await bed.gateway.delete(instanceKey(DEFAULT_PREFIX, "apache", a.host, a.port));
    await upstreamIs(bed, [`${e.host}:${e.port}`], "a removed");
    // in nginx: once reloaded (its old worker gone), no request reaches a, on new connections
    const reachesOnlyE = async () => {
      const before = { a: a.requests, e: e.requests };
      for (let i = 0; i < 10; i++) assert.equal(await getOnce(nginx.ip, nginx.port), 200);
      return a.requests === before.a && e.requests === before.e + 10;
    };
    await waitFor(reachesOnlyE, "nginx sends nothing more to the removed instance", EVENT_MS);
    assert.equal((render.stderr.match(/^instance left out /gm) ?? []).length, 3, render.stderr);
    await Promise.all([a.close(), e.close()]);
  });
});

/** A reload command that fails its first `failures` runs, counting each run in `${dir}/runs`. */
async function flakyReload(dir: string, failures: number): Promise<string> {
  const path = `${dir}/reload.sh`;
  await Deno.writeTextFile(
    path,
    `#!/bin/sh\necho run >> ${dir}/runs\n[ "$(wc -l < ${dir}/runs)" -gt ${failures} ] || { echo refused; exit 1; }\n`,
  );
  await Deno.chmod(path, 0o755);
  return path;
}

const runs = async (dir: string) => (await Deno.readTextFile(`${dir}/runs`).catch(() => "")).split("\n").length - 1;
const marker = (bed: Bed) => `${bed.nginxDir}/conf.d/.apache-upstream.conf.reload-pending`;
const exists = (path: string) => Deno.lstat(path).then(() => true, () => false);

Deno.test("render: a failed reload is retried with backoff until it succeeds, with nothing changing", async () => {
  await withBed(async (bed) => {
    const reload = await flakyReload(bed.dir, 2);
    await bed.put(lo.ip(2), 8080);
    const render = bed.render([`--template=${SHIPPED}`, `--out=${bed.out}`, `--reload=${reload}`]);
    await render.waitForLog(/^reloaded /, EVENT_MS);
    assert.equal(await runs(bed.dir), 3);
    assert.equal((render.stderr.match(/^reload failed .*retry_ms=\d+/gm) ?? []).length, 2, render.stderr);
    assert.equal((render.stderr.match(/^rendered /gm) ?? []).length, 1, "rendered once: the retries are reloads only");
    assert.equal(await exists(marker(bed)), false, "the reload-pending marker stayed");
    // and the next change is rendered and reloaded as usual
    await bed.put(lo.ip(3), 8080);
    await waitFor(async () => (await runs(bed.dir)) === 4, "the next reload", EVENT_MS);
  });
});

Deno.test("render --once: exits 1 while the file on disk was never reloaded, even when unchanged; 0 once a reload succeeds", async () => {
  await withBed(async (bed) => {
    await bed.put(lo.ip(2), 8080);
    const base = [`--template=${SHIPPED}`, `--out=${bed.out}`];
    const failing = await bed.once([...base, "--reload=/bin/false"]);
    assert.equal(failing.code, 1, failing.stderr);
    assert.match(failing.stderr, /^reload failed /m);
    const unchanged = await bed.once([...base, "--reload=/bin/false"]);
    assert.equal(unchanged.code, 1, `unchanged, but never reloaded: ${unchanged.stderr}`);
    assert.equal(await exists(marker(bed)), true);
    const reload = await flakyReload(bed.dir, 0);
    const ok = await bed.once([...base, `--reload=${reload}`]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(await runs(bed.dir), 1);
    assert.equal(await exists(marker(bed)), false);
    const again = await bed.once([...base, `--reload=${reload}`]);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(await runs(bed.dir), 1, "reloaded with nothing changed and nothing owed");
    assert.deepEqual([...Deno.readDirSync(`${bed.nginxDir}/conf.d`)].map((e) => e.name), ["apache-upstream.conf"]);
  });
});

Deno.test("render: a link at --out is kept and its target replaced, with its owner and mode; links planted at the marker are not followed", async () => {
  await withBed(async (bed) => {
    await bed.put(lo.ip(2), 8080);
    const available = `${bed.dir}/available`;
    await Deno.mkdir(available);
    const real = `${available}/apache.conf`;
    await Deno.writeTextFile(real, "# old\n");
    await Deno.chmod(real, 0o664);
    const root = Deno.uid() === 0;
    if (root) await Deno.chown(real, 65534, 65534);
    await Deno.symlink("../../available/apache.conf", bed.out);
    // a link planted where the reload marker goes, to a file it must not touch
    await Deno.writeTextFile(`${bed.dir}/victim`, "precious\n");
    await Deno.symlink(`${bed.dir}/victim`, `${available}/.apache.conf.reload-pending`);
    const r = await bed.once([`--template=${SHIPPED}`, `--out=${bed.out}`, "--reload=/bin/true"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(Deno.lstatSync(bed.out).isSymlink, true, "the link became a plain file");
    assert.equal(Deno.readLinkSync(bed.out), "../../available/apache.conf");
    assert.match(await Deno.readTextFile(real), new RegExp(`server ${lo.ip(2)}:8080 `));
    const info = Deno.statSync(real);
    assert.equal(info.mode! & 0o7777, 0o664, "the mode");
    if (root) assert.deepEqual([info.uid, info.gid], [65534, 65534], "the owner");
    assert.equal(await Deno.readTextFile(`${bed.dir}/victim`), "precious\n");
    assert.deepEqual([...Deno.readDirSync(available)].map((e) => e.name).sort(), ["apache.conf"]);
  });
});

Deno.test({
  name: "render: on a full disk the render fails and leaves no staged file; the previous file stays",
  ignore: Deno.uid() !== 0, // a tmpfs of its own needs root
  fn: async () => {
    await withBed(async (bed) => {
      const disk = `${bed.dir}/disk`;
      await Deno.mkdir(disk);
      const mount = await new Deno.Command("mount", { args: ["-t", "tmpfs", "-o", "size=64k", "tmpfs", disk] })
        .output();
      assert.equal(mount.code, 0, new TextDecoder().decode(mount.stderr));
      try {
        const out = `${disk}/apache.conf`;
        await Deno.writeTextFile(out, "# previous\n");
        // a template larger than the room left
        await Deno.writeTextFile(
          `${bed.dir}/big.tmpl`,
          `# ${"x".repeat(40_000)}\n{{#instances}}{{address}}\n{{/instances}}`,
        );
        await Deno.writeFile(`${disk}/filler`, new Uint8Array(40_000));
        await bed.put(lo.ip(2), 8080);
        const r = await bed.once([`--template=${bed.dir}/big.tmpl`, `--out=${out}`]);
        assert.equal(r.code, 1, r.stderr);
        assert.match(r.stderr, /ENOSPC|No space/i);
        assert.deepEqual([...Deno.readDirSync(disk)].map((e) => e.name).sort(), ["apache.conf", "filler"]);
        assert.equal(await Deno.readTextFile(out), "# previous\n");
      } finally {
        await new Deno.Command("umount", { args: [disk] }).output();
      }
    });
  },
});

Deno.test("render: --out a folder, a --template that is a device, a FIFO or too large: one line, exit 2, nothing written", async () => {
  await withBed(async (bed) => {
    await Deno.mkdir(`${bed.dir}/folder`);
    const fifo = await new Deno.Command("mkfifo", { args: [`${bed.dir}/fifo`] }).output();
    assert.equal(fifo.code, 0);
    await Deno.writeTextFile(`${bed.dir}/huge.tmpl`, "#".repeat(1024 * 1024 + 1));
    const cases: [string[], RegExp][] = [
      [[`--template=${SHIPPED}`, `--out=${bed.dir}/folder`], /--out ".*folder": a folder; expected a file/],
      [["--template=/dev/zero", `--out=${bed.out}`], /--template "\/dev\/zero": not a regular file/],
      [[`--template=${bed.dir}/fifo`, `--out=${bed.out}`], /--template ".*fifo": not a regular file/],
      [[`--template=${bed.dir}/huge.tmpl`, `--out=${bed.out}`], /--template ".*huge\.tmpl": larger than 1048576 bytes/],
    ];
    const results = await Promise.all(
      cases.map(([args]) =>
        runScript("registry.ts", ["render", "apache", `--endpoints=${bed.endpoints}`, ...args], {
          flags: RENDER_FLAGS,
          timeoutMs: READY_MS,
        })
      ),
    );
    results.forEach((r, i) => {
      assert.equal(r.code, 2, `${cases[i][0].join(" ")}: ${r.stderr}`);
      assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
      assert.match(r.stderr, cases[i][1]);
    });
    assert.deepEqual([...Deno.readDirSync(`${bed.nginxDir}/conf.d`)], [], "something was written");
    assert.deepEqual([...Deno.readDirSync(`${bed.dir}/folder`)], []);
  });
});

Deno.test("render: a bare command name is found under the unit's deno flags (--allow-read of the binary only), or the refusal names what is missing", async () => {
  await withBed(async (bed) => {
    await bed.put(lo.ip(2), 8080);
    await Deno.copyFile(SHIPPED, `${bed.dir}/apache.tmpl`);
    // the unit's: read the template, the output's folder and nginx's binary; PATH as systemd gives it
    const flags = [
      "--allow-net",
      `--allow-read=${bed.dir}/apache.tmpl,${bed.nginxDir}/conf.d,${NGINX},${Deno.realPathSync(`${ROOT}node_modules`)}`, // from source: etcd3's proto
      `--allow-write=${bed.nginxDir}/conf.d`,
      "--allow-run",
      "--allow-env",
    ];
    const env = { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" };
    const base = [`--template=${bed.dir}/apache.tmpl`, `--out=${bed.out}`];
    const found = await bed.once([...base, "--check=nginx -v"], { flags, env });
    assert.equal(found.code, 0, found.stderr);
    const missing = await bed.once([...base, "--check=apache2ctl -t"], { flags, env });
    assert.equal(missing.code, 2, missing.stderr);
    assert.match(
      missing.stderr,
      /--check "apache2ctl -t": no executable apache2ctl in PATH; cannot look at \/usr\/local\/sbin\/apache2ctl, .*: give the command's full path, and add it to deno's --allow-read/,
    );
  });
});
