/**
 * `secretary agent` against a real etcd, real HTTP targets, a real Apache,
 * real processes and signals: one agent per "host" holding one lease,
 * instances attached and detached over its Unix socket (in a folder of the
 * test's own), everything run from source.
 *
 * What the sidekick tests show for one secretary (tests/secretary_test.ts,
 * tests/killed_test.ts, tests/checks_test.ts) is shown here for an attached
 * instance: registered after --rise checks, a killed target out on refused
 * checks, a hung one after --fall, detach with --drain, the maintenance file.
 * Then what only the agent has: a hundred instances on one loop, one of them
 * hung (the others keep their cadence and their records), the agent
 * restarted (a watcher sees nothing) or killed (the records go with the
 * host's lease, and come back when it starts again), bad requests, and the
 * record of another lease left alone.
 *
 * What must not happen is asserted at a later event (a delete a watcher saw,
 * checks a target counted, keep-alives etcd counted), never after a sleep;
 * how soon anything happens is a benchmark's figure.
 */
import assert from "node:assert/strict";
import type { WatchEvent } from "../lib/etcd.ts";
import { decodeEntry } from "../lib/record.ts";
import {
  type Address,
  Apache,
  type Bed,
  currentRevision,
  etcdMetric,
  EVENT_MS,
  freePort,
  loopback,
  READY_MS,
  runScript,
  Script,
  type TestServer,
  testServer,
  waitFor,
  withBed,
} from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);

/** The agent's lease TTL here (its least). */
const TTL_MS = 5000;

/** An attached instance's settings here: quick checks and a fixed hostname (the TTL is the agent's). */
const INSTANCE = ["--interval=500ms", "--timeout=300ms", "--hostname=testhost"];

/** etcd's count of lease keep-alives it answered: the agent's, where it holds the only lease. */
const RENEWED = "etcd_debugging_lease_renewed_total";

/** How long one test may take in all, start to cleanup: its waits are bounded too, this bounds their sum. */
const TEST_MS = 90_000;

/** An agent's world: the bed (etcd, targets, processes), the socket's folder, and the agent now running. */
interface AgentBed {
  bed: Bed;
  /** The socket's folder, where agent.json lives too. */
  dir: string;
  socket: string;
  /** The agent started last. */
  agent: Script;
  /** Starts an agent on the socket (with `extra` flags) and waits for its `agent started` line. */
  startAgent(extra?: string[]): Promise<Script>;
  /** Runs `secretary <command> … --socket=<socket>` to the end. */
  cli(command: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }>;
  /** `secretary attach` for `target`, with INSTANCE's settings, then `extra`. */
  attach(target: Address, extra?: string[]): Promise<{ code: number; stdout: string; stderr: string }>;
  /** Every record under /services/, by key. */
  records(): Promise<Map<string, { value: string; lease: string }>>;
}

/**
 * Runs `fn` with a fresh etcd, a socket folder and an agent on it, all
 * stopped whatever happens; fails after `timeoutMs`, killing what it started.
 */
async function withAgent(fn: (a: AgentBed) => Promise<void>, timeoutMs = TEST_MS): Promise<void> {
  await withBed(lo, async (bed) => {
    const dir = await Deno.makeTempDir({ prefix: "secretary-agent-" });
    bed.cleanups.push(() => Deno.remove(dir, { recursive: true }));
    const socket = `${dir}/agent.sock`;
    const a: AgentBed = {
      bed,
      dir,
      socket,
      agent: undefined as unknown as Script,
      async startAgent(extra = []) {
        const agent = Script.deno("secretary.ts", [
          "agent",
          `--socket=${socket}`,
          "--ttl=5s",
          `--endpoints=${bed.cluster.endpoints.join(",")}`,
          ...extra,
        ]);
        bed.scripts.push(agent);
        a.agent = agent;
        await agent.waitForLog(/^agent started /, READY_MS);
        return agent;
      },
      cli: (command, args) =>
        runScript("secretary.ts", [command, ...args, `--socket=${socket}`], { timeoutMs: READY_MS }),
      attach: (target, extra = []) =>
        a.cli("attach", [String(target.port), `--ip=${target.host}`, ...INSTANCE, ...extra]),
      async records() {
        const { values } = await bed.etcd.list("/services/");
        const stored = values as { key: string; value: string; lease: string }[];
        return new Map(stored.map((v) => [v.key, { value: v.value, lease: v.lease }]));
      },
    };
    await a.startAgent();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        for (const s of bed.scripts) s.kill("SIGKILL"); // every wait on them ends now
        reject(new Error(`the test took longer than ${timeoutMs} ms:\n${a.agent.stderr.slice(-5000)}`));
      }, timeoutMs);
    });
    try {
      await Promise.race([fn(a), deadline]);
    } finally {
      clearTimeout(timer);
    }
  });
}

