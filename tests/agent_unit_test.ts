/**
 * The agent's pure parts as tables: its requests, its state file, and the
 * command lines of agent, attach, detach and attached.
 */
import assert from "node:assert/strict";
import { decodeState, parseRequest, type Request } from "../lib/agent.ts";
import { UsageError } from "../lib/cli.ts";
import { parseAgentCli, parseAttachCli, parseAttachedCli, parseDetachCli } from "../secretary.ts";

Deno.test("parseRequest() reads the three requests and refuses anything else with a line naming what is wrong", () => {
  const good: [string, Request][] = [
    ['{"op":"attach","args":["8080","--ip","10.0.0.5"]}', { op: "attach", args: ["8080", "--ip", "10.0.0.5"] }],
    ['{"op":"detach","port":8080}', { op: "detach", port: 8080 }],
    ['{"op":"detach","port":8080,"service":"web","ip":"10.0.0.5"}', {
      op: "detach",
      port: 8080,
      service: "web",
      ip: "10.0.0.5",
    }],
    ['{"op":"list","extra":1}', { op: "list" }],
  ];
  for (const [line, request] of good) assert.deepEqual(parseRequest(line), request, line);
  const bad: [string, RegExp][] = [
    ["", /expected one JSON object/],
    ["not json", /expected one JSON object/],
    ["[1,2]", /expected one JSON object/],
    ["null", /expected one JSON object/],
    ['{"op":"zap"}', /Cannot use op "zap": expected attach, detach or list/],
    ['{"args":[]}', /Cannot use op/],
    ['{"op":"attach"}', /Cannot use args/],
    ['{"op":"attach","args":[8080]}', /Cannot use args/],
    ['{"op":"attach","args":"8080"}', /Cannot use args/],
    ['{"op":"detach","port":0}', /Cannot use port "0"/],
    ['{"op":"detach","port":"8080"}', /Cannot use port/],
    ['{"op":"detach","port":8080.5}', /Cannot use port/],
    ['{"op":"detach","port":8080,"service":7}', /Cannot use service "7": expected a string/],
    ['{"op":"__proto__"}', /Cannot use op/],
  ];
  for (const [line, message] of bad) assert.throws(() => parseRequest(line), message, line);
});

Deno.test("decodeState() keeps what it can read: a bad instance drops that instance, a bad lease no more", () => {
  assert.deepEqual(
    decodeState(JSON.stringify({
      lease: "7587",
      clean: true,
      instances: [
        { args: ["8080"], desired: true, registered: true, leaving: false },
        { args: [8081] },
        { args: ["8082"], desired: "yes" },
        null,
      ],
    })),
    {
      lease: "7587",
      clean: true,
      instances: [
        { args: ["8080"], desired: true, registered: true, leaving: false },
        { args: ["8082"], desired: false, registered: false, leaving: false },
      ],
    },
  );
  assert.deepEqual(decodeState('{"lease":"0x1F","clean":1}'), { clean: false, instances: [] });
  assert.deepEqual(decodeState('{"lease":"-5"}'), { clean: false, instances: [] });
  assert.throws(() => decodeState("{"));
});

/** The parsed value, failing the test on "help". */
function parsed<T>(value: T | "help"): T {
  assert.notEqual(value, "help");
  return value as T;
}

const env = { COREOS_PUBLIC_IPV4: "10.0.0.5", ETCDCTL_ENDPOINTS: "http://bad endpoint" };
const machine = { hostname: () => "core-01" };

Deno.test("attach takes the sidekick's instance flags, makes the address and hostname explicit, and refuses the agent's", () => {
  const attach = parseAttachCli(["8080", "--service", "web", "--socket", "/tmp/a.sock", "--rise", "3"], env, machine);
  assert.notEqual(attach, "help");
  if (attach === "help") return;
  assert.equal(attach.socket, "/tmp/a.sock");
  assert.deepEqual(attach.args, [
    "8080",
    "--service",
    "web",
    "--rise",
    "3",
    "--ip",
    "10.0.0.5",
    "--hostname",
    "core-01",
  ]);
  assert.equal(attach.cfg.rise, 3);
  const given = parsed(
    parseAttachCli(["8080", "--ip=10.0.0.9", "--hostname", "h", "--socket=/tmp/b.sock"], env, machine),
  );
  assert.equal(given.socket, "/tmp/b.sock");
  assert.deepEqual(given.args, ["8080", "--ip=10.0.0.9", "--hostname", "h"]);
  assert.equal(parseAttachCli(["--help"], env, machine), "help");
  const refused: [string[], RegExp][] = [
    [["8080", "--ttl", "5s"], /Cannot use --ttl with attach: expected it on the agent/],
    [["8080", "--endpoints=http://127.0.0.1:2379"], /Cannot use --endpoints with attach/],
    [["8080", "--prefix", "/x"], /Cannot use --prefix with attach/],
    [["8080", "--socket", "relative.sock"], /Cannot use --socket "relative.sock": expected an absolute file path/],
    [["8080", "--socket", `/${"s".repeat(200)}`], /expected an absolute file path of at most 107 bytes/],
    [["8080", "--socket"], /Missing a value for --socket/],
    [["0"], /port/],
    [["8080", "--interval", "1s", "--timeout", "1s"], /Cannot use --timeout "1s": expected less than --interval/],
  ];
  for (const [args, message] of refused) {
    assert.throws(
      () => parseAttachCli(args, env, machine),
      (e) => e instanceof UsageError && message.test(e.message),
      args.join(" "),
    );
  }
});

Deno.test("agent, detach and attached read their own flags; bad ones are usage errors", () => {
  const agent = parsed(parseAgentCli(
    ["--ttl", "20s", "--socket", "/run/x/a.sock", "--endpoints", "http://127.0.0.1:2379"],
    {},
  ));
  assert.deepEqual([agent.socket, agent.ttlSeconds, agent.prefix], [
    "/run/x/a.sock",
    20,
    "/services",
  ]);
  const defaults = parseAgentCli([], {});
  assert.ok(defaults !== "help" && defaults.socket === "/run/secretary/agent.sock" && defaults.ttlSeconds === 10);
  assert.deepEqual(parseDetachCli(["8080", "--service", "web"]), {
    socket: "/run/secretary/agent.sock",
    request: { op: "detach", port: 8080, service: "web" },
  });
  assert.deepEqual(parseAttachedCli(["--json"]), { socket: "/run/secretary/agent.sock", json: true });
  const refused: [() => unknown, RegExp][] = [
    [() => parseAgentCli(["--ttl", "2s"], {}), /Cannot use --ttl "2s"/],
    [() => parseAgentCli(["8080"], {}), /expected only flags after agent/],
    [() => parseDetachCli([]), /Missing <port>/],
    [() => parseDetachCli(["8080", "--service", "Bad Name"]), /service/],
    [() => parseDetachCli(["8080", "--ip", "224.0.0.1"]), /224\.0\.0\.1/],
    [() => parseAttachedCli(["x"]), /expected only flags after attached/],
  ];
  for (const [parse, message] of refused) {
    assert.throws(parse, (e) => e instanceof UsageError && message.test(e.message), String(message));
  }
});
