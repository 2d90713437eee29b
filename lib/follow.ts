/**
 * Following the registry: list a prefix, then watch it from the next
 * revision, so no change is missed; on any break (etcd restarted, the
 * revision compacted, a stream gone silent) list again and go on. What the
 * follower is told is always one of: a whole, fresh listing (`listed`), one
 * change after it (`changed`), or that etcd cannot be read now (`waiting`,
 * once an outage; `answered` when it ends). etcd unreachable is never an
 * empty listing. `registry watch`, `sync` and `render` all follow this way.
 *
 * The loop takes its etcd through a narrow seam (`FollowSource`, which
 * lib/etcd.ts's `Etcd` is) and its time and randomness as `FollowEffects`,
 * so its decisions are tested with a fake source, without etcd.
 *
 * @module
 */
import { sleep } from "./cli.ts";
import type { Etcd, StoredValue, WatchEvent, WatchHandle } from "./etcd.ts";
import { backoffMs } from "./registrar.ts";

/** How often a follower asks etcd whether its watch stream is still alive. */
export const WATCH_PROBE_MS = 2000;

/** What a follower is told. */
export interface Follower {
  /** A whole listing of the prefix at `revision`: what is registered now, replacing anything known before. */
  listed(values: StoredValue[], revision: string): void;
  /** One change after the last listing, in order. */
  changed(event: WatchEvent): void;
  /** etcd cannot be read (or the watch broke): what was listed last still stands. Once an outage. */
  waiting(reason: unknown): void;
  /** etcd answered again after `waiting`. */
  answered(): void;
}

/** The etcd operations following needs (lib/etcd.ts's Etcd has them all). */
export interface FollowSource {
  list(prefix: string): Promise<{ values: StoredValue[]; revision: string }>;
  watch: Etcd["watch"];
  failover(): void;
}

/** Sleep and randomness, passed in so tests drive them. */
export interface FollowEffects {
  sleep(ms: number, signal: AbortSignal): Promise<void>;
  random(): number;
}

const REAL_EFFECTS: FollowEffects = { sleep, random: Math.random };

/**
 * Lists and watches `prefix` until `signal` aborts, telling `follower`;
 * retries forever, with the registrar's jittered backoff (up to 1 s).
 */
export async function follow(
  source: FollowSource,
  prefix: string,
  follower: Follower,
  signal: AbortSignal,
  effects: FollowEffects = REAL_EFFECTS,
): Promise<void> {
  let waiting = false;
  let failures = 0;
  while (!signal.aborted) {
    let handle: WatchHandle | undefined;
    try {
      const { values, revision } = await source.list(prefix);
      if (signal.aborted) break;
      follower.listed(values, revision);
      handle = await source.watch(prefix, String(BigInt(revision) + 1n), (event) => follower.changed(event));
      if (waiting) follower.answered();
      waiting = false;
      failures = 0;
      const reason = await untilBroken(handle, signal, effects);
      if (reason) throw reason;
    } catch (err) {
      handle?.cancel(); // before the wait, not after it
      handle = undefined;
      if (signal.aborted) break;
      failures++;
      if (!waiting) follower.waiting(err);
      waiting = true;
      // never reuse a connection whose stream broke: a half-dead HTTP/2 session (Deno) raises nothing
      source.failover();
      await effects.sleep(backoffMs(failures, true, effects.random()), signal);
    } finally {
      handle?.cancel();
    }
  }
}

/** Resolves with the reason the watch broke, or undefined when `signal` aborts. */
async function untilBroken(
  handle: WatchHandle,
  signal: AbortSignal,
  effects: FollowEffects,
): Promise<Error | undefined> {
  const aborted = new Promise<undefined>((resolve) => signal.addEventListener("abort", () => resolve(undefined)));
  while (!signal.aborted) {
    const tick = effects.sleep(WATCH_PROBE_MS, signal).then(() => "tick" as const);
    const outcome = await Promise.race([handle.done, aborted, tick]);
    if (outcome !== "tick") return outcome;
    try {
      await Promise.race([handle.probe(), handle.done.then((err) => Promise.reject(err))]);
    } catch (err) {
      return err instanceof Error ? err : new Error(String(err));
    }
  }
  return undefined;
}