/** A regular expression for the log line `event key=<key>` (and anything after). */
function logLine(event: string, key: string, rest = ""): RegExp {
  const escaped = key.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return new RegExp(`^${event} key=${escaped}(?: .*)?${rest}`);
}

/** Watches /services/ from now on; the events seen, and whether `key` had one of `type`. */
async function watchRecords(bed: Bed): Promise<{ events: WatchEvent[]; seen(type: string, key: string): boolean }> {
  const events: WatchEvent[] = [];
  const revision = await currentRevision(bed.etcd);
  const handle = await bed.etcd.watch("/services/", String(BigInt(revision) + 1n), (e) => events.push(e));
  bed.cleanups.push(() => handle.cancel());
  return { events, seen: (type, key) => events.some((e) => e.type === type && e.key === key) };
}

/**
 * One request written to the socket by hand, as `line` (its newline included,
 * or not); what came back until the agent closed the connection. Throws when
 * it has not closed it within `timeoutMs`.
 */
async function ask(socket: string, line: string, timeoutMs = EVENT_MS): Promise<string> {
  const conn = await Deno.connect({ transport: "unix", path: socket });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      conn.close();
    } catch { /* closed */ }
  }, timeoutMs);
  let text = "";
  try {
    try {
      await conn.write(new TextEncoder().encode(line));
    } catch (err) {
      // closed by the agent before it read all of a long line: what it answered, if anything, is still to read
      if (timedOut) throw err;
    }
    const buf = new Uint8Array(64 * 1024);
    const decoder = new TextDecoder();
    while (true) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += decoder.decode(buf.subarray(0, n), { stream: true });
    }
  } catch (err) {
    if (!timedOut) throw err;
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed by the timer, or by the agent */ }
  }
  if (timedOut) throw new Error(`the agent did not close the connection within ${timeoutMs} ms; it sent ${text}`);
  return text;
}

/** The agent's one-line JSON reply to `request`, parsed. */
async function askJson(socket: string, request: unknown): Promise<Record<string, unknown>> {
  const reply = await ask(socket, JSON.stringify(request) + "\n");
  assert.match(reply, /^[^\n]+\n$/, `one reply line: ${JSON.stringify(reply)}`);
  return JSON.parse(reply);
}

/** The arguments of `attach` for `target`, as the socket takes them. */
function attachArgs(target: Address, extra: string[] = []): string[] {
  return [String(target.port), `--ip=${target.host}`, ...INSTANCE, ...extra];
}

/**
 * Attaches every target over the socket by hand (as the CLI would, without
 * starting deno for each), a few at once, each with `argsOf(target)`.
 */
async function attachAll(a: AgentBed, targets: Address[], argsOf = (t: Address) => attachArgs(t)): Promise<void> {
  const queue = [...targets];
  const worker = async () => {
    for (let t = queue.shift(); t; t = queue.shift()) {
      const reply = await askJson(a.socket, { op: "attach", args: argsOf(t) });
      assert.equal(reply.ok, true, `attach ${t.host}:${t.port}: ${JSON.stringify(reply)}`);
    }
  };
  await Promise.all(Array.from({ length: 10 }, worker));
}

/** Waits until every one of `keys` is in etcd, and returns their leases. */
async function allRegistered(a: AgentBed, keys: string[], timeoutMs = READY_MS): Promise<string[]> {
  return await waitFor(
    async () => {
      const records = await a.records();
      return keys.every((k) => records.has(k)) && keys.map((k) => records.get(k)!.lease);
    },
    () => `all ${keys.length} instances registered:\n${a.agent.stderr.slice(-5000)}`,
    timeoutMs,
    200,
  );
}

/** The host lease: the one `agent` adopted (its `agent started` line says so), else the one it was granted. */
async function agentLease(agent: Script): Promise<string> {
  const line = await agent.waitForLog(/^(agent started .* lease=\d+|lease granted lease=\d+)/, EVENT_MS);
  return / lease=(\d+)/.exec(line)![1];
}

