/**
 * bench/README.md's traffic sections (bench/traffic.ts): what ran, in
 * sentences from its figures, and two tables, one column a lane: HAProxy's
 * lanes (1 to 3) with lane 1's targets judged, and nginx's (4 to 6) with lane
 * 4's judged and lane 1 beside them.
 *
 * @module
 */
import { formatMs, percentile } from "../lib.ts";
import type { TrafficFigures, TrafficLane } from "../traffic/figures.ts";
import { coresText, markdown, met, p50p99, verdict } from "./table.ts";

/** `GET 0, POST 1 of 5,432`. */
function failedOf(f: TrafficLane, window: "stop" | "kill" | "host"): string {
  const all = f.requests[window].GET + f.requests[window].POST;
  return `GET ${f.failed[window].GET}, POST ${f.failed[window].POST} of ${all.toLocaleString("en")}`;
}

/** The rows: figure, target (for lane 1), the three HAProxy lanes, and whether lane 1 met it. */
function trafficRows(t: TrafficFigures | undefined): string[][] {
  const [ours, none, noWatch] = [0, 1, 2].map((i) => t?.lanes[i]);
  const each = (cell: (f: TrafficLane) => string, registryOnly = false) =>
    [ours, none, noWatch].map((f) => (!f ? "n/a" : registryOnly && !f.registry ? "n/a (no registry)" : cell(f)));
  const inFlight = (f: TrafficLane) => f.inFlightAtKills.reduce((a, b) => a + b, 0);
  const twice = (f: TrafficLane) =>
    (["stop", "kill", "host"] as const).map((w) => `${w}: GET ${f.sentTwice[w].GET}, POST ${f.sentTwice[w].POST}`)
      .join("; ");
  const hostOut = (f: TrafficLane) =>
    f.hostOutMs === null
      ? "never"
      : `${formatMs(f.hostOutMs)}, by ${f.hostOutBy}${
        f.hostRecordGoneMs !== null ? ` (record gone after ${formatMs(f.hostRecordGoneMs)})` : ""
      }; failed after it: GET ${f.failed.host.GET}`;
  return [
    [
      `failed requests in stop cycles (${t?.cycles.stop ?? "n/a"})`,
      "0 of either method",
      ...each((f) => failedOf(f, "stop")),
      met(ours && ours.failed.stop.GET + ours.failed.stop.POST === 0),
    ],
    [
      `failed requests in kill cycles (${t?.cycles.kill ?? "n/a"})`,
      "0 GET; POST at most those in flight at the kills",
      ...each((f) => failedOf(f, "kill")),
      met(ours && ours.failed.kill.GET === 0 && ours.failed.kill.POST <= inFlight(ours)),
    ],
    ["requests in flight at each kill (HAProxy's scur)", "", ...each((f) => f.inFlightAtKills.join(", ") || "n/a"), ""],
    ["failed requests after the host death", "", ...each((f) => failedOf(f, "host")), ""],
    [
      "requests in flight at the host death",
      "",
      ...each((f) => String(f.inFlightAtHostDeath ?? "n/a")),
      "",
    ],
    [
      "host death to out of rotation",
      "within 3 s, no failed GET",
      ...each(hostOut),
      met(ours && ours.hostOutMs !== null && ours.hostOutMs <= 3000 && ours.failed.host.GET === 0),
    ],
    [
      "requests received twice (sent, then retried by HAProxy on another instance), by cycle",
      "",
      ...each(twice),
      "",
    ],
    [
      "record removed to server out of rotation",
      "p99 50 ms",
      ...each((f) => p50p99(f.removedToOutMs), true),
      met(ours && ours.removedToOutMs.length > 0 && percentile(ours.removedToOutMs, 99) <= 50),
    ],
    [
      "record removed to the sync's `server out` log line (it logs once HAProxy answered)",
      "",
      ...each((f) => p50p99(f.removedToLoggedMs), true),
      "",
    ],
    ["new record to server serving", "", ...each((f) => p50p99(f.putToServingMs), true), ""],
    ["SIGKILL to record gone (the secretary's own finding)", "", ...each((f) => p50p99(f.killToGoneMs), true), ""],
    [
      "SIGKILL to out of rotation (by the registry or HAProxy's check)",
      "",
      ...each((f) => p50p99(f.killToOutMs), true),
      "",
    ],
    [
      "HAProxy reloads (new Pids in `show info`)",
      "0",
      ...each((f) => String(f.reloads)),
      met(ours && ours.reloads === 0),
    ],
    [
      "throughput during the churn, against the baseline",
      "",
      ...each((f) =>
        `${f.throughput.churn.toFixed(0)} of ${f.throughput.baseline.toFixed(0)} req/s (${
          (100 * f.throughput.churn / f.throughput.baseline).toFixed(0)
        }%)`
      ),
      "",
    ],
    [
      "latency of successful requests, p99 / worst: baseline; stop; kill; host death",
      "",
      ...each((f) =>
        (["baseline", "stop", "kill", "host"] as const).map((w) => {
          const l = f.latency[w];
          return l ? `${formatMs(l.p99Ms)} / ${formatMs(l.worstMs)}` : "n/a";
        }).join("; ")
      ),
      "",
    ],
    [
      "HAProxy's retries, redispatches during the churn",
      "",
      ...each((f) => `${f.haproxyRetries}, ${f.haproxyRedispatches}`),
      "",
    ],
  ];
}

