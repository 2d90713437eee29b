/**
 * Real processes for the tests, the demo and the benchmarks, one file per
 * concept, all re-exported here under one name:
 *
 * - process.ts: `Spawned`, the one process wrapper (PID, output, bounded
 *   waits and stops), `waitFor` and its bounds, free ports.
 * - loopback.ts: a loopback block of its own for every test file.
 * - etcd.ts: etcd members and clusters, and the test-only etcd calls.
 * - targets.ts: HTTP targets that can be made to fail or hang, a relay that
 *   cuts the network, plain HTTP requests.
 * - scripts.ts: the scripts run as child processes, and a bed for one
 *   secretary at a time.
 * - apache.ts, chromium.ts: Debian's Apache and Chromium.
 * - certs.ts: throwaway certificates. install.ts: bundles and an installed host.
 *
 * HAProxy, nginx and etcd's gRPC proxy have files of their own (haproxy.ts,
 * nginx.ts, grpcproxy.ts), imported by name. Everything started here is
 * stopped by PID, never by name. Deno only (never bundled).
 *
 * @module
 */
export * from "./process.ts";
export * from "./loopback.ts";
export * from "./etcd.ts";
export * from "./targets.ts";
export * from "./scripts.ts";
export * from "./apache.ts";
export * from "./certs.ts";
export * from "./install.ts";
export * from "./chromium.ts";
