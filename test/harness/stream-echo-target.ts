// A StreamTarget for tests only: stands where the guest agent (exec) or the serial console
// (attach) will, so the streaming protocol can be checked against real clients today.
import type {
  StreamIo,
  StreamOutcome,
  StreamTarget,
} from "../../src/runtime/streaming/remotecommand";

export interface EchoScript {
  /** Copy stdin to stdout (after `prefix`), then exit with this code. */
  exitCode: number;
  prefix?: string;
  /** Also write this to stderr. */
  stderr?: string;
  /** Write this many bytes of 'x' to stdout before the echo. */
  stdoutBytes?: number;
  /** Wait for this before finishing. */
  hold?: Promise<void>;
  /** Report each terminal size on stdout as WxH lines. */
  reportResize?: boolean;
  /** Fail with this error instead of exiting. */
  fail?: string;
}

export class EchoTarget implements StreamTarget {
  started = false;
  aborted = false;

  constructor(private readonly script: EchoScript) {}

  async run(io: StreamIo, signal: AbortSignal): Promise<StreamOutcome> {
    this.started = true;
    signal.addEventListener("abort", () => {
      this.aborted = true;
    });
    const s = this.script;
    if (s.prefix) io.stdout?.write(s.prefix);
    if (s.stdoutBytes) io.stdout?.write(Buffer.alloc(s.stdoutBytes, "x"));
    if (s.stderr) io.stderr?.write(s.stderr);
    if (io.stdin) for await (const chunk of io.stdin) io.stdout?.write(chunk as Buffer);
    if (s.reportResize && io.resize) {
      for await (const size of io.resize) io.stdout?.write(`${size.width}x${size.height}\n`);
    }
    if (s.hold) await s.hold;
    if (s.fail) return new Error(s.fail);
    return { exitCode: s.exitCode };
  }
}
