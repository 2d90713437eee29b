/**
 * The check kinds and operator controls against a real etcd: exec checks (a
 * real shell script driven by files), HTTP and HTTPS servers that answer as
 * told, drain on SIGTERM and the maintenance file. secretary.ts runs from
 * source as a child process.
 */
import assert from "node:assert/strict";
import { createServer as createHttpServer, type IncomingHttpHeaders, type Server } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { decodeEntry } from "../lib/record.ts";
import {
  type Address,
  type Bed,
  EVENT_MS,
  freePort,
  loopback,
  makeCerts,
  READY_MS,
  registered,
  runScript,
  type Script,
  SOURCE_FLAGS,
  testServer,
  waitFor,
  withBed,
} from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);

/** deno's flags for an exec check: the source flags, and running the command. */
const EXEC_FLAGS = [...SOURCE_FLAGS, "--allow-run"];

/** A check command driven by files in its folder: `mode` says what it does next. */
const CHECK_SCRIPT = `#!/bin/sh
d=$(dirname "$0")
echo >> "$d/runs"
case "$(cat "$d/mode")" in
  ok) cat "$d/status" 2>/dev/null; exit 0 ;;
  fail) echo "queue stuck" >&2; echo "more detail" >&2; exit 3 ;;
  hang) sleep 30 & echo $! > "$d/child"; sleep 30 ;;
  leave) sleep 30 & echo $! > "$d/child"; exit 0 ;;
  big) head -c 4000000 /dev/zero | tr '\\0' x; exit 0 ;;
  bigerr) head -c 4000000 /dev/zero | tr '\\0' x >&2; exit 1 ;;
  text) echo "OK - fine"; exit 0 ;;
  env) printf '{"ip":"%s","port":"%s","service":"%s","secret":"%s"}' \\
         "$SECRETARY_IP" "$SECRETARY_PORT" "$SECRETARY_SERVICE" "$SECRET_TOKEN"; exit 0 ;;
esac
`;

interface ExecCheck {
  dir: string;
  command: string;
  mode(mode: string): Promise<void>;
  status(json: string): Promise<void>;
  /** How many times the command has started: the checks run so far. */
  runs(): Promise<number>;
}

async function execCheck(bed: Bed, mode = "ok"): Promise<ExecCheck> {
  const dir = await Deno.makeTempDir({ prefix: "secretary-check-" });
  bed.cleanups.push(() => Deno.remove(dir, { recursive: true }));
  await Deno.writeTextFile(`${dir}/check.sh`, CHECK_SCRIPT, { mode: 0o755 });
  await Deno.writeTextFile(`${dir}/mode`, mode);
  return {
    dir,
    command: `--command=${dir}/check.sh`,
    mode: (m) => Deno.writeTextFile(`${dir}/mode`, m),
    status: (json) => Deno.writeTextFile(`${dir}/status`, json),
    runs: async () => (await Deno.readTextFile(`${dir}/runs`).catch(() => "")).length,
  };
}

/** An exec-checked secretary for a made-up instance on `host`, once registered. */
async function execRegistered(bed: Bed, check: ExecCheck, host: string, extra: string[] = []) {
  const address: Address = { host, port: await freePort(host) };
  const s = bed.secretary(address, ["--check=exec", check.command, ...extra], EXEC_FLAGS);
  const key = bed.key(address);
  // started from source, its first checks run: the line follows the put's answer
  await s.waitForLog(/^registered key=/, READY_MS);
  assert.ok(await bed.present(key), `${key} is registered`);
  return { s, key, address };
}

async function revision(bed: Bed): Promise<bigint> {
  return BigInt((await bed.etcd.list("/services/")).revision);
}

async function stored(bed: Bed, key: string) {
  const value = await bed.etcd.get(key);
  assert.ok(value, `${key} is registered`);
  return decodeEntry("/services", key, value.value).record!;
}

function alive(pid: number): boolean {
  try {
    Deno.kill(pid, "SIGCONT");
    return true;
  } catch {
    return false;
  }
}

async function ls(bed: Bed, ...args: string[]): Promise<string> {
  const out = await runScript("registry.ts", ["ls", `--endpoints=${bed.cluster.endpoints[0]}`, ...args]);
  assert.equal(out.code, 0, out.stderr);
  return out.stdout;
}

