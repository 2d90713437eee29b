/**
 * The registry's contract: where an instance's record lives in etcd and what
 * it holds. Writers (secretary) and readers (registry) both go through this
 * file, so they always agree.
 *
 * Key:   `<prefix>/<service>/<ip>:<port>`, one per instance, so two instances
 *        on one host never overwrite or delete each other.
 * Value: a JSON object, a superset of the 2015 article's record:
 *        `{"host", "ipv4_addr", "port", "service", "registered_at", "meta"}`,
 *        plus `"status"` when an exec check reports data.
 *        Readers ignore fields they do not know and report a value that is
 *        not a record instead of failing.
 *
 * @module
 */

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
  status?: Record<string, unknown>;
}

/** What a reader found under the prefix: a record, or a value that is not one. */
export type Entry =
  | { key: string; record: ServiceRecord; invalid?: undefined }
  | { key: string; record?: undefined; invalid: string };

/** The prefix every record lives under. @default "/services" */
export const DEFAULT_PREFIX = "/services";

const SERVICE_NAME = /^[a-z0-9][a-z0-9._-]*$/;
const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/** Throws RangeError unless `name` is a service name: lower-case letters, digits, `-`, `_`, `.`. */
export function checkService(name: string): string {
  if (!SERVICE_NAME.test(name) || name.length > 128) {
    throw new RangeError(
      `Cannot use service "${name}": expected lower-case letters, digits, "-", "_" or "." (no "/"), starting with a letter or digit`,
    );
  }
  return name;
}

/** Throws RangeError unless `ip` is a dotted IPv4 address. */
export function checkIpv4(ip: string): string {
  if (!IPV4.test(ip)) {
    throw new RangeError(`Cannot use IP "${ip}": expected an IPv4 address such as 10.0.0.5`);
  }
  return ip;
}

/** Throws RangeError unless `port` is an integer from 1 to 65535. */
export function checkPort(port: number): number {
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new RangeError(`Cannot use port "${port}": expected an integer from 1 to 65535`);
  }
  return port;
}

/** Normalises a key prefix to `/a/b` form; throws RangeError on an empty segment. */
export function normalizePrefix(prefix: string): string {
  const trimmed = prefix.replace(/\/+$/, "");
  if (!trimmed.startsWith("/") || trimmed.split("/").slice(1).some((s) => s === "")) {
    throw new RangeError(`Cannot use prefix "${prefix}": expected a path such as /services`);
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
    ...(record.status === undefined ? {} : { status: record.status }),
  });
}

/** Reads one stored value; never throws: a value that is not a record comes back as `invalid`. */
export function decodeEntry(key: string, value: string): Entry {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    return { key, invalid: value };
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return { key, invalid: value };
  const o = parsed as Record<string, unknown>;
  // the article's loop stored the port as a number or a string and the IP unquoted;
  // accept what can be read, reject what cannot
  const port = typeof o.port === "string" ? Number(o.port) : o.port;
  if (typeof o.ipv4_addr !== "string" || typeof port !== "number" || !Number.isInteger(port)) {
    return { key, invalid: value };
  }
  const meta: Record<string, string> = {};
  if (typeof o.meta === "object" && o.meta !== null && !Array.isArray(o.meta)) {
    for (const [k, v] of Object.entries(o.meta)) meta[k] = String(v);
  }
  return {
    key,
    record: {
      host: typeof o.host === "string" ? o.host : "",
      ipv4_addr: o.ipv4_addr,
      port,
      service: typeof o.service === "string" ? o.service : serviceOfKey(key),
      registered_at: typeof o.registered_at === "string" ? o.registered_at : "",
      meta,
      ...(isObject(o.status) ? { status: o.status } : {}),
    },
  };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** The service segment of a key (`/services/apache/1.2.3.4:80` gives `apache`). */
export function serviceOfKey(key: string): string {
  const parts = key.split("/");
  return parts.length >= 2 ? parts[parts.length - 2] : "";
}

/** The address segment of a key (`/services/apache/1.2.3.4:80` gives `1.2.3.4:80`). */
export function addressOfKey(key: string): string {
  return key.slice(key.lastIndexOf("/") + 1);
}
