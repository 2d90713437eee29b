/**
 * The registry's contract: where an instance's record lives in etcd and what
 * it holds. Writers (secretary) and readers (registry) both go through this
 * file, so they always agree.
 *
 * Key:   `<prefix>/<service>/<ip>:<port>`, one per instance, so two instances
 *        on one host never overwrite or delete each other: `<service>` a
 *        service name (validateService()), `<ip>` a dotted IPv4 address, `<port>`
 *        an integer from 1 to 65535 without leading zeros, exactly as
 *        instanceKey() writes it. A key is read relative to the prefix, so a
 *        reader must know the prefix (parseKey). A key under the prefix that
 *        does not fit (deeper, directly under the prefix, a bad service name
 *        or address) is not an instance: readers report it as such, whatever
 *        its value, and never guess a service or an address from it.
 * Value: a JSON object, a superset of the 2015 article's record:
 *        `{"host", "ipv4_addr", "port", "service", "registered_at", "meta", "Addr"}`,
 *        plus `"status"` when an exec check reports data. `Addr` is
 *        `"<ip>:<port>"`, the one field etcd's own gRPC name resolver reads
 *        (its `Endpoint{Addr, Metadata}`, names matched without regard to
 *        case), so Go gRPC clients dial the instances directly. There is no
 *        `Metadata`: grpc's round_robin balancer panics on an object there,
 *        and `meta` (a different name) is ours. Readers need not find `Addr`:
 *        records written before it had none.
 *        `meta` maps names to strings, as the secretary writes them; a reader
 *        takes any other value as its JSON text (`1`, `true`, `null`,
 *        `{"a":1}`), and a `meta` that is not an object as no meta.
 *        Readers read no field they do not know (`registry --json` shows
 *        them as stored) and report a value that is not a record instead of
 *        failing.
 * Reading: every field but the key's service and address is whatever the
 *        record's writer chose. decodeEntry() never throws, whatever etcd
 *        holds (not JSON, invalid UTF-8, 1.5 MiB, 750,000 levels deep): it
 *        keeps RECORD_DEPTH levels and shows deeper arrays and objects as
 *        "(too deep)", and it names the fields (`ipv4_addr`, `port`,
 *        `service`, `Addr`) that disagree with the key (recordMismatch());
 *        whatever routes traffic uses the key's address only.
 * Address: a unicast IPv4 address: not 0.x.x.x (0.0.0.0 dials the host
 *        itself), not multicast (224.0.0.0/4), not the broadcast address
 *        (validateIpv4); the same rule for the secretary's `--ip` and for
 *        keys, so a key with such an address is not an instance.
 *
 * @module
 */
import { limitDepth, quote } from "./text.ts";

/** What an exec check reports and the record publishes: any JSON object. */
export type Status = Record<string, unknown>;

/** One instance's record, as stored in etcd. */
export interface ServiceRecord {
  /** The machine's hostname (the unit's `%H`). */
  host: string;
  /** The instance's address, a dotted IPv4 string. */
  ipv4_addr: string;
  /** The instance's port. */
  port: number;
  /** The service the instance belongs to. */
  service: string;
  /** When this record was written (ISO 8601). */
  registered_at: string;
  /** Free-form fields given with `--meta key=value`. */
  meta: Record<string, string>;
  /** What the instance's exec check last reported: any JSON object. Absent when there is none. */
  status?: Status;
}

/**
 * What a reader found under the prefix: an instance's record, with the
 * stored object it was read from (every field, those it does not know too,
 * RECORD_DEPTH levels deep at most) and the fields of it that disagree with
 * the key (recordMismatch(), empty when none); or, in `invalid`, the raw
 * value of an entry that is not one: its value is not a record, or its key
 * does not fit the layout (then it has no `service` and no `address`).
 */
export type Entry =
  | {
    key: string;
    service: string;
    address: string;
    record: ServiceRecord;
    stored: Record<string, unknown>;
    mismatch: string[];
    invalid?: undefined;
  }
  | {
    key: string;
    service: string;
    address: string;
    record?: undefined;
    stored?: undefined;
    mismatch?: undefined;
    invalid: string;
  }
  | {
    key: string;
    service?: undefined;
    address?: undefined;
    record?: undefined;
    stored?: undefined;
    mismatch?: undefined;
    invalid: string;
  };

/**
 * How many levels of arrays and objects a reader keeps of a stored value,
 * the record itself the first: an exec check's status or a `meta` value
 * deeper than that is cut to "(too deep)" (limitDepth in lib/text.ts).
 */
export const RECORD_DEPTH = 32;

/** The prefix every record lives under. @default "/services" */
export const DEFAULT_PREFIX = "/services";

