/**
 * Throwaway certificates made with openssl for the TLS tests: a CA, a server
 * certificate for loopback addresses, a client certificate, and another CA
 * that signed nothing (`makeCerts`). Deno only.
 *
 * @module
 */

/** Files of a throwaway certificate authority, a server certificate for loopback addresses and a client certificate. */
export interface Certs {
  dir: string;
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** Another CA that signed nothing here: the wrong one to trust. */
  otherCa: string;
}

/**
 * Makes certificates with openssl in a new temporary directory. The server
 * certificate is for 127.0.0.1, localhost and each of `ips` (a test's own
 * addresses, where its etcd listens).
 */
export async function makeCerts(ips: string[] = []): Promise<Certs> {
  const dir = await Deno.makeTempDir({ prefix: "secretary-certs-" });
  const run = async (...args: string[]) => {
    const out = await new Deno.Command("openssl", { args, cwd: dir, stdout: "null", stderr: "piped" }).output();
    if (!out.success) throw new Error(`openssl ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  };
  const ca = async (name: string) => {
    await run(
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "2",
      "-subj",
      `/CN=${name}`,
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.pem`,
    );
  };
  const leaf = async (name: string, ext: string) => {
    await Deno.writeTextFile(`${dir}/${name}.ext`, ext);
    await run(
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-subj",
      `/CN=${name}`,
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.csr`,
    );
    await run(
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-days",
      "2",
      "-extfile",
      `${name}.ext`,
      "-out",
      `${name}.pem`,
    );
  };
  await ca("ca");
  await ca("other-ca");
  const names = ["IP:127.0.0.1", ...ips.map((ip) => `IP:${ip}`), "DNS:localhost"].join(",");
  await leaf("server", `subjectAltName=${names}\nextendedKeyUsage=serverAuth,clientAuth\n`);
  await leaf("client", "extendedKeyUsage=clientAuth\n");
  return {
    dir,
    ca: `${dir}/ca.pem`,
    serverCert: `${dir}/server.pem`,
    serverKey: `${dir}/server.key`,
    clientCert: `${dir}/client.pem`,
    clientKey: `${dir}/client.key`,
    otherCa: `${dir}/other-ca.pem`,
  };
}
