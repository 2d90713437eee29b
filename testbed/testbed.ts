/**
 * Real processes for the tests, the demo and the benchmarks: etcd members on
 * free loopback ports with their own data directories, HTTP targets that can
 * be made to fail or hang, and the scripts run as child processes. Everything
 * started here is stopped by PID, never by name. Deno only (never bundled).
 *
 * @module
 */
import { type AddressInfo, createServer, type Server, type Socket } from "node:net";
import { request } from "node:http";
import { Etcd, type EtcdOptions } from "../lib/etcd.ts";
import { DEFAULT_PREFIX, instanceKey } from "../lib/record.ts";
import { splitCommand } from "../lib/checks.ts";

/** The repository root, where the scripts live. */
export const ROOT = new URL("../", import.meta.url).pathname;

/**
 * The least permissions for running a script from source. From source, etcd3
 * reads its `.proto` files from node_modules at start; the bundles carry them.
 */
export const SOURCE_FLAGS = ["--allow-net", "--allow-env", "--allow-read=/etc/environment,node_modules"];

// ---------------------------------------------------------------------------
// Addresses: a loopback block of its own for every test file

/**
 * Which test file owns which loopback addresses. A test file that listens,
 * starts etcd or points a client anywhere takes its addresses from its own
 * block, 127.<block>.0.0/16, through `loopback(import.meta.url)`; a file
 * missing from this table cannot get one, and two files given one block make
 * every test fail at import. tests/addresses_test.ts checks that no test file
 * listens or starts etcd outside its block.
 *
 * | block        | owner                                                                  |
 * | ------------ | ---------------------------------------------------------------------- |
 * | 127.0.0.1    | the defaults (freePort, EtcdCluster.create, Relay.start): demo, bench   |
 * | 127.0.0.2    | demo.ts (its service on :8080)                                         |
 * | 127.0.1–9.x  | bench/ (a third octet per benchmark: removal, killed, cost, memory, checks) |
 * | 127.0.10–16.x | bench/traffic.ts (etcd on 127.0.10.1; lane N, 1 to 6, on 127.0.1N.x)   |
 * | 127.1–5.x    | bench/ (scale 127.1, soak 127.2, reads' keys 127.3, leases 127.4, fanout 127.5) |
 * | 127.20.x.x … | tests/, as LOOPBACK_BLOCKS says                                        |
 *
 * Why: a port the kernel picks on a shared address may be one another test's
 * etcd has just given up while its clients still dial it (a listener that
 * must see no stray traffic then sees some), and a member restarted on its
 * own port seconds later may find it taken. With a block each, nothing but
 * the file's own processes ever reaches its addresses; tests within a file
 * run one at a time.
 *
 * Within a block: 127.B.0.k is the k-th etcd cluster the file makes (its
 * members on ports of their own), 127.B.1.n are the file's targets and other
 * listeners, n chosen by its tests.
 */
export const LOOPBACK_BLOCKS: Readonly<Record<string, number>> = {
  "addresses_test.ts": 20,
  "apache_test.ts": 21,
  "bundle_test.ts": 22,
  "checks_test.ts": 23,
  "cli_process_test.ts": 24,
  "cluster_test.ts": 25,
  "listing_test.ts": 26,
  "network_test.ts": 27,
  "proposals_test.ts": 28,
  "registry_test.ts": 29,
  "secretary_test.ts": 30,
  "tls_test.ts": 31,
  "watch_test.ts": 32,
  "registrar_test.ts": 33,
  "secretary_unit_test.ts": 34,
  "secretary_failure_test.ts": 35,
  "resolver_test.ts": 36,
  "sync_test.ts": 37,
  "render_test.ts": 38,
  "grpcproxy_test.ts": 39,
  "render_trust_test.ts": 40,
  "sync_trust_test.ts": 41,
  "sync_reload_test.ts": 42,
  "readers_test.ts": 43,
  "consumer_units_test.ts": 45,
  "keepalive_test.ts": 46,
  "serve_test.ts": 47,
  "killed_test.ts": 48,
};

/** The first block tests may take: those below are the demo's and the benchmarks'. */
const FIRST_TEST_BLOCK = 20;

{
  const owners = new Map<number, string>();
  for (const [file, block] of Object.entries(LOOPBACK_BLOCKS)) {
    if (!Number.isInteger(block) || block < FIRST_TEST_BLOCK || block > 255) {
      throw new RangeError(`LOOPBACK_BLOCKS: ${file} has block ${block}: expected ${FIRST_TEST_BLOCK} to 255`);
    }
    const other = owners.get(block);
    if (other) throw new Error(`LOOPBACK_BLOCKS: ${file} and ${other} both have block 127.${block}: give each its own`);
    owners.set(block, file);
  }
}

/** One test file's loopback addresses (see LOOPBACK_BLOCKS). */
export class Loopback {
  #clusters = 0;

  constructor(readonly file: string, readonly block: number) {}

  /** 127.B.1.n: one of the file's own addresses for targets, relays and other listeners (n from 1 to 254). */
  ip(n: number): string {
    if (!Number.isInteger(n) || n < 1 || n > 254) throw new RangeError(`Loopback.ip(${n}): expected 1 to 254`);
    return `127.${this.block}.1.${n}`;
  }