/**
 * The nginx lanes' rows: figure, target (for lane 4), lanes 4 to 6, lane 1 (HAProxy) beside them where it has the
 * like figure, and whether lane 4 met it.
 */
function trafficNginxRows(t: TrafficFigures | undefined): string[][] {
  const [ours, wait, every, closing] = [0, 3, 4, 5].map((i) => t?.lanes[i]);
  const n4 = wait?.nginx ?? undefined;
  /** Lanes 4 to 6, then lane 1's like figure (or nothing). */
  const each = (cell: (f: TrafficLane) => string, haproxy?: (f: TrafficLane) => string) => [
    ...[wait, every, closing].map((f) => (f?.nginx ? cell(f) : "n/a")),
    ours && haproxy ? haproxy(ours) : "",
  ];
  const nginx = (cell: (n: NonNullable<TrafficLane["nginx"]>) => string) => (f: TrafficLane) => cell(f.nginx!);
  const throughput = (f: TrafficLane) =>
    `${f.throughput.churn.toFixed(0)} of ${f.throughput.baseline.toFixed(0)} req/s (${
      (100 * f.throughput.churn / f.throughput.baseline).toFixed(0)
    }%)`;
  const latency = (f: TrafficLane) =>
    (["baseline", "stop", "kill", "host"] as const).map((w) => {
      const l = f.latency[w];
      return l ? `${formatMs(l.p99Ms)} / ${formatMs(l.worstMs)}` : "n/a";
    }).join("; ");
  return [
    [
      `failed requests in stop cycles (${t?.cycles.stop ?? "n/a"})`,
      "0 of either method",
      ...each((f) => failedOf(f, "stop"), (f) => failedOf(f, "stop")),
      met(wait && wait.failed.stop.GET + wait.failed.stop.POST === 0),
    ],
    [
      `failed requests in kill cycles (${t?.cycles.kill ?? "n/a"})`,
      "",
      ...each((f) => failedOf(f, "kill"), (f) => failedOf(f, "kill")),
      "",
    ],
    [
      "failed requests after the host death",
      "",
      ...each((f) => failedOf(f, "host"), (f) => failedOf(f, "host")),
      "",
    ],
    [
      "record removed to nginx reloaded (the render's `reloaded` line); lane 1: to out of rotation",
      "p99 100 ms",
      ...each(nginx((n) => p50p99(n.removedToReloadedMs)), (f) => p50p99(f.removedToOutMs)),
      met(n4 && n4.removedToReloadedMs.length > 0 && percentile(n4.removedToReloadedMs, 99) <= 100),
    ],
    [
      "record removed to nginx's new worker (its error log)",
      "",
      ...each(nginx((n) => p50p99(n.removedToWorkerMs))),
      "",
    ],
    [
      "new record to nginx reloaded with it; lane 1: to serving",
      "",
      ...each(nginx((n) => p50p99(n.putToReloadedMs)), (f) => p50p99(f.putToServingMs)),
      "",
    ],
    [
      "nginx reloads during the churn (a minute); lane 1: HAProxy reloads",
      "at most removals + one per `--wait` window",
      ...each(
        nginx((n) => `${n.reloads} (${n.reloadsPerMinute.toFixed(1)}/min)`),
        (f) => String(f.reloads),
      ),
      met(n4 && n4.reloads <= n4.removals + n4.windows),
    ],
    [
      "changes that removed an instance + `--wait` windows of the others (without `--wait`: one a change)",
      "",
      ...each(nginx((n) => `${n.removals} + ${n.windows} = ${n.removals + n.windows} (other changes: ${n.additions})`)),
      "",
    ],
    [
      "the render's `rendered` / `reloaded` log lines during the churn",
      "",
      ...each(nginx((n) => `${n.rendered} / ${n.reloaded}`)),
      "",
    ],
    [
      "SIGKILL to record gone (the secretary's own finding)",
      "",
      ...each((f) => p50p99(f.killToGoneMs), (f) => p50p99(f.killToGoneMs)),
      "",
    ],
    [
      "host death to record gone (its lease expired)",
      "",
      ...each(
        (f) => f.hostRecordGoneMs === null ? "never" : formatMs(f.hostRecordGoneMs),
        (f) => f.hostRecordGoneMs === null ? "never" : formatMs(f.hostRecordGoneMs),
      ),
      "",
    ],
    [
      "throughput during the churn, against the baseline",
      "",
      ...each(throughput, throughput),
      "",
    ],
    [
      "latency of successful requests, p99 / worst: baseline; stop; kill; host death",
      "",
      ...each(latency, latency),
      "",
    ],
  ];
}

