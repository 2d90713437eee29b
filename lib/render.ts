/**
 * `registry render`: a configuration file rendered from a service's live
 * instances with a Mustache template, for consumers that cannot change at run
 * time (nginx, Apache's mod_proxy_balancer, a DNS zone, a JSON list of peers).
 *
 * - The template sees `service`, `instances` (the records sorted by address,
 *   each with its `key`, `address`, `ip` and `port` from the key, and the
 *   record's fields), `count`, and `empty` (true when there are none: a
 *   template keeps its output valid with `{{^instances}}…{{/instances}}`).
 *   `{{x}}` inserts a value printable (control characters escaped, never a
 *   line break); `{{{x}}}` inserts it as stored.
 * - The output is written only when its text changes, atomically (a file in
 *   the same folder, synced, renamed into place), with the old file's mode.
 * - `--check CMD` validates the new text before anything is reloaded. With a
 *   `{path}` word, the candidate is checked where it was staged, then moved
 *   into place (a whole config: `nginx -t -c {path}`); without one, the
 *   candidate goes in place, the command checks it there (a fragment that a
 *   main config includes: `nginx -t`), and the previous file is put back if
 *   it fails. A failed check leaves the previous file, is logged with the
 *   command's output, and the next change tries again.
 * - `--reload CMD` runs after a replacement. Commands run as exec checks do
 *   (lib/command.ts).
 * - `--wait MIN[:MAX]`: after a change, render once nothing has changed for
 *   MIN, at most MAX after the first. A removal is rendered at once.
 * - etcd unreachable is not "no instances": nothing is rendered from a failed
 *   read; a fresh listing after any break is rendered if it differs.
 *
 * @module
 */
