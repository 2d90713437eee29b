/**
 * The agent with many instances: one `secretary agent` (the deno bundle, as
 * the sidekick's unit runs it) with `--instances` instances attached (100 by
 * default), each with its own target on one host address (127.0.8.1, a port
 * each, as the instances of one host are), at the sidekick's defaults
 * (interval 2 s, timeout 1 s, rise 2, fall 2; the agent's TTL 10 s).
 *
 * Then, as bench/removal.ts times a sidekick's: in `--lanes` lanes (10 of the
 * instances, side by side, the others healthy beside them), per round, each
 * lane's target killed (stops listening) to its record gone and back, then
 * hung (accepts, never answers) to gone, then answering again to back, each
 * at a random phase of the check interval; `--trials` of each in all.
 *
 * Then the restart, `--restarts` times: with every instance attached and
 * registered, SIGTERM to the agent and the same command started again on the
 * same socket; the benchmark's own watch counts the deletes and puts of the
 * attached keys from the SIGTERM until a TTL and two intervals after the new
 * agent answers (its adopted lease kept alive past the old one's TTL), and
 * lists them at the end. The target: no delete, and no record missing.
 *
 * ```sh
 * node_modules/.bin/deno task bundle      # when dist/ is older than the source
 * node_modules/.bin/deno run -A bench/agent.ts [--instances 100] [--lanes 10] [--trials 40] [--restarts 3]
 * node_modules/.bin/deno run -A bench/agent.ts --quick     # 20 instances, 4 trials, one restart
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { delay, EtcdCluster, ROOT, Script, TestServer, waitFor } from "../testbed/testbed.ts";
import {
  AGENT_ARGS,
  agentCommand,
  agentListening,
  attach,
  ATTACH_ARGS,
  benchmark,
  bundlesBuilt,
  formatMs,
  formatTimes,
  INTERVAL_MS,
  KeyClock,
  keyOf,
  now,
  summarize,
  TTL_MS,
} from "./lib.ts";

/** One restart of the agent: how long no agent answered, and what the watch saw of the attached keys. */
export interface AgentRestart {
  /** From the SIGTERM to the old agent's exit, and to the new agent answering on the socket. */
  exitMs: number;
  downMs: number;
  /** Attached keys deleted, and put, from the SIGTERM to the end of the watch. */
  deletes: number;
  puts: number;
  /** Attached keys not in etcd at the end of the watch. */
  missing: number;
  /** How long the watch ran after the new agent answered. */
  watchedMs: number;
  /** Instances the new agent adopted (its `agent started` line), and whether it kept the old agent's lease. */
  adopted?: number;
  leaseKept?: boolean;
}

export interface AgentFigures {
  instances: number;
  lanes: number;
  /** The instances' flags (attach's), and the agent's. */
  args: string[];
  agentArgs: string[];
  /** Times in ms, as bench/removal.ts's: killed and hung to gone, answering again to back (null: not back). */
  killed: number[];
  hung: number[];
  back: (number | null)[];
  backBoundMs: number;
  /** From the first attach sent to every instance registered. */
  allRegisteredMs: number;
  restarts: AgentRestart[];
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    instances: { type: "string" },
    lanes: { type: "string" },
    trials: { type: "string" },
    restarts: { type: "string" },
    quick: { type: "boolean", default: false },
    json: { type: "string" },
  },
});
const count = Number(values.instances ?? (values.quick ? 20 : 100));
const lanes = Math.min(count, Number(values.lanes ?? (values.quick ? 4 : 10)));
const trials = Number(values.trials ?? (values.quick ? 4 : 40));
const restarts = Number(values.restarts ?? (values.quick ? 1 : 3));
if (
  ![count, lanes, trials].every((n) => Number.isInteger(n) && n >= 1) || !(Number.isInteger(restarts) && restarts >= 0)
) {
  console.error(
    `agent: Cannot use --instances ${values.instances} --lanes ${values.lanes} --trials ${values.trials} ` +
      `--restarts ${values.restarts}: expected integers of 1 or more (restarts: 0 or more)`,
  );
  Deno.exit(2);
}
if (!bundlesBuilt() || !(await Deno.readTextFile(`${ROOT}dist/secretary.mjs`)).includes("agent started")) {
  console.error("agent: dist/secretary.mjs is missing or predates the agent: run deno task bundle");
  Deno.exit(2);
}