Deno.test("exec check: exit 0 registers, its JSON becomes the status registry ls shows, rewritten only when it changes", async () => {
  await withBed(lo, async (bed) => {
    const check = await execCheck(bed);
    await check.status('{"version":"1.2","queue":3}');
    const { s, key, address } = await execRegistered(bed, check, lo.ip(2));
    assert.deepEqual((await stored(bed, key)).status, { version: "1.2", queue: 3 });
    const row = new RegExp(
      `STATUS.*\\n.*${address.host.replaceAll(".", "\\.")}:\\d+ +testhost +\\d+s +version=1\\.2,queue=3 `,
    );
    assert.match(await ls(bed), row);
    assert.deepEqual(JSON.parse(await ls(bed, "--json"))[0].status, { version: "1.2", queue: 3 });

    // the same data check after check: no write at all
    const before = await revision(bed);
    const runs = await check.runs();
    await waitFor(async () => (await check.runs()) >= runs + 5, "five more checks", EVENT_MS);
    assert.equal(await revision(bed), before, "an unchanged status writes nothing");

    await check.status('{"version":"1.2","queue":4}');
    await waitFor(async () => (await stored(bed, key)).status?.queue === 4, "status rewritten", EVENT_MS);
    assert.equal(await revision(bed), before + 1n, "one write for one change");
    await s.waitForLog(/^status changed key=\S+ status="{\\"version\\":\\"1.2\\",\\"queue\\":4}"/);

    await check.mode("fail");
    await waitFor(async () => !(await bed.present(key)), "deregistered on exit 3", EVENT_MS);
    await s.waitForLog(/^deregistered key=\S+ reason="exit 3: queue stuck"$/);
  });
});

Deno.test("exec check: at the timeout the command's process group dies, children too; a child left behind dies at exit", async () => {
  await withBed(lo, async (bed) => {
    const check = await execCheck(bed);
    const { s, key } = await execRegistered(bed, check, lo.ip(3));
    await check.mode("hang");
    await waitFor(async () => !(await bed.present(key)), "deregistered while the command hangs", EVENT_MS);
    await s.waitForLog(/check failed reason="no exit within 300ms, killed"/);
    const child = Number(await Deno.readTextFile(`${check.dir}/child`));
    await waitFor(() => !alive(child), `the command's child ${child} killed`, EVENT_MS);

    await check.mode("leave"); // exits 0 at once, leaving a child that holds its stdout
    await waitFor(() => bed.present(key), "registered again: a child left behind does not hold the check", EVENT_MS);
    const left = Number(await Deno.readTextFile(`${check.dir}/child`));
    await waitFor(() => !alive(left), `the child ${left} left behind killed`, EVENT_MS);
  });
});

Deno.test("exec check: a command still running when the secretary stops dies with its children", async () => {
  await withBed(lo, async (bed) => {
    const check = await execCheck(bed, "hang");
    const address: Address = { host: lo.ip(4), port: await freePort(lo.ip(4)) };
    const s = bed.secretary(address, ["--check=exec", check.command, "--interval=10s", "--timeout=9s"], EXEC_FLAGS);
    const child = Number(
      await waitFor(() => Deno.readTextFile(`${check.dir}/child`).catch(() => false), "a check", READY_MS),
    );
    s.kill("SIGTERM");
    assert.equal((await s.finished(EVENT_MS)).code, 0, s.stderr);
    await waitFor(() => !alive(child), `the check's child ${child} killed`, EVENT_MS);
  });
});

