/**
 * A headless Chromium for `registry serve`'s page (tests/serve_test.ts,
 * bench/serve.ts), started and stopped by PID (`Chromium`). Deno only.
 *
 * @module
 */
import { READY_MS, Spawned } from "./process.ts";

/** Debian's Chromium, installed by ./run. */
export const CHROMIUM = "/usr/bin/chromium";

/**
 * A headless Chromium started here with a fresh profile, answering the
 * DevTools protocol on a port it picks on `host` (`endpoint`, for
 * playwright-core's `chromium.connectOverCDP`); stopped by PID, its profile
 * removed. Nothing is downloaded, nothing reaches the network on its own.
 */
export class Chromium {
  private constructor(readonly process: Spawned, readonly endpoint: string, readonly profile: string) {}

  get pid(): number {
    return this.process.pid;
  }

  /** Starts it, its DevTools port on `host` (tests: an address of their own, as every listener). */
  static async start(host = "127.0.0.1", timeoutMs = READY_MS): Promise<Chromium> {
    const profile = await Deno.makeTempDir({ prefix: "secretary-chromium-" });
    const process = new Spawned(CHROMIUM, [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-dev-shm-usage",
      `--user-data-dir=${profile}`,
      `--remote-debugging-address=${host}`,
      "--remote-debugging-port=0",
      "about:blank",
    ], { stdout: "null", keepStderr: 20_000 }); // its stderr read all along, or it blocks once the pipe is full
    try {
      const line = await process.waitForLog(/DevTools listening on ws:\/\/\S+/, timeoutMs);
      return new Chromium(process, /ws:\/\/\S+/.exec(line)![0], profile);
    } catch (err) {
      await process.stop("SIGKILL");
      await Deno.remove(profile, { recursive: true }).catch(() => {});
      throw err;
    }
  }

  /** Stops the browser (SIGTERM, then SIGKILL after 5 s) and removes its profile. */
  async stop(): Promise<void> {
    await this.process.stop("SIGTERM", 5000);
    await Deno.remove(this.profile, { recursive: true }).catch(() => {});
  }
}
