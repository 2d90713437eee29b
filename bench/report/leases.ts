/**
 * bench/README.md's scale section: the lease load and the watch fan-out
 * (bench/leases.ts, bench/fanout.ts, which make their own tables), with the
 * scale targets judged from the run.
 *
 * @module
 */
import { type FanoutFigures, fanoutTable } from "../fanout.ts";
import { type LeaseFigures, leaseTable } from "../leases.ts";
import { formatMs } from "../lib.ts";
import { coresText } from "./table.ts";

/** Lease load and watch fan-out (bench/leases.ts, bench/fanout.ts), with the scale targets judged from the run. */
export function scaleSection(
  leases: LeaseFigures | undefined,
  fanout: FanoutFigures | undefined,
  cores: number,
): string {
  const judged: string[] = [];
  if (leases) {
    const big = leases.runs.filter((r) => r.instances >= 10_000);
    for (const r of big) {
      const held = !r.error && r.registered === r.instances && r.leasesLost === 0;
      const out = !r.error && r.killed.length > 0 && r.killedWithinBound === r.killed.length;
      judged.push(
        `- ${r.instances.toLocaleString("en-US")} instances, TTL ${r.ttlSeconds} s, ${
          r.path === "proxy" ? `${r.proxies} gRPC proxies` : "direct"
        }: ${
          r.error
            ? `failed (${r.error})`
            : `${held ? "held" : "**not held**"} (${r.leasesLost} leases lost), the ${r.killed.length} killed ${
              out ? "out" : "**not all out**"
            } within ${formatMs(leases.killBoundMs)} (${r.killedWithinBound} were)`
        }.`,
      );
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
  return `## Scale: lease load and watch fan-out

Targets: 10,000 instances held with 0 leases lost and 10 killed ones out within 0.5 s; at 100 watchers through etcd's
gRPC proxy, watch p99 no worse than twice one direct watcher's. What to run at each size, from these tables:
[docs/scale.md](../docs/scale.md).

${judged.length ? judged.join("\n") : "Neither the lease load nor the fan-out ran."}

Lease load ([leases.ts](leases.ts)): the secretary's own registrar (lib/registrar.ts), one connection an instance, in
the threads of one process on the machine's ${coresText(cores)} beside three members on loopback; "proxies": one
\`etcd grpc-proxy\` per host group.

${leases ? leaseTable(leases) : "The lease load failed or did not run."}

Watch fan-out ([fanout.ts](fanout.ts)): followers of one service (lib/follow.ts, as \`registry watch\`, \`sync\`
and \`render\` follow it), each with its own connection, while its instances change; then a quiet window.

${fanout ? fanoutTable(fanout) : "The fan-out failed or did not run."}`;
}
