/**
 * What both scripts share on the command line: parsing durations and etcd
 * connection flags (etcdctl's names and variables), and the usage error that
 * means exit status 2.
 *
 * @module
 */
import type { EtcdOptions } from "./etcd.ts";
import { DEFAULT_PREFIX } from "./record.ts";
import { printable, quote } from "./text.ts";

/** Bad usage or configuration: one line on stderr, exit status 2, nothing written. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** The environment as the scripts read it. */
export type Env = Record<string, string | undefined>;

/** The default etcd endpoint when neither `--endpoints` nor `$ETCDCTL_ENDPOINTS` is given. */
export const DEFAULT_ENDPOINT = "http://127.0.0.1:2379";

/** parseArgs options for the etcd connection, the same in both scripts. */
export const CONNECTION_OPTIONS = {
  endpoints: { type: "string" },
  prefix: { type: "string" },
  cacert: { type: "string" },
  cert: { type: "string" },
  key: { type: "string" },
  user: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

/** The `--help` text for the connection flags. */
export const CONNECTION_HELP = `etcd:
  --endpoints URL[,URL...]  etcd client URLs (default $ETCDCTL_ENDPOINTS, else ${DEFAULT_ENDPOINT})
  --prefix PATH             where records live (default ${DEFAULT_PREFIX})
  --cacert FILE             CA bundle for https endpoints ($ETCDCTL_CACERT)
  --cert FILE, --key FILE   client certificate and key ($ETCDCTL_CERT, $ETCDCTL_KEY)
  --user NAME:PASSWORD      etcd user ($ETCDCTL_USER)`;

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** The longest delay a timer holds (2^31-1 ms, about 24.8 days); a longer one fires at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** The range a duration flag takes, in milliseconds, both ends included. */
export interface DurationRange {
  minMs: number;
  maxMs: number;
}

/** A duration as help and errors write it: `500ms`, `2s`, `5m`, `1h`. */
export function formatDuration(ms: number): string {
  for (const [unit, size] of [["h", 3_600_000], ["m", 60_000], ["s", 1000]] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/**
 * Parses `500ms`, `2s`, `1.5s`, `1m`, `1h` into milliseconds, within `range`;
 * throws UsageError otherwise, naming the flag, the value and the range.
 */
export function parseDuration(text: string, flag: string, range: DurationRange): number {
  const match = DURATION.exec(text.trim());
  const ms = match ? Math.round(Number(match[1]) * UNIT_MS[match[2]]) : NaN;
  if (!match || !(ms >= range.minMs && ms <= range.maxMs)) {
    throw new UsageError(
      `Cannot use ${flag} ${quote(text)}: expected a duration from ${formatDuration(range.minMs)} to ${
        formatDuration(range.maxMs)
      }, such as 500ms, 2s or 1m`,
    );
  }
  return ms;
}

/** Parses a whole number from `min` up; throws UsageError otherwise. */
export function parseCount(text: string, flag: string, min = 1, max = 1_000_000): number {
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    throw new UsageError(`Cannot use ${flag} ${quote(text)}: expected a whole number from ${min} to ${max}`);
  }
  return n;
}

/**
 * Parses a comma-separated endpoint list, as etcdctl takes it: `http://host:port`,
 * `https://host:port`, or a bare `host:port` meaning `http://host:port`. The
 * port is required, and nothing else may be in a URL (no user, path, query or
 * fragment): what would be silently dropped is refused instead.
 */
export function parseEndpoints(text: string): string[] {
  const endpoints = text.split(",").map((s) => s.trim()).filter((s) => s !== "");
  if (endpoints.length === 0) throw new UsageError(`Cannot use endpoints ${quote(text)}: expected URL[,URL...]`);
  return endpoints.map((endpoint) => {
    // a user and password in a URL are never shown, nor used: etcdctl takes them with --user
    const shown = endpoint.replace(/\/\/[^/]*@/, "//***@");
    const refuse = () =>
      new UsageError(
        `Cannot use endpoint ${quote(shown)}: expected http(s)://HOST:PORT such as http://127.0.0.1:2379${
          shown === endpoint ? "" : " (a user goes in --user)"
        }`,
      );
    const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(endpoint) ? endpoint : `http://${endpoint}`;
    let url: URL;
    try {
      url = new URL(withScheme);
    } catch {
      throw refuse();
    }
    // URL drops a default port (":80" for http): look at what was written, not at what URL kept
    const written = withScheme.replace(/^[a-z][a-z0-9+.-]*:\/\//i, "").replace(/\/$/, "");
    if (
      (url.protocol !== "http:" && url.protocol !== "https:") || url.hostname === "" || url.pathname !== "/" ||
      url.username !== "" || url.password !== "" || url.search !== "" || url.hash !== "" || withScheme.includes("?") ||
      withScheme.includes("#") || !/:\d{1,5}$/.test(written)
    ) {
      throw refuse();
    }
    const port = Number(written.slice(written.lastIndexOf(":") + 1));
    if (port < 1 || port > 65535) throw refuse();
    return `${url.protocol}//${url.hostname}:${port}`;
  });
}

/** The etcd connection from flags, falling back to etcdctl's environment variables. */
export function parseConnection(
  values: { endpoints?: string; cacert?: string; cert?: string; key?: string; user?: string },
  env: Env,
): EtcdOptions {
  const endpoints = parseEndpoints(values.endpoints ?? env.ETCDCTL_ENDPOINTS ?? DEFAULT_ENDPOINT);
  const options: EtcdOptions = { endpoints };
  const cacert = values.cacert ?? env.ETCDCTL_CACERT;
  const cert = values.cert ?? env.ETCDCTL_CERT;
  const key = values.key ?? env.ETCDCTL_KEY;
  if (cacert) options.cacert = cacert;
  if (cert || key) {
    if (!cert || !key) {
      throw new UsageError(
        `Cannot use ${cert ? `--cert ${quote(cert)}` : `--key ${quote(key!)}`} alone: expected both --cert and --key`,
      );
    }
    options.cert = cert;
    options.key = key;
  }
  const secure = endpoints.filter((e) => e.startsWith("https:")).length;
  if (secure > 0 && secure < endpoints.length) {
    throw new UsageError(
      `Cannot use endpoints ${quote(endpoints.join(","))}: expected all http or all https, not a mix`,
    );
  }
  if ((cacert || cert) && secure === 0) {
    throw new UsageError(
      `Cannot use TLS files with endpoints ${quote(endpoints.join(","))}: expected https:// endpoints`,
    );
  }
  const user = values.user ?? env.ETCDCTL_USER;
  if (user !== undefined) {
    const colon = user.indexOf(":");
    // the password is never shown: only what precedes the first colon
    if (colon <= 0) throw new UsageError(`Cannot use user ${quote(user.split(":")[0])}: expected NAME:PASSWORD`);
    options.user = { name: user.slice(0, colon), password: user.slice(colon + 1) };
  }
  return options;
}

/** Runs `fn`, turning a RangeError (a value out of its contract, from lib/record.ts) into a UsageError. */
export function asUsage<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw err instanceof RangeError ? new UsageError(err.message) : err;
  }
}

/** Resolves after `ms` (at most MAX_TIMER_MS: callers loop), or as soon as `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    // past MAX_TIMER_MS a timer fires at once: a loop would spin
    const timer = setTimeout(done, Math.min(ms, MAX_TIMER_MS));
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done);
  });
}

/** Exits with `code` once stdout and stderr have taken all that was written (node queues writes to a full pipe). */
export function exitWhenFlushed(code: number): void {
  let pending = 2;
  const done = () => --pending === 0 && process.exit(code);
  process.stdout.write("", done);
  process.stderr.write("", done);
}

/** Turns parseArgs' own errors (unknown flag, missing value) into one-line usage errors. */
export function usageFrom(err: unknown, program: string): unknown {
  if (err instanceof TypeError && "code" in err && String(err.code).startsWith("ERR_PARSE_ARGS")) {
    // node quotes the flag as given: escape it, so an escape sequence or a newline cannot ride out in the error
    const message = printable(err.message.split("\n")[0].replace(/\. To specify a positional argument.*$/, ""), 300);
    return new UsageError(`${message} (see ${program} --help)`);
  }
  return err;
}

/**
 * The process's stop signals: `first` aborts on the first SIGTERM or SIGINT
 * (its reason is the signal's name), `second` on any signal after it (the
 * secretary's drain is cut short by one).
 */
export function stopSignals(): { first: AbortSignal; second: AbortSignal } {
  const first = new AbortController();
  const second = new AbortController();
  for (const name of ["SIGTERM", "SIGINT"] as const) {
    process.on(name, () => (first.signal.aborted ? second.abort(name) : first.abort(name)));
  }
  return { first: first.signal, second: second.signal };
}
