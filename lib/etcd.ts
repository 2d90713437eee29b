/**
 * The only file that talks to etcd (the only importer of `etcd3`): a small
 * client with the few operations the registry needs, each with a deadline,
 * so an unreachable etcd never hangs a caller.
 *
 * A failed call moves to the next member on a new connection (`failover()`),
 * and callers whose stream broke call it too: under Deno, an HTTP/2 session
 * can stay half-dead after a server restart or a cut network without grpc-js
 * noticing, and a new connection is the sure way out.
 *
 * @module
 */
import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import tls from "node:tls";
import {
  castGrpcError,
  Etcd3,
  EtcdLeaseInvalidError,
  GRPCDeadlineExceededError,
  type IKeyValue,
  type IOptions,
  isRecoverableError,
  type IWatchResponse,
} from "etcd3";
import { decodeRangeResponse, type RangePage } from "./wire.ts";

/** How to reach etcd: endpoints, TLS files and a user, as etcdctl takes them. */
export interface EtcdOptions {
  /** Client URLs, `http://host:port` or `https://host:port`. */
  endpoints: string[];
  /** A CA bundle to verify the server with (`--cacert`). */
  cacert?: string;
  /** A client certificate (`--cert`), with its `key`. */
  cert?: string;
  /** The client certificate's private key (`--key`). */
  key?: string;
  /** etcd user and password (`--user name:password`). */
  user?: { name: string; password: string };
  /** The deadline of each call to one member. @default 1500 */
  callTimeoutMs?: number;
  /** How many keys every page of `list()` asks for; by default, as many as fit in LIST_PAGE_BYTES (listPageKeys()). */
  listPageSize?: number;
}

/** A key's value and the lease it is attached to ("0" for none). */
export interface StoredValue {
  key: string;
  value: string;
  lease: string;
  modRevision: string;
}

/** What a watch stream reports. */
export type WatchEvent =
  | { type: "put"; key: string; value: string; revision: string }
  | { type: "delete"; key: string; revision: string };

/** A running watch: `done` settles when the stream ends or fails (never while it is healthy). */
export interface WatchHandle {
  done: Promise<Error>;
  /** Asks for an answer on this stream (a progress report, or a watch created); rejects when none comes in time. */
  probe(): Promise<void>;
  cancel(): void;
}

/** Thrown when a call takes longer than its deadline. */
export class DeadlineError extends Error {
  override name = "DeadlineError";
}

/** A grant asked for a lease ID that exists already: an earlier grant of it went through. */
export class LeaseExistsError extends Error {
  override name = "LeaseExistsError";
}

const DEFAULT_CALL_TIMEOUT_MS = 1500;

/**
 * A listing is read in pages of about this many bytes: etcd has no limit by
 * size, so each page asks for as many keys as fit at the average size of the
 * keys and values read so far (listPageKeys()). A record is about 250 bytes:
 * 10,000 of them are two pages, where pages of 500 keys made twenty, each a
 * round trip and, in etcd 3.4, a walk of the in-memory index over the rest of
 * the prefix. Values of 1.5 MiB (etcd's largest by default) come two a page,
 * so no single answer holds the whole listing twice over in memory.
 */
export const LIST_PAGE_BYTES = 4 * 1024 * 1024;

/** The keys the first page asks for, before any size is known: a handful, whatever their size. */
export const FIRST_LIST_PAGE_KEYS = 16;

/** The most keys one page asks for, however small they are. */
export const MAX_LIST_PAGE_KEYS = 100_000;

/**
 * How many keys the next page of a listing asks for (pure): as many as fit in
 * LIST_PAGE_BYTES at the average size of the `keys` read so far (`bytes` in
 * all), from 1 to MAX_LIST_PAGE_KEYS; FIRST_LIST_PAGE_KEYS before any is read.
 */
export function listPageKeys(keys: number, bytes: number): number {
  if (keys === 0) return FIRST_LIST_PAGE_KEYS;
  const fit = Math.floor(LIST_PAGE_BYTES / Math.max(1, bytes / keys));
  return Math.min(MAX_LIST_PAGE_KEYS, Math.max(1, fit));
}

