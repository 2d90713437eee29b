/**
 * The demo (`deno task demo`): a throwaway etcd on loopback, a small HTTP
 * service on 127.0.0.2:8080, a secretary for it and a `registry watch`; then
 * `registry ls`, the service stopped, and its record gone, printed as it
 * happens. Everything it starts is stopped, and its data removed, at the end.
 *
 * @module
 */
import { EtcdCluster, runScript, Script, SOURCE_FLAGS, TestServer, waitFor } from "./testbed/testbed.ts";

const started = Date.now();
const stamp = () => `[${((Date.now() - started) / 1000).toFixed(2).padStart(6)}s]`;
const say = (text: string) => console.log(`${stamp()} ${text}`);

/** Prints each new line a process writes, prefixed with its name. */
function follow(script: Script, name: string, stream: "stdout" | "stderr"): () => void {
  let seen = 0;
  const timer = setInterval(() => {
    const lines = script[stream].split("\n");
    for (; seen < lines.length - 1; seen++) say(`${name.padEnd(9)}| ${lines[seen]}`);
  }, 20);
  return () => clearInterval(timer);
}

async function main(): Promise<void> {
  say("starting a throwaway etcd on loopback");
  const cluster = await EtcdCluster.create(1);
  const cleanup: (() => Promise<void> | void)[] = [() => cluster.stop()];
  try {
    await cluster.start();
    const endpoints = `--endpoints=${cluster.endpoints[0]}`;
    say(`etcd answers at ${cluster.endpoints[0]}`);

    const service = await TestServer.start("127.0.0.2", 8080);
    cleanup.unshift(() => service.close());
    say("a small HTTP service listens on 127.0.0.2:8080");

    const watch = Script.deno("registry.ts", ["watch", endpoints], { flags: SOURCE_FLAGS });
    cleanup.unshift(() => watch.stop("SIGTERM"), follow(watch, "watch", "stdout"));
    const secretary = Script.deno(
      "secretary.ts",
      ["8080", "--ip=127.0.0.2", "--hostname=demo-host", "--meta=zone=demo", endpoints],
      { flags: SOURCE_FLAGS },
    );
    cleanup.unshift(() => secretary.stop("SIGTERM"), follow(secretary, "secretary", "stderr"));
    say("started: secretary 8080 --ip=127.0.0.2, and registry watch");

    await waitFor(() => secretary.stderr.includes("registered key="), "the secretary to register", 10_000);
    await new Promise((r) => setTimeout(r, 200));
    const ls = await runScript("registry.ts", ["ls", endpoints], { flags: SOURCE_FLAGS });
    say(`$ registry ls\n${ls.stdout.trimEnd()}`);

    say("stopping the HTTP service");
    await service.setMode("closed");
    await waitFor(() => watch.stdout.includes("- apache 127.0.0.2:8080"), "the record to go", 10_000);
    await new Promise((r) => setTimeout(r, 100));
    const after = await runScript("registry.ts", ["ls", endpoints], { flags: SOURCE_FLAGS });
    say(`$ registry ls\n${after.stdout.trimEnd()}`);
    const get = await runScript("registry.ts", ["get", "apache", "127.0.0.2:8080", endpoints], { flags: SOURCE_FLAGS });
    say(`$ registry get apache 127.0.0.2:8080   (exit ${get.code})\n${get.stderr.trimEnd()}`);
  } finally {
    say("cleaning up");
    for (const step of cleanup) await step();
    say("done: etcd, the service, the secretary and the watch are stopped; etcd's data removed");
  }
}

await main();
