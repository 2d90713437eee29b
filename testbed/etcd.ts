/**
 * etcd for the tests, the demo and the benchmarks: members on free loopback
 * ports with their own data directories (`EtcdMember`, `EtcdCluster`), and
 * the calls only tests and benchmarks make, which the shipped client
 * (lib/etcd.ts) does without: the current revision (`currentRevision`), a
 * member's status and a compaction (`EtcdGateway`, over etcd's JSON gateway),
 * a metric (`etcdMetric`). Stopped by PID, never by name. Deno only.
 *
 * @module
 */
import { Etcd, type EtcdOptions } from "../lib/etcd.ts";
import type { Certs } from "./certs.ts";
import { freePorts, Restartable, waitFor } from "./process.ts";
import { httpGet, httpRequest } from "./targets.ts";

/** The deadline of a test's own etcd calls (see EtcdCluster.client). */
export const TEST_CALL_TIMEOUT_MS = 5000;

/** A prefix no key has: listing it reads nothing but the revision. */
const NO_KEYS = "\0testbed-revision\0";

/**
 * The cluster's current revision, read with `etcd`'s own client (TLS and all)
 * as a listing of a prefix no key has: a linearizable read, as cheap as a
 * count.
 */
export async function currentRevision(etcd: Pick<Etcd, "list">): Promise<string> {
  return (await etcd.list(NO_KEYS)).revision;
}

export class EtcdMember extends Restartable {
  constructor(
    readonly name: string,
    readonly clientUrl: string,
    readonly peerUrl: string,
    readonly dataDir: string,
    readonly cluster: string,
    readonly extraArgs: string[] = [],
  ) {
    super();
  }

  /** Starts the process (not waiting for it to answer). */
  start(clusterState = "new"): void {
    this.spawn("etcd", [
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
    ]);
  }

  /** Stops the process with `signal` and waits for it to exit, however long that takes. */
  stop(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    return this.halt(signal);
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

/**
 * How EtcdCluster.create plans a cluster on `host` that serves TLS with
 * `certs` and requires a client certificate; its own clients present one.
 */
export function clientCertOptions(host: string, certs: Certs): EtcdCreateOptions & { host: string } {
  return {
    host,
    scheme: "https",
    extraArgs: [
      ...["--cert-file", certs.serverCert, "--key-file", certs.serverKey, "--trusted-ca-file", certs.ca],
      "--client-cert-auth",
    ],
    clientOptions: { cacert: certs.ca, cert: certs.clientCert, key: certs.clientKey },
  };
}

/** Adds etcd's root user with `password` and turns authentication on, with etcdctl (and `certs`' client certificate). */
export async function enableAuth(endpoint: string, password: string, certs?: Certs): Promise<void> {
  const tls = certs ? [`--cacert=${certs.ca}`, `--cert=${certs.clientCert}`, `--key=${certs.clientKey}`] : [];
  for (const args of [["user", "add", `root:${password}`, "--interactive=false"], ["auth", "enable"]]) {
    const out = await new Deno.Command("etcdctl", {
      args: [`--endpoints=${endpoint}`, ...tls, ...args],
      env: { ETCDCTL_API: "3" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) throw new Error(`etcdctl ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
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
            await currentRevision(etcd);
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

  /**
   * The member that leads the cluster now, each member given `callTimeoutMs`
   * to say (through its JSON gateway: a plain-http cluster's).
   */
  async leader(callTimeoutMs = 1000): Promise<EtcdMember> {
    for (const m of this.members.filter((m) => m.running)) {
      try {
        const { member, leader } = await new EtcdGateway([m.clientUrl], callTimeoutMs).status();
        if (member === leader) return m;
      } catch {
        /* not answering: not the leader */
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

  /** The answering member's own ID, its cluster's leader's ID (as it sees them) and the revision. */
  async status(): Promise<{ member: string; leader: string; revision: string }> {
    const res = await this.#post("/v3/maintenance/status", {}) as { header: Record<string, string>; leader: string };
    return { member: res.header.member_id, leader: res.leader, revision: res.header.revision };
  }

  /** Compacts the key history up to `revision` (watchers from an older revision get an error). */
  async compact(revision: string): Promise<void> {
    await this.#post("/v3/kv/compaction", { revision, physical: true });
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
