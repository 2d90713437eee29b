/**
 * bench/leases.ts's registrar threads: a worker thread runs its share of the
 * simulated instances' registrars (lib/registrar.ts's EtcdRegistrar, one etcd
 * connection each, as each secretary has), times their keep-alives and counts
 * what they log; `RegistrarThread` is the main thread's handle on one. This
 * module is the worker's: loaded as one, it serves the main thread's requests.
 *
 * With `perAgent`, the instances are the agents' instead: every `perAgent`
 * consecutive instances are one agent's, and the agent is what lib/agent.ts
 * makes of it, checks aside: one etcd connection, one registrar without an
 * instance that grants and keeps alive the host's lease, and each instance's
 * registrar putting its record under it (`hostLease`).
 *
 * With `streamPerKeepAlive`, each connection ends its LeaseKeepAlive stream
 * as soon as a keep-alive is answered (Etcd.endKeepAliveStream), so the next
 * keep-alive opens a new one: the secretary's old behaviour, a stream a
 * keep-alive, to measure against one stream a connection. Only the
 * registrar that keeps a lease alive sends keep-alives on its connection
 * (a sidekick's own, an agent's host lease), so no other keep-alive waits
 * on the stream ended.
 *
 * "shed" stops instances as a stopped secretary stops (its registrar's stop
 * signal aborted, then `stop()`: its lease revoked, bounded by
 * STOP_TIMEOUT_MS, and its connection closed), and drops them from the
 * thread's fleet, so "report" counts only the instances kept.
 *
 * @module
 */
import { sleep } from "../../lib/cli.ts";
import { Etcd } from "../../lib/etcd.ts";
import { DEFAULT_PREFIX, instanceKey } from "../../lib/record.ts";
import { type EtcdClient, EtcdRegistrar } from "../../lib/registrar.ts";
import { delay } from "../../testbed/testbed.ts";
import { now, percentile } from "../lib.ts";

/** The service every simulated instance belongs to. */
export const SERVICE = "leases";
/** The secretary's default deadline for one etcd call (lib/etcd.ts). */
const CALL_TIMEOUT_MS = 1500;
/** The secretary's default check interval: how often a record held by another lease is read again. */
const INTERVAL_MS = 2000;

/** Instance `index`'s address (10.x.y.z) and key. */
function addressOf(index: number): string {
  return `10.${(index >> 16) & 255}.${(index >> 8) & 255}.${index & 255}`;
}
export function keyOf(index: number): string {
  return instanceKey(DEFAULT_PREFIX, SERVICE, addressOf(index), 8080);
}

/** Samples an event loop's lag: how late a 100 ms timer fires. */
export class LoopLag {
  samples: number[] = [];
  #timer?: ReturnType<typeof setInterval>;
  start(): void {
    let expected = performance.now() + 100;
    this.#timer = setInterval(() => {
      const t = performance.now();
      this.samples.push(Math.max(0, t - expected));
      expected = t + 100;
    }, 100);
  }
  stop(): void {
    clearInterval(this.#timer);
  }
}

// ---------------------------------------------------------------------------
// A worker thread running its share of the instances' registrars

/** What the main thread asks a worker. */
export type ThreadRequest =
  | {
    type: "start";
    indexes: number[];
    /** Instance i is in group i mod groups: host `host-<group>`, and the group's endpoints. */
    groups: number;
    endpointsByGroup: string[][];
    ttlSeconds: number;
    /** Instance `index` starts at `startedAt + index * spacingMs` (ms since the epoch). */
    startedAt: number;
    spacingMs: number;
    /** Instances per agent, each agent's in one thread; 0: a sidekick (a lease, a connection) each. */
    perAgent: number;
    /** End each connection's keep-alive stream after every keep-alive answer: a stream a keep-alive. */
    streamPerKeepAlive?: boolean;
  }
  | { type: "measure"; on: boolean }
  /** `at`: when the main thread sent it (ms since the epoch); answered with how late the thread acted on it (ms). */
  | { type: "kill"; indexes: number[]; at: number }
  /**
   * Stop these instances as a stopped secretary stops (lease revoked, connection closed) and leave them out of
   * every report from now on; answered at once, the revokes still in flight (their failures in `revokeFailures`).
   * Sidekicks only: an agent's instances hold no lease of their own to revoke.
   */
  | { type: "shed"; indexes: number[] }
  | { type: "report" }
  | { type: "stop" };

/** A worker's answer to "report" (and to "measure", with the window's samples when it ends). */
export interface ThreadReport {
  registered: number;
  unregistered: number[];
  /** When each instance's registrar logged `lease lost` (index, ms since the epoch). */
  leasesLost: [number, number][];
  callFailures: { at: number; reason: string }[];
  keepAliveMs: number[];
  keepAliveFailures: number;
  lagP99Ms: number;
  /** Why shed instances' lease revokes failed (digits as N), and how many: their records expire with their leases. */
  revokeFailures: [string, number][];
  /** Leases the kept instances' registrars were granted (their `lease granted` events) since the last "shed". */
  keptGrants: number;
}