/** An HTTP server in its own process, so that it can die as a process does (as in tests/killed_test.ts). */
async function serverProcess(bed: Bed, host: string): Promise<{ address: Address; proc: Script }> {
  const address = { host, port: await freePort(host) };
  const code = `Deno.serve(
      { hostname: "${host}", port: ${address.port}, onListen() { console.log("listening"); } },
      () => new Response("ok"),
    );`;
  const proc = new Script(Deno.execPath(), ["eval", code]);
  bed.cleanups.push(() => proc.stop());
  await waitFor(() => proc.stdout.includes("listening") || (!proc.running && "exited"), "server listening", READY_MS);
  if (!proc.running) throw new Error(`server on ${host}:${address.port} exited:\n${proc.stderr}`);
  return { address, proc };
}

// ---------------------------------------------------------------------------
// the sidekick's behaviour, attached

Deno.test("agent: attach registers under the host lease; attached lists it; detach removes the record and the agent stays", async () => {
  await withAgent(async (a) => {
    const { bed } = a;
    const t = await testServer(bed, lo.ip(1));
    const u = await testServer(bed, lo.ip(1));
    const key = bed.key(t);
    const lease = await agentLease(a.agent);

    const attached = await a.attach(t, ["--meta=zone=a"]);
    assert.deepEqual(attached, { code: 0, stdout: "", stderr: "" });
    assert.equal((await a.attach(u)).code, 0);
    await allRegistered(a, [key, bed.key(u)]);
    await a.agent.waitForLog(logLine("registered", key));
    const stored = (await a.records()).get(key)!;
    assert.equal(stored.lease, lease, "not under the host lease");
    assert.equal((await a.records()).get(bed.key(u))!.lease, lease, "the second instance not under the host lease");
    const record = decodeEntry("/services", key, stored.value).record;
    assert.deepEqual(
      [record?.host, record?.ipv4_addr, record?.port, record?.service, record?.meta],
      ["testhost", t.host, t.port, "apache", { zone: "a" }],
    );
    const state = JSON.parse(await Deno.readTextFile(`${a.dir}/agent.json`));
    assert.ok(
      JSON.stringify(state).includes(String(t.port)),
      `agent.json lacks the instance: ${JSON.stringify(state)}`,
    );

    const listed = await a.cli("attached", []);
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, new RegExp(`^${key.replaceAll(".", "\\.")}\\b.*$`, "m"));
    const json = await a.cli("attached", ["--json"]);
    assert.equal(json.code, 0, json.stderr);
    assert.deepEqual(
      (JSON.parse(json.stdout) as { key: string }[]).map((i) => i.key).sort(),
      [key, bed.key(u)].sort(),
    );

    // the same key with the same flags again: nothing to do; with other flags: refused
    assert.equal((await a.attach(t, ["--meta=zone=a"])).code, 0);
    const other = await a.attach(t, ["--meta=zone=b"]);
    assert.equal(other.code, 1, other.stderr);
    assert.match(other.stderr, /^secretary: [^\n]*attached with other flags[^\n]*detach first\n$/);

    const detached = await a.cli("detach", [String(t.port), `--ip=${t.host}`]);
    assert.equal(detached.code, 0, detached.stderr);
    assert.equal(await bed.present(key), false, "the record outlived the detach");
    await a.agent.waitForLog(logLine("detached", key));
    assert.equal((await a.records()).get(bed.key(u))?.lease, lease, "the other instance's record went too");
    const after = await a.cli("attached", ["--json"]);
    assert.deepEqual((JSON.parse(after.stdout) as { key: string }[]).map((i) => i.key), [bed.key(u)]);

    const again = await a.cli("detach", [String(t.port), `--ip=${t.host}`]);
    assert.equal(again.code, 0, "detaching what is not attached");
    assert.notEqual(again.stderr, "", "no note that it was not attached");
    assert.ok(a.agent.running, "the agent exited");
  });
});

