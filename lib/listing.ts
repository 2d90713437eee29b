/**
 * What a consumer knows of a prefix: each key's value, kept from a listing
 * and the watch events after it (lib/follow.ts), and the changes each brings.
 * `registry watch`, `sync` and `render` keep their registry this way.
 *
 * - `replace()` takes a whole fresh listing (the first, or one after a break)
 *   and returns what differs from what was known: keys gone, then keys new or
 *   changed, each in key order.
 * - `apply()` takes one watch event and returns its change, or undefined when
 *   it changes nothing: a delete of a key not known, a put of the value known.
 *
 * @module
 */
import type { StoredValue, WatchEvent } from "./etcd.ts";

/** One change to what is known: a key put (new, or a new value), or deleted (with the value it had). */
export type ListingChange =
  | { kind: "put"; key: string; value: string; previous?: string }
  | { kind: "delete"; key: string; previous: string };

/** A prefix's keys and values, as a listing and its events leave them. */
export class Listing {
  readonly #values = new Map<string, string>();

  /** Each key and its value now. */
  get values(): ReadonlyMap<string, string> {
    return this.#values;
  }

  /** Replaces what is known with a fresh listing; returns the difference (deletions, then puts, by key). */
  replace(listing: readonly StoredValue[]): ListingChange[] {
    const fresh = new Map(listing.map((v) => [v.key, v.value]));
    const deleted: ListingChange[] = [];
    const put: ListingChange[] = [];
    for (const [key, previous] of this.#values) if (!fresh.has(key)) deleted.push({ kind: "delete", key, previous });
    for (const [key, value] of fresh) {
      const previous = this.#values.get(key);
      if (previous !== value) put.push({ kind: "put", key, value, ...(previous === undefined ? {} : { previous }) });
    }
    this.#values.clear();
    for (const [key, value] of fresh) this.#values.set(key, value);
    const byKey = (a: ListingChange, b: ListingChange) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
    return [...deleted.sort(byKey), ...put.sort(byKey)];
  }

  /** Applies one watch event; returns its change, or undefined when it changes nothing. */
  apply(event: WatchEvent): ListingChange | undefined {
    const previous = this.#values.get(event.key);
    if (event.type === "delete") {
      if (previous === undefined) return undefined;
      this.#values.delete(event.key);
      return { kind: "delete", key: event.key, previous };
    }
    if (previous === event.value) return undefined;
    this.#values.set(event.key, event.value);
    return { kind: "put", key: event.key, value: event.value, ...(previous === undefined ? {} : { previous }) };
  }
}
