/**
 * Traffic through a proxy to instances that come and go, for
 * bench/traffic.ts. Never shipped. Three parts:
 *
 * - `serve IP PORT [--work-ms 20]`: an instance, in a process of its own so a
 *   SIGKILL is real: HTTP/1.1 with keep-alive, GET and POST answered 200 with
 *   a small body after `--work-ms` of "work" (so requests are in flight when
 *   it dies). Each request of the load is printed on receipt (`METHOD ID
 *   TIME`), so one received by two instances shows. On SIGTERM it stops as a
 *   well-behaved server does: no new connection, the requests in flight
 *   answered, idle connections closed, exit 0.
 * - `load URL... [--clients 4] [--deadline-ms 5000]`: keep-alive clients per
 *   URL (a lane), each alternating GET and POST, one connection each, a
 *   deadline on every request and no retry of any kind: every non-2xx and
 *   every socket error counts. Each stdin line `LANE LABEL` (LANE from 0) is
 *   the label in effect for that lane from then on (the churn's cycle kind;
 *   `* LABEL` for every lane); every failure is a JSON line on stdout
 *   at once, and the totals by lane, label and method are the last line, when
 *   stdin closes.
 * - `listen IP FIRST_PORT COUNT`: COUNT ports from FIRST_PORT on IP that
 *   accept a connection and close it at once: enough for HAProxy's layer-4
 *   check, so thousands of servers are up without thousands of processes.
 *   Prints "listening" once every port listens.
 * - `NetnsHost`: a "host" with an address of its own in a network namespace
 *   behind a veth pair, whose packets can be made to drop in both directions
 *   (no RST, no FIN, no answer to a SYN), as when a machine dies. Needs root.
 *
 * The first three are run as `deno run --allow-net testbed/traffic.ts …` and
 * import nothing, so they start in tens of milliseconds.
 *
 * @module
 */
import { parseArgs } from "node:util";

// ---------------------------------------------------------------------------
// The instance

/** Serves GET and POST with 200 until SIGTERM (graceful) or SIGKILL. Prints "listening" when it does. */
export async function serve(hostname: string, port: number, workMs: number): Promise<void> {
  const server = Deno.serve({ hostname, port, onListen: () => console.log("listening") }, async (req) => {
    // the load's requests carry an id (GET: ?id=, POST: id= in the body); a health check has none
    const id = req.method === "POST"
      ? /^id=(\S+)/.exec(await req.text())?.[1]
      : new URL(req.url).searchParams.get("id");
    // printed on receipt, before the work: a request received by two instances was sent twice
    if (id) console.log(`${req.method} ${id} ${now()}`);
    await new Promise((resolve) => setTimeout(resolve, workMs));
    return new Response(`ok ${port}\n`);
  });
  Deno.addSignalListener("SIGTERM", () => {
    // no new connection; those in flight answered; idle keep-alive connections closed
    server.shutdown().then(() => Deno.exit(0));
  });
  await server.finished;
}

// ---------------------------------------------------------------------------
// Many listeners that only accept

/** Listens on `count` ports from `firstPort`; every connection is closed once accepted. Prints "listening". */
export async function listenMany(hostname: string, firstPort: number, count: number): Promise<void> {
  const listeners = Array.from({ length: count }, (_, i) => Deno.listen({ hostname, port: firstPort + i }));
  console.log("listening");
  await Promise.all(listeners.map(async (listener) => {
    while (true) {
      try {
        (await listener.accept()).close();
      } catch (err) {
        // a check that resets its connection before the accept (ECONNABORTED) must not end the listener
        if (err instanceof Deno.errors.BadResource) return;
      }
    }
  }));
}

// ---------------------------------------------------------------------------
// The load

/** How one request ended. */
export type Outcome = "ok" | "status" | "error";

/** Counts for one lane, label and method. */
export interface Counts {
  ok: number;
  /** Answered with a status outside 2xx. */
  status: number;
  /** A socket error, an incomplete answer, or the deadline. */
  error: number;
}

/** Latency of the successful requests, both methods: median, 99th percentile and worst, in ms. */
export interface Latency {
  p50Ms: number;
  p99Ms: number;
  worstMs: number;
}

/** One failed request, as printed at once. */
export interface Failure {
  lane: number;
  label: string;
  method: "GET" | "POST";
  /** `LANE.CLIENT.SEQ`, as the instances print it. */
  id: string;
  /** When it was sent and when it failed, ms since the epoch. */
  sentAt: number;
  at: number;
  status?: number;
  error?: string;
}

