#!/usr/bin/env -S deno run --allow-net --allow-env --allow-read=/etc/environment,node_modules --allow-sys=hostname
/**
 * secretary: keeps one service instance's record in etcd while the instance
 * is healthy, the sidekick of the 2015 CoreOS article rebuilt on etcd v3.
 *
 * ```sh
 * deno run --allow-net --allow-env --allow-read=/etc/environment secretary.ts 8080 --hostname "$(hostname)"
 * ```
 *
 * It checks the instance every `--interval`; after `--rise` passes in a row it
 * puts `<prefix>/<service>/<ip>:<port>` under a lease that it keeps alive, and
 * after `--fall` failures in a row it deletes that key. Nothing is written
 * while nothing changes. SIGTERM or SIGINT revokes the lease (the record goes
 * at once); if the process or its host dies, the lease expires after `--ttl`.
 *
 * @module
 */
import { readFileSync, statSync } from "node:fs";
import { hostname as osHostname } from "node:os";
import { parseArgs } from "node:util";
import {
  asUsage,
  CONNECTION_HELP,
  CONNECTION_OPTIONS,
  type DurationRange,
  type Env,
  exitWhenFlushed,
  parseConnection,
  parseCount,
  parseDuration,
  sleep,
  UsageError,
  usageFrom,
} from "./lib/cli.ts";
import { createLog, type Log } from "./lib/log.ts";
import { hasControl, quote } from "./lib/text.ts";
import {
  type CheckResult,
  type CheckSpec,
  ConnectionWatch,
  describeCheck,
  greetingFor,
  killRunningChecks,
  oneLine,
  parseHeader,
  parseStatusRange,
  runCheck,
  splitCommand,
} from "./lib/checks.ts";
import { describeError, Etcd, type EtcdOptions, isNetworkError } from "./lib/etcd.ts";
import {
  DEFAULT_PREFIX,
  encodeRecord,
  instanceKey,
  normalizePrefix,
  parsePort,
  type ServiceRecord,
  type Status,
  validateIpv4,
  validateService,
} from "./lib/record.ts";

/** Everything the secretary needs to know, parsed and checked. */
export interface Config {
  port: number;
  /** @default "apache" */
  service: string;
  ip: string;
  hostname: string;
  etcd: EtcdOptions;
  /** @default "/services" */
  prefix: string;
  /** @default http GET / passing on 200-399 */
  check: CheckSpec;
  /** @default 2000 */
  intervalMs: number;
  /** @default 1000 */
  timeoutMs: number;
  /** @default 2 */
  rise: number;
  /** @default 2 */
  fall: number;
  /** @default 10 */
  ttlSeconds: number;
  meta: Record<string, string>;
  /** How long to wait after removing the record on SIGTERM before exiting. @default 0 */
  drainMs: number;
  /** While this file exists, the instance is deregistered whatever its checks say. */
  maintenanceFile?: string;
  /** Hold an idle connection to the instance while healthy, and check at once when it closes. @default true */
  watchConnection: boolean;
}

/** The shortest lease TTL: below it, one slow keep-alive could drop a healthy record. */
export const MIN_TTL_SECONDS = 5;

/**
 * What each duration flag takes, both ends included; outside it, exit 2. No
 * range reaches a timer's limit (about 24.8 days), past which a timer fires at
 * once. The TTL's top is far below etcd's own (9,000,000,000 s): it only bounds
 * how long a dead host's record stays listed, and a day is already no bound.
 */
export const RANGES = {
  interval: { minMs: 100, maxMs: 3_600_000 },
  timeout: { minMs: 10, maxMs: 3_600_000 }, // and below --interval
  ttl: { minMs: MIN_TTL_SECONDS * 1000, maxMs: 86_400_000 },
  drain: { minMs: 1, maxMs: 3_600_000 },
} as const satisfies Record<string, DurationRange>;

/**
 * The most `--meta` may take, as the JSON text of the record's `meta`. A record
 * is read by every listing and watcher; this keeps it far below etcd's request
 * limit (1.5 MiB by default), so a put can never be refused for its size.
 */
export const MAX_META_BYTES = 64 * 1024;
/** The re-check interval after the watch connection closed, while checks fail. */
export const SUSPECT_RECHECK_MS = 100;

/** How long SIGTERM may wait for etcd to revoke the lease before exiting anyway. */
export const STOP_TIMEOUT_MS = 2000;

