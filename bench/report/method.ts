/**
 * bench/README.md's list of how each figure is taken, one item a benchmark,
 * with the counts the run used where they vary (trials, sidekicks a host).
 *
 * @module
 */
import type { AgentFigures } from "../agent.ts";
import type { KilledFigures } from "../killed.ts";
import type { MemoryFigures } from "../memory.ts";
import type { ScaleFigures } from "../scale.ts";
import type { ServeFigures } from "../serve.ts";

/** The list, for the figures this run has (a phase that failed reads its defaults in words). */
export function howTaken(
  killed: KilledFigures | undefined,
  mem: MemoryFigures | undefined,
  scale: ScaleFigures | undefined,
  serve: ServeFigures | undefined,
  agent: AgentFigures | undefined,
): string {
  return `How each figure is taken:

- Removal ([removal.ts](removal.ts)): each trial waits a random part of the check interval first; trials run in
  parallel lanes, each with its own target and key. "Killed": the target stops listening; "hung": it accepts and never
  answers. The article's SIGTERM is systemd's stop: SIGTERM to the unit's processes, then its ExecStop
  (\`etcdctl rm\`), timed from the SIGTERM.
- Cost ([cost.ts](cost.ts)): an idle window after every instance registered, each set on its own etcd; counters from
  etcd's \`/metrics\`. The loop's v2 TTL keys make the leader commit expiry sweeps, shown as cluster-wide proposals.
  Memory is VmRSS at the end of the window; CPU is utime + stime over the window (the loop's with its exited children,
  over whole passes); the loop's processes are counted by shims on its PATH, ours by looking for its children
  throughout the window.
- Killed ([killed.ts](killed.ts)): a server in its own process (\`deno eval\` of Deno.serve) killed with SIGKILL, and
  Debian's Apache (mpm_event, its own minimal config) with its whole process group killed with SIGKILL, as a crash or
  systemd's KillMode=control-group takes it; each with the connection watch on (the default) and off, ${
    killed ? `${killed.trials} trials each, ${killed.rows.length} lanes side by side` : "one lane each, side by side"
  }; each kill comes a random phase of the interval after the record is back. Each trial is split where it happened:
  the secretary's log lines are stamped as they reach the benchmark, so \`found\` runs to its first \`check failed\`
  line (the delete starts with the fall's last check, at once with the watch on) and the rest to the watcher's
  event; etcd's WAL fsync and backend commit histograms are read before and after the lanes.
- Checks ([checks.ts](checks.ts)): one sidekick at a time, alone on the benchmark's etcd, for each check kind: http and
  tcp against a target, exec of \`/bin/true\`, and exec of \`sh -c "echo '{…}'"\`, whose JSON status is in the record
  before the window starts and never changes. An idle window one interval after it registered; CPU is utime + stime +
  cutime + cstime (with its exited children) over the window; processes are the execs \`perf stat\` counts in the
  sidekick and everything it starts (its output also has perf's task-clock, to the nanosecond, beside the clock ticks
  of \`/proc\`).
- Memory as a host pays it ([memory.ts](memory.ts)): the bundle started as
  [units/apache-secretary@.service](../units/apache-secretary@.service)'s ExecStart starts it (node: the same
  arguments), one sidekick on a host and ${mem?.perHost ?? "several"} on another${
    mem?.dense ? ` (under deno, ${mem.dense} on a third)` : ""
  }, under each runtime, each beside its own target; ${
    mem?.agentUnit
      ? `beside them, under deno, hosts of as many instances on one agent, started as
  [units/${mem.agentUnit}](../units/${mem.agentUnit}) starts it, each instance attached through its socket with the
  flags [units/apache-secretary-agent@.service](../units/apache-secretary-agent@.service) gives attach, its target on
  the host's one address. Each`
      : "each"
  } host is a folder holding its own copy of the runtime and the bundle, as /opt/bin is, so hosts share no page but the
  system's libraries. Rss, Pss and Private_Clean + Private_Dirty from /proc/PID/smaps_rollup at the end of an idle
  window${
    mem?.settleSeconds !== undefined ? ` that began ${mem.settleSeconds} s after the last instance registered` : ""
  }, per instance (the host's sum divided by its instances); shared is RSS - private. PSS divides each shared page
  among the processes that map it, so it is what an instance costs its host. CPU per instance-hour: the host's
  secretary processes' utime + stime (with exited children) over the window, divided by its instances.
- The agent ([agent.ts](agent.ts)): one agent (the bundle under deno, lite mode) with ${
    agent ? `${agent.instances} instances` : "many instances"
  } attached at once through its socket, their targets on one address, at the defaults; in ${
    agent ? `${agent.lanes} lanes` : "lanes"
  } of them side by side, as the sidekick's removal trials: each target killed (stops listening) to gone and back,
  hung to gone, answering again to back, at a random phase of the interval, the other instances healthy beside them.
  Then, with every instance registered, the agent is sent SIGTERM and started again on the same socket${
    agent ? `, ${agent.restarts.length} times` : ""
  }; the benchmark's watch counts deletes and puts of the attached keys from the SIGTERM to a TTL and two intervals
  after the new agent answers, and lists the keys then.
- Reads ([reads.ts](reads.ts)): wall time of each whole process, median of several runs, against the same etcd in the
  same run; an empty prefix first, which is what starting each process costs, and that start in parts: the runtime
  alone (an empty module, run with the same flags) and the bundle loaded (\`registry --help\`: every module evaluated,
  no connection), the rest being the one request. ls's own work on the records (decoding and checking each value,
  making the rows, sorting, laying out the columns) is timed inside the benchmark's process, on its first pass, cold
  as a listing's process is. Watch latency: from just before each put or delete to its line on \`registry watch\`'s
  stdout. Peak memory: GNU time's maximum resident set of each whole process, listing 100 values of 1.45 MB
  (\`registry ls --json\`, \`etcdctl get --prefix\`), median of three.
- Scale ([scale.ts](scale.ts)): ${
    scale ? `${scale.instances} sidekicks` : "sidekicks"
  } started at a steady rate, each with its own target, all served by the benchmark's one process.
- Traffic ([traffic.ts](traffic.ts)): six lanes side by side (their cycles a sixth of a cycle apart), each a proxy
  before three instances, each a process of its own on a host of its own: Debian's HAProxy (\`retries 3\`,
  \`option redispatch 1\`, \`retry-on conn-failure empty-response response-timeout\`) in lanes 1 to 3, Debian's nginx
  in lanes 4 to 6. A stop is systemd's:
  SIGTERM to the secretary (it removes the record, drains, exits), then to the service; a kill is SIGKILL to the
  service, its HAProxy sessions read just before; the host death drops every packet to and from a host (a network
  namespace behind a veth pair) before its service and secretary get SIGKILL, so no RST ever comes. Lane 2 restarts an
  instance on its port, the others on a new one. A request fails on any non-2xx or socket error, filed under the cycle
  in effect in its lane when it ended. Times are from the event (the benchmark's own etcd watch, or the drop) to
  HAProxy's \`show servers state\` showing it, polled every 2 ms; requests received twice are counted from the ids
  the instances print on receipt, filed under what happened to the instance that got them first.
- Reloads ([reload.ts](reload.ts)): Debian's HAProxy on the shipped example config, run as Debian's unit runs it
  (master-worker), reloaded as \`systemctl reload haproxy\` does it; from each SIGUSR2, the admin socket polled every
  2 ms until the new worker answers with every instance in rotation. The load is the traffic benchmark's, one lane.
- Burst ([burst.ts](burst.ts)): records put straight into etcd (no lease, no secretary), each at a port of one process
  that accepts and closes every connection; one delete-range removes them all in one revision.
- Serve ([serve.ts](serve.ts)): \`registry serve\` following ${
    serve ? serve.instances.toLocaleString("en") : "1,000"
  } records while a process of the benchmark deletes and puts them through etcd's JSON gateway; a
  delete's time runs from its request sent to the row gone in the page (a MutationObserver stamps each removal with the
  page's clock, the same system clock) and to the \`gone\` event read by each stream. CPU is utime + stime of serve over
  each round, as a share of one core; memory per stream is serve's resident memory after the streams opened (resuming
  after the first one's last id, as a reconnecting browser does), less before, over their number.
- The soak ([soak.ts](soak.ts)) is not part of this suite: it runs far longer than the rest.
`;
}
