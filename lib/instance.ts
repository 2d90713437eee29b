/**
 * One instance's checks, as the sidekick and the agent both run them: the
 * pure health state machine (`step()`, `afterCheck()`), the check loop that
 * tells a registrar what the verdict wants, and `runInstance()`, which wires
 * the loop to the instance's check, maintenance file and held connection.
 *
 * @module
 */
import { statSync } from "node:fs";
import { type CheckResult, type CheckSpec, runCheck } from "./checks.ts";
import { ConnectionWatch, greetingFor } from "./connection-watch.ts";
import type { Effects, Registrar } from "./registrar.ts";
import { oneLine, quote } from "./text.ts";

/** What one instance is and how it is checked: the sidekick's flags less the etcd connection, prefix and TTL. */
export interface InstanceConfig {
  port: number;
  /** @default "apache" */
  service: string;
  ip: string;
  hostname: string;
  /** @default http GET / passing on 200-399 */
  check: CheckSpec;
  /** @default 2000 */
  intervalMs: number;
  /** @default 1000 */
  timeoutMs: number;
  /** @default 2 */
  rise: number;
  /** @default 2 */
  fall: number;
  meta: Record<string, string>;
  /** How long to wait after removing the record on SIGTERM (or detach) before going. @default 0 */
  drainMs: number;
  /** While this file exists, the instance is deregistered whatever its checks say. */
  maintenanceFile?: string;
  /** Hold an idle connection to the instance while healthy, and check at once when it closes. @default true */
  watchConnection: boolean;
}

/** The re-check interval after the watch connection closed, while checks fail other than refused (see afterCheck()). */
export const SUSPECT_RECHECK_MS = 100;

/** What the checks say so far: the settled verdict and how many results in a row disagree with it. */
export interface Health {
  healthy: boolean;
  streak: number;
}

/** A new instance counts as unhealthy until `rise` checks pass. */
export const INITIAL_HEALTH: Health = { healthy: false, streak: 0 };

/** Applies one check result; `changed` is set when the verdict flips. */
export function step(health: Health, passed: boolean, policy: { rise: number; fall: number }): {
  health: Health;
  changed: boolean;
} {
  if (passed === health.healthy) return { health: { healthy: passed, streak: 0 }, changed: false };
  const streak = health.streak + 1;
  if (streak >= (passed ? policy.rise : policy.fall)) return { health: { healthy: passed, streak: 0 }, changed: true };
  return { health: { healthy: health.healthy, streak }, changed: false };
}

/**
 * The time from one check's start to the next. While results disagree with
 * the verdict the next check comes sooner, so a dead instance goes in about
 * one interval while a single blip removes nothing.
 */
export function nextCheckDelayMs(health: Health, intervalMs: number): number {
  return health.streak > 0 ? fastIntervalMs(intervalMs) : intervalMs;
}

/** What the check loop carries from one check to the next: the verdict so far, and whether a death is suspected. */
export interface LoopState {
  health: Health;
  /** The watch connection closed (the kernel closes a dead process's sockets) and the verdict is not in yet. */
  suspect: boolean;
}

/**
 * After one check (pure): the new health, whether the verdict flipped, whether
 * a death is still suspected, and the time from this check's start to the
 * next. A suspicion ends when a check passes (the close was not a death) or
 * when the verdict is unhealthy. While it lasts, a refused check (the
 * connection refused, or reset before any answer: no blip, the kernel
 * answering for a process that is gone or going; CheckResult.refused) is
 * followed by the next at once, so `fall` refusals in a row take a
 * millisecond or two rather than fall - 1 waits; any other failure (a
 * timeout, a hung or blackholed instance, an HTTP error) waits
 * SUSPECT_RECHECK_MS, and without a suspicion the cadence is
 * nextCheckDelayMs(). `fall` counts checks either way: the close itself is
 * never counted.
 */
export function afterCheck(
  state: LoopState,
  result: Pick<CheckResult, "passed" | "refused">,
  policy: { rise: number; fall: number; intervalMs: number },
): LoopState & { changed: boolean; delayMs: number } {
  const { health, changed } = step(state.health, result.passed, policy);
  const suspect = state.suspect && !result.passed && health.healthy;
  const delayMs = !suspect ? nextCheckDelayMs(health, policy.intervalMs) : result.refused ? 0 : SUSPECT_RECHECK_MS;
  return { health, suspect, changed, delayMs };
}

/** The quick re-check interval: an eighth of the interval, from 50 to 500 ms. */
export function fastIntervalMs(intervalMs: number): number {
  return Math.min(500, Math.max(50, Math.round(intervalMs / 8)));
}

// ---------------------------------------------------------------------------
// The check loop

/** What the check loop needs besides the check: the registrar's effects, and whether maintenance is on. */
export interface LoopEffects extends Effects {
  /** The reason the instance is in maintenance (e.g. the file that says so), or undefined. */
  maintenance?(): string | undefined;
  /** Makes the connection watch, which calls `onLost` when its idle connection to the instance closes. */
  watch?(onLost: (reason: string) => void): Pick<ConnectionWatch, "arm" | "disarm">;
}

