import assert from "node:assert/strict";
import {
  addressOfKey,
  checkIpv4,
  checkService,
  decodeEntry,
  encodeRecord,
  instanceKey,
  normalizePrefix,
  serviceOfKey,
  servicePrefix,
  type ServiceRecord,
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

Deno.test("serviceOfKey() and addressOfKey() read a key back", () => {
  assert.equal(serviceOfKey("/services/apache/10.0.0.5:8080"), "apache");
  assert.equal(addressOfKey("/services/apache/10.0.0.5:8080"), "10.0.0.5:8080");
});

Deno.test("encodeRecord() writes valid JSON with the article's fields, the IP quoted and the port a number", () => {
  const parsed = JSON.parse(encodeRecord(record));
  assert.deepEqual(Object.keys(parsed), ["host", "ipv4_addr", "port", "service", "registered_at", "meta"]);
  assert.equal(parsed.ipv4_addr, "10.132.249.206");
  assert.equal(parsed.port, 8081);
});

Deno.test("encodeRecord() stays valid JSON whatever the hostname and meta hold", () => {
  const odd = { ...record, host: 'a"b\\c\n', meta: { "k": '"}{' } };
  assert.deepEqual(JSON.parse(encodeRecord(odd)), odd);
});

Deno.test("decodeEntry() reads back what encodeRecord() wrote", () => {
  assert.deepEqual(decodeEntry("/services/apache/10.132.249.206:8081", encodeRecord(record)), {
    key: "/services/apache/10.132.249.206:8081",
    record,
  });
});

Deno.test("decodeEntry() reads the article's record, port as a string, no service", () => {
  const entry = decodeEntry(
    "/services/apache/10.132.249.206",
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
    const entry = decodeEntry("/services/x/1.2.3.4:1", value);
    assert.equal(entry.record, undefined, value);
    assert.equal(entry.invalid, value);
  }
});

Deno.test("checkService() takes lower-case letters, digits, - _ . and never a /", () => {
  for (const ok of ["apache", "web-1", "a_b.c", "9lives"]) assert.equal(checkService(ok), ok);
  for (const bad of ["", "Apache", "a/b", "../x", "-x", "a b", "é"]) {
    assert.throws(() => checkService(bad), RangeError, bad);
  }
});

Deno.test("checkIpv4() takes dotted IPv4 only", () => {
  for (const ok of ["127.0.0.2", "10.132.249.206", "255.255.255.255", "0.0.0.0"]) assert.equal(checkIpv4(ok), ok);
  for (const bad of ["", "256.0.0.1", "1.2.3", "01.2.3.4", "::1", "host", "1.2.3.4 "]) {
    assert.throws(() => checkIpv4(bad), RangeError, bad);
  }
});

Deno.test("normalizePrefix() trims a trailing slash and rejects a relative or empty path", () => {
  assert.equal(normalizePrefix("/services/"), "/services");
  assert.equal(normalizePrefix("/a/b"), "/a/b");
  for (const bad of ["services", "", "/", "//x", "/a//b"]) assert.throws(() => normalizePrefix(bad), RangeError, bad);
});
