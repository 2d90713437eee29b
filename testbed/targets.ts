/**
 * What the tests point secretaries and clients at: an HTTP target whose
 * health the test controls (`TestServer`), a TCP relay that can cut the
 * network without closing anything (`Relay`), and plain HTTP/1.1 requests
 * through no proxy (`httpGet`, `httpRequest`, `httpStatus`). Deno only.
 *
 * @module
 */
import { type AddressInfo, createServer, type Server, type Socket } from "node:net";
import { request } from "node:http";

/** How a target answers: 200, a 302 redirect, 500, accept and never answer, or not listen at all. */
export type ServerMode = "ok" | "redirect" | "error" | "hang" | "closed";

const STATUS_LINES: Record<"ok" | "redirect" | "error", string> = {
  ok: "200 OK",
  redirect: "302 Found\r\nLocation: /elsewhere",
  error: "500 Internal Server Error",
};

/** A small HTTP server on `host:port` whose health the test controls. */
export class TestServer {
  mode: ServerMode = "ok";
  #port: number;
  #server?: Server;
  #sockets = new Set<Socket>();
  requests = 0;
  /** Connections accepted, and those closed without sending a request (a connection watch's). */
  connections = 0;
  silent = 0;
  /** Close a connection that has sent nothing after this long, as servers drop idle connections. */
  idleCloseMs?: number;

  /** `port` 0: the kernel picks one when it first listens, and it keeps it across `closed` and back. */
  constructor(readonly host: string, port = 0) {
    this.#port = port;
  }

  get port(): number {
    return this.#port;
  }

  static async start(host: string, port = 0): Promise<TestServer> {
    const target = new TestServer(host, port);
    await target.setMode("ok");
    return target;
  }

