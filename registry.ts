#!/usr/bin/env -S deno run --allow-net --allow-env --allow-read=node_modules
/**
 * registry: lists, gets and watches the instances that secretaries keep in
 * etcd, from any host, for people and for scripts; and keeps what serves
 * traffic equal to them. This file parses and dispatches; each command's
 * work is in lib/ (show.ts, follow.ts, sync.ts, render.ts, serve.ts).
 *
 * ```sh
 * deno run --allow-net --allow-env registry.ts ls [SERVICE] [--json]
 * deno run --allow-net --allow-env registry.ts get SERVICE IP:PORT
 * deno run --allow-net --allow-env registry.ts watch [SERVICE] [--json]
 * deno run --allow-net --allow-env … registry.ts sync SERVICE --haproxy SOCKET --backend NAME [--state-file FILE]
 * deno run --allow-net --allow-env … registry.ts render SERVICE --template FILE --out FILE [--check CMD] [--reload CMD]
 * deno run --allow-net --allow-env registry.ts serve [--listen HOST:PORT]   # a live page, an API, metrics
 * ```
 *
 * `watch` lists, then watches from the next revision, so no change is missed;
 * when the stream breaks (etcd restarted, revision compacted, network cut) it
 * lists again, prints the difference, and carries on. `sync`, `render` and
 * `serve` follow the registry the same way (lib/follow.ts) until SIGTERM.
 *
 * @module
 */
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import {
  asUsage,
  CONNECTION_HELP,
  CONNECTION_OPTIONS,
  type Env,
  exitWhenFlushed,
  parseConnection,
  sleep,
  stopSignals,
  UsageError,
  usageFrom,
} from "./lib/cli.ts";
import { describeError, Etcd, type EtcdOptions } from "./lib/etcd.ts";
import { follow } from "./lib/follow.ts";
import { Listing, type ListingChange } from "./lib/listing.ts";
import { HAProxy, type HAProxyAddress, parseHAProxyAddress } from "./lib/haproxy.ts";
import { createLog } from "./lib/log.ts";
import { parseServe, runServe, SERVE_HELP, SERVE_OPTIONS, type ServeConfig } from "./lib/serve.ts";
import { checkHAProxy, checkStateFile, DEFAULT_SERVER_OPTIONS, runSync } from "./lib/sync.ts";
import { checkRender, parseWait, Renderer, runRender, type Wait } from "./lib/render.ts";
import { DEFAULT_PATH, killRunningCommands, splitCommand } from "./lib/command.ts";
import {
  decodeEntry,
  DEFAULT_PREFIX,
  instanceKey,
  normalizePrefix,
  parseAddress,
  servicePrefix,
  validateService,
} from "./lib/record.ts";
import {
  byRank,
  entryJson,
  entryRank,
  formatChange,
  formatRows,
  printableValue,
  tableRow,
  watchChanges,
} from "./lib/show.ts";
import { hasControl, printableJson, quote } from "./lib/text.ts";