export const HELP = `Usage: secretary <port> [options]

Keeps this instance's record in etcd at <prefix>/<service>/<ip>:<port> while it
passes its health check, and removes it when the check fails or on SIGTERM.

Instance:
  <port>                    the instance's port, 1 to 65535 (the unit's %i)
  --service NAME            service name (default apache): a-z, 0-9, "-", "_", "."
  --ip ADDR                 the instance's IPv4 address (default $COREOS_PUBLIC_IPV4,
                            else COREOS_PUBLIC_IPV4 from /etc/environment)
  --hostname NAME           recorded as "host" (default: this machine's hostname)
  --meta KEY=VALUE          an extra field in the record's "meta"; repeatable, each KEY
                            once, ${MAX_META_BYTES / 1024} KiB in all

Check:
  --check KIND              http (default), https, tcp or exec:
                            http/https: GET <path>, passes on --expect-status;
                            tcp: passes when a connection opens;
                            exec: runs --command, passes on exit 0
  --path PATH               http/https: the path to GET (default /)
  --expect-status RANGE     http/https: a status or range (default 200-399)
  --expect-body TEXT        http/https: the body must contain TEXT
  --header "NAME: VALUE"    http/https: an extra request header, e.g. a Host; repeatable
  --insecure                https: accept any certificate (self-signed instances)
  --command "CMD ARGS..."   exec: the command, split like a shell but run without one;
                            it gets PATH, SECRETARY_IP, SECRETARY_PORT, SECRETARY_SERVICE;
                            a JSON object on its stdout (4 KiB at most) becomes the
                            record's "status"; its process group is killed at --timeout
  --interval DURATION       time between checks, 100ms to 1h (default 2s)
  --timeout DURATION        a check's deadline, below the interval (default 1s)
  --rise N                  passes in a row before registering (default 2)
  --fall N                  failures in a row before deregistering (default 2)
  --ttl DURATION            lease TTL, whole seconds, ${MIN_TTL_SECONDS}s to 24h (default 10s)
  --no-watch-connection     do not hold an idle connection to the instance; by default
                            one is held while it is healthy, and when it closes (the
                            instance died) checks run at once, every ${SUSPECT_RECHECK_MS}ms, until
                            --fall is reached or one passes

Operator controls:
  --drain DURATION          on SIGTERM, remove the record, then wait this long (up to
                            1h) before exiting, so traffic stops before the instance does
  --maintenance-file PATH   while PATH exists, stay deregistered whatever the checks say

${CONNECTION_HELP}

Durations take ms, s, m and h: 500ms, 2s, 1m. Exit status: 0 stopped by SIGTERM or
SIGINT, 1 failed, 2 bad usage.`;

/** Parses the command line. Returns "help" for --help; throws UsageError on bad input. */
export function parseCli(
  args: readonly string[],
  env: Env,
  sources: { environmentFile?: () => string | undefined; hostname?: () => string | undefined } = {},
): Config | "help" {
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    options: {
      ...CONNECTION_OPTIONS,
      service: { type: "string", default: "apache" },
      ip: { type: "string" },
      hostname: { type: "string" },
      check: { type: "string", default: "http" },
      path: { type: "string" },
      "expect-status": { type: "string" },
      "expect-body": { type: "string" },
      header: { type: "string", multiple: true },
      insecure: { type: "boolean" },
      command: { type: "string" },
      drain: { type: "string" },
      "maintenance-file": { type: "string" },
      "watch-connection": { type: "boolean" },
      "no-watch-connection": { type: "boolean" },
      interval: { type: "string", default: "2s" },
      timeout: { type: "string", default: "1s" },
      rise: { type: "string", default: "2" },
      fall: { type: "string", default: "2" },
      ttl: { type: "string", default: "10s" },
      meta: { type: "string", multiple: true, default: [] },
    },
  });
  if (values.help) return "help";
  if (positionals.length !== 1) {
    throw new UsageError(
      positionals.length === 0
        ? "Missing <port>: expected the instance's port, e.g. secretary 8080"
        : `Cannot use arguments ${quote(positionals.slice(1).join(" "))}: expected only <port>`,
    );
  }
  const port = asUsage(() => parsePort(positionals[0]));
  const service = asUsage(() => validateService(values.service));
  const prefix = asUsage(() => normalizePrefix(values.prefix ?? DEFAULT_PREFIX));
  const check = parseCheck(values);
  const intervalMs = parseDuration(values.interval, "--interval", RANGES.interval);
  const timeoutMs = parseDuration(values.timeout, "--timeout", RANGES.timeout);
  if (timeoutMs >= intervalMs) {
    throw new UsageError(
      `Cannot use --timeout ${quote(values.timeout)}: expected less than --interval ${quote(values.interval)}`,
    );
  }
  const ttlMs = parseDuration(values.ttl, "--ttl", RANGES.ttl);
  if (ttlMs % 1000 !== 0) throw new UsageError(`Cannot use --ttl ${quote(values.ttl)}: expected whole seconds`);
  const meta = parseMeta(values.meta);
  const etcd = parseConnection(values, env);
  const ip = values.ip ?? env.COREOS_PUBLIC_IPV4 ?? readVariable(sources.environmentFile?.(), "COREOS_PUBLIC_IPV4");
  if (ip === undefined || ip === "") {
    throw new UsageError(
      "Cannot find the instance's IP: expected --ip, $COREOS_PUBLIC_IPV4 or COREOS_PUBLIC_IPV4 in /etc/environment",
    );
  }
  const hostname = values.hostname ?? sources.hostname?.();
  if (hostname === undefined || hostname === "") {
    throw new UsageError(
      "Cannot read this machine's hostname: expected --hostname NAME (or deno's --allow-sys=hostname)",
    );
  }
  if (/\s/.test(hostname) || hasControl(hostname) || hostname.length > 253) {
    throw new UsageError(
      `Cannot use --hostname ${
        quote(hostname)
      }: expected a name of at most 253 characters, no spaces or control characters`,
    );
  }
  return {
    port,
    service,
    ip: asUsage(() => validateIpv4(ip)),
    hostname,
    etcd,
    prefix,
    check,
    intervalMs,
    timeoutMs,
    rise: parseCount(values.rise, "--rise"),
    fall: parseCount(values.fall, "--fall"),
    ttlSeconds: ttlMs / 1000,
    meta,
    drainMs: values.drain === undefined ? 0 : parseDuration(values.drain, "--drain", RANGES.drain),
    watchConnection: parseWatchConnection(values),
    maintenanceFile: values["maintenance-file"] === undefined
      ? undefined
      : parseAbsolutePath(values["maintenance-file"], "--maintenance-file"),
  };
}