/**
 * How many times in all a listing starts over when etcd compacts its revision
 * before its last page. A listing takes seconds and compactions are minutes
 * apart (etcd's auto-compaction, kube-apiserver's every 5 minutes), so a
 * repeat means something compacts all the time: fail rather than loop.
 */
export const LIST_ATTEMPTS = 3;

/**
 * The largest message grpc-js accepts from etcd (its default is 4 MiB): the
 * largest etcd sends (its gRPC `MaxSendMsgSize` is math.MaxInt32), as etcd's
 * own Go client sets it. No smaller bound is safe: one value may be as large
 * as etcd's `--max-request-bytes` (1.5 MiB by default, and configurable), a
 * page holds a few MiB of them, and one watch answer holds every event of
 * up to 1,000 revisions (a watch catching up) or every key one lease revoke
 * deleted. The listing is kept in memory whole anyway; etcd is trusted.
 */
const MAX_RECEIVE_MESSAGE_BYTES = 2 ** 31 - 1;

/**
 * grpc-js always sends the endpoint's host as the TLS server name; for an IP
 * address Node only warns, but Deno's node:tls refuses to connect. So for an
 * https endpoint given by IP we hand grpc-js a stand-in name ending in this
 * suffix, and check the server's certificate against the real IP ourselves.
 */
const STAND_IN_SUFFIX = ".ip.secretary.invalid";

/** The stand-in TLS server name for an IP address, or undefined for a host name. */
export function standInServerName(host: string): string | undefined {
  const bare = host.replace(/^\[|\]$/g, "");
  if (!isIP(bare)) return undefined;
  return `${bare.replaceAll(".", "-").replaceAll(":", "_")}${STAND_IN_SUFFIX}`;
}

function realHost(name: string): string {
  return name.slice(0, -STAND_IN_SUFFIX.length).replaceAll("-", ".").replaceAll("_", ":");
}

let standInsChecked = false;
/**
 * Makes node:tls check a stand-in name's certificate against the IP it stands
 * for (grpc-js calls this check, and etcd3 gives it no way to pass our own).
 * Installed once, and only by a client that uses a stand-in: importing this
 * file changes nothing.
 */
function checkStandInsAsTheirIps(): void {
  if (standInsChecked) return;
  standInsChecked = true;
  const checkServerIdentity = tls.checkServerIdentity;
  tls.checkServerIdentity = (hostname, cert) =>
    checkServerIdentity(hostname.endsWith(STAND_IN_SUFFIX) ? realHost(hostname) : hostname, cert);
}

/** The end of the key range that holds every key starting with `prefix`. */
export function prefixRangeEnd(prefix: string): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i] < 0xff) {
      end[i]++;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}

/**
 * Where the next page of a listing starts: the first key after `lastKey` (the
 * last key of this page) in etcd's byte order, which is `lastKey` + "\0".
 */
export function nextPageKey(lastKey: Uint8Array): Buffer {
  return Buffer.concat([lastKey, Buffer.from([0])]);
}

/** Whether etcd refused a read because its revision was compacted (ErrCompacted). */
export function isCompactedError(err: unknown): boolean {
  return err instanceof Error && err.message.includes("required revision has been compacted");
}

/** Settles like `promise`, or rejects with DeadlineError after `ms`. */
export function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new DeadlineError(`${what} took longer than ${ms} ms`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/** A short, one-line reason for an etcd failure, for logs and error lines. */
export function describeError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const reason = err.message.split("\n")[0]
    .replace(/^\d+ [A-Z_]+: /, "") // grpc's status code
    .replace(/^No connection established\. Last error: (Error: )?/, "")
    .replace(/\.? *Resolution note:.*$/, "")
    .replace(/ \(\d{4}-\d\d-\d\dT[\d:.]+Z\)$/, "")
    .trim();
  if (/certificate|self.signed/i.test(reason)) return `${reason} (check --cacert)`;
  if (/^(write EPIPE|socket hang up|Client network socket disconnected)/.test(reason)) {
    return `${reason} (does etcd want a client certificate, --cert and --key?)`;
  }
  return reason || err.name;
}

