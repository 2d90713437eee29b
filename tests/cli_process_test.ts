/**
 * Both scripts run as processes: bad input gets one line on stderr naming the
 * value, exit status 2, and nothing written to etcd; --help exits 0.
 */
import assert from "node:assert/strict";
import { EtcdCluster, runScript, SOURCE_FLAGS } from "../lib/testbed.ts";

/** Each bad command line, and the value its error line must name. */
const BAD_SECRETARY_ARGS: [string[], string][] = [
  [["0"], '"0"'],
  [["70000"], '"70000"'],
  [["80a"], '"80a"'],
  [["8080", "--bogus"], "'--bogus'"],
  [["8080", "--interval=1s", "--timeout=1s"], '--timeout "1s"'],
  [["8080", "--timeout=3s"], '--timeout "3s"'],
  [["8080", "--ttl=4s"], '--ttl "4s"'],
  [["8080", "--service=a/b"], '"a/b"'],
  [["8080", "--ip=300.1.1.1"], '"300.1.1.1"'],
  [["8080", "--endpoints=not a url"], '"not a url"'],
  [["8080", "--interval=fast"], '--interval "fast"'],
  [["8080", "--check=ping"], '--check "ping"'],
  [[], "<port>"],
];

Deno.test("secretary: every bad input exits 2 with one line naming the value, and writes nothing", async () => {
  const cluster = await EtcdCluster.create(1);
  await cluster.start();
  const etcd = cluster.client();
  try {
    const defaults = [`--endpoints=${cluster.endpoints[0]}`, "--ip=127.0.0.2", "--hostname=h"];
    const runs = BAD_SECRETARY_ARGS.map(([args, named]) =>
      // flags given later win, so each case's own value overrides the defaults
      runScript("secretary.ts", [...defaults, ...args], { flags: SOURCE_FLAGS }).then((result) => ({
        args,
        named,
        result,
      }))
    );
    for (const { args, named, result } of await Promise.all(runs)) {
      assert.equal(result.code, 2, `${args.join(" ")}: ${result.stderr}`);
      const lines = result.stderr.trimEnd().split("\n");
      assert.equal(lines.length, 1, `${args.join(" ")} printed ${lines.length} lines:\n${result.stderr}`);
      assert.match(lines[0], /^secretary: /);
      assert.ok(lines[0].includes(named), `${lines[0]} names ${named}`);
      assert.equal(result.stdout, "");
    }
    assert.deepEqual((await etcd.list("/")).values, [], "a bad input wrote to etcd");
    assert.equal(await etcd.revision(), "1", "the revision moved: something was written");
  } finally {
    etcd.close();
    await cluster.stop();
  }
});

Deno.test("secretary: no IP anywhere is a usage error, not a crash", async () => {
  const result = await runScript("secretary.ts", ["8080", "--hostname=h"], {
    flags: SOURCE_FLAGS,
    env: { COREOS_PUBLIC_IPV4: "" },
  });
  assert.equal(result.code, 2, result.stderr);
  assert.match(result.stderr, /^secretary: Cannot find the instance's IP: expected --ip/);
});

Deno.test("secretary --help and registry --help print usage and exit 0", async () => {
  const [s, r] = await Promise.all([
    runScript("secretary.ts", ["--help"], { flags: SOURCE_FLAGS }),
    runScript("registry.ts", ["--help"], { flags: SOURCE_FLAGS }),
  ]);
  assert.equal(s.code, 0);
  assert.match(s.stdout, /^Usage: secretary <port>/);
  assert.match(s.stdout, /--endpoints/);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /^Usage: registry <command>/);
});

Deno.test("registry: bad input exits 2 with one line naming the value", async () => {
  const cases: [string[], RegExp][] = [
    [["list"], /command "list"/],
    [["get", "apache", "10.0.0.1"], /address "10.0.0.1"/],
    [["get", "apache", "10.0.0.1:99999"], /port "99999"/],
    [["ls", "Apache"], /service "Apache"/],
    [["ls", "--endpoints=ftp://x:1"], /endpoint "ftp:\/\/x:1"/],
    [["ls", "--nope"], /Unknown option '--nope'/],
  ];
  const results = await Promise.all(cases.map(([args]) => runScript("registry.ts", args, { flags: SOURCE_FLAGS })));
  results.forEach((result, i) => {
    const [args, message] = cases[i];
    assert.equal(result.code, 2, `${args.join(" ")}: ${result.stderr}`);
    assert.equal(result.stderr.trimEnd().split("\n").length, 1, result.stderr);
    assert.match(result.stderr, message);
  });
});
