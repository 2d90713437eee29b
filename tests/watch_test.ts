/**
 * The connection watch against a real etcd: a target process killed with
 * SIGKILL, servers that drop or refuse idle connections, a hung target, and
 * --no-watch-connection. The interval is long (5 s) where the point is that
 * removal does not wait for the next check.
 */
import assert from "node:assert/strict";
import {
  type Address,
  type Bed,
  delay,
  freePort,
  registered,
  Script,
  testServer,
  waitFor,
  withBed,
} from "../testbed/testbed.ts";

/** An HTTP server in its own process, so that it can die as a process does; it prints a line per request. */
async function serverProcess(bed: Bed, host: string): Promise<{ address: Address; proc: Script; requests(): number }> {
  const address = { host, port: await freePort(host) };
  const code = `Deno.serve({ hostname: "${host}", port: ${address.port}, onListen() { console.log("listening"); } },
    () => { console.log("request"); return new Response("ok"); });`;
  const proc = new Script(Deno.execPath(), ["eval", code]);
  bed.cleanups.push(() => proc.stop());
  await waitFor(() => proc.stdout.includes("listening"), "server listening", 10_000);
  return { address, proc, requests: () => proc.stdout.split("request").length - 1 };
}

/** Kills the server with SIGKILL just after a check, so the next periodic check is a whole interval away. */
async function killJustAfterACheck(server: { proc: Script; requests(): number }): Promise<number> {
  const seen = server.requests();
  await waitFor(() => server.requests() > seen, "a check", 10_000);
  server.proc.kill("SIGKILL");
  return Date.now();
}

const SLOW = ["--interval=5s", "--timeout=1s"];

Deno.test("watch: a target killed with SIGKILL is deregistered well within a second, not at the next check", async () => {
  await withBed(async (bed) => {
    const server = await serverProcess(bed, "127.0.0.12");
    const s = bed.secretary(server.address, SLOW);
    const key = bed.key(server.address);
    await waitFor(() => bed.present(key), "registered", 15_000);
    const killed = await killJustAfterACheck(server);
    await waitFor(async () => !(await bed.present(key)), "deregistered", 1000, 10);
    const took = Date.now() - killed;
    assert.ok(took < 1000, `gone ${took} ms after SIGKILL`);
    await s.waitForLog(/^deregistered key=\S+ reason=ECONNREFUSED$/);
  });
});

Deno.test("watch off (--no-watch-connection): no idle connection, and a killed target goes at the next check as before", async () => {
  await withBed(async (bed) => {
    const t = await testServer(bed, "127.0.0.13");
    const quiet = bed.secretary(t, ["--no-watch-connection", "--service=quiet"]);
    await waitFor(() => bed.present(bed.key(t, "quiet")), "registered", 5000);
    await delay(1500);
    assert.equal(t.connections, t.requests, "every connection was a check");
    await quiet.stop();

    const server = await serverProcess(bed, "127.0.0.13");
    bed.secretary(server.address, [...SLOW, "--no-watch-connection"]);
    const key = bed.key(server.address);
    await waitFor(() => bed.present(key), "registered", 15_000);
    const killed = await killJustAfterACheck(server);
    await delay(1500 - (Date.now() - killed));
    assert.equal(
      await bed.present(key),
      true,
      "still listed 1.5 s after the kill: nothing looks before the next check",
    );
    await waitFor(async () => !(await bed.present(key)), "deregistered at the next check", 6000);
  });
});

Deno.test("watch: a server that drops idle connections every second costs no flap and no write over a minute", async () => {
  await withBed(async (bed) => {
    const { t, s, key } = await registered(bed, "127.0.0.14", {
      extra: ["--interval=2s", "--timeout=1s"],
      idleCloseMs: 1000,
    });
    const { revision } = await bed.etcd.list("/services/");
    const stored = await bed.etcd.get(key);
    await delay(60_000);
    assert.equal((await bed.etcd.list("/services/")).revision, revision, "no etcd write");
    assert.equal((await bed.etcd.get(key))?.modRevision, stored?.modRevision);
    const noisy = s.stderr.split("\n").filter((l) =>
      /^(deregistered|registered again|check failed|lease lost|etcd|record)/.test(l)
    );
    assert.deepEqual(noisy, []);
    assert.ok(t.silent >= 3, `the watch connected (${t.silent} idle connections dropped)`);
  });
});

Deno.test("watch: a server that refuses idle connections but answers checks stays registered, without a reconnect loop", async () => {
  await withBed(async (bed) => {
    // the target drops a connection that has not spoken within 20 ms; the secretary checks every 500 ms
    const { t, s } = await registered(bed, "127.0.0.15", { idleCloseMs: 20 });
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
  await withBed(async (bed) => {
    const { t, s, key } = await registered(bed, "127.0.0.16");
    await t.setMode("hang");
    await waitFor(async () => !(await bed.present(key)), "deregistered while hung", 4000);
    await s.waitForLog(/deregistered .*reason="no answer within 300ms"/);
  });
});
