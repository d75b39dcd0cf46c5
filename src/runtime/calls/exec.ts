// ExecSync: a command in the VM through the QEMU guest agent (exec probes, crictl exec -s).

import { errorMessage } from "../../util/errors";
import { mustContainer, type RuntimeContext } from "../context";
import type * as cri from "../cri/generated";
import { CriError, failedPrecondition, invalidArgument } from "../errors";
import {
  GuestAgentCommandError,
  GuestAgentUnavailableError,
  GuestExecCancelledError,
  GuestExecTimeoutError,
} from "../vm/guest-agent";

/** ExecSync with timeout 0 and no call deadline: the most it may hold the agent's channel. */
const EXEC_TIMEOUT_CAP_MS = 120_000;
/** What a shell answers for a program it cannot start. */
const COMMAND_NOT_FOUND_EXIT = 127;

/** When the client gives up on a call (cri/server.ts's CallContext). */
export interface CallDeadline {
  signal?: AbortSignal;
  deadline?: number;
}

export class ExecCalls {
  constructor(private readonly ctx: RuntimeContext) {}

  /** An agent's error starting the command (no such program, say) is the shell's 127. */
  async execSync(
    req: cri.ExecSyncRequest__Output,
    call?: CallDeadline,
  ): Promise<cri.ExecSyncResponse> {
    const record = mustContainer(this.ctx, req.containerId, "ExecSync");
    const where = `ExecSync ${record.id}`;
    if (req.cmd.length === 0 || req.cmd[0] === "") throw invalidArgument(`${where}: cmd is empty`);
    const handle = this.ctx.running.get(record.id)?.handle;
    if (record.phase !== "running" || !handle) {
      throw failedPrecondition(`${where}: container is ${record.phase}, not running`);
    }
    if (!handle.exec) {
      throw new CriError("UNIMPLEMENTED", `${where}: this VM launcher cannot run commands`);
    }
    // timeout 0 (crictl's default) is the call's deadline, or a cap: never no limit, which
    // would hold the VM's one agent channel, and every later probe, forever.
    const requested = Math.max(0, Number(req.timeout)) * 1000;
    const untilDeadline = (call?.deadline ?? Number.POSITIVE_INFINITY) - Date.now();
    const timeoutMs =
      requested > 0
        ? requested
        : Number.isFinite(untilDeadline)
          ? Math.max(1, untilDeadline)
          : EXEC_TIMEOUT_CAP_MS;
    try {
      const result = await handle.exec(req.cmd, timeoutMs, call?.signal);
      return { stdout: result.stdout, stderr: result.stderr, exitCode: result.exitCode };
    } catch (error) {
      if (error instanceof GuestAgentCommandError) {
        return {
          stdout: Buffer.alloc(0),
          stderr: Buffer.from(`${error.message}\n`),
          exitCode: COMMAND_NOT_FOUND_EXIT,
        };
      }
      const message = `${where} ${JSON.stringify(req.cmd)}: ${errorMessage(error)}`;
      if (error instanceof GuestExecTimeoutError) throw new CriError("DEADLINE_EXCEEDED", message);
      if (error instanceof GuestExecCancelledError) throw new CriError("CANCELLED", message);
      if (error instanceof GuestAgentUnavailableError) throw failedPrecondition(message);
      throw new CriError("UNKNOWN", message, { cause: error });
    }
  }
}
