/**
 * bench/traffic.ts's churn: the schedule of cycles (a stop, a kill every
 * fourth, one host death mid-run), each lane running it a sixth of a cycle
 * after the one before, and what each cycle does to an instance: stopped as
 * systemd stops its units, killed with SIGKILL, or its host cut off and its
 * processes killed. The load's outcomes are labelled with the cycle in effect
 * in their lane.
 *
 * @module
 */
import { delay } from "../../testbed/testbed.ts";
import { formatMs, type LoadProcess, now, TTL_MS } from "../lib.ts";
import type { CycleKind, Window } from "./figures.ts";
import { CYCLE_MS, type Host, type Instance, type Lane, type Run, startInstance, stopInstance } from "./lanes.ts";
import {
  inRotation,
  linesOf,
  outOf,
  pollUntil,
  RELOADED,
  reloadedWith,
  serversState,
  sessionsOf,
  waitDeleted,
} from "./poll.ts";

/** One cycle of the schedule: what happens, to which host. */
export type Step = { kind: CycleKind | "host-return" | "host-wait"; host: number };

/**
 * What each of `n` cycles does: a stop, or a kill every fourth, of hosts 0, 1, 2 in turn; mid-run, host 0 dies,
 * two quiet cycles, then it comes back. The death is at a multiple of 3, so host 0's last cycle was 3 cycles before.
 */
export function schedule(n: number): Step[] {
  const death = 3 * Math.floor(n / 6);
  return Array.from({ length: n }, (_, c) => {
    if (c === death) return { kind: "host", host: 0 };
    if (c > death && c < death + 3) return { kind: "host-wait", host: 0 };
    if (c === death + 3) return { kind: "host-return", host: 0 };
    return { kind: c % 4 === 2 ? "kill" : "stop", host: c % 3 };
  });
}

/** The load's labels: each lane's windows in time order, and setting one lane's (or every lane's) from now on. */
export class Labels {
  readonly windows: { window: Window; from: number }[][];

  constructor(readonly load: LoadProcess, readonly lanes: Lane[]) {
    this.windows = lanes.map(() => []);
  }

  async set(lane: Lane | undefined, window: Window): Promise<void> {
    for (const l of lane ? [lane] : this.lanes) this.windows[l.index].push({ window, from: now() });
    await this.load.label(lane?.index ?? "*", window);
  }
}

/**
 * Runs the churn from `run.churnAt`: every lane's cycles of `plan`, each lane a sixth of a cycle (1/lanes) after the
 * one before, so that one lane's process starts and stops do not land on another's removals and additions. Returns
 * once the last window has ended, with the timings still in flight (every host's `busy`, and the returned ones).
 */
export async function churn(run: Run, plan: Step[], labels: Labels): Promise<Promise<unknown>[]> {
  const lanes = run.lanes;
  const background: Promise<unknown>[] = [];
  const offsetMs = (lane: Lane) => lane.index * CYCLE_MS / lanes.length;
  const events = plan.flatMap((step, c) => lanes.map((lane) => ({ c, step, lane, at: c * CYCLE_MS + offsetMs(lane) })))
    .sort((a, b) => a.at - b.at);
  for (const { c, step, lane, at } of events) {
    await delay(Math.max(0, run.churnAt + at - now()));
    const window: Window = step.kind === "host-wait" || step.kind === "host-return" ? "host" : step.kind;
    if (labels.windows[lane.index].at(-1)?.window !== window || step.kind === "stop" || step.kind === "kill") {
      await labels.set(lane, window);
    }
    if (lane.index === 0) {
      console.log(
        `${((now() - run.churnAt) / 1000).toFixed(1).padStart(5)} s  cycle ${c + 1}/${plan.length}: ${step.kind}` +
          (step.kind === "host-wait" ? "" : ` host ${step.host}`) +
          (lanes.length > 1 ? ` (the other lanes ${formatMs(offsetMs(lanes[1]))} apart)` : ""),
      );
    }
    const h = lane.hosts[step.host];
    const previous = h.busy;
    h.busy = previous.then(() => cycle(run, lane, step, background)).catch((err) => {
      const what = `cycle ${c + 1} (${step.kind}): ${(err as Error).message.split("\n")[0]}`;
      lane.figures.cycleErrors.push(what);
      console.error(`lane ${lane.index + 1}, ${what}`);
    });
  }
  const churnMs = plan.length * CYCLE_MS;
  for (const lane of [...lanes].sort((a, b) => offsetMs(a) - offsetMs(b))) {
    await delay(Math.max(0, run.churnAt + churnMs + offsetMs(lane) - now()));
    await labels.set(lane, "idle");
  }
  return background;
}

