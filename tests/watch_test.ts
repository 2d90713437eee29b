/**
 * The connection watch against a real etcd: a target process killed with
 * SIGKILL, servers that drop or refuse idle connections, a hung target, and
 * --no-watch-connection. The interval is long (a minute, or 5 s) where the
 * point is that removal does or does not wait for the next check. What must
 * not happen is asserted after a later event (checks the target counted),
 * never after a sleep; how soon a removal comes is a benchmark's figure
 * (bench/killed.ts).
 */
import assert from "node:assert/strict";
import {
  type Address,
  type Bed,
  EVENT_MS,
  freePort,
  loopback,
  READY_MS,
  registered,
  Script,
  testServer,
  waitFor,
  withBed,
} from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);

/** An HTTP server in its own process, so that it can die as a process does; it prints a line per request. */
async function serverProcess(bed: Bed, host: string): Promise<{ address: Address; proc: Script; requests(): number }> {
  const address = { host, port: await freePort(host) };
  const code = `Deno.serve({ hostname: "${host}", port: ${address.port}, onListen() { console.log("listening"); } },
    () => { console.log("request"); return new Response("ok"); });`;
  const proc = new Script(Deno.execPath(), ["eval", code]);
  bed.cleanups.push(() => proc.stop());
  await waitFor(() => proc.stdout.includes("listening"), "server listening", READY_MS);
  return { address, proc, requests: () => proc.stdout.split("request").length - 1 };
}

const SLOW = ["--interval=5s", "--timeout=1s"];

Deno.test("watch: a target killed with SIGKILL is deregistered once its connection closes, not at the next check a minute later", async () => {
  await withBed(lo, async (bed) => {
    const server = await serverProcess(bed, lo.ip(1));
    const s = bed.secretary(server.address, ["--interval=1m", "--timeout=1s"]);
    const key = bed.key(server.address);
    // registered after two checks; the watch is armed before the put, so it connects (or fails to) from here on
    await s.waitForLog(/^registered key=/, READY_MS);
    server.proc.kill("SIGKILL");
    // the next periodic check is a minute after the last: a removal within EVENT_MS is the watch's doing
    await waitFor(async () => !(await bed.present(key)), "deregistered", EVENT_MS);
    await s.waitForLog(/^deregistered key=\S+ reason=ECONNREFUSED$/);
    const lines = s.stderr.split("\n");
    const closed = lines.findIndex((l) => /^watch connection closed /.test(l));
    assert.ok(closed !== -1 && closed < lines.findIndex((l) => /^deregistered /.test(l)), s.stderr);
  });
});

Deno.test("watch off (--no-watch-connection): no idle connection; a target gone between two checks goes unnoticed, one that stays gone goes at the next check", async () => {
  await withBed(lo, async (bed) => {
    const t = await testServer(bed, lo.ip(2));
    const s = bed.secretary(t, [...SLOW, "--no-watch-connection"]);
    const key = bed.key(t);
    await s.waitForLog(/^registered key=/, READY_MS);
    // a watch is armed by the check that makes the instance healthy: by the next check it would be connected
    const registeredAt = t.requests;
    await waitFor(() => t.requests > registeredAt, "a check after the registration", EVENT_MS);
    assert.equal(t.connections, t.requests, "a connection that was not a check");
    assert.equal(t.silent, 0, "a connection closed without a request");

    // gone just after that check and back at once, in this process: only a watch could notice in between
    await t.setMode("closed");
    await t.setMode("ok");
    const back = t.requests;
    await waitFor(() => t.requests > back, "the next check", EVENT_MS);
    assert.equal(await bed.present(key), true, "deregistered though every check passed");
    assert.doesNotMatch(s.stderr, /check failed|watch connection closed|deregistered/);
    assert.equal(t.silent, 0, "a connection closed without a request");

    // gone for good: the next check finds it
    await t.setMode("closed");
    await waitFor(async () => !(await bed.present(key)), "deregistered at the next check", EVENT_MS);
    await s.waitForLog(/^deregistered key=\S+ reason=ECONNREFUSED$/);
  });
});

Deno.test("watch: a server that drops idle connections every second costs no flap and no write over five drops", async () => {
  await withBed(lo, async (bed) => {
    const { t, s, key } = await registered(bed, lo.ip(4), {
      extra: ["--interval=2s", "--timeout=1s"],
      idleCloseMs: 1000,
    });
    const { revision } = await bed.etcd.list("/services/");
    const stored = await bed.etcd.get(key);
    // five idle connections dropped, each followed by a check; then two more checks, by which time a write that
    // any of the drops caused has landed (the registrar writes at once, checks come an interval apart)
    await waitFor(() => t.silent >= 5, () => `five dropped idle connections (${t.silent})`, READY_MS);
    const dropped = t.requests;
    await waitFor(() => t.requests >= dropped + 2, "two checks after the fifth drop", EVENT_MS);
    assert.equal((await bed.etcd.list("/services/")).revision, revision, "no etcd write");
    assert.equal((await bed.etcd.get(key))?.modRevision, stored?.modRevision);
    const noisy = s.stderr.split("\n").filter((l) =>
      /^(deregistered|registered .*again=true|check failed|lease lost|etcd|record)/.test(l)
    );
    assert.deepEqual(noisy, []);
  });
});

Deno.test("watch: a server that refuses idle connections but answers checks stays registered, without a reconnect loop", async () => {
  await withBed(lo, async (bed) => {
    // the target drops a connection that has not spoken within 20 ms; the secretary checks every 500 ms
    const { t, s } = await registered(bed, lo.ip(5), { idleCloseMs: 20 });
    const { revision } = await bed.etcd.list("/services/");
    const before = { silent: t.silent, checks: t.requests };
    await waitFor(() => t.silent >= before.silent + 2, "the watch to connect again", EVENT_MS);
    // counted against checks, not time: each dropped connection brings a check at once, so a watch that
    // reconnected without backing off would make about one connection per check; backing off (250 ms doubling),
    // it made five in thirty checks in trials
    await waitFor(() => t.requests >= before.checks + 30, "thirty checks", READY_MS);
    const attempts = t.silent - before.silent;
    const checks = t.requests - before.checks;
    assert.ok(attempts <= checks / 3, `${attempts} watch connections in ${checks} checks: spinning, not backing off`);
    assert.equal((await bed.etcd.list("/services/")).revision, revision, "no etcd write");
    assert.equal(s.stderr.includes("deregistered"), false);
  });
});

Deno.test("watch: a hung target keeps its connection open, and the periodic check still removes it", async () => {
  await withBed(lo, async (bed) => {
    const { t, s, key } = await registered(bed, lo.ip(6));
    await t.setMode("hang");
    await waitFor(async () => !(await bed.present(key)), "deregistered while hung", EVENT_MS);
    await s.waitForLog(/deregistered .*reason="no answer within 300ms"/);
  });
});
