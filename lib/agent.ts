/**
 * The agent: one process per host that keeps the records of every instance
 * attached to it, under one lease for the host.
 *
 * Each instance is attached by its own oneshot unit (`secretary attach`) and
 * detached by the same unit's stop (`secretary detach`), over a Unix socket:
 * one JSON request a connection, one JSON reply. Each instance runs the
 * sidekick's own check loop (lib/instance.ts) and registrar
 * (lib/registrar.ts), its record under the host's lease, which one more
 * registrar, without an instance, grants and keeps alive.
 *
 * The attached set and the lease live in `agent.json` beside the socket (a
 * runtime folder: kept across restarts of the agent, gone at reboot). SIGTERM
 * is a restart, not a goodbye: the agent saves them and exits without
 * revoking; the next agent adopts the lease and every instance as it was (a
 * healthy one stays registered, nothing is written). A SIGKILLed agent is a
 * host death: its records expire with the lease, and the next agent attaches
 * the instances afresh (they register again after `--rise` checks).
 *
 * @module
 */
import net from "node:net";
import { chmodSync, mkdirSync, readFileSync, unlinkSync } from "node:fs";
import { dirname, join } from "node:path";
import { writeAtomically } from "./atomic.ts";
import { runCheck } from "./checks.ts";
import { killRunningCommands } from "./command.ts";
import type { Etcd } from "./etcd.ts";
import { type InstanceConfig, preflight, runInstance, targetOf } from "./instance.ts";
import type { Log } from "./log.ts";
import { instanceKey } from "./record.ts";
import { type Effects, EtcdRegistrar } from "./registrar.ts";
import { oneLine, quote } from "./text.ts";

/** Where the agent listens unless told otherwise: a runtime folder of its own (the unit's RuntimeDirectory). */
export const DEFAULT_SOCKET = "/run/secretary/agent.sock";
/** The agent's state, in the socket's folder. */
export const STATE_FILE = "agent.json";
/** The longest request line: an instance's flags, its 64 KiB of meta included, fit many times over. */
export const MAX_REQUEST_BYTES = 256 * 1024;
/** How long a client may take to send its request before the agent hangs up on it. */
export const REQUEST_TIMEOUT_MS = 5000;
/** How long detach waits for etcd to delete the record before answering anyway (the agent keeps trying). */
export const DETACH_DELETE_MS = 5000;

/** A request to the agent: one JSON object on one line. */
export type Request =
  | { op: "attach"; args: string[] }
  | { op: "detach"; port: number; service?: string; ip?: string }
  | { op: "list" };

/** An attached instance as `list` reports it. */
export interface AttachedInfo {
  key: string;
  /** The checks want the record (healthy, not in maintenance). */
  healthy: boolean;
  registered: boolean;
  /** Detached, its record's delete not yet answered by etcd. */
  leaving: boolean;
}

/** The agent's answer: one JSON object on one line. */
export interface Reply {
  ok: boolean;
  /** One line, for the client's stderr. */
  error?: string;
  /** The error is bad input (the client exits 2), not a failure (exit 1). */
  usage?: boolean;
  key?: string;
  /** Something the client says on stderr though it succeeded. */
  note?: string;
  instances?: AttachedInfo[];
}

/** Reads one request line (pure); throws an Error saying what is wrong with it. */
export function parseRequest(line: string): Request {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw new Error(`Cannot read request ${quote(line, 60)}: expected one JSON object`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Error(`Cannot read request ${quote(line, 60)}: expected one JSON object`);
  }
  const request = value as Record<string, unknown>;
  const text = (name: string) => {
    const v = request[name];
    if (v !== undefined && typeof v !== "string") {
      throw new Error(`Cannot use ${name} ${quote(String(v), 60)}: expected a string`);
    }
    return v;
  };
  switch (request.op) {
    case "attach": {
      const args = request.args;
      if (!Array.isArray(args) || args.length > 1000 || !args.every((a) => typeof a === "string")) {
        throw new Error("Cannot use args: expected an array of strings, as on attach's command line");
      }
      return { op: "attach", args };
    }
    case "detach": {
      const port = request.port;
      if (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65535) {
        throw new Error(`Cannot use port ${quote(String(port), 60)}: expected a port, 1 to 65535`);
      }
      const service = text("service");
      const ip = text("ip");
      return { op: "detach", port, ...(service === undefined ? {} : { service }), ...(ip === undefined ? {} : { ip }) };
    }
    case "list":
      return { op: "list" };
    default:
      throw new Error(`Cannot use op ${quote(String(request.op), 60)}: expected attach, detach or list`);
  }
}

