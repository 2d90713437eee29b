/**
 * How the registry's readers show what they found under the prefix: the
 * `ls` table, `--json`, `watch` lines, and `get`'s value. Every field but the
 * key's service and address is whatever a record's writer chose, so all of
 * it is made printable (control characters escaped, never a line break) and
 * cut to FIELD_MAX in the table; `--json` keeps the whole stored record, and
 * a stored field cannot forge the reader's own names (JSON_OWN_NAMES).
 * Pure: entries in, text out.
 *
 * @module
 */
import type { ListingChange } from "./listing.ts";
import { addressRank, decodeEntry, type Entry, parseAddress } from "./record.ts";
import { cut, JSON_DEPTH, limitDepth, printable, printableJson, quote } from "./text.ts";

/** A short age: `42s`, `5m`, `3h`, `12d`; `-` when unknown. */
export function formatAge(registeredAt: string, nowMs: number): string {
  const then = Date.parse(registeredAt);
  if (Number.isNaN(then)) return "-";
  const s = Math.max(0, Math.floor((nowMs - then) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/**
 * The most characters a field of a table row or a watch line shows: one huge
 * record must not pad every row to its width (`--json` shows it whole).
 */
export const FIELD_MAX = 60;

/** One `--meta` set as `k=v,k=v`, or `-`; printable, cut to `max` characters. */
export function formatMeta(meta: Record<string, string>, max = FIELD_MAX): string {
  const pairs = Object.entries(meta).map(([k, v]) => `${k}=${v}`);
  return pairs.length ? printable(pairs.join(","), max) : "-";
}

/**
 * An exec check's status as `k=v,k=v`, or `-`: strings plain when they are
 * simple, everything else as JSON, so no value can break the line or the
 * terminal; cut to `max` characters.
 */
export function formatStatus(status: Record<string, unknown> | undefined, max = FIELD_MAX): string {
  if (status === undefined) return "-";
  const plain = (text: string) => (/^[\w.:/@+-]+$/.test(text) ? text : JSON.stringify(text));
  // a status from decodeEntry() is already cut in depth; another may not be, and JSON.stringify recurses
  const text = Object.entries(status)
    .map(([k, v]) => `${plain(k)}=${typeof v === "string" ? plain(v) : JSON.stringify(limitDepth(v, JSON_DEPTH))}`)
    .join(",");
  // JSON.stringify escapes C0 controls only: C1, bidi overrides and U+2028 need printable()
  return text === "" ? "{}" : printable(text, max);
}

/** Sorts by service, then by address (IP numerically, then port); keys outside the layout last, by key. */
export function sortEntries(entries: Entry[]): Entry[] {
  // one sort key per entry, computed once: 10,000 entries sort in milliseconds
  return byRank(entries.map((entry) => ({ entry, rank: entryRank(entry) }))).map((r) => r.entry);
}

/** Where an entry sorts: by service, then by address; keys outside the layout last, by key. */
export function entryRank(entry: Entry): string {
  if (entry.address === undefined) return `1\0${entry.key}`;
  return `0\0${entry.service}\0${addressRank(parseAddress(entry.address))}`;
}

export function byRank<T extends { rank: string }>(items: T[]): T[] {
  return items.sort((a, b) => (a.rank < b.rank ? -1 : a.rank > b.rank ? 1 : 0));
}

/** A raw value in quotes, every control character escaped, at most FIELD_MAX characters. */
function quoted(text: string): string {
  return cut(quote(text, FIELD_MAX - 2), FIELD_MAX);
}

/** What is shown instead of a record: why the entry is not an instance. */
function notRecord(e: Extract<Entry, { invalid: string }>): string {
  return e.service === undefined ? `(not an instance key: ${quoted(e.key)})` : `(not a record: ${quoted(e.invalid)})`;
}

/** The note on a record whose fields disagree with its key: `(mismatch: ipv4_addr,port) `, or nothing. */
function mismatchNote(e: Entry): string {
  return e.mismatch?.length ? `(mismatch: ${printable(e.mismatch.join(","), FIELD_MAX)}) ` : "";
}

/** The SERVICE and ADDRESS of an entry, `-` for a key outside the layout. */
function place(e: Entry): [string, string] {
  return e.service === undefined ? ["-", "-"] : [printable(e.service, FIELD_MAX), printable(e.address, FIELD_MAX)];
}

/**
 * The `ls` table: SERVICE, ADDRESS, HOST, AGE, STATUS, META, columns padded;
 * one line a row, every field printable and at most FIELD_MAX characters. A
 * record whose fields disagree with its key has `(mismatch: FIELD,…)` first
 * in META; ADDRESS is always the key's.
 */
export function formatTable(entries: Entry[], nowMs: number): string {
  return formatRows(sortEntries(entries).map((e) => tableRow(e, nowMs))).join("\n");
}

/** One entry's cells in the `ls` table, each printable and cut. */
export function tableRow(e: Entry, nowMs: number): string[] {
  return e.record
    ? [
      ...place(e),
      printable(e.record.host || "-", FIELD_MAX),
      formatAge(e.record.registered_at, nowMs),
      formatStatus(e.record.status),
      mismatchNote(e) + formatMeta(e.record.meta),
    ]
    : [...place(e), "-", "-", "-", notRecord(e)];
}

/** The table's lines: the header, then the rows, in columns. */
export function formatRows(rows: string[][]): string[] {
  const all = [["SERVICE", "ADDRESS", "HOST", "AGE", "STATUS", "META"], ...rows];
  // a loop, not Math.max(...column): a spread of 100,000 rows' cells would overflow the stack
  const widths = all[0].map((_, i) => all.reduce((width, r) => Math.max(width, r[i].length), 0));
  return all.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]))).join("  "));
}

