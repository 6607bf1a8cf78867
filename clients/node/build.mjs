// Builds one package of clients/node (run by its `prepack`, so `npm pack` always
// ships fresh output): TypeScript sources compiled twice with the repository's
// tsc, to dist/esm (ES modules) and dist/cjs (CommonJS), each with .d.ts.
//
// The stubs package compiles gen/ts/src (written by `make gen` only) together
// with its own src/; a barrel module is written beside each generated proto
// package folder (gen/aitrading/hub/v1.ts re-exports every file of
// gen/aitrading/hub/v1/), so a new proto file needs no hand edit here.
// The client package compiles against the stubs package's exports through a
// node_modules link in its staging folder, as an installed copy would.
import { execFileSync } from "node:child_process";
import {
  cpSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const here = path.dirname(new URL(import.meta.url).pathname);
const repo = path.resolve(here, "../..");
const pkgDir = process.cwd();
const pkg = JSON.parse(readFileSync(path.join(pkgDir, "package.json"), "utf8"));
const tsc = createRequire(path.join(repo, "package.json")).resolve("typescript/bin/tsc");
const STUBS = "@aitrading/central-hub-stubs";

/** Writes `<dir>.ts` re-exporting every *_pb.ts directly in `dir`, for each such dir. */
function writeBarrels(dir) {
  const entries = readdirSync(dir, { withFileTypes: true });
  const modules = entries.filter((e) => e.isFile() && e.name.endsWith("_pb.ts")).map((e) => e.name);
  if (modules.length > 0) {
    const lines = modules.sort().map((m) => `export * from "./${path.basename(dir)}/${m.replace(/\.ts$/, ".js")}";`);
    writeFileSync(`${dir}.ts`, `// Every message, enum and service of this proto package.\n${lines.join("\n")}\n`);
  }
  for (const e of entries) if (e.isDirectory()) writeBarrels(path.join(dir, e.name));
}

function stage(format) {
  const root = path.join(pkgDir, "build", format);
  rmSync(root, { recursive: true, force: true });
  mkdirSync(root, { recursive: true });
  cpSync(path.join(pkgDir, "src"), path.join(root, "src"), { recursive: true });
  if (pkg.name === STUBS) {
    cpSync(path.join(repo, "gen/ts/src"), path.join(root, "src/gen"), { recursive: true });
    writeBarrels(path.join(root, "src/gen"));
  } else {
    // Resolve the stubs package by its name and exports map, as a user's install would.
    const link = path.join(root, "node_modules", STUBS);
    mkdirSync(path.dirname(link), { recursive: true });
    symlinkSync(path.join(here, "stubs"), link, "dir");
  }
  writeFileSync(
    path.join(root, "package.json"),
    JSON.stringify({ type: format === "esm" ? "module" : "commonjs", private: true }),
  );
  writeFileSync(
    path.join(root, "tsconfig.json"),
    JSON.stringify(
      {
        compilerOptions: {
          target: "ES2022",
          lib: ["ES2022"],
          module: "NodeNext",
          moduleResolution: "NodeNext",
          types: ["node"],
          typeRoots: [path.join(repo, "node_modules/@types")],
          strict: true,
          declaration: true,
          // The ESM pass type-checks; the CJS pass compiles the same sources
          // again only for another module format, so it skips the check (half the time).
          noCheck: format === "cjs",
          skipLibCheck: true,
          rootDir: "src",
          outDir: path.join(pkgDir, "dist", format),
        },
        include: ["src/**/*.ts"],
      },
      null,
      2,
    ),
  );
  return root;
}

if (pkg.name !== STUBS && !existsSync(path.join(here, "stubs/dist/esm/index.d.ts"))) {
  execFileSync(process.execPath, [path.join(here, "build.mjs")], { cwd: path.join(here, "stubs"), stdio: "inherit" });
}
rmSync(path.join(pkgDir, "dist"), { recursive: true, force: true });
for (const format of ["esm", "cjs"]) {
  const root = stage(format);
  execFileSync(process.execPath, [tsc, "-p", path.join(root, "tsconfig.json")], { stdio: "inherit" });
  // Node reads a .js file as CommonJS or ESM by the nearest package.json's type.
  writeFileSync(
    path.join(pkgDir, "dist", format, "package.json"),
    JSON.stringify({ type: format === "esm" ? "module" : "commonjs" }) + "\n",
  );
}
rmSync(path.join(pkgDir, "build"), { recursive: true, force: true });
