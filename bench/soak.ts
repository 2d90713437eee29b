/**
 * Soak (not a test): `--instances` secretaries against a three-member etcd
 * for `--minutes`, with a member restarted (SIGKILL or SIGTERM, down a few
 * seconds, started again on its data) every `--restart-every` seconds, and
 * each target stopped (no longer listening, or hung) and started again at
 * random. A sampler lists the prefix every 150 ms (through etcd's JSON gateway,
 * any member that answers) and compares the registry with the truth.
 *
 * A disagreement runs from the target's change (or the last sample that
 * agreed, if later) to the first sample that agrees. Per instance it reports
 * the longest time a healthy instance was missing and the longest time a dead
 * one stayed listed, and how many of each went beyond the bounds, the
 * targets at the default settings:
 * - missing: 3 s after the target answers again (the next check within the
 *   2 s interval, a re-check 250 ms later, then the put);
 * - dead listed: 2.5 s after the target stops listening, 4.5 s after it hangs
 *   (each check then waits out its 1 s timeout).
 * Those that overlap a member's restart (from its stop to 2 s after it
 * answers again) are counted apart: one member down keeps the quorum, but a
 * client on that member fails over only after a call's deadline, and a
 * leader's restart costs an election.
 *
 * ```sh
 * node_modules/.bin/deno run -A bench/soak.ts [--instances 10] [--minutes 30] [--restart-every 180]
 * node_modules/.bin/deno run -A bench/soak.ts --minutes 3 --restart-every 45     # a short check
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { delay, EtcdCluster, type Script, TestServer, waitFor } from "../testbed/testbed.ts";
import { benchmark, formatMs, keyOf, mainRuntime, now, startSecretary } from "./lib.ts";

export const MISSING_BOUND_MS = 3000;
export const DEAD_BOUND_MS = { closed: 2500, hang: 4500 } as const;
/** How long after a restarted member answers its effects may still show. */
const RESTART_SHADOW_MS = 2000;
const SAMPLE_EVERY_MS = 150;

type Down = keyof typeof DEAD_BOUND_MS;

/** One disagreement between the registry and the truth. */
interface Episode {
  kind: "missing" | "dead listed";
  start: number;
  ms: number;
  boundMs: number;
  duringRestart: boolean;
}

/** One instance: its target, its secretary, the truth and what the registry showed. */
interface Instance {
  target: TestServer;
  script: Script;
  key: string;
  up: boolean;
  down: Down;
  changedAt: number;
  lastAgreed: number;
  open?: number;
  ups: number;
  downs: number;
  episodes: Episode[];
  exited: boolean;
  /** How often its secretary exited and was started again, as systemd would. */
  crashes: number;
  /** How long its log was at each sample, to date its lines (they carry no time: journald adds it). */
  logMarks: { at: number; length: number }[];
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    instances: { type: "string", default: "10" },
    minutes: { type: "string", default: "30" },
    "restart-every": { type: "string", default: "180" },
    json: { type: "string" },
  },
});
const count = Number(values.instances);
const runMs = Number(values.minutes) * 60_000;
const restartEveryMs = Number(values["restart-every"]) * 1000;

const cluster = await EtcdCluster.create(3);
const instances: Instance[] = [];
const restarts: { member: string; signal: string; stoppedAt: number; answeredAt: number }[] = [];
let stopping = false;

function duringRestart(start: number, end: number): boolean {
  return restarts.some((r) => start <= r.answeredAt + RESTART_SHADOW_MS && end >= r.stoppedAt);
}

/** Closes the instance's open disagreement at `end`. */
function close(inst: Instance, end: number): void {
  if (inst.open === undefined) return;
  const ms = end - inst.open;
  inst.episodes.push({
    kind: inst.up ? "missing" : "dead listed",
    start: inst.open,
    ms,
    boundMs: inst.up ? MISSING_BOUND_MS : DEAD_BOUND_MS[inst.down],
    duringRestart: duringRestart(inst.open, end),
  });
  inst.open = undefined;
}

/** Records one listing, taken at `at`. */
function observe(listed: Set<string>, at: number): void {
  for (const inst of instances) {
    const length = inst.script.stderr.length;
    if (length !== inst.logMarks.at(-1)?.length) inst.logMarks.push({ at, length });
    if (listed.has(inst.key) === inst.up) {
      close(inst, at);
      inst.lastAgreed = at;
    } else if (inst.open === undefined) {
      inst.open = Math.max(inst.changedAt, inst.lastAgreed);
    }
  }
}

async function toggle(inst: Instance): Promise<void> {
  const at = now();
  close(inst, at);
  if (inst.up) {
    inst.down = Math.random() < 0.7 ? "closed" : "hang";
    if (inst.down === "closed") await inst.target.setMode("closed");
    else inst.target.mode = "hang";
    inst.downs++;
  } else {
    await inst.target.setMode("ok");
    inst.ups++;
  }
  inst.up = !inst.up;
  inst.changedAt = at;
}

