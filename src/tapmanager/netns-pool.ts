// Network namespaces built ahead of the pods that will take them: each holds what setUp
// otherwise does before CNI ADD for the first NIC (prepare-nic.ts). A pod that takes one
// skips the netns's creation and runs CNI ADD alone: that work would otherwise hold RTNL,
// the kernel's one lock for all of it, while the plugins wait for it.
// The pool is refilled only once the tapmanager has been idle for a moment, so that its
// own work lands on no setUp or tearDown either. A burst bigger than the pool takes the
// cold path for the rest. Pooling namespaces because their creation dominates start-up is
// what SOCK (USENIX ATC '18) found for serverless containers; here it is the RTNL time.

import crypto from "node:crypto";
import type { DhcpLog } from "../dhcp/server";
import { createNetns, deleteNetns, listNetns, renameNetns } from "../sys/netns";
import { closePreparedNic, type PreparedNic } from "./prepare-nic";

/** The daemon's pool unless told otherwise: enough for the pods kubelet starts one by one. */
export const DEFAULT_NETNS_POOL = 2;
/** How long the tapmanager must have been idle before the pool is refilled. */
const QUIET_MS = 20;

export interface NetnsPoolOptions {
  /** Namespaces kept ready. */
  size: number;
  /**
   * Whose pool (the state dir): its netns names carry a hash of it, so that a restart
   * removes its own predecessor's and never another daemon's.
   */
  owner: string;
  /** Builds a pooled netns's contents; what it returns is handed out with it. */
  prepare(nsPath: string): Promise<PreparedNic>;
  /** True while a setUp or tearDown runs: refilling waits. */
  busy(): boolean;
  log: DhcpLog;
}

/** A pooled netns, renamed for its pod, with its first NIC made. */
export interface TakenNetns {
  path: string;
  nic: PreparedNic;
}

const POOL_PREFIX = "vmletpool-";

/** A netns name a pool gave (any owner's): not a pod's. */
export function isPoolNetns(name: string): boolean {
  return name.startsWith(POOL_PREFIX);
}

export class NetnsPool {
  private readonly ready: { name: string; nic: PreparedNic }[] = [];
  private readonly prefix: string;
  private serial = 0;
  private timer: NodeJS.Timeout | undefined;
  private filling: Promise<void> | undefined;
  private closed = false;

  constructor(private readonly options: NetnsPoolOptions) {
    const hash = crypto.createHash("sha256").update(options.owner).digest("hex").slice(0, 8);
    this.prefix = `${POOL_PREFIX}${hash}-`;
  }

  get size(): number {
    return this.ready.length;
  }

  /**
   * A prepared netns, named `name` from now on; undefined when none is ready (or it
   * cannot be renamed: then it is removed, and the caller builds one itself).
   */
  take(name: string): TakenNetns | undefined {
    const entry = this.ready.shift();
    if (!entry) return undefined;
    try {
      const path = renameNetns(entry.name, name);
      // The connection is to the namespace, whatever its name: only the name it reports.
      entry.nic.rtnl.netnsRenamed(path);
      return { path, nic: entry.nic };
    } catch (error) {
      this.discard(entry);
      this.options.log.warn(
        { netns: entry.name, error: String(error) },
        "pooled netns could not be renamed; removed, the pod builds its own",
      );
      return undefined;
    }
  }

  /** The tapmanager went idle: the pool is refilled once it stays idle a moment. */
  idle(): void {
    if (this.closed || this.timer || this.filling || this.ready.length >= this.options.size) {
      return;
    }
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.filling = this.fill().finally(() => {
        this.filling = undefined;
      });
    }, QUIET_MS);
    this.timer.unref();
  }

  /** Resolves once no refill is pending or running (tests and benchmarks wait on it). */
  async settled(): Promise<void> {
    while (this.timer || this.filling) {
      await (this.filling ?? new Promise((resolve) => setTimeout(resolve, QUIET_MS)));
    }
  }

  /** Removes the netns a previous process of this owner left in the pool (it crashed). */
  sweep(): string[] {
    const ours = new Set(this.ready.map((e) => e.name));
    const left = listNetns().filter((n) => n.startsWith(this.prefix) && !ours.has(n));
    for (const name of left) deleteNetns(name);
    return left;
  }

  /** Stops refilling and removes every pooled netns; nothing of the pool stays. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.filling;
    for (const entry of this.ready.splice(0)) this.discard(entry);
  }

  private async fill(): Promise<void> {
    while (!this.closed && this.ready.length < this.options.size && !this.options.busy()) {
      const name = `${this.prefix}${this.serial++}`;
      try {
        const nic = await this.options.prepare(createNetns(name));
        this.ready.push({ name, nic });
      } catch (error) {
        // Until the next idle moment: a failure that repeats is not retried in a loop.
        deleteNetnsQuietly(name);
        this.options.log.warn({ netns: name, error: String(error) }, "netns pool: refill failed");
        return;
      }
    }
    if (this.closed) for (const entry of this.ready.splice(0)) this.discard(entry);
  }

  private discard(entry: { name: string; nic: PreparedNic }): void {
    closePreparedNic(entry.nic);
    deleteNetnsQuietly(entry.name);
  }
}

function deleteNetnsQuietly(name: string): void {
  try {
    deleteNetns(name);
  } catch {
    // Swept at the next start.
  }
}