/** The address every instance listens on: one host's. */
const HOST = "127.0.8.1";
/** Within this of a kill or hang the record must be gone; within `BACK_MS` of the cause back. */
const GONE_MS = INTERVAL_MS + TTL_MS + 5000;
const BACK_MS = 2 * INTERVAL_MS + 5000;

const dir = await Deno.makeTempDir({ prefix: "secretary-agent-" });
const socket = `${dir}/run/agent.sock`;
const cluster = await EtcdCluster.create(1);
const etcd = cluster.client(5000);
const targets: TestServer[] = [];
const agents: Script[] = [];
let clock: KeyClock | undefined;

function startAgent(): Script {
  const [command, args] = agentCommand(socket, cluster.endpoints);
  const agent = new Script(command, args);
  agents.push(agent);
  return agent;
}

/** One lane: per round, its target killed to gone and back, then hung to gone and answering again to back. */
async function lane(target: TestServer, rounds: number, figures: AgentFigures): Promise<void> {
  const key = keyOf(target);
  for (let round = 0; round < rounds; round++) {
    await delay(Math.random() * INTERVAL_MS); // any phase of the check interval
    let at = now();
    await target.setMode("closed");
    figures.killed.push(await clock!.until("delete", key, at, GONE_MS) - at);
    await target.setMode("ok");
    await clock!.until("put", key, at, BACK_MS);

    await delay(Math.random() * INTERVAL_MS);
    at = now();
    target.mode = "hang";
    figures.hung.push(await clock!.until("delete", key, at, GONE_MS) - at);
    await delay(Math.random() * INTERVAL_MS);
    at = now();
    target.mode = "ok";
    try {
      figures.back.push(await clock!.until("put", key, at, figures.backBoundMs) - at);
    } catch {
      figures.back.push(null);
      await clock!.until("put", key, at, GONE_MS); // back in the end, or the lane fails
    }
  }
}

/** SIGTERM to the agent, the same command again; what the watch saw of the attached keys meanwhile. */
async function restart(agent: Script, keys: string[]): Promise<{ agent: Script; restart: AgentRestart }> {
  const attached = new Set(keys);
  const at = now();
  agent.kill("SIGTERM");
  const status = await agent.finished(15_000);
  const exitMs = now() - at;
  if (status.code !== 0) throw new Error(`the agent exited ${status.code} on SIGTERM:\n${agent.stderr.slice(-2000)}`);
  const next = startAgent();
  await agentListening(socket, next);
  const downMs = now() - at;
  // past the old agent's last keep-alive's TTL, and two checks of every instance
  const watchedMs = TTL_MS + 2 * INTERVAL_MS;
  await delay(watchedMs);
  // keys put or deleted (their last event) since the SIGTERM
  const since = (events: Map<string, number>) => [...attached].filter((k) => (events.get(k) ?? 0) >= at).length;
  const events = { deletes: since(clock!.deletes), puts: since(clock!.puts) };
  const listed = new Set((await etcd.list("/services/")).values.map((v) => v.key));
  const missing = keys.filter((k) => !listed.has(k)).length;
  // the old agent's lease, as it said on stopping, and the new one's on starting; no other granted since
  const field = (text: string, event: string, name: string) =>
    new RegExp(`^(?:<\\d>)?${event}\\b.*\\b${name}=(\\S+)`, "m").exec(text)?.[1];
  const kept = field(agent.stderr, "agent stopped", "lease");
  const leaseKept = kept !== undefined && field(next.stderr, "agent started", "lease") === kept &&
    !/^(?:<\d>)?lease granted\b/m.test(next.stderr);
  const adopted = Number(field(next.stderr, "agent started", "instances") ?? NaN);
  return { agent: next, restart: { exitMs, downMs, ...events, missing, watchedMs, adopted, leaseKept } };
}

