/**
 * A three-member etcd cluster on loopback losing members: the record of a
 * healthy instance stays listed (sampled every 100 ms), or where etcd itself
 * drops it, is back within a TTL of a quorum answering (how soon is a
 * benchmark's figure); `registry watch` keeps reporting changes throughout.
 *
 * The test's own reads and writes go through etcd's JSON gateway over
 * HTTP/1.1 (EtcdGateway): members are stopped with SIGTERM too, which sends
 * HTTP/2 clients a GOAWAY, and Deno can abort on one (denoland/deno#36788);
 * in this process that would end the whole suite. The secretary and the
 * watch keep their gRPC clients: if one of them aborts, the test says so.
 */
import assert from "node:assert/strict";
import { encodeRecord, instanceKey } from "../lib/record.ts";
import {
  delay,
  EtcdGateway,
  type EtcdMember,
  EVENT_MS,
  loopback,
  READY_MS,
  Script,
  SOURCE_FLAGS,
  TestServer,
  waitFor,
} from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);

const TTL_MS = 5000;

/** Samples a key every 100 ms; counts the time it was missing while a quorum answered. */
class Sampler {
  missingSince?: number;
  longestMissingMs = 0;
  samples = 0;
  failedReads = 0;
  #running = true;
  #done: Promise<void>;

  constructor(readonly etcd: EtcdGateway, readonly key: string) {
    this.#done = this.#loop();
  }

  async #loop() {
    while (this.#running) {
      const started = Date.now();
      try {
        const present = (await this.etcd.get(this.key)) !== undefined;
        this.samples++;
        if (present && this.missingSince !== undefined) {
          this.longestMissingMs = Math.max(this.longestMissingMs, Date.now() - this.missingSince);
          this.missingSince = undefined;
        } else if (!present && this.missingSince === undefined) this.missingSince = started;
      } catch {
        this.failedReads++; // no quorum: nothing to say about the record
      }
      await delay(Math.max(0, 100 - (Date.now() - started)));
    }
  }

  async stop() {
    this.#running = false;
    await this.#done;
  }
}

Deno.test("three members: killing the member it talks to, the leader, and restarting each in turn keeps the record listed", async () => {
  const cluster = await lo.etcd(3);
  await cluster.start();
  const etcd = new EtcdGateway(cluster.endpoints, 1000);
  const t = await TestServer.start(lo.ip(1));
  const endpoints = `--endpoints=${cluster.endpoints.join(",")}`;
  const secretary = Script.deno("secretary.ts", [
    String(t.port),
    `--ip=${t.host}`,
    "--hostname=h",
    endpoints,
    "--interval=500ms",
    "--timeout=300ms",
    `--ttl=${TTL_MS / 1000}s`,
  ], { flags: SOURCE_FLAGS });
  const watch = Script.deno("registry.ts", ["watch", endpoints], { flags: SOURCE_FLAGS });
  const key = instanceKey("/services", "apache", t.host, t.port);
  let sampler: Sampler | undefined;
  let marks = 0;
  /** Puts a record of another service and waits for the watch to print it: the watch still works. */
  const watchStillReports = async (why: string) => {
    const port = ++marks;
    const mark = instanceKey("/services", "mark", "10.9.9.9", port);
    const lease = await waitFor<string>(
      () => etcd.grantLease(30).catch(() => false),
      "a lease for a mark",
      EVENT_MS,
      200,
    );
    await waitFor(
      () =>
        etcd.put(
          mark,
          encodeRecord({
            host: "mark",
            ipv4_addr: "10.9.9.9",
            port,
            service: "mark",
            registered_at: new Date().toISOString(),
            meta: {},
          }),
          lease,
        ).then(() => true, () => false),
      "a mark put",
      EVENT_MS,
      200,
    );
    await waitFor(
      () => watch.stdout.includes(`+ mark 10.9.9.9:${port} `),
      `the watch to report a put ${why}`,
      EVENT_MS,
    );
  };
  const restart = async (member: EtcdMember, signal: Deno.Signal, downMs: number) => {
    await member.stop(signal);
    await delay(downMs);
    member.start("existing");
    await cluster.waitReady();
  };
  try {
    await waitFor(() => etcd.get(key), "registered", READY_MS);
    await waitFor(() => watch.stdout.includes(`+ apache ${t.host}:${t.port}`), "the watch to list it", READY_MS);
    sampler = new Sampler(etcd, key);

    const talking = await waitFor(
      async () => (await cluster.connectedMembers(secretary.pid))[0],
      "a connection",
      EVENT_MS,
    );
    // down for longer than the TTL: only moving to another member keeps the lease
    await restart(talking, "SIGKILL", 8000);
    await watchStillReports("after the member it talked to was killed");

    await restart(await cluster.leader(), "SIGKILL", 4000);
    await watchStillReports("after the leader was killed");

    for (const member of cluster.members) {
      await restart(member, "SIGTERM", 500);
      await watchStillReports(`after ${member.name} restarted`);
    }
    await delay(1000);
    await sampler.stop();
    if (!secretary.running) {
      assert.fail(`the secretary ${secretary.describeExit(await secretary.status)}:\n${secretary.stderr}`);
    }
    assert.ok(sampler.samples > 80, `only ${sampler.samples} samples (${sampler.failedReads} reads failed)`);
    assert.equal(sampler.missingSince, undefined, "the record is missing at the end");
    assert.ok(sampler.longestMissingMs <= TTL_MS, `the record was missing for ${sampler.longestMissingMs} ms`);
  } catch (err) {
    // whatever failed, say whether the secretary had died, and how (a signal such as SIGABRT is the runtime's)
    if (secretary.running || !(err instanceof Error) || err.message.startsWith("the secretary")) throw err;
    const died = `the secretary ${secretary.describeExit(await secretary.status)}:\n${secretary.stderr}`;
    throw new Error(`${err.message}\n(meanwhile ${died})`, { cause: err });
  } finally {
    await sampler?.stop();
    await secretary.stop("SIGTERM");
    await watch.stop("SIGTERM");
    await t.close();
    await cluster.stop();
  }
  assert.doesNotMatch(secretary.stderr, /^deregistered/m, secretary.stderr);
});
