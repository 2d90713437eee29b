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
import { concat, runCommand } from "./command.ts";
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
   * reset before any byte of an answer (ECONNRESET: the listener closed with
   * the connection still queued, as when a process dies a moment after its
   * idle connections). Unlike a timeout, that is no blip: the kernel answers
   * for a process that is gone or going. Never set on a passing check.
   */
  refused?: boolean;
}

/** The most of an exec check's stdout that can become `status`. */
export const STATUS_MAX_BYTES = 4096;
/** The most of an HTTP response read when looking for `--expect-body`. */
export const BODY_MAX_BYTES = 64 * 1024;
/** The PATH an exec check runs with when the secretary's own cannot be read. */
export const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
 * Splits `--command` into arguments as a shell would split words, without
 * running a shell: whitespace separates, '…' is literal, "…" allows \" and
 * \\, and a backslash outside quotes escapes the next character.
 */
export function splitCommand(text: string): string[] {
  const words: string[] = [];
  let word = "";
  let inWord = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "'" || c === '"') {
      const end = findClosingQuote(text, i);
      if (end < 0) throw new RangeError(`Cannot use --command ${quote(text)}: expected a closing ${c}`);
      const inner = text.slice(i + 1, end);
      word += c === "'" ? inner : inner.replace(/\\(["\\$`])/g, "$1");
      inWord = true;
      i = end;
    } else if (c === "\\" && i + 1 < text.length) {
      word += text[++i];
      inWord = true;
    } else if (/\s/.test(c)) {
      if (inWord) words.push(word);
      word = "";
      inWord = false;
    } else {
      word += c;
      inWord = true;
    }
  }
  if (inWord) words.push(word);
  if (words.length === 0) {
    throw new RangeError(`Cannot use --command ${quote(text)}: expected a command to run`);
  }
  return words;
}

function findClosingQuote(text: string, open: number): number {
  const quote = text[open];
  for (let i = open + 1; i < text.length; i++) {
    if (quote === '"' && text[i] === "\\") i++;
    else if (text[i] === quote) return i;
  }
  return -1;
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
        ...(err.code === "ECONNREFUSED" || (err.code === "ECONNRESET" && received === 0) ? { refused: true } : {}),
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

/** The chunks as one array, cut at `max` bytes. */

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

// ---------------------------------------------------------------------------
// The connection watch: notice a death without waiting for the next check

/**
 * The delay before opening the watch connection again, after `shortLived`
 * connections in a row that closed (or never opened) within an interval: at
 * once after a long-lived one, then 250 ms doubling to 30 s, so a server that
 * drops idle connections cannot make the secretary spin.
 */
export function reconnectDelayMs(shortLived: number): number {
  return shortLived === 0 ? 0 : Math.min(30_000, 250 * 2 ** (shortLived - 1));
}

/**
 * What the watch sends so that the instance takes its connection. Apache on
 * Linux (`AcceptFilter http data`, TCP_DEFER_ACCEPT) leaves a connection that
 * has sent nothing in the kernel for 30 s, where a kill tells its client
 * nothing. So an HTTP instance gets an empty line, which HTTP servers ignore
 * before a request (RFC 9112 2.2), and an HTTPS one a TLS handshake; any
 * other instance a plain connect, nothing sent.
 */
export type Greeting = "none" | "crlf" | "tls";

/** The greeting for a check kind. */
export function greetingFor(kind: CheckSpec["kind"]): Greeting {
  return kind === "http" ? "crlf" : kind === "https" ? "tls" : "none";
}

/**
 * Holds one idle connection to the instance (connect, greet, then nothing)
 * and calls `onLost` when it closes or cannot open: a process that dies has
 * its sockets closed by the kernel at once. After `onLost` the watch is
 * idle until `arm()` is called again, which reconnects after
 * reconnectDelayMs. A connection that lived at least `intervalMs` counts as
 * long-lived, so a server that drops idle connections costs at most one extra
 * check per interval. `disarm()` (the instance is down, or the secretary
 * stops) forgets the backoff: the next connection is to a new process.
 */
export class ConnectionWatch {
  /** Connections opened so far, for logs and tests. */
  attempts = 0;
  #socket?: Socket;
  #timer?: ReturnType<typeof setTimeout>;
  #armed = false;
  #shortLived = 0;

  constructor(
    readonly ip: string,
    readonly port: number,
    readonly intervalMs: number,
    readonly onLost: (reason: string) => void,
    readonly greeting: Greeting = "none",
  ) {}

  /** Opens the connection (after the backoff) unless it is open or opening already. */
  arm(): void {
    if (this.#armed) return;
    this.#armed = true;
    this.#timer = setTimeout(() => this.#connect(), reconnectDelayMs(this.#shortLived));
  }

  /** Closes the connection and forgets any pending reconnect. */
  disarm(): void {
    this.#armed = false;
    this.#shortLived = 0;
    clearTimeout(this.#timer);
    const socket = this.#socket;
    this.#socket = undefined;
    socket?.destroy();
  }

  #connect(): void {
    this.attempts++;
    const tls = this.greeting === "tls";
    // the handshake only: the watch reads nothing, so the certificate does not matter
    const socket = tls
      ? tlsConnect({ host: this.ip, port: this.port, rejectUnauthorized: false })
      : tcpConnect({ host: this.ip, port: this.port });
    this.#socket = socket;
    let openedAt = 0;
    socket.on(tls ? "secureConnect" : "connect", () => {
      openedAt = Date.now();
      if (this.greeting === "crlf") socket.write("\r\n");
    });
    socket.on("data", () => {}); // whatever the server says (Apache's 408 at its request timeout), the close matters
    socket.on("error", () => {}); // "close" follows
    socket.on("close", () => {
      if (this.#socket !== socket) return; // disarmed
      this.#socket = undefined;
      this.#armed = false;
      const lived = openedAt ? Date.now() - openedAt : 0;
      this.#shortLived = lived >= this.intervalMs ? 0 : this.#shortLived + 1;
      this.onLost(openedAt ? `closed after ${lived}ms` : "could not connect");
    });
  }
}
