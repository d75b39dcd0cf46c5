// The spec's operations on one network configuration list: ADD chains the plugins with
// prevResult, DEL runs them in reverse, CHECK/STATUS/GC where the list's version has them.
import type { NetworkConfigList, PluginConfig } from "./config";
import {
  CniConfigError,
  type CniErrorContext,
  CniInvalidResultError,
  CniPluginNotFoundError,
} from "./errors";
import { type CniCommand, execPlugin, findPlugin, pluginExists } from "./exec";
import {
  type CniResult,
  convertResult,
  parseResultText,
  ResultFormatError,
  toWire,
} from "./result";
import { type RuntimeConfig, runtimeConfigFor } from "./runtime-config";
import { atLeast } from "./version";

/** What one attachment of a container to a network is called with. */
export interface AttachmentArgs {
  containerId: string;
  /** The netns path; empty on DEL when the netns is gone. */
  netns: string;
  ifname: string;
  /** CNI_ARGS. */
  args: string;
  capabilities: RuntimeConfig;
  /** "namespace/name", for errors. */
  pod: string;
}

export interface PluginRunner {
  binDirs: string[];
  timeoutMs: number;
  /** Told as each plugin's process has been started. */
  onSpawn?: () => void;
}

function context(
  command: string,
  list: NetworkConfigList,
  rt: AttachmentArgs | undefined,
  plugin?: PluginConfig,
): CniErrorContext {
  return { command, network: list.name, plugin: plugin?.type, pod: rt?.pod, ifname: rt?.ifname };
}

/** The plugin's stdin: its config with the list's name and version, and what we inject. */
export function pluginConfigJson(
  list: NetworkConfigList,
  plugin: PluginConfig,
  extra: { prevResult?: CniResult; capabilities?: RuntimeConfig; [key: string]: unknown },
): string {
  const { prevResult, capabilities, ...rest } = extra;
  const conf: Record<string, unknown> = {
    ...plugin.raw,
    name: list.name,
    cniVersion: list.cniVersion,
    ...rest,
  };
  delete conf.prevResult;
  delete conf.runtimeConfig;
  if (prevResult) conf.prevResult = toWire(prevResult, list.cniVersion);
  const runtimeConfig = capabilities && runtimeConfigFor(plugin.capabilities, capabilities);
  if (runtimeConfig) conf.runtimeConfig = runtimeConfig;
  return JSON.stringify(conf);
}

async function run(
  runner: PluginRunner,
  command: CniCommand,
  list: NetworkConfigList,
  plugin: PluginConfig,
  rt: AttachmentArgs | undefined,
  stdin: string,
  stdinAfter?: Promise<void>,
): Promise<string> {
  const ctx = context(command, list, rt, plugin);
  const file = findPlugin(plugin.type, runner.binDirs, ctx);
  const running = execPlugin(
    file,
    {
      command,
      containerId: rt?.containerId,
      netns: rt?.netns,
      ifname: rt?.ifname,
      args: rt?.args,
      stdin,
      ...(stdinAfter ? { stdinAfter } : {}),
    },
    runner.binDirs,
    runner.timeoutMs,
    ctx,
  );
  runner.onSpawn?.(); // execPlugin spawns before it returns
  return running;
}

const rolledBack = new WeakSet<object>();

/** True when `error` came from an ADD whose network was deleted again without error. */
export function wasRolledBack(error: unknown): boolean {
  return typeof error === "object" && error !== null && rolledBack.has(error);
}

/**
 * ADD: runs each plugin with the previous one's result as prevResult, and returns the
 * last result at the list's version. On failure it runs DEL for the whole list (with
 * the partial result) before rethrowing, so nothing stays allocated. With `recorded`,
 * the first plugin is started at once but given its config only once `recorded`
 * resolves (the caller's durable record of the attachment); if it rejects, no plugin
 * has acted, and the ADD fails with its error.
 */
export async function addNetworkList(
  runner: PluginRunner,
  list: NetworkConfigList,
  rt: AttachmentArgs,
  recorded?: Promise<void>,
): Promise<CniResult> {
  let prev: CniResult | undefined;
  let started = 0;
  let unrecorded: unknown;
  const gate = recorded?.catch((error: unknown) => {
    unrecorded = error;
    throw error;
  });
  gate?.catch(() => {}); // a first plugin that is not found never waits on it
  try {
    for (const plugin of list.plugins) {
      started++;
      const out = await run(
        runner,
        "ADD",
        list,
        plugin,
        rt,
        pluginConfigJson(list, plugin, { prevResult: prev, capabilities: rt.capabilities }),
        started === 1 ? gate : undefined,
      );
      prev = parsePluginResult(out, list, plugin, rt);
    }
  } catch (error) {
    try {
      // Plugins after the failed one never ran, nor did one that was not found or was
      // killed unread because the record failed: they hold nothing and may not exist.
      const unread = error instanceof CniPluginNotFoundError || error === unrecorded;
      const ran = unread ? started - 1 : started;
      await delNetworkList(runner, list, rt, prev, { pluginCount: ran });
      if (error instanceof Error) {
        error.message +=
          ran === 0 ? "; no plugin ran, nothing to roll back" : "; rolled back with DEL";
        rolledBack.add(error);
      }
    } catch (delError) {
      if (error instanceof Error)
        error.message += `; rollback failed: ${(delError as Error).message}`;
    }
    throw error;
  }
  return prev!;
}

