/**
 * The memory rows of bench/README.md's main table (bench/memory.ts): what a
 * host pays per sidekick under each runtime, and the figure of record, PSS
 * per sidekick with many a host under deno, judged against its target.
 *
 * @module
 */
import { formatMiB } from "../lib.ts";
import type { MemoryFigures, MemoryHost } from "../memory.ts";
import { idle, met } from "./table.ts";

/** The target for the figure of record of memory: PSS per sidekick, deno, many sidekicks a host. */
const MEMORY_TARGET_MIB = 48;

/** What a host pays per sidekick under `runtime`, for each number of sidekicks on it. */
function hostMemory(m: MemoryFigures | undefined, runtime: MemoryHost["runtime"]): string {
  const hosts = m?.hosts.filter((h) => h.runtime === runtime) ?? [];
  if (!hosts.length) return "n/a";
  return hosts.map((h) =>
    `${h.sidekicks} a host: RSS ${formatMiB(h.rssKiB)}, PSS ${formatMiB(h.pssKiB)}, private ${
      formatMiB(h.privateKiB)
    }, shared ${formatMiB(h.rssKiB - h.privateKiB)}`
  ).join("; ");
}

export function memoryRows(mem: MemoryFigures | undefined): string[][] {
  const ofRecord = mem?.hosts.find((h) => h.runtime === "deno" && h.sidekicks === mem.perHost);
  return [
    ...(["deno", "node"] as const).map((runtime) => [
      `memory as a host pays it after ${idle(mem?.windowSeconds)}, per sidekick, ${runtime} (the unit's flags)`,
      "",
      hostMemory(mem, runtime),
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
  ];
}
