/**
 * The idle cost rows of bench/README.md's main table (bench/cost.ts): etcd's
 * writes, proposals, revisions and watch events per healthy instance-minute,
 * processes started, resident memory and CPU, ours beside the article's loop.
 *
 * @module
 */
import type { CostFigures, HostCost } from "../cost.ts";
import { formatMiB, summarize } from "../lib.ts";
import { idle, met, rate } from "./table.ts";

function hostOf(c: CostFigures | undefined, prefix: string): HostCost[] {
  return c?.host.filter((h) => h.label.startsWith(prefix)) ?? [];
}

function medianOf(hosts: HostCost[], field: keyof Omit<HostCost, "label">): number {
  return hosts.length ? summarize(hosts.map((h) => h[field])).median : NaN;
}

function memory(hosts: HostCost[]): string {
  return hosts.length ? formatMiB(medianOf(hosts, "rssKiB")) : "n/a";
}

/** etcd's counters and the processes started: the rows after the removal trials'. */
export function costRows(cost: CostFigures | undefined): string[][] {
  const etcdOf = (label: string) => cost?.etcd.find((e) => e.label.startsWith(label));
  const [e, e20, e2] = [etcdOf("ours"), etcdOf("article's loop, 20"), etcdOf("article's loop, 2 ")];
  const cluster = (x: typeof e) =>
    x ? `${rate(x.proposals)}, plus ${rate(x.clusterProposalsPerMinute)} a minute cluster-wide` : "n/a";
  const ours = [...hostOf(cost, "ours, deno"), ...hostOf(cost, "ours, node")];
  const loop20 = hostOf(cost, "article's loop, 20");
  const loop2 = hostOf(cost, "article's loop, 2 ");
  return [
    [
      "raft proposals per healthy instance-minute",
      "0",
      rate(e?.proposals),
      cluster(e20),
      cluster(e2),
      met(e && e.proposals === 0),
    ],
    [
      "writes (v3 puts, v2 sets) per healthy instance-minute",
      "0",
      rate(e?.writes),
      rate(e20?.writes),
      rate(e2?.writes),
      met(e && e.writes === 0),
    ],
    [
      "revision (v2: index) growth per healthy instance-minute",
      "0",
      rate(e?.revisions),
      rate(e20?.revisions),
      rate(e2?.revisions),
      met(e && e.revisions === 0),
    ],
    [
      "watch events per healthy instance-minute",
      "0",
      rate(e?.watchEvents),
      rate(e20?.watchEvents),
      rate(e2?.watchEvents),
      met(e && e.watchEvents === 0),
    ],
    [
      "processes started per minute",
      "0",
      rate(medianOf(ours, "processesPerMinute")),
      rate(medianOf(loop20, "processesPerMinute")),
      rate(medianOf(loop2, "processesPerMinute")),
      met(cost && ours.every((h) => h.processesPerMinute === 0)),
    ],
  ];
}

/** Resident memory after the idle window, under deno and node: before bench/report/memory.ts's rows. */
export function costMemoryRows(cost: CostFigures | undefined): string[][] {
  const floor = (label: string) => memory(hostOf(cost, label));
  const loop20 = hostOf(cost, "article's loop, 20");
  const loop2 = hostOf(cost, "article's loop, 2 ");
  return [
    [
      `resident memory after ${idle(cost?.windowSeconds)}, deno`,
      "",
      `${memory(hostOf(cost, "ours, deno"))} (an empty script: ${floor("empty script, deno")})`,
      `${memory(loop20)} (bash + sleep)`,
      `${memory(loop2)} (bash + sleep)`,
      "",
    ],
    [
      `resident memory after ${idle(cost?.windowSeconds)}, node`,
      "",
      `${memory(hostOf(cost, "ours, node"))} (an empty script: ${floor("empty script, node")})`,
      "",
      "",
      "",
    ],
  ];
}

/** CPU seconds per hour of one sidekick (after bench/report/memory.ts's rows). */
export function costCpuRow(cost: CostFigures | undefined): string[] {
  const oursDeno = hostOf(cost, "ours, deno");
  const oursNode = hostOf(cost, "ours, node");
  return [
    "CPU seconds per hour, one sidekick",
    "",
    ([["deno", oursDeno], ["node", oursNode]] as const).filter(([, h]) => h.length)
      .map(([r, h]) => `${r}: ${rate(medianOf(h, "cpuSecondsPerHour"))}`).join("; ") || "n/a",
    rate(medianOf(hostOf(cost, "article's loop, 20"), "cpuSecondsPerHour")),
    rate(medianOf(hostOf(cost, "article's loop, 2 "), "cpuSecondsPerHour")),
    "",
  ];
}
