/**
 * etcd's RangeResponse read straight from its protobuf bytes, for listings:
 * only the fields a listing uses, each key and value a view of the received
 * message, int64s as decimal strings. etcd3's own decoder builds a full object
 * of every field first (with two empty buffers for each record's defaults),
 * which was half of `registry ls`'s time a record (docs/install.md, "How
 * the bundles are built").
 *
 * The message, from etcd's rpc.proto and kv.proto (field numbers):
 *
 * ```
 * RangeResponse  { ResponseHeader header = 1; repeated KeyValue kvs = 2; bool more = 3; int64 count = 4; }
 * ResponseHeader { uint64 cluster_id = 1; uint64 member_id = 2; int64 revision = 3; uint64 raft_term = 4; }
 * KeyValue       { bytes key = 1; int64 create_revision = 2; int64 mod_revision = 3; int64 version = 4;
 *                  bytes value = 5; int64 lease = 6; }
 * ```
 *
 * Fields it does not know are skipped, as protobuf requires.
 *
 * @module
 */
import type { Buffer } from "node:buffer";

/** One record of a page: key and value are views of the message, not copies. */
export interface RangeKv {
  key: Buffer;
  value: Buffer;
  lease: string;
  modRevision: string;
}

/** The fields of a RangeResponse a listing reads. */
export interface RangePage {
  revision: string;
  kvs: RangeKv[];
  more: boolean;
}

/** A cursor over protobuf bytes from `pos` to `end`. */
class Reader {
  constructor(readonly buf: Buffer, public pos: number, readonly end: number) {}

  #byte(): number {
    if (this.pos >= this.end) throw new Error("malformed RangeResponse: truncated");
    return this.buf[this.pos++];
  }

  /** A varint that fits a double exactly (a tag, a length, a bool): at most 7 bytes. */
  uint(): number {
    let n = 0;
    for (let mul = 1, i = 0; i < 7; i++, mul *= 128) {
      const b = this.#byte();
      n += (b & 0x7f) * mul;
      if (b < 0x80) return n;
    }
    throw new Error("malformed RangeResponse: a length or tag over 2^49");
  }

  /** An int64 varint as a decimal string: exact over 2^53 (lease IDs are), negative as two's complement. */
  int64(): string {
    const start = this.pos;
    let n = 0;
    for (let mul = 1, i = 0; i < 7; i++, mul *= 128) {
      const b = this.#byte();
      n += (b & 0x7f) * mul;
      if (b < 0x80) return String(n);
    }
    this.pos = start;
    let big = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      const b = this.#byte();
      big |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return String(BigInt.asIntN(64, big));
    }
    throw new Error("malformed RangeResponse: a varint over 10 bytes");
  }

  /** A length-delimited field's bounds; the cursor moves past it. */
  bytes(): [number, number] {
    const length = this.uint();
    const start = this.pos;
    if (start + length > this.end) throw new Error("malformed RangeResponse: a field past its message");
    this.pos = start + length;
    return [start, this.pos];
  }

  skip(wireType: number): void {
    if (wireType === 0) this.int64();
    else if (wireType === 1) this.pos += 8;
    else if (wireType === 2) this.bytes();
    else if (wireType === 5) this.pos += 4;
    else throw new Error(`malformed RangeResponse: wire type ${wireType}`);
    if (this.pos > this.end) throw new Error("malformed RangeResponse: truncated");
  }
}

/** Decodes a RangeResponse message (pure). Throws on malformed bytes. */
export function decodeRangeResponse(buf: Buffer): RangePage {
  const r = new Reader(buf, 0, buf.length);
  const page: RangePage = { revision: "0", kvs: [], more: false };
  while (r.pos < r.end) {
    const tag = r.uint();
    const field = Math.floor(tag / 8);
    if (field === 1 && tag % 8 === 2) {
      const [start, end] = r.bytes();
      page.revision = readRevision(new Reader(buf, start, end));
    } else if (field === 2 && tag % 8 === 2) {
      const [start, end] = r.bytes();
      page.kvs.push(readKv(new Reader(buf, start, end)));
    } else if (field === 3 && tag % 8 === 0) {
      page.more = r.uint() !== 0;
    } else {
      r.skip(tag % 8);
    }
  }
  return page;
}

function readRevision(r: Reader): string {
  let revision = "0";
  while (r.pos < r.end) {
    const tag = r.uint();
    if (tag === (3 << 3)) revision = r.int64();
    else r.skip(tag % 8);
  }
  return revision;
}

function readKv(r: Reader): RangeKv {
  const buf = r.buf;
  let key = buf.subarray(0, 0);
  let value = key;
  let lease = "0";
  let modRevision = "0";
  while (r.pos < r.end) {
    const tag = r.uint();
    if (tag === ((1 << 3) | 2)) key = buf.subarray(...r.bytes());
    else if (tag === ((5 << 3) | 2)) value = buf.subarray(...r.bytes());
    else if (tag === (3 << 3)) modRevision = r.int64();
    else if (tag === (6 << 3)) lease = r.int64();
    else r.skip(tag % 8);
  }
  return { key, value, lease, modRevision };
}
