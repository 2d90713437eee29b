/** lib/checks.ts's pure parts (and splitCommand, the connection watch's backoff), and how the registry shows a status. */
import assert from "node:assert/strict";
import { oneLine } from "../lib/text.ts";
import {
  dechunk,
  execEnv,
  isRefusal,
  parseHeader,
  parseStatus,
  parseStatusRange,
  STATUS_MAX_BYTES,
} from "../lib/checks.ts";
import { splitCommand } from "../lib/command.ts";
import { reconnectDelayMs } from "../lib/connection-watch.ts";
import { decodeEntry, encodeRecord, type ServiceRecord } from "../lib/record.ts";
import { formatStatus } from "../lib/show.ts";

const bytes = (text: string) => new TextEncoder().encode(text);

Deno.test("parseStatusRange() takes a status or an inclusive range", () => {
  assert.deepEqual(parseStatusRange("200"), [200, 200]);
  assert.deepEqual(parseStatusRange("200-299"), [200, 299]);
  for (const bad of ["2xx", "99", "600", "300-200", "200-", "", "200,204"]) {
    assert.throws(() => parseStatusRange(bad), RangeError, bad);
  }
});

Deno.test("parseHeader() takes Name: value and refuses what could smuggle another header", () => {
  assert.deepEqual(parseHeader("Host: www.example.com"), ["Host", "www.example.com"]);
  assert.deepEqual(parseHeader("X-Probe:1"), ["X-Probe", "1"]);
  assert.deepEqual(parseHeader("X-Empty:"), ["X-Empty", ""]);
  for (const bad of ["NoColon", ": value", "Bad Name: v", "X: a\r\nEvil: 1", "X: a\nb"]) {
    assert.throws(() => parseHeader(bad), RangeError, JSON.stringify(bad));
  }
});

Deno.test("splitCommand() splits words like a shell: quotes and backslashes, no expansion", () => {
  assert.deepEqual(splitCommand("/bin/check"), ["/bin/check"]);
  assert.deepEqual(splitCommand("  a   b\tc "), ["a", "b", "c"]);
  assert.deepEqual(splitCommand(`sh -c 'curl -s localhost | grep "ok"'`), [
    "sh",
    "-c",
    'curl -s localhost | grep "ok"',
  ]);
  assert.deepEqual(splitCommand(`echo "a \\"b\\" \\\\ $HOME"`), ["echo", 'a "b" \\ $HOME']);
  assert.deepEqual(splitCommand(`a\\ b '' ""`), ["a b", "", ""]);
  assert.deepEqual(splitCommand(`x'y'"z"`), ["xyz"]);
  for (const bad of ["", "   ", "'open", '"open', `a "b\\"`]) assert.throws(() => splitCommand(bad), RangeError, bad);
});

Deno.test("parseStatus() takes a JSON object of at most 4 KiB, and nothing else", () => {
  assert.deepEqual(parseStatus(bytes('{"version":"1.2","load":0.5}\n'), 29), {
    status: { version: "1.2", load: 0.5 },
  });
  assert.deepEqual(parseStatus(bytes("OK - all good\n"), 14), {}, "plain text is no status and no complaint");
  assert.deepEqual(parseStatus(bytes(""), 0), {});
  assert.match(parseStatus(bytes("{broken"), 7).note!, /not a JSON object/);
  assert.deepEqual(parseStatus(bytes("[1,2]"), 5), {}, "an array is not a status");
  const big = `{"a":"${"x".repeat(STATUS_MAX_BYTES)}"}`;
  assert.match(parseStatus(bytes(big).subarray(0, STATUS_MAX_BYTES + 1), big.length).note!, /over 4096 bytes/);
});

Deno.test("dechunk() decodes a chunked body, and stops where the bytes do", () => {
  assert.equal(
    new TextDecoder().decode(dechunk(bytes("5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n"))),
    "hello, world",
  );
  assert.equal(new TextDecoder().decode(dechunk(bytes("5\r\nhel"))), "hel");
  assert.equal(dechunk(bytes("zz\r\n")).length, 0);
});

Deno.test("oneLine() keeps a command's words to one printable line", () => {
  assert.equal(oneLine("error:\n\x1b[31mdisk full\x1b[0m\r\n"), "error: [31mdisk full [0m");
  assert.equal(oneLine("x".repeat(200)).length, 120);
});

