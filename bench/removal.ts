/**
 * How fast the registry follows the truth: target killed to record gone;
 * target hung (accepts, never answers) to gone, and answering again to back;
 * SIGKILL of the sidekick to gone; process start to registered, then SIGTERM
 * to gone. Each time runs from the event to the record's watch event.
 *
 * `--impl ours` runs our secretary at its defaults (interval 2 s, timeout 1 s,
 * rise 2, fall 2, TTL 10 s) against etcd v3; `--impl article` runs the
 * article's bash loop (bench/article-loop.sh) against etcd v2 at `--interval`
 * and `--ttl` seconds. Trials run in `--lanes` parallel lanes, each with its
 * own target, and start at a random phase of the check interval; the start
 * and SIGTERM trials run one at a time, under each runtime.
 *
 * ```sh
 * node_modules/.bin/deno run -A bench/removal.ts --impl ours [--trials 20] [--lanes 10]
 * node_modules/.bin/deno run -A bench/removal.ts --impl article --interval 20 --ttl 30 [--trials 20]
 * node_modules/.bin/deno run -A bench/removal.ts --quick     # 4 trials, for development
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { delay, EtcdCluster, type Script, TestServer } from "../testbed/testbed.ts";
import {
  ArticleLoop,
  benchmark,
  type EventClock,
  formatTimes,
  INTERVAL_MS,
  KeyClock,
  keyOf,
  mainRuntime,
  now,
  type Runtime,
  runtimes,
  startSecretary,
  TTL_MS,
  V2Clock,
} from "./lib.ts";

/** A running sidekick, ours or the article's. */
interface Sidekick {
  /** SIGTERM (the article's loop: and then its ExecStop). */
  stop(): Promise<void>;
  /** SIGKILL, as when the process or its host dies. */
  kill(): Promise<void>;
}

/** What differs between ours and the article's loop. */
interface Impl {
  name: string;
  clock: EventClock;
  intervalMs: number;
  ttlMs: number;
  /** How long after the last keep-alive or write the TTL runs from: the phase to randomise a SIGKILL over. */
  refreshMs: number;
  runtimes: string[];
  keyOf(target: TestServer): string;
  start(target: TestServer, runtime: string): Sidekick;
}

/** The figures, in ms; `back` holds null where the record never came back within the bound. */
export interface RemovalFigures {
  impl: string;
  intervalMs: number;
  ttlMs: number;
  backBoundMs: number;
  killed: number[];
  hung: number[];
  back: (number | null)[];
  sigkill: number[];
  start: Record<string, number[]>;
  sigterm: Record<string, number[]>;
}

function ours(endpoints: string[], clock: EventClock): Impl {
  return {
    name: "ours",
    clock,
    intervalMs: INTERVAL_MS,
    ttlMs: TTL_MS,
    refreshMs: TTL_MS / 3,
    runtimes: runtimes(),
    keyOf,
    start(target, runtime) {
      const script: Script = startSecretary(target, endpoints, { runtime: runtime as Runtime });
      return {
        stop: async () => {
          script.kill("SIGTERM");
          await script.finished();
        },
        kill: () => script.stop("SIGKILL"),
      };
    },
  };
}

function article(endpoint: string, clock: EventClock, intervalSeconds: number, ttlSeconds: number): Impl {
  return {
    name: `article ${intervalSeconds} s / TTL ${ttlSeconds} s`,
    clock,
    intervalMs: intervalSeconds * 1000,
    ttlMs: ttlSeconds * 1000,
    refreshMs: intervalSeconds * 1000,
    runtimes: ["bash"],
    keyOf: (t) => `/services/apache/${t.host}`,
    start: (target) => new ArticleLoop(target, endpoint, intervalSeconds, ttlSeconds),
  };
}

/**
 * One lane: per round, kill the target (gone, then back), hang it (gone,
 * then answering again: back, or never), then SIGKILL the sidekick (gone).
 */
async function lane(impl: Impl, target: TestServer, rounds: number, figures: RemovalFigures): Promise<void> {
  const { clock, intervalMs } = impl;
  const key = impl.keyOf(target);
  const runtime = impl.runtimes[0];
  const startTimeoutMs = 30_000;
  let sidekick = impl.start(target, runtime);
  try {
    await clock.until("put", key, 0, startTimeoutMs);
    for (let round = 0; round < rounds; round++) {
      await delay(Math.random() * intervalMs); // any phase of the check interval
      let at = now();
      await target.setMode("closed");
      figures.killed.push(await clock.until("delete", key, at, intervalMs + impl.ttlMs + 5000) - at);
      await target.setMode("ok");
      await clock.until("put", key, at, 2 * intervalMs + 5000);

      await delay(Math.random() * intervalMs);
      at = now();
      target.mode = "hang";
      figures.hung.push(await clock.until("delete", key, at, intervalMs + impl.ttlMs + 5000) - at);
      await delay(Math.random() * intervalMs);
      at = now();
      target.mode = "ok";
      try {
        figures.back.push(await clock.until("put", key, at, figures.backBoundMs) - at);
      } catch {
        figures.back.push(null); // the article's curl waits on the hung connection for good
        await sidekick.kill();
        sidekick = impl.start(target, runtime);
        await clock.until("put", key, now(), startTimeoutMs);
      }

      await delay(Math.random() * impl.refreshMs); // any phase of the keep-alive (or write) cycle
      at = now();
      await sidekick.kill();
      figures.sigkill.push(await clock.until("delete", key, at, impl.ttlMs + 10_000) - at);
      sidekick = impl.start(target, runtime);
      await clock.until("put", key, now(), startTimeoutMs);
    }
  } finally {
    await sidekick.kill();
  }
}

