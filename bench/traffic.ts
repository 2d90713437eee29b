/**
 * Requests through HAProxy and nginx while instances come and go: what a
 * client sees.
 *
 * Six lanes side by side in one run, each with three instances on hosts of
 * their own and a load of keep-alive clients; lanes 1–3 with Debian's HAProxy
 * (testbed/haproxy.ts: `retries 3`, `option redispatch 1`, `retry-on
 * conn-failure empty-response response-timeout`), lanes 4 to 6 with
 * Debian's nginx (testbed/nginx.ts: `proxy_next_upstream error timeout
 * http_502`, `proxy_connect_timeout 1s`):
 *
 * 1. ours: a secretary per instance (`--check http --drain 2s`, the unit's
 *    defaults otherwise) and `registry sync` on an empty backend, with its
 *    default `--server-options` (HAProxy's check, `inter 1s fall 2 rise 1`);
 * 2. no registry: a static backend listing the instances with HAProxy's own
 *    checks (`check inter 2s fall 2 rise 2`); an instance is restarted on its
 *    own port, as HAProxy cannot learn a new one;
 * 3. ours with `--no-watch-connection`;
 * 4. nginx fed by `registry render --wait` as
 *    units/examples/nginx/registry-nginx@.service runs it (its `--wait`, its
 *    permissions, its `--check "nginx -t -q"` and `--reload "nginx -s
 *    reload"`, addressed to this nginx), the shipped template
 *    units/examples/nginx/apache-upstream.conf.tmpl as it is, secretaries as
 *    in lane 1;
 * 5. the same without `--wait`: every change rendered and nginx reloaded at
 *    once (confd's behaviour);
 * 6. lane 4 with `keepalive_timeout 0;` in nginx's server block: a reload
 *    makes nginx's old worker close its idle keep-alive connections, and a
 *    client that sends on one at that instant sees it reset (it would have to
 *    retry, which this load never does); with no keep-alive to the clients,
 *    there is no such connection.
 *
 * The instances (testbed/traffic.ts `serve`) answer GET and POST with 200
 * after 20 ms of work, each in a process of its own. The load
 * (testbed/traffic.ts `load`, one process for all lanes) runs 4 clients per
 * lane, each on one keep-alive connection, alternating GET and POST, a 5 s
 * deadline on each, no retry: every non-2xx and every socket error counts,
 * filed under the cycle kind in effect when it ended.
 *
 * After a baseline window with no churn, every 5 s for 120 s one instance
 * goes, the hosts in turn, and a replacement starts on its host once it is
 * gone, on a new port (lane 2: on the same port). The lanes run the same
 * schedule a sixth of a cycle apart, so one lane's process starts and stops
 * (CPU on a machine of few cores) do not land on another's removals and additions:
 * - stop (as systemd stops the secretary's unit, then the service's):
 *   SIGTERM to the secretary, which removes the record, drains 2 s and exits,
 *   then SIGTERM to the service, which answers what it has in flight and
 *   exits. The unit's drain is 5 s; 2 s here so that each stop ends inside
 *   its own 5 s cycle and its failures, if any, are filed under it (the sync
 *   takes a server out in milliseconds: any drain longer than a request does
 *   the same). Lane 2 has no secretary: SIGTERM to the service;
 * - kill, every fourth cycle: the service gets SIGKILL (its sessions in
 *   HAProxy, `scur`, read just before); the secretary finds out by itself and
 *   is stopped once the record is gone, as systemd's BindsTo= would;
 * - once, mid-run, a host dies: the instance on a host of its own (a network
 *   namespace behind a veth pair, testbed/traffic.ts NetnsHost) has every
 *   packet dropped both ways, then its service and secretary get SIGKILL, so
 *   no RST or FIN ever comes and a connection attempt times out. No churn
 *   for the next 15 s, then the host comes back (packets flow, a new
 *   instance on it), and the churn goes on 5 s later.
 *
 * Timings come from polling HAProxy's `show servers state` every 2 ms from
 * the event on: "record removed → out of rotation" from the delete event
 * (this benchmark's own etcd watch) to the server in maintenance (or gone),
 * and to the sync's `server out` line on its stderr, read as often;
 * "new record → serving" from the put event to the server in rotation and
 * running; "host death → out of rotation" from the drop to the server down
 * by HAProxy's check or in maintenance. Reloads: HAProxy's Pid (`show info`)
 * read every second. Requests sent to an instance and then received by
 * another too (HAProxy's retries of requests already sent) are found from
 * the ids the instances print on receipt, and filed under what happened to
 * the instance that got them first.
 *
 * nginx's upstream state cannot be read, so the nginx lanes have no sessions,
 * no "out of rotation" and no `show servers state` polling. Instead, polled
 * every 2 ms from the event: "record removed → reloaded" to the render's
 * `reloaded` line (`nginx -s reload` returned) for a file without the
 * instance, and on to nginx's next new worker ("start worker process" in its
 * error log); "new record → reloaded" likewise. Reloads: the "reconfiguring"
 * lines in nginx's error log during the churn, beside the changes that
 * removed an instance and the `--wait` windows the other changes make
 * (replayed from this benchmark's events by lib/render.ts whenToRender; one a
 * change without `--wait`), as the target is "no more reloads than removals
 * plus one per window". After the host death: the failed requests, and the
 * record gone when its lease expires.
 *
 * `--server-options` (the sync's) and `--backend-line` (repeatable, added to
 * every lane's backend) are for trying alternatives; the figures of record
 * use neither.
 *
 * Addresses: etcd on 127.0.10.1, lane N's HAProxy or nginx on
 * 127.0.1N.1:8000 and two of its hosts on 127.0.1N.2 and 127.0.1N.3 (N = 1
 * to 6); its third host at 198.51.100.(4N+2) in namespace `sttrafficN`.
 * Needs root (the namespaces), nginx and HAProxy, and the bundles (or it
 * runs the source). About 3 minutes, alone.
 *
 * This file is the entry: its options and the run's order. The parts are in
 * bench/traffic/: lanes.ts sets up a lane (its hosts, proxy and instances),
 * changes.ts times each put and delete to what the proxy shows, churn.ts runs
 * the cycles, poll.ts reads the proxies, and figures.ts turns what was
 * recorded into the figures (the JSON bench/all.ts reads) and prints them.
 *
 * ```sh
 * node_modules/.bin/deno task bundle && node_modules/.bin/deno run -A bench/traffic.ts [--json traffic.json]
 * node_modules/.bin/deno run -A bench/traffic.ts --quick   # 60 s of churn, for development
 * node_modules/.bin/deno run -A bench/traffic.ts --quick --backend-line "option abortonclose"
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { DEFAULT_PREFIX } from "../lib/record.ts";
import { DEFAULT_SERVER_OPTIONS } from "../lib/sync.ts";
import { currentRevision, delay, EtcdCluster, waitFor } from "../testbed/testbed.ts";
import { NetnsHost } from "../testbed/traffic.ts";
import { onEvent } from "./traffic/changes.ts";
import { churn, Labels, schedule, type Step } from "./traffic/churn.ts";
import { printFigures, type Recorded, tallyLane, type TrafficFigures } from "./traffic/figures.ts";
import {
  CLIENTS,
  CYCLE_MS,
  DEADLINE_MS,
  DRAIN,
  type Lane,
  LANES,
  type Options,
  type Run,
  SECRETARY_ARGS,
  startInstance,
  startLanes,
  STATIC_CHECK,
  WORK_MS,
} from "./traffic/lanes.ts";
import { allInRotation, loadAverage, nginxCounts, retryCounters } from "./traffic/poll.ts";
import { benchmark, bundlesBuilt, LoadProcess, now } from "./lib.ts";

export type { TrafficFigures, TrafficLane } from "./traffic/figures.ts";

function parseArgsOrExit(): Options {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      churn: { type: "string" },
      baseline: { type: "string" },
      "server-options": { type: "string" },
      "backend-line": { type: "string", multiple: true },
      quick: { type: "boolean", default: false },
      json: { type: "string" },
    },
  });
  const churnSeconds = Number(values.churn ?? (values.quick ? 60 : 120));
  const baselineSeconds = Number(values.baseline ?? (values.quick ? 10 : 15));
  if (!(churnSeconds >= 30 && churnSeconds % 5 === 0) || !(baselineSeconds >= 5)) {
    console.error(
      `traffic: Cannot use --churn ${values.churn} --baseline ${values.baseline}: expected a multiple of 5 >= 30, >= 5`,
    );
    Deno.exit(2);
  }
  return {
    churnSeconds,
    baselineSeconds,
    serverOptions: values["server-options"],
    backendLines: values["backend-line"] ?? [],
    json: values.json,
  };
}

/** The run's settings, no lane yet. */
function runFigures(run: Run, plan: Step[]): TrafficFigures {
  return {
    baselineSeconds: run.options.baselineSeconds,
    churnSeconds: run.options.churnSeconds,
    cycleMs: CYCLE_MS,
    cycles: {
      stop: plan.filter((p) => p.kind === "stop").length,
      kill: plan.filter((p) => p.kind === "kill").length,
      host: 1,
    },
    clients: CLIENTS,
    deadlineMs: DEADLINE_MS,
    workMs: WORK_MS,
    drain: DRAIN,
    secretaryArgs: SECRETARY_ARGS,
    serverOptions: run.options.serverOptions ?? DEFAULT_SERVER_OPTIONS,
    backendLines: run.options.backendLines,
    staticServerOptions: STATIC_CHECK,
    runtime: run.runtime,
    loadAverage: { start: NaN, end: NaN },
    lanes: [],
  };
}

