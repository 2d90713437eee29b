import assert from "node:assert/strict";
import type { CheckResult } from "../lib/checks.ts";
import {
  afterCheck,
  fastIntervalMs,
  type Health,
  INITIAL_HEALTH,
  nextCheckDelayMs,
  parseCli,
  readVariable,
  runChecks,
  step,
} from "../secretary.ts";
import { UsageError } from "../lib/cli.ts";

const policy = { rise: 2, fall: 2 };
const env = { COREOS_PUBLIC_IPV4: "10.0.0.5" };
const sources = { hostname: () => "core-01" };

function run(results: boolean[], start: Health = INITIAL_HEALTH, p = policy) {
  let health = start;
  const changes: string[] = [];
  for (const passed of results) {
    const next = step(health, passed, p);
    if (next.changed) changes.push(next.health.healthy ? "up" : "down");
    health = next.health;
  }
  return { health, changes };
}

Deno.test("step() registers after rise passed checks in a row, also at start", () => {
  assert.deepEqual(run([true]).changes, []);
  assert.deepEqual(run([true, true]).changes, ["up"]);
  assert.deepEqual(run([true, false, true]).changes, []);
  assert.deepEqual(run([true, true, true], INITIAL_HEALTH, { rise: 3, fall: 2 }).changes, ["up"]);
});

Deno.test("step() deregisters after fall failed checks in a row; one blip removes nothing", () => {
  const up = run([true, true]).health;
  assert.deepEqual(run([false], up).changes, []);
  assert.deepEqual(run([false, true, false, true], up).changes, []);
  assert.deepEqual(run([false, false], up).changes, ["down"]);
  assert.deepEqual(run([false, false, true, true], up).changes, ["down", "up"]);
});

Deno.test("step() with rise 1 and fall 1 follows every result", () => {
  assert.deepEqual(run([true, false, true], INITIAL_HEALTH, { rise: 1, fall: 1 }).changes, ["up", "down", "up"]);
});

Deno.test("nextCheckDelayMs() checks sooner while results disagree with the verdict", () => {
  const up = run([true, true]).health;
  assert.equal(nextCheckDelayMs(up, 2000), 2000);
  assert.equal(nextCheckDelayMs(run([false], up).health, 2000), 250);
  assert.equal(nextCheckDelayMs(run([true]).health, 2000), 250);
  assert.equal(nextCheckDelayMs(INITIAL_HEALTH, 2000), 2000);
  assert.equal(fastIntervalMs(100), 50);
  assert.equal(fastIntervalMs(60_000), 500);
});

/** One row of afterCheck()'s table: the state before, the check's result, the policy, and what must follow. */
type Row = [
  name: string,
  before: { healthy: boolean; streak: number; suspect: boolean },
  result: "passed" | "refused" | "timeout" | "status 500",
  fall: number,
  after: { healthy: boolean; streak: number; suspect: boolean; changed: boolean; delayMs: number },
];

const RESULTS: Record<Row[2], CheckResult> = {
  passed: { passed: true, reason: "status 200" },
  refused: { passed: false, reason: "ECONNREFUSED", refused: true },
  timeout: { passed: false, reason: "no answer within 1000ms" },
  "status 500": { passed: false, reason: "status 500" },
};

