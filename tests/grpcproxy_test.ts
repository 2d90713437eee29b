/**
 * A secretary and `registry sync` through etcd's gRPC proxy (`etcd grpc-proxy
 * start`, Debian's etcd package) in front of a three-member etcd, with
 * Debian's HAProxy: registration, keep-alive past the TTL and deregistration
 * through it; the proxy killed (SIGKILL) and restarted on its address, the
 * records and HAProxy's servers staying throughout; the leader killed behind
 * the proxy, nothing lost and changes still followed.
 */
import assert from "node:assert/strict";
import type { Etcd } from "../lib/etcd.ts";
import { WATCH_PROBE_MS } from "../lib/follow.ts";
import type { HAProxyServer } from "../lib/haproxy.ts";
import { DEFAULT_PREFIX, instanceKey, servicePrefix } from "../lib/record.ts";
import { GrpcProxy } from "../testbed/grpcproxy.ts";
import { HAProxyProcess } from "../testbed/haproxy.ts";
import {
  delay,
  type EtcdCluster,
  EtcdGateway,
  EVENT_MS,
  loopback,
  READY_MS,
  Script,
  SOURCE_FLAGS,
  TestServer,
  waitFor,
} from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);
const TTL_MS = 5000;
const FAST = ["--interval=500ms", "--timeout=300ms", `--ttl=${TTL_MS / 1000}s`, "--hostname=h", "--service=web"];
/** The sync's flags from source: etcd, and HAProxy's socket in the test's folder. */
const SYNC_FLAGS = ["--allow-net", "--allow-env", "--allow-read", "--allow-write"];

interface Bed {
  dir: string;
  cluster: EtcdCluster;
  /** A client of the members themselves, never through the proxy: what the registry holds. */
  etcd: Etcd;
  proxy: GrpcProxy;
  haproxy: HAProxyProcess;
  sync(): Script;
  secretary(t: TestServer): Script;
}