Deno.test("agent: detach with --drain (as systemd stops an instance) removes the record at once and returns only after the drain", async () => {
  await withAgent(async (a) => {
    const { bed } = a;
    const t = await testServer(bed, lo.ip(2));
    const key = bed.key(t);
    assert.equal((await a.attach(t, ["--drain=2s"])).code, 0);
    await allRegistered(a, [key]);
    const asked = Date.now();
    const detached = await a.cli("detach", [String(t.port), `--ip=${t.host}`]);
    const took = Date.now() - asked;
    assert.equal(detached.code, 0, detached.stderr);
    // the drain counts from the agent's receiving the request, after it was sent: a lower bound any machine keeps
    assert.ok(took >= 2000, `detach returned ${took} ms after it started, before the 2 s drain was over`);
    assert.equal(await bed.present(key), false);

    // a drain of a minute: the record goes at once, while detach still waits
    const u = await testServer(bed, lo.ip(2));
    const long = bed.key(u);
    assert.equal((await a.attach(u, ["--drain=1m"])).code, 0);
    await allRegistered(a, [long]);
    const waiting = Script.deno("secretary.ts", ["detach", String(u.port), `--ip=${u.host}`, `--socket=${a.socket}`]);
    bed.scripts.push(waiting);
    await waitFor(async () => !(await bed.present(long)), "the record gone while draining", READY_MS);
    assert.ok(waiting.running, `detach returned before its drain of a minute:\n${waiting.stderr}`);
    // and requests for others are answered meanwhile
    const v = await testServer(bed, lo.ip(2));
    assert.equal((await a.attach(v)).code, 0);
    await allRegistered(a, [bed.key(v)]);
    assert.ok(waiting.running, `detach returned before its drain of a minute:\n${waiting.stderr}`);
    await waiting.stop("SIGKILL");
  });
});

Deno.test("agent: a target killed with SIGKILL: a watcher sees its record deleted, on refused checks; the agent stays", async () => {
  await withAgent(async (a) => {
    const { bed } = a;
    const server = await serverProcess(bed, lo.ip(3));
    const key = bed.key(server.address);
    // checks a minute apart: only the held connection can notice the death in time (rise 1: registered at once)
    const attached = await a.cli("attach", [
      String(server.address.port),
      `--ip=${server.address.host}`,
      "--hostname=testhost",
      "--interval=1m",
      "--timeout=300ms",
      "--rise=1",
    ]);
    assert.equal(attached.code, 0, attached.stderr);
    await allRegistered(a, [key]);
    const watcher = await watchRecords(bed);
    server.proc.kill("SIGKILL");
    await waitFor(
      () => watcher.seen("delete", key),
      () => `a watcher to see ${key} deleted:\n${a.agent.stderr}`,
      EVENT_MS,
    );
    await a.agent.waitForLog(logLine("deregistered", key, "reason=(ECONNREFUSED|ECONNRESET)$"));
    assert.deepEqual(watcher.events.map((e) => `${e.type} ${e.key}`), [`delete ${key}`]);
    assert.ok(a.agent.running, "the agent exited");
  });
});

Deno.test("agent: a hung target (accepts, never answers) goes after --fall timed-out checks, and comes back once it answers", async () => {
  await withAgent(async (a) => {
    const { bed } = a;
    const t = await testServer(bed, lo.ip(4));
    const key = bed.key(t);
    assert.equal((await a.attach(t, ["--fall=3"])).code, 0);
    await allRegistered(a, [key]);
    const watcher = await watchRecords(bed);
    const before = t.requests;
    t.mode = "hang";
    let checksAtDelete = -1;
    await waitFor(
      () => {
        if (watcher.seen("delete", key) && checksAtDelete < 0) checksAtDelete = t.requests - before;
        return checksAtDelete >= 0;
      },
      () => `a watcher to see ${key} deleted:\n${a.agent.stderr}`,
      EVENT_MS,
    );
    assert.ok(checksAtDelete >= 3, `deleted after ${checksAtDelete} hung checks:\n${a.agent.stderr}`);
    await a.agent.waitForLog(logLine("deregistered", key, 'reason="no answer within 300ms"$'));
    t.mode = "ok";
    await waitFor(() => bed.present(key), "registered again after answering", EVENT_MS);
  });
});

