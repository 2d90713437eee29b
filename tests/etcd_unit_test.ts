import assert from "node:assert/strict";
import tls from "node:tls";
import {
  describeError,
  Etcd,
  FIRST_LIST_PAGE_KEYS,
  isCompactedError,
  LIST_PAGE_BYTES,
  listPageKeys,
  MAX_LIST_PAGE_KEYS,
  nextPageKey,
  prefixRangeEnd,
  standInServerName,
} from "../lib/etcd.ts";

Deno.test("prefixRangeEnd() is the first key after every key with the prefix", () => {
  assert.equal(prefixRangeEnd("/services/").toString(), "/services0");
  assert.equal(prefixRangeEnd("ab").toString(), "ac");
});

Deno.test("nextPageKey() is the first key after the last key of a page, in etcd's byte order", () => {
  assert.deepEqual(nextPageKey(Buffer.from("/services/a/10.0.0.1:80")), Buffer.from("/services/a/10.0.0.1:80\0"));
  // raw bytes, not text: a key that is not UTF-8 must continue where it stopped
  assert.deepEqual(nextPageKey(Buffer.from([0x61, 0xff])), Buffer.from([0x61, 0xff, 0x00]));
  // nothing sorts between a key and its successor; every longer key with the key as prefix sorts after it
  const last = Buffer.from("/services/a/10.0.0.1:80");
  const next = nextPageKey(last);
  assert.ok(Buffer.compare(last, next) < 0);
  for (const later of ["/services/a/10.0.0.1:800", "/services/a/10.0.0.1:81", "/services/a/10.0.0.2:80"]) {
    assert.ok(Buffer.compare(next, Buffer.from(later)) <= 0, later);
  }
});

Deno.test("isCompactedError() knows etcd's ErrCompacted, and nothing else", () => {
  assert.ok(isCompactedError(new Error("11 OUT_OF_RANGE: etcdserver: mvcc: required revision has been compacted")));
  assert.ok(!isCompactedError(new Error("11 OUT_OF_RANGE: etcdserver: mvcc: required revision is a future revision")));
  assert.ok(!isCompactedError(new Error("14 UNAVAILABLE: No connection established")));
  assert.ok(!isCompactedError("required revision has been compacted"));
});

Deno.test("new Etcd() refuses a list page size that is not a positive integer", () => {
  for (const listPageSize of [0, -1, 1.5, NaN]) {
    assert.throws(() => new Etcd({ endpoints: ["http://127.0.0.1:2379"], listPageSize }), RangeError);
  }
});

Deno.test("standInServerName() names an IP endpoint for TLS, and leaves a host name alone", () => {
  assert.equal(standInServerName("10.0.0.5"), "10-0-0-5.ip.secretary.invalid");
  assert.equal(standInServerName("[::1]"), "__1.ip.secretary.invalid");
  assert.equal(standInServerName("etcd.example.com"), undefined);
});

Deno.test("a stand-in name's certificate is checked against the IP it stands for, once a client uses one", () => {
  const before = tls.checkServerIdentity;
  new Etcd({ endpoints: ["http://10.0.0.5:2379"] }).close();
  assert.equal(tls.checkServerIdentity, before, "a client without a stand-in changed node:tls");
  new Etcd({ endpoints: ["https://10.0.0.5:2379"] }).close();
  const cert = { subject: { CN: "server" }, subjectaltname: "IP Address:10.0.0.5" } as unknown as tls.PeerCertificate;
  assert.equal(tls.checkServerIdentity(standInServerName("10.0.0.5")!, cert), undefined);
  assert.ok(tls.checkServerIdentity(standInServerName("10.0.0.6")!, cert) instanceof Error);
  assert.ok(tls.checkServerIdentity("10.0.0.6", cert) instanceof Error);
});

Deno.test("describeError() keeps the reason and drops grpc's wrapping", () => {
  assert.equal(
    describeError(
      new Error(
        "14 UNAVAILABLE: No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:1. Resolution note: ",
      ),
    ),
    "connect ECONNREFUSED 127.0.0.1:1",
  );
  assert.equal(
    describeError(
      new Error("14 UNAVAILABLE: No connection established. Last error: Failed to connect (2026-11-26T19:57:05.839Z)"),
    ),
    "Failed to connect",
  );
  assert.match(
    describeError(
      new Error("14 UNAVAILABLE: No connection established. Last error: Error: unable to verify the first certificate"),
    ),
    /check --cacert/,
  );
});

Deno.test("listPageKeys(): a handful first, then as many keys as fit in LIST_PAGE_BYTES at the average size so far", () => {
  const rows: [string, number, number, number][] = [
    ["nothing read yet", 0, 0, FIRST_LIST_PAGE_KEYS],
    ["records of 250 bytes: the rest of 10,000 in one page", 16, 16 * 250, 16_777],
    ["values of 1.45 MiB: two a page", 16, 16 * 1.45 * 2 ** 20, 2],
    ["a value larger than a page: one a page", 1, 8 * 2 ** 20, 1],
    ["empty values, short keys: at most MAX_LIST_PAGE_KEYS", 16, 16 * 10, MAX_LIST_PAGE_KEYS],
    ["no bytes at all", 16, 0, MAX_LIST_PAGE_KEYS],
  ];
  for (const [what, keys, bytes, expected] of rows) assert.equal(listPageKeys(keys, bytes), expected, what);
  assert.equal(LIST_PAGE_BYTES, 4 * 2 ** 20);
});
