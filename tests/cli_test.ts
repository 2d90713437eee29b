import assert from "node:assert/strict";
import { formatEvent, parseConnection, parseDuration, parseEndpoints, UsageError } from "../lib/cli.ts";

Deno.test("parseDuration() takes ms, s and m", () => {
  assert.equal(parseDuration("500ms", "--interval"), 500);
  assert.equal(parseDuration("2s", "--interval"), 2000);
  assert.equal(parseDuration("1.5s", "--interval"), 1500);
  assert.equal(parseDuration("1m", "--interval"), 60_000);
});

Deno.test("parseDuration() rejects a bare number, a unit it does not know and zero, naming the value", () => {
  for (const bad of ["2", "2h", "s", "-1s", "0s", "2 s", ""]) {
    assert.throws(() => parseDuration(bad, "--ttl"), (err: Error) => {
      assert.ok(err instanceof UsageError);
      assert.match(err.message, new RegExp(`--ttl "${bad.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}"`));
      return true;
    });
  }
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
