/**
 * A killed instance out at once, and no faster removal of anything else: a
 * real target process killed with SIGKILL, and one stopped cleanly, each seen
 * gone by an etcd watcher (the record's delete event); checks that say
 * "refused" only when nothing listens; and a target that stops answering
 * without refusing (its held connection dropped, each check then hanging) is
 * removed only after `--fall` checks, as before. The interval is a minute, so
 * a removal comes from the connection watch, never a periodic check. What must
 * not happen is asserted at a later event (the delete, the checks the target
 * counted), never after a sleep; how soon a removal comes is a benchmark's
 * figure (bench/killed.ts). The decision itself is afterCheck()'s table
 * (tests/secretary_unit_test.ts).
 */
import assert from "node:assert/strict";
import { runCheck } from "../lib/checks.ts";
import type { WatchEvent } from "../lib/etcd.ts";
import {
  type Address,
  type Bed,
  currentRevision,
  EVENT_MS,
  freePort,
  loopback,
  READY_MS,
  Script,
  testServer,
  waitFor,
  withBed,
} from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);

/** The secretary's timing here: checks a minute apart, so only the watch can notice a death in time. */
const SLOW = ["--interval=1m", "--timeout=300ms"];

/**
 * An HTTP server in its own process, so that it can die as a process does.
 * `graceful`: on SIGTERM it shuts its server down (closing idle connections)
 * and exits 0.
 */
async function serverProcess(bed: Bed, host: string, graceful = false): Promise<{ address: Address; proc: Script }> {
  const address = { host, port: await freePort(host) };
  const code = `const server = Deno.serve(
      { hostname: "${host}", port: ${address.port}, onListen() { console.log("listening"); } },
      () => new Response("ok"),
    );
    ${graceful ? `Deno.addSignalListener("SIGTERM", async () => { await server.shutdown(); Deno.exit(0); });` : ""}`;
  const proc = new Script(Deno.execPath(), ["eval", code]);
  bed.cleanups.push(() => proc.stop());
  await waitFor(() => proc.stdout.includes("listening") || (!proc.running && "exited"), "server listening", READY_MS);
  if (!proc.running) throw new Error(`server on ${host}:${address.port} exited:\n${proc.stderr}`);
  return { address, proc };
}

/** Watches the services prefix from now on; `deleted()` says whether `key`'s delete has been seen. */
async function watchDeletes(bed: Bed, key: string): Promise<{ deleted(): boolean; events: WatchEvent[] }> {
  const events: WatchEvent[] = [];
  const revision = await currentRevision(bed.etcd);
  const handle = await bed.etcd.watch("/services/", String(BigInt(revision) + 1n), (e) => events.push(e));
  bed.cleanups.push(() => handle.cancel());
  return { events, deleted: () => events.some((e) => e.type === "delete" && e.key === key) };
}

/** Kills or stops a registered target process, and waits for a watcher to see its record deleted. */
async function goneAfter(signal: "SIGKILL" | "SIGTERM", host: string, extra: string[]): Promise<void> {
  await withBed(lo, async (bed) => {
    const server = await serverProcess(bed, host, signal === "SIGTERM");
    const s = bed.secretary(server.address, [...SLOW, ...extra]);
    const key = bed.key(server.address);
    await s.waitForLog(/^registered key=/, READY_MS);
    const watcher = await watchDeletes(bed, key);
    server.proc.kill(signal);
    await waitFor(watcher.deleted, () => `a watcher to see ${key} deleted:\n${s.stderr}`, EVENT_MS);
    const status = await server.proc.status;
    assert.equal(status.code === 0 && !status.signal, signal === "SIGTERM", `${signal}: ${JSON.stringify(status)}`);
    // deleted by the secretary on refused checks (the lease lives on), after the watch connection closed
    // the last check's: refused, or reset if the listener was still closing when it connected
    await s.waitForLog(/^deregistered key=\S+ reason=(ECONNREFUSED|ECONNRESET)$/);
    assert.deepEqual(watcher.events.map((e) => `${e.type} ${e.key}`), [`delete ${key}`]);
    const lines = s.stderr.split("\n");
    const closed = lines.findIndex((l) => /^watch connection closed /.test(l));
    assert.ok(closed !== -1 && closed < lines.findIndex((l) => /^deregistered /.test(l)), s.stderr);
    assert.ok(s.running, "the secretary exited");
  });
}

Deno.test("killed: a target killed with SIGKILL: a watcher sees its record deleted, on refused checks", async () => {
  await goneAfter("SIGKILL", lo.ip(1), []);
});

Deno.test("killed: with --fall 3, a target killed with SIGKILL still goes, on three refused checks", async () => {
  await goneAfter("SIGKILL", lo.ip(2), ["--fall=3"]);
});

