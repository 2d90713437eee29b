/**
 * The registrar: keeps one instance's record in etcd as its checks want it.
 * It grants one lease and keeps it alive, puts the record when the instance
 * is healthy and deletes it (only while it is its own) when it is not; it
 * writes nothing while nothing changes.
 *
 * Its decisions are one pure function, `plan()`: from what is known of the
 * lease and the key, the time and the wanted state, to the next action
 * (grant, keep alive, put, verify, inspect, take over, rewrite, delete, wait).
 * `EtcdRegistrar` is the thin loop that performs each action, records what
 * etcd answered, and asks again; a failed call is retried with jittered
 * backoff, forever.
 *
 * @module
 */
import { describeError, type Etcd, isDeadlineError, isNetworkError, LeaseExistsError } from "./etcd.ts";
import type { Log } from "./log.ts";
import { encodeRecord, instanceKey, type ServiceRecord, type Status } from "./record.ts";

/** How long SIGTERM may wait for etcd to revoke the lease before exiting anyway. */
export const STOP_TIMEOUT_MS = 2000;

/** Clock, sleep, randomness and the log: passed in, so tests drive them. The check loop takes the same. */
export interface Effects {
  now(): number;
  sleep(ms: number, signal: AbortSignal): Promise<void>;
  random(): number;
  log: Log;
}

/** What the check loop asks of the registrar: hold the record, or not. A fake stands in for it in tests. */
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
 * The agent's one lease for the host, as an instance's registrar sees it:
 * the lease its record goes under (undefined while being granted), and the
 * host's earlier leases (lost, maybe still holding records it takes over).
 */
export interface HostLease {
  readonly lease: string | undefined;
  readonly staleLeases: readonly string[];
}

/** What the registrar needs to know: the instance, where its record goes, and its timing. */
export interface RegistrarOptions {
  prefix: string;
  /**
   * The record's fixed fields; `registered_at` and `status` are the
   * registrar's. None for the agent's host lease: a registrar that only
   * grants and keeps alive its lease.
   */
  instance?: Omit<ServiceRecord, "registered_at" | "status">;
  ttlSeconds: number;
  /** The check interval: how often a record held by another lease is read again. */
  intervalMs: number;
  /**
   * The agent's host lease: the record goes under it, and this registrar
   * grants, keeps alive and revokes no lease of its own (nor, taking a record
   * over, the lease it took it from: other records may be on it).
   */
  hostLease?: HostLease;
  /** An instance adopted by a restarted agent: whether its record was held (to be read back) and wanted. */
  adopt?: { registered: boolean; desired: boolean };
  /** A host lease: the lease to adopt (kept alive at once, which says whether it lives) and earlier ones of the host. */
  lease?: string;
  staleLeases?: string[];
  /** A host lease: called when the lease changes (granted, lost). */
  onLease?(): void;
}

/** Who holds the record at our key, as far as the registrar knows. */
export type Holding =
  | { kind: "none" }
  | { kind: "ours" }
  /** Another lease ("0": none, written by hand); `orphaned` once inspected: nobody keeps it alive. */
  | { kind: "other"; lease: string; orphaned?: boolean };

/** Everything the registrar knows: the wanted state, the lease, the key, and when each was last seen. */
export interface Known {
  /** Whether the checks want the record registered, and why. */
  desired: boolean;
  reason: string;
  /** The status wanted in the record, and the one last written under our lease, as JSON text ("" for none). */
  status: string;
  writtenStatus: string;
  lease?: string;
  /**
   * The lease ID asked for by a grant not answered yet: a retry asks for the
   * same one, so a grant whose answer was lost (a deadline under load) never
   * leaves a second lease behind.
   */
  granting?: string;
  /** Earlier leases of this process (lost, maybe revived by etcd): revoked once they hold nothing of ours. */
  staleLeases: string[];
  /** A new lease was granted: stale leases that hold nothing of ours are to be revoked. */
  sweepStale: boolean;
  lastKeepAliveSentMs: number;
  lastKeepAliveOkMs: number;
  lastVerifiedMs: number;
  holding: Holding;
  /** The record was ours and went missing (deleted by hand): the next put restores it. */
  restoring: boolean;
  stopping: boolean;
  /** The lease is the agent's host lease, kept by another registrar: no lease actions here. */
  shared: boolean;
}

/** The next thing to do. */
export type Action =
  | { kind: "lose lease"; reason: string }
  | { kind: "grant" }
  | { kind: "sweep stale" }
  | { kind: "keep alive" }
  | { kind: "put" }
  | { kind: "inspect"; lease: string }
  | { kind: "take over"; from: string; reason: string }
  | { kind: "verify" }
  | { kind: "rewrite" }
  | { kind: "delete" }
  | { kind: "forget" }
  | { kind: "wait"; ms: number };