/** An attached instance as agent.json keeps it. */
export interface SavedInstance {
  /** attach's arguments, the address and hostname made explicit. */
  args: string[];
  /** The checks wanted the record, and it was held under the lease. */
  desired: boolean;
  registered: boolean;
  /** Detached, its record's delete not yet answered. */
  leaving: boolean;
}

/** What agent.json holds: the host lease, whether the agent that wrote it stopped cleanly, the attached set. */
export interface AgentState {
  lease?: string;
  /** Written by an agent stopped by SIGTERM: its lease and its instances' verdicts may be adopted. */
  clean: boolean;
  instances: SavedInstance[];
}

/** Reads agent.json's text (pure): anything unexpected in an instance drops that instance, not the rest. */
export function decodeState(text: string): AgentState {
  const value = JSON.parse(text) as Record<string, unknown>;
  if (typeof value !== "object" || value === null) throw new Error("expected a JSON object");
  const lease = typeof value.lease === "string" && /^[1-9][0-9]{0,18}$/.test(value.lease) ? value.lease : undefined;
  const instances: SavedInstance[] = [];
  for (const item of Array.isArray(value.instances) ? value.instances : []) {
    const i = item as Record<string, unknown>;
    if (!Array.isArray(i?.args) || !i.args.every((a) => typeof a === "string")) continue;
    instances.push({
      args: i.args,
      desired: i.desired === true,
      registered: i.registered === true,
      leaving: i.leaving === true,
    });
  }
  return { ...(lease ? { lease } : {}), clean: value.clean === true, instances };
}

/** The agent's runtime: etcd, the effects, where records go and under what TTL, and the sidekick's parser. */
export interface AgentOptions {
  etcd: Etcd;
  effects: Effects;
  prefix: string;
  ttlSeconds: number;
  /** agent.json's path. */
  stateFile: string;
  /** Parses attach's arguments with the sidekick's parser; throws UsageError on bad input. */
  parse(args: string[]): InstanceConfig;
}

interface Attached {
  args: string[];
  cfg: InstanceConfig;
  registrar: EtcdRegistrar;
  /** Ends the checks. */
  checks: AbortController;
  /** Ends the registrar's loop. */
  records: AbortController;
  leaving: boolean;
}

/** A log whose every event names the instance's key, first. */
function keyed(log: Log, key: string): Log {
  return (level, event, fields) => log(level, event, { key, ...fields });
}

/**
 * The attached instances and the host lease. `start()` adopts what agent.json
 * says; `handle()` answers one request; `stop()` saves and stops without
 * revoking anything.
 */
export class Agent {
  readonly #instances = new Map<string, Attached>();
  /** Keys being attached: a second attach of one waits for nothing and is refused. */
  readonly #attaching = new Set<string>();
  readonly #host: EtcdRegistrar;
  readonly #stop = new AbortController();
  #saving = Promise.resolve();

  constructor(readonly options: AgentOptions, readonly saved: AgentState) {
    const { prefix, ttlSeconds, etcd, effects } = options;
    this.#host = new EtcdRegistrar(
      {
        prefix,
        ttlSeconds,
        intervalMs: 1000,
        // a clean stop's lease is adopted; an unclean one's records are taken over (or expire with it)
        lease: saved.clean ? saved.lease : undefined,
        staleLeases: !saved.clean && saved.lease ? [saved.lease] : [],
        onLease: () => {
          for (const a of this.#instances.values()) a.registrar.nudge();
          this.save();
        },
      },
      etcd,
      effects,
    );
  }

  /** The lease a clean stop left, which this agent adopts if it still lives; else undefined. */
  get adopting(): string | undefined {
    return this.saved.clean ? this.saved.lease : undefined;
  }

  /** The host lease, once granted or adopted. */
  get lease(): string | undefined {
    return this.#host.lease;
  }

