import assert from "node:assert/strict";
import {
  decodeEntry,
  encodeRecord,
  instanceKey,
  normalizePrefix,
  parseKey,
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
  assert.deepEqual(parseKey("/a/b", instanceKey("/a/b", "web-1.x_y", "255.255.255.255", 65535)), {
    service: "web-1.x_y",
    address: "255.255.255.255:65535",
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
  assert.deepEqual(decodeEntry("/services", key, without), decodeEntry("/services", key, withAddr));
  assert.deepEqual(decodeEntry("/services", key, without).record, record);
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
  for (const ok of ["127.0.0.2", "10.132.249.206", "255.255.255.255", "0.0.0.0"]) assert.equal(validateIpv4(ok), ok);
  for (const bad of ["", "256.0.0.1", "1.2.3", "01.2.3.4", "::1", "host", "1.2.3.4 "]) {
    assert.throws(() => validateIpv4(bad), RangeError, bad);
  }
});

Deno.test("normalizePrefix() trims a trailing slash and rejects a relative or empty path", () => {
  assert.equal(normalizePrefix("/services/"), "/services");
  assert.equal(normalizePrefix("/a/b"), "/a/b");
  for (const bad of ["services", "", "/", "//x", "/a//b"]) assert.throws(() => normalizePrefix(bad), RangeError, bad);
});