async function withBed(fn: (bed: Bed) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "secretary-grpcproxy-" });
  const cluster = await lo.etcd(3);
  const scripts: Script[] = [];
  let proxy: GrpcProxy | undefined;
  let haproxy: HAProxyProcess | undefined;
  const etcd = cluster.client();
  try {
    await cluster.start();
    const p = proxy = await GrpcProxy.start(cluster.endpoints, lo.ip(10));
    const h = haproxy = await HAProxyProcess.start({ dir: `${dir}/haproxy`, ip: lo.ip(1), port: 8000, backend: "web" });
    const start = (script: string, args: string[], flags: string[]) => {
      const s = Script.deno(script, args, { flags });
      scripts.push(s);
      return s;
    };
    await fn({
      dir,
      cluster,
      etcd,
      proxy: p,
      haproxy: h,
      // both given the proxy alone, as a host with a local proxy gives them
      sync: () =>
        start("registry.ts", [
          "sync",
          "web",
          `--haproxy=${h.adminSocket}`,
          "--backend=web",
          `--endpoints=${p.url}`,
        ], SYNC_FLAGS),
      secretary: (t) =>
        start("secretary.ts", [String(t.port), `--ip=${t.host}`, `--endpoints=${p.url}`, ...FAST], SOURCE_FLAGS),
    });
  } finally {
    for (const s of scripts) s.kill("SIGKILL");
    await Promise.all(scripts.map((s) => s.finished()));
    await haproxy?.stop();
    await proxy?.stop();
    etcd.close();
    await cluster.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

const name = (t: TestServer) => `${t.host}:${t.port}`;
const keyOf = (t: TestServer) => instanceKey(DEFAULT_PREFIX, "web", t.host, t.port);

/** The servers HAProxy sends new requests to, by name. */
async function inRotation(bed: Bed): Promise<string[]> {
  const servers: HAProxyServer[] = await bed.haproxy.client().servers("web");
  return servers.filter((s) => !s.maint).map((s) => s.name).sort();
}

/** The instances the registry lists (read from the members), as ip:port. */
async function listed(bed: Bed): Promise<string[]> {
  const { values } = await bed.etcd.list(servicePrefix(DEFAULT_PREFIX, "web"));
  return values.map((v) => v.key.slice(v.key.lastIndexOf("/") + 1)).filter((a) => /^[\d.]+:\d+$/.test(a)).sort();
}

/** Waits until HAProxy's rotation and the registry are both `expected`. */
async function backendEqualsRegistry(bed: Bed, expected: string[], what: string): Promise<void> {
  const want = JSON.stringify([...expected].sort());
  await waitFor(
    async () => JSON.stringify(await inRotation(bed)) === want && JSON.stringify(await listed(bed)) === want,
    `${what}: HAProxy ${JSON.stringify(await inRotation(bed))}, registry ${JSON.stringify(await listed(bed))}`,
    EVENT_MS,
    50,
  );
}

/** Starts the sync and a secretary for each target; waits until each is registered and HAProxy has them all. */
async function started(bed: Bed, targets: TestServer[]): Promise<{ sync: Script; secretaries: Script[] }> {
  const sync = bed.sync();
  const secretaries = targets.map((t) => bed.secretary(t));
  // from source on a loaded machine: READY_MS for the start, then EVENT_MS for what follows
  await sync.waitForLog(/^started /, READY_MS);
  await Promise.all(secretaries.map((s) => s.waitForLog(/^registered key=/, READY_MS)));
  await backendEqualsRegistry(bed, targets.map(name), "registered through the proxy");
  return { sync, secretaries };
}

/** The lease each record is attached to now, by instance. */
async function leasesOf(bed: Bed, targets: TestServer[]): Promise<string[]> {
  return await Promise.all(targets.map(async (t) => (await bed.etcd.get(keyOf(t)))?.lease ?? "none"));
}

/**
 * For `ms`, asserts every 200 ms that HAProxy's rotation and the registry are
 * still exactly `expected` (a read of the members may fail while one is down:
 * only an answer counts); returns how many samples were answered.
 */
async function holds(bed: Bed, expected: string[], ms: number, what: string): Promise<number> {
  const want = [...expected].sort();
  const until = Date.now() + ms;
  let answered = 0;
  while (Date.now() < until) {
    assert.deepEqual(await inRotation(bed), want, `${what}: a server left HAProxy's rotation`);
    const registry = await listed(bed).catch(() => undefined);
    if (registry) {
      assert.deepEqual(registry, want, `${what}: a record left the registry`);
      answered++;
    }
    await delay(200);
  }
  return answered;
}

Deno.test("grpc proxy: a secretary registers and keeps its lease through it, registry sync follows through it, a stop takes the instance out", async () => {
  await withBed(async (bed) => {
    const targets = await Promise.all([2, 3].map((n) => TestServer.start(lo.ip(n))));
    const { sync, secretaries } = await started(bed, targets);

    // kept alive through the proxy: the same leases after two TTLs
    const leases = await leasesOf(bed, targets);
    await holds(bed, targets.map(name), 2 * TTL_MS, "two TTLs through the proxy");
    assert.deepEqual(await leasesOf(bed, targets), leases, "a lease was replaced");
    for (const s of secretaries) assert.doesNotMatch(s.stderr, /lease lost|record lost/, s.stderr);

    secretaries[0].kill("SIGTERM"); // its lease revoked through the proxy: the record goes at once
    assert.equal((await secretaries[0].finished(EVENT_MS)).code, 0, secretaries[0].stderr);
    await backendEqualsRegistry(bed, [name(targets[1])], "one stopped");
    assert.doesNotMatch(secretaries[0].stderr, /revoke failed/, secretaries[0].stderr);

    await targets[1].close(); // killed: its secretary deregisters it through the proxy
    await backendEqualsRegistry(bed, [], "the other killed");
    assert.doesNotMatch(sync.stderr, /haproxy (refused|unreachable)/, sync.stderr);
  });
});

Deno.test("grpc proxy: killed and restarted on its address, no record or server is lost, and the sync follows changes after", async () => {
  await withBed(async (bed) => {
    const targets = await Promise.all([2, 3].map((n) => TestServer.start(lo.ip(n))));
    const { sync, secretaries } = await started(bed, targets);
    const leases = await leasesOf(bed, targets);

    await bed.proxy.kill("SIGKILL");
    // down for a while, well within the TTL: nothing may leave
    assert.ok(await holds(bed, targets.map(name), 1500, "the proxy down") > 3);
    await bed.proxy.restart();
    await Promise.all(secretaries.map((s) => s.waitForLog(/^etcd answered /, EVENT_MS)));
    // a TTL after: the leases were kept alive through the new proxy, never lost
    await holds(bed, targets.map(name), TTL_MS + 1000, "the proxy restarted");
    assert.deepEqual(await leasesOf(bed, targets), leases, "a lease was lost and replaced");
    for (const s of secretaries) assert.doesNotMatch(s.stderr, /lease lost|record lost/, s.stderr);

    // the sync follows through the new proxy: a new instance in, a killed one out
    const third = await TestServer.start(lo.ip(4));
    await bed.secretary(third).waitForLog(/^registered key=/, READY_MS);
    await backendEqualsRegistry(bed, [...targets, third].map(name), "one registered after the restart");
    await targets[0].close();
    await backendEqualsRegistry(bed, [targets[1], third].map(name), "one killed after the restart");
    assert.doesNotMatch(sync.stderr, /haproxy (refused|unreachable)/, sync.stderr);
    await Promise.all([targets[1], third].map((t) => t.close()));
  });
});

Deno.test("grpc proxy: the leader killed behind it loses no record or server, and the sync follows changes after", async () => {
  await withBed(async (bed) => {
    const targets = await Promise.all([2, 3].map((n) => TestServer.start(lo.ip(n))));
    const { secretaries } = await started(bed, targets);
    const leases = await leasesOf(bed, targets);

    const leader = await bed.cluster.leader();
    await leader.stop("SIGKILL");
    // an election, then the proxy's client finds the others: longer than a TTL, and nothing may leave
    assert.ok(await holds(bed, targets.map(name), TTL_MS + 2000, "the leader killed") > 10);
    assert.deepEqual(await leasesOf(bed, targets), leases, "a lease was lost and replaced");
    for (const s of secretaries) assert.doesNotMatch(s.stderr, /lease lost|record lost/, s.stderr);

    const third = await TestServer.start(lo.ip(4));
    await bed.secretary(third).waitForLog(/^registered key=/, READY_MS);
    await backendEqualsRegistry(bed, [...targets, third].map(name), "one registered with two members");
    secretaries[0].kill("SIGTERM");
    await backendEqualsRegistry(bed, [targets[1], third].map(name), "one stopped with two members");
    await Promise.all([...targets, third].map((t) => t.close()));
  });
});

/**
 * etcd's gRPC proxy never answers a watch progress request (etcd-io/etcd#19710;
 * 3.4.23 drops it, proxy/grpcproxy/watch.go). lib/etcd.ts's watch probe then
 * asks for a second watch on the stream instead, which the proxy answers:
 * without that, the silence read as a dead stream, and a quiet service's sync
 * logged `etcd unreachable` and listed again about every 4 s.
 */
Deno.test({
  name: "grpc proxy: the sync's watch holds while nothing changes: no `etcd unreachable`, no listing again",
  fn: async () => {
    await withBed(async (bed) => {
      const target = await TestServer.start(lo.ip(2));
      const { sync } = await started(bed, [target]);
      const linesBefore = sync.stderr.split("\n").length;
      await holds(bed, [name(target)], 4 * WATCH_PROBE_MS, "nothing changing"); // two probes unanswered, at least
      const quiet = sync.stderr.split("\n").slice(linesBefore - 1).join("\n");
      assert.doesNotMatch(quiet, /etcd unreachable|etcd answered/, sync.stderr);
      await target.close();
    });
  },
});

/**
 * Events answer the probe too. Taken for progress reports, they marked a
 * proxy's stream as one that answers progress requests, and its first quiet
 * probe after a busy spell read as a dead stream (measured in bench/fanout.ts:
 * through the proxy, each follower broke once in a quiet window after churn).
 */
Deno.test({
  name: "grpc proxy: the sync's watch holds in the quiet after a busy spell: no `etcd unreachable`",
  fn: async () => {
    await withBed(async (bed) => {
      const target = await TestServer.start(lo.ip(2));
      // busy from before the sync starts, so its watch stream is answered by events from its first probe on: a
      // change every 200 ms under the service's prefix, to a key that is no instance's
      const gateway = new EtcdGateway(bed.cluster.endpoints);
      const busyKey = `${servicePrefix(DEFAULT_PREFIX, "web")}busy`;
      let busy = true;
      const spell = (async () => {
        for (let i = 0; busy; i++) {
          await gateway.put(busyKey, String(i));
          await delay(200);
        }
        await gateway.delete(busyKey);
      })();
      const { sync } = await started(bed, [target]);
      await delay(3 * WATCH_PROBE_MS); // three probes, each answered by events
      busy = false;
      await spell;
      const linesBefore = sync.stderr.split("\n").length;
      await holds(bed, [name(target)], 4 * WATCH_PROBE_MS, "quiet after a busy spell"); // two probes at least
      const quiet = sync.stderr.split("\n").slice(linesBefore - 1).join("\n");
      assert.doesNotMatch(quiet, /etcd unreachable|etcd answered/, sync.stderr);
      await target.close();
    });
  },
});
