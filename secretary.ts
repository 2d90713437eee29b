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
import { readFileSync } from "node:fs";
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
  stopSignals,
  UsageError,
  usageFrom,
} from "./lib/cli.ts";
import { createLog } from "./lib/log.ts";
import { hasControl, oneLine, quote } from "./lib/text.ts";
import { killRunningCommands, splitCommand } from "./lib/command.ts";
import { type CheckSpec, describeCheck, parseHeader, parseStatusRange, runCheck } from "./lib/checks.ts";
import { Etcd, type EtcdOptions } from "./lib/etcd.ts";
import {
  Agent,
  ask,
  DEFAULT_SOCKET,
  listen,
  readState,
  type Reply,
  type Request,
  stateFileFor,
  UnreachableError,
} from "./lib/agent.ts";
import { type InstanceConfig, preflight, runInstance, SUSPECT_RECHECK_MS, targetOf } from "./lib/instance.ts";
import { type Effects, EtcdRegistrar } from "./lib/registrar.ts";
import { DEFAULT_PREFIX, normalizePrefix, parsePort, validateIpv4, validateService } from "./lib/record.ts";

// the check loop, where its tests and earlier importers look for it
export {
  afterCheck,
  fastIntervalMs,
  fileExists,
  type Health,
  INITIAL_HEALTH,
  type LoopEffects,
  type LoopState,
  nextCheckDelayMs,
  runChecks,
  step,
  SUSPECT_RECHECK_MS,
} from "./lib/instance.ts";

/** Everything the secretary needs to know, parsed and checked: the instance, and where and how its record is kept. */
export interface Config extends InstanceConfig {
  etcd: EtcdOptions;
  /** @default "/services" */
  prefix: string;
  /** @default 10 */
  ttlSeconds: number;
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
SIGINT, 1 failed, 2 bad usage.

Dense hosts: one secretary agent for the host, instances attached to it instead
(secretary agent --help).`;

export const AGENT_HELP = `Usage: secretary agent [--socket PATH] [--ttl DURATION] [etcd options]
       secretary attach <port> [instance and check options] [--socket PATH]
       secretary detach <port> [--service NAME] [--ip ADDR] [--socket PATH]
       secretary attached [--socket PATH] [--json]

One secretary for a whole host: the agent runs the checks and keeps the records
of every instance attached to it, under one lease for the host.

  agent      listens on the Unix socket --socket (default ${DEFAULT_SOCKET}, mode
             0600) and keeps its state beside it. Takes --ttl (default 10s),
             --prefix and the etcd options of secretary --help. SIGTERM stops it
             keeping every record and the lease, for the next agent to adopt.
  attach     hands one instance to the agent and returns once it is accepted. Takes
             the instance and check options of secretary --help (--service, --ip,
             --hostname, --meta, --check..., --interval, --rise, --fall, --drain,
             --maintenance-file...), not --ttl, --prefix or the etcd options.
  detach     removes the instance's record, waits its --drain, then returns.
  attached   lists the attached instances: key, healthy, registered.

attach, detach and attached wait up to 5s for an agent that is starting.
Exit status: 0 done (agent: stopped by SIGTERM or SIGINT), 1 failed or the agent
cannot be reached, 2 bad usage.`;

/** The one `<port>` positional of `secretary <port>` and `secretary detach <port>`. */
function parsePortArgument(positionals: string[], command: string): number {
  if (positionals.length !== 1) {
    throw new UsageError(
      positionals.length === 0
        ? `Missing <port>: expected the instance's port, e.g. ${command} 8080`
        : `Cannot use arguments ${quote(positionals.slice(1).join(" "))}: expected only <port>`,
    );
  }
  return asUsage(() => parsePort(positionals[0]));
}

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
  const port = parsePortArgument(positionals, "secretary");
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
// One agent for the host: secretary agent, attach, detach, attached

/** The agent's flags, parsed and checked. */
export interface AgentConfig {
  socket: string;
  etcd: EtcdOptions;
  prefix: string;
  ttlSeconds: number;
}

/** The flags that belong to the agent: attach refuses them. */
const AGENT_ONLY_FLAGS = ["--ttl", "--prefix", "--endpoints", "--cacert", "--cert", "--key", "--user"];

/** The longest Unix socket path (sun_path holds 108 bytes, its last a NUL). */
const MAX_SOCKET_PATH_BYTES = 107;

function parseSocket(text: string | undefined): string {
  const path = text ?? DEFAULT_SOCKET;
  if (
    !path.startsWith("/") || path.endsWith("/") || hasControl(path) || Buffer.byteLength(path) > MAX_SOCKET_PATH_BYTES
  ) {
    throw new UsageError(
      `Cannot use --socket ${quote(path)}: expected an absolute file path of at most ${MAX_SOCKET_PATH_BYTES} bytes`,
    );
  }
  return path;
}

