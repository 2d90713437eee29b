import assert from "node:assert/strict";
import { formatDuration, parseConnection, parseDuration, parseEndpoints, UsageError } from "../lib/cli.ts";
import { formatEvent } from "../lib/log.ts";
import { parseCli as parseSecretaryCli } from "../secretary.ts";

const ANY = { minMs: 1, maxMs: 86_400_000 };

Deno.test("parseDuration() takes ms, s, m and h", () => {
  assert.equal(parseDuration("500ms", "--interval", ANY), 500);
  assert.equal(parseDuration("2s", "--interval", ANY), 2000);
  assert.equal(parseDuration("1.5s", "--interval", ANY), 1500);
  assert.equal(parseDuration("1m", "--interval", ANY), 60_000);
  assert.equal(parseDuration("2h", "--interval", ANY), 7_200_000);
});

Deno.test("parseDuration() rejects a bare number, a unit it does not know and zero, naming the value", () => {
  for (const bad of ["2", "2d", "s", "-1s", "0s", "2 s", ""]) {
    assert.throws(() => parseDuration(bad, "--ttl", ANY), (err: Error) => {
      assert.ok(err instanceof UsageError);
      assert.match(err.message, new RegExp(`--ttl "${bad.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}"`));
      return true;
    });
  }
});

Deno.test("parseDuration() holds each flag to its range, both ends included, and says the range", () => {
  const range = { minMs: 100, maxMs: 3_600_000 };
  assert.equal(parseDuration("100ms", "--interval", range), 100);
  assert.equal(parseDuration("1h", "--interval", range), 3_600_000);
  assert.equal(parseDuration("60m", "--interval", range), 3_600_000);
  // 40000m is past a timer's 2^31-1 ms: it would fire at once, every time
  for (const bad of ["99ms", "61m", "40000m", "99999999m", "9000000001s"]) {
    assert.throws(() => parseDuration(bad, "--interval", range), /expected a duration from 100ms to 1h/, bad);
  }
});

Deno.test("formatDuration() writes the largest whole unit", () => {
  assert.deepEqual([1, 1500, 2000, 90_000, 3_600_000].map(formatDuration), ["1ms", "1500ms", "2s", "90s", "1h"]);
});

Deno.test("parseEndpoints() refuses what etcdctl would: no port, a user, a path, a query or a fragment", () => {
  for (
    const bad of [
      "127.0.0.1",
      "http://127.0.0.1",
      "https://h",
      "http://u:p@h:1",
      "http://h:1/x",
      "http://h:1?a",
      "h:1#f",
      "h:0",
      "h:65536",
    ]
  ) {
    assert.throws(() => parseEndpoints(bad), UsageError, bad);
  }
  assert.throws(() => parseEndpoints("http://u:secret@h:1"), (err: Error) => !err.message.includes("secret"));
  assert.deepEqual(parseEndpoints("h:80,https://h:443/"), ["http://h:80", "https://h:443"]);
});

Deno.test("parseEndpoints() takes URLs and bare host:port, comma-separated", () => {
  assert.deepEqual(parseEndpoints("http://127.0.0.1:2379,https://10.0.0.1:2379"), [
    "http://127.0.0.1:2379",
    "https://10.0.0.1:2379",
  ]);
  assert.deepEqual(parseEndpoints("127.0.0.1:2379"), ["http://127.0.0.1:2379"]);
});

Deno.test("parseEndpoints() rejects what is not an http(s) URL", () => {
  for (const bad of ["ftp://x:1", "http://", "http://a:1/path", ",", "http://a b:1"]) {
    assert.throws(() => parseEndpoints(bad), UsageError, bad);
  }
});