export const HELP = `Usage: registry <command> [options]

Commands:
  ls [SERVICE]              list instances: SERVICE, ADDRESS, HOST, AGE, STATUS, META
  get SERVICE IP:PORT       print one instance's record as JSON; exit 1 if there is none
  watch [SERVICE]           print the instances, then every change: + registered, - gone
  sync SERVICE --haproxy ADDR --backend NAME
                            keep an HAProxy backend's servers equal to SERVICE's instances,
                            through HAProxy's runtime API (no reload); runs until stopped
  render SERVICE --template FILE --out FILE [--check CMD] [--reload CMD] [--wait MIN[:MAX]] [--once]
                            render a Mustache template from SERVICE's instances whenever they
                            change; write the file only when its text changes, check, reload
  serve [--listen HOST:PORT]
                            the registry as a live web page, a JSON and event API (/v1/...)
                            and Prometheus metrics (/metrics), read-only; runs until stopped

Options:
  --json                    ls: a JSON array; watch: one JSON object a line; each record
                            whole, with "mismatch" naming the fields that disagree with its key
  --haproxy ADDR            sync: HAProxy's stats socket at admin level, a path or host:port
  --backend NAME            sync: the backend (declared in haproxy.cfg, no servers needed)
  --server-options "..."    sync: added to each server (default "${DEFAULT_SERVER_OPTIONS}":
                            HAProxy's own health check, so a dead host leaves rotation in
                            about a second whatever the registry says); "" for none
  --state-file FILE         sync: write the backend's server state there after each change, for
                            HAProxy to load at a reload (the backend's server-state-file-name)
  --template FILE           render: a Mustache template (a regular file, at most 1 MiB); it sees
                            service, instances (sorted by address: key, address, ip, port,
                            nginx_weight, balancer_weight, haproxy_weight, and the record's
                            fields), count, empty; {{x}} inserts only a token (letters, digits,
                            ._:/@+=-), else the instance is left out; {{{x}}} is raw
  --out FILE                render: the file written (atomically, only when its text changes;
                            a link there is kept and the file it points to replaced)
  --check "CMD ARGS..."     render: validates the new text first; a {path} word is the staged
                            file (checked, then moved in place); without one the file is put in
                            place, checked there, and put back if the check fails; instances
                            that make it fail are found and left out
  --reload "CMD ARGS..."    render: runs after the file is replaced; retried until it succeeds
  --wait MIN[:MAX]          render: after a change, wait until quiet for MIN (at most MAX,
                            default 4 x MIN); a removal is rendered at once
  --once                    render: render, check and reload once, then exit (1 if the file on
                            disk is not reloaded)
${SERVE_HELP}

${CONNECTION_HELP}

Exit status: 0 done, 1 not found or etcd failed, 2 bad usage.`;

/** A parsed command line. */
export type Command =
  | { command: "help" }
  | {
    command: "sync";
    service: string;
    haproxy: HAProxyAddress;
    haproxyText: string;
    backend: string;
    serverOptions: string[];
    stateFile?: string;
    prefix: string;
    etcd: EtcdOptions;
  }
  | {
    command: "render";
    service: string;
    templatePath: string;
    template: string;
    out: string;
    check?: string[];
    reload?: string[];
    wait?: Wait;
    once: boolean;
    prefix: string;
    etcd: EtcdOptions;
  }
  | { command: "ls" | "watch"; service?: string; json: boolean; prefix: string; etcd: EtcdOptions }
  | ({ command: "serve"; etcd: EtcdOptions } & ServeConfig)
  | { command: "get"; service: string; ip: string; port: number; json: boolean; prefix: string; etcd: EtcdOptions };

