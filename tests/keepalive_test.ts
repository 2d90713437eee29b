/**
 * Keep-alives on one stream: every keep-alive of a client connection, for
 * every lease, goes on one LeaseKeepAlive stream, as etcd's Go client does
 * (a stream per keep-alive costs the leader a stream's set-up each time).
 * etcd's own gRPC metrics count the streams it started and the messages it
 * received on them, so the test reads both: many keep-alives, one stream;
 * a dropped connection, one more. And a grant that asks for its lease ID:
 * asked again (its first answer lost), it makes no second lease.
 */
import assert from "node:assert/strict";
import { Etcd, LeaseExistsError } from "../lib/etcd.ts";
import { newLeaseId } from "../lib/registrar.ts";
import { httpGet, loopback, registered, waitFor, withBed } from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);

/** A LeaseKeepAlive counter from a member's /metrics: streams `started`, or messages `msg_received`. */
async function keepAliveMetric(clientUrl: string, what: "started" | "msg_received"): Promise<number> {
  const text = await httpGet(`${clientUrl}/metrics`);
  const line = text.split("\n").find((l) =>
    l.startsWith(`grpc_server_${what}_total{`) && l.includes('grpc_method="LeaseKeepAlive"')
  );
  if (line === undefined) throw new Error(`${clientUrl}/metrics has no grpc_server_${what}_total for LeaseKeepAlive`);
  return Number(line.slice(line.lastIndexOf(" ") + 1));
}

Deno.test("keepAlive() sends every keep-alive of every lease on one stream, and opens one more after failover()", async () => {
  await withBed(lo, async (bed) => {
    const endpoint = bed.cluster.endpoints[0];
    const etcd = new Etcd({ endpoints: [endpoint], callTimeoutMs: 5000 });
    try {
      const leases = [await etcd.grantLease(30), await etcd.grantLease(30)];
      const started = await keepAliveMetric(endpoint, "started");
      const received = await keepAliveMetric(endpoint, "msg_received");
      for (let i = 0; i < 5; i++) {
        const ttls = await Promise.all(leases.map((lease) => etcd.keepAlive(lease)));
        for (const ttl of ttls) assert.ok(ttl > 0, `a keep-alive answered TTL ${ttl}`);
      }
      assert.equal(await keepAliveMetric(endpoint, "msg_received") - received, 10, "keep-alives etcd received");
      assert.equal(await keepAliveMetric(endpoint, "started") - started, 1, "streams for 10 keep-alives");

      etcd.failover(); // one member: the same one, on a new connection
      for (let i = 0; i < 3; i++) assert.ok(await etcd.keepAlive(leases[0]) > 0);
      assert.equal(await keepAliveMetric(endpoint, "started") - started, 2, "streams after one reconnect");

      await etcd.revokeLease(leases[1]);
      assert.equal(await etcd.keepAlive(leases[1]), 0, "a revoked lease's keep-alive answers TTL 0");
      assert.ok(await etcd.keepAlive(leases[0]) > 0, "the stream still serves the other lease");
      assert.equal(await keepAliveMetric(endpoint, "started") - started, 2, "streams after a lease went");
    } finally {
      etcd.close();
    }
  });
});

Deno.test("a secretary keeps its lease alive on one stream for its whole life", async () => {
  await withBed(lo, async (bed) => {
    const endpoint = bed.cluster.endpoints[0];
    const started = await keepAliveMetric(endpoint, "started");
    // the test bed's TTL (5 s): a keep-alive every 1.7 s
    const { s } = await registered(bed, lo.ip(1));
    const received = await keepAliveMetric(endpoint, "msg_received");
    await waitFor(
      async () => (await keepAliveMetric(endpoint, "msg_received")) - received >= 4,
      `four keep-alives from the secretary:\n${s.stderr}`,
      30_000,
      250,
    );
    assert.equal(await keepAliveMetric(endpoint, "started") - started, 1, `streams for four keep-alives:\n${s.stderr}`);
    assert.ok(s.running, s.stderr);
  });
});

Deno.test("grantLease() with an ID asked twice makes one lease: the second says LeaseExistsError", async () => {
  await withBed(lo, async (bed) => {
    const endpoint = bed.cluster.endpoints[0];
    const etcd = new Etcd({ endpoints: [endpoint], callTimeoutMs: 5000 });
    try {
      const id = newLeaseId(Math.random);
      assert.equal(await etcd.grantLease(30, id), id);
      await assert.rejects(etcd.grantLease(30, id), LeaseExistsError);
      const lease = await etcd.leaseTimeToLive(id);
      assert.equal(lease?.grantedSeconds, 30);
    } finally {
      etcd.close();
    }
  });
});
