// The CNI client: a pod's networks added, checked and deleted as one, with the node's
// network configs read from a watched conf dir and every attachment recorded on disk.
// Over 400 lines: ADD, CHECK, DEL and GC share the attachment bookkeeping, and each one's
// undo path must be read against the others.
import fs from "node:fs";
import { type CacheEntry, ResultCache } from "./cache";
import { type ConfDirState, loadConfDir, type NetworkConfigList, networkFromList } from "./config";
import { CniConfigError, CniError } from "./errors";
import {
  type AttachmentArgs,
  addNetworkList,
  checkNetworkList,
  delNetworkList,
  gcNetworkList,
  type PluginRunner,
  pluginVersions,
  statusNetworkList,
  type VersionInfo,
  wasRolledBack,
} from "./network";
import { type CniResult, convertResult, parseResult, toWire } from "./result";
import type { RuntimeConfig } from "./runtime-config";

export interface PodRef {
  namespace: string;
  name: string;
  uid: string;
  /** The sandbox id: CNI_CONTAINERID and K8S_POD_INFRA_CONTAINER_ID. */
  sandboxId: string;
}

export interface CniClientOptions {
  /** Where the node's network configs are, e.g. /etc/cni/net.d. */
  confDir: string;
  /** Where plugin executables are looked for, in order, e.g. /opt/cni/bin, /usr/lib/cni. */
  binDirs: string[];
  /** Where attachments are recorded, e.g. /var/lib/vmlet/cni. */
  cacheDir: string;
  /** How long one plugin may run before it is killed. */
  timeoutMs?: number;
}

/** How long a STATUS answer stands before status() asks the plugins again. */
const PLUGIN_STATUS_TTL_MS = 5_000;

export interface NetworkStatus {
  ready: boolean;
  reason?: string;
  message?: string;
}

/** One network attached to the pod. */
export interface PodAttachment {
  network: string;
  ifname: string;
  result: CniResult;
}

export interface PodNetworkOptions {
  /** Network names, attached as eth0, net1, net2, ...; the default network if absent. */
  networks?: string[];
  /** Capability args; each plugin gets those it declares. */
  capabilities?: RuntimeConfig;
  /**
   * Told as each plugin's process starts (ADD only): the caller's own work can overlap
   * the plugins' time from then on without delaying their start.
   */
  onPluginStart?: () => void;
}

const DEFAULT_TIMEOUT_MS = 60_000;
/** How often a missing conf dir is looked for, until it can be watched. */
const CONF_DIR_RETRY_MS = 1000;
/** Container ids as libcni validates them; they also name a cache dir. */
const CONTAINER_ID_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

export function ifnameFor(index: number): string {
  return index === 0 ? "eth0" : `net${index}`;
}

/** CNI_ARGS as kubelet-era runtimes pass them. */
export function kubernetesCniArgs(pod: PodRef): string {
  return [
    "IgnoreUnknown=1",
    `K8S_POD_NAMESPACE=${pod.namespace}`,
    `K8S_POD_NAME=${pod.name}`,
    `K8S_POD_INFRA_CONTAINER_ID=${pod.sandboxId}`,
    `K8S_POD_UID=${pod.uid}`,
  ].join(";");
}

function podName(pod: PodRef): string {
  return `${pod.namespace}/${pod.name}`;
}

/** The conflist object a NetworkConfigList came from, for the cache. */
function listJson(list: NetworkConfigList): Record<string, unknown> {
  return {
    name: list.name,
    cniVersion: list.cniVersion,
    disableCheck: list.disableCheck,
    disableGC: list.disableGC,
    plugins: list.plugins.map((p) => p.raw),
  };
}

export class CniClient {
  private readonly runner: PluginRunner;
  private readonly cache: ResultCache;
  private readonly confDir: string;
  private state: ConfDirState = { networks: [], invalid: [] };
  private watcher: fs.FSWatcher | undefined;
  private retry: NodeJS.Timeout | undefined;
  private closed = false;
  /** The default network's last STATUS answer; see status(). */
  private pluginHealth: {
    checkedAt: number;
    /** The config generation it answered for: a reloaded config is asked anew. */
    generation: number;
    error?: string;
    inFlight?: Promise<void>;
  } = { checkedAt: 0, generation: -1 };
  private generation = 0;

  constructor(options: CniClientOptions) {
    this.confDir = options.confDir;
    this.runner = {
      binDirs: [...options.binDirs],
      timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    };
    this.cache = new ResultCache(options.cacheDir);
    this.watch();
  }

