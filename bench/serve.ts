/**
 * `registry serve` under load: `--instances` (1,000) records in 10 services,
 * then `--rate` (20) changes a second for `--seconds` (60): half deletes of a
 * random instance, half puts of one deleted earlier, so the registry stays
 * about as large. Two rounds: one real page open (Debian's Chromium, driven
 * by playwright-core), then the same page and `--streams` (50) more
 * `/v1/events` clients in this process (50 browser pages would share
 * Chromium's 6 connections a host and load the cores with 50 renderers
 * instead of measuring serve).
 *
 * Figures: from a key's delete request sent (etcd's JSON gateway; the answer
 * follows the commit) to its row gone from the page (a MutationObserver
 * stamps each removal with the page's clock, the same system clock) and to
 * its `gone` event read by each stream: p50, p99 and worst; serve's CPU (a
 * share of one core over each round) and resident memory; memory per open
 * event stream (resident memory after 49 streams opened, resuming after the
 * first one's last id as a reconnecting browser does, less before, over
 * 49: an open stream's cost, not the listing each new one is sent once).
 * It never asserts a speed.
 *
 * Runs the bundle when dist/registry.mjs has `serve` (or the one in
 * `--bundle DIR`), else the source.
 * Addresses: etcd on 127.8.0.1, serve on 127.8.1.1, Chromium's DevTools on 127.8.1.2.
 *
 * ```sh
 * node_modules/.bin/deno run --allow-all bench/serve.ts [--bundle DIR] [--instances 1000] [--rate 20] [--seconds 60] [--streams 50] [--json serve.json]
 * ```
 *
 * @module
 */
import { request } from "node:http";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";
import { encodeRecord, instanceKey } from "../lib/record.ts";
import { Chromium, EtcdCluster, EtcdGateway, freePort, READY_MS, ROOT, Script, waitFor } from "../testbed/testbed.ts";
import { benchmark, commandFor, cores, cpuSecondsOf, formatMiB, formatMs, memoryOf, now, percentile } from "./lib.ts";

/** One round's figures. */
export interface ServeRound {
  pages: number;
  streams: number;
  deletes: number;
  /** Delete sent to the row gone in the page, ms. */
  pageGoneMs: { p50: number; p99: number; worst: number; missed: number };
  /** The delete's answer (etcd committed it) to the row gone, ms: serve's and the page's own part. */
  pageAfterAnswerMs: { p50: number; p99: number; worst: number; missed: number };
  /** The delete sent to its answer, ms: etcd's part (a commit's fsync). */
  deleteAnswerMs: { p50: number; p99: number; worst: number; missed: number };
  /** The one-minute load average at the round's start and end. */
  loadAverage: [number, number];
  /** Delete sent to the `gone` event read, ms, every stream's together. */
  streamGoneMs?: { p50: number; p99: number; worst: number; missed: number };
  /** serve's CPU over the round, a share of one core. */
  cpu: number;
  rssKiB: number;
}

export interface ServeFigures {
  runtime: "source" | "deno";
  instances: number;
  rate: number;
  seconds: number;
  rounds: ServeRound[];
  /** Resident memory per open event stream, KiB. */
  perStreamKiB: number;
  /** serve's resident memory with the listing and one page, before the load, KiB. */
  idleRssKiB: number;
}

const SERVICES = 10;
const ETCD_HOST = "127.8.0.1";
const SERVE_HOST = "127.8.1.1";

function parseOptions() {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      instances: { type: "string", default: "1000" },
      rate: { type: "string", default: "20" },
      seconds: { type: "string", default: "60" },
      streams: { type: "string", default: "50" },
      json: { type: "string" },
      source: { type: "boolean", default: false },
      bundle: { type: "string" },
    },
  });
  return {
    instances: Number(values.instances),
    rate: Number(values.rate),
    seconds: Number(values.seconds),
    streams: Number(values.streams),
    json: values.json,
    source: values.source,
    bundle: values.bundle,
  };
}

