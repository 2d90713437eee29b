/**
 * A burst of removals: thousands of instances deleted at once (a rack losing
 * power, a `del --prefix`), and how long `registry sync` takes to get every
 * one of them out of HAProxy.
 *
 * Debian's HAProxy on units/examples/haproxy/haproxy.cfg and the sync as
 * units/registry-haproxy@.service starts it (bench/shipped-haproxy.ts; the
 * bundle when built and newer than its sources, else the source).
 * `--instances` (5,000) records are put straight into etcd (no secretaries,
 * no lease), each at a real listening address: one process
 * (testbed/traffic.ts `listen`) listens on as many ports of 127.7.1.2 and
 * closes every connection it accepts, so each server passes HAProxy's
 * layer-4 check and is in rotation, as a live instance's would be. Once
 * HAProxy has every one in rotation, one delete-range of the service's
 * prefix (etcd's own API through its JSON gateway, `/v3/kv/deleterange`)
 * removes them all in one revision.
 *
 * Measured from the delete request being sent (the cause: its answer comes
 * after the revision is committed), by polling `show servers state` on the
 * admin socket back to back, or `--poll-ms` apart (the time between two
 * answers is the resolution, also printed): to the first server out of
 * rotation (in maintenance or gone), to the last, and to the last run-time
 * server deleted (slots from the example's `server-template` stay, in
 * maintenance, free). Also: the time to fill the backend from the first put,
 * and the sync's warnings during the burst (an event loop blocked long
 * enough makes HAProxy's answers late).
 *
 * Addresses: etcd on 127.7.0.1, HAProxy on 127.7.1.1, the listeners on
 * 127.7.1.2 from port 20000.
 *
 * ```sh
 * node_modules/.bin/deno run --allow-all bench/burst.ts [--instances 5000] [--json burst.json]
 * node_modules/.bin/deno run --allow-all bench/burst.ts --quick   # 1,000 instances
 * node_modules/.bin/deno run --allow-all bench/burst.ts --source  # the sync from source, bundles or not
 * node_modules/.bin/deno run --allow-all bench/burst.ts --poll-ms 50  # a pause between polls: less load on HAProxy
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { prefixRangeEnd } from "../lib/etcd.ts";
import { DEFAULT_PREFIX, encodeRecord, instanceKey, servicePrefix } from "../lib/record.ts";
import { delay, EtcdCluster, Script, waitFor } from "../testbed/testbed.ts";
import { benchmark, formatMs, now, percentile, type Runtime } from "./lib.ts";
import {
  addressOf,
  chooseRuntime,
  inRotation,
  loadAverage,
  ShippedHAProxy,
  type Snapshot,
  startSync,
} from "./shipped-haproxy.ts";

export interface BurstFigures {
  runtime: Runtime;
  instances: number;
  /** How the records' addresses were served: every one listening (layer-4 check passes). */
  listening: boolean;
  /** First put to the last put answered, and to every instance in rotation in HAProxy. */
  putMs: number;
  fillMs: number | null;
  /** The delete-range: sent to answered, and how many keys it deleted. */
  deleteAnsweredMs: number;
  deleted: number;
  /**
   * Delete sent to the first server out of rotation, to the last, and to the last run-time server deleted; null:
   * not within `outBoundMs`.
   */
  firstOutMs: number | null;
  lastOutMs: number | null;
  clearedMs: number | null;
  outBoundMs: number;
  /** The pause between two polls (0: back to back), and the resolution: median and worst time between answers. */
  pollPauseMs: number;
  pollMedianMs: number;
  pollWorstMs: number;
  /** The sync's warnings from the delete to the end (count, and the first few). */
  syncWarnings: number;
  syncWarningLines: string[];
  loadAverage: number;
}

const SERVICE = "apache"; // the example's backend, and the unit's %i
const LISTEN_IP = "127.7.1.2";
const FIRST_PORT = 20_000;
const FILL_BOUND_MS = 600_000;
const OUT_BOUND_MS = 120_000;

