/**
 * follow()'s decisions, against a scripted fake source (no etcd): what the
 * follower is told, when it lists again, when it fails over, how long it
 * waits. Each row scripts what the source answers to each list() and each
 * watch(), and the transcript of everything follow() did. The real etcd's
 * side (breaks, compaction, a silent gRPC proxy) is in watch_test.ts,
 * network_test.ts and grpcproxy_test.ts.
 */
import assert from "node:assert/strict";
import type { StoredValue, WatchEvent, WatchHandle } from "../lib/etcd.ts";
import { follow, type FollowEffects, type FollowSource, WATCH_PROBE_MS } from "../lib/follow.ts";

/** What one list() answers: a listing at a revision, or a failure. */
type ListStep = { keys: string[]; revision: number } | Error;
/** What one watch() does: its events, then it breaks, falls silent (a probe goes unanswered), or ends the test. */
type WatchStep = { events: WatchEvent[]; then: "break" | "silent" | "end" } | Error;

function value(key: string): StoredValue {
  return { key, value: `{"at":"${key}"}`, lease: "0", modRevision: "1" };
}

/** Runs follow() over the scripted source; returns the transcript. */
async function transcript(lists: ListStep[], watches: WatchStep[]): Promise<string[]> {
  const log: string[] = [];
  const stop = new AbortController();
  const source: FollowSource = {
    list(prefix) {
      const step = lists.shift();
      if (step === undefined) throw new Error("the script has no more listings");
      log.push(`list ${prefix}`);
      if (step instanceof Error) return Promise.reject(step);
      return Promise.resolve({ values: step.keys.map(value), revision: String(step.revision) });
    },
    watch(prefix, startRevision, onEvent) {
      const step = watches.shift();
      if (step === undefined) throw new Error("the script has no more watches");
      log.push(`watch ${prefix} from ${startRevision}`);
      if (step instanceof Error) return Promise.reject(step);
      let settle: (err: Error) => void = () => {};
      const done = new Promise<Error>((resolve) => (settle = resolve));
      setTimeout(() => {
        for (const event of step.events) onEvent(event);
        if (step.then === "break") settle(new Error("stream broke"));
        if (step.then === "end") stop.abort();
      }, 0);
      const handle: WatchHandle = {
        done,
        probe: () => step.then === "silent" ? Promise.reject(new Error("no answer to a probe")) : Promise.resolve(),
        cancel: () => log.push("cancel"),
      };
      return Promise.resolve(handle);
    },
    failover: () => log.push("failover"),
  };
  const effects: FollowEffects = {
    sleep(ms, signal) {
      if (ms !== WATCH_PROBE_MS) log.push(`sleep ${ms}`);
      // a probe's tick comes after the events the script delivers at once
      return new Promise((resolve) => {
        const timer = setTimeout(resolve, ms === WATCH_PROBE_MS ? 5 : 0);
        signal.addEventListener("abort", () => {
          clearTimeout(timer);
          resolve();
        });
      });
    },
    random: () => 1, // the backoff's cap: 200, 400, 800, then 1000 ms
  };
  await follow(
    source,
    "/s/",
    {
      listed: (values, revision) => log.push(`listed ${values.map((v) => v.key).join(",") || "(none)"} at ${revision}`),
      changed: (e) => log.push(`changed ${e.type} ${e.key}`),
      waiting: (reason) => log.push(`waiting: ${(reason as Error).message}`),
      answered: () => log.push("answered"),
    },
    stop.signal,
    effects,
  );
  return log;
}

const put = (key: string): WatchEvent => ({ type: "put", key, value: "{}", revision: "9" });
const del = (key: string): WatchEvent => ({ type: "delete", key, revision: "9" });