Deno.test("exec check: megabytes of output, text and broken JSON pass without a status and stall nothing", async () => {
  await withBed(lo, async (bed) => {
    const check = await execCheck(bed);
    await check.status('{"v":1}');
    // 4 MB through a pipe (a thousand times the status cap, sixty times a pipe's buffer) can take a loaded machine
    // more than FAST's 300 ms: a timeout that only a stall reaches
    const timing = ["--interval=4s", "--timeout=3s"];
    const { s, key } = await execRegistered(bed, check, lo.ip(5), timing);
    assert.deepEqual((await stored(bed, key)).status, { v: 1 });
    /** Waits until the stored status is `status`, or none. */
    const statusBecomes = (status: Record<string, number> | undefined, what: string) =>
      waitFor(async () => JSON.stringify((await stored(bed, key)).status) === JSON.stringify(status), what, EVENT_MS);

    await check.mode("big"); // 4 MB on stdout every check
    await s.waitForLog(/check passed reason="exit 0, output over 4096 bytes, no status"/, EVENT_MS);
    await statusBecomes(undefined, "the status dropped after megabytes");

    // each case starts from a status in place, so that its dropping shows
    await check.status('{"v":2}');
    await check.mode("ok");
    await statusBecomes({ v: 2 }, "a status again");
    await check.mode("text");
    await statusBecomes(undefined, "the status dropped after text");

    await check.status('{"v":3}');
    await check.mode("ok");
    await statusBecomes({ v: 3 }, "a status again");
    await check.status("{broken");
    await s.waitForLog(/check passed reason="exit 0, output is not a JSON object, no status"/, EVENT_MS);
    await statusBecomes(undefined, "the status dropped after broken JSON");

    await check.mode("bigerr"); // 4 MB on stderr, then exit 1
    await waitFor(async () => !(await bed.present(key)), "deregistered", EVENT_MS);
    const line = await s.waitForLog(/^deregistered .*reason="exit 1: x+…"$/);
    assert.ok(line.length < 300, "one short line");
    assert.ok(s.running);
  });
});

Deno.test("exec check: the command sees the instance, never the secretary's environment; a status cannot touch the key", async () => {
  await withBed(lo, async (bed) => {
    const check = await execCheck(bed, "env");
    const address: Address = { host: lo.ip(6), port: await freePort(lo.ip(6)) };
    const s = bed.secretary(address, ["--check=exec", check.command, "--service=queue"], EXEC_FLAGS, {
      SECRET_TOKEN: "hunter2",
    });
    const key = bed.key(address, "queue");
    await s.waitForLog(/^registered key=/, READY_MS);
    assert.deepEqual((await stored(bed, key)).status, {
      ip: address.host,
      port: String(address.port),
      service: "queue",
      secret: "",
    });

    await check.status('{"host":"evil","ipv4_addr":"6.6.6.6","service":"x/../y","k\\n":"\\u001b[31mred"}');
    await check.mode("ok");
    await waitFor(async () => (await stored(bed, key)).status?.host === "evil", "status written", EVENT_MS);
    const keys = (await bed.etcd.list("/services/")).values.map((v) => v.key);
    assert.deepEqual(keys, [key], "one key, where it was");
    const record = await stored(bed, key);
    assert.equal(record.host, "testhost");
    assert.equal(record.ipv4_addr, address.host);
    const table = await ls(bed);
    // deno-lint-ignore no-control-regex
    assert.equal(/[\x00-\x08\x0b-\x1f]/.test(table), false, "no control character reaches the terminal");
  });
});

Deno.test("exec check: a missing, non-executable or unpermitted command is a start-up error: exit 2, nothing written", async () => {
  await withBed(lo, async (bed) => {
    const check = await execCheck(bed);
    await Deno.writeTextFile(`${check.dir}/plain`, "#!/bin/sh\nexit 0\n", { mode: 0o644 });
    const address: Address = { host: lo.ip(7), port: await freePort(lo.ip(7)) };
    const cases: [string[], string[], RegExp][] = [
      [
        ["--command=/nonexistent/check"],
        EXEC_FLAGS,
        /^secretary: Cannot use --command "\/nonexistent\/check": .*ENOENT\n$/,
      ],
      [[`--command=${check.dir}/plain`], EXEC_FLAGS, /^secretary: Cannot use --command ".*\/plain": .*EACCES\n$/],
      [["--command=no-such-command-anywhere --flag"], EXEC_FLAGS, /^secretary: Cannot use --command .*ENOENT\n$/],
      [
        [check.command],
        SOURCE_FLAGS,
        /^secretary: Cannot use --check exec: expected deno's --allow-run without a list/,
      ],
    ];
    for (const [extra, flags, message] of cases) {
      const s = bed.secretary(address, ["--check=exec", ...extra], flags);
      const status = await s.finished(READY_MS);
      assert.equal(status.code, 2, `${extra}: ${s.stderr}`);
      assert.match(s.stderr, message);
    }
    assert.equal(await revision(bed), 1n, "nothing written to etcd");
  });
});

