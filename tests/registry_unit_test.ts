import assert from "node:assert/strict";
import { diffListing, formatAge, formatChange, formatTable, parseCli } from "../registry.ts";
import { decodeEntry, encodeRecord, type ServiceRecord } from "../lib/record.ts";
import { UsageError } from "../lib/cli.ts";

const now = Date.parse("2026-01-01T00:10:00Z");
function rec(ip: string, port: number, service = "apache", meta = {}): ServiceRecord {
  return { host: "core-01", ipv4_addr: ip, port, service, registered_at: "2026-01-01T00:00:00Z", meta };
}
function stored(r: ServiceRecord) {
  return {
    key: `/services/${r.service}/${r.ipv4_addr}:${r.port}`,
    value: encodeRecord(r),
    lease: "1",
    modRevision: "1",
  };
}

Deno.test("formatAge() is short and readable", () => {
  assert.equal(formatAge("2026-01-01T00:09:58Z", now), "2s");
  assert.equal(formatAge("2026-01-01T00:00:00Z", now), "10m");
  assert.equal(formatAge("2025-12-31T20:00:00Z", now), "4h");
  assert.equal(formatAge("2025-12-20T00:00:00Z", now), "12d");
  assert.equal(formatAge("", now), "-");
});

Deno.test("formatTable() sorts by service then address, numerically, and shows a bad value as such", () => {
  const entries = [
    decodeEntry(stored(rec("10.0.0.10", 80)).key, stored(rec("10.0.0.10", 80)).value),
    decodeEntry(
      stored(rec("10.0.0.9", 80, "apache", { zone: "a" })).key,
      stored(rec("10.0.0.9", 80, "apache", { zone: "a" })).value,
    ),
    decodeEntry("/services/aaa/1.1.1.1:1", "oops"),
  ];
  assert.equal(
    formatTable(entries, now),
    [
      "SERVICE  ADDRESS       HOST     AGE  STATUS  META",
      'aaa      1.1.1.1:1     -        -    -       (not a record: "oops")',
      "apache   10.0.0.9:80   core-01  10m  -       zone=a",
      "apache   10.0.0.10:80  core-01  10m  -       -",
    ].join("\n"),
  );
});

Deno.test("diffListing() reports gone keys and new or changed records, nothing for unchanged ones", () => {
  const a = stored(rec("10.0.0.1", 80));
  const b = stored(rec("10.0.0.2", 80));
  const c = stored(rec("10.0.0.3", 80));
  const known = new Map([[a.key, a.value], [b.key, b.value]]);
  const bChanged = { ...b, value: encodeRecord({ ...rec("10.0.0.2", 80), host: "core-02" }) };
  const changes = diffListing(known, [bChanged, c]);
  assert.deepEqual(changes.map((ch) => `${ch.kind} ${ch.kind === "-" ? ch.key : ch.entry.key}`), [
    `- ${a.key}`,
    `+ ${b.key}`,
    `+ ${c.key}`,
  ]);
  assert.deepEqual(diffListing(new Map([[a.key, a.value]]), [a]), []);
});

Deno.test("formatChange() prints + and - lines, or one JSON object a line", () => {
  const a = stored(rec("10.0.0.1", 80, "apache", { zone: "a" }));
  const entry = decodeEntry(a.key, a.value);
  assert.equal(formatChange({ kind: "+", entry }, false), "+ apache 10.0.0.1:80 host=core-01 meta=zone=a");
  assert.equal(formatChange({ kind: "-", key: a.key }, false), "- apache 10.0.0.1:80");
  assert.deepEqual(JSON.parse(formatChange({ kind: "-", key: a.key }, true)), { change: "gone", key: a.key });
  assert.equal(JSON.parse(formatChange({ kind: "+", entry }, true)).ipv4_addr, "10.0.0.1");
});

Deno.test("parseCli() takes ls, get and watch with the connection flags", () => {
  assert.deepEqual(parseCli(["ls"], {}), {
    command: "ls",
    service: undefined,
    json: false,
    prefix: "/services",
    etcd: { endpoints: ["http://127.0.0.1:2379"] },
  });
  const get = parseCli(["get", "apache", "10.0.0.1:8080", "--endpoints", "10.0.0.2:2379"], {});
  assert.equal(get.command, "get");
  assert.ok(get.command === "get" && get.ip === "10.0.0.1" && get.port === 8080);
  assert.equal(parseCli(["watch", "web", "--json"], { ETCDCTL_ENDPOINTS: "http://e:1" }).command, "watch");
});

Deno.test("parseCli() rejects bad commands and arguments, naming the value", () => {
  const cases: [string[], RegExp][] = [
    [[], /Missing command/],
    [["list"], /command "list"/],
    [["get", "apache"], /expected SERVICE IP:PORT/],
    [["get", "apache", "10.0.0.1"], /address "10.0.0.1"/],
    [["get", "apache", "10.0.0.1:0"], /port "0"/],
    [["get", "Apache", "10.0.0.1:80"], /service "Apache"/],
    [["ls", "a/b"], /service "a\/b"/],
    [["ls", "a", "b"], /at most SERVICE/],
    [["ls", "--prefix", "x"], /prefix "x"/],
  ];
  for (const [args, message] of cases) {
    assert.throws(
      () => parseCli(args, {}),
      (err: Error) => err instanceof UsageError && message.test(err.message),
      args.join(" "),
    );
  }
});