const ROWS: { name: string; lists: ListStep[]; watches: WatchStep[]; want: string[] }[] = [
  {
    name: "lists, then watches from the next revision and passes each change on, in order",
    lists: [{ keys: ["/s/a", "/s/b"], revision: 7 }],
    watches: [{ events: [put("/s/c"), del("/s/a")], then: "end" }],
    want: [
      "list /s/",
      "listed /s/a,/s/b at 7",
      "watch /s/ from 8",
      "changed put /s/c",
      "changed delete /s/a",
      "cancel",
    ],
  },
  {
    name: "an empty prefix is a listing of none, not a wait",
    lists: [{ keys: [], revision: 1 }],
    watches: [{ events: [], then: "end" }],
    want: ["list /s/", "listed (none) at 1", "watch /s/ from 2", "cancel"],
  },
  {
    name: "a failed listing: waiting once an outage, a new connection and a growing backoff each time; answered after",
    lists: [new Error("refused"), new Error("refused again"), new Error("and again"), { keys: ["/s/a"], revision: 3 }],
    watches: [{ events: [], then: "end" }],
    want: [
      "list /s/",
      "waiting: refused",
      "failover",
      "sleep 200",
      "list /s/",
      "failover",
      "sleep 400",
      "list /s/",
      "failover",
      "sleep 800",
      "list /s/",
      "listed /s/a at 3",
      "watch /s/ from 4",
      "answered",
      "cancel",
    ],
  },
  {
    name: "a broken stream: waiting, a new connection, a fresh listing, then watching from its revision",
    lists: [{ keys: ["/s/a"], revision: 5 }, { keys: ["/s/b"], revision: 9 }],
    watches: [{ events: [put("/s/b")], then: "break" }, { events: [], then: "end" }],
    want: [
      "list /s/",
      "listed /s/a at 5",
      "watch /s/ from 6",
      "changed put /s/b",
      "cancel",
      "waiting: stream broke",
      "failover",
      "sleep 200",
      "list /s/",
      "listed /s/b at 9",
      "watch /s/ from 10",
      "answered",
      "cancel",
    ],
  },
  {
    name: "a stream that answers no probe is a broken one",
    lists: [{ keys: [], revision: 2 }, { keys: [], revision: 2 }],
    watches: [{ events: [], then: "silent" }, { events: [], then: "end" }],
    want: [
      "list /s/",
      "listed (none) at 2",
      "watch /s/ from 3",
      "cancel",
      "waiting: no answer to a probe",
      "failover",
      "sleep 200",
      "list /s/",
      "listed (none) at 2",
      "watch /s/ from 3",
      "answered",
      "cancel",
    ],
  },
  {
    name: "a watch that cannot start: the listing stands, and a fresh one follows",
    lists: [{ keys: ["/s/a"], revision: 4 }, { keys: ["/s/a"], revision: 4 }],
    watches: [new Error("watch refused"), { events: [], then: "end" }],
    want: [
      "list /s/",
      "listed /s/a at 4",
      "watch /s/ from 5",
      "waiting: watch refused",
      "failover",
      "sleep 200",
      "list /s/",
      "listed /s/a at 4",
      "watch /s/ from 5",
      "answered",
      "cancel",
    ],
  },
  {
    name: "the backoff stops growing at a second, and starts over once etcd answered",
    lists: [
      ...[1, 2, 3, 4, 5].map((n) => new Error(`down ${n}`)),
      { keys: [], revision: 1 },
      new Error("down again"),
      { keys: [], revision: 1 },
    ],
    watches: [{ events: [], then: "break" }, { events: [], then: "end" }],
    want: [
      "list /s/",
      "waiting: down 1",
      "failover",
      "sleep 200",
      "list /s/",
      "failover",
      "sleep 400",
      "list /s/",
      "failover",
      "sleep 800",
      "list /s/",
      "failover",
      "sleep 1000",
      "list /s/",
      "failover",
      "sleep 1000",
      "list /s/",
      "listed (none) at 1",
      "watch /s/ from 2",
      "answered",
      "cancel",
      "waiting: stream broke",
      "failover",
      "sleep 200",
      "list /s/",
      "failover",
      "sleep 400",
      "list /s/",
      "listed (none) at 1",
      "watch /s/ from 2",
      "answered",
      "cancel",
    ],
  },
];

for (const row of ROWS) {
  Deno.test(`follow(): ${row.name}`, async () => {
    assert.deepEqual(await transcript(row.lists, row.watches), row.want);
  });
}
