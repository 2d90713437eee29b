/**
 * secretary.ts against a real etcd, real HTTP targets and real signals.
 * Short intervals keep each test to a few seconds; the bounds asserted are the
 * product's (fall checks, the TTL), never a speed target.
 */
import assert from "node:assert/strict";
import { decodeEntry } from "../lib/record.ts";
import { delay, registered, testServer, waitFor, withBed } from "../testbed/testbed.ts";

Deno.test("secretary registers a healthy instance, deregisters it when it stops, registers it again when it starts", async () => {
  await withBed(async (bed) => {
    const t = await testServer(bed, "127.0.0.2");
    const s = bed.secretary(t, ["--meta=zone=a"]);
    const key = bed.key(t);
    await waitFor(() => bed.present(key), "registered", 5000);
    const stored = await bed.etcd.get(key);
    const entry = decodeEntry("/services", key, stored!.value);
    assert.equal(entry.record?.host, "testhost");
    assert.equal(entry.record?.ipv4_addr, "127.0.0.2");
    assert.equal(entry.record?.port, t.port);
    assert.equal(entry.record?.service, "apache");
    assert.deepEqual(entry.record?.meta, { zone: "a" });
    assert.notEqual(stored!.lease, "0");

    await t.setMode("closed");
    await waitFor(async () => !(await bed.present(key)), "deregistered after the target stopped", 3000);
    await s.waitForLog(/^deregistered key=\S+ reason=ECONNREFUSED/);

    await t.setMode("ok");
    await waitFor(() => bed.present(key), "registered again", 3000);
    assert.equal((await bed.etcd.get(key))!.lease, stored!.lease, "one lease for the life of the process");
  });
});

Deno.test("secretary removes a hung instance (accepts, never answers) and brings it back once it answers", async () => {
  await withBed(async (bed) => {
    const { t, s, key } = await registered(bed, "127.0.0.3");
    await t.setMode("hang");
    await waitFor(async () => !(await bed.present(key)), "deregistered while hung", 4000);
    await s.waitForLog(/deregistered .*reason="no answer within 300ms"/);
    await t.setMode("ok");
    await waitFor(() => bed.present(key), "registered again after answering", 3000);
  });
});

Deno.test("secretary treats an HTTP 500 as failing and a 3xx as passing, like curl -f", async () => {
  await withBed(async (bed) => {
    const t = await testServer(bed, "127.0.0.4");
    t.mode = "error";
    const s = bed.secretary(t);
    await s.waitForLog(/check failed reason="status 500"/);
    await delay(1500);
    assert.equal(await bed.present(bed.key(t)), false, "a 500 is never registered");
  });
});

Deno.test("secretary with --check tcp passes on an open port whatever it answers", async () => {
  await withBed(async (bed) => {
    const t = await testServer(bed, "127.0.0.4");
    t.mode = "hang";
    bed.secretary(t, ["--check=tcp", "--service=redis"]);
    await waitFor(() => bed.present(bed.key(t, "redis")), "registered by a tcp check", 5000);
  });
});

Deno.test("SIGTERM revokes the lease: the record is gone before the process exits, exit 0", async () => {
  await withBed(async (bed) => {
    const { s, key } = await registered(bed, "127.0.0.5");
    s.kill("SIGTERM");
    const status = await s.finished();
    assert.equal(status.code, 0);
    assert.equal(await bed.present(key), false, "record still there after the secretary exited");
    assert.match(s.stderr, /stopped; record removed key=\S+ signal=SIGTERM/);
  });
});

Deno.test("SIGINT stops the secretary the same way", async () => {
  await withBed(async (bed) => {
    const { s, key } = await registered(bed, "127.0.0.5");
    s.kill("SIGINT");
    assert.equal((await s.finished()).code, 0);
    assert.equal(await bed.present(key), false);
  });
});

Deno.test("SIGKILL leaves the record until the TTL and no longer", async () => {
  await withBed(async (bed) => {
    const { s, key } = await registered(bed, "127.0.0.6");
    s.kill("SIGKILL");
    await s.finished();
    const killedAt = Date.now();
    await delay(2000);
    assert.equal(await bed.present(key), true, "the lease keeps the record for its TTL");
    await waitFor(
      async () => !(await bed.present(key)),
      "expired with the lease",
      5000 + 1500 - (Date.now() - killedAt),
    );
  });
});

Deno.test("two instances on one IP are both listed, and stopping one keeps the other", async () => {
  await withBed(async (bed) => {
    const a = await testServer(bed, "127.0.0.7");
    const b = await testServer(bed, "127.0.0.7");
    const sa = bed.secretary(a);
    bed.secretary(b);
    await waitFor(
      async () => (await bed.present(bed.key(a))) && (await bed.present(bed.key(b))),
      "both registered",
      5000,
    );
    sa.kill("SIGTERM");
    await sa.finished();
    assert.equal(await bed.present(bed.key(a)), false);
    assert.equal(await bed.present(bed.key(b)), true, "stopping one removed the other");
    await a.setMode("closed");
    await delay(1000);
    assert.equal(await bed.present(bed.key(b)), true);
  });
});

