/**
 * The connection watch: while an instance is healthy, the secretary holds one
 * idle connection to it, so a death (the kernel closes a dead process's
 * sockets at once) is noticed without waiting for the next check. What it
 * sends (`Greeting`), and how fast it reconnects after connections that did
 * not last (`reconnectDelayMs()`), are pure; `ConnectionWatch` is the edge.
 *
 * @module
 */
import { connect as tcpConnect, type Socket } from "node:net";
import { connect as tlsConnect } from "node:tls";
import type { CheckSpec } from "./checks.ts";

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
