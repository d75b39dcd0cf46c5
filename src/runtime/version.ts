// vmlet's version, from package.json, for `vmlet version` and CRI Version.
import fs from "node:fs";
import path from "node:path";

function readVersion(): string {
  // dist/src/runtime/version.js and src/runtime/version.ts both sit three levels down.
  const file = path.resolve(__dirname, "../../..", "package.json");
  const parsed = JSON.parse(fs.readFileSync(file, "utf8")) as { version?: unknown };
  return typeof parsed.version === "string" ? parsed.version : "0.0.0";
}

export const VMLET_VERSION = readVersion();
export const RUNTIME_NAME = "vmlet";
export const CRI_API_VERSION = "v1";
