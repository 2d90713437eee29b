/**
 * `registry render`: a configuration file rendered from a service's live
 * instances with a Mustache template, for consumers that cannot change at run
 * time (nginx, Apache's mod_proxy_balancer, a DNS zone, a JSON list of peers).
 *
 * - The template and its view, and what a record's writer can and cannot put
 *   in the file: lib/template.ts (`{{x}}` inserts only a value that fits a
 *   token, else the instance is left out; `{{{x}}}` is raw). The atomic
 *   write: lib/atomic.ts (a symlink at the output keeps pointing where it
 *   did, its target is replaced; owner and mode kept).
 * - The output is written only when its text changes.
 * - `--check CMD` validates the new text before anything is reloaded. With a
 *   `{path}` word, the candidate is checked where it was staged, then moved
 *   into place (a whole config: `nginx -t -c {path}`); without one, the
 *   candidate goes in place, the command checks it there (a fragment that a
 *   main config includes: `nginx -t`), and the previous file is put back if
 *   it fails.
 * - No record holds the file hostage: when a check fails, the instances new
 *   or changed since the last good render are left out; if the rest passes,
 *   they are tried back in halves (at most CHECK_BUDGET checks) to find the
 *   ones that make it fail. Those are left out (`instance left out`, once per
 *   record value) until their record changes; the rest is rendered. A removal
 *   always lands, since a removed instance is in no candidate.
 * - `--reload CMD` runs after a replacement. A failed reload is retried with
 *   backoff (1 s doubling to 30 s, jittered) until one succeeds, even when
 *   nothing changes; a marker beside the file (`.<name>.reload-pending`) says
 *   that the file on disk was not reloaded yet, so a later run (`--once`
 *   too) reloads it. Commands run as exec checks do (lib/command.ts).
 * - `--wait MIN[:MAX]`: after a change, render once nothing has changed for
 *   MIN, at most MAX after the first. A change that drops an instance from
 *   the view (a delete, or a put that makes a record unreadable) is rendered
 *   at once.
 * - etcd unreachable is not "no instances": nothing is rendered from a failed
 *   read; a fresh listing after any break is rendered if it differs.
 * - Refused at start (checkRender): a template that is not a regular file of
 *   at most TEMPLATE_MAX_BYTES or does not parse, an `--out` that is a folder
 *   or has none, a command that cannot run (unrunnable).
 *
 * @module
 */
import { closeSync, constants, fstatSync, openSync, readSync, statSync } from "node:fs";
import { lstat, open, readFile, unlink } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { commit, keepOf, stage, targetOf, writeAtomically } from "./atomic.ts";
import { runCommand } from "./command.ts";
import { describeError, type Etcd } from "./etcd.ts";
import { parseDuration, UsageError } from "./cli.ts";
import { follow } from "./follow.ts";
import { Listing, type ListingChange } from "./listing.ts";
import type { Log } from "./log.ts";
import { servicePrefix } from "./record.ts";
import { type InstanceView, instanceView, parseTemplate, renderView, templateView, withInstances } from "./template.ts";
import { oneLine, quote } from "./text.ts";

// what bench/traffic.ts renders with, from here as before
export { renderTemplate, templateView } from "./template.ts";

/** How long a check or reload command may run before it is killed with its process group. */
export const COMMAND_TIMEOUT_MS = 30_000;

/** The word in a --check command that stands for the staged candidate's path. */
export const PATH_WORD = "{path}";

/** The largest template accepted. */
export const TEMPLATE_MAX_BYTES = 1024 * 1024;

/** How many checks one render may spend finding the instances that make a check fail. */
export const CHECK_BUDGET = 24;

/** A failed reload is retried after 1 s, doubling up to 30 s, each delay jittered down to half of it. */
export const RELOAD_RETRY = { firstMs: 1000, maxMs: 30_000 };

