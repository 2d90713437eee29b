/**
 * Running an operator's command safely: without a shell, in a process group
 * of its own, with a clean environment and a timeout. At the timeout the whole
 * group is killed, and so are any children it left behind when it exits;
 * output past a limit is read and dropped, and a pipe held open by a process
 * that escaped the group is abandoned, so no command can stall its caller or
 * grow its memory. Exec checks, and `registry render`'s check and reload, run
 * their commands through here. A command comes as one flag's text, split
 * into words as a shell would (splitCommand()), never run by a shell.
 *
 * @module
 */
import { spawn } from "node:child_process";
import { oneLine, quote } from "./text.ts";

/** The PATH a command runs with when the process's own cannot be read. */
export const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/**
 * Splits a command given as `flag` (`--command`, render's `--check`, …) into
 * arguments as a shell would split words, without running a shell:
 * whitespace separates, '…' is literal, "…" allows \" and \\, and a
 * backslash outside quotes escapes the next character.
 */
export function splitCommand(text: string, flag = "--command"): string[] {
  const words: string[] = [];
  let word = "";
  let inWord = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "'" || c === '"') {
      const end = findClosingQuote(text, i);
      if (end < 0) throw new RangeError(`Cannot use ${flag} ${quote(text)}: expected a closing ${c}`);
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
    throw new RangeError(`Cannot use ${flag} ${quote(text)}: expected a command to run`);
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

/** How a command ended, and what it printed (cut to the limits given). */
export interface CommandResult {
  /** Its exit status, or null when a signal ended it. */
  code: number | null;
  signal: string | null;
  /** It ran past its timeout and was killed. */
  timedOut: boolean;
  /** At most `stdoutMax` bytes of its standard output, and how many it printed in all. */
  stdout: Uint8Array;
  stdoutBytes: number;
  /** The start of its standard error (at most 1 KiB), as text. */
  stderr: string;
  /** Why it could not be started at all (missing, not executable, not permitted), as a short reason. */
  notStarted?: string;
  /** Whether `notStarted` is for good: a missing or unpermitted command, not a passing failure. */
  fatal?: boolean;
}

/** How long to wait for a command's pipes to close after it exits or is killed. */
const PIPE_GRACE_MS = 250;
const STDERR_MAX = 1024;

/** The process groups of commands in flight, killed by killRunningCommands when the caller stops. */
const running = new Set<number>();

/** Kills every command still running (with its children), so none outlives a stopped process. */
export function killRunningCommands(): void {
  for (const pgid of running) {
    try {
      process.kill(-pgid, "SIGKILL");
    } catch {
      // gone already
    }
  }
  running.clear();
}

/** Runs `argv` as described in the module doc; never rejects. */
export function runCommand(
  argv: string[],
  options: { env: Record<string, string>; timeoutMs: number; stdoutMax: number },
): Promise<CommandResult> {
  return new Promise((resolve) => {
    let child: ReturnType<typeof spawn>;
    const result: CommandResult = {
      code: null,
      signal: null,
      timedOut: false,
      stdout: new Uint8Array(),
      stdoutBytes: 0,
      stderr: "",
    };
    try {
      child = spawn(argv[0], argv.slice(1), {
        detached: true, // its own process group, killed as one
        stdio: ["ignore", "pipe", "pipe"],
        env: options.env,
      });
    } catch (err) {
      // deno without --allow-run
      return resolve({ ...result, notStarted: oneLine((err as Error).message), fatal: true });
    }
    const out: Uint8Array[] = [];
    let exited = false;
    let settled = false;
    let grace: ReturnType<typeof setTimeout> | undefined;
    if (child.pid) running.add(child.pid);
    const settle = (extra: Partial<CommandResult> = {}) => {
      if (settled) return;
      settled = true;
      if (child.pid) running.delete(child.pid);
      clearTimeout(timer);
      clearTimeout(grace);
      child.stdout!.destroy();
      child.stderr!.destroy();
      resolve({ ...result, stdout: concat(out, options.stdoutMax), ...extra });
    };
    const killGroup = () => {
      try {
        if (child.pid) process.kill(-child.pid, "SIGKILL");
      } catch {
        if (!exited) child.kill("SIGKILL"); // deno without --allow-run for kill: at least the command
      }
    };
    const timer = setTimeout(() => {
      result.timedOut = true;
      killGroup();
      grace = setTimeout(() => settle(), PIPE_GRACE_MS);
    }, options.timeoutMs);
    child.stdout!.on("data", (chunk: Uint8Array) => {
      if (result.stdoutBytes <= options.stdoutMax) out.push(chunk);
      result.stdoutBytes += chunk.length;
    });
    child.stderr!.on("data", (chunk: Uint8Array) => {
      if (result.stderr.length < STDERR_MAX) result.stderr += new TextDecoder().decode(chunk);
    });
    child.on("error", (err: Error & { code?: string }) => {
      const fatal = err.code === "ENOENT" || err.code === "EACCES" || err.name === "NotCapable";
      settle({ notStarted: err.code ?? oneLine(err.message), fatal });
    });
    child.on("exit", (code, signal) => {
      exited = true;
      if (!result.timedOut) {
        result.code = code;
        result.signal = signal;
      }
      killGroup(); // children it left behind would pile up, and hold its pipes open
      grace ??= setTimeout(() => settle(), PIPE_GRACE_MS);
    });
    child.on("close", () => settle());
  });
}

/** The chunks joined, at most `max` bytes. */
export function concat(chunks: Uint8Array[], max: number): Uint8Array {
  const total = Math.min(max, chunks.reduce((n, c) => n + c.length, 0));
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    if (at >= total) break;
    const part = c.subarray(0, total - at);
    out.set(part, at);
    at += part.length;
  }
  return out;
}
