/**
 * Go gRPC clients find the instances by themselves: a client built with
 * Debian's Go packages dials `etcd:////services/grpc-health/` through etcd's
 * own name resolver (clientv3/naming/resolver), round robin, and its RPCs
 * follow what two real secretaries register: both instances reached, one
 * stopped as systemd stops it (secretary first, with a drain) without a
 * failed RPC, one killed.
 */
import assert from "node:assert/strict";
import { DEFAULT_PREFIX } from "../lib/record.ts";
import { loopback, ROOT, Script, SOURCE_FLAGS, waitFor } from "../testbed/testbed.ts";

const lo = loopback(import.meta.url);

/** Builds testbed/grpcpeer with Debian's Go in GOPATH mode (golang-etcd-server-dev, golang-google-grpc-dev). */
async function buildGrpcPeer(dir: string): Promise<string> {
  const out = await new Deno.Command("go", {
    args: ["build", "-o", `${dir}/grpcpeer`, "./testbed/grpcpeer"],
    cwd: ROOT,
    env: {
      GO111MODULE: "off",
      GOPATH: "/usr/share/gocode",
      GOFLAGS: "",
      // kept between runs: a first build takes about 10 s, later ones about 1 s
      GOCACHE: "/tmp/secretary-go-build-cache",
    },
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`go build failed:\n${new TextDecoder().decode(out.stderr)}`);
  return `${dir}/grpcpeer`;
}

/** A gRPC health server on `ip`, on a port the kernel picks; resolves once it listens. */
async function serve(bin: string, ip: string): Promise<{ proc: Script; port: number }> {
  const proc = new Script(bin, ["serve", `${ip}:0`]);
  const line = await waitFor(() => proc.stdout.match(/^serving \S+:(\d+)$/m) ?? undefined, `grpcpeer on ${ip}`, 10_000);
  return { proc, port: Number(line[1]) };
}

Deno.test("a Go gRPC client dialing through etcd's resolver reaches both instances, loses no RPC when one stops, and follows a kill", async () => {
  const dir = await Deno.makeTempDir({ prefix: "secretary-resolver-" });
  const bin = await buildGrpcPeer(dir);
  const cluster = await lo.etcd();
  const [ipA, ipB] = [lo.ip(1), lo.ip(2)];
  await cluster.start();
  const endpoint = cluster.endpoints[0];
  const procs: Script[] = [];
  const secretary = (ip: string, port: number) => {
    const s = Script.deno("secretary.ts", [
      String(port),
      `--ip=${ip}`,
      "--hostname=h",
      `--endpoints=${endpoint}`,
      "--service=grpc-health",
      "--check=tcp",
      "--interval=500ms",
      "--timeout=300ms",
      "--ttl=5s",
      "--drain=2s",
    ], { flags: SOURCE_FLAGS });
    procs.push(s);
    return s;
  };
  try {
    const a = await serve(bin, ipA);
    const b = await serve(bin, ipB);
    procs.push(a.proc, b.proc);
    const secretaryA = secretary(ipA, a.port);
    const secretaryB = secretary(ipB, b.port);
    await secretaryA.waitForLog(/^registered /, 30_000);
    await secretaryB.waitForLog(/^registered /, 30_000);

    // four slashes: gRPC drops one, and the prefix keeps its leading one; the trailing one keeps out apache2 and the like
    const target = `etcd:///${DEFAULT_PREFIX}/grpc-health/`;
    const client = new Script(bin, ["client", endpoint, target]);
    procs.push(client);
    const lines = () => client.stdout.split("\n").filter((l) => l !== "");
    const addrA = `${ipA}:${a.port}`;
    const addrB = `${ipB}:${b.port}`;
    await waitFor(
      () => lines().includes(`ok ${addrA}`) && lines().includes(`ok ${addrB}`),
      `the client to reach both instances\n${client.stdout}\n${client.stderr}`,
      30_000,
    );

    // stopped as systemd stops apache@: its secretary first (record removed, then a drain), then the service
    const beforeStop = lines().length;
    secretaryA.kill("SIGTERM");
    assert.equal((await secretaryA.finished(30_000)).code, 0, secretaryA.stderr);
    a.proc.kill("SIGTERM");
    await a.proc.finished(10_000);
    const afterStop = lines().length;
    await waitFor(() => lines().length >= afterStop + 10, "ten more RPCs after the stop", 10_000);
    const duringStop = lines().slice(beforeStop);
    assert.deepEqual(duringStop.filter((l) => !l.startsWith("ok ")), [], "an RPC failed while an instance stopped");
    assert.ok(duringStop.slice(-10).every((l) => l === `ok ${addrB}`), duringStop.slice(-10).join("\n"));

    // back, then the other one killed: the client follows to the one left
    const again = await serve(bin, ipA);
    procs.push(again.proc);
    const addrAgain = `${ipA}:${again.port}`;
    const secretaryAgain = secretary(ipA, again.port);
    await secretaryAgain.waitForLog(/^registered /, 30_000);
    await waitFor(() => lines().includes(`ok ${addrAgain}`), "the client to reach the instance back", 30_000);
    const beforeKill = lines().length;
    b.proc.kill("SIGKILL");
    await secretaryB.waitForLog(/^deregistered /, 30_000);
    const afterKill = lines().length;
    await waitFor(() => lines().length >= afterKill + 10, "ten more RPCs after the kill", 10_000);
    assert.ok(lines().slice(-10).every((l) => l === `ok ${addrAgain}`), lines().slice(beforeKill).join("\n"));
    console.log(
      `RPCs: ${beforeStop} before the stop, ${duringStop.length} from the stop on with 0 failed; ` +
        `${lines().length - beforeKill} from the kill on, ${
          lines().slice(beforeKill).filter((l) => !l.startsWith("ok ")).length
        } failed`,
    );
  } finally {
    for (const p of procs) p.kill("SIGKILL");
    await Promise.all(procs.map((p) => p.finished()));
    await cluster.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
