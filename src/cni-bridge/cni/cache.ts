// The on-disk record of each attachment (network + container + ifname): the config and
// args it was added with and, once ADD succeeded, its result. DEL and CHECK read it back,
// so they work after a vmlet restart and after the netns is gone.
import fs from "node:fs";
import path from "node:path";
import {
  readDirIfAny,
  removeStaleTemps,
  syncDir,
  writeFileAtomic,
  writeFileOrdered,
} from "../../util/atomic-file";
import type { RuntimeConfig } from "./runtime-config";

type Json = Record<string, unknown>;

const KIND = "vmletCniCacheV1";

export interface CacheEntry {
  kind: typeof KIND;
  network: string;
  containerId: string;
  ifname: string;
  netns?: string;
  cniArgs: string;
  capabilities: RuntimeConfig;
  /** The conflist the attachment was made with (name, versions, plugins as written). */
  config: Json;
  /** The final result of ADD at the list's version; absent while ADD is under way. */
  result?: Json;
}

export type CacheKey = Pick<CacheEntry, "network" | "containerId" | "ifname">;

export class ResultCache {
  private opened: Promise<void> | undefined;

  constructor(readonly dir: string) {}

  /** On first use: temp files of writes a crash cut short are removed. */
  private open(): Promise<void> {
    // Best effort: a temp file that cannot be removed is only litter.
    this.opened ??= (async () => {
      for (const container of await this.containerDirs()) {
        const dir = path.join(this.dir, container);
        await removeStaleTemps(dir).catch(() => {});
        // Written by vmlet before the shared writer: `<file>.tmp-<pid>-<hex>`.
        const names = await fs.promises.readdir(dir).catch(() => []);
        for (const name of names.filter((n) => /\.tmp-\d+-[0-9a-f]+$/.test(n))) {
          await fs.promises.rm(path.join(dir, name), { force: true }).catch(() => {});
        }
      }
    })().catch(() => {});
    return this.opened;
  }

  /** One dir per container; ':' appears in neither network names nor ifnames. */
  private file(key: CacheKey): string {
    return path.join(this.dir, key.containerId, `${key.network}:${key.ifname}.json`);
  }

  /** Writes the entry durably: a reader sees the old entry or the new one, never half. */
  async put(entry: Omit<CacheEntry, "kind">): Promise<void> {
    await this.open();
    const file = this.file(entry);
    const text = JSON.stringify({ kind: KIND, ...entry });
    try {
      await writeFileAtomic(file, text);
    } catch (error) {
      // The container's dir is made on its first entry only: one file op less per write.
      // The new dir's name and the entry are made durable side by side: put() returns
      // (and ADD starts) only once both are.
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
      fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
      // Settled both: a failed write must not return while the dir's fsync holds its fd.
      const [dirSynced, written] = await Promise.allSettled([
        syncDir(this.dir),
        writeFileAtomic(file, text),
      ]);
      if (written.status === "rejected") throw written.reason;
      if (dirSynced.status === "rejected") throw dirSynced.reason;
    }
  }

  /**
   * Completes an entry put() wrote (ADD's result), atomically but without fsync: a crash
   * of vmlet keeps it (the page cache outlives the process); a power cut may leave the
   * durable entry before it, without a result, which DEL and GC handle as an ADD that was
   * cut short. The result describes nothing that outlives a reboot but the IPAM
   * allocation, which DEL frees by container id either way. As libcni's own cache does.
   */
  putStep(entry: Omit<CacheEntry, "kind">): void {
    writeFileOrdered(this.file(entry), JSON.stringify({ kind: KIND, ...entry }));
  }

  // Reads and removals are synchronous: on the page cache they take microseconds, where
  // each asynchronous call is a thread-pool round trip on DEL's path.

  async get(key: CacheKey): Promise<CacheEntry | undefined> {
    await this.open();
    return this.read(this.file(key));
  }

  /** The entries of one container, in the order their ifnames sort (eth0, net1, ...). */
  async list(containerId: string): Promise<CacheEntry[]> {
    await this.open();
    const dir = path.join(this.dir, containerId);
    const entries: CacheEntry[] = [];
    for (const name of readDirSyncIfAny(dir).filter((n) => n.endsWith(".json"))) {
      const entry = this.read(path.join(dir, name));
      if (entry) entries.push(entry);
    }
    return entries.sort((a, b) => ifnameOrder(a.ifname) - ifnameOrder(b.ifname));
  }

  /** Every container id with entries. */
  async containers(): Promise<string[]> {
    await this.open();
    return this.containerDirs();
  }

  private async containerDirs(): Promise<string[]> {
    return (await readDirIfAny(this.dir)).sort();
  }

  /**
   * Removes the entry, and the container's dir once it is empty; absent is fine. Not
   * durable (no fsync of the dir): an entry a power cut brings back only makes the GC at
   * the next start (CniClient.gc, for a sandbox with no pod record) run its DEL again.
   * That DEL is idempotent: without the netns (gone with the reboot) the plugins are
   * given an empty CNI_NETNS, and host-local frees addresses by container id, so an
   * address handed to another pod since is not touched; the entry goes once it succeeds.
   */
  async remove(key: CacheKey): Promise<void> {
    await this.open();
    fs.rmSync(this.file(key), { force: true });
    try {
      fs.rmdirSync(path.dirname(this.file(key)));
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== "ENOENT" && code !== "ENOTEMPTY") throw error;
    }
  }

  private read(file: string): CacheEntry | undefined {
    let text: string;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw error;
    }
    const entry = JSON.parse(text) as CacheEntry;
    if (entry.kind !== KIND) throw new Error(`CNI cache ${file}: unknown kind ${entry.kind}`);
    return entry;
  }
}

/** The names in `dir`; none when it does not exist (any more). */
function readDirSyncIfAny(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw error;
  }
}

/** eth0 first, then net1, net2, ... by number; anything else after them. */
function ifnameOrder(ifname: string): number {
  if (ifname === "eth0") return 0;
  const m = /^net(\d+)$/.exec(ifname);
  return m ? Number(m[1]) : Number.MAX_SAFE_INTEGER;
}