/** Start to registered, then SIGTERM to gone, one trial at a time. */
async function startAndStop(impl: Impl, target: TestServer, runtime: string, trials: number, figures: RemovalFigures) {
  const key = impl.keyOf(target);
  figures.start[runtime] = [];
  figures.sigterm[runtime] = [];
  for (let i = 0; i < trials; i++) {
    let at = now();
    const sidekick = impl.start(target, runtime);
    try {
      figures.start[runtime].push(await impl.clock.until("put", key, at, 30_000) - at);
      await delay(200 + Math.random() * INTERVAL_MS);
      at = now();
      const stopped = sidekick.stop();
      figures.sigterm[runtime].push(await impl.clock.until("delete", key, at, impl.ttlMs + 5000) - at);
      await stopped;
    } finally {
      await sidekick.kill();
    }
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      impl: { type: "string", default: "ours" },
      interval: { type: "string", default: "20" },
      ttl: { type: "string", default: "30" },
      trials: { type: "string" },
      lanes: { type: "string" },
      net: { type: "string" },
      quick: { type: "boolean", default: false },
      json: { type: "string" },
    },
  });
  const isArticle = values.impl === "article";
  const trials = Number(values.trials ?? (values.quick ? 4 : 20));
  // the article's loop is slow (tens of seconds a trial) and cheap: one trial per lane
  const lanes = Math.min(trials, Number(values.lanes ?? (isArticle ? trials : 10)));
  const net = values.net ?? (isArticle ? "127.0.2" : "127.0.1");

  const cluster = await EtcdCluster.create(1, { extraArgs: isArticle ? ["--enable-v2"] : [] });
  const etcd = cluster.client();
  const targets: TestServer[] = [];
  let clock: EventClock | undefined;
  const cleanup = async () => {
    clock?.stop();
    await Promise.all(targets.map((t) => t.close()));
    etcd.close();
    await cluster.stop();
  };
  await benchmark(values.json, cleanup, async () => {
    await cluster.start();
    clock = isArticle ? await V2Clock.start(cluster.endpoints[0]) : await KeyClock.start(etcd);
    const impl = isArticle
      ? article(cluster.endpoints[0], clock, Number(values.interval), Number(values.ttl))
      : ours(cluster.endpoints, clock);
    const figures: RemovalFigures = {
      impl: impl.name,
      intervalMs: impl.intervalMs,
      ttlMs: impl.ttlMs,
      // anything alive checks again within an interval: twice that, and it never will
      backBoundMs: 2 * impl.intervalMs + 2000,
      killed: [],
      hung: [],
      back: [],
      sigkill: [],
      start: {},
      sigterm: {},
    };
    const rounds = Math.ceil(trials / lanes);
    console.log(`${impl.name}: ${lanes} lanes x ${rounds} rounds, then ${trials} start/SIGTERM trials per runtime`);
    for (let i = 0; i < lanes; i++) targets.push(await TestServer.start(`${net}.${i + 1}`));
    const began = Date.now();
    await Promise.all(targets.map((t) => lane(impl, t, rounds, figures)));
    console.log(`lanes done in ${Math.round((Date.now() - began) / 1000)} s`);

    const one = await TestServer.start(`${net}.200`);
    targets.push(one);
    for (const runtime of impl.runtimes) await startAndStop(impl, one, runtime, trials, figures);

    const back = figures.back.filter((b): b is number => b !== null);
    const runtime = isArticle ? "bash" : mainRuntime();
    console.log(formatTimes(`killed target to gone (${runtime})`, figures.killed));
    console.log(formatTimes("hung target to gone", figures.hung));
    console.log(formatTimes("answering again to back", back));
    if (back.length < figures.back.length) {
      console.log(
        `  not back within ${figures.backBoundMs / 1000} s: ${
          figures.back.length - back.length
        } of ${figures.back.length}`,
      );
    }
    console.log(formatTimes("SIGKILL of the sidekick to gone", figures.sigkill));
    for (const r of impl.runtimes) {
      console.log(formatTimes(`start to registered (${r})`, figures.start[r]));
      console.log(formatTimes(`SIGTERM to gone (${r})`, figures.sigterm[r]));
    }
    return figures;
  });
}

if (import.meta.main) await main();