/** The last line: lane → label → counts by method, and latency. */
export interface LoadTotals {
  totals: Record<string, { GET: Counts; POST: Counts; latency: Latency }>[];
}

/** The wall clock in ms with sub-ms precision, comparable between processes. */
function now(): number {
  return performance.timeOrigin + performance.now();
}

const CRLF2 = new TextEncoder().encode("\r\n\r\n");

function indexOf(haystack: Uint8Array, needle: Uint8Array, from = 0): number {
  outer: for (let i = from; i <= haystack.length - needle.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/** An HTTP/1.1 answer's status and whether the connection may be used again. */
interface Answer {
  status: number;
  reusable: boolean;
}

/**
 * One keep-alive connection that sends a request and reads its whole answer
 * (Content-Length, chunked, or to the close). Never retries: a request that
 * fails fails.
 */
class Connection {
  #buffered = new Uint8Array(0);

  private constructor(readonly conn: Deno.TcpConn) {}

  static async open(hostname: string, port: number): Promise<Connection> {
    const conn = await Deno.connect({ hostname, port });
    conn.setNoDelay(true);
    return new Connection(conn);
  }

  close(): void {
    try {
      this.conn.close();
    } catch { /* closed already */ }
  }

  async #more(): Promise<boolean> {
    const chunk = new Uint8Array(16 * 1024);
    const n = await this.conn.read(chunk);
    if (n === null) return false;
    const joined = new Uint8Array(this.#buffered.length + n);
    joined.set(this.#buffered);
    joined.set(chunk.subarray(0, n), this.#buffered.length);
    this.#buffered = joined;
    return true;
  }

  async request(bytes: Uint8Array): Promise<Answer> {
    for (let written = 0; written < bytes.length;) written += await this.conn.write(bytes.subarray(written));
    let end: number;
    while ((end = indexOf(this.#buffered, CRLF2)) < 0) {
      if (!(await this.#more())) throw new Error(this.#buffered.length ? "closed mid-header" : "closed before answer");
    }
    const head = new TextDecoder().decode(this.#buffered.subarray(0, end));
    this.#buffered = this.#buffered.subarray(end + 4);
    const statusLine = /^HTTP\/1\.([01]) (\d{3})/.exec(head);
    if (!statusLine) throw new Error(`not an HTTP answer: ${JSON.stringify(head.slice(0, 40))}`);
    const header = (name: string) => new RegExp(`^${name}:\\s*(.*?)\\s*$`, "im").exec(head)?.[1];
    const length = header("content-length");
    const close = /close/i.test(header("connection") ?? "") || statusLine[1] === "0";
    if (length !== undefined) {
      while (this.#buffered.length < Number(length)) {
        if (!(await this.#more())) throw new Error("closed mid-body");
      }
      this.#buffered = this.#buffered.subarray(Number(length));
    } else if (/chunked/i.test(header("transfer-encoding") ?? "")) {
      const last = new TextEncoder().encode("0\r\n\r\n");
      let at: number;
      while ((at = indexOf(this.#buffered, last)) < 0) {
        if (!(await this.#more())) throw new Error("closed mid-body");
      }
      this.#buffered = this.#buffered.subarray(at + last.length);
    } else {
      while (await this.#more()) { /* to the close */ }
      return { status: Number(statusLine[2]), reusable: false };
    }
    return { status: Number(statusLine[2]), reusable: !close };
  }
}

/** What a failed request's error was, in a word or two. */
function describe(err: unknown, deadline: boolean): string {
  if (deadline) return "deadline";
  const e = err as { code?: string; name?: string; message?: string };
  if (e.name === "ConnectionReset" || e.code === "ECONNRESET") return "connection reset";
  if (e.name === "ConnectionRefused") return "connection refused";
  if (e.name === "BrokenPipe") return "broken pipe";
  return (e.message ?? String(err)).split("\n")[0].slice(0, 80);
}

function percentile(sorted: number[], p: number): number {
  return sorted.length ? sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)] : NaN;
}

/**
 * Runs `clients` keep-alive clients against each URL until `stop` aborts.
 * `label(lane)` says what to file each outcome under, read when it ends; every
 * failure goes to `onFailure` as it happens.
 */
export async function load(
  urls: string[],
  options: { clients: number; deadlineMs: number; label: (lane: number) => string; onFailure: (f: Failure) => void },
  stop: AbortSignal,
): Promise<LoadTotals> {
  const latencies = urls.map(() => new Map<string, number[]>());
  const counts = urls.map(() => new Map<string, Record<"GET" | "POST", Counts>>());
  const encoder = new TextEncoder();
  const client = async (lane: number, index: number) => {
    const url = new URL(urls[lane]);
    const port = Number(url.port || 80);
    const request = (method: "GET" | "POST", id: string) => {
      if (method === "GET") return encoder.encode(`GET ${url.pathname}?id=${id} HTTP/1.1\r\nHost: ${url.host}\r\n\r\n`);
      const body = `id=${id}\n`;
      return encoder.encode(
        `POST ${url.pathname} HTTP/1.1\r\nHost: ${url.host}\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
      );
    };
    let connection: Connection | undefined;
    let post = index % 2 === 1;
    for (let seq = 0; !stop.aborted; seq++) {
      const method = post ? "POST" : "GET";
      const id = `${lane}.${index}.${seq}`;
      post = !post;
      const sentAt = now();
      let deadline = false;
      const timer = setTimeout(() => {
        deadline = true;
        connection?.close();
      }, options.deadlineMs);
      let outcome: Outcome;
      let status: number | undefined;
      let error: string | undefined;
      try {
        connection ??= await Connection.open(url.hostname, port);
        const answer = await connection.request(request(method, id));
        status = answer.status;
        outcome = status >= 200 && status < 300 ? "ok" : "status";
        if (!answer.reusable || deadline) {
          connection.close();
          connection = undefined;
        }
      } catch (err) {
        outcome = "error";
        error = describe(err, deadline);
        connection?.close();
        connection = undefined;
      } finally {
        clearTimeout(timer);
      }
      const at = now();
      const label = options.label(lane);
      const byLabel = counts[lane];
      if (!byLabel.has(label)) {
        byLabel.set(label, { GET: { ok: 0, status: 0, error: 0 }, POST: { ok: 0, status: 0, error: 0 } });
        latencies[lane].set(label, []);
      }
      byLabel.get(label)![method][outcome]++;
      if (outcome === "ok") latencies[lane].get(label)!.push(at - sentAt);
      else options.onFailure({ lane, label, method, id, sentAt, at, status, error });
      // a failure on every attempt (nothing listening) must not spin
      if (outcome === "error" && at - sentAt < 1) await new Promise((r) => setTimeout(r, 10));
    }
    connection?.close();
  };
  await Promise.all(urls.flatMap((_, lane) => Array.from({ length: options.clients }, (_, i) => client(lane, i))));
  return {
    totals: counts.map((byLabel, lane) =>
      Object.fromEntries(
        [...byLabel].map(([label, byMethod]) => {
          const sorted = latencies[lane].get(label)!.sort((a, b) => a - b);
          const latency = {
            p50Ms: percentile(sorted, 50),
            p99Ms: percentile(sorted, 99),
            worstMs: sorted.at(-1) ?? NaN,
          };
          return [label, { ...byMethod, latency }];
        }),
      )
    ),
  };
}

// ---------------------------------------------------------------------------
// A host that can die without a word

/** Runs a command; throws with its stderr when it fails. */
async function run(command: string, args: string[]): Promise<void> {
  const out = await new Deno.Command(command, { args, stdout: "null", stderr: "piped" }).output();
  if (!out.success) throw new Error(`${command} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
}

/**
 * A host of its own: a network namespace `name` joined to this one by a veth
 * pair on a /30 of 198.51.100.0/24 (TEST-NET-2, routed nowhere), the host at
 * `ip`. Processes started through `command()` run inside it. `drop()` puts a
 * queue of length 0 on both ends of the pair, so every packet either way is
 * dropped: a connection attempt to it times out, one open to it hears
 * nothing, whatever its processes do. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN).
 */
export class NetnsHost {
  private constructor(readonly name: string, readonly ip: string, readonly peerIp: string) {}

  /** The veth end on this side, and the one inside the namespace. */
  get outside(): string {
    return `${this.name}o`;
  }

  get inside(): string {
    return `${this.name}i`;
  }

  /**
   * Makes namespace `name` (at most 13 characters) with the `index`-th /30
   * (1 to 63): the host at 198.51.100.(4·index+2). One left by an earlier run
   * under that name is removed first.
   */
  static async create(name: string, index: number): Promise<NetnsHost> {
    if (!/^[a-z0-9-]{1,13}$/.test(name)) {
      throw new RangeError(`NetnsHost name ${JSON.stringify(name)}: 1 to 13 of a-z0-9-`);
    }
    if (!Number.isInteger(index) || index < 1 || index > 63) throw new RangeError(`NetnsHost index ${index}: 1 to 63`);
    const host = new NetnsHost(name, `198.51.100.${4 * index + 2}`, `198.51.100.${4 * index + 1}`);
    await host.remove();
    await run("ip", ["netns", "add", name]);
    try {
      await run("ip", ["link", "add", host.outside, "type", "veth", "peer", "name", host.inside, "netns", name]);
      await run("ip", ["addr", "add", `${host.peerIp}/30`, "dev", host.outside]);
      await run("ip", ["link", "set", host.outside, "up"]);
      await run("ip", ["netns", "exec", name, "ip", "addr", "add", `${host.ip}/30`, "dev", host.inside]);
      await run("ip", ["netns", "exec", name, "ip", "link", "set", host.inside, "up"]);
      await run("ip", ["netns", "exec", name, "ip", "link", "set", "lo", "up"]);
    } catch (err) {
      await host.remove();
      throw err;
    }
    return host;
  }

  /** Whether this process may make one (root, `ip` installed). */
  static async available(): Promise<boolean> {
    if (Deno.uid() !== 0) return false;
    try {
      return (await new Deno.Command("ip", { args: ["netns", "list"], stdout: "null", stderr: "null" }).output())
        .success;
    } catch {
      return false;
    }
  }

  /** `command args` run inside the namespace (`ip netns exec` execs it: the PID is the command's). */
  command(command: string, args: string[]): [string, string[]] {
    return ["ip", ["netns", "exec", this.name, command, ...args]];
  }

  /** Every packet between the host and the rest dropped from now on, both ways. */
  async drop(): Promise<void> {
    await Promise.all([
      run("tc", ["qdisc", "replace", "dev", this.outside, "root", "pfifo", "limit", "0"]),
      run("ip", [
        "netns",
        "exec",
        this.name,
        "tc",
        "qdisc",
        "replace",
        "dev",
        this.inside,
        "root",
        "pfifo",
        "limit",
        "0",
      ]),
    ]);
  }

  /** Packets flow again. */
  async heal(): Promise<void> {
    await Promise.all([
      run("tc", ["qdisc", "del", "dev", this.outside, "root"]),
      run("ip", ["netns", "exec", this.name, "tc", "qdisc", "del", "dev", this.inside, "root"]),
    ]);
  }

  /** Removes the namespace and the pair (deleting one end deletes both); quiet when they are gone already. */
  async remove(): Promise<void> {
    await run("ip", ["link", "del", this.outside]).catch(() => {});
    await run("ip", ["netns", "del", this.name]).catch(() => {});
  }
}

// ---------------------------------------------------------------------------
// The command line

async function main(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      "work-ms": { type: "string", default: "20" },
      clients: { type: "string", default: "4" },
      "deadline-ms": { type: "string", default: "5000" },
    },
  });
  const [command, ...rest] = positionals;
  if (command === "serve" && rest.length === 2) {
    await serve(rest[0], Number(rest[1]), Number(values["work-ms"]));
    return 0;
  }
  if (command === "listen" && rest.length === 3) {
    await listenMany(rest[0], Number(rest[1]), Number(rest[2]));
    return 0;
  }
  if (command === "load" && rest.length > 0) {
    const labels = rest.map(() => "none");
    const stop = new AbortController();
    const out = (line: unknown) => console.log(JSON.stringify(line));
    const reading = (async () => {
      let partial = "";
      const decoder = new TextDecoder();
      for await (const chunk of Deno.stdin.readable) {
        const lines = (partial + decoder.decode(chunk, { stream: true })).split("\n");
        partial = lines.pop()!;
        for (const line of lines) {
          const [lane, label] = line.trim().split(" ");
          if (lane === "*") labels.fill(label);
          else if (label && Number(lane) in labels) labels[Number(lane)] = label;
        }
      }
      stop.abort();
    })();
    const totals = await load(rest, {
      clients: Number(values.clients),
      deadlineMs: Number(values["deadline-ms"]),
      label: (lane) => labels[lane],
      onFailure: out,
    }, stop.signal);
    await reading;
    out(totals);
    return 0;
  }
  console.error(
    "usage: traffic.ts serve IP PORT [--work-ms N] | listen IP FIRST_PORT COUNT | load URL... [--clients N] [--deadline-ms N]",
  );
  return 2;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
