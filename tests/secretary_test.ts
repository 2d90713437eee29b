/**
 * secretary.ts against a real etcd, real HTTP targets and real signals.
 * Short intervals keep each test to a few seconds; the bounds asserted are the
 * product's (fall checks, the TTL), never a speed target.
 */
import assert from "node:assert/strict";
import { decodeEntry } from "../lib/record.ts";
import {
  currentRevision,
  etcdMetric,
  EVENT_MS,
  loopback,
  READY_MS,
  registered,
  testServer,
  waitFor,
  withBed,
} from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);

/** The TTL of FAST, the test bed's settings. */
const TTL_MS = 5000;

/** etcd's count of lease keep-alives it answered: the secretary's, where it holds the only lease. */
const RENEWED = "etcd_debugging_lease_renewed_total";
/** etcd's count of LeaseTimeToLive calls answered: what a blocked secretary asks about the record's lease. */
const LEASE_QUESTIONS =
  'grpc_server_handled_total{grpc_code="OK",grpc_method="LeaseTimeToLive",grpc_service="etcdserverpb.Lease",grpc_type="unary"}';

Deno.test("secretary registers a healthy instance, deregisters it when it stops, registers it again when it starts", async () => {
  await withBed(lo, async (bed) => {
    const { t, s, key } = await registered(bed, lo.ip(2), { extra: ["--meta=zone=a"] });
    const stored = await bed.etcd.get(key);
    const entry = decodeEntry("/services", key, stored!.value);
    assert.equal(entry.record?.host, "testhost");
    assert.equal(entry.record?.ipv4_addr, t.host);
    assert.equal(entry.record?.port, t.port);
    assert.equal(entry.record?.service, "apache");
    assert.deepEqual(entry.record?.meta, { zone: "a" });
    assert.notEqual(stored!.lease, "0");

    await t.setMode("closed");
    await waitFor(async () => !(await bed.present(key)), "deregistered after the target stopped", EVENT_MS);
    await s.waitForLog(/^deregistered key=\S+ reason=ECONNREFUSED/);

    await t.setMode("ok");
    await waitFor(() => bed.present(key), "registered again", EVENT_MS);
    assert.equal((await bed.etcd.get(key))!.lease, stored!.lease, "one lease for the life of the process");
  });
});

Deno.test("secretary removes a hung instance (accepts, never answers) and brings it back once it answers", async () => {
  await withBed(lo, async (bed) => {
    const { t, s, key } = await registered(bed, lo.ip(3));
    await t.setMode("hang");
    await waitFor(async () => !(await bed.present(key)), "deregistered while hung", EVENT_MS);
    await s.waitForLog(/deregistered .*reason="no answer within 300ms"/);
    await t.setMode("ok");
    await waitFor(() => bed.present(key), "registered again after answering", EVENT_MS);
  });
});

Deno.test("secretary treats an HTTP 500 as failing and a 3xx as passing, like curl -f", async () => {
  await withBed(lo, async (bed) => {
    const t = await testServer(bed, lo.ip(4));
    t.mode = "error";
    const s = bed.secretary(t);
    await s.waitForLog(/check failed reason="status 500"/);
    const seen = t.requests;
    await waitFor(() => t.requests >= seen + 3, "three more checks answered 500", EVENT_MS);
    assert.equal(await bed.present(bed.key(t)), false, "a 500 is never registered");

    t.mode = "redirect"; // 302 Found, with a Location the check does not follow
    await s.waitForLog(/check passed reason="status 302"/, EVENT_MS);
    await s.waitForLog(/^registered key=/, EVENT_MS);
    assert.equal(await bed.present(bed.key(t)), true, "a 302 is registered");
  });
});

Deno.test("secretary with --check tcp passes on an open port whatever it answers", async () => {
  await withBed(lo, async (bed) => {
    const t = await testServer(bed, lo.ip(5));
    t.mode = "hang";
    const s = bed.secretary(t, ["--check=tcp", "--service=redis"]);
    await s.waitForLog(/^registered key=/, READY_MS);
    assert.equal(await bed.present(bed.key(t, "redis")), true, "registered by a tcp check");
    assert.equal(t.requests, 0, "the tcp check sent a request");
  });
});

Deno.test("SIGTERM revokes the lease: the record is gone before the process exits, exit 0", async () => {
  await withBed(lo, async (bed) => {
    const { s, key } = await registered(bed, lo.ip(6));
    s.kill("SIGTERM");
    const status = await s.finished();
    assert.equal(status.code, 0);
    assert.equal(await bed.present(key), false, "record still there after the secretary exited");
    assert.match(s.stderr, /stopped key=\S+ signal=SIGTERM record=removed/);
  });
});