/** The worker's side: runs the registrars it is given, counts what they do, answers the main thread. */
function registrarThread(): void {
  const scope = self as unknown as {
    onmessage: (e: MessageEvent<{ id: number; request: ThreadRequest }>) => void;
    postMessage(m: unknown): void;
  };
  let stopped = false;
  // each registrar its own stop signal, as each secretary has: one shared signal would gather thousands of
  // AbortSignal.any() dependents a second (a registrar makes one each time it waits)
  const fleet: { index: number; etcd: Etcd; registrar: EtcdRegistrar; stop: AbortController }[] = [];
  const lag = new LoopLag();
  let measuring = false;
  let keepAliveMs: number[] = [];
  let keepAliveFailures = 0;
  const leasesLost: [number, number][] = [];
  const callFailures: { at: number; reason: string }[] = [];
  /** The instances shed: not started if their turn has not come yet. */
  const shed = new Set<number>();
  const revokeFailures = new Map<string, number>();
  let keptGrants = 0;

  /** Set by "start": end the keep-alive stream after each answer (see the module doc). */
  let streamPerKeepAlive = false;

  /** A client that times each keep-alive (the registrar's own call) and passes everything else on. */
  const timed = (etcd: Etcd): EtcdClient => ({
    grantLease: (ttl, id) => etcd.grantLease(ttl, id),
    keepAlive: async (lease) => {
      const start = now();
      try {
        const remaining = await etcd.keepAlive(lease);
        // the old behaviour: the next keep-alive opens its own stream (its set-up in that keep-alive's time)
        if (streamPerKeepAlive) etcd.endKeepAliveStream();
        if (measuring) keepAliveMs.push(now() - start);
        return remaining;
      } catch (err) {
        if (measuring) keepAliveFailures++;
        throw err;
      }
    },
    leaseTimeToLive: (lease) => etcd.leaseTimeToLive(lease),
    revokeLease: (lease, timeoutMs) => etcd.revokeLease(lease, timeoutMs),
    putIfAbsent: (key, value, lease) => etcd.putIfAbsent(key, value, lease),
    putIfLease: (key, value, lease, previous) => etcd.putIfLease(key, value, lease, previous),
    deleteIfLease: (key, lease) => etcd.deleteIfLease(key, lease),
    get: (key) => etcd.get(key),
    close: () => etcd.close(),
  });

  const report = (): ThreadReport => ({
    registered: fleet.filter((i) => i.registrar.registered).length,
    unregistered: fleet.filter((i) => !i.registrar.registered).map((i) => i.index),
    leasesLost,
    callFailures,
    keepAliveMs,
    keepAliveFailures,
    lagP99Ms: lag.samples.length ? percentile(lag.samples, 99) : NaN,
    revokeFailures: [...revokeFailures],
    keptGrants,
  });

  const revokeFailed = (reason: string) => {
    const key = reason.replace(/\d+/g, "N");
    revokeFailures.set(key, (revokeFailures.get(key) ?? 0) + 1);
  };

  /** The registrar's effects for instance `index`: its lease lost and failed calls counted, never printed. */
  const effectsOf = (indexes: () => number[]) => ({
    now: Date.now,
    sleep,
    random: Math.random,
    // counted, never printed: 10,000 registrations would drown the output
    log: (_level: string, event: string, fields?: Record<string, unknown>) => {
      if (event === "lease lost") { for (const index of indexes()) leasesLost.push([index, now()]); }
      if (event === "etcd call failed") callFailures.push({ at: now(), reason: String(fields?.reason) });
      if (event === "revoke failed") revokeFailed(String(fields?.reason));
      if (event === "lease granted") keptGrants++;
    },
  });

  /** The agents of this thread (with `perAgent`): their connection, host lease and instances' registrars. */
  const agents = new Map<number, { etcd: Etcd; host: EtcdRegistrar; instances: EtcdRegistrar[]; indexes: number[] }>();
  const agentStop = new AbortController();

  /** Agent `a` (created at its first instance's start): as lib/agent.ts's Agent makes it, a host lease kept alive. */
  const agentOf = (a: number, request: Extract<ThreadRequest, { type: "start" }>) => {
    const existing = agents.get(a);
    if (existing) return existing;
    const group = a % request.groups;
    const etcd = new Etcd({ endpoints: request.endpointsByGroup[group], callTimeoutMs: CALL_TIMEOUT_MS });
    const indexes: number[] = [];
    const instances: EtcdRegistrar[] = [];
    const host = new EtcdRegistrar(
      {
        prefix: DEFAULT_PREFIX,
        ttlSeconds: request.ttlSeconds,
        intervalMs: 1000, // lib/agent.ts's host lease
        onLease: () => {
          for (const r of instances) r.nudge();
        },
      },
      timed(etcd),
      // the host's lease lost is every one of its instances'
      effectsOf(() => indexes),
    );
    void host.run(agentStop.signal);
    const agent = { etcd, host, instances, indexes };
    agents.set(a, agent);
    return agent;
  };

  const start = async (request: Extract<ThreadRequest, { type: "start" }>) => {
    for (const index of request.indexes) {
      const wait = request.startedAt + index * request.spacingMs - now();
      if (wait > 1) await delay(wait);
      if (stopped) return;
      if (shed.has(index)) continue;
      const agent = request.perAgent ? agentOf(Math.floor(index / request.perAgent), request) : undefined;
      const group = agent ? Math.floor(index / request.perAgent) % request.groups : index % request.groups;
      const etcd = agent?.etcd ??
        new Etcd({ endpoints: request.endpointsByGroup[group], callTimeoutMs: CALL_TIMEOUT_MS });
      const registrar = new EtcdRegistrar(
        {
          prefix: DEFAULT_PREFIX,
          instance: {
            host: agent ? `agent-${Math.floor(index / request.perAgent)}` : `host-${group}`,
            ipv4_addr: addressOf(index),
            port: 8080,
            service: SERVICE,
            meta: {},
          },
          ttlSeconds: request.ttlSeconds,
          intervalMs: INTERVAL_MS,
          ...(agent ? { hostLease: agent.host } : {}),
        },
        timed(etcd),
        effectsOf(() => [index]),
      );
      agent?.instances.push(registrar);
      agent?.indexes.push(index);
      const stop = new AbortController();
      registrar.want(true, "check passed");
      void registrar.run(stop.signal);
      fleet.push({ index, etcd, registrar, stop });
    }
  };

  scope.onmessage = (e) => {
    const { id, request } = e.data;
    const answer = (value: unknown) => scope.postMessage({ id, value });
    switch (request.type) {
      case "start":
        streamPerKeepAlive = request.streamPerKeepAlive ?? false;
        lag.start();
        void start(request);
        return answer(null);
      case "measure":
        measuring = request.on;
        if (request.on) {
          keepAliveMs = [];
          keepAliveFailures = 0;
          lag.samples = [];
        }
        return answer(report());
      case "kill": {
        const mine = new Set(request.indexes);
        for (const i of fleet) if (mine.has(i.index)) i.registrar.want(false, "check failed");
        return answer(now() - request.at);
      }
      case "shed": {
        for (const index of request.indexes) shed.add(index);
        keptGrants = 0; // a stopping registrar logs no "lease granted": from here on, the kept's alone
        for (let n = fleet.length - 1; n >= 0; n--) {
          const i = fleet[n];
          if (!shed.has(i.index)) continue;
          fleet.splice(n, 1);
          i.stop.abort();
          // stop() revokes the lease and closes the connection, as the secretary's SIGTERM does; a failed revoke
          // is logged as "revoke failed" (counted above)
          i.registrar.stop().catch((err) => revokeFailed(`stop() threw: ${err}`));
        }
        return answer(null);
      }
      case "report":
        return answer(report());
      case "stop":
        stopped = true;
        lag.stop();
        agentStop.abort();
        for (const i of fleet) {
          i.stop.abort();
          if (!agents.size) i.etcd.close();
        }
        for (const agent of agents.values()) agent.etcd.close();
        return answer(null);
    }
  };
}

/** The main thread's handle on one worker. */
export class RegistrarThread {
  readonly #worker = new Worker(import.meta.url, { type: "module" });
  #next = 0;
  readonly #pending = new Map<number, (value: unknown) => void>();

  constructor() {
    this.#worker.onmessage = (e: MessageEvent<{ id: number; value: unknown }>) => {
      this.#pending.get(e.data.id)?.(e.data.value);
      this.#pending.delete(e.data.id);
    };
  }

  ask(request: Extract<ThreadRequest, { type: "report" | "measure" }>): Promise<ThreadReport>;
  ask(request: ThreadRequest): Promise<unknown>;
  ask(request: ThreadRequest): Promise<unknown> {
    const id = this.#next++;
    return new Promise((resolve) => {
      this.#pending.set(id, resolve);
      this.#worker.postMessage({ id, request });
    });
  }

  /** Stops its registrars and closes their connections (5 s at most), then ends the thread. */
  async stop(): Promise<void> {
    await Promise.race([this.ask({ type: "stop" }), delay(5000)]);
    this.#worker.terminate();
  }
}

if (typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== "undefined") {
  registrarThread(); // this module loaded as a worker
}
