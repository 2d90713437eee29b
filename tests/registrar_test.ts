/**
 * The registrar's decisions: plan() as a table, and EtcdRegistrar's loop
 * against an in-memory etcd (a fake is fine here: this is the registrar's
 * logic; the behaviour tests use a real etcd).
 */
import assert from "node:assert/strict";
import {
  type Action,
  backoffMs,
  type EtcdClient,
  EtcdRegistrar,
  initialKnown,
  type Known,
  newLeaseId,
  plan,
  type RegistrarOptions,
} from "../lib/registrar.ts";
import { DeadlineError, LeaseExistsError, type StoredValue } from "../lib/etcd.ts";

/** An etcd of one map, recording its writes and every call; `down` makes every call fail as a network error would. */
class FakeEtcd implements EtcdClient {
  keys = new Map<string, StoredValue>();
  leases = new Set<string>();
  /** Seconds left on each lease (all granted for 10 s); a lease absent here is kept alive at 10. */
  ttls = new Map<string, number>();
  writes: string[] = [];
  /** Every call, answered or not: a transaction whose compare fails is still a raft proposal. */
  calls: string[] = [];
  down = false;
  /** Grant the lease ID asked for, as etcd does (the other tests read the fake's own 1, 2, …). */
  askedIds = false;
  /** Grants whose answer is lost: the lease is made, the call fails past its deadline. */
  lostGrantAnswers = 0;
  /** Grants past their deadline that make nothing (etcd too busy to apply them in time). */
  slowGrants = 0;
  #next = 1;

  #check(call: string) {
    this.calls.push(call);
    if (this.down) return Promise.reject(new Error("14 UNAVAILABLE: connect ECONNREFUSED"));
  }
  async grantLease(_ttl: number, asked?: string) {
    await this.#check("grantLease");
    if (this.slowGrants > 0) {
      this.slowGrants--;
      throw new DeadlineError("lease grant took longer than 1750 ms");
    }
    const id = this.askedIds && asked !== undefined ? asked : String(this.#next++);
    if (this.leases.has(id)) throw new LeaseExistsError(`lease ${id} already exists`);
    this.leases.add(id);
    this.writes.push(`grant ${id}`);
    if (this.lostGrantAnswers > 0) {
      this.lostGrantAnswers--;
      throw new DeadlineError("lease grant took longer than 1750 ms");
    }
    return id;
  }
  async keepAlive(lease: string) {
    await this.#check("keepAlive");
    return this.leases.has(lease) ? 10 : 0;
  }
  async leaseTimeToLive(lease: string) {
    await this.#check("leaseTimeToLive");
    return this.leases.has(lease) ? { ttlSeconds: this.ttls.get(lease) ?? 10, grantedSeconds: 10 } : undefined;
  }
  async revokeLease(lease: string) {
    await this.#check("revokeLease");
    this.leases.delete(lease);
    for (const [k, v] of this.keys) if (v.lease === lease) this.keys.delete(k);
    this.writes.push(`revoke ${lease}`);
  }
  async putIfAbsent(key: string, value: string, lease: string) {
    await this.#check("putIfAbsent");
    const existing = this.keys.get(key);
    if (existing) return existing;
    if (!this.leases.has(lease)) throw new Error("requested lease not found");
    const stored = { key, value, lease, modRevision: "1" };
    this.keys.set(key, stored);
    this.writes.push(`put ${lease}`);
    return stored;
  }
  async putIfLease(key: string, value: string, lease: string, previous: string) {
    await this.#check("putIfLease");
    if (this.keys.get(key)?.lease !== previous) return false;
    this.keys.set(key, { key, value, lease, modRevision: "2" });
    this.writes.push(previous === lease ? `rewrite ${lease}` : `move ${previous}->${lease}`);
    return true;
  }
  async deleteIfLease(key: string, lease: string) {
    await this.#check("deleteIfLease");
    if (this.keys.get(key)?.lease !== lease) return false;
    this.keys.delete(key);
    this.writes.push(`delete ${lease}`);
    return true;
  }
  async get(key: string) {
    await this.#check("get");
    return this.keys.get(key);
  }
  close() {}
}

