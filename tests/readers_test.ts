/**
 * Every reader survives any value etcd can hold, under both runtimes: the
 * bundle under node and the source under deno read one etcd holding a good
 * record beside hostile ones (a `meta` 100,000 levels deep, a `status` deep
 * enough to fill 1.5 MB, a 200 KB string, invalid UTF-8 in a value and in a
 * key, a value that is no text at all). `ls`, `ls --json`, `get`,
 * `watch --json` and `render --once` exit 0 and show the good record; the
 * deep parts are shown as "(too deep)".
 *
 * On the code before this file, under node, `ls` and `get` exited 1 and
 * `watch` waited forever ("Maximum call stack size exceeded", taken for an
 * etcd failure); under deno the 100,000 levels were printed whole.
 */
import assert from "node:assert/strict";
import { request } from "node:http";
import { RECORD_DEPTH } from "../lib/record.ts";
import { JSON_DEPTH, TOO_DEEP } from "../lib/text.ts";
import { bundles, EVENT_MS, loopback, READY_MS, Script, SOURCE_FLAGS, waitFor } from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);

const bytes = (text: string) => new TextEncoder().encode(text);

/** Puts raw bytes through etcd's JSON gateway (no proxy, a connection of its own): what no string can carry. */
function putBytes(endpoint: string, key: Uint8Array, value: Uint8Array): Promise<void> {
  const body = JSON.stringify({
    key: Buffer.from(key).toString("base64"),
    value: Buffer.from(value).toString("base64"),
  });
  return new Promise((resolve, reject) => {
    const req = request(`${endpoint}/v3/kv/put`, { agent: false, method: "POST" }, (res) => {
      res.resume();
      res.on("end", () => (res.statusCode === 200 ? resolve() : reject(new Error(`put: ${res.statusCode}`))));
    });
    req.setTimeout(10_000, () => req.destroy(new Error("put: no answer in 10 s")));
    req.on("error", reject);
    req.end(body);
  });
}

const GOOD = { host: "good", ipv4_addr: "10.0.0.1", port: 80, service: "apache", registered_at: "", meta: { z: "a" } };
const nested = (open: string, close: string, levels: number, inner = "") =>
  `${open.repeat(levels)}${inner}${close.repeat(levels)}`;

/** Address to stored bytes under /services/apache/. */
const RECORDS: [string, Uint8Array][] = [
  ["10.0.0.1:80", bytes(JSON.stringify(GOOD))],
  // a C1 control in host: `get` re-prints the value as escaped JSON, so it must stringify it
  [
    "10.0.0.2:80",
    bytes(`{"host":"deep\u0085","ipv4_addr":"10.0.0.2","port":80,"meta":{"a":${nested("[", "]", 1e5)}}}`),
  ],
  // 1.5 MB, under etcd's default 1.5 MiB request limit
  [
    "10.0.0.3:80",
    bytes(`{"host":"big","ipv4_addr":"10.0.0.3","port":80,"status":{"s":${nested('{"a":', "}", 249_990, "1")}}}`),
  ],
  ["10.0.0.4:80", bytes(JSON.stringify({ ...GOOD, host: "h".repeat(200_000), ipv4_addr: "10.0.0.4" }))],
  [
    "10.0.0.5:80",
    new Uint8Array([...bytes('{"ipv4_addr":"10.0.0.5","port":80,"host":"'), 0xff, 0xc0, 0x80, 0x22, 0x7d]),
  ],
  ["10.0.0.6:80", new Uint8Array([0xff, 0xfe, 0x00, 0x9b])],
];
/** A key whose address is not text: not an instance key. */
const BAD_KEY = new Uint8Array([...bytes("/services/apache/10.0.0.7"), 0xff, ...bytes(":80")]);

/** The nesting depth of JSON data, counted without recursion. */
function depthOf(value: unknown): number {
  let deepest = 0;
  const stack: [unknown, number][] = [[value, 1]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (typeof v !== "object" || v === null) continue;
    deepest = Math.max(deepest, depth);
    for (const child of Object.values(v)) stack.push([child, depth + 1]);
  }
  return deepest;
}

