/**
 * Health checks: what "the instance is healthy" means, and the code that asks.
 *
 * - `tcp`: a connection opens.
 * - `http` / `https`: a GET whose status is in a range, optionally with a
 *   substring in the body and extra headers. Plain sockets, not fetch, so no
 *   proxy variable can redirect a check.
 * - `exec`: a command (no shell unless the operator writes one) exits 0. If
 *   it prints a JSON object of at most 4 KiB, that object is the instance's
 *   `status`, published in its record.
 *
 * Parsing and decoding are pure and unit-tested; the checks themselves are
 * the effects at the edge.
 *
 * @module
 */
import { connect as tcpConnect, type Socket } from "node:net";
import { connect as tlsConnect } from "node:tls";
import type { Status } from "./record.ts";
import { concat, DEFAULT_PATH, runCommand } from "./command.ts";
import { oneLine, quote } from "./text.ts";

/** What to check, parsed from the command line. */
export type CheckSpec =
  | { kind: "tcp" }
  | {
    kind: "http" | "https";
    path: string;
    /** Inclusive status range. @default [200, 399] */
    expectStatus: [number, number];
    expectBody?: string;
    /** Extra request headers; a `Host` header replaces the default `ip:port`. */
    headers: [string, string][];
    /** https: accept any certificate (self-signed instances). */
    insecure: boolean;
  }
  | { kind: "exec"; argv: string[] };

/** One check's outcome. `status` is set only by an exec check that printed a JSON object. */
export interface CheckResult {
  passed: boolean;
  reason: string;
  status?: Status;
  /** An exec check's command cannot be started at all: missing, not executable, not permitted. */
  fatal?: boolean;
  /**
   * The connection was refused (ECONNREFUSED: nothing listens on ip:port) or
   * reset or broken before any byte of an answer (ECONNRESET, EPIPE: the
   * listener closed with the connection still queued, as when a process dies
   * a moment after its idle connections; EPIPE when the request was being
   * written then). Unlike a timeout, that is no blip: the kernel answers for
   * a process that is gone or going. Never set on a passing check
   * (isRefusal()).
   */
  refused?: boolean;
}

/**
 * Whether a failed connection's error is a refusal (pure; CheckResult.refused):
 * ECONNREFUSED, or ECONNRESET or EPIPE before any byte of an answer
 * (`received`). A reset after part of an answer may be a blip of a live
 * server, so it is not.
 */
export function isRefusal(code: string | undefined, received: number): boolean {
  return code === "ECONNREFUSED" || ((code === "ECONNRESET" || code === "EPIPE") && received === 0);
}

/** The most of an exec check's stdout that can become `status`. */
export const STATUS_MAX_BYTES = 4096;
/** The most of an HTTP response read when looking for `--expect-body`. */
export const BODY_MAX_BYTES = 64 * 1024;

// ---------------------------------------------------------------------------
// Parsing (pure); each throws RangeError with the value and what was expected

/** Parses `--expect-status`: `200` or a range such as `200-299`. */
export function parseStatusRange(text: string): [number, number] {
  const match = /^([1-5]\d\d)(?:-([1-5]\d\d))?$/.exec(text.trim());
  const range: [number, number] = match ? [Number(match[1]), Number(match[2] ?? match[1])] : [0, 0];
  if (!match || range[0] > range[1]) {
    throw new RangeError(
      `Cannot use --expect-status ${quote(text)}: expected a status such as 200 or a range such as 200-299`,
    );
  }
  return range;
}

/** Parses `--header "Name: value"`; names are HTTP tokens, values have no line breaks. */
export function parseHeader(text: string): [string, string] {
  const match = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\r\n\0]*?)[ \t]*$/.exec(text);
  if (!match) throw new RangeError(`Cannot use --header ${quote(text)}: expected "Name: value" on one line`);
  return [match[1], match[2]];
}

/**
 * Reads an exec check's stdout: a JSON object of at most STATUS_MAX_BYTES is
 * the status; anything else gives none, with a note saying why when the output
 * looked like it meant to be one.
 */
