/**
 * Text that reaches an operator's terminal or a log line: values from the
 * command line or from a record are shown printable (no control character
 * reaches the terminal raw: no escape sequence, no newline, no bidi override)
 * and cut to a length, so one hostile or huge value can neither forge a line
 * nor pad a table to a million columns. Values from a record are also cut in
 * depth (limitDepth) before anything stringifies them: JSON.stringify
 * recurses, and under node a value a few thousand levels deep overflows the
 * stack.
 *
 * @module
 */

// C0, DEL and C1 controls, format characters (bidi overrides, zero-width), line and paragraph separators
const UNPRINTABLE = /[\p{Cc}\p{Cf}\u2028\u2029]/gu;
const UNPRINTABLE_IN_JSON = /[\u007f-\u009f\p{Cf}\u2028\u2029]/gu;

/** Whether `text` holds a control or format character (what `printable()` would escape). */
export function hasControl(text: string): boolean {
  UNPRINTABLE.lastIndex = 0;
  return UNPRINTABLE.test(text);
}

/** `text` with every control and format character written as `\uXXXX`, cut to `max` characters. */
export function printable(text: string, max = Infinity): string {
  return cut(escapeControls(text), max);
}

/**
 * A value as a usage error or log shows it: in double quotes, `"` and `\`
 * escaped as JSON does, every control character as `\uXXXX`, cut to `max`.
 */
export function quote(text: string, max = 200): string {
  const body = cut(text, max);
  return escapeControls(JSON.stringify(body));
}

/** What stands for an array or object nested deeper than a reader shows (limitDepth). */
export const TOO_DEEP = "(too deep)";

/**
 * How many levels of arrays and objects printableJson() shows: a backstop
 * above what a record keeps (RECORD_DEPTH in lib/record.ts), so whatever the
 * registry prints around a record (an array, a change) cuts nothing more.
 */
export const JSON_DEPTH = 64;

/**
 * `value` (data as JSON.parse makes it) with each array or object nested
 * deeper than `max` levels replaced by TOO_DEEP: `max` 1 keeps `value`'s own
 * fields and turns each array or object in them into TOO_DEEP. Returns
 * `value` itself when nothing is that deep, else a copy of the paths it
 * changed, own keys (`__proto__` too) kept as data. Never recurses deeper
 * than `max`, so it cannot overflow the stack itself; etcd's 1.5 MiB can hold
 * 750,000 levels, and JSON.stringify overflows node's stack at about 5,000.
 */
export function limitDepth(value: unknown, max: number): unknown {
  if (typeof value !== "object" || value === null) return value;
  if (max <= 0) return TOO_DEEP;
  if (Array.isArray(value)) {
    let copy: unknown[] | undefined;
    for (let i = 0; i < value.length; i++) {
      const limited = limitDepth(value[i], max - 1);
      if (limited !== value[i]) (copy ??= value.slice())[i] = limited;
    }
    return copy ?? value;
  }
  const fields = value as Record<string, unknown>;
  let changed: Map<string, unknown> | undefined;
  for (const key of Object.keys(fields)) {
    const limited = limitDepth(fields[key], max - 1);
    if (limited !== fields[key]) (changed ??= new Map()).set(key, limited);
  }
  // Object.fromEntries defines each key as data: `copy[key] = v` would make a "__proto__" key the prototype
  return changed
    ? Object.fromEntries(Object.keys(fields).map((key) => [key, changed.has(key) ? changed.get(key) : fields[key]]))
    : value;
}

/**
 * `value` as JSON text that no terminal acts on: JSON.stringify escapes C0
 * controls but lets DEL, C1 controls, format characters (bidi overrides) and
 * U+2028/U+2029 through; outside strings it writes none of them, so escaping
 * them everywhere keeps the same, valid, JSON. Arrays and objects deeper than
 * `maxDepth` levels are shown as TOO_DEEP, so it never overflows the stack.
 */
export function printableJson(value: unknown, indent?: number, maxDepth = JSON_DEPTH): string {
  // C0 controls are left alone: JSON.stringify has escaped those in strings, and the rest are its indentation
  return escapeControls(JSON.stringify(limitDepth(value, maxDepth), null, indent), UNPRINTABLE_IN_JSON);
}

/** Text from a command or an error, for one log line: control characters as spaces, trimmed, at most `max` characters. */
export function oneLine(text: string, max = 120): string {
  // deno-lint-ignore no-control-regex
  return cut(text.replace(/[\x00-\x1f\x7f]+/g, " ").trim(), max);
}

/** `text` cut to `max` characters, the last one an ellipsis when it was longer. */
export function cut(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, Math.max(0, max - 1))}…` : text;
}

function escapeControls(text: string, unprintable = UNPRINTABLE): string {
  // a character past U+FFFF (a tag character) is two UTF-16 units: both written, as JSON would
  return text.replace(unprintable, (c) => [...Array(c.length).keys()].map((i) => unit(c.charCodeAt(i))).join(""));
}

function unit(code: number): string {
  return `\\u${code.toString(16).padStart(4, "0")}`;
}