Deno.test("agent: a maintenance file: deregistered while it exists, checks still run; back when it goes", async () => {
  await withAgent(async (a) => {
    const { bed } = a;
    const file = `${a.dir}/apache.maintenance`;
    const t = await testServer(bed, lo.ip(5));
    const key = bed.key(t);
    assert.equal((await a.attach(t, [`--maintenance-file=${file}`])).code, 0);
    await allRegistered(a, [key]);

    await Deno.writeTextFile(file, "");
    await waitFor(async () => !(await bed.present(key)), "deregistered in maintenance", EVENT_MS);
    await a.agent.waitForLog(logLine("deregistered", key, `reason="maintenance file ${file} exists"$`));
    const passing = t.requests;
    await waitFor(() => t.requests >= passing + 3, "three more passing checks", EVENT_MS);
    assert.equal(await bed.present(key), false, "healthy, but still in maintenance");

    await Deno.remove(file);
    await waitFor(() => bed.present(key), "registered once the file is gone", EVENT_MS);
    await a.agent.waitForLog(logLine("registered", key, 'reason="maintenance over"'));
  });
});

Deno.test("agent: a real Apache attached registers; its process group killed, its record goes", async () => {
  await withAgent(async (a) => {
    const { bed } = a;
    const ip = lo.ip(6);
    const port = await freePort(ip);
    const dir = await Deno.makeTempDir({ prefix: "secretary-agent-apache-" });
    bed.cleanups.push(() => Deno.remove(dir, { recursive: true }));
    const apache = await Apache.start({ ip, port, dir: `${dir}/apache`, serverName: "host-a" });
    bed.cleanups.push(() => apache.killGroup());
    const key = bed.key({ host: ip, port });
    const attached = await a.cli("attach", [String(port), `--ip=${ip}`, "--hostname=host-a", "--timeout=1s"]);
    assert.equal(attached.code, 0, attached.stderr);
    const [lease] = await allRegistered(a, [key]);
    assert.equal(lease, await agentLease(a.agent));
    const record = decodeEntry("/services", key, (await a.records()).get(key)!.value).record;
    assert.deepEqual([record?.host, record?.ipv4_addr, record?.port], ["host-a", ip, port]);

    const watcher = await watchRecords(bed);
    await apache.killGroup(); // docker kill: no goodbye
    await waitFor(() => watcher.seen("delete", key), () => `Apache's record gone:\n${a.agent.stderr}`, EVENT_MS);
    await a.agent.waitForLog(logLine("deregistered", key, "reason=(ECONNREFUSED|ECONNRESET)$"));
    // the held connection saw Apache's sockets close first, rather than a check at its next interval
    const lines = a.agent.stderr.split("\n");
    const closed = lines.findIndex((l) => logLine("watch connection closed", key).test(l));
    assert.ok(closed !== -1 && closed < lines.findIndex((l) => logLine("deregistered", key).test(l)), a.agent.stderr);
    assert.ok(a.agent.running, "the agent exited");
  });
});

// ---------------------------------------------------------------------------
// many instances on one agent

/** `count` targets on distinct ports of one address, attached over the socket and registered. */
async function manyRegistered(a: AgentBed, n: number, count: number, argsOf?: (t: Address) => string[]) {
  const targets: TestServer[] = [];
  for (let i = 0; i < count; i++) targets.push(await testServer(a.bed, lo.ip(n)));
  await attachAll(a, targets, argsOf);
  const keys = targets.map((t) => a.bed.key(t));
  const leases = await allRegistered(a, keys);
  return { targets, keys, leases };
}

Deno.test("agent: 100 instances, one hung and one killed: those two go, the other 98 keep their cadence and their records", async () => {
  await withAgent(async (a) => {
    const { bed } = a;
    // the one to hang is checked at half the others' pace, each of its checks waiting out 900 ms: had its hanging
    // checks held the others up, they would have had no more checks than it had
    let slow: Address | undefined;
    const { targets, keys, leases } = await manyRegistered(a, 7, 100, (t) => {
      slow ??= t;
      return t === slow
        ? [String(t.port), `--ip=${t.host}`, "--hostname=testhost", "--interval=1s", "--timeout=900ms"]
        : attachArgs(t);
    });
    assert.deepEqual(new Set(leases), new Set([await agentLease(a.agent)]), "one lease for the host");
    const watcher = await watchRecords(bed);
    const [hung, killed, ...others] = targets;
    assert.equal(hung, slow);
    const [hungKey, killedKey] = keys;
    const start = others.map((t) => t.requests);
    const hungStart = hung.requests;
    hung.mode = "hang";
    await killed.setMode("closed");
    await waitFor(() => watcher.seen("delete", killedKey), `${killedKey} deleted`, EVENT_MS);
    // the window ends at the hung one's delete and six checks of it
    await waitFor(
      () => watcher.seen("delete", hungKey) && hung.requests >= hungStart + 6,
      () => `${hungKey} deleted and six checks of it:\n${a.agent.stderr.slice(-5000)}`,
      EVENT_MS,
    );
    const hungChecks = hung.requests - hungStart;
    const counts = others.map((t, i) => t.requests - start[i]);
    // at twice its pace (it went a little faster while its checks disagreed with its verdict), every other one
    // had clearly more checks than it
    const slowest = Math.min(...counts);
    assert.ok(
      slowest >= hungChecks + 2,
      `an instance had ${slowest} checks while the hung one had ${hungChecks}: ${counts.join(",")}`,
    );
    assert.deepEqual(
      watcher.events.map((e) => `${e.type} ${e.key}`).sort(),
      [`delete ${hungKey}`, `delete ${killedKey}`].sort(),
      "the others' records changed",
    );
    const records = await a.records();
    assert.equal(records.size, 98);
  });
});