  /**
   * Ready once the conf dir holds a valid network whose plugins, at 1.1.0, answer STATUS;
   * the runtime reports this to kubelet. kubelet polls every few seconds and must not
   * wait on a plugin, so STATUS is asked in the background and its answer kept a while.
   */
  status(): NetworkStatus {
    const network = this.state.networks[0];
    if (network) {
      this.refreshPluginStatus(network);
      const error = this.pluginHealth.error;
      return error
        ? { ready: false, reason: "NetworkPluginNotReady", message: error }
        : { ready: true };
    }
    const invalid = this.state.invalid.map((i) => i.error.message);
    return {
      ready: false,
      reason: "NetworkPluginNotReady",
      message: `cni config uninitialized: no valid network config in ${this.confDir}${
        invalid.length > 0 ? ` (${invalid.join("; ")})` : ""
      }`,
    };
  }

  /** The network of the lexically first valid config file. */
  defaultNetwork(): NetworkConfigList | undefined {
    return this.state.networks[0];
  }

  /** A network by name; the first file wins when two name the same network. */
  network(name: string): NetworkConfigList | undefined {
    return this.state.networks.find((n) => n.name === name);
  }

  /**
   * ADD of each network in order (eth0, net1, ...). Each attachment is recorded before
   * its ADD and completed after; on failure, what was added is deleted again.
   */
  async addPod(
    pod: PodRef,
    netnsPath: string,
    opts: PodNetworkOptions = {},
  ): Promise<PodAttachment[]> {
    const lists = this.resolveNetworks(pod, "ADD", opts.networks);
    const runner = opts.onPluginStart
      ? { ...this.runner, onSpawn: opts.onPluginStart }
      : this.runner;
    const added: PodAttachment[] = [];
    try {
      for (const [i, list] of lists.entries()) {
        const rt = this.attachmentArgs(pod, netnsPath, ifnameFor(i), opts.capabilities);
        const entry = {
          network: list.name,
          containerId: pod.sandboxId,
          ifname: rt.ifname,
          netns: netnsPath,
          cniArgs: rt.args,
          capabilities: rt.capabilities,
          config: listJson(list),
        };
        // The record is made durable while the first plugin starts: the plugin is given
        // its config, and so acts, only once the record is on disk.
        const recorded = this.cache.put(entry).catch((error: Error) => {
          throw new CniError(
            { command: "ADD", pod: podName(pod), network: list.name, ifname: rt.ifname },
            `record the attachment in the CNI cache before ADD: ${error.message}`,
            { cause: error },
          );
        });
        // addNetworkList rolls its own network back; the record goes once that worked.
        let result: CniResult;
        try {
          result = await addNetworkList(runner, list, rt, recorded);
        } catch (error) {
          // A first plugin that is not installed never waited on the record.
          await recorded.catch(() => {});
          if (wasRolledBack(error)) {
            await this.cache.remove(entry);
          }
          throw error;
        }
        // Counted as added before the record is completed, so a failed write is undone too.
        added.push({ network: list.name, ifname: rt.ifname, result });
        this.cache.putStep({ ...entry, result: toWire(result, list.cniVersion) });
      }
    } catch (error) {
      const undone = await this.undo(pod, netnsPath, added);
      if (error instanceof Error && added.length > 0) error.message += `; ${undone}`;
      throw error;
    }
    return added;
  }

  /** CHECK of every network the pod was added to (from the cache). */
  async checkPod(pod: PodRef, netnsPath: string): Promise<void> {
    const entries = await this.cache.list(this.validContainerId(pod, "CHECK"));
    if (entries.length === 0) {
      throw new CniError({ command: "CHECK", pod: podName(pod) }, "no recorded attachment");
    }
    for (const entry of entries) {
      const list = this.cachedList(entry, pod, "CHECK");
      const rt = this.attachmentArgs(pod, netnsPath, entry.ifname, entry.capabilities);
      if (!entry.result) {
        throw new CniError(
          { command: "CHECK", pod: podName(pod), network: list.name, ifname: entry.ifname },
          "ADD did not complete",
        );
      }
      await checkNetworkList(this.runner, list, rt, this.cachedResult(entry, list));
    }
  }

