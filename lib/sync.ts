/**
 * `registry sync`: keeps one HAProxy backend's servers equal to a service's
 * live instances through HAProxy's runtime API, never reloading it.
 *
 * Reconcile, do not replay: each pass reads what HAProxy holds and what the
 * registry wants, and `planSync()` (pure) gives the commands that close the
 * difference. A pass runs at once after a change of the registry (changes
 * that arrive during a pass make one more pass, not one each) and every
 * second besides (a restarted HAProxy is refilled within a second; a server
 * taken out is deleted once idle). Each watch event updates only its own
 * key's entry of the wanted servers, so a burst of events costs one pass.
 *
 * - A new record: a free slot (a server named `slot<N>`, from
 *   `server-template slot 1-N …` in the backend) gets its address, weight and
 *   state ready; without a free slot, a server named `<ip>:<port>` is added
 *   with the sync's `--server-options`. Slots, unlike added servers, are kept
 *   by a reload of HAProxy when the backend loads a state file that
 *   `--state-file` keeps current (written after every change, atomically).
 * - A record gone (stopped, failed, expired): its server goes to maintenance
 *   at once, so no new request reaches it while those in flight finish; an
 *   added server is then deleted once idle, a slot is free again.
 * - `meta.weight` (0 to 256, `haproxyWeight()`) is the weight; other fields of
 *   a record are never read: the key's validated address is the server's
 *   (never 0.x, multicast or broadcast: lib/record.ts).
 * - Each command is applied on its own: one that HAProxy refuses is logged
 *   with the server and the command, once, then at most every
 *   REFUSAL_REPEAT_MS while it persists, and the rest of the pass goes on.
 * - A server this sync took out that comes back into rotation without the
 *   registry wanting it means another writer on the backend (two syncs of
 *   different services): warned once.
 * - etcd unreachable is not "no instances": until the registry is read again,
 *   nothing is taken out. A service whose records are all gone does get an
 *   empty backend.
 *
 * Also here: what `registry sync` checks before it starts (checkHAProxy,
 * checkStateFile), each a one-line refusal for exit status 2.
 *
 * @module
 */