Deno.test("agent: restarted (SIGTERM, then started again on the socket) under load: no record deleted or put, checks go on", async () => {
  await withAgent(async (a) => {
    const { bed } = a;
    const count = 50;
    const { targets, keys } = await manyRegistered(a, 8, count);
    const lease = await agentLease(a.agent);
    const watcher = await watchRecords(bed);
    const first = a.agent;
    first.kill("SIGTERM");
    assert.equal((await first.finished(EVENT_MS)).code, 0, first.stderr);
    assert.match(first.stderr, new RegExp(`^agent stopped signal=SIGTERM lease=${lease} instances=${count}`, "m"));
    assert.equal((await a.records()).size, count, "records went with the agent's stop");

    const second = await a.startAgent();
    const started = second.stderr.split("\n").find((l) => /^agent started /.test(l))!;
    assert.match(started, new RegExp(` lease=${lease}( |$)`), "the lease not adopted");
    assert.match(started, new RegExp(` instances=${count}( |$)`));
    // the new agent checks every instance, and keeps the lease alive for more than a TTL (one every third of
    // it): had it lost or not kept the lease, the records would have gone by then
    const seen = targets.map((t) => t.requests);
    const endpoint = bed.cluster.endpoints[0];
    const renewed = await etcdMetric(endpoint, RENEWED);
    await waitFor(
      () => targets.every((t, i) => t.requests >= seen[i] + 2),
      () => `two checks of every instance by the new agent:\n${second.stderr.slice(-5000)}`,
      EVENT_MS,
    );
    await waitFor(
      async () => (await etcdMetric(endpoint, RENEWED)) >= renewed + 4,
      () => `four keep-alives by the new agent:\n${second.stderr.slice(-5000)}`,
      EVENT_MS,
    );
    const changed = watcher.events.filter((e) => keys.includes(e.key)).map((e) => `${e.type} ${e.key}`);
    assert.deepEqual(changed, [], "a watcher saw the instances' records change across the restart");
    assert.ok((await bed.etcd.leaseTimeToLive(lease))!.ttlSeconds > 0, "the lease is expiring");
    assert.equal((await a.records()).size, count);
    const listed = await askJson(a.socket, { op: "list" });
    const instances = listed.instances as { key: string; healthy: boolean; registered: boolean }[];
    assert.deepEqual(
      instances.filter((i) => i.healthy && i.registered).map((i) => i.key).sort(),
      [...keys].sort(),
      "not every instance healthy and registered in the new agent",
    );
  });
});

Deno.test("agent: SIGKILLed, every record goes with the host lease; started again, the instances are back from agent.json", async () => {
  await withAgent(async (a) => {
    const { bed } = a;
    const count = 10;
    const { keys } = await manyRegistered(a, 9, count);
    const lease = await agentLease(a.agent);
    a.agent.kill("SIGKILL"); // host death: no goodbye
    await a.agent.finished();
    const killed = Date.now();
    // how soon after the TTL they go is a benchmark's figure; here, that they go with the lease, within it and a bit
    await waitFor(
      async () => (await bed.etcd.leaseTimeToLive(lease)) === undefined && (await a.records()).size === 0,
      "the lease and every record gone",
      TTL_MS + 4000 - (Date.now() - killed),
      100,
    );

    const again = await a.startAgent();
    const leases = await allRegistered(a, keys, EVENT_MS);
    const newLease = await agentLease(again);
    assert.notEqual(newLease, lease);
    assert.deepEqual(new Set(leases), new Set([newLease]), "back under the new host lease");
    for (const key of keys) await again.waitForLog(logLine("registered", key));
  });
});