/** A LeaseKeepAlive stream shared by every keep-alive of one connection: answers matched by lease, in order. */
interface KeepAliveStream {
  /** The keep-alives sent and not answered yet, by lease ID, oldest first. */
  waiting: Map<string, { resolve(ttlSeconds: number): void; reject(err: Error): void }[]>;
  write(lease: string): void;
  /** Ends the stream; every keep-alive still waiting fails with `reason`. */
  end(reason: Error): void;
}

/** Opens a keep-alive stream on `client`; `onEnd` is called once when it ends, by either side. */
async function openKeepAliveStream(client: Etcd3, onEnd: () => void): Promise<KeepAliveStream> {
  const stream = await client.leaseClient.leaseKeepAlive();
  const waiting: KeepAliveStream["waiting"] = new Map();
  let ended = false;
  const end = (reason: Error) => {
    if (ended) return;
    ended = true;
    for (const queue of waiting.values()) for (const w of queue) w.reject(reason);
    waiting.clear();
    stream.end();
    onEnd();
  };
  stream.on("data", (res: { ID: string; TTL: string }) => {
    const queue = waiting.get(String(res.ID));
    const next = queue?.shift();
    if (queue?.length === 0) waiting.delete(String(res.ID));
    next?.resolve(Number(res.TTL));
  });
  stream.on("error", (err: Error) => end(err));
  stream.on("end", () => end(new Error("keep-alive stream ended")));
  return {
    waiting,
    write(lease) {
      if (ended) throw new Error("keep-alive stream ended");
      stream.write({ ID: lease });
    },
    end,
  };
}

/**
 * A client for one set of endpoints. It talks to one member at a time (one
 * connection, as etcd's own client does) and moves to the next member when a
 * call to this one fails for a network reason or runs past its deadline. The
 * members are tried in turn, each once per operation, from a random start.
 */
export class Etcd {
  readonly #options: EtcdOptions;
  readonly #callTimeoutMs: number;
  readonly #listPageSize?: number;
  readonly #credentials?: IOptions["credentials"];
  #member: number;
  #client: Etcd3;
  /** The one LeaseKeepAlive stream of `client` (this connection), while it lasts. */
  #keepAlives?: { client: Etcd3; stream: Promise<KeepAliveStream> };