async function chaosTargets(until: number): Promise<void> {
  await Promise.all(instances.map(async (inst) => {
    while (!stopping) {
      const wait = 10_000 + Math.random() * 30_000;
      if (now() + wait > until) return;
      await delay(wait);
      if (!stopping) await toggle(inst);
    }
  }));
}

async function chaosMembers(until: number, log: (line: string) => void): Promise<void> {
  while (!stopping && now() + restartEveryMs < until) {
    await delay(restartEveryMs);
    if (stopping || now() > until) return;
    const member = cluster.members[Math.floor(Math.random() * cluster.members.length)];
    const signal = Math.random() < 0.5 ? "SIGKILL" : "SIGTERM";
    const restart = { member: member.name, signal, stoppedAt: now(), answeredAt: Infinity };
    restarts.push(restart);
    await member.stop(signal);
    await delay(2000 + Math.random() * 8000);
    member.start();
    try {
      // its /health over plain HTTP: no gRPC client in this process (see listKeys)
      await waitFor(
        async () => {
          const res = await fetch(`${member.clientUrl}/health`, { signal: AbortSignal.timeout(1000) }).catch(() =>
            null
          );
          return res?.ok && (await res.json()).health === "true";
        },
        `${member.name} healthy`,
        60_000,
        100,
      );
    } catch (err) {
      log(`${member.name} did not answer within 60 s after its restart: ${err}`);
    }
    restart.answeredAt = now();
    log(`restarted ${member.name} (${signal}), down ${formatMs(restart.answeredAt - restart.stoppedAt)}`);
  }
}

/**
 * Lists the keys under `prefix` through etcd's JSON gateway, trying each
 * member in turn. Plain fetch, not the gRPC client: under Deno, grpc-js's
 * HTTP/2 can abort the whole process when a member goes away (nghttp2's
 * `find_stream_on_goaway_func` assertion), and the sampler must outlive
 * what it watches.
 */
