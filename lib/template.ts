/**
 * `registry render`'s template and the view it sees: the trust boundary
 * between a record's writer and the configuration file a proxy loads.
 *
 * The view:
 * - `service`, `count`, `empty` (true when there is no instance: a template
 *   keeps its output valid with `{{^instances}}…{{/instances}}`);
 * - `instances`, sorted by address, each with fields the product validated:
 *   `key`, `address` (`<ip>:<port>`), `ip`, `port` and `service`, all from the
 *   key; and `nginx_weight` (1 to 1000), `balancer_weight` (mod_proxy_balancer's
 *   loadfactor, 1 to 100) and `haproxy_weight` (0 to 256), each the record's
 *   `meta.weight` when it is a whole number in that range, else absent;
 * - and, in each instance, whatever the record's writer chose: `host`,
 *   `ipv4_addr`, `registered_at`, `meta`, `status`. Hostile input.
 *
 * Insertion:
 * - `{{x}}` inserts a value only if it fits a token: 1 to 253 letters,
 *   digits and `._:/@+=-` (a number or a boolean always does). A value that
 *   does not (`;`, `{`, `}`, `#`, quotes, spaces, line breaks, an object)
 *   is not inserted: the instance it belongs to is left out of the render,
 *   and the caller is told its key and the field. The validated fields
 *   always fit.
 * - `{{{x}}}` and `{{&x}}` insert a value as stored: the template author's
 *   responsibility, for fields the author knows to be safe where they go.
 * - A name resolves through own properties only: `{{constructor}}`,
 *   `{{__proto__}}` and `{{toString}}` give nothing; no function is called.
 *
 * @module
 */
import Mustache from "mustache";
import { addressRank, decodeEntry, parseAddress } from "./record.ts";
import { oneLine } from "./text.ts";

/** What a `{{x}}` value must be to be inserted: letters, digits and `._:/@+=-`, 1 to 253 of them. */
export const TOKEN = /^[A-Za-z0-9._:/@+=-]{1,253}$/;

/** The weights the view offers: the name, and the range the proxy accepts. */
export const WEIGHTS = {
  /** nginx's `server … weight=N`: from 1 (nginx refuses 0); bounded so a sum cannot grow silly. */
  nginx_weight: { min: 1, max: 1000 },
  /** Apache mod_proxy_balancer's `loadfactor=N`: 1 to 100. */
  balancer_weight: { min: 1, max: 100 },
  /** HAProxy's `weight N`: 0 to 256. */
  haproxy_weight: { min: 0, max: 256 },
} as const;

/** One instance as the template sees it. */
export type InstanceView = Record<string, unknown> & { key: string; address: string };

/** What a template sees. */
export interface TemplateView {
  service: string;
  instances: InstanceView[];
  count: number;
  empty: boolean;
}

/** A value `{{x}}` did not insert: the instance's key (none outside an instance) and the name used. */
export interface Unfit {
  key?: string;
  field: string;
}

/** Whether `value` can be inserted by `{{x}}`: a finite number, a boolean, or a string that fits TOKEN. */
export function fitsToken(value: unknown): boolean {
  if (typeof value === "number") return Number.isFinite(value);
  if (typeof value === "boolean") return true;
  return typeof value === "string" && TOKEN.test(value);
}

/** The weight in `text` if it is a whole number (decimal digits, no sign) from `min` to `max`, else undefined. */
export function weightIn(text: unknown, min: number, max: number): number | undefined {
  if (typeof text !== "string" || !/^\d{1,4}$/.test(text)) return undefined;
  const weight = Number(text);
  return weight >= min && weight <= max ? weight : undefined;
}

/** The view of one listing entry, or undefined when it is not an instance of a record. */
export function instanceView(prefix: string, key: string, value: string): InstanceView | undefined {
  const entry = decodeEntry(prefix, key, value);
  if (!entry.record || entry.address === undefined) return undefined;
  const { ip, port } = parseAddress(entry.address);
  const { host, ipv4_addr, registered_at, meta, status } = entry.record;
  const view: InstanceView = { key, address: entry.address, ip, port, service: entry.service, host, ipv4_addr };
  Object.assign(view, { registered_at, meta, ...(status === undefined ? {} : { status }) });
  for (const [name, range] of Object.entries(WEIGHTS)) {
    const weight = weightIn(meta.weight, range.min, range.max);
    if (weight !== undefined) view[name] = weight;
  }
  return view;
}

