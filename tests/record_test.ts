import assert from "node:assert/strict";
import {
  decodeEntry,
  encodeRecord,
  instanceKey,
  normalizePrefix,
  parseAddress,
  parseKey,
  RECORD_DEPTH,
  recordMismatch,
  servicePrefix,
  type ServiceRecord,
  validateIpv4,
  validateService,
} from "../lib/record.ts";

const record: ServiceRecord = {
  host: "core-01",
  ipv4_addr: "10.132.249.206",
  port: 8081,
  service: "apache",
  registered_at: "2026-01-02T03:04:05.000Z",
  meta: { zone: "a" },
};

Deno.test("instanceKey() is <prefix>/<service>/<ip>:<port>, one per instance", () => {
  assert.equal(instanceKey("/services", "apache", "10.0.0.5", 8080), "/services/apache/10.0.0.5:8080");
  assert.notEqual(
    instanceKey("/services", "apache", "10.0.0.5", 8080),
    instanceKey("/services", "apache", "10.0.0.5", 8081),
  );
  assert.equal(servicePrefix("/services", "apache"), "/services/apache/");
  assert.equal(servicePrefix("/services"), "/services/");
});

Deno.test("parseKey() reads back what instanceKey() wrote, relative to the prefix", () => {
  assert.deepEqual(parseKey("/services", "/services/apache/10.0.0.5:8080"), {
    service: "apache",
    address: "10.0.0.5:8080",
  });
  assert.deepEqual(parseKey("/a/b", instanceKey("/a/b", "web-1.x_y", "255.255.255.254", 65535)), {
    service: "web-1.x_y",
    address: "255.255.255.254:65535",
  });
});

Deno.test("parseKey() gives nothing for a key that does not fit <prefix>/<service>/<ip>:<port>", () => {
  const keys = [
    "/services/apache/x/y", // deeper: not service x, address y
    "/services/apache/10.0.0.5:80/y",
    "/services/foo", // directly under the prefix: not service "services"
    "/services/10.0.0.5:80",
    "/services/",
    "/services",
    "/elsewhere/apache/10.0.0.5:80", // another prefix
    "/servicesx/apache/10.0.0.5:80",
    "/a/services/apache/10.0.0.5:80",
    "/services//10.0.0.5:80",
    "/services/Apache/10.0.0.5:80", // not a service name
    "/services/../10.0.0.5:80",
    "/services/apache/10.0.0.5", // the article's <ip> key, no port
    "/services/apache/10.0.0.5:",
    "/services/apache/10.0.0.5:0",
    "/services/apache/10.0.0.5:65536",
    "/services/apache/10.0.0.5:080", // instanceKey() never writes a leading zero
    "/services/apache/10.0.0.05:80",
    "/services/apache/host:80",
    "/services/apache/:80",
    "/services/apache\x1b[2J/10.0.0.5:80", // control characters in either segment
    "/services/apache/10.0.0.5:80\n",
    "/services/apache/10.0.0.5:80\u202e",
    "/services/apache\u2028/10.0.0.5:80",
    "/services/apache\u009b/10.0.0.5:80",
    `/services/${"a".repeat(129)}/10.0.0.5:80`,
  ];
  for (const key of keys) assert.equal(parseKey("/services", key), undefined, JSON.stringify(key));
});

Deno.test("encodeRecord() writes valid JSON with the article's fields, the IP quoted and the port a number", () => {
  const parsed = JSON.parse(encodeRecord(record));
  assert.deepEqual(Object.keys(parsed), ["host", "ipv4_addr", "port", "service", "registered_at", "meta", "Addr"]);
  assert.equal(parsed.ipv4_addr, "10.132.249.206");
  assert.equal(parsed.port, 8081);
});

Deno.test("encodeRecord() writes Addr as etcd's gRPC resolver reads it: ip:port, and no Metadata", () => {
  const parsed = JSON.parse(encodeRecord({ ...record, status: { v: 1 } }));
  assert.equal(parsed.Addr, "10.132.249.206:8081");
  // the resolver matches JSON names without regard to case: nothing else may read as Addr or Metadata
  assert.deepEqual(Object.keys(parsed).filter((k) => /^(addr|metadata|op)$/i.test(k)), ["Addr"]);
});

