/**
 * The agent's units run as a host runs them: `install.sh --root --agent` (and
 * `--tls --auth` for the secure etcd) with freshly built bundles, then the
 * installed units' own command lines
 * (secretary-agent.service's ExecStart, apache-secretary-agent@.service's
 * ExecStart and ExecStop), with `%i`, `%H`, the unit's `Environment=`,
 * /etc/environment's variables and `${…}` expanded as systemd does, only
 * `/run/secretary` (the agent's RuntimeDirectory) moved into the test's
 * folder, created 0700 as systemd creates it. Each process gets only the
 * unit's environment and `JOURNAL_STREAM`, as under systemd. Against a real
 * etcd and a real HTTP target:
 *
 * - attach puts the instance's record in etcd, under the agent's lease; the
 *   socket is mode 0600; failing checks take the record out and passing ones
 *   put it back; detach removes the record before it returns, after the 5 s
 *   drain;
 * - a SIGTERM is a restart: the next agent on the same folder adopts the
 *   instance and nothing is written (the next event on the key is detach's
 *   delete);
 * - a SIGKILL is a host death: the restarted agent attaches the instance
 *   again from agent.json and its record ends up under the new lease;
 * - attach with no agent exits 1 (Restart=on-failure tries again), one line;
 * - over TLS with a user, the agent's tls.conf and auth.conf drop-ins.
 *
 * In every run, deno refuses nothing to any of the three lines.
 */
import assert from "node:assert/strict";
import { Etcd, type WatchEvent } from "../lib/etcd.ts";
import { splitCommand } from "../lib/command.ts";
import { DEFAULT_PREFIX, instanceKey } from "../lib/record.ts";
import {
  bundles,
  clientCertOptions,
  enableAuth,
  EtcdCluster,
  EVENT_MS,
  execStart,
  loopback,
  makeCerts,
  READY_MS,
  ROOT,
  Script,
  TEST_CALL_TIMEOUT_MS,
  TestServer,
  unitEnvironment,
  waitFor,
} from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);

const UNITS = "etc/systemd/system";
const AGENT_UNIT = "secretary-agent.service";
const INSTANCE_UNIT = "apache-secretary-agent@.service";
/** The agent's RuntimeDirectory, as the units name it. */
const RUNTIME_DIR = "/run/secretary";
const HOSTNAME = "agent-host-1";
/** The instance unit's --drain. */
const DRAIN_MS = 5000;
const PATH = "/usr/sbin:/usr/bin:/bin";
const PASSWORD = "s3cret-Pw";

/** What deno prints when a flag it was not given is needed. */
const REFUSED = /NotCapable|Requires \w+ access|run again with the --allow/;

/**
 * A root as `install.sh --root ROOT --agent` leaves it; `secure`: with
 * `--tls --auth`, the etcd user's file in place first (mode 0600). Once each.
 */
const installedRoots = new Map<boolean, Promise<string>>();
function installedAgent(secure = false): Promise<string> {
  if (!installedRoots.has(secure)) {
    installedRoots.set(
      secure,
      (async () => {
        const root = await Deno.makeTempDir({ prefix: "secretary-agent-root-" });
        globalThis.addEventListener("unload", () => Deno.removeSync(root, { recursive: true }));
        if (secure) {
          await Deno.mkdir(`${root}/etc/secretary`, { recursive: true, mode: 0o700 });
          await Deno.writeTextFile(`${root}/etc/secretary/etcd-user`, `ETCDCTL_USER=root:${PASSWORD}\n`, {
            mode: 0o600,
          });
        }
        const out = await new Deno.Command(`${ROOT}install.sh`, {
          args: ["--root", root, "--from", await bundles(), "--agent", ...(secure ? ["--tls", "--auth"] : [])],
          stdout: "piped",
          stderr: "piped",
        }).output();
        if (!out.success) throw new Error(`install.sh failed:\n${new TextDecoder().decode(out.stderr)}`);
        return root;
      })(),
    );
  }
  return installedRoots.get(secure)!;
}

