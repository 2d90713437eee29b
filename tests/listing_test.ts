/**
 * Listings past grpc's 4 MiB default message size: 10,000 records under one
 * service, each with an exec status at the 4 KiB cap (about 42 MB in all),
 * through `registry ls` and `registry watch` run as processes, and a watch
 * whose first answer carries all of them at once. Then the paging contract of
 * `Etcd.list()` with one key a page: every page is read at the first page's
 * revision, and a compaction between pages starts the listing over.
 *
 * Records are written through etcd's own HTTP gateway (`/v3/kv/txn`), not
 * through the client under test. Everything listens on this file's own
 * loopback addresses (testbed's LOOPBACK_BLOCKS).
 */
import assert from "node:assert/strict";
import { request } from "node:http";
import { Etcd } from "../lib/etcd.ts";
import { encodeRecord, instanceKey } from "../lib/record.ts";
import {
  EtcdGateway,
  EVENT_MS,
  loopback,
  runScript,
  Script,
  SOURCE_FLAGS,
  TEST_CALL_TIMEOUT_MS,
  waitFor,
} from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);
const RECORDS = 10_000;
/** etcd's default `--max-txn-ops`. */
const OPS_PER_TXN = 128;
const PARALLEL_TXNS = 8;

// ---------------------------------------------------------------------------
// helpers

/** POSTs JSON over plain HTTP, with no proxy and no kept-alive connection; resolves with the parsed answer. */
function postJson(url: string, body: unknown): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      { method: "POST", agent: false, headers: { "content-type": "application/json" } },
      (res) => {
        const chunks: Uint8Array[] = [];
        res.on("data", (chunk: Uint8Array) => chunks.push(chunk));
        res.on("error", reject);
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString();
          if (res.statusCode === 200) resolve(JSON.parse(text));
          else reject(new Error(`POST ${url}: ${res.statusCode} ${text}`));
        });
      },
    );
    req.setTimeout(10_000, () => req.destroy(new Error(`POST ${url}: no answer in 10 s`)));
    req.on("error", reject);
    req.end(JSON.stringify(body));
  });
}

/** GETs a text over plain HTTP, as postJson does. */
function getText(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false }, (res) => {
      const chunks: Uint8Array[] = [];
      res.on("data", (chunk: Uint8Array) => chunks.push(chunk));
      res.on("error", reject);
      res.on("end", () => resolve(Buffer.concat(chunks).toString()));
    });
    req.setTimeout(10_000, () => req.destroy(new Error(`GET ${url}: no answer in 10 s`)));
    req.on("error", reject);
    req.end();
  });
}

const base64 = (text: string) => Buffer.from(text).toString("base64");

/** Puts every pair in one transaction through etcd's HTTP gateway; returns the transaction's revision. */
async function putTxn(endpoint: string, pairs: { key: string; value: string }[]): Promise<bigint> {
  const res = await postJson(`${endpoint}/v3/kv/txn`, {
    success: pairs.map(({ key, value }) => ({ request_put: { key: base64(key), value: base64(value) } })),
  });
  return BigInt((res.header as { revision: string }).revision);
}

/** Puts every pair, OPS_PER_TXN to a transaction, PARALLEL_TXNS transactions at a time. */
async function putAll(endpoint: string, pairs: { key: string; value: string }[]): Promise<void> {
  const batches: { key: string; value: string }[][] = [];
  for (let i = 0; i < pairs.length; i += OPS_PER_TXN) batches.push(pairs.slice(i, i + OPS_PER_TXN));
  let next = 0;
  const worker = async () => {
    while (next < batches.length) await putTxn(endpoint, batches[next++]);
  };
  await Promise.all(Array.from({ length: PARALLEL_TXNS }, worker));
}

/** A counter from etcd's /metrics: the gRPC server's Range calls started, or those answered with `code`. */
async function rangeCalls(endpoint: string, code?: string): Promise<number> {
  const text = await getText(`${endpoint}/metrics`);
  const name = code === undefined
    ? `grpc_server_started_total{grpc_method="Range",`
    : `grpc_server_handled_total{grpc_code="${code}",grpc_method="Range",`;
  const line = text.split("\n").find((l) => l.startsWith(name));
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(" ") + 1));
}

/** An exec check's status whose JSON is exactly `bytes` long: a little data and a long note. */
function fullStatus(n: number, bytes = 4000): Record<string, unknown> {
  const status: Record<string, unknown> = { ok: true, load: (n % 100) / 100, queue: n % 37, note: "" };
  status.note = "n".repeat(bytes - JSON.stringify(status).length);
  return status;
}