const up = { healthy: true, streak: 0, suspect: false };
const closed = { healthy: true, streak: 0, suspect: true }; // the watch connection just closed
const ROWS: Row[] = [
  ["healthy, passing: the interval", up, "passed", 2, { ...up, changed: false, delayMs: 2000 }],
  ["no close, refused: the quick re-check", up, "refused", 2, { ...up, streak: 1, changed: false, delayMs: 250 }],
  ["no close, a timeout: the quick re-check", up, "timeout", 2, { ...up, streak: 1, changed: false, delayMs: 250 }],
  ["close, refused: again at once", closed, "refused", 2, { ...closed, streak: 1, changed: false, delayMs: 0 }],
  [
    "close, refused twice: fall 2 reached, deregistered",
    { ...closed, streak: 1 },
    "refused",
    2,
    { healthy: false, streak: 0, suspect: false, changed: true, delayMs: 2000 },
  ],
  ["close, a timeout: 100 ms", closed, "timeout", 2, { ...closed, streak: 1, changed: false, delayMs: 100 }],
  ["close, an HTTP error: 100 ms", closed, "status 500", 2, { ...closed, streak: 1, changed: false, delayMs: 100 }],
  [
    "close, then refused after a timeout: at once",
    { ...closed, streak: 1 },
    "refused",
    3,
    { ...closed, streak: 2, changed: false, delayMs: 0 },
  ],
  [
    "close, a timeout after a refusal: 100 ms",
    { ...closed, streak: 1 },
    "timeout",
    3,
    { ...closed, streak: 2, changed: false, delayMs: 100 },
  ],
  ["close, passing: no death, the interval", closed, "passed", 2, { ...up, changed: false, delayMs: 2000 }],
  [
    "close, passing after a refusal: no death",
    { ...closed, streak: 1 },
    "passed",
    2,
    { ...up, changed: false, delayMs: 2000 },
  ],
  ["fall 3, close, refused once: again at once", closed, "refused", 3, {
    ...closed,
    streak: 1,
    changed: false,
    delayMs: 0,
  }],
  [
    "fall 3, refused twice: again at once, not yet out",
    { ...closed, streak: 1 },
    "refused",
    3,
    { ...closed, streak: 2, changed: false, delayMs: 0 },
  ],
  [
    "fall 3, refused three times: deregistered",
    { ...closed, streak: 2 },
    "refused",
    3,
    { healthy: false, streak: 0, suspect: false, changed: true, delayMs: 2000 },
  ],
  [
    "fall 1, close, refused: deregistered",
    closed,
    "refused",
    1,
    { healthy: false, streak: 0, suspect: false, changed: true, delayMs: 2000 },
  ],
  [
    "down, refused: the interval",
    { healthy: false, streak: 0, suspect: false },
    "refused",
    2,
    { healthy: false, streak: 0, suspect: false, changed: false, delayMs: 2000 },
  ],
  [
    "down, passing: the quick re-check while rising",
    { healthy: false, streak: 0, suspect: false },
    "passed",
    2,
    { healthy: false, streak: 1, suspect: false, changed: false, delayMs: 250 },
  ],
];

Deno.test("afterCheck(): after a close, a refusal is checked again at once; other failures keep 100 ms; fall counts checks", () => {
  for (const [name, before, result, fall, after] of ROWS) {
    const got = afterCheck(
      { health: { healthy: before.healthy, streak: before.streak }, suspect: before.suspect },
      RESULTS[result],
      { rise: 2, fall, intervalMs: 2000 },
    );
    assert.deepEqual(
      {
        healthy: got.health.healthy,
        streak: got.health.streak,
        suspect: got.suspect,
        changed: got.changed,
        delayMs: got.delayMs,
      },
      after,
      name,
    );
  }
});

Deno.test("afterCheck(): fall N after a close is N checks, the close itself never counted", () => {
  for (const fall of [1, 2, 3, 5]) {
    let state = { health: { healthy: true, streak: 0 }, suspect: true };
    let checks = 0;
    for (let changed = false; !changed; checks++) {
      const next = afterCheck(state, RESULTS.refused, { rise: 2, fall, intervalMs: 2000 });
      if (!next.changed) assert.equal(next.delayMs, 0, `fall ${fall}, check ${checks + 1}`);
      changed = next.changed;
      state = next;
    }
    assert.equal(checks, fall);
  }
});

Deno.test("runChecks() tells the registrar only when the verdict flips, with the reason", async () => {
  const script: CheckResult[] = [
    { passed: true, reason: "status 200" },
    { passed: true, reason: "status 200" },
    { passed: true, reason: "status 200" },
    { passed: false, reason: "ECONNREFUSED" },
    { passed: true, reason: "status 200" },
    { passed: false, reason: "ECONNREFUSED" },
    { passed: false, reason: "ECONNREFUSED" },
    { passed: false, reason: "ECONNREFUSED" },
  ];
  const stop = new AbortController();
  const wants: [boolean, string][] = [];
  const sleeps: number[] = [];
  const logs: string[] = [];
  let clock = 0;
  await runChecks(
    { intervalMs: 2000, ...policy },
    () => {
      const next = script.shift()!;
      if (script.length === 0) stop.abort();
      return Promise.resolve(next);
    },
    { want: (registered, reason) => wants.push([registered, reason]), report: () => {} },
    {
      now: () => clock,
      random: () => 0.5,
      sleep: (ms) => {
        sleeps.push(ms);
        clock += ms;
        return Promise.resolve();
      },
      log: (_level, event, fields) => logs.push(`${event} ${fields?.reason}`),
    },
    stop.signal,
  );
  assert.deepEqual(wants, [[true, "2 checks passed"], [false, "ECONNREFUSED"]]);
  assert.deepEqual(sleeps, [250, 2000, 2000, 250, 2000, 250, 2000]);
  // a check result is logged only when it changes
  assert.deepEqual(logs, ["check failed ECONNREFUSED", "check passed status 200", "check failed ECONNREFUSED"]);
});

