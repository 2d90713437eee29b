/**
 * Both scripts run as processes: bad input gets one line on stderr naming the
 * value, exit status 2, and nothing written to etcd; --help exits 0.
 */
import assert from "node:assert/strict";
import { currentRevision, loopback, runScript, SOURCE_FLAGS } from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);
/** An address of this file's own, in values that must be refused before anything is dialled. */
const IP = lo.ip(1);
/** Dozens of deno processes started at once from source: generous for a loaded machine. */
const RUN = { flags: SOURCE_FLAGS, timeoutMs: 60_000 };

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
  [["8080", "--ip=0.0.0.0"], '"0.0.0.0": an unspecified address'],
  [["8080", "--ip=224.0.0.1"], '"224.0.0.1": a multicast address'],
  [["8080", "--endpoints=not a url"], '"not a url"'],
  [["8080", "--interval=fast"], '--interval "fast"'],
  [["8080", "--check=ping"], '--check "ping"'],
  [[], "<port>"],
  // durations past a timer's limit (about 24.8 days) or any stated range
  [["8080", "--interval=40000m"], '--interval "40000m"'],
  [["8080", "--interval=50ms"], '--interval "50ms"'],
  [["8080", "--ttl=7000000s"], '--ttl "7000000s"'],
  [["8080", "--ttl=9000000001s"], '--ttl "9000000001s"'],
  [["8080", "--drain=99999999m"], '--drain "99999999m"'],
  // a record etcd would refuse, and meta that would be dropped
  // past etcd's request limit (1.5 MiB), one argument under the kernel's limit of 128 KiB each
  [["8080", ...Array.from({ length: 16 }, (_, i) => `--meta=m${i}=${"x".repeat(100_000)}`)], "--meta"],
  [["8080", `--meta=big=${"x".repeat(70_000)}`], "--meta"],
  [["8080", "--meta=__proto__=x"], '"__proto__=x"'],
  [["8080", "--meta=a=1", "--meta=a=2"], '"a=2"'],
  // control characters: escaped in the line, refused in what would be written
  [["8080", "--service=a\nb"], '"a\\nb"'],
  [["8080", "--hostname=h\x1b]0;owned\x07"], '"h\\u001b]0;owned\\u0007"'],
  [["8080", "--hostname=h\u009b2J"], '"h\\u009b2J"'],
  [["8080", "--meta=k=v\x1b[2J"], '"k=v\\u001b[2J"'],
  [["8080", "--path=/a\r\nb"], '"/a\\r\\nb"'],
  [["8080", "--prefix=/serv\x1bices"], '"/serv\\u001bices"'],
  [["8080", "--prefix=/a/../b"], '"/a/../b"'],
  [["8080", "--prefix=/a b"], '"/a b"'],
  [["8080", "--bo\x1bgus"], "--bo\\u001bgus"],
  // endpoints: nothing silently dropped or assumed, and no password shown
  [["8080", `--endpoints=${IP}`], `"${IP}"`],
  [["8080", `--endpoints=http://${IP}`], `"http://${IP}"`],
  [["8080", `--endpoints=http://u:pw@${IP}:2379`], `"http://***@${IP}:2379"`],
  [["8080", `--endpoints=http://${IP}:2379/?x=1`], `"http://${IP}:2379/?x=1"`],
  [["8080", `--endpoints=http://${IP}:2379#f`], `"http://${IP}:2379#f"`],
];

Deno.test("secretary: every bad input exits 2 with one line naming the value, and writes nothing", async () => {
  const cluster = await lo.etcd(1);
  await cluster.start();
  const etcd = cluster.client();
  try {
    const defaults = [`--endpoints=${cluster.endpoints[0]}`, `--ip=${IP}`, "--hostname=h"];
    const runs = BAD_SECRETARY_ARGS.map(([args, named]) =>
      // flags given later win, so each case's own value overrides the defaults
      runScript("secretary.ts", [...defaults, ...args], RUN).then((result) => ({
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
      // deno-lint-ignore no-control-regex
      assert.doesNotMatch(lines[0], /[\x00-\x1f\x7f-\x9f]/, `${JSON.stringify(lines[0])} holds a control character`);
      assert.doesNotMatch(lines[0], /pw@/, "the password is shown");
      assert.ok(lines[0].length < 1000, `a line of ${lines[0].length} characters`);
      assert.equal(result.stdout, "");
    }
    assert.deepEqual((await etcd.list("/")).values, [], "a bad input wrote to etcd");
    assert.equal(await currentRevision(etcd), "1", "the revision moved: something was written");
  } finally {
    etcd.close();
    await cluster.stop();
  }
});

Deno.test("secretary: no IP anywhere is a usage error, not a crash", async () => {
  const result = await runScript("secretary.ts", ["8080", "--hostname=h"], {
    ...RUN,
    env: { COREOS_PUBLIC_IPV4: "" },
  });
  assert.equal(result.code, 2, result.stderr);
  assert.match(result.stderr, /^secretary: Cannot find the instance's IP: expected --ip/);
});

Deno.test("secretary --help and registry --help print usage and exit 0", async () => {
  const [s, r] = await Promise.all([
    runScript("secretary.ts", ["--help"], RUN),
    runScript("registry.ts", ["--help"], RUN),
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
    [["get", "apache", "10.0.0.1:99999"], /address "10\.0\.0\.1:99999"/],
    [["ls", "Apache"], /service "Apache"/],
    [["ls", "--endpoints=ftp://x:1"], /endpoint "ftp:\/\/x:1"/],
    [["ls", "--nope"], /Unknown option '--nope'/],
    [["ls", "a\x1b[2Jb"], /service "a\\u001b\[2Jb"/],
    [["get", "apache", "10.0.0.1:80\n+ forged"], /address "10\.0\.0\.1:80\\n\+ forged"/],
    [["ls", "--prefix=/a/.."], /prefix "\/a\/\.\."/],
    [["ls", `--endpoints=${IP}`], new RegExp(`endpoint "${IP.replaceAll(".", "\\.")}"`)],
    // the flag that was given is named, not the exec check's --command
    [["render", "web", "--template=/t", "--out=/o", "--check=sh -c 'x"], /^registry: Cannot use --check "sh -c 'x": /],
  ];
  const results = await Promise.all(cases.map(([args]) => runScript("registry.ts", args, RUN)));
  results.forEach((result, i) => {
    const [args, message] = cases[i];
    assert.equal(result.code, 2, `${args.join(" ")}: ${result.stderr}`);
    assert.equal(result.stderr.trimEnd().split("\n").length, 1, result.stderr);
    assert.match(result.stderr, message);
    // deno-lint-ignore no-control-regex
    assert.doesNotMatch(result.stderr.trimEnd(), /[\x00-\x1f\x7f-\x9f]/);
  });
});
