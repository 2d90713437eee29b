/**
 * The units, the install script and the Butane config. `install.sh --root`
 * installs into a scratch root with freshly built bundles, and
 * `systemd-analyze verify --root` checks the installed templates and the
 * article's instance links there, offline (systemd need not be PID 1).
 */
import assert from "node:assert/strict";
import { splitCommand } from "../lib/command.ts";
import { bundles, ROOT } from "../testbed/testbed.ts";

const SECRETARY_UNIT = "apache-secretary@.service";
const APACHE_UNIT = "apache@.service";
/** The agent mode's units (install.sh --agent): the one agent of the host, and each instance's oneshot. */
const AGENT_UNIT = "secretary-agent.service";
const ATTACH_UNIT = "apache-secretary-agent@.service";
const INSTANCES = [8080, 8081];
/** The proxy hosts' units (installed as templates, enabled by hand), each with its source in the repository. */
const CONSUMER_UNITS: Record<string, string> = {
  "registry-haproxy@.service": "registry-haproxy@.service",
  "registry-nginx@.service": "examples/nginx/registry-nginx@.service",
};
/** Each unit's TLS drop-in (installed as `<unit>.d/tls.conf` by --tls), under units/. */
const TLS_DROP_INS: Record<string, string> = {
  [SECRETARY_UNIT]: "apache-secretary-tls.conf",
  "registry-haproxy@.service": "registry-haproxy-tls.conf",
  "registry-nginx@.service": "registry-nginx-tls.conf",
};
/** The agent's TLS drop-in (installed by --agent --tls as secretary-agent.service.d/tls.conf), under units/. */
const AGENT_TLS_DROP_IN = "secretary-agent-tls.conf";
/** The file the authentication drop-in (`<unit>.d/auth.conf`, installed by --auth) reads ETCDCTL_USER from. */
const CREDENTIALS = "/etc/secretary/etcd-user";

/** The only warning `verify` may print: the article's KillMode=none, which newer systemd deprecates. */
const KILLMODE_WARNING = /apache@\.service:\d+: Unit uses KillMode=none\. This is unsafe/;

// ---------------------------------------------------------------------------
// helpers

async function sh(
  command: string,
  args: string[],
  options: { cwd?: string } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(command, { args, cwd: options.cwd, stdout: "piped", stderr: "piped" }).output();
  const decoder = new TextDecoder();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

/**
 * A scratch root as install.sh (`mode` "agent": install.sh --agent) leaves it
 * (deno, bundles, units, the 8080 and 8081 instance links), plus what
 * `verify` needs of a host that the test machine lacks: the units must not be
 * weakened to pass.
 */
const installed = new Map<"sidekick" | "agent", Promise<string>>();
function scratchRoot(mode: "sidekick" | "agent" = "sidekick"): Promise<string> {
  if (!installed.has(mode)) installed.set(mode, makeScratchRoot(mode));
  return installed.get(mode)!;
}

async function makeScratchRoot(mode: "sidekick" | "agent"): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: `secretary-root-${mode}-` });
  globalThis.addEventListener("unload", () => Deno.removeSync(root, { recursive: true }));
  const instances = INSTANCES.flatMap((p) => ["--instance", String(p)]);
  const args = ["--root", root, "--from", await bundles(), ...(mode === "agent" ? ["--agent"] : [])];
  args.push("--tls", "--auth", ...instances);
  const out = await sh(`${ROOT}install.sh`, args);
  if (out.code !== 0) throw new Error(`install.sh failed:\n${out.stderr}`);
  // the host's own units (sysinit.target, basic.target, …): every service depends on them by default
  await Deno.mkdir(`${root}/usr/lib/systemd`, { recursive: true });
  const copy = await sh("cp", ["-a", "/usr/lib/systemd/system", `${root}/usr/lib/systemd/`]);
  if (copy.code !== 0) throw new Error(`copying the host's units failed: ${copy.stderr}`);
  // docker and etcd are not on a test machine: stand-ins, so verify checks everything else
  await Deno.mkdir(`${root}/usr/bin`, { recursive: true });
  await Deno.writeTextFile(`${root}/usr/bin/docker`, "#!/bin/sh\n# a stand-in for verify: never run\nexit 0\n");
  await Deno.chmod(`${root}/usr/bin/docker`, 0o755);
  for (const name of ["etcd", "docker"]) {
    await Deno.writeTextFile(
      `${root}/etc/systemd/system/${name}.service`,
      `# a stand-in for verify: the host's own ${name}.service\n[Unit]\nDescription=${name} stand-in\n\n` +
        "[Service]\nExecStart=/usr/bin/docker\n",
    );
  }
  return root;
}

/** A unit file's settings: section → key → values in order (repeated keys accumulate). */
function parseUnit(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | undefined;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    assert.ok(!line.endsWith("\\"), `no line continuations: ${line}`);
    const section = /^\[(.+)\]$/.exec(line);
    if (section) {
      current = new Map();
      sections.set(section[1], current);
      continue;
    }
    const eq = line.indexOf("=");
    assert.ok(current && eq > 0, `not a setting: ${line}`);
    const key = line.slice(0, eq).trim();
    current.set(key, [...(current.get(key) ?? []), line.slice(eq + 1).trim()]);
  }
  return sections;
}

function setting(unit: Map<string, Map<string, string[]>>, section: string, key: string): string[] {
  return unit.get(section)?.get(key) ?? [];
}

// ---------------------------------------------------------------------------
// install.sh and the instance links

