/**
 * The whole benchmark suite in one run: `deno task bench`. Builds the bundles
 * if dist/ lacks them, runs every benchmark (ours and the article's loop in
 * the same run), prints their output as it comes, and writes the figures
 * beside their targets to bench/README.md with the date, the machine and the
 * command. It never asserts a speed. Each phase's sentences and table rows
 * are its own (bench/report/, bench/reload.ts); this file runs the phases and
 * puts the page together.
 *
 * Phases that do not disturb each other's figures run together: the removal
 * trials (ours, and the article's loop at 20 s, which mostly sleeps) beside
 * the idle cost window; then the article's loop at 2 s; then the agent with
 * 100 instances (killed and hung to gone beside the sidekick's, and its
 * restart), alone; then the reads; then
 * what each check kind costs, one sidekick at a time, alone, as it measures
 * CPU; then memory and CPU as a host pays them (hosts of one, ten and a
 * hundred sidekicks under deno, of one and ten under node, and of one, ten
 * and a hundred instances on an agent); then 100 sidekicks, alone, as they
 * load the host;
 * then traffic through HAProxy and nginx while instances come and go (six
 * lanes side by side), alone, as it loads every core; then HAProxy reloaded
 * mid-run, alone, and a burst of thousands of removals through `registry
 * sync`, alone; then `registry serve` with a page and 50 event streams open,
 * alone; then watch fan-out and the lease load of thousands of instances
 * against three members (thousands of sidekicks, then 10,000 instances as 100
 * agents of 100), alone. About 67 minutes on the 2-core machine of record,
 * 38 of them the lease load.
 *
 * Every sentence it writes into bench/README.md comes from that run's
 * figures (the machine's cores too): which targets were met or missed is
 * computed, never written in. `--save FILE` keeps the whole run (every
 * phase's figures and output, the machine) as JSON; `--from FILE` writes the
 * page from such a file and runs nothing.
 *
 * ```sh
 * node_modules/.bin/deno task bench                 # the full suite
 * node_modules/.bin/deno run -A bench/all.ts --quick  # few trials, short windows (about 15 min), for development
 * node_modules/.bin/deno run -A bench/all.ts --quick --out /tmp/bench.md --save /tmp/run.json
 * node_modules/.bin/deno run -A bench/all.ts --from /tmp/run.json --out /tmp/bench.md   # the page again, no run
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { ROOT } from "../testbed/testbed.ts";
import type { AgentFigures } from "./agent.ts";
import type { BurstFigures } from "./burst.ts";
import type { ChecksFigures } from "./checks.ts";
import type { CostFigures } from "./cost.ts";
import type { FanoutFigures } from "./fanout.ts";
import type { KilledFigures } from "./killed.ts";
import type { LeaseFigures } from "./leases.ts";
import { bundlesBuilt, DEFAULT_ARGS } from "./lib.ts";
import type { MemoryFigures } from "./memory.ts";
import type { ReadsFigures } from "./reads.ts";
import { type ReloadFigures, reloadSection } from "./reload.ts";
import type { RemovalFigures } from "./removal.ts";
import { agentRows } from "./report/agent.ts";
import { checksRows } from "./report/checks.ts";
import { costCpuRow, costMemoryRows, costRows } from "./report/cost.ts";
import { killedRows } from "./report/killed.ts";
import { scaleSection } from "./report/leases.ts";
import { memoryRows } from "./report/memory.ts";
import { howTaken } from "./report/method.ts";
import { readsRows } from "./report/reads.ts";
import { killedTargetRow, removalRows } from "./report/removal.ts";
import { scaleRows } from "./report/scale.ts";
import { serveSection } from "./report/serve.ts";
import { markdown, section, verdict } from "./report/table.ts";
import { trafficSection } from "./report/traffic.ts";
import type { ScaleFigures } from "./scale.ts";
import type { ServeFigures } from "./serve.ts";
import type { TrafficFigures } from "./traffic/figures.ts";

/** One benchmark run as a child process: its name, script, arguments and time limit. */
interface Phase {
  name: string;
  script: string;
  args: string[];
  limitMinutes: number;
}

interface PhaseResult {
  name: string;
  output: string;
  seconds: number;
  figures?: unknown;
  error?: string;
}

/** A whole run, as the page is written from it (and as `--save` keeps it). */
interface SuiteRun {
  quick: boolean;
  /** When it began, ISO 8601, and how long it took. */
  began: string;
  minutes: number;
  /** What went wrong before the phases (the bundles), or "". */
  note: string;
  machine: string;
  /** The machine's cores (`nproc`), for the sentences that weigh a load. */
  cores: number;
  results: PhaseResult[];
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean", default: false },
    out: { type: "string", default: `${ROOT}bench/README.md` },
    save: { type: "string" },
    from: { type: "string" },
  },
});
const quick = values.quick;
const q = quick ? ["--quick"] : [];

