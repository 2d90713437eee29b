/**
 * The HAProxy sync's pure parts: what HAProxy's runtime API answers, parsed;
 * the servers a registry listing wants; planSync() (added servers and
 * slots), the refusal-log throttle and the shared-backend check as tables.
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
import {
  commandLines,
  foreignServer,
  haproxyWeight,
  planSync,
  REFUSAL_REPEAT_MS,
  type SyncCommand,
  throttle,
  type WantedServer,
  wantedServers,
  writeStateFile,
} from "../lib/sync.ts";

// as Debian 12's HAProxy 2.6 answers
const STATE = `1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 apache 1 127.0.0.2:8080 127.0.0.2 2 0 7 1 0 1 0 0 0 0 0 0 - 8080 - 0 0 - - 0
3 apache 2 127.0.0.3:8081 127.0.0.3 0 1 1 1 0 1 0 0 6 0 0 0 - 8081 - 0 0 - - 0
3 apache 3 slot1 10.0.0.9 2 4 3 1 1 6 3 2 6 0 0 0 slot.invalid 8080 - 0 0 - - 0
3 apache 4 slot2 0.0.0.0 0 5 1 1 1 1 0 0 14 0 0 0 slot.invalid 80 - 0 0 - - 0

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
    // a `disabled` slot made ready keeps flag 0x04 (configured maintenance), and is in rotation
    { name: "slot1", ip: "10.0.0.9", port: 8080, maint: false, opState: 2, weight: 3, sessions: 0 },
    { name: "slot2", ip: "0.0.0.0", port: 80, maint: true, opState: 0, weight: 1, sessions: 0 },
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

Deno.test("haproxyWeight() takes a whole number from 0 to 256, nothing else", () => {
  const rows: [string | undefined, number | undefined][] = [
    ["0", 0],
    ["1", 1],
    ["256", 256],
    ["257", undefined],
    ["-1", undefined],
    ["1.5", undefined],
    ["01", 1],
    ["1; del server", undefined],
    ["", undefined],
    [undefined, undefined],
  ];
  for (const [text, weight] of rows) assert.equal(haproxyWeight(text), weight, String(text));
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
    // not instance keys (lib/record.ts): this host, broadcast, multicast
    ...["0.0.0.0", "0.1.2.3", "255.255.255.255", "224.0.0.1", "239.1.1.1"].map((ip) =>
      [`/services/web/${ip}:80`, record(ip, 80)] as [string, string]
    ),
    // the key's address is the server's, whatever the record says
    ["/services/web/10.0.0.6:80", record("0.0.0.0", 1)],
  ]);
  assert.deepEqual([...wantedServers("/services", values).values()], [
    { name: "10.0.0.1:80", ip: "10.0.0.1", port: 80, weight: 10 },
    { name: "10.0.0.2:80", ip: "10.0.0.2", port: 80 },
    { name: "10.0.0.3:80", ip: "10.0.0.3", port: 80 },
    { name: "10.0.0.6:80", ip: "10.0.0.6", port: 80 },
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
const out = (name: string): SyncCommand => ({ kind: "out", name, address: name });

Deno.test("planSync() closes the difference: out first, then ready, weight and add; delete once out and idle", () => {
  const A = "10.0.0.1:80", B = "10.0.0.2:80", C = "10.0.0.3:80";
  const rows: [string, HAProxyServer[], Map<string, WantedServer> | undefined, SyncCommand[]][] = [
    ["the registry not read yet: nothing, whatever HAProxy holds", [server(A)], undefined, []],
    ["equal: nothing", [server(A), server(B)], wanted(want(A), want(B)), []],
    ["a new record: add", [server(A)], wanted(want(A), want(B)), [{ kind: "add", server: want(B) }]],
    ["a record gone: out at once", [server(A), server(B)], wanted(want(A)), [out(B)]],
    ["out, sessions in flight: wait", [server(A), server(B, { maint: true, sessions: 2 })], wanted(want(A)), []],
    ["out and idle: delete", [server(A), server(B, { maint: true })], wanted(want(A)), [
      { kind: "delete", name: B, address: B },
    ]],
    ["all records gone: an empty backend", [server(A), server(B)], wanted(), [out(A), out(B)]],
    ["back while still out: ready again", [server(A, { maint: true, sessions: 1 })], wanted(want(A)), [
      { kind: "ready", name: A, address: A },
    ]],
    ["a weight in meta: set it", [server(A)], wanted(want(A, 10)), [{
      kind: "weight",
      name: A,
      address: A,
      weight: 10,
    }]],
    ["no weight in meta: back to 1", [server(A, { weight: 10 })], wanted(want(A)), [
      { kind: "weight", name: A, address: A, weight: 1 },
    ]],
    [
      "a server whose name is not its address: out; not added again while its name is taken",
      [server(A, { ip: "10.9.9.9" })],
      wanted(want(A)),
      [{ kind: "out", name: A, address: "10.9.9.9:80" }],
    ],
    ["removals come before additions", [server(A)], wanted(want(C)), [out(A), { kind: "add", server: want(C) }]],
    [
      "a server down by HAProxy's own check but wanted: left to its check",
      [server(A, { opState: 0 })],
      wanted(want(A)),
      [],
    ],
    [
      "a static server the registry does not list: out, then delete (HAProxy may refuse: see runSync)",
      [server("static1", { ip: "10.0.0.9", port: 80 }), server(A)],
      wanted(want(A)),
      [{ kind: "out", name: "static1", address: "10.0.0.9:80" }],
    ],
  ];
  for (const [what, actual, want, commands] of rows) assert.deepEqual(planSync(actual, want), commands, what);
});

Deno.test("planSync() with slots: fills a free one, readies one that holds the address, frees one that went out", () => {
  const A = "10.0.0.1:80", B = "10.0.0.2:80", C = "10.0.0.3:80";
  const slot = (name: string, address: string, over: Partial<HAProxyServer> = {}) =>
    server(name, { ip: address.split(":")[0], port: Number(address.split(":")[1]), ...over });
  const empty = (name: string) => slot(name, "0.0.0.0:80", { maint: true, opState: 0 });
  const rows: [string, HAProxyServer[], Map<string, WantedServer>, SyncCommand[]][] = [
    ["a new record: the first free slot", [empty("slot1"), empty("slot2")], wanted(want(A, 5)), [
      { kind: "fill", slot: "slot1", server: want(A, 5) },
    ]],
    ["held: nothing", [slot("slot1", A), empty("slot2")], wanted(want(A)), []],
    ["a record gone: its slot out", [slot("slot1", A), slot("slot2", B)], wanted(want(B)), [
      { kind: "out", name: "slot1", address: A },
    ]],
    [
      "out with sessions: not free yet, so a new record is added",
      [slot("slot1", A, { maint: true, sessions: 1 })],
      wanted(want(B)),
      [
        { kind: "add", server: want(B) },
      ],
    ],
    ["out and idle: free for the next record, never deleted", [slot("slot1", A, { maint: true })], wanted(want(B)), [
      { kind: "fill", slot: "slot1", server: want(B) },
    ]],
    [
      "back while its slot is out: ready in the same slot",
      [slot("slot1", A, { maint: true }), empty("slot2")],
      wanted(want(A)),
      [
        { kind: "ready", name: "slot1", address: A },
      ],
    ],
    ["two slots at one address: the second out", [slot("slot1", A), slot("slot2", A)], wanted(want(A)), [
      { kind: "out", name: "slot2", address: A },
    ]],
    ["a weight in meta: on the slot", [slot("slot1", A)], wanted(want(A, 0)), [
      { kind: "weight", name: "slot1", address: A, weight: 0 },
    ]],
    ["more records than slots: the rest added", [empty("slot1")], wanted(want(A), want(B)), [
      { kind: "fill", slot: "slot1", server: want(A) },
      { kind: "add", server: want(B) },
    ]],
    ["an added server holds its instance as a slot would", [server(C), empty("slot1")], wanted(want(C)), []],
    ["an empty slot in rotation (no `disabled`): out", [slot("slot1", "0.0.0.0:80")], wanted(), [
      { kind: "out", name: "slot1", address: "0.0.0.0:80" },
    ]],
  ];
  for (const [what, actual, want, commands] of rows) assert.deepEqual(planSync(actual, want), commands, what);
});

Deno.test("planSync() never sends to an address wantedServers() left out, whatever HAProxy holds", () => {
  const values = new Map(["0.0.0.0", "255.255.255.255", "224.0.0.1"].map((ip) => [
    `/services/web/${ip}:80`,
    JSON.stringify({ ipv4_addr: ip, port: 80 }),
  ]));
  const commands = planSync(
    [server("slot1", { ip: "0.0.0.0", port: 80, maint: true })],
    wantedServers("/services", values),
  );
  assert.deepEqual(commands, []);
});

Deno.test("commandLines(): a fill sets address, weight and state; an add takes the server options", () => {
  assert.deepEqual(commandLines("web", [], { kind: "fill", slot: "slot3", server: want("10.0.0.1:8080") }), [
    "set server web/slot3 addr 10.0.0.1 port 8080",
    "set server web/slot3 weight 1",
    "set server web/slot3 state ready",
  ]);
  assert.deepEqual(commandLines("web", ["check", "inter", "1s"], { kind: "add", server: want("10.0.0.1:80", 7) }), [
    "add server web/10.0.0.1:80 10.0.0.1:80 weight 7 check inter 1s",
    "enable health web/10.0.0.1:80",
    "set server web/10.0.0.1:80 state ready",
  ]);
});

Deno.test("throttle() logs a refusal at once, again only after the repeat interval, and at once when it comes back", () => {
  const R = REFUSAL_REPEAT_MS;
  const rows: [string, [string, number][], string[], number, string[], [string, number][]][] = [
    ["new: at once", [], ["a"], 1000, ["a"], [["a", 1000]]],
    ["persists, within the interval: quiet", [["a", 1000]], ["a"], 1000 + R - 1, [], [["a", 1000]]],
    ["persists, the interval passed: again", [["a", 1000]], ["a"], 1000 + R, ["a"], [["a", 1000 + R]]],
    ["gone: forgotten", [["a", 1000]], [], 2000, [], []],
    ["two at once, one old: only the new", [["a", 1000]], ["a", "b"], 2000, ["b"], [["a", 1000], ["b", 2000]]],
    ["repeated within a pass: once", [], ["a", "a"], 5, ["a"], [["a", 5]]],
  ];
  for (const [what, before, current, now, log, after] of rows) {
    const result = throttle(new Map(before), current, now);
    assert.deepEqual(result.log, log, what);
    assert.deepEqual([...result.logged], after, what);
  }
});

Deno.test("foreignServer(): a server this sync took out, back in rotation though not wanted, is another writer's", () => {
  const A = "10.0.0.1:80", B = "10.0.0.2:80";
  const rows: [string, HAProxyServer[], Map<string, WantedServer>, string[], string | undefined][] = [
    ["nothing taken out", [server(A)], wanted(), [], undefined],
    ["taken out and still out", [server(A, { maint: true })], wanted(), [A], undefined],
    ["taken out, back in rotation, not wanted", [server(A)], wanted(), [A], A],
    ["taken out, back, wanted again by the registry", [server(A)], wanted(want(A)), [A], undefined],
    ["in a slot", [server("slot1", { ip: "10.0.0.2", port: 80 })], wanted(), [B], "slot1"],
  ];
  for (const [what, actual, want, takenOut, name] of rows) {
    assert.equal(foreignServer(actual, want, new Set(takenOut))?.name, name, what);
  }
});

Deno.test("writeStateFile() replaces the file whole and leaves nothing staged, also when it fails", async () => {
  const dir = await Deno.makeTempDir({ prefix: "secretary-sync-state-" });
  try {
    const path = `${dir}/web`;
    await writeStateFile(path, "1\n# old\n");
    await writeStateFile(path, STATE);
    assert.equal(await Deno.readTextFile(path), STATE);
    await Deno.mkdir(`${dir}/folder`);
    await assert.rejects(writeStateFile(`${dir}/folder`, STATE)); // a rename onto a folder fails
    assert.deepEqual((await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort(), ["folder", "web"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
