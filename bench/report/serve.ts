/**
 * bench/README.md's `registry serve` section (bench/serve.ts): what ran, in
 * sentences from its figures, and its rows: delete to row gone with one page
 * open and with the event streams beside it, serve's CPU and memory, memory
 * per open stream; issue 24's target judged: delete to row gone p99 within
 * 1 s with 50 pages open at 20 changes a second (the streams stand in for
 * the pages).
 *
 * @module
 */
import { cores, formatMiB, formatMs } from "../lib.ts";
import type { ServeFigures, ServeRound } from "../serve.ts";
import { coresText, met, section } from "./table.ts";

/** The target: p99 delete to row gone, with this many pages open, at this many changes a second. */
const TARGET_MS = 1000;
const TARGET_PAGES = 50;
const TARGET_RATE = 20;

type Times = ServeRound["pageGoneMs"];

/** `p50 12 ms, p99 40 ms, worst 51 ms`, and how many never showed. */
function times(t: Times | undefined): string {
  if (!t) return "n/a";
  return `p50 ${formatMs(t.p50)}, p99 ${formatMs(t.p99)}, worst ${formatMs(t.worst)}${
    t.missed ? `; ${t.missed} never showed` : ""
  }`;
}

/** Whether `t` is within the target: every delete shown, p99 within the bound. */
const within = (t: Times | undefined) => t !== undefined && t.missed === 0 && t.p99 <= TARGET_MS;

export function serveSection(s: ServeFigures | undefined, machineCores: number): string {
  const [alone, beside] = [s?.rounds.find((r) => r.streams === 0), s?.rounds.find((r) => r.streams > 0)];
  const streams = beside?.streams ?? "n/a";
  const what = s
    ? `${
      s.instances.toLocaleString("en")
    } instances in 10 services, then ${s.rate} changes a second for ${s.seconds} ` +
      "s a round (half deletes of a random instance, half puts of one deleted earlier) through etcd's JSON gateway, " +
      `\`registry serve\` (${s.runtime === "source" ? "from source" : "the bundle under deno"}) following them. ` +
      "Round 1: one page open in Debian's Chromium (driven by playwright-core); round 2: the same page and " +
      `${streams} \`/v1/events\` streams read by the benchmark's own process, standing in for ${streams} pages ` +
      `(as many browser pages would share Chromium's 6 connections a host and load the machine's ` +
      `${coresText(machineCores)} with their renderers instead of serve). Times run from the delete request sent ` +
      "to the row gone from the page (a MutationObserver stamps it) and to the `gone` event read by each stream. " +
      `The machine's load average (1 min) was ${
        s.rounds.map((r) => `${r.loadAverage[0]} → ${r.loadAverage[1]}`).join(" and ")
      } over the rounds.`
    : "The `registry serve` benchmark failed or did not run.";
  const judged = s && beside
    ? within(beside.pageGoneMs) && within(beside.streamGoneMs) && beside.streams >= TARGET_PAGES &&
      s.rate >= TARGET_RATE
    : undefined;
  const rows = [
    [
      `delete → row gone in the page, 1 page open (${alone?.deletes ?? "n/a"} deletes)`,
      "",
      times(alone?.pageGoneMs),
      "",
    ],
    [
      `delete → row gone in the page, 1 page and ${streams} streams open (${beside?.deletes ?? "n/a"} deletes)`,
      `p99 ${TARGET_MS / 1000} s with ${TARGET_PAGES} pages open at ${TARGET_RATE} changes a second`,
      times(beside?.pageGoneMs),
      met(judged),
    ],
    [`delete → \`gone\` event read, each of the ${streams} streams`, "", times(beside?.streamGoneMs), ""],
    [
      "of which etcd: delete → its answer; 1 page, then with the streams",
      "",
      both(alone, beside, "deleteAnswerMs"),
      "",
    ],
    [
      "serve's CPU, a share of one core; 1 page, then with the streams",
      "",
      alone || beside ? [alone, beside].map((r) => r ? cores(r.cpu) : "n/a").join("; ") : "n/a",
      "",
    ],
    [
      "serve's resident memory: idle with the listing; 1 page; with the streams",
      "",
      s
        ? [s.idleRssKiB, alone?.rssKiB, beside?.rssKiB].map((k) => k === undefined ? "n/a" : formatMiB(k)).join("; ")
        : "n/a",
      "",
    ],
    [
      "memory per open event stream",
      "",
      s && Number.isFinite(s.perStreamKiB) ? `${s.perStreamKiB.toFixed(0)} KiB` : "n/a",
      "",
    ],
  ];
  return section("`registry serve`: the registry as a live page", what, rows, ["figure", "target", "this run", "met"]);
}

/** One figure of both rounds: `p50 …; p50 …`. */
function both(a: ServeRound | undefined, b: ServeRound | undefined, key: "deleteAnswerMs"): string {
  return a || b ? [a, b].map((r) => times(r?.[key])).join("; ") : "n/a";
}
