/**
 * The suite's own hygiene: every test file that listens, starts etcd or
 * starts a script that dials takes its addresses from its own loopback block
 * (testbed's LOOPBACK_BLOCKS), so no test can receive another's traffic or
 * take a port another is about to use again. Read from the test files'
 * source: a file that slips out of its block fails here, by name.
 */
import assert from "node:assert/strict";
import { LOOPBACK_BLOCKS, ROOT } from "../testbed/testbed.ts";

/** What, in a test file's source, listens or makes something that dials. */
const LISTENS =
  /\b(EtcdCluster\.create|TestServer\.start|testServer|registered|withBed|Relay\.start|Apache\.start|Deno\.listen|Deno\.serve|createServer|freePort|Script\.deno|runScript|new Script)\(/;

/** Where an address on a line is one to listen on or dial (rather than data, such as a template's placeholder). */
const USES_ADDRESS =
  /\b(start|listen|serve|testServer|registered|freePort|Host)\(|\b(hostname|host|ip): |--(ip|endpoints)=/;

/** The calls that pick an address themselves when given none: 127.0.0.1, shared with every other test. */
const DEFAULTED = [
  /EtcdCluster\.create\((\d*)\)/, // one member on 127.0.0.1
  /\bfreePort\(\)/,
  /\bRelay\.start\([^,()]*\)/, // one argument: the relay on 127.0.0.1
];

async function testFiles(): Promise<{ name: string; source: string }[]> {
  const files = [];
  for await (const entry of Deno.readDir(`${ROOT}tests`)) {
    if (entry.isFile && entry.name.endsWith(".ts")) {
      files.push({ name: entry.name, source: await Deno.readTextFile(`${ROOT}tests/${entry.name}`) });
    }
  }
  return files.sort((a, b) => a.name.localeCompare(b.name));
}

Deno.test("every test file that listens or starts a process takes its addresses from a loopback block of its own", async () => {
  const problems: string[] = [];
  for (const { name, source } of await testFiles()) {
    const block = LOOPBACK_BLOCKS[name];
    const own = new RegExp(`^127\\.${block}\\.`);
    // any block's literal must be the file's own: another's is a clash
    for (const [ip] of source.matchAll(/\b127\.(\d+)\.\d+\.\d+\b/g)) {
      const octet = Number(ip.split(".")[1]);
      const someBlock = Object.values(LOOPBACK_BLOCKS).includes(octet);
      if (someBlock && !own.test(ip)) problems.push(`${name}: ${ip} is in another file's block`);
    }
    if (!LISTENS.test(source)) continue;
    if (block === undefined) problems.push(`${name}: no block in LOOPBACK_BLOCKS (testbed/loopback.ts)`);
    if (!source.includes("loopback(import.meta.url)")) problems.push(`${name}: never calls loopback(import.meta.url)`);
    for (const pattern of DEFAULTED) {
      const found = pattern.exec(source);
      if (found) problems.push(`${name}: ${found[0]} uses the shared 127.0.0.1`);
    }
    // the shared range (the defaults, the demo, the benchmarks) is nobody's to listen on or dial in a test
    for (const [i, line] of source.split("\n").entries()) {
      const shared = /\b127\.0\.\d+\.\d+\b/.exec(line);
      if (shared && USES_ADDRESS.test(line)) problems.push(`${name}:${i + 1}: ${shared[0]} is a shared address`);
    }
  }
  assert.deepEqual(problems, []);
});

Deno.test("LOOPBACK_BLOCKS names only test files that exist", async () => {
  const names = new Set((await testFiles()).map((f) => f.name));
  assert.deepEqual(Object.keys(LOOPBACK_BLOCKS).filter((name) => !names.has(name)), []);
});
