#!/usr/bin/env -S deno run --allow-all
/**
 * Builds the one-file bundles a host runs: `dist/secretary.mjs` and
 * `dist/registry.mjs`, each with its source map beside it.
 *
 * ```sh
 * node_modules/.bin/deno task bundle        # or: deno run --allow-all build.ts [--out DIR] [--quiet]
 * ```
 *
 * Each bundle is self-contained ESM JavaScript that runs with `deno run` and
 * with `node` (20 or newer) from a folder that holds nothing else: no
 * node_modules, no `.proto` files, nothing fetched at run time.
 *
 * The contract it keeps, checked on every build (the build fails loudly):
 * - etcd3 loads `proto/rpc.proto` from beside its code at run time. The build
 *   parses the `.proto` files once, checks that `@grpc/proto-loader`'s
 *   `fromJSON` makes exactly the package definition `loadSync` makes from the
 *   files, and replaces that one call in etcd3's code with `fromJSON` of the
 *   embedded descriptor. If the call is not found exactly once, the build stops.
 * - Nothing in a bundle imports anything but Node's built-in modules.
 *
 * @module
 */
import { isBuiltin } from "node:module";
import { basename, relative, resolve } from "node:path";
import { parseArgs } from "node:util";
import { gzipSync } from "node:zlib";
import * as esbuild from "esbuild";
import protobuf from "protobufjs";
import { fromJSON, loadSync, type Options } from "@grpc/proto-loader";

/** The repository root. */
const ROOT = new URL("./", import.meta.url).pathname;

/** The scripts a host runs; entry files never import each other. */
export const ENTRIES = ["secretary", "registry"] as const;

/** Where the bundles go unless `--out DIR` says otherwise. */
export const OUT_DIR = `${ROOT}dist`;

/** The etcd3 file that loads the `.proto` definitions at run time. */
const CONNECTION_POOL = /[\\/]node_modules[\\/]etcd3[\\/]lib[\\/]connection-pool\.js$/;

/** The `.proto` file etcd3 loads, relative to the repository root. */
const RPC_PROTO = "node_modules/etcd3/proto/rpc.proto";

/**
 * The exact call in etcd3 1.1.x's `lib/connection-pool.js`. Any change to it
 * (another file, other options) must fail the build, not ship a bundle that
 * looks for files that are not there.
 */
const LOAD_CALL = "(0, proto_loader_1.loadSync)(`${__dirname}/../proto/rpc.proto`, {\n" +
  "    keepCase: true,\n" +
  "    longs: String,\n" +
  "    enums: String,\n" +
  "    defaults: true,\n" +
  "    oneofs: true,\n" +
  "})";

/** The options of that call, as proto-loader takes them. */
const LOAD_OPTIONS: Options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

/**
 * Defines `require` for the CommonJS code inside an ESM bundle (grpc-js asks
 * for `http2`, `net`, …); both node and deno provide `createRequire`.
 */
const BANNER = 'import { createRequire as __secretaryCreateRequire } from "node:module";\n' +
  "const require = __secretaryCreateRequire(import.meta.url);";

/** One bundle's sizes in bytes. */
export interface BundleSize {
  name: string;
  plain: number;
  minified: number;
  gzip: number;
}

/**
 * Parses etcd3's `.proto` files into a protobufjs JSON descriptor and proves
 * that proto-loader makes the same package definition from it as from the
 * files (every service, method, message and file descriptor alike).
 */
export function protoDescriptor(protoPath = `${ROOT}${RPC_PROTO}`): protobuf.INamespace {
  // keepCase as in etcd3's call: field names stay snake_case (create_revision, range_end)
  const descriptor = new protobuf.Root().loadSync(protoPath, { keepCase: true }).toJSON();
  const fromFiles = JSON.stringify(loadSync(protoPath, LOAD_OPTIONS));
  const fromDescriptor = JSON.stringify(fromJSON(descriptor, LOAD_OPTIONS));
  if (fromFiles !== fromDescriptor) {
    throw new Error(`the descriptor made from ${protoPath} does not give the package definition loadSync gives`);
  }
  return descriptor;
}

/** Replaces etcd3's `loadSync` of the `.proto` file with `fromJSON` of the embedded descriptor. */
export function embedProto(source: string, descriptor: protobuf.INamespace): string {
  const found = source.split(LOAD_CALL).length - 1;
  if (found !== 1) {
    throw new Error(
      `expected etcd3's connection-pool.js to call loadSync of rpc.proto exactly once in the known form, found ${found}: ` +
        "etcd3 changed; update LOAD_CALL in build.ts after checking the new code",
    );
  }
  const options = "{ keepCase: true, longs: String, enums: String, defaults: true, oneofs: true }";
  return source.replace(LOAD_CALL, () => `(0, proto_loader_1.fromJSON)(${JSON.stringify(descriptor)}, ${options})`);
}

/** An esbuild plugin that embeds the descriptor; `hits` counts the files it rewrote. */
function protoPlugin(descriptor: protobuf.INamespace, hits: { count: number }): esbuild.Plugin {
  return {
    name: "etcd3-proto",
    setup(build) {
      build.onLoad({ filter: CONNECTION_POOL }, async (args) => {
        hits.count++;
        const source = await Deno.readTextFile(args.path);
        return { contents: embedProto(source, descriptor), loader: "js" };
      });
    },
  };
}

