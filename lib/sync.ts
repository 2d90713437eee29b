/**
 * `registry sync`: keeps one HAProxy backend's servers equal to a service's
 * live instances through HAProxy's runtime API, never reloading it.
 *
 * Reconcile, do not replay: each pass reads what HAProxy holds and what the
 * registry wants, and `planSync()` (pure) gives the commands that close the
 * difference. A pass runs at once on every change of the registry and every
 * second besides (a restarted HAProxy, whose run-time servers are gone, is
 * refilled within a second; a server taken out is deleted once idle).
 *
 * - A new record: its server is added (named `<ip>:<port>`, with the sync's
 *   `--server-options`, for example HAProxy's own health check) and put in
 *   rotation. `meta.weight` (0 to 256) is its weight; other meta is ignored.
 * - A record gone (stopped, failed, expired): its server goes to maintenance
 *   at once, so no new request reaches it while those in flight finish, and
 *   is deleted once it has no session left. Removals are never delayed.
 * - etcd unreachable is not "no instances": until the registry is read again,
 *   nothing is taken out. A service whose records are all gone does get an
 *   empty backend.
 *
 * @module
 */
import { describeError, type Etcd } from "./etcd.ts";
import { follow } from "./follow.ts";
import { type HAProxy, HAProxyError, type HAProxyProcess, type HAProxyServer } from "./haproxy.ts";
import type { Log } from "./log.ts";
import { decodeEntry, parseAddress, servicePrefix } from "./record.ts";

/** A server the registry wants in the backend. */
export interface WantedServer {
  /** `<ip>:<port>`, so `show servers state` reads as the registry does. */
  name: string;
  ip: string;
  port: number;
  /** From the record's `meta.weight`; HAProxy's default (1) when absent. */
  weight?: number;
}

/** One change to the backend. */
export type SyncCommand =
  | { kind: "add"; server: WantedServer }
  | { kind: "ready"; name: string }
  | { kind: "weight"; name: string; weight: number }
  | { kind: "out"; name: string }
  | { kind: "delete"; name: string };

/**
 * The words added to each server by default: HAProxy's own health check, a
 * second line of defence for a host that dies silently (its record stays
 * until the lease expires). `observe layer4 … mark-down` takes a server down
 * on its first connection error rather than after two failed checks: in
 * bench/traffic.ts a silent host was out in 1.0 s with it, 3–4 s without.
 */
export const DEFAULT_SERVER_OPTIONS = "check inter 1s fall 2 rise 1 observe layer4 error-limit 1 on-error mark-down";

/** The record's meta key that sets a server's weight. */
export const WEIGHT_META = "weight";

/** How often the backend is read even when the registry is quiet. */
export const SYNC_TICK_MS = 1000;

/**
 * The servers the registry wants, from a listing of the service's keys (key to
 * value). A key that is not an instance's, or a value that is not a record,
 * wants nothing. A weight that is not a whole number from 0 to 256 is ignored.
 */
export function wantedServers(prefix: string, values: Map<string, string>): Map<string, WantedServer> {
  const wanted = new Map<string, WantedServer>();
  for (const [key, value] of values) {
    const entry = decodeEntry(prefix, key, value);
    if (!entry.record || entry.address === undefined) continue;
    const { ip, port } = parseAddress(entry.address);
    const weightText = entry.record.meta[WEIGHT_META];
    const weight = weightText !== undefined && /^\d{1,3}$/.test(weightText) && Number(weightText) <= 256
      ? Number(weightText)
      : undefined;
    wanted.set(entry.address, { name: entry.address, ip, port, ...(weight === undefined ? {} : { weight }) });
  }
  return wanted;
}

/**
 * The commands that make `actual` equal `wanted` (pure). `wanted` undefined
 * (the registry not read yet) changes nothing. Removals come first; a server
 * that is out and idle is deleted; one whose address no longer matches its
 * name is taken out, and added again once deleted.
 */
export function planSync(actual: HAProxyServer[], wanted: Map<string, WantedServer> | undefined): SyncCommand[] {
  if (wanted === undefined) return [];
  const out: SyncCommand[] = [];
  const rest: SyncCommand[] = [];
  const present = new Map(actual.map((s) => [s.name, s]));
  for (const server of actual) {
    const want = wanted.get(server.name);
    const matches = want !== undefined && want.ip === server.ip && want.port === server.port;
    if (!matches) {
      if (!server.maint) out.push({ kind: "out", name: server.name });
      else if (server.sessions === 0) rest.push({ kind: "delete", name: server.name });
      continue;
    }
    if (server.maint) rest.push({ kind: "ready", name: server.name });
    const weight = want.weight ?? 1;
    if (server.weight !== weight) rest.push({ kind: "weight", name: server.name, weight });
  }
  for (const want of wanted.values()) if (!present.has(want.name)) rest.push({ kind: "add", server: want });
  return [...out, ...rest];
}