Deno.test("parseCli() gives the article's defaults", () => {
  const config = parseCli(["8080"], env, sources);
  assert.ok(config !== "help");
  assert.equal(config.port, 8080);
  assert.equal(config.service, "apache");
  assert.equal(config.ip, "10.0.0.5");
  assert.equal(config.hostname, "core-01");
  assert.equal(config.prefix, "/services");
  assert.deepEqual(config.check, { kind: "http", path: "/", expectStatus: [200, 399], headers: [], insecure: false });
  assert.equal(config.drainMs, 0);
  assert.equal(config.maintenanceFile, undefined);
  assert.deepEqual([config.intervalMs, config.timeoutMs, config.rise, config.fall, config.ttlSeconds], [
    2000,
    1000,
    2,
    2,
    10,
  ]);
  assert.deepEqual(config.etcd, { endpoints: ["http://127.0.0.1:2379"] });
});

Deno.test("parseCli() takes every option", () => {
  const config = parseCli(
    [
      "9000",
      "--service=web.v2",
      "--ip=127.0.0.2",
      "--hostname=h1",
      "--endpoints=http://127.0.0.1:1,http://127.0.0.1:2",
      "--prefix=/reg/",
      "--check=https",
      "--path=/health?full=1",
      "--expect-status=200-299",
      "--expect-body=ok",
      "--header=Host: www.example.com",
      "--header",
      "X-Probe:1",
      "--insecure",
      "--drain=3s",
      "--maintenance-file=/run/apache.maintenance",
      "--interval=500ms",
      "--timeout=200ms",
      "--rise=3",
      "--fall=1",
      "--ttl=1m",
      "--meta=zone=a",
      "--meta",
      "version=1.2=3",
    ],
    {},
    sources,
  );
  assert.ok(config !== "help");
  assert.equal(config.service, "web.v2");
  assert.equal(config.ip, "127.0.0.2");
  assert.equal(config.prefix, "/reg");
  assert.deepEqual(config.check, {
    kind: "https",
    path: "/health?full=1",
    expectStatus: [200, 299],
    expectBody: "ok",
    headers: [["Host", "www.example.com"], ["X-Probe", "1"]],
    insecure: true,
  });
  assert.equal(config.drainMs, 3000);
  assert.equal(config.maintenanceFile, "/run/apache.maintenance");
  assert.deepEqual([config.intervalMs, config.timeoutMs, config.rise, config.fall, config.ttlSeconds], [
    500,
    200,
    3,
    1,
    60,
  ]);
  assert.deepEqual(config.meta, { zone: "a", version: "1.2=3" });
  assert.equal(config.etcd.endpoints.length, 2);
});

Deno.test("parseCli() reads the IP from /etc/environment when the variable is not set", () => {
  const file = "COREOS_PRIVATE_IPV4=10.1.1.1\nCOREOS_PUBLIC_IPV4=203.0.113.7\n";
  const config = parseCli(["80"], {}, { ...sources, environmentFile: () => file });
  assert.ok(config !== "help");
  assert.equal(config.ip, "203.0.113.7");
  assert.equal(readVariable('A="x y"\nexport B=2', "A"), "x y");
  assert.equal(readVariable("A=1", "B"), undefined);
});