const config: RegistrarOptions = {
  prefix: "/services",
  instance: { host: "h", ipv4_addr: "10.0.0.5", port: 8080, service: "apache", meta: {} },
  intervalMs: 2000,
  ttlSeconds: 10,
};
const KEY = "/services/apache/10.0.0.5:8080";

function setup() {
  const etcd = new FakeEtcd();
  let clock = 1_000_000;
  const logs: string[] = [];
  const registrar = new EtcdRegistrar(config, etcd, {
    now: () => clock,
    sleep: () => Promise.resolve(),
    random: () => 0.5,
    log: (_level, event) => logs.push(event),
  });
  return { etcd, registrar, logs, advance: (ms: number) => (clock += ms) };
}

Deno.test("registrar grants one lease at start and puts the record only when wanted", async () => {
  const { etcd, registrar } = setup();
  await registrar.reconcile();
  assert.deepEqual(etcd.writes, ["grant 1"]);
  registrar.want(true, "2 checks passed");
  await registrar.reconcile();
  assert.deepEqual(etcd.writes, ["grant 1", "put 1"]);
  assert.equal(JSON.parse(etcd.keys.get(KEY)!.value).ipv4_addr, "10.0.0.5");
});

Deno.test("registrar writes nothing while nothing changes: keep-alives and reads only", async () => {
  const { etcd, registrar, advance } = setup();
  registrar.want(true, "up");
  await registrar.reconcile();
  const writes = etcd.writes.length;
  for (let i = 0; i < 100; i++) {
    advance(await registrar.reconcile());
  }
  assert.equal(etcd.writes.length, writes);
});

Deno.test("registrar deletes only its own record, and keeps its lease", async () => {
  const { etcd, registrar } = setup();
  registrar.want(true, "up");
  await registrar.reconcile();
  registrar.want(false, "ECONNREFUSED");
  await registrar.reconcile();
  assert.deepEqual(etcd.writes, ["grant 1", "put 1", "delete 1"]);
  assert.ok(etcd.leases.has("1"));
});

Deno.test("registrar leaves a record held by another lease alone and takes over once it goes", async () => {
  const { etcd, registrar, logs, advance } = setup();
  etcd.leases.add("99");
  etcd.keys.set(KEY, { key: KEY, value: "{}", lease: "99", modRevision: "1" });
  registrar.want(true, "up");
  await registrar.reconcile();
  assert.equal(etcd.keys.get(KEY)?.lease, "99");
  assert.ok(logs.some((l) => l === "registration blocked"));
  registrar.want(false, "down");
  await registrar.reconcile();
  assert.equal(etcd.keys.get(KEY)?.lease, "99", "deleted another's record");
  registrar.want(true, "up");
  etcd.keys.delete(KEY);
  advance(config.intervalMs);
  await registrar.reconcile();
  assert.equal(etcd.keys.get(KEY)?.lease, "1");
});

Deno.test("registrar takes over, in one write, a record whose lease nobody keeps alive (a crashed predecessor's)", async () => {
  const { etcd, registrar, logs } = setup();
  etcd.leases.add("99");
  etcd.ttls.set("99", 5); // under two thirds of 10 s left: no keep-alive for over a third of its TTL
  etcd.keys.set(KEY, { key: KEY, value: "{}", lease: "99", modRevision: "1" });
  registrar.want(true, "up");
  await registrar.reconcile();
  assert.deepEqual(etcd.writes, ["grant 1", "move 99->1", "revoke 99"]);
  assert.equal(etcd.keys.get(KEY)?.lease, "1");
  assert.ok(logs.includes("record taken over"));
});

