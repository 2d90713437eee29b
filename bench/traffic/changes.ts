/**
 * bench/traffic.ts's own view of the registry: every put and delete of a
 * lane's records, timed from its watch event to what the lane's proxy shows.
 * HAProxy lanes: the record removed to its server in maintenance or gone (and
 * to the sync's `server out` line), a new record to its server in rotation.
 * nginx lanes: to the render's `reloaded` line for a file without (with) the
 * instance, and on to nginx's next new worker. The timings run in the
 * background (`Run.pending`) and land in the lane's figures.
 *
 * @module
 */
import { DEFAULT_PREFIX } from "../../lib/record.ts";
import { waitFor } from "../../testbed/testbed.ts";
import { now } from "../lib.ts";
import { BACKEND, type Lane, type Run } from "./lanes.ts";
import {
  inRotation,
  linesOf,
  outOf,
  POLL_BOUND_MS,
  POLL_EVERY_MS,
  pollUntil,
  RELOADED,
  reloadedWith,
  workerStarted,
} from "./poll.ts";

/** Notes one watch event of the registry and times what its lane's proxy does about it. */
export function onEvent(run: Run, type: "put" | "delete", key: string): void {
  const at = now();
  const lane = run.lanes.find((l) => key.startsWith(`${DEFAULT_PREFIX}/${l.service}/`));
  if (!lane) return;
  const server = key.slice(key.lastIndexOf("/") + 1);
  lane.changes.push({ atMs: at, removal: type === "delete" && lane.present.has(key) });
  if (type === "delete") {
    lane.present.delete(key);
    lane.deleted.set(key, at);
    run.pending.push(lane.nginx ? nginxRemoved(run, lane, server, at) : haproxyRemoved(run, lane, server, at));
  } else if (!lane.present.has(key)) {
    lane.present.add(key);
    run.pending.push(lane.nginx ? nginxAdded(lane, server, at) : haproxyAdded(lane, server, at));
  }
}

/** nginx lanes: a record removed at `at` to the render's reload without it, and to nginx's new worker. */
async function nginxRemoved(run: Run, lane: Lane, server: string, at: number): Promise<void> {
  const f = lane.figures.nginx!;
  const after = linesOf(lane.render!.stderr, RELOADED);
  const workers = await lane.nginx!.workersStarted();
  const reloaded = await reloadedWith(lane, server, false, after);
  if (!reloaded) {
    lane.figures.unmatched++;
    return;
  }
  // one new worker a reload (worker_processes 1): the one of the reload that matched
  const worker = await workerStarted(lane.nginx!, workers + reloaded.count - after);
  f.removedToReloadedMs.push(reloaded.at - at);
  if (worker !== undefined) f.removedToWorkerMs.push(worker - at);
  f.removalTimes.push({
    atSeconds: Math.round(at - run.churnAt) / 1000,
    reloadedMs: reloaded.at - at,
    ...(worker === undefined ? {} : { workerMs: worker - at }),
  });
}

/** nginx lanes: a new record at `at` to the render's reload with it. */
async function nginxAdded(lane: Lane, server: string, at: number): Promise<void> {
  const after = linesOf(lane.render!.stderr, RELOADED);
  const r = await reloadedWith(lane, server, true, after);
  if (r === undefined) lane.figures.unmatched++;
  else lane.figures.nginx!.putToReloadedMs.push(r.at - at);
}

/** HAProxy lanes: a record removed at `at` to its server out of the backend, and to the sync's `server out` line. */
async function haproxyRemoved(run: Run, lane: Lane, server: string, at: number): Promise<void> {
  const line = new RegExp(`^server out backend=${BACKEND} server=${server.replaceAll(".", "\\.")}$`, "m");
  const logged = lane.sync!.stderr.split(line).length - 1; // lines for this server so far
  const [t, l] = await Promise.all([
    pollUntil(lane.client!, (servers) => outOf(servers, server)),
    waitFor(() => lane.sync!.stderr.split(line).length - 1 > logged && now(), "", POLL_BOUND_MS, POLL_EVERY_MS)
      .catch(() => undefined),
  ]);
  if (t === undefined) {
    lane.figures.unmatched++;
    return;
  }
  lane.figures.removedToOutMs.push(t - at);
  if (l !== undefined) lane.figures.removedToLoggedMs.push(l - at);
  lane.figures.removals.push({
    atSeconds: Math.round(at - run.churnAt) / 1000,
    ms: t - at,
    ...(l === undefined ? {} : { loggedMs: l - at }),
  });
}

/** HAProxy lanes: a new record at `at` to its server in rotation. */
async function haproxyAdded(lane: Lane, server: string, at: number): Promise<void> {
  const t = await pollUntil(lane.client!, (servers) => inRotation(servers.find((x) => x.name === server)));
  if (t === undefined) lane.figures.unmatched++;
  else lane.figures.putToServingMs.push(t - at);
}
