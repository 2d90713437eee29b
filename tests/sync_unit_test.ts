/**
 * The HAProxy sync's pure parts: what HAProxy's runtime API answers, parsed;
 * the servers a registry listing wants; and planSync() as a table.
 */
import assert from "node:assert/strict";
import {
  type HAProxyServer,
  parseHAProxyAddress,
  parseInfo,
  parseServersState,
  parseSessions,
} from "../lib/haproxy.ts";
import { encodeRecord } from "../lib/record.ts";
import { planSync, type SyncCommand, type WantedServer, wantedServers } from "../lib/sync.ts";

// as Debian 12's HAProxy 2.6 answers
const STATE = `1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 apache 1 127.0.0.2:8080 127.0.0.2 2 0 7 1 0 1 0 0 0 0 0 0 - 8080 - 0 0 - - 0
3 apache 2 127.0.0.3:8081 127.0.0.3 0 1 1 1 0 1 0 0 6 0 0 0 - 8081 - 0 0 - - 0

`;
const STAT = `# pxname,svname,qcur,qmax,scur,smax,slim,stot
apache,127.0.0.2:8080,0,0,3,5,,9
apache,127.0.0.3:8081,0,0,0,1,,2
apache,BACKEND,0,0,3,5,,11
`;

Deno.test("parseServersState() and parseSessions() read HAProxy's answers: address, maintenance, weight, sessions", () => {
  assert.deepEqual(parseServersState(STATE), [
    { name: "127.0.0.2:8080", ip: "127.0.0.2", port: 8080, maint: false, opState: 2, weight: 7, sessions: 0 },
    { name: "127.0.0.3:8081", ip: "127.0.0.3", port: 8081, maint: true, opState: 0, weight: 1, sessions: 0 },
  ]);
  assert.deepEqual([...parseSessions(STAT, "apache")], [["127.0.0.2:8080", 3], ["127.0.0.3:8081", 0]]);
  assert.deepEqual(parseSessions(STAT, "other").size, 0);
  assert.deepEqual(parseInfo("Name: HAProxy\nPid: 9789\nUptime_sec: 12\n"), { pid: 9789, uptimeSeconds: 12 });
  assert.throws(() => parseServersState("Can't find backend.\n"), /unexpected answer/);
  assert.throws(() => parseInfo("Permission denied\n"), /unexpected answer/);
});

Deno.test("parseHAProxyAddress() takes an absolute socket path or host:port", () => {
  assert.deepEqual(parseHAProxyAddress("/run/haproxy/admin.sock"), { path: "/run/haproxy/admin.sock" });
  assert.deepEqual(parseHAProxyAddress("127.0.0.1:9999"), { host: "127.0.0.1", port: 9999 });
  assert.deepEqual(parseHAProxyAddress("[::1]:9999"), { host: "::1", port: 9999 });
  for (const bad of ["admin.sock", "127.0.0.1", "h:0", "h:70000", "http://h:1"]) {
    assert.equal(parseHAProxyAddress(bad), undefined, bad);
  }
});

Deno.test("wantedServers() takes each instance's record, meta.weight when it is 0 to 256, and nothing else", () => {
  const record = (ip: string, port: number, meta: Record<string, string> = {}) =>
    encodeRecord({ host: "h", ipv4_addr: ip, port, service: "web", registered_at: "", meta });
  const values = new Map([
    ["/services/web/10.0.0.1:80", record("10.0.0.1", 80, { weight: "10", zone: "a" })],
    ["/services/web/10.0.0.2:80", record("10.0.0.2", 80, { weight: "300" })],
    ["/services/web/10.0.0.3:80", record("10.0.0.3", 80, { weight: "heavy" })],
    ["/services/web/10.0.0.4:80", "not json"],
    ["/services/web/x/y", record("10.0.0.5", 80)],
  ]);
  assert.deepEqual([...wantedServers("/services", values).values()], [
    { name: "10.0.0.1:80", ip: "10.0.0.1", port: 80, weight: 10 },
    { name: "10.0.0.2:80", ip: "10.0.0.2", port: 80 },
    { name: "10.0.0.3:80", ip: "10.0.0.3", port: 80 },
  ]);
});

const server = (name: string, over: Partial<HAProxyServer> = {}): HAProxyServer => {
  const [ip, port] = name.split(":");
  return { name, ip, port: Number(port), maint: false, opState: 2, weight: 1, sessions: 0, ...over };
};
const want = (name: string, weight?: number): WantedServer => {
  const [ip, port] = name.split(":");
  return { name, ip, port: Number(port), ...(weight === undefined ? {} : { weight }) };
};
const wanted = (...servers: WantedServer[]) => new Map(servers.map((s) => [s.name, s]));

Deno.test("planSync() closes the difference: out first, then ready, weight and add; delete once out and idle", () => {
  const A = "10.0.0.1:80", B = "10.0.0.2:80", C = "10.0.0.3:80";
  const rows: [string, HAProxyServer[], Map<string, WantedServer> | undefined, SyncCommand[]][] = [
    ["the registry not read yet: nothing, whatever HAProxy holds", [server(A)], undefined, []],
    ["equal: nothing", [server(A), server(B)], wanted(want(A), want(B)), []],
    ["a new record: add", [server(A)], wanted(want(A), want(B)), [{ kind: "add", server: want(B) }]],
    ["a record gone: out at once", [server(A), server(B)], wanted(want(A)), [{ kind: "out", name: B }]],
    ["out, sessions in flight: wait", [server(A), server(B, { maint: true, sessions: 2 })], wanted(want(A)), []],
    ["out and idle: delete", [server(A), server(B, { maint: true })], wanted(want(A)), [{ kind: "delete", name: B }]],
    ["all records gone: an empty backend", [server(A), server(B)], wanted(), [
      { kind: "out", name: A },
      { kind: "out", name: B },
    ]],
    ["back while still out: ready again", [server(A, { maint: true, sessions: 1 })], wanted(want(A)), [
      { kind: "ready", name: A },
    ]],
    ["a weight in meta: set it", [server(A)], wanted(want(A, 10)), [{ kind: "weight", name: A, weight: 10 }]],
    ["no weight in meta: back to 1", [server(A, { weight: 10 })], wanted(want(A)), [
      { kind: "weight", name: A, weight: 1 },
    ]],
    [
      "a server whose name is not its address: out, then added once deleted",
      [server(A, { ip: "10.9.9.9" })],
      wanted(
        want(A),
      ),
      [{ kind: "out", name: A }],
    ],
    ["removals come before additions", [server(A)], wanted(want(C)), [
      { kind: "out", name: A },
      { kind: "add", server: want(C) },
    ]],
    [
      "a server down by HAProxy's own check but wanted: left to its check",
      [server(A, { opState: 0 })],
      wanted(
        want(A),
      ),
      [],
    ],
  ];
  for (const [what, actual, want, commands] of rows) assert.deepEqual(planSync(actual, want), commands, what);
});
