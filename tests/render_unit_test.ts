/**
 * `registry render`'s parts: the token check, the weights, the view and
 * what `{{x}}` may insert, the debounce as a table, the reload's retry
 * schedule, the search for the instances that make a check fail, --wait's
 * parsing, and the file written atomically (a random staged name opened
 * exclusively, links kept, mode kept, nothing left behind), only when it
 * changes, checked staged or in place with the previous file kept on a
 * failure.
 */
import assert from "node:assert/strict";
import { Listing } from "../lib/listing.ts";
import { encodeRecord } from "../lib/record.ts";
import { commit, stage, stagedName, targetOf } from "../lib/atomic.ts";
import {
  checkText,
  dropsInstance,
  findCulprits,
  parseWait,
  type Pending,
  Renderer,
  renderToFile,
  retryDelayMs,
  unrunnable,
  type Wait,
  whenToRender,
} from "../lib/render.ts";
import { fitsToken, parseTemplate, renderTemplate, renderView, templateView, weightIn } from "../lib/template.ts";

const record = (ip: string, port: number, meta: Record<string, string> = {}, host = "h") =>
  encodeRecord({ host, ipv4_addr: ip, port, service: "web", registered_at: "2026-01-01T00:00:00Z", meta });

Deno.test("fitsToken() takes letters, digits and ._:/@+=-, 1 to 253 of them, numbers and booleans; nothing else", () => {
  const rows: [unknown, boolean][] = [
    ["web-1.example.com", true],
    ["10.0.0.1:8080", true],
    ["a/b@c+d=e_f", true],
    ["x".repeat(253), true],
    ["x".repeat(254), false],
    ["", false],
    ["1; }", false],
    ["a b", false],
    ["a{", false],
    ["a}", false],
    ["a#b", false],
    ['"a"', false],
    ["'a'", false],
    ["a\nb", false],
    ["é", false],
    [5, true],
    [0, true],
    [NaN, false],
    [true, true],
    [{ a: 1 }, false],
    [["a"], false],
    [null, false],
  ];
  for (const [value, fits] of rows) assert.equal(fitsToken(value), fits, JSON.stringify(value));
});

Deno.test("weightIn() and the view's weights: a whole number in the proxy's range, else absent", () => {
  const rows: [string | undefined, number | undefined, number | undefined, number | undefined][] = [
    // meta.weight, nginx_weight (1-1000), balancer_weight (1-100), haproxy_weight (0-256)
    ["5", 5, 5, 5],
    ["0", undefined, undefined, 0],
    ["1", 1, 1, 1],
    ["100", 100, 100, 100],
    ["101", 101, undefined, 101],
    ["256", 256, undefined, 256],
    ["257", 257, undefined, undefined],
    ["1000", 1000, undefined, undefined],
    ["1001", undefined, undefined, undefined],
    ["abc", undefined, undefined, undefined],
    ["-1", undefined, undefined, undefined],
    ["+5", undefined, undefined, undefined],
    ["5.0", undefined, undefined, undefined],
    [" 5", undefined, undefined, undefined],
    ["1; } server {", undefined, undefined, undefined],
    ["9".repeat(5000), undefined, undefined, undefined],
    [undefined, undefined, undefined, undefined],
  ];
  for (const [weight, nginx, balancer, haproxy] of rows) {
    const meta: Record<string, string> = weight === undefined ? {} : { weight };
    const [view] =
      templateView("/services", "web", new Map([["/services/web/10.0.0.1:80", record("10.0.0.1", 80, meta)]]))
        .instances;
    assert.deepEqual(
      [view.nginx_weight, view.balancer_weight, view.haproxy_weight],
      [nginx, balancer, haproxy],
      `weight ${weight}`,
    );
  }
  assert.equal(weightIn(5, 0, 10), undefined, "a number in JSON is not a weight: meta values are strings");
});