Deno.test("registrar takes over, in one write, a record written by hand with no lease, and deletes it when the instance fails", async () => {
  const { etcd, registrar, logs } = setup();
  etcd.keys.set(KEY, { key: KEY, value: '{"by":"hand"}', lease: "0", modRevision: "7" });
  registrar.want(true, "up");
  await registrar.reconcile();
  assert.deepEqual(etcd.writes, ["grant 1", "move 0->1"]);
  assert.equal(etcd.keys.get(KEY)?.lease, "1");
  assert.equal(JSON.parse(etcd.keys.get(KEY)!.value).ipv4_addr, "10.0.0.5");
  assert.ok(logs.includes("record taken over"));
  assert.ok(logs.includes("registered"));
  registrar.want(false, "down");
  await registrar.reconcile();
  assert.equal(etcd.keys.has(KEY), false, "the record outlived its instance");
});

Deno.test("registrar takes over a record rewritten by hand with no lease while it was registered", async () => {
  const { etcd, registrar, logs, advance } = setup();
  registrar.want(true, "up");
  await registrar.reconcile();
  etcd.keys.set(KEY, { key: KEY, value: '{"by":"hand"}', lease: "0", modRevision: "9" });
  for (let waited = 0; etcd.keys.get(KEY)?.lease !== "1" && waited < 3 * config.ttlSeconds * 1000;) {
    const wait = await registrar.reconcile();
    advance(wait);
    waited += wait;
  }
  assert.equal(etcd.keys.get(KEY)?.lease, "1", "the hand-written record blocks the secretary");
  assert.ok(logs.includes("record taken over"));
});

Deno.test("registrar says etcd answered again only once etcd has answered, not after a pass that called nothing", async () => {
  const { etcd, registrar, logs, advance } = setup();
  registrar.want(true, "up");
  await registrar.reconcile();
  advance((config.ttlSeconds * 1000) / 3); // a keep-alive is due
  etcd.down = true;
  advance(await registrar.reconcile()); // the keep-alive fails
  assert.ok(logs.includes("etcd call failed"));
  const calls = etcd.calls.length;
  assert.equal(etcd.calls.at(-1), "keepAlive", "the failed pass was a keep-alive");
  advance(await registrar.reconcile()); // nothing is due: this pass calls nothing, keep-alives and reads included
  assert.deepEqual(etcd.calls.slice(calls), [], "the pass called etcd");
  assert.ok(!logs.includes("etcd answered"), "said while etcd was still down");
  etcd.down = false;
  for (let waited = 0; !logs.includes("etcd answered") && waited < config.ttlSeconds * 1000;) {
    const wait = await registrar.reconcile();
    advance(wait);
    waited += wait;
  }
  assert.equal(logs.filter((l) => l === "etcd answered").length, 1);
});

Deno.test("registrar replaces a lease lost in an outage and moves the record over from its old lease in one write", async () => {
  const { etcd, registrar, logs, advance } = setup();
  registrar.want(true, "up");
  await registrar.reconcile();
  etcd.down = true;
  for (let waited = 0; waited <= 11_000;) {
    const wait = await registrar.reconcile();
    advance(wait);
    waited += wait;
  }
  assert.ok(logs.includes("lease lost"));
  etcd.down = false; // etcd came back and kept lease 1 alive, as it does across a restart
  await registrar.reconcile();
  assert.deepEqual(etcd.writes.slice(2), ["grant 2", "move 1->2", "revoke 1"]);
  assert.equal(etcd.keys.get(KEY)?.lease, "2");
  assert.equal(logs.filter((l) => l === "registered").length, 2, logs.join("; "));
});

Deno.test("registrar restores a record deleted by hand about once a TTL", async () => {
  const { etcd, registrar, logs, advance } = setup();
  registrar.want(true, "up");
  await registrar.reconcile();
  etcd.keys.delete(KEY);
  let waited = 0;
  while (!etcd.keys.has(KEY) && waited < 20_000) {
    const wait = await registrar.reconcile();
    advance(wait);
    waited += wait;
  }
  assert.ok(etcd.keys.has(KEY));
  assert.ok(waited <= config.ttlSeconds * 1000 + 10, `restored after ${waited} ms`); // + rounding to whole ms
  assert.ok(logs.includes("record restored"));
});

