/**
 * Many sidekicks on this host against one etcd (100 by default, each with
 * its own target on 127.1.x.y, started `--rate` a second, about what two
 * cores start without falling behind): the time until all
 * are registered; etcd's proposals, puts and watch events over a steady
 * `--minutes` window, and the sidekicks' memory and CPU; then `--kill`
 * targets killed at once: were exactly those gone, each within the bound
 * (2.5 s, the target for one), and every other record left alone?
 *
 * ```sh
 * node_modules/.bin/deno run -A bench/scale.ts [--instances 100] [--kill 10] [--minutes 1] [--rate 4]
 * node_modules/.bin/deno run -A bench/scale.ts --quick     # 20 instances, 4 killed, a 15 s window
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { delay, EtcdCluster, type Script, TestServer } from "../testbed/testbed.ts";
import {
  benchmark,
  cpuSecondsOf,
  formatMiB,
  formatMs,
  formatTimes,
  KeyClock,
  keyOf,
  mainRuntime,
  memoryOf,
  metricsDelta,
  now,
  pssOf,
  scrapeMetrics,
  startSecretary,
  summarize,
} from "./lib.ts";

/** How long a killed target's record may stay: the target for one, at the default settings. */
export const KILLED_BOUND_MS = 2500;

export interface ScaleFigures {
  runtime: string;
  instances: number;
  /** From the first start to the last registration. */
  allRegisteredMs: number;
  startToRegistered: number[];
  windowMinutes: number;
  proposalsPerMinute: number;
  putsPerMinute: number;
  watchEventsPerMinute: number;
  rssKiB: number[];
  pssTotalKiB: number;
  cpuSecondsPerHour: number[];
  killed: number[];
  /** The bound `killedWithinBound` counts against. */
  killedBoundMs: number;
  killedGone: number;
  killedWithinBound: number;
  /** Healthy instances' records deregistered while the host was busy starting them all. */
  flapsDuringStart: number;
  /** Records of healthy instances deleted after the start, or missing at the end: should be 0. */
  othersLost: number;
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    instances: { type: "string" },
    kill: { type: "string" },
    minutes: { type: "string" },
    rate: { type: "string", default: "4" },
    quick: { type: "boolean", default: false },
    json: { type: "string" },
  },
});
const count = Number(values.instances ?? (values.quick ? 20 : 100));
const killCount = Math.min(count, Number(values.kill ?? (values.quick ? 4 : 10)));
const windowMs = Number(values.minutes ?? (values.quick ? 0.25 : 1)) * 60_000;

const cluster = await EtcdCluster.create(1);
const etcd = cluster.client(5000);
const targets: TestServer[] = [];
const scripts: Script[] = [];
let clock: KeyClock | undefined;