/** The debounce of `--wait`: quiet for `minMs`, at most `maxMs` after the first change. */
export interface Wait {
  minMs: number;
  maxMs: number;
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

/** Whether `value` at `key` is an instance the view shows (a key that fits and a readable record). */
export function isInstance(prefix: string, key: string, value: string | undefined): boolean {
  return value !== undefined && instanceView(prefix, key, value) !== undefined;
}

/** Whether a change of the listing drops an instance from the view: a delete, or a put that turns it into junk. */
export function dropsInstance(prefix: string, change: ListingChange): boolean {
  const after = change.kind === "put" ? change.value : undefined;
  return isInstance(prefix, change.key, change.previous) && !isInstance(prefix, change.key, after);
}

const WAIT_RANGE = { minMs: 1, maxMs: 3_600_000 };

/** Parses `--wait MIN[:MAX]`; MAX defaults to 4 x MIN (consul-template's convention) and is at least MIN. */
export function parseWait(text: string): Wait {
  const [min, max, ...more] = text.split(":");
  if (more.length > 0) throw new UsageError(`Cannot use --wait ${quote(text)}: expected MIN[:MAX] such as 2s:10s`);
  const minMs = parseDuration(min, "--wait", WAIT_RANGE);
  const maxMs = max === undefined ? Math.min(4 * minMs, WAIT_RANGE.maxMs) : parseDuration(max, "--wait", WAIT_RANGE);
  if (maxMs < minMs) throw new UsageError(`Cannot use --wait ${quote(text)}: expected MAX at least MIN`);
  return { minMs, maxMs };
}

/** The delay before reload retry number `attempt` (0 for the first), jittered by `random` in [0, 1) (pure). */
export function retryDelayMs(attempt: number, random: number): number {
  const full = Math.min(RELOAD_RETRY.maxMs, RELOAD_RETRY.firstMs * 2 ** Math.min(attempt, 30));
  return Math.round(full * (0.5 + random / 2));
}

/**
 * Finds which of `fresh` make a check fail, given that the rest passes and
 * all of them together fail: tries them back in halves (`passes` gets the
 * ones to add: those accepted so far and the group tried), a group that
 * passes is accepted, a single one that fails is a culprit. At most `budget`
 * checks; the groups not reached are `unchecked`.
 */
export async function findCulprits<T>(
  fresh: T[],
  passes: (adding: T[]) => Promise<boolean>,
  budget: number,
): Promise<{ accepted: T[]; culprits: T[]; unchecked: T[]; checks: number }> {
  const accepted: T[] = [];
  const culprits: T[] = [];
  const unchecked: T[] = [];
  let checks = 0;
  const search = async (group: T[], failing: boolean): Promise<void> => {
    if (group.length === 0) return;
    if (!failing) {
      if (checks >= budget) return void unchecked.push(...group);
      checks++;
      if (await passes([...accepted, ...group])) return void accepted.push(...group);
    }
    if (group.length === 1) return void culprits.push(group[0]);
    const half = Math.ceil(group.length / 2);
    const culpritsBefore = culprits.length + unchecked.length;
    await search(group.slice(0, half), false);
    // the first half all passed: the second must hold a culprit, no check needed to know
    await search(group.slice(half), culprits.length + unchecked.length === culpritsBefore);
  };
  await search(fresh, true);
  return { accepted, culprits, unchecked, checks };
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

/**
 * Checks `text` as RenderOptions says and leaves the disk as it was: the
 * check's failure, or undefined when it passes (or there is no check).
 */
export async function checkText(text: string, options: RenderOptions): Promise<string | undefined> {
  const { out, check, env } = options;
  if (!check) return undefined;
  const target = await targetOf(out);
  const keep = await keepOf(target);
  if (check.includes(PATH_WORD)) {
    const staged = await stage(target, text, keep);
    try {
      return await run(check.map((w) => (w === PATH_WORD ? staged : w)), env);
    } finally {
      await unlink(staged).catch(() => {});
    }
  }
  const previous = await readFile(target, "utf8").catch(() => undefined);
  await writeAtomically(target, text);
  try {
    return await run(check, env);
  } finally {
    if (previous === undefined) await unlink(target).catch(() => {});
    else await writeAtomically(target, previous);
  }
}

/** Puts `text` at the output if it differs, checked as RenderOptions says; leaves the previous file on a failure. */
export async function renderToFile(text: string, options: RenderOptions): Promise<Outcome> {
  const { out, check, env } = options;
  const target = await targetOf(out);
  const previous = await readFile(target, "utf8").catch(() => undefined);
  if (previous === text) return { kind: "unchanged" };
  const keep = await keepOf(target);
  if (check && check.includes(PATH_WORD)) {
    // staged: checked where it was written, moved into place only when it passes
    const staged = await stage(target, text, keep);
    const failure = await run(check.map((w) => (w === PATH_WORD ? staged : w)), env);
    if (failure) {
      await unlink(staged).catch(() => {});
      return { kind: "check failed", output: failure };
    }
    await commit(staged, target);
    return { kind: "replaced" };
  }
  await commit(await stage(target, text, keep), target);
  if (check) {
    // in place: a fragment is checked by the configuration that includes it
    const failure = await run(check, env);
    if (failure) {
      if (previous === undefined) await unlink(target).catch(() => {});
      else await writeAtomically(target, previous);
      return { kind: "check failed", output: failure };
    }
  }
  return { kind: "replaced" };
}

/** The marker beside `target` that says its text was not reloaded yet. */
export function reloadMarker(target: string): string {
  return join(dirname(target), `.${basename(target)}.reload-pending`);
}

/** Whether a reload of the output is owed: its marker is there. */
export async function reloadOwed(out: string): Promise<boolean> {
  return await lstat(reloadMarker(await targetOf(out))).then(() => true, () => false);
}

/** Sets (exclusively, never through a link) or clears the marker that a reload is owed. */
export async function markReloadOwed(out: string, owed: boolean): Promise<void> {
  const marker = reloadMarker(await targetOf(out));
  if (!owed) return await unlink(marker).catch(() => {});
  const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = constants;
  // there already (by us, or planted): a reload is owed either way
  await open(marker, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600).then((f) => f.close(), () => {});
}

/**
 * Why `argv[0]` cannot run, or undefined: a command with a "/" must be an
 * executable file; a bare name must be one in a folder of `path`. Folders
 * that cannot be looked at (deno's --allow-read) are skipped, and named only
 * when the command is found in none of the others.
 */
export function unrunnable(argv: string[], path: string): string | undefined {
  const name = argv[0];
  const bare = !name.includes("/");
  const candidates = bare ? path.split(":").filter((d) => d !== "").map((d) => join(d, name)) : [name];
  const unreadable: string[] = [];
  for (const candidate of candidates) {
    try {
      // an execute bit, rather than access(): deno asks --allow-sys=uid for that
      const info = statSync(candidate);
      if (info.isFile() && (info.mode & 0o111) !== 0) return undefined;
    } catch (err) {
      if (
        err instanceof Error && /NotCapable|PermissionDenied|Requires read access/.test(`${err.name} ${err.message}`)
      ) {
        unreadable.push(candidate);
      }
    }
  }
  if (unreadable.length > 0) {
    return bare
      ? `no executable ${name} in PATH; cannot look at ${
        unreadable.join(", ")
      }: give the command's full path, and add it to deno's --allow-read`
      : `${name} cannot be looked at: add it to deno's --allow-read`;
  }
  return bare ? `no executable ${name} in PATH` : "no such executable file";
}

/** Reads the template file: a regular file of at most TEMPLATE_MAX_BYTES; throws with a one-line reason. */
export function readTemplate(path: string): string {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK); // a FIFO must not block the start
  try {
    const info = fstatSync(fd);
    if (!info.isFile()) throw new TypeError("not a regular file");
    if (info.size > TEMPLATE_MAX_BYTES) throw new RangeError(`larger than ${TEMPLATE_MAX_BYTES} bytes`);
    const buffer = new Uint8Array(TEMPLATE_MAX_BYTES + 1);
    let length = 0;
    for (let n; length < buffer.length && (n = readSync(fd, buffer, length, buffer.length - length, null)) > 0;) {
      length += n;
    }
    if (length > TEMPLATE_MAX_BYTES) throw new RangeError(`larger than ${TEMPLATE_MAX_BYTES} bytes`);
    return parseTemplate(new TextDecoder("utf-8", { fatal: true }).decode(buffer.subarray(0, length)));
  } finally {
    closeSync(fd);
  }
}

/** What `registry render` is given at start, as plain options. */
export interface RenderStart {
  templatePath: string;
  out: string;
  check?: string[];
  reload?: string[];
  /** PATH, where bare command names are looked up. */
  path: string;
}

/**
 * What must hold before `render` writes anything: the template is a regular
 * file of sane size that parses; the output is not a folder and its folder
 * exists; each command can run. Returns the template, or the one-line refusal.
 */
export function checkRender(start: RenderStart): { template: string } | { refusal: string } {
  let template;
  try {
    template = readTemplate(start.templatePath);
  } catch (err) {
    const e = err as { code?: string; message: string };
    return { refusal: `Cannot use --template ${quote(start.templatePath)}: ${e.code ?? oneLine(e.message)}` };
  }
  const out = resolve(start.out);
  const isFolder = (() => {
    try {
      return statSync(out).isDirectory();
    } catch {
      return false;
    }
  })();
  if (isFolder) return { refusal: `Cannot use --out ${quote(start.out)}: a folder; expected a file to write` };
  const folder = dirname(out);
  try {
    if (!statSync(folder).isDirectory()) {
      return { refusal: `Cannot use --out ${quote(start.out)}: ${quote(folder)} is not a folder` };
    }
  } catch (err) {
    const code = (err as { code?: string }).code ?? "?";
    return { refusal: `Cannot use --out ${quote(start.out)}: no folder ${quote(folder)} (${code})` };
  }
  for (const [flag, argv] of [["--check", start.check], ["--reload", start.reload]] as const) {
    const why = argv && unrunnable(argv, start.path);
    if (why) return { refusal: `Cannot use ${flag} ${quote(argv.join(" "))}: ${why}` };
  }
  return { template };
}

/** What the renderer's effects need besides the file system: the log, and randomness for the retry's jitter. */
export interface RendererDeps {
  log: Log;
  random(): number;
}

/**
 * One output's renderer: renders a listing, finds and leaves out the
 * instances that make the check fail, reloads, and remembers what it needs
 * for the next time (the last good instances, those left out, the reloads
 * owed).
 */
export class Renderer {
  /** The instances (key to value) of the last text that passed: the ones a failed check does not suspect. */
  #good = new Map<string, string>();
  /** Instances left out by a failed check (key to value), until their value changes. */
  #quarantined = new Map<string, string>();
  /** The value of each instance already warned about, so a warning comes once per record value. */
  #warned = new Map<string, string>();
  #warnedFields = new Set<string>();
  /** Failed reloads in a row; the time the next retry is due. */
  reloadFailures = 0;
  reloadDueMs?: number;
  /** How many checks finding culprits has run in all (a failed render's log line says how many it took). */
  checks = 0;
  /** Whether the last render left instances unchecked (the check budget spent): render again soon. */
  unchecked = false;