/** The names `--json` gives its own meaning; a stored field of one of these names is not shown. */
export const JSON_OWN_NAMES = ["key", "change", "mismatch", "invalid", "misplaced"];

/**
 * An entry as a JSON object: its key, then the whole stored record as it is
 * (`Addr` and fields no reader knows too; arrays and objects past
 * RECORD_DEPTH levels as "(too deep)"), then `mismatch`, the fields that
 * disagree with the key, when there are any; or the key with the raw value in
 * `invalid`, and `misplaced: true` when the key does not fit the layout. A
 * stored field named as one of JSON_OWN_NAMES is left out, so none can forge
 * the key or hide a mismatch.
 */
export function entryJson(e: Entry): Record<string, unknown> {
  if (e.record) {
    // fromEntries keeps a stored "__proto__" as data
    const fields = Object.entries(e.stored).filter(([name]) => !JSON_OWN_NAMES.includes(name));
    return Object.fromEntries([
      ["key", e.key],
      ...fields,
      ...(e.mismatch.length ? [["mismatch", e.mismatch]] : []),
    ]);
  }
  return e.service === undefined
    ? { key: e.key, invalid: e.invalid, misplaced: true }
    : { key: e.key, invalid: e.invalid };
}

/**
 * A change seen by `watch`: `+` an instance registered or changed (the entry
 * now), `-` an instance gone (the entry as it was last seen).
 */
export type Change = { kind: "+" | "-"; entry: Entry };

/**
 * One `watch` line: `+ SERVICE ADDRESS host=… [status=…] [mismatch=FIELD,…]
 * meta=…`, `- SERVICE ADDRESS`, printable and cut as the table is; or one
 * JSON object, `change` first, then entryJson().
 */
export function formatChange(change: Change, json: boolean): string {
  const e = change.entry;
  if (json) {
    return printableJson(
      change.kind === "+" ? { change: "registered", ...entryJson(e) } : { change: "gone", key: e.key },
    );
  }
  const [service, address] = place(e);
  if (change.kind === "-") return e.service === undefined ? `- - - ${notRecord(e)}` : `- ${service} ${address}`;
  const detail = e.record
    ? `host=${printable(e.record.host || "-", FIELD_MAX)}${
      e.record.status ? ` status=${formatStatus(e.record.status)}` : ""
    }${e.mismatch.length ? ` mismatch=${printable(e.mismatch.join(","), FIELD_MAX)}` : ""} meta=${
      formatMeta(e.record.meta)
    }`
    : notRecord(e);
  return `+ ${service} ${address} ${detail}`;
}

/**
 * The `watch` lines of what a listing or an event changed (lib/listing.ts):
 * gone keys as they were last seen, then new or changed ones, sorted as `ls`
 * sorts them.
 */
export function watchChanges(prefix: string, changes: readonly ListingChange[]): Change[] {
  const gone: Change[] = [];
  const put: Entry[] = [];
  for (const change of changes) {
    if (change.kind === "delete") gone.push({ kind: "-", entry: decodeEntry(prefix, change.key, change.previous) });
    else put.push(decodeEntry(prefix, change.key, change.value));
  }
  return [...gone, ...sortEntries(put).map((entry): Change => ({ kind: "+", entry }))];
}

/** A stored value with control characters: valid JSON stays valid JSON (compact, escaped); the rest printable. */
export function printableValue(value: string): string {
  try {
    return printableJson(JSON.parse(value));
  } catch {
    return printable(value);
  }
}