/** Parses the command line; throws UsageError on bad input. */
export function parseCli(args: readonly string[], env: Env): Command {
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    options: {
      ...CONNECTION_OPTIONS,
      json: { type: "boolean", default: false },
      haproxy: { type: "string" },
      backend: { type: "string" },
      "server-options": { type: "string" },
      "state-file": { type: "string" },
      template: { type: "string" },
      out: { type: "string" },
      check: { type: "string" },
      reload: { type: "string" },
      wait: { type: "string" },
      once: { type: "boolean" },
      ...SERVE_OPTIONS,
    },
  });
  if (values.help) return { command: "help" };
  const [command, ...rest] = positionals;
  for (const flag of ["haproxy", "backend", "server-options", "state-file"] as const) {
    if (values[flag] !== undefined && command !== "sync") {
      throw new UsageError(`Cannot use --${flag} with ${quote(command ?? "")}: expected registry sync`);
    }
  }
  for (const flag of ["template", "out", "check", "reload", "wait", "once"] as const) {
    if (values[flag] !== undefined && command !== "render") {
      throw new UsageError(`Cannot use --${flag} with ${quote(command ?? "")}: expected registry render`);
    }
  }
  for (const flag of Object.keys(SERVE_OPTIONS) as (keyof typeof SERVE_OPTIONS)[]) {
    if (values[flag] !== undefined && command !== "serve") {
      throw new UsageError(`Cannot use --${flag} with ${quote(command ?? "")}: expected registry serve`);
    }
  }
  const common = () => ({
    json: values.json,
    prefix: asUsage(() => normalizePrefix(values.prefix ?? DEFAULT_PREFIX)),
    etcd: parseConnection(values, env),
  });
  switch (command) {
    case "ls":
    case "watch": {
      if (rest.length > 1) {
        throw new UsageError(`Cannot use arguments ${quote(rest.join(" "))}: expected at most SERVICE`);
      }
      const service = rest[0] === undefined ? undefined : asUsage(() => validateService(rest[0]));
      return { command, service, ...common() };
    }
    case "get": {
      if (rest.length !== 2) {
        throw new UsageError(`Cannot use arguments ${quote(rest.join(" "))}: expected SERVICE IP:PORT`);
      }
      const service = asUsage(() => validateService(rest[0]));
      const { ip, port } = asUsage(() => parseAddress(rest[1]));
      return { command, service, ip, port, ...common() };
    }
    case "sync": {
      if (rest.length !== 1) throw new UsageError(`Cannot use arguments ${quote(rest.join(" "))}: expected SERVICE`);
      const service = asUsage(() => validateService(rest[0]));
      if (values.haproxy === undefined) {
        throw new UsageError("Missing --haproxy: expected the stats socket, a path or host:port");
      }
      const haproxy = parseHAProxyAddress(values.haproxy);
      if (!haproxy) {
        throw new UsageError(`Cannot use --haproxy ${quote(values.haproxy)}: expected an absolute path or host:port`);
      }
      if (values.backend === undefined) throw new UsageError("Missing --backend: expected the backend's name");
      if (!/^[A-Za-z0-9_.:-]{1,100}$/.test(values.backend)) {
        throw new UsageError(
          `Cannot use --backend ${quote(values.backend)}: expected letters, digits, "_", ".", ":" or "-"`,
        );
      }
      const optionsText = values["server-options"] ?? DEFAULT_SERVER_OPTIONS;
      const serverOptions = optionsText.split(" ").filter((w) => w !== "");
      // one command line each: a ";" or "#" would end the command and start another
      if (serverOptions.some((w) => !/^[A-Za-z0-9_.:/=@+-]+$/.test(w))) {
        throw new UsageError(
          `Cannot use --server-options ${quote(optionsText)}: expected server keywords such as "check inter 1s fall 2"`,
        );
      }
      const stateFile = values["state-file"];
      if (stateFile !== undefined && (!stateFile.startsWith("/") || stateFile.endsWith("/") || hasControl(stateFile))) {
        throw new UsageError(`Cannot use --state-file ${quote(stateFile)}: expected an absolute path to a file`);
      }
      const { prefix, etcd } = common();
      return {
        command,
        service,
        haproxy,
        haproxyText: values.haproxy,
        backend: values.backend,
        serverOptions,
        ...(stateFile === undefined ? {} : { stateFile }),
        prefix,
        etcd,
      };
    }
    case "render": {
      if (rest.length !== 1) throw new UsageError(`Cannot use arguments ${quote(rest.join(" "))}: expected SERVICE`);
      const service = asUsage(() => validateService(rest[0]));
      if (values.template === undefined) throw new UsageError("Missing --template: expected a template file");
      if (values.out === undefined) throw new UsageError("Missing --out: expected the file to write");
      const { prefix, etcd } = common();
      return {
        command,
        service,
        templatePath: values.template,
        template: "", // read by main, which may touch the file system
        out: values.out,
        check: values.check === undefined ? undefined : parseCommand(values.check, "--check"),
        reload: values.reload === undefined ? undefined : parseCommand(values.reload, "--reload"),
        wait: values.wait === undefined ? undefined : parseWait(values.wait),
        once: values.once ?? false,
        prefix,
        etcd,
      };
    }
    case "serve": {
      const { prefix, etcd } = common();
      return { command, ...parseServe(values, rest), prefix, etcd };
    }
    case undefined:
      throw new UsageError("Missing command: expected ls, get, watch, sync, render or serve (see registry --help)");
    default:
      throw new UsageError(`Cannot use command ${quote(command)}: expected ls, get, watch, sync, render or serve`);
  }
}

/** The range of each --wait duration. */
/** Parses a --check or --reload command: split like a shell, run without one. */
function parseCommand(text: string, flag: string): string[] {
  const argv = asUsage(() => splitCommand(text, flag));
  if (argv.length === 0) throw new UsageError(`Cannot use ${flag} ${quote(text)}: expected a command`);
  return argv;
}

// ---------------------------------------------------------------------------
// Commands (effects)

interface Io {
  out(line: string): void;
  err(line: string): void;
}

/**
 * Lists as each page arrives: each value becomes its output (a table's cells,
 * or its JSON text) and its rank, and is dropped; then the output is written
 * in rank order, an entry at a time. So `ls` holds about one copy of what it
 * prints, not the values, their records and the output at once.
 */
