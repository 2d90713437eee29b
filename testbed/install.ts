/**
 * Bundles and an installed host, as build.ts, install.sh and the units ship
 * them: the bundles built once per test module (`bundles`), a scratch root
 * installed from them (`installed`), and a unit's command line and
 * environment (`execStart`, `unitEnvironment`). Deno only.
 *
 * @module
 */
import { splitCommand } from "../lib/command.ts";
import { ROOT } from "./process.ts";

/** The bundles built fresh by build.ts into a folder of this test module, once; removed when it ends. */
let built: Promise<string> | undefined;
export function bundles(): Promise<string> {
  built ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "secretary-bundle-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", `${ROOT}build.ts`, "--out", dir, "--quiet"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) throw new Error(`build.ts failed:\n${new TextDecoder().decode(out.stderr)}`);
    return dir;
  })();
  return built;
}

/**
 * A scratch root as `install.sh --root ROOT --tls` leaves it, from bundles():
 * ROOT/opt/bin (deno, the bundles, the registry wrapper) and the units in
 * ROOT/etc/systemd/system. Once per test module; removed when it ends.
 */
let installedRoot: Promise<string> | undefined;
export function installed(): Promise<string> {
  installedRoot ??= (async () => {
    const root = await Deno.makeTempDir({ prefix: "secretary-root-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(root, { recursive: true }));
    const out = await new Deno.Command(`${ROOT}install.sh`, {
      args: ["--root", root, "--from", await bundles(), "--tls"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) throw new Error(`install.sh failed:\n${new TextDecoder().decode(out.stderr)}`);
    return root;
  })();
  return installedRoot;
}

/**
 * The words of a unit file's ExecStart= (the last one: a drop-in resets it
 * with an empty one first), with `%i`, `%H` and `${VAR}` expanded from
 * `vars`, and /opt/bin pointed at `dir`. `file` is a path, or a name under
 * units/. /opt/bin/deno becomes this deno unless `dir` holds an installed one.
 */
export async function execStart(file: string, vars: Record<string, string>, dir = "/opt/bin"): Promise<string[]> {
  const text = await Deno.readTextFile(file.startsWith("/") ? file : `${ROOT}units/${file}`);
  const line = [...text.matchAll(/^ExecStart=(.*)$/gm)].map((m) => m[1]).filter((l) => l !== "").at(-1)!;
  const installedDeno = await Deno.stat(`${dir}/deno`).then(() => true, () => false);
  // systemd's quoting, as far as the units use it ("…" around one argument), is a shell's
  return splitCommand(line).map((word) =>
    word
      .replace(/%([iH])/g, (_, c: string) => vars[`%${c}`])
      .replace(/\$\{(\w+)\}/g, (_, name: string) => vars[name] ?? "")
      .replace(/^\/opt\/bin\/deno$/, installedDeno ? `${dir}/deno` : Deno.execPath())
      .replace(/^\/opt\/bin\//, `${dir}/`)
  );
}

/** The `Environment=` assignments of a unit file, as a map. */
export async function unitEnvironment(file: string): Promise<Record<string, string>> {
  const text = await Deno.readTextFile(file.startsWith("/") ? file : `${ROOT}units/${file}`);
  const env: Record<string, string> = {};
  for (const m of text.matchAll(/^Environment=([A-Za-z_]\w*)=(.*)$/gm)) env[m[1]] = m[2];
  return env;
}
