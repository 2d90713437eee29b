/**
 * The scripts under test run as child processes (`Script`, `runScript`), and
 * a bed for one secretary at a time: a fresh one-member etcd, targets and
 * secretaries, all stopped by PID whatever happens (`withBed`). Deno only.
 *
 * @module
 */
import type { Etcd } from "../lib/etcd.ts";
import { DEFAULT_PREFIX, instanceKey } from "../lib/record.ts";
import type { EtcdCluster } from "./etcd.ts";
import type { Loopback } from "./loopback.ts";
import { READY_MS, ROOT, Spawned } from "./process.ts";
import { TestServer } from "./targets.ts";

/**
 * The least permissions for running a script from source. From source, etcd3
 * reads its `.proto` files from node_modules at start; the bundles carry them.
 */
export const SOURCE_FLAGS = ["--allow-net", "--allow-env", "--allow-read=/etc/environment,node_modules"];

/** A script (or any program) run as a child process from the repository, its output collected. */
export class Script extends Spawned {
  /** Starts `command`; `clearEnv` gives it only `env` (as systemd would), `cwd` defaults to the repository. */
  constructor(
    command: string,
    args: string[],
    env: Record<string, string> = {},
    options: { cwd?: string; clearEnv?: boolean } = {},
  ) {
    super(command, args, { env, clearEnv: options.clearEnv, cwd: options.cwd ?? ROOT });
  }

  /** Runs `deno run <flags> <script> <args>` from the repository root. */
  static deno(script: string, args: string[], options: { flags?: string[]; env?: Record<string, string> } = {}) {
    return new Script(Deno.execPath(), ["run", ...(options.flags ?? ["--allow-all"]), script, ...args], options.env);
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