  /**
   * DEL of every network the pod has, in reverse order, with the recorded config and
   * result; without a record, with the current config of `opts.networks` (or the default
   * network). A netns that is gone is passed as empty. Deleting twice succeeds.
   */
  async delPod(
    pod: PodRef,
    netnsPath: string | undefined,
    opts: { networks?: string[] } = {},
  ): Promise<void> {
    const containerId = this.validContainerId(pod, "DEL");
    const entries = await this.cache.list(containerId);
    const targets: { list: NetworkConfigList; ifname: string; entry?: CacheEntry }[] = [];
    if (opts.networks || entries.length === 0) {
      const names = opts.networks ?? (this.defaultNetwork() ? [this.defaultNetwork()!.name] : []);
      for (const [i, name] of names.entries()) {
        const ifname = ifnameFor(i);
        const entry = entries.find((e) => e.network === name && e.ifname === ifname);
        const list = entry ? this.cachedList(entry, pod, "DEL") : this.network(name);
        if (!list) {
          throw new CniConfigError(
            { command: "DEL", pod: podName(pod), network: name },
            "unknown network and no record of it",
          );
        }
        targets.push({ list, ifname, entry });
      }
    } else {
      for (const entry of entries) {
        targets.push({ list: this.cachedList(entry, pod, "DEL"), ifname: entry.ifname, entry });
      }
    }
    let first: unknown;
    for (const { list, ifname, entry } of targets.reverse()) {
      try {
        await this.delOne(pod, netnsPath ?? entry?.netns, list, ifname, entry);
      } catch (error) {
        first ??= error;
      }
    }
    if (first !== undefined) throw first;
  }

  /** status(), after a STATUS asked now (not a kept answer). */
  async checkStatus(): Promise<NetworkStatus> {
    await this.pluginHealth.inFlight;
    this.pluginHealth.checkedAt = 0;
    const network = this.state.networks[0];
    if (network) this.refreshPluginStatus(network);
    await this.pluginHealth.inFlight;
    return this.status();
  }

  private refreshPluginStatus(network: NetworkConfigList): void {
    const health = this.pluginHealth;
    const fresh =
      health.generation === this.generation && Date.now() - health.checkedAt < PLUGIN_STATUS_TTL_MS;
    if (health.inFlight || fresh) return;
    const generation = this.generation;
    health.inFlight = statusNetworkList(this.runner, network).then(
      () => {
        this.pluginHealth = { checkedAt: Date.now(), generation };
      },
      (error: unknown) => {
        const message = `STATUS: ${(error as Error).message}`;
        this.pluginHealth = { checkedAt: Date.now(), generation, error: message };
      },
    );
  }

  /** STATUS of every loaded network that has it (1.1.0); rejects with the first not ready. */
  async pluginStatus(): Promise<void> {
    for (const list of this.state.networks) await statusNetworkList(this.runner, list);
  }

  /**
   * Garbage collection: attachments recorded for sandboxes not in `validSandboxIds` are
   * deleted, then each 1.1.0 network's plugins get GC with the attachments still valid.
   * `pluginGc: false` when another runtime attaches pods to the same networks (vmlet
   * fronting containerd): a plugin's GC would free every attachment vmlet did not list.
   */
  async gc(validSandboxIds: string[], options: { pluginGc?: boolean } = {}): Promise<void> {
    const valid = new Set(validSandboxIds);
    const kept: CacheEntry[] = [];
    let first: unknown;
    for (const containerId of await this.cache.containers()) {
      for (const entry of await this.cache.list(containerId)) {
        if (valid.has(containerId)) {
          kept.push(entry);
          continue;
        }
        const pod = podFromArgs(entry);
        try {
          await this.delOne(
            pod,
            entry.netns,
            this.cachedList(entry, pod, "GC"),
            entry.ifname,
            entry,
          );
        } catch (error) {
          first ??= error;
        }
      }
    }
    for (const list of options.pluginGc === false ? [] : this.state.networks) {
      const attachments = kept
        .filter((e) => e.network === list.name)
        .map((e) => ({ containerId: e.containerId, ifname: e.ifname }));
      try {
        await gcNetworkList(this.runner, list, attachments);
      } catch (error) {
        first ??= error;
      }
    }
    if (first !== undefined) throw first;
  }

  /** VERSION of a plugin in the plugin dirs. */
  versionOf(pluginType: string): Promise<VersionInfo> {
    return pluginVersions(this.runner, pluginType);
  }

  /** Stops watching the conf dir. */
  close(): void {
    this.closed = true;
    this.watcher?.close();
    this.watcher = undefined;
    if (this.retry) clearTimeout(this.retry);
    this.retry = undefined;
  }

  private async delOne(
    pod: PodRef,
    netnsPath: string | undefined,
    list: NetworkConfigList,
    ifname: string,
    entry: CacheEntry | undefined,
  ): Promise<void> {
    // Plugins clean up what they can when CNI_NETNS is empty; a stale path would fail them.
    const netns = netnsPath && fs.existsSync(netnsPath) ? netnsPath : "";
    const rt = this.attachmentArgs(pod, netns, ifname, entry?.capabilities);
    const prev = entry?.result ? this.cachedResult(entry, list) : undefined;
    // Without a completed ADD on record (none ran, it was rolled back, or it was cut
    // short), a plugin that is not installed never ran and holds nothing; failing on it
    // would keep the pod's netns forever.
    await delNetworkList(this.runner, list, rt, prev, { skipMissing: !entry?.result });
    await this.cache.remove({ network: list.name, containerId: pod.sandboxId, ifname });
  }

