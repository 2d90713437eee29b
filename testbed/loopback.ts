/**
 * Addresses: a loopback block of its own for every test file
 * (LOOPBACK_BLOCKS), and the file's view of it (`loopback(import.meta.url)`).
 *
 * @module
 */
import { EtcdCluster, type EtcdCreateOptions } from "./etcd.ts";

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
 * | 127.0.1–9.x  | bench/ (a third octet per benchmark: removal, killed, cost, memory, checks; 127.0.7.2xx memory's agent hosts, 127.0.8 agent) |
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
  "agent_test.ts": 49,
  "agent_units_test.ts": 50,
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
    throw new Error(`${file} has no loopback block: give it one in LOOPBACK_BLOCKS (testbed/loopback.ts)`);
  }
  return new Loopback(file, block);
}