async function main(): Promise<AgentFigures> {
  await cluster.start();
  clock = await KeyClock.start(etcd);
  let agent = startAgent();
  await agentListening(socket, agent);
  for (let i = 0; i < count; i++) targets.push(await TestServer.start(HOST));
  const began = now();
  // as a host's units attach them at boot: all at once
  await Promise.all(targets.map((t) => attach(socket, t)));
  const registered = await Promise.all(targets.map((t) => clock!.until("put", keyOf(t), 0, 60_000)));
  const figures: AgentFigures = {
    instances: count,
    lanes,
    args: ["--hostname=bench", ...ATTACH_ARGS],
    agentArgs: AGENT_ARGS,
    killed: [],
    hung: [],
    back: [],
    backBoundMs: 2 * INTERVAL_MS + 2000,
    allRegisteredMs: Math.max(...registered) - began,
    restarts: [],
  };
  console.log(
    `one agent, ${count} instances attached on ${HOST}, all registered ${formatMs(figures.allRegisteredMs)} after ` +
      `the first attach; ${lanes} lanes x ${Math.ceil(trials / lanes)} rounds`,
  );
  await delay(INTERVAL_MS); // the attach settled
  const laneBegan = Date.now();
  await Promise.all(targets.slice(0, lanes).map((t) => lane(t, Math.ceil(trials / lanes), figures)));
  console.log(`lanes done in ${Math.round((Date.now() - laneBegan) / 1000)} s`);
  console.log(formatTimes("killed target to gone", figures.killed));
  console.log(formatTimes("hung target to gone", figures.hung));
  const back = figures.back.filter((b): b is number => b !== null);
  console.log(formatTimes("answering again to back", back));
  if (back.length < figures.back.length) {
    console.log(`  not back within ${figures.backBoundMs / 1000} s: ${figures.back.length - back.length}`);
  }

  const keys = targets.map((t) => keyOf(t));
  for (let r = 0; r < restarts; r++) {
    await waitFor(
      async () => {
        const listed = new Set((await etcd.list("/services/")).values.map((v) => v.key));
        return keys.every((k) => listed.has(k));
      },
      "every attached instance's record in etcd",
      30_000,
    );
    await delay(INTERVAL_MS + Math.random() * (TTL_MS / 3)); // any phase of the lease's keep-alive
    const done = await restart(agent, keys);
    agent = done.agent;
    figures.restarts.push(done.restart);
    const x = done.restart;
    console.log(
      `restart ${r + 1}: SIGTERM to exit ${formatMs(x.exitMs)}, to the new agent answering ${formatMs(x.downMs)}; ` +
        `adopted ${x.adopted}, ${x.leaseKept ? "the same lease" : "another lease"}; over the next ` +
        `${formatMs(x.watchedMs)}: deletes ${x.deletes}, puts ${x.puts} of the ${count} keys; missing at the end ` +
        `${x.missing}`,
    );
  }
  if (figures.restarts.length) {
    const s = summarize(figures.restarts.map((x) => x.downMs));
    console.log(
      `restarts: ${figures.restarts.length}, records deleted ${
        figures.restarts.reduce((n, x) => n + x.deletes, 0)
      }, missing ${figures.restarts.reduce((n, x) => n + x.missing, 0)}; down median ${formatMs(s.median)}`,
    );
  }
  return figures;
}

const cleanup = async () => {
  clock?.stop();
  await Promise.all(agents.map((a) => a.stop("SIGKILL")));
  await Promise.all(targets.map((t) => t.close()));
  etcd.close();
  await cluster.stop();
  await Deno.remove(dir, { recursive: true }).catch(() => {});
};
await benchmark(values.json, cleanup, main);