async function listKeys(prefix: string): Promise<Set<string>> {
  const body = JSON.stringify({ key: btoa(prefix), range_end: btoa(prefixEnd(prefix)), keys_only: true });
  let lastError: unknown;
  for (const endpoint of [...cluster.endpoints].sort(() => Math.random() - 0.5)) {
    try {
      const res = await fetch(`${endpoint}/v3/kv/range`, { method: "POST", body, signal: AbortSignal.timeout(1000) });
      if (!res.ok) throw new Error(`${endpoint}: ${res.status} ${await res.text()}`);
      const { kvs = [] } = await res.json() as { kvs?: { key: string }[] };
      return new Set(kvs.map((kv) => atob(kv.key)));
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError;
}

/** The end of the key range of `prefix` (its last byte plus one). */
function prefixEnd(prefix: string): string {
  return prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1);
}

async function sample(until: number): Promise<{ samples: number; failed: number }> {
  let samples = 0;
  let failed = 0;
  while (!stopping && now() < until) {
    const next = now() + SAMPLE_EVERY_MS;
    try {
      observe(await listKeys("/services/"), now());
      samples++;
    } catch {
      failed++;
    }
    await delay(Math.max(0, next - now()));
  }
  return { samples, failed };
}

/** The secretary's log lines written between two times, as far as the samples date them. */
function logBetween(inst: Instance, from: number, to: number): string {
  const start = inst.logMarks.findLast((m) => m.at <= from)?.length ?? 0;
  const end = inst.logMarks.find((m) => m.at >= to)?.length ?? inst.script.stderr.length;
  return inst.script.stderr.slice(start, end).trim().split("\n").filter(Boolean).map((l) => `  ${l}`).join("\n");
}

function longest(inst: Instance, kind: Episode["kind"]): number {
  return Math.max(0, ...inst.episodes.filter((e) => e.kind === kind).map((e) => e.ms));
}

function beyond(inst: Instance, kind: Episode["kind"]): { all: number; restart: number } {
  const over = inst.episodes.filter((e) => e.kind === kind && e.ms > e.boundMs);
  return { all: over.length, restart: over.filter((e) => e.duringRestart).length };
}

async function main() {
  const began = now();
  const log = (line: string) => console.log(`${((now() - began) / 60_000).toFixed(1).padStart(5)}m  ${line}`);
  await cluster.start();
  const runtime = mainRuntime();
  for (let i = 0; i < count; i++) {
    const target = await TestServer.start(`127.2.0.${i + 1}`);
    const script = startSecretary(target, cluster.endpoints, { runtime });
    const inst: Instance = {
      target,
      script,
      key: keyOf(target),
      up: true,
      down: "closed",
      changedAt: 0,
      lastAgreed: 0,
      ups: 0,
      downs: 0,
      episodes: [],
      exited: false,
      crashes: 0,
      logMarks: [],
    };
    // as systemd's Restart=on-failure with RestartSec=2s: a secretary that fails is started again
    const watchExit = (script: Script) =>
      script.status.then(async (status) => {
        if (stopping) return;
        inst.exited = true;
        inst.crashes++;
        log(`secretary of ${inst.key} exited with ${status.code} (signal ${status.signal}); starting it again in 2 s`);
        console.log(script.stderr.trim().split("\n").slice(-8).map((l) => `  ${l}`).join("\n"));
        await delay(2000);
        if (stopping || status.code === 2) return;
        inst.script = startSecretary(target, cluster.endpoints, { runtime });
        inst.exited = false;
        watchExit(inst.script);
      });
    watchExit(script);
    instances.push(inst);
  }
  // the first registrations are the start, not the soak: wait for them
  for (let i = 0; i < 100; i++) {
    if ((await listKeys("/services/").catch(() => new Set())).size === count) break;
    await delay(200);
  }
  const start = now();
  for (const inst of instances) inst.changedAt = inst.lastAgreed = start;
  const until = start + runMs;
  log(`${count} secretaries (${runtime}) registered on 3 members; soaking for ${values.minutes} min`);

  const progress = (async () => {
    while (!stopping && now() + 60_000 < until) {
      await delay(60_000);
      const up = instances.filter((i) => i.up).length;
      const over = instances.reduce((n, i) => n + beyond(i, "missing").all + beyond(i, "dead listed").all, 0);
      const exited = instances.filter((i) => i.exited).length;
      log(
        `members ${cluster.members.filter((m) => m.running).length}/3, targets up ${up}/${count}, ` +
          `restarts ${restarts.length}, episodes beyond bounds ${over}, secretaries exited ${exited}`,
      );
    }
  })();
  const [sampled] = await Promise.all([sample(until), chaosTargets(until), chaosMembers(until, log), progress]);
  for (const inst of instances) close(inst, now());
  return { sampled, start };
}

function report(sampled: { samples: number; failed: number }, minutes: number) {
  const rows = [[
    "instance",
    "up",
    "longest missing",
    `missing > ${MISSING_BOUND_MS / 1000} s`,
    "down",
    "longest dead listed",
    "dead listed > bound",
    "lease lost",
    "secretary crashes",
  ]];
  for (const inst of instances) {
    const m = beyond(inst, "missing");
    const d = beyond(inst, "dead listed");
    rows.push([
      `${inst.target.host}:${inst.target.port}`,
      String(inst.ups),
      formatMs(longest(inst, "missing")),
      `${m.all} (${m.restart} in a restart)`,
      String(inst.downs),
      formatMs(longest(inst, "dead listed")),
      `${d.all} (${d.restart} in a restart)`,
      String(inst.script.stderr.split("\n").filter((l) => l.includes("lease lost")).length),
      String(inst.crashes),
    ]);
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  console.log("");
  console.log(
    `soak: ${count} instances, ${minutes.toFixed(1)} min, ${restarts.length} member restarts, ` +
      `${sampled.samples} samples (${sampled.failed} failed)`,
  );
  console.log(
    `bounds: missing ${MISSING_BOUND_MS / 1000} s after answering; dead listed ${
      DEAD_BOUND_MS.closed / 1000
    } s after it stops listening, ${
      DEAD_BOUND_MS.hang / 1000
    } s after it hangs ("up"/"down": times the target was started/stopped)`,
  );
  for (const row of rows) console.log(row.map((cell, i) => cell.padEnd(widths[i])).join("  "));
  for (const inst of instances) {
    for (const e of inst.episodes.filter((e) => e.ms > e.boundMs)) {
      console.log(`\n${inst.key}: ${e.kind} for ${formatMs(e.ms)} (bound ${formatMs(e.boundMs)}); its log then:`);
      console.log(logBetween(inst, e.start - 1000, e.start + e.ms + 500) || "  (nothing)");
    }
  }
}

const cleanup = async () => {
  stopping = true;
  for (const inst of instances) inst.script.kill("SIGTERM");
  await Promise.race([Promise.all(instances.map((i) => i.script.finished())), delay(10_000)]);
  await Promise.all(instances.map((i) => i.script.stop("SIGKILL")));
  await Promise.all(instances.map((i) => i.target.close()));
  await cluster.stop();
};
await benchmark(values.json, cleanup, async () => {
  const { sampled, start } = await main();
  const minutes = (now() - start) / 60_000;
  report(sampled, minutes);
  return {
    minutes,
    restarts,
    sampled,
    instances: instances.map((i) => ({
      key: i.key,
      ups: i.ups,
      downs: i.downs,
      crashes: i.crashes,
      episodes: i.episodes,
    })),
  };
});