  /** Starts keeping the host lease and every instance agent.json lists; returns how many it runs. */
  start(): number {
    this.#host.run(this.#stop.signal).catch((err) => {
      this.options.effects.log("err", "lease loop failed", { reason: oneLine(String(err)) });
    });
    let adopted = 0;
    for (const saved of this.saved.instances) {
      let cfg: InstanceConfig;
      try {
        cfg = this.options.parse(saved.args);
      } catch (err) {
        this.options.effects.log("warning", "instance not adopted", {
          args: saved.args.join(" "),
          reason: oneLine((err as Error).message),
        });
        continue;
      }
      const adopt = this.saved.clean
        ? { registered: saved.registered, desired: saved.desired && !saved.leaving }
        : undefined;
      if (saved.leaving) {
        if (adopt?.registered) this.#leave(this.#run(saved.args, cfg, adopt, { checks: false }), "detached");
        continue;
      }
      this.#run(saved.args, cfg, adopt);
      adopted++;
    }
    this.save();
    return adopted;
  }

  /** Answers one request. */
  async handle(request: Request): Promise<Reply> {
    switch (request.op) {
      case "attach":
        return await this.#attach(request.args);
      case "detach":
        return await this.#detach(request);
      case "list":
        return { ok: true, instances: this.list() };
    }
  }

  list(): AttachedInfo[] {
    return [...this.#instances.entries()].map(([key, a]) => ({
      key,
      healthy: a.registrar.desired,
      registered: a.registrar.registered,
      leaving: a.leaving,
    }));
  }

  /** Stops every loop and saves agent.json as a clean stop: the lease is neither revoked nor kept alive. */
  async stop(): Promise<void> {
    this.#stop.abort();
    killRunningCommands();
    for (const a of this.#instances.values()) {
      a.checks.abort();
      a.records.abort();
      await a.registrar.stop();
    }
    // a call to etcd in flight is not waited for: a grant answered after this is a lease nobody keeps, gone in a TTL
    await this.save(true);
  }

  /** Saves agent.json (one write at a time, each the state as it is then). */
  save(clean = false): Promise<void> {
    const write = async () => {
      const state: AgentState = {
        ...(this.#host.lease ? { lease: this.#host.lease } : {}),
        clean,
        instances: [...this.#instances.values()].map((a) => ({
          args: a.args,
          desired: a.registrar.desired,
          registered: a.registrar.registered,
          leaving: a.leaving,
        })),
      };
      try {
        await writeAtomically(this.options.stateFile, `${JSON.stringify(state)}\n`);
      } catch (err) {
        this.options.effects.log("err", "state not saved", {
          file: this.options.stateFile,
          reason: oneLine((err as Error).message),
        });
      }
    };
    this.#saving = this.#saving.then(write);
    return this.#saving;
  }

  async #attach(args: string[]): Promise<Reply> {
    let cfg: InstanceConfig;
    try {
      cfg = this.options.parse(args);
    } catch (err) {
      return { ok: false, usage: true, error: oneLine((err as Error).message, 300) };
    }
    const key = instanceKey(this.options.prefix, cfg.service, cfg.ip, cfg.port);
    const attached = this.#instances.get(key);
    if (attached || this.#attaching.has(key)) {
      if (attached && !attached.leaving && JSON.stringify(attached.args) === JSON.stringify(args)) {
        return { ok: true, key, note: `${key} is already attached` };
      }
      return {
        ok: false,
        error: `Cannot attach ${key}: it is ${
          attached?.leaving ? "being detached" : "attached with other flags"
        }; expected secretary detach first`,
      };
    }
    const refusal = preflight(cfg);
    if (refusal) return { ok: false, usage: true, error: refusal };
    this.#attaching.add(key);
    try {
      // an exec check's command must be able to start at all: its first check says so before anything is sent to etcd
      const first = cfg.check.kind === "exec" ? await runCheck(cfg.check, targetOf(cfg)) : undefined;
      if (first?.fatal && cfg.check.kind === "exec") {
        return {
          ok: false,
          usage: true,
          error: `Cannot use --command ${quote(cfg.check.argv.join(" "))}: ${first.reason}`,
        };
      }
      if (this.#stop.signal.aborted) return { ok: false, error: "Cannot attach: the agent is stopping" };
      this.#run(args, cfg, undefined, { first });
    } finally {
      this.#attaching.delete(key);
    }
    await this.save();
    return { ok: true, key };
  }

  async #detach(request: Extract<Request, { op: "detach" }>): Promise<Reply> {
    const matches = [...this.#instances.entries()].filter(([, a]) =>
      a.cfg.port === request.port && (request.service === undefined || a.cfg.service === request.service) &&
      (request.ip === undefined || a.cfg.ip === request.ip)
    );
    const what = `port ${request.port}${request.service ? ` of ${request.service}` : ""}${
      request.ip ? ` at ${request.ip}` : ""
    }`;
    if (matches.length === 0) return { ok: true, note: `nothing attached on ${what}` };
    if (matches.length > 1) {
      return {
        ok: false,
        usage: true,
        error: `Cannot detach ${what}: ${matches.map(([k]) => k).join(", ")} are attached; expected --service or --ip`,
      };
    }
    const [[key, attached]] = matches;
    if (attached.leaving) return { ok: true, key, note: `${key} is being detached` };
    const maybeListed = attached.registrar.mayBeListed;
    const gone = await this.#leave(attached, "detached");
    if (maybeListed && attached.cfg.drainMs > 0) {
      await this.options.effects.sleep(attached.cfg.drainMs, this.#stop.signal);
    }
    return {
      ok: true,
      key,
      ...(gone ? {} : { note: `etcd did not answer within ${DETACH_DELETE_MS}ms: ${key} goes when it does` }),
    };
  }

  /**
   * Detaches: the checks stop, the record goes (deleted while under the host's
   * lease); resolves whether it went within DETACH_DELETE_MS. Past that the
   * instance stays, leaving, until etcd answers.
   */
  async #leave(attached: Attached, reason: string): Promise<boolean> {
    attached.leaving = true;
    attached.checks.abort();
    const key = instanceKey(this.options.prefix, attached.cfg.service, attached.cfg.ip, attached.cfg.port);
    const released = attached.registrar.release(reason).then(() => {
      attached.records.abort();
      if (this.#instances.get(key) === attached) this.#instances.delete(key);
      this.options.effects.log("notice", "detached", {
        key,
        drain: attached.cfg.drainMs ? `${attached.cfg.drainMs}ms` : undefined,
      });
      this.save();
      return true;
    });
    this.save();
    const late = new Promise<false>((resolve) => setTimeout(resolve, DETACH_DELETE_MS, false));
    return await Promise.race([released, late]);
  }

  /** Starts one instance's checks and registrar; a loop that throws ends that instance alone. */
  #run(
    args: string[],
    cfg: InstanceConfig,
    adopt: { registered: boolean; desired: boolean } | undefined,
    options: { checks?: boolean; first?: Awaited<ReturnType<typeof runCheck>> } = {},
  ): Attached {
    const key = instanceKey(this.options.prefix, cfg.service, cfg.ip, cfg.port);
    const log = keyed(this.options.effects.log, key);
    const effects = { ...this.options.effects, log };
    const instance = { host: cfg.hostname, ipv4_addr: cfg.ip, port: cfg.port, service: cfg.service, meta: cfg.meta };
    const registrar = new EtcdRegistrar(
      {
        prefix: this.options.prefix,
        instance,
        ttlSeconds: this.options.ttlSeconds,
        intervalMs: cfg.intervalMs,
        hostLease: this.#host,
        adopt,
      },
      this.options.etcd,
      effects,
    );
    const attached: Attached = {
      args,
      cfg,
      registrar,
      checks: new AbortController(),
      records: new AbortController(),
      leaving: false,
    };
    this.#instances.set(key, attached);
    log("info", adopt ? "adopted" : "attached", {
      check: cfg.check.kind,
      interval: `${cfg.intervalMs}ms`,
      healthy: adopt ? adopt.desired : undefined,
      registered: adopt ? adopt.registered : undefined,
    });
    const initial = adopt?.desired ? { healthy: true, streak: 0 } : undefined;
    const loops = [registrar.run(attached.records.signal)];
    if (options.checks !== false) {
      loops.push(runInstance(cfg, registrar, effects, attached.checks.signal, options.first, initial));
    }
    // a loop that throws (say, the maintenance file's folder losing its permissions) detaches that instance: one line
    for (const loop of loops) {
      loop.catch((err) => {
        if (attached.leaving) return;
        log("err", "failed", { reason: oneLine(err instanceof Error ? err.message : String(err)) });
        this.#leave(attached, "failed");
      });
    }
    return attached;
  }
}