/** Parses `secretary agent`'s flags (after "agent"). */
export function parseAgentCli(args: readonly string[], env: Env): AgentConfig | "help" {
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    options: { ...CONNECTION_OPTIONS, socket: { type: "string" }, ttl: { type: "string", default: "10s" } },
  });
  if (values.help) return "help";
  if (positionals.length > 0) {
    throw new UsageError(`Cannot use arguments ${quote(positionals.join(" "))}: expected only flags after agent`);
  }
  const ttlMs = parseDuration(values.ttl, "--ttl", RANGES.ttl);
  if (ttlMs % 1000 !== 0) throw new UsageError(`Cannot use --ttl ${quote(values.ttl)}: expected whole seconds`);
  return {
    socket: parseSocket(values.socket),
    etcd: parseConnection(values, env),
    prefix: asUsage(() => normalizePrefix(values.prefix ?? DEFAULT_PREFIX)),
    ttlSeconds: ttlMs / 1000,
  };
}

/** Takes `--socket PATH` (or `--socket=PATH`) out of `args`: the socket, and the rest. */
function takeSocket(args: readonly string[]): { socket: string; rest: string[] } {
  const rest: string[] = [];
  let socket: string | undefined;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--socket") {
      if (i + 1 >= args.length) throw new UsageError("Missing a value for --socket: expected --socket PATH");
      socket = args[++i];
    } else if (args[i].startsWith("--socket=")) socket = args[i].slice("--socket=".length);
    else rest.push(args[i]);
  }
  return { socket: parseSocket(socket), rest };
}

/**
 * Parses an attached instance's flags: the sidekick's parser, refusing the
 * agent's own flags. The agent parses what attach sends it with this too.
 */
export function parseInstanceCli(
  args: readonly string[],
  env: Env,
  sources: Parameters<typeof parseCli>[2] = {},
): InstanceConfig | "help" {
  for (const arg of args) {
    const flag = arg.split("=")[0];
    if (AGENT_ONLY_FLAGS.includes(flag)) {
      throw new UsageError(`Cannot use ${flag} with attach: expected it on the agent (secretary agent ${flag} ...)`);
    }
  }
  // the environment for --ip's default only: the etcd variables are the agent's
  return parseCli(args, { COREOS_PUBLIC_IPV4: env.COREOS_PUBLIC_IPV4 }, sources);
}

/** Parses `secretary attach`'s arguments: the socket, the instance, and the arguments the agent gets (its address and hostname made explicit). */
export function parseAttachCli(
  args: readonly string[],
  env: Env,
  sources: Parameters<typeof parseCli>[2] = {},
): { socket: string; cfg: InstanceConfig; args: string[] } | "help" {
  const { socket, rest } = takeSocket(args);
  const cfg = parseInstanceCli(rest, env, sources);
  if (cfg === "help") return "help";
  const given = (flag: string) => rest.some((a) => a === flag || a.startsWith(`${flag}=`));
  return {
    socket,
    cfg,
    args: [
      ...rest,
      ...(given("--ip") ? [] : ["--ip", cfg.ip]),
      ...(given("--hostname") ? [] : ["--hostname", cfg.hostname]),
    ],
  };
}

/** Parses `secretary detach`'s arguments. */
export function parseDetachCli(
  args: readonly string[],
): { socket: string; request: Extract<Request, { op: "detach" }> } | "help" {
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    options: {
      socket: { type: "string" },
      service: { type: "string" },
      ip: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return "help";
  const port = parsePortArgument(positionals, "secretary detach");
  const service = values.service === undefined ? undefined : asUsage(() => validateService(values.service!));
  const ip = values.ip === undefined ? undefined : asUsage(() => validateIpv4(values.ip!));
  return {
    socket: parseSocket(values.socket),
    request: { op: "detach", port, ...(service ? { service } : {}), ...(ip ? { ip } : {}) },
  };
}

/** Parses `secretary attached`'s arguments. */
export function parseAttachedCli(args: readonly string[]): { socket: string; json: boolean } | "help" {
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    options: { socket: { type: "string" }, json: { type: "boolean" }, help: { type: "boolean", short: "h" } },
  });
  if (values.help) return "help";
  if (positionals.length > 0) {
    throw new UsageError(`Cannot use arguments ${quote(positionals.join(" "))}: expected only flags after attached`);
  }
  return { socket: parseSocket(values.socket), json: values.json ?? false };
}

/** The sources of --ip's and --hostname's defaults on this machine. */
const machine = {
  environmentFile: () => readOptional("/etc/environment"),
  hostname: () => {
    try {
      return osHostname();
    } catch {
      return undefined; // no --allow-sys=hostname under deno
    }
  },
};

/** Runs `parse`; a usage error is written as one line and becomes exit status 2. */
function parsed<T>(parse: () => T): T | number {
  try {
    return parse();
  } catch (err) {
    const usage = usageFrom(err, "secretary");
    if (usage instanceof UsageError) {
      process.stderr.write(`secretary: ${usage.message}\n`);
      return 2;
    }
    throw err;
  }
}