/** What a registrar knows before its first pass. */
export function initialKnown(): Known {
  return {
    desired: false,
    reason: "starting",
    status: "",
    writtenStatus: "",
    staleLeases: [],
    sweepStale: false,
    lastKeepAliveSentMs: 0,
    lastKeepAliveOkMs: 0,
    lastVerifiedMs: 0,
    holding: { kind: "none" },
    restoring: false,
    stopping: false,
    shared: false,
  };
}

/**
 * Whether nobody keeps a lease alive: a holder keeps it alive every third of
 * its TTL, so a lease kept alive never has much less than two thirds left.
 * Such a record is a crashed secretary's (this one's predecessor, restarted
 * by systemd), not a running duplicate's.
 */
export function isOrphaned(lease: { ttlSeconds: number; grantedSeconds: number } | undefined): boolean {
  return lease === undefined || lease.ttlSeconds < (lease.grantedSeconds * 2) / 3 - 1;
}

/**
 * The next action (pure). A lease is kept alive every TTL/3 and counted lost
 * a TTL after its last answer. While wanted, the record is put when absent,
 * taken over when its lease is none, an old one of ours, or one nobody keeps
 * alive, and read back about once a TTL (every interval while another lease
 * holds it); its status is rewritten when it changes. While not wanted, it is
 * deleted if ours. Otherwise: wait until the next keep-alive or read is due.
 * With a shared lease (the agent's), the lease actions are the host lease's
 * registrar's: this one waits while there is no lease, and otherwise only
 * for its next read.
 */
export function plan(known: Known, nowMs: number, timing: { ttlSeconds: number; intervalMs: number }): Action {
  const ttlMs = timing.ttlSeconds * 1000;
  const { lease, holding } = known;
  if (known.stopping) return { kind: "wait", ms: Infinity };
  if (known.shared) {
    if (!lease) return { kind: "wait", ms: Infinity }; // woken when the host's lease is granted
  } else {
    if (lease && nowMs - known.lastKeepAliveOkMs > ttlMs) {
      const seconds = Math.round((nowMs - known.lastKeepAliveOkMs) / 1000);
      return { kind: "lose lease", reason: `no keep-alive answered for ${seconds}s` };
    }
    if (!lease) return { kind: "grant" };
    if (known.sweepStale) return { kind: "sweep stale" };
    if (nowMs - known.lastKeepAliveSentMs >= ttlMs / 3) return { kind: "keep alive" };
  }
  // a record held by another lease is read every interval, so ours follows soon after it goes
  const verifyEveryMs = holding.kind === "other" ? timing.intervalMs : ttlMs;
  if (known.desired) {
    if (holding.kind === "none") return { kind: "put" };
    if (holding.kind === "other") {
      if (holding.lease === "0") return { kind: "take over", from: "0", reason: "the record has no lease" };
      if (known.staleLeases.includes(holding.lease)) {
        return { kind: "take over", from: holding.lease, reason: "an earlier lease of ours" };
      }
      if (holding.orphaned === undefined) return { kind: "inspect", lease: holding.lease };
      if (holding.orphaned) return { kind: "take over", from: holding.lease, reason: "nobody keeps its lease alive" };
    }
    if (nowMs - known.lastVerifiedMs >= verifyEveryMs) return { kind: "verify" };
    if (holding.kind === "ours" && known.status !== known.writtenStatus) return { kind: "rewrite" };
  } else if (holding.kind === "ours") {
    return { kind: "delete" };
  } else if (holding.kind === "other") {
    return { kind: "forget" }; // another secretary's record: not ours to delete
  }
  let waitMs = known.shared ? Infinity : ttlMs / 3 - (nowMs - known.lastKeepAliveSentMs);
  if (known.desired) waitMs = Math.min(waitMs, verifyEveryMs - (nowMs - known.lastVerifiedMs));
  return { kind: "wait", ms: Math.max(0, Math.ceil(waitMs)) };
}

/**
 * How long to wait after `failures` failed calls in a row (pure): etcd back
 * from an outage is found within a second; a refusal (a wrong password: each
 * try costs etcd a bcrypt) and a grant past its deadline (`overloaded`: etcd
 * answers too slowly, and every grant retried is one proposal more) are
 * retried more slowly, up to 15 s. Jittered.
 */
