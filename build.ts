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
 * - etcd3 loads `proto/rpc.proto` from beside its code at run time, with
 *   `@grpc/proto-loader`. The build parses the `.proto` files once into a
 *   descriptor, and replaces that one call in etcd3's code with
 *   lib/client-definition.ts's `clientDefinition()` of the embedded
 *   descriptor: the client's half of what proto-loader makes, without the
 *   message and file descriptors only servers read (a third of a bundle's
 *   start). It checks first that every service and method comes out as
 *   proto-loader's `loadSync` makes it from the files, and that both encode
 *   and decode alike. If the call is not found exactly once, the build stops.
 * - Nothing in a bundle imports anything but Node's built-in modules.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { isBuiltin } from "node:module";
import { basename, relative, resolve } from "node:path";
import { parseArgs } from "node:util";
import { gzipSync } from "node:zlib";
import * as esbuild from "esbuild";
import protobuf from "protobufjs";
import { loadSync, type Options } from "@grpc/proto-loader";
import { clientDefinition } from "./lib/client-definition.ts";

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

/** etcd3's `require` of proto-loader: the bundle evaluates proto-loader no more (only grpc-js's unused parts ask for it). */
const LOADER_REQUIRE = 'const proto_loader_1 = require("@grpc/proto-loader");\n';

/**
 * Parses etcd3's `.proto` files into a protobufjs JSON descriptor and proves
 * that clientDefinition() makes from it every service and method
 * proto-loader's `loadSync` makes from the files: the same paths, streaming
 * flags and names, the same bytes for a request and the same object for an
 * answer.
 */
export function protoDescriptor(protoPath = `${ROOT}${RPC_PROTO}`): protobuf.INamespace {
  // keepCase as in etcd3's call: field names stay snake_case (create_revision, range_end)
  const descriptor = new protobuf.Root().loadSync(protoPath, { keepCase: true }).toJSON();
  // deno-lint-ignore no-explicit-any
  const fromFiles = loadSync(protoPath, LOAD_OPTIONS) as Record<string, any>;
  const ours = clientDefinition(descriptor, LOAD_OPTIONS as protobuf.IConversionOptions);
  const services = Object.keys(fromFiles).filter((name) => !("format" in fromFiles[name]));
  const fail = (what: string) => {
    throw new Error(`clientDefinition() of the descriptor made from ${protoPath} differs from loadSync's: ${what}`);
  };
  if (JSON.stringify(services.sort()) !== JSON.stringify(Object.keys(ours).sort())) fail("the services");
  for (const service of services) {
    const methods = Object.keys(fromFiles[service]);
    if (JSON.stringify(methods.sort()) !== JSON.stringify(Object.keys(ours[service]).sort())) fail(service);
    for (const name of methods) {
      const theirs = fromFiles[service][name];
      const mine = ours[service][name];
      for (const field of ["path", "requestStream", "responseStream", "originalName"] as const) {
        if (theirs[field] !== mine[field]) fail(`${service}.${name}.${field}`);
      }
    }
  }
  const range = { theirs: fromFiles["etcdserverpb.KV"].Range, mine: ours["etcdserverpb.KV"].Range };
  const request = { key: Buffer.from("/services/"), range_end: Buffer.from("/services0"), limit: 16, revision: "7" };
  const bytes = range.mine.requestSerialize(request);
  if (!Buffer.from(bytes).equals(range.theirs.requestSerialize(request))) fail("a RangeRequest's bytes");
  const answer = protobuf.Root.fromJSON(descriptor).lookupType("etcdserverpb.RangeResponse");
  const sample = answer.encode(answer.fromObject({
    header: { revision: "9007199254740993" },
    kvs: [{ key: Buffer.from("/services/a/1"), value: Buffer.from("{}"), lease: "7587883412870946562" }],
    more: true,
  })).finish();
  const decoded = [range.mine, range.theirs].map((m) => JSON.stringify(m.responseDeserialize(Buffer.from(sample))));
  if (decoded[0] !== decoded[1]) fail("a RangeResponse's object");
  return descriptor;
}

/**
 * Replaces etcd3's `loadSync` of the `.proto` file with clientDefinition() of
 * the embedded descriptor, and its `require` of proto-loader with nothing.
 */
export function embedProto(source: string, descriptor: protobuf.INamespace): string {
  const found = source.split(LOAD_CALL).length - 1;
  const required = source.split(LOADER_REQUIRE).length - 1;
  if (found !== 1 || required !== 1) {
    throw new Error(
      `expected etcd3's connection-pool.js to require proto-loader and call loadSync of rpc.proto exactly once ` +
        `in the known form, found ${required} and ${found}: etcd3 changed; update LOAD_CALL in build.ts after ` +
        "checking the new code",
    );
  }
  const options = "{ keepCase: true, longs: String, enums: String, defaults: true, oneofs: true }";
  const definition = JSON.stringify(`${ROOT}lib/client-definition.ts`);
  return source.replace(LOADER_REQUIRE, "").replace(
    LOAD_CALL,
    () => `require(${definition}).clientDefinition(${JSON.stringify(descriptor)}, ${options})`,
  );
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
