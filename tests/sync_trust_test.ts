/**
 * `registry sync` against what an unlucky operator or a hostile record writer
 * does, with Debian's HAProxy and a real etcd: a burst of 5,000 deletions
 * all leave HAProxy; a command HAProxy refuses (a static server a
 * `use-server` rule references cannot be deleted) is logged once with the
 * server and the command and blocks nothing else; two syncs of different
 * services on one backend are told; 0.0.0.0, broadcast and multicast never
 * reach HAProxy.
 */
import assert from "node:assert/strict";
import { parseServersState } from "../lib/haproxy.ts";
import { encodeRecord, instanceKey } from "../lib/record.ts";
import { HAProxyProcess } from "../testbed/haproxy.ts";
import { type EtcdCluster, EVENT_MS, loopback, READY_MS, Script, waitFor } from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);
/** The sync's flags from source: etcd, and HAProxy's socket in the test's folder. */
const SYNC_FLAGS = ["--allow-net", "--allow-env", "--allow-read", "--allow-write"];

interface Bed {
  dir: string;
  cluster: EtcdCluster;
  haproxy: HAProxyProcess;
  sync(service: string, extra?: string[]): Script;
  /** etcd's JSON gateway: a transaction, or any other call. */
  post(path: string, body: unknown): Promise<Record<string, unknown>>;
}

async function withBed(backendLines: string[], fn: (bed: Bed) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "secretary-sync-trust-" });
  const cluster = await lo.etcd();
  await cluster.start();
  const endpoints = cluster.endpoints.join(",");
  const haproxy = await HAProxyProcess.start({
    dir: `${dir}/haproxy`,
    ip: lo.ip(1),
    port: 8000,
    backend: "web",
    backendLines,
  });
  const scripts: Script[] = [];
  try {
    await fn({
      dir,
      cluster,
      haproxy,
      sync(service, extra = []) {
        const s = Script.deno("registry.ts", [
          "sync",
          service,
          `--haproxy=${haproxy.adminSocket}`,
          "--backend=web",
          `--endpoints=${endpoints}`,
          ...extra,
        ], { flags: SYNC_FLAGS });
        scripts.push(s);
        return s;
      },
      async post(path, body) {
        const res = await fetch(`${cluster.endpoints[0]}${path}`, { method: "POST", body: JSON.stringify(body) });
        const text = await res.text();
        if (!res.ok) throw new Error(`${path}: ${res.status} ${text}`);
        return JSON.parse(text);
      },
    });
  } finally {
    for (const s of scripts) s.kill("SIGKILL");
    await Promise.all(scripts.map((s) => s.finished()));
    await haproxy.stop();
    await cluster.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

const b64 = (text: string) => btoa(text);
const record = (service: string, ip: string, port: number, meta: Record<string, string> = {}) =>
  encodeRecord({ host: "h", ipv4_addr: ip, port, service, registered_at: "", meta });

/** Puts records, up to 100 in a transaction (etcd allows 128 operations in one). */
async function putRecords(bed: Bed, records: [key: string, value: string][]): Promise<void> {
  for (let i = 0; i < records.length; i += 100) {
    const success = records.slice(i, i + 100).map(([key, value]) => ({
      request_put: { key: b64(key), value: b64(value) },
    }));
    await bed.post("/v3/kv/txn", { success });
  }
}

Deno.test("sync: 5,000 instances deleted at once (one delete range) all leave HAProxy", async () => {
  await withBed([], async (bed) => {
    const N = 5000;
    const addresses = Array.from(
      { length: N },
      (_, i) => ({ ip: `10.41.${Math.floor(i / 250)}.${(i % 250) + 1}`, port: 80 }),
    );
    await putRecords(
      bed,
      addresses.map(({ ip, port }) => [instanceKey("/services", "web", ip, port), record("web", ip, port)]),
    );
    const client = bed.haproxy.client();
    const sync = bed.sync("web", ["--server-options="]); // no health check: addresses nothing listens on stay up
    await waitFor(
      async () => parseServersState(await client.run("show servers state web")).filter((s) => !s.maint).length === N,
      () => `${N} servers in rotation\n${sync.stderr.slice(-2000)}`,
      120_000,
      200,
    );
    const prefix = "/services/web/";
    const end = prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1);
    const deletedAt = performance.now();
    const res = await bed.post("/v3/kv/deleterange", { key: b64(prefix), range_end: b64(end) });
    assert.equal(res.deleted, String(N));
    let outAt = 0;
    await waitFor(
      async () => {
        // show servers state alone: show stat of 5,000 servers is megabytes, and would slow HAProxy down
        const servers = parseServersState(await client.run("show servers state web"));
        if (outAt === 0 && servers.every((s) => s.maint)) outAt = performance.now();
        return servers.length === 0;
      },
      () => `every server deleted\n${sync.stderr.slice(-2000)}`,
      60_000,
      50,
    );
    // a figure for the report, not an assertion: speed belongs in bench/
    console.log(
      `burst: ${N} deleted at once, last out of rotation after ${Math.round(outAt - deletedAt)} ms, all deleted after ${
        Math.round(performance.now() - deletedAt)
      } ms`,
    );
    assert.doesNotMatch(sync.stderr, /haproxy (refused|unreachable)/, sync.stderr.slice(-2000));
  });
});