/** The n-th big record, its address spread over 10.0.x.y unless given. */
function bigRecord(n: number, ip = `10.0.${n >> 8}.${n & 255}`): { key: string; value: string } {
  return {
    key: instanceKey("/services", "big", ip, 8080),
    value: encodeRecord({
      host: `host-${n % 100}`,
      ipv4_addr: ip,
      port: 8080,
      service: "big",
      registered_at: new Date().toISOString(),
      meta: { zone: `z${n % 3}` },
      status: fullStatus(n),
    }),
  };
}

/** How many lines `text` has (each ended by "\n"), without splitting a 40 MB string into an array. */
function countLines(text: string): number {
  let lines = 0;
  for (let at = text.indexOf("\n"); at !== -1; at = text.indexOf("\n", at + 1)) lines++;
  return lines;
}

async function withCluster(fn: (endpoint: string) => Promise<void>): Promise<void> {
  const cluster = await lo.etcd(1);
  try {
    await cluster.start();
    await fn(cluster.endpoints[0]);
  } finally {
    await cluster.stop();
  }
}

/** 42 MB through a process started from source: a minute, for a loaded machine. */
const FLAGS = { flags: SOURCE_FLAGS, timeoutMs: 60_000 };

// ---------------------------------------------------------------------------
// 10,000 records of 4 KB each

Deno.test("registry ls and watch list 10,000 records with a full-size status (42 MB, past grpc's 4 MiB)", async (t) => {
  await withCluster(async (endpoint) => {
    const flag = `--endpoints=${endpoint}`;
    const records = Array.from({ length: RECORDS }, (_, n) => bigRecord(n));
    assert.ok(records.every((r) => JSON.stringify(JSON.parse(r.value).status).length === 4000));
    const before = await postJson(`${endpoint}/v3/kv/range`, { key: base64("\0"), count_only: true });
    const firstRevision = String(BigInt((before.header as { revision: string }).revision) + 1n);
    await putAll(endpoint, records);
    const keys = records.map((r) => r.key).sort();
    const total = records.reduce((sum, r) => sum + r.key.length + r.value.length, 0);
    assert.ok(total > 40_000_000, `only ${total} bytes`);

    await t.step("registry ls --json exits 0 and prints all 10,000, with their keys", async () => {
      const ls = await runScript("registry.ts", ["ls", "big", "--json", flag], FLAGS);
      assert.equal(ls.code, 0, ls.stderr.slice(0, 2000));
      const parsed = JSON.parse(ls.stdout) as { key: string; status: Record<string, unknown> }[];
      assert.equal(parsed.length, RECORDS);
      assert.deepEqual(parsed.map((e) => e.key).sort(), keys);
      assert.equal(JSON.stringify(parsed[0].status).length, 4000);
    });

    await t.step("registry ls (the table) exits 0 with a header and 10,000 rows", async () => {
      const ls = await runScript("registry.ts", ["ls", "big", flag], FLAGS);
      assert.equal(ls.code, 0, ls.stderr.slice(0, 2000));
      assert.equal(ls.stdout.trimEnd().split("\n").length, RECORDS + 1);
    });

    await t.step("registry watch --json lists all 10,000, then shows a put and a delete, never waiting", async () => {
      const watch = Script.deno("registry.ts", ["watch", "big", "--json", flag], { flags: SOURCE_FLAGS });
      const etcd = new Etcd({ endpoints: [endpoint] });
      try {
        await waitFor(
          () => countLines(watch.stdout) >= RECORDS || watch.stderr.includes("waiting for etcd"),
          "the first listing",
          FLAGS.timeoutMs,
          200,
        );
        assert.doesNotMatch(watch.stderr, /waiting for etcd/);
        const listed = watch.stdout.trimEnd().split("\n").map((l) => JSON.parse(l) as { change: string; key: string });
        assert.ok(listed.every((l) => l.change === "registered"));
        assert.deepEqual(listed.map((l) => l.key).sort(), keys);

        const added = bigRecord(RECORDS, "10.1.0.1");
        await etcd.putIfAbsent(added.key, added.value, "0");
        const gone = records[1234].key;
        assert.ok(await etcd.deleteIfLease(gone, "0"));
        await waitFor(() => countLines(watch.stdout) >= RECORDS + 2, "a put and a delete", EVENT_MS);
        const changes = watch.stdout.trimEnd().split("\n").slice(RECORDS).map((l) => JSON.parse(l));
        assert.deepEqual(changes.map((c) => [c.change, c.key]), [["registered", added.key], ["gone", gone]]);
        assert.doesNotMatch(watch.stderr, /waiting for etcd/);
      } finally {
        etcd.close();
        await watch.stop("SIGTERM");
      }
      assert.equal((await watch.status).code, 0, watch.stderr.slice(0, 2000));
    });

    await t.step("a watch from before the puts gets all 10,000 in its first answer (one 42 MB message)", async () => {
      const etcd = new Etcd({ endpoints: [endpoint] });
      const seen = new Set<string>();
      const handle = await etcd.watch("/services/big/", firstRevision, (event) => {
        if (event.type === "put") seen.add(event.key);
      });
      let broken: Error | undefined;
      handle.done.then((err) => (broken = err));
      try {
        await waitFor(() => seen.size >= RECORDS || broken, "10,000 put events", FLAGS.timeoutMs);
        assert.ok(!broken, `the watch broke: ${broken?.message}`);
        await handle.probe(); // and the stream is still alive
      } finally {
        handle.cancel();
        etcd.close();
      }
    });
  });
});

