// Watching the VMs: a started or adopted VM's exit is recorded once, under its pod's
// lock; a VM on record after a restart is adopted again, or recorded exited if gone.

import { errorMessage } from "../util/errors";
import { containerLog, type Running, type RuntimeContext, UNKNOWN_EXIT } from "./context";
import { nowNs, toNs } from "./convert";
import type { ContainerRecord } from "./store/records";
import type { VmExit, VmHandle } from "./types";

/** What a container record takes when its VM is done. */
export interface RecordedExit {
  exitCode: number;
  reason: string;
  message: string;
  finishedAt: string;
}

export class VmMonitor {
  constructor(private readonly ctx: RuntimeContext) {}

  /** Records the VM's exit when it comes, under the pod lock, as every change of the pod is. */
  watch(record: ContainerRecord, handle: VmHandle): void {
    const exited = handle.exited.catch(
      (error: unknown): VmExit => ({
        exitCode: UNKNOWN_EXIT,
        reason: "Error",
        message: errorMessage(error),
        finishedAt: new Date(),
      }),
    );
    this.ctx.running.set(record.id, { handle, exited });
    void exited.then((exit) =>
      this.ctx.lock
        .run(record.sandboxId, () => this.recordVmExit(record.id, handle, exit))
        .catch((error: unknown) =>
          this.ctx.logger.error({ err: error, containerId: record.id }, "record VM exit failed"),
        ),
    );
  }

  /** Adopts a VM that runs on record; a VM that is gone is recorded as exited. */
  async reattach(record: ContainerRecord): Promise<Running | undefined> {
    const log = containerLog(this.ctx, record);
    const handle = record.vm === undefined ? undefined : await this.ctx.launcher.adopt(record.vm);
    if (handle && this.ctx.detached) {
      // Adopted as vmlet let go of its VMs: this one goes too, for the next start.
      await handle.detach?.();
      return undefined;
    }
    if (handle) {
      this.watch(record, handle);
      log.info({ pid: handle.pid }, "VM adopted");
      return this.ctx.running.get(record.id);
    }
    await this.recordExit(record.id, {
      exitCode: UNKNOWN_EXIT,
      reason: "Error",
      message: "the VM exited while vmlet was not watching it",
      finishedAt: nowNs(),
    });
    log.warn("VM gone: marked exited");
    return undefined;
  }

  /** Once per VM: the first caller (a stop under the lock, or the watcher) records it. */
  async recordVmExit(id: string, handle: VmHandle, exit: VmExit): Promise<void> {
    if (this.ctx.running.get(id)?.handle !== handle) return; // recorded, detached, or replaced
    this.ctx.running.delete(id);
    await this.recordExit(id, {
      exitCode: exit.exitCode,
      reason: exit.reason || (exit.exitCode === 0 ? "Completed" : "Error"),
      message: exit.message || "",
      finishedAt: toNs(exit.finishedAt),
    });
    containerLog(this.ctx, this.ctx.store.containers.get(id)).info(
      { exitCode: exit.exitCode, reason: exit.reason },
      "VM exited",
    );
  }

  async recordExit(id: string, exit: RecordedExit): Promise<void> {
    const record = this.ctx.store.containers.get(id);
    if (!record) return;
    await this.ctx.store.containers.put({ ...record, phase: "exited", ...exit });
  }

  /** Stops watching every VM, leaving them running; nothing is adopted after this. */
  async detachAll(): Promise<void> {
    this.ctx.detached = true;
    const handles = [...this.ctx.running.values()].map((r) => r.handle);
    this.ctx.running.clear();
    for (const handle of handles) await handle.detach?.().catch(() => {});
  }
}
