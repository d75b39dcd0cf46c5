// After a restart, and every reaper interval: pod networks come back through the
// tapmanager, half-made sandboxes are undone, running VMs are adopted again (vanished
// ones recorded exited), and VMs whose adoption failed are retried.
import type { SandboxCalls } from "./calls/sandbox";
import { containerLog, type RuntimeContext, START_ERROR_EXIT, sandboxLog } from "./context";
import { nowNs } from "./convert";
import type { VmMonitor } from "./vm-monitor";

/** How often a failed RunPodSandbox's teardown and a failed adoption are retried. */
const DEFAULT_REAP_INTERVAL_MS = 30_000;

export class Recovery {
  private reaper: NodeJS.Timeout | undefined;
  private readopting = false;

  constructor(
    private readonly ctx: RuntimeContext,
    private readonly sandboxes: SandboxCalls,
    private readonly monitor: VmMonitor,
  ) {}

  /**
   * After a restart: pod networks come back through the tapmanager; a sandbox caught
   * half-made is undone; running VMs are adopted, vanished ones reported as exited.
   */
  async recover(): Promise<void> {
    const { logger, networks, store } = this.ctx;
    try {
      const outcome = await networks.recover();
      logger.info({ outcome }, "pod networks recovered");
    } catch (error) {
      logger.error({ err: error }, "recover pod networks failed");
    }
    try {
      await networks.collectGarbage?.();
    } catch (error) {
      logger.warn({ err: error }, "CNI garbage collection failed; pods are unaffected");
    }
    await this.reapHalfMade("found half-made after a restart");
    for (const sandbox of store.sandboxes.list()) {
      if (sandbox.phase === "ready" && !networks.get(sandbox.id)) {
        // Its network did not come back: NOTREADY, so that kubelet makes the pod anew.
        await store.sandboxes.put({ ...sandbox, phase: "stopped" });
        sandboxLog(this.ctx, sandbox).warn(
          "pod network not recovered after a restart: sandbox NOTREADY",
        );
      }
    }
    const adoptions: Promise<void>[] = [];
    for (const record of store.containers.list()) {
      const log = containerLog(this.ctx, record);
      if (record.phase === "starting") {
        try {
          await this.ctx.launcher.discard?.(record.dir);
        } catch (error) {
          log.error({ err: error }, "kill the VM of an interrupted start failed");
        }
        await this.monitor.recordExit(record.id, {
          exitCode: START_ERROR_EXIT,
          reason: "StartError",
          message: "vmlet restarted while the VM was starting",
          finishedAt: nowNs(),
        });
        log.warn("VM start interrupted by a restart: marked exited");
      } else if (record.phase === "running") {
        // All at once, each within the launcher's deadline: one wedged QEMU holds up
        // neither the others nor the socket.
        adoptions.push(
          this.monitor.reattach(record).then(
            () => {},
            (error: unknown) => {
              // Left RUNNING on record: a stop or removal tries again, and kills it by
              // its pid if it still cannot be adopted, rather than leak the VM.
              log.error({ err: error }, "adopt VM failed; a stop or removal will retry");
            },
          ),
        );
      }
    }
    await Promise.all(adoptions);
  }

  /**
   * Retries, every `intervalMs`, the teardown of sandboxes whose RunPodSandbox failed
   * and whose network could not be torn down then (kubelet never learnt their ids), and
   * the adoption of VMs that failed it.
   */
  startReaper(intervalMs = DEFAULT_REAP_INTERVAL_MS): void {
    const logger = this.ctx.logger;
    this.reaper = setInterval(() => {
      this.reapHalfMade("retrying the teardown of a failed RunPodSandbox").catch((error: unknown) =>
        logger.error({ err: error }, "reap half-made sandboxes failed"),
      );
      if (this.readopting) return; // a wedged QEMU's adoption may outlast the interval
      this.readopting = true;
      this.readoptUnwatched()
        .catch((error: unknown) => logger.error({ err: error }, "re-adopting VMs failed"))
        .finally(() => {
          this.readopting = false;
        });
    }, intervalMs);
    this.reaper.unref();
  }

  stopReaper(): void {
    if (this.reaper) clearInterval(this.reaper);
    this.reaper = undefined;
  }

  /**
   * Tries again to adopt VMs running on record that no one watches (their adoption failed
   * at start): one adopted now has its exit seen; one that is gone is recorded exited.
   */
  async readoptUnwatched(): Promise<void> {
    const { store, running, lock } = this.ctx;
    for (const record of store.containers.list()) {
      if (record.phase !== "running" || running.has(record.id)) continue;
      await lock.run(record.sandboxId, async () => {
        const now = store.containers.get(record.id);
        if (now?.phase !== "running" || running.has(now.id) || this.ctx.detached) return;
        try {
          await this.monitor.reattach(now);
        } catch (error) {
          containerLog(this.ctx, now).warn({ err: error }, "adopt VM failed again; will retry");
        }
      });
    }
  }

  async reapHalfMade(why: string): Promise<void> {
    const { store, creating, lock } = this.ctx;
    for (const sandbox of store.sandboxes.list()) {
      if (sandbox.phase !== "creating" || creating.has(sandbox.id)) continue;
      await lock.run(sandbox.id, async () => {
        if (store.sandboxes.get(sandbox.id)?.phase !== "creating") return;
        const log = sandboxLog(this.ctx, sandbox);
        log.warn(`${why}: ${await this.sandboxes.undo(sandbox.id, log)}`);
      });
    }
  }
}