  /** DEL of what addPod already added, newest first; says what happened, for the error. */
  private async undo(pod: PodRef, netnsPath: string, added: PodAttachment[]): Promise<string> {
    const failed: string[] = [];
    for (const a of [...added].reverse()) {
      const entry = await this.cache.get({
        network: a.network,
        containerId: pod.sandboxId,
        ifname: a.ifname,
      });
      const list = entry ? this.cachedList(entry, pod, "DEL") : this.network(a.network);
      try {
        if (!list) throw new Error("config gone");
        // The record may still be the one made before ADD: the result is at hand.
        const withResult = entry && {
          ...entry,
          result: entry.result ?? toWire(a.result, list.cniVersion),
        };
        await this.delOne(pod, netnsPath, list, a.ifname, withResult);
      } catch (error) {
        failed.push(`${a.network} (${a.ifname}): ${(error as Error).message}`);
      }
    }
    const names = added.map((a) => `${a.network} (${a.ifname})`).join(", ");
    return failed.length === 0
      ? `deleted ${names} again`
      : `deleting ${names} again failed: ${failed.join("; ")}`;
  }

  private resolveNetworks(pod: PodRef, command: string, names?: string[]): NetworkConfigList[] {
    this.validContainerId(pod, command);
    if (!names) {
      const list = this.defaultNetwork();
      if (!list) {
        throw new CniConfigError(
          { command, pod: podName(pod) },
          this.status().message ?? "not ready",
        );
      }
      return [list];
    }
    if (names.length === 0) {
      throw new CniConfigError({ command, pod: podName(pod) }, "empty list of networks");
    }
    return names.map((name) => {
      const list = this.network(name);
      if (!list) {
        throw new CniConfigError(
          { command, pod: podName(pod), network: name },
          `no config in ${this.confDir}`,
        );
      }
      return list;
    });
  }

  private validContainerId(pod: PodRef, command: string): string {
    if (!CONTAINER_ID_RE.test(pod.sandboxId)) {
      throw new CniConfigError(
        { command, pod: podName(pod) },
        `sandbox id ${JSON.stringify(pod.sandboxId)} must match ${CONTAINER_ID_RE.source}`,
      );
    }
    return pod.sandboxId;
  }

  private attachmentArgs(
    pod: PodRef,
    netns: string,
    ifname: string,
    capabilities: RuntimeConfig = {},
  ): AttachmentArgs {
    return {
      containerId: pod.sandboxId,
      netns,
      ifname,
      args: kubernetesCniArgs(pod),
      capabilities,
      pod: podName(pod),
    };
  }

  private cachedList(entry: CacheEntry, pod: PodRef, command: string): NetworkConfigList {
    try {
      return networkFromList(entry.config, `cache of ${entry.network}`);
    } catch (error) {
      throw new CniConfigError(
        { command, pod: podName(pod), network: entry.network, ifname: entry.ifname },
        `recorded config: ${(error as Error).message}`,
        { cause: error },
      );
    }
  }

  private cachedResult(entry: CacheEntry, list: NetworkConfigList): CniResult {
    return convertResult(parseResult(entry.result), list.cniVersion);
  }

  /** Watches the conf dir; while it does not exist, looks for it every second. */
  private watch(): void {
    if (this.closed) return;
    try {
      this.watcher = fs.watch(this.confDir, { persistent: false }, () => this.reload());
      this.watcher.on("error", () => this.rewatchLater());
    } catch {
      this.watcher = undefined;
    }
    // Loaded after the watch starts, so a file written in between is not missed.
    this.reload();
    if (!this.watcher) this.rewatchLater();
  }

  private rewatchLater(): void {
    this.watcher?.close();
    this.watcher = undefined;
    if (this.closed || this.retry) return;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      this.watch();
    }, CONF_DIR_RETRY_MS);
    this.retry.unref();
  }

  private reload(): void {
    this.state = loadConfDir(this.confDir);
    this.generation++;
    // The dir itself was removed: its watch is dead, so wait for a new one.
    if (this.watcher && !fs.existsSync(this.confDir)) this.rewatchLater();
  }
}

/** A pod ref rebuilt from a record's CNI_ARGS, for DELs that have no pod at hand. */
function podFromArgs(entry: CacheEntry): PodRef {
  const args = new Map(entry.cniArgs.split(";").map((kv) => kv.split("=", 2) as [string, string]));
  return {
    namespace: args.get("K8S_POD_NAMESPACE") ?? "",
    name: args.get("K8S_POD_NAME") ?? "",
    uid: args.get("K8S_POD_UID") ?? "",
    sandboxId: entry.containerId,
  };
}