Deno.test("parseCli() rejects bad input with one line naming the value", () => {
  const cases: [string[], RegExp, Record<string, string>?][] = [
    [["0"], /port "0": expected an integer from 1 to 65535/],
    [["70000"], /port "70000"/],
    [["80a"], /port "80a"/],
    [[], /Missing <port>/],
    [["80", "81"], /arguments "81"/],
    [["80", "--bogus"], /Unknown option '--bogus'/],
    [["80", "--interval=1s", "--timeout=1s"], /--timeout "1s": expected less than --interval "1s"/],
    [["80", "--ttl=4s"], /--ttl "4s": expected a duration from 5s to 24h/],
    [["80", "--ttl=5500ms"], /--ttl "5500ms": expected whole seconds/],
    [["80", "--ttl=5500ms"], /--ttl "5500ms"/],
    [["80", "--service=a/b"], /service "a\/b"/],
    [["80", "--ip=10.0.0"], /IP "10.0.0"/],
    [["80"], /Cannot find the instance's IP/, {}],
    [["80", "--endpoints=not a url"], /endpoint "not a url"/],
    [["80", "--check=icmp"], /--check "icmp": expected http, https, tcp or exec/],
    [["80", "--check=exec"], /Missing --command/],
    [["80", "--check=exec", "--command= "], /--command " ": expected a command to run/],
    [["80", "--check=exec", "--command=sh -c 'x"], /--command "sh -c 'x": expected a closing '/],
    [["80", "--command=true"], /--command with --check http: expected --check exec/],
    [["80", "--check=tcp", "--path=/x"], /--path with --check tcp: expected --check http or https/],
    [["80", "--insecure"], /--insecure with --check http: expected --check https/],
    [["80", "--expect-status=2xx"], /--expect-status "2xx": expected a status such as 200/],
    [["80", "--expect-status=299-200"], /--expect-status "299-200"/],
    [["80", "--expect-body="], /--expect-body "": expected some text/],
    [["80", "--header=NoColon"], /--header "NoColon": expected "Name: value"/],
    [["80", "--header=X: a\r\nEvil: 1"], /--header "X: a/],
    [["80", "--drain=soon"], /--drain "soon"/],
    [["80", "--maintenance-file=maint"], /--maintenance-file "maint": expected an absolute path/],
    [["80", "--rise=0"], /--rise "0"/],
    [["80", "--meta=novalue"], /--meta "novalue"/],
    [["80", "--path=health"], /--path "health"/],
    [["80", "--path=/a b"], /--path "\/a b"/],
  ];
  for (const [args, message, e] of cases) {
    assert.throws(() => {
      try {
        parseCli(args, e ?? env, sources);
      } catch (err) {
        // parseArgs' own errors become usage errors in main(); here we see them raw
        if (err instanceof TypeError) throw new UsageError(err.message);
        throw err;
      }
    }, (err: Error) => {
      assert.ok(err instanceof UsageError, `${args}: ${err}`);
      assert.match(err.message, message);
      assert.equal(err.message.includes("\n"), false);
      return true;
    }, args.join(" "));
  }
});

Deno.test("parseCli() asks for --hostname when the machine's cannot be read", () => {
  assert.throws(() => parseCli(["80"], env, { hostname: () => undefined }), /expected --hostname NAME/);
});

Deno.test("parseCli() returns help for --help", () => {
  assert.equal(parseCli(["--help"], {}), "help");
});

Deno.test("parseCli() splits an exec check's --command like a shell, without one", () => {
  const config = parseCli(["80", "--check=exec", `--command=/opt/bin/check --name "a b" 'c d' e\\ f`], env, sources);
  assert.ok(config !== "help");
  assert.deepEqual(config.check, { kind: "exec", argv: ["/opt/bin/check", "--name", "a b", "c d", "e f"] });
});

/**
 * Runs the loop over scripted results with a fake watch, recording what the
 * registrar was told, the watch's arm and disarm calls, and each sleep (0 when
 * cut short). `closeAfter` N: the watch reports a close while the loop sleeps
 * after check N.
 */
async function loop(
  script: CheckResult[],
  options: { maintenance?: (i: number) => string | undefined; closeAfter?: number } = {},
) {
  const stop = new AbortController();
  const wants: [boolean, string][] = [];
  const events: string[] = [];
  const reports: unknown[] = [];
  const logs: string[] = [];
  const sleeps: number[] = [];
  let lost: (reason: string) => void = () => {};
  let i = 0;
  await runChecks(
    { intervalMs: 2000, ...policy },
    () => {
      if (i === script.length) stop.abort(); // every scripted result has been seen
      return Promise.resolve(script[Math.min(i++, script.length - 1)]);
    },
    {
      want: (registered, reason) => {
        wants.push([registered, reason]);
        events.push(`want ${registered} ${reason}`);
      },
      report: (s) => reports.push(s),
    },
    {
      now: () => 0,
      random: () => 0.5,
      sleep: (ms, signal) => {
        if (i === options.closeAfter) lost("closed after 2000ms");
        sleeps.push(signal.aborted ? 0 : ms);
        return Promise.resolve();
      },
      log: (_level, event, fields) => logs.push(`${event} ${fields?.reason}`),
      maintenance: () => options.maintenance?.(i),
      watch: (onLost) => {
        lost = onLost;
        return { arm: () => events.push("arm"), disarm: () => events.push("disarm") };
      },
    },
    stop.signal,
  );
  return { wants, events, reports, logs, sleeps };
}

Deno.test("runChecks() keeps an instance out while in maintenance, and lets the checks decide once it ends", async () => {
  const ok: CheckResult = { passed: true, reason: "exit 0" };
  const bad: CheckResult = { passed: false, reason: "exit 1" };
  const file = "maintenance file /m exists";
  // checks 1-2 healthy; 3-5 maintenance (check 4 fails, 5 passes); 6 on: back
  const { wants, logs } = await loop([ok, ok, ok, bad, ok, ok], {
    maintenance: (i) => (i >= 3 && i <= 5 ? file : undefined),
  });
  assert.deepEqual(wants, [[true, "2 checks passed"], [false, file], [true, "maintenance over"]]);
  assert.ok(logs.includes(`maintenance started ${file}`), logs.join("; "));
  assert.ok(logs.includes(`maintenance ended ${file}`), logs.join("; "));
  assert.ok(logs.includes("check failed exit 1"), "checks still run and log during maintenance");
});

Deno.test("runChecks() never registers an instance whose maintenance starts before it is healthy", async () => {
  const ok: CheckResult = { passed: true, reason: "exit 0" };
  const { wants } = await loop([ok, ok, ok], { maintenance: () => "maintenance file /m exists" });
  assert.deepEqual(wants, []);
});

Deno.test("runChecks() reports the status of passing checks only", async () => {
  const { reports } = await loop([
    { passed: true, reason: "exit 0", status: { v: 1 } },
    { passed: false, reason: "exit 1" },
    { passed: true, reason: "exit 0", status: { v: 2 } },
  ]);
  assert.deepEqual(reports, [{ v: 1 }, { v: 2 }]);
});

Deno.test("runChecks() checks at once when the watch connection closes, and again at once after a refusal, until fall", async () => {
  const ok: CheckResult = { passed: true, reason: "status 200" };
  const dead: CheckResult = { passed: false, reason: "ECONNREFUSED", refused: true };
  // the instance dies while the loop sleeps after its third check
  const { events, sleeps } = await loop([ok, ok, ok, dead, dead], { closeAfter: 3 });
  assert.deepEqual(events, [
    "disarm", // not healthy yet: no watch
    "want true 2 checks passed",
    "arm",
    "arm",
    "want false ECONNREFUSED",
    "disarm",
    "disarm", // stopped
  ]);
  // 250 (rising), 2000, the third sleep cut short by the close, no wait between the two refusals, then the interval
  assert.deepEqual(sleeps, [250, 2000, 0, 2000]);
});

Deno.test("runChecks() after a close keeps 100 ms between failures that are not refusals (a hung or blackholed instance)", async () => {
  const ok: CheckResult = { passed: true, reason: "status 200" };
  const hung: CheckResult = { passed: false, reason: "no answer within 1000ms" };
  const { wants, sleeps } = await loop([ok, ok, ok, hung, hung], { closeAfter: 3 });
  assert.deepEqual(wants, [[true, "2 checks passed"], [false, "no answer within 1000ms"]]);
  assert.deepEqual(sleeps, [250, 2000, 0, 100, 2000]);
});

Deno.test("runChecks() without a close keeps the quick re-check for a refusal: fall still needs two checks apart", async () => {
  const ok: CheckResult = { passed: true, reason: "status 200" };
  const dead: CheckResult = { passed: false, reason: "ECONNREFUSED", refused: true };
  const { wants, sleeps } = await loop([ok, ok, ok, dead, dead]);
  assert.deepEqual(wants, [[true, "2 checks passed"], [false, "ECONNREFUSED"]]);
  assert.deepEqual(sleeps, [250, 2000, 2000, 250, 2000]);
});

Deno.test("runChecks() treats a close followed by a passing check as no death: no want, the watch armed again", async () => {
  const ok: CheckResult = { passed: true, reason: "status 200" };
  // the server drops the idle connection after the third check; the next check passes
  const { wants, events, sleeps } = await loop([ok, ok, ok, ok, ok], { closeAfter: 3 });
  assert.deepEqual(wants, [[true, "2 checks passed"]]);
  assert.deepEqual(events.filter((e) => e === "arm").length, 4);
  assert.deepEqual(sleeps, [250, 2000, 0, 2000, 2000]);
});
