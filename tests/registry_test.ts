/** registry.ts as a process against a real etcd: ls, get and watch output and exit codes. */
import assert from "node:assert/strict";
import { type Etcd } from "../lib/etcd.ts";
import { encodeRecord, instanceKey, type ServiceRecord } from "../lib/record.ts";
import {
  EtcdCluster,
  EVENT_MS,
  freePort,
  loopback,
  READY_MS,
  runScript,
  Script,
  SOURCE_FLAGS,
  waitFor,
} from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);

function record(ip: string, port: number, service = "apache", meta: Record<string, string> = {}): ServiceRecord {
  // five and a half minutes ago: the AGE column shows 5m for a whole minute
  const registered_at = new Date(Date.now() - 330_000).toISOString();
  return { host: `host-${ip}`, ipv4_addr: ip, port, service, registered_at, meta };
}

async function put(etcd: Etcd, r: ServiceRecord): Promise<string> {
  const key = instanceKey("/services", r.service, r.ipv4_addr, r.port);
  const lease = await etcd.grantLease(60);
  await etcd.putIfAbsent(key, encodeRecord(r), lease);
  return key;
}

async function withEtcd(fn: (cluster: EtcdCluster, etcd: Etcd, flag: string) => Promise<void>) {
  const cluster = await lo.etcd(1);
  await cluster.start();
  const etcd = cluster.client();
  try {
    await fn(cluster, etcd, `--endpoints=${cluster.endpoints[0]}`);
  } finally {
    etcd.close();
    await cluster.stop();
  }
}

const FLAGS = { flags: SOURCE_FLAGS };

Deno.test("registry ls prints a table sorted by service then address, a bad value shown as such", async () => {
  await withEtcd(async (_cluster, etcd, flag) => {
    await put(etcd, record("10.0.0.10", 8080));
    await put(etcd, record("10.0.0.9", 8081, "apache", { zone: "b" }));
    await put(etcd, record("10.0.0.1", 6379, "redis"));
    const lease = await etcd.grantLease(60);
    await etcd.putIfAbsent("/services/apache/10.0.0.99:1", "not json", lease);
    await etcd.putIfAbsent("/elsewhere/x", "{}", lease);

    const all = await runScript("registry.ts", ["ls", flag], FLAGS);
    assert.equal(all.code, 0, all.stderr);
    const rows = all.stdout.trimEnd().split("\n").map((l) => l.split(/\s{2,}/));
    assert.deepEqual(rows[0], ["SERVICE", "ADDRESS", "HOST", "AGE", "STATUS", "META"]);
    assert.deepEqual(rows.slice(1).map((r) => `${r[0]} ${r[1]}`), [
      "apache 10.0.0.9:8081",
      "apache 10.0.0.10:8080",
      "apache 10.0.0.99:1",
      "redis 10.0.0.1:6379",
    ]);
    assert.deepEqual(rows[1].slice(2), ["host-10.0.0.9", "5m", "-", "zone=b"]);
    assert.match(all.stdout, /10\.0\.0\.99:1 .*\(not a record: "not json"\)/);

    const redis = await runScript("registry.ts", ["ls", "redis", flag], FLAGS);
    assert.equal(redis.stdout.trimEnd().split("\n").length, 2);

    const none = await runScript("registry.ts", ["ls", "nginx", flag], FLAGS);
    assert.equal(none.code, 0);
    assert.equal(none.stdout.trim(), "SERVICE  ADDRESS  HOST  AGE  STATUS  META");
  });
});

Deno.test("registry ls --json prints an array of records, each with its key", async () => {
  await withEtcd(async (_cluster, etcd, flag) => {
    const key = await put(etcd, record("10.0.0.1", 80, "apache", { a: "1" }));
    const result = await runScript("registry.ts", ["ls", "apache", "--json", flag], FLAGS);
    assert.equal(result.code, 0, result.stderr);
    const parsed = JSON.parse(result.stdout);
    assert.equal(parsed.length, 1);
    assert.equal(parsed[0].key, key);
    assert.equal(parsed[0].ipv4_addr, "10.0.0.1");
    assert.equal(parsed[0].port, 80);
    assert.deepEqual(parsed[0].meta, { a: "1" });
  });
});