/** The check from `--check` and the flags that belong to it; a flag that belongs to another check is an error. */
export function parseCheck(values: {
  check: string;
  path?: string;
  "expect-status"?: string;
  "expect-body"?: string;
  header?: string[];
  insecure?: boolean;
  command?: string;
}): CheckSpec {
  const kind = values.check;
  if (kind !== "http" && kind !== "https" && kind !== "tcp" && kind !== "exec") {
    throw new UsageError(`Cannot use --check ${quote(kind)}: expected http, https, tcp or exec`);
  }
  const belongs: [flag: string, given: boolean, kinds: string[]][] = [
    ["--path", values.path !== undefined, ["http", "https"]],
    ["--expect-status", values["expect-status"] !== undefined, ["http", "https"]],
    ["--expect-body", values["expect-body"] !== undefined, ["http", "https"]],
    ["--header", (values.header ?? []).length > 0, ["http", "https"]],
    ["--insecure", values.insecure !== undefined, ["https"]],
    ["--command", values.command !== undefined, ["exec"]],
  ];
  for (const [flag, given, kinds] of belongs) {
    if (given && !kinds.includes(kind)) {
      throw new UsageError(`Cannot use ${flag} with --check ${kind}: expected --check ${kinds.join(" or ")}`);
    }
  }
  if (kind === "tcp") return { kind };
  if (kind === "exec") {
    if (values.command === undefined) {
      throw new UsageError('Missing --command: expected --check exec --command "CMD ARGS..."');
    }
    return { kind, argv: asUsage(() => splitCommand(values.command!)) };
  }
  const path = values.path ?? "/";
  if (!/^\/[!-~]*$/.test(path)) {
    throw new UsageError(`Cannot use --path ${quote(path)}: expected a path starting with / and no spaces`);
  }
  const expectBody = values["expect-body"];
  if (expectBody === "") throw new UsageError('Cannot use --expect-body "": expected some text');
  return {
    kind,
    path,
    expectStatus: values["expect-status"] === undefined
      ? [200, 399]
      : asUsage(() => parseStatusRange(values["expect-status"]!)),
    ...(expectBody === undefined ? {} : { expectBody }),
    headers: (values.header ?? []).map((h) => asUsage(() => parseHeader(h))),
    insecure: values.insecure ?? false,
  };
}

function parseWatchConnection(values: { "watch-connection"?: boolean; "no-watch-connection"?: boolean }): boolean {
  if (values["watch-connection"] && values["no-watch-connection"]) {
    throw new UsageError("Cannot use --watch-connection with --no-watch-connection: expected one of them");
  }
  return !values["no-watch-connection"];
}

function parseAbsolutePath(text: string, flag: string): string {
  if (!text.startsWith("/") || text.includes("\0")) {
    throw new UsageError(`Cannot use ${flag} ${quote(text)}: expected an absolute path`);
  }
  return text;
}

/**
 * The record's `meta` from `--meta KEY=VALUE` flags. Refused rather than
 * dropped or changed: a key given twice, `__proto__` (a JavaScript reader
 * would drop it), control characters in a value, more than MAX_META_BYTES.
 */
export function parseMeta(pairs: readonly string[]): Record<string, string> {
  const meta: Record<string, string> = {};
  for (const pair of pairs) {
    const match = /^([A-Za-z0-9_.-]{1,128})=(.*)$/s.exec(pair);
    if (!match) {
      throw new UsageError(
        `Cannot use --meta ${quote(pair)}: expected KEY=VALUE, KEY of at most 128 letters, digits, _ . -`,
      );
    }
    const [, key, value] = match;
    if (key === "__proto__") {
      throw new UsageError(`Cannot use --meta ${quote(pair)}: expected a KEY other than __proto__`);
    }
    if (Object.hasOwn(meta, key)) throw new UsageError(`Cannot use --meta ${quote(pair)}: expected each KEY once`);
    if (hasControl(value)) {
      throw new UsageError(`Cannot use --meta ${quote(pair)}: expected a VALUE without control characters`);
    }
    meta[key] = value;
  }
  const bytes = new TextEncoder().encode(JSON.stringify(meta)).length;
  if (bytes > MAX_META_BYTES) {
    throw new UsageError(
      `Cannot use --meta ${quote(pairs.join(" "), 60)}: expected at most ${MAX_META_BYTES} bytes in all, not ${bytes}`,
    );
  }
  return meta;
}

