/**
 * `registry render` against Debian's nginx, started in the foreground with
 * its own prefix and config, its upstream block rendered from the registry
 * with units/examples/nginx/apache-upstream.conf.tmpl: instances added,
 * stopped and killed show in the upstream; a failing --check leaves the old
 * file and nginx serving; --wait turns a burst of additions into one reload
 * while a removal is rendered at once; etcd down renders nothing; bad input
 * at start is one line, exit 2, nothing written.
 */
import assert from "node:assert/strict";
import { DEFAULT_PREFIX, encodeRecord, instanceKey } from "../lib/record.ts";
import { NGINX, NginxProcess } from "../testbed/nginx.ts";
import {
  bundles,
  delay,
  type EtcdCluster,
  EtcdGateway,
  EVENT_MS,
  execStart,
  loopback,
  READY_MS,
  ROOT,
  runScript,
  Script,
  SOURCE_FLAGS,
  TestServer,
  unitEnvironment,
  waitFor,
} from "../testbed/testbed.ts";
import type { Etcd } from "../lib/etcd.ts";

const lo = loopback(import.meta.url);
const TEMPLATE = `${ROOT}units/examples/nginx/apache-upstream.conf.tmpl`;
const FAST = ["--interval=500ms", "--timeout=300ms", "--ttl=5s", "--hostname=h", "--service=apache"];
const RECORD = { host: "h", registered_at: "2026-01-01T00:00:00Z", meta: {} };
const RENDER_FLAGS = ["--allow-net", "--allow-env", "--allow-read", "--allow-write", "--allow-run"];

interface Bed {
  dir: string;
  cluster: EtcdCluster;
  etcd: Etcd;
  endpoints: string;
  out: string;
  /** The file the reload script appends a line to at each reload. */
  reloadsFile: string;
  scripts: Script[];
  nginx?: NginxProcess;
  render(extra?: string[]): Script;
  secretary(t: { host: string; port: number }, extra?: string[]): Script;
  reloads(): Promise<number>;
  upstream(): Promise<string[]>;
}

