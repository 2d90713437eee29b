/**
 * `registry render`'s parts: the template's view, printable values, the
 * debounce as a table, --wait's parsing, and the file written atomically,
 * only when it changes, checked staged or in place with the previous file
 * kept on a failure.
 */
import assert from "node:assert/strict";
import { encodeRecord } from "../lib/record.ts";
import {
  parseTemplate,
  type Pending,
  removesAny,
  renderTemplate,
  renderToFile,
  templateView,
  unrunnable,
  type Wait,
  whenToRender,
} from "../lib/render.ts";
import { parseWait } from "../registry.ts";

const record = (ip: string, port: number, meta: Record<string, string> = {}, host = "h") =>
  encodeRecord({ host, ipv4_addr: ip, port, service: "web", registered_at: "2026-01-01T00:00:00Z", meta });

Deno.test("templateView() gives the instances sorted by address, from the key, and leaves out what is not one", () => {
  const values = new Map([
    ["/services/web/10.0.0.10:80", record("10.0.0.10", 80)],
    ["/services/web/10.0.0.9:80", record("10.0.0.9", 80, { weight: "5" })],
    ["/services/web/10.0.0.1:8080", "not json"],
    ["/services/web/x/y", record("10.0.0.2", 80)],
  ]);
  const view = templateView("/services", "web", values);
  assert.equal(view.count, 2);
  assert.equal(view.empty, false);
  assert.deepEqual(view.instances.map((i) => i.address), ["10.0.0.9:80", "10.0.0.10:80"]);
  assert.deepEqual(view.instances[0], {
    key: "/services/web/10.0.0.9:80",
    host: "h",
    ipv4_addr: "10.0.0.9",
    port: 80,
    service: "web",
    registered_at: "2026-01-01T00:00:00Z",
    meta: { weight: "5" },
    address: "10.0.0.9:80",
    ip: "10.0.0.9",
  });
  assert.deepEqual(templateView("/services", "web", new Map()), {
    service: "web",
    instances: [],
    count: 0,
    empty: true,
  });
});

Deno.test("renderTemplate(): {{x}} cannot break a line or the config, {{{x}}} is as stored; the nginx example stays valid when empty", async () => {
  const hostile = templateView(
    "/services",
    "web",
    new Map([["/services/web/10.0.0.1:80", record("10.0.0.1", 80, {}, "h;\n} x {")]]),
  );
  assert.equal(renderTemplate("{{#instances}}{{host}}{{/instances}}", hostile), "h;\\u000a} x {");
  assert.equal(renderTemplate("{{#instances}}{{{host}}}{{/instances}}", hostile), "h;\n} x {");
  const nginx = await Deno.readTextFile(new URL("../units/examples/nginx/apache-upstream.conf.tmpl", import.meta.url));
  const empty = renderTemplate(nginx, templateView("/services", "apache", new Map()));
  assert.match(empty, /upstream apache \{\s*(#[^\n]*\n\s*)*server 127\.0\.0\.1:9 down;\s*\}/);
  const two = renderTemplate(
    nginx,
    templateView(
      "/services",
      "apache",
      new Map([
        ["/services/apache/10.0.0.1:80", record("10.0.0.1", 80, { weight: "3" })],
        ["/services/apache/10.0.0.2:80", record("10.0.0.2", 80)],
      ]),
    ),
  );
  assert.match(two, /server 10\.0\.0\.1:80 weight=3 max_fails=1 fail_timeout=2s;\n\s*server 10\.0\.0\.2:80 max_fails/);
  assert.doesNotMatch(two, /127\.0\.0\.1:9/);
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
  assert.equal(removesAny(new Map([["a", "1"], ["b", "1"]]), new Map([["a", "2"], ["c", "1"]])), true);
  assert.equal(removesAny(new Map([["a", "1"]]), new Map([["a", "2"], ["c", "1"]])), false);
});

Deno.test("parseWait() takes MIN[:MAX], MAX 4 x MIN by default and at least MIN", () => {
  assert.deepEqual(parseWait("2s"), { minMs: 2000, maxMs: 8000 });
  assert.deepEqual(parseWait("500ms:3s"), { minMs: 500, maxMs: 3000 });
  for (const bad of ["", "2", "2s:1s", "1s:2s:3s", "0s"]) assert.throws(() => parseWait(bad), /--wait/, bad);
});

Deno.test("renderToFile(): only on a change, atomically, with the old mode; a failed check keeps the previous file, staged or in place", async () => {
  const dir = await Deno.makeTempDir({ prefix: "secretary-render-unit-" });
  const out = `${dir}/out.conf`;
  const env = { PATH: "/usr/bin:/bin" };
  const files = () => [...Deno.readDirSync(dir)].map((e) => e.name).sort();
  try {
    assert.deepEqual(await renderToFile("one\n", { out, env }), { kind: "replaced" });
    await Deno.chmod(out, 0o640);
    assert.deepEqual(await renderToFile("one\n", { out, env }), { kind: "unchanged" });
    assert.deepEqual(await renderToFile("two\n", { out, env }), { kind: "replaced" });
    assert.equal(Deno.statSync(out).mode! & 0o777, 0o640, "the old file's mode");

    // staged: {path} is the candidate, checked before it is moved in place
    const staged = await renderToFile("bad\n", { out, env, check: ["grep", "-q", "good", "{path}"] });
    assert.equal(staged.kind, "check failed");
    assert.equal(await Deno.readTextFile(out), "two\n");
    assert.deepEqual(files(), ["out.conf"], "a staged file left behind");
    assert.deepEqual(await renderToFile("good\n", { out, env, check: ["grep", "-q", "good", "{path}"] }), {
      kind: "replaced",
    });

    // in place: checked where it goes, the previous text put back on a failure
    const inPlace = await renderToFile("worse\n", { out, env, check: ["grep", "-q", "good", out] });
    assert.equal(inPlace.kind, "check failed");
    assert.match((inPlace as { output: string }).output, /^exit 1/);
    assert.equal(await Deno.readTextFile(out), "good\n");
    assert.equal(Deno.statSync(out).mode! & 0o777, 0o640);
    assert.deepEqual(files(), ["out.conf"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("unrunnable() finds a command by path or in PATH, and says why not", () => {
  assert.equal(unrunnable(["/bin/sh", "-c", "true"], ""), undefined);
  assert.equal(unrunnable(["sh"], "/nonexistent:/bin"), undefined);
  assert.equal(unrunnable(["/etc/passwd"], ""), "no such executable file");
  assert.equal(unrunnable(["no-such-command-here"], "/bin:/usr/bin"), "no executable no-such-command-here in PATH");
});
