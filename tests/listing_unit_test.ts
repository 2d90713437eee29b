/** Listing: what a consumer knows of a prefix, and the changes a listing or an event brings (pure). */
import assert from "node:assert/strict";
import type { StoredValue, WatchEvent } from "../lib/etcd.ts";
import { Listing, type ListingChange } from "../lib/listing.ts";

const stored = (key: string, value: string): StoredValue => ({ key, value, lease: "0", modRevision: "1" });
const put = (key: string, value: string): WatchEvent => ({ type: "put", key, value, revision: "2" });
const del = (key: string): WatchEvent => ({ type: "delete", key, revision: "2" });

const ROWS: { name: string; known: StoredValue[]; step: StoredValue[] | WatchEvent; want: ListingChange[] }[] = [
  {
    name: "a first listing: every key is a put",
    known: [],
    step: [stored("/b", "2"), stored("/a", "1")],
    want: [{ kind: "put", key: "/a", value: "1" }, { kind: "put", key: "/b", value: "2" }],
  },
  {
    name: "a listing after a break: keys gone, then keys new or changed; unchanged keys say nothing",
    known: [stored("/a", "1"), stored("/b", "2"), stored("/c", "3")],
    step: [stored("/a", "1"), stored("/c", "30"), stored("/d", "4")],
    want: [
      { kind: "delete", key: "/b", previous: "2" },
      { kind: "put", key: "/c", value: "30", previous: "3" },
      { kind: "put", key: "/d", value: "4" },
    ],
  },
  {
    name: "an empty listing deletes everything known",
    known: [stored("/a", "1")],
    step: [],
    want: [{ kind: "delete", key: "/a", previous: "1" }],
  },
  { name: "a new key", known: [], step: put("/a", "1"), want: [{ kind: "put", key: "/a", value: "1" }] },
  {
    name: "a new value",
    known: [stored("/a", "1")],
    step: put("/a", "2"),
    want: [{ kind: "put", key: "/a", value: "2", previous: "1" }],
  },
  { name: "the same value again changes nothing", known: [stored("/a", "1")], step: put("/a", "1"), want: [] },
  {
    name: "a delete",
    known: [stored("/a", "1")],
    step: del("/a"),
    want: [{ kind: "delete", key: "/a", previous: "1" }],
  },
  { name: "a delete of a key not known changes nothing", known: [], step: del("/a"), want: [] },
];

for (const row of ROWS) {
  Deno.test(`Listing: ${row.name}`, () => {
    const listing = new Listing();
    listing.replace(row.known);
    const got = Array.isArray(row.step) ? listing.replace(row.step) : [listing.apply(row.step)].filter((c) => c);
    assert.deepEqual(got, row.want);
  });
}

Deno.test("Listing: values are what the listing and the events leave", () => {
  const listing = new Listing();
  listing.replace([stored("/a", "1"), stored("/b", "2")]);
  listing.apply(put("/c", "3"));
  listing.apply(del("/a"));
  listing.apply(put("/b", "20"));
  assert.deepEqual([...listing.values], [["/b", "20"], ["/c", "3"]]);
});
