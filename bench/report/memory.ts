/**
 * The memory rows of bench/README.md's main table (bench/memory.ts): what a
 * host pays per sidekick under each runtime, and per instance with the agent;
 * the figure of record, PSS per sidekick with many a host under deno, and the
 * agent's PSS per instance at ten and a hundred a host, judged against their
 * targets; CPU per instance-hour, the agent's beside the sidekick's.
 *
 * @module
 */
import { formatMiB } from "../lib.ts";
import type { MemoryFigures, MemoryHost } from "../memory.ts";
import { idle, met, rate } from "./table.ts";

/** The target for the figure of record of memory: PSS per sidekick, deno, many sidekicks a host. */
const MEMORY_TARGET_MIB = 48;
/** The agent's targets: PSS per instance at ten a host, and at a hundred. */
const AGENT_TARGETS_MIB: Readonly<Record<number, number>> = { 10: 8, 100: 1.5 };

/** Whether a host is the agent's (runs before the agent had sidekicks only). */
function isAgent(h: MemoryHost): boolean {
  return h.kind === "agent";
}

/** Instances on a host (runs before the agent counted sidekicks only). */
function instancesOf(h: MemoryHost): number {
  return h.instances ?? h.sidekicks;
}

/** What a host pays per instance on the hosts `which` picks, for each number of instances on it. */
function hostMemory(m: MemoryFigures | undefined, which: (h: MemoryHost) => boolean): string {
  const hosts = m?.hosts.filter(which) ?? [];
  if (!hosts.length) return "n/a";
  return hosts.map((h) =>
    `${instancesOf(h)} a host: RSS ${formatMiB(h.rssKiB)}, PSS ${formatMiB(h.pssKiB)}, private ${
      formatMiB(h.privateKiB)
    }, shared ${formatMiB(h.rssKiB - h.privateKiB)}`
  ).join("; ");
}

/** The agent's PSS per instance with `n` a host, judged when the issue set a target for that many. */
function agentPssRow(mem: MemoryFigures | undefined, n: number | undefined): string[] {
  const host = mem?.hosts.find((h) => isAgent(h) && instancesOf(h) === n);
  const targetMiB = n === undefined ? undefined : AGENT_TARGETS_MIB[n];
  return [
    `PSS per instance, ${n ?? "n/a"} a host, the agent (deno, its unit's flags)`,
    targetMiB === undefined ? "" : `${targetMiB} MiB`,
    host ? formatMiB(host.pssKiB) : "n/a",
    "n/a",
    "n/a",
    targetMiB === undefined || !mem ? "" : met(host !== undefined && host.pssKiB <= targetMiB * 1024),
  ];
}

/** CPU per instance-hour, the agent's beside deno's sidekicks', at each number a host; judged at the many and dense. */
function cpuRow(mem: MemoryFigures | undefined): string[] | undefined {
  const agents = mem?.hosts.filter(isAgent) ?? [];
  if (mem && !agents.length) return undefined; // a run before the agent
  const sidekicksOf = (n: number) =>
    mem?.hosts.find((h) => !isAgent(h) && h.runtime === "deno" && instancesOf(h) === n);
  const judged = [mem?.perHost, mem?.dense].filter((n): n is number => !!n);
  const pairs = agents.map((a) => ({
    n: instancesOf(a),
    agent: a.cpuSecondsPerHour,
    sidekick: sidekicksOf(instancesOf(a))?.cpuSecondsPerHour,
  }));
  return [
    `CPU seconds per instance-hour over ${idle(mem?.windowSeconds)}, the agent beside sidekicks (deno)`,
    `no more than the sidekick's (${judged.length ? judged.join(" and ") : "n/a"} a host)`,
    pairs.length
      ? pairs.map((p) => `${p.n} a host: agent ${rate(p.agent)}, sidekick ${rate(p.sidekick)}`).join("; ")
      : "n/a",
    "n/a",
    "n/a",
    met(
      mem &&
        judged.every((n) => {
          const p = pairs.find((x) => x.n === n);
          return p?.agent !== undefined && p.sidekick !== undefined && p.agent <= p.sidekick;
        }),
    ),
  ];
}

export function memoryRows(mem: MemoryFigures | undefined): string[][] {
  const ofRecord = mem?.hosts.find((h) => h.runtime === "deno" && !isAgent(h) && h.sidekicks === mem.perHost);
  const cpu = cpuRow(mem);
  const withAgent = !mem || mem.hosts.some(isAgent);
  return [
    ...(["deno", "node"] as const).map((runtime) => [
      `memory as a host pays it after ${idle(mem?.windowSeconds)}, per sidekick, ${runtime} (the unit's flags)`,
      "",
      hostMemory(mem, (h) => h.runtime === runtime && !isAgent(h)),
      "n/a",
      "n/a",
      "",
    ]),
    [
      `PSS per sidekick, ${mem?.perHost ?? "n/a"} a host, deno (the unit's flags): the figure of record for memory`,
      `${MEMORY_TARGET_MIB} MiB`,
      ofRecord ? formatMiB(ofRecord.pssKiB) : "n/a",
      "n/a",
      "n/a",
      met(ofRecord && ofRecord.pssKiB <= MEMORY_TARGET_MIB * 1024),
    ],
    ...(withAgent
      ? [
        [
          `memory as a host pays it after ${
            idle(mem?.windowSeconds)
          }, per instance, the agent (deno, its unit's flags)`,
          "",
          hostMemory(mem, isAgent),
          "n/a",
          "n/a",
          "",
        ],
        agentPssRow(mem, mem ? mem.perHost : 10),
        ...(mem?.dense === 0 ? [] : [agentPssRow(mem, mem ? mem.dense : 100)]),
      ]
      : []),
    ...(cpu ? [cpu] : []),
  ];
}
