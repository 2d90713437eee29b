/**
 * `registry serve`: the registry as a live web page, a JSON and event API,
 * and Prometheus metrics, read-only, from one process that follows etcd
 * (lib/follow.ts: list, then watch; on a break, list again and apply the
 * difference).
 *
 * Routes (GET and HEAD only; any other method gets 405):
 * - `/`, `/app.js`, `/app.css`: the page (lib/page/), one EventSource a page.
 * - `/v1/services`: `{state, staleSince, lastHeard, revision, services: {NAME: COUNT}}`.
 * - `/v1/services/NAME`: the service's records as `registry ls NAME --json` gives them.
 * - `/v1/entries`: every entry under the prefix as `registry ls --json` gives them.
 * - `/v1/timeline`: the timeline (lib/history.ts), oldest first.
 * - `/v1/events`: server-sent events. Unnamed events are `registry watch
 *   --json`'s lines (`{"change":"registered",…}`, `{"change":"gone","key":…}`);
 *   `resync` (forget what you know: a listing follows as `registered`
 *   events), `state` (live or stale) and `timeline` (`{replace, entries}`)
 *   are named. Every event has an id; a client that reconnects with
 *   `Last-Event-ID` gets what it missed, in order, or a `resync` when the id
 *   is older than the FRAMES_KEPT events kept (or from another run).
 * - `/metrics`: Prometheus' text format 0.0.4.
 *
 * etcd unreachable is not "no instances": every route keeps the last
 * listing, with `state: "stale"` and the time etcd was last heard. Every
 * response carries a strict Content-Security-Policy (no inline script or
 * style), `nosniff` and `frame-ancestors 'none'`; every record field reaches
 * the page as JSON text and is shown with textContent. Bound to loopback,
 * only loopback Host names are answered (no DNS rebinding).
 *
 * The state (`RegistryView`), the routes (`route()`), the SSE framing and
 * the metrics are pure and tested without a socket; `runServe()` puts them
 * on node:http(s), which deno and node both run.
 *
 * @module
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { readFileSync } from "node:fs";
import { sleep, UsageError } from "./cli.ts";
import { describeError, type Etcd, type StoredValue, type WatchEvent } from "./etcd.ts";
import { follow } from "./follow.ts";
import {
  classify,
  compareRevisions,
  historyTimeline,
  readHistory,
  TIMELINE_MAX,
  type TimelineEntry,
  type TimelineKind,
} from "./history.ts";
import type { Log } from "./log.ts";
import { decodeEntry, type Entry, parsePort, servicePrefix, validateService } from "./record.ts";
import { printableJson, quote } from "./text.ts";
import { APP_CSS } from "./page/css.ts";
import { APP_JS } from "./page/app.ts";
import { INDEX_HTML } from "./page/html.ts";

/** The port `serve` listens on unless `--listen` says otherwise (etcd's 2379, with an 8 for the web). */
export const DEFAULT_PORT = 8379;

/** Where `serve` listens by default: loopback only. */
export const DEFAULT_LISTEN = `127.0.0.1:${DEFAULT_PORT}`;

/** How many events `/v1/events` keeps for clients that reconnect (at 20 changes a second, 8 minutes). */
export const FRAMES_KEPT = 10_000;

/** A client whose unsent events exceed this is cut off; it reconnects and resumes (or resyncs). */
export const MAX_BUFFERED_BYTES = 4 * 1024 * 1024;

/** How often an idle event stream gets a comment, so proxies and browsers keep it open. */
export const HEARTBEAT_MS = 15_000;

/** What `serve` is told on the command line. */
export interface ServeConfig {
  listen: { host: string; port: number };
  /** TLS: the certificate chain and its key (PEM files), both or neither. */
  listenCert?: string;
  listenKey?: string;
  /** HTTP basic authentication: a file whose first line is the password (any user name). */
  passwordFile?: string;
  prefix: string;
}

/** parseArgs options of `serve` (registry.ts spreads them into its own). */
export const SERVE_OPTIONS = {
  listen: { type: "string" },
  "listen-cert": { type: "string" },
  "listen-key": { type: "string" },
  "password-file": { type: "string" },
} as const;

