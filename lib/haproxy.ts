/**
 * HAProxy's runtime API (its stats socket at admin level): one command per
 * connection, its answer read to the end, each with a deadline. The parsing
 * of what HAProxy answers is pure and exported; the client is the edge.
 *
 * Tried on Debian 12's HAProxy 2.6: `add server B/S ADDR:PORT [opts]` answers
 * "New server registered." (the server starts in maintenance); `set server
 * B/S state ready|maint` and `set server B/S weight N` answer nothing;
 * `enable health B/S` starts its checks; `del server B/S` answers "Server
 * deleted." for a server added at run time that is in maintenance and has no
 * connection left. `show servers state B` and `show stat` give the servers and
 * their current sessions; `show info` the process's Pid and uptime.
 *
 * `server-template` slots (`slot.invalid:80 init-addr last,0.0.0.0
 * disabled`): `set server B/S addr IP port P` answers "IP changed from …";
 * `disabled` leaves flag 0x04 (configured maintenance) in srv_admin_state
 * after `state ready`, which is not maintenance. Servers named by a host name
 * take their last address from the state file at a reload; an IP literal's
 * would not be kept. Several commands joined with ";" answer one after
 * another, with no reliable separator: batch only commands that answer
 * nothing on success.
 *
 * @module
 */
import { connect, type Socket } from "node:net";

/** A server of a backend as HAProxy reports it. */
export interface HAProxyServer {
  name: string;
  ip: string;
  port: number;
  /** Out of rotation by an operator or by us (any maintenance flag), not by a failed check. */
  maint: boolean;
  /** HAProxy's operational state: 0 stopped, 1 starting, 2 running, 3 stopping. */
  opState: number;
  weight: number;
  /** Sessions on it now (requests in flight, connections in use). */
  sessions: number;
}

/** The process answering on the socket: a new Pid, or a shorter uptime, is a restarted or reloaded HAProxy. */
export interface HAProxyProcess {
  pid: number;
  uptimeSeconds: number;
}

/** HAProxy answered a command with an error; `command` is the line it refused, when there was one. */
export class HAProxyError extends Error {
  override name = "HAProxyError";
  constructor(message: string, readonly command?: string) {
    super(message);
  }
}

// srv_admin_state flags (src/server.h): forced, inherited and resolution's maintenance (SRV_ADMF_MAINT);
// 0x04, "configured" (the `disabled` keyword), stays set once a server is made ready, and is not maintenance
const MAINT_FLAGS = 0x01 | 0x02 | 0x20;

