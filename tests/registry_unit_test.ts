import assert from "node:assert/strict";
import { parseCli } from "../registry.ts";
import {
  entryJson,
  formatAge,
  formatChange,
  formatStatus,
  formatTable,
  JSON_OWN_NAMES,
  sortEntries,
  watchChanges,
} from "../lib/show.ts";
import { JSON_DEPTH, limitDepth, printableJson, TOO_DEEP } from "../lib/text.ts";
import { decodeEntry, encodeRecord, type Entry, type ServiceRecord } from "../lib/record.ts";
import { UsageError } from "../lib/cli.ts";
import type { StoredValue } from "../lib/etcd.ts";
import { Listing } from "../lib/listing.ts";

const now = Date.parse("2026-01-01T00:10:00Z");
function rec(ip: string, port: number, service = "apache", meta = {}): ServiceRecord {
  return { host: "core-01", ipv4_addr: ip, port, service, registered_at: "2026-01-01T00:00:00Z", meta };
}
function entry(key: string, value: string): Entry {
  return decodeEntry("/services", key, value);
}
/** The watch lines of a fresh `listing` after what a watcher knew (key to value). */
function relist(known: Map<string, string>, listing: StoredValue[]) {
  const watcher = new Listing();
  watcher.replace([...known].map(([key, value]) => ({ key, value, lease: "0", modRevision: "1" })));
  return watchChanges("/services", watcher.replace(listing));
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
    entry(stored(rec("10.0.0.10", 80)).key, stored(rec("10.0.0.10", 80)).value),
    entry(
      stored(rec("10.0.0.9", 80, "apache", { zone: "a" })).key,
      stored(rec("10.0.0.9", 80, "apache", { zone: "a" })).value,
    ),
    entry("/services/aaa/1.1.1.1:1", "oops"),
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

Deno.test("watchChanges() reports gone keys and new or changed records, nothing for unchanged ones", () => {
  const a = stored(rec("10.0.0.1", 80));
  const b = stored(rec("10.0.0.2", 80));
  const c = stored(rec("10.0.0.3", 80));
  const known = new Map([[a.key, a.value], [b.key, b.value]]);
  const bChanged = { ...b, value: encodeRecord({ ...rec("10.0.0.2", 80), host: "core-02" }) };
  const changes = relist(known, [bChanged, c]);
  assert.deepEqual(changes.map((ch) => `${ch.kind} ${ch.entry.key}`), [
    `- ${a.key}`,
    `+ ${b.key}`,
    `+ ${c.key}`,
  ]);
  assert.deepEqual(relist(new Map([[a.key, a.value]]), [a]), []);
});

Deno.test("formatChange() prints + and - lines, or one JSON object a line", () => {
  const a = stored(rec("10.0.0.1", 80, "apache", { zone: "a" }));
  const e = entry(a.key, a.value);
  assert.equal(formatChange({ kind: "+", entry: e }, false), "+ apache 10.0.0.1:80 host=core-01 meta=zone=a");
  assert.equal(formatChange({ kind: "-", entry: e }, false), "- apache 10.0.0.1:80");
  assert.deepEqual(JSON.parse(formatChange({ kind: "-", entry: e }, true)), { change: "gone", key: a.key });
  assert.equal(JSON.parse(formatChange({ kind: "+", entry: e }, true)).ipv4_addr, "10.0.0.1");
});

// What a record may hold to attack the terminal that shows it: clear the screen, set the title,
// return to the line's start, forge a row, a CSI in C1 form, reverse the text, a JavaScript line break.
const HOSTILE = [
  "\x1b[2J\x1b[H",
  "\x1b]0;owned\x07",
  "ok\rforged",
  "ok\napache   10.6.6.6:80  forged",
  "\u009b31m",
  "\u202eevil",
  "a\u2028b",
  "\x7f\x00\u200b\ufeff",
];
// any control or format character, a line or paragraph separator: none may reach the terminal raw
const RAW = /[\p{Cc}\p{Cf}\u2028\u2029]/u;

/** `text` is `lines` lines, none holding a raw control character. */
function assertShown(text: string, lines: number, what: string) {
  const rows = text.split("\n");
  assert.equal(rows.length, lines, `${what}: ${JSON.stringify(text)}`);
  for (const row of rows) assert.doesNotMatch(row, RAW, `${what}: ${JSON.stringify(row)}`);
}

/** Where a hostile string can sit in a stored key and value. */
const PLACES: [string, (h: string) => { key: string; value: string }][] = [
  ["host", (h) => ({ key: "/services/apache/10.0.0.1:80", value: encodeRecord({ ...rec("10.0.0.1", 80), host: h }) })],
  [
    "meta key",
    (h) => ({ key: "/services/apache/10.0.0.1:80", value: encodeRecord(rec("10.0.0.1", 80, "apache", { [h]: "v" })) }),
  ],
  [
    "meta value",
    (h) => ({ key: "/services/apache/10.0.0.1:80", value: encodeRecord(rec("10.0.0.1", 80, "apache", { k: h })) }),
  ],
  [
    "status",
    (h) => ({
      key: "/services/apache/10.0.0.1:80",
      value: encodeRecord({ ...rec("10.0.0.1", 80), status: { [h]: h, n: [h] } }),
    }),
  ],
  ["not a record", (h) => ({ key: "/services/apache/10.0.0.1:80", value: h })],
  ["service segment", (h) => ({ key: `/services/apache${h}/10.0.0.1:80`, value: encodeRecord(rec("10.0.0.1", 80)) })],
  ["address segment", (h) => ({ key: `/services/apache/10.0.0.1:80${h}`, value: encodeRecord(rec("10.0.0.1", 80)) })],
  ["whole address", (h) => ({ key: `/services/apache/${h}`, value: encodeRecord(rec("10.0.0.1", 80)) })],
];

Deno.test("formatTable() and formatChange() show hostile data escaped, one line a row, nothing raw", () => {
  const plain = stored(rec("10.0.0.2", 80));
  for (const hostile of HOSTILE) {
    for (const [place, make] of PLACES) {
      const what = `${place} ${JSON.stringify(hostile)}`;
      const { key, value } = make(hostile);
      const e = entry(key, value);
      assertShown(formatTable([e, entry(plain.key, plain.value)], now), 3, `table, ${what}`);
      assertShown(formatChange({ kind: "+", entry: e }, false), 1, `watch +, ${what}`);
      assertShown(formatChange({ kind: "-", entry: e }, false), 1, `watch -, ${what}`);
      assertShown(
        relist(new Map([[key, "old"]]), [{ key, value, lease: "1", modRevision: "1" }])
          .map((c) => formatChange(c, false)).join("\n"),
        1,
        `watchChanges, ${what}`,
      );
    }
  }
});

Deno.test("--json output escapes what JSON.stringify lets through, and stays complete", () => {
  for (const hostile of [...HOSTILE, "tag\u{e0041}", "lone\ud800"]) {
    for (const [place, make] of PLACES) {
      const what = `${place} ${JSON.stringify(hostile)}`;
      const { key, value } = make(hostile);
      const e = entry(key, value);
      const line = formatChange({ kind: "+", entry: e }, true);
      assertShown(line, 1, `watch --json, ${what}`);
      assert.deepEqual(JSON.parse(line), { change: "registered", ...entryJson(e) }, what);
      const gone = formatChange({ kind: "-", entry: e }, true);
      assertShown(gone, 1, `watch --json -, ${what}`);
      assert.deepEqual(JSON.parse(gone), { change: "gone", key }, what);
      const listing = printableJson([entryJson(e)], 2);
      for (const row of listing.split("\n")) assert.doesNotMatch(row, RAW, what);
      assert.deepEqual(JSON.parse(listing), [entryJson(e)], what);
    }
  }
});

Deno.test("formatTable() and formatChange() cut a huge field: one 1 MB record does not widen every row", () => {
  const huge = "x".repeat(1 << 20);
  const entries = [
    entry("/services/apache/10.0.0.1:80", encodeRecord({ ...rec("10.0.0.1", 80), host: huge })),
    entry("/services/apache/10.0.0.2:80", encodeRecord(rec("10.0.0.2", 80, "apache", { [huge]: huge }))),
    entry("/services/apache/10.0.0.3:80", encodeRecord({ ...rec("10.0.0.3", 80), status: { huge } })),
    entry("/services/apache/10.0.0.4:80", huge),
    entry(`/services/apache/${huge}`, "{}"),
    entry(`/services/${"a".repeat(128)}/10.0.0.5:80`, encodeRecord(rec("10.0.0.5", 80, "a".repeat(128)))),
    entry(stored(rec("10.0.0.6", 80)).key, stored(rec("10.0.0.6", 80)).value),
  ];
  const table = formatTable(entries, now).split("\n");
  assert.equal(table.length, entries.length + 1);
  for (const row of table) assert.ok(row.length <= 400, `a row of ${row.length} characters: ${row.slice(0, 500)}`);
  for (const e of entries) {
    const line = formatChange({ kind: "+", entry: e }, false);
    assert.ok(line.length <= 400, `a watch line of ${line.length} characters: ${line.slice(0, 500)}`);
  }
  // --json stays complete
  assert.equal(JSON.parse(formatChange({ kind: "+", entry: entries[0] }, true)).host, huge);
});

Deno.test("formatTable() marks a key outside <prefix>/<service>/<ip>:<port> instead of mis-reading it", () => {
  const value = encodeRecord(rec("10.0.0.1", 80));
  const entries = [
    entry("/services/apache/x/y", value),
    entry("/services/foo", value),
    entry("/services/apache/10.0.0.1", value),
    entry("/services/apache/10.0.0.1:80", value),
  ];
  assert.equal(
    formatTable(entries, now),
    [
      "SERVICE  ADDRESS      HOST     AGE  STATUS  META",
      "apache   10.0.0.1:80  core-01  10m  -       -",
      '-        -            -        -    -       (not an instance key: "/services/apache/10.0.0.1")',
      '-        -            -        -    -       (not an instance key: "/services/apache/x/y")',
      '-        -            -        -    -       (not an instance key: "/services/foo")',
    ].join("\n"),
  );
  assert.deepEqual(entryJson(entries[0]), { key: "/services/apache/x/y", invalid: value, misplaced: true });
});

Deno.test("formatTable() and formatChange() show a meta value that is an object as JSON, never [object Object]", () => {
  const value = JSON.stringify({ ...rec("10.0.0.1", 80), meta: { o: { a: 1 }, n: 2, l: [1] } });
  const e = entry("/services/apache/10.0.0.1:80", value);
  assert.match(formatTable([e], now), /o=\{"a":1\},n=2,l=\[1\]$/);
  assert.equal(
    formatChange({ kind: "+", entry: e }, false),
    '+ apache 10.0.0.1:80 host=core-01 meta=o={"a":1},n=2,l=[1]',
  );
});

Deno.test('sortEntries() and watchChanges() take keys outside the layout (no ":"), listing them last', () => {
  const a = stored(rec("10.0.0.1", 80));
  const known = new Map([["/services/foo", "{}"], [a.key, a.value]]);
  const listing = [
    { key: "/services/bar", value: "x", lease: "1", modRevision: "2" },
    { key: "/services/apache/x/y", value: "y", lease: "1", modRevision: "2" },
    a,
    stored(rec("10.0.0.2", 80)),
  ];
  assert.deepEqual(relist(known, listing).map((c) => formatChange(c, false)), [
    '- - - (not an instance key: "/services/foo")',
    "+ apache 10.0.0.2:80 host=core-01 meta=-",
    '+ - - (not an instance key: "/services/apache/x/y")',
    '+ - - (not an instance key: "/services/bar")',
  ]);
  assert.deepEqual(
    sortEntries(listing.map((v) => entry(v.key, v.value))).map((e) => e.key),
    ["/services/apache/10.0.0.1:80", "/services/apache/10.0.0.2:80", "/services/apache/x/y", "/services/bar"],
  );
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
    [["get", "apache", "10.0.0.1:0"], /address "10.0.0.1:0"/],
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

Deno.test("limitDepth() keeps max levels of arrays and objects, the rest as TOO_DEEP, and copies only what it cuts", () => {
  const shallow = { a: [1, { b: "x" }], c: null };
  const cases: [unknown, number, unknown][] = [
    ["text", 0, "text"],
    [null, 0, null],
    [[], 0, TOO_DEEP],
    [{ a: 1 }, 1, { a: 1 }],
    [{ a: {} }, 1, { a: TOO_DEEP }],
    [{ a: [[1]] }, 2, { a: [TOO_DEEP] }],
    [[[[["deep"]]]], 3, [[[TOO_DEEP]]]],
    [shallow, 3, shallow],
  ];
  for (const [value, max, expected] of cases) {
    assert.deepEqual(limitDepth(value, max), expected, `${JSON.stringify(value)} at ${max}`);
  }
  assert.equal(limitDepth(shallow, 3), shallow, "a value within the limit is not copied");
  const proto = JSON.parse('{"__proto__":{"x":[1]},"y":[[1]]}');
  const cut = limitDepth(proto, 2) as Record<string, unknown>;
  assert.deepEqual(Object.keys(cut), ["__proto__", "y"]);
  assert.equal(Object.getPrototypeOf(cut), Object.prototype, "a __proto__ field became the prototype");
  assert.deepEqual(cut.y, [TOO_DEEP]);
  // 700,000 levels, as etcd's 1.5 MiB can hold: no recursion past the limit, so no stack overflow
  const deep = JSON.parse(`${"[".repeat(700_000)}${"]".repeat(700_000)}`);
  assert.equal(JSON.stringify(limitDepth(deep, 3)), `[[["${TOO_DEEP}"]]]`);
  assert.equal(printableJson(deep), `${"[".repeat(JSON_DEPTH)}"${TOO_DEEP}"${"]".repeat(JSON_DEPTH)}`);
});

/** A record with fields that disagree with its key, fields no reader knows, and names --json gives a meaning. */
const ODD = {
  host: "h",
  ipv4_addr: "10.6.6.6",
  port: 81,
  service: "apache",
  registered_at: "2026-01-01T00:00:00Z",
  meta: { zone: "a", n: 1 },
  Addr: "10.6.6.6:81",
  extra: { nested: [1, "two"] },
  key: "/services/apache/10.6.6.6:81",
  mismatch: [],
  change: "gone",
};

// Fails on the old code: --json dropped Addr and every field it did not know, and nothing flagged a mismatch.
Deno.test("--json prints the whole stored record, Addr and unknown fields too, and names the fields that disagree", () => {
  const key = "/services/apache/10.0.0.1:80";
  const e = entry(key, JSON.stringify(ODD));
  const { key: _k, mismatch: _m, change: _c, ...rest } = ODD;
  const whole = { key, ...rest, mismatch: ["ipv4_addr", "port", "Addr"] };
  assert.deepEqual(entryJson(e), whole);
  assert.deepEqual(JSON.parse(formatChange({ kind: "+", entry: e }, true)), { change: "registered", ...whole });
  assert.deepEqual(JSON.parse(printableJson([entryJson(e)], 2)), [whole]);
  // a record that agrees has no mismatch field; the stored values are shown as stored (the port as text here)
  const article = entry(key, '{"ipv4_addr":"10.0.0.1","port":"80","mismatch":["forged"]}');
  assert.deepEqual(entryJson(article), { key, ipv4_addr: "10.0.0.1", port: "80" });
  assert.deepEqual(JSON_OWN_NAMES.filter((name) => name in ODD), ["key", "change", "mismatch"]);
});

// Fails on the old code: the table and the watch line showed such a record like any other.
Deno.test("formatTable() and formatChange() flag a record whose fields disagree with its key; ADDRESS is the key's", () => {
  const e = entry("/services/apache/10.0.0.1:80", JSON.stringify(ODD));
  const good = stored(rec("10.0.0.2", 80));
  assert.equal(
    formatTable([e, entry(good.key, good.value)], now),
    [
      "SERVICE  ADDRESS      HOST     AGE  STATUS  META",
      "apache   10.0.0.1:80  h        10m  -       (mismatch: ipv4_addr,port,Addr) zone=a,n=1",
      "apache   10.0.0.2:80  core-01  10m  -       -",
    ].join("\n"),
  );
  assert.equal(
    formatChange({ kind: "+", entry: e }, false),
    "+ apache 10.0.0.1:80 host=h mismatch=ipv4_addr,port,Addr meta=zone=a,n=1",
  );
  assert.equal(formatChange({ kind: "-", entry: e }, false), "- apache 10.0.0.1:80");
});

// Fails on the old code under node: JSON.stringify of the meta value overflowed the stack (bundle: tests/readers_test.ts).
Deno.test("a record 100,000 levels deep beside a good one: every printer shows both, the deep part as (too deep)", () => {
  const deepValue =
    `{"host":"deep","ipv4_addr":"10.0.0.1","port":80,"meta":{"a":${"[".repeat(1e5)}${"]".repeat(1e5)}},` +
    `"status":{"s":${'{"a":'.repeat(1e5)}1${"}".repeat(1e5)}}}`;
  const deep = entry("/services/apache/10.0.0.1:80", deepValue);
  const good = stored(rec("10.0.0.2", 80));
  const entries = [deep, entry(good.key, good.value)];
  const table = formatTable(entries, now).split("\n");
  assert.equal(table.length, 3);
  assert.match(table[1], /^apache +10\.0\.0\.1:80 +deep +- +s={"a":{"a":.*… {2}a=\[{30}"\(too deep\)"\]+…$/);
  assert.match(table[2], /^apache +10\.0\.0\.2:80 +core-01 /);
  const listing = JSON.parse(printableJson(sortEntries(entries).map(entryJson), 2));
  assert.deepEqual(listing.map((o: { key: string }) => o.key), entries.map((x) => x.key));
  assert.match(JSON.stringify(listing[0].meta.a), /^\[{30}"\(too deep\)"\]{30}$/);
  assert.equal(listing[1].host, "core-01");
  for (const e of entries) {
    assert.equal(formatChange({ kind: "+", entry: e }, false).split("\n").length, 1);
    assert.equal(JSON.parse(formatChange({ kind: "+", entry: e }, true)).key, e.key);
  }
  const status = JSON.parse(`{"s":${"[".repeat(1e5)}${"]".repeat(1e5)}}`);
  assert.equal(formatStatus(status, Infinity), `s=${"[".repeat(JSON_DEPTH)}"${TOO_DEEP}"${"]".repeat(JSON_DEPTH)}`);
});