Deno.test("decodeEntry() reads a record written before Addr existed, and one with it, alike", () => {
  const key = "/services/apache/10.132.249.206:8081";
  const withAddr = encodeRecord(record);
  const without = JSON.stringify({ ...JSON.parse(withAddr), Addr: undefined });
  assert.ok(!without.includes("Addr"));
  assert.deepEqual(decodeEntry("/services", key, without).record, decodeEntry("/services", key, withAddr).record);
  assert.deepEqual(decodeEntry("/services", key, without).record, record);
  assert.deepEqual(decodeEntry("/services", key, without).mismatch, []);
  assert.deepEqual(decodeEntry("/services", key, withAddr).mismatch, []);
});

Deno.test("encodeRecord() stays valid JSON whatever the hostname and meta hold", () => {
  const odd = { ...record, host: 'a"b\\c\n', meta: { "k": '"}{' } };
  assert.deepEqual(JSON.parse(encodeRecord(odd)), { ...odd, Addr: "10.132.249.206:8081" });
});

Deno.test("decodeEntry() reads back what encodeRecord() wrote", () => {
  assert.deepEqual(decodeEntry("/services", "/services/apache/10.132.249.206:8081", encodeRecord(record)), {
    key: "/services/apache/10.132.249.206:8081",
    service: "apache",
    address: "10.132.249.206:8081",
    record,
    stored: { ...record, Addr: "10.132.249.206:8081" },
    mismatch: [],
  });
});

Deno.test("decodeEntry() reads the article's record, port as a string, no service", () => {
  const entry = decodeEntry(
    "/services",
    "/services/apache/10.132.249.206:8081",
    '{"host": "core-01", "ipv4_addr": "10.132.249.206", "port": "8081"}',
  );
  assert.equal(entry.record?.port, 8081);
  assert.equal(entry.record?.service, "apache");
});

Deno.test("decodeEntry() reports a value that is not a record instead of throwing", () => {
  for (
    const value of [
      "",
      "not json",
      "[1]",
      "null",
      '{"host":"x"}',
      '{"ipv4_addr": 10.0.0.1}',
      '{"ipv4_addr":"1.2.3.4","port":"x"}',
    ]
  ) {
    const entry = decodeEntry("/services", "/services/x/1.2.3.4:1", value);
    assert.equal(entry.record, undefined, value);
    assert.equal(entry.invalid, value);
  }
});

Deno.test("decodeEntry() marks a key outside the layout, whatever its value, and never guesses its service", () => {
  for (
    const key of ["/services/apache/x/y", "/services/foo", "/services/apache/10.0.0.5", "/services/Apache/1.2.3.4:1"]
  ) {
    const value = encodeRecord({ ...record, service: "apache" });
    assert.deepEqual(decodeEntry("/services", key, value), { key, invalid: value }, key);
  }
  // the prefix decides: one key, two readers
  const key = "/services/apache/10.0.0.5:80";
  assert.equal(decodeEntry("/services", key, encodeRecord(record)).service, "apache");
  assert.equal(decodeEntry("/services/apache", key, encodeRecord(record)).record, undefined);
});

Deno.test("decodeEntry() takes a meta value that is not a string as its JSON text, never [object Object]", () => {
  const meta = { s: "x", n: 1, b: true, z: null, o: { a: 1 }, l: [1, "2"] };
  const value = JSON.stringify({ ...record, meta });
  assert.deepEqual(decodeEntry("/services", "/services/apache/10.132.249.206:8081", value).record?.meta, {
    s: "x",
    n: "1",
    b: "true",
    z: "null",
    o: '{"a":1}',
    l: '[1,"2"]',
  });
  for (const odd of ["[1]", '"zone=a"', "1", "null"]) {
    const entry = decodeEntry(
      "/services",
      "/services/apache/1.2.3.4:1",
      `{"ipv4_addr":"1.2.3.4","port":1,"meta":${odd}}`,
    );
    assert.deepEqual(entry.record?.meta, {}, odd);
  }
});

Deno.test("validateService() takes lower-case letters, digits, - _ . and never a /", () => {
  for (const ok of ["apache", "web-1", "a_b.c", "9lives"]) assert.equal(validateService(ok), ok);
  for (const bad of ["", "Apache", "a/b", "../x", "-x", "a b", "é"]) {
    assert.throws(() => validateService(bad), RangeError, bad);
  }
});

Deno.test("validateIpv4() takes dotted IPv4 only", () => {
  for (const ok of ["127.0.0.2", "10.132.249.206", "255.255.255.254"]) assert.equal(validateIpv4(ok), ok);
  for (const bad of ["", "256.0.0.1", "1.2.3", "01.2.3.4", "::1", "host", "1.2.3.4 "]) {
    assert.throws(() => validateIpv4(bad), RangeError, bad);
  }
});