// ---------------------------------------------------------------------------
// bad requests, and others' records

Deno.test("agent: bad attach flags, or the agent's own flags, exit 2 with one line; nothing is sent, written or changed", async () => {
  await withAgent(async (a) => {
    const { bed } = a;
    const t = await testServer(bed, lo.ip(10));
    const revision = await currentRevision(bed.etcd);
    for (
      const [args, what] of [
        [["80a"], /port "80a"/],
        [[String(t.port), `--ip=${t.host}`, "--interval=fast"], /--interval "fast"/],
        [[String(t.port), `--ip=${t.host}`, "--ttl=10s"], /--ttl/],
        [[String(t.port), `--ip=${t.host}`, "--prefix=/other"], /--prefix/],
        [[String(t.port), `--ip=${t.host}`, `--endpoints=${bed.cluster.endpoints[0]}`], /--endpoints/],
      ] as [string[], RegExp][]
    ) {
      const out = await a.cli("attach", args);
      assert.equal(out.code, 2, `${args.join(" ")}: ${out.stderr}`);
      assert.match(out.stderr, /^secretary: [^\n]+\n$/, args.join(" "));
      assert.match(out.stderr, what, args.join(" "));
      assert.equal(out.stdout, "");
    }
    assert.equal(await currentRevision(bed.etcd), revision, "something was written to etcd");
    const listed = await a.cli("attached", ["--json"]);
    assert.deepEqual(JSON.parse(listed.stdout), [], "something was attached");
    assert.doesNotMatch(a.agent.stderr, /^attached /m);
    assert.ok(a.agent.running, "the agent exited");
    // and it still attaches
    assert.equal((await a.attach(t)).code, 0);
    await allRegistered(a, [bed.key(t)]);
  });
});

Deno.test("agent: a malformed request gets an error reply and a closed connection; the agent and its instances go on", async () => {
  await withAgent(async (a) => {
    const { bed } = a;
    const t = await testServer(bed, lo.ip(11));
    const key = bed.key(t);
    assert.equal((await a.attach(t)).code, 0);
    const [lease] = await allRegistered(a, [key]);
    const watcher = await watchRecords(bed);

    for (
      const line of [
        "{not json\n",
        "[1,2]\n",
        '{"op":"explode"}\n',
        '{"op":"attach"}\n',
        '{"op":"attach","args":"8080"}\n',
        '{"op":"attach","args":["80a"]}\n',
        '{"op":"detach","port":"x"}\n',
        `${"x".repeat(1024 * 1024)}\n`,
      ]
    ) {
      const reply = await ask(a.socket, line);
      assert.match(reply, /^[^\n]+\n$/, `one line for ${line.slice(0, 40)}: ${JSON.stringify(reply.slice(0, 200))}`);
      const parsed = JSON.parse(reply);
      assert.equal(parsed.ok, false, `${line.slice(0, 40)}: ${reply}`);
      assert.equal(typeof parsed.error, "string");
      assert.doesNotMatch(parsed.error, /\n/);
    }
    const usage = await askJson(a.socket, { op: "attach", args: ["80a"] });
    assert.equal(usage.usage, true, JSON.stringify(usage));

    const before = t.requests;
    await waitFor(() => t.requests >= before + 3, "three more checks of the attached instance", EVENT_MS);
    assert.ok(a.agent.running, "the agent exited");
    assert.equal((await a.records()).get(key)?.lease, lease);
    assert.deepEqual(watcher.events, [], "the instance's record changed");
    const listed = await askJson(a.socket, { op: "list" });
    assert.equal(listed.ok, true, JSON.stringify(listed));
  });
});

