/**
 * What bench/traffic.ts reads from the proxies and the processes, and polls
 * until it shows a change: HAProxy's `show servers state` and counters, the
 * render's log lines and the file it wrote, nginx's new workers, and this
 * benchmark's own view of the records (`Lane.deleted`). A poll answers when
 * it saw the change, or undefined after its bound.
 *
 * @module
 */
import { type HAProxy, type HAProxyServer, parseServersState } from "../../lib/haproxy.ts";
import type { NginxProcess } from "../../testbed/nginx.ts";
import { delay, waitFor } from "../../testbed/testbed.ts";
import { now } from "../lib.ts";
import type { NginxCounts, RetryCounts } from "./figures.ts";
import { BACKEND, type Lane } from "./lanes.ts";

/** How long a poll waits for a change to show. */
export const POLL_BOUND_MS = 20_000;
export const POLL_EVERY_MS = 2;

/** How many lines of `text` match `line` (a regexp with the m and g flags). */
export function linesOf(text: string, line: RegExp): number {
  return text.match(line)?.length ?? 0;
}

export const RELOADED = /^reloaded /gm;
export const RENDERED = /^rendered /gm;

/** Whether an upstream file rendered from the template lists `server` (`ip:port`). */
export const lists = (upstream: string, server: string) => upstream.includes(`server ${server} `);

/**
 * Polls an nginx lane's render until a `reloaded` line past the first `after` is for a file with `server` (or
 * without it): when that line was read and how many there were then, or undefined after `boundMs`. The file is
 * read when the line is: a render that followed within the poll's 2 ms could be taken for the one before.
 */
export async function reloadedWith(
  lane: Lane,
  server: string,
  present: boolean,
  after: number,
  boundMs = POLL_BOUND_MS,
): Promise<{ at: number; count: number } | undefined> {
  const deadline = now() + boundMs;
  let seen = after;
  while (now() < deadline) {
    const count = linesOf(lane.render!.stderr, RELOADED);
    if (count > seen) {
      const at = now();
      if (lists(await Deno.readTextFile(lane.out!).catch(() => ""), server) === present) return { at, count };
      seen = count;
    }
    await delay(POLL_EVERY_MS);
  }
  return undefined;
}

/** Polls nginx's error log until it has started `atLeast` workers: when, or undefined after `boundMs`. */
export async function workerStarted(
  nginx: NginxProcess,
  atLeast: number,
  boundMs = POLL_BOUND_MS,
): Promise<number | undefined> {
  const deadline = now() + boundMs;
  while (now() < deadline) {
    if ((await nginx.workersStarted()) >= atLeast) return now();
    await delay(POLL_EVERY_MS);
  }
  return undefined;
}

/** nginx lanes: nginx's reloads and the render's log lines so far. */
export async function nginxCounts(lane: Lane): Promise<NginxCounts> {
  const reloads = await lane.nginx!.reloads();
  return {
    reloads,
    rendered: linesOf(lane.render!.stderr, RENDERED),
    reloaded: linesOf(lane.render!.stderr, RELOADED),
  };
}

/** The servers of the backend, as `show servers state` says (no sessions: one command, for polling). */
export async function serversState(client: HAProxy): Promise<HAProxyServer[]> {
  return parseServersState(await client.run(`show servers state ${BACKEND}`));
}

/** Polls HAProxy until `done` holds; the time of the answer that showed it, or undefined after `boundMs`. */
export async function pollUntil(
  client: HAProxy,
  done: (servers: HAProxyServer[]) => boolean,
  boundMs = POLL_BOUND_MS,
): Promise<number | undefined> {
  const deadline = now() + boundMs;
  while (now() < deadline) {
    try {
      if (done(await serversState(client))) return now();
    } catch { /* asked again */ }
    await delay(POLL_EVERY_MS);
  }
  return undefined;
}

export const inRotation = (s: HAProxyServer | undefined) => s !== undefined && !s.maint && s.opState === 2;

/** Whether `server` is out of the backend for good: in maintenance, or deleted. */
export const outOf = (servers: HAProxyServer[], server: string) => {
  const s = servers.find((x) => x.name === server);
  return s === undefined || s.maint;
};

/** Reads one server's sessions now (`scur`). */
export async function sessionsOf(client: HAProxy, server: string): Promise<number> {
  return (await client.servers(BACKEND)).find((s) => s.name === server)?.sessions ?? 0;
}

/** The backend's retries and redispatches so far (`show stat`, the BACKEND row). */
export async function retryCounters(client: HAProxy): Promise<RetryCounts> {
  const lines = (await client.run("show stat -1 2 -1")).split("\n");
  const header = lines[0].replace(/^#\s*/, "").split(",");
  const row = lines.find((l) => l.startsWith(`${BACKEND},BACKEND,`))?.split(",") ?? [];
  const field = (name: string) => Number(row[header.indexOf(name)]) || 0;
  return { retries: field("wretr"), redispatches: field("wredis") };
}

/** Waits until this benchmark's watch saw `key` deleted at `since` or later: whether it did within `boundMs`. */
export function waitDeleted(lane: Lane, key: string, since: number, boundMs: number): Promise<boolean> {
  return waitFor(() => (lane.deleted.get(key) ?? 0) >= since, `${key} deleted`, boundMs, 20).then(
    () => true,
    () => false,
  );
}

/** Whether every instance of every lane is in rotation (nginx lanes: in the file, and nginx told of it). */
export async function allInRotation(lanes: Lane[]): Promise<boolean> {
  for (const lane of lanes) {
    if (lane.nginx) {
      // every instance in the file, and nginx told of it: no render in flight
      const upstream = await Deno.readTextFile(lane.out!).catch(() => "");
      if (!lane.hosts.every((h) => h.current && lists(upstream, h.current.server))) return false;
      const log = lane.render!.stderr;
      if (linesOf(log, RELOADED) < linesOf(log, RENDERED)) return false;
      continue;
    }
    const servers = await serversState(lane.client!);
    if (!lane.hosts.every((h) => inRotation(servers.find((s) => s.name === h.current?.server)))) return false;
  }
  return true;
}

/** The 1-minute load average. */
export function loadAverage(): number {
  return Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]);
}