Deno.test("registrar revokes its lease on stop, and grants nothing after", async () => {
  const { etcd, registrar } = setup();
  registrar.want(true, "up");
  await registrar.reconcile();
  assert.equal(await registrar.stop(), true);
  assert.equal(etcd.keys.size, 0);
  await registrar.reconcile();
  assert.equal(etcd.keys.size, 0);
});

Deno.test("registrar publishes a reported status with the record, and rewrites it only when it changes", async () => {
  const { etcd, registrar, advance } = setup();
  registrar.report({ version: "1.2", queue: 3 });
  registrar.want(true, "up");
  await registrar.reconcile();
  assert.deepEqual(JSON.parse(etcd.keys.get(KEY)!.value).status, { version: "1.2", queue: 3 });
  const registeredAt = JSON.parse(etcd.keys.get(KEY)!.value).registered_at;
  for (let i = 0; i < 20; i++) {
    registrar.report({ version: "1.2", queue: 3 }); // the same data, check after check
    advance(await registrar.reconcile());
  }
  assert.deepEqual(etcd.writes, ["grant 1", "put 1"]);
  registrar.report({ version: "1.2", queue: 4 });
  await registrar.reconcile();
  assert.deepEqual(etcd.writes, ["grant 1", "put 1", "rewrite 1"]);
  const record = JSON.parse(etcd.keys.get(KEY)!.value);
  assert.deepEqual(record.status, { version: "1.2", queue: 4 });
  assert.equal(record.registered_at, registeredAt, "a status change is not a new registration");
  registrar.report(undefined);
  await registrar.reconcile();
  assert.equal(JSON.parse(etcd.keys.get(KEY)!.value).status, undefined);
});

Deno.test("registrar writes a status reported while deregistered only when it registers", async () => {
  const { etcd, registrar } = setup();
  await registrar.reconcile();
  registrar.report({ v: 1 });
  registrar.report({ v: 2 });
  await registrar.reconcile();
  assert.deepEqual(etcd.writes, ["grant 1"]);
  registrar.want(true, "up");
  await registrar.reconcile();
  assert.deepEqual(etcd.writes, ["grant 1", "put 1"]);
  assert.deepEqual(JSON.parse(etcd.keys.get(KEY)!.value).status, { v: 2 });
});

// ---------------------------------------------------------------------------
// plan() as a table

const TIMING = { ttlSeconds: 10, intervalMs: 2000 };
const NOW = 1_000_000;

/** A registrar that holds lease "7", kept alive just now, its record verified just now. */
function healthy(overrides: Partial<Known> = {}): Known {
  return {
    ...initialKnown(),
    desired: true,
    reason: "up",
    lease: "7",
    lastKeepAliveSentMs: NOW,
    lastKeepAliveOkMs: NOW,
    lastVerifiedMs: NOW,
    holding: { kind: "ours" },
    ...overrides,
  };
}

