/**
 * The timeline `registry serve` shows: what happened to each instance
 * (registered, gone, status changed, changed), newest first, filled on start
 * from etcd's own history and kept live from the changes `follow()` reports.
 *
 * etcd keeps every revision until it compacts them, but no time: a change
 * read from history has a time only through its record's `registered_at`
 * (written by the secretary when it registered). So a registration read from
 * history takes its record's `registered_at`; every other change read from
 * history takes the time of the last change before it that has one (a lower
 * bound; with none, the first one after it, else the time the history was
 * read), and is marked `approx`. A change seen live takes the time it was
 * seen. The state before the oldest revision etcd still keeps is unknown: a
 * key's first put in that window shows as registered even when it was an
 * update of an older record.
 *
 * `classify()` and `historyTimeline()` are pure; `readHistory()` watches a
 * prefix from an old revision through the `watch` seam of lib/etcd.ts.
 *
 * @module
 */
import type { Etcd, WatchEvent } from "./etcd.ts";
import { decodeEntry } from "./record.ts";

/** What happened to an instance. */
export type TimelineKind = "registered" | "gone" | "status" | "changed";

/** One change of one instance. */
export interface TimelineEntry {
  /** etcd's revision of the change (decimal text), or of the listing that found it after a break. */
  revision: string;
  /** When it happened, in milliseconds since the epoch (see `approx`). */
  at: number;
  /** Whether `at` is an estimate: a change read from history, or found by a listing after an outage. */
  approx: boolean;
  kind: TimelineKind;
  service: string;
  address: string;
}

/** How many revisions back `serve` reads history at start, at most. @default 10,000 */
export const HISTORY_REVISIONS = 10_000n;

/** How many timeline entries `serve` keeps, newest first. */
export const TIMELINE_MAX = 5000;

/**
 * What a change of `key` from `before` to `after` (undefined: absent) is,
 * or undefined when it is none (same value, or a key that is not an
 * instance's). Status is compared as the records' `status` JSON; anything
 * else that differs is `changed`. Pure; never throws.
 */
export function classify(
  prefix: string,
  key: string,
  before: string | undefined,
  after: string | undefined,
): { kind: TimelineKind; service: string; address: string } | undefined {
  if (before === after) return undefined;
  const now = decodeEntry(prefix, key, after ?? before ?? "");
  if (now.service === undefined) return undefined;
  const place = { service: now.service, address: now.address };
  if (before === undefined) return { kind: "registered", ...place };
  if (after === undefined) return { kind: "gone", ...place };
  const old = decodeEntry(prefix, key, before);
  const statusOf = (e: typeof old) => JSON.stringify(e.record?.status ?? null);
  return { kind: statusOf(old) === statusOf(now) ? "changed" : "status", ...place };
}

/** Compares revisions as numbers (they are decimal text of 64-bit integers). */
export function compareRevisions(a: string, b: string): number {
  const x = BigInt(a);
  const y = BigInt(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

/**
 * The timeline of history `events` (in revision order, as a watch gives
 * them), oldest first; times as the module doc says, `readAtMs` the time
 * the history was read. Pure.
 */
export function historyTimeline(prefix: string, events: WatchEvent[], readAtMs: number): TimelineEntry[] {
  const values = new Map<string, string>();
  const out: (TimelineEntry & { known: boolean })[] = [];
  for (const e of events) {
    const before = values.get(e.key);
    const after = e.type === "put" ? e.value : undefined;
    if (after === undefined) values.delete(e.key);
    else values.set(e.key, after);
    // etcd reports a delete only of a key that was there: one put before the window still went
    const change = classify(prefix, e.key, after === undefined ? before ?? "" : before, after);
    if (!change) continue;
    let at = NaN;
    if (change.kind === "registered" && after !== undefined) {
      const record = decodeEntry(prefix, e.key, after).record;
      at = record ? Date.parse(record.registered_at) : NaN;
      if (!(at <= readAtMs)) at = NaN; // a clock ahead of ours says nothing
    }
    out.push({ revision: e.revision, at, approx: true, known: !Number.isNaN(at), ...change });
  }
  // unknown times: the last known before, else the first known after, else the time of reading
  let last = NaN;
  for (const entry of out) {
    if (entry.known) last = entry.at;
    else entry.at = last;
  }
  let next = readAtMs;
  for (let i = out.length - 1; i >= 0; i--) {
    if (out[i].known) next = out[i].at;
    else if (Number.isNaN(out[i].at)) out[i].at = next;
  }
  return out.map(({ known: _, ...entry }) => entry);
}

/** The compact revision named in a watch's compaction error, or undefined. */
export function compactRevision(err: unknown): bigint | undefined {
  const match = err instanceof Error ? /compact revision (\d+)/.exec(err.message) : null;
  return match ? BigInt(match[1]) : undefined;
}

/** What readHistory() gives: the events up to the revision asked, and the revision they start from. */
export interface History {
  events: WatchEvent[];
  fromRevision: string;
}

/**
 * Watches `prefix` from `untilRevision - depth + 1` (or from etcd's compact
 * revision when that is older than it keeps) and returns the events up to
 * `untilRevision`, once an event past it arrives or the stream has been quiet
 * for `quietMs` (etcd sends a watch's backlog at once, in answers of up to
 * 1,000 revisions). Throws when etcd cannot be read.
 */
export async function readHistory(
  source: Pick<Etcd, "watch">,
  prefix: string,
  untilRevision: string,
  options: { depth?: bigint; quietMs?: number; signal?: AbortSignal } = {},
): Promise<History> {
  const until = BigInt(untilRevision);
  const depth = options.depth ?? HISTORY_REVISIONS;
  const quietMs = options.quietMs ?? 1500;
  let from = until - depth + 1n > 1n ? until - depth + 1n : 1n;
  for (let attempt = 0; attempt < 3; attempt++) {
    const events: WatchEvent[] = [];
    let lastEventMs = Date.now();
    let past = false;
    const handle = await source.watch(prefix, String(from), (e) => {
      lastEventMs = Date.now();
      if (BigInt(e.revision) <= until) events.push(e);
      else past = true;
    });
    try {
      const outcome = await Promise.race([
        handle.done,
        (async () => {
          while (!past && !options.signal?.aborted && Date.now() - lastEventMs < quietMs) {
            await new Promise((resolve) => setTimeout(resolve, 50));
          }
          return "caught up" as const;
        })(),
      ]);
      if (outcome === "caught up") return { events, fromRevision: String(from) };
      const compacted = compactRevision(outcome);
      if (compacted === undefined) throw outcome;
      from = compacted > from ? compacted : from + 1n; // etcd keeps the compact revision itself
    } finally {
      handle.cancel();
    }
  }
  throw new Error(`history under ${prefix}: etcd compacted it three times while it was read`);
}