/** The `--help` lines of `serve`. */
export const SERVE_HELP = `  --listen HOST:PORT        serve: where to listen (default ${DEFAULT_LISTEN}, loopback only)
  --listen-cert FILE        serve: TLS certificate chain (PEM), with --listen-key
  --listen-key FILE         serve: its private key (PEM)
  --password-file FILE      serve: require HTTP basic authentication, the password the file's
                            first line (any user name); never a flag`;

/** Parses `--listen HOST:PORT` (an IPv4 address, `localhost`, or `[IPv6]`); throws UsageError. */
export function parseListen(text: string): { host: string; port: number } {
  const match = /^(\d{1,3}(?:\.\d{1,3}){3}|localhost|\[[0-9a-fA-F:.]+\]):(\d+)$/.exec(text);
  const refuse = () =>
    new UsageError(`Cannot use --listen ${quote(text)}: expected HOST:PORT such as ${DEFAULT_LISTEN} or 0.0.0.0:8379`);
  if (!match) throw refuse();
  const host = match[1].startsWith("[") ? match[1].slice(1, -1) : match[1];
  if (/^\d/.test(host) && host.split(".").some((o) => Number(o) > 255)) throw refuse();
  let port: number;
  try {
    port = parsePort(match[2]);
  } catch {
    throw refuse();
  }
  return { host, port };
}

/** The serve-only part of the command line, from parseArgs' values; throws UsageError. */
export function parseServe(
  values: { listen?: string; "listen-cert"?: string; "listen-key"?: string; "password-file"?: string },
  rest: readonly string[],
): Omit<ServeConfig, "prefix"> {
  if (rest.length > 0) throw new UsageError(`Cannot use arguments ${quote(rest.join(" "))}: expected none`);
  const listen = parseListen(values.listen ?? DEFAULT_LISTEN);
  const cert = values["listen-cert"];
  const key = values["listen-key"];
  if ((cert === undefined) !== (key === undefined)) {
    throw new UsageError(
      `Cannot use ${cert ? `--listen-cert ${quote(cert)}` : `--listen-key ${quote(key!)}`} alone: ` +
        "expected both --listen-cert and --listen-key",
    );
  }
  for (
    const [flag, file] of [["--listen-cert", cert], ["--listen-key", key], [
      "--password-file",
      values["password-file"],
    ]] as const
  ) {
    if (file !== undefined && (file === "" || file.endsWith("/"))) {
      throw new UsageError(`Cannot use ${flag} ${quote(file)}: expected a file`);
    }
  }
  return {
    listen,
    ...(cert === undefined ? {} : { listenCert: cert, listenKey: key }),
    ...(values["password-file"] === undefined ? {} : { passwordFile: values["password-file"] }),
  };
}

/** Whether `host` is a loopback address or name. */
export function isLoopback(host: string): boolean {
  return /^127\.\d+\.\d+\.\d+$/.test(host) || host === "localhost" || host === "::1";
}

// ---------------------------------------------------------------------------
// The state: the last listing, the changes since, the event log (pure)

/** Whether etcd answers: `connecting` before the first listing. */
export type EtcdState = "connecting" | "live" | "stale";

/** Turns an entry into the JSON object `ls --json` and `watch --json` print (lib/show.ts's entryJson(), passed in). */
export type EntryJson = (entry: Entry) => Record<string, unknown>;

interface Known {
  value: string;
  entry: Entry;
  /** The entry as `ls --json` prints it. */
  json: Record<string, unknown>;
}

/** One server-sent event, kept for clients that reconnect. */
interface Frame {
  seq: number;
  text: string;
}

/** Formats one server-sent event: `id`, `event` (when named), one `data` line (JSON has no raw newline). */
export function sseFrame(id: string, event: string | undefined, data: string): string {
  // printableJson escapes U+2028/2029 and JSON escapes \r and \n: one data line
  return `id: ${id}\n${event ? `event: ${event}\n` : ""}data: ${data}\n\n`;
}

/**
 * What `serve` knows: the instances of the last listing and the changes
 * since, etcd's state, counters for the metrics, the timeline and the log of
 * events for `/v1/events`. Told what follow() is told, with the time.
 */