Deno.test("registry get prints the record; Key not found and exit 1 when there is none", async () => {
  await withEtcd(async (_cluster, etcd, flag) => {
    await put(etcd, record("10.0.0.1", 80));
    const found = await runScript("registry.ts", ["get", "apache", "10.0.0.1:80", flag], FLAGS);
    assert.equal(found.code, 0, found.stderr);
    assert.equal(JSON.parse(found.stdout).host, "host-10.0.0.1");
    const missing = await runScript("registry.ts", ["get", "apache", "10.0.0.2:80", flag], FLAGS);
    assert.equal(missing.code, 1);
    assert.equal(missing.stdout, "");
    assert.equal(missing.stderr, "registry: Key not found (/services/apache/10.0.0.2:80)\n");
  });
});

Deno.test("registry ls and get with etcd down: one clear line and exit 1, no hang", async () => {
  // an address of this file's own where nothing listens: no other test's etcd can answer there
  const host = lo.ip(1);
  const endpoint = `http://${host}:${await freePort(host)}`;
  // a hang is killed at READY_MS, and its exit code is not 1
  const [ls, get] = await Promise.all([
    runScript("registry.ts", ["ls", `--endpoints=${endpoint}`], { ...FLAGS, timeoutMs: READY_MS }),
    runScript("registry.ts", ["get", "apache", "1.2.3.4:80", `--endpoints=${endpoint}`], {
      ...FLAGS,
      timeoutMs: READY_MS,
    }),
  ]);
  for (const r of [ls, get]) {
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
    assert.match(
      r.stderr,
      new RegExp(`^registry: cannot read from etcd at ${endpoint.replaceAll(".", "\\.")}: .*ECONNREFUSED`),
    );
  }
});

Deno.test("registry watch prints the instances, then every change, and carries on across an etcd restart", async () => {
  await withEtcd(async (cluster, etcd, flag) => {
    const first = await put(etcd, record("10.0.0.1", 80));
    const watch = Script.deno("registry.ts", ["watch", "apache", flag], FLAGS);
    try {
      await waitFor(
        () => watch.stdout.includes("+ apache 10.0.0.1:80 host=host-10.0.0.1 meta=-"),
        "initial listing",
        READY_MS,
      );
      const second = await put(etcd, record("10.0.0.2", 81, "apache", { v: "2" }));
      await put(etcd, record("10.0.0.3", 82, "redis")); // another service: not shown
      await waitFor(() => watch.stdout.includes("+ apache 10.0.0.2:81 host=host-10.0.0.2 meta=v=2"), "a put", EVENT_MS);
      const lease = (await etcd.get(first))!.lease;
      await etcd.deleteIfLease(first, lease);
      await waitFor(() => watch.stdout.includes("- apache 10.0.0.1:80"), "a delete", EVENT_MS);

      const member = cluster.members[0];
      await member.stop("SIGKILL");
      await watch.waitForLog(/^registry: waiting for etcd/, EVENT_MS);
      member.start();
      await cluster.waitReady();
      await etcd.deleteIfLease(second, (await etcd.get(second))!.lease);
      await waitFor(() => watch.stdout.includes("- apache 10.0.0.2:81"), "a delete after the restart", EVENT_MS);
      await put(etcd, record("10.0.0.4", 84));
      await waitFor(() => watch.stdout.includes("+ apache 10.0.0.4:84"), "a put after the restart", EVENT_MS);
      assert.deepEqual(watch.stdout.trimEnd().split("\n"), [
        "+ apache 10.0.0.1:80 host=host-10.0.0.1 meta=-",
        "+ apache 10.0.0.2:81 host=host-10.0.0.2 meta=v=2",
        "- apache 10.0.0.1:80",
        "- apache 10.0.0.2:81",
        "+ apache 10.0.0.4:84 host=host-10.0.0.4 meta=-",
      ]);
    } finally {
      await watch.stop("SIGTERM");
    }
    assert.equal((await watch.status).code, 0);
  });
});

