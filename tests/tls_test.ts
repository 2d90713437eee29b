/**
 * TLS with client certificates and etcd authentication, with etcdctl's own
 * flags and variables, against a real etcd; and what a wrong CA, a wrong
 * password or a plain-http client gets: one clear line (registry, exit 1) or
 * retries with a logged reason (secretary), never a hang.
 */
import assert from "node:assert/strict";
import { Etcd } from "../lib/etcd.ts";
import { instanceKey } from "../lib/record.ts";
import { delay, EtcdCluster, makeCerts, runScript, Script, Target, waitFor } from "../lib/testbed.ts";

const FAST = ["--hostname=h", "--interval=500ms", "--timeout=300ms", "--ttl=5s"];

function flagsFor(dir: string): string[] {
  // the certificate files are read at start: the least privilege names them
  return ["--allow-net", "--allow-env", `--allow-read=/etc/environment,node_modules,${dir}`];
}

async function running(s: Script): Promise<boolean> {
  return !(await Promise.race([s.status.then(() => true), delay(0).then(() => false)]));
}

Deno.test("TLS with client certificates: flags and ETCDCTL_* variables work; a wrong CA or plain http gets one clear line", async () => {
  const certs = await makeCerts();
  const tls = { cacert: certs.ca, cert: certs.clientCert, key: certs.clientKey };
  const cluster = await EtcdCluster.create(1, {
    scheme: "https",
    extraArgs: [
      "--cert-file",
      certs.serverCert,
      "--key-file",
      certs.serverKey,
      "--trusted-ca-file",
      certs.ca,
      "--client-cert-auth",
    ],
    clientOptions: tls,
  });
  await cluster.start();
  const etcd = cluster.client();
  const endpoint = cluster.endpoints[0];
  const t = await Target.start("127.0.0.40");
  const key = instanceKey("/services", "apache", t.host, t.port);
  const flags = flagsFor(certs.dir);
  const good = Script.deno("secretary.ts", [
    String(t.port),
    `--ip=${t.host}`,
    `--endpoints=${endpoint}`,
    `--cacert=${certs.ca}`,
    `--cert=${certs.clientCert}`,
    `--key=${certs.clientKey}`,
    ...FAST,
  ], { flags });
  const wrongCa = Script.deno("secretary.ts", [String(t.port), `--ip=${t.host}`, ...FAST, "--service=wrongca"], {
    flags,
    env: {
      ETCDCTL_ENDPOINTS: endpoint,
      ETCDCTL_CACERT: certs.otherCa,
      ETCDCTL_CERT: certs.clientCert,
      ETCDCTL_KEY: certs.clientKey,
    },
  });
  try {
    await waitFor(() => etcd.get(key), "registered over TLS", 10_000);

    const env = {
      ETCDCTL_ENDPOINTS: endpoint,
      ETCDCTL_CACERT: certs.ca,
      ETCDCTL_CERT: certs.clientCert,
      ETCDCTL_KEY: certs.clientKey,
    };
    const ls = await runScript("registry.ts", ["ls"], { flags, env });
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, new RegExp(`apache +${t.host}:${t.port} `));

    const started = Date.now();
    const [badCa, plain, noCert] = await Promise.all([
      runScript("registry.ts", ["ls"], { flags, env: { ...env, ETCDCTL_CACERT: certs.otherCa } }),
      runScript("registry.ts", ["ls", `--endpoints=${endpoint.replace("https:", "http:")}`], { flags }),
      runScript("registry.ts", ["ls", `--endpoints=${endpoint}`, `--cacert=${certs.ca}`], { flags }),
    ]);
    assert.ok(Date.now() - started < 15_000, "a hang");
    for (const r of [badCa, plain, noCert]) {
      assert.equal(r.code, 1, r.stderr);
      const lines = r.stderr.trimEnd().split("\n");
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0], /^registry: cannot read from etcd at https?:\/\/127\.0\.0\.1:\d+: \S/);
    }

    await wrongCa.waitForLog(/^etcd call failed; retrying .*reason=/, 10_000);
    assert.ok(await running(wrongCa));
    assert.equal(await etcd.get(instanceKey("/services", "wrongca", t.host, t.port)), undefined);
  } finally {
    await good.stop("SIGTERM");
    await wrongCa.stop("SIGTERM");
    await t.close();
    etcd.close();
    await cluster.stop();
    await Deno.remove(certs.dir, { recursive: true });
  }
  assert.equal((await good.status).code, 0);
});

Deno.test("etcd authentication: --user and ETCDCTL_USER work; a wrong password gets one clear line or logged retries", async () => {
  const cluster = await EtcdCluster.create(1);
  await cluster.start();
  const endpoint = cluster.endpoints[0];
  const etcdctl = async (...args: string[]) => {
    const out = await new Deno.Command("etcdctl", {
      args: [`--endpoints=${endpoint}`, ...args],
      env: { ETCDCTL_API: "3" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
  };
  await etcdctl("user", "add", "root:s3cret", "--interactive=false");
  await etcdctl("auth", "enable");
  const etcd = new Etcd({ endpoints: [endpoint], user: { name: "root", password: "s3cret" } });
  const t = await Target.start("127.0.0.41");
  const key = instanceKey("/services", "apache", t.host, t.port);
  const flags = ["--allow-net", "--allow-env", "--allow-read=/etc/environment,node_modules"];
  const good = Script.deno("secretary.ts", [String(t.port), `--ip=${t.host}`, `--endpoints=${endpoint}`, ...FAST], {
    flags,
    env: { ETCDCTL_USER: "root:s3cret" },
  });
  const wrong = Script.deno("secretary.ts", [
    String(t.port),
    `--ip=${t.host}`,
    `--endpoints=${endpoint}`,
    "--user=root:wr0ngpw",
    "--service=badpass",
    ...FAST,
  ], { flags });
  try {
    await waitFor(() => etcd.get(key), "registered with --user", 10_000);
    const ls = await runScript("registry.ts", ["ls", `--endpoints=${endpoint}`, "--user=root:s3cret"], { flags });
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, new RegExp(`apache +${t.host}:${t.port} `));

    const [badPassword, noUser] = await Promise.all([
      runScript("registry.ts", ["get", "apache", `${t.host}:${t.port}`, `--endpoints=${endpoint}`], {
        flags,
        env: { ETCDCTL_USER: "root:nope" },
      }),
      runScript("registry.ts", ["ls", `--endpoints=${endpoint}`], { flags }),
    ]);
    for (const r of [badPassword, noUser]) {
      assert.equal(r.code, 1, r.stderr);
      assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
      assert.match(r.stderr, /^registry: cannot read from etcd at http:\/\/127\.0\.0\.1:\d+: \S/);
    }
    assert.doesNotMatch(badPassword.stderr, /nope/, "the password is printed");

    await wrong.waitForLog(/^etcd call failed; retrying .*reason=.*(authentication|password|auth)/i, 10_000);
    assert.ok(await running(wrong));
    assert.doesNotMatch(wrong.stderr, /wr0ngpw/, "the password is printed");
  } finally {
    await good.stop("SIGTERM");
    await wrong.stop("SIGTERM");
    await t.close();
    etcd.close();
    await cluster.stop();
  }
  assert.equal(await good.status.then((s) => s.code), 0);
});