Deno.test("templateView() gives the instances sorted by address, validated fields from the key, and leaves out what is not one", () => {
  const hostileService = JSON.stringify({ ...JSON.parse(record("10.0.0.3", 80)), service: "x; }" });
  const values = new Map([
    ["/services/web/10.0.0.10:80", record("10.0.0.10", 80)],
    ["/services/web/10.0.0.9:80", record("10.0.0.9", 80, { weight: "5" })],
    ["/services/web/10.0.0.3:80", hostileService],
    ["/services/web/10.0.0.1:8080", "not json"],
    ["/services/web/x/y", record("10.0.0.2", 80)],
  ]);
  const view = templateView("/services", "web", values);
  assert.equal(view.count, 3);
  assert.equal(view.empty, false);
  assert.deepEqual(view.instances.map((i) => i.address), ["10.0.0.3:80", "10.0.0.9:80", "10.0.0.10:80"]);
  assert.equal(view.instances[0].service, "web", "the service is the key's, not the record's");
  assert.deepEqual(view.instances[1], {
    key: "/services/web/10.0.0.9:80",
    address: "10.0.0.9:80",
    ip: "10.0.0.9",
    port: 80,
    service: "web",
    host: "h",
    ipv4_addr: "10.0.0.9",
    registered_at: "2026-01-01T00:00:00Z",
    meta: { weight: "5" },
    nginx_weight: 5,
    balancer_weight: 5,
    haproxy_weight: 5,
  });
  assert.deepEqual(templateView("/services", "web", new Map()), {
    service: "web",
    instances: [],
    count: 0,
    empty: true,
  });
});

Deno.test("renderView(): {{x}} inserts only a token, else the instance is left out and named once with its field; {{{x}}} and {{&x}} are raw", () => {
  const values = new Map([
    ["/services/web/10.0.0.1:80", record("10.0.0.1", 80, { weight: "3", zone: "a" })],
    ["/services/web/10.0.0.2:80", record("10.0.0.2", 80, { weight: "1; } server { listen 1.2.3.4:80; }" }, "h;\n}")],
    ["/services/web/10.0.0.3:80", record("10.0.0.3", 80, { zone: "b c" })],
  ]);
  const view = templateView("/services", "web", values);
  const each = "{{#instances}}[{{address}} {{meta.weight}} {{host}} {{meta.zone}}]{{/instances}} {{count}}";
  const rendered = renderView(each, view);
  assert.equal(rendered.text, "[10.0.0.1:80 3 h a] 1");
  assert.deepEqual(rendered.view.instances.map((i) => i.address), ["10.0.0.1:80"]);
  assert.deepEqual(rendered.unfit, [
    { key: "/services/web/10.0.0.2:80", field: "meta.weight" },
    { key: "/services/web/10.0.0.2:80", field: "host" },
    { key: "/services/web/10.0.0.3:80", field: "meta.zone" },
  ]);
  // a field the template does not use does not matter
  assert.equal(
    renderTemplate("{{#instances}}{{address}} {{/instances}}", view),
    "10.0.0.1:80 10.0.0.2:80 10.0.0.3:80 ",
  );
  // raw is explicit, and as stored
  assert.equal(
    renderTemplate("{{#instances}}{{{host}}}|{{&meta.weight}};{{/instances}}", view),
    "h|3;h;\n}|1; } server { listen 1.2.3.4:80; };h|;",
  );
  // outside an instance: not inserted, named without a key
  assert.deepEqual(renderView("{{instances}}{{service}}", view), {
    text: "web",
    view,
    unfit: [{ key: undefined, field: "instances" }],
  });
});

Deno.test("renderTemplate(): names resolve through own properties only: {{constructor}}, {{__proto__}}, {{toString}} give nothing", () => {
  const view = templateView("/services", "web", new Map([["/services/web/10.0.0.1:80", record("10.0.0.1", 80)]]));
  const names = [
    "constructor",
    "__proto__",
    "toString",
    "hasOwnProperty",
    "valueOf",
    "instances.constructor",
    "instances.map",
    "service.constructor",
    "meta.constructor",
    "service.length",
  ];
  for (const name of names) {
    assert.equal(renderTemplate(`{{${name}}}{{{${name}}}}{{#${name}}}S{{/${name}}}`, view), "", name);
    assert.equal(
      renderTemplate(`{{#instances}}{{${name}}}{{{${name}}}}{{#${name}}}S{{/${name}}}{{/instances}}`, view),
      "",
      name,
    );
  }
  assert.equal(renderTemplate("{{^constructor}}none{{/constructor}}", view), "none");
});