async function withBed(fn: (bed: Bed) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "secretary-render-" });
  const cluster = await lo.etcd();
  await cluster.start();
  const etcd = cluster.client();
  const endpoints = cluster.endpoints.join(",");
  const nginxDir = `${dir}/nginx`;
  await Deno.mkdir(`${nginxDir}/conf.d`, { recursive: true });
  const reloadsFile = `${dir}/reloads`;
  // the reload command: count it, then reload this nginx
  await Deno.writeTextFile(
    `${dir}/reload.sh`,
    `#!/bin/sh\necho reload >> ${reloadsFile}\nexec ${NGINX} ${NginxProcess.args(nginxDir).join(" ")} -s reload\n`,
  );
  await Deno.chmod(`${dir}/reload.sh`, 0o755);
  const scripts: Script[] = [];
  const bed: Bed = {
    dir,
    cluster,
    etcd,
    endpoints,
    out: `${nginxDir}/conf.d/apache-upstream.conf`,
    reloadsFile,
    scripts,
    render(extra = []) {
      const s = Script.deno("registry.ts", [
        "render",
        "apache",
        `--template=${TEMPLATE}`,
        `--out=${this.out}`,
        `--check=${NGINX} -t -q ${NginxProcess.args(nginxDir).join(" ")}`,
        `--reload=${dir}/reload.sh`,
        `--endpoints=${endpoints}`,
        ...extra,
      ], { flags: RENDER_FLAGS });
      scripts.push(s);
      return s;
    },
    secretary(t, extra = []) {
      const s = Script.deno("secretary.ts", [
        String(t.port),
        `--ip=${t.host}`,
        `--endpoints=${endpoints}`,
        ...FAST,
        ...extra,
      ], {
        flags: SOURCE_FLAGS,
      });
      scripts.push(s);
      return s;
    },
    async reloads() {
      const text = await Deno.readTextFile(reloadsFile).catch(() => "");
      return text.split("\n").filter((l) => l === "reload").length;
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
    etcd.close();
    await cluster.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Renders once (as a unit's ExecStartPre would), then starts nginx on it. */
async function startNginx(bed: Bed): Promise<NginxProcess> {
  const once = await runScript("registry.ts", [
    "render",
    "apache",
    `--template=${TEMPLATE}`,
    `--out=${bed.out}`,
    `--endpoints=${bed.endpoints}`,
    "--once",
  ], { flags: RENDER_FLAGS });
  assert.equal(once.code, 0, once.stderr);
  bed.nginx = await NginxProcess.start({ dir: `${bed.dir}/nginx`, ip: lo.ip(1), port: 8000, upstream: "apache" });
  return bed.nginx;
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

async function get(url: string): Promise<number> {
  const res = await fetch(url);
  await res.arrayBuffer();
  return res.status;
}

Deno.test("render: instances added, stopped and killed show in nginx's upstream, and nginx serves through it", async () => {
  await withBed(async (bed) => {
    const nginx = await startNginx(bed);
    assert.deepEqual(await bed.upstream(), [], "no instance yet: only the placeholder");
    const render = bed.render();
    await render.waitForLog(/^started /, READY_MS);
    const servers = await Promise.all([2, 3].map((n) => TestServer.start(lo.ip(n))));
    const names = servers.map((t) => `${t.host}:${t.port}`);
    const secretaries = servers.map((t) => bed.secretary(t));
    await upstreamIs(bed, names, "two registered");
    await waitFor(async () => (await get(`http://${nginx.ip}:${nginx.port}/`)) === 200, "nginx serving", EVENT_MS);

    secretaries[0].kill("SIGTERM");
    await upstreamIs(bed, names.slice(1), "one stopped");
    await servers[1].close();
    await upstreamIs(bed, [], "one killed: none left");
    assert.match(await Deno.readTextFile(bed.out), /server 127\.0\.0\.1:9 down;/, "the placeholder keeps it valid");
    await waitFor(async () => (await nginx.reloads()) >= 3, "nginx reloaded after each change", EVENT_MS);
    await servers[0].close();
    assert.doesNotMatch(render.stderr, /check failed|reload failed/, render.stderr);
  });
});

Deno.test("render: the nginx example unit's ExecStart (the bundle, the unit's least privilege) renders and reloads", async () => {
  await withBed(async (bed) => {
    const nginx = await startNginx(bed);
    const nginxDir = `${bed.dir}/nginx`;
    const unit = `${ROOT}units/examples/nginx/registry-nginx@.service`;
    const vars = { SECRETARY_ETCD: new URL(bed.endpoints.split(",")[0]).host, "%i": "apache" };
    // the unit's paths, moved into this test's folder; its commands given this nginx's prefix and config
    await Deno.mkdir(`${bed.dir}/secretary`);
    await Deno.copyFile(TEMPLATE, `${bed.dir}/secretary/apache-upstream.conf.tmpl`);
    const own = `${NGINX} ${NginxProcess.args(nginxDir).join(" ")}`;
    const argv = (await execStart(unit, vars, await bundles())).map((word) =>
      word.replaceAll("/etc/nginx/conf.d", `${nginxDir}/conf.d`).replaceAll("/etc/nginx/", `${bed.dir}/`)
        .replace(/^\/usr\/sbin\/nginx (-t -q|-s reload)$/, `${own} $1`)
    );
    assert.ok(argv.some((w) => w.startsWith(own)), `the unit's commands: ${argv.join(" ")}`);
    const env = await unitEnvironment(unit);
    for (const [k, v] of Object.entries(env)) env[k] = v.replaceAll("%C", `${bed.dir}/cache`);
    const render = new Script(argv[0], argv.slice(1), { ...env, ...vars, PATH: "/usr/sbin:/usr/bin:/bin" }, {
      clearEnv: true,
      cwd: bed.dir,
    });
    bed.scripts.push(render);
    await render.waitForLog(/^started /, READY_MS);
    const reloadsBefore = await nginx.reloads();
    const server = await TestServer.start(lo.ip(2));
    bed.secretary(server);
    await upstreamIs(bed, [`${server.host}:${server.port}`], "registered, through the unit's render");
    await waitFor(
      async () => (await nginx.reloads()) > reloadsBefore,
      "nginx reloaded by the unit's command",
      EVENT_MS,
    );
    assert.doesNotMatch(render.stderr, /NotCapable|Requires \w+ access|cannot be looked at|failed/, render.stderr);
    render.kill("SIGTERM");
    assert.equal((await render.finished(EVENT_MS)).code, 0, render.stderr);
    await server.close();
  });
});

Deno.test("render: a failing check leaves out the instance that fails it, nginx keeps serving, and a later good change lands and is reloaded", async () => {
  await withBed(async (bed) => {
    const nginx = await startNginx(bed);
    const a = await TestServer.start(lo.ip(2));
    // a check that fails for any upstream holding the address of b: in place, so the previous file comes back
    const b = await TestServer.start(lo.ip(3));
    await Deno.writeTextFile(`${bed.dir}/check.sh`, `#!/bin/sh\n! grep -q ${b.host}:${b.port} ${bed.out}\n`);
    await Deno.chmod(`${bed.dir}/check.sh`, 0o755);
    const render = bed.render([`--check=${bed.dir}/check.sh`]);
    bed.secretary(a);
    await upstreamIs(bed, [`${a.host}:${a.port}`], "a registered");
    // the file is in place before its reload has run: count reloads once that one is done
    await render.waitForLog(/^reloaded /, EVENT_MS);
    const good = await Deno.readTextFile(bed.out);
    const reloads = await bed.reloads();
    const sb = bed.secretary(b);
    await render.waitForLog(/^check failed .*reason="exit 1/, EVENT_MS);
    assert.equal(await Deno.readTextFile(bed.out), good, "the failed candidate stayed");
    await waitFor(async () => (await get(`http://${nginx.ip}:${nginx.port}/`)) === 200, "nginx serving a", EVENT_MS);
    assert.deepEqual([...Deno.readDirSync(`${bed.dir}/nginx/conf.d`)].map((e) => e.name), ["apache-upstream.conf"]);

    // the next good change lands, without b, and is reloaded
    const c = await TestServer.start(lo.ip(4));
    bed.secretary(c);
    await upstreamIs(bed, [`${a.host}:${a.port}`, `${c.host}:${c.port}`], "c added, b still left out");
    await waitFor(async () => (await bed.reloads()) > reloads, "c's render reloaded", EVENT_MS);
    assert.equal(await bed.reloads(), reloads + 1, "one reload: b's failed candidate was never reloaded");
    const bKey = instanceKey(DEFAULT_PREFIX, "apache", b.host, b.port);
    assert.match(render.stderr, /^check failed .*left_out=1 .*reason="exit 1/m);
    assert.match(render.stderr, new RegExp(`^instance left out key=${bKey} reason="check failed`, "m"));
    await waitFor(async () => (await get(`http://${nginx.ip}:${nginx.port}/`)) === 200, "nginx serving", EVENT_MS);
    sb.kill("SIGTERM");
    await Promise.all([a.close(), b.close(), c.close()]);
  });
});

Deno.test("render: --wait holds additions back until quiet, and a removal renders at once with whatever is pending", async () => {
  await withBed(async (bed) => {
    await startNginx(bed);
    const gateway = new EtcdGateway(bed.cluster.endpoints);
    const key = (n: number) => instanceKey(DEFAULT_PREFIX, "apache", lo.ip(n), 8080);
    const put = (n: number) =>
      gateway.put(key(n), encodeRecord({ ...RECORD, ipv4_addr: lo.ip(n), port: 8080, service: "apache" }));
    const address = (n: number) => `${lo.ip(n)}:8080`;
    await put(2);
    // a quiet window longer than any wait here: an addition alone would not render before the test gives up
    const render = bed.render(["--wait=30s:120s"]);
    await upstreamIs(bed, [address(2)], "the first listing, at once");
    await render.waitForLog(/^reloaded /, EVENT_MS);
    const before = await bed.reloads();
    // two additions, held back; then a removal: all three rendered at once, in one reload
    await put(3);
    await put(4);
    await gateway.delete(key(2));
    await upstreamIs(bed, [address(3), address(4)], "the removal, with the additions pending");
    // two more additions, then a put that turns a record into junk: a removal too
    await put(5);
    await put(6);
    await gateway.put(key(3), "not a record");
    await upstreamIs(bed, [address(4), address(5), address(6)], "the junk put, with the additions pending");
    const reloaded = () => render.stderr.split("\n").filter((l) => /^reloaded /.test(l)).length;
    await waitFor(() => reloaded() === 3, "the second reload done", EVENT_MS);
    assert.equal((await bed.reloads()) - before, 2, `six changes, two removals: two reloads\n${render.stderr}`);
  });
});

Deno.test("render: etcd down renders nothing, and the file is rendered again once etcd answers", async () => {
  await withBed(async (bed) => {
    await startNginx(bed);
    const a = await TestServer.start(lo.ip(2));
    const render = bed.render();
    bed.secretary(a);
    await upstreamIs(bed, [`${a.host}:${a.port}`], "registered");
    await render.waitForLog(/^reloaded /, EVENT_MS);
    const rendered = await Deno.readTextFile(bed.out);
    const renders = () => render.stderr.split("\n").filter((l) => /^rendered /.test(l)).length;
    const rendersBefore = renders();
    // the file watched through the whole outage, until etcd has answered again
    let outage = true;
    const texts = new Set<string>();
    const watching = (async () => {
      while (outage) {
        texts.add(await Deno.readTextFile(bed.out));
        await delay(50);
      }
    })();
    const [member] = bed.cluster.members;
    await member.stop("SIGKILL");
    await render.waitForLog(/^etcd unreachable /, EVENT_MS);
    await delay(7000); // the outage lasts past the 5 s TTL
    member.start("existing");
    await bed.cluster.waitReady();
    await render.waitForLog(/^etcd answered/, EVENT_MS);
    outage = false;
    await watching;
    assert.deepEqual([...texts], [rendered], "rendered from a failed read");
    assert.equal(renders(), rendersBefore, render.stderr);
    await upstreamIs(bed, [`${a.host}:${a.port}`], "after etcd answers");
    await a.close();
  });
});

Deno.test("render: a broken template, a missing output folder, an unrunnable command: one line, exit 2, nothing written", async () => {
  await withBed(async (bed) => {
    await Deno.writeTextFile(`${bed.dir}/broken.tmpl`, "upstream x {\n{{#instances}}\n  server {{address}};\n}\n");
    const base = ["render", "apache", `--endpoints=${bed.endpoints}`];
    const cases: [string[], RegExp][] = [
      [[`--template=${bed.dir}/broken.tmpl`, `--out=${bed.out}`], /--template ".*broken\.tmpl": Unclosed section/],
      [[`--template=${bed.dir}/none.tmpl`, `--out=${bed.out}`], /--template ".*none\.tmpl": ENOENT/],
      [[`--template=${TEMPLATE}`, `--out=${bed.dir}/no/such/out.conf`], /--out ".*out\.conf": no folder/],
      [
        [`--template=${TEMPLATE}`, `--out=${bed.out}`, "--check=/no/such/nginx -t"],
        /--check "\/no\/such\/nginx -t": no such executable file/,
      ],
      [
        [`--template=${TEMPLATE}`, `--out=${bed.out}`, "--reload=no-such-reloader"],
        /--reload "no-such-reloader": no executable/,
      ],
      [[`--template=${TEMPLATE}`, `--out=${bed.out}`, "--wait=5s:1s"], /--wait "5s:1s": expected MAX at least MIN/],
    ];
    const results = await Promise.all(
      cases.map(([args]) => runScript("registry.ts", [...base, ...args], { flags: RENDER_FLAGS })),
    );
    results.forEach((r, i) => {
      assert.equal(r.code, 2, `${cases[i][0].join(" ")}: ${r.stderr}`);
      assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
      assert.match(r.stderr, cases[i][1]);
    });
    assert.deepEqual([...Deno.readDirSync(`${bed.dir}/nginx/conf.d`)], [], "something was written");
  });
});