/** The sections: what ran, the tables (HAProxy's lanes, nginx's), and which lane-1 and lane-4 targets this run met. */
export function trafficSection(t: TrafficFigures | undefined, cores: number): string {
  const rows = trafficRows(t);
  const header = ["figure", "target (lane 1)", "1. ours", "2. no registry", "3. ours, --no-watch-connection", "met"];
  const what = t
    ? `${t.churnSeconds} s of churn after a ${t.baselineSeconds} s baseline: ${t.cycles.stop} stops, ${t.cycles.kill} ` +
      `kills and one host death, a cycle every ${
        t.cycleMs / 1000
      } s; ${t.clients} keep-alive clients a lane, GET and ` +
      `POST in turn, ${t.deadlineMs / 1000} s deadline, no client retry; instances answer after ${t.workMs} ms. ` +
      `Secretaries: \`${t.secretaryArgs.join(" ")}\` (${t.runtime === "deno" ? "the bundle" : "source"}); ` +
      `the sync's server options: \`${t.serverOptions}\`; lane 2's servers: \`${t.staticServerOptions}\`.` +
      (t.backendLines.length ? ` Added to every backend: \`${t.backendLines.join("; ")}\`.` : "") +
      ` The machine's load average (1 min, ${coresText(cores)}) was ${t.loadAverage.start} as the churn began and ` +
      `${t.loadAverage.end} as it ended.`
    : "The traffic benchmark failed or did not run.";
  const nginxRows = trafficNginxRows(t);
  const nginxHeader = [
    "figure",
    "target (lane 4)",
    "4. nginx, `render --wait`",
    "5. nginx, reload on every change (confd)",
    "6. nginx, `render --wait`, `keepalive_timeout 0`",
    "1. ours (HAProxy), beside them",
    "met",
  ];
  const wait = t?.lanes[3]?.nginx?.wait;
  const nginxWhat = t?.lanes[3]?.nginx
    ? `Lanes 4 to 6 of the same run, with the same churn and load: Debian's nginx with \`proxy_next_upstream ` +
      `error timeout http_502\` and \`proxy_connect_timeout 1s\`, its upstream rendered by \`registry render\` ` +
      `from the shipped template (units/examples/nginx/apache-upstream.conf.tmpl), checked with \`nginx -t\` and ` +
      `reloaded with \`nginx -s reload\`; lane 4 with the shipped unit's \`--wait ${wait}\`, lane 5 without ` +
      "`--wait` (every change rendered and reloaded at once, as confd does); lane 6 as lane 4, with " +
      "`keepalive_timeout 0;` in nginx's server block (no keep-alive to the clients: at a reload, nginx's old " +
      "worker closes its idle keep-alive connections, and a request sent on one at that instant fails unless the " +
      "client retries it). nginx's upstream state cannot be read: times run to the render's `reloaded` line and to " +
      "nginx's new worker, not to out of rotation."
    : "The nginx lanes did not run.";
  return `## Traffic through HAProxy while instances come and go

${what}

${markdown(rows, header)}

${verdict(rows)}

## Traffic through nginx fed by \`registry render\`

${nginxWhat}

${markdown(nginxRows, nginxHeader)}

${verdict(nginxRows)}`;
}