Deno.test("agent: a client that connects and sends nothing holds up no one, and is closed; the socket is 0600", async () => {
  await withAgent(async (a) => {
    const { bed } = a;
    assert.equal((await Deno.stat(a.socket)).mode! & 0o777, 0o600, "the socket's mode");
    const silent = await Deno.connect({ transport: "unix", path: a.socket });
    const half = await Deno.connect({ transport: "unix", path: a.socket });
    await half.write(new TextEncoder().encode('{"op":"attach","args":['));
    const open = new Set([silent, half]);
    const closed = async (conn: Deno.UnixConn) => {
      try {
        while ((await conn.read(new Uint8Array(1024))) !== null) { /* an error reply to the half request */ }
      } catch { /* reset: closed too */ }
      open.delete(conn);
    };
    const bothClosed = Promise.all([closed(silent), closed(half)]);
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      // while they hang: an attach written by hand is answered, and so is one by the command
      const t = await testServer(bed, lo.ip(12));
      const reply = await askJson(a.socket, { op: "attach", args: attachArgs(t) });
      assert.equal(reply.ok, true, JSON.stringify(reply));
      assert.equal(open.size, 2, "a hanging client was closed before the attach was answered");
      const u = await testServer(bed, lo.ip(12));
      const out = await a.attach(u);
      assert.equal(out.code, 0, out.stderr);
      await allRegistered(a, [bed.key(t), bed.key(u)]);
      // the agent closes them (after 5 s of silence): both reads end; an answer to the half request is an error
      const ended = await Promise.race([
        bothClosed.then(() => true),
        new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), EVENT_MS)),
      ]);
      assert.ok(ended, "the agent left a silent client connected");
    } finally {
      clearTimeout(timer);
      for (const c of [silent, half]) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await bothClosed;
    }
    assert.ok(a.agent.running);
  });
});

Deno.test("agent: attach, detach and attached with no agent running exit 1 with one line", async () => {
  await withAgent(async (a) => {
    a.agent.kill("SIGTERM");
    assert.equal((await a.agent.finished()).code, 0);
    const dir = await Deno.makeTempDir({ prefix: "secretary-noagent-" });
    a.bed.cleanups.push(() => Deno.remove(dir, { recursive: true }));
    const socket = `${dir}/agent.sock`;
    const instance = ["8080", `--ip=${lo.ip(14)}`];
    const commands: [string, string[]][] = [["attach", instance], ["detach", instance], ["attached", []]];
    for (const [command, args] of commands) {
      // none there; for attach, also where the stopped agent listened
      for (const path of command === "attach" ? [socket, a.socket] : [socket]) {
        const out = await runScript("secretary.ts", [command, ...args, `--socket=${path}`], { timeoutMs: READY_MS });
        assert.equal(out.code, 1, `${command} at ${path}: ${out.stderr}`);
        assert.match(out.stderr, new RegExp(`^secretary: Cannot reach the agent at ${path}: [^\\n]+\\n$`));
      }
    }
  });
});

Deno.test("agent: an instance's failure deletes only its own key, and only while under the host lease", async () => {
  await withAgent(async (a) => {
    const { bed } = a;
    const t = await testServer(bed, lo.ip(13));
    const u = await testServer(bed, lo.ip(13));
    const [tKey, uKey] = [bed.key(t), bed.key(u)];
    assert.equal((await a.attach(t)).code, 0);
    assert.equal((await a.attach(u)).code, 0);
    const [lease] = await allRegistered(a, [tKey, uKey]);
    const watcher = await watchRecords(bed);

    // u fails: its record goes, t's stays
    await u.setMode("error");
    await waitFor(() => watcher.seen("delete", uKey), `${uKey} deleted`, EVENT_MS);
    assert.equal((await a.records()).get(tKey)?.lease, lease, "the other instance's record went");
    assert.ok(!watcher.seen("delete", tKey));

    // t's record now held by another lease, one kept alive as far as anybody can tell (a long TTL, just granted)
    const foreign = await bed.etcd.grantLease(600);
    const value = JSON.stringify({ host: "elsewhere", ipv4_addr: t.host, port: t.port, service: "apache" });
    assert.ok(await bed.etcd.putIfLease(tKey, value, foreign, lease), "the by-hand put");
    await t.setMode("error");
    await a.agent.waitForLog(logLine("check failed", tKey), EVENT_MS);
    const failing = t.requests;
    // fall (2) failed checks in a row (the first logged) deregister it; a delete sent then has landed three checks on
    await waitFor(() => t.requests >= failing + 3, "three more failed checks", EVENT_MS);
    const stored = (await a.records()).get(tKey);
    assert.equal(stored?.lease, foreign, `another's record deleted:\n${a.agent.stderr}`);
    assert.equal(stored?.value, value);
    assert.ok(!watcher.seen("delete", tKey));
    assert.doesNotMatch(
      a.agent.stderr,
      new RegExp(`${logLine("deregistered", tKey).source}(?<!record="gone or another's")$`, "m"),
    );
  });
});