async function ls(cmd: Extract<Command, { command: "ls" | "watch" }>, etcd: Etcd, io: Io): Promise<number> {
  const nowMs = Date.now();
  // entries are read relative to the whole prefix, even when listing one service's keys
  const { values } = await etcd.list(servicePrefix(cmd.prefix, cmd.service), (v) => {
    const e = decodeEntry(cmd.prefix, v.key, v.value);
    const rank = entryRank(e);
    return cmd.json ? { rank, json: printableJson(entryJson(e), 2) } : { rank, cells: tableRow(e, nowMs) };
  });
  const items = byRank(values);
  const out = batched(io);
  if (!cmd.json) {
    for (const line of formatRows(items.map((item) => item.cells!))) out.line(line);
  } else if (items.length === 0) {
    out.line("[]");
  } else {
    // as printableJson(array, 2) writes it: each element indented by two more spaces
    out.line("[");
    items.forEach((item, i) => out.line(`  ${item.json!.replaceAll("\n", "\n  ")}${i < items.length - 1 ? "," : ""}`));
    out.line("]");
  }
  out.flush();
  return 0;
}

/** Lines written to `io` about 64 KiB at a time: a write a line made a listing's 10,000 lines 10,000 system calls. */
function batched(io: Io): { line(text: string): void; flush(): void } {
  let lines: string[] = [];
  let size = 0;
  const flush = () => {
    if (lines.length > 0) io.out(lines.join("\n"));
    lines = [];
    size = 0;
  };
  return {
    line(text) {
      lines.push(text);
      size += text.length + 1;
      if (size >= 64 * 1024) flush();
    },
    flush,
  };
}

async function get(cmd: Extract<Command, { command: "get" }>, etcd: Etcd, io: Io): Promise<number> {
  const key = instanceKey(cmd.prefix, cmd.service, cmd.ip, cmd.port);
  const stored = await etcd.get(key);
  if (!stored) {
    io.err(`registry: Key not found (${key})`);
    return 1;
  }
  // the value as stored, unless it holds a character a terminal would act on
  io.out(hasControl(stored.value) ? printableValue(stored.value) : stored.value);
  return 0;
}

/** Lists, then watches from the next revision; on any break, lists again and prints the difference. */
async function watch(
  cmd: Extract<Command, { command: "ls" | "watch" }>,
  etcd: Etcd,
  io: Io,
  signal: AbortSignal,
): Promise<number> {
  const known = new Listing();
  const print = (changes: ListingChange[]) => {
    for (const change of watchChanges(cmd.prefix, changes)) io.out(formatChange(change, cmd.json));
  };
  await follow(etcd, servicePrefix(cmd.prefix, cmd.service), {
    listed: (values) => print(known.replace(values)),
    changed(event) {
      const change = known.apply(event);
      if (change) print([change]);
    },
    waiting(reason) {
      io.err(`registry: waiting for etcd at ${cmd.etcd.endpoints.join(",")}: ${describeError(reason)}`);
    },
    answered() {
      io.err(`registry: etcd answered again at ${etcd.endpoint}; watching`);
    },
  }, signal);
  etcd.close();
  return 0;
}

/** Keeps the backend equal to the service's instances until SIGTERM or SIGINT. */
async function sync(cmd: Extract<Command, { command: "sync" }>, io: Io): Promise<number> {
  const haproxy = new HAProxy(cmd.haproxy);
  const refusal = await checkHAProxy(haproxy, cmd.backend, cmd.haproxyText) ?? checkStateFile(cmd.stateFile);
  if (refusal) {
    io.err(`registry: ${refusal}`);
    return 2;
  }
  const stop = stopSignals().first;
  const log = createLog(process.env as Env);
  log("info", "started", {
    service: cmd.service,
    backend: cmd.backend,
    haproxy: cmd.haproxyText,
    endpoints: cmd.etcd.endpoints.join(","),
    server_options: cmd.serverOptions.join(" "),
    state_file: cmd.stateFile,
  });
  const etcd = new Etcd(cmd.etcd);
  const { prefix, service, backend, serverOptions, stateFile } = cmd;
  await runSync({ prefix, service, backend, serverOptions, stateFile }, { haproxy, etcd, log, sleep }, stop);
  etcd.close();
  log("notice", "stopped", { signal: stop.reason });
  return 0;
}