function options(
  descriptor: protobuf.INamespace,
  hits: { count: number },
  outDir: string,
  minify: boolean,
): esbuild.BuildOptions {
  return {
    absWorkingDir: ROOT,
    entryPoints: ENTRIES.map((name) => `${name}.ts`),
    outdir: outDir,
    outExtension: { ".js": ".mjs" }, // .mjs: ESM under node without a package.json beside it
    bundle: true,
    platform: "node",
    format: "esm",
    target: ["node20", "es2022"],
    minify,
    sourcemap: minify ? "linked" : false,
    sourcesContent: true,
    banner: { js: BANNER },
    // import.meta.main is undefined under node; in a bundle the entry file is always the main module
    define: { "import.meta.main": "true" },
    metafile: true,
    logLevel: "warning",
    write: false, // written only once the checks pass: a bad build never lands in the output folder
    plugins: [protoPlugin(descriptor, hits)],
  };
}

/** Fails unless every bundle rewrote etcd3's call and imports nothing but node's built-ins. */
function checkBundle(result: esbuild.BuildResult & { metafile: esbuild.Metafile }, hits: { count: number }): void {
  if (hits.count === 0) {
    throw new Error("etcd3's lib/connection-pool.js was never loaded: etcd3 changed shape; update build.ts");
  }
  for (const [file, output] of Object.entries(result.metafile.outputs)) {
    if (file.endsWith(".map")) continue;
    const pool = Object.keys(output.inputs).filter((input) => CONNECTION_POOL.test(`/${input}`));
    if (pool.length !== 1) throw new Error(`${file} does not hold etcd3's connection-pool.js (${pool.length} found)`);
    const proto = Object.keys(output.inputs).filter((input) => input.endsWith(".proto"));
    if (proto.length > 0) throw new Error(`${file} reads .proto files at run time: ${proto.join(", ")}`);
    const foreign = output.imports.filter((i) => !isBuiltin(i.path));
    if (foreign.length > 0) {
      throw new Error(`${file} imports at run time: ${foreign.map((i) => i.path).join(", ")}`);
    }
  }
}

/** Builds both bundles and their source maps into `outDir`; returns their sizes. */
export async function build(outDir = OUT_DIR): Promise<BundleSize[]> {
  const descriptor = protoDescriptor();
  try {
    const hits = { count: 0 };
    const minified = await esbuild.build(options(descriptor, hits, outDir, true)) as esbuild.BuildResult & {
      metafile: esbuild.Metafile;
    };
    checkBundle(minified, hits);
    // the plain build is measured only, never written: the sizes tell what minifying saves
    const plainHits = { count: 0 };
    const plain = await esbuild.build(options(descriptor, plainHits, outDir, false)) as esbuild.BuildResult & {
      metafile: esbuild.Metafile;
    };
    checkBundle(plain, plainHits);
    const plainBytes = new Map((plain.outputFiles ?? []).map((f) => [basename(f.path), f.contents.length]));
    await Deno.mkdir(outDir, { recursive: true });
    const sizes: BundleSize[] = [];
    for (const file of minified.outputFiles ?? []) {
      const name = basename(file.path);
      const entry = ENTRIES.find((e) => name === `${e}.mjs`);
      const bytes = entry ? new TextEncoder().encode(replaceHashbang(file.text, entry)) : file.contents;
      // a new file renamed into place: a host copying the old one never reads half of the new one
      await Deno.writeFile(`${file.path}.tmp`, bytes);
      await Deno.chmod(`${file.path}.tmp`, 0o644);
      await Deno.rename(`${file.path}.tmp`, file.path);
      if (entry) {
        sizes.push({
          name,
          plain: plainBytes.get(name) ?? 0,
          minified: bytes.length,
          gzip: gzipSync(bytes, { level: 9 }).length,
        });
      }
    }
    return sizes;
  } finally {
    await esbuild.stop();
  }
}

/**
 * esbuild keeps the entry file's `#!` line, whose flags are for running from
 * source. The bundle is run as `deno run <flags> FILE` or `node FILE`, so that
 * line becomes a comment; one line for one, so the source map stays true.
 */
function replaceHashbang(text: string, name: string): string {
  if (!text.startsWith("#!")) return text;
  const comment =
    `// ${name}: run with \`deno run <permissions> ${name}.mjs\` or \`node ${name}.mjs\` (docs/install.md)`;
  return comment + text.slice(text.indexOf("\n"));
}

function kib(bytes: number): string {
  return `${(bytes / 1024).toFixed(1)} KiB`;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { out: { type: "string", default: OUT_DIR }, quiet: { type: "boolean", default: false } },
  });
  try {
    const outDir = resolve(values.out);
    const sizes = await build(outDir);
    if (!values.quiet) {
      for (const s of sizes) {
        const path = relative(Deno.cwd(), `${outDir}/${s.name}`);
        console.log(`${path}  plain ${kib(s.plain)}  minified ${kib(s.minified)}  gzip ${kib(s.gzip)}  (+ .map)`);
      }
    }
  } catch (err) {
    console.error(`build: ${err instanceof Error ? err.message : String(err)}`);
    Deno.exit(1);
  }
}
