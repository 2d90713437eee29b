/**
 * `registry sync` across reloads of HAProxy, as `systemctl reload haproxy`
 * does them (a new process takes the listening sockets over, `-sf` the old
 * one), with the shipped example config: its `server-template` slots and
 * `load-server-state-from-file`, and the sync's `--state-file`. Requests
 * through HAProxy under load, keep-alive clients alternating GET and POST
 * with no retry of their own, count every failure.
 */
import assert from "node:assert/strict";
import { parseServersState } from "../lib/haproxy.ts";
import { encodeRecord, instanceKey } from "../lib/record.ts";
import { exampleConfig, HAProxyProcess } from "../testbed/haproxy.ts";
import { type Failure, load } from "../testbed/traffic.ts";
import { EtcdGateway, EVENT_MS, loopback, READY_MS, Script, waitFor } from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);
const SYNC_FLAGS = ["--allow-net", "--allow-env", "--allow-read", "--allow-write"];
const RELOADS = 5;

Deno.test("sync: 0 failed requests across 5 HAProxy reloads (-sf) with the example config's slots and state file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "secretary-sync-reload-" });
  const cluster = await lo.etcd();
  await cluster.start();
  const gateway = new EtcdGateway(cluster.endpoints);
  const haproxyDir = `${dir}/haproxy`;
  await Deno.mkdir(haproxyDir);
  const ip = lo.ip(1);
  const haproxy = await HAProxyProcess.start({
    dir: haproxyDir,
    ip,
    port: 8000,
    backend: "web",
    config: await exampleConfig({ dir: haproxyDir, ip, port: 8000, backend: "web", slots: 10 }),
  });
  const scripts: Script[] = [];
  const stop = new AbortController();
  try {
    const instances = [2, 3, 4].map((n) => {
      const s = Script.deno("testbed/traffic.ts", ["serve", lo.ip(n), "8080", "--work-ms=5"], {
        flags: ["--allow-net"],
      });
      scripts.push(s);
      return { ip: lo.ip(n), script: s };
    });
    for (const { script } of instances) await waitFor(() => script.stdout.includes("listening"), "listening", READY_MS);
    for (const { ip } of instances) {
      const record = { host: "h", ipv4_addr: ip, port: 8080, service: "web", registered_at: "", meta: {} };
      await gateway.put(instanceKey("/services", "web", ip, 8080), encodeRecord(record));
    }
    const stateFile = `${haproxyDir}/web`; // the example's server-state-base, named as the backend
    const sync = Script.deno("registry.ts", [
      "sync",
      "web",
      `--haproxy=${haproxy.adminSocket}`,
      "--backend=web",
      `--state-file=${stateFile}`,
      `--endpoints=${cluster.endpoints.join(",")}`,
    ], { flags: SYNC_FLAGS });
    scripts.push(sync);

    const wanted = instances.map((i) => `${i.ip}:8080`).sort();
    const inRotation = (text: string) =>
      parseServersState(text).filter((s) => !s.maint && s.opState === 2).map((s) => `${s.ip}:${s.port}`).sort();
    const slotsFilled = (text: string) => JSON.stringify(inRotation(text)) === JSON.stringify(wanted);
    await waitFor(
      async () => slotsFilled(await haproxy.client().run("show servers state web")),
      () => `three slots filled and up\n${sync.stderr}`,
      EVENT_MS,
    );
    // the state file has them too (written after the pass that filled them, and again as their checks came up)
    await waitFor(
      () => Deno.readTextFile(stateFile).then(slotsFilled, () => false),
      () => `the state file written\n${sync.stderr}`,
      EVENT_MS,
    );

    const failures: Failure[] = [];
    const received = () => instances.reduce((n, i) => n + (i.script.stdout.match(/^(GET|POST) /gm)?.length ?? 0), 0);
    const running = load([`http://${ip}:8000/`], {
      clients: 4,
      deadlineMs: 5000,
      label: () => "reload",
      onFailure: (f) => failures.push(f),
    }, stop.signal);
    const moreRequests = async (what: string) => {
      const from = received();
      await waitFor(() => received() >= from + 100, () => `100 more requests ${what}\n${haproxy.stderr}`, EVENT_MS);
    };
    await moreRequests("before the first reload");
    for (let i = 1; i <= RELOADS; i++) {
      const before = haproxy.pid;
      await haproxy.reload(); // resolves once the old process has exited
      assert.notEqual(haproxy.pid, before);
      // the new process has the servers in rotation from the state file (the sync may not have passed yet)
      assert.ok(slotsFilled(await haproxy.client().run("show servers state web")), `after reload ${i}`);
      await moreRequests(`after reload ${i}`);
    }
    stop.abort();
    const { totals } = await running;
    const counts = totals[0].reload;
    const sent = counts.GET.ok + counts.POST.ok + failures.length;
    console.log(`reloads: ${RELOADS}, requests ${sent}, failed ${failures.length}`);
    assert.equal(
      failures.length,
      0,
      `${failures.length} failed of ${sent}, the first: ${JSON.stringify(failures.slice(0, 3))}`,
    );
    assert.ok(counts.POST.ok > 50 && counts.GET.ok > 50, JSON.stringify(counts));
    await sync.waitForLog(/^haproxy restarted /, EVENT_MS);
    assert.doesNotMatch(sync.stderr, /haproxy (refused|unreachable)|state file not written/, sync.stderr);
  } finally {
    stop.abort();
    for (const s of scripts) s.kill("SIGKILL");
    await Promise.all(scripts.map((s) => s.finished()));
    await haproxy.stop();
    await cluster.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
