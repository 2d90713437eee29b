/**
 * The 100 sidekicks' rows of bench/README.md's main table (bench/scale.ts):
 * all registered, the killed ones gone and no other lost, steady proposals.
 *
 * @module
 */
import { formatMiB, formatMs, summarize } from "../lib.ts";
import type { ScaleFigures } from "../scale.ts";
import { met, mw, rate } from "./table.ts";

export function scaleRows(scale: ScaleFigures | undefined): string[][] {
  const killed = scale
    ? `${scale.killedGone} of ${scale.killed.length} gone, ${scale.killedWithinBound} within ${
      scale.killedBoundMs / 1000
    } s (${
      mw(scale.killed.filter(Number.isFinite))
    }); other records lost: ${scale.othersLost}; deregistered while starting them all: ${scale.flapsDuringStart}`
    : "n/a";
  return [
    [
      `${scale?.instances ?? "n/a"} sidekicks: first start to all registered`,
      "",
      scale ? `${formatMs(scale.allRegisteredMs)} (each: ${mw(scale.startToRegistered)})` : "n/a",
      "n/a",
      "n/a",
      "",
    ],
    [
      `${scale?.instances ?? "n/a"} sidekicks: ${scale?.killed.length ?? "n/a"} targets killed`,
      "exactly those gone, each within 2.5 s",
      killed,
      "n/a",
      "n/a",
      met(
        scale && scale.killedWithinBound === scale.killed.length && scale.killedGone === scale.killed.length &&
          scale.othersLost === 0,
      ),
    ],
    [
      `${scale?.instances ?? "n/a"} sidekicks: steady proposals per minute`,
      "0",
      scale
        ? `${rate(scale.proposalsPerMinute)} (memory: ${formatMiB(summarize(scale.rssKiB).median)} RSS each, ${
          formatMiB(scale.pssTotalKiB)
        } PSS for all)`
        : "n/a",
      "n/a",
      "n/a",
      met(scale && scale.proposalsPerMinute === 0),
    ],
  ];
}
