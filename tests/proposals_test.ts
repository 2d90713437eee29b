/**
 * What a healthy instance costs etcd: no raft proposal at all. A put, a
 * delete, a grant, a revoke and a transaction are each one, even a
 * transaction whose compare fails and which so leaves the revision where it
 * was: only etcd's own count of committed proposals shows that none was
 * made. Keep-alives are a stream to the leader, not proposals. (Which calls
 * the secretary makes while healthy is tested against a fake etcd in
 * registrar_test.ts; this is the real etcd's side.)
 *
 * A minute of waiting, in a file of its own so that it runs beside the rest.
 */
import assert from "node:assert/strict";
import { delay, etcdMetric, httpGet, loopback, registered, waitFor, withBed } from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);

const PROPOSALS = "etcd_server_proposals_committed_total";
const HEALTHY_MS = 60_000;
const TTL_SECONDS = 10;

Deno.test("a healthy secretary costs etcd no raft proposal over a minute, its lease kept alive throughout", async () => {
  await withBed(lo, async (bed) => {
    const endpoint = bed.cluster.endpoints[0];
    // a new member proposes its cluster version a few seconds after it starts: wait until it has
    await waitFor(
      async () => JSON.parse(await httpGet(`${endpoint}/version`)).etcdcluster !== "not_decided",
      "etcd to decide its cluster version",
      30_000,
      200,
    );
    // the test bed's interval (500 ms), with a TTL long enough that its remaining seconds say something
    const { t, s, key } = await registered(bed, lo.ip(1), { extra: [`--ttl=${TTL_SECONDS}s`] });
    const stored = (await bed.etcd.get(key))!;
    const before = await etcdMetric(endpoint, PROPOSALS);
    const checksBefore = t.requests;

    // the lease's remaining TTL, every second: keep-alives every third of the TTL keep it near the top
    let lowest = Infinity;
    const started = Date.now();
    while (Date.now() - started < HEALTHY_MS) {
      const left = await bed.etcd.leaseTimeToLive(stored.lease);
      assert.ok(left, `the lease expired ${Date.now() - started} ms into the minute:\n${s.stderr}`);
      lowest = Math.min(lowest, left.ttlSeconds);
      await delay(1000);
    }
    const after = await etcdMetric(endpoint, PROPOSALS);

    assert.equal(after - before, 0, `${after - before} proposals while healthy:\n${s.stderr}`);
    // without keep-alives the lease would have run out five times over; a loose floor, not a timing target
    assert.ok(lowest >= TTL_SECONDS / 3, `the lease's remaining TTL fell to ${lowest} s of ${TTL_SECONDS}`);
    assert.ok(t.requests - checksBefore >= 20, `only ${t.requests - checksBefore} checks in a minute`);
    const now = await bed.etcd.get(key);
    assert.equal(now?.lease, stored.lease, "the record changed lease");
    assert.equal(now?.modRevision, stored.modRevision, "the record was rewritten");
    assert.ok(s.running, s.stderr);
  });
});