Deno.test("plan() picks the next action from what is known, the time and the wanted state", () => {
  const rows: [string, Known, number, Action][] = [
    ["nothing yet: grant a lease", initialKnown(), NOW, { kind: "grant" }],
    ["stopping: nothing more", healthy({ stopping: true }), NOW, { kind: "wait", ms: Infinity }],
    ["healthy and nothing due: wait for the keep-alive", healthy(), NOW, { kind: "wait", ms: 3334 }],
    ["a third of the TTL since the keep-alive: keep alive", healthy(), NOW + 3334, { kind: "keep alive" }],
    [
      "no keep-alive answered for a TTL: the lease is lost",
      healthy({ lastKeepAliveSentMs: NOW + 9000 }),
      NOW + 10_001,
      {
        kind: "lose lease",
        reason: "no keep-alive answered for 10s",
      },
    ],
    ["a new lease and old ones: sweep the old ones first", healthy({ staleLeases: ["3"], sweepStale: true }), NOW, {
      kind: "sweep stale",
    }],
    ["wanted, not held: put", healthy({ holding: { kind: "none" } }), NOW, { kind: "put" }],
    ["wanted, held with no lease: take over", healthy({ holding: { kind: "other", lease: "0" } }), NOW, {
      kind: "take over",
      from: "0",
      reason: "the record has no lease",
    }],
    [
      "wanted, held by an old lease of ours: take over",
      healthy({ staleLeases: ["3"], holding: { kind: "other", lease: "3" } }),
      NOW,
      {
        kind: "take over",
        from: "3",
        reason: "an earlier lease of ours",
      },
    ],
    ["wanted, held by another lease: inspect it", healthy({ holding: { kind: "other", lease: "9" } }), NOW, {
      kind: "inspect",
      lease: "9",
    }],
    [
      "another lease nobody keeps alive: take over",
      healthy({ holding: { kind: "other", lease: "9", orphaned: true } }),
      NOW,
      {
        kind: "take over",
        from: "9",
        reason: "nobody keeps its lease alive",
      },
    ],
    [
      "another live lease: read again after an interval",
      healthy({ holding: { kind: "other", lease: "9", orphaned: false } }),
      NOW + 1000,
      {
        kind: "wait",
        ms: 1000,
      },
    ],
    [
      "another live lease, an interval on: verify",
      healthy({ holding: { kind: "other", lease: "9", orphaned: false } }),
      NOW + 2000,
      {
        kind: "verify",
      },
    ],
    [
      "ours, a TTL since the last read (and a keep-alive just sent): verify",
      healthy({ lastKeepAliveSentMs: NOW + 9000, lastKeepAliveOkMs: NOW + 9000 }),
      NOW + 10_000,
      {
        kind: "verify",
      },
    ],
    ["ours, the status changed: rewrite", healthy({ status: '{"v":2}', writtenStatus: '{"v":1}' }), NOW, {
      kind: "rewrite",
    }],
    ["not wanted, ours: delete", healthy({ desired: false }), NOW, { kind: "delete" }],
    [
      "not wanted, another's: forget it, never delete it",
      healthy({ desired: false, holding: { kind: "other", lease: "9" } }),
      NOW,
      {
        kind: "forget",
      },
    ],
    [
      "not wanted, not held: wait for the keep-alive only",
      healthy({ desired: false, holding: { kind: "none" } }),
      NOW + 1000,
      {
        kind: "wait",
        ms: 2334,
      },
    ],
  ];
  for (const [what, known, now, action] of rows) assert.deepEqual(plan(known, now, TIMING), action, what);
});

Deno.test("plan() with the agent's shared host lease: no lease action of its own, the record's actions as before", () => {
  const shared = (overrides: Partial<Known> = {}) => healthy({ shared: true, ...overrides });
  const rows: [string, Known, number, Action][] = [
    ["no host lease yet: wait to be woken, never grant", { ...initialKnown(), shared: true }, NOW, {
      kind: "wait",
      ms: Infinity,
    }],
    ["wanted, no host lease yet: wait, never put", shared({ lease: undefined, holding: { kind: "none" } }), NOW, {
      kind: "wait",
      ms: Infinity,
    }],
    ["a third of the TTL since a keep-alive: not this registrar's to send", shared(), NOW + 3334, {
      kind: "wait",
      ms: 6666,
    }],
    ["no keep-alive answered for a TTL: not this registrar's to lose", shared(), NOW + 10_001, { kind: "verify" }],
    ["wanted, not held: put under the host lease", shared({ holding: { kind: "none" } }), NOW, { kind: "put" }],
    [
      "wanted, held by an earlier lease of the host: take over",
      shared({ staleLeases: ["3"], holding: { kind: "other", lease: "3" } }),
      NOW,
      { kind: "take over", from: "3", reason: "an earlier lease of ours" },
    ],
    ["not wanted, ours: delete", shared({ desired: false }), NOW, { kind: "delete" }],
    ["not wanted, not held: nothing due at all", shared({ desired: false, holding: { kind: "none" } }), NOW, {
      kind: "wait",
      ms: Infinity,
    }],
    ["stopping: nothing more", shared({ stopping: true }), NOW, { kind: "wait", ms: Infinity }],
  ];
  for (const [what, known, now, action] of rows) assert.deepEqual(plan(known, now, TIMING), action, what);
});

