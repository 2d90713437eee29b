/**
 * A failure the secretary cannot recover from while it runs ends it as one
 * log line and exit status 1 (systemd restarts it), never as an unhandled
 * rejection with a stack trace.
 */
import assert from "node:assert/strict";
import { DEFAULT_PREFIX, instanceKey } from "../lib/record.ts";
import { loopback, Script, SOURCE_FLAGS, TestServer, waitFor } from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);

Deno.test("a maintenance file that can no longer be looked for (a symlink loop) ends the secretary: one line, exit 1, record removed", async () => {
  const cluster = await lo.etcd();
  await cluster.start();
  const etcd = cluster.client();
  const server = await TestServer.start(lo.ip(1));
  const dir = await Deno.makeTempDir({ prefix: "secretary-failure-" });
  const key = instanceKey(DEFAULT_PREFIX, "apache", server.host, server.port);
  await Deno.mkdir(`${dir}/real`);
  await Deno.symlink(`${dir}/real`, `${dir}/link`);
  const secretary = Script.deno("secretary.ts", [
    String(server.port),
    `--ip=${server.host}`,
    "--hostname=h",
    `--endpoints=${cluster.endpoints[0]}`,
    "--interval=500ms",
    "--timeout=300ms",
    "--ttl=5s",
    `--maintenance-file=${dir}/link/maintenance`,
  ], { flags: [...SOURCE_FLAGS, `--allow-read=/etc/environment,node_modules,${dir}`] });
  try {
    await secretary.waitForLog(/^registered /, 30_000);
    // root reads any folder whatever its mode, but not through a symlink loop: stat() fails with ELOOP
    await Deno.remove(`${dir}/link`);
    await Deno.symlink(`${dir}/link`, `${dir}/link`);
    const status = await secretary.finished(30_000);
    assert.equal(status.code, 1, secretary.stderr);
    const last = secretary.stderr.trimEnd().split("\n").at(-1)!;
    assert.match(last, /^failed key=\S+ reason=".*ELOOP.*" record=removed$/, secretary.stderr);
    assert.doesNotMatch(secretary.stderr, /^\s+at /m, "a stack trace");
    assert.doesNotMatch(secretary.stderr, /Uncaught|unhandled/i);
    await waitFor(async () => (await etcd.get(key)) === undefined, "the record removed", 10_000);
  } finally {
    await secretary.stop();
    await server.close();
    etcd.close();
    await cluster.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