export class RegistryView {
  readonly known = new Map<string, Known>();
  state: EtcdState = "connecting";
  /** When etcd was found unreachable (state `stale`). */
  staleSinceMs?: number;
  /** The last revision listed or seen. */
  revision = "0";
  /** The revision of the first listing: history is read up to it. */
  firstRevision?: string;
  readonly changes: Record<TimelineKind, number> = { registered: 0, gone: 0, status: 0, changed: 0 };
  watchRestarts = 0;
  lastChangeMs?: number;
  /** Oldest first, at most TIMELINE_MAX. */
  timeline: TimelineEntry[] = [];
  /** Where history began (the oldest revision read), once read. */
  historyFrom?: string;
  readonly epoch: string;
  #seq = 0;
  #frames: Frame[] = [];
  readonly #listeners = new Set<(text: string) => void>();

  constructor(readonly prefix: string, readonly entryJson: EntryJson, startMs: number) {
    this.epoch = startMs.toString(36);
  }

  /** The id of the last event. */
  get lastId(): string {
    return `${this.epoch}.${this.#seq}`;
  }

  /** Calls `listener` with each new event's text until the returned function is called. */
  subscribe(listener: (text: string) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  get subscribers(): number {
    return this.#listeners.size;
  }

  #emit(event: string | undefined, data: string): void {
    const seq = ++this.#seq;
    const text = sseFrame(`${this.epoch}.${seq}`, event, data);
    this.#frames.push({ seq, text });
    // drop in bulk: a shift() per event is linear in the array's length
    if (this.#frames.length > FRAMES_KEPT * 1.25) this.#frames = this.#frames.slice(-FRAMES_KEPT);
    for (const listener of this.#listeners) listener(text);
  }

  #stateJson(nowMs: number): Record<string, unknown> {
    return {
      state: this.state,
      staleSince: this.staleSinceMs === undefined ? null : new Date(this.staleSinceMs).toISOString(),
      lastHeard: this.lastHeardMs(nowMs) === undefined ? null : new Date(this.lastHeardMs(nowMs)!).toISOString(),
      revision: this.revision,
    };
  }

  /** When etcd was last heard: now while live, else when it was found unreachable. */
  lastHeardMs(nowMs: number): number | undefined {
    return this.state === "live" ? nowMs : this.staleSinceMs;
  }

  #set(key: string, value: string, entry: Entry): void {
    this.known.set(key, { value, entry, json: this.entryJson(entry) });
  }

