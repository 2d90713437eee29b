/**
 * The one way the testbed runs a program: `Spawned`, a process started here
 * and stopped by its PID (never by name), its output captured, with a bound
 * on every wait (SIGKILL at the end of it). Every wrapper (scripts, etcd
 * members, etcd's gRPC proxy, Apache, HAProxy, nginx, Chromium) holds one.
 * Also what every waiter needs: `waitFor`, the generous bounds READY_MS and
 * EVENT_MS, and free ports. Deno only (never bundled).
 *
 * @module
 */

/** The repository root, where the scripts live. */
export const ROOT = new URL("../", import.meta.url).pathname;

/** How long a wait may take that includes starting deno from source and a first check: generous for a loaded machine. */
export const READY_MS = 30_000;

/** How long a wait may take for what the product does within a few checks or a TTL: generous for a loaded machine. */
export const EVENT_MS = 15_000;

/**
 * Polls `fn` until it returns a value other than undefined/false, or throws
 * after `timeoutMs`. `what` names what was awaited; a function is called at
 * the timeout, so the message can show the state then (a process's stderr).
 */
export async function waitFor<T>(
  fn: () => T | undefined | false | Promise<T | undefined | false>,
  what: string | (() => string),
  timeoutMs = 10_000,
  pollMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    const value = await fn();
    if (value !== undefined && value !== false) return value as T;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === "string" ? what : what()}`);
    }
    await delay(pollMs);
  }
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * A port that was free on `host` a moment ago. Another process may take it
 * before it is used: only on an address of the test's own is that nobody.
 */
export async function freePort(host = "127.0.0.1"): Promise<number> {
  return (await freePorts(host, 1))[0];
}

/** `count` distinct ports that were free on `host` a moment ago (held together while chosen, so never one twice). */
export async function freePorts(host: string, count: number): Promise<number[]> {
  const listeners = Array.from({ length: count }, () => Deno.listen({ hostname: host, port: 0 }));
  const ports = listeners.map((l) => (l.addr as Deno.NetAddr).port);
  for (const l of listeners) l.close();
  await Promise.resolve();
  return ports;
}

/** How Spawned starts a program. */
export interface SpawnOptions {
  /** Added to NO_COLOR=1 and, unless `clearEnv`, to this process's environment. */
  env?: Record<string, string>;
  /** Gives the program only `env` (and NO_COLOR), as systemd would. */
  clearEnv?: boolean;
  /** @default this process's */
  cwd?: string;
  /** "null" for a program whose stdout nobody reads (a server's). @default "piped" */
  stdout?: "piped" | "null";
  /** Keeps only the last this many characters of stderr (a long-lived server's log). @default all of it */
  keepStderr?: number;
  /**
   * Called with each decoded chunk of stderr as it arrives (before any
   * trimming), for a caller that must know when a line came (a benchmark
   * stamping a log's events). A chunk may hold several lines or part of one.
   */
  onStderr?: (text: string) => void;
}

/** A program run as a child process, stdin closed, its stdout and stderr collected; stopped by PID. */
export class Spawned {
  stdout = "";
  stderr = "";
  readonly child: Deno.ChildProcess;
  readonly status: Promise<Deno.CommandStatus>;
  #done: Promise<void>;
  #exited = false;

  constructor(command: string, args: string[], options: SpawnOptions = {}) {
    this.child = new Deno.Command(command, {
      args,
      env: { NO_COLOR: "1", ...options.env },
      clearEnv: options.clearEnv,
      stdin: "null",
      stdout: options.stdout ?? "piped",
      stderr: "piped",
      cwd: options.cwd,
    }).spawn();
    const keep = options.keepStderr;
    const read = async (stream: ReadableStream<Uint8Array>, into: "stdout" | "stderr") => {
      const d = new TextDecoder();
      for await (const chunk of stream) {
        const text = d.decode(chunk, { stream: true });
        if (into === "stderr") options.onStderr?.(text);
        this[into] += text;
        if (into === "stderr" && keep !== undefined && this.stderr.length > keep) {
          this.stderr = this.stderr.slice(-keep);
        }
      }
    };
    const reads = [read(this.child.stderr, "stderr")];
    if (options.stdout !== "null") reads.push(read(this.child.stdout, "stdout"));
    this.#done = Promise.all(reads).then(() => {});
    this.status = this.child.status;
    this.status.then(() => (this.#exited = true));
  }

  get pid(): number {
    return this.child.pid;
  }

  kill(signal: Deno.Signal = "SIGTERM"): void {
    try {
      this.child.kill(signal);
    } catch { /* already exited */ }
  }

  /** Whether the process has not exited yet. */
  get running(): boolean {
    return !this.#exited;
  }

  /** Waits for the process to exit and its output to be read; SIGKILL after `timeoutMs` (never when Infinity). */
  async finished(timeoutMs = 20_000): Promise<Deno.CommandStatus> {
    const timer = Number.isFinite(timeoutMs) ? setTimeout(() => this.kill("SIGKILL"), timeoutMs) : undefined;
    const status = await this.status;
    clearTimeout(timer);
    await this.#done;
    return status;
  }

  /** Sends `signal` (SIGKILL by default) if still running and waits as finished(`timeoutMs`) does; for cleanup. */
  async stop(signal: Deno.Signal = "SIGKILL", timeoutMs = 20_000): Promise<void> {
    this.kill(signal);
    await this.finished(timeoutMs);
  }

  /**
   * Waits until stderr has a line matching `pattern` and returns it; throws
   * with the whole stderr after `timeoutMs`, or as soon as the process has
   * exited without printing one.
   */
  async waitForLog(pattern: RegExp, timeoutMs = READY_MS): Promise<string> {
    const find = () => this.stderr.split("\n").find((l) => pattern.test(l));
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const line = find();
      if (line !== undefined) return line;
      if (this.#exited) {
        await this.#done; // the rest of its output
        const last = find();
        if (last !== undefined) return last;
        throw new Error(`${this.describeExit(await this.status)} without a log line ${pattern}:\n${this.stderr}`);
      }
      if (Date.now() > deadline) {
        throw new Error(`timed out after ${timeoutMs} ms waiting for a log line ${pattern}:\n${this.stderr}`);
      }
      await delay(50);
    }
  }

  /** "exited with code N" or "was killed by SIGNAL", for failure messages. */
  describeExit(status: Deno.CommandStatus): string {
    return status.signal
      ? `PID ${this.pid} was killed by ${status.signal}`
      : `PID ${this.pid} exited with code ${status.code}`;
  }
}

/** How much of a restartable process's log is kept, across its runs. */
const RESTARTABLE_LOG_CHARS = 20_000;

/**
 * A process that is stopped and started again on the same ports (an etcd
 * member, a gRPC proxy): the running one's pid, whether it was started and
 * not stopped here (an exit of its own does not count), and its log across
 * runs (the last 20,000 characters), for failure messages.
 */
export class Restartable {
  /** The running process, or the last one (for its log). */
  #proc?: Spawned;
  #running = false;
  /** What the runs before it printed. */
  #earlier = "";

  get pid(): number | undefined {
    return this.#running ? this.#proc?.pid : undefined;
  }

  get running(): boolean {
    return this.#running;
  }

  get log(): string {
    return (this.#earlier + (this.#proc?.stderr ?? "")).slice(-RESTARTABLE_LOG_CHARS);
  }

  /** Starts `command` with `args` unless a run is going on (not waiting for it to answer). */
  protected spawn(command: string, args: string[]): void {
    if (this.#running) return;
    this.#earlier = this.log;
    this.#proc = new Spawned(command, args, { stdout: "null", keepStderr: RESTARTABLE_LOG_CHARS });
    this.#running = true;
  }

  /** Stops the run with `signal` and waits for it to exit, however long that takes. */
  protected async halt(signal: Deno.Signal): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    await this.#proc!.stop(signal, Infinity);
  }
}