Deno.test("execEnv() gives the command the instance and PATH, nothing of the secretary's", () => {
  const target = { ip: "10.0.0.5", port: 8080, service: "apache", timeoutMs: 1000 };
  assert.deepEqual(execEnv(target, "/usr/bin"), {
    PATH: "/usr/bin",
    SECRETARY_IP: "10.0.0.5",
    SECRETARY_PORT: "8080",
    SECRETARY_SERVICE: "apache",
  });
  assert.match(execEnv(target, undefined).PATH, /\/usr\/bin/);
});

Deno.test("a status is data: it can change neither the record's fields nor its JSON", () => {
  const status = JSON.parse('{"host":"evil","ipv4_addr":"1.2.3.4","__proto__":{"polluted":1},"k\\n":"\\u001b[31m"}');
  const record: ServiceRecord = {
    host: "core-01",
    ipv4_addr: "10.0.0.5",
    port: 80,
    service: "apache",
    registered_at: "2026-01-01T00:00:00Z",
    meta: {},
    status,
  };
  const entry = decodeEntry("/services", "/services/apache/10.0.0.5:80", encodeRecord(record));
  assert.equal(entry.record?.host, "core-01");
  assert.equal(entry.record?.ipv4_addr, "10.0.0.5");
  // "__proto__" stays an own key, as JSON.parse makes it: copied with `obj[key] = value` it would instead become the
  // status's prototype, and its fields would show through the status
  const decoded = entry.record!.status!;
  assert.deepEqual(Object.keys(decoded), ["host", "ipv4_addr", "__proto__", "k\n"]);
  assert.ok(Object.hasOwn(decoded, "__proto__"), "__proto__ is not an own key of the status");
  assert.equal(Object.getPrototypeOf(decoded), Object.prototype, "the status has another prototype");
  assert.equal((decoded as Record<string, unknown>).polluted, undefined, "the status inherits a status's fields");
  assert.equal(Object.getPrototypeOf(entry.record), Object.prototype, "the record has another prototype");
  const shown = formatStatus(entry.record!.status);
  assert.match(shown, /__proto__=\{"polluted":1\}/, "the status's __proto__ field is not shown as data");
  // deno-lint-ignore no-control-regex
  assert.equal(/[\x00-\x1f]/.test(shown), false, shown);
  assert.equal(
    decodeEntry("/services", "/services/x/1.1.1.1:1", '{"ipv4_addr":"1.1.1.1","port":1,"status":[1]}').record?.status,
    undefined,
  );
});

Deno.test("formatStatus() shows k=v pairs, JSON where a value is not simple, cut to a width", () => {
  assert.equal(formatStatus(undefined), "-");
  assert.equal(formatStatus({}), "{}");
  assert.equal(formatStatus({ version: "1.2", load: 0.5, ok: true }), "version=1.2,load=0.5,ok=true");
  assert.equal(formatStatus({ msg: "two words", q: [1, 2] }), 'msg="two words",q=[1,2]');
  assert.equal(formatStatus({ a: "x".repeat(100) }).length, 60);
});

Deno.test("reconnectDelayMs() reconnects at once after a long-lived connection, backs off to 30 s after short ones", () => {
  assert.deepEqual([0, 1, 2, 3, 4, 7, 8, 20].map(reconnectDelayMs), [0, 250, 500, 1000, 2000, 16_000, 30_000, 30_000]);
});

Deno.test("isRefusal(): the kernel answering for a process gone or going, not a blip of a live one", () => {
  const cases: [string | undefined, number, boolean, string][] = [
    ["ECONNREFUSED", 0, true, "nothing listens"],
    ["ECONNRESET", 0, true, "reset while queued on a closing listener"],
    ["EPIPE", 0, true, "the request's write broken: the listener closed under it (a killed process's, measured)"],
    ["ECONNRESET", 12, false, "reset mid-answer: the server was alive a moment ago"],
    ["EPIPE", 12, false, "broken mid-answer"],
    ["ETIMEDOUT", 0, false, "a timeout may be a blip"],
    ["EHOSTUNREACH", 0, false, "the network's, not the process's"],
    [undefined, 0, false, "no code"],
  ];
  for (const [code, received, expected, why] of cases) assert.equal(isRefusal(code, received), expected, why);
});