/** The variables of the files an installed auth.conf drop-in of `unit` names (paths inside `root`), as systemd reads them. */
async function authEnvironment(root: string, unit: string): Promise<Record<string, string>> {
  const env: Record<string, string> = {};
  const dropIn = await Deno.readTextFile(`${root}/${UNITS}/${unit}.d/auth.conf`).catch(() => "");
  for (const [, path] of dropIn.matchAll(/^EnvironmentFile=(\/\S+)$/gm)) {
    for (const [, k, v] of (await Deno.readTextFile(`${root}${path}`)).matchAll(/^([A-Za-z_]\w*)=(.*)$/gm)) env[k] = v;
  }
  return env;
}

/**
 * The words of the installed unit file's one ExecStop= line, expanded as
 * execStart() (testbed/install.ts) expands ExecStart=.
 */
async function execStop(file: string, vars: Record<string, string>, bin: string): Promise<string[]> {
  const lines = [...(await Deno.readTextFile(file)).matchAll(/^ExecStop=(.*)$/gm)].map((m) => m[1]);
  assert.equal(lines.length, 1, `${file}: one ExecStop`);
  return splitCommand(lines[0]).map((word) =>
    word
      .replace(/%([iH])/g, (_, c: string) => vars[`%${c}`])
      .replace(/\$\{(\w+)\}/g, (_, name: string) => vars[name] ?? "")
      .replace(/^\/opt\/bin\//, `${bin}/`)
  );
}

/** One host: the installed root, the test's folder (its /run/secretary and deno's caches), /etc/environment. */
interface Host {
  root: string;
  dir: string;
  /** /etc/environment's variables. */
  environment: Record<string, string>;
  /** The socket, where the test moved it. */
  socket: string;
}

async function makeHost(root: string, environment: Record<string, string>): Promise<Host> {
  const dir = await Deno.makeTempDir({ prefix: "secretary-agent-units-" });
  // as systemd makes it for the agent (RuntimeDirectory=secretary, RuntimeDirectoryMode=0700)
  await Deno.mkdir(`${dir}${RUNTIME_DIR}`, { recursive: true });
  await Deno.chmod(`${dir}${RUNTIME_DIR}`, 0o700);
  return { root, dir, environment, socket: `${dir}${RUNTIME_DIR}/agent.sock` };
}

/**
 * Starts the installed `unit`'s `setting` line as systemd would: `file` (the
 * unit, or its tls.conf drop-in) for the line, the unit's Environment= (%C in
 * the test's folder), then /etc/environment, then the files of the unit's
 * installed auth.conf drop-in, if any; only JOURNAL_STREAM and PATH besides,
 * as systemd gives a unit.
 */
async function startLine(host: Host, unit: string, setting: "ExecStart" | "ExecStop", port: number, tls = false) {
  const units = `${host.root}/${UNITS}`;
  const file = tls ? `${units}/${unit}.d/tls.conf` : `${units}/${unit}`;
  const vars = { ...host.environment, "%i": String(port), "%H": HOSTNAME };
  const bin = `${host.root}/opt/bin`;
  const words = setting === "ExecStart" ? await execStart(file, vars, bin) : await execStop(file, vars, bin);
  const argv = words.map((w) => w.replaceAll(RUNTIME_DIR, `${host.dir}${RUNTIME_DIR}`));
  const env = await unitEnvironment(`${units}/${unit}`);
  for (const [k, v] of Object.entries(env)) env[k] = v.replaceAll("%C", `${host.dir}/cache`);
  return new Script(argv[0], argv.slice(1), {
    ...env,
    ...host.environment,
    ...await authEnvironment(host.root, unit),
    JOURNAL_STREAM: "8:4242",
    PATH,
  }, { clearEnv: true, cwd: host.dir });
}

/** The agent, as secretary-agent.service starts it, once it listens. */
async function startAgent(host: Host, tls = false): Promise<{ agent: Script; lease: string }> {
  const agent = await startLine(host, AGENT_UNIT, "ExecStart", 0, tls);
  await agent.waitForLog(/^(<\d>)?agent started /, READY_MS);
  const granted = /lease=(\d+)/.exec(
    await agent.waitForLog(/^(<\d>)?(lease granted|agent started) .*lease=/, READY_MS),
  );
  return { agent, lease: granted![1] };
}

/** Runs one of the instance unit's lines to its end: attach (ExecStart) or detach (ExecStop). */
async function runLine(host: Host, setting: "ExecStart" | "ExecStop", port: number) {
  const started = Date.now();
  const p = await startLine(host, INSTANCE_UNIT, setting, port);
  const status = await p.finished(READY_MS + DRAIN_MS);
  return { code: status.code, stdout: p.stdout, stderr: p.stderr, ms: Date.now() - started };
}

function assertNothingRefused(what: string, stderr: string): void {
  assert.doesNotMatch(stderr, REFUSED, `${what} was refused a permission:\n${stderr}`);
}

/** The record's lease, once `key` is in etcd under `lease`. */
function underLease(etcd: Etcd, key: string, lease: string, log: () => string): Promise<unknown> {
  return waitFor(
    async () => (await etcd.get(key))?.lease === lease,
    () => `${key} in etcd under lease ${lease}:\n${log()}`,
    READY_MS,
    100,
  );
}

/** A plain bed: its agent started and the target attached by the unit's ExecStart, its record under the host lease. */
async function attachedOnAgent(bed: Awaited<ReturnType<typeof plainBed>>, scripts: Script[]) {
  const { etcd, target, host } = bed;
  const first = await startAgent(host);
  scripts.push(first.agent);
  const attach = await runLine(host, "ExecStart", target.port);
  assert.equal(attach.code, 0, attach.stderr);
  const key = instanceKey(DEFAULT_PREFIX, "apache", target.host, target.port);
  await underLease(etcd, key, first.lease, () => first.agent.stderr);
  return { first, attach, key };
}

/** A plain etcd, a target on the host's address and a host whose /etc/environment points at both. */
async function plainBed(): Promise<{ cluster: EtcdCluster; etcd: Etcd; target: TestServer; host: Host }> {
  const cluster = await lo.etcd(1);
  await cluster.start().catch(async (err) => {
    await cluster.stop();
    throw err;
  });
  const target = await TestServer.start(lo.ip(1));
  const host = await makeHost(await installedAgent(), {
    COREOS_PUBLIC_IPV4: target.host,
    SECRETARY_ETCD: new URL(cluster.endpoints[0]).host,
  });
  return { cluster, etcd: cluster.client(), target, host };
}

async function closeBed(bed: { cluster: EtcdCluster; etcd: Etcd; target: TestServer; host: Host }, scripts: Script[]) {
  for (const s of scripts) await s.stop();
  await bed.target.close();
  bed.etcd.close();
  await bed.cluster.stop();
  await Deno.remove(bed.host.dir, { recursive: true });
}

Deno.test("the agent's units' own lines: attach registers the instance, the socket is 0600, detach removes the record, then drains", async () => {
  const bed = await plainBed();
  const { etcd, target, host } = bed;
  const scripts: Script[] = [];
  try {
    const { agent, lease } = await startAgent(host);
    scripts.push(agent);
    assert.equal((await Deno.stat(host.socket)).mode! & 0o777, 0o600, "the socket is root's alone");

    const attach = await runLine(host, "ExecStart", target.port);
    assert.equal(attach.code, 0, attach.stderr);
    assert.equal(attach.stdout + attach.stderr, "", "attach prints nothing on success");
    const key = instanceKey(DEFAULT_PREFIX, "apache", target.host, target.port);
    await underLease(etcd, key, lease, () => agent.stderr);
    const record = JSON.parse((await etcd.get(key))!.value);
    assert.equal(record.host, HOSTNAME, "attach passed %H as --hostname");
    assert.equal(record.ipv4_addr, target.host, "attach took COREOS_PUBLIC_IPV4 from /etc/environment");
    assert.equal(record.port, target.port);
    await agent.waitForLog(new RegExp(`^(<\\d>)?registered key=${key} `), EVENT_MS);
    assert.ok(target.requests > 0, "the agent checked the target");

    // failing checks take the record out, passing ones put it back, under the same flags
    await target.setMode("error");
    await waitFor(
      async () => (await etcd.get(key)) === undefined,
      () => `${key} gone:\n${agent.stderr}`,
      EVENT_MS,
      100,
    );
    await agent.waitForLog(new RegExp(`^(<\\d>)?deregistered key=${key} `), EVENT_MS);
    await target.setMode("ok");
    await underLease(etcd, key, lease, () => agent.stderr);

    const detach = await runLine(host, "ExecStop", target.port);
    assert.equal(detach.code, 0, detach.stderr);
    // the agent deletes the record, waits the drain, then answers: the record is gone when detach returns
    assert.equal(await etcd.get(key), undefined, `${key} still in etcd after detach:\n${agent.stderr}`);
    assert.ok(detach.ms >= DRAIN_MS, `detach returned after ${detach.ms} ms, before the ${DRAIN_MS} ms drain`);
    await agent.waitForLog(new RegExp(`^(<\\d>)?detached key=${key}`), EVENT_MS);

    for (const [what, stderr] of [["attach", attach.stderr], ["detach", detach.stderr], ["agent", agent.stderr]]) {
      assertNothingRefused(what, stderr);
    }
    agent.kill("SIGTERM");
    assert.equal((await agent.finished(EVENT_MS)).code, 0, agent.stderr);
    assertNothingRefused("the agent's stop", agent.stderr);
  } finally {
    await closeBed(bed, scripts);
  }
});

Deno.test("under the unit's lines a SIGTERM is a restart: the next agent adopts the instance and writes nothing", async () => {
  const bed = await plainBed();
  const { etcd, target, host } = bed;
  const scripts: Script[] = [];
  let watch: { cancel(): void } | undefined;
  try {
    const { first, attach, key } = await attachedOnAgent(bed, scripts);
    const before = (await etcd.get(key))!;

    first.agent.kill("SIGTERM");
    assert.equal((await first.agent.finished(EVENT_MS)).code, 0, first.agent.stderr);
    assert.match(first.agent.stderr, /^(<\d>)?agent stopped .*instances=1/m);

    const second = await startLine(host, AGENT_UNIT, "ExecStart", 0);
    scripts.push(second);
    await second.waitForLog(/^(<\d>)?agent started /, READY_MS);
    assert.match(second.stderr, new RegExp(`^(<\\d>)?adopted key=${key} .*registered=true`, "m"), second.stderr);
    // every change to the key since the record was put, in order
    const events: WatchEvent[] = [];
    watch = await etcd.watch(key, String(BigInt(before.modRevision) + 1n), (e) => events.push(e));
    const detach = await runLine(host, "ExecStop", target.port);
    assert.equal(detach.code, 0, detach.stderr);
    await waitFor(() => events.length > 0, () => `detach's delete of ${key} seen:\n${second.stderr}`, EVENT_MS);
    assert.deepEqual(events.map((e) => e.type), ["delete"], "the adopted record was written before detach's delete");
    assert.equal(before.lease, first.lease);
    assert.doesNotMatch(second.stderr, /^(<\d>)?(registered|lease granted) /m, second.stderr);
    for (const p of [first.agent.stderr, second.stderr, attach.stderr, detach.stderr]) {
      assertNothingRefused("a line", p);
    }
  } finally {
    watch?.cancel();
    await closeBed(bed, scripts);
  }
});

Deno.test("under the unit's lines a SIGKILLed agent's successor attaches the instance again from agent.json, under a new lease", async () => {
  const bed = await plainBed();
  const { etcd, target, host } = bed;
  const scripts: Script[] = [];
  try {
    const { first, key } = await attachedOnAgent(bed, scripts);

    first.agent.kill("SIGKILL");
    await first.agent.finished(EVENT_MS);
    const second = await startAgent(host);
    scripts.push(second.agent);
    assert.notEqual(second.lease, first.lease, "a killed agent's lease is not adopted");
    await underLease(etcd, key, second.lease, () => second.agent.stderr);
    assertNothingRefused("the second agent", second.agent.stderr);

    const detach = await runLine(host, "ExecStop", target.port);
    assert.equal(detach.code, 0, detach.stderr);
    assert.equal(await etcd.get(key), undefined, second.agent.stderr);
  } finally {
    await closeBed(bed, scripts);
  }
});

Deno.test("the instance unit's attach with no agent exits 1 with one line, so Restart=on-failure tries again", async () => {
  const host = await makeHost(await installedAgent(), {
    COREOS_PUBLIC_IPV4: lo.ip(2),
    SECRETARY_ETCD: `${lo.ip(2)}:2379`,
  });
  try {
    const attach = await runLine(host, "ExecStart", 8080);
    assert.equal(attach.code, 1, attach.stderr);
    assert.match(
      attach.stderr,
      /^secretary: Cannot reach the agent at \S+\/run\/secretary\/agent\.sock: no socket there \(is secretary-agent running\?\)\n$/,
    );
    const unit = await Deno.readTextFile(`${host.root}/${UNITS}/${INSTANCE_UNIT}`);
    assert.match(unit, /^Restart=on-failure$/m);
    assert.match(unit, /^RestartPreventExitStatus=2$/m);
  } finally {
    await Deno.remove(host.dir, { recursive: true });
  }
});

Deno.test("secretary-agent over TLS with a user: the installed tls.conf and auth.conf drop-ins register an attached instance", async () => {
  const etcdHost = lo.etcdHost();
  const certs = await makeCerts([etcdHost]);
  const cluster = await EtcdCluster.create(1, clientCertOptions(etcdHost, certs));
  const scripts: Script[] = [];
  const undo: (() => unknown)[] = [() => Deno.remove(certs.dir, { recursive: true }), () => cluster.stop()];
  try {
    await cluster.start();
    const endpoint = cluster.endpoints[0];
    await enableAuth(endpoint, PASSWORD, certs);
    const etcd = new Etcd({
      endpoints: [endpoint],
      cacert: certs.ca,
      cert: certs.clientCert,
      key: certs.clientKey,
      user: { name: "root", password: PASSWORD },
      callTimeoutMs: TEST_CALL_TIMEOUT_MS,
    });
    undo.push(() => etcd.close());
    const target = await TestServer.start(lo.ip(3));
    undo.push(() => target.close());
    const host = await makeHost(await installedAgent(true), {
      COREOS_PUBLIC_IPV4: target.host,
      SECRETARY_ETCD: new URL(endpoint).host,
      ETCDCTL_ENDPOINTS: endpoint,
      ETCDCTL_CACERT: certs.ca,
      ETCDCTL_CERT: certs.clientCert,
      ETCDCTL_KEY: certs.clientKey,
    });
    undo.push(() => Deno.remove(host.dir, { recursive: true }));
    assert.deepEqual(await authEnvironment(host.root, AGENT_UNIT), { ETCDCTL_USER: `root:${PASSWORD}` });
    assert.deepEqual(await authEnvironment(host.root, INSTANCE_UNIT), {}, "the oneshots need no etcd user");

    // without the drop-in, the TLS environment is refused at once: exit 2, one line
    const alone = await startLine(host, AGENT_UNIT, "ExecStart", 0);
    scripts.push(alone);
    assert.equal((await alone.finished(READY_MS)).code, 2, alone.stderr);
    assert.match(alone.stderr, /^secretary: Cannot use TLS files with endpoints "http:\/\/[^"]+": expected https:\/\//);

    const { agent, lease } = await startAgent(host, true);
    scripts.push(agent);
    const attach = await runLine(host, "ExecStart", target.port);
    assert.equal(attach.code, 0, attach.stderr);
    const key = instanceKey(DEFAULT_PREFIX, "apache", target.host, target.port);
    await underLease(etcd, key, lease, () => agent.stderr);
    const detach = await runLine(host, "ExecStop", target.port);
    assert.equal(detach.code, 0, detach.stderr);
    assert.equal(await etcd.get(key), undefined, agent.stderr);
    for (const p of [agent.stderr, attach.stderr, detach.stderr]) assertNothingRefused("a line", p);
    assert.doesNotMatch(agent.stderr, new RegExp(PASSWORD), "the password is printed");
    agent.kill("SIGTERM");
    assert.equal((await agent.finished(EVENT_MS)).code, 0, agent.stderr);
  } finally {
    for (const s of scripts) await s.stop();
    for (const step of undo.reverse()) await step();
  }
});
