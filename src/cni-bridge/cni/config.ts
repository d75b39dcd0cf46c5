// Network configuration: parsing and validating conflists and single confs, and finding
// the node's networks in a conf dir, the way libcni-based runtimes do.
import fs from "node:fs";
import path from "node:path";
import { CniConfigError } from "./errors";
import { atLeast, type CniVersion, compareVersions, isSupportedVersion } from "./version";

type Json = Record<string, unknown>;

export interface PluginConfig {
  /** The executable's file name. */
  type: string;
  /** Capabilities the plugin declares; only these reach it in runtimeConfig. */
  capabilities: Record<string, boolean>;
  /** The plugin's config object as written, before the runtime injects anything. */
  raw: Json;
}

export interface NetworkConfigList {
  name: string;
  /** The version every plugin of the list is run at. */
  cniVersion: CniVersion;
  disableCheck: boolean;
  disableGC: boolean;
  plugins: PluginConfig[];
  /** The file it came from, if any. */
  source?: string;
}

/** Network names, as the spec defines them. */
const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

/** File extensions that hold network configs, as libcni reads them. */
export const CONF_EXTENSIONS = [".conflist", ".conf", ".json"];

function isObject(x: unknown): x is Json {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

function flag(o: Json, key: string): boolean {
  const v = o[key];
  // Older configs write these as strings.
  return v === true || v === "true";
}

/** The version to run a list at: the newest of `cniVersions` we speak, else `cniVersion`. */
function chooseVersion(o: Json, fail: (m: string) => never): CniVersion {
  const many = o.cniVersions;
  if (Array.isArray(many)) {
    const ours = many.filter(isSupportedVersion).sort(compareVersions);
    if (ours.length > 0) return ours[ours.length - 1]!;
  }
  const v = o.cniVersion;
  if (typeof v !== "string" || v === "") fail("cniVersion is missing");
  if (!isSupportedVersion(v)) fail(`cniVersion ${JSON.stringify(v)} is not one of 0.3.0-1.1.0`);
  return v;
}

function parsePlugin(x: unknown, i: number, fail: (m: string) => never): PluginConfig {
  if (!isObject(x)) fail(`plugins[${i}] is not an object`);
  const type = x.type;
  if (typeof type !== "string" || type === "") fail(`plugins[${i}].type is missing`);
  if (type.includes("/") || type === "." || type === "..") {
    fail(`plugins[${i}].type ${JSON.stringify(type)} is not a file name`);
  }
  const caps: Record<string, boolean> = {};
  if (x.capabilities !== undefined) {
    if (!isObject(x.capabilities)) fail(`plugins[${i}].capabilities is not an object`);
    for (const [k, v] of Object.entries(x.capabilities)) if (v === true) caps[k] = true;
  }
  return { type, capabilities: caps, raw: x };
}

/** Validates a parsed conflist object. */
export function networkFromList(o: unknown, source?: string): NetworkConfigList {
  const where = source ?? "network config";
  const fail = (m: string): never => {
    throw new CniConfigError({ command: "load", network: where }, m);
  };
  if (!isObject(o)) fail("not a JSON object");
  const obj = o as Json;
  const name = obj.name;
  if (typeof name !== "string" || !NAME_RE.test(name)) {
    fail(`name ${JSON.stringify(name)} must match ${NAME_RE.source}`);
  }
  const failNamed = (m: string): never => {
    throw new CniConfigError({ command: "load", network: `${name} (${where})` }, m);
  };
  const cniVersion = chooseVersion(obj, failNamed);
  if (!Array.isArray(obj.plugins) || obj.plugins.length === 0) failNamed("plugins is empty");
  const plugins = (obj.plugins as unknown[]).map((p, i) => parsePlugin(p, i, failNamed));
  return {
    name: name as string,
    cniVersion,
    disableCheck: flag(obj, "disableCheck"),
    disableGC: atLeast(cniVersion, "1.1.0") && flag(obj, "disableGC"),
    plugins,
    source,
  };
}

/** Validates a single plugin config (a .conf), wrapped into a list of one. */
export function networkFromConf(o: unknown, source?: string): NetworkConfigList {
  if (!isObject(o)) {
    throw new CniConfigError(
      { command: "load", network: source ?? "network config" },
      "not a JSON object",
    );
  }
  return networkFromList({ name: o.name, cniVersion: o.cniVersion, plugins: [o] }, source);
}

/** Parses the text of a config file; `.conflist` is a list, other files a single conf. */
export function parseNetworkFile(text: string, file: string): NetworkConfigList {
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch (error) {
    throw new CniConfigError(
      { command: "load", network: file },
      `not JSON: ${(error as Error).message}`,
      { cause: error },
    );
  }
  // A .conf holding a list is read as a list, as CRI-O and containerd do.
  if (file.endsWith(".conflist") || (isObject(o) && Array.isArray(o.plugins))) {
    return networkFromList(o, file);
  }
  return networkFromConf(o, file);
}

export interface ConfDirState {
  /** Valid networks, in file order; the first is the default. */
  networks: NetworkConfigList[];
  /** Files that were skipped, with why. */
  invalid: { file: string; error: CniConfigError }[];
}

/** Reads every config file of `dir` in lexical order; a missing dir has no networks. */
export function loadConfDir(dir: string): ConfDirState {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return { networks: [], invalid: [] };
    throw error;
  }
  const state: ConfDirState = { networks: [], invalid: [] };
  for (const name of names.filter((n) => CONF_EXTENSIONS.includes(path.extname(n))).sort()) {
    const file = path.join(dir, name);
    let text: string;
    try {
      if (!fs.statSync(file).isFile()) continue;
      text = fs.readFileSync(file, "utf8");
    } catch {
      continue; // removed or unreadable between readdir and read: the watcher will reload
    }
    try {
      state.networks.push(parseNetworkFile(text, file));
    } catch (error) {
      if (!(error instanceof CniConfigError)) throw error;
      state.invalid.push({ file, error });
    }
  }
  return state;
}