/** One cycle of one lane: what `step` does to the instance on its host, and its replacement. */
async function cycle(run: Run, lane: Lane, step: Step, background: Promise<unknown>[]): Promise<void> {
  const host = lane.hosts[step.host];
  const old = host.current!;
  if (step.kind === "stop" || step.kind === "kill" || step.kind === "host") {
    run.fates.set(old.service, step.kind);
  }
  switch (step.kind) {
    case "stop":
      await stopInstance(old);
      if (lane.spec.registry) host.port++;
      host.current = await startInstance(run, lane, host);
      return;
    case "kill":
      await kill(run, lane, host, old, background);
      return;
    case "host":
      await hostDeath(lane, host, old, background);
      return;
    case "host-return":
      await host.netns!.heal();
      if (lane.spec.registry) host.port++;
      host.current = await startInstance(run, lane, host);
      return;
    case "host-wait":
      return;
  }
}

/**
 * SIGKILL to the service (its sessions read just before); the secretary finds out by itself, then is stopped as
 * systemd's BindsTo= would, and the units start again.
 */
async function kill(run: Run, lane: Lane, host: Host, old: Instance, background: Promise<unknown>[]): Promise<void> {
  if (lane.client) lane.figures.inFlightAtKills.push(await sessionsOf(lane.client, old.server));
  const at = now();
  old.service.kill("SIGKILL");
  if (lane.spec.registry && lane.client) {
    background.push(
      pollUntil(lane.client, (servers) => !inRotation(servers.find((s) => s.name === old.server)))
        .then((t) => t !== undefined && lane.figures.killToOutMs.push(t - at)),
    );
  }
  await old.service.finished();
  if (lane.spec.registry) {
    const gone = await waitDeleted(lane, old.key!, at, TTL_MS + 10_000);
    if (gone) lane.figures.killToGoneMs.push(lane.deleted.get(old.key!)! - at);
    // not before the sync (the render) has acted on the removal: starting processes then would slow what is timed
    if (lane.client) {
      await pollUntil(lane.client, (servers) => outOf(servers, old.server), 2000);
    } else {
      const after = linesOf(lane.render!.stderr, RELOADED) - 1; // its reload may be logged already
      await reloadedWith(lane, old.server, false, Math.max(0, after), 2000);
    }
    old.secretary!.kill(gone ? "SIGTERM" : "SIGKILL");
    await old.secretary!.finished(30_000);
    host.port++;
  }
  host.current = await startInstance(run, lane, host);
}

/**
 * The host dies: every packet to and from it dropped, then its service and secretary get SIGKILL, so no RST or FIN
 * ever comes. Times in the background: to out of rotation (and by what), to maintenance, to the record gone.
 */
async function hostDeath(lane: Lane, host: Host, old: Instance, background: Promise<unknown>[]): Promise<void> {
  const client = lane.client;
  if (client) lane.figures.inFlightAtHostDeath = await sessionsOf(client, old.server);
  await host.netns!.drop();
  const at = now();
  old.service.kill("SIGKILL");
  old.secretary?.kill("SIGKILL");
  background.push((async () => {
    if (!client) {
      // nginx's view of its upstream cannot be read: the record's lease expiring is what there is
      if (await waitDeleted(lane, old.key!, at, TTL_MS + 10_000)) {
        lane.figures.hostRecordGoneMs = lane.deleted.get(old.key!)! - at;
      }
      return;
    }
    const out = await pollUntil(client, (servers) => !inRotation(servers.find((s) => s.name === old.server)));
    if (out !== undefined) {
      lane.figures.hostOutMs = out - at;
      const s = (await serversState(client)).find((x) => x.name === old.server);
      lane.figures.hostOutBy = s === undefined || s.maint ? "the registry" : "HAProxy's check";
    }
    if (lane.spec.registry) {
      const maint = await pollUntil(client, (servers) => outOf(servers, old.server));
      if (maint !== undefined) lane.figures.hostMaintMs = maint - at;
      if (await waitDeleted(lane, old.key!, at, 1000)) {
        lane.figures.hostRecordGoneMs = lane.deleted.get(old.key!)! - at;
      }
    }
  })());
  await Promise.all([old.service.finished(), old.secretary?.finished()]);
}