export function parseStatus(stdout: Uint8Array, totalBytes: number): { status?: Status; note?: string } {
  if (totalBytes > STATUS_MAX_BYTES) return { note: `output over ${STATUS_MAX_BYTES} bytes, no status` };
  const text = new TextDecoder().decode(stdout).trim();
  if (!text.startsWith("{")) return {};
  try {
    const parsed: unknown = JSON.parse(text);
    if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) return { status: parsed as Status };
  } catch {
    // reported below
  }
  return { note: "output is not a JSON object, no status" };
}

/** Decodes an HTTP/1.1 chunked body; stops at the last chunk or where the bytes end. */
export function dechunk(body: Uint8Array): Uint8Array {
  const parts: Uint8Array[] = [];
  let at = 0;
  while (at < body.length) {
    const eol = indexOfCrlf(body, at);
    if (eol < 0) break;
    const size = parseInt(new TextDecoder().decode(body.subarray(at, eol)).split(";")[0].trim(), 16);
    if (!(size > 0)) break;
    parts.push(body.subarray(eol + 2, Math.min(body.length, eol + 2 + size)));
    at = eol + 2 + size + 2;
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

function indexOfCrlf(bytes: Uint8Array, from: number): number {
  for (let i = from; i + 1 < bytes.length; i++) if (bytes[i] === 13 && bytes[i + 1] === 10) return i;
  return -1;
}

/** How a check is described in the start-up log line. */
export function describeCheck(spec: CheckSpec, ip: string, port: number): string {
  if (spec.kind === "exec") return `exec ${spec.argv.join(" ")}`;
  if (spec.kind === "tcp") return `tcp://${ip}:${port}`;
  return `${spec.kind}://${ip}:${port}${spec.path}`;
}

// ---------------------------------------------------------------------------
// Checks (effects)

/** Where a check runs: the instance's address, its service, and the deadline. */
export interface Target {
  ip: string;
  port: number;
  service: string;
  timeoutMs: number;
}

/** Runs one check of `spec` against `target`; never throws, always settles within the timeout (plus a kill). */
export function runCheck(spec: CheckSpec, target: Target): Promise<CheckResult> {
  if (spec.kind === "exec") return checkExec(spec.argv, target);
  return checkSocket(spec, target);
}

function checkSocket(spec: Exclude<CheckSpec, { kind: "exec" }>, target: Target): Promise<CheckResult> {
  const { ip, port, timeoutMs } = target;
  return new Promise((resolve) => {
    let socket: Socket;
    const host = spec.kind === "tcp" ? undefined : spec.headers.find(([n]) => n.toLowerCase() === "host")?.[1];
    if (spec.kind === "https") {
      const name = host?.replace(/:\d+$/, "");
      socket = tlsConnect({
        host: ip,
        port,
        // an IP is never sent as the server name (Deno refuses it); a Host header's name is
        servername: name && !/^[\d.]+$/.test(name) && !name.includes(":") ? name : undefined,
        rejectUnauthorized: !spec.insecure,
      });
    } else {
      socket = tcpConnect({ host: ip, port });
    }
    const chunks: Uint8Array[] = [];
    let received = 0;
    const finish = (result: CheckResult) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => finish({ passed: false, reason: `no answer within ${timeoutMs}ms` }), timeoutMs);
    socket.setNoDelay(true);
    socket.on("error", (err: Error & { code?: string }) =>
      finish({
        passed: false,
        reason: err.code ?? err.message,
        ...(isRefusal(err.code, received) ? { refused: true } : {}),
      }));
    socket.on(spec.kind === "https" ? "secureConnect" : "connect", () => {
      if (spec.kind === "tcp") return finish({ passed: true, reason: "connected" });
      const headers = [`Host: ${host ?? `${ip}:${port}`}`, "User-Agent: secretary", "Connection: close"];
      for (const [name, value] of spec.headers) if (name.toLowerCase() !== "host") headers.push(`${name}: ${value}`);
      socket.write(`GET ${spec.path} HTTP/1.1\r\n${headers.join("\r\n")}\r\n\r\n`);
    });
    if (spec.kind === "tcp") return;
    const judge = (complete: boolean): CheckResult | undefined => {
      const bytes = concat(chunks, BODY_MAX_BYTES);
      const statusLine = /^HTTP\/\d(?:\.\d)? (\d{3})/.exec(new TextDecoder().decode(bytes.subarray(0, 64)));
      if (!statusLine) {
        return complete || received >= 1024 ? { passed: false, reason: "not an HTTP response" } : undefined;
      }
      const code = Number(statusLine[1]);
      const [lo, hi] = spec.expectStatus;
      if (code < lo || code > hi) return { passed: false, reason: `status ${code}` };
      if (spec.expectBody === undefined) return { passed: true, reason: `status ${code}` };
      const end = indexOfHeadEnd(bytes);
      if (end < 0) return complete ? { passed: false, reason: "response ended in its headers" } : undefined;
      const head = new TextDecoder().decode(bytes.subarray(0, end));
      let body = bytes.subarray(end + 4);
      if (/^transfer-encoding:.*chunked/im.test(head)) body = dechunk(body);
      if (new TextDecoder().decode(body).includes(spec.expectBody)) return { passed: true, reason: `status ${code}` };
      const length = /^content-length:\s*(\d+)/im.exec(head);
      if (complete || (length && body.length >= Number(length[1]))) {
        return {
          passed: false,
          reason: `status ${code}, body without ${JSON.stringify(oneLine(spec.expectBody, 40))}`,
        };
      }
      return undefined;
    };
    socket.on("data", (chunk: Uint8Array) => {
      if (received < BODY_MAX_BYTES) chunks.push(chunk);
      received += chunk.length;
      const verdict = judge(received >= BODY_MAX_BYTES);
      if (verdict) finish(verdict);
    });
    socket.on("end", () => finish(judge(true) ?? { passed: false, reason: "connection closed without an answer" }));
  });
}

function indexOfHeadEnd(bytes: Uint8Array): number {
  for (let i = 0; i + 3 < bytes.length; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10 && bytes[i + 2] === 13 && bytes[i + 3] === 10) return i;
  }
  return -1;
}