/** What the sync needs: HAProxy, etcd, the log, a sleep. */
export interface SyncDeps {
  haproxy: Pick<HAProxy, "servers" | "process" | "command">;
  etcd: Etcd;
  log: Log;
  sleep(ms: number, signal: AbortSignal): Promise<void>;
}

/** What to keep in sync. */
export interface SyncOptions {
  prefix: string;
  service: string;
  backend: string;
  /** Words added to each `add server` (e.g. `check inter 1s fall 2 rise 1`); `check` turns its health check on. */
  serverOptions: string[];
}

/** Performs one command through the runtime API. */
export async function applyCommand(
  haproxy: Pick<HAProxy, "command">,
  backend: string,
  serverOptions: string[],
  command: SyncCommand,
): Promise<void> {
  switch (command.kind) {
    case "add": {
      const { name, ip, port, weight } = command.server;
      const server = `${backend}/${name}`;
      const words = [`add server ${server} ${ip}:${port}`, ...(weight === undefined ? [] : [`weight ${weight}`])];
      await haproxy.command([...words, ...serverOptions].join(" "), "New server registered.");
      if (serverOptions.includes("check")) await haproxy.command(`enable health ${server}`);
      await haproxy.command(`set server ${server} state ready`);
      return;
    }
    case "ready":
      return await haproxy.command(`set server ${backend}/${command.name} state ready`);
    case "weight":
      return await haproxy.command(`set server ${backend}/${command.name} weight ${command.weight}`);
    case "out":
      return await haproxy.command(`set server ${backend}/${command.name} state maint`);
    case "delete":
      return await haproxy.command(`del server ${backend}/${command.name}`, "Server deleted.");
  }
}

const EVENT: Record<SyncCommand["kind"], string> = {
  add: "server added",
  ready: "server ready",
  weight: "server weight changed",
  out: "server out",
  delete: "server deleted",
};

/** Follows the service in etcd and reconciles the backend until `signal` aborts. */
export async function runSync(options: SyncOptions, deps: SyncDeps, signal: AbortSignal): Promise<void> {
  const { haproxy, log } = deps;
  const values = new Map<string, string>(); // key to value, as last read
  let wanted: Map<string, WantedServer> | undefined;
  let wake = () => {};
  const changed = () => {
    wanted = wantedServers(options.prefix, values);
    wake();
  };
  const following = follow(deps.etcd, servicePrefix(options.prefix, options.service), {
    listed(listing) {
      values.clear();
      for (const v of listing) values.set(v.key, v.value);
      changed();
    },
    changed(event) {
      if (event.type === "delete") values.delete(event.key);
      else values.set(event.key, event.value);
      changed();
    },
    waiting(reason) {
      log("warning", "etcd unreachable", { reason: describeError(reason), servers: "kept as they are" });
    },
    answered() {
      log("notice", "etcd answered");
    },
  }, signal);
  let last: HAProxyProcess | undefined;
  let unreachable = false;
  while (!signal.aborted) {
    const woken = new AbortController();
    wake = () => woken.abort();
    try {
      const process = await haproxy.process();
      if (unreachable) log("notice", "haproxy answered", { pid: process.pid });
      unreachable = false;
      if (last && (process.pid !== last.pid || process.uptimeSeconds < last.uptimeSeconds)) {
        log("notice", "haproxy restarted", { pid: process.pid, was: last.pid, next: "resyncing" });
      }
      last = process;
      for (const command of planSync(await haproxy.servers(options.backend), wanted)) {
        if (signal.aborted) break;
        await applyCommand(haproxy, options.backend, options.serverOptions, command);
        const name = command.kind === "add" ? command.server.name : command.name;
        log(command.kind === "out" ? "notice" : "info", EVENT[command.kind], {
          backend: options.backend,
          server: name,
          weight: command.kind === "add"
            ? command.server.weight
            : command.kind === "weight"
            ? command.weight
            : undefined,
        });
      }
    } catch (err) {
      if (signal.aborted) break;
      // a failed command is retried by the next pass, from a fresh reading of both sides
      if (err instanceof HAProxyError) log("warning", "haproxy refused", { reason: err.message });
      else if (!unreachable) log("warning", "haproxy unreachable", { reason: describeError(err) });
      if (!(err instanceof HAProxyError)) unreachable = true;
    }
    await deps.sleep(SYNC_TICK_MS, AbortSignal.any([signal, woken.signal]));
  }
  await following;
}