  constructor(options: EtcdOptions) {
    this.#options = options;
    this.#callTimeoutMs = options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    this.#listPageSize = options.listPageSize;
    if (options.listPageSize !== undefined && !(Number.isInteger(options.listPageSize) && options.listPageSize >= 1)) {
      throw new RangeError(`Cannot use listPageSize ${options.listPageSize}: expected a positive integer`);
    }
    if (options.cacert || options.cert) {
      this.#credentials = {
        // null: the system's roots
        rootCertificate: options.cacert ? readFileSync(options.cacert) : null as unknown as Buffer,
        certChain: options.cert ? readFileSync(options.cert) : undefined,
        privateKey: options.key ? readFileSync(options.key) : undefined,
      };
    }
    this.#member = Math.floor(Math.random() * options.endpoints.length);
    this.#client = this.#connect();
  }

  #connect(): Etcd3 {
    const options = this.#options;
    const endpoint = new URL(options.endpoints[this.#member]);
    const grpcOptions: Record<string, string | number> = {
      // grpc-js would otherwise honour http_proxy and friends: etcd is never behind one
      "grpc.enable_http_proxy": 0,
      // for every call and stream on this channel: list pages and watch answers alike
      "grpc.max_receive_message_length": MAX_RECEIVE_MESSAGE_BYTES,
    };
    const standIn = endpoint.protocol === "https:" ? standInServerName(endpoint.hostname) : undefined;
    if (standIn) {
      checkStandInsAsTheirIps();
      grpcOptions["grpc.ssl_target_name_override"] = standIn;
    }
    const client = new Etcd3({
      hosts: [options.endpoints[this.#member]],
      credentials: this.#credentials,
      auth: options.user && { username: options.user.name, password: options.user.password },
      grpcOptions,
      defaultCallOptions: (context) => context.isStream ? {} : { deadline: Date.now() + this.#callTimeoutMs },
      // retries and failover are ours (#run); etcd3's circuit breaker would refuse calls for 5 s after etcd is back
      faultHandling: { host: () => noPolicy, global: noPolicy },
    });
    if (options.user) authenticateOnOwnChannel(client);
    return client;
  }

  /** The member this client talks to now. */
  get endpoint(): string {
    return this.#options.endpoints[this.#member];
  }

  /** The longest one operation can take: every member tried once, each within its deadline. */
  get operationTimeoutMs(): number {
    return (this.#callTimeoutMs + 250) * this.#options.endpoints.length;
  }

  /**
   * Drops the connection and moves to the next member. Callers use it when a
   * stream breaks: a half-dead HTTP/2 session (Deno) is never reused.
   */
  failover(): void {
    this.#endKeepAlives(new Error("connection dropped"));
    this.#client.close();
    this.#member = (this.#member + 1) % this.#options.endpoints.length;
    this.#client = this.#connect();
  }

  /** Runs `call` on this member, then on each other member in turn while the failure is the network's. */
  async #run<T>(what: string, call: (client: Etcd3) => Promise<T>): Promise<T> {
    for (let attempt = 1;; attempt++) {
      try {
        return await withDeadline(call(this.#client), this.#callTimeoutMs + 250, `${what} at ${this.endpoint}`);
      } catch (err) {
        const retry = isNetworkError(err);
        if (retry) this.failover();
        if (!retry || attempt >= this.#options.endpoints.length) throw err;
      }
    }
  }

  /**
   * Grants a lease of `ttlSeconds`; returns its ID. With `id` (a positive
   * int64 in decimal), asks for that ID: a grant retried after a deadline
   * then cannot make a second lease, and etcd's "lease already exists" says
   * the first went through (LeaseExistsError).
   */
  async grantLease(ttlSeconds: number, id?: string): Promise<string> {
    try {
      const res = await this.#run("lease grant", (c) => c.leaseClient.leaseGrant({ TTL: ttlSeconds, ID: id ?? "0" }));
      return res.ID;
    } catch (err) {
      if (id !== undefined && err instanceof Error && err.message.includes("lease already exists")) {
        throw new LeaseExistsError(`lease ${id} already exists`);
      }
      throw err;
    }
  }

  /**
   * Sends one keep-alive; returns the lease's remaining TTL in seconds (0: the
   * lease is gone). Every keep-alive of this connection, for any lease, goes
   * on one LeaseKeepAlive stream, as etcd's Go client does: a new stream per
   * keep-alive costs the leader a stream's set-up each time. A stream that
   * fails or misses a deadline is dropped, and the next keep-alive opens one.
   */
  async keepAlive(lease: string): Promise<number> {
    return await this.#run("lease keep-alive", async (c) => {
      const stream = await this.#keepAliveStream(c);
      return await new Promise<number>((resolve, reject) => {
        const waiting = stream.waiting.get(lease) ?? [];
        waiting.push({ resolve, reject });
        stream.waiting.set(lease, waiting);
        stream.write(lease);
      });
    }).catch((err) => {
      // no answer in time: the stream may be half-dead (Deno's HTTP/2), never wait on it again
      this.#endKeepAlives(err);
      throw err;
    });
  }

  /**
   * Ends this connection's keep-alive stream (keep-alives still waiting on it
   * fail); the next keep-alive opens a new one. Only bench/leases.ts calls
   * it, to measure what one stream saves against a stream a keep-alive.
   */
  endKeepAliveStream(): void {
    this.#endKeepAlives(new Error("keep-alive stream ended"));
  }

  /** This connection's keep-alive stream, opened on first use. */
  #keepAliveStream(client: Etcd3): Promise<KeepAliveStream> {
    if (this.#keepAlives?.client === client) return this.#keepAlives.stream;
    this.#endKeepAlives(new Error("keep-alive stream replaced"));
    const forget = () => {
      if (this.#keepAlives?.stream === stream) this.#keepAlives = undefined;
    };
    const stream = openKeepAliveStream(client, forget);
    this.#keepAlives = { client, stream };
    stream.catch(forget);
    return stream;
  }

  /** Ends the keep-alive stream, if any: what waits on it fails with `reason`. */
  #endKeepAlives(reason: Error): void {
    const open = this.#keepAlives;
    this.#keepAlives = undefined;
    open?.stream.then((s) => s.end(reason), () => {});
  }

  /** A lease's remaining and granted TTL in seconds; undefined when the lease is gone. */
  async leaseTimeToLive(lease: string): Promise<{ ttlSeconds: number; grantedSeconds: number } | undefined> {
    const res = await this.#run("lease time-to-live", (c) => c.leaseClient.leaseTimeToLive({ ID: lease }));
    const ttlSeconds = Number(res.TTL);
    return ttlSeconds < 0 ? undefined : { ttlSeconds, grantedSeconds: Number(res.grantedTTL) };
  }

  /** Revokes a lease, deleting every key attached to it. A lease already gone is no error. */
  async revokeLease(lease: string, timeoutMs = this.operationTimeoutMs): Promise<void> {
    try {
      await withDeadline(
        this.#run("lease revoke", (c) => c.leaseClient.leaseRevoke({ ID: lease })),
        timeoutMs,
        "lease revoke",
      );
    } catch (err) {
      if (!(err instanceof EtcdLeaseInvalidError)) throw err;
    }
  }

  /**
   * Puts `value` at `key` under `lease` unless the key exists already, in one
   * transaction. Returns what is stored at the key afterwards: ours, or another's.
   */
  async putIfAbsent(key: string, value: string, lease: string): Promise<StoredValue> {
    const k = Buffer.from(key);
    const res = await this.#run("put", (c) =>
      c.kv.txn({
        compare: [{ key: k, target: "Create", result: "Equal", create_revision: 0 }],
        success: [{ request_put: { key: k, value: Buffer.from(value), lease } }],
        failure: [{ request_range: { key: k } }],
      }));
    if (res.succeeded) return { key, value, lease, modRevision: res.header.revision };
    const kv = res.responses[0]?.response_range?.kvs[0];
    // deleted between the compare and the read: report it as absent, the caller tries again
    return kv ? toStored(kv) : { key, value: "", lease: "0", modRevision: "0" };
  }

  /** Puts `value` at `key` under `lease` only while the key is attached to `previousLease`. */
  async putIfLease(key: string, value: string, lease: string, previousLease: string): Promise<boolean> {
    const k = Buffer.from(key);
    const res = await this.#run("put", (c) =>
      c.kv.txn({
        compare: [
          { key: k, target: "Create", result: "Greater", create_revision: 0 },
          { key: k, target: "Lease", result: "Equal", lease: previousLease },
        ],
        success: [{ request_put: { key: k, value: Buffer.from(value), lease } }],
      }));
    return res.succeeded;
  }

  /** Deletes `key` only while it is attached to `lease`; returns whether it did. */
  async deleteIfLease(key: string, lease: string): Promise<boolean> {
    const k = Buffer.from(key);
    const res = await this.#run("delete", (c) =>
      c.kv.txn({
        compare: [
          { key: k, target: "Create", result: "Greater", create_revision: 0 },
          { key: k, target: "Lease", result: "Equal", lease },
        ],
        success: [{ request_delete_range: { key: k } }],
      }));
    return res.succeeded;
  }

  /** Reads one key; undefined when it does not exist. */
  async get(key: string): Promise<StoredValue | undefined> {
    const res = await this.#run("get", (c) => c.kv.range({ key: Buffer.from(key) }));
    return res.kvs[0] ? toStored(res.kvs[0]) : undefined;
  }

  /**
   * Reads every key under `prefix`, sorted by key, as one snapshot: each
   * value as it was at the returned `revision`, so a watch from `revision + 1`
   * misses no change. Works at any size etcd can hold.
   *
   * The range is read a page at a time (a few MiB: listPageKeys()), each
   * page its own call with its own deadline and failover, so a large listing
   * meets no deadline meant for one small call.
   * The first page is read at the current revision, every later one at the
   * first page's. When etcd compacts that revision before the last page is
   * read, the listing starts over at the current revision, LIST_ATTEMPTS
   * times in all; then the compaction error is thrown.
   *
   * With `keep`, each value is passed to it as its page arrives and what it
   * returns is kept instead: a caller that needs less than the values (a
   * table's cells, a line of output) holds no more than a page of them.
   */
  list(prefix: string): Promise<{ values: StoredValue[]; revision: string }>;
  list<T>(prefix: string, keep: (value: StoredValue) => T): Promise<{ values: T[]; revision: string }>;
  async list(prefix: string, keep?: (value: StoredValue) => unknown): Promise<{ values: unknown[]; revision: string }> {
    for (let attempt = 1;; attempt++) {
      try {
        return await this.#listPages(prefix, keep ?? ((value) => value));
      } catch (err) {
        if (!isCompactedError(err) || attempt >= LIST_ATTEMPTS) throw err;
      }
    }
  }

  /** One attempt of list(): pages from `prefix` to its end, all at the first page's revision. */
  async #listPages<T>(prefix: string, keep: (value: StoredValue) => T): Promise<{ values: T[]; revision: string }> {
    const rangeEnd = prefixRangeEnd(prefix);
    const values: T[] = [];
    let key: Buffer = Buffer.from(prefix);
    let revision: string | undefined; // unset for the first page: the current revision
    let bytes = 0;
    for (let page = 1;; page++) {
      const at = revision;
      const limit = this.#listPageSize ?? listPageKeys(values.length, bytes);
      const res = await this.#run(
        `list page ${page}`,
        (c) => rangePage(c, { key, range_end: rangeEnd, limit, revision: at }),
      );
      revision ??= res.revision;
      for (const kv of res.kvs) {
        bytes += kv.key.length + kv.value.length;
        values.push(
          keep({ key: kv.key.toString(), value: kv.value.toString(), lease: kv.lease, modRevision: kv.modRevision }),
        );
      }
      const last = res.kvs.at(-1);
      if (!res.more || !last) return { values, revision };
      key = nextPageKey(last.key);
    }
  }

  /**
   * Watches every key under `prefix` from `startRevision`. `onEvent` gets each
   * change in order. `done` settles with the reason the watch stopped
   * (compaction, a broken stream, etcd gone); the caller lists again.
   */
  async watch(
    prefix: string,
    startRevision: string,
    onEvent: (event: WatchEvent) => void,
  ): Promise<WatchHandle> {
    // one member, no failover here: the caller lists again on a failure, and calls failover() first
    const bound = this.#callTimeoutMs + 250;
    const stream = await withDeadline(this.#client.watchClient.watch(), bound, `watch at ${this.endpoint}`);
    let settle: (err: Error) => void = () => {};
    const done = new Promise<Error>((resolve) => (settle = resolve));
    let created = false;
    let watchId: string | undefined;
    let answered: () => void = () => {};
    /** Whether etcd has answered a progress request on this stream: a report is for no watch (id -1), no events. */
    let progressAnswered = false;
    const created$ = new Promise<void>((resolve, reject) => {
      stream.on("data", (res: IWatchResponse) => {
        answered(); // any answer on the stream proves it alive
        if (String(res.watch_id) === "-1" && !res.events?.length) progressAnswered = true;
        if (res.created && !created) {
          created = true;
          watchId = String(res.watch_id);
          resolve();
        } else if (res.created) {
          // a probe's own watch (below): done with it
          stream.write({ cancel_request: { watch_id: res.watch_id } });
          return;
        }
        if (String(res.watch_id) !== watchId) return; // a progress report, or a probe's watch ending
        if (res.canceled || res.compact_revision !== "0") {
          const reason = res.compact_revision !== "0"
            ? `revision ${startRevision} was compacted (compact revision ${res.compact_revision})`
            : res.cancel_reason || "watch canceled by etcd";
          const err = new Error(reason);
          reject(err);
          settle(err);
          return;
        }
        for (const e of res.events ?? []) {
          const key = e.kv.key.toString();
          if (e.type === "Delete") onEvent({ type: "delete", key, revision: e.kv.mod_revision });
          else onEvent({ type: "put", key, value: e.kv.value.toString(), revision: e.kv.mod_revision });
        }
      });
      const fail = (err: Error) => {
        reject(err);
        settle(err);
      };
      stream.on("error", fail);
      stream.on("end", () => fail(new Error("watch stream ended")));
    });
    stream.write({
      create_request: { key: Buffer.from(prefix), range_end: prefixRangeEnd(prefix), start_revision: startRevision },
    });
    const cancel = () => {
      settle(new Error("watch canceled"));
      try {
        stream.end();
      } catch { /* already closed */ }
    };
    // A stream on a half-dead connection raises nothing under Deno: only an answer proves it alive. A member
    // answers a progress request; etcd's gRPC proxy never does (etcd-io/etcd#19710), but it does answer a new
    // watch on the stream: so once a progress request goes unanswered, the probe is a second watch on the
    // same prefix (which the proxy serves from the watch it already has), cancelled as soon as it is created.
    // Events prove a stream alive but not that progress requests are answered: a proxy's stream, busy and then
    // quiet, must not be taken for dead at its first quiet probe.
    let progress: "unknown" | "answered" | "silent" = "unknown";
    const ask = (request: object, what: string) =>
      withDeadline(
        new Promise<void>((resolve) => {
          answered = resolve;
          stream.write(request);
        }),
        bound,
        `${what} at ${this.endpoint}`,
      );
    const watchProbe = { create_request: { key: Buffer.from(prefix), range_end: prefixRangeEnd(prefix) } };
    const probe = async () => {
      if (progress === "silent") return await ask(watchProbe, "watch probe");
      try {
        await ask({ progress_request: {} }, "watch progress");
        if (progressAnswered) progress = "answered";
      } catch (err) {
        if (progress === "answered" || !(err instanceof DeadlineError)) throw err;
        await ask(watchProbe, "watch probe"); // never answered a progress request: a proxy, or a dead stream
        progress = "silent";
      }
    };
    try {
      await withDeadline(created$, bound, `watch create at ${this.endpoint}`);
    } catch (err) {
      cancel();
      throw err;
    }
    return { done, probe, cancel };
  }

  /** Closes every connection; calls in flight fail. */
  close(): void {
    this.#endKeepAlives(new Error("client closed"));
    this.#client.close();
  }
}

