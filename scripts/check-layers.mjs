#!/usr/bin/env node
// Fails when a module imports from a higher layer of src/: util < sys < cni-bridge, dhcp, dhcp6,
// guard < tapmanager < runtime < cli. Lower layers must not know the ones built on them.
// Plain Node (no build step), so CI can run it before tsc.
import fs from "node:fs";
import path from "node:path";

const RANK = {
  util: 0,
  sys: 1,
  "cni-bridge": 2,
  dhcp: 2,
  dhcp6: 2,
  guard: 2,
  tapmanager: 3,
  runtime: 4,
  cli: 5,
};
const src = path.resolve(path.dirname(new URL(import.meta.url).pathname), "..", "src");

function* sources(dir) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) yield* sources(full);
    else if (entry.name.endsWith(".ts")) yield full;
  }
}

const layerOf = (file) => path.relative(src, file).split(path.sep)[0];
const problems = [];
for (const file of sources(src)) {
  const from = layerOf(file);
  if (!(from in RANK)) problems.push(`${path.relative(src, file)}: folder ${from} has no layer`);
  const text = fs.readFileSync(file, "utf8");
  for (const [, spec] of text.matchAll(/\bfrom\s+"(\.{1,2}\/[^"]*)"/g)) {
    const to = layerOf(path.resolve(path.dirname(file), spec));
    if (RANK[to] > RANK[from]) {
      problems.push(`${path.relative(src, file)}: imports "${spec}": ${from} may not use ${to}`);
    }
  }
}
if (problems.length > 0) {
  console.error(`check-layers: ${problems.length} upward import(s):\n  ${problems.join("\n  ")}`);
  process.exit(1);
}
console.log("check-layers: no upward imports in src/");
