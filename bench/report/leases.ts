/**
 * bench/README.md's scale section: the lease load and the watch fan-out
 * (bench/leases.ts, bench/fanout.ts, which make their own tables), with the
 * scale targets judged from the run.
 *
 * @module
 */
import { type FanoutFigures, fanoutTable } from "../fanout.ts";
import {
  describeStreamComparison,
  held,
  largestHeld,
  type LeaseFigures,
  type LeaseRun,
  leaseTable,
  pathName,
  recoveryOf,
  streamTable,
} from "../leases.ts";
import { cores as share, formatMs } from "../lib.ts";
import { coresText } from "./table.ts";

/** A sidekicks' run not held: how it recovered once shed to the largest size held (the issue's second target). */
function recoveryText(r: LeaseRun, runs: LeaseRun[]): string {
  const recovery = recoveryOf(r);
  if (!recovery) {
    return largestHeld(runs, r.instances, r.ttlSeconds, r.path) === undefined
      ? "no smaller size held at this TTL and path to shed to"
      : "recovery not measured (a run saved before the recovery phase)";
  }
  return `shed to ${recovery.to}, ${recovery.recovered ? "recovered" : "**not recovered**"}: ${recovery.detail}, ` +
    `this process at ${share(r.recoverBenchCpu ?? NaN)} CPU`;
}

/** Lease load and watch fan-out (bench/leases.ts, bench/fanout.ts), with the scale targets judged from the run. */
export function scaleSection(
  leases: LeaseFigures | undefined,
  fanout: FanoutFigures | undefined,
  cores: number,
): string {
  const judged: string[] = [];
  if (leases) {
    const big = leases.runs.filter((r) => r.instances >= 10_000);
    // the agents' run beside the sidekicks' of its size, TTL and path
    const sidekicksOf = (r: LeaseRun) =>
      leases.runs.find((x) =>
        !x.perAgent && !x.error && x.instances === r.instances && x.ttlSeconds === r.ttlSeconds && x.path === r.path
      );
    for (const r of big) {
      const beside = r.perAgent && !r.error ? sidekicksOf(r) : undefined;
      const isHeld = held(r);
      const out = !r.error && r.killed.length > 0 && r.killedWithinBound === r.killed.length;
      judged.push(
        `- ${r.instances.toLocaleString("en-US")} instances, TTL ${r.ttlSeconds} s, ${pathName(r)}: ${
          r.error
            ? `failed (${r.error})`
            : `${isHeld ? "held" : "**not held**"} (${r.leasesLost} leases lost), ${
              r.killed.length === 0
                ? "**none registered to kill**"
                : `the ${r.killed.length} killed ${out ? "out" : "**not all out**"} within ${
                  formatMs(leases.killBoundMs)
                } (${r.killedWithinBound} were)`
            }`
        }${
          r.perAgent && !r.error
            ? `; the leader renewed ${Math.round(r.keepAlivesPerSecond)} leases a second at ${share(r.leaderCpu)} ` +
              `CPU${
                beside
                  ? ` (as sidekicks, the same size, TTL and path: ${Math.round(beside.keepAlivesPerSecond)} a ` +
                    `second at ${share(beside.leaderCpu)}, ${beside.leasesLost} leases lost)`
                  : ""
              }`
            : ""
        }${r.error || isHeld || r.perAgent ? "" : `; ${recoveryText(r, leases.runs)}`}.`,
      );
    }
    // absent from runs saved before the comparison, or run with --stream-compare 0
    if (leases.streams) {
      const line = describeStreamComparison(leases.streams, true);
      judged.push(`- ${line[0].toUpperCase()}${line.slice(1)}.`);
    }
  }
  if (fanout) {
    const base = fanout.runs.find((r) =>
      r.watchers === 1 && r.path === "direct" && r.follower === "follow" && !r.error
    );
    const proxied = fanout.runs.find((r) =>
      r.watchers === 100 && r.path === "proxy" && r.follower === "follow" && !r.error
    );
    if (base && proxied) {
      const ratio = proxied.p99Ms / base.p99Ms;
      judged.push(
        `- 100 watchers through the gRPC proxy: watch p99 ${formatMs(proxied.p99Ms)}, ${ratio.toFixed(1)}x one ` +
          `direct watcher's ${formatMs(base.p99Ms)} (target: at most 2x): ${ratio <= 2 ? "met" : "**missed**"}.`,
      );
    }
  }
  const perAgent = leases?.runs.find((r) => r.perAgent)?.perAgent ?? 100;
  return `## Scale: lease load and watch fan-out

Targets: 10,000 instances held with 0 leases lost and 10 killed ones out within 0.5 s (as sidekicks, and as agents of
${perAgent} at TTL 10 s); the leader's CPU per keep-alive at most half with one LeaseKeepAlive stream per connection
as with a stream per keep-alive (the secretary's old behaviour); at 100 watchers through etcd's
gRPC proxy, watch p99 no worse than twice one direct watcher's. What to run at each size, from these tables:
[docs/scale.md](../docs/scale.md).

${
    judged.length
      ? judged.join("\n")
      : leases || fanout
      ? "No run of 10,000 instances, nor of 100 watchers, to judge."
      : "Neither the lease load nor the fan-out ran."
  }

Lease load ([leases.ts](leases.ts)): the secretary's own registrar (lib/registrar.ts), one connection an instance, in
the threads of one process on the machine's ${coresText(cores)} beside three members on loopback; "proxies": one
\`etcd grpc-proxy\` per host group. "Agents of ${perAgent}": every ${perAgent} instances are one host's agent as lib/agent.ts makes it,
but for the checks (no instance is checked here): one connection and one lease, kept alive by its own registrar, each
instance's registrar putting its record under it. A size not held is then shed to the largest size held at its TTL and
path (the instances beyond it stopped as a stopped secretary stops: lease revoked, connection closed), and the last
column gives the time until every kept instance not killed is registered and listed again (at most 3 TTLs + 60 s),
and the leases granted meanwhile per such instance.

${leases ? leaseTable(leases) : "The lease load failed or did not run."}
${
    leases?.streams
      ? `
One LeaseKeepAlive stream per connection (the secretary's) against a stream per keep-alive (its old behaviour, each
connection's stream ended after every answer), the same configuration, each on a fresh cluster in the same run${
        leases.streams.leaderOnly
          ? `; then both with every connection to the leader, where no follower forwards a renewal to it`
          : ""
      }:

${streamTable(leases.streams)}
`
      : ""
  }
Watch fan-out ([fanout.ts](fanout.ts)): followers of one service (lib/follow.ts, as \`registry watch\`, \`sync\`
and \`render\` follow it), each with its own connection, while its instances change; then a quiet window.

${fanout ? fanoutTable(fanout) : "The fan-out failed or did not run."}`;
}