  constructor(
    readonly prefix: string,
    readonly service: string,
    readonly template: string,
    readonly options: RenderOptions,
    readonly deps: RendererDeps,
  ) {}

  /** Renders `values` (key to value), checks, writes, and reloads when replaced or owed. Returns whether all went well. */
  async render(values: ReadonlyMap<string, string>, nowMs: number): Promise<boolean> {
    const { log } = this.deps;
    const out = this.options.out;
    for (const [key, value] of this.#quarantined) if (values.get(key) !== value) this.#quarantined.delete(key);
    for (const [key, value] of this.#warned) if (values.get(key) !== value) this.#warned.delete(key);
    const all = templateView(this.prefix, this.service, values);
    const view = withInstances(this.service, all.instances.filter((i) => !this.#quarantined.has(i.key)));
    const rendered = this.#rendered(view, values);
    this.unchecked = false;
    // the marker goes first: a crash between the replacement and the reload must leave a reload owed
    const owed = await this.reloadOwed();
    if (this.options.reload && !owed) await markReloadOwed(out, true);
    /** After a render that replaced nothing: reload if an earlier replacement is owed one, else clear the marker. */
    const settle = async (ok: boolean) => {
      if (owed) return (await this.reload(nowMs)) && ok;
      if (this.options.reload) await markReloadOwed(out, false);
      return ok;
    };
    let outcome = await renderToFile(rendered.text, this.options);
    let kept = rendered.view.instances;
    if (outcome.kind === "check failed") {
      const checksBefore = this.checks;
      const found = await this.#leaveOutCulprits(kept, values, outcome.output);
      const fields = { out, instances: kept.length, left_out: found && kept.length - found.length };
      log("err", "check failed", { ...fields, checks: this.checks - checksBefore, reason: outcome.output });
      if (!found) return await settle(false);
      kept = found;
      outcome = await renderToFile(this.#rendered(withInstances(this.service, kept), values).text, this.options);
      if (outcome.kind === "check failed") {
        log("err", "check failed", { out, instances: kept.length, reason: outcome.output });
        return await settle(false);
      }
    }
    this.#good = new Map(kept.map((i) => [i.key, values.get(i.key)!]));
    if (outcome.kind === "unchanged") {
      log("debug", "render unchanged", { out, instances: kept.length });
      return await settle(true);
    }
    log("notice", "rendered", { out, instances: kept.length });
    return await this.reload(nowMs);
  }

  /** Runs the reload; on a failure, keeps it owed and sets when to retry. Returns whether it succeeded. */
  async reload(nowMs: number): Promise<boolean> {
    const { out, reload, env } = this.options;
    if (!reload) return true;
    const failure = await run(reload, env);
    if (failure) {
      const delayMs = retryDelayMs(this.reloadFailures++, this.deps.random());
      this.reloadDueMs = nowMs + delayMs;
      this.deps.log("err", "reload failed", { out, reason: failure, retry_ms: delayMs });
      return false;
    }
    await markReloadOwed(out, false);
    this.reloadFailures = 0;
    this.reloadDueMs = undefined;
    this.deps.log("info", "reloaded", { out });
    return true;
  }

  /** Whether a reload is owed, by an earlier failure here or by the marker an earlier run left. */
  async reloadOwed(): Promise<boolean> {
    return this.reloadDueMs !== undefined || (this.options.reload !== undefined && await reloadOwed(this.options.out));
  }

  /** Renders a view, leaving out (and warning once about) instances with a value `{{x}}` would not insert. */
  #rendered(view: ReturnType<typeof withInstances>, values: ReadonlyMap<string, string>) {
    const rendered = renderView(this.template, view);
    for (const { key, field } of rendered.unfit) {
      const reason = `${field} does not fit a token (letters, digits, ._:/@+=-; 1 to 253 of them): not inserted`;
      if (key === undefined) {
        if (!this.#warnedFields.has(field)) this.deps.log("warning", "value not inserted", { field, reason });
        this.#warnedFields.add(field);
      } else this.#warn(key, values.get(key)!, reason);
    }
    return rendered;
  }

  #warn(key: string, value: string, reason: string): void {
    if (this.#warned.get(key) === value) return;
    this.#warned.set(key, value);
    this.deps.log("warning", "instance left out", { key, reason });
  }

  /**
   * After a failed check of `instances`: the instances to render without
   * those that make it fail, or undefined when it cannot be put on any (the
   * instances unchanged since the last good render fail too).
   */
  async #leaveOutCulprits(
    instances: InstanceView[],
    values: ReadonlyMap<string, string>,
    output: string,
  ): Promise<InstanceView[] | undefined> {
    const base = instances.filter((i) => this.#good.get(i.key) === values.get(i.key));
    const fresh = instances.filter((i) => this.#good.get(i.key) !== values.get(i.key));
    if (fresh.length === 0) return undefined;
    const passes = async (adding: InstanceView[]) => {
      const keys = new Set([...base, ...adding].map((i) => i.key));
      const view = withInstances(this.service, instances.filter((i) => keys.has(i.key)));
      return (await checkText(renderView(this.template, view).text, this.options)) === undefined;
    };
    this.checks++;
    if (!(await passes([]))) return undefined;
    const found = await findCulprits(fresh, passes, CHECK_BUDGET - 1);
    this.checks += found.checks;
    for (const culprit of found.culprits) {
      const value = values.get(culprit.key)!;
      this.#quarantined.set(culprit.key, value);
      this.#warn(culprit.key, value, `check failed with it: ${output}`);
    }
    for (const i of found.unchecked) {
      this.deps.log("notice", "instance left out", { key: i.key, reason: "not checked yet: the next render tries it" });
    }
    this.unchecked = found.unchecked.length > 0;
    const keep = new Set([...base, ...found.accepted].map((i) => i.key));
    return instances.filter((i) => keep.has(i.key));
  }
}

/** What the render loop needs. */
export interface RenderDeps {
  etcd: Etcd;
  log: Log;
  now(): number;
  sleep(ms: number, signal: AbortSignal): Promise<void>;
  random(): number;
}

/** Follows the service and renders on every change (as --wait says), retrying failed reloads, until `signal` aborts. */
export async function runRender(
  settings: { prefix: string; service: string; template: string; wait?: Wait; options: RenderOptions },
  deps: RenderDeps,
  signal: AbortSignal,
): Promise<void> {
  const { prefix, service, template, wait, options } = settings;
  const { log, now } = deps;
  const renderer = new Renderer(prefix, service, template, options, deps);
  const listing = new Listing();
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
    listed(values) {
      const changes = listing.replace(values);
      // the first listing is rendered at once; a listing after a break, like any change
      if (!listed || changes.length > 0) changed(!listed || changes.some((c) => dropsInstance(prefix, c)));
      listed = true;
    },
    changed(event) {
      const change = listing.apply(event);
      // what the view loses renders at once: a delete, or a put that makes a record unreadable
      if (change) changed(dropsInstance(prefix, change));
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
    try {
      if (when === "now") {
        pending.firstMs = pending.lastMs = undefined;
        pending.removal = false;
        await renderer.render(listing.values, now());
        if (renderer.unchecked) changed(false);
        continue;
      }
      if (renderer.reloadDueMs !== undefined && renderer.reloadDueMs <= now()) {
        await renderer.reload(now());
        continue;
      }
    } catch (err) {
      // a folder gone or unwritable: logged, and the next change (or reload retry) tries again
      log("err", "render failed", { out: options.out, reason: describeError(err) });
      if (renderer.reloadDueMs !== undefined) renderer.reloadDueMs = now() + RELOAD_RETRY.maxMs;
      continue;
    }
    const reloadIn = renderer.reloadDueMs === undefined ? Infinity : renderer.reloadDueMs - now();
    await deps.sleep(Math.min(when === "idle" ? 60_000 : when, reloadIn), AbortSignal.any([signal, woken.signal]));
  }
  await following;
}