  /** Switches the mode; `closed` stops listening, any other mode listens again. */
  async setMode(mode: ServerMode): Promise<void> {
    this.mode = mode;
    if (mode === "closed") return await this.#close();
    if (this.#server) return;
    const server = createServer((socket) => {
      this.#sockets.add(socket);
      this.connections++;
      let spoke = false;
      const idle = this.idleCloseMs === undefined ? undefined : setTimeout(() => socket.destroy(), this.idleCloseMs);
      socket.on("close", () => {
        this.#sockets.delete(socket);
        clearTimeout(idle);
        if (!spoke) this.silent++;
      });
      socket.on("error", () => {});
      socket.on("data", (chunk: Uint8Array) => {
        // blank lines before a request are ignored, as HTTP servers do (RFC 9112 2.2)
        if (spoke || new TextDecoder().decode(chunk).trim() === "") return;
        spoke = true;
        clearTimeout(idle);
        this.requests++;
        if (this.mode === "hang" || this.mode === "closed") return;
        socket.end(`HTTP/1.1 ${STATUS_LINES[this.mode]}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok`);
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.#port, this.host, () => resolve());
    });
    this.#port = (server.address() as AddressInfo).port;
    this.#server = server;
  }

  async #close(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    if (!server) return;
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  close(): Promise<void> {
    return this.#close();
  }
}

/**
 * A TCP relay from a local port to `upstream` that can cut the network
 * without closing anything: while cut, it stops reading, so bytes wait in the
 * kernel's buffers as they would behind a partition, and new connections are
 * accepted but not passed on. `heal()` lets everything flow again.
 */
export class Relay {
  #server?: Server;
  #pairs = new Set<[Socket, Socket | undefined]>();
  #cut = false;
  #pending: (() => void)[] = [];

  #port = 0;

  private constructor(readonly host: string, readonly upstream: { host: string; port: number }) {}

  /** The port it listens on, picked by the kernel. */
  get port(): number {
    return this.#port;
  }

  /** Starts a relay to `upstreamUrl`, listening on `host` (tests: an address of their own). */
  static async start(upstreamUrl: string, host = "127.0.0.1"): Promise<Relay> {
    const url = new URL(upstreamUrl);
    const relay = new Relay(host, { host: url.hostname, port: Number(url.port) });
    const { connect } = await import("node:net");
    relay.#server = createServer((client) => {
      client.on("error", () => {});
      const pair: [Socket, Socket | undefined] = [client, undefined];
      relay.#pairs.add(pair);
      const open = () => {
        const server = connect(relay.upstream.port, relay.upstream.host);
        pair[1] = server;
        server.on("error", () => client.destroy());
        client.on("close", () => {
          server.destroy();
          relay.#pairs.delete(pair);
        });
        server.on("close", () => client.destroy());
        client.pipe(server);
        server.pipe(client);
        if (relay.#cut) {
          client.pause();
          server.pause();
        }
      };
      if (relay.#cut) {
        client.pause();
        relay.#pending.push(open);
      } else open();
    });
    await new Promise<void>((resolve, reject) => {
      relay.#server!.once("error", reject);
      relay.#server!.listen(0, host, () => resolve());
    });
    relay.#port = (relay.#server.address() as AddressInfo).port;
    return relay;
  }

  /** The relay's URL, to give the client instead of etcd's. */
  get url(): string {
    return `http://${this.host}:${this.port}`;
  }

  cut(): void {
    this.#cut = true;
    for (const [client, server] of this.#pairs) {
      client.unpipe();
      server?.unpipe();
      client.pause();
      server?.pause();
    }
  }

  heal(): void {
    this.#cut = false;
    for (const [client, server] of this.#pairs) {
      if (!server) continue;
      client.pipe(server);
      server.pipe(client);
      client.resume();
      server.resume();
    }
    for (const open of this.#pending.splice(0)) open();
  }

  async close(): Promise<void> {
    for (const [client, server] of this.#pairs) {
      client.destroy();
      server?.destroy();
    }
    await new Promise<void>((resolve) => this.#server?.close(() => resolve()) ?? resolve());
  }
}

/** GETs `url` over plain HTTP, through no proxy whatever the environment says, and resolves with the body. */
export function httpGet(url: string, timeoutMs = 10_000): Promise<string> {
  return httpRequest(url, undefined, timeoutMs);
}

/** GETs `url`, or POSTs `body` as JSON, over plain HTTP/1.1 with a connection of its own and no proxy; resolves with the body of a 200. */
export function httpRequest(url: string, body: unknown, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const options = body === undefined
      ? { agent: false }
      : { agent: false, method: "POST", headers: { "content-type": "application/json" } };
    const req = request(url, options, (res) => {
      const chunks: Uint8Array[] = [];
      res.on("data", (chunk: Uint8Array) => chunks.push(chunk));
      res.on("error", reject);
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString();
        if (res.statusCode === 200) resolve(text);
        else {reject(
            new Error(`${body === undefined ? "GET" : "POST"} ${url}: ${res.statusCode} ${text.slice(0, 500)}`),
          );}
      });
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`${url}: no answer in ${timeoutMs} ms`)));
    req.on("error", reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

/** Sends `GET /` and returns the status code, or undefined when nothing answers within a second. */
export async function httpStatus(ip: string, port: number): Promise<number | undefined> {
  let conn: Deno.TcpConn | undefined;
  const timer = setTimeout(() => conn?.close(), 1000);
  try {
    conn = await Deno.connect({ hostname: ip, port });
    await conn.write(new TextEncoder().encode(`GET / HTTP/1.0\r\nHost: ${ip}\r\n\r\n`));
    const buf = new Uint8Array(64);
    const n = await conn.read(buf);
    const status = /^HTTP\/1\.\d (\d{3})/.exec(new TextDecoder().decode(buf.subarray(0, n ?? 0)));
    return status ? Number(status[1]) : undefined;
  } catch {
    return undefined;
  } finally {
    clearTimeout(timer);
    try {
      conn?.close();
    } catch { /* closed by the timer */ }
  }
}