/** Renders until SIGTERM or SIGINT, or once with --once. */
async function render(cmd: Extract<Command, { command: "render" }>, io: Io): Promise<number> {
  const path = readPathVariable();
  const start = checkRender({
    templatePath: cmd.templatePath,
    out: cmd.out,
    check: cmd.check,
    reload: cmd.reload,
    path,
  });
  if ("refusal" in start) {
    io.err(`registry: ${start.refusal}`);
    return 2;
  }
  cmd.template = start.template;
  const log = createLog(process.env as Env);
  const options = { out: resolve(cmd.out), check: cmd.check, reload: cmd.reload, env: { PATH: path } };
  const etcd = new Etcd(cmd.etcd);
  const stop = stopSignals().first;
  stop.addEventListener("abort", killRunningCommands);
  try {
    if (cmd.once) {
      let values;
      try {
        values = (await etcd.list(servicePrefix(cmd.prefix, cmd.service))).values;
      } catch (err) {
        io.err(`registry: cannot read from etcd at ${cmd.etcd.endpoints.join(",")}: ${describeError(err)}`);
        return 1;
      }
      // 1 also when the file on disk was never reloaded (here or by an earlier run) and the reload fails now
      const renderer = new Renderer(cmd.prefix, cmd.service, cmd.template, options, { log, random: Math.random });
      return (await renderer.render(new Map(values.map((v) => [v.key, v.value])), Date.now())) ? 0 : 1;
    }
    log("info", "started", {
      service: cmd.service,
      template: cmd.templatePath,
      out: options.out,
      wait: cmd.wait ? `${cmd.wait.minMs}ms:${cmd.wait.maxMs}ms` : undefined,
      endpoints: cmd.etcd.endpoints.join(","),
    });
    const { prefix, service, template, wait } = cmd;
    const deps = { etcd, log, now: Date.now, sleep, random: Math.random };
    await runRender({ prefix, service, template, wait, options }, deps, stop);
    log("notice", "stopped", { signal: stop.reason });
    return 0;
  } finally {
    etcd.close();
  }
}

/** Serves the page, the API and the metrics until SIGTERM or SIGINT (lib/serve.ts). */
async function serve(cmd: Extract<Command, { command: "serve" }>, io: Io): Promise<number> {
  const stop = stopSignals().first;
  const log = createLog(process.env as Env);
  const etcd = new Etcd(cmd.etcd);
  try {
    await runServe(cmd, { etcd, log, entryJson }, stop);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    io.err(`registry: ${err.message}`);
    return 2;
  } finally {
    etcd.close();
  }
  log("notice", "stopped", { signal: stop.reason });
  return 0;
}

/** PATH for the commands, or the usual one (deno without --allow-env=PATH). */
function readPathVariable(): string {
  try {
    return process.env.PATH || DEFAULT_PATH;
  } catch {
    return DEFAULT_PATH;
  }
}

async function main(args: string[]): Promise<number> {
  const io: Io = { out: (l) => process.stdout.write(`${l}\n`), err: (l) => process.stderr.write(`${l}\n`) };
  let cmd: Command;
  try {
    cmd = parseCli(args, process.env as Env);
  } catch (err) {
    const usage = usageFrom(err, "registry");
    if (usage instanceof UsageError) {
      io.err(`registry: ${usage.message}`);
      return 2;
    }
    throw err;
  }
  if (cmd.command === "help") {
    io.out(HELP);
    return 0;
  }
  if (cmd.command === "sync") return await sync(cmd, io);
  if (cmd.command === "render") return await render(cmd, io);
  if (cmd.command === "serve") return await serve(cmd, io);
  const options = cmd.etcd;
  if (cmd.command === "watch") {
    return await watch(cmd, new Etcd(options), io, stopSignals().first);
  }
  const etcd = new Etcd(options);
  try {
    return cmd.command === "get" ? await get(cmd, etcd, io) : await ls(cmd, etcd, io);
  } catch (err) {
    io.err(`registry: cannot read from etcd at ${options.endpoints.join(",")}: ${describeError(err)}`);
    return 1;
  } finally {
    etcd.close();
  }
}

if (import.meta.main) {
  main(process.argv.slice(2)).then(
    exitWhenFlushed,
    (err) => {
      process.stderr.write(`registry: ${err instanceof Error ? err.message : String(err)}\n`);
      exitWhenFlushed(1);
    },
  );
}