Deno.test("backoffMs() doubles to 1 s for a network failure and to 15 s for a refusal or an overload, jittered by half", () => {
  assert.deepEqual([1, 2, 3, 4, 5].map((n) => backoffMs(n, true, 1)), [200, 400, 800, 1000, 1000]);
  assert.equal(backoffMs(10, false, 1), 15_000);
  assert.equal(backoffMs(10, false, 0), 7500);
  assert.deepEqual([1, 5, 7, 8, 20].map((n) => backoffMs(n, true, 1, true)), [200, 3200, 12_800, 15_000, 15_000]);
});

Deno.test("newLeaseId() is a positive int64 below 2^62, from two draws", () => {
  const rows: [number[], string][] = [
    [[0, 0], "1"], // never 0: etcd would choose
    [[0, 0.5], String(2 ** 30)],
    [[0.5, 0], String(2n ** 61n)],
    [[1 - 2 ** -53, 1 - 2 ** -53], String(2n ** 62n - 1n)], // the largest draws below 1
  ];
  for (const [draws, want] of rows) {
    const queue = [...draws];
    assert.equal(newLeaseId(() => queue.shift()!), want, draws.join(","));
  }
});

Deno.test("registrar: a grant whose answer was lost is asked again with the same ID, and the lease it made is used, not a second", async () => {
  const { etcd, registrar, logs } = setup();
  etcd.askedIds = true;
  etcd.lostGrantAnswers = 1;
  registrar.want(true, "up");
  const wait = await registrar.reconcile(); // the grant's answer is lost
  assert.equal(etcd.leases.size, 1);
  assert.ok(wait >= 100 && wait <= 200, `backoff ${wait} ms after one failure`);
  await registrar.reconcile(); // asked again: etcd says it exists, so it is ours
  assert.equal(etcd.leases.size, 1, "a second lease was granted");
  const [lease] = etcd.leases;
  assert.deepEqual(etcd.calls.slice(0, 4), ["grantLease", "grantLease", "keepAlive", "putIfAbsent"]);
  assert.equal(etcd.keys.get(KEY)?.lease, lease);
  assert.ok(logs.includes("lease granted") && logs.includes("registered"), logs.join(" "));
});

Deno.test("registrar: grants past their deadline back off up to 15 s, not 1 s; a grant in doubt is revoked on stop", async () => {
  const { etcd, registrar } = setup();
  etcd.askedIds = true;
  etcd.slowGrants = 9;
  etcd.lostGrantAnswers = 1;
  const waits = [];
  for (let i = 0; i < 10; i++) waits.push(await registrar.reconcile());
  // random() is 0.5: three quarters of each cap
  assert.deepEqual(waits, [150, 300, 600, 1200, 2400, 4800, 9600, 11_250, 11_250, 11_250]);
  assert.equal(etcd.leases.size, 1, "the tenth grant made a lease, its answer lost");
  await registrar.stop();
  assert.equal(etcd.leases.size, 0, "the lease of the grant in doubt outlived stop()");
});

Deno.test("registrar makes no proposal in a healthy minute: keep-alives every TTL/3 and a read a TTL, nothing else", async () => {
  const { etcd, registrar, advance } = setup();
  registrar.want(true, "up");
  await registrar.reconcile();
  assert.deepEqual(etcd.calls, ["grantLease", "putIfAbsent"]);
  etcd.calls = [];
  for (let waited = 0; waited < 60_000;) {
    const wait = await registrar.reconcile();
    advance(wait);
    waited += wait;
  }
  const counts: Record<string, number> = {};
  for (const call of etcd.calls) counts[call] = (counts[call] ?? 0) + 1;
  // a transaction whose compare fails (a put of a record already there) would be a proposal too: none at all
  assert.deepEqual(Object.keys(counts).sort(), ["get", "keepAlive"], etcd.calls.join(" "));
  assert.ok(counts.keepAlive >= 17 && counts.keepAlive <= 19, `${counts.keepAlive} keep-alives`);
  assert.ok(counts.get >= 5 && counts.get <= 7, `${counts.get} reads`);
});