/** How each runtime runs the registry: the bundle under node, the source under deno. */
async function runtimes(): Promise<[string, (args: string[]) => Script][]> {
  const bundle = `${await bundles()}/registry.mjs`;
  // render reads a template and writes a file of this test's: read and write anywhere
  const denoFlags = [...SOURCE_FLAGS.filter((f) => !f.startsWith("--allow-read")), "--allow-read", "--allow-write"];
  return [
    ["node bundle", (args) => new Script("node", [bundle, ...args])],
    ["deno source", (args) => Script.deno("registry.ts", args, { flags: denoFlags })],
  ];
}

async function run(start: (args: string[]) => Script, args: string[]) {
  const p = start(args);
  const status = await p.finished(READY_MS);
  return { code: status.code, stdout: p.stdout, stderr: p.stderr };
}

Deno.test("ls, get, watch and render, bundle under node and source under deno: hostile values beside a good one", async () => {
  const cluster = await lo.etcd(1);
  await cluster.start();
  const endpoint = cluster.endpoints[0];
  const dir = await Deno.makeTempDir({ prefix: "secretary-readers-" });
  const flag = `--endpoints=${endpoint}`;
  try {
    for (const [address, value] of RECORDS) await putBytes(endpoint, bytes(`/services/apache/${address}`), value);
    await putBytes(endpoint, BAD_KEY, bytes(JSON.stringify(GOOD)));
    await Deno.writeTextFile(`${dir}/t.mustache`, "{{#instances}}server {{address}};\n{{/instances}}");

    for (const [runtime, start] of await runtimes()) {
      const ls = await run(start, ["ls", flag]);
      assert.equal(ls.code, 0, `${runtime} ls: ${ls.stderr}`);
      const rows = ls.stdout.trimEnd().split("\n");
      assert.equal(rows.length, RECORDS.length + 2, `${runtime} ls:\n${ls.stdout.slice(0, 3000)}`);
      assert.match(rows[1], /^apache +10\.0\.0\.1:80 +good +- +- +z=a$/, runtime);
      assert.match(rows[2], /^apache +10\.0\.0\.2:80 +deep\\u0085 +- +- +a=\[+/, runtime);
      assert.match(rows[3], /^apache +10\.0\.0\.3:80 +big +- +s=\{"a":/, runtime);
      assert.match(rows[5], /^apache +10\.0\.0\.5:80 +\ufffd\ufffd\ufffd /, runtime);
      assert.match(rows[6], /^apache +10\.0\.0\.6:80 .*\(not a record: "\ufffd\ufffd\\u0000\ufffd"\)$/, runtime);
      assert.match(rows[7], /\(not an instance key: "\/services\/apache\/10\.0\.0\.7\ufffd:80"\)$/, runtime);

      const json = await run(start, ["ls", "--json", flag]);
      assert.equal(json.code, 0, `${runtime} ls --json: ${json.stderr}`);
      const listing = JSON.parse(json.stdout);
      assert.equal(listing.length, RECORDS.length + 1, runtime);
      assert.deepEqual(listing[0], { key: "/services/apache/10.0.0.1:80", ...GOOD }, runtime);
      assert.equal(listing[1].meta.a.flat(RECORD_DEPTH)[0], TOO_DEEP, runtime);
      assert.ok(depthOf(listing) <= RECORD_DEPTH + 1, `${runtime}: ${depthOf(listing)} levels`);
      assert.equal(listing[1].host, "deep\u0085", runtime);
      assert.equal(listing[3].host.length, 200_000, runtime);
      assert.equal(listing[4].host, "\ufffd\ufffd\ufffd", runtime);

      const deep = await run(start, ["get", "apache", "10.0.0.2:80", flag]);
      assert.equal(deep.code, 0, `${runtime} get: ${deep.stderr}`);
      const got = JSON.parse(deep.stdout);
      assert.equal(got.host, "deep\u0085");
      assert.ok(depthOf(got) <= JSON_DEPTH, `${runtime} get: ${depthOf(got)} levels`);
      assert.match(deep.stdout, /"deep\\u0085"/, `${runtime} get: the control character is shown raw`);
      const good = await run(start, ["get", "apache", "10.0.0.1:80", flag]);
      assert.equal(good.code, 0, `${runtime} get: ${good.stderr}`);
      assert.deepEqual(JSON.parse(good.stdout), GOOD, runtime);

      const out = `${dir}/${runtime.replace(" ", "-")}.conf`;
      const render = await run(start, [
        "render",
        "apache",
        "--template",
        `${dir}/t.mustache`,
        "--out",
        out,
        "--once",
        flag,
      ]);
      assert.equal(render.code, 0, `${runtime} render --once: ${render.stderr}`);
      assert.match(await Deno.readTextFile(out), /^server 10\.0\.0\.1:80;$/m, runtime);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
    await cluster.stop();
  }
});

Deno.test("watch --json, bundle under node and source under deno: lists hostile values, then takes a deep one as an event and carries on", async () => {
  const cluster = await lo.etcd(1);
  await cluster.start();
  const endpoint = cluster.endpoints[0];
  const procs: Script[] = [];
  try {
    for (const [address, value] of RECORDS) await putBytes(endpoint, bytes(`/services/apache/${address}`), value);
    for (const [i, [runtime, start]] of (await runtimes()).entries()) {
      const watch = start(["watch", "apache", "--json", `--endpoints=${endpoint}`]);
      procs.push(watch);
      // whole lines only: the last may be half written
      const lines = () => watch.stdout.split("\n").slice(0, -1).map((l) => JSON.parse(l));
      const seen = (address: string) => lines().some((l) => l.key === `/services/apache/${address}`);
      await waitFor(
        () => RECORDS.every(([address]) => seen(address)),
        () => `${runtime} listing:\n${watch.stderr}`,
        READY_MS,
      );
      const listed = lines();
      assert.deepEqual(listed[0], { change: "registered", key: "/services/apache/10.0.0.1:80", ...GOOD }, runtime);
      assert.equal(listed[1].meta.a.flat(RECORD_DEPTH)[0], TOO_DEEP, runtime);
      // a deep record as an event, then a good one: the good one shows the watch read past the deep one
      // (each runtime its own addresses: the next one lists these)
      const [deepIp, afterIp] = [`10.0.${i + 1}.8`, `10.0.${i + 1}.9`];
      const value = `{"ipv4_addr":"${deepIp}","port":80,"status":{"s":${nested("[", "]", 1e5)}}}`;
      await putBytes(endpoint, bytes(`/services/apache/${deepIp}:80`), bytes(value));
      const after = JSON.stringify({ ...GOOD, host: "after", ipv4_addr: afterIp });
      await putBytes(endpoint, bytes(`/services/apache/${afterIp}:80`), bytes(after));
      await waitFor(
        () => seen(`${afterIp}:80`),
        () => `${runtime} the event after the deep one:\n${watch.stderr}`,
        EVENT_MS,
      );
      const deep = lines().find((l) => l.key === `/services/apache/${deepIp}:80`);
      assert.ok(deep, runtime);
      assert.equal(deep.status.s.flat(RECORD_DEPTH)[0], TOO_DEEP, runtime);
      assert.equal(lines().at(-1).host, "after", runtime);
      // (a slow answer on a loaded machine may make it wait and list again: that is no failure)
      assert.doesNotMatch(watch.stderr, /call stack|RangeError/, runtime);
      watch.kill("SIGTERM");
      assert.equal((await watch.finished()).code, 0, `${runtime}: ${watch.stderr}`);
    }
  } finally {
    for (const p of procs) await p.stop();
    await cluster.stop();
  }
});
