/**
 * The removal trials' rows of bench/README.md's main table (bench/removal.ts):
 * ours beside the article's loop at its settings and at ours, each target
 * judged on ours. A missing phase reads `n/a` and is not judged.
 *
 * @module
 */
import type { RemovalFigures } from "../removal.ts";
import { met, mw, worst } from "./table.ts";

/** Hung targets answering again: back times, and how many never came back within the bound. */
function back(r: RemovalFigures | undefined): string {
  if (!r) return "n/a";
  const times = r.back.filter((b): b is number => b !== null);
  const never = r.back.length - times.length;
  if (never === 0) return mw(times);
  if (times.length === 0) return `never: ${never} of ${never} not back within ${r.backBoundMs / 1000} s`;
  return `${mw(times)}; ${never} of ${r.back.length} not back within ${r.backBoundMs / 1000} s`;
}

function perRuntime(r: RemovalFigures | undefined, key: "start" | "sigterm"): string {
  if (!r) return "n/a";
  return Object.entries(r[key]).map(([runtime, times]) => `${runtime}: ${mw(times)}`).join("; ");
}

/** Whether every runtime's worst `key` time was within `bound` ms. */
function all(r: RemovalFigures | undefined, key: "start" | "sigterm", bound: number): boolean | undefined {
  return r ? Object.values(r[key]).every((t) => worst(t) <= bound) : undefined;
}

/** The killed target's row: the first of the table, before bench/report/killed.ts's. */
export function killedTargetRow(
  ours: RemovalFigures | undefined,
  a20: RemovalFigures | undefined,
  a2: RemovalFigures | undefined,
): string[] {
  return [
    "killed target to gone",
    "worst 2.5 s",
    mw(ours?.killed),
    mw(a20?.killed),
    mw(a2?.killed),
    met(ours && worst(ours.killed) <= 2500),
  ];
}

/** The other rows: hung, back, SIGKILL and SIGTERM of the sidekick, start. */
export function removalRows(
  ours: RemovalFigures | undefined,
  a20: RemovalFigures | undefined,
  a2: RemovalFigures | undefined,
): string[][] {
  return [
    [
      "hung target to gone",
      "worst 4.5 s",
      mw(ours?.hung),
      mw(a20?.hung),
      mw(a2?.hung),
      met(ours && worst(ours.hung) <= 4500),
    ],
    [
      "hung target answering again to back",
      "within 3 s",
      back(ours),
      back(a20),
      back(a2),
      met(ours && ours.back.every((b) => b !== null && b <= 3000)),
    ],
    [
      "SIGKILL of the sidekick to gone",
      "within TTL + 0.5 s (10.5 s)",
      mw(ours?.sigkill),
      mw(a20?.sigkill),
      mw(a2?.sigkill),
      met(ours && worst(ours.sigkill) <= 10_500),
    ],
    [
      "SIGTERM to gone",
      "50 ms",
      perRuntime(ours, "sigterm"),
      perRuntime(a20, "sigterm"),
      perRuntime(a2, "sigterm"),
      met(all(ours, "sigterm", 50)),
    ],
    [
      "start to registered",
      "1 s",
      perRuntime(ours, "start"),
      perRuntime(a20, "start"),
      perRuntime(a2, "start"),
      met(all(ours, "start", 1000)),
    ],
  ];
}