/** Parses `show servers state BACKEND` (format 1) into name, address, states and weight (sessions 0). */
export function parseServersState(text: string): HAProxyServer[] {
  const lines = text.split("\n").filter((l) => l.trim() !== "");
  if (lines[0]?.trim() !== "1") throw new HAProxyError(`unexpected answer to show servers state: ${firstLine(text)}`);
  const header = lines[1]?.replace(/^#\s*/, "").split(/\s+/) ?? [];
  const at = (name: string) => {
    const i = header.indexOf(name);
    if (i < 0) throw new HAProxyError(`show servers state has no ${name} column`);
    return i;
  };
  const [name, addr, port, op, admin, weight] = [
    at("srv_name"),
    at("srv_addr"),
    at("srv_port"),
    at("srv_op_state"),
    at("srv_admin_state"),
    at("srv_uweight"),
  ];
  return lines.slice(2).filter((l) => !l.startsWith("#")).map((line) => {
    const f = line.split(/\s+/);
    return {
      name: f[name],
      ip: f[addr],
      port: Number(f[port]),
      maint: (Number(f[admin]) & MAINT_FLAGS) !== 0,
      opState: Number(f[op]),
      weight: Number(f[weight]),
      sessions: 0,
    };
  });
}

/** Parses `show stat` CSV into each server's current sessions (`scur`) by name, for one backend. */
export function parseSessions(csv: string, backend: string): Map<string, number> {
  const lines = csv.split("\n").filter((l) => l.trim() !== "");
  const header = lines[0]?.replace(/^#\s*/, "").split(",") ?? [];
  const [px, sv, scur] = ["pxname", "svname", "scur"].map((c) => header.indexOf(c));
  if (px < 0 || sv < 0 || scur < 0) throw new HAProxyError(`unexpected answer to show stat: ${firstLine(csv)}`);
  const sessions = new Map<string, number>();
  for (const line of lines.slice(1)) {
    const f = line.split(",");
    if (f[px] === backend && f[sv] !== "BACKEND" && f[sv] !== "FRONTEND") sessions.set(f[sv], Number(f[scur]) || 0);
  }
  return sessions;
}

/** Parses `show info` into the process's Pid and uptime. */
export function parseInfo(text: string): HAProxyProcess {
  const field = (name: string) => Number(new RegExp(`^${name}: (\\d+)$`, "m").exec(text)?.[1] ?? NaN);
  const process = { pid: field("Pid"), uptimeSeconds: field("Uptime_sec") };
  if (!Number.isInteger(process.pid) || !Number.isInteger(process.uptimeSeconds)) {
    throw new HAProxyError(`unexpected answer to show info: ${firstLine(text)}`);
  }
  return process;
}

function firstLine(text: string): string {
  return text.trim().split("\n")[0]?.slice(0, 200) ?? "";
}

/** Where the runtime API listens: a unix socket's path, or host:port. */
export type HAProxyAddress = { path: string } | { host: string; port: number };

/** Parses `--haproxy`: an absolute path to a unix socket, or host:port. */
export function parseHAProxyAddress(text: string): HAProxyAddress | undefined {
  if (text.startsWith("/") && !text.includes("\0")) return { path: text };
  const match = /^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$/.exec(text);
  const port = Number(match?.[2]);
  if (!match || port < 1 || port > 65535) return undefined;
  return { host: match[1].replace(/^\[|\]$/g, ""), port };
}

/** A client of one HAProxy's runtime API. */
export class HAProxy {
  constructor(readonly address: HAProxyAddress, readonly timeoutMs = 2000) {}

  /** Sends one command line (commands may be joined with ";") and returns the whole answer. */
  run(command: string): Promise<string> {
    if (/[\n\r]/.test(command)) throw new RangeError("a runtime API command is one line");
    return new Promise((resolve, reject) => {
      const socket: Socket = connect(this.address as { path: string });
      const chunks: Buffer[] = [];
      const timer = setTimeout(() => {
        socket.destroy();
        // not a refusal: HAProxy may be busy or gone
        reject(new Error(`no answer within ${this.timeoutMs} ms to "${command.split(" ").slice(0, 3).join(" ")}"`));
      }, this.timeoutMs);
      socket.on("connect", () => socket.end(`${command}\n`));
      socket.on("data", (chunk: Buffer) => chunks.push(chunk));
      socket.on("error", (err) => {
        clearTimeout(timer);
        reject(err);
      });
      socket.on("close", () => {
        clearTimeout(timer);
        resolve(Buffer.concat(chunks).toString("utf8"));
      });
    });
  }

  /** Runs a command that answers nothing (or `expected`) on success; anything else is an HAProxyError. */
  async command(command: string, expected: string | RegExp = ""): Promise<void> {
    const answer = (await this.run(command)).trim();
    const ok = typeof expected === "string" ? answer === expected : expected.test(answer);
    if (!ok) throw new HAProxyError(answer.split("\n")[0] || `no answer to ${command}`, command);
  }

  /**
   * Runs commands joined with ";" on one connection; true when each answered
   * `expected` (a line each) or nothing, false otherwise (which one failed is
   * unknown: run them one by one to find out).
   */
  async batch(commands: string[], expected = ""): Promise<boolean> {
    const lines = (await this.run(commands.join(";"))).split("\n").filter((l) => l.trim() !== "");
    return expected === ""
      ? lines.length === 0
      : lines.length === commands.length && lines.every((l) => l === expected);
  }

  /** The servers of `backend`, with their current sessions. */
  async servers(backend: string): Promise<HAProxyServer[]> {
    return (await this.state(backend)).servers;
  }

  /**
   * The servers of `backend` with their sessions, and `show servers state
   * BACKEND` as HAProxy wrote it (a state file). With `maintOnly`, sessions
   * are read only when a server is in maintenance, and only theirs count
   * (`show stat` of thousands of servers is megabytes).
   */
  async state(backend: string, maintOnly = false): Promise<{ text: string; servers: HAProxyServer[] }> {
    const text = await this.run(`show servers state ${backend}`);
    if (/^Can't find backend\./m.test(text)) throw new HAProxyError(`no backend ${backend}`);
    const servers = parseServersState(text);
    if (maintOnly && !servers.some((s) => s.maint)) return { text, servers };
    // every proxy's servers (type 4), filtered by name here: "show stat NAME" answers for a frontend of that name
    const sessions = parseSessions(await this.run("show stat -1 4 -1"), backend);
    return {
      text,
      servers: servers.map((s) => ({ ...s, sessions: maintOnly && !s.maint ? 0 : sessions.get(s.name) ?? 0 })),
    };
  }

  /** The process answering now. */
  async process(): Promise<HAProxyProcess> {
    return parseInfo(await this.run("show info"));
  }
}