Deno.test("killed: a target stopped cleanly (SIGTERM, its server shut down, exit 0): a watcher sees its record deleted", async () => {
  await goneAfter("SIGTERM", lo.ip(3), []);
});

Deno.test("killed: a check says refused when nothing listens; a hang, an HTTP error or a pass never", async () => {
  await withBed(lo, async (bed) => {
    const host = lo.ip(4);
    const nobody = await freePort(host);
    const target = { ip: host, port: nobody, service: "apache", timeoutMs: 300 };
    const http = {
      kind: "http" as const,
      path: "/",
      expectStatus: [200, 399] as [number, number],
      headers: [],
      insecure: false,
    };
    for (const spec of [http, { kind: "tcp" as const }]) {
      const result = await runCheck(spec, target);
      assert.deepEqual(result, { passed: false, reason: "ECONNREFUSED", refused: true }, spec.kind);
    }
    const t = await testServer(bed, host);
    const at = { ...target, port: t.port };
    assert.deepEqual(await runCheck(http, at), { passed: true, reason: "status 200" });
    await t.setMode("error");
    assert.deepEqual(await runCheck(http, at), { passed: false, reason: "status 500" });
    await t.setMode("hang");
    assert.deepEqual(await runCheck(http, at), { passed: false, reason: "no answer within 300ms" });
  });
});

/** Client connections to host:port in the kernel's ESTABLISHED state (/proc/net/tcp), accepted or only queued. */
function established(host: string, port: number): number {
  const ip = host.split(".").map((b) => Number(b).toString(16).padStart(2, "0").toUpperCase()).reverse().join("");
  const remote = `${ip}:${port.toString(16).padStart(4, "0").toUpperCase()}`;
  return Deno.readTextFileSync("/proc/net/tcp").split("\n").slice(1)
    .filter((line) => line.trim().split(/\s+/)[2] === remote && line.trim().split(/\s+/)[3] === "01").length;
}

Deno.test("killed: a check queued on a listener whose process dies is reset, and says refused: nothing answered", async () => {
  await withBed(lo, async (bed) => {
    const host = lo.ip(6);
    const port = await freePort(host);
    // listens and never accepts: a check's connection waits in the kernel's queue, as one does on a dying process
    const code =
      `Deno.listen({ hostname: "${host}", port: ${port} }); console.log("listening"); setInterval(() => {}, 1e6);`;
    const proc = new Script(Deno.execPath(), ["eval", code]);
    bed.cleanups.push(() => proc.stop());
    await waitFor(() => proc.stdout.includes("listening") || (!proc.running && "exited"), "listener", READY_MS);
    const http = {
      kind: "http" as const,
      path: "/",
      expectStatus: [200, 399] as [number, number],
      headers: [],
      insecure: false,
    };
    const check = runCheck(http, { ip: host, port, service: "apache", timeoutMs: EVENT_MS });
    await waitFor(() => established(host, port) > 0, "the check's connection queued", EVENT_MS);
    proc.kill("SIGKILL");
    assert.deepEqual(await check, { passed: false, reason: "ECONNRESET", refused: true });
  });
});

Deno.test("killed: a target that drops the held connection but does not refuse (each check hangs) goes only after --fall checks", async () => {
  await withBed(lo, async (bed) => {
    const t = await testServer(bed, lo.ip(5));
    // the target drops every connection that has not sent a request within a second: the watch's among them
    t.idleCloseMs = 1000;
    const s = bed.secretary(t, [...SLOW, "--fall=3"]);
    const key = bed.key(t);
    await s.waitForLog(/^registered key=/, READY_MS);
    const watcher = await watchDeletes(bed, key);
    // from now on every check hangs (accepted, never answered) and the listener stays: nothing is refused
    const before = t.requests;
    t.mode = "hang";
    let checksAtDelete = -1;
    await waitFor(
      () => {
        if (watcher.deleted() && checksAtDelete < 0) checksAtDelete = t.requests - before;
        return checksAtDelete >= 0;
      },
      () => `a watcher to see ${key} deleted:\n${s.stderr}`,
      EVENT_MS,
    );
    // the watch connection was dropped, and a check ran at once; but a hang is no refusal: fall 3 is three checks
    assert.ok(checksAtDelete >= 3, `deleted after ${checksAtDelete} hung checks:\n${s.stderr}`);
    await s.waitForLog(/^deregistered key=\S+ reason="no answer within 300ms"$/);
    assert.match(s.stderr, /^watch connection closed /m);
    assert.doesNotMatch(s.stderr, /ECONNREFUSED/);
  });
});