// Fails on the old code: it took all of these, and 0.0.0.0 in HAProxy dials the proxy host itself.
Deno.test("validateIpv4() refuses what is not one instance: unspecified, multicast, broadcast; takes the rest", () => {
  const cases: [string, string | undefined][] = [
    ["0.0.0.0", "unspecified"],
    ["0.1.2.3", "unspecified"],
    ["0.255.255.255", "unspecified"],
    ["224.0.0.1", "multicast"],
    ["239.255.255.255", "multicast"],
    ["230.1.2.3", "multicast"],
    ["255.255.255.255", "broadcast"],
    ["1.0.0.0", undefined],
    ["127.0.0.1", undefined],
    ["223.255.255.255", undefined],
    ["240.0.0.1", undefined], // reserved (class E), routed as unicast by Linux, used by some private clouds
    ["255.255.255.254", undefined],
  ];
  for (const [ip, why] of cases) {
    if (why === undefined) {
      assert.equal(validateIpv4(ip), ip);
      assert.deepEqual(parseKey("/services", `/services/a/${ip}:80`), { service: "a", address: `${ip}:80` });
      continue;
    }
    assert.throws(
      () => validateIpv4(ip),
      (err: Error) =>
        err instanceof RangeError && err.message.startsWith(`Cannot use IP "${ip}": `) &&
        err.message.includes(why) && !err.message.includes("\n"),
      ip,
    );
    assert.throws(() => parseAddress(`${ip}:80`), RangeError, ip);
    // not an instance for any reader: no record, so neither sync nor render routes to it
    const key = `/services/a/${ip}:80`;
    assert.equal(parseKey("/services", key), undefined, ip);
    const value = encodeRecord({ ...record, ipv4_addr: ip, port: 80 });
    assert.deepEqual(decodeEntry("/services", key, value), { key, invalid: value }, ip);
  }
});

Deno.test("normalizePrefix() trims a trailing slash and rejects a relative or empty path", () => {
  assert.equal(normalizePrefix("/services/"), "/services");
  assert.equal(normalizePrefix("/a/b"), "/a/b");
  for (const bad of ["services", "", "/", "//x", "/a//b"]) assert.throws(() => normalizePrefix(bad), RangeError, bad);
});

// Fails on the old code: there was no recordMismatch().
Deno.test("recordMismatch() names each field that disagrees with the key, and nothing for one that agrees", () => {
  const place = { service: "apache", address: "10.0.0.5:8080" };
  const good = { ipv4_addr: "10.0.0.5", port: 8080, service: "apache", Addr: "10.0.0.5:8080" };
  const cases: [string, Record<string, unknown>, string[]][] = [
    ["all agree", good, []],
    ["no service, no Addr: an older record", { ipv4_addr: "10.0.0.5", port: 8080 }, []],
    ["the article's port as text", { ...good, port: "8080" }, []],
    ["another ip", { ...good, ipv4_addr: "10.6.6.6" }, ["ipv4_addr"]],
    ["the same ip written otherwise", { ...good, ipv4_addr: "010.0.0.5" }, ["ipv4_addr"]],
    ["another port", { ...good, port: 81 }, ["port"]],
    ["a port text with a leading zero", { ...good, port: "08080" }, ["port"]],
    ["a port text with spaces", { ...good, port: " 8080" }, ["port"]],
    ["a port that is not a number", { ...good, port: [8080] }, ["port"]],
    ["another service", { ...good, service: "redis" }, ["service"]],
    ["a service that is not text", { ...good, service: 1 }, ["service"]],
    ["a null service", { ...good, service: null }, ["service"]],
    ["another Addr", { ...good, Addr: "10.6.6.6:8080" }, ["Addr"]],
    ["an Addr that is not text", { ...good, Addr: null }, ["Addr"]],
    // etcd's gRPC resolver is Go: it reads any letter case of Addr, the last one written winning
    ["a lower-case addr beside a good Addr", { ...good, addr: "10.6.6.6:1" }, ["addr"]],
    ["an ADDR alone", { ipv4_addr: "10.0.0.5", port: 8080, ADDR: "10.6.6.6:1" }, ["ADDR"]],
    ["an address field is not Addr", { ...good, address: "x" }, []],
    [
      "all at once, in order",
      { Addr: "1.1.1.1:1", service: "x", port: 1, ipv4_addr: "1.1.1.1" },
      ["ipv4_addr", "port", "service", "Addr"],
    ],
  ];
  for (const [what, stored, expected] of cases) assert.deepEqual(recordMismatch(place, stored), expected, what);
});