/** Runs one benchmark to its end (or its time limit), echoing its lines with its name. */
async function run(phase: Phase, dir: string): Promise<PhaseResult> {
  const json = `${dir}/${phase.name}.json`;
  const began = Date.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", `bench/${phase.script}`, ...phase.args, "--json", json],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  // over its limit: SIGTERM lets it stop what it started; SIGKILL if it does not
  const limitMs = phase.limitMinutes * 60_000;
  const term = setTimeout(() => child.kill("SIGTERM"), limitMs);
  const kill = setTimeout(() => child.kill("SIGKILL"), limitMs + 30_000);
  let output = "";
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    let partial = "";
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      const lines = (partial + decoder.decode(chunk, { stream: true })).split("\n");
      partial = lines.pop()!;
      for (const line of lines) {
        output += `${line}\n`;
        console.log(`[${phase.name}] ${line}`);
      }
    }
    if (partial) output += `${partial}\n`;
  };
  await Promise.all([pump(child.stdout), pump(child.stderr)]);
  const status = await child.status;
  clearTimeout(term);
  clearTimeout(kill);
  const seconds = (Date.now() - began) / 1000;
  if (!status.success) {
    return { name: phase.name, output, seconds, error: `exited ${status.code} after ${seconds.toFixed(0)} s` };
  }
  return { name: phase.name, output, seconds, figures: JSON.parse(await Deno.readTextFile(json)) };
}

function text(args: string[]): string {
  try {
    const out = new Deno.Command(args[0], { args: args.slice(1), stdout: "piped", stderr: "null" }).outputSync();
    return new TextDecoder().decode(out.stdout).trim();
  } catch {
    return "unknown";
  }
}

function machine(): string {
  const cpu = /^model name\s*:\s*(.*)$/m.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1] ?? "unknown";
  const memKiB = Number(/^MemTotal:\s+(\d+)/m.exec(Deno.readTextFileSync("/proc/meminfo"))?.[1] ?? 0);
  const etcd = /etcd Version: (\S+)/.exec(text(["etcd", "--version"]))?.[1] ?? "unknown";
  return `${text(["nproc"])} cores (${cpu}), ${(memKiB / 1024 / 1024).toFixed(0)} GiB, ` +
    `${text(["uname", "-sr"])}; etcd ${etcd}, deno ${Deno.version.deno}, node ${text(["node", "--version"])}`;
}

// ---------------------------------------------------------------------------
// The page

/** The main table's rows: figure, target, ours, the article's loop at its settings and at ours, and whether ours met it. */
function tableRows(fig: <T>(name: string) => T | undefined): string[][] {
  const removal = [
    fig<RemovalFigures>("removal-ours"),
    fig<RemovalFigures>("removal-article-20s"),
    fig<RemovalFigures>("removal-article-2s"),
  ] as const;
  const cost = fig<CostFigures>("cost");
  return [
    killedTargetRow(...removal),
    ...killedRows(fig<KilledFigures>("killed")),
    ...removalRows(...removal),
    ...agentRows(fig<AgentFigures>("agent"), removal[0]),
    ...costRows(cost),
    ...costMemoryRows(cost),
    ...memoryRows(fig<MemoryFigures>("memory")),
    costCpuRow(cost),
    ...checksRows(fig<ChecksFigures>("checks")),
    ...readsRows(fig<ReadsFigures>("reads")),
    ...scaleRows(fig<ScaleFigures>("scale")),
  ];
}

/** The columns of a section with one run's figures and no article's loop. */
const THIS_RUN = ["figure", "target", "this run", "met"];

function readme(run: SuiteRun): string {
  const command = run.quick
    ? "node_modules/.bin/deno run -A bench/all.ts --quick"
    : "node_modules/.bin/deno task bench";
  const results = new Map(run.results.map((r) => [r.name, r]));
  const fig = <T>(name: string) => results.get(name)?.figures as T | undefined;
  const rows = tableRows(fig);
  const reload = reloadSection(fig<ReloadFigures>("reload"), fig<BurstFigures>("burst"));
  // each phase's own section; the list of how each figure is taken last
  const sections = [
    trafficSection(fig<TrafficFigures>("traffic"), run.cores),
    section("HAProxy reloaded mid-run, and a burst of removals", reload.what, reload.rows, THIS_RUN),
    serveSection(fig<ServeFigures>("serve"), run.cores),
    scaleSection(fig<LeaseFigures>("leases"), fig<FanoutFigures>("fanout"), run.cores),
    howTaken(
      fig<KilledFigures>("killed"),
      fig<MemoryFigures>("memory"),
      fig<ScaleFigures>("scale"),
      fig<ServeFigures>("serve"),
      fig<AgentFigures>("agent"),
    ),
  ].join("\n\n");
  const details = run.results.map((r) =>
    `### ${r.name} (${r.seconds.toFixed(0)} s${
      r.error ? `, failed: ${r.error}` : ""
    })\n\n\`\`\`\n${r.output.trim()}\n\`\`\``
  ).join("\n\n");
  return `# Benchmarks

${
    run.quick
      ? "**A quick run (`--quick`): few trials and short windows, so the figures are noisy. Run `deno task bench` for the figures of record.**\n\n"
      : ""
  }\
- Date: ${run.began}, ${run.minutes.toFixed(1)} minutes
- Machine: ${run.machine}
- Command: \`${command}\`${run.note ? `\n- ${run.note}` : ""}

Our secretary at its defaults (\`${DEFAULT_ARGS.join(" ")}\`; the deno bundle unless a runtime is named) beside the
2015 article's bash loop ([article-loop.sh](article-loop.sh)) on etcd's v2 API, at the article's interval and TTL and
at ours. Times run from the event to the record's watch event (etcd v3 watch for ours, v2 long polls for the loop).

${markdown(rows)}

${verdict(rows)}

${sections}
## Output of each benchmark

${details}
`;
}

