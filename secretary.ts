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
import { createLog } from "./lib/log.ts";
import { hasControl, oneLine, quote } from "./lib/text.ts";
import { killRunningCommands, splitCommand } from "./lib/command.ts";
import {
  type CheckResult,
  type CheckSpec,
  describeCheck,
  parseHeader,
  parseStatusRange,
  runCheck,
} from "./lib/checks.ts";
import { ConnectionWatch, greetingFor } from "./lib/connection-watch.ts";
import { Etcd, type EtcdOptions } from "./lib/etcd.ts";
import { type Effects, EtcdRegistrar, type Registrar } from "./lib/registrar.ts";
import { DEFAULT_PREFIX, normalizePrefix, parsePort, validateIpv4, validateService } from "./lib/record.ts";

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
/** The re-check interval after the watch connection closed, while checks fail other than refused (see afterCheck()). */
export const SUSPECT_RECHECK_MS = 100;

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
                            instance died) a check runs at once and, until --fall is
                            reached or one passes, again at once after a connection
                            refused or reset, ${SUSPECT_RECHECK_MS}ms after any other failure

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

/** What the check loop carries from one check to the next: the verdict so far, and whether a death is suspected. */
export interface LoopState {
  health: Health;
  /** The watch connection closed (the kernel closes a dead process's sockets) and the verdict is not in yet. */
  suspect: boolean;
}

/**
 * After one check (pure): the new health, whether the verdict flipped, whether
 * a death is still suspected, and the time from this check's start to the
 * next. A suspicion ends when a check passes (the close was not a death) or
 * when the verdict is unhealthy. While it lasts, a refused check (the
 * connection refused, or reset before any answer: no blip, the kernel
 * answering for a process that is gone or going; CheckResult.refused) is
 * followed by the next at once, so `fall` refusals in a row take a
 * millisecond or two rather than fall - 1 waits; any other failure (a
 * timeout, a hung or blackholed instance, an HTTP error) waits
 * SUSPECT_RECHECK_MS, and without a suspicion the cadence is
 * nextCheckDelayMs(). `fall` counts checks either way: the close itself is
 * never counted.
 */
export function afterCheck(
  state: LoopState,
  result: Pick<CheckResult, "passed" | "refused">,
  policy: { rise: number; fall: number; intervalMs: number },
): LoopState & { changed: boolean; delayMs: number } {
  const { health, changed } = step(state.health, result.passed, policy);
  const suspect = state.suspect && !result.passed && health.healthy;
  const delayMs = !suspect ? nextCheckDelayMs(health, policy.intervalMs) : result.refused ? 0 : SUSPECT_RECHECK_MS;
  return { health, suspect, changed, delayMs };
}

/** The quick re-check interval: an eighth of the interval, from 50 to 500 ms. */
export function fastIntervalMs(intervalMs: number): number {
  return Math.min(500, Math.max(50, Math.round(intervalMs / 8)));
}

// ---------------------------------------------------------------------------
// The check loop

/** What the check loop needs besides the check: the registrar's effects, and whether maintenance is on. */
export interface LoopEffects extends Effects {
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
 * checks then fail they come at once if refused, else every
 * SUSPECT_RECHECK_MS, until `fall` is reached or one passes (a close that was
 * not a death costs that one check): see afterCheck(). The registrar is told
 * before anything is logged. `first` is a result already in hand, used in
 * place of the first check.
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
    wake.abort(); // before the log line: the check is what matters now
    effects.log("debug", "watch connection closed", { reason, next: "checking now" });
  });
  while (!signal.aborted) {
    const started = effects.now();
    wake = new AbortController();
    const result = first ?? await check();
    first = undefined;
    if (signal.aborted) break;
    const next = afterCheck({ health, suspect }, result, config);
    const { changed, delayMs } = next;
    health = next.health;
    suspect = next.suspect;
    if (result.passed) registrar.report(result.status);
    const nowMaintenance = effects.maintenance?.();
    const want = health.healthy && nowMaintenance === undefined;
    if (want !== wanted) {
      const reason = nowMaintenance ??
        (changed ? (health.healthy ? `${config.rise} checks passed` : result.reason) : "maintenance over");
      registrar.want(want, reason); // first: the registrar's write starts before any log line is written
    }
    if (result.reason !== lastReason && (!result.passed || lastReason !== "")) {
      effects.log(result.passed ? "info" : "warning", result.passed ? "check passed" : "check failed", {
        reason: result.reason,
      });
    }
    lastReason = result.reason;
    if (nowMaintenance !== maintenance) {
      effects.log("notice", nowMaintenance ? "maintenance started" : "maintenance ended", {
        reason: nowMaintenance ?? maintenance,
        healthy: health.healthy,
      });
    }
    maintenance = nowMaintenance;
    wanted = want;
    if (health.healthy && !suspect) watch?.arm();
    else if (!health.healthy) watch?.disarm();
    if (delayMs === 0) continue; // a refusal while a death is suspected: check again now, not after a timer
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
  stop.signal.addEventListener("abort", killRunningCommands);
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
  const effects: Effects = { now: Date.now, sleep, random: Math.random, log };
  const instance = { host: cfg.hostname, ipv4_addr: cfg.ip, port: cfg.port, service: cfg.service, meta: cfg.meta };
  const registrar = new EtcdRegistrar(
    { prefix: cfg.prefix, instance, ttlSeconds: cfg.ttlSeconds, intervalMs: cfg.intervalMs },
    new Etcd(cfg.etcd),
    effects,
  );
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
      ...effects,
      maintenance: file ? () => (fileExists(file) ? `maintenance file ${file} exists` : undefined) : undefined,
      watch: cfg.watchConnection
        ? (onLost) => new ConnectionWatch(cfg.ip, cfg.port, cfg.intervalMs, onLost, greetingFor(cfg.check.kind))
        : undefined,
    },
    stop.signal,
    first,
  );
  const reconciling = registrar.run(stop.signal);
  // either loop throwing (say, the maintenance file's folder losing its permissions) ends the secretary: one line, exit 1
  const failed = new Promise<Error>((resolve) => {
    const fail = (err: unknown) => resolve(err instanceof Error ? err : new Error(String(err)));
    checks.catch(fail);
    reconciling.catch(fail);
  });
  const error = await Promise.race([stopped.then(() => undefined), failed]);
  if (error) stop.abort("error");
  // revoke at once, without waiting for a check or an etcd call in flight
  const held = registrar.registered;
  // a proxy may have seen the record even if the put's answer is still on its way: drain then too
  const draining = !error && registrar.mayBeListed && cfg.drainMs > 0;
  const removed = (await registrar.stop()) && held;
  if (error) {
    log("err", "failed", {
      key: registrar.key,
      reason: oneLine(error.message),
      record: removed ? "removed" : undefined,
    });
    return 1;
  }
  log("notice", "stopped", {
    key: registrar.key,
    signal: stop.signal.reason,
    record: removed ? "removed" : undefined,
    drain: draining ? `${cfg.drainMs}ms` : undefined,
  });
  if (draining) await sleep(cfg.drainMs, drained.signal);
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
