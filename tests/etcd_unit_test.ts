import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import tls from "node:tls";
import protobuf from "protobufjs";
import { camelCase } from "../lib/client-definition.ts";
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
import { decodeRangeResponse, type RangePage } from "../lib/wire.ts";

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

// ---------------------------------------------------------------------------
// lib/wire.ts: a listing's Range answers, read from their bytes

const rpc = new protobuf.Root().loadSync("node_modules/etcd3/proto/rpc.proto", { keepCase: true });
const RangeResponse = rpc.lookupType("etcdserverpb.RangeResponse");

/** A RangeResponse's bytes, as etcd sends them (protobufjs from etcd's own .proto files). */
function rangeBytes(message: object): Buffer {
  return Buffer.from(RangeResponse.encode(RangeResponse.fromObject(message)).finish());
}

Deno.test("decodeRangeResponse() reads the fields a listing uses, as etcd3's decoder gives them", () => {
  const cases: { name: string; message: object; expected: RangePage }[] = [
    { name: "empty: proto3's defaults", message: {}, expected: { revision: "0", kvs: [], more: false } },
    {
      name: "records, more to come; count and the other revisions skipped",
      message: {
        header: { cluster_id: "14841639068965178418", member_id: "10276657743932975437", revision: "42", raft_term: 3 },
        kvs: [
          {
            key: "L2EvMQ==",
            value: "e30=",
            create_revision: 5,
            mod_revision: "41",
            version: 2,
            lease: "7587883412870946562",
          },
          { key: "L2EvMg==", value: "", mod_revision: 9 },
        ],
        more: true,
        count: 10000,
      },
      expected: {
        revision: "42",
        kvs: [
          { key: Buffer.from("/a/1"), value: Buffer.from("{}"), lease: "7587883412870946562", modRevision: "41" },
          { key: Buffer.from("/a/2"), value: Buffer.from(""), lease: "0", modRevision: "9" },
        ],
        more: true,
      },
    },
    {
      name: "int64s past 2^53 and below 0 stay exact",
      message: {
        header: { revision: "9007199254740993" },
        kvs: [{ key: "eA==", lease: "9223372036854775807", mod_revision: "-1" }],
      },
      expected: {
        revision: "9007199254740993",
        kvs: [{ key: Buffer.from("x"), value: Buffer.from(""), lease: "9223372036854775807", modRevision: "-1" }],
        more: false,
      },
    },
  ];
  for (const c of cases) {
    const bytes = rangeBytes(c.message);
    const page = decodeRangeResponse(bytes);
    assert.deepEqual(
      page.kvs.map((kv) => ({ ...kv, key: Buffer.from(kv.key), value: Buffer.from(kv.value) })),
      c.expected.kvs,
      c.name,
    );
    assert.equal(page.revision, c.expected.revision, c.name);
    assert.equal(page.more, c.expected.more, c.name);
    // the same as etcd3's own decoder (proto-loader's options: int64s as strings)
    // deno-lint-ignore no-explicit-any
    const theirs = RangeResponse.toObject(RangeResponse.decode(bytes), { longs: String, defaults: true }) as any;
    assert.equal(page.revision, theirs.header?.revision ?? "0", c.name);
    assert.deepEqual(
      page.kvs.map((kv) => [kv.lease, kv.modRevision]),
      theirs.kvs.map((kv: { lease: string; mod_revision: string }) => [kv.lease, kv.mod_revision]),
    );
  }
});

Deno.test("decodeRangeResponse(): keys and values are views of the message; unknown fields are skipped", () => {
  const bytes = rangeBytes({ header: { revision: "7" }, kvs: [{ key: "YQ==", value: "Yg==", mod_revision: 7 }] });
  const page = decodeRangeResponse(bytes);
  assert.equal(page.kvs[0].key.buffer, bytes.buffer, "a view, not a copy");
  // a newer etcd's fields (numbers this reader does not know), of every wire type, before and after the known ones
  const unknown = Buffer.from([
    0x78,
    0x96,
    0x01, // field 15, varint 150
    0x81,
    0x01,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8, // field 16, fixed64
    0x8a,
    0x01,
    0x02,
    0x68,
    0x69, // field 17, 2 bytes
    0x95,
    0x01,
    1,
    2,
    3,
    4, // field 18, fixed32
  ]);
  const withUnknown = decodeRangeResponse(Buffer.concat([unknown, bytes, unknown]));
  assert.deepEqual(withUnknown.kvs.map((kv) => kv.key.toString()), ["a"]);
  assert.equal(withUnknown.revision, "7");
});

Deno.test("decodeRangeResponse() throws on bytes that are not a whole RangeResponse", () => {
  const bytes = rangeBytes({ header: { revision: "7" }, kvs: [{ key: "YQ==", value: "Yg==" }] });
  for (const broken of [bytes.subarray(0, bytes.length - 1), Buffer.from([0x12, 0x7f, 0x0a]), Buffer.from([0x0b])]) {
    assert.throws(() => decodeRangeResponse(broken), /malformed RangeResponse/);
  }
});

Deno.test("camelCase() spells a method's name as proto-loader does", () => {
  const cases: [string, string][] = [
    ["Range", "range"],
    ["LeaseKeepAlive", "leaseKeepAlive"],
    ["LeaseTimeToLive", "leaseTimeToLive"],
    ["HashKV", "hashKv"],
    ["KVRange", "kvRange"],
    ["UserGrantRole", "userGrantRole"],
  ];
  for (const [name, expected] of cases) assert.equal(camelCase(name), expected, name);
});