function parsePluginResult(
  out: string,
  list: NetworkConfigList,
  plugin: PluginConfig,
  rt: AttachmentArgs,
): CniResult {
  try {
    if (out.trim() === "") throw new ResultFormatError("empty output");
    // A plugin may answer at another version; every later plugin expects the list's.
    return convertResult(parseResultText(out, list.cniVersion), list.cniVersion);
  } catch (error) {
    if (!(error instanceof ResultFormatError)) throw error;
    throw new CniInvalidResultError(context("ADD", list, rt, plugin), error.message, out, {
      cause: error,
    });
  }
}

export interface DelOptions {
  /** Only the first this many plugins (those that ran); all when absent. */
  pluginCount?: number;
  /**
   * Skip plugins that are not installed: right when nothing was recorded for this
   * attachment, since a plugin that cannot be found never ran for it and holds nothing.
   */
  skipMissing?: boolean;
}

/**
 * DEL: runs the plugins in reverse. prevResult goes along from 0.4.0 on, as libcni does.
 * Every plugin is run even when one fails, so each releases what it holds; the first
 * failure is then thrown.
 */
export async function delNetworkList(
  runner: PluginRunner,
  list: NetworkConfigList,
  rt: AttachmentArgs,
  prevResult: CniResult | undefined,
  options: DelOptions = {},
): Promise<void> {
  const prev = atLeast(list.cniVersion, "0.4.0") ? prevResult : undefined;
  let first: unknown;
  for (const plugin of list.plugins.slice(0, options.pluginCount).reverse()) {
    if (options.skipMissing && !pluginExists(plugin.type, runner.binDirs)) continue;
    try {
      await run(
        runner,
        "DEL",
        list,
        plugin,
        rt,
        pluginConfigJson(list, plugin, { prevResult: prev, capabilities: rt.capabilities }),
      );
    } catch (error) {
      first ??= error;
    }
  }
  if (first !== undefined) throw first;
}

/** CHECK: each plugin checks against the cached result; not run before 0.4.0 or when disabled. */
export async function checkNetworkList(
  runner: PluginRunner,
  list: NetworkConfigList,
  rt: AttachmentArgs,
  cached: CniResult,
): Promise<void> {
  if (!atLeast(list.cniVersion, "0.4.0")) {
    throw new CniConfigError(
      context("CHECK", list, rt),
      `cniVersion ${list.cniVersion} has no CHECK`,
    );
  }
  if (list.disableCheck) return;
  for (const plugin of list.plugins) {
    await run(
      runner,
      "CHECK",
      list,
      plugin,
      rt,
      pluginConfigJson(list, plugin, { prevResult: cached, capabilities: rt.capabilities }),
    );
  }
}

/** STATUS (1.1.0): resolves when every plugin is ready; older lists are taken as ready. */
export async function statusNetworkList(
  runner: PluginRunner,
  list: NetworkConfigList,
): Promise<void> {
  if (!atLeast(list.cniVersion, "1.1.0")) return;
  for (const plugin of list.plugins) {
    await run(runner, "STATUS", list, plugin, undefined, pluginConfigJson(list, plugin, {}));
  }
}

/** GC (1.1.0): tells each plugin which attachments are still valid. */
export async function gcNetworkList(
  runner: PluginRunner,
  list: NetworkConfigList,
  valid: { containerId: string; ifname: string }[],
): Promise<void> {
  if (!atLeast(list.cniVersion, "1.1.0") || list.disableGC) return;
  const attachments = valid.map((a) => ({ containerID: a.containerId, ifname: a.ifname }));
  for (const plugin of list.plugins) {
    await run(
      runner,
      "GC",
      list,
      plugin,
      undefined,
      pluginConfigJson(list, plugin, { "cni.dev/valid-attachments": attachments }),
    );
  }
}

export interface VersionInfo {
  cniVersion: string;
  supportedVersions: string[];
}

/** VERSION: which spec versions a plugin speaks. */
export async function pluginVersions(runner: PluginRunner, type: string): Promise<VersionInfo> {
  const ctx: CniErrorContext = { command: "VERSION", plugin: type };
  const file = findPlugin(type, runner.binDirs, ctx);
  const out = await execPlugin(
    file,
    { command: "VERSION", stdin: JSON.stringify({ cniVersion: "1.1.0" }) },
    runner.binDirs,
    runner.timeoutMs,
    ctx,
  );
  try {
    const v = JSON.parse(out) as Partial<VersionInfo>;
    if (typeof v.cniVersion !== "string" || !Array.isArray(v.supportedVersions)) {
      throw new Error("cniVersion or supportedVersions missing");
    }
    return { cniVersion: v.cniVersion, supportedVersions: v.supportedVersions.map(String) };
  } catch (error) {
    throw new CniInvalidResultError(ctx, (error as Error).message, out, { cause: error });
  }
}