/** Reads `NAME=value` from a CoreOS-style environment file (`KEY=value` lines, optional quotes). */
export function readVariable(text: string | undefined, name: string): string | undefined {
  if (text === undefined) return undefined;
  for (const line of text.split("\n")) {
    const match = /^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$/.exec(line);
    if (match?.[1] === name) return match[2].replace(/^(["'])(.*)\1$/, "$2");
  }
  return undefined;
}

// ---------------------------------------------------------------------------
// The health state machine (pure)

/** What the checks say so far: the settled verdict and how many results in a row disagree with it. */
export interface Health {
  healthy: boolean;
  streak: number;
}

/** A new instance counts as unhealthy until `rise` checks pass. */
export const INITIAL_HEALTH: Health = { healthy: false, streak: 0 };

/** Applies one check result; `changed` is set when the verdict flips. */
export function step(health: Health, passed: boolean, policy: { rise: number; fall: number }): {
  health: Health;
  changed: boolean;
} {
  if (passed === health.healthy) return { health: { healthy: passed, streak: 0 }, changed: false };
  const streak = health.streak + 1;
  if (streak >= (passed ? policy.rise : policy.fall)) return { health: { healthy: passed, streak: 0 }, changed: true };
  return { health: { healthy: health.healthy, streak }, changed: false };
}

/**
 * The time from one check's start to the next. While results disagree with
 * the verdict the next check comes sooner, so a dead instance goes in about
 * one interval while a single blip removes nothing.
 */
export function nextCheckDelayMs(health: Health, intervalMs: number): number {
  return health.streak > 0 ? fastIntervalMs(intervalMs) : intervalMs;
}

/** The quick re-check interval: an eighth of the interval, from 50 to 500 ms. */
export function fastIntervalMs(intervalMs: number): number {
  return Math.min(500, Math.max(50, Math.round(intervalMs / 8)));
}

// ---------------------------------------------------------------------------
// Keeping the record in etcd

/** What the check loop asks of etcd: hold the record, or not. A fake stands in for it in tests. */
export interface Registrar {
  want(registered: boolean, reason: string): void;
  /** The data a passing check reported (an exec check's JSON), published in the record when it changes. */
  report(status: Status | undefined): void;
}

/** The etcd operations the registrar uses (lib/etcd.ts's Etcd has them all). */
export type EtcdClient = Pick<
  Etcd,
  | "grantLease"
  | "keepAlive"
  | "leaseTimeToLive"
  | "revokeLease"
  | "putIfAbsent"
  | "putIfLease"
  | "deleteIfLease"
  | "get"
  | "close"
>;

/**
 * Whether nobody keeps a lease alive: a holder keeps it alive every third of
 * its TTL, so a lease kept alive never has much less than two thirds left.
 * Such a record is a crashed secretary's (this one's predecessor, restarted
 * by systemd), not a running duplicate's.
 */
export function isOrphaned(lease: { ttlSeconds: number; grantedSeconds: number } | undefined): boolean {
  return lease === undefined || lease.ttlSeconds < (lease.grantedSeconds * 2) / 3 - 1;
}

/** `client`, calling `onAnswer` after each call that etcd answered. */
function countAnswers(client: EtcdClient, onAnswer: () => void): EtcdClient {
  const answered = <A extends unknown[], R>(call: (...args: A) => Promise<R>) => async (...args: A) => {
    const result = await call.apply(client, args);
    onAnswer();
    return result;
  };
  return {
    grantLease: answered(client.grantLease),
    keepAlive: answered(client.keepAlive),
    leaseTimeToLive: answered(client.leaseTimeToLive),
    revokeLease: answered(client.revokeLease),
    putIfAbsent: answered(client.putIfAbsent),
    putIfLease: answered(client.putIfLease),
    deleteIfLease: answered(client.deleteIfLease),
    get: answered(client.get),
    close: () => client.close(),
  };
}

/** A status as compared and logged: its JSON text, "" for none. */
function statusText(status: Status | undefined): string {
  return status === undefined ? "" : JSON.stringify(status);
}

/** Clock, sleep and randomness, passed in so tests can drive them. */
export interface Effects {
  now(): number;
  random(): number;
  log: Log;
}

/**
 * Keeps the record in etcd as the checks want it: grants one lease and keeps
 * it alive, puts the record when the instance is healthy, deletes it (only
 * while it is ours) when it is not. Every failure is retried with jittered
 * backoff, forever; a lost lease is replaced and the record
 * put again. About once a TTL it reads its own key and restores it if it was
 * deleted by hand.
 */
export class EtcdRegistrar implements Registrar {
  #desired = false;
  #reason = "starting";
  #lease?: string;
  #staleLeases: string[] = [];
  #lastKeepAliveOk = 0;
  #lastKeepAliveSent = 0;
  #lastVerified = 0;
  #holding: "none" | "ours" | "other" = "none";
  #otherLease = "";
  #everRegistered = false;
  #failures = 0;
  #lastFailureLog = 0;
  #wake: () => void = () => {};
  #stopping = false;
  #status?: Status;
  /** The status in the record as last written under our lease, as JSON text. */
  #writtenStatus = "";
  #registeredAt = "";

  /** etcd answers so far: "etcd answered again" needs one, not merely a pass that called nothing. */
  #answers = 0;
  readonly client: EtcdClient;

  constructor(
    readonly config: Config,
    client: EtcdClient,
    readonly effects: Effects,
  ) {
    this.client = countAnswers(client, () => this.#answers++);
  }

  /** Whether the record is registered under this process's lease, as far as it knows. */
  get registered(): boolean {
    return this.#holding === "ours";
  }

  /** Whether the record may be listed: registered, or wanted (a put may be in flight). */
  get mayBeListed(): boolean {
    return this.#holding === "ours" || this.#desired;
  }

  get key(): string {
    return instanceKey(this.config.prefix, this.config.service, this.config.ip, this.config.port);
  }

  want(registered: boolean, reason: string): void {
    this.#desired = registered;
    this.#reason = reason;
    this.#wake();
  }

  report(status: Status | undefined): void {
    if (statusText(status) === statusText(this.#status)) return;
    this.#status = status;
    this.#wake();
  }

  /** Reconciles until `signal` aborts, then revokes the lease within STOP_TIMEOUT_MS. */
  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      const waitMs = await this.reconcile();
      const wake = new AbortController();
      this.#wake = () => wake.abort();
      await sleep(waitMs, AbortSignal.any([signal, wake.signal]));
    }
  }

  /** Revokes every lease this process made, so its record goes now. Bounded in time. */
  async stop(): Promise<boolean> {
    this.#stopping = true;
    const leases = [...this.#staleLeases, ...(this.#lease ? [this.#lease] : [])];
    this.#lease = undefined;
    try {
      await Promise.all(leases.map((l) => this.client.revokeLease(l, STOP_TIMEOUT_MS)));
      return true;
    } catch (err) {
      this.effects.log("warning", "revoke failed; the record expires with its lease", {
        key: this.key,
        ttl: this.config.ttlSeconds,
        reason: describeError(err),
      });
      return false;
    } finally {
      this.client.close();
    }
  }

  /** One pass: bring etcd in line with what is wanted; returns how long to wait before the next. */
  async reconcile(): Promise<number> {
    const { log, now } = this.effects;
    const ttlMs = this.config.ttlSeconds * 1000;
    const key = this.key;
    const answersBefore = this.#answers;
    if (this.#lease && now() - this.#lastKeepAliveOk > ttlMs) {
      this.#loseLease(`no keep-alive answered for ${Math.round((now() - this.#lastKeepAliveOk) / 1000)}s`);
    }
    try {
      if (!this.#lease) {
        const lease = await this.client.grantLease(this.config.ttlSeconds);
        if (this.#stopping) {
          // granted while stopping: it must hold nothing, and go now
          await this.client.revokeLease(lease).catch(() => {});
          return 0;
        }
        this.#lease = lease;
        this.#lastKeepAliveOk = this.#lastKeepAliveSent = now();
        log("info", "lease granted", { lease: this.#lease, ttl: this.config.ttlSeconds });
        await this.#revokeStale();
      }
      if (now() - this.#lastKeepAliveSent >= ttlMs / 3) {
        this.#lastKeepAliveSent = now();
        const remaining = await this.client.keepAlive(this.#lease);
        if (remaining <= 0) {
          this.#loseLease("etcd says it expired");
          return 0;
        }
        this.#lastKeepAliveOk = this.#lastKeepAliveSent;
      }
      const verifyEveryMs = this.#holding === "other" ? this.config.intervalMs : ttlMs;
      if (this.#desired && this.#holding === "none") await this.#register(key);
      else if (this.#desired && now() - this.#lastVerified >= verifyEveryMs) await this.#verify(key);
      else if (!this.#desired && this.#holding === "ours") {
        // a transaction: deletes only while the record is still ours
        const deleted = await this.client.deleteIfLease(key, this.#lease);
        this.#holding = "none";
        log("notice", deleted ? "deregistered" : "deregistered; the record was already gone or another's", {
          key,
          reason: this.#reason,
        });
      } else if (!this.#desired && this.#holding === "other") {
        this.#holding = "none"; // another secretary's record: not ours to delete
      }
      if (this.#desired && this.#holding === "ours" && statusText(this.#status) !== this.#writtenStatus) {
        await this.#rewrite(key);
      }
      if (this.#failures > 0 && this.#answers > answersBefore) {
        log("notice", "etcd answered again", { failures: this.#failures });
        this.#failures = 0;
      }
    } catch (err) {
      return this.#failed(err);
    }
    const sinceKeepAlive = now() - this.#lastKeepAliveSent;
    let waitMs = ttlMs / 3 - sinceKeepAlive;
    // a record held by another lease is read every interval, so ours follows soon after it goes
    const verifyEveryMs = this.#holding === "other" ? this.config.intervalMs : ttlMs;
    if (this.#desired) waitMs = Math.min(waitMs, verifyEveryMs - (now() - this.#lastVerified));
    return Math.max(0, Math.ceil(waitMs));
  }

  async #register(key: string): Promise<void> {
    const { log, now } = this.effects;
    const lease = this.#lease;
    if (!lease || this.#stopping) return;
    this.#registeredAt = new Date(now()).toISOString();
    const status = statusText(this.#status);
    const value = this.#value();
    let stored = await this.client.putIfAbsent(key, value, lease);
    const absent = stored.modRevision === "0"; // deleted between the compare and the read
    // a record with no lease was written by hand: no secretary keeps it, and it would never expire
    const unleased = !absent && stored.lease === "0";
    const orphan = unleased ||
      (stored.lease !== lease && stored.lease !== "0" && !this.#staleLeases.includes(stored.lease) &&
        isOrphaned(await this.client.leaseTimeToLive(stored.lease)));
    if (orphan || (stored.lease !== lease && this.#staleLeases.includes(stored.lease))) {
      // our own earlier lease (kept alive by etcd across a leader change), one nobody keeps alive (a crashed
      // secretary's), or none: move the record over in one write, so it is never missing
      const previous = stored.lease;
      if (orphan) {
        log("notice", "record taken over", {
          key,
          other_lease: previous,
          reason: unleased ? "the record has no lease" : "nobody keeps its lease alive",
        });
      }
      if (await this.client.putIfLease(key, value, lease, previous)) {
        stored = { ...stored, lease };
        this.#staleLeases = this.#staleLeases.filter((l) => l !== previous);
        // it holds nothing now ("0" is no lease)
        if (previous !== "0") await this.client.revokeLease(previous).catch(() => {});
      }
    }
    this.#lastVerified = now();
    if (stored.lease === lease) {
      this.#holding = "ours";
      this.#writtenStatus = status;
      log("notice", this.#everRegistered ? "registered again" : "registered", { key, lease, reason: this.#reason });
      this.#everRegistered = true;
    } else if (absent) {
      this.#holding = "none"; // deleted between our compare and read: the next pass puts it
    } else {
      if (this.#holding !== "other" || this.#otherLease !== stored.lease) {
        log("warning", "not registered: another lease holds the record, is a second secretary running?", {
          key,
          lease,
          other_lease: stored.lease,
        });
      }
      this.#holding = "other";
      this.#otherLease = stored.lease;
    }
  }

  /** The record as this secretary writes it: the instance, plus the last status reported. */
  #value(): string {
    const record: ServiceRecord = {
      host: this.config.hostname,
      ipv4_addr: this.config.ip,
      port: this.config.port,
      service: this.config.service,
      registered_at: this.#registeredAt,
      meta: this.config.meta,
      ...(this.#status ? { status: this.#status } : {}),
    };
    return encodeRecord(record);
  }

  /** Writes the record again with a new status, only while it is still under our lease. */
  async #rewrite(key: string): Promise<void> {
    const lease = this.#lease;
    if (!lease || this.#stopping) return;
    const status = statusText(this.#status);
    if (await this.client.putIfLease(key, this.#value(), lease, lease)) {
      this.#writtenStatus = status;
      this.effects.log("info", "status changed", { key, status });
    } else {
      this.#holding = "none"; // gone or another's: the next pass finds out which
    }
  }

  async #verify(key: string): Promise<void> {
    const { log, now } = this.effects;
    const stored = await this.client.get(key);
    this.#lastVerified = now();
    if (stored?.lease === this.#lease) {
      this.#holding = "ours";
    } else if (!stored) {
      if (this.#holding === "ours") log("warning", "record missing; restoring", { key });
      this.#holding = "none";
      await this.#register(key);
    } else if (
      this.#holding === "other" &&
      (stored.lease === "0" || isOrphaned(await this.client.leaseTimeToLive(stored.lease)))
    ) {
      await this.#register(key); // its holder stopped keeping it alive, or it has no lease: take it over
    } else {
      if (this.#holding === "ours") {
        log("warning", "record taken over by another lease", { key, other_lease: stored.lease });
      }
      this.#holding = "other";
      this.#otherLease = stored.lease;
    }
  }

  async #revokeStale(): Promise<void> {
    // only leases that hold nothing of ours are revoked here: the record moves over in #register
    const stored = this.#desired ? await this.client.get(this.key) : undefined;
    const keep = stored?.lease;
    const stale = this.#staleLeases.filter((l) => l !== keep);
    this.#staleLeases = this.#staleLeases.filter((l) => l === keep);
    await Promise.all(stale.map((l) => this.client.revokeLease(l).catch(() => {})));
  }

  #loseLease(reason: string): void {
    this.effects.log("warning", "lease lost", { lease: this.#lease, reason });
    if (this.#lease) this.#staleLeases.push(this.#lease);
    this.#lease = undefined;
    this.#holding = "none";
  }

  #failed(err: unknown): number {
    const { log, now, random } = this.effects;
    if (this.#stopping) return 0; // the client was closed under a call in flight: nothing to report
    // the client has already dropped a connection that failed or hung, and moved to the next member
    this.#failures++;
    if (this.#failures === 1 || now() - this.#lastFailureLog >= 10_000) {
      this.#lastFailureLog = now();
      log("warning", "etcd call failed; retrying", {
        key: this.key,
        failures: this.#failures,
        reason: describeError(err),
      });
    }
    // etcd back from an outage is found within a second; a refusal (a wrong password: each try costs etcd a
    // bcrypt) is retried more slowly
    const capMs = Math.min(isNetworkError(err) ? 1000 : 15_000, 100 * 2 ** Math.min(this.#failures, 10));
    return capMs * (0.5 + random() / 2);
  }
}

// ---------------------------------------------------------------------------
// The check loop

/** What the check loop needs besides the check: a clock, a sleep, a log, and whether maintenance is on. */
export interface LoopEffects {
  now(): number;
  sleep(ms: number, signal: AbortSignal): Promise<void>;
  log: Log;
  /** The reason the instance is in maintenance (e.g. the file that says so), or undefined. */
  maintenance?(): string | undefined;
  /** Makes the connection watch, which calls `onLost` when its idle connection to the instance closes. */
  watch?(onLost: (reason: string) => void): Pick<ConnectionWatch, "arm" | "disarm">;
}

/**
 * Runs checks until `signal` aborts, telling `registrar` what the verdict
 * wants: registered while healthy and not in maintenance. Checks keep running
 * and logging during maintenance, so the verdict is current when it ends.
 *
 * While the instance is healthy the connection watch holds an idle
 * connection to it. When that closes, the next check runs at once, and while
 * checks then fail they come every SUSPECT_RECHECK_MS until `fall` is reached
 * or one passes (a close that was not a death costs that one check).
 * `first` is a result already in hand, used in place of the first check.
 */
export async function runChecks(
  config: Pick<Config, "intervalMs" | "rise" | "fall">,
  check: () => Promise<CheckResult>,
  registrar: Registrar,
  effects: LoopEffects,
  signal: AbortSignal,
  first?: CheckResult,
): Promise<void> {
  let health = INITIAL_HEALTH;
  let lastReason = "";
  let maintenance: string | undefined;
  let wanted = false;
  let suspect = false; // the watch connection closed: checks come quickly until the verdict is clear
  let wake = new AbortController();
  const watch = effects.watch?.((reason) => {
    suspect = true;
    effects.log("debug", "watch connection closed; checking now", { reason });
    wake.abort();
  });
  while (!signal.aborted) {
    const started = effects.now();
    wake = new AbortController();
    const result = first ?? await check();
    first = undefined;
    if (signal.aborted) break;
    const { health: next, changed } = step(health, result.passed, config);
    if (result.reason !== lastReason && (!result.passed || lastReason !== "")) {
      effects.log(result.passed ? "info" : "warning", result.passed ? "check passed" : "check failed", {
        reason: result.reason,
      });
    }
    lastReason = result.reason;
    health = next;
    if (result.passed) registrar.report(result.status);
    const nowMaintenance = effects.maintenance?.();
    if (nowMaintenance !== maintenance) {
      effects.log("notice", nowMaintenance ? "maintenance on" : "maintenance off", {
        reason: nowMaintenance ?? maintenance,
        healthy: health.healthy,
      });
    }
    const want = health.healthy && nowMaintenance === undefined;
    if (want !== wanted) {
      const reason = nowMaintenance ??
        (changed ? (health.healthy ? `${config.rise} checks passed` : result.reason) : "maintenance over");
      registrar.want(want, reason);
    }
    maintenance = nowMaintenance;
    wanted = want;
    if (result.passed || !health.healthy) suspect = false; // not a death, or the verdict is in
    if (health.healthy && !suspect) watch?.arm();
    else if (!health.healthy) watch?.disarm();
    const delayMs = suspect ? SUSPECT_RECHECK_MS : nextCheckDelayMs(health, config.intervalMs);
    const elapsed = effects.now() - started;
    await effects.sleep(Math.max(0, delayMs - elapsed), AbortSignal.any([signal, wake.signal]));
  }
  watch?.disarm();
}

/**
 * Whether the maintenance file exists. Errors other than "not there" (deno
 * without --allow-read for it, a directory that cannot be searched) throw:
 * a maintenance switch that silently reads as off is worse than none.
 */
export function fileExists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === "ENOENT" || code === "ENOTDIR") return false;
    throw err;
  }
}

async function main(args: string[]): Promise<number> {
  const env = process.env as Env;
  const log = createLog(env);
  let config: Config | "help";
  try {
    config = parseCli(args, env, {
      environmentFile: () => readOptional("/etc/environment"),
      hostname: () => {
        try {
          return osHostname();
        } catch {
          return undefined; // no --allow-sys=hostname under deno
        }
      },
    });
  } catch (err) {
    const usage = usageFrom(err, "secretary");
    if (usage instanceof UsageError) {
      process.stderr.write(`secretary: ${usage.message}\n`);
      return 2;
    }
    throw err;
  }
  if (config === "help") {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  const cfg = config;
  const refusal = preflight(cfg);
  if (refusal) {
    process.stderr.write(`secretary: ${refusal}\n`);
    return 2;
  }
  const stop = new AbortController();
  const drained = new AbortController();
  for (const name of ["SIGTERM", "SIGINT"] as const) {
    // a second signal cuts the drain short
    process.on(name, () => (stop.signal.aborted ? drained.abort() : stop.abort(name)));
  }
  // a check in flight dies with its children when the secretary stops, not after it
  stop.signal.addEventListener("abort", killRunningChecks);
  const stopped = new Promise<void>((resolve) => stop.signal.addEventListener("abort", () => resolve()));
  const target = { ip: cfg.ip, port: cfg.port, service: cfg.service, timeoutMs: cfg.timeoutMs };
  // nothing is logged or sent to etcd (not even a lease) before the first check shows the command can run at all
  const first = await Promise.race([runCheck(cfg.check, target), stopped]);
  if (first?.fatal) {
    const command = cfg.check.kind === "exec" ? cfg.check.argv.join(" ") : "";
    process.stderr.write(`secretary: Cannot use --command ${quote(command)}: ${first.reason}\n`);
    return 2;
  }
  if (!first) return 0; // stopped during the first check
  const registrar = new EtcdRegistrar(cfg, new Etcd(cfg.etcd), { now: Date.now, random: Math.random, log });
  log("info", "started", {
    key: registrar.key,
    check: describeCheck(cfg.check, cfg.ip, cfg.port),
    interval: `${cfg.intervalMs}ms`,
    ttl: cfg.ttlSeconds,
    endpoints: cfg.etcd.endpoints.join(","),
    maintenance_file: cfg.maintenanceFile,
    watch_connection: cfg.watchConnection,
  });
  const file = cfg.maintenanceFile;
  const checks = runChecks(
    cfg,
    () => runCheck(cfg.check, target),
    registrar,
    {
      now: Date.now,
      sleep,
      log,
      maintenance: file ? () => (fileExists(file) ? `maintenance file ${file} exists` : undefined) : undefined,
      watch: cfg.watchConnection
        ? (onLost) => new ConnectionWatch(cfg.ip, cfg.port, cfg.intervalMs, onLost, greetingFor(cfg.check.kind))
        : undefined,
    },
    stop.signal,
    first,
  );
  const reconciling = registrar.run(stop.signal);
  await stopped;
  // revoke at once, without waiting for a check or an etcd call in flight
  const held = registrar.registered;
  // a proxy may have seen the record even if the put's answer is still on its way: drain then too
  const draining = registrar.mayBeListed && cfg.drainMs > 0;
  const removed = (await registrar.stop()) && held;
  log("notice", removed ? "stopped; record removed" : "stopped", {
    key: registrar.key,
    signal: stop.signal.reason,
    drain: draining ? `${cfg.drainMs}ms` : undefined,
  });
  if (draining) await sleep(cfg.drainMs, drained.signal);
  void checks;
  void reconciling;
  return 0;
}

/**
 * What must hold before anything else happens: the maintenance file can be
 * looked for, and deno lets an exec check kill its command's process group.
 * (That the command can start at all is shown by the first check.) Returns
 * the one-line refusal, or undefined.
 */
function preflight(cfg: Config): string | undefined {
  if (cfg.maintenanceFile) {
    try {
      fileExists(cfg.maintenanceFile);
    } catch (err) {
      return `Cannot use --maintenance-file ${quote(cfg.maintenanceFile)}: ${oneLine((err as Error).message)}`;
    }
  }
  if (cfg.check.kind !== "exec") return undefined;
  const deno = (globalThis as { Deno?: typeof Deno }).Deno;
  if (deno && deno.permissions.querySync({ name: "run" }).state !== "granted") {
    return "Cannot use --check exec: expected deno's --allow-run without a list (the command's process group is killed as one)";
  }
  return undefined;
}

function readOptional(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

if (import.meta.main) {
  main(process.argv.slice(2)).then(
    exitWhenFlushed,
    (err) => {
      process.stderr.write(`secretary: ${err instanceof Error ? err.message : String(err)}\n`);
      exitWhenFlushed(1);
    },
  );
}