/** Every phase, stage by stage: the phases of a stage run together. */
async function runPhases(dir: string): Promise<PhaseResult[]> {
  const results: PhaseResult[] = [];
  const stage = async (phases: Phase[]) => {
    results.push(...await Promise.all(phases.map((p) => run(p, dir))));
  };
  await stage([
    { name: "removal-ours", script: "removal.ts", args: ["--impl", "ours", ...q], limitMinutes: 8 },
    {
      name: "removal-article-20s",
      script: "removal.ts",
      args: ["--impl", "article", "--interval", "20", "--ttl", "30", ...q],
      limitMinutes: 8,
    },
    { name: "cost", script: "cost.ts", args: q, limitMinutes: 6 },
  ]);
  await stage([{
    name: "removal-article-2s",
    script: "removal.ts",
    args: ["--impl", "article", "--interval", "2", "--ttl", "10", ...q],
    limitMinutes: 5,
  }]);
  await stage([{ name: "agent", script: "agent.ts", args: q, limitMinutes: 5 }]);
  await stage([{ name: "reads", script: "reads.ts", args: q, limitMinutes: 5 }]);
  await stage([{ name: "killed", script: "killed.ts", args: q, limitMinutes: 6 }]);
  await stage([{ name: "checks", script: "checks.ts", args: q, limitMinutes: 8 }]);
  await stage([{ name: "memory", script: "memory.ts", args: q, limitMinutes: 7 }]);
  await stage([{ name: "scale", script: "scale.ts", args: q, limitMinutes: 8 }]);
  await stage([{ name: "traffic", script: "traffic.ts", args: q, limitMinutes: 6 }]);
  await stage([{ name: "reload", script: "reload.ts", args: q, limitMinutes: 4 }]);
  await stage([{ name: "burst", script: "burst.ts", args: q, limitMinutes: 15 }]);
  // serve has no --quick: shorter rounds, the same rate and streams (the target's)
  await stage([{ name: "serve", script: "serve.ts", args: quick ? ["--seconds", "20"] : [], limitMinutes: 8 }]);
  await stage([{ name: "fanout", script: "fanout.ts", args: q, limitMinutes: 10 }]);
  await stage([{ name: "leases", script: "leases.ts", args: q, limitMinutes: 60 }]);
  return results;
}

/** Builds the bundles if dist/ lacks them; a note for the page if they could not be built. */
async function buildBundles(): Promise<string> {
  if (bundlesBuilt()) return "";
  console.log("[all] dist/ lacks the bundles: node_modules/.bin/deno task bundle");
  const built = await new Deno.Command(`${ROOT}node_modules/.bin/deno`, { args: ["task", "bundle"], cwd: ROOT })
    .output();
  return !built.success || !bundlesBuilt()
    ? "The bundles could not be built: ours ran from source (deno), no node figures."
    : "";
}

async function main(): Promise<void> {
  let suite: SuiteRun;
  if (values.from) {
    try {
      suite = JSON.parse(await Deno.readTextFile(values.from));
      if (!Array.isArray(suite.results)) throw new TypeError("no results");
    } catch (err) {
      console.error(`all: Cannot use --from ${values.from}: expected a run kept by --save (${(err as Error).message})`);
      Deno.exit(2);
    }
  } else {
    const began = new Date();
    const note = await buildBundles();
    const dir = await Deno.makeTempDir({ prefix: "secretary-bench-" });
    let results: PhaseResult[];
    try {
      results = await runPhases(dir);
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
    suite = {
      quick,
      began: began.toISOString(),
      minutes: (Date.now() - began.getTime()) / 60_000,
      note,
      machine: machine(),
      cores: Number(text(["nproc"])),
      results,
    };
    if (values.save) await Deno.writeTextFile(values.save, JSON.stringify(suite, null, 2));
  }
  await Deno.writeTextFile(values.out, readme(suite));
  // as `deno task check` wants it: deno fmt aligns the table
  await new Deno.Command(Deno.execPath(), { args: ["fmt", "--quiet", values.out], cwd: ROOT }).output();
  console.log(`[all] ${suite.minutes.toFixed(1)} minutes; wrote ${values.out}`);
  for (const r of suite.results.filter((r) => r.error)) console.log(`[all] ${r.name} failed: ${r.error}`);
}

if (import.meta.main) await main();