/** Whether dist/registry.mjs has `serve` (a bundle built before it would not). */
function bundleServes(): boolean {
  try {
    return Deno.readTextFileSync(`${ROOT}dist/registry.mjs`).includes("registry_event_streams");
  } catch {
    return false;
  }
}

function key(n: number): string {
  return instanceKey("/services", `svc-${n % SERVICES}`, `10.8.${Math.floor(n / 250)}.${(n % 250) + 1}`, 8080);
}

function value(n: number): string {
  const k = key(n);
  const address = k.slice(k.lastIndexOf("/") + 1);
  return encodeRecord({
    host: `host-${n % 40}`,
    ipv4_addr: address.split(":")[0],
    port: 8080,
    service: `svc-${n % SERVICES}`,
    registered_at: new Date().toISOString(),
    meta: { zone: `z${n % 3}`, version: "1.4.2" },
    status: { load: (n % 100) / 100 },
  });
}

/** An open /v1/events stream that stamps each `gone` event with the time it was read. */
class Stream {
  readonly gone = new Map<string, number>();
  /** Whether its listing has come (a resync ends with `state`), or, resuming, whether serve answered. */
  synced = false;
  lastId?: string;
  #buffer = "";
  #req;

  /** Opens a stream; with `lastEventId`, resuming after it (no listing). */
  constructor(url: string, lastEventId?: string) {
    this.#req = request(`${url}/v1/events`, { headers: lastEventId ? { "Last-Event-ID": lastEventId } : {} }, (res) => {
      if (lastEventId) this.synced = true;
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        const at = now();
        this.#buffer += chunk;
        let end;
        while ((end = this.#buffer.indexOf("\n\n")) >= 0) {
          const block = this.#buffer.slice(0, end);
          this.#buffer = this.#buffer.slice(end + 2);
          if (block.includes("\nevent: state\n")) this.synced = true;
          this.lastId = /^id: (\S+)$/m.exec(block)?.[1] ?? this.lastId;
          const m = /^data: \{"change":"gone","key":"([^"]+)"\}$/m.exec(block);
          if (m) this.gone.set(m[1], at);
        }
      });
      res.on("error", () => {});
    });
    this.#req.on("error", () => {});
    this.#req.end();
  }

  close(): void {
    this.#req.destroy();
  }
}

/** The one-minute load average (other work on the machine shows in every figure). */
function loadAverage(): number {
  return Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]);
}

function summary(latencies: number[], missed: number) {
  return {
    p50: percentile(latencies, 50) ?? NaN,
    p99: percentile(latencies, 99) ?? NaN,
    worst: latencies.length ? Math.max(...latencies) : NaN,
    missed,
  };
}

/**
 * `rate` changes a second for `seconds`: half deletes of a random present instance, half puts of one deleted earlier
 * (once its delete was answered). When each delete was sent and answered, by key; a key deleted twice counts by its
 * last delete.
 */
async function change(
  gateway: EtcdGateway,
  present: Set<number>,
  absent: number[],
  rate: number,
  seconds: number,
): Promise<{ sent: Map<string, number>; answered: Map<string, number> }> {
  const sent = new Map<string, number>();
  const answered = new Map<string, number>();
  const start = now();
  for (let i = 0; i < rate * seconds; i++) {
    const due = start + (i * 1000) / rate;
    const wait = due - now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    if ((i % 2 === 0 || absent.length === 0) && present.size > 0) {
      const pick = [...present][Math.floor(Math.random() * present.size)];
      present.delete(pick);
      absent.push(pick);
      // a key deleted twice in a round counts by its last delete, moved to the end: the last one sent is last
      sent.delete(key(pick));
      sent.set(key(pick), now());
      answered.delete(key(pick));
      void gateway.delete(key(pick)).then(() => answered.set(key(pick), now()));
    } else {
      // deletable once its put is answered: a delete sent on another connection could overtake it
      const back = absent.shift();
      if (back === undefined) continue;
      void gateway.put(key(back), value(back)).then(() => present.add(back));
    }
  }
  return { sent, answered };
}

