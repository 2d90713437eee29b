/**
 * The check kinds' rows of bench/README.md's main table (bench/checks.ts):
 * CPU, processes, revisions and memory of one sidekick by check kind.
 *
 * @module
 */
import type { CheckCost, ChecksFigures } from "../checks.ts";
import { formatMiB } from "../lib.ts";
import { idle, met, rate } from "./table.ts";

/** `http: 10; tcp: 9.4; …`: one figure per check kind, of the kinds `which` picks. */
function byCheck(
  c: ChecksFigures | undefined,
  show: (x: CheckCost) => string,
  which: (x: CheckCost) => boolean = () => true,
): string {
  const shown = c?.checks.filter(which) ?? [];
  return shown.length ? shown.map((x) => `${x.label}: ${show(x)}`).join("; ") : "n/a";
}

export function checksRows(checks: ChecksFigures | undefined): string[][] {
  const isExec = (x: CheckCost) => x.label.startsWith("exec");
  return [
    [
      "CPU seconds per hour, one sidekick, by check (of it, exited children)",
      "",
      byCheck(checks, (x) => `${rate(x.cpuSecondsPerHour)} (${rate(x.childCpuSecondsPerHour)})`),
      "n/a",
      "n/a",
      "",
    ],
    [
      "processes started per minute, exec check",
      "",
      byCheck(
        checks,
        (x) => `${rate(x.processesPerMinute)}${x.processesCountedBy === "perf" ? "" : " (one a check, not counted)"}`,
        isExec,
      ),
      "n/a",
      "n/a",
      "",
    ],
    [
      "revision growth per healthy instance-minute, by check",
      "0",
      byCheck(checks, (x) => rate(x.revisionsPerMinute)),
      "n/a",
      "n/a",
      met(checks && checks.checks.every((x) => x.revisionsPerMinute === 0)),
    ],
    [
      `resident memory after ${idle(checks?.windowSeconds)}, by check`,
      "",
      byCheck(checks, (x) => formatMiB(x.rssKiB)),
      "n/a",
      "n/a",
      "",
    ],
  ];
}