Deno.test("SIGINT stops the secretary the same way", async () => {
  await withBed(lo, async (bed) => {
    const { s, key } = await registered(bed, lo.ip(6));
    s.kill("SIGINT");
    assert.equal((await s.finished()).code, 0);
    assert.equal(await bed.present(key), false);
  });
});

Deno.test("SIGKILL leaves the record to its lease, which expires it", async () => {
  await withBed(lo, async (bed) => {
    const { s, key } = await registered(bed, lo.ip(7));
    const lease = (await bed.etcd.get(key))!.lease;
    s.kill("SIGKILL");
    await s.finished();
    // its last keep-alive was at most a third of the TTL ago: the record is still there
    assert.equal(await bed.present(key), true, "the record went with the process, not with its lease");
    // how soon after the TTL it goes is a benchmark's figure (bench/killed.ts); here, that it goes with the lease
    await waitFor(async () => !(await bed.present(key)), "the record to expire with its lease", 3 * TTL_MS);
    assert.equal(await bed.etcd.leaseTimeToLive(lease), undefined, "the record went, but its lease is still there");
  });
});

Deno.test("two instances on one IP are both listed, and stopping one keeps the other", async () => {
  await withBed(lo, async (bed) => {
    const a = await testServer(bed, lo.ip(8));
    const b = await testServer(bed, lo.ip(8));
    const sa = bed.secretary(a);
    bed.secretary(b);
    await waitFor(
      async () => (await bed.present(bed.key(a))) && (await bed.present(bed.key(b))),
      "both registered",
      READY_MS,
    );
    sa.kill("SIGTERM");
    await sa.finished();
    assert.equal(await bed.present(bed.key(a)), false);
    assert.equal(await bed.present(bed.key(b)), true, "stopping one removed the other");
    await a.setMode("closed");
    const checked = b.requests;
    await waitFor(() => b.requests >= checked + 2, "two more checks of the other", EVENT_MS);
    assert.equal(await bed.present(bed.key(b)), true, "the other went when the first's target closed");
  });
});

Deno.test("no etcd write while the instance stays healthy: the revision does not move", async () => {
  await withBed(lo, async (bed) => {
    const { t, s } = await registered(bed, lo.ip(9));
    const endpoint = bed.cluster.endpoints[0];
    const before = await currentRevision(bed.etcd);
    const checksBefore = t.requests;
    const renewed = await etcdMetric(endpoint, RENEWED);
    // more than a TTL of keep-alives (one every third of it), so the once-a-TTL read of its own key is in here
    await waitFor(async () => (await etcdMetric(endpoint, RENEWED)) >= renewed + 4, "four keep-alives", READY_MS);
    assert.ok(t.requests - checksBefore >= 4, `only ${t.requests - checksBefore} checks ran`);
    assert.equal(await currentRevision(bed.etcd), before);
    assert.doesNotMatch(s.stderr, /lease lost|etcd call failed/);
  });
});

Deno.test("a record deleted by hand comes back under the same lease", async () => {
  await withBed(lo, async (bed) => {
    const { s, key } = await registered(bed, lo.ip(10));
    const lease = (await bed.etcd.get(key))!.lease;
    assert.ok(await bed.etcd.deleteIfLease(key, lease));
    // the secretary reads its own key back about once a TTL
    const restored = await waitFor(() => bed.etcd.get(key), "restored", 3 * TTL_MS);
    assert.equal(restored.lease, lease, "restored under another lease");
    await s.waitForLog(/^record restored /);
  });
});

Deno.test("etcd down for less than the TTL: the secretary keeps its lease alive across the restart, the record stays", async () => {
  await withBed(lo, async (bed) => {
    const { s, key } = await registered(bed, lo.ip(11));
    const lease = (await bed.etcd.get(key))!.lease;
    const member = bed.cluster.members[0];
    await member.stop("SIGKILL");
    await s.waitForLog(/^etcd call failed /, EVENT_MS); // it noticed: a keep-alive failed
    member.start();
    await bed.cluster.waitReady();
    // etcd revives an unexpired lease when it restarts, with a fresh TTL: the record shows again whether or not
    // anybody keeps the lease alive. Only keep-alives keep it there past a TTL after the restart: wait for more
    // than a TTL of them (etcd's count starts again at its restart)
    const endpoint = bed.cluster.endpoints[0];
    await waitFor(
      async () => (await etcdMetric(endpoint, RENEWED)) >= 4,
      "four keep-alives after the restart",
      READY_MS,
    );
    assert.ok(s.running, `the secretary exited:\n${s.stderr}`);
    assert.equal((await bed.etcd.get(key))?.lease, lease, `the record is not there under its lease:\n${s.stderr}`);
    const left = await bed.etcd.leaseTimeToLive(lease);
    assert.ok(left !== undefined && left.ttlSeconds > 0, `the lease is expiring: ${JSON.stringify(left)}`);
  });
});