/**
 * Listens on the Unix socket `path` (mode 0600) and answers each connection's
 * one request with `handle`. A line past MAX_REQUEST_BYTES, a malformed one
 * or none within REQUEST_TIMEOUT_MS gets an error and the connection closed;
 * nothing a client does holds up another. A socket file left by an agent that
 * died is replaced; one a live agent answers on is refused.
 */
export async function listen(path: string, handle: (request: Request) => Promise<Reply>): Promise<net.Server> {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  if (await answers(path)) throw new Error(`Cannot listen on ${quote(path)}: an agent is already listening there`);
  try {
    unlinkSync(path);
  } catch {
    // none there
  }
  const server = net.createServer((socket) => serveOne(socket, handle));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => resolve());
  });
  chmodSync(path, 0o600);
  return server;
}

function serveOne(socket: net.Socket, handle: (request: Request) => Promise<Reply>): void {
  let buffered = "";
  let done = false;
  const answer = (reply: Reply) => {
    done = true;
    clearTimeout(timer);
    socket.end(`${JSON.stringify(reply)}\n`);
  };
  const timer = setTimeout(() => {
    if (!done) answer({ ok: false, error: `Cannot read a request: none within ${REQUEST_TIMEOUT_MS}ms` });
  }, REQUEST_TIMEOUT_MS);
  socket.setEncoding("utf8");
  socket.on("error", () => clearTimeout(timer));
  socket.on("data", (chunk: string) => {
    if (done) return;
    buffered += chunk;
    const end = buffered.indexOf("\n");
    if (end < 0) {
      if (buffered.length > MAX_REQUEST_BYTES) {
        answer({ ok: false, error: `Cannot read a request over ${MAX_REQUEST_BYTES} bytes` });
      }
      return;
    }
    let request: Request;
    try {
      request = parseRequest(buffered.slice(0, end));
    } catch (err) {
      answer({ ok: false, usage: true, error: (err as Error).message });
      return;
    }
    done = true;
    clearTimeout(timer); // the request is in: answering may take a check or a drain
    handle(request).then(answer, (err) => answer({ ok: false, error: oneLine(String(err)) }));
  });
}

