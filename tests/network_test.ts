/**
 * A cut network, not a closed one: a TCP relay between the scripts and etcd
 * stops passing bytes without closing anything. And etcd gone for three TTLs,
 * ten times in a row. The secretary notices, never gives up, never exits.
 */
import assert from "node:assert/strict";
import { type Etcd } from "../lib/etcd.ts";
import { instanceKey } from "../lib/record.ts";
import {
  currentRevision,
  delay,
  EtcdGateway,
  etcdMetric,
  EVENT_MS,
  loopback,
  READY_MS,
  Relay,
  Script,
  SOURCE_FLAGS,
  TEST_CALL_TIMEOUT_MS,
  TestServer,
  waitFor,
} from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);

const TTL_MS = 5000;

/** etcd's count of lease keep-alives it answered (the secretary's: the only lease holder there). */
const RENEWED = "etcd_debugging_lease_renewed_total";

function secretary(t: TestServer, endpoint: string): Script {
  return Script.deno("secretary.ts", [
    String(t.port),
    `--ip=${t.host}`,
    "--hostname=h",
    `--endpoints=${endpoint}`,
    "--interval=500ms",
    "--timeout=300ms",
    `--ttl=${TTL_MS / 1000}s`,
  ], { flags: SOURCE_FLAGS });
}

async function running(s: Script): Promise<boolean> {
  return !(await Promise.race([s.status.then(() => true), delay(0).then(() => false)]));
}

/** A one-member etcd reached through a relay, a target on `host` and its secretary; stopped after `fn`. */
async function withRelay(
  host: string,
  fn: (bed: { etcd: Etcd; endpoint: string; relay: Relay; secretary: Script; key: string }) => Promise<void>,
): Promise<void> {
  const cluster = await lo.etcd(1);
  await cluster.start();
  const etcd = cluster.client();
  const relay = await Relay.start(cluster.endpoints[0], host);
  const t = await TestServer.start(host);
  const s = secretary(t, relay.url);
  try {
    const key = instanceKey("/services", "apache", t.host, t.port);
    await fn({ etcd, endpoint: cluster.endpoints[0], relay, secretary: s, key });
  } finally {
    await s.stop("SIGTERM");
    await t.close();
    await relay.close();
    etcd.close();
    await cluster.stop();
  }
}

Deno.test("a cut longer than the TTL: the secretary notices, and registers again once the network heals", async () => {
  await withRelay(lo.ip(1), async ({ etcd, relay, secretary: s, key }) => {
    await waitFor(() => etcd.get(key), "registered", READY_MS);
    relay.cut();
    // etcd expires the lease a TTL after the last keep-alive it got
    await waitFor(async () => (await etcd.get(key)) === undefined, "the lease to expire in etcd", 3 * TTL_MS);
    await s.waitForLog(/lease lost/, EVENT_MS);
    await delay(1000);
    relay.heal();
    // how soon: a benchmark's figure
    await waitFor(() => etcd.get(key), "registered again after the heal", EVENT_MS);
    await s.waitForLog(/^registered .*again=true/);
    assert.ok(await running(s));
  });
});

Deno.test("a cut shorter than a third of the TTL: no deregistration, no flap, no write", async () => {
  await withRelay(lo.ip(2), async ({ etcd, endpoint, relay, secretary: s, key }) => {
    await waitFor(() => etcd.get(key), "registered", READY_MS);
    const revision = await currentRevision(etcd);
    /** Waits until etcd has answered `more` keep-alives after `from` of them; returns the count then. */
    const keptAlive = (from: number, more: number, what: string) =>
      waitFor(
        async () => {
          const renewed = await etcdMetric(endpoint, RENEWED);
          return renewed >= from + more && renewed;
        },
        what,
        EVENT_MS,
      );
    let renewed = await keptAlive(await etcdMetric(endpoint, RENEWED), 1, "a keep-alive");
    for (let i = 0; i < 3; i++) {
      // a keep-alive was just answered: cut a little before the next is due, so that it waits in the cut
      await delay(TTL_MS / 3 - 500);
      relay.cut();
      const cutAt = Date.now();
      // the cut's length is the scenario: sampled, with etcd reached directly
      while (Date.now() - cutAt < TTL_MS / 3 - 200) {
        assert.ok(await etcd.get(key), "the record went during a short cut");
        await delay(100);
      }
      relay.heal();
      // the keep-alive held in the cut, then two sent after the heal: a flap (a new lease, the record put
      // again) would have come before them
      renewed = await keptAlive(renewed, 3, "three keep-alives after the heal");
    }
    assert.ok(await etcd.get(key));
    assert.equal(await currentRevision(etcd), revision, "something was written: a flap");
    assert.doesNotMatch(s.stderr, /lease lost|deregistered/);
  });
});