Deno.test("registry watch --json prints one JSON object a line", async () => {
  await withEtcd(async (_cluster, etcd, flag) => {
    const listed = await put(etcd, record("10.0.0.1", 80));
    const watch = Script.deno("registry.ts", ["watch", "--json", flag], FLAGS);
    try {
      // the first listing shows the watch is up: what follows are changes it saw
      await waitFor(() => watch.stdout.includes("\n"), "the first listing", READY_MS);
      await etcd.deleteIfLease(listed, (await etcd.get(listed))!.lease);
      const added = await put(etcd, record("10.0.0.2", 80));
      await waitFor(() => watch.stdout.split("\n").length >= 4, "three lines", EVENT_MS);
      const lines = watch.stdout.trimEnd().split("\n").map((l) => JSON.parse(l));
      assert.equal(lines.length, 3, watch.stdout);
      assert.equal(lines[0].change, "registered");
      assert.equal(lines[0].key, listed);
      assert.equal(lines[0].ipv4_addr, "10.0.0.1");
      assert.deepEqual(lines[1], { change: "gone", key: listed });
      assert.equal(lines[2].change, "registered");
      assert.equal(lines[2].key, added);
      assert.equal(lines[2].ipv4_addr, "10.0.0.2");
    } finally {
      await watch.stop("SIGTERM");
    }
  });
});

Deno.test("registry watch with etcd down says it is waiting, then lists once etcd answers", async () => {
  // not started yet: its address is this file's own, so nothing else answers there meanwhile
  const cluster = await lo.etcd(1);
  const watch = Script.deno("registry.ts", ["watch", `--endpoints=${cluster.endpoints[0]}`], FLAGS);
  try {
    const endpoint = cluster.endpoints[0].replaceAll(".", "\\.").replaceAll("/", "\\/");
    await watch.waitForLog(new RegExp(`^registry: waiting for etcd at ${endpoint}: `), READY_MS);
    await cluster.start();
    const etcd = cluster.client();
    await put(etcd, record("10.0.0.7", 7));
    etcd.close();
    await waitFor(() => watch.stdout.includes("+ apache 10.0.0.7:7"), "the record once etcd answered", EVENT_MS);
  } finally {
    await watch.stop("SIGTERM");
    await cluster.stop();
  }
});

// What a record may hold to attack the operator's terminal: clear the screen, set the title, return to the
// line's start, forge a row, a CSI in C1 form, reverse the text, a JavaScript line break, DEL.
const HOSTILE = "\x1b[2J\x1b]0;owned\x07\rforged\napache  10.6.6.6:80  forged\u009b31m\u202e\u2028\x7f";
// Characters, not bytes: in UTF-8, 0x80-0x9f are also the continuation bytes of "…" and any non-ASCII text.
// deno-lint-ignore no-control-regex
const RAW_OUTPUT = /[\x00-\x09\x0b-\x1f\x7f-\x9f\p{Cf}\u2028\u2029]/u;

/** `stdout` is `lines` lines, none with a raw control character, each at most `width` characters. */
function assertPrintable(stdout: string, lines: number, what: string, width = 400) {
  const rows = stdout.trimEnd().split("\n");
  assert.equal(rows.length, lines, `${what}:\n${stdout.slice(0, 5000)}`);
  for (const row of rows) {
    assert.doesNotMatch(row, RAW_OUTPUT, `${what}: ${JSON.stringify(row.slice(0, 500))}`);
    assert.ok(row.length <= width, `${what}: a line of ${row.length} characters`);
  }
}

