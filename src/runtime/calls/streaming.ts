// What CRI streaming (Exec, Attach, PortForward: streaming/cri-calls.ts) looks up in the
// runtime: a running container's console and guest agent sockets, a ready pod's IP.
import { mustContainer, mustSandbox, type RuntimeContext } from "../context";
import { podIps } from "../convert";
import { failedPrecondition } from "../errors";
import type { StreamLookups } from "../streaming/cri-calls";

export function streamLookups(ctx: RuntimeContext): StreamLookups {
  return {
    container: (id, call) => {
      const record = mustContainer(ctx, id, call);
      const handle = ctx.running.get(record.id)?.handle;
      if (record.phase !== "running" || !handle) {
        throw failedPrecondition(`${call} ${record.id}: container is ${record.phase}, not running`);
      }
      const sandbox = ctx.store.sandboxes.get(record.sandboxId);
      const pod = sandbox ? `${sandbox.metadata.namespace}/${sandbox.metadata.name}` : "?";
      return { name: `${pod} container ${record.id}`, ...handle.channels };
    },
    sandbox: (id, call) => {
      const sandbox = mustSandbox(ctx, id, call);
      const network = ctx.networks.get(id);
      const ip = network ? podIps(network)[0] : undefined;
      if (sandbox.phase !== "ready" || !network || !ip) {
        throw failedPrecondition(`${call} ${id}: pod sandbox is not ready (no pod network)`);
      }
      return { name: `${sandbox.metadata.namespace}/${sandbox.metadata.name}`, ip };
    },
  };
}