Deno.test("parseConnection() falls back to etcdctl's variables, flags first", () => {
  const env = {
    ETCDCTL_ENDPOINTS: "https://10.0.0.1:2379",
    ETCDCTL_CACERT: "/ca.pem",
    ETCDCTL_CERT: "/c.pem",
    ETCDCTL_KEY: "/k.pem",
    ETCDCTL_USER: "root:pa:ss",
  };
  assert.deepEqual(parseConnection({}, env), {
    endpoints: ["https://10.0.0.1:2379"],
    cacert: "/ca.pem",
    cert: "/c.pem",
    key: "/k.pem",
    user: { name: "root", password: "pa:ss" },
  });
  assert.deepEqual(parseConnection({ endpoints: "http://127.0.0.1:1" }, {}), { endpoints: ["http://127.0.0.1:1"] });
  assert.deepEqual(parseConnection({}, {}), { endpoints: ["http://127.0.0.1:2379"] });
});

Deno.test("parseConnection() rejects a cert without a key, TLS files with http, and a user without a password", () => {
  assert.throws(() => parseConnection({ endpoints: "https://a:1", cert: "/c" }, {}), UsageError);
  assert.throws(() => parseConnection({ endpoints: "http://a:1", cacert: "/c" }, {}), UsageError);
  assert.throws(() => parseConnection({ endpoints: "http://a:1,https://b:1" }, {}), UsageError);
  assert.throws(() => parseConnection({ user: "root" }, {}), /user "root": expected NAME:PASSWORD/);
});

Deno.test("parseConnection() never prints the password in an error", () => {
  assert.throws(() => parseConnection({ user: ":secret" }, {}), (err: Error) => !err.message.includes("secret"));
});

Deno.test("formatEvent() writes key=value, quoting values with spaces", () => {
  assert.equal(
    formatEvent("deregistered", {
      key: "/services/a/1.2.3.4:80",
      reason: "no answer within 1000ms",
      n: 2,
      skip: undefined,
    }),
    'deregistered key=/services/a/1.2.3.4:80 reason="no answer within 1000ms" n=2',
  );
});

Deno.test("formatEvent() keeps one event on one line: control characters in a value are escaped", () => {
  const line = formatEvent("check failed", { reason: "a\nb\x1b[2J\u009b\u202e", host: "h" });
  assert.equal(line, 'check failed reason="a\\nb\\u001b[2J\\u009b\\u202e" host=h');
});

/** The secretary's --ip values that no instance has, and the reason its error line gives. */
const NOT_AN_INSTANCE_IP: [string, string][] = [
  ["0.0.0.0", "an unspecified address (0.x.x.x)"],
  ["0.1.2.3", "an unspecified address (0.x.x.x)"],
  ["224.0.0.1", "a multicast address (224.0.0.0/4)"],
  ["239.255.255.250", "a multicast address (224.0.0.0/4)"],
  ["255.255.255.255", "the broadcast address"],
];

// Fails on the old code: it took each of these, wrote it into the key, and HAProxy dialled it (0.0.0.0: the proxy host).
Deno.test("the secretary's --ip and $COREOS_PUBLIC_IPV4 refuse an address no instance has, naming it and why", () => {
  for (const [ip, why] of NOT_AN_INSTANCE_IP) {
    const message = `Cannot use IP "${ip}": ${why}; expected an instance's address such as 10.0.0.5`;
    for (const [args, env] of [[["8080", `--ip=${ip}`], {}], [["8080"], { COREOS_PUBLIC_IPV4: ip }]] as const) {
      assert.throws(
        () => parseSecretaryCli([...args], env, { hostname: () => "h" }),
        (err: Error) => err instanceof UsageError && err.message === message,
        `${args.join(" ")} ${JSON.stringify(env)}`,
      );
    }
  }
  for (const ip of ["10.0.0.5", "240.0.0.1", "255.255.255.254", "127.0.0.2"]) {
    const config = parseSecretaryCli(["8080", `--ip=${ip}`], {}, { hostname: () => "h" });
    assert.ok(config !== "help" && config.ip === ip, ip);
  }
  // the rule is for instances: an etcd endpoint may still be 0.0.0.0 (this host), as etcdctl takes it
  assert.deepEqual(parseEndpoints("0.0.0.0:2379"), ["http://0.0.0.0:2379"]);
});
