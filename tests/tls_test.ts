/**
 * TLS with client certificates and etcd authentication, against a real etcd,
 * run as a host runs them: the bundles installed by `install.sh --root`, the
 * secretary started with its installed unit's own ExecStart (the TLS drop-in's
 * over TLS) and that unit's environment, `registry` through the installed
 * wrapper, each with nothing in its environment but what the unit or an
 * operator's shell would give it. And what a wrong CA, a wrong password or a
 * plain-http client gets: one clear line (registry, exit 1) or retries with a
 * logged reason (secretary), never a hang.
 */
import assert from "node:assert/strict";
import { Etcd } from "../lib/etcd.ts";
import { instanceKey } from "../lib/record.ts";
import {
  clientCertOptions,
  enableAuth,
  EtcdCluster,
  execStart,
  installed,
  loopback,
  makeCerts,
  READY_MS,
  Script,
  TEST_CALL_TIMEOUT_MS,
  TestServer,
  unitEnvironment,
} from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);

const FAST = ["--interval=500ms", "--timeout=300ms", "--ttl=5s"];
const PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const UNITS = "etc/systemd/system";

/** The installed secretary for `target`, started as systemd starts `unit` (a path under the root), with `env`. */
async function secretary(
  root: string,
  unit: string,
  target: TestServer,
  env: Record<string, string>,
  extra: string[] = [],
): Promise<Script> {
  const vars = { ...env, COREOS_PUBLIC_IPV4: target.host, "%i": String(target.port), "%H": "tls-host" };
  const argv = await execStart(`${root}/${unit}`, vars, `${root}/opt/bin`);
  const unitEnv = await unitEnvironment(`${root}/${UNITS}/apache-secretary@.service`);
  for (const [k, v] of Object.entries(unitEnv)) unitEnv[k] = v.replaceAll("%C", `${root}/var/cache`);
  return new Script(argv[0], [...argv.slice(1), ...FAST, ...extra], {
    ...unitEnv,
    COREOS_PUBLIC_IPV4: target.host,
    ...env,
  }, { clearEnv: true, cwd: root });
}

/** The installed `registry` wrapper, run to its end with only `env` (and PATH). */
async function registry(
  root: string,
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = new Script(`${root}/opt/bin/registry`, args, { PATH, ...env }, { clearEnv: true, cwd: root });
  const status = await p.finished(20_000);
  return { code: status.code, stdout: p.stdout, stderr: p.stderr };
}

/** `registry: cannot read from etcd at <endpoint>: <reason>`, the endpoint with either scheme. */
function cannotRead(endpoint: string): RegExp {
  const hostPort = new URL(endpoint).host.replaceAll(".", "\\.");
  return new RegExp(`^registry: cannot read from etcd at https?:\\/\\/${hostPort}: \\S`);
}

function assertOneLine(r: { code: number; stderr: string }, pattern: RegExp): void {
  assert.equal(r.code, 1, r.stderr);
  assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
  assert.match(r.stderr, pattern);
}

Deno.test("TLS with client certificates: the installed unit's drop-in and the registry wrapper work; a wrong CA or plain http gets one clear line", async () => {
  const root = await installed();
  const host = lo.etcdHost();
  const certs = await makeCerts([host]);
  const cluster = await EtcdCluster.create(1, clientCertOptions(host, certs));
  await cluster.start();
  const etcd = cluster.client();
  const endpoint = cluster.endpoints[0];
  const hostPort = new URL(endpoint).host;
  const t = await TestServer.start(lo.ip(1));
  const key = instanceKey("/services", "apache", t.host, t.port);
  const env = {
    ETCDCTL_ENDPOINTS: endpoint,
    SECRETARY_ETCD: hostPort,
    ETCDCTL_CACERT: certs.ca,
    ETCDCTL_CERT: certs.clientCert,
    ETCDCTL_KEY: certs.clientKey,
  };
  const dropIn = `${UNITS}/apache-secretary@.service.d/tls.conf`;
  const good = await secretary(root, dropIn, t, env);
  const wrongCa = await secretary(root, dropIn, t, { ...env, ETCDCTL_CACERT: certs.otherCa }, ["--service=wrongca"]);
  try {
    await good.waitForLog(/^registered key=/, READY_MS);
    assert.ok(await etcd.get(key), `registered over TLS, but not in etcd:\n${good.stderr}`);

    const ls = await registry(root, ["ls"], env);
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, new RegExp(`apache +${t.host}:${t.port} `));

    const [badCa, plain, noCert] = await Promise.all([
      registry(root, ["ls"], { ...env, ETCDCTL_CACERT: certs.otherCa }),
      registry(root, ["ls"], { SECRETARY_ETCD: hostPort }),
      registry(root, ["ls"], { ETCDCTL_ENDPOINTS: endpoint, ETCDCTL_CACERT: certs.ca }),
    ]);
    for (const r of [badCa, plain, noCert]) {
      assertOneLine(r, cannotRead(endpoint));
    }

    await wrongCa.waitForLog(/^etcd call failed .*reason=/, 15_000);
    assert.ok(wrongCa.running);
    assert.equal(await etcd.get(instanceKey("/services", "wrongca", t.host, t.port)), undefined);
    for (const p of [good, wrongCa]) assert.doesNotMatch(p.stderr, /NotCapable|Requires \w+ access/);
  } finally {
    await good.stop("SIGTERM");
    await wrongCa.stop("SIGTERM");
    await t.close();
    etcd.close();
    await cluster.stop();
    await Deno.remove(certs.dir, { recursive: true });
  }
  assert.equal((await good.status).code, 0, good.stderr);
  assert.match(good.stderr, /^stopped .*record=removed/m);
});