Deno.test("decodeEntry() keeps the whole stored object and flags what disagrees with the key", () => {
  const key = "/services/apache/10.0.0.5:8080";
  const stored = { ipv4_addr: "10.6.6.6", port: 81, Addr: "10.6.6.6:81", extra: { a: [1] }, service: "apache" };
  const entry = decodeEntry("/services", key, JSON.stringify(stored));
  assert.deepEqual(entry.stored, stored);
  assert.deepEqual(entry.mismatch, ["ipv4_addr", "port", "Addr"]);
  // the key's address is the instance's: what routes traffic reads address, never ipv4_addr
  assert.equal(entry.address, "10.0.0.5:8080");
});

/** The nesting depth of JSON data, counted without recursion. */
function depthOf(value: unknown): number {
  let deepest = 0;
  const stack: [unknown, number][] = [[value, 1]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (typeof v !== "object" || v === null) continue;
    deepest = Math.max(deepest, depth);
    for (const child of Object.values(v)) stack.push([child, depth + 1]);
  }
  return deepest;
}

/** What etcd can hold that a reader must survive. */
const HOSTILE_VALUES: [string, string][] = [
  ["meta 100,000 levels deep", `{"ipv4_addr":"10.0.0.5","port":80,"meta":{"a":${"[".repeat(1e5)}${"]".repeat(1e5)}}}`],
  [
    "status 100,000 levels deep",
    `{"ipv4_addr":"10.0.0.5","port":80,"status":{"a":${'{"a":'.repeat(1e5)}1${"}".repeat(1e5)}}}`,
  ],
  [
    "an unknown field 700,000 levels deep",
    `{"ipv4_addr":"10.0.0.5","port":80,"x":${"[".repeat(7e5)}${"]".repeat(7e5)}}`,
  ],
  ["a 1.5 MB host", JSON.stringify({ ipv4_addr: "10.0.0.5", port: 80, host: "h".repeat(1_500_000) })],
  [
    "100,000 meta fields",
    JSON.stringify({
      ipv4_addr: "10.0.0.5",
      port: 80,
      meta: Object.fromEntries(Array.from({ length: 1e5 }, (_, i) => [`k${i}`, i])),
    }),
  ],
  [
    "invalid UTF-8 as a reader gets it",
    // lib/etcd.ts reads a value as Buffer.toString() does: each invalid byte becomes U+FFFD
    Buffer.from([...Buffer.from('{"ipv4_addr":"10.0.0.5","port":80,"host":"'), 0xff, 0xc0, 0x80, 0x22, 0x7d])
      .toString(),
  ],
  ["lone surrogates", '{"ipv4_addr":"10.0.0.5","port":80,"host":"\\ud800","meta":{"\\udfff":"\\ud800"}}'],
  [
    "__proto__ everywhere",
    '{"ipv4_addr":"10.0.0.5","port":80,"__proto__":{"x":1},"meta":{"__proto__":{"y":2}},"status":{"__proto__":[]}}',
  ],
];

// Fails on the old code: it kept a value as deep as stored (no stored object, and a meta text of 200,000 characters),
// which JSON.stringify cannot print under node (Maximum call stack size exceeded).
Deno.test("decodeEntry() never throws and keeps at most RECORD_DEPTH levels, whatever etcd holds", () => {
  const key = "/services/apache/10.0.0.5:80";
  for (const [what, value] of HOSTILE_VALUES) {
    const entry = decodeEntry("/services", key, value);
    assert.ok(entry.record, what);
    assert.ok(depthOf(entry.stored) <= RECORD_DEPTH, `${what}: ${depthOf(entry.stored)} levels`);
    assert.ok(depthOf(entry.record) <= RECORD_DEPTH, what);
    for (const text of Object.values(entry.record.meta)) assert.ok(text.length < 1000 || what.includes("1.5 MB"), what);
    assert.doesNotThrow(() => JSON.stringify(entry), what);
    assert.equal(Object.getPrototypeOf(entry.record.meta), Object.prototype, what);
  }
  const deep = decodeEntry("/services", key, HOSTILE_VALUES[0][1]).record!.meta.a;
  assert.match(deep, /^\[{30}"\(too deep\)"\]{30}$/);
  const proto = decodeEntry("/services", key, HOSTILE_VALUES[7][1]);
  assert.deepEqual(Object.keys(proto.stored!), ["ipv4_addr", "port", "__proto__", "meta", "status"]);
  assert.deepEqual(proto.record!.meta, JSON.parse('{"__proto__":"{\\"y\\":2}"}'));
  assert.equal(Object.hasOwn(proto.record!.meta, "__proto__"), true);
});