/** secretary agent: serves attach and detach on the socket until SIGTERM or SIGINT, which keeps every record. */
async function agentMain(args: string[]): Promise<number> {
  const env = process.env as Env;
  const cfg = parsed(() => parseAgentCli(args, env));
  if (typeof cfg === "number") return cfg;
  if (cfg === "help") {
    process.stdout.write(`${AGENT_HELP}\n`);
    return 0;
  }
  const log = createLog(env);
  const stateFile = stateFileFor(cfg.socket);
  const agent = new Agent(
    {
      etcd: new Etcd(cfg.etcd),
      effects: { now: Date.now, sleep, random: Math.random, log },
      prefix: cfg.prefix,
      ttlSeconds: cfg.ttlSeconds,
      stateFile,
      parse: (a) => {
        const instance = parseInstanceCli(a, {});
        if (instance === "help") throw new UsageError("Cannot use --help in an attach request");
        return instance;
      },
    },
    readState(stateFile, log),
  );
  const stop = stopSignals();
  let server;
  try {
    server = await listen(cfg.socket, (request) => agent.handle(request));
  } catch (err) {
    process.stderr.write(`secretary: ${oneLine((err as Error).message, 300)}\n`);
    return 1;
  }
  const instances = agent.start();
  log("notice", "agent started", {
    socket: cfg.socket,
    ttl: cfg.ttlSeconds,
    endpoints: cfg.etcd.endpoints.join(","),
    instances,
    lease: agent.adopting,
  });
  await new Promise<void>((resolve) => stop.first.addEventListener("abort", () => resolve()));
  server.close();
  const attached = agent.list().length;
  await agent.stop();
  log("notice", "agent stopped", {
    signal: stop.first.reason,
    lease: agent.lease,
    instances: attached,
    kept: "lease and records",
  });
  return 0;
}

/** Writes a reply's note or error; its exit status. */
function replied(reply: Reply): number {
  if (reply.ok) {
    if (reply.note) process.stderr.write(`secretary: ${oneLine(reply.note, 300)}\n`);
    return 0;
  }
  process.stderr.write(`secretary: ${oneLine(reply.error ?? "refused", 300)}\n`);
  return reply.usage ? 2 : 1;
}

/** secretary attach, detach and attached: one request to the agent. */
async function clientMain(command: "attach" | "detach" | "attached", args: string[]): Promise<number> {
  const env = process.env as Env;
  const given = parsed(() =>
    command === "attach"
      ? parseAttachCli(args, env, machine)
      : command === "detach"
      ? parseDetachCli(args)
      : parseAttachedCli(args)
  );
  if (typeof given === "number") return given;
  if (given === "help") {
    process.stdout.write(`${AGENT_HELP}\n`);
    return 0;
  }
  try {
    if ("cfg" in given) {
      // the agent answers once the instance is accepted: after the first check, for an exec check
      return replied(await ask(given.socket, { op: "attach", args: given.args }, given.cfg.timeoutMs + 30_000));
    }
    if ("request" in given) {
      // the agent answers after the record's delete and the instance's drain (at most an hour)
      return replied(await ask(given.socket, given.request, RANGES.drain.maxMs + 60_000));
    }
    const reply = await ask(given.socket, { op: "list" }, 30_000);
    if (!reply.ok) return replied(reply);
    const instances = reply.instances ?? [];
    process.stdout.write(
      given.json
        ? `${JSON.stringify(instances)}\n`
        : instances.map((i) =>
          `${i.key} ${i.healthy ? "healthy" : "unhealthy"} ${i.registered ? "registered" : "unregistered"}${
            i.leaving ? " leaving" : ""
          }\n`
        ).join(""),
    );
    return 0;
  } catch (err) {
    if (!(err instanceof UnreachableError)) throw err;
    process.stderr.write(`secretary: ${oneLine(err.message, 300)}\n`);
    return 1;
  }
}

async function main(args: string[]): Promise<number> {
  const env = process.env as Env;
  const log = createLog(env);
  const config = parsed(() => parseCli(args, env, machine));
  if (typeof config === "number") return config;
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
  // nothing is logged or sent to etcd (not even a lease) before the first check shows the command can run at all
  const first = await Promise.race([runCheck(cfg.check, targetOf(cfg)), stopped]);
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
  const checks = runInstance(cfg, registrar, effects, stop.signal, first);
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

function readOptional(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

/** The command: `secretary <port>` (the sidekick), or one of the agent's. */
function dispatch(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  if (command === "agent") return agentMain(rest);
  if (command === "attach" || command === "detach" || command === "attached") return clientMain(command, rest);
  return main(args);
}

if (import.meta.main) {
  dispatch(process.argv.slice(2)).then(
    exitWhenFlushed,
    (err) => {
      process.stderr.write(`secretary: ${err instanceof Error ? err.message : String(err)}\n`);
      exitWhenFlushed(1);
    },
  );
}
