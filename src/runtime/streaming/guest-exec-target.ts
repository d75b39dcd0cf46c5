// kubectl exec on a VM: the command runs through the QEMU guest agent (guest-exec with
// capture-output, then guest-exec-status polls). The agent hands over stdout and stderr
// when the command exits, not as it writes them, and takes stdin only whole, at the start
// (input-data): so stdin is read to its end first, and a terminal (-t) cannot be given.
import type { Readable } from "node:stream";
import {
  GuestAgentCommandError,
  type GuestExecResult,
  type GuestExecStreamOptions,
  guestExecStream,
} from "../vm/guest-agent";
import type { StreamIo, StreamOutcome, StreamTarget } from "./remotecommand";

/** Most stdin an exec takes: it travels base64 in one agent command. */
export const MAX_EXEC_STDIN = 4 * 1024 * 1024;
/** The shell's code for "command not found", as ExecSync answers it too. */
const NOT_FOUND_EXIT = 127;

export type GuestExecRunner = (
  socketPath: string,
  argv: string[],
  options: GuestExecStreamOptions,
) => Promise<GuestExecResult>;

export class GuestExecStreamError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "GuestExecStreamError";
  }
}

export function guestExecTarget(
  agentSocket: string,
  cmd: string[],
  describe: string,
  runner: GuestExecRunner = guestExecStream,
): StreamTarget {
  return {
    async run(io: StreamIo, signal: AbortSignal): Promise<StreamOutcome> {
      if (io.tty) {
        return new GuestExecStreamError(
          `${describe}: a terminal (-t) is not supported: the QEMU guest agent runs commands without one; use kubectl exec without -t, or kubectl attach for the console`,
        );
      }
      let input: Buffer | undefined;
      if (io.stdin) {
        const read = await readAll(io.stdin, MAX_EXEC_STDIN, signal);
        if (read instanceof Error) return new GuestExecStreamError(`${describe}: ${read.message}`);
        input = read;
      }
      let result: GuestExecResult;
      try {
        result = await runner(agentSocket, cmd, { ...(input ? { input } : {}), signal });
      } catch (error) {
        if (error instanceof GuestAgentCommandError) {
          if (input && /input-data/.test(error.description)) {
            return new GuestExecStreamError(
              `${describe}: stdin needs a guest agent that takes input-data (qemu-ga 2.5 or later): ${error.description}`,
              { cause: error },
            );
          }
          io.stderr?.write(`${error.message}\n`);
          return { exitCode: NOT_FOUND_EXIT };
        }
        return new GuestExecStreamError(`${describe}: ${(error as Error).message}`, {
          cause: error,
        });
      }
      if (result.stdout.length > 0) io.stdout?.write(result.stdout);
      if (result.stderr.length > 0) io.stderr?.write(result.stderr);
      return { exitCode: result.exitCode };
    },
  };
}

/** The whole stream, up to `limit` bytes; an Error when longer or when the client left. */
function readAll(stream: Readable, limit: number, signal: AbortSignal): Promise<Buffer | Error> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const finish = (value: Buffer | Error) => {
      stream.removeListener("data", onData);
      stream.removeListener("end", onEnd);
      stream.removeListener("close", onEnd);
      signal.removeEventListener("abort", onAbort);
      resolve(value);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        stream.resume();
        finish(new Error(`stdin over ${limit} bytes (the guest agent takes stdin whole)`));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => finish(Buffer.concat(chunks));
    const onAbort = () => finish(new Error("the client left before closing stdin"));
    stream.on("data", onData);
    stream.once("end", onEnd);
    stream.once("close", onEnd);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