import { randomUUID } from "node:crypto";
import { statSync } from "node:fs";
import { rename, rm, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import { describeError, type Etcd } from "./etcd.ts";
import { follow } from "./follow.ts";
import { Listing, type ListingChange } from "./listing.ts";
import { type HAProxy, HAProxyError, type HAProxyProcess, type HAProxyServer } from "./haproxy.ts";
import type { Log } from "./log.ts";
import { decodeEntry, parseAddress, parseKey, servicePrefix } from "./record.ts";
import { quote } from "./text.ts";

/** A server the registry wants in the backend. */
export interface WantedServer {
  /** `<ip>:<port>`, so `show servers state` reads as the registry does. */
  name: string;
  ip: string;
  port: number;
  /** From the record's `meta.weight` (haproxyWeight); HAProxy's default (1) when absent. */
  weight?: number;
}

/** One change to the backend; `name` is HAProxy's server name, `address` the `<ip>:<port>` it holds. */
export type SyncCommand =
  | { kind: "add"; server: WantedServer }
  | { kind: "fill"; slot: string; server: WantedServer }
  | { kind: "ready"; name: string; address: string }
  | { kind: "weight"; name: string; address: string; weight: number }
  | { kind: "out"; name: string; address: string }
  | { kind: "delete"; name: string; address: string };

/**
 * The words added to each server by default: HAProxy's own health check, a
 * second line of defence for a host that dies silently (its record stays
 * until the lease expires). `observe layer4 … mark-down` takes a server down
 * on its first connection error rather than after two failed checks: in
 * bench/traffic.ts a silent host was out in 1.0 s with it, 3–4 s without.
 * Slots take theirs from their `server-template` line instead.
 */
export const DEFAULT_SERVER_OPTIONS = "check inter 1s fall 2 rise 1 observe layer4 error-limit 1 on-error mark-down";

/** The record's meta key that sets a server's weight. */
export const WEIGHT_META = "weight";

/** How often the backend is read even when the registry is quiet. */
export const SYNC_TICK_MS = 1000;

/** A refusal that persists is logged again at most this often. */
export const REFUSAL_REPEAT_MS = 5 * 60_000;

/** The servers the sync may fill: `server-template slot 1-N …` makes slot1 to slotN. */
export const SLOT_NAME = /^slot\d+$/;

/** Commands sent on one connection, at most (a line within HAProxy's 16 KB buffer), when each answers the same. */
const BATCH = 100;

/** A weight HAProxy accepts (a whole number from 0 to 256) from a record's text, or undefined. */
export function haproxyWeight(text: string | undefined): number | undefined {
  return text !== undefined && /^\d{1,3}$/.test(text) && Number(text) <= 256 ? Number(text) : undefined;
}

/**
 * The server one stored key and value want, or undefined: not an instance's
 * key (parseKey: which refuses 0.x, multicast and broadcast addresses), or
 * not a record.
 */
export function wantedServer(prefix: string, key: string, value: string): WantedServer | undefined {
  const entry = decodeEntry(prefix, key, value);
  if (!entry.record || entry.address === undefined) return undefined;
  const { ip, port } = parseAddress(entry.address);
  const weight = haproxyWeight(entry.record.meta[WEIGHT_META]);
  return { name: entry.address, ip, port, ...(weight === undefined ? {} : { weight }) };
}

/** The servers the registry wants, from a listing of the service's keys (key to value), by address. */
export function wantedServers(prefix: string, values: Map<string, string>): Map<string, WantedServer> {
  const wanted = new Map<string, WantedServer>();
  for (const [key, value] of values) {
    const server = wantedServer(prefix, key, value);
    if (server) wanted.set(server.name, server);
  }
  return wanted;
}

/**
 * The commands that make `actual` equal `wanted` (pure). `wanted` undefined
 * (the registry not read yet) changes nothing. A server holds the instance at
 * its address when it is a slot, or is named by that address; any other
 * server is taken out. Removals come first; an added server that is out and
 * idle is deleted, a slot that is out and idle is free. A wanted instance
 * goes into a free slot, else is added (once no server has its name).
 */
export function planSync(
  actual: HAProxyServer[],
  wanted: ReadonlyMap<string, WantedServer> | undefined,
): SyncCommand[] {
  if (wanted === undefined) return [];
  const out: SyncCommand[] = [];
  const rest: SyncCommand[] = [];
  const held = new Set<string>();
  const free: string[] = [];
  const names = new Set(actual.map((s) => s.name));
  for (const server of actual) {
    const address = `${server.ip}:${server.port}`;
    const slot = SLOT_NAME.test(server.name);
    const want = wanted.get(address);
    if (want !== undefined && !held.has(address) && (slot || server.name === address)) {
      held.add(address);
      if (server.maint) rest.push({ kind: "ready", name: server.name, address });
      const weight = want.weight ?? 1;
      if (server.weight !== weight) rest.push({ kind: "weight", name: server.name, address, weight });
    } else if (!server.maint) out.push({ kind: "out", name: server.name, address });
    else if (server.sessions === 0) {
      if (slot) free.push(server.name);
      else rest.push({ kind: "delete", name: server.name, address });
    }
  }
  for (const want of wanted.values()) {
    if (held.has(want.name)) continue;
    const slot = free.shift();
    if (slot !== undefined) rest.push({ kind: "fill", slot, server: want });
    else if (!names.has(want.name)) rest.push({ kind: "add", server: want });
  }
  return [...out, ...rest];
}

/**
 * Which conditions to log now (pure): one not logged before at once, one
 * logged at least `repeatMs` ago again; one absent from `current` is
 * forgotten, so it is logged at once if it comes back. Returns them and the
 * times to remember.
 */
export function throttle(
  logged: ReadonlyMap<string, number>,
  current: readonly string[],
  nowMs: number,
  repeatMs = REFUSAL_REPEAT_MS,
): { log: string[]; logged: Map<string, number> } {
  const next = new Map<string, number>();
  const log: string[] = [];
  for (const condition of current) {
    if (next.has(condition)) continue;
    const last = logged.get(condition);
    if (last === undefined || nowMs - last >= repeatMs) {
      log.push(condition);
      next.set(condition, nowMs);
    } else next.set(condition, last);
  }
  return { log, logged: next };
}

/**
 * A server in rotation that the registry does not want, at an address this
 * sync took out earlier (pure): another writer put it back, for example a
 * second sync, of another service, on the same backend.
 */
export function foreignServer(
  actual: HAProxyServer[],
  wanted: ReadonlyMap<string, WantedServer>,
  takenOut: ReadonlySet<string>,
): HAProxyServer | undefined {
  return actual.find((s) => !s.maint && takenOut.has(`${s.ip}:${s.port}`) && !wanted.has(`${s.ip}:${s.port}`));
}

/** What the sync needs: HAProxy, etcd, the log, a sleep, a clock, and where to write the state file. */
export interface SyncDeps {
  haproxy: Pick<HAProxy, "state" | "process" | "command" | "batch">;
  etcd: Etcd;
  log: Log;
  sleep(ms: number, signal: AbortSignal): Promise<void>;
  now?(): number;
  writeState?(path: string, text: string): Promise<void>;
}

/** What to keep in sync. */
export interface SyncOptions {
  prefix: string;
  service: string;
  backend: string;
  /** Words added to each `add server` (e.g. `check inter 1s fall 2 rise 1`); `check` turns its health check on. */
  serverOptions: string[];
  /** Where `show servers state BACKEND` is written after each change (the backend's `server-state-file-name`). */
  stateFile?: string;
}

/** The HAProxy command lines that perform one command, in order. */
export function commandLines(backend: string, serverOptions: string[], command: SyncCommand): string[] {
  switch (command.kind) {
    case "add": {
      const { name, ip, port, weight } = command.server;
      const server = `${backend}/${name}`;
      const words = [`add server ${server} ${ip}:${port}`, ...(weight === undefined ? [] : [`weight ${weight}`])];
      return [
        [...words, ...serverOptions].join(" "),
        ...(serverOptions.includes("check") ? [`enable health ${server}`] : []),
        `set server ${server} state ready`,
      ];
    }
    case "fill": {
      const { ip, port, weight } = command.server;
      const server = `${backend}/${command.slot}`;
      return [
        `set server ${server} addr ${ip} port ${port}`,
        `set server ${server} weight ${weight ?? 1}`,
        `set server ${server} state ready`,
      ];
    }
    case "ready":
      return [`set server ${backend}/${command.name} state ready`];
    case "weight":
      return [`set server ${backend}/${command.name} weight ${command.weight}`];
    case "out":
      return [`set server ${backend}/${command.name} state maint`];
    case "delete":
      return [`del server ${backend}/${command.name}`];
  }
}

/** What HAProxy answers to each line that succeeded. */
function expectedAnswer(line: string): string | RegExp {
  if (line.startsWith("add server ")) return "New server registered.";
  if (line.startsWith("del server ")) return /^(Server deleted\.|No such server\.)$/; // gone either way
  if (/^set server \S+ addr /.test(line)) return /^(IP changed|no need to change)/;
  return "";
}

/** Performs one command through the runtime API; an HAProxyError names the line refused. */
export async function applyCommand(
  haproxy: Pick<HAProxy, "command">,
  backend: string,
  serverOptions: string[],
  command: SyncCommand,
): Promise<void> {
  for (const line of commandLines(backend, serverOptions, command)) await haproxy.command(line, expectedAnswer(line));
}

/** Writes `text` to `path` atomically: a new file of a random name beside it, opened exclusively, renamed. */
export async function writeStateFile(path: string, text: string): Promise<void> {
  const staged = `${dirname(path)}/.registry-sync-${randomUUID()}`;
  try {
    await writeFile(staged, text, { flag: "wx", mode: 0o644 });
    await rename(staged, path);
  } catch (err) {
    await rm(staged, { force: true }).catch(() => {});
    throw err;
  }
}

const EVENT: Record<SyncCommand["kind"], string> = {
  add: "server added",
  fill: "server added",
  ready: "server ready",
  weight: "server weight changed",
  out: "server out",
  delete: "server deleted",
};

/** The log fields of a command: the server's name, and its address when the name is not it. */
function commandFields(command: SyncCommand): Record<string, unknown> {
  const [name, address] = command.kind === "add"
    ? [command.server.name, command.server.name]
    : command.kind === "fill"
    ? [command.slot, command.server.name]
    : [command.name, command.address];
  const weight = command.kind === "add" || command.kind === "fill"
    ? command.server.weight
    : command.kind === "weight"
    ? command.weight
    : undefined;
  return { server: name, address: address === name ? undefined : address, weight };
}

/** Follows the service in etcd and reconciles the backend until `signal` aborts. */
export async function runSync(options: SyncOptions, deps: SyncDeps, signal: AbortSignal): Promise<void> {
  const { haproxy, log } = deps;
  const { backend } = options;
  const now = deps.now ?? Date.now;
  const writeState = deps.writeState ?? writeStateFile;
  const listing = new Listing();
  const wanted = new Map<string, WantedServer>(); // by address: a change of a key changes its own entry only
  const apply = (change: ListingChange) => {
    const place = parseKey(options.prefix, change.key);
    if (!place) return;
    wanted.delete(place.address);
    const server = change.kind === "put" ? wantedServer(options.prefix, change.key, change.value) : undefined;
    if (server) wanted.set(server.name, server);
  };
  let read = false;
  let wake = () => {};
  const following = follow(deps.etcd, servicePrefix(options.prefix, options.service), {
    listed(values) {
      for (const change of listing.replace(values)) apply(change);
      read = true;
      wake();
    },
    changed(event) {
      const change = listing.apply(event);
      if (!change) return;
      apply(change);
      wake();
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
  let logged = new Map<string, number>(); // refusals, by condition, when last logged
  const takenOut = new Set<string>(); // addresses this sync took out of this HAProxy process
  let foreignWarned = false;
  let written: string | undefined; // the servers as the state file last had them
  let stateFailing = false;
  while (!signal.aborted) {
    const woken = new AbortController();
    wake = () => woken.abort();
    let again = false;
    try {
      const process = await haproxy.process();
      if (unreachable) log("notice", "haproxy answered", { pid: process.pid });
      unreachable = false;
      if (last && (process.pid !== last.pid || process.uptimeSeconds < last.uptimeSeconds)) {
        log("notice", "haproxy restarted", { pid: process.pid, was: last.pid, next: "resyncing" });
        takenOut.clear();
      }
      last = process;
      let state = await haproxy.state(backend, true);
      const foreign = read ? foreignServer(state.servers, wanted, takenOut) : undefined;
      if (foreign && !foreignWarned) {
        foreignWarned = true;
        log("warning", "backend shared", {
          backend,
          server: foreign.name,
          reason: "put back in rotation by another writer after this sync took it out; one sync per backend",
        });
      }
      const refusals: string[] = [];
      const refused = (command: SyncCommand, err: HAProxyError) => {
        const fields = { backend, ...commandFields(command), command: err.command, reason: err.message };
        refusals.push(JSON.stringify(fields));
      };
      const done = (command: SyncCommand) => {
        if (command.kind === "out") {
          takenOut.add(command.address);
          again = true; // delete what went out and is idle without waiting a tick
        }
        if (command.kind === "add" || command.kind === "fill") takenOut.delete(command.server.name);
        log(command.kind === "out" ? "notice" : "info", EVENT[command.kind], { backend, ...commandFields(command) });
      };
      const commands = read ? planSync(state.servers, wanted) : [];
      for (let i = 0; i < commands.length && !signal.aborted;) {
        // a run of removals or deletions: one connection per BATCH when all succeed; one by one to find which did not
        const { kind } = commands[i];
        const run: SyncCommand[] = [];
        if (kind === "out" || kind === "delete") {
          while (run.length < BATCH && commands[i + run.length]?.kind === kind) run.push(commands[i + run.length]);
        }
        const lines = run.flatMap((c) => commandLines(backend, options.serverOptions, c));
        if (run.length > 1 && await haproxy.batch(lines, kind === "delete" ? "Server deleted." : "")) {
          run.forEach(done);
          i += run.length;
          continue;
        }
        const single = run.length > 1 ? run : [commands[i]];
        i += single.length;
        for (const command of single) {
          try {
            await applyCommand(haproxy, backend, options.serverOptions, command);
            done(command);
          } catch (err) {
            if (!(err instanceof HAProxyError)) throw err;
            refused(command, err);
          }
        }
      }
      const remembered = throttle(logged, refusals, now());
      logged = remembered.logged;
      for (const fields of remembered.log) log("warning", "haproxy refused", JSON.parse(fields));
      if (options.stateFile !== undefined) {
        if (commands.length > 0) state = await haproxy.state(backend, true);
        const servers = JSON.stringify(state.servers.map((s) => ({ ...s, sessions: 0 })));
        if (servers !== written) {
          try {
            await writeState(options.stateFile, state.text);
            if (written === undefined || stateFailing) log("info", "state file written", { path: options.stateFile });
            written = servers;
            stateFailing = false;
          } catch (err) {
            if (!stateFailing) {
              log("warning", "state file not written", { path: options.stateFile, reason: describeError(err) });
            }
            stateFailing = true;
          }
        }
      }
    } catch (err) {
      if (signal.aborted) break;
      // a command that failed is retried by the next pass, from a fresh reading of both sides
      if (!unreachable) log("warning", "haproxy unreachable", { reason: describeError(err) });
      unreachable = true;
    }
    if (!again) await deps.sleep(SYNC_TICK_MS, AbortSignal.any([signal, woken.signal]));
  }
  await following;
}

/**
 * What must hold before `sync` touches anything: HAProxy answers at `text`,
 * has `backend`, and the socket is at admin level (a server that does not
 * exist is "No such server." there, "Permission denied" below it). Returns
 * the one-line refusal, or undefined.
 */
export async function checkHAProxy(
  haproxy: Pick<HAProxy, "state" | "run">,
  backend: string,
  text: string,
): Promise<string | undefined> {
  try {
    await haproxy.state(backend);
    const answer = (await haproxy.run(`set server ${backend}/-secretary-probe- state ready`)).trim();
    if (answer === "No such server.") return undefined;
    return `Cannot use --haproxy ${quote(text)}: expected a stats socket at level admin, HAProxy said ${
      quote(answer.split("\n")[0])
    }`;
  } catch (err) {
    if (err instanceof HAProxyError && /^no backend/.test(err.message)) {
      return `Cannot use --backend ${quote(backend)}: HAProxy has no such backend`;
    }
    const code = (err as { code?: string }).code;
    const why = code === "ENOENT"
      ? "no such socket"
      : code === "ECONNREFUSED"
      ? "nothing answers there"
      : describeError(err);
    return `Cannot use --haproxy ${quote(text)}: ${why}`;
  }
}

/** `--state-file`: its folder exists; the file, if there, is a regular file. Returns the one-line refusal, or undefined. */
export function checkStateFile(path: string | undefined): string | undefined {
  if (path === undefined) return undefined;
  const folder = dirname(path);
  const folderStat = statSync(folder, { throwIfNoEntry: false });
  if (!folderStat?.isDirectory()) return `Cannot use --state-file ${quote(path)}: no such folder ${quote(folder)}`;
  const file = statSync(path, { throwIfNoEntry: false });
  if (file && !file.isFile()) return `Cannot use --state-file ${quote(path)}: expected a regular file`;
  return undefined;
}