/** Whether something answers on the socket at `path`. */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(path);
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

/** The agent could not be asked: not listening, or no answer. */
export class UnreachableError extends Error {
  override name = "UnreachableError";
}

/** How long a client keeps trying to connect while the agent is not listening (starting, or restarting). */
export const CONNECT_WAIT_MS = 5000;

/**
 * Sends one request to the agent at `path` and reads its reply; throws
 * UnreachableError. While nothing listens there (the agent starting or
 * restarting) it tries again every 100 ms, for up to CONNECT_WAIT_MS.
 */
export async function ask(path: string, request: Request, timeoutMs: number): Promise<Reply> {
  const deadline = Date.now() + CONNECT_WAIT_MS;
  for (;;) {
    try {
      return await askOnce(path, request, timeoutMs);
    } catch (err) {
      const code = (err as { code?: string }).code;
      if ((code !== "ENOENT" && code !== "ECONNREFUSED") || Date.now() >= deadline) {
        const reason = code === "ENOENT"
          ? "no socket there (is secretary-agent running?)"
          : code === "ECONNREFUSED"
          ? "nothing listens there (is secretary-agent running?)"
          : oneLine((err as Error).message);
        throw new UnreachableError(`Cannot reach the agent at ${path}: ${reason}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

function askOnce(path: string, request: Request, timeoutMs: number): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(path);
    const fail = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    const timer = setTimeout(() => fail(new Error(`no answer within ${timeoutMs}ms`)), timeoutMs);
    let text = "";
    socket.setEncoding("utf8");
    socket.on("connect", () => socket.write(`${JSON.stringify(request)}\n`));
    socket.on("data", (chunk: string) => (text += chunk));
    socket.on("error", fail);
    socket.on("end", () => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(text) as Reply);
      } catch {
        reject(new Error(`an answer that is not JSON: ${quote(text, 60)}`));
      }
    });
  });
}

/** agent.json's path for the socket at `socket`: beside it. */
export function stateFileFor(socket: string): string {
  return join(dirname(socket), STATE_FILE);
}

/** Reads agent.json; a missing one is an empty state, an unreadable one too (logged). */
export function readState(path: string, log: Log): AgentState {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    if ((err as { code?: string }).code !== "ENOENT") {
      log("warning", "state not read", { file: path, reason: oneLine((err as Error).message) });
    }
    return { clean: false, instances: [] };
  }
  try {
    return decodeState(text);
  } catch (err) {
    log("warning", "state not read", { file: path, reason: oneLine((err as Error).message) });
    return { clean: false, instances: [] };
  }
}