async function main(): Promise<ScaleFigures> {
  await cluster.start();
  clock = await KeyClock.start(etcd);
  const runtime = mainRuntime();
  console.log(`starting ${count} sidekicks (${runtime}), ${values.rate} a second`);
  const startedAt: number[] = [];
  for (let i = 0; i < count; i++) {
    const target = await TestServer.start(`127.1.${Math.floor(i / 250)}.${(i % 250) + 1}`);
    targets.push(target);
    startedAt.push(now());
    scripts.push(startSecretary(target, cluster.endpoints, { runtime }));
    await delay(1000 / Number(values.rate));
  }
  const registeredAt = await Promise.all(targets.map((t) => clock!.until("put", keyOf(t), 0, 180_000)));
  const allRegisteredMs = Math.max(...registeredAt) - startedAt[0];
  const startToRegistered = registeredAt.map((at, i) => at - startedAt[i]);
  console.log(`all ${count} registered ${formatMs(allRegisteredMs)} after the first start`);
  console.log(formatTimes("start to registered, each", startToRegistered));

  await delay(5000); // let the starts settle
  const flaps = clock.deletes.size; // records deregistered while the host was busy starting them all
  const endpoint = cluster.endpoints[0];
  const before = { at: now(), metrics: await scrapeMetrics(endpoint), events: clock.events };
  const cpuBefore = scripts.map((s) => cpuSecondsOf(s.pid));
  await delay(windowMs);
  const after = { at: now(), metrics: await scrapeMetrics(endpoint), events: clock.events };
  const cpuAfter = scripts.map((s) => cpuSecondsOf(s.pid));
  const minutes = (after.at - before.at) / 60_000;
  const d = metricsDelta(before.metrics, after.metrics);
  const rssKiB = scripts.map((s) => memoryOf(s.pid).rssKiB);
  const pssTotalKiB = scripts.reduce((sum, s) => sum + pssOf(s.pid), 0);
  const cpuSecondsPerHour = cpuAfter.map((c, i) => (c - cpuBefore[i]) / (minutes * 60) * 3600);
  const perMinute = (n: number) => (n / minutes).toFixed(1);
  console.log(
    `steady, ${count} healthy, ${(minutes * 60).toFixed(0)} s: proposals ${perMinute(d.proposals)}/min ` +
      `(leases granted ${perMinute(d.leasesGranted)}/min, revoked ${perMinute(d.leasesRevoked)}/min), ` +
      `puts ${perMinute(d.puts)}/min, deletes ${perMinute(d.deletes)}/min, ` +
      `watch events ${perMinute(after.events - before.events)}/min`,
  );
  console.log(`  records deregistered (and registered again) during the start: ${flaps}`);
  console.log(
    `memory: RSS median ${formatMiB(summarize(rssKiB).median)} each; PSS ${formatMiB(pssTotalKiB)} for all ${count}`,
  );
  console.log(
    `CPU: median ${summarize(cpuSecondsPerHour).median.toFixed(1)} s/h each, ${
      cpuSecondsPerHour.reduce((a, b) => a + b, 0).toFixed(0)
    } s/h for all`,
  );

  // kill a random few targets at once
  const victims = [...targets].sort(() => Math.random() - 0.5).slice(0, killCount);
  const killedAt = now();
  await Promise.all(victims.map((t) => t.setMode("closed")));
  const killed = await Promise.all(
    victims.map((t) => clock!.until("delete", keyOf(t), killedAt, 30_000).then((at) => at - killedAt, () => Infinity)),
  );
  await delay(3000); // anything else that was going to go would have gone
  const listed = new Set((await etcd.list("/services/")).values.map((v) => v.key));
  const victimKeys = new Set(victims.map((t) => keyOf(t)));
  const others = targets.filter((t) => !victimKeys.has(keyOf(t)));
  const othersLost = others.filter((t) => !listed.has(keyOf(t)) || (clock!.deletes.get(keyOf(t)) ?? 0) > before.at)
    .length;
  // why: what the secretaries of lost records logged
  const reasons = new Map<string, number>();
  for (const [i, t] of targets.entries()) {
    if (victimKeys.has(keyOf(t))) continue;
    for (const line of scripts[i].stderr.split("\n")) {
      const event =
        /^(?:<\d>)?(deregistered|lease lost|etcd call failed|registered(?=.*again=true)|check failed)\b.*?(?:reason=(.*))?$/
          .exec(line);
      if (event) {
        const reason = `${event[1]}${event[2] ? `: ${event[2].replace(/\d+/g, "N")}` : ""}`;
        reasons.set(reason, (reasons.get(reason) ?? 0) + 1);
      }
    }
  }
  for (const [reason, n] of reasons) console.log(`  healthy instances' secretaries logged ${n}x: ${reason}`);
  const killedGone = victims.filter((t) => !listed.has(keyOf(t))).length;
  const killedWithinBound = killed.filter((ms) => ms <= KILLED_BOUND_MS).length;
  console.log(formatTimes(`${killCount} targets killed at once, each to gone`, killed.filter(Number.isFinite)));
  console.log(
    `  gone: ${killedGone} of ${killCount}; within ${formatMs(KILLED_BOUND_MS)}: ${killedWithinBound}; ` +
      `other records lost: ${othersLost} of ${others.length}`,
  );
  return {
    runtime,
    instances: count,
    allRegisteredMs,
    startToRegistered,
    windowMinutes: minutes,
    proposalsPerMinute: d.proposals / minutes,
    putsPerMinute: d.puts / minutes,
    watchEventsPerMinute: (after.events - before.events) / minutes,
    rssKiB,
    pssTotalKiB,
    cpuSecondsPerHour,
    killed,
    killedBoundMs: KILLED_BOUND_MS,
    killedGone,
    killedWithinBound,
    flapsDuringStart: flaps,
    othersLost,
  };
}

const cleanup = async () => {
  clock?.stop();
  for (const s of scripts) s.kill("SIGTERM");
  await Promise.race([Promise.all(scripts.map((s) => s.finished())), delay(10_000)]);
  await Promise.all(scripts.map((s) => s.stop("SIGKILL")));
  await Promise.all(targets.map((t) => t.close()));
  etcd.close();
  await cluster.stop();
};
await benchmark(values.json, cleanup, main);
