/**
 * How fast the registry follows the truth, at the default settings: target
 * killed to record gone; target hung to gone and answering again to back;
 * SIGKILL and SIGTERM of the secretary to gone; process start to registered;
 * and etcd revision growth over one healthy minute. Each time is measured
 * from the event to the etcd watch event, over several trials.
 *
 * ```sh
 * node_modules/.bin/deno run -A bench/removal.ts [--trials 20] [--runtime source|deno|node]
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { delay, EtcdCluster, type Script, Target } from "../lib/testbed.ts";
import { formatMs, KeyClock, keyOf, now, type Runtime, startSecretary, summarize } from "./lib.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    trials: { type: "string", default: "20" },
    runtime: { type: "string", default: "source" },
    minute: { type: "string", default: "60" },
  },
});
const trials = Number(values.trials);
const runtime = values.runtime as Runtime;
const INTERVAL_MS = 2000;

const cluster = await EtcdCluster.create(1);
await cluster.start();
const etcd = cluster.client();
const clock = await KeyClock.start(etcd);
const started: Script[] = [];
const targets: Target[] = [];
const results: [string, number[]][] = [];

async function target(host: string): Promise<Target> {
  const t = await Target.start(host);
  targets.push(t);
  return t;
}

function report(name: string, times: number[]) {
  results.push([name, times]);
  const s = summarize(times);
  console.log(`${name.padEnd(34)} n=${s.n}  median ${formatMs(s.median).padStart(8)}  worst ${formatMs(s.worst).padStart(8)}`);
}

try {
  // target killed (stops listening, connections reset) to record gone, and hung to gone / back
  {
    const t = await target("127.0.0.2");
    const s = startSecretary(t, cluster.endpoints, { runtime });
    started.push(s);
    const key = keyOf(t);
    await clock.until("put", key, 0, 10_000);
    const killed: number[] = [];
    const hung: number[] = [];
    const back: number[] = [];
    for (let i = 0; i < trials; i++) {
      await delay(Math.random() * INTERVAL_MS); // any phase of the check interval
      let at = now();
      await t.setMode("closed");
      killed.push(await clock.until("delete", key, at) - at);
      await t.setMode("ok");
      await clock.until("put", key, at);
      await delay(Math.random() * INTERVAL_MS);
      at = now();
      t.mode = "hang";
      hung.push(await clock.until("delete", key, at) - at);
      await delay(Math.random() * INTERVAL_MS);
      at = now();
      t.mode = "ok";
      back.push(await clock.until("put", key, at) - at);
    }
    report("killed target to gone", killed);
    report("hung target to gone", hung);
    report("answering again to back", back);
    s.kill("SIGTERM");
    await s.finished();
  }

  // start to registered, then SIGTERM to gone
  {
    const t = await target("127.0.0.3");
    const start: number[] = [];
    const term: number[] = [];
    for (let i = 0; i < trials; i++) {
      let at = now();
      const s = startSecretary(t, cluster.endpoints, { runtime });
      started.push(s);
      start.push(await clock.until("put", keyOf(t), at, 10_000) - at);
      await delay(200 + Math.random() * INTERVAL_MS);
      at = now();
      s.kill("SIGTERM");
      term.push(await clock.until("delete", keyOf(t), at) - at);
      await s.finished();
    }
    report("start to registered", start);
    report("SIGTERM to gone", term);
  }

  // SIGKILL to gone (the lease expires): ten secretaries at a time
  {
    const kill: number[] = [];
    for (let round = 0; round < Math.ceil(trials / 10); round++) {
      const batch = await Promise.all(
        Array.from({ length: Math.min(10, trials - round * 10) }, (_, i) => target(`127.0.1.${i + 1}`)),
      );
      const scripts = batch.map((t) => startSecretary(t, cluster.endpoints, { runtime }));
      started.push(...scripts);
      await Promise.all(batch.map((t) => clock.until("put", keyOf(t), 0, 15_000)));
      await Promise.all(batch.map(async (t, i) => {
        await delay(Math.random() * 4000); // any phase of the keep-alive cycle
        const at = now();
        scripts[i].kill("SIGKILL");
        kill.push(await clock.until("delete", keyOf(t), at, 30_000) - at);
      }));
    }
    report("SIGKILL to gone (TTL 10 s)", kill);
  }

  // revision growth over one healthy minute
  {
    const t = await target("127.0.0.4");
    const s = startSecretary(t, cluster.endpoints, { runtime });
    started.push(s);
    await clock.until("put", keyOf(t), 0, 10_000);
    const seconds = Number(values.minute);
    const before = BigInt(await etcd.revision());
    await delay(seconds * 1000);
    const after = BigInt(await etcd.revision());
    console.log(`revision growth, one healthy instance, ${seconds} s: ${after - before}`);
  }
} finally {
  clock.stop();
  await Promise.all(started.map((s) => s.stop()));
  await Promise.all(targets.map((t) => t.close()));
  etcd.close();
  await cluster.stop();
}