function parseOptions() {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      instances: { type: "string" },
      "poll-ms": { type: "string", default: "0" },
      quick: { type: "boolean", default: false },
      source: { type: "boolean", default: false },
      json: { type: "string" },
    },
  });
  const instances = Number(values.instances ?? (values.quick ? 1000 : 5000));
  if (!Number.isInteger(instances) || instances < 1 || instances > 40_000) {
    console.error(`burst: Cannot use --instances ${values.instances}: expected a whole number from 1 to 40000`);
    Deno.exit(2);
  }
  const pollMs = Number(values["poll-ms"]);
  if (!Number.isInteger(pollMs) || pollMs < 0) {
    console.error(`burst: Cannot use --poll-ms ${values["poll-ms"]}: expected a whole number of ms from 0`);
    Deno.exit(2);
  }
  return { instances, pollMs, source: values.source, json: values.json };
}

/** The i-th instance's key and record. */
function record(i: number): { key: string; value: string; address: string } {
  const port = FIRST_PORT + i;
  return {
    key: instanceKey(DEFAULT_PREFIX, SERVICE, LISTEN_IP, port),
    value: encodeRecord({
      host: "bench",
      ipv4_addr: LISTEN_IP,
      port,
      service: SERVICE,
      registered_at: new Date().toISOString(),
      meta: {},
    }),
    address: `${LISTEN_IP}:${port}`,
  };
}

/** Deletes every key under `prefix` in one request (etcd's JSON gateway): when it was sent, answered, and the count. */
async function deleteRange(endpoint: string, prefix: string) {
  const b64 = (bytes: Uint8Array) => btoa(String.fromCharCode(...bytes));
  const body = JSON.stringify({ key: b64(new TextEncoder().encode(prefix)), range_end: b64(prefixRangeEnd(prefix)) });
  const sentAt = now();
  const res = await fetch(`${endpoint}/v3/kv/deleterange`, { method: "POST", body });
  const answeredAt = now();
  const answer = await res.json();
  if (!res.ok) throw new Error(`deleterange: ${res.status} ${JSON.stringify(answer)}`);
  return { sentAt, answeredAt, deleted: Number(answer.deleted ?? 0) };
}

/** Of `ours`, how many servers are not in maintenance, and how many run-time servers (named by address) are left. */
export function count(snapshot: Snapshot, ours: ReadonlySet<string>): { notOut: number; runTime: number } {
  let notOut = 0;
  let runTime = 0;
  for (const s of snapshot.servers) {
    const address = addressOf(s);
    if (!ours.has(address)) continue;
    if (!s.maint) notOut++;
    if (s.name === address) runTime++;
  }
  return { notOut, runTime };
}

