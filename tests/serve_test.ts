/**
 * `registry serve`: its pure parts as tables (flags, the view and its event
 * log, routes, metrics, the timeline), then the real thing: etcd, real
 * secretaries and records written through etcd, `registry serve` from
 * source, and Debian's Chromium driven by playwright-core over the DevTools
 * protocol. What must not happen (a script from a record running) is
 * checked after a later positive event, never after a sleep.
 */
import assert from "node:assert/strict";
import { request as httpRequest } from "node:http";
import { chromium, type Page } from "playwright-core";
import {
  checkPassword,
  CSP,
  DEFAULT_LISTEN,
  formatMetrics,
  parseListen,
  parseServe,
  passwordDigest,
  RegistryView,
  route,
} from "../lib/serve.ts";
import { classify, historyTimeline } from "../lib/history.ts";
import { encodeRecord, instanceKey, type ServiceRecord } from "../lib/record.ts";
import { entryJson } from "../lib/show.ts";
import {
  bundles,
  Chromium,
  currentRevision,
  type EtcdCluster,
  EtcdGateway,
  EVENT_MS,
  execStart,
  freePort,
  loopback,
  makeCerts,
  READY_MS,
  registered,
  Relay,
  ROOT,
  runScript,
  Script,
  SOURCE_FLAGS,
  TEST_CALL_TIMEOUT_MS,
  waitFor,
  withBed,
} from "../testbed/testbed.ts";
import { UsageError } from "../lib/cli.ts";

const lo = loopback(import.meta.url);
const PREFIX = "/services";

function record(service: string, ip: string, port: number, extra: Partial<ServiceRecord> = {}): string {
  return encodeRecord({
    host: "testhost",
    ipv4_addr: ip,
    port,
    service,
    registered_at: new Date().toISOString(),
    meta: {},
    ...extra,
  });
}

// ---------------------------------------------------------------------------
// A strict parser of Prometheus' text format 0.0.4

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/;
const VALUE = /^(?:[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)|NaN|[+-]Inf)$/;