const SERVICE_NAME = /^[a-z0-9][a-z0-9._-]*$/;
const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/** Returns `name` if it is a service name (lower-case letters, digits, `-`, `_`, `.`); throws RangeError otherwise. */
export function validateService(name: string): string {
  if (!SERVICE_NAME.test(name) || name.length > 128) {
    throw new RangeError(
      `Cannot use service ${
        quote(name)
      }: expected lower-case letters, digits, "-", "_" or "." (no "/"), starting with a letter or digit`,
    );
  }
  return name;
}

/**
 * Why a dotted IPv4 address cannot be an instance's, or undefined when it
 * can. RFC 6890 makes 0.0.0.0/8 no destination (and 0.0.0.0 dials the
 * dialler's own host), 224.0.0.0/4 is multicast and 255.255.255.255
 * broadcast: none is one instance. The rest of 240.0.0.0/4 is taken: Linux
 * routes it as unicast and some clouds give it to private networks.
 */
export function notUnicast(ip: string): string | undefined {
  const first = Number(ip.slice(0, ip.indexOf(".")));
  if (first === 0) return "an unspecified address (0.x.x.x)";
  if (first >= 224 && first <= 239) return "a multicast address (224.0.0.0/4)";
  if (ip === "255.255.255.255") return "the broadcast address";
  return undefined;
}

/**
 * Returns `ip` if it is a dotted IPv4 address an instance can have (not
 * unspecified, multicast or broadcast: notUnicast()); throws RangeError
 * otherwise. For the secretary's `--ip` and, through parseAddress(), keys.
 */
export function validateIpv4(ip: string): string {
  if (!IPV4.test(ip)) {
    throw new RangeError(`Cannot use IP ${quote(ip)}: expected an IPv4 address such as 10.0.0.5`);
  }
  const why = notUnicast(ip);
  if (why) throw new RangeError(`Cannot use IP ${quote(ip)}: ${why}; expected an instance's address such as 10.0.0.5`);
  return ip;
}

/** Parses a port: digits only, no leading zero, from 1 to 65535; throws RangeError otherwise. */
export function parsePort(text: string): number {
  const port = /^[1-9]\d{0,4}$/.test(text) ? Number(text) : NaN;
  if (!(port >= 1 && port <= 65535)) {
    throw new RangeError(`Cannot use port ${quote(text)}: expected an integer from 1 to 65535`);
  }
  return port;
}

/**
 * Parses an instance's address, `<ip>:<port>` as instanceKey() writes it;
 * throws RangeError otherwise. The one grammar of an address, for the key's
 * last segment and for the command line alike.
 */
export function parseAddress(text: string): { ip: string; port: number } {
  const colon = text.lastIndexOf(":");
  try {
    if (colon < 0) throw new RangeError("no port");
    return { ip: validateIpv4(text.slice(0, colon)), port: parsePort(text.slice(colon + 1)) };
  } catch {
    throw new RangeError(
      `Cannot use address ${quote(text)}: expected IP:PORT such as 10.0.0.5:8080, PORT from 1 to 65535`,
    );
  }
}

/** The sort key of an address: by IP numerically, then by port. */
export function addressRank(address: { ip: string; port: number }): string {
  const octets = address.ip.split(".").map((o) => o.padStart(3, "0")).join(".");
  return `${octets}\0${String(address.port).padStart(5, "0")}`;
}

const PREFIX_SEGMENT = /^[A-Za-z0-9_.-]+$/;

/**
 * Normalises a key prefix to `/a/b` form (a trailing `/` dropped). Each
 * segment is letters, digits, `_`, `.` and `-`, and not `.` or `..`: a
 * prefix every reader can be given back on a command line and list, with no
 * character that could break a terminal or a log line. Throws RangeError.
 */
export function normalizePrefix(prefix: string): string {
  const trimmed = prefix.replace(/\/+$/, "");
  const segments = trimmed.split("/").slice(1);
  if (
    !trimmed.startsWith("/") || trimmed.length > 256 ||
    segments.some((s) => !PREFIX_SEGMENT.test(s) || s === "." || s === "..")
  ) {
    throw new RangeError(
      `Cannot use prefix ${
        quote(prefix)
      }: expected a path such as /services, each segment letters, digits, "_", "." or "-", not "." or ".."`,
    );
  }
  return trimmed;
}

/** The key prefix of one service (with a trailing `/`), or of all services. */
export function servicePrefix(prefix: string, service?: string): string {
  return service === undefined ? `${prefix}/` : `${prefix}/${service}/`;
}

/** The key of one instance: `<prefix>/<service>/<ip>:<port>`. */
export function instanceKey(prefix: string, service: string, ip: string, port: number): string {
  return `${servicePrefix(prefix, service)}${ip}:${port}`;
}