Deno.test("registry watch cut off while its revision is compacted away lists again and ends in the state of a fresh ls", async () => {
  const cluster = await lo.etcd(1);
  await cluster.start();
  const etcd = cluster.client();
  const relay = await Relay.start(cluster.endpoints[0], lo.ip(3));
  const lease = await etcd.grantLease(60);
  const put = (n: number, value = `{"host":"h","ipv4_addr":"10.0.0.${n}","port":80}`) =>
    etcd.putIfAbsent(instanceKey("/services", "web", `10.0.0.${n}`, 80), value, lease);
  const del = (n: number) => etcd.deleteIfLease(instanceKey("/services", "web", `10.0.0.${n}`, 80), lease);
  const watch = Script.deno("registry.ts", ["watch", "--json", `--endpoints=${relay.url}`], { flags: SOURCE_FLAGS });
  try {
    await put(1);
    await put(2);
    await waitFor(() => watch.stdout.split("\n").length > 2, "the first listing", READY_MS);
    relay.cut();
    await del(1);
    await put(3);
    await del(2);
    await put(4);
    await new EtcdGateway(cluster.endpoints, TEST_CALL_TIMEOUT_MS).compact(await currentRevision(etcd));
    await watch.waitForLog(/^registry: waiting for etcd/, EVENT_MS);
    relay.heal();
    await watch.waitForLog(/^registry: etcd answered again/, EVENT_MS);
    await put(5); // and it carries on
    await waitFor(() => watch.stdout.includes("10.0.0.5"), "a change after the heal", EVENT_MS);

    // replay the watch's output: it must end where a fresh listing is
    const state = new Set<string>();
    for (const line of watch.stdout.trimEnd().split("\n")) {
      const change = JSON.parse(line);
      if (change.change === "registered") state.add(change.key);
      else state.delete(change.key);
    }
    const fresh = (await etcd.list("/services/")).values.map((v) => v.key);
    assert.deepEqual([...state].sort(), fresh.sort());
    assert.equal(fresh.length, 3);
  } finally {
    await watch.stop("SIGTERM");
    await relay.close();
    etcd.close();
    await cluster.stop();
  }
});

Deno.test("etcd gone for three TTLs, ten times in a row: registered again under a new lease each time, never exits", async () => {
  const cluster = await lo.etcd(1);
  await cluster.start();
  const etcd = cluster.client();
  const t = await TestServer.start(lo.ip(4));
  const s = secretary(t, cluster.endpoints[0]);
  const key = instanceKey("/services", "apache", t.host, t.port);
  const member = cluster.members[0];
  try {
    let lease = (await waitFor(() => etcd.get(key), "registered", READY_MS)).lease;
    for (let round = 1; round <= 10; round++) {
      await member.stop("SIGKILL");
      await delay(3 * TTL_MS);
      member.start("existing");
      await cluster.waitReady();
      // etcd revives an unexpired-at-shutdown lease on restart; the record must come back under a new one
      const stored = await waitFor(
        async () => {
          const v = await etcd.get(key);
          return v && v.lease !== lease ? v : undefined;
        },
        () => `round ${round}: registered again under a new lease\n${s.stderr}`,
        EVENT_MS,
      );
      lease = stored.lease;
      assert.ok(await running(s), `round ${round}: the secretary exited\n${s.stderr}`);
    }
    assert.equal(s.stderr.match(/^lease lost/gm)?.length, 10, s.stderr);
  } finally {
    await s.stop("SIGTERM");
    await t.close();
    etcd.close();
    await cluster.stop();
  }
});