/** An HTTP(S) server on `host` that answers as `reply` says and keeps the last request's headers. */
async function httpServer(bed: Bed, host: string, tls?: { key: string; cert: string }) {
  const server = {
    reply: { status: 200, body: "ok", chunks: 1 },
    headers: {} as IncomingHttpHeaders,
    address: { host, port: await freePort(host) } as Address,
  };
  const handler = (req: { headers: IncomingHttpHeaders }, res: import("node:http").ServerResponse) => {
    server.headers = req.headers;
    res.statusCode = server.reply.status;
    // several chunks: sent with Transfer-Encoding: chunked
    const { body, chunks } = server.reply;
    const size = Math.ceil(body.length / chunks);
    for (let i = 0; i < body.length; i += size) res.write(body.slice(i, i + size));
    res.end();
  };
  const listener: Server = tls ? createHttpsServer(tls, handler) : createHttpServer(handler);
  await new Promise<void>((resolve) => listener.listen(server.address.port, host, () => resolve()));
  bed.cleanups.push(() => {
    listener.closeAllConnections();
    return new Promise<void>((resolve) => listener.close(() => resolve()));
  });
  return server;
}

Deno.test("http check: --expect-status range, --expect-body (also chunked), --header sent", async () => {
  await withBed(lo, async (bed) => {
    const server = await httpServer(bed, lo.ip(8));
    server.reply = { status: 302, body: "moved", chunks: 1 };
    const s = bed.secretary(server.address, [
      "--path=/health?deep=1",
      "--expect-status=200-299",
      "--expect-body=READY",
      "--header=Host: www.example.com",
      "--header=X-Probe: secretary",
    ]);
    const key = bed.key(server.address);
    await s.waitForLog(/check failed reason="status 302"/);
    assert.equal(server.headers.host, "www.example.com");
    assert.equal(server.headers["x-probe"], "secretary");

    server.reply = { status: 204, body: "", chunks: 1 };
    await s.waitForLog(/check failed reason="status 204, body without \\"READY\\""/);
    server.reply = { status: 200, body: "warming up", chunks: 1 };
    await s.waitForLog(/check failed reason="status 200, body without \\"READY\\""/);
    assert.equal(await bed.present(key), false);

    server.reply = { status: 200, body: `state: ${"x".repeat(5000)} READY ${"y".repeat(5000)}`, chunks: 7 };
    await waitFor(() => bed.present(key), "registered once the body says READY", EVENT_MS);
    server.reply = { status: 503, body: "READY", chunks: 1 };
    await waitFor(async () => !(await bed.present(key)), "deregistered on 503", EVENT_MS);
    await s.waitForLog(/^deregistered .*reason="status 503"/);
  });
});

Deno.test("https check: --insecure accepts a self-signed instance; without it the certificate is refused", async () => {
  const certs = await makeCerts();
  try {
    await withBed(lo, async (bed) => {
      const tls = { key: await Deno.readTextFile(certs.serverKey), cert: await Deno.readTextFile(certs.serverCert) };
      const server = await httpServer(bed, lo.ip(9), tls);
      const insecure = bed.secretary(server.address, ["--check=https", "--insecure", "--service=web"]);
      const strict = bed.secretary(server.address, ["--check=https", "--service=strict"]);
      await insecure.waitForLog(/^registered key=/, READY_MS);
      assert.equal(await bed.present(bed.key(server.address, "web")), true, "registered with --insecure");
      await strict.waitForLog(/check failed reason=[A-Z_]*(CERT|SIGNATURE|ISSUER|SELF)[A-Z_]*$/);
      assert.equal(await bed.present(bed.key(server.address, "strict")), false);
    });
  } finally {
    await Deno.remove(certs.dir, { recursive: true });
  }
});