export function backoffMs(failures: number, networkError: boolean, random: number, overloaded = false): number {
  const capMs = Math.min(networkError && !overloaded ? 1000 : 15_000, 100 * 2 ** Math.min(failures, 10));
  return capMs * (0.5 + random / 2);
}

/** A lease ID for a grant to ask for (pure): a positive int64 below 2^62, from two draws of `random`. */
export function newLeaseId(random: () => number): string {
  const high = BigInt(Math.floor(random() * 2 ** 31));
  const low = BigInt(Math.floor(random() * 2 ** 31));
  const id = (high << 31n) | low;
  return String(id === 0n ? 1n : id);
}

/** A status as compared and logged: its JSON text, "" for none. */
function statusText(status: Status | undefined): string {
  return status === undefined ? "" : JSON.stringify(status);
}

/** How often a failing etcd is logged again while it keeps failing. */
const FAILURE_LOG_EVERY_MS = 10_000;

/**
 * The loop around plan(): performs each action against etcd, records what
 * etcd answered, and logs the events (`registered`, `deregistered`, `lease
 * lost`, `record taken over`, …). `reconcile()` runs actions until plan()
 * says wait; `run()` reconciles until stopped; `stop()` revokes every lease.
 * In the agent, one registrar without an instance keeps the host's lease,
 * and each instance's registrar puts its record under it (`hostLease`).
 */
export class EtcdRegistrar implements Registrar {
  readonly key: string;
  #known = initialKnown();
  #statusValue?: Status;
  #registeredAt = "";
  #everRegistered = false;
  /** The other lease last reported as blocking registration, so it is logged once. */
  #blockedBy = "";
  #failures = 0;
  #lastFailureLogMs = 0;
  #wake: () => void = () => {};
  /** release() callers waiting for the record to go. */
  #releasing: (() => void)[] = [];

  constructor(
    readonly options: RegistrarOptions,
    readonly client: EtcdClient,
    readonly effects: Effects,
  ) {
    const known = this.#known;
    const instance = options.instance;
    this.key = instance ? instanceKey(options.prefix, instance.service, instance.ipv4_addr, instance.port) : "";
    known.shared = options.hostLease !== undefined;
    known.staleLeases = [...(options.staleLeases ?? [])];
    if (options.lease) {
      known.lease = options.lease;
      known.lastKeepAliveOkMs = effects.now(); // kept alive at once: that says whether it still lives
    }
    if (options.adopt) {
      known.desired = options.adopt.desired;
      known.reason = "adopted";
      if (options.adopt.registered) known.holding = { kind: "ours" }; // read back at once (lastVerifiedMs 0)
    }
    this.#syncLease();
  }

  /** Whether the record is registered under this process's lease, as far as it knows. */
  get registered(): boolean {
    return this.#known.holding.kind === "ours";
  }

  /** Whether the record may be listed: registered, or wanted (a put may be in flight). */
  get mayBeListed(): boolean {
    return this.registered || this.#known.desired;
  }

  /** Whether the checks want the record. */
  get desired(): boolean {
    return this.#known.desired;
  }

  /** The lease this registrar keeps (a host lease's registrar), or puts its record under. */
  get lease(): string | undefined {
    return this.#known.lease;
  }

  /** Earlier leases of this process (for the host lease: of the host). */
  get staleLeases(): readonly string[] {
    return this.#known.staleLeases;
  }

  /** Looks at the host's lease again now (it changed). */
  nudge(): void {
    this.#wake();
  }

  /**
   * With a shared lease: no longer wants the record, and resolves once it is
   * gone (deleted while under the host's lease, or found gone or another's).
   * run() keeps trying while etcd fails; stop it after.
   */
  release(reason: string): Promise<void> {
    this.want(false, reason);
    return new Promise((resolve) => {
      this.#releasing.push(resolve);
      this.#wake();
    });
  }

  want(registered: boolean, reason: string): void {
    this.#known.desired = registered;
    this.#known.reason = reason;
    this.#wake();
  }

  report(status: Status | undefined): void {
    const text = statusText(status);
    if (text === this.#known.status) return;
    this.#known.status = text;
    this.#statusValue = status;
    this.#wake();
  }

  /** Reconciles until `signal` aborts (then call stop()). */
  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      const waitMs = await this.reconcile();
      if (!this.#known.desired && this.#known.holding.kind !== "ours" && this.#releasing.length > 0) {
        for (const resolve of this.#releasing.splice(0)) resolve();
      }
      const wake = new AbortController();
      this.#wake = () => wake.abort();
      await this.effects.sleep(waitMs, AbortSignal.any([signal, wake.signal]));
    }
  }

