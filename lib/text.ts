/**
 * Text that reaches an operator's terminal or a log line: values from the
 * command line or from a record are shown printable (no control character
 * reaches the terminal raw: no escape sequence, no newline, no bidi override)
 * and cut to a length, so one hostile or huge value can neither forge a line
 * nor pad a table to a million columns.
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

/**
 * `value` as JSON text that no terminal acts on: JSON.stringify escapes C0
 * controls but lets DEL, C1 controls, format characters (bidi overrides) and
 * U+2028/U+2029 through; outside strings it writes none of them, so escaping
 * them everywhere keeps the same, valid, JSON.
 */
export function printableJson(value: unknown, indent?: number): string {
  // C0 controls are left alone: JSON.stringify has escaped those in strings, and the rest are its indentation
  return escapeControls(JSON.stringify(value, null, indent), UNPRINTABLE_IN_JSON);
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