function toStored(kv: IKeyValue): StoredValue {
  return { key: kv.key.toString(), value: kv.value.toString(), lease: kv.lease, modRevision: kv.mod_revision };
}

/** What authenticateOnOwnChannel() and rangePage() reach into: etcd3 1.1.2's connection pool. */
interface PoolInternals {
  hosts?: { getServiceClient(name: "Auth" | "KV"): AuthServiceClient & KVServiceClient }[];
  exec(service: "KV", method: typeof LEAN_RANGE, request: object): Promise<RangePage>;
  authenticator?: {
    getCredentialsFromHost(address: string, name: string, password: string, callOptions?: object): Promise<string>;
  };
}
interface AuthServiceClient {
  authenticate(
    request: { name: string; password: string },
    options: object,
    callback: (err: Error | null, res?: { token: string }) => void,
  ): void;
}

/** etcd3's connection pool inside `client`, and its one host (each Etcd3 here has one endpoint); undefined if not so. */
function poolOf(client: Etcd3): { pool?: PoolInternals; host?: NonNullable<PoolInternals["hosts"]>[number] } {
  const pool = (client as unknown as { pool?: PoolInternals }).pool;
  return { pool, host: pool?.hosts?.length === 1 ? pool.hosts[0] : undefined };
}

/** grpc-js's client of etcd's KV service: its Range method, and the call it is made of. */
interface KVServiceClient {
  range: { path: string; requestSerialize(request: object): Buffer };
  makeUnaryRequest(
    path: string,
    serialize: (request: object) => Buffer,
    deserialize: (bytes: Buffer) => RangePage,
    ...rest: unknown[]
  ): unknown;
  [LEAN_RANGE]?: (...args: unknown[]) => unknown;
}