/** Each delete sent to its `gone` event read, every stream's together. */
function streamTimes(streams: Stream[], sent: Map<string, number>): ReturnType<typeof summary> {
  const times: number[] = [];
  let missed = 0;
  for (const s of streams) {
    for (const [k, t0] of sent) {
      const at = s.gone.get(k);
      // a key deleted twice in a round keeps its last delete: the stream's first stamp may be older
      if (at === undefined || at < t0) missed++;
      else times.push(at - t0);
    }
  }
  return summary(times, missed);
}

async function main(): Promise<void> {
  const options = parseOptions();
  const runtime = options.bundle || (bundleServes() && !options.source) ? "deno" : "source";
  const cluster = await EtcdCluster.create(1, { host: ETCD_HOST });
  const scripts: Script[] = [];
  let browser: Chromium | undefined;
  const streams: Stream[] = [];
  const cleanup = async () => {
    for (const s of streams) s.close();
    await browser?.stop();
    await Promise.all(scripts.map((s) => s.stop()));
    await cluster.stop();
  };
  await benchmark(options.json, cleanup, async () => {
    await cluster.start();
    const gateway = new EtcdGateway(cluster.endpoints, 5000);
    const present = new Set<number>();
    const absent: number[] = [];
    for (let n = 0; n < options.instances; n += 50) {
      await Promise.all(Array.from({ length: Math.min(50, options.instances - n) }, (_, i) => {
        present.add(n + i);
        return gateway.put(key(n + i), value(n + i));
      }));
    }
    const port = await freePort(SERVE_HOST);
    const serveArgs = ["serve", `--listen=${SERVE_HOST}:${port}`, `--endpoints=${cluster.endpoints[0]}`];
    const [command, args] = options.bundle
      ? [Deno.execPath(), ["run", "--allow-net", "--allow-env", `${options.bundle}/registry.mjs`, ...serveArgs]]
      : commandFor("registry", runtime, serveArgs);
    const serve = new Script(command, args);
    scripts.push(serve);
    await serve.waitForLog(/^history read /, READY_MS);
    const url = `http://${SERVE_HOST}:${port}`;

    browser = await Chromium.start("127.8.1.2");
    const cdp = await chromium.connectOverCDP(browser.endpoint);
    const page = await (await cdp.newContext({ viewport: { width: 1200, height: 800 } })).newPage();
    await page.goto(`${url}/`);
    await waitFor(
      async () => (await page.evaluate(`document.querySelectorAll("tr.instance").length`)) === options.instances,
      "the page's rows",
      READY_MS,
    );
    await page.evaluate(`
      window.__gone = {};
      new MutationObserver((records) => {
        const at = Date.now();
        for (const r of records) for (const n of r.removedNodes) if (n.dataset && n.dataset.key) window.__gone[n.dataset.key] = at;
      }).observe(document.getElementById("services"), { childList: true, subtree: true });
    `);
    const idleRssKiB = memoryOf(serve.pid).rssKiB;

    const round = async (withStreams: number): Promise<ServeRound> => {
      const loadBefore = loadAverage();
      const cpuBefore = cpuSecondsOf(serve.pid);
      const start = now();
      const { sent, answered } = await change(gateway, present, absent, options.rate, options.seconds);
      const cpu = (cpuSecondsOf(serve.pid) - cpuBefore) / ((now() - start) / 1000);
      // the last deletes: give them time to arrive (a late one is a figure, not a failure)
      const lastKeys = [...sent.keys()].slice(-5);
      await waitFor(
        async () => {
          const gone = await page.evaluate(`window.__gone`) as Record<string, number>;
          return lastKeys.every((k) => gone[k] !== undefined);
        },
        "the last deletes on the page",
        30_000,
      ).catch(() => {});
      const gone = await page.evaluate(`window.__gone`) as Record<string, number>;
      const pageTimes: number[] = [];
      const pageAfterAnswer: number[] = [];
      let pageMissed = 0;
      for (const [k, t0] of sent) {
        if (gone[k] === undefined || gone[k] < t0) pageMissed++;
        else {
          pageTimes.push(gone[k] - t0);
          const t1 = answered.get(k);
          if (t1 !== undefined) pageAfterAnswer.push(gone[k] - t1);
        }
      }
      const streamGoneMs = withStreams ? streamTimes(streams, sent) : undefined;
      await page.evaluate(`window.__gone = {}`);
      return {
        pages: 1,
        streams: withStreams,
        deletes: sent.size,
        pageGoneMs: summary(pageTimes, pageMissed),
        pageAfterAnswerMs: summary(pageAfterAnswer, 0),
        deleteAnswerMs: summary([...answered].map(([k, t1]) => t1 - sent.get(k)!), 0),
        loadAverage: [loadBefore, loadAverage()],
        ...(streamGoneMs ? { streamGoneMs } : {}),
        cpu,
        rssKiB: memoryOf(serve.pid).rssKiB,
      };
    };

    const rounds: ServeRound[] = [];
    rounds.push(await round(0));
    // one stream reads the listing for its last id; the others resume after it, as a browser reconnecting does:
    // what an open stream costs, not the listing sent once to each new one (garbage once written)
    const first = new Stream(url);
    streams.push(first);
    await waitFor(() => first.synced && first.lastId, "the first stream's listing", READY_MS);
    const before = memoryOf(serve.pid).rssKiB;
    for (let i = 1; i < options.streams; i++) streams.push(new Stream(url, first.lastId));
    await waitFor(() => streams.every((s) => s.synced), "the streams open", READY_MS);
    const perStreamKiB = options.streams > 1 ? (memoryOf(serve.pid).rssKiB - before) / (options.streams - 1) : NaN;
    rounds.push(await round(options.streams));
    await cdp.close();
    const figures: ServeFigures = {
      runtime,
      instances: options.instances,
      rate: options.rate,
      seconds: options.seconds,
      rounds,
      perStreamKiB,
      idleRssKiB,
    };
    print(figures);
    return figures;
  });
}