/** Parses the exposition format, throwing at the first line it does not allow; gives each series' value. */
function parseMetrics(text: string): Map<string, number> {
  if (!text.endsWith("\n")) throw new SyntaxError("the exposition does not end with a newline");
  const types = new Map<string, string>();
  const helped = new Set<string>();
  const series = new Map<string, number>();
  const done = new Set<string>();
  let current: string | undefined;
  for (const [i, line] of text.slice(0, -1).split("\n").entries()) {
    const fail = (why: string) => new SyntaxError(`line ${i + 1} ${JSON.stringify(line)}: ${why}`);
    if (line.startsWith("#")) {
      const m = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
      if (!m) throw fail("a comment other than HELP or TYPE");
      const [, what, name, rest] = m;
      if (!METRIC_NAME.test(name)) throw fail("a bad metric name");
      if (what === "TYPE") {
        if (!/^(counter|gauge|histogram|summary|untyped)$/.test(rest)) throw fail("an unknown type");
        if (types.has(name)) throw fail("a second TYPE");
        if (series.size && [...series.keys()].some((k) => k.split("{")[0] === name)) throw fail("TYPE after samples");
        types.set(name, rest);
      } else {
        if (helped.has(name)) throw fail("a second HELP");
        helped.add(name);
      }
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$/.exec(line);
    if (!m) throw fail("not a sample");
    const [, name, labels, value] = m;
    if (!types.has(name)) throw fail("a sample with no TYPE before it");
    if (types.get(name) === "counter" && !name.endsWith("_total")) throw fail("a counter not named *_total");
    if (name !== current) {
      if (done.has(name)) throw fail("samples of a family not together");
      if (current) done.add(current);
      current = name;
    }
    const pairs: string[] = [];
    let rest = labels ?? "";
    while (rest !== "") {
      const l = LABEL.exec(rest);
      if (!l) throw fail("bad labels");
      pairs.push(`${l[1]}="${l[2]}"`);
      rest = rest.slice(l[0].length);
      if (l[3] === "," && rest === "") throw fail("a trailing comma");
    }
    if (!VALUE.test(value)) throw fail("a bad value");
    const id = `${name}{${pairs.join(",")}}`;
    if (series.has(id)) throw fail("a series twice");
    series.set(id, Number(value));
  }
  return series;
}

Deno.test("parseMetrics() is strict: it refuses what Prometheus refuses", () => {
  assert.equal(parseMetrics("# TYPE a gauge\na 1\n").get("a{}"), 1);
  for (
    const bad of [
      "# TYPE a gauge\na 1", // no final newline
      "a 1\n", // no TYPE
      '# TYPE a gauge\na{x="1"} one\n',
      "# TYPE a gauge\na{x=1} 1\n",
      "# TYPE a gauge\na 1\na 2\n",
      "# TYPE a counter\na 1\n",
      '# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na{x="y"} 1\n',
      "# random comment\n",
    ]
  ) {
    assert.throws(() => parseMetrics(bad), SyntaxError, bad);
  }
});

// ---------------------------------------------------------------------------
// Pure parts

Deno.test("parseListen() and parseServe() take HOST:PORT and both TLS files; refuse the rest with UsageError", () => {
  assert.deepEqual(parseListen(`${lo.ip(9)}:8379`), { host: lo.ip(9), port: 8379 });
  assert.deepEqual(parseListen("[::1]:80"), { host: "::1", port: 80 });
  assert.deepEqual(parseServe({}, []).listen, parseListen(DEFAULT_LISTEN));
  assert.equal(DEFAULT_LISTEN, "127.0.0.1:8379");
  for (const bad of ["8379", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "300.0.0.1:80", "example.com:80", ""]) {
    assert.throws(() => parseListen(bad), UsageError, bad);
  }
  assert.throws(() => parseServe({ "listen-cert": "/a.pem" }, []), /expected both --listen-cert and --listen-key/);
  assert.throws(() => parseServe({}, ["apache"]), /expected none/);
  assert.deepEqual(parseServe({ "listen-cert": "/a", "listen-key": "/b", "password-file": "/p" }, []), {
    listen: parseListen(DEFAULT_LISTEN),
    listenCert: "/a",
    listenKey: "/b",
    passwordFile: "/p",
  });
});

Deno.test("classify() names each change; historyTimeline() dates history from registered_at, marked approximate", () => {
  const key = instanceKey(PREFIX, "apache", "10.0.0.1", 80);
  const up = record("apache", "10.0.0.1", 80, { registered_at: "2026-01-01T00:00:00.000Z" });
  const sick = record("apache", "10.0.0.1", 80, { registered_at: "2026-01-01T00:00:00.000Z", status: { ok: false } });
  const moved = record("apache", "10.0.0.1", 80, { registered_at: "2026-01-01T00:00:00.000Z", meta: { a: "b" } });
  const table: [string | undefined, string | undefined, string | undefined][] = [
    [undefined, up, "registered"],
    [up, undefined, "gone"],
    [up, sick, "status"],
    [up, moved, "changed"],
    [up, up, undefined],
  ];
  for (const [before, after, kind] of table) assert.equal(classify(PREFIX, key, before, after)?.kind, kind);
  assert.equal(classify(PREFIX, "/services/deeper/a/b", undefined, up), undefined, "not an instance key");
  const later = Date.parse("2026-01-01T01:00:00.000Z");
  const timeline = historyTimeline(PREFIX, [
    { type: "put", key, value: up, revision: "5" },
    { type: "put", key, value: sick, revision: "6" },
    { type: "delete", key, revision: "7" },
  ], later);
  assert.deepEqual(timeline.map((e) => [e.revision, e.kind, new Date(e.at).toISOString(), e.approx]), [
    ["5", "registered", "2026-01-01T00:00:00.000Z", true],
    ["6", "status", "2026-01-01T00:00:00.000Z", true],
    ["7", "gone", "2026-01-01T00:00:00.000Z", true],
  ]);
  // a delete of a key put before the window is still its departure; with no dated change near, the time of reading
  const undated = historyTimeline(PREFIX, [{ type: "delete", key, revision: "9" }], later);
  assert.deepEqual(undated.map((e) => [e.kind, e.at, e.approx]), [["gone", later, true]]);
});

Deno.test("RegistryView: an id resumes with exactly the events after it; an old or foreign id gets a resync", () => {
  const view = new RegistryView(PREFIX, entryJson, 1_000);
  const key = (n: number) => instanceKey(PREFIX, "apache", `10.0.0.${n}`, 80);
  view.listed([{ key: key(1), value: record("apache", "10.0.0.1", 80), lease: "0", modRevision: "2" }], "2", 2_000);
  const id = view.lastId;
  view.changed({ type: "put", key: key(2), value: record("apache", "10.0.0.2", 80), revision: "3" }, 3_000);
  view.changed({ type: "delete", key: key(1), revision: "4" }, 4_000);
  const resumed = view.catchUp(id, 5_000);
  const data = [...resumed.matchAll(/^data: (.*)$/gm)].map((m) => JSON.parse(m[1]));
  assert.deepEqual(data.filter((d) => d.change).map((d) => [d.change, d.key]), [
    ["registered", key(2)],
    ["gone", key(1)],
  ]);
  assert.ok(!resumed.includes("event: resync"));
  const ids = [...resumed.matchAll(/^id: (.*)$/gm)].map((m) => m[1]);
  assert.equal(ids.at(-1), view.lastId);
  assert.equal(view.catchUp(view.lastId, 5_000), "", "nothing after the last id");
  for (const stale of [undefined, "zz.1", `${view.epoch}.999`, "garbage"]) {
    const text = view.catchUp(stale, 5_000);
    assert.match(text, /^id: .*\nevent: resync\n/, String(stale));
    assert.ok(text.includes(`"key":"${key(2)}"`) && !text.includes(`"key":"${key(1)}"`));
  }
});

Deno.test("RegistryView keeps the listing while etcd is unreachable and applies the difference of the next one", () => {
  const view = new RegistryView(PREFIX, entryJson, 0);
  const v = (n: number) => ({
    key: instanceKey(PREFIX, "web", `10.0.0.${n}`, 80),
    value: record("web", `10.0.0.${n}`, 80, { registered_at: "2026-01-01T00:00:00.000Z" }),
    lease: "0",
    modRevision: "1",
  });
  view.waiting(500); // before any listing: still connecting, not a stale empty listing
  assert.equal(view.servicesJson(600).state, "connecting");
  assert.equal(parseMetrics(formatMetrics(view, 600, 0)).get("registry_etcd_up{}"), 0);
  view.listed([v(1), v(2)], "10", 1_000);
  view.waiting(2_000);
  assert.equal(view.state, "stale");
  assert.deepEqual(view.servicesJson(3_000).services, { web: 2 });
  assert.equal(view.servicesJson(3_000).lastHeard, new Date(2_000).toISOString());
  const m = parseMetrics(formatMetrics(view, 3_000, 0));
  assert.equal(m.get("registry_etcd_up{}"), 0);
  assert.equal(m.get('registry_instances{service="web"}'), 2);
  view.listed([v(2), v(3)], "12", 4_000);
  assert.equal(view.state, "live");
  assert.deepEqual(view.entriesJson("web").map((e) => e.key), [v(2).key, v(3).key]);
  assert.deepEqual(view.timeline.map((e) => [e.kind, e.address, e.approx]), [
    ["gone", "10.0.0.1:80", true],
    ["registered", "10.0.0.3:80", true],
  ]);
  const after = parseMetrics(formatMetrics(view, 5_000, 3));
  assert.equal(after.get("registry_watch_restarts_total{}"), 1);
  assert.equal(after.get('registry_changes_total{kind="gone"}'), 1);
  assert.equal(after.get("registry_last_change_age_seconds{}"), 1);
  assert.equal(after.get("registry_event_streams{}"), 3);
});

Deno.test("route(): read-only, strict headers on every answer, loopback Host names only, a password when asked", () => {
  const view = new RegistryView(PREFIX, entryJson, 0);
  for (const method of ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"]) {
    const r = route({ method, url: "/v1/services", host: "localhost" }, view, 0);
    assert.ok(!("events" in r) && r.status === 405 && r.headers.Allow === "GET, HEAD", method);
  }
  for (const url of ["/", "/app.js", "/app.css", "/v1/services", "/v1/services/web", "/metrics", "/nowhere"]) {
    const r = route({ method: "GET", url, host: "localhost:8379" }, view, 0);
    assert.ok(!("events" in r));
    assert.equal(r.headers["Content-Security-Policy"], CSP, url);
    assert.equal(r.headers["X-Content-Type-Options"], "nosniff", url);
  }
  assert.match(CSP, /default-src 'none'/);
  assert.match(CSP, /frame-ancestors 'none'/);
  assert.doesNotMatch(CSP, /unsafe/);
  const html = route({ method: "GET", url: "/", host: "localhost" }, view, 0);
  assert.ok(!("events" in html) && !/<script>|style=|<style|\bon[a-z]+=/i.test(html.body), "no inline script or style");
  const rebound = route({ method: "GET", url: "/v1/services", host: "evil.example:8379" }, view, 0, {
    loopbackOnly: true,
  });
  assert.equal((rebound as { status: number }).status, 421);
  const digest = passwordDigest("s3cret");
  const auth = (value?: string) =>
    (route({ method: "GET", url: "/", host: "localhost", authorization: value }, view, 0, { digest }) as {
      status: number;
    }).status;
  assert.equal(auth(), 401);
  assert.equal(auth(`Basic ${btoa("any:wrong")}`), 401);
  assert.equal(auth(`Basic ${btoa("any:s3cret")}`), 200);
  assert.ok(checkPassword(`Basic ${btoa(":s3cret")}`, digest));
});

// ---------------------------------------------------------------------------
// The real thing

/** `registry serve` from source on an address of this file's, once it listens. */
async function startServe(
  endpoints: string[],
  host: string,
  extra: string[] = [],
  flags: string[] = SOURCE_FLAGS,
): Promise<{ script: Script; url: string }> {
  const port = await freePort(host);
  const script = Script.deno("registry.ts", [
    "serve",
    `--endpoints=${endpoints.join(",")}`,
    `--listen=${host}:${port}`,
    ...extra,
  ], { flags });
  try {
    const line = await script.waitForLog(/^started listen=/, READY_MS);
    return { script, url: /listen=(\S+)/.exec(line)![1].replace(/\/$/, "") };
  } catch (err) {
    await script.stop();
    throw err;
  }
}

/** A page on `url` in a fresh context, with every dialog, console line and page error collected. */
async function openPage(browser: Chromium, url: string) {
  const cdp = await chromium.connectOverCDP(browser.endpoint);
  const context = await cdp.newContext({ viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  const dialogs: string[] = [];
  const console: string[] = [];
  const errors: string[] = [];
  page.on("dialog", (d) => {
    dialogs.push(d.message());
    void d.dismiss();
  });
  page.on("console", (m) => console.push(m.text()));
  page.on("pageerror", (e) => errors.push(String(e)));
  const response = await page.goto(`${url}/`);
  return { cdp, page, response, dialogs, console, errors, close: () => cdp.close() };
}

/** The keys of the rows the page shows now, sorted. */
async function pageKeys(page: Page): Promise<string[]> {
  const keys = await page.evaluate(`Array.from(document.querySelectorAll("tr.instance"), (r) => r.dataset.key)`);
  return (keys as string[]).sort();
}

/** The cells' text of the row of `key` (address, host, age, status, meta, Addr). */
async function row(page: Page, key: string): Promise<string[]> {
  const cells = await page.evaluate(
    `Array.from(document.querySelectorAll("tr.instance")).filter((r) => r.dataset.key === ${JSON.stringify(key)})
      .map((r) => Array.from(r.querySelectorAll("td"), (td) => td.textContent))[0]`,
  );
  return cells as string[];
}

async function withServe(
  fn: (
    ctx: { cluster: EtcdCluster; url: string; browser: Chromium },
  ) => Promise<void>,
  options: { viaRelay?: (relay: Relay) => void } = {},
) {
  await withBed(lo, async (bed) => {
    let endpoints = bed.cluster.endpoints;
    if (options.viaRelay) {
      const relay = await Relay.start(bed.cluster.endpoints[0], lo.ip(200));
      bed.cleanups.push(() => relay.close());
      options.viaRelay(relay);
      endpoints = [relay.url];
    }
    const serve = await startServe(endpoints, lo.ip(100));
    bed.cleanups.push(() => serve.script.stop());
    const browser = await Chromium.start(lo.ip(250));
    bed.cleanups.push(() => browser.stop());
    await fn({
      cluster: bed.cluster,
      url: serve.url,
      browser,
    });
  });
}

async function etcdctl(endpoints: string[], ...args: string[]): Promise<void> {
  const out = await new Deno.Command("etcdctl", {
    args,
    env: { ETCDCTL_API: "3", ETCDCTL_ENDPOINTS: endpoints.join(",") },
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`etcdctl ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
}

Deno.test("serve: the page lists what registry ls lists; a deregistered instance leaves it and its timeline shows why", async () => {
  await withBed(lo, async (bed) => {
    const a = await registered(bed, lo.ip(1));
    const b = await registered(bed, lo.ip(2));
    const extra = instanceKey(PREFIX, "redis", "10.0.0.7", 6379);
    await etcdctl(
      bed.cluster.endpoints,
      "put",
      extra,
      record("redis", "10.0.0.7", 6379, { meta: { role: "primary" } }),
    );
    await etcdctl(bed.cluster.endpoints, "put", `${PREFIX}/redis/not-an-address`, "{}");
    const serve = await startServe(bed.cluster.endpoints, lo.ip(100));
    bed.cleanups.push(() => serve.script.stop());
    const browser = await Chromium.start(lo.ip(250));
    bed.cleanups.push(() => browser.stop());
    const p = await openPage(browser, serve.url);
    bed.cleanups.push(p.close);

    const ls = await runScript("registry.ts", ["ls", "--json", `--endpoints=${bed.cluster.endpoints[0]}`], {
      flags: SOURCE_FLAGS,
    });
    assert.equal(ls.code, 0, ls.stderr);
    const listed = (JSON.parse(ls.stdout) as { key: string }[]).map((e) => e.key).sort();
    assert.equal(listed.length, 4);
    await waitFor(async () => (await pageKeys(p.page)).length === listed.length, "the page's rows", EVENT_MS);
    assert.deepEqual(await pageKeys(p.page), listed);
    const cells = await row(p.page, a.key);
    assert.equal(cells[0], `${lo.ip(1)}:${a.t.port}`);
    assert.equal(cells[1], "testhost");
    assert.equal(cells[5], `${lo.ip(1)}:${a.t.port}`, "Addr");
    assert.equal((await row(p.page, extra))[4], "role=primary");
    // the API gives the records as ls --json does
    const api = JSON.parse(await get(`${serve.url}/v1/entries`));
    assert.deepEqual(api, JSON.parse(ls.stdout));
    await waitFor(() => p.page.locator("#state").textContent().then((t) => t === "live"), "live", EVENT_MS);

    // the target dies: the secretary deregisters, the key is deleted, the row goes
    await a.t.setMode("closed");
    await waitFor(async () => !(await bed.present(a.key)), "the key's delete", EVENT_MS);
    await p.page.locator(`tr.instance[data-key="${a.key}"]`).waitFor({ state: "detached", timeout: EVENT_MS });
    assert.deepEqual(await pageKeys(p.page), listed.filter((k) => k !== a.key));
    assert.ok(await row(p.page, b.key), "the other instance stays");

    // its timeline, from etcd's history (registered) and live (gone), newest first, with times
    await p.page.locator(`tr.instance[data-key="${b.key}"]`).click();
    await p.page.locator("#detail-timeline li").first().waitFor({ timeout: EVENT_MS });
    await p.page.locator("#close").click();
    const apache = p.page.locator("section", { has: p.page.locator("h2", { hasText: /^apache$/ }) });
    await apache.locator("summary").click();
    const lines = await waitFor(
      async () => {
        const texts = await apache.locator("ol.timeline li").allTextContents();
        return texts.some((t) => t.includes("gone") && t.includes(`${lo.ip(1)}:${a.t.port}`)) && texts;
      },
      "the gone entry in apache's timeline",
      EVENT_MS,
    );
    const mine = lines.filter((t) => t.includes(`${lo.ip(1)}:${a.t.port}`));
    assert.match(mine[0], /^\d\d:\d\d:\d\d {2}gone {2}apache /, mine.join("\n"));
    assert.ok(mine.slice(1).some((t) => /^≈?\d\d:\d\d:\d\d {2}registered /.test(t)), mine.join("\n"));

    // filters: by text (meta too), by service
    const visible = async () =>
      ((await p.page.evaluate(
        `Array.from(document.querySelectorAll("tr.instance"), (r) => r.closest("section").hidden || r.hidden ? "" : r.dataset.key)`,
      )) as string[]).filter(Boolean).sort();
    await p.page.fill("#filter", "PRIMARY");
    assert.deepEqual(await visible(), [extra]);
    await p.page.fill("#filter", "");
    await p.page.selectOption("#service", "apache");
    assert.deepEqual(await visible(), [b.key]);
    await p.page.selectOption("#service", "");
    assert.equal((await visible()).length, listed.length - 1);
    assert.deepEqual(p.dialogs, []);
    assert.deepEqual(p.errors, []);
  });
});

Deno.test("serve: a record's markup, </script> and bidi controls are shown as text, no script runs, the CSP is sent", async () => {
  await withServe(async ({ cluster, url, browser }) => {
    const hostile = instanceKey(PREFIX, "evil", "10.0.0.66", 80);
    const host = `<img src=x onerror="alert(1);console.log('pwned-host')">`;
    const meta = {
      note: `</script><script>alert(2);console.log('pwned-meta')</script>`,
      bidi: "abc\u202edcba\u2066x",
      "<b onmouseover=alert(3)>": "<svg onload=alert(4)>",
    };
    await etcdctl(cluster.endpoints, "put", hostile, record("evil", "10.0.0.66", 80, { host, meta }));
    const p = await openPage(browser, url);
    try {
      const csp = p.response?.headers()["content-security-policy"] ?? "";
      assert.equal(csp, CSP);
      assert.equal(p.response?.headers()["x-content-type-options"], "nosniff");
      await p.page.locator(`tr.instance[data-key="${hostile}"]`).waitFor({ timeout: EVENT_MS });
      const cells = await row(p.page, hostile);
      assert.equal(cells[1], host);
      assert.ok(cells[4].includes(meta.note), cells[4]);
      assert.ok(cells[4].includes("abc\\u202edcba\\u2066x"), cells[4]);
      assert.ok(!cells[4].includes("\u202e"));
      // a later change, rendered: anything the record could have run has had its chance
      const later = instanceKey(PREFIX, "evil", "10.0.0.67", 80);
      await etcdctl(cluster.endpoints, "put", later, record("evil", "10.0.0.67", 80));
      await p.page.locator(`tr.instance[data-key="${later}"]`).waitFor({ timeout: EVENT_MS });
      await p.page.locator(`tr.instance[data-key="${hostile}"]`).click();
      await waitFor(
        () => p.page.locator("#detail-record").textContent().then((t) => (t ?? "").includes("onerror")),
        "the record in the detail",
        EVENT_MS,
      );
      const elements = await p.page.evaluate(
        `document.querySelectorAll("img, script:not([src]), b, svg:not(.plot)").length`,
      );
      assert.equal(elements, 0, "no element made from a record");
      assert.deepEqual(p.dialogs, []);
      assert.deepEqual(p.console.filter((l) => l.includes("pwned")), []);
      assert.deepEqual(p.errors, []);
    } finally {
      await p.close();
    }
  });
});

Deno.test("serve: etcd stopped, the page says so and keeps the instances; etcd back, it converges", async () => {
  let relay: Relay | undefined;
  await withServe(async ({ cluster, url, browser }) => {
    const key = (n: number) => instanceKey(PREFIX, "web", `10.0.1.${n}`, 80);
    for (const n of [1, 2, 3]) await etcdctl(cluster.endpoints, "put", key(n), record("web", `10.0.1.${n}`, 80));
    const p = await openPage(browser, url);
    try {
      await waitFor(async () => (await pageKeys(p.page)).length === 3, "three rows", EVENT_MS);
      await waitFor(() => p.page.locator("#state").textContent().then((t) => t === "live"), "live", EVENT_MS);
      await cluster.members[0].stop("SIGKILL");
      await waitFor(
        () => p.page.locator("#state").textContent().then((t) => (t ?? "").startsWith("stale since")),
        "the page saying etcd is unreachable",
        EVENT_MS,
      );
      assert.deepEqual(await pageKeys(p.page), [key(1), key(2), key(3)]);
      const services = JSON.parse(await get(`${url}/v1/services`));
      assert.equal(services.state, "stale");
      assert.deepEqual(services.services, { web: 3 });
      assert.equal(parseMetrics(await get(`${url}/metrics`)).get("registry_etcd_up{}"), 0);
      // etcd back, changed while serve could not see it: serve lists again and applies the difference
      relay!.cut();
      cluster.members[0].start();
      await cluster.waitReady();
      await etcdctl(cluster.endpoints, "del", key(1));
      await etcdctl(cluster.endpoints, "put", key(4), record("web", "10.0.1.4", 80));
      relay!.heal();
      await waitFor(
        async () => JSON.stringify(await pageKeys(p.page)) === JSON.stringify([key(2), key(3), key(4)]),
        "the page to converge: 10.0.1.1 gone, 10.0.1.4 shown",
        READY_MS,
      );
      await waitFor(() => p.page.locator("#state").textContent().then((t) => t === "live"), "live again", EVENT_MS);
      assert.deepEqual(p.errors, []);
    } finally {
      await p.close();
    }
  }, { viaRelay: (r) => (relay = r) });
});

/** GET over plain HTTP through no proxy; the body (throws on a status other than 200). */
function get(url: string, headers: Record<string, string> = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { headers, timeout: 10_000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c) => (body += c));
      res.on("end", () => res.statusCode === 200 ? resolve(body) : reject(new Error(`${url}: ${res.statusCode}`)));
    });
    req.on("timeout", () => req.destroy(new Error(`${url}: timed out`)));
    req.on("error", reject);
    req.end();
  });
}

/** An open /v1/events stream: the frames read so far, as {id, event, data}. */
function events(url: string, lastEventId?: string) {
  const frames: { id?: string; event?: string; data?: string }[] = [];
  let buffer = "";
  const req = httpRequest(
    `${url}/v1/events`,
    { headers: lastEventId ? { "Last-Event-ID": lastEventId } : {} },
    (res) => {
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        buffer += chunk;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const frame: { id?: string; event?: string; data?: string } = {};
          for (const line of block.split("\n")) {
            const colon = line.indexOf(": ");
            if (colon > 0) frame[line.slice(0, colon) as "id" | "event" | "data"] = line.slice(colon + 2);
          }
          if (frame.data !== undefined) frames.push(frame);
        }
      });
      res.on("error", () => {});
    },
  );
  req.on("error", () => {});
  req.end();
  return { frames, close: () => req.destroy() };
}

Deno.test("serve: /v1/events resumes from an id without a gap; /metrics parses strictly; writes get 405", async () => {
  await withServe(async ({ cluster, url }) => {
    const key = (n: number) => instanceKey(PREFIX, "db", `10.0.2.${n}`, 5432);
    await etcdctl(cluster.endpoints, "put", key(1), record("db", "10.0.2.1", 5432));
    const first = events(url);
    await waitFor(() => first.frames.some((f) => f.data?.includes(key(1))), "the first stream's listing", EVENT_MS);
    await etcdctl(cluster.endpoints, "put", key(2), record("db", "10.0.2.2", 5432));
    await waitFor(() => first.frames.some((f) => f.data?.includes(key(2))), "the change", EVENT_MS);
    const lastId = first.frames.at(-1)!.id!;
    first.close();
    // changes while no stream is open
    for (const n of [3, 4, 5]) await etcdctl(cluster.endpoints, "put", key(n), record("db", `10.0.2.${n}`, 5432));
    await etcdctl(cluster.endpoints, "del", key(2));
    await waitFor(
      async () => (JSON.parse(await get(`${url}/v1/services`)).services.db === 4),
      "serve's view",
      EVENT_MS,
    );
    const resumed = events(url, lastId);
    try {
      await waitFor(
        () => resumed.frames.some((f) => f.data === `{"change":"gone","key":"${key(2)}"}`),
        "resume",
        EVENT_MS,
      );
      const changes = resumed.frames.filter((f) => f.event === undefined).map((f) => JSON.parse(f.data!));
      assert.deepEqual(changes.map((c) => [c.change, c.key]), [
        ["registered", key(3)],
        ["registered", key(4)],
        ["registered", key(5)],
        ["gone", key(2)],
      ]);
      assert.ok(!resumed.frames.some((f) => f.event === "resync"));
      const seqs = resumed.frames.map((f) => Number(f.id!.split(".")[1]));
      assert.equal(seqs[0], Number(lastId.split(".")[1]) + 1, "the first event after the id");
      assert.deepEqual(seqs, seqs.map((_, i) => seqs[0] + i), "no gap");
    } finally {
      resumed.close();
    }
    const foreign = events(url, "abc.1");
    try {
      await waitFor(() => foreign.frames.some((f) => f.event === "state"), "a resync", EVENT_MS);
      assert.equal(foreign.frames[0].event, "resync");
    } finally {
      foreign.close();
    }
    const metrics = parseMetrics(await get(`${url}/metrics`));
    assert.equal(metrics.get('registry_instances{service="db"}'), 4);
    assert.equal(metrics.get("registry_etcd_up{}"), 1);
    assert.ok(metrics.get('registry_changes_total{kind="registered"}')! >= 4);
    assert.ok(metrics.has("registry_last_change_age_seconds{}"));
    const write = await fetchStatus(`${url}/v1/services`, "POST");
    assert.equal(write, 405);
  });
});

function fetchStatus(url: string, method: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    req.on("error", reject);
    req.end("x");
  });
}

Deno.test("serve: over TLS with a password read from a file", async () => {
  await withBed(lo, async (bed) => {
    const certs = await makeCerts([lo.ip(101)]);
    bed.cleanups.push(() => Deno.remove(certs.dir, { recursive: true }));
    const passwordFile = `${certs.dir}/password`;
    await Deno.writeTextFile(passwordFile, "correct horse\n");
    const flags = [...SOURCE_FLAGS.slice(0, 2), `--allow-read=node_modules,${certs.dir}`];
    const serve = await startServe(bed.cluster.endpoints, lo.ip(101), [
      `--listen-cert=${certs.serverCert}`,
      `--listen-key=${certs.serverKey}`,
      `--password-file=${passwordFile}`,
    ], flags);
    bed.cleanups.push(() => serve.script.stop());
    assert.match(serve.url, /^https:/);
    const client = Deno.createHttpClient({ caCerts: [await Deno.readTextFile(certs.ca)], proxy: undefined });
    try {
      const denied = await fetch(`${serve.url}/v1/services`, { client });
      await denied.body?.cancel();
      assert.equal(denied.status, 401);
      assert.match(denied.headers.get("www-authenticate") ?? "", /^Basic /);
      const allowed = () =>
        fetch(`${serve.url}/v1/services`, { client, headers: { Authorization: `Basic ${btoa("ops:correct horse")}` } });
      const first = await allowed();
      assert.equal(first.status, 200);
      await first.body?.cancel();
      // it listens before its first listing: wait for that
      await waitFor(async () => (await (await allowed()).json()).state === "live", "live over TLS", EVENT_MS);
    } finally {
      client.close();
    }
  });
});

Deno.test("serve: bad flags and unreadable files give one line and exit 2", async () => {
  const cases: [string[], RegExp][] = [
    [["serve", "--listen", "nowhere"], /^registry: Cannot use --listen "nowhere": expected HOST:PORT/],
    [["serve", "--listen-cert", "/a.pem"], /^registry: Cannot use --listen-cert "\/a.pem" alone/],
    [["serve", "apache"], /^registry: Cannot use arguments "apache": expected none/],
    [["ls", "--listen", "127.0.0.1:1"], /^registry: Cannot use --listen with "ls": expected registry serve/],
    [
      ["serve", "--password-file", "/nonexistent/password", "--listen", `${lo.ip(102)}:1`],
      /^registry: Cannot use --password-file "\/nonexistent\/password": /,
    ],
  ];
  for (const [args, pattern] of cases) {
    const r = await runScript("registry.ts", args, { flags: ["--allow-all"] });
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, pattern);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.equal(r.stdout, "");
  }
});

Deno.test("serve: a screenshot of the page with a few services (docs/serve.png)", async () => {
  await withBed(lo, async (bed) => {
    await registered(bed, lo.ip(3));
    await registered(bed, lo.ip(4));
    const put = (k: string, v: string) => etcdctl(bed.cluster.endpoints, "put", k, v);
    const web = (n: number) => instanceKey(PREFIX, "web", `10.0.3.${n}`, 8080);
    // registered over the last 40 minutes, as far as the records say: history is dated by registered_at
    const ago = (minutes: number) => new Date(Date.now() - minutes * 60_000).toISOString();
    for (const n of [1, 2, 3, 4]) {
      await put(
        web(n),
        record("web", `10.0.3.${n}`, 8080, {
          host: `web-${n}`,
          meta: { zone: n % 2 ? "a" : "b" },
          registered_at: ago(50 - 10 * n),
        }),
      );
    }
    await etcdctl(bed.cluster.endpoints, "del", web(4));
    await put(
      web(3),
      record("web", "10.0.3.3", 8080, {
        host: "web-3",
        meta: { zone: "a" },
        status: { load: "0.42" },
        registered_at: ago(20),
      }),
    );
    await put(
      instanceKey(PREFIX, "grpc-users", "10.0.4.1", 50051),
      record("grpc-users", "10.0.4.1", 50051, { host: "users-1", meta: { version: "2.3.1" }, registered_at: ago(5) }),
    );
    const serve = await startServe(bed.cluster.endpoints, lo.ip(103));
    bed.cleanups.push(() => serve.script.stop());
    const browser = await Chromium.start(lo.ip(250));
    bed.cleanups.push(() => browser.stop());
    const p = await openPage(browser, serve.url);
    bed.cleanups.push(p.close);
    await waitFor(async () => (await pageKeys(p.page)).length === 6, "six rows", EVENT_MS);
    await put(web(4), record("web", "10.0.3.4", 8080, { host: "web-4", meta: { zone: "b" } }));
    await waitFor(async () => (await pageKeys(p.page)).length === 7, "seven rows", EVENT_MS);
    const section = p.page.locator("section", { has: p.page.locator("h2", { hasText: /^web$/ }) });
    await section.locator("summary").click();
    await section.locator("ol.timeline li").nth(3).waitFor({ timeout: EVENT_MS });
    await p.page.screenshot({ path: `${ROOT}docs/serve.png`, fullPage: true });
    const png = await Deno.readFile(`${ROOT}docs/serve.png`);
    assert.deepEqual([...png.slice(1, 4)], [0x50, 0x4e, 0x47]);
  });
});

Deno.test("units/registry-serve.service: its command line serves from the bundle with only its permissions; verify passes", async () => {
  await withBed(lo, async (bed) => {
    const dir = await bundles();
    const etcd = new URL(bed.cluster.endpoints[0]).host;
    const listen = `${lo.ip(104)}:${await freePort(lo.ip(104))}`;
    const key = instanceKey(PREFIX, "web", "10.0.5.1", 80);
    await etcdctl(bed.cluster.endpoints, "put", key, record("web", "10.0.5.1", 80));
    const [command, ...args] = await execStart("registry-serve.service", {
      SECRETARY_ETCD: etcd,
      REGISTRY_LISTEN: listen,
    }, dir);
    assert.ok(args.some((a) => a === `--allow-net=${etcd},${listen}`), args.join(" "));
    assert.ok(!args.some((a) => a.startsWith("--allow-read") || a.startsWith("--allow-write") || a === "--allow-all"));
    const proc = new Script(command, args, {}, { clearEnv: true });
    bed.scripts.push(proc);
    await proc.waitForLog(/^started listen=/, READY_MS);
    // it listens before its first listing: wait for that
    await waitFor(
      async () => JSON.parse(await get(`http://${listen}/v1/services`)).state === "live",
      "the first listing",
      EVENT_MS,
    );
    assert.deepEqual(JSON.parse(await get(`http://${listen}/v1/services`)).services, { web: 1 });
    assert.deepEqual(JSON.parse(await get(`http://${listen}/v1/services/web`)).map((e: { key: string }) => e.key), [
      key,
    ]);

    // systemd-analyze verify in a scratch root with the host's own units, the unit alone and with its drop-in
    const root = await Deno.makeTempDir({ prefix: "secretary-serve-root-" });
    bed.cleanups.push(() => Deno.remove(root, { recursive: true }));
    const units = `${root}/etc/systemd/system`;
    await Deno.mkdir(`${units}/registry-serve.service.d`, { recursive: true });
    await Deno.mkdir(`${root}/opt/bin`, { recursive: true });
    await Deno.mkdir(`${root}/usr/lib/systemd`, { recursive: true });
    const copy = await new Deno.Command("cp", { args: ["-a", "/usr/lib/systemd/system", `${root}/usr/lib/systemd/`] })
      .output();
    assert.ok(copy.success);
    await Deno.copyFile(Deno.execPath(), `${root}/opt/bin/deno`);
    await Deno.copyFile(`${dir}/registry.mjs`, `${root}/opt/bin/registry.mjs`);
    await Deno.writeTextFile(`${root}/etc/environment`, "");
    const unit = await Deno.readTextFile(`${ROOT}units/registry-serve.service`);
    await Deno.writeTextFile(`${units}/registry-serve.service`, unit);
    // the drop-in the unit's comments show, uncommented
    const dropIn = /^# {3}\[Service\]\n(?:# {3}.*\n)+/m.exec(unit)![0].replace(/^# {3}/gm, "");
    assert.match(dropIn, /--password-file %d\/password/);
    for (const withDropIn of [false, true]) {
      if (withDropIn) await Deno.writeTextFile(`${units}/registry-serve.service.d/expose.conf`, dropIn);
      const out = await new Deno.Command("systemd-analyze", {
        args: ["verify", `--root=${root}`, `${units}/registry-serve.service`],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
      assert.ok(out.success, text);
      assert.equal(text.trim(), "", `verify complained (drop-in: ${withDropIn})`);
    }
  });
});

Deno.test("serve: the timeline starts from etcd's oldest kept revision after a compaction", async () => {
  await withBed(lo, async (bed) => {
    const key = (n: number) => instanceKey(PREFIX, "queue", `10.0.6.${n}`, 9000);
    const put = (n: number) =>
      etcdctl(
        bed.cluster.endpoints,
        "put",
        key(n),
        record("queue", `10.0.6.${n}`, 9000, {
          registered_at: `2026-01-01T00:0${n}:00.000Z`,
        }),
      );
    await put(1);
    await put(2);
    const kept = await currentRevision(bed.etcd);
    await etcdctl(bed.cluster.endpoints, "del", key(1));
    await new EtcdGateway(bed.cluster.endpoints, TEST_CALL_TIMEOUT_MS).compact(kept);
    await put(3);
    const serve = await startServe(bed.cluster.endpoints, lo.ip(105));
    bed.cleanups.push(() => serve.script.stop());
    const line = await serve.script.waitForLog(/^history read /, EVENT_MS);
    assert.match(line, new RegExp(`from=${kept} `));
    const timeline = JSON.parse(await get(`${serve.url}/v1/timeline`));
    assert.deepEqual(timeline.map((e: { kind: string; address: string }) => [e.kind, e.address]), [
      ["registered", "10.0.6.2:9000"], // the compact revision itself: the oldest etcd keeps
      ["gone", "10.0.6.1:9000"], // put before the window, gone in it
      ["registered", "10.0.6.3:9000"],
    ]);
    assert.deepEqual(timeline.map((e: { at: string }) => e.at), [
      "2026-01-01T00:02:00.000Z",
      "2026-01-01T00:02:00.000Z",
      "2026-01-01T00:03:00.000Z",
    ]);
  });
});