  /** Records one change (a timeline entry and counters) and sends its event. */
  #change(
    key: string,
    before: string | undefined,
    after: string | undefined,
    revision: string,
    at: number,
    approx: boolean,
  ) {
    if (after === undefined) {
      this.known.delete(key);
      this.#emit(undefined, printableJson({ change: "gone", key }));
    } else {
      this.#set(key, after, decodeEntry(this.prefix, key, after));
      this.#emit(undefined, printableJson({ change: "registered", ...this.known.get(key)!.json }));
    }
    const kind = classify(this.prefix, key, before, after);
    if (!kind) return;
    this.changes[kind.kind]++;
    this.lastChangeMs = at;
    const item: TimelineEntry = { revision, at, approx, ...kind };
    this.timeline.push(item);
    if (this.timeline.length > TIMELINE_MAX * 1.25) this.timeline = this.timeline.slice(-TIMELINE_MAX);
    this.#emit("timeline", printableJson({ replace: false, entries: [timelineJson(item)] }));
  }

  /** A whole listing: applies the difference from what was known (the first one only fills). */
  listed(values: StoredValue[], revision: string, nowMs: number): void {
    const first = this.firstRevision === undefined;
    if (first) this.firstRevision = revision;
    else this.watchRestarts++;
    this.revision = revision;
    const fresh = new Map(values.map((v) => [v.key, v.value]));
    for (const [key, known] of [...this.known].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      if (!fresh.has(key)) this.#change(key, known.value, undefined, revision, nowMs, true);
    }
    for (const [key, value] of fresh) {
      const before = this.known.get(key)?.value;
      if (before === value) continue;
      if (first) {
        const entry = decodeEntry(this.prefix, key, value);
        this.#set(key, value, entry);
        this.#emit(undefined, printableJson({ change: "registered", ...this.known.get(key)!.json }));
      } else {
        this.#change(key, before, value, revision, nowMs, true);
      }
    }
    this.#live(nowMs);
  }

  /** One change after the listing, as the watch reports it. */
  changed(event: WatchEvent, nowMs: number): void {
    this.revision = event.revision;
    const before = this.known.get(event.key)?.value;
    const after = event.type === "put" ? event.value : undefined;
    if (before === after) return;
    this.#change(event.key, before, after, event.revision, nowMs, false);
  }

  /** etcd cannot be read: the listing stands, marked stale (before any listing, still `connecting`). */
  waiting(nowMs: number): void {
    if (this.state !== "live") return;
    this.state = "stale";
    this.staleSinceMs = nowMs;
    this.#emit("state", printableJson(this.#stateJson(nowMs)));
  }

  /** etcd answered again. */
  answered(nowMs: number): void {
    this.#live(nowMs);
  }

  #live(nowMs: number): void {
    if (this.state === "live") return;
    this.state = "live";
    this.staleSinceMs = undefined;
    this.#emit("state", printableJson(this.#stateJson(nowMs)));
  }

  /** Puts the history read from etcd before the live timeline, and sends the whole timeline. */
  addHistory(entries: TimelineEntry[], fromRevision: string): void {
    const upTo = this.firstRevision ?? "0";
    const older = entries.filter((e) => compareRevisions(e.revision, upTo) <= 0);
    this.timeline = [...older, ...this.timeline].slice(-TIMELINE_MAX);
    this.historyFrom = fromRevision;
    this.#emit("timeline", printableJson({ replace: true, entries: this.timeline.map(timelineJson) }));
  }

  /**
   * The events a client that last saw `lastEventId` needs, as text: those
   * after it when they are all kept; otherwise (no id, an id from another
   * run, one too old) a `resync`, every instance as `registered`, the whole
   * timeline and the state.
   */
  catchUp(lastEventId: string | undefined, nowMs: number): string {
    const match = /^([0-9a-z]+)\.(\d+)$/.exec(lastEventId ?? "");
    if (match && match[1] === this.epoch) {
      const seq = Number(match[2]);
      const oldest = this.#frames.length ? this.#frames[0].seq : this.#seq + 1;
      if (seq <= this.#seq && seq >= oldest - 1) {
        // frames are in seq order: find the first after `seq` from the end (a client is usually near it)
        let i = this.#frames.length;
        while (i > 0 && this.#frames[i - 1].seq > seq) i--;
        return this.#frames.slice(i).map((f) => f.text).join("");
      }
    }
    const id = this.lastId;
    const parts = [sseFrame(id, "resync", printableJson({ prefix: this.prefix, ...this.#stateJson(nowMs) }))];
    for (const { json } of sortedKnown(this.known)) {
      parts.push(sseFrame(id, undefined, printableJson({ change: "registered", ...json })));
    }
    parts.push(sseFrame(id, "timeline", printableJson({ replace: true, entries: this.timeline.map(timelineJson) })));
    parts.push(sseFrame(id, "state", printableJson(this.#stateJson(nowMs))));
    return parts.join("");
  }

  /** `/v1/services`: the state and each service's instance count. */
  servicesJson(nowMs: number): Record<string, unknown> {
    const services: Record<string, number> = {};
    for (const { entry } of this.known.values()) {
      if (entry.service !== undefined && entry.record) services[entry.service] = (services[entry.service] ?? 0) + 1;
    }
    const sorted = Object.fromEntries(Object.entries(services).sort(([a], [b]) => (a < b ? -1 : 1)));
    return { ...this.#stateJson(nowMs), services: sorted };
  }

  /** The entries (of one service, or all) as `ls --json` prints them, in its order. */
  entriesJson(service?: string): Record<string, unknown>[] {
    const list = [...this.known.values()].filter((k) => service === undefined || k.entry.service === service);
    return sortedKnown(new Map(list.map((k) => [k.entry.key, k]))).map((k) => k.json);
  }
}

/** Known entries in `ls`'s order: by service, then address numerically; keys outside the layout last. */
function sortedKnown(known: Map<string, Known>): Known[] {
  const rank = (k: Known) => {
    const e = k.entry;
    if (e.service === undefined) return `1\0${e.key}`;
    const colon = e.address.lastIndexOf(":");
    const ip = e.address.slice(0, colon).split(".").map((o) => o.padStart(3, "0")).join(".");
    return `0\0${e.service}\0${ip}\0${e.address.slice(colon + 1).padStart(5, "0")}`;
  };
  return [...known.values()].map((k) => ({ k, r: rank(k) })).sort((a, b) => (a.r < b.r ? -1 : a.r > b.r ? 1 : 0))
    .map((x) => x.k);
}

/** A timeline entry as the API gives it: times as ISO 8601. */
export function timelineJson(e: TimelineEntry): Record<string, unknown> {
  return {
    revision: e.revision,
    at: new Date(e.at).toISOString(),
    approx: e.approx,
    kind: e.kind,
    service: e.service,
    address: e.address,
  };
}

// ---------------------------------------------------------------------------
// Metrics (pure)

/** Escapes a label value as the text format asks: backslash, double quote, newline. */
export function labelValue(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

/** `/metrics` in Prometheus' text format 0.0.4. */
export function formatMetrics(view: RegistryView, nowMs: number, streams: number): string {
  const lines: string[] = [];
  const metric = (name: string, type: string, help: string, samples: [string, number][]) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, value] of samples) lines.push(`${name}${labels} ${Number.isFinite(value) ? value : "NaN"}`);
  };
  const counts = new Map<string, number>();
  let invalid = 0;
  for (const { entry } of view.known.values()) {
    if (entry.service !== undefined && entry.record) counts.set(entry.service, (counts.get(entry.service) ?? 0) + 1);
    else invalid++;
  }
  metric(
    "registry_instances",
    "gauge",
    "Instances in the registry by service (the last listing while etcd is unreachable).",
    [...counts].sort(([a], [b]) => (a < b ? -1 : 1)).map(([s, n]) => [`{service="${labelValue(s)}"}`, n]),
  );
  metric("registry_invalid_entries", "gauge", "Keys under the prefix that are not an instance's record.", [[
    "",
    invalid,
  ]]);
  metric(
    "registry_changes_total",
    "counter",
    "Changes seen since start, by kind (registered, gone, status, changed).",
    (Object.keys(view.changes) as TimelineKind[]).map((k) => [`{kind="${k}"}`, view.changes[k]]),
  );
  metric("registry_etcd_up", "gauge", "1 when etcd answers, 0 while the listing is stale.", [[
    "",
    view.state === "live" ? 1 : 0,
  ]]);
  const heard = view.lastHeardMs(nowMs);
  if (heard !== undefined) {
    metric("registry_etcd_last_heard_timestamp_seconds", "gauge", "When etcd was last heard, in Unix seconds.", [[
      "",
      heard / 1000,
    ]]);
  }
  metric("registry_watch_restarts_total", "counter", "Listings after the first: each watch break and recovery.", [[
    "",
    view.watchRestarts,
  ]]);
  if (view.lastChangeMs !== undefined) {
    metric("registry_last_change_age_seconds", "gauge", "Seconds since the last change was seen.", [[
      "",
      Math.max(0, (nowMs - view.lastChangeMs) / 1000),
    ]]);
  }
  metric("registry_event_streams", "gauge", "Open /v1/events streams.", [["", streams]]);
  return `${lines.join("\n")}\n`;
}

// ---------------------------------------------------------------------------
// Routes (pure)

/** A whole response: status, headers, body. */
export interface Reply {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** The Content-Security-Policy of every response: nothing inline, nothing from elsewhere, no framing. */
export const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** Headers on every response. */
export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  "Content-Security-Policy": CSP,
  "X-Content-Type-Options": "nosniff",
  "X-Frame-Options": "DENY",
  "Referrer-Policy": "no-referrer",
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Resource-Policy": "same-origin",
};

function reply(status: number, type: string, body: string, extra: Record<string, string> = {}): Reply {
  return {
    status,
    headers: { ...SECURITY_HEADERS, "Content-Type": type, "Cache-Control": "no-store", ...extra },
    body,
  };
}

const TEXT = "text/plain; charset=utf-8";
const JSON_TYPE = "application/json; charset=utf-8";

/** What a request asks, as route() reads it. */
export interface Request {
  method: string;
  /** The request target: path and query. */
  url: string;
  /** The Host header. */
  host?: string;
  /** The Authorization header. */
  authorization?: string;
}

/** The outcome of route(): a whole reply, or the event stream (the caller holds it open). */
export type Route = Reply | { events: true; headers: Record<string, string> };

/** SHA-256 of a password, compared in constant time (checkPassword). */
export function passwordDigest(password: string): Buffer {
  return createHash("sha256").update(password, "utf8").digest();
}

/** Whether a Basic Authorization header carries the password (any user name). */
export function checkPassword(authorization: string | undefined, digest: Buffer): boolean {
  const match = /^Basic ([A-Za-z0-9+/=]+)$/i.exec(authorization ?? "");
  if (!match) return false;
  const decoded = Buffer.from(match[1], "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  if (colon < 0) return false;
  return timingSafeEqual(passwordDigest(decoded.slice(colon + 1)), digest);
}

/** Whether the Host header names a loopback host (for a server bound to loopback: no DNS rebinding). */
export function loopbackHost(host: string | undefined): boolean {
  if (host === undefined) return false;
  const name = /^\[([0-9a-fA-F:.]+)\](?::\d+)?$/.exec(host)?.[1] ?? host.replace(/:\d+$/, "");
  return isLoopback(name.toLowerCase());
}

/**
 * Answers one request from `view` (pure: no socket, no clock but `nowMs`).
 * `digest` set: a password is required. `loopbackOnly`: only loopback Host
 * names are answered.
 */
export function route(
  req: Request,
  view: RegistryView,
  nowMs: number,
  options: { digest?: Buffer; loopbackOnly?: boolean; streams?: number } = {},
): Route {
  if (req.method !== "GET" && req.method !== "HEAD") {
    return reply(405, TEXT, "Method not allowed: this server is read-only (GET and HEAD)\n", { Allow: "GET, HEAD" });
  }
  if (options.loopbackOnly && !loopbackHost(req.host)) {
    return reply(421, TEXT, "Misdirected request: this server answers loopback host names only\n");
  }
  if (options.digest && !checkPassword(req.authorization, options.digest)) {
    return reply(401, TEXT, "Unauthorized\n", { "WWW-Authenticate": 'Basic realm="registry", charset="UTF-8"' });
  }
  const path = req.url.split("?")[0];
  const json = (value: unknown) =>
    reply(200, JSON_TYPE, `${printableJson(value, 2)}\n`, {
      "Registry-State": view.state,
      ...(view.lastHeardMs(nowMs) === undefined
        ? {}
        : { "Registry-Last-Heard": new Date(view.lastHeardMs(nowMs)!).toISOString() }),
    });
  switch (path) {
    case "/":
    case "/index.html":
      return reply(200, "text/html; charset=utf-8", INDEX_HTML);
    case "/app.js":
      return reply(200, "text/javascript; charset=utf-8", APP_JS);
    case "/app.css":
      return reply(200, "text/css; charset=utf-8", APP_CSS);
    case "/favicon.ico":
      return { status: 204, headers: { ...SECURITY_HEADERS, "Cache-Control": "max-age=86400" }, body: "" };
    case "/v1/services":
      return json(view.servicesJson(nowMs));
    case "/v1/entries":
      return json(view.entriesJson());
    case "/v1/timeline":
      return json(view.timeline.map(timelineJson));
    case "/metrics":
      return reply(200, "text/plain; version=0.0.4; charset=utf-8", formatMetrics(view, nowMs, options.streams ?? 0));
    case "/v1/events":
      return {
        events: true,
        headers: {
          ...SECURITY_HEADERS,
          "Content-Type": "text/event-stream; charset=utf-8",
          "Cache-Control": "no-store",
          "X-Accel-Buffering": "no",
        },
      };
  }
  if (path.startsWith("/v1/services/")) {
    const name = decodeURIComponent(path.slice("/v1/services/".length));
    try {
      validateService(name);
    } catch {
      return reply(404, TEXT, "Not found: expected /v1/services/SERVICE, a service name\n");
    }
    return json(view.entriesJson(name));
  }
  return reply(404, TEXT, "Not found\n");
}

// ---------------------------------------------------------------------------
// The server (effects)

/** What runServe() needs from its caller. */
export interface ServeDeps {
  etcd: Etcd;
  log: Log;
  entryJson: EntryJson;
  /** Called once the server listens, with its address (tests and the bench read the port). */
  listening?(address: { host: string; port: number }): void;
}

/** Reads a file named on the command line; throws UsageError naming it. */
function readConfigFile(flag: string, path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    throw new UsageError(`Cannot use ${flag} ${quote(path)}: ${describeError(err)}`);
  }
}

/** Serves until `signal` aborts; throws UsageError for unreadable files or an address it cannot bind. */
export async function runServe(config: ServeConfig, deps: ServeDeps, signal: AbortSignal): Promise<void> {
  let digest: Buffer | undefined;
  if (config.passwordFile !== undefined) {
    const password = readConfigFile("--password-file", config.passwordFile).split(/\r?\n/)[0];
    if (password === "") {
      throw new UsageError(`Cannot use --password-file ${quote(config.passwordFile)}: its first line is empty`);
    }
    digest = passwordDigest(password);
  }
  const tls = config.listenCert && config.listenKey
    ? {
      cert: readConfigFile("--listen-cert", config.listenCert),
      key: readConfigFile("--listen-key", config.listenKey),
    }
    : undefined;
  const view = new RegistryView(config.prefix, deps.entryJson, Date.now());
  const loopbackOnly = isLoopback(config.listen.host);
  const streams = new Set<ServerResponse>();

  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const outcome = route(
      {
        method: req.method ?? "",
        url: req.url ?? "/",
        host: req.headers.host,
        authorization: req.headers.authorization,
      },
      view,
      Date.now(),
      { digest, loopbackOnly, streams: streams.size },
    );
    if (!("events" in outcome)) {
      res.writeHead(outcome.status, { ...outcome.headers, "Content-Length": Buffer.byteLength(outcome.body) });
      res.end(req.method === "HEAD" ? undefined : outcome.body);
      return;
    }
    res.writeHead(200, outcome.headers);
    if (req.method === "HEAD") return void res.end();
    const lastEventId = headerText(req.headers["last-event-id"]) ??
      new URL(req.url ?? "/", "http://x").searchParams.get("lastEventId") ?? undefined;
    streams.add(res);
    const send = (text: string) => {
      // a client that cannot keep up is cut off: it reconnects with its last id and resumes, or resyncs
      if (res.writableLength > MAX_BUFFERED_BYTES) return void res.destroy();
      res.write(text);
    };
    send(`retry: 1000\n\n${view.catchUp(lastEventId, Date.now())}`);
    const unsubscribe = view.subscribe(send);
    const heartbeat = setInterval(() => send(": ping\n\n"), HEARTBEAT_MS);
    const close = () => {
      unsubscribe();
      clearInterval(heartbeat);
      streams.delete(res);
    };
    res.on("close", close);
    res.on("error", close);
  };
  const server = tls ? createHttpsServer(tls, handler) : createHttpServer(handler);
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once(
      "error",
      (err) =>
        reject(new UsageError(`Cannot listen on ${quote(formatHostPort(config.listen))}: ${describeError(err)}`)),
    );
    server.listen(config.listen.port, config.listen.host, () => resolve());
  });
  const bound = server.address();
  const port = typeof bound === "object" && bound ? bound.port : config.listen.port;
  deps.log("info", "started", {
    listen: `${tls ? "https" : "http"}://${formatHostPort({ host: config.listen.host, port })}/`,
    prefix: config.prefix,
    endpoints: deps.etcd.endpoint,
    password: digest ? "required" : undefined,
  });
  deps.listening?.({ host: config.listen.host, port });

  let history: Promise<void> | undefined;
  const loadHistory = () => {
    if (history || view.firstRevision === undefined) return;
    const until = view.firstRevision;
    history = (async () => {
      try {
        const read = await readHistory(deps.etcd, servicePrefix(config.prefix), until, { signal });
        const entries = historyTimeline(config.prefix, read.events, Date.now());
        view.addHistory(entries, read.fromRevision);
        deps.log("info", "history read", { from: read.fromRevision, to: until, changes: entries.length });
      } catch (err) {
        if (signal.aborted) return;
        deps.log("warning", "history unread", { error: describeError(err) });
        history = undefined; // tried again after the next listing
      }
    })();
  };

  await follow(
    deps.etcd,
    servicePrefix(config.prefix),
    {
      listed(values, revision) {
        view.listed(values, revision, Date.now());
        loadHistory();
      },
      changed(event) {
        view.changed(event, Date.now());
      },
      waiting(reason) {
        view.waiting(Date.now());
        deps.log("warning", "etcd unreachable", { endpoints: deps.etcd.endpoint, error: describeError(reason) });
      },
      answered() {
        view.answered(Date.now());
        deps.log("notice", "etcd answered", { endpoint: deps.etcd.endpoint });
      },
    },
    signal,
    { sleep, random: Math.random },
  );
  for (const res of streams) res.destroy();
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  server.closeAllConnections(); // idle keep-alive connections too: stop now, not when browsers let go
  await closed;
  await history;
}

function headerText(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

function formatHostPort(a: { host: string; port: number }): string {
  return a.host.includes(":") ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}
