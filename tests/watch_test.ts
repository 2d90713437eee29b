/**
 * The connection watch against a real etcd: a target process killed with
 * SIGKILL, servers that drop or refuse idle connections, a hung target, and
 * --no-watch-connection. The interval is long (a minute, or 5 s) where the
 * point is that removal does or does not wait for the next check; how soon a
 * removal comes is a benchmark's figure (bench/killed.ts).
 */
import assert from "node:assert/strict";
import {
  type Address,
  type Bed,
  delay,
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

/** Kills the server with SIGKILL just after a check, so the next periodic check is a whole interval away. */
async function killJustAfterACheck(server: { proc: Script; requests(): number }): Promise<number> {
  const seen = server.requests();
  await waitFor(() => server.requests() > seen, "a check", EVENT_MS);
  server.proc.kill("SIGKILL");
  return Date.now();
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

Deno.test("watch off (--no-watch-connection): no idle connection, and a killed target goes at the next check as before", async () => {
  await withBed(lo, async (bed) => {
    const t = await testServer(bed, lo.ip(2));
    const quiet = bed.secretary(t, ["--no-watch-connection", "--service=quiet"]);
    await quiet.waitForLog(/^registered key=/, READY_MS);
    await delay(1500);
    assert.equal(t.connections, t.requests, "every connection was a check");
    await quiet.stop();

    const server = await serverProcess(bed, lo.ip(3));
    const s = bed.secretary(server.address, [...SLOW, "--no-watch-connection"]);
    const key = bed.key(server.address);
    await s.waitForLog(/^registered key=/, READY_MS);
    const killed = await killJustAfterACheck(server);
    // the next check is an interval (5 s) after the last: a lower bound any machine keeps
    await delay(1500 - (Date.now() - killed));
    assert.equal(
      await bed.present(key),
      true,
      "still listed 1.5 s after the kill: nothing looks before the next check",
    );
    await waitFor(async () => !(await bed.present(key)), "deregistered at the next check", EVENT_MS);
  });
});

Deno.test("watch: a server that drops idle connections every second costs no flap and no write over a minute", async () => {
  await withBed(lo, async (bed) => {
    const { t, s, key } = await registered(bed, lo.ip(4), {
      extra: ["--interval=2s", "--timeout=1s"],
      idleCloseMs: 1000,
    });
    const { revision } = await bed.etcd.list("/services/");
    const stored = await bed.etcd.get(key);
    await delay(60_000);
    assert.equal((await bed.etcd.list("/services/")).revision, revision, "no etcd write");
    assert.equal((await bed.etcd.get(key))?.modRevision, stored?.modRevision);
    const noisy = s.stderr.split("\n").filter((l) =>
      /^(deregistered|registered .*again=true|check failed|lease lost|etcd|record)/.test(l)
    );
    assert.deepEqual(noisy, []);
    assert.ok(t.silent >= 3, `the watch connected (${t.silent} idle connections dropped)`);
  });
});

Deno.test("watch: a server that refuses idle connections but answers checks stays registered, without a reconnect loop", async () => {
  await withBed(lo, async (bed) => {
    // the target drops a connection that has not spoken within 20 ms; the secretary checks every 500 ms
    const { t, s } = await registered(bed, lo.ip(5), { idleCloseMs: 20 });
    const { revision } = await bed.etcd.list("/services/");
    const before = t.silent;
    await delay(10_000);
    const attempts = t.silent - before;
    assert.equal((await bed.etcd.list("/services/")).revision, revision, "no etcd write");
    assert.ok(attempts >= 2 && attempts <= 10, `${attempts} watch connections in 10 s: backing off, not spinning`);
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