Deno.test("the shipped templates use the validated weights, never meta, and stay valid when empty", async () => {
  const read = (path: string) => Deno.readTextFile(new URL(`../units/examples/${path}`, import.meta.url));
  const nginx = await read("nginx/apache-upstream.conf.tmpl");
  const balancer = await read("apache-balancer/apache-balancer.conf.tmpl");
  for (const t of [nginx, balancer]) assert.doesNotMatch(t, /meta/);
  const empty = renderTemplate(nginx, templateView("/services", "apache", new Map()));
  assert.match(empty, /upstream apache \{\s*(#[^\n]*\n\s*)*server 127\.0\.0\.1:9 down;\s*\}/);
  const values = new Map([
    ["/services/apache/10.0.0.1:80", record("10.0.0.1", 80, { weight: "3" })],
    ["/services/apache/10.0.0.2:80", record("10.0.0.2", 80)],
    ["/services/apache/10.0.0.3:80", record("10.0.0.3", 80, { weight: "0" })],
    ["/services/apache/10.0.0.4:80", record("10.0.0.4", 80, { weight: "500" })],
    ["/services/apache/10.0.0.5:80", record("10.0.0.5", 80, { weight: "1; } server { listen 18098; }" })],
  ]);
  const two = renderTemplate(nginx, templateView("/services", "apache", values));
  assert.match(two, /server 10\.0\.0\.1:80 weight=3 max_fails=1 fail_timeout=2s;\n\s*server 10\.0\.0\.2:80 max_fails/);
  assert.match(two, /server 10\.0\.0\.3:80 max_fails/, "weight 0: nginx refuses it, so none");
  assert.match(two, /server 10\.0\.0\.4:80 weight=500 max_fails/);
  assert.match(two, /server 10\.0\.0\.5:80 max_fails/, "a hostile weight is no weight");
  assert.doesNotMatch(two, /127\.0\.0\.1:9|18098/);
  const members = renderTemplate(balancer, templateView("/services", "apache", values));
  assert.match(members, /"http:\/\/10\.0\.0\.1:80" loadfactor=3 retry=2/);
  assert.match(members, /"http:\/\/10\.0\.0\.4:80" retry=2/, "500 is past loadfactor's 100");
  assert.doesNotMatch(members, /18098/);
  assert.throws(() => parseTemplate("{{#instances}}"), SyntaxError);
});

Deno.test("whenToRender() renders a removal at once, waits MIN after the last change, never past MAX after the first", () => {
  const wait: Wait = { minMs: 1000, maxMs: 5000 };
  const rows: [string, Pending, number, Wait | undefined, "now" | "idle" | number][] = [
    ["nothing pending", { removal: false }, 0, wait, "idle"],
    ["no --wait: at once", { firstMs: 0, lastMs: 0, removal: false }, 0, undefined, "now"],
    ["a removal: at once", { firstMs: 0, lastMs: 0, removal: true }, 0, wait, "now"],
    ["an addition: MIN later", { firstMs: 0, lastMs: 0, removal: false }, 0, wait, 1000],
    ["quiet for MIN: now", { firstMs: 0, lastMs: 0, removal: false }, 1000, wait, "now"],
    ["another change: MIN after it", { firstMs: 0, lastMs: 800, removal: false }, 900, wait, 900],
    ["changes going on: MAX after the first", { firstMs: 0, lastMs: 4600, removal: false }, 4700, wait, 300],
    ["MAX reached: now", { firstMs: 0, lastMs: 4990, removal: false }, 5000, wait, "now"],
  ];
  for (const [what, pending, now, w, expected] of rows) assert.deepEqual(whenToRender(pending, now, w), expected, what);
});

Deno.test("dropsInstance() is true when the view loses an instance: a delete, or a put that turns a record into junk", () => {
  const a = "/services/web/10.0.0.1:80";
  const b = "/services/web/10.0.0.2:80";
  const junkKey = "/services/web/nope";
  const good = record("10.0.0.1", 80);
  const rows: [string, [string, string][], [string, string][], boolean][] = [
    ["a delete", [[a, good], [b, good]], [[a, good]], true],
    ["a put that is junk", [[a, good]], [[a, "not json"]], true],
    ["a put that is a record", [[a, good]], [[a, record("10.0.0.1", 80, { w: "1" })]], false],
    ["an addition", [[a, good]], [[a, good], [b, good]], false],
    ["junk deleted: no instance lost", [[a, good], [b, "junk"]], [[a, good]], false],
    ["a key that is not an instance", [[a, good], [junkKey, good]], [[a, good]], false],
    ["junk turned into a record", [[a, "junk"]], [[a, good]], false],
  ];
  const listed = (pairs: [string, string][]) =>
    pairs.map(([key, value]) => ({ key, value, lease: "0", modRevision: "1" }));
  for (const [what, before, after, expected] of rows) {
    const listing = new Listing();
    listing.replace(listed(before));
    assert.equal(listing.replace(listed(after)).some((c) => dropsInstance("/services", c)), expected, what);
  }
});

Deno.test("retryDelayMs(): 1 s doubling to 30 s, jittered down to half", () => {
  const rows: [number, number, number][] = [
    [0, 0, 500],
    [0, 0.999999, 1000],
    [1, 0.5, 1500],
    [2, 0, 2000],
    [4, 0.999999, 16000],
    [5, 0.999999, 30000],
    [5, 0, 15000],
    [50, 0.999999, 30000],
    [5000, 0, 15000],
  ];
  for (const [attempt, random, expected] of rows) {
    assert.equal(retryDelayMs(attempt, random), expected, `${attempt} ${random}`);
  }
});

Deno.test("findCulprits() finds the instances that make a check fail, in few checks, within its budget", async () => {
  const rows: [string, number, number[], number, number[], number[], number][] = [
    // what, how many fresh, the bad ones, budget, culprits, unchecked, at most this many checks
    ["one bad of one", 1, [0], 24, [0], [], 0],
    ["one bad of two", 2, [1], 24, [1], [], 1],
    ["one bad of 100", 100, [37], 24, [37], [], 14],
    ["two bad of 100", 100, [3, 90], 24, [3, 90], [], 24],
    ["all bad of 4", 4, [0, 1, 2, 3], 24, [0, 1, 2, 3], [], 6],
    ["one bad of 1000", 1000, [999], 24, [999], [], 20],
    ["budget spent", 8, [0, 1, 2, 3, 4, 5, 6, 7], 2, [], [0, 1, 2, 3, 4, 5, 6, 7], 2],
    ["budget spent after a culprit", 8, [0, 1, 2, 3, 4, 5, 6, 7], 3, [0], [1, 2, 3, 4, 5, 6, 7], 3],
  ];
  for (const [what, n, bad, budget, culprits, unchecked, maxChecks] of rows) {
    const fresh = [...Array(n).keys()];
    let checks = 0;
    const found = await findCulprits(fresh, (adding) => {
      checks++;
      return Promise.resolve(!adding.some((i) => bad.includes(i)));
    }, budget);
    assert.deepEqual(found.culprits.sort((x, y) => x - y), culprits, what);
    assert.deepEqual(found.unchecked, unchecked, what);
    assert.deepEqual(
      [...found.accepted, ...found.culprits, ...found.unchecked].sort((x, y) => x - y),
      fresh,
      `${what}: each one accepted, a culprit or unchecked`,
    );
    assert.equal(found.checks, checks, what);
    assert.ok(checks <= maxChecks && checks <= budget, `${what}: ${checks} checks`);
  }
  // two that fail only together: the second one tried is the culprit, the first is kept
  const pair = await findCulprits(
    [0, 1, 2],
    (adding) => Promise.resolve(!(adding.includes(0) && adding.includes(2))),
    24,
  );
  assert.deepEqual([pair.accepted.sort(), pair.culprits], [[0, 1], [2]]);
});

Deno.test("parseWait() takes MIN[:MAX], MAX 4 x MIN by default and at least MIN", () => {
  assert.deepEqual(parseWait("2s"), { minMs: 2000, maxMs: 8000 });
  assert.deepEqual(parseWait("500ms:3s"), { minMs: 500, maxMs: 3000 });
  for (const bad of ["", "2", "2s:1s", "1s:2s:3s", "0s"]) assert.throws(() => parseWait(bad), /--wait/, bad);
});

async function inTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "secretary-render-unit-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const names = (dir: string) => [...Deno.readDirSync(dir)].map((e) => e.name).sort();

Deno.test("renderToFile(): only on a change, atomically, with the old mode; a failed check keeps the previous file, staged or in place", async () => {
  await inTempDir(async (dir) => {
    const out = `${dir}/out.conf`;
    const env = { PATH: "/usr/bin:/bin" };
    assert.deepEqual(await renderToFile("one\n", { out, env }), { kind: "replaced" });
    await Deno.chmod(out, 0o640);
    assert.deepEqual(await renderToFile("one\n", { out, env }), { kind: "unchanged" });
    assert.deepEqual(await renderToFile("two\n", { out, env }), { kind: "replaced" });
    assert.equal(Deno.statSync(out).mode! & 0o777, 0o640, "the old file's mode");

    // staged: {path} is the candidate, checked before it is moved in place
    const staged = await renderToFile("bad\n", { out, env, check: ["grep", "-q", "good", "{path}"] });
    assert.equal(staged.kind, "check failed");
    assert.equal(await Deno.readTextFile(out), "two\n");
    assert.deepEqual(names(dir), ["out.conf"], "a staged file left behind");
    assert.deepEqual(await renderToFile("good\n", { out, env, check: ["grep", "-q", "good", "{path}"] }), {
      kind: "replaced",
    });

    // in place: checked where it goes, the previous text put back on a failure
    const inPlace = await renderToFile("worse\n", { out, env, check: ["grep", "-q", "good", out] });
    assert.equal(inPlace.kind, "check failed");
    assert.match((inPlace as { output: string }).output, /^exit 1/);
    assert.equal(await Deno.readTextFile(out), "good\n");
    assert.equal(Deno.statSync(out).mode! & 0o777, 0o640);
    assert.deepEqual(names(dir), ["out.conf"]);

    // checkText() leaves the disk as it was, either way
    assert.equal(await checkText("good again\n", { out, env, check: ["grep", "-q", "good", "{path}"] }), undefined);
    assert.match((await checkText("worse\n", { out, env, check: ["grep", "-q", "good", out] }))!, /^exit 1/);
    assert.equal(await Deno.readTextFile(out), "good\n");
    assert.deepEqual(names(dir), ["out.conf"]);
  });
});

Deno.test("the staged name is random, and a file or link planted at it is never written through", async () => {
  await inTempDir(async (dir) => {
    const target = `${dir}/out.conf`;
    const seen = new Set(Array.from({ length: 50 }, () => stagedName(target)));
    assert.equal(seen.size, 50, "names repeat");
    for (const name of seen) assert.match(name, new RegExp(`^${dir}/\\.out\\.conf\\.render-[0-9a-f]{16}$`));
    await Deno.writeTextFile(`${dir}/victim`, "precious\n");
    const planted = stagedName(target, () => "fixed");
    await Deno.symlink(`${dir}/victim`, planted);
    await assert.rejects(stage(target, "evil\n", undefined, () => "fixed"), /EEXIST|exists/i);
    assert.equal(await Deno.readTextFile(`${dir}/victim`), "precious\n");
    assert.equal(Deno.lstatSync(planted).isSymlink, true, "the planted link was removed or replaced");
  });
});

Deno.test("a link at the output keeps pointing where it did; its target is replaced, with its mode and owner", async () => {
  await inTempDir(async (dir) => {
    await Deno.mkdir(`${dir}/available`);
    await Deno.mkdir(`${dir}/enabled`);
    const real = `${dir}/available/site.conf`;
    await Deno.writeTextFile(real, "old\n");
    await Deno.chmod(real, 0o664);
    const root = Deno.uid() === 0;
    if (root) await Deno.chown(real, 65534, 65534);
    await Deno.symlink("../available/site.conf", `${dir}/enabled/site.conf`);
    const out = `${dir}/enabled/site.conf`;
    assert.equal(await targetOf(out), real);
    assert.deepEqual(await renderToFile("new\n", { out, env: {} }), { kind: "replaced" });
    assert.equal(Deno.lstatSync(out).isSymlink, true, "the link became a plain file");
    assert.equal(Deno.readLinkSync(out), "../available/site.conf");
    assert.equal(await Deno.readTextFile(real), "new\n");
    const info = Deno.statSync(real);
    assert.equal(info.mode! & 0o7777, 0o664, "the mode");
    if (root) assert.deepEqual([info.uid, info.gid], [65534, 65534], "the owner");
    assert.deepEqual(names(`${dir}/available`), ["site.conf"]);
    assert.deepEqual(names(`${dir}/enabled`), ["site.conf"]);
    // a link to a file that is not there yet: that file is made, the link kept
    await Deno.symlink("../available/later.conf", `${dir}/enabled/later.conf`);
    await renderToFile("later\n", { out: `${dir}/enabled/later.conf`, env: {} });
    assert.equal(Deno.lstatSync(`${dir}/enabled/later.conf`).isSymlink, true);
    assert.equal(await Deno.readTextFile(`${dir}/available/later.conf`), "later\n");
  });
});

Deno.test("a failed rename leaves no staged file behind", async () => {
  await inTempDir(async (dir) => {
    await Deno.mkdir(`${dir}/out.conf`);
    await Deno.writeTextFile(`${dir}/out.conf/x`, "");
    await assert.rejects(renderToFile("text\n", { out: `${dir}/out.conf`, env: {} }));
    assert.deepEqual(names(dir), ["out.conf"]);
    const staged = await stage(`${dir}/file`, "text\n", undefined);
    await assert.rejects(commit(staged, `${dir}/out.conf`));
    assert.deepEqual(names(dir), ["out.conf"]);
  });
});

Deno.test("unrunnable() finds a command by path or in PATH, and says why not", () => {
  assert.equal(unrunnable(["/bin/sh", "-c", "true"], ""), undefined);
  assert.equal(unrunnable(["sh"], "/nonexistent:/bin"), undefined);
  assert.equal(unrunnable(["/etc/passwd"], ""), "no such executable file");
  assert.equal(unrunnable(["no-such-command-here"], "/bin:/usr/bin"), "no executable no-such-command-here in PATH");
});

Deno.test("Renderer: a record that fails the check is left out, named once, tried again when it changes; a removal lands", async () => {
  await inTempDir(async (dir) => {
    const out = `${dir}/out.conf`;
    const lines: string[] = [];
    const log = (_level: string, event: string, fields: Record<string, unknown> = {}) =>
      lines.push(`${event} ${Object.entries(fields).map(([k, v]) => `${k}=${v}`).join(" ")}`);
    // a check that refuses any weight above 9, as a proxy with a narrower range would
    const check = ["/bin/sh", "-c", `! grep -q 'w=[0-9][0-9]' "$1"`, "sh", "{path}"];
    const template = "{{#instances}}{{address}} w={{haproxy_weight}}\n{{/instances}}";
    const renderer = new Renderer("/services", "web", template, { out, check, env: { PATH: "/bin" } }, {
      log,
      random: () => 0,
    });
    const key = (n: number) => `/services/web/10.0.0.${n}:80`;
    const values = new Map([1, 2, 3].map((n) => [key(n), record(`10.0.0.${n}`, 80, { weight: "5" })]));
    assert.equal(await renderer.render(values, 0), true);
    assert.equal(await Deno.readTextFile(out), "10.0.0.1:80 w=5\n10.0.0.2:80 w=5\n10.0.0.3:80 w=5\n");

    values.set(key(2), record("10.0.0.2", 80, { weight: "50" }));
    values.set(key(4), record("10.0.0.4", 80, { weight: "7" }));
    assert.equal(await renderer.render(values, 0), true);
    assert.equal(await Deno.readTextFile(out), "10.0.0.1:80 w=5\n10.0.0.3:80 w=5\n10.0.0.4:80 w=7\n");
    assert.equal(lines.filter((l) => l.startsWith(`instance left out key=${key(2)} `)).length, 1, lines.join("\n"));

    // left out without a check while its value stays; named no more
    values.delete(key(1));
    assert.equal(await renderer.render(values, 0), true);
    assert.equal(await Deno.readTextFile(out), "10.0.0.3:80 w=5\n10.0.0.4:80 w=7\n", "the removal landed");
    assert.equal(lines.filter((l) => l.startsWith("instance left out")).length, 1, lines.join("\n"));

    // its record changes: tried again, and in
    values.set(key(2), record("10.0.0.2", 80, { weight: "6" }));
    assert.equal(await renderer.render(values, 0), true);
    assert.equal(await Deno.readTextFile(out), "10.0.0.2:80 w=6\n10.0.0.3:80 w=5\n10.0.0.4:80 w=7\n");

    // a value {{x}} will not insert: left out before any check, named once per value
    values.set(key(3), record("10.0.0.3", 80, { weight: "5" }, "h"));
    const hostile = new Map(values);
    hostile.set(key(5), JSON.stringify({ ...JSON.parse(record("10.0.0.5", 80)), meta: { weight: "1;}" } }));
    const withHost = "{{#instances}}{{address}} {{meta.weight}}\n{{/instances}}";
    const r2 = new Renderer("/services", "web", withHost, { out, env: { PATH: "/bin" } }, { log, random: () => 0 });
    await r2.render(hostile, 0);
    await r2.render(hostile, 0);
    assert.doesNotMatch(await Deno.readTextFile(out), /10\.0\.0\.5/);
    assert.equal(lines.filter((l) => l.startsWith(`instance left out key=${key(5)} reason=meta.weight`)).length, 1);
    assert.deepEqual(names(dir), ["out.conf"]);
  });
});
