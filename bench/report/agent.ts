/**
 * The agent's rows of bench/README.md's main table (bench/agent.ts): killed
 * and hung targets to gone with many instances on one agent, judged against
 * the sidekick's in the same run (bench/removal.ts, ours); answering again to
 * back; and the records across a restart of the agent (SIGTERM, start again).
 *
 * @module
 */
import type { AgentFigures } from "../agent.ts";
import { formatMs, summarize } from "../lib.ts";
import type { RemovalFigures } from "../removal.ts";
import { met, mw } from "./table.ts";

/** How much slower than the sidekick's the agent's median may be: 10%. */
const WITHIN = 1.1;

/** The median of some times; undefined when there are none. */
function median(times: number[] | undefined): number | undefined {
  return times?.length ? summarize(times).median : undefined;
}

/** A removal row: the agent's times beside the sidekick's, judged on the medians. */
function againstSidekick(
  figure: string,
  agent: number[] | undefined,
  sidekick: number[] | undefined,
  judge: boolean,
): string[] {
  const a = median(agent);
  const s = median(sidekick);
  return [
    figure,
    `median at most 10% above the sidekick's, this run${s === undefined ? "" : ` (${formatMs(s * WITHIN)})`}`,
    `${mw(agent)} (the sidekick's: ${mw(sidekick)})`,
    "n/a",
    "n/a",
    judge ? met(a !== undefined && s !== undefined && a <= s * WITHIN) : "",
  ];
}

export function agentRows(agent: AgentFigures | undefined, ours: RemovalFigures | undefined): string[][] {
  const n = agent?.instances ?? 100;
  const on = `${n} instances on one agent`;
  const back = agent?.back.filter((b): b is number => b !== null);
  const notBack = agent ? agent.back.length - (back?.length ?? 0) : 0;
  const restarts = agent?.restarts ?? [];
  const deleted = restarts.reduce((sum, r) => sum + r.deletes, 0);
  const missing = restarts.reduce((sum, r) => sum + r.missing, 0);
  const puts = restarts.reduce((sum, r) => sum + r.puts, 0);
  const judge = agent !== undefined && ours !== undefined;
  return [
    [
      `${on}: attached at once to all registered`,
      "",
      agent ? formatMs(agent.allRegisteredMs) : "n/a",
      "n/a",
      "n/a",
      "",
    ],
    againstSidekick(`killed target to gone, ${on}`, agent?.killed, ours?.killed, judge),
    againstSidekick(`hung target to gone, ${on}`, agent?.hung, ours?.hung, judge),
    [
      `hung target answering again to back, ${on}`,
      "",
      agent
        ? `${mw(back)}${
          notBack ? `; ${notBack} of ${agent.back.length} not back within ${agent.backBoundMs / 1000} s` : ""
        }`
        : "n/a",
      "n/a",
      "n/a",
      "",
    ],
    [
      `records deleted or missing across a restart of the agent (SIGTERM, started again), ${n} attached and healthy`,
      "0",
      agent && restarts.length
        ? `${deleted} deleted, ${missing} missing in ${restarts.length} restart${restarts.length === 1 ? "" : "s"} ` +
          `(puts ${puts}${
            restarts.every((r) => r.adopted !== undefined)
              ? `; adopted ${restarts.map((r) => r.adopted).join(", ")} of ${n}, ${
                restarts.every((r) => r.leaseKept)
                  ? "the lease kept each time"
                  : "**the lease not always kept**"
              }`
              : ""
          }; no agent answering for ${mw(restarts.map((r) => r.downMs))})`
        : "n/a",
      "n/a",
      "n/a",
      agent && restarts.length ? met(deleted === 0 && missing === 0) : "",
    ],
  ];
}