Deno.test("install.sh refuses a URL in /etc/environment's SECRETARY_ETCD, naming it, and installs nothing", async () => {
  const root = await Deno.makeTempDir({ prefix: "secretary-envcheck-" });
  try {
    await Deno.mkdir(`${root}/etc`);
    const cases: [string, number][] = [
      ["SECRETARY_ETCD=http://10.0.0.5:2379", 2],
      ['SECRETARY_ETCD="10.0.0.5:2379,https://10.0.0.6:2379"', 2],
      ["SECRETARY_ETCD=10.0.0.5", 2],
      ["SECRETARY_ETCD=10.0.0.5:2379,etcd-2.example:2379,[fd00::1]:2379", 0],
    ];
    for (const [line, code] of cases) {
      await Deno.writeTextFile(`${root}/etc/environment`, `COREOS_PUBLIC_IPV4=10.0.0.5\n${line}\n`);
      const out = await sh(`${ROOT}install.sh`, ["--root", root, "--from", await bundles()]);
      assert.equal(out.code, code, `${line}: ${out.stderr}`);
      if (code === 2) {
        assert.match(
          out.stderr,
          /^install: Cannot use SECRETARY_ETCD="[^"]*" in .*: expected host:port\[,host:port\.\.\.\], not URLs\n$/,
        );
        assert.equal(await Deno.stat(`${root}/opt`).then(() => true, () => false), false, "installed anyway");
      }
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("install.sh --auth refuses an etcd user's file that others can read, naming it, and installs nothing", async () => {
  const root = await Deno.makeTempDir({ prefix: "secretary-authcheck-" });
  try {
    await Deno.mkdir(`${root}/etc/secretary`, { recursive: true });
    const file = `${root}${CREDENTIALS}`;
    await Deno.writeTextFile(file, "ETCDCTL_USER=root:pw\n");
    for (const [mode, code] of [[0o644, 2], [0o640, 2], [0o600, 0]]) {
      await Deno.chmod(file, mode);
      const out = await sh(`${ROOT}install.sh`, ["--root", root, "--from", await bundles(), "--auth"]);
      assert.equal(out.code, code, `${mode.toString(8)}: ${out.stderr}`);
      if (code === 2) {
        assert.match(
          out.stderr,
          /^install: Cannot use \S+\/etc\/secretary\/etcd-user: mode 0[0-7]{3} lets others read/,
        );
        assert.equal(out.stderr.trimEnd().split("\n").length, 1, out.stderr);
        assert.equal(await Deno.stat(`${root}/opt`).then(() => true, () => false), false, "installed anyway");
      }
    }
    assert.equal(await Deno.readTextFile(file), "ETCDCTL_USER=root:pw\n", "install.sh changed the user's file");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("the secretary and proxy units turn deno's update check off and give it a cache folder of their own", async () => {
  const files = [SECRETARY_UNIT, AGENT_UNIT, ATTACH_UNIT, "examples/queue-secretary@.service"];
  for (const file of [...files, ...Object.values(CONSUMER_UNITS)]) {
    const unit = parseUnit(await Deno.readTextFile(`${ROOT}units/${file}`));
    const env = setting(unit, "Service", "Environment");
    const name = file.slice(file.lastIndexOf("/") + 1).replace(/@?\.service$/, "");
    assert.ok(env.includes("DENO_NO_UPDATE_CHECK=1"), `${file}: ${env}`);
    assert.ok(env.includes(`DENO_DIR=%C/${name}`), `${file}: ${env}`);
    assert.deepEqual(setting(unit, "Service", "CacheDirectory"), [name], file);
  }
});

Deno.test("install.sh --root puts deno, the bundles, the registry command and the units in a scratch root", async () => {
  const root = await scratchRoot();
  const bin = `${root}/opt/bin`;
  const mode = (path: string) => Deno.statSync(path).mode! & 0o777;
  assert.equal(mode(`${bin}/deno`), 0o755);
  const version = await sh(`${bin}/deno`, ["--version"]);
  assert.match(version.stdout, /^deno \d+\.\d+\.\d+/, "the deno binary itself, not the npm launcher");
  for (const name of ["secretary.mjs", "secretary.mjs.map", "registry.mjs", "registry.mjs.map"]) {
    assert.equal(mode(`${bin}/${name}`), 0o644, name);
    assert.deepEqual(await Deno.readFile(`${bin}/${name}`), await Deno.readFile(`${await bundles()}/${name}`), name);
  }
  assert.equal(mode(`${bin}/registry`), 0o755);
  const wrapper = await Deno.readTextFile(`${bin}/registry`);
  assert.match(wrapper, /--allow-net="\$net"/);
  assert.match(wrapper, /--allow-env=ETCDCTL_CACERT,ETCDCTL_CERT,ETCDCTL_KEY,ETCDCTL_USER,GRPC_\* /);
  assert.match(wrapper, /^export DENO_NO_UPDATE_CHECK=1$/m);
  const sources: Record<string, string> = {
    [APACHE_UNIT]: APACHE_UNIT,
    [SECRETARY_UNIT]: SECRETARY_UNIT,
    ...CONSUMER_UNITS,
  };
  for (const [unit, source] of Object.entries(sources)) {
    assert.equal(
      await Deno.readTextFile(`${root}/etc/systemd/system/${unit}`),
      await Deno.readTextFile(`${ROOT}units/${source}`),
      unit,
    );
  }
  for (const [unit, dropIn] of Object.entries(TLS_DROP_INS)) {
    const dir = `${root}/etc/systemd/system/${unit}.d`;
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), ["auth.conf", "tls.conf"], unit);
    const tls = await Deno.readTextFile(`${dir}/tls.conf`);
    assert.equal(tls, await Deno.readTextFile(`${ROOT}units/${dropIn}`), `--tls installs ${unit}'s TLS drop-in`);
    const auth = await Deno.readTextFile(`${dir}/auth.conf`);
    assert.equal(auth, await Deno.readTextFile(`${ROOT}units/etcd-auth.conf`), `--auth installs ${unit}'s drop-in`);
  }
  for (const port of INSTANCES) {
    for (const unit of [APACHE_UNIT, SECRETARY_UNIT]) {
      const link = `${root}/etc/systemd/system/${unit.replace("@", `@${port}`)}`;
      assert.equal(Deno.readLinkSync(link), unit, `${link} links to its template beside it`);
    }
  }

  const help = await sh(`${ROOT}install.sh`, ["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--root DIR/);
  const bad = await sh(`${ROOT}install.sh`, ["--rooot", "/tmp/x"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /^install: Cannot use argument "--rooot"/);
  const empty = await Deno.makeTempDir({ prefix: "secretary-nobundle-" });
  try {
    const missing = await sh(`${ROOT}install.sh`, ["--root", `${empty}/root`, "--from", empty]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /secretary\.mjs is missing: build the bundles first/);
    assert.deepEqual([...Deno.readDirSync(empty)], [], "installed something without bundles");
  } finally {
    await Deno.remove(empty, { recursive: true });
  }
});

Deno.test("units/instances.sh makes the article's instance links; units/instances holds those of 8080 and 8081", async () => {
  const dir = await Deno.makeTempDir({ prefix: "secretary-instances-" });
  try {
    const made = await sh(`${ROOT}units/instances.sh`, [`${dir}/instances`, "8082", "8083"]);
    assert.equal(made.code, 0, made.stderr);
    const links = [...Deno.readDirSync(`${dir}/instances`)].map((e) => e.name).sort();
    assert.deepEqual(links, [
      "apache-secretary@8082.service",
      "apache-secretary@8083.service",
      "apache@8082.service",
      "apache@8083.service",
    ]);
    for (const link of links) {
      const target = await Deno.realPath(`${dir}/instances/${link}`);
      assert.equal(target, await Deno.realPath(`${ROOT}units/${link.replace(/@\d+/, "@")}`));
    }
    const bad = await sh(`${ROOT}units/instances.sh`, [`${dir}/instances`, "80a"]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /^instances: Cannot use port "80a"/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const committed = [...Deno.readDirSync(`${ROOT}units/instances`)].map((e) => e.name).sort();
  assert.deepEqual(committed, [
    "apache-secretary@8080.service",
    "apache-secretary@8081.service",
    "apache@8080.service",
    "apache@8081.service",
  ]);
  for (const link of committed) {
    assert.equal(Deno.readLinkSync(`${ROOT}units/instances/${link}`), `../${link.replace(/@\d+/, "@")}`);
  }
});

// ---------------------------------------------------------------------------
// systemd-analyze verify

Deno.test("systemd-analyze verify passes on the installed templates, the 8080 and 8081 instance links and the proxy units", async () => {
  const root = await scratchRoot();
  const units = `${root}/etc/systemd/system`;
  const paths = [
    `${units}/${APACHE_UNIT}`,
    `${units}/${SECRETARY_UNIT}`,
    ...INSTANCES.flatMap((p) => [`${units}/apache@${p}.service`, `${units}/apache-secretary@${p}.service`]),
    // the proxy units: the templates, and an instance of each (as `systemctl enable registry-haproxy@apache` makes)
    ...Object.keys(CONSUMER_UNITS).flatMap((u) => [`${units}/${u}`, `${units}/${u.replace("@", "@apache")}`]),
  ];
  const verify = (path: string) => sh("systemd-analyze", ["verify", `--root=${root}`, path]);
  const verifyAll = async (what: string) => {
    for (const path of paths) {
      const out = await verify(path);
      const complaints = `${out.stdout}${out.stderr}`.split("\n").filter((l) => l.trim() && !KILLMODE_WARNING.test(l));
      assert.equal(out.code, 0, `${what}: ${path}:\n${out.stderr}`);
      assert.deepEqual(complaints, [], `${what}: ${path}: verify complained`);
    }
  };
  await verifyAll("with the TLS and authentication drop-ins");
  const dropIns = Object.keys(TLS_DROP_INS).map((u) => `${units}/${u}.d`);
  for (const dir of dropIns) await Deno.rename(dir, `${dir}.away`);
  try {
    await verifyAll("the units alone");
  } finally {
    for (const dir of dropIns) await Deno.rename(`${dir}.away`, dir);
  }

  // the control: verify reads the proxy units' drop-ins too
  const stray = `${units}/registry-nginx@.service.d/zz-stray.conf`;
  await Deno.writeTextFile(stray, "[Service]\nEnvironmentFil=/etc/secretary/etcd-user\n");
  try {
    const out = await verify(`${units}/registry-nginx@apache.service`);
    assert.match(out.stderr, /zz-stray\.conf:2: Unknown key 'EnvironmentFil'/);
  } finally {
    await Deno.remove(stray);
  }

  // the control: verify does look inside the root, at the secretary's ExecStart binary
  await Deno.rename(`${root}/opt/bin/deno`, `${root}/opt/bin/deno.away`);
  try {
    const out = await verify(`${units}/apache-secretary@8080.service`);
    assert.notEqual(out.code, 0);
    assert.match(out.stderr, /Command \/opt\/bin\/deno is not executable/);
  } finally {
    await Deno.rename(`${root}/opt/bin/deno.away`, `${root}/opt/bin/deno`);
  }
});

// ---------------------------------------------------------------------------
// what the units say

Deno.test("apache@.service is the article's template with its fix: it requires its secretary and starts before it", async () => {
  const unit = parseUnit(await Deno.readTextFile(`${ROOT}units/${APACHE_UNIT}`));
  assert.deepEqual(setting(unit, "Unit", "Requires"), ["docker.service", "apache-secretary@%i.service"]);
  // an etcd restart must not restart Apache: wanted, not required
  assert.deepEqual(setting(unit, "Unit", "Wants"), ["etcd.service"]);
  assert.deepEqual(setting(unit, "Unit", "After"), ["etcd.service", "docker.service"]);
  assert.deepEqual(setting(unit, "Unit", "Before"), ["apache-secretary@%i.service"]);
  assert.deepEqual(setting(unit, "Service", "TimeoutStartSec"), ["0"]);
  assert.deepEqual(setting(unit, "Service", "KillMode"), ["none"]);
  assert.deepEqual(setting(unit, "Service", "EnvironmentFile"), ["/etc/environment"]);
  assert.deepEqual(setting(unit, "Service", "ExecStartPre"), [
    "-/usr/bin/docker kill apache.%i",
    "-/usr/bin/docker rm apache.%i",
    "/usr/bin/docker pull eboraas/apache",
  ]);
  assert.deepEqual(setting(unit, "Service", "ExecStart"), [
    "/usr/bin/docker run --name apache.%i -p ${COREOS_PUBLIC_IPV4}:%i:80 eboraas/apache",
  ]);
  assert.deepEqual(setting(unit, "Service", "ExecStop"), ["/usr/bin/docker stop apache.%i"]);
  assert.deepEqual(setting(unit, "X-Fleet", "Conflicts"), ["apache@*.service"]);
});

Deno.test("apache-secretary@.service is bound to its Apache and stops before it, restarts on failure but not on exit 2", async () => {
  const unit = parseUnit(await Deno.readTextFile(`${ROOT}units/${SECRETARY_UNIT}`));
  assert.deepEqual(setting(unit, "Unit", "BindsTo"), ["apache@%i.service"]);
  // After= on start means before on stop: systemd stops the secretary (its record goes) before Apache
  assert.ok(setting(unit, "Unit", "After").includes("apache@%i.service"));
  // an etcd restart must not stop the secretary (nor, through Apache's Requires=, Apache)
  assert.deepEqual(setting(unit, "Unit", "Wants"), ["etcd.service"]);
  assert.deepEqual(setting(unit, "Unit", "Requires"), ["apache@%i.service"]);
  assert.deepEqual(setting(unit, "Service", "EnvironmentFile"), ["/etc/environment"]);
  assert.deepEqual(setting(unit, "Service", "Restart"), ["on-failure"]);
  assert.deepEqual(setting(unit, "Service", "RestartPreventExitStatus"), ["2"]);
  assert.deepEqual(setting(unit, "Service", "SyslogIdentifier"), ["apache-secretary@%i"]);
  assert.deepEqual(setting(unit, "Service", "ExecStop"), [], "SIGTERM removes the record; no ExecStop");
  assert.deepEqual(setting(unit, "Service", "KillMode"), [], "the default: SIGTERM to the secretary");
  assert.deepEqual(setting(unit, "X-Fleet", "MachineOf"), ["apache@%i.service"]);
  // the etcd address has a default that /etc/environment overrides (EnvironmentFile= wins over Environment=)
  assert.ok(setting(unit, "Service", "Environment").includes("SECRETARY_ETCD=127.0.0.1:2379"));

  const [exec] = setting(unit, "Service", "ExecStart");
  const words = exec.split(/\s+/);
  assert.deepEqual(words.slice(0, 3), ["/opt/bin/deno", "run", "--v8-flags=--lite-mode"]);
  const permissions = words.filter((w) => w.startsWith("--allow") || w.startsWith("-A") || w === "--unstable");
  assert.deepEqual(permissions, [
    "--allow-net=${COREOS_PUBLIC_IPV4}:%i,${SECRETARY_ETCD}",
    "--allow-env=COREOS_PUBLIC_IPV4,ETCDCTL_CACERT,ETCDCTL_CERT,ETCDCTL_KEY,ETCDCTL_USER,JOURNAL_STREAM,GRPC_*",
  ]);
  assert.deepEqual(words.slice(3 + permissions.length), [
    "/opt/bin/secretary.mjs",
    "%i",
    "--hostname",
    "%H",
    "--endpoints",
    "${SECRETARY_ETCD}",
    "--drain",
    "5s",
  ]);
});

/** An ExecStart= line's words, quotes taken off as systemd does, `${VAR}` and `%i` left as written. */
function execWords(unit: Map<string, Map<string, string[]>>): string[] {
  const lines = setting(unit, "Service", "ExecStart").filter((l) => l !== "");
  assert.equal(lines.length, 1, `one ExecStart: ${lines}`);
  return splitCommand(lines[0]);
}

/** The three files of etcd over TLS, as the drop-ins name them. */
const TLS_FILES = ["${ETCDCTL_CACERT}", "${ETCDCTL_CERT}", "${ETCDCTL_KEY}"];

Deno.test("each TLS drop-in is its unit's ExecStart with reading the three TLS files and the https endpoints, nothing else", async () => {
  const sources: Record<string, string> = {
    [SECRETARY_UNIT]: SECRETARY_UNIT,
    [AGENT_UNIT]: AGENT_UNIT,
    ...CONSUMER_UNITS,
  };
  for (const [name, dropIn] of Object.entries({ ...TLS_DROP_INS, [AGENT_UNIT]: AGENT_TLS_DROP_IN })) {
    const unit = execWords(parseUnit(await Deno.readTextFile(`${ROOT}units/${sources[name]}`)));
    const text = await Deno.readTextFile(`${ROOT}units/${dropIn}`);
    const parsed = parseUnit(text);
    assert.deepEqual([...parsed.keys()], ["Service"], dropIn);
    assert.deepEqual([...parsed.get("Service")!.keys()], ["ExecStart"], `${dropIn}: only ExecStart`);
    assert.equal(setting(parsed, "Service", "ExecStart")[0], "", `${dropIn}: resets the unit's ExecStart first`);
    const tls = execWords(parsed);
    const endpoints = tls.indexOf("--endpoints");
    assert.equal(tls[endpoints + 1], "${ETCDCTL_ENDPOINTS}", `${dropIn}: the https:// URLs`);
    const reads = tls.filter((w) => w.startsWith("--allow-read="));
    assert.equal(reads.length, 1, dropIn);
    assert.deepEqual(
      reads[0].slice("--allow-read=".length).split(",").slice(-3),
      TLS_FILES,
      `${dropIn}: the TLS files readable`,
    );
    // undo exactly those two changes: what is left is the unit's own line, word for word
    const undone = tls.flatMap((w, i) => {
      if (i === endpoints + 1) return ["${SECRETARY_ETCD}"];
      if (!w.startsWith("--allow-read=")) return [w];
      const rest = w.slice("--allow-read=".length).split(",").filter((p) => !TLS_FILES.includes(p));
      return rest.length > 0 ? [`--allow-read=${rest.join(",")}`] : [];
    });
    assert.deepEqual(undone, unit, `${dropIn} differs from ${sources[name]} by more than the TLS files and endpoints`);
  }
});

Deno.test("the authentication drop-in only reads ETCDCTL_USER from a file of its own, which each unit passes on", async () => {
  const parsed = parseUnit(await Deno.readTextFile(`${ROOT}units/etcd-auth.conf`));
  assert.deepEqual([...parsed.keys()], ["Service"]);
  assert.deepEqual([...parsed.get("Service")!.entries()], [["EnvironmentFile", [CREDENTIALS]]]);
  const sources = [SECRETARY_UNIT, AGENT_UNIT, ...Object.values(CONSUMER_UNITS)];
  for (const source of sources) {
    const words = execWords(parseUnit(await Deno.readTextFile(`${ROOT}units/${source}`)));
    const env = words.find((w) => w.startsWith("--allow-env="))!.slice("--allow-env=".length).split(",");
    assert.ok(env.includes("ETCDCTL_USER"), `${source}: --allow-env lacks ETCDCTL_USER`);
    assert.ok(!words.some((w) => w.includes(CREDENTIALS)), `${source}: the process itself may read the password file`);
  }
});

Deno.test("the proxy units run only what they need: HAProxy's sync runs nothing, nginx's render runs /usr/sbin/nginx only", async () => {
  const haproxy = execWords(parseUnit(await Deno.readTextFile(`${ROOT}units/registry-haproxy@.service`)));
  assert.deepEqual(haproxy.filter((w) => /^--allow-(run|all|ffi|sys|import)|^-A$/.test(w)), []);
  for (const file of ["examples/nginx/registry-nginx@.service", "registry-nginx-tls.conf"]) {
    const words = execWords(parseUnit(await Deno.readTextFile(`${ROOT}units/${file}`)));
    const runs = words.filter((w) => w.startsWith("--allow-run"));
    assert.deepEqual(runs, ["--allow-run=/usr/sbin/nginx"], file);
    const allowed = runs[0].slice("--allow-run=".length).split(",");
    for (const flag of ["--check", "--reload"]) {
      const command = splitCommand(words[words.indexOf(flag) + 1]);
      assert.ok(allowed.includes(command[0]), `${file}: ${flag} runs ${command[0]}, not in ${runs[0]}`);
    }
    assert.deepEqual(words.filter((w) => /^--allow-(all|ffi|sys|import)|^-A$/.test(w)), [], file);
  }
});

// ---------------------------------------------------------------------------
// the agent mode: install.sh --agent

/** units/apache@.service as install.sh --agent installs it: its secretary's unit is the agent's oneshot. */
function agentApache(source: string): string {
  return "# Installed by install.sh --agent: units/apache@.service with apache-secretary@%i.service\n" +
    "# replaced by apache-secretary-agent@%i.service, which attaches the instance to secretary-agent.\n" +
    source.replaceAll("apache-secretary@%i.service", "apache-secretary-agent@%i.service");
}

Deno.test("install.sh --agent installs the agent's units, an apache@.service that starts the agent's oneshot, the agent's drop-ins and instance links", async () => {
  const root = await scratchRoot("agent");
  const units = `${root}/etc/systemd/system`;
  const source = await Deno.readTextFile(`${ROOT}units/${APACHE_UNIT}`);
  const apache = await Deno.readTextFile(`${units}/${APACHE_UNIT}`);
  assert.equal(
    apache,
    agentApache(source),
    "apache@.service is units/apache@.service with its secretary's unit replaced",
  );
  const parsed = parseUnit(apache);
  assert.deepEqual(setting(parsed, "Unit", "Requires"), ["docker.service", "apache-secretary-agent@%i.service"]);
  assert.deepEqual(setting(parsed, "Unit", "Before"), ["apache-secretary-agent@%i.service"]);
  const settings = apache.split("\n").filter((l) => !l.startsWith("#"));
  assert.deepEqual(settings.filter((l) => l.includes("apache-secretary@")), [], "apache@.service names the sidekick");
  for (const unit of [AGENT_UNIT, ATTACH_UNIT, ...Object.keys(CONSUMER_UNITS)]) {
    const from = CONSUMER_UNITS[unit] ?? unit;
    assert.equal(await Deno.readTextFile(`${units}/${unit}`), await Deno.readTextFile(`${ROOT}units/${from}`), unit);
  }
  // the sidekick's unit is not installed, nor its drop-ins: nothing could start a second secretary per instance
  for (
    const absent of [
      SECRETARY_UNIT,
      `${SECRETARY_UNIT}.d`,
      ...INSTANCES.map((p) => `apache-secretary@${p}.service`),
    ]
  ) {
    assert.equal(await Deno.lstat(`${units}/${absent}`).then(() => true, () => false), false, `${absent} installed`);
  }
  // the TLS and authentication drop-ins go to the agent, the one unit of the host that talks to etcd
  const dropIns = `${units}/${AGENT_UNIT}.d`;
  assert.deepEqual([...Deno.readDirSync(dropIns)].map((e) => e.name).sort(), ["auth.conf", "tls.conf"]);
  assert.equal(
    await Deno.readTextFile(`${dropIns}/tls.conf`),
    await Deno.readTextFile(`${ROOT}units/${AGENT_TLS_DROP_IN}`),
  );
  assert.equal(await Deno.readTextFile(`${dropIns}/auth.conf`), await Deno.readTextFile(`${ROOT}units/etcd-auth.conf`));
  assert.equal(await Deno.lstat(`${units}/${ATTACH_UNIT}.d`).then(() => true, () => false), false, "attach needs none");
  for (const unit of Object.keys(CONSUMER_UNITS)) {
    const names = [...Deno.readDirSync(`${units}/${unit}.d`)].map((e) => e.name).sort();
    assert.deepEqual(names, ["auth.conf", "tls.conf"], `the proxy unit ${unit} keeps its drop-ins`);
  }
  for (const port of INSTANCES) {
    for (const unit of [APACHE_UNIT, ATTACH_UNIT]) {
      const link = `${units}/${unit.replace("@", `@${port}`)}`;
      assert.equal(Deno.readLinkSync(link), unit, `${link} links to its template beside it`);
    }
  }
  const help = await sh(`${ROOT}install.sh`, ["--help"]);
  assert.match(help.stdout, /--agent +one secretary agent for the host/);
});

Deno.test("units/instances.sh --agent links the agent's oneshot, only to the templates of install.sh --agent", async () => {
  const root = await scratchRoot("agent");
  const dir = await Deno.makeTempDir({ prefix: "secretary-instances-agent-" });
  try {
    // beside the script (units/) is the sidekick's apache@.service: --agent refuses to link to it
    const refused = await sh(`${ROOT}units/instances.sh`, ["--agent", `${dir}/instances`, "8082"]);
    assert.equal(refused.code, 2);
    assert.match(
      refused.stderr,
      /^instances: Cannot use --agent with "[^"]+": expected the templates of install\.sh --agent/,
    );
    assert.equal(await Deno.stat(`${dir}/instances`).then(() => true, () => false), false, "linked anyway");

    const units = `${root}/etc/systemd/system`;
    const made = await sh(`${ROOT}units/instances.sh`, ["--agent", units, "8082"]);
    assert.equal(made.code, 0, made.stderr);
    try {
      assert.equal(Deno.readLinkSync(`${units}/apache@8082.service`), "apache@.service");
      assert.equal(Deno.readLinkSync(`${units}/apache-secretary-agent@8082.service`), ATTACH_UNIT);
      assert.equal(await Deno.lstat(`${units}/apache-secretary@8082.service`).then(() => true, () => false), false);
    } finally {
      for (const link of ["apache@8082.service", "apache-secretary-agent@8082.service"]) {
        await Deno.remove(`${units}/${link}`).catch(() => {});
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("systemd-analyze verify passes on install.sh --agent's units: the agent, the oneshot, apache@ and the 8080 and 8081 links", async () => {
  const root = await scratchRoot("agent");
  const units = `${root}/etc/systemd/system`;
  const paths = [
    `${units}/${AGENT_UNIT}`,
    `${units}/${ATTACH_UNIT}`,
    `${units}/${APACHE_UNIT}`,
    ...INSTANCES.flatMap((p) => [`${units}/apache@${p}.service`, `${units}/apache-secretary-agent@${p}.service`]),
  ];
  const verify = (path: string) => sh("systemd-analyze", ["verify", `--root=${root}`, path]);
  const verifyAll = async (what: string) => {
    for (const path of paths) {
      const out = await verify(path);
      const complaints = `${out.stdout}${out.stderr}`.split("\n").filter((l) => l.trim() && !KILLMODE_WARNING.test(l));
      assert.equal(out.code, 0, `${what}: ${path}:\n${out.stderr}`);
      assert.deepEqual(complaints, [], `${what}: ${path}: verify complained`);
    }
  };
  await verifyAll("with the agent's TLS and authentication drop-ins");
  await Deno.rename(`${units}/${AGENT_UNIT}.d`, `${units}/${AGENT_UNIT}.d.away`);
  try {
    await verifyAll("the units alone");
  } finally {
    await Deno.rename(`${units}/${AGENT_UNIT}.d.away`, `${units}/${AGENT_UNIT}.d`);
  }

  // a host switched from sidekicks, their template still there: the oneshot still passes, and a sidekick for an
  // instance of the agent's apache@ cannot start (its Apache requires the oneshot, which conflicts with it)
  await Deno.copyFile(`${ROOT}units/${SECRETARY_UNIT}`, `${units}/${SECRETARY_UNIT}`);
  await Deno.symlink(SECRETARY_UNIT, `${units}/apache-secretary@8080.service`);
  try {
    await verifyAll("beside the sidekick's template");
    const out = await verify(`${units}/apache-secretary@8080.service`);
    assert.notEqual(out.code, 0);
    assert.match(out.stderr, /conflicting jobs 'stop' and 'start' for apache-secretary@8080\.service/);
  } finally {
    await Deno.remove(`${units}/apache-secretary@8080.service`);
    await Deno.remove(`${units}/${SECRETARY_UNIT}`);
  }

  // the control: verify does read the oneshot's settings (a oneshot may not restart always)
  const stray = `${units}/${ATTACH_UNIT}.d/zz-stray.conf`;
  await Deno.mkdir(`${units}/${ATTACH_UNIT}.d`);
  await Deno.writeTextFile(stray, "[Service]\nRestart=always\n");
  try {
    const out = await verify(`${units}/apache-secretary-agent@8080.service`);
    assert.notEqual(out.code, 0);
    assert.match(out.stderr, /Restart= set to either always or on-success, which isn't allowed for Type=oneshot/);
  } finally {
    await Deno.remove(`${units}/${ATTACH_UNIT}.d`, { recursive: true });
  }
});

/** The permission flags of a deno command line, and what comes after the script. */
function denoLine(words: string[]): { permissions: string[]; script: string[] } {
  assert.deepEqual(words.slice(0, 3), ["/opt/bin/deno", "run", "--v8-flags=--lite-mode"]);
  const at = words.indexOf("/opt/bin/secretary.mjs");
  assert.ok(at > 0, words.join(" "));
  return { permissions: words.slice(3, at), script: words.slice(at + 1) };
}

/** Where the agent listens and keeps agent.json: the agent unit's RuntimeDirectory under /run. */
const AGENT_SOCKET = "/run/secretary/agent.sock";

Deno.test("secretary-agent.service: one per host, its state in a runtime folder of its own kept across restarts, least privilege", async () => {
  const unit = parseUnit(await Deno.readTextFile(`${ROOT}units/${AGENT_UNIT}`));
  assert.deepEqual(setting(unit, "Unit", "Wants"), ["etcd.service"]);
  assert.deepEqual(setting(unit, "Unit", "After"), ["etcd.service"]);
  assert.deepEqual(setting(unit, "Unit", "Requires"), []);
  assert.deepEqual(setting(unit, "Service", "RuntimeDirectory"), ["secretary"]);
  assert.deepEqual(setting(unit, "Service", "RuntimeDirectoryMode"), ["0700"]);
  // kept when the agent stops or restarts (the next agent adopts agent.json); /run is gone at reboot
  assert.deepEqual(setting(unit, "Service", "RuntimeDirectoryPreserve"), ["yes"]);
  assert.deepEqual(setting(unit, "Service", "EnvironmentFile"), ["/etc/environment"]);
  assert.ok(setting(unit, "Service", "Environment").includes("SECRETARY_ETCD=127.0.0.1:2379"));
  assert.deepEqual(setting(unit, "Service", "Restart"), ["on-failure"]);
  assert.deepEqual(setting(unit, "Service", "RestartPreventExitStatus"), ["2"]);
  assert.deepEqual(setting(unit, "Service", "SyslogIdentifier"), ["secretary-agent"]);
  // SIGTERM is the restart that keeps every record: no ExecStop, no other signal
  assert.deepEqual(setting(unit, "Service", "ExecStop"), []);
  assert.deepEqual(setting(unit, "Service", "KillSignal"), []);
  assert.deepEqual(setting(unit, "Service", "KillMode"), []);
  assert.deepEqual(setting(unit, "Install", "WantedBy"), ["multi-user.target"]);

  const { permissions, script } = denoLine(execWords(unit));
  assert.deepEqual(permissions, [
    `--allow-net=\${COREOS_PUBLIC_IPV4},\${SECRETARY_ETCD},unix:${AGENT_SOCKET}`,
    "--allow-read=/run/secretary",
    "--allow-write=/run/secretary",
    "--allow-env=COREOS_PUBLIC_IPV4,ETCDCTL_CACERT,ETCDCTL_CERT,ETCDCTL_KEY,ETCDCTL_USER,JOURNAL_STREAM,GRPC_*",
  ]);
  assert.deepEqual(script, ["agent", "--socket", AGENT_SOCKET, "--endpoints", "${SECRETARY_ETCD}"]);
});

Deno.test("apache-secretary-agent@.service: a oneshot bound to its Apache that attaches and detaches, wanting the agent without requiring it", async () => {
  const unit = parseUnit(await Deno.readTextFile(`${ROOT}units/${ATTACH_UNIT}`));
  // bound to Apache as apache-secretary@ is: after it on start, so before it on stop
  assert.deepEqual(setting(unit, "Unit", "Requires"), ["apache@%i.service"]);
  assert.deepEqual(setting(unit, "Unit", "BindsTo"), ["apache@%i.service"]);
  assert.deepEqual(setting(unit, "X-Fleet", "MachineOf"), ["apache@%i.service"]);
  // Wants=, not Requires=: `systemctl restart secretary-agent` must not restart (detach, attach) every instance
  assert.deepEqual(setting(unit, "Unit", "Wants"), ["secretary-agent.service"]);
  assert.deepEqual(setting(unit, "Unit", "PartOf"), []);
  // after the agent: at shutdown every detach runs while the agent is still there
  assert.deepEqual(setting(unit, "Unit", "After"), [
    "apache@%i.service",
    "secretary-agent.service",
    "apache-secretary@%i.service",
  ]);
  assert.deepEqual(setting(unit, "Unit", "Conflicts"), ["apache-secretary@%i.service"]);
  assert.deepEqual(setting(unit, "Service", "Type"), ["oneshot"]);
  assert.deepEqual(setting(unit, "Service", "RemainAfterExit"), ["yes"]);
  assert.deepEqual(setting(unit, "Service", "EnvironmentFile"), ["/etc/environment"]);
  assert.deepEqual(setting(unit, "Service", "Restart"), ["on-failure"]);
  assert.deepEqual(setting(unit, "Service", "RestartPreventExitStatus"), ["2"]);
  assert.deepEqual(setting(unit, "Service", "SyslogIdentifier"), ["apache-secretary-agent@%i"]);

  const client = [
    `--allow-net=unix:${AGENT_SOCKET}`,
    `--allow-read=${AGENT_SOCKET}`,
    `--allow-write=${AGENT_SOCKET}`,
    "--allow-env=COREOS_PUBLIC_IPV4,GRPC_*",
  ];
  const attach = denoLine(execWords(unit));
  assert.deepEqual(attach.permissions, client);
  assert.deepEqual(attach.script, ["attach", "%i", "--hostname", "%H", "--drain", "5s", "--socket", AGENT_SOCKET]);
  const stops = setting(unit, "Service", "ExecStop");
  assert.equal(stops.length, 1);
  const detach = denoLine(splitCommand(stops[0]));
  assert.deepEqual(detach.permissions, client);
  assert.deepEqual(detach.script, ["detach", "%i", "--socket", AGENT_SOCKET]);
  // the stop covers the wait for the socket (5 s), for etcd's delete (5 s) and the drain
  const seconds = (v: string) => Number(/^(\d+)s$/.exec(v)![1]);
  assert.ok(seconds(setting(unit, "Service", "TimeoutStopSec")[0]) >= 5 + 5 + 5);
  assert.ok(seconds(setting(unit, "Service", "TimeoutStartSec")[0]) >= 5 + 30);
});

// ---------------------------------------------------------------------------
// Butane

/**
 * Checks a Butane config against install.sh's staging root: its header, that
 * it embeds exactly `locals` and each is in `root`, the paths the units expect
 * and apache@8080 enabled. Returns the config's text for the mode's own checks.
 */
async function checkButane(file: string, root: string, locals: string[]): Promise<string> {
  const text = await Deno.readTextFile(`${ROOT}butane/${file}`);
  assert.match(text, /^variant: flatcar\nversion: 1\.1\.0$/m);
  const embedded = [...text.matchAll(/^\s*(?:local|contents_local): (\S+)$/gm)].map((m) => m[1]);
  assert.deepEqual(embedded.sort(), locals);
  for (const path of embedded) assert.ok(Deno.statSync(`${root}/${path}`).isFile, `${path} is not in the staging root`);
  // the paths the units expect
  for (const path of ["/opt/bin/deno", "/opt/bin/secretary.mjs", "/etc/environment"]) {
    assert.match(text, new RegExp(`^\\s*- path: ${path.replaceAll(".", "\\.")}$`, "m"), path);
  }
  assert.match(text, /^\s*- name: apache@8080\.service\n\s*enabled: true$/m);
  return text;
}

Deno.test("butane/secretary.bu embeds only files that install.sh puts in the staging root", async () => {
  await checkButane("secretary.bu", await scratchRoot(), [
    "etc/systemd/system/apache-secretary@.service",
    "etc/systemd/system/apache@.service",
    "opt/bin/registry",
    "opt/bin/registry.mjs",
    "opt/bin/secretary.mjs",
  ]);
});

Deno.test("butane/secretary-agent.bu embeds only files that install.sh --agent puts in the staging root", async () => {
  const text = await checkButane("secretary-agent.bu", await scratchRoot("agent"), [
    "etc/systemd/system/apache-secretary-agent@.service",
    "etc/systemd/system/apache@.service",
    "etc/systemd/system/secretary-agent.service",
    "opt/bin/registry",
    "opt/bin/registry.mjs",
    "opt/bin/secretary.mjs",
  ]);
  assert.match(text, /install\.sh --agent --root \/tmp\/stage/);
  assert.match(text, /^\s*- name: secretary-agent\.service\n\s*enabled: true$/m);
});

Deno.test("units/examples/queue-secretary@.service, an exec check with drain and maintenance, passes systemd-analyze verify", async () => {
  const root = await scratchRoot();
  const units = `${root}/etc/systemd/system`;
  await Deno.copyFile(`${ROOT}units/examples/queue-secretary@.service`, `${units}/queue-secretary@.service`);
  await Deno.writeTextFile(
    `${units}/queue@.service`,
    "# a stand-in for verify: the team's own service\n[Unit]\nDescription=queue stand-in\n\n" +
      "[Service]\nExecStart=/usr/bin/docker\n",
  );
  await Deno.symlink("queue-secretary@.service", `${units}/queue-secretary@9000.service`);
  try {
    const out = await sh("systemd-analyze", ["verify", `--root=${root}`, `${units}/queue-secretary@9000.service`]);
    assert.equal(out.code, 0, out.stderr);
    assert.deepEqual(`${out.stdout}${out.stderr}`.split("\n").filter((l) => l.trim()), [], "verify complained");
  } finally {
    for (const name of ["queue-secretary@9000.service", "queue-secretary@.service", "queue@.service"]) {
      await Deno.remove(`${units}/${name}`);
    }
  }
});