Deno.test("--drain: SIGTERM removes the record at once, then the process waits the drain before exiting; a second signal cuts it short", async () => {
  await withBed(lo, async (bed) => {
    const { t, s, key } = await registered(bed, lo.ip(10), { extra: ["--drain=2s"] });
    const signalled = Date.now();
    s.kill("SIGTERM");
    const status = await s.finished(EVENT_MS);
    const took = Date.now() - signalled;
    assert.equal(status.code, 0);
    // the drain counts from the signal's arrival, after it was sent: a lower bound any machine keeps
    assert.ok(took >= 2000, `exited ${took} ms after SIGTERM, before the 2 s drain was over`);
    assert.equal(await bed.present(key), false, "the record outlived the secretary");
    assert.match(s.stderr, /stopped key=\S+ signal=SIGTERM record=removed drain=2000ms/);

    // a drain of a minute: the record goes at once, long before the drain ends
    const long: Script = bed.secretary(t, ["--drain=1m"]);
    await long.waitForLog(/^registered key=/, READY_MS);
    long.kill("SIGTERM");
    await waitFor(async () => !(await bed.present(key)), "the record gone while draining", EVENT_MS);
    assert.ok(long.running, `the drain of a minute ended early:\n${long.stderr}`);
    long.kill("SIGTERM");
    assert.equal((await long.finished(EVENT_MS)).code, 0, "a second SIGTERM ends the drain");
  });
});

Deno.test("--maintenance-file: deregistered while it exists whatever the checks say, checks still logged; back when it goes", async () => {
  await withBed(lo, async (bed) => {
    const dir = await Deno.makeTempDir({ prefix: "secretary-maint-" });
    bed.cleanups.push(() => Deno.remove(dir, { recursive: true }));
    const file = `${dir}/apache.maintenance`;
    const flags = ["--allow-net", "--allow-env", `--allow-read=/etc/environment,node_modules,${dir}`];
    const { t, s, key } = await registered(bed, lo.ip(11), { extra: [`--maintenance-file=${file}`], flags });

    await Deno.writeTextFile(file, "");
    await waitFor(async () => !(await bed.present(key)), "deregistered in maintenance", EVENT_MS);
    await s.waitForLog(new RegExp(`^deregistered key=\\S+ reason="maintenance file ${file} exists"$`));
    await t.setMode("error");
    await s.waitForLog(/check failed reason="status 500"/); // checks go on
    await t.setMode("ok");
    await s.waitForLog(/check passed reason="status 200"/);
    // the failures may have made it unhealthy: healthy again only after `rise` (2) passes in a row. Wait for them,
    // so that the file's removal alone ends the wait (else the registration's reason is the checks')
    const passing = t.requests;
    await waitFor(() => t.requests >= passing + 2, "two more passing checks", EVENT_MS);
    assert.equal(await bed.present(key), false, "healthy, but still in maintenance");

    await Deno.remove(file);
    await waitFor(() => bed.present(key), "registered once the file is gone", EVENT_MS);
    await s.waitForLog(/^maintenance ended/);
    await s.waitForLog(/^registered .*reason="maintenance over" again=true/); // the line may follow the put
  });
});

Deno.test("--maintenance-file present at start: never registered; one that cannot be read is a start-up error", async () => {
  await withBed(lo, async (bed) => {
    const dir = await Deno.makeTempDir({ prefix: "secretary-maint-" });
    bed.cleanups.push(() => Deno.remove(dir, { recursive: true }));
    const file = `${dir}/m`;
    await Deno.writeTextFile(file, "");
    const t = await testServer(bed, lo.ip(12));
    const s = bed.secretary(t, [`--maintenance-file=${file}`, "--service=maint"], [
      "--allow-net",
      "--allow-env",
      `--allow-read=/etc/environment,node_modules,${dir}`,
    ]);
    await s.waitForLog(/^maintenance started/);
    // rise (2) passing checks would register it, then two more: a put they asked for has landed by then
    await waitFor(() => t.requests >= 4, "four checks", EVENT_MS);
    assert.doesNotMatch(s.stderr, /check failed/);
    assert.equal(await bed.present(bed.key(t, "maint")), false, "registered while in maintenance");

    const unreadable = bed.secretary(t, [`--maintenance-file=${file}`, "--service=other"]); // no read permission
    assert.equal((await unreadable.finished(READY_MS)).code, 2, unreadable.stderr);
    assert.match(unreadable.stderr, /^secretary: Cannot use --maintenance-file "\S+": .*\n$/);
  });
});
