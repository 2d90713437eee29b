/**
 * Following the registry: list a prefix, then watch it from the next
 * revision, so no change is missed; on any break (etcd restarted, the
 * revision compacted, a stream gone silent) list again and go on. What the
 * follower is told is always one of: a whole, fresh listing (`listed`), one
 * change after it (`changed`), or that etcd cannot be read now (`waiting`,
 * once an outage; `answered` when it ends). etcd unreachable is never an
 * empty listing. `registry watch` and `registry sync` both follow this way.
 *
 * @module
 */
import { sleep } from "./cli.ts";
import type { Etcd, StoredValue, WatchEvent, WatchHandle } from "./etcd.ts";

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

/** Lists and watches `prefix` until `signal` aborts, telling `follower`; retries forever with jittered backoff. */
export async function follow(etcd: Etcd, prefix: string, follower: Follower, signal: AbortSignal): Promise<void> {
  let waiting = false;
  let failures = 0;
  while (!signal.aborted) {
    let handle: WatchHandle | undefined;
    try {
      const { values, revision } = await etcd.list(prefix);
      if (signal.aborted) break;
      follower.listed(values, revision);
      handle = await etcd.watch(prefix, String(BigInt(revision) + 1n), (event) => follower.changed(event));
      if (waiting) follower.answered();
      waiting = false;
      failures = 0;
      const reason = await untilBroken(handle, signal);
      if (reason) throw reason;
    } catch (err) {
      if (signal.aborted) break;
      failures++;
      if (!waiting) follower.waiting(err);
      waiting = true;
      // never reuse a connection whose stream broke: a half-dead HTTP/2 session (Deno) raises nothing
      etcd.failover();
      await sleep(Math.min(1000, 100 * 2 ** failures) * (0.5 + Math.random() / 2), signal);
    } finally {
      handle?.cancel();
    }
  }
}

/** Resolves with the reason the watch broke, or undefined when `signal` aborts. */
async function untilBroken(handle: WatchHandle, signal: AbortSignal): Promise<Error | undefined> {
  const aborted = new Promise<undefined>((resolve) => signal.addEventListener("abort", () => resolve(undefined)));
  while (!signal.aborted) {
    const tick = sleep(WATCH_PROBE_MS, signal).then(() => "tick" as const);
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