/** The environment an exec check runs with: PATH and the instance, nothing of the secretary's (no etcd password). */
export function execEnv(target: Target, path: string | undefined): Record<string, string> {
  return {
    PATH: path || DEFAULT_PATH,
    SECRETARY_IP: target.ip,
    SECRETARY_PORT: String(target.port),
    SECRETARY_SERVICE: target.service,
  };
}

function readPath(): string | undefined {
  try {
    return process.env.PATH;
  } catch {
    return undefined; // deno without --allow-env=PATH
  }
}

/**
 * Runs the command (lib/command.ts: its own process group, a clean
 * environment, killed at the timeout with its children). Its stdout beyond
 * STATUS_MAX_BYTES is dropped. `fatal` is set when the command cannot be
 * started at all (missing, not executable, not permitted).
 */
async function checkExec(argv: string[], target: Target): Promise<CheckResult> {
  const run = await runCommand(argv, {
    env: execEnv(target, readPath()),
    timeoutMs: target.timeoutMs,
    stdoutMax: STATUS_MAX_BYTES + 1,
  });
  if (run.notStarted !== undefined) {
    return { passed: false, reason: `cannot run ${argv[0]}: ${run.notStarted}`, ...(run.fatal ? { fatal: true } : {}) };
  }
  if (run.timedOut) return { passed: false, reason: `no exit within ${target.timeoutMs}ms, killed` };
  const { status, note } = parseStatus(run.stdout, run.stdoutBytes);
  if (run.code === 0) {
    return { passed: true, reason: note ? `exit 0, ${note}` : "exit 0", ...(status ? { status } : {}) };
  }
  const said = oneLine(run.stderr.split("\n").find((l) => l.trim() !== "") ?? "");
  const how = run.code !== null ? `exit ${run.code}` : `killed by ${run.signal ?? "SIGKILL"}`;
  return { passed: false, reason: said ? `${how}: ${said}` : how };
}