Deno.test("sync: a command HAProxy refuses is logged once with the server and the command, and the rest still applies", async () => {
  const ip = lo.ip(2);
  // a static server a use-server rule references: HAProxy takes it out but refuses to delete it
  await withBed([`server static1 ${lo.ip(9)}:80`, "use-server static1 if { path /static }"], async (bed) => {
    const client = bed.haproxy.client();
    const sync = bed.sync("web", ["--server-options="]);
    await sync.waitForLog(/^started /, READY_MS);
    await putRecords(bed, [[instanceKey("/services", "web", ip, 81), record("web", ip, 81)]]);
    const refused =
      /^haproxy refused backend=web server=static1 address=\S+ command="del server web\/static1" reason="This server cannot be removed[^"]*"$/m;
    await waitFor(() => refused.test(sync.stderr), () => `the refusal logged\n${sync.stderr}`, EVENT_MS);
    const rotation = async () =>
      (await client.servers("web")).filter((s) => !s.maint).map((s) => `${s.name}/${s.weight}`);
    await waitFor(async () => (await rotation()).join() === `${ip}:81/1`, () => `added\n${sync.stderr}`, EVENT_MS);
    // later changes still land while the refusal persists: a new instance, and a weight
    await putRecords(bed, [
      [instanceKey("/services", "web", ip, 82), record("web", ip, 82)],
      [instanceKey("/services", "web", ip, 81), record("web", ip, 81, { weight: "7" })],
    ]);
    await waitFor(
      async () => (await rotation()).sort().join() === `${ip}:81/7,${ip}:82/1`,
      () => `added and weighted\n${sync.stderr}`,
      EVENT_MS,
    );
    await sync.waitForLog(/^server weight changed backend=web server=\S+:81 weight=7$/, EVENT_MS);
    // passes ran since the first refusal (each one plans the delete again): it was logged once
    assert.equal(sync.stderr.split("\n").filter((l) => l.startsWith("haproxy refused")).length, 1, sync.stderr);
    assert.ok((await client.servers("web")).find((s) => s.name === "static1")?.maint, "static1 was not taken out");
  });
});

Deno.test("sync: two syncs of different services on one backend are told (backend shared), not left to flap silently", async () => {
  await withBed([], async (bed) => {
    await putRecords(bed, [
      [instanceKey("/services", "web", lo.ip(2), 80), record("web", lo.ip(2), 80)],
      [instanceKey("/services", "api", lo.ip(3), 80), record("api", lo.ip(3), 80)],
    ]);
    const web = bed.sync("web", ["--server-options="]);
    const api = bed.sync("api", ["--server-options="]);
    const shared = /^backend shared backend=web server=\S+ reason=/m;
    await waitFor(
      () => shared.test(web.stderr) || shared.test(api.stderr),
      () => `a warning from either sync\nweb:\n${web.stderr}\napi:\n${api.stderr}`,
      EVENT_MS,
    );
    for (const s of [web, api]) {
      assert.ok(s.stderr.split("\n").filter((l) => l.startsWith("backend shared")).length <= 1, s.stderr);
    }
  });
});

Deno.test("sync: 0.0.0.0, broadcast and multicast instance keys never reach HAProxy", async () => {
  await withBed([], async (bed) => {
    const bad = ["0.0.0.0", "255.255.255.255", "224.0.0.1", "239.255.255.250"];
    await putRecords(bed, bad.map((ip) => [instanceKey("/services", "web", ip, 80), record("web", ip, 80)]));
    const sync = bed.sync("web", ["--server-options="]);
    await sync.waitForLog(/^started /, READY_MS);
    // a good one after them: once it is in, every pass that could have added the others has run
    await putRecords(bed, [[instanceKey("/services", "web", lo.ip(2), 80), record("web", lo.ip(2), 80)]]);
    await sync.waitForLog(
      new RegExp(`^server added backend=web server=${lo.ip(2).replaceAll(".", "\\.")}:80$`),
      EVENT_MS,
    );
    const servers = await bed.haproxy.client().servers("web");
    assert.deepEqual(servers.map((s) => s.ip), [lo.ip(2)], sync.stderr);
  });
});
