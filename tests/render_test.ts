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
import { DEFAULT_PREFIX, instanceKey } from "../lib/record.ts";
import { NGINX, NginxProcess } from "../testbed/nginx.ts";
import {
  bundles,
  delay,
  type EtcdCluster,
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

Deno.test("render: a failing check leaves the previous file and nginx serving; the next change tries again", async () => {
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
    assert.equal(await bed.reloads(), reloads, "reloaded after a failed check");
    assert.equal(await get(`http://${nginx.ip}:${nginx.port}/`), 200);
    assert.deepEqual([...Deno.readDirSync(`${bed.dir}/nginx/conf.d`)].map((e) => e.name), ["apache-upstream.conf"]);

    sb.kill("SIGTERM"); // the next change renders what passes
    await waitFor(
      async () => (await bed.reloads()) > reloads || render.stderr.includes("render unchanged"),
      "a render",
      EVENT_MS,
    );
    assert.equal(await Deno.readTextFile(bed.out), good);
    await Promise.all([a.close(), b.close()]);
  });
});

Deno.test("render: --wait turns a burst of additions into few reloads, and a removal in the burst is rendered at once", async () => {
  await withBed(async (bed) => {
    await startNginx(bed);
    const first = await TestServer.start(lo.ip(2));
    const render = bed.render(["--wait=2s:10s"]);
    const s0 = bed.secretary(first);
    await upstreamIs(bed, [`${first.host}:${first.port}`], "the first instance");
    // the file is in place before its reload has run: count reloads once that one is done
    await render.waitForLog(/^reloaded /, EVENT_MS);
    const before = await bed.reloads();
    // the burst: four new instances, and the first one stopped in the middle of it
    const burst = await Promise.all([3, 4, 5, 6].map((n) => TestServer.start(lo.ip(n))));
    for (const t of burst.slice(0, 2)) bed.secretary(t);
    await delay(300);
    const firstKey = instanceKey(DEFAULT_PREFIX, "apache", first.host, first.port);
    s0.kill("SIGTERM");
    await waitFor(async () => (await bed.etcd.get(firstKey)) === undefined, "the first record gone", EVENT_MS);
    const goneAt = Date.now();
    await waitFor(
      async () => !(await bed.upstream()).includes(`${first.host}:${first.port}`),
      "removal rendered",
      EVENT_MS,
      20,
    );
    const removalMs = Date.now() - goneAt;
    assert.ok(removalMs < 1500, `the removal waited ${removalMs} ms, as long as --wait's 2 s`);
    for (const t of burst.slice(2)) bed.secretary(t);
    await upstreamIs(bed, burst.map((t) => `${t.host}:${t.port}`), "the burst rendered");
    await delay(2500); // past the quiet window: nothing more to render
    const reloads = (await bed.reloads()) - before;
    // five changes (four additions, one removal): the removal at once, the additions in one or two windows
    assert.ok(reloads >= 2 && reloads <= 3, `${reloads} reloads for five changes\n${render.stderr}`);
    await Promise.all([first, ...burst].map((t) => t.close()));
  });
});

Deno.test("render: etcd down renders nothing, and the file is rendered again once etcd answers", async () => {
  await withBed(async (bed) => {
    await startNginx(bed);
    const a = await TestServer.start(lo.ip(2));
    const render = bed.render();
    bed.secretary(a);
    await upstreamIs(bed, [`${a.host}:${a.port}`], "registered");
    const rendered = await Deno.readTextFile(bed.out);
    const [member] = bed.cluster.members;
    await member.stop("SIGKILL");
    await render.waitForLog(/^etcd unreachable /, EVENT_MS);
    await delay(7000); // past the 5 s TTL
    assert.equal(await Deno.readTextFile(bed.out), rendered, "rendered from a failed read");
    member.start("existing");
    await bed.cluster.waitReady();
    await render.waitForLog(/^etcd answered/, EVENT_MS);
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
