/**
 * The killed-target rows of bench/README.md's main table (bench/killed.ts):
 * a server process and Apache's process group killed, with the connection
 * watch on and off; the target judged with the watch on.
 *
 * @module
 */
import type { KilledFigures } from "../killed.ts";
import { met, mw, worst } from "./table.ts";

export function killedRows(killed: KilledFigures | undefined): string[][] {
  const times = (target: string, watch: boolean) =>
    killed?.rows.find((r) => r.target === target && r.watch === watch)?.times;
  return (["process", "apache"] as const).map((target) => [
    `killed ${target === "apache" ? "Apache (its process group)" : "server process"} to gone, SIGKILL, watch on / off`,
    "worst 0.5 s (watch on)",
    `on: ${mw(times(target, true))}; off: ${mw(times(target, false))}`,
    "n/a",
    "n/a",
    met(killed && worst(times(target, true)) <= 500),
  ]);
}
