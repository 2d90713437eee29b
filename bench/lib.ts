/**
 * What the benchmarks share: starting a sidekick for a target, watching its
 * key so every event is timed to the millisecond, and summarising trials.
 * Benchmarks print figures; they never assert a speed.
 *
 * @module
 */
import { type Etcd, type WatchHandle } from "../lib/etcd.ts";
import { instanceKey } from "../lib/record.ts";
import { Script, SOURCE_FLAGS, type Target } from "../lib/testbed.ts";

/** Default settings: the product's own defaults. */
export const DEFAULT_ARGS = ["--interval=2s", "--timeout=1s", "--rise=2", "--fall=2", "--ttl=10s"];

/** How a sidekick is run: our script from source, or a bundle under deno or node. */
export type Runtime = "source" | "deno" | "node";

/** Starts our secretary for `target` against `endpoints`. */
export function startSecretary(
  target: Target,
  endpoints: string[],
  options: { runtime?: Runtime; args?: string[] } = {},
): Script {
  const args = [
    String(target.port),
    `--ip=${target.host}`,
    "--hostname=bench",
    `--endpoints=${endpoints.join(",")}`,
    ...(options.args ?? DEFAULT_ARGS),
  ];
  switch (options.runtime ?? "source") {
    case "source":
      return Script.deno("secretary.ts", args, { flags: SOURCE_FLAGS });
    case "deno":
      return Script.deno("dist/secretary.mjs", args, { flags: ["--allow-net", "--allow-env"] });
    case "node":
      return new Script("node", ["--enable-source-maps", "dist/secretary.mjs", ...args]);
  }
}

/** The key of `target`'s record. */
export function keyOf(target: Target, service = "apache"): string {
  return instanceKey("/services", service, target.host, target.port);
}

/** Watches a prefix and records when each key was last put and deleted (ms since epoch). */
export class KeyClock {
  readonly puts = new Map<string, number>();
  readonly deletes = new Map<string, number>();
  events = 0;
  #handle?: WatchHandle;
  #waiters: (() => void)[] = [];

  private constructor(readonly etcd: Etcd) {}

  static async start(etcd: Etcd, prefix = "/services/"): Promise<KeyClock> {
    const clock = new KeyClock(etcd);
    const revision = await etcd.revision();
    clock.#handle = await etcd.watch(prefix, String(BigInt(revision) + 1n), (event) => {
      const now = performance.timeOrigin + performance.now();
      clock.events++;
      (event.type === "put" ? clock.puts : clock.deletes).set(event.key, now);
      for (const wake of clock.#waiters.splice(0)) wake();
    });
    return clock;
  }

  /** Waits until `key` is put (or deleted) after `since`; returns the time it happened. */
  async until(kind: "put" | "delete", key: string, since: number, timeoutMs = 60_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    const map = kind === "put" ? this.puts : this.deletes;
    while (true) {
      const at = map.get(key);
      if (at !== undefined && at >= since) return at;
      if (Date.now() > deadline) throw new Error(`no ${kind} of ${key} within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 100);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  stop(): void {
    this.#handle?.cancel();
  }
}

/** The wall clock in ms with sub-ms precision, comparable with KeyClock's times. */
export function now(): number {
  return performance.timeOrigin + performance.now();
}

/** Median and worst of a set of times. */
export function summarize(values: number[]): { n: number; median: number; worst: number } {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  return { n: sorted.length, median, worst: sorted[sorted.length - 1] };
}

/** `1.23 s` or `45 ms`. */
export function formatMs(ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}