/** The name of the KV method rangePage() adds: etcd's Range, its answer read by decodeRangeResponse(). */
const LEAN_RANGE = "rangeLean";

/**
 * One Range call, its answer read by lib/wire.ts rather than by etcd3's
 * decoder (a full object of every field; most of a listing's time a
 * record). The call is otherwise etcd3's own (`pool.exec`): the same channel,
 * auth token (renewed when etcd refuses it) and error types. The method is
 * added once to grpc-js's KV client class, beside its own `range`.
 */
function rangePage(client: Etcd3, request: object): Promise<RangePage> {
  const { pool, host } = poolOf(client);
  const kv = host?.getServiceClient("KV");
  const methods = kv && Object.getPrototypeOf(kv) as KVServiceClient;
  if (!pool || typeof methods?.range?.path !== "string" || typeof methods.makeUnaryRequest !== "function") {
    throw new Error("etcd3's connection pool has changed shape: a listing cannot read Range answers itself");
  }
  if (!Object.hasOwn(methods, LEAN_RANGE)) {
    const { path, requestSerialize } = methods.range;
    methods[LEAN_RANGE] = function (this: KVServiceClient, ...args: unknown[]) {
      return this.makeUnaryRequest(path, requestSerialize, decodeRangeResponse, ...args);
    };
  }
  return pool.exec("KV", LEAN_RANGE, request);
}