// ---------------------------------------------------------------------------
// Paging: one snapshot

const KEYS = 300;

function generation(gen: number): { key: string; value: string }[] {
  return Array.from({ length: KEYS }, (_, i) => ({
    key: `/paging/${String(i).padStart(4, "0")}`,
    value: `gen ${gen}`,
  }));
}

/** Starts `etcd.list()` and waits until it has read a few pages (so the rest is still to come). */
async function listStarted(endpoint: string, etcd: Etcd) {
  const startedBefore = await rangeCalls(endpoint);
  let settled = false;
  const listing = etcd.list("/paging/").finally(() => (settled = true));
  await waitFor(async () => (await rangeCalls(endpoint)) >= startedBefore + 3, "the listing's third page", EVENT_MS, 5);
  return { listing, settled: () => settled };
}

Deno.test("list() reads every page at the first page's revision: writes between pages do not show", async () => {
  await withCluster(async (endpoint) => {
    const written = await putTxn(endpoint, generation(1).slice(0, 100));
    await putTxn(endpoint, generation(1).slice(100, 200));
    const gen1 = await putTxn(endpoint, generation(1).slice(200));
    const etcd = new Etcd({ endpoints: [endpoint], listPageSize: 1 });
    try {
      const { listing, settled } = await listStarted(endpoint, etcd);
      await putTxn(endpoint, generation(2).slice(0, 100));
      await putTxn(endpoint, generation(2).slice(100, 200));
      await putTxn(endpoint, generation(2).slice(200));
      assert.ok(!settled(), "the listing ended before the second generation was written: make it longer");
      const { values, revision } = await listing;
      assert.equal(BigInt(revision), gen1);
      assert.deepEqual(values.map((v) => v.key), generation(1).map((p) => p.key));
      assert.ok(values.every((v) => v.value === "gen 1"), "a page saw a later write");
      assert.ok(values.every((v) => BigInt(v.modRevision) >= written && BigInt(v.modRevision) <= gen1));
    } finally {
      etcd.close();
    }
  });
});

Deno.test("list() starts over at the current revision when its revision is compacted between pages", async () => {
  await withCluster(async (endpoint) => {
    for (let i = 0; i < KEYS; i += 100) await putTxn(endpoint, generation(1).slice(i, i + 100));
    const etcd = new Etcd({ endpoints: [endpoint], listPageSize: 1 });
    const other = new EtcdGateway([endpoint], TEST_CALL_TIMEOUT_MS);
    try {
      const compactedBefore = await rangeCalls(endpoint, "OutOfRange");
      const { listing, settled } = await listStarted(endpoint, etcd);
      let gen2 = 0n;
      for (let i = 0; i < KEYS; i += 100) gen2 = await putTxn(endpoint, generation(2).slice(i, i + 100));
      await other.compact(String(gen2));
      assert.ok(!settled(), "the listing ended before the compaction: make it longer");
      const { values, revision } = await listing;
      assert.ok(BigInt(revision) >= gen2, `listed at ${revision}, before the compaction at ${gen2}`);
      assert.deepEqual(values.map((v) => v.key), generation(2).map((p) => p.key));
      assert.ok(values.every((v) => v.value === "gen 2"), "the listing mixed two revisions");
      assert.equal(await rangeCalls(endpoint, "OutOfRange"), compactedBefore + 1, "no page met the compaction");
    } finally {
      etcd.close();
    }
  });
});