  /** Revokes every lease this process made, so its record goes now; bounded by STOP_TIMEOUT_MS. */
  async stop(): Promise<boolean> {
    const known = this.#known;
    known.stopping = true;
    if (known.shared) {
      this.#wake(); // the host's lease is not this registrar's to revoke, nor the client its to close
      return false;
    }
    // a grant in doubt too: its answer may have been lost, and the lease made
    const leases = [
      ...known.staleLeases,
      ...(known.lease ? [known.lease] : []),
      ...(known.granting ? [known.granting] : []),
    ];
    known.lease = known.granting = undefined;
    try {
      await Promise.all(leases.map((l) => this.client.revokeLease(l, STOP_TIMEOUT_MS)));
      return true;
    } catch (err) {
      this.effects.log("warning", "revoke failed", {
        key: this.key,
        ttl: this.options.ttlSeconds,
        reason: `${describeError(err)}; the record expires with its lease`,
      });
      return false;
    } finally {
      this.client.close();
    }
  }

  /** Performs actions until plan() says wait; returns how long to wait (a backoff after a failure). */
  async reconcile(): Promise<number> {
    for (;;) {
      this.#syncLease();
      const action = plan(this.#known, this.effects.now(), this.options);
      if (action.kind === "wait") return action.ms;
      try {
        const called = await this.#perform(action);
        if (called && this.#failures > 0) {
          this.effects.log("notice", "etcd answered", { key: this.key || undefined, failures: this.#failures });
          this.#failures = 0;
        }
      } catch (err) {
        return this.#failed(err);
      }
    }
  }

  /** Performs one action; returns whether it called etcd (and so etcd answered). */
  async #perform(action: Exclude<Action, { kind: "wait" }>): Promise<boolean> {
    const known = this.#known;
    const { log, now } = this.effects;
    const key = this.key;
    switch (action.kind) {
      case "lose lease":
        this.#loseLease(action.reason);
        return false;
      case "forget":
        known.holding = { kind: "none" };
        return false;
      case "grant": {
        const asked = known.granting ??= newLeaseId(this.effects.random);
        let lease = asked;
        let earlier = false;
        try {
          lease = await this.client.grantLease(this.options.ttlSeconds, asked);
        } catch (err) {
          if (!(err instanceof LeaseExistsError)) throw err;
          earlier = true; // an earlier try's answer was lost: that grant went through
        }
        known.granting = undefined;
        if (known.stopping) {
          await this.client.revokeLease(lease).catch(() => {}); // granted while stopping: it must go now
          return true;
        }
        known.lease = lease;
        known.lastKeepAliveOkMs = known.lastKeepAliveSentMs = now();
        // granted some time ago: keep it alive now, which also says whether it still lives
        if (earlier) known.lastKeepAliveSentMs = 0;
        // the host's earlier leases are never swept: records on them are taken over one by one, or expire with them
        known.sweepStale = known.staleLeases.length > 0 && this.options.instance !== undefined;
        log("info", "lease granted", { lease, ttl: this.options.ttlSeconds, earlier: earlier || undefined });
        this.options.onLease?.();
        return true;
      }
      case "sweep stale": {
        // a stale lease that still holds our record is kept: the record moves off it in one write (take over)
        const stored = known.desired ? await this.client.get(key) : undefined;
        const revoke = known.staleLeases.filter((l) => l !== stored?.lease);
        known.staleLeases = known.staleLeases.filter((l) => l === stored?.lease);
        known.sweepStale = false;
        await Promise.all(revoke.map((l) => this.client.revokeLease(l).catch(() => {})));
        return true;
      }
      case "keep alive": {
        known.lastKeepAliveSentMs = now();
        const remaining = await this.client.keepAlive(known.lease!);
        if (remaining <= 0) this.#loseLease("etcd says it expired");
        else known.lastKeepAliveOkMs = known.lastKeepAliveSentMs;
        return true;
      }
      case "put": {
        this.#registeredAt = new Date(now()).toISOString();
        const written = known.status;
        const stored = await this.client.putIfAbsent(key, this.#value(), known.lease!);
        known.lastVerifiedMs = now();
        if (stored.lease === known.lease) this.#registered(written);
        else if (stored.modRevision === "0") known.holding = { kind: "none" }; // deleted between compare and read
        else known.holding = { kind: "other", lease: stored.lease };
        return true;
      }
      case "inspect": {
        const orphaned = isOrphaned(await this.client.leaseTimeToLive(action.lease));
        if (known.holding.kind === "other" && known.holding.lease === action.lease) {
          known.holding = { kind: "other", lease: action.lease, orphaned };
        }
        if (!orphaned && this.#blockedBy !== action.lease) {
          this.#blockedBy = action.lease;
          log("warning", "registration blocked", {
            key,
            lease: known.lease,
            other_lease: action.lease,
            reason: "another lease holds the record and is kept alive; is a second secretary running?",
          });
        }
        return true;
      }
      case "take over": {
        const written = known.status;
        const taken = await this.client.putIfLease(key, this.#value(), known.lease!, action.from);
        known.lastVerifiedMs = now();
        if (!taken) {
          known.holding = { kind: "none" }; // it changed meanwhile: the next put finds out how
          return true;
        }
        const ours = known.staleLeases.includes(action.from);
        known.staleLeases = known.staleLeases.filter((l) => l !== action.from);
        if (!ours) log("notice", "record taken over", { key, other_lease: action.from, reason: action.reason });
        this.#registered(written);
        // it holds nothing now ("0" is no lease); a host's lease may hold other records
        if (action.from !== "0" && !known.shared) await this.client.revokeLease(action.from).catch(() => {});
        return true;
      }
      case "verify": {
        const stored = await this.client.get(key);
        known.lastVerifiedMs = now();
        const was = known.holding;
        if (stored?.lease === known.lease) {
          known.holding = { kind: "ours" };
        } else if (!stored) {
          if (was.kind === "ours") known.restoring = true;
          known.holding = { kind: "none" };
        } else {
          if (was.kind === "ours") log("warning", "record lost", { key, other_lease: stored.lease });
          known.holding = { kind: "other", lease: stored.lease };
        }
        return true;
      }
      case "rewrite": {
        const written = known.status;
        if (await this.client.putIfLease(key, this.#value(), known.lease!, known.lease!)) {
          known.writtenStatus = written;
          log("info", "status changed", { key, status: written });
        } else {
          known.holding = { kind: "none" }; // gone or another's: the next pass finds out which
        }
        return true;
      }
      case "delete": {
        // a transaction: deletes only while the record is still ours
        const deleted = await this.client.deleteIfLease(key, known.lease!);
        known.holding = { kind: "none" };
        log("notice", "deregistered", {
          key,
          reason: known.reason,
          record: deleted ? undefined : "gone or another's",
        });
        return true;
      }
    }
  }

  /** The record is ours now: log it as a registration, or as a restore. */
  #registered(writtenStatus: string): void {
    const known = this.#known;
    known.holding = { kind: "ours" };
    known.writtenStatus = writtenStatus;
    this.#blockedBy = "";
    if (known.restoring) {
      this.effects.log("warning", "record restored", { key: this.key, lease: known.lease, reason: "record missing" });
    } else {
      this.effects.log("notice", "registered", {
        key: this.key,
        lease: known.lease,
        reason: known.reason,
        again: this.#everRegistered || undefined,
      });
    }
    known.restoring = false;
    this.#everRegistered = true;
  }

  /** The record as this registrar writes it: the instance, when it registered, the last status reported. */
  #value(): string {
    return encodeRecord({
      ...this.options.instance!,
      registered_at: this.#registeredAt,
      ...(this.#statusValue ? { status: this.#statusValue } : {}),
    });
  }

  #loseLease(reason: string): void {
    const known = this.#known;
    this.effects.log("warning", "lease lost", { lease: known.lease, reason });
    if (known.lease) known.staleLeases.push(known.lease);
    known.lease = undefined;
    known.holding = { kind: "none" };
    this.options.onLease?.();
  }

  /** With a shared lease: follows the host's lease; a record held under the one before must be put (or taken over) again. */
  #syncLease(): void {
    const host = this.options.hostLease;
    if (!host) return;
    const known = this.#known;
    if (host.lease !== known.lease) {
      if (known.lease !== undefined && known.holding.kind === "ours") known.holding = { kind: "none" };
      known.lease = host.lease;
    }
    known.staleLeases = [...host.staleLeases];
  }

  #failed(err: unknown): number {
    const { log, now, random } = this.effects;
    const known = this.#known;
    if (known.stopping) return 0; // the client was closed under a call in flight: nothing to report
    // the client has already dropped a connection that failed or hung, and moved to the next member
    this.#failures++;
    if (this.#failures === 1 || now() - this.#lastFailureLogMs >= FAILURE_LOG_EVERY_MS) {
      this.#lastFailureLogMs = now();
      log("warning", "etcd call failed", {
        key: this.key || undefined,
        failures: this.#failures,
        reason: describeError(err),
      });
    }
    const overloaded = known.granting !== undefined && isDeadlineError(err);
    return backoffMs(this.#failures, isNetworkError(err), random(), overloaded);
  }
}