function print(f: ServeFigures): void {
  console.log(
    `\nregistry serve (${
      f.runtime === "source" ? "from source" : "the bundle under deno"
    }): ${f.instances} instances, ` +
      `${f.rate} changes a second for ${f.seconds} s a round`,
  );
  const t = (s: { p50: number; p99: number; worst: number; missed: number }) =>
    `p50 ${formatMs(s.p50)}  p99 ${formatMs(s.p99)}  worst ${formatMs(s.worst)}${
      s.missed ? `  missed ${s.missed}` : ""
    }`;
  for (const r of f.rounds) {
    const open = `1 page${r.streams ? ` + ${r.streams} streams` : ""}`;
    console.log(`  ${open.padEnd(20)} delete → row gone in the page (${r.deletes}): ${t(r.pageGoneMs)}`);
    console.log(`  ${"".padEnd(20)} of which etcd (delete → its answer): ${t(r.deleteAnswerMs)}`);
    console.log(`  ${"".padEnd(20)} answer → row gone: ${t(r.pageAfterAnswerMs)}`);
    if (r.streamGoneMs) console.log(`  ${"".padEnd(20)} delete → gone event read, each stream: ${t(r.streamGoneMs)}`);
    console.log(
      `  ${"".padEnd(20)} serve CPU ${cores(r.cpu)} of a core, resident ${formatMiB(r.rssKiB)}; ` +
        `load average ${r.loadAverage[0]} → ${r.loadAverage[1]}`,
    );
  }
  console.log(`  resident with the listing and 1 page, before the load: ${formatMiB(f.idleRssKiB)}`);
  console.log(
    `  memory per open event stream: ${Number.isFinite(f.perStreamKiB) ? `${f.perStreamKiB.toFixed(0)} KiB` : "n/a"}`,
  );
}

if (import.meta.main) await main();