Deno.test("no etcd write while the instance stays healthy: the revision does not move", async () => {
  await withBed(async (bed) => {
    const t = await testServer(bed, "127.0.0.8");
    const s = bed.secretary(t);
    await waitFor(() => bed.present(bed.key(t)), "registered", 5000);
    const before = await bed.etcd.revision();
    const checksBefore = t.requests;
    // more than a TTL: keep-alives and the once-a-TTL read of its own key happen in here
    await delay(6000);
    assert.ok(t.requests - checksBefore >= 8, `only ${t.requests - checksBefore} checks ran`);
    assert.equal(await bed.etcd.revision(), before);
    assert.doesNotMatch(s.stderr, /lease lost|etcd call failed/);
  });
});

Deno.test("a record deleted by hand comes back within about a TTL", async () => {
  await withBed(async (bed) => {
    const { s, key } = await registered(bed, "127.0.0.9");
    const lease = (await bed.etcd.get(key))!.lease;
    assert.ok(await bed.etcd.deleteIfLease(key, lease));
    await waitFor(() => bed.present(key), "restored", 5000 + 2000);
    await s.waitForLog(/record missing; restoring/);
  });
});

Deno.test("etcd down for less than the TTL: the record is still there, or back within a few seconds", async () => {
  await withBed(async (bed) => {
    const { s, key } = await registered(bed, "127.0.0.10");
    const member = bed.cluster.members[0];
    await member.stop("SIGKILL");
    await delay(2000);
    member.start();
    await bed.cluster.waitReady();
    await waitFor(() => bed.present(key), "registered after etcd came back", 4000);
    assert.equal(s.child.pid > 0, true);
  });
});

Deno.test("etcd down for longer than the TTL: the lease is lost, and the record is back within a few seconds of etcd answering", async () => {
  await withBed(async (bed) => {
    const { s, key } = await registered(bed, "127.0.0.11");
    const lease = (await bed.etcd.get(key))!.lease;
    const member = bed.cluster.members[0];
    await member.stop("SIGKILL");
    await s.waitForLog(/etcd call failed; retrying/, 8000);
    await delay(8000);
    member.start();
    await bed.cluster.waitReady();
    // etcd keeps an unexpired lease across its restart, so the old record may show first: wait for the new lease
    await waitFor(
      async () => {
        const stored = await bed.etcd.get(key);
        return stored !== undefined && stored.lease !== lease;
      },
      "registered again under a new lease after etcd came back",
      4000,
    );
    await s.waitForLog(/^registered again /);
    await s.waitForLog(/lease lost/);
  });
});

Deno.test("two secretaries for one instance by mistake: neither deletes the record the other holds; the log says so", async () => {
  await withBed(async (bed) => {
    const t = await testServer(bed, "127.0.0.12");
    const key = bed.key(t);
    const a = bed.secretary(t);
    const leaseA = (await waitFor(() => bed.etcd.get(key), "the first registered", 5000)).lease;
    const b = bed.secretary(t);
    await b.waitForLog(/^not registered: another lease holds the record/, 5000);
    b.kill("SIGTERM");
    assert.equal((await b.finished()).code, 0);
    assert.equal((await bed.etcd.get(key))?.lease, leaseA, "the second secretary's stop removed the first's record");

    const c = bed.secretary(t);
    await c.waitForLog(/^not registered: another lease holds the record/, 5000);
    await delay(1500);
    assert.equal((await bed.etcd.get(key))?.lease, leaseA, "the record changed hands while both ran");
    a.kill("SIGTERM");
    await a.finished();
    // the one left takes the record over within about an interval
    const taken = await waitFor(
      async () => {
        const stored = await bed.etcd.get(key);
        return stored && stored.lease !== leaseA ? stored : undefined;
      },
      "the other secretary to register",
      3000,
    );
    assert.notEqual(taken.lease, leaseA);
    await c.waitForLog(/^registered /);
  });
});

Deno.test("a secretary restarted after a crash takes its predecessor's record over, never missing", async () => {
  await withBed(async (bed) => {
    const t = await testServer(bed, "127.0.0.13");
    const key = bed.key(t);
    const first = bed.secretary(t);
    const crashed = (await waitFor(() => bed.etcd.get(key), "registered", 5000)).lease;
    first.kill("SIGKILL"); // as a crash would: no revoke
    await first.finished();
    const second = bed.secretary(t); // as systemd's Restart= would
    let missing = 0;
    const taken = await waitFor(
      async () => {
        const stored = await bed.etcd.get(key);
        if (!stored) missing++;
        return stored && stored.lease !== crashed ? stored : undefined;
      },
      "the record under the new secretary's lease",
      5000 + 1000,
      100,
    );
    assert.equal(missing, 0, "the record was missing during the takeover");
    assert.notEqual(taken.lease, crashed);
    await second.waitForLog(/^record taken over .*reason="nobody keeps its lease alive"/);
  });
});