/** Reloads: HAProxy's Pid every second (nginx's are in its error log); the timers, for the cleanup. */
function watchPids(lanes: Lane[]): ReturnType<typeof setInterval>[] {
  return lanes.filter((lane) => lane.client).map((lane) =>
    setInterval(() => {
      lane.client!.process().then((p) => {
        if (!lane.figures.pids.includes(p.pid)) {
          lane.figures.pids.push(p.pid);
          lane.figures.reloads++;
        }
      }, () => {});
    }, 1000)
  );
}

async function main(): Promise<void> {
  const options = parseArgsOrExit();
  if (!(await NetnsHost.available())) {
    console.error("traffic: the host death needs network namespaces: run as root with iproute2 (ip netns)");
    Deno.exit(2);
  }
  const cluster = await EtcdCluster.create(1, { host: "127.0.10.1" });
  const etcd = cluster.client();
  const run: Run = {
    options,
    runtime: bundlesBuilt() ? "deno" : "source",
    dir: await Deno.makeTempDir({ prefix: "secretary-traffic-" }),
    endpoints: "",
    scripts: [],
    services: [],
    fates: new Map(),
    lanes: [],
    netns: [],
    pending: [],
    churnAt: Infinity,
  };
  let load: LoadProcess | undefined;
  let stopWatch = () => {};
  const timers: ReturnType<typeof setInterval>[] = [];
  const cleanup = async () => {
    stopWatch();
    for (const t of timers) clearInterval(t);
    await load?.kill();
    await Promise.all(run.scripts.map((s) => s.stop()));
    await Promise.all(run.lanes.map((l) => l.haproxy?.stop()));
    await Promise.all(run.lanes.map((l) => l.nginx?.stop()));
    for (const n of run.netns) await n.remove();
    etcd.close();
    await cluster.stop();
    await Deno.remove(run.dir, { recursive: true }).catch(() => {});
  };

  await benchmark(options.json, cleanup, async () => {
    const plan = schedule(options.churnSeconds * 1000 / CYCLE_MS);
    const figures = runFigures(run, plan);
    await cluster.start();
    run.endpoints = cluster.endpoints.join(",");
    await startLanes(run);
    figures.lanes.push(...run.lanes.map((l) => l.figures));

    // the registry as this benchmark sees it: every put and delete, timed, and the proxies polled from there
    const watch = await etcd.watch(
      `${DEFAULT_PREFIX}/`,
      String(BigInt(await currentRevision(etcd)) + 1n),
      (e) => onEvent(run, e.type, e.key),
    );
    stopWatch = () => watch.cancel();
    watch.done.then((err) => {
      if (!/canceled/.test(err.message)) console.error(`the benchmark's watch ended: ${err.message}`);
    });

    const lanes = run.lanes;
    await Promise.all(lanes.flatMap((lane) =>
      lane.hosts.map(async (host) => {
        host.current = await startInstance(run, lane, host);
      })
    ));
    await waitFor(() => allInRotation(lanes), "every instance in rotation", 30_000, 100);
    console.log(
      `${LANES.length} lanes side by side, 3 instances each (${
        run.runtime === "deno" ? "the bundles" : "from source"
      }); ${CLIENTS} clients a lane, GET and POST in turn, ${
        DEADLINE_MS / 1000
      } s deadline, ${WORK_MS} ms of work a request`,
    );
    timers.push(...watchPids(lanes));

    // the load, labelled with the window in effect
    load = LoadProcess.start(lanes.map((l) => `http://${l.front.ip}:${l.front.port}/`), {
      clients: CLIENTS,
      deadlineMs: DEADLINE_MS,
    });
    const labels = new Labels(load, lanes);
    await labels.set(undefined, "baseline");
    const baselineAt = now();
    await delay(options.baselineSeconds * 1000);
    const retriesAtChurn = await Promise.all(lanes.map((l) => l.client && retryCounters(l.client)));
    figures.loadAverage.start = loadAverage();
    const nginxAtChurn = await Promise.all(lanes.map((l) => l.nginx && nginxCounts(l)));

    run.churnAt = now();
    await labels.set(undefined, "idle");
    const background = await churn(run, plan, labels);
    const retriesAtEnd = await Promise.all(lanes.map((l) => l.client && retryCounters(l.client)));
    figures.loadAverage.end = loadAverage();
    const totals = await load.finish();
    load = undefined;
    await Promise.all(lanes.flatMap((l) => l.hosts.map((h) => h.busy)));
    await Promise.all(background);
    await Promise.all(run.pending);
    // the churn's reloads: to here, where the last cycle's changes have been rendered and reloaded
    const churnEnd = now();
    const nginxAtEnd = await Promise.all(lanes.map((l) => l.nginx && nginxCounts(l)));

    const recorded: Recorded = {
      totals,
      failures: labels.load.failures,
      windows: labels.windows,
      services: run.services.map(([instance, s]) => ({ instance, stdout: s.stdout, fate: run.fates.get(s) })),
      baselineAt,
      churnAt: run.churnAt,
      churnMs: plan.length * CYCLE_MS,
      churnEnd,
    };
    for (const lane of lanes) {
      const [i, before, after] = [lane.index, nginxAtChurn[lane.index], nginxAtEnd[lane.index]];
      tallyLane(lane.figures, {
        index: i,
        changes: lane.changes,
        log: (lane.render ?? lane.sync)?.stderr ?? "",
        retries: retriesAtChurn[i] && retriesAtEnd[i] ? [retriesAtChurn[i], retriesAtEnd[i]] : undefined,
        nginx: before && after ? [before, after] : undefined,
      }, recorded);
    }
    printFigures(figures);
    return figures;
  });
}

if (import.meta.main) await main();