Deno.test("registry ls and watch escape hostile records and mark keys outside the layout, one line each", async () => {
  await withEtcd(async (_cluster, etcd, flag) => {
    const lease = await etcd.grantLease(60);
    const value = (ip: string, fields: Partial<ServiceRecord> = {}) => encodeRecord({ ...record(ip, 80), ...fields });
    const stored: [string, string][] = [
      ["/services/apache/10.0.0.1:80", value("10.0.0.1", { host: HOSTILE, meta: { [HOSTILE]: HOSTILE } })],
      ["/services/apache/10.0.0.2:80", value("10.0.0.2", { host: "h".repeat(1_000_000) })],
      ["/services/apache/10.0.0.3:80", HOSTILE], // not a record
      ["/services/apache/10.0.0.4:80", JSON.stringify({ ...record("10.0.0.4", 80), meta: { o: { a: 1 } } })],
      [`/services/apache${HOSTILE}/10.0.0.5:80`, value("10.0.0.5")],
      [`/services/apache/10.0.0.6:80${HOSTILE}`, value("10.0.0.6")],
      ["/services/apache/x/y", value("10.0.0.7")], // deeper: not service x, address y
      ["/services/foo", value("10.0.0.8")], // directly under the prefix: not service "services"
    ];
    for (const [key, v] of stored) await etcd.putIfAbsent(key, v, lease);

    const all = await runScript("registry.ts", ["ls", flag], FLAGS);
    assert.equal(all.code, 0, all.stderr);
    assertPrintable(all.stdout, 1 + stored.length, "ls");
    assert.match(all.stdout, /\n-  +-  +-  +-  +-  +\(not an instance key: "\/services\/apache\/x\/y"\)\n/);
    assert.match(all.stdout, /\(not an instance key: "\/services\/foo"\)/);
    assert.match(all.stdout, /10\.0\.0\.4:80 .* o=\{"a":1\}\n/);
    assert.doesNotMatch(all.stdout, /\[object Object\]|^(x|services) /m);

    // one service's keys are read relative to the whole prefix too
    const apache = await runScript("registry.ts", ["ls", "apache", flag], FLAGS);
    assert.equal(apache.code, 0, apache.stderr);
    assertPrintable(apache.stdout, 1 + 6, "ls apache");
    assert.match(apache.stdout, /\(not an instance key: "\/services\/apache\/x\/y"\)/);

    const json = await runScript("registry.ts", ["ls", "--json", flag], FLAGS);
    assert.equal(json.code, 0, json.stderr);
    assert.doesNotMatch(json.stdout, RAW_OUTPUT);
    const parsed: Record<string, unknown>[] = JSON.parse(json.stdout);
    assert.equal(parsed.length, stored.length);
    assert.equal(parsed.find((e) => e.key === stored[0][0])?.host, HOSTILE); // complete
    assert.equal((parsed.find((e) => e.key === stored[1][0])?.host as string).length, 1_000_000);
    assert.deepEqual(parsed.find((e) => e.key === "/services/apache/x/y"), {
      key: "/services/apache/x/y",
      invalid: stored[6][1],
      misplaced: true,
    });

    const watch = Script.deno("registry.ts", ["watch", flag], FLAGS);
    const watchJson = Script.deno("registry.ts", ["watch", "--json", flag], FLAGS);
    try {
      const lines = (s: Script) => s.stdout.split("\n").length - 1;
      await waitFor(
        () => lines(watch) >= stored.length && lines(watchJson) >= stored.length,
        "the listings",
        READY_MS,
      );
      await etcd.putIfAbsent("/services/apache/10.0.0.9:80", value("10.0.0.9", { host: HOSTILE }), lease);
      await etcd.deleteIfLease(stored[5][0], lease);
      await waitFor(
        () => lines(watch) >= stored.length + 2 && lines(watchJson) >= stored.length + 2,
        "two changes",
        EVENT_MS,
      );
      // nothing more may come from those two: a last change, seen next, shows nothing came between
      await etcd.putIfAbsent("/services/apache/10.0.0.10:80", value("10.0.0.10", { host: "last" }), lease);
      await waitFor(
        () => watch.stdout.includes("host=last") && watchJson.stdout.includes('"host":"last"'),
        "the last change",
        EVENT_MS,
      );
      assert.match(watch.stdout, /\n\+ apache 10\.0\.0\.10:80 host=last meta=-\n$/);
      assert.match(watchJson.stdout, /\n\{"change":"registered","key":"\/services\/apache\/10\.0\.0\.10:80"[^\n]*\n$/);
      assertPrintable(watch.stdout, stored.length + 3, "watch");
      assert.match(watch.stdout, /^\+ - - \(not an instance key: "\/services\/apache\/x\/y"\)$/m);
      assert.match(watch.stdout, /^\+ apache 10\.0\.0\.9:80 host=\\u001b\[2J/m);
      assert.match(watch.stdout, /^- - - \(not an instance key: "\/services\/apache\/10\.0\.0\.6:80\\u001b/m);
      assertPrintable(watchJson.stdout, stored.length + 3, "watch --json", Infinity); // complete: not cut
      const changes = watchJson.stdout.trimEnd().split("\n").map((l) => JSON.parse(l));
      assert.equal(changes.find((c) => c.key === "/services/apache/10.0.0.9:80")?.host, HOSTILE);
      assert.deepEqual(changes.at(-2), { change: "gone", key: stored[5][0] });
    } finally {
      await watch.stop("SIGTERM");
      await watchJson.stop("SIGTERM");
    }
  });
});

// Fails on the old code: --json dropped Addr and the field no reader knows, nothing flagged the record whose fields
// disagree with its key, and the keys at 0.0.0.0 and 224.0.0.1 were listed as instances.
Deno.test("registry ls and watch --json print the whole record and flag one that disagrees with its key; 0.0.0.0 is no instance", async () => {
  await withEtcd(async (_cluster, etcd, flag) => {
    const goodRecord = record("10.0.0.1", 80);
    const good = await put(etcd, goodRecord);
    const lease = await etcd.grantLease(60);
    const odd = "/services/apache/10.0.0.2:80";
    const stored = { ...record("10.6.6.6", 81), Addr: "10.6.6.6:81", extra: { x: [1] } };
    await etcd.putIfAbsent(odd, JSON.stringify(stored), lease);
    const values = new Map(["0.0.0.0", "224.0.0.1"].map((ip) => [ip, encodeRecord(record(ip, 80))]));
    for (const [ip, value] of values) await etcd.putIfAbsent(`/services/apache/${ip}:80`, value, lease);

    const ls = await runScript("registry.ts", ["ls", flag], FLAGS);
    assert.equal(ls.code, 0, ls.stderr);
    const rows = ls.stdout.trimEnd().split("\n");
    assert.equal(rows.length, 5, ls.stdout);
    assert.match(rows[1], /^apache +10\.0\.0\.1:80 +host-10\.0\.0\.1 +5m +- +-$/);
    assert.match(rows[2], /^apache +10\.0\.0\.2:80 +host-10\.6\.6\.6 +5m +- +\(mismatch: ipv4_addr,port,Addr\) -$/);
    assert.match(rows[3], /^- +- +- +- +- +\(not an instance key: "\/services\/apache\/0\.0\.0\.0:80"\)$/);
    assert.match(rows[4], /\(not an instance key: "\/services\/apache\/224\.0\.0\.1:80"\)$/);

    const json = await runScript("registry.ts", ["ls", "--json", flag], FLAGS);
    assert.equal(json.code, 0, json.stderr);
    const listing = JSON.parse(json.stdout);
    assert.deepEqual(listing[0], { key: good, ...JSON.parse(encodeRecord(goodRecord)) });
    assert.equal(listing[0].Addr, "10.0.0.1:80");
    assert.deepEqual(listing[1], { key: odd, ...stored, mismatch: ["ipv4_addr", "port", "Addr"] });
    assert.deepEqual(listing[2], {
      key: "/services/apache/0.0.0.0:80",
      invalid: values.get("0.0.0.0"),
      misplaced: true,
    });

    const watch = Script.deno("registry.ts", ["watch", "apache", "--json", flag], FLAGS);
    try {
      await waitFor(() => watch.stdout.split("\n").length > 4, "the listing", READY_MS);
      const lines = watch.stdout.trimEnd().split("\n").map((l) => JSON.parse(l));
      assert.deepEqual(lines[1], {
        change: "registered",
        key: odd,
        ...stored,
        mismatch: ["ipv4_addr", "port", "Addr"],
      });
      assert.equal(lines[0].Addr, "10.0.0.1:80");
      assert.equal(lines[0].mismatch, undefined);
    } finally {
      await watch.stop("SIGTERM");
    }
  });
});