Deno.test("etcd authentication: the installed unit and the registry wrapper work with ETCDCTL_USER; a wrong password gets one clear line or logged retries", async () => {
  const root = await installed();
  const cluster = await lo.etcd(1);
  await cluster.start();
  const endpoint = cluster.endpoints[0];
  const hostPort = new URL(endpoint).host;
  await enableAuth(endpoint, "s3cret");
  // the test's own client: patient (each authentication costs etcd a bcrypt, slow on a loaded machine)
  const etcd = new Etcd({
    endpoints: [endpoint],
    user: { name: "root", password: "s3cret" },
    callTimeoutMs: TEST_CALL_TIMEOUT_MS,
  });
  const t = await TestServer.start(lo.ip(2));
  const key = instanceKey("/services", "apache", t.host, t.port);
  const unit = `${UNITS}/apache-secretary@.service`;
  const good = await secretary(root, unit, t, { SECRETARY_ETCD: hostPort, ETCDCTL_USER: "root:s3cret" });
  const wrong = await secretary(root, unit, t, { SECRETARY_ETCD: hostPort, ETCDCTL_USER: "root:wr0ngpw" }, [
    "--service=badpass",
  ]);
  try {
    await good.waitForLog(/^registered key=/, READY_MS);
    assert.ok(await etcd.get(key), `registered with ETCDCTL_USER, but not in etcd:\n${good.stderr}`);
    const ls = await registry(root, ["ls"], { SECRETARY_ETCD: hostPort, ETCDCTL_USER: "root:s3cret" });
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, new RegExp(`apache +${t.host}:${t.port} `));
    const withFlag = await registry(root, ["get", "apache", `${t.host}:${t.port}`, "--user=root:s3cret"], {
      SECRETARY_ETCD: hostPort,
    });
    assert.equal(withFlag.code, 0, withFlag.stderr);
    assert.equal(JSON.parse(withFlag.stdout).port, t.port);

    const [badPassword, noUser] = await Promise.all([
      registry(root, ["get", "apache", `${t.host}:${t.port}`], { SECRETARY_ETCD: hostPort, ETCDCTL_USER: "root:nope" }),
      registry(root, ["ls"], { SECRETARY_ETCD: hostPort }),
    ]);
    for (const r of [badPassword, noUser]) {
      assertOneLine(r, cannotRead(endpoint));
    }
    assert.doesNotMatch(badPassword.stderr, /nope/, "the password is printed");

    await wrong.waitForLog(/^etcd call failed .*reason=.*(authentication|password|auth)/i, 15_000);
    assert.ok(wrong.running);
    assert.doesNotMatch(wrong.stderr, /wr0ngpw/, "the password is printed");
    for (const p of [good, wrong]) assert.doesNotMatch(p.stderr, /NotCapable|Requires \w+ access/);
  } finally {
    await good.stop("SIGTERM");
    await wrong.stop("SIGTERM");
    await t.close();
    etcd.close();
    await cluster.stop();
  }
  assert.equal((await good.status).code, 0, good.stderr);
  assert.match(good.stderr, /^stopped .*record=removed/m);
});

Deno.test("TLS and authentication together: the installed drop-in and the registry wrapper authenticate over https to an IP", async () => {
  const root = await installed();
  const host = lo.etcdHost();
  const certs = await makeCerts([host]);
  const tls = { cacert: certs.ca, cert: certs.clientCert, key: certs.clientKey };
  const cluster = await EtcdCluster.create(1, clientCertOptions(host, certs));
  await cluster.start();
  const endpoint = cluster.endpoints[0];
  await enableAuth(endpoint, "s3cret", certs);
  const etcd = new Etcd({
    endpoints: [endpoint],
    ...tls,
    user: { name: "root", password: "s3cret" },
    callTimeoutMs: TEST_CALL_TIMEOUT_MS,
  });
  const t = await TestServer.start(lo.ip(3));
  const key = instanceKey("/services", "apache", t.host, t.port);
  const env = {
    ETCDCTL_ENDPOINTS: endpoint,
    SECRETARY_ETCD: new URL(endpoint).host,
    ETCDCTL_CACERT: certs.ca,
    ETCDCTL_CERT: certs.clientCert,
    ETCDCTL_KEY: certs.clientKey,
    ETCDCTL_USER: "root:s3cret",
  };
  const good = await secretary(root, `${UNITS}/apache-secretary@.service.d/tls.conf`, t, env);
  try {
    await good.waitForLog(/^registered key=/, READY_MS);
    assert.ok(await etcd.get(key), `registered over TLS with a user, but not in etcd:\n${good.stderr}`);
    const ls = await registry(root, ["ls", "--json"], env);
    assert.equal(ls.code, 0, ls.stderr);
    assert.equal(JSON.parse(ls.stdout).length, 1);
    // a call past its deadline on a loaded machine is retried; a refusal (TLS, authentication) is what must not show
    assert.doesNotMatch(good.stderr, /NotCapable|Requires \w+ access/);
    assert.doesNotMatch(good.stderr, /^etcd call failed .*reason=.*(auth|password|permission|certif|CERT|TLS|SSL)/im);
  } finally {
    await good.stop("SIGTERM");
    await t.close();
    etcd.close();
    await cluster.stop();
    await Deno.remove(certs.dir, { recursive: true });
  }
  assert.equal((await good.status).code, 0, good.stderr);
});