/**
 * etcd3 fetches its auth token on a channel of its own, made without the
 * channel options given to it: grpc-js then reads the proxy variables (under
 * the units' --allow-env list, deno refuses with `Requires env access to
 * "grpc_proxy"`, and etcd would be reached through a proxy), and over https
 * by IP the stand-in server name is missing. This fetches the token on the
 * client's own channel instead, which has both, and is no extra connection.
 */
function authenticateOnOwnChannel(client: Etcd3): void {
  const { pool, host } = poolOf(client);
  const authenticator = pool?.authenticator;
  if (!host || typeof authenticator?.getCredentialsFromHost !== "function") {
    throw new Error("etcd3's connection pool has changed shape: authentication cannot use the client's channel");
  }
  authenticator.getCredentialsFromHost = (_address, name, password, callOptions) =>
    new Promise((resolve, reject) => {
      host.getServiceClient("Auth").authenticate(
        { name, password },
        callOptions ?? {},
        (err, res) => (err || !res ? reject(castGrpcError(err ?? new Error("no token"))) : resolve(res.token)),
      );
    });
}

/** cockatiel-compatible policies, kept local so callers need not know cockatiel. */
const noPolicy = {
  // async, as cockatiel's: etcd3's markFailed() relies on a throw becoming a rejection
  async execute<T>(fn: (context: { signal: AbortSignal; attempt: number }) => PromiseLike<T> | T): Promise<T> {
    return await fn({ signal: new AbortController().signal, attempt: 0 });
  },
  // deno-lint-ignore no-explicit-any
} as any;

/**
 * Whether a failure is the network's (etcd unreachable, slow, restarting), as
 * opposed to etcd refusing the request (a wrong password, no permission).
 */
/** Whether a call ran out of time (ours or grpc's deadline): etcd may be overloaded rather than down. */
export function isDeadlineError(err: unknown): boolean {
  return err instanceof DeadlineError || err instanceof GRPCDeadlineExceededError;
}

export function isNetworkError(err: unknown): boolean {
  return err instanceof DeadlineError || (err instanceof Error && isRecoverable(err));
}

function isRecoverable(err: Error): boolean {
  // a member past its deadline is as good as down: try the next one
  return isRecoverableError(err) || err instanceof GRPCDeadlineExceededError;
}