  /** 127.B.0.k: an address no earlier etcd cluster of this file used. */
  etcdHost(): string {
    if (this.#clusters >= 254) throw new RangeError(`${this.file} made 254 etcd clusters: its block has no more`);
    return `127.${this.block}.0.${++this.#clusters}`;
  }

  /** Plans an etcd cluster on an address of its own in the block (see EtcdCluster.create). */
  etcd(size = 1, options: Omit<EtcdCreateOptions, "host"> = {}): Promise<EtcdCluster> {
    return EtcdCluster.create(size, { ...options, host: this.etcdHost() });
  }
}

/** The calling test file's addresses: `loopback(import.meta.url)`; throws for a file not in LOOPBACK_BLOCKS. */
export function loopback(moduleUrl: string): Loopback {
  const file = moduleUrl.slice(moduleUrl.lastIndexOf("/") + 1);
  const block = LOOPBACK_BLOCKS[file];
  if (block === undefined) {
    throw new Error(`${file} has no loopback block: give it one in LOOPBACK_BLOCKS (testbed/testbed.ts)`);
  }
  return new Loopback(file, block);
}

/**
 * A port that was free on `host` a moment ago. Another process may take it
 * before it is used: only on an address of the test's own is that nobody.
 */
export async function freePort(host = "127.0.0.1"): Promise<number> {
  return (await freePorts(host, 1))[0];
}

/** `count` distinct ports that were free on `host` a moment ago (held together while chosen, so never one twice). */
export async function freePorts(host: string, count: number): Promise<number[]> {
  const listeners = Array.from({ length: count }, () => Deno.listen({ hostname: host, port: 0 }));
  const ports = listeners.map((l) => (l.addr as Deno.NetAddr).port);
  for (const l of listeners) l.close();
  await Promise.resolve();
  return ports;
}

/** The deadline of a test's own etcd calls (see EtcdCluster.client). */
export const TEST_CALL_TIMEOUT_MS = 5000;

/** How long a wait may take that includes starting deno from source and a first check: generous for a loaded machine. */
export const READY_MS = 30_000;

/** How long a wait may take for what the product does within a few checks or a TTL: generous for a loaded machine. */
export const EVENT_MS = 15_000;

/**
 * Polls `fn` until it returns a value other than undefined/false, or throws
 * after `timeoutMs`. `what` names what was awaited; a function is called at
 * the timeout, so the message can show the state then (a process's stderr).
 */
export async function waitFor<T>(
  fn: () => T | undefined | false | Promise<T | undefined | false>,
  what: string | (() => string),
  timeoutMs = 10_000,
  pollMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    const value = await fn();
    if (value !== undefined && value !== false) return value as T;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === "string" ? what : what()}`);
    }
    await delay(pollMs);
  }
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** One etcd member, started on its own ports and data directory. */
export class EtcdMember {
  #child?: Deno.ChildProcess;
  #log = "";

  constructor(
    readonly name: string,
    readonly clientUrl: string,
    readonly peerUrl: string,
    readonly dataDir: string,
    readonly cluster: string,
    readonly extraArgs: string[] = [],
  ) {}

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  get running(): boolean {
    return this.#child !== undefined;
  }

  /** What etcd printed (its log), for failure messages. */
  get log(): string {
    return this.#log;
  }

  /** Starts the process (not waiting for it to answer). */
  start(clusterState = "new"): void {
    if (this.#child) return;
    const cmd = new Deno.Command("etcd", {
      args: [
        "--name",
        this.name,
        "--data-dir",
        this.dataDir,
        "--listen-client-urls",
        this.clientUrl,
        "--advertise-client-urls",
        this.clientUrl,
        "--listen-peer-urls",
        this.peerUrl,
        "--initial-advertise-peer-urls",
        this.peerUrl,
        "--initial-cluster",
        this.cluster,
        "--initial-cluster-state",
        clusterState,
        "--initial-cluster-token",
        `secretary-test-${this.dataDir.slice(0, this.dataDir.lastIndexOf("/"))}`, // one token for the whole cluster
        ...this.extraArgs,
      ],
      stdout: "null",
      stderr: "piped",
      stdin: "null",
    });
    const child = cmd.spawn();
    this.#child = child;
    void (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of child.stderr) {
        this.#log = (this.#log + decoder.decode(chunk)).slice(-20_000);
      }
    })();
  }

  /** Stops the process with `signal` and waits for it to exit. */
  async stop(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = undefined;
    try {
      child.kill(signal);
    } catch { /* already gone */ }
    await child.status;
  }
}

/** Where and how EtcdCluster.create plans a cluster. */
export interface EtcdCreateOptions {
  /** The members' address. @default "127.0.0.1" (tests: Loopback.etcd gives one of the file's own) */
  host?: string;
  extraArgs?: string[];
  scheme?: string;
  clientOptions?: Partial<EtcdOptions>;
}

/** A set of etcd members on loopback; one member unless `size` says otherwise. */
export class EtcdCluster {
  constructor(
    readonly members: EtcdMember[],
    readonly dir: string,
    readonly clientOptions: Partial<EtcdOptions> = {},
  ) {}

  /**
   * Plans `size` members on free ports (not started). `scheme: "https"` with
   * the TLS flags in `extraArgs` makes a TLS cluster; `clientOptions` (CA,
   * certificate, user) are what this class's own clients use.
   */
  static async create(size = 1, options: EtcdCreateOptions = {}) {
    const host = options.host ?? "127.0.0.1";
    const dir = await Deno.makeTempDir({ prefix: "secretary-etcd-" });
    const ports = await freePorts(host, 2 * size);
    const specs = [];
    for (let i = 0; i < size; i++) {
      specs.push({
        name: `m${i}`,
        client: `${options.scheme ?? "http"}://${host}:${ports[2 * i]}`,
        peer: `http://${host}:${ports[2 * i + 1]}`,
      });
    }
    const cluster = specs.map((s) => `${s.name}=${s.peer}`).join(",");
    const members = specs.map((s) =>
      new EtcdMember(s.name, s.client, s.peer, `${dir}/${s.name}`, cluster, options.extraArgs ?? [])
    );
    return new EtcdCluster(members, dir, options.clientOptions);
  }

  get endpoints(): string[] {
    return this.members.map((m) => m.clientUrl);
  }

  /** Starts every member and waits until the cluster answers. */
  async start(): Promise<this> {
    for (const m of this.members) m.start();
    await this.waitReady();
    return this;
  }

  /** Waits until a read through every running member succeeds. */
  async waitReady(timeoutMs = 20_000): Promise<void> {
    for (const m of this.members.filter((m) => m.running)) {
      await waitFor(
        async () => {
          const etcd = new Etcd({ ...this.clientOptions, endpoints: [m.clientUrl], callTimeoutMs: 1000 });
          try {
            await etcd.revision();
            return true;
          } catch {
            return false;
          } finally {
            etcd.close();
          }
        },
        `etcd member ${m.name} at ${m.clientUrl}\n${m.log.slice(-2000)}`,
        timeoutMs,
        100,
      );
    }
  }

  /** The member that leads the cluster now, each member given `callTimeoutMs` to say. */
  async leader(callTimeoutMs = 1000): Promise<EtcdMember> {
    for (const m of this.members.filter((m) => m.running)) {
      const etcd = new Etcd({ ...this.clientOptions, endpoints: [m.clientUrl], callTimeoutMs });
      try {
        const { member, leader } = await etcd.status();
        if (member === leader) return m;
      } catch {
        /* not answering: not the leader */
      } finally {
        etcd.close();
      }
    }
    throw new Error("no member leads the cluster");
  }

  /** The running members that process `pid` holds an open TCP connection to (read with `ss`). */
  async connectedMembers(pid: number): Promise<EtcdMember[]> {
    const out = await new Deno.Command("ss", { args: ["-tnpH", "state", "established"], stdout: "piped" }).output();
    const lines = new TextDecoder().decode(out.stdout).split("\n").filter((l) => l.includes(`pid=${pid},`));
    return this.members.filter((m) => m.running && lines.some((l) => l.includes(` ${new URL(m.clientUrl).host} `)));
  }

  /**
   * A client for the whole cluster, for a test's own reads and writes: its
   * calls wait longer than the scripts' (1.5 s), since on a loaded machine a
   * test's assertion must not fail on a slow answer.
   */
  client(callTimeoutMs = TEST_CALL_TIMEOUT_MS): Etcd {
    return new Etcd({ ...this.clientOptions, endpoints: this.endpoints, callTimeoutMs });
  }

  async stop(): Promise<void> {
    await Promise.all(this.members.map((m) => m.stop()));
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

/** How a target answers: 200, a 302 redirect, 500, accept and never answer, or not listen at all. */
export type ServerMode = "ok" | "redirect" | "error" | "hang" | "closed";

const STATUS_LINES: Record<"ok" | "redirect" | "error", string> = {
  ok: "200 OK",
  redirect: "302 Found\r\nLocation: /elsewhere",
  error: "500 Internal Server Error",
};

/** A small HTTP server on `host:port` whose health the test controls. */
export class TestServer {
  mode: ServerMode = "ok";
  #port: number;
  #server?: Server;
  #sockets = new Set<Socket>();
  requests = 0;
  /** Connections accepted, and those closed without sending a request (a connection watch's). */
  connections = 0;
  silent = 0;
  /** Close a connection that has sent nothing after this long, as servers drop idle connections. */
  idleCloseMs?: number;

  /** `port` 0: the kernel picks one when it first listens, and it keeps it across `closed` and back. */
  constructor(readonly host: string, port = 0) {
    this.#port = port;
  }

  get port(): number {
    return this.#port;
  }

  static async start(host: string, port = 0): Promise<TestServer> {
    const target = new TestServer(host, port);
    await target.setMode("ok");
    return target;
  }

  /** Switches the mode; `closed` stops listening, any other mode listens again. */
  async setMode(mode: ServerMode): Promise<void> {
    this.mode = mode;
    if (mode === "closed") return await this.#close();
    if (this.#server) return;
    const server = createServer((socket) => {
      this.#sockets.add(socket);
      this.connections++;
      let spoke = false;
      const idle = this.idleCloseMs === undefined ? undefined : setTimeout(() => socket.destroy(), this.idleCloseMs);
      socket.on("close", () => {
        this.#sockets.delete(socket);
        clearTimeout(idle);
        if (!spoke) this.silent++;
      });
      socket.on("error", () => {});
      socket.on("data", (chunk: Uint8Array) => {
        // blank lines before a request are ignored, as HTTP servers do (RFC 9112 2.2)
        if (spoke || new TextDecoder().decode(chunk).trim() === "") return;
        spoke = true;
        clearTimeout(idle);
        this.requests++;
        if (this.mode === "hang" || this.mode === "closed") return;
        socket.end(`HTTP/1.1 ${STATUS_LINES[this.mode]}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok`);
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.#port, this.host, () => resolve());
    });
    this.#port = (server.address() as AddressInfo).port;
    this.#server = server;
  }

  async #close(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    if (!server) return;
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  close(): Promise<void> {
    return this.#close();
  }
}

/** A script run as a child process, its output collected. */
export class Script {
  stdout = "";
  stderr = "";
  readonly child: Deno.ChildProcess;
  readonly status: Promise<Deno.CommandStatus>;
  #done: Promise<void>;
  #exited = false;

  /** Starts `command`; `clearEnv` gives it only `env` (as systemd would), `cwd` defaults to the repository. */
  constructor(
    command: string,
    args: string[],
    env: Record<string, string> = {},
    options: { cwd?: string; clearEnv?: boolean } = {},
  ) {
    this.child = new Deno.Command(command, {
      args,
      env: { NO_COLOR: "1", ...env },
      clearEnv: options.clearEnv,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      cwd: options.cwd ?? ROOT,
    }).spawn();
    const decoder = () => new TextDecoder();
    const read = async (stream: ReadableStream<Uint8Array>, into: "stdout" | "stderr") => {
      const d = decoder();
      for await (const chunk of stream) this[into] += d.decode(chunk, { stream: true });
    };
    this.#done = Promise.all([read(this.child.stdout, "stdout"), read(this.child.stderr, "stderr")]).then(() => {});
    this.status = this.child.status;
    this.status.then(() => (this.#exited = true));
  }

  /** Runs `deno run <flags> <script> <args>` from the repository root. */
  static deno(script: string, args: string[], options: { flags?: string[]; env?: Record<string, string> } = {}) {
    return new Script(Deno.execPath(), ["run", ...(options.flags ?? ["--allow-all"]), script, ...args], options.env);
  }

  get pid(): number {
    return this.child.pid;
  }

  kill(signal: Deno.Signal = "SIGTERM"): void {
    try {
      this.child.kill(signal);
    } catch { /* already exited */ }
  }

  /** Whether the process has not exited yet. */
  get running(): boolean {
    return !this.#exited;
  }

  /** Waits for the process to exit and its output to be read; SIGKILL after `timeoutMs`. */
  async finished(timeoutMs = 20_000): Promise<Deno.CommandStatus> {
    const timer = setTimeout(() => this.kill("SIGKILL"), timeoutMs);
    const status = await this.status;
    clearTimeout(timer);
    await this.#done;
    return status;
  }

  /**
   * Waits until stderr has a line matching `pattern` and returns it; throws
   * with the whole stderr after `timeoutMs`, or as soon as the process has
   * exited without printing one.
   */
  async waitForLog(pattern: RegExp, timeoutMs = READY_MS): Promise<string> {
    const find = () => this.stderr.split("\n").find((l) => pattern.test(l));
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const line = find();
      if (line !== undefined) return line;
      if (this.#exited) {
        await this.#done; // the rest of its output
        const last = find();
        if (last !== undefined) return last;
        throw new Error(`${this.describeExit(await this.status)} without a log line ${pattern}:\n${this.stderr}`);
      }
      if (Date.now() > deadline) {
        throw new Error(`timed out after ${timeoutMs} ms waiting for a log line ${pattern}:\n${this.stderr}`);
      }
      await delay(50);
    }
  }

  /** "exited with code N" or "was killed by SIGNAL", for failure messages. */
  describeExit(status: Deno.CommandStatus): string {
    return status.signal
      ? `PID ${this.pid} was killed by ${status.signal}`
      : `PID ${this.pid} exited with code ${status.code}`;
  }

  /** Sends SIGKILL if still running and waits; for cleanup. */
  async stop(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    this.kill(signal);
    await this.finished();
  }
}

/** Runs a script to completion and returns its exit code and output. */
export async function runScript(
  script: string,
  args: string[],
  options: { flags?: string[]; env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const proc = Script.deno(script, args, options);
  // killed with SIGKILL after timeoutMs (finished() would otherwise do it after its own default)
  const status = await proc.finished(options.timeoutMs ?? 20_000);
  return { code: status.code, stdout: proc.stdout, stderr: proc.stderr };
}

/**
 * A TCP relay from a local port to `upstream` that can cut the network
 * without closing anything: while cut, it stops reading, so bytes wait in the
 * kernel's buffers as they would behind a partition, and new connections are
 * accepted but not passed on. `heal()` lets everything flow again.
 */
export class Relay {
  #server?: Server;
  #pairs = new Set<[Socket, Socket | undefined]>();
  #cut = false;
  #pending: (() => void)[] = [];

  #port = 0;

  private constructor(readonly host: string, readonly upstream: { host: string; port: number }) {}

  /** The port it listens on, picked by the kernel. */
  get port(): number {
    return this.#port;
  }

  /** Starts a relay to `upstreamUrl`, listening on `host` (tests: an address of their own). */
  static async start(upstreamUrl: string, host = "127.0.0.1"): Promise<Relay> {
    const url = new URL(upstreamUrl);
    const relay = new Relay(host, { host: url.hostname, port: Number(url.port) });
    const { connect } = await import("node:net");
    relay.#server = createServer((client) => {
      client.on("error", () => {});
      const pair: [Socket, Socket | undefined] = [client, undefined];
      relay.#pairs.add(pair);
      const open = () => {
        const server = connect(relay.upstream.port, relay.upstream.host);
        pair[1] = server;
        server.on("error", () => client.destroy());
        client.on("close", () => {
          server.destroy();
          relay.#pairs.delete(pair);
        });
        server.on("close", () => client.destroy());
        client.pipe(server);
        server.pipe(client);
        if (relay.#cut) {
          client.pause();
          server.pause();
        }
      };
      if (relay.#cut) {
        client.pause();
        relay.#pending.push(open);
      } else open();
    });
    await new Promise<void>((resolve, reject) => {
      relay.#server!.once("error", reject);
      relay.#server!.listen(0, host, () => resolve());
    });
    relay.#port = (relay.#server.address() as AddressInfo).port;
    return relay;
  }

  /** The relay's URL, to give the client instead of etcd's. */
  get url(): string {
    return `http://${this.host}:${this.port}`;
  }

  cut(): void {
    this.#cut = true;
    for (const [client, server] of this.#pairs) {
      client.unpipe();
      server?.unpipe();
      client.pause();
      server?.pause();
    }
  }

  heal(): void {
    this.#cut = false;
    for (const [client, server] of this.#pairs) {
      if (!server) continue;
      client.pipe(server);
      server.pipe(client);
      client.resume();
      server.resume();
    }
    for (const open of this.#pending.splice(0)) open();
  }

  async close(): Promise<void> {
    for (const [client, server] of this.#pairs) {
      client.destroy();
      server?.destroy();
    }
    await new Promise<void>((resolve) => this.#server?.close(() => resolve()) ?? resolve());
  }
}

/** GETs `url` over plain HTTP, through no proxy whatever the environment says, and resolves with the body. */
export function httpGet(url: string, timeoutMs = 10_000): Promise<string> {
  return httpRequest(url, undefined, timeoutMs);
}

/** GETs `url`, or POSTs `body` as JSON, over plain HTTP/1.1 with a connection of its own and no proxy; resolves with the body of a 200. */
function httpRequest(url: string, body: unknown, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const options = body === undefined
      ? { agent: false }
      : { agent: false, method: "POST", headers: { "content-type": "application/json" } };
    const req = request(url, options, (res) => {
      const chunks: Uint8Array[] = [];
      res.on("data", (chunk: Uint8Array) => chunks.push(chunk));
      res.on("error", reject);
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString();
        if (res.statusCode === 200) resolve(text);
        else {reject(
            new Error(`${body === undefined ? "GET" : "POST"} ${url}: ${res.statusCode} ${text.slice(0, 500)}`),
          );}
      });
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`${url}: no answer in ${timeoutMs} ms`)));
    req.on("error", reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

/**
 * A test's own reads and writes through etcd's JSON gateway (`/v3/...` on a
 * plain-http client URL), over HTTP/1.1, trying each member in turn. For
 * tests that stop members gracefully: a graceful stop sends the HTTP/2
 * clients a GOAWAY, on which Deno can abort inside nghttp2
 * (denoland/deno#36788), and in the test runner that abort ends the whole
 * suite, not one test. The scripts under test keep their own gRPC clients.
 */
export class EtcdGateway {
  #next = 0;

  constructor(readonly endpoints: string[], readonly timeoutMs = 1000) {}

  async #post(path: string, body: unknown): Promise<Record<string, unknown>> {
    let last: unknown;
    for (let i = 0; i < this.endpoints.length; i++) {
      const endpoint = this.endpoints[this.#next];
      try {
        return JSON.parse(await httpRequest(`${endpoint}${path}`, body, this.timeoutMs));
      } catch (err) {
        last = err;
        this.#next = (this.#next + 1) % this.endpoints.length; // that member is down or without a quorum: the next
      }
    }
    throw last;
  }

  /** The value and lease of `key` (a linearizable read: it needs a quorum), or undefined. */
  async get(key: string): Promise<{ value: string; lease: string } | undefined> {
    const res = await this.#post("/v3/kv/range", { key: base64(key) });
    const kv = (res.kvs as { value?: string; lease?: string }[] | undefined)?.[0];
    return kv && { value: Buffer.from(kv.value ?? "", "base64").toString(), lease: kv.lease ?? "0" };
  }

  /** Grants a lease of `ttlSeconds`; its ID. */
  async grantLease(ttlSeconds: number): Promise<string> {
    return String((await this.#post("/v3/lease/grant", { TTL: ttlSeconds })).ID);
  }

  async put(key: string, value: string, lease = "0"): Promise<void> {
    await this.#post("/v3/kv/put", { key: base64(key), value: base64(value), lease });
  }

  async delete(key: string): Promise<void> {
    await this.#post("/v3/kv/deleterange", { key: base64(key) });
  }
}

const base64 = (text: string) => Buffer.from(text).toString("base64");

/** A metric without labels from an etcd member's /metrics (on its plain-http client URL), e.g. `etcd_server_proposals_committed_total`. */
export async function etcdMetric(clientUrl: string, name: string): Promise<number> {
  const text = await httpGet(`${clientUrl}/metrics`);
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  if (line === undefined) throw new Error(`${clientUrl}/metrics has no ${name}`);
  return Number(line.slice(name.length + 1));
}

/** Files of a throwaway certificate authority, a server certificate for loopback addresses and a client certificate. */
export interface Certs {
  dir: string;
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** Another CA that signed nothing here: the wrong one to trust. */
  otherCa: string;
}

/**
 * Makes certificates with openssl in a new temporary directory. The server
 * certificate is for 127.0.0.1, localhost and each of `ips` (a test's own
 * addresses, where its etcd listens).
 */
export async function makeCerts(ips: string[] = []): Promise<Certs> {
  const dir = await Deno.makeTempDir({ prefix: "secretary-certs-" });
  const run = async (...args: string[]) => {
    const out = await new Deno.Command("openssl", { args, cwd: dir, stdout: "null", stderr: "piped" }).output();
    if (!out.success) throw new Error(`openssl ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  };
  const ca = async (name: string) => {
    await run(
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "2",
      "-subj",
      `/CN=${name}`,
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.pem`,
    );
  };
  const leaf = async (name: string, ext: string) => {
    await Deno.writeTextFile(`${dir}/${name}.ext`, ext);
    await run(
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-subj",
      `/CN=${name}`,
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.csr`,
    );
    await run(
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-days",
      "2",
      "-extfile",
      `${name}.ext`,
      "-out",
      `${name}.pem`,
    );
  };
  await ca("ca");
  await ca("other-ca");
  const names = ["IP:127.0.0.1", ...ips.map((ip) => `IP:${ip}`), "DNS:localhost"].join(",");
  await leaf("server", `subjectAltName=${names}\nextendedKeyUsage=serverAuth,clientAuth\n`);
  await leaf("client", "extendedKeyUsage=clientAuth\n");
  return {
    dir,
    ca: `${dir}/ca.pem`,
    serverCert: `${dir}/server.pem`,
    serverKey: `${dir}/server.key`,
    clientCert: `${dir}/client.pem`,
    clientKey: `${dir}/client.key`,
    otherCa: `${dir}/other-ca.pem`,
  };
}

// ---------------------------------------------------------------------------
// Debian's Apache httpd, as a real target

/** Debian's Apache httpd binary. */
export const APACHE = "/usr/sbin/apache2";
const APACHE_MODULES = "/usr/lib/apache2/modules";

/** Sends `GET /` and returns the status code, or undefined when nothing answers within a second. */
export async function httpStatus(ip: string, port: number): Promise<number | undefined> {
  let conn: Deno.TcpConn | undefined;
  const timer = setTimeout(() => conn?.close(), 1000);
  try {
    conn = await Deno.connect({ hostname: ip, port });
    await conn.write(new TextEncoder().encode(`GET / HTTP/1.0\r\nHost: ${ip}\r\n\r\n`));
    const buf = new Uint8Array(64);
    const n = await conn.read(buf);
    const status = /^HTTP\/1\.\d (\d{3})/.exec(new TextDecoder().decode(buf.subarray(0, n ?? 0)));
    return status ? Number(status[1]) : undefined;
  } catch {
    return undefined;
  } finally {
    clearTimeout(timer);
    try {
      conn?.close();
    } catch { /* closed by the timer */ }
  }
}

/**
 * Debian's Apache httpd in the foreground (mpm_event: a parent and its worker
 * children, no `-X`) on `ip:port`, with a minimal config of its own in `dir`,
 * started as systemd starts a service (only PATH in its environment, in `/`)
 * and in its own process group, so that one kill can take the whole of it as
 * systemd's KillMode=control-group or `docker kill` does. Needs root (its
 * workers run as nobody).
 */
export class Apache {
  private constructor(
    readonly ip: string,
    readonly port: number,
    readonly dir: string,
    /** The parent process (setsid execs Apache in place: same PID). */
    readonly process: Script,
  ) {}

  /**
   * Writes the config and document root into `dir` (made if missing), starts
   * Apache and waits until `GET /` answers 200; throws with Apache's stderr
   * when it does not. Starting again in the same `dir` reuses it.
   */
  static async start(
    options: { ip: string; port: number; dir: string; serverName?: string; index?: string; timeoutMs?: number },
  ): Promise<Apache> {
    const { ip, port, dir } = options;
    const conf = `${dir}/httpd.conf`;
    await Deno.mkdir(`${dir}/htdocs`, { recursive: true });
    await Deno.writeTextFile(`${dir}/htdocs/index.html`, options.index ?? `<h1>apache on ${ip}:${port}</h1>\n`);
    await Deno.writeTextFile(
      conf,
      [
        `ServerRoot "${dir}"`,
        `ServerName ${options.serverName ?? ip}`,
        `Listen ${ip}:${port}`,
        `PidFile "${dir}/httpd.pid"`,
        `DefaultRuntimeDir "${dir}"`,
        `Mutex file:${dir} default`,
        `LoadModule mpm_event_module ${APACHE_MODULES}/mod_mpm_event.so`,
        `LoadModule authz_core_module ${APACHE_MODULES}/mod_authz_core.so`,
        `LoadModule dir_module ${APACHE_MODULES}/mod_dir.so`,
        "User nobody",
        "Group nogroup",
        "ErrorLog /dev/stderr",
        "LogLevel notice",
        `DocumentRoot "${dir}/htdocs"`,
        "DirectoryIndex index.html",
        `<Directory "${dir}/htdocs">`,
        "  Require all granted",
        "</Directory>",
        "",
      ].join("\n"),
    );
    // the workers run as nobody: they must be able to reach and read the document root
    for (const path of [`${dir}/..`, dir, `${dir}/htdocs`]) await Deno.chmod(path, 0o755);
    await Deno.chmod(`${dir}/htdocs/index.html`, 0o644);
    const process = new Script(
      "setsid",
      [APACHE, "-f", conf, "-D", "FOREGROUND"],
      { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin" },
      { cwd: "/", clearEnv: true },
    );
    const apache = new Apache(ip, port, dir, process);
    let last: number | undefined;
    try {
      await waitFor(
        async () => (last = await httpStatus(ip, port)) === 200 || (!process.running && "exited"),
        `Apache on ${ip}:${port}`,
        options.timeoutMs ?? 15_000,
      );
      if (!process.running) throw new Error(`Apache on ${ip}:${port} exited`);
      const stat = await Deno.readTextFile(`/proc/${process.pid}/stat`);
      const pgid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[2]);
      if (pgid !== process.pid) throw new Error(`Apache (PID ${process.pid}) is in process group ${pgid}, not its own`);
    } catch (err) {
      await apache.killGroup();
      throw new Error(`${(err as Error).message}: last status ${last}\n${process.stderr}`);
    }
    return apache;
  }

  /** The parent's PID, which is also the process group's ID. */
  get pid(): number {
    return this.process.pid;
  }

  /** SIGKILL to the whole process group (the parent and every worker), then waits for the parent to exit. */
  async killGroup(): Promise<void> {
    if (this.process.running) { // else its group is gone; the number may be another's by now
      try {
        Deno.kill(-this.pid, "SIGKILL");
      } catch { /* already gone */ }
    }
    await this.process.finished();
  }
}

// ---------------------------------------------------------------------------
// A test bed for one secretary at a time: a one-member etcd, targets, scripts

/** What secretary tests run: quick checks, a short TTL, a fixed hostname. */
export const FAST = ["--interval=500ms", "--timeout=300ms", "--ttl=5s", "--hostname=testhost"];

/** Where an instance listens. */
export interface Address {
  host: string;
  port: number;
}

/** A fresh etcd and everything started against it, stopped by withBed whatever happens. */
export interface Bed {
  /** The test file's addresses. */
  lo: Loopback;
  cluster: EtcdCluster;
  etcd: Etcd;
  targets: TestServer[];
  scripts: Script[];
  /** More to undo at the end: servers, files. */
  cleanups: (() => unknown)[];
  /** Starts secretary.ts from source for `target` with FAST settings, then `extra`; `flags` are deno's. */
  secretary(target: Address, extra?: string[], flags?: string[], env?: Record<string, string>): Script;
  key(target: Address, service?: string): string;
  present(key: string): Promise<boolean>;
}

/**
 * Runs `fn` with a fresh one-member etcd on an address of `lo`'s (the test
 * file's block); stops everything it started, whatever happens.
 */
export async function withBed(lo: Loopback, fn: (bed: Bed) => Promise<void>): Promise<void> {
  const cluster = await lo.etcd(1);
  try {
    await cluster.start();
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  const etcd = cluster.client();
  const bed: Bed = {
    lo,
    cluster,
    etcd,
    targets: [],
    scripts: [],
    cleanups: [],
    secretary(target, extra = [], flags = SOURCE_FLAGS, env = {}) {
      const s = Script.deno("secretary.ts", [
        String(target.port),
        `--ip=${target.host}`,
        `--endpoints=${cluster.endpoints.join(",")}`,
        ...FAST,
        ...extra,
      ], { flags, env });
      this.scripts.push(s);
      return s;
    },
    key: (target, service = "apache") => instanceKey(DEFAULT_PREFIX, service, target.host, target.port),
    present: async (key) => (await etcd.get(key)) !== undefined,
  };
  try {
    await fn(bed);
  } finally {
    await Promise.all(bed.scripts.map((s) => s.stop()));
    await Promise.all(bed.targets.map((t) => t.close()));
    for (const cleanup of bed.cleanups.reverse()) await cleanup();
    etcd.close();
    await cluster.stop();
  }
}

/** A target on `host`, closed with the bed. */
export async function testServer(bed: Bed, host: string): Promise<TestServer> {
  const t = await TestServer.start(host);
  bed.targets.push(t);
  return t;
}

/**
 * A target on `host` and its secretary (`extra` arguments, deno `flags`), once
 * the record is in etcd and the secretary has logged it. `idleCloseMs` is the
 * target's, set before the secretary starts.
 */
export async function registered(
  bed: Bed,
  host: string,
  options: { extra?: string[]; flags?: string[]; idleCloseMs?: number } = {},
): Promise<{ t: TestServer; s: Script; key: string }> {
  const t = await testServer(bed, host);
  t.idleCloseMs = options.idleCloseMs;
  const s = bed.secretary(t, options.extra, options.flags);
  const key = bed.key(t);
  // started from source, checked, registered: READY_MS covers a loaded machine; the line follows the put's answer
  await s.waitForLog(/^registered key=/, READY_MS);
  if (!(await bed.present(key))) throw new Error(`the secretary logged its registration, but ${key} is not in etcd`);
  return { t, s, key };
}

// ---------------------------------------------------------------------------
// Bundles and an installed host, as install.sh and the units ship them

/** The bundles built fresh by build.ts into a folder of this test module, once; removed when it ends. */
let built: Promise<string> | undefined;
export function bundles(): Promise<string> {
  built ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "secretary-bundle-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", `${ROOT}build.ts`, "--out", dir, "--quiet"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) throw new Error(`build.ts failed:\n${new TextDecoder().decode(out.stderr)}`);
    return dir;
  })();
  return built;
}

/**
 * A scratch root as `install.sh --root ROOT --tls` leaves it, from bundles():
 * ROOT/opt/bin (deno, the bundles, the registry wrapper) and the units in
 * ROOT/etc/systemd/system. Once per test module; removed when it ends.
 */
let installedRoot: Promise<string> | undefined;
export function installed(): Promise<string> {
  installedRoot ??= (async () => {
    const root = await Deno.makeTempDir({ prefix: "secretary-root-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(root, { recursive: true }));
    const out = await new Deno.Command(`${ROOT}install.sh`, {
      args: ["--root", root, "--from", await bundles(), "--tls"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) throw new Error(`install.sh failed:\n${new TextDecoder().decode(out.stderr)}`);
    return root;
  })();
  return installedRoot;
}

/**
 * The words of a unit file's ExecStart= (the last one: a drop-in resets it
 * with an empty one first), with `%i`, `%H` and `${VAR}` expanded from
 * `vars`, and /opt/bin pointed at `dir`. `file` is a path, or a name under
 * units/. /opt/bin/deno becomes this deno unless `dir` holds an installed one.
 */
export async function execStart(file: string, vars: Record<string, string>, dir = "/opt/bin"): Promise<string[]> {
  const text = await Deno.readTextFile(file.startsWith("/") ? file : `${ROOT}units/${file}`);
  const line = [...text.matchAll(/^ExecStart=(.*)$/gm)].map((m) => m[1]).filter((l) => l !== "").at(-1)!;
  const installedDeno = await Deno.stat(`${dir}/deno`).then(() => true, () => false);
  // systemd's quoting, as far as the units use it ("…" around one argument), is a shell's
  return splitCommand(line).map((word) =>
    word
      .replace(/%([iH])/g, (_, c: string) => vars[`%${c}`])
      .replace(/\$\{(\w+)\}/g, (_, name: string) => vars[name] ?? "")
      .replace(/^\/opt\/bin\/deno$/, installedDeno ? `${dir}/deno` : Deno.execPath())
      .replace(/^\/opt\/bin\//, `${dir}/`)
  );
}

/** The `Environment=` assignments of a unit file, as a map. */
export async function unitEnvironment(file: string): Promise<Record<string, string>> {
  const text = await Deno.readTextFile(file.startsWith("/") ? file : `${ROOT}units/${file}`);
  const env: Record<string, string> = {};
  for (const m of text.matchAll(/^Environment=([A-Za-z_]\w*)=(.*)$/gm)) env[m[1]] = m[2];
  return env;
}

// ---------------------------------------------------------------------------
// A headless Chromium for `registry serve`'s page (tests/serve_test.ts, bench/serve.ts)

/** Debian's Chromium, installed by ./run. */
export const CHROMIUM = "/usr/bin/chromium";

/**
 * A headless Chromium started here with a fresh profile, answering the
 * DevTools protocol on a port it picks on `host` (`endpoint`, for
 * playwright-core's `chromium.connectOverCDP`); stopped by PID, its profile
 * removed. Nothing is downloaded, nothing reaches the network on its own.
 */
export class Chromium {
  private constructor(readonly child: Deno.ChildProcess, readonly endpoint: string, readonly profile: string) {}

  get pid(): number {
    return this.child.pid;
  }

  /** Starts it, its DevTools port on `host` (tests: an address of their own, as every listener). */
  static async start(host = "127.0.0.1", timeoutMs = READY_MS): Promise<Chromium> {
    const profile = await Deno.makeTempDir({ prefix: "secretary-chromium-" });
    const child = new Deno.Command(CHROMIUM, {
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        `--user-data-dir=${profile}`,
        `--remote-debugging-address=${host}`,
        "--remote-debugging-port=0",
        "about:blank",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
    let log = "";
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    try {
      while (true) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`chromium exited before it listened:\n${log.slice(-2000)}`);
        log += value;
        const endpoint = /DevTools listening on (ws:\/\/\S+)/.exec(log)?.[1];
        if (endpoint) {
          // keep draining its stderr, or it blocks once the pipe is full
          void (async () => {
            while (!(await reader.read().catch(() => ({ done: true }))).done) { /* discard */ }
          })();
          return new Chromium(child, endpoint, profile);
        }
      }
    } catch (err) {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
      await child.status;
      await Deno.remove(profile, { recursive: true }).catch(() => {});
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stops the browser (SIGTERM, then SIGKILL) and removes its profile. */
  async stop(): Promise<void> {
    try {
      this.child.kill("SIGTERM");
    } catch { /* gone */ }
    const timer = setTimeout(() => {
      try {
        this.child.kill("SIGKILL");
      } catch { /* gone */ }
    }, 5000);
    await this.child.status;
    clearTimeout(timer);
    await Deno.remove(this.profile, { recursive: true }).catch(() => {});
  }
}