import { readFileSync, statSync } from "node:fs";
import { open, readFile, rename, stat, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import Mustache from "mustache";
import { runCommand } from "./command.ts";
import { describeError, type Etcd } from "./etcd.ts";
import { follow } from "./follow.ts";
import type { Log } from "./log.ts";
import { addressRank, decodeEntry, parseAddress, servicePrefix } from "./record.ts";
import { oneLine, printable } from "./text.ts";

/** How long a check or reload command may run before it is killed with its process group. */
export const COMMAND_TIMEOUT_MS = 30_000;

/** The word in a --check command that stands for the staged candidate's path. */
export const PATH_WORD = "{path}";

/** The debounce of `--wait`: quiet for `minMs`, at most `maxMs` after the first change. */
export interface Wait {
  minMs: number;
  maxMs: number;
}

/** What a template sees. */
export interface TemplateView {
  service: string;
  instances: Record<string, unknown>[];
  count: number;
  empty: boolean;
}

/** The view of a service's listing (key to value): its instances sorted by address; what is not one, left out. */
export function templateView(prefix: string, service: string, values: Map<string, string>): TemplateView {
  const instances = [];
  for (const [key, value] of values) {
    const entry = decodeEntry(prefix, key, value);
    if (!entry.record || entry.address === undefined) continue;
    const { ip, port } = parseAddress(entry.address);
    instances.push({
      rank: addressRank({ ip, port }),
      view: { key, ...entry.record, address: entry.address, ip, port },
    });
  }
  instances.sort((a, b) => (a.rank < b.rank ? -1 : a.rank > b.rank ? 1 : 0));
  return { service, instances: instances.map((i) => i.view), count: instances.length, empty: instances.length === 0 };
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

/** Renders `template` with `view` (pure): `{{x}}` printable, `{{{x}}}` as stored. */
export function renderTemplate(template: string, view: TemplateView): string {
  return Mustache.render(template, view, {}, { escape: (value: unknown) => printable(String(value)) });
}

/** What the debounce knows: the first and last change not rendered yet, and whether one was a removal. */
export interface Pending {
  firstMs?: number;
  lastMs?: number;
  removal: boolean;
}

/**
 * When to render (pure): "now", a delay in ms, or "idle" (nothing pending).
 * A removal renders at once; without `wait` every change does; with it,
 * once nothing has changed for MIN, and at most MAX after the first change.
 */
export function whenToRender(pending: Pending, nowMs: number, wait: Wait | undefined): "now" | "idle" | number {
  if (pending.firstMs === undefined) return "idle";
  if (pending.removal || wait === undefined) return "now";
  const dueMs = Math.min(pending.lastMs! + wait.minMs, pending.firstMs + wait.maxMs);
  return nowMs >= dueMs ? "now" : dueMs - nowMs;
}

/** Whether a change of the listing from `before` to `after` (key to value) removed an instance. */
export function removesAny(before: Map<string, string>, after: Map<string, string>): boolean {
  for (const key of before.keys()) if (!after.has(key)) return true;
  return false;
}

/** What a render did. */
export type Outcome =
  | { kind: "unchanged" }
  | { kind: "replaced" }
  | { kind: "check failed"; output: string };

/** What rendering needs: where the output goes, and the commands. */
export interface RenderOptions {
  out: string;
  check?: string[];
  reload?: string[];
  /** The environment commands get: PATH, nothing of ours. */
  env: Record<string, string>;
}

/** Writes `text` to `path` atomically: a file beside it, synced, renamed over it, with `mode`. */
async function writeAtomically(path: string, text: string, mode: number): Promise<void> {
  const staged = stagedPath(path);
  const file = await open(staged, "w", mode);
  try {
    await file.writeFile(text);
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(staged, path);
}

let staging = 0;
/** A file beside `path`, hidden, named for this process. */
function stagedPath(path: string): string {
  return join(dirname(path), `.${basename(path)}.render-${process.pid}-${++staging}`);
}

/** Runs a --check or --reload command; returns its failure (one line of why, and its output), or undefined. */
async function run(argv: string[], env: Record<string, string>): Promise<string | undefined> {
  const result = await runCommand(argv, { env, timeoutMs: COMMAND_TIMEOUT_MS, stdoutMax: 4096 });
  if (result.notStarted !== undefined) return `cannot run ${argv[0]}: ${result.notStarted}`;
  const output = oneLine(`${new TextDecoder().decode(result.stdout)} ${result.stderr}`, 600);
  if (result.timedOut) return `no exit within ${COMMAND_TIMEOUT_MS}ms, killed; ${output}`;
  if (result.code !== 0) {
    return `${result.code !== null ? `exit ${result.code}` : `killed by ${result.signal}`}: ${output}`;
  }
  return undefined;
}

/** Puts `text` at the output if it differs, checked as RenderOptions says; leaves the previous file on a failure. */
export async function renderToFile(text: string, options: RenderOptions): Promise<Outcome> {
  const { out, check, env } = options;
  const previous = await readFile(out, "utf8").catch(() => undefined);
  if (previous === text) return { kind: "unchanged" };
  const mode = await stat(out).then((s) => s.mode & 0o7777, () => 0o644);
  if (check && check.includes(PATH_WORD)) {
    // staged: checked where it was written, moved into place only when it passes
    const staged = stagedPath(out);
    const file = await open(staged, "w", mode);
    try {
      await file.writeFile(text);
      await file.sync();
    } finally {
      await file.close();
    }
    const failure = await run(check.map((w) => (w === PATH_WORD ? staged : w)), env);
    if (failure) {
      await unlink(staged).catch(() => {});
      return { kind: "check failed", output: failure };
    }
    await rename(staged, out);
    return { kind: "replaced" };
  }
  await writeAtomically(out, text, mode);
  if (check) {
    // in place: a fragment is checked by the configuration that includes it
    const failure = await run(check, env);
    if (failure) {
      if (previous === undefined) await unlink(out).catch(() => {});
      else await writeAtomically(out, previous, mode);
      return { kind: "check failed", output: failure };
    }
  }
  return { kind: "replaced" };
}

/**
 * Why `argv[0]` cannot run, or undefined: a command with a "/" must be an
 * executable file; a bare name must be one in a folder of `path`.
 */
export function unrunnable(argv: string[], path: string): string | undefined {
  const name = argv[0];
  const candidates = name.includes("/") ? [name] : path.split(":").filter((d) => d !== "").map((d) => join(d, name));
  for (const candidate of candidates) {
    try {
      // an execute bit, rather than access(): deno asks --allow-sys=uid for that
      const info = statSync(candidate);
      if (info.isFile() && (info.mode & 0o111) !== 0) return undefined;
    } catch (err) {
      // deno without --allow-read for it: say so, rather than "no such file"
      if (
        err instanceof Error && /NotCapable|PermissionDenied|Requires read access/.test(`${err.name} ${err.message}`)
      ) {
        return `${candidate} cannot be looked at: add it to deno's --allow-read`;
      }
    }
  }
  return name.includes("/") ? "no such executable file" : `no executable ${name} in PATH`;
}

/** Reads the template file; throws with a one-line reason. */
export function readTemplate(path: string): string {
  return parseTemplate(readFileSync(path, "utf8"));
}

/** What the render loop needs. */
export interface RenderDeps {
  etcd: Etcd;
  log: Log;
  now(): number;
  sleep(ms: number, signal: AbortSignal): Promise<void>;
}

/** Renders, checks and reloads once; logs what happened. Returns whether it ended well (unchanged or replaced). */
export async function renderOnce(
  template: string,
  view: TemplateView,
  options: RenderOptions,
  log: Log,
): Promise<boolean> {
  const outcome = await renderToFile(renderTemplate(template, view), options);
  if (outcome.kind === "unchanged") {
    log("debug", "render unchanged", { out: options.out, instances: view.count });
    return true;
  }
  if (outcome.kind === "check failed") {
    log("err", "check failed", { out: options.out, instances: view.count, reason: outcome.output });
    return false;
  }
  log("notice", "rendered", { out: options.out, instances: view.count });
  if (!options.reload) return true;
  const failure = await run(options.reload, options.env);
  if (failure) {
    log("err", "reload failed", { out: options.out, reason: failure });
    return false;
  }
  log("info", "reloaded", { out: options.out });
  return true;
}

/** Follows the service and renders on every change (as --wait says) until `signal` aborts. */
export async function runRender(
  settings: { prefix: string; service: string; template: string; wait?: Wait; options: RenderOptions },
  deps: RenderDeps,
  signal: AbortSignal,
): Promise<void> {
  const { prefix, service, template, wait, options } = settings;
  const { log, now } = deps;
  let values = new Map<string, string>();
  let listed = false;
  const pending: Pending = { removal: false };
  let wake = () => {};
  const changed = (removal: boolean) => {
    pending.firstMs ??= now();
    pending.lastMs = now();
    pending.removal ||= removal;
    wake();
  };
  const following = follow(deps.etcd, servicePrefix(prefix, service), {
    listed(listing) {
      const fresh = new Map(listing.map((v) => [v.key, v.value]));
      // the first listing is rendered at once; a listing after a break, like any change
      const removal = !listed || removesAny(values, fresh);
      values = fresh;
      listed = true;
      changed(removal);
    },
    changed(event) {
      const removal = event.type === "delete" && values.has(event.key);
      if (event.type === "delete") values.delete(event.key);
      else values.set(event.key, event.value);
      changed(removal);
    },
    waiting(reason) {
      log("warning", "etcd unreachable", { reason: describeError(reason), out: "kept as it is" });
    },
    answered() {
      log("notice", "etcd answered");
    },
  }, signal);
  while (!signal.aborted) {
    const woken = new AbortController();
    wake = () => woken.abort();
    const when = listed ? whenToRender(pending, now(), wait) : "idle";
    if (when === "now") {
      const view = templateView(prefix, service, values);
      pending.firstMs = pending.lastMs = undefined;
      pending.removal = false;
      try {
        await renderOnce(template, view, options, log);
      } catch (err) {
        // a folder gone or unwritable: logged, and the next change tries again
        log("err", "render failed", { out: options.out, reason: describeError(err) });
      }
      continue;
    }
    await deps.sleep(when === "idle" ? 60_000 : when, AbortSignal.any([signal, woken.signal]));
  }
  await following;
}