async function main(): Promise<void> {
  const options = parseOptions();
  const runtime = chooseRuntime(options.source);
  const cluster = await EtcdCluster.create(1, { host: "127.7.0.1" });
  const dir = await Deno.makeTempDir({ prefix: "secretary-burst-" });
  const scripts: Script[] = [];
  let haproxy: ShippedHAProxy | undefined;
  const cleanup = async () => {
    await Promise.all(scripts.map((s) => s.stop()));
    await haproxy?.stop();
    await cluster.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  await benchmark(options.json, cleanup, async () => {
    await cluster.start();
    const etcd = cluster.client();
    const endpoint = cluster.endpoints[0];
    haproxy = await ShippedHAProxy.start({ dir: `${dir}/haproxy`, ip: "127.7.1.1", port: 8000, backend: SERVICE });
    const socket = haproxy.adminSocket;
    const sync = await startSync(runtime, { service: SERVICE, dir: haproxy.dir, socket, etcd: new URL(endpoint).host });
    scripts.push(sync);
    const listener = new Script(Deno.execPath(), [
      "run",
      "--allow-net",
      "testbed/traffic.ts",
      "listen",
      LISTEN_IP,
      String(FIRST_PORT),
      String(options.instances),
    ]);
    scripts.push(listener);
    await waitFor(() => listener.stdout.startsWith("listening"), () => `the listeners\n${listener.stderr}`, 60_000);

    // ---- fill: every record put, every server in rotation
    const records = Array.from({ length: options.instances }, (_, i) => record(i));
    const ours = new Set(records.map((r) => r.address));
    const client = haproxy.client(10_000);
    const putAt = now();
    let next = 0;
    await Promise.all(Array.from({ length: 32 }, async () => {
      while (next < records.length) {
        const r = records[next++];
        await etcd.putIfAbsent(r.key, r.value, "0");
      }
    }));
    const putMs = now() - putAt;
    console.log(`${options.instances} records put in ${formatMs(putMs)}; waiting for HAProxy to have them in rotation`);
    const filled = await waitFor(
      async () => {
        if (!listener.running) throw new Error(`the listeners exited:\n${listener.stderr.slice(-2000)}`);
        const s = await haproxy!.snapshot(client).catch(() => undefined);
        const serving = s ? s.servers.filter((x) => inRotation(x) && ours.has(addressOf(x))).length : 0;
        return serving === options.instances && s!.at;
      },
      () => `every server in rotation\n${sync.stderr.slice(-2000)}`,
      FILL_BOUND_MS,
      250,
    ).catch((err) => {
      if (!listener.running) throw err;
      return null; // not all in rotation within the bound: the burst is measured all the same
    });
    const fillMs = filled === null ? null : filled - putAt;
    console.log(`in rotation ${fillMs === null ? "never" : `after ${formatMs(fillMs)}`} from the first put`);
    await delay(2000); // the sync's passes settle (nothing to do)

    // ---- the burst
    const warningsBefore = sync.stderr.split("\n").length;
    const { sentAt, answeredAt, deleted } = await deleteRange(endpoint, `${servicePrefix(DEFAULT_PREFIX, SERVICE)}`);
    let firstOut: number | null = null;
    let lastOut: number | null = null;
    let cleared: number | null = null;
    const answers: number[] = [];
    while (now() - sentAt < OUT_BOUND_MS && cleared === null) {
      const s = await haproxy.snapshot(client).catch(() => undefined);
      if (!s) continue;
      answers.push(s.at);
      const { notOut, runTime } = count(s, ours);
      if (firstOut === null && notOut < options.instances) firstOut = s.at;
      if (lastOut === null && notOut === 0) lastOut = s.at;
      if (lastOut !== null && runTime === 0) cleared = s.at;
      if (options.pollMs) await delay(options.pollMs);
    }
    const gaps = answers.slice(1).map((a, i) => a - answers[i]);
    const warnings = sync.stderr.split("\n").slice(warningsBefore - 1).filter((l) =>
      /warning|refused|no answer/.test(l)
    );
    const figures: BurstFigures = {
      runtime,
      instances: options.instances,
      listening: true,
      putMs,
      fillMs,
      deleteAnsweredMs: answeredAt - sentAt,
      deleted,
      firstOutMs: firstOut === null ? null : firstOut - sentAt,
      lastOutMs: lastOut === null ? null : lastOut - sentAt,
      clearedMs: cleared === null ? null : cleared - sentAt,
      outBoundMs: OUT_BOUND_MS,
      pollPauseMs: options.pollMs,
      pollMedianMs: gaps.length ? percentile(gaps, 50) : NaN,
      pollWorstMs: gaps.length ? Math.max(...gaps) : NaN,
      syncWarnings: warnings.length,
      syncWarningLines: warnings.slice(0, 5),
      loadAverage: loadAverage(),
    };
    etcd.close();
    print(figures);
    return figures;
  });
}

function print(f: BurstFigures): void {
  const ms = (x: number | null) => x === null ? `not within ${f.outBoundMs / 1000} s` : formatMs(x);
  console.log(
    `\n${f.instances.toLocaleString("en")} instances, each at a listening address, deleted at once ` +
      `(one delete-range: ${f.deleted.toLocaleString("en")} keys, answered in ${formatMs(f.deleteAnsweredMs)}); ` +
      `load average ${f.loadAverage}`,
  );
  const rows: [string, string][] = [
    ["first put to every server in rotation", f.fillMs === null ? "not within the bound" : formatMs(f.fillMs)],
    ["delete to the first server out of rotation", ms(f.firstOutMs)],
    ["delete to the last server out of rotation", ms(f.lastOutMs)],
    ["delete to the last run-time server deleted", ms(f.clearedMs)],
    ["HAProxy polled: between answers, median / worst", `${formatMs(f.pollMedianMs)} / ${formatMs(f.pollWorstMs)}`],
    ["the sync's warnings during the burst", String(f.syncWarnings)],
  ];
  for (const [name, value] of rows) console.log(`  ${name.padEnd(48)} ${value}`);
  for (const l of f.syncWarningLines) console.log(`  sync: ${l}`);
}

if (import.meta.main) await main();