/** The view of a service's listing (key to value): its instances sorted by address; what is not one, left out. */
export function templateView(prefix: string, service: string, values: ReadonlyMap<string, string>): TemplateView {
  const instances = [];
  for (const [key, value] of values) {
    const view = instanceView(prefix, key, value);
    if (view) instances.push({ rank: addressRank({ ip: view.ip as string, port: view.port as number }), view });
  }
  instances.sort((a, b) => (a.rank < b.rank ? -1 : a.rank > b.rank ? 1 : 0));
  return withInstances(service, instances.map((i) => i.view));
}

/** A view of `service` with these instances. */
export function withInstances(service: string, instances: InstanceView[]): TemplateView {
  return { service, instances, count: instances.length, empty: instances.length === 0 };
}

/** Parses a template; throws SyntaxError with Mustache's reason when it does not parse. */
export function parseTemplate(text: string): string {
  try {
    Mustache.parse(text);
  } catch (err) {
    throw new SyntaxError(oneLine((err as Error).message));
  }
  return text;
}

/** A Mustache context whose names resolve through own properties only, and which knows its instances. */
class OwnContext extends Mustache.Context {
  constructor(view: unknown, parent: OwnContext | undefined, readonly instances: WeakSet<object>) {
    super(view, parent);
  }

  override push(view: unknown): OwnContext {
    return new OwnContext(view, this, this.instances);
  }

  override lookup(name: string): unknown {
    if (name === ".") return this.view;
    const [first, ...rest] = name.split(".");
    for (const view of views(this)) {
      if (!hasOwn(view, first)) continue;
      let value = (view as Record<string, unknown>)[first];
      for (const part of rest) value = hasOwn(value, part) ? (value as Record<string, unknown>)[part] : undefined;
      return typeof value === "function" ? undefined : value;
    }
    return undefined;
  }

  /** The key of the instance this context is in, if any. */
  instanceKey(): string | undefined {
    for (const view of views(this)) {
      if (typeof view === "object" && view !== null && this.instances.has(view)) return (view as InstanceView).key;
    }
    return undefined;
  }
}

/** The views of a context and of its parents, innermost first. */
function* views(context: Mustache.Context): Generator<unknown> {
  for (let c: Mustache.Context | undefined = context; c; c = c.parent) yield c.view;
}

function hasOwn(value: unknown, name: string): boolean {
  return typeof value === "object" && value !== null && Object.hasOwn(value, name);
}

/** A Mustache writer that inserts `{{x}}` only when it fits a token, and notes what did not. */
class TokenWriter extends Mustache.Writer {
  unfit: Unfit[] = [];

  override escapedValue(token: string[], context: OwnContext): string {
    const value = context.lookup(token[1]);
    if (value === undefined || value === null) return "";
    if (fitsToken(value)) return String(value);
    this.unfit.push({ key: context.instanceKey(), field: token[1] });
    return "";
  }

  override unescapedValue(token: string[], context: OwnContext): string {
    const value = context.lookup(token[1]);
    return value === undefined || value === null ? "" : String(value);
  }
}

/** Renders `template` with `view` once (pure): the text, and each value `{{x}}` did not insert. */
export function renderOnce(template: string, view: TemplateView): { text: string; unfit: Unfit[] } {
  const writer = new TokenWriter();
  const context = new OwnContext(view, undefined, new WeakSet(view.instances));
  const text = writer.render(template, context, undefined, undefined);
  return { text, unfit: writer.unfit };
}

/**
 * Renders `template` with `view` (pure), leaving out each instance with a
 * value `{{x}}` would not insert: the text, the instances rendered, and the
 * values left out (a value outside any instance is not inserted, and named).
 */
export function renderView(
  template: string,
  view: TemplateView,
): { text: string; view: TemplateView; unfit: Unfit[] } {
  const unfit: Unfit[] = [];
  let current = view;
  for (;;) {
    const once = renderOnce(template, current);
    const out = new Set(once.unfit.flatMap((u) => (u.key === undefined ? [] : [u.key])));
    for (const u of once.unfit) {
      if (!unfit.some((v) => v.key === u.key && v.field === u.field)) unfit.push(u);
    }
    if (out.size === 0) return { text: once.text, view: current, unfit };
    current = withInstances(current.service, current.instances.filter((i) => !out.has(i.key)));
  }
}

/** The text of `template` rendered with `view` (pure), as renderView() renders it. */
export function renderTemplate(template: string, view: TemplateView): string {
  return renderView(template, view).text;
}