Deno.test("etcd down for longer than the TTL: the lease is lost, and the record is back under a new lease once etcd answers", async () => {
  await withBed(lo, async (bed) => {
    const { s, key } = await registered(bed, lo.ip(12));
    const lease = (await bed.etcd.get(key))!.lease;
    const member = bed.cluster.members[0];
    await member.stop("SIGKILL");
    await s.waitForLog(/^etcd call failed /, EVENT_MS);
    await s.waitForLog(/^lease lost /, EVENT_MS); // a TTL without an answered keep-alive
    member.start();
    await bed.cluster.waitReady();
    // etcd keeps an unexpired lease across its restart, so the old record may show first: wait for the new lease
    await waitFor(
      async () => {
        const stored = await bed.etcd.get(key);
        return stored !== undefined && stored.lease !== lease;
      },
      "registered again under a new lease after etcd came back",
      EVENT_MS,
    );
    await s.waitForLog(/^registered .*again=true/);
    await s.waitForLog(/lease lost/);
  });
});

Deno.test("two secretaries for one instance by mistake: neither deletes the record the other holds; the log says so", async () => {
  await withBed(lo, async (bed) => {
    const t = await testServer(bed, lo.ip(13));
    const key = bed.key(t);
    const a = bed.secretary(t);
    const leaseA = (await waitFor(() => bed.etcd.get(key), "the first registered", READY_MS)).lease;
    const b = bed.secretary(t);
    await b.waitForLog(/^registration blocked /, READY_MS);
    b.kill("SIGTERM");
    assert.equal((await b.finished()).code, 0);
    assert.equal((await bed.etcd.get(key))?.lease, leaseA, "the second secretary's stop removed the first's record");

    const c = bed.secretary(t);
    await c.waitForLog(/^registration blocked /, READY_MS);
    // blocked, it reads the record and asks etcd about the holder's lease every interval; a take-over would
    // follow one of those questions, before the next: wait for five more (only c asks)
    const endpoint = bed.cluster.endpoints[0];
    const asked = await etcdMetric(endpoint, LEASE_QUESTIONS);
    await waitFor(
      async () => (await etcdMetric(endpoint, LEASE_QUESTIONS)) >= asked + 5,
      "five more questions about the holder's lease",
      EVENT_MS,
    );
    assert.equal((await bed.etcd.get(key))?.lease, leaseA, "the record changed hands while both ran");
    a.kill("SIGTERM");
    await a.finished();
    // the one left takes the record over (within about an interval: a benchmark's figure)
    const taken = await waitFor(
      async () => {
        const stored = await bed.etcd.get(key);
        return stored && stored.lease !== leaseA ? stored : undefined;
      },
      "the other secretary to register",
      EVENT_MS,
    );
    assert.notEqual(taken.lease, leaseA);
    await c.waitForLog(/^registered /);
  });
});

Deno.test("a secretary restarted after a crash takes its predecessor's record over, never missing", async () => {
  await withBed(lo, async (bed) => {
    const t = await testServer(bed, lo.ip(14));
    const key = bed.key(t);
    // a TTL long enough that the successor, started from source on a loaded machine, is up well before it ends
    const ttl = ["--ttl=15s"];
    const first = bed.secretary(t, ttl);
    const crashed = (await waitFor(() => bed.etcd.get(key), "registered", READY_MS)).lease;
    first.kill("SIGKILL"); // as a crash would: no revoke
    await first.finished();
    const second = bed.secretary(t, ttl); // as systemd's Restart= would
    let missing = 0;
    const taken = await waitFor(
      async () => {
        const stored = await bed.etcd.get(key);
        if (!stored) missing++;
        return stored && stored.lease !== crashed ? stored : undefined;
      },
      "the record under the new secretary's lease",
      15_000 + READY_MS,
      100,
    );
    assert.equal(missing, 0, "the record was missing during the takeover");
    assert.notEqual(taken.lease, crashed);
    await second.waitForLog(/^record taken over .*reason="nobody keeps its lease alive"/);
  });
});
