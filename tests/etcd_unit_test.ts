import assert from "node:assert/strict";
import tls from "node:tls";
import { describeError, prefixRangeEnd, standInServerName } from "../lib/etcd.ts";

Deno.test("prefixRangeEnd() is the first key after every key with the prefix", () => {
  assert.equal(prefixRangeEnd("/services/").toString(), "/services0");
  assert.equal(prefixRangeEnd("ab").toString(), "ac");
});

Deno.test("standInServerName() names an IP endpoint for TLS, and leaves a host name alone", () => {
  assert.equal(standInServerName("10.0.0.5"), "10-0-0-5.ip.secretary.invalid");
  assert.equal(standInServerName("[::1]"), "__1.ip.secretary.invalid");
  assert.equal(standInServerName("etcd.example.com"), undefined);
});

Deno.test("a stand-in name's certificate is checked against the IP it stands for", () => {
  const cert = { subject: { CN: "server" }, subjectaltname: "IP Address:10.0.0.5" } as unknown as tls.PeerCertificate;
  assert.equal(tls.checkServerIdentity(standInServerName("10.0.0.5")!, cert), undefined);
  assert.ok(tls.checkServerIdentity(standInServerName("10.0.0.6")!, cert) instanceof Error);
  assert.ok(tls.checkServerIdentity("10.0.0.6", cert) instanceof Error);
});

Deno.test("describeError() keeps the reason and drops grpc's wrapping", () => {
  assert.equal(
    describeError(
      new Error(
        "14 UNAVAILABLE: No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:1. Resolution note: ",
      ),
    ),
    "connect ECONNREFUSED 127.0.0.1:1",
  );
  assert.equal(
    describeError(
      new Error("14 UNAVAILABLE: No connection established. Last error: Failed to connect (2026-11-26T19:57:05.839Z)"),
    ),
    "Failed to connect",
  );
  assert.match(
    describeError(
      new Error("14 UNAVAILABLE: No connection established. Last error: Error: unable to verify the first certificate"),
    ),
    /check --cacert/,
  );
});