/**
 * Runs checks until `signal` aborts, telling `registrar` what the verdict
 * wants: registered while healthy and not in maintenance. Checks keep running
 * and logging during maintenance, so the verdict is current when it ends.
 *
 * While the instance is healthy the connection watch holds an idle
 * connection to it. When that closes, the next check runs at once, and while
 * checks then fail they come at once if refused, else every
 * SUSPECT_RECHECK_MS, until `fall` is reached or one passes (a close that was
 * not a death costs that one check): see afterCheck(). The registrar is told
 * before anything is logged. `first` is a result already in hand, used in
 * place of the first check; `initial` the verdict to start from, whose
 * record the registrar already wants if healthy.
 */
export async function runChecks(
  config: Pick<InstanceConfig, "intervalMs" | "rise" | "fall">,
  check: () => Promise<CheckResult>,
  registrar: Registrar,
  effects: LoopEffects,
  signal: AbortSignal,
  first?: CheckResult,
  initial: Health = INITIAL_HEALTH,
): Promise<void> {
  let health = initial;
  let lastReason = "";
  let maintenance: string | undefined;
  let wanted = initial.healthy; // an adopted healthy instance: its registrar already wants the record
  let suspect = false; // the watch connection closed: checks come quickly until the verdict is clear
  let wake = new AbortController();
  const watch = effects.watch?.((reason) => {
    suspect = true;
    wake.abort(); // before the log line: the check is what matters now
    effects.log("debug", "watch connection closed", { reason, next: "checking now" });
  });
  while (!signal.aborted) {
    const started = effects.now();
    wake = new AbortController();
    const result = first ?? await check();
    first = undefined;
    if (signal.aborted) break;
    const next = afterCheck({ health, suspect }, result, config);
    const { changed, delayMs } = next;
    health = next.health;
    suspect = next.suspect;
    if (result.passed) registrar.report(result.status);
    const nowMaintenance = effects.maintenance?.();
    const want = health.healthy && nowMaintenance === undefined;
    if (want !== wanted) {
      const reason = nowMaintenance ??
        (changed ? (health.healthy ? `${config.rise} checks passed` : result.reason) : "maintenance over");
      registrar.want(want, reason); // first: the registrar's write starts before any log line is written
    }
    if (result.reason !== lastReason && (!result.passed || lastReason !== "")) {
      effects.log(result.passed ? "info" : "warning", result.passed ? "check passed" : "check failed", {
        reason: result.reason,
      });
    }
    lastReason = result.reason;
    if (nowMaintenance !== maintenance) {
      effects.log("notice", nowMaintenance ? "maintenance started" : "maintenance ended", {
        reason: nowMaintenance ?? maintenance,
        healthy: health.healthy,
      });
    }
    maintenance = nowMaintenance;
    wanted = want;
    if (health.healthy && !suspect) watch?.arm();
    else if (!health.healthy) watch?.disarm();
    if (delayMs === 0) continue; // a refusal while a death is suspected: check again now, not after a timer
    const elapsed = effects.now() - started;
    await effects.sleep(Math.max(0, delayMs - elapsed), AbortSignal.any([signal, wake.signal]));
  }
  watch?.disarm();
}

/**
 * Whether the maintenance file exists. Errors other than "not there" (deno
 * without --allow-read for it, a directory that cannot be searched) throw:
 * a maintenance switch that silently reads as off is worse than none.
 */
export function fileExists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === "ENOENT" || code === "ENOTDIR") return false;
    throw err;
  }
}

/** The instance's check target, as runCheck() takes it. */
export function targetOf(cfg: InstanceConfig) {
  return { ip: cfg.ip, port: cfg.port, service: cfg.service, timeoutMs: cfg.timeoutMs };
}

/**
 * Runs one instance's checks until `signal` aborts (runChecks() with the
 * instance's own check, maintenance file and held connection). `first` is a
 * check result already in hand; `initial` the verdict to start from (an
 * agent adopting an instance that was healthy).
 */
export function runInstance(
  cfg: InstanceConfig,
  registrar: Registrar,
  effects: Effects,
  signal: AbortSignal,
  first?: CheckResult,
  initial?: Health,
): Promise<void> {
  const file = cfg.maintenanceFile;
  return runChecks(
    cfg,
    () => runCheck(cfg.check, targetOf(cfg)),
    registrar,
    {
      ...effects,
      maintenance: file ? () => (fileExists(file) ? `maintenance file ${file} exists` : undefined) : undefined,
      watch: cfg.watchConnection
        ? (onLost) => new ConnectionWatch(cfg.ip, cfg.port, cfg.intervalMs, onLost, greetingFor(cfg.check.kind))
        : undefined,
    },
    signal,
    first,
    initial,
  );
}

/**
 * What must hold before an instance's checks start: the maintenance file can
 * be looked for, and deno lets an exec check kill its command's process
 * group. (That the command can start at all is shown by the first check.)
 * Returns the one-line refusal, or undefined.
 */
export function preflight(cfg: InstanceConfig): string | undefined {
  if (cfg.maintenanceFile) {
    try {
      fileExists(cfg.maintenanceFile);
    } catch (err) {
      return `Cannot use --maintenance-file ${quote(cfg.maintenanceFile)}: ${oneLine((err as Error).message)}`;
    }
  }
  if (cfg.check.kind !== "exec") return undefined;
  const deno = (globalThis as { Deno?: typeof Deno }).Deno;
  if (deno && deno.permissions.querySync({ name: "run" }).state !== "granted") {
    return "Cannot use --check exec: expected deno's --allow-run without a list (the command's process group is killed as one)";
  }
  return undefined;
}