/** The record's JSON text: always a valid JSON object, whatever the input. */
export function encodeRecord(record: ServiceRecord): string {
  return JSON.stringify({
    host: record.host,
    ipv4_addr: record.ipv4_addr,
    port: record.port,
    service: record.service,
    registered_at: record.registered_at,
    meta: record.meta,
    // what etcd's gRPC resolver reads (go.etcd.io/etcd/client/v3/naming): a Go client dials etcd:///<prefix>/<service>/
    Addr: `${record.ipv4_addr}:${record.port}`,
    ...(record.status === undefined ? {} : { status: record.status }),
  });
}

/**
 * Reads one stored key and value under `prefix` (as normalizePrefix() gives
 * it); never throws: a key that does not fit the layout, or a value that is
 * not a record, comes back as `invalid`.
 */
export function decodeEntry(prefix: string, key: string, value: string): Entry {
  const place = parseKey(prefix, key);
  if (!place) return { key, invalid: value };
  try {
    const stored = parseStored(value);
    const record = stored && readRecord(stored, place.service);
    if (stored && record) return { key, ...place, record, stored, mismatch: recordMismatch(place, stored) };
  } catch {
    // nothing above should throw (no deeper recursion than RECORD_DEPTH); if it does, the entry is not a record
  }
  return { key, ...place, invalid: value };
}

/** The stored JSON object, RECORD_DEPTH levels deep at most; undefined when the value is not one. */
function parseStored(value: string): Record<string, unknown> | undefined {
  let parsed: unknown;
  try {
    // JSON.parse does not recurse: any depth parses, under deno and node alike
    parsed = JSON.parse(value);
  } catch {
    return undefined;
  }
  return isObject(parsed) ? limitDepth(parsed, RECORD_DEPTH) as Record<string, unknown> : undefined;
}

function readRecord(o: Record<string, unknown>, service: string): ServiceRecord | undefined {
  // the article's loop stored the port as a number or a string and the IP unquoted;
  // accept what can be read, reject what cannot
  const port = typeof o.port === "string" ? Number(o.port) : o.port;
  if (typeof o.ipv4_addr !== "string" || typeof port !== "number" || !Number.isInteger(port)) return undefined;
  // String() would show an object as "[object Object]"; fromEntries keeps a "__proto__" name as data
  const meta: Record<string, string> = isObject(o.meta)
    ? Object.fromEntries(Object.entries(o.meta).map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)]))
    : {};
  return {
    host: typeof o.host === "string" ? o.host : "",
    ipv4_addr: o.ipv4_addr,
    port,
    service: typeof o.service === "string" ? o.service : service,
    registered_at: typeof o.registered_at === "string" ? o.registered_at : "",
    meta,
    ...(isObject(o.status) ? { status: o.status } : {}),
  };
}

/**
 * The fields of a stored record that disagree with its key's service and
 * address (pure), in this order: `ipv4_addr` (not the key's IP as written),
 * `port` (neither the key's port nor its decimal text), `service` (present
 * and not the key's), then each name that etcd's gRPC resolver reads as
 * `Addr` (Go matches JSON names without regard to case) whose value is not
 * the key's `<ip>:<port>`. A missing `service` or `Addr` agrees: older
 * records lack them. Empty when all agree.
 */
export function recordMismatch(place: { service: string; address: string }, stored: Record<string, unknown>): string[] {
  const colon = place.address.lastIndexOf(":");
  const ip = place.address.slice(0, colon);
  const port = place.address.slice(colon + 1);
  const out: string[] = [];
  if (stored.ipv4_addr !== ip) out.push("ipv4_addr");
  if (!((typeof stored.port === "number" || typeof stored.port === "string") && String(stored.port) === port)) {
    out.push("port");
  }
  if (stored.service !== undefined && stored.service !== place.service) out.push("service");
  for (const name of Object.keys(stored)) {
    if (/^addr$/i.test(name) && stored[name] !== place.address) out.push(name);
  }
  return out;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * The service and address of an instance's key under `prefix`
 * (`/services/apache/1.2.3.4:80` gives `apache` and `1.2.3.4:80`), or
 * undefined when the key does not fit `<prefix>/<service>/<ip>:<port>`.
 */
export function parseKey(prefix: string, key: string): { service: string; address: string } | undefined {
  if (!key.startsWith(`${prefix}/`)) return undefined;
  const segments = key.slice(prefix.length + 1).split("/");
  if (segments.length !== 2) return undefined;
  const [service, address] = segments;
  if (!fits(() => validateService(service), () => parseAddress(address))) return undefined;
  return { service, address };
}

/** Whether every check passes: the writer's own rules, so both sides agree on what fits. */
function fits(...checks: (() => unknown)[]): boolean {
  try {
    for (const check of checks) check();
    return true;
  } catch {
    return false;
  }
}
